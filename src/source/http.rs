//! A repository published over HTTP or HTTPS, and the blocking HTTP client (ureq, rustls)
//! that S3 shares.
//!
//! The listing is the server's directory index (see [`super::autoindex`]) or a plain index
//! file when SOURCE names one; files are fetched relative to the listing's final URL.
//! Resuming asks for `Range: bytes=N-`; a server that answers 200 instead of 206 (like
//! `python3 -m http.server`) sends the whole file, and [`Opened::offset`] says so. The
//! credentials go in an `Authorization` header, never in the URL, so no error can show them.
//!
//! Credentials go only to the origin (scheme, host, port) of SOURCE. Redirects are followed
//! here (at most 10), not by ureq, so that each hop is judged: a request carries the header
//! exactly when its URL is on SOURCE's origin, and when the listing ends on another origin
//! the files, which resolve against it, are fetched from there without credentials, for
//! good. A redirect from HTTPS to plain HTTP is refused: nothing of the repository is read
//! over a downgraded connection. The listing body is read up to
//! [`super::MAX_LISTING_BYTES`].
//!
//! Timeouts: resolving and connecting (TCP and the TLS handshake) within `connect_timeout`;
//! the answer's headers within `read_timeout`; then each read of the body within
//! `read_timeout`: an idle limit, never a total, since one volume may take hours on a slow
//! line. Proxies come from the environment ([`super::proxy`]).

use super::url::{Secret, SourceUrl};
use super::{
    autoindex, proxy, root_cause, tls, Backend, ListEntry, ListingBudget, Opened, SourceError,
    SourceOptions,
};
use anyhow::{anyhow, Result};
use base64::Engine;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use ureq::http::header::{AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use ureq::http::StatusCode;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
use ureq::Agent;
use url::Url;

/// Characters escaped in a file name put into a URL: all but the unreserved ones.
const NAME: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 10;

/// An answer: status, headers and the body to read.
pub(super) type Response = ureq::http::Response<ureq::Body>;

/// Whether two URLs have the same origin: scheme, host and port.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// A ureq failure as a [`SourceError`], never showing the URL (a signed S3 URL is a
/// bearer token). Transient, as reqwest's connect, request and body errors were: timeouts,
/// failures to resolve or connect (to the server or the proxy), I/O errors and malformed
/// answers. Permanent: a refused certificate and anything about the request itself.
pub(super) fn request_error(e: ureq::Error, what: &str) -> anyhow::Error {
    use ureq::Error as E;
    let (transient, detail) = match e {
        E::Timeout(_) => (true, "timed out".to_string()),
        E::Io(io) => {
            // A TLS failure (a certificate refused) reaches ureq as an I/O error around the
            // rustls error.
            let tls = io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>());
            (!tls, root_cause(&io))
        }
        E::HostNotFound | E::ConnectionFailed | E::ConnectProxyFailed(_) | E::Protocol(_) => {
            (true, e.to_string())
        }
        E::BadUri(_) | E::Http(_) => (false, "not a valid URL".to_string()),
        e => (false, e.to_string()),
    };
    let msg = format!("{what}: {detail}");
    anyhow!(if transient {
        SourceError::Transient(msg)
    } else {
        SourceError::Permanent(msg)
    })
}

/// An unexpected HTTP status as a [`SourceError`].
pub(super) fn status_error(status: StatusCode, what: &str) -> anyhow::Error {
    let code = status.as_u16();
    let msg = match code {
        401 | 403 => format!("{what}: HTTP {status}: access denied (wrong user or password?)"),
        404 | 410 => format!("{what}: HTTP {status}: not found"),
        _ => format!("{what}: HTTP {status}"),
    };
    anyhow!(if status.is_server_error() || code == 408 || code == 429 {
        SourceError::Transient(msg)
    } else {
        SourceError::Permanent(msg)
    })
}

fn permanent(msg: String) -> anyhow::Error {
    anyhow!(SourceError::Permanent(msg))
}

/// An `Authorization` header and the origin it may be sent to.
pub(super) struct Credentials {
    origin: Url,
    header: Secret,
}

impl Credentials {
    /// HTTP basic authentication for `origin`.
    pub fn basic(origin: Url, user: &str, password: Option<&Secret>) -> Credentials {
        let pair = format!("{user}:{}", password.map(Secret::expose).unwrap_or(""));
        let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
        Credentials {
            origin,
            header: Secret::new(format!("Basic {encoded}")),
        }
    }
}

