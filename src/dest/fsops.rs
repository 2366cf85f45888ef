//! File system primitives for writing DEST safely.
//!
//! Everything that touches DEST goes through here, so the rules live in one place:
//! a path is only written when every ancestor below DEST is a real directory (never a
//! symlink, so nothing escapes DEST through one), removal never follows symlinks, and
//! attributes are set without following symlinks. Owners are set only when running as
//! root, mapping user and group names to local ids as duplicity does (docs/format.md §5.4).
//!
//! Regular files are most of a bootstrap's system calls, so a new file gets its attributes
//! through its open descriptor (no path lookups) and only those it does not already have:
//! it is created with its permission bits, and owned by whoever runs dupmirror.

use crate::error::Error;
use crate::index::PathIndex;
use crate::meta::{FileType, Metadata};
use anyhow::{Context, Result};
use nix::sys::stat::{fchmod, futimens, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, Gid, Uid};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// What an ancestor of a path is in DEST.
#[derive(Debug, PartialEq, Eq)]
pub enum Ancestors {
    /// Every ancestor is a real directory.
    AllDirs,
    /// Some ancestor does not exist (so neither does the path).
    Missing,
}

/// Checks the ancestors of `index` below `root`: real directories or missing. A symlink
/// or another non-directory on the way is refused with an [`Error::UnsafePath`].
pub fn check_ancestors(root: &Path, index: &PathIndex) -> Result<Ancestors> {
    let mut p = root.to_path_buf();
    let comps = index.components();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        p.push(std::ffi::OsStr::from_bytes(c));
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(m) => {
                let what = if m.file_type().is_symlink() {
                    "a symlink"
                } else {
                    "not a directory"
                };
                return Err(Error::UnsafePath {
                    path: index.to_string(),
                    reason: format!("its parent {} in DEST is {what}", p.display()),
                }
                .into());
            }
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Ancestors::Missing),
            Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", p.display())),
        }
    }
    Ok(Ancestors::AllDirs)
}

/// Creates the missing ancestors of `index` as plain directories.
pub fn create_ancestors(root: &Path, index: &PathIndex) -> Result<()> {
    if let Some(parent) = index.parent() {
        let p = root.join(parent.to_path());
        fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
    }
    Ok(())
}

/// Removes whatever is at `path` (a whole tree for a directory), never following symlinks.
/// A missing path is not an error.
pub fn remove_any(path: &Path) -> Result<()> {
    let r = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    match r {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Creates a non-regular, non-directory object (symlink, fifo, device) at `path`.
pub fn create_special(path: &Path, meta: &Metadata) -> Result<()> {
    let ctx = || format!("cannot create {} {}", meta.file_type.name(), path.display());
    match &meta.file_type {
        FileType::Symlink(target) => {
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), path).with_context(ctx)
        }
        FileType::Fifo => nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o600))
            .map_err(std::io::Error::from)
            .with_context(ctx),
        FileType::CharDevice { major, minor } | FileType::BlockDevice { major, minor } => {
            let kind = if matches!(meta.file_type, FileType::CharDevice { .. }) {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            let dev = nix::sys::stat::makedev(u64::from(*major), u64::from(*minor));
            nix::sys::stat::mknod(path, kind, Mode::from_bits_truncate(0o600), dev)
                .map_err(std::io::Error::from)
                .with_context(ctx)
        }
        FileType::Regular | FileType::Dir => {
            unreachable!("create_special called for {:?}", meta.file_type)
        }
    }
}

/// Maps stored owners to local ids: names first, numbers when a name is unknown here.
pub struct OwnerMap {
    apply: bool,
    users: HashMap<Vec<u8>, Option<u32>>,
    groups: HashMap<Vec<u8>, Option<u32>>,
}

impl OwnerMap {
    /// Owners are applied only when running as root (as duplicity does in effect: its
    /// chown attempts fail silently otherwise).
    pub fn new() -> Self {
        OwnerMap {
            apply: nix::unistd::geteuid().is_root(),
            users: HashMap::new(),
            groups: HashMap::new(),
        }
    }

    pub fn applies(&self) -> bool {
        self.apply
    }

    /// The local (uid, gid) for stored metadata.
    pub fn resolve(&mut self, meta: &Metadata) -> (u32, u32) {
        let uid = lookup(&mut self.users, &meta.uname, |n| {
            nix::unistd::User::from_name(n)
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw())
        });
        let gid = lookup(&mut self.groups, &meta.gname, |n| {
            nix::unistd::Group::from_name(n)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw())
        });
        (uid.unwrap_or(meta.uid), gid.unwrap_or(meta.gid))
    }
}

/// A name's local id, looked up once per name; `None` for no name or an unknown one.
fn lookup(
    cache: &mut HashMap<Vec<u8>, Option<u32>>,
    name: &[u8],
    find: impl FnOnce(&str) -> Option<u32>,
) -> Option<u32> {
    if name.is_empty() {
        return None;
    }
    *cache
        .entry(name.to_vec())
        .or_insert_with(|| find(&String::from_utf8_lossy(name)))
}

