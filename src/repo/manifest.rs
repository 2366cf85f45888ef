//! Manifests: the index of one backup set (docs/format.md §4).
//!
//! A manifest lists the set's volumes with the path range each one covers and the SHA1 of
//! the stored volume file, then (normally at the end) a Filelist of changed regular files.
//! It is read as bytes: paths are raw and only double-quoted strings are unquoted.
//! Upstream's parsing rules are kept where they matter: keywords are case-insensitive,
//! a repeated `Volume n:` block wins over the earlier one, and volumes numbered above the
//! last-listed block are dropped (a restarted backup appends `Volume 2:` after `Volume 3:`).
//!
//! The manifest comes from the repository, so it is read as a stream with bounds instead
//! of whole: a line may be at most [`MAX_LINE_BYTES`], the whole at most
//! [`MAX_MANIFEST_BYTES`] (the Filelist of some 50 million files), and only the volume
//! blocks are kept (the Filelist is counted), those numbered up to the highest volume the
//! source has, with at most [`MAX_RANGE_BYTES`] of paths: a hostile manifest cannot make
//! memory grow.

use crate::error::Error;
use crate::index::{unquote, PathIndex};
use crate::source::names::shown;
use std::collections::BTreeMap;
use std::io::{self, BufRead, Read};

/// The longest manifest line read: a quoted path is at most four times its bytes.
pub const MAX_LINE_BYTES: u64 = 1 << 20;

/// The most bytes of one manifest read (decoded): 4 GiB.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 30;

/// The most bytes of volume-range paths kept: some 300,000 volumes of ordinary paths.
pub const MAX_RANGE_BYTES: u64 = 64 << 20;

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Corrupt(#[from] Error),
    #[error("{0}")]
    Read(#[from] io::Error),
}

impl ManifestError {
    /// The cause itself, so that a caller (the exit status) still sees an [`Error`].
    pub fn into_cause(self) -> anyhow::Error {
        match self {
            ManifestError::Corrupt(e) => e.into(),
            ManifestError::Read(e) => e.into(),
        }
    }
}

/// One volume's entry in a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    pub number: u32,
    pub start: PathIndex,
    /// Multivol chunk number of the first entry, when it is a non-final chunk.
    pub start_block: Option<u64>,
    pub end: PathIndex,
    pub end_block: Option<u64>,
    /// `(type, lowercase hex)`, SHA1 preferred when several are given.
    pub hash: Option<(String, String)>,
}

impl VolumeInfo {
    /// Whether this volume may hold entries at or below `prefix`: upstream's rule
    /// `start[:len(p)] <= p <= end[:len(p)]`, comparing indexes as tuples.
    pub fn may_contain(&self, prefix: &PathIndex) -> bool {
        let n = prefix.len();
        self.start.truncated(n) <= *prefix && *prefix <= self.end.truncated(n)
    }
}

/// How many regular files the set's Filelist says are new, changed and deleted. Only the
/// counts are kept: the list itself can name every file of a full backup (millions), and
/// nothing needs the names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FileChanges {
    pub new: u64,
    pub changed: u64,
    pub deleted: u64,
}

/// A parsed manifest.
#[derive(Clone, Debug, Default)]
pub struct Manifest {
    pub hostname: Option<String>,
    pub localdir: Option<Vec<u8>>,
    pub volumes: BTreeMap<u32, VolumeInfo>,
    pub changes: FileChanges,
}

