//! The atomic layout (`sync --atomic`): DEST is a symbolic link to one of two complete
//! trees. A sync brings the other tree (the standby) to the new backup while readers keep
//! using the live one, then replaces the link in one `rename(2)`: a reader that resolves
//! DEST sees one backup, whole, before or after the switch. This module knows the layout
//! and changes it; `commands::atomic` decides when, and runs the sync engine on the standby.
//!
//! ```text
//! DEST                        symlink -> .DEST.dupmirror-trees/a   (or .../b), relative
//! .DEST.dupmirror-trees/      beside DEST (so on its file system), the user's, 0755:
//!     a/  b/                  the two trees, each a plain dupmirror DEST of its own
//! <state>/tree-a/ tree-b/     each tree's own state folder (state.json, journal, staging)
//! <state>/atomic.json         when the standby left service, whether it needs a repair
//! <state>/atomic-journal      a layout change under way (present only during one)
//! ```
//!
//! The trees are not in the state folder because that one is private (0700): a reader
//! running as another user (a web server) must be able to follow the link.
//!
//! Every layout change writes the journal first and removes it last; the lock of the state
//! folder is held throughout, and `recover` runs before anything else:
//!
//! ```text
//! switch(to, from):  journal {switch, to, from}
//!                    symlink .DEST.dupmirror-link -> trees/to; rename it over DEST; fsync
//!                    atomic.json: standby_since_ms = now (none when there was no live tree)
//!     recover: DEST not yet -> to: redo the link (tree `to` was complete before the
//!              journal was written), then record the time as now (later, never earlier)
//! adopt (a plain DEST becomes tree a, nothing downloaded):  journal {adopt}
//!                    symlink at trees/a whose text is DEST's link to trees/a
//!                    renameat2(DEST, trees/a, RENAME_EXCHANGE): DEST is the link, the tree
//!                    is trees/a, in one step; state.json -> tree-a/state.json (DEST renamed)
//!     recover: DEST still a folder: roll back (drop the symlink at trees/a); else forward
//! release(live) (the live tree becomes a plain DEST again):  journal {release, live}
//!                    renameat2(DEST, trees/live, RENAME_EXCHANGE): DEST is the tree
//!                    tree-live/state.json -> state.json; remove the standby and the rest
//!     recover: DEST still our link: roll back; else forward
//! ```
//!
//! Limits: without `RENAME_EXCHANGE` (some network and FUSE file systems) adopt and
//! release move the tree first and set the link (or remove it) after, and DEST is missing
//! for that instant (recovery knows that state too). The link is read and compared byte
//! for byte with the two targets dupmirror writes; anything else at DEST is refused, never
//! followed. The trees folder is checked (the user's, not writable by others, on DEST's
//! file system) through its handle, but the sync engine reopens each tree by path: someone
//! who may write DEST's parent folder can race that, as they can race DEST itself in the
//! in-place mode.

use super::dir::{Dir, Kind, Lookup};
use super::state::{DestPaths, StateDir};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

const RECORD: &[u8] = b"atomic.json";
const JOURNAL: &[u8] = b"atomic-journal";

/// One of the two trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// What the layout remembers between runs (`atomic.json`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Record {
    /// When the standby stopped being DEST's target (Unix milliseconds, this host's
    /// clock); `None`: it never was.
    pub standby_since_ms: Option<i64>,
    /// The standby was switched away from because it differed from its backup (`verify
    /// --repair`): the next sync repairs it before it goes live again.
    #[serde(default)]
    pub standby_damaged: bool,
}

/// A layout change under way (`atomic-journal`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "lowercase")]
enum Change {
    Switch {
        to: Slot,
        from: Option<Slot>,
        from_damaged: bool,
    },
    Adopt,
    Release {
        live: Slot,
    },
}

/// Where the pieces of DEST's atomic layout are: names only, nothing opened.
#[derive(Clone, Debug)]
pub struct Layout {
    paths: DestPaths,
}

