//! One conformance suite for every backend: the contract written on `source::Backend`
//! (listing with sizes, ranged open, independent readers, which errors are transient, what
//! `display` may show), checked the same way against each one, as rclone's `fstests` and
//! restic's backend tests do. Unlike the other modules this one drives the library, not
//! the command line: the contract is the library's.
//!
//! A backend joins with one test naming a fixture: a function that publishes a folder (a
//! live one: files written into it later must show too) and returns the backend reading it
//! (`Published::url` for anything a SOURCE URL reaches). A fixture whose server is not
//! installed returns `None` and the test skips, or fails under
//! `DUPMIRROR_REQUIRE_ORACLE=1`.

use crate::support::remote::{self, FtpOptions, NginxOptions, Server};
use crate::support::stores;
use dupmirror::progress::Reporter;
use dupmirror::source::retry::is_transient;
use dupmirror::source::sftp::SshOptions;
use dupmirror::source::{open_source, Backend, LocalBackend, MemoryBackend, SourceOptions};
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Adds a file to what is published.
type AddFile = Box<dyn Fn(&str, &[u8])>;

/// A published folder, as the suite sees it.
struct Published {
    backend: Box<dyn Backend>,
    add: AddFile,
    /// The listing must give sizes (some protocols cannot).
    sizes: bool,
    /// What must never be shown (a password in the URL).
    secret: Option<String>,
    _server: Option<Server>,
}

impl Published {
    /// The folder `dir` read through `backend`.
    fn folder(dir: &Path, backend: Box<dyn Backend>) -> Published {
        let dir = dir.to_path_buf();
        Published {
            backend,
            add: Box::new(move |name, data| fs::write(dir.join(name), data).unwrap()),
            sizes: true,
            secret: None,
            _server: None,
        }
    }

    /// `dir`, published by `server` (which serves `dir`'s parent), reached by its URL the
    /// way `sync SOURCE` reaches it (retries and resumption included).
    fn url(dir: &Path, server: Server, options: &SourceOptions) -> Published {
        let backend = open_source(&server.url, options, &Arc::new(Reporter::default()))
            .unwrap_or_else(|e| panic!("cannot open {}: {e:#}", server.url));
        let secret = url::Url::parse(&server.url)
            .ok()
            .and_then(|u| u.password().map(str::to_string));
        Published {
            secret,
            _server: Some(server),
            ..Published::folder(dir, backend)
        }
    }
}

/// Publishes `dir` (inside `scratch/www`, so servers serve `scratch/www` and the URL ends
/// in `/repo`), or `None` when the means to are missing.
type Fixture = dyn FnOnce(&Path, &Path) -> Option<Published>;

/// The files every backend is checked with: duplicity names in the long, W3 (colons) and
/// prefixed forms, a file spanning many reads, an empty one, and a subfolder that must not
/// be listed.
fn files() -> BTreeMap<String, Vec<u8>> {
    let big: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    [
        ("duplicity-full.20231114T221320Z.vol1.difftar.gz", big),
        (
            "duplicity-full.20231114T221320Z.manifest",
            b"Hostname x\nVolume 1:\n".to_vec(),
        ),
        (
            "duplicity-full.2023-11-14T17:13:20-05:00.manifest",
            b"old-style name".to_vec(),
        ),
        (
            "P_duplicity-inc.20231114T221320Z.to.20231114T223000Z.manifest",
            b"p".to_vec(),
        ),
        (
            "duplicity-full-signatures.20231114T221320Z.sigtar.gz",
            Vec::new(),
        ),
    ]
    .into_iter()
    .map(|(n, d)| (n.to_string(), d))
    .collect()
}

const BIG: &str = "duplicity-full.20231114T221320Z.vol1.difftar.gz";
const SMALL: &str = "duplicity-full.20231114T221320Z.manifest";

fn read_from(b: &dyn Backend, name: &str, offset: u64) -> (u64, Vec<u8>) {
    let opened = b
        .open(name, offset)
        .unwrap_or_else(|e| panic!("open {name} at {offset}: {e:#}"));
    let mut data = Vec::new();
    let mut reader = opened.reader;
    reader
        .read_to_end(&mut data)
        .unwrap_or_else(|e| panic!("read {name} from {offset}: {e:#}"));
    (opened.offset, data)
}

