//! Writing DEST: one backup set at a time, all or nothing.
//!
//! A [`SetApplier`] receives the records of one set (from `decode::records::RecordStream`) and
//! stages them; [`SetApplier::commit`] makes them part of DEST atomically.
//!
//! ```text
//! stage(set):
//!     for record in set, in index order, that the path filter wants:
//!         guard.check(record)              # refuses paths below symlinks, files, deletions
//!         snapshot dir   -> journal Dir(path); remember its attributes for later
//!         snapshot other -> write staging/obj/N (content, mode, owner, mtime); Place(path, N)
//!         diff           -> patch DEST/path into staging/obj/N; check the result against the
//!                           set's new signature; Place(path, N) -- or, on a mismatch (DEST
//!                           drifted), leave the path to the caller's repair
//!         deleted        -> journal Remove(path)
//!     fixes found by comparing DEST with signatures (extra paths, wrong attributes) are
//!     journaled too (Remove, Attrs)
//!     journal Attrs/Mtime for directories, deepest first (children change parents' mtimes);
//!     a directory the set changes without a record of its own keeps its mtime
//! commit(set):
//!     syncfs(staging); rename staging/journal.tmp -> state/journal    # the commit point
//!     carry out the journal (idempotent), save state.json, remove journal and staging
//! ```
//!
//! A first sync into a missing or empty DEST builds the whole tree in `staging/tree` instead
//! and commits one `MoveTree`: no per-file rename and no DEST lookups.
//!
//! Every volume of the set is read, and its SHA1 checked, before the commit: a damaged
//! volume leaves DEST untouched. Limits: an incremental looks at no part of DEST beyond the
//! paths it names. Directories are made writable by root only: a non-root sync into a
//! read-only directory of the backup fails with a clear error.

use crate::decode::delta::{self, SigDigest, Spool};
use crate::decode::records::{Record, RecordKind, RecordSink};
use crate::dest::changes::ChangedPaths;
use crate::dest::fsops::{self, Attrs, NewFiles, OwnerMap};
use crate::dest::guard::PathGuard;
use crate::dest::journal::{self, JournalWriter, Op};
use crate::dest::state::{MirrorState, StateDir};
use crate::error::Error;
use crate::index::PathIndex;
use crate::meta::FileType;
use crate::mirror::compare::{content_matches, DiffKind, Difference};
use crate::mirror::filter::PathFilter;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

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
}

enum OpenRecord {
    Idle,
    File {
        file: File,
        path: PathBuf,
        attrs: Attrs,
        place: Option<Op>,
    },
    Delta {
        index: PathIndex,
        spool: Spool,
        attrs: Attrs,
    },
}

/// Stages one set's records and commits them into DEST.
pub struct SetApplier {
    fresh: bool,
    dest: PathBuf,
    staging: PathBuf,
    journal: JournalWriter,
    guard: PathGuard,
    owners: OwnerMap,
    filter: PathFilter,
    new_files: NewFiles,
    /// Carries file contents to the file (from the volume, or out of a patch), reused.
    copy_buf: Vec<u8>,
    next_object: u64,
    /// Fresh mode: directories on the current path, whose attributes wait for their contents.
    open_dirs: Vec<(PathIndex, Attrs)>,
    /// Attributes of directories (and fixes), journaled deepest-first at the end.
    late_attrs: BTreeMap<PathIndex, Attrs>,
    /// Directories the set changes the contents of without a record of their own, with
    /// the mtime to give back to them afterwards.
    kept_mtimes: BTreeMap<PathIndex, i64>,
    /// The new signatures of this set's changed files, to check patched results against.
    new_signatures: BTreeMap<PathIndex, SigDigest>,
    /// Whether a basis that does not fit is DEST's drift (to repair) rather than an error.
    detect_drift: bool,
    /// Paths whose patch could not be applied or checked out right.
    drifted: BTreeSet<PathIndex>,
    current: OpenRecord,
    durable: bool,
    pub stats: ApplyStats,
}

const COPY_BUF: usize = 256 * 1024;

