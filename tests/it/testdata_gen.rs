//! The generator of the committed test data: `testdata/repos/<name>/` and
//! `testdata/expected/<name>/<T>.tree` (see testdata/README.md), and `testdata/encrypted/`.
//! Both are ignored tests, run by `scripts/make-testdata.sh` and
//! `scripts/make-testdata-gpg.sh` (as root, with both upstream versions installed), which
//! set `DUPMIRROR_MAKE_TESTDATA=1`; without it they only say how to run them.
//!
//! Upstream duplicity 0.8.22 or 3.2.1 writes each repository from a source tree built with
//! the same [`Fs`] every test uses; both versions restore it at every backup time T and must
//! give the same tree, which becomes `<T>.tree` (0.8.22 alone for the two repositories 3.2.1
//! cannot restore). Deterministic: backup times are pinned (T = 1700000000 + k*1000), every
//! file gets the step's mtime (`t(k) - 100`) and seeded content, and directories are set to
//! the step's time before each backup. File names and expected trees come out identical on
//! every run; volume bytes do not (gzip headers, the host name in manifests, gpg's salts).

use crate::support::gpg::{encrypted_lab, GpgHome};
use crate::support::scenario::{back_up, full, inc, Step};
use crate::support::*;
use std::fs;
use std::path::{Path, PathBuf};

/// Upstream 0.8 and 3.x, when this run may rewrite testdata/; if it may not, says how to.
fn upstreams() -> Option<(Duplicity, Duplicity)> {
    if !std::env::var("DUPMIRROR_MAKE_TESTDATA").is_ok_and(|v| v == "1") {
        eprintln!("testdata_gen: run scripts/make-testdata.sh or scripts/make-testdata-gpg.sh");
        return None;
    }
    if !is_root() {
        eprintln!("testdata_gen: warning: not root; the owners in the expected trees are yours");
    }
    let get = |v| duplicity(v).unwrap_or_else(|| panic!("upstream {} is needed", v.label()));
    Some((get(Version::V08), get(Version::V3)))
}

/// Backs up every step of `steps` (see [`back_up`]) with the source's directories set to the
/// step's time first.
fn write(lab: &mut Lab, steps: Vec<Step<'_>>) {
    for (k, step) in steps.into_iter().enumerate() {
        let change = step.change;
        let settled = Step {
            kind: step.kind,
            change: Box::new(move |fs: &Fs| {
                change(fs);
                fs.settle_dirs();
            }),
        };
        back_up(lab, k, &settled);
    }
}

/// Restores `lab`'s repository at every backup time with each of `dups`, requires the same
/// tree from all, and writes it to `dir/<T>.tree`; returns the trees.
fn expect(lab: &Lab, dups: &[&Duplicity], dir: &Path) -> Vec<String> {
    fs::create_dir_all(dir).unwrap();
    let mut texts = Vec::new();
    for &time in &lab.times {
        let trees: Vec<String> = dups
            .iter()
            .map(|d| lab.restore_by(d, time, &[]).to_text())
            .collect();
        for (d, text) in dups.iter().zip(&trees).skip(1) {
            assert_eq!(
                text,
                &trees[0],
                "{} and {} restore {} at {time} differently",
                dups[0].version_text,
                d.version_text,
                lab.repo.display()
            );
        }
        fs::write(dir.join(format!("{time}.tree")), &trees[0]).unwrap();
        texts.push(trees[0].clone());
    }
    texts
}

fn testdata() -> PathBuf {
    manifest_dir().join("testdata")
}

/// A lab writing `testdata/repos/<name>` with `dup`.
fn repo_lab(name: &str, dup: &Duplicity) -> Lab {
    let mut lab = Lab::new(dup.clone());
    lab.repo = testdata().join("repos").join(name);
    lab
}

/// A regular file with the step's mtime, as written by [`Fs::write`]; a symlink likewise.
fn link(fs: &Fs, rel: impl AsRef<[u8]>, target: impl AsRef<[u8]>) {
    fs.symlink(&rel, target);
    fs.touch(rel, fs.now());
}

/// Overwrites `size` bytes at `offset` of a file with seeded random bytes.
fn patch_random(fs: &Fs, rel: &str, offset: usize, seed: u64, size: usize) {
    fs.modify(rel, |d| {
        d[offset..offset + size].copy_from_slice(&random_bytes(seed, size))
    });
}

// ---------------------------------------------------------------------------------------------
// The basic tree: full + 3 incrementals

fn basic0(fs: &Fs) {
    fs.write("README.txt", b"dupmirror test repository\n");
    fs.write("docs/a.txt", b"alpha\n");
    fs.write("docs/b.txt", b"bravo\n");
    fs.write("bin/tool", b"#!/bin/sh\necho tool\n");
    fs.chmod("bin/tool", 0o755);
    link(fs, "link", "docs/a.txt");
    fs.write("data.bin", &random_bytes(1, 20_000));
}

