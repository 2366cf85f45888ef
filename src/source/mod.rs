//! Where repository files come from.
//!
//! A [`Backend`] is deliberately narrow, like restic's: list the folder (names and sizes) and
//! open one file for reading from an offset (so a cut download can resume). Everything
//! else wraps a backend instead of living inside each one: [`retry::RetryBackend`] retries
//! transient failures with backoff and resumes cut reads, [`meter::Meter`] counts the
//! bytes into the run's [`Reporter`] and throttles them, and [`cache`] caches and
//! prefetches volumes. Nothing downstream knows which backend the bytes came from.
//!
//! Backends: a local folder (read in place), FTP/FTPS ([`ftp`]) and HTTP/HTTPS ([`http`],
//! listing from the server's directory index, see [`autoindex`]), and [`MemoryBackend`] for
//! tests. [`url`] parses remote SOURCE URLs, finds credentials and redacts passwords from
//! everything shown. Every backend keeps the contract written on [`Backend`], and
//! `tests/it/backends.rs` runs one conformance suite against each of them; `faulty` (tests
//! only) breaks the contract on purpose, to test what wraps a backend.
//!
//! Nothing a source says is trusted: [`open_metered`] (and so [`open_source`]) wraps every
//! backend in [`checked::CheckedBackend`], which lets only plain file names through ([`names`]) and
//! stops any read at the size the listing gave. A backend bounds what its own listing
//! reads by [`MAX_LISTING_BYTES`] (see [`ListingBudget`]).

mod autoindex;
mod aws;
pub mod cache;
pub mod checked;
#[cfg(test)]
pub mod faulty;
mod ftp;
mod http;
pub mod lease;
mod local;
mod memory;
pub mod meter;
pub mod mirrors;
pub mod names;
mod proxy;
pub mod retry;
mod s3;
pub mod sftp;
mod tls;
pub mod url;

pub use local::LocalBackend;
pub use memory::MemoryBackend;

use crate::progress::Reporter;
use anyhow::{anyhow, Result};
use sha1::{Digest, Sha1};
use std::collections::HashMap;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One file of the repository folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    pub name: String,
    pub size: Option<u64>,
}

/// The sizes a backend's last listing gave, by name: what the layers above it check reads
/// against (a read that ends short was cut; one that goes on is refused).
#[derive(Default)]
pub struct ListedSizes(Mutex<HashMap<String, u64>>);

impl ListedSizes {
    pub fn record(&self, listing: &[ListEntry]) {
        if let Ok(mut sizes) = self.0.lock() {
            *sizes = listing
                .iter()
                .filter_map(|e| Some((e.name.clone(), e.size?)))
                .collect();
        }
    }

    pub fn get(&self, name: &str) -> Option<u64> {
        self.0.lock().ok().and_then(|s| s.get(name).copied())
    }
}

/// A file opened for reading.
pub struct Opened {
    pub reader: Box<dyn Read + Send>,
    /// Where `reader` starts in the file: the offset asked for, or 0 when the backend cannot
    /// start elsewhere (an HTTP server that ignores `Range`).
    pub offset: u64,
}

/// One repository folder, reachable somehow. The contract every backend keeps (the
/// conformance suite in `tests/it/backends.rs` checks it for each one):
///
/// * **Listing**: [`Backend::list`] gives every regular file directly in the folder, once,
///   by its plain name (no `/`), with its exact size in bytes when the protocol tells it
///   (`None` only when it does not, such as a directory index without sizes). No
///   subfolders; names that are not UTF-8 may be left out (they cannot be duplicity's);
///   order does not matter. A file added to the folder shows in the next listing.
/// * **Ranged open**: [`Backend::open`] of a listed file returns a reader of its bytes from
///   [`Opened::offset`] to the end, where that offset is the one asked for or 0 (a server
///   that cannot start elsewhere; also allowed for an offset at or past the end). Never
///   any other offset. Readers are independent: several may be open at once, on any
///   thread (the download thread reads volumes while the repository reads a manifest).
/// * **Errors say whether to retry**: a failure the same request may get past later
///   (connection refused, reset or cut, a timeout, HTTP 5xx/408/429, FTP 4xx) is a
///   [`SourceError::Transient`] or an [`io::Error`] that [`is_transient_io`] accepts;
///   anything that will only repeat (a missing file, a refused login or certificate,
///   HTTP 4xx, FTP 5xx) is a [`SourceError::Permanent`] or another error. A reader that
///   fails mid-stream returns any `io::Error`: the retry layer treats every broken read as a
///   cut and resumes it. A backend does not retry by itself; [`retry::RetryBackend`] does.
/// * **Display**: [`Backend::display`] says which source this is, for messages and
///   reports (a path, a URL), and never contains a password; neither does any error.
pub trait Backend: Send + Sync {
    /// The files of the repository folder (not recursive), with their sizes. A remote
    /// listing reads at most [`MAX_LISTING_BYTES`] from the server.
    fn list(&self) -> Result<Vec<ListEntry>>;

