//! A repository on a server reached over SSH: `sftp://[user@]host[:port]/path`, also spelled
//! as duplicity does, `scp://`, `paramiko+sftp://`, `pexpect+sftp://`. As for duplicity, the
//! path is relative to the login folder; `//path` is absolute.
//!
//! dupmirror runs the system's OpenSSH client, `ssh -s HOST sftp`, and speaks SFTP version 3
//! (draft-ietf-secsh-filexfer-02) over the child's stdin and stdout. So authentication and
//! host keys are exactly the admin's own `ssh`'s: `~/.ssh/config` (Host aliases, Port, User,
//! IdentityFile, ProxyJump, ControlMaster), keys and ssh-agent, `known_hosts`. dupmirror adds
//! `BatchMode=yes` (never a prompt: a timer has no one to answer it) and
//! `StrictHostKeyChecking=yes` (an unknown or changed host key is refused, never accepted);
//! options given on the command line come first, so no configuration can weaken them.
//!
//! Why a small client of our own rather than the `openssh` + `openssh-sftp-client` crates:
//! those drive the same `ssh` binary, but through tokio (a runtime inside an otherwise
//! blocking program, and more to build on two cores); reading a repository needs five
//! requests of SFTP v3 (open, read, close, opendir/readdir, stat), a few hundred lines that
//! the blocking retry, resume, bandwidth and byte-accounting layers use like any backend.
//!
//! ```text
//! session: spawn ssh; send INIT(3); expect VERSION          (one per backend, reused;
//!          a reader thread hands each reply to the request     a dead one is replaced at
//!          with its id, so several files read at once)         the next list or open)
//! list:    OPENDIR dir; READDIR until EOF; CLOSE             regular files with sizes;
//!                                                             a symlink is STATed
//! open:    OPEN dir/name for reading; then READs of 64 KiB, 16 in flight, from the offset
//!          (a short read restarts the window where it stopped); CLOSE when dropped
//! ```
//!
//! Failures: ssh exiting before the SFTP handshake is explained by its last stderr line
//! (host key refused and login refused are permanent; refused or timed-out connections
//! transient); a session that dies later fails its pending requests as transient, so the
//! retry layer reconnects and resumes. Replies are capped at 4 MiB. Limits: no password
//! authentication (BatchMode); the server must speak SFTP v3 or later (every OpenSSH does).

use super::{Backend, ListEntry, ListingBudget, Opened, SourceError, SourceOptions};
use anyhow::{anyhow, bail, Result};
use std::collections::{HashMap, VecDeque};
use std::io::{self, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The URL schemes that name an SFTP source.
pub const SCHEMES: [&str; 4] = ["sftp", "scp", "paramiko+sftp", "pexpect+sftp"];

/// How to run `ssh` (`--ssh-config`, `--ssh-option`).
#[derive(Clone, Debug, Default)]
pub struct SshOptions {
    /// `ssh -F FILE` instead of `~/.ssh/config`.
    pub config: Option<PathBuf>,
    /// More `ssh -o OPTION` settings.
    pub options: Vec<String>,
}

const SSH_FXP_INIT: u8 = 1;
const SSH_FXP_VERSION: u8 = 2;
const SSH_FXP_OPEN: u8 = 3;
const SSH_FXP_CLOSE: u8 = 4;
const SSH_FXP_READ: u8 = 5;
const SSH_FXP_OPENDIR: u8 = 11;
const SSH_FXP_READDIR: u8 = 12;
const SSH_FXP_STAT: u8 = 17;
const SSH_FXP_STATUS: u8 = 101;
const SSH_FXP_HANDLE: u8 = 102;
const SSH_FXP_DATA: u8 = 103;
const SSH_FXP_NAME: u8 = 104;
const SSH_FXP_ATTRS: u8 = 105;

const SSH_FX_EOF: u32 = 1;
const SSH_FX_NO_SUCH_FILE: u32 = 2;
const SSH_FX_PERMISSION_DENIED: u32 = 3;
const SSH_FX_NO_CONNECTION: u32 = 6;
const SSH_FX_CONNECTION_LOST: u32 = 7;

const SSH_FXF_READ: u32 = 1;
const ATTR_SIZE: u32 = 0x1;
const ATTR_UIDGID: u32 = 0x2;
const ATTR_PERMISSIONS: u32 = 0x4;
const ATTR_ACMODTIME: u32 = 0x8;
const ATTR_EXTENDED: u32 = 0x8000_0000;

/// The largest reply accepted: OpenSSH's own limit is 256 KiB.
const MAX_PACKET: usize = 4 << 20;
const CHUNK: u32 = 64 * 1024;
const WINDOW: usize = 16;

/// `[user@]host[:port]` and the folder of an SFTP SOURCE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// The folder as the server sees it: relative to the login folder unless it starts
    /// with `/`; `.` for the login folder itself.
    pub dir: String,
}

