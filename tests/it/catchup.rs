//! A late host's catch-up as one merged, journaled step (issue 15, item 1).
//!
//! Upstream duplicity writes a full and 22 incrementals that keep changing the same paths
//! (a delta chain on one big file and on one small file, a file deleted then recreated, a
//! path going file -> directory -> symlink -> file, a file deleted with its directory and the
//! directory recreated, paths created and removed within the catch-up, attributes changed
//! again and again), then a new full chain with two incrementals. Hosts that are many sets
//! behind sync once; DEST must equal `duplicity restore` of the target, the state must record
//! the target, and `--json` must report the sets merged into the one commit and the writes
//! the merge saved.
//!
//! Deltas a path receives from several pending sets are composed in memory and only the
//! last version is written (mirror/apply/compose.rs): chains of partial rewrites of files
//! split over several volumes (growing, shrinking, shifting, rewritten where an earlier set
//! wrote) must give what `duplicity restore` gives, and so must a chain that passes the
//! memory budget and is written half-way.

use crate::support::report::{self, SyncReport};
use crate::support::scenario::{back_up, full, inc, Step};
use crate::support::*;

both_versions!(
    merged_catch_up_equals_restore,
    composed_chains_equal_restore
);

const BIG: usize = 300_000;
const INCS: usize = 22;

fn chain<'a>() -> Vec<Step<'a>> {
    let mut steps = vec![full(|fs| {
        fs.write("big.bin", &random_bytes(3, BIG));
        fs.write("hot.txt", b"hot 0\n");
        fs.write("flip", b"a file first\n");
        fs.write("again", b"first life\n");
        fs.write("nest/old/f", b"deleted with its folder\n");
        fs.write("nest/keep", b"stays\n");
        fs.write("attrs/x", b"x\n");
        for i in 0..10 {
            fs.write(format!("plain/p{i}"), format!("plain {i}\n").as_bytes());
        }
    })];
    for k in 1..=INCS {
        steps.push(inc(move |fs| {
            // One file patched by every set: a chain of deltas through one staged copy.
            fs.modify("big.bin", |b| {
                let at = (k * 9_973) % (BIG - 16);
                b[at..at + 8].copy_from_slice(&(k as u64).to_le_bytes());
            });
            fs.write("hot.txt", format!("hot {k}\n").as_bytes());
            fs.chmod("attrs", if k % 2 == 0 { 0o750 } else { 0o755 });
            fs.chmod("attrs/x", if k % 2 == 0 { 0o600 } else { 0o644 });
            match k {
                2 => fs.remove("nest/old"),
                3 => fs.remove("again"),
                4 => {
                    fs.remove("flip");
                    fs.write("flip/inside", b"now a directory\n");
                }
                5 => fs.write("nest/old/g", b"the folder is back\n"),
                6 => fs.symlink("flip", "nest/keep"),
                7 => fs.write("again", b"second life, longer than the first\n"),
                8 => fs.write("flip", b"a file again\n"),
                10 => {
                    for i in 0..15 {
                        fs.write(format!("tmp/t{i}"), &random_bytes(i, 2_000));
                    }
                }
                11 => fs.remove("tmp"),
                12 => fs.remove("plain/p3"),
                13 => fs.write("plain/p3", b"p3 recreated\n"),
                _ => {}
            }
        }));
    }
    // A new chain: a host on the old one replaces DEST from this full and merges the
    // incrementals after it into the same commit.
    steps.push(full(|fs| {
        fs.write("chain2/only", b"the second chain\n");
        fs.remove("plain/p0");
    }));
    for k in 1..=2 {
        steps.push(inc(move |fs| {
            fs.write("chain2/only", format!("the second chain, {k}\n").as_bytes());
            fs.write(format!("chain2/n{k}"), b"new\n");
        }));
    }
    steps
}

