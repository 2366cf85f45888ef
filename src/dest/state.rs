//! What DEST holds, and the folder where dupmirror keeps that knowledge.
//!
//! DEST holds exactly the backed-up tree, so dupmirror's own files live in a state
//! directory outside it: by default `.<name>.dupmirror` beside DEST, or `--state-dir`. It
//! holds:
//!
//! ```text
//! lock         flock(2): one sync per state folder at a time (DEST itself is locked too)
//! state.json   the chain DEST belongs to, the end time of the last set applied, and DEST's
//!              path and identity (device, inode)
//! journal      present only while a set is being committed (see dest::journal)
//! journal.tmp  the journal being written, renamed to `journal` at the commit point
//! staging/     new content of the set being applied
//! staging.repair/  a scratch mirror of the paths being repaired
//! cache/       downloaded volumes (remote sources)
//! ```
//!
//! The folder is trusted as much as DEST is, so it must be the user's alone: opening it
//! refuses a symlink, a folder owned by another user, or one that others may write; a
//! folder others may only read (made by an older dupmirror) is tightened to 0700. It is
//! created 0700, its files 0600. Everything in it is reached through its handle.
//!
//! Staged objects are renamed into DEST, so staging must be on DEST's file system. When
//! the state folder is on another one (`--state-dir` on a tmpfs, say), staging moves to a
//! hidden folder beside DEST, `.<name>.dupmirror-staging` (0700, checked like the state
//! folder), and the journal stays in the state folder: the commit point is a rename inside
//! the state folder, the placement renames stay inside DEST's file system.
//!
//! Every command finds DEST and its state directory the same way, through [`DestPaths`];
//! a `state.json` that cannot be read, or that names another DEST, is an error, never
//! "not synced yet".
//!
//! Limits: the state says what dupmirror last wrote, not what DEST holds now; a person
//! editing DEST behind its back is caught by `verify`, not here.

use super::dir::{Dir, FileId, Lookup, OpenError};
use crate::error::Error;
use crate::repo::time::Epoch;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const STATE_FORMAT: u32 = 1;
const STATE_FILE: &str = "state.json";

/// The backup state DEST holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorState {
    pub format: u32,
    /// The source as shown to people (no password).
    pub source: String,
    /// The time of the full set that starts DEST's chain.
    pub chain_start: Epoch,
    /// The end time of the last set applied.
    pub end_time: Epoch,
    /// The absolute path of DEST, so one state directory never serves two trees.
    pub dest: PathBuf,
    /// DEST's device and inode: the folder the state describes (absent in states written
    /// before dupmirror recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_id: Option<FileId>,
    /// The subtrees DEST mirrors (`--path`); empty for the whole tree.
    #[serde(default)]
    pub paths: Vec<String>,
    /// The newest backup DEST was brought to (rollback protection, `mirror::rollback`).
    /// Absent from states written before it: then `end_time` stands in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<HighWater>,
}

/// The newest backup a DEST was brought to, and when that first happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HighWater {
    /// The backup's end time.
    pub end_time: Epoch,
    /// When a sync first brought DEST to it (Unix seconds, this host's clock).
    pub reached_at: i64,
}

impl MirrorState {
    pub fn new(
        source: String,
        chain_start: Epoch,
        end_time: Epoch,
        dest: PathBuf,
        paths: Vec<String>,
    ) -> Self {
        MirrorState {
            format: STATE_FORMAT,
            source,
            chain_start,
            end_time,
            dest,
            dest_id: None,
            paths,
            newest: None,
        }
    }

    /// The same state with this high-water mark.
    pub fn with_newest(mut self, newest: HighWater) -> Self {
        self.newest = Some(newest);
        self
    }

    /// Whether this state describes DEST as it is (`id`: DEST's identity, `None` when it is
    /// missing): DEST exists and is the folder recorded (states written before identities
    /// were recorded describe any folder at DEST's path).
    pub fn describes(&self, id: Option<FileId>) -> bool {
        id.is_some() && (self.dest_id.is_none() || self.dest_id == id)
    }
}

