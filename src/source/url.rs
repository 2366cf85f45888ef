//! Remote SOURCE URLs: `ftp://`, `ftps://`, `http://` and `https://`, with credentials.
//!
//! The user and password come from the URL (`scheme://user:pass@host/path`), else the
//! password from `$DUPMIRROR_PASSWORD` or duplicity's own `$FTP_PASSWORD` (when the URL names
//! a user), else both from `~/.netrc` (or the file `$NETRC` names). A password is kept out
//! of everything shown: [`SourceUrl::display`] and [`redact`] replace it with `***`, and the
//! URL handed to the HTTP client carries no credentials, so its errors cannot leak them.

use anyhow::{anyhow, bail, Result};
use percent_encoding::percent_decode_str;
use std::fmt;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Ftp,
    Ftps,
    Http,
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Ftp | Scheme::Ftps => 21,
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scheme::Ftp => "ftp",
            Scheme::Ftps => "ftps",
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// A password: never printed, not even by `{:?}`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: String) -> Secret {
        Secret(secret)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A parsed remote SOURCE.
#[derive(Clone, Debug)]
pub struct SourceUrl {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// The path, percent-decoded (`/` for the root).
    pub path: String,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// The URL without credentials (what HTTP requests go to).
    pub bare: ::url::Url,
    password_in_url: bool,
}

/// `source` with any password in its user-info part replaced by `***`. Works on any text
/// that looks like a URL, parsable or not, so even an error about a malformed SOURCE can
/// show it: a password may hold an unescaped `/`, `?`, `#` or `@` that breaks parsing, so
/// everything from the user's `:` to the last `@` counts as the password. That can hide a
/// port or a path as well; it never shows a password.
pub fn redact(source: &str) -> String {
    let Some((scheme, rest)) = source.split_once("://") else {
        return source.to_string();
    };
    let (Some(colon), Some(at)) = (rest.find(':'), rest.rfind('@')) else {
        return source.to_string();
    };
    let user = &rest[..colon];
    if at < colon || user.contains(['/', '?', '#']) {
        return source.to_string();
    }
    format!("{scheme}://{user}:***{}", &rest[at..])
}

fn decode(s: &str) -> Result<String> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| anyhow!("the URL holds percent-escapes that are not UTF-8"))
}

impl SourceUrl {
    /// Parses a remote SOURCE. Errors show the URL redacted.
    pub fn parse(source: &str) -> Result<SourceUrl> {
        let shown = redact(source);
        let mut url =
            ::url::Url::parse(source).map_err(|e| anyhow!("cannot parse SOURCE {shown}: {e}"))?;
        let scheme = match url.scheme() {
            "ftp" => Scheme::Ftp,
            "ftps" => Scheme::Ftps,
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => bail!(
                "unsupported source scheme {other:?} in {shown}: use a local path, file://, \
                 ftp://, ftps://, http:// or https://"
            ),
        };
        let host = match url.host_str() {
            Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']'),
            _ => bail!("SOURCE {shown} names no host"),
        }
        .to_string();
        if url.query().is_some() || url.fragment().is_some() {
            bail!("SOURCE {shown} has a query or fragment, which dupmirror does not use");
        }
        let user = (!url.username().is_empty())
            .then(|| decode(url.username()))
            .transpose()?;
        let password = url.password().map(decode).transpose()?.map(Secret);
        let password_in_url = password.is_some();
        let port = url.port().unwrap_or(scheme.default_port());
        let path = decode(url.path())?;
        let path = if path.is_empty() { "/".into() } else { path };
        // The user-info is ours to keep; the URL that goes anywhere has none.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Ok(SourceUrl {
            scheme,
            host,
            port,
            path,
            user,
            password,
            bare: url,
            password_in_url,
        })
    }

    /// Fills in missing credentials from the environment and the netrc file.
    pub fn with_credentials_from_env(mut self) -> SourceUrl {
        if self.password.is_none() && self.user.is_some() {
            let env = ["DUPMIRROR_PASSWORD", "FTP_PASSWORD"]
                .iter()
                .find_map(|k| std::env::var(k).ok());
            if let Some(p) = env {
                self.password = Some(Secret(p));
                return self;
            }
        }
        if self.password.is_none() {
            if let Some(text) = netrc_path().and_then(|p| std::fs::read_to_string(p).ok()) {
                if let Some((login, password)) =
                    netrc_lookup(&text, &self.host, self.user.as_deref())
                {
                    self.user = Some(login);
                    self.password = Some(password);
                }
            }
        }
        self
    }

    /// The URL as it may be shown: a password that was in it appears as `***`.
    pub fn display(&self) -> String {
        let mut s = format!("{}://", self.scheme.name());
        if let Some(u) = &self.user {
            s.push_str(&encode_userinfo(u));
            if self.password_in_url {
                s.push_str(":***");
            }
            s.push('@');
        }
        if self.host.contains(':') {
            s.push_str(&format!("[{}]", self.host));
        } else {
            s.push_str(&self.host);
        }
        if self.port != self.scheme.default_port() {
            s.push_str(&format!(":{}", self.port));
        }
        s.push_str(self.bare.path());
        s
    }
}

