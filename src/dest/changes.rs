//! The paths a sync wrote, patched or removed in DEST: `sync --changed-list` and the
//! `DUPMIRROR_CHANGED_LIST` of a post-sync hook.
//!
//! The list is taken from each committed journal just before it is carried out, so it holds
//! exactly what the commit changes, whichever way the set was applied:
//!
//! ```text
//! for op in journal:
//!     Place, Dir, Attrs -> the path; when DEST holds a directory there that a Place
//!                          replaces, every path below it too (it goes)
//!     Remove            -> the path and every path below it in DEST
//!     Mtime             -> nothing (it gives a directory back the mtime it had)
//!     MoveTree          -> DEST's root and every path of the staged tree
//! ```
//!
//! Paths are relative to DEST, DEST itself is `.`; the set is sorted and has no repeats.
//! Limits: a run that applies several sets lists the union of their changes, so a path that
//! one set changes and a later one changes back is listed although it ends as it was. The
//! set is held in memory (only when a list was asked for).

use super::fsops::{self, Ancestors};
use super::journal::{self, Op};
use super::walk::DestWalker;
use crate::index::PathIndex;
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

#[derive(Debug, Default)]
pub struct ChangedPaths {
    paths: BTreeSet<Vec<u8>>,
}

impl ChangedPaths {
    /// Adds what the committed journal at `journal_path` is about to do to `dest`.
    pub fn add_journal(&mut self, journal_path: &Path, dest: &Path) -> Result<()> {
        let committed = journal::read(journal_path)
            .with_context(|| format!("cannot read {}", journal_path.display()))?;
        for op in &committed.ops {
            match op {
                Op::Dir { index } | Op::Attrs { index, .. } => self.add(index),
                Op::Place { index, .. } | Op::Remove { index } => {
                    self.add_dest_subtree(dest, index)?;
                    self.add(index);
                }
                Op::Mtime { .. } => {}
                Op::MoveTree => {
                    self.add(&PathIndex::root());
                    self.add_tree(
                        &journal::staged_tree(&committed.staging),
                        &PathIndex::root(),
                    )?;
                }
            }
        }
        Ok(())
    }

    fn add(&mut self, index: &PathIndex) {
        self.paths.insert(index.to_bytes());
    }

    /// Every path below `index` in DEST, when DEST holds a directory there.
    fn add_dest_subtree(&mut self, dest: &Path, index: &PathIndex) -> Result<()> {
        // Nothing below a symlink or a file is DEST's: the journal will not touch it.
        if !matches!(fsops::check_ancestors(dest, index), Ok(Ancestors::AllDirs)) {
            return Ok(());
        }
        let path = fsops::dest_path(dest, index);
        if fsops::lstat_type(&path)?.is_some_and(|t| t.is_dir()) {
            self.add_tree(&path, index)?;
        }
        Ok(())
    }

    /// Every path inside the directory `root`, named as below `prefix`.
    fn add_tree(&mut self, root: &Path, prefix: &PathIndex) -> Result<()> {
        let mut walk = DestWalker::new(root)?;
        walk.advance(true)?; // the root itself is the caller's
        while let Some(found) = walk.peek() {
            let mut index = prefix.clone();
            for c in found.index.components() {
                index = index.join(c);
            }
            self.add(&index);
            walk.advance(true)?;
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Writes the list, each path followed by a NUL byte (like `find -print0`), replacing
    /// `path` atomically.
    pub fn write_nul_separated(&self, path: &Path) -> Result<()> {
        let mut data = Vec::new();
        for p in &self.paths {
            data.extend_from_slice(p);
            data.push(0);
        }
        write_replacing(path, &data)
    }
}

/// Writes `data` to a temporary file beside `path`, then renames it over `path`, so a reader
/// sees the old file or the new one, never a part.
pub fn write_replacing(path: &Path, data: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(data))
        .and_then(|_| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dest::fsops::Attrs;
    use crate::dest::journal::JournalWriter;
    use crate::dest::state::{MirrorState, StateDir};

    fn index(p: &str) -> PathIndex {
        PathIndex::from_bytes(p.as_bytes())
    }

    #[test]
    fn lists_every_path_an_operation_touches_and_none_it_keeps() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("dest");
        for dir in ["gone/sub", "kept", "was_dir/x"] {
            std::fs::create_dir_all(dest.join(dir)).unwrap();
        }
        std::fs::write(dest.join("gone/sub/f"), b"").unwrap();
        let state_dir = StateDir::open(&d.path().join("state"), &dest, false).unwrap();
        let staging = state_dir.staging().to_path_buf();
        std::fs::create_dir_all(&staging).unwrap();
        let target = MirrorState::new("src".into(), 1, 2, dest.clone(), Vec::new());
        let mut w = JournalWriter::create(&staging, &target).unwrap();
        let attrs = Attrs {
            mode: 0o644,
            owner: None,
            mtime: 5,
            symlink: false,
        };
        for op in [
            Op::Place {
                index: index("new"),
                staged: 1,
            },
            Op::Place {
                index: index("was_dir"),
                staged: 2,
            },
            Op::Remove {
                index: index("gone"),
            },
            Op::Attrs {
                index: index("kept/a"),
                attrs,
            },
            Op::Mtime {
                index: index("kept"),
                mtime: 1,
            },
        ] {
            w.push(&op).unwrap();
        }
        w.commit(&state_dir).unwrap();
        let mut changed = ChangedPaths::default();
        changed
            .add_journal(&state_dir.journal_path(), &dest)
            .unwrap();
        let list = d.path().join("list");
        changed.write_nul_separated(&list).unwrap();
        assert_eq!(
            std::fs::read(&list).unwrap(),
            b"gone\0gone/sub\0gone/sub/f\0kept/a\0new\0was_dir\0was_dir/x\0"
        );
    }
}
