//! The attributes dupmirror gives objects in DEST, and how it makes the special ones.
//!
//! Every call goes through a directory handle (`dir`), never by path. Owners are set only
//! when running as root, mapping user and group names to local ids as duplicity does
//! (docs/format.md §5.4).
//!
//! Regular files are most of a bootstrap's system calls, so a new file gets its attributes
//! through its open descriptor (no lookups) and only those it does not already have: it is
//! created private (0600) and owned by whoever runs dupmirror; its final mode is set once
//! its content is complete, so no other user can read it while it is being written.

use super::dir::{set_file_mtime, Dir};
use crate::meta::{FileType, Metadata};
use anyhow::{anyhow, Context, Result};
use nix::sys::stat::{fchmod, Mode};
use nix::unistd::{fchown, Gid, Uid};
use std::collections::HashMap;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::OnceLock;

/// Creates a non-regular, non-directory object (symlink, fifo, device) as entry `name`
/// of `dir`.
pub fn create_special(dir: &Dir, name: &[u8], meta: &Metadata) -> Result<()> {
    match &meta.file_type {
        FileType::Symlink(target) => dir.symlink(name, target),
        FileType::Fifo => dir.mknod(name, libc::S_IFIFO, 0),
        FileType::CharDevice { major, minor } | FileType::BlockDevice { major, minor } => {
            let kind = if matches!(meta.file_type, FileType::CharDevice { .. }) {
                libc::S_IFCHR
            } else {
                libc::S_IFBLK
            };
            dir.mknod(name, kind, libc::makedev(*major, *minor))
        }
        FileType::Regular | FileType::Dir => Err(anyhow!(
            "{}: a {} is not a special file",
            dir.show(name).display(),
            meta.file_type.name()
        )),
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

    /// chown, then chmod (chown clears setuid bits), then the mtime, on entry `name` of
    /// `dir`, never through a symlink; symlinks get owner and mtime only (their mode means
    /// nothing on Linux).
    pub fn apply(&self, dir: &Dir, name: &[u8]) -> Result<()> {
        if let Some((uid, gid)) = self.owner {
            dir.chown(name, uid, gid)?;
        }
        if !self.symlink {
            dir.chmod(name, self.mode)?;
        }
        dir.set_mtime(name, self.mtime)
    }

    /// The same for a directory handle itself (DEST's root).
    pub fn apply_to_dir(&self, dir: &Dir) -> Result<()> {
        dir.set_own_attrs(self.owner, self.mode, self.mtime)
    }
}

/// What a file created by [`Dir::create_file`] in a staging folder already has.
#[derive(Clone, Copy, Debug)]
pub struct NewFiles {
    /// The owner new files get; `None` when unknown (a setgid folder passes its group on).
    owner: Option<(u32, u32)>,
    /// The permission bits new files get (0600 less the umask); `None` when unknown.
    mode: Option<u32>,
}

impl NewFiles {
    /// For files created in `staging`, a folder dupmirror made: the folders it makes
    /// inside keep their private attributes until their contents are complete, so only
    /// `staging` itself can pass a group down.
    pub fn probe(staging: &Dir) -> NewFiles {
        let setgid = staging
            .stat_self()
            .map_or(true, |s| s.mode & libc::S_ISGID != 0);
        NewFiles {
            owner: (!setgid).then(|| {
                (
                    nix::unistd::geteuid().as_raw(),
                    nix::unistd::getegid().as_raw(),
                )
            }),
            mode: process_umask().map(|u| 0o600 & !u),
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

impl Attrs {
    /// Gives a file made by [`Dir::create_file`] its attributes through its descriptor,
    /// after its last write: the owner only when it lacks it, the mode (it was created
    /// private), then the mtime.
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
        if new.mode != Some(self.mode) {
            fchmod(fd, Mode::from_bits_truncate(self.mode))
                .map_err(std::io::Error::from)
                .with_context(ctx)?;
        }
        set_file_mtime(file, self.mtime).with_context(ctx)
    }
}