impl SetApplier {
    /// Prepares an empty staging area for a set that will bring DEST to `target`.
    /// Records outside `filter` are skipped.
    pub fn new(
        mode: ApplyMode,
        dest: &Path,
        state_dir: &StateDir,
        target: &MirrorState,
        filter: PathFilter,
        durable: bool,
    ) -> Result<Self> {
        let staging = state_dir.staging().to_path_buf();
        let fresh = mode == ApplyMode::Fresh;
        fsops::remove_any(&staging)?;
        fs::create_dir_all(staging.join("obj"))
            .with_context(|| format!("cannot create staging folder {}", staging.display()))?;
        if fresh {
            fs::create_dir(journal::staged_tree(&staging))?;
        }
        Ok(SetApplier {
            fresh,
            dest: dest.to_path_buf(),
            journal: JournalWriter::create(&staging, target)?,
            new_files: NewFiles::probe(&staging),
            staging,
            guard: PathGuard::new(dest, fresh),
            owners: OwnerMap::new(),
            filter,
            copy_buf: vec![0; COPY_BUF],
            next_object: 0,
            open_dirs: Vec::new(),
            late_attrs: BTreeMap::new(),
            kept_mtimes: BTreeMap::new(),
            new_signatures: BTreeMap::new(),
            detect_drift: false,
            drifted: BTreeSet::new(),
            current: OpenRecord::Idle,
            durable,
            stats: ApplyStats::default(),
        })
    }

    /// Treats DEST as possibly drifted: every patched file is checked against the set's new
    /// signatures, and a basis that is not a regular file, a delta that does not fit it, or
    /// a result that does not match marks the path as drifted (for the caller to repair)
    /// instead of writing a wrong file. Without this (a repair's scratch mirror, whose
    /// bases are exact), any of those is an error.
    pub fn detect_drift(&mut self, signatures: BTreeMap<PathIndex, SigDigest>) {
        self.new_signatures = signatures;
        self.detect_drift = true;
    }

    /// Takes the paths that need a repair before this set can be committed; the caller
    /// restores them (see `repair`) and feeds the results back in as records.
    pub fn take_drifted(&mut self) -> BTreeSet<PathIndex> {
        std::mem::take(&mut self.drifted)
    }

    /// Journals the fix for a difference that needs no data: removing an extra path, or
    /// giving a path the attributes the backup records.
    pub fn add_fix(&mut self, diff: &Difference) -> Result<()> {
        match (&diff.kind, &diff.expected) {
            (DiffKind::Extra, _) => {
                self.keep_parent_mtime(&diff.index)?;
                self.journal.push(&Op::Remove {
                    index: diff.index.clone(),
                })?;
                self.stats.removed += 1;
            }
            (DiffKind::Changed(_), Some(meta)) if !diff.needs_data() => {
                let attrs = Attrs::of(meta, &mut self.owners);
                self.late_attrs.insert(diff.index.clone(), attrs);
                self.stats.attrs_fixed += 1;
            }
            _ => bail!("{}: this difference needs data from a volume", diff.index),
        }
        Ok(())
    }

    /// Where a new object for `index` is written before the commit.
    fn stage_path(&mut self, index: &PathIndex) -> (PathBuf, Option<Op>) {
        if self.fresh {
            (
                fsops::dest_path(&journal::staged_tree(&self.staging), index),
                None,
            )
        } else {
            self.next_object += 1;
            let n = self.next_object;
            (
                journal::staged_object(&self.staging, n),
                Some(Op::Place {
                    index: index.clone(),
                    staged: n,
                }),
            )
        }
    }

    /// Fresh mode: gives finished directories their attributes, and makes sure the parent
    /// of `index` exists (a filtered sync may not have read the record of every ancestor).
    fn close_dirs_not_above(&mut self, index: Option<&PathIndex>) -> Result<()> {
        let tree = journal::staged_tree(&self.staging);
        while let Some((dir, attrs)) = self.open_dirs.last() {
            if index.is_some_and(|i| i.starts_with(dir) && i != dir) {
                break;
            }
            if dir.is_root() {
                // DEST's own attributes are set after the move.
                self.late_attrs.insert(dir.clone(), attrs.clone());
            } else {
                attrs.apply(&fsops::dest_path(&tree, dir))?;
            }
            self.open_dirs.pop();
        }
        if let Some(parent) = index.and_then(|i| i.parent()) {
            if self.open_dirs.last().is_none_or(|(d, _)| *d != parent) {
                fsops::create_ancestors(&tree, index.unwrap_or(&parent))?;
            }
        }
        Ok(())
    }

    /// Remembers the mtime of `index`'s parent when this set changes the parent's contents
    /// but has no record of the parent itself (records come parent first, so the parent's
    /// own record, if any, has been seen).
    fn keep_parent_mtime(&mut self, index: &PathIndex) -> Result<()> {
        if self.fresh {
            return Ok(());
        }
        let Some(parent) = index.parent() else {
            return Ok(());
        };
        if self.late_attrs.contains_key(&parent) || self.kept_mtimes.contains_key(&parent) {
            return Ok(());
        }
        // Below a symlink or file there is no directory of DEST's to keep.
        if let Ok(fsops::Ancestors::AllDirs) = fsops::check_ancestors(&self.dest, &parent) {
            if let Some(mtime) = fsops::dir_mtime(&fsops::dest_path(&self.dest, &parent))? {
                self.kept_mtimes.insert(parent, mtime);
            }
        }
        Ok(())
    }

