//! Restoring chosen paths from a chain, for `verify --repair` and for a sync that finds a
//! file DEST should hold intact but does not. Both stage a repair the same way, through
//! [`stage_repair`], into the applier of the commit that carries it.
//!
//! ```text
//! stage_repair(chain sets up to T, paths, DEST's applier):
//!     restore_paths, then check that each path came out of the chain, then graft
//! restore_paths(chain sets up to T, paths):
//!     a scratch mirror in the state directory, filtered to `paths`:
//!     for each set: read only the volumes whose manifest ranges overlap `paths`,
//!                   apply them to the scratch tree (Fresh for the full, Update after)
//! graft(scratch tree, paths, DEST's applier):
//!     feed every scratch object under `paths` to DEST's applier as a snapshot record,
//!     so the repair is staged and committed like any set: atomically
//! ```
//!
//! The scratch mirror is the sync machinery itself pointed at another folder, so a repair
//! follows exactly the same rules as a sync. Limits: each set of the chain is visited (only
//! its manifest is read when no volume of it overlaps the paths).

use crate::decode::records::{Record, RecordKind, RecordSink};
use crate::dest::dir::{Kind, Stat};
use crate::dest::state::{MirrorState, StateDir};
use crate::dest::tree::{Dest, Tree};
use crate::dest::walk::{DestWalker, Found};
use crate::index::PathIndex;
use crate::meta::{FileType, Metadata};
use crate::mirror::apply::{ApplyMode, SetApplier};
use crate::mirror::filter::PathFilter;
use crate::repo::collection::BackupSet;
use crate::repo::Repository;
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;

/// What a repair read.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RepairStats {
    pub paths: u64,
    pub volumes_read: u64,
    pub bytes_read: u64,
}

/// A scratch mirror holding restored paths; removed when dropped.
struct Scratch<'a> {
    owner: &'a StateDir,
    tree: Dest,
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        let _ = self.owner.remove_repair_scratch();
    }
}

/// Restores `paths` (objects the backup holds) as they are at the end of `sets` (a full
/// and its incrementals) and stages them into `sink`, DEST's applier, so that they are
/// committed with whatever else it holds. Restoring happens in `state_dir`'s repair
/// scratch, on DEST's file system. Fails when the chain does not hold one of the paths.
pub fn stage_repair(
    repo: &Repository,
    sets: &[&BackupSet],
    paths: &BTreeSet<PathIndex>,
    state_dir: &StateDir,
    sink: &mut dyn RecordSink,
) -> Result<RepairStats> {
    let subtrees = PathFilter::subtrees(paths.iter().cloned());
    let (scratch, stats) = restore_paths(repo, sets, &subtrees, state_dir)?;
    let last = || sets.last().map(|s| s.label()).unwrap_or_default();
    let tree = scratch
        .tree
        .tree()
        .with_context(|| format!("the chain up to {} restored nothing", last()))?;
    for index in paths {
        if tree.stat(index)?.is_none() {
            bail!(
                "cannot restore {index}: no volume of the chain up to {} holds it",
                last()
            );
        }
    }
    graft(tree, &subtrees, sink)?;
    Ok(stats)
}

/// Restores `paths` as they are at the end of `sets` into a scratch tree beside
/// `state_dir`'s staging (so on DEST's file system).
fn restore_paths<'a>(
    repo: &Repository,
    sets: &[&BackupSet],
    paths: &PathFilter,
    state_dir: &'a StateDir,
) -> Result<(Scratch<'a>, RepairStats)> {
    let root = state_dir.fresh_repair_scratch()?;
    let tree_path = root.join("tree");
    let scratch_state = StateDir::open(&root.join("state"), &tree_path, false)?;
    let mut scratch = Scratch {
        owner: state_dir,
        tree: Dest::open(&tree_path)?,
    };
    let mut stats = RepairStats {
        paths: paths.roots().len() as u64,
        ..Default::default()
    };
    for (i, set) in sets.iter().enumerate() {
        let manifest = repo.manifest(set)?;
        let volumes: Vec<u32> = manifest
            .volumes
            .values()
            .filter(|v| paths.needs_volume(v))
            .map(|v| v.number)
            .collect();
        if i > 0 && volumes.is_empty() {
            continue;
        }
        let mode = if i == 0 {
            ApplyMode::Fresh
        } else {
            ApplyMode::Update
        };
        let target = MirrorState::new(
            repo.display(),
            sets[0].end_time,
            set.end_time,
            tree_path.clone(),
            Vec::new(),
        );
        let mut applier =
            SetApplier::new(mode, &scratch.tree, &scratch_state, &target, paths.clone())?;
        repo.read_set(set, &manifest, &volumes, &mut applier)
            .with_context(|| format!("restoring from set {}", set.label()))?;
        applier.commit(&scratch_state, &mut scratch.tree, false, None)?;
        stats.volumes_read += volumes.len() as u64;
        stats.bytes_read += volumes
            .iter()
            .filter_map(|n| set.volumes.get(n).and_then(|f| f.size))
            .sum::<u64>();
    }
    Ok((scratch, stats))
}

/// Feeds every object of the scratch tree that lies in `paths` to `sink` as a snapshot
/// record, in index order.
fn graft(tree: &Tree, paths: &PathFilter, sink: &mut dyn RecordSink) -> Result<()> {
    let mut walker = DestWalker::new(Some(tree))?;
    while let Some(found) = walker.peek().cloned() {
        if !paths.covers(&found.index) {
            walker.advance(paths.wants(&found.index))?;
            continue;
        }
        let record = Record {
            meta: local_metadata(&found, &walker)?,
            index: found.index.clone(),
            kind: RecordKind::Snapshot,
            headless: false,
        };
        sink.begin(&record)?;
        if record.meta.is_regular() {
            sink.data(&mut walker.open_file()?)?;
        }
        sink.end()?;
        walker.advance(true)?;
    }
    Ok(())
}

/// The metadata of a local object, in the form records carry (numeric owners only: the
/// scratch tree already holds the mapped ids).
fn local_metadata(found: &Found, walker: &DestWalker) -> Result<Metadata> {
    let st: &Stat = &found.stat;
    let rdev = || {
        (
            nix::sys::stat::major(st.rdev) as u32,
            nix::sys::stat::minor(st.rdev) as u32,
        )
    };
    let file_type = match st.kind {
        Kind::Dir => FileType::Dir,
        Kind::Symlink => FileType::Symlink(walker.read_link()?),
        Kind::Fifo => FileType::Fifo,
        Kind::CharDevice => {
            let (major, minor) = rdev();
            FileType::CharDevice { major, minor }
        }
        Kind::BlockDevice => {
            let (major, minor) = rdev();
            FileType::BlockDevice { major, minor }
        }
        Kind::Regular | Kind::Socket => FileType::Regular,
    };
    Ok(Metadata {
        file_type,
        mode: st.mode,
        uid: st.uid,
        gid: st.gid,
        uname: Vec::new(),
        gname: Vec::new(),
        mtime: st.mtime,
    })
}
