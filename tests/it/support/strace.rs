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
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

impl KillPoint {
    /// `LABEL: kill point I/N (SYSCALL #NTH during PHASE: LINE)`, for messages (`i` from 0).
    pub fn context(&self, label: &str, i: usize, n: usize) -> String {
        format!(
            "{label}: kill point {}/{n} ({} #{} during {}: {})",
            i + 1,
            self.syscall,
            self.nth,
            self.phase,
            self.line
        )
    }
}

/// Which part of a sync a syscall belongs to, from the paths it names.
fn phase_of(syscall: &str, path: &str, host: &Host, repo: &Path) -> &'static str {
    let dest = host.dest.to_string_lossy();
    let state = host.state.to_string_lossy();
    let repo = repo.to_string_lossy();
    if path.contains("atomic-journal") || path.contains("atomic.json") {
        "atomic layout journal"
    } else if path.contains(".dupmirror-link") {
        "link replacement"
    } else if path.contains("/journal") {
        "journal commit"
    } else if path.contains("state.json") {
        "state update"
    } else if path.contains("staging") {
        if syscall.starts_with("rename") {
            "rename into DEST"
        } else {
            "staging"
        }
    } else if path.contains(".dupmirror-trees") {
        "the atomic layout's trees"
    } else if path.starts_with(repo.as_ref()) {
        "reading the source"
    } else if path.starts_with(dest.as_ref()) {
        match syscall {
            s if s.starts_with("rename") => "rename into DEST",
            "utimensat" | "chmod" | "fchmod" | "fchmodat" | "fchown" | "fchownat" | "lchown" => {
                "attributes in DEST"
            }
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

/// A descriptor as `strace -y` prints it, `5</a/b>`: its number and path; and the rest.
fn fd_with_path(text: &str) -> Option<(&str, &str, &str)> {
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    let rest = text[digits..].strip_prefix('<')?;
    let end = rest.find('>')?;
    Some((&text[..digits], &rest[..end], &rest[end + 1..]))
}

/// The path a traced call acts on. dupmirror works through directory descriptors, so most
/// calls name an entry of one (`renameat2(5</d/a>, "x", ...)`, shown with its path by
/// `strace -y`): that directory joined with the name; a call on a descriptor alone
/// (`write`, `fsync`, `futimens`) acts on the descriptor's path; a `/proc/self/fd/N` path
/// (a chmod through a pinned descriptor) on the path that descriptor was opened with.
fn call_path(name: &str, args: &str, fds: &HashMap<String, String>) -> String {
    let args = args.strip_prefix("AT_FDCWD, ").unwrap_or(args);
    let path = if let Some((_, dir, rest)) = fd_with_path(args) {
        match rest.strip_prefix(", \"") {
            Some(r) if !FD_CALLS.contains(&name) => {
                let entry = &r[..r.find('"').unwrap_or(r.len())];
                if entry.is_empty() {
                    dir.to_string()
                } else {
                    format!("{dir}/{entry}")
                }
            }
            _ => dir.to_string(),
        }
    } else {
        first_path(args).unwrap_or_default()
    };
    match path.strip_prefix("/proc/self/fd/") {
        Some(fd) => fds.get(fd).cloned().unwrap_or(path),
        None => path,
    }
}

/// Runs dupmirror under strace logging the mutating syscalls; returns the run and every
/// kill point of the main thread, in order.
pub fn census(strace: &Path, args: &[OsString], host: &Host, repo: &Path) -> (Run, Vec<KillPoint>) {
    let log = host.dir.join("census.log");
    let mut cmd = Command::new(strace);
    cmd.arg("-f")
        .arg("-qq")
        .arg("-y")
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
    // Descriptors opened so far and their paths, from `openat(...) = 7</a/b>`.
    let mut fds: HashMap<String, String> = HashMap::new();
    let mut points = Vec::new();
    for line in text.lines() {
        let Some((tid, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(tid) = tid.trim().parse::<u32>() else {
            continue;
        };
        let rest = rest.trim_start();
        if rest.contains("openat") {
            if let Some((fd, path, _)) = rest.rsplit_once("= ").and_then(|(_, r)| fd_with_path(r)) {
                fds.insert(fd.to_string(), path.to_string());
            }
        }
        if rest.starts_with("<... ") {
            continue; // the result of a call counted at its start
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
        let path = call_path(name, args, &fds);
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

/// Starts a sync that takes a lock and then holds it for `hold` (strace delays the return
/// of its `nth` `flock`: 1 for the state folder's lock, 2 for DEST's). Waits until `lock`
/// (the lock file, or DEST) is really held.
pub fn start_holder(
    strace: &Path,
    args: &[OsString],
    lock: &Path,
    nth: u32,
    hold: Duration,
) -> Child {
    let inject = format!("delay_exit={}:when={nth}", hold.as_micros());
    let mut child = injected(strace, args, "flock", &inject)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start strace");
    let start = Instant::now();
    while !lock_is_held(lock) {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the first sync never took the lock");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Whether another process holds the flock on `path`, a file or a folder (a probe that
/// takes and drops it).
pub fn lock_is_held(path: &Path) -> bool {
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
