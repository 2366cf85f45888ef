//! Tree snapshots: what a directory holds, as a sorted map from raw path bytes to the
//! attributes dupmirror promises to reproduce (docs/design.md §4).
//!
//! The text form is the one format of the committed `testdata/**/*.tree` files, which
//! `testdata_gen` writes from upstream restores with [`Tree::capture`] and [`Tree::to_text`]:
//!
//! ```text
//! # dupmirror tree v1
//! . dir mode=0755 uid=0 gid=0 mtime=1700000000
//! a\x20b file mode=0644 uid=0 gid=0 mtime=1700000000 size=3 fnv=af63bd4c8601b7be
//! l symlink uid=0 gid=0 target=a\x20b
//! ```
//!
//! One line per path, sorted by raw bytes, root written as `.`. Fields: `mode` (octal
//! permission bits, not for symlinks), `uid`, `gid`, `mtime` (seconds, not for symlinks),
//! `size` and `fnv` (FNV-1a 64 of the content) for files, `target` for symlinks,
//! `rdev=MAJOR,MINOR` for devices. Paths and symlink targets escape every byte outside
//! `0x21..=0x7e`, and the backslash, as `\xNN`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Chr,
    Blk,
    Socket,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Dir => "dir",
            Kind::File => "file",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Chr => "chr",
            Kind::Blk => "blk",
            Kind::Socket => "socket",
        }
    }

    fn from_name(s: &str) -> Option<Kind> {
        Some(match s {
            "dir" => Kind::Dir,
            "file" => Kind::File,
            "symlink" => Kind::Symlink,
            "fifo" => Kind::Fifo,
            "chr" => Kind::Chr,
            "blk" => Kind::Blk,
            "socket" => Kind::Socket,
            _ => return None,
        })
    }
}

/// The attributes of one path. Fields that do not apply to the kind are `None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits (07777); not for symlinks (never restored, always 0777 on Linux).
    pub mode: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    /// Seconds; not for symlinks (duplicity does not restore their mtime).
    pub mtime: Option<i64>,
    pub size: Option<u64>,
    /// FNV-1a 64 of the content of a regular file.
    pub fnv: Option<u64>,
    pub target: Option<Vec<u8>>,
    /// (major, minor) of a device node.
    pub rdev: Option<(u64, u64)>,
}

/// What to compare. Everything by default.
#[derive(Clone, Copy, Debug)]
pub struct Compare {
    pub owners: bool,
    pub dir_mtimes: bool,
}

impl Default for Compare {
    fn default() -> Self {
        Compare {
            owners: true,
            dir_mtimes: true,
        }
    }
}

impl Compare {
    pub fn without_owners(self) -> Self {
        Compare {
            owners: false,
            ..self
        }
    }
    pub fn without_dir_mtimes(self) -> Self {
        Compare {
            dir_mtimes: false,
            ..self
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub nodes: BTreeMap<Vec<u8>, Node>,
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

pub fn fnv1a64_update(mut h: u64, data: &[u8]) -> u64 {
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

pub fn fnv1a64(data: &[u8]) -> u64 {
    fnv1a64_update(FNV_OFFSET, data)
}

fn hash_file(path: &Path) -> u64 {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = FNV_OFFSET;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            return h;
        }
        h = fnv1a64_update(h, &buf[..n]);
    }
}

/// glibc's encoding of dev_t.
pub fn dev_major_minor(rdev: u64) -> (u64, u64) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major, minor)
}

