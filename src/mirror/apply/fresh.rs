//! The fresh build: a full set into a missing or empty DEST, built whole in staging.
//!
//! The set's volumes are read either in order into one [`VolumeBuild`] (any caller that
//! feeds records: a repair, verify), or apart, several at once (a first sync, see
//! `Repository::read_set_apart`): then each volume gets a `VolumeBuild` of its own, on its
//! decoder's thread, making its files itself, and [`Joined`] finishes, in volume order,
//! what crosses a volume boundary.
//!
//! ```text
//! begin(record), records in index order (within one volume when read apart):
//!     close the directories on the stack that do not hold the record: each gets its own
//!         attributes (owner, mode, mtime) through its handle, after its contents (the
//!         writer pool gives them once the last entry queued in it is made)
//!     make missing ancestors (a filtered sync may not read every ancestor's record, and a
//!         volume read apart starts below folders whose records another volume holds)
//!     root dir       -> its attributes wait for the commit (they belong to DEST)
//!     dir            -> mkdirat 0700 in the parent's handle, here; pushed on the stack
//!     regular file   -> in order: small: its bytes read here, then created 0600, filled
//!                       and given owner, mode, mtime by a writer thread (writers.rs);
//!                       bigger or split across volumes: the same, here, as its bytes
//!                       stream by. Apart: always here, as its bytes stream by
//!     chunk run, apart -> the file is created, or joined if the decoder of a neighbouring
//!                       volume made it first; the volume's first chunk k is written at
//!                       (k-1) x 65536 (records.rs checks that offset when the volumes join)
//!     special        -> a writer makes it (symlinkat / mknodat), then its attributes
//!     deleted, diff  -> refused: a full set has neither
//! volume read apart done (in volume order, after every volume before it; L = its last
//!         record):
//!     the split file left open by an earlier volume and not continued past this one: its
//!         attributes now (all its chunks are in); this volume's open run's head: kept
//!     the folders still open (with records) here and kept from before: those that do not
//!         hold L are complete (every later record comes after L): their attributes now;
//!         the rest (ancestors of L: one chain) are kept
//! every file written: its bytes told to the early writeback (none on tmpfs), which runs
//!         syncfs(staging) every 64 MiB (dest::writeback); every 8 MiB once a decoder has
//!         no volume left (the tail: a core is free)
//! finish: close every directory, wait for the writers; stop the writeback (its error
//!         fails the set); journal MoveTree and DEST's own attributes
//! ```
//!
//! No lookup by path and no look at DEST at all: every object is made relative to the
//! handle of the directory that holds it, kept open while its contents arrive. Read apart,
//! a folder or a split file may be made by two decoders (each volume's records are
//! checked, names included, by its own stream; the joins check the order across): folders
//! are made-or-opened without following a symlink, a split file made-or-joined only if
//! what is there is a regular file. Every entry is made through [`Folder::create`], one at a
//! time on a disk (see `Creations` for why). Memory: per decoder one folder stack and one
//! file; the kept chain is as deep as the tree, never as wide.

use super::gate::Gate;
use super::writers::{Creations, Folder, Job, Made, Writers, INLINE};
use super::{copy_into, skip, ApplyStats, COPY_BUF};
use crate::decode::records::{Record, RecordKind, RecordSink, VolumeSink, VolumeSinks};
use crate::dest::dir::Dir;
use crate::dest::fsops::{Attrs, NewFiles, OwnerMap};
use crate::dest::journal::{JournalWriter, Op};
use crate::dest::writeback::EarlyWriteback;
use crate::error::Error;
use crate::index::PathIndex;
use crate::meta::FileType;
use crate::mirror::filter::PathFilter;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The regular file whose bytes are arriving.
enum Current {
    /// Read into memory, queued whole at its end; `fed` once a tar entry has been read.
    Buffered {
        folder: Arc<Folder>,
        name: Vec<u8>,
        attrs: Attrs,
        bytes: Vec<u8>,
        fed: bool,
    },
    /// Written here as its bytes stream by.
    Streaming {
        file: File,
        shown: PathBuf,
        attrs: Attrs,
    },
    /// Later chunks of a file whose head another volume holds: its attributes are the
    /// head's to give.
    Continued { file: File, shown: PathBuf },
}

