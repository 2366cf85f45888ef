//! Which sets a sync applies, and how: a pure decision from what DEST holds and what the
//! source lists. No repository is read and DEST is not looked at here, so `sync`, `verify`
//! and `status --dest` share one rule and tests drive every case directly.
//!
//! ```text
//! decide(state of DEST, collection, time T, paths, DEST empty?):
//!     chain  = the chain duplicity would restore T from (docs/format.md §3.3)
//!              none: the source holds no complete backup -> no decision
//!     wanted = its full and the incrementals ending at or before T; DEST ends at the last
//!     no state, DEST empty          -> full (Fresh), then each incremental (Update)
//!     no state, DEST not empty      -> full (Replace: adopting), then each incremental
//!     state on `chain`, at a set of `wanted`, mirroring the same paths
//!                                   -> each wanted set after the state's (Update); maybe none
//!     otherwise: another chain, a state after T or off the chain (--time rolls back), or
//!                other --path subtrees
//!                                   -> full (Replace), then each incremental (Update)
//! ```
//!
//! Orphaned incrementals and sets without a manifest are never chosen: the collection does
//! not put them in any chain. Limits: a Replace starts again from the full even when DEST
//! holds a later state of the same chain (a change of `--path`, a rollback); `plan` then
//! fetches only what differs.

use crate::dest::state::MirrorState;
use crate::mirror::apply::ApplyMode;
use crate::mirror::filter::PathFilter;
use crate::repo::collection::{BackupSet, Collection};
use crate::repo::time::{format_compact, Epoch};
use anyhow::Result;
use std::fmt;

/// What a sync to `end_time` does, before anything is read.
#[derive(Debug)]
pub struct Decision<'c> {
    /// The time of the full set that starts the chain DEST ends on.
    pub chain_start: Epoch,
    /// The state DEST is in afterwards: the end time of the last set wanted.
    pub end_time: Epoch,
    /// The chain's sets up to `end_time`, full first: what DEST holds afterwards.
    pub chain: Vec<&'c BackupSet>,
    /// The sets to apply, in order; none when DEST is up to date.
    pub steps: Vec<SetStep<'c>>,
    /// Why DEST starts over from the full set, when it does.
    pub restart: Option<Restart>,
}

/// One set to apply, and how it meets DEST.
#[derive(Clone, Copy, Debug)]
pub struct SetStep<'c> {
    pub set: &'c BackupSet,
    pub mode: ApplyMode,
}

/// Why a sync replaces DEST from a full set instead of applying incrementals to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restart {
    /// DEST is not empty and dupmirror never synced it.
    Adopt,
    /// DEST holds the chain starting at `held`; the backup wanted is on another.
    OtherChain { held: Epoch, wanted: Epoch },
    /// DEST is at `held`, which is not a set on the way to `end_time` (a rollback with
    /// `--time`, or the set was removed from the source).
    OffChain { held: Epoch, end_time: Epoch },
    /// DEST mirrors other subtrees than those asked for.
    PathsChanged { from: Vec<String>, to: Vec<String> },
}

impl fmt::Display for Restart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Restart::Adopt => write!(f, "adopting a DEST that dupmirror never synced"),
            Restart::OtherChain { held, wanted } => write!(
                f,
                "DEST holds the chain of {}, the backup wanted is on the chain of {}",
                format_compact(*held),
                format_compact(*wanted)
            ),
            Restart::OffChain { held, end_time } => write!(
                f,
                "DEST is at {}, which is not a set on the way to {}",
                format_compact(*held),
                format_compact(*end_time)
            ),
            Restart::PathsChanged { from, to } => {
                write!(f, "the mirrored paths changed from {from:?} to {to:?}")
            }
        }
    }
}

impl Decision<'_> {
    pub fn is_up_to_date(&self) -> bool {
        self.steps.is_empty()
    }

    /// Whether the first step starts over from the full set.
    pub fn needs_full(&self) -> bool {
        self.steps
            .first()
            .is_some_and(|s| s.mode != ApplyMode::Update)
    }
}

