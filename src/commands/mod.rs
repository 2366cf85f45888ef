//! The commands: each composes the library's pieces for one job and returns a report that
//! `main` prints as text or JSON.

pub mod ls;
pub mod status;
pub mod sync;
pub mod verify;

use crate::repo::{RepoOptions, Repository};
use crate::source;
use anyhow::Result;

/// Opens SOURCE and reads its listing.
pub fn open_repository(source: &str, options: &RepoOptions) -> Result<Repository> {
    Repository::open(source::open_source(source, &options.source)?, options)
}

/// The time a command works at: `--time`, or now.
pub fn resolve_time(time: Option<&str>) -> Result<crate::repo::time::Epoch> {
    let now = chrono::Utc::now().timestamp();
    match time {
        None => Ok(now),
        Some(t) => crate::repo::time::parse_user_time(t, now).map_err(anyhow::Error::msg),
    }
}