/// The split file open at the end of the last volume joined, from its head.
struct OpenFile {
    file: File,
    shown: PathBuf,
    attrs: Attrs,
}

/// What crosses volume boundaries when volumes are read apart, finished in volume order.
#[derive(Default)]
struct Joined {
    stats: ApplyStats,
    /// Folders whose records were read and that hold the last record joined: a chain.
    folders: Vec<(PathIndex, Arc<Folder>)>,
    file: Option<OpenFile>,
}

/// What every build of one staged tree shares.
struct Staged {
    root: Arc<Folder>,
    filter: PathFilter,
    new_files: NewFiles,
    /// The attributes of the backup's root, given to DEST after the move.
    root_attrs: Mutex<Option<Attrs>>,
    joined: Mutex<Joined>,
    /// Told of the bytes written; none when the tree is in memory.
    writeback: Option<EarlyWriteback>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct FreshBuild {
    staged: Arc<Staged>,
    staging: Dir,
    journal: JournalWriter,
    /// The build of records read in order, with the writer pool; made on first use.
    in_order: Option<VolumeBuild>,
}

/// Builds from the records of a set read in order, or of one volume read apart.
struct VolumeBuild {
    staged: Arc<Staged>,
    gate: Gate,
    owners: OwnerMap,
    /// Directories on the current path, the staged tree's root first.
    open_dirs: Vec<(PathIndex, Arc<Folder>)>,
    current: Option<Current>,
    copy_buf: Vec<u8>,
    stats: ApplyStats,
    /// `stats.bytes_written` as last told to the early writeback.
    reported: u64,
    /// Joined when the build is finished or dropped (before a failed set's staging is
    /// removed); the writers hold the handles they use. None for a volume read apart.
    writers: Writers,
    /// Read apart: whether the volume before it is read too (a chunk run may continue).
    apart: Option<bool>,
}

impl FreshBuild {
    pub fn new(
        staging: Dir,
        tree: Dir,
        journal: JournalWriter,
        filter: PathFilter,
    ) -> Result<Self> {
        let new_files = NewFiles::probe(&staging);
        let on_disk = !staging.in_memory();
        let writeback = match on_disk {
            true => Some(EarlyWriteback::start(&staging)?),
            false => None,
        };
        Ok(FreshBuild {
            staged: Arc::new(Staged {
                root: Folder::root(tree, Creations::new(on_disk)),
                filter,
                new_files,
                root_attrs: Mutex::new(None),
                joined: Mutex::new(Joined::default()),
                writeback,
            }),
            staging,
            journal,
            in_order: None,
        })
    }

    /// The sinks for this set's volumes read apart.
    pub fn volumes(&self) -> FreshVolumes {
        FreshVolumes(Arc::clone(&self.staged))
    }

    fn in_order(&mut self) -> Result<&mut VolumeBuild> {
        if self.in_order.is_none() {
            let writers = Writers::start(Writers::default_size()?, self.staged.new_files)?;
            self.in_order = Some(VolumeBuild::new(&self.staged, writers, None));
        }
        match &mut self.in_order {
            Some(b) => Ok(b),
            None => bail!("the staged tree is closed"),
        }
    }

