//! The journaled update: sets applied over an existing DEST (an incremental, a full over a
//! DEST that differs, a repair, and a catch-up: several consecutive sets of one chain),
//! staged as numbered objects in one merged view (overlay.rs) and committed by one journal.
//!
//! ```text
//! for each set (next_set between them), begin(record), records in index order:
//!     the gate checks the record against the merged view (DEST + what earlier sets staged)
//!     remember the mtime of the record's parent (its contents change without a record
//!         of its own, so it keeps the mtime the master gave it)
//!     snapshot dir   -> put Dir(path); its attributes wait until the end
//!     snapshot file  -> staging/obj/N created 0600, filled, then owner, mode, mtime;
//!                       put Object(path, N) (an object staged there before is freed)
//!     snapshot other -> staging/obj/N made, given its attributes; put Object(path, N)
//!     diff           -> the merged view must hold a regular file there (anything else, or
//!                       nothing: the set contradicts the backup, refused); the delta is
//!                       spooled, then composed onto it (DEST's file, an object an earlier
//!                       set wrote, or the version an earlier set composed) into version N,
//!                       held in memory (compose.rs, staged.rs); past the memory budget,
//!                       patched into staging/obj/N instead (a held basis written first);
//!                       drift.rs judges a delta on DEST's file against this set's
//!                       signatures (a staged basis is exact: nothing to judge)
//!     deleted        -> the merged view must hold something there (refused otherwise: a
//!                       deletion of what the backup never had), unless the same set
//!                       removed or replaced an ancestor; remove(path)
//! finish: no path left drifted; the held versions are written to staging/obj (a DEST
//!     root must still be the file the deltas were checked against); the overlay becomes
//!     the journal (overlay.rs)
//! ```
//!
//! DEST is read through handles (its objects' types, a delta's basis, parents' mtimes),
//! never written: all changes are journal lines, carried out by `dest::journal`.

use super::compose::Version;
use super::drift::{Basis, DriftCheck, Verdict};
use super::gate::Gate;
use super::overlay::{Held, MergeStats, MergedView, Now, Overlay};
use super::staged::{dest_file, Held as HeldVersion, Identity, Root, Staged};
use super::{copy_into, skip, ApplyStats, COPY_BUF};
use crate::decode::delta::{self, Spool};
use crate::decode::records::{Record, RecordKind};
use crate::dest::dir::{Dir, Kind};
use crate::dest::fsops::{self, Attrs, NewFiles, OwnerMap};
use crate::dest::journal::{object_name, JournalWriter, OBJECTS};
use crate::dest::tree::Tree;
use crate::error::Error;
use crate::index::PathIndex;
use crate::meta::FileType;
use crate::mirror::compare::{DiffKind, Difference};
use crate::mirror::filter::PathFilter;
use crate::repo::sigtar::SetSignatures;
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

enum OpenRecord {
    Idle,
    File {
        index: PathIndex,
        n: u64,
        file: File,
        shown: PathBuf,
        attrs: Attrs,
    },
    Delta {
        index: PathIndex,
        basis: Source,
        spool: Spool,
        attrs: Attrs,
    },
}

/// What a delta applies to.
enum Source {
    /// A version an earlier set composed, held as object N.
    Held(u64),
    /// A file: DEST's, or object N an earlier set wrote.
    File {
        file: File,
        kind: Basis,
        object: Option<u64>,
    },
}

pub struct JournaledUpdate {
    gate: Gate,
    owners: OwnerMap,
    new_files: NewFiles,
    dest: Tree,
    staging: Dir,
    staged: Staged,
    journal: JournalWriter,
    next_object: u64,
    overlay: Overlay,
    drift: DriftCheck,
    current: OpenRecord,
    copy_buf: Vec<u8>,
    /// The set being staged, and those staged before it.
    stats: ApplyStats,
    done: Vec<ApplyStats>,
}

