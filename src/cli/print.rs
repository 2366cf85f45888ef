//! The human form of each command's report on stdout (with `--json` the report itself is
//! printed, by [`print_json`]), and the line `run` logs per mirror.

use anyhow::Result;
use dupmirror::commands::atomic::{Action, AtomicOutcome, Conversion};
use dupmirror::commands::{status, sync, verify};
use dupmirror::decode::crypto::GpgSignatureTally;
use dupmirror::fleet::job::JobReport;
use dupmirror::fleet::status::MirrorStatus;
use dupmirror::log::Logger;
use std::io::Write;

fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// A span of seconds in the largest unit that fits: `45 s`, `12 min`, `5.5 h`, `3.2 days`.
fn human_duration(secs: i64) -> String {
    let s = secs as f64;
    if secs < 120 {
        format!("{secs} s")
    } else if secs < 7200 {
        format!("{:.0} min", s / 60.0)
    } else if secs < 172_800 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} days", s / 86400.0)
    }
}

/// How many differing paths a human report lists.
const LISTED_PATHS: usize = 20;

fn print_gpg_signatures(t: &GpgSignatureTally) {
    let mut parts = vec![format!("{} signed", t.signed)];
    if t.unsigned > 0 {
        parts.push(format!("{} unsigned", t.unsigned));
    }
    if t.unchecked > 0 {
        parts.push(format!(
            "{} with a signature gpg could not check",
            t.unchecked
        ));
    }
    print!(
        "signatures: {} encrypted file(s) read, {}",
        t.encrypted_files,
        parts.join(", ")
    );
    if !t.signers.is_empty() {
        let signers: Vec<&str> = t.signers.iter().map(String::as_str).collect();
        print!(" (by {})", signers.join(", "));
    }
    println!();
}

/// The atomic layout's part of a sync report, before the rest; `false` when nothing else
/// is to be said (deferred).
fn print_atomic(r: &sync::SyncReport, a: &AtomicOutcome) -> bool {
    if let Some(what) = &a.layout_recovered {
        println!("{what} (left by an interrupted run)");
    }
    let would = if r.dry_run { "would be" } else { "was" };
    match a.converted {
        Some(Conversion::ToAtomic) => println!(
            "DEST {would} converted to the atomic layout: its tree moved beside it, nothing \
             downloaded"
        ),
        Some(Conversion::ToInPlace) => println!(
            "DEST {would} converted back to a plain folder: its live tree, the standby removed"
        ),
        None => {}
    }
    let Some(view) = &a.layout else {
        return true;
    };
    if a.action == Action::Deferred {
        let idle = view.standby_idle_seconds.unwrap_or(0);
        println!(
            "deferred: {} is waiting, but the standby tree {} left service {} ago, less than \
             --grace {}; DEST is unchanged at {} (a later run applies it)",
            r.to,
            view.live.other().name(),
            human_duration(idle),
            human_duration(a.grace_seconds.ceil() as i64),
            r.from.as_deref().unwrap_or("nothing")
        );
        return false;
    }
    true
}

/// The switch, after the sets applied to the standby.
fn print_switch(r: &sync::SyncReport, a: &AtomicOutcome) {
    let Some(view) = &a.layout else {
        return;
    };
    let standby = view.standby_holds.as_deref().unwrap_or("nothing yet");
    match a.action {
        Action::Switched => println!(
            "switched DEST to tree {} ({}); tree {}, now the standby, holds {standby}",
            view.live.name(),
            r.to,
            view.live.other().name()
        ),
        Action::WouldSwitch => println!(
            "dry run: tree {} would be brought to {} and DEST switched to it",
            view.live.other().name(),
            r.to
        ),
        Action::UpToDate => println!(
            "DEST points to tree {}; tree {} (the standby) holds {standby}",
            view.live.name(),
            view.live.other().name()
        ),
        _ => {}
    }
}

pub fn print_sync(r: &sync::SyncReport) {
    if let Some(a) = &r.atomic {
        if !print_atomic(r, a) {
            return;
        }
    }
    print_sync_sets(r);
    if let Some(a) = &r.atomic {
        print_switch(r, a);
    }
}

