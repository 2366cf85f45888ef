//! The outermost layer of every backend: what any source hands out is checked here once,
//! whatever the backend.
//!
//! ```text
//! list():  every name passes names::check
//!              a hostile name (/, NUL, ., .., empty)  -> the listing is refused
//!              an odd one (too long, control chars)   -> skipped, like any non-duplicity name
//!          the sizes listed are remembered
//! open():  the name must pass names::check (only listed names are ever opened)
//!          the reader stops with an error past the listed size, or past
//!          MAX_UNLISTED_FILE_BYTES when the listing gave none: a server cannot send more
//!          than it announced, so it cannot fill the disk or the memory of a reader
//! ```
//!
//! [`super::open_metered`] wraps every backend it opens in this, outside the retry layer,
//! so a backend added later gets the same checks without doing anything. Limits: the listed
//! size is the server's own word; it bounds a download, it does not make it honest (the
//! manifest's SHA1 does that).

use super::lease::LeasedFile;
use super::names::{self, shown};
use super::{Backend, ListEntry, ListedSizes, Opened};
use crate::error::Error;
use anyhow::Result;
use std::io::{self, Read};

/// The most bytes read of a file whose size the listing does not give (an FTP server
/// answering only `NLST`, an index without sizes): far above any duplicity volume.
pub const MAX_UNLISTED_FILE_BYTES: u64 = 64 << 30;

pub struct CheckedBackend {
    inner: Box<dyn Backend>,
    sizes: ListedSizes,
}

impl CheckedBackend {
    pub fn new(inner: Box<dyn Backend>) -> CheckedBackend {
        CheckedBackend {
            inner,
            sizes: ListedSizes::default(),
        }
    }
}

/// The listing without the names that cannot be repository files; an error naming the
/// first hostile one, if any.
pub fn checked_listing(listing: Vec<ListEntry>) -> Result<Vec<ListEntry>> {
    let mut out = Vec::with_capacity(listing.len());
    for entry in listing {
        match names::check(&entry.name) {
            Ok(()) => out.push(entry),
            Err(fault) if fault.is_hostile() => {
                return Err(Error::corrupt(format!(
                    "the source lists a file named {} ({fault}), which no real folder can \
                     hold; refusing a listing that tries to reach outside the repository",
                    shown(&entry.name)
                ))
                .into())
            }
            Err(_) => {}
        }
    }
    Ok(out)
}

impl Backend for CheckedBackend {
    fn list(&self) -> Result<Vec<ListEntry>> {
        let listing = checked_listing(self.inner.list()?)?;
        self.sizes.record(&listing);
        Ok(listing)
    }

    fn open(&self, name: &str, offset: u64) -> Result<Opened> {
        refuse_hostile(name)?;
        let listed = self.sizes.get(name);
        let opened = self.inner.open(name, offset)?;
        Ok(Opened {
            reader: Box::new(SizeCapped {
                inner: opened.reader,
                pos: opened.offset,
                limit: listed.unwrap_or(MAX_UNLISTED_FILE_BYTES),
                listed: listed.is_some(),
            }),
            offset: opened.offset,
        })
    }

    fn display(&self) -> String {
        self.inner.display()
    }

    fn is_local(&self) -> bool {
        self.inner.is_local()
    }

    /// Not capped: under its lease the file cannot grow, and it is handed out only when it
    /// is the size listed (else `None`, and [`Backend::open`] reads it capped).
    fn open_pinned(&self, name: &str) -> Option<Result<LeasedFile>> {
        if let Err(e) = refuse_hostile(name) {
            return Some(Err(e));
        }
        let listed = self.sizes.get(name);
        match self.inner.open_pinned(name)? {
            Ok(leased) if listed.is_some_and(|size| leased.size().ok() != Some(size)) => None,
            pinned => Some(pinned),
        }
    }

    fn distrust(&self, name: &str) -> bool {
        self.inner.distrust(name)
    }

    fn verify_copies(&self, name: &str) -> Result<()> {
        self.inner.verify_copies(name)
    }
}

