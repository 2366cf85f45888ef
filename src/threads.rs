//! How many threads a pool gets: the environment knobs (`DUPMIRROR_DECODERS`,
//! `DUPMIRROR_WRITERS`) read one way, so a bad value gets the same one-line error whichever
//! pool it is for.

use anyhow::{bail, Result};

/// The thread count `var` sets, at least `min`; unset: the machine's cores, at most
/// `max_default`.
pub fn count_from_env(var: &str, min: usize, max_default: usize) -> Result<usize> {
    match std::env::var(var) {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n >= min => Ok(n),
            _ => bail!("{var} must be a whole number of threads, {min} or more, not {v:?}"),
        },
        Err(_) => Ok(std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(max_default)),
    }
}
