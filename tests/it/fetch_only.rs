//! Fetching only what is needed (issue 4), checked against upstream duplicity:
//! a new full chain fetches only the volumes holding changed files (none when nothing
//! changed), `--path` fetches only the volumes overlapping the kept subtrees, `verify`
//! finds every kind of damage without reading volumes and `--repair` reads only the
//! volumes that hold the damage, and a locally edited file that an incremental patches is
//! restored instead of corrupted. Byte counts come from dupmirror's own `--json` report.

use crate::support::remote::{plain_nginx, served};
use crate::support::report::{self, SyncReport, VerifyReport};
use crate::support::*;
use std::collections::BTreeSet;

both_versions!(
    new_full_fetches_changed_volumes,
    new_full_with_scattered_change_reads_the_optimum,
    path_mirrors,
    verify_and_repair
);

const FILE_SIZE: usize = 40_000;

/// 4 directories of 20 incompressible files: several 1 MB volumes.
fn populate(fs: &Fs) {
    for i in 0..80u64 {
        let rel = format!("d{}/f{:02}", i / 20, i);
        fs.write_at(&rel, &random_bytes(i, FILE_SIZE), T0 - 5000);
    }
    for d in 0..4 {
        fs.touch(format!("d{d}"), T0 - 5000);
    }
    fs.touch(".", T0 - 5000);
}

fn sync_json(host: &Host, lab: &Lab, extra: &[&str]) -> SyncReport {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let run = host.sync(lab.url(), &args);
    report::of(run.assert_ok("sync --json"))
}

