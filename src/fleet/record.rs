//! What the runs of one mirror did, kept in its state directory as `run.json`: the last
//! run's outcome and times, and counters over every run. `status --config` shows it; the
//! metrics file is written from it, so counters survive restarts and hosts.
//!
//! `update` holds `run.lock` (flock) while it reads, changes and atomically replaces the
//! file, so two runs finishing together both count; it does not take the sync's own lock,
//! so a run refused because another holds that lock is still recorded.

use crate::dest::changes::write_replacing;
use crate::repo::time::Epoch;
use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::path::Path;

const RECORD: &str = "run.json";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunRecord {
    /// When the last run ended (epoch seconds).
    pub last_run: Option<Epoch>,
    pub last_success: Option<Epoch>,
    pub success: bool,
    pub exit_status: u8,
    /// The last failure's message (one line).
    pub error: Option<String>,
    pub duration_seconds: f64,
    /// The backup time DEST holds.
    pub held: Option<Epoch>,
    /// The newest backup time the source held when last listed.
    pub latest: Option<Epoch>,
    pub runs: u64,
    pub failures: u64,
    pub bytes_downloaded: u64,
    pub sets_applied: u64,
    /// Paths found drifted in DEST and restored while applying.
    pub drift_repairs: u64,
}

impl RunRecord {
    /// How far DEST is behind the source's newest backup, in seconds.
    pub fn lag_seconds(&self) -> Option<i64> {
        Some((self.latest? - self.held?).max(0))
    }

    /// The record in `state_dir` (default when there is none yet).
    pub fn load(state_dir: &Path) -> Result<RunRecord> {
        let path = state_dir.join(RECORD);
        match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .with_context(|| format!("{} is damaged; remove it", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RunRecord::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Changes the record in `state_dir` (which must exist) with `change`; returns it.
    pub fn update(state_dir: &Path, change: impl FnOnce(&mut RunRecord)) -> Result<RunRecord> {
        let _lock = lock_exclusive(&state_dir.join("run.lock"))?;
        let mut record = RunRecord::load(state_dir)?;
        change(&mut record);
        let mut data = serde_json::to_vec_pretty(&record)?;
        data.push(b'\n');
        write_replacing(&state_dir.join(RECORD), &data)?;
        Ok(record)
    }
}

/// Takes an exclusive flock on `path` (created if missing), waiting for it.
pub fn lock_exclusive(path: &Path) -> Result<Flock<std::fs::File>> {
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| std::io::Error::from(e))
        .with_context(|| format!("cannot lock {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_accumulate_and_lag_needs_both_times() {
        let d = tempfile::tempdir().unwrap();
        for _ in 0..2 {
            RunRecord::update(d.path(), |r| {
                r.runs += 1;
                r.held = Some(100);
            })
            .unwrap();
        }
        let r = RunRecord::load(d.path()).unwrap();
        assert_eq!(r.runs, 2);
        assert_eq!(r.lag_seconds(), None);
        let r = RunRecord::update(d.path(), |r| r.latest = Some(160)).unwrap();
        assert_eq!(r.lag_seconds(), Some(60));
    }
}