impl SshTarget {
    pub fn parse(source: &str) -> Result<SshTarget> {
        let shown = super::url::redact(source);
        let url =
            ::url::Url::parse(source).map_err(|e| anyhow!("cannot parse SOURCE {shown}: {e}"))?;
        if url.password().is_some() {
            bail!(
                "SOURCE {shown} holds a password; dupmirror logs in over SSH with keys only \
                 (ssh-agent, IdentityFile in ~/.ssh/config)"
            );
        }
        if url.query().is_some() || url.fragment().is_some() {
            bail!("SOURCE {shown} has a query or fragment, which dupmirror does not use");
        }
        let host = match url.host_str() {
            Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']'),
            _ => bail!("SOURCE {shown} names no host"),
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| anyhow!("SOURCE {shown} holds percent-escapes that are not UTF-8"))
        };
        let path = decode(url.path())?;
        let dir = match path.strip_prefix('/').unwrap_or(&path) {
            "" => ".".to_string(),
            d => d.trim_end_matches('/').to_string(),
        };
        let dir = if dir.is_empty() { "/".into() } else { dir };
        Ok(SshTarget {
            user: (!url.username().is_empty())
                .then(|| decode(url.username()))
                .transpose()?,
            host: host.to_string(),
            port: url.port(),
            dir,
        })
    }

    fn display(&self) -> String {
        let user = self
            .user
            .as_ref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        let dir = if self.dir == "." { "" } else { &self.dir };
        format!("sftp://{user}{host}{port}/{dir}")
    }

    fn path_of(&self, name: &str) -> String {
        match self.dir.as_str() {
            "." => name.to_string(),
            "/" => format!("/{name}"),
            d => format!("{d}/{name}"),
        }
    }
}

pub struct SftpBackend {
    target: SshTarget,
    ssh: SshOptions,
    connect_timeout: Duration,
    read_timeout: Duration,
    session: Mutex<Option<Arc<Session>>>,
}

impl SftpBackend {
    pub fn new(source: &str, options: &SourceOptions) -> Result<SftpBackend> {
        Ok(SftpBackend {
            target: SshTarget::parse(source)?,
            ssh: options.ssh.clone(),
            connect_timeout: options.connect_timeout,
            read_timeout: options.read_timeout,
            session: Mutex::new(None),
        })
    }

    /// The `ssh` command line that starts the SFTP subsystem.
    fn command(&self) -> Command {
        let mut cmd = Command::new("ssh");
        // First come, first used: ssh takes the first value of each option it sees.
        cmd.args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]);
        cmd.arg("-o").arg(format!(
            "ConnectTimeout={}",
            self.connect_timeout.as_secs().max(1)
        ));
        cmd.args([
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=4",
        ]);
        if let Some(config) = &self.ssh.config {
            cmd.arg("-F").arg(config);
        }
        for o in &self.ssh.options {
            cmd.arg("-o").arg(o);
        }
        if let Some(p) = self.target.port {
            cmd.arg("-p").arg(p.to_string());
        }
        if let Some(u) = &self.target.user {
            cmd.arg("-l").arg(u);
        }
        cmd.args(["-s", "--", &self.target.host, "sftp"]);
        cmd
    }

    /// The live session, or a new one.
    fn session(&self) -> Result<Arc<Session>> {
        let mut slot = self.session.lock().map_err(|_| anyhow!("poisoned lock"))?;
        if let Some(s) = slot.as_ref().filter(|s| s.failure().is_none()) {
            return Ok(s.clone());
        }
        *slot = None;
        let s = Arc::new(Session::start(
            self.command(),
            &self.target,
            self.read_timeout,
        )?);
        *slot = Some(s.clone());
        Ok(s)
    }

    fn stat_is_file(&self, s: &Session, path: &str) -> Result<Option<u64>> {
        let mut p = Packet::new(SSH_FXP_STAT);
        p.string(path.as_bytes());
        let reply = s.call(p, path)?;
        match reply.kind {
            SSH_FXP_ATTRS => {
                let attrs = Attrs::parse(&mut reply.body())?;
                Ok(attrs.is_file().then_some(attrs.size.unwrap_or(0)))
            }
            _ => Ok(None), // a dangling link: not a repository file
        }
    }
}