    /// Closes the staged tree, waits for the writers, and journals its move into DEST.
    pub fn finish(self) -> Result<(Dir, JournalWriter, ApplyStats)> {
        let FreshBuild {
            staged,
            staging,
            mut journal,
            in_order,
        } = self;
        let mut stats = match in_order {
            Some(b) => b.finish()?,
            None => ApplyStats::default(),
        };
        let joined = std::mem::take(&mut *lock(&staged.joined));
        if let Some(open) = joined.file {
            open.attrs
                .apply_to_new(&open.file, &open.shown, &staged.new_files)?;
            stats.files_written += 1;
        }
        for (_, folder) in joined.folders.iter().rev() {
            folder.close()?;
        }
        add_stats(&mut stats, &joined.stats);
        if let Some(writeback) = &staged.writeback {
            writeback.finish()?;
        }
        journal.push(&Op::MoveTree)?;
        if let Some(attrs) = lock(&staged.root_attrs).take() {
            journal.push(&Op::Attrs {
                index: PathIndex::root(),
                attrs,
            })?;
        }
        Ok((staging, journal, stats))
    }
}

impl RecordSink for FreshBuild {
    fn begin(&mut self, record: &Record) -> Result<()> {
        self.in_order()?.begin(record)
    }

    fn data(&mut self, bytes: &mut dyn Read) -> Result<()> {
        self.in_order()?.data(bytes)
    }

    fn end(&mut self) -> Result<()> {
        self.in_order()?.end()
    }
}

/// Gives each volume read apart a build of its own.
pub struct FreshVolumes(Arc<Staged>);

impl VolumeSinks for FreshVolumes {
    fn volume(&self, follows: bool) -> Result<Box<dyn VolumeSink>> {
        let inline = Writers::start(0, self.0.new_files)?;
        Ok(Box::new(VolumeBuild::new(&self.0, inline, Some(follows))))
    }

    fn no_volume_left(&self) {
        if let Some(writeback) = &self.0.writeback {
            writeback.hurry();
        }
    }
}

fn add_stats(to: &mut ApplyStats, from: &ApplyStats) {
    to.records += from.records;
    to.files_written += from.files_written;
    to.dirs += from.dirs;
    to.specials += from.specials;
    to.bytes_written += from.bytes_written;
}

impl VolumeBuild {
    fn new(staged: &Arc<Staged>, writers: Writers, apart: Option<bool>) -> VolumeBuild {
        VolumeBuild {
            staged: Arc::clone(staged),
            gate: Gate::new(staged.filter.clone()),
            owners: OwnerMap::new(),
            open_dirs: vec![(PathIndex::root(), Arc::clone(&staged.root))],
            current: None,
            copy_buf: vec![0; COPY_BUF],
            stats: ApplyStats::default(),
            reported: 0,
            writers,
            apart,
        }
    }

    /// Makes folder `name` in `parent`; read apart, another decoder may have made it.
    fn make_dir(
        &self,
        parent: &Folder,
        name: &[u8],
        mode: u32,
        attrs: Option<Attrs>,
    ) -> Result<Arc<Folder>> {
        let made = parent.create(|dir| match self.apart {
            Some(_) => dir.create_or_open_dir(name, mode),
            None => dir.create_dir(name, mode),
        })?;
        Ok(parent.subfolder(made, attrs))
    }

    /// Closes the top directory of the stack: it gets its attributes after its last entry.
    fn close_top(&mut self) -> Result<()> {
        match self.open_dirs.pop() {
            Some((_, folder)) => self.writers.close(&folder),
            None => Ok(()),
        }
    }

    /// The directory that holds `index` (not the root): closes what lies beside the path,
    /// makes what is missing on it.
    fn holder(&mut self, index: &PathIndex) -> Result<Arc<Folder>> {
        while self.open_dirs.len() > 1 {
            let (top, _) = &self.open_dirs[self.open_dirs.len() - 1];
            if index.starts_with(top) && index != top {
                break;
            }
            self.close_top()?;
        }
        while let Some((top, folder)) = self.open_dirs.last() {
            if top.len() + 1 >= index.len() {
                break;
            }
            let next = index.truncated(top.len() + 1);
            let made = self.make_dir(folder, &index.components()[top.len()], 0o755, None)?;
            self.open_dirs.push((next, made));
        }
        match self.open_dirs.last() {
            Some((_, folder)) => Ok(Arc::clone(folder)),
            None => bail!("the staged tree is closed"),
        }
    }

