//! Locking, full disks and I/O errors (issue 6, points 2 and 3).
//!
//! * Locking: a sync holding the lock (held open with strace's `delay_exit` on its `flock`,
//!   so the timing is certain) makes a second sync of the same DEST fail with the lock error,
//!   or wait with `--wait`; a lock left by a SIGKILLed sync blocks nobody.
//! * Full disk: DEST and the state directory on a small tmpfs (mounted by the test, as root),
//!   swept over sizes and inode counts so that ENOSPC strikes in every phase of a set; then a
//!   larger tmpfs: the next sync must finish the job.
//! * I/O errors: strace makes one syscall fail with EIO (ENOSPC for writes) at points spread
//!   over a census of the sync (see tests/it/support/strace.rs).
//!
//! After every failure: exit status 1, one error line naming the cause, no panic; DEST at the
//! previous backup or (when the failure struck after the commit point, where the journal
//! makes the set count as applied) at the new one once the journal is replayed; staging gone.
//! The sets are forged (tests/it/support/fixture), so no upstream duplicity is needed.

use crate::support::fixture::{literal_delta, Entry, Forge};
use crate::support::lab::{copy_tree, is_empty_dir, restore_host};
use crate::support::process::dupmirror_command;
use crate::support::report::{self, SyncReport};
use crate::support::strace::{self, KillPoint};
use crate::support::tmpfs::Tmpfs;
use crate::support::*;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A repository with a full set (t0) and an incremental (t1) that needs far more space.
fn forged_repo(root: &Path) -> PathBuf {
    let forge = Forge::new(&root.join("repo"));
    let mut full = vec![
        Entry::dir("."),
        Entry::dir("bin"),
        Entry::file("bin/blob", &random_bytes(7, 100_000)),
        Entry::dir("docs"),
    ];
    for n in ["a", "b", "c", "d", "e"] {
        full.push(Entry::file(
            format!("docs/{n}"),
            format!("doc {n}\n").as_bytes(),
        ));
    }
    full.extend([
        Entry::dir("sub"),
        Entry::dir("sub/deep"),
        Entry::file("sub/deep/f", b"deep\n"),
    ]);
    forge.full(t(0), full);
    let mut inc = vec![
        Entry::dir("."),
        Entry::file("big", &random_bytes(8, 600_000)),
        Entry::diff("docs/a", &literal_delta(b"doc a, patched\n")),
        Entry::deleted("docs/b"),
        Entry::dir("new"),
    ];
    for i in 0..20 {
        inc.push(Entry::file(format!("new/f{i:02}"), &random_bytes(i, 5000)));
    }
    inc.push(Entry::dir("new/sub"));
    inc.push(Entry::file("new/sub/g", b"g\n"));
    inc.push(Entry::dir("sub").mode(0o700));
    forge.inc(t(0), t(1), inc);
    forge.repo
}

/// A forged repository, the trees of its two backups (from syncs on the normal disk), and a
/// host beside them.
struct Bed {
    _tmp: TempDir,
    root: PathBuf,
    repo: PathBuf,
    t0: Tree,
    t1: Tree,
    host: Host,
}

impl Bed {
    fn new() -> Bed {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let repo = forged_repo(&root);
        let reference = Host::at(root.join("ref"));
        dupmirror(sync_args(&reference, &repo, t(0), &[])).assert_ok("reference sync to t0");
        let t0 = reference.tree();
        dupmirror(sync_args(&reference, &repo, t(1), &[])).assert_ok("reference sync to t1");
        let t1 = reference.tree();
        remove_tree(&reference.dir);
        assert!(t1.get(b"big").is_some() && t0.get(b"big").is_none());
        Bed {
            host: Host::at(root.join("h")),
            _tmp: tmp,
            root,
            repo,
            t0,
            t1,
        }
    }

    /// The arguments of a sync of `host` to `time`.
    fn sync_args(&self, host: &Host, time: i64, extra: &[&str]) -> Vec<OsString> {
        sync_args(host, &self.repo, time, extra)
    }
}

