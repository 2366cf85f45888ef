//! Building and changing the source trees that upstream duplicity backs up: files, dirs,
//! symlinks, fifos and devices under raw byte paths, with pinned mtimes so that every
//! content change is a change duplicity sees and every tree is reproducible.

use super::lab::remove_tree;
use super::os;
use super::process::run_tool;
use super::time::T0;
use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

pub fn osstr(rel: &[u8]) -> &OsStr {
    OsStr::from_bytes(rel)
}

pub fn path_bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().to_os_string().into_vec()
}

/// Read a file into bytes, with the path in the panic message.
pub fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Helpers to build and change a tree under `root`; paths are raw bytes relative to it.
/// Every regular file written gets the mtime `now` (set per backup step), so duplicity always
/// sees a content change as a change.
pub struct Fs {
    pub root: PathBuf,
    now: Cell<i64>,
}

impl Fs {
    pub fn new(root: &Path) -> Fs {
        Fs {
            root: root.to_path_buf(),
            now: Cell::new(T0 - 100_000),
        }
    }

    pub fn set_now(&self, t: i64) {
        self.now.set(t)
    }

    pub fn now(&self) -> i64 {
        self.now.get()
    }

    pub fn path(&self, rel: impl AsRef<[u8]>) -> PathBuf {
        let rel = rel.as_ref();
        if rel.is_empty() || rel == b"." {
            return self.root.clone();
        }
        self.root.join(osstr(rel))
    }

    fn parent(&self, rel: &[u8]) {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", d.display()));
        }
    }

    /// Write a regular file (replacing whatever is there) with mtime `now`.
    pub fn write(&self, rel: impl AsRef<[u8]>, data: &[u8]) {
        self.write_at(rel, data, self.now())
    }

    pub fn write_at(&self, rel: impl AsRef<[u8]>, data: &[u8], mtime: i64) {
        let rel = rel.as_ref();
        self.parent(rel);
        let p = self.path(rel);
        if fs::symlink_metadata(&p).is_ok_and(|m| !m.is_file()) {
            self.remove(rel);
        }
        fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        self.touch(rel, mtime);
    }

    /// Rewrite a file's content through `f` (mtime `now`).
    pub fn modify(&self, rel: &str, f: impl FnOnce(&mut Vec<u8>)) {
        let mut data = read(&self.path(rel));
        f(&mut data);
        self.write(rel, &data);
    }

    pub fn mkdir(&self, rel: impl AsRef<[u8]>) {
        let p = self.path(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", p.display()));
    }

    pub fn symlink(&self, rel: impl AsRef<[u8]>, target: impl AsRef<[u8]>) {
        let rel = rel.as_ref();
        self.parent(rel);
        self.remove(rel);
        let p = self.path(rel);
        std::os::unix::fs::symlink(osstr(target.as_ref()), &p)
            .unwrap_or_else(|e| panic!("symlink {}: {e}", p.display()));
    }

    pub fn fifo(&self, rel: impl AsRef<[u8]>) {
        let rel = rel.as_ref();
        self.parent(rel);
        self.remove(rel);
        run_tool("mkfifo", [self.path(rel)]);
        self.touch(rel, self.now());
    }

    /// `mknod` (root only): `kind` is "c" or "b".
    pub fn mknod(&self, rel: impl AsRef<[u8]>, kind: &str, major: u32, minor: u32) {
        let rel = rel.as_ref();
        self.parent(rel);
        self.remove(rel);
        let args: [OsString; 4] = [
            self.path(rel).into_os_string(),
            os(kind),
            os(major.to_string()),
            os(minor.to_string()),
        ];
        run_tool("mknod", args);
        self.touch(rel, self.now());
    }

    pub fn chmod(&self, rel: impl AsRef<[u8]>, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path(rel);
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
    }

    /// lchown (root only).
    pub fn chown(&self, rel: impl AsRef<[u8]>, uid: u32, gid: u32) {
        let p = self.path(rel);
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("lchown {}: {e}", p.display()));
    }

    /// Set the mtime of `rel` itself (symlinks not followed).
    pub fn touch(&self, rel: impl AsRef<[u8]>, mtime: i64) {
        let args: [OsString; 5] = [
            os("-h"),
            os("-m"),
            os(format!("-d@{mtime}")),
            os("--"),
            self.path(rel).into_os_string(),
        ];
        run_tool("touch", args);
    }

    /// Give every directory of the tree, the root included, the mtime `now`: what changes
    /// made to a directory's entries left there is then the same on every run.
    pub fn settle_dirs(&self) {
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let rd = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            for e in rd {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
            }
            let f = fs::File::open(&dir).unwrap();
            let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.now() as u64);
            f.set_modified(when)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
    }

    /// Remove `rel` (recursively for directories, never following symlinks); no-op if absent.
    pub fn remove(&self, rel: impl AsRef<[u8]>) {
        remove_tree(&self.path(rel))
    }
}

/// Deterministic pseudo-random (incompressible) bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}
