//! The commit journal: how a staged set becomes part of DEST all at once.
//!
//! While a set is staged, every change it makes to DEST is written as one line of a journal
//! file inside the staging folder. Committing renames that file to `journal` in the state
//! directory: from that instant the set counts as applied, and the operations are carried
//! out. Every operation is idempotent (a staged object that is no longer there was already
//! moved; removing a missing path does nothing; making a directory that exists keeps it), so
//! after a crash the next run simply carries out the whole journal again, then records the
//! new state and deletes the journal. Without a journal, leftover staging is thrown away:
//! DEST is then exactly as before the set.
//!
//! Format: a header with the resulting state, one operation per line with paths in manifest
//! quoting (raw bytes, `\xNN` for whitespace and quotes), and a final `commit` line.

use super::changes::ChangedPaths;
use super::dir::{Dir, Kind, Lookup};
use super::fsops::Attrs;
use super::state::{MirrorState, StateDir};
use super::tree::{Dest, Parent, Tree};
use crate::index::{quote, unquote, PathIndex};
use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

const MAGIC: &str = "dupmirror journal 1";
const JOURNAL: &[u8] = b"journal";
const TMP: &[u8] = b"journal.tmp";
/// In the staging folder: the staged objects of an update, the staged tree of a first sync.
pub const OBJECTS: &[u8] = b"obj";
pub const TREE: &[u8] = b"tree";

/// One change to DEST.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Put staged object `n` at the path, replacing whatever is there.
    Place { index: PathIndex, staged: u64 },
    /// Make the path a directory, keeping it if it already is one.
    Dir { index: PathIndex },
    /// Remove the path and everything below it.
    Remove { index: PathIndex },
    /// Set an object's attributes (for a directory: after everything inside it).
    Attrs { index: PathIndex, attrs: Attrs },
    /// Restore a directory's mtime after its contents changed (a directory the set has no
    /// record of keeps the mtime the master gave it).
    Mtime { index: PathIndex, mtime: i64 },
    /// Move every entry of the staged tree into DEST (a first sync into an empty DEST).
    MoveTree,
}

/// The name of staged object `n` in the staging folder's `obj`.
pub fn object_name(n: u64) -> Vec<u8> {
    n.to_string().into_bytes()
}

fn encode(op: &Op) -> Vec<u8> {
    let mut line = Vec::new();
    let path = |line: &mut Vec<u8>, index: &PathIndex| line.extend(quote(&index.to_bytes()));
    match op {
        Op::Place { index, staged } => {
            line.extend(format!("P {staged} ").as_bytes());
            path(&mut line, index);
        }
        Op::Dir { index } => {
            line.extend(b"D ");
            path(&mut line, index);
        }
        Op::Remove { index } => {
            line.extend(b"R ");
            path(&mut line, index);
        }
        Op::Attrs { index, attrs } => {
            let owner = match attrs.owner {
                Some((u, g)) => format!("{u} {g}"),
                None => "- -".into(),
            };
            let link = if attrs.symlink { "l" } else { "-" };
            line.extend(format!("A {:o} {owner} {} {link} ", attrs.mode, attrs.mtime).as_bytes());
            path(&mut line, index);
        }
        Op::Mtime { index, mtime } => {
            line.extend(format!("T {mtime} ").as_bytes());
            path(&mut line, index);
        }
        Op::MoveTree => line.extend(b"M"),
    }
    line.push(b'\n');
    line
}

fn decode(line: &[u8]) -> Result<Op> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let text = |i: usize| -> Result<&str> {
        fields
            .get(i)
            .and_then(|f| std::str::from_utf8(f).ok())
            .ok_or_else(|| anyhow!("field {i} missing"))
    };
    // Checked like a tar entry's name: a journal line must never lead out of DEST.
    let index = |i: usize| -> Result<PathIndex> {
        let raw = fields.get(i).ok_or_else(|| anyhow!("path missing"))?;
        let index = PathIndex::from_bytes(&unquote(raw).map_err(|e| anyhow!(e))?);
        index
            .check_safe()
            .map_err(|reason| anyhow!("unsafe path {index}: {reason}"))?;
        Ok(index)
    };
    let below_root = |index: PathIndex| -> Result<PathIndex> {
        if index.is_root() {
            bail!("an operation on DEST's root itself");
        }
        Ok(index)
    };
    if fields.len() > 7 {
        bail!("too many fields");
    }
    Ok(match fields[0] {
        b"P" => Op::Place {
            staged: text(1)?.parse()?,
            index: below_root(index(2)?)?,
        },
        b"D" => Op::Dir { index: index(1)? },
        b"R" => Op::Remove {
            index: below_root(index(1)?)?,
        },
        b"A" => {
            let owner = match (text(2)?, text(3)?) {
                ("-", "-") => None,
                (u, g) => Some((u.parse()?, g.parse()?)),
            };
            Op::Attrs {
                attrs: Attrs {
                    mode: u32::from_str_radix(text(1)?, 8)?,
                    owner,
                    mtime: text(4)?.parse()?,
                    symlink: text(5)? == "l",
                },
                index: index(6)?,
            }
        }
        b"T" => Op::Mtime {
            mtime: text(1)?.parse()?,
            index: index(2)?,
        },
        b"M" => Op::MoveTree,
        other => bail!("unknown operation {:?}", String::from_utf8_lossy(other)),
    })
}

