//! A file's version as the deltas of several sets leave it, composed without writing it:
//! a catch-up patches each path once, from the file its chain started from (the root:
//! DEST's copy, or an object a snapshot staged), instead of writing every set's version.
//!
//! ```text
//! a version: pieces in order, each `len` bytes either of the root from `pos`, or of the
//!            version's own held bytes (literals) from `at`; its length is their sum
//! root(len):           one piece, the root's bytes 0..len (none when len = 0)
//! patched(v, delta):   the next version, command by command:
//!     COPY pos len  -> the pieces of v covering pos..pos+len (found by binary search on
//!                      their starts, cut at both ends); past v's end: the delta does not
//!                      fit its basis (the error a patch of the file would give)
//!     LITERAL bytes -> read into the new version's held bytes, one piece
//!     held bytes v's pieces lend are copied: v can be dropped, and nothing stays held
//!         that the new version does not use
//!     a piece that continues the previous one merges with it
//!     longer than max_out        -> the delta's fault (delta::past_bound), as patching
//!     more than `limit` held (held bytes + pieces) -> None: the caller writes the file
//! reader(v, root):     the version's bytes: pieces in order, read from the root (pread)
//!                      or the held bytes
//! ```
//!
//! Limits: a version holds every literal byte of the deltas it composes (the caller bounds
//! what all versions hold together, see staged.rs); the root must stay as it was until the
//! version is written.

use crate::decode::delta::past_bound;
use crate::decode::delta_ops::{Command, Commands};
use anyhow::{anyhow, bail, Result};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

/// Where a piece's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// In the root, from this offset.
    Root(u64),
    /// In the version's held bytes, from this offset.
    Held(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    /// Where the piece starts in the version.
    start: u64,
    len: u64,
    source: Source,
}

/// A file's content as pieces of its root and held bytes.
#[derive(Debug, Default)]
pub struct Version {
    pieces: Vec<Piece>,
    held: Vec<u8>,
    len: u64,
}

impl Version {
    /// The root itself, `len` bytes.
    pub fn root(len: u64) -> Version {
        let mut v = Version::default();
        v.push(Source::Root(0), len);
        v
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// The memory the version holds: its literal bytes and its pieces.
    pub fn held_bytes(&self) -> u64 {
        (self.held.capacity() + self.pieces.capacity() * std::mem::size_of::<Piece>()) as u64
    }

    fn push(&mut self, source: Source, len: u64) {
        if len == 0 {
            return;
        }
        if let Some(last) = self.pieces.last_mut() {
            let continues = match (last.source, source) {
                (Source::Root(a), Source::Root(b)) | (Source::Held(a), Source::Held(b)) => {
                    a + last.len == b
                }
                _ => false,
            };
            if continues {
                last.len += len;
                self.len += len;
                return;
            }
        }
        self.pieces.push(Piece {
            start: self.len,
            len,
            source,
        });
        self.len += len;
    }

    /// The version `delta` makes of this one (see the module docs); `None` when it would
    /// hold more than `limit` bytes.
    pub fn patched(&self, delta: impl Read, max_out: u64, limit: u64) -> Result<Option<Version>> {
        let mut commands = Commands::open(delta)?;
        let mut next = Version::default();
        loop {
            match commands.next_command()? {
                Command::End => {
                    // Held until the last set: no room to spare.
                    next.held.shrink_to_fit();
                    next.pieces.shrink_to_fit();
                    return Ok(Some(next));
                }
                Command::Copy { pos, len } => self.lend(&mut next, pos, len)?,
                Command::Literal { len } => {
                    // Checked before reading: a literal's length is the delta's word.
                    if next.len.saturating_add(len) > max_out {
                        return Err(past_bound(max_out));
                    }
                    if next.held_bytes().saturating_add(len) > limit {
                        return Ok(None);
                    }
                    let at = next.held.len() as u64;
                    let got = commands.literal(len).read_to_end(&mut next.held)?;
                    if got as u64 != len {
                        bail!("the delta ends in the middle of a literal");
                    }
                    next.push(Source::Held(at), len);
                }
            }
            if next.len > max_out {
                return Err(past_bound(max_out));
            }
            if next.held_bytes() > limit {
                return Ok(None);
            }
        }
    }

    /// Appends this version's bytes `pos..pos + len` to `next`.
    fn lend(&self, next: &mut Version, pos: u64, len: u64) -> Result<()> {
        // librsync refuses a copy of nothing as corrupt: so does this.
        let end = pos
            .checked_add(len)
            .filter(|&end| end <= self.len && len > 0);
        let end = end.ok_or_else(|| {
            anyhow!(
                "the delta is invalid or does not fit its basis: a copy of {len} bytes at \
                 {pos} of a file of {} bytes",
                self.len
            )
        })?;
        let first = self.pieces.partition_point(|p| p.start + p.len <= pos);
        for p in self.pieces[first..].iter().take_while(|p| p.start < end) {
            let (from, to) = (pos.max(p.start), end.min(p.start + p.len));
            let skip = from - p.start;
            match p.source {
                Source::Root(r) => next.push(Source::Root(r + skip), to - from),
                Source::Held(h) => {
                    let at = next.held.len() as u64;
                    let lent = (h + skip) as usize..(h + skip + to - from) as usize;
                    next.held.extend_from_slice(&self.held[lent]);
                    next.push(Source::Held(at), to - from);
                }
            }
        }
        Ok(())
    }

    /// The version's bytes, its root pieces read from `root`.
    pub fn reader<'a>(&'a self, root: &'a File) -> impl Read + 'a {
        VersionReader {
            version: self,
            root,
            piece: 0,
            offset: 0,
        }
    }
}

struct VersionReader<'a> {
    version: &'a Version,
    root: &'a File,
    /// The piece being read, and how far.
    piece: usize,
    offset: u64,
}

