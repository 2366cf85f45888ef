//! The pre-sync and post-sync hooks: a command run with `sh -c` around one mirror's sync.
//!
//! A hook gets the mirror's facts in its environment (`DUPMIRROR_MIRROR`, `DUPMIRROR_DEST`,
//! `DUPMIRROR_FROM`; after the sync also `DUPMIRROR_TO`, `DUPMIRROR_CHANGED`,
//! `DUPMIRROR_CHANGED_LIST`, `DUPMIRROR_REPORT`; see `job`). Its standard output goes to
//! dupmirror's standard error (so `--json` output stays clean), its standard error is
//! passed on there too, and the last lines of it explain a failure.

use serde::Serialize;
use std::ffi::OsString;
use std::io::Read;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookKind {
    PreSync,
    PostSync,
}

impl std::fmt::Display for HookKind {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            HookKind::PreSync => "pre-sync",
            HookKind::PostSync => "post-sync",
        })
    }
}

/// What a hook did, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct HookOutcome {
    pub hook: HookKind,
    pub command: String,
    /// Its exit status (None: killed by a signal, or never started).
    pub status: Option<i32>,
    pub ok: bool,
    /// The end of what it wrote on stderr.
    pub stderr_tail: String,
}

/// A hook that failed: the run's exit status is `exit::Exit::HookFailed`.
#[derive(Debug, thiserror::Error)]
#[error("{} hook failed ({}){}", .0.hook, describe_status(.0.status), tail_suffix(&.0.stderr_tail))]
pub struct HookError(pub HookOutcome);

fn describe_status(status: Option<i32>) -> String {
    match status {
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal, or could not be started".into(),
    }
}

fn tail_suffix(tail: &str) -> String {
    let tail = tail.trim().replace('\n', " | ");
    if tail.is_empty() {
        String::new()
    } else {
        format!(": {tail}")
    }
}

/// How much of a hook's stderr a failure shows.
const TAIL_LINES: usize = 5;
const TAIL_BYTES: usize = 1000;

fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    if tail.len() > TAIL_BYTES {
        let mut cut = tail.len() - TAIL_BYTES;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = format!("...{}", &tail[cut..]);
    }
    tail
}

/// Runs `command` with `sh -c` and `env` added to the environment; waits for it.
pub fn run(
    hook: HookKind,
    command: &str,
    env: &[(&str, OsString)],
) -> Result<HookOutcome, HookError> {
    let mut outcome = HookOutcome {
        hook,
        command: command.to_string(),
        status: None,
        ok: false,
        stderr_tail: String::new(),
    };
    let stdout = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    let child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            outcome.stderr_tail = format!("cannot run sh: {e}");
            return Err(HookError(outcome));
        }
    };
    let mut stderr = Vec::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_end(&mut stderr);
    }
    let status = child.wait();
    // Passed on whole: it is the hook's own account of what it did.
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), &stderr);
    outcome.stderr_tail = tail(&stderr);
    match status {
        Ok(s) => {
            outcome.status = s.code();
            outcome.ok = s.success();
        }
        Err(e) => outcome.stderr_tail = format!("cannot wait for the hook: {e}"),
    }
    if outcome.ok {
        Ok(outcome)
    } else {
        Err(HookError(outcome))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_carries_its_status_and_stderr_tail() {
        let env = [("X", OsString::from("seven"))];
        let e = run(
            HookKind::PostSync,
            "for i in 1 2 3 4 5 6; do echo line$i >&2; done; echo $X >&2; exit 7",
            &env,
        )
        .unwrap_err();
        assert_eq!(e.0.status, Some(7));
        assert_eq!(
            e.to_string(),
            "post-sync hook failed (exit status 7): line3 | line4 | line5 | line6 | seven"
        );
        assert!(run(HookKind::PreSync, "test \"$X\" = seven", &env).is_ok());
    }
}
