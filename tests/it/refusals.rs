//! Damaged, unfinished and hostile repositories. dupmirror must either apply exactly what
//! upstream would restore (sets in progress, orphaned sets), or refuse with a non-zero exit, one
//! clear error line, DEST exactly as before and nothing written outside DEST.
//!
//! Hostile sets are made from real upstream sets whose entries are renamed by the fixture
//! builder (tests/it/support/fixture), which also rewrites the manifest's SHA1 so the damage
//! is reached.

use crate::support::fixture::{self, manifest};
use crate::support::source::path_bytes;
use crate::support::*;
use std::fs;
use std::path::{Path, PathBuf};

both_versions!(
    set_in_progress_is_not_applied,
    orphaned_incremental_is_not_applied,
    missing_volume,
    flipped_byte,
);

both_versions!(
    truncated_gzip_volume => |d| truncated(d, false),
    truncated_plain_volume => |d| truncated(d, true),
    dotdot_snapshot => |d| hostile(d, Rename::VolumeAndSigtar, &DOTDOT_SNAPSHOT),
    dotdot_nested => |d| hostile(d, Rename::VolumeAndSigtar, &DOTDOT_NESTED),
    dotdot_deleted => |d| hostile(d, Rename::VolumeAndSigtar, &DOTDOT_DELETED),
    dotdot_diff => |d| hostile(d, Rename::VolumeAndSigtar, &DOTDOT_DIFF),
    write_through_symlink_from_earlier_set =>
        |d| hostile(d, Rename::VolumeAndSigtar, &WRITE_THROUGH_SYMLINK),
    write_through_relative_symlink =>
        |d| hostile(d, Rename::VolumeAndSigtar, &WRITE_THROUGH_RELATIVE_SYMLINK),
    delete_through_symlink => |d| hostile(d, Rename::VolumeAndSigtar, &DELETE_THROUGH_SYMLINK),
    write_through_symlink_from_same_set =>
        |d| hostile(d, Rename::VolumeAndSigtar, &SYMLINK_FROM_SAME_SET),
    dotdot_snapshot_volume_only => |d| hostile(d, Rename::VolumeOnly, &DOTDOT_SNAPSHOT),
    dotdot_deleted_volume_only => |d| hostile(d, Rename::VolumeOnly, &DOTDOT_DELETED),
    dotdot_diff_volume_only => |d| hostile(d, Rename::VolumeOnly, &DOTDOT_DIFF),
    write_through_symlink_from_earlier_set_volume_only =>
        |d| hostile(d, Rename::VolumeOnly, &WRITE_THROUGH_SYMLINK),
    delete_through_symlink_volume_only =>
        |d| hostile(d, Rename::VolumeOnly, &DELETE_THROUGH_SYMLINK),
);

const ROOT_MTIME: i64 = T0 - 1_000_000;

/// Back up the lab's source as set `k` (full when k == 0) with the root's mtime pinned, so an
/// incremental holds only the entries the test made.
fn backup(lab: &mut Lab, k: i64) {
    lab.fs.touch(".", ROOT_MTIME);
    if k == 0 {
        lab.full(t(k));
    } else {
        lab.inc(t(k));
    }
}

fn base_tree(fs: &Fs) {
    fs.set_now(T0 - 10_000);
    fs.write("a", b"a\n");
    fs.write("dir/b", b"b\n");
    fs.write("dir/c", &random_bytes(1, 20_000));
}

/// The files of the incremental set that ends at `end`.
struct IncSet {
    volumes: Vec<PathBuf>,
    manifest: PathBuf,
    sigtar: PathBuf,
}

fn inc_set(lab: &Lab, end: i64) -> IncSet {
    let to = format!(".to.{}.", compact_time(end));
    let mut volumes: Vec<(u32, PathBuf)> = lab
        .repo_files()
        .into_iter()
        .filter(|n| n.starts_with("duplicity-inc.") && n.contains(&to) && n.contains(".vol"))
        .map(|n| {
            let num = n.split(".vol").nth(1).unwrap().split('.').next().unwrap();
            (num.parse().unwrap(), lab.repo.join(&n))
        })
        .collect();
    volumes.sort();
    assert!(
        !volumes.is_empty(),
        "no volumes for {to} in {:?}",
        lab.repo_files()
    );
    IncSet {
        volumes: volumes.into_iter().map(|(_, p)| p).collect(),
        manifest: lab.repo_file(&["duplicity-inc.", &to, ".manifest"]),
        sigtar: lab.repo_file(&["duplicity-new-signatures.", &to]),
    }
}

