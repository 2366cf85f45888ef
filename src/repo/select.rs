//! Choosing among several sources of one repository (`sync SOURCE --source URL ...`, and
//! `verify`, `status`, `ls` likewise): the first, in order of preference, that answers and
//! is not stale.
//!
//! ```text
//! list every source, all at once                  (one listing request each, as usual)
//!     a source that cannot be listed: a notice; none listed: fail
//! newest(s) = the latest complete backup in s's listing
//! primary   = the first listed source whose newest is the newest of all;
//!             any other with an older newest is stale: a notice
//! split brain: a manifest name that two sources list with different sizes: refuse
//! repository = the primary's listing; its files come from the primary, or from any
//!             other listed source (stale ones too) that lists them with the same size
//!             (see source::mirrors: every copy of a manifest read is compared, and every
//!             volume is checked against the manifest's SHA1)
//! ```
//!
//! One source is the degenerate case: its listing error is the error, as before. Limits:
//! sources are compared by what they list, not by asking them twice: a source that becomes
//! reachable during the run is not used until the next run.

use super::collection::Collection;
use super::filename::{Content, NameParser};
use super::{RepoOptions, Repository};
use crate::error::Error;
use crate::progress::Reporter;
use crate::repo::time::format_iso;
use crate::source::meter::Meter;
use crate::source::mirrors::{Mirrors, Served};
use crate::source::{open_metered, Backend, ListEntry};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// How a run used a source, as reported (by [`Role::name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The source the run followed.
    Primary,
    /// Up to date like the primary; serves files the primary cannot.
    Spare,
    /// Its newest backup is older than another source's: not followed, but its files
    /// may still serve (they are checked like any other).
    Stale,
    /// It could not be listed.
    Unreachable,
}

impl Role {
    /// Its name in reports, text and JSON alike.
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Spare => "spare",
            Role::Stale => "stale",
            Role::Unreachable => "unreachable",
        }
    }

    /// Whether the run passed the source over (it was not listed, or is behind).
    pub fn skipped(self) -> bool {
        matches!(self, Role::Stale | Role::Unreachable)
    }
}

impl Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// One source in a run, as reported.
#[derive(Clone, Debug, Serialize)]
pub struct SourceStatus {
    pub source: String,
    pub role: Role,
    /// The end time of its newest complete backup.
    pub newest: Option<String>,
    /// Why it could not be listed.
    pub error: Option<String>,
    /// What it served in this run.
    pub served: Served,
}

/// The sources of a run, with what each served once the run is over.
pub struct Selection {
    mirrors: Arc<Mirrors>,
    statuses: Vec<SourceStatus>,
}

impl Selection {
    /// Each source's role, and what it served so far.
    pub fn report(&self) -> Vec<SourceStatus> {
        let served: HashMap<String, Served> = self.mirrors.served().into_iter().collect();
        self.statuses
            .iter()
            .map(|s| SourceStatus {
                served: served.get(&s.source).cloned().unwrap_or_default(),
                ..s.clone()
            })
            .collect()
    }
}

struct Listed {
    backend: Box<dyn Backend>,
    listing: Vec<ListEntry>,
    newest: Option<i64>,
}

