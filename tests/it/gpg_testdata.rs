//! The committed encrypted repository in testdata/encrypted (see its README): dupmirror must
//! reproduce the expected tree at every backup time, with the passphrase from
//! `--passphrase-file` or `PASSPHRASE`, and the committed data must still agree with
//! `duplicity restore`.

use crate::support::gpg::{encrypted_lab, GpgHome};
use crate::support::time::time_arg;
use crate::support::*;
use std::fs;
use std::path::PathBuf;

fn dir() -> PathBuf {
    manifest_dir().join("testdata/encrypted")
}

/// The expected trees, by time.
fn expected() -> Vec<(i64, Tree)> {
    let trees = tree::read_timed(&dir().join("expected"));
    assert_eq!(trees.len(), 3, "expected trees in testdata/encrypted");
    trees
}

fn passphrase() -> String {
    let text = fs::read_to_string(dir().join("passphrase")).unwrap();
    text.lines().next().unwrap().to_string()
}

#[test]
fn encrypted_testdata_syncs_to_every_time() {
    let Some(home) = GpgHome::new() else { return };
    let repo = dir().join("repo");
    let pass_file = dir().join("passphrase");
    let work = tempfile::Builder::new().prefix("dmgt").tempdir().unwrap();
    let host_at = |label: &str| Host::at(work.path().join(label));
    // Fresh hosts, passphrase from the file.
    for (k, (time, tree)) in expected().iter().enumerate() {
        let host = host_at(&format!("f{k}"));
        let targ = time_arg(*time, k);
        let ctx = format!("testdata/encrypted: fresh host, sync --time {targ}");
        host.sync_env(
            &repo,
            &["--passphrase-file", path_str(&pass_file), "--time", &targ],
            &home.env(None),
        )
        .assert_ok(&ctx);
        tree.assert_same(&host.tree(), compare_as_made_by_root(), &ctx);
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
        tree.assert_same(&host.tree(), compare_as_made_by_root(), &ctx);
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
            compare_as_made_by_root(),
            &format!("testdata/encrypted: duplicity restore --time {time} vs the .tree file"),
        );
    }
}
