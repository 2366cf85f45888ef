//! Duplicity's tar entries: from a volume's tar stream to typed records.
//!
//! Each tar entry of a difftar (format reference §4.3) is a record about one path:
//! `snapshot/P` (the whole object), `diff/P` (a librsync delta against the previous
//! content), `deleted/P`, or a chunk `multivol_snapshot/P/k` / `multivol_diff/P/k` of a file
//! too big for one entry. Chunks of one file follow each other, also across the end of one
//! volume file and the start of the next, so [`RecordStream`] keeps the open record between
//! volumes and hands the sink each chunk's bytes as they stream by: no file is ever held in
//! memory. Signature tars use the same names with `signature/P`, read by `signatures`.
//!
//! Every name is checked here, before any consumer sees it: `..` components, NUL bytes and
//! absolute names are refused, and records must come in strictly increasing index order
//! (the order every merge and every safety check downstream relies on).

use crate::error::Error;
use crate::index::PathIndex;
use crate::meta::{FileType, Metadata};
use anyhow::{Context, Result};
use std::io::Read;

/// What a record says about its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Snapshot,
    Diff,
    Deleted,
    /// Only in signature tars: metadata plus a librsync signature.
    Signature,
}

/// The header of one record; its bytes (if any) follow through [`RecordSink::data`].
#[derive(Clone, Debug)]
pub struct Record {
    pub index: PathIndex,
    pub kind: RecordKind,
    pub meta: Metadata,
    /// A chunk run that did not start with chunk 1: the head of this file lies in volumes
    /// that were not read.
    pub headless: bool,
}

/// Receives the records of one set in order.
pub trait RecordSink {
    fn begin(&mut self, record: &Record) -> Result<()>;
    /// Called once per tar entry of the record (several times for a split file).
    fn data(&mut self, bytes: &mut dyn Read) -> Result<()>;
    fn end(&mut self) -> Result<()>;
}

/// A parsed entry name: record kind, path and, for chunks, the chunk number.
#[derive(Debug, PartialEq, Eq)]
pub struct EntryName {
    pub kind: RecordKind,
    pub index: PathIndex,
    pub chunk: Option<u64>,
}

fn unsafe_path(name: &[u8], reason: &str) -> Error {
    Error::UnsafePath {
        path: String::from_utf8_lossy(name).into_owned(),
        reason: reason.to_string(),
    }
}

/// Parses a tar entry name of a difftar or sigtar.
pub fn parse_entry_name(raw: &[u8]) -> Result<EntryName, Error> {
    let mut name = raw;
    while let Some(stripped) = name.strip_suffix(b"/") {
        name = stripped;
    }
    let (head, rest) = match name.iter().position(|&b| b == b'/') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => (name, &b""[..]),
    };
    let (kind, multivol) = match head {
        b"snapshot" => (RecordKind::Snapshot, false),
        b"diff" => (RecordKind::Diff, false),
        b"deleted" => (RecordKind::Deleted, false),
        b"signature" => (RecordKind::Signature, false),
        b"multivol_snapshot" => (RecordKind::Snapshot, true),
        b"multivol_diff" => (RecordKind::Diff, true),
        _ => {
            return Err(Error::corrupt(format!(
                "unexpected tar entry {:?}: not a duplicity entry",
                String::from_utf8_lossy(raw)
            )))
        }
    };
    if rest.first() == Some(&b'/') {
        return Err(unsafe_path(raw, "it is an absolute path"));
    }
    let (path, chunk) = if multivol {
        let i = rest.iter().rposition(|&b| b == b'/');
        let (p, k) = match i {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (&b""[..], rest),
        };
        let k = std::str::from_utf8(k)
            .ok()
            .and_then(|k| k.parse::<u64>().ok())
            .ok_or_else(|| {
                Error::corrupt(format!(
                    "multivol entry {:?} has no chunk number",
                    String::from_utf8_lossy(raw)
                ))
            })?;
        (p, Some(k))
    } else {
        (rest, None)
    };
    let index = PathIndex::from_bytes(path);
    index.check_safe().map_err(|r| unsafe_path(raw, &r))?;
    Ok(EntryName { kind, index, chunk })
}

fn pax_value<R: Read>(entry: &mut tar::Entry<R>, key: &[u8]) -> Option<Vec<u8>> {
    let pax = entry.pax_extensions().ok()??;
    pax.filter_map(|e| e.ok())
        .find(|e| e.key_bytes() == key)
        .map(|e| e.value_bytes().to_vec())
}

