//! Several sources for one mirror (`sync SOURCE --source URL ...`), served by nginx on
//! 127.0.0.1 as folders of one site: a stale first source is skipped with one notice, an
//! unreachable one too (by `verify --repair` and `status` as by `sync`); a volume whose copy is damaged on the first source comes from the
//! second (the manifest's SHA1 decides) and the JSON report says who served what; two
//! sources that disagree about a manifest are refused as a split brain, whether their
//! listings already show it (sizes) or only the bytes do.

use crate::support::remote::*;
use crate::support::report::{self, SourceStatus, VerifyReport};
use crate::support::*;
use std::fs;
use std::path::Path;

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// The entry for `url` among a report's `sources`.
fn source_entry<'a>(sources: &'a [SourceStatus], url: &str) -> &'a SourceStatus {
    sources
        .iter()
        .find(|s| s.source == url)
        .unwrap_or_else(|| panic!("{url} not in the report's sources: {sources:?}"))
}

/// nginx publishing a site whose `repo/` upstream duplicity `v` writes into.
fn nginx_lab(v: Version) -> Option<(Site, Server, Lab)> {
    let dup = duplicity(v)?;
    let site = Site::new();
    let server = nginx(&site.www, &site.srv, &NginxOptions::default())?;
    let lab = served_lab(Lab::new(dup), &site.www);
    Some((site, server, lab))
}

