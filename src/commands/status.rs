//! `dupmirror status SOURCE [--json]`: what the repository holds (like
//! `duplicity collection-status`), and with `--dest`, what a sync of that DEST (with the
//! same `--time` and `--path`) would do: the very decision `sync` makes (`mirror::decide`),
//! and whether the source stopped advancing (frozen) or went back (`mirror::rollback`).
//! In the atomic layout DEST's state is its live tree's.

use super::atomic::reading_paths;
use super::resolve_time;
use crate::dest::atomic::{Layout, LayoutView};
use crate::dest::state::DestPaths;
use crate::mirror::decide::decide;
use crate::mirror::filter::PathFilter;
use crate::mirror::rollback;
use crate::progress::Reporter;
use crate::repo::collection::{BackupSet, Collection};
use crate::repo::filename::SetKind;
use crate::repo::select::{open_sources, SourceStatus};
use crate::repo::time::format_iso;
use crate::repo::RepoOptions;
use anyhow::Result;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

pub struct StatusOptions {
    /// The sources of the repository, in order of preference (see `repo::select`): the
    /// status is that of the one a sync would follow.
    pub sources: Vec<String>,
    /// Also tell what a sync of this DEST would do.
    pub dest: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// The `--time` of that sync (default: now, the latest backup).
    pub time: Option<String>,
    /// The `--path` subtrees of that sync (none: the whole tree).
    pub paths: Vec<String>,
    pub repo: RepoOptions,
}

#[derive(Serialize)]
pub struct DestStatus {
    pub dest: PathBuf,
    /// The end time of the state DEST holds (None: never synced, or DEST was removed).
    pub holds: Option<String>,
    /// The state a sync would bring DEST to (None: the source holds no complete backup).
    pub to: Option<String>,
    /// Sets a sync would apply.
    pub pending_sets: usize,
    /// Their volume bytes: at most what a sync reads (a Replace reads only what differs,
    /// `--path` only the volumes that hold the paths).
    pub pending_bytes: u64,
    /// A sync would start over from a full set (new chain, DEST off the chain, new paths).
    pub needs_full: bool,
    /// Why it would start over, as `sync` reports it.
    pub restart_reason: Option<String>,
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
    /// The atomic layout (`sync --atomic`): the live tree (whose state `holds` is) and the
    /// standby; absent in place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub atomic: Option<LayoutView>,
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
    /// What each source was to this run (as in a sync's report).
    pub sources: Vec<SourceStatus>,
}

pub fn status(opts: &StatusOptions, reporter: &Arc<Reporter>) -> Result<StatusReport> {
    let (repo, selection) = open_sources(&opts.sources, &opts.repo, reporter)?;
    let c = &repo.collection;
    let dest = match &opts.dest {
        None => None,
        Some(d) => Some(dest_status(opts, d, c)?),
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
        sources: selection.report(),
    })
}

/// What a sync of `dest` would do. A read-only look: no lock, no recovery of an
/// interrupted commit (the sync would complete it first).
fn dest_status(opts: &StatusOptions, dest: &Path, c: &Collection) -> Result<DestStatus> {
    let dest = DestPaths::resolve(dest, opts.state_dir.as_deref())?;
    let (dest_paths, live) = reading_paths(&dest)?;
    let atomic = live.map(|l| Layout::new(&dest).view(l)).transpose()?;
    let recorded = dest_paths.peek()?;
    let mark = recorded.as_ref().map(rollback::high_water);
    let state = dest_paths.held(recorded);
    let time = resolve_time(opts.time.as_deref())?;
    let filter = PathFilter::from_args(&opts.paths);
    let decision = decide(
        state.as_ref(),
        c,
        time,
        &filter,
        dest_paths.dest_is_empty()?,
    )?;
    let steps = decision.as_ref().map_or(&[][..], |d| &d.steps[..]);
    Ok(DestStatus {
        holds: state.map(|s| format_iso(s.end_time)),
        to: decision.as_ref().map(|d| format_iso(d.end_time)),
        pending_sets: steps.len(),
        pending_bytes: steps.iter().map(|s| s.set.volume_bytes()).sum(),
        needs_full: decision.as_ref().is_some_and(|d| d.needs_full()),
        restart_reason: decision
            .as_ref()
            .and_then(|d| d.restart.as_ref())
            .map(|r| r.to_string()),
        newest_applied: mark.map(|m| format_iso(m.end_time)),
        newest_applied_at: mark
            .filter(|m| m.reached_at > 0)
            .map(|m| format_iso(m.reached_at)),
        source_behind: mark.is_some_and(|m| c.latest_time().is_none_or(|t| t < m.end_time)),
        frozen_seconds: mark.and_then(|m| {
            rollback::frozen_seconds(m, c.latest_time(), chrono::Utc::now().timestamp())
        }),
        dest: dest.dest,
        atomic,
    })
}

