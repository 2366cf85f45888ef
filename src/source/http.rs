//! A repository published over HTTP or HTTPS (reqwest, blocking, rustls).
//!
//! The listing is the server's directory index (see [`super::autoindex`]) or a plain index
//! file when SOURCE names one; files are fetched relative to the listing's final URL.
//! Resuming asks for `Range: bytes=N-`; a server that answers 200 instead of 206 (like
//! `python3 -m http.server`) sends the whole file, and [`Opened::offset`] says so. The
//! credentials go in an `Authorization` header, never in the URL, so no error can show them.
//!
//! Credentials go only to the origin (scheme, host, port) of SOURCE. Redirects are followed
//! (at most 10), but a hop to another origin loses the header (reqwest), and when the
//! listing ends on another origin the files, which resolve against it, are fetched from
//! there without credentials, for good. A redirect from HTTPS to plain HTTP is refused:
//! nothing of the repository is read over a downgraded connection. The listing body is read
//! up to [`super::MAX_LISTING_BYTES`].

use super::url::{Secret, SourceUrl};
use super::{
    autoindex, root_cause, tls, Backend, ListEntry, ListingBudget, Opened, SourceError,
    SourceOptions,
};
use anyhow::{anyhow, Result};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::StatusCode;
use std::sync::Mutex;
use url::Url;

/// Characters escaped in a file name put into a URL: all but the unreserved ones.
const NAME: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub struct HttpBackend {
    client: Client,
    url: SourceUrl,
    user: Option<String>,
    password: Option<Secret>,
    /// Where names resolve: the final URL of the last listing (after redirects).
    base: Mutex<Url>,
}

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 10;

/// Whether two URLs have the same origin: scheme, host and port.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Follows redirects, except from HTTPS down to anything else.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let secure_before = attempt.previous().iter().any(|u| u.scheme() == "https");
        if secure_before && attempt.url().scheme() != "https" {
            let to = attempt.url().origin().ascii_serialization();
            return attempt.error(format!(
                "refusing the server's redirect from HTTPS to {to}, which is not encrypted"
            ));
        }
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        attempt.follow()
    })
}

/// A reqwest failure as a [`SourceError`]: the innermost cause (the useful part), never
/// the URL.
pub(super) fn request_error(e: reqwest::Error, what: &str) -> anyhow::Error {
    let transient =
        !e.is_redirect() && (e.is_timeout() || e.is_connect() || e.is_request() || e.is_body());
    let e = e.without_url();
    let msg = if e.is_timeout() {
        format!("{what}: timed out")
    } else {
        format!("{what}: {}", root_cause(&e))
    };
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

/// The blocking HTTP client that every HTTP-based backend (HTTP, S3) uses: timeouts from
/// `options`, TLS by the shared rustls configuration (with `--ca-file`) when `tls`.
pub(super) fn client(options: &SourceOptions, tls: bool) -> Result<Client> {
    tls::install_provider();
    let mut builder = Client::builder()
        .user_agent(concat!("dupmirror/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(options.connect_timeout)
        .timeout(options.read_timeout)
        .redirect(redirect_policy());
    if tls {
        let config = tls::client_config(options.ca_file.as_deref())?;
        builder = builder.tls_backend_preconfigured((*config).clone());
    }
    builder
        .build()
        .map_err(|e| anyhow!("cannot set up the HTTP client: {}", e.without_url()))
}

/// Sends a GET for `name` from `offset` (a `Range` request when `offset > 0`) and sorts out
/// the answer: 206 from the offset, 200 from the top, 416 (the partial copy is wrong) a new
/// request from the top. `request` builds a fresh request for the file each time it is
/// called; `refused` turns an unexpected answer into an error.
pub(super) fn ranged_get(
    request: impl Fn() -> Result<RequestBuilder>,
    name: &str,
    offset: u64,
    refused: impl Fn(Response, &str) -> anyhow::Error,
) -> Result<Opened> {
    let mut req = request()?;
    if offset > 0 {
        req = req.header(RANGE, format!("bytes={offset}-"));
    }
    let resp = req.send().map_err(|e| request_error(e, name))?;
    match resp.status() {
        StatusCode::OK => Ok(Opened {
            reader: Box::new(resp),
            offset: 0,
        }),
        StatusCode::PARTIAL_CONTENT => {
            let start = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.trim().parse::<u64>().ok());
            match start {
                Some(start) if start == offset => Ok(Opened {
                    reader: Box::new(resp),
                    offset,
                }),
                _ => Err(anyhow!(SourceError::Transient(format!(
                    "{name}: the server answered a request for bytes {offset}- with an \
                     unusable range"
                )))),
            }
        }
        // The offset is at or past the end: the partial copy is wrong; start over.
        StatusCode::RANGE_NOT_SATISFIABLE => {
            let resp = request()?.send().map_err(|e| request_error(e, name))?;
            if resp.status() != StatusCode::OK {
                return Err(refused(resp, name));
            }
            Ok(Opened {
                reader: Box::new(resp),
                offset: 0,
            })
        }
        _ => Err(refused(resp, name)),
    }
}

impl HttpBackend {
    pub fn new(url: SourceUrl, options: &SourceOptions) -> Result<HttpBackend> {
        let url = url.with_credentials_from_env();
        let client = client(options, url.scheme == super::url::Scheme::Https)?;
        Ok(HttpBackend {
            client,
            base: Mutex::new(url.bare.clone()),
            user: url.user.clone(),
            password: url.password.clone(),
            url,
        })
    }

    /// A GET of `url`, with the credentials only when `url` is on SOURCE's own origin.
    fn get(&self, url: Url) -> RequestBuilder {
        let ours = same_origin(&url, &self.url.bare);
        let req = self.client.get(url);
        match &self.user {
            Some(u) if ours => req.basic_auth(u, self.password.as_ref().map(Secret::expose)),
            _ => req,
        }
    }

    fn send(&self, req: RequestBuilder, what: &str) -> Result<Response> {
        req.send().map_err(|e| request_error(e, what))
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
        let resp = self.send(self.get(self.url.bare.clone()), &what)?;
        if !resp.status().is_success() {
            return Err(status_error(resp.status(), &what));
        }
        let final_url = resp.url().clone();
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = ListingBudget::new(&what).read(resp)?;
        let body = String::from_utf8_lossy(&body);
        let entries = autoindex::parse(&body, content_type.as_deref(), &final_url)
            .map_err(|e| anyhow!(SourceError::Permanent(format!("{what}: {e:#}"))))?;
        if let Ok(mut base) = self.base.lock() {
            *base = final_url;
        }
        Ok(entries)
    }

    fn open(&self, name: &str, offset: u64) -> Result<Opened> {
        let url = self.file_url(name)?;
        ranged_get(
            || Ok(self.get(url.clone())),
            name,
            offset,
            |resp, what| status_error(resp.status(), what),
        )
    }

    fn display(&self) -> String {
        self.url.display()
    }
}