    /// Opens a file for reading, starting `offset` bytes in (or at 0, see [`Opened`]).
    fn open(&self, name: &str, offset: u64) -> Result<Opened>;

    /// The source as it may be shown to a person: passwords are never part of it.
    fn display(&self) -> String;

    /// Whether files are read in place (a local folder): nothing to download or cache.
    fn is_local(&self) -> bool {
        false
    }

    /// The file itself, read in place and pinned by a read lease ([`lease::pin`]), when the
    /// source is a local folder and the kernel grants the lease; `None` otherwise (then
    /// [`Backend::open`] reads it).
    fn open_pinned(&self, _name: &str) -> Option<Result<lease::LeasedFile>> {
        None
    }

    /// The copy of `name` last opened failed its check: open it elsewhere next time.
    /// Whether another copy remains to try (several sources only; see [`mirrors`]).
    fn distrust(&self, _name: &str) -> bool {
        false
    }

    /// Checks that every source holding `name` holds the same bytes (several sources only).
    fn verify_copies(&self, _name: &str) -> Result<()> {
        Ok(())
    }
}

/// A shared backend is a backend (so a test can keep a handle on one it hands over, and
/// several sources can share one).
impl<B: Backend + ?Sized> Backend for Arc<B> {
    fn list(&self) -> Result<Vec<ListEntry>> {
        (**self).list()
    }
    fn open(&self, name: &str, offset: u64) -> Result<Opened> {
        (**self).open(name, offset)
    }
    fn display(&self) -> String {
        (**self).display()
    }
    fn is_local(&self) -> bool {
        (**self).is_local()
    }
    fn open_pinned(&self, name: &str) -> Option<Result<lease::LeasedFile>> {
        (**self).open_pinned(name)
    }
    fn distrust(&self, name: &str) -> bool {
        (**self).distrust(name)
    }
    fn verify_copies(&self, name: &str) -> Result<()> {
        (**self).verify_copies(name)
    }
}

/// How a backend failure should be handled. Backends wrap their library's errors in this,
/// so that [`retry`] can tell a failure worth retrying from one that will only repeat.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The same request may succeed later: connection refused, reset or cut, a timeout, an
    /// HTTP 5xx, 408 or 429, an FTP 4xx reply.
    #[error("{0}")]
    Transient(String),
    /// Trying again will not help: wrong password, a missing file, a refused certificate.
    #[error("{0}")]
    Permanent(String),
}

/// The SHA1 (hex) of everything `r` yields, read 256 KiB at a time (a leased local file
/// checks its lease after every read, so few large reads are cheaper than many small).
pub fn sha1_hex(r: &mut dyn Read) -> io::Result<String> {
    let mut hasher = Sha1::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(hex::encode(hasher.finalize())),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether an I/O error is a network hiccup rather than a lasting condition.
pub fn is_transient_io(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | NotConnected
            | BrokenPipe
            | TimedOut
            | WouldBlock
            | UnexpectedEof
            | Interrupted
            | HostUnreachable
            | NetworkUnreachable
            | NetworkDown
    )
}

/// The innermost cause of an error: what a network library's layered errors ("error
/// sending request" → … → "Connection refused") come down to.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// How to reach remote sources. The defaults suit a timer-driven sync over the internet.
/// What a source transfers is counted elsewhere, in the run's [`Reporter`].
#[derive(Clone)]
pub struct SourceOptions {
    /// Retries after a transient failure (0: fail at the first one).
    pub retries: u32,
    pub connect_timeout: Duration,
    /// The longest wait for any reply or data from the server.
    pub read_timeout: Duration,
    /// Extra trusted root certificates (PEM), for a server with a private CA.
    pub ca_file: Option<PathBuf>,
    /// Cap on the download rate, bytes per second (`--bwlimit`), for all sources of a run
    /// together.
    pub bwlimit: Option<u64>,
    /// The S3-compatible server for `s3://` sources (`--s3-endpoint-url`).
    pub s3_endpoint: Option<String>,
    /// How to run `ssh` for `sftp://` sources.
    pub ssh: sftp::SshOptions,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            retries: 5,
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            ca_file: None,
            bwlimit: None,
            s3_endpoint: None,
            ssh: sftp::SshOptions::default(),
        }
    }
}

