//! `dupmirror sync SOURCE DEST`: bring DEST to the backup at `--time` (default: latest).
//!
//! Order of work: open and lock DEST and its state directory (`dest::session`), finish or
//! roll back an interrupted commit, list the source, decide (`mirror::decide`), refuse an
//! older backup than DEST held unless `--time` asks for it (`mirror::rollback`), plan,
//! then stage and commit: a first sync's full on its own, then all the pending sets of the
//! chain merged into one journaled step (`Plan::commits`, `mirror::apply`), so that DEST
//! goes from the backup it held straight to the target. A failure leaves DEST as the last
//! commit left it and cleans the staging area.

use super::atomic::AtomicOutcome;
use super::resolve_time;
use crate::decode::crypto::GpgSignatureTally;
use crate::decode::records::UnevenChunks;
use crate::dest::changes::ChangedPaths;
use crate::dest::journal::Recovery;
use crate::dest::session::Session;
use crate::dest::state::{DestPaths, MirrorState, StateDir};
use crate::dest::tree::Dest;
use crate::mirror::apply::{ApplyMode, ApplyStats, MergeStats, SetApplier};
use crate::mirror::compare::{Difference, DifferenceReport};
use crate::mirror::decide::decide;
use crate::mirror::filter::PathFilter;
use crate::mirror::plan::{Plan, Step};
use crate::mirror::repair::{self, RepairStats};
use crate::mirror::rollback;
use crate::progress::{Reporter, Transfer};
use crate::repo::collection::BackupSet;
use crate::repo::select::{open_sources, Selection, SourceStatus};
use crate::repo::sigtar::SetSignatures;
use crate::repo::time::{format_iso, Epoch};
use crate::repo::{RepoOptions, Repository};
use crate::source::cache::FetchTimes;
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

pub struct SyncOptions {
    /// The sources of the repository, in order of preference (see `repo::select`).
    pub sources: Vec<String>,
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
    /// Collect the paths the run changes in DEST (`SyncReport::changed`).
    pub list_changes: bool,
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
    pub differences: Vec<DifferenceReport>,
    pub applied: Option<ApplyStats>,
    /// Paths found drifted while patching, restored from the chain.
    pub repaired: Option<RepairStats>,
}

