//! Sets and chains: what a repository listing holds (docs/format.md §3).
//!
//! Files are grouped into backup sets by kind and times. A set is complete only when its
//! manifest is there: duplicity uploads volumes, then signatures, then the manifest, so a set
//! without one is a backup in progress (or one that died) and is never applied. Complete
//! sets are linked into chains by exact time equality (an incremental joins the chain that
//! ends where it starts); incrementals that link nowhere are orphans. [`Collection::select`]
//! picks the chain and sets for a restore time with duplicity's rules (docs/format.md §3.3).

use crate::repo::filename::{Content, NameParser, RemoteFile, SetKind};
use crate::repo::time::{format_compact, Epoch};
use crate::source::ListEntry;
use anyhow::{bail, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// All files of one backup session.
#[derive(Clone, Debug)]
pub struct BackupSet {
    pub kind: SetKind,
    /// For incrementals, the end of the set this one builds on.
    pub start_time: Option<Epoch>,
    pub end_time: Epoch,
    pub volumes: BTreeMap<u32, RemoteFile>,
    pub manifest: Option<RemoteFile>,
    pub signatures: Option<RemoteFile>,
    /// Files that collide with another of the same role (e.g. `vol1.difftar.gz` and
    /// `vol1.difftar.gpg`): the set cannot be read unambiguously.
    pub conflicts: Vec<String>,
}

impl BackupSet {
    fn new(kind: SetKind, start_time: Option<Epoch>, end_time: Epoch) -> Self {
        BackupSet {
            kind,
            start_time,
            end_time,
            volumes: BTreeMap::new(),
            manifest: None,
            signatures: None,
            conflicts: Vec::new(),
        }
    }

    pub fn is_complete(&self) -> bool {
        self.manifest.is_some()
    }

    /// A short name for messages: `full 20260102T030405Z` or `inc A..B`.
    pub fn label(&self) -> String {
        match (self.kind, self.start_time) {
            (SetKind::Inc, Some(s)) => {
                format!(
                    "inc {}..{}",
                    format_compact(s),
                    format_compact(self.end_time)
                )
            }
            _ => format!("full {}", format_compact(self.end_time)),
        }
    }

    /// Total size of the volume files, when the listing gave sizes.
    pub fn volume_bytes(&self) -> u64 {
        self.volumes.values().filter_map(|f| f.size).sum()
    }
}

/// A full set and the incrementals that build on it, in order.
#[derive(Clone, Debug)]
pub struct BackupChain {
    pub full: BackupSet,
    pub incs: Vec<BackupSet>,
}

impl BackupChain {
    pub fn start_time(&self) -> Epoch {
        self.full.end_time
    }

    pub fn end_time(&self) -> Epoch {
        self.incs.last().map_or(self.full.end_time, |s| s.end_time)
    }

    /// The sets of this chain, full first.
    pub fn sets(&self) -> impl Iterator<Item = &BackupSet> {
        std::iter::once(&self.full).chain(self.incs.iter())
    }

    /// The full and every incremental ending at or before `t`.
    pub fn sets_until(&self, t: Epoch) -> Vec<&BackupSet> {
        let mut out = vec![&self.full];
        out.extend(self.incs.iter().filter(|s| s.end_time <= t));
        out
    }
}

/// A repository's sets, sorted into chains.
#[derive(Clone, Debug, Default)]
pub struct Collection {
    /// Sorted by end time.
    pub chains: Vec<BackupChain>,
    /// Complete incrementals that link to no chain.
    pub orphans: Vec<BackupSet>,
    /// Sets without a manifest: in progress or interrupted.
    pub incomplete: Vec<BackupSet>,
    /// `.part` files (never on a healthy backend).
    pub partial_files: Vec<String>,
    /// The prefix in front of the duplicity names (detected or given).
    pub prefix: Option<String>,
}

impl Collection {
    pub fn from_listing(listing: &[ListEntry], parser: &NameParser) -> Result<Collection> {
        let files: Vec<RemoteFile> = listing
            .iter()
            .filter_map(|e| parser.parse(&e.name, e.size))
            .collect();
        let mut out = Collection::default();

        // Every file of one role must carry the same prefix, or we cannot tell which
        // repository a file belongs to.
        let mut prefixes: HashMap<&'static str, BTreeSet<&str>> = HashMap::new();
        for f in &files {
            let role = match f.content {
                Content::Volume(_) => "volume",
                Content::Manifest => "manifest",
                Content::Signatures => "signature",
                Content::JsonStat => "jsonstat",
            };
            prefixes.entry(role).or_default().insert(&f.prefix);
        }
        for (role, set) in &prefixes {
            if set.len() > 1 {
                let list: Vec<String> = set.iter().map(|p| format!("{p:?}")).collect();
                bail!(
                    "the source holds {role} files with different name prefixes ({}); pass \
                     --file-prefix (and --file-prefix-archive/-manifest/-signature) to choose one",
                    list.join(", ")
                );
            }
        }
        out.prefix = prefixes
            .get("manifest")
            .or(prefixes.get("volume"))
            .and_then(|s| s.iter().next())
            .filter(|p| !p.is_empty())
            .map(|p| p.to_string());

        let mut sets: BTreeMap<(SetKind, Option<Epoch>, Epoch), BackupSet> = BTreeMap::new();
        for f in files {
            if f.partial {
                out.partial_files.push(f.name);
                continue;
            }
            let (kind, start, end) = f.set_key();
            let set = sets
                .entry(f.set_key())
                .or_insert_with(|| BackupSet::new(kind, start, end));
            let slot = match f.content {
                Content::Volume(n) if set.volumes.contains_key(&n) => Some(f.name.clone()),
                Content::Volume(n) => {
                    set.volumes.insert(n, f.clone());
                    None
                }
                Content::Manifest => place(&mut set.manifest, &f),
                Content::Signatures => place(&mut set.signatures, &f),
                Content::JsonStat => None,
            };
            if let Some(conflict) = slot {
                set.conflicts.push(conflict);
            }
        }

        let mut complete: Vec<BackupSet> = Vec::new();
        for set in sets.into_values() {
            if set.is_complete() {
                complete.push(set);
            } else if !set.volumes.is_empty() || set.signatures.is_some() {
                out.incomplete.push(set);
            }
        }
        complete.sort_by_key(|s| (s.end_time, s.kind));
        for set in complete {
            match set.kind {
                SetKind::Full => out.chains.push(BackupChain {
                    full: set,
                    incs: Vec::new(),
                }),
                SetKind::Inc => {
                    let start = set.start_time;
                    let chain = out.chains.iter_mut().find(|c| Some(c.end_time()) == start);
                    match chain {
                        Some(chain) => chain.incs.push(set),
                        None => {
                            // Duplicity 0.8+ prefers a set over an earlier one with the
                            // same start (a re-run incremental).
                            let replaced = out.chains.iter_mut().find(|c| {
                                c.incs.last().is_some_and(|l| {
                                    l.start_time == start && l.end_time < set.end_time
                                })
                            });
                            match replaced {
                                Some(chain) => {
                                    if let Some(old) = chain.incs.pop() {
                                        out.orphans.push(old);
                                    }
                                    chain.incs.push(set);
                                }
                                None => out.orphans.push(set),
                            }
                        }
                    }
                }
            }
        }
        out.chains.sort_by_key(|c| c.end_time());
        Ok(out)
    }

    /// The chain to restore time `t` from (docs/format.md §3.3): the chain spanning `t`, else the
    /// latest chain ending before `t`, else (t precedes every backup) the earliest chain.
    pub fn select(&self, t: Epoch) -> Result<Option<&BackupChain>> {
        let spanning: Vec<&BackupChain> = self
            .chains
            .iter()
            .filter(|c| c.start_time() <= t && t <= c.end_time())
            .collect();
        if spanning.len() > 1 {
            bail!(
                "{} backup chains span time {}; the repository is inconsistent",
                spanning.len(),
                format_compact(t)
            );
        }
        if let Some(c) = spanning.first() {
            return Ok(Some(c));
        }
        Ok(self
            .chains
            .iter()
            .rev()
            .find(|c| c.end_time() < t)
            .or(self.chains.first()))
    }

    /// A collection from bare names (default prefixes, every file 10 bytes), for tests.
    #[cfg(test)]
    pub(crate) fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Collection> {
        let listing: Vec<ListEntry> = names
            .iter()
            .map(|n| ListEntry {
                name: n.as_ref().to_string(),
                size: Some(10),
            })
            .collect();
        let prefixes = crate::repo::filename::Prefixes::default();
        Collection::from_listing(&listing, &NameParser::new(&prefixes, ':'))
    }

    /// The latest complete state of the repository.
    pub fn latest_time(&self) -> Option<Epoch> {
        self.chains.iter().map(|c| c.end_time()).max()
    }
}

fn place(slot: &mut Option<RemoteFile>, f: &RemoteFile) -> Option<String> {
    if slot.is_some() {
        return Some(f.name.clone());
    }
    *slot = Some(f.clone());
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(names: &[&str]) -> Result<Collection> {
        Collection::from_names(names)
    }

    const F1: &str = "20200101T000000Z";
    const I1: &str = "20200102T000000Z";
    const I2: &str = "20200103T000000Z";
    const F2: &str = "20200104T000000Z";

    fn full(t: &str) -> Vec<String> {
        vec![
            format!("duplicity-full.{t}.vol1.difftar.gz"),
            format!("duplicity-full.{t}.manifest"),
        ]
    }
    fn inc(a: &str, b: &str, manifest: bool) -> Vec<String> {
        let mut v = vec![format!("duplicity-inc.{a}.to.{b}.vol1.difftar.gz")];
        if manifest {
            v.push(format!("duplicity-inc.{a}.to.{b}.manifest"));
        }
        v
    }

    fn names(parts: Vec<Vec<String>>) -> Vec<String> {
        let mut v: Vec<String> = parts.into_iter().flatten().collect();
        v.reverse(); // listing order must not matter
        v
    }

    #[test]
    fn chains_orphans_and_incomplete() {
        let all = names(vec![
            full(F1),
            inc(F1, I1, true),
            inc(I1, I2, false),
            full(F2),
            inc("20200105T000000Z", "20200106T000000Z", true),
        ]);
        let refs: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        let c = collect(&refs).unwrap();
        assert_eq!(c.chains.len(), 2);
        assert_eq!(
            c.chains[0].incs.len(),
            1,
            "the set without a manifest is not chained"
        );
        assert_eq!(c.incomplete.len(), 1);
        assert_eq!(c.orphans.len(), 1);
        assert_eq!(c.chains[1].start_time(), c.chains[1].end_time());
    }

    #[test]
    fn selection_rules() {
        let all = names(vec![
            full(F1),
            inc(F1, I1, true),
            inc(I1, I2, true),
            full(F2),
        ]);
        let refs: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        let c = collect(&refs).unwrap();
        let t = |s: &str| crate::repo::time::parse_name_time(s, ':').unwrap();
        // inside the first chain
        let ch = c.select(t(I1)).unwrap().unwrap();
        assert_eq!(ch.start_time(), t(F1));
        assert_eq!(ch.sets_until(t(I1)).len(), 2);
        // in the gap between chains: the latest chain ending before
        let ch = c.select(t(I2) + 10).unwrap().unwrap();
        assert_eq!(ch.start_time(), t(F1));
        // before everything: the earliest chain
        assert_eq!(c.select(0).unwrap().unwrap().start_time(), t(F1));
        // after everything
        assert_eq!(c.select(i64::MAX).unwrap().unwrap().start_time(), t(F2));
    }

    #[test]
    fn conflicting_encodings_are_flagged() {
        let c = collect(&[
            "duplicity-full.20200101T000000Z.vol1.difftar.gz",
            "duplicity-full.20200101T000000Z.vol1.difftar.gpg",
            "duplicity-full.20200101T000000Z.manifest",
        ])
        .unwrap();
        assert_eq!(c.chains[0].full.conflicts.len(), 1);
    }

    #[test]
    fn prefixes_detected_or_ambiguous() {
        let c = collect(&[
            "x_duplicity-full.20200101T000000Z.vol1.difftar.gz",
            "x_duplicity-full.20200101T000000Z.manifest",
        ])
        .unwrap();
        assert_eq!(c.prefix.as_deref(), Some("x_"));
        assert_eq!(c.chains.len(), 1);
        let err = collect(&[
            "x_duplicity-full.20200101T000000Z.manifest",
            "y_duplicity-full.20200102T000000Z.manifest",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("--file-prefix"), "{err}");
    }
}
