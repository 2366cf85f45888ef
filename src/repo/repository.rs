//! A duplicity repository as dupmirror reads it: the listing sorted into chains, and the
//! means to read a set's manifest and stream its volumes into a record sink.
//!
//! Volumes come from the source directly (a local folder is read in place), or, once
//! [`Repository::prefetch`] has queued a sync's volumes for a remote source, from the
//! download cache, checked on arrival (see `source::cache`). Either way a compressed or
//! encrypted volume is checked against its manifest SHA1 before any of it is decoded, so a
//! forged one (a gzip bomb) writes nothing to staging; and what is decoded is what was
//! checked: a cached file is private, a local one is pinned by a read lease
//! (`source::lease`) or, when it cannot be, hashed again as it is decoded.
//!
//! A set's volumes are read in order into one record sink ([`Repository::read_set`]), or,
//! for a first sync, apart ([`Repository::read_set_apart`]):
//!
//! ```text
//! N decoder threads, each: take the next volume (at most 2N ahead of the first one not
//!     done; from the download cache in order); check its SHA1; decode it (its own helper
//!     thread inflates) into a sink of its own, through a record stream of its own
//! the calling thread, in volume order as they come in: join the volume's edges to the
//!     previous ones (order, chunk offsets: decode::records), then the sink is done
//! a decoder that finds no volume left to take tells the sinks (`no_volume_left`: a fresh
//!     build then writes back more often, its core being free)
//! the first failure in volume order (a hash, a parse, a join) stops handing out volumes
//!     and fails the set once every decoder has stopped
//! ```
//!
//! Limits: a decoder waits for the download cache like the ordered reader; a failure is
//! reported only once the volumes before it are read.

use crate::decode::crypto::Decryptor;
use crate::decode::records::{RecordSink, RecordStream, VolumeEdges, VolumeSink, VolumeSinks};
use crate::decode::volume::{DecodedFile, ReadAhead, VolumeSource};
use crate::error::Error;
use crate::progress::Reporter;
use crate::repo::collection::{BackupSet, Collection};
use crate::repo::filename::{Encoding, NameParser, Prefixes, RemoteFile};
use crate::repo::manifest::{Manifest, ManifestError};
use crate::source::cache::{FetchTimes, Fetcher, WantedVolume};
use crate::source::{Backend, SourceOptions};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc::channel;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

/// Decoders of a first sync when `DUPMIRROR_DECODERS` does not say.
const MAX_DEFAULT_DECODERS: usize = 4;

/// How to read names and encrypted files.
#[derive(Clone, Default)]
pub struct RepoOptions {
    pub prefixes: Prefixes,
    /// duplicity's `--time-separator` for old W3 names; `:` by default.
    pub time_separator: Option<char>,
    pub decryptor: Option<Arc<dyn Decryptor>>,
    /// How to reach a remote source.
    pub source: SourceOptions,
}

pub struct Repository {
    backend: Arc<dyn Backend>,
    decryptor: Option<Arc<dyn Decryptor>>,
    /// Moves the apply bar; the fetcher reports its downloads here too.
    reporter: Arc<Reporter>,
    /// Downloads a sync's volumes ahead (remote sources only).
    fetcher: OnceLock<Fetcher>,
    pub collection: Collection,
}

impl Repository {
    /// Lists the source and sorts what it holds into chains. What the repository reads
    /// is reported to `reporter`.
    pub fn open(
        backend: Box<dyn Backend>,
        options: &RepoOptions,
        reporter: Arc<Reporter>,
    ) -> Result<Self> {
        let parser = NameParser::new(&options.prefixes, options.time_separator.unwrap_or(':'));
        let listing = backend
            .list()
            .with_context(|| format!("cannot list {}", backend.display()))?;
        let collection = Collection::from_listing(&listing, &parser)?;
        Ok(Repository {
            backend: backend.into(),
            decryptor: options.decryptor.clone(),
            reporter,
            fetcher: OnceLock::new(),
            collection,
        })
    }

    pub fn display(&self) -> String {
        self.backend.display()
    }

    /// A manifest or a signature file, decoded a little ahead of its reader.
    fn reader(&self, file: &RemoteFile, sha1: Option<String>) -> Result<DecodedFile> {
        Ok(self.decode(file, sha1, self.open_raw(file)?, ReadAhead::Small))
    }

