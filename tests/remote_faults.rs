//! Network faults between dupmirror and a real server on 127.0.0.1, injected by a TCP proxy
//! written in the test: connections cut in the middle of a volume, a server that goes
//! silent (read timeout), `503 Service Unavailable` answers, a run that fails for good and
//! the next one that resumes. Each sync
//! must end with DEST equal to `duplicity restore` (or unchanged after a failure), and the
//! byte accounting of `--json` must show that a resumed download fetched (almost) nothing
//! twice.

mod support;

use std::fs;
use std::time::Duration;
use support::remote::*;
use support::*;

/// Volumes of about 1 MB; cuts land 300 kB into a connection's answers.
const CUT: u64 = 300_000;

struct Setup {
    _site: Site,
    lab: Lab,
    server: Server,
    oracle: Tree,
    /// What a clean sync downloads.
    clean_bytes: u64,
    volume_bytes: u64,
}

fn setup(start: impl FnOnce(&Site) -> Option<Server>) -> Option<Setup> {
    let dup = duplicity(Version::V08)?;
    let site = Site::new();
    let server = start(&site)?;
    let mut lab = served_lab(Lab::new(dup), &site.www);
    lab.fs.write("big.bin", &random_bytes(7, 2_200_000));
    lab.fs.write("small", b"small\n");
    lab.full(t(0));
    let oracle = lab.restore(t(0));
    let clean = lab.host("c");
    let r = report(clean.sync(&server.url, &["--json"]).assert_ok("clean sync"));
    let volume_bytes = volume_sizes(&lab.repo).iter().map(|(_, s)| s).sum();
    Some(Setup {
        clean_bytes: transfer(&r, "bytes_downloaded"),
        _site: site,
        lab,
        server,
        oracle,
        volume_bytes,
    })
}

fn through(proxy: &FaultProxy) -> String {
    format!("http://127.0.0.1:{}/repo/", proxy.port)
}

#[test]
fn cut_connections_resume_with_range() {
    let Some(s) = setup(|site| nginx(&site.www, &site.srv, &NginxOptions::default())) else {
        return;
    };
    let proxy = FaultProxy::start(s.server.port, Fault::CutAfter(CUT), 3);
    let host = s.lab.host("f");
    let run = host.sync(through(&proxy), &["--json"]);
    let r = report(run.assert_ok("sync through cuts"));
    s.oracle
        .assert_same(&host.tree(), Compare::default(), "sync through cuts");
    assert_eq!(
        proxy.faults(),
        3,
        "the proxy cut fewer connections than planned"
    );
    let downloaded = transfer(&r, "bytes_downloaded");
    let refetched = transfer(&r, "bytes_refetched");
    eprintln!(
        "cuts with Range: downloaded {downloaded} (clean {}), refetched {refetched}, resumed {}, retries {}",
        s.clean_bytes,
        transfer(&r, "bytes_resumed"),
        transfer(&r, "retries")
    );
    assert!(transfer(&r, "retries") >= 3);
    assert!(transfer(&r, "bytes_resumed") > 0);
    // Every byte that arrived was kept: nothing is fetched twice.
    assert_eq!(refetched, 0);
    assert!(
        downloaded <= s.clean_bytes + s.volume_bytes / 100,
        "downloaded {downloaded}, a clean sync {}",
        s.clean_bytes
    );
    assert_eq!(fs::read_dir(host.state.join("cache")).unwrap().count(), 0);
}

#[test]
fn cut_connections_without_range_start_the_file_over() {
    let Some(s) = setup(|site| http_server(&site.www, &site.srv)) else {
        return;
    };
    let proxy = FaultProxy::start(s.server.port, Fault::CutAfter(CUT), 2);
    let host = s.lab.host("f");
    let run = host.sync(through(&proxy), &["--json"]);
    let r = report(run.assert_ok("sync through cuts, no Range"));
    s.oracle
        .assert_same(&host.tree(), Compare::default(), "no Range");
    assert_eq!(proxy.faults(), 2);
    let refetched = transfer(&r, "bytes_refetched");
    let downloaded = transfer(&r, "bytes_downloaded");
    eprintln!(
        "cuts without Range: downloaded {downloaded} (clean {}), refetched {refetched}",
        s.clean_bytes
    );
    // What a cut connection had delivered comes again, no more.
    assert!(
        refetched > 0 && refetched <= 2 * CUT,
        "refetched {refetched}"
    );
    assert_eq!(downloaded, s.clean_bytes + refetched);
}

