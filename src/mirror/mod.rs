//! Bringing DEST to a backup: which paths matter (`filter`), how DEST differs from the
//! signatures (`compare`), what to fetch and apply (`plan`), staging and committing a set
//! (`apply`), and restoring damaged paths from the chain (`repair`).

pub mod apply;
pub mod compare;
pub mod filter;
pub mod plan;
pub mod repair;
