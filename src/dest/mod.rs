//! DEST and the state beside it: directory handles through which every file operation on
//! the mirrored tree goes (`dir`, `tree`), the attributes given to objects (`fsops`), the
//! walker that reads a tree (and the external sort that keeps its listings and the list of
//! changed paths small), the guard that keeps records inside it, the journal that
//! makes a set atomic, the state that remembers which backup DEST holds, and the order in
//! which a command opens them (`session`), the two-tree layout of `sync --atomic`
//! (`atomic`), and the early writeback of a tree being built (`writeback`). Nothing here
//! knows about repositories or backends.

pub mod atomic;
pub mod changes;
pub mod dir;
pub mod fsops;
pub mod guard;
pub mod journal;
pub mod session;
pub mod sorted;
pub mod state;
pub mod tree;
pub mod walk;
pub mod writeback;
