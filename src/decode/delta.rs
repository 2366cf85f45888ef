//! librsync deltas: applying the `diff` records of incremental sets (docs/format.md §7.5).
//!
//! A delta says how to rebuild a file from its previous version: literal bytes, and copies
//! of ranges of the old content. Patching streams: the basis is read with seeks, the delta
//! and the output flow through, so neither file has to fit in memory. A delta of many
//! copies can make a tiny entry into an endless file, so the output has a bound: the size
//! the file's new signature allows (block count times block length), or, without one,
//! [`unsigned_output_bound`].
//!
//! Signatures (the `signature/P` entries of signature tars) are kept as a [`SigDigest`]:
//! header, length and SHA1, never the signature itself, which is 12 + 36 bytes per block
//! (up to 2 KiB) of a file and so gigabytes for a big one. Content checks only ever ask
//! whether a file's signature equals the recorded one, which the digest answers.

use crate::error::Error;
use anyhow::{bail, Context, Result};
use sha1::{Digest, Sha1};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// The magic number that opens every librsync delta.
pub const DELTA_MAGIC: [u8; 4] = [0x72, 0x73, 0x02, 0x36];

/// A librsync signature, as kept: its header, its length and its SHA1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigDigest {
    pub magic: u32,
    pub block_len: u32,
    pub strong_len: u32,
    /// Bytes of the whole signature, header included.
    pub len: u64,
    pub sha1: [u8; 20],
}

impl SigDigest {
    /// The digest of the signature `r` streams (memory stays fixed whatever its length).
    pub fn read(r: &mut dyn Read) -> io::Result<SigDigest> {
        let mut hasher = Sha1::new();
        let mut header = [0u8; 12];
        let mut len = 0u64;
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if let Ok(start) = usize::try_from(len) {
                if start < header.len() {
                    let take = (header.len() - start).min(n);
                    header[start..start + take].copy_from_slice(&buf[..take]);
                }
            }
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        let word =
            |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        Ok(SigDigest {
            magic: word(0),
            block_len: word(4),
            strong_len: word(8),
            len,
            sha1: hasher.finalize().into(),
        })
    }

    /// The digest of a signature held in memory.
    pub fn of(signature: &[u8]) -> SigDigest {
        // Reading from a slice cannot fail.
        SigDigest::read(&mut &signature[..]).unwrap_or_else(|_| unreachable!())
    }

    /// How many blocks the signature describes, if its header is sane.
    pub fn blocks(&self) -> Option<u64> {
        if self.len < 12 || self.block_len == 0 || self.strong_len == 0 || self.strong_len > 32 {
            return None;
        }
        Some((self.len - 12) / (4 + u64::from(self.strong_len)))
    }

    /// Whether a file of `size` bytes has as many blocks as the signature: the number of
    /// blocks pins the size down to one block, a cheap first test.
    pub fn size_fits(&self, size: u64) -> bool {
        self.blocks() == Some(size.div_ceil(u64::from(self.block_len.max(1))))
    }

    /// The largest file the signature can describe.
    pub fn max_size(&self) -> Option<u64> {
        self.blocks()?.checked_mul(u64::from(self.block_len))
    }
}

/// The most a delta may write when no signature gives the new file's size: sixteen times
/// what it starts from (basis and delta) plus 1 MiB. Copies of the basis make files larger
/// than that only by repeating it over and over.
pub fn unsigned_output_bound(basis_len: u64, delta_len: u64) -> u64 {
    basis_len
        .saturating_add(delta_len)
        .saturating_mul(16)
        .saturating_add(1 << 20)
}

/// Reads the magic that opens a delta, and checks it.
pub fn read_magic(delta: &mut dyn Read) -> Result<()> {
    let mut magic = [0u8; 4];
    delta
        .read_exact(&mut magic)
        .context("the delta is shorter than its header")?;
    if magic != DELTA_MAGIC {
        bail!("not a librsync delta (magic {})", hex::encode(magic));
    }
    Ok(())
}

/// Rebuilds a file: reads `basis`, applies `delta`, writes the result to `out` through
/// `buf` (the caller's, reused from file to file), refusing to write more than `max_out`
/// bytes. Returns the number of bytes written.
pub fn patch(
    basis: File,
    delta: &mut dyn Read,
    out: &mut dyn Write,
    buf: &mut [u8],
    max_out: u64,
) -> Result<u64> {
    read_magic(delta)?;
    let rest = io::Cursor::new(DELTA_MAGIC).chain(delta);
    let mut job =
        librsync::Patch::new(basis, rest).map_err(|e| anyhow::anyhow!("librsync: {e}"))?;
    let mut written = 0u64;
    loop {
        let n = job
            .read(buf)
            .map_err(|e| anyhow::anyhow!("the delta is invalid or does not fit its basis: {e}"))?;
        if n == 0 {
            return Ok(written);
        }
        written += n as u64;
        if written > max_out {
            return Err(past_bound(max_out));
        }
        out.write_all(&buf[..n])?;
    }
}

/// The error of a delta that writes more than `max_out` bytes: the delta's own fault
/// whatever the basis (copies beyond the basis fail, so the output length does not depend
/// on the basis content).
pub fn past_bound(max_out: u64) -> anyhow::Error {
    Error::corrupt(format!(
        "the delta writes more than {max_out} bytes, the most the file's new signature \
         allows (without one: 16 times basis and delta, plus 1 MiB)"
    ))
    .into()
}

/// Makes the file a large delta spills into: private, read-write, and already unlinked
/// (so nothing is left behind, however the set ends).
pub type SpillFile = Box<dyn FnOnce() -> Result<File>>;