    /// Makes the staged set part of DEST; returns after DEST and the state are updated.
    /// `changes`, when given, receives every path the commit changes.
    pub fn commit(
        mut self,
        state_dir: &StateDir,
        changes: Option<&mut ChangedPaths>,
    ) -> Result<ApplyStats> {
        if !matches!(self.current, OpenRecord::Idle) {
            bail!("the set ended in the middle of a record");
        }
        if let Some(p) = self.drifted.iter().next() {
            bail!(
                "{p} differs from what the previous backup left there; it must be repaired first"
            );
        }
        self.close_dirs_not_above(None)?;
        if self.fresh {
            self.journal.push(&Op::MoveTree)?;
        }
        // Deepest first: a directory's mtime is set after every change inside it. A
        // directory with attributes of its own needs no kept mtime.
        let mut late: BTreeMap<PathIndex, Op> = std::mem::take(&mut self.late_attrs)
            .into_iter()
            .map(|(index, attrs)| (index.clone(), Op::Attrs { index, attrs }))
            .collect();
        for (index, mtime) in std::mem::take(&mut self.kept_mtimes) {
            late.entry(index.clone())
                .or_insert(Op::Mtime { index, mtime });
        }
        for op in late.values().rev() {
            self.journal.push(op)?;
        }
        if self.durable {
            sync_filesystem(&self.staging)?;
        }
        self.journal
            .commit(state_dir)
            .context("cannot commit the set's journal")?;
        if let Some(changes) = changes {
            changes.add_journal(&state_dir.journal_path(), &self.dest)?;
        }
        // The set is committed. Carrying it out can still meet a passing I/O error: try
        // once more, then leave the journal for the next run to complete.
        journal::recover(state_dir, &self.dest)
            .or_else(|_| journal::recover(state_dir, &self.dest))
            .context(
                "the set's journal is committed but could not be carried out completely; DEST \
                 is part-way through the set until the next sync replays the journal",
            )?;
        Ok(self.stats)
    }
}

fn sync_filesystem(path: &Path) -> Result<()> {
    let f = File::open(path)?;
    nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f))
        .map_err(std::io::Error::from)
        .with_context(|| format!("cannot sync the file system of {}", path.display()))
}

impl RecordSink for SetApplier {
    fn begin(&mut self, record: &Record) -> Result<()> {
        let index = &record.index;
        if !self.filter.wants(index) {
            return Ok(()); // `current` stays Idle: the data is skipped
        }
        if record.headless {
            return Err(Error::corrupt(format!(
                "{index}: the set holds later chunks of this file but not its first one"
            ))
            .into());
        }
        self.guard.check(record)?;
        self.stats.records += 1;
        if self.fresh {
            self.close_dirs_not_above(Some(index))?;
        } else {
            self.keep_parent_mtime(index)?;
        }
        let attrs = Attrs::of(&record.meta, &mut self.owners);
        match (record.kind, &record.meta.file_type) {
            (RecordKind::Deleted, _) => {
                if !self.fresh {
                    self.journal.push(&Op::Remove {
                        index: index.clone(),
                    })?;
                    self.stats.removed += 1;
                }
            }
            (RecordKind::Snapshot, FileType::Dir) => {
                self.stats.dirs += 1;
                if self.fresh {
                    let path = fsops::dest_path(&journal::staged_tree(&self.staging), index);
                    if !index.is_root() {
                        fs::create_dir(&path)
                            .with_context(|| format!("cannot create {}", path.display()))?;
                    }
                    self.open_dirs.push((index.clone(), attrs));
                } else {
                    self.journal.push(&Op::Dir {
                        index: index.clone(),
                    })?;
                    self.late_attrs.insert(index.clone(), attrs);
                }
            }
            (RecordKind::Snapshot, FileType::Regular) => {
                let (path, place) = self.stage_path(index);
                if index.is_root() && self.fresh {
                    fs::remove_dir(&path)?; // a single-file backup: the tree is that file
                }
                let file = fsops::create_file(&path, &attrs)?;
                self.current = OpenRecord::File {
                    file,
                    path,
                    attrs,
                    place,
                };
            }
            (RecordKind::Snapshot, _) => {
                let (path, place) = self.stage_path(index);
                fsops::create_special(&path, &record.meta)?;
                attrs.apply(&path)?;
                self.stats.specials += 1;
                if let Some(op) = place {
                    self.journal.push(&op)?;
                }
            }
            (RecordKind::Diff, _) => {
                if self.fresh {
                    return Err(Error::corrupt(format!("{index}: a full set holds a delta")).into());
                }
                let spool = Spool::new(self.staging.join("spool"));
                self.current = OpenRecord::Delta {
                    index: index.clone(),
                    spool,
                    attrs,
                };
            }
            (RecordKind::Signature, _) => {
                return Err(
                    Error::corrupt(format!("{index}: a signature entry in a volume")).into(),
                )
            }
        }
        Ok(())
    }

