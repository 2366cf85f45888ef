//! Comparing DEST with what a signature chain says it should hold, without any volume.
//!
//! ```text
//! compare(sets, DEST, filter):
//!     merge the sets' signature files by index (signatures::merge_chain)
//!     walk DEST in the same order (dest::walk), like a merge join:
//!         only in the backup -> Missing     only in DEST -> Extra
//!         in both -> compare type, symlink target, device, mode, mtime, owner (as root);
//!                    regular files: queue a content check
//!     content checks run on worker threads: the librsync signature of the local file,
//!     computed with the block length of the stored one, must equal the stored bytes
//! ```
//!
//! Used by `verify`, by a sync that meets a new full chain (only the differing paths are
//! fetched), and by repairs. Limits: content equality is signature equality (MD4 blocks,
//! 8-byte strong sums: a deliberate collision is conceivable, an accidental one is not);
//! symlinks' mode and mtime are not compared (duplicity does not restore them); owners are
//! compared only when running as root, as only root can set them.
//!
//! Memory: one entry per signature stream, the sorted listings of the directories on the
//! walk's current path, at most 64 files queued for hashing (each open until hashed), and
//! the differences found: proportional to how much DEST differs, never to the tree.

use crate::decode::delta::SigDigest;
use crate::decode::records::RecordKind;
use crate::dest::dir::{Kind, Stat};
use crate::dest::fsops::OwnerMap;
use crate::dest::tree::Tree;
use crate::dest::walk::DestWalker;
use crate::index::PathIndex;
use crate::meta::{FileType, Metadata};
use crate::mirror::filter::PathFilter;
use crate::repo::collection::BackupSet;
use crate::repo::sigtar::merge_chain;
use crate::repo::Repository;
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::sync::mpsc;

/// One way DEST differs from the backup.
#[derive(Clone, Debug)]
pub struct Difference {
    pub index: PathIndex,
    pub kind: DiffKind,
    /// What the backup has at this path (None for an extra path).
    pub expected: Option<Metadata>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiffKind {
    /// In the backup, not in DEST.
    Missing,
    /// In DEST, not in the backup.
    Extra,
    /// In both, different in these respects.
    Changed(BTreeSet<Change>),
}

/// One respect in which a path differs, in the order reports list them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    Content,
    /// Another kind of object (nothing else is compared then).
    Type,
    /// Another symlink target.
    Target,
    /// Another device number.
    Device,
    Mode,
    Mtime,
    Owner,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Content => "content",
            Change::Type => "type",
            Change::Target => "target",
            Change::Device => "device",
            Change::Mode => "mode",
            Change::Mtime => "mtime",
            Change::Owner => "owner",
        }
    }

    /// Whether undoing it needs the object itself from a volume, not just attributes.
    pub fn needs_data(self) -> bool {
        matches!(
            self,
            Change::Content | Change::Type | Change::Target | Change::Device
        )
    }
}

impl Difference {
    /// Whether fixing this needs the object's data from a volume (otherwise the fix is a
    /// removal or new attributes, known from the signature file alone).
    pub fn needs_data(&self) -> bool {
        match &self.kind {
            DiffKind::Missing => true,
            DiffKind::Extra => false,
            DiffKind::Changed(what) => what.iter().any(|c| c.needs_data()),
        }
    }

    pub fn describe(&self) -> String {
        match &self.kind {
            DiffKind::Missing => "missing".into(),
            DiffKind::Extra => "extra".into(),
            DiffKind::Changed(what) => {
                let names: Vec<&str> = what.iter().map(|c| c.name()).collect();
                format!("changed ({})", names.join(", "))
            }
        }
    }

    /// How reports (sync, verify) show it.
    pub fn report(&self) -> DifferenceReport {
        DifferenceReport {
            path: self.index.to_string(),
            what: self.describe(),
        }
    }
}

/// A path that differs, as every report shows it: `{"path": ..., "what": ...}`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DifferenceReport {
    pub path: String,
    /// `missing`, `extra`, or `changed (content, mode, ...)`.
    pub what: String,
}

/// Counts of one comparison.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CompareStats {
    pub paths_checked: u64,
    pub files_hashed: u64,
    pub bytes_hashed: u64,
}

struct HashJob {
    index: PathIndex,
    file: File,
    size: u64,
    signature: SigDigest,
    expected: Metadata,
    /// Metadata differences already found.
    what: BTreeSet<Change>,
}

