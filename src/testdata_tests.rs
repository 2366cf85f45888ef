//! Unit tests on the real repositories committed under `testdata/` (written by upstream
//! duplicity 0.8.22 and 3.2.1): every name form, manifest and volume layout read here
//! without duplicity installed. `tests/it/testdata_repos.rs` checks whole syncs of them.

use crate::decode::records::{
    Record, RecordKind, RecordSink, RecordStream, VolumeSink, VolumeSinks,
};
use crate::index::PathIndex;
use crate::repo::collection::Collection;
use crate::repo::filename::{NameParser, Prefixes};
use crate::repo::manifest::Manifest;
use crate::repo::{RepoOptions, Repository};
use crate::source::{Backend, LocalBackend};
use anyhow::Result;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

fn repo_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/repos")
        .join(name)
}

/// A repository read in place from a local folder.
fn local_repo(dir: &Path) -> Repository {
    Repository::open(
        Box::new(LocalBackend::new(dir.to_str().unwrap()).unwrap()),
        &RepoOptions::default(),
        Default::default(),
    )
    .unwrap()
}

fn collection(name: &str, prefixes: &Prefixes) -> Collection {
    let backend = LocalBackend::new(repo_dir(name).to_str().unwrap()).unwrap();
    Collection::from_listing(&backend.list().unwrap(), &NameParser::new(prefixes, ':')).unwrap()
}

#[test]
fn every_name_form_builds_one_chain() {
    let t0 = 1_700_000_000;
    for (name, incs) in [
        ("gz-08", 3),
        ("gz-3", 3),
        ("plain-08", 2),
        ("short-08", 2),
        ("old-08", 2),
        ("prefix-08", 2),
        ("volsize-08", 1),
    ] {
        let c = collection(name, &Prefixes::default());
        assert_eq!(c.chains.len(), 1, "{name}");
        let chain = &c.chains[0];
        assert_eq!(chain.start_time(), t0, "{name}: full time");
        assert_eq!(chain.incs.len(), incs, "{name}: incrementals");
        assert_eq!(
            chain.end_time(),
            t0 + 1000 * incs as i64,
            "{name}: chain end"
        );
        assert!(c.orphans.is_empty() && c.incomplete.is_empty(), "{name}");
        assert!(
            chain.sets().all(|s| s.signatures.is_some()),
            "{name}: signature files"
        );
    }
}

#[test]
fn explicit_prefixes_and_detected_ones_agree() {
    let given = Prefixes {
        global: "P_".into(),
        archive: "A_".into(),
        manifest: "M_".into(),
        signature: "S_".into(),
        jsonstat: String::new(),
    };
    let a = collection("prefix-08", &given);
    let b = collection("prefix-08", &Prefixes::default());
    assert_eq!(a.chains[0].incs.len(), b.chains[0].incs.len());
    assert_eq!(b.prefix.as_deref(), Some("P_M_"));
    // The wrong prefix sees nothing at all.
    let wrong = Prefixes {
        global: "Q_".into(),
        ..Default::default()
    };
    assert!(collection("prefix-08", &wrong).chains.is_empty());
}

#[test]
fn incomplete_and_orphaned_sets_are_kept_out_of_chains() {
    let c = collection("incomplete-08", &Prefixes::default());
    assert_eq!(
        c.chains[0].incs.len(),
        1,
        "the set without a manifest is not chained"
    );
    assert_eq!(c.incomplete.len(), 1);
    let c = collection("orphan-08", &Prefixes::default());
    assert_eq!(c.chains[0].incs.len(), 1);
    assert_eq!(c.orphans.len(), 1);
}

#[test]
fn every_manifest_parses_and_hashes_match() {
    for entry in
        std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/repos")).unwrap()
    {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let repo = local_repo(&dir);
        for chain in &repo.collection.chains {
            for set in chain.sets() {
                let m: Manifest = repo
                    .manifest(set)
                    .unwrap_or_else(|e| panic!("{name} {}: {e:#}", set.label()));
                for (n, v) in &m.volumes {
                    let sha1 = m
                        .sha1_of(*n)
                        .unwrap_or_else(|| panic!("{name}: no SHA1 for volume {n}"));
                    let file = &set.volumes[n];
                    let mut data = Vec::new();
                    std::fs::File::open(dir.join(&file.name))
                        .unwrap()
                        .read_to_end(&mut data)
                        .unwrap();
                    use sha1::Digest;
                    assert_eq!(
                        hex::encode(sha1::Sha1::digest(&data)),
                        sha1,
                        "{name} {}",
                        file.name
                    );
                    assert!(v.start <= v.end, "{name}: volume {n} range");
                }
            }
        }
    }
}

/// Counts records and the bytes of each file, as a sink.
#[derive(Default)]
struct Tally {
    records: Vec<(PathIndex, RecordKind, bool)>,
    bytes: std::collections::BTreeMap<PathIndex, u64>,
    open: Option<PathIndex>,
}

impl RecordSink for Tally {
    fn begin(&mut self, r: &Record) -> Result<()> {
        self.records.push((r.index.clone(), r.kind, r.headless));
        self.open = Some(r.index.clone());
        Ok(())
    }
    fn data(&mut self, bytes: &mut dyn Read) -> Result<()> {
        let n = std::io::copy(bytes, &mut std::io::sink())?;
        *self.bytes.entry(self.open.clone().unwrap()).or_default() += n;
        Ok(())
    }
    fn end(&mut self) -> Result<()> {
        self.open = None;
        Ok(())
    }
}