/// The most bytes of one directory listing read from a server (64 MiB: some 400,000 files
/// in an HTML index). A listing that goes on is refused instead of filling the memory.
pub const MAX_LISTING_BYTES: u64 = 64 << 20;

/// What one listing may still read from a server: [`MAX_LISTING_BYTES`] in all, however
/// many requests, pages or packets it takes (a server that never stops paging is cut off
/// like one that never stops sending).
pub struct ListingBudget {
    left: u64,
    /// Which listing, for the error.
    what: String,
}

impl ListingBudget {
    pub fn new(what: &str) -> ListingBudget {
        ListingBudget {
            left: MAX_LISTING_BYTES,
            what: what.to_string(),
        }
    }

    /// Counts `n` more bytes of the listing; an error once it is larger than the bound.
    pub fn spend(&mut self, n: u64) -> Result<()> {
        match self.left.checked_sub(n) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(crate::error::Error::corrupt(format!(
                "{}: the listing is larger than {} MiB, the most dupmirror reads of one",
                self.what,
                MAX_LISTING_BYTES >> 20
            ))
            .into()),
        }
    }

    /// Reads all of `reader` (a listing, or one page of it), counted.
    pub fn read(&mut self, reader: impl Read) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        reader
            .take(self.left.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| {
                let msg = format!("{}: {}", self.what, root_cause(&e));
                anyhow!(if is_transient_io(&e) {
                    SourceError::Transient(msg)
                } else {
                    SourceError::Permanent(msg)
                })
            })?;
        self.spend(data.len() as u64)?;
        Ok(data)
    }
}

/// Opens the backend a SOURCE argument names: a plain path, a `file://` URL, or an
/// `ftp://`, `ftps://`, `http://`, `https://`, `s3://` or `sftp://` URL (and duplicity's
/// other spellings of the last two). Remote backends come wrapped in
/// [`retry::RetryBackend`], which counts what they transfer into `reporter`, under a
/// `--bwlimit` of their own (several sources of one run share one: [`open_metered`]); every
/// backend comes wrapped in [`checked::CheckedBackend`].
pub fn open_source(
    source: &str,
    options: &SourceOptions,
    reporter: &Arc<Reporter>,
) -> Result<Box<dyn Backend>> {
    let meter = Arc::new(meter::Meter::new(options.bwlimit, reporter.clone()));
    open_metered(source, options, &meter)
}

/// [`open_source`] with the meter given: every byte read from the source passes `meter`,
/// so sources that share one share its `--bwlimit` and its reporter.
pub fn open_metered(
    source: &str,
    options: &SourceOptions,
    meter: &Arc<meter::Meter>,
) -> Result<Box<dyn Backend>> {
    let backend: Box<dyn Backend> = if let Some(path) = source.strip_prefix("file://") {
        Box::new(LocalBackend::new(path)?)
    } else if !source.contains("://") {
        Box::new(LocalBackend::new(source)?)
    } else {
        let scheme = source.split_once("://").map_or("", |(s, _)| s);
        let inner: Box<dyn Backend> = if s3::SCHEMES.contains(&scheme) {
            Box::new(s3::S3Backend::new(
                source,
                options.s3_endpoint.as_deref(),
                options,
            )?)
        } else if sftp::SCHEMES.contains(&scheme) {
            Box::new(sftp::SftpBackend::new(source, options)?)
        } else {
            let url = url::SourceUrl::parse(source)?;
            match url.scheme {
                url::Scheme::Ftp | url::Scheme::Ftps => {
                    Box::new(ftp::FtpBackend::new(url, options)?)
                }
                url::Scheme::Http | url::Scheme::Https => {
                    Box::new(http::HttpBackend::new(url, options)?)
                }
            }
        };
        Box::new(retry::RetryBackend::new(
            inner,
            options.retries,
            meter.clone(),
        ))
    };
    Ok(Box::new(checked::CheckedBackend::new(backend)))
}
