//! Locking, full disks and I/O errors (issue 6, points 2 and 3).
//!
//! * Locking: a sync holding the lock (held open with strace's `delay_exit` on its `flock`,
//!   so the timing is certain) makes a second sync of the same DEST fail with the lock error,
//!   or wait with `--wait`; a lock left by a SIGKILLed sync blocks nobody.
//! * Full disk: DEST and the state directory on a small tmpfs (mounted by the test, as root),
//!   swept over sizes and inode counts so that ENOSPC strikes in every phase of a set; then a
//!   larger tmpfs: the next sync must finish the job.
//! * I/O errors: strace makes one syscall fail with EIO (ENOSPC for writes) at points spread
//!   over a census of the sync (see tests/support/kill.rs).
//!
//! After every failure: exit status 1, one error line naming the cause, no panic; DEST at the
//! previous backup or (when the failure struck after the commit point, where the journal
//! makes the set count as applied) at the new one once the journal is replayed; staging gone.
//! The sets are forged (tests/support/forge.rs), so no upstream duplicity is needed.

mod support;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::forge::{literal_delta, Entry, Forge};
use support::kill::{self, KillPoint};
use support::*;

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

fn sync_args(repo: &Path, dest: &Path, state: &Path, time: i64, extra: &[&str]) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec![
        "sync".into(),
        repo.into(),
        dest.into(),
        "--state-dir".into(),
        state.into(),
        "--time".into(),
        time.to_string().into(),
    ];
    a.extend(extra.iter().map(OsString::from));
    a
}

/// The trees of t0 and t1, from syncs on the normal disk.
fn reference_trees(root: &Path, repo: &Path) -> (Tree, Tree) {
    let (d, s) = (root.join("ref-d"), root.join("ref-s"));
    dupmirror(sync_args(repo, &d, &s, t(0), &[])).assert_ok("reference sync to t0");
    let t0 = Tree::capture(&d);
    dupmirror(sync_args(repo, &d, &s, t(1), &[])).assert_ok("reference sync to t1");
    let t1 = Tree::capture(&d);
    remove_tree(&d);
    remove_tree(&s);
    assert!(t1.get(b"big").is_some() && t0.get(b"big").is_none());
    (t0, t1)
}

/// A refusal: one line mentioning `keywords`, and the documented exit status `code`.
fn fail_line(r: &Run, ctx: &str, keywords: &[&str], code: i32) {
    r.assert_refused(ctx, keywords);
    assert_eq!(
        r.status.code(),
        Some(code),
        "{ctx}: exit status\n{}",
        r.stderr
    );
    let lines = r.stderr.lines().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(lines, 1, "{ctx}: one error line expected:\n{}", r.stderr);
}

// ---------------------------------------------------------------------------------------------
// Locking