    fn begin(&mut self, record: &Record) -> Result<()> {
        self.writers.check()?;
        if let Some(writeback) = &self.staged.writeback {
            writeback.check()?;
        }
        if !self.gate.admit(record)? {
            return Ok(()); // `current` stays empty: the data is skipped
        }
        self.stats.records += 1;
        let index = &record.index;
        let attrs = Attrs::of(&record.meta, &mut self.owners);
        let Some(name) = index.components().last() else {
            // The gate let only a directory through.
            *lock(&self.staged.root_attrs) = Some(attrs);
            self.stats.dirs += 1;
            return Ok(());
        };
        match (record.kind, &record.meta.file_type) {
            (RecordKind::Deleted, _) => {
                return Err(Error::corrupt(format!("{index}: a full set deletes it")).into())
            }
            (RecordKind::Diff, _) => {
                return Err(Error::corrupt(format!("{index}: a full set holds a delta")).into())
            }
            (RecordKind::Signature, _) => {
                return Err(Error::corrupt(format!("{index}: a signature entry")).into())
            }
            (RecordKind::Snapshot, FileType::Dir) => {
                let holder = self.holder(index)?;
                let made = self.make_dir(&holder, name, 0o700, Some(attrs))?;
                self.open_dirs.push((index.clone(), made));
                self.stats.dirs += 1;
            }
            (RecordKind::Snapshot, FileType::Regular) => {
                let folder = self.holder(index)?;
                self.current = Some(if self.writers.is_parallel() {
                    Current::Buffered {
                        folder,
                        name: name.clone(),
                        attrs,
                        bytes: Vec::new(),
                        fed: false,
                    }
                } else {
                    Current::Streaming {
                        file: folder.create(|d| d.create_file(name))?,
                        shown: folder.dir.show(name),
                        attrs,
                    }
                });
            }
            (RecordKind::Snapshot, _) => {
                let folder = self.holder(index)?;
                self.writers.submit(Job {
                    folder,
                    name: name.clone(),
                    attrs,
                    what: Made::Special(record.meta.clone()),
                })?;
                self.stats.specials += 1;
            }
        }
        Ok(())
    }

    /// A chunk run read apart: the file is made or joined (the decoder of the volume
    /// before or after may have made it) and written from `offset`.
    fn begin_chunks(&mut self, record: &Record, offset: u64) -> Result<()> {
        let (Some(follows), RecordKind::Snapshot, true) =
            (self.apart, record.kind, record.meta.is_regular())
        else {
            return self.begin(record);
        };
        if record.headless && !follows {
            return self.begin(record); // refused: the head lies in a volume not read
        }
        let head = Record {
            headless: false,
            ..record.clone()
        };
        if !self.gate.admit(&head)? {
            return Ok(());
        }
        let index = &record.index;
        let Some(name) = index.components().last() else {
            bail!("the backup's root is a file"); // the gate refuses it first
        };
        let folder = self.holder(index)?;
        let mut file = folder.create(|d| d.create_or_join_file(name))?;
        let shown = folder.dir.show(name);
        file.seek(SeekFrom::Start(offset))
            .with_context(|| format!("cannot write {}", shown.display()))?;
        self.current = Some(if record.headless {
            Current::Continued { file, shown }
        } else {
            self.stats.records += 1;
            let attrs = Attrs::of(&record.meta, &mut self.owners);
            Current::Streaming { file, shown, attrs }
        });
        Ok(())
    }

    fn data(&mut self, bytes: &mut dyn Read) -> Result<()> {
        if let Some(Current::Buffered {
            bytes: buf, fed, ..
        }) = &mut self.current
        {
            if !*fed {
                *fed = true;
                (&mut *bytes)
                    .take(INLINE as u64 + 1)
                    .read_to_end(buf)
                    .context("reading the volume")?;
                if buf.len() <= INLINE {
                    return Ok(());
                }
            }
            // Too big to queue, or split across tar entries: written here from now on.
            self.stream_here()?;
        }
        match &mut self.current {
            Some(Current::Streaming { file, shown, .. } | Current::Continued { file, shown }) => {
                self.stats.bytes_written += copy_into(file, bytes, &mut self.copy_buf, shown)?;
                self.report_written();
                Ok(())
            }
            _ => skip(bytes),
        }
    }