/// Holds a delta while its chunks arrive: in memory while small, then in a file.
pub struct Spool {
    mem: Vec<u8>,
    file: Option<File>,
    spill: Option<SpillFile>,
    /// Bytes in the spill file.
    spilled: u64,
}

const SPOOL_IN_MEMORY: usize = 4 << 20;

impl Spool {
    pub fn new(spill: SpillFile) -> Self {
        Spool {
            mem: Vec::new(),
            file: None,
            spill: Some(spill),
            spilled: 0,
        }
    }

    pub fn fill_from(&mut self, r: &mut dyn Read) -> Result<()> {
        if self.file.is_none() {
            r.take((SPOOL_IN_MEMORY - self.mem.len().min(SPOOL_IN_MEMORY)) as u64 + 1)
                .read_to_end(&mut self.mem)?;
            if self.mem.len() <= SPOOL_IN_MEMORY {
                return Ok(());
            }
            let make = self
                .spill
                .take()
                .context("the delta spool was spilled twice")?;
            let mut f = make()?;
            f.write_all(&self.mem)
                .context("cannot spill a delta to disk")?;
            self.spilled = self.mem.len() as u64;
            self.mem = Vec::new();
            self.file = Some(f);
        }
        if let Some(f) = &mut self.file {
            self.spilled += io::copy(r, f).context("cannot spill a delta to disk")?;
        }
        Ok(())
    }

    /// How many bytes are spooled.
    pub fn spooled_bytes(&self) -> u64 {
        self.mem.len() as u64 + self.spilled
    }

    /// The spooled bytes, from the start.
    pub fn reader(&mut self) -> Result<Box<dyn Read + '_>> {
        match &mut self.file {
            Some(f) => {
                f.seek(SeekFrom::Start(0))?;
                Ok(Box::new(io::BufReader::with_capacity(256 * 1024, f)))
            }
            None => Ok(Box::new(&self.mem[..])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch_bytes(basis: &[u8], delta: &[u8]) -> Result<Vec<u8>> {
        patch_bounded(basis, delta, u64::MAX)
    }

    fn patch_bounded(basis: &[u8], delta: &[u8], max_out: u64) -> Result<Vec<u8>> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("basis");
        std::fs::write(&p, basis)?;
        let mut out = Vec::new();
        patch(
            File::open(&p)?,
            &mut &delta[..],
            &mut out,
            &mut [0; 16],
            max_out,
        )?;
        Ok(out)
    }

    #[test]
    fn output_stops_at_the_bound() {
        // 1000 times COPY pos 0 len 6: 6000 bytes from a 6-byte basis.
        let mut delta = vec![0x72, 0x73, 0x02, 0x36];
        for _ in 0..1000 {
            delta.extend_from_slice(&[0x45, 0, 6]);
        }
        delta.push(0);
        assert_eq!(patch_bounded(b"abcdef", &delta, 6000).unwrap().len(), 6000);
        let e = patch_bounded(b"abcdef", &delta, 5999).unwrap_err();
        assert!(matches!(e.downcast_ref::<Error>(), Some(Error::Corrupt(_))));
        assert!(e.to_string().contains("more than 5999 bytes"), "{e}");
    }

    #[test]
    fn signature_digests() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut sig = Vec::new();
        librsync::Signature::with_options(&data[..], 1024, 8, librsync::SignatureType::MD4)
            .unwrap()
            .read_to_end(&mut sig)
            .unwrap();
        let d = SigDigest::of(&sig);
        assert_eq!((d.magic, d.block_len, d.strong_len), (0x7273_0136, 1024, 8));
        assert_eq!((d.len, d.blocks()), (sig.len() as u64, Some(5)));
        assert!(d.size_fits(5000) && d.size_fits(4097) && !d.size_fits(4096));
        assert_eq!(d.max_size(), Some(5120));
        assert_eq!(SigDigest::of(b"junk").blocks(), None);
    }

    #[test]
    fn literal_and_copy() {
        // LITERAL 5 "hello", COPY pos 0 len 3 (1-byte widths: opcode 0x45), END
        let delta = [
            0x72, 0x73, 0x02, 0x36, 0x05, b'h', b'e', b'l', b'l', b'o', 0x45, 0, 3, 0,
        ];
        assert_eq!(patch_bytes(b"abcdef", &delta).unwrap(), b"helloabc");
    }

    #[test]
    fn bad_deltas_are_errors() {
        assert!(patch_bytes(b"abc", b"xx").is_err());
        assert!(patch_bytes(b"abc", &[0x72, 0x73, 0x02, 0x37, 0]).is_err());
        // reserved opcode 0x55
        assert!(patch_bytes(b"abc", &[0x72, 0x73, 0x02, 0x36, 0x55, 0]).is_err());
        // COPY beyond the basis
        assert!(patch_bytes(b"abc", &[0x72, 0x73, 0x02, 0x36, 0x45, 10, 5, 0]).is_err());
        // truncated: no END
        assert!(patch_bytes(b"abc", &[0x72, 0x73, 0x02, 0x36, 0x05, b'h']).is_err());
    }

    #[test]
    fn spool_spills_to_disk() {
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join("spill");
        let made = spill.clone();
        let mut s = Spool::new(Box::new(move || {
            Ok(File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(made)?)
        }));
        let big = vec![7u8; SPOOL_IN_MEMORY + 10];
        s.fill_from(&mut &big[..1000]).unwrap();
        assert!(!spill.exists(), "small deltas stay in memory");
        s.fill_from(&mut &big[1000..]).unwrap();
        assert!(spill.exists());
        let mut back = Vec::new();
        s.reader().unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), big.len());
        assert_eq!(s.spooled_bytes(), big.len() as u64);
    }
}
