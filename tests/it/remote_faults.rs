//! Network faults between dupmirror and a real server on 127.0.0.1, injected by a TCP proxy
//! written in the test: connections cut in the middle of a volume, a server that goes
//! silent (read timeout), `503 Service Unavailable` answers, a run that fails for good and
//! the next one that resumes. Each sync
//! must end with DEST equal to `duplicity restore` (or unchanged after a failure), and the
//! byte accounting of `--json` must show that a resumed download fetched (almost) nothing
//! twice.

use crate::support::proxy::{Fault, FaultProxy};
use crate::support::remote::*;
use crate::support::report::SyncReport;
use crate::support::*;
use std::fs;
use std::time::Duration;

/// Volumes of about 1 MB; cuts land 300 kB into a connection's answers.
const CUT: u64 = 300_000;

struct Setup {
    published: Served,
    oracle: Tree,
    /// What a clean sync downloads.
    clean_bytes: u64,
    volume_bytes: u64,
}

fn setup(start: impl FnOnce(&Site) -> Option<Server>) -> Option<Setup> {
    let big_and_small = |fs: &Fs| {
        fs.write("big.bin", &random_bytes(7, 2_200_000));
        fs.write("small", b"small\n");
    };
    let published = served(Version::V08, start, big_and_small)?;
    let lab = &published.lab;
    let oracle = lab.restore(t(0));
    let clean = lab.host("c");
    let url = &published.server.url;
    let r = sync_report(clean.sync(url, &["--json"]).assert_ok("clean sync"));
    let volume_bytes = volume_sizes(&lab.repo).iter().map(|(_, s)| s).sum();
    Some(Setup {
        clean_bytes: r.transfer.bytes_downloaded,
        published,
        oracle,
        volume_bytes,
    })
}

impl Setup {
    fn host(&self) -> Host {
        self.published.lab.host("f")
    }

    /// A fresh host's sync (`--json` and `extra`) through a proxy that spoils the first
    /// `faults` connections with `fault`: it must succeed, with DEST equal to the oracle and
    /// every planned fault spent. Returns the host, the run and its report.
    fn sync_despite(
        &self,
        fault: Fault,
        faults: usize,
        extra: &[&str],
        ctx: &str,
    ) -> (Host, Run, SyncReport) {
        let host = self.host();
        let mut opts = vec!["--json"];
        opts.extend_from_slice(extra);
        let (proxy, run) = self.sync_through(&host, fault, faults, &opts);
        let r = sync_report(run.assert_ok(ctx));
        self.oracle
            .assert_same(&host.tree(), Compare::default(), ctx);
        assert_eq!(
            proxy.faults(),
            faults,
            "{ctx}: the proxy spoiled fewer connections than planned"
        );
        (host, run, r)
    }

    /// `host`'s sync with `extra` options through a proxy that spoils the first `faults`
    /// connections with `fault`; returns the proxy (to count the faults) and the run.
    fn sync_through(
        &self,
        host: &Host,
        fault: Fault,
        faults: usize,
        extra: &[&str],
    ) -> (FaultProxy, Run) {
        let proxy = FaultProxy::start(self.published.server.port, fault, faults);
        let url = format!("http://127.0.0.1:{}/repo/", proxy.port);
        let run = host.sync(url, extra);
        (proxy, run)
    }
}

#[test]
fn cut_connections_resume_with_range() {
    let Some(s) = setup(plain_nginx) else {
        return;
    };
    let (host, _, r) = s.sync_despite(Fault::CutAfter(CUT), 3, &[], "sync through cuts");
    let (downloaded, refetched) = (r.transfer.bytes_downloaded, r.transfer.bytes_refetched);
    eprintln!("cuts with Range, clean {}: {:?}", s.clean_bytes, r.transfer);
    assert!(r.transfer.retries >= 3);
    assert!(r.transfer.bytes_resumed > 0);
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
    let (_, _, r) = s.sync_despite(Fault::CutAfter(CUT), 2, &[], "sync through cuts, no Range");
    let (downloaded, refetched) = (r.transfer.bytes_downloaded, r.transfer.bytes_refetched);
    eprintln!(
        "cuts without Range, clean {}: {:?}",
        s.clean_bytes, r.transfer
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
    let Some(s) = setup(plain_nginx) else {
        return;
    };
    let started = std::time::Instant::now();
    let (_, run, r) = s.sync_despite(
        Fault::StallAfter(CUT),
        1,
        &["--timeout", "1"],
        "sync through a stall",
    );
    assert!(run.stderr.contains("timed out"), "{}", run.stderr);
    assert_eq!(r.transfer.retries, 1);
    assert_eq!(r.transfer.bytes_refetched, 0);
    assert_eq!(r.transfer.bytes_downloaded, s.clean_bytes);
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn unavailable_answers_are_retried() {
    let Some(s) = setup(plain_nginx) else {
        return;
    };
    let (host, run, r) = s.sync_despite(Fault::Unavailable, 3, &[], "sync through 503s");
    assert_eq!(r.transfer.retries, 3);
    assert_eq!(r.transfer.bytes_downloaded, s.clean_bytes);
    assert!(
        run.stderr.contains("503") && run.stderr.contains("retry 1 of 5"),
        "retries should be announced on stderr:\n{}",
        run.stderr
    );

    // A server that keeps failing: give up after --retries, one line, DEST unchanged.
    let (_, run) = s.sync_through(
        &host,
        Fault::Unavailable,
        100,
        &["--quiet", "--retries", "2"],
    );
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
    let Some(s) = setup(plain_nginx) else {
        return;
    };
    let host = s.host();
    let (_proxy, run) = s.sync_through(
        &host,
        Fault::CutAfter(CUT),
        1,
        &["--quiet", "--retries", "0"],
    );
    assert_one_clear_line(&run, "cut with no retries", &["broke off"], "\u{0}");
    assert_dest_unchanged(&None, &host.tree_opt(), "after the failed run");
    let partial: u64 = fs::read_dir(host.state.join("cache"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(partial > 0, "no partial download was left in the cache");

    let run = host.sync(&s.published.server.url, &["--json"]);
    let r = sync_report(run.assert_ok("the next run"));
    s.oracle
        .assert_same(&host.tree(), Compare::default(), "the next run");
    eprintln!("resume across runs: {partial} bytes were on disk");
    assert_eq!(r.transfer.bytes_resumed, partial);
    assert_eq!(r.transfer.bytes_refetched, 0);
    assert_eq!(r.transfer.bytes_downloaded, s.clean_bytes - partial);
}
