//! The atomic layout (issue 14): `sync --atomic` keeps DEST a symlink to one of two complete
//! trees and switches it in one rename.
//!
//! * The reader test: a thread walks DEST in a loop (resolving the link once per pass,
//!   hashing every file) while dupmirror applies 21 backups written by upstream duplicity;
//!   every tree it sees is compared with the `duplicity restore` oracle trees. In the atomic
//!   mode every pass that ends within `--grace` must equal one of them; the same reader on
//!   the in-place mode must see at least one mixture (or a pass torn by a vanishing file):
//!   the test is known to have teeth. Each backup rewrites all 100 files, so a pass that
//!   overlaps an in-place commit sees some files of one backup and some of the next.
//! * Kill points (the strace census harness) during a bootstrap, a switch, and both
//!   conversions: right after the kill DEST must resolve to a complete oracle tree (or be
//!   missing before a bootstrap's first link), and the next run must reach the target.
//! * Grace, conversions without downloading a volume, verify / --repair / status / dry run
//!   / JSON in the atomic layout, and a foreign link refused.

use crate::support::scenario::{back_up, back_up_with_oracles, full, inc, Step};
use crate::support::strace;
use crate::support::tree::fnv1a64;
use crate::support::*;

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What a reader sees of a tree: for each path, its kind and content hash or link target.
type Seen = BTreeMap<Vec<u8>, (Kind, Option<u64>, Option<Vec<u8>>)>;

fn seen_of(tree: &Tree) -> Seen {
    tree.nodes
        .iter()
        .filter(|(p, _)| p.as_slice() != b".")
        .map(|(p, n)| (p.clone(), (n.kind, n.fnv, n.target.clone())))
        .collect()
}

/// A reader's pass: every path below `root`, files hashed. Any error (a file that vanished
/// between listing and reading) fails the pass: it saw no consistent tree.
fn walk(root: &Path) -> std::io::Result<Seen> {
    let mut seen = Seen::new();
    let mut stack = vec![(Vec::new(), root.to_path_buf())];
    while let Some((rel, dir)) = stack.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let mut r = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(entry.file_name().as_bytes());
            let path = entry.path();
            let ft = fs::symlink_metadata(&path)?.file_type();
            let node = if ft.is_dir() {
                stack.push((r.clone(), path));
                (Kind::Dir, None, None)
            } else if ft.is_symlink() {
                let target = fs::read_link(&path)?.as_os_str().as_bytes().to_vec();
                (Kind::Symlink, None, Some(target))
            } else if ft.is_fifo() {
                (Kind::Fifo, None, None)
            } else {
                (Kind::File, Some(fnv1a64(&fs::read(&path)?)), None)
            };
            seen.insert(r, node);
        }
    }
    Ok(seen)
}

#[derive(Default, Debug)]
struct Observations {
    passes: usize,
    /// Passes equal to an oracle tree, and which ones were seen.
    whole: usize,
    backups_seen: BTreeSet<usize>,
    /// Passes that equal no oracle tree, or failed (a path vanished under the reader).
    mixtures: usize,
    torn: usize,
    /// Atomic mode: passes longer than --grace (not judged: the guarantee is for readers
    /// done within the grace).
    slow: usize,
}

/// Walks DEST until `stop`; with `link`, resolves DEST's symlink once per pass and walks
/// the tree it names.
fn read_in_a_loop(
    dest: &Path,
    link: bool,
    oracles: &[Seen],
    stop: &AtomicBool,
    limit: Duration,
) -> Observations {
    let mut obs = Observations::default();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let root = if link {
            match fs::read_link(dest) {
                Ok(target) => dest.parent().unwrap().join(target),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
            }
        } else if dest.is_dir() {
            dest.to_path_buf()
        } else {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        let pass = walk(&root);
        obs.passes += 1;
        std::thread::sleep(Duration::from_millis(1)); // leave the writer some CPU
        if link && started.elapsed() >= limit {
            obs.slow += 1;
            continue;
        }
        match pass {
            Ok(seen) if seen.is_empty() => {} // before the first backup landed
            Ok(seen) => match oracles.iter().position(|o| *o == seen) {
                Some(k) => {
                    obs.whole += 1;
                    obs.backups_seen.insert(k);
                }
                None => obs.mixtures += 1,
            },
            Err(_) => obs.torn += 1,
        }
    }
    obs
}

