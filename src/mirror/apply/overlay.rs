//! The merged view: what the sets staged so far leave at each path they change, laid over
//! DEST. A journaled update stages one set or several consecutive sets of one chain (a
//! catch-up) into one overlay, which becomes a single journal: readers and crashes see DEST
//! jump from the backup it held straight to the last set's.
//!
//! ```text
//! held(path):                         what set k sees: DEST + what sets < k (and k) staged
//!     the path has a change                        -> that change
//!     the nearest changed ancestor is a directory that keeps DEST's -> DEST's object
//!     ... is a new directory                       -> nothing
//!     ... is removed or replaced by an object      -> nothing (gone with it)
//!     no changed ancestor                          -> DEST's object
//! put(path, object or directory):
//!     an object staged there before is superseded: freed at once (its file removed, or,
//!     for a version composed from deltas and not written yet, dropped: staged.rs)
//!     an object (not a directory): every change below the path is dropped (freed), as
//!         are attributes waiting below it
//!     a directory keeps DEST's own (and what it holds) only when the path was DEST's
//!         directory all along; otherwise DEST's is removed first
//! remove(path):
//!     free an object staged there, drop every change below, mark the path removed (so
//!     that removals below it in the same set are moot); journal a removal only when DEST
//!     holds something there (a path created and removed by the staged sets costs nothing)
//! journal(), once, after the last set:
//!     every change in index order (a parent before what it holds):
//!         object -> Place;  directory -> [Remove when DEST's is replaced] Dir;  removed -> Remove
//!     then attributes and kept mtimes of directories, deepest first, each path once
//! ```
//!
//! A chain of deltas on one path is composed in memory (compose.rs): each set's delta maps
//! onto the previous version's pieces of the root (DEST's copy, or an object a snapshot
//! staged) and held literal bytes, and only the version the last set leaves is written,
//! once, after the last set (staged.rs). A later snapshot or removal drops the held version
//! unwritten. The first delta over DEST's copy is still checked against its set's signature
//! (drift.rs, reading the composed version), and a delta that does not fit the version it
//! applies to is refused as when patching files.
//!
//! Memory grows with the number of changed paths, never with the tree, and held versions
//! stay within a budget (8 MiB of literal bytes, pieces and bookkeeping, staged.rs).
//! Limits: a delta that would pass the budget is patched into a file as set by set (writing
//! the held version first), and the deltas after it compose over that file; a snapshot
//! rewritten by a later snapshot is still written each time (its bytes arrive whole); a
//! directory created anew does not reuse DEST's, so a directory removed and recreated
//! within the catch-up costs what it costs set by set.

use crate::dest::dir::{Kind, Stat};
use crate::dest::fsops::Attrs;
use crate::dest::guard::KindView;
use crate::dest::journal::{JournalWriter, Op};
use crate::dest::tree::Tree;
use crate::index::PathIndex;
use anyhow::Result;
use std::collections::BTreeMap;

/// Where the staged objects are: freeing one deletes it (staged.rs).
pub trait ObjectStore {
    fn free(&mut self, n: u64) -> Result<()>;
}

/// What the staged sets leave at a changed path.
#[derive(Clone, Copy, Debug)]
pub enum Now {
    /// Staged object `n`: of this kind, this many bytes.
    Object { n: u64, kind: Kind, bytes: u64 },
    /// A directory; `keeps_dest`: DEST's directory there stays, with what it holds.
    Dir { keeps_dest: bool },
    /// Nothing; DEST's object there is removed.
    Removed,
}

struct Change {
    now: Now,
    /// What DEST held at the path (reachable, before any staged set).
    dest: Option<Kind>,
    /// The set (0 = the first staged) that made the change.
    set: u32,
}

/// What the merged view holds at a path.
#[derive(Clone, Copy, Debug)]
pub enum Held {
    /// A change the staged sets made.
    Staged(Now),
    /// What DEST holds (`None`: nothing), untouched by the staged sets.
    Unchanged(Option<Stat>),
    /// Nothing: set `set` removed an ancestor or replaced it by a non-directory.
    Gone { set: u32 },
}

impl Held {
    pub fn kind(&self) -> Option<Kind> {
        match self {
            Held::Staged(Now::Object { kind, .. }) => Some(*kind),
            Held::Staged(Now::Dir { .. }) => Some(Kind::Dir),
            Held::Staged(Now::Removed) | Held::Gone { .. } => None,
            Held::Unchanged(st) => st.map(|s| s.kind),
        }
    }
}