#[test]
fn a_file_split_across_volumes_is_stitched_in_order() {
    let repo = local_repo(&repo_dir("volsize-08"));
    let full = &repo.collection.chains[0].full;
    let manifest = repo.manifest(full).unwrap();
    assert!(manifest.volumes.len() >= 3, "big.bin spans volumes");
    let volumes: Vec<u32> = manifest.volumes.keys().copied().collect();
    let mut tally = Tally::default();
    repo.read_set(full, &manifest, &volumes, &mut tally)
        .unwrap();
    let big = PathIndex::from_bytes(b"big.bin");
    assert_eq!(
        tally.bytes[&big], 2_300_000,
        "all chunks of big.bin, once each"
    );
    let indexes: Vec<&PathIndex> = tally.records.iter().map(|r| &r.0).collect();
    assert!(
        indexes.windows(2).all(|w| w[0] < w[1]),
        "strict index order"
    );
    assert!(tally.records.iter().all(|r| !r.2), "no headless chunk runs");

    // Reading from the second volume on starts in the middle of big.bin.
    let mut tally = Tally::default();
    let mut stream = RecordStream::new();
    let file = &full.volumes[&2];
    let mut reader = repo.open_stream(file).unwrap();
    stream.read_volume(&mut reader, &mut tally).unwrap();
    stream.close(&mut tally).unwrap();
    assert_eq!(
        tally.records[0],
        (big, RecordKind::Snapshot, true),
        "a headless run"
    );
}

/// Volumes read apart into tallies of their own; counts the decoders that ran dry.
#[derive(Default)]
struct ApartTallies {
    volumes: std::sync::atomic::AtomicUsize,
    ran_dry: std::sync::atomic::AtomicUsize,
}

impl VolumeSinks for ApartTallies {
    fn volume(&self, _follows: bool) -> Result<Box<dyn VolumeSink>> {
        self.volumes.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(Tally::default()))
    }
    fn no_volume_left(&self) {
        self.ran_dry.fetch_add(1, Ordering::Relaxed);
    }
}

impl VolumeSink for Tally {
    fn done(self: Box<Self>, _last: Option<&PathIndex>) -> Result<()> {
        Ok(())
    }
}

#[test]
fn each_decoder_that_runs_out_of_volumes_says_so() {
    let repo = local_repo(&repo_dir("volsize-08"));
    let full = &repo.collection.chains[0].full;
    let manifest = repo.manifest(full).unwrap();
    let volumes: Vec<u32> = manifest.volumes.keys().copied().collect();
    assert!(volumes.len() >= 3);
    let sinks = ApartTallies::default();
    repo.read_set_apart(full, &manifest, &volumes, 2, &sinks)
        .unwrap();
    assert_eq!(sinks.volumes.load(Ordering::Relaxed), volumes.len());
    assert_eq!(sinks.ran_dry.load(Ordering::Relaxed), 2, "once per decoder");
}

/// Every set of `repo`, all its volumes, read into one tally per set (prefetching them
/// first when `cache` is given).
fn read_every_set(repo: &Repository, cache: Option<&std::path::Path>) -> Vec<Tally> {
    let sets: Vec<_> = repo
        .collection
        .chains
        .iter()
        .flat_map(|c| c.sets())
        .collect();
    let plan: Vec<(Manifest, Vec<u32>)> = sets
        .iter()
        .map(|s| {
            let m = repo.manifest(s).unwrap();
            let volumes = m.volumes.keys().copied().collect();
            (m, volumes)
        })
        .collect();
    if let Some(cache) = cache {
        let mut wants = Vec::new();
        for (set, (m, volumes)) in sets.iter().zip(&plan) {
            wants.extend(repo.wants(set, m, volumes).unwrap());
        }
        repo.prefetch(wants, cache, 2).unwrap();
    }
    sets.iter()
        .zip(&plan)
        .map(|(set, (m, volumes))| {
            let mut tally = Tally::default();
            repo.read_set(set, m, volumes, &mut tally)
                .unwrap_or_else(|e| panic!("{}: {e:#}", set.label()));
            tally
        })
        .collect()
}

#[test]
fn a_source_that_cuts_fails_and_damages_reads_as_the_folder_does() {
    use crate::progress::Reporter;
    use crate::source::faulty::{Faults, FaultyBackend};
    use crate::source::meter::Meter;
    use crate::source::retry::RetryBackend;
    use crate::source::MemoryBackend;
    use std::sync::Arc;

    let dir = repo_dir("volsize-08");
    let local = local_repo(&dir);
    let expected = read_every_set(&local, None);

    let vol2 = "duplicity-full.20231114T221320Z.vol2.difftar.gz";
    let faults = Faults {
        failing_lists: 1,
        failing_opens: 2,
        cut_after: Some(200_000),
        damaged: Some((vol2.to_string(), 1)),
        ..Faults::default()
    };
    let reporter = Arc::new(Reporter::default());
    let remote = RetryBackend::new(
        Box::new(FaultyBackend::new(
            Box::new(MemoryBackend::from_dir(&dir).unwrap()),
            faults,
        )),
        3,
        Arc::new(Meter::new(None, reporter.clone())),
    )
    .without_waiting();
    let repo =
        Repository::open(Box::new(remote), &RepoOptions::default(), reporter.clone()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let got = read_every_set(&repo, Some(cache.path()));
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g.records, e.records);
        assert_eq!(g.bytes, e.bytes);
    }
    let size = |name: &str| std::fs::metadata(dir.join(name)).unwrap().len();
    let vol1 = "duplicity-full.20231114T221320Z.vol1.difftar.gz";
    let t = reporter.transfer();
    assert!(t.retries >= 1 + 2 + size(vol1) / 200_000, "{t:?}");
    assert!(
        t.bytes_refetched >= size(vol2),
        "the damaged volume came twice: {t:?}"
    );
}
