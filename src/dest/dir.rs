//! Directory handles: the only way dupmirror changes or reads DEST, its staging area and its
//! state folder.
//!
//! A path is looked up again by every system call that is given it, so "check the path,
//! then use it" leaves a window in which a local user who owns a directory on the way can
//! swap it for a symlink and send a `chmod`, `rename` or `unlink` outside DEST. Here nothing
//! is done by path. A [`Dir`] is an open descriptor of a real directory; every operation
//! names one entry of it (a [`name`]: not empty, `.` or `..`, no `/`, no NUL) and never
//! follows a symlink in that entry:
//!
//! ```text
//! open a directory below    openat2(dir, "a/b", RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!                           RESOLVE_NO_MAGICLINKS); where openat2 is missing (ENOSYS, or EPERM
//!                           from an old seccomp filter): one openat(O_NOFOLLOW|O_DIRECTORY) per
//!                           component, each checked with fstat
//! inspect                   fstatat(dir, name, AT_SYMLINK_NOFOLLOW), readlinkat
//! create                    mkdirat 0700, openat(O_CREAT|O_EXCL|O_NOFOLLOW) 0600, symlinkat,
//!                           mknodat: private first, final attributes once complete
//! attributes                fchownat and utimensat with AT_SYMLINK_NOFOLLOW; chmod of an
//!                           O_PATH|O_NOFOLLOW descriptor through /proc/self/fd (what glibc's
//!                           fchmodat does); a directory just made: fchown/fchmod/futimens
//! move, remove              renameat(2) / unlinkat against the parent handles; a tree is
//!                           removed by descending through handles, never by path
//! read a file               O_PATH|O_NOFOLLOW, fstat says regular, reopen via /proc/self/fd (so
//!                           a fifo or device swapped in is never opened)
//! ```
//!
//! Why not the `cap-std` crate, which exists for this: it has no `mknodat` or `fchownat`
//! (devices and owners are half of a root restore), it would add rustix and a dozen crates
//! beside `nix` and `libc`, which are here already, and the calls above are few and small.
//!
//! Limits: Linux only, and `/proc` must be mounted (the pinned-descriptor calls above). A
//! directory that a local user can write may be *moved* by that user while
//! dupmirror works inside it (a handle follows the directory, not its name); what then lands
//! in it is content the backup puts in that user's directory anyway. Nothing a user cannot
//! write themselves is ever reached through them.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// What identifies a file system object for as long as it exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// The kind of an object, as `lstat` tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Regular,
    Dir,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
}

impl Kind {
    /// With an article, for messages ("DEST holds a symlink there").
    pub fn described(self) -> &'static str {
        match self {
            Kind::Regular => "a regular file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symlink",
            Kind::Fifo => "a fifo",
            Kind::CharDevice => "a character device",
            Kind::BlockDevice => "a block device",
            Kind::Socket => "a socket",
        }
    }
}

/// What `lstat` says about an object.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub rdev: u64,
    pub id: FileId,
}

impl Stat {
    fn from_raw(st: &libc::stat) -> Stat {
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFCHR => Kind::CharDevice,
            libc::S_IFBLK => Kind::BlockDevice,
            libc::S_IFSOCK => Kind::Socket,
            _ => Kind::Regular,
        };
        Stat {
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            mtime: st.st_mtime,
            rdev: st.st_rdev,
            id: FileId {
                dev: st.st_dev,
                ino: st.st_ino,
            },
        }
    }
}

/// What stands in the way of a directory below a handle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    /// How many components of the path lead to the obstacle (1: the first one).
    pub depth: usize,
    pub kind: Kind,
}

/// Looking up a directory below a handle.
pub enum Lookup {
    Found(Dir),
    /// A component is missing (and everything on the way to it is a real directory).
    Missing,
    /// A component is a symlink or not a directory.
    Blocked(Blocked),
}

