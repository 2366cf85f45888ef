//! Remote sources for the tests: real servers on 127.0.0.1 started and stopped by the tests
//! themselves, each publishing a lab's repository.
//!
//! * nginx with `autoindex` (HTML or JSON; it supports `Range`), optionally over TLS and with
//!   basic auth, run in the foreground with every path inside the test directory;
//! * `python3 -m http.server` (no `Range`);
//! * pyftpdlib (Debian's `/usr/bin/python3`), anonymous or with a login, and through a small
//!   script for what its command line lacks: explicit TLS, a server without `MLSD`.
//!
//! Every server serves a folder that contains the repository as `repo/` and is stopped when
//! its guard drops. A missing server program skips the test ("skipped: ...") unless
//! `DUPMIRROR_REQUIRE_ORACLE=1`, which makes it a failure, as for upstream duplicity.
//! Ports come from binding port 0.

use super::lab::{assert_dest_unchanged, Host, Lab};
use super::oracle::{duplicity, Duplicity, Version};
use super::process::{find_on_path, Run};
use super::report::{self, SyncReport};
use super::scenario::{self, full, inc, Step};
use super::skip;
use super::source::{random_bytes, Fs};
use super::time::t;
use std::ffi::OsString;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Whether `program` can be run; if not, print "skipped: ..." (or panic when the oracle is
/// required: CI installs every server).
pub fn have(program: &str, package: &str) -> bool {
    let found = if program.contains('/') {
        Path::new(program).is_file()
    } else {
        find_on_path(program).is_some()
    };
    if !found {
        skip(&format!(
            "{program} is not installed; run scripts/install-deps.sh ({package})"
        ));
    }
    found
}

fn have_pyftpdlib() -> bool {
    if !have("/usr/bin/python3", "python3") {
        return false;
    }
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import pyftpdlib, OpenSSL"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        skip("python3-pyftpdlib or python3-openssl is not installed; run scripts/install-deps.sh");
    }
    ok
}

/// A server process, killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    /// The URL of the repository folder (ends with `/` for HTTP).
    pub url: String,
    /// Where the server logs requests, when it does.
    pub access_log: Option<PathBuf>,
    what: String,
}

impl Server {
    pub(super) fn start(
        mut cmd: Command,
        port: u16,
        url: String,
        log: &Path,
        what: &str,
    ) -> Server {
        let out = fs::File::create(log).expect("server log");
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let mut server = Server {
            child,
            port,
            url,
            access_log: None,
            what: what.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            if let Ok(Some(st)) = server.child.try_wait() {
                panic!(
                    "{what} exited with {st} before listening on {port}:\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not listen on {port} within 15 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Requests logged so far whose line contains `needle`. Waits a moment first: a server
    /// may log a request just after answering it.
    pub fn requests(&self, needle: &str) -> Vec<String> {
        let log = self
            .access_log
            .as_ref()
            .expect("this server keeps no access log");
        std::thread::sleep(Duration::from_millis(200));
        fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.kill().is_err() {
            eprintln!(
                "{} (pid {}) had already stopped",
                self.what,
                self.child.id()
            );
        }
        let _ = self.child.wait();
    }
}

/// How an nginx test server is set up.
#[derive(Default, Clone)]
pub struct NginxOptions {
    /// `autoindex_format json` instead of HTML.
    pub json: bool,
    /// Serve HTTPS with this certificate and key (PEM paths).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Require basic auth: user and password.
    pub login: Option<(String, String)>,
}

/// nginx serving `root` (which holds `repo/`) on a free port; `None` when nginx is missing.
pub fn nginx(root: &Path, scratch: &Path, opts: &NginxOptions) -> Option<Server> {
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).is_file());
    let Some(bin) = bin else {
        have("nginx", "nginx-light");
        return None;
    };
    let dir = scratch.join(format!("nginx{}", free_port()));
    fs::create_dir_all(dir.join("tmp")).unwrap();
    let port = free_port();
    let d = dir.display();
    let (listen, scheme) = match &opts.tls {
        Some((cert, key)) => (
            format!(
                "listen 127.0.0.1:{port} ssl; ssl_certificate {}; ssl_certificate_key {};",
                cert.display(),
                key.display()
            ),
            "https",
        ),
        None => (format!("listen 127.0.0.1:{port};"), "http"),
    };
    let auth = match &opts.login {
        Some((user, pass)) => {
            let hash = Command::new("openssl")
                .args(["passwd", "-apr1", pass])
                .output()
                .expect("openssl passwd");
            assert!(hash.status.success(), "openssl passwd failed");
            let line = format!("{user}:{}", String::from_utf8_lossy(&hash.stdout).trim());
            fs::write(dir.join("htpasswd"), line + "\n").unwrap();
            format!("auth_basic \"repo\"; auth_basic_user_file {d}/htpasswd;")
        }
        None => String::new(),
    };
    let format = if opts.json { "json" } else { "html" };
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/tmp;\n\
         proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n\
         scgi_temp_path {d}/tmp;\n  default_type application/octet-stream;\n\
         server {{\n    {listen}\n    root {root};\n    location / {{ autoindex on; \
         autoindex_format {format}; {auth} }}\n  }}\n}}\n",
        root = root.display()
    );
    fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg("-e")
        .arg(dir.join("error.log"))
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"));
    let mut server = Server::start(
        cmd,
        port,
        format!("{scheme}://127.0.0.1:{port}/repo/"),
        &dir.join("stdout.log"),
        "nginx",
    );
    server.access_log = Some(dir.join("access.log"));
    Some(server)
}

