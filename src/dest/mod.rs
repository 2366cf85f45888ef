//! DEST and the state beside it: every file operation on the mirrored tree, the walker that
//! reads it, the guard that keeps records inside it, the journal that makes a set atomic,
//! and the state that remembers which backup DEST holds. Nothing here knows about
//! repositories or backends.

pub mod changes;
pub mod fsops;
pub mod guard;
pub mod journal;
pub mod state;
pub mod walk;
