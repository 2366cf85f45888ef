//! A duplicity repository as dupmirror reads it: the listing sorted into chains, and the
//! means to read a set's manifest and stream its volumes into a record sink.
//!
//! Volumes come from the source directly (a local folder is read in place), or, once
//! [`Repository::prefetch`] has queued a sync's volumes for a remote source, from the
//! download cache, checked on arrival (see `source::cache`).

use crate::decode::crypto::Decryptor;
use crate::decode::records::{RecordSink, RecordStream};
use crate::decode::volume::{DecodedFile, VolumeSource};
use crate::progress::Reporter;
use crate::repo::collection::{BackupSet, Collection};
use crate::repo::filename::{NameParser, Prefixes, RemoteFile};
use crate::repo::manifest::Manifest;
use crate::source::cache::{FetchTimes, Fetcher, WantedVolume};
use crate::source::{Backend, SourceOptions};
use anyhow::{anyhow, bail, Context, Result};
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, OnceLock};

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

    fn reader(&self, file: &RemoteFile, sha1: Option<String>) -> Result<DecodedFile> {
        let raw = self
            .backend
            .open(&file.name, 0)
            .with_context(|| format!("cannot read {}", file.name))?
            .reader;
        Ok(self.decode(file, sha1, raw))
    }

    fn decode(
        &self,
        file: &RemoteFile,
        sha1: Option<String>,
        raw: Box<dyn Read + Send>,
    ) -> DecodedFile {
        DecodedFile::spawn(
            VolumeSource {
                name: file.name.clone(),
                encoding: file.encoding,
                expected_sha1: sha1,
                raw,
            },
            self.decryptor.clone(),
        )
    }

    /// Reads a whole (small) file, decoded: a manifest or a signature tar.
    pub fn read_small(&self, file: &RemoteFile) -> Result<Vec<u8>> {
        let mut r = self.reader(file, None)?;
        let mut data = Vec::new();
        let read = r.read_to_end(&mut data);
        r.finish()?;
        read.with_context(|| format!("cannot read {}", file.name))?;
        Ok(data)
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
        let data = self.read_small(file)?;
        let manifest = Manifest::parse(&data).with_context(|| format!("manifest {}", file.name))?;
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
    /// (hashed on arrival), else straight from the source (hashed as it is read).
    fn volume_reader(&self, file: &RemoteFile, sha1: String) -> Result<DecodedFile> {
        let (raw, sha1) = match self.fetcher.get().and_then(|f| f.take(&file.name)) {
            Some(cached) => (cached?, None),
            None => (
                self.backend
                    .open(&file.name, 0)
                    .with_context(|| format!("cannot read {}", file.name))?
                    .reader,
                Some(sha1),
            ),
        };
        let counted = Box::new(AppliedVolume {
            inner: raw,
            reporter: self.reporter.clone(),
        });
        Ok(self.decode(file, sha1, counted))
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
