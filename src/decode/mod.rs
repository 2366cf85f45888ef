//! From a volume's stored bytes to duplicity records, with nothing about where the bytes
//! came from or where the records go.
//!
//! `volume` checks the SHA1 of the stored bytes and undoes the encoding (`crypto` for gpg,
//! `gzip` (ISA-L) for gzip, or nothing); `tar` reads the tar entries with their checked
//! names and metadata; `records` assembles them into one record per path, stitching split
//! files across volumes; `delta` applies and checks librsync deltas and signatures;
//! `delta_ops` reads a delta command by command.

pub mod crypto;
pub mod delta;
pub mod delta_ops;
pub mod gzip;
pub mod records;
pub mod tar;
pub mod volume;
