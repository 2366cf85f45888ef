//! Oracle tests on local repositories: upstream duplicity (0.8 and 3.x) writes a repository
//! step by step, and after every step dupmirror must reproduce `duplicity restore --time T`
//! exactly: on a host that syncs after every backup, on a host that syncs once at the end, and
//! on fresh hosts that sync `--time T` (see tests/it/support/scenario.rs).

use crate::support::scenario::{self, full, inc, Step};
use crate::support::*;

both_versions!(
    edge_names,
    edge_types,
    big_file_across_volumes,
    metadata_changes,
    subtree_deleted_and_recreated,
    long_chain,
    two_chains,
    file_prefixes,
    plain_volumes,
);

/// Unicode and non-UTF-8 names, names and paths over 100 (and 255) bytes, awkward bytes,
/// index-order traps, empty files and directories.
fn edge_names(dup: Duplicity) {
    let long = "n".repeat(150);
    let longdir = "D".repeat(120);
    let steps = vec![
        full(|fs| {
            fs.write("plain.txt", b"plain\n");
            fs.write("caf\u{e9}.txt", "caf\u{e9}\n".as_bytes());
            fs.write(
                "\u{65e5}\u{672c}/\u{30d5}\u{30a1}\u{30a4}\u{30eb}",
                b"unicode dir\n",
            );
            fs.write(b"bad\xff\xfename", b"not utf-8\n");
            fs.write(b"dir\xe9/inner", b"in a latin-1 dir\n");
            fs.write(&long, b"long name\n");
            fs.write(format!("{longdir}/{long}"), b"path over 255 bytes\n");
            fs.symlink("longlink", format!("{longdir}/{long}"));
            fs.symlink("L".repeat(140), "plain.txt");
            fs.write("with space.txt", b"space\n");
            fs.write(" leading space", b"lead\n");
            fs.write("trailing space ", b"trail\n");
            fs.write("tab\tname", b"tab\n");
            fs.write("quote\"and'back\\slash", b"quotes\n");
            fs.write("new\nline", b"newline\n");
            fs.write("cr\rname", b"cr\n");
            fs.write("-dash", b"dash\n");
            fs.write(".hidden", b"hidden\n");
            fs.write("percent%41 star*?[x]", b"glob\n");
            // Index order is by components: ("a","x") < ("a-b",) although "a-b" < "a/x".
            fs.write("a/x", b"a/x\n");
            fs.write("a-b", b"a-b\n");
            fs.write("a.b", b"a.b\n");
            fs.write("a0", b"a0\n");
            fs.write("empty", b"");
            fs.mkdir("emptydir");
            fs.mkdir("e1/e2/e3");
        }),
        inc(|fs| {
            fs.write("caf\u{e9}.txt", b"changed\n");
            fs.remove(b"bad\xff\xfename");
            fs.write(b"bad\xfe\xffname", b"renamed\n");
            fs.write(
                format!("\u{65e5}\u{672c}/{long}"),
                b"long name in a unicode dir\n",
            );
            fs.remove("a-b");
            fs.write("a/x", b"changed x\n");
            fs.remove("e1/e2/e3");
            fs.write("new\nline", b"changed newline\n");
            fs.write("empty", b"no longer empty\n");
            fs.write("plain.txt", b"");
            fs.write("emptydir/.keep", b"");
        }),
        inc(|fs| {
            fs.remove(&long);
            fs.remove(&longdir);
            fs.write("a-b/inside", b"a-b is a dir now\n");
            fs.remove("emptydir");
            fs.mkdir("emptydir2");
            fs.remove(b"dir\xe9");
            fs.symlink("longlink", "T".repeat(200));
            fs.write(b"dir\xe9", b"a file where a non-UTF-8 dir was\n");
        }),
    ];
    scenario::run(dup, "edge names", |l| l, &[], steps);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    File,
    Dir,
    Link,
    Fifo,
    Chr,
    Blk,
}

