//! `dupmirror run`: the configured mirrors, several at a time, then their metrics files.
//!
//! Each mirror runs as a [`Job`] under its own lock; one failing does not stop the others.
//! `--jobs N` workers take the mirrors in order. Afterwards every metrics file a run mirror
//! names is rewritten with the series of every mirror of the configuration that names it
//! (their records come from their state directories), so mirrors run by separate timers
//! can share one file. A lock file beside it (`.NAME.lock`) keeps two writers from
//! replacing each other's fresher view.

use super::job::{run_job, Job, JobReport};
use super::metrics;
use super::record::{lock_exclusive, RunRecord};
use crate::log::Logger;
use anyhow::Result;
use nix::fcntl::Flock;
use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Where a mirror's series come from and go to.
#[derive(Clone, Debug)]
pub struct Series {
    pub mirror: String,
    pub state_dir: PathBuf,
    pub metrics_file: Option<PathBuf>,
}

/// Runs `jobs`, `parallel` at a time; the reports come back in the jobs' order.
/// `done` sees each report as its mirror finishes.
pub fn run_jobs(
    jobs: Vec<Job>,
    parallel: usize,
    log: &Logger,
    done: impl Fn(&JobReport) + Sync,
) -> Vec<JobReport> {
    let count = jobs.len();
    let queue = Mutex::new(jobs.into_iter().enumerate().collect::<VecDeque<_>>());
    let reports = Mutex::new(Vec::with_capacity(count));
    std::thread::scope(|scope| {
        for _ in 0..parallel.clamp(1, count.max(1)) {
            scope.spawn(|| loop {
                let Some((i, job)) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
                else {
                    break;
                };
                let log = log.for_mirror(&job.name);
                let report = run_job(job, &log);
                done(&report);
                reports
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((i, report));
            });
        }
    });
    let mut reports = reports.into_inner().unwrap_or_else(|p| p.into_inner());
    reports.sort_by_key(|(i, _)| *i);
    reports.into_iter().map(|(_, r)| r).collect()
}

/// Rewrites each metrics file that one of `ran` names, with every mirror of `all` that
/// names the same file.
pub fn write_metrics(ran: &[&str], all: &[Series]) -> Result<()> {
    let files: BTreeSet<&PathBuf> = all
        .iter()
        .filter(|s| ran.contains(&s.mirror.as_str()))
        .filter_map(|s| s.metrics_file.as_ref())
        .collect();
    for file in files {
        let _lock = lock_beside(file)?;
        let mut series = Vec::new();
        for s in all.iter().filter(|s| s.metrics_file.as_ref() == Some(file)) {
            series.push((s.mirror.clone(), RunRecord::load(&s.state_dir)?));
        }
        metrics::write(file, &series)?;
    }
    Ok(())
}

fn lock_beside(file: &Path) -> Result<Flock<std::fs::File>> {
    let mut name = std::ffi::OsString::from(".");
    name.push(file.file_name().unwrap_or_default());
    name.push(".lock");
    lock_exclusive(&file.with_file_name(name))
}