impl Read for VersionReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(p) = self.version.pieces.get(self.piece) else {
                return Ok(0);
            };
            let left = p.len - self.offset;
            if left == 0 {
                self.piece += 1;
                self.offset = 0;
                continue;
            }
            if buf.is_empty() {
                return Ok(0);
            }
            let n = (buf.len() as u64).min(left) as usize;
            let got = match p.source {
                Source::Root(r) => match self.root.read_at(&mut buf[..n], r + self.offset)? {
                    0 => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the file the deltas start from became shorter",
                        ))
                    }
                    got => got,
                },
                Source::Held(h) => {
                    let at = (h + self.offset) as usize;
                    buf[..n].copy_from_slice(&self.version.held[at..at + n]);
                    n
                }
            };
            self.offset += got as u64;
            return Ok(got);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::delta::{self, DELTA_MAGIC};
    use crate::error::Error;

    /// A delta from commands: `Ok(bytes)` a literal, `Err((pos, len))` a copy.
    fn delta(commands: &[std::result::Result<&[u8], (u64, u64)>]) -> Vec<u8> {
        let mut d = DELTA_MAGIC.to_vec();
        for c in commands {
            match c {
                Ok(bytes) => {
                    d.push(0x43); // literal, 4-byte length
                    d.extend((bytes.len() as u32).to_be_bytes());
                    d.extend(*bytes);
                }
                Err((pos, len)) => {
                    d.push(0x54); // copy, 8-byte position and length
                    d.extend(pos.to_be_bytes());
                    d.extend(len.to_be_bytes());
                }
            }
        }
        d.push(0);
        d
    }

    struct Root {
        _dir: tempfile::TempDir,
        file: File,
        bytes: Vec<u8>,
    }

    fn root(bytes: &[u8]) -> Root {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root");
        std::fs::write(&p, bytes).unwrap();
        Root {
            file: File::open(&p).unwrap(),
            _dir: dir,
            bytes: bytes.to_vec(),
        }
    }

    impl Root {
        fn read(&self, v: &Version) -> Vec<u8> {
            let mut out = Vec::new();
            v.reader(&self.file).read_to_end(&mut out).unwrap();
            assert_eq!(out.len() as u64, v.len());
            out
        }

        /// Composes `deltas` over the root and patches them one by one with librsync:
        /// both must give the same bytes.
        fn chain(&self, deltas: &[Vec<u8>]) -> Version {
            let mut v = Version::root(self.bytes.len() as u64);
            let mut expected = self.bytes.clone();
            for d in deltas {
                v = v.patched(&d[..], u64::MAX, u64::MAX).unwrap().unwrap();
                expected = patched_by_librsync(&expected, d);
                assert_eq!(self.read(&v), expected);
            }
            v
        }
    }

    fn patched_by_librsync(basis: &[u8], d: &[u8]) -> Vec<u8> {
        let r = root(basis);
        let mut out = Vec::new();
        delta::patch(r.file, &mut &d[..], &mut out, &mut [0; 7], u64::MAX).unwrap();
        out
    }

    #[test]
    fn a_chain_of_partial_rewrites_equals_patching_set_by_set() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 253) as u8).collect();
        let r = root(&data);
        let v = r.chain(&[
            delta(&[Err((0, 4000)), Ok(b"first"), Err((4005, 5995))]),
            delta(&[Err((10, 3990)), Ok(b"second rewrite"), Err((3000, 7000))]),
            // copies that go backwards, repeat and straddle the literals of both sets
            delta(&[Err((3995, 30)), Err((0, 10_000)), Ok(b"!"), Err((3995, 30))]),
        ]);
        assert!(v.held_bytes() < 1000, "held: {}", v.held_bytes());
    }

    #[test]
    fn empty_deltas_and_files() {
        let r = root(b"");
        assert_eq!(Version::root(0).held_bytes(), 0);
        let v = r.chain(&[delta(&[]), delta(&[Ok(b"grown")]), delta(&[])]);
        assert_eq!(v.len(), 0);
        let r = root(b"abc");
        let v = r.chain(&[delta(&[Ok(b""), Err((0, 3))]), delta(&[])]);
        assert_eq!(v.len(), 0, "an empty delta empties the file");
    }

    #[test]
    fn adjacent_pieces_merge() {
        let r = root(b"abcdef");
        let v = r.chain(&[delta(&[Err((0, 2)), Err((2, 4)), Ok(b"x"), Ok(b"y")])]);
        assert_eq!(v.pieces.len(), 2);
        assert_eq!(r.read(&v), b"abcdefxy");
    }

    #[test]
    fn a_copy_past_the_end_is_refused() {
        let v = Version::root(6);
        let e = v
            .patched(&delta(&[Err((4, 3))])[..], u64::MAX, u64::MAX)
            .unwrap_err();
        assert!(e.to_string().contains("does not fit its basis"), "{e}");
        for (pos, len) in [(u64::MAX, 2), (0, 0)] {
            let d = delta(&[Err((pos, len))]);
            assert!(v.patched(&d[..], u64::MAX, u64::MAX).is_err());
            let r = root(b"abcdef");
            let mut out = Vec::new();
            assert!(delta::patch(r.file, &mut &d[..], &mut out, &mut [0; 8], 99).is_err());
        }
        let two = v
            .patched(&delta(&[Ok(b"ab")])[..], u64::MAX, u64::MAX)
            .unwrap()
            .unwrap();
        assert!(two.patched(&delta(&[Err((0, 3))])[..], 9, 99).is_err());
    }

    #[test]
    fn bounds() {
        let v = Version::root(6);
        let e = v
            .patched(&delta(&[Err((0, 6)), Err((0, 6))])[..], 11, u64::MAX)
            .unwrap_err();
        assert!(matches!(e.downcast_ref::<Error>(), Some(Error::Corrupt(_))));
        let d = delta(&[Ok(&[7; 100])]);
        let held = v
            .patched(&d[..], 1000, 10_000)
            .unwrap()
            .unwrap()
            .held_bytes();
        assert!(held >= 100, "{held}");
        assert!(v.patched(&d[..], 1000, 99).unwrap().is_none());
        let truncated = &d[..d.len() - 10];
        assert!(v.patched(truncated, 1000, 1000).is_err());
    }

    #[test]
    fn a_root_that_shrank_is_an_error() {
        let r = root(b"abcdef");
        let v = Version::root(10);
        let mut out = Vec::new();
        assert!(v.reader(&r.file).read_to_end(&mut out).is_err());
    }
}