/// A connection that goes silent mid-volume is given up after `--timeout` and resumed.
#[test]
fn a_silent_server_times_out_and_the_download_resumes() {
    let Some(s) = setup(|site| nginx(&site.www, &site.srv, &NginxOptions::default())) else {
        return;
    };
    let proxy = FaultProxy::start(s.server.port, Fault::StallAfter(CUT), 1);
    let host = s.lab.host("f");
    let started = std::time::Instant::now();
    let run = host.sync(through(&proxy), &["--json", "--timeout", "1"]);
    let r = report(run.assert_ok("sync through a stall"));
    s.oracle
        .assert_same(&host.tree(), Compare::default(), "stall");
    assert_eq!(proxy.faults(), 1);
    assert!(run.stderr.contains("timed out"), "{}", run.stderr);
    assert_eq!(transfer(&r, "retries"), 1);
    assert_eq!(transfer(&r, "bytes_refetched"), 0);
    assert_eq!(transfer(&r, "bytes_downloaded"), s.clean_bytes);
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn unavailable_answers_are_retried() {
    let Some(s) = setup(|site| nginx(&site.www, &site.srv, &NginxOptions::default())) else {
        return;
    };
    let proxy = FaultProxy::start(s.server.port, Fault::Unavailable, 3);
    let host = s.lab.host("f");
    let run = host.sync(through(&proxy), &["--json"]);
    let r = report(run.assert_ok("sync through 503s"));
    s.oracle
        .assert_same(&host.tree(), Compare::default(), "503s");
    assert_eq!(proxy.faults(), 3);
    assert_eq!(transfer(&r, "retries"), 3);
    assert_eq!(transfer(&r, "bytes_downloaded"), s.clean_bytes);
    assert!(
        run.stderr.contains("503") && run.stderr.contains("retry 1 of 5"),
        "retries should be announced on stderr:\n{}",
        run.stderr
    );

    // A server that keeps failing: give up after --retries, one line, DEST unchanged.
    let proxy = FaultProxy::start(s.server.port, Fault::Unavailable, 100);
    let run = host.sync(through(&proxy), &["--quiet", "--retries", "2"]);
    assert_one_clear_line(&run, "503 for good", &["503"], "\u{0}");
    assert!(
        run.stderr.contains("gave up after 2 retries"),
        "{}",
        run.stderr
    );
    s.oracle
        .assert_same(&host.tree(), Compare::default(), "DEST after giving up");
}

/// A run that fails in the middle of a volume leaves the partial download in the cache and
/// DEST as it was; the next run asks only for the rest.
#[test]
fn a_failed_run_leaves_a_partial_that_the_next_run_resumes() {
    let Some(s) = setup(|site| nginx(&site.www, &site.srv, &NginxOptions::default())) else {
        return;
    };
    let proxy = FaultProxy::start(s.server.port, Fault::CutAfter(CUT), 1);
    let host = s.lab.host("f");
    let run = host.sync(through(&proxy), &["--quiet", "--retries", "0"]);
    assert_one_clear_line(&run, "cut with no retries", &["broke off"], "\u{0}");
    assert_dest_unchanged(&None, &host.tree_opt(), "after the failed run");
    let partial: u64 = fs::read_dir(host.state.join("cache"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(partial > 0, "no partial download was left in the cache");

    let run = host.sync(&s.server.url, &["--json"]);
    let r = report(run.assert_ok("the next run"));
    s.oracle
        .assert_same(&host.tree(), Compare::default(), "the next run");
    eprintln!("resume across runs: {partial} bytes were on disk");
    assert_eq!(transfer(&r, "bytes_resumed"), partial);
    assert_eq!(transfer(&r, "bytes_refetched"), 0);
    assert_eq!(transfer(&r, "bytes_downloaded"), s.clean_bytes - partial);
}
