//! Rollback protection: a host never goes back to an older backup unless its admin asks.
//!
//! A server (or anyone on the network path) that hides the newest sets makes the latest
//! backup it offers an older one, and every set of that older backup is validly signed.
//! So the state keeps a high-water mark, the newest backup DEST was ever brought to:
//!
//! ```text
//! sync without --time:
//!     target = the backup the source offers now (latest chain, up to now)
//!     if target is older than the mark: refuse (Error::Rollback), DEST untouched
//!     after each set: mark = max(mark, set)      reached_at = now when the mark rises
//! sync with --time T:  the admin's explicit choice; the mark becomes the set applied,
//!                      lower or not, so a bad backup can be left behind on purpose
//! status --dest:       frozen_seconds = now - mark.reached_at while the source offers
//!                      nothing newer than the mark (a monitor alerts when that outgrows
//!                      the backup interval: a server that stops showing new sets)
//! ```
//!
//! A state written before the mark existed uses its `end_time` in its place. The mark
//! survives a DEST that was deleted (the next sync rebuilds it, but not from an older
//! backup); deleting the state directory forgets it, like everything else dupmirror knows.
//!
//! Limits: the mark knows backups by the times in their names. A manifest records no time,
//! so an old set renamed to a new time passes for new unless its files carry signatures
//! made before that time (see `decode::crypto`, checked with `--sign-key`); without
//! signatures nothing can tell. A freeze is only visible against this host's clock.

use crate::dest::state::{HighWater, MirrorState};
use crate::error::Error;
use crate::repo::time::{format_iso, Epoch};
use anyhow::Result;

/// The mark a state carries, or stands for.
pub fn high_water(state: &MirrorState) -> HighWater {
    state.newest.unwrap_or(HighWater {
        end_time: state.end_time,
        reached_at: 0,
    })
}

/// Refuses a sync without `--time` whose target is older than the mark.
pub fn check_target(mark: Option<HighWater>, target: Epoch, explicit_time: bool) -> Result<()> {
    let Some(mark) = mark else {
        return Ok(());
    };
    if !explicit_time && target < mark.end_time {
        return Err(Error::Rollback {
            held: format_iso(mark.end_time),
            offered: format_iso(target),
        }
        .into());
    }
    Ok(())
}

/// The mark after a set ending at `end` is applied, at wall-clock time `now`.
pub fn next_high_water(
    previous: Option<HighWater>,
    end: Epoch,
    explicit_time: bool,
    now: i64,
) -> HighWater {
    match previous {
        Some(p) if p.end_time == end => p,
        Some(p) if p.end_time > end && !explicit_time => p,
        _ => HighWater {
            end_time: end,
            reached_at: now,
        },
    }
}

/// Seconds DEST has been at its mark while the source offers nothing newer (`None`: the
/// source has a newer backup, or the time the mark was reached is unknown).
pub fn frozen_seconds(mark: HighWater, source_latest: Option<Epoch>, now: i64) -> Option<i64> {
    let newer_offered = source_latest.is_some_and(|t| t > mark.end_time);
    (!newer_offered && mark.reached_at > 0).then(|| (now - mark.reached_at).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn state(end: Epoch, newest: Option<HighWater>) -> MirrorState {
        let s = MirrorState::new("src".into(), 100, end, PathBuf::from("/d"), vec![]);
        match newest {
            Some(n) => s.with_newest(n),
            None => s,
        }
    }

    fn mark(end_time: Epoch, reached_at: i64) -> HighWater {
        HighWater {
            end_time,
            reached_at,
        }
    }

    #[test]
    fn an_older_target_is_refused_without_time() {
        let m = Some(high_water(&state(200, Some(mark(300, 5)))));
        assert!(check_target(None, 1, false).is_ok());
        assert!(check_target(m, 300, false).is_ok());
        assert!(check_target(m, 400, false).is_ok());
        let e = check_target(m, 250, false).unwrap_err().to_string();
        assert!(
            e.contains("refusing to take DEST back") && e.contains("--time"),
            "{e}"
        );
        assert!(check_target(m, 250, true).is_ok());
        // An old state without a mark: its end time is the mark.
        let old = Some(high_water(&state(200, None)));
        assert!(check_target(old, 150, false).is_err());
    }

    #[test]
    fn the_mark_rises_and_only_time_lowers_it() {
        assert_eq!(next_high_water(None, 10, false, 7), mark(10, 7));
        assert_eq!(
            next_high_water(Some(mark(10, 7)), 10, false, 9),
            mark(10, 7)
        );
        assert_eq!(
            next_high_water(Some(mark(10, 7)), 20, false, 9),
            mark(20, 9)
        );
        assert_eq!(
            next_high_water(Some(mark(20, 9)), 10, false, 11),
            mark(20, 9)
        );
        assert_eq!(
            next_high_water(Some(mark(20, 9)), 10, true, 11),
            mark(10, 11)
        );
    }

    #[test]
    fn frozen_while_nothing_newer_is_offered() {
        let m = mark(100, 1000);
        assert_eq!(frozen_seconds(m, Some(100), 1600), Some(600));
        assert_eq!(frozen_seconds(m, Some(90), 1600), Some(600));
        assert_eq!(frozen_seconds(m, None, 1600), Some(600));
        assert_eq!(frozen_seconds(m, Some(101), 1600), None);
        assert_eq!(frozen_seconds(mark(100, 0), Some(100), 1600), None);
    }
}
