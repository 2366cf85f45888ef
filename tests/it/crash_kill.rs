//! Crash safety, proven by killing (issue 6, point 1).
//!
//! Upstream duplicity writes a small chain (a multi-volume full, three incrementals with
//! content, type, permission and deletion changes, then a new full chain with an
//! incremental). For each of four transitions (a first sync, one incremental, a catch-up over
//! two incrementals, a switch to the new full chain and its incremental; the last two are
//! merged catch-ups, one commit each) a census run lists every file-system-changing syscall
//! dupmirror makes
//! (tests/it/support/strace.rs); then, for points spread over that list and over every phase,
//! the host is reset, `dupmirror sync` is SIGKILLed on entering that syscall, and:
//!
//! 1. a `sync --dry-run` (which finishes or rolls back an interrupted commit and changes
//!    nothing else) must leave DEST exactly equal to `duplicity restore` at the time the
//!    state records (the previous backup or the target: every transition is one commit, so
//!    never a set in between, nor a mixture), with no journal or staging left behind;
//! 2. a normal `sync` must then bring DEST to exactly the oracle tree of the target time.
//!
//! The normal suite tries about a dozen points per transition (`DUPMIRROR_KILL_POINTS`
//! overrides: a number per transition, or `all`); scripts/crash-soak.sh runs the long form.

use crate::support::lab::{copy_tree, restore_host};
use crate::support::scenario::{back_up_with_oracles, full, inc, Step};
use crate::support::strace;
use crate::support::*;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

/// A chain that exercises every kind of change, backed up by upstream; returns the oracle
/// tree of every backup time.
fn build_chain(lab: &mut Lab) -> Vec<(i64, Tree)> {
    back_up_with_oracles(lab, &chain())
}

fn chain<'a>() -> Vec<Step<'a>> {
    vec![
        full(|fs| {
            for n in ["a", "b", "c", "d", "e"] {
                fs.write(format!("docs/{n}.txt"), format!("doc {n}\n").as_bytes());
            }
            for i in 1..=8 {
                fs.write(
                    format!("src/mod/x{i}.rs"),
                    format!("fn x{i}() {{}}\n").as_bytes(),
                );
            }
            fs.write("big.bin", &random_bytes(1, 1_500_000));
            fs.symlink("link", "docs/a.txt");
            fs.symlink("dirlink", "src");
            fs.fifo("pipe");
            fs.write("mode", b"private\n");
            fs.chmod("mode", 0o600);
            fs.write("ro/inside", b"read-only dir\n");
            fs.chmod("ro", 0o555);
            fs.mkdir("empty");
        }),
        inc(|fs| {
            fs.write("docs/a.txt", b"doc a, changed\n");
            let mut big = random_bytes(1, 1_500_000);
            big.extend_from_slice(b"appended");
            fs.write("big.bin", &big);
            fs.remove("docs/b.txt");
            fs.write("new/deep/n.txt", b"new\n");
            fs.chmod("mode", 0o640);
            fs.remove("src/mod/x1.rs");
            fs.write("src/mod/x1.rs/now_a_dir", b"file became dir\n");
            fs.remove("dirlink");
            fs.write("dirlink/real", b"symlink became dir\n");
        }),
        inc(|fs| {
            fs.remove("src");
            // A directory with contents becomes a symlink (its old subdirectories still get
            // journal lines: see apply::journal::below_real_dirs).
            fs.write("new/deep/sub/s.txt", b"gone soon\n");
            fs.remove("new/deep");
            fs.symlink("new/deep", "../docs");
            for i in 0..20 {
                fs.write(format!("many/f{i:02}"), format!("many {i}\n").as_bytes());
            }
            let mut big = random_bytes(1, 1_500_000);
            big[700_000] ^= 1;
            fs.write("big.bin", &big);
        }),
        inc(|fs| {
            fs.touch("docs/c.txt", t(3) - 5000);
            fs.chmod("new", 0o700);
            fs.write("docs/d.txt", b"");
            fs.symlink("link", "docs/c.txt");
        }),
        full(|fs| {
            fs.remove("many");
            fs.write("docs/e.txt", b"doc e in the new chain\n");
            fs.write("chain2/only", b"new chain\n");
            fs.remove("pipe");
        }),
        inc(|fs| {
            fs.write(
                "chain2/only",
                b"new chain, changed
",
            );
            fs.remove("docs/e.txt");
            fs.write(
                "docs/e.txt/now_a_dir",
                b"file became dir
",
            );
        }),
    ]
}

struct Case {
    what: &'static str,
    /// The state the host starts from (None: never synced).
    from: Option<usize>,
    /// The backup it syncs to (an index into the oracles).
    to: usize,
}

#[derive(Default)]
struct Tally {
    tried: usize,
    killed: usize,
    not_reached: usize,
    at_from: usize,
    at_target: usize,
    by_phase: BTreeMap<&'static str, usize>,
}

/// Where one case runs: its own host, so cases can run in parallel.
struct Bench<'a> {
    repo: &'a Path,
    dup_label: String,
    host: Host,
    template: PathBuf,
}