/// An answer and the URL it came from, after redirects.
pub(super) struct Answer {
    pub url: Url,
    pub response: Response,
}

/// The blocking HTTP client that every HTTP-based backend (HTTP, S3) uses: timeouts from
/// `options`, TLS trusting the system's roots and `--ca-file`, the environment's proxy for
/// the source's scheme (`tls`: HTTPS).
pub(super) struct HttpClient {
    agent: Agent,
}

impl HttpClient {
    pub fn new(options: &SourceOptions, tls: bool) -> Result<HttpClient> {
        tls::install_provider();
        // A plain HTTP source needs the roots only if redirected to HTTPS: without any, that
        // redirect fails as an untrusted certificate, not here.
        let roots = match tls::trusted_roots(options.ca_file.as_deref()) {
            Ok(roots) => roots,
            Err(_) if !tls => Vec::new(),
            Err(e) => return Err(e),
        };
        let roots: Vec<Certificate<'static>> = roots
            .iter()
            .map(|c| Certificate::from_der(c).to_owned())
            .collect();
        let tls_config = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::Specific(Arc::new(roots)))
            .build();
        let proxy = proxy::from_env(tls, |name| std::env::var(name).ok())?;
        let idle = Some(options.read_timeout);
        let config = Agent::config_builder()
            .user_agent(concat!("dupmirror/", env!("CARGO_PKG_VERSION")))
            .http_status_as_error(false)
            .max_redirects(0)
            .tls_config(tls_config)
            .proxy(proxy)
            .timeout_resolve(Some(options.connect_timeout))
            .timeout_connect(Some(options.connect_timeout))
            .timeout_recv_response(idle)
            .timeout_per_read(idle)
            .timeout_per_write(idle)
            .build();
        Ok(HttpClient {
            agent: config.into(),
        })
    }

    /// GETs `url` from byte `from` (a `Range` request when `from > 0`), following redirects
    /// by hand: `credentials` go with each request on their own origin only, and a hop from
    /// HTTPS to anything else is refused.
    pub fn get(
        &self,
        mut url: Url,
        from: u64,
        credentials: Option<&Credentials>,
        what: &str,
    ) -> Result<Answer> {
        let mut secure = false;
        for _ in 0..=MAX_REDIRECTS {
            secure |= url.scheme() == "https";
            let mut request = self.agent.get(url.as_str());
            if from > 0 {
                request = request.header(RANGE, format!("bytes={from}-"));
            }
            if let Some(c) = credentials.filter(|c| same_origin(&url, &c.origin)) {
                request = request.header(AUTHORIZATION, c.header.expose());
            }
            let response = request.call().map_err(|e| request_error(e, what))?;
            let redirected = matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308);
            let Some(location) = response.headers().get(LOCATION).filter(|_| redirected) else {
                return Ok(Answer { url, response });
            };
            let next = location
                .to_str()
                .ok()
                .and_then(|l| url.join(l).ok())
                .ok_or_else(|| {
                    permanent(format!(
                        "{what}: the server redirects to an unusable location"
                    ))
                })?;
            if secure && next.scheme() != "https" {
                let to = next.origin().ascii_serialization();
                return Err(permanent(format!(
                    "{what}: refusing the server's redirect from HTTPS to {to}, which is not \
                     encrypted"
                )));
            }
            url = next;
        }
        Err(permanent(format!(
            "{what}: more than {MAX_REDIRECTS} redirects"
        )))
    }
}

/// The body of an answer, its read errors made plain: ureq reports a timeout as an I/O
/// error of kind `Other` around its own error; here it is `TimedOut`, as a socket's is.
pub(super) struct Body(ureq::BodyReader<'static>);

impl Body {
    pub fn of(response: Response) -> Body {
        Body(response.into_body().into_reader())
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            let inner = e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>());
            match inner {
                Some(ureq::Error::Timeout(_)) => {
                    io::Error::new(io::ErrorKind::TimedOut, "timed out")
                }
                _ => e,
            }
        })
    }
}

/// The body of an answer as an [`Opened`] file starting at `offset`.
fn opened(response: Response, offset: u64) -> Opened {
    Opened {
        reader: Box::new(Body::of(response)),
        offset,
    }
}