impl Layout {
    pub fn new(paths: &DestPaths) -> Layout {
        Layout {
            paths: paths.clone(),
        }
    }

    pub fn dest(&self) -> &std::path::Path {
        &self.paths.dest
    }

    fn dest_name(&self) -> &[u8] {
        // `DestPaths::resolve` refuses a DEST without a name.
        self.paths.dest.file_name().unwrap_or_default().as_bytes()
    }

    fn sibling(&self, suffix: &str) -> Vec<u8> {
        let mut n = b".".to_vec();
        n.extend_from_slice(self.dest_name());
        n.extend_from_slice(suffix.as_bytes());
        n
    }

    /// `.DEST.dupmirror-trees`, beside DEST.
    fn trees_name(&self) -> Vec<u8> {
        self.sibling(".dupmirror-trees")
    }

    fn parent(&self) -> PathBuf {
        self.paths
            .dest
            .parent()
            .unwrap_or(std::path::Path::new("/"))
            .to_path_buf()
    }

    /// One tree and its state folder, as the sync engine takes a DEST.
    pub fn tree(&self, slot: Slot) -> DestPaths {
        let trees = self
            .parent()
            .join(std::ffi::OsStr::from_bytes(&self.trees_name()));
        DestPaths {
            dest: trees.join(slot.name()),
            state_root: self.paths.state_root.join(format!("tree-{}", slot.name())),
        }
    }

    /// The text of DEST's link to `slot` (relative to DEST's folder).
    fn link_text(&self, slot: Slot) -> Vec<u8> {
        let mut t = self.trees_name();
        t.push(b'/');
        t.extend_from_slice(slot.name().as_bytes());
        t
    }

    fn slot_of(&self, text: &[u8]) -> Option<Slot> {
        [Slot::A, Slot::B]
            .into_iter()
            .find(|s| self.link_text(*s) == text)
    }

    /// Whether a layout change waits to be finished or rolled back.
    pub fn has_journal(&self) -> bool {
        self.paths
            .state_root
            .join(std::ffi::OsStr::from_bytes(JOURNAL))
            .symlink_metadata()
            .is_ok()
    }

    /// The live tree when DEST is a link to one of ours; `None` when DEST is not a symlink
    /// (a plain DEST, or none). A look without the lock, for choosing what to run.
    pub fn detect(&self) -> Result<Option<Slot>> {
        let dest = &self.paths.dest;
        match std::fs::symlink_metadata(dest) {
            Ok(m) if m.file_type().is_symlink() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", dest.display())),
        }
        let text = std::fs::read_link(dest)
            .with_context(|| format!("cannot read symlink {}", dest.display()))?;
        match self.slot_of(text.as_os_str().as_bytes()) {
            Some(slot) => Ok(Some(slot)),
            None if self.recorded() => Err(self.foreign_link(text.as_os_str().as_bytes())),
            // Not ours and never atomic: the in-place mode refuses a symlinked DEST itself.
            None => Ok(None),
        }
    }

    /// Whether DEST was put in the atomic layout (it has a record).
    fn recorded(&self) -> bool {
        self.paths
            .state_root
            .join(std::ffi::OsStr::from_bytes(RECORD))
            .exists()
    }

    fn foreign_link(&self, text: &[u8]) -> anyhow::Error {
        anyhow::anyhow!(
            "DEST {} is a symlink to {}, not to one of dupmirror's trees ({} or {}); refusing \
             to follow it (someone replaced it: point it back, or remove it and sync again)",
            self.paths.dest.display(),
            String::from_utf8_lossy(text),
            String::from_utf8_lossy(&self.link_text(Slot::A)),
            String::from_utf8_lossy(&self.link_text(Slot::B)),
        )
    }