/// The message for a record that contradicts what DEST (with the sets staged before it)
/// holds.
fn contradiction(index: &PathIndex, does: &str, found: &str) -> anyhow::Error {
    Error::corrupt(format!(
        "{index}: the set {does}, but DEST holds {found} there; the set contradicts the backup \
         DEST holds (if DEST was changed by hand, `dupmirror verify --repair` restores it)"
    ))
    .into()
}

/// The kind of object a non-directory snapshot makes.
fn kind_of(file_type: &FileType) -> Kind {
    match file_type {
        FileType::Regular => Kind::Regular,
        FileType::Dir => Kind::Dir,
        FileType::Symlink(_) => Kind::Symlink,
        FileType::Fifo => Kind::Fifo,
        FileType::CharDevice { .. } => Kind::CharDevice,
        FileType::BlockDevice { .. } => Kind::BlockDevice,
    }
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
            gate: Gate::new(filter),
            owners: OwnerMap::new(),
            new_files: NewFiles::probe(&staging),
            dest,
            staging,
            staged: Staged::new(objects),
            journal,
            next_object: 0,
            overlay: Overlay::default(),
            drift: DriftCheck::default(),
            current: OpenRecord::Idle,
            copy_buf: vec![0; COPY_BUF],
            stats: ApplyStats::default(),
            done: Vec::new(),
        })
    }

    /// Starts staging the next set of the chain over what the previous ones staged; its
    /// records outside `filter` are skipped.
    pub fn next_set(&mut self, filter: PathFilter) -> Result<()> {
        self.check_settled()?;
        self.gate.next_set(filter);
        self.drift = DriftCheck::default();
        self.overlay.next_set();
        self.done.push(std::mem::take(&mut self.stats));
        Ok(())
    }

    pub fn detect_drift(&mut self, signatures: SetSignatures) {
        self.drift.watch(signatures);
    }

    pub fn take_drifted(&mut self) -> Result<BTreeSet<PathIndex>> {
        self.drift.take()
    }

    pub fn add_fix(&mut self, diff: &Difference) -> Result<()> {
        match (&diff.kind, &diff.expected) {
            (DiffKind::Extra, _) => {
                self.overlay.keep_parent_mtime(&diff.index, &self.dest);
                self.overlay
                    .remove(&diff.index, &self.dest, &mut self.staged)?;
                self.stats.removed += 1;
            }
            (DiffKind::Changed(_), Some(meta)) if !diff.needs_data() => {
                let attrs = Attrs::of(meta, &mut self.owners);
                self.overlay.set_attrs(diff.index.clone(), attrs);
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

    /// The regular file at `index` in the merged view, the basis of a delta: a version an
    /// earlier set composed, an object an earlier set staged, else DEST's.
    fn basis(&self, index: &PathIndex) -> Result<Source> {
        let refuse = |kind: Option<Kind>| {
            let what = kind.map_or("nothing", Kind::described);
            contradiction(index, "patches it as a regular file", what)
        };
        match self.overlay.held(index, &self.dest)? {
            Held::Staged(Now::Object {
                n,
                kind: Kind::Regular,
                ..
            }) if self.staged.held(n).is_some() => Ok(Source::Held(n)),
            Held::Staged(Now::Object {
                n,
                kind: Kind::Regular,
                ..
            }) => Ok(Source::File {
                file: self.staged.dir().read_file(&object_name(n))?,
                kind: Basis::Staged,
                object: Some(n),
            }),
            Held::Unchanged(Some(_)) => Ok(Source::File {
                file: dest_file(&self.dest, index)?.map_err(refuse)?,
                kind: Basis::Dest,
                object: None,
            }),
            other => Err(refuse(other.kind())),
        }
    }

    pub fn begin(&mut self, record: &Record) -> Result<()> {
        let view = MergedView {
            overlay: &self.overlay,
            dest: &self.dest,
        };
        if !self.gate.admit_over(record, Some(&view))? {
            return Ok(()); // `current` stays Idle: the data is skipped
        }
        self.stats.records += 1;
        let index = &record.index;
        self.overlay.keep_parent_mtime(index, &self.dest);
        let attrs = Attrs::of(&record.meta, &mut self.owners);
        match (record.kind, &record.meta.file_type) {
            (RecordKind::Deleted, _) => {
                match self.overlay.held(index, &self.dest)? {
                    // Removed with the ancestor this same set removed or replaced.
                    Held::Gone { set } if set == self.overlay.set() => {
                        self.overlay.count_moot_removal();
                        return Ok(());
                    }
                    held if held.kind().is_none() => {
                        return Err(contradiction(index, "deletes it", "nothing"))
                    }
                    _ => {}
                }
                self.overlay.remove(index, &self.dest, &mut self.staged)?;
                self.stats.removed += 1;
            }
            (RecordKind::Snapshot, FileType::Dir) => {
                self.stats.dirs += 1;
                let dir = Now::Dir { keeps_dest: true };
                self.overlay.put(index, dir, &self.dest, &mut self.staged)?;
                self.overlay.set_attrs(index.clone(), attrs);
            }
            (RecordKind::Snapshot, FileType::Regular) => {
                let (n, name) = self.next_object();
                let file = self.staged.dir().create_file(&name)?;
                self.current = OpenRecord::File {
                    index: index.clone(),
                    n,
                    file,
                    shown: self.staged.dir().show(&name),
                    attrs,
                };
            }
            (RecordKind::Snapshot, file_type) => {
                let (n, name) = self.next_object();
                fsops::create_special(self.staged.dir(), &name, &record.meta)?;
                attrs.apply(self.staged.dir(), &name)?;
                self.stats.specials += 1;
                let object = Now::Object {
                    n,
                    kind: kind_of(file_type),
                    bytes: 0,
                };
                self.overlay
                    .put(index, object, &self.dest, &mut self.staged)?;
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
                index,
                n,
                file,
                shown,
                attrs,
            } => {
                attrs.apply_to_new(&file, &shown, &self.new_files)?;
                let bytes = file.metadata()?.len();
                drop(file);
                self.stats.files_written += 1;
                let object = Now::Object {
                    n,
                    kind: Kind::Regular,
                    bytes,
                };
                self.overlay
                    .put(&index, object, &self.dest, &mut self.staged)
            }
            OpenRecord::Delta {
                index,
                basis,
                mut spool,
                attrs,
            } => self.patch(index, basis, &mut spool, attrs),
        }
    }

    /// Applies a delta to the merged view's copy of the file: composed into a version
    /// held in memory when it fits the budget (written after the last set), else patched
    /// into a staged object; staged when the drift check says it fits.
    fn patch(
        &mut self,
        index: PathIndex,
        basis: Source,
        spool: &mut Spool,
        attrs: Attrs,
    ) -> Result<()> {
        let (file, kind, object) = match basis {
            Source::Held(n) => return self.patch_held(index, n, spool, attrs),
            Source::File { file, kind, object } => (file, kind, object),
        };
        let len = file.metadata()?.len();
        let max_out = self
            .drift
            .output_bound(&index, len, spool.spooled_bytes())?;
        let composed = Version::root(len).patched(spool.reader()?, max_out, self.staged.room());
        let (patched, version) = match composed {
            Ok(Some(v)) => (Ok(v.len()), v),
            Ok(None) => return self.patch_file(index, (file, kind), spool, attrs),
            Err(e) => (Err(e), Version::default()),
        };
        let verdict = self
            .drift
            .judge(&index, patched, || Ok(version.reader(&file)), kind)?;
        let Verdict::Fits(bytes) = verdict else {
            self.stats.drifted += 1;
            return Ok(());
        };
        let root = match object {
            Some(m) => Root::Object(m),
            None => Root::Dest(Identity::of(&file)?),
        };
        self.stats.files_patched += 1;
        self.stage_held(index, version, root, attrs, bytes)
    }

    /// Composes a delta onto a version held since an earlier set (its basis is exact: no
    /// drift to judge). Past the budget, the held version is written and the delta patched
    /// onto it.
    fn patch_held(
        &mut self,
        index: PathIndex,
        n: u64,
        spool: &mut Spool,
        attrs: Attrs,
    ) -> Result<()> {
        let Some(held) = self.staged.held(n) else {
            bail!("{index}: object {n} is not held");
        };
        let max_out = self
            .drift
            .output_bound(&index, held.version.len(), spool.spooled_bytes())?;
        let room = self.staged.room() + held.footprint();
        let composed = held
            .version
            .patched(spool.reader()?, max_out, room)
            .with_context(|| format!("cannot apply the change to {index}"))?;
        match composed {
            Some(version) => {
                self.stats.files_patched += 1;
                let root = self.staged.take(n).map(|h| h.root);
                let root = root.with_context(|| format!("{index}: object {n} is not held"))?;
                let bytes = version.len();
                self.stage_held(index, version, root, attrs, bytes)
            }
            None => {
                self.stats.bytes_written += self.staged.write(n, &self.dest, &self.new_files)?;
                let file = self.staged.dir().read_file(&object_name(n))?;
                self.patch_file(index, (file, Basis::Staged), spool, attrs)
            }
        }
    }

    /// Stages a version held in memory, as a new object.
    fn stage_held(
        &mut self,
        index: PathIndex,
        version: Version,
        root: Root,
        attrs: Attrs,
        bytes: u64,
    ) -> Result<()> {
        let (n, _) = self.next_object();
        let object = Now::Object {
            n,
            kind: Kind::Regular,
            bytes,
        };
        let held = HeldVersion {
            index: index.clone(),
            root,
            version,
            attrs,
        };
        self.staged.hold(n, held);
        self.overlay
            .put(&index, object, &self.dest, &mut self.staged)
    }

    /// Patches a file into a staged object, and stages it when the drift check says it
    /// fits.
    fn patch_file(
        &mut self,
        index: PathIndex,
        (basis, basis_kind): (File, Basis),
        spool: &mut Spool,
        attrs: Attrs,
    ) -> Result<()> {
        let (n, name) = self.next_object();
        let objects = self.staged.dir();
        let mut out = objects.create_file(&name)?;
        let max_out =
            self.drift
                .output_bound(&index, basis.metadata()?.len(), spool.spooled_bytes())?;
        let patched = delta::patch(
            basis,
            &mut spool.reader()?,
            &mut out,
            &mut self.copy_buf,
            max_out,
        );
        match self
            .drift
            .judge(&index, patched, || objects.read_file(&name), basis_kind)?
        {
            Verdict::Drifted => {
                drop(out);
                objects.remove(&name)?;
                self.stats.drifted += 1;
                Ok(())
            }
            Verdict::Fits(bytes) => {
                attrs.apply_to_new(&out, &objects.show(&name), &self.new_files)?;
                self.stats.files_patched += 1;
                self.stats.bytes_written += bytes;
                let object = Now::Object {
                    n,
                    kind: Kind::Regular,
                    bytes,
                };
                self.overlay
                    .put(&index, object, &self.dest, &mut self.staged)
            }
        }
    }

    /// Refuses to go on while a record is open or a path is left drifted.
    fn check_settled(&self) -> Result<()> {
        if !matches!(self.current, OpenRecord::Idle) {
            bail!("the set ended in the middle of a record");
        }
        if let Some(p) = self.drift.first() {
            bail!(
                "{p} differs from what the previous backup left there; it must be repaired first"
            );
        }
        Ok(())
    }

    /// Journals every staged set; they are ready to commit. Returns the stats of each set
    /// and what staging them together saved.
    pub fn finish(mut self) -> Result<(Dir, JournalWriter, Vec<ApplyStats>, MergeStats)> {
        self.check_settled()?;
        self.stats.bytes_written += self.staged.write_all(&self.dest, &self.new_files)?;
        let merged = self.overlay.journal(&mut self.journal)?;
        self.done.push(self.stats);
        Ok((self.staging, self.journal, self.done, merged))
    }
}
