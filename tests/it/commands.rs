//! `status`, `ls`, `sync --dry-run` and `--json` output, checked against upstream duplicity.

use std::collections::BTreeSet;
use std::fs;

use crate::support::report::{self, StatusReport, SyncReport};
use crate::support::*;

both_versions!(status_json, ls_matches_upstream, dry_run_changes_nothing);

/// The `status --json` report, as a document (to search) checked to be a status report.
fn status_report(run: &Run) -> serde_json::Value {
    let _: StatusReport = report::of(run);
    report::of(run)
}

/// Does the JSON document mention backup time `time` in any of duplicity's forms?
fn mentions_time(j: &serde_json::Value, time: i64) -> bool {
    let forms = [time.to_string(), iso_time(time), compact_time(time)];
    report::scalars(j)
        .iter()
        .any(|s| forms.iter().any(|f| s == f || s.contains(f.as_str())))
}

/// `status --json`: valid JSON naming every set's time, two chains; plain `status` works.
fn status_json(dup: Duplicity) {
    let mut lab = Lab::new(dup);
    let kinds = [true, false, false, true, false];
    for (k, full) in kinds.iter().enumerate() {
        lab.fs.set_now(t(k as i64) - 10);
        lab.fs.write("a", format!("a{k}\n").as_bytes());
        if *full {
            lab.full(t(k as i64));
        } else {
            lab.inc(t(k as i64));
        }
    }
    let label = lab.dup.label();
    let ctx = format!("[{label}] status --json");
    let r = dupmirror(["status".as_ref(), lab.repo.as_os_str(), "--json".as_ref()]);
    r.assert_ok(&ctx);
    let j = status_report(&r);
    for k in 0..kinds.len() as i64 {
        assert!(
            mentions_time(&j, t(k)),
            "{ctx}: the time of set {k} ({}) is not in:\n{}",
            iso_time(t(k)),
            r.stdout_text()
        );
    }
    assert!(
        !mentions_time(&j, t(7)),
        "{ctx}: mentions a time that has no set"
    );

    let r = dupmirror(["status", &lab.url()]);
    r.assert_ok(&format!("[{label}] status"));
    assert!(!r.stdout.is_empty(), "[{label}] status printed nothing");

    // A set in progress (no manifest yet) must not break status.
    lab.fs.set_now(t(5) - 10);
    lab.fs.write("a", b"a5\n");
    lab.inc(t(5));
    let m = lab.repo_file(&[&format!(".to.{}.manifest", compact_time(t(5)))]);
    fs::remove_file(m).unwrap();
    let ctx = format!("[{label}] status --json with a set in progress");
    let r = dupmirror(["status".as_ref(), lab.repo.as_os_str(), "--json".as_ref()]);
    r.assert_ok(&ctx);
    let j = status_report(&r);
    for k in 0..kinds.len() as i64 {
        assert!(mentions_time(&j, t(k)), "{ctx}: set {k} missing");
    }
}

fn ls_paths(lab: &Lab, time: Option<i64>) -> Vec<Vec<u8>> {
    let mut a = vec!["ls".to_string(), lab.repo.display().to_string()];
    if let Some(time) = time {
        a.extend(["--time".to_string(), time.to_string()]);
    }
    let r = dupmirror(&a);
    r.assert_ok(&format!("[{}] {a:?}", lab.dup.label()));
    let mut lines: Vec<Vec<u8>> = r
        .stdout
        .split(|&b| b == b'\n')
        .map(|l| l.to_vec())
        .collect();
    assert_eq!(
        lines.pop(),
        Some(Vec::new()),
        "ls output must end with a newline"
    );
    lines
}

