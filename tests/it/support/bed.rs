//! A bed for hostile-input tests: a forged repository, a host (DEST and its state folder)
//! and a canary folder outside DEST, side by side; and the contract every refusal keeps.
//!
//! The contract (issue 6, and issue 10's "How it is shown"): exit status 1 or 7 (never a
//! panic or a signal) with one error line that names the problem, DEST and `state.json` exactly as
//! before, no staging left, no new name beside DEST, and the canary folder, which hostile
//! symlinks point at, with its exact tree.

use super::fixture::{Entry, Forge, ForgedSet};
use super::*;

/// A repository, a host (DEST and state dir) and a canary folder, side by side.
pub struct Bed {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub host: Host,
    pub outside: PathBuf,
    pub forge: Forge,
}

pub const CANARY: &[u8] = b"canary: must never change\n";

impl Bed {
    pub fn new() -> Bed {
        let tmp = tempfile::Builder::new().prefix("dmf").tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let outside = root.join("outside");
        fs::create_dir_all(outside.join("sub")).unwrap();
        fs::write(outside.join("canary"), CANARY).unwrap();
        fs::write(outside.join("sub/canary2"), CANARY).unwrap();
        Bed {
            forge: Forge::new(&root.join("repo")),
            host: Host::at(root.clone()),
            outside,
            root,
            _tmp: tmp,
        }
    }

    pub fn sync_args(&self) -> Vec<std::ffi::OsString> {
        self.host.args("sync", &self.forge.repo, &["--no-fsync"])
    }

    pub fn sync(&self) -> Run {
        dupmirror(self.sync_args())
    }

    /// The good full set every incremental case builds on, at `t(0)`.
    pub fn baseline_entries(&self) -> Vec<Entry> {
        let abs = self.outside.as_os_str().as_encoded_bytes().to_vec();
        let mut abs_canary = abs.clone();
        abs_canary.extend_from_slice(b"/canary");
        vec![
            Entry::dir("."),
            Entry::dir("a"),
            Entry::file("a/f", b"old f\n"),
            Entry::file("a/g", b"old g\n"),
            Entry::file("basis", b"0123456789"),
            Entry::symlink("fl", &abs_canary),
            Entry::symlink("out", &abs),
            Entry::symlink("outrel", "../outside"),
        ]
    }

    pub fn baseline(&self) -> ForgedSet {
        let set = self.forge.full(t(0), self.baseline_entries());
        self.sync().assert_ok("baseline sync");
        let tree = self.host.tree();
        assert_eq!(
            tree.get(b"basis").and_then(|n| n.size),
            Some(10),
            "baseline DEST was not written"
        );
        set
    }

    /// A bed synced to the baseline, with an incremental of `entries` over it in the
    /// repository.
    pub fn with_inc(entries: Vec<Entry>) -> Bed {
        let bed = Bed::new();
        bed.baseline();
        bed.forge.inc(t(0), t(1), entries);
        bed
    }

    pub fn outside_tree(&self) -> Tree {
        Tree::capture(&self.outside)
    }

    /// Names beside DEST, and in the state directory, that should not be there.
    pub fn strays(&self) -> Vec<String> {
        let mut v = Vec::new();
        for e in fs::read_dir(&self.root).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            if !["repo", "d", "s", "outside"].contains(&n.as_str()) {
                v.push(n);
            }
        }
        if let Ok(rd) = fs::read_dir(&self.host.state) {
            for e in rd {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                if !["lock", "state.json"].contains(&n.as_str()) {
                    v.push(format!("s/{n}"));
                }
            }
        }
        v.sort();
        v
    }

    /// Runs a sync that must fail cleanly and change nothing.
    pub fn expect_refused(&self, ctx: &str, keywords: &[&str]) {
        let before = self.host.tree_opt();
        let outside = self.outside_tree();
        let state_json = self.host.state.join("state.json");
        let state_before = fs::read(&state_json).ok();
        let r = self.sync();
        self.check_refused(&r, ctx, keywords, &before, &outside);
        assert_eq!(
            fs::read(&state_json).ok(),
            state_before,
            "{ctx}: the recorded state changed"
        );
    }

    pub fn check_refused(
        &self,
        r: &Run,
        ctx: &str,
        keywords: &[&str],
        before: &Option<Tree>,
        outside: &Tree,
    ) {
        // 7: a damaged or hostile repository; 1: a failure not classified further.
        r.assert_one_error_line(ctx, keywords, &[1, 7]);
        assert_dest_unchanged(before, &self.host.tree_opt(), ctx);
        outside.assert_same(&self.outside_tree(), Compare::default(), ctx);
        assert_eq!(self.strays(), Vec::<String>::new(), "{ctx}: leftovers");
    }
}

/// One incremental case over the baseline.
pub fn inc_case(ctx: &str, entries: Vec<Entry>, keywords: &[&str]) {
    Bed::with_inc(entries).expect_refused(ctx, keywords);
}

/// One first-sync case: the full set itself is bad (`entries` after the root directory).
pub fn full_case(ctx: &str, entries: Vec<Entry>, keywords: &[&str]) {
    let bed = Bed::new();
    bed.forge
        .full(t(0), [vec![Entry::dir(".")], entries].concat());
    bed.expect_refused(ctx, keywords);
}

pub fn abs_outside(bed: &Bed, rest: &str) -> Vec<u8> {
    let mut p = bed.outside.as_os_str().as_encoded_bytes().to_vec();
    p.extend_from_slice(rest.as_bytes());
    p
}