/// Writes the journal of the set being staged, as `journal.tmp` in the state folder.
pub struct JournalWriter {
    out: BufWriter<File>,
    shown: PathBuf,
}

impl JournalWriter {
    pub fn create(state_dir: &StateDir, state: &MirrorState) -> Result<Self> {
        let shown = state_dir.dir().show(TMP);
        let file = state_dir.dir().create_scratch(TMP)?;
        let mut out = BufWriter::new(file);
        writeln!(out, "{MAGIC}")?;
        writeln!(out, "state {}", serde_json::to_string(state)?)?;
        out.write_all(b"staging ")?;
        out.write_all(&quote(state_dir.staging_path().as_os_str().as_bytes()))?;
        out.write_all(b"\n")?;
        Ok(JournalWriter { out, shown })
    }

    pub fn push(&mut self, op: &Op) -> Result<()> {
        self.out
            .write_all(&encode(op))
            .with_context(|| format!("cannot write {}", self.shown.display()))
    }

    /// The commit point: `journal.tmp` becomes `journal`, a rename inside the state folder.
    /// The staged data must already be durable (the caller syncs the file system first).
    pub fn commit(mut self, state_dir: &StateDir) -> Result<()> {
        self.out.write_all(b"commit\n")?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| anyhow!("cannot write {}: {}", self.shown.display(), e.error()))?;
        file.sync_all()
            .with_context(|| format!("cannot write {}", self.shown.display()))?;
        let dir = state_dir.dir();
        dir.rename(TMP, dir, JOURNAL)
            .with_context(|| format!("cannot commit {}", self.shown.display()))?;
        dir.sync().context(
            "the set's journal is committed but not carried out yet (the next sync completes it)",
        )
    }
}

/// A committed journal, read whole and checked before any of it is carried out.
pub struct Journal {
    /// The state DEST is in once the journal is carried out.
    pub state: MirrorState,
    staging: PathBuf,
    ops: Vec<Op>,
}

impl Journal {
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }
}

/// The committed journal in the state folder, if there is one. Every line is checked like
/// a tar entry name (no `..`, no NUL, no operation on DEST's root but attributes); a
/// journal that is not all well-formed is refused whole.
pub fn pending(state_dir: &StateDir) -> Result<Option<Journal>> {
    let shown = state_dir.dir().show(JOURNAL);
    let file = match state_dir.dir().open_file(JOURNAL)? {
        Ok(f) => f,
        Err(None) => return Ok(None),
        Err(Some(k)) => bail!(
            "{} is {}; refusing to use it",
            shown.display(),
            k.described()
        ),
    };
    read_journal(file).map(Some).with_context(|| {
        format!(
            "the interrupted commit in {} is damaged; remove it and run `dupmirror verify \
             --repair` (DEST may be part-way through a set)",
            shown.display()
        )
    })
}

fn read_journal(file: File) -> Result<Journal> {
    let mut lines = BufReader::new(file).split(b'\n');
    let mut next = || -> Result<Vec<u8>> {
        lines
            .next()
            .ok_or_else(|| anyhow!("the journal ends early"))?
            .map_err(Into::into)
    };
    if next()? != MAGIC.as_bytes() {
        bail!("not a dupmirror journal");
    }
    let state_line = next()?;
    let state: MirrorState = serde_json::from_slice(
        state_line
            .strip_prefix(b"state ")
            .ok_or_else(|| anyhow!("the journal has no state line"))?,
    )?;
    let staging_line = next()?;
    let staging = PathBuf::from(std::ffi::OsStr::from_bytes(
        &unquote(
            staging_line
                .strip_prefix(b"staging ")
                .ok_or_else(|| anyhow!("the journal has no staging line"))?,
        )
        .map_err(|e| anyhow!(e))?,
    ));
    let mut ops = Vec::new();
    loop {
        let line = next()?;
        if line == b"commit" {
            break;
        }
        ops.push(
            decode(&line).with_context(|| {
                format!("bad journal line {:?}", String::from_utf8_lossy(&line))
            })?,
        );
    }
    Ok(Journal {
        state,
        staging,
        ops,
    })
}

