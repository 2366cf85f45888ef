//! Helpers for the remote-source tests: real servers on 127.0.0.1 started and stopped by the
//! tests themselves, and small fault-injecting TCP proxies.
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

use super::*;
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

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
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
            .unwrap_or(false)
    };
    if !found {
        if require_oracle() {
            panic!(
                "{program} is not installed and DUPMIRROR_REQUIRE_ORACLE=1; run \
                 scripts/install-deps.sh ({package})"
            );
        }
        eprintln!("skipped: {program} not installed (apt-get install {package})");
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
        if require_oracle() {
            panic!("pyftpdlib or pyOpenSSL missing and DUPMIRROR_REQUIRE_ORACLE=1; run scripts/install-deps.sh");
        }
        eprintln!("skipped: python3-pyftpdlib / python3-openssl not installed");
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
    fn start(mut cmd: Command, port: u16, url: String, log: &Path, what: &str) -> Server {
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
// Fault injection

/// What a [`FaultProxy`] does to a connection it picked.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Relay this many bytes of the server's answer, then cut both sides.
    CutAfter(u64),
    /// Relay this many bytes of the server's answer, then go silent, keeping the
    /// connection open until the client gives up on it.
    StallAfter(u64),
    /// Answer the first request with `503 Service Unavailable` and close, never asking
    /// the server.
    Unavailable,
    /// Answer the request with this whole HTTP response (status line, headers, body) and
    /// close, never asking the server.
    Answer(&'static str),
}

/// S3's answer when it wants fewer requests.
pub const S3_SLOW_DOWN: &str = "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n\
    Content-Length: 126\r\nConnection: close\r\n\r\n<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
    <Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";

/// S3's answer to an access key it does not know.
pub const S3_BAD_KEY: &str = "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\n\
    Content-Length: 169\r\nConnection: close\r\n\r\n<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
    <Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does \
    not exist in our records.</Message></Error>";

/// A TCP proxy on 127.0.0.1 in front of `upstream` that spoils the first `faults`
/// connections that carry enough data for the fault (the rest pass untouched). It serves
/// at most 200 connections and stops when dropped.
pub struct FaultProxy {
    pub port: u16,
    faults_done: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(upstream: u16, fault: Fault, faults: usize) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let faults_done = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (done, halt) = (faults_done.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut served = 0;
            while !halt.load(Ordering::Relaxed) && served < 200 {
                match listener.accept() {
                    Ok((client, _)) => {
                        served += 1;
                        client.set_nonblocking(false).unwrap();
                        let done = done.clone();
                        std::thread::spawn(move || relay(client, upstream, fault, faults, &done));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FaultProxy {
            port,
            faults_done,
            stop,
            thread: Some(thread),
        }
    }

    /// How many connections were spoiled.
    pub fn faults(&self) -> usize {
        self.faults_done.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Claims one of the `limit` faults; false when all are used.
fn claim(done: &AtomicUsize, limit: usize) -> bool {
    done.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
        (n < limit).then_some(n + 1)
    })
    .is_ok()
}

fn relay(client: TcpStream, upstream: u16, fault: Fault, limit: usize, done: &AtomicUsize) {
    let timeout = Some(Duration::from_secs(30));
    let _ = client.set_read_timeout(timeout);
    let answer = match fault {
        Fault::Unavailable => Some(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
        Fault::Answer(a) => Some(a),
        _ => None,
    };
    if let Some(answer) = answer {
        if claim(done, limit) {
            let mut c = &client;
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf); // the request head
            let _ = c.write_all(answer.as_bytes());
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let _ = server.set_read_timeout(timeout);
    let (c2, s2) = match (client.try_clone(), server.try_clone()) {
        (Ok(c), Ok(s)) => (c, s),
        _ => return,
    };
    // Client to server: untouched.
    let up = std::thread::spawn(move || {
        let (mut from, mut to) = (c2, s2);
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
    // Server to client: maybe cut or stalled.
    let cut_at = match fault {
        Fault::CutAfter(n) | Fault::StallAfter(n) => Some(n),
        Fault::Unavailable | Fault::Answer(_) => None,
    };
    let (mut from, mut to) = (&server, &client);
    let mut relayed = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut n = n;
        if let Some(limit_bytes) = cut_at {
            if relayed + n as u64 > limit_bytes && claim(done, limit) {
                n = (limit_bytes - relayed) as usize;
                let _ = to.write_all(&buf[..n]);
                if let Fault::StallAfter(_) = fault {
                    // Silence until the client closes its side (or 30 s pass).
                    let _ = up.join();
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                    return;
                }
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        relayed += n as u64;
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = up.join();
}

// ---------------------------------------------------------------------------------------------
// A scenario for remote sources

/// Three backups of a tree with a file that spans two 1 MB volumes: a full, an
/// incremental that changes the big file and a few small ones, another that deletes and
/// adds. Run with `--volsize 1`.
pub fn multivolume_steps<'a>() -> Vec<scenario::Step<'a>> {
    use scenario::{full, inc};
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

/// A lab writing its repository into `<root>/repo`, which the servers publish.
pub fn served_lab(lab: Lab, served_root: &Path) -> Lab {
    let mut lab = lab.backup_opts(&["--volsize", "1"]);
    lab.repo = served_root.join("repo");
    lab
}

/// The parsed `--json` summary of a sync.
pub fn report(run: &Run) -> json::Json {
    json::parse(&run.stdout_text())
        .unwrap_or_else(|e| panic!("sync --json printed no JSON ({e}):\n{}", run.stdout_text()))
}

/// The number at `section.key` of a sync report.
pub fn number(report: &json::Json, section: &str, key: &str) -> f64 {
    match report.get(section).and_then(|t| t.get(key)) {
        Some(json::Json::Num(n)) => n.parse().expect("a JSON number"),
        other => panic!("no number at {section}.{key} in the report: {other:?}"),
    }
}

/// A byte or file count in the `transfer` part of a sync report.
pub fn transfer(report: &json::Json, key: &str) -> u64 {
    number(report, "transfer", key) as u64
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

/// A failed run's stderr must be exactly one line (the run used `--quiet`), mention one of
/// `keywords`, and never show `secret`.
pub fn assert_one_clear_line(run: &Run, context: &str, keywords: &[&str], secret: &str) {
    run.assert_refused(context, keywords);
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{context}: expected one error line, got:\n{}",
        run.stderr
    );
    assert!(
        lines[0].starts_with("dupmirror: error: "),
        "{context}: {:?}",
        lines[0]
    );
    for out in [run.stderr.as_str(), &run.stdout_text()] {
        assert!(
            !out.contains(secret),
            "{context}: the password shows in the output:\n{out}"
        );
    }
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

// ---------------------------------------------------------------------------------------------
// S3 (moto) and SFTP (OpenSSH) servers

/// The venv with moto's S3 server, boto3 and an upstream duplicity that writes into S3.
pub fn moto_venv() -> PathBuf {
    std::env::var_os("DUPMIRROR_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/moto"))
}

/// Any keys do for moto; the region must be one it knows.
pub const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "AKIDMOTOTEST"),
    ("AWS_SECRET_ACCESS_KEY", "moto-secret-never-shown"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
];

/// An S3 server (moto) on 127.0.0.1 with `bucket` created; `url` is its endpoint.
pub struct S3Server {
    pub server: Server,
    pub endpoint: String,
}

impl S3Server {
    /// Runs a boto3 snippet against the server (`s3` is a client for it).
    pub fn boto3(&self, code: &str) {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{}')\n{code}\n",
            self.endpoint
        );
        let mut cmd = Command::new(moto_venv().join("bin/python"));
        cmd.arg("-c").arg(script);
        for (k, v) in AWS_ENV {
            cmd.env(k, v);
        }
        run_with_timeout(cmd, Duration::from_secs(120)).assert_ok("boto3");
    }
}

/// moto's S3 server with an empty bucket; `None` (skipped) when the venv is missing.
pub fn moto(scratch: &Path, bucket: &str) -> Option<S3Server> {
    let bin = moto_venv().join("bin/moto_server");
    if !have(
        &bin.display().to_string(),
        "scripts/install-deps.sh (moto venv)",
    ) {
        return None;
    }
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    let endpoint = format!("http://127.0.0.1:{port}");
    let server = Server::start(
        cmd,
        port,
        endpoint.clone(),
        &scratch.join(format!("moto{port}.log")),
        "moto_server",
    );
    let s3 = S3Server { server, endpoint };
    s3.boto3(&format!("s3.create_bucket(Bucket='{bucket}')"));
    Some(s3)
}

/// Upstream duplicity 3.x from the moto venv (it has boto3 for `boto3+s3://`).
pub fn s3_duplicity() -> Option<Duplicity> {
    let bin = moto_venv().join("bin/duplicity");
    if !have(
        &bin.display().to_string(),
        "scripts/install-deps.sh (moto venv)",
    ) {
        return None;
    }
    let out = Command::new(&bin).arg("--version").output().ok()?;
    Some(Duplicity {
        version: Version::V3,
        bin,
        version_text: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    })
}

/// A lab whose upstream duplicity writes straight into `s3://BUCKET/PREFIX` on `s3`.
pub fn s3_lab(dup: Duplicity, s3: &S3Server, bucket: &str, prefix: &str) -> Lab {
    let mut lab = Lab::new(dup)
        .backup_opts(&["--volsize", "1"])
        .repo_opts(&["--s3-endpoint-url", &s3.endpoint]);
    for (k, v) in AWS_ENV {
        lab = lab.env(k, v);
        lab.dupmirror_env.push((k.into(), v.into()));
    }
    lab.dupmirror_env
        .push(("AWS_ENDPOINT_URL".into(), s3.endpoint.clone().into()));
    lab.target = Some(format!("boto3+s3://{bucket}/{prefix}"));
    lab
}

/// OpenSSH's sshd on 127.0.0.1 with its own host key, and a client configuration (key,
/// known_hosts) for dupmirror's `ssh`: `--ssh-config config`.
pub struct Sshd {
    pub server: Server,
    pub dir: PathBuf,
    /// `ssh -F` file: the test key, the known_hosts below, user root.
    pub config: PathBuf,
    pub known_hosts: PathBuf,
}

impl Sshd {
    /// The SFTP URL of an absolute folder on this server.
    pub fn url(&self, dir: &Path) -> String {
        format!(
            "sftp://root@127.0.0.1:{}/{}",
            self.server.port,
            dir.display()
        )
    }

    /// The host key as a known_hosts line for `[127.0.0.1]:port`.
    pub fn known_hosts_line(&self, port: u16) -> String {
        let key = fs::read_to_string(self.dir.join("hostkey.pub")).unwrap();
        let mut words = key.split_whitespace();
        let (kind, blob) = (words.next().unwrap(), words.next().unwrap());
        format!("[127.0.0.1]:{port} {kind} {blob}\n")
    }
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen failed");
}

/// sshd serving the machine's files over SFTP to root with a test key; `None` (skipped)
/// when sshd is missing or the tests do not run as root (sshd must log the user in).
pub fn sshd(scratch: &Path) -> Option<Sshd> {
    if !have("/usr/sbin/sshd", "openssh-server") || !have("ssh", "openssh-client") {
        return None;
    }
    if !is_root() {
        eprintln!("skipped: the SFTP tests log in to a test sshd as root");
        return None;
    }
    let dir = scratch.join(format!("sshd{}", free_port()));
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all("/run/sshd").unwrap();
    keygen(&dir.join("hostkey"));
    keygen(&dir.join("userkey"));
    fs::copy(dir.join("userkey.pub"), dir.join("authorized_keys")).unwrap();
    let port = free_port();
    let d = dir.display();
    fs::write(
        dir.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
             StrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new("/usr/sbin/sshd");
    cmd.arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(dir.join("sshd_config"));
    let server = Server::start(
        cmd,
        port,
        format!("sftp://127.0.0.1:{port}"),
        &dir.join("sshd.log"),
        "sshd",
    );
    let known_hosts = dir.join("known_hosts");
    let config = dir.join("ssh_config");
    fs::write(
        &config,
        format!(
            "Host *\n  User root\n  IdentityFile {d}/userkey\n  IdentitiesOnly yes\n  \
             UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n",
            known_hosts.display()
        ),
    )
    .unwrap();
    let sshd = Sshd {
        server,
        dir,
        config,
        known_hosts,
    };
    fs::write(&sshd.known_hosts, sshd.known_hosts_line(port)).unwrap();
    Some(sshd)
}