/// Runs the suite against the backend `fixture` publishes.
fn conformance(name: &str, fixture: Box<Fixture>) {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("www/repo");
    fs::create_dir_all(dir.join("sub")).unwrap();
    let files = files();
    for (n, data) in &files {
        fs::write(dir.join(n), data).unwrap();
    }
    fs::write(dir.join("sub/inside.manifest"), b"not listed").unwrap();
    let Some(p) = fixture(&dir, scratch.path()) else {
        return; // skipped, said why
    };
    let b = &*p.backend;
    let ctx = |what: &str| format!("[{name}] {what}");

    // Listing: every file once, exact sizes, no subfolder.
    let listing = b
        .list()
        .unwrap_or_else(|e| panic!("{}: {e:#}", ctx("list")));
    let listed: BTreeMap<&str, Option<u64>> =
        listing.iter().map(|e| (e.name.as_str(), e.size)).collect();
    assert_eq!(
        listed.len(),
        listing.len(),
        "{}",
        ctx("a name listed twice")
    );
    let names: Vec<&str> = listed.keys().copied().collect();
    let want: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(names, want, "{}", ctx("listed names"));
    for (n, size) in &listed {
        match size {
            Some(s) => assert_eq!(
                *s,
                files[*n].len() as u64,
                "{}",
                ctx(&format!("size of {n}"))
            ),
            None => assert!(!p.sizes, "{}", ctx(&format!("no size for {n}"))),
        }
    }

    // Whole files, from the start.
    for (n, data) in &files {
        let (start, got) = read_from(b, n, 0);
        assert_eq!(start, 0, "{}", ctx(n));
        assert!(got == *data, "{}", ctx(&format!("bytes of {n}")));
    }

    // Ranged opens start where asked, or at 0; never elsewhere.
    let big = &files[BIG];
    let len = big.len() as u64;
    for offset in [1, 65_536, len / 2 + 7, len - 1, len] {
        let (start, got) = read_from(b, BIG, offset);
        assert!(
            start == offset || start == 0,
            "{}",
            ctx(&format!("asked for {offset}, started at {start}"))
        );
        assert!(
            got[..] == big[start as usize..],
            "{}",
            ctx(&format!("bytes of {BIG} from {start}"))
        );
    }

    // Readers are independent: one interleaved with another, and across threads.
    let mut first = b.open(BIG, 0).unwrap().reader;
    let mut head = vec![0u8; 10_000];
    first.read_exact(&mut head).unwrap();
    assert_eq!(
        read_from(b, SMALL, 0).1,
        files[SMALL],
        "{}",
        ctx("second reader")
    );
    let rest = std::thread::scope(|s| {
        s.spawn(move || {
            let mut rest = Vec::new();
            first.read_to_end(&mut rest).map(|_| rest)
        })
        .join()
        .unwrap()
    })
    .unwrap_or_else(|e| panic!("{}: {e}", ctx("first reader, resumed on a thread")));
    assert!(
        head[..] == big[..10_000] && rest[..] == big[10_000..],
        "{}",
        ctx("interleaved reader")
    );

    // A missing file is a permanent failure, and says which file.
    let Err(missing) = b.open("duplicity-full.20991231T000000Z.manifest", 0) else {
        panic!("{}", ctx("a missing file opened"));
    };
    assert!(
        !is_transient(&missing),
        "{}: {missing:#}",
        ctx("missing file transient")
    );

    // Nothing shows a password.
    let shown = [b.display(), format!("{missing:#}")];
    assert!(!shown[0].is_empty(), "{}", ctx("display is empty"));
    if let Some(secret) = &p.secret {
        for s in &shown {
            assert!(
                !s.contains(secret.as_str()),
                "{}: {s}",
                ctx("password shown")
            );
        }
    }

    // The folder is live: a file published later is in the next listing.
    let later = "duplicity-inc.20231114T221320Z.to.20231114T223000Z.manifest";
    (p.add)(later, b"later");
    let listing = b.list().unwrap();
    assert!(
        listing.iter().any(|e| e.name == later),
        "{}",
        ctx("a file added later is not listed")
    );
    assert_eq!(
        read_from(b, later, 0).1,
        b"later",
        "{}",
        ctx("file added later")
    );
}

/// Transport options for the servers: the defaults, with a private CA when given.
fn options(ca_file: Option<PathBuf>) -> SourceOptions {
    SourceOptions {
        ca_file,
        ..SourceOptions::default()
    }
}

fn www(dir: &Path) -> &Path {
    dir.parent().expect("dir is www/repo")
}

#[test]
fn local() {
    conformance(
        "local",
        Box::new(|dir, _| {
            let b = LocalBackend::new(dir.to_str()?).unwrap();
            Some(Published::folder(dir, Box::new(b)))
        }),
    );
}

