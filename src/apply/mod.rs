//! Writing DEST: one backup set at a time, all or nothing.
//!
//! A [`SetApplier`] receives the records of one set (from `archive::RecordStream`) and
//! stages them; [`SetApplier::commit`] makes them part of DEST atomically.
//!
//! ```text
//! stage(set):
//!     for record in set, in index order:
//!         guard.check(record)              # refuses paths below symlinks, files, deletions
//!         snapshot dir   -> journal Dir(path); remember its attributes for later
//!         snapshot other -> write staging/obj/N (content, mode, owner, mtime); Place(path, N)
//!         diff           -> patch DEST/path into staging/obj/N; Place(path, N)
//!         deleted        -> journal Remove(path)
//!     a full set over an existing DEST also walks DEST alongside and journals Remove for
//!     everything the full does not have
//!     journal DirAttrs for every directory, deepest first (children change parents' mtimes)
//! commit(set):
//!     syncfs(staging); rename staging/journal.tmp -> state/journal    # the commit point
//!     carry out the journal (idempotent), save state.json, remove journal and staging
//! ```
//!
//! A first sync into a missing or empty DEST builds the whole tree in `staging/tree` instead
//! and commits one `MoveTree`: no per-file rename and no DEST lookups.
//!
//! Every volume of the set is read, and its SHA1 checked, before the commit: a damaged
//! volume leaves DEST untouched. Limits: an incremental walks no part of DEST beyond the
//! paths it names; it trusts that the file it patches is what the previous set left (a
//! person's local edit is caught by `verify`). Directories are made writable by root only:
//! a non-root sync into a read-only directory of the backup fails with a clear error.

pub mod fsops;
mod guard;
pub mod journal;
pub mod walk;

use crate::archive::{Record, RecordKind, RecordSink};
use crate::delta::{self, Spool};
use crate::error::Error;
use crate::index::PathIndex;
use crate::meta::FileType;
use crate::state::{MirrorState, StateDir};
use anyhow::{bail, Context, Result};
use fsops::{Attrs, OwnerMap};
use guard::PathGuard;
use journal::{JournalWriter, Op};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use walk::DestWalker;

/// How a set meets DEST.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyMode {
    /// A full set into a missing or empty DEST: build the tree in staging, move it in.
    Fresh,
    /// An incremental set over DEST.
    Update,
    /// A full set over an existing DEST: also remove what the full does not have.
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
    pub bytes_written: u64,
}

enum Current {
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
    mode: ApplyMode,
    dest: PathBuf,
    staging: PathBuf,
    journal: JournalWriter,
    guard: PathGuard,
    owners: OwnerMap,
    next_object: u64,
    /// Fresh mode: directories on the current path, whose attributes wait for their contents.
    open_dirs: Vec<(PathIndex, Attrs)>,
    /// Other modes: every directory's attributes, journaled deepest-first at the end.
    dir_attrs: Vec<(PathIndex, Attrs)>,
    /// Directories the set changes the contents of without a record of their own, with
    /// the mtime to give back to them afterwards.
    kept_mtimes: BTreeMap<PathIndex, i64>,
    walker: Option<DestWalker>,
    current: Current,
    durable: bool,
    pub stats: ApplyStats,
}

const COPY_BUF: usize = 256 * 1024;

impl SetApplier {
    /// Prepares an empty staging area for a set that will bring DEST to `target`.
    pub fn new(
        mode: ApplyMode,
        dest: &Path,
        state_dir: &StateDir,
        target: &MirrorState,
        durable: bool,
    ) -> Result<Self> {
        let staging = state_dir.staging().to_path_buf();
        fsops::remove_any(&staging)?;
        fs::create_dir_all(staging.join("obj"))
            .with_context(|| format!("cannot create staging folder {}", staging.display()))?;
        if mode == ApplyMode::Fresh {
            fs::create_dir(journal::staged_tree(&staging))?;
        }
        let walker = match mode {
            ApplyMode::Replace => Some(DestWalker::new(dest)?),
            _ => None,
        };
        Ok(SetApplier {
            mode,
            dest: dest.to_path_buf(),
            journal: JournalWriter::create(&staging, target)?,
            staging,
            guard: PathGuard::new(dest, mode == ApplyMode::Fresh),
            owners: OwnerMap::new(),
            next_object: 0,
            open_dirs: Vec::new(),
            dir_attrs: Vec::new(),
            kept_mtimes: BTreeMap::new(),
            walker,
            current: Current::Idle,
            durable,
            stats: ApplyStats::default(),
        })
    }

