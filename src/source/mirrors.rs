//! Several sources of one repository as one backend: the listing is the chosen (primary)
//! source's, and each file comes from the first source, in order, that lists it with the
//! same size and has not failed it.
//!
//! ```text
//! open(name, offset):  for each source listing name (primary first, then by preference):
//!                          open it there; a failure moves on to the next one
//! read:                a read that fails for good (its source's retries spent) reopens
//!                      the file at the same byte from the next source that lists it
//! distrust(name):      the copy last served failed its SHA1 check: when another source
//!                      lists name, later opens skip that one for it (and true is returned)
//! verify_copies(name): read name from every source that lists it; different bytes are
//!                      a split brain (two sources that disagree about one set)
//! ```
//!
//! Mixing bytes from several sources is safe because nothing is used before its SHA1 matches
//! the manifest (the trust anchor), and the manifests themselves are checked to agree across
//! the sources before a set is applied. Which source served what is counted for the report.

use super::lease::LeasedFile;
use super::{Backend, ListEntry, Opened, SourceError};
use crate::progress::Reporter;
use anyhow::{anyhow, Result};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::sync::{Arc, Mutex};

/// What one source served in a run, as reported.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Served {
    /// The files it opened (each once, however often it was resumed).
    pub files: Vec<String>,
    /// Bytes it delivered.
    pub bytes: u64,
}

struct Mirror {
    backend: Box<dyn Backend>,
    sizes: HashMap<String, Option<u64>>,
    served: Mutex<Served>,
}

struct Inner {
    /// In order: the primary first, then the others by preference.
    mirrors: Vec<Mirror>,
    /// The primary's listing, as handed out.
    listing: Vec<ListEntry>,
    /// (name, source) pairs that failed or served a copy that failed its check.
    failed: Mutex<HashSet<(String, usize)>>,
    /// The source that last served each name.
    last: Mutex<HashMap<String, usize>>,
    reporter: Arc<Reporter>,
}

pub struct Mirrors(Arc<Inner>);

impl Mirrors {
    /// `sources`: each source with its listing, the primary first. The primary's listing
    /// is the repository; the others serve the files they list with the same size.
    pub fn new(
        sources: Vec<(Box<dyn Backend>, Vec<ListEntry>)>,
        reporter: Arc<Reporter>,
    ) -> Mirrors {
        let listing = sources.first().map(|(_, l)| l.clone()).unwrap_or_default();
        let mirrors = sources
            .into_iter()
            .map(|(backend, entries)| Mirror {
                backend,
                sizes: entries.into_iter().map(|e| (e.name, e.size)).collect(),
                served: Mutex::new(Served::default()),
            })
            .collect();
        Mirrors(Arc::new(Inner {
            mirrors,
            listing,
            failed: Mutex::new(HashSet::new()),
            last: Mutex::new(HashMap::new()),
            reporter,
        }))
    }

    /// What each source served, in the order given to [`Mirrors::new`].
    pub fn served(&self) -> Vec<(String, Served)> {
        self.0
            .mirrors
            .iter()
            .map(|m| {
                let s = m.served.lock().map(|s| s.clone()).unwrap_or_default();
                (m.backend.display(), s)
            })
            .collect()
    }
}

impl Inner {
    /// The sources that hold `name` as the primary lists it and have not failed it, in
    /// order.
    fn holders(&self, name: &str) -> Vec<usize> {
        let Some(want) = self.mirrors.first().and_then(|p| p.sizes.get(name)) else {
            return Vec::new();
        };
        let failed = self.failed.lock().map(|f| f.clone()).unwrap_or_default();
        (0..self.mirrors.len())
            .filter(|&i| {
                let size = self.mirrors[i].sizes.get(name);
                size.is_some_and(|s| want.is_none() || s.is_none() || s == want)
                    && !failed.contains(&(name.to_string(), i))
            })
            .collect()
    }

    fn mark_failed(&self, name: &str, i: usize) {
        if let Ok(mut f) = self.failed.lock() {
            f.insert((name.to_string(), i));
        }
    }

    /// Source `i` serves `name` (the last one to, should its copy fail its check).
    fn serves(&self, name: &str, i: usize) {
        if let Ok(mut served) = self.mirrors[i].served.lock() {
            if !served.files.iter().any(|f| f == name) {
                served.files.push(name.to_string());
            }
        }
        if let Ok(mut last) = self.last.lock() {
            last.insert(name.to_string(), i);
        }
    }

