//! Tests of the test harness itself (tests/it/support): tree snapshots and their text form,
//! the report reader, time formatting, the fixture builder's tar rewriting, and that upstream
//! `duplicity restore` reproduces a source tree, which is what makes it usable as the oracle.
//! None of these run dupmirror.

use crate::support::fixture::tar::{self, Entry};
use crate::support::oracle::parse_list_current_files;
use crate::support::report;
use crate::support::tree::{escape, fnv1a64, unescape};
use crate::support::*;
use std::fs;
use std::process::Command;

/// A tree with every kind of awkward name and type (devices only as root).
fn awkward_tree(fs: &Fs) {
    fs.write("plain.txt", b"hello\n");
    fs.write("empty", b"");
    fs.mkdir("emptydir");
    fs.write("sub/deep/f", b"x");
    fs.write("caf\u{e9}.txt", "caf\u{e9}".as_bytes());
    fs.write(b"bad\xff\xfename", b"bad");
    fs.write("with space.txt", b"sp");
    fs.write("tab\tq\"'\\", b"t");
    fs.write("new\nline", b"n");
    fs.write("L".repeat(150), b"long");
    fs.symlink("link2file", "plain.txt");
    fs.symlink("link2dir", "sub");
    fs.symlink("dangling", "nowhere/at all");
    fs.fifo("fifo1");
    fs.chmod("plain.txt", 0o4755);
    fs.chmod("emptydir", 0o1777);
    fs.chmod("sub", 0o700);
    if is_root() {
        fs.mknod("chr1", "c", 1, 3);
        fs.mknod("blk1", "b", 7, 200);
        fs.chown("empty", 1234, 2345);
        fs.chown("link2file", 99, 98);
    }
    for d in ["sub/deep", "sub", "emptydir", "."] {
        fs.touch(d, 1_600_000_500);
    }
}

/// A fresh directory holding [`awkward_tree`], and its builder.
fn awkward() -> (tempfile::TempDir, Fs) {
    let dir = tempfile::tempdir().unwrap();
    let fs = Fs::new(dir.path());
    fs.set_now(1_600_000_000);
    awkward_tree(&fs);
    (dir, fs)
}

#[test]
fn tree_text_round_trips() {
    let (dir, _) = awkward();
    let tree = Tree::capture(dir.path());
    let text = tree.to_text();
    assert_eq!(Tree::parse(&text), tree, "parse(to_text(t)) != t");

    // The committed testdata/**/*.tree files are in the text form to_text writes.
    let testdata = manifest_dir().join("testdata");
    let mut dirs = vec![testdata.join("encrypted/expected")];
    for e in fs::read_dir(testdata.join("expected")).unwrap() {
        dirs.push(e.unwrap().path());
    }
    for d in dirs {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "tree") {
                let committed = fs::read_to_string(&p).unwrap();
                let again = Tree::parse(&committed).to_text();
                assert_eq!(again, committed, "{} is not in to_text's form", p.display());
            }
        }
    }

    // Spot checks of what was captured.
    let n = tree.get(b"bad\xff\xfename").expect("non-UTF-8 name");
    assert_eq!(
        (n.kind, n.size, n.fnv),
        (Kind::File, Some(3), Some(fnv1a64(b"bad")))
    );
    assert_eq!(tree.get(b"plain.txt").unwrap().mode, Some(0o4755));
    assert_eq!(tree.get(b"emptydir").unwrap().mode, Some(0o1777));
    assert_eq!(tree.get(b"emptydir").unwrap().mtime, Some(1_600_000_500));
    assert_eq!(tree.get(b".").unwrap().mtime, Some(1_600_000_500));
    let l = tree.get(b"dangling").unwrap();
    assert_eq!((l.kind, l.mode, l.mtime), (Kind::Symlink, None, None));
    assert_eq!(l.target.as_deref(), Some(&b"nowhere/at all"[..]));
    assert_eq!(tree.get(b"fifo1").unwrap().kind, Kind::Fifo);
    if is_root() {
        assert_eq!(tree.get(b"chr1").unwrap().rdev, Some((1, 3)));
        assert_eq!(tree.get(b"blk1").unwrap().rdev, Some((7, 200)));
        assert_eq!(tree.get(b"link2file").unwrap().uid, 99);
    }
}

