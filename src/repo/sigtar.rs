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
use anyhow::{anyhow, bail, Context, Result};
use std::sync::mpsc::{sync_channel, Receiver};

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
    visit: impl FnMut(SigEntry) -> Result<()>,
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
    let streams = files
        .iter()
        .map(|f| Ok((f.name.clone(), repo.open_stream(f)?)))
        .collect::<Result<_>>()?;
    merge_streams(streams, with_signatures, visit)
}

/// [`merge_chain`] over signature files already opened, each with its name (for messages):
/// the later file wins. Every file is read to its end and its integrity checked.
fn merge_streams(
    files: Vec<(String, DecodedFile)>,
    with_signatures: bool,
    mut visit: impl FnMut(SigEntry) -> Result<()>,
) -> Result<()> {
    let (names, decoded): (Vec<String>, Vec<DecodedFile>) = files.into_iter().unzip();
    let mut archives: Vec<tar::Archive<DecodedFile>> =
        decoded.into_iter().map(tar::Archive::new).collect();
    let mut streams: Vec<tar::Entries<'_, DecodedFile>> = archives
        .iter_mut()
        .map(|a| a.entries().map(|e| e.raw(true)).map_err(Into::into))
        .collect::<Result<_>>()?;
    let mut heads: Vec<Option<SigEntry>> = Vec::new();
    for (s, name) in streams.iter_mut().zip(&names) {
        heads.push(next_entry(s, with_signatures, name)?);
    }
    while let Some(min) = heads.iter().flatten().map(|e| e.index.clone()).min() {
        let mut winner = None;
        for i in 0..heads.len() {
            if heads[i].as_ref().is_some_and(|e| e.index == min) {
                winner = heads[i].take();
                let mut next = next_entry(&mut streams[i], with_signatures, &names[i])?;
                // A restarted 0.6 backup could repeat an entry; keep the later copy.
                while next.as_ref().is_some_and(|e| e.index == min) {
                    winner = next;
                    next = next_entry(&mut streams[i], with_signatures, &names[i])?;
                }
                if next.as_ref().is_some_and(|e| e.index < min) {
                    return Err(anyhow!("{}: entries are out of order", names[i]));
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

/// The content signatures one set's signature file gives for regular files (for an
/// incremental: the files it changed), looked up in index order as the set's records come
/// (its volumes and its signature file are both in index order). A helper thread reads the
/// file a few entries ahead, so memory does not grow with the number of files the set
/// changed (a map of them all cost ~200 B a file: 2.4 MiB for an incremental that changes
/// 1% of a million files). Without a signature file the set gives none.
pub struct SetSignatures {
    /// The entries read ahead, or an error that ended the file; `None` once it ended.
    ahead: Option<Receiver<Result<(PathIndex, SigDigest)>>>,
    /// The first entry not yet passed.
    head: Option<(PathIndex, SigDigest)>,
    /// The last path asked for.
    asked: Option<PathIndex>,
}

/// Entries the helper thread reads ahead of the lookups.
const READ_AHEAD: usize = 64;

impl SetSignatures {
    /// No signatures: what a set without a signature file gives.
    fn open_none() -> SetSignatures {
        SetSignatures {
            ahead: None,
            head: None,
            asked: None,
        }
    }

    pub fn open(repo: &Repository, set: &BackupSet) -> Result<SetSignatures> {
        let mut signatures = SetSignatures::open_none();
        let Some(file) = &set.signatures else {
            return Ok(signatures);
        };
        signatures.read(file.name.clone(), repo.open_stream(file)?)?;
        Ok(signatures)
    }

    /// Starts the helper thread reading the signature file `name`, decoded by `stream`.
    fn read(&mut self, name: String, stream: DecodedFile) -> Result<()> {
        let stream = (name, stream);
        let (tx, rx) = sync_channel(READ_AHEAD);
        std::thread::Builder::new()
            .name("set-signatures".into())
            .spawn(move || {
                let sent = merge_streams(vec![stream], true, |e| {
                    if let Some(sig) = e.signature {
                        // The receiver is gone when the set was given up: stop reading.
                        tx.send(Ok((e.index, sig)))
                            .map_err(|_| anyhow!("signature lookups ended"))?;
                    }
                    Ok(())
                });
                if let Err(e) = sent {
                    let _ = tx.send(Err(e));
                }
            })
            .context("spawning a thread")?;
        self.ahead = Some(rx);
        Ok(())
    }

    /// The signature the set records for `index`, if any. Lookups must come in index order
    /// (the same path may be asked again).
    pub fn get(&mut self, index: &PathIndex) -> Result<Option<&SigDigest>> {
        if self.asked.as_ref().is_some_and(|last| index < last) {
            bail!("internal error: the signature of {index} was asked after a later path's");
        }
        self.asked = Some(index.clone());
        while self.head.as_ref().is_none_or(|(at, _)| at < index) {
            let Some(ahead) = &self.ahead else { break };
            match ahead.recv() {
                Ok(next) => self.head = Some(next?),
                Err(_) => {
                    self.ahead = None;
                    self.head = None;
                }
            }
        }
        Ok(self
            .head
            .as_ref()
            .filter(|(at, _)| at == index)
            .map(|(_, sig)| sig))
    }

    /// Reads the rest of the signature file: its errors (a malformed entry, a failed
    /// integrity check) are the set's, whether or not a lookup reached them.
    pub fn finish(self) -> Result<()> {
        for next in self.ahead.into_iter().flatten() {
            next?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::volume::{Encoding, ReadAhead, VolumeSource};

    /// A plain signature file holding `entries` (name, typeflag, data), decoded.
    fn signature_file(entries: &[(&str, u8, &[u8])]) -> DecodedFile {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut header = tar::Header::new_ustar();
            header.set_entry_type(tar::EntryType::new(*kind));
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(1_650_000_000);
            header.set_path(name).unwrap();
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        let source = VolumeSource {
            name: "sig".into(),
            encoding: Encoding::Plain,
            expected_sha1: None,
            named_time: None,
            raw: Box::new(std::io::Cursor::new(builder.into_inner().unwrap())),
            read_ahead: ReadAhead::Small,
        };
        DecodedFile::spawn(source, None)
    }

    fn signatures(entries: &[(&str, u8, &[u8])]) -> SetSignatures {
        let mut s = SetSignatures::open_none();
        s.read("sig".into(), signature_file(entries)).unwrap();
        s
    }

    fn index(path: &str) -> PathIndex {
        PathIndex::from_bytes(path.as_bytes())
    }

    fn digest(data: &[u8]) -> SigDigest {
        SigDigest::read(&mut &data[..]).unwrap()
    }

    const SIG_A: &[u8] = b"rs\x016\0\0\x08\0\0\0\0\x08a";
    const SIG_C: &[u8] = b"rs\x016\0\0\x08\0\0\0\0\x08c";

    #[test]
    fn lookups_in_index_order_find_each_file_signature() {
        let mut s = signatures(&[
            ("signature/a", b'0', SIG_A),
            ("snapshot/b", b'5', b""),
            ("deleted/b/x", b'0', b""),
            ("signature/b/y", b'0', SIG_C),
            ("signature/c", b'0', SIG_C),
        ]);
        assert_eq!(s.get(&index("a")).unwrap(), Some(&digest(SIG_A)));
        assert_eq!(
            s.get(&index("a")).unwrap(),
            Some(&digest(SIG_A)),
            "asked again"
        );
        assert_eq!(s.get(&index("b")).unwrap(), None, "a directory has none");
        assert_eq!(s.get(&index("b/x")).unwrap(), None, "nor a deletion");
        assert_eq!(
            s.get(&index("c")).unwrap(),
            Some(&digest(SIG_C)),
            "b/y passed"
        );
        assert_eq!(s.get(&index("d")).unwrap(), None, "past the end");
        s.finish().unwrap();
    }

    #[test]
    fn a_lookup_behind_the_last_one_is_an_error() {
        let mut s = signatures(&[("signature/a", b'0', SIG_A), ("signature/c", b'0', SIG_C)]);
        s.get(&index("c")).unwrap();
        let e = s.get(&index("a")).unwrap_err().to_string();
        assert!(e.contains("asked after a later path"), "{e}");
    }

    #[test]
    fn finish_reports_what_no_lookup_reached() {
        let mut s = signatures(&[
            ("signature/a", b'0', SIG_A),
            ("signature/c", b'0', SIG_C),
            ("signature/b", b'0', SIG_C),
        ]);
        assert_eq!(s.get(&index("a")).unwrap(), Some(&digest(SIG_A)));
        let e = format!("{:#}", s.finish().unwrap_err());
        assert!(e.contains("out of order"), "{e}");
    }

    #[test]
    fn a_set_without_a_signature_file_gives_none() {
        let mut s = SetSignatures::open_none();
        assert_eq!(s.get(&index("a")).unwrap(), None);
        s.finish().unwrap();
    }
}
