//! Where repository files come from.
//!
//! A [`Backend`] is deliberately narrow, like restic's: list the folder (names and sizes) and
//! open one file for reading from an offset (so a cut download can resume). Everything
//! else (retries, caching, prefetch, hash checks) wraps a backend instead of living inside
//! each one, and nothing downstream knows which backend the bytes came from.

mod local;

pub use local::LocalBackend;

use anyhow::{bail, Result};
use std::io::Read;

/// One file of the repository folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    pub name: String,
    pub size: Option<u64>,
}

pub trait Backend: Send + Sync {
    /// The files of the repository folder (not recursive).
    fn list(&self) -> Result<Vec<ListEntry>>;

    /// Opens a file for reading, starting `offset` bytes in.
    fn open(&self, name: &str, offset: u64) -> Result<Box<dyn Read + Send>>;

    /// The source as it may be shown to a person: passwords are never part of it.
    fn display(&self) -> String;
}

/// Opens the backend a SOURCE argument names: a plain path or a `file://` URL.
pub fn open_source(source: &str) -> Result<Box<dyn Backend>> {
    if let Some(path) = source.strip_prefix("file://") {
        return Ok(Box::new(LocalBackend::new(path)?));
    }
    if let Some((scheme, _)) = source.split_once("://") {
        bail!("unsupported source scheme {scheme:?}: use a local path or file://");
    }
    Ok(Box::new(LocalBackend::new(source)?))
}
