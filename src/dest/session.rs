//! Opening DEST and its state folder for a command that may change DEST, in an order that
//! keeps a wrong, shared or planted state folder from touching anything.
//!
//! ```text
//! open(DEST path, state folder path):
//!     state folder: not a symlink, the user's own, not writable by others; locked
//!     DEST: a real folder or missing, never a symlink (refused, not followed); locked too
//!           (flock on DEST itself), so two syncs with different state folders never meet
//!     the state and any pending journal must name this DEST path    <- before any replay
//!     finish an interrupted commit, or drop it when DEST is no longer the folder it was
//!           made for (dest::journal::recover)
//!     the state counts only while it describes this very folder (device and inode): a
//!           DEST removed or replaced since is treated as never synced
//! ```

use super::changes::ChangedPaths;
use super::journal::{self, Recovery};
use super::state::{DestPaths, MirrorState, StateDir};
use super::tree::Dest;
use anyhow::Result;

/// DEST and its state folder, both locked, with what DEST holds.
pub struct Session {
    pub state_dir: StateDir,
    pub dest: Dest,
    /// What finishing an interrupted commit did.
    pub recovery: Recovery,
    /// The state DEST is in; `None` when never synced, or when DEST is not the folder the
    /// recorded state describes (removed or replaced since).
    pub state: Option<MirrorState>,
    /// The state recorded for another folder at DEST's path (`state` is then `None`).
    pub stale: Option<MirrorState>,
}

impl Session {
    /// Opens DEST and its state; `changes`, when given, receives what an interrupted
    /// commit completed here changes.
    pub fn open(
        paths: &DestPaths,
        wait: bool,
        durable: bool,
        changes: Option<&mut ChangedPaths>,
    ) -> Result<Session> {
        let state_dir = StateDir::open(&paths.state_root, &paths.dest, wait)?;
        let mut dest = Dest::open(&paths.dest)?;
        dest.lock(wait)?;
        state_dir.check_belongs_to(None)?;
        let recovery = journal::recover(&state_dir, &mut dest, durable, changes)?;
        let (state, stale) = match state_dir.load()? {
            Some(st) if st.describes(dest.id()) => (Some(st), None),
            Some(st) => (None, Some(st)),
            None => (None, None),
        };
        Ok(Session {
            state_dir,
            dest,
            recovery,
            state,
            stale,
        })
    }
}
