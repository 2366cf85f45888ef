//! A repository published over FTP, or FTPS with explicit TLS (`AUTH TLS`, data channel
//! protected too), through suppaftp.
//!
//! Each listing and each open uses a fresh control connection: log in (user and password,
//! or anonymous), binary mode, passive data connections (with the NAT workaround: data goes
//! to the control connection's address whatever PASV says), change to the folder. The
//! listing is `MLSD` where the server has it, else `LIST` (Unix or DOS lines), else names
//! only from `NLST`. A resumed read sends `REST` before `RETR` (a server that does not
//! implement it sends the whole file). Replies 4xx are transient (try again later), 5xx
//! permanent (wrong password, no such file). A listing is read up to
//! [`super::MAX_LISTING_BYTES`]; its names are checked by [`super::checked`] like any other.

use super::names::shown;
use super::url::{Scheme, SourceUrl};
use super::{
    is_transient_io, tls, Backend, ListEntry, ListingBudget, Opened, SourceError, SourceOptions,
};
use anyhow::{anyhow, Result};
use rustls::ClientConfig;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use suppaftp::list::ListParser;
use suppaftp::types::FileType;
use suppaftp::{FtpError, ImplFtpStream, RustlsConnector, RustlsFtpStream, Status};
use suppaftp::{TlsStream, TransferStream};

pub struct FtpBackend {
    url: SourceUrl,
    user: String,
    password: String,
    tls: Option<Arc<ClientConfig>>,
    connect_timeout: Duration,
    read_timeout: Duration,
}

/// A suppaftp failure as a [`SourceError`], with what was being done.
fn ftp_error(e: FtpError, what: &str) -> anyhow::Error {
    let (transient, msg) = match &e {
        FtpError::ConnectionError(io) => (is_transient_io(io), format!("{what}: {io}")),
        FtpError::UnexpectedResponse(r) => {
            let text = String::from_utf8_lossy(&r.body).trim().to_string();
            let code = r.status.code();
            let text = if text.is_empty() {
                code.to_string()
            } else {
                text
            };
            (
                (400..500).contains(&code),
                format!("{what}: server replied {text}"),
            )
        }
        FtpError::BadResponse => (true, format!("{what}: garbled reply from the server")),
        FtpError::SecureError(s) => (false, format!("{what}: TLS: {s}")),
        other => (false, format!("{what}: {other}")),
    };
    anyhow!(if transient {
        SourceError::Transient(msg)
    } else {
        SourceError::Permanent(msg)
    })
}

fn is_not_implemented(e: &FtpError) -> bool {
    matches!(e, FtpError::UnexpectedResponse(r) if matches!(r.status.code(), 500 | 501 | 502 | 504))
}

impl FtpBackend {
    pub fn new(url: SourceUrl, options: &SourceOptions) -> Result<FtpBackend> {
        let url = url.with_credentials_from_env();
        let tls = match url.scheme {
            Scheme::Ftps => Some(tls::client_config(options.ca_file.as_deref())?),
            _ => None,
        };
        Ok(FtpBackend {
            user: url.user.clone().unwrap_or_else(|| "anonymous".into()),
            password: url
                .password
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_else(|| {
                    // Anonymous FTP asks for an e-mail address as the password.
                    if url.user.is_none() {
                        "dupmirror@".into()
                    } else {
                        String::new()
                    }
                }),
            tls,
            connect_timeout: options.connect_timeout,
            read_timeout: options.read_timeout,
            url,
        })
    }

    fn tcp(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let s = TcpStream::connect_timeout(&addr, self.connect_timeout)?;
        s.set_read_timeout(Some(self.read_timeout))?;
        s.set_write_timeout(Some(self.read_timeout))?;
        Ok(s)
    }

