//! Walks a tree (DEST, or a repair's scratch mirror) in duplicity's index order, lazily.
//!
//! Used where a tree must be compared with a whole backup (a full set applied over an
//! existing DEST, and `verify`) or read whole (a repair's graft): the walk and the record
//! stream advance together like a merge join, so neither side is ever held in memory whole.
//! Only the sorted listings of the directories on the current path are kept, each with its
//! directory handle: every look at an object is relative to the handle of the directory
//! that holds it, and symlinks are reported, never followed. A listing of more than
//! [`LISTING_BYTES`] is sorted through a scratch file (`dest::sorted`), so a directory of a
//! million files costs no more memory than one of a few thousand.

use super::dir::{Dir, Kind, Lookup, Stat};
use super::sorted::{ExternalSort, Sorted};
use super::tree::Tree;
use crate::index::PathIndex;
use anyhow::{anyhow, Result};
use std::fs::File;

/// One object found in the tree.
#[derive(Clone, Debug)]
pub struct Found {
    pub index: PathIndex,
    pub stat: Stat,
}

impl Found {
    pub fn is_dir(&self) -> bool {
        self.stat.kind == Kind::Dir
    }
}

/// The most bytes of one directory's names (with their bookkeeping) sorted in memory.
pub const LISTING_BYTES: usize = 1 << 20;

pub struct DestWalker {
    root: Option<Dir>,
    /// For each open directory: its index, its handle, its remaining children in order.
    /// The current object (when not the root) is a child of the last one.
    stack: Vec<(PathIndex, Dir, Sorted)>,
    current: Option<Found>,
}

impl DestWalker {
    /// Starts at the tree's root (nothing at all when there is no tree).
    pub fn new(tree: Option<&Tree>) -> Result<Self> {
        let (root, current) = match tree {
            Some(t) => (
                Some(t.root().try_clone()?),
                Some(Found {
                    index: PathIndex::root(),
                    stat: t.root().stat_self()?,
                }),
            ),
            None => (None, None),
        };
        Ok(DestWalker {
            root,
            stack: Vec::new(),
            current,
        })
    }

    /// The object the walk stands on.
    pub fn peek(&self) -> Option<&Found> {
        self.current.as_ref()
    }

    /// The directory holding the current object, and its name there.
    fn holder(&self) -> Result<(&Dir, &[u8])> {
        let cur = self
            .current
            .as_ref()
            .ok_or_else(|| anyhow!("the walk is over"))?;
        match (self.stack.last(), cur.index.components().last()) {
            (Some((_, dir, _)), Some(name)) => Ok((dir, name)),
            _ => Err(anyhow!("the root of the tree has no holder")),
        }
    }

    /// Opens the current object, a regular file, for reading.
    pub fn open_file(&self) -> Result<File> {
        let (dir, name) = self.holder()?;
        dir.read_file(name)
    }

    /// The target of the current object, a symlink.
    pub fn read_link(&self) -> Result<Vec<u8>> {
        let (dir, name) = self.holder()?;
        dir.read_link(name)
    }

    /// Moves on; with `descend`, into the current directory's contents first.
    pub fn advance(&mut self, descend: bool) -> Result<()> {
        if let Some(cur) = self.current.take() {
            if descend && cur.is_dir() {
                let dir = match (cur.index.components().last(), self.stack.last()) {
                    (Some(name), Some((_, parent, _))) => match parent.child(name)? {
                        Lookup::Found(d) => Some(d),
                        // Replaced since it was seen: there is nothing to descend into.
                        _ => None,
                    },
                    (None, _) => self.root.as_ref().map(Dir::try_clone).transpose()?,
                    (Some(_), None) => None,
                };
                if let Some(dir) = dir {
                    let mut names = ExternalSort::new(LISTING_BYTES, "a directory's listing");
                    for name in dir.names()? {
                        names.push(name?)?;
                    }
                    self.stack.push((cur.index, dir, names.finish()?));
                }
            }
        }
        while let Some((index, dir, names)) = self.stack.last_mut() {
            let Some(name) = names.next().transpose()? else {
                self.stack.pop();
                continue;
            };
            let Some(stat) = dir.stat(&name)? else {
                continue; // removed since the listing
            };
            self.current = Some(Found {
                index: index.join(&name),
                stat,
            });
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
        let tree = Tree::new(Dir::open_path(r).unwrap()).unwrap();
        let mut w = DestWalker::new(Some(&tree)).unwrap();
        let mut seen = Vec::new();
        while let Some(f) = w.peek() {
            seen.push(f.index.to_string());
            if f.index.to_string() == "link" {
                assert_eq!(w.read_link().unwrap(), b"a");
                assert!(w.open_file().is_err(), "a symlink is not opened");
            }
            w.advance(true).unwrap();
        }
        assert_eq!(seen, [".", "a", "a/x", "a/x/f", "a-b", "link"]);
    }
}
