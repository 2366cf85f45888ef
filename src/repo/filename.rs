//! Duplicity file names: which file of which backup set a name denotes.
//!
//! A repository is a flat folder and duplicity knows its files only by name (docs/format.md
//! §2). This module turns a name into a [`RemoteFile`]: its set (full or incremental, and the
//! times that identify it), what it is (volume N, manifest, signatures, jsonstat), how it is
//! encoded (plain, gzip, gpg) and whether it is a `.part` leftover. Long names, short base-36
//! names and old W3 times are all read; `.par2` side files and anything else that is not
//! exactly a duplicity name are ignored.
//!
//! Prefixes (`--file-prefix*`) are literal strings. Without them, long names are matched
//! after any prefix and the prefix is reported, so that the collection can accept a prefixed
//! repository when every file of a kind carries the same prefix (duplicity itself cannot).

pub use crate::decode::volume::Encoding;
use crate::repo::time::{parse_base36, parse_name_time, Epoch};
use crate::source::names;
use regex::Regex;

/// Full or incremental: the two kinds of backup set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetKind {
    Full,
    Inc,
}

/// What a file holds within its set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Content {
    Volume(u32),
    Manifest,
    Signatures,
    JsonStat,
}

/// A repository file, identified by its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteFile {
    pub name: String,
    pub set: SetKind,
    pub content: Content,
    /// For incrementals, the end time of the set it builds on.
    pub start_time: Option<Epoch>,
    /// The session time: a full's time or an incremental's end time.
    pub end_time: Epoch,
    pub encoding: Encoding,
    pub partial: bool,
    /// The prefix found before the duplicity part of the name.
    pub prefix: String,
    pub size: Option<u64>,
}

impl RemoteFile {
    /// The key that groups files into sets: kind plus times.
    pub fn set_key(&self) -> (SetKind, Option<Epoch>, Epoch) {
        (self.set, self.start_time, self.end_time)
    }
}

/// The prefix options of duplicity, all literal.
#[derive(Clone, Debug, Default)]
pub struct Prefixes {
    pub global: String,
    pub archive: String,
    pub manifest: String,
    pub signature: String,
    pub jsonstat: String,
}

impl Prefixes {
    fn any_given(&self) -> bool {
        !(self.global.is_empty()
            && self.archive.is_empty()
            && self.manifest.is_empty()
            && self.signature.is_empty()
            && self.jsonstat.is_empty())
    }
}

struct Pattern {
    regex: Regex,
    set: SetKind,
    content: fn(&regex::Captures) -> Option<Content>,
    short: bool,
}

/// Parses names under one prefix configuration.
pub struct NameParser {
    patterns: Vec<Pattern>,
    time_separator: char,
}

const SUFFIX: &str = r"(?P<partial>\.part|\.p)?(?P<enc>\.gz|\.gpg|\.z|\.g|\.p7m)?$";
const T: &str = r"[^.]+";
const T36: &str = "[0-9a-z]+";

fn volume(c: &regex::Captures) -> Option<Content> {
    c.name("vol")?.as_str().parse().ok().map(Content::Volume)
}
fn volume36(c: &regex::Captures) -> Option<Content> {
    u32::from_str_radix(c.name("vol")?.as_str(), 36)
        .ok()
        .map(Content::Volume)
}
fn manifest(_: &regex::Captures) -> Option<Content> {
    Some(Content::Manifest)
}
fn signatures(_: &regex::Captures) -> Option<Content> {
    Some(Content::Signatures)
}
fn jsonstat(_: &regex::Captures) -> Option<Content> {
    Some(Content::JsonStat)
}

type ContentFn = fn(&regex::Captures) -> Option<Content>;

/// How a naming scheme spells a set's times: one time `t` for a full set, `t1`, a separator
/// and `t` for an incremental one.
struct Times {
    time: &'static str,
    between: &'static str,
}

/// Long names: `duplicity-inc.T1.to.T.manifest`.
const LONG: Times = Times {
    time: T,
    between: r"\.to\.",
};
/// Short names (`--short-filenames`): `di.T1.T.m`, times in base 36.
const SHORT: Times = Times {
    time: T36,
    between: r"\.",
};

impl Times {
    /// The patterns (without [`SUFFIX`]) of one kind of file in this scheme: the full set's
    /// `{prefix}{full}.{t}.{tail}`, then the incremental's `{prefix}{inc}.{t1}{between}{t}.{tail}`.
    fn full_and_inc(
        &self,
        prefix: &str,
        (full, inc): (&str, &str),
        tail: &str,
        content: ContentFn,
    ) -> Vec<(String, SetKind, ContentFn)> {
        let (t, between) = (self.time, self.between);
        vec![
            (
                format!(r"^{prefix}{full}\.(?P<t>{t})\.{tail}"),
                SetKind::Full,
                content,
            ),
            (
                format!(r"^{prefix}{inc}\.(?P<t1>{t}){between}(?P<t>{t})\.{tail}"),
                SetKind::Inc,
                content,
            ),
        ]
    }
}