    /// Where a new object for `index` is written before the commit.
    fn stage_path(&mut self, index: &PathIndex) -> (PathBuf, Option<Op>) {
        if self.mode == ApplyMode::Fresh {
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

    /// Fresh mode: gives finished directories their attributes.
    fn close_dirs_not_above(&mut self, index: Option<&PathIndex>) -> Result<()> {
        let tree = journal::staged_tree(&self.staging);
        while let Some((dir, attrs)) = self.open_dirs.last() {
            if index.is_some_and(|i| i.starts_with(dir) && i != dir) {
                break;
            }
            if dir.is_root() {
                // DEST's own attributes are set after the move.
                self.dir_attrs.push((dir.clone(), attrs.clone()));
            } else {
                attrs.apply(&fsops::dest_path(&tree, dir))?;
            }
            self.open_dirs.pop();
        }
        Ok(())
    }

    /// Replace mode: removes what DEST has before `index` (or everything left, at the end).
    fn remove_unlisted(&mut self, index: Option<&PathIndex>, record_is_dir: bool) -> Result<()> {
        let Some(walker) = self.walker.as_mut() else {
            return Ok(());
        };
        while let Some(found) = walker.peek().cloned() {
            match index {
                Some(i) if found.index == *i => {
                    return walker.advance(found.is_dir && record_is_dir);
                }
                Some(i) if found.index > *i => return Ok(()),
                Some(i) if i.starts_with(&found.index) => {
                    // An ancestor the full does not list: keep it and look inside.
                    walker.advance(true)?;
                }
                _ => {
                    self.journal.push(&Op::Remove {
                        index: found.index.clone(),
                    })?;
                    self.stats.removed += 1;
                    walker.advance(false)?;
                }
            }
        }
        Ok(())
    }

    /// Remembers the mtime of `index`'s parent when this set changes the parent's contents
    /// but has no record of the parent itself (records come parent first, so the parent's
    /// own record, if any, has been seen).
    fn keep_parent_mtime(&mut self, index: &PathIndex) -> Result<()> {
        if self.mode == ApplyMode::Fresh {
            return Ok(());
        }
        let Some(parent) = index.parent() else {
            return Ok(());
        };
        // `dir_attrs` is in index order, as records are.
        let listed = self
            .dir_attrs
            .binary_search_by(|(d, _)| d.cmp(&parent))
            .is_ok();
        if listed || self.kept_mtimes.contains_key(&parent) {
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
    pub fn commit(mut self, state_dir: &StateDir) -> Result<ApplyStats> {
        if !matches!(self.current, Current::Idle) {
            bail!("the set ended in the middle of a record");
        }
        self.close_dirs_not_above(None)?;
        self.remove_unlisted(None, false)?;
        if self.mode == ApplyMode::Fresh {
            self.journal.push(&Op::MoveTree)?;
        }
        // Deepest first: setting a directory's mtime must come after every change inside.
        let mut fixes: Vec<Op> = std::mem::take(&mut self.dir_attrs)
            .into_iter()
            .map(|(index, attrs)| Op::DirAttrs { index, attrs })
            .chain(
                std::mem::take(&mut self.kept_mtimes)
                    .into_iter()
                    .map(|(index, mtime)| Op::Mtime { index, mtime }),
            )
            .collect();
        fixes.sort_by(|a, b| op_index(b).cmp(op_index(a)));
        for op in &fixes {
            self.journal.push(op)?;
        }
        if self.durable {
            sync_filesystem(&self.staging)?;
        }
        self.journal.commit(state_dir)?;
        journal::recover(state_dir, &self.dest)?;
        Ok(self.stats)
    }
}

fn op_index(op: &Op) -> &PathIndex {
    match op {
        Op::DirAttrs { index, .. } | Op::Mtime { index, .. } => index,
        _ => unreachable!("only directory fixes are sorted"),
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
        if record.headless {
            return Err(Error::corrupt(format!(
                "{index}: the set holds later chunks of this file but not its first one"
            ))
            .into());
        }
        self.guard.check(record)?;
        self.stats.records += 1;
        if self.mode == ApplyMode::Fresh {
            self.close_dirs_not_above(Some(index))?;
        }
        self.remove_unlisted(Some(index), record.meta.is_dir())?;
        self.keep_parent_mtime(index)?;
        let attrs = Attrs::of(&record.meta, &mut self.owners);
        match (record.kind, &record.meta.file_type) {
            (RecordKind::Deleted, _) => {
                if self.mode != ApplyMode::Fresh {
                    self.journal.push(&Op::Remove {
                        index: index.clone(),
                    })?;
                    self.stats.removed += 1;
                }
            }
            (RecordKind::Snapshot, FileType::Dir) => {
                self.stats.dirs += 1;
                if self.mode == ApplyMode::Fresh {
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
                    self.dir_attrs.push((index.clone(), attrs));
                }
            }
            (RecordKind::Snapshot, FileType::Regular) => {
                let (path, place) = self.stage_path(index);
                if index.is_root() && self.mode == ApplyMode::Fresh {
                    fs::remove_dir(&path)?; // a single-file backup: the tree is that file
                }
                let file = File::create(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                self.current = Current::File {
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
                if self.mode != ApplyMode::Update {
                    return Err(Error::corrupt(format!("{index}: a full set holds a delta")).into());
                }
                let spool = Spool::new(self.staging.join("spool"));
                self.current = Current::Delta {
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
            Current::File { file, path, .. } => {
                let mut buf = vec![0u8; COPY_BUF];
                loop {
                    let n = bytes.read(&mut buf).context("reading the volume")?;
                    if n == 0 {
                        break;
                    }
                    file.write_all(&buf[..n])
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    self.stats.bytes_written += n as u64;
                }
                Ok(())
            }
            Current::Delta { spool, .. } => spool.fill_from(bytes).context("reading the volume"),
            Current::Idle => {
                std::io::copy(bytes, &mut std::io::sink())?;
                Ok(())
            }
        }
    }

    fn end(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.current, Current::Idle) {
            Current::Idle => Ok(()),
            Current::File {
                file,
                path,
                attrs,
                place,
            } => {
                drop(file);
                attrs.apply(&path)?;
                self.stats.files_written += 1;
                if let Some(op) = place {
                    self.journal.push(&op)?;
                }
                Ok(())
            }
            Current::Delta {
                index,
                mut spool,
                attrs,
            } => {
                let basis_path = fsops::dest_path(&self.dest, &index);
                match fsops::lstat_type(&basis_path)? {
                    Some(t) if fsops::is_regular(&t) => {}
                    found => bail!(
                        "cannot apply the change to {index}: DEST has {} there, not the file the \
                         previous backup left (run `dupmirror verify --repair`)",
                        found.map_or("nothing", |t| if t.is_symlink() {
                            "a symlink"
                        } else {
                            "another kind of object"
                        })
                    ),
                }
                let (path, place) = self.stage_path(&index);
                let mut out = File::create(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                let basis = delta::open_basis(&basis_path)?;
                let n = delta::patch(basis, &mut spool.reader()?, &mut out)
                    .with_context(|| format!("cannot apply the change to {index}"))?;
                drop(out);
                attrs.apply(&path)?;
                self.stats.files_patched += 1;
                self.stats.bytes_written += n;
                if let Some(op) = place {
                    self.journal.push(&op)?;
                }
                Ok(())
            }
        }
    }
}