fn basic1(fs: &Fs) {
    fs.write("docs/a.txt", b"alpha, changed at step 1\n");
    fs.write("docs/c.txt", b"charlie\n");
    fs.chmod("bin/tool", 0o700);
}

fn basic2(fs: &Fs) {
    fs.remove("docs/b.txt");
    patch_random(fs, "data.bin", 5000, 2, 300);
    link(fs, "link", "docs/c.txt");
}

fn basic3(fs: &Fs) {
    fs.remove("bin");
    fs.write("docs/sub/d.txt", b"delta\n");
    fs.mkdir("var/empty");
    fs.chmod("README.txt", 0o600);
}

/// The basic tree's first `n` steps, a full then incrementals.
fn basic<'a>(n: usize) -> Vec<Step<'a>> {
    let mut steps = vec![full(basic0), inc(basic1), inc(basic2), inc(basic3)];
    steps.truncate(n);
    steps
}

// ---------------------------------------------------------------------------------------------
// Edge cases

fn edge0(fs: &Fs) {
    fs.write("plain.txt", b"plain\n");
    fs.write("caf\u{e9}.txt", "caf\u{e9}\n".as_bytes());
    fs.write("\u{65e5}\u{672c}/file", b"unicode dir\n");
    fs.write(b"bad\xff\xfename", b"not utf-8\n");
    fs.write("n".repeat(150), b"name of 150 bytes\n");
    fs.write("with space.txt", b"space\n");
    fs.write("empty", b"");
    fs.mkdir("emptydir");
    fs.write("dir2file/child", b"becomes a file\n");
    fs.write("file2dir", b"becomes a dir\n");
    fs.write("subtree/a/b/file", b"deep\n");
    fs.write("subtree/c", b"c\n");
    link(fs, "link2file", "plain.txt");
    link(fs, "link2dir", "subtree");
    link(fs, "dangling", "nowhere at all");
    fs.fifo("fifo");
    fs.write("perms.txt", b"permissions change\n");
    fs.chmod("perms.txt", 0o644);
    fs.chmod("emptydir", 0o750);
}

fn edge1(fs: &Fs) {
    fs.remove("dir2file");
    fs.write("dir2file", b"now a file\n");
    fs.remove("file2dir");
    fs.write("file2dir/child", b"now a dir\n");
    fs.remove("subtree");
    fs.chmod("perms.txt", 0o4755);
    fs.chmod("emptydir", 0o700);
    fs.write(b"bad\xff\xfename", b"not utf-8, changed\n");
    link(fs, "link2file", "caf\u{e9}.txt");
}

fn edge2(fs: &Fs) {
    fs.write("subtree/a/b/file", b"deep, recreated\n");
    fs.mkdir("subtree/new");
    fs.remove("n".repeat(150));
    fs.write("empty", b"not empty any more\n");
    fs.remove("fifo");
    fs.write("fifo", b"fifo became a file\n");
}

/// The files of the incremental set of `lab` that ends at `end`.
fn inc_set_files(lab: &Lab, end: i64) -> Vec<PathBuf> {
    let to = format!(".to.{}.", compact_time(end));
    lab.repo_files()
        .into_iter()
        .filter(|n| {
            (n.starts_with("duplicity-inc.") || n.starts_with("duplicity-new-signatures."))
                && n.contains(&to)
        })
        .map(|n| lab.repo.join(n))
        .collect()
}