/// Escape path bytes as in the `.tree` format.
pub fn escape(raw: &[u8]) -> String {
    let mut s = String::with_capacity(raw.len());
    for &b in raw {
        if (0x21..=0x7e).contains(&b) && b != b'\\' {
            s.push(b as char);
        } else {
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    s
}

pub fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            assert!(
                i + 3 < b.len() && b[i + 1] == b'x',
                "bad escape in tree text: {s:?}"
            );
            let hex = std::str::from_utf8(&b[i + 2..i + 4]).expect("ascii");
            out.push(u8::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("bad escape {s:?}")));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Human-readable rendering of raw path bytes, for messages.
pub fn show(raw: &[u8]) -> String {
    escape(raw)
}

fn node_of(path: &Path) -> Node {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let ft = md.file_type();
    let kinds = [
        (ft.is_dir(), Kind::Dir),
        (ft.is_file(), Kind::File),
        (ft.is_symlink(), Kind::Symlink),
        (ft.is_fifo(), Kind::Fifo),
        (ft.is_char_device(), Kind::Chr),
        (ft.is_block_device(), Kind::Blk),
        (ft.is_socket(), Kind::Socket),
    ];
    let kind = kinds
        .iter()
        .find_map(|&(is, kind)| is.then_some(kind))
        .unwrap_or_else(|| panic!("unknown file type at {}", path.display()));
    let symlink = kind == Kind::Symlink;
    Node {
        kind,
        mode: (!symlink).then_some(md.mode() & 0o7777),
        uid: md.uid(),
        gid: md.gid(),
        mtime: (!symlink).then_some(md.mtime()),
        size: (kind == Kind::File).then_some(md.size()),
        fnv: (kind == Kind::File).then(|| hash_file(path)),
        target: symlink.then(|| {
            fs::read_link(path)
                .unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()))
                .as_os_str()
                .as_bytes()
                .to_vec()
        }),
        rdev: matches!(kind, Kind::Chr | Kind::Blk).then(|| dev_major_minor(md.rdev())),
    }
}

impl Tree {
    /// Walk `root` without following symlinks.
    pub fn capture(root: &Path) -> Tree {
        let mut nodes = BTreeMap::new();
        let rootnode = node_of(root);
        let is_dir = rootnode.kind == Kind::Dir;
        nodes.insert(b".".to_vec(), rootnode);
        if is_dir {
            let mut stack: Vec<(Vec<u8>, std::path::PathBuf)> = vec![(Vec::new(), root.into())];
            while let Some((rel, dir)) = stack.pop() {
                let rd = fs::read_dir(&dir)
                    .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
                for ent in rd {
                    let ent = ent.unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
                    let name = ent.file_name();
                    let mut r = rel.clone();
                    if !r.is_empty() {
                        r.push(b'/');
                    }
                    r.extend_from_slice(name.as_bytes());
                    let full = ent.path();
                    let node = node_of(&full);
                    if node.kind == Kind::Dir {
                        stack.push((r.clone(), full));
                    }
                    nodes.insert(r, node);
                }
            }
        }
        Tree { nodes }
    }

    /// Like `capture`, but a missing `root` gives `None`.
    pub fn capture_opt(root: &Path) -> Option<Tree> {
        fs::symlink_metadata(root).ok().map(|_| Tree::capture(root))
    }

    pub fn paths(&self) -> std::collections::BTreeSet<Vec<u8>> {
        self.nodes.keys().cloned().collect()
    }

    pub fn get(&self, path: &[u8]) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// The part of the tree under `prefix` (a path relative to the root, no trailing slash),
    /// re-rooted there: what `duplicity restore --path-to-restore prefix` would produce.
    pub fn subtree(&self, prefix: &[u8]) -> Tree {
        let mut nodes = BTreeMap::new();
        for (p, n) in &self.nodes {
            if p.as_slice() == prefix {
                nodes.insert(b".".to_vec(), n.clone());
            } else if p.len() > prefix.len() + 1 && p.starts_with(prefix) && p[prefix.len()] == b'/'
            {
                nodes.insert(p[prefix.len() + 1..].to_vec(), n.clone());
            }
        }
        Tree { nodes }
    }

    pub fn to_text(&self) -> String {
        let mut s = String::from("# dupmirror tree v1\n");
        for (p, n) in &self.nodes {
            s.push_str(&escape(p));
            s.push(' ');
            s.push_str(&render_node(n));
            s.push('\n');
        }
        s
    }

