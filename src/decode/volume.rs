//! Reading one repository file: hash check, then decryption or decompression.
//!
//! A [`DecodedFile`] runs the raw bytes through SHA1 (when a hash is expected: a file
//! checked before, from the download cache or pinned by a read lease, is not hashed again)
//! and the decoder on a helper thread and hands decoded buffers to the caller over a small
//! bounded channel, so inflating one volume overlaps with writing the previous buffers to
//! disk while memory stays fixed (a few buffers, whatever the volume size). A volume of a
//! full read apart, by one of several decoder threads that already keep the cores busy, is
//! decoded on the reader's thread instead ([`ReadAhead::Inline`]): the same checks, without
//! a thread and a copy per byte between two cores. The hash covers the file exactly as
//! stored (docs/format.md §4.1): the raw file is read to its end even when the tar stream
//! inside stops early, and [`DecodedFile::finish`] reports a mismatch. Callers apply
//! nothing from a set before every volume of it has finished cleanly.
//!
//! Decoding is half of a bootstrap's CPU time, so it copies as little as it can: gzip is
//! inflated (by ISA-L, `decode::gzip`) straight from its read buffer into the buffers handed
//! on, and consumed buffers travel back to the helper thread for reuse instead of being
//! freed and allocated (and zeroed) again.

use crate::decode::crypto::Decryptor;
use crate::decode::gzip::GzipReader;
use crate::error::Error;
use anyhow::{anyhow, Context, Result};
use sha1::{Digest, Sha1};
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The outer layer of a file, from its suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Plain,
    Gzip,
    Gpg,
    /// CMS from `gpgsm` (duplicity 3.0.5+ with `--use-gpgsm`); recognised, not decoded.
    P7m,
}

/// How far a file is decoded ahead of its reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadAhead {
    /// A volume: 4 buffers of 256 KiB, so that inflating overlaps writing the files out.
    Volume,
    /// A manifest or a signature file, read a little at a time and many at once (`verify`
    /// merges one signature file per set of the chain): 2 buffers of 64 KiB.
    Small,
    /// None: decoded by the reader's own thread as it reads. For a volume read apart
    /// (several decoder threads already run side by side): no hand-over between threads,
    /// the inflater writes straight into the reader's buffer, and the bytes stay in the
    /// core's cache.
    Inline,
}

impl ReadAhead {
    /// The size of each buffer (and of the read buffer beneath the inflater).
    fn buf_size(self) -> usize {
        match self {
            ReadAhead::Volume | ReadAhead::Inline => 256 * 1024,
            ReadAhead::Small => 64 * 1024,
        }
    }

    /// Buffers decoded and not yet read, at most.
    fn in_flight(self) -> usize {
        match self {
            ReadAhead::Volume => 4,
            ReadAhead::Small => 2,
            ReadAhead::Inline => 0,
        }
    }
}

enum Msg {
    Data(Vec<u8>),
    Done(Result<()>),
}

/// Decoded bytes of one repository file, produced on a helper thread or, for
/// [`ReadAhead::Inline`], as they are read.
pub struct DecodedFile(Decoding);

enum Decoding {
    Ahead(DecodedAhead),
    Inline(DecodedInline),
}

/// A file decoded ahead of its reader on a helper thread.
struct DecodedAhead {
    rx: Receiver<Msg>,
    /// Tells the helper thread to stop decoding (the caller gave up on the content).
    stop: Arc<AtomicBool>,
    /// Consumed buffers, back to the helper thread.
    recycle: Sender<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    verdict: Option<Result<()>>,
    thread: Option<JoinHandle<()>>,
}

/// A file decoded on its reader's thread.
struct DecodedInline {
    /// None once the decoder failed or could not be set up.
    plain: Option<Box<dyn Read + Send>>,
    /// The first decode error: the verdict, unless the hash explains it better.
    error: Option<anyhow::Error>,
    judge: Judge,
}

/// What the helper thread needs to open and check a file.
pub struct VolumeSource {
    pub name: String,
    pub encoding: Encoding,
    pub expected_sha1: Option<String>,
    /// The time the file's name gives (a set's session time), for the signature check.
    pub named_time: Option<i64>,
    pub raw: Box<dyn Read + Send>,
    pub read_ahead: ReadAhead,
}

/// Reads the stored bytes for the decoder, hashing them when a hash is expected, and
/// remembers the first read error (a broken read explains a decode error best). When
/// dropped it reports the digest, after reading the rest of the file when hashing (the tar
/// inside may end before the file does), so the hash always covers the whole stored file
/// whatever the decoder above it did. A file already checked (from the download cache, or
/// pinned by a read lease) is not hashed again.
struct HashingReader {
    inner: Box<dyn Read + Send>,
    hasher: Option<Sha1>,
    bytes: u64,
    read_error: Option<io::Error>,
    report: Sender<HashReport>,
    /// For reading the rest when dropped.
    buf_size: usize,
}

