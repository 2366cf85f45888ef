//! Shared helpers for dupmirror's integration tests.
//!
//! The tests talk to dupmirror only through its command line (DESIGN.md §3) and compare what it
//! writes with what upstream `duplicity restore` writes (the oracle, DESIGN.md §4).
//!
//! Upstream binaries: 0.8.x is `duplicity` on `PATH` (or `$DUPMIRROR_DUPLICITY08`), 3.x is
//! `$DUPMIRROR_DUPLICITY3` or `/opt/dup3/bin/duplicity`. When one is missing a test prints
//! "skipped: upstream duplicity X not installed" and returns, unless
//! `DUPMIRROR_REQUIRE_ORACLE=1`, which turns the skip into a failure (`scripts/test.sh` and CI
//! set it).
//!
//! Other knobs: `DUPMIRROR_TEST_BIN` runs the suite against another dupmirror binary (e.g. a
//! release build); `DUPMIRROR_TEST_TIMEOUT` (seconds, default 300) bounds each dupmirror run.
//! dupmirror never inherits `PASSPHRASE` or `GNUPGHOME` from the tests' environment: the
//! encryption tests give it their own (`gpg`).
#![allow(dead_code, unused_imports)]

pub mod forge;
pub mod gpg;
pub mod hostile;
/// One `#[test]` per upstream version (0.8 and 3.x) for each scenario function
/// `fn(Duplicity)` named; a missing version skips (or fails, see the module doc).
#[macro_export]
macro_rules! both_versions {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn dup08() {
                if let Some(d) = super::duplicity(super::Version::V08) {
                    super::$name(d)
                }
            }
            #[test]
            fn dup3() {
                if let Some(d) = super::duplicity(super::Version::V3) {
                    super::$name(d)
                }
            }
        }
    )*};
}

pub mod json;
pub mod kill;
pub mod remote;
pub mod scenario;
pub mod tree;

pub use tree::{Compare, Kind, Node, Tree};

use std::cell::Cell;
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// First backup time used by the tests; step k is at `t(k)`.
pub const T0: i64 = 1_700_000_000;

/// Backup time of step `k`: 1000 s apart, so two sets never share a second.
pub fn t(k: i64) -> i64 {
    T0 + k * 1000
}

pub fn require_oracle() -> bool {
    std::env::var("DUPMIRROR_REQUIRE_ORACLE").is_ok_and(|v| v == "1")
}

/// True when the tests run as root (ownership and device nodes can be tested).
pub fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let d = tempfile::tempdir().expect("tempdir");
        fs::metadata(d.path()).expect("stat tempdir").uid() == 0
    })
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// Running programs

/// The result of one program run.
pub struct Run {
    pub cmdline: String,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.status,
            truncate_text(&self.stdout_text(), 4000),
            truncate_text(&self.stderr, 4000)
        )
    }

    /// Panic unless the program exited 0.
    pub fn assert_ok(&self, context: &str) -> &Self {
        if !self.success() {
            panic!("{context}: expected success\n{}", self.describe());
        }
        self
    }

    /// Panic unless the program failed cleanly: non-zero exit (not a signal), no panic, and a
    /// last stderr line (the error line of the contract) that mentions one of `keywords`
    /// (case-insensitive).
    pub fn assert_refused(&self, context: &str, keywords: &[&str]) -> &Self {
        if self.success() {
            panic!("{context}: expected a non-zero exit\n{}", self.describe());
        }
        if self.status.code().is_none() {
            panic!("{context}: killed by a signal\n{}", self.describe());
        }
        if self.stderr.contains("panicked at") || self.stderr.contains("RUST_BACKTRACE") {
            panic!("{context}: dupmirror panicked\n{}", self.describe());
        }
        let Some(line) = self.stderr.lines().rev().find(|l| !l.trim().is_empty()) else {
            panic!(
                "{context}: failed without an error line on stderr\n{}",
                self.describe()
            );
        };
        let lower = line.to_lowercase();
        if !keywords.iter().any(|k| lower.contains(&k.to_lowercase())) {
            panic!(
                "{context}: the error line does not mention any of {keywords:?}: {line:?}\n{}",
                self.describe()
            );
        }
        eprintln!("{context}: refused as expected: {line}");
        self
    }
}

fn truncate_text(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = s.len() - max;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    format!("[... {} bytes cut ...]{}", cut, &s[cut..])
}

