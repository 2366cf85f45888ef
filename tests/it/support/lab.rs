//! A lab: a source tree, the repository upstream duplicity writes of it, and hosts (a DEST and
//! its state directory) that sync from it, all under one short temporary directory. Also the
//! checks of where a failed run must leave DEST.

use super::oracle::{parse_list_current_files, BackupKind, Duplicity};
use super::process::{dupmirror_env, run_tool, Run};
use super::source::Fs;
use super::tree::{Compare, Kind, Tree};
use super::{os, process::truncate_text, report};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};

/// A source tree, a repository written by upstream duplicity, and scratch space, all under one
/// short temporary directory.
pub struct Lab {
    pub dup: Duplicity,
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    /// The source tree, `<root>/src`. Upstream runs in `root` and is given the relative path
    /// `src`, which keeps the temporary directory out of the manifests.
    pub src: PathBuf,
    pub repo: PathBuf,
    pub archive: PathBuf,
    pub name: String,
    /// Options for backups only (`--volsize 1`, `--no-compression`, naming modes).
    pub backup_opts: Vec<OsString>,
    /// Options for every upstream command on the repository (file prefixes).
    pub repo_opts: Vec<OsString>,
    /// Extra environment for upstream (TZ for `--old-filenames`; gpg's home and passphrase).
    pub env: Vec<(OsString, OsString)>,
    /// Encryption options for every upstream command (default `--no-encryption`).
    pub crypt_opts: Vec<OsString>,
    /// Environment for dupmirror in the scenario driver (gpg's home and passphrase).
    pub dupmirror_env: Vec<(OsString, OsString)>,
    /// Backup times made so far, in order.
    pub times: Vec<i64>,
    /// A remote repository URL for upstream instead of `file://repo` (S3 tests).
    pub target: Option<String>,
    pub fs: Fs,
    seq: Cell<u32>,
}

impl Lab {
    pub fn new(dup: Duplicity) -> Lab {
        let tmp = tempfile::Builder::new()
            .prefix("dm")
            .tempdir_in(std::env::temp_dir())
            .expect("tempdir");
        let root = tmp.path().to_path_buf();
        let src = root.join("src");
        fs::create_dir(&src).unwrap();
        Lab {
            dup,
            _tmp: tmp,
            src: src.clone(),
            repo: root.join("repo"),
            archive: root.join("arch"),
            root,
            name: "t".into(),
            backup_opts: Vec::new(),
            repo_opts: Vec::new(),
            env: Vec::new(),
            crypt_opts: vec![os("--no-encryption")],
            dupmirror_env: Vec::new(),
            times: Vec::new(),
            target: None,
            fs: Fs::new(&src),
            seq: Cell::new(0),
        }
    }

    pub fn backup_opts(mut self, opts: &[&str]) -> Self {
        self.backup_opts.extend(opts.iter().map(os));
        self
    }

    pub fn repo_opts(mut self, opts: &[&str]) -> Self {
        self.repo_opts.extend(opts.iter().map(os));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((os(k), os(v)));
        self
    }

    /// Encrypt (and decrypt) with these upstream options instead of `--no-encryption`.
    pub fn encryption(mut self, opts: &[&str]) -> Self {
        self.crypt_opts = opts.iter().map(os).collect();
        self
    }

    /// Where upstream writes and restores from: `target` if set (an S3 URL), else `repo`.
    pub fn url(&self) -> String {
        self.target
            .clone()
            .unwrap_or_else(|| format!("file://{}", self.repo.display()))
    }

    /// A new unique path under the lab root (not created).
    pub fn fresh(&self, label: &str) -> PathBuf {
        let n = self.seq.get() + 1;
        self.seq.set(n);
        self.root.join(format!("{label}{n}"))
    }

    /// Upstream's arguments for `command` on the repository: the repository and encryption
    /// options, `extra`, then the archive dir and backup name.
    fn upstream_args(&self, command: &str, extra: &[OsString], archive: &Path) -> Vec<OsString> {
        let mut a = vec![os(command)];
        a.extend(self.repo_opts.iter().cloned());
        a.extend(self.crypt_opts.iter().cloned());
        a.extend(extra.iter().cloned());
        a.extend([
            os("--archive-dir"),
            os(archive),
            os("--name"),
            os(&self.name),
        ]);
        a
    }

    pub fn backup(&mut self, kind: BackupKind, time: i64) {
        let mut extra = self.backup_opts.clone();
        extra.extend([os("--current-time"), os(time.to_string())]);
        let mut a = self.upstream_args(kind.command(), &extra, &self.archive);
        a.extend([os("src"), os(self.url())]);
        self.dup.run(&self.root, &a, &self.env);
        self.times.push(time);
    }

    pub fn full(&mut self, time: i64) {
        self.backup(BackupKind::Full, time)
    }