/// Syncs `host` to `time` with `--json`; DEST must equal `oracle` and the state `time`.
fn catch_up(lab: &Lab, host: &Host, time: i64, oracle: &Tree, ctx: &str) -> SyncReport {
    let run = host.sync(&lab.repo, &["--json", "--time", &time.to_string()]);
    run.assert_ok(ctx);
    oracle.assert_same(&host.tree(), Compare::default(), ctx);
    assert_eq!(host.state_end_time(), Some(time), "{ctx}: the state");
    assert_eq!(
        host.state_leftovers(),
        Vec::<String>::new(),
        "{ctx}: leftovers"
    );
    report::of(&run)
}

fn merged_catch_up_equals_restore(dup: Duplicity) {
    let label = dup.label();
    let mut lab = Lab::new(dup);
    let times: Vec<i64> = chain()
        .iter()
        .enumerate()
        .map(|(k, step)| back_up(&mut lab, k, step))
        .collect();
    let last_inc = times[INCS];
    let end_inc = lab.restore(last_inc);

    // From the full, 22 sets behind.
    let late = lab.host("late");
    late.sync(&lab.repo, &["--time", &times[0].to_string()])
        .assert_ok("at the full");
    let ctx = format!("[{label}] 22 sets behind");
    let r = catch_up(&lab, &late, last_inc, &end_inc, &ctx);
    let merged = r
        .merged
        .unwrap_or_else(|| panic!("{ctx}: no merged report"));
    eprintln!("catchup: {ctx}: {merged:?}");
    assert_eq!(merged.sets, INCS as u64, "{ctx}: sets merged");
    assert_eq!(r.sets.len(), INCS, "{ctx}: sets reported");
    assert!(
        r.sets.iter().all(|s| s.applied.is_some()),
        "{ctx}: every set is reported applied"
    );
    // big.bin and hot.txt are staged by every set and placed once: 21 superseded copies
    // each; the 15 files of tmp/ are created and removed within the catch-up.
    assert!(
        merged.writes_saved >= 2 * 21 + 15,
        "{ctx}: writes saved {merged:?}"
    );
    assert!(
        merged.bytes_saved >= 21 * BIG as u64,
        "{ctx}: bytes saved {merged:?}"
    );

    // From the middle of the chain, past the type changes.
    let host = lab.host("mid");
    host.sync(&lab.repo, &["--time", &times[3].to_string()])
        .assert_ok("at set 3");
    let ctx = format!("[{label}] from set 3");
    let r = catch_up(&lab, &host, last_inc, &end_inc, &ctx);
    assert_eq!(r.merged.map(|m| m.sets), Some(INCS as u64 - 3), "{ctx}");

    // A first sync: the full alone (a new tree), then the incrementals as one commit.
    let host = lab.host("first");
    let ctx = format!("[{label}] first sync to the end of the chain");
    let r = catch_up(&lab, &host, last_inc, &end_inc, &ctx);
    assert_eq!(r.merged.map(|m| m.sets), Some(INCS as u64), "{ctx}");

    // From the old chain to the new one: the new full (a Replace) and its incrementals.
    let end = *times.last().expect("a chain");
    let ctx = format!("[{label}] to the new chain");
    let r = catch_up(&lab, &late, end, &lab.restore(end), &ctx);
    assert_eq!(r.merged.map(|m| m.sets), Some(3), "{ctx}");

    // One set behind: nothing to merge, and nothing reported as merged.
    let host = lab.host("one");
    host.sync(&lab.repo, &["--time", &times[INCS - 1].to_string()])
        .assert_ok("one behind");
    let ctx = format!("[{label}] one set behind");
    let r = catch_up(&lab, &host, last_inc, &end_inc, &ctx);
    assert!(r.merged.is_none(), "{ctx}: a single set is not a merge");
}