const READER_BACKUPS: usize = 21;
const READER_FILES: usize = 100;

fn reader_chain<'a>() -> Vec<Step<'a>> {
    (0..READER_BACKUPS)
        .map(|k| {
            let change = move |fs: &Fs| {
                for i in 0..READER_FILES {
                    // Every file changes in every backup; a few come and go.
                    if k % 4 == 3 && i % 50 == 7 {
                        fs.remove(format!("d{}/f{i:03}", i % 5));
                    } else {
                        fs.write(
                            format!("d{}/f{i:03}", i % 5),
                            format!("backup {k} file {i}\n").as_bytes(),
                        );
                    }
                }
            };
            if k == 0 {
                full(change)
            } else {
                inc(change)
            }
        })
        .collect()
}

/// Applies every backup in turn to `host` while a reader loops over DEST.
fn observe(
    lab: &Lab,
    times: &[i64],
    oracles: &[Seen],
    atomic: bool,
    grace: Duration,
) -> Observations {
    let host = lab.host(if atomic { "atomic" } else { "inplace" });
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| read_in_a_loop(&host.dest, atomic, oracles, &stop, grace));
        for (k, time) in times.iter().enumerate() {
            let time = time.to_string();
            let mut args = vec!["--time", &time, "--json", "--no-fsync"];
            let grace_arg = format!("{}s", grace.as_secs_f64());
            if atomic {
                args.extend(["--atomic", "--grace", &grace_arg]);
            }
            loop {
                let run = host.sync(&lab.repo, &args);
                run.assert_ok(&format!("backup {k}"));
                let report: Value = report::of(&run);
                if report["atomic"]["action"] != "deferred" {
                    break;
                }
                std::thread::sleep(grace / 4);
            }
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap()
    })
}

#[test]
fn a_reader_never_sees_a_mixture_in_the_atomic_mode() {
    let Some(dup) = duplicity(Version::V08) else {
        return;
    };
    let started = Instant::now();
    let mut lab = Lab::new(dup);
    let times: Vec<i64> = reader_chain()
        .iter()
        .enumerate()
        .map(|(k, step)| back_up(&mut lab, k, step))
        .collect();
    let oracles: Vec<Seen> = times.iter().map(|&t| seen_of(&lab.restore(t))).collect();
    let upstream = started.elapsed().as_secs_f64();
    let in_place = observe(&lab, &times, &oracles, false, Duration::ZERO);
    let atomic = observe(&lab, &times, &oracles, true, Duration::from_millis(300));
    eprintln!(
        "atomic reader: {} backups applied; in place: {in_place:?}; atomic: {atomic:?}; \
         {upstream:.1}s of backups and oracles, {:.1}s of syncing under the reader",
        times.len(),
        started.elapsed().as_secs_f64() - upstream
    );
    assert_eq!(
        (atomic.mixtures, atomic.torn),
        (0, 0),
        "atomic mode: a reader saw a tree that is no backup"
    );
    assert!(
        atomic.whole >= 10 && atomic.backups_seen.len() >= 5,
        "atomic mode: the reader judged too few passes to mean anything: {atomic:?}"
    );
    assert!(
        in_place.mixtures + in_place.torn > 0,
        "in place: the reader never saw a mixture, so this test would not catch one: \
         {in_place:?}"
    );
}

// ------------------------------------------------------------------------------------------
// A small chain for the kill points and the command tests.