/// What finishing an interrupted commit did.
#[derive(Debug)]
pub enum Recovery {
    /// No journal (leftover staging of a set that never reached its commit point is gone).
    Nothing,
    /// The journal was carried out: DEST is at `state`. `replaced` lists what stood where
    /// the set needs a directory (changed behind dupmirror's back after the commit point)
    /// and was replaced by one.
    Completed {
        state: MirrorState,
        replaced: Vec<PathIndex>,
    },
    /// The journal was made for a DEST folder that is gone (removed, or replaced by another
    /// folder at the same path): dropped without touching anything.
    Discarded { state: MirrorState },
}

/// Carries out a committed journal and records its state; then removes journal and staging.
/// Without a journal, removes leftover staging.
///
/// ```text
/// recover(state folder, DEST, changes):
///     no journal                            -> remove staging; Nothing
///     journal for another DEST path         -> refuse (the caller checked already)
///     journal names another staging folder  -> refuse (damaged or planted)
///     DEST is not the folder the journal was made for (identity), and is not about to
///         be the staged tree it moves in    -> remove journal and staging; Discarded
///     otherwise: check DEST's root, list what the journal changes (when asked), carry
///         out every operation (idempotent), sync DEST's file system (durable), save the
///         state, remove journal and staging; Completed
/// ```
///
/// An ancestor of a path to place that is no longer a directory when the journal is
/// carried out (a symlink or file put there after the commit point) is removed, never
/// followed, and replaced by a directory: the committed set says a directory is there, and
/// refusing would leave the journal stuck and DEST half-applied for good. Such paths are
/// reported; what the replaced directory held is restored by `verify --repair`.
pub fn recover(
    state_dir: &StateDir,
    dest: &mut Dest,
    durable: bool,
    changes: Option<&mut ChangedPaths>,
) -> Result<Recovery> {
    state_dir.remove_repair_scratch()?;
    let Some(journal) = pending(state_dir)? else {
        state_dir.remove_staging()?;
        return Ok(Recovery::Nothing);
    };
    state_dir.check_belongs_to(Some(&journal.state))?;
    if journal.staging != state_dir.staging_path() {
        bail!(
            "the interrupted commit in {} names staging folder {}, not {}; refusing to carry \
             it out",
            state_dir.root().display(),
            journal.staging.display(),
            state_dir.staging_path().display()
        );
    }
    dest.recheck()?;
    let staging = state_dir.staging()?;
    if !journal_fits(&journal, dest, staging.as_ref())? {
        discard(state_dir)?;
        return Ok(Recovery::Discarded {
            state: journal.state,
        });
    }
    if let Some(changes) = changes {
        changes.add_journal(&journal, dest.tree(), staging.as_ref())?;
    }
    let replaced = replay(&journal, staging.as_ref(), dest).with_context(|| {
        format!(
            "cannot complete the interrupted commit in {}",
            state_dir.dir().show(JOURNAL).display()
        )
    })?;
    if durable {
        dest.require()?.root().sync_filesystem()?;
    }
    let mut state = journal.state;
    state.dest_id = dest.id();
    state_dir.save(&state)?;
    discard(state_dir)?;
    Ok(Recovery::Completed { state, replaced })
}

/// Whether DEST is the folder the journal was made for: the same identity, or (a first
/// sync whose staged tree is not moved in yet) missing while the staged tree has it.
fn journal_fits(journal: &Journal, dest: &Dest, staging: Option<&Dir>) -> Result<bool> {
    let Some(expected) = journal.state.dest_id else {
        return Ok(true); // written before identities were recorded
    };
    if let Some(now) = dest.id() {
        return Ok(now == expected);
    }
    let tree_id = staging
        .map(|s| s.stat(TREE))
        .transpose()?
        .flatten()
        .map(|st| st.id);
    Ok(tree_id == Some(expected) && journal.ops.contains(&Op::MoveTree))
}

/// Removes the journal and the staging it points to.
fn discard(state_dir: &StateDir) -> Result<()> {
    state_dir.dir().remove(JOURNAL)?;
    state_dir.dir().sync()?;
    state_dir.remove_staging()
}