/// A file edited by hand in DEST that the first pending set patches is restored from the
/// chain into the merged view; the second set then patches the restored copy.
#[test]
fn drift_found_in_a_merged_catch_up_is_repaired_in_it() {
    let Some(dup) = duplicity(Version::V08) else {
        return;
    };
    let mut lab = Lab::new(dup);
    let mut master = random_bytes(7, 200_000);
    lab.fs.write_at("big", &master, T0 - 5000);
    lab.fs.write_at("other", b"other", T0 - 5000);
    lab.full(t(0));
    let host = lab.host("h");
    host.sync(&lab.repo, &[]).assert_ok("first sync");
    let p = host.dest.join("big");
    let mut local = std::fs::read(&p).unwrap();
    local[10..20].copy_from_slice(b"LOCAL EDIT");
    std::fs::write(&p, &local).unwrap();
    for (k, at) in [(1, 100_000), (2, 150_000)] {
        master[at..at + 10].copy_from_slice(b"NEW BYTES!");
        lab.fs.write_at("big", &master, T0 + 10 * k);
        lab.inc(t(k));
    }
    let ctx = "drift in a merged catch-up";
    let r = catch_up(&lab, &host, t(2), &lab.restore(t(2)), ctx);
    assert!(r.sets[0].repaired.is_some(), "{ctx}: repaired in set 1");
    assert_eq!(r.merged.map(|m| m.sets), Some(2), "{ctx}");

    // The text report says so briefly.
    let host = lab.host("text");
    host.sync(&lab.repo, &["--time", &t(0).to_string()])
        .assert_ok("at the full");
    let run = host.sync(&lab.repo, &[]);
    run.assert_ok("text report");
    let text = run.stdout_text();
    assert!(
        text.contains("merged 2 sets into one commit: ") && text.contains(" write(s) saved"),
        "{text}"
    );
}

const MB: usize = 1 << 20;

/// Overwrites `len` bytes at `at` with bytes from `seed`.
fn rewrite(b: &mut [u8], at: usize, len: usize, seed: u64) {
    b[at..at + len].copy_from_slice(&random_bytes(seed, len));
}

fn partial_rewrites<'a>() -> Vec<Step<'a>> {
    vec![
        full(|fs| {
            fs.write("a.bin", &random_bytes(11, 3 * MB));
            fs.write("b.bin", &random_bytes(12, 1_200_000));
            fs.write("gone.bin", &random_bytes(13, 500_000));
            fs.write("small.txt", b"small 0\n");
        }),
        inc(|fs| {
            fs.modify("a.bin", |b| rewrite(b, 100_000, 65_536, 21));
            fs.modify("b.bin", |b| rewrite(b, 0, 10, 22));
            fs.modify("gone.bin", |b| rewrite(b, 250_000, 1000, 23));
            fs.write("small.txt", b"small 1, longer\n");
        }),
        inc(|fs| {
            // Split over volumes (--volsize 1): a delta of more than 1 MB.
            fs.modify("a.bin", |b| rewrite(b, 500_000, 3 * MB / 2, 31));
            fs.modify("b.bin", |b| b.extend(random_bytes(32, 300_000)));
            fs.write("n.bin", &random_bytes(33, 400_000));
            fs.modify("gone.bin", |b| rewrite(b, 0, 1000, 34));
        }),
        inc(|fs| {
            fs.modify("a.bin", |b| b.truncate(2 * MB));
            fs.modify("b.bin", |b| {
                let end = b.len();
                rewrite(b, end - 5000, 5000, 41)
            });
            fs.modify("n.bin", |b| rewrite(b, 200_000, 3000, 42));
            fs.remove("gone.bin");
        }),
        inc(|fs| {
            // Over what set 2 wrote and what the full left, across both.
            fs.modify("a.bin", |b| rewrite(b, 400_000, 300_000, 51));
            fs.modify("b.bin", |b| {
                b.truncate(100_000);
                rewrite(b, 50_000, 100, 52)
            });
            fs.modify("n.bin", |b| b.truncate(100));
            fs.write("small.txt", b"small 4\n");
            fs.write("gone.bin", &random_bytes(53, 200_000));
        }),
        inc(|fs| {
            // Everything after shifts: copies from new places.
            fs.modify("a.bin", |b| {
                b.splice(0..0, random_bytes(61, 1000));
            });
            fs.modify("n.bin", |b| b.extend(b"tail".repeat(5000)));
            fs.modify("gone.bin", |b| rewrite(b, 100_000, 100, 63));
        }),
    ]
}

