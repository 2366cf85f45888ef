//! The objects a journaled update stages: files in staging/obj, and versions composed from
//! deltas (compose.rs) that are written only when the last set is staged, so a catch-up
//! whose sets patch one file over and over writes it once.
//!
//! ```text
//! hold(N, version over a root):     N stands for a file not written yet; the root is DEST's
//!                                   file at the path (its identity noted) or an object M
//!                                   staged before, which the version now owns (freeing M
//!                                   keeps its file until the version is written or dropped)
//! take(N):                          the version leaves N (a later set composes it further;
//!                                   freeing N then does nothing)
//! free(N):  held -> dropped (and its root object's file removed); taken or owned -> nothing;
//!           else staging/obj/N removed
//! write(N): staging/obj/N created from the version's root and held bytes, attributes set;
//!           a DEST root is opened again and must still be the file it was
//! ```
//!
//! Memory: what all held versions hold together, their bookkeeping included (so that many
//! small versions are bounded as well as a few big ones), stays within [`HELD_BUDGET`]; a
//! version that would pass it is written instead (update.rs), and the deltas after it
//! compose over that object.

use super::compose::Version;
use super::overlay::ObjectStore;
use crate::dest::dir::{Dir, Kind};
use crate::dest::fsops::{Attrs, NewFiles};
use crate::dest::journal::object_name;
use crate::dest::tree::{Parent, Tree};
use crate::index::PathIndex;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::MetadataExt;

/// What held versions may hold together (literal bytes, pieces and bookkeeping): 8 MiB
/// keeps a catch-up's peak RSS near 25 MB.
pub const HELD_BUDGET: u64 = 8 << 20;

