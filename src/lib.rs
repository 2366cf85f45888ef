//! dupmirror: keep a local tree equal to the latest state of a duplicity repository by
//! replaying only the sets that are new since the last run.
//!
//! Data flows one way, and the folders follow it (docs/design.md):
//!
//! ```text
//! source  (list and read repository files: local, FTP, HTTP; retries, metering, cache)
//!   -> decode  (SHA1 check, gpg or gzip, tar entries, duplicity records, librsync deltas)
//!   -> repo    (file names, manifests, sets and chains, a set's records, signature tars)
//!   -> mirror  (compare DEST with signatures, plan, stage and commit a set, repair)
//!   -> dest    (file operations on DEST, the journal and the state beside it)
//! ```
//!
//! `index` (paths inside a backup) and `meta` (an entry's type and attributes) are the
//! vocabulary every stage shares; `progress` holds the [`progress::Reporter`] that the
//! commands hand to the stages with something to report (bars, notices, transfer counts);
//! `commands` compose the stages; `fleet` runs many mirrors from a configuration file, with
//! hooks and metrics around each sync; `threads` reads the pools' sizes; `exit` gives every
//! failure its documented exit status and `log` its line on stderr; `main.rs` and its `cli`
//! module parse and print.

pub mod commands;
pub mod decode;
pub mod dest;
pub mod error;
pub mod exit;
pub mod fleet;
pub mod index;
pub mod log;
pub mod meta;
pub mod mirror;
pub mod progress;
pub mod repo;
pub mod source;
pub mod threads;

pub use error::Error;

#[cfg(test)]
mod testdata_tests;
