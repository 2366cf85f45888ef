//! A repository in an S3 bucket, or any S3-compatible store (MinIO, Ceph RGW, Backblaze B2,
//! Cloudflare R2, Wasabi, moto), under a key prefix: `s3://BUCKET/PREFIX`, also spelled as
//! duplicity does, `boto3+s3://` and `s3+http://`.
//!
//! The crate `rusty-s3` signs requests (SigV4, as presigned URLs) and parses ListObjectsV2
//! answers, and does no I/O of its own: the requests go through the same blocking client
//! (ureq) as HTTP sources, so retries, resuming with `Range`, `--bwlimit`, `--ca-file`,
//! timeouts and byte accounting are those of [`super::http`]. (`object_store` would add
//! Google Cloud Storage and Azure, but it is async and brings aws-lc-rs, a long build.)
//!
//! ```text
//! list: GET ?list-type=2&prefix=PREFIX/&delimiter=/   repeated with each continuation
//!       token until the answer is not truncated (1,000 keys a page); keys in deeper
//!       "folders" come back as common prefixes and are left out, like subfolders locally
//! open: GET PREFIX/NAME with Range: bytes=OFFSET-      each request signed afresh
//! ```
//!
//! Credentials, region and endpoint come from where every AWS tool reads them (see
//! [`super::aws`]); without credentials the requests go unsigned (a public bucket or a CDN
//! in front of one). An endpoint (`--s3-endpoint-url`, `AWS_ENDPOINT_URL`) is addressed
//! path-style (`ENDPOINT/BUCKET/KEY`), as S3-compatible servers expect; AWS itself
//! virtual-host style (`BUCKET.s3.REGION.amazonaws.com/KEY`), except for bucket names with
//! dots, which TLS certificates for `*.s3...` do not cover. A signed URL is a bearer token
//! for its lifetime: it never appears in an error ([`super::http::request_error`] shows no
//! URL).

use super::aws::{AwsEnv, AwsSettings};
use super::http::{ranged_get, Body, HttpClient, Response};
use super::url::redact;
use super::{Backend, ListEntry, ListingBudget, Opened, SourceError, SourceOptions};
use anyhow::{anyhow, bail, Context, Result};
use rusty_s3::actions::ListObjectsV2;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use std::io::Read;
use std::time::Duration;
use url::Url;

/// How long a signed request stays valid: long enough for a slow ranged GET to start.
const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);

/// The most bytes of an error answer read to explain it.
const ERROR_BODY_CAP: u64 = 64 * 1024;

/// The URL schemes that name an S3 source.
pub const SCHEMES: [&str; 3] = ["s3", "boto3+s3", "s3+http"];

/// `BUCKET` and `PREFIX` (with its trailing `/`, or empty) of an S3 SOURCE URL. Like
/// duplicity, empty path parts fold away: `s3://b//p/` is `s3://b/p`.
pub fn parse_location(source: &str) -> Result<(String, String)> {
    let shown = redact(source);
    let Some((_, rest)) = source.split_once("://") else {
        bail!("{shown} is not an s3:// URL");
    };
    if rest.contains(['?', '#']) {
        bail!("SOURCE {shown} has a query or fragment, which dupmirror does not use");
    }
    let decoded = percent_encoding::percent_decode_str(rest)
        .decode_utf8()
        .map_err(|_| anyhow!("SOURCE {shown} holds percent-escapes that are not UTF-8"))?;
    let mut parts = decoded.split('/').filter(|p| !p.is_empty());
    let bucket = parts.next().unwrap_or_default();
    if bucket.is_empty() || bucket.contains(['@', ':']) {
        bail!(
            "SOURCE {shown} names no bucket: write s3://BUCKET/PREFIX (credentials come from \
             the environment or ~/.aws, the endpoint from --s3-endpoint-url)"
        );
    }
    let prefix: Vec<&str> = parts.collect();
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", prefix.join("/"))
    };
    Ok((bucket.to_string(), prefix))
}