fn make(fs: &Fs, rel: &str, ty: Ty, variant: u32) {
    fs.remove(rel);
    match ty {
        Ty::File => fs.write(rel, format!("file {rel} v{variant}\n").as_bytes()),
        Ty::Dir => {
            fs.write(
                format!("{rel}/child"),
                format!("child v{variant}\n").as_bytes(),
            );
            fs.mkdir(format!("{rel}/sub/deeper"));
            fs.symlink(format!("{rel}/sub/l"), "../child");
            fs.fifo(format!("{rel}/sub/fifo"));
        }
        Ty::Link => fs.symlink(rel, format!("target-{variant}")),
        Ty::Fifo => fs.fifo(rel),
        Ty::Chr => fs.mknod(rel, "c", 1, 3 + variant),
        Ty::Blk => fs.mknod(rel, "b", 7, 100 + variant),
    }
}

fn types() -> Vec<Ty> {
    let mut v = vec![Ty::File, Ty::Dir, Ty::Link, Ty::Fifo];
    if is_root() {
        v.extend([Ty::Chr, Ty::Blk]);
    } else {
        eprintln!("note: not root, device nodes are not tested");
    }
    v
}

fn pairs() -> Vec<(String, Ty, Ty)> {
    let tys = types();
    let mut v = Vec::new();
    for &a in &tys {
        for &b in &tys {
            if a != b {
                v.push((format!("p_{a:?}_to_{b:?}").to_lowercase(), a, b));
            }
        }
    }
    v
}

/// Symlinks of every sort, fifos, device nodes (as root), and every type change between file,
/// directory (with contents), symlink, fifo and devices, in both directions.
fn edge_types(dup: Duplicity) {
    let steps = vec![
        full(|fs| {
            for (p, a, _) in pairs() {
                make(fs, &p, a, 0);
            }
            fs.write("plain", b"plain\n");
            fs.write("dir/f", b"in dir\n");
            fs.symlink("links/to_file", "../plain");
            fs.symlink("links/to_dir", "../dir");
            fs.symlink("links/dangling", "nowhere");
            fs.symlink("links/abs", "/etc/hostname");
            fs.symlink("links/up", "../../outside/of/the/tree");
            fs.symlink("links/self", "self");
            fs.symlink("links/space target", "a b\tc");
            fs.fifo("fifo");
            fs.chmod("fifo", 0o600);
            if is_root() {
                fs.mknod("dev/null-like", "c", 1, 3);
                fs.mknod("dev/loop-like", "b", 7, 0);
                fs.chown("links/to_file", 1234, 2345);
            }
        }),
        inc(|fs| {
            for (p, _, b) in pairs() {
                make(fs, &p, b, 1);
            }
            fs.symlink("links/to_file", "../dir/f");
            fs.remove("dir");
            fs.write("nowhere", b"the dangling link resolves now\n");
            fs.symlink("links/self", "other");
            fs.chmod("fifo", 0o644);
            if is_root() {
                fs.mknod("dev/null-like", "c", 1, 5);
                // Upstream records a symlink's owner only when its target changes too.
                fs.symlink("links/abs", "/etc/hosts");
                fs.chown("links/abs", 99, 98);
            }
        }),
        inc(|fs| {
            for (p, a, _) in pairs() {
                make(fs, &p, a, 2);
            }
            fs.remove("links");
            fs.write("links", b"links is a file now\n");
        }),
        inc(|fs| {
            for (p, _, _) in pairs() {
                fs.remove(&p);
            }
            fs.remove("links");
            fs.symlink("links", "plain");
        }),
        inc(|fs| {
            for (p, _, b) in pairs() {
                make(fs, &p, b, 4);
            }
            fs.remove("links");
            make(fs, "links", Ty::Dir, 4);
        }),
    ];
    scenario::run(dup, "edge types", |l| l, &[], steps);
}

