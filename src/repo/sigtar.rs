//! Signature tars: the state of the backed-up tree without reading any volume.
//!
//! Each set has a signature file (docs/format.md §6): the full one lists every path with
//! its metadata (and, for regular files, a librsync signature of the content); the
//! incremental ones list only what changed or vanished. Merging a chain's signature files
//! by index, the later file winning, gives the tree at the end of that chain
//! (docs/format.md §6.3): what `ls` prints, and what `verify` compares DEST with. The merge
//! streams: one tar reader per file, advanced together, so memory does not grow with the
//! tree; a signature is kept as its digest ([`SigDigest`]), so memory does not grow with a
//! file's size either.

use crate::decode::delta::SigDigest;
use crate::decode::tar::{
    entry_metadata, next_entry as next_tar_entry, parse_entry_name, RecordKind,
};
use crate::decode::volume::DecodedFile;
use crate::index::PathIndex;
use crate::meta::Metadata;
use crate::repo::collection::BackupSet;
use crate::repo::Repository;
use anyhow::{anyhow, Context, Result};

/// What the signature chain says about one path.
#[derive(Clone, Debug)]
pub struct SigEntry {
    pub index: PathIndex,
    /// `Signature` (a regular file), `Snapshot` (anything else) or `Deleted`.
    pub kind: RecordKind,
    pub meta: Metadata,
    /// The librsync signature of a regular file's content, when asked for.
    pub signature: Option<SigDigest>,
}

impl SigEntry {
    pub fn exists(&self) -> bool {
        self.kind != RecordKind::Deleted
    }
}

fn next_entry(
    entries: &mut tar::Entries<'_, DecodedFile>,
    with_signatures: bool,
    name: &str,
) -> Result<Option<SigEntry>> {
    let Some((mut entry, ext)) =
        next_tar_entry(entries).with_context(|| format!("reading {name}"))?
    else {
        return Ok(None);
    };
    let parsed =
        parse_entry_name(&ext.path(entry.header())).with_context(|| format!("in {name}"))?;
    if parsed.kind == RecordKind::Diff || parsed.chunk.is_some() {
        return Err(anyhow!(
            "{name}: unexpected entry {:?} in a signature file",
            parsed.index
        ));
    }
    let meta = entry_metadata(&mut entry, &ext, parsed.kind)?;
    let signature = if with_signatures && parsed.kind == RecordKind::Signature {
        Some(SigDigest::read(&mut entry).with_context(|| format!("reading {name}"))?)
    } else {
        None
    };
    Ok(Some(SigEntry {
        index: parsed.index,
        kind: parsed.kind,
        meta,
        signature,
    }))
}

/// Walks the merged signature chain of `sets` (a full and its incrementals, in order),
/// calling `visit` once per path in index order with the newest record of it (including
/// deletions, which the caller usually skips).
pub fn merge_chain(
    repo: &Repository,
    sets: &[&BackupSet],
    with_signatures: bool,
    mut visit: impl FnMut(SigEntry) -> Result<()>,
) -> Result<()> {
    let mut files = Vec::new();
    for set in sets {
        let f = set.signatures.as_ref().ok_or_else(|| {
            anyhow!(
                "set {} has no signature file in the source; the tree cannot be listed without it",
                set.label()
            )
        })?;
        files.push(f);
    }
    let mut archives: Vec<tar::Archive<DecodedFile>> = files
        .iter()
        .map(|f| repo.open_stream(f).map(tar::Archive::new))
        .collect::<Result<_>>()?;
    let mut streams: Vec<tar::Entries<'_, DecodedFile>> = archives
        .iter_mut()
        .map(|a| a.entries().map(|e| e.raw(true)).map_err(Into::into))
        .collect::<Result<_>>()?;
    let mut heads: Vec<Option<SigEntry>> = Vec::new();
    for (s, f) in streams.iter_mut().zip(&files) {
        heads.push(next_entry(s, with_signatures, &f.name)?);
    }
    while let Some(min) = heads.iter().flatten().map(|e| e.index.clone()).min() {
        let mut winner = None;
        for i in 0..heads.len() {
            if heads[i].as_ref().is_some_and(|e| e.index == min) {
                winner = heads[i].take();
                let mut next = next_entry(&mut streams[i], with_signatures, &files[i].name)?;
                // A restarted 0.6 backup could repeat an entry; keep the later copy.
                while next.as_ref().is_some_and(|e| e.index == min) {
                    winner = next;
                    next = next_entry(&mut streams[i], with_signatures, &files[i].name)?;
                }
                if next.as_ref().is_some_and(|e| e.index < min) {
                    return Err(anyhow!("{}: entries are out of order", files[i].name));
                }
                heads[i] = next;
            }
        }
        if let Some(w) = winner {
            visit(w)?;
        }
    }
    drop(streams);
    for a in archives {
        let mut reader = a.into_inner();
        std::io::copy(&mut reader, &mut std::io::sink()).ok();
        reader.finish()?;
    }
    Ok(())
}

/// The content signatures a set's signature file gives for regular files (for an
/// incremental: the files it changed). Empty when the set has no signature file.
pub fn set_signatures(
    repo: &Repository,
    set: &BackupSet,
) -> Result<std::collections::BTreeMap<PathIndex, SigDigest>> {
    let mut out = std::collections::BTreeMap::new();
    if set.signatures.is_none() {
        return Ok(out);
    }
    merge_chain(repo, &[set], true, |e| {
        if let Some(sig) = e.signature {
            out.insert(e.index, sig);
        }
        Ok(())
    })?;
    Ok(out)
}
