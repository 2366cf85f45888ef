//! Typed errors for the conditions a caller has to tell apart.
//!
//! Most of the library reports failures through `anyhow` with context, because the caller
//! only prints them. The variants here are the ones a caller branches on: a repository that
//! is corrupt or hostile (refuse the set, keep DEST), a volume whose hash does not match
//! (maybe re-fetch it), a lock held by another process, a DEST that `verify` found different.
//! `exit` maps them (and the other typed errors) to the documented exit statuses.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository holds data that does not follow the duplicity format.
    #[error("{0}")]
    Corrupt(String),

    /// A volume's bytes do not hash to what its manifest says.
    #[error("volume {name}: SHA1 mismatch (manifest says {expected}, file has {actual}); the file is damaged or was replaced")]
    HashMismatch {
        name: String,
        expected: String,
        actual: String,
    },

    /// An entry would write outside DEST or through a symlink.
    #[error("refusing unsafe entry {path:?}: {reason}")]
    UnsafePath { path: String, reason: String },

    /// Without `--time`, the source offers only backups older than one DEST already held:
    /// its newer sets were removed or are being hidden (rollback).
    #[error("refusing to take DEST back from {held} to {offered}, the newest backup the source still offers: its newer sets are gone (removed, or hidden by the server or the network); to go back on purpose, pass --time {offered}")]
    Rollback { held: String, offered: String },

    /// Two sources hold different copies of one file of the repository (a manifest).
    #[error("split brain: {first} and {second} hold different copies of {name}; refusing to use either until they agree (or drop one with --source)")]
    SplitBrain {
        name: String,
        first: String,
        second: String,
    },

    /// Another process holds the state directory's lock.
    #[error("another dupmirror sync holds the lock on {0} (use --wait to wait for it)")]
    Locked(PathBuf),

    /// `verify` found DEST different from the backup (and `--repair` did not fix it all).
    #[error("DEST differs from the backup at {state} in {paths} path(s)")]
    DestDiffers { state: String, paths: usize },
}

impl Error {
    pub fn corrupt(msg: impl Into<String>) -> Self {
        Error::Corrupt(msg.into())
    }
}