fn small_chain<'a>() -> Vec<Step<'a>> {
    vec![
        full(|fs| {
            for i in 0..12 {
                fs.write(format!("docs/f{i:02}.txt"), format!("v0 {i}\n").as_bytes());
            }
            fs.write("keep/stable.txt", b"never changes\n");
            fs.write("big.bin", &random_bytes(7, 300_000));
            fs.symlink("link", "docs/f00.txt");
        }),
        inc(|fs| {
            for i in 0..6 {
                fs.write(format!("docs/f{i:02}.txt"), format!("v1 {i}\n").as_bytes());
            }
            fs.remove("docs/f11.txt");
            fs.write("new/n.txt", b"new in 1\n");
            fs.symlink("link", "docs/f01.txt");
        }),
        inc(|fs| {
            fs.write("docs/f00.txt", b"v2\n");
            fs.remove("new");
            fs.write("later.txt", b"added in 2\n");
            let mut big = random_bytes(7, 300_000);
            big[1000] ^= 1;
            fs.write("big.bin", &big);
        }),
    ]
}

fn build(lab: &mut Lab) -> Vec<(i64, Tree)> {
    back_up_with_oracles(lab, &small_chain())
}

/// DEST as a reader sees it (through the link); `None` when it does not resolve.
fn resolved(host: &Host) -> Option<Tree> {
    fs::metadata(&host.dest).ok()?;
    Some(Tree::capture(&host.dest.join(".")))
}

fn is_link(host: &Host) -> bool {
    fs::symlink_metadata(&host.dest).is_ok_and(|m| m.file_type().is_symlink())
}

fn trees_dir(host: &Host) -> PathBuf {
    host.dir.join(".d.dupmirror-trees")
}

/// `sync` with `extra`, --json, succeeding; the report.
fn sync_json(host: &Host, repo: &Path, extra: &[&str], ctx: &str) -> Value {
    let mut args = extra.to_vec();
    args.push("--json");
    let run = host.sync(repo, &args);
    run.assert_ok(ctx);
    report::of(&run)
}

