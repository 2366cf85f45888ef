//! What every record passes before either strategy stages it.
//!
//! ```text
//! admit(record):
//!     outside the path filter          -> skipped (its bytes are read past)
//!     a chunk run without its head     -> refused: the head lies in volumes not read
//!     a signature entry                -> refused: volumes hold no signatures
//!     DEST's root as anything but a directory snapshot (a symlink, a file, a deletion,
//!         a delta)                     -> refused: DEST is a folder, and a root that became
//!                                         a symlink would send the next set outside it
//!     a path below a symlink, a file or a deletion -> refused (dest::guard)
//! ```

use crate::decode::records::{Record, RecordKind};
use crate::dest::guard::{KindView, PathGuard};
use crate::error::Error;
use crate::mirror::filter::PathFilter;
use anyhow::Result;

pub(super) struct Gate {
    filter: PathFilter,
    guard: PathGuard,
}

impl Gate {
    pub fn new(filter: PathFilter) -> Gate {
        Gate {
            filter,
            guard: PathGuard::default(),
        }
    }

    /// Starts the records of another set, staged over the previous ones.
    pub fn next_set(&mut self, filter: PathFilter) {
        self.filter = filter;
        self.guard.restart();
    }

    /// Whether a record of a first sync into an empty DEST is to be staged (`false`: the
    /// path filter leaves it out).
    pub fn admit(&mut self, record: &Record) -> Result<bool> {
        self.admit_over(record, None)
    }

    /// Like [`Gate::admit`], for a set applied over `view` (DEST, and earlier sets staged).
    pub fn admit_over(&mut self, record: &Record, view: Option<&dyn KindView>) -> Result<bool> {
        let index = &record.index;
        if !self.filter.wants(index) {
            return Ok(false);
        }
        if record.headless {
            return Err(Error::corrupt(format!(
                "{index}: the set holds later chunks of this file but not its first one"
            ))
            .into());
        }
        if record.kind == RecordKind::Signature {
            return Err(Error::corrupt(format!("{index}: a signature entry in a volume")).into());
        }
        if index.is_root() && !(record.kind == RecordKind::Snapshot && record.meta.is_dir()) {
            let what = match record.kind {
                RecordKind::Deleted => "deletes it".to_string(),
                RecordKind::Diff => "patches it as a file".to_string(),
                _ => format!("makes it a {}", record.meta.file_type.name()),
            };
            return Err(Error::corrupt(format!(
                "the set's record of the backup's root {what}; DEST must stay a folder"
            ))
            .into());
        }
        self.guard.check(record, view)?;
        Ok(true)
    }
}
