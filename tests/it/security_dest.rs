//! Issue 10, the DEST side: a hostile repository, a planted state or a local user racing a
//! sync must never reach outside DEST, and DEST must never end up other than a backup.
//!
//! One test per finding (1, 2, 6, 7, 8, 10, 12, 13, 14), each failing on the code before the
//! directory handles and passing after. Refusals keep the contract of tests/it/support/bed.rs:
//! exit status 1 with one error line, DEST and the state unchanged, a canary folder outside
//! DEST untouched. The race (finding 2) and the crash (finding 12) are set up with strace,
//! as the reliability suite does (tests/it/support/strace.rs): a `chmod` held for seconds while
//! the test swaps a directory for a symlink, and a SIGKILL just after the commit point.

use crate::support::bed::{full_case, inc_case, Bed};
use crate::support::fixture::{literal_delta, Entry};
use crate::support::lab::{copy_tree, restore_host};
use crate::support::process::{dupmirror_bin, run_command};
use crate::support::strace;
use crate::support::tmpfs::Tmpfs;
use crate::support::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every file of a state folder and its bytes (to show a refusal left it alone).
fn state_files(state: &Path) -> BTreeMap<String, Vec<u8>> {
    match fs::read_dir(state) {
        Ok(rd) => rd
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    read(&p),
                )
            })
            .collect(),
        Err(_) => BTreeMap::new(),
    }
}

/// A host beside `bed`'s: DEST `dest`, state folder `state`.
fn host_of(bed: &Bed, dest: &Path, state: &Path) -> Host {
    Host {
        dir: bed.root.clone(),
        dest: dest.to_path_buf(),
        state: state.to_path_buf(),
    }
}

/// Refusal where the bed's strays check does not apply (the test put names beside DEST):
/// exit `status` with one error line, DEST, the state folder and the canary folder
/// unchanged.
fn expect_refusal(bed: &Bed, ctx: &str, keywords: &[&str], status: i32, run: impl FnOnce() -> Run) {
    let dest = Tree::capture_opt(&bed.host.dest);
    let state = state_files(&bed.host.state);
    let outside = bed.outside_tree();
    run().assert_one_error_line(ctx, keywords, &[status]);
    assert_dest_unchanged(&dest, &Tree::capture_opt(&bed.host.dest), ctx);
    assert_eq!(
        state_files(&bed.host.state),
        state,
        "{ctx}: the state folder changed"
    );
    outside.assert_same(&bed.outside_tree(), Compare::default(), ctx);
}

/// Writes a committed journal into `bed`'s state folder as dupmirror would, for `dest`'s
/// recorded state, naming `staging`, with these operation lines.
fn plant_journal(bed: &Bed, staging: &Path, ops: &[&str]) {
    let state = fs::read_to_string(bed.host.state.join("state.json")).unwrap();
    let mut journal = format!(
        "dupmirror journal 1\nstate {}\nstaging {}\n",
        state.replace('\n', " "),
        staging.display()
    );
    for op in ops {
        journal.push_str(op);
        journal.push('\n');
    }
    journal.push_str("commit\n");
    fs::write(bed.host.state.join("journal"), journal).unwrap();
}

fn default_staging(bed: &Bed) -> PathBuf {
    bed.host.state.join("staging")
}

/// Runs a sync of `bed` under `strace -y` tracing `calls`, which must succeed; returns
/// strace's log. Without `no_fsync`, the sync syncs as it does by default.
fn traced_sync(strace: &Path, bed: &Bed, calls: &str, no_fsync: bool) -> String {
    let log = bed.root.join("strace.log");
    let args = bed
        .sync_args()
        .into_iter()
        .filter(|a| no_fsync || a != "--no-fsync");
    let mut traced = Command::new(strace);
    traced
        .args(["-f", "-qq", "-y", "-o"])
        .arg(&log)
        .arg(format!("-etrace={calls}"))
        .arg(dupmirror_bin())
        .args(args);
    run_command(traced).assert_ok("traced sync");
    let text = fs::read_to_string(&log).unwrap();
    fs::remove_file(&log).unwrap();
    text
}