#[test]
fn tree_diff_reports_each_kind_of_difference() {
    let (dir, fs) = awkward();
    let before = Tree::capture(dir.path());
    assert!(before.diff(&before, Compare::default()).is_empty());

    fs.write_at("plain.txt", b"hellO\n", 1_600_000_000); // same size and mtime
    fs.chmod("sub/deep/f", 0o600);
    fs.remove("empty");
    fs.write("extra", b"");
    fs.symlink("link2dir", "elsewhere");
    fs.touch("emptydir", 1_600_000_501);
    let after = Tree::capture(dir.path());
    let d = before.diff(&after, Compare::default());
    let joined = d.join("\n");
    for needle in [
        "plain.txt:",
        "sub/deep/f:",
        "empty: missing",
        "extra: unexpected",
        "link2dir:",
        "emptydir:",
    ] {
        assert!(joined.contains(needle), "no {needle:?} in diff:\n{joined}");
    }
    // The root's mtime changed too (entries added and removed).
    assert_eq!(d.len(), 7, "{joined}");
    // Ignoring directory mtimes hides exactly the two directory differences.
    assert_eq!(
        before
            .diff(&after, Compare::default().without_dir_mtimes())
            .len(),
        5
    );
    let msg = std::panic::catch_unwind(|| before.assert_same(&after, Compare::default(), "ctx"))
        .expect_err("assert_same must panic");
    let msg = msg.downcast_ref::<String>().unwrap();
    assert!(msg.starts_with("ctx: trees differ in 7 path(s)"), "{msg}");
}

#[test]
fn escaping_round_trips_every_byte() {
    let all: Vec<u8> = (0..=255u8).collect();
    let e = escape(&all);
    assert!(e.is_ascii() && !e.contains(' '));
    assert_eq!(unescape(&e), all);
    assert_eq!(escape(b"a b\\c\xff"), "a\\x20b\\x5cc\\xff");
}

#[test]
fn subtree_reroots() {
    let t = Tree::parse(
        "# dupmirror tree v1\n\
         . dir mode=0755 uid=0 gid=0 mtime=1\n\
         a dir mode=0700 uid=0 gid=0 mtime=2\n\
         a/x file mode=0644 uid=0 gid=0 mtime=3 size=0 fnv=cbf29ce484222325\n\
         a-b file mode=0644 uid=0 gid=0 mtime=3 size=0 fnv=cbf29ce484222325\n",
    );
    let s = t.subtree(b"a");
    assert_eq!(s.paths().len(), 2);
    assert_eq!(s.get(b".").unwrap().mode, Some(0o700));
    assert!(s.get(b"x").is_some());
}

#[test]
fn json_reader() {
    let v: serde_json::Value = report::parse(
        r#" {"a": [1, -2.5e3, "x\u00e9\n", true, null], "b": {}} "#,
        "doc",
    );
    assert_eq!(v["b"], serde_json::json!({}));
    assert_eq!(
        report::scalars(&v),
        vec!["a", "1", "-2500.0", "x\u{e9}\n", "b"]
    );
    for bad in [
        "",
        "{",
        "[1,]",
        "{\"a\" 1}",
        "01",
        "\"\t\"",
        "[1] x",
        "nul",
        "{'a': 1}",
    ] {
        let parsed = std::panic::catch_unwind(|| report::parse::<serde_json::Value>(bad, "bad"));
        assert!(parsed.is_err(), "accepted {bad:?}");
    }
    // A report lacking a field the tests read is refused too.
    let partial = std::panic::catch_unwind(|| report::parse::<report::State>("{}", "state"));
    assert!(partial.is_err(), "a state without end_time was accepted");
}

/// The rename the hostile-set tests apply to upstream's volumes changes the names asked for,
/// whatever their kind prefix, and nothing else.
#[test]
fn tar_rename_changes_only_the_names() {
    let long = "l".repeat(120);
    let entries = [
        Entry::dir("."),
        Entry::file("a", b"a data"),
        Entry::file("zz", b"zz data"),
        Entry::diff(&long, b"delta"),
        Entry::raw("multivol_snapshot/zz/2", b'0').data(b"chunk"),
        Entry::deleted("zz"),
    ];
    let stream = tar::tar(&entries);
    let (renamed, n) = tar::rename_entries(
        &stream,
        &[(b"zz", b"../escape"), (long.as_bytes(), b"short")],
    );
    assert_eq!(n, 4);
    let mut want = entries.to_vec();
    want[2].name = b"snapshot/../escape".to_vec();
    want[3].name = b"diff/short".to_vec();
    want[4].name = b"multivol_snapshot/../escape/2".to_vec();
    want[5].name = b"deleted/../escape".to_vec();
    assert_eq!(renamed, tar::tar(&want));
    // A long new name goes into a PAX record, as a forged entry's does.
    let (renamed, _) = tar::rename_entries(&stream, &[(b"a", long.as_bytes())]);
    want = entries.to_vec();
    want[1].name = format!("snapshot/{long}").into_bytes();
    assert_eq!(renamed, tar::tar(&want));
}

