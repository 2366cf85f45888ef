//! What a run reports while it works, in one place: the [`Reporter`].
//!
//! A command gets one reporter from `main` and hands it explicitly to the stages that have
//! something to tell: the source's transport (bytes, files, listings, retries, through
//! `source::meter`), the download cache (its bar, re-downloads) and the repository (the
//! bytes the applier reads, for the apply bar). It keeps two things apart from the options
//! that say how to reach a source:
//!
//! * the display: a download bar and an apply bar (indicatif, with rate and ETA) and
//!   one-line notices such as retries (warnings, through the [`Logger`]). `main` decides
//!   whether bars are wanted (stderr is a terminal and not `--quiet`) and whether notices
//!   are; nothing in the library prints on its own;
//! * the accounting a sync reports at the end ([`Transfer`]: `--json` and the summary).

use crate::log::{Level, Logger};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;

/// Where progress, notices and transfer counts go. [`Reporter::default`] shows nothing
/// and only counts (for tests and library callers).
#[derive(Default)]
pub struct Reporter {
    /// Present when bars are drawn.
    multi: Option<MultiProgress>,
    /// Where notices go (on stderr, or above the bars); none: they are dropped.
    notices: Option<Logger>,
    download: OnceLock<ProgressBar>,
    apply: OnceLock<ProgressBar>,
    counts: Counts,
}

#[derive(Default)]
struct Counts {
    downloaded: AtomicU64,
    resumed: AtomicU64,
    refetched: AtomicU64,
    files: AtomicU64,
    listings: AtomicU64,
    retries: AtomicU64,
}

/// What crossed the network, as reported.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes of file content received from the source.
    pub bytes_downloaded: u64,
    /// Bytes that resuming spared: for each resumed download, the offset it resumed at
    /// (the bytes were on disk from an earlier run, or already read before a cut).
    pub bytes_resumed: u64,
    /// Bytes received a second time: after a cut from a server without range support, or
    /// for a partial file that failed its SHA1 check. Included in `bytes_downloaded`.
    pub bytes_refetched: u64,
    /// Files opened for reading (manifests, volumes, signatures), resumes not counted.
    pub files_fetched: u64,
    /// Folder listings made.
    pub listings: u64,
    /// Requests repeated after a transient failure.
    pub retries: u64,
}

impl Reporter {
    /// `bars`: draw progress bars on stderr; `notices`: log notices there.
    pub fn new(bars: bool, notices: Option<Logger>) -> Reporter {
        Reporter {
            multi: bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            notices,
            ..Reporter::default()
        }
    }

    /// A line for the user that is not an error: a retry, a fallback.
    pub fn notice(&self, message: &str) {
        let Some(log) = &self.notices else { return };
        match &self.multi {
            Some(m) => {
                let _ = m.println(log.line(Level::Warning, message));
            }
            None => log.warning(message),
        }
    }

    fn bar(&self, slot: &OnceLock<ProgressBar>, label: &str, total: u64) {
        let Some(multi) = &self.multi else { return };
        let style = if total > 0 {
            ProgressStyle::with_template(
                "{prefix:>9} [{bar:32}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} ETA {eta}",
            )
        } else {
            ProgressStyle::with_template("{prefix:>9} {spinner} {bytes:>10} {bytes_per_sec:>12}")
        };
        let Ok(style) = style else { return };
        let bar = multi.add(ProgressBar::new(total).with_style(style.progress_chars("=> ")));
        bar.set_prefix(label.to_string());
        let _ = slot.set(bar);
    }

    /// Shows the download bar, `total` bytes (0: unknown).
    pub fn start_download(&self, total: u64) {
        self.bar(&self.download, "download", total);
    }

    /// Shows the apply bar: `total` bytes of volumes to read and apply.
    pub fn start_apply(&self, total: u64) {
        self.bar(&self.apply, "apply", total);
    }

    /// `n` bytes of file content received from the source.
    pub fn downloaded(&self, n: u64) {
        self.counts.downloaded.fetch_add(n, Relaxed);
        if let Some(b) = self.download.get() {
            b.inc(n);
        }
    }

    /// `n` bytes of volumes read by the applier.
    pub fn applied(&self, n: u64) {
        if let Some(b) = self.apply.get() {
            b.inc(n);
        }
    }

    /// A download resumed at byte `n` instead of starting over.
    pub fn resumed(&self, n: u64) {
        self.counts.resumed.fetch_add(n, Relaxed);
    }

    /// `n` bytes that had been received before were received again.
    pub fn refetched(&self, n: u64) {
        self.counts.refetched.fetch_add(n, Relaxed);
    }

    pub fn file_opened(&self) {
        self.counts.files.fetch_add(1, Relaxed);
    }

    pub fn listed(&self) {
        self.counts.listings.fetch_add(1, Relaxed);
    }

    /// Counts a retry and tells the user about it.
    pub fn retrying(&self, message: &str) {
        self.counts.retries.fetch_add(1, Relaxed);
        self.notice(message);
    }

    /// The transfer counts so far.
    pub fn transfer(&self) -> Transfer {
        let c = &self.counts;
        Transfer {
            bytes_downloaded: c.downloaded.load(Relaxed),
            bytes_resumed: c.resumed.load(Relaxed),
            bytes_refetched: c.refetched.load(Relaxed),
            files_fetched: c.files.load(Relaxed),
            listings: c.listings.load(Relaxed),
            retries: c.retries.load(Relaxed),
        }
    }

    /// Removes the bars, before a summary or an error is printed.
    pub fn finish(&self) {
        for b in [self.download.get(), self.apply.get()]
            .into_iter()
            .flatten()
        {
            b.finish_and_clear();
        }
    }
}
