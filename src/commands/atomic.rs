//! `sync --atomic`, `sync --in-place` and `verify` in the atomic layout: when to build the
//! standby tree, when to switch DEST to it, and how to convert a DEST between layouts. The
//! layout itself (two trees, the link, its journal) is `dest::atomic`; bringing a tree to
//! a backup is the ordinary sync engine, run on the standby tree as on any DEST.
//!
//! ```text
//! sync_dest(opts, layout choice, grace):
//!     a layout change left by a killed run: finish or roll it back (dest::atomic)
//!     DEST plain, --atomic:  synced DEST: finish its interrupted commit, adopt it as tree a
//!                            (a rename, nothing downloaded), then go on as below;
//!                            missing or empty: bootstrap (below); never synced and not
//!                            empty: the in-place sync adopts it (--adopt) first
//!     DEST plain, otherwise: the in-place sync
//!     DEST atomic, --in-place: release: the live tree becomes DEST again (a rename), the
//!                            standby is removed; then the in-place sync
//!     DEST atomic, otherwise:
//!         no live tree (bootstrap): build tree a (engine, fresh), switch to it
//!         list the sources (once for the look and the standby's run)
//!         look = engine dry run on the live tree (decides)
//!         up to date: done, nothing written
//!         standby served less than --grace ago: "deferred", exit 0, nothing written
//!         engine on the standby, to the target: it applies the sets it lacks (it is one
//!             generation behind, so about twice the sets of an in-place run), journaled
//!             per set; missing: a fresh build; another chain: the engine's Replace
//!         standby marked damaged (verify --repair switched away from it): repair it
//!         switch DEST to the standby (one rename, journaled); the old live tree becomes
//!             the standby and its time of leaving service is recorded
//! verify (atomic): verify the live tree; --repair never writes it: after --grace, bring
//!     the standby to the live tree's backup, repair the standby, switch, verify again
//! ```
//!
//! The look and the standby's run share one listing of the sources, so the standby goes to
//! the backup the look decided on even when a new one lands between them.
//!
//! Limits: the live tree is never written, but it is read twice per run (a dry run for the
//! decision, then the standby's run reads the manifests again). The first build of the
//! standby after a bootstrap or a conversion reads the whole chain (there is no second
//! tree to start from). A reader that keeps a file or folder of the old tree open past
//! --grace sees that tree change under it; one that resolves DEST once per pass and is
//! done within --grace sees one backup whole. Post-sync hooks and changed lists get the
//! standby's changes: every path that differs between the previous live tree and the new
//! one is in it, with some that changed one generation earlier.

use super::sync::{sync, sync_listed, SyncOptions, SyncReport};
use super::verify::{verify, VerifyOptions, VerifyReport};
use crate::dest::atomic::{AtomicDest, Layout, LayoutView, Slot};
use crate::dest::session::Session;
use crate::dest::state::{DestPaths, MirrorState};
use crate::progress::Reporter;
use crate::repo::select::open_sources;
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// Which layout a sync leaves DEST in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LayoutChoice {
    /// The layout DEST has (a new DEST: in place).
    #[default]
    Keep,
    /// `--atomic`.
    Atomic,
    /// `--in-place`.
    InPlace,
}

#[derive(Clone, Copy, Debug)]
pub struct LayoutOptions {
    pub choice: LayoutChoice,
    /// How long the standby must have been out of service before it is written.
    pub grace: Duration,
}

/// The default `--grace`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);

impl Default for LayoutOptions {
    fn default() -> Self {
        LayoutOptions {
            choice: LayoutChoice::Keep,
            grace: DEFAULT_GRACE,
        }
    }
}

/// What a run did to the atomic layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// The live tree already held the target.
    UpToDate,
    /// The standby served too recently: nothing written, a later run does it.
    Deferred,
    /// DEST now points to the other tree, which holds the target.
    Switched,
    /// Dry run: the standby would be brought to the target and DEST switched to it.
    WouldSwitch,
    /// Dry run: DEST would be converted (see `converted`).
    WouldConvert,
    /// The live tree was made a plain DEST again (then synced in place).
    Released,
    /// verify: the live tree matches its backup, or differs without --repair.
    Verified,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Conversion {
    ToAtomic,
    ToInPlace,
}

