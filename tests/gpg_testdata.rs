//! The committed encrypted repository in testdata/encrypted (see its README): dupmirror must
//! reproduce the expected tree at every backup time, with the passphrase from
//! `--passphrase-file` or `PASSPHRASE`, and the committed data must still agree with
//! `duplicity restore`.

mod support;

use std::fs;
use std::path::PathBuf;
use support::gpg::{encrypted_lab, path_str, GpgHome};
use support::*;

fn dir() -> PathBuf {
    manifest_dir().join("testdata/encrypted")
}

/// The expected trees, by time.
fn expected() -> Vec<(i64, Tree)> {
    let mut trees: Vec<(i64, Tree)> = fs::read_dir(dir().join("expected"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "tree"))
        .map(|p| {
            let time = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            (time, Tree::parse(&fs::read_to_string(&p).unwrap()))
        })
        .collect();
    trees.sort_by_key(|(t, _)| *t);
    assert_eq!(trees.len(), 3, "expected trees in testdata/encrypted");
    trees
}

fn passphrase() -> String {
    let text = fs::read_to_string(dir().join("passphrase")).unwrap();
    text.lines().next().unwrap().to_string()
}

fn compare() -> Compare {
    if is_root() {
        Compare::default()
    } else {
        // The trees were made as root; a non-root run cannot restore owners.
        Compare::default().without_owners()
    }
}

#[test]
fn encrypted_testdata_syncs_to_every_time() {
    let Some(home) = GpgHome::new() else { return };
    let repo = dir().join("repo");
    let pass_file = dir().join("passphrase");
    let work = tempfile::Builder::new().prefix("dmgt").tempdir().unwrap();
    let host_at = |label: &str| {
        let d = work.path().join(label);
        fs::create_dir(&d).unwrap();
        Host {
            dest: d.join("d"),
            state: d.join("s"),
            dir: d,
        }
    };
    // Fresh hosts, passphrase from the file.
    for (k, (time, tree)) in expected().iter().enumerate() {
        let host = host_at(&format!("f{k}"));
        let targ = support::scenario::time_arg(*time, k);
        let ctx = format!("testdata/encrypted: fresh host, sync --time {targ}");
        host.sync_env(
            &repo,
            &["--passphrase-file", path_str(&pass_file), "--time", &targ],
            &home.env(None),
        )
        .assert_ok(&ctx);
        tree.assert_same(&host.tree(), compare(), &ctx);
    }
    // status reads only names: no passphrase needed.
    dupmirror_env(["status", path_str(&repo)], &home.env(None)).assert_ok("status");
    // One host moving forward, passphrase from PASSPHRASE.
    let host = host_at("m");
    for (time, tree) in expected() {
        let ts = time.to_string();
        let ctx = format!("testdata/encrypted: moving host, sync --time {time}");
        host.sync_env(&repo, &["--time", &ts], &home.env(Some(&passphrase())))
            .assert_ok(&ctx);
        tree.assert_same(&host.tree(), compare(), &ctx);
    }
}

#[test]
fn encrypted_testdata_matches_upstream_restore() {
    let Some(dup) = duplicity(Version::V08) else {
        return;
    };
    let Some(home) = GpgHome::new() else { return };
    let mut lab = encrypted_lab(Lab::new(dup), &home, &passphrase(), &[]);
    lab.repo = dir().join("repo");
    for (time, tree) in expected() {
        tree.assert_same(
            &lab.restore(time),
            compare(),
            &format!("testdata/encrypted: duplicity restore --time {time} vs the .tree file"),
        );
    }
}
