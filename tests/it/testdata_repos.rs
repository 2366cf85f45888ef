//! The committed repositories in testdata/repos (see testdata/README.md): dupmirror must
//! reproduce the expected tree at every backup time, on fresh hosts and on one host moving
//! forward through the times. These tests need no upstream duplicity, except the check that the
//! committed data still agrees with `duplicity restore`.

use crate::support::time::time_arg;
use crate::support::*;
use std::fs;
use std::path::PathBuf;

struct Fixture {
    name: String,
    repo: PathBuf,
    options: Vec<String>,
    /// (time, expected tree), by time.
    trees: Vec<(i64, Tree)>,
}

fn testdata() -> PathBuf {
    manifest_dir().join("testdata")
}

fn fixture(name: &str) -> Fixture {
    let exp = testdata().join("expected").join(name);
    let repo = testdata().join("repos").join(name);
    assert!(repo.is_dir(), "missing {}", repo.display());
    let options = match fs::read_to_string(exp.join("options")) {
        Ok(s) => s
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        Err(_) => Vec::new(),
    };
    let trees = tree::read_timed(&exp);
    assert!(!trees.is_empty(), "no expected trees in {}", exp.display());
    Fixture {
        name: name.to_string(),
        repo,
        options,
        trees,
    }
}

fn repo_listing(f: &Fixture) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = fs::read_dir(&f.repo)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    v.sort();
    v
}

fn check_fixture(name: &str) {
    let f = fixture(name);
    let listing = repo_listing(&f);
    let dir = tempfile::Builder::new().prefix("dmtd").tempdir().unwrap();
    let opts: Vec<&str> = f.options.iter().map(String::as_str).collect();
    let host_at = |label: &str| Host::at(dir.path().join(label));

    // Fresh hosts, one per time.
    for (k, (time, tree)) in f.trees.iter().enumerate() {
        let host = host_at(&format!("f{k}"));
        let targ = time_arg(*time, k);
        let mut a = opts.clone();
        a.extend(["--time", targ.as_str()]);
        let ctx = format!("testdata {}: fresh host, sync --time {targ}", f.name);
        host.sync(&f.repo, &a).assert_ok(&ctx);
        tree.assert_same(&host.tree(), compare_as_made_by_root(), &ctx);
    }

    // One host moving forward through the times, then to the latest.
    let host = host_at("m");
    for (time, tree) in &f.trees {
        let mut a = opts.clone();
        let ts = time.to_string();
        a.extend(["--time", ts.as_str()]);
        let ctx = format!("testdata {}: moving host, sync --time {time}", f.name);
        host.sync(&f.repo, &a).assert_ok(&ctx);
        tree.assert_same(&host.tree(), compare_as_made_by_root(), &ctx);
    }
    let ctx = format!("testdata {}: moving host, sync to the latest", f.name);
    host.sync(format!("file://{}", f.repo.display()), &opts)
        .assert_ok(&ctx);
    f.trees
        .last()
        .unwrap()
        .1
        .assert_same(&host.tree(), compare_as_made_by_root(), &ctx);

    assert_eq!(
        repo_listing(&f),
        listing,
        "testdata {}: the repository was modified",
        f.name
    );
}

macro_rules! fixtures {
    ($($test:ident => $name:literal),* $(,)?) => {
        const NAMES: &[&str] = &[$($name),*];
        $(
            #[test]
            fn $test() {
                check_fixture($name)
            }
        )*
    };
}

fixtures!(
    gz_08 => "gz-08",
    gz_3 => "gz-3",
    plain_08 => "plain-08",
    plain_3 => "plain-3",
    short_08 => "short-08",
    old_08 => "old-08",
    prefix_08 => "prefix-08",
    prefix_3 => "prefix-3",
    volsize_08 => "volsize-08",
    edge_08 => "edge-08",
    edge_3 => "edge-3",
    chains_08 => "chains-08",
    chains_3 => "chains-3",
    incomplete_08 => "incomplete-08",
    orphan_08 => "orphan-08",
);

#[test]
fn every_fixture_has_a_test() {
    let mut dirs: Vec<String> = fs::read_dir(testdata().join("expected"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
    names.sort();
    assert_eq!(
        dirs, names,
        "testdata/expected and the fixtures! list differ"
    );
    let mut repos: Vec<String> = fs::read_dir(testdata().join("repos"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    repos.sort();
    assert_eq!(repos, names, "testdata/repos and the fixtures! list differ");
}

/// The committed expected trees are what `duplicity restore` (0.8) gives for the committed
/// repositories, read through Tree::capture: checks the data and both tree writers at once.
#[test]
fn expected_trees_match_upstream_restore() {
    let Some(dup) = duplicity(Version::V08) else {
        return;
    };
    for name in NAMES {
        let f = fixture(name);
        let mut lab = Lab::new(dup.clone());
        lab.repo = f.repo.clone();
        lab.repo_opts = f.options.iter().map(Into::into).collect();
        for (time, tree) in &f.trees {
            let restored = lab.restore(*time);
            tree.assert_same(
                &restored,
                compare_as_made_by_root(),
                &format!("testdata {name}: duplicity restore --time {time} vs the .tree file"),
            );
        }
    }
}