/// A host synced to the state at `t(k)`, checked against the oracle.
fn synced_host(lab: &Lab, label: &str, oracle: &Tree) -> Host {
    let host = lab.host(label);
    let ctx = format!("[{}] {label}: first sync", lab.dup.label());
    host.sync(&lab.repo, &[]).assert_ok(&ctx);
    oracle.assert_same(&host.tree(), Compare::default(), &ctx);
    host
}

/// `host.sync` must fail cleanly, leaving DEST as it was or at one of the `allowed` complete
/// states (a fresh host may apply the good full before it meets the bad incremental), and
/// nothing new beside DEST.
fn expect_refusal(lab: &Lab, host: &Host, what: &str, keywords: &[&str], allowed: &[&Tree]) {
    let before = host.tree_opt();
    let strays = host.strays();
    let ctx = format!("[{}] {what}", lab.dup.label());
    host.sync(&lab.repo, &[]).assert_refused(&ctx, keywords);
    assert_dest_unchanged_or_at(
        &before,
        &host.tree_opt(),
        allowed,
        &format!("{ctx}: DEST after refusal"),
    );
    assert_eq!(host.strays(), strays, "{ctx}: files appeared beside DEST");
}

fn corrupt(path: &Path, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let orig = read(path);
    let mut data = orig.clone();
    f(&mut data);
    fs::write(path, &data).unwrap();
    orig
}

// ---------------------------------------------------------------------------------------------
// Sets that are not (yet) part of the backup: applied like upstream restore does (not at all).

/// A backup in progress: volumes uploaded, then the sigtar, the manifest last. Until the
/// manifest is there the set must not be applied and sync succeeds with the earlier state;
/// once it is there, the set is applied.
fn set_in_progress_is_not_applied(dup: Duplicity) {
    let mut lab = Lab::new(dup);
    base_tree(&lab.fs);
    backup(&mut lab, 0);
    lab.fs.set_now(T0);
    lab.fs.write("a", b"a at t1\n");
    backup(&mut lab, 1);
    let o1 = lab.restore(t(1));
    let host = synced_host(&lab, "h", &o1);

    lab.fs.set_now(t(1));
    lab.fs.write("a", b"a at t2\n");
    lab.fs.write("new", &random_bytes(2, 3000));
    lab.fs.remove("dir/b");
    backup(&mut lab, 2);
    let o2 = lab.restore(t(2));
    let set = inc_set(&lab, t(2));
    let label = lab.dup.label();

    let manifest = read(&set.manifest);
    let sigtar = read(&set.sigtar);
    fs::remove_file(&set.manifest).unwrap();
    fs::remove_file(&set.sigtar).unwrap();
    for stage in ["volumes only", "volumes and sigtar"] {
        if stage == "volumes and sigtar" {
            fs::write(&set.sigtar, &sigtar).unwrap();
        }
        let ctx = format!("[{label}] set in progress ({stage}), host at t1");
        host.sync(&lab.repo, &[]).assert_ok(&ctx);
        o1.assert_same(&host.tree(), Compare::default(), &ctx);

        let fresh = lab.host("f");
        let ctx = format!("[{label}] set in progress ({stage}), fresh host");
        fresh.sync(lab.url(), &[]).assert_ok(&ctx);
        o1.assert_same(&fresh.tree(), Compare::default(), &ctx);
    }

    // The manifest arrives: the backup is complete.
    fs::write(&set.manifest, &manifest).unwrap();
    let ctx = format!("[{label}] set completed, host at t1");
    host.sync(&lab.repo, &[]).assert_ok(&ctx);
    o2.assert_same(&host.tree(), Compare::default(), &ctx);
}