impl NameParser {
    /// A parser for the given prefixes. When none is given, long names are accepted after
    /// any prefix (reported in [`RemoteFile::prefix`]); short names only without one.
    pub fn new(prefixes: &Prefixes, time_separator: char) -> Self {
        let auto = !prefixes.any_given();
        let fixed = |kind: &str| {
            format!(
                "(?P<prefix>{}{})",
                regex::escape(&prefixes.global),
                regex::escape(kind)
            )
        };
        let pfx = |kind: &str| {
            if auto {
                "(?P<prefix>.*?)".to_string()
            } else {
                fixed(kind)
            }
        };
        let (a, m, s, j) = (
            &prefixes.archive,
            &prefixes.manifest,
            &prefixes.signature,
            &prefixes.jsonstat,
        );
        let long = [
            LONG.full_and_inc(
                &pfx(a),
                ("duplicity-full", "duplicity-inc"),
                r"vol(?P<vol>[0-9]+)\.difftar",
                volume,
            ),
            LONG.full_and_inc(
                &pfx(m),
                ("duplicity-full", "duplicity-inc"),
                "manifest",
                manifest,
            ),
            LONG.full_and_inc(
                &pfx(s),
                ("duplicity-full-signatures", "duplicity-new-signatures"),
                "sigtar",
                signatures,
            ),
            vec![(
                format!(
                    r"^{}duplicity-(?P<jkind>full|inc)\.(?:(?P<t1>{T})\.to\.)?(?P<t>{T})\.jsonstat",
                    pfx(j)
                ),
                SetKind::Full, // corrected from the `jkind` group when parsing
                jsonstat as ContentFn,
            )],
        ]
        .concat();
        let short = [
            SHORT.full_and_inc(
                &fixed(a),
                ("df", "di"),
                &format!(r"(?P<vol>{T36})\.dt"),
                volume36,
            ),
            SHORT.full_and_inc(&fixed(m), ("df", "di"), "m", manifest),
            SHORT.full_and_inc(&fixed(s), ("dfs", "dns"), "st", signatures),
        ]
        .concat();
        let mut patterns = Vec::new();
        for (is_short, list) in [(true, short), (false, long)] {
            for (re, set, content) in list {
                patterns.push(Pattern {
                    regex: Regex::new(&format!("{re}{SUFFIX}")).expect("built-in pattern"),
                    set,
                    content,
                    short: is_short,
                });
            }
        }
        NameParser {
            patterns,
            time_separator,
        }
    }