impl Backend for SftpBackend {
    fn list(&self) -> Result<Vec<ListEntry>> {
        let s = self.session()?;
        let what = format!("listing {}", self.target.display());
        let mut p = Packet::new(SSH_FXP_OPENDIR);
        p.string(self.target.dir.as_bytes());
        let handle = s.call(p, &what)?.handle(&what)?;
        let mut out = Vec::new();
        let mut links = Vec::new();
        let mut budget = ListingBudget::new(&what);
        let result = (|| -> Result<()> {
            loop {
                let mut p = Packet::new(SSH_FXP_READDIR);
                p.string(&handle);
                let reply = s.call(p, &what)?;
                budget.spend(reply.data.len() as u64)?;
                if reply.kind == SSH_FXP_STATUS && reply.status_code() == Some(SSH_FX_EOF) {
                    return Ok(());
                }
                if reply.kind != SSH_FXP_NAME {
                    return Err(reply.error(&what));
                }
                let mut body = reply.body();
                for _ in 0..body.u32()? {
                    let name = body.string()?;
                    let _long_name = body.string()?;
                    let attrs = Attrs::parse(&mut body)?;
                    // Names that are not UTF-8 cannot be duplicity's own files.
                    let Ok(name) = String::from_utf8(name) else {
                        continue;
                    };
                    if name == "." || name == ".." {
                        continue;
                    }
                    if attrs.is_file() {
                        out.push(ListEntry {
                            name,
                            size: attrs.size,
                        });
                    } else if attrs.is_link() {
                        links.push(name);
                    }
                }
            }
        })();
        s.close(&handle);
        result?;
        for name in links {
            if let Some(size) = self.stat_is_file(&s, &self.target.path_of(&name))? {
                out.push(ListEntry {
                    name,
                    size: Some(size),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn open(&self, name: &str, offset: u64) -> Result<Opened> {
        let s = self.session()?;
        let mut p = Packet::new(SSH_FXP_OPEN);
        p.string(self.target.path_of(name).as_bytes());
        p.u32(SSH_FXF_READ);
        p.u32(0); // no attributes
        let handle = s.call(p, name)?.handle(name)?;
        Ok(Opened {
            reader: Box::new(SftpFile {
                session: s,
                handle,
                name: name.to_string(),
                next: offset,
                in_flight: VecDeque::new(),
                buf: Vec::new(),
                pos: 0,
                eof: false,
            }),
            offset,
        })
    }

    fn display(&self) -> String {
        self.target.display()
    }
}

// ---------------------------------------------------------------------------------------------
// Packets

/// An outgoing request: type, id (filled in when sent) and body.
struct Packet {
    kind: u8,
    body: Vec<u8>,
}

impl Packet {
    fn new(kind: u8) -> Packet {
        Packet {
            kind,
            body: Vec::new(),
        }
    }
    fn u32(&mut self, v: u32) {
        self.body.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.body.extend_from_slice(&v.to_be_bytes());
    }
    fn string(&mut self, s: &[u8]) {
        self.u32(s.len() as u32);
        self.body.extend_from_slice(s);
    }
    /// The bytes on the wire, with `id` (none for INIT).
    fn encode(&self, id: Option<u32>) -> Vec<u8> {
        let len = 1 + id.map_or(0, |_| 4) + self.body.len();
        let mut out = Vec::with_capacity(4 + len);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.push(self.kind);
        if let Some(id) = id {
            out.extend_from_slice(&id.to_be_bytes());
        }
        out.extend_from_slice(&self.body);
        out
    }
}

/// A reply: its type and what follows the id.
struct Reply {
    kind: u8,
    data: Vec<u8>,
}

/// Reads big-endian fields off a reply body; running short is a protocol error.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.0.len() < n {
            bail!(SourceError::Permanent(
                "the SFTP server sent a truncated reply".into()
            ));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok((u64::from(self.u32()?) << 32) | u64::from(self.u32()?))
    }
    fn string(&mut self) -> Result<Vec<u8>> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

impl Reply {
    fn body(&self) -> Cursor<'_> {
        Cursor(&self.data)
    }

    fn status_code(&self) -> Option<u32> {
        (self.kind == SSH_FXP_STATUS)
            .then(|| self.body().u32().ok())
            .flatten()
    }

    /// A reply that is not the one hoped for, as an error about `what`.
    fn error(&self, what: &str) -> anyhow::Error {
        if self.kind != SSH_FXP_STATUS {
            return anyhow!(SourceError::Permanent(format!(
                "{what}: unexpected SFTP reply type {}",
                self.kind
            )));
        }
        let mut body = self.body();
        let code = body.u32().unwrap_or(u32::MAX);
        let message = body
            .string()
            .map(|m| String::from_utf8_lossy(&m).trim().to_string())
            .unwrap_or_default();
        let text = match code {
            SSH_FX_NO_SUCH_FILE => "no such file or folder".to_string(),
            SSH_FX_PERMISSION_DENIED => "permission denied".to_string(),
            _ if !message.is_empty() => message,
            _ => format!("SFTP status {code}"),
        };
        let msg = format!("{what}: {text}");
        anyhow!(
            if matches!(code, SSH_FX_NO_CONNECTION | SSH_FX_CONNECTION_LOST) {
                SourceError::Transient(msg)
            } else {
                SourceError::Permanent(msg)
            }
        )
    }

    fn handle(self, what: &str) -> Result<Vec<u8>> {
        if self.kind != SSH_FXP_HANDLE {
            return Err(self.error(what));
        }
        self.body().string()
    }
}

/// The attributes of a file, as far as a listing needs them.
struct Attrs {
    size: Option<u64>,
    permissions: Option<u32>,
}

impl Attrs {
    fn parse(c: &mut Cursor<'_>) -> Result<Attrs> {
        let flags = c.u32()?;
        let size = (flags & ATTR_SIZE != 0).then(|| c.u64()).transpose()?;
        if flags & ATTR_UIDGID != 0 {
            c.take(8)?;
        }
        let permissions = (flags & ATTR_PERMISSIONS != 0)
            .then(|| c.u32())
            .transpose()?;
        if flags & ATTR_ACMODTIME != 0 {
            c.take(8)?;
        }
        if flags & ATTR_EXTENDED != 0 {
            for _ in 0..c.u32()? {
                c.string()?;
                c.string()?;
            }
        }
        Ok(Attrs { size, permissions })
    }
    fn kind(&self) -> Option<u32> {
        self.permissions.map(|p| p & 0o170000)
    }
    fn is_file(&self) -> bool {
        self.kind() == Some(0o100000)
    }
    fn is_link(&self) -> bool {
        self.kind() == Some(0o120000)
    }
}

// ---------------------------------------------------------------------------------------------
// The session: one ssh child, requests matched to replies by id

/// Where a request's reply (or the session's end) is delivered.
type Waiter = Sender<Result<Reply, String>>;
type ReplyPromise = Receiver<Result<Reply, String>>;

#[derive(Default)]
struct Pending {
    waiting: HashMap<u32, Waiter>,
    /// Why the session ended, once it has.
    failed: Option<String>,
}

struct Session {
    child: Mutex<Child>,
    stdin: Mutex<ChildStdin>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU32,
    read_timeout: Duration,
    what: String,
}

/// Keeps the last few KiB that ssh wrote on stderr, to explain a failure.
fn collect_stderr(mut stderr: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let out = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut t) = out.lock() {
                t.push_str(&String::from_utf8_lossy(&buf[..n]));
                if t.len() > 8192 {
                    let cut = t.len() - 4096;
                    let cut = (cut..t.len()).find(|&i| t.is_char_boundary(i)).unwrap_or(0);
                    t.drain(..cut);
                }
            }
        }
    });
    text
}

