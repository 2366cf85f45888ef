//! The oracle scenario driver: change a source tree step by step, back it up with upstream
//! duplicity after every step, and check that dupmirror reproduces `duplicity restore --time T`
//! for every T:
//!
//! * an "incremental host" syncs after every backup;
//! * a "late host" syncs once at the end (several pending sets in one run);
//! * for every backup time T a fresh host runs `sync --time T`.

use super::lab::{remove_tree, Lab};
use super::oracle::{BackupKind, Duplicity};
use super::source::Fs;
use super::time::{t, time_arg};
use super::tree::{Compare, Tree};
use std::ffi::OsString;

pub type Change<'a> = Box<dyn Fn(&Fs) + 'a>;

pub struct Step<'a> {
    pub kind: BackupKind,
    pub change: Change<'a>,
}

pub fn full<'a>(f: impl Fn(&Fs) + 'a) -> Step<'a> {
    Step {
        kind: BackupKind::Full,
        change: Box::new(f),
    }
}

pub fn inc<'a>(f: impl Fn(&Fs) + 'a) -> Step<'a> {
    Step {
        kind: BackupKind::Inc,
        change: Box::new(f),
    }
}

/// Makes step `k` in the lab's source (mtime `t(k) - 100`) and backs it up at `t(k)`,
/// checking nothing; returns the backup time.
pub fn back_up(lab: &mut Lab, k: usize, step: &Step<'_>) -> i64 {
    let time = t(k as i64);
    lab.fs.set_now(time - 100);
    (step.change)(&lab.fs);
    lab.backup(step.kind, time);
    time
}

