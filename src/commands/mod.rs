//! The commands: each composes the library's pieces for one job and returns a report that
//! `main` prints as text or JSON. Each takes the run's [`Reporter`] explicitly: progress
//! and transfer counts are not options.

pub mod atomic;
pub mod ls;
pub mod status;
pub mod sync;
pub mod verify;

use crate::progress::Reporter;
use crate::repo::{RepoOptions, Repository};
use crate::source;
use anyhow::Result;
use std::sync::Arc;

/// Opens SOURCE and reads its listing; what it transfers is reported to `reporter`.
pub fn open_repository(
    source: &str,
    options: &RepoOptions,
    reporter: &Arc<Reporter>,
) -> Result<Repository> {
    let backend = source::open_source(source, &options.source, reporter)?;
    Repository::open(backend, options, reporter.clone())
}

/// The time a command works at: `--time`, or now.
pub fn resolve_time(time: Option<&str>) -> Result<crate::repo::time::Epoch> {
    let now = chrono::Utc::now().timestamp();
    match time {
        None => Ok(now),
        Some(t) => crate::repo::time::parse_user_time(t, now).map_err(anyhow::Error::msg),
    }
}