#[test]
fn memory() {
    conformance(
        "memory",
        Box::new(|dir, _| {
            let b = Arc::new(MemoryBackend::from_dir(dir).unwrap());
            let handle = b.clone();
            Some(Published {
                add: Box::new(move |name, data| handle.insert(name, data.to_vec())),
                ..Published::folder(dir, Box::new(b))
            })
        }),
    );
}

#[test]
fn ftp() {
    conformance(
        "ftp",
        Box::new(|dir, scratch| {
            let server = remote::ftp_server(www(dir), scratch, &FtpOptions::default())?;
            Some(Published::url(dir, server, &options(None)))
        }),
    );
}

#[test]
fn ftp_with_login_without_mlsd_or_rest() {
    conformance(
        "ftp minimal",
        Box::new(|dir, scratch| {
            let opts = FtpOptions {
                login: Some(("bob".into(), "ftp-pa55".into())),
                minimal: true,
                ..FtpOptions::default()
            };
            let server = remote::ftp_server(www(dir), scratch, &opts)?;
            Some(Published::url(dir, server, &options(None)))
        }),
    );
}

#[test]
fn ftps() {
    conformance(
        "ftps",
        Box::new(|dir, scratch| {
            let (ca, cert, key) = remote::make_certs(scratch)?;
            let opts = FtpOptions {
                login: Some(("bob".into(), "ftps-pa55".into())),
                tls: Some((cert, key)),
                ..FtpOptions::default()
            };
            let server = remote::ftp_server(www(dir), scratch, &opts)?;
            Some(Published::url(dir, server, &options(Some(ca))))
        }),
    );
}

#[test]
fn http_nginx_html_index() {
    conformance(
        "nginx html",
        Box::new(|dir, scratch| {
            let server = remote::nginx(www(dir), scratch, &NginxOptions::default())?;
            Some(Published::url(dir, server, &options(None)))
        }),
    );
}

#[test]
fn https_nginx_json_index_with_login() {
    conformance(
        "nginx json https",
        Box::new(|dir, scratch| {
            let (ca, cert, key) = remote::make_certs(scratch)?;
            let opts = NginxOptions {
                json: true,
                tls: Some((cert, key)),
                login: Some(("alice".into(), "web-pa55".into())),
            };
            let mut server = remote::nginx(www(dir), scratch, &opts)?;
            server.url = server
                .url
                .replacen("https://", "https://alice:web-pa55@", 1);
            Some(Published::url(dir, server, &options(Some(ca))))
        }),
    );
}

#[test]
fn http_python_server_without_ranges_or_sizes() {
    conformance(
        "python http.server",
        Box::new(|dir, scratch| {
            let server = remote::http_server(www(dir), scratch)?;
            Some(Published {
                sizes: false,
                ..Published::url(dir, server, &options(None))
            })
        }),
    );
}

#[test]
fn s3_moto() {
    conformance(
        "s3",
        Box::new(|dir, scratch| {
            let s3 = stores::moto(scratch, "conformance")?;
            // The folder's files (its subfolder too) become keys under `repo/`, readable
            // without a key: the suite's process has no AWS keys, so its requests go
            // unsigned (as to a public bucket); remote_s3 tests signed requests.
            s3.boto3(&format!(
                "import os\nroot = {:?}\nfor d, _, fs in os.walk(root):\n    for f in fs:\n        \
                 p = os.path.join(d, f)\n        \
                 s3.upload_file(p, 'conformance', 'repo/' + os.path.relpath(p, root), \
                 ExtraArgs={{'ACL': 'public-read'}})",
                dir.display().to_string()
            ));
            let options = SourceOptions {
                s3_endpoint: Some(s3.endpoint.clone()),
                ..SourceOptions::default()
            };
            let backend = open_source(
                "s3://conformance/repo",
                &options,
                &Arc::new(Reporter::default()),
            )
            .unwrap_or_else(|e| panic!("cannot open the S3 source: {e:#}"));
            Some(Published {
                add: Box::new(move |name, data| {
                    s3.boto3(&format!(
                        "s3.put_object(Bucket='conformance', Key='repo/{name}', Body=bytes({data:?}), \
                         ACL='public-read')"
                    ))
                }),
                ..Published::folder(dir, backend)
            })
        }),
    );
}

#[test]
fn sftp_sshd() {
    conformance(
        "sftp",
        Box::new(|dir, scratch| {
            let sshd = stores::sshd(scratch)?;
            let mut server = sshd.server;
            server.url = format!("sftp://root@127.0.0.1:{}/{}", server.port, dir.display());
            let options = SourceOptions {
                ssh: SshOptions {
                    config: Some(sshd.config),
                    options: Vec::new(),
                },
                ..SourceOptions::default()
            };
            Some(Published::url(dir, server, &options))
        }),
    );
}
