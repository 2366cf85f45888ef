//! Upstream duplicity, the oracle: 0.8.x (Debian's `duplicity`, or `$DUPMIRROR_DUPLICITY08`)
//! and 3.x (`$DUPMIRROR_DUPLICITY3`, default `/opt/dup3/bin/duplicity`). It writes the
//! repositories the tests sync from, and its `restore` says what DEST must hold.

use super::process::{find_on_path, run_with_timeout, Run};
use super::skip;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// 0.8.x, Debian bookworm's `duplicity` (0.8.22).
    V08,
    /// 3.x from the venv (3.2.1).
    V3,
}

impl Version {
    pub const ALL: [Version; 2] = [Version::V08, Version::V3];

    pub fn label(self) -> &'static str {
        match self {
            Version::V08 => "0.8",
            Version::V3 => "3.x",
        }
    }

    fn locate(self) -> Option<PathBuf> {
        match self {
            Version::V08 => std::env::var_os("DUPMIRROR_DUPLICITY08")
                .map(PathBuf::from)
                .or_else(|| find_on_path("duplicity")),
            Version::V3 => Some(
                std::env::var_os("DUPMIRROR_DUPLICITY3")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("/opt/dup3/bin/duplicity")),
            ),
        }
    }

    fn version_prefix(self) -> &'static str {
        match self {
            Version::V08 => "duplicity 0.8.",
            Version::V3 => "duplicity 3.",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Duplicity {
    pub bin: PathBuf,
    /// What `--version` printed, e.g. "duplicity 0.8.22".
    pub version_text: String,
}

fn probe(v: Version) -> Result<Duplicity, String> {
    let bin = v.locate().ok_or("not found on PATH")?;
    if !bin.is_file() {
        return Err(format!("{} does not exist", bin.display()));
    }
    let out = Command::new(&bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !text.starts_with(v.version_prefix()) {
        return Err(format!(
            "{} --version printed {text:?} (wanted {}*)",
            bin.display(),
            v.version_prefix()
        ));
    }
    Ok(Duplicity {
        bin,
        version_text: text,
    })
}

/// The upstream duplicity of version `v`, or `None` (after printing a "skipped" line) when it
/// is not installed. Panics instead when `DUPMIRROR_REQUIRE_ORACLE=1`.
pub fn duplicity(v: Version) -> Option<Duplicity> {
    static CACHE: OnceLock<[Result<Duplicity, String>; 2]> = OnceLock::new();
    let cache = CACHE.get_or_init(|| [probe(Version::V08), probe(Version::V3)]);
    match &cache[v as usize] {
        Ok(d) => Some(d.clone()),
        Err(why) => {
            skip(&format!(
                "upstream duplicity {} not installed ({why}); run scripts/install-deps.sh",
                v.label()
            ));
            None
        }
    }
}

impl Duplicity {
    pub fn label(&self) -> String {
        self.version_text.clone()
    }

    /// Run duplicity with `args` in `dir`; panic with its output unless it exits 0.
    pub fn run(&self, dir: &Path, args: &[OsString], env: &[(OsString, OsString)]) -> Run {
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(dir).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let r = run_with_timeout(cmd, Duration::from_secs(600));
        r.assert_ok(&format!("upstream {}", self.version_text));
        r
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupKind {
    Full,
    Inc,
}

impl BackupKind {
    /// The duplicity command that makes this kind of set.
    pub fn command(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Inc => "incremental",
        }
    }
}

/// Parse `duplicity list-current-files` output: lines `Day Mon DD HH:MM:SS YYYY path`.
pub fn parse_list_current_files(out: &[u8]) -> BTreeSet<Vec<u8>> {
    let mut set = BTreeSet::new();
    for line in out.split(|&b| b == b'\n') {
        if line.len() > 25 && is_ctime(&line[..24]) && line[24] == b' ' {
            set.insert(line[25..].to_vec());
        }
    }
    set
}

fn is_ctime(s: &[u8]) -> bool {
    // "Tue Nov 14 22:13:20 2023"
    let pat = b"AAA AAA dd dd:dd:dd dddd";
    s.len() == pat.len()
        && s.iter().zip(pat.iter()).all(|(&c, &p)| match p {
            b'A' => c.is_ascii_alphabetic(),
            b'd' => c.is_ascii_digit() || c == b' ',
            _ => c == p,
        })
}