/// What merging the sets saved, against applying them one at a time.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MergeStats {
    /// The sets staged together.
    pub sets: u64,
    /// Places, directories and removals the sets staged that the single journal does not
    /// carry out (superseded or undone by a later set).
    pub writes_saved: u64,
    /// Bytes of staged objects superseded before the commit instead of being moved into
    /// DEST (files freed, or versions composed in memory and never written).
    pub bytes_saved: u64,
}

#[derive(Default)]
pub struct Overlay {
    changes: BTreeMap<PathIndex, Change>,
    /// Attributes of directories (and fixes), set once at the end, deepest first.
    late_attrs: BTreeMap<PathIndex, Attrs>,
    /// Directories of DEST whose contents change without a record of their own, with the
    /// mtime to give back to them afterwards.
    kept_mtimes: BTreeMap<PathIndex, i64>,
    set: u32,
    /// Place, Dir and Remove operations staged, one per change of any set.
    staged_ops: u64,
    bytes_saved: u64,
}

impl Overlay {
    /// Starts staging the next set over what the previous ones left.
    pub fn next_set(&mut self) {
        self.set += 1;
    }

    pub fn set(&self) -> u32 {
        self.set
    }

    /// What the merged view holds at `index` (see the module docs).
    pub fn held(&self, index: &PathIndex, dest: &Tree) -> Result<Held> {
        if let Some(c) = self.changes.get(index) {
            return Ok(Held::Staged(c.now));
        }
        if !self.changes.is_empty() {
            for depth in (0..index.len()).rev() {
                if let Some(c) = self.changes.get(&index.truncated(depth)) {
                    match c.now {
                        Now::Dir { keeps_dest: true } => break,
                        Now::Dir { keeps_dest: false } => return Ok(Held::Unchanged(None)),
                        Now::Object { .. } | Now::Removed => return Ok(Held::Gone { set: c.set }),
                    }
                }
            }
        }
        Ok(Held::Unchanged(dest.stat(index)?))
    }

    /// What DEST held at `index` before the staged sets (`None` also below a changed
    /// ancestor: the journal never reaches DEST's object there).
    fn dest_kind(&self, index: &PathIndex, dest: &Tree) -> Result<Option<Kind>> {
        Ok(match self.changes.get(index) {
            Some(c) => c.dest,
            None => match self.held(index, dest)? {
                Held::Unchanged(st) => st.map(|s| s.kind),
                _ => None,
            },
        })
    }

    /// The set being staged puts `now` (an object or a directory) at `index`.
    pub fn put(
        &mut self,
        index: &PathIndex,
        now: Now,
        dest: &Tree,
        objects: &mut impl ObjectStore,
    ) -> Result<()> {
        let dest_kind = self.dest_kind(index, dest)?;
        let now = match now {
            Now::Dir { .. } => Now::Dir {
                keeps_dest: match self.changes.get(index) {
                    Some(c) => matches!(c.now, Now::Dir { keeps_dest: true }),
                    None => dest_kind == Some(Kind::Dir),
                },
            },
            other => {
                self.drop_below(index, objects)?;
                other
            }
        };
        self.kept_mtimes.remove(index);
        self.late_attrs.remove(index);
        self.replace(index, now, dest_kind, objects)
    }

    /// The set being staged removes `index`.
    pub fn remove(
        &mut self,
        index: &PathIndex,
        dest: &Tree,
        objects: &mut impl ObjectStore,
    ) -> Result<()> {
        let dest_kind = self.dest_kind(index, dest)?;
        self.drop_below(index, objects)?;
        self.kept_mtimes.remove(index);
        self.late_attrs.remove(index);
        // Kept even when DEST holds nothing there: what lies below is gone too.
        self.replace(index, Now::Removed, dest_kind, objects)
    }

    /// A removal below a path the same set removed or replaced: nothing left to do, but set
    /// by set it would be journaled.
    pub fn count_moot_removal(&mut self) {
        self.staged_ops += 1;
    }

    /// Directory attributes (or a fix), set after everything inside.
    pub fn set_attrs(&mut self, index: PathIndex, attrs: Attrs) {
        self.late_attrs.insert(index, attrs);
    }

    /// Remembers the mtime of `index`'s parent when the staged sets change its contents but
    /// have no record of the parent itself (records come parent first, so the parent's own
    /// record, if any, has been seen). Only DEST's own directories keep an mtime.
    pub fn keep_parent_mtime(&mut self, index: &PathIndex, dest: &Tree) {
        let Some(parent) = index.parent() else {
            return;
        };
        if self.late_attrs.contains_key(&parent) || self.kept_mtimes.contains_key(&parent) {
            return;
        }
        if let Ok(Held::Unchanged(Some(st))) = self.held(&parent, dest) {
            if st.kind == Kind::Dir {
                self.kept_mtimes.insert(parent, st.mtime);
            }
        }
    }