/// An error for a name no real repository file can have (the listing never hands one out).
fn refuse_hostile(name: &str) -> Result<()> {
    names::check(name).map_err(|fault| {
        Error::corrupt(format!("refusing to open {} ({fault})", shown(name))).into()
    })
}

/// A reader that fails once its file goes past `limit` bytes (the caller names the file).
struct SizeCapped {
    inner: Box<dyn Read + Send>,
    /// Offset in the file of the next byte.
    pos: u64,
    limit: u64,
    listed: bool,
}

impl Read for SizeCapped {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte more than allowed is enough to tell "too long" from "exactly right".
        let room = self.limit.saturating_sub(self.pos).saturating_add(1);
        let len = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..len])?;
        self.pos += n as u64;
        if self.pos > self.limit {
            let why = if self.listed {
                format!("the {} bytes the listing gives for it", self.limit)
            } else {
                format!(
                    "{} GiB, the most read of a file whose size the listing does not give",
                    MAX_UNLISTED_FILE_BYTES >> 30
                )
            };
            return Err(io::Error::other(Error::corrupt(format!(
                "the source sent more than {why}"
            ))));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<ListEntry>, Vec<u8>);

    impl Backend for Fixed {
        fn list(&self) -> Result<Vec<ListEntry>> {
            Ok(self.0.clone())
        }
        fn open(&self, _: &str, _: u64) -> Result<Opened> {
            Ok(Opened {
                reader: Box::new(io::Cursor::new(self.1.clone())),
                offset: 0,
            })
        }
        fn display(&self) -> String {
            "fixed".into()
        }
    }

    fn entry(name: &str, size: Option<u64>) -> ListEntry {
        ListEntry {
            name: name.into(),
            size,
        }
    }

    #[test]
    fn hostile_names_refuse_the_listing_odd_ones_are_skipped() {
        let b = CheckedBackend::new(Box::new(Fixed(
            vec![
                entry("ok", Some(1)),
                entry("a\nb", None),
                entry(&"x".repeat(300), None),
            ],
            vec![],
        )));
        assert_eq!(b.list().unwrap(), vec![entry("ok", Some(1))]);
        for bad in ["../x", "..", "a/b", "a\0b"] {
            let b = CheckedBackend::new(Box::new(Fixed(vec![entry(bad, None)], vec![])));
            let e = format!("{:#}", b.list().unwrap_err());
            assert!(e.contains("refusing a listing"), "{e}");
        }
        let b = CheckedBackend::new(Box::new(Fixed(vec![], vec![])));
        assert!(b.open("../x", 0).is_err());
    }

    #[test]
    fn reads_stop_past_the_listed_size() {
        let b = CheckedBackend::new(Box::new(Fixed(
            vec![entry("f", Some(10)), entry("g", Some(11))],
            vec![7; 11],
        )));
        b.list().unwrap();
        let mut out = Vec::new();
        let e = b.open("f", 0).unwrap().reader.read_to_end(&mut out);
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("more than the 10 bytes the listing gives"),
            "{e}"
        );
        assert!(out.len() <= 11);
        out.clear();
        b.open("g", 0)
            .unwrap()
            .reader
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len(), 11);
    }

    /// A local file pinned by a read lease is handed out only at the size listed: one that
    /// grew after the listing is left to `open`, which reads it capped.
    #[test]
    fn a_pinned_file_is_handed_out_only_at_the_size_listed() {
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            return; // leases are taken on tmpfs; no /dev/shm here
        };
        std::fs::write(dir.path().join("vol"), b"1234").unwrap();
        let local = super::super::local::LocalBackend::new(dir.path().to_str().unwrap());
        let b = CheckedBackend::new(Box::new(local.unwrap()));
        b.list().unwrap();
        let leased = b
            .open_pinned("vol")
            .expect("a local file is pinned")
            .unwrap();
        assert_eq!(leased.size().unwrap(), 4);
        drop(leased);
        std::fs::write(dir.path().join("vol"), b"123456").unwrap();
        assert!(b.open_pinned("vol").is_none(), "a file longer than listed");
        assert!(b.open_pinned("../vol").unwrap().is_err(), "a hostile name");
    }
}