/// An incremental whose predecessor is gone (interrupted remove-older-than, manual deletion)
/// does not link to any chain: upstream restores the chain without it.
fn orphaned_incremental_is_not_applied(dup: Duplicity) {
    let mut lab = Lab::new(dup);
    base_tree(&lab.fs);
    backup(&mut lab, 0);
    let mut host = None;
    for k in 1..=3 {
        lab.fs.set_now(t(k - 1));
        lab.fs.write("a", format!("a at t{k}\n").as_bytes());
        lab.fs.write(format!("n{k}"), b"new\n");
        backup(&mut lab, k);
        if k == 1 {
            // A host synced to t1 before the rest appears.
            host = Some(synced_host(&lab, "h", &lab.restore(t(1))));
        }
    }
    let host = host.unwrap();
    let o1 = lab.restore(t(1));
    // Delete the whole set t1 -> t2: set t2 -> t3 is orphaned.
    let from = format!(
        "duplicity-inc.{}.to.{}.",
        compact_time(t(1)),
        compact_time(t(2))
    );
    let sig = format!(
        "duplicity-new-signatures.{}.to.{}.",
        compact_time(t(1)),
        compact_time(t(2))
    );
    for n in lab.repo_files() {
        if n.starts_with(&from) || n.starts_with(&sig) {
            fs::remove_file(lab.repo.join(n)).unwrap();
        }
    }
    let label = lab.dup.label();
    // The oracle after the deletion, with 0.8 semantics for both versions: t3 gives t1.
    let oracle = match duplicity(Version::V08) {
        Some(d08) => lab.restore_by(&d08, t(3), &[]),
        None => o1.clone(),
    };
    o1.assert_same(&oracle, Compare::default(), "harness: orphan oracle");

    let ctx = format!("[{label}] orphaned incremental, host at t1");
    host.sync(&lab.repo, &[]).assert_ok(&ctx);
    o1.assert_same(&host.tree(), Compare::default(), &ctx);
    let fresh = lab.host("f");
    let ctx = format!("[{label}] orphaned incremental, fresh host");
    fresh.sync(&lab.repo, &[]).assert_ok(&ctx);
    o1.assert_same(&fresh.tree(), Compare::default(), &ctx);
}

// ---------------------------------------------------------------------------------------------
// Damaged volumes: refused; after the damage is repaired the same host syncs fine.

/// Build full t0 + inc t1 (made by `change`) and a host at t0; return the host and the
/// oracles at t0 and t1.
fn damaged_setup(lab: &mut Lab, change: impl Fn(&Fs)) -> (Host, Tree, Tree) {
    base_tree(&lab.fs);
    backup(lab, 0);
    let o0 = lab.restore(t(0));
    let host = synced_host(lab, "h", &o0);
    lab.fs.set_now(T0);
    change(&lab.fs);
    backup(lab, 1);
    let o1 = lab.restore(t(1));
    (host, o0, o1)
}

/// After a refusal and a repair of the repository, the host must sync to `o1` (the refusal
/// left no half-applied journal behind).
fn repaired_sync(lab: &Lab, host: &Host, o1: &Tree, what: &str) {
    let ctx = format!(
        "[{}] {what}: sync after the repository was repaired",
        lab.dup.label()
    );
    host.sync(&lab.repo, &[]).assert_ok(&ctx);
    o1.assert_same(&host.tree(), Compare::default(), &ctx);
}

fn missing_volume(dup: Duplicity) {
    let mut lab = Lab::new(dup).backup_opts(&["--volsize", "1"]);
    let (host, o0, o1) = damaged_setup(&mut lab, |fs| {
        fs.write("a", b"a at t1\n");
        fs.write("big", &random_bytes(3, 2_600_000));
    });
    let set = inc_set(&lab, t(1));
    assert!(set.volumes.len() >= 3, "want 3 volumes: {:?}", set.volumes);
    let vol2 = set.volumes[1].clone();
    let saved = read(&vol2);
    fs::remove_file(&vol2).unwrap();

    let keywords = ["missing", "not found", "no such"];
    expect_refusal(&lab, &host, "volume 2 missing, host at t0", &keywords, &[]);
    let fresh = lab.host("f");
    expect_refusal(
        &lab,
        &fresh,
        "volume 2 missing, fresh host",
        &keywords,
        &[&o0],
    );
    // The earlier state does not need the broken set.
    let ctx = format!(
        "[{}] volume of t1 missing, fresh host --time t0",
        lab.dup.label()
    );
    fresh
        .sync(&lab.repo, &["--time", &t(0).to_string()])
        .assert_ok(&ctx);
    o0.assert_same(&fresh.tree(), Compare::default(), &ctx);

    fs::write(&vol2, saved).unwrap();
    repaired_sync(&lab, &host, &o1, "missing volume");
}