fn replay(journal: &Journal, staging: Option<&Dir>, dest: &mut Dest) -> Result<Vec<PathIndex>> {
    let objects = match staging {
        Some(s) => match s.child(OBJECTS)? {
            Lookup::Found(d) => Some(d),
            _ => None,
        },
        None => None,
    };
    let mut replaced = Vec::new();
    for op in &journal.ops {
        if *op == Op::MoveTree {
            move_tree(staging, dest)?;
        } else {
            execute(op, objects.as_ref(), dest.require()?, &mut replaced)?;
        }
    }
    Ok(replaced)
}

/// Carries out one operation; safe to repeat. `objects` is the staging folder's `obj`.
pub fn execute(
    op: &Op,
    objects: Option<&Dir>,
    dest: &Tree,
    replaced: &mut Vec<PathIndex>,
) -> Result<()> {
    let leaf = |index: &PathIndex| index.components().last().cloned();
    match op {
        Op::Place { index, staged } => {
            let name = object_name(*staged);
            let Some(objects) = objects.filter(|o| matches!(o.stat(&name), Ok(Some(_)))) else {
                return Ok(()); // moved by an earlier run of this journal
            };
            let Some(leaf) = leaf(index) else {
                bail!("cannot place an object at DEST's root");
            };
            let parent = dest.parent_or_create(index, 0o755, Some(replaced))?;
            parent.remove(&leaf)?;
            objects.rename(&name, &parent, &leaf)
        }
        Op::Dir { index } => {
            let Some(leaf) = leaf(index) else {
                return Ok(()); // DEST itself: checked to be a directory
            };
            let parent = dest.parent_or_create(index, 0o755, Some(replaced))?;
            match parent.stat(&leaf)? {
                Some(st) if st.kind == Kind::Dir => Ok(()),
                _ => {
                    parent.remove(&leaf)?;
                    // Private until its attributes are set, after its contents.
                    parent.mkdir(&leaf, 0o700)
                }
            }
        }
        Op::Remove { index } => {
            let Some(leaf) = leaf(index) else {
                bail!("cannot remove DEST's root");
            };
            // Below a symlink or a file there is nothing of DEST's to remove.
            match dest.parent(index)? {
                Parent::Found(d) => d.remove(&leaf),
                Parent::Missing | Parent::Blocked { .. } => Ok(()),
            }
        }
        Op::Attrs { index, attrs } => {
            let Some(leaf) = leaf(index) else {
                return attrs.apply_to_dir(dest.root());
            };
            // An earlier operation may have replaced an ancestor by a symlink or a file:
            // then the object is gone and there is nothing to set.
            let Parent::Found(d) = dest.parent(index)? else {
                return Ok(());
            };
            match d.stat(&leaf)? {
                Some(st) if (st.kind == Kind::Symlink) == attrs.symlink => attrs.apply(&d, &leaf),
                _ => Ok(()),
            }
        }
        Op::Mtime { index, mtime } => {
            let Some(leaf) = leaf(index) else {
                return dest.root().set_own_mtime(*mtime);
            };
            let Parent::Found(d) = dest.parent(index)? else {
                return Ok(());
            };
            match d.stat(&leaf)? {
                Some(st) if st.kind == Kind::Dir => d.set_mtime(&leaf, *mtime),
                _ => Ok(()),
            }
        }
        Op::MoveTree => bail!("moving a staged tree is not an operation on a tree"),
    }
}

