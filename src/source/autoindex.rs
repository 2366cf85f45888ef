//! Reading an HTTP server's directory index into file names and sizes.
//!
//! Three forms are understood, recognised by content type or content:
//! - nginx's `autoindex_format json` (exact sizes);
//! - an HTML page of links: nginx's HTML autoindex, Apache's, `python3 -m http.server`'s,
//!   and most others. Names come from the link *targets*, percent-decoded, never from the
//!   link texts (nginx cuts those at 50 characters). A link counts when it points at a file
//!   directly inside the listed folder: no sub-folders, parents, queries or other hosts.
//!   A plain number right after the link on the same line (nginx) is taken as the size;
//!   rounded sizes (`1.2K`) are not sizes;
//! - a plain index file an admin publishes: one file name per line, optionally followed by
//!   its size in bytes; empty lines and `#` comments are skipped.

use super::names::shown;
use super::ListEntry;
use anyhow::{anyhow, bail, Context, Result};
use percent_encoding::percent_decode_str;
use regex::Regex;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use url::Url;

/// Parses `body`, the index at `base` (the final URL of the listing, after redirects).
pub fn parse(body: &str, content_type: Option<&str>, base: &Url) -> Result<Vec<ListEntry>> {
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    let trimmed = body.trim_start();
    let entries = if ct.contains("json") || trimmed.starts_with('[') {
        parse_json(body)?
    } else if ct.contains("html") || looks_like_html(trimmed) {
        parse_html(body, base)
    } else {
        parse_plain(body)?
    };
    // One entry per name, sorted, as every backend lists.
    let unique: BTreeMap<String, Option<u64>> =
        entries.into_iter().map(|e| (e.name, e.size)).collect();
    Ok(unique
        .into_iter()
        .map(|(name, size)| ListEntry { name, size })
        .collect())
}

fn looks_like_html(body: &str) -> bool {
    let head: String = body
        .chars()
        .take(512)
        .collect::<String>()
        .to_ascii_lowercase();
    head.starts_with("<!doctype") || head.contains("<html") || head.contains("<a ")
}

fn parse_json(body: &str) -> Result<Vec<ListEntry>> {
    let value: serde_json::Value =
        serde_json::from_str(body).context("the JSON directory index is not valid JSON")?;
    let items = value
        .as_array()
        .ok_or_else(|| anyhow!("the JSON directory index is not a list"))?;
    let mut out = Vec::new();
    for item in items {
        let name = item.get("name").and_then(|n| n.as_str());
        let kind = item.get("type").and_then(|t| t.as_str()).unwrap_or("file");
        let Some(name) = name else { continue };
        if kind != "file" || name.contains('/') {
            continue;
        }
        out.push(ListEntry {
            name: name.to_string(),
            size: item.get("size").and_then(|s| s.as_u64()),
        });
    }
    Ok(out)
}

fn link_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r#"(?is)<a\s[^>]*?\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))[^>]*>"#)
            .expect("valid regex")
    })
}

fn tag_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?s)<[^>]*>").expect("valid regex"))
}