fn composed_chains_equal_restore(dup: Duplicity) {
    let label = dup.label();
    let mut lab = Lab::new(dup).backup_opts(&["--volsize", "1"]);
    let steps = partial_rewrites();
    let times: Vec<i64> = steps
        .iter()
        .enumerate()
        .map(|(k, step)| back_up(&mut lab, k, step))
        .collect();
    let end = *times.last().expect("a chain");
    let oracle = lab.restore(end);
    for from in [0, 2] {
        let host = lab.host(&format!("from{from}"));
        host.sync(&lab.repo, &["--time", &times[from].to_string()])
            .assert_ok("behind");
        let ctx = format!("[{label}] from set {from}");
        let r = catch_up(&lab, &host, end, &oracle, &ctx);
        let merged = r
            .merged
            .unwrap_or_else(|| panic!("{ctx}: no merged report"));
        assert_eq!(merged.sets, (times.len() - 1 - from) as u64, "{ctx}");
        // Set 1 only patches: composed, nothing written until the last set.
        if from == 0 {
            let applied = r.sets[0].applied.as_ref().expect("applied");
            assert_eq!(applied["files_patched"], 4, "{ctx}: {applied}");
            assert_eq!(applied["bytes_written"], 0, "{ctx}: {applied}");
            assert!(merged.bytes_saved > 3 * MB as u64, "{ctx}: {merged:?}");
        }
    }
}

/// Versions held in memory stay within a budget (8 MiB): a delta that would pass it is
/// patched into a file, over DEST's copy or over a held version written first; the deltas
/// after it compose over that file.
#[test]
fn a_chain_past_the_memory_budget_is_written_and_patched_further() {
    let Some(dup) = duplicity(Version::V08) else {
        return;
    };
    let mut lab = Lab::new(dup);
    let steps = [
        full(|fs| {
            fs.write("held.bin", &random_bytes(71, 20 * MB));
            fs.write("whole.bin", &random_bytes(72, 20 * MB));
        }),
        inc(|fs| {
            fs.modify("held.bin", |b| rewrite(b, 1000, 100, 81));
            // Too much for the budget from the first delta: patched over DEST's copy.
            fs.modify("whole.bin", |b| rewrite(b, 0, 17 * MB, 82));
        }),
        inc(|fs| {
            // Held, then too much: written, and this delta patched onto it.
            fs.modify("held.bin", |b| rewrite(b, 2 * MB, 17 * MB, 91));
            fs.modify("whole.bin", |b| rewrite(b, 5, 10, 92));
        }),
        inc(|fs| {
            fs.modify("held.bin", |b| rewrite(b, 10, 10, 101));
            fs.modify("whole.bin", |b| rewrite(b, 20 * MB - 10, 10, 102));
        }),
    ];
    let times: Vec<i64> = steps
        .iter()
        .enumerate()
        .map(|(k, step)| back_up(&mut lab, k, step))
        .collect();
    let host = lab.host("h");
    host.sync(&lab.repo, &["--time", &times[0].to_string()])
        .assert_ok("at the full");
    let end = times[3];
    let ctx = "past the budget";
    let r = catch_up(&lab, &host, end, &lab.restore(end), ctx);
    let written = |k: usize| r.sets[k].applied.as_ref().expect("applied")["bytes_written"].clone();
    assert_eq!(written(0), 20 * MB, "{ctx}: whole.bin patched into a file");
    assert_eq!(
        written(1),
        2 * 20 * MB,
        "{ctx}: held.bin written, then patched"
    );
    assert_eq!(r.merged.map(|m| m.sets), Some(3), "{ctx}");
}