    /// A logged-in control connection in the repository folder.
    fn connect(&self) -> Result<RustlsFtpStream> {
        let target = format!("connecting to {}:{}", self.url.host, self.url.port);
        let addrs: Vec<SocketAddr> = (self.url.host.as_str(), self.url.port)
            .to_socket_addrs()
            .map_err(|e| ftp_error(FtpError::ConnectionError(e), &target))?
            .collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name has no address");
        let mut stream = None;
        for addr in addrs {
            match self.tcp(addr) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let stream = stream.ok_or_else(|| ftp_error(FtpError::ConnectionError(last), &target))?;
        let (connect_timeout, read_timeout) = (self.connect_timeout, self.read_timeout);
        let mut ftp = RustlsFtpStream::connect_with_stream(stream)
            .map_err(|e| ftp_error(e, &target))?
            .passive_stream_builder(move |addr| {
                let s = TcpStream::connect_timeout(&addr, connect_timeout)
                    .map_err(FtpError::ConnectionError)?;
                s.set_read_timeout(Some(read_timeout))
                    .map_err(FtpError::ConnectionError)?;
                Ok(s)
            });
        ftp.set_passive_nat_workaround(true);
        if let Some(config) = &self.tls {
            ftp = ftp
                .into_secure(RustlsConnector::from(config.clone()), &self.url.host)
                .map_err(|e| ftp_error(e, "starting TLS (AUTH TLS)"))?;
        }
        ftp.login(self.user.as_str(), self.password.as_str())
            .map_err(|e| match e {
                FtpError::UnexpectedResponse(r) if r.status == Status::NotLoggedIn => {
                    anyhow!(SourceError::Permanent(format!(
                        "login as {} refused by the server: {}",
                        self.user,
                        String::from_utf8_lossy(&r.body).trim()
                    )))
                }
                e => ftp_error(e, &format!("logging in as {}", self.user)),
            })?;
        ftp.transfer_type(FileType::Binary)
            .map_err(|e| ftp_error(e, "switching to binary mode"))?;
        // RFC 1738: the URL path is relative to the login folder; `//abs` is absolute.
        let dir = self.url.path.strip_prefix('/').unwrap_or(&self.url.path);
        if !dir.is_empty() {
            ftp.cwd(dir)
                .map_err(|e| ftp_error(e, &format!("changing to folder {dir}")))?;
        }
        Ok(ftp)
    }
}

/// Parses `LIST` lines (Unix or DOS style); `None` when a line is neither.
fn parse_list(lines: &[String]) -> Option<Vec<ListEntry>> {
    let mut out = Vec::new();
    for line in lines {
        if line.trim().is_empty() || line.starts_with("total ") {
            continue;
        }
        let f = ListParser::parse_posix(line)
            .or_else(|_| ListParser::parse_dos(line))
            .ok()?;
        if f.is_file() {
            out.push(ListEntry {
                name: f.name().to_string(),
                size: Some(f.size() as u64),
            });
        }
    }
    Some(out)
}

/// Parses `MLSD` facts lines, keeping regular files.
fn parse_mlsd(lines: &[String]) -> Result<Vec<ListEntry>> {
    let mut out = Vec::new();
    for line in lines {
        let f = ListParser::parse_mlsd(line)
            .map_err(|e| anyhow!("unreadable MLSD line {}: {e}", shown(line)))?;
        if f.is_file() {
            out.push(ListEntry {
                name: f.name().to_string(),
                size: Some(f.size() as u64),
            });
        }
    }
    Ok(out)
}

/// Runs a listing command (`MLSD`, `LIST`, `NLST`) and returns its lines, reading at most
/// [`super::MAX_LISTING_BYTES`] (suppaftp's own listing calls read without a bound);
/// `None` when the server does not implement the command.
fn listing_lines(ftp: &mut RustlsFtpStream, command: &str) -> Result<Option<Vec<String>>> {
    let (_, mut stream) =
        match ftp.custom_data_command(command, &[Status::AboutToSend, Status::AlreadyOpen]) {
            Ok(opened) => opened,
            Err(e) if is_not_implemented(&e) => return Ok(None),
            Err(e) => return Err(ftp_error(e, command)),
        };
    let data = ListingBudget::new(command).read(&mut stream);
    let finished = stream.finish().map_err(|e| ftp_error(e, command));
    let data = data?;
    finished?;
    Ok(Some(
        data.split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty())
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect(),
    ))
}