/// Opens and lists `sources` (in order of preference) and makes a repository of the
/// primary one, served by all of them. What they transfer is reported to `reporter`, and
/// `--bwlimit` caps all of them together.
pub fn open_sources(
    sources: &[String],
    options: &RepoOptions,
    reporter: &Arc<Reporter>,
) -> Result<(Repository, Selection)> {
    if sources.is_empty() {
        bail!("no SOURCE given");
    }
    let meter = Arc::new(Meter::new(options.source.bwlimit, reporter.clone()));
    // Malformed URLs and bad settings are mistakes to fix, not sources to skip.
    let backends = sources
        .iter()
        .map(|s| open_metered(s, &options.source, &meter))
        .collect::<Result<Vec<_>>>()?;
    let parser = NameParser::new(&options.prefixes, options.time_separator.unwrap_or(':'));
    let several = backends.len() > 1;
    let listed: Vec<(String, Result<Listed>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = backends
            .into_iter()
            .map(|backend| {
                let parser = &parser;
                scope.spawn(move || {
                    let shown = backend.display();
                    let listed = (|| {
                        let listing = backend
                            .list()
                            .with_context(|| format!("cannot list {shown}"))?;
                        let collection = Collection::from_listing(&listing, parser);
                        // With several sources, say which one a listing problem is in.
                        let newest = match (collection, several) {
                            (Ok(c), _) => c.latest_time(),
                            (Err(e), true) => return Err(e.context(format!("source {shown}"))),
                            (Err(e), false) => return Err(e),
                        };
                        Ok(Listed {
                            backend,
                            listing,
                            newest,
                        })
                    })();
                    (shown, listed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (String::new(), Err(anyhow::anyhow!("listing panicked"))))
            })
            .collect()
    });
    if listed.len() == 1 {
        let (_, only) = listed.into_iter().next().expect("one source");
        let only = only?;
        return build(vec![(only, Role::Primary)], Vec::new(), options, reporter);
    }
    let newest_of_all = listed
        .iter()
        .filter_map(|(_, l)| l.as_ref().ok()?.newest)
        .max();
    let mut usable = Vec::new();
    let mut unreachable = Vec::new();
    let mut primary_seen = false;
    for (shown, l) in listed {
        match l {
            Err(e) => {
                reporter.notice(&format!("skipping source {shown}: {e:#}"));
                unreachable.push(SourceStatus {
                    source: shown,
                    role: Role::Unreachable,
                    newest: None,
                    error: Some(format!("{e:#}")),
                    served: Served::default(),
                });
            }
            Ok(l) => {
                let role = if l.newest != newest_of_all {
                    let has = l.newest.map_or("no complete backup".into(), |t| {
                        format!("its newest backup is {}", format_iso(t))
                    });
                    let best = newest_of_all.map(format_iso).unwrap_or_default();
                    reporter.notice(&format!(
                        "skipping stale source {shown}: {has}, another source has {best}"
                    ));
                    Role::Stale
                } else if primary_seen {
                    Role::Spare
                } else {
                    primary_seen = true;
                    Role::Primary
                };
                usable.push((l, role));
            }
        }
    }
    if usable.is_empty() {
        let why: Vec<String> = unreachable.iter().filter_map(|s| s.error.clone()).collect();
        bail!("no source could be listed: {}", why.join("; "));
    }
    check_listings_agree(&usable, &parser)?;
    // The primary first; the rest keep their order of preference.
    usable.sort_by_key(|(_, role)| *role != Role::Primary);
    build(usable, unreachable, options, reporter)
}

/// Refuses two sources that list one manifest with different sizes: they cannot both be
/// the backup that the name says.
fn check_listings_agree(usable: &[(Listed, Role)], parser: &NameParser) -> Result<()> {
    let mut seen: HashMap<&str, (Option<u64>, String)> = HashMap::new();
    for (l, _) in usable {
        for e in &l.listing {
            let is_manifest = parser
                .parse(&e.name, e.size)
                .is_some_and(|f| f.content == Content::Manifest);
            if !is_manifest {
                continue;
            }
            match seen.get(e.name.as_str()) {
                Some((size, first)) if size.is_some() && e.size.is_some() && *size != e.size => {
                    return Err(Error::SplitBrain {
                        name: e.name.clone(),
                        first: first.clone(),
                        second: l.backend.display(),
                    }
                    .into());
                }
                Some(_) => {}
                None => {
                    seen.insert(&e.name, (e.size, l.backend.display()));
                }
            }
        }
    }
    Ok(())
}

fn build(
    usable: Vec<(Listed, Role)>,
    unreachable: Vec<SourceStatus>,
    options: &RepoOptions,
    reporter: &Arc<Reporter>,
) -> Result<(Repository, Selection)> {
    let mut statuses: Vec<SourceStatus> = usable
        .iter()
        .map(|(l, role)| SourceStatus {
            source: l.backend.display(),
            role: *role,
            newest: l.newest.map(format_iso),
            error: None,
            served: Served::default(),
        })
        .collect();
    statuses.extend(unreachable);
    let mirrors = Arc::new(Mirrors::new(
        usable
            .into_iter()
            .map(|(l, _)| (l.backend, l.listing))
            .collect(),
        reporter.clone(),
    ));
    // Listing the mirrors hands back the primary's listing: no second request.
    let repo = Repository::open(Box::new(mirrors.clone()), options, reporter.clone())?;
    Ok((repo, Selection { mirrors, statuses }))
}
