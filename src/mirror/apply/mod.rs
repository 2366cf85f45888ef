//! Writing DEST: one backup set, or the pending sets of one chain merged, all or nothing.
//!
//! A [`SetApplier`] receives the records of one set (it is the `RecordSink` that
//! `decode::records::RecordStream` feeds) and stages them with one of two strategies; a
//! journaled update takes further sets of the chain ([`SetApplier::next_set`]) over what it
//! staged; [`SetApplier::commit`] makes everything staged part of DEST atomically.
//!
//! ```text
//! every record (gate.rs):
//!     skip it unless the path filter wants it (each set has its own)
//!     refuse: a chunk run without its head, a signature entry, a root that is not a
//!             directory (DEST is a folder), a path below a symlink, a file or a deletion
//!             (dest::guard, against DEST and what earlier sets staged)
//! fresh build (fresh.rs) -- a full set into a missing or empty DEST:
//!     build the tree in staging/tree through a stack of open directory handles:
//!     directories 0700 and files 0600 while being filled, then their own attributes;
//!     volumes read in order: files and special objects made by a small pool of writer
//!     threads (writers.rs); read apart (a first sync): each volume's by its decoder, what
//!     crosses a volume boundary finished in volume order (fresh.rs)
//!     on a disk (not tmpfs): entries created one at a time (writers.rs, Creations), and
//!     syncfs(staging) on a thread every 64 MiB written (dest::writeback)
//!     a deletion or a delta in a full set is refused
//!     journal: MoveTree (one rename when DEST is missing), then DEST's own attributes
//! journaled update (update.rs, overlay.rs) -- incrementals, a full over an existing DEST
//!         and the incrementals after it, a repair; the merged view is DEST + what the
//!         sets before (and this set) staged:
//!     snapshot dir   -> Dir(path); its attributes wait for the end
//!     snapshot other -> staging/obj/N (content, owner, mode, mtime); Place(path, N),
//!                       freeing an object staged there before
//!     diff           -> the merged view must hold a regular file there, else the set
//!                       contradicts the backup: refused; compose the delta onto it
//!                       (DEST's, a staged object, or a version held since an earlier set)
//!                       into version N, written to staging/obj/N after the last set
//!                       (compose.rs, staged.rs); drift.rs judges the result:
//!                       Place(path, N), or leave the path drifted
//!     deleted        -> the merged view must hold something there, else refused; Remove
//!                       (journaled only if DEST holds the path)
//!     fixes from comparing DEST with signatures: Remove / Attrs
//!     after the last set: one journal in index order, then Attrs/Mtime for directories,
//!     deepest first (children change parents' mtimes); a directory whose contents change
//!     without a record of its own keeps its mtime
//! commit:
//!     syncfs(staging) (durable); check DEST's root is still the folder it was
//!     rename state/journal.tmp -> state/journal                        # the commit point
//!     carry out the journal (dest::journal::recover): state.json, then journal and
//!     staging removed
//! ```
//!
//! Every volume of every staged set is read, and its SHA1 checked, before the commit: a
//! damaged volume leaves DEST untouched. Limits: an incremental looks at no part of DEST
//! beyond the paths it names. Directories are made writable by root only: a non-root sync
//! into a read-only directory of the backup fails with a clear error. See overlay.rs for
//! what merging does not save.

mod compose;
mod drift;
mod fresh;
mod gate;
mod overlay;
mod staged;
mod update;
mod writers;

use crate::decode::records::{Record, RecordSink};
use crate::dest::changes::ChangedPaths;
use crate::dest::journal::{self, JournalWriter, Recovery, TREE};
use crate::dest::state::{MirrorState, StateDir};
use crate::dest::tree::Dest;
use crate::index::PathIndex;
use crate::mirror::compare::Difference;
use crate::mirror::filter::PathFilter;
use crate::repo::sigtar::SetSignatures;
use anyhow::{bail, Context, Result};
use fresh::FreshBuild;
pub use overlay::MergeStats;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use update::JournaledUpdate;

/// How a set meets DEST.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyMode {
    /// A full set into a missing or empty DEST: build the tree in staging, move it in.
    Fresh,
    /// An incremental set over DEST.
    Update,
    /// A full set over an existing DEST: only the paths that differ (found by comparing
    /// DEST with the full's signatures) are fetched and written.
    Replace,
}

/// What applying a set did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ApplyStats {
    pub records: u64,
    pub files_written: u64,
    pub files_patched: u64,
    pub dirs: u64,
    pub specials: u64,
    pub removed: u64,
    pub attrs_fixed: u64,
    pub bytes_written: u64,
    /// Paths whose patch did not produce the new signature (DEST had drifted).
    pub drifted: u64,
    /// Paths that stood where the committed set needs a directory (put there after the
    /// commit point) and were replaced by one when the journal was carried out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<String>,
}

/// What a commit applied: one entry per set staged, in order, and, for sets staged
/// together (a catch-up), what merging them saved.
pub struct Committed {
    pub sets: Vec<ApplyStats>,
    pub merged: Option<MergeStats>,
}

/// Stages one set's records (or those of consecutive sets of one chain, merged) and commits
/// them into DEST.
// One applier per commit, never copied around: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum SetApplier {
    Fresh(FreshBuild),
    Update(JournaledUpdate),
}

const COPY_BUF: usize = 256 * 1024;