    /// Opens `name` at `offset` from the first source that can serve it.
    fn open_any(self: &Arc<Self>, name: &str, offset: u64) -> Result<(usize, Opened)> {
        let holders = self.holders(name);
        let mut last_error = None;
        for (k, &i) in holders.iter().enumerate() {
            match self.mirrors[i].backend.open(name, offset) {
                Ok(opened) => {
                    self.serves(name, i);
                    return Ok((i, opened));
                }
                Err(e) => {
                    self.mark_failed(name, i);
                    if let Some(&next) = holders.get(k + 1) {
                        self.reporter.notice(&format!(
                            "{name}: {e:#}; trying {}",
                            self.mirrors[next].backend.display()
                        ));
                    }
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            anyhow!(SourceError::Permanent(format!(
                "{name}: no source has it (or every copy failed)"
            )))
        }))
    }
}

impl Backend for Mirrors {
    fn list(&self) -> Result<Vec<ListEntry>> {
        Ok(self.0.listing.clone())
    }

    fn open(&self, name: &str, offset: u64) -> Result<Opened> {
        let (source, opened) = self.0.open_any(name, offset)?;
        Ok(Opened {
            offset: opened.offset,
            reader: Box::new(FallbackReader {
                inner: self.0.clone(),
                name: name.to_string(),
                source,
                pos: opened.offset,
                reader: opened.reader,
            }),
        })
    }

    fn display(&self) -> String {
        self.0
            .mirrors
            .first()
            .map(|m| m.backend.display())
            .unwrap_or_default()
    }

    fn is_local(&self) -> bool {
        self.0.mirrors.first().is_some_and(|m| m.backend.is_local())
    }

    /// From the first source that can serve `name`, when that one pins it (else `None`:
    /// [`Backend::open`] tries the others). Its bytes count as delivered once, whoever
    /// reads them how often; a file not pinned is counted as it is read.
    fn open_pinned(&self, name: &str) -> Option<Result<LeasedFile>> {
        let first = *self.0.holders(name).first()?;
        let leased = self.0.mirrors[first].backend.open_pinned(name)?.ok()?;
        self.0.serves(name, first);
        if let (Ok(mut served), Ok(size)) = (self.0.mirrors[first].served.lock(), leased.size()) {
            served.bytes += size;
        }
        Some(Ok(leased))
    }

    fn distrust(&self, name: &str) -> bool {
        let Some(last) = self.0.last.lock().ok().and_then(|l| l.get(name).copied()) else {
            return false;
        };
        // The last copy stays usable: the caller may try it once more.
        let others = self.0.holders(name).into_iter().any(|i| i != last);
        if others {
            self.0.mark_failed(name, last);
        }
        others
    }