fn print_sync_sets(r: &sync::SyncReport) {
    if let Some(t) = &r.recovered {
        println!("completed an interrupted commit: DEST was brought to {t}");
    }
    if let Some(t) = &r.discarded {
        println!("dropped an interrupted commit (to {t}) made for a folder that is no longer DEST");
    }
    let replaced = r.recovered_replaced.iter().chain(
        r.sets
            .iter()
            .flat_map(|s| s.applied.iter().flat_map(|a| &a.replaced)),
    );
    for path in replaced {
        println!(
            "  {path}: replaced by a folder, as the committed set requires (it was changed \
             after the commit point); `dupmirror verify --repair` restores what it held"
        );
    }
    if r.up_to_date {
        println!(
            "{} is up to date at {} (nothing new in {}; checked in {:.2}s)",
            r.dest.display(),
            r.to,
            r.source,
            r.seconds
        );
        return;
    }
    if let Some(why) = &r.restart_reason {
        println!("starting from a full set: {why}");
    }
    let verb = if r.dry_run { "would apply" } else { "applied" };
    for s in &r.sets {
        for d in s.differences.iter().take(LISTED_PATHS) {
            println!("  {}: {}", d.path, d.what);
        }
        if s.differences.len() > LISTED_PATHS {
            println!(
                "  ... and {} more (--json lists all)",
                s.differences.len() - LISTED_PATHS
            );
        }
        print!(
            "{verb} {} ({:?}): {} of {} volume(s), {}",
            s.set,
            s.mode,
            s.volumes,
            s.volumes_in_set,
            human_bytes(s.bytes)
        );
        if let Some(a) = &s.applied {
            print!(
                "; {} written, {} patched, {} dirs, {} other, {} removed, {} attributes fixed",
                a.files_written, a.files_patched, a.dirs, a.specials, a.removed, a.attrs_fixed
            );
        }
        if let Some(r) = &s.repaired {
            print!(
                "; repaired {} drifted path(s) from {} volume(s)",
                r.paths, r.volumes_read
            );
        }
        println!();
    }
    if let Some(m) = &r.merged {
        println!(
            "merged {} sets into one commit: {} write(s) saved, {} of staged files never moved \
             into DEST",
            m.sets,
            m.writes_saved,
            human_bytes(m.bytes_saved)
        );
    }
    let from = r.from.as_deref().unwrap_or("empty");
    if r.dry_run {
        println!(
            "dry run: {} would go from {from} to {}; nothing was changed",
            r.dest.display(),
            r.to
        );
    } else {
        println!(
            "{} went from {from} to {} in {:.2}s ({} read)",
            r.dest.display(),
            r.to,
            r.seconds,
            human_bytes(r.bytes_read)
        );
        print_transfer(r);
    }
    if let Some(t) = &r.signatures {
        print_gpg_signatures(t);
    }
}

/// The accounting of a remote sync: what crossed the network, and where the time went.
fn print_transfer(r: &sync::SyncReport) {
    if r.sources.len() > 1 {
        let each: Vec<String> = r
            .sources
            .iter()
            .map(|s| {
                format!(
                    "{} ({}, served {} file(s), {})",
                    s.source,
                    s.role.name(),
                    s.served.files.len(),
                    human_bytes(s.served.bytes)
                )
            })
            .collect();
        println!("sources: {}", each.join("; "));
    }
    let t = &r.transfer;
    if t.listings == 0 {
        return; // a local source: read in place
    }
    println!(
        "downloaded {} in {} file(s): {} resumed, {} fetched again, {} retries",
        human_bytes(t.bytes_downloaded),
        t.files_fetched,
        human_bytes(t.bytes_resumed),
        human_bytes(t.bytes_refetched),
        t.retries
    );
    let p = &r.phases;
    println!(
        "time: listing {:.2}s, manifests {:.2}s, applying {:.2}s ({:.2}s of it waiting for \
         downloads); downloads took {:.2}s, alongside the applying",
        p.list_seconds,
        p.plan_seconds,
        p.apply_seconds,
        p.fetch.wait_seconds,
        p.fetch.download_seconds
    );
}

pub fn print_status(r: &status::StatusReport) {
    println!("source: {}", r.source);
    if let Some(p) = &r.prefix {
        println!("file prefix: {p:?}");
    }
    for (i, c) in r.chains.iter().enumerate() {
        println!("chain {} ({} .. {}):", i + 1, c.start_time, c.end_time);
        for s in &c.sets {
            println!(
                "  {:4} {}  {:>4} volume(s) {:>10}{}",
                s.kind,
                s.end_time,
                s.volumes,
                human_bytes(s.bytes),
                if s.signatures {
                    ""
                } else {
                    "  (no signature file)"
                }
            );
        }
    }
    if r.chains.is_empty() {
        println!("no complete backup chain");
    }
    for s in &r.orphans {
        println!(
            "orphaned incremental {} -> {} (links to no chain)",
            s.start_time.as_deref().unwrap_or("?"),
            s.end_time
        );
    }
    for s in &r.incomplete {
        println!(
            "incomplete set {} {} (no manifest: in progress or interrupted; ignored)",
            s.kind, s.end_time
        );
    }
    for f in &r.partial_files {
        println!("partial file {f} (ignored)");
    }
    if let Some(d) = &r.dest {
        match &d.holds {
            Some(t) => println!("DEST {} holds {t}", d.dest.display()),
            None => println!(
                "DEST {} holds no synced state (never synced, or removed)",
                d.dest.display()
            ),
        }
        if let Some(v) = &d.atomic {
            println!(
                "atomic layout: DEST points to tree {}; the standby tree {} holds {}{}",
                v.live.name(),
                v.live.other().name(),
                v.standby_holds.as_deref().unwrap_or("nothing yet"),
                v.standby_idle_seconds
                    .map(|s| format!(", out of service for {}", human_duration(s)))
                    .unwrap_or_default()
            );
        }
        if let Some(newest) = &d.newest_applied {
            let since = d
                .newest_applied_at
                .as_ref()
                .map(|t| format!(", first reached at {t}"))
                .unwrap_or_default();
            println!("the newest backup DEST was brought to is {newest}{since}");
        }
        if d.source_behind {
            println!(
                "warning: the source offers only older backups than that: its newer sets \
                 were removed or are hidden"
            );
        } else if let Some(s) = d.frozen_seconds {
            println!(
                "the source has offered nothing newer for {}",
                human_duration(s)
            );
        }
        let to = d.to.as_deref().unwrap_or("nothing (no complete backup)");
        println!(
            "a sync would apply {} set(s), {} at most, to reach {to}",
            d.pending_sets,
            human_bytes(d.pending_bytes)
        );
        if d.needs_full {
            let why = d.restart_reason.as_deref().unwrap_or("DEST is empty");
            println!("starting from a full set: {why}");
        }
    }
}

