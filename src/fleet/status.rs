//! `dupmirror status --config`: one line per mirror: the backup DEST holds, the newest in
//! its sources (listed now, as a sync would choose among them; the last run's figure when
//! none can be listed), the lag, the sources passed over now, and the last run's outcome
//! from its record.

use super::record::RunRecord;
use crate::commands::atomic::held_state;
use crate::dest::state::DestPaths;
use crate::progress::Reporter;
use crate::repo::select::{open_sources, SourceStatus};
use crate::repo::time::format_iso;
use crate::repo::RepoOptions;
use serde::Serialize;
use std::sync::Arc;

#[derive(Serialize)]
pub struct MirrorStatus {
    pub mirror: String,
    /// The backup time DEST holds.
    pub holds: Option<String>,
    /// The newest backup time in its sources.
    pub latest: Option<String>,
    pub lag_seconds: Option<i64>,
    /// Why no source could be listed now (then `latest` is the last run's).
    pub source_error: Option<String>,
    /// Each source's role now, when one could be listed (as in a sync's report).
    pub sources: Vec<SourceStatus>,
    pub last_run: Option<String>,
    pub last_run_ok: Option<bool>,
    pub last_exit_status: Option<u8>,
    pub last_error: Option<String>,
}

pub fn mirror_status(
    mirror: &str,
    sources: &[String],
    paths: &DestPaths,
    repo: &RepoOptions,
    reporter: &Arc<Reporter>,
) -> MirrorStatus {
    let record = RunRecord::load(&paths.state_root).unwrap_or_default();
    let held = held_state(paths).map(|s| s.end_time);
    let (latest, source_error, sources) = match open_sources(sources, repo, reporter) {
        Ok((r, selection)) => (r.collection.latest_time(), None, selection.report()),
        Err(e) => (
            record.latest,
            Some(format!("{e:#}").replace('\n', " ")),
            Vec::new(),
        ),
    };
    let lag = RunRecord {
        held,
        latest,
        ..RunRecord::default()
    }
    .lag_seconds();
    let ran = record.last_run.is_some();
    MirrorStatus {
        mirror: mirror.to_string(),
        holds: held.map(format_iso),
        latest: latest.map(format_iso),
        lag_seconds: lag,
        source_error,
        sources,
        last_run: record.last_run.map(format_iso),
        last_run_ok: ran.then_some(record.success),
        last_exit_status: ran.then_some(record.exit_status),
        last_error: record.error,
    }
}

impl MirrorStatus {
    /// The sources passed over now (unreachable or stale), with their roles.
    pub fn skipped(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.sources
            .iter()
            .filter(|s| s.role.skipped())
            .map(|s| (s.source.as_str(), s.role.name()))
    }
}