/// A conversion moves trees: its report must show no volume served.
fn assert_no_volume_read(report: &Value, ctx: &str) {
    let volumes: Vec<String> = report["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["served"]["files"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(str::to_string))
        .filter(|f| f.contains("difftar"))
        .collect();
    assert_eq!(volumes, Vec::<String>::new(), "{ctx}: volumes were read");
    assert_eq!(report["bytes_read"], 0, "{ctx}: bytes were read");
}

#[test]
fn grace_conversions_and_the_commands_in_the_atomic_layout() {
    let Some(dup) = duplicity(Version::V08) else {
        return;
    };
    let mut lab = Lab::new(dup);
    let oracles = build(&mut lab);
    let repo = lab.repo.clone();
    let at = |k: usize| oracles[k].0.to_string();
    let host = lab.host("h");
    let same = |k: usize, ctx: &str| {
        oracles[k].1.assert_same(
            &resolved(&host).expect("DEST resolves"),
            Compare::default(),
            ctx,
        )
    };

    // A plain DEST converted: no volume read, DEST a link to tree a.
    host.sync(&repo, &["--time", &at(0)])
        .assert_ok("plain sync");
    let r = sync_json(&host, &repo, &["--atomic", "--time", &at(0)], "convert");
    assert_eq!(r["atomic"]["converted"], "to-atomic", "{r}");
    assert_no_volume_read(&r, "converting");
    assert_eq!(
        fs::read_link(&host.dest).unwrap(),
        Path::new(".d.dupmirror-trees/a")
    );
    same(0, "after converting");

    // The standby never served: no grace; tree b is built and DEST switched to it.
    let r = sync_json(&host, &repo, &["--time", &at(1)], "first switch");
    assert_eq!(r["atomic"]["action"], "switched", "{r}");
    assert_eq!(r["atomic"]["live"], "b", "{r}");
    assert_eq!(r["atomic"]["standby_holds"], iso_time(oracles[0].0), "{r}");
    same(1, "after the first switch");

    // Tree a served a moment ago: deferred, exit 0, DEST unchanged.
    let r = sync_json(&host, &repo, &[], "deferred");
    assert_eq!(r["atomic"]["action"], "deferred", "{r}");
    assert_eq!(r["up_to_date"], false, "{r}");
    assert_eq!(
        fs::read_link(&host.dest).unwrap(),
        Path::new(".d.dupmirror-trees/b")
    );
    same(1, "after a deferred run");
    let text = host
        .sync(&repo, &[])
        .assert_ok("deferred, text")
        .stdout_text();
    assert!(
        text.contains("deferred") && text.contains("--grace"),
        "{text}"
    );

    // A dry run past the grace says what it would do and changes nothing.
    let r = sync_json(&host, &repo, &["--dry-run", "--grace", "0"], "dry run");
    assert_eq!(r["atomic"]["action"], "would-switch", "{r}");
    assert_eq!(r["dry_run"], true, "{r}");
    same(1, "after a dry run");

    // status --dest: the live tree's state and the standby's.
    let run = dupmirror([
        os("status"),
        os(&repo),
        os("--dest"),
        os(&host.dest),
        os("--state-dir"),
        os(&host.state),
        os("--json"),
    ]);
    run.assert_ok("status --dest");
    let st: Value = report::of(&run);
    assert_eq!(st["dest"]["holds"], iso_time(oracles[1].0), "{st}");
    assert_eq!(st["dest"]["atomic"]["live"], "b", "{st}");
    assert_eq!(st["dest"]["pending_sets"], 1, "{st}");

    // verify checks the live tree; --repair never writes it.
    let verify = |extra: &[&str]| {
        let mut a = vec!["--json"];
        a.extend_from_slice(extra);
        host.run("verify", &repo, &a, &[])
    };
    let run = verify(&[]);
    run.assert_ok("verify");
    let v: Value = report::of(&run);
    assert_eq!(v["atomic"]["live"], "b", "{v}");
    assert_eq!(v["atomic"]["standby_holds"], iso_time(oracles[0].0), "{v}");
    let damaged = trees_dir(&host).join("b/keep/stable.txt");
    fs::write(&damaged, b"damaged\n").unwrap();
    let run = verify(&["--repair"]);
    assert_eq!(
        run.status.code(),
        Some(8),
        "repair within the grace: {}",
        run.stderr
    );
    let v: Value = report::of(&run);
    assert_eq!(v["atomic"]["action"], "deferred", "{v}");
    assert_eq!(
        fs::read(&damaged).unwrap(),
        b"damaged\n",
        "the live tree was written"
    );
    let run = verify(&["--repair", "--grace", "0"]);
    run.assert_ok("verify --repair past the grace");
    let v: Value = report::of(&run);
    assert_eq!(v["atomic"]["action"], "switched", "{v}");
    assert_eq!(v["atomic"]["live"], "a", "{v}");
    assert_eq!(v["remaining"], Value::Array(vec![]), "{v}");
    same(1, "after the repair");
    assert_eq!(
        fs::read(&damaged).unwrap(),
        b"damaged\n",
        "the old live tree was written"
    );

    // The next switch repairs tree b first (the file is unchanged by the backup).
    let r = sync_json(
        &host,
        &repo,
        &["--grace", "0", "--time", &at(2)],
        "after repair",
    );
    assert_eq!(r["atomic"]["live"], "b", "{r}");
    same(2, "the repaired tree went live");

    // Back to a plain folder: no volume read; the layout is gone.
    let r = sync_json(&host, &repo, &["--in-place", "--time", &at(2)], "back");
    assert_eq!(r["atomic"]["converted"], "to-in-place", "{r}");
    assert_no_volume_read(&r, "converting back");
    assert!(!is_link(&host) && host.dest.is_dir());
    assert!(!trees_dir(&host).exists(), "the trees folder stayed");
    same(2, "after converting back");
    host.run("verify", &repo, &[], &[])
        .assert_ok("verify, plain again");

    // A link someone else put there is refused, never followed.
    let outside = lab.fresh("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("mine"), b"not dupmirror's\n").unwrap();
    let fresh = lab.host("f");
    fresh
        .sync(&repo, &["--atomic", "--time", &at(0)])
        .assert_ok("bootstrap");
    same_tree(&oracles[0].1, &fresh, "bootstrap");
    fs::remove_file(&fresh.dest).unwrap();
    std::os::unix::fs::symlink(&outside, &fresh.dest).unwrap();
    fresh.sync(&repo, &["--grace", "0"]).assert_refused(
        "a foreign link",
        &["symlink", "not to one of dupmirror's trees"],
    );
    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        1,
        "the link's target was written"
    );
}

fn same_tree(want: &Tree, host: &Host, ctx: &str) {
    want.assert_same(
        &resolved(host).expect("DEST resolves"),
        Compare::default(),
        ctx,
    );
}

// ------------------------------------------------------------------------------------------
// Kill points.

struct KillCase {
    what: &'static str,
    /// Syncs (extra arguments) that prepare the host.
    prep: Vec<Vec<String>>,
    /// The run that is killed, and which repeated after the kill must reach `to`.
    run: Vec<String>,
    /// Oracle indices DEST may resolve to right after a kill (`None`: DEST may be missing).
    allowed: Vec<Option<usize>>,
    to: usize,
    /// Whether DEST is the link after the run.
    atomic_after: bool,
}

fn kill_cases(times: &[i64]) -> Vec<KillCase> {
    let at = |k: usize| times[k].to_string();
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let steady = vec![
        v(&["--atomic", "--time", &at(0)]),
        v(&["--atomic", "--grace", "0", "--time", &at(1)]),
    ];
    vec![
        KillCase {
            what: "bootstrap",
            prep: vec![],
            run: v(&["--atomic", "--time", &at(0)]),
            allowed: vec![None, Some(0)],
            to: 0,
            atomic_after: true,
        },
        KillCase {
            what: "standby update and switch",
            prep: steady.clone(),
            run: v(&["--grace", "0", "--time", &at(2)]),
            allowed: vec![Some(1), Some(2)],
            to: 2,
            atomic_after: true,
        },
        KillCase {
            what: "conversion to atomic",
            prep: vec![v(&["--time", &at(1)])],
            run: v(&["--atomic", "--time", &at(1)]),
            allowed: vec![Some(1)],
            to: 1,
            atomic_after: true,
        },
        KillCase {
            what: "conversion back to in place",
            prep: steady,
            run: v(&["--in-place", "--time", &at(1)]),
            allowed: vec![Some(1)],
            to: 1,
            atomic_after: false,
        },
    ]
}

/// Where one case runs (cases run two at a time).
struct Bench<'a> {
    repo: &'a Path,
    /// A folder for the case's hosts, one per attempt.
    base: PathBuf,
}