/// Decodes the character references that appear in attribute values.
fn unescape_html(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';').filter(|&e| e <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The name of the file `href` points at, if it is directly inside the folder `base`.
fn child_name(href: &str, base: &Url) -> Option<String> {
    // An unescaped colon makes `a:b` look like a URL of scheme `a` (old duplicity names
    // carry times like `16:17:01`); links to other schemes never point into the folder.
    let target = match Url::parse(href) {
        Ok(u) if !matches!(u.scheme(), "http" | "https") => base.join(&format!("./{href}")),
        _ => base.join(href),
    }
    .ok()?;
    if target.origin() != base.origin() || target.query().is_some() || target.fragment().is_some() {
        return None;
    }
    let dir = match base.path().rfind('/') {
        Some(i) => &base.path()[..=i],
        None => "/",
    };
    let name = target.path().strip_prefix(dir)?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let name = percent_decode_str(name).decode_utf8().ok()?.into_owned();
    (!name.contains('/')).then_some(name)
}

fn parse_html(body: &str, base: &Url) -> Vec<ListEntry> {
    let mut out = Vec::new();
    for cap in link_regex().captures_iter(body) {
        let Some(raw) = cap.get(1).or(cap.get(2)).or(cap.get(3)) else {
            continue;
        };
        let Some(name) = child_name(&unescape_html(raw.as_str()), base) else {
            continue;
        };
        let Some(whole) = cap.get(0) else { continue };
        out.push(ListEntry {
            name,
            size: size_after(&body[whole.end()..]),
        });
    }
    out
}

/// nginx's HTML index: `<a href="x">x</a>   26-Nov-2025 19:27   12345` — the last word of
/// the rest of the line, when it is a plain number.
fn size_after(rest: &str) -> Option<u64> {
    let after_link = rest.find("</a>").map(|i| &rest[i + 4..])?;
    let line = after_link.split(['\n', '\r']).next().unwrap_or("");
    let line = match line.to_ascii_lowercase().find("<a") {
        Some(i) => &line[..i],
        None => line,
    };
    let text = tag_regex().replace_all(line, " ");
    let last = text.split_whitespace().last()?;
    (last.bytes().all(|b| b.is_ascii_digit())).then(|| last.parse().ok())?
}

fn parse_plain(body: &str) -> Result<Vec<ListEntry>> {
    let mut out = Vec::new();
    for (i, line) in body.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(name), size, None) = (words.next(), words.next(), words.next()) else {
            bail!(
                "index line {}: expected NAME [SIZE], got {}",
                i + 1,
                shown(line)
            );
        };
        let size =
            match size {
                None => None,
                Some(s) => Some(s.parse().map_err(|_| {
                    anyhow!("index line {}: size {} is not a number", i + 1, shown(s))
                })?),
            };
        if name.contains('/') {
            bail!(
                "index line {}: {} is not a plain file name",
                i + 1,
                shown(name)
            );
        }
        out.push(ListEntry {
            name: name.to_string(),
            size,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("http://h.example/backups/repo/").unwrap()
    }

    fn names(v: &[ListEntry]) -> Vec<(&str, Option<u64>)> {
        v.iter().map(|e| (e.name.as_str(), e.size)).collect()
    }

    const LONG: &str = "duplicity-full.20231114T221320Z.vol10.difftar.gz";
    const LONGER: &str = "duplicity-full-signatures.20231114T221320Z.sigtar.gz";

    #[test]
    fn nginx_html() {
        let body = format!(
            "<html>\r\n<head><title>Index of /backups/repo/</title></head>\r\n<body>\r\n\
             <h1>Index of /backups/repo/</h1><hr><pre><a href=\"../\">../</a>\r\n\
             <a href=\"sub/\">sub/</a>                                               26-Nov-2025 19:27       -\r\n\
             <a href=\"{LONGER}\">duplicity-full-signatures.20231114T221320Z.sig..&gt;</a> 26-Nov-2025 19:27     1234\r\n\
             <a href=\"{LONG}\">{LONG}</a>   26-Nov-2025 19:27   1048576\r\n\
             <a href=\"a%20b%3Ac%26d\">a b:c&amp;d</a>   26-Nov-2025 19:27   12K\r\n\
             </pre><hr></body>\r\n</html>\r\n"
        );
        let v = parse(&body, Some("text/html"), &base()).unwrap();
        assert_eq!(
            names(&v),
            vec![
                ("a b:c&d", None),
                (LONGER, Some(1234)),
                (LONG, Some(1048576)),
            ]
        );
    }

    #[test]
    fn nginx_json() {
        let body = format!(
            "[\n{{ \"name\":\"sub\", \"type\":\"directory\", \"mtime\":\"Wed, 26 Nov 2025 19:27:00 GMT\" }},\n\
             {{ \"name\":\"{LONG}\", \"type\":\"file\", \"mtime\":\"Wed, 26 Nov 2025 19:27:00 GMT\", \"size\":1048576 }}\n]\n"
        );
        let v = parse(&body, Some("application/json"), &base()).unwrap();
        assert_eq!(names(&v), vec![(LONG, Some(1048576))]);
    }

    #[test]
    fn apache_fancy_and_plain() {
        let body = format!(
            "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 3.2 Final//EN\">\n<html><head><title>Index of /backups/repo</title></head><body>\n\
             <table><tr><th><a href=\"?C=N;O=D\">Name</a></th><th><a href=\"?C=M;O=A\">Last modified</a></th></tr>\n\
             <tr><td><a href=\"/backups/\">Parent Directory</a></td><td>&nbsp;</td></tr>\n\
             <tr><td valign=\"top\"><img src=\"/icons/compressed.gif\" alt=\"[   ]\"></td><td><a href=\"{LONG}\">duplicity-full.20231114T221320Z.vol10.difftar.gz</a></td><td align=\"right\">2025-11-26 19:27  </td><td align=\"right\">1.0M</td><td>&nbsp;</td></tr>\n\
             <tr><td><a href=\"tiny\">tiny</a></td><td align=\"right\">2025-11-26 19:27  </td><td align=\"right\">456 </td></tr>\n\
             </table></body></html>\n<ul><li><a href='x.manifest'> x.manifest</a></li></ul>"
        );
        let v = parse(&body, Some("text/html;charset=ISO-8859-1"), &base()).unwrap();
        assert_eq!(
            names(&v),
            vec![(LONG, None), ("tiny", Some(456)), ("x.manifest", None)]
        );
    }

    #[test]
    fn python_http_server() {
        let body = format!(
            "<!DOCTYPE HTML>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Directory listing for /backups/repo/</title>\n</head>\n<body>\n\
             <h1>Directory listing for /backups/repo/</h1>\n<hr>\n<ul>\n\
             <li><a href=\"{LONG}\">{LONG}</a></li>\n\
             <li><a href=\"sub/\">sub/</a></li>\n\
             <li><a href=\"caf%C3%A9\">caf&#xe9;</a></li>\n\
             <li><a href=\"http://elsewhere.example/backups/repo/evil\">evil</a></li>\n\
             </ul>\n<hr>\n</body>\n</html>\n"
        );
        let v = parse(&body, Some("text/html; charset=utf-8"), &base()).unwrap();
        assert_eq!(names(&v), vec![("café", None), (LONG, None)]);
    }

    #[test]
    fn absolute_links_and_index_file_base() {
        let body = "<a href=\"/backups/repo/one\">1</a><a href=\"/other/two\">2</a>";
        let v = parse(body, None, &base()).unwrap();
        assert_eq!(names(&v), vec![("one", None)]);
        let w3 = "duplicity-full.2002-08-17T16:17:01-07:00.vol1.difftar.gz";
        for href in [w3.to_string(), format!("./{w3}"), w3.replace(':', "%3A")] {
            let v = parse(&format!("<a href=\"{href}\">x</a>"), None, &base()).unwrap();
            assert_eq!(names(&v), vec![(w3, None)], "{href}");
        }
        // The listing may be a file in the folder: names are relative to its folder.
        let index = Url::parse("http://h.example/backups/repo/INDEX.html").unwrap();
        let v = parse(body, None, &index).unwrap();
        assert_eq!(names(&v), vec![("one", None)]);
    }

    #[test]
    fn plain_index() {
        let body = format!("# published by cron\n{LONG} 1048576\n\n{LONGER}\n");
        let v = parse(&body, Some("text/plain"), &base()).unwrap();
        assert_eq!(names(&v), vec![(LONGER, None), (LONG, Some(1048576))]);
        assert!(parse("a b c\n", Some("text/plain"), &base()).is_err());
        assert!(parse("a/b\n", Some("text/plain"), &base()).is_err());
    }
}
