//! Lines about what a run does, on stderr: for a person at a terminal, or for a daemon's log.
//!
//! One event is one line: its level, the mirror it is about (when there is one), the message.
//!
//! ```text
//! text:     dupmirror: warning: web: cannot list ...; retry 1 of 5 in 0.6s
//! journal:  <4>dupmirror: warning: web: cannot list ...      (stderr is systemd's journal
//!           stream: the syslog priority prefix sets the entry's priority for journalctl -p)
//! json:     {"time":"2026-01-02T03:04:05Z","level":"warning","mirror":"web","message":"..."}
//! ```
//!
//! systemd names the journal stream it connected stderr to in `JOURNAL_STREAM`
//! (`DEVICE:INODE`); the prefixes are used only when stderr is that very stream, so a
//! program started from a service with its stderr redirected elsewhere writes plain lines.
//! A whole line goes out in one write, so parallel mirrors do not interleave within a line.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event; with syslog priority prefixes under systemd
    #[default]
    Text,
    /// One JSON object per line
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Error,
    Warning,
    Info,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
            Level::Info => "info",
        }
    }

    /// The syslog priority (sd-daemon(3)).
    fn priority(self) -> u8 {
        match self {
            Level::Error => 3,
            Level::Warning => 4,
            Level::Info => 6,
        }
    }
}

/// Where a run's events go. Cheap to clone; `for_mirror` names the mirror in every line.
#[derive(Clone, Debug, Default)]
pub struct Logger {
    format: LogFormat,
    journal: bool,
    mirror: Option<Arc<str>>,
}

impl Logger {
    /// A logger for this process's stderr in `format`.
    pub fn new(format: LogFormat) -> Logger {
        Logger {
            format,
            journal: stderr_is_journal(),
            mirror: None,
        }
    }

    pub fn for_mirror(&self, mirror: &str) -> Logger {
        Logger {
            mirror: Some(mirror.into()),
            ..self.clone()
        }
    }

    /// Whether stderr is a terminal a person watches (progress bars, no jitter by default).
    pub fn interactive() -> bool {
        std::io::stderr().is_terminal()
    }

    /// The line an event is written as, without the final newline.
    pub fn line(&self, level: Level, message: &str) -> String {
        let message = message.replace(['\n', '\r'], " ");
        match self.format {
            LogFormat::Json => serde_json::json!({
                "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "level": level.name(),
                "mirror": self.mirror.as_deref(),
                "message": message,
            })
            .to_string(),
            LogFormat::Text => {
                let mut line = String::new();
                if self.journal {
                    line.push_str(&format!("<{}>", level.priority()));
                }
                line.push_str("dupmirror: ");
                line.push_str(level.name());
                line.push_str(": ");
                if let Some(m) = &self.mirror {
                    line.push_str(m);
                    line.push_str(": ");
                }
                line.push_str(&message);
                line
            }
        }
    }

    pub fn log(&self, level: Level, message: &str) {
        let mut line = self.line(level, message);
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    pub fn error(&self, message: &str) {
        self.log(Level::Error, message)
    }

    pub fn warning(&self, message: &str) {
        self.log(Level::Warning, message)
    }

    pub fn info(&self, message: &str) {
        self.log(Level::Info, message)
    }
}

/// Whether stderr is the journal stream systemd named in `JOURNAL_STREAM`.
fn stderr_is_journal() -> bool {
    let Some(named) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = named.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_event_in_each_format() {
        let text = Logger {
            format: LogFormat::Text,
            journal: false,
            mirror: None,
        };
        assert_eq!(
            text.line(Level::Error, "cannot read\nx"),
            "dupmirror: error: cannot read x"
        );
        let journal = Logger {
            journal: true,
            ..text.for_mirror("web")
        };
        assert_eq!(
            journal.line(Level::Warning, "slow"),
            "<4>dupmirror: warning: web: slow"
        );
        let json = Logger {
            format: LogFormat::Json,
            ..journal
        };
        let v: serde_json::Value = serde_json::from_str(&json.line(Level::Info, "ok")).unwrap();
        assert_eq!(v["level"], "info");
        assert_eq!(v["mirror"], "web");
        assert_eq!(v["message"], "ok");
    }
}
