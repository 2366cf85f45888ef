//! Which proxy an HTTP-based source (HTTP, HTTPS, S3) goes through, read from the
//! environment as curl reads it (and reqwest, dupmirror's client before ureq):
//! `HTTPS_PROXY`/`https_proxy` for HTTPS, `HTTP_PROXY`/`http_proxy` for plain HTTP, else
//! `ALL_PROXY`/`all_proxy` for both. The hosts in `NO_PROXY`/`no_proxy` (comma-separated:
//! `*`, `host`, which also covers its subdomains, `.domain`) are reached directly.
//! `HTTP_PROXY` is ignored when `REQUEST_METHOD` is set: in a CGI program it can come from
//! a request's `Proxy:` header ("httpoxy").
//!
//! Limits: ureq reaches the target through an HTTP proxy with `CONNECT` for plain HTTP too
//! (a proxy that allows `CONNECT` only to port 443, squid's default, refuses `http://`
//! sources), and `NO_PROXY` takes host names, not address ranges (`10.0.0.0/8`).

use super::url::redact;
use anyhow::{anyhow, Result};
use ureq::Proxy;

/// The proxy for a source (`https`: of an HTTPS one), `env` giving the environment's
/// variables (the process's, or a test's).
pub fn from_env(https: bool, env: impl Fn(&str) -> Option<String>) -> Result<Option<Proxy>> {
    let first = |names: &[&str]| names.iter().find_map(|n| env(n).filter(|v| !v.is_empty()));
    let specific = if https {
        first(&["HTTPS_PROXY", "https_proxy"])
    } else if env("REQUEST_METHOD").is_some() {
        None
    } else {
        first(&["HTTP_PROXY", "http_proxy"])
    };
    let Some(url) = specific.or_else(|| first(&["ALL_PROXY", "all_proxy"])) else {
        return Ok(None);
    };
    let bad = || anyhow!("the proxy {} is not a proxy URL", redact(&url));
    let proxy = Proxy::new(&url).map_err(|_| bad())?;
    let mut builder = Proxy::builder(proxy.protocol())
        .host(proxy.host())
        .port(proxy.port());
    if let Some(user) = proxy.username() {
        builder = builder.username(user);
    }
    if let Some(password) = proxy.password() {
        builder = builder.password(password);
    }
    let no_proxy = first(&["NO_PROXY", "no_proxy"]).unwrap_or_default();
    for host in no_proxy.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        builder = builder.no_proxy(host);
        if !host.starts_with(['.', '*']) {
            builder = builder.no_proxy(&format!(".{host}"));
        }
    }
    builder.build().map(Some).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::http::Uri;

    fn proxy(https: bool, vars: &[(&str, &str)]) -> Option<Proxy> {
        from_env(https, |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
        .unwrap()
    }

    #[test]
    fn each_scheme_takes_its_own_variable_then_all_proxy() {
        let vars = [
            ("HTTP_PROXY", "http://plain:3128"),
            ("https_proxy", "http://secure:3129"),
            ("ALL_PROXY", "http://any:1080"),
        ];
        assert_eq!(proxy(false, &vars).unwrap().host(), "plain");
        let secure = proxy(true, &vars).unwrap();
        assert_eq!((secure.host(), secure.port()), ("secure", 3129));
        assert_eq!(proxy(true, &vars[..1]), None);
        assert_eq!(proxy(true, &[vars[0], vars[2]]).unwrap().host(), "any");
        assert_eq!(proxy(false, &[]), None);
        // httpoxy: in a CGI program HTTP_PROXY may come from the request.
        let cgi = [vars[0], ("REQUEST_METHOD", "GET")];
        assert_eq!(proxy(false, &cgi), None);
    }

    #[test]
    fn no_proxy_hosts_and_their_subdomains_go_direct() {
        let p = proxy(
            true,
            &[
                ("HTTPS_PROXY", "http://u:p%40ss@proxy:8080"),
                ("NO_PROXY", "127.0.0.1, example.com,.internal"),
            ],
        )
        .unwrap();
        assert_eq!((p.username(), p.password()), (Some("u"), Some("p@ss")));
        let direct = |url: &str| p.is_no_proxy(&url.parse::<Uri>().unwrap());
        assert!(direct("https://127.0.0.1:8443/repo/"));
        assert!(direct("https://example.com/repo/"));
        assert!(direct("https://mirror.example.com/repo/"));
        assert!(direct("https://s3.internal/b/"));
        assert!(!direct("https://notexample.com/repo/"));
        assert!(!direct("https://internal/repo/"));
    }

    #[test]
    fn a_bad_proxy_url_is_one_line_without_its_password() {
        let e = from_env(true, |n| {
            (n == "HTTPS_PROXY").then(|| "ftp://u:s3cret@proxy:21".to_string())
        })
        .unwrap_err();
        assert!(e.to_string().contains("is not a proxy URL"), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}