/// `--volsize 1`: a 2.6 MB incompressible file spans three volumes; then small and large
/// (multi-volume) deltas, growth, truncation, chunk-size multiples and a metadata-only change.
fn big_file_across_volumes(dup: Duplicity) {
    let steps = vec![
        full(|fs| {
            fs.write("a", b"before the big file\n");
            fs.write("big.bin", &random_bytes(1, 2_600_000));
            fs.write("exact64k", &random_bytes(2, 65_536));
            fs.write("exact128k", &random_bytes(3, 131_072));
            fs.write("z", b"after the big file\n");
        }),
        inc(|fs| {
            fs.modify("big.bin", |d| {
                d[1_300_000..1_300_100].copy_from_slice(&random_bytes(9, 100))
            });
        }),
        inc(|fs| {
            fs.modify("big.bin", |d| {
                d[600_000..1_900_000].copy_from_slice(&random_bytes(4, 1_300_000))
            });
        }),
        inc(|fs| {
            fs.modify("big.bin", |d| d.extend(random_bytes(5, 300_000)));
            fs.write("exact64k", &random_bytes(6, 131_072));
            fs.write("exact128k", &random_bytes(7, 65_536));
        }),
        inc(|fs| {
            fs.modify("big.bin", |d| d.truncate(1000));
            fs.write("big2.bin", &random_bytes(8, 1_500_000));
        }),
        inc(|fs| {
            fs.remove("big.bin");
            fs.chmod("big2.bin", 0o600);
        }),
    ];
    let out = scenario::run(
        dup,
        "big file",
        |l| l.backup_opts(&["--volsize", "1"]),
        &[],
        steps,
    );
    // The scenario must really have produced multi-volume sets.
    let names = out.lab.repo_files();
    let full_vol3 = format!("duplicity-full.{}.vol3.difftar", compact_time(t(0)));
    let inc2_vol2 = format!(
        "duplicity-inc.{}.to.{}.vol2.difftar",
        compact_time(t(1)),
        compact_time(t(2))
    );
    for want in [full_vol3, inc2_vol2] {
        assert!(
            names.iter().any(|n| n.starts_with(&want)),
            "no {want} in {names:?}"
        );
    }
}

/// Permission-only, mtime-only, same-size and ownership changes (ownership as root).
fn metadata_changes(dup: Duplicity) {
    let steps = vec![
        full(|fs| {
            for (name, mode) in [
                ("f644", 0o644),
                ("f600", 0o600),
                ("fexec", 0o755),
                ("suid", 0o4755),
                ("sgid", 0o2755),
                ("none", 0o000),
            ] {
                fs.write(name, format!("{name}\n").as_bytes());
                fs.chmod(name, mode);
            }
            fs.mkdir("sticky");
            fs.chmod("sticky", 0o1777);
            fs.write("private/f", b"private\n");
            fs.chmod("private", 0o700);
            fs.write("ro/f", b"in a read-only dir\n");
            fs.chmod("ro", 0o555);
            fs.fifo("fifo");
            fs.chmod("fifo", 0o600);
            fs.write("d/f", b"d\n");
            fs.symlink("link", "f644");
            if is_root() {
                fs.write("owned", b"owned\n");
                fs.chown("owned", 1234, 2345);
                fs.write("nobody", b"nobody\n");
                fs.chown("nobody", 65534, 65534);
            }
        }),
        inc(|fs| {
            fs.chmod("f644", 0o640);
            fs.chmod("fexec", 0o700);
            fs.chmod("suid", 0o755);
            fs.chmod("sgid", 0o2750);
            fs.chmod("none", 0o444);
            fs.chmod("sticky", 0o777);
            fs.chmod("private", 0o750);
            fs.chmod("fifo", 0o644);
            fs.chmod(".", 0o750);
        }),
        inc(|fs| {
            fs.touch("f600", T0 - 5000);
            fs.touch("d", T0 - 6000);
            fs.touch("fifo", T0 - 7000);
            fs.touch("ro", T0 - 8000);
            fs.touch("d/f", T0 + 999_999);
        }),
        inc(|fs| {
            fs.write("f644", b"F644\n"); // same size, new mtime
            fs.chmod("ro", 0o755);
            fs.write("ro/f", b"IN A READ-ONLY DIR\n");
            fs.chmod("ro", 0o555);
            if is_root() {
                fs.chown("owned", 4321, 4321);
                // Upstream records a symlink's owner only when its target changes too.
                fs.symlink("link", "f600");
                fs.chown("link", 77, 78);
                fs.chown("d", 99, 99);
                fs.chown("nobody", 0, 0);
            }
        }),
        inc(|fs| {
            // New content with an mtime older than before. (Upstream does not notice a size
            // change when the mtime stays the same, so that is not a case for the oracle.)
            fs.write_at("f600", b"f600 grew\n", T0 - 50_000);
            fs.chmod(".", 0o755);
        }),
    ];
    scenario::run(dup, "metadata changes", |l| l, &[], steps);
}