/// `python3 -m http.server` serving `root` (no `Range` support); its request log is kept.
pub fn http_server(root: &Path, scratch: &Path) -> Option<Server> {
    if !have("/usr/bin/python3", "python3") {
        return None;
    }
    let port = free_port();
    let log = scratch.join(format!("http-server{port}.log"));
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args([
        "-u",
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ])
    .arg("--directory")
    .arg(root);
    let mut server = Server::start(
        cmd,
        port,
        format!("http://127.0.0.1:{port}/repo/"),
        &log,
        "python3 -m http.server",
    );
    server.access_log = Some(log);
    Some(server)
}

/// How a pyftpdlib test server is set up.
#[derive(Default, Clone)]
pub struct FtpOptions {
    /// A login instead of anonymous access.
    pub login: Option<(String, String)>,
    /// Explicit TLS (`AUTH TLS`, required) with this certificate and key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// A server without `MLSD`/`MLST` (listing falls back to `LIST`) and without `REST`
    /// (no resuming).
    pub minimal: bool,
}

const FTP_SCRIPT: &str = r#"
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.servers import FTPServer
port, root, user, password, cert, key, minimal = sys.argv[1:8]
if cert:
    from pyftpdlib.handlers import TLS_FTPHandler as Handler
    Handler.certfile = cert
    Handler.keyfile = key
    Handler.tls_control_required = True
    Handler.tls_data_required = True
else:
    from pyftpdlib.handlers import FTPHandler as Handler
auth = DummyAuthorizer()
if user:
    auth.add_user(user, password, root, perm="elr")
else:
    auth.add_anonymous(root)
Handler.authorizer = auth
if minimal == "1":
    Handler.proto_cmds = {k: v for k, v in Handler.proto_cmds.items() if k not in ("MLSD", "MLST", "REST")}
FTPServer(("127.0.0.1", int(port)), Handler).serve_forever()
"#;

/// pyftpdlib serving `root` on a free port. A plain server runs as the package's own
/// command (`python3 -m pyftpdlib -u -P`); TLS or a minimal server go through a small script.
pub fn ftp_server(root: &Path, scratch: &Path, opts: &FtpOptions) -> Option<Server> {
    if !have_pyftpdlib() {
        return None;
    }
    let port = free_port();
    let mut cmd = Command::new("/usr/bin/python3");
    if opts.tls.is_none() && !opts.minimal {
        cmd.args([
            "-m",
            "pyftpdlib",
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-d",
        ])
        .arg(root);
        if let Some((u, p)) = &opts.login {
            cmd.args(["-u", u, "-P", p]);
        }
    } else {
        let script = scratch.join("ftpd.py");
        fs::write(&script, FTP_SCRIPT).unwrap();
        let (user, password) = opts.login.clone().unwrap_or_default();
        let (cert, key) = opts
            .tls
            .as_ref()
            .map(|(c, k)| (c.display().to_string(), k.display().to_string()))
            .unwrap_or_default();
        cmd.arg(&script)
            .arg(port.to_string())
            .arg(root)
            .args([user, password, cert, key])
            .arg(if opts.minimal { "1" } else { "0" });
    }
    let scheme = if opts.tls.is_some() { "ftps" } else { "ftp" };
    let creds = match &opts.login {
        Some((u, p)) => format!("{u}:{p}@"),
        None => String::new(),
    };
    Some(Server::start(
        cmd,
        port,
        format!("{scheme}://{creds}127.0.0.1:{port}/repo"),
        &scratch.join(format!("ftpd{port}.log")),
        "pyftpdlib",
    ))
}

/// A private CA and a certificate for 127.0.0.1 signed by it, made with `openssl`:
/// (CA certificate, server certificate, server key).
pub fn make_certs(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    if !have("openssl", "openssl") {
        return None;
    }
    fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=dupmirror test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    Some((
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    ))
}

// ---------------------------------------------------------------------------------------------
// Labs published by a server

/// Three backups of a tree with a file that spans two 1 MB volumes: a full, an
/// incremental that changes the big file and a few small ones, another that deletes and
/// adds. Run with `--volsize 1`.
pub fn multivolume_steps<'a>() -> Vec<Step<'a>> {
    vec![
        full(|fs| {
            fs.write("big.bin", &random_bytes(1, 1_400_000));
            fs.write("small/a.txt", b"alpha\n");
            fs.write("small/b.txt", b"beta\n");
            fs.write(
                "L".repeat(120),
                b"a name nginx shortens in its HTML index\n",
            );
            fs.symlink("link", "small/a.txt");
        }),
        inc(|fs| {
            let mut big = random_bytes(1, 1_400_000);
            big[1_100_000..1_100_100].copy_from_slice(&[7u8; 100]);
            fs.write("big.bin", &big);
            fs.write("small/a.txt", b"alpha, changed\n");
            fs.write("caf\u{e9} & \u{65e5}.txt", b"escaped in URLs\n");
        }),
        inc(|fs| {
            fs.remove("small/b.txt");
            fs.write("new.bin", &random_bytes(2, 200_000));
            fs.chmod("small/a.txt", 0o600);
        }),
    ]
}