/// The volumes of a set whose manifest range holds one of `paths` (simple names only: the
/// test's names never need quoting, and string order equals index order for them).
fn volumes_holding(lab: &Lab, manifest_parts: &[&str], paths: &[&str]) -> BTreeSet<u64> {
    let text = std::fs::read_to_string(lab.repo_file(manifest_parts)).expect("manifest");
    let mut out = BTreeSet::new();
    let mut current: Option<(u64, String)> = None;
    for line in text.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        match t.first() {
            Some(&"Volume") => {
                current = Some((t[1].trim_end_matches(':').parse().unwrap(), String::new()));
            }
            Some(&"StartingPath") => {
                if let Some(c) = current.as_mut() {
                    c.1 = t[1].to_string();
                }
            }
            Some(&"EndingPath") => {
                let (n, start) = current.take().expect("EndingPath inside a volume");
                let end = t[1];
                for p in paths {
                    if (start.as_str() <= *p || start == ".") && *p <= end {
                        out.insert(n);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn new_full_fetches_changed_volumes(dup: Duplicity) {
    let mut lab = Lab::new(dup).backup_opts(&["--volsize", "1"]);
    populate(&lab.fs);
    lab.full(t(0));
    let host = lab.host("h");
    host.sync(lab.url(), &[]).assert_ok("first sync");
    let full_volumes = lab
        .repo_files()
        .iter()
        .filter(|f| f.contains("difftar"))
        .count();
    assert!(
        full_volumes >= 3,
        "the test needs a multi-volume full, got {full_volumes}"
    );

    // A new full with no change: no volume is read at all.
    lab.full(t(1));
    let r = sync_json(&host, &lab, &[]);
    assert_eq!(r.sets.len(), 1, "one Replace step: {r:?}");
    assert_eq!(r.sets[0].volumes, 0, "unchanged full: {r:?}");
    assert_eq!(r.bytes_read, 0);
    lab.restore(t(1))
        .assert_same(&host.tree(), Compare::default(), "after unchanged full");

    // 2 of 80 files changed (2.5%), one removed, one chmod: a new full.
    lab.fs
        .write_at("d1/f25", &random_bytes(1000, FILE_SIZE), T0 + 10);
    lab.fs
        .write_at("d3/f70", &random_bytes(1001, FILE_SIZE), T0 + 10);
    lab.fs.remove("d0/f03");
    lab.fs.chmod("d2/f50", 0o600);
    for d in ["d0", "d1", "d3", "."] {
        lab.fs.touch(d, T0 + 10);
    }
    lab.full(t(2));
    let late = lab.host("late"); // several chains behind: goes straight to the latest one
    let r = sync_json(&host, &lab, &[]);
    assert_eq!(r.sets.len(), 1, "{r:?}");
    let name = lab
        .repo_files()
        .into_iter()
        .find(|f| f.contains("full.") && f.contains("manifest") && f.contains(&compact_time(t(2))))
        .expect("new full manifest");
    let expected = volumes_holding(&lab, &[&name], &["d1/f25", "d3/f70"]);
    let (read, total) = (r.sets[0].volumes, r.sets[0].volumes_in_set);
    assert_eq!(
        read,
        expected.len() as u64,
        "volumes holding the changed files {expected:?}: {r:?}"
    );
    assert!(
        read < total,
        "only part of the full is read ({read} of {total})"
    );
    lab.restore(t(2))
        .assert_same(&host.tree(), Compare::default(), "after the new full");

    // Incrementals on the new chain apply normally.
    lab.fs.write_at("d2/f41", b"small change", T0 + 20);
    lab.fs.touch("d2", T0 + 20);
    lab.inc(t(3));
    let r = sync_json(&host, &lab, &[]);
    assert_eq!(r.sets.len(), 1, "one incremental: {r:?}");
    lab.restore(t(3)).assert_same(
        &host.tree(),
        Compare::default(),
        "after an inc on the new chain",
    );
    late.sync(lab.url(), &[]).assert_ok("late host");
    lab.restore(t(3))
        .assert_same(&late.tree(), Compare::default(), "late host");
}

/// Issue 15 item 4: a change scattered over a multi-volume new full. The volumes read must
/// be exactly the volume-granularity optimum: every volume whose manifest range holds a
/// path that needs data (a new file or new content), no other; deletions and attribute
/// changes need none. Checked by count and by bytes (the sum of those volumes' sizes).
fn new_full_with_scattered_change_reads_the_optimum(dup: Duplicity) {
    let mut lab = Lab::new(dup).backup_opts(&["--volsize", "1"]);
    // 8 directories of 20 incompressible files: about 7 volumes.
    for i in 0..160u64 {
        let rel = format!("d{}/f{:03}", i / 20, i);
        lab.fs
            .write_at(&rel, &random_bytes(i, FILE_SIZE), T0 - 5000);
    }
    for d in 0..8 {
        lab.fs.touch(format!("d{d}"), T0 - 5000);
    }
    lab.fs.touch(".", T0 - 5000);
    lab.full(t(0));
    let host = lab.host("h");
    host.sync(lab.url(), &[]).assert_ok("first sync");

    // Every 53rd file rewritten, one file new, one removed, one chmod: spread over the tree.
    let mut need = Vec::new();
    for i in (5..160u64).step_by(53) {
        let rel = format!("d{}/f{i:03}", i / 20);
        lab.fs
            .write_at(&rel, &random_bytes(1000 + i, FILE_SIZE), T0 + 10);
        need.push(rel);
    }
    lab.fs
        .write_at("d6/new", &random_bytes(7, FILE_SIZE), T0 + 10);
    need.push("d6/new".to_string());
    lab.fs.remove("d2/f050");
    lab.fs.chmod("d4/f090", 0o600);
    for d in 0..8 {
        lab.fs.touch(format!("d{d}"), T0 + 10);
    }
    lab.full(t(1));

    let r = sync_json(&host, &lab, &[]);
    let stamp = compact_time(t(1));
    let manifest = lab
        .repo_files()
        .into_iter()
        .find(|f| f.contains("full.") && f.contains("manifest") && f.contains(&stamp))
        .expect("new full manifest");
    let need: Vec<&str> = need.iter().map(String::as_str).collect();
    let optimum = volumes_holding(&lab, &[&manifest], &need);
    let optimum_bytes: u64 = optimum
        .iter()
        .map(|n| {
            let vol = format!("full.{stamp}.vol{n}.");
            std::fs::metadata(lab.repo_file(&[&vol])).unwrap().len()
        })
        .sum();
    let (read, total) = (r.sets[0].volumes, r.sets[0].volumes_in_set);
    assert!(total >= 6, "the test needs many volumes, got {total}");
    assert!(
        (optimum.len() as u64) < total,
        "the change must leave some volume out: {optimum:?} of {total}"
    );
    assert_eq!(
        (read, r.bytes_read),
        (optimum.len() as u64, optimum_bytes),
        "volumes read (count, bytes) against the optimum {optimum:?}: {r:?}"
    );
    lab.restore(t(1))
        .assert_same(&host.tree(), Compare::default(), "after the new full");
}

fn path_mirrors(dup: Duplicity) {
    let mut lab = Lab::new(dup).backup_opts(&["--volsize", "1"]);
    populate(&lab.fs);
    lab.fs.write_at("d2/sub/deep", b"deep file", T0 - 5000);
    lab.fs.touch("d2/sub", T0 - 5000);
    lab.fs.touch("d2", T0 - 5000);
    lab.full(t(0));
    lab.fs.write_at("d0/f01", b"changed d0", T0 + 10);
    lab.fs.write_at("d2/sub/deep", b"changed deep", T0 + 10);
    lab.fs.write_at("d3/f61", b"changed d3", T0 + 10);
    lab.inc(t(1));
    let host = lab.host("h");
    let r = sync_json(&host, &lab, &["--path", "d0", "--path", "d2/sub"]);
    let (full_read, full_total) = (r.sets[0].volumes, r.sets[0].volumes_in_set);
    assert!(
        full_read < full_total,
        "--path reads part of the full ({full_read} of {full_total})"
    );
    for p in ["d0", "d2/sub"] {
        let oracle = lab.restore_with(t(1), &["-r", p]);
        oracle.assert_same(&host.tree().subtree(p.as_bytes()), Compare::default(), p);
    }
    let paths: BTreeSet<Vec<u8>> = host.tree().paths();
    assert!(
        !paths.contains(b"d1".as_slice()) && !paths.contains(b"d3".as_slice()),
        "only the kept subtrees"
    );
    assert!(
        !paths.contains(b"d2/f40".as_slice()),
        "nothing of d2 beside d2/sub"
    );

    // Changing the paths: d3 is added, d2/sub dropped.
    host.sync(lab.url(), &["--path", "d0", "--path", "d3"])
        .assert_ok("new path set");
    for p in ["d0", "d3"] {
        let oracle = lab.restore_with(t(1), &["-r", p]);
        oracle.assert_same(&host.tree().subtree(p.as_bytes()), Compare::default(), p);
    }
    assert!(
        !host.tree().paths().contains(b"d2".as_slice()),
        "the dropped subtree is removed"
    );
    host.run("verify", lab.url(), &[], &[])
        .assert_ok("verify of a subtree mirror");
}

fn verify_and_repair(dup: Duplicity) {
    let mut lab = Lab::new(dup).backup_opts(&["--volsize", "1"]);
    populate(&lab.fs);
    lab.fs.symlink("link", "d0/f00");
    lab.fs.touch(".", T0 - 5000);
    lab.full(t(0));
    lab.fs.write_at("d1/f21", b"inc content", T0 + 10);
    lab.fs.touch("d1", T0 + 10);
    lab.inc(t(1));
    let host = lab.host("h");
    host.sync(lab.url(), &[]).assert_ok("sync");
    let verify = |extra: &[&str]| {
        let mut a = vec!["--json"];
        a.extend_from_slice(extra);
        host.run("verify", lab.url(), &a, &[])
    };
    verify(&[]).assert_ok("verify of a clean tree");

    // Every kind of damage.
    let d = |rel: &str| host.dest.join(rel);
    let mut edited = std::fs::read(d("d0/f05")).unwrap();
    edited[100] ^= 0xff; // same size, same mtime
    let mtime = std::fs::metadata(d("d0/f05")).unwrap();
    std::fs::write(d("d0/f05"), &edited).unwrap();
    let ft = filetime_of(&mtime);
    set_mtime(&d("d0/f05"), ft);
    let trunc = std::fs::OpenOptions::new()
        .write(true)
        .open(d("d1/f21"))
        .unwrap();
    trunc.set_len(3).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d("d2/f45"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::remove_file(d("d3/f66")).unwrap();
    std::fs::write(d("d3/extra"), b"not in the backup").unwrap();
    std::fs::remove_file(d("link")).unwrap();
    std::os::unix::fs::symlink("/etc", d("link")).unwrap();

    let run = verify(&[]);
    assert!(!run.success(), "verify must fail on a damaged tree");
    let listed = listed_paths(&report::of(&run));
    for p in ["d0/f05", "d1/f21", "d2/f45", "d3/f66", "d3/extra", "link"] {
        assert!(listed.contains(p), "verify must report {p}: {listed:?}");
    }

    // The quick check sees everything but the edit that kept size and mtime.
    let run = verify(&["--quick"]);
    assert!(!run.success(), "verify --quick must fail on a damaged tree");
    let quick_listed = listed_paths(&report::of(&run));
    for p in ["d1/f21", "d2/f45", "d3/f66", "d3/extra", "link"] {
        assert!(
            quick_listed.contains(p),
            "verify --quick must report {p}: {quick_listed:?}"
        );
    }
    assert!(
        !quick_listed.contains("d0/f05"),
        "the quick check does not hash content"
    );

    let run = verify(&["--repair"]);
    run.assert_ok("verify --repair");
    let report: VerifyReport = report::of(&run);
    let read = report.repaired.expect("repair stats").volumes_read;
    let all = lab
        .repo_files()
        .iter()
        .filter(|f| f.contains("difftar"))
        .count() as u64;
    assert!(
        read < all,
        "repair reads only the volumes holding the damage ({read} of {all})"
    );
    lab.restore(t(1))
        .assert_same(&host.tree(), Compare::default(), "after repair");
    verify(&[]).assert_ok("verify after repair");
}

/// A locally edited file that the next incremental patches is restored, not corrupted.
#[test]
fn drifted_file_is_repaired_during_sync() {
    let Some(dup) = duplicity(Version::V08) else {
        return;
    };
    let mut lab = Lab::new(dup);
    lab.fs.write_at("big", &random_bytes(7, 200_000), T0 - 5000);
    lab.fs.write_at("other", b"other", T0 - 5000);
    lab.fs.touch(".", T0 - 5000);
    lab.full(t(0));
    let host = lab.host("h");
    host.sync(lab.url(), &[]).assert_ok("first sync");
    // The host's copy is damaged where the next delta copies from.
    let p = host.dest.join("big");
    let mut local = std::fs::read(&p).unwrap();
    local[10..20].copy_from_slice(b"LOCAL EDIT");
    std::fs::write(&p, &local).unwrap();
    // The master changes the middle of the file.
    let mut master = random_bytes(7, 200_000);
    master[100_000..100_010].copy_from_slice(b"NEW BYTES!");
    lab.fs.write_at("big", &master, T0 + 10);
    lab.inc(t(1));
    let r = sync_json(&host, &lab, &[]);
    assert!(
        r.sets[0].repaired.is_some(),
        "the drifted file is repaired: {r:?}"
    );
    lab.restore(t(1))
        .assert_same(&host.tree(), Compare::default(), "after drift repair");
}

/// The paths a `verify --json` report lists as different.
fn listed_paths(report: &VerifyReport) -> BTreeSet<String> {
    report.differences.iter().map(|d| d.path.clone()).collect()
}

fn filetime_of(m: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    m.mtime()
}

fn set_mtime(p: &std::path::Path, mtime: i64) {
    let f = std::fs::File::options().write(true).open(p).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime as u64))
        .unwrap();
}

/// The same new-full rule over HTTP, counted on both sides: nginx's access log must show
/// exactly the volumes (and bytes) that dupmirror's report says it read.
#[test]
fn new_full_over_http_reads_only_changed_volumes() {
    let Some(mut published) = served(Version::V08, plain_nginx, populate) else {
        return;
    };
    let (lab, server) = (&mut published.lab, &published.server);
    let host = lab.host("h");
    host.sync(&server.url, &[])
        .assert_ok("first sync over HTTP");
    lab.fs
        .write_at("d1/f30", &random_bytes(2000, FILE_SIZE), T0 + 10);
    lab.fs.touch("d1", T0 + 10);
    lab.full(t(1));
    let before = server.requests("GET").len();
    let run = host.sync(&server.url, &["--json"]);
    run.assert_ok("new full over HTTP");
    let r: SyncReport = report::of(&run);
    let (reported_volumes, reported_bytes) = (r.sets[0].volumes, r.sets[0].bytes);
    let new_full_volumes = format!("duplicity-full.{}.vol", compact_time(t(1)));
    let served: Vec<(String, u64)> = server.requests("GET")[before..]
        .iter()
        .filter(|l| l.contains(&new_full_volumes))
        .map(|l| {
            // nginx's combined format: ... "GET /repo/NAME HTTP/1.1" STATUS BYTES ...
            let parts: Vec<&str> = l.split('"').collect();
            let fields: Vec<&str> = parts[2].split_whitespace().collect();
            (parts[1].to_string(), fields[1].parse().expect("byte count"))
        })
        .collect();
    assert_eq!(
        served.len() as u64,
        reported_volumes,
        "requests in nginx's log: {served:?}"
    );
    assert_eq!(
        served.iter().map(|(_, b)| b).sum::<u64>(),
        reported_bytes,
        "bytes in nginx's log"
    );
    let total: u64 = lab
        .repo_files()
        .iter()
        .filter(|f| f.contains(&new_full_volumes))
        .count() as u64;
    assert!(
        reported_volumes < total,
        "{reported_volumes} of {total} volumes"
    );
    lab.restore(t(1)).assert_same(
        &host.tree(),
        Compare::default(),
        "after the new full over HTTP",
    );
}
