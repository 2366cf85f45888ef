//! A tree addressed by backup index, through directory handles: DEST, the staged tree of a
//! first sync, a repair's scratch mirror.
//!
//! [`Tree`] turns "the object at `a/b/c`" into "entry `c` of the handle of `a/b`", looked up
//! below the tree's root handle without following any symlink (see `dir`). [`Dest`] is DEST
//! itself: it may not exist yet (a first sync moves the staged tree in as DEST), it must
//! never be a symlink, and it keeps the identity (device, inode) that the state records, so
//! that a journal or a state is only ever applied to the folder it was made for.

use super::dir::{Blocked, Dir, FileId, Kind, Lookup, OpenError, Stat};
use crate::error::Error;
use crate::index::PathIndex;
use anyhow::{anyhow, bail, Result};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Where the directory holding an index stands.
pub enum Parent {
    Found(Dir),
    Missing,
    /// An ancestor is not a directory: `at` names it.
    Blocked {
        at: PathIndex,
        kind: Kind,
    },
}

/// A directory tree, by index.
pub struct Tree {
    root: Dir,
    id: FileId,
}

impl Tree {
    pub fn new(root: Dir) -> Result<Tree> {
        let id = root.stat_self()?.id;
        Ok(Tree { root, id })
    }

    pub fn root(&self) -> &Dir {
        &self.root
    }

    /// Another handle on the same tree.
    pub fn try_clone(&self) -> Result<Tree> {
        Ok(Tree {
            root: self.root.try_clone()?,
            id: self.id,
        })
    }