    /// What the layout looks like now, for reports: a look without the lock.
    pub fn view(&self, live: Slot) -> Result<LayoutView> {
        let standby = self.tree(live.other());
        let holds = standby
            .held(standby.peek()?)
            .map(|s| crate::repo::time::format_iso(s.end_time));
        let record: Record = match std::fs::read(
            self.paths
                .state_root
                .join(std::ffi::OsStr::from_bytes(RECORD)),
        ) {
            Ok(data) => serde_json::from_slice(&data).unwrap_or_default(),
            Err(_) => Record::default(),
        };
        Ok(LayoutView {
            live,
            standby_holds: holds,
            standby_idle_seconds: record
                .standby_since_ms
                .map(|t| (chrono::Utc::now().timestamp_millis() - t) / 1000),
        })
    }
}

/// The atomic layout as reports show it.
#[derive(Clone, Debug, Serialize)]
pub struct LayoutView {
    /// The tree DEST resolves to.
    pub live: Slot,
    /// The backup the standby tree holds (None: none yet).
    pub standby_holds: Option<String>,
    /// How long the standby has been out of service (None: it never served).
    pub standby_idle_seconds: Option<i64>,
}

/// DEST's atomic layout, its state folder locked: the only way to change the layout.
pub struct AtomicDest {
    layout: Layout,
    state: StateDir,
    /// DEST's folder (the administrator's).
    parent: Dir,
    /// `.DEST.dupmirror-trees`.
    trees: Dir,
}

impl AtomicDest {
    /// Locks DEST's state folder and opens (making it) the trees folder.
    pub fn open(paths: &DestPaths, wait: bool) -> Result<AtomicDest> {
        let state = StateDir::open(&paths.state_root, &paths.dest, wait)?;
        AtomicDest::with_state(state, paths)
    }

