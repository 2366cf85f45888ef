//! A backend that misbehaves on purpose, around any other (tests only): listings and opens
//! that fail transiently, streams cut after a number of bytes, a server that ignores
//! ranges, wrong sizes in the listing, bytes that arrive damaged. Every fault is counted
//! out exactly, so the tests of the retry layer, the download cache and the repository are
//! deterministic and need no server.

use super::{Backend, ListEntry, Opened, SourceError};
use anyhow::{anyhow, Result};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::Mutex;

/// What goes wrong, and how often.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// The next N listings fail with a transient error.
    pub failing_lists: u32,
    /// The next N opens fail with a transient error.
    pub failing_opens: u32,
    /// Streams break off (connection reset) after this many bytes...
    pub cut_after: Option<u64>,
    /// ...this many of them (`None`: every one).
    pub cuts: Option<u32>,
    /// Opens ignore the offset and send the file from its start.
    pub no_ranges: bool,
    /// Sizes the listing gives instead of the true ones.
    pub wrong_sizes: BTreeMap<String, u64>,
    /// The next N streams of this file have their first byte flipped.
    pub damaged: Option<(String, u32)>,
}

pub struct FaultyBackend {
    inner: Box<dyn Backend>,
    faults: Mutex<Faults>,
}

impl FaultyBackend {
    pub fn new(inner: Box<dyn Backend>, faults: Faults) -> FaultyBackend {
        FaultyBackend {
            inner,
            faults: Mutex::new(faults),
        }
    }

    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Takes one from a budget; true when there was one.
fn take(budget: &mut u32) -> bool {
    let had = *budget > 0;
    *budget = budget.saturating_sub(1);
    had
}

impl Backend for FaultyBackend {
    fn list(&self) -> Result<Vec<ListEntry>> {
        let mut faults = self.faults();
        if take(&mut faults.failing_lists) {
            return Err(anyhow!(SourceError::Transient("listing: 503".into())));
        }
        let mut listing = self.inner.list()?;
        for entry in &mut listing {
            if let Some(size) = faults.wrong_sizes.get(&entry.name) {
                entry.size = Some(*size);
            }
        }
        Ok(listing)
    }

    fn open(&self, name: &str, offset: u64) -> Result<Opened> {
        let mut faults = self.faults();
        if take(&mut faults.failing_opens) {
            return Err(anyhow!(SourceError::Transient(format!("{name}: 503"))));
        }
        let asked = if faults.no_ranges { 0 } else { offset };
        let mut opened = self.inner.open(name, asked)?;
        let cut = match (faults.cut_after, faults.cuts.as_mut()) {
            (Some(after), None) => Some(after),
            (Some(after), Some(left)) => take(left).then_some(after),
            _ => None,
        };
        let damage = match faults.damaged.as_mut() {
            Some((file, left)) => file == name && take(left),
            None => false,
        };
        if let Some(after) = cut {
            opened.reader = Box::new(Cut {
                inner: opened.reader,
                left: after,
            });
        }
        if damage {
            opened.reader = Box::new(Damaged {
                inner: opened.reader,
                first: true,
            });
        }
        Ok(opened)
    }

    fn display(&self) -> String {
        format!("faulty {}", self.inner.display())
    }
}

/// A stream that ends in a connection reset after `left` bytes, unless the file ends first.
struct Cut {
    inner: Box<dyn Read + Send>,
    left: u64,
}

impl Read for Cut {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // Cut only a file that goes on.
            return match self.inner.read(&mut [0u8; 1])? {
                0 => Ok(0),
                _ => Err(io::ErrorKind::ConnectionReset.into()),
            };
        }
        let max = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// A stream whose first byte arrives flipped.
struct Damaged {
    inner: Box<dyn Read + Send>,
    first: bool,
}

impl Read for Damaged {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 && std::mem::take(&mut self.first) {
            buf[0] ^= 0xff;
        }
        Ok(n)
    }
}