/// `sync REPO DEST --state-dir S --time TIME EXTRA...` for `host`.
fn sync_args(host: &Host, repo: &Path, time: i64, extra: &[&str]) -> Vec<OsString> {
    let time = time.to_string();
    let mut a = vec!["--time", time.as_str()];
    a.extend_from_slice(extra);
    host.args("sync", repo, &a)
}

// ---------------------------------------------------------------------------------------------
// Locking

/// A bed whose host a sync (to t1, `--wait`) holds the lock of for `hold`, the holder, and
/// when it started; `None` without strace.
fn locked_bed(hold: Duration) -> Option<(Bed, Child, Instant)> {
    let strace = strace::find()?;
    let bed = Bed::new();
    let args = bed.sync_args(&bed.host, t(1), &["--wait"]);
    let started = Instant::now();
    let holder = strace::start_holder(&strace, &args, &bed.host.state.join("lock"), 1, hold);
    Some((bed, holder, started))
}

#[test]
fn a_second_sync_is_refused_or_waits_while_the_first_holds_the_lock() {
    let hold = Duration::from_secs(6);
    let Some((bed, mut holder, started)) = locked_bed(hold) else {
        return;
    };
    let host = &bed.host;

    // Without --wait: refused at once, nothing touched.
    dupmirror(bed.sync_args(host, t(1), &[])).assert_one_error_line(
        "second sync",
        &["another dupmirror sync holds the lock"],
        &[5],
    );
    assert!(
        started.elapsed() < hold,
        "the refusal should not wait for the lock"
    );

    // With --wait: blocks until the first is done, then finds nothing new.
    let r = dupmirror(bed.sync_args(host, t(1), &["--wait", "--json"]));
    r.assert_ok("second sync with --wait");
    assert!(
        started.elapsed() >= hold,
        "--wait returned after {:?}, before the first sync released the lock",
        started.elapsed()
    );
    let report: SyncReport = report::of(&r);
    assert!(
        report.up_to_date,
        "the waiting sync should find the first one's work done: {}",
        r.stdout_text()
    );
    let status = holder.wait().unwrap();
    assert!(status.success(), "the first sync failed: {status}");
    bed.t1
        .assert_same(&host.tree(), Compare::default(), "after both syncs");
}

