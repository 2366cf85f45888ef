//! `dupmirror ls SOURCE [--source URL]... [--time T]`: the paths of the backup at T, from
//! the signature chain (like `duplicity list-current-files`), without reading any volume.
//! With several sources, those of the one a sync would follow (`repo::select`).

use super::resolve_time;
use crate::progress::Reporter;
use crate::repo::select::open_sources;
use crate::repo::sigtar::{merge_chain, SigEntry};
use crate::repo::RepoOptions;
use anyhow::{bail, Result};
use std::sync::Arc;

/// Calls `out` for every path that exists at `time`, in index order.
pub fn list(
    sources: &[String],
    time: Option<&str>,
    options: &RepoOptions,
    reporter: &Arc<Reporter>,
    mut out: impl FnMut(&SigEntry) -> Result<()>,
) -> Result<()> {
    let (repo, _) = open_sources(sources, options, reporter)?;
    let t = resolve_time(time)?;
    let Some(chain) = repo.collection.select(t)? else {
        bail!("the source holds no complete duplicity backup");
    };
    let sets = chain.sets_until(t);
    merge_chain(&repo, &sets, false, |e| {
        if e.exists() {
            out(&e)
        } else {
            Ok(())
        }
    })
}