pub struct S3Backend {
    client: HttpClient,
    bucket: Bucket,
    credentials: Option<Credentials>,
    prefix: String,
    shown: String,
    /// Where the keys came from, for the hint when they are refused.
    keys_origin: Option<String>,
}

impl S3Backend {
    /// An S3 source for `source` (`s3://BUCKET/PREFIX`), settings from the process's
    /// environment and files, the endpoint `--s3-endpoint-url` if given.
    pub fn new(
        source: &str,
        endpoint_option: Option<&str>,
        options: &SourceOptions,
    ) -> Result<S3Backend> {
        let (bucket, prefix) = parse_location(source)?;
        let settings = AwsEnv::resolve_process(endpoint_option)?;
        S3Backend::with_settings(bucket, prefix, settings, options)
    }

    fn with_settings(
        bucket: String,
        prefix: String,
        settings: AwsSettings,
        options: &SourceOptions,
    ) -> Result<S3Backend> {
        let shown = format!("s3://{bucket}/{prefix}");
        let (endpoint, style) = match &settings.endpoint {
            Some(e) => {
                let mut url = Url::parse(e)
                    .map_err(|err| anyhow!("bad S3 endpoint URL {}: {err}", redact(e)))?;
                if !url.username().is_empty() || url.password().is_some() {
                    bail!(
                        "the S3 endpoint URL {} holds credentials; give them as \
                         AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or in ~/.aws/credentials",
                        redact(e)
                    );
                }
                if !url.path().ends_with('/') {
                    let path = format!("{}/", url.path());
                    url.set_path(&path);
                }
                (url, UrlStyle::Path)
            }
            None => {
                let url = Url::parse(&format!("https://s3.{}.amazonaws.com/", settings.region))
                    .with_context(|| format!("bad AWS region {:?}", settings.region))?;
                let style = if bucket.contains('.') {
                    UrlStyle::Path
                } else {
                    UrlStyle::VirtualHost
                };
                (url, style)
            }
        };
        let tls = endpoint.scheme() == "https";
        let bucket = Bucket::new(endpoint, style, bucket, settings.region)
            .map_err(|e| anyhow!("cannot address bucket of {shown}: {e:?}"))?;
        let keys_origin = settings.keys.as_ref().map(|k| k.origin.clone());
        let credentials = settings.keys.map(|k| match k.session_token {
            Some(t) => Credentials::new_with_token(
                k.access_key_id,
                k.secret_access_key.expose(),
                t.expose(),
            ),
            None => Credentials::new(k.access_key_id, k.secret_access_key.expose()),
        });
        Ok(S3Backend {
            client: HttpClient::new(options, tls)?,
            bucket,
            credentials,
            prefix,
            shown,
            keys_origin,
        })
    }

    /// One page of the listing: its entries and the token for the next page, if any.
    fn list_page(
        &self,
        token: Option<&str>,
        budget: &mut ListingBudget,
    ) -> Result<(Vec<ListEntry>, Option<String>)> {
        let what = format!("listing {}", self.shown);
        let mut action = ListObjectsV2::new(&self.bucket, self.credentials.as_ref());
        action.with_prefix(self.prefix.as_str());
        action.with_delimiter("/");
        if let Some(t) = token {
            action.with_continuation_token(t);
        }
        let url = action.sign(SIGNED_FOR);
        let resp = self.client.get(url, 0, None, &what)?.response;
        if !resp.status().is_success() {
            return Err(s3_error(resp, &what, self.keys_origin.as_deref()));
        }
        let body = String::from_utf8_lossy(&budget.read(Body::of(resp))?).into_owned();
        let page = ListObjectsV2::parse_response(&body).map_err(|e| {
            anyhow!(SourceError::Permanent(format!(
                "{what}: the answer is not an S3 ListObjectsV2 result ({e})"
            )))
        })?;
        let entries = page
            .contents
            .into_iter()
            .filter_map(|c| {
                let name = c.key.strip_prefix(&self.prefix)?;
                (!name.is_empty() && !name.contains('/')).then(|| ListEntry {
                    name: name.to_string(),
                    size: Some(c.size),
                })
            })
            .collect();
        Ok((entries, page.next_continuation_token))
    }
}

