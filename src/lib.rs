//! dupmirror: keep a local tree equal to the latest state of a duplicity repository by
//! replaying only the sets that are new since the last run.
//!
//! Data flows one way (see DESIGN.md):
//! `backend` (bytes; remote ones wrapped in retries) → `fetch` (download cache and prefetch)
//! → `volume` (hash check, then `crypto` or decompression) → `archive` (tar entries →
//! duplicity records) → `plan` (what to fetch and apply) → `apply` (staged, journaled writes
//! into DEST), with `state` remembering what DEST holds. `naming`, `manifest`, `collection`
//! and `signatures` read the repository's metadata; `commands` compose all of it.

pub mod apply;
pub mod archive;
pub mod backend;
pub mod collection;
pub mod commands;
pub mod compare;
pub mod crypto;
pub mod delta;
pub mod error;
pub mod fetch;
pub mod filter;
pub mod index;
pub mod manifest;
pub mod meta;
pub mod naming;
pub mod plan;
pub mod progress;
pub mod repair;
pub mod repo;
pub mod signatures;
pub mod state;
pub mod timefmt;
pub mod volume;

pub use error::Error;

#[cfg(test)]
mod testdata_tests;