impl HashJob {
    /// Hashes the file and closes it; the difference it makes, if any.
    fn finish(mut self) -> Result<Option<Difference>> {
        if !content_matches(&self.file, self.size, &self.signature)? {
            self.what.insert(Change::Content);
        }
        Ok((!self.what.is_empty()).then_some(Difference {
            index: self.index,
            kind: DiffKind::Changed(self.what),
            expected: Some(self.expected),
        }))
    }
}

/// How closely to look at regular files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentCheck {
    /// Hash every file and compare its librsync signature: finds any edit.
    Signatures,
    /// Metadata only, like rsync's quick check: the size must fit the signature's block
    /// count, mode and mtime must match. An edit that keeps size and mtime goes unseen.
    Quick,
}

/// Compares DEST with the state at the end of `sets` (a full and its incrementals, in
/// order), within `filter`. Returns the differences in index order.
pub fn compare(
    repo: &Repository,
    sets: &[&BackupSet],
    dest: Option<&Tree>,
    filter: &PathFilter,
    check: ContentCheck,
) -> Result<(Vec<Difference>, CompareStats)> {
    let mut diffs = Vec::new();
    let mut stats = CompareStats::default();
    let mut owners = OwnerMap::new();
    let mut walker = DestWalker::new(dest)?;
    let (job_tx, job_rx) = mpsc::sync_channel::<HashJob>(64);
    // Only differences and errors come back (they are read after the walk): a job's file
    // is closed once it is hashed.
    let (res_tx, res_rx) = mpsc::channel::<Result<Difference>>();
    let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
    let workers: Vec<_> = (0..std::thread::available_parallelism().map_or(2, |n| n.get()))
        .map(|_| {
            let rx = job_rx.clone();
            let tx = res_tx.clone();
            std::thread::spawn(move || loop {
                let job = match rx.lock() {
                    Ok(guard) => guard.recv(),
                    Err(_) => return,
                };
                let Ok(job) = job else { return };
                // A file that matches leaves nothing behind.
                let Some(found) = job.finish().transpose() else {
                    continue;
                };
                if tx.send(found).is_err() {
                    return;
                }
            })
        })
        .collect();
    drop(res_tx);

    let merged = merge_chain(repo, sets, true, |entry| {
        if !entry.exists() || !filter.wants(&entry.index) {
            return Ok(());
        }
        stats.paths_checked += 1;
        // Everything DEST has before this path, and is not on the way to it, is extra.
        let mut found_here = None;
        while let Some(found) = walker.peek().cloned() {
            if found.index == entry.index {
                found_here = Some(found);
                break;
            }
            if found.index > entry.index {
                break;
            }
            if entry.index.starts_with(&found.index) {
                walker.advance(true)?;
            } else {
                diffs.push(Difference {
                    index: found.index.clone(),
                    kind: DiffKind::Extra,
                    expected: None,
                });
                walker.advance(false)?;
            }
        }
        let Some(found) = found_here else {
            diffs.push(Difference {
                index: entry.index.clone(),
                kind: DiffKind::Missing,
                expected: Some(entry.meta),
            });
            return Ok(());
        };
        let local = found.stat;
        let what = metadata_differences(&entry.meta, &local, || walker.read_link(), &mut owners)?;
        // Regular files get their content checked even when metadata differs, so that a
        // repair knows whether it needs the data: opened now, through the walk's handle.
        let hashed = entry.kind == RecordKind::Signature && !what.contains(&Change::Type);
        let file = if hashed && entry.signature.is_some() && check == ContentCheck::Signatures {
            Some(walker.open_file()?)
        } else {
            None
        };
        walker.advance(entry.meta.is_dir() && found.is_dir())?;
        if hashed {
            if let (Some(signature), ContentCheck::Quick) = (&entry.signature, check) {
                let mut what = what;
                if !signature.size_fits(local.size) {
                    what.insert(Change::Content);
                }
                if !what.is_empty() {
                    diffs.push(Difference {
                        index: entry.index,
                        kind: DiffKind::Changed(what),
                        expected: Some(entry.meta),
                    });
                }
                return Ok(());
            }
            if let (Some(signature), Some(file)) = (entry.signature, file) {
                stats.files_hashed += 1;
                stats.bytes_hashed += local.size;
                job_tx
                    .send(HashJob {
                        index: entry.index,
                        file,
                        size: local.size,
                        signature,
                        expected: entry.meta,
                        what,
                    })
                    .context("content checker stopped")?;
                return Ok(());
            }
        }
        if !what.is_empty() {
            diffs.push(Difference {
                index: entry.index,
                kind: DiffKind::Changed(what),
                expected: Some(entry.meta),
            });
        }
        Ok(())
    });
    drop(job_tx);
    let mut errors = Vec::new();
    for result in res_rx {
        match result {
            Ok(diff) => diffs.push(diff),
            Err(e) => errors.push(e),
        }
    }
    for w in workers {
        let _ = w.join();
    }
    merged?;
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    while let Some(found) = walker.peek().cloned() {
        diffs.push(Difference {
            index: found.index,
            kind: DiffKind::Extra,
            expected: None,
        });
        walker.advance(false)?;
    }
    diffs.sort_by(|a, b| a.index.cmp(&b.index));
    Ok((diffs, stats))
}