    fn decode(
        &self,
        file: &RemoteFile,
        sha1: Option<String>,
        raw: Box<dyn Read + Send>,
        read_ahead: ReadAhead,
    ) -> DecodedFile {
        DecodedFile::spawn(
            VolumeSource {
                name: file.name.clone(),
                encoding: file.encoding,
                expected_sha1: sha1,
                named_time: Some(file.end_time),
                raw,
                read_ahead,
            },
            self.decryptor.clone(),
        )
    }

    /// Opens a file for streaming, decoded (no hash check).
    pub fn open_stream(&self, file: &RemoteFile) -> Result<DecodedFile> {
        self.reader(file, None)
    }

    /// The set's manifest, checked against the volumes the source has.
    pub fn manifest(&self, set: &BackupSet) -> Result<Manifest> {
        let file = set
            .manifest
            .as_ref()
            .ok_or_else(|| anyhow!("set {} has no manifest", set.label()))?;
        // Every source must agree on the manifest: it anchors the set's volumes.
        self.backend.verify_copies(&file.name)?;
        let max_volume = set.volumes.keys().max().copied().unwrap_or(0);
        let mut reader = self.reader(file, None)?;
        let parsed = Manifest::read(&mut io::BufReader::new(&mut reader), max_volume);
        // The file's own verdict (decryption, signature) explains a parse error best; after
        // one, the rest is not decoded.
        match &parsed {
            Ok(_) => reader.finish(),
            Err(_) => reader.abandon(),
        }?;
        let manifest = parsed
            .map_err(ManifestError::into_cause)
            .with_context(|| format!("manifest {}", file.name))?;
        if manifest.volumes.is_empty() {
            bail!("manifest {} lists no volumes", file.name);
        }
        for n in manifest.volumes.keys() {
            if !set.volumes.contains_key(n) {
                bail!(
                    "set {} is broken: its manifest lists volume {n}, which is missing from the source",
                    set.label()
                );
            }
        }
        if let Some(c) = set.conflicts.first() {
            bail!(
                "set {} is ambiguous: {c} duplicates another file of the set",
                set.label()
            );
        }
        Ok(manifest)
    }