    fn replace(
        &mut self,
        index: &PathIndex,
        now: Now,
        dest: Option<Kind>,
        objects: &mut impl ObjectStore,
    ) -> Result<()> {
        self.staged_ops += 1;
        let change = Change {
            now,
            dest,
            set: self.set,
        };
        let old = self.changes.insert(index.clone(), change);
        match old {
            Some(c) => self.free(c.now, objects),
            None => Ok(()),
        }
    }

    /// Drops every change, attribute and kept mtime strictly below `index`.
    fn drop_below(&mut self, index: &PathIndex, objects: &mut impl ObjectStore) -> Result<()> {
        let below = |map_key: &PathIndex| map_key.len() > index.len() && map_key.starts_with(index);
        let doomed: Vec<PathIndex> = self
            .changes
            .range(index.clone()..)
            .map(|(k, _)| k)
            .skip_while(|k| *k == index)
            .take_while(|k| below(k))
            .cloned()
            .collect();
        for k in doomed {
            if let Some(c) = self.changes.remove(&k) {
                self.free(c.now, objects)?;
            }
        }
        self.late_attrs.retain(|k, _| !below(k));
        self.kept_mtimes.retain(|k, _| !below(k));
        Ok(())
    }

    /// Frees a superseded staged object.
    fn free(&mut self, now: Now, objects: &mut impl ObjectStore) -> Result<()> {
        if let Now::Object { n, bytes, .. } = now {
            objects.free(n)?;
            self.bytes_saved += bytes;
        }
        Ok(())
    }

    /// Writes the single journal of every staged set; returns what merging saved.
    pub fn journal(self, journal: &mut JournalWriter) -> Result<MergeStats> {
        let mut emitted = 0;
        for (index, change) in &self.changes {
            let index = index.clone();
            let ops = match change.now {
                Now::Object { n, .. } => vec![Op::Place { index, staged: n }],
                Now::Dir { keeps_dest: false } if change.dest == Some(Kind::Dir) => vec![
                    Op::Remove {
                        index: index.clone(),
                    },
                    Op::Dir { index },
                ],
                Now::Dir { .. } => vec![Op::Dir { index }],
                Now::Removed if change.dest.is_none() => Vec::new(),
                Now::Removed => vec![Op::Remove { index }],
            };
            for op in &ops {
                journal.push(op)?;
            }
            emitted += ops.len() as u64;
        }
        // Deepest first: a directory's mtime is set after every change inside it. A
        // directory with attributes of its own needs no kept mtime.
        let mut late: BTreeMap<PathIndex, Op> = self
            .late_attrs
            .into_iter()
            .map(|(index, attrs)| (index.clone(), Op::Attrs { index, attrs }))
            .collect();
        for (index, mtime) in self.kept_mtimes {
            late.entry(index.clone())
                .or_insert(Op::Mtime { index, mtime });
        }
        for op in late.values().rev() {
            journal.push(op)?;
        }
        Ok(MergeStats {
            sets: u64::from(self.set) + 1,
            writes_saved: self.staged_ops.saturating_sub(emitted),
            bytes_saved: self.bytes_saved,
        })
    }
}

/// The merged view as the path guard sees it.
pub struct MergedView<'a> {
    pub overlay: &'a Overlay,
    pub dest: &'a Tree,
}

