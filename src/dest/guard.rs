//! Refuses a set whose records would not form a tree inside DEST.
//!
//! Records arrive in index order (a directory before its contents), so the ancestors of the
//! current record form a stack. For each record the guard knows, for every ancestor, what it
//! will be once the set is applied: a directory that exists in DEST, a directory this set
//! creates, or something that is not a directory. A record below a symlink, a file or a
//! deleted path is refused before anything is committed. The tree the set applies to (DEST,
//! or DEST with the changes of earlier sets staged in the same commit: a [`KindView`]) is
//! consulted only for ancestors the set does not mention, and each one once per run of
//! siblings.

use super::dir::Kind;
use super::tree::Tree;
use crate::decode::records::{Record, RecordKind};
use crate::error::Error;
use crate::index::PathIndex;
use anyhow::Result;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    /// A real directory in DEST, kept by this set.
    ExistingDir,
    /// A directory that will be new (made by this set or as a missing parent).
    NewDir,
    /// Removed by this set: only further removals may lie below it.
    Deleted,
    /// Anything else: nothing may lie below it. `in_set` when this set made it so (then
    /// duplicity lists the removal of what used to lie below; from an earlier state,
    /// nothing can legitimately lie below it at all).
    NotDir { what: &'static str, in_set: bool },
}

/// What a tree holds at a path (not following symlinks), as the guard needs it.
pub trait KindView {
    fn kind_at(&self, index: &PathIndex) -> Result<Option<Kind>>;
}

impl KindView for Tree {
    fn kind_at(&self, index: &PathIndex) -> Result<Option<Kind>> {
        Ok(self.stat(index)?.map(|s| s.kind))
    }
}

#[derive(Default)]
pub struct PathGuard {
    stack: Vec<(PathIndex, Node)>,
}

impl PathGuard {
    /// Starts over for the records of another set.
    pub fn restart(&mut self) {
        self.stack.clear();
    }

    /// What the tree has at `index` now (`view` is `None` when the set builds a new tree).
    fn dest_node(view: Option<&dyn KindView>, index: &PathIndex) -> Result<Node> {
        let Some(view) = view else {
            return Ok(Node::NewDir);
        };
        Ok(match view.kind_at(index)? {
            None => Node::NewDir,
            Some(Kind::Dir) => Node::ExistingDir,
            Some(Kind::Symlink) => Node::NotDir {
                what: "symlink",
                in_set: false,
            },
            Some(_) => Node::NotDir {
                what: "file",
                in_set: false,
            },
        })
    }

    /// Checks one record of a set applied over `view` (`None`: into an empty tree);
    /// afterwards the record counts as an ancestor candidate.
    pub fn check(&mut self, record: &Record, view: Option<&dyn KindView>) -> Result<()> {
        let index = &record.index;
        let n = index.len();
        while let Some((top, _)) = self.stack.last() {
            if top.len() < n && index.starts_with(top) {
                break;
            }
            self.stack.pop();
        }
        // Fill in the ancestors this set does not mention, from DEST.
        while self.stack.len() < n {
            let depth = self.stack.len();
            let node = match self.stack.last().map(|(_, node)| node) {
                None if view.is_none() => Node::NewDir,
                None => Node::ExistingDir,
                Some(Node::ExistingDir) => Self::dest_node(view, &index.truncated(depth))?,
                Some(Node::NewDir) => Node::NewDir,
                Some(_) => break, // refused just below
            };
            self.stack.push((index.truncated(depth), node));
        }
        if let Some((parent, node)) = self.stack.last() {
            let deletion = record.kind == RecordKind::Deleted;
            let reason = match node {
                Node::ExistingDir | Node::NewDir => None,
                // Removing what lies below a path this set deleted or turned into a
                // non-directory removes nothing: duplicity lists those children.
                Node::Deleted | Node::NotDir { in_set: true, .. } if deletion => None,
                Node::Deleted => Some(format!(
                    "it lies below {parent}, which the same set deletes"
                )),
                Node::NotDir { what, .. } => {
                    Some(format!("it lies below {parent}, which is a {what}"))
                }
            };
            if let Some(reason) = reason {
                return Err(Error::UnsafePath {
                    path: index.to_string(),
                    reason,
                }
                .into());
            }
        }
        let node = match record.kind {
            RecordKind::Deleted => Node::Deleted,
            _ if record.meta.is_dir() => match self.stack.last() {
                None | Some((_, Node::ExistingDir)) => match Self::dest_node(view, index)? {
                    Node::ExistingDir => Node::ExistingDir,
                    // A symlink or file here is replaced by the new directory.
                    _ => Node::NewDir,
                },
                _ => Node::NewDir,
            },
            _ => Node::NotDir {
                what: record.meta.file_type.name(),
                in_set: true,
            },
        };
        self.stack.push((index.clone(), node));
        Ok(())
    }
}
