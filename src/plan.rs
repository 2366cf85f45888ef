//! Deciding what a sync does, before it does anything.
//!
//! ```text
//! plan(repository, state of DEST, time T):
//!     chain = the chain duplicity would restore T from (§6.4)
//!     if DEST has no state:       full (Fresh if DEST is empty) + incrementals ≤ T
//!     elif DEST is on that chain and at a set boundary ≤ T:
//!                                 the incrementals after DEST's end, ≤ T (maybe none)
//!     else (new full chain, T in the past, DEST's set gone from the source):
//!                                 full (Replace) + incrementals ≤ T
//!     for each set: read its manifest; list the volumes and bytes to read
//! ```
//!
//! `--dry-run` prints this and stops. Limits: a Replace re-reads the whole full set; the
//! plan does not yet use signatures to skip volumes whose files DEST already has.

use crate::apply::ApplyMode;
use crate::collection::BackupSet;
use crate::manifest::Manifest;
use crate::repo::Repository;
use crate::state::MirrorState;
use crate::timefmt::{format_compact, Epoch};
use anyhow::{bail, Result};

/// One set to apply.
pub struct Step {
    pub set: BackupSet,
    pub mode: ApplyMode,
    pub manifest: Manifest,
    pub volumes: Vec<u32>,
    pub bytes: u64,
}

pub struct Plan {
    /// The full set time of the chain DEST ends on.
    pub chain_start: Epoch,
    /// The state DEST will be in afterwards.
    pub end_time: Epoch,
    pub steps: Vec<Step>,
    /// Why the plan starts over from a full, when it does.
    pub restart_reason: Option<String>,
}

impl Plan {
    pub fn build(
        repo: &Repository,
        state: Option<&MirrorState>,
        dest_is_empty: bool,
        time: Epoch,
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
        let mut restart_reason = None;
        let sets: Vec<(&BackupSet, ApplyMode)> = match state {
            None => {
                let mode = if dest_is_empty {
                    ApplyMode::Fresh
                } else {
                    ApplyMode::Replace
                };
                wanted
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (*s, if i == 0 { mode } else { ApplyMode::Update }))
                    .collect()
            }
            Some(st) => {
                let on_chain = st.chain_start == chain.start_time()
                    && wanted.iter().any(|s| s.end_time == st.end_time);
                if on_chain {
                    wanted
                        .iter()
                        .filter(|s| s.end_time > st.end_time)
                        .map(|s| (*s, ApplyMode::Update))
                        .collect()
                } else {
                    restart_reason = Some(if st.chain_start != chain.start_time() {
                        format!(
                            "DEST holds the chain of {}, the backup wanted is on the chain of {}",
                            format_compact(st.chain_start),
                            format_compact(chain.start_time())
                        )
                    } else {
                        format!(
                            "DEST is at {}, which is not a set of the wanted state {}",
                            format_compact(st.end_time),
                            format_compact(end_time)
                        )
                    });
                    wanted
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            (
                                *s,
                                if i == 0 {
                                    ApplyMode::Replace
                                } else {
                                    ApplyMode::Update
                                },
                            )
                        })
                        .collect()
                }
            }
        };
        let mut steps = Vec::new();
        for (set, mode) in sets {
            let manifest = repo.manifest(set)?;
            let volumes: Vec<u32> = manifest.volumes.keys().copied().collect();
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
            });
        }
        Ok(Plan {
            chain_start: chain.start_time(),
            end_time,
            steps,
            restart_reason,
        })
    }
}