    /// Volume `n` of a set and the SHA1 its manifest gives (volumes are never read
    /// unverified).
    fn volume<'a>(
        &self,
        set: &'a BackupSet,
        manifest: &Manifest,
        n: u32,
    ) -> Result<(&'a RemoteFile, String)> {
        let file = set
            .volumes
            .get(&n)
            .ok_or_else(|| anyhow!("set {} has no volume {n}", set.label()))?;
        let Some(sha1) = manifest.sha1_of(n) else {
            bail!(
                "manifest of set {} gives no SHA1 for volume {n}; refusing unverifiable data",
                set.label()
            );
        };
        Ok((file, sha1.to_string()))
    }

    /// What [`Repository::read_set`] will read for these volumes, to queue for fetching.
    pub fn wants(
        &self,
        set: &BackupSet,
        manifest: &Manifest,
        volumes: &[u32],
    ) -> Result<Vec<WantedVolume>> {
        volumes
            .iter()
            .map(|&n| {
                let (file, sha1) = self.volume(set, manifest, n)?;
                Ok(WantedVolume {
                    name: file.name.clone(),
                    size: file.size,
                    sha1,
                })
            })
            .collect()
    }

    /// Starts downloading `wants` (the volumes a sync will read, in that order) into
    /// `cache_dir`, with at most `prefetch` of them there at once. A local source is read
    /// in place: nothing to do.
    pub fn prefetch(
        &self,
        wants: Vec<WantedVolume>,
        cache_dir: &Path,
        prefetch: usize,
    ) -> Result<()> {
        if self.backend.is_local() {
            return Ok(());
        }
        let fetcher = Fetcher::start(
            self.backend.clone(),
            self.reporter.clone(),
            wants,
            cache_dir,
            prefetch,
        )?;
        self.fetcher
            .set(fetcher)
            .map_err(|_| anyhow!("volumes are being fetched already"))
    }

    pub fn fetch_times(&self) -> FetchTimes {
        self.fetcher.get().map(Fetcher::times).unwrap_or_default()
    }

    /// A volume, decoded and hashed: from the download cache when it was prefetched
    /// (hashed on arrival), else straight from the source (hashed before and as it is read).
    fn volume_reader(&self, file: &RemoteFile, sha1: String) -> Result<DecodedFile> {
        let cached = self.fetcher.get().and_then(|f| f.take(&file.name));
        self.volume_reader_from(file, sha1, cached, ReadAhead::Volume)
    }

    /// The same, `cached` being what the download cache held for it (taken in order).
    fn volume_reader_from(
        &self,
        file: &RemoteFile,
        sha1: String,
        cached: Option<Result<Box<dyn Read + Send>>>,
        read_ahead: ReadAhead,
    ) -> Result<DecodedFile> {
        let (raw, sha1) = match cached {
            Some(cached) => (cached?, None),
            // A plain volume cannot grow: it is hashed as it is read.
            None if file.encoding == Encoding::Plain => (self.open_raw(file)?, Some(sha1)),
            None => self.checked_volume(file, sha1)?,
        };
        let counted = Box::new(AppliedVolume {
            inner: raw,
            reporter: self.reporter.clone(),
        });
        Ok(self.decode(file, sha1, counted, read_ahead))
    }

    fn open_raw(&self, file: &RemoteFile) -> Result<Box<dyn Read + Send>> {
        Ok(self
            .backend
            .open(&file.name, 0)
            .with_context(|| format!("cannot read {}", file.name))?
            .reader)
    }

    /// A compressed or encrypted volume can inflate to a thousand times its size: it must
    /// be the one the manifest names before any of it is decoded into staging. Returns it
    /// checked, to be read from the start, with the SHA1 still to check as it is decoded:
    /// none when the file is pinned by a read lease (a local folder that allows one, see
    /// `source::lease`: it cannot change between the check and the decode), else the
    /// manifest's (it could).
    fn checked_volume(
        &self,
        file: &RemoteFile,
        sha1: String,
    ) -> Result<(Box<dyn Read + Send>, Option<String>)> {
        if let Some(pinned) = self.backend.open_pinned(&file.name) {
            let mut leased = pinned?;
            check_hash(&mut leased, &file.name, &sha1)?;
            leased
                .rewind()
                .with_context(|| format!("cannot read {}", file.name))?;
            return Ok((Box::new(leased), None));
        }
        check_hash(&mut self.open_raw(file)?, &file.name, &sha1)?;
        Ok((self.open_raw(file)?, Some(sha1)))
    }

    /// Streams the given volumes of a set, in order, into `sink`. Each volume's SHA1 is
    /// checked against the manifest; an error in any of them fails the whole set.
    pub fn read_set(
        &self,
        set: &BackupSet,
        manifest: &Manifest,
        volumes: &[u32],
        sink: &mut dyn RecordSink,
    ) -> Result<()> {
        let mut stream = RecordStream::new();
        for n in volumes {
            let (file, sha1) = self.volume(set, manifest, *n)?;
            let mut reader = self.volume_reader(file, sha1)?;
            let parsed = stream.read_volume(&mut reader, sink);
            // The file's own verdict (hash, decoding) explains a parse error best. After a
            // parse error the rest is hashed but not decoded (it may be a gzip bomb).
            match parsed {
                Ok(()) => reader.finish()?,
                Err(_) => reader.abandon()?,
            }
            parsed.with_context(|| format!("volume {}", file.name))?;
        }
        stream.close(sink)
    }
}

/// The volumes of a set read apart: what the decoders share.
struct Apart {
    /// The next volume to hand out, how many are done in order, and whether to stop.
    queue: Mutex<(usize, usize, bool)>,
    moved: Condvar,
}

impl Apart {
    fn lock(&self) -> MutexGuard<'_, (usize, usize, bool)> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One volume read apart: its sink and its edges, or why not.
type ReadApart = Result<(Box<dyn VolumeSink>, VolumeEdges)>;

impl Repository {
    /// The number of volumes a first sync decodes at once: `DUPMIRROR_DECODERS` when set,
    /// else the number of cores (at most 4).
    pub fn decoders() -> Result<usize> {
        crate::threads::count_from_env("DUPMIRROR_DECODERS", 1, MAX_DEFAULT_DECODERS)
    }