impl SetApplier {
    /// Prepares an empty staging area for a set that will bring DEST to `target`.
    /// Records outside `filter` are skipped.
    pub fn new(
        mode: ApplyMode,
        dest: &Dest,
        state_dir: &StateDir,
        target: &MirrorState,
        filter: PathFilter,
    ) -> Result<Self> {
        let staging = state_dir.fresh_staging()?;
        let mut target = target.clone();
        Ok(match mode {
            ApplyMode::Fresh => {
                // Becomes DEST itself when DEST is missing; a full without a record of its
                // root leaves it with the usual mode of a new folder.
                let tree = staging.create_dir(TREE, 0o755)?;
                target.dest_id = Some(match dest.id() {
                    Some(id) => id,
                    None => tree.stat_self()?.id,
                });
                let journal = JournalWriter::create(state_dir, &target)?;
                SetApplier::Fresh(FreshBuild::new(staging, tree, journal, filter)?)
            }
            ApplyMode::Update | ApplyMode::Replace => {
                let tree = dest.require()?.try_clone()?;
                target.dest_id = Some(tree.id());
                let journal = JournalWriter::create(state_dir, &target)?;
                SetApplier::Update(JournaledUpdate::new(staging, tree, journal, filter)?)
            }
        })
    }

    /// Starts staging the next set of the chain over what this one staged, so that both
    /// commit as one step; its records outside `filter` are skipped. Only for an update.
    pub fn next_set(&mut self, filter: PathFilter) -> Result<()> {
        match self {
            SetApplier::Fresh(_) => bail!("a first sync's tree takes no further set"),
            SetApplier::Update(u) => u.next_set(filter),
        }
    }

    /// The sinks for the set's volumes read apart (several at once), when this applier
    /// takes them: a first sync's fresh build.
    pub fn volumes_apart(&self) -> Option<fresh::FreshVolumes> {
        match self {
            SetApplier::Fresh(f) => Some(f.volumes()),
            SetApplier::Update(_) => None,
        }
    }

    /// Treats DEST as possibly drifted: see `drift.rs`. Only for an update.
    pub fn detect_drift(&mut self, signatures: SetSignatures) {
        if let SetApplier::Update(u) = self {
            u.detect_drift(signatures);
        }
    }

    /// Takes the paths that need a repair before this set can be committed; the caller
    /// restores them (see `repair`) and feeds the results back in as records.
    pub fn take_drifted(&mut self) -> Result<BTreeSet<PathIndex>> {
        match self {
            SetApplier::Fresh(_) => Ok(BTreeSet::new()),
            SetApplier::Update(u) => u.take_drifted(),
        }
    }

    /// Journals the fix for a difference that needs no data: removing an extra path, or
    /// giving a path the attributes the backup records. Only for an update.
    pub fn add_fix(&mut self, diff: &Difference) -> Result<()> {
        match self {
            SetApplier::Fresh(_) => bail!("{}: a first sync has nothing to fix", diff.index),
            SetApplier::Update(u) => u.add_fix(diff),
        }
    }

    /// Makes the staged set part of DEST; returns after DEST and the state are updated.
    /// `changes`, when given, receives every path the commit changes.
    pub fn commit(
        self,
        state_dir: &StateDir,
        dest: &mut Dest,
        durable: bool,
        mut changes: Option<&mut ChangedPaths>,
    ) -> Result<Committed> {
        let (staging, journal, mut sets, merged) = match self {
            SetApplier::Fresh(f) => {
                let (staging, journal, stats) = f.finish()?;
                (staging, journal, vec![stats], None)
            }
            SetApplier::Update(u) => {
                let (staging, journal, sets, merged) = u.finish()?;
                (staging, journal, sets, Some(merged).filter(|m| m.sets > 1))
            }
        };
        if durable {
            staging.sync_filesystem()?;
        }
        dest.recheck()?;
        journal
            .commit(state_dir)
            .context("cannot commit the set's journal")?;
        // The set is committed. Carrying it out can still meet a passing I/O error: try
        // once more, then leave the journal for the next run to complete.
        let recovered = journal::recover(state_dir, dest, durable, changes.as_deref_mut())
            .or_else(|_| journal::recover(state_dir, dest, durable, changes))
            .context(
                "the set's journal is committed but could not be carried out completely; DEST \
                 is part-way through the set until the next sync replays the journal",
            )?;
        let committed = |sets| Committed { sets, merged };
        match recovered {
            Recovery::Completed { replaced, .. } => {
                if let Some(last) = sets.last_mut() {
                    last.replaced = replaced.iter().map(PathIndex::to_string).collect();
                }
                Ok(committed(sets))
            }
            // The first try failed after the state was saved and the journal removed.
            Recovery::Nothing => Ok(committed(sets)),
            Recovery::Discarded { .. } => bail!(
                "DEST {} was moved or replaced during the sync; the set was not applied",
                dest.path().display()
            ),
        }
    }
}

impl RecordSink for SetApplier {
    fn begin(&mut self, record: &Record) -> Result<()> {
        match self {
            SetApplier::Fresh(f) => f.begin(record),
            SetApplier::Update(u) => u.begin(record),
        }
    }

    fn data(&mut self, bytes: &mut dyn Read) -> Result<()> {
        match self {
            SetApplier::Fresh(f) => f.data(bytes),
            SetApplier::Update(u) => u.data(bytes),
        }
    }

    fn end(&mut self) -> Result<()> {
        match self {
            SetApplier::Fresh(f) => f.end(),
            SetApplier::Update(u) => u.end(),
        }
    }
}

/// Copies a record's bytes into a staged file through `buf`; returns how many.
fn copy_into(
    file: &mut File,
    bytes: &mut dyn Read,
    buf: &mut [u8],
    shown: &std::path::Path,
) -> Result<u64> {
    let mut total = 0;
    loop {
        let n = bytes.read(buf).context("reading the volume")?;
        if n == 0 {
            return Ok(total);
        }
        file.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", shown.display()))?;
        total += n as u64;
    }
}

/// Skips the bytes of a record that is not staged.
fn skip(bytes: &mut dyn Read) -> Result<()> {
    std::io::copy(bytes, &mut std::io::sink())?;
    Ok(())
}
