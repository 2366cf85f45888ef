//! Running programs: the dupmirror binary under test above all, with a timeout, its output
//! captured, and the checks of how a run ended that every test shares: success, a clean
//! refusal, or the one error line of dupmirror's contract.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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

    /// Panic unless the program exited 0 and wrote nothing on stderr (a checker's warnings,
    /// groff's or systemd-analyze's, count as failures).
    pub fn assert_quiet(&self, context: &str) -> &Self {
        self.assert_ok(context);
        if !self.stderr.is_empty() {
            panic!("{context}: expected an empty stderr\n{}", self.describe());
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
        self.assert_no_crash(context);
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

    /// Panic if the program was killed by a signal or panicked (whether it succeeded or not).
    pub fn assert_no_crash(&self, context: &str) -> &Self {
        if self.status.code().is_none() {
            panic!("{context}: killed by a signal\n{}", self.describe());
        }
        if self.stderr.contains("panicked") || self.stderr.contains("RUST_BACKTRACE") {
            panic!("{context}: dupmirror panicked\n{}", self.describe());
        }
        self
    }

    /// The whole contract of a failed run: refused as [`Run::assert_refused`] says, one of
    /// the documented exit `statuses` (README, `dupmirror::exit`), and stderr exactly one
    /// line, `dupmirror: error: ...` (runs that print progress or retries pass `--quiet`).
    pub fn assert_one_error_line(
        &self,
        context: &str,
        keywords: &[&str],
        statuses: &[i32],
    ) -> &Self {
        self.assert_refused(context, keywords);
        assert!(
            self.status.code().is_some_and(|c| statuses.contains(&c)),
            "{context}: exit status {:?}, expected one of {statuses:?}\n{}",
            self.status.code(),
            self.stderr
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "{context}: expected one error line, got:\n{}",
            self.stderr
        );
        assert!(
            lines[0].starts_with("dupmirror: error: "),
            "{context}: {:?}",
            lines[0]
        );
        self
    }

    /// Panic if any of `secrets` shows in the output.
    pub fn assert_no_secret(&self, secrets: &[&str], context: &str) -> &Self {
        let out = self.stdout_text();
        for s in secrets {
            assert!(
                !out.contains(s) && !self.stderr.contains(s),
                "{context}: a secret was printed\n--- stdout ---\n{out}\n--- stderr ---\n{}",
                self.stderr
            );
        }
        self
    }
}

pub fn truncate_text(s: &str, max: usize) -> String {
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

/// Run `cmd` (a checker, an installer, a script under test) as `run_with_timeout` does,
/// with the suite's timeout.
pub fn run_command(cmd: Command) -> Run {
    run_with_timeout(cmd, timeout())
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
    let output = collect_output(&mut child);
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
    let (stdout, stderr) = output();
    Run {
        cmdline,
        status,
        stdout,
        stderr,
    }
}

/// Reads a spawned child's piped stdout and stderr on threads (so neither pipe fills up);
/// the returned function waits for both: (stdout, stderr as text).
pub fn collect_output(child: &mut Child) -> impl FnOnce() -> (Vec<u8>, String) {
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut v);
            }
            v
        })
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as _));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as _));
    move || {
        let stdout = out.join().unwrap();
        let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
        (stdout, stderr)
    }
}

/// Makes `cmd` run with the resource limit `resource` (`libc::RLIMIT_*`) set to `bytes`.
pub fn limit_resource(cmd: &mut Command, resource: libc::__rlimit_resource_t, bytes: u64) {
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(resource, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Run `prog args` (a tool the harness needs: touch, mkfifo, cp, openssl...) and panic with
/// its stderr unless it succeeds.
pub fn run_tool<I, S>(prog: &str, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(prog);
    cmd.args(args);
    let r = run_with_timeout(cmd, Duration::from_secs(120));
    r.assert_ok(prog);
    r
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
    run_with_timeout(dupmirror_command(args, env), timeout())
}

/// The command [`dupmirror_env`] runs, for tests that run it their own way (another user,
/// a memory limit, several at once).
pub fn dupmirror_command<I, S>(args: I, env: &[(OsString, OsString)]) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    command_for(&dupmirror_bin(), args, env)
}

/// [`dupmirror_command`] run as another user, with the folder holding the copy of the binary
/// it runs (keep it until the command ends). The checkout's `target/` may lie below a folder
/// only its owner can enter (a clone into `mktemp -d`, as a clean CI run makes), so the
/// binary is copied into a folder anyone can enter.
pub fn dupmirror_command_as<I, S>(
    uid: u32,
    args: I,
    env: &[(OsString, OsString)],
) -> (Command, tempfile::TempDir)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    use std::os::unix::fs::PermissionsExt;
    let reachable = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(reachable.path(), std::fs::Permissions::from_mode(0o755))
        .expect("open the binary's folder to every user");
    let bin = reachable.path().join("dupmirror");
    std::fs::copy(dupmirror_bin(), &bin).expect("copy the binary where the other user can run it");
    let mut cmd = command_for(&bin, args, env);
    cmd.uid(uid).gid(uid);
    (cmd, reachable)
}

fn command_for<I, S>(bin: &Path, args: I, env: &[(OsString, OsString)]) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("PASSPHRASE")
        .env_remove("GNUPGHOME")
        .env_remove("DUPMIRROR_PASSWORD")
        .env_remove("FTP_PASSWORD")
        .env("NETRC", "/dev/null");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// The first `name` on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
