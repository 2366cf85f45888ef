//! Bringing DEST to a backup: which paths matter (`filter`), which sets to apply and how
//! (`decide`, a pure function), how DEST differs from the signatures (`compare`), what to
//! fetch (`plan`), staging and committing a set (`apply`), restoring damaged paths from the
//! chain (`repair`), and never going back to an older backup unasked (`rollback`).

pub mod apply;
pub mod compare;
pub mod decide;
pub mod filter;
pub mod plan;
pub mod repair;
pub mod rollback;
