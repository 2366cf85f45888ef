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
//! Paths are relative to DEST, DEST itself is `.`; the list is sorted and has no repeats.
//!
//! A first sync changes every path of the tree, so the list is not kept in memory: paths
//! are sorted through a scratch file in the temporary directory (`$TMPDIR`) once they
//! outgrow [`RUN_BYTES`] (`dest::sorted`, whose merges keep memory bounded however long the
//! list), and [`ChangedPaths::finish`] writes the sorted list without repeats to another
//! scratch file. Limits: a run that applies several sets lists the union of their changes,
//! so a path that one set changes and a later one changes back is listed although it ends
//! as it was. The scratch files take about twice the list's size on disk.

use super::dir::{Dir, Kind, Lookup};
use super::journal::{Journal, Op, TREE};
use super::sorted::{scratch_file, ExternalSort, Sorted};
use super::tree::{Parent, Tree};
use super::walk::DestWalker;
use crate::index::PathIndex;
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{self, BufWriter, Seek, Write};
use std::path::Path;

/// The most bytes of paths gathered in memory before they go to the scratch file.
pub const RUN_BYTES: usize = 1 << 20;

/// What the scratch files hold, for their error messages.
const WHAT: &str = "the list of changed paths";

/// The changed paths of a sync, gathered while its journals are carried out.
#[derive(Debug)]
pub struct ChangedPaths {
    paths: ExternalSort,
}

impl Default for ChangedPaths {
    fn default() -> Self {
        ChangedPaths::with_run_limit(RUN_BYTES)
    }
}

impl ChangedPaths {
    fn with_run_limit(run_limit: usize) -> Self {
        ChangedPaths {
            paths: ExternalSort::new(run_limit, WHAT),
        }
    }

    /// Adds what the committed `journal` is about to do to `dest` (missing before a first
    /// sync moves its staged tree in), with the staged objects in `staging`.
    pub fn add_journal(
        &mut self,
        journal: &Journal,
        dest: Option<&Tree>,
        staging: Option<&Dir>,
    ) -> Result<()> {
        for op in journal.ops() {
            match op {
                Op::Dir { index } | Op::Attrs { index, .. } => self.add(index)?,
                Op::Place { index, .. } | Op::Remove { index } => {
                    if let Some(dest) = dest {
                        self.add_dest_subtree(dest, index)?;
                    }
                    self.add(index)?;
                }
                Op::Mtime { .. } => {}
                Op::MoveTree => {
                    self.add(&PathIndex::root())?;
                    if let Some(Lookup::Found(tree)) = staging.map(|s| s.child(TREE)).transpose()? {
                        self.add_tree(&Tree::new(tree)?, &PathIndex::root())?;
                    }
                }
            }
        }
        Ok(())
    }

    fn add(&mut self, index: &PathIndex) -> Result<()> {
        self.paths.push(index.to_bytes())
    }

    /// Every path below `index` in DEST, when DEST holds a directory there.
    fn add_dest_subtree(&mut self, dest: &Tree, index: &PathIndex) -> Result<()> {
        // Nothing below a symlink or a file is DEST's: the journal will not touch it.
        let (Parent::Found(parent), Some(name)) = (dest.parent(index)?, index.components().last())
        else {
            return Ok(());
        };
        if parent.stat(name)?.is_some_and(|st| st.kind == Kind::Dir) {
            if let Lookup::Found(dir) = parent.child(name)? {
                self.add_tree(&Tree::new(dir)?, index)?;
            }
        }
        Ok(())
    }

    /// Every path inside `tree`, named as below `prefix`.
    fn add_tree(&mut self, tree: &Tree, prefix: &PathIndex) -> Result<()> {
        let mut walk = DestWalker::new(Some(tree))?;
        walk.advance(true)?; // the root itself is the caller's
        while let Some(found) = walk.peek() {
            let mut index = prefix.clone();
            for c in found.index.components() {
                index = index.join(c);
            }
            self.add(&index)?;
            walk.advance(true)?;
        }
        Ok(())
    }