/// The atomic side of a sync or verify report.
#[derive(Clone, Debug, Serialize)]
pub struct AtomicOutcome {
    pub action: Action,
    /// The layout after the run (None: DEST is a plain folder now, or would be made one).
    #[serde(flatten)]
    pub layout: Option<LayoutView>,
    pub grace_seconds: f64,
    /// A conversion this run made (or, in a dry run, would make).
    pub converted: Option<Conversion>,
    /// A layout change of a killed run that this run finished or rolled back.
    pub layout_recovered: Option<String>,
}

/// Runs a sync of DEST in the layout asked for; the in-place engine when DEST is plain
/// and stays so.
pub fn sync_dest(
    opts: &SyncOptions,
    layout: &LayoutOptions,
    reporter: &Arc<Reporter>,
) -> Result<SyncReport> {
    let paths = DestPaths::resolve(&opts.dest, opts.state_dir.as_deref())?;
    let names = Layout::new(&paths);
    let recovered = if names.has_journal() {
        AtomicDest::open(&paths, opts.wait)?.recover()?
    } else {
        None
    };
    let run = Run {
        opts,
        layout,
        paths: &paths,
        reporter,
        recovered,
        converted: None,
    };
    match (names.detect()?, layout.choice) {
        (None, LayoutChoice::Atomic) => run.into_atomic(),
        (None, _) => sync(opts, reporter),
        (Some(live), LayoutChoice::InPlace) => run.out_of_atomic(live),
        (Some(_), _) => {
            let dest = AtomicDest::open(&paths, opts.wait)?;
            run.atomic(dest)
        }
    }
}

struct Run<'a> {
    opts: &'a SyncOptions,
    layout: &'a LayoutOptions,
    paths: &'a DestPaths,
    reporter: &'a Arc<Reporter>,
    recovered: Option<String>,
    converted: Option<Conversion>,
}