/// A synced baseline and an incremental that adds `a/new`.
fn bed_with_new_file() -> Bed {
    Bed::with_inc(vec![Entry::file("a/new", b"new\n")])
}

// ---------------------------------------------------------------------------------------------
// Finding 1: DEST itself must never become a symlink (or anything but a folder)

#[test]
fn a_root_record_that_is_not_a_folder_is_refused() {
    let words = &["root", "folder"];
    let outside = "../outside"; // the canary folder, seen from DEST
    inc_case(
        "incremental whose root is a symlink out of DEST",
        vec![Entry::symlink(".", outside)],
        words,
    );
    inc_case(
        "incremental whose root is a regular file",
        vec![Entry::file(".", b"x")],
        words,
    );
    inc_case(
        "incremental patching the root",
        vec![Entry::diff(".", &literal_delta(b"x"))],
        words,
    );
    let bed = Bed::new();
    bed.forge.full(
        t(0),
        vec![Entry::symlink(".", outside), Entry::file("x", b"x")],
    );
    bed.expect_refused("full set whose root is a symlink", words);
}

// ---------------------------------------------------------------------------------------------
// Finding 2: a directory swapped for a symlink at the moment of the operation

/// A local user who owns `u/a` inside DEST moves it away and puts a symlink to the canary
/// folder in its place while the sync's `chmod` of `u/a/sub` is held back (strace delays the
/// call by seconds, widening the window the swap needs to a certainty). By path, the chmod
/// would land on the canary's `sub`; through handles it lands on the moved directory, or on
/// nothing.
#[test]
fn a_directory_swapped_for_a_symlink_mid_operation_leads_nowhere() {
    let Some(strace) = strace::find() else {
        return;
    };
    let bed = Bed::new();
    fs::set_permissions(bed.outside.join("sub"), fs::Permissions::from_mode(0o700)).unwrap();
    bed.forge.full(
        t(0),
        vec![
            Entry::dir("."),
            Entry::dir("u"),
            Entry::dir("u/a"),
            Entry::dir("u/a/sub"),
            Entry::file("u/a/sub/f", b"f\n"),
        ],
    );
    bed.sync().assert_ok("baseline");
    bed.forge
        .inc(t(0), t(1), vec![Entry::dir("u/a/sub").mode(0o777)]);
    let outside = bed.outside_tree();
    let child = strace::injected(
        &strace,
        &bed.sync_args(),
        "chmod,fchmodat",
        "delay_enter=4000000",
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("strace");
    // The set is committed, and its journal is being carried out: the chmod is held.
    let started = Instant::now();
    while !bed.host.state.join("journal").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the sync never reached its commit point"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(500));
    let a = bed.host.dest.join("u/a");
    fs::rename(&a, bed.host.dest.join("u/a.moved")).unwrap();
    symlink(&bed.outside, &a).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.signal().is_none(),
        "killed by a signal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    outside.assert_same(
        &bed.outside_tree(),
        Compare::default(),
        "a chmod raced by a symlink swap",
    );
    let mode = fs::symlink_metadata(bed.outside.join("sub"))
        .unwrap()
        .mode();
    assert_eq!(mode & 0o7777, 0o700, "the canary's folder was chmodded");
}

// ---------------------------------------------------------------------------------------------
// Finding 6: another DEST's state folder