/// What ssh's stderr says about a failed connection, as one line and a verdict.
fn explain_ssh_failure(target: &str, stderr: &str) -> SourceError {
    let lines: Vec<&str> = stderr
        .lines()
        .map(|l| l.trim().trim_matches('@').trim())
        .filter(|l| !l.is_empty())
        .collect();
    let find = |needle: &str| {
        lines
            .iter()
            .find(|l| l.to_ascii_lowercase().contains(needle))
            .copied()
    };
    if lines
        .iter()
        .any(|l| l.contains("Host key verification failed"))
    {
        let why = find("host key for")
            .or_else(|| find("host key is known"))
            .or_else(|| find("identification has changed"))
            .unwrap_or("Host key verification failed");
        return SourceError::Permanent(format!(
            "ssh to {target} refused the server's host key: {why} (dupmirror accepts only \
             keys already in known_hosts; check the fingerprint, then add it)"
        ));
    }
    if let Some(l) = find("permission denied") {
        return SourceError::Permanent(format!("ssh login to {target} refused: {l}"));
    }
    let last = lines
        .last()
        .copied()
        .unwrap_or("ssh exited before the SFTP session started");
    SourceError::Transient(format!("ssh to {target}: {last}"))
}

fn read_reply(r: &mut impl Read) -> io::Result<(u8, u32, Vec<u8>)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    if len == 0 || len > MAX_PACKET {
        return Err(io::Error::other(format!(
            "the SFTP server sent a reply of {len} bytes (at most {MAX_PACKET} accepted)"
        )));
    }
    let kind = head[4];
    let mut rest = vec![0u8; len - 1];
    r.read_exact(&mut rest)?;
    if kind == SSH_FXP_VERSION {
        return Ok((kind, 0, rest));
    }
    if rest.len() < 4 {
        return Err(io::Error::other(
            "the SFTP server sent a reply without an id",
        ));
    }
    let id = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    Ok((kind, id, rest.split_off(4)))
}