fn encode_userinfo(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SET).to_string()
}

fn netrc_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NETRC") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".netrc"))
}

/// The login and password that a netrc file gives for `host` (and `user`, when the URL
/// named one): the first matching `machine` entry, else `default`.
pub fn netrc_lookup(text: &str, host: &str, user: Option<&str>) -> Option<(String, Secret)> {
    struct Entry {
        machine: Option<String>,
        login: Option<String>,
        password: Option<String>,
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut tokens = text.split_whitespace();
    while let Some(tok) = tokens.next() {
        match tok {
            "machine" => entries.push(Entry {
                machine: tokens.next().map(str::to_string),
                login: None,
                password: None,
            }),
            "default" => entries.push(Entry {
                machine: None,
                login: None,
                password: None,
            }),
            "login" | "password" | "account" => {
                let value = tokens.next().map(str::to_string);
                if let Some(e) = entries.last_mut() {
                    match tok {
                        "login" => e.login = value,
                        "password" => e.password = value,
                        _ => {}
                    }
                }
            }
            "macdef" => {
                // A macro runs to the next blank line; its words are not tokens. Skip the
                // rest: macros come last in practice, and dupmirror runs none.
                break;
            }
            _ => {}
        }
    }
    let fits = |e: &&Entry| {
        e.password.is_some() && user.is_none_or(|u| e.login.as_deref().is_none_or(|l| l == u))
    };
    let found = entries
        .iter()
        .filter(|e| e.machine.as_deref() == Some(host))
        .find(fits)
        .or_else(|| entries.iter().filter(|e| e.machine.is_none()).find(fits))?;
    let login = found
        .login
        .clone()
        .or_else(|| user.map(str::to_string))
        .unwrap_or_else(|| "anonymous".into());
    Some((login, Secret(found.password.clone().unwrap_or_default())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        let u = SourceUrl::parse("ftp://bob:s%40cret@example.org:2121/a%20b/repo").unwrap();
        assert_eq!(u.scheme, Scheme::Ftp);
        assert_eq!(u.host, "example.org");
        assert_eq!(u.port, 2121);
        assert_eq!(u.path, "/a b/repo");
        assert_eq!(u.user.as_deref(), Some("bob"));
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("s@cret"));
        assert_eq!(u.display(), "ftp://bob:***@example.org:2121/a%20b/repo");
        assert!(!u.bare.as_str().contains("cret"));
        assert!(!format!("{u:?}").contains("cret"));

        let h = SourceUrl::parse("https://example.org/r/").unwrap();
        assert_eq!((h.port, h.path.as_str()), (443, "/r/"));
        assert_eq!(h.display(), "https://example.org/r/");
        let f = SourceUrl::parse("ftps://[::1]/r").unwrap();
        assert_eq!((f.host.as_str(), f.port), ("::1", 21));
        assert_eq!(f.display(), "ftps://[::1]/r");
    }

    #[test]
    fn errors_never_show_the_password() {
        for bad in [
            "gopher://u:hunter2@h/x",
            "ftp://u:hunter2@/x",
            "http://u:hunter2@h:99999/x",
            "https://u:hunter2@h/x?q=1",
        ] {
            let e = format!("{:#}", SourceUrl::parse(bad).unwrap_err());
            assert!(!e.contains("hunter2"), "{e}");
            assert!(e.contains("u:***@"), "{e}");
        }
        assert_eq!(redact("ftp://u:p@w@h/x"), "ftp://u:***@h/x");
        assert_eq!(redact("ftp://u@h/x:y@z"), "ftp://u@h/x:y@z");
        assert_eq!(redact("ftp://h:21/x"), "ftp://h:21/x");
        // A password with an unescaped /, ? or # is not a valid URL: still hidden.
        for (bad, shown) in [
            ("ftp://u:hunter2/x@h:99/r", "ftp://u:***@h:99/r"),
            ("https://u:hun?ter2@h/r", "https://u:***@h/r"),
            ("http://u:hun#ter2@h/r", "http://u:***@h/r"),
            ("ftp://a@b.c:hunter2@h/r", "ftp://a@b.c:***@h/r"),
        ] {
            assert_eq!(redact(bad), shown);
            let shown = match SourceUrl::parse(bad) {
                Ok(u) => u.display(),
                Err(e) => format!("{e:#}"),
            };
            assert!(!shown.contains("hun"), "{shown}");
        }
        assert_eq!(redact("/plain/path"), "/plain/path");
    }

    #[test]
    fn netrc_entries() {
        let text = "machine other login x password y\n\
                    machine h.example login alice password pa55\n\
                    machine h.example login bob password b0b\n\
                    default login anon password guest\n";
        let get = |host, user| netrc_lookup(text, host, user).map(|(l, p)| (l, p.0));
        assert_eq!(
            get("h.example", None),
            Some(("alice".into(), "pa55".into()))
        );
        assert_eq!(
            get("h.example", Some("bob")),
            Some(("bob".into(), "b0b".into()))
        );
        assert_eq!(get("nowhere", None), Some(("anon".into(), "guest".into())));
        assert_eq!(
            netrc_lookup("machine a login b", "a", None).map(|x| x.0),
            None
        );
    }
}