    pub fn id(&self) -> FileId {
        self.id
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// The directory holding `index` (the root has none: an error).
    pub fn parent(&self, index: &PathIndex) -> Result<Parent> {
        let comps = index.components();
        let Some((_, dirs)) = comps.split_last() else {
            bail!("the root of {} has no parent in it", self.path().display());
        };
        Ok(match self.root.lookup(dirs)? {
            Lookup::Found(d) => Parent::Found(d),
            Lookup::Missing => Parent::Missing,
            Lookup::Blocked(Blocked { depth, kind }) => Parent::Blocked {
                at: index.truncated(depth),
                kind,
            },
        })
    }

    /// The directory holding `index`, making missing directories (`mode`, less the umask)
    /// on the way. With `replace`, a symlink or file in the way is removed (never followed)
    /// and replaced by a directory, and its index is added to `replace`; without, it is
    /// refused as an unsafe path.
    pub fn parent_or_create(
        &self,
        index: &PathIndex,
        mode: u32,
        mut replace: Option<&mut Vec<PathIndex>>,
    ) -> Result<Dir> {
        let comps = index.components();
        let Some((_, dirs)) = comps.split_last() else {
            bail!("the root of {} has no parent in it", self.path().display());
        };
        if let Lookup::Found(d) = self.root.lookup(dirs)? {
            return Ok(d);
        }
        let mut cur: Option<Dir> = None;
        for (depth, c) in dirs.iter().enumerate() {
            let parent = cur.as_ref().unwrap_or(&self.root);
            let next = match parent.child_or_create(c, mode)? {
                Lookup::Found(d) => d,
                Lookup::Blocked(b) => {
                    let at = index.truncated(depth + 1);
                    let Some(replaced) = replace.as_deref_mut() else {
                        return Err(unsafe_below(index, &at, b.kind, self.path()));
                    };
                    parent.remove(c)?;
                    replaced.push(at);
                    parent.create_dir(c, mode)?
                }
                Lookup::Missing => {
                    return Err(anyhow!(
                        "{} vanished while it was being created",
                        parent.show(c).display()
                    ))
                }
            };
            cur = Some(next);
        }
        match cur {
            Some(d) => Ok(d),
            None => self.root.try_clone(),
        }
    }

    /// What is at `index` (not following a symlink); `None` when nothing is. An ancestor
    /// that is not a directory is refused as an unsafe path.
    pub fn stat(&self, index: &PathIndex) -> Result<Option<Stat>> {
        let Some(name) = index.components().last() else {
            return self.root.stat_self().map(Some);
        };
        match self.parent(index)? {
            Parent::Found(d) => d.stat(name),
            Parent::Missing => Ok(None),
            Parent::Blocked { at, kind } => Err(unsafe_below(index, &at, kind, self.path())),
        }
    }
}

/// The error for a path whose ancestor `at` is a symlink or a file.
pub fn unsafe_below(index: &PathIndex, at: &PathIndex, kind: Kind, root: &Path) -> anyhow::Error {
    Error::UnsafePath {
        path: index.to_string(),
        reason: format!(
            "its parent {} in {} is {}",
            at,
            root.display(),
            kind.described()
        ),
    }
    .into()
}

/// DEST: its parent folder (the administrator's, opened once), its name there, and a
/// handle on DEST itself once it exists.
pub struct Dest {
    path: PathBuf,
    parent: Dir,
    name: Vec<u8>,
    tree: Option<Tree>,
    locked: bool,
}

impl Dest {
    /// Opens DEST at an absolute `path` whose parent exists. DEST may be missing; a
    /// symlink or anything else but a real directory is refused (it is never followed:
    /// give the folder it points to instead).
    pub fn open(path: &Path) -> Result<Dest> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            bail!(
                "DEST {} cannot be the root of the file system",
                path.display()
            );
        };
        let parent = Dir::open_existing(parent, "the folder that holds DEST")?;
        let name = name.as_bytes().to_vec();
        let tree = match Dir::open_path(path) {
            Ok(d) => Some(Tree::new(d)?),
            Err(OpenError::Missing) => None,
            Err(OpenError::NotDir(Kind::Symlink)) => {
                let target = parent.read_link(&name).unwrap_or_default();
                bail!(
                    "DEST {} is a symlink (to {}); dupmirror does not follow it: give the \
                     folder itself as DEST",
                    path.display(),
                    String::from_utf8_lossy(&target)
                );
            }
            Err(OpenError::NotDir(k)) => {
                bail!("DEST {} is {}, not a folder", path.display(), k.described())
            }
            Err(OpenError::Io(e)) => {
                return Err(
                    anyhow::Error::from(e).context(format!("cannot open DEST {}", path.display()))
                )
            }
        };
        Ok(Dest {
            path: path.to_path_buf(),
            parent,
            name,
            tree,
            locked: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tree(&self) -> Option<&Tree> {
        self.tree.as_ref()
    }

    pub fn id(&self) -> Option<FileId> {
        self.tree.as_ref().map(Tree::id)
    }

    /// DEST, which must exist by now.
    pub fn require(&self) -> Result<&Tree> {
        self.tree
            .as_ref()
            .ok_or_else(|| anyhow!("DEST {} does not exist", self.path.display()))
    }

    /// Whether DEST is missing or an empty folder.
    pub fn is_empty(&self) -> Result<bool> {
        match &self.tree {
            None => Ok(true),
            Some(t) => Ok(t.root().names()?.next().transpose()?.is_none()),
        }
    }

    /// Locks DEST itself (an exclusive `flock` on the folder), so that two syncs with
    /// different state folders never work on one DEST at once. A missing DEST is locked
    /// when it is made ([`Dest::adopt`]).
    pub fn lock(&mut self, wait: bool) -> Result<()> {
        if let Some(t) = &self.tree {
            if !t.root().lock(wait)? {
                return Err(Error::Locked(self.path.clone()).into());
            }
            self.locked = true;
        }
        Ok(())
    }

    /// The root check at the start of every set and journal replay: DEST's path still
    /// leads to the folder this handle holds, a real directory.
    pub fn recheck(&self) -> Result<()> {
        let Some(tree) = &self.tree else {
            return match Dir::open_path(&self.path) {
                Err(OpenError::Missing) => Ok(()),
                _ => bail!(
                    "DEST {} appeared while dupmirror was working on it (another sync?)",
                    self.path.display()
                ),
            };
        };
        let now = match Dir::open_path(&self.path) {
            Ok(d) => Some(d.stat_self()?.id),
            Err(OpenError::Missing) => None,
            Err(OpenError::NotDir(k)) => bail!(
                "DEST {} was replaced by {} while dupmirror was working on it",
                self.path.display(),
                k.described()
            ),
            Err(OpenError::Io(e)) => return Err(e.into()),
        };
        if now != Some(tree.id()) {
            bail!(
                "DEST {} was moved or replaced while dupmirror was working on it",
                self.path.display()
            );
        }
        Ok(())
    }

    /// Moves entry `name` of `from` (a staged tree) in as DEST, when DEST does not exist;
    /// `Ok(false)` (and nothing moved) when something is there now. DEST is then opened
    /// and locked.
    pub fn adopt(&mut self, from: &Dir, name: &[u8]) -> Result<bool> {
        if self.tree.is_some() || !from.rename_new(name, &self.parent, &self.name)? {
            return Ok(false);
        }
        self.parent.sync()?;
        self.tree = Some(Tree::new(Dir::open_existing(&self.path, "DEST")?)?);
        if !self.locked {
            self.lock(false)?;
        }
        Ok(true)
    }

    /// Opens DEST again when it appeared since (a staged tree moved in by a replay).
    pub fn reopen(&mut self) -> Result<()> {
        if self.tree.is_none() {
            if let Ok(d) = Dir::open_path(&self.path) {
                self.tree = Some(Tree::new(d)?);
                self.lock(false)?;
            }
        }
        Ok(())
    }
}