/// GETs a file from `offset` and sorts out the answer: 206 from the offset, 200 from the
/// top, 416 (the partial copy is wrong) a new request from the top. `get(from)` sends one
/// GET for the file from byte `from`; `refused` turns an unexpected answer into an error.
pub(super) fn ranged_get(
    get: impl Fn(u64) -> Result<Response>,
    name: &str,
    offset: u64,
    refused: impl Fn(Response, &str) -> anyhow::Error,
) -> Result<Opened> {
    let response = get(offset)?;
    match response.status() {
        StatusCode::OK => Ok(opened(response, 0)),
        StatusCode::PARTIAL_CONTENT => {
            let start = response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.trim().parse::<u64>().ok());
            match start {
                Some(start) if start == offset => Ok(opened(response, offset)),
                _ => Err(anyhow!(SourceError::Transient(format!(
                    "{name}: the server answered a request for bytes {offset}- with an \
                     unusable range"
                )))),
            }
        }
        // The offset is at or past the end: the partial copy is wrong; start over.
        StatusCode::RANGE_NOT_SATISFIABLE => {
            let response = get(0)?;
            if response.status() != StatusCode::OK {
                return Err(refused(response, name));
            }
            Ok(opened(response, 0))
        }
        _ => Err(refused(response, name)),
    }
}

pub struct HttpBackend {
    client: HttpClient,
    url: SourceUrl,
    credentials: Option<Credentials>,
    /// Where names resolve: the final URL of the last listing (after redirects).
    base: Mutex<Url>,
}

impl HttpBackend {
    pub fn new(url: SourceUrl, options: &SourceOptions) -> Result<HttpBackend> {
        let url = url.with_credentials_from_env();
        let client = HttpClient::new(options, url.scheme == super::url::Scheme::Https)?;
        let credentials = url
            .user
            .as_deref()
            .map(|user| Credentials::basic(url.bare.clone(), user, url.password.as_ref()));
        Ok(HttpBackend {
            client,
            base: Mutex::new(url.bare.clone()),
            credentials,
            url,
        })
    }

    fn get(&self, url: Url, from: u64, what: &str) -> Result<Answer> {
        self.client.get(url, from, self.credentials.as_ref(), what)
    }

    fn file_url(&self, name: &str) -> Result<Url> {
        let base = self.base.lock().map_err(|_| anyhow!("poisoned lock"))?;
        base.join(&utf8_percent_encode(name, NAME).to_string())
            .map_err(|e| anyhow!("cannot form the URL of {name}: {e}"))
    }
}

impl Backend for HttpBackend {
    fn list(&self) -> Result<Vec<ListEntry>> {
        let what = format!("listing {}", self.url.display());
        let Answer { url, response } = self.get(self.url.bare.clone(), 0, &what)?;
        if !response.status().is_success() {
            return Err(status_error(response.status(), &what));
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = ListingBudget::new(&what).read(Body::of(response))?;
        let body = String::from_utf8_lossy(&body);
        let entries = autoindex::parse(&body, content_type.as_deref(), &url)
            .map_err(|e| anyhow!(SourceError::Permanent(format!("{what}: {e:#}"))))?;
        if let Ok(mut base) = self.base.lock() {
            *base = url;
        }
        Ok(entries)
    }

    fn open(&self, name: &str, offset: u64) -> Result<Opened> {
        let url = self.file_url(name)?;
        ranged_get(
            |from| Ok(self.get(url.clone(), from, name)?.response),
            name,
            offset,
            |response, what| status_error(response.status(), what),
        )
    }

    fn display(&self) -> String {
        self.url.display()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::retry::is_transient;

    #[test]
    fn failures_keep_their_retry_class_and_never_show_the_url() {
        let class = |e: ureq::Error| {
            let e = request_error(e, "listing x");
            (is_transient(&e), e.to_string())
        };
        assert_eq!(
            class(ureq::Error::Timeout(ureq::Timeout::PerRead)),
            (true, "listing x: timed out".to_string())
        );
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(class(ureq::Error::Io(refused)).0);
        assert!(class(ureq::Error::HostNotFound).0);
        let untrusted = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let (transient, msg) = class(ureq::Error::Io(io::Error::new(
            io::ErrorKind::InvalidData,
            untrusted,
        )));
        assert!(!transient && msg.contains("certificate"), "{msg}");
        let (transient, msg) = class(ureq::Error::BadUri(
            "https://h/k?X-Amz-Signature=s3cret".into(),
        ));
        assert!(!transient && !msg.contains("s3cret"), "{msg}");
    }

    #[test]
    fn statuses_keep_their_retry_class() {
        for (code, transient) in [
            (500, true),
            (503, true),
            (408, true),
            (429, true),
            (401, false),
            (404, false),
            (400, false),
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(
                is_transient(&status_error(status, "x")),
                transient,
                "{code}"
            );
        }
    }
}
