//! `dupmirror status SOURCE [--json]`: what the repository holds (like
//! `duplicity collection-status`), and with `--dest`, what that DEST would need, and whether
//! the source stopped advancing (frozen) or went back (`mirror::rollback`).

use super::open_repository;
use crate::dest::state::{absolute_dest, default_state_dir};
use crate::mirror::rollback;
use crate::repo::collection::BackupSet;
use crate::repo::filename::SetKind;
use crate::repo::time::format_iso;
use crate::repo::RepoOptions;
use anyhow::Result;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Serialize)]
pub struct SetStatus {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub start_time: Option<String>,
    pub end_time: String,
    pub volumes: usize,
    pub bytes: u64,
    pub complete: bool,
    pub signatures: bool,
}

impl SetStatus {
    fn of(set: &BackupSet) -> Self {
        SetStatus {
            kind: match set.kind {
                SetKind::Full => "full",
                SetKind::Inc => "inc",
            },
            start_time: set.start_time.map(format_iso),
            end_time: format_iso(set.end_time),
            volumes: set.volumes.len(),
            bytes: set.volume_bytes(),
            complete: set.is_complete(),
            signatures: set.signatures.is_some(),
        }
    }
}

#[derive(Serialize)]
pub struct ChainStatus {
    pub start_time: String,
    pub end_time: String,
    pub sets: Vec<SetStatus>,
}

#[derive(Serialize)]
pub struct DestStatus {
    pub dest: PathBuf,
    /// The end time of the state DEST holds, if it was ever synced.
    pub holds: Option<String>,
    /// Sets a sync would apply to reach the latest backup.
    pub pending_sets: usize,
    pub pending_bytes: u64,
    /// A sync would start over from a full set (new chain, or DEST off the chain).
    pub needs_full: bool,
    /// The newest backup DEST was ever brought to (`mirror::rollback`).
    pub newest_applied: Option<String>,
    /// When a sync first brought DEST to it (this host's clock), when known.
    pub newest_applied_at: Option<String>,
    /// The source offers only older backups than `newest_applied`: its newer sets were
    /// removed or are hidden, and a sync without `--time` refuses to go back.
    pub source_behind: bool,
    /// Seconds DEST has been at `newest_applied` while the source offers nothing newer: a
    /// source that stops advancing (a freeze) shows as this outgrowing the backup interval.
    pub frozen_seconds: Option<i64>,
}

#[derive(Serialize)]
pub struct StatusReport {
    pub source: String,
    pub prefix: Option<String>,
    pub chains: Vec<ChainStatus>,
    pub orphans: Vec<SetStatus>,
    pub incomplete: Vec<SetStatus>,
    pub partial_files: Vec<String>,
    pub latest: Option<String>,
    pub dest: Option<DestStatus>,
}

pub fn status(
    source: &str,
    dest: Option<&std::path::Path>,
    state_dir: Option<&std::path::Path>,
    options: &RepoOptions,
) -> Result<StatusReport> {
    let repo = open_repository(source, options)?;
    let c = &repo.collection;
    let dest = match dest {
        None => None,
        Some(d) => {
            let d = absolute_dest(d)?;
            let root = match state_dir {
                Some(s) => s.to_path_buf(),
                None => default_state_dir(&d)?,
            };
            // Read-only look: no lock, no recovery.
            let state: Option<crate::dest::state::MirrorState> =
                std::fs::read(root.join("state.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
            let latest = c.chains.last();
            let (pending, needs_full) = match (latest, &state) {
                (None, _) => (Vec::new(), false),
                (Some(ch), Some(st)) if st.chain_start == ch.start_time() => (
                    ch.incs
                        .iter()
                        .filter(|s| s.end_time > st.end_time)
                        .collect(),
                    false,
                ),
                (Some(ch), _) => (ch.sets().collect::<Vec<_>>(), true),
            };
            let mark = state.as_ref().map(rollback::high_water);
            let now = chrono::Utc::now().timestamp();
            Some(DestStatus {
                dest: d,
                newest_applied: mark.map(|m| format_iso(m.end_time)),
                newest_applied_at: mark
                    .filter(|m| m.reached_at > 0)
                    .map(|m| format_iso(m.reached_at)),
                source_behind: mark.is_some_and(|m| c.latest_time().is_none_or(|t| t < m.end_time)),
                frozen_seconds: mark
                    .and_then(|m| rollback::frozen_seconds(m, c.latest_time(), now)),
                holds: state.map(|s| format_iso(s.end_time)),
                pending_sets: pending.len(),
                pending_bytes: pending.iter().map(|s| s.volume_bytes()).sum(),
                needs_full,
            })
        }
    };
    Ok(StatusReport {
        source: repo.display(),
        prefix: c.prefix.clone(),
        chains: c
            .chains
            .iter()
            .map(|ch| ChainStatus {
                start_time: format_iso(ch.start_time()),
                end_time: format_iso(ch.end_time()),
                sets: ch.sets().map(SetStatus::of).collect(),
            })
            .collect(),
        orphans: c.orphans.iter().map(SetStatus::of).collect(),
        incomplete: c.incomplete.iter().map(SetStatus::of).collect(),
        partial_files: c.partial_files.clone(),
        latest: c.latest_time().map(format_iso),
        dest,
    })
}
