//! The fresh build: a full set into a missing or empty DEST, built whole in staging.
//!
//! ```text
//! begin(record), records in index order:
//!     close the directories on the stack that do not hold the record: each gets its own
//!         attributes (owner, mode, mtime) through its handle, after its contents
//!     make missing ancestors (a filtered sync may not read every ancestor's record)
//!     root dir       -> its attributes wait for the commit (they belong to DEST)
//!     dir            -> mkdirat 0700 in the parent's handle; pushed on the stack
//!     regular file   -> created 0600; its bytes; then owner, mode, mtime by descriptor
//!     special        -> symlinkat / mknodat, then its attributes
//!     deleted, diff  -> refused: a full set has neither
//! finish: close every directory; journal MoveTree and DEST's own attributes
//! ```
//!
//! No lookup by path and no look at DEST at all: every object is made relative to the
//! handle of the directory that holds it, kept open while its contents arrive.

use super::gate::Gate;
use super::{copy_into, skip, ApplyStats, COPY_BUF};
use crate::decode::records::{Record, RecordKind};
use crate::dest::dir::Dir;
use crate::dest::fsops::{self, Attrs, NewFiles, OwnerMap};
use crate::dest::journal::{JournalWriter, Op};
use crate::error::Error;
use crate::index::PathIndex;
use crate::meta::FileType;
use crate::mirror::filter::PathFilter;
use anyhow::{bail, Result};
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

pub struct FreshBuild {
    gate: Gate,
    owners: OwnerMap,
    new_files: NewFiles,
    staging: Dir,
    journal: JournalWriter,
    /// Directories on the current path, the staged tree's root first: their handles, and
    /// the attributes each gets once its contents are complete (none for a directory made
    /// only as a parent).
    open_dirs: Vec<(PathIndex, Dir, Option<Attrs>)>,
    /// The attributes of the backup's root, given to DEST after the move.
    root_attrs: Option<Attrs>,
    current: Option<(File, PathBuf, Attrs)>,
    copy_buf: Vec<u8>,
    stats: ApplyStats,
}

impl FreshBuild {
    pub fn new(staging: Dir, tree: Dir, journal: JournalWriter, filter: PathFilter) -> Self {
        FreshBuild {
            gate: Gate::new(filter),
            owners: OwnerMap::new(),
            new_files: NewFiles::probe(&staging),
            staging,
            journal,
            open_dirs: vec![(PathIndex::root(), tree, None)],
            root_attrs: None,
            current: None,
            copy_buf: vec![0; COPY_BUF],
            stats: ApplyStats::default(),
        }
    }

    /// Gives the top directory of the stack its attributes (through its own handle) and
    /// closes it.
    fn close_top(&mut self) -> Result<()> {
        match self.open_dirs.pop() {
            Some((_, dir, Some(attrs))) => attrs.apply_to_dir(&dir),
            _ => Ok(()),
        }
    }

    /// The handle of the directory that holds `index` (not the root): closes what lies
    /// beside the path, makes what is missing on it.
    fn holder(&mut self, index: &PathIndex) -> Result<&Dir> {
        while self.open_dirs.len() > 1 {
            let (top, _, _) = &self.open_dirs[self.open_dirs.len() - 1];
            if index.starts_with(top) && index != top {
                break;
            }
            self.close_top()?;
        }
        while let Some((top, dir, _)) = self.open_dirs.last() {
            if top.len() + 1 >= index.len() {
                break;
            }
            let next = index.truncated(top.len() + 1);
            let made = dir.create_dir(&index.components()[top.len()], 0o755)?;
            self.open_dirs.push((next, made, None));
        }
        match self.open_dirs.last() {
            Some((_, dir, _)) => Ok(dir),
            None => bail!("the staged tree is closed"),
        }
    }

    pub fn begin(&mut self, record: &Record) -> Result<()> {
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
                let dir = self.holder(index)?.create_dir(name, 0o700)?;
                self.open_dirs.push((index.clone(), dir, Some(attrs)));
                self.stats.dirs += 1;
            }
            (RecordKind::Snapshot, FileType::Regular) => {
                let parent = self.holder(index)?;
                let file = parent.create_file(name)?;
                let shown = parent.show(name);
                self.current = Some((file, shown, attrs));
            }
            (RecordKind::Snapshot, _) => {
                let parent = self.holder(index)?;
                fsops::create_special(parent, name, &record.meta)?;
                attrs.apply(parent, name)?;
                self.stats.specials += 1;
            }
        }
        Ok(())
    }

    pub fn data(&mut self, bytes: &mut dyn Read) -> Result<()> {
        match &mut self.current {
            Some((file, shown, _)) => {
                self.stats.bytes_written += copy_into(file, bytes, &mut self.copy_buf, shown)?;
                Ok(())
            }
            None => skip(bytes),
        }
    }

    pub fn end(&mut self) -> Result<()> {
        if let Some((file, shown, attrs)) = self.current.take() {
            attrs.apply_to_new(&file, &shown, &self.new_files)?;
            self.stats.files_written += 1;
        }
        Ok(())
    }

    /// Closes the staged tree and journals its move into DEST.
    pub fn finish(mut self) -> Result<(Dir, JournalWriter, ApplyStats)> {
        if self.current.is_some() {
            bail!("the set ended in the middle of a record");
        }
        while self.open_dirs.len() > 1 {
            self.close_top()?;
        }
        self.journal.push(&Op::MoveTree)?;
        if let Some(attrs) = self.root_attrs.take() {
            self.journal.push(&Op::Attrs {
                index: PathIndex::root(),
                attrs,
            })?;
        }
        Ok((self.staging, self.journal, self.stats))
    }
}