/// Starts a sync that takes the lock and then holds it for `hold` (strace delays the return
/// of its first `flock`). Waits until the lock is really held.
fn start_holder(strace: &Path, args: &[OsString], state: &Path, hold: Duration) -> Child {
    let mut cmd = Command::new(strace);
    cmd.arg("-f")
        .arg("-qq")
        .arg("-o")
        .arg("/dev/null")
        .arg("-etrace=flock")
        .arg(format!(
            "-einject=flock:delay_exit={}:when=1",
            hold.as_micros()
        ))
        .arg(dupmirror_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("start strace");
    let lock = state.join("lock");
    let start = Instant::now();
    while !lock_is_held(&lock) {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the first sync never took the lock");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Whether another process holds the flock on `path` (a probe that takes and drops it).
fn lock_is_held(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = fs::File::open(path) else {
        return false;
    };
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
        false
    } else {
        std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
    }
}

#[test]
fn a_second_sync_is_refused_or_waits_while_the_first_holds_the_lock() {
    let Some(strace) = kill::strace() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let repo = forged_repo(tmp.path());
    let (_, t1) = reference_trees(tmp.path(), &repo);
    let (dest, state) = (tmp.path().join("d"), tmp.path().join("s"));
    let args = sync_args(&repo, &dest, &state, t(1), &["--wait"]);
    let hold = Duration::from_secs(6);
    let started = Instant::now();
    let mut holder = start_holder(&strace, &args, &state, hold);

    // Without --wait: refused at once, nothing touched.
    let r = dupmirror(sync_args(&repo, &dest, &state, t(1), &[]));
    fail_line(
        &r,
        "second sync",
        &["another dupmirror sync holds the lock"],
        5,
    );
    assert!(
        started.elapsed() < hold,
        "the refusal should not wait for the lock"
    );

    // With --wait: blocks until the first is done, then finds nothing new.
    let r = dupmirror(sync_args(&repo, &dest, &state, t(1), &["--wait", "--json"]));
    r.assert_ok("second sync with --wait");
    assert!(
        started.elapsed() >= hold,
        "--wait returned after {:?}, before the first sync released the lock",
        started.elapsed()
    );
    let report = json::parse(&r.stdout_text()).expect("--json output");
    assert_eq!(
        report.get("up_to_date"),
        Some(&json::Json::Bool(true)),
        "the waiting sync should find the first one's work done: {}",
        r.stdout_text()
    );
    let status = holder.wait().unwrap();
    assert!(status.success(), "the first sync failed: {status}");
    t1.assert_same(
        &Tree::capture(&dest),
        Compare::default(),
        "after both syncs",
    );
}

#[test]
fn concurrent_waiting_syncs_serialize() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = forged_repo(tmp.path());
    let (_, t1) = reference_trees(tmp.path(), &repo);
    let (dest, state) = (tmp.path().join("d"), tmp.path().join("s"));
    let children: Vec<Child> = (0..4)
        .map(|_| {
            Command::new(dupmirror_bin())
                .args(sync_args(&repo, &dest, &state, t(1), &["--wait", "-q"]))
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
    t1.assert_same(
        &Tree::capture(&dest),
        Compare::default(),
        "after 4 concurrent syncs",
    );
    assert_eq!(kill::state_leftovers(&state), Vec::<String>::new());
}

#[test]
fn a_lock_left_by_a_killed_sync_does_not_block() {
    let Some(strace) = kill::strace() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let repo = forged_repo(tmp.path());
    let (_, t1) = reference_trees(tmp.path(), &repo);
    let (dest, state) = (tmp.path().join("d"), tmp.path().join("s"));
    let args = sync_args(&repo, &dest, &state, t(1), &["--wait"]);
    let mut holder = start_holder(&strace, &args, &state, Duration::from_secs(60));
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
    let lock = state.join("lock");
    let killed_at = Instant::now();
    while lock_is_held(&lock) {
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "the lock outlived the killed sync"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let r = dupmirror(sync_args(&repo, &dest, &state, t(1), &[]));
    r.assert_ok("sync after the lock holder was killed");
    assert!(started.elapsed() < Duration::from_secs(30));
    t1.assert_same(
        &Tree::capture(&dest),
        Compare::default(),
        "after the killed holder",
    );
}

// ---------------------------------------------------------------------------------------------
// Full disks

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs with `options` at `dir`; `None` (with a printed reason) when this
    /// machine cannot, unless `DUPMIRROR_REQUIRE_ORACLE=1`.
    fn mount(dir: &Path, options: &str) -> Option<Tmpfs> {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                dir: dir.to_path_buf(),
            }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                if require_oracle() {
                    panic!("cannot mount a tmpfs ({why}) and DUPMIRROR_REQUIRE_ORACLE=1");
                }
                eprintln!("skipped: cannot mount a tmpfs here ({why}); run as root");
                None
            }
        }
    }

    fn remount(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "remount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

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

fn after_failure(
    ctx: &str,
    state: &Path,
    now: &Option<Tree>,
    before: Option<&Tree>,
    target: &Tree,
) -> Outcome {
    let same = |t: &Tree| {
        now.as_ref()
            .is_some_and(|n| t.diff(n, Compare::default()).is_empty())
    };
    let journal = state.join("journal").exists();
    let unchanged = match before {
        Some(b) => same(b),
        None => now
            .as_ref()
            .is_none_or(|n| n.nodes.len() == 1 && n.nodes[&b".".to_vec()].kind == Kind::Dir),
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
        kill::state_leftovers(state),
        Vec::<String>::new(),
        "{ctx}: a failure before the commit point left staging behind"
    );
    Outcome::Unchanged
}

/// One full-disk attempt: the sync to `target` on a filesystem mounted with `options` fails
/// cleanly or succeeds; then, with room, the next sync finishes.
#[allow(clippy::too_many_arguments)]
fn full_disk_attempt(
    root: &Path,
    repo: &Path,
    options: &str,
    baseline: Option<(i64, &Tree)>,
    target: (i64, &Tree),
    tally: &mut FullDiskTally,
) {
    let ctx = format!("tmpfs {options}, sync to {}", target.0);
    let Some(mnt) = Tmpfs::mount(&root.join("mnt"), options) else {
        return;
    };
    let (dest, state) = (mnt.dir.join("d"), mnt.dir.join("s"));
    if let Some((time, tree)) = baseline {
        let r = dupmirror(sync_args(repo, &dest, &state, time, &["--no-fsync"]));
        if !r.success() {
            return; // too small even for the baseline: not this sweep's point
        }
        tree.assert_same(&Tree::capture(&dest), Compare::default(), &ctx);
    }
    tally.tried += 1;
    let r = dupmirror(sync_args(repo, &dest, &state, target.0, &[]));
    if r.success() {
        tally.succeeded += 1;
        target
            .1
            .assert_same(&Tree::capture(&dest), Compare::default(), &ctx);
    } else {
        fail_line(&r, &ctx, &["no space left on device"], 1);
        let now = Tree::capture_opt(&dest);
        match after_failure(&ctx, &state, &now, baseline.map(|b| b.1), target.1) {
            Outcome::Unchanged => tally.failed_before_commit += 1,
            Outcome::Complete => tally.failed_after_commit += 1,
            Outcome::MidReplay => tally.failed_mid_replay += 1,
        }
    }
    mnt.remount("size=64m,nr_inodes=100000");
    dupmirror(sync_args(repo, &dest, &state, target.0, &[]))
        .assert_ok(&format!("{ctx}: with room"));
    target.1.assert_same(
        &Tree::capture(&dest),
        Compare::default(),
        &format!("{ctx}: with room"),
    );
    assert_eq!(
        kill::state_leftovers(&state),
        Vec::<String>::new(),
        "{ctx}: leftovers"
    );
}

#[test]
fn a_full_disk_fails_cleanly_and_a_later_sync_succeeds() {
    if !is_root() && !require_oracle() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo = forged_repo(tmp.path());
    let (t0, t1) = reference_trees(tmp.path(), &repo);
    let mut tally = FullDiskTally::default();
    // First sync: from 8 KiB up to where it fits.
    for kib in (8..=200).step_by(24) {
        full_disk_attempt(
            tmp.path(),
            &repo,
            &format!("size={kib}k"),
            None,
            (t(0), &t0),
            &mut tally,
        );
    }
    // Incremental: the baseline fits, the new set does not, at every stage.
    for kib in (160..=1200).step_by(80) {
        full_disk_attempt(
            tmp.path(),
            &repo,
            &format!("size={kib}k"),
            Some((t(0), &t0)),
            (t(1), &t1),
            &mut tally,
        );
    }
    // Out of inodes instead of blocks.
    for inodes in (14..=60).step_by(4) {
        full_disk_attempt(
            tmp.path(),
            &repo,
            &format!("size=16m,nr_inodes={inodes}"),
            Some((t(0), &t0)),
            (t(1), &t1),
            &mut tally,
        );
    }
    eprintln!("faults_fs: full disk: {tally:?}");
    if is_root() {
        assert!(
            tally.failed_before_commit > 3,
            "the sweep should hit ENOSPC: {tally:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// I/O errors

#[test]
fn an_io_error_anywhere_fails_cleanly() {
    let Some(strace) = kill::strace() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let repo = forged_repo(tmp.path());
    let (t0, t1) = reference_trees(tmp.path(), &repo);
    let host = Host {
        dir: tmp.path().join("h"),
        dest: tmp.path().join("h/d"),
        state: tmp.path().join("h/s"),
    };
    fs::create_dir(&host.dir).unwrap();
    dupmirror(sync_args(&repo, &host.dest, &host.state, t(0), &[])).assert_ok("baseline");
    let template = tmp.path().join("tmpl");
    kill::copy_tree(&host.dir, &template);
    let args = sync_args(&repo, &host.dest, &host.state, t(1), &[]);
    let (census, all) = kill::census(&strace, &args, &host, &repo);
    census.assert_ok("census");
    // Errors only where dupmirror checks the result: not in the dynamic loader's opens.
    let all: Vec<KillPoint> = all
        .into_iter()
        .filter(|p| p.phase != "process setup and output")
        .collect();
    let points = kill::spread(&all, kill::points_wanted(12));
    let (mut before_commit, mut after_commit, mut harmless) = (0, 0, 0);
    let mut mid_replay = Vec::new();
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
        kill::copy_tree(&template, &host.dir);
        let r = kill::fail_at(&strace, &args, p, errno);
        if r.success() {
            // e.g. a failed fsync of a file that is rewritten anyway; the result must hold.
            harmless += 1;
            t1.assert_same(&host.tree(), Compare::default(), &ctx);
            continue;
        }
        let words = ["input/output error", "no space left on device"];
        fail_line(&r, &ctx, &words, 1);
        match after_failure(&ctx, &host.state, &host.tree_opt(), Some(&t0), &t1) {
            Outcome::Unchanged => before_commit += 1,
            Outcome::Complete => after_commit += 1,
            Outcome::MidReplay => {
                assert!(r.stderr.contains("journal"), "{ctx}: {}", r.stderr);
                mid_replay.push(ctx.clone())
            }
        }
        dupmirror(args.clone()).assert_ok(&format!("{ctx}: next sync"));
        t1.assert_same(
            &host.tree(),
            Compare::default(),
            &format!("{ctx}: next sync"),
        );
        assert_eq!(
            kill::state_leftovers(&host.state),
            Vec::<String>::new(),
            "{ctx}"
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