pub fn print_verify(r: &verify::VerifyReport) {
    for d in &r.differences {
        println!("{}: {}", d.path, d.what);
    }
    println!(
        "checked {} paths ({} files, {} hashed) against the backup at {} in {:.2}s: {} difference(s)",
        r.compare.paths_checked,
        r.compare.files_hashed,
        human_bytes(r.compare.bytes_hashed),
        r.state,
        r.seconds,
        r.differences.len()
    );
    if let Some(rep) = &r.repaired {
        println!(
            "repaired: read {} volume(s), {}",
            rep.volumes_read,
            human_bytes(rep.bytes_read)
        );
    }
    if let Some(rem) = &r.remaining {
        for d in rem {
            println!("still different: {}: {}", d.path, d.what);
        }
        if rem.is_empty() {
            println!("DEST now matches the backup at {}", r.state);
        }
    }
    if let Some(a) = &r.atomic {
        print_verify_atomic(a);
    }
}

fn print_verify_atomic(a: &AtomicOutcome) {
    if let Some(what) = &a.layout_recovered {
        println!("{what} (left by an interrupted run)");
    }
    let Some(view) = &a.layout else {
        return;
    };
    let standby = view.standby_holds.as_deref().unwrap_or("nothing yet");
    match a.action {
        Action::Switched => println!(
            "repaired by way of the standby: DEST now points to tree {}; tree {} (the damaged \
             one) is repaired by the next sync before it serves again",
            view.live.name(),
            view.live.other().name()
        ),
        Action::Deferred => println!(
            "repair deferred: the standby tree {} left service {} ago, less than --grace {}; \
             the live tree is never written",
            view.live.other().name(),
            human_duration(view.standby_idle_seconds.unwrap_or(0)),
            human_duration(a.grace_seconds.ceil() as i64)
        ),
        _ => println!(
            "checked the live tree {}; the standby tree {} holds {standby}",
            view.live.name(),
            view.live.other().name()
        ),
    }
}

pub fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// The line `run` logs when a mirror finishes.
pub fn log_outcome(log: &Logger, r: &JobReport) {
    match (&r.error, &r.sync) {
        (Some(e), _) => log.error(&format!("{e} (exit status {})", r.exit_status)),
        (None, Some(s)) if s.up_to_date => log.info(&format!("up to date at {}", s.to)),
        (None, Some(s))
            if s.atomic
                .as_ref()
                .is_some_and(|a| a.action == Action::Deferred) =>
        {
            log.info(&format!(
                "deferred: {} waits for the standby tree's --grace; DEST unchanged at {}",
                s.to,
                s.from.as_deref().unwrap_or("nothing")
            ))
        }
        (None, Some(s)) => log.info(&format!(
            "synced from {} to {}: {} set(s), {} read{}",
            s.from.as_deref().unwrap_or("empty"),
            s.to,
            s.sets.len(),
            human_bytes(s.bytes_read),
            r.changed
                .map(|n| format!(", {n} path(s) changed"))
                .unwrap_or_default()
        )),
        (None, None) => {}
    }
}

pub fn print_mirror_status(s: &MirrorStatus) {
    let lag = match s.lag_seconds {
        Some(l) => format!("{l}s"),
        None => "?".into(),
    };
    let last = match (&s.last_run, s.last_run_ok) {
        (Some(t), Some(true)) => format!("ok at {t}"),
        (Some(t), _) => format!(
            "FAILED at {t} (exit status {}): {}",
            s.last_exit_status.unwrap_or(1),
            s.last_error.as_deref().unwrap_or("")
        ),
        (None, _) => "never run".into(),
    };
    let skipped: String = s
        .skipped()
        .map(|(source, why)| format!("; source {source} {why}"))
        .collect();
    println!(
        "{}: holds {}, source has {}{}, lag {lag}{skipped}; last run {last}",
        s.mirror,
        s.holds.as_deref().unwrap_or("nothing"),
        s.latest.as_deref().unwrap_or("?"),
        if s.source_error.is_some() {
            " (last seen; source unreachable now)"
        } else {
            ""
        }
    );
}
