//! One mirror's run: a sync with what a fleet wants around it.
//!
//! ```text
//! run_job(job):
//!     sleep a random time up to --jitter (spreads a fleet started at the same second)
//!     pre-sync hook; failing: skip the sync, the run fails (exit status: hook failed)
//!     sync, collecting the changed paths when a list or a post-sync hook wants them
//!     write --changed-list
//!     DEST changed and a post-sync hook: write the changed list and the JSON report into
//!         the state directory (last-changed, last-report.json), run the hook; failing: the
//!         run fails with its status and stderr tail, DEST stays synced
//!     record the outcome in the state directory's run.json (when asked; not for a dry run)
//! ```
//!
//! Hook environment: `DUPMIRROR_MIRROR` (the name), `DUPMIRROR_DEST` (absolute),
//! `DUPMIRROR_FROM` (the backup time DEST held, ISO 8601, empty if none); post-sync also
//! `DUPMIRROR_TO`, `DUPMIRROR_CHANGED` (how many paths), `DUPMIRROR_CHANGED_LIST` (their
//! NUL-separated list, relative to DEST), `DUPMIRROR_REPORT` (the sync's JSON report).
//! Hooks run outside the sync's lock, and are skipped by a dry run.

use super::hooks::{self, HookKind, HookOutcome};
use super::record::RunRecord;
use crate::commands::atomic::{held_state, sync_dest, LayoutOptions};
use crate::commands::sync::{SyncOptions, SyncReport};
use crate::dest::changes::{write_replacing, ChangedPaths};
use crate::dest::state::DestPaths;
use crate::exit::Exit;
use crate::log::Logger;
use crate::progress::Reporter;
use crate::repo::time::{format_iso, Epoch};
use anyhow::{bail, Result};
use serde::Serialize;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What runs around a sync (the `sync` options of the same names).
#[derive(Clone, Debug, Default)]
pub struct JobOptions {
    pub pre_sync: Option<String>,
    pub post_sync: Option<String>,
    pub changed_list: Option<PathBuf>,
    pub jitter: Option<Duration>,
    /// Record the outcome in the state directory's run.json (`run`; `sync` with metrics).
    pub record: bool,
}

pub struct Job {
    /// The mirror's name: its `[mirror.NAME]`, or DEST for `sync`.
    pub name: String,
    pub sync: SyncOptions,
    /// In place or atomic (`--atomic`, `--in-place`, `--grace`).
    pub layout: LayoutOptions,
    /// Where the sync's progress, notices and transfer counts go.
    pub reporter: Arc<Reporter>,
    pub options: JobOptions,
}

/// What one mirror's run did (`run --json` prints one per mirror).
#[derive(Serialize)]
pub struct JobReport {
    pub mirror: String,
    pub ok: bool,
    pub exit: Exit,
    pub exit_status: u8,
    /// The failure, one line.
    pub error: Option<String>,
    /// How many paths the run changed in DEST (when they were listed).
    pub changed: Option<usize>,
    pub hooks: Vec<HookOutcome>,
    /// The sync's report (also after a failed post-sync hook: DEST was synced).
    pub sync: Option<SyncReport>,
}

/// `--jitter`: a number of seconds, or with a unit: `90s`, `15m`, `2h`, `1d`.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let t = text.trim();
    let (number, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len()));
    let scale = match unit {
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => bail!("unknown unit {unit:?} in {text:?} (use s, m, h or d)"),
    };
    number
        .parse::<f64>()
        .ok()
        .and_then(|n| Duration::try_from_secs_f64(n * scale).ok())
        .ok_or_else(|| anyhow::anyhow!("{text:?} is not a duration such as 90, 90s, 15m, 2h"))
}

/// Runs one mirror; never fails: the outcome is in the report.
pub fn run_job(mut job: Job, log: &Logger) -> JobReport {
    let started = Instant::now();
    let mut report = JobReport {
        mirror: job.name.clone(),
        ok: true,
        exit: Exit::Success,
        exit_status: 0,
        error: None,
        changed: None,
        hooks: Vec::new(),
        sync: None,
    };
    let paths = DestPaths::resolve(&job.sync.dest, job.sync.state_dir.as_deref());
    if let Err(e) = attempt(&mut job, log, &mut report) {
        report.ok = false;
        report.exit = Exit::of(&e);
        report.exit_status = report.exit.code();
        report.error = Some(format!("{e:#}").replace('\n', " "));
    }
    if job.options.record && !job.sync.dry_run {
        if let Ok(paths) = &paths {
            if let Err(e) = record(paths, &report, started) {
                log.warning(&format!("cannot record the run: {e:#}"));
            }
        }
    }
    report
}

