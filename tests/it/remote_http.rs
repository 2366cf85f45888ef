//! dupmirror over HTTP(S) against real servers on 127.0.0.1: the oracle scenarios
//! (incremental host, late host, time travel; DEST must equal `duplicity restore`) through
//! nginx's HTML and JSON autoindex and `python3 -m http.server`; the cheap "anything new?"
//! poll; HTTPS with a private CA; basic auth with the password in the URL, the environment or
//! a netrc file; and one clear error line, without the password, when the login is wrong or
//! the host is unreachable.

use crate::support::remote::*;
use crate::support::*;
use std::ffi::OsString;
use std::fs;
use std::time::{Duration, Instant};

#[test]
fn nginx_html_index_matches_the_oracle() {
    if let Some(dup) = duplicity(Version::V08) {
        oracle_over(dup, "nginx html", plain_nginx);
    }
}

#[test]
fn nginx_json_index_matches_the_oracle() {
    if let Some(dup) = duplicity(Version::V3) {
        let json = NginxOptions {
            json: true,
            ..NginxOptions::default()
        };
        oracle_over(dup, "nginx json", |s| nginx(&s.www, &s.srv, &json));
    }
}

#[test]
fn python_http_server_without_ranges_matches_the_oracle() {
    if let Some(dup) = duplicity(Version::V08) {
        oracle_over(dup, "http.server", |s| http_server(&s.www, &s.srv));
    }
}

/// With nothing new, a sync costs one listing: one request, no file fetched.
#[test]
fn nothing_new_costs_one_listing() {
    let Some(mut published) = served(Version::V08, plain_nginx, |fs| {
        fs.write("f", &random_bytes(3, 1_500_000))
    }) else {
        return;
    };
    let (lab, server) = (&mut published.lab, &published.server);
    lab.fs.write("g", b"more\n");
    lab.inc(t(1));
    let host = lab.host("p");
    host.sync(&server.url, &["--json"]).assert_ok("first sync");

    let before = server.requests("GET").len();
    let started = Instant::now();
    let run = host.sync(&server.url, &["--json"]);
    let elapsed = started.elapsed();
    run.assert_ok("poll");
    let r = sync_report(&run);
    assert!(r.up_to_date);
    assert_eq!(r.transfer.listings, 1);
    assert_eq!(r.transfer.files_fetched, 0);
    assert_eq!(r.transfer.bytes_downloaded, 0);
    let requests = server.requests("GET");
    assert_eq!(
        requests[before..].len(),
        1,
        "the poll made more than one request: {:?}",
        &requests[before..]
    );
    assert!(
        requests[before].contains("GET /repo/ "),
        "{}",
        requests[before]
    );
    eprintln!("poll: one request, {elapsed:?} for the whole run");

    let human = host.sync(&server.url, &[]);
    human.assert_ok("poll, human output");
    assert!(
        human.stdout_text().contains("is up to date"),
        "{}",
        human.stdout_text()
    );
}

/// An atomic run that builds the standby and switches lists the source once: its look at
/// the live tree and the standby's run decide on one listing.
#[test]
fn an_atomic_switch_costs_one_listing() {
    let Some(mut published) = served(Version::V08, plain_nginx, |fs| {
        fs.write("f", &random_bytes(4, 300_000))
    }) else {
        return;
    };
    let (lab, server) = (&mut published.lab, &published.server);
    let host = lab.host("a");
    let atomic = ["--atomic", "--grace", "0", "--json"];
    host.sync(&server.url, &atomic).assert_ok("bootstrap");
    lab.fs.write("g", b"new\n");
    lab.inc(t(1));

    let before = server.requests("GET /repo/ ").len();
    let run = host.sync(&server.url, &atomic);
    run.assert_ok("switch");
    let r: serde_json::Value = report::of(&run);
    assert_eq!(r["atomic"]["action"], "switched", "{r}");
    assert_eq!(r["transfer"]["listings"], 1, "{r}");
    assert_eq!(server.requests("GET /repo/ ").len() - before, 1);
    assert_eq!(fs::read(host.dest.join("g")).unwrap(), b"new\n");
}