/// A name of one entry of a directory, checked and ready for a system call.
pub fn name(bytes: &[u8]) -> Result<CString> {
    let bad = if bytes.is_empty() {
        Some("an empty name")
    } else if bytes == b"." || bytes == b".." {
        Some("a '.' or '..' name")
    } else if bytes.contains(&b'/') {
        Some("a '/' inside a name")
    } else if bytes.len() > 255 {
        Some("a name longer than 255 bytes")
    } else {
        None
    };
    if let Some(why) = bad {
        return Err(crate::error::Error::UnsafePath {
            path: String::from_utf8_lossy(bytes).into_owned(),
            reason: format!("it has {why}"),
        }
        .into());
    }
    CString::new(bytes).map_err(|_| {
        crate::error::Error::UnsafePath {
            path: String::from_utf8_lossy(bytes).into_owned(),
            reason: "it contains a NUL byte".into(),
        }
        .into()
    })
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Retries a call interrupted by a signal.
fn retry(mut f: impl FnMut() -> libc::c_int) -> io::Result<libc::c_int> {
    loop {
        match cvt(f()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn fstatat(fd: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<Stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    retry(|| unsafe { libc::fstatat(fd, name.as_ptr(), st.as_mut_ptr(), flags) })?;
    Ok(Stat::from_raw(unsafe { &st.assume_init() }))
}

fn fstat(fd: RawFd) -> io::Result<Stat> {
    fstatat(fd, c"", libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW)
}

fn openat(fd: RawFd, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let raw = retry(|| unsafe {
        libc::openat(
            fd,
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Set once openat2 turned out to be unavailable; from then on, components are walked.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// openat2 confined below `fd`, with no symlink anywhere on the way. `None` when the kernel
/// (or a seccomp filter) does not offer it.
fn openat2_beneath(fd: RawFd, rel: &CStr, flags: libc::c_int) -> Option<io::Result<OwnedFd>> {
    if NO_OPENAT2.load(Ordering::Relaxed) {
        return None;
    }
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // EAGAIN: a rename elsewhere raced with the lookup; the kernel asks for a retry.
    for _ in 0..64 {
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                fd,
                rel.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            return Some(Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) }));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
            Some(libc::ENOSYS) | Some(libc::EPERM) => {
                NO_OPENAT2.store(true, Ordering::Relaxed);
                return None;
            }
            _ => return Some(Err(e)),
        }
    }
    Some(Err(io::Error::from_raw_os_error(libc::EAGAIN)))
}

const DIR_FLAGS: libc::c_int = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;

/// Names read ahead at most by [`Dir::for_each_name`].
const NAME_BATCH: usize = 4096;

/// A readable handle on a directory, for calls that act on its whole file system. A
/// `sync` through it reports the write errors since it was opened, and older ones that no
/// handle has reported yet: once one handle has reported an error, handles opened after
/// it are not told of it.
pub struct FileSystem(OwnedFd);

impl FileSystem {
    /// `syncfs`: writes out everything the file system holds dirty, and waits.
    pub fn sync(&self) -> io::Result<()> {
        retry(|| unsafe { libc::syncfs(self.0.as_raw_fd()) }).map(drop)
    }
}

/// An open, real directory. Its path is kept for messages only; no call ever uses it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

/// Why a directory given by path could not be opened as a handle.
#[derive(Debug)]
pub enum OpenError {
    Missing,
    /// It exists but is a symlink or not a directory.
    NotDir(Kind),
    Io(io::Error),
}

impl Dir {
    /// Opens the directory at `path` for reading, refusing a symlink as its last component
    /// (the rest of `path` is the administrator's, and followed).
    pub fn open_path(path: &Path) -> std::result::Result<Dir, OpenError> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| OpenError::Io(io::Error::from(io::ErrorKind::InvalidInput)))?;
        match openat(
            libc::AT_FDCWD,
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        ) {
            Ok(fd) => Ok(Dir {
                fd,
                path: path.to_path_buf(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(OpenError::Missing),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                match fstatat(libc::AT_FDCWD, &c, libc::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => Err(OpenError::NotDir(st.kind)),
                    Err(e) => Err(OpenError::Io(e)),
                }
            }
            Err(e) => Err(OpenError::Io(e)),
        }
    }

    /// Like [`Dir::open_path`], with an error line for anything but a real directory.
    pub fn open_existing(path: &Path, what: &str) -> Result<Dir> {
        match Dir::open_path(path) {
            Ok(d) => Ok(d),
            Err(OpenError::Missing) => Err(anyhow!("{what} {} does not exist", path.display())),
            Err(OpenError::NotDir(k)) => Err(anyhow!(
                "{what} {} is {}, not a directory; refusing to use it",
                path.display(),
                k.described()
            )),
            Err(OpenError::Io(e)) => {
                Err(e).with_context(|| format!("cannot open {what} {}", path.display()))
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of an entry, for messages.
    pub fn show(&self, name: &[u8]) -> PathBuf {
        self.path.join(std::ffi::OsStr::from_bytes(name))
    }

    pub fn stat_self(&self) -> Result<Stat> {
        fstat(self.fd.as_raw_fd())
            .with_context(|| format!("cannot inspect {}", self.path.display()))
    }

    /// The entry `name`, not following a symlink; `None` when there is none.
    pub fn stat(&self, name: &[u8]) -> Result<Option<Stat>> {
        let c = self::name(name)?;
        match fstatat(self.fd.as_raw_fd(), &c, libc::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => {
                Err(e).with_context(|| format!("cannot inspect {}", self.show(name).display()))
            }
        }
    }

    /// The directory at `components` below this one, never through a symlink.
    pub fn lookup(&self, components: &[Vec<u8>]) -> Result<Lookup> {
        if components.is_empty() {
            return Ok(Lookup::Found(self.try_clone()?));
        }
        let mut rel = Vec::new();
        for (i, c) in components.iter().enumerate() {
            name(c)?;
            if i > 0 {
                rel.push(b'/');
            }
            rel.extend_from_slice(c);
        }
        let path = self.path.join(std::ffi::OsStr::from_bytes(&rel));
        let crel = CString::new(rel).map_err(|_| anyhow!("NUL in a path"))?;
        // Anything but success is told apart (missing, symlink, file) component by
        // component: the slow path is for failures only.
        if let Some(Ok(fd)) = openat2_beneath(self.fd.as_raw_fd(), &crel, DIR_FLAGS) {
            return Ok(Lookup::Found(Dir { fd, path }));
        }
        self.lookup_by_components(components)
    }

    /// The same, one `openat(O_NOFOLLOW|O_DIRECTORY)` per component, each checked.
    fn lookup_by_components(&self, components: &[Vec<u8>]) -> Result<Lookup> {
        let mut cur: Option<Dir> = None;
        for (depth, c) in components.iter().enumerate() {
            let parent = cur.as_ref().unwrap_or(self);
            match parent.child(c)? {
                Lookup::Found(d) => cur = Some(d),
                Lookup::Missing => return Ok(Lookup::Missing),
                Lookup::Blocked(b) => {
                    return Ok(Lookup::Blocked(Blocked {
                        depth: depth + 1,
                        kind: b.kind,
                    }))
                }
            }
        }
        Ok(match cur {
            Some(d) => Lookup::Found(d),
            None => Lookup::Found(self.try_clone()?),
        })
    }

    /// The subdirectory `name`, if it is a real directory.
    pub fn child(&self, name: &[u8]) -> Result<Lookup> {
        let c = self::name(name)?;
        let path = self.show(name);
        match openat(self.fd.as_raw_fd(), &c, DIR_FLAGS, 0) {
            Ok(fd) => {
                // O_PATH|O_NOFOLLOW opens a symlink itself; make sure of what was opened.
                let st = fstat(fd.as_raw_fd())
                    .with_context(|| format!("cannot inspect {}", path.display()))?;
                if st.kind == Kind::Dir {
                    Ok(Lookup::Found(Dir { fd, path }))
                } else {
                    Ok(Lookup::Blocked(Blocked {
                        depth: 1,
                        kind: st.kind,
                    }))
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Lookup::Missing),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                match self.stat(name)? {
                    Some(st) if st.kind != Kind::Dir => Ok(Lookup::Blocked(Blocked {
                        depth: 1,
                        kind: st.kind,
                    })),
                    _ => Err(e).with_context(|| format!("cannot open {}", path.display())),
                }
            }
            Err(e) => Err(e).with_context(|| format!("cannot open {}", path.display())),
        }
    }

    pub fn try_clone(&self) -> Result<Dir> {
        Ok(Dir {
            fd: self
                .fd
                .try_clone()
                .with_context(|| format!("cannot open {}", self.path.display()))?,
            path: self.path.clone(),
        })
    }

    /// Makes directory `name` (`mode`, less the umask) and opens it for reading, so that
    /// its own attributes can be set through the handle ([`Dir::set_own_attrs`]).
    pub fn create_dir(&self, name: &[u8], mode: u32) -> Result<Dir> {
        self.make_dir(name, mode, false)
    }

    /// Directory `name`, made (`mode`, less the umask) unless it exists, opened for reading
    /// like [`Dir::create_dir`]: for a tree whose folders several threads may make. A
    /// symlink or anything else there is refused.
    pub fn create_or_open_dir(&self, name: &[u8], mode: u32) -> Result<Dir> {
        self.make_dir(name, mode, true)
    }

    fn make_dir(&self, name: &[u8], mode: u32, may_exist: bool) -> Result<Dir> {
        let c = self::name(name)?;
        match retry(|| unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), mode) }) {
            Err(e) if !(may_exist && e.raw_os_error() == Some(libc::EEXIST)) => {
                return Err(self.creation_error(e, "", name))
            }
            _ => {}
        }
        let path = self.show(name);
        let fd = openat(
            self.fd.as_raw_fd(),
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )
        .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Dir { fd, path })
    }

    /// Makes directory `name`.
    pub fn mkdir(&self, name: &[u8], mode: u32) -> Result<()> {
        let c = self::name(name)?;
        retry(|| unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), mode) })
            .map(drop)
            .map_err(|e| self.creation_error(e, "", name))
    }

    /// The error of creating entry `name` (`kind`: "" or "symlink "). `ENOENT` there can
    /// only mean that this folder itself was removed since it was opened (the name alone
    /// is looked up, in a folder held open): by another process, which is said plainly.
    fn creation_error(&self, e: io::Error, kind: &str, name: &[u8]) -> anyhow::Error {
        let what = format!("cannot create {kind}{}", self.show(name).display());
        let mut st = MaybeUninit::<libc::stat>::uninit();
        let removed = e.kind() == io::ErrorKind::NotFound
            && unsafe { libc::fstat(self.fd.as_raw_fd(), st.as_mut_ptr()) } == 0
            && unsafe { st.assume_init() }.st_nlink == 0;
        if removed {
            anyhow!(
                "{what}: folder {} was removed by another process while dupmirror was \
                 writing in it",
                self.path.display()
            )
        } else {
            anyhow::Error::from(e).context(what)
        }
    }

    /// The subdirectory `name`, made (`mode`) when missing; a symlink or file there is
    /// refused, not replaced.
    pub fn child_or_create(&self, name: &[u8], mode: u32) -> Result<Lookup> {
        match self.child(name)? {
            Lookup::Missing => match self.mkdir(name, mode) {
                Ok(()) => self.child(name),
                // Made by someone else in between: look again.
                Err(_) if self.stat(name)?.is_some() => self.child(name),
                Err(e) => Err(e),
            },
            other => Ok(other),
        }
    }

    /// Creates a new regular file, private (0600) until its final mode is set.
    pub fn create_file(&self, name: &[u8]) -> Result<File> {
        self.open_private(name, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)
    }

    /// Regular file `name` for writing, made private (0600) unless it exists, never
    /// truncated: for a file whose parts several threads write. Anything but a regular
    /// file there is refused before it is opened for writing (never a fifo or a device).
    pub fn create_or_join_file(&self, name: &[u8]) -> Result<File> {
        let c = self::name(name)?;
        let shown = || self.show(name).display().to_string();
        loop {
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
            match openat(self.fd.as_raw_fd(), &c, flags, 0o600) {
                Ok(fd) => return Ok(File::from(fd)),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(self.creation_error(e, "", name)),
            }
            // Made by another thread: reopen that very inode, once it is known regular.
            let held = match openat(self.fd.as_raw_fd(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot open {}", shown())),
            };
            let st =
                fstat(held.as_raw_fd()).with_context(|| format!("cannot inspect {}", shown()))?;
            if st.kind != Kind::Regular {
                bail!("cannot write {}: {} is there", shown(), st.kind.described());
            }
            let proc_path = CString::new(format!("/proc/self/fd/{}", held.as_raw_fd()))
                .map_err(|_| anyhow!("NUL in a path"))?;
            let fd = openat(libc::AT_FDCWD, &proc_path, libc::O_WRONLY, 0)
                .with_context(|| format!("cannot open {}", shown()))?;
            return Ok(File::from(fd));
        }
    }

    /// Creates (or truncates) a private scratch file for reading and writing.
    pub fn create_scratch(&self, name: &[u8]) -> Result<File> {
        self.open_private(name, libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC)
    }

    /// Opens (creating, private) file `name` for writing without truncating it: a lock.
    pub fn create_or_open(&self, name: &[u8]) -> Result<File> {
        self.open_private(name, libc::O_RDWR | libc::O_CREAT)
    }

    fn open_private(&self, name: &[u8], flags: libc::c_int) -> Result<File> {
        let c = self::name(name)?;
        let fd = openat(self.fd.as_raw_fd(), &c, flags | libc::O_NOFOLLOW, 0o600)
            .map_err(|e| self.creation_error(e, "", name))?;
        Ok(File::from(fd))
    }

    /// Opens regular file `name` for reading. Anything else there (a symlink, a fifo, a
    /// device) is reported as its kind and never opened for reading.
    pub fn open_file(&self, name: &[u8]) -> Result<std::result::Result<File, Option<Kind>>> {
        let c = self::name(name)?;
        let show = || self.show(name).display().to_string();
        let pathfd = match openat(self.fd.as_raw_fd(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Err(None)),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", show())),
        };
        let st = fstat(pathfd.as_raw_fd()).with_context(|| format!("cannot inspect {}", show()))?;
        if st.kind != Kind::Regular {
            return Ok(Err(Some(st.kind)));
        }
        let proc = CString::new(format!("/proc/self/fd/{}", pathfd.as_raw_fd()))?;
        let fd = openat(libc::AT_FDCWD, &proc, libc::O_RDONLY, 0)
            .with_context(|| format!("cannot read {}", show()))?;
        Ok(Ok(File::from(fd)))
    }

    /// Reads a file that must be regular, with one error line otherwise.
    pub fn read_file(&self, name: &[u8]) -> Result<File> {
        match self.open_file(name)? {
            Ok(f) => Ok(f),
            Err(None) => Err(anyhow!("{} does not exist", self.show(name).display())),
            Err(Some(k)) => Err(anyhow!(
                "{} is {}, not a regular file",
                self.show(name).display(),
                k.described()
            )),
        }
    }

    /// The target of symlink `name`.
    pub fn read_link(&self, name: &[u8]) -> Result<Vec<u8>> {
        let c = self::name(name)?;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = unsafe {
                libc::readlinkat(
                    self.fd.as_raw_fd(),
                    c.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("cannot read symlink {}", self.show(name).display()));
            }
            let n = n as usize;
            if n < buf.len() {
                buf.truncate(n);
                return Ok(buf);
            }
            buf.resize(buf.len() * 2, 0);
        }
    }

    pub fn symlink(&self, name: &[u8], target: &[u8]) -> Result<()> {
        let c = self::name(name)?;
        let t = CString::new(target).map_err(|_| anyhow!("a symlink target holds a NUL byte"))?;
        retry(|| unsafe { libc::symlinkat(t.as_ptr(), self.fd.as_raw_fd(), c.as_ptr()) })
            .map(drop)
            .map_err(|e| self.creation_error(e, "symlink ", name))
    }

    /// Makes a fifo or device node (`kind` is `S_IFIFO`, `S_IFCHR` or `S_IFBLK`), private.
    pub fn mknod(&self, name: &[u8], kind: libc::mode_t, dev: libc::dev_t) -> Result<()> {
        let c = self::name(name)?;
        let label = match kind {
            libc::S_IFIFO => "fifo ",
            libc::S_IFCHR => "character device ",
            _ => "block device ",
        };
        retry(|| unsafe { libc::mknodat(self.fd.as_raw_fd(), c.as_ptr(), kind | 0o600, dev) })
            .map(drop)
            .map_err(|e| self.creation_error(e, label, name))
    }

    /// Moves entry `name` to `to`/`to_name`, replacing what is there (an empty directory,
    /// or anything not a directory).
    pub fn rename(&self, name: &[u8], to: &Dir, to_name: &[u8]) -> Result<()> {
        self.rename_flags(name, to, to_name, 0).with_context(|| {
            format!(
                "cannot move {} to {}",
                self.show(name).display(),
                to.show(to_name).display()
            )
        })
    }

    /// Moves entry `name` to `to`/`to_name` only if nothing is there; `Ok(false)` if
    /// something is.
    pub fn rename_new(&self, name: &[u8], to: &Dir, to_name: &[u8]) -> Result<bool> {
        match self.rename_flags(name, to, to_name, libc::RENAME_NOREPLACE) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "cannot move {} to {}",
                    self.show(name).display(),
                    to.show(to_name).display()
                )
            }),
        }
    }

    /// Swaps entries `name` and `to`/`to_name` in one step (`RENAME_EXCHANGE`): both must
    /// exist. `Ok(false)` when the file system cannot (then nothing changed).
    pub fn exchange(&self, name: &[u8], to: &Dir, to_name: &[u8]) -> Result<bool> {
        match self.rename_flags(name, to, to_name, libc::RENAME_EXCHANGE) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
            Err(e) => Err(e).with_context(|| {
                format!(
                    "cannot swap {} and {}",
                    self.show(name).display(),
                    to.show(to_name).display()
                )
            }),
        }
    }

    fn rename_flags(&self, name: &[u8], to: &Dir, to_name: &[u8], flags: u32) -> io::Result<()> {
        let bad = |e: anyhow::Error| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:#}"));
        let (a, b) = (
            self::name(name).map_err(bad)?,
            self::name(to_name).map_err(bad)?,
        );
        retry(|| unsafe {
            libc::renameat2(
                self.fd.as_raw_fd(),
                a.as_ptr(),
                to.fd.as_raw_fd(),
                b.as_ptr(),
                flags,
            )
        })
        .map(drop)
    }

    /// Removes entry `name`, a whole tree for a directory, never following a symlink.
    /// Nothing there is not an error.
    pub fn remove(&self, name: &[u8]) -> Result<()> {
        let c = self::name(name)?;
        let ctx = || format!("cannot remove {}", self.show(name).display());
        // A few rounds: something may be swapped in between looking and removing.
        for _ in 0..8 {
            let Some(st) = self.stat(name)? else {
                return Ok(());
            };
            let flags = if st.kind == Kind::Dir {
                match self.child(name)? {
                    Lookup::Found(d) => d.clear()?,
                    Lookup::Missing => return Ok(()),
                    Lookup::Blocked(_) => continue,
                }
                libc::AT_REMOVEDIR
            } else {
                0
            };
            match retry(|| unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), flags) }) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EISDIR) | Some(libc::ENOTDIR) | Some(libc::ENOTEMPTY)
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e).with_context(ctx),
            }
        }
        Err(anyhow!("{}: it keeps changing while being removed", ctx()))
    }

    /// Removes everything inside this directory.
    pub fn clear(&self) -> Result<()> {
        self.for_each_name(|n| self.remove(n))
    }

    /// Removes the empty directory `name`, leaving anything else alone; `Ok(false)` when
    /// it is not there or not empty.
    pub fn remove_empty_dir(&self, name: &[u8]) -> Result<bool> {
        let c = self::name(name)?;
        match retry(|| unsafe {
            libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR)
        }) {
            Ok(_) => Ok(true),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) =>
            {
                Ok(false)
            }
            Err(e) => {
                Err(e).with_context(|| format!("cannot remove {}", self.show(name).display()))
            }
        }
    }

    /// Calls `f` with every name in this directory (without `.` and `..`), unsorted, read
    /// [`NAME_BATCH`] at a time: memory is one batch however many entries the directory
    /// holds. `f` may remove or rename away the name it is given (reading on after an entry
    /// already read is gone is well defined, as `rm -r` relies on), not add entries. A
    /// directory that fits in one batch is closed before `f` runs, so removing a deep tree
    /// holds one descriptor per level, as before.
    pub fn for_each_name(&self, f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        self.for_each_name_in(NAME_BATCH, f)
    }

    fn for_each_name_in(&self, size: usize, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let mut names = Some(self.names()?);
        while let Some(reading) = names.as_mut() {
            let batch = reading.by_ref().take(size).collect::<Result<Vec<_>>>()?;
            if batch.len() < size {
                names = None;
            }
            for name in &batch {
                f(name)?;
            }
        }
        Ok(())
    }

    /// The names in this directory (without `.` and `..`), unsorted, each read as it is
    /// asked for: nothing is gathered here.
    pub fn names(&self) -> Result<impl Iterator<Item = Result<Vec<u8>>> + '_> {
        let ctx = || format!("cannot list {}", self.path.display());
        let fd = self.open_readable().with_context(ctx)?;
        let d = nix::dir::Dir::from_fd(fd.as_raw_fd())
            .map_err(io::Error::from)
            .with_context(ctx)?;
        // `nix::dir::Dir` closes the descriptor it was given.
        std::mem::forget(fd);
        Ok(d.into_iter().filter_map(move |e| match e {
            Err(e) => Some(Err(io::Error::from(e)).with_context(ctx)),
            Ok(e) => {
                let n = e.file_name().to_bytes();
                (n != b"." && n != b"..").then(|| Ok(n.to_vec()))
            }
        }))
    }

    /// Sets the owner of entry `name` (a symlink itself, not its target).
    pub fn chown(&self, name: &[u8], uid: u32, gid: u32) -> Result<()> {
        let c = self::name(name)?;
        retry(|| unsafe {
            libc::fchownat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
        .with_context(|| format!("cannot set the owner of {}", self.show(name).display()))
    }

    /// Sets the permission bits of entry `name`, which must not be a symlink. The entry is
    /// pinned without following it (O_PATH|O_NOFOLLOW) and changed through its descriptor's
    /// /proc entry, which names exactly that inode: what glibc's fchmodat does for
    /// AT_SYMLINK_NOFOLLOW. (fchmodat2 does it in one call from Linux 6.6, but the strace
    /// the crash tests rely on cannot see it yet.)
    pub fn chmod(&self, name: &[u8], mode: u32) -> Result<()> {
        let c = self::name(name)?;
        let ctx = || format!("cannot set the mode of {}", self.show(name).display());
        let fd = openat(self.fd.as_raw_fd(), &c, libc::O_PATH | libc::O_NOFOLLOW, 0)
            .with_context(ctx)?;
        if fstat(fd.as_raw_fd()).with_context(ctx)?.kind == Kind::Symlink {
            return Err(anyhow!("{}: it is a symlink", ctx()));
        }
        let proc = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        retry(|| unsafe { libc::chmod(proc.as_ptr(), mode) })
            .map(drop)
            .with_context(ctx)
    }

    /// Sets the mtime of entry `name` (a symlink itself), leaving the atime alone.
    pub fn set_mtime(&self, name: &[u8], mtime: i64) -> Result<()> {
        let c = self::name(name)?;
        let times = mtime_only(mtime);
        retry(|| unsafe {
            libc::utimensat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
        .with_context(|| format!("cannot set the mtime of {}", self.show(name).display()))
    }

    /// Owner, mode and mtime of this directory itself (a handle from [`Dir::open_path`] or
    /// [`Dir::create_dir`]).
    pub fn set_own_attrs(&self, owner: Option<(u32, u32)>, mode: u32, mtime: i64) -> Result<()> {
        let fd = self.fd.as_raw_fd();
        let ctx = || format!("cannot set attributes of {}", self.path.display());
        if let Some((uid, gid)) = owner {
            retry(|| unsafe { libc::fchown(fd, uid, gid) }).with_context(ctx)?;
        }
        retry(|| unsafe { libc::fchmod(fd, mode) }).with_context(ctx)?;
        self.set_own_mtime(mtime)
    }

    /// The permission bits of this directory itself.
    pub fn chmod_self(&self, mode: u32) -> Result<()> {
        retry(|| unsafe { libc::fchmod(self.fd.as_raw_fd(), mode) })
            .map(drop)
            .with_context(|| format!("cannot set the mode of {}", self.path.display()))
    }

    /// The mtime of this directory itself.
    pub fn set_own_mtime(&self, mtime: i64) -> Result<()> {
        let times = mtime_only(mtime);
        retry(|| unsafe { libc::futimens(self.fd.as_raw_fd(), times.as_ptr()) })
            .map(drop)
            .with_context(|| format!("cannot set the mtime of {}", self.path.display()))
    }

    /// The same directory opened for reading: a handle from [`Dir::child`] or
    /// [`Dir::lookup`] is `O_PATH`, which cannot be locked.
    pub fn reopen_readable(&self) -> Result<Dir> {
        let fd = self
            .open_readable()
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        Ok(Dir {
            fd,
            path: self.path.clone(),
        })
    }

    /// A readable descriptor of this directory (a handle may be `O_PATH`).
    fn open_readable(&self) -> io::Result<OwnedFd> {
        openat(
            self.fd.as_raw_fd(),
            c".",
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
    }

    /// Makes the entries of this directory durable (renames and creations in it).
    pub fn sync(&self) -> Result<()> {
        let ctx = || format!("cannot sync {}", self.path.display());
        let fd = self.open_readable().with_context(ctx)?;
        File::from(fd).sync_all().with_context(ctx)
    }

    /// Flushes the whole file system this directory is on.
    pub fn sync_filesystem(&self) -> Result<()> {
        self.file_system()?
            .sync()
            .with_context(|| format!("cannot sync the file system of {}", self.path.display()))
    }

    /// A handle for calls on the whole file system this directory is on.
    pub fn file_system(&self) -> Result<FileSystem> {
        let fd = self
            .open_readable()
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        Ok(FileSystem(fd))
    }

    /// Whether this directory is on a file system kept in memory (tmpfs, ramfs): one that
    /// no disk is behind. False when it cannot be told.
    pub fn in_memory(&self) -> bool {
        let mut st = MaybeUninit::<libc::statfs>::uninit();
        if unsafe { libc::fstatfs(self.fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
            return false;
        }
        // linux/magic.h; f_type's width differs between targets, the magic numbers do not.
        const TMPFS_MAGIC: u32 = 0x0102_1994;
        const RAMFS_MAGIC: u32 = 0x8584_58f6;
        let kind = unsafe { st.assume_init() }.f_type as u32;
        [TMPFS_MAGIC, RAMFS_MAGIC].contains(&kind)
    }

    /// Takes an exclusive `flock` on this directory (a handle from [`Dir::open_path`]),
    /// held until the handle is dropped. `Ok(false)` when another process holds it and
    /// `wait` is off.
    pub fn lock(&self, wait: bool) -> Result<bool> {
        let op = if wait {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        match retry(|| unsafe { libc::flock(self.fd.as_raw_fd(), op) }) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot lock {}", self.path.display())),
        }
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn mtime_only(mtime: i64) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: mtime,
            tv_nsec: 0,
        },
    ]
}

/// The mtime of an open file, leaving the atime alone.
pub fn set_file_mtime(file: &File, mtime: i64) -> io::Result<()> {
    let times = mtime_only(mtime);
    retry(|| unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};
    use std::os::unix::fs::symlink;

    #[test]
    fn in_memory_tells_tmpfs_from_other_file_systems() {
        assert!(Dir::open_path(Path::new("/dev/shm")).unwrap().in_memory());
        assert!(!Dir::open_path(Path::new("/proc")).unwrap().in_memory());
    }

    fn idx(s: &str) -> Vec<Vec<u8>> {
        s.split('/').map(|c| c.as_bytes().to_vec()).collect()
    }

    /// A tree with an escape hatch: `in/link` points outside, `in/file` is a file.
    fn bed() -> (tempfile::TempDir, Dir) {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("in/a/b")).unwrap();
        std::fs::create_dir_all(t.path().join("out/x")).unwrap();
        symlink(t.path().join("out"), t.path().join("in/link")).unwrap();
        symlink("../out", t.path().join("in/a/rel")).unwrap();
        std::fs::write(t.path().join("in/file"), b"f").unwrap();
        let d = Dir::open_path(&t.path().join("in")).unwrap();
        (t, d)
    }

    fn classify(l: Lookup) -> String {
        match l {
            Lookup::Found(_) => "found".into(),
            Lookup::Missing => "missing".into(),
            Lookup::Blocked(b) => format!("blocked at {} by {:?}", b.depth, b.kind),
        }
    }

    #[test]
    fn lookups_never_pass_a_symlink_with_or_without_openat2() {
        let (_t, d) = bed();
        let cases = [
            ("a/b", "found"),
            ("a/nope/c", "missing"),
            ("link", "blocked at 1 by Symlink"),
            ("link/x", "blocked at 1 by Symlink"),
            ("a/rel/x", "blocked at 2 by Symlink"),
            ("file/x", "blocked at 1 by Regular"),
        ];
        for (rel, want) in cases {
            assert_eq!(classify(d.lookup(&idx(rel)).unwrap()), want, "{rel}");
            assert_eq!(
                classify(d.lookup_by_components(&idx(rel)).unwrap()),
                want,
                "{rel} by components"
            );
        }
        for bad in ["..", "a/../..", "."] {
            assert!(d.lookup(&idx(bad)).is_err(), "{bad}");
        }
    }

    /// What several threads share: a folder or a regular file is joined, anything else is
    /// refused without being opened for writing (a fifo would block, a device be written).
    #[test]
    fn shared_entries_are_joined_only_when_they_are_what_they_should_be() {
        let (t, d) = bed();
        let mut made = d.create_or_join_file(b"shared").unwrap();
        made.write_all(b"head").unwrap();
        let mut joined = d.create_or_join_file(b"shared").unwrap();
        joined.seek(std::io::SeekFrom::Start(8)).unwrap();
        joined.write_all(b"tail").unwrap();
        assert_eq!(
            std::fs::read(t.path().join("in/shared")).unwrap(),
            b"head\0\0\0\0tail"
        );
        let fifo = CString::new(t.path().join("in/fifo").as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        for refused in [&b"fifo"[..], b"link", b"a"] {
            assert!(d.create_or_join_file(refused).is_err(), "{refused:?}");
        }
        d.create_or_open_dir(b"a", 0o700).unwrap();
        d.create_or_open_dir(b"new", 0o700).unwrap();
        assert!(d.create_or_open_dir(b"link", 0o700).is_err());
        assert!(d.create_or_open_dir(b"shared", 0o700).is_err());
        assert!(
            d.create_dir(b"a", 0o700).is_err(),
            "create_dir stays exclusive"
        );
    }

    #[test]
    fn operations_act_on_the_entry_never_on_a_link_target() {
        let (t, d) = bed();
        let outside = t.path().join("out/x");
        let before = std::fs::metadata(&outside).unwrap();
        d.set_mtime(b"link", 5).unwrap();
        d.chown(b"link", before.uid(), before.gid()).unwrap();
        assert!(d.chmod(b"link", 0o700).is_err(), "chmod of a symlink");
        assert!(matches!(
            d.open_file(b"link").unwrap(),
            Err(Some(Kind::Symlink))
        ));
        assert!(d.create_file(b"link").is_err(), "O_EXCL|O_NOFOLLOW");
        d.remove(b"link").unwrap();
        let after = std::fs::metadata(&outside).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (after.mtime(), after.mode()),
            (before.mtime(), before.mode())
        );
        assert!(outside.exists() && !t.path().join("in/link").exists());
        for bad in [&b".."[..], b".", b"a/b", b"", b"x\0y"] {
            assert!(d.stat(bad).is_err(), "{bad:?}");
            assert!(d.remove(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn new_objects_are_private_until_finished() {
        let (t, d) = bed();
        let f = d.create_file(b"new").unwrap();
        drop(f);
        d.mkdir(b"newdir", 0o700).unwrap();
        use std::os::unix::fs::MetadataExt;
        let mode = |n: &str| {
            std::fs::metadata(t.path().join("in").join(n))
                .unwrap()
                .mode()
        };
        assert_eq!(mode("new") & 0o777, 0o600);
        assert_eq!(mode("newdir") & 0o777, 0o700);
        d.chmod(b"new", 0o4755).unwrap();
        assert_eq!(mode("new") & 0o7777, 0o4755);
    }

    #[test]
    fn removing_a_tree_does_not_follow_links_inside_it() {
        let (t, d) = bed();
        d.remove(b"a").unwrap();
        assert!(!t.path().join("in/a").exists());
        assert!(t.path().join("out/x").is_dir());
        assert!(matches!(
            Dir::open_path(&t.path().join("in/link")),
            Err(OpenError::NotDir(Kind::Symlink))
        ));
    }

    #[test]
    fn a_folder_wider_than_a_batch_is_read_and_removed_whole() {
        let t = tempfile::tempdir().unwrap();
        let wide = t.path().join("wide");
        // Files past several batches of 10, and a folder among them wider than one too.
        for n in 0..37 {
            std::fs::create_dir_all(wide.join(format!("d{n}"))).unwrap();
            std::fs::write(wide.join(format!("f{n}")), b"x").unwrap();
            std::fs::write(wide.join(format!("d0/g{n}")), b"y").unwrap();
        }
        symlink(t.path(), wide.join("up")).unwrap();
        let root = Dir::open_path(t.path()).unwrap();
        let Lookup::Found(w) = root.child(b"wide").unwrap() else {
            panic!("wide is a folder")
        };
        let mut seen = std::collections::BTreeSet::new();
        w.for_each_name_in(10, |n| {
            assert!(seen.insert(n.to_vec()), "{n:?} read twice");
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 2 * 37 + 1, "every name");
        // Removing what was read, batch by batch, while reading on.
        let mut removed = 0;
        w.for_each_name_in(10, |n| {
            removed += 1;
            w.remove(n)
        })
        .unwrap();
        assert_eq!(removed, 2 * 37 + 1);
        drop(w);
        root.remove(b"wide").unwrap();
        assert!(!wide.exists());
        assert!(t.path().is_dir(), "the symlink's target stays");
    }
}
