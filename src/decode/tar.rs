//! Reading duplicity's tar streams: entry names, extension headers and entry metadata.
//!
//! Difftars and signature tars are tar streams whose entry names carry the record kind
//! (`snapshot/P`, `diff/P`, `deleted/P`, `signature/P`, chunks `multivol_snapshot/P/k` and
//! `multivol_diff/P/k`; docs/format.md §5.3). This module turns one tar entry into a checked
//! [`EntryName`] and [`Metadata`]; `records` assembles entries into records.
//!
//! Every name is checked here, before any consumer sees it: `..` components, NUL bytes and
//! absolute names are refused.

use crate::error::Error;
use crate::index::PathIndex;
use crate::meta::{FileType, Metadata};
use anyhow::{Context, Result};
use std::borrow::Cow;
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

/// Extension headers are read into memory. Duplicity's PAX records and GNU long names are a
/// few KiB at most; a larger one is refused before it is read, so a hostile volume cannot
/// make dupmirror buffer gigabytes (a gzip bomb behind a header declaring a huge size).
pub const MAX_EXTENSION_HEADER: u64 = 1 << 20;

/// What the extension headers before an entry (PAX `x`, GNU `L`/`K`) said about it.
#[derive(Debug, Default)]
pub struct Extensions {
    pax: Vec<(Vec<u8>, Vec<u8>)>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

impl Extensions {
    fn pax(&self, key: &[u8]) -> Option<&[u8]> {
        self.pax
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    fn pax_number(&self, key: &[u8]) -> Option<u64> {
        std::str::from_utf8(self.pax(key)?).ok()?.parse().ok()
    }

    /// The entry's full name: PAX `path`, else a GNU long name, else the ustar fields
    /// (docs/format.md §5.2).
    pub fn path<'a>(&'a self, header: &'a tar::Header) -> Cow<'a, [u8]> {
        match (self.pax(b"path"), &self.long_name) {
            (Some(p), _) => Cow::Borrowed(p),
            (None, Some(n)) => Cow::Borrowed(n),
            (None, None) => header.path_bytes(),
        }
    }

    /// The symlink target: PAX `linkpath`, else a GNU long link, else the ustar field.
    pub fn link<'a>(&'a self, header: &'a tar::Header) -> Option<Cow<'a, [u8]>> {
        match (self.pax(b"linkpath"), &self.long_link) {
            (Some(p), _) => Some(Cow::Borrowed(p)),
            (None, Some(n)) => Some(Cow::Borrowed(n)),
            (None, None) => header.link_name_bytes(),
        }
    }
}

fn read_extension<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<u8>> {
    let size = entry
        .header()
        .entry_size()
        .context("reading a tar header")?;
    if size > MAX_EXTENSION_HEADER {
        return Err(Error::corrupt(format!(
            "a tar extension header declares {size} bytes (duplicity writes a few KiB at most); \
             refusing to read it"
        ))
        .into());
    }
    let mut data = Vec::with_capacity(size as usize);
    entry
        .read_to_end(&mut data)
        .context("reading a tar extension header")?;
    if (data.len() as u64) < size {
        return Err(Error::corrupt("the volume ends inside a tar extension header").into());
    }
    Ok(data)
}

/// A GNU long name is NUL-terminated (before 0.6.16 its size excluded the NUL).
fn cut_at_nul(mut v: Vec<u8>) -> Vec<u8> {
    if let Some(i) = v.iter().position(|&b| b == 0) {
        v.truncate(i);
    }
    v
}

/// The next entry of a tar stream read in raw mode, with the extension headers before it
/// applied. Reading the extensions here, not in the tar crate, bounds their size.
pub fn next_entry<'a, R: Read>(
    entries: &mut tar::Entries<'a, R>,
) -> Result<Option<(tar::Entry<'a, R>, Extensions)>> {
    let mut ext = Extensions::default();
    let mut seen_pax = false;
    let mut pending = false;
    for entry in entries.by_ref() {
        let mut entry = entry.context("reading a tar header")?;
        let et = entry.header().entry_type();
        let twice = |what: &str| Error::corrupt(format!("two {what} headers for one tar entry"));
        if et.is_pax_local_extensions() {
            if seen_pax {
                return Err(twice("PAX").into());
            }
            let data = read_extension(&mut entry)?;
            for rec in tar::PaxExtensions::new(&data) {
                let rec =
                    rec.map_err(|e| Error::corrupt(format!("a PAX header is malformed: {e}")))?;
                ext.pax
                    .push((rec.key_bytes().to_vec(), rec.value_bytes().to_vec()));
            }
            seen_pax = true;
            pending = true;
        } else if et.is_gnu_longname() {
            if ext.long_name.is_some() {
                return Err(twice("GNU long name").into());
            }
            ext.long_name = Some(cut_at_nul(read_extension(&mut entry)?));
            pending = true;
        } else if et.is_gnu_longlink() {
            if ext.long_link.is_some() {
                return Err(twice("GNU long link").into());
            }
            ext.long_link = Some(cut_at_nul(read_extension(&mut entry)?));
            pending = true;
        } else if et.is_pax_global_extensions() {
            // Global headers carry nothing duplicity uses.
            ext = Extensions::default();
            (seen_pax, pending) = (false, false);
        } else {
            if let Some(size) = ext.pax(b"size") {
                // Duplicity splits data into 64 KiB chunks, so it never needs a PAX size; the
                // tar stream is framed by the header's size field in raw mode.
                let header_size = entry.header().entry_size().ok();
                if std::str::from_utf8(size).ok().and_then(|s| s.parse().ok()) != header_size {
                    return Err(Error::corrupt(
                        "a PAX size record disagrees with its tar header; duplicity never writes one",
                    )
                    .into());
                }
            }
            return Ok(Some((entry, ext)));
        }
    }
    if pending {
        return Err(Error::corrupt("the tar stream ends after an extension header").into());
    }
    Ok(None)
}

/// Reads the metadata of a tar entry.
pub fn entry_metadata<R: Read>(
    entry: &mut tar::Entry<R>,
    ext: &Extensions,
    kind: RecordKind,
) -> Result<Metadata> {
    let h = entry.header();
    let what = || format!("entry {:?}", String::from_utf8_lossy(&ext.path(h)));
    let et = h.entry_type();
    let device = |h: &tar::Header| -> Result<(u32, u32)> {
        Ok((
            h.device_major()?.unwrap_or(0),
            h.device_minor()?.unwrap_or(0),
        ))
    };
    // Deleted entries look like empty regular files (docs/format.md §5.4).
    let file_type =
        if kind == RecordKind::Deleted || et.is_file() || et == tar::EntryType::Continuous {
            FileType::Regular
        } else if et.is_dir() {
            FileType::Dir
        } else if et.is_symlink() {
            let target = ext
                .link(h)
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
    let num = |r: std::io::Result<u64>| r.with_context(what);
    let id = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    let uid = match ext.pax_number(b"uid") {
        Some(v) => v,
        None => num(h.uid())?,
    };
    let gid = match ext.pax_number(b"gid") {
        Some(v) => v,
        None => num(h.gid())?,
    };
    let name_field = |key: &[u8], field: Option<&[u8]>| {
        ext.pax(key)
            .or(field)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    };
    Ok(Metadata {
        file_type,
        mode: num(h.mode().map(u64::from))? as u32 & 0o7777,
        uid: id(uid),
        gid: id(gid),
        uname: name_field(b"uname", h.username_bytes()),
        gname: name_field(b"gname", h.groupname_bytes()),
        // Negative (base-256) or absurd mtimes cannot come from duplicity, which clamps
        // negative times to 0; treat any unreadable mtime as 0 too.
        mtime: h
            .mtime()
            .ok()
            .and_then(|t| i64::try_from(t).ok())
            .unwrap_or(0),
    })
}