    fn data(&mut self, bytes: &mut dyn Read) -> Result<()> {
        match &mut self.current {
            OpenRecord::File { file, path, .. } => {
                loop {
                    let n = bytes
                        .read(&mut self.copy_buf)
                        .context("reading the volume")?;
                    if n == 0 {
                        break;
                    }
                    file.write_all(&self.copy_buf[..n])
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    self.stats.bytes_written += n as u64;
                }
                Ok(())
            }
            OpenRecord::Delta { spool, .. } => spool.fill_from(bytes).context("reading the volume"),
            OpenRecord::Idle => {
                std::io::copy(bytes, &mut std::io::sink())?;
                Ok(())
            }
        }
    }

    fn end(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.current, OpenRecord::Idle) {
            OpenRecord::Idle => Ok(()),
            OpenRecord::File {
                file,
                path,
                attrs,
                place,
            } => {
                attrs.apply_to_new(&file, &path, &self.new_files)?;
                drop(file);
                self.stats.files_written += 1;
                if let Some(op) = place {
                    self.journal.push(&op)?;
                }
                Ok(())
            }
            OpenRecord::Delta {
                index,
                mut spool,
                attrs,
            } => self.patch(index, &mut spool, attrs),
        }
    }
}

impl SetApplier {
    /// Applies a delta to DEST's copy of the file into staging. With drift detection, a
    /// basis that is not a regular file, or a result that does not match the set's new
    /// signature, means DEST is not what the previous backup left: the path is marked
    /// drifted, not written.
    fn patch(&mut self, index: PathIndex, spool: &mut Spool, attrs: Attrs) -> Result<()> {
        let basis_path = fsops::dest_path(&self.dest, &index);
        let basis = fsops::lstat_type(&basis_path)?;
        if !basis.as_ref().is_some_and(fsops::is_regular) {
            if !self.detect_drift {
                let found = match basis {
                    None => "nothing",
                    Some(t) if t.is_symlink() => "a symlink",
                    Some(t) if t.is_dir() => "a directory",
                    Some(_) => "a special file",
                };
                bail!(
                    "cannot apply the change to {index}: the tree holds another kind of object \
                     there ({found}), not a regular file"
                );
            }
            self.stats.drifted += 1;
            self.drifted.insert(index);
            return Ok(());
        }
        let (path, place) = self.stage_path(&index);
        let mut out =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let basis = delta::open_basis(&basis_path)?;
        // The output cannot outgrow what the new signature allows: a delta of endless
        // copies must not fill the disk.
        let max_out = match self
            .new_signatures
            .get(&index)
            .and_then(SigDigest::max_size)
        {
            Some(max) => max,
            None => delta::unsigned_output_bound(basis.metadata()?.len(), spool.spooled_bytes()),
        };
        let mut patched = delta::patch(
            basis,
            &mut spool.reader()?,
            &mut out,
            &mut self.copy_buf,
            max_out,
        );
        drop(out);
        // A corrupt delta is no sign of drift: it fails whatever the basis.
        let corrupt = patched
            .as_ref()
            .is_err_and(|e| matches!(e.downcast_ref::<Error>(), Some(Error::Corrupt(_))));
        if !self.detect_drift || corrupt {
            patched = Ok(patched.with_context(|| format!("cannot apply the change to {index}"))?);
        }
        let matches = match (&patched, self.new_signatures.get(&index)) {
            (Err(_), _) => false,
            (Ok(n), Some(sig)) => content_matches(&path, *n, sig)?,
            (Ok(_), None) => true,
        };
        if !matches {
            // A wrong basis shows as a delta that does not fit, or a result whose
            // signature is not the one the master recorded. (A delta that is itself
            // corrupt fails again, as an error, when the repair applies it to the basis
            // restored from the chain.)
            fs::remove_file(&path).ok();
            self.stats.drifted += 1;
            self.drifted.insert(index);
            return Ok(());
        }
        let n = patched?;
        attrs.apply(&path)?;
        self.stats.files_patched += 1;
        self.stats.bytes_written += n;
        if let Some(op) = place {
            self.journal.push(&op)?;
        }
        Ok(())
    }
}