fn attempt(job: &mut Job, log: &Logger, report: &mut JobReport) -> Result<()> {
    if let Some(limit) = job.options.jitter.filter(|j| !j.is_zero()) {
        let wait = limit.mul_f64(fastrand::f64());
        log.info(&format!(
            "waiting {:.1}s (jitter up to {:.0}s) before contacting the source",
            wait.as_secs_f64(),
            limit.as_secs_f64()
        ));
        std::thread::sleep(wait);
    }
    let paths = DestPaths::resolve(&job.sync.dest, job.sync.state_dir.as_deref())?;
    let state_root = &paths.state_root;
    let held = held_time(&paths).map(format_iso);
    let mut env: Vec<(&str, OsString)> = vec![
        ("DUPMIRROR_MIRROR", job.name.clone().into()),
        ("DUPMIRROR_DEST", paths.dest.clone().into()),
        ("DUPMIRROR_FROM", held.unwrap_or_default().into()),
    ];
    let hooks_run = !job.sync.dry_run;
    if let Some(command) = job.options.pre_sync.as_ref().filter(|_| hooks_run) {
        run_hook(HookKind::PreSync, command, &env, report)?;
    }
    job.sync.list_changes = job.options.changed_list.is_some() || job.options.post_sync.is_some();
    let result = sync_dest(&job.sync, &job.layout, &job.reporter);
    job.reporter.finish(); // the bars go before any line about the outcome
    let mut synced = result?;
    let changed = synced
        .changed
        .take()
        .map(ChangedPaths::finish)
        .transpose()?;
    report.changed = changed.as_ref().map(|c| c.len());
    if let (Some(list), Some(path)) = (&changed, &job.options.changed_list) {
        list.write_nul_separated(path)?;
    }
    let post = job.options.post_sync.as_ref().filter(|_| hooks_run);
    let synced = &*report.sync.insert(synced);
    let (Some(command), Some(changed)) = (post, changed.filter(|c| !c.is_empty())) else {
        return Ok(());
    };
    let list = match &job.options.changed_list {
        Some(path) => path.clone(),
        None => {
            let path = state_root.join("last-changed");
            changed.write_nul_separated(&path)?;
            path
        }
    };
    let report_path = state_root.join("last-report.json");
    write_replacing(&report_path, &serde_json::to_vec_pretty(synced)?)?;
    env[2].1 = synced.from.clone().unwrap_or_default().into();
    env.extend([
        ("DUPMIRROR_TO", synced.to.clone().into()),
        ("DUPMIRROR_CHANGED", changed.len().to_string().into()),
        ("DUPMIRROR_CHANGED_LIST", list.into()),
        ("DUPMIRROR_REPORT", report_path.into()),
    ]);
    run_hook(HookKind::PostSync, command, &env, report)
}

fn run_hook(
    kind: HookKind,
    command: &str,
    env: &[(&str, OsString)],
    report: &mut JobReport,
) -> Result<()> {
    match hooks::run(kind, command, env) {
        Ok(outcome) => {
            report.hooks.push(outcome);
            Ok(())
        }
        Err(e) => {
            report.hooks.push(e.0.clone());
            Err(e.into())
        }
    }
}

/// The backup time DEST holds, as far as a look without the lock tells.
fn held_time(paths: &DestPaths) -> Option<Epoch> {
    held_state(paths).map(|s| s.end_time)
}

fn record(paths: &DestPaths, report: &JobReport, started: Instant) -> Result<()> {
    let state_root = &paths.state_root;
    if !state_root.is_dir() {
        return Ok(()); // failed before the state directory was made: nothing to keep
    }
    RunRecord::update(state_root, |r| {
        let now = chrono::Utc::now().timestamp();
        r.last_run = Some(now);
        r.success = report.ok;
        if report.ok {
            r.last_success = Some(now);
        }
        r.exit_status = report.exit_status;
        r.error = report.error.clone();
        r.duration_seconds = started.elapsed().as_secs_f64();
        r.held = held_time(paths);
        r.runs += 1;
        if !report.ok {
            r.failures += 1;
        }
        if let Some(s) = &report.sync {
            r.latest = s.times.latest.or(r.latest);
            r.bytes_downloaded += s.transfer.bytes_downloaded;
            r.sets_applied += s.sets.iter().filter(|s| s.applied.is_some()).count() as u64;
            r.drift_repairs += s
                .sets
                .iter()
                .filter_map(|s| s.repaired.as_ref())
                .map(|r| r.paths)
                .sum::<u64>();
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_seconds() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("-3s").is_err());
    }
}
