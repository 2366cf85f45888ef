//! Killing dupmirror, or failing one of its syscalls, at exact points: the machinery of the
//! crash and fault tests.
//!
//! `strace -e inject=SYSCALL:signal=KILL:when=N` delivers SIGKILL when the traced program
//! enters its Nth call of SYSCALL, before the call runs (`error=EIO` makes that call fail
//! instead). strace counts per syscall and per thread, and dupmirror does all of its writing
//! on the main thread, so a census run (strace logging every file-system-changing syscall)
//! lists every point at which a crash can leave a different state on disk, and each point
//! can then be hit again deterministically. This needs no hook in dupmirror itself, and a
//! kill lands between two syscalls exactly as a power cut or an OOM kill would (minus the
//! page cache, which `--no-fsync` tests ignore).
//!
//! Each point is labelled with the phase it falls in (reading the source, staging, journal
//! commit, changes in DEST, state update), from the paths in the census log, so a run can
//! report that every phase was hit.

use super::lab::Host;
use super::process::{dupmirror_bin, run_with_timeout, Run};
use super::skip;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Syscalls that change files, directories, attributes or durability: the kill points.
pub const MUTATING: &[&str] = &[
    "openat",
    "write",
    "pwrite64",
    "writev",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "rmdir",
    "mkdir",
    "mkdirat",
    "symlink",
    "symlinkat",
    "mknod",
    "mknodat",
    "link",
    "linkat",
    "chmod",
    "fchmod",
    "fchmodat",
    "chown",
    "lchown",
    "fchown",
    "fchownat",
    "utimensat",
    "ftruncate",
    "fsync",
    "fdatasync",
    "syncfs",
    "flock",
];

/// Syscalls whose first argument is a file descriptor, not a path.
const FD_CALLS: &[&str] = &[
    "write",
    "pwrite64",
    "writev",
    "fchmod",
    "fchown",
    "ftruncate",
    "fsync",
    "fdatasync",
    "syncfs",
    "flock",
];

/// strace, or `None` after printing why the test is skipped (a failure when
/// `DUPMIRROR_REQUIRE_ORACLE=1`: scripts/install-deps.sh installs it).
pub fn find() -> Option<PathBuf> {
    let found = ["/usr/bin/strace", "/bin/strace"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    if found.is_none() {
        skip("strace is not installed; run scripts/install-deps.sh");
    }
    found
}

/// One place where a kill can land: the `nth` call of `syscall` on the main thread.
#[derive(Clone, Debug)]
pub struct KillPoint {
    pub syscall: String,
    pub nth: u32,
    pub phase: &'static str,
    /// The census line, for messages.
    pub line: String,
}

/// Which part of a sync a syscall belongs to, from the paths it names.
fn phase_of(syscall: &str, path: &str, host: &Host, repo: &Path) -> &'static str {
    let dest = host.dest.to_string_lossy();
    let state = host.state.to_string_lossy();
    let repo = repo.to_string_lossy();
    if path.contains("/journal") {
        "journal commit"
    } else if path.contains("state.json") {
        "state update"
    } else if path.contains("staging") {
        if syscall.starts_with("rename") {
            "rename into DEST"
        } else {
            "staging"
        }
    } else if path.starts_with(repo.as_ref()) {
        "reading the source"
    } else if path.starts_with(dest.as_ref()) {
        match syscall {
            s if s.starts_with("rename") => "rename into DEST",
            "utimensat" | "chmod" | "fchmodat" | "fchownat" | "lchown" => "attributes in DEST",
            "unlink" | "unlinkat" | "rmdir" => "removal in DEST",
            _ => "other change in DEST",
        }
    } else if path.starts_with(state.as_ref()) {
        "state directory"
    } else {
        "process setup and output"
    }
}

/// The first double-quoted argument of a strace line (the path, for path syscalls).
fn first_path(args: &str) -> Option<String> {
    let start = args.find('"')? + 1;
    let end = start + args[start..].find('"')?;
    Some(args[start..end].to_string())
}