/// An S3 error answer as one line: its `<Code>` and `<Message>` when the body has them,
/// with a hint for the common ones. 5xx (including `503 SlowDown`), 408 and 429 are
/// transient.
fn s3_error(resp: Response, what: &str, keys_origin: Option<&str>) -> anyhow::Error {
    let status = resp.status();
    let mut body = String::new();
    let _ = Body::of(resp)
        .take(ERROR_BODY_CAP)
        .read_to_string(&mut body);
    let tag = |t: &str| {
        let start = body.find(&format!("<{t}>"))? + t.len() + 2;
        let end = body[start..].find(&format!("</{t}>"))? + start;
        Some(body[start..end].trim().to_string())
    };
    let code = tag("Code");
    let keys = match keys_origin {
        Some(origin) => format!("the access key from {origin}"),
        None => "unsigned requests (no AWS credentials found)".into(),
    };
    let hint = match code.as_deref() {
        Some("NoSuchBucket") => " (is the bucket name or the endpoint wrong?)".into(),
        Some("InvalidAccessKeyId" | "SignatureDoesNotMatch") => format!(" (refused: {keys})"),
        Some("AccessDenied") => format!(" ({keys} may not s3:ListBucket or s3:GetObject)"),
        Some("PermanentRedirect" | "AuthorizationHeaderMalformed") => {
            " (the bucket is in another region: set AWS_REGION)".into()
        }
        _ => String::new(),
    };
    let detail = match (code, tag("Message")) {
        (Some(c), Some(m)) if !m.is_empty() => format!("{c}: {m}"),
        (Some(c), _) => c,
        (None, _) => match status.as_u16() {
            401 | 403 => "access denied".into(),
            404 => "not found".into(),
            _ => status.canonical_reason().unwrap_or("error").into(),
        },
    };
    let msg = format!("{what}: HTTP {}: {detail}{hint}", status.as_u16());
    let code = status.as_u16();
    anyhow!(if status.is_server_error() || code == 408 || code == 429 {
        SourceError::Transient(msg)
    } else {
        SourceError::Permanent(msg)
    })
}