/// A subtree deleted, recreated with other types, replaced by a symlink, then a directory
/// again; a directory "renamed".
fn subtree_deleted_and_recreated(dup: Duplicity) {
    let steps = vec![
        full(|fs| {
            fs.write("tree/a/b/c/file1", b"file1\n");
            fs.write("tree/a/b/file2", b"file2\n");
            fs.write("tree/x", b"x\n");
            fs.mkdir("tree/empty");
            fs.write("old/one", b"one\n");
            fs.write("old/two/three", b"three\n");
            fs.write("keep", b"keep\n");
        }),
        inc(|fs| {
            fs.remove("tree");
            fs.remove("old");
            fs.write("new/one", b"one\n");
            fs.write("new/two/three", b"three\n");
        }),
        inc(|fs| {
            fs.write("tree/a", b"a is a file now\n");
            fs.write("tree/b/c/d/file", b"deep\n");
            fs.write("tree/x/inside", b"x is a dir now\n");
        }),
        inc(|fs| {
            fs.remove("tree");
            fs.symlink("tree", "new");
        }),
        inc(|fs| {
            fs.remove("tree");
            fs.write("tree/a/b/c/file1", b"file1 again, different\n");
            fs.remove("new");
            fs.write("new", b"new is a file\n");
        }),
    ];
    scenario::run(dup, "subtree", |l| l, &[], steps);
}

/// A full and 22 incrementals with small changes each.
fn long_chain(dup: Duplicity) {
    let mut steps: Vec<Step> = vec![full(|fs| {
        for i in 0..10 {
            fs.write(format!("f{i:02}"), format!("initial {i}\n").as_bytes());
        }
        for d in 0..3 {
            fs.mkdir(format!("d{d}"));
        }
    })];
    for i in 1..=22u32 {
        steps.push(inc(move |fs| {
            fs.write(
                format!("f{:02}", i % 10),
                format!("version {i}\n").as_bytes(),
            );
            fs.write(format!("d{}/n{i}", i % 3), format!("new {i}\n").as_bytes());
            if i > 3 {
                fs.remove(format!("d{}/n{}", (i - 3) % 3, i - 3));
            }
            let mode = if i % 2 == 0 { 0o600 } else { 0o644 };
            fs.chmod(format!("f{:02}", (i + 5) % 10), mode);
            if i % 7 == 0 {
                let p = format!("f{:02}", (i + 3) % 10);
                fs.remove(&p);
                fs.write(format!("{p}/now-a-dir"), b"dir\n");
            }
            if i % 7 == 1 && i > 1 {
                let p = format!("f{:02}", (i + 2) % 10);
                fs.remove(&p);
                fs.write(&p, format!("file again at {i}\n").as_bytes());
            }
        }));
    }
    // Every step is checked on the incremental host; fresh hosts check every 4th time.
    scenario::run_from(
        Lab::new(dup),
        "long chain",
        &[],
        steps,
        4,
        scenario::url_or_path,
    );
}

/// Two chains and a third full: full, incs, a new full of an unchanged tree (adopted), incs,
/// a new full with changes, an inc. Also times before the first backup and between chains.
fn two_chains(dup: Duplicity) {
    let steps = vec![
        full(|fs| {
            fs.write("a", b"a0\n");
            fs.write("dir/b", b"b0\n");
            fs.write("gone-later", b"g\n");
        }),
        inc(|fs| fs.write("a", b"a1\n")),
        inc(|fs| fs.write("dir/c", b"c2\n")),
        full(|_fs| {}),
        inc(|fs| {
            fs.write("a", b"a4\n");
            fs.remove("gone-later");
        }),
        inc(|fs| fs.chmod("dir/b", 0o600)),
        full(|fs| {
            fs.remove("dir");
            fs.write("dir", b"dir is a file in the third chain\n");
        }),
        inc(|fs| fs.write("z", b"z7\n")),
    ];
    let out = scenario::run(dup, "two chains", |l| l, &[], steps);
    // Before the first backup duplicity restores the first full.
    out.check_time(T0 - 500, &(T0 - 500).to_string());
    // In the gap between chains: the latest chain that ends before T.
    out.check_time(t(2) + 500, &iso_time(t(2) + 500));
    out.check_time(t(5) + 1, &compact_time(t(5) + 1));
    // Between two sets of one chain.
    out.check_time(t(4) + 500, &(t(4) + 500).to_string());
    // Long after the last backup.
    out.check_time(t(100), &t(100).to_string());
}

