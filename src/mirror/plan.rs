//! What a sync reads, before it writes anything: the manifests of the sets `decide` chose,
//! the volumes they need, and for a Replace how DEST differs from the full.
//!
//! ```text
//! plan(repository, decision, DEST, paths):
//!     for each set the decision applies:
//!         read its manifest
//!         Replace: compare DEST with the full's signatures (compare.rs); fetch only the
//!                  volumes whose ranges hold a path that differs in content or type;
//!                  extra paths and wrong attributes are fixed from the signatures alone
//!         else:    the volumes whose manifest ranges overlap the mirrored paths
//! commits: a Fresh step commits alone (its tree is moved in whole); every other step
//!     commits together with the Update steps after it: one merged, journaled catch-up
//!     (apply/overlay.rs)
//! ```
//!
//! `--dry-run` prints this and stops. Limits: the volume bytes come from the listing's
//! sizes (0 when the source gives none).

use crate::dest::tree::Tree;
use crate::mirror::apply::ApplyMode;
use crate::mirror::compare::{compare, ContentCheck, Difference};
use crate::mirror::decide::Decision;
use crate::mirror::filter::PathFilter;
use crate::repo::collection::BackupSet;
use crate::repo::manifest::Manifest;
use crate::repo::Repository;
use anyhow::Result;
use std::ops::Range;

/// One set to apply.
pub struct Step<'c> {
    pub set: &'c BackupSet,
    pub mode: ApplyMode,
    pub manifest: Manifest,
    /// The volumes to read, ascending.
    pub volumes: Vec<u32>,
    pub bytes: u64,
    /// The records to apply.
    pub filter: PathFilter,
    /// Replace: what differs from the full, found without reading volumes.
    pub differences: Vec<Difference>,
}

/// A decision with what it reads.
pub struct Plan<'c> {
    pub decision: Decision<'c>,
    /// One per step of the decision, in order.
    pub steps: Vec<Step<'c>>,
}

impl<'c> Plan<'c> {
    /// Reads the manifests of the decided sets and, for a Replace, compares DEST with the
    /// full's signatures. `filter` holds the mirrored paths.
    pub fn build(
        repo: &Repository,
        decision: Decision<'c>,
        dest: Option<&Tree>,
        filter: &PathFilter,
    ) -> Result<Plan<'c>> {
        let mut steps = Vec::new();
        for decided in &decision.steps {
            let (set, mode) = (decided.set, decided.mode);
            let manifest = repo.manifest(set)?;
            let (step_filter, differences) = if mode == ApplyMode::Replace {
                let (diffs, _) = compare(repo, &[set], dest, filter, ContentCheck::Signatures)?;
                let need = PathFilter::subtrees(
                    diffs
                        .iter()
                        .filter(|d| d.needs_data())
                        .map(|d| d.index.clone()),
                );
                (need, diffs)
            } else {
                (filter.clone(), Vec::new())
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
                set,
                mode,
                manifest,
                volumes,
                bytes,
                filter: step_filter,
                differences,
            });
        }
        Ok(Plan { decision, steps })
    }
}

impl Plan<'_> {
    /// The steps that stage into one applier and commit as one step, in order: a first
    /// sync's full alone, then everything else together.
    pub fn commits(&self) -> Vec<Range<usize>> {
        let mut commits: Vec<Range<usize>> = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            match commits.last_mut() {
                Some(last)
                    if step.mode == ApplyMode::Update
                        && self.steps[last.start].mode != ApplyMode::Fresh =>
                {
                    last.end = i + 1
                }
                _ => commits.push(i..i + 1),
            }
        }
        commits
    }
}