#[test]
fn https_with_a_private_ca() {
    let https = |site: &Site, tls| {
        let opts = NginxOptions {
            tls: Some(tls),
            ..NginxOptions::default()
        };
        nginx(&site.www, &site.srv, &opts)
    };
    let Some((mut published, ca)) = served_tls(Version::V08, https, |fs| {
        fs.write("f", &random_bytes(4, 1_200_000))
    }) else {
        return;
    };
    let (lab, server) = (&mut published.lab, &published.server);
    let host = lab.host("s");
    assert_untrusted(&host, &server.url, "https without the CA", "\u{0}");
    host.sync(&server.url, &["--ca-file", &ca])
        .assert_ok("https with --ca-file");
    lab.restore(t(0))
        .assert_same(&host.tree(), Compare::default(), "https with --ca-file");
}

fn env(key: &str, value: impl Into<OsString>) -> (OsString, OsString) {
    (key.into(), value.into())
}

#[test]
fn basic_auth_from_url_environment_and_netrc() {
    let opts = NginxOptions {
        login: Some(("alice".into(), "s3cr3t-pw".into())),
        ..NginxOptions::default()
    };
    let Some(mut published) = served(
        Version::V08,
        |s| nginx(&s.www, &s.srv, &opts),
        |fs| fs.write("f", b"behind a login\n"),
    ) else {
        return;
    };
    let (lab, server, site) = (&mut published.lab, &published.server, &published.site);
    let oracle = lab.restore(t(0));
    let port = server.port;
    let bare = format!("http://127.0.0.1:{port}/repo/");

    // A wrong password: one line, no password in it, DEST untouched.
    let host = lab.host("w");
    let wrong = format!("http://alice:wr0ng-pw@127.0.0.1:{port}/repo/");
    let run = host.sync(&wrong, &["--quiet", "--json"]);
    assert_one_clear_line(&run, "wrong password", &["401", "denied"], "wr0ng-pw");
    assert!(
        run.stderr.contains("alice:***@"),
        "the URL should show redacted: {}",
        run.stderr
    );
    assert_dest_unchanged(&None, &host.tree_opt(), "DEST after the failure");

    // The password in the URL.
    let host = lab.host("u");
    let right = format!("http://alice:s3cr3t-pw@127.0.0.1:{port}/repo/");
    let run = host.sync(&right, &["--json"]);
    run.assert_ok("password in the URL");
    assert!(
        !run.stdout_text().contains("s3cr3t-pw"),
        "{}",
        run.stdout_text()
    );
    oracle.assert_same(&host.tree(), Compare::default(), "password in the URL");
    let state = fs::read_to_string(host.state.join("state.json")).unwrap();
    assert!(!state.contains("s3cr3t-pw"), "{state}");

    // The user in the URL, the password in the environment.
    let host = lab.host("e");
    let user_only = format!("http://alice@127.0.0.1:{port}/repo/");
    host.sync_env(&user_only, &[], &[env("DUPMIRROR_PASSWORD", "s3cr3t-pw")])
        .assert_ok("password from DUPMIRROR_PASSWORD");
    oracle.assert_same(&host.tree(), Compare::default(), "password from env");

    // Both from a netrc file.
    let host = lab.host("n");
    let netrc = site.srv.join("netrc");
    fs::write(
        &netrc,
        "machine example.org login bob password nope\n\
         machine 127.0.0.1 login alice password s3cr3t-pw\n",
    )
    .unwrap();
    host.sync_env(&bare, &[], &[env("NETRC", netrc)])
        .assert_ok("netrc");
    oracle.assert_same(&host.tree(), Compare::default(), "netrc");
}

#[test]
fn unreachable_host_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::at(dir.path().to_path_buf());
    let port = free_port(); // nothing listens there
    let url = format!("http://u:hunter22@127.0.0.1:{port}/repo/");
    let started = Instant::now();
    let run = host.sync(&url, &["--quiet", "--retries", "2"]);
    assert_one_clear_line(&run, "unreachable", &["refused", "connect"], "hunter22");
    assert!(
        run.stderr.contains("gave up after 2 retries"),
        "{}",
        run.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!host.dest.exists());

    // Without --quiet the retries are announced, the error is still the last line.
    let run = host.sync(&url, &["--retries", "1"]);
    run.assert_refused("unreachable, verbose", &["refused", "connect"]);
    assert!(run.stderr.contains("retry 1 of 1"), "{}", run.stderr);
    assert!(!run.stderr.contains("hunter22"));
}

