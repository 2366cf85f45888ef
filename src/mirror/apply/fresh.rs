//! The fresh build: a full set into a missing or empty DEST, built whole in staging.
//!
//! ```text
//! begin(record), records in index order:
//!     close the directories on the stack that do not hold the record: each gets its own
//!         attributes (owner, mode, mtime) through its handle, after its contents (the
//!         writer pool gives them once the last entry queued in it is made)
//!     make missing ancestors (a filtered sync may not read every ancestor's record)
//!     root dir       -> its attributes wait for the commit (they belong to DEST)
//!     dir            -> mkdirat 0700 in the parent's handle, here; pushed on the stack
//!     regular file   -> small: its bytes read here, then created 0600, filled and given
//!                       owner, mode, mtime by a writer thread (writers.rs); bigger or
//!                       split across volumes: the same, here, as its bytes stream by
//!     special        -> a writer makes it (symlinkat / mknodat), then its attributes
//!     deleted, diff  -> refused: a full set has neither
//! finish: close every directory, wait for the writers; journal MoveTree and DEST's own
//!         attributes
//! ```
//!
//! No lookup by path and no look at DEST at all: every object is made relative to the
//! handle of the directory that holds it, kept open while its contents arrive.

use super::gate::Gate;
use super::writers::{Folder, Job, Made, Writers, INLINE};
use super::{copy_into, skip, ApplyStats, COPY_BUF};
use crate::decode::records::{Record, RecordKind};
use crate::dest::dir::Dir;
use crate::dest::fsops::{Attrs, NewFiles, OwnerMap};
use crate::dest::journal::{JournalWriter, Op};
use crate::error::Error;
use crate::index::PathIndex;
use crate::meta::FileType;
use crate::mirror::filter::PathFilter;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

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
}

pub struct FreshBuild {
    gate: Gate,
    owners: OwnerMap,
    new_files: NewFiles,
    staging: Dir,
    journal: JournalWriter,
    /// Directories on the current path, the staged tree's root first.
    open_dirs: Vec<(PathIndex, Arc<Folder>)>,
    /// The attributes of the backup's root, given to DEST after the move.
    root_attrs: Option<Attrs>,
    current: Option<Current>,
    copy_buf: Vec<u8>,
    stats: ApplyStats,
    /// Joined when the build is finished or dropped (before a failed set's staging is
    /// removed); the writers hold the handles they use.
    writers: Writers,
}

impl FreshBuild {
    pub fn new(
        staging: Dir,
        tree: Dir,
        journal: JournalWriter,
        filter: PathFilter,
    ) -> Result<Self> {
        let new_files = NewFiles::probe(&staging);
        Ok(FreshBuild {
            gate: Gate::new(filter),
            owners: OwnerMap::new(),
            new_files,
            staging,
            journal,
            open_dirs: vec![(PathIndex::root(), Folder::new(tree, None))],
            root_attrs: None,
            current: None,
            copy_buf: vec![0; COPY_BUF],
            stats: ApplyStats::default(),
            writers: Writers::start(Writers::default_size()?, new_files)?,
        })
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
            let made = folder
                .dir
                .create_dir(&index.components()[top.len()], 0o755)?;
            self.open_dirs.push((next, Folder::new(made, None)));
        }
        match self.open_dirs.last() {
            Some((_, folder)) => Ok(Arc::clone(folder)),
            None => bail!("the staged tree is closed"),
        }
    }

    pub fn begin(&mut self, record: &Record) -> Result<()> {
        self.writers.check()?;
        if !self.gate.admit(record)? {
            return Ok(()); // `current` stays empty: the data is skipped
        }
        self.stats.records += 1;
        let index = &record.index;
        let attrs = Attrs::of(&record.meta, &mut self.owners);
        let Some(name) = index.components().last() else {
            self.root_attrs = Some(attrs); // the gate let only a directory through
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
                let dir = self.holder(index)?.dir.create_dir(name, 0o700)?;
                self.open_dirs
                    .push((index.clone(), Folder::new(dir, Some(attrs))));
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
                        file: folder.dir.create_file(name)?,
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

    pub fn data(&mut self, bytes: &mut dyn Read) -> Result<()> {
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
            Some(Current::Streaming { file, shown, .. }) => {
                self.stats.bytes_written += copy_into(file, bytes, &mut self.copy_buf, shown)?;
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
            let mut file = folder.dir.create_file(&name)?;
            let shown = folder.dir.show(&name);
            file.write_all(&bytes)
                .with_context(|| format!("cannot write {}", shown.display()))?;
            self.stats.bytes_written += bytes.len() as u64;
            self.current = Some(Current::Streaming { file, shown, attrs });
        }
        Ok(())
    }

    pub fn end(&mut self) -> Result<()> {
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
                attrs.apply_to_new(&file, &shown, &self.new_files)?;
            }
            None => return Ok(()),
        }
        self.stats.files_written += 1;
        Ok(())
    }

    /// Closes the staged tree, waits for the writers, and journals its move into DEST.
    pub fn finish(mut self) -> Result<(Dir, JournalWriter, ApplyStats)> {
        if self.current.is_some() {
            bail!("the set ended in the middle of a record");
        }
        while self.open_dirs.len() > 1 {
            self.close_top()?;
        }
        let FreshBuild {
            staging,
            mut journal,
            stats,
            writers,
            root_attrs,
            ..
        } = self;
        writers.finish()?;
        journal.push(&Op::MoveTree)?;
        if let Some(attrs) = root_attrs {
            journal.push(&Op::Attrs {
                index: PathIndex::root(),
                attrs,
            })?;
        }
        Ok((staging, journal, stats))
    }
}