fn flipped_byte(dup: Duplicity) {
    let mut lab = Lab::new(dup);
    let (host, o0, o1) = damaged_setup(&mut lab, |fs| {
        fs.write("a", b"a at t1\n");
        fs.write("mid", &random_bytes(4, 50_000));
    });
    let set = inc_set(&lab, t(1));
    let vol = set.volumes[0].clone();
    let saved = corrupt(&vol, |d| {
        let i = d.len() / 2;
        d[i] ^= 0x01;
    });
    let keywords = ["sha1", "hash", "checksum"];
    expect_refusal(&lab, &host, "flipped byte, host at t0", &keywords, &[]);
    let fresh = lab.host("f");
    expect_refusal(&lab, &fresh, "flipped byte, fresh host", &keywords, &[&o0]);
    fs::write(&vol, saved).unwrap();
    repaired_sync(&lab, &host, &o1, "flipped byte");
}

/// Truncate the volume in the middle of a file's data and give the manifest the hash of the
/// truncated file, so only the stream itself can tell.
fn truncated(dup: Duplicity, plain: bool) {
    let mut lab = Lab::new(dup);
    if plain {
        lab = lab.backup_opts(&["--no-compression"]);
    }
    let (host, o0, o1) = damaged_setup(&mut lab, |fs| {
        fs.write("a", b"a at t1\n");
        fs.write("mid", &random_bytes(5, 60_000));
        fs.write("zz", b"after mid\n");
    });
    let set = inc_set(&lab, t(1));
    let vol = set.volumes[0].clone();
    let saved_manifest = read(&set.manifest);
    let saved = corrupt(&vol, |d| {
        let n = d.len() * 6 / 10;
        d.truncate(n)
    });
    manifest::rewrite(&set.manifest, &[(1, &vol)], &[]);
    let what = if plain { "plain" } else { "gzip" };
    let keywords = ["truncat", "unexpected end", "eof", "short"];
    expect_refusal(
        &lab,
        &host,
        &format!("truncated {what} volume, host at t0"),
        &keywords,
        &[],
    );
    let fresh = lab.host("f");
    expect_refusal(
        &lab,
        &fresh,
        &format!("truncated {what} volume, fresh host"),
        &keywords,
        &[&o0],
    );
    fs::write(&vol, saved).unwrap();
    fs::write(&set.manifest, saved_manifest).unwrap();
    repaired_sync(&lab, &host, &o1, "truncated volume");
}

// ---------------------------------------------------------------------------------------------
// Hostile entry names.

/// Where the hostile names go: the volume alone exercises the volume reader's checks, the
/// volume and the new-signatures file together make a consistent hostile set.
#[derive(Clone, Copy, Debug)]
enum Rename {
    VolumeAndSigtar,
    VolumeOnly,
}

/// Rename entries of the set ending at `end` (volume 1, and the sigtar unless `mode` is
/// VolumeOnly), fix the manifest.
fn rename_in_set(lab: &Lab, end: i64, renames: &[(&str, &str)], mode: Rename) {
    let set = inc_set(lab, end);
    let files = match mode {
        Rename::VolumeAndSigtar => vec![&set.volumes[0], &set.sigtar],
        Rename::VolumeOnly => vec![&set.volumes[0]],
    };
    let renames: Vec<(&[u8], &[u8])> = renames
        .iter()
        .map(|(o, n)| (o.as_bytes(), n.as_bytes()))
        .collect();
    for file in files {
        fixture::rename_entries_in(file, &renames);
    }
    manifest::rewrite(&set.manifest, &[(1, &set.volumes[0])], &renames);
}

