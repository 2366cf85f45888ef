//! Retries with exponential backoff and jitter, and resumption of cut reads, around any
//! backend.
//!
//! [`RetryBackend`] repeats a listing or an open that failed transiently (see
//! [`is_transient`]) up to `--retries` times, waiting 0.5 s, 1 s, 2 s, ... (capped at 30 s,
//! each drawn at random from its upper half so that many hosts do not retry in step). The
//! readers it hands out survive a cut connection: they reopen the file at the byte they
//! reached (HTTP `Range`, FTP `REST`), or, when the server can only start from the top,
//! read and drop what they already had. The retry budget applies to failures in a row; a
//! reader that makes progress between cuts starts afresh. Every byte and retry is counted
//! through the [`Meter`].

use super::meter::Meter;
use super::{is_transient_io, root_cause, Backend, ListEntry, ListedSizes, Opened, SourceError};
use anyhow::{anyhow, Result};
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

/// Whether retrying may help: a [`SourceError::Transient`] or a network-flavoured I/O error
/// anywhere in the chain.
pub fn is_transient(e: &anyhow::Error) -> bool {
    for cause in e.chain() {
        if let Some(se) = cause.downcast_ref::<SourceError>() {
            return matches!(se, SourceError::Transient(_));
        }
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return is_transient_io(io);
        }
    }
    false
}

#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub retries: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    pub fn new(retries: u32) -> RetryPolicy {
        RetryPolicy {
            retries,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
        }
    }

    /// The wait before retry number `n` (0-based): `base * 2^n`, capped, with jitter.
    pub fn delay(&self, n: u32) -> Duration {
        let full = self.base.saturating_mul(1 << n.min(16)).min(self.cap);
        full.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

struct Shared {
    inner: Box<dyn Backend>,
    policy: RetryPolicy,
    meter: Arc<Meter>,
    /// A read that ends short of its listed size was cut.
    sizes: ListedSizes,
}

pub struct RetryBackend(Arc<Shared>);

impl RetryBackend {
    /// Retries `inner`'s transient failures up to `retries` times in a row.
    pub fn new(inner: Box<dyn Backend>, retries: u32, meter: Arc<Meter>) -> RetryBackend {
        RetryBackend(Arc::new(Shared {
            inner,
            policy: RetryPolicy::new(retries),
            meter,
            sizes: ListedSizes::default(),
        }))
    }

    /// The same, backing off for a millisecond at most (tests).
    #[cfg(test)]
    pub fn without_waiting(mut self) -> RetryBackend {
        if let Some(s) = Arc::get_mut(&mut self.0) {
            s.policy.base = Duration::from_millis(1);
            s.policy.cap = Duration::from_millis(1);
        }
        self
    }
}

impl Shared {
    /// Announces retry `n` (1-based) after `failure` and waits for it.
    fn back_off(&self, failure: &str, n: u32) {
        let wait = self.policy.delay(n - 1);
        self.meter.reporter().retrying(&format!(
            "{failure}; retry {n} of {} in {:.1}s",
            self.policy.retries,
            wait.as_secs_f64()
        ));
        std::thread::sleep(wait);
    }

    fn with_retries<T>(&self, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        let mut n = 0;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(e) if is_transient(&e) && n < self.policy.retries => {
                    n += 1;
                    self.back_off(&format!("{e:#}"), n);
                }
                Err(e) if n > 0 => return Err(e.context(format!("gave up after {n} retries"))),
                Err(e) => return Err(e),
            }
        }
    }

    /// One open; counts what a resume saved.
    fn open_once(&self, name: &str, offset: u64) -> Result<Opened> {
        let opened = self.inner.open(name, offset)?;
        if opened.offset > offset {
            return Err(anyhow!(SourceError::Permanent(format!(
                "{name}: the server started at byte {} when asked for byte {offset}",
                opened.offset
            ))));
        }
        self.meter.reporter().resumed(opened.offset);
        Ok(opened)
    }
}

impl Backend for RetryBackend {
    fn list(&self) -> Result<Vec<ListEntry>> {
        let s = &self.0;
        let listing = s.with_retries(|| {
            s.meter.reporter().listed();
            s.inner.list()
        })?;
        s.sizes.record(&listing);
        Ok(listing)
    }

