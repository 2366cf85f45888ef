//! A local repository file pinned by a Linux read lease, so that a compressed volume can be
//! hashed once before it is decoded and then decoded from the same descriptor, instead of
//! being hashed a second time as it is decoded (the guard against a file changed between
//! the check and the read). SHA1 was a fifth of a bootstrap's CPU time; this halves it.
//!
//! ```text
//! pin(file):  its file system is one the kernel alone writes (tmpfs, ext2/3/4, xfs,
//!                 btrfs, f2fs), else None
//!             fcntl(F_SETLEASE, F_RDLCK) on the read-only descriptor, else None: the kernel
//!                 refuses while anyone holds the file open for writing, when the process
//!                 neither owns the file nor has CAP_LEASE, or when leases are off
//! read(buf):  read(2), then fcntl(F_GETLEASE): anything but F_RDLCK fails the read
//! ```
//!
//! Why a read that passes returns the bytes the lease started with: once the lease is
//! taken, any open of the file for writing and any truncate first breaks it (F_GETLEASE
//! then reports F_UNLCK at once) and is held back by the kernel until the lease is
//! released or `/proc/sys/fs/lease-break-time` runs out; a writer that held the file before
//! made the lease impossible. So while F_GETLEASE still says F_RDLCK after a read, nothing
//! can have changed the file since the lease began, and every byte read (the hash pass
//! and then the decode) is that one content. A writer that comes along is refused nothing:
//! it waits until the reader gives up, which it does at its next read.
//!
//! Limits: Linux only. The kernel knows only the writers on this machine, hence the list of
//! file systems (a network or FUSE file system can change under a lease: those are hashed
//! twice, as is any file the lease is refused for); root writing to the block device under
//! the file system is not seen. A lease break is announced with SIGIO, whose default action
//! kills the process: [`pin`] first installs a handler that does nothing (a handler, unlike
//! an ignored signal, is not inherited by the programs dupmirror runs).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::sync::Once;

/// File systems whose files change only through this machine's kernel.
const LOCAL_FILE_SYSTEMS: [libc::c_long; 5] = [
    libc::TMPFS_MAGIC as libc::c_long,
    libc::EXT4_SUPER_MAGIC as libc::c_long, // ext2 and ext3 too
    libc::XFS_SUPER_MAGIC as libc::c_long,
    libc::BTRFS_SUPER_MAGIC as libc::c_long,
    libc::F2FS_SUPER_MAGIC as libc::c_long,
];

/// A file read under a read lease: every read fails once the lease is broken.
pub struct LeasedFile {
    file: File,
}

/// Takes a read lease on `file` (opened read-only), or gives it back when the lease cannot
/// be had (see the module comment): then the caller cannot rely on the file staying as it
/// is.
pub fn pin(file: File) -> Result<LeasedFile, File> {
    if !on_local_file_system(&file) {
        return Err(file);
    }
    static SIGIO_HANDLED: Once = Once::new();
    SIGIO_HANDLED.call_once(handle_sigio);
    // SAFETY: fcntl on a descriptor this function owns; no pointers involved.
    let taken = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) };
    if taken == 0 {
        Ok(LeasedFile { file })
    } else {
        Err(file)
    }
}

fn on_local_file_system(file: &File) -> bool {
    // SAFETY: `stat` is a plain C struct that fstatfs fills in.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a pointer to a live, writable statfs.
    let ok = unsafe { libc::fstatfs(file.as_raw_fd(), &mut stat) } == 0;
    ok && LOCAL_FILE_SYSTEMS.contains(&(stat.f_type as libc::c_long))
}

/// Installs a SIGIO handler that does nothing, with SA_RESTART so that no call is
/// interrupted by it. Left alone if the process already has a handler for SIGIO.
fn handle_sigio() {
    extern "C" fn ignore(_: libc::c_int) {}
    // SAFETY: sigaction with a zeroed (empty mask) struct and a handler that touches
    // nothing, which is async-signal-safe.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGIO, std::ptr::null(), &mut old) != 0
            || old.sa_sigaction != libc::SIG_DFL
        {
            return;
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGIO, &action, std::ptr::null_mut());
    }
}

impl LeasedFile {
    /// Whether the lease still holds: no one has begun to open the file for writing or to
    /// truncate it since it was taken.
    pub fn held(&self) -> bool {
        // SAFETY: fcntl on a descriptor this value owns; no pointers involved.
        let lease = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_GETLEASE) };
        lease == libc::F_RDLCK
    }

    /// The file's size now (it cannot change while the lease holds).
    pub fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Back to the first byte, for the decode after the hash pass.
    pub fn rewind(&mut self) -> io::Result<()> {
        self.file.seek(SeekFrom::Start(0)).map(|_| ())
    }
}

impl Read for LeasedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        if !self.held() {
            return Err(io::Error::other(
                "the file was opened for writing or truncated while being read \
                 (its read lease broke); run again once nothing writes to the repository",
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    /// A file on tmpfs (a file system leases are taken on), owned by this process's user.
    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let path = dir.path().join("volume");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    /// Opens `path` for writing on another thread: the open waits while a lease holds.
    fn writer(path: &Path) -> std::thread::JoinHandle<std::io::Result<File>> {
        let path = path.to_path_buf();
        std::thread::spawn(move || OpenOptions::new().write(true).open(path))
    }

    /// Waits (without a deadline that could fail a slow run) until `held` turns false.
    fn until_broken(leased: &LeasedFile) {
        for _ in 0..6000 {
            if !leased.held() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the lease was never broken");
    }

    #[test]
    fn a_writer_opening_the_file_fails_the_next_read_and_waits_for_the_reader() {
        let (_dir, path) = file_with(&[7u8; 4096]);
        let mut leased = pin(File::open(&path).unwrap()).map_err(|_| ()).unwrap();
        let mut buf = [0u8; 1024];
        assert_eq!(leased.read(&mut buf).unwrap(), 1024);
        let opening = writer(&path);
        until_broken(&leased);
        let err = leased.read(&mut buf).unwrap_err();
        assert!(err.to_string().contains("opened for writing"), "{err}");
        // The writer could not write while the lease held: it gets the file once the
        // reader lets go.
        assert!(!opening.is_finished());
        drop(leased);
        opening.join().unwrap().unwrap().write_all(b"x").unwrap();
    }

    #[test]
    fn a_truncate_breaks_the_lease_too() {
        let (_dir, path) = file_with(&[7u8; 4096]);
        let leased = pin(File::open(&path).unwrap()).map_err(|_| ()).unwrap();
        let truncating = {
            let path = path.clone();
            std::thread::spawn(move || nix::unistd::truncate(&path, 0))
        };
        until_broken(&leased);
        drop(leased);
        truncating.join().unwrap().unwrap();
    }

    #[test]
    fn a_file_open_for_writing_cannot_be_pinned() {
        let (_dir, path) = file_with(b"data");
        let _writing = OpenOptions::new().append(true).open(&path).unwrap();
        assert!(pin(File::open(&path).unwrap()).is_err());
    }

    #[test]
    fn a_pinned_file_reads_whole_twice() {
        let (_dir, path) = file_with(b"the same bytes");
        let mut leased = pin(File::open(&path).unwrap()).map_err(|_| ()).unwrap();
        let mut first = Vec::new();
        leased.read_to_end(&mut first).unwrap();
        leased.rewind().unwrap();
        let mut second = Vec::new();
        leased.read_to_end(&mut second).unwrap();
        assert_eq!(
            (first.as_slice(), second.as_slice()),
            (&b"the same bytes"[..], &b"the same bytes"[..])
        );
        assert!(leased.held());
    }
}