impl Backend for S3Backend {
    fn list(&self) -> Result<Vec<ListEntry>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut budget = ListingBudget::new(&format!("listing {}", self.shown));
        loop {
            let (entries, next) = self.list_page(token.as_deref(), &mut budget)?;
            out.extend(entries);
            match next {
                // A server that hands back the token it was given would loop forever.
                Some(t) if token.as_deref() != Some(t.as_str()) => token = Some(t),
                Some(_) => bail!(SourceError::Permanent(format!(
                    "listing {}: the server repeats its continuation token",
                    self.shown
                ))),
                None => break,
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn open(&self, name: &str, offset: u64) -> Result<Opened> {
        let key = format!("{}{name}", self.prefix);
        ranged_get(
            |from| {
                let url = self
                    .bucket
                    .get_object(self.credentials.as_ref(), &key)
                    .sign(SIGNED_FOR);
                Ok(self.client.get(url, from, None, name)?.response)
            },
            name,
            offset,
            |resp, what| s3_error(resp, what, self.keys_origin.as_deref()),
        )
    }

    fn display(&self) -> String {
        self.shown.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use rusty_s3::Method;

    #[test]
    fn locations() {
        let p = |s| parse_location(s).unwrap();
        assert_eq!(p("s3://b/p"), ("b".into(), "p/".into()));
        assert_eq!(p("boto3+s3://b//x/y/"), ("b".into(), "x/y/".into()));
        assert_eq!(p("s3+http://b"), ("b".into(), String::new()));
        assert_eq!(p("s3://b/a%20b"), ("b".into(), "a b/".into()));
        assert_eq!(p("s3:///p"), ("p".into(), String::new()));
        assert!(parse_location("s3://").is_err());
        assert!(parse_location("s3://k:secret@b/p")
            .unwrap_err()
            .to_string()
            .contains("k:***@"));
    }

    /// AWS's published SigV4 example for a presigned GET ("Authenticating Requests: Using
    /// Query Parameters", Amazon S3 API reference): the example keys, bucket `examplebucket`,
    /// object `test.txt`, signed at 2013-05-24T00:00:00Z for 86400 s in us-east-1. Its
    /// canonical request is
    ///
    /// ```text
    /// GET
    /// /test.txt
    /// X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host
    /// host:examplebucket.s3.amazonaws.com
    ///
    /// host
    /// UNSIGNED-PAYLOAD
    /// ```
    ///
    /// and the signature below. The generic SigV4 test suite (`get-vanilla` and the rest)
    /// signs for the made-up service `service` with an `Authorization` header; rusty-s3
    /// signs only for `s3`, as presigned URLs, so this S3 example is the vector that
    /// exercises the code dupmirror runs. A local emulator accepts any signature; this
    /// test is what keeps the signing honest.
    #[test]
    fn signing_matches_the_aws_presigned_url_example() {
        let date = Timestamp::from_second(1_369_353_600).unwrap();
        let url = rusty_s3::signing::sign(
            &date,
            Method::Get,
            Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").unwrap(),
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            None,
            "us-east-1",
            86_400,
            std::iter::empty(),
            std::iter::empty(),
        );
        assert_eq!(
            url.as_str(),
            "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
             &X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\
             &X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
        // The same request through the backend's own addressing and action.
        let bucket = Bucket::new(
            Url::parse("https://s3.amazonaws.com/").unwrap(),
            UrlStyle::VirtualHost,
            "examplebucket",
            "us-east-1",
        )
        .unwrap();
        let keys = Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
        let signed = bucket
            .get_object(Some(&keys), "test.txt")
            .sign_with_time(Duration::from_secs(86_400), &date);
        assert_eq!(signed, url);
    }

    #[test]
    fn endpoints_address_path_style_and_aws_virtual_host() {
        let settings = |endpoint: Option<&str>| AwsSettings {
            keys: None,
            region: "eu-west-1".into(),
            endpoint: endpoint.map(str::to_string),
        };
        let b = |bucket: &str, endpoint| {
            S3Backend::with_settings(
                bucket.into(),
                "p/".into(),
                settings(endpoint),
                &SourceOptions::default(),
            )
            .unwrap()
        };
        let s = b("bk", Some("http://127.0.0.1:9000"));
        assert_eq!(s.bucket.base_url().as_str(), "http://127.0.0.1:9000/bk/");
        let s = b("bk", Some("https://cdn.example/base"));
        assert_eq!(s.bucket.base_url().as_str(), "https://cdn.example/base/bk/");
        let s = b("bk", None);
        assert_eq!(
            s.bucket.base_url().as_str(),
            "https://bk.s3.eu-west-1.amazonaws.com/"
        );
        let s = b("my.bk", None);
        assert_eq!(
            s.bucket.base_url().as_str(),
            "https://s3.eu-west-1.amazonaws.com/my.bk/"
        );
        // Unsigned (no keys): a plain URL a CDN can cache.
        let url = s.bucket.get_object(None, "p/x").sign(SIGNED_FOR);
        assert_eq!(url.as_str(), "https://s3.eu-west-1.amazonaws.com/my.bk/p/x");
        assert!(S3Backend::with_settings(
            "b".into(),
            String::new(),
            settings(Some("http://u:pw@h/")),
            &SourceOptions::default()
        )
        .is_err_and(|e| !e.to_string().contains("pw")));
    }
}