impl Bench<'_> {
    fn prepare(&self, case: &KillCase, n: usize) -> Host {
        let host = Host::at(self.base.join(n.to_string()));
        for extra in &case.prep {
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            host.sync(self.repo, &extra)
                .assert_ok(&format!("{}: preparing", case.what));
        }
        host
    }
}

/// Returns (census length, points tried, killed, points by phase).
fn run_kill_case(
    strace: &Path,
    bench: &Bench<'_>,
    oracles: &[(i64, Tree)],
    case: &KillCase,
) -> (usize, usize, usize, BTreeMap<&'static str, usize>) {
    let extra: Vec<&str> = case.run.iter().map(String::as_str).collect();
    let host = bench.prepare(case, 0);
    let args = host.args("sync", bench.repo, &extra);
    let (census_run, all) = strace::census(strace, &args, &host, bench.repo);
    census_run.assert_ok(&format!("{}: census run", case.what));
    same_tree(
        &oracles[case.to].1,
        &host,
        &format!("{}: census run", case.what),
    );
    remove_tree(&host.dir);
    let points = strace::spread(&all, strace::points_wanted(12));
    let (mut killed, mut phases) = (0, BTreeMap::new());
    for (i, point) in points.iter().enumerate() {
        let ctx = point.context(case.what, i, points.len());
        *phases.entry(point.phase).or_default() += 1;
        let host = bench.prepare(case, i + 1);
        let args = host.args("sync", bench.repo, &extra);
        let r = strace::kill_at(strace, &args, point);
        if r.status.signal() == Some(9) {
            killed += 1;
        } else {
            r.assert_ok(&format!("{ctx}: run not killed"));
        }
        // What a reader sees right after the kill, before any recovery.
        match resolved(&host) {
            None => assert!(case.allowed.contains(&None), "{ctx}: DEST does not resolve"),
            Some(tree) => {
                let whole = case
                    .allowed
                    .iter()
                    .flatten()
                    .any(|&k| oracles[k].1.diff(&tree, Compare::default()).is_empty())
                    || (case.allowed.contains(&None) && lab::is_empty_dir(&tree));
                assert!(whole, "{ctx}: DEST resolves to a tree that is no backup");
            }
        }
        let mut finish = extra.clone();
        if !finish.contains(&"--grace") {
            finish.extend(["--grace", "0"]);
        }
        host.sync(bench.repo, &finish)
            .assert_ok(&format!("{ctx}: the next run"));
        same_tree(&oracles[case.to].1, &host, &format!("{ctx}: the next run"));
        assert_eq!(
            is_link(&host),
            case.atomic_after,
            "{ctx}: layout after the next run"
        );
        assert!(
            !host.state.join("atomic-journal").exists()
                && !host.dir.join(".d.dupmirror-link").exists(),
            "{ctx}: the layout journal or the new link was left behind"
        );
        remove_tree(&host.dir);
    }
    (all.len(), points.len(), killed, phases)
}