#[cfg(test)]
mod tests {
    //! `status --dest` and `sync --dry-run` must answer alike: both ask `decide`.
    use super::*;
    use crate::commands::sync::{sync, SyncOptions};
    use std::path::PathBuf;

    /// chains-08: full T0, inc T1 | full T2, inc T3 (T = 1700000000 + k*1000).
    fn repo() -> String {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/repos/chains-08");
        dir.to_string_lossy().into_owned()
    }

    fn time(k: i64) -> Option<String> {
        Some((1_700_000_000 + 1000 * k).to_string())
    }

    fn status_of(dest: &Path, time: Option<String>, paths: &[&str]) -> Result<DestStatus> {
        let opts = StatusOptions {
            sources: vec![repo()],
            dest: Some(dest.to_path_buf()),
            state_dir: None,
            time,
            paths: paths.iter().map(|p| p.to_string()).collect(),
            repo: RepoOptions::default(),
        };
        Ok(status(&opts, &Arc::default())?.dest.expect("--dest"))
    }

    fn sync_to(dest: &Path, time: Option<String>, paths: &[&str], dry_run: bool) -> SyncOptions {
        SyncOptions {
            sources: vec![repo()],
            dest: dest.to_path_buf(),
            time,
            state_dir: None,
            paths: paths.iter().map(|p| p.to_string()).collect(),
            dry_run,
            adopt: false,
            wait: false,
            durable: false,
            prefetch: 1,
            list_changes: false,
            repo: RepoOptions::default(),
        }
    }

    /// Runs `sync --dry-run` with the same arguments and checks that it agrees.
    fn agrees(dest: &Path, time: Option<String>, paths: &[&str]) -> DestStatus {
        let st = status_of(dest, time.clone(), paths).unwrap();
        let dry = sync(&sync_to(dest, time, paths, true), &Arc::default()).unwrap();
        assert_eq!(st.pending_sets, dry.sets.len(), "sets");
        assert_eq!(st.to.as_deref(), Some(dry.to.as_str()), "target");
        assert_eq!(st.restart_reason, dry.restart_reason, "restart");
        assert_eq!(st.holds, dry.from, "held state");
        assert_eq!(
            st.needs_full,
            dry.sets
                .first()
                .is_some_and(|s| s.mode != crate::mirror::apply::ApplyMode::Update)
        );
        st
    }

    #[test]
    fn status_dest_says_what_sync_would_do() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("mirror");
        // Never synced: the latest chain from its full.
        let st = agrees(&dest, None, &[]);
        assert_eq!((st.pending_sets, st.needs_full, st.holds), (2, true, None));
        // Synced to the first chain's incremental.
        sync(&sync_to(&dest, time(1), &[], false), &Arc::default()).unwrap();
        let st = agrees(&dest, time(1), &[]);
        assert_eq!((st.pending_sets, st.needs_full), (0, false));
        // The latest backup is on a new chain.
        let st = agrees(&dest, None, &[]);
        assert!(st.needs_full && st.restart_reason.unwrap().contains("chain"));
        // --time back to the full of its own chain.
        let st = agrees(&dest, time(0), &[]);
        assert_eq!(st.pending_sets, 1);
        assert!(st.restart_reason.unwrap().contains("not a set on the way"));
        // Other --path subtrees.
        let st = agrees(&dest, time(1), &["a"]);
        assert!(st.restart_reason.unwrap().contains("paths changed"));
    }

    #[test]
    fn a_damaged_state_is_an_error_not_never_synced() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("mirror");
        sync(&sync_to(&dest, None, &[], false), &Arc::default()).unwrap();
        std::fs::write(tmp.path().join(".mirror.dupmirror/state.json"), "{ half").unwrap();
        let Err(err) = status_of(&dest, None, &[]) else {
            panic!("a damaged state.json read as a state");
        };
        let err = format!("{err:#}");
        assert!(err.contains("damaged"), "{err}");
    }
}