/// A file as it was when a version's first delta was checked against it.
#[derive(Debug, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Identity {
    pub fn of(file: &File) -> Result<Identity> {
        let m = file.metadata()?;
        Ok(Identity {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// The file a version's pieces come from.
pub enum Root {
    Dest(Identity),
    Object(u64),
}

/// A staged object not written yet.
pub struct Held {
    pub index: PathIndex,
    pub root: Root,
    pub version: Version,
    /// The attributes of the set that made the version.
    pub attrs: Attrs,
}

/// What an entry of the held map costs beside the [`Held`] itself (its key, its share of a
/// B-tree node), roughly.
const MAP_ENTRY_BYTES: usize = 32;

impl Held {
    /// What holding it costs: the version's bytes and pieces, and its bookkeeping (the
    /// path, the map entry). Counting only the bytes let an incremental of many small
    /// deltas hold ~270 B per file beyond the budget: 1.3 MiB for 5,000.
    pub fn footprint(&self) -> u64 {
        let path: usize = (self.index.components().iter())
            .map(|c| c.capacity() + std::mem::size_of::<Vec<u8>>())
            .sum();
        let bookkeeping = std::mem::size_of::<Held>() + MAP_ENTRY_BYTES + path;
        self.version.held_bytes() + bookkeeping as u64
    }
}

pub struct Staged {
    dir: Dir,
    held: BTreeMap<u64, Held>,
    /// Objects whose freeing is someone else's: versions taken on, roots a version owns.
    spoken_for: BTreeSet<u64>,
    held_bytes: u64,
}

/// DEST's regular file at `index`, or what is there instead.
pub fn dest_file(dest: &Tree, index: &PathIndex) -> Result<Result<File, Option<Kind>>> {
    Ok(match (dest.parent(index)?, index.components().last()) {
        (Parent::Found(dir), Some(name)) => dir.open_file(name)?,
        (Parent::Found(_), None) => Err(Some(Kind::Dir)),
        (Parent::Missing, _) => Err(None),
        (Parent::Blocked { kind, .. }, _) => Err(Some(kind)),
    })
}

impl Staged {
    pub fn new(dir: Dir) -> Staged {
        Staged {
            dir,
            held: BTreeMap::new(),
            spoken_for: BTreeSet::new(),
            held_bytes: 0,
        }
    }

    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// What one more version may hold.
    pub fn room(&self) -> u64 {
        HELD_BUDGET.saturating_sub(self.held_bytes)
    }

    pub fn held(&self, n: u64) -> Option<&Held> {
        self.held.get(&n)
    }

    /// Object `n` is `held`, not written yet.
    pub fn hold(&mut self, n: u64, held: Held) {
        if let Root::Object(m) = held.root {
            self.spoken_for.insert(m);
        }
        self.held_bytes += held.footprint();
        self.held.insert(n, held);
    }

    /// Takes the version of `n` away from it, to compose it further under a new number.
    pub fn take(&mut self, n: u64) -> Option<Held> {
        let held = self.release(n)?;
        self.spoken_for.insert(n);
        Some(held)
    }

    fn release(&mut self, n: u64) -> Option<Held> {
        let held = self.held.remove(&n)?;
        self.held_bytes -= held.footprint();
        Some(held)
    }

    /// Writes held object `n` into staging/obj; returns its length.
    pub fn write(&mut self, n: u64, dest: &Tree, new: &NewFiles) -> Result<u64> {
        let Some(held) = self.release(n) else {
            bail!("object {n} is not held");
        };
        self.write_held(n, held, dest, new)
    }

    /// Writes every held object; returns the bytes written.
    pub fn write_all(&mut self, dest: &Tree, new: &NewFiles) -> Result<u64> {
        let mut bytes = 0;
        for (n, held) in std::mem::take(&mut self.held) {
            bytes += self.write_held(n, held, dest, new)?;
        }
        self.held_bytes = 0;
        Ok(bytes)
    }

    fn write_held(&mut self, n: u64, held: Held, dest: &Tree, new: &NewFiles) -> Result<u64> {
        let index = &held.index;
        let root = match &held.root {
            Root::Object(m) => self.dir.read_file(&object_name(*m))?,
            Root::Dest(identity) => {
                let changed = || {
                    format!(
                        "{index}: DEST's copy changed while the sets were staged (the deltas \
                         were checked against it); run the sync again"
                    )
                };
                let file = dest_file(dest, index)?.ok().with_context(changed)?;
                if Identity::of(&file)? != *identity {
                    bail!(changed());
                }
                file
            }
        };
        let name = object_name(n);
        let shown = self.dir.show(&name);
        let mut out = self.dir.create_file(&name)?;
        let bytes = std::io::copy(&mut held.version.reader(&root), &mut out)
            .with_context(|| format!("cannot write {} (the file of {index})", shown.display()))?;
        held.attrs.apply_to_new(&out, &shown, new)?;
        if let Root::Object(m) = held.root {
            self.drop_root(m)?;
        }
        Ok(bytes)
    }

    fn drop_root(&mut self, m: u64) -> Result<()> {
        self.spoken_for.remove(&m);
        self.dir.remove(&object_name(m))
    }
}

impl ObjectStore for Staged {
    fn free(&mut self, n: u64) -> Result<()> {
        if self.spoken_for.remove(&n) {
            return Ok(());
        }
        match self.release(n) {
            Some(Held {
                root: Root::Object(m),
                ..
            }) => self.drop_root(m),
            Some(_) => Ok(()),
            None => self.dir.remove(&object_name(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Versions that hold no bytes of their own (a delta that only copies) still cost their
    /// bookkeeping: many of them cannot pass the budget unseen.
    #[test]
    fn held_versions_count_their_bookkeeping_against_the_budget() {
        let tmp = tempfile::tempdir().unwrap();
        let basis = File::create(tmp.path().join("basis")).unwrap();
        let mut staged = Staged::new(Dir::open_path(tmp.path()).unwrap());
        let attrs = Attrs {
            mode: 0o644,
            owner: None,
            mtime: 0,
            symlink: false,
        };
        for n in 1..=100 {
            let room = staged.room();
            let held = Held {
                index: PathIndex::from_bytes(format!("d/f{n}").as_bytes()),
                root: Root::Dest(Identity::of(&basis).unwrap()),
                version: Version::root(0),
                attrs: attrs.clone(),
            };
            staged.hold(n, held);
            let cost = room - staged.room();
            assert!(cost >= std::mem::size_of::<Held>() as u64, "{cost} B");
        }
        for n in 1..=100 {
            staged.take(n).unwrap();
        }
        assert_eq!(staged.room(), HELD_BUDGET);
    }
}