/// Where a staging-like folder lives: an entry of a folder we hold a handle on.
///
/// The folder is `flock`ed by the process that made it, for as long as it works in it, and
/// a folder another process holds is never removed: beside DEST (state folder on another
/// file system) the state folder's lock does not cover it, and DEST's lock does not exist
/// yet when DEST is missing, so two first syncs of one DEST with different state folders
/// would otherwise clear each other's half-built tree (seen as `ENOENT` creating a file
/// in a folder just made).
struct Place {
    parent: Dir,
    name: Vec<u8>,
    /// The folder this process made and holds locked.
    held: Mutex<Option<Dir>>,
}

impl Place {
    fn path(&self) -> PathBuf {
        self.parent.show(&self.name)
    }

    /// The folder, when it exists; it must be ours (see [`check_private`]).
    fn open(&self) -> Result<Option<Dir>> {
        match self.parent.child(&self.name)? {
            Lookup::Found(d) => {
                check_private(&d, &self.path(), "staging folder")?;
                Ok(Some(d))
            }
            Lookup::Missing => Ok(None),
            Lookup::Blocked(b) => bail!(
                "staging folder {} is {}; refusing to use it",
                self.path().display(),
                b.kind.described()
            ),
        }
    }

    /// The folder, emptied or made (0700), and locked.
    fn fresh(&self, wait: bool) -> Result<Dir> {
        self.remove(wait)?;
        let made = self.parent.create_dir(&self.name, 0o700)?;
        // Another process may have found the new folder before it was locked, and removed
        // it: the name must still lead to it once the lock is held.
        let ours = made.lock(false)?
            && self.parent.stat(&self.name)?.map(|s| s.id) == Some(made.stat_self()?.id);
        if !ours {
            return Err(Error::Locked(self.path()).into());
        }
        *self.held() = Some(made.try_clone()?);
        Ok(made)
    }