#[test]
fn stale_unreachable_and_damaged_sources() {
    let Some((site, server, mut lab)) = nginx_lab(Version::V08) else {
        return;
    };
    lab.fs.write("big.bin", &random_bytes(3, 1_500_000));
    lab.full(t(0));
    // "stale" is a mirror that stopped copying after the full.
    copy_dir(&lab.repo, &site.www.join("stale"));
    lab.fs.write("new", b"new\n");
    lab.inc(t(1));
    let oracle = lab.restore(t(1));
    let base = format!("http://127.0.0.1:{}", server.port);
    let (stale, good) = (format!("{base}/stale/"), format!("{base}/repo/"));
    let gone = format!("http://127.0.0.1:{}/repo/", free_port());

    // Stale first, unreachable second, the good one last: two notices, the sync follows
    // the good one.
    let host = lab.host("s");
    let run = host.sync(
        &stale,
        &[
            "--json",
            "--retries",
            "0",
            "--source",
            &gone,
            "--source",
            &good,
        ],
    );
    let r = sync_report(run.assert_ok("stale and unreachable sources"));
    oracle.assert_same(&host.tree(), Compare::default(), "stale first source");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{}", run.stderr);
    assert!(lines[0].contains("skipping stale source") && lines[0].contains("/stale/"));
    assert!(lines[1].contains("skipping source") && lines[1].contains("refused"));
    assert_eq!(source_entry(&r.sources, &stale).role, "stale");
    assert_eq!(source_entry(&r.sources, &gone).role, "unreachable");
    assert_eq!(source_entry(&r.sources, &good).role, "primary");
    assert_eq!(r.source, good);

    // verify --repair follows the sources in the same way: the unreachable first one is
    // skipped with a notice, and the volume that restores an edited file comes from the
    // next one.
    fs::write(host.dest.join("big.bin"), b"edited on the host\n").unwrap();
    let run = host.run(
        "verify",
        &gone,
        &["--repair", "--json", "--retries", "0", "--source", &good],
        &[],
    );
    let v: VerifyReport = report::of(run.assert_ok("verify --repair past an unreachable source"));
    oracle.assert_same(
        &host.tree(),
        Compare::default(),
        "repaired through --source",
    );
    assert!(run.stderr.contains("skipping source"), "{}", run.stderr);
    let differ: Vec<&str> = v.differences.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(differ, ["big.bin"]);
    assert!(v.remaining.is_some_and(|r| r.is_empty()));
    assert_eq!(source_entry(&v.sources, &gone).role, "unreachable");
    assert_eq!(source_entry(&v.sources, &good).role, "primary");
    assert!(!source_entry(&v.sources, &good).served.files.is_empty());

    // status --config shows the newest backup among a mirror's sources, as its sync
    // follows them, not an error from the first one.
    let config = host.dir.join("dupmirror.toml");
    let toml = format!(
        "[mirror.m]\nsource = [{gone:?}, {good:?}]\ndest = {:?}\nstate-dir = {:?}\n\
         retries = 0\n",
        host.dest.display().to_string(),
        host.state.display().to_string(),
    );
    fs::write(&config, toml).unwrap();
    let status = dupmirror([
        "status".as_ref(),
        "--json".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    let lines: serde_json::Value = report::of(status.assert_ok("status --config"));
    let iso1 = iso_time(t(1));
    assert_eq!(lines[0]["latest"], iso1.as_str(), "{lines}");
    assert_eq!(lines[0]["holds"], iso1.as_str(), "{lines}");
    assert!(lines[0]["source_error"].is_null(), "{lines}");
    // The source passed over still shows: in the report, and on the line.
    let roles: Vec<(&str, &str)> = lines[0]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == gone.as_str())
        .map(|e| (e["source"].as_str().unwrap(), e["role"].as_str().unwrap()))
        .collect();
    assert_eq!(roles, [(gone.as_str(), "unreachable")], "{lines}");
    let text = dupmirror(["status".as_ref(), "--config".as_ref(), config.as_os_str()]);
    let line = text.assert_ok("status --config, as text").stdout_text();
    assert!(
        line.contains(&format!("lag 0s; source {gone} unreachable; last run")),
        "{line}"
    );

    // status SOURCE --source URL: the repository a sync would follow.
    let status = dupmirror([
        "status".as_ref(),
        gone.as_ref(),
        "--json".as_ref(),
        "--retries=0".as_ref(),
        "--source".as_ref(),
        good.as_ref(),
        "--dest".as_ref(),
        host.dest.as_os_str(),
        "--state-dir".as_ref(),
        host.state.as_os_str(),
    ]);
    let s: serde_json::Value = report::of(status.assert_ok("status past an unreachable source"));
    assert_eq!(s["latest"], iso1.as_str(), "{s}");
    assert_eq!(s["dest"]["holds"], iso1.as_str(), "{s}");
    assert_eq!(s["dest"]["pending_sets"], 0, "{s}");
    let listed = s["sources"].as_array().unwrap();
    let role = |url: &str| {
        listed
            .iter()
            .find(|e| e["source"] == url)
            .map(|e| e["role"].clone())
    };
    assert_eq!(role(&gone), Some("unreachable".into()), "{s}");
    assert_eq!(role(&good), Some("primary".into()), "{s}");

    // ls SOURCE --source URL: the files of the backup a sync would follow ("new" is not in
    // the stale first source's).
    let ls = dupmirror([
        "ls",
        &stale,
        "--retries=0",
        "--source",
        &gone,
        "--source",
        &good,
    ]);
    let files = ls
        .assert_ok("ls past stale and unreachable sources")
        .stdout_text();
    assert_eq!(files.lines().collect::<Vec<_>>(), [".", "big.bin", "new"]);
    assert!(ls.stderr.contains("skipping stale source"), "{}", ls.stderr);

    // An atomic DEST: verify --repair past the unreachable first source builds the standby
    // from the next one, repairs it and switches DEST to it; the live tree is not written.
    let host = lab.host("atomic");
    host.sync(&gone, &["--atomic", "--retries", "0", "--source", &good])
        .assert_ok("atomic bootstrap past an unreachable source");
    let damaged = host.dir.join(".d.dupmirror-trees/a/big.bin");
    fs::write(&damaged, b"edited in the live tree\n").unwrap();
    let run = host.run(
        "verify",
        &gone,
        &[
            "--repair",
            "--json",
            "--grace",
            "0",
            "--retries",
            "0",
            "--source",
            &good,
        ],
        &[],
    );
    let v: serde_json::Value =
        report::of(run.assert_ok("atomic verify --repair past an unreachable source"));
    assert_eq!(v["atomic"]["action"], "switched", "{v}");
    assert_eq!(v["atomic"]["live"], "b", "{v}");
    assert_eq!(v["remaining"], serde_json::json!([]), "{v}");
    assert!(run.stderr.contains("skipping source"), "{}", run.stderr);
    oracle.assert_same(
        &Tree::capture(&host.dest.join(".")),
        Compare::default(),
        "the repaired standby went live",
    );
    assert_eq!(fs::read(&damaged).unwrap(), b"edited in the live tree\n");

    // A volume damaged on the first source (same size, one byte changed): its SHA1 fails
    // and the copy on the second source is used; the report says which served it.
    let (vol1, _) = volume_sizes(&lab.repo)[0].clone();
    copy_dir(&lab.repo, &site.www.join("damaged"));
    let damaged_vol = site.www.join("damaged").join(&vol1);
    let mut bytes = fs::read(&damaged_vol).unwrap();
    bytes[1000] ^= 0xff;
    fs::write(&damaged_vol, bytes).unwrap();
    let damaged = format!("{base}/damaged/");
    let host = lab.host("d");
    let run = host.sync(&damaged, &["--json", "--source", &good]);
    let r = sync_report(run.assert_ok("damaged volume on the first source"));
    oracle.assert_same(&host.tree(), Compare::default(), "damaged first source");
    assert!(run.stderr.contains("from another source"), "{}", run.stderr);
    assert_eq!(source_entry(&r.sources, &damaged).role, "primary");
    assert_eq!(source_entry(&r.sources, &good).role, "spare");
    assert_eq!(
        source_entry(&r.sources, &good).served.files,
        std::slice::from_ref(&vol1)
    );
    assert!(source_entry(&r.sources, &damaged)
        .served
        .files
        .contains(&vol1));
}

#[test]
fn split_brain_sources_are_refused() {
    let Some((site, server, mut lab)) = nginx_lab(Version::V3) else {
        return;
    };
    // Two masters backed up different trees at the same time under the same name.
    lab.fs.write("a", b"the first master's file\n");
    lab.full(t(0));
    let mut other = Lab::new(lab.dup.clone());
    other
        .fs
        .write("b", b"the other master's much longer file name and data\n");
    other.fs.write("c", b"c\n");
    other.full(t(0));
    copy_dir(&other.repo, &site.www.join("other"));
    let base = format!("http://127.0.0.1:{}", server.port);
    let (one, two) = (format!("{base}/repo/"), format!("{base}/other/"));
    let host = lab.host("x");
    let run = host.sync(&one, &["--quiet", "--source", &two]);
    run.assert_one_error_line("split brain by size", &["split brain"], &[7]);
    assert!(host.tree_opt().is_none());

    // Same names and sizes, different bytes: only reading the manifests tells.
    let manifest = lab.repo_file(&["manifest"]);
    let name = manifest.file_name().unwrap().to_owned();
    copy_dir(&lab.repo, &site.www.join("twin"));
    let twin = site.www.join("twin").join(&name);
    let text = fs::read(&twin).unwrap();
    let tampered: Vec<u8> = text
        .iter()
        .map(|&b| if b == b'a' { b'b' } else { b })
        .collect();
    assert_eq!(tampered.len(), text.len());
    assert_ne!(tampered, text);
    fs::write(&twin, tampered).unwrap();
    let run = host.sync(&one, &["--quiet", "--source", &format!("{base}/twin/")]);
    run.assert_one_error_line("split brain by content", &["split brain"], &[7]);
    assert!(
        run.stderr.contains(name.to_str().unwrap()),
        "{}",
        run.stderr
    );
    assert!(host.tree_opt().is_none());
}
