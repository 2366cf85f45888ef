//! Hostile servers and measured runs, for the input-side security tests.
//!
//! Real servers (nginx, pyftpdlib) are honest; an attacker's server is not. [`FakeHttp`] and
//! [`FakeFtp`] are small servers on 127.0.0.1 (std `TcpListener` threads) that serve a
//! repository folder and can lie the way the tests need: list names that are paths, send
//! listings or files that never end, redirect to another origin. They record what they
//! were asked (paths, `Authorization` headers) and how many bytes they managed to send.
//!
//! [`run_measured`] runs dupmirror and returns its peak RSS (as GNU `time` reports it), and
//! [`run_file_capped`] runs it under `RLIMIT_FSIZE`, so a test can show that memory and the
//! files a run writes stay bounded whatever the input, without timing anything.

use super::process::{dupmirror_command, limit_resource, run_with_timeout, Run};
use super::remote::have;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How much an "endless" body sends at most: far more than any bound dupmirror keeps, and
/// enough for a run without the bounds to show it (in memory, or on disk).
pub const ENDLESS: u64 = 256 << 20;

/// A listener thread serving connections until dropped.
struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    port: u16,
}

impl Acceptor {
    fn start(serve: impl Fn(TcpStream) + Send + Sync + 'static) -> Acceptor {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let serve = Arc::new(serve);
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                        let serve = serve.clone();
                        std::thread::spawn(move || serve(conn));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Acceptor {
            stop,
            thread: Some(thread),
            port,
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The regular files of `dir` with their sizes, sorted.
fn files_of(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    (e.file_name().to_string_lossy().into_owned(), len)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Writes `data`, then (when `endless`) repeats `filler` up to [`ENDLESS`] bytes or until the
/// peer goes away; counts what was written into `sent`.
fn send_body(w: &mut dyn Write, data: &[u8], filler: &[u8], endless: bool, sent: &AtomicU64) {
    if w.write_all(data).is_err() {
        return;
    }
    sent.fetch_add(data.len() as u64, Ordering::Relaxed);
    if !endless {
        return;
    }
    // Whole fillers only, so that an endless listing stays well-formed line after line.
    let chunk: Vec<u8> = filler.repeat((64 << 10) / filler.len().max(1) + 1);
    let mut total = 0u64;
    while total < ENDLESS {
        if w.write_all(&chunk).is_err() {
            return;
        }
        total += chunk.len() as u64;
        sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// How a [`FakeHttp`] lies.
#[derive(Clone, Default)]
pub struct HttpOptions {
    /// Serve HTTPS with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Answer every request with a redirect to this origin (`http://127.0.0.1:PORT`), same path.
    pub redirect_to: Option<String>,
    /// The listing goes on after the real names: [`ENDLESS`] bytes of more index lines.
    pub endless_listing: bool,
    /// Files whose body goes on after their listed size, up to [`ENDLESS`] bytes.
    pub oversend: Vec<String>,
}

/// One request a fake server received.
#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    pub authorization: Option<String>,
}

/// An HTTP server serving the files of `root` under `/repo/`, with a plain index (one
/// `NAME SIZE` line per file) at `/repo/`.
pub struct FakeHttp {
    _acceptor: Acceptor,
    pub url: String,
    pub requests: Arc<Mutex<Vec<Request>>>,
    /// Body bytes written so far.
    pub sent: Arc<AtomicU64>,
}

impl FakeHttp {
    pub fn start(root: &Path, opts: HttpOptions) -> FakeHttp {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicU64::new(0));
        let tls = opts.tls.as_ref().map(|(cert, key)| tls_config(cert, key));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (root, log, count) = (root.to_path_buf(), requests.clone(), sent.clone());
        let acceptor = Acceptor::start(move |conn| match &tls {
            Some(config) => {
                let Ok(server) = rustls::ServerConnection::new(config.clone()) else {
                    return;
                };
                let mut stream = rustls::StreamOwned::new(server, conn);
                serve_http(&mut stream, &root, &opts, &log, &count);
            }
            None => {
                let mut conn = conn;
                serve_http(&mut conn, &root, &opts, &log, &count);
            }
        });
        FakeHttp {
            url: format!("{scheme}://127.0.0.1:{}/repo/", acceptor.port),
            _acceptor: acceptor,
            requests,
            sent,
        }
    }

    /// `http://127.0.0.1:PORT`, for another server to redirect to.
    pub fn origin(&self) -> String {
        self.url.trim_end_matches("/repo/").to_string()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn tls_config(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("certificate PEM")
        .map(|c| c.expect("certificate"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).expect("key PEM");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server certificate");
    Arc::new(config)
}

fn serve_http<S: Read + Write>(
    conn: &mut S,
    root: &Path,
    opts: &HttpOptions,
    log: &Mutex<Vec<Request>>,
    sent: &AtomicU64,
) {
    let mut reader = BufReader::new(&mut *conn);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        head.push(line.trim_end().to_string());
    }
    drop(reader);
    let Some(path) = head
        .first()
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_string)
    else {
        return;
    };
    let authorization = head.iter().find_map(|h| {
        let (k, v) = h.split_once(':')?;
        k.eq_ignore_ascii_case("authorization")
            .then(|| v.trim().to_string())
    });
    log.lock().unwrap().push(Request {
        path: path.clone(),
        authorization,
    });
    let respond = |conn: &mut S, status: &str, extra: &str, len: Option<usize>| {
        let length = len
            .map(|n| format!("Content-Length: {n}\r\n"))
            .unwrap_or_default();
        let head = format!("HTTP/1.1 {status}\r\n{extra}{length}Connection: close\r\n\r\n");
        conn.write_all(head.as_bytes()).is_ok()
    };
    if let Some(origin) = &opts.redirect_to {
        respond(
            conn,
            "302 Found",
            &format!("Location: {origin}{path}\r\n"),
            Some(0),
        );
        return;
    }
    let Some(rest) = path.strip_prefix("/repo/") else {
        respond(conn, "404 Not Found", "", Some(0));
        return;
    };
    if rest.is_empty() {
        let mut index = String::new();
        for (name, size) in files_of(root) {
            index.push_str(&format!("{name} {size}\n"));
        }
        let len = (!opts.endless_listing).then_some(index.len());
        if respond(conn, "200 OK", "Content-Type: text/plain\r\n", len) {
            let filler = b"duplicity-full.20200101T000000Z.vol1.difftar.gz 1\n";
            send_body(conn, index.as_bytes(), filler, opts.endless_listing, sent);
        }
        return;
    }
    let name = percent_encoding::percent_decode_str(rest)
        .decode_utf8_lossy()
        .into_owned();
    match fs::read(root.join(&name)) {
        Ok(data) if !name.contains('/') => {
            let endless = opts.oversend.contains(&name);
            let len = (!endless).then_some(data.len());
            if respond(conn, "200 OK", "", len) {
                send_body(conn, &data, b"\0", endless, sent);
            }
        }
        _ => {
            respond(conn, "404 Not Found", "", Some(0));
        }
    }
    let _ = conn.flush();
}

// ---------------------------------------------------------------------------------------------
// FTP

/// How a [`FakeFtp`] lies.
#[derive(Clone, Default)]
pub struct FtpOptions {
    /// Extra names listed, each served as the real file it stands for: `(listed, real)`.
    pub aliases: Vec<(String, String)>,
    /// Real files left out of the listing.
    pub hidden: Vec<String>,
    /// The `MLSD` listing goes on after the real entries: [`ENDLESS`] bytes of more lines.
    pub endless_listing: bool,
}

/// An FTP server (passive mode, `MLSD`, `RETR`, `REST`) serving the files of `root`, for any
/// login.
pub struct FakeFtp {
    _acceptor: Acceptor,
    pub url: String,
    /// The names asked for with `RETR`, as asked.
    pub retrieved: Arc<Mutex<Vec<String>>>,
}

impl FakeFtp {
    pub fn start(root: &Path, opts: FtpOptions) -> FakeFtp {
        let retrieved = Arc::new(Mutex::new(Vec::new()));
        let (root, log) = (root.to_path_buf(), retrieved.clone());
        let acceptor = Acceptor::start(move |conn| serve_ftp(conn, &root, &opts, &log));
        FakeFtp {
            url: format!("ftp://127.0.0.1:{}/", acceptor.port),
            _acceptor: acceptor,
            retrieved,
        }
    }

    pub fn retrieved(&self) -> Vec<String> {
        self.retrieved.lock().unwrap().clone()
    }
}

fn serve_ftp(conn: TcpStream, root: &Path, opts: &FtpOptions, retrieved: &Mutex<Vec<String>>) {
    let sent = &AtomicU64::new(0); // only the HTTP tests count what was sent
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let reply = |out: &mut TcpStream, text: &str| out.write_all(format!("{text}\r\n").as_bytes());
    if reply(&mut out, "220 fake FTP").is_err() {
        return;
    }
    let mut passive: Option<TcpListener> = None;
    let mut offset = 0u64;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = line.trim_end();
        let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
        let cmd = cmd.to_ascii_uppercase();
        let data = |passive: &mut Option<TcpListener>| -> Option<TcpStream> {
            let (conn, _) = passive.take()?.accept().ok()?;
            Some(conn)
        };
        let ok = match cmd.as_str() {
            "USER" => reply(&mut out, "331 password please"),
            "PASS" => reply(&mut out, "230 logged in"),
            "TYPE" => reply(&mut out, "200 type set"),
            "CWD" => reply(&mut out, "250 ok"),
            "PWD" => reply(&mut out, "257 \"/\""),
            "REST" => {
                offset = arg.trim().parse().unwrap_or(0);
                reply(&mut out, "350 restarting")
            }
            "PASV" => {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                let p = l.local_addr().unwrap().port();
                passive = Some(l);
                reply(
                    &mut out,
                    &format!(
                        "227 Entering Passive Mode (127,0,0,1,{},{})",
                        p >> 8,
                        p & 0xff
                    ),
                )
            }
            "MLSD" => {
                let _ = reply(&mut out, "150 listing");
                if let Some(mut d) = data(&mut passive) {
                    let mut text = String::new();
                    for (name, size) in files_of(root) {
                        if !opts.hidden.contains(&name) {
                            text.push_str(&format!("type=file;size={size}; {name}\r\n"));
                        }
                    }
                    for (listed, real) in &opts.aliases {
                        let size = fs::metadata(root.join(real)).map(|m| m.len()).unwrap_or(0);
                        text.push_str(&format!("type=file;size={size}; {listed}\r\n"));
                    }
                    let filler = b"type=file;size=1; duplicity-full.20200101T000000Z.manifest\r\n";
                    send_body(&mut d, text.as_bytes(), filler, opts.endless_listing, sent);
                }
                reply(&mut out, "226 done")
            }
            "RETR" => {
                retrieved.lock().unwrap().push(arg.to_string());
                let real = opts
                    .aliases
                    .iter()
                    .find(|(listed, _)| listed == arg)
                    .map_or(arg, |(_, real)| real.as_str());
                match fs::read(root.join(real)) {
                    Ok(bytes) if !real.contains('/') => {
                        let _ = reply(&mut out, "150 sending");
                        if let Some(mut d) = data(&mut passive) {
                            let from = (offset as usize).min(bytes.len());
                            send_body(&mut d, &bytes[from..], b"", false, sent);
                        }
                        offset = 0;
                        reply(&mut out, "226 done")
                    }
                    _ => reply(&mut out, "550 no such file"),
                }
            }
            "QUIT" => {
                let _ = reply(&mut out, "221 bye");
                return;
            }
            _ => reply(&mut out, "502 not implemented"),
        };
        if ok.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measured runs

/// A dupmirror run with its peak resident memory.
pub struct Measured {
    pub run: Run,
    pub peak_rss_bytes: u64,
}

/// Runs dupmirror with `args` (environment as [`dupmirror_command`] sets it up) under GNU
/// `time`, which reports the peak RSS of its child; `None` (skipped) without `/usr/bin/time`.
///
/// Not `wait4` on a child of the test process: exec keeps the larger of the old and the new
/// address space's high-water mark, so such a child reports the test process's own peak
/// when that is higher (the whole suite runs in one process).
pub fn run_measured<I, S>(args: I) -> Option<Measured>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    if !have("/usr/bin/time", "time") {
        return None;
    }
    let report = tempfile::NamedTempFile::new().expect("temporary file");
    let inner = dupmirror_command(args, &[]);
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "%M", "-o"])
        .arg(report.path())
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let run = run_with_timeout(cmd, Duration::from_secs(300));
    let text = fs::read_to_string(report.path()).unwrap_or_default();
    // The last line is the figure (KiB); a line before it says when a signal ended the run.
    let kib: u64 = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS from GNU time: {text:?}"));
    Some(Measured {
        run,
        peak_rss_bytes: kib * 1024,
    })
}

/// Runs dupmirror with `args` allowed to write no file larger than `max_file_bytes`
/// (`RLIMIT_FSIZE`: a write past it fails, or the kernel's SIGXFSZ ends the run).
pub fn run_file_capped<I, S>(args: I, max_file_bytes: u64) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = dupmirror_command(args, &[]);
    limit_resource(&mut cmd, libc::RLIMIT_FSIZE, max_file_bytes);
    run_with_timeout(cmd, Duration::from_secs(300))
}