#[test]
#[ignore = "rewrites testdata/repos and testdata/expected: run scripts/make-testdata.sh"]
fn repos() {
    let Some((dup08, dup3)) = upstreams() else {
        return;
    };
    let both = [&dup08, &dup3];
    let (repos, expected) = (testdata().join("repos"), testdata().join("expected"));
    remove_tree(&repos);
    remove_tree(&expected);
    let prefixes = [
        "--file-prefix=P_",
        "--file-prefix-archive=A_",
        "--file-prefix-manifest=M_",
        "--file-prefix-signature=S_",
    ];
    // (name, writer, backup options, repository options, steps)
    type Spec<'a> = (
        &'a str,
        &'a Duplicity,
        &'a [&'a str],
        &'a [&'a str],
        Vec<Step<'a>>,
    );
    let volsize = vec![
        full(|fs: &Fs| {
            fs.write("a.txt", b"before the big file\n");
            fs.write("big.bin", &random_bytes(7, 2_300_000));
            fs.write("z.txt", b"after the big file\n");
        }),
        inc(|fs: &Fs| patch_random(fs, "big.bin", 1_100_000, 8, 100_000)),
    ];
    let specs: Vec<Spec> = vec![
        ("gz-08", &dup08, &[], &[], basic(4)),
        ("gz-3", &dup3, &["--jsonstat"], &[], basic(4)),
        ("plain-08", &dup08, &["--no-compression"], &[], basic(3)),
        ("plain-3", &dup3, &["--no-compression"], &[], basic(3)),
        ("short-08", &dup08, &["--short-filenames"], &[], basic(3)),
        ("old-08", &dup08, &["--old-filenames"], &[], basic(3)),
        ("prefix-08", &dup08, &[], &prefixes, basic(3)),
        ("prefix-3", &dup3, &[], &prefixes, basic(3)),
        ("volsize-08", &dup08, &["--volsize", "1"], &[], volsize),
        (
            "edge-08",
            &dup08,
            &[],
            &[],
            vec![full(edge0), inc(edge1), inc(edge2)],
        ),
        (
            "edge-3",
            &dup3,
            &[],
            &[],
            vec![full(edge0), inc(edge1), inc(edge2)],
        ),
        ("chains-08", &dup08, &[], &[], chains()),
        ("chains-3", &dup3, &[], &[], chains()),
    ];
    for (name, dup, backup_opts, repo_opts, steps) in specs {
        eprintln!("testdata_gen: repository {name}");
        let mut lab = repo_lab(name, dup)
            .backup_opts(backup_opts)
            .repo_opts(repo_opts);
        if name == "old-08" {
            // W3 times with a zone offset in the names.
            lab = lab.env("TZ", "America/New_York");
        }
        write(&mut lab, steps);
        expect(&lab, &both, &expected.join(name));
        if !repo_opts.is_empty() {
            let options: String = repo_opts.iter().map(|o| format!("{o}\n")).collect();
            fs::write(expected.join(name).join("options"), options).unwrap();
        }
    }

    // Broken repositories (0.8 semantics; 3.x cannot restore them), which must restore like
    // the state before the damage.
    // A set in progress: its volumes and sigtar are there, its manifest is not.
    let mut lab = repo_lab("incomplete-08", &dup08);
    write(&mut lab, basic(3));
    for f in inc_set_files(&lab, t(2)) {
        if f.to_string_lossy().ends_with(".manifest") {
            fs::remove_file(f).unwrap();
        }
    }
    let trees = expect(&lab, &[&dup08], &expected.join("incomplete-08"));
    assert_eq!(trees[1], trees[2], "incomplete-08: t2 should restore as t1");
    // The set t1 -> t2 is gone: the set t2 -> t3 links to no chain.
    let mut lab = repo_lab("orphan-08", &dup08);
    write(&mut lab, basic(4));
    for f in inc_set_files(&lab, t(2)) {
        fs::remove_file(f).unwrap();
    }
    let trees = expect(&lab, &[&dup08], &expected.join("orphan-08"));
    assert_eq!(trees[1], trees[3], "orphan-08: t3 should restore as t1");
}

/// Two chains: full, inc, full, inc.
fn chains<'a>() -> Vec<Step<'a>> {
    vec![full(basic0), inc(basic1), full(basic2), inc(basic3)]
}

// ---------------------------------------------------------------------------------------------
// The encrypted repository

#[test]
#[ignore = "rewrites testdata/encrypted: run scripts/make-testdata-gpg.sh"]
fn encrypted() {
    let Some((dup08, dup3)) = upstreams() else {
        return;
    };
    let out = testdata().join("encrypted");
    let passphrase = fs::read_to_string(out.join("passphrase")).unwrap();
    let passphrase = passphrase.lines().next().expect("a passphrase");
    // gpg's defaults (AES256, ZIP, MDC, its own key derivation), as a user's would be.
    let home = GpgHome::with_gpg_defaults().expect("gpg is needed");
    let mut lab = encrypted_lab(Lab::new(dup08.clone()), &home, passphrase, &[]);
    lab.repo = out.join("repo");
    remove_tree(&lab.repo);
    remove_tree(&out.join("expected"));
    let steps = vec![
        full(|fs: &Fs| {
            fs.write(
                "README.txt",
                b"an encrypted dupmirror test repository; passphrase: \
                  testdata/encrypted/passphrase\n",
            );
            fs.write("docs/a.txt", b"alpha\n");
            fs.write("docs/b.txt", b"bravo\n");
            fs.write("data.bin", &random_bytes(7, 30_000));
            fs.symlink("link", "docs/a.txt");
        }),
        inc(|fs: &Fs| {
            fs.write("docs/a.txt", b"alpha, changed at step 1\n");
            fs.write("docs/c.txt", b"charlie\n");
        }),
        inc(|fs: &Fs| {
            fs.remove("docs/b.txt");
            patch_random(fs, "data.bin", 9000, 8, 500);
            fs.symlink("link", "docs/c.txt");
        }),
    ];
    write(&mut lab, steps);
    expect(&lab, &[&dup08, &dup3], &out.join("expected"));
}
