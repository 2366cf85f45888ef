//! The journaled update: a set applied over an existing DEST (an incremental, a full over
//! a DEST that differs, a repair), staged as numbered objects and committed by a journal.
//!
//! ```text
//! begin(record), records in index order:
//!     remember the mtime of the record's parent (its contents change without a record
//!         of its own, so it keeps the mtime the master gave it)
//!     snapshot dir   -> journal Dir(path); its attributes wait until the end
//!     snapshot file  -> staging/obj/N created 0600, filled, then owner, mode, mtime;
//!                       journal Place(path, N)
//!     snapshot other -> staging/obj/N made, given its attributes; journal Place(path, N)
//!     diff           -> DEST must hold a regular file there (anything else, or nothing:
//!                       the set contradicts the backup DEST holds, refused); the delta is
//!                       spooled, then patched onto it into staging/obj/N; drift.rs judges
//!     deleted        -> DEST must hold something there (refused otherwise: a deletion of
//!                       what the backup never had); journal Remove(path)
//! finish: no path left drifted; journal Attrs and Mtime deepest first
//! ```
//!
//! DEST is read through handles (its objects' types, a delta's basis, parents' mtimes),
//! never written: all changes are journal lines, carried out by `dest::journal`.

use super::drift::{DriftCheck, Verdict};
use super::gate::Gate;
use super::{copy_into, skip, ApplyStats, COPY_BUF};
use crate::decode::delta::{self, SigDigest, Spool};
use crate::decode::records::{Record, RecordKind};
use crate::dest::dir::{Dir, Kind};
use crate::dest::fsops::{self, Attrs, NewFiles, OwnerMap};
use crate::dest::journal::{object_name, JournalWriter, Op, OBJECTS};
use crate::dest::tree::{Parent, Tree};
use crate::error::Error;
use crate::index::PathIndex;
use crate::meta::FileType;
use crate::mirror::compare::{DiffKind, Difference};
use crate::mirror::filter::PathFilter;
use anyhow::{bail, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

enum OpenRecord {
    Idle,
    File {
        file: File,
        shown: PathBuf,
        attrs: Attrs,
        place: Op,
    },
    Delta {
        index: PathIndex,
        basis: File,
        spool: Spool,
        attrs: Attrs,
    },
}

pub struct JournaledUpdate {
    gate: Gate,
    owners: OwnerMap,
    new_files: NewFiles,
    dest: Tree,
    staging: Dir,
    objects: Dir,
    journal: JournalWriter,
    next_object: u64,
    /// Attributes of directories (and fixes), journaled deepest-first at the end.
    late_attrs: BTreeMap<PathIndex, Attrs>,
    /// Directories the set changes the contents of without a record of their own, with
    /// the mtime to give back to them afterwards.
    kept_mtimes: BTreeMap<PathIndex, i64>,
    drift: DriftCheck,
    current: OpenRecord,
    copy_buf: Vec<u8>,
    stats: ApplyStats,
}

/// The message for a record that contradicts what DEST holds.
fn contradiction(index: &PathIndex, does: &str, found: &str) -> anyhow::Error {
    Error::corrupt(format!(
        "{index}: the set {does}, but DEST holds {found} there; the set contradicts the backup \
         DEST holds (if DEST was changed by hand, `dupmirror verify --repair` restores it)"
    ))
    .into()
}

impl JournaledUpdate {
    pub fn new(
        staging: Dir,
        dest: Tree,
        journal: JournalWriter,
        filter: PathFilter,
    ) -> Result<Self> {
        let objects = staging.create_dir(OBJECTS, 0o700)?;
        Ok(JournaledUpdate {
            gate: Gate::new(filter, Some(dest.try_clone()?)),
            owners: OwnerMap::new(),
            new_files: NewFiles::probe(&staging),
            dest,
            staging,
            objects,
            journal,
            next_object: 0,
            late_attrs: BTreeMap::new(),
            kept_mtimes: BTreeMap::new(),
            drift: DriftCheck::default(),
            current: OpenRecord::Idle,
            copy_buf: vec![0; COPY_BUF],
            stats: ApplyStats::default(),
        })
    }

    pub fn detect_drift(&mut self, signatures: BTreeMap<PathIndex, SigDigest>) {
        self.drift.watch(signatures);
    }

    pub fn take_drifted(&mut self) -> BTreeSet<PathIndex> {
        self.drift.take()
    }

    pub fn add_fix(&mut self, diff: &Difference) -> Result<()> {
        match (&diff.kind, &diff.expected) {
            (DiffKind::Extra, _) => {
                self.keep_parent_mtime(&diff.index);
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

    /// A new staged object's number and name.
    fn next_object(&mut self) -> (u64, Vec<u8>) {
        self.next_object += 1;
        (self.next_object, object_name(self.next_object))
    }

    /// Remembers the mtime of `index`'s parent when this set changes the parent's contents
    /// but has no record of the parent itself (records come parent first, so the parent's
    /// own record, if any, has been seen).
    fn keep_parent_mtime(&mut self, index: &PathIndex) {
        let Some(parent) = index.parent() else {
            return;
        };
        if self.late_attrs.contains_key(&parent) || self.kept_mtimes.contains_key(&parent) {
            return;
        }
        // Below a symlink or a file there is no directory of DEST's to keep.
        if let Ok(Some(st)) = self.dest.stat(&parent) {
            if st.kind == Kind::Dir {
                self.kept_mtimes.insert(parent, st.mtime);
            }
        }
    }

    /// DEST's regular file at `index`, the basis of a delta.
    fn basis(&self, index: &PathIndex) -> Result<File> {
        let found = match (self.dest.parent(index)?, index.components().last()) {
            (Parent::Found(dir), Some(name)) => dir.open_file(name)?,
            (Parent::Found(_), None) => Err(Some(Kind::Dir)),
            (Parent::Missing, _) => Err(None),
            (Parent::Blocked { kind, .. }, _) => Err(Some(kind)),
        };
        found.map_err(|kind| {
            let what = kind.map_or("nothing", Kind::described);
            contradiction(index, "patches it as a regular file", what)
        })
    }

    pub fn begin(&mut self, record: &Record) -> Result<()> {
        if !self.gate.admit(record)? {
            return Ok(()); // `current` stays Idle: the data is skipped
        }
        self.stats.records += 1;
        let index = &record.index;
        self.keep_parent_mtime(index);
        let attrs = Attrs::of(&record.meta, &mut self.owners);
        match (record.kind, &record.meta.file_type) {
            (RecordKind::Deleted, _) => {
                if self.dest.stat(index)?.is_none() {
                    return Err(contradiction(index, "deletes it", "nothing"));
                }
                self.journal.push(&Op::Remove {
                    index: index.clone(),
                })?;
                self.stats.removed += 1;
            }
            (RecordKind::Snapshot, FileType::Dir) => {
                self.stats.dirs += 1;
                self.journal.push(&Op::Dir {
                    index: index.clone(),
                })?;
                self.late_attrs.insert(index.clone(), attrs);
            }
            (RecordKind::Snapshot, FileType::Regular) => {
                let (n, name) = self.next_object();
                let file = self.objects.create_file(&name)?;
                self.current = OpenRecord::File {
                    file,
                    shown: self.objects.show(&name),
                    attrs,
                    place: Op::Place {
                        index: index.clone(),
                        staged: n,
                    },
                };
            }
            (RecordKind::Snapshot, _) => {
                let (n, name) = self.next_object();
                fsops::create_special(&self.objects, &name, &record.meta)?;
                attrs.apply(&self.objects, &name)?;
                self.stats.specials += 1;
                self.journal.push(&Op::Place {
                    index: index.clone(),
                    staged: n,
                })?;
            }
            (RecordKind::Diff, _) => {
                let basis = self.basis(index)?;
                let spill_dir = self.staging.try_clone()?;
                let spool = Spool::new(Box::new(move || {
                    let f = spill_dir.create_scratch(b"spool")?;
                    spill_dir.remove(b"spool")?;
                    Ok(f)
                }));
                self.current = OpenRecord::Delta {
                    index: index.clone(),
                    basis,
                    spool,
                    attrs,
                };
            }
            (RecordKind::Signature, _) => {
                return Err(Error::corrupt(format!("{index}: a signature entry")).into())
            }
        }
        Ok(())
    }

    pub fn data(&mut self, bytes: &mut dyn Read) -> Result<()> {
        match &mut self.current {
            OpenRecord::File { file, shown, .. } => {
                self.stats.bytes_written += copy_into(file, bytes, &mut self.copy_buf, shown)?;
                Ok(())
            }
            OpenRecord::Delta { spool, .. } => spool.fill_from(bytes),
            OpenRecord::Idle => skip(bytes),
        }
    }

    pub fn end(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.current, OpenRecord::Idle) {
            OpenRecord::Idle => Ok(()),
            OpenRecord::File {
                file,
                shown,
                attrs,
                place,
            } => {
                attrs.apply_to_new(&file, &shown, &self.new_files)?;
                drop(file);
                self.stats.files_written += 1;
                self.journal.push(&place)
            }
            OpenRecord::Delta {
                index,
                basis,
                mut spool,
                attrs,
            } => self.patch(index, basis, &mut spool, attrs),
        }
    }

    /// Patches DEST's copy of the file into a staged object, and stages it when the drift
    /// check says it fits.
    fn patch(
        &mut self,
        index: PathIndex,
        basis: File,
        spool: &mut Spool,
        attrs: Attrs,
    ) -> Result<()> {
        let (n, name) = self.next_object();
        let mut out = self.objects.create_file(&name)?;
        let max_out =
            self.drift
                .output_bound(&index, basis.metadata()?.len(), spool.spooled_bytes());
        let patched = delta::patch(
            basis,
            &mut spool.reader()?,
            &mut out,
            &mut self.copy_buf,
            max_out,
        );
        match self
            .drift
            .judge(&index, patched, || self.objects.read_file(&name))?
        {
            Verdict::Drifted => {
                drop(out);
                self.objects.remove(&name)?;
                self.stats.drifted += 1;
                Ok(())
            }
            Verdict::Fits(bytes) => {
                attrs.apply_to_new(&out, &self.objects.show(&name), &self.new_files)?;
                self.stats.files_patched += 1;
                self.stats.bytes_written += bytes;
                self.journal.push(&Op::Place { index, staged: n })
            }
        }
    }

    /// Journals the directories' attributes; the set is ready to commit.
    pub fn finish(mut self) -> Result<(Dir, JournalWriter, ApplyStats)> {
        if !matches!(self.current, OpenRecord::Idle) {
            bail!("the set ended in the middle of a record");
        }
        if let Some(p) = self.drift.first() {
            bail!(
                "{p} differs from what the previous backup left there; it must be repaired first"
            );
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
        Ok((self.staging, self.journal, self.stats))
    }
}