    /// The sorted list without repeats: in memory when it fits one run, else merged from
    /// the spilled runs into a new scratch file.
    pub fn finish(self) -> Result<ChangedList> {
        let mut len = 0;
        let list = match self.paths.finish()? {
            Sorted::Memory(paths) => {
                let mut data = Vec::new();
                for p in paths {
                    data.extend_from_slice(&p);
                    data.push(0);
                    len += 1;
                }
                Listed::Memory(data)
            }
            merged => {
                let mut file = scratch_file(WHAT)?;
                let mut out = BufWriter::new(&mut file);
                let cannot = || format!("cannot write {WHAT}");
                for p in merged {
                    out.write_all(&p?).with_context(cannot)?;
                    out.write_all(&[0]).with_context(cannot)?;
                    len += 1;
                }
                out.flush().with_context(cannot)?;
                drop(out);
                Listed::Scratch(file)
            }
        };
        Ok(ChangedList { len, list })
    }
}

/// Where a finished list is.
#[derive(Debug)]
enum Listed {
    Memory(Vec<u8>),
    Scratch(File),
}

/// The sorted changed paths of a sync, ready to be written out.
#[derive(Debug)]
pub struct ChangedList {
    len: usize,
    list: Listed,
}

impl ChangedList {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes the list, each path followed by a NUL byte (like `find -print0`), replacing
    /// `path` atomically.
    pub fn write_nul_separated(&self, path: &Path) -> Result<()> {
        match &self.list {
            Listed::Memory(data) => write_replacing(path, data),
            Listed::Scratch(file) => write_replacing_with(path, |out| {
                let mut from = file;
                from.rewind()?;
                io::copy(&mut from, out).map(drop)
            }),
        }
    }
}

/// Writes `data` to a temporary file beside `path`, then renames it over `path`, so a reader
/// sees the old file or the new one, never a part.
pub fn write_replacing(path: &Path, data: &[u8]) -> Result<()> {
    write_replacing_with(path, |f| f.write_all(data))
}

/// [`write_replacing`] with the content written by `fill`.
fn write_replacing_with(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = File::create(&tmp)
        .and_then(|mut f| fill(&mut f))
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
    use crate::dest::journal::{pending, JournalWriter};
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
        let target = MirrorState::new("src".into(), 1, 2, dest.clone(), Vec::new());
        let mut w = JournalWriter::create(&state_dir, &target).unwrap();
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
        let journal = pending(&state_dir).unwrap().unwrap();
        let dest = Tree::new(Dir::open_path(&dest).unwrap()).unwrap();
        let mut changed = ChangedPaths::default();
        changed.add_journal(&journal, Some(&dest), None).unwrap();
        let list = d.path().join("list");
        changed
            .finish()
            .unwrap()
            .write_nul_separated(&list)
            .unwrap();
        assert_eq!(
            std::fs::read(&list).unwrap(),
            b"gone\0gone/sub\0gone/sub/f\0kept/a\0new\0was_dir\0was_dir/x\0"
        );
    }

    #[test]
    fn spilled_runs_merge_into_one_sorted_list_without_repeats() {
        let mut changed = ChangedPaths::with_run_limit(200);
        let mut expected = std::collections::BTreeSet::new();
        for i in 0..500u32 {
            // Repeats within a run and across runs, in no order.
            let p = format!("d{}/f{}", (i * 7919) % 13, (i * 31) % 97);
            changed.add(&index(&p)).unwrap();
            expected.insert(p.into_bytes());
        }
        let list = changed.finish().unwrap();
        assert_eq!(list.len(), expected.len());
        let d = tempfile::tempdir().unwrap();
        list.write_nul_separated(&d.path().join("list")).unwrap();
        let want: Vec<u8> = expected
            .into_iter()
            .flat_map(|p| p.into_iter().chain([0]))
            .collect();
        assert_eq!(std::fs::read(d.path().join("list")).unwrap(), want);
    }
}