/// Hands replies to their requests until the stream ends; then fails every request still
/// waiting, and all later ones, with `why`.
fn dispatch(
    stdout: ChildStdout,
    pending: Arc<Mutex<Pending>>,
    stderr: Arc<Mutex<String>>,
    target: String,
) {
    let mut r = BufReader::with_capacity(256 * 1024, stdout);
    let mut first = true;
    let why = loop {
        match read_reply(&mut r) {
            Ok((kind, id, data)) => {
                // The VERSION reply has no id: it answers request 0, the handshake.
                let id = if first && kind == SSH_FXP_VERSION {
                    0
                } else {
                    id
                };
                first = false;
                let waiter = pending.lock().ok().and_then(|mut p| p.waiting.remove(&id));
                if let Some(w) = waiter {
                    let _ = w.send(Ok(Reply { kind, data }));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                // ssh ended: give its stderr a moment to arrive, then read why.
                std::thread::sleep(Duration::from_millis(100));
                let text = stderr.lock().map(|t| t.clone()).unwrap_or_default();
                break explain_ssh_failure(&target, &text).to_string();
            }
            Err(e) => break format!("ssh to {target}: {e}"),
        }
    };
    if let Ok(mut p) = pending.lock() {
        p.failed = Some(why.clone());
        for (_, w) in p.waiting.drain() {
            let _ = w.send(Err(why.clone()));
        }
    }
}

impl Session {
    fn start(mut cmd: Command, target: &SshTarget, read_timeout: Duration) -> Result<Session> {
        let what = target.display();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                anyhow!(SourceError::Permanent(format!(
                    "cannot run ssh for {what}: {e} (install the OpenSSH client)"
                )))
            })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            bail!("cannot talk to ssh: its pipes are missing");
        };
        let stderr = collect_stderr(stderr);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (tx, rx) = mpsc::channel();
        if let Ok(mut p) = pending.lock() {
            p.waiting.insert(0, tx);
        }
        let host = if target.host.contains(':') {
            format!("[{}]", target.host)
        } else {
            target.host.clone()
        };
        {
            let pending = pending.clone();
            std::thread::Builder::new()
                .name("sftp".into())
                .spawn(move || dispatch(stdout, pending, stderr, host))
                .map_err(|e| anyhow!("cannot start the SFTP reader thread: {e}"))?;
        }
        let session = Session {
            child: Mutex::new(child),
            stdin: Mutex::new(stdin),
            pending,
            next_id: AtomicU32::new(1),
            read_timeout,
            what: what.clone(),
        };
        let mut init = Packet::new(SSH_FXP_INIT);
        init.u32(3);
        // A failed write means ssh already exited; the reader thread says why.
        let _ = session.write(&init.encode(None));
        // Logging in may take longer than a read: allow for a slow handshake too.
        let reply = session.wait(&rx, read_timeout + read_timeout, &what)?;
        if reply.kind != SSH_FXP_VERSION {
            session.fail("the server did not start SFTP");
            bail!(SourceError::Permanent(format!(
                "{what}: the server did not answer the SFTP handshake"
            )));
        }
        Ok(session)
    }

    fn failure(&self) -> Option<String> {
        self.pending.lock().ok().and_then(|p| p.failed.clone())
    }

    /// Ends the session: ssh is killed, and every waiting request fails with `why`.
    fn fail(&self, why: &str) {
        if let Ok(mut p) = self.pending.lock() {
            p.failed.get_or_insert_with(|| why.to_string());
            for (_, w) in p.waiting.drain() {
                let _ = w.send(Err(why.to_string()));
            }
        }
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
        }
    }

    fn write(&self, bytes: &[u8]) -> io::Result<()> {
        let mut w = self
            .stdin
            .lock()
            .map_err(|_| io::Error::other("poisoned lock"))?;
        w.write_all(bytes)?;
        w.flush()
    }

    /// Sends a request; its reply will arrive on the returned channel.
    fn send(&self, packet: &Packet) -> Result<ReplyPromise> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).max(1);
        let (tx, rx) = mpsc::channel();
        {
            let mut p = self.pending.lock().map_err(|_| anyhow!("poisoned lock"))?;
            if let Some(why) = &p.failed {
                bail!(SourceError::Transient(why.clone()));
            }
            p.waiting.insert(id, tx);
        }
        if let Err(e) = self.write(&packet.encode(Some(id))) {
            // The reader thread fails the request with the reason (ssh exited).
            if self.failure().is_none() {
                self.fail(&format!("ssh to {}: {e}", self.what));
            }
        }
        Ok(rx)
    }

    fn wait(&self, rx: &ReplyPromise, timeout: Duration, what: &str) -> Result<Reply> {
        match rx.recv_timeout(timeout) {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(why)) => Err(anyhow!(classify(&why))),
            Err(RecvTimeoutError::Timeout) => {
                let why = format!("{what}: no answer from {} (timed out)", self.what);
                self.fail(&why);
                Err(anyhow!(SourceError::Transient(why)))
            }
            Err(RecvTimeoutError::Disconnected) => {
                let why = self
                    .failure()
                    .unwrap_or_else(|| format!("{what}: the SFTP session ended"));
                Err(anyhow!(classify(&why)))
            }
        }
    }

    fn call(&self, packet: Packet, what: &str) -> Result<Reply> {
        let rx = self.send(&packet)?;
        self.wait(&rx, self.read_timeout, what)
    }

    /// Closes a handle without waiting for the answer.
    fn close(&self, handle: &[u8]) {
        let mut p = Packet::new(SSH_FXP_CLOSE);
        p.string(handle);
        let _ = self.send(&p);
    }
}