struct HashReport {
    /// None when not hashed.
    sha1: Option<String>,
    bytes: u64,
    read_error: Option<io::Error>,
}

impl Read for HashingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted && self.read_error.is_none() {
                    self.read_error = Some(io::Error::new(e.kind(), e.to_string()));
                }
                return Err(e);
            }
        };
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

impl Drop for HashingReader {
    fn drop(&mut self) {
        if self.hasher.is_some() {
            let mut buf = vec![0u8; self.buf_size];
            loop {
                match self.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
        let _ = self.report.send(HashReport {
            sha1: self.hasher.take().map(|h| hex::encode(h.finalize())),
            bytes: self.bytes,
            read_error: self.read_error.take(),
        });
    }
}

impl DecodedFile {
    pub fn spawn(src: VolumeSource, decryptor: Option<std::sync::Arc<dyn Decryptor>>) -> Self {
        if src.read_ahead == ReadAhead::Inline {
            let (plain, judge) = open(src, decryptor);
            let (plain, error) = match plain {
                Ok(p) => (Some(p), None),
                Err(e) => (None, Some(e)),
            };
            return DecodedFile(Decoding::Inline(DecodedInline {
                plain,
                error,
                judge,
            }));
        }
        let (tx, rx) = sync_channel(src.read_ahead.in_flight());
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let (recycle, recycled) = channel();
        let thread = std::thread::Builder::new()
            .name("volume-decode".into())
            .spawn(move || {
                let buf_size = src.read_ahead.buf_size();
                let (plain, judge) = open(src, decryptor);
                let decoded = plain.and_then(|mut plain| {
                    pump(&mut plain, buf_size, &tx, &stop_flag, &recycled)
                    // `plain` drops here, and with it the hashing reader, which reports.
                });
                let _ = tx.send(Msg::Done(judge.verdict(decoded)));
            })
            .expect("spawning a thread");
        DecodedFile(Decoding::Ahead(DecodedAhead {
            rx,
            stop,
            recycle,
            buf: Vec::new(),
            pos: 0,
            verdict: None,
            thread: Some(thread),
        }))
    }

    /// Gives up on the content after a parse error: stops decoding at once (a hostile volume
    /// may inflate to gigabytes), still hashes the rest of the stored file, and returns the
    /// verdict (a hash mismatch explains a parse error best).
    pub fn abandon(self) -> Result<()> {
        match self.0 {
            Decoding::Ahead(ahead) => {
                ahead.stop.store(true, Ordering::Relaxed);
                ahead.finish()
            }
            Decoding::Inline(inline) => inline.verdict(),
        }
    }

    /// Reads the rest of the file and returns whether it was whole and hashed right.
    pub fn finish(self) -> Result<()> {
        match self.0 {
            Decoding::Ahead(ahead) => ahead.finish(),
            Decoding::Inline(mut inline) => {
                if let (Some(plain), None) = (&mut inline.plain, &inline.error) {
                    // The tar inside may end before the compressed stream (its padding, the
                    // gzip trailer with the CRC): decode that too.
                    if let Err(e) = io::copy(plain, &mut io::sink()) {
                        inline.error = Some(e.into());
                    }
                }
                inline.verdict()
            }
        }
    }
}

impl DecodedAhead {
    fn finish(mut self) -> Result<()> {
        while self.verdict.is_none() {
            match self.rx.recv() {
                Ok(Msg::Data(_)) => {}
                Ok(Msg::Done(v)) => self.verdict = Some(v),
                Err(_) => self.verdict = Some(Err(anyhow!("volume reader thread died"))),
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.verdict.take().unwrap_or(Ok(()))
    }
}

impl Read for DecodedFile {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match &mut self.0 {
            Decoding::Ahead(ahead) => ahead.read(out),
            Decoding::Inline(inline) => inline.read(out),
        }
    }
}

impl DecodedInline {
    /// Stops decoding; the hashing reader, dropped with the decoder, hashes the rest of the
    /// stored file and reports, and the judge weighs that against the first decode error.
    fn verdict(mut self) -> Result<()> {
        drop(self.plain.take());
        self.judge.verdict(self.error.map_or(Ok(()), Err))
    }
}

impl Read for DecodedInline {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = &self.error {
            return Err(io::Error::other(format!("{e:#}")));
        }
        let Some(plain) = &mut self.plain else {
            return Ok(0);
        };
        match plain.read(out) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => {
                let message = e.to_string();
                self.error = Some(e.into());
                Err(io::Error::other(message))
            }
            read => read,
        }
    }
}

impl Read for DecodedAhead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if let Some(v) = &self.verdict {
                return match v {
                    Ok(()) => Ok(0),
                    Err(e) => Err(io::Error::other(format!("{e:#}"))),
                };
            }
            match self.rx.recv() {
                Ok(Msg::Data(b)) => {
                    let used = std::mem::replace(&mut self.buf, b);
                    if used.capacity() > 0 {
                        // The thread may have finished: then the buffer is simply freed.
                        let _ = self.recycle.send(used);
                    }
                    self.pos = 0;
                }
                Ok(Msg::Done(v)) => self.verdict = Some(v),
                Err(_) => self.verdict = Some(Err(anyhow!("volume reader thread died"))),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What decides a file's verdict once its hashing reader has reported.
struct Judge {
    name: String,
    expected_sha1: Option<String>,
    report: Receiver<HashReport>,
}

impl Judge {
    /// The verdict on a file whose decoding ended with `decoded`, called after the hashing
    /// reader was dropped: a hash mismatch first, then a failed read, then the decode error.
    fn verdict(self, decoded: Result<()>) -> Result<()> {
        let name = &self.name;
        let report = self
            .report
            .recv()
            .map_err(|_| anyhow!("{name}: hashing stopped unexpectedly"))?;
        if let (Some(expected), Some(actual)) = (self.expected_sha1, report.sha1) {
            if expected != actual {
                return Err(Error::HashMismatch {
                    name: name.clone(),
                    expected,
                    actual,
                }
                .into());
            }
        }
        if let Some(e) = report.read_error {
            return Err(anyhow!(
                "{name}: reading failed after {} bytes: {e}",
                report.bytes
            ));
        }
        // Context, not a new message: the typed cause (a CryptoError) stays in the chain.
        decoded.with_context(|| name.clone())
    }
}

/// Sets up the decoding of `src`: its plain bytes (or why not), and the judge of its hash.
fn open(
    src: VolumeSource,
    decryptor: Option<std::sync::Arc<dyn Decryptor>>,
) -> (Result<Box<dyn Read + Send>>, Judge) {
    let (report_tx, report_rx) = channel();
    let buf_size = src.read_ahead.buf_size();
    let raw: Box<dyn Read + Send> = Box::new(HashingReader {
        inner: src.raw,
        hasher: src.expected_sha1.as_ref().map(|_| Sha1::new()),
        bytes: 0,
        read_error: None,
        report: report_tx,
        buf_size,
    });
    let name = &src.name;
    let plain = (|| -> Result<Box<dyn Read + Send>> {
        if matches!(src.encoding, Encoding::Plain | Encoding::Gzip) {
            if let Some(d) = &decryptor {
                d.check_unencrypted()?;
            }
        }
        Ok(match src.encoding {
            Encoding::Plain => raw,
            Encoding::Gzip => Box::new(GzipReader::new(raw, buf_size)?),
            Encoding::Gpg => decryptor
                .ok_or_else(|| anyhow!("{name} is encrypted, but no decryption is set up"))?
                .decrypt(raw, src.named_time)?,
            Encoding::P7m => {
                return Err(anyhow!(
                    "{name} is encrypted with gpgsm (CMS), which dupmirror does not read"
                ))
            }
        })
    })();
    let judge = Judge {
        name: src.name,
        expected_sha1: src.expected_sha1,
        report: report_rx,
    };
    (plain, judge)
}

fn pump(
    r: &mut dyn Read,
    buf_size: usize,
    tx: &SyncSender<Msg>,
    stop: &AtomicBool,
    recycled: &Receiver<Vec<u8>>,
) -> Result<()> {
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut buf = recycled.try_recv().unwrap_or_default();
        buf.resize(buf_size, 0);
        let mut filled = 0;
        while filled < buf_size {
            let n = r.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(());
        }
        buf.truncate(filled);
        if tx.send(Msg::Data(buf)).is_err() {
            return Ok(()); // the reader went away; finish() is not waiting for data
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::gzip::tests::gzip;
    use crate::source::lease;
    use std::fs::{File, OpenOptions};
    use std::os::unix::fs::MetadataExt;

    fn sha1_hex(mut data: &[u8]) -> String {
        crate::source::sha1_hex(&mut data).unwrap()
    }

    /// `stored` decoded both ways (ahead on a helper thread, inline), read `reading` bytes
    /// far: what was read and the verdict of `finish`.
    fn decoded_both_ways(
        stored: &[u8],
        sha1: Option<String>,
        reading: usize,
    ) -> Vec<(ReadAhead, Vec<u8>, Result<()>)> {
        [ReadAhead::Volume, ReadAhead::Inline]
            .into_iter()
            .map(|read_ahead| {
                let mut decoded = DecodedFile::spawn(
                    VolumeSource {
                        name: "volume.gz".into(),
                        encoding: Encoding::Gzip,
                        expected_sha1: sha1.clone(),
                        named_time: None,
                        raw: Box::new(io::Cursor::new(stored.to_vec())),
                        read_ahead,
                    },
                    None,
                );
                let mut read = Vec::new();
                let got = (&mut decoded).take(reading as u64).read_to_end(&mut read);
                let verdict = match got {
                    Ok(_) => decoded.finish(),
                    Err(_) => decoded.abandon(),
                };
                (read_ahead, read, verdict)
            })
            .collect()
    }

    #[test]
    fn both_ways_give_the_same_bytes_and_check_the_hash_of_the_whole_file() {
        let data: Vec<u8> = (0..3 * ReadAhead::Volume.buf_size())
            .map(|i| i as u8)
            .collect();
        let stored = gzip(&data);
        for (way, read, verdict) in decoded_both_ways(&stored, Some(sha1_hex(&stored)), 1 << 30) {
            assert_eq!(read, data, "{way:?}");
            verdict.unwrap();
        }
        // Only a part read (a tar that ends early): the rest is still hashed.
        for (way, _, verdict) in decoded_both_ways(&stored, Some("0".repeat(40)), 1000) {
            let e = verdict.unwrap_err();
            assert!(format!("{e:#}").contains("SHA1 mismatch"), "{way:?}: {e:#}");
        }
    }

    #[test]
    fn both_ways_check_the_gzip_trailer_after_the_part_read() {
        let data = vec![7u8; 100_000];
        let mut stored = gzip(&data);
        let crc_at = stored.len() - 8;
        stored[crc_at] ^= 1;
        for (way, _, verdict) in decoded_both_ways(&stored, None, 1000) {
            let e = verdict.unwrap_err();
            assert!(
                format!("{e:#}").contains("corrupt gzip data"),
                "{way:?}: {e:#}"
            );
        }
    }

    #[test]
    fn both_ways_name_the_hash_rather_than_the_corruption_it_explains() {
        let mut stored = gzip(&[1u8; 100_000]);
        let good = sha1_hex(&stored);
        stored.truncate(stored.len() / 2);
        for (way, _, verdict) in decoded_both_ways(&stored, Some(good), 1 << 30) {
            let e = verdict.unwrap_err();
            assert!(format!("{e:#}").contains("SHA1 mismatch"), "{way:?}: {e:#}");
        }
        for (way, _, verdict) in decoded_both_ways(&stored, None, 1 << 30) {
            let e = verdict.unwrap_err();
            assert!(format!("{e:#}").contains("truncated"), "{way:?}: {e:#}");
        }
    }

    /// Whether the kernel lists a lease on inode `ino` as being broken.
    fn lease_breaking(ino: u64) -> bool {
        let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
        locks.lines().any(|l| {
            l.contains("LEASE") && l.contains("BREAKING") && l.contains(&format!(":{ino} "))
        })
    }

    /// A volume pinned by a lease and decoded without a second hash: a writer that opens
    /// it mid-decode stops the decode at the next read, with the reason.
    #[test]
    fn a_writer_opening_a_leased_volume_mid_decode_stops_it() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let path = dir.path().join("volume.gz");
        // Incompressible, and far more than the buffers in flight: the decoder is still
        // reading when the writer comes.
        let mut rng = fastrand::Rng::with_seed(15);
        let data: Vec<u8> = (0..8 * ReadAhead::Volume.buf_size())
            .map(|_| rng.u8(..))
            .collect();
        std::fs::write(&path, gzip(&data)).unwrap();
        let ino = std::fs::metadata(&path).unwrap().ino();

        let leased = lease::pin(File::open(&path).unwrap())
            .map_err(|_| ())
            .unwrap();
        let mut decoded = DecodedFile::spawn(
            VolumeSource {
                name: "volume.gz".into(),
                encoding: Encoding::Gzip,
                expected_sha1: None,
                named_time: None,
                raw: Box::new(leased),
                read_ahead: ReadAhead::Volume,
            },
            None,
        );
        let mut first = [0u8; 1];
        decoded.read_exact(&mut first).unwrap();
        let writing = {
            let path = path.clone();
            std::thread::spawn(move || OpenOptions::new().write(true).open(path))
        };
        // The writer has broken the lease once the kernel lists it as breaking, or once its
        // open has returned: the decoder, when it was still reading, met the break at once
        // and let the file go, which lets the writer through (a loaded machine, CI).
        while !lease_breaking(ino) && !writing.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut rest = Vec::new();
        let err = decoded.read_to_end(&mut rest).unwrap_err();
        assert!(err.to_string().contains("opened for writing"), "{err}");
        assert!(rest.len() < data.len() - 1, "the whole volume was decoded");
        let verdict = decoded.finish().unwrap_err();
        assert!(
            format!("{verdict:#}").contains("lease broke"),
            "{verdict:#}"
        );
        writing.join().unwrap().unwrap();
    }
}