/// Moves the staged tree in as DEST: one rename when DEST does not exist, else its
/// entries one by one into DEST (empty, or filled in part by an interrupted run).
fn move_tree(staging: Option<&Dir>, dest: &mut Dest) -> Result<()> {
    let Some(staging) = staging else {
        return Ok(()); // moved, and staging removed, by an earlier run
    };
    let tree = match staging.child(TREE)? {
        Lookup::Found(t) => t,
        Lookup::Missing => return Ok(()),
        Lookup::Blocked(b) => bail!(
            "staged tree {} is {}",
            staging.show(TREE).display(),
            b.kind.described()
        ),
    };
    if dest.tree().is_none() {
        if dest.adopt(staging, TREE)? {
            return Ok(());
        }
        bail!(
            "DEST {} appeared while this sync was staging (another sync?)",
            dest.path().display()
        );
    }
    let root = dest.require()?.root();
    tree.for_each_name(|name| {
        root.remove(name)?;
        tree.rename(name, root, name)
    })?;
    staging.remove(TREE)
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::dir::Dir;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn tree(path: &std::path::Path) -> Tree {
        Tree::new(Dir::open_path(path).unwrap()).unwrap()
    }

    /// Regression (oracle tests edge_types and subtree_deleted_and_recreated, and the crash
    /// harness's dir-to-symlink step): a directory
    /// that became a symlink left `T`/`A` lines for its old subdirectories, and replaying
    /// them refused the path below the new symlink, so the committed journal failed on
    /// every run and DEST stayed half-updated. They must be skipped, and never followed.
    #[test]
    fn fixes_below_a_new_symlink_are_skipped_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let (dest, outside) = (d.path().join("dest"), d.path().join("outside"));
        fs::create_dir_all(outside.join("sub")).unwrap();
        fs::create_dir(&dest).unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("was_dir")).unwrap();
        Dir::open_path(&outside)
            .unwrap()
            .set_mtime(b"sub", 1000)
            .unwrap();
        let index = PathIndex::from_bytes(b"was_dir/sub");
        let ops = [
            Op::Mtime {
                index: index.clone(),
                mtime: 5,
            },
            Op::Attrs {
                index,
                attrs: Attrs {
                    mode: 0o700,
                    owner: None,
                    mtime: 5,
                    symlink: false,
                },
            },
            Op::Remove {
                index: PathIndex::from_bytes(b"was_dir/sub"),
            },
        ];
        let dest = tree(&dest);
        for op in ops {
            execute(&op, None, &dest, &mut Vec::new()).unwrap();
        }
        let m = fs::metadata(outside.join("sub")).unwrap();
        assert_eq!(m.mtime(), 1000, "the mtime was set through the symlink");
        assert_ne!(
            m.permissions().mode() & 0o7777,
            0o700,
            "chmod through the symlink"
        );
    }

    /// Issue 10, finding 12: an ancestor of a committed `Place` that became a symlink (to
    /// outside DEST) after the commit point is replaced by a directory, never followed, and
    /// reported; the journal no longer stays stuck.
    #[test]
    fn a_place_below_an_ancestor_made_unsafe_rolls_forward() {
        let d = tempfile::tempdir().unwrap();
        let (dest, outside, objects) = (
            d.path().join("dest"),
            d.path().join("outside"),
            d.path().join("obj"),
        );
        fs::create_dir_all(&outside).unwrap();
        fs::create_dir(&dest).unwrap();
        fs::create_dir(&objects).unwrap();
        fs::write(objects.join("1"), b"new").unwrap();
        std::os::unix::fs::symlink(&outside, dest.join("a")).unwrap();
        let op = Op::Place {
            index: PathIndex::from_bytes(b"a/f"),
            staged: 1,
        };
        let mut replaced = Vec::new();
        let objects = Dir::open_path(&objects).unwrap();
        execute(&op, Some(&objects), &tree(&dest), &mut replaced).unwrap();
        assert_eq!(replaced, [PathIndex::from_bytes(b"a")]);
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "wrote outside");
        assert!(fs::symlink_metadata(dest.join("a")).unwrap().is_dir());
        assert_eq!(fs::read(dest.join("a/f")).unwrap(), b"new");
    }

    /// Issue 10, finding 7: a planted journal line is refused before anything runs.
    #[test]
    fn unsafe_journal_lines_are_refused() {
        for line in [
            &b"R ../x"[..],
            b"R a/../../x",
            b"P 1 ../x",
            b"P 1 .",
            b"R .",
            b"D \"a\\x00b\"",
            b"P x a",
            b"P -1 a",
            b"A 644 - - 0 - a extra",
            b"Q a",
        ] {
            assert!(
                decode(line).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn ops_round_trip() {
        let ops = [
            Op::Place {
                index: PathIndex::from_bytes(b"a b/\xff\"x"),
                staged: 7,
            },
            Op::Dir {
                index: PathIndex::root(),
            },
            Op::Remove {
                index: PathIndex::from_bytes(b"gone"),
            },
            Op::Attrs {
                index: PathIndex::from_bytes(b"d"),
                attrs: Attrs {
                    mode: 0o2755,
                    owner: Some((1000, 100)),
                    mtime: 1700000000,
                    symlink: false,
                },
            },
            Op::Attrs {
                index: PathIndex::from_bytes(b"e"),
                attrs: Attrs {
                    mode: 0o777,
                    owner: None,
                    mtime: 0,
                    symlink: true,
                },
            },
            Op::Mtime {
                index: PathIndex::from_bytes(b"sub dir"),
                mtime: 1234,
            },
            Op::MoveTree,
        ];
        for op in ops {
            let line = encode(&op);
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(decode(&line[..line.len() - 1]).unwrap(), op);
        }
    }
}