/// A hostile incremental at t1 on top of a full at t0: `base` adds to the full's tree,
/// `change` makes the real set that `renames` then turns hostile. A host at t0 and a fresh
/// host must both refuse it naming one of `keywords`, write nothing outside DEST, and `check`
/// must hold afterwards.
struct Hostile {
    what: &'static str,
    base: fn(&Lab),
    change: fn(&Fs),
    renames: &'static [(&'static str, &'static str)],
    keywords: &'static [&'static str],
    check: fn(&Lab, &Host),
}

fn hostile(dup: Duplicity, mode: Rename, case: &Hostile) {
    let mut lab = Lab::new(dup);
    base_tree(&lab.fs);
    (case.base)(&lab);
    backup(&mut lab, 0);
    let o0 = lab.restore(t(0));
    let host = synced_host(&lab, "h", &o0);
    lab.fs.set_now(T0);
    (case.change)(&lab.fs);
    backup(&mut lab, 1);
    rename_in_set(&lab, t(1), case.renames, mode);
    let what = &format!("{} ({mode:?})", case.what);
    let keywords = case.keywords;

    let outside = lab.root.join("outside");
    let outside_before = Tree::capture_opt(&outside);
    expect_refusal(&lab, &host, &format!("{what}, host at t0"), keywords, &[]);
    (case.check)(&lab, &host);
    let fresh = lab.host("f");
    expect_refusal(
        &lab,
        &fresh,
        &format!("{what}, fresh host"),
        keywords,
        &[&o0],
    );
    (case.check)(&lab, &fresh);
    let outside_after = Tree::capture_opt(&outside);
    assert_eq!(
        outside_before.map(|t| t.to_text()),
        outside_after.map(|t| t.to_text()),
        "[{}] {what}: the directory outside DEST changed",
        lab.dup.label()
    );
    // The good state before the hostile set is still reachable.
    let o0_again = lab.host("g");
    let ctx = format!("[{}] {what}: fresh host --time t0", lab.dup.label());
    o0_again
        .sync(&lab.repo, &["--time", &t(0).to_string()])
        .assert_ok(&ctx);
    o0.assert_same(&o0_again.tree(), Compare::default(), &ctx);
}

fn no_file(p: &Path, what: &str) {
    assert!(
        fs::symlink_metadata(p).is_err(),
        "{what}: {} was written outside DEST",
        p.display()
    );
}

fn nothing(_: &Lab) {}

fn outside_dir(lab: &Lab) -> PathBuf {
    let o = lab.root.join("outside");
    fs::create_dir_all(&o).unwrap();
    fs::write(o.join("victim"), b"outside\n").unwrap();
    o
}

const DOTDOT_SNAPSHOT: Hostile = Hostile {
    what: "snapshot/../escape",
    base: nothing,
    change: |fs| fs.write("zz", b"escaped\n"),
    renames: &[("zz", "../escape")],
    keywords: &[".."],
    check: |lab, host| {
        no_file(&host.dir.join("escape"), "snapshot/../escape");
        no_file(&lab.root.join("escape"), "snapshot/../escape");
    },
};

const DOTDOT_NESTED: Hostile = Hostile {
    what: "snapshot/dir/../../escape",
    base: nothing,
    change: |fs| fs.write("zz", b"escaped\n"),
    renames: &[("zz", "dir/../../escape")],
    keywords: &[".."],
    check: |lab, host| {
        no_file(&host.dir.join("escape"), "nested ..");
        no_file(&lab.root.join("escape"), "nested ..");
    },
};

const DOTDOT_DELETED: Hostile = Hostile {
    what: "deleted/../../victim",
    base: |lab| {
        // DEST/../../victim is <lab>/victim for DEST = <lab>/hN/d.
        fs::write(lab.root.join("victim"), b"victim\n").unwrap();
        lab.fs.write("zz", b"to be deleted\n");
    },
    change: |fs| fs.remove("zz"),
    renames: &[("zz", "../../victim")],
    keywords: &[".."],
    check: |lab, _| {
        assert_eq!(
            fs::read(lab.root.join("victim")).ok().as_deref(),
            Some(&b"victim\n"[..]),
            "deleted/../../victim removed a file outside DEST"
        );
    },
};