    pub fn inc(&mut self, time: i64) {
        self.backup(BackupKind::Inc, time)
    }

    /// The oracle: `duplicity restore --time T` into a fresh directory (with a fresh archive
    /// dir, so it sees only what the repository holds), as a tree snapshot.
    pub fn restore(&self, time: i64) -> Tree {
        self.restore_with(time, &[])
    }

    /// Like `restore`, with extra restore options (e.g. `--path-to-restore P`).
    pub fn restore_with(&self, time: i64, extra: &[&str]) -> Tree {
        self.restore_by(&self.dup, time, extra)
    }

    /// Like `restore_with`, by another upstream version.
    pub fn restore_by(&self, dup: &Duplicity, time: i64, extra: &[&str]) -> Tree {
        let out = self.fresh("o");
        let arch = self.fresh("oa");
        let mut extra: Vec<OsString> = extra.iter().map(os).collect();
        extra.extend([os("--time"), os(time.to_string())]);
        let mut a = self.upstream_args("restore", &extra, &arch);
        a.extend([os(self.url()), os(&out)]);
        dup.run(&self.root, &a, &self.env);
        let tree = Tree::capture(&out);
        remove_tree(&out);
        remove_tree(&arch);
        tree
    }

    /// `duplicity list-current-files --time T`: the set of paths, root as ".".
    pub fn list_current_files(&self, time: i64) -> BTreeSet<Vec<u8>> {
        let arch = self.fresh("la");
        let extra = [os("--time"), os(time.to_string())];
        let mut a = self.upstream_args("list-current-files", &extra, &arch);
        a.push(os(self.url()));
        let r = self.dup.run(&self.root, &a, &self.env);
        remove_tree(&arch);
        parse_list_current_files(&r.stdout)
    }

    /// A host (DEST plus state dir) under the lab root. Neither directory exists yet.
    pub fn host(&self, label: &str) -> Host {
        Host::at(self.fresh(label))
    }

    /// File names in the repository, sorted.
    pub fn repo_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.repo)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The one repository file whose name contains all of `parts`.
    pub fn repo_file(&self, parts: &[&str]) -> PathBuf {
        let hits: Vec<String> = self
            .repo_files()
            .into_iter()
            .filter(|n| parts.iter().all(|p| n.contains(p)))
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "expected one repository file containing {parts:?}, found {hits:?} in {:?}",
            self.repo_files()
        );
        self.repo.join(&hits[0])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Read-only directories in the trees would stop the temp dir's removal as non-root.
        make_writable(&self.root);
    }
}

pub fn remove_tree(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            // Make everything writable first: the trees hold read-only directories.
            make_writable(p);
            fs::remove_dir_all(p).unwrap_or_else(|e| panic!("rm -r {}: {e}", p.display()))
        }
        Ok(_) => fs::remove_file(p).unwrap_or_else(|e| panic!("rm {}: {e}", p.display())),
        Err(_) => {}
    }
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = fs::symlink_metadata(dir) {
        if m.is_dir() {
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
            if let Ok(rd) = fs::read_dir(dir) {
                for e in rd.flatten() {
                    make_writable(&e.path());
                }
            }
        }
    }
}

/// Copies a directory tree exactly (modes, owners, times, symlinks): `cp -a`.
pub fn copy_tree(from: &Path, to: &Path) {
    remove_tree(to);
    run_tool("cp", [os("-a"), os(from), os(to)]);
}

/// Puts a host back as `template` (a [`copy_tree`] of its folder) holds it, keeping the DEST
/// folder itself when both have one: the state records DEST's identity (device and inode),
/// and a copy would be another folder, which dupmirror rightly refuses to take for the one
/// it synced.
pub fn restore_host(template: &Path, host: &Host) {
    let keep = template.join(host.dest.file_name().unwrap()).is_dir()
        && fs::symlink_metadata(&host.dest).is_ok_and(|m| m.is_dir());
    for entry in fs::read_dir(&host.dir).unwrap() {
        let path = entry.unwrap().path();
        if !(keep && path == host.dest) {
            remove_tree(&path);
        }
    }
    if keep {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&host.dest, fs::Permissions::from_mode(0o700)).unwrap();
        for entry in fs::read_dir(&host.dest).unwrap() {
            remove_tree(&entry.unwrap().path());
        }
    }
    run_tool("cp", [os("-a"), os(template.join(".")), os(&host.dir)]);
}

// ---------------------------------------------------------------------------------------------
// Hosts running dupmirror

/// A host: its DEST and its dupmirror state directory, side by side in `dir`.
pub struct Host {
    pub dir: PathBuf,
    pub dest: PathBuf,
    pub state: PathBuf,
}

impl Host {
    /// A host in `dir` (created if needed): DEST `dir/d`, state `dir/s`, neither created.
    pub fn at(dir: PathBuf) -> Host {
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Host {
            dest: dir.join("d"),
            state: dir.join("s"),
            dir,
        }
    }