fn metadata_differences(
    expected: &Metadata,
    local: &Stat,
    read_link: impl FnOnce() -> Result<Vec<u8>>,
    owners: &mut OwnerMap,
) -> Result<BTreeSet<Change>> {
    let same_type = match &expected.file_type {
        FileType::Regular => local.kind == Kind::Regular,
        FileType::Dir => local.kind == Kind::Dir,
        FileType::Symlink(_) => local.kind == Kind::Symlink,
        FileType::Fifo => local.kind == Kind::Fifo,
        FileType::CharDevice { .. } => local.kind == Kind::CharDevice,
        FileType::BlockDevice { .. } => local.kind == Kind::BlockDevice,
    };
    if !same_type {
        return Ok(BTreeSet::from([Change::Type]));
    }
    let mut what = BTreeSet::new();
    match &expected.file_type {
        FileType::Symlink(target) if read_link()? != *target => {
            what.insert(Change::Target);
        }
        FileType::CharDevice { major, minor } | FileType::BlockDevice { major, minor } => {
            let rdev = local.rdev;
            if (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev))
                != (u64::from(*major), u64::from(*minor))
            {
                what.insert(Change::Device);
            }
        }
        _ => {}
    }
    let is_symlink = matches!(expected.file_type, FileType::Symlink(_));
    if !is_symlink {
        if local.mode != expected.mode {
            what.insert(Change::Mode);
        }
        if local.mtime != expected.mtime {
            what.insert(Change::Mtime);
        }
    }
    if owners.applies() && owners.resolve(expected) != (local.uid, local.gid) {
        what.insert(Change::Owner);
    }
    Ok(what)
}

/// Whether the content of `file` (`size` bytes, read from its start) has the signature
/// `expected` stands for.
pub fn content_matches(file: impl Read, size: u64, expected: &SigDigest) -> Result<bool> {
    let kind = match expected.magic {
        0x7273_0136 => librsync::SignatureType::MD4,
        0x7273_0137 => librsync::SignatureType::Blake2,
        _ => return Ok(false),
    };
    if !expected.size_fits(size) {
        return Ok(false);
    }
    let mut job = librsync::Signature::with_options(
        file,
        expected.block_len as usize,
        expected.strong_len as usize,
        kind,
    )
    .map_err(|e| anyhow::anyhow!("librsync: {e}"))?;
    let actual = SigDigest::read(&mut job).context("cannot read a file to hash it")?;
    Ok(actual == *expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_check_uses_the_stored_block_length() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let open = || File::open(&p).unwrap();
        let mut sig = Vec::new();
        std::io::Read::read_to_end(
            &mut librsync::Signature::with_options(
                &data[..],
                1024,
                8,
                librsync::SignatureType::MD4,
            )
            .unwrap(),
            &mut sig,
        )
        .unwrap();
        let sig = SigDigest::of(&sig);
        assert!(content_matches(&open(), 5000, &sig).unwrap());
        let mut edited = data.clone();
        edited[4000] ^= 1;
        std::fs::write(&p, &edited).unwrap();
        assert!(!content_matches(&open(), 5000, &sig).unwrap());
        assert!(
            !content_matches(&open(), 9000, &sig).unwrap(),
            "size outside the block count"
        );
        assert!(!content_matches(&open(), 5000, &SigDigest::of(b"junk")).unwrap());
    }
}
