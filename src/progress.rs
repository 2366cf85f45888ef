//! What a running sync shows on a terminal: a download bar and an apply bar (indicatif, with
//! rate and ETA), and one-line notices such as retries (warnings, through the [`Logger`]).
//! `main` decides whether bars are wanted (stderr is a terminal and not `--quiet`) and
//! whether notices are; the library only reports progress here, so nothing in it prints on
//! its own.

use crate::log::{Level, Logger};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::OnceLock;

#[derive(Default)]
pub struct Progress {
    /// Present when bars are drawn.
    multi: Option<MultiProgress>,
    /// Where notices go (on stderr, or above the bars); none: they are dropped.
    notices: Option<Logger>,
    download: OnceLock<ProgressBar>,
    apply: OnceLock<ProgressBar>,
}

impl Progress {
    /// `bars`: draw progress bars on stderr; `notices`: log notices there.
    pub fn new(bars: bool, notices: Option<Logger>) -> Progress {
        Progress {
            multi: bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            notices,
            ..Progress::default()
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

    pub fn downloaded(&self, n: u64) {
        if let Some(b) = self.download.get() {
            b.inc(n);
        }
    }

    pub fn applied(&self, n: u64) {
        if let Some(b) = self.apply.get() {
            b.inc(n);
        }
    }

    /// Removes the bars, before the summary is printed.
    pub fn finish(&self) {
        for b in [self.download.get(), self.apply.get()]
            .into_iter()
            .flatten()
        {
            b.finish_and_clear();
        }
    }
}