/// All four `--file-prefix*` options: dupmirror told the prefixes, and finding them itself.
fn file_prefixes(dup: Duplicity) {
    let prefixes = [
        "--file-prefix=P_",
        "--file-prefix-archive=A_",
        "--file-prefix-manifest=M_",
        "--file-prefix-signature=S_",
    ];
    let steps = vec![
        full(|fs| {
            fs.write("a", b"a\n");
            fs.write("d/b", b"b\n");
        }),
        inc(|fs| fs.write("a", b"a changed\n")),
        inc(|fs| {
            fs.remove("d");
            fs.write("c", b"c\n");
        }),
    ];
    let out = scenario::run(
        dup,
        "file prefixes",
        |l| l.repo_opts(&prefixes),
        &prefixes,
        steps,
    );
    let names = out.lab.repo_files();
    assert!(
        names.iter().all(|n| n.starts_with("P_")),
        "prefixes not applied: {names:?}"
    );
    // Without the options: the names are unambiguous, so dupmirror must find the sets itself.
    let (_, last) = out.oracles.last().unwrap();
    let host = out.lab.host("auto");
    let ctx = format!(
        "file prefixes [{}]: sync without --file-prefix options",
        out.lab.dup.label()
    );
    host.sync(&out.lab.repo, &[]).assert_ok(&ctx);
    last.assert_same(&host.tree(), Compare::default(), &ctx);
}

/// `--no-compression`: plain volumes and sigtars, multi-volume with `--volsize 1`.
fn plain_volumes(dup: Duplicity) {
    let steps = vec![
        full(|fs| {
            fs.write("big", &random_bytes(11, 1_500_000));
            fs.write("small", b"small\n");
            fs.write(b"n\xffame", b"raw\n");
        }),
        inc(|fs| {
            fs.modify("big", |d| {
                d[100_000..1_200_000].copy_from_slice(&random_bytes(12, 1_100_000))
            });
            fs.remove("small");
        }),
        inc(|fs| fs.write("small", b"back\n")),
    ];
    let out = scenario::run(
        dup,
        "plain volumes",
        |l| l.backup_opts(&["--no-compression", "--volsize", "1"]),
        &[],
        steps,
    );
    let names = out.lab.repo_files();
    assert!(
        names.iter().any(|n| n.ends_with(".vol2.difftar"))
            && !names.iter().any(|n| n.ends_with(".gz")),
        "expected plain multi-volume sets: {names:?}"
    );
}

/// 0.8 only: the scenario with the file names of `naming` (`--short-filenames`,
/// `--old-filenames`), which must show in the repository as `is_named` says.
fn naming_scenario(what: &str, setup: impl FnOnce(Lab) -> Lab, is_named: fn(&str) -> bool) {
    let Some(dup) = duplicity(Version::V08) else {
        return;
    };
    let out = scenario::run(dup, what, setup, &[], naming_steps());
    let names = out.lab.repo_files();
    assert!(names.iter().any(|n| is_named(n)), "{what}: {names:?}");
}

/// Base-36 times.
#[test]
fn short_filenames_dup08() {
    naming_scenario(
        "short filenames",
        |l| l.backup_opts(&["--short-filenames"]),
        |n| n.starts_with("di.") && n.ends_with(".dt.z"),
    );
}

/// W3 times with a zone offset.
#[test]
fn old_filenames_dup08() {
    naming_scenario(
        "old filenames",
        |l| {
            l.backup_opts(&["--old-filenames"])
                .env("TZ", "America/New_York")
        },
        |n| n.contains("-05:00.to."),
    );
}

fn naming_steps() -> Vec<Step<'static>> {
    vec![
        full(|fs| {
            fs.write("a", b"a\n");
            fs.write("d/b", b"b\n");
        }),
        inc(|fs| fs.write("a", b"a1\n")),
        inc(|fs| fs.remove("d")),
    ]
}
