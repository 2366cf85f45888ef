//! Running a fleet (issue 13): `dupmirror run` over a configuration file with local, HTTP
//! (nginx) and FTP (pyftpdlib) mirrors and one whose source is down; the metrics file
//! checked by `promtool`; hooks and their changed-path list against the oracle; one-line
//! configuration errors; every documented exit status; daemon log lines; the shipped
//! systemd units; man pages and completions; the .deb built, inspected and installed.

use crate::support::process::{dupmirror_bin, run_command, run_tool};
use crate::support::remote::*;
use crate::support::source::osstr;
use crate::support::*;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn os(s: impl AsRef<std::ffi::OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

/// Writes a configuration file with `mode`.
fn write_config(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// `dupmirror ARGS`, showing the configuration in the panic message of a failed check.
fn dm(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Run {
    dupmirror(args.iter().map(|a| a.as_ref()))
}

fn exit_code(run: &Run) -> i32 {
    run.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {}", run.stderr))
}

/// The paths whose node differs between two trees, or that only one has.
fn differing(before: &Tree, after: &Tree) -> BTreeSet<Vec<u8>> {
    let keys: BTreeSet<&Vec<u8>> = before.nodes.keys().chain(after.nodes.keys()).collect();
    keys.into_iter()
        .filter(|k| before.nodes.get(*k) != after.nodes.get(*k))
        .cloned()
        .collect()
}

fn nul_list(path: &Path) -> BTreeSet<Vec<u8>> {
    let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        data.is_empty() || data.ends_with(&[0]),
        "not NUL-terminated"
    );
    data.split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn show(paths: &BTreeSet<Vec<u8>>) -> Vec<String> {
    paths
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// `series{mirror="NAME"} VALUE` lines of a Prometheus text file.
fn metric(text: &str, series: &str, mirror: &str) -> Option<f64> {
    let prefix = format!("{series}{{mirror=\"{mirror}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
}

fn have_tool(program: &str, package: &str) -> bool {
    have(program, package)
}

fn js(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn run_syncs_local_http_and_ftp_mirrors_and_reports_the_one_that_is_down() {
    let Some(dup) = duplicity(Version::V08) else {
        return;
    };
    let site = Site::new();
    let mut lab = served_lab(Lab::new(dup), &site.www);
    lab.fs.write("a.txt", b"one\n");
    lab.fs.write("d/big.bin", &random_bytes(1, 300_000));
    lab.full(t(0));
    lab.fs.write("a.txt", b"two\n");
    lab.fs.write("d/new", b"new\n");
    lab.inc(t(1));
    let Some(http) = nginx(&site.www, &site.srv, &NginxOptions::default()) else {
        return;
    };
    let login = Some(("bob".to_string(), "ftp-pa55".to_string()));
    let Some(ftp) = ftp_server(
        &site.www,
        &site.srv,
        &FtpOptions {
            login,
            ..FtpOptions::default()
        },
    ) else {
        return;
    };
    let hosts = lab.fresh("hosts");
    let metrics = hosts.join("dupmirror.prom");
    let config = hosts.join("dupmirror.toml");
    fs::create_dir_all(&hosts).unwrap();
    let down = format!("http://127.0.0.1:{}/repo/", free_port());
    let text = format!(
        "[defaults]\nretries = 0\nconnect-timeout = 2\nmetrics-file = {metrics:?}\n\n\
         [mirror.local]\nsource = {local:?}\ndest = {d1:?}\n\n\
         [mirror.http]\nsource = {http:?}\ndest = {d2:?}\n\n\
         [mirror.ftp]\nsource = {ftp:?}\ndest = {d3:?}\n\n\
         [mirror.down]\nsource = {down:?}\ndest = {d4:?}\n",
        local = lab.repo.display().to_string(),
        http = http.url,
        ftp = ftp.url,
        d1 = hosts.join("local").display().to_string(),
        d2 = hosts.join("http").display().to_string(),
        d3 = hosts.join("ftp").display().to_string(),
        d4 = hosts.join("down").display().to_string(),
    );
    // The FTP URL holds a password: the file must be private.
    write_config(&config, &text, 0o644);
    let refused = dm(&[&"run", &"--config", &config]);
    assert_eq!(exit_code(&refused), 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("key \"source\" holds a password"));
    assert!(!refused.stderr.contains("ftp-pa55"), "{}", refused.stderr);
    write_config(&config, &text, 0o600);

    let check = dm(&[&"run", &"--check", &"--config", &config]);
    check.assert_ok("run --check");
    assert!(!check.stdout_text().contains("ftp-pa55"));
    assert_eq!(
        check.stdout_text().lines().count(),
        5,
        "{}",
        check.stdout_text()
    );

    let run = dm(&[&"run", &"--config", &config, &"--json", &"--jobs", &"2"]);
    assert_eq!(
        exit_code(&run),
        4,
        "the down mirror's status (source unreachable)\n{}",
        run.stderr
    );
    assert!(!run.stderr.contains("ftp-pa55"), "{}", run.stderr);
    let expected = lab.restore(t(1));
    for name in ["local", "http", "ftp"] {
        expected.assert_same(&Tree::capture(&hosts.join(name)), Compare::default(), name);
    }
    let reports: BTreeMap<String, serde_json::Value> = run
        .stdout_text()
        .lines()
        .map(|l| {
            let j = js(l);
            (j["mirror"].as_str().unwrap().to_string(), j)
        })
        .collect();
    assert_eq!(reports.len(), 4, "{}", run.stdout_text());
    for (name, r) in &reports {
        let ok = name != "down";
        assert_eq!(r["ok"].as_bool(), Some(ok), "{name}: {}", run.stdout_text());
        assert_eq!(r["exit_status"].as_u64(), Some(if ok { 0 } else { 4 }));
    }
    let error_lines: Vec<&str> = run.stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(error_lines.len(), 1, "{}", run.stderr);
    assert!(
        error_lines[0].starts_with("dupmirror: error: down: "),
        "{}",
        run.stderr
    );

    let text = fs::read_to_string(&metrics).unwrap();
    if have_tool("promtool", "prometheus") {
        let mut cmd = Command::new("promtool");
        cmd.args(["check", "metrics"])
            .stdin(fs::File::open(&metrics).unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics:\n{}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for name in ["local", "http", "ftp"] {
        assert_eq!(metric(&text, "dupmirror_last_run_success", name), Some(1.0));
        assert_eq!(metric(&text, "dupmirror_lag_seconds", name), Some(0.0));
        assert_eq!(
            metric(&text, "dupmirror_backup_timestamp_seconds", name),
            Some(t(1) as f64)
        );
        assert_eq!(
            metric(&text, "dupmirror_sets_applied_total", name),
            Some(2.0)
        );
        assert_eq!(metric(&text, "dupmirror_failures_total", name), Some(0.0));
    }
    assert!(metric(&text, "dupmirror_downloaded_bytes_total", "http").unwrap() > 300_000.0);
    assert_eq!(
        metric(&text, "dupmirror_downloaded_bytes_total", "local"),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "dupmirror_last_run_success", "down"),
        Some(0.0)
    );
    assert_eq!(metric(&text, "dupmirror_failures_total", "down"), Some(1.0));
    assert_eq!(metric(&text, "dupmirror_lag_seconds", "down"), None);

    // A second run of one mirror keeps the others' series and counts on.
    let again = dm(&[&"run", &"--config", &config, &"http"]);
    again.assert_ok("run http");
    let text = fs::read_to_string(&metrics).unwrap();
    assert_eq!(metric(&text, "dupmirror_runs_total", "http"), Some(2.0));
    assert_eq!(metric(&text, "dupmirror_runs_total", "down"), Some(1.0));

    let status = dm(&[&"status", &"--config", &config]);
    status.assert_ok("status --config");
    let lines = status.stdout_text();
    assert_eq!(lines.lines().count(), 4, "{lines}");
    let iso1 = iso_time(t(1));
    for name in ["local", "http", "ftp"] {
        let line = lines
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .unwrap();
        assert!(
            line.contains(&format!(
                "holds {iso1}, source has {iso1}, lag 0s; last run ok"
            )),
            "{line}"
        );
    }
    let line = lines.lines().find(|l| l.starts_with("down:")).unwrap();
    assert!(
        line.contains("holds nothing") && line.contains("FAILED") && line.contains("exit status 4"),
        "{line}"
    );
}

/// Hooks: the changed list is exactly what differs between the oracle trees before and
/// after a run applying several sets; the environment; a failing pre-sync skips the sync;
/// a failing post-sync exits 3 and leaves DEST synced. `sync --changed-list` writes the
/// same list.
#[test]
fn hooks_see_exactly_the_changed_paths_and_their_failures_count() {
    let Some(dup) = duplicity(Version::V3) else {
        return;
    };
    let mut lab = Lab::new(dup);
    let fs_ = &lab.fs;
    fs_.write("keep/same.txt", b"same\n");
    fs_.write("keep/edit.txt", b"version one\n");
    fs_.write("gone/deep/x", b"x\n");
    fs_.write("gone/y", b"y\n");
    fs_.write("top.txt", b"top\n");
    fs_.symlink("link", "top.txt");
    lab.full(t(0));
    lab.fs.write("keep/edit.txt", b"version two, longer\n");
    lab.fs.write(b"new dir/n\xffame", b"new\n");
    lab.inc(t(1));
    remove_tree(&lab.fs.path("gone"));
    lab.fs.chmod("top.txt", 0o600);
    lab.fs.write("keep/more", b"more\n");
    lab.inc(t(2));

    let hosts = lab.fresh("hosts");
    fs::create_dir_all(&hosts).unwrap();
    let dest = hosts.join("m");
    let out = hosts.join("hook-out");
    fs::create_dir(&out).unwrap();
    let config = hosts.join("c.toml");
    let post = format!(
        "env | grep ^DUPMIRROR_ | sort > {o}/env && cp \"$DUPMIRROR_CHANGED_LIST\" {o}/list \
         && cp \"$DUPMIRROR_REPORT\" {o}/report.json",
        o = out.display()
    );
    let write = |k: i64, post: &str| {
        write_config(
            &config,
            &format!(
                "[mirror.m]\nsource = {:?}\ndest = {:?}\ntime = \"{}\"\npost-sync = {post:?}\n",
                lab.repo.display().to_string(),
                dest.display().to_string(),
                t(k)
            ),
            0o644,
        )
    };
    write(0, &post);
    dm(&[&"run", &"--config", &config]).assert_ok("first run");
    assert!(
        out.join("list").exists(),
        "the post-sync hook ran after the first sync"
    );
    let before = lab.restore(t(0));
    before.assert_same(&Tree::capture(&dest), Compare::default(), "t0");
    fs::remove_file(out.join("list")).unwrap();

    // Nothing new: the post-sync hook does not run.
    dm(&[&"run", &"--config", &config]).assert_ok("nothing new");
    assert!(
        !out.join("list").exists(),
        "post-sync ran although DEST did not change"
    );

    // Two incrementals in one run.
    write(2, &post);
    dm(&[&"run", &"--config", &config]).assert_ok("two sets");
    let after = lab.restore(t(2));
    after.assert_same(&Tree::capture(&dest), Compare::default(), "t2");
    let expected = differing(&before, &after);
    let listed = nul_list(&out.join("list"));
    assert_eq!(
        show(&listed),
        show(&expected),
        "changed list vs oracle trees"
    );
    assert!(
        expected.contains(b"gone/deep/x".as_slice())
            && expected.contains(b"new dir/n\xffame".as_slice())
    );
    let env: BTreeMap<String, String> = fs::read_to_string(out.join("env"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(env["DUPMIRROR_MIRROR"], "m");
    assert_eq!(env["DUPMIRROR_DEST"], dest.display().to_string());
    assert_eq!(env["DUPMIRROR_FROM"], iso_time(t(0)));
    assert_eq!(env["DUPMIRROR_TO"], iso_time(t(2)));
    assert_eq!(env["DUPMIRROR_CHANGED"], expected.len().to_string());
    let report = js(&fs::read_to_string(out.join("report.json")).unwrap());
    assert_eq!(report["to"].as_str(), Some(iso_time(t(2)).as_str()));
    assert_eq!(report["sets"].as_array().map(Vec::len), Some(2));

    // The same list from `sync --changed-list`, for scripts that call sync directly.
    let host = lab.host("direct");
    host.sync(&lab.repo, &["--time", &t(0).to_string()])
        .assert_ok("direct t0");
    let list = host.dir.join("changed");
    host.sync(&lab.repo, &["--changed-list", list.to_str().unwrap()])
        .assert_ok("direct t2");
    assert_eq!(
        show(&nul_list(&list)),
        show(&expected),
        "sync --changed-list"
    );

    // A failing pre-sync hook skips the sync: DEST stays at t0.
    let dest_t0 = lab.host("pre");
    dest_t0
        .sync(&lab.repo, &["--time", &t(0).to_string()])
        .assert_ok("pre t0");
    let skipped = dupmirror_env(
        [
            os("sync"),
            os(&lab.repo),
            os(&dest_t0.dest),
            os("--state-dir"),
            os(&dest_t0.state),
            os("--pre-sync"),
            os("echo not mounted >&2; exit 9"),
        ],
        &[],
    );
    assert_hook_failed(
        &skipped,
        "pre-sync hook failed (exit status 9): not mounted",
    );
    before.assert_same(
        &Tree::capture(&dest_t0.dest),
        Compare::default(),
        "pre-sync skipped",
    );

    // A failing post-sync hook: status 3, its stderr tail, DEST synced all the same.
    write(0, &post);
    remove_tree(&dest);
    dm(&[&"run", &"--config", &config]).assert_ok("back to t0");
    write(2, "echo reload failed >&2; exit 5");
    let failed = dm(&[&"run", &"--config", &config, &"--json"]);
    assert_hook_failed(
        &failed,
        "post-sync hook failed (exit status 5): reload failed",
    );
    let r = js(failed.stdout_text().trim());
    assert_eq!(r["exit"].as_str(), Some("hook-failed"));
    assert_eq!(r["sync"]["to"].as_str(), Some(iso_time(t(2)).as_str()));
    after.assert_same(
        &Tree::capture(&dest),
        Compare::default(),
        "synced despite post-sync",
    );
}

/// A failed hook: exit status 3 and `message` (the hook, its status and its stderr tail).
fn assert_hook_failed(run: &Run, message: &str) {
    assert_eq!(exit_code(run), 3, "{}", run.stderr);
    assert!(run.stderr.contains(message), "{}", run.stderr);
}

/// Each configuration error is one line naming the file, the line and the key; exit 2.
#[test]
fn configuration_errors_are_one_line_with_file_line_and_key() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("bad.toml");
    let cases = [
        (
            "[mirror.a]\nsource = \"/r\"\ndest = \"/d\"\nbwlimt = \"1M\"\n",
            0o600,
            ":4: mirror.a: key \"bwlimt\"",
            "unknown key",
        ),
        (
            "[defaults]\nretries = \"many\"\n[mirror.a]\nsource = \"/r\"\ndest = \"/d\"\n",
            0o600,
            ":2: defaults: key \"retries\"",
            "invalid value",
        ),
        (
            "[mirror.a]\nsource = \"/r\"\nno-fsync = 1\ndest = \"/d\"\n",
            0o600,
            ":3: mirror.a: key \"no-fsync\"",
            "expected true or false",
        ),
        (
            "[mirror.a]\nsource = \"/r\"\n",
            0o600,
            ":1: mirror.a: key \"dest\"",
            "missing",
        ),
        (
            "[mirror.a]\ndest = \"/d\"\nsource = \"ftp://u:secret@h/r\"\n",
            0o604,
            ":3: key \"source\"",
            "readable by group or others",
        ),
    ];
    for (text, mode, at, what) in cases {
        write_config(&path, text, mode);
        let run = dm(&[&"run", &"--check", &"--config", &path]);
        assert_eq!(exit_code(&run), 2, "{text:?}: {}", run.stderr);
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{text:?}: {}", run.stderr);
        let expected_start = format!("dupmirror: error: {}{at}", path.display());
        assert!(
            lines[0].starts_with(&expected_start) && lines[0].contains(what),
            "{text:?}: {}",
            lines[0]
        );
        assert!(!lines[0].contains("secret@"), "{}", lines[0]);
    }
    // $DUPMIRROR_CONFIG names the file when --config does not.
    write_config(&path, "[mirror.a]\nsource = \"/r\"\ndest = \"/d\"\n", 0o600);
    let run = dupmirror_env(["run", "--check"], &[(os("DUPMIRROR_CONFIG"), os(&path))]);
    run.assert_ok("DUPMIRROR_CONFIG");
    assert!(
        run.stdout_text().starts_with("a: /r -> /d"),
        "{}",
        run.stdout_text()
    );
}

/// A copy of a committed test repository that a test may damage.
fn testdata_copy(name: &str, into: &Path) -> PathBuf {
    let src = manifest_dir().join("testdata").join(name);
    let dst = into.join(name.replace('/', "-"));
    let st = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap();
    assert!(st.success());
    dst
}

/// Every documented exit status comes from a real failure of its kind (0, 2, 3 and 4 are
/// produced by the tests above).
#[test]
fn each_failure_has_its_documented_exit_status() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let sync = |repo: &Path, dest: &str, extra: &[&str], env: &[(OsString, OsString)]| {
        let mut args = vec![os("sync"), os(repo), os(root.join(dest))];
        args.extend(extra.iter().map(os));
        dupmirror_env(args, env)
    };

    // 5: another process holds the lock.
    let plain = manifest_dir().join("testdata/repos/plain-08");
    sync(&plain, "locked", &[], &[]).assert_ok("first sync");
    let lock = fs::File::options()
        .write(true)
        .open(root.join(".locked.dupmirror/lock"))
        .unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    let run = sync(&plain, "locked", &[], &[]);
    assert_eq!(exit_code(&run), 5, "{}", run.stderr);
    drop(held);

    // 6: a wrong passphrase.
    let encrypted = manifest_dir().join("testdata/encrypted/repo");
    let gnupg = tempfile::tempdir().unwrap();
    let env = [
        (os("PASSPHRASE"), os("not the passphrase")),
        (os("GNUPGHOME"), os(gnupg.path())),
    ];
    let run = sync(&encrypted, "enc", &[], &env);
    assert_eq!(exit_code(&run), 6, "{}", run.stderr);

    // 7: a volume whose bytes do not match its manifest.
    let damaged = testdata_copy("repos/plain-08", root);
    let volume = fs::read_dir(&damaged)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("full.") && p.to_string_lossy().contains(".vol1."))
        .unwrap();
    let mut bytes = fs::read(&volume).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&volume, bytes).unwrap();
    let run = sync(&damaged, "damaged", &[], &[]);
    assert_eq!(exit_code(&run), 7, "{}", run.stderr);

    // 8: verify finds DEST changed.
    sync(&plain, "edited", &[], &[]).assert_ok("sync to verify");
    let tree = Tree::capture(&root.join("edited"));
    let (rel, _) = tree
        .nodes
        .iter()
        .find(|(_, n)| n.kind == Kind::File)
        .expect("a regular file");
    let victim = root.join("edited").join(osstr(rel));
    fs::write(&victim, b"edited behind dupmirror's back").unwrap();
    let run = dupmirror([os("verify"), os(&plain), os(root.join("edited"))]);
    assert_eq!(exit_code(&run), 8, "{}", run.stderr);

    // 2: a usage error.
    let run = dupmirror(["sync", "--no-such-option"]);
    assert_eq!(exit_code(&run), 2, "{}", run.stderr);
}

/// Off a terminal: one line per event; under systemd (stderr is the `JOURNAL_STREAM`) with
/// syslog priority prefixes; `--log-format json` one object per line.
#[test]
fn daemon_log_lines_carry_priorities_or_json() {
    let d = tempfile::tempdir().unwrap();
    let config = d.path().join("c.toml");
    let down = format!("http://127.0.0.1:{}/repo/", free_port());
    write_config(
        &config,
        &format!(
            "[mirror.ok]\nsource = {:?}\ndest = {:?}\n[mirror.down]\nsource = {down:?}\n\
             dest = {:?}\nretries = 1\n",
            manifest_dir()
                .join("testdata/repos/plain-08")
                .display()
                .to_string(),
            d.path().join("ok").display().to_string(),
            d.path().join("down").display().to_string()
        ),
        0o600,
    );
    let stderr_of = |extra: &[&str], journal: bool| -> String {
        let log = d.path().join("stderr");
        let file = fs::File::create(&log).unwrap();
        let mut cmd = Command::new(dupmirror_bin());
        cmd.args(extra).args(["run", "--config"]).arg(&config);
        cmd.stdout(Stdio::null()).stderr(file.try_clone().unwrap());
        if journal {
            let m = file.metadata().unwrap();
            cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
        } else {
            cmd.env_remove("JOURNAL_STREAM");
        }
        let status = cmd.status().unwrap();
        assert_eq!(status.code(), Some(4));
        fs::read_to_string(&log).unwrap()
    };
    let text = stderr_of(&[], true);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>dupmirror: warning: down: ") && l.contains("retry 1 of 1")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<3>dupmirror: error: down: ")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>dupmirror: info: ok: synced")),
        "{text}"
    );
    assert!(lines.iter().all(|l| l.starts_with('<')), "{text}");
    let text = stderr_of(&[], false);
    assert!(text.lines().all(|l| l.starts_with("dupmirror: ")), "{text}");
    let text = stderr_of(&["--log-format", "json"], false);
    for l in text.lines() {
        let j = js(l);
        assert!(
            ["info", "warning", "error"].contains(&j["level"].as_str().unwrap()),
            "{l}"
        );
        assert!(
            ["ok", "down"].contains(&j["mirror"].as_str().unwrap()),
            "{l}"
        );
    }
}

/// The units in contrib/systemd pass `systemd-analyze verify`, and the all-mirrors pair is
/// the per-mirror pair with only its names and command changed.
#[test]
fn shipped_systemd_units_verify() {
    let units = manifest_dir().join("contrib/systemd");
    let read = |n: &str| fs::read_to_string(units.join(n)).unwrap();
    let differing_lines = |a: &str, b: &str| -> Vec<String> {
        let (a, b) = (read(a), read(b));
        a.lines()
            .zip(b.lines())
            .filter(|(x, y)| x != y)
            .map(|(x, _)| x.split(['=', ' ']).next().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        differing_lines("dupmirror@.service", "dupmirror.service"),
        ["#", "#", "Description", "#", "ExecStart"]
    );
    assert_eq!(
        differing_lines("dupmirror@.timer", "dupmirror.timer"),
        ["#", "Description"]
    );
    if !have_tool("systemd-analyze", "systemd") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let bin = dupmirror_bin();
    let mut names = Vec::new();
    for e in fs::read_dir(&units).unwrap() {
        let e = e.unwrap();
        let text = fs::read_to_string(e.path())
            .unwrap()
            .replace("/usr/bin/dupmirror", &bin.display().to_string());
        fs::write(d.path().join(e.file_name()), text).unwrap();
        names.push(d.path().join(e.file_name()));
    }
    assert_eq!(names.len(), 4);
    // The man page is checked by the package test, where it is installed.
    let mut verify = Command::new("systemd-analyze");
    verify.args(["verify", "--man=no"]).args(&names);
    run_command(verify).assert_quiet("systemd-analyze verify");
}

/// Man pages render without groff warnings; the completion scripts parse in their shells.
#[test]
fn man_pages_and_completions_are_well_formed() {
    let d = tempfile::tempdir().unwrap();
    dm(&[&"manpages", &d.path()]).assert_ok("manpages");
    let pages: Vec<PathBuf> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(pages.len() >= 6, "{pages:?}");
    let main_page = fs::read_to_string(d.path().join("dupmirror.1")).unwrap();
    for section in ["EXIT STATUS", "HOOKS", "ENVIRONMENT", "FILES"] {
        assert!(main_page.contains(section), "{section}");
    }
    if have_tool("groff", "groff") {
        for page in &pages {
            let mut groff = Command::new("groff");
            groff.args(["-ww", "-z", "-man"]).arg(page);
            run_command(groff).assert_quiet(&page.display().to_string());
        }
    }
    for (shell, check) in [("bash", "bash"), ("zsh", "zsh"), ("fish", "fish")] {
        let run = dm(&[&"completions", &shell]);
        run.assert_ok(shell);
        assert!(run.stdout.len() > 1000, "{shell}");
        if !have_tool(check, check) {
            continue;
        }
        let script = d.path().join(format!("completion.{shell}"));
        fs::write(&script, &run.stdout).unwrap();
        let st = Command::new(check).arg("-n").arg(&script).status().unwrap();
        assert!(st.success(), "{check} -n {}", script.display());
    }
}

/// `scripts/package.sh` builds a .deb from the tested binary; dpkg-deb shows its contents;
/// as root it is installed with `dpkg -i`, run, its man page rendered and its units
/// verified, then removed.
#[test]
fn the_deb_builds_installs_and_runs() {
    if !have_tool("dpkg-deb", "dpkg-dev") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut package = Command::new("bash");
    package
        .arg(manifest_dir().join("scripts/package.sh"))
        .arg(dupmirror_bin())
        .env("DUPMIRROR_DIST", d.path());
    let packaged = run_command(package);
    packaged.assert_ok("package.sh");
    let deb = PathBuf::from(packaged.stdout_text().trim());
    let contents = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&contents.stdout);
    for path in [
        "./usr/bin/dupmirror",
        "./usr/share/man/man1/dupmirror.1.gz",
        "./usr/share/man/man1/dupmirror-run.1.gz",
        "./usr/share/bash-completion/completions/dupmirror",
        "./usr/share/zsh/vendor-completions/_dupmirror",
        "./usr/share/fish/vendor_completions.d/dupmirror.fish",
        "./lib/systemd/system/dupmirror@.service",
        "./lib/systemd/system/dupmirror@.timer",
        "./lib/systemd/system/dupmirror.service",
        "./lib/systemd/system/dupmirror.timer",
        "./usr/share/doc/dupmirror/dupmirror.toml.example",
        "./usr/share/doc/dupmirror/README.md",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(path)),
            "{path} not in\n{listing}"
        );
    }
    let info = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Package")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&info.stdout).trim(), "dupmirror");
    if !is_root() {
        eprintln!("skipped: installing the .deb needs root");
        return;
    }
    run_tool("dpkg", [OsStr::new("-i"), deb.as_os_str()]);
    let version = Command::new("/usr/bin/dupmirror")
        .arg("--version")
        .output()
        .unwrap();
    let checks = || {
        assert_eq!(
            String::from_utf8_lossy(&version.stdout).trim(),
            format!("dupmirror {}", env!("CARGO_PKG_VERSION"))
        );
        if have_tool("man", "man-db") {
            let mut man = Command::new("man");
            man.args(["-l", "-Tutf8", "/usr/share/man/man1/dupmirror.1.gz"])
                .env("MANWIDTH", "80");
            run_command(man).assert_quiet("man -l");
        }
        // The example config passes `run --check`.
        run_tool(
            "/usr/bin/dupmirror",
            [
                "run",
                "--check",
                "--config",
                "/usr/share/doc/dupmirror/dupmirror.toml.example",
            ],
        );
        if have_tool("systemd-analyze", "systemd") {
            let mut verify = Command::new("systemd-analyze");
            verify.args([
                "verify",
                "/lib/systemd/system/dupmirror.service",
                "/lib/systemd/system/dupmirror@.service",
                "/lib/systemd/system/dupmirror.timer",
                "/lib/systemd/system/dupmirror@.timer",
            ]);
            run_command(verify).assert_quiet("installed units");
        }
    };
    let result = std::panic::catch_unwind(checks);
    run_tool("dpkg", ["--purge", "dupmirror"]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
