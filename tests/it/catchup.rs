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

use crate::support::report::{self, SyncReport};
use crate::support::scenario::{back_up, full, inc, Step};
use crate::support::*;

both_versions!(merged_catch_up_equals_restore);

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
