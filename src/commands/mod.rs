//! The commands: each composes the library's pieces for one job and returns a report that
//! `main` prints as text or JSON. Each takes the run's [`Reporter`] explicitly: progress
//! and transfer counts are not options.

pub mod atomic;
pub mod ls;
pub mod status;
pub mod sync;
pub mod verify;

use anyhow::Result;

/// The time a command works at: `--time`, or now.
pub fn resolve_time(time: Option<&str>) -> Result<crate::repo::time::Epoch> {
    let now = chrono::Utc::now().timestamp();
    match time {
        None => Ok(now),
        Some(t) => crate::repo::time::parse_user_time(t, now).map_err(anyhow::Error::msg),
    }
}