#[derive(Serialize)]
pub struct SyncReport {
    /// The source followed (the primary).
    pub source: String,
    /// Every source: its role in this run and what it served.
    pub sources: Vec<SourceStatus>,
    pub dest: PathBuf,
    pub dry_run: bool,
    /// The state before this run (None: never synced).
    pub from: Option<String>,
    /// The state after this run (for a dry run: the state it would reach).
    pub to: String,
    /// The newest backup the source holds (`to` unless `--time` chose an older one).
    pub latest: Option<String>,
    pub up_to_date: bool,
    /// An interrupted commit that this run completed first.
    pub recovered: Option<String>,
    /// Paths that the completed commit found replaced by a symlink or file and replaced
    /// by a directory again (`verify --repair` restores what they held).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recovered_replaced: Vec<String>,
    /// An interrupted commit that was dropped: made for a DEST folder that is gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discarded: Option<String>,
    pub restart_reason: Option<String>,
    pub sets: Vec<SetReport>,
    /// Sets staged together and committed as one step (a catch-up): what that saved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged: Option<MergeStats>,
    pub bytes_read: u64,
    pub seconds: f64,
    /// Signatures of the encrypted files this run read (none read: `None`).
    pub signatures: Option<GpgSignatureTally>,
    /// What was downloaded from a remote source (all zero for a local one).
    pub transfer: Transfer,
    pub phases: Phases,
    /// `from`, `to` and `latest` as epoch seconds, for run records and metrics.
    #[serde(skip)]
    pub times: ReportTimes,
    /// The paths this run changed in DEST, when `list_changes` asked for them.
    #[serde(skip)]
    pub changed: Option<ChangedPaths>,
    /// What the run did to the atomic layout (`sync --atomic`); absent in place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub atomic: Option<AtomicOutcome>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ReportTimes {
    pub from: Option<Epoch>,
    pub to: Epoch,
    pub latest: Option<Epoch>,
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

pub fn sync(opts: &SyncOptions, reporter: &Arc<Reporter>) -> Result<SyncReport> {
    sync_from(opts, reporter, None)
}

/// The same from `opts.sources` as listed already: an atomic run lists them once for its
/// look at the live tree and the standby's run, so both decide on one listing.
pub fn sync_listed(
    opts: &SyncOptions,
    reporter: &Arc<Reporter>,
    listed: &(Repository, Selection),
) -> Result<SyncReport> {
    sync_from(opts, reporter, Some(listed))
}

fn sync_from(
    opts: &SyncOptions,
    reporter: &Arc<Reporter>,
    listed: Option<&(Repository, Selection)>,
) -> Result<SyncReport> {
    let started = Instant::now();
    let dest_paths = DestPaths::resolve(&opts.dest, opts.state_dir.as_deref())?;
    let dest = &dest_paths.dest;
    let mut changed = opts.list_changes.then(ChangedPaths::default);
    let Session {
        state_dir,
        dest: mut dest_dir,
        recovery,
        state,
        stale,
    } = Session::open(&dest_paths, opts.wait, opts.durable, changed.as_mut())?;
    let (recovered, recovered_replaced, discarded) = match recovery {
        Recovery::Nothing => (None, Vec::new(), None),
        Recovery::Completed { state, replaced } => (
            Some(format_iso(state.end_time)),
            replaced.iter().map(ToString::to_string).collect(),
            None,
        ),
        Recovery::Discarded { state } => (None, Vec::new(), Some(format_iso(state.end_time))),
    };
    // The newest backup DEST ever held; kept even when DEST is gone or replaced.
    let mut mark = state.as_ref().or(stale.as_ref()).map(rollback::high_water);
    let mut phases = Phases::default();
    let phase = Instant::now();
    let opened;
    let (repo, selection) = match listed {
        Some((repo, selection)) => (repo, selection),
        None => {
            opened = open_sources(&opts.sources, &opts.repo, reporter)?;
            (&opened.0, &opened.1)
        }
    };
    phases.list_seconds = phase.elapsed().as_secs_f64();
    let time = resolve_time(opts.time.as_deref())?;
    let explicit_time = opts.time.is_some();
    let dest_empty = dest_dir.is_empty()?;
    if state.is_none() && !dest_empty && !opts.adopt {
        if stale.is_some() {
            bail!(
                "DEST {} is not the folder dupmirror synced (it was replaced since); pass \
                 --adopt to make it the backup (files not in the backup are removed)",
                dest.display()
            );
        }
        bail!(
            "DEST {} is not empty and was never synced by dupmirror; use an empty or missing \
             folder, or pass --adopt to make it the backup (files not in the backup are removed)",
            dest.display()
        );
    }
    let filter = PathFilter::from_args(&opts.paths);
    let phase = Instant::now();
    let decision = decide(state.as_ref(), &repo.collection, time, &filter, dest_empty)?
        .ok_or_else(|| no_backup(repo))?;
    rollback::check_target(mark, decision.end_time, explicit_time)?;
    let plan = Plan::build(repo, decision, dest_dir.tree(), &filter)?;
    phases.plan_seconds = phase.elapsed().as_secs_f64();
    let mut report = SyncReport {
        source: repo.display(),
        sources: Vec::new(),
        dest: dest.clone(),
        dry_run: opts.dry_run,
        from: state.as_ref().map(|s| format_iso(s.end_time)),
        to: format_iso(plan.decision.end_time),
        latest: repo.collection.latest_time().map(format_iso),
        up_to_date: plan.decision.is_up_to_date(),
        recovered,
        recovered_replaced,
        discarded,
        restart_reason: plan.decision.restart.as_ref().map(|r| r.to_string()),
        sets: plan
            .steps
            .iter()
            .map(|s| SetReport {
                set: s.set.label(),
                mode: s.mode,
                volumes: s.volumes.len(),
                volumes_in_set: s.manifest.volumes.len(),
                bytes: s.bytes,
                differences: s.differences.iter().map(Difference::report).collect(),
                applied: None,
                repaired: None,
            })
            .collect(),
        merged: None,
        bytes_read: 0,
        seconds: 0.0,
        signatures: None,
        transfer: Transfer::default(),
        phases: Phases::default(),
        times: ReportTimes {
            from: state.as_ref().map(|s| s.end_time),
            to: plan.decision.end_time,
            latest: repo.collection.latest_time(),
        },
        changed: None,
        atomic: None,
    };
    let finish = |mut report: SyncReport, phases: Phases, changed: Option<ChangedPaths>| {
        report.seconds = started.elapsed().as_secs_f64();
        report.signatures = opts
            .repo
            .decryptor
            .as_ref()
            .map(|d| d.gpg_signatures())
            .filter(|t| t.encrypted_files > 0);
        report.transfer = reporter.transfer();
        report.sources = selection.report();
        report.phases = phases;
        report.changed = changed;
        Ok(report)
    };
    if opts.dry_run {
        return finish(report, phases, None);
    }
    // Volumes download (prefetch) in the order the sets read them.
    let phase = Instant::now();
    let mut wants = Vec::new();
    for step in &plan.steps {
        wants.extend(repo.wants(step.set, &step.manifest, &step.volumes)?);
    }
    repo.prefetch(wants, &state_dir.root().join("cache"), opts.prefetch)?;
    reporter.start_apply(plan.steps.iter().map(|s| s.bytes).sum());
    for commit in plan.commits() {
        let steps = &plan.steps[commit.clone()];
        let last = steps.last().context("a commit without a set")?;
        let newest = rollback::next_high_water(
            mark,
            last.set.end_time,
            explicit_time,
            chrono::Utc::now().timestamp(),
        );
        let target = MirrorState::new(
            repo.display(),
            plan.decision.chain_start,
            last.set.end_time,
            dest.clone(),
            filter.to_strings(),
        )
        .with_newest(newest);
        let staged = dest_dir
            .recheck()
            .and_then(|()| stage_commit(repo, &plan, steps, &dest_dir, &state_dir, &target));
        let (applier, repaired) = match staged {
            Ok(a) => a,
            Err(e) => {
                // Nothing was committed: DEST is as the previous commit left it.
                let _ = state_dir.remove_staging();
                return Err(e.context(not_applied(steps)));
            }
        };
        let committed =
            match applier.commit(&state_dir, &mut dest_dir, opts.durable, changed.as_mut()) {
                Ok(committed) => committed,
                Err(e) => {
                    // Without a journal the commit point was not reached (e.g. the journal
                    // could not be written or renamed): DEST is unchanged, and staging goes
                    // as above. With one, the staging it points to must stay for the next
                    // run's replay.
                    if !state_dir.has_journal() {
                        let _ = state_dir.remove_staging();
                    }
                    return Err(e);
                }
            };
        mark = Some(newest);
        let set_reports = &mut report.sets[commit];
        for ((set_report, step), (stats, repaired)) in set_reports
            .iter_mut()
            .zip(steps)
            .zip(committed.sets.into_iter().zip(repaired))
        {
            set_report.applied = Some(stats);
            report.bytes_read += step.bytes + repaired.as_ref().map_or(0, |r| r.bytes_read);
            set_report.repaired = repaired;
        }
        if committed.merged.is_some() {
            report.merged = committed.merged;
        }
    }
    phases.apply_seconds = phase.elapsed().as_secs_f64();
    phases.fetch = repo.fetch_times();
    finish(report, phases, changed)
}

/// Why there is nothing to sync to.
fn no_backup(repo: &Repository) -> anyhow::Error {
    let incomplete = repo.collection.incomplete.len();
    if incomplete > 0 {
        anyhow!(
            "the source holds no complete backup yet: {incomplete} set(s) have no manifest (a \
             backup in progress?)"
        )
    } else {
        anyhow!("the source holds no duplicity backup ({})", repo.display())
    }
}

/// The context of a failure before the commit point.
fn not_applied(steps: &[Step]) -> String {
    match steps {
        [one] => format!(
            "set {} was not applied; DEST is unchanged by it",
            one.set.label()
        ),
        [first, .., last] => format!(
            "the {} sets from {} to {} were not applied; DEST is unchanged by them",
            steps.len(),
            first.set.label(),
            last.set.label()
        ),
        [] => "nothing was applied".to_string(),
    }
}

/// Stages the sets of one commit into one applier: each set's fixes, its records, and the
/// repair of any path found drifted; every volume of every set is read (and its SHA1
/// checked) before the commit.
fn stage_commit(
    repo: &Repository,
    plan: &Plan,
    steps: &[Step],
    dest: &Dest,
    state_dir: &StateDir,
    target: &MirrorState,
) -> Result<(SetApplier, Vec<Option<RepairStats>>)> {
    let mut slot: Option<SetApplier> = None;
    let mut repairs = Vec::new();
    for step in steps {
        let new_applier =
            || SetApplier::new(step.mode, dest, state_dir, target, step.filter.clone());
        let applier = match &mut slot {
            Some(a) => {
                a.next_set(step.filter.clone())?;
                a
            }
            None => slot.insert(new_applier()?),
        };
        let mut staged = stage_step(repo, plan, step, state_dir, applier, true);
        if staged
            .as_ref()
            .is_err_and(|e| e.chain().any(|c| c.is::<UnevenChunks>()))
        {
            // Written before duplicity 0.6.21: build it again, reading volumes in order.
            slot = None;
            let applier = slot.insert(new_applier()?);
            staged = stage_step(repo, plan, step, state_dir, applier, false);
        }
        let repaired = staged.with_context(|| format!("set {}", step.set.label()))?;
        repairs.push(repaired);
    }
    let applier = slot.context("a commit without a set")?;
    Ok((applier, repairs))
}

/// Stages one set into `applier`: its fixes, its records, and the repair of any path found
/// drifted. A first sync's volumes are read apart (several at once) when `apart` allows.
fn stage_step(
    repo: &Repository,
    plan: &Plan,
    step: &Step,
    state_dir: &StateDir,
    applier: &mut SetApplier,
    apart: bool,
) -> Result<Option<RepairStats>> {
    for diff in step.differences.iter().filter(|d| !d.needs_data()) {
        applier.add_fix(diff)?;
    }
    if step.mode == ApplyMode::Update {
        applier.detect_drift(SetSignatures::open(repo, step.set)?);
    }
    let decoders = Repository::decoders()?;
    match applier.volumes_apart() {
        Some(sinks) if apart && decoders > 1 && step.volumes.len() > 1 => {
            repo.read_set_apart(step.set, &step.manifest, &step.volumes, decoders, &sinks)?
        }
        _ => repo.read_set(step.set, &step.manifest, &step.volumes, applier)?,
    }
    let drifted = applier.take_drifted()?;
    if drifted.is_empty() {
        return Ok(None);
    }
    // DEST did not hold what the previous set left: restore those paths as this set
    // leaves them, from the chain, and commit them with the set.
    let sets: Vec<&BackupSet> = plan
        .decision
        .chain
        .iter()
        .copied()
        .filter(|s| s.end_time <= step.set.end_time)
        .collect();
    let stats = repair::stage_repair(repo, &sets, &drifted, state_dir, applier).context(
        "a file in DEST differs from what the previous backup left (the delta does not fit \
         its basis) and must be restored from the chain",
    )?;
    Ok(Some(stats))
}
