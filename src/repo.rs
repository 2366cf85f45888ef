//! A duplicity repository as dupmirror reads it: the listing sorted into chains, and the
//! means to read a set's manifest and stream its volumes into a record sink.

use crate::archive::{RecordSink, RecordStream};
use crate::backend::Backend;
use crate::collection::{BackupSet, Collection};
use crate::manifest::Manifest;
use crate::naming::{NameParser, Prefixes, RemoteFile};
use crate::volume::{Decryptor, VolumeReader, VolumeSource};
use anyhow::{anyhow, bail, Context, Result};
use std::io::Read;
use std::sync::Arc;

/// How to read names and encrypted files.
#[derive(Clone, Default)]
pub struct RepoOptions {
    pub prefixes: Prefixes,
    /// duplicity's `--time-separator` for old W3 names; `:` by default.
    pub time_separator: Option<char>,
    pub decryptor: Option<Arc<dyn Decryptor>>,
}

pub struct Repository {
    backend: Box<dyn Backend>,
    decryptor: Option<Arc<dyn Decryptor>>,
    pub collection: Collection,
}

impl Repository {
    /// Lists the source and sorts what it holds into chains.
    pub fn open(backend: Box<dyn Backend>, options: &RepoOptions) -> Result<Self> {
        let parser = NameParser::new(&options.prefixes, options.time_separator.unwrap_or(':'));
        let listing = backend
            .list()
            .with_context(|| format!("cannot list {}", backend.display()))?;
        let collection = Collection::from_listing(&listing, &parser)?;
        Ok(Repository {
            backend,
            decryptor: options.decryptor.clone(),
            collection,
        })
    }

    pub fn display(&self) -> String {
        self.backend.display()
    }

    fn reader(&self, file: &RemoteFile, sha1: Option<String>) -> Result<VolumeReader> {
        let raw = self
            .backend
            .open(&file.name, 0)
            .with_context(|| format!("cannot read {}", file.name))?;
        Ok(VolumeReader::spawn(
            VolumeSource {
                name: file.name.clone(),
                encoding: file.encoding,
                expected_sha1: sha1,
                raw,
            },
            self.decryptor.clone(),
        ))
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
    pub fn open_stream(&self, file: &RemoteFile) -> Result<VolumeReader> {
        self.reader(file, None)
    }

    /// The set's manifest, checked against the volumes the source has.
    pub fn manifest(&self, set: &BackupSet) -> Result<Manifest> {
        let file = set
            .manifest
            .as_ref()
            .ok_or_else(|| anyhow!("set {} has no manifest", set.label()))?;
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
            let file = set
                .volumes
                .get(n)
                .ok_or_else(|| anyhow!("set {} has no volume {n}", set.label()))?;
            let sha1 = manifest.sha1_of(*n).map(str::to_string);
            if sha1.is_none() {
                bail!(
                    "manifest of set {} gives no SHA1 for volume {n}; refusing unverifiable data",
                    set.label()
                );
            }
            let mut reader = self.reader(file, sha1)?;
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
