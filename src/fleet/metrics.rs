//! The Prometheus text-format file for node_exporter's textfile collector: one series per
//! mirror (label `mirror`) for each figure of its [`RunRecord`].
//!
//! The file is replaced atomically (temporary file and rename), so the collector never reads
//! half of it; mirrors that share a file are all written each time (see `run`). A figure
//! that is not known (a mirror never synced has no backup time) has no series rather than a
//! made-up value.

use super::record::RunRecord;
use crate::dest::changes::write_replacing;
use anyhow::Result;
use std::fmt::Write;
use std::path::Path;

type Figure = fn(&RunRecord) -> Option<f64>;

/// (name, type, help, figure)
const METRICS: [(&str, &str, &str, Figure); 12] = [
    (
        "dupmirror_last_run_success",
        "gauge",
        "Whether the last run of the mirror succeeded (1) or failed (0).",
        |r| r.last_run.map(|_| f64::from(u8::from(r.success))),
    ),
    (
        "dupmirror_last_run_timestamp_seconds",
        "gauge",
        "When the last run of the mirror ended.",
        |r| r.last_run.map(|t| t as f64),
    ),
    (
        "dupmirror_last_success_timestamp_seconds",
        "gauge",
        "When the last successful run of the mirror ended.",
        |r| r.last_success.map(|t| t as f64),
    ),
    (
        "dupmirror_run_duration_seconds",
        "gauge",
        "How long the last run of the mirror took.",
        |r| r.last_run.map(|_| r.duration_seconds),
    ),
    (
        "dupmirror_backup_timestamp_seconds",
        "gauge",
        "The time of the backup DEST holds.",
        |r| r.held.map(|t| t as f64),
    ),
    (
        "dupmirror_source_latest_backup_timestamp_seconds",
        "gauge",
        "The time of the newest backup in the source when last listed.",
        |r| r.latest.map(|t| t as f64),
    ),
    (
        "dupmirror_lag_seconds",
        "gauge",
        "How far the backup DEST holds is behind the newest one in the source.",
        |r| r.lag_seconds().map(|s| s as f64),
    ),
    (
        "dupmirror_runs_total",
        "counter",
        "Runs of the mirror.",
        |r| Some(r.runs as f64),
    ),
    (
        "dupmirror_failures_total",
        "counter",
        "Runs of the mirror that failed.",
        |r| Some(r.failures as f64),
    ),
    (
        "dupmirror_downloaded_bytes_total",
        "counter",
        "Bytes downloaded from the source.",
        |r| Some(r.bytes_downloaded as f64),
    ),
    (
        "dupmirror_sets_applied_total",
        "counter",
        "Backup sets applied to DEST.",
        |r| Some(r.sets_applied as f64),
    ),
    (
        "dupmirror_drift_repairs_total",
        "counter",
        "Paths found changed in DEST behind dupmirror's back and restored.",
        |r| Some(r.drift_repairs as f64),
    ),
];

/// The text of the file for `mirrors` (name, record).
pub fn render(mirrors: &[(String, RunRecord)]) -> String {
    let mut out = String::new();
    for (name, kind, help, figure) in METRICS {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (mirror, record) in mirrors {
            if let Some(v) = figure(record) {
                let _ = writeln!(out, "{name}{{mirror=\"{}\"}} {v}", escape_label(mirror));
            }
        }
    }
    out
}

/// Replaces the file at `path` with the series of `mirrors`.
pub fn write(path: &Path, mirrors: &[(String, RunRecord)]) -> Result<()> {
    write_replacing(path, render(mirrors).as_bytes())
}

fn escape_label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_figures_have_no_series() {
        let synced = RunRecord {
            last_run: Some(200),
            success: true,
            held: Some(100),
            latest: Some(100),
            runs: 3,
            ..RunRecord::default()
        };
        let text = render(&[
            ("a\"b".into(), synced),
            ("never".into(), RunRecord::default()),
        ]);
        assert!(text.contains("dupmirror_lag_seconds{mirror=\"a\\\"b\"} 0\n"));
        assert!(text.contains("dupmirror_runs_total{mirror=\"a\\\"b\"} 3\n"));
        assert!(text.contains("dupmirror_runs_total{mirror=\"never\"} 0\n"));
        assert!(!text.contains("dupmirror_lag_seconds{mirror=\"never\"}"));
    }
}