#[test]
fn concurrent_waiting_syncs_serialize() {
    let bed = Bed::new();
    let host = &bed.host;
    let children: Vec<Child> = (0..4)
        .map(|_| {
            dupmirror_command(bed.sync_args(host, t(1), &["--wait", "-q"]), &[])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a concurrent sync failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    bed.t1
        .assert_same(&host.tree(), Compare::default(), "after 4 concurrent syncs");
    assert_eq!(host.state_leftovers(), Vec::<String>::new());
}

#[test]
fn a_lock_left_by_a_killed_sync_does_not_block() {
    let Some((bed, mut holder, _)) = locked_bed(Duration::from_secs(60)) else {
        return;
    };
    let host = &bed.host;
    // SIGKILL dupmirror itself (strace's child), as the OOM killer would.
    let children = fs::read_to_string(format!(
        "/proc/{}/task/{}/children",
        holder.id(),
        holder.id()
    ))
    .unwrap();
    let pid: i32 = children
        .split_whitespace()
        .next()
        .expect("dupmirror runs under strace")
        .parse()
        .unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    // strace itself sleeps out its delay timer: stop it too.
    let _ = holder.kill();
    let _ = holder.wait();
    // The kernel drops the lock when the killed process is gone (a traced process finishes
    // dying a moment after strace does): that must happen promptly, not never.
    let lock = host.state.join("lock");
    let killed_at = Instant::now();
    while strace::lock_is_held(&lock) {
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "the lock outlived the killed sync"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let r = dupmirror(bed.sync_args(host, t(1), &[]));
    r.assert_ok("sync after the lock holder was killed");
    assert!(started.elapsed() < Duration::from_secs(30));
    bed.t1
        .assert_same(&host.tree(), Compare::default(), "after the killed holder");
}

// ---------------------------------------------------------------------------------------------
// Full disks

#[derive(Default, Debug)]
struct FullDiskTally {
    tried: usize,
    succeeded: usize,
    failed_before_commit: usize,
    failed_after_commit: usize,
    failed_mid_replay: usize,
}

/// Where a failed sync left DEST.
enum Outcome {
    /// Exactly the previous backup, no journal, no staging: the failure came before the
    /// commit point.
    Unchanged,
    /// Exactly the new backup (the failure came after the journal replay, e.g. while saving
    /// the state); the journal, if left, replays as a no-op.
    Complete,
    /// The failure stopped the replay of a committed journal: DEST is part-way until the
    /// next run replays the rest (checked by the caller).
    MidReplay,
}

fn after_failure(ctx: &str, host: &Host, before: Option<&Tree>, target: &Tree) -> Outcome {
    let now = host.tree_opt();
    let same = |t: &Tree| {
        now.as_ref()
            .is_some_and(|n| t.diff(n, Compare::default()).is_empty())
    };
    let journal = host.state.join("journal").exists();
    let unchanged = match before {
        Some(b) => same(b),
        None => now.as_ref().is_none_or(is_empty_dir),
    };
    if same(target) {
        return Outcome::Complete;
    }
    if journal {
        return Outcome::MidReplay;
    }
    assert!(
        unchanged,
        "{ctx}: a failure before the commit point changed DEST"
    );
    assert_eq!(
        host.state_leftovers(),
        Vec::<String>::new(),
        "{ctx}: a failure before the commit point left staging behind"
    );
    Outcome::Unchanged
}

/// One sweep of full-disk attempts: for each tmpfs mount option set, a sync from a baseline
/// (time and tree; None: a first sync) to a target.
type Sweep<'a> = (Vec<String>, Option<(i64, &'a Tree)>, (i64, &'a Tree));

/// One full-disk attempt: the sync to `target` on a filesystem mounted with `options` fails
/// cleanly or succeeds; then, with room, the next sync finishes.
fn full_disk_attempt(bed: &Bed, options: &str, sweep: &Sweep, tally: &mut FullDiskTally) {
    let (_, baseline, (time, target)) = sweep;
    let time = *time;
    let ctx = format!("tmpfs {options}, sync to {time}");
    let Some(mnt) = Tmpfs::mount(&bed.root.join("mnt"), options) else {
        return;
    };
    let host = Host::at(mnt.dir.clone());
    if let Some((time, tree)) = baseline {
        let r = dupmirror(bed.sync_args(&host, *time, &["--no-fsync"]));
        if !r.success() {
            return; // too small even for the baseline: not this sweep's point
        }
        tree.assert_same(&host.tree(), Compare::default(), &ctx);
    }
    tally.tried += 1;
    let r = dupmirror(bed.sync_args(&host, time, &[]));
    if r.success() {
        tally.succeeded += 1;
        target.assert_same(&host.tree(), Compare::default(), &ctx);
    } else {
        r.assert_one_error_line(&ctx, &["no space left on device"], &[1]);
        match after_failure(&ctx, &host, baseline.map(|b| b.1), target) {
            Outcome::Unchanged => tally.failed_before_commit += 1,
            Outcome::Complete => tally.failed_after_commit += 1,
            Outcome::MidReplay => tally.failed_mid_replay += 1,
        }
    }
    mnt.remount("size=64m,nr_inodes=100000");
    let time = time.to_string();
    host.assert_sync_reaches(
        &bed.repo,
        &["--time", &time],
        target,
        &format!("{ctx}: with room"),
    );
}

#[test]
fn a_full_disk_fails_cleanly_and_a_later_sync_succeeds() {
    if !root_for("mounting a tmpfs") {
        return;
    }
    let bed = Bed::new();
    // Mount options over a range of sizes (KiB) or of inode counts.
    let sizes = |kib: std::iter::StepBy<std::ops::RangeInclusive<u32>>| {
        kib.map(|k| format!("size={k}k")).collect()
    };
    let inodes: Vec<String> = (14..=60)
        .step_by(4)
        .map(|n| format!("size=16m,nr_inodes={n}"))
        .collect();
    let (at_t0, at_t1) = ((t(0), &bed.t0), (t(1), &bed.t1));
    let sweeps: [Sweep; 3] = [
        // First sync: from 8 KiB up to where it fits.
        (sizes((8..=200).step_by(24)), None, at_t0),
        // Incremental: the baseline fits, the new set does not, at every stage.
        (sizes((160..=1200).step_by(80)), Some(at_t0), at_t1),
        // Out of inodes instead of blocks.
        (inodes, Some(at_t0), at_t1),
    ];
    let mut tally = FullDiskTally::default();
    for sweep in &sweeps {
        for options in &sweep.0 {
            full_disk_attempt(&bed, options, sweep, &mut tally);
        }
    }
    eprintln!("faults_fs: full disk: {tally:?}");
    assert!(
        tally.failed_before_commit > 3,
        "the sweep should hit ENOSPC: {tally:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// I/O errors

#[test]
fn an_io_error_anywhere_fails_cleanly() {
    let Some(strace) = strace::find() else {
        return;
    };
    let bed = Bed::new();
    let host = &bed.host;
    dupmirror(bed.sync_args(host, t(0), &[])).assert_ok("baseline");
    let template = bed.root.join("tmpl");
    copy_tree(&host.dir, &template);
    let args = bed.sync_args(host, t(1), &[]);
    let (census, all) = strace::census(&strace, &args, host, &bed.repo);
    census.assert_ok("census");
    // Errors only where dupmirror checks the result: not in the dynamic loader's opens.
    let all: Vec<KillPoint> = all
        .into_iter()
        .filter(|p| p.phase != "process setup and output")
        .collect();
    let points = strace::spread(&all, strace::points_wanted(12));
    let (mut before_commit, mut after_commit, mut harmless) = (0, 0, 0);
    let mut mid_replay = Vec::new();
    let t1_arg = t(1).to_string();
    for p in &points {
        let errno = if p.syscall.starts_with("write") {
            "ENOSPC"
        } else {
            "EIO"
        };
        let ctx = format!(
            "{errno} at {} #{} ({}): {}",
            p.syscall, p.nth, p.phase, p.line
        );
        restore_host(&template, host);
        let r = strace::fail_at(&strace, &args, p, errno);
        if r.success() {
            // e.g. a failed fsync of a file that is rewritten anyway; the result must hold.
            harmless += 1;
            bed.t1.assert_same(&host.tree(), Compare::default(), &ctx);
            continue;
        }
        let words = ["input/output error", "no space left on device"];
        r.assert_one_error_line(&ctx, &words, &[1]);
        match after_failure(&ctx, host, Some(&bed.t0), &bed.t1) {
            Outcome::Unchanged => before_commit += 1,
            Outcome::Complete => after_commit += 1,
            Outcome::MidReplay => {
                assert!(r.stderr.contains("journal"), "{ctx}: {}", r.stderr);
                mid_replay.push(ctx.clone())
            }
        }
        host.assert_sync_reaches(
            &bed.repo,
            &["--time", &t1_arg],
            &bed.t1,
            &format!("{ctx}: next sync"),
        );
    }
    eprintln!(
        "faults_fs: I/O errors: {} points, {before_commit} failed before the commit point \
         (DEST unchanged), {after_commit} after the replay (DEST complete), {} in the middle of \
         the replay (completed by the next run: {mid_replay:?}), {harmless} without effect",
        points.len(),
        mid_replay.len()
    );
}