    fn open(&self, name: &str, offset: u64) -> Result<Opened> {
        let s = &self.0;
        let opened = s.with_retries(|| s.open_once(name, offset))?;
        s.meter.reporter().file_opened();
        let size = s.sizes.get(name);
        Ok(Opened {
            offset: opened.offset,
            reader: Box::new(ResumingReader {
                shared: self.0.clone(),
                name: name.to_string(),
                size,
                pos: opened.offset,
                skip: 0,
                reader: opened.reader,
                failures: 0,
            }),
        })
    }

    fn display(&self) -> String {
        self.0.inner.display()
    }
}

/// A reader that reopens its file where it stopped when the connection fails.
struct ResumingReader {
    shared: Arc<Shared>,
    name: String,
    size: Option<u64>,
    /// Offset in the file of the next byte handed out.
    pos: u64,
    /// Bytes to read and drop first (a reopened stream that restarted before `pos`).
    skip: u64,
    reader: Box<dyn Read + Send>,
    /// Failures since the last byte received.
    failures: u32,
}

impl ResumingReader {
    /// Reads from the current stream, counting bytes. `Err` is a failure to recover from.
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize> {
        loop {
            let len = if self.skip > 0 {
                buf.len().min(self.skip as usize)
            } else {
                buf.len()
            };
            match self.reader.read(&mut buf[..len]) {
                Ok(0) => {
                    let short = self.skip > 0 || self.size.is_some_and(|s| self.pos < s);
                    if !short {
                        return Ok(0);
                    }
                    let of = self.size.map(|s| format!(" of {s}")).unwrap_or_default();
                    return Err(anyhow!(SourceError::Transient(format!(
                        "the connection closed after {}{of} bytes",
                        self.pos - self.skip
                    ))));
                }
                Ok(n) => {
                    self.shared.meter.transferred(n);
                    if self.skip > 0 {
                        self.shared.meter.reporter().refetched(n as u64);
                        self.skip -= n as u64;
                        continue;
                    }
                    // Only new bytes count as progress: re-reading the start does not.
                    self.failures = 0;
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Any failure of an open stream is worth a reconnect.
                Err(e) => {
                    return Err(anyhow!(SourceError::Transient(format!(
                        "the download broke off: {}",
                        root_cause(&e)
                    ))))
                }
            }
        }
    }
}

impl Read for ResumingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let shared = self.shared.clone();
        let mut err = match self.read_some(buf) {
            Ok(n) => return Ok(n),
            Err(e) => e,
        };
        loop {
            if self.failures >= shared.policy.retries {
                let msg = if self.failures > 0 {
                    format!("{err:#} (gave up after {} retries)", self.failures)
                } else {
                    format!("{err:#}")
                };
                return Err(io::Error::other(msg));
            }
            self.failures += 1;
            shared.back_off(
                &format!("{} at byte {}: {err:#}", self.name, self.pos),
                self.failures,
            );
            // A cut read is always resumed; an open that fails for good ends it.
            match shared.open_once(&self.name, self.pos) {
                Ok(opened) => {
                    self.skip = self.pos - opened.offset;
                    self.reader = opened.reader;
                    match self.read_some(buf) {
                        Ok(n) => return Ok(n),
                        Err(e) => err = e,
                    }
                }
                Err(e) if is_transient(&e) => err = e,
                Err(e) => return Err(io::Error::other(format!("{e:#}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Reporter;
    use crate::source::faulty::{Faults, FaultyBackend};
    use crate::source::MemoryBackend;

    fn data() -> Vec<u8> {
        (0..100_000u32).map(|i| (i % 251) as u8).collect()
    }

    /// File `f` (100,000 bytes) behind `faults`, retried up to `retries` times at once.
    fn backend(faults: Faults, retries: u32) -> (RetryBackend, Arc<Reporter>) {
        let memory = MemoryBackend::new("test");
        memory.insert("f", data());
        let reporter = Arc::new(Reporter::default());
        let b = RetryBackend::new(
            Box::new(FaultyBackend::new(Box::new(memory), faults)),
            retries,
            Arc::new(Meter::new(None, reporter.clone())),
        )
        .without_waiting();
        (b, reporter)
    }

    fn read_all(b: &RetryBackend) -> Result<Vec<u8>> {
        b.list()?;
        let mut out = Vec::new();
        b.open("f", 0)?.reader.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn resumes_with_ranges_without_fetching_twice() {
        let faults = Faults {
            failing_opens: 1,
            cut_after: Some(30_000),
            ..Faults::default()
        };
        let (b, reporter) = backend(faults, 3);
        assert_eq!(read_all(&b).unwrap(), data());
        let t = reporter.transfer();
        assert_eq!(t.bytes_downloaded, 100_000);
        assert_eq!(t.bytes_refetched, 0);
        assert_eq!(t.bytes_resumed, 30_000 + 60_000 + 90_000);
        assert_eq!(t.files_fetched, 1);
        assert_eq!(t.retries, 4); // one failed open, three cuts
    }

    #[test]
    fn without_ranges_reads_again_and_drops() {
        // 40k per connection from the top: each reconnect gets 40k further than it must
        // drop, so the read completes; the dropped bytes are counted as fetched again.
        let faults = Faults {
            cut_after: Some(40_000),
            cuts: Some(2),
            no_ranges: true,
            ..Faults::default()
        };
        let (b, reporter) = backend(faults, 3);
        assert_eq!(read_all(&b).unwrap(), data());
        let t = reporter.transfer();
        assert_eq!(t.bytes_refetched, 40_000 + 40_000);
        assert_eq!(t.bytes_downloaded, 100_000 + t.bytes_refetched);
        // A cut that comes before the old position every time never gets further.
        let faults = Faults {
            cut_after: Some(60_000),
            no_ranges: true,
            ..Faults::default()
        };
        let (b, reporter) = backend(faults, 3);
        let err = read_all(&b).unwrap_err();
        assert!(
            format!("{err:#}").contains("gave up after 3 retries"),
            "{err:#}"
        );
        assert!(reporter.transfer().bytes_refetched >= 60_000);
    }

    #[test]
    fn listings_are_retried() {
        let faults = Faults {
            failing_lists: 2,
            ..Faults::default()
        };
        let (b, reporter) = backend(faults, 2);
        assert_eq!(b.list().unwrap().len(), 1);
        assert_eq!(reporter.transfer().retries, 2);
        assert_eq!(reporter.transfer().listings, 3);
        let faults = Faults {
            failing_lists: 3,
            ..Faults::default()
        };
        let (b, _) = backend(faults, 2);
        let err = format!("{:#}", b.list().unwrap_err());
        assert!(err.contains("gave up after 2 retries"), "{err}");
    }

    #[test]
    fn a_permanent_error_is_not_retried() {
        let (b, reporter) = backend(Faults::default(), 5);
        let Err(err) = b.open("missing", 0) else {
            panic!("a missing file opened");
        };
        let err = format!("{err:#}");
        assert_eq!(err, "missing: no such file");
        assert_eq!(reporter.transfer().retries, 0);
    }

    #[test]
    fn a_read_short_of_the_listed_size_is_a_cut() {
        // The listing promises more than the file holds: the reader must not take the
        // early end for the end of the file.
        let faults = Faults {
            wrong_sizes: [("f".to_string(), 100_500)].into(),
            ..Faults::default()
        };
        let (b, reporter) = backend(faults, 2);
        let err = read_all(&b).unwrap_err().to_string();
        assert!(
            err.contains("closed after 100000 of 100500 bytes") && err.contains("gave up"),
            "{err}"
        );
        assert_eq!(reporter.transfer().retries, 2);
    }

    #[test]
    fn delays_grow_and_stay_capped() {
        let p = RetryPolicy::new(10);
        for n in 0..12 {
            let d = p.delay(n);
            let full = p.base.saturating_mul(1 << n).min(p.cap);
            assert!(d >= full / 2 && d <= full, "{n}: {d:?}");
        }
    }
}
