//! Early writeback: a tree being built on a disk starts going to the disk while the build
//! goes on, not only at the final sync.
//!
//! A first sync writes the whole backup (a gigabyte is ordinary) into staging faster than
//! a disk takes it. With the kernel's default dirty limits (a tenth of memory before
//! background writeback starts) all of it stays in the page cache until the `syncfs` that
//! comes before the commit (or the admin's `sync` after `--no-fsync`), and the disk then
//! works alone while the CPU waits. Here a thread of its own asks for the file system's
//! writeback each time the build has written another `STEP` bytes, so the disk writes
//! what the build made while it goes on.
//!
//! ```text
//! start(dir):  a thread with its own handle on dir's file system, asleep
//! wrote(n):    add n to the bytes written; past a multiple of STEP, wake the thread
//!              (wakes while it works are merged into one)
//! hurry():     the build's tail (a decoder has no volume left, so a core is free): wake
//!              the thread now, and from then on every TAIL_STEP, so that less is left to
//!              write when the build ends
//! thread:      when woken, syncfs(handle); the first error is kept and ends the thread
//! finish():    stop the thread after its current syncfs, and return that first error
//! ```
//!
//! Limits: `syncfs` also commits the file system's journal and writes what other programs
//! left dirty on the same file system, and `finish` waits for the one in flight, so a
//! `--no-fsync` run takes longer by up to one writeback; on a memory file system it does
//! nothing, so callers start it only where a disk is behind (`Dir::in_memory`).
//! A write error found here fails the build (at the next record, and in `finish`): the
//! data would be lost on the disk, and once this handle has reported the error, the
//! commit's `syncfs` (through a handle opened later) is not told of it.

use super::dir::Dir;
use anyhow::{anyhow, bail, Context, Result};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

/// Bytes written between two writebacks: large enough that a `syncfs` (which also
/// commits the journal) is rare, small enough that the disk starts early (a duplicity
/// volume is 200 MB by default).
const STEP: u64 = 64 << 20;

/// The step once the build is in its tail (see [`EarlyWriteback::hurry`]).
const TAIL_STEP: u64 = 8 << 20;

#[derive(Default)]
struct Wanted {
    /// Woken since the last syncfs began.
    kicked: bool,
    stop: bool,
    error: Option<io::Error>,
    /// Writebacks done.
    done: u64,
}

#[derive(Default)]
struct Shared {
    wanted: Mutex<Wanted>,
    woken: Condvar,
}

impl Shared {
    fn wanted(&self) -> MutexGuard<'_, Wanted> {
        self.wanted.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writeback thread of one build; stopped (without its error) when dropped.
pub struct EarlyWriteback {
    shared: Arc<Shared>,
    written: AtomicU64,
    /// In the build's tail: written back every TAIL_STEP.
    hurried: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Named in the error of a failed writeback.
    shown: std::path::PathBuf,
}

impl EarlyWriteback {
    /// Starts the thread for the file system that `dir` is on.
    pub fn start(dir: &Dir) -> Result<EarlyWriteback> {
        // One handle for the whole build: it is told of every write error after it opened.
        let fs = dir.file_system()?;
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || loop {
                let mut wanted = theirs.wanted();
                while !wanted.kicked && !wanted.stop {
                    wanted = theirs
                        .woken
                        .wait(wanted)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if wanted.stop {
                    return;
                }
                wanted.kicked = false;
                drop(wanted);
                let synced = fs.sync();
                let mut wanted = theirs.wanted();
                wanted.done += 1;
                if let Err(e) = synced {
                    wanted.error = Some(e);
                    return;
                }
            })
            .context("cannot start the writeback thread")?;
        Ok(EarlyWriteback {
            shared,
            written: AtomicU64::new(0),
            hurried: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
            shown: dir.path().to_path_buf(),
        })
    }

    /// The build wrote `bytes` more.
    pub fn wrote(&self, bytes: u64) {
        let before = self.written.fetch_add(bytes, Ordering::Relaxed);
        let step = if self.hurried.load(Ordering::Relaxed) {
            TAIL_STEP
        } else {
            STEP
        };
        if (before + bytes) / step > before / step {
            self.kick();
        }
    }

    /// The build is in its tail (a core is idle): write back what is dirty now, then every
    /// TAIL_STEP, so that little is left for the final sync.
    pub fn hurry(&self) {
        if !self.hurried.swap(true, Ordering::Relaxed) {
            self.kick();
        }
    }

    fn kick(&self) {
        self.shared.wanted().kicked = true;
        self.shared.woken.notify_one();
    }

    /// The error of a writeback so far, if one failed (it stays for `finish`).
    pub fn check(&self) -> Result<()> {
        match &self.shared.wanted().error {
            Some(e) => Err(anyhow!("{e}").context(self.failed())),
            None => Ok(()),
        }
    }

    /// Stops the thread: how many writebacks it ran, or the first one's error.
    pub fn finish(&self) -> Result<u64> {
        if !self.stop() {
            bail!("the writeback thread of {} panicked", self.shown.display());
        }
        let mut wanted = self.shared.wanted();
        match wanted.error.take() {
            Some(e) => Err(anyhow!(e).context(self.failed())),
            None => Ok(wanted.done),
        }
    }

    fn failed(&self) -> String {
        format!(
            "cannot write the staged tree {} to its disk",
            self.shown.display()
        )
    }

    /// Stops and joins the thread; false if it panicked.
    fn stop(&self) -> bool {
        self.shared.wanted().stop = true;
        self.shared.woken.notify_one();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        thread.is_none_or(|t| t.join().is_ok())
    }
}

impl Drop for EarlyWriteback {
    fn drop(&mut self) {
        // A failed build is being unwound; its own error is the one to report.
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A writeback for a new folder on the disk (kept while the folder is).
    fn started() -> (tempfile::TempDir, EarlyWriteback) {
        let t = tempfile::tempdir().unwrap();
        let wb = EarlyWriteback::start(&Dir::open_path(t.path()).unwrap()).unwrap();
        (t, wb)
    }

    fn done(wb: &EarlyWriteback) -> u64 {
        wb.shared.wanted().done
    }

    fn wait_for(wb: &EarlyWriteback, n: u64) {
        let start = Instant::now();
        while done(wb) < n {
            assert!(start.elapsed() < Duration::from_secs(30), "no writeback");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn one_writeback_per_step_written() {
        let (_t, wb) = started();
        wb.wrote(STEP - 1);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(done(&wb), 0);
        wb.wrote(1);
        wait_for(&wb, 1);
        wb.wrote(STEP / 2);
        wb.wrote(STEP / 2 - 1);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(done(&wb), 1);
        wb.wrote(3 * STEP); // past three steps at once: one wake
        wait_for(&wb, 2);
        wb.check().unwrap();
        assert_eq!(wb.finish().unwrap(), 2);
    }

    #[test]
    fn in_the_tail_a_writeback_at_once_then_every_tail_step() {
        let (_t, wb) = started();
        wb.wrote(TAIL_STEP);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(done(&wb), 0, "below STEP before the tail");
        wb.hurry();
        wait_for(&wb, 1);
        wb.hurry(); // once in the tail, again changes nothing
        wb.wrote(TAIL_STEP - 1);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(done(&wb), 1);
        wb.wrote(1);
        wait_for(&wb, 2);
        assert_eq!(wb.finish().unwrap(), 2);
    }

    #[test]
    fn a_dropped_writeback_stops_its_thread() {
        let (_t, wb) = started();
        wb.wrote(STEP);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(wb); // joins the writeback thread
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(30)).is_ok(),
            "dropping the writeback did not stop its thread"
        );
    }
}