impl Run<'_> {
    /// The sync options for one tree.
    fn on_tree(&self, tree: &DestPaths, dry_run: bool) -> SyncOptions {
        let o = self.opts;
        SyncOptions {
            sources: o.sources.clone(),
            dest: tree.dest.clone(),
            time: o.time.clone(),
            state_dir: Some(tree.state_root.clone()),
            paths: o.paths.clone(),
            dry_run,
            // The trees are dupmirror's own: whatever a killed bootstrap left is rebuilt.
            adopt: true,
            wait: o.wait,
            durable: o.durable,
            prefetch: o.prefetch,
            list_changes: o.list_changes && !dry_run,
            repo: o.repo.clone(),
        }
    }

    fn outcome(&self, action: Action, layout: Option<LayoutView>) -> AtomicOutcome {
        AtomicOutcome {
            action,
            layout,
            grace_seconds: self.layout.grace.as_secs_f64(),
            converted: self.converted,
            layout_recovered: self.recovered.clone(),
        }
    }

    /// A report of a tree's run, told as DEST's.
    fn finish(
        &self,
        mut report: SyncReport,
        action: Action,
        live: Option<Slot>,
    ) -> Result<SyncReport> {
        let view = live.map(|s| Layout::new(self.paths).view(s)).transpose()?;
        report.dest = self.paths.dest.clone();
        report.atomic = Some(self.outcome(action, view));
        Ok(report)
    }

    fn into_atomic(mut self) -> Result<SyncReport> {
        let opts = self.opts;
        let synced = self.paths.held(self.paths.peek()?).is_some();
        if opts.dry_run {
            let report = sync(opts, self.reporter)?;
            if !synced {
                return self.finish(report, Action::WouldSwitch, None); // a bootstrap
            }
            self.converted = Some(Conversion::ToAtomic);
            return self.finish(report, Action::WouldConvert, None);
        }
        if !synced && self.paths.dest_is_empty()? {
            let dest = AtomicDest::open(self.paths, opts.wait)?;
            return self.atomic(dest);
        }
        if !synced {
            // Never synced and not empty: the in-place engine adopts it (or refuses).
            sync(opts, self.reporter)?;
        }
        let session = Session::open(self.paths, opts.wait, opts.durable, None)?;
        if session.state.is_none() {
            bail!(
                "DEST {} is not the folder dupmirror synced; sync it first",
                self.paths.dest.display()
            );
        }
        // DEST's own lock goes: DEST becomes tree a, which the engine locks again.
        let Session {
            state_dir, dest, ..
        } = session;
        drop(dest);
        let dest = AtomicDest::with_state(state_dir, self.paths)?;
        dest.adopt()?;
        self.converted = Some(Conversion::ToAtomic);
        self.atomic(dest)
    }

    fn out_of_atomic(mut self, live: Slot) -> Result<SyncReport> {
        let opts = self.opts;
        self.converted = Some(Conversion::ToInPlace);
        if opts.dry_run {
            let tree = Layout::new(self.paths).tree(live);
            let report = sync(&self.on_tree(&tree, true), self.reporter)?;
            return self.finish(report, Action::WouldConvert, None);
        }
        let dest = AtomicDest::open(self.paths, opts.wait)?;
        self.recovered = self.recovered.take().or(dest.recover()?);
        let live = dest.live()?.unwrap_or(live);
        dest.release(live)?;
        drop(dest);
        let report = sync(opts, self.reporter)?;
        self.finish(report, Action::Released, None)
    }

    fn atomic(mut self, dest: AtomicDest) -> Result<SyncReport> {
        let opts = self.opts;
        self.recovered = self.recovered.take().or(dest.recover()?);
        let names = dest.layout().clone();
        let Some(live) = dest.live()? else {
            // Bootstrap: the first tree, then the link.
            let tree = names.tree(Slot::A);
            dest.recheck()?;
            let report = sync(&self.on_tree(&tree, opts.dry_run), self.reporter)?;
            if opts.dry_run {
                return self.finish(report, Action::WouldSwitch, None);
            }
            dest.switch(Slot::A, false)?;
            return self.finish(report, Action::Switched, Some(Slot::A));
        };
        let record = dest.record()?;
        // One listing for the look and the standby's run: both decide on the same backups.
        let listed = open_sources(&opts.sources, &opts.repo, self.reporter)?;
        dest.recheck()?;
        let mut look = sync_listed(
            &self.on_tree(&names.tree(live), true),
            self.reporter,
            &listed,
        )?;
        look.dry_run = opts.dry_run;
        if look.up_to_date {
            return self.finish(look, Action::UpToDate, Some(live));
        }
        if in_grace(record.standby_since_ms, self.layout.grace, now_ms()) {
            return self.finish(look, Action::Deferred, Some(live));
        }
        let standby = live.other();
        let tree = names.tree(standby);
        dest.recheck()?;
        let mut report = sync_listed(&self.on_tree(&tree, opts.dry_run), self.reporter, &listed)?;
        report.from = look.from.clone();
        report.times.from = look.times.from;
        if opts.dry_run {
            return self.finish(report, Action::WouldSwitch, Some(live));
        }
        if record.standby_damaged {
            self.repair_tree(&tree)?;
        }
        dest.switch(standby, false)?;
        self.finish(report, Action::Switched, Some(standby))
    }

    /// Repairs a tree the next switch will make live (it was switched away from because
    /// it differed from its backup).
    fn repair_tree(&self, tree: &DestPaths) -> Result<()> {
        let checked = verify(
            &VerifyOptions {
                sources: self.opts.sources.clone(),
                dest: tree.dest.clone(),
                state_dir: Some(tree.state_root.clone()),
                repair: true,
                quick: false,
                durable: self.opts.durable,
                grace: self.layout.grace,
                repo: self.opts.repo.clone(),
            },
            self.reporter,
        )?;
        if !checked.clean() {
            bail!(
                "the standby tree {} still differs from its backup after a repair; DEST is \
                 unchanged",
                tree.dest.display()
            );
        }
        Ok(())
    }
}