/// A session failure's verdict: the host key and login refusals stay permanent.
fn classify(why: &str) -> SourceError {
    if why.contains("refused the server's host key") || why.contains("login to") {
        SourceError::Permanent(why.to_string())
    } else {
        SourceError::Transient(why.to_string())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading a file

/// A remote file read with several READ requests in flight.
struct SftpFile {
    session: Arc<Session>,
    handle: Vec<u8>,
    name: String,
    /// The offset of the next READ to send.
    next: u64,
    /// Sent READs, in offset order: (offset, length, reply).
    in_flight: VecDeque<(u64, u32, ReplyPromise)>,
    buf: Vec<u8>,
    pos: usize,
    eof: bool,
}

impl SftpFile {
    fn fill_window(&mut self) -> Result<()> {
        while !self.eof && self.in_flight.len() < WINDOW {
            let mut p = Packet::new(SSH_FXP_READ);
            p.string(&self.handle);
            p.u64(self.next);
            p.u32(CHUNK);
            let rx = self.session.send(&p)?;
            self.in_flight.push_back((self.next, CHUNK, rx));
            self.next += u64::from(CHUNK);
        }
        Ok(())
    }

    /// The next piece of the file into `buf`; false at the end.
    fn next_piece(&mut self) -> Result<bool> {
        self.fill_window()?;
        let Some((offset, len, rx)) = self.in_flight.pop_front() else {
            return Ok(false);
        };
        let reply = self
            .session
            .wait(&rx, self.session.read_timeout, &self.name)?;
        match reply.kind {
            SSH_FXP_DATA => {
                let data = reply.body().string()?;
                if data.is_empty() {
                    bail!(SourceError::Transient(format!(
                        "{}: the SFTP server sent an empty read",
                        self.name
                    )));
                }
                if data.len() < len as usize {
                    // A short read: what was asked after it starts at the wrong place.
                    self.in_flight.clear();
                    self.next = offset + data.len() as u64;
                }
                self.buf = data;
                self.pos = 0;
                Ok(true)
            }
            SSH_FXP_STATUS if reply.status_code() == Some(SSH_FX_EOF) => {
                self.eof = true;
                self.in_flight.clear();
                Ok(false)
            }
            _ => Err(reply.error(&self.name)),
        }
    }
}

impl Read for SftpFile {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.buf.len() {
            match self.next_piece() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => return Err(io::Error::other(format!("{e:#}"))),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for SftpFile {
    fn drop(&mut self) {
        self.session.close(&self.handle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = SshTarget::parse("sftp://bob@example.org:2222/backups/web").unwrap();
        assert_eq!(t.user.as_deref(), Some("bob"));
        assert_eq!((t.host.as_str(), t.port), ("example.org", Some(2222)));
        assert_eq!(t.dir, "backups/web");
        assert_eq!(t.path_of("x"), "backups/web/x");
        assert_eq!(t.display(), "sftp://bob@example.org:2222/backups/web");
        let t = SshTarget::parse("scp://alias//srv/repo/").unwrap();
        assert_eq!(
            (t.user.as_deref(), t.port, t.dir.as_str()),
            (None, None, "/srv/repo")
        );
        assert_eq!(t.display(), "sftp://alias//srv/repo");
        let t = SshTarget::parse("paramiko+sftp://h").unwrap();
        assert_eq!((t.dir.as_str(), t.path_of("x").as_str()), (".", "x"));
        let t = SshTarget::parse("pexpect+sftp://h//").unwrap();
        assert_eq!(t.path_of("x"), "/x");
        let e = SshTarget::parse("sftp://u:hunter2@h/x")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2") && e.contains("keys only"), "{e}");
    }

    #[test]
    fn ssh_failures_are_explained_in_one_line() {
        let unknown = "No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict checking.\r\nHost key verification failed.\r\n";
        let e = explain_ssh_failure("127.0.0.1", unknown);
        assert!(matches!(e, SourceError::Permanent(_)));
        assert!(
            e.to_string().contains("No ED25519 host key is known"),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'));
        let changed = "@@@@@@@@@@@\r\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\r\n\
                       Host key for [127.0.0.1]:2222 has changed and you have requested strict checking.\r\n\
                       Host key verification failed.\r\n";
        let e = explain_ssh_failure("h", changed).to_string();
        assert!(
            e.contains("Host key for [127.0.0.1]:2222 has changed"),
            "{e}"
        );
        let e = explain_ssh_failure("h", "bob@h: Permission denied (publickey).\r\n");
        assert!(matches!(e, SourceError::Permanent(_)));
        let e = explain_ssh_failure(
            "h",
            "ssh: connect to host h port 22: Connection refused\r\n",
        );
        assert!(matches!(e, SourceError::Transient(_)), "{e}");
    }

    #[test]
    fn packets_round_trip() {
        let mut p = Packet::new(SSH_FXP_READ);
        p.string(b"hd");
        p.u64(1 << 40);
        p.u32(CHUNK);
        let wire = p.encode(Some(7));
        let (kind, id, body) = read_reply(&mut &wire[..]).unwrap();
        assert_eq!((kind, id), (SSH_FXP_READ, 7));
        let mut c = Cursor(&body);
        assert_eq!(c.string().unwrap(), b"hd");
        assert_eq!(c.u64().unwrap(), 1 << 40);
        assert_eq!(c.u32().unwrap(), CHUNK);
        assert!(c.u32().is_err());
        let huge = [0xff, 0xff, 0xff, 0xff, SSH_FXP_DATA];
        assert!(read_reply(&mut &huge[..]).is_err());
    }
}