/// `ls --time T` lists exactly the paths of the restored tree (raw bytes) and of upstream's
/// `list-current-files --time T`, once each.
fn ls_matches_upstream(dup: Duplicity) {
    let mut lab = Lab::new(dup);
    let label = lab.dup.label();
    lab.fs.set_now(T0 - 100);
    lab.fs.write("plain", b"p\n");
    lab.fs.write("caf\u{e9}/\u{65e5}\u{672c}", b"u\n");
    lab.fs.write(b"bad\xff\xfename", b"b\n");
    lab.fs.write("with space/and\ttab", b"s\n");
    lab.fs.write("n".repeat(150), b"long\n");
    lab.fs.symlink("link", "plain");
    lab.fs.fifo("fifo");
    lab.fs.mkdir("empty");
    lab.fs.write("a/x", b"x\n");
    lab.fs.write("a-b", b"x\n");
    lab.full(t(0));
    lab.fs.set_now(t(0));
    lab.fs.remove("a");
    lab.fs.write("a/y/z", b"z\n");
    lab.fs.remove("link");
    lab.fs.write("new", b"new\n");
    lab.inc(t(1));
    lab.fs.set_now(t(1));
    lab.fs.remove("with space");
    lab.fs.write("with space", b"a file now\n");
    lab.inc(t(2));

    for k in 0..3 {
        let time = t(k);
        let ctx = format!("[{label}] ls --time {time}");
        let lines = ls_paths(&lab, Some(time));
        let set: BTreeSet<Vec<u8>> = lines.iter().cloned().collect();
        assert_eq!(set.len(), lines.len(), "{ctx}: a path is listed twice");
        let restored = lab.restore(time).paths();
        let show = |s: &BTreeSet<Vec<u8>>| {
            s.iter()
                .map(|p| tree::escape(p))
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            show(&set),
            show(&restored),
            "{ctx}: paths differ from duplicity restore"
        );
        assert_eq!(
            show(&set),
            show(&lab.list_current_files(time)),
            "{ctx}: paths differ from duplicity list-current-files"
        );
    }
    let latest: BTreeSet<Vec<u8>> = ls_paths(&lab, None).into_iter().collect();
    assert_eq!(
        latest,
        lab.restore(t(2)).paths(),
        "[{label}] ls without --time"
    );
}

/// `sync --dry-run` changes neither DEST nor the state dir, and creates no DEST; `--json`
/// prints one JSON document.
fn dry_run_changes_nothing(dup: Duplicity) {
    let mut lab = Lab::new(dup);
    let label = lab.dup.label();
    lab.fs.set_now(T0 - 100);
    lab.fs.write("a", b"a\n");
    lab.fs.write("d/b", &random_bytes(1, 5000));
    lab.full(t(0));
    let o0 = lab.restore(t(0));
    let host = lab.host("h");
    let ctx = format!("[{label}] first sync --json");
    let r = host.sync(&lab.repo, &["--json"]);
    r.assert_ok(&ctx);
    let _: SyncReport = report::of(&r);
    o0.assert_same(&host.tree(), Compare::default(), &ctx);

    lab.fs.set_now(t(0));
    lab.fs.write("a", b"a changed\n");
    lab.fs.remove("d");
    lab.fs.write("new", b"new\n");
    lab.inc(t(1));
    let o1 = lab.restore(t(1));

    let dest_before = host.tree();
    let state_before = Tree::capture(&host.state);
    for extra in [&["--dry-run"][..], &["--dry-run", "--json"][..]] {
        let ctx = format!("[{label}] sync {extra:?} with one pending set");
        let r = host.sync(lab.url(), extra);
        r.assert_ok(&ctx);
        if extra.contains(&"--json") {
            let _: SyncReport = report::of(&r);
        }
        dest_before.assert_same(&host.tree(), Compare::default(), &ctx);
        state_before.assert_same(
            &Tree::capture(&host.state),
            Compare::default().without_dir_mtimes(),
            &format!("{ctx}: state dir"),
        );
        assert_eq!(
            host.strays(),
            Vec::<String>::new(),
            "{ctx}: files beside DEST"
        );
    }

    // A fresh host: a dry run creates nothing.
    let fresh = lab.host("f");
    let ctx = format!("[{label}] sync --dry-run on a fresh host");
    fresh.sync(&lab.repo, &["--dry-run"]).assert_ok(&ctx);
    assert!(
        fresh.tree_opt().is_none_or(|t| t.nodes.len() == 1),
        "{ctx}: DEST was populated"
    );

    // The real run still applies the set.
    let ctx = format!("[{label}] sync --json after the dry runs");
    let r = host.sync(&lab.repo, &["--json"]);
    r.assert_ok(&ctx);
    let _: SyncReport = report::of(&r);
    o1.assert_same(&host.tree(), Compare::default(), &ctx);
}