/// `verify` of an atomic DEST (`live`: the tree its link resolved to). Without
/// `--repair`, the live tree is checked as it is; with it, a live tree that differs is
/// never written: after `grace`, the standby is brought to the live tree's backup,
/// repaired, and DEST switched to it.
pub fn verify_atomic(
    opts: &VerifyOptions,
    paths: &DestPaths,
    grace: Duration,
    reporter: &Arc<Reporter>,
) -> Result<VerifyReport> {
    let names = Layout::new(paths);
    let on_tree = |tree: &DestPaths, repair: bool| VerifyOptions {
        sources: opts.sources.clone(),
        dest: tree.dest.clone(),
        state_dir: Some(tree.state_root.clone()),
        repair,
        quick: opts.quick,
        durable: opts.durable,
        grace,
        repo: opts.repo.clone(),
    };
    let outcome = |action, live: Slot| -> Result<AtomicOutcome> {
        Ok(AtomicOutcome {
            action,
            layout: Some(names.view(live)?),
            grace_seconds: grace.as_secs_f64(),
            converted: None,
            layout_recovered: None,
        })
    };
    let dest = opts
        .repair
        .then(|| AtomicDest::open(paths, false))
        .transpose()?;
    let recovered = dest
        .as_ref()
        .map(AtomicDest::recover)
        .transpose()?
        .flatten();
    let live = match &dest {
        Some(d) => d.live()?,
        None => names.detect()?,
    }
    .ok_or_else(|| anyhow!("DEST {} is not dupmirror's link", paths.dest.display()))?;
    let mut report = verify(&on_tree(&names.tree(live), false), reporter)?;
    report.dest = paths.dest.clone();
    let mut action = Action::Verified;
    if let Some(dest) = dest.filter(|_| !report.clean()) {
        if in_grace(dest.record()?.standby_since_ms, grace, now_ms()) {
            action = Action::Deferred;
        } else {
            let standby = live.other();
            let tree = names.tree(standby);
            let live_tree = names.tree(live);
            let state = live_tree
                .peek()?
                .context("the live tree has no recorded state")?;
            dest.recheck()?;
            sync(
                &SyncOptions {
                    sources: opts.sources.clone(),
                    dest: tree.dest.clone(),
                    time: Some(state.end_time.to_string()),
                    state_dir: Some(tree.state_root.clone()),
                    paths: state.paths.clone(),
                    dry_run: false,
                    adopt: true,
                    wait: false,
                    durable: opts.durable,
                    prefetch: 2,
                    list_changes: false,
                    repo: opts.repo.clone(),
                },
                reporter,
            )
            .context("cannot bring the standby tree to the live tree's backup")?;
            let repaired = verify(&on_tree(&tree, true), reporter)?;
            if !repaired.clean() {
                bail!(
                    "the standby tree {} still differs from its backup after a repair; DEST \
                     is unchanged",
                    tree.dest.display()
                );
            }
            dest.switch(standby, true)?;
            let after = verify(&on_tree(&tree, false), reporter)?;
            report.repaired = Some(repaired.repaired.unwrap_or_default());
            report.remaining = Some(after.differences);
            action = Action::Switched;
        }
        let mut o = outcome(action, dest.live()?.unwrap_or(live))?;
        o.layout_recovered = recovered;
        report.atomic = Some(o);
        return Ok(report);
    }
    let mut o = outcome(action, live)?;
    o.layout_recovered = recovered;
    report.atomic = Some(o);
    Ok(report)
}

/// DEST's paths as the read-only commands take them: the live tree's in the atomic
/// layout (with its slot), DEST's own otherwise.
pub fn reading_paths(paths: &DestPaths) -> Result<(DestPaths, Option<Slot>)> {
    match Layout::new(paths).detect()? {
        Some(live) => Ok((Layout::new(paths).tree(live), Some(live))),
        None => Ok((paths.clone(), None)),
    }
}

/// The state DEST holds, as far as a look without the lock tells (the live tree's in the
/// atomic layout): for run records, hooks and `status --config`.
pub fn held_state(paths: &DestPaths) -> Option<MirrorState> {
    let (paths, _) = reading_paths(paths).ok()?;
    paths.held(paths.peek().ok().flatten())
}

/// Whether a standby that left service at `since_ms` may not be written yet.
fn in_grace(since_ms: Option<i64>, grace: Duration, now_ms: i64) -> bool {
    since_ms.is_some_and(|since| ((now_ms - since) as i128) < grace.as_millis() as i128)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_runs_from_the_switch() {
        let (now, ms) = (1_000_000_000, Duration::from_millis);
        assert!(
            !in_grace(None, ms(300_000), now),
            "a standby that never served"
        );
        assert!(!in_grace(Some(now), Duration::ZERO, now), "no grace");
        assert!(in_grace(Some(now - 299_999), ms(300_000), now));
        assert!(!in_grace(Some(now - 300_000), ms(300_000), now));
        assert!(
            in_grace(Some(now + 5_000), ms(1), now),
            "a clock set back waits"
        );
    }
}