/// A state folder given for the wrong DEST (two hosts' trees on one machine, a copy-paste
/// in a unit file) is refused before its pending journal runs, and `verify` checks it too.
#[test]
fn another_dests_state_folder_is_refused_before_its_journal_runs() {
    let bed = Bed::new();
    bed.baseline();
    let (d2, s2) = (bed.root.join("d2"), bed.root.join("s2"));
    host_of(&bed, &d2, &s2)
        .sync(&bed.forge.repo, &["--no-fsync"])
        .assert_ok("the second DEST");
    let d2_before = Tree::capture(&d2);
    plant_journal(&bed, &default_staging(&bed), &["R a/f"]);
    expect_refusal(
        &bed,
        "sync of d2 with d's state",
        &["belongs to DEST"],
        1,
        || host_of(&bed, &d2, &bed.host.state).sync(&bed.forge.repo, &["--no-fsync"]),
    );
    d2_before.assert_same(
        &Tree::capture(&d2),
        Compare::default(),
        "d2 after the refusal",
    );
    fs::remove_file(bed.host.state.join("journal")).unwrap();
    expect_refusal(
        &bed,
        "verify of d2 with d's state",
        &["belongs to DEST"],
        1,
        || host_of(&bed, &d2, &bed.host.state).run("verify", &bed.forge.repo, &[], &[]),
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 7: journal lines and the state folder are input too

#[test]
fn planted_journals_are_refused_before_anything_runs() {
    let bed = Bed::new();
    bed.baseline();
    plant_journal(&bed, &default_staging(&bed), &["R ../outside/canary"]);
    expect_refusal(
        &bed,
        "journal removing ../outside/canary",
        &["unsafe", "journal"],
        1,
        || bed.sync(),
    );
    // Staging taken from the journal would move the canary folder's objects into DEST.
    fs::create_dir(bed.outside.join("obj")).unwrap();
    fs::write(bed.outside.join("obj/1"), b"outside\n").unwrap();
    plant_journal(&bed, &bed.outside, &["P 1 stolen"]);
    expect_refusal(
        &bed,
        "journal naming another staging folder",
        &["staging"],
        1,
        || bed.sync(),
    );
}

#[test]
fn a_state_folder_that_is_not_the_users_own_is_refused() {
    let bed = Bed::new();
    bed.baseline();
    let mode = |m| fs::set_permissions(&bed.host.state, fs::Permissions::from_mode(m)).unwrap();
    mode(0o777);
    expect_refusal(
        &bed,
        "state folder writable by all",
        &["written by other users"],
        1,
        || bed.sync(),
    );
    mode(0o700);
    if is_root() {
        std::os::unix::fs::chown(&bed.host.state, Some(65534), None).unwrap();
        expect_refusal(
            &bed,
            "state folder of another user",
            &["belongs to uid 65534"],
            1,
            || bed.sync(),
        );
        std::os::unix::fs::chown(&bed.host.state, Some(0), None).unwrap();
    }
    let real = bed.root.join("s-real");
    fs::rename(&bed.host.state, &real).unwrap();
    symlink(&real, &bed.host.state).unwrap();
    let before = state_files(&real);
    let dest = Tree::capture(&bed.host.dest);
    bed.sync()
        .assert_one_error_line("symlinked state folder", &["symlink"], &[1]);
    assert_eq!(state_files(&real), before);
    dest.assert_same(&Tree::capture(&bed.host.dest), Compare::default(), "DEST");
}

// ---------------------------------------------------------------------------------------------
// Finding 8: a state folder on another file system

/// With the state on a tmpfs, the journal is written and committed inside the state folder
/// and staging moves beside DEST (on DEST's file system): first sync and incremental work.
#[test]
fn a_state_folder_on_another_file_system_works() {
    let mut bed = Bed::new();
    let Some(mnt) = Tmpfs::mount(&bed.root.join("statefs"), "size=16m") else {
        return;
    };
    bed.host.state = mnt.dir.join("s");
    bed.forge.full(t(0), bed.baseline_entries());
    bed.sync().assert_ok("first sync with the state on a tmpfs");
    bed.forge.inc(
        t(0),
        t(1),
        vec![Entry::deleted("a/g"), Entry::file("a/new", b"new\n")],
    );
    bed.sync()
        .assert_ok("incremental with the state on a tmpfs");
    let reference = bed.root.join("ref");
    host_of(&bed, &reference, &bed.root.join("ref-s"))
        .sync(&bed.forge.repo, &["--no-fsync"])
        .assert_ok("reference");
    Tree::capture(&reference).assert_same(
        &Tree::capture(&bed.host.dest),
        Compare::default(),
        "DEST with the state on a tmpfs",
    );
    assert!(
        !bed.root.join(".d.dupmirror-staging").exists(),
        "staging left"
    );
    assert_eq!(
        state_files(&bed.host.state).into_keys().collect::<Vec<_>>(),
        ["lock", "state.json"]
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 10: nothing staged is readable by others while it is written

/// Every file dupmirror creates is created 0600 and every folder 0700 (strace shows the
/// modes asked of the kernel); final modes come after the content.
#[test]
fn staged_files_and_folders_are_private_until_complete() {
    let Some(strace) = strace::find() else {
        return;
    };
    let bed = Bed::new();
    let big = random_bytes(3, 5 << 20);
    let mut entries = bed.baseline_entries();
    entries.insert(5, Entry::file("big", &big)); // after "basis", in index order
    bed.forge.full(t(0), entries);
    bed.sync().assert_ok("baseline");
    let mut changed = big.clone();
    changed[100] ^= 1;
    bed.forge.inc(
        t(0),
        t(1),
        vec![
            Entry::diff("big", &literal_delta(&changed)),
            Entry::dir("new").mode(0o755),
            Entry::file("new/f", b"secret\n").mode(0o644),
            Entry::raw("snapshot/new/p", b'6'), // a fifo
        ],
    );
    let text = traced_sync(
        &strace,
        &bed,
        "openat,open,creat,mkdir,mkdirat,mknod,mknodat",
        true,
    );
    let root = bed.root.to_string_lossy().into_owned();
    let mut seen = 0;
    for line in text.lines() {
        let Some(mode) = line
            .rsplit_once(", ")
            .and_then(|(_, m)| m.split(')').next())
        else {
            continue;
        };
        let dir = line.contains("mkdir");
        let file = line.contains("O_CREAT") || line.contains("creat(") || line.contains("mknod");
        // Only what was created, by this test's paths (not the dynamic loader's, not
        // /proc): by name, or relative to a handle.
        let failed = line.contains("= -1");
        if !(dir || file) || failed || (line.contains("\"/") && !line.contains(&root)) {
            continue;
        }
        seen += 1;
        let mode = mode.trim_start_matches("S_IFIFO|");
        let want = if dir { "0700" } else { "0600" };
        assert_eq!(mode, want, "created with another mode: {line}");
    }
    assert!(seen >= 5, "too few creations seen ({seen}):\n{text}");
    let m = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(m(&bed.host.state), 0o700);
    assert_eq!(m(&bed.host.state.join("state.json")), 0o600);
    assert_eq!(
        m(&bed.host.dest.join("new/f")),
        0o644,
        "final mode after the content"
    );
}

// ---------------------------------------------------------------------------------------------
// Finding 12: a committed journal whose path became unsafe after the commit point

/// The sync is killed just after its commit point, before the new file is placed; then the
/// new file's folder is replaced by a symlink out of DEST. The next sync completes the
/// journal: the symlink is replaced by a folder (never followed) and the run says so
/// (`verify --repair` would restore what the folder held; forged sets have no signatures
/// to verify against).
#[test]
fn a_committed_journal_below_a_folder_made_unsafe_completes_inside_dest() {
    let Some(strace) = strace::find() else {
        return;
    };
    let bed = bed_with_new_file();
    let host = &bed.host;
    let template = tempfile::tempdir().unwrap();
    let template = template.path().join("t");
    copy_tree(&bed.root, &template);
    let args = bed.sync_args();
    let (census, points) = strace::census(&strace, &args, host, &bed.forge.repo);
    census.assert_ok("census");
    let place = points
        .iter()
        .find(|p| p.phase == "rename into DEST")
        .expect("a rename into DEST");
    restore_host(&template, host);
    let r = strace::kill_at(&strace, &args, place);
    assert_eq!(r.status.signal(), Some(9), "not killed: {}", r.stderr);
    assert!(
        bed.host.state.join("journal").exists(),
        "no committed journal"
    );
    fs::rename(bed.host.dest.join("a"), bed.root.join("moved")).unwrap();
    symlink(&bed.outside, bed.host.dest.join("a")).unwrap();
    let outside = bed.outside_tree();
    let r = bed.sync();
    r.assert_ok("the sync after the swap");
    assert!(
        r.stdout_text().contains("a") && r.stdout_text().contains("replaced"),
        "the replaced folder is reported: {}",
        r.stdout_text()
    );
    outside.assert_same(&bed.outside_tree(), Compare::default(), "after recovery");
    assert!(fs::symlink_metadata(bed.host.dest.join("a"))
        .unwrap()
        .is_dir());
    assert_eq!(read(&bed.host.dest.join("a/new")), b"new\n");
    // What the replaced folder held went with it (the user moved it away); the rest of
    // DEST is the new backup, and the state says so.
    assert!(!bed.host.dest.join("a/f").exists());
    assert_eq!(read(&bed.host.dest.join("basis")), b"0123456789");
    assert_eq!(bed.host.state_end_time(), Some(t(1)));
    assert_eq!(bed.host.state_leftovers(), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// Finding 13: durability, a symlinked DEST, one lock per DEST

/// With fsync on (the default), DEST's file system is synced after the journal's last
/// rename into DEST and before the state records the set.
#[test]
fn dest_is_synced_before_the_state_says_done() {
    let Some(strace) = strace::find() else {
        return;
    };
    let bed = bed_with_new_file();
    let text = traced_sync(&strace, &bed, "syncfs,rename,renameat,renameat2", false);
    let lines: Vec<&str> = text.lines().collect();
    let last_place = lines
        .iter()
        .rposition(|l| l.contains("rename") && l.contains("staging/obj"))
        .expect("a rename into DEST");
    let state_saved = lines
        .iter()
        .rposition(|l| l.contains("rename") && l.contains("state.json"))
        .expect("the state saved");
    assert!(
        lines[last_place..state_saved]
            .iter()
            .any(|l| l.contains("syncfs(")),
        "no syncfs between the last rename into DEST and the state:\n{text}"
    );
}

/// DEST given as a symlink is refused with a line that says so; it is neither followed
/// nor replaced by a folder.
#[test]
fn a_dest_that_is_a_symlink_is_refused_not_replaced() {
    let bed = Bed::new();
    bed.forge.full(t(0), bed.baseline_entries());
    let real = bed.root.join("real");
    fs::create_dir(&real).unwrap();
    symlink(&real, &bed.host.dest).unwrap();
    let outside = bed.outside_tree();
    bed.sync()
        .assert_one_error_line("DEST is a symlink", &["is a symlink"], &[1]);
    assert!(fs::symlink_metadata(&bed.host.dest).unwrap().is_symlink());
    assert_eq!(fs::read_dir(&real).unwrap().count(), 0, "followed");
    assert!(!bed.host.state.join("state.json").exists());
    outside.assert_same(&bed.outside_tree(), Compare::default(), "symlinked DEST");
}

/// Two syncs of one DEST with different state folders never run at once: DEST itself is
/// locked. The first holds DEST's lock (strace holds its second `flock`, the one on DEST).
#[test]
fn one_dest_is_locked_whatever_the_state_folder() {
    let Some(strace) = strace::find() else {
        return;
    };
    let bed = bed_with_new_file();
    let hold = Duration::from_secs(8);
    let holder = strace::start_holder(&strace, &bed.sync_args(), &bed.host.dest, 2, hold);
    let other_state = bed.root.join("s2");
    expect_refusal(
        &bed,
        "a second state folder",
        &["holds the lock"],
        5,
        || {
            host_of(&bed, &bed.host.dest, &other_state)
                .sync(&bed.forge.repo, &["--no-fsync", "--adopt"])
        },
    );
    let out = holder.wait_with_output().unwrap();
    assert!(out.status.success(), "the first sync failed");
    assert_eq!(read(&bed.host.dest.join("a/new")), b"new\n");
}

// ---------------------------------------------------------------------------------------------
// Finding 14: type contradictions are corrupt sets, not drift

/// (Deltas on a symlink, a folder or nothing: `faults_input::a_diff_targeting_a_symlink_is_refused`
/// and `bad_deltas_are_refused`.)
#[test]
fn records_contradicting_the_backup_fail_the_set() {
    let words = &["contradicts"];
    inc_case(
        "deletion of a path the backup never had",
        vec![Entry::deleted("nothing")],
        words,
    );
    full_case(
        "a full set deleting a path",
        vec![Entry::deleted("x"), Entry::file("y", b"y")],
        &["a full set deletes"],
    );
}
