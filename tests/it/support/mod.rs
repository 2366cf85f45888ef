//! The harness every integration test uses, split by concern:
//!
//! * [`process`]: running programs, above all the dupmirror binary under test, and checking
//!   how a run ended (success, or one clear error line);
//! * [`oracle`]: upstream duplicity (0.8 and 3.x), which writes the repositories and whose
//!   `restore` is the oracle dupmirror's trees are compared with;
//! * [`lab`]: a source tree, the repository upstream writes of it, and hosts (DEST plus state
//!   directory) that sync from it; [`source`] builds and changes the source tree;
//! * [`scenario`]: the oracle scenario driver (a host per step, a late host, time travel);
//! * [`bed`]: a forged repository, a host and a canary folder, for hostile-input tests;
//! * [`fixture`]: the one fixture builder for repositories upstream never writes: sets forged
//!   byte by byte, and upstream sets rewritten (renamed entries, fixed manifests);
//! * [`tree`]: tree snapshots and their text form (the committed `testdata/**/*.tree` files);
//! * [`report`]: dupmirror's `--json` reports as typed structs;
//! * [`remote`], [`proxy`]: servers on 127.0.0.1 and a fault-injecting TCP proxy;
//!   [`hostile`]: lying servers, and runs measured for peak memory and capped in file size;
//!   [`stores`]: an S3 server (moto) and an SFTP server (sshd);
//! * [`gpg`]: private GnuPG homes; [`strace`]: kills and errors at exact syscalls, and
//!   locks held at them; [`tmpfs`]: a small or second file system;
//! * [`time`]: backup times and duplicity's time formats.
//!
//! The tests talk to dupmirror only through its command line (docs/design.md §8) and compare
//! what it writes with what upstream `duplicity restore` writes (the oracle, docs/design.md
//! §4).
//!
//! Upstream binaries: 0.8.x is `duplicity` on `PATH` (or `$DUPMIRROR_DUPLICITY08`), 3.x is
//! `$DUPMIRROR_DUPLICITY3` or `/opt/dup3/bin/duplicity`. When one is missing (or another
//! program a test needs: gpg, strace, nginx...) a test prints "skipped: ..." and returns,
//! unless `DUPMIRROR_REQUIRE_ORACLE=1`, which turns the skip into a failure (`scripts/test.sh`
//! and CI set it).
//!
//! Other knobs: `DUPMIRROR_TEST_BIN` runs the suite against another dupmirror binary (e.g. a
//! release build); `DUPMIRROR_TEST_TIMEOUT` (seconds, default 300) bounds each dupmirror run.
//! dupmirror never inherits `PASSPHRASE` or `GNUPGHOME` from the tests' environment: the
//! encryption tests give it their own (`gpg`).

pub mod bed;
pub mod fixture;
pub mod gpg;
pub mod hostile;
pub mod lab;
pub mod oracle;
pub mod process;
pub mod proxy;
pub mod remote;
pub mod report;
pub mod scenario;
pub mod source;
pub mod stores;
pub mod strace;
pub mod time;
pub mod tmpfs;
pub mod tree;

pub use lab::{assert_dest_unchanged, assert_dest_unchanged_or_at, remove_tree, Host, Lab};
pub use oracle::{duplicity, Duplicity, Version};
pub use process::{dupmirror, dupmirror_env, run_with_timeout, Run};
pub use source::{random_bytes, read, Fs};
pub use time::{compact_time, iso_time, t, T0};
pub use tree::{Compare, Kind, Tree};

use std::ffi::{OsStr, OsString};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One `#[test]` per upstream version (0.8 and 3.x), `NAME::dup08` and `NAME::dup3`, for each
/// scenario function `fn NAME(Duplicity)` named, or for each `NAME => RUN` with `RUN` an
/// `FnOnce(Duplicity)` (which sees the items of the module the macro is used in). A missing
/// version skips (or fails, see the module doc).
macro_rules! both_versions {
    ($($name:ident),* $(,)?) => {
        both_versions!($($name => $name),*);
    };
    ($($name:ident => $run:expr),* $(,)?) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use $crate::support::{duplicity, Version};
            #[test]
            fn dup08() {
                if let Some(d) = duplicity(Version::V08) {
                    ($run)(d)
                }
            }
            #[test]
            fn dup3() {
                if let Some(d) = duplicity(Version::V3) {
                    ($run)(d)
                }
            }
        }
    )*};
}
pub(crate) use both_versions;

/// Whether a missing program fails the test instead of skipping it.
pub fn require_oracle() -> bool {
    std::env::var("DUPMIRROR_REQUIRE_ORACLE").is_ok_and(|v| v == "1")
}

/// Prints why a test is skipped (`why` says what is missing and how to get it), or panics
/// when `DUPMIRROR_REQUIRE_ORACLE=1`: CI installs every program the suite needs.
pub fn skip(why: &str) {
    if require_oracle() {
        panic!("{why}, and DUPMIRROR_REQUIRE_ORACLE=1");
    }
    eprintln!("skipped: {why}");
}

/// Whether the tests run as root; if not, skips (see [`skip`]) saying `what` needs root.
pub fn root_for(what: &str) -> bool {
    let root = is_root();
    if !root {
        skip(&format!("{what} needs root"));
    }
    root
}

/// True when the tests run as root (ownership and device nodes can be tested).
pub fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let d = tempfile::tempdir().expect("tempdir");
        fs::metadata(d.path()).expect("stat tempdir").uid() == 0
    })
}

/// How trees made as root (the committed `.tree` files) compare here: a non-root run cannot
/// restore owners.
pub fn compare_as_made_by_root() -> Compare {
    if is_root() {
        Compare::default()
    } else {
        Compare::default().without_owners()
    }
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn os(s: impl AsRef<OsStr>) -> OsString {
    s.as_ref().to_os_string()
}

/// A test path as `&str` (the tests make only UTF-8 paths).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}