    /// Turns the buffered file into one written here: created, and its bytes so far.
    fn stream_here(&mut self) -> Result<()> {
        if let Some(Current::Buffered {
            folder,
            name,
            attrs,
            bytes,
            ..
        }) = self.current.take()
        {
            let mut file = folder.create(|d| d.create_file(&name))?;
            let shown = folder.dir.show(&name);
            file.write_all(&bytes)
                .with_context(|| format!("cannot write {}", shown.display()))?;
            self.stats.bytes_written += bytes.len() as u64;
            self.current = Some(Current::Streaming { file, shown, attrs });
        }
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        match self.current.take() {
            Some(Current::Buffered {
                folder,
                name,
                attrs,
                bytes,
                ..
            }) => {
                self.stats.bytes_written += bytes.len() as u64;
                self.writers.submit(Job {
                    folder,
                    name,
                    attrs,
                    what: Made::File(bytes),
                })?;
            }
            Some(Current::Streaming { file, shown, attrs }) => {
                attrs.apply_to_new(&file, &shown, &self.staged.new_files)?;
            }
            // Its head's volume gives the attributes once every volume up to here is in.
            Some(Current::Continued { .. }) | None => return Ok(()),
        }
        self.stats.files_written += 1;
        self.report_written();
        Ok(())
    }

    /// Tells the early writeback what was written (or queued for a writer) since the last
    /// call: as a big file streams by, and as each file ends.
    fn report_written(&mut self) {
        if let Some(writeback) = &self.staged.writeback {
            writeback.wrote(self.stats.bytes_written - self.reported);
            self.reported = self.stats.bytes_written;
        }
    }

    /// The records read in order are all in: closes every directory, waits for the writers.
    fn finish(mut self) -> Result<ApplyStats> {
        if self.current.is_some() {
            bail!("the set ended in the middle of a record");
        }
        while self.open_dirs.len() > 1 {
            self.close_top()?;
        }
        let stats = std::mem::take(&mut self.stats);
        self.writers.finish()?;
        Ok(stats)
    }
}

impl RecordSink for VolumeBuild {
    fn begin(&mut self, record: &Record) -> Result<()> {
        VolumeBuild::begin(self, record)
    }

    fn begin_chunks(&mut self, record: &Record, offset: u64) -> Result<()> {
        VolumeBuild::begin_chunks(self, record, offset)
    }

    fn data(&mut self, bytes: &mut dyn Read) -> Result<()> {
        VolumeBuild::data(self, bytes)
    }

    fn end(&mut self) -> Result<()> {
        VolumeBuild::end(self)
    }
}

impl VolumeSink for VolumeBuild {
    fn done(mut self: Box<Self>, last: Option<&PathIndex>) -> Result<()> {
        let staged = Arc::clone(&self.staged);
        let mut joined = lock(&staged.joined);
        add_stats(&mut joined.stats, &self.stats);
        let Some(last) = last else {
            return Ok(()); // an empty volume: what was open stays open
        };
        // A split file is complete unless this volume's end continues it further.
        if !matches!(self.current, Some(Current::Continued { .. })) {
            if let Some(open) = joined.file.take() {
                open.attrs
                    .apply_to_new(&open.file, &open.shown, &staged.new_files)?;
                joined.stats.files_written += 1;
            }
        }
        if let Some(Current::Streaming { file, shown, attrs }) = self.current.take() {
            joined.file = Some(OpenFile { file, shown, attrs });
        }
        let mut folders = std::mem::take(&mut joined.folders);
        // Folders made only as parents have nothing to give.
        folders.extend(self.open_dirs.drain(1..).filter(|(_, f)| f.has_attrs()));
        for (index, folder) in folders {
            if last.starts_with(&index) {
                joined.folders.push((index, folder));
            } else {
                folder.close()?;
            }
        }
        Ok(())
    }
}
