//! What DEST holds, and the folder where dupmirror keeps that knowledge.
//!
//! DEST holds exactly the backed-up tree, so dupmirror's own files live in a state
//! directory outside it: by default `.<name>.dupmirror` beside DEST (same file system, so
//! staged files can be renamed into place), or `--state-dir`. It holds:
//!
//! ```text
//! lock         flock(2): one sync per DEST at a time; the kernel drops it if we die
//! state.json   the chain DEST belongs to and the end time of the last set applied
//! journal      present only while a set is being committed (see apply::journal)
//! staging/     new content of the set being applied (same file system as DEST)
//! staging.repair/  a scratch mirror of the paths being repaired
//! ```
//!
//! Every command finds DEST and its state directory the same way, through [`DestPaths`];
//! a `state.json` that cannot be read, or that names another DEST, is an error, never
//! "not synced yet".
//!
//! Limits: the state says what dupmirror last wrote, not what DEST holds now; a person
//! editing DEST behind its back is caught by `verify`, not here.

use crate::error::Error;
use crate::repo::time::Epoch;
use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

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
            paths,
            newest: None,
        }
    }

    /// The same state with this high-water mark.
    pub fn with_newest(mut self, newest: HighWater) -> Self {
        self.newest = Some(newest);
        self
    }
}

/// The state directory of one DEST, locked for as long as this value lives.
pub struct StateDir {
    root: PathBuf,
    dest: PathBuf,
    staging: PathBuf,
    _lock: Flock<File>,
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

    /// Opens the state directory and takes its lock (see [`StateDir::open`]).
    pub fn lock(&self, wait: bool) -> Result<StateDir> {
        StateDir::open(&self.state_root, &self.dest, wait)
    }

    /// The recorded state, read without the lock and without completing an interrupted
    /// commit: a look, for `status`.
    pub fn peek(&self) -> Result<Option<MirrorState>> {
        read_state(&self.state_root.join(STATE_FILE), &self.dest)
    }

    /// What DEST holds, as `mirror::decide` takes it: the recorded state, unless DEST
    /// itself is gone (then it is rebuilt from scratch).
    pub fn held(&self, recorded: Option<MirrorState>) -> Option<MirrorState> {
        recorded.filter(|_| self.dest.exists())
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

fn device_of(path: &Path) -> Option<u64> {
    fs::metadata(path).ok().map(|m| m.dev())
}

impl StateDir {
    /// Opens (creating) the state directory and takes its lock. With `wait`, blocks until
    /// another sync releases it; otherwise fails at once with [`Error::Locked`].
    pub fn open(root: &Path, dest: &Path, wait: bool) -> Result<StateDir> {
        fs::create_dir_all(root)
            .with_context(|| format!("cannot create state directory {}", root.display()))?;
        let lock_path = root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        let arg = if wait {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        let lock = match Flock::lock(file, arg) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(Error::Locked(root.to_path_buf()).into())
            }
            Err((_, e)) => {
                return Err(std::io::Error::from(e))
                    .with_context(|| format!("cannot lock {}", lock_path.display()))
            }
        };
        // Staged files are renamed into DEST, so they must be on DEST's file system. When
        // the state directory is elsewhere, stage beside DEST instead.
        let dest_fs = device_of(dest).or_else(|| dest.parent().and_then(device_of));
        let staging = if dest_fs.is_some() && dest_fs != device_of(root) {
            let mut name = std::ffi::OsString::from(".");
            name.push(dest.file_name().unwrap_or_default());
            name.push(".dupmirror-staging");
            dest.parent().unwrap_or(Path::new(".")).join(name)
        } else {
            root.join("staging")
        };
        Ok(StateDir {
            root: root.to_path_buf(),
            dest: dest.to_path_buf(),
            staging,
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// Where a repair restores paths before grafting them (beside the staging folder, so
    /// on DEST's file system too).
    pub fn repair_scratch(&self) -> PathBuf {
        self.staging.with_extension("repair")
    }

    pub fn journal_path(&self) -> PathBuf {
        self.root.join("journal")
    }

    fn state_path(&self) -> PathBuf {
        self.root.join(STATE_FILE)
    }

    /// The state DEST was last brought to, or `None` before the first sync.
    pub fn load(&self) -> Result<Option<MirrorState>> {
        read_state(&self.state_path(), &self.dest)
    }

    /// Records a new state atomically (write, fsync, rename, fsync the folder).
    pub fn save(&self, state: &MirrorState) -> Result<()> {
        let path = self.state_path();
        let tmp = self.root.join("state.json.tmp");
        let mut data = serde_json::to_vec_pretty(state)?;
        data.push(b'\n');
        write_durably(&tmp, &data)?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        sync_dir(&self.root)
    }
}

/// Reads `state.json` of `dest`: `None` when there is none (never synced); an error when
/// it is damaged, of another format, or records another DEST.
fn read_state(path: &Path, dest: &Path) -> Result<Option<MirrorState>> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let state: MirrorState = serde_json::from_slice(&data).with_context(|| {
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
        bail!(
            "state directory {} belongs to DEST {}, not {}; pass another --state-dir",
            path.parent().unwrap_or(path).display(),
            state.dest.display(),
            dest.display()
        );
    }
    Ok(Some(state))
}

/// Writes a small file and fsyncs it.
pub fn write_durably(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// fsyncs a directory, making renames inside it durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}