    /// Removes the folder, unless another process holds it (then [`Error::Locked`], or
    /// waits for it with `wait`).
    fn remove(&self, wait: bool) -> Result<()> {
        let mut held = self.held();
        if let Lookup::Found(found) = self.parent.child(&self.name)? {
            let id = found.stat_self()?.id;
            let mine = match held.as_ref() {
                Some(h) => h.stat_self()?.id == id,
                None => false,
            };
            // Locked until removed: nobody starts building in it meanwhile.
            let _guard = if mine {
                None
            } else {
                let guard = found.reopen_readable()?;
                if !guard.lock(wait)? {
                    return Err(Error::Locked(self.path()).into());
                }
                Some(guard)
            };
            self.parent.remove(&self.name)?;
        }
        *held = None;
        Ok(())
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Dir>> {
        // A panic elsewhere cannot leave the slot half-written: it is one assignment.
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The state directory of one DEST, locked for as long as this value lives.
pub struct StateDir {
    dir: Dir,
    dest: PathBuf,
    staging: Place,
    repair: Place,
    /// Wait for another process's lock (on a staging folder too) instead of failing.
    wait: bool,
    _lock: File,
}

/// DEST and its state directory, resolved once, the same way for every command.
#[derive(Clone, Debug)]
pub struct DestPaths {
    /// Absolute, without `..`.
    pub dest: PathBuf,
    /// `--state-dir`, or `.<DEST name>.dupmirror` beside DEST; never inside DEST.
    pub state_root: PathBuf,
}

impl DestPaths {
    pub fn resolve(dest: &Path, state_dir: Option<&Path>) -> Result<DestPaths> {
        let dest = absolute_dest(dest)?;
        let state_root = match state_dir {
            Some(s) => std::path::absolute(s)
                .with_context(|| format!("cannot resolve --state-dir {}", s.display()))?,
            None => default_state_dir(&dest)?,
        };
        if state_root.starts_with(&dest) {
            bail!(
                "the state directory {} lies inside DEST; DEST must hold only the backed-up tree",
                state_root.display()
            );
        }
        Ok(DestPaths { dest, state_root })
    }

    /// The recorded state, read without the lock and without completing an interrupted
    /// commit: a look, for `status`.
    pub fn peek(&self) -> Result<Option<MirrorState>> {
        let path = self.state_root.join(STATE_FILE);
        match fs::read(&path) {
            Ok(data) => parse_state(&data, &self.state_root, &self.dest).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// What DEST holds, as `mirror::decide` takes it (a look, like [`DestPaths::peek`]):
    /// the recorded state, unless DEST is gone (then it is rebuilt from scratch) or is not
    /// the folder the state describes (then it counts as never synced).
    pub fn held(&self, recorded: Option<MirrorState>) -> Option<MirrorState> {
        let id = fs::symlink_metadata(&self.dest)
            .ok()
            .filter(|m| m.is_dir())
            .map(|m| FileId {
                dev: std::os::unix::fs::MetadataExt::dev(&m),
                ino: std::os::unix::fs::MetadataExt::ino(&m),
            });
        recorded.filter(|st| st.describes(id))
    }

    /// Whether DEST is missing or an empty folder (a first sync needs no `--adopt`).
    pub fn dest_is_empty(&self) -> Result<bool> {
        match fs::read_dir(&self.dest) {
            Ok(mut it) => Ok(it.next().is_none()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot read DEST {}", self.dest.display())),
        }
    }
}

/// Where the state of `dest` lives by default: `.<name>.dupmirror` beside it.
fn default_state_dir(dest: &Path) -> Result<PathBuf> {
    let name = dest
        .file_name()
        .with_context(|| format!("DEST {} has no folder name", dest.display()))?;
    let mut dir = std::ffi::OsString::from(".");
    dir.push(name);
    dir.push(".dupmirror");
    Ok(dest.parent().unwrap_or(Path::new(".")).join(dir))
}

/// DEST as an absolute path without `..`, so that the default state directory and the
/// recorded DEST do not depend on how the path was spelled.
fn absolute_dest(dest: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(dest)
        .with_context(|| format!("cannot resolve DEST {}", dest.display()))?;
    // Resolve the parent (which must exist) so `a/../b` and symlinked parents agree.
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = fs::canonicalize(parent).with_context(|| {
                format!(
                    "the folder that should hold DEST, {}, does not exist",
                    parent.display()
                )
            })?;
            Ok(parent.join(name))
        }
        _ => bail!(
            "DEST {} cannot be the root of the file system",
            dest.display()
        ),
    }
}

/// Refuses a folder of ours that is not the user's alone; tightens one that others may
/// only read (older dupmirror versions made it 0755).
fn check_private(dir: &Dir, path: &Path, what: &str) -> Result<()> {
    let st = dir.stat_self()?;
    let euid = nix::unistd::geteuid().as_raw();
    if st.uid != euid {
        bail!(
            "{what} {} belongs to uid {}, not to the user running dupmirror (uid {euid}); \
             refusing to use it",
            path.display(),
            st.uid
        );
    }
    if st.mode & 0o022 != 0 {
        bail!(
            "{what} {} may be written by other users (mode {:04o}); refusing to use it \
             (it must be 0700)",
            path.display(),
            st.mode
        );
    }
    if st.mode & 0o7777 != 0o700 {
        dir.chmod_self(0o700)
            .with_context(|| format!("cannot make {what} {} private", path.display()))?;
    }
    Ok(())
}

/// Opens (making it 0700 when missing) a private folder of ours at `path`.
fn open_private(path: &Path, what: &str) -> Result<Dir> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        bail!(
            "{what} {} cannot be the root of the file system",
            path.display()
        );
    };
    // The folders above are the administrator's choice, made like `mkdir -p` would.
    fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let parent = Dir::open_existing(parent, "the folder that holds the state directory")?;
    match parent.child_or_create(name.as_bytes(), 0o700)? {
        Lookup::Found(_) => {}
        Lookup::Blocked(b) => bail!(
            "{what} {} is {}; refusing to use it",
            path.display(),
            b.kind.described()
        ),
        Lookup::Missing => bail!("{what} {} vanished while being created", path.display()),
    }
    let dir = match Dir::open_path(path) {
        Ok(d) => d,
        Err(OpenError::NotDir(k)) => bail!(
            "{what} {} is {}; refusing to use it",
            path.display(),
            k.described()
        ),
        Err(OpenError::Missing) => bail!("{what} {} vanished while being opened", path.display()),
        Err(OpenError::Io(e)) => {
            return Err(e).with_context(|| format!("cannot open {what} {}", path.display()))
        }
    };
    check_private(&dir, path, what)?;
    Ok(dir)
}

impl StateDir {
    /// Opens (creating) the state directory of DEST `dest` and takes its lock. With
    /// `wait`, blocks until another sync releases it; otherwise fails at once with
    /// [`Error::Locked`].
    pub fn open(root: &Path, dest: &Path, wait: bool) -> Result<StateDir> {
        let dir = open_private(root, "state directory")?;
        let lock = dir.create_or_open(b"lock")?;
        let op = if wait {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        if unsafe { libc::flock(lock.as_raw_fd(), op) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Err(Error::Locked(root.to_path_buf()).into());
            }
            return Err(e).with_context(|| format!("cannot lock {}", dir.show(b"lock").display()));
        }
        // Staged files are renamed into DEST, so they must be on DEST's file system. When
        // the state directory is elsewhere, stage beside DEST instead.
        let dest_parent = dest.parent().unwrap_or(Path::new("/"));
        let dest_fs = fs::metadata(dest)
            .or_else(|_| fs::metadata(dest_parent))
            .map(|m| std::os::unix::fs::MetadataExt::dev(&m))
            .ok();
        let staging = if dest_fs.is_some() && dest_fs != Some(dir.stat_self()?.id.dev) {
            let mut name = b".".to_vec();
            name.extend_from_slice(dest.file_name().unwrap_or_default().as_bytes());
            name.extend_from_slice(b".dupmirror-staging");
            Place {
                parent: Dir::open_existing(dest_parent, "the folder that holds DEST")?,
                name,
                held: Mutex::new(None),
            }
        } else {
            Place {
                parent: dir.try_clone()?,
                name: b"staging".to_vec(),
                held: Mutex::new(None),
            }
        };
        let mut repair_name = staging.name.clone();
        repair_name.extend_from_slice(b".repair");
        let repair = Place {
            parent: staging.parent.try_clone()?,
            name: repair_name,
            held: Mutex::new(None),
        };
        Ok(StateDir {
            dir,
            dest: dest.to_path_buf(),
            staging,
            repair,
            wait,
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The state folder's handle.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// Where staging lives (for messages, and as the journal records it).
    pub fn staging_path(&self) -> PathBuf {
        self.staging.path()
    }

    /// A new, empty staging folder.
    pub fn fresh_staging(&self) -> Result<Dir> {
        self.staging.fresh(self.wait).with_context(|| {
            format!(
                "cannot create staging folder {}",
                self.staging_path().display()
            )
        })
    }

    /// The staging folder left by a committed set, if any.
    pub fn staging(&self) -> Result<Option<Dir>> {
        self.staging.open()
    }

    /// Removes the staging folder and the uncommitted journal that describes it.
    pub fn remove_staging(&self) -> Result<()> {
        self.dir.remove(b"journal.tmp")?;
        self.staging.remove(self.wait)
    }

    /// A new, empty folder for a repair's scratch mirror (beside staging, so on DEST's
    /// file system too), and its path.
    pub fn fresh_repair_scratch(&self) -> Result<PathBuf> {
        self.repair.fresh(self.wait)?;
        Ok(self.repair.path())
    }

    pub fn remove_repair_scratch(&self) -> Result<()> {
        self.repair.remove(self.wait)
    }

    /// The state DEST was last brought to, or `None` before the first sync; an error when
    /// it records another DEST.
    pub fn load(&self) -> Result<Option<MirrorState>> {
        match self.read(STATE_FILE.as_bytes())? {
            Some(data) => parse_state(&data, self.root(), &self.dest).map(Some),
            None => Ok(None),
        }
    }

    /// Records a new state atomically (write, fsync, rename, fsync the folder).
    pub fn save(&self, state: &MirrorState) -> Result<()> {
        self.save_json(STATE_FILE.as_bytes(), state)
    }

    /// Replaces file `name` of the state folder with `value` as JSON, atomically (write
    /// `name.tmp`, fsync, rename, fsync the folder).
    pub fn save_json<T: Serialize>(&self, name: &[u8], value: &T) -> Result<()> {
        let mut data = serde_json::to_vec_pretty(value)?;
        data.push(b'\n');
        let mut tmp = name.to_vec();
        tmp.extend_from_slice(b".tmp");
        self.write_durably(&tmp, &data)?;
        self.dir.rename(&tmp, &self.dir, name)?;
        self.dir.sync()
    }

    /// The bytes of file `name` of the state folder (`None`: there is none).
    pub fn read(&self, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let path = self.dir.show(name);
        let mut data = Vec::new();
        match self.dir.open_file(name)? {
            Ok(mut f) => f
                .read_to_end(&mut data)
                .with_context(|| format!("cannot read {}", path.display()))?,
            Err(None) => return Ok(None),
            Err(Some(k)) => bail!(
                "{} is {}; refusing to use it",
                path.display(),
                k.described()
            ),
        };
        Ok(Some(data))
    }

    /// Writes a small private file in the state folder and fsyncs it.
    fn write_durably(&self, name: &[u8], data: &[u8]) -> Result<()> {
        let mut f = self.dir.create_scratch(name)?;
        f.write_all(data)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("cannot write {}", self.dir.show(name).display()))
    }

    /// Whether a committed journal waits to be carried out.
    pub fn has_journal(&self) -> bool {
        matches!(self.dir.stat(b"journal"), Ok(Some(_)))
    }

    /// Refuses a state folder that belongs to another DEST: its state or its pending
    /// journal names another path. Checked before anything in it is used.
    pub fn check_belongs_to(&self, journal: Option<&MirrorState>) -> Result<()> {
        self.load()?;
        match journal {
            Some(st) if st.dest != self.dest => Err(belongs_elsewhere(self.root(), st, &self.dest)),
            _ => Ok(()),
        }
    }
}

/// Reads the bytes of `state.json` in `state_root` for `dest`: an error when they are
/// damaged, of another format, or record another DEST.
fn parse_state(data: &[u8], state_root: &Path, dest: &Path) -> Result<MirrorState> {
    let path = state_root.join(STATE_FILE);
    let state: MirrorState = serde_json::from_slice(data).with_context(|| {
        format!(
            "{} is damaged; remove it to rebuild DEST from scratch",
            path.display()
        )
    })?;
    if state.format != STATE_FORMAT {
        bail!(
            "{} has state format {}, this dupmirror reads format {STATE_FORMAT}",
            path.display(),
            state.format
        );
    }
    if state.dest != dest {
        return Err(belongs_elsewhere(state_root, &state, dest));
    }
    Ok(state)
}

fn belongs_elsewhere(state_root: &Path, state: &MirrorState, dest: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "state directory {} belongs to DEST {}, not {}; pass another --state-dir",
        state_root.display(),
        state.dest.display(),
        dest.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_state_folder_must_be_private() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("d");
        let made = t.path().join("made");
        drop(StateDir::open(&made, &dest, false).unwrap());
        let mode = fs::metadata(&made).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "created private");

        let open = t.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        drop(StateDir::open(&open, &dest, false).unwrap());
        let mode = fs::metadata(&open).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "readable by others: tightened");

        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let e = StateDir::open(&open, &dest, false).err().unwrap();
        assert!(format!("{e:#}").contains("written by other users"), "{e:#}");

        let link = t.path().join("link");
        std::os::unix::fs::symlink(&made, &link).unwrap();
        let e = StateDir::open(&link, &dest, false).err().unwrap();
        assert!(format!("{e:#}").contains("symlink"), "{e:#}");
    }

    #[test]
    fn state_files_are_private() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("d");
        let s = StateDir::open(&t.path().join("s"), &dest, false).unwrap();
        s.save(&MirrorState::new("src".into(), 1, 2, dest.clone(), vec![]))
            .unwrap();
        let mode = fs::metadata(t.path().join("s/state.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
        assert_eq!(s.load().unwrap().unwrap().end_time, 2);
    }
}