/// Runs dupmirror under strace logging the mutating syscalls; returns the run and every
/// kill point of the main thread, in order.
pub fn census(strace: &Path, args: &[OsString], host: &Host, repo: &Path) -> (Run, Vec<KillPoint>) {
    let log = host.dir.join("census.log");
    let mut cmd = Command::new(strace);
    cmd.arg("-f")
        .arg("-qq")
        .arg("-s")
        .arg("200")
        .arg("-o")
        .arg(&log)
        .arg(format!("-etrace={}", MUTATING.join(",")))
        .arg(dupmirror_bin())
        .args(args);
    let run = run_with_timeout(cmd, Duration::from_secs(300));
    let text = fs::read_to_string(&log).expect("census log");
    fs::remove_file(&log).unwrap();
    let mut main_tid: Option<u32> = None;
    let mut counts: HashMap<(u32, String), u32> = HashMap::new();
    let mut other_thread_calls: std::collections::BTreeSet<String> = Default::default();
    let mut fds: HashMap<String, String> = HashMap::new();
    let mut pending_open: HashMap<u32, String> = HashMap::new();
    let mut points = Vec::new();
    for line in text.lines() {
        let Some((tid, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(tid) = tid.trim().parse::<u32>() else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            // "<... openat resumed>) = 5": the result of a call counted at its start.
            if resumed.starts_with("openat resumed") {
                if let (Some(path), Some((_, fd))) =
                    (pending_open.remove(&tid), resumed.rsplit_once("= "))
                {
                    fds.insert(fd.split(' ').next().unwrap_or("").to_string(), path);
                }
            }
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else {
            continue;
        };
        if !MUTATING.contains(&name) {
            continue;
        }
        let main = *main_tid.get_or_insert(tid);
        let n = counts.entry((tid, name.to_string())).or_insert(0);
        *n += 1;
        if tid != main {
            other_thread_calls.insert(name.to_string());
            continue;
        }
        let path = if name == "openat" {
            let p = first_path(args).unwrap_or_default();
            match args.rsplit_once("= ") {
                Some((_, fd)) if !args.ends_with("<unfinished ...>") => {
                    fds.insert(fd.split(' ').next().unwrap_or("").to_string(), p.clone());
                }
                _ => {
                    pending_open.insert(tid, p.clone());
                }
            }
            p
        } else if let Some(p) =
            first_path(args).filter(|p| p.starts_with('/') && !FD_CALLS.contains(&name))
        {
            p
        } else {
            // write(5, ...), fsync(5), syncfs(5): the path the fd was opened with.
            let fd = args.split([',', ')']).next().unwrap_or("").trim();
            fds.get(fd).cloned().unwrap_or_default()
        };
        points.push(KillPoint {
            syscall: name.to_string(),
            nth: *n,
            phase: phase_of(name, &path, host, repo),
            line: line.chars().take(160).collect(),
        });
    }
    // A syscall that other threads make too would be counted per thread: leave it out.
    points.retain(|p| !other_thread_calls.contains(&p.syscall));
    (run, points)
}

/// Picks `n` points spread evenly over `all`, plus at least one per phase.
pub fn spread(all: &[KillPoint], n: usize) -> Vec<KillPoint> {
    if n >= all.len() {
        return all.to_vec();
    }
    let mut chosen: BTreeMap<usize, ()> = BTreeMap::new();
    for i in 0..n {
        chosen.insert(i * all.len() / n + all.len() / (2 * n), ());
    }
    let mut by_phase: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in all.iter().enumerate() {
        by_phase.entry(p.phase).or_default().push(i);
    }
    for idx in by_phase.values() {
        if !idx.iter().any(|i| chosen.contains_key(i)) {
            chosen.insert(idx[idx.len() / 2], ());
        }
    }
    chosen.keys().map(|&i| all[i].clone()).collect()
}

/// dupmirror with `args` under strace, with one injection `-e inject=...` on `syscall`.
pub fn injected(strace: &Path, args: &[OsString], syscall: &str, inject: &str) -> Command {
    let mut cmd = Command::new(strace);
    cmd.arg("-f")
        .arg("-qq")
        .arg("-o")
        .arg("/dev/null")
        .arg(format!("-etrace={syscall}"))
        .arg(format!("-einject={syscall}:{inject}"))
        .arg(dupmirror_bin())
        .args(args);
    cmd
}

/// Runs dupmirror and kills it on entering the chosen syscall.
pub fn kill_at(strace: &Path, args: &[OsString], point: &KillPoint) -> Run {
    let inject = format!("signal=KILL:when={}", point.nth);
    let cmd = injected(strace, args, &point.syscall, &inject);
    run_with_timeout(cmd, Duration::from_secs(300))
}

/// Runs dupmirror and makes the chosen syscall fail with `errno` (an I/O error, a full disk).
pub fn fail_at(strace: &Path, args: &[OsString], point: &KillPoint, errno: &str) -> Run {
    let inject = format!("error={errno}:when={}", point.nth);
    let cmd = injected(strace, args, &point.syscall, &inject);
    run_with_timeout(cmd, Duration::from_secs(300))
}

/// How many kill points a case tries: `$DUPMIRROR_KILL_POINTS` (a number, or `all`), else
/// `default`.
pub fn points_wanted(default: usize) -> usize {
    match std::env::var("DUPMIRROR_KILL_POINTS").ok().as_deref() {
        Some("all") => usize::MAX,
        Some(n) => n.parse().unwrap_or(default),
        None => default,
    }
}
