//! `dupmirror sync SOURCE DEST`: bring DEST to the backup at `--time` (default: latest).
//!
//! Order of work: lock the state directory, finish or roll back an interrupted commit,
//! list the source, refuse an older backup than DEST held unless `--time` asks for it
//! (`mirror::rollback`), plan, then stage and commit one set at a time. A failure leaves DEST as
//! the last committed set left it and cleans the staging area.

use super::{open_repository, resolve_time};
use crate::decode::crypto::GpgSignatureTally;
use crate::dest::fsops;
use crate::dest::journal;
use crate::dest::state::{absolute_dest, default_state_dir, MirrorState, StateDir};
use crate::mirror::apply::{ApplyMode, ApplyStats, SetApplier};
use crate::mirror::filter::PathFilter;
use crate::mirror::plan::{Plan, Step};
use crate::mirror::repair::{self, RepairStats};
use crate::mirror::rollback;
use crate::repo::sigtar::set_signatures;
use crate::repo::time::format_iso;
use crate::repo::{RepoOptions, Repository};
use crate::source::cache::FetchTimes;
use crate::source::meter::Transfer;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct SyncOptions {
    pub source: String,
    pub dest: PathBuf,
    pub time: Option<String>,
    pub state_dir: Option<PathBuf>,
    /// The subtrees to mirror (`--path`); empty for the whole tree.
    pub paths: Vec<String>,
    pub dry_run: bool,
    /// Allow a first sync into a non-empty DEST (it becomes the backup; extra files go).
    pub adopt: bool,
    /// Wait for another sync's lock instead of failing.
    pub wait: bool,
    /// Sync the file system before each commit (power-cut safety).
    pub durable: bool,
    /// Most volume files downloaded ahead and kept in the cache at once (≥ 1).
    pub prefetch: usize,
    pub repo: RepoOptions,
}

#[derive(Serialize)]
pub struct SetReport {
    pub set: String,
    pub mode: ApplyMode,
    /// Volumes to read of the set's total.
    pub volumes: usize,
    pub volumes_in_set: usize,
    pub bytes: u64,
    /// Replace: the paths that differ from the full, and how.
    pub differences: Vec<PathReport>,
    pub applied: Option<ApplyStats>,
    /// Paths found drifted while patching, restored from the chain.
    pub repaired: Option<RepairStats>,
}

#[derive(Serialize)]
pub struct PathReport {
    pub path: String,
    pub what: String,
}

#[derive(Serialize)]
pub struct SyncReport {
    pub source: String,
    pub dest: PathBuf,
    pub dry_run: bool,
    /// The state before this run (None: never synced).
    pub from: Option<String>,
    /// The state after this run (for a dry run: the state it would reach).
    pub to: String,
    pub up_to_date: bool,
    /// An interrupted commit that this run completed first.
    pub recovered: Option<String>,
    pub restart_reason: Option<String>,
    pub sets: Vec<SetReport>,
    pub bytes_read: u64,
    pub seconds: f64,
    /// Signatures of the encrypted files this run read (none read: `None`).
    pub signatures: Option<GpgSignatureTally>,
    /// What was downloaded from a remote source (all zero for a local one).
    pub transfer: Transfer,
    pub phases: Phases,
}

/// Where the time went. Downloading overlaps with applying (prefetch).
#[derive(Serialize, Default)]
pub struct Phases {
    pub list_seconds: f64,
    /// Reading the manifests of the sets to apply.
    pub plan_seconds: f64,
    /// Staging and committing the sets, waits for downloads included.
    pub apply_seconds: f64,
    #[serde(flatten)]
    pub fetch: FetchTimes,
}