    /// The file a name denotes, or `None` for a name that is not a duplicity file (and for
    /// any name that is not a plain file name, whatever its prefix: see `source::names`).
    pub fn parse(&self, name: &str, size: Option<u64>) -> Option<RemoteFile> {
        if names::check(name).is_err() || name.ends_with(".par2") {
            return None;
        }
        for p in &self.patterns {
            let Some(c) = p.regex.captures(name) else {
                continue;
            };
            let time = |g: &str| -> Option<Option<Epoch>> {
                match c.name(g) {
                    None => Some(None),
                    Some(m) if p.short => parse_base36(m.as_str()).map(Some),
                    Some(m) => parse_name_time(m.as_str(), self.time_separator).map(Some),
                }
            };
            let end_time = time("t")??;
            let start_time = time("t1")?;
            let set = match c.name("jkind").map(|m| m.as_str()) {
                Some("inc") => SetKind::Inc,
                Some(_) => SetKind::Full,
                None => p.set,
            };
            // An incremental needs both times, a full exactly one.
            if (set == SetKind::Inc) != start_time.is_some() {
                return None;
            }
            // An incremental ends after the set it builds on; one that does not cannot come
            // from duplicity, and linking it would make a chain run backwards in time.
            if start_time.is_some_and(|start| end_time <= start) {
                return None;
            }
            let partial = c.name("partial").map(|m| m.as_str());
            let enc = c.name("enc").map(|m| m.as_str());
            // Short names use `.p`, `.z`, `.g`; long names `.part`, `.gz`, `.gpg`.
            let encoding = match enc {
                None => Encoding::Plain,
                Some(".gz") | Some(".z") => Encoding::Gzip,
                Some(".gpg") | Some(".g") => Encoding::Gpg,
                Some(_) => Encoding::P7m,
            };
            return Some(RemoteFile {
                name: name.to_string(),
                set,
                content: (p.content)(&c)?,
                start_time,
                end_time,
                encoding,
                partial: partial.is_some(),
                prefix: c.name("prefix").map_or("", |m| m.as_str()).to_string(),
                size,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str) -> Option<RemoteFile> {
        NameParser::new(&Prefixes::default(), ':').parse(name, None)
    }

    #[test]
    fn long_names() {
        let f = parse("duplicity-full.20261126T164229Z.vol12.difftar.gz").unwrap();
        assert_eq!(
            (f.set, f.content, f.encoding),
            (SetKind::Full, Content::Volume(12), Encoding::Gzip)
        );
        assert_eq!(f.end_time, 1795711349);
        let f =
            parse("duplicity-inc.20261126T164229Z.to.20261126T164230Z.vol1.difftar.gpg").unwrap();
        assert_eq!(f.set, SetKind::Inc);
        assert_eq!(f.start_time, Some(1795711349));
        assert_eq!(f.end_time, 1795711350);
        assert_eq!(f.encoding, Encoding::Gpg);
        let f = parse("duplicity-inc.20261126T164229Z.to.20261126T164230Z.manifest").unwrap();
        assert_eq!(
            (f.content, f.encoding),
            (Content::Manifest, Encoding::Plain)
        );
        let f = parse("duplicity-new-signatures.20261126T164229Z.to.20261126T164230Z.sigtar.gz")
            .unwrap();
        assert_eq!((f.set, f.content), (SetKind::Inc, Content::Signatures));
        let f = parse("duplicity-full-signatures.20261126T164229Z.sigtar").unwrap();
        assert_eq!((f.set, f.content), (SetKind::Full, Content::Signatures));
        let f = parse("duplicity-inc.20261126T164229Z.to.20261126T164230Z.jsonstat.gz").unwrap();
        assert_eq!((f.set, f.content), (SetKind::Inc, Content::JsonStat));
        let f = parse("duplicity-full.20261126T164229Z.manifest.part").unwrap();
        assert!(f.partial);
    }

    #[test]
    fn old_w3_and_short_names() {
        let f = parse("duplicity-full.2002-08-17T16:17:01-07:00.vol1.difftar.gpg").unwrap();
        assert_eq!(f.end_time, 1029626221);
        let f = parse("dns.h112bi.h14rg0.st.g").unwrap();
        assert_eq!(
            (f.set, f.content, f.encoding),
            (SetKind::Inc, Content::Signatures, Encoding::Gpg)
        );
        assert_eq!((f.start_time, f.end_time), (Some(1029654270), 1029826800));
        let f = parse("dfs.h5dixs.st.g").unwrap();
        assert_eq!(f.end_time, 1036954144);
        let f = parse("df.tp4bup.1.dt.z").unwrap();
        assert_eq!(
            (f.content, f.encoding),
            (Content::Volume(1), Encoding::Gzip)
        );
        let f = parse("di.tp4bup.tp4bus.a.dt.z").unwrap();
        assert_eq!(f.content, Content::Volume(10));
        assert!(parse("df.tp4bus.m.p").unwrap().partial);
    }

    #[test]
    fn ignores_strangers() {
        for name in [
            "duplicity-full.20261126T164229Z.vol1.difftar.gpg.par2",
            "duplicity-full.20261126T164229Z.vol1.difftar.gz.vol00+01.par2",
            "duplicity-full.20261126T164229Z.vol1.difftar.gz.tmp",
            "duplicity-full.garbage.vol1.difftar.gz",
            "duplicity-full.29991126T164229Z.vol1.difftar.gz",
            // Impossible times: an incremental ending before or when it starts, non-ASCII
            // where the digits belong (this one used to panic).
            "duplicity-inc.20261126T164229Z.to.20261126T164228Z.manifest",
            "duplicity-inc.20261126T164229Z.to.20261126T164229Z.vol1.difftar.gz",
            "duplicity-full.aaa\u{e9}aaaT123456Z.manifest",
            "duplicity-full.20231399T120000Z.manifest",
            "duplicity-full.20231114T250000Z.manifest",
            "lockfile",
            "README",
            // Not plain file names: a prefix must never carry a path or a control character.
            "../../x/duplicity-full.20261126T164229Z.vol1.difftar.gz",
            "sub/duplicity-full.20261126T164229Z.manifest",
            "\u{1b}[2Jduplicity-full.20261126T164229Z.manifest",
        ] {
            assert!(parse(name).is_none(), "{name}");
        }
    }

    #[test]
    fn prefixes_given_and_detected() {
        let p = Prefixes {
            global: "P_".into(),
            archive: "A_".into(),
            manifest: "M_".into(),
            signature: "S_".into(),
            jsonstat: String::new(),
        };
        let parser = NameParser::new(&p, ':');
        let f = parser
            .parse("P_A_duplicity-full.20261126T164229Z.vol1.difftar.gz", None)
            .unwrap();
        assert_eq!(f.prefix, "P_A_");
        assert!(parser
            .parse("P_M_duplicity-full.20261126T164229Z.vol1.difftar.gz", None)
            .is_none());
        assert!(parser
            .parse("duplicity-full.20261126T164229Z.vol1.difftar.gz", None)
            .is_none());
        // A dot in a prefix is literal, not "any byte".
        let dotted = NameParser::new(
            &Prefixes {
                global: "a.".into(),
                ..Default::default()
            },
            ':',
        );
        assert!(dotted
            .parse("abduplicity-full.20261126T164229Z.manifest", None)
            .is_none());
        let f = parse("P_S_duplicity-full-signatures.20261126T164229Z.sigtar.gz").unwrap();
        assert_eq!(f.prefix, "P_S_");
    }
}
