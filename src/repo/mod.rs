//! A duplicity repository as dupmirror reads it.
//!
//! `filename` parses the names of repository files, `time` duplicity's times, `manifest` a
//! set's manifest, `collection` sorts a listing into sets and chains; [`Repository`] ties a
//! source to those and streams a set's volumes through `decode`; `sigtar` reads the
//! librsync signatures of a chain from its signature tars.

pub mod collection;
pub mod filename;
pub mod manifest;
mod repository;
pub mod select;
pub mod sigtar;
pub mod time;

pub use repository::{RepoOptions, Repository};