/// Decides how to bring DEST, holding `state` (None: never synced, or DEST is gone), to
/// the backup at `time`, mirroring `paths`. `None` when the source holds no complete
/// backup. Fails only when the collection is inconsistent (two chains span `time`).
pub fn decide<'c>(
    state: Option<&MirrorState>,
    collection: &'c Collection,
    time: Epoch,
    paths: &PathFilter,
    dest_empty: bool,
) -> Result<Option<Decision<'c>>> {
    let Some(chain) = collection.select(time)? else {
        return Ok(None);
    };
    let wanted = chain.sets_until(time);
    let end_time = wanted.last().map_or(chain.start_time(), |s| s.end_time);
    let paths = paths.to_strings();
    let restart = match state {
        None if dest_empty => None,
        None => Some(Restart::Adopt),
        Some(st) if st.chain_start != chain.start_time() => Some(Restart::OtherChain {
            held: st.chain_start,
            wanted: chain.start_time(),
        }),
        Some(st) if !wanted.iter().any(|s| s.end_time == st.end_time) => Some(Restart::OffChain {
            held: st.end_time,
            end_time,
        }),
        Some(st) if st.paths != paths => Some(Restart::PathsChanged {
            from: st.paths.clone(),
            to: paths,
        }),
        Some(_) => None,
    };
    let steps = match (state, &restart) {
        (Some(st), None) => wanted
            .iter()
            .filter(|s| s.end_time > st.end_time)
            .map(|set| SetStep {
                set,
                mode: ApplyMode::Update,
            })
            .collect(),
        _ => {
            let first = if restart.is_some() {
                ApplyMode::Replace
            } else {
                ApplyMode::Fresh
            };
            wanted
                .iter()
                .enumerate()
                .map(|(i, set)| SetStep {
                    set,
                    mode: if i == 0 { first } else { ApplyMode::Update },
                })
                .collect()
        }
    };
    Ok(Some(Decision {
        chain_start: chain.start_time(),
        end_time,
        chain: wanted,
        steps,
        restart,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::PathIndex;
    use std::path::PathBuf;
    use ApplyMode::*;

    /// Set times: day `d` of 2020 at midnight.
    fn t(d: u32) -> Epoch {
        crate::repo::time::parse_name_time(&format!("202001{d:02}T000000Z"), ':').unwrap()
    }

    fn name(d: u32) -> String {
        format!("202001{d:02}T000000Z")
    }

    /// A listing: `full(d)` and `inc(a, b)` add a complete set; `no_manifest` one without.
    #[derive(Default)]
    struct Listing(Vec<String>);

    impl Listing {
        fn full(mut self, d: u32) -> Self {
            let n = name(d);
            self.0.push(format!("duplicity-full.{n}.vol1.difftar.gz"));
            self.0.push(format!("duplicity-full.{n}.manifest"));
            self
        }
        fn inc(mut self, a: u32, b: u32) -> Self {
            let (a, b) = (name(a), name(b));
            self.0
                .push(format!("duplicity-inc.{a}.to.{b}.vol1.difftar.gz"));
            self.0.push(format!("duplicity-inc.{a}.to.{b}.manifest"));
            self
        }
        fn no_manifest(mut self, a: u32, b: u32) -> Self {
            let (a, b) = (name(a), name(b));
            self.0
                .push(format!("duplicity-inc.{a}.to.{b}.vol1.difftar.gz"));
            self
        }
        fn collection(&self) -> Collection {
            Collection::from_names(&self.0).unwrap()
        }
    }

    /// Two chains: full 1, incs to 2 and 3; full 5, inc to 6.
    fn two_chains() -> Collection {
        Listing::default()
            .full(1)
            .inc(1, 2)
            .inc(2, 3)
            .full(5)
            .inc(5, 6)
            .collection()
    }

    fn state(chain: u32, end: u32, paths: &[&str]) -> MirrorState {
        MirrorState::new(
            "src".into(),
            t(chain),
            t(end),
            PathBuf::from("/dest"),
            paths.iter().map(|p| p.to_string()).collect(),
        )
    }

    fn paths(p: &[&str]) -> PathFilter {
        PathFilter::subtrees(p.iter().map(|s| PathIndex::from_bytes(s.as_bytes())))
    }

    /// (set end day, mode) of each step.
    fn steps(d: &Decision) -> Vec<(Epoch, ApplyMode)> {
        d.steps.iter().map(|s| (s.set.end_time, s.mode)).collect()
    }

    fn decided<'c>(
        st: Option<&MirrorState>,
        c: &'c Collection,
        time: Epoch,
        p: &PathFilter,
        empty: bool,
    ) -> Decision<'c> {
        decide(st, c, time, p, empty).unwrap().unwrap()
    }

    #[test]
    fn fresh_dest_gets_the_whole_chain() {
        let c = two_chains();
        let d = decided(None, &c, t(3), &PathFilter::all(), true);
        assert_eq!(steps(&d), [(t(1), Fresh), (t(2), Update), (t(3), Update)]);
        assert_eq!((d.chain_start, d.end_time), (t(1), t(3)));
        assert_eq!(d.chain.len(), 3);
        assert_eq!(d.restart, None);
        assert!(d.needs_full());
    }

    #[test]
    fn latest_is_the_last_chain() {
        let c = two_chains();
        let d = decided(None, &c, t(30), &PathFilter::all(), true);
        assert_eq!(steps(&d), [(t(5), Fresh), (t(6), Update)]);
    }

    #[test]
    fn up_to_date_applies_nothing() {
        let c = two_chains();
        let st = state(5, 6, &[]);
        let d = decided(Some(&st), &c, t(30), &PathFilter::all(), false);
        assert!(d.is_up_to_date() && !d.needs_full());
        assert_eq!(d.end_time, t(6));
        assert_eq!(d.chain.len(), 2, "verify compares with the whole chain");
    }

    #[test]
    fn pending_incrementals_only() {
        let c = two_chains();
        let st = state(1, 1, &[]);
        let d = decided(Some(&st), &c, t(3), &PathFilter::all(), false);
        assert_eq!(steps(&d), [(t(2), Update), (t(3), Update)]);
        assert_eq!(d.restart, None);
        // --time between two sets stops at the earlier one.
        let d = decided(Some(&st), &c, t(2) + 3600, &PathFilter::all(), false);
        assert_eq!(steps(&d), [(t(2), Update)]);
    }

    #[test]
    fn a_new_full_chain_replaces() {
        let c = two_chains();
        let st = state(1, 3, &[]);
        let d = decided(Some(&st), &c, t(30), &PathFilter::all(), false);
        assert_eq!(steps(&d), [(t(5), Replace), (t(6), Update)]);
        assert_eq!(
            d.restart,
            Some(Restart::OtherChain {
                held: t(1),
                wanted: t(5)
            })
        );
        assert!(d
            .restart
            .unwrap()
            .to_string()
            .contains("chain of 20200101T000000Z"));
    }

    #[test]
    fn time_rollback_within_the_chain_replaces() {
        let c = two_chains();
        let st = state(1, 3, &[]);
        let d = decided(Some(&st), &c, t(2), &PathFilter::all(), false);
        assert_eq!(steps(&d), [(t(1), Replace), (t(2), Update)]);
        assert_eq!(
            d.restart,
            Some(Restart::OffChain {
                held: t(3),
                end_time: t(2)
            })
        );
        // Rolling back to the older chain is a chain change.
        let st = state(5, 6, &[]);
        let d = decided(Some(&st), &c, t(3), &PathFilter::all(), false);
        assert!(matches!(d.restart, Some(Restart::OtherChain { .. })));
        assert_eq!(d.end_time, t(3));
    }

    #[test]
    fn time_before_every_backup_takes_the_first_full() {
        let c = two_chains();
        let d = decided(None, &c, 0, &PathFilter::all(), true);
        assert_eq!(steps(&d), [(t(1), Fresh)]);
    }

    #[test]
    fn a_path_change_replaces() {
        let c = two_chains();
        let st = state(5, 6, &["a"]);
        let d = decided(Some(&st), &c, t(30), &paths(&["a", "b"]), false);
        assert_eq!(steps(&d), [(t(5), Replace), (t(6), Update)]);
        assert_eq!(
            d.restart,
            Some(Restart::PathsChanged {
                from: vec!["a".into()],
                to: vec!["a".into(), "b".into()]
            })
        );
        // The same paths, spelled in another order, are no change.
        let st = state(5, 5, &["a", "b"]);
        let d = decided(Some(&st), &c, t(30), &paths(&["b", "a/x", "a"]), false);
        assert_eq!(steps(&d), [(t(6), Update)]);
    }

    #[test]
    fn a_never_synced_dest_that_is_not_empty_is_adopted() {
        let c = two_chains();
        let d = decided(None, &c, t(30), &PathFilter::all(), false);
        assert_eq!(steps(&d), [(t(5), Replace), (t(6), Update)]);
        assert_eq!(d.restart, Some(Restart::Adopt));
    }

    #[test]
    fn a_set_removed_from_the_source_takes_dest_off_the_chain() {
        // DEST holds day 3, which the source no longer lists.
        let c = Listing::default().full(1).inc(1, 2).collection();
        let st = state(1, 3, &[]);
        let d = decided(Some(&st), &c, t(30), &PathFilter::all(), false);
        assert_eq!(steps(&d), [(t(1), Replace), (t(2), Update)]);
        assert!(matches!(d.restart, Some(Restart::OffChain { .. })));
        // verify asks about the state itself: the same answer.
        let d = decided(Some(&st), &c, st.end_time, &PathFilter::all(), false);
        assert!(d.restart.is_some());
    }

    #[test]
    fn incomplete_and_orphaned_sets_are_never_applied() {
        // day 3 has no manifest (a backup in progress); day 7..8 links to no chain.
        let c = Listing::default()
            .full(1)
            .inc(1, 2)
            .no_manifest(2, 3)
            .inc(7, 8)
            .collection();
        assert_eq!((c.incomplete.len(), c.orphans.len()), (1, 1));
        let d = decided(None, &c, t(30), &PathFilter::all(), true);
        assert_eq!(steps(&d), [(t(1), Fresh), (t(2), Update)]);
        let st = state(1, 2, &[]);
        assert!(decided(Some(&st), &c, t(30), &PathFilter::all(), false).is_up_to_date());
    }

    #[test]
    fn no_complete_backup_is_no_decision() {
        let empty = Collection::default();
        assert!(decide(None, &empty, t(1), &PathFilter::all(), true)
            .unwrap()
            .is_none());
        let in_progress = Listing::default().no_manifest(1, 2).collection();
        assert!(decide(None, &in_progress, t(9), &PathFilter::all(), true)
            .unwrap()
            .is_none());
    }
}