impl KindView for MergedView<'_> {
    fn kind_at(&self, index: &PathIndex) -> Result<Option<Kind>> {
        Ok(self.overlay.held(index, self.dest)?.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::records::{Record, RecordKind};
    use crate::dest::dir::Dir;
    use crate::dest::guard::PathGuard;
    use crate::dest::journal;
    use crate::dest::journal::object_name;
    use crate::dest::state::{MirrorState, StateDir};
    use crate::meta::{FileType, Metadata};
    use std::fs;

    struct Bed {
        _tmp: tempfile::TempDir,
        dest: Tree,
        objects: Dir,
        state: StateDir,
    }

    /// DEST holds `d/f`, `d/old`, `a/inner` and `keep`.
    fn bed() -> Bed {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("dest");
        for f in ["d/f", "d/old", "a/inner", "keep"] {
            fs::create_dir_all(d.join(f).parent().unwrap()).unwrap();
            fs::write(d.join(f), f).unwrap();
        }
        fs::create_dir(tmp.path().join("obj")).unwrap();
        Bed {
            dest: Tree::new(Dir::open_path(&d).unwrap()).unwrap(),
            objects: Dir::open_path(&tmp.path().join("obj")).unwrap(),
            state: StateDir::open(&tmp.path().join("state"), &d, false).unwrap(),
            _tmp: tmp,
        }
    }

    impl ObjectStore for &Dir {
        fn free(&mut self, n: u64) -> Result<()> {
            self.remove(&object_name(n))
        }
    }

    fn idx(s: &str) -> PathIndex {
        PathIndex::from_bytes(s.as_bytes())
    }

    impl Bed {
        /// Stages object `n` (`bytes` long) at `path`.
        fn object(&self, o: &mut Overlay, path: &str, n: u64, bytes: u64) {
            let name = object_name(n);
            fs::write(self.objects.show(&name), vec![b'x'; bytes as usize]).unwrap();
            let now = Now::Object {
                n,
                kind: Kind::Regular,
                bytes,
            };
            o.put(&idx(path), now, &self.dest, &mut &self.objects)
                .unwrap();
        }

        fn exists(&self, n: u64) -> bool {
            self.objects.stat(&object_name(n)).unwrap().is_some()
        }

        /// The journal the overlay becomes.
        fn journal(&self, o: Overlay) -> (Vec<Op>, MergeStats) {
            let target = MirrorState::new(String::new(), 0, 0, self.dest.path().into(), vec![]);
            let mut w = JournalWriter::create(&self.state, &target).unwrap();
            let stats = o.journal(&mut w).unwrap();
            w.commit(&self.state).unwrap();
            let ops = journal::pending(&self.state)
                .unwrap()
                .unwrap()
                .ops()
                .to_vec();
            (ops, stats)
        }
    }

    #[test]
    fn later_sets_supersede_earlier_objects_and_only_dest_paths_are_removed() {
        let b = bed();
        let mut o = Overlay::default();
        b.object(&mut o, "new", 1, 10);
        b.object(&mut o, "d/f", 2, 20);
        o.put(
            &idx("tmp"),
            Now::Dir { keeps_dest: true },
            &b.dest,
            &mut &b.objects,
        )
        .unwrap();
        b.object(&mut o, "tmp/t", 3, 30);
        o.next_set();
        b.object(&mut o, "new", 4, 40);
        assert!(!b.exists(1), "a superseded object is freed at once");
        o.remove(&idx("tmp"), &b.dest, &mut &b.objects).unwrap();
        assert!(!b.exists(3), "what lay below a removed path is freed");
        assert!(matches!(
            o.held(&idx("tmp/t"), &b.dest).unwrap(),
            Held::Gone { set: 1 }
        ));
        o.remove(&idx("d/f"), &b.dest, &mut &b.objects).unwrap();
        assert!(!b.exists(2));
        let (ops, stats) = b.journal(o);
        assert_eq!(
            ops,
            [
                Op::Remove { index: idx("d/f") },
                Op::Place {
                    index: idx("new"),
                    staged: 4
                },
            ],
            "tmp never reaches DEST"
        );
        assert_eq!(
            (stats.sets, stats.writes_saved, stats.bytes_saved),
            (2, 5, 60)
        );
    }

    #[test]
    fn a_directory_removed_then_made_again_does_not_keep_what_dest_held() {
        let b = bed();
        let mut o = Overlay::default();
        o.remove(&idx("d"), &b.dest, &mut &b.objects).unwrap();
        o.next_set();
        o.put(
            &idx("d"),
            Now::Dir { keeps_dest: true },
            &b.dest,
            &mut &b.objects,
        )
        .unwrap();
        assert!(matches!(
            o.held(&idx("d/old"), &b.dest).unwrap(),
            Held::Unchanged(None)
        ));
        let (ops, _) = b.journal(o);
        assert_eq!(
            ops,
            [Op::Remove { index: idx("d") }, Op::Dir { index: idx("d") }]
        );
    }

    #[test]
    fn the_guard_sees_what_earlier_sets_staged() {
        let b = bed();
        let mut o = Overlay::default();
        let link = Now::Object {
            n: 1,
            kind: Kind::Symlink,
            bytes: 0,
        };
        o.put(&idx("a"), link, &b.dest, &mut &b.objects).unwrap();
        o.next_set();
        let record = Record {
            index: idx("a/x"),
            kind: RecordKind::Snapshot,
            meta: Metadata {
                file_type: FileType::Regular,
                mode: 0o644,
                uid: 0,
                gid: 0,
                uname: Vec::new(),
                gname: Vec::new(),
                mtime: 0,
            },
            headless: false,
        };
        let view = MergedView {
            overlay: &o,
            dest: &b.dest,
        };
        let err = PathGuard::default()
            .check(&record, Some(&view))
            .unwrap_err();
        assert!(format!("{err:#}").contains("symlink"), "{err:#}");
        // DEST alone (a directory there) would have let it through.
        PathGuard::default().check(&record, Some(&b.dest)).unwrap();
    }
}
