//! Walks DEST in duplicity's index order, lazily.
//!
//! Used where DEST must be compared with a whole backup (a full set applied over an existing
//! tree, and `verify`): the walk and the record stream advance together like a merge join,
//! so neither side is ever held in memory whole. Only the sorted listings of the directories
//! on the current path are kept. Symlinks are reported, never followed.

use crate::index::PathIndex;
use anyhow::{Context, Result};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One object found in DEST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub index: PathIndex,
    pub is_dir: bool,
}

pub struct DestWalker {
    root: PathBuf,
    /// For each open directory: its index and its remaining children, sorted, reversed.
    stack: Vec<(PathIndex, Vec<Vec<u8>>)>,
    current: Option<Found>,
}

impl DestWalker {
    /// Starts at DEST's root (nothing at all when DEST does not exist).
    pub fn new(root: &Path) -> Result<Self> {
        let current = match std::fs::symlink_metadata(root) {
            Ok(m) => Some(Found {
                index: PathIndex::root(),
                is_dir: m.is_dir(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", root.display())),
        };
        Ok(DestWalker {
            root: root.to_path_buf(),
            stack: Vec::new(),
            current,
        })
    }

    /// The object the walk stands on.
    pub fn peek(&self) -> Option<&Found> {
        self.current.as_ref()
    }

    /// Moves on; with `descend`, into the current directory's contents first.
    pub fn advance(&mut self, descend: bool) -> Result<()> {
        if let Some(cur) = self.current.take() {
            if descend && cur.is_dir {
                let dir = self.root.join(cur.index.to_path());
                let mut names: Vec<Vec<u8>> = std::fs::read_dir(&dir)
                    .with_context(|| format!("cannot list {}", dir.display()))?
                    .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
                    .collect::<std::io::Result<_>>()
                    .with_context(|| format!("cannot list {}", dir.display()))?;
                names.sort_unstable_by(|a, b| b.cmp(a));
                self.stack.push((cur.index, names));
            }
        }
        while let Some((dir, names)) = self.stack.last_mut() {
            let Some(name) = names.pop() else {
                self.stack.pop();
                continue;
            };
            let index = dir.join(&name);
            let path = self.root.join(index.to_path());
            let is_dir = match std::fs::symlink_metadata(&path) {
                Ok(m) => m.is_dir(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot inspect {}", path.display()))
                }
            };
            self.current = Some(Found { index, is_dir });
            return Ok(());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_in_index_order_without_following_links() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a/x")).unwrap();
        std::fs::write(r.join("a-b"), b"").unwrap();
        std::fs::write(r.join("a/x/f"), b"").unwrap();
        std::os::unix::fs::symlink("a", r.join("link")).unwrap();
        let mut w = DestWalker::new(r).unwrap();
        let mut seen = Vec::new();
        while let Some(f) = w.peek() {
            seen.push(f.index.to_string());
            w.advance(true).unwrap();
        }
        assert_eq!(seen, [".", "a", "a/x", "a/x/f", "a-b", "link"]);
    }
}