    fn verify_copies(&self, name: &str) -> Result<()> {
        let copies = self.0.mirrors.iter().filter(|m| m.sizes.contains_key(name));
        if copies.count() < 2 {
            return Ok(()); // nothing to compare: no extra request
        }
        let mut seen: Option<(String, String)> = None;
        for (i, m) in self.0.mirrors.iter().enumerate() {
            if !m.sizes.contains_key(name) {
                continue;
            }
            let digest = (|| -> Result<String> {
                let mut reader = m.backend.open(name, 0)?.reader;
                Ok(super::sha1_hex(&mut reader)?)
            })();
            let digest = match digest {
                Ok(d) => d,
                // The primary's copy is the one the sync needs; another's only a spare.
                Err(e) if i == 0 => return Err(e.context(format!("cannot read {name}"))),
                Err(e) => {
                    self.0.mark_failed(name, i);
                    self.0.reporter.notice(&format!(
                        "cannot compare {name} with {}: {e:#}; not using that copy",
                        m.backend.display()
                    ));
                    continue;
                }
            };
            match &seen {
                None => seen = Some((m.backend.display(), digest)),
                Some((first, d)) if *d != digest => {
                    return Err(crate::error::Error::SplitBrain {
                        name: name.to_string(),
                        first: first.clone(),
                        second: m.backend.display(),
                    }
                    .into())
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// A file's bytes from one source, moving to the next source at the same byte when the
/// current one fails for good.
struct FallbackReader {
    inner: Arc<Inner>,
    name: String,
    source: usize,
    /// Offset of the next byte handed out.
    pos: u64,
    reader: Box<dyn Read + Send>,
}

impl Read for FallbackReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let err = match self.reader.read(buf) {
                Ok(n) => {
                    self.pos += n as u64;
                    if let Ok(mut s) = self.inner.mirrors[self.source].served.lock() {
                        s.bytes += n as u64;
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => e,
            };
            self.inner.mark_failed(&self.name, self.source);
            if self.inner.holders(&self.name).is_empty() {
                return Err(err);
            }
            self.inner.reporter.notice(&format!(
                "{} from {} broke off at byte {}: {err}; trying the next source",
                self.name,
                self.inner.mirrors[self.source].backend.display(),
                self.pos
            ));
            let (source, opened) = self
                .inner
                .open_any(&self.name, self.pos)
                .map_err(|e| io::Error::other(format!("{e:#}")))?;
            let mut reader = opened.reader;
            // A source that can only start from the top: drop what was had already.
            let skip = self.pos - opened.offset;
            if skip > 0 {
                self.inner.reporter.refetched(skip);
                io::copy(&mut (&mut reader).take(skip), &mut io::sink())?;
            }
            self.source = source;
            self.reader = reader;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemoryBackend;

    /// A source holding some files; `broken` ones fail to open.
    struct Fake {
        name: &'static str,
        files: Vec<(&'static str, Vec<u8>)>,
        broken: Vec<&'static str>,
    }

    /// `Fake` as a backend: its files in memory, opens of the broken ones refused.
    struct Broken {
        files: MemoryBackend,
        broken: Vec<&'static str>,
    }

    impl Backend for Broken {
        fn list(&self) -> Result<Vec<ListEntry>> {
            self.files.list()
        }
        fn open(&self, name: &str, offset: u64) -> Result<Opened> {
            if self.broken.contains(&name) {
                return Err(anyhow!(SourceError::Permanent(format!("{name}: 404"))));
            }
            self.files.open(name, offset)
        }
        fn display(&self) -> String {
            self.files.display()
        }
    }

    fn mirrors(sources: Vec<Fake>) -> Mirrors {
        Mirrors::new(
            sources
                .into_iter()
                .map(|f| {
                    let files = MemoryBackend::new(f.name);
                    for (n, d) in f.files {
                        files.insert(n, d);
                    }
                    let b = Broken {
                        files,
                        broken: f.broken,
                    };
                    let l = b.list().unwrap();
                    (Box::new(b) as Box<dyn Backend>, l)
                })
                .collect(),
            Arc::new(Reporter::default()),
        )
    }

    fn read(m: &Mirrors, name: &str) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        m.open(name, 0)?.reader.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn files_come_from_the_first_source_that_serves_them() {
        let m = mirrors(vec![
            Fake {
                name: "a",
                files: vec![
                    ("x", b"xx".to_vec()),
                    ("y", b"yy".to_vec()),
                    ("w", b"w".to_vec()),
                ],
                broken: vec!["y", "w"],
            },
            Fake {
                name: "b",
                files: vec![("y", b"yy".to_vec()), ("z", b"zz".to_vec())],
                broken: vec![],
            },
        ]);
        assert_eq!(m.list().unwrap().len(), 3, "the primary's listing");
        // One copy: nothing to compare, nothing opened (w would fail to open).
        m.verify_copies("w").unwrap();
        assert_eq!(read(&m, "x").unwrap(), b"xx");
        assert_eq!(read(&m, "y").unwrap(), b"yy");
        assert!(read(&m, "z").is_err(), "not in the primary's listing");
        let served = m.served();
        assert_eq!(served[0].1.files, ["x"]);
        assert_eq!(served[1].1.files, ["y"]);
        assert_eq!((served[0].1.bytes, served[1].1.bytes), (2, 2));
    }

    #[test]
    fn a_distrusted_copy_is_fetched_elsewhere_and_split_brains_are_found() {
        let m = mirrors(vec![
            Fake {
                name: "a",
                files: vec![("v", b"bad".to_vec()), ("m", b"one".to_vec())],
                broken: vec![],
            },
            Fake {
                name: "b",
                files: vec![("v", b"god".to_vec()), ("m", b"two".to_vec())],
                broken: vec![],
            },
        ]);
        assert_eq!(read(&m, "v").unwrap(), b"bad");
        assert!(m.distrust("v"), "b still has a copy");
        assert_eq!(read(&m, "v").unwrap(), b"god");
        assert!(!m.distrust("v"), "no copy left");
        let e = m.verify_copies("m").unwrap_err().to_string();
        assert!(
            e.contains("split brain") && e.contains('a') && e.contains('b'),
            "{e}"
        );
    }
}