#[test]
fn sigkill_at_any_point_leaves_dest_resolving_to_one_whole_backup() {
    let Some(strace) = strace::find() else {
        return;
    };
    let Some(dup) = duplicity(Version::V08) else {
        return;
    };
    let mut lab = Lab::new(dup).backup_opts(&["--volsize", "1"]);
    let oracles = build(&mut lab);
    let times: Vec<i64> = oracles.iter().map(|(t, _)| *t).collect();
    let cases = kill_cases(&times);
    let benches: Vec<Bench> = cases
        .iter()
        .map(|_| Bench {
            repo: &lab.repo,
            base: lab.fresh("case"),
        })
        .collect();
    let work: Vec<(&KillCase, Bench)> = cases.iter().zip(benches).collect();
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = work
            .chunks(2)
            .map(|pair| {
                let (strace, oracles) = (&strace, &oracles);
                scope.spawn(move || {
                    pair.iter()
                        .map(|(c, b)| (c.what, run_kill_case(strace, b, oracles, c)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let (mut tried, mut killed) = (0, 0);
    for (what, (census, points, k, phases)) in &results {
        eprintln!(
            "atomic kill: {what}: {census} syscalls in the census, {points} tried, {k} killed; \
             phases {phases:?}"
        );
        tried += points;
        killed += k;
    }
    eprintln!("atomic kill: total {tried} points tried, {killed} killed, all recovered");
    assert!(killed * 10 >= tried * 9, "most kill points must be reached");
    let switch_points: usize = results
        .iter()
        .map(|(_, (_, _, _, p))| p.get("link replacement").copied().unwrap_or(0))
        .sum();
    assert!(
        switch_points > 0,
        "no kill point around the link replacement"
    );
}
