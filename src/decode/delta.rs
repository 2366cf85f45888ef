//! librsync deltas: applying the `diff` records of incremental sets (docs/format.md §7.5).
//!
//! A delta says how to rebuild a file from its previous version: literal bytes, and copies
//! of ranges of the old content. Patching streams: the basis is read with seeks, the delta
//! and the output flow through, so neither file has to fit in memory.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// The magic number that opens every librsync delta.
pub const DELTA_MAGIC: [u8; 4] = [0x72, 0x73, 0x02, 0x36];

/// Rebuilds a file: reads `basis`, applies `delta`, writes the result to `out` through
/// `buf` (the caller's, reused from file to file). Returns the number of bytes written.
pub fn patch(
    basis: File,
    delta: &mut dyn Read,
    out: &mut dyn Write,
    buf: &mut [u8],
) -> Result<u64> {
    let mut magic = [0u8; 4];
    delta
        .read_exact(&mut magic)
        .context("the delta is shorter than its header")?;
    if magic != DELTA_MAGIC {
        bail!("not a librsync delta (magic {})", hex::encode(magic));
    }
    let rest = io::Cursor::new(magic).chain(delta);
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
        out.write_all(&buf[..n])?;
        written += n as u64;
    }
}

/// Makes the file a large delta spills into: private, read-write, and already unlinked
/// (so nothing is left behind, however the set ends).
pub type SpillFile = Box<dyn FnOnce() -> Result<File>>;

/// Holds a delta while its chunks arrive: in memory while small, then in a file.
pub struct Spool {
    mem: Vec<u8>,
    file: Option<File>,
    spill: Option<SpillFile>,
}

const SPOOL_IN_MEMORY: usize = 4 << 20;

impl Spool {
    pub fn new(spill: SpillFile) -> Self {
        Spool {
            mem: Vec::new(),
            file: None,
            spill: Some(spill),
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
            self.mem = Vec::new();
            self.file = Some(f);
        }
        if let Some(f) = &mut self.file {
            io::copy(r, f).context("cannot spill a delta to disk")?;
        }
        Ok(())
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
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("basis");
        std::fs::write(&p, basis)?;
        let mut out = Vec::new();
        patch(File::open(&p)?, &mut &delta[..], &mut out, &mut [0; 16])?;
        Ok(out)
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
    }
}