    /// The same with a state folder already locked (converting a plain DEST).
    pub fn with_state(state: StateDir, paths: &DestPaths) -> Result<AtomicDest> {
        let layout = Layout::new(paths);
        let parent = Dir::open_existing(&layout.parent(), "the folder that holds DEST")?;
        let trees = open_trees(&parent, &layout.trees_name())?;
        Ok(AtomicDest {
            layout,
            state,
            parent,
            trees,
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The live tree (`None`: DEST is missing or a folder, before the first switch).
    pub fn live(&self) -> Result<Option<Slot>> {
        let name = self.layout.dest_name();
        match self.parent.stat(name)?.map(|s| s.kind) {
            None | Some(Kind::Dir) => Ok(None),
            Some(Kind::Symlink) => {
                let text = self.parent.read_link(name)?;
                match self.layout.slot_of(&text) {
                    Some(s) => Ok(Some(s)),
                    None => Err(self.layout.foreign_link(&text)),
                }
            }
            Some(k) => bail!(
                "DEST {} is {}, not a folder or dupmirror's link; refusing to touch it",
                self.layout.dest().display(),
                k.described()
            ),
        }
    }

    pub fn record(&self) -> Result<Record> {
        match self.state.read(RECORD)? {
            None => Ok(Record::default()),
            Some(data) => serde_json::from_slice(&data).with_context(|| {
                format!(
                    "{} is damaged; remove it (the standby then counts as out of service long \
                     enough)",
                    self.state.root().join("atomic.json").display()
                )
            }),
        }
    }

    /// Checks, just before the engine opens a tree by path, that the trees folder's path
    /// still leads to the folder this handle holds.
    pub fn recheck(&self) -> Result<()> {
        let path = self.layout.tree(Slot::A).dest;
        let trees = path.parent().unwrap_or(&path);
        let now = Dir::open_existing(trees, "the trees folder")?
            .stat_self()?
            .id;
        if now != self.trees.stat_self()?.id {
            bail!(
                "{} was replaced while dupmirror was working on it; refusing to go on",
                trees.display()
            );
        }
        Ok(())
    }

    fn begin(&self, change: &Change) -> Result<()> {
        self.state.save_json(JOURNAL, change)
    }

    fn end(&self) -> Result<()> {
        self.state.dir().remove(JOURNAL)?;
        self.state.dir().sync()
    }

    /// Points DEST at tree `to` (complete, at its backup) in one rename; `from_damaged`:
    /// the tree that stops being live differs from its backup.
    pub fn switch(&self, to: Slot, from_damaged: bool) -> Result<()> {
        let from = self.live()?;
        self.begin(&Change::Switch {
            to,
            from,
            from_damaged,
        })?;
        self.link_dest(to)?;
        self.finish_switch(from, from_damaged)
    }

    /// Makes DEST a link to `to`: a new link beside it, renamed over it (an empty folder
    /// there, before the first switch, is removed first).
    fn link_dest(&self, to: Slot) -> Result<()> {
        let name = self.layout.dest_name();
        let tmp = self.layout.sibling(".dupmirror-link");
        self.parent.remove(&tmp)?;
        self.parent.symlink(&tmp, &self.layout.link_text(to))?;
        if self.parent.stat(name)?.map(|s| s.kind) == Some(Kind::Dir)
            && !self.parent.remove_empty_dir(name)?
        {
            self.parent.remove(&tmp)?;
            bail!(
                "DEST {} is a folder that is not empty; refusing to replace it by the link",
                self.layout.dest().display()
            );
        }
        self.parent.rename(&tmp, &self.parent, name)?;
        self.parent.sync()
    }

    fn finish_switch(&self, from: Option<Slot>, from_damaged: bool) -> Result<()> {
        let record = Record {
            standby_since_ms: from.map(|_| chrono::Utc::now().timestamp_millis()),
            standby_damaged: from.is_some() && from_damaged,
        };
        self.state.save_json(RECORD, &record)?;
        self.end()
    }

    /// Makes the plain DEST (synced, its interrupted commit finished) tree a, and DEST a
    /// link to it, without copying anything.
    pub fn adopt(&self) -> Result<()> {
        self.begin(&Change::Adopt)?;
        let a = Slot::A.name().as_bytes();
        self.trees.remove(a)?; // a leftover of a run rolled back
        self.trees.symlink(a, &self.layout.link_text(Slot::A))?;
        let name = self.layout.dest_name();
        if !self.parent.exchange(name, &self.trees, a)? {
            self.trees.remove(a)?;
            self.parent.rename(name, &self.trees, a)?;
            self.link_dest(Slot::A)?;
        }
        self.parent.sync()?;
        self.trees.sync()?;
        self.finish_adopt()
    }

    fn finish_adopt(&self) -> Result<()> {
        if let Some(mut state) = self.state.load()? {
            let tree = self.layout.tree(Slot::A);
            state.dest = tree.dest.clone();
            StateDir::open(&tree.state_root, &tree.dest, false)?.save(&state)?;
            self.state.dir().remove(b"state.json")?;
        }
        self.state.save_json(RECORD, &Record::default())?;
        self.end()
    }

    /// Makes the live tree a plain DEST again and removes the rest of the layout.
    pub fn release(&self, live: Slot) -> Result<()> {
        self.begin(&Change::Release { live })?;
        let name = self.layout.dest_name();
        let tree = live.name().as_bytes();
        if !self.parent.exchange(name, &self.trees, tree)? {
            self.parent.remove(name)?;
            self.trees.rename(tree, &self.parent, name)?;
        }
        self.parent.sync()?;
        self.finish_release(live)
    }

    fn finish_release(&self, live: Slot) -> Result<()> {
        let tree = self.layout.tree(live);
        if tree.state_root.is_dir() {
            let tree_state = StateDir::open(&tree.state_root, &tree.dest, false)?;
            if let Some(mut state) = tree_state.load()? {
                state.dest = self.layout.dest().to_path_buf();
                self.state.save(&state)?;
            }
        }
        self.parent.remove(&self.layout.trees_name())?;
        for slot in [Slot::A, Slot::B] {
            self.state
                .dir()
                .remove(format!("tree-{}", slot.name()).as_bytes())?;
        }
        self.state.dir().remove(RECORD)?;
        self.parent.sync()?;
        self.end()
    }

    /// Finishes or rolls back a layout change a killed run left; what it did, for the
    /// report.
    pub fn recover(&self) -> Result<Option<String>> {
        let Some(data) = self.state.read(JOURNAL)? else {
            return Ok(None);
        };
        let change: Change = serde_json::from_slice(&data).with_context(|| {
            format!(
                "{} is damaged; check which tree DEST points to, then remove it",
                self.state.root().join("atomic-journal").display()
            )
        })?;
        let name = self.layout.dest_name();
        let dest_kind = self.parent.stat(name)?.map(|s| s.kind);
        Ok(Some(match change {
            Change::Switch {
                to,
                from,
                from_damaged,
            } => {
                if self.live()? != Some(to) {
                    self.link_dest(to)?;
                }
                self.finish_switch(from, from_damaged)?;
                format!("finished switching DEST to tree {}", to.name())
            }
            Change::Adopt if dest_kind == Some(Kind::Dir) => {
                if self.trees.stat(b"a")?.map(|s| s.kind) == Some(Kind::Symlink) {
                    self.trees.remove(b"a")?;
                }
                self.end()?;
                "rolled back a conversion to the atomic layout (DEST is still a folder)".into()
            }
            Change::Adopt => {
                if dest_kind.is_none() {
                    self.link_dest(Slot::A)?;
                }
                self.finish_adopt()?;
                "finished converting DEST to the atomic layout".into()
            }
            Change::Release { .. } if dest_kind == Some(Kind::Symlink) => {
                self.end()?;
                "rolled back a conversion to a plain DEST (DEST is still the link)".into()
            }
            Change::Release { live } => {
                if dest_kind.is_none() {
                    self.trees
                        .rename(live.name().as_bytes(), &self.parent, name)?;
                }
                self.finish_release(live)?;
                "finished converting DEST back to a plain folder".into()
            }
        }))
    }
}

/// Opens (making it 0755) the trees folder: it must be a real folder of the user's, not
/// writable by others, on DEST's file system.
fn open_trees(parent: &Dir, name: &[u8]) -> Result<Dir> {
    let path = parent.show(name);
    let dir = match parent.child_or_create(name, 0o755)? {
        Lookup::Found(d) => d,
        Lookup::Blocked(b) => bail!(
            "{} is {}; refusing to use it as dupmirror's trees folder",
            path.display(),
            b.kind.described()
        ),
        Lookup::Missing => bail!("{} vanished while being created", path.display()),
    };
    let st = dir.stat_self()?;
    let euid = nix::unistd::geteuid().as_raw();
    if st.uid != euid || st.mode & 0o022 != 0 {
        bail!(
            "{} belongs to uid {} with mode {:04o}; it must be the user's (uid {euid}) and \
             not writable by others: refusing to use it",
            path.display(),
            st.uid,
            st.mode
        );
    }
    if st.id.dev != parent.stat_self()?.id.dev {
        bail!(
            "{} is on another file system than DEST (a mount point?): the link cannot switch \
             between trees there; refusing to use it",
            path.display()
        );
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn the_link_names_one_of_two_trees_beside_dest() {
        let l = Layout::new(&DestPaths {
            dest: "/srv/www".into(),
            state_root: "/var/lib/s".into(),
        });
        assert_eq!(l.link_text(Slot::B), b".www.dupmirror-trees/b");
        assert_eq!(l.slot_of(b".www.dupmirror-trees/a"), Some(Slot::A));
        for foreign in [
            &b"/srv/.www.dupmirror-trees/a"[..],
            b".www.dupmirror-trees/a/",
            b"x",
        ] {
            assert_eq!(l.slot_of(foreign), None);
        }
        let a = l.tree(Slot::A);
        assert_eq!(a.dest, Path::new("/srv/.www.dupmirror-trees/a"));
        assert_eq!(a.state_root, Path::new("/var/lib/s/tree-a"));
    }
}
