//! Deciding what a sync does, before it does anything.
//!
//! ```text
//! plan(repository, state of DEST, time T, paths):
//!     chain = the chain duplicity would restore T from (docs/format.md §3.3)
//!     if DEST has no state and is empty:   full (Fresh) + incrementals ≤ T
//!     elif DEST is on that chain, at a set ≤ T, with the same paths:
//!                                          the incrementals after DEST's end, ≤ T (maybe none)
//!     else (a new full chain, T in the past, other paths, a DEST being adopted):
//!         compare DEST with the full's signatures (compare.rs)
//!         full (Replace): fetch only volumes whose ranges hold a path that differs in
//!                         content or type; extra paths and wrong attributes are fixed
//!                         from the signatures alone
//!         + incrementals ≤ T
//!     every set: only the volumes whose manifest ranges overlap the mirrored paths
//! ```
//!
//! `--dry-run` prints this and stops. Limits: a Replace compares against the full and then
//! replays the chain's incrementals, even when DEST already held a later state of the
//! same chain (a change of `--path`).

use crate::dest::state::MirrorState;
use crate::mirror::apply::ApplyMode;
use crate::mirror::compare::{compare, CompareStats, ContentCheck, Difference};
use crate::mirror::filter::PathFilter;
use crate::repo::collection::BackupSet;
use crate::repo::manifest::Manifest;
use crate::repo::time::{format_compact, Epoch};
use crate::repo::Repository;
use anyhow::{bail, Result};
use std::path::Path;

/// One set to apply.
pub struct Step {
    pub set: BackupSet,
    pub mode: ApplyMode,
    pub manifest: Manifest,
    /// The volumes to read, ascending.
    pub volumes: Vec<u32>,
    pub bytes: u64,
    /// The records to apply.
    pub filter: PathFilter,
    /// Replace: what differs from the full, found without reading volumes.
    pub differences: Vec<Difference>,
    pub compare: Option<CompareStats>,
}

pub struct Plan {
    /// The full set time of the chain DEST ends on.
    pub chain_start: Epoch,
    /// The state DEST will be in afterwards.
    pub end_time: Epoch,
    pub steps: Vec<Step>,
    /// Why the plan starts over from a full, when it does.
    pub restart_reason: Option<String>,
    /// The chain's sets up to `end_time` (for repairs).
    pub chain_sets: Vec<BackupSet>,
}

impl Plan {
    pub fn build(
        repo: &Repository,
        state: Option<&MirrorState>,
        dest: &Path,
        dest_is_empty: bool,
        time: Epoch,
        filter: &PathFilter,
    ) -> Result<Plan> {
        let coll = &repo.collection;
        let Some(chain) = coll.select(time)? else {
            if !coll.incomplete.is_empty() {
                bail!(
                    "the source holds no complete backup yet: {} set(s) have no manifest (a \
                     backup in progress?)",
                    coll.incomplete.len()
                );
            }
            bail!("the source holds no duplicity backup ({})", repo.display());
        };
        let wanted = chain.sets_until(time);
        let end_time = wanted.last().map_or(chain.start_time(), |s| s.end_time);
        let paths = filter.to_strings();
        let mut restart_reason = None;
        let first_mode = match state {
            None if dest_is_empty => ApplyMode::Fresh,
            None => {
                restart_reason = Some("adopting a DEST that dupmirror never synced".to_string());
                ApplyMode::Replace
            }
            Some(st) => {
                let on_chain = st.chain_start == chain.start_time()
                    && wanted.iter().any(|s| s.end_time == st.end_time);
                if on_chain && st.paths == paths {
                    ApplyMode::Update
                } else {
                    restart_reason = Some(if st.chain_start != chain.start_time() {
                        format!(
                            "DEST holds the chain of {}, the backup wanted is on the chain of {}",
                            format_compact(st.chain_start),
                            format_compact(chain.start_time())
                        )
                    } else if !on_chain {
                        format!(
                            "DEST is at {}, which is not a set on the way to {}",
                            format_compact(st.end_time),
                            format_compact(end_time)
                        )
                    } else {
                        format!(
                            "the mirrored paths changed from {:?} to {:?}",
                            st.paths, paths
                        )
                    });
                    ApplyMode::Replace
                }
            }
        };
        let sets: Vec<(&BackupSet, ApplyMode)> = match (first_mode, state) {
            (ApplyMode::Update, Some(st)) => wanted
                .iter()
                .filter(|s| s.end_time > st.end_time)
                .map(|s| (*s, ApplyMode::Update))
                .collect(),
            _ => wanted
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    (
                        *s,
                        if i == 0 {
                            first_mode
                        } else {
                            ApplyMode::Update
                        },
                    )
                })
                .collect(),
        };
        let mut steps = Vec::new();
        for (set, mode) in sets {
            let manifest = repo.manifest(set)?;
            let (step_filter, differences, compare_stats) = if mode == ApplyMode::Replace {
                let (diffs, stats) = compare(repo, &[set], dest, filter, ContentCheck::Signatures)?;
                let need = PathFilter::subtrees(
                    diffs
                        .iter()
                        .filter(|d| d.needs_data())
                        .map(|d| d.index.clone()),
                );
                (need, diffs, Some(stats))
            } else {
                (filter.clone(), Vec::new(), None)
            };
            let volumes: Vec<u32> = manifest
                .volumes
                .values()
                .filter(|v| step_filter.needs_volume(v))
                .map(|v| v.number)
                .collect();
            let bytes = volumes
                .iter()
                .filter_map(|n| set.volumes.get(n).and_then(|f| f.size))
                .sum();
            steps.push(Step {
                set: set.clone(),
                mode,
                manifest,
                volumes,
                bytes,
                filter: step_filter,
                differences,
                compare: compare_stats,
            });
        }
        Ok(Plan {
            chain_start: chain.start_time(),
            end_time,
            steps,
            restart_reason,
            chain_sets: wanted.into_iter().cloned().collect(),
        })
    }
}
