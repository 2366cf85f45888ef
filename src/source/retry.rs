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
//! in the [`Meter`].

use super::meter::Meter;
use super::{
    is_transient_io, root_cause, Backend, ListEntry, ListedSizes, Opened, SourceError,
    SourceOptions,
};
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
    pub fn new(inner: Box<dyn Backend>, options: &SourceOptions) -> RetryBackend {
        RetryBackend(Arc::new(Shared {
            inner,
            policy: RetryPolicy::new(options.retries),
            meter: options.meter.clone(),
            sizes: ListedSizes::default(),
        }))
    }
}

impl Shared {
    /// Announces retry `n` (1-based) after `failure` and waits for it.
    fn back_off(&self, failure: &str, n: u32) {
        let wait = self.policy.delay(n - 1);
        self.meter.retrying(&format!(
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
        self.meter.resumed(opened.offset);
        Ok(opened)
    }
}

impl Backend for RetryBackend {
    fn list(&self) -> Result<Vec<ListEntry>> {
        let s = &self.0;
        let listing = s.with_retries(|| {
            s.meter.listed();
            s.inner.list()
        })?;
        s.sizes.record(&listing);
        Ok(listing)
    }

    fn open(&self, name: &str, offset: u64) -> Result<Opened> {
        let s = &self.0;
        let opened = s.with_retries(|| s.open_once(name, offset))?;
        s.meter.file_opened();
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
                        self.shared.meter.refetched(n as u64);
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
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A file served in pieces: each open delivers at most `cut` bytes, then fails.
    struct Flaky {
        data: Vec<u8>,
        cut: usize,
        ranges: bool,
        opens: AtomicU32,
        failing_opens: u32,
    }

    impl Backend for Flaky {
        fn list(&self) -> Result<Vec<ListEntry>> {
            Ok(vec![ListEntry {
                name: "f".into(),
                size: Some(self.data.len() as u64),
            }])
        }
        fn open(&self, _: &str, offset: u64) -> Result<Opened> {
            if self.opens.fetch_add(1, Ordering::SeqCst) < self.failing_opens {
                return Err(anyhow!(SourceError::Transient("503".into())));
            }
            let start = if self.ranges { offset as usize } else { 0 };
            let end = (start + self.cut).min(self.data.len());
            let piece = self.data[start..end].to_vec();
            let tail: Box<dyn Read + Send> = if end < self.data.len() {
                Box::new(FailAfter)
            } else {
                Box::new(io::empty())
            };
            Ok(Opened {
                reader: Box::new(io::Cursor::new(piece).chain(tail)),
                offset: start as u64,
            })
        }
        fn display(&self) -> String {
            "flaky".into()
        }
    }

    struct FailAfter;
    impl Read for FailAfter {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::ConnectionReset.into())
        }
    }

    fn backend(ranges: bool, failing_opens: u32, retries: u32) -> (RetryBackend, Arc<Meter>) {
        let meter = Arc::new(Meter::default());
        let options = SourceOptions {
            retries,
            meter: meter.clone(),
            ..SourceOptions::default()
        };
        let mut b = RetryBackend::new(
            Box::new(Flaky {
                data: (0..100_000u32).map(|i| (i % 251) as u8).collect(),
                cut: 30_000,
                ranges,
                opens: AtomicU32::new(0),
                failing_opens,
            }),
            &options,
        );
        if let Some(s) = Arc::get_mut(&mut b.0) {
            s.policy.base = Duration::from_millis(1);
        }
        (b, meter)
    }

    fn read_all(b: &RetryBackend) -> Result<Vec<u8>> {
        b.list()?;
        let mut out = Vec::new();
        b.open("f", 0)?.reader.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn resumes_with_ranges_without_fetching_twice() {
        let (b, meter) = backend(true, 1, 3);
        let data = read_all(&b).unwrap();
        assert_eq!(data.len(), 100_000);
        assert!(data.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8));
        let t = meter.snapshot();
        assert_eq!(t.bytes_downloaded, 100_000);
        assert_eq!(t.bytes_refetched, 0);
        assert_eq!(t.bytes_resumed, 30_000 + 60_000 + 90_000);
        assert_eq!(t.files_fetched, 1);
        assert_eq!(t.retries, 4); // one failed open, three cuts
    }

    #[test]
    fn without_ranges_reads_again_and_drops() {
        let (mut b, meter) = backend(false, 0, 3);
        if let Some(s) = Arc::get_mut(&mut b.0) {
            s.inner = Box::new(Flaky {
                data: (0..100_000u32).map(|i| (i % 251) as u8).collect(),
                cut: 60_000,
                ranges: false,
                opens: AtomicU32::new(0),
                failing_opens: 0,
            });
        }
        // 60k per connection from the top can never get past 60k: it gives up.
        let err = read_all(&b).unwrap_err();
        assert!(
            format!("{err:#}").contains("gave up after 3 retries"),
            "{err:#}"
        );
        assert!(meter.snapshot().bytes_refetched >= 60_000);
    }

    #[test]
    fn gives_up_on_a_permanent_error_at_once() {
        struct Denied;
        impl Backend for Denied {
            fn list(&self) -> Result<Vec<ListEntry>> {
                Err(anyhow!(SourceError::Permanent(
                    "530 login incorrect".into()
                )))
            }
            fn open(&self, _: &str, _: u64) -> Result<Opened> {
                unreachable!()
            }
            fn display(&self) -> String {
                "denied".into()
            }
        }
        let meter = Arc::new(Meter::default());
        let b = RetryBackend::new(
            Box::new(Denied),
            &SourceOptions {
                meter: meter.clone(),
                ..SourceOptions::default()
            },
        );
        assert_eq!(
            format!("{:#}", b.list().unwrap_err()),
            "530 login incorrect"
        );
        assert_eq!(meter.snapshot().retries, 0);
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