fn split_ws(line: &[u8]) -> Vec<&[u8]> {
    line.split(|b| b.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
        .collect()
}

fn keyword_is(token: &[u8], kw: &str) -> bool {
    token.eq_ignore_ascii_case(kw.as_bytes())
}

impl Manifest {
    /// Parses a manifest held in memory, keeping every volume block.
    pub fn parse(data: &[u8]) -> Result<Manifest, Error> {
        match Manifest::read(&mut &data[..], u32::MAX) {
            Ok(m) => Ok(m),
            Err(ManifestError::Corrupt(e)) => Err(e),
            Err(ManifestError::Read(e)) => Err(Error::corrupt(e.to_string())),
        }
    }

    /// Reads a manifest from `input` within the bounds of the module comment. Volume
    /// blocks numbered above `max_volume` (the highest volume the source has) are not kept;
    /// when the last-listed block is one of them, the result names that volume (bare), so
    /// that the set shows as missing it.
    pub fn read(input: &mut dyn BufRead, max_volume: u32) -> Result<Manifest, ManifestError> {
        let bad = |line_no: usize, what: &str| {
            ManifestError::Corrupt(Error::corrupt(format!(
                "manifest line {}: {what}",
                line_no + 1
            )))
        };
        let mut m = Manifest::default();
        let mut current: Option<VolumeInfo> = None;
        let mut last_listed: Option<u32> = None;
        let mut in_filelist = false;
        let mut range_bytes = 0u64;
        let mut input = input.take(MAX_MANIFEST_BYTES + 1);
        let mut raw = Vec::new();
        for no in 0.. {
            raw.clear();
            let n = (&mut input)
                .take(MAX_LINE_BYTES + 1)
                .read_until(b'\n', &mut raw)?;
            if n == 0 {
                break;
            }
            if input.limit() == 0 {
                return Err(Error::corrupt(format!(
                    "the manifest is larger than {} GiB, the most dupmirror reads",
                    MAX_MANIFEST_BYTES >> 30
                ))
                .into());
            }
            let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
            if raw.len() as u64 > MAX_LINE_BYTES {
                return Err(bad(
                    no,
                    &format!("longer than {} MiB", MAX_LINE_BYTES >> 20),
                ));
            }
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            let tokens = split_ws(line);
            let Some(first) = tokens.first() else {
                continue;
            };
            let indented = line.first().is_some_and(|b| b.is_ascii_whitespace());
            if !indented {
                in_filelist = false;
            }
            if !indented && keyword_is(first, "hostname") {
                if m.hostname.is_none() {
                    m.hostname = Some(
                        String::from_utf8_lossy(&line[first.len()..])
                            .trim()
                            .to_string(),
                    );
                }
            } else if !indented && keyword_is(first, "localdir") {
                if m.localdir.is_none() {
                    let value = line[first.len()..].trim_ascii();
                    m.localdir = Some(unquote(value).map_err(|e| bad(no, &e))?);
                }
            } else if !indented && keyword_is(first, "volume") {
                if let Some(v) = current.take() {
                    m.volumes.insert(v.number, v);
                }
                let num = tokens
                    .get(1)
                    .and_then(|t| t.strip_suffix(b":"))
                    .and_then(|t| std::str::from_utf8(t).ok())
                    .and_then(|t| t.parse::<u32>().ok())
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| bad(no, "expected `Volume <number>:`"))?;
                last_listed = Some(num);
                current = (num <= max_volume).then(|| VolumeInfo {
                    number: num,
                    start: PathIndex::root(),
                    start_block: None,
                    end: PathIndex::root(),
                    end_block: None,
                    hash: None,
                });
            } else if !indented && keyword_is(first, "filelist") {
                if let Some(v) = current.take() {
                    m.volumes.insert(v.number, v);
                }
                in_filelist = true;
            } else if in_filelist && indented {
                let count = match first.to_ascii_lowercase().as_slice() {
                    b"new" => &mut m.changes.new,
                    b"changed" => &mut m.changes.changed,
                    b"deleted" => &mut m.changes.deleted,
                    _ => return Err(bad(no, "unknown change type in Filelist")),
                };
                *count += 1;
            } else if let (Some(v), true) = (current.as_mut(), indented) {
                if keyword_is(first, "startingpath") || keyword_is(first, "endingpath") {
                    let path = tokens.get(1).ok_or_else(|| bad(no, "path missing"))?;
                    range_bytes += path.len() as u64;
                    if range_bytes > MAX_RANGE_BYTES {
                        return Err(bad(
                            no,
                            &format!(
                                "the volume ranges take more than {} MiB",
                                MAX_RANGE_BYTES >> 20
                            ),
                        ));
                    }
                    let index = PathIndex::from_bytes(&unquote(path).map_err(|e| bad(no, &e))?);
                    let block = match tokens.get(2) {
                        None => None,
                        Some(t) => Some(
                            std::str::from_utf8(t)
                                .ok()
                                .and_then(|t| t.parse::<u64>().ok())
                                .ok_or_else(|| bad(no, "block number is not a number"))?,
                        ),
                    };
                    if keyword_is(first, "startingpath") {
                        (v.start, v.start_block) = (index, block);
                    } else {
                        (v.end, v.end_block) = (index, block);
                    }
                } else if keyword_is(first, "hash") {
                    let (Some(kind), Some(value)) = (tokens.get(1), tokens.get(2)) else {
                        return Err(bad(no, "expected `Hash <type> <hex>`"));
                    };
                    let kind = String::from_utf8_lossy(kind).to_ascii_uppercase();
                    let value = String::from_utf8_lossy(value).to_ascii_lowercase();
                    if !value.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(bad(no, "hash value is not hexadecimal"));
                    }
                    let prefer = |k: &str| match k {
                        "SHA1" => 0,
                        "MD5" => 1,
                        _ => 2,
                    };
                    if v.hash
                        .as_ref()
                        .is_none_or(|(k, _)| prefer(&kind) <= prefer(k))
                    {
                        v.hash = Some((kind, value));
                    }
                }
                // Unknown keywords inside a block are ignored, as upstream does.
            } else if !indented {
                return Err(bad(
                    no,
                    &format!("unexpected line {}", shown(&String::from_utf8_lossy(line))),
                ));
            }
        }
        if let Some(v) = current.take() {
            m.volumes.insert(v.number, v);
        }
        if let Some(last) = last_listed {
            m.volumes.retain(|&n, _| n <= last);
            if last > max_volume {
                // Its block was not kept (the source has no such volume); a bare entry
                // keeps the set known to be broken.
                m.volumes.insert(
                    last,
                    VolumeInfo {
                        number: last,
                        start: PathIndex::root(),
                        start_block: None,
                        end: PathIndex::root(),
                        end_block: None,
                        hash: None,
                    },
                );
            }
        }
        Ok(m)
    }

    /// The SHA1 a volume must have, if the manifest gives one.
    pub fn sha1_of(&self, volume: u32) -> Option<&str> {
        self.volumes
            .get(&volume)
            .and_then(|v| v.hash.as_ref())
            .filter(|(k, _)| k == "SHA1")
            .map(|(_, h)| h.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &[u8] = b"Hostname vm\nLocaldir src\nVolume 1:\n    StartingPath   .  \n    EndingPath     huge.bin 14\n    Hash SHA1 14c28b82a61a5783643a5b920bf8c6873ab104f5\nVolume 2:\n    StartingPath   huge.bin 15\n    EndingPath     \"with\\x20space.txt\"  \n    Hash SHA1 322b203c3c01d6143eb45fbde8ffe3f1e5bcd372\nFilelist 3\n    new      bad\xff\xfename\n    changed  small.txt\n    deleted  sub/deeper/file\n";

    #[test]
    fn parses_real_layout() {
        let m = Manifest::parse(REAL).unwrap();
        assert_eq!(m.hostname.as_deref(), Some("vm"));
        assert_eq!(m.localdir.as_deref(), Some(&b"src"[..]));
        assert_eq!(m.volumes.len(), 2);
        let v1 = &m.volumes[&1];
        assert!(v1.start.is_root());
        assert_eq!(v1.start_block, None);
        assert_eq!(v1.end, PathIndex::from_bytes(b"huge.bin"));
        assert_eq!(v1.end_block, Some(14));
        assert_eq!(m.volumes[&2].end, PathIndex::from_bytes(b"with space.txt"));
        assert_eq!(
            m.sha1_of(2),
            Some("322b203c3c01d6143eb45fbde8ffe3f1e5bcd372")
        );
        assert_eq!(
            m.changes,
            FileChanges {
                new: 1,
                changed: 1,
                deleted: 1
            }
        );
    }

    #[test]
    fn filelist_first_and_repeated_volumes() {
        let data = b"Filelist 1\n    new      a\nVolume 1:\n    StartingPath   .  \n    EndingPath     b  \n    Hash SHA1 aa\nVolume 2:\n    StartingPath   b  \n    EndingPath     c  \n    Hash SHA1 bb\nVolume 3:\n    StartingPath   c  \n    EndingPath     d  \n    Hash SHA1 cc\nVolume 2:\n    StartingPath   b  \n    EndingPath     z  \n    Hash SHA1 dd\n";
        let m = Manifest::parse(data).unwrap();
        assert_eq!(m.changes.new, 1);
        assert_eq!(m.volumes.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(m.sha1_of(2), Some("dd"));
    }

    #[test]
    fn bounds() {
        // Volumes above the highest the source has are not kept, unless listed last.
        let data = b"Volume 1:\n    Hash SHA1 aa\nVolume 9:\n    Hash SHA1 bb\nVolume 1:\n    Hash SHA1 cc\n";
        let m = Manifest::read(&mut &data[..], 2).unwrap();
        assert_eq!(m.volumes.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(m.sha1_of(1), Some("cc"));
        let m = Manifest::read(&mut &data[..40], 2).unwrap();
        assert_eq!(m.volumes.keys().copied().collect::<Vec<_>>(), vec![1, 9]);
        assert_eq!(m.sha1_of(9), None);
        let mut long = b"Filelist 1\n    new      ".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_LINE_BYTES as usize));
        let e = Manifest::read(&mut &long[..], 1).unwrap_err().to_string();
        assert!(e.contains("longer than 1 MiB"), "{e}");
        // Lines are read one at a time, not kept.
        let mut endless = io::BufReader::new(
            (&b"Filelist 1\n"[..])
                .chain(io::repeat(b'\n').take(3 << 20))
                .chain(&b"    new      x\n"[..]),
        );
        assert_eq!(Manifest::read(&mut endless, 1).unwrap().changes.new, 1);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Manifest::parse(b"Volume x:\n").is_err());
        assert!(Manifest::parse(b"Volume 1:\n    Hash SHA1 nothex!\n").is_err());
        assert!(Manifest::parse(b"\x00\x01garbage line\n").is_err());
        assert!(Manifest::parse(b"Volume 1:\n    StartingPath   a  x\n").is_err());
    }

    #[test]
    fn may_contain_uses_prefix_tuples() {
        let v = VolumeInfo {
            number: 1,
            start: PathIndex::from_bytes(b"b/x"),
            start_block: None,
            end: PathIndex::from_bytes(b"d/y"),
            end_block: None,
            hash: None,
        };
        assert!(v.may_contain(&PathIndex::from_bytes(b"b")));
        assert!(v.may_contain(&PathIndex::from_bytes(b"c/q")));
        assert!(v.may_contain(&PathIndex::from_bytes(b"d")));
        assert!(!v.may_contain(&PathIndex::from_bytes(b"a")));
        assert!(!v.may_contain(&PathIndex::from_bytes(b"e")));
        assert!(v.may_contain(&PathIndex::root()));
    }
}
