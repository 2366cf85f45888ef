//! `dupmirror verify SOURCE DEST [--repair]`: compare DEST with the signatures of the state
//! it claims to hold, reading no volume; with `--repair`, restore exactly the paths that
//! differ (reading only the volumes that hold them), atomically, and verify again. In the
//! atomic layout the live tree is checked, and repaired by way of the standby
//! (`commands::atomic`).

use super::atomic::{verify_atomic, AtomicOutcome};
use crate::dest::atomic::Layout;
use crate::dest::session::Session;
use crate::dest::state::DestPaths;
use crate::mirror::apply::{ApplyMode, SetApplier};
use crate::mirror::compare::{compare, CompareStats, ContentCheck, Difference, DifferenceReport};
use crate::mirror::decide::{decide, Decision, Restart};
use crate::mirror::filter::PathFilter;
use crate::mirror::repair::{self, RepairStats};
use crate::progress::Reporter;
use crate::repo::select::{open_sources, SourceStatus};
use crate::repo::time::{format_compact, format_iso};
use crate::repo::RepoOptions;
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct VerifyOptions {
    /// The sources of the repository, in order of preference (see `repo::select`).
    pub sources: Vec<String>,
    pub dest: PathBuf,
    pub state_dir: Option<PathBuf>,
    pub repair: bool,
    /// Metadata only (no hashing), like rsync's quick check.
    pub quick: bool,
    pub durable: bool,
    /// In the atomic layout: how long the standby must have been out of service before
    /// `--repair` writes it.
    pub grace: Duration,
    pub repo: RepoOptions,
}

#[derive(Serialize)]
pub struct VerifyReport {
    pub dest: PathBuf,
    /// The backup state DEST claims to hold.
    pub state: String,
    pub differences: Vec<DifferenceReport>,
    pub compare: CompareStats,
    pub repaired: Option<RepairStats>,
    /// After a repair: what still differs (nothing, normally).
    pub remaining: Option<Vec<DifferenceReport>>,
    pub seconds: f64,
    /// What each source was to this run, and what it served (as in a sync's report).
    pub sources: Vec<SourceStatus>,
    /// The atomic layout: the live tree checked, the standby, a repair's switch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub atomic: Option<AtomicOutcome>,
}

impl VerifyReport {
    /// Whether DEST ends up equal to the backup.
    pub fn clean(&self) -> bool {
        match &self.remaining {
            Some(r) => r.is_empty(),
            None => self.differences.is_empty(),
        }
    }
}

pub fn verify(opts: &VerifyOptions, reporter: &Arc<Reporter>) -> Result<VerifyReport> {
    let started = Instant::now();
    let dest_paths = DestPaths::resolve(&opts.dest, opts.state_dir.as_deref())?;
    if Layout::new(&dest_paths).detect()?.is_some() {
        return verify_atomic(opts, &dest_paths, opts.grace, reporter);
    }
    let dest = &dest_paths.dest;
    let Session {
        state_dir,
        dest: mut dest_dir,
        state,
        stale,
        ..
    } = Session::open(&dest_paths, false, opts.durable, None)?;
    let state = match (state, stale) {
        (Some(st), _) => st,
        (None, Some(_)) => bail!(
            "DEST {} is not the folder dupmirror synced (it was removed or replaced since); \
             run sync",
            dest.display()
        ),
        (None, None) => bail!(
            "DEST {} was never synced by dupmirror: nothing to verify against",
            dest.display()
        ),
    };
    let (repo, selection) = open_sources(&opts.sources, &opts.repo, reporter)?;
    let filter = PathFilter::from_args(&state.paths);
    // The sets DEST holds are those a sync to its own state would find it up to date with.
    let decision = decide(
        Some(&state),
        &repo.collection,
        state.end_time,
        &filter,
        false,
    )?;
    let sets = match decision {
        Some(d) if d.restart.is_none() => d.chain,
        Some(Decision {
            restart: Some(Restart::OffChain { .. }),
            ..
        }) => bail!(
            "the source no longer has the set of {} that DEST holds; run sync",
            format_compact(state.end_time)
        ),
        _ => bail!(
            "the source no longer has the chain of {} that DEST holds; run sync",
            format_compact(state.chain_start)
        ),
    };
    let check = if opts.quick {
        ContentCheck::Quick
    } else {
        ContentCheck::Signatures
    };
    let (diffs, stats) = compare(&repo, &sets, dest_dir.tree(), &filter, check)?;
    let mut report = VerifyReport {
        dest: dest.clone(),
        state: format_iso(state.end_time),
        differences: diffs.iter().map(Difference::report).collect(),
        compare: stats,
        repaired: None,
        remaining: None,
        seconds: 0.0,
        sources: Vec::new(),
        atomic: None,
    };
    if opts.repair && !diffs.is_empty() {
        let mut applier = SetApplier::new(
            ApplyMode::Update,
            &dest_dir,
            &state_dir,
            &state,
            filter.clone(),
        )?;
        let mut need = BTreeSet::new();
        for d in &diffs {
            if d.needs_data() {
                need.insert(d.index.clone());
            } else {
                applier.add_fix(d)?;
            }
        }
        let mut repair_stats = RepairStats::default();
        if !need.is_empty() {
            repair_stats = repair::stage_repair(&repo, &sets, &need, &state_dir, &mut applier)?;
        }
        applier.commit(&state_dir, &mut dest_dir, opts.durable, None)?;
        report.repaired = Some(repair_stats);
        let (after, _) = compare(&repo, &sets, dest_dir.tree(), &filter, check)?;
        report.remaining = Some(after.iter().map(Difference::report).collect());
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.sources = selection.report();
    Ok(report)
}
