//! The exit statuses a script can branch on, the same for `sync`, `verify` and `run`, and
//! the classification of a failure into one of them.
//!
//! Classification walks the error's chain, outermost cause first, and stops at the first
//! typed error it knows (never at a message's wording):
//!
//! ```text
//! HookError                       -> 3 hook failed
//! ConfigError                     -> 2 usage (clap's own usage errors exit 2 too)
//! SourceError::Transient         -> 4 source unreachable (what is left after --retries)
//! Error::Locked                   -> 5 lock held
//! CryptoError                     -> 6 decryption or signature failure
//! Error::Corrupt, HashMismatch,
//!   UnsafePath, SplitBrain,
//!   Rollback                      -> 7 damaged or hostile repository (or sources that
//!                                      disagree about it, or one that went back)
//! Error::DestDiffers              -> 8 DEST differs (verify)
//! anything else                   -> 1
//! ```

use crate::decode::crypto::CryptoError;
use crate::error::Error;
use crate::fleet::config::ConfigError;
use crate::fleet::hooks::HookError;
use crate::source::SourceError;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Exit {
    Success,
    Failure,
    Usage,
    HookFailed,
    SourceUnreachable,
    Locked,
    Decryption,
    BadRepository,
    DestDiffers,
}

impl Exit {
    /// Every status with its meaning, for `--help`, the man page and the README.
    pub const ALL: [Exit; 9] = [
        Exit::Success,
        Exit::Failure,
        Exit::Usage,
        Exit::HookFailed,
        Exit::SourceUnreachable,
        Exit::Locked,
        Exit::Decryption,
        Exit::BadRepository,
        Exit::DestDiffers,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Success => "success (also when nothing was new)",
            Exit::Failure => "any other failure",
            Exit::Usage => "usage error: a bad option, or a bad configuration file",
            Exit::HookFailed => {
                "a pre-sync or post-sync hook failed (after a post-sync failure DEST is synced)"
            }
            Exit::SourceUnreachable => "the source could not be reached, after --retries retries",
            Exit::Locked => "another dupmirror holds the lock of DEST or of its state directory",
            Exit::Decryption => {
                "a file could not be decrypted, or its signature was refused (--sign-key)"
            }
            Exit::BadRepository => {
                "the repository or its server is damaged or hostile (bad hash, corrupt data, unsafe \
                 path, a bound exceeded, an older backup than DEST held)"
            }
            Exit::DestDiffers => "verify: DEST differs from the backup",
        }
    }

    /// The status a failure exits with.
    pub fn of(e: &anyhow::Error) -> Exit {
        for cause in e.chain() {
            // A reader's typed error travels inside an io::Error, whose `source()` skips it.
            let inner = cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|inner| inner as &(dyn std::error::Error + 'static));
            if let Some(exit) = Exit::of_typed(cause).or_else(|| inner.and_then(Exit::of_typed)) {
                return exit;
            }
        }
        Exit::Failure
    }

    fn of_typed(cause: &(dyn std::error::Error + 'static)) -> Option<Exit> {
        if cause.is::<HookError>() {
            return Some(Exit::HookFailed);
        }
        if cause.is::<ConfigError>() {
            return Some(Exit::Usage);
        }
        if cause.is::<CryptoError>() {
            return Some(Exit::Decryption);
        }
        if let Some(SourceError::Transient(_)) = cause.downcast_ref::<SourceError>() {
            return Some(Exit::SourceUnreachable);
        }
        Some(match cause.downcast_ref::<Error>()? {
            Error::Locked(_) => Exit::Locked,
            Error::DestDiffers { .. } => Exit::DestDiffers,
            Error::Corrupt(_)
            | Error::HashMismatch { .. }
            | Error::UnsafePath { .. }
            | Error::SplitBrain { .. }
            | Error::Rollback { .. } => Exit::BadRepository,
        })
    }

    /// The status of a run of several mirrors: success when all succeeded, else the status
    /// the failures share, else 1.
    pub fn combine(statuses: impl IntoIterator<Item = Exit>) -> Exit {
        let mut failed = statuses.into_iter().filter(|s| *s != Exit::Success);
        match failed.next() {
            None => Exit::Success,
            Some(first) if failed.all(|s| s == first) => first,
            Some(_) => Exit::Failure,
        }
    }

    /// The table as text lines, `CODE  meaning`.
    pub fn table() -> String {
        Exit::ALL
            .iter()
            .map(|s| format!("{:>3}  {}", s.code(), s.meaning()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_in_order() {
        for (i, s) in Exit::ALL.iter().enumerate() {
            assert_eq!(s.code() as usize, i);
        }
    }

    #[test]
    fn combine_keeps_a_shared_failure_only() {
        use Exit::*;
        assert_eq!(Exit::combine([Success, Success]), Success);
        assert_eq!(Exit::combine([Success, Locked, Locked]), Locked);
        assert_eq!(Exit::combine([HookFailed, Locked]), Failure);
    }

    #[test]
    fn the_outermost_typed_cause_decides() {
        let locked = anyhow::Error::from(Error::Locked("/s".into())).context("while syncing");
        assert_eq!(Exit::of(&locked), Exit::Locked);
        let corrupt = anyhow::Error::from(Error::corrupt("bad tar")).context("set 3");
        assert_eq!(Exit::of(&corrupt), Exit::BadRepository);
        assert_eq!(Exit::of(&anyhow::anyhow!("disk full")), Exit::Failure);
    }
}