/// Backs up every step in turn; returns each backup time with its `duplicity restore` tree.
pub fn back_up_with_oracles(lab: &mut Lab, steps: &[Step<'_>]) -> Vec<(i64, Tree)> {
    steps
        .iter()
        .enumerate()
        .map(|(k, step)| {
            let time = back_up(lab, k, step);
            (time, lab.restore(time))
        })
        .collect()
}

pub struct Outcome {
    pub lab: Lab,
    /// (backup time, oracle tree at that time), one per step.
    pub oracles: Vec<(i64, Tree)>,
    pub sync_opts: Vec<String>,
    pub what: String,
}

impl Outcome {
    /// A fresh host syncs with `--time time`; it must equal `duplicity restore --time time`.
    pub fn check_time(&self, time: i64, time_text: &str) {
        let oracle = self.lab.restore(time);
        let host = self.lab.host("x");
        let mut opts: Vec<&str> = self.sync_opts.iter().map(String::as_str).collect();
        opts.extend(["--time", time_text]);
        let ctx = format!(
            "{} [{}]: fresh host, sync --time {time_text}",
            self.what,
            self.lab.dup.label()
        );
        host.sync_env(&self.lab.repo, &opts, &self.lab.dupmirror_env)
            .assert_ok(&ctx);
        oracle.assert_same(&host.tree(), Compare::default(), &ctx);
        remove_tree(&host.dir);
    }
}

/// Run the scenario `steps` against upstream `dup`. `setup` configures the lab (backup and
/// repository options); `sync_opts` are passed to every `dupmirror sync`. Hosts read the
/// repository as a `file://` URL or a plain path, in turn ([`url_or_path`]).
pub fn run(
    dup: Duplicity,
    what: &str,
    setup: impl FnOnce(Lab) -> Lab,
    sync_opts: &[&str],
    steps: Vec<Step<'_>>,
) -> Outcome {
    run_from(setup(Lab::new(dup)), what, sync_opts, steps, 1, url_or_path)
}

/// The SOURCE argument of the `k`-th sync: the `file://` URL for even `k`, the plain path for
/// odd.
pub fn url_or_path(lab: &Lab, k: usize) -> OsString {
    if k.is_multiple_of(2) {
        OsString::from(lab.url())
    } else {
        lab.repo.clone().into_os_string()
    }
}

/// Like [`run`] on a `lab` already set up, with the SOURCE argument the `k`-th sync of a host
/// passes given by `source_of` (a server's URL, for the remote tests): the incremental host
/// uses k = step, the second sync with nothing new k = 0, the late host and the time
/// travellers k = 1.
/// The fresh hosts of the time-travel phase sync only every `every`-th backup time (and the
/// last one); the incremental host still checks every step (`every` > 1 is for long chains).
pub fn run_from(
    mut lab: Lab,
    what: &str,
    sync_opts: &[&str],
    steps: Vec<Step<'_>>,
    every: usize,
    source_of: impl Fn(&Lab, usize) -> OsString,
) -> Outcome {
    let label = lab.dup.label();
    let cmp = Compare::default();
    let inc_host = lab.host("i");
    let mut oracles = Vec::new();
    for (k, step) in steps.iter().enumerate() {
        let time = t(k as i64);
        lab.fs.set_now(time - 100 - k as i64);
        (step.change)(&lab.fs);
        let clock = std::time::Instant::now();
        lab.backup(step.kind, time);
        let backup_s = clock.elapsed().as_secs_f64();
        let source = Tree::capture(&lab.src);
        let clock = std::time::Instant::now();
        let oracle = lab.restore(time);
        let restore_s = clock.elapsed().as_secs_f64();
        source.assert_same(
            &oracle,
            cmp,
            &format!(
                "{what} [{label}] step {k}: harness check failed: duplicity restore does not \
                 reproduce the source tree (expected = source, actual = restore)"
            ),
        );
        let source_arg = source_of(&lab, k);
        let ctx = format!("{what} [{label}]: incremental host, sync after step {k} (time {time})");
        let clock = std::time::Instant::now();
        inc_host
            .sync_env(&source_arg, sync_opts, &lab.dupmirror_env)
            .assert_ok(&ctx);
        if std::env::var_os("DUPMIRROR_TEST_TIMING").is_some() {
            eprintln!(
                "timing: {what} [{label}] step {k}: backup {backup_s:.2}s, restore \
                 {restore_s:.2}s, sync {:.2}s",
                clock.elapsed().as_secs_f64()
            );
        }
        oracle.assert_same(&inc_host.tree(), cmp, &ctx);
        assert_eq!(
            inc_host.strays(),
            Vec::<String>::new(),
            "{ctx}: files appeared beside DEST"
        );
        oracles.push((time, oracle));
    }

    // Nothing new: exit 0 and DEST untouched.
    let ctx = format!("{what} [{label}]: incremental host, second sync with nothing new");
    let before = inc_host.tree();
    inc_host
        .sync_env(source_of(&lab, 0), sync_opts, &lab.dupmirror_env)
        .assert_ok(&ctx);
    before.assert_same(&inc_host.tree(), cmp, &ctx);

    // Late host: every set in one run.
    let (last_time, last) = oracles.last().expect("at least one step");
    let late = lab.host("l");
    let ctx = format!("{what} [{label}]: late host, one sync at the end (time {last_time})");
    late.sync_env(source_of(&lab, 1), sync_opts, &lab.dupmirror_env)
        .assert_ok(&ctx);
    last.assert_same(&late.tree(), cmp, &ctx);
    assert_eq!(
        late.strays(),
        Vec::<String>::new(),
        "{ctx}: files appeared beside DEST"
    );

    // Time travel: a fresh host per backup time.
    for (k, (time, oracle)) in oracles.iter().enumerate() {
        if k % every != 0 && k + 1 != oracles.len() {
            continue;
        }
        let host = lab.host("t");
        let targ = time_arg(*time, k);
        let mut opts = sync_opts.to_vec();
        opts.extend(["--time", targ.as_str()]);
        let ctx = format!("{what} [{label}]: fresh host, sync --time {targ} (step {k})");
        host.sync_env(source_of(&lab, 1), &opts, &lab.dupmirror_env)
            .assert_ok(&ctx);
        oracle.assert_same(&host.tree(), cmp, &ctx);
        remove_tree(&host.dir);
    }

    Outcome {
        lab,
        oracles,
        sync_opts: sync_opts.iter().map(|s| s.to_string()).collect(),
        what: what.to_string(),
    }
}