/// `--prefetch N` keeps at most N volume files in the cache and downloads N at once
/// (sampled while a sync runs, slowed by `--bwlimit`), the cache ends empty, and
/// `--bwlimit` holds the sum of the parallel downloads down.
#[test]
fn prefetch_bound_and_bandwidth_limit() {
    let Some(mut published) = served(Version::V08, plain_nginx, |fs| {
        fs.write("big.bin", &random_bytes(8, 3_500_000))
    }) else {
        return;
    };
    let (lab, server) = (&mut published.lab, &published.server);
    let oracle = lab.restore(t(0));
    let volumes: u64 = volume_sizes(&lab.repo).iter().map(|(_, s)| s).sum();
    let rate: u64 = 4 << 20;
    for prefetch in [1usize, 2] {
        let host = lab.host("b");
        let cache = host.state.join("cache");
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let (cache, done) = (cache.clone(), done.clone());
            std::thread::spawn(move || {
                let (mut most, mut parallel) = (0, 0);
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let names: Vec<String> = fs::read_dir(&cache)
                        .map(|d| {
                            d.filter_map(|e| e.ok())
                                .map(|e| e.file_name().to_string_lossy().into_owned())
                                .collect()
                        })
                        .unwrap_or_default();
                    most = most.max(names.len());
                    parallel = parallel.max(names.iter().filter(|n| n.ends_with(".part")).count());
                    std::thread::sleep(Duration::from_millis(2));
                }
                (most, parallel)
            })
        };
        let n = prefetch.to_string();
        let run = host.sync(
            &server.url,
            &["--json", "--prefetch", &n, "--bwlimit", "4M"],
        );
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let (most, parallel) = sampler.join().unwrap();
        let r = sync_report(run.assert_ok("sync with --prefetch and --bwlimit"));
        oracle.assert_same(&host.tree(), Compare::default(), "--prefetch/--bwlimit");
        assert!(
            most <= prefetch,
            "--prefetch {prefetch}: saw {most} files in the cache"
        );
        // Four volumes at 4 MiB/s in all: with room for two, two download at once.
        assert_eq!(
            parallel, prefetch,
            "--prefetch {prefetch}: saw {parallel} downloads at once"
        );
        assert_eq!(
            fs::read_dir(&cache).unwrap().count(),
            0,
            "cache left behind"
        );
        let seconds = r.phases.download_seconds;
        // Each volume may start with a burst of 1/20 s (the thread idled); the rest of it
        // comes at the rate.
        let count = volume_sizes(&lab.repo).len() as u64;
        let least = (volumes - count * rate / 20) as f64 / rate as f64;
        eprintln!(
            "--prefetch {prefetch}: at most {most} file(s) in the cache, {parallel} downloading \
             at once; {volumes} bytes downloaded in {seconds:.2}s (summed) at --bwlimit 4M \
             (at least {least:.2}s expected)"
        );
        assert!(seconds >= least * 0.9, "{seconds}s < {least}s");
    }
}

/// An admin who publishes no directory index can publish a plain index file instead
/// (`NAME [SIZE]` per line) and give its URL as SOURCE.
#[test]
fn plain_index_file_as_source() {
    let Some(mut published) = served(
        Version::V08,
        |s| http_server(&s.www, &s.srv),
        |fs| fs.write("f", &random_bytes(9, 1_500_000)),
    ) else {
        return;
    };
    let (lab, server) = (&mut published.lab, &published.server);
    lab.fs.write("g", b"g\n");
    lab.inc(t(1));
    let mut index = String::from("# made by the publishing job\n");
    for name in lab.repo_files() {
        let size = fs::metadata(lab.repo.join(&name)).unwrap().len();
        index.push_str(&format!("{name} {size}\n"));
    }
    fs::write(lab.repo.join("INDEX.txt"), index).unwrap();
    let host = lab.host("i");
    let url = format!("{}INDEX.txt", server.url);
    host.sync(&url, &[])
        .assert_ok("sync from a plain index file");
    lab.restore(t(1))
        .assert_same(&host.tree(), Compare::default(), "plain index file");
}