fn is_empty_or_missing(dest: &Path) -> Result<bool> {
    match std::fs::read_dir(dest) {
        Ok(mut it) => Ok(it.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot read DEST {}", dest.display())),
    }
}

pub fn sync(opts: &SyncOptions) -> Result<SyncReport> {
    let started = Instant::now();
    let dest = absolute_dest(&opts.dest)?;
    let state_root = match &opts.state_dir {
        Some(s) => std::path::absolute(s)?,
        None => default_state_dir(&dest)?,
    };
    if state_root.starts_with(&dest) {
        bail!(
            "the state directory {} lies inside DEST; DEST must hold only the backed-up tree",
            state_root.display()
        );
    }
    let state_dir = StateDir::open(&state_root, &dest, opts.wait)?;
    let recovered = journal::recover(&state_dir, &dest)?.map(|s| format_iso(s.end_time));
    let mut state = state_dir.load()?;
    // The newest backup DEST ever held; kept even when DEST must be rebuilt.
    let mut mark = state.as_ref().map(rollback::high_water);
    if let Some(st) = &state {
        if st.dest != dest {
            bail!(
                "state directory {} belongs to DEST {}, not {}; pass another --state-dir",
                state_root.display(),
                st.dest.display(),
                dest.display()
            );
        }
        if !dest.exists() {
            // DEST was removed: rebuild it from scratch.
            state = None;
        }
    }
    let mut phases = Phases::default();
    let phase = Instant::now();
    let repo = open_repository(&opts.source, &opts.repo)?;
    phases.list_seconds = phase.elapsed().as_secs_f64();
    let time = resolve_time(opts.time.as_deref())?;
    let explicit_time = opts.time.is_some();
    if let Some(chain) = repo.collection.select(time)? {
        rollback::check_target(mark, chain.end_time_at(time), explicit_time)?;
    }
    let dest_empty = is_empty_or_missing(&dest)?;
    if state.is_none() && !dest_empty && !opts.adopt {
        bail!(
            "DEST {} is not empty and was never synced by dupmirror; use an empty or missing \
             folder, or pass --adopt to make it the backup (files not in the backup are removed)",
            dest.display()
        );
    }
    let filter = PathFilter::from_args(&opts.paths);
    let phase = Instant::now();
    let plan = Plan::build(&repo, state.as_ref(), &dest, dest_empty, time, &filter)?;
    phases.plan_seconds = phase.elapsed().as_secs_f64();
    let mut report = SyncReport {
        source: repo.display(),
        dest: dest.clone(),
        dry_run: opts.dry_run,
        from: state.as_ref().map(|s| format_iso(s.end_time)),
        to: format_iso(plan.end_time),
        up_to_date: plan.steps.is_empty(),
        recovered,
        restart_reason: plan.restart_reason.clone(),
        sets: plan
            .steps
            .iter()
            .map(|s| SetReport {
                set: s.set.label(),
                mode: s.mode,
                volumes: s.volumes.len(),
                volumes_in_set: s.manifest.volumes.len(),
                bytes: s.bytes,
                differences: s
                    .differences
                    .iter()
                    .map(|d| PathReport {
                        path: d.index.to_string(),
                        what: d.describe(),
                    })
                    .collect(),
                applied: None,
                repaired: None,
            })
            .collect(),
        bytes_read: 0,
        seconds: 0.0,
        signatures: None,
        transfer: Transfer::default(),
        phases: Phases::default(),
    };
    let finish = |mut report: SyncReport, phases: Phases| {
        report.seconds = started.elapsed().as_secs_f64();
        report.signatures = opts
            .repo
            .decryptor
            .as_ref()
            .map(|d| d.gpg_signatures())
            .filter(|t| t.encrypted_files > 0);
        report.transfer = opts.repo.source.meter.snapshot();
        report.phases = phases;
        Ok(report)
    };
    if opts.dry_run {
        return finish(report, phases);
    }
    // Volumes download (prefetch) in the order the sets read them.
    let phase = Instant::now();
    let mut wants = Vec::new();
    for step in &plan.steps {
        wants.extend(repo.wants(&step.set, &step.manifest, &step.volumes)?);
    }
    repo.prefetch(wants, &state_dir.root().join("cache"), opts.prefetch)?;
    let progress = opts.repo.source.meter.progress();
    progress.start_apply(plan.steps.iter().map(|s| s.bytes).sum());
    for (step, set_report) in plan.steps.iter().zip(report.sets.iter_mut()) {
        let newest = rollback::next_high_water(
            mark,
            step.set.end_time,
            explicit_time,
            chrono::Utc::now().timestamp(),
        );
        let target = MirrorState::new(
            repo.display(),
            plan.chain_start,
            step.set.end_time,
            dest.clone(),
            filter.to_strings(),
        )
        .with_newest(newest);
        let staged = stage_step(&repo, &plan, step, &dest, &state_dir, &target, opts.durable);
        let (applier, repaired) = match staged {
            Ok(a) => a,
            Err(e) => {
                // Nothing was committed: DEST is as the previous set left it.
                let _ = fsops::remove_any(state_dir.staging());
                return Err(e.context(format!(
                    "set {} was not applied; DEST is unchanged by it",
                    step.set.label()
                )));
            }
        };
        let stats = match applier.commit(&state_dir) {
            Ok(stats) => stats,
            Err(e) => {
                // Without a journal the commit point was not reached (e.g. the journal could
                // not be written or renamed): DEST is unchanged, and staging goes as above.
                // With one, the staging it points to must stay for the next run's replay.
                if !state_dir.journal_path().exists() {
                    let _ = fsops::remove_any(state_dir.staging());
                }
                return Err(e);
            }
        };
        mark = Some(newest);
        set_report.applied = Some(stats);
        report.bytes_read += step.bytes + repaired.as_ref().map_or(0, |r| r.bytes_read);
        set_report.repaired = repaired;
    }
    progress.finish();
    phases.apply_seconds = phase.elapsed().as_secs_f64();
    phases.fetch = repo.fetch_times();
    finish(report, phases)
}

/// Stages one set: its fixes, its records, and the repair of any path found drifted.
fn stage_step(
    repo: &Repository,
    plan: &Plan,
    step: &Step,
    dest: &Path,
    state_dir: &StateDir,
    target: &MirrorState,
    durable: bool,
) -> Result<(SetApplier, Option<RepairStats>)> {
    let mut applier = SetApplier::new(
        step.mode,
        dest,
        state_dir,
        target,
        step.filter.clone(),
        durable,
    )?;
    for diff in step.differences.iter().filter(|d| !d.needs_data()) {
        applier.add_fix(diff)?;
    }
    if step.mode == ApplyMode::Update {
        applier.detect_drift(set_signatures(repo, &step.set)?);
    }
    repo.read_set(&step.set, &step.manifest, &step.volumes, &mut applier)?;
    let drifted = applier.take_drifted();
    if drifted.is_empty() {
        return Ok((applier, None));
    }
    // DEST did not hold what the previous set left: restore those paths as this set
    // leaves them, from the chain, and commit them with the set.
    let sets: Vec<&crate::repo::collection::BackupSet> = plan
        .chain_sets
        .iter()
        .filter(|s| s.end_time <= step.set.end_time)
        .collect();
    let paths = PathFilter::subtrees(drifted.iter().cloned());
    let scratch_root = state_dir.repair_scratch();
    let (scratch, stats) = repair::restore_paths(repo, &sets, &paths, &scratch_root)?;
    // Every drifted path was patched by this set, so the chain must hold it.
    for index in &drifted {
        if fsops::lstat_type(&fsops::dest_path(&scratch.tree, index))?.is_none() {
            bail!(
                "cannot apply the change to {index}: the file in DEST differs from what the \
                 previous backup left (the delta does not fit its basis), and no volume of \
                 the chain holds the file to restore it from"
            );
        }
    }
    repair::graft(&scratch.tree, &paths, &mut applier)?;
    Ok((applier, Some(stats)))
}