/// Reads the metadata of a tar entry.
pub fn entry_metadata<R: Read>(entry: &mut tar::Entry<R>, kind: RecordKind) -> Result<Metadata> {
    let uname = pax_value(entry, b"uname");
    let gname = pax_value(entry, b"gname");
    let h = entry.header();
    let what = || format!("entry {:?}", String::from_utf8_lossy(&entry.path_bytes()));
    let et = h.entry_type();
    let device = |h: &tar::Header| -> Result<(u32, u32)> {
        Ok((
            h.device_major()?.unwrap_or(0),
            h.device_minor()?.unwrap_or(0),
        ))
    };
    // Deleted entries look like empty regular files (§4.4).
    let file_type =
        if kind == RecordKind::Deleted || et.is_file() || et == tar::EntryType::Continuous {
            FileType::Regular
        } else if et.is_dir() {
            FileType::Dir
        } else if et.is_symlink() {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| Error::corrupt(format!("{}: symlink without a target", what())))?;
            FileType::Symlink(target.into_owned())
        } else if et.is_fifo() {
            FileType::Fifo
        } else if et.is_character_special() {
            let (major, minor) = device(h).with_context(what)?;
            FileType::CharDevice { major, minor }
        } else if et.is_block_special() {
            let (major, minor) = device(h).with_context(what)?;
            FileType::BlockDevice { major, minor }
        } else if et.is_hard_link() {
            return Err(Error::corrupt(format!(
                "{}: hard links are never written by duplicity",
                what()
            ))
            .into());
        } else {
            return Err(Error::corrupt(format!(
                "{}: unsupported tar entry type {:?}",
                what(),
                et.as_byte() as char
            ))
            .into());
        };
    let h = entry.header();
    let num = |r: std::io::Result<u64>| r.with_context(what);
    let id = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok(Metadata {
        file_type,
        mode: num(h.mode().map(u64::from))? as u32 & 0o7777,
        uid: id(num(h.uid())?),
        gid: id(num(h.gid())?),
        uname: uname.unwrap_or_else(|| h.username_bytes().unwrap_or_default().to_vec()),
        gname: gname.unwrap_or_else(|| h.groupname_bytes().unwrap_or_default().to_vec()),
        // Negative (base-256) or absurd mtimes cannot come from duplicity, which clamps
        // negative times to 0; treat any unreadable mtime as 0 too.
        mtime: h
            .mtime()
            .ok()
            .and_then(|t| i64::try_from(t).ok())
            .unwrap_or(0),
    })
}

/// Turns the tar entries of a set's volumes, in order, into records.
#[derive(Default)]
pub struct RecordStream {
    /// The record whose chunks may continue (index and kind of a multivol run).
    open: Option<(PathIndex, RecordKind, bool)>,
    last: Option<PathIndex>,
}

impl RecordStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one volume's tar stream. The stream ends at the first zero block or at EOF,
    /// whichever comes first (§4.7): gzip volumes before 3.2 have no footer, and gpg
    /// volumes carry junk after a single zero block.
    pub fn read_volume(
        &mut self,
        tar_stream: &mut dyn Read,
        sink: &mut dyn RecordSink,
    ) -> Result<()> {
        let mut archive = tar::Archive::new(tar_stream);
        let entries = archive.entries().context("reading the tar stream")?;
        for entry in entries {
            let mut entry = entry.context("reading a tar header")?;
            let et = entry.header().entry_type();
            if et.is_pax_global_extensions() {
                continue;
            }
            let name = parse_entry_name(&entry.path_bytes())?;
            self.entry(name, &mut entry, sink)?;
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        name: EntryName,
        entry: &mut tar::Entry<R>,
        sink: &mut dyn RecordSink,
    ) -> Result<()> {
        if let (Some(_), Some((index, kind, _))) = (name.chunk, &self.open) {
            if *index == name.index && *kind == name.kind {
                return sink.data(entry);
            }
        }
        self.close(sink)?;
        // A deletion of the root is a no-op everywhere (LP #929067 wrote such entries).
        if name.kind == RecordKind::Deleted && name.index.is_root() {
            return Ok(());
        }
        if let Some(last) = &self.last {
            if name.index <= *last {
                return Err(Error::corrupt(format!(
                    "entry {:?} comes after {:?}: entries are out of order",
                    name.index, last
                ))
                .into());
            }
        }
        self.last = Some(name.index.clone());
        let meta = entry_metadata(entry, name.kind)?;
        let record = Record {
            index: name.index.clone(),
            kind: name.kind,
            meta,
            headless: name.chunk.is_some_and(|k| k > 1),
        };
        sink.begin(&record)?;
        let has_data = matches!(name.kind, RecordKind::Diff | RecordKind::Signature)
            || (name.kind == RecordKind::Snapshot && record.meta.is_regular());
        if has_data {
            sink.data(entry)?;
        }
        if name.chunk.is_some() {
            self.open = Some((name.index, name.kind, true));
            Ok(())
        } else {
            sink.end()
        }
    }

    /// Ends the set: closes a split file whose last chunk was the last entry.
    pub fn close(&mut self, sink: &mut dyn RecordSink) -> Result<()> {
        if self.open.take().is_some() {
            sink.end()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names() {
        let n = parse_entry_name(b"snapshot/./").unwrap();
        assert!(n.index.is_root());
        assert_eq!(n.kind, RecordKind::Snapshot);
        for root in [
            &b"snapshot/"[..],
            b"snapshot",
            b"snapshot/.",
            b"diff",
            b"deleted",
        ] {
            assert!(parse_entry_name(root).unwrap().index.is_root(), "{root:?}");
        }
        let n = parse_entry_name(b"multivol_snapshot/./3").unwrap();
        assert!(n.index.is_root());
        assert_eq!(n.chunk, Some(3));
        let n = parse_entry_name(b"multivol_diff/a/b c/12").unwrap();
        assert_eq!(n.index, PathIndex::from_bytes(b"a/b c"));
        assert_eq!((n.kind, n.chunk), (RecordKind::Diff, Some(12)));
        assert!(matches!(
            parse_entry_name(b"diff/../warning-security-error"),
            Err(Error::UnsafePath { .. })
        ));
        assert!(matches!(
            parse_entry_name(b"snapshot//etc/passwd"),
            Err(Error::UnsafePath { .. })
        ));
        assert!(matches!(
            parse_entry_name(b"/etc/passwd"),
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            parse_entry_name(b"multivol_snapshot/a/x"),
            Err(Error::Corrupt(_))
        ));
    }
}