    pub fn parse(text: &str) -> Tree {
        let mut nodes = BTreeMap::new();
        for (no, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut it = line.split(' ');
            let path = unescape(it.next().unwrap());
            let kind_s = it
                .next()
                .unwrap_or_else(|| panic!("line {}: no kind: {line}", no + 1));
            let kind = Kind::from_name(kind_s)
                .unwrap_or_else(|| panic!("line {}: unknown kind {kind_s}", no + 1));
            let mut n = Node {
                kind,
                mode: None,
                uid: 0,
                gid: 0,
                mtime: None,
                size: None,
                fnv: None,
                target: None,
                rdev: None,
            };
            for field in it {
                let (k, v) = field
                    .split_once('=')
                    .unwrap_or_else(|| panic!("line {}: bad field {field}", no + 1));
                let bad = |e: &dyn std::fmt::Display| -> ! {
                    panic!("line {}: bad value in {field}: {e}", no + 1)
                };
                match k {
                    "mode" => n.mode = Some(u32::from_str_radix(v, 8).unwrap_or_else(|e| bad(&e))),
                    "uid" => n.uid = v.parse().unwrap_or_else(|e| bad(&e)),
                    "gid" => n.gid = v.parse().unwrap_or_else(|e| bad(&e)),
                    "mtime" => n.mtime = Some(v.parse().unwrap_or_else(|e| bad(&e))),
                    "size" => n.size = Some(v.parse().unwrap_or_else(|e| bad(&e))),
                    "fnv" => n.fnv = Some(u64::from_str_radix(v, 16).unwrap_or_else(|e| bad(&e))),
                    "target" => n.target = Some(unescape(v)),
                    "rdev" => {
                        let (a, b) = v.split_once(',').unwrap_or_else(|| bad(&"no comma"));
                        n.rdev = Some((
                            a.parse().unwrap_or_else(|e| bad(&e)),
                            b.parse().unwrap_or_else(|e| bad(&e)),
                        ));
                    }
                    _ => panic!("line {}: unknown key {k}", no + 1),
                }
            }
            assert!(
                nodes.insert(path, n).is_none(),
                "line {}: duplicate path",
                no + 1
            );
        }
        Tree { nodes }
    }

    /// Differences as readable lines, empty when equal under `cmp`.
    pub fn diff(&self, actual: &Tree, cmp: Compare) -> Vec<String> {
        let mut out = Vec::new();
        let mut keys: Vec<&Vec<u8>> = self.nodes.keys().chain(actual.nodes.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            match (self.nodes.get(k), actual.nodes.get(k)) {
                (Some(e), None) => out.push(format!(
                    "{}: missing (expected {})",
                    show(k),
                    render_node(e)
                )),
                (None, Some(a)) => {
                    out.push(format!("{}: unexpected ({})", show(k), render_node(a)))
                }
                (Some(e), Some(a)) => {
                    let (e, a) = (normalise(e, cmp), normalise(a, cmp));
                    if e != a {
                        out.push(format!(
                            "{}:\n      expected {}\n      actual   {}",
                            show(k),
                            render_node(&e),
                            render_node(&a)
                        ));
                    }
                }
                (None, None) => unreachable!(),
            }
        }
        out
    }

    /// Panic with a readable diff (at most 20 paths) unless `actual` equals `self`.
    pub fn assert_same(&self, actual: &Tree, cmp: Compare, context: &str) {
        let d = self.diff(actual, cmp);
        if !d.is_empty() {
            let mut msg = format!(
                "{context}: trees differ in {} path(s) (expected vs actual):\n",
                d.len()
            );
            for line in d.iter().take(20) {
                msg.push_str("  ");
                msg.push_str(line);
                msg.push('\n');
            }
            if d.len() > 20 {
                let _ = writeln!(msg, "  ... and {} more", d.len() - 20);
            }
            panic!("{msg}");
        }
    }
}

/// The `<T>.tree` files of `dir` (expected trees of the backup times T), by time.
pub fn read_timed(dir: &Path) -> Vec<(i64, Tree)> {
    let mut trees: Vec<(i64, Tree)> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "tree"))
        .map(|p| {
            let time = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            (time, Tree::parse(&fs::read_to_string(&p).unwrap()))
        })
        .collect();
    trees.sort_by_key(|(t, _)| *t);
    trees
}

fn normalise(n: &Node, cmp: Compare) -> Node {
    let mut n = n.clone();
    if !cmp.owners {
        n.uid = 0;
        n.gid = 0;
    }
    if !cmp.dir_mtimes && n.kind == Kind::Dir {
        n.mtime = None;
    }
    n
}

fn render_node(n: &Node) -> String {
    let mut s = String::from(n.kind.name());
    if let Some(m) = n.mode {
        let _ = write!(s, " mode={m:04o}");
    }
    let _ = write!(s, " uid={} gid={}", n.uid, n.gid);
    if let Some(t) = n.mtime {
        let _ = write!(s, " mtime={t}");
    }
    if let Some(z) = n.size {
        let _ = write!(s, " size={z}");
    }
    if let Some(h) = n.fnv {
        let _ = write!(s, " fnv={h:016x}");
    }
    if let Some(t) = &n.target {
        let _ = write!(s, " target={}", escape(t));
    }
    if let Some((a, b)) = n.rdev {
        let _ = write!(s, " rdev={a},{b}");
    }
    s
}
