//! Telling DEST's drift from a bad set, for the files an incremental patches.
//!
//! An incremental's delta rebuilds a file from the copy the previous backup left in DEST.
//! When someone edited that copy, the delta either does not apply or yields the wrong
//! bytes. The set records the new file's librsync signature, so the result can be checked
//! (the set's signature file is read forward as its records come: `SetSignatures`):
//!
//! ```text
//! judge(path, patch outcome, result (a staged file, or a version composed in memory), basis):
//!     not watching (a repair's scratch mirror, whose bases are exact), or the basis is the
//!     object an earlier set of the same commit staged (exact too: a catch-up's delta chain;
//!     a repair from the chain would apply the same delta to the same bytes):
//!         a patch that fails is an error; a result is taken as it is
//!     watching (an incremental over DEST, with the set's new signatures):
//!         the patch failed, or the result's signature is not the one the set records
//!                                   -> Drifted: the caller restores the path from the chain
//!         otherwise                 -> Fits
//! ```
//!
//! Only content drifts: DEST holding another kind of object where the set patches a
//! regular file is a contradiction, refused before any patching (update.rs). A delta that
//! is itself corrupt looks like drift here; it fails again, as an error, when the repair
//! applies it to the basis restored from the chain. One that writes past its output bound
//! ([`DriftCheck::output_bound`]) is refused at once: its output length does not depend on
//! the basis.

use crate::decode::delta::{self, SigDigest};
use crate::error::Error;
use crate::index::PathIndex;
use crate::mirror::compare::content_matches;
use crate::repo::sigtar::SetSignatures;
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::io::Read;

#[derive(Default)]
pub struct DriftCheck {
    /// The set's new signatures, when watching (read as the records come).
    signatures: Option<SetSignatures>,
    drifted: BTreeSet<PathIndex>,
}

/// What a delta was applied to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// DEST's copy: it may have drifted.
    Dest,
    /// An object staged by an earlier set of the same commit: exactly what that set left.
    Staged,
}

/// What a patch outcome means.
pub enum Verdict {
    /// The result is the file the set describes (this many bytes).
    Fits(u64),
    /// DEST's copy was not what the previous backup left.
    Drifted,
}

impl DriftCheck {
    pub fn watch(&mut self, signatures: SetSignatures) {
        self.signatures = Some(signatures);
    }

    /// The most a delta may write for `index`: what the set's new signature of the file
    /// allows, else [`delta::unsigned_output_bound`] of its basis and delta lengths. A
    /// delta of endless copies must not fill the disk.
    pub fn output_bound(
        &mut self,
        index: &PathIndex,
        basis_len: u64,
        delta_len: u64,
    ) -> Result<u64> {
        let signed = match &mut self.signatures {
            Some(s) => s.get(index)?.and_then(SigDigest::max_size),
            None => None,
        };
        Ok(signed.unwrap_or_else(|| delta::unsigned_output_bound(basis_len, delta_len)))
    }

    /// Judges the outcome of patching `index`; `result` reads the patched file; `basis`
    /// says what the patch started from.
    pub fn judge<R: Read>(
        &mut self,
        index: &PathIndex,
        patched: Result<u64>,
        result: impl FnOnce() -> Result<R>,
        basis: Basis,
    ) -> Result<Verdict> {
        let corrupt = patched
            .as_ref()
            .is_err_and(|e| matches!(e.downcast_ref::<Error>(), Some(Error::Corrupt(_))));
        let watched = match &mut self.signatures {
            Some(s) if !corrupt && basis == Basis::Dest => s,
            _ => {
                let n = patched.with_context(|| format!("cannot apply the change to {index}"))?;
                return Ok(Verdict::Fits(n));
            }
        };
        let fits = match &patched {
            Err(_) => false,
            Ok(n) => match watched.get(index)? {
                Some(sig) => content_matches(result()?, *n, sig)?,
                None => true,
            },
        };
        match patched {
            Ok(n) if fits => Ok(Verdict::Fits(n)),
            _ => {
                self.drifted.insert(index.clone());
                Ok(Verdict::Drifted)
            }
        }
    }

    /// A path still drifted (to be repaired before the set can commit).
    pub fn first(&self) -> Option<&PathIndex> {
        self.drifted.iter().next()
    }

    /// Ends watching the set (its signature file read to the end: see
    /// [`SetSignatures::finish`]) and takes the paths found drifted.
    pub fn take(&mut self) -> Result<BTreeSet<PathIndex>> {
        if let Some(s) = self.signatures.take() {
            s.finish()?;
        }
        Ok(std::mem::take(&mut self.drifted))
    }
}