impl Default for OwnerMap {
    fn default() -> Self {
        Self::new()
    }
}

/// The attributes to give an object once it is in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attrs {
    pub mode: u32,
    /// Local ids, or `None` when owners are not applied.
    pub owner: Option<(u32, u32)>,
    pub mtime: i64,
    pub symlink: bool,
}

impl Attrs {
    pub fn of(meta: &Metadata, owners: &mut OwnerMap) -> Attrs {
        Attrs {
            mode: meta.mode,
            owner: owners.applies().then(|| owners.resolve(meta)),
            mtime: meta.mtime,
            symlink: matches!(meta.file_type, FileType::Symlink(_)),
        }
    }

    /// chown, then chmod (chown clears setuid bits), then the mtime; symlinks get owner
    /// and mtime only (their mode means nothing on Linux).
    pub fn apply(&self, path: &Path) -> Result<()> {
        let ctx = || format!("cannot set attributes of {}", path.display());
        if let Some((uid, gid)) = self.owner {
            nix::unistd::fchownat(
                None,
                path,
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(std::io::Error::from)
            .with_context(ctx)?;
        }
        if !self.symlink {
            fs::set_permissions(path, fs::Permissions::from_mode(self.mode)).with_context(ctx)?;
        }
        set_mtime(path, self.mtime)
    }
}

/// What a file created by [`create_file`] below a staging folder already has.
#[derive(Clone, Copy, Debug)]
pub struct NewFiles {
    /// The owner new files get; `None` when unknown (a setgid folder passes its group on).
    owner: Option<(u32, u32)>,
    /// The process's umask, which the permission bits given to `open` lose; `None` when
    /// unknown.
    umask: Option<u32>,
}

impl NewFiles {
    /// For files created below `staging`, a folder dupmirror made: the folders it makes
    /// inside keep default attributes until their contents are complete, so only
    /// `staging` itself can pass a group down.
    pub fn probe(staging: &Path) -> NewFiles {
        let setgid = fs::metadata(staging).map_or(true, |m| m.mode() & libc::S_ISGID != 0);
        NewFiles {
            owner: (!setgid).then(|| {
                (
                    nix::unistd::geteuid().as_raw(),
                    nix::unistd::getegid().as_raw(),
                )
            }),
            umask: process_umask(),
        }
    }
}

/// The umask, read where reading it changes nothing (`umask(2)` would set it, racing with
/// other threads that create files).
fn process_umask() -> Option<u32> {
    static UMASK: OnceLock<Option<u32>> = OnceLock::new();
    *UMASK.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let value = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(value.trim(), 8).ok()
    })
}

/// Creates a new regular file for writing, with the permission bits it is to have.
pub fn create_file(path: &Path, attrs: &Attrs) -> Result<File> {
    File::options()
        .write(true)
        .create_new(true)
        .mode(attrs.mode & 0o777)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

impl Attrs {
    /// Gives a file made by [`create_file`] its attributes through its descriptor, after
    /// its last write: the owner and mode only when it lacks them, then the mtime.
    pub fn apply_to_new(&self, file: &File, path: &Path, new: &NewFiles) -> Result<()> {
        let ctx = || format!("cannot set attributes of {}", path.display());
        let fd = file.as_raw_fd();
        if let Some((uid, gid)) = self.owner.filter(|o| new.owner != Some(*o)) {
            fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(std::io::Error::from)
                .with_context(ctx)?;
        }
        // Setuid, setgid and sticky bits are never given by `open`, and chown clears the
        // first two: any of them takes an fchmod after the fchown.
        if new.umask.map(|u| self.mode & 0o777 & !u) != Some(self.mode) {
            fchmod(fd, Mode::from_bits_truncate(self.mode))
                .map_err(std::io::Error::from)
                .with_context(ctx)?;
        }
        futimens(fd, &TimeSpec::UTIME_OMIT, &TimeSpec::new(self.mtime, 0))
            .map_err(std::io::Error::from)
            .with_context(ctx)
    }
}

/// Sets the mtime of `path` (not following a symlink), leaving the atime alone.
pub fn set_mtime(path: &Path, mtime: i64) -> Result<()> {
    utimensat(
        None,
        path,
        &TimeSpec::UTIME_OMIT,
        &TimeSpec::new(mtime, 0),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(std::io::Error::from)
    .with_context(|| format!("cannot set the mtime of {}", path.display()))
}

/// The mtime of a directory in DEST, if it is one.
pub fn dir_mtime(path: &Path) -> Result<Option<i64>> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(Some(m.mtime())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
}

/// The type of what is at `path`, without following a symlink; `None` when nothing is.
pub fn lstat_type(path: &Path) -> Result<Option<fs::FileType>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m.file_type())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
}

/// Whether `t` is a regular file (used for delta bases).
pub fn is_regular(t: &fs::FileType) -> bool {
    t.is_file() && !t.is_symlink() && !t.is_fifo()
}

/// `root` joined with an index.
pub fn dest_path(root: &Path, index: &PathIndex) -> PathBuf {
    if index.is_root() {
        root.to_path_buf()
    } else {
        root.join(index.to_path())
    }
}