fn run_case(strace: &Path, bench: Bench<'_>, oracles: &[(i64, Tree)], case: &Case) -> Tally {
    let Bench {
        repo,
        dup_label,
        host,
        template,
    } = bench;
    let label = format!("{} [{dup_label}]", case.what);
    if let Some(from) = case.from {
        host.sync(repo, &["--time", &oracles[from].0.to_string()])
            .assert_ok(&format!("{label}: preparing the host"));
    }
    copy_tree(&host.dir, &template);
    let (target_time, target_tree) = &oracles[case.to];
    let target_arg = target_time.to_string();
    let args = host.args("sync", repo, &["--time", &target_arg]);

    let (census_run, all) = strace::census(strace, &args, &host, repo);
    census_run.assert_ok(&format!("{label}: census run"));
    target_tree.assert_same(
        &host.tree(),
        Compare::default(),
        &format!("{label}: census run"),
    );
    let points = strace::spread(&all, strace::points_wanted(10));

    let mut tally = Tally::default();
    // One commit per transition: DEST is at the previous backup or the target, never at a
    // set in between.
    let allowed: Vec<usize> = case.from.into_iter().chain([case.to]).collect();
    for (i, point) in points.iter().enumerate() {
        let ctx = point.context(&label, i, points.len());
        restore_host(&template, &host);
        tally.tried += 1;
        *tally.by_phase.entry(point.phase).or_default() += 1;
        let r = strace::kill_at(strace, &args, point);
        if r.status.signal() == Some(9) {
            tally.killed += 1;
        } else {
            // The run took another path than the census (it should not): it must at least
            // have succeeded.
            r.assert_ok(&format!("{ctx}: run not killed"));
            tally.not_reached += 1;
        }
        check_after_kill(repo, oracles, case, &allowed, &host, &ctx, &mut tally);
        host.assert_sync_reaches(
            repo,
            &["--time", &target_arg],
            target_tree,
            &format!("{ctx}: sync after the kill"),
        );
    }
    remove_tree(&template);
    remove_tree(&host.dir);
    eprintln!(
        "crash_kill: {label}: {} syscalls in the census, {} points tried, {} killed, {} not \
         reached; after recovery DEST was at the previous backup {} times and at the target \
         {} times; every final tree equalled the oracle. Points by phase: {:?}",
        all.len(),
        tally.tried,
        tally.killed,
        tally.not_reached,
        tally.at_from,
        tally.at_target,
        tally.by_phase
    );
    tally
}

/// After a kill: recovery alone must leave DEST at exactly one backup's tree.
fn check_after_kill(
    repo: &Path,
    oracles: &[(i64, Tree)],
    case: &Case,
    allowed: &[usize],
    host: &Host,
    ctx: &str,
    tally: &mut Tally,
) {
    let time = oracles[case.to].0.to_string();
    host.sync(repo, &["--dry-run", "--time", &time])
        .assert_ok(&format!("{ctx}: recovery (sync --dry-run)"));
    assert_eq!(
        host.state_leftovers(),
        Vec::<String>::new(),
        "{ctx}: journal or staging left after recovery"
    );
    match host.state_end_time() {
        None => {
            assert!(case.from.is_none(), "{ctx}: the state vanished");
            assert_dest_unchanged(&None, &host.tree_opt(), &format!("{ctx}: no state"));
            tally.at_from += 1;
        }
        Some(end) => {
            let k = allowed
                .iter()
                .copied()
                .find(|&k| oracles[k].0 == end)
                .unwrap_or_else(|| {
                    panic!("{ctx}: the state records {end}: neither the previous backup nor the target")
                });
            oracles[k].1.assert_same(
                &host.tree(),
                Compare::default(),
                &format!("{ctx}: DEST after recovery, state at {end}"),
            );
            if Some(k) == case.from {
                tally.at_from += 1;
            } else {
                tally.at_target += 1;
            }
        }
    }
}

#[test]
fn sigkill_at_any_point_leaves_one_backup_or_the_other() {
    let Some(strace) = strace::find() else {
        return;
    };
    let versions: Vec<Version> = match std::env::var("DUPMIRROR_KILL_DUPLICITY").as_deref() {
        Ok("3") => vec![Version::V3],
        Ok("both") => Version::ALL.to_vec(),
        _ => vec![Version::V08],
    };
    let cases = [
        Case {
            what: "first sync",
            from: None,
            to: 0,
        },
        Case {
            what: "one incremental",
            from: Some(0),
            to: 1,
        },
        Case {
            what: "catch-up over two incrementals (merged)",
            from: Some(1),
            to: 3,
        },
        Case {
            what: "new full chain and its incremental (merged)",
            from: Some(3),
            to: 5,
        },
    ];
    let mut total = Tally::default();
    for v in versions {
        let Some(dup) = duplicity(v) else {
            continue;
        };
        let mut lab = Lab::new(dup).backup_opts(&["--volsize", "1"]);
        let oracles = build_chain(&mut lab);
        let benches: Vec<Bench> = cases
            .iter()
            .map(|_| Bench {
                repo: &lab.repo,
                dup_label: lab.dup.label(),
                host: lab.host("k"),
                template: lab.fresh("tmpl"),
            })
            .collect();
        // Two cases at a time: the machine has two cores.
        let tallies: Vec<Tally> = std::thread::scope(|scope| {
            let mut handles = Vec::new();
            let mut it = benches.into_iter().zip(&cases);
            let mut out = Vec::new();
            loop {
                for (bench, case) in it.by_ref().take(2) {
                    let (strace, oracles) = (&strace, &oracles);
                    handles.push(scope.spawn(move || run_case(strace, bench, oracles, case)));
                }
                if handles.is_empty() {
                    break out;
                }
                for h in handles.drain(..) {
                    match h.join() {
                        Ok(t) => out.push(t),
                        Err(e) => std::panic::resume_unwind(e),
                    }
                }
            }
        });
        for t in tallies {
            total.tried += t.tried;
            total.killed += t.killed;
            total.not_reached += t.not_reached;
        }
    }
    eprintln!(
        "crash_kill: total {} kill points tried, {} killed, {} not reached, all recovered",
        total.tried, total.killed, total.not_reached
    );
    if total.tried > 0 {
        assert!(
            total.killed * 10 >= total.tried * 9,
            "most kill points must be reached (deterministic census)"
        );
    }
}