fn show_cmd(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(' ') {
            s.push_str(&format!("{a:?}"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// Run `cmd` with no stdin, capturing output, killing it after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Run {
    let cmdline = show_cmd(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmdline}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("timed out after {timeout:?}: {cmdline}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = t_out.join().unwrap();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
    Run {
        cmdline,
        status,
        stdout,
        stderr,
    }
}

fn timeout() -> Duration {
    let secs = std::env::var("DUPMIRROR_TEST_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(secs)
}

/// The dupmirror binary under test: cargo's build, or `$DUPMIRROR_TEST_BIN` (to run the suite
/// against another build, e.g. a release binary).
pub fn dupmirror_bin() -> PathBuf {
    std::env::var_os("DUPMIRROR_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_dupmirror")))
}

/// Run the dupmirror binary under test.
pub fn dupmirror<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    dupmirror_env(args, &[])
}

/// Run the dupmirror binary under test with extra environment. gpg's `PASSPHRASE` and
/// `GNUPGHOME`, and the credentials of remote sources (`DUPMIRROR_PASSWORD`, `FTP_PASSWORD`,
/// a netrc file) come only from `env`, never from the environment the tests run in.
pub fn dupmirror_env<I, S>(args: I, env: &[(OsString, OsString)]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(dupmirror_bin());
    cmd.args(args)
        .env_remove("PASSPHRASE")
        .env_remove("GNUPGHOME")
        .env_remove("DUPMIRROR_PASSWORD")
        .env_remove("FTP_PASSWORD")
        .env("NETRC", "/dev/null");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    run_with_timeout(cmd, timeout())
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A Python 3 interpreter (Debian's first: it is the one duplicity 0.8 runs on).
pub fn python() -> PathBuf {
    let debian = PathBuf::from("/usr/bin/python3");
    if debian.is_file() {
        return debian;
    }
    find_on_path("python3").expect("python3 is needed to craft test volumes")
}

/// Run `tests/support/craft.py` with `args`; panic on failure.
pub fn craft<I, S>(args: I)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(python());
    cmd.arg(manifest_dir().join("tests/support/craft.py"));
    cmd.args(args);
    let r = run_with_timeout(cmd, Duration::from_secs(120));
    r.assert_ok("craft.py");
}

// ---------------------------------------------------------------------------------------------
// Upstream duplicity

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// 0.8.x, Debian bookworm's `duplicity` (0.8.22).
    V08,
    /// 3.x from the venv (3.2.1).
    V3,
}

impl Version {
    pub const ALL: [Version; 2] = [Version::V08, Version::V3];

    pub fn label(self) -> &'static str {
        match self {
            Version::V08 => "0.8",
            Version::V3 => "3.x",
        }
    }

    fn locate(self) -> Option<PathBuf> {
        match self {
            Version::V08 => std::env::var_os("DUPMIRROR_DUPLICITY08")
                .map(PathBuf::from)
                .or_else(|| find_on_path("duplicity")),
            Version::V3 => Some(
                std::env::var_os("DUPMIRROR_DUPLICITY3")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("/opt/dup3/bin/duplicity")),
            ),
        }
    }

    fn version_prefix(self) -> &'static str {
        match self {
            Version::V08 => "duplicity 0.8.",
            Version::V3 => "duplicity 3.",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Duplicity {
    pub version: Version,
    pub bin: PathBuf,
    /// What `--version` printed, e.g. "duplicity 0.8.22".
    pub version_text: String,
}

fn probe(v: Version) -> Result<Duplicity, String> {
    let bin = v.locate().ok_or("not found on PATH")?;
    if !bin.is_file() {
        return Err(format!("{} does not exist", bin.display()));
    }
    let out = Command::new(&bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !text.starts_with(v.version_prefix()) {
        return Err(format!(
            "{} --version printed {text:?} (wanted {}*)",
            bin.display(),
            v.version_prefix()
        ));
    }
    Ok(Duplicity {
        version: v,
        bin,
        version_text: text,
    })
}

/// The upstream duplicity of version `v`, or `None` (after printing a "skipped" line) when it
/// is not installed. Panics instead when `DUPMIRROR_REQUIRE_ORACLE=1`.
pub fn duplicity(v: Version) -> Option<Duplicity> {
    static CACHE: OnceLock<[Result<Duplicity, String>; 2]> = OnceLock::new();
    let cache = CACHE.get_or_init(|| [probe(Version::V08), probe(Version::V3)]);
    match &cache[v as usize] {
        Ok(d) => Some(d.clone()),
        Err(why) => {
            if require_oracle() {
                panic!(
                    "upstream duplicity {} not installed ({why}) and DUPMIRROR_REQUIRE_ORACLE=1; \
                     run scripts/install-deps.sh",
                    v.label()
                );
            }
            eprintln!(
                "skipped: upstream duplicity {} not installed ({why}); run scripts/install-deps.sh",
                v.label()
            );
            None
        }
    }
}

impl Duplicity {
    pub fn label(&self) -> String {
        self.version_text.clone()
    }

    /// Run duplicity with `args`; panic with its output unless it exits 0.
    pub fn run(&self, args: &[OsString], env: &[(OsString, OsString)]) -> Run {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let r = run_with_timeout(cmd, Duration::from_secs(600));
        r.assert_ok(&format!("upstream {}", self.version_text));
        r
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupKind {
    Full,
    Inc,
}

fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

/// A source tree, a repository written by upstream duplicity, and scratch space, all under one
/// short temporary directory.
pub struct Lab {
    pub dup: Duplicity,
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub src: PathBuf,
    pub repo: PathBuf,
    pub archive: PathBuf,
    pub name: String,
    /// Options for backups only (`--volsize 1`, `--no-compression`, naming modes).
    pub backup_opts: Vec<OsString>,
    /// Options for every upstream command on the repository (file prefixes).
    pub repo_opts: Vec<OsString>,
    /// Extra environment for upstream (TZ for `--old-filenames`; gpg's home and passphrase).
    pub env: Vec<(OsString, OsString)>,
    /// Encryption options for every upstream command (default `--no-encryption`).
    pub crypt_opts: Vec<OsString>,
    /// Environment for dupmirror in the scenario driver (gpg's home and passphrase).
    pub dupmirror_env: Vec<(OsString, OsString)>,
    /// Backup times made so far, in order.
    pub times: Vec<i64>,
    pub fs: Fs,
    seq: Cell<u32>,
}

impl Lab {
    pub fn new(dup: Duplicity) -> Lab {
        let tmp = tempfile::Builder::new()
            .prefix("dm")
            .tempdir_in(std::env::temp_dir())
            .expect("tempdir");
        let root = tmp.path().to_path_buf();
        let src = root.join("src");
        fs::create_dir(&src).unwrap();
        Lab {
            dup,
            _tmp: tmp,
            src: src.clone(),
            repo: root.join("repo"),
            archive: root.join("arch"),
            root,
            name: "t".into(),
            backup_opts: Vec::new(),
            repo_opts: Vec::new(),
            env: Vec::new(),
            crypt_opts: vec![os("--no-encryption")],
            dupmirror_env: Vec::new(),
            times: Vec::new(),
            fs: Fs::new(&src),
            seq: Cell::new(0),
        }
    }

    pub fn backup_opts(mut self, opts: &[&str]) -> Self {
        self.backup_opts.extend(opts.iter().map(os));
        self
    }

    pub fn repo_opts(mut self, opts: &[&str]) -> Self {
        self.repo_opts.extend(opts.iter().map(os));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((os(k), os(v)));
        self
    }

    /// Encrypt (and decrypt) with these upstream options instead of `--no-encryption`.
    pub fn encryption(mut self, opts: &[&str]) -> Self {
        self.crypt_opts = opts.iter().map(os).collect();
        self
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.repo.display())
    }

    /// A new unique path under the lab root (not created).
    pub fn fresh(&self, label: &str) -> PathBuf {
        let n = self.seq.get() + 1;
        self.seq.set(n);
        self.root.join(format!("{label}{n}"))
    }

    pub fn backup(&mut self, kind: BackupKind, time: i64) {
        let mut a = vec![os(match kind {
            BackupKind::Full => "full",
            BackupKind::Inc => "incremental",
        })];
        a.extend(self.backup_opts.iter().cloned());
        a.extend(self.repo_opts.iter().cloned());
        a.extend(self.crypt_opts.iter().cloned());
        a.extend([
            os("--current-time"),
            os(time.to_string()),
            os("--archive-dir"),
            os(&self.archive),
            os("--name"),
            os(&self.name),
            os(&self.src),
            os(self.url()),
        ]);
        self.dup.run(&a, &self.env);
        self.times.push(time);
    }

    pub fn full(&mut self, time: i64) {
        self.backup(BackupKind::Full, time)
    }

    pub fn inc(&mut self, time: i64) {
        self.backup(BackupKind::Inc, time)
    }

    /// The oracle: `duplicity restore --time T` into a fresh directory (with a fresh archive
    /// dir, so it sees only what the repository holds), as a tree snapshot.
    pub fn restore(&self, time: i64) -> Tree {
        self.restore_with(time, &[])
    }

    /// Like `restore`, with extra restore options (e.g. `--path-to-restore P`).
    pub fn restore_with(&self, time: i64, extra: &[&str]) -> Tree {
        let out = self.fresh("o");
        let arch = self.fresh("oa");
        let mut a = vec![os("restore")];
        a.extend(self.repo_opts.iter().cloned());
        a.extend(extra.iter().map(os));
        a.extend(self.crypt_opts.iter().cloned());
        a.extend([
            os("--time"),
            os(time.to_string()),
            os("--archive-dir"),
            os(&arch),
            os("--name"),
            os(&self.name),
            os(self.url()),
            os(&out),
        ]);
        self.dup.run(&a, &self.env);
        let tree = Tree::capture(&out);
        remove_tree(&out);
        remove_tree(&arch);
        tree
    }

    /// `duplicity list-current-files --time T`: the set of paths, root as ".".
    pub fn list_current_files(&self, time: i64) -> BTreeSet<Vec<u8>> {
        let arch = self.fresh("la");
        let mut a = vec![os("list-current-files")];
        a.extend(self.repo_opts.iter().cloned());
        a.extend(self.crypt_opts.iter().cloned());
        a.extend([
            os("--time"),
            os(time.to_string()),
            os("--archive-dir"),
            os(&arch),
            os("--name"),
            os(&self.name),
            os(self.url()),
        ]);
        let r = self.dup.run(&a, &self.env);
        remove_tree(&arch);
        parse_list_current_files(&r.stdout)
    }

    /// A host (DEST plus state dir) under the lab root. Neither directory exists yet.
    pub fn host(&self, label: &str) -> Host {
        let dir = self.fresh(label);
        fs::create_dir(&dir).unwrap();
        Host {
            dest: dir.join("d"),
            state: dir.join("s"),
            dir,
        }
    }

    /// File names in the repository, sorted.
    pub fn repo_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.repo)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The one repository file whose name contains all of `parts`.
    pub fn repo_file(&self, parts: &[&str]) -> PathBuf {
        let hits: Vec<String> = self
            .repo_files()
            .into_iter()
            .filter(|n| parts.iter().all(|p| n.contains(p)))
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "expected one repository file containing {parts:?}, found {hits:?} in {:?}",
            self.repo_files()
        );
        self.repo.join(&hits[0])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Read-only directories in the trees would stop the temp dir's removal as non-root.
        make_writable(&self.root);
    }
}

/// Parse `duplicity list-current-files` output: lines `Day Mon DD HH:MM:SS YYYY path`.
pub fn parse_list_current_files(out: &[u8]) -> BTreeSet<Vec<u8>> {
    let mut set = BTreeSet::new();
    for line in out.split(|&b| b == b'\n') {
        if line.len() > 25 && is_ctime(&line[..24]) && line[24] == b' ' {
            set.insert(line[25..].to_vec());
        }
    }
    set
}

fn is_ctime(s: &[u8]) -> bool {
    // "Tue Nov 14 22:13:20 2023"
    let pat = b"AAA AAA dd dd:dd:dd dddd";
    s.len() == pat.len()
        && s.iter().zip(pat.iter()).all(|(&c, &p)| match p {
            b'A' => c.is_ascii_alphabetic(),
            b'd' => c.is_ascii_digit() || c == b' ',
            _ => c == p,
        })
}

pub fn remove_tree(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            // Make everything writable first: the trees hold read-only directories.
            make_writable(p);
            fs::remove_dir_all(p).unwrap_or_else(|e| panic!("rm -r {}: {e}", p.display()))
        }
        Ok(_) => fs::remove_file(p).unwrap_or_else(|e| panic!("rm {}: {e}", p.display())),
        Err(_) => {}
    }
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = fs::symlink_metadata(dir) {
        if m.is_dir() {
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
            if let Ok(rd) = fs::read_dir(dir) {
                for e in rd.flatten() {
                    make_writable(&e.path());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hosts running dupmirror

/// A host: its DEST and its dupmirror state directory, side by side in `dir`.
pub struct Host {
    pub dir: PathBuf,
    pub dest: PathBuf,
    pub state: PathBuf,
}

impl Host {
    /// `dupmirror sync SOURCE DEST --state-dir S EXTRA...`
    pub fn sync(&self, source: impl AsRef<OsStr>, extra: &[&str]) -> Run {
        self.sync_env(source, extra, &[])
    }

    /// `sync` with extra environment for dupmirror (see [`dupmirror_env`]).
    pub fn sync_env(
        &self,
        source: impl AsRef<OsStr>,
        extra: &[&str],
        env: &[(OsString, OsString)],
    ) -> Run {
        let mut a = vec![
            os("sync"),
            os(source),
            os(&self.dest),
            os("--state-dir"),
            os(&self.state),
        ];
        a.extend(extra.iter().map(os));
        dupmirror_env(a, env)
    }

    pub fn tree(&self) -> Tree {
        Tree::capture(&self.dest)
    }

    pub fn tree_opt(&self) -> Option<Tree> {
        Tree::capture_opt(&self.dest)
    }

    /// Names in the host directory other than DEST and the state dir: must stay empty.
    pub fn strays(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "d" && n != "s")
            .collect();
        v.sort();
        v
    }
}

/// Assert DEST is as it was: both absent, or the same tree. An absent DEST may also come back
/// as an empty directory.
pub fn assert_dest_unchanged(before: &Option<Tree>, after: &Option<Tree>, context: &str) {
    assert_dest_unchanged_or_at(before, after, &[], context)
}

/// The contract after a failure: DEST is exactly as before the run, or exactly as after one
/// of the complete sets the run could have applied first (`allowed`, e.g. the full before a
/// broken incremental), never in between. An absent DEST may come back as an empty directory.
pub fn assert_dest_unchanged_or_at(
    before: &Option<Tree>,
    after: &Option<Tree>,
    allowed: &[&Tree],
    context: &str,
) {
    if let Some(a) = after {
        if allowed
            .iter()
            .any(|t| t.diff(a, Compare::default()).is_empty())
        {
            return;
        }
    }
    match (before, after) {
        (None, None) => {}
        (None, Some(a)) => {
            let empty_dir = a.nodes.len() == 1 && a.nodes[&b".".to_vec()].kind == Kind::Dir;
            assert!(
                empty_dir,
                "{context}: DEST did not exist before the failed run and now holds {} path(s), \
                 which is not the state after any complete set:\n{}",
                a.nodes.len(),
                truncate_text(&a.to_text(), 3000)
            );
        }
        (Some(_), None) => panic!("{context}: DEST existed before the failed run and is gone"),
        (Some(b), Some(a)) => b.assert_same(a, Compare::default(), context),
    }
}

// ---------------------------------------------------------------------------------------------
// Building source trees

pub fn osstr(rel: &[u8]) -> &OsStr {
    OsStr::from_bytes(rel)
}

/// Helpers to build and change a tree under `root`; paths are raw bytes relative to it.
/// Every regular file written gets the mtime `now` (set per backup step), so duplicity always
/// sees a content change as a change.
pub struct Fs {
    pub root: PathBuf,
    now: Cell<i64>,
}

impl Fs {
    pub fn new(root: &Path) -> Fs {
        Fs {
            root: root.to_path_buf(),
            now: Cell::new(T0 - 100_000),
        }
    }

    pub fn set_now(&self, t: i64) {
        self.now.set(t)
    }

    pub fn now(&self) -> i64 {
        self.now.get()
    }

    pub fn path(&self, rel: impl AsRef<[u8]>) -> PathBuf {
        let rel = rel.as_ref();
        if rel.is_empty() || rel == b"." {
            return self.root.clone();
        }
        self.root.join(osstr(rel))
    }

    fn parent(&self, rel: &[u8]) {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", d.display()));
        }
    }

    /// Write a regular file (replacing whatever is there) with mtime `now`.
    pub fn write(&self, rel: impl AsRef<[u8]>, data: &[u8]) {
        self.write_at(rel, data, self.now())
    }

    pub fn write_at(&self, rel: impl AsRef<[u8]>, data: &[u8], mtime: i64) {
        let rel = rel.as_ref();
        self.parent(rel);
        let p = self.path(rel);
        if fs::symlink_metadata(&p).is_ok_and(|m| !m.is_file()) {
            self.remove(rel);
        }
        fs::write(&p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        self.touch(rel, mtime);
    }

    pub fn mkdir(&self, rel: impl AsRef<[u8]>) {
        let p = self.path(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir -p {}: {e}", p.display()));
    }

    pub fn symlink(&self, rel: impl AsRef<[u8]>, target: impl AsRef<[u8]>) {
        let rel = rel.as_ref();
        self.parent(rel);
        self.remove(rel);
        let p = self.path(rel);
        std::os::unix::fs::symlink(osstr(target.as_ref()), &p)
            .unwrap_or_else(|e| panic!("symlink {}: {e}", p.display()));
    }

    pub fn fifo(&self, rel: impl AsRef<[u8]>) {
        let rel = rel.as_ref();
        self.parent(rel);
        self.remove(rel);
        self.cmd("mkfifo", &[self.path(rel).into_os_string()]);
        self.touch(rel, self.now());
    }

    /// `mknod` (root only): `kind` is "c" or "b".
    pub fn mknod(&self, rel: impl AsRef<[u8]>, kind: &str, major: u32, minor: u32) {
        let rel = rel.as_ref();
        self.parent(rel);
        self.remove(rel);
        self.cmd(
            "mknod",
            &[
                self.path(rel).into_os_string(),
                os(kind),
                os(major.to_string()),
                os(minor.to_string()),
            ],
        );
        self.touch(rel, self.now());
    }

    pub fn chmod(&self, rel: impl AsRef<[u8]>, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path(rel);
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
    }

    /// lchown (root only).
    pub fn chown(&self, rel: impl AsRef<[u8]>, uid: u32, gid: u32) {
        let p = self.path(rel);
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("lchown {}: {e}", p.display()));
    }

    /// Set the mtime of `rel` itself (symlinks not followed).
    pub fn touch(&self, rel: impl AsRef<[u8]>, mtime: i64) {
        self.cmd(
            "touch",
            &[
                os("-h"),
                os("-m"),
                os(format!("-d@{mtime}")),
                os("--"),
                self.path(rel).into_os_string(),
            ],
        );
    }

    /// Remove `rel` (recursively for directories, never following symlinks); no-op if absent.
    pub fn remove(&self, rel: impl AsRef<[u8]>) {
        remove_tree(&self.path(rel))
    }

    pub fn exists(&self, rel: impl AsRef<[u8]>) -> bool {
        fs::symlink_metadata(self.path(rel)).is_ok()
    }

    fn cmd(&self, prog: &str, args: &[OsString]) {
        let out = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{prog}: {e}"));
        assert!(
            out.status.success(),
            "{prog} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Deterministic pseudo-random (incompressible) bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------------------------------------
// Times

/// (year, month, day) from days since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn utc_fields(t: i64) -> (i64, u32, u32, i64, i64, i64) {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    (y, m, d, s / 3600, s / 60 % 60, s % 60)
}

/// `2023-11-14T22:13:20Z`
pub fn iso_time(t: i64) -> String {
    let (y, m, d, hh, mm, ss) = utc_fields(t);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

/// `20231114T221320Z`, as in duplicity's file names.
pub fn compact_time(t: i64) -> String {
    let (y, m, d, hh, mm, ss) = utc_fields(t);
    format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z")
}

/// Read a file into bytes, with the path in the panic message.
pub fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Duplicity's manifest quoting of a path (whitespace, quotes and backslash as `\xNN` in
/// double quotes), for forged manifests.
pub fn quote_manifest(raw: &[u8]) -> Vec<u8> {
    let special = |b: u8| b" \t\n\r\x0b\x0c\\\"'".contains(&b);
    if !raw.iter().any(|&b| special(b)) {
        return raw.to_vec();
    }
    let mut out = b"\"".to_vec();
    for &b in raw {
        if special(b) {
            out.extend(format!("\\x{b:02x}").into_bytes());
        } else {
            out.push(b);
        }
    }
    out.push(b'"');
    out
}

pub fn path_bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().to_os_string().into_vec()
}