fn plain_name(name: &str) -> Option<&str> {
    let base = name.rsplit('/').next().unwrap_or(name);
    (!base.is_empty() && base != "." && base != "..").then_some(base)
}

impl Backend for FtpBackend {
    fn list(&self) -> Result<Vec<ListEntry>> {
        let mut ftp = self.connect()?;
        let unsupported = |what: &str| {
            anyhow!(SourceError::Permanent(format!(
                "the server implements neither MLSD nor {what}, so the folder cannot be listed"
            )))
        };
        let mut entries = match listing_lines(&mut ftp, "MLSD")? {
            Some(lines) => parse_mlsd(&lines)?,
            None => {
                let lines = listing_lines(&mut ftp, "LIST")?.ok_or_else(|| unsupported("LIST"))?;
                match parse_list(&lines) {
                    Some(v) => v,
                    None => listing_lines(&mut ftp, "NLST")?
                        .ok_or_else(|| unsupported("NLST"))?
                        .iter()
                        .filter_map(|n| plain_name(n.trim()))
                        .map(|name| ListEntry {
                            name: name.to_string(),
                            size: None,
                        })
                        .collect(),
                }
            }
        };
        let _ = ftp.quit();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    fn open(&self, name: &str, offset: u64) -> Result<Opened> {
        let mut ftp = self.connect()?;
        if offset > 0 {
            let at = usize::try_from(offset).map_err(|_| anyhow!("offset {offset} too large"))?;
            ftp.resume_transfer(at).map_err(|e| ftp_error(e, "REST"))?;
        }
        let (transfer, offset) = match ftp.retr_as_stream(name) {
            Ok(t) => (t, offset),
            // A server without REST: the whole file, from the start.
            Err(e) if offset > 0 && is_not_implemented(&e) => (
                ftp.retr_as_stream(name)
                    .map_err(|e| ftp_error(e, &format!("RETR {name}")))?,
                0,
            ),
            Err(e) => return Err(ftp_error(e, &format!("RETR {name}"))),
        };
        Ok(Opened {
            reader: Box::new(FtpReader {
                transfer: Some(transfer),
                _control: ftp,
            }),
            offset,
        })
    }

    fn display(&self) -> String {
        self.url.display()
    }
}

/// A download: the data connection, then at its end the server's verdict (226, or 426 when
/// the transfer failed) read from the control connection.
struct FtpReader<T: TlsStream> {
    transfer: Option<TransferStream<T>>,
    _control: ImplFtpStream<T>,
}

impl<T: TlsStream> Read for FtpReader<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(t) = self.transfer.as_mut() else {
            return Ok(0);
        };
        let n = t.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if let Some(t) = self.transfer.take() {
                t.finish().map_err(|e| match e {
                    FtpError::ConnectionError(io) => io,
                    other => io::Error::other(format!("transfer failed: {other}")),
                })?;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_lines() {
        let lines: Vec<String> = [
            "total 12",
            "-rw-r--r--    1 0        0          1048576 Nov 26 19:27 duplicity-full.20231114T221320Z.vol1.difftar.gz",
            "drwxr-xr-x    2 0        0             4096 Nov 26 19:27 sub",
            "11-26-25  07:27PM              2345 dos.manifest",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let v = parse_list(&lines).unwrap();
        assert_eq!(
            v,
            vec![
                ListEntry {
                    name: "duplicity-full.20231114T221320Z.vol1.difftar.gz".into(),
                    size: Some(1048576)
                },
                ListEntry {
                    name: "dos.manifest".into(),
                    size: Some(2345)
                },
            ]
        );
        assert!(parse_list(&["what is this".to_string()]).is_none());
    }

    #[test]
    fn mlsd_lines() {
        let lines: Vec<String> = [
            "type=cdir;perm=el;unique=1; .",
            "type=dir;perm=el;modify=20251126192700; sub",
            "type=file;size=42;perm=r;modify=20251126192700; a b.manifest",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let v = parse_mlsd(&lines).unwrap();
        assert_eq!(
            v,
            vec![ListEntry {
                name: "a b.manifest".into(),
                size: Some(42)
            }]
        );
    }
}