#[test]
fn time_formats() {
    assert_eq!(iso_time(T0), "2023-11-14T22:13:20Z");
    assert_eq!(compact_time(T0), "20231114T221320Z");
    assert_eq!(iso_time(0), "1970-01-01T00:00:00Z");
    assert_eq!(iso_time(951_825_600), "2000-02-29T12:00:00Z");
    // Against date(1) for a spread of times.
    for k in 0..5i64 {
        let tt = 1_000_000_000 + k * 123_456_789;
        let out = Command::new("date")
            .args(["-u", "-d", &format!("@{tt}"), "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), iso_time(tt));
    }
}

#[test]
fn list_current_files_parser() {
    let out = b"Local and Remote metadata are synchronized, no sync needed.\n\
Last full backup date: Tue Nov 14 22:13:20 2023\n\
Thu Nov 26 19:28:13 2026 .\n\
Thu Nov  6 19:28:13 2026 bad\xffx\n\
Thu Nov 26 19:28:13 2026 with space\n";
    let set = parse_list_current_files(out);
    let want: Vec<&[u8]> = vec![b".", b"bad\xffx", b"with space"];
    assert_eq!(set.into_iter().collect::<Vec<_>>(), want);
}

#[test]
fn random_bytes_are_deterministic_and_incompressible_enough() {
    let a = random_bytes(7, 100_000);
    assert_eq!(a, random_bytes(7, 100_000));
    assert_ne!(a[..1000], random_bytes(8, 1000)[..]);
    let mut counts = [0usize; 256];
    a.iter().for_each(|&b| counts[b as usize] += 1);
    assert!(counts.iter().all(|&c| c > 250 && c < 550), "skewed bytes");
}

/// The oracle is only an oracle if `duplicity restore` gives back the source: check it for
/// both versions on the awkward tree, after a full and after an incremental.
#[test]
fn duplicity_restore_reproduces_the_source() {
    for v in Version::ALL {
        let Some(dup) = duplicity(v) else { continue };
        let mut lab = Lab::new(dup);
        lab.fs.set_now(1_600_000_000);
        awkward_tree(&lab.fs);
        lab.full(t(0));
        let src0 = Tree::capture(&lab.src);
        src0.assert_same(
            &lab.restore(t(0)),
            Compare::default(),
            "restore of the full",
        );

        lab.fs.set_now(1_600_001_000);
        lab.fs.remove("plain.txt");
        lab.fs.write("plain.txt/inner", b"now a dir");
        lab.fs.remove("sub");
        lab.fs.write("sub", b"now a file");
        lab.fs.fifo("link2file");
        lab.fs.write("fifo1", b"was a fifo");
        lab.fs.chmod("empty", 0o600);
        lab.fs.touch("with space.txt", 1_650_000_000);
        lab.inc(t(1));
        let src1 = Tree::capture(&lab.src);
        src1.assert_same(&lab.restore(t(1)), Compare::default(), "restore of the inc");
        // And the first state is still there.
        src0.assert_same(&lab.restore(t(0)), Compare::default(), "restore at t0");

        // list-current-files names the same paths (no newline names in this check).
        let mut want = src1.paths();
        want.remove(&b"new\nline"[..]);
        let mut got = lab.list_current_files(t(1));
        got.remove(&b"new"[..]);
        got.remove(&b"line"[..]);
        assert_eq!(got, want, "list-current-files [{}]", lab.dup.label());

        let names = lab.repo_files();
        assert_eq!(names.len(), 6, "{names:?}");
        assert!(names.contains(&format!(
            "duplicity-inc.{}.to.{}.manifest",
            compact_time(t(0)),
            compact_time(t(1))
        )));
        fs::remove_dir_all(&lab.root).unwrap();
    }
}