/// A lab writing its repository into `<root>/repo`, which the servers publish, in volumes
/// of 1 MB.
pub fn served_lab(lab: Lab, served_root: &Path) -> Lab {
    let mut lab = lab.backup_opts(&["--volsize", "1"]);
    lab.repo = served_root.join("repo");
    lab
}

/// A lab whose repository a server publishes (fields drop in order: the server stops
/// before its site goes).
pub struct Served {
    pub lab: Lab,
    pub server: Server,
    pub site: Site,
}

/// A site, the server `start` runs on it, and a [`served_lab`] of upstream version `v` that
/// holds a first full backup, at t(0), of the tree `first` makes. `None` (the test is
/// skipped) when upstream or the server program is missing.
pub fn served(
    v: Version,
    start: impl FnOnce(&Site) -> Option<Server>,
    first: impl FnOnce(&Fs),
) -> Option<Served> {
    let dup = duplicity(v)?;
    let site = Site::new();
    let server = start(&site)?;
    let mut lab = served_lab(Lab::new(dup), &site.www);
    first(&lab.fs);
    lab.full(t(0));
    Some(Served { lab, server, site })
}

/// The scenario of [`multivolume_steps`] (see [`scenario::run`]), with every host reading
/// from the URL of the server `start` runs; skipped when the server program is missing.
pub fn oracle_over(dup: Duplicity, what: &str, start: impl FnOnce(&Site) -> Option<Server>) {
    let site = Site::new();
    let Some(server) = start(&site) else { return };
    let url = server.url.clone();
    scenario::run_from(
        served_lab(Lab::new(dup), &site.www),
        what,
        &[],
        multivolume_steps(),
        1,
        |_, _| OsString::from(&url),
    );
}

/// Like [`served`] over TLS: `start` gets the site and a certificate and key for 127.0.0.1
/// signed by a private CA (see [`make_certs`]); returns the CA file, for `--ca-file`, too.
pub fn served_tls(
    v: Version,
    start: impl FnOnce(&Site, (PathBuf, PathBuf)) -> Option<Server>,
    first: impl FnOnce(&Fs),
) -> Option<(Served, String)> {
    let mut ca = None;
    let tls = |site: &Site| {
        let (ca_file, cert, key) = make_certs(&site.srv.join("pki"))?;
        ca = Some(ca_file.display().to_string());
        start(site, (cert, key))
    };
    let published = served(v, tls, first)?;
    Some((published, ca?))
}

/// A sync by `host` from a server that only the private CA vouches for, without
/// `--ca-file`: refused with one clear line naming the certificate, without `secret`, and no
/// DEST made.
pub fn assert_untrusted(host: &Host, url: &str, ctx: &str, secret: &str) {
    let run = host.sync(url, &["--quiet", "--retries", "0"]);
    assert_one_clear_line(&run, ctx, &["certificate", "issuer"], secret);
    assert_dest_unchanged(&None, &host.tree_opt(), ctx);
}

/// nginx with the default options, as a `start` for [`served`].
pub fn plain_nginx(site: &Site) -> Option<Server> {
    nginx(&site.www, &site.srv, &NginxOptions::default())
}

/// The `--json` report of a sync.
pub fn sync_report(run: &Run) -> SyncReport {
    report::of(run)
}

/// Sizes of the repository's volume files, by name.
pub fn volume_sizes(repo: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = fs::read_dir(repo)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().contains(".vol"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    v.sort();
    v
}

/// A failed run's stderr must be the one error line of the contract (the run used
/// `--quiet`), mention one of `keywords`, and never show `secret`.
pub fn assert_one_clear_line(run: &Run, context: &str, keywords: &[&str], secret: &str) {
    // 4: the source could not be reached; 1: any other failure (a refused login...).
    run.assert_one_error_line(context, keywords, &[1, 4])
        .assert_no_secret(&[secret], context);
}

/// A short temporary folder holding `www/` (what servers publish; the repository goes to
/// `www/repo`) and `srv/` (server configuration and logs).
pub struct Site {
    _tmp: tempfile::TempDir,
    pub www: PathBuf,
    pub srv: PathBuf,
}

impl Site {
    pub fn new() -> Site {
        let tmp = tempfile::Builder::new()
            .prefix("dms")
            .tempdir_in(std::env::temp_dir())
            .expect("tempdir");
        let www = tmp.path().join("www");
        let srv = tmp.path().join("srv");
        fs::create_dir_all(&www).unwrap();
        fs::create_dir_all(&srv).unwrap();
        Site {
            _tmp: tmp,
            www,
            srv,
        }
    }
}