    /// Like [`Repository::read_set`], with up to `decoders` volumes read at once, each
    /// into its own sink from `sinks`; the sinks are done, and the volumes' edges joined, in
    /// volume order. At most `2 × decoders` volumes are read ahead of the first one not
    /// done. The first failure in volume order fails the set, after every decoder stopped.
    pub fn read_set_apart(
        &self,
        set: &BackupSet,
        manifest: &Manifest,
        volumes: &[u32],
        decoders: usize,
        sinks: &dyn VolumeSinks,
    ) -> Result<()> {
        let files = volumes
            .iter()
            .map(|&n| self.volume(set, manifest, n))
            .collect::<Result<Vec<_>>>()?;
        let window = 2 * decoders.max(1);
        let apart = Apart {
            queue: Mutex::new((0, 0, false)),
            moved: Condvar::new(),
        };
        let (tx, rx) = channel::<(usize, ReadApart)>();
        std::thread::scope(|scope| {
            for n in 0..decoders.clamp(1, files.len().max(1)) {
                let (tx, apart, files) = (tx.clone(), &apart, &files);
                let spawned = std::thread::Builder::new()
                    .name(format!("decoder-{n}"))
                    .spawn_scoped(scope, move || loop {
                        let (i, cached) = {
                            let mut q = apart.lock();
                            while !q.2 && q.0 < files.len() && q.0 >= q.1 + window {
                                q = apart.moved.wait(q).unwrap_or_else(PoisonError::into_inner);
                            }
                            if q.2 {
                                return;
                            }
                            if q.0 == files.len() {
                                drop(q);
                                sinks.no_volume_left();
                                return;
                            }
                            let i = q.0;
                            q.0 += 1;
                            // The download cache hands volumes out in order.
                            (i, self.fetcher.get().and_then(|f| f.take(&files[i].0.name)))
                        };
                        let follows = i > 0 && volumes[i - 1] + 1 == volumes[i];
                        let (file, sha1) = &files[i];
                        let read = self.read_apart(file, sha1.clone(), cached, follows, sinks);
                        if tx.send((i, read)).is_err() {
                            return;
                        }
                    });
                if let Err(e) = spawned {
                    apart.lock().2 = true;
                    return Err(anyhow!("cannot start a decoder thread: {e}"));
                }
            }
            drop(tx);
            let mut waiting = BTreeMap::new();
            let mut edges = VolumeEdges::default();
            let mut failed = None;
            for (i, read) in rx {
                if read.is_err() {
                    apart.lock().2 = true;
                    apart.moved.notify_all();
                }
                waiting.insert(i, read);
                while failed.is_none() {
                    let next = apart.lock().1;
                    let Some(read) = waiting.remove(&next) else {
                        break;
                    };
                    let joined = read.and_then(|(sink, next_edges)| {
                        let last = next_edges.last().cloned();
                        edges
                            .join(next_edges)
                            .with_context(|| format!("volume {}", files[next].0.name))?;
                        sink.done(last.as_ref())
                    });
                    match joined {
                        Ok(()) => apart.lock().1 += 1,
                        Err(e) => {
                            apart.lock().2 = true;
                            failed = Some(e);
                        }
                    }
                    apart.moved.notify_all();
                }
            }
            failed.map_or(Ok(()), Err)
        })
    }

    /// Reads one volume into a sink of its own.
    fn read_apart(
        &self,
        file: &RemoteFile,
        sha1: String,
        cached: Option<Result<Box<dyn Read + Send>>>,
        follows: bool,
        sinks: &dyn VolumeSinks,
    ) -> ReadApart {
        let mut sink = sinks.volume(follows)?;
        let mut stream = RecordStream::new();
        // Decoded on this decoder's thread: the decoders already run side by side.
        let mut reader = self.volume_reader_from(file, sha1, cached, ReadAhead::Inline)?;
        let parsed = stream.read_volume(&mut reader, &mut *sink);
        match parsed {
            Ok(()) => reader.finish()?,
            Err(_) => reader.abandon()?,
        }
        parsed.with_context(|| format!("volume {}", file.name))?;
        Ok((sink, stream.into_edges()))
    }
}

/// Reads a stored file once through SHA1 and compares it with the manifest's.
fn check_hash(raw: &mut dyn Read, name: &str, expected: &str) -> Result<()> {
    let actual = crate::source::sha1_hex(raw).with_context(|| format!("cannot read {name}"))?;
    if actual != expected {
        return Err(Error::HashMismatch {
            name: name.to_string(),
            expected: expected.to_string(),
            actual,
        }
        .into());
    }
    Ok(())
}

/// Counts the volume bytes the applier reads, for its progress bar.
struct AppliedVolume {
    inner: Box<dyn Read + Send>,
    reporter: Arc<Reporter>,
}

impl Read for AppliedVolume {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.reporter.applied(n as u64);
        Ok(n)
    }
}
