//! Forged repositories: duplicity sets written byte by byte by the tests themselves.
//!
//! The fault tests need inputs that upstream duplicity never writes: `..` and absolute entry
//! names, NUL bytes, symlinks to outside DEST, impossible declared sizes, deltas with bad
//! opcodes, volumes cut in the middle of an entry. Writing the tar headers by hand (ustar
//! fields plus a PAX `x` record when a name does not fit or is not plain ASCII) gives full
//! control over every byte; `Forge` then stores the volumes (gzip or plain) and a manifest
//! that carries their correct SHA1, so a case gets past the hash check whenever the point of
//! the case is what lies behind it. Nothing here needs upstream duplicity, so these tests
//! run everywhere and fast.
#![allow(dead_code)]

use super::compact_time;
use sha1::{Digest, Sha1};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One tar entry, as raw as the tests need it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The full entry name, e.g. `snapshot/a/b` or `diff/x`.
    pub name: Vec<u8>,
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub data: Vec<u8>,
    /// The size written in the header, when it should differ from `data.len()`.
    pub declared_size: Option<u64>,
    pub link: Vec<u8>,
    pub dev: (u32, u32),
    /// Force a PAX record for the name even when it would fit the ustar field.
    pub pax_name: bool,
}

/// Modification time of every forged object unless a test says otherwise.
pub const MTIME: i64 = 1_650_000_000;

impl Entry {
    pub fn raw(name: impl AsRef<[u8]>, typeflag: u8) -> Entry {
        Entry {
            name: name.as_ref().to_vec(),
            typeflag,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: MTIME,
            data: Vec::new(),
            declared_size: None,
            link: Vec::new(),
            dev: (0, 0),
            pax_name: false,
        }
    }

    fn snap(path: &[u8], typeflag: u8) -> Entry {
        let mut name = b"snapshot/".to_vec();
        name.extend_from_slice(path);
        Entry::raw(name, typeflag)
    }

    pub fn dir(path: impl AsRef<[u8]>) -> Entry {
        let mut e = Entry::snap(path.as_ref(), b'5');
        e.mode = 0o755;
        e
    }

    pub fn file(path: impl AsRef<[u8]>, data: &[u8]) -> Entry {
        let mut e = Entry::snap(path.as_ref(), b'0');
        e.data = data.to_vec();
        e
    }

    pub fn symlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Entry {
        let mut e = Entry::snap(path.as_ref(), b'2');
        e.mode = 0o777;
        e.link = target.as_ref().to_vec();
        e
    }

    pub fn fifo(path: impl AsRef<[u8]>) -> Entry {
        Entry::snap(path.as_ref(), b'6')
    }

    pub fn chardev(path: impl AsRef<[u8]>, major: u32, minor: u32) -> Entry {
        let mut e = Entry::snap(path.as_ref(), b'3');
        e.dev = (major, minor);
        e
    }

    /// `deleted/P` as duplicity writes it: an empty regular file with mode 0 and mtime 0.
    pub fn deleted(path: impl AsRef<[u8]>) -> Entry {
        let mut name = b"deleted/".to_vec();
        name.extend_from_slice(path.as_ref());
        let mut e = Entry::raw(name, b'0');
        e.mode = 0;
        e.mtime = 0;
        e
    }

    /// `diff/P` carrying a librsync delta.
    pub fn diff(path: impl AsRef<[u8]>, delta: &[u8]) -> Entry {
        let mut name = b"diff/".to_vec();
        name.extend_from_slice(path.as_ref());
        let mut e = Entry::raw(name, b'0');
        e.data = delta.to_vec();
        e
    }

    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }

    pub fn declared_size(mut self, size: u64) -> Entry {
        self.declared_size = Some(size);
        self
    }

    pub fn pax_name(mut self) -> Entry {
        self.pax_name = true;
        self
    }
}

/// A librsync delta: magic, then `ops`, then END.
pub fn delta(ops: &[u8]) -> Vec<u8> {
    let mut d = vec![0x72, 0x73, 0x02, 0x36];
    d.extend_from_slice(ops);
    d.push(0);
    d
}

/// A delta that replaces a file's content by `data` (one LITERAL with a 4-byte length).
pub fn literal_delta(data: &[u8]) -> Vec<u8> {
    let mut ops = vec![0x43];
    ops.extend_from_slice(&(data.len() as u32).to_be_bytes());
    ops.extend_from_slice(data);
    delta(&ops)
}

fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    if text.len() > width {
        // Base-256, as GNU tar writes numbers that do not fit.
        field.fill(0);
        field[0] = 0x80;
        let bytes = value.to_be_bytes();
        let n = field.len();
        field[n - 8..].copy_from_slice(&bytes);
        return;
    }
    field[..width].copy_from_slice(text.as_bytes());
    field[width] = 0;
}

fn put(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// One 512-byte ustar header.
pub fn header(name: &[u8], typeflag: u8, size: u64, e: &Entry, link: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    put(&mut h[0..100], name);
    octal(&mut h[100..108], u64::from(e.mode));
    octal(&mut h[108..116], u64::from(e.uid));
    octal(&mut h[116..124], u64::from(e.gid));
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], e.mtime.max(0) as u64);
    h[156] = typeflag;
    put(&mut h[157..257], link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    put(&mut h[265..297], b"root");
    put(&mut h[297..329], b"root");
    octal(&mut h[329..337], u64::from(e.dev.0));
    octal(&mut h[337..345], u64::from(e.dev.1));
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
    h
}

fn pad(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(512) {
        out.push(0);
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // "<len> <key>=<value>\n" where len counts the whole record, itself included.
    let body = 1 + key.len() + 1 + value.len() + 1;
    let mut len = body + 1;
    while format!("{len}").len() + body != len {
        len = format!("{len}").len() + body;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn plain_ascii(b: &[u8], max: usize) -> bool {
    b.len() < max && b.iter().all(|&c| (0x20..0x7f).contains(&c))
}

/// Appends one entry (with its PAX record when needed) to a tar stream.
pub fn append(out: &mut Vec<u8>, e: &Entry) {
    let mut pax = Vec::new();
    if e.pax_name || !plain_ascii(&e.name, 100) {
        pax.extend(pax_record("path", &e.name));
    }
    if !plain_ascii(&e.link, 100) {
        pax.extend(pax_record("linkpath", &e.link));
    }
    if !pax.is_empty() {
        let h = header(b"././@PaxHeader", b'x', pax.len() as u64, e, b"");
        out.extend_from_slice(&h);
        out.extend_from_slice(&pax);
        pad(out);
    }
    let short: Vec<u8> = e
        .name
        .iter()
        .take(99)
        .map(|&c| if c == 0 { b'?' } else { c })
        .collect();
    let link: Vec<u8> = e.link.iter().take(99).copied().collect();
    let size = e.declared_size.unwrap_or(e.data.len() as u64);
    out.extend_from_slice(&header(&short, e.typeflag, size, e, &link));
    out.extend_from_slice(&e.data);
    pad(out);
}

/// A tar stream of `entries`, without a footer (as gzip volumes before duplicity 3.2).
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        append(&mut out, e);
    }
    out
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn sha1_hex(data: &[u8]) -> String {
    hex::encode(Sha1::digest(data))
}

/// Which set: a full at a time, or an incremental between two.
#[derive(Clone, Copy, Debug)]
pub enum SetName {
    Full(i64),
    Inc(i64, i64),
}

impl SetName {
    pub fn base(self) -> String {
        match self {
            SetName::Full(t) => format!("duplicity-full.{}", compact_time(t)),
            SetName::Inc(a, b) => {
                format!("duplicity-inc.{}.to.{}", compact_time(a), compact_time(b))
            }
        }
    }
}

/// The files of one forged set.
#[derive(Clone, Debug)]
pub struct ForgedSet {
    pub name: SetName,
    pub volumes: Vec<PathBuf>,
    pub manifest: PathBuf,
    /// (StartingPath, EndingPath) of each volume, as the manifest gives them.
    pub ranges: Vec<(Vec<u8>, Vec<u8>)>,
}

impl ForgedSet {
    /// Rewrites the manifest from the volume files as they are now (fresh SHA1s).
    pub fn rehash(&self) {
        let stored: Vec<Vec<u8>> = self.volumes.iter().map(|p| fs::read(p).unwrap()).collect();
        fs::write(&self.manifest, manifest_with_ranges(&stored, &self.ranges)).unwrap();
    }

    /// Replaces volume `n` (1-based) by `bytes` and rehashes the manifest.
    pub fn replace_volume(&self, n: usize, bytes: &[u8]) {
        fs::write(&self.volumes[n - 1], bytes).unwrap();
        self.rehash();
    }
}

/// A manifest for volumes with these stored bytes, each covering the whole tree.
pub fn manifest(stored: &[Vec<u8>]) -> Vec<u8> {
    manifest_with_ranges(stored, &[])
}

/// A manifest for volumes with these stored bytes and path ranges (`.` to the last path
/// for a volume without one).
pub fn manifest_with_ranges(stored: &[Vec<u8>], ranges: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut m = b"Hostname forge\nLocaldir src\n".to_vec();
    for (i, v) in stored.iter().enumerate() {
        let (start, end) = ranges
            .get(i)
            .cloned()
            .unwrap_or((b".".to_vec(), b"\xff\xff\xff".to_vec()));
        m.extend(format!("Volume {}:\n    StartingPath   ", i + 1).into_bytes());
        m.extend(super::quote_manifest(&start));
        m.extend(b"  \n    EndingPath     ");
        m.extend(super::quote_manifest(&end));
        m.extend(format!("  \n    Hash SHA1 {}\n", sha1_hex(v)).into_bytes());
    }
    m.extend(b"Filelist 0\n");
    m
}

/// The path an entry name is about (`snapshot/a/b` -> `a/b`, `multivol_diff/a/3` -> `a`).
fn entry_path(name: &[u8]) -> Vec<u8> {
    let name = name.strip_suffix(b"/").unwrap_or(name);
    let (kind, rest) = match name.iter().position(|&b| b == b'/') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => (name, &b""[..]),
    };
    let rest = if kind.starts_with(b"multivol_") {
        match rest.iter().rposition(|&b| b == b'/') {
            Some(i) => &rest[..i],
            None => &b""[..],
        }
    } else {
        rest
    };
    if rest.is_empty() {
        b".".to_vec()
    } else {
        rest.to_vec()
    }
}

/// A repository folder the tests write sets into.
pub struct Forge {
    pub repo: PathBuf,
    /// Store volumes gzipped (`.difftar.gz`) or plain (`.difftar`).
    pub gzip: bool,
}

impl Forge {
    pub fn new(repo: &Path) -> Forge {
        fs::create_dir_all(repo).unwrap();
        Forge {
            repo: repo.to_path_buf(),
            gzip: true,
        }
    }

    /// Writes a set whose volumes hold these tar streams (one per volume).
    pub fn set_tars(&self, name: SetName, tars: &[Vec<u8>]) -> ForgedSet {
        let stored: Vec<Vec<u8>> = tars
            .iter()
            .map(|t| if self.gzip { gzip(t) } else { t.clone() })
            .collect();
        self.set_stored(name, &stored)
    }

    /// Writes a set whose volume files hold exactly `stored`.
    pub fn set_stored(&self, name: SetName, stored: &[Vec<u8>]) -> ForgedSet {
        let base = name.base();
        let suffix = if self.gzip { ".gz" } else { "" };
        let mut volumes = Vec::new();
        for (i, bytes) in stored.iter().enumerate() {
            let p = self
                .repo
                .join(format!("{base}.vol{}.difftar{suffix}", i + 1));
            fs::write(&p, bytes).unwrap();
            volumes.push(p);
        }
        let manifest_path = self.repo.join(format!("{base}.manifest"));
        fs::write(&manifest_path, manifest(stored)).unwrap();
        ForgedSet {
            name,
            volumes,
            manifest: manifest_path,
            ranges: Vec::new(),
        }
    }

    /// Writes a set with one volume per entry list.
    /// Writes a set with one volume per entry list; the manifest gives each volume's range.
    pub fn set(&self, name: SetName, volumes: &[Vec<Entry>]) -> ForgedSet {
        let tars: Vec<Vec<u8>> = volumes.iter().map(|v| tar(v)).collect();
        let mut set = self.set_tars(name, &tars);
        set.ranges = volumes
            .iter()
            .map(|v| match (v.first(), v.last()) {
                (Some(a), Some(b)) => (entry_path(&a.name), entry_path(&b.name)),
                _ => (b".".to_vec(), b".".to_vec()),
            })
            .collect();
        set.rehash();
        set
    }

    pub fn full(&self, t: i64, entries: Vec<Entry>) -> ForgedSet {
        self.set(SetName::Full(t), &[entries])
    }

    pub fn inc(&self, from: i64, to: i64, entries: Vec<Entry>) -> ForgedSet {
        self.set(SetName::Inc(from, to), &[entries])
    }

    /// Removes every file of a set.
    pub fn remove(&self, set: &ForgedSet) {
        for p in set.volumes.iter().chain([&set.manifest]) {
            let _ = fs::remove_file(p);
        }
    }
}
