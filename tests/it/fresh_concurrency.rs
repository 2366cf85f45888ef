//! Issue 15 item 5: first syncs (the fresh build) running at the same time on one tmpfs.
//!
//! Once a release bootstrap into tmpfs failed with `ENOENT` creating a staged entry under a
//! folder it had just made. The cause: with the state folder on another file system than
//! DEST, staging lives beside DEST (`.<name>.dupmirror-staging`), and while DEST does not
//! exist yet no lock covered it, so a second first sync of the same DEST (another state
//! folder) removed the first one's half-built tree as "leftover staging". The first test
//! forces that interleaving (the first sync is frozen with SIGSTOP while its tree is being
//! built); the stress test runs many first syncs at once on one tmpfs, under a concurrent
//! `rm -rf` of another tree, with the state on the same tmpfs and on another file system.
//! `fresh_concurrency_stress_long` is the long form (ignored; see CONTRIBUTING.md).

use crate::support::process::{collect_output, dupmirror_command, run_tool};
use crate::support::tmpfs::Tmpfs;
use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A tree of many small folders and files (and a few symlinks and empty files), backed up
/// by upstream 0.8; returns the lab and the oracle.
fn many_folders(dirs: usize, files: usize) -> Option<(Lab, Tree)> {
    let mut lab = Lab::new(duplicity(Version::V08)?);
    for d in 0..dirs {
        for f in 0..files {
            let body = format!("folder {d} file {f}\n").repeat(1 + (d * 7 + f) % 40);
            lab.fs
                .write(format!("d{:03}/s{}/f{f}.txt", d, d % 3), body.as_bytes());
        }
        lab.fs
            .symlink(format!("d{d:03}/link"), format!("s{}", d % 3));
        lab.fs.write(format!("d{d:03}/empty"), b"");
    }
    lab.full(t(0));
    let oracle = lab.restore(t(0));
    Some((lab, oracle))
}

/// Starts `dupmirror sync` of the lab's repository into `dest` with state folder `state`.
fn start_sync(lab: &Lab, dest: &Path, state: &Path) -> Child {
    let mut cmd: Command = dupmirror_command(
        [
            os("sync"),
            os("--no-fsync"),
            os(&lab.repo),
            os(dest),
            os("--state-dir"),
            os(state),
        ],
        &[],
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start dupmirror")
}

fn finish(mut child: Child, what: &str) -> Run {
    let output = collect_output(&mut child);
    let status = child.wait().expect("wait for dupmirror");
    let (stdout, stderr) = output();
    Run {
        cmdline: what.to_string(),
        status,
        stdout,
        stderr,
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

/// Whether `dir` holds anything (false when it does not exist).
fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

#[test]
fn a_second_first_sync_never_clears_a_staged_tree_in_progress() {
    if !root_for("mounting a tmpfs") {
        return;
    }
    let Some((lab, oracle)) = many_folders(150, 8) else {
        return;
    };
    // DEST on a tmpfs, the state folders on the lab's disk: staging goes beside DEST.
    let Some(mnt) = Tmpfs::mount(&lab.root.join("mnt"), "size=256m") else {
        return;
    };
    let dest = mnt.dir.join("dest");
    let staged = mnt.dir.join(".dest.dupmirror-staging/tree");
    let first = start_sync(&lab, &dest, &lab.root.join("state-a"));
    let start = Instant::now();
    while !has_entries(&staged) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the first sync never started building its tree"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    signal(&first, libc::SIGSTOP);
    let frozen_with_staging = has_entries(&staged);
    let second = finish(
        start_sync(&lab, &dest, &lab.root.join("state-b")),
        "second sync",
    );
    signal(&first, libc::SIGCONT);
    let first = finish(first, "first sync");
    assert!(frozen_with_staging, "the first sync was frozen too late");

    first.assert_ok("the first sync, frozen while building its tree");
    second.assert_refused("the second sync of the same DEST", &["lock"]);
    oracle.assert_same(&Tree::capture(&dest), Compare::default(), "DEST after both");
    assert!(
        !mnt.dir.join(".dest.dupmirror-staging").exists(),
        "staging left behind"
    );
}

/// `rounds` rounds of: four first syncs into their own DESTs on one tmpfs (two with the
/// state there too, two with it on disk, staging beside DEST), two first syncs of one more
/// DEST with different state folders, while another tree on the tmpfs is copied and
/// removed. Every sync of its own DEST must equal the oracle; of the two sharing a DEST,
/// exactly one succeeds and the other is refused with one line (locked, or DEST there).
fn stress(rounds: usize) {
    if !root_for("mounting a tmpfs") {
        return;
    }
    let Some((lab, oracle)) = many_folders(60, 6) else {
        return;
    };
    let Some(mnt) = Tmpfs::mount(&lab.root.join("mnt"), "size=512m") else {
        return;
    };
    let on_disk = lab.root.join("states");
    let (mut own, mut shared_refused) = (0, 0);
    for round in 0..rounds {
        let tag = |what: &str| format!("round {round}: {what}");
        let here = mnt.dir.join(format!("r{round}"));
        std::fs::create_dir_all(&here).unwrap();
        let junk = here.join("junk");
        let churn = {
            let (src, junk) = (lab.src.clone(), junk.clone());
            std::thread::spawn(move || {
                for _ in 0..3 {
                    run_tool("cp", [os("-a"), os(&src), os(&junk)]);
                    remove_tree(&junk);
                }
            })
        };
        let mut runs: Vec<(PathBuf, Child)> = Vec::new();
        for i in 0..4 {
            let dest = here.join(format!("d{i}"));
            let state = if i % 2 == 0 {
                here.join(format!("s{i}"))
            } else {
                on_disk.join(format!("r{round}-s{i}"))
            };
            runs.push((dest.clone(), start_sync(&lab, &dest, &state)));
        }
        let shared = here.join("shared");
        let pair = [
            start_sync(&lab, &shared, &on_disk.join(format!("r{round}-a"))),
            start_sync(&lab, &shared, &on_disk.join(format!("r{round}-b"))),
        ];
        for (dest, child) in runs {
            let ctx = tag(&format!("{}", dest.display()));
            finish(child, &ctx).assert_ok(&ctx);
            oracle.assert_same(&Tree::capture(&dest), Compare::default(), &ctx);
            own += 1;
        }
        let [a, b] = pair.map(|c| finish(c, &tag("a sync of the shared DEST")));
        let ctx = tag("two first syncs of one DEST");
        assert!(
            a.success() != b.success(),
            "{ctx}: exactly one must succeed; stderr: {:?} / {:?}",
            a.stderr,
            b.stderr
        );
        let refused = if a.success() { b } else { a };
        // Locked out by the other's staging, or too late: DEST is there already.
        refused.assert_refused(&ctx, &["lock", "not empty", "appeared"]);
        oracle.assert_same(&Tree::capture(&shared), Compare::default(), &ctx);
        shared_refused += 1;
        churn.join().unwrap();
        remove_tree(&here);
    }
    eprintln!(
        "fresh_concurrency: {rounds} rounds, {own} first syncs of their own DEST all equal \
         to the oracle, {shared_refused} pairs on one DEST with one refused cleanly"
    );
}

#[test]
fn fresh_concurrency_stress() {
    stress(3);
}

/// The long form: `DUPMIRROR_STRESS_ROUNDS` rounds (default 50).
#[test]
#[ignore]
fn fresh_concurrency_stress_long() {
    let rounds = std::env::var("DUPMIRROR_STRESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    stress(rounds);
}