    /// `dupmirror COMMAND SOURCE DEST --state-dir S EXTRA...` (sync or verify).
    pub fn args(&self, command: &str, source: impl AsRef<OsStr>, extra: &[&str]) -> Vec<OsString> {
        let mut a = vec![
            os(command),
            os(source),
            os(&self.dest),
            os("--state-dir"),
            os(&self.state),
        ];
        a.extend(extra.iter().map(os));
        a
    }

    /// `dupmirror sync SOURCE DEST --state-dir S EXTRA...`
    pub fn sync(&self, source: impl AsRef<OsStr>, extra: &[&str]) -> Run {
        self.sync_env(source, extra, &[])
    }

    /// `sync` with extra environment for dupmirror (see [`dupmirror_env`]).
    pub fn sync_env(
        &self,
        source: impl AsRef<OsStr>,
        extra: &[&str],
        env: &[(OsString, OsString)],
    ) -> Run {
        self.run("sync", source, extra, env)
    }

    /// `dupmirror COMMAND SOURCE DEST --state-dir S EXTRA...` (sync or verify) with extra
    /// environment (see [`dupmirror_env`]).
    pub fn run(
        &self,
        command: &str,
        source: impl AsRef<OsStr>,
        extra: &[&str],
        env: &[(OsString, OsString)],
    ) -> Run {
        dupmirror_env(self.args(command, source, extra), env)
    }

    pub fn tree(&self) -> Tree {
        Tree::capture(&self.dest)
    }

    pub fn tree_opt(&self) -> Option<Tree> {
        Tree::capture_opt(&self.dest)
    }

    /// Names in the host directory other than DEST and the state dir: must stay empty.
    pub fn strays(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "d" && n != "s")
            .collect();
        v.sort();
        v
    }

    /// A sync with `extra` must succeed and leave DEST exactly `want`, nothing in the state
    /// directory but the lock and the state, and nothing beside DEST.
    pub fn assert_sync_reaches(
        &self,
        source: impl AsRef<OsStr>,
        extra: &[&str],
        want: &Tree,
        ctx: &str,
    ) {
        self.sync(source, extra).assert_ok(ctx);
        want.assert_same(&self.tree(), Compare::default(), ctx);
        assert_eq!(
            self.state_leftovers(),
            Vec::<String>::new(),
            "{ctx}: leftovers in the state directory"
        );
        assert_eq!(
            self.strays(),
            Vec::<String>::new(),
            "{ctx}: files beside DEST"
        );
    }

    /// The end time the state directory records, if any.
    pub fn state_end_time(&self) -> Option<i64> {
        let text = fs::read_to_string(self.state.join("state.json")).ok()?;
        Some(report::parse::<report::State>(&text, "state.json").end_time)
    }

    /// Names in the state directory besides the lock and the state: leftovers of a crash
    /// or a failure (journal, staging).
    pub fn state_leftovers(&self) -> Vec<String> {
        let mut v: Vec<String> = match fs::read_dir(&self.state) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lock" && n != "state.json")
                .collect(),
            Err(_) => Vec::new(),
        };
        v.sort();
        v
    }
}

/// Assert DEST is as it was: both absent, or the same tree. An absent DEST may also come back
/// as an empty directory.
pub fn assert_dest_unchanged(before: &Option<Tree>, after: &Option<Tree>, context: &str) {
    assert_dest_unchanged_or_at(before, after, &[], context)
}

/// The contract after a failure: DEST is exactly as before the run, or exactly as after one
/// of the complete sets the run could have applied first (`allowed`, e.g. the full before a
/// broken incremental), never in between. An absent DEST may come back as an empty directory.
pub fn assert_dest_unchanged_or_at(
    before: &Option<Tree>,
    after: &Option<Tree>,
    allowed: &[&Tree],
    context: &str,
) {
    if let Some(a) = after {
        if allowed
            .iter()
            .any(|t| t.diff(a, Compare::default()).is_empty())
        {
            return;
        }
    }
    match (before, after) {
        (None, None) => {}
        (None, Some(a)) => {
            assert!(
                is_empty_dir(a),
                "{context}: DEST did not exist before the failed run and now holds {} path(s), \
                 which is not the state after any complete set:\n{}",
                a.nodes.len(),
                truncate_text(&a.to_text(), 3000)
            );
        }
        (Some(_), None) => panic!("{context}: DEST existed before the failed run and is gone"),
        (Some(b), Some(a)) => b.assert_same(a, Compare::default(), context),
    }
}

/// Whether a tree is one empty directory (what a first sync may leave of DEST).
pub fn is_empty_dir(t: &Tree) -> bool {
    t.nodes.len() == 1 && t.nodes[&b".".to_vec()].kind == Kind::Dir
}
