//! `dupmirror verify SOURCE DEST [--repair]`: compare DEST with the signatures of the state
//! it claims to hold, reading no volume; with `--repair`, restore exactly the paths that
//! differ (reading only the volumes that hold them), atomically, and verify again.

use super::open_repository;
use crate::dest::journal;
use crate::dest::state::{absolute_dest, default_state_dir, StateDir};
use crate::mirror::apply::{ApplyMode, SetApplier};
use crate::mirror::compare::{compare, CompareStats, ContentCheck, Difference};
use crate::mirror::filter::PathFilter;
use crate::mirror::repair::{self, RepairStats};
use crate::repo::collection::BackupSet;
use crate::repo::time::{format_compact, format_iso};
use crate::repo::RepoOptions;
use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

pub struct VerifyOptions {
    pub source: String,
    pub dest: PathBuf,
    pub state_dir: Option<PathBuf>,
    pub repair: bool,
    /// Metadata only (no hashing), like rsync's quick check.
    pub quick: bool,
    pub durable: bool,
    pub repo: RepoOptions,
}

#[derive(Serialize)]
pub struct DiffReport {
    pub path: String,
    pub what: String,
}

impl DiffReport {
    fn of(d: &Difference) -> Self {
        DiffReport {
            path: d.index.to_string(),
            what: d.describe(),
        }
    }
}

#[derive(Serialize)]
pub struct VerifyReport {
    pub dest: PathBuf,
    /// The backup state DEST claims to hold.
    pub state: String,
    pub differences: Vec<DiffReport>,
    pub compare: CompareStats,
    pub repaired: Option<RepairStats>,
    /// After a repair: what still differs (nothing, normally).
    pub remaining: Option<Vec<DiffReport>>,
    pub seconds: f64,
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

pub fn verify(opts: &VerifyOptions) -> Result<VerifyReport> {
    let started = Instant::now();
    let dest = absolute_dest(&opts.dest)?;
    let state_root = match &opts.state_dir {
        Some(s) => std::path::absolute(s)?,
        None => default_state_dir(&dest)?,
    };
    let state_dir = StateDir::open(&state_root, &dest, false)?;
    journal::recover(&state_dir, &dest)?;
    let state = state_dir.load()?.ok_or_else(|| {
        anyhow!(
            "DEST {} was never synced by dupmirror: nothing to verify against",
            dest.display()
        )
    })?;
    let repo = open_repository(&opts.source, &opts.repo)?;
    let chain = repo
        .collection
        .chains
        .iter()
        .find(|c| c.start_time() == state.chain_start)
        .ok_or_else(|| {
            anyhow!(
                "the source no longer has the chain of {} that DEST holds; run sync",
                format_compact(state.chain_start)
            )
        })?;
    let sets: Vec<&BackupSet> = chain.sets_until(state.end_time);
    if sets.last().map(|s| s.end_time) != Some(state.end_time) {
        bail!(
            "the source no longer has the set of {} that DEST holds; run sync",
            format_compact(state.end_time)
        );
    }
    let filter = if state.paths.is_empty() {
        PathFilter::all()
    } else {
        PathFilter::from_args(&state.paths)
    };
    let check = if opts.quick {
        ContentCheck::Quick
    } else {
        ContentCheck::Signatures
    };
    let (diffs, stats) = compare(&repo, &sets, &dest, &filter, check)?;
    let mut report = VerifyReport {
        dest: dest.clone(),
        state: format_iso(state.end_time),
        differences: diffs.iter().map(DiffReport::of).collect(),
        compare: stats,
        repaired: None,
        remaining: None,
        seconds: 0.0,
    };
    if opts.repair && !diffs.is_empty() {
        let need = PathFilter::subtrees(
            diffs
                .iter()
                .filter(|d| d.needs_data())
                .map(|d| d.index.clone()),
        );
        let mut applier = SetApplier::new(
            ApplyMode::Update,
            &dest,
            &state_dir,
            &state,
            filter.clone(),
            opts.durable,
        )?;
        for d in diffs.iter().filter(|d| !d.needs_data()) {
            applier.add_fix(d)?;
        }
        let mut repair_stats = RepairStats::default();
        if !need.roots().is_empty() {
            let scratch_root = state_dir.repair_scratch();
            let (scratch, stats) = repair::restore_paths(&repo, &sets, &need, &scratch_root)?;
            repair::graft(&scratch.tree, &need, &mut applier)?;
            repair_stats = stats;
        }
        applier.commit(&state_dir, None)?;
        report.repaired = Some(repair_stats);
        let (after, _) = compare(&repo, &sets, &dest, &filter, check)?;
        report.remaining = Some(after.iter().map(DiffReport::of).collect());
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