const DOTDOT_DIFF: Hostile = Hostile {
    what: "diff/../../outside/victim",
    base: |lab| {
        outside_dir(lab);
    },
    change: |fs| fs.write("dir/b", b"b changed at t1\n"),
    renames: &[("dir/b", "../../outside/victim")],
    keywords: &[".."],
    check: |_, host| no_file(&host.dir.join("outside"), "diff/../../outside/victim"),
};

const WRITE_THROUGH_SYMLINK: Hostile = Hostile {
    what: "snapshot/link/pwned with link -> /abs/outside from the full",
    base: |lab| {
        let o = outside_dir(lab);
        lab.fs.symlink("link", path_bytes(&o));
    },
    change: |fs| fs.write("zz", b"pwned\n"),
    renames: &[("zz", "link/pwned")],
    keywords: &["symlink"],
    check: |lab, _| no_file(&lab.root.join("outside/pwned"), "write through symlink"),
};

const WRITE_THROUGH_RELATIVE_SYMLINK: Hostile = Hostile {
    what: "snapshot/rel/pwned with rel -> ../../outside from the full",
    base: |lab| {
        outside_dir(lab);
        // DEST/rel -> ../../outside resolves to <lab>/outside for DEST = <lab>/hN/d.
        lab.fs.symlink("rel", "../../outside");
    },
    change: |fs| fs.write("zz", b"pwned\n"),
    renames: &[("zz", "rel/pwned")],
    keywords: &["symlink"],
    check: |lab, _| no_file(&lab.root.join("outside/pwned"), "write through symlink"),
};

const DELETE_THROUGH_SYMLINK: Hostile = Hostile {
    what: "deleted/link/victim with link -> /abs/outside from the full",
    base: |lab| {
        let o = outside_dir(lab);
        lab.fs.symlink("link", path_bytes(&o));
        lab.fs.write("zz", b"to be deleted\n");
    },
    change: |fs| fs.remove("zz"),
    renames: &[("zz", "link/victim")],
    keywords: &["symlink"],
    check: |lab, _| {
        let v = lab.root.join("outside/victim");
        assert_eq!(
            fs::read(&v).ok().as_deref(),
            Some(&b"outside\n"[..]),
            "deleted/link/victim removed or changed {}",
            v.display()
        );
    },
};

const SYMLINK_FROM_SAME_SET: Hostile = Hostile {
    what: "snapshot/link2 -> /abs/outside and snapshot/link2/pwned in one set",
    base: |lab| {
        outside_dir(lab);
    },
    change: |fs| {
        let o = fs.root.parent().unwrap().join("outside");
        fs.symlink("link2", path_bytes(&o));
        fs.write("link2x", b"pwned\n");
    },
    renames: &[("link2x", "link2/pwned")],
    keywords: &["symlink"],
    check: |lab, host| {
        no_file(&lab.root.join("outside/pwned"), "write through symlink");
        // Refused as a whole: not even the symlink was created.
        assert!(
            host.tree_opt().is_none_or(|t| t.get(b"link2").is_none()),
            "part of the refused set was applied"
        );
    },
};

#[test]
fn craft_rename_keeps_the_set_readable_by_upstream() {
    // Harness check: a harmless rename made by the fixture builder yields a set upstream
    // restores, so the hostile variants differ from a valid set only in the names they inject.
    let Some(dup) = duplicity(Version::V08) else {
        return;
    };
    let mut lab = Lab::new(dup);
    base_tree(&lab.fs);
    backup(&mut lab, 0);
    lab.fs.set_now(T0);
    lab.fs.write("zz", b"renamed\n");
    backup(&mut lab, 1);
    rename_in_set(&lab, t(1), &[("zz", "zy")], Rename::VolumeAndSigtar);
    let restored = lab.restore(t(1));
    let n = restored.get(b"zy").expect("renamed entry restored");
    assert_eq!(n.size, Some(8));
    assert!(restored.get(b"zz").is_none());
}
