//! dupmirror over FTP and FTPS against pyftpdlib on 127.0.0.1: the oracle scenario with a
//! login, a server without MLSD or REST (LIST listing, whole downloads), explicit TLS with a
//! private CA, resuming
//! from a partial download with `REST`, a damaged partial file fetched again, and one clear
//! error line without the password for a wrong login or an unreachable server.

use crate::support::remote::*;
use crate::support::report::{self, StatusReport};
use crate::support::*;
use std::fs;

fn anonymous_ftp(site: &Site) -> Option<Server> {
    ftp_server(&site.www, &site.srv, &FtpOptions::default())
}

fn login() -> Option<(String, String)> {
    Some(("bob".into(), "ftp-pa55".into()))
}

#[test]
fn ftp_with_login_matches_the_oracle() {
    let Some(dup) = duplicity(Version::V08) else {
        return;
    };
    let opts = FtpOptions {
        login: login(),
        ..FtpOptions::default()
    };
    oracle_over(dup, "ftp", |s| ftp_server(&s.www, &s.srv, &opts));
}

/// A full backup of a big file spanning volumes and a small one.
fn big_and_small(fs: &Fs) {
    fs.write("big.bin", &random_bytes(5, 2_200_000));
    fs.write("d/small", b"small\n");
}

/// A server without MLSD and REST: the listing comes from LIST, and a partial download
/// cannot resume, so the volume comes whole again.
#[test]
fn minimal_ftp_server_without_mlsd_or_rest() {
    let opts = FtpOptions {
        minimal: true,
        ..FtpOptions::default()
    };
    let Some(mut published) = served(
        Version::V3,
        |s| ftp_server(&s.www, &s.srv, &opts),
        big_and_small,
    ) else {
        return;
    };
    let (lab, server) = (&mut published.lab, &published.server);
    let (vol1, _) = volume_sizes(&lab.repo)[0].clone();
    let host = lab.host("h");
    let cache = host.state.join("cache");
    fs::create_dir_all(&cache).unwrap();
    let partial = &read(&lab.repo.join(&vol1))[..100_000];
    fs::write(cache.join(format!("{vol1}.part")), partial).unwrap();
    let run = host.sync(&server.url, &["--json"]);
    let r = sync_report(run.assert_ok("minimal ftp server"));
    lab.restore(t(0))
        .assert_same(&host.tree(), Compare::default(), "minimal ftp server");
    assert_eq!(r.transfer.bytes_resumed, 0);
    assert_eq!(r.transfer.bytes_refetched, 100_000);
}

#[test]
fn ftps_with_a_private_ca() {
    let ftps = |site: &Site, tls| {
        let opts = FtpOptions {
            login: login(),
            tls: Some(tls),
            ..FtpOptions::default()
        };
        ftp_server(&site.www, &site.srv, &opts)
    };
    let Some((mut published, ca)) = served_tls(Version::V08, ftps, |fs| fs.write("x", b"x\n"))
    else {
        return;
    };
    let (lab, server, site) = (&mut published.lab, &published.server, &published.site);
    let host = lab.host("n");
    assert_untrusted(&host, &server.url, "ftps without the CA", "ftp-pa55");
    let mut lab2 = served_lab(Lab::new(lab.dup.clone()), &site.www);
    fs::remove_dir_all(site.www.join("repo")).unwrap();
    big_and_small(&lab2.fs);
    lab2.full(t(0));
    let host = lab2.host("h");
    host.sync(&server.url, &["--ca-file", &ca])
        .assert_ok("ftps with --ca-file");
    lab2.restore(t(0))
        .assert_same(&host.tree(), Compare::default(), "ftps with --ca-file");
}

#[test]
fn wrong_password_and_unreachable_server() {
    let site = Site::new();
    let opts = FtpOptions {
        login: login(),
        ..FtpOptions::default()
    };
    let Some(server) = ftp_server(&site.www, &site.srv, &opts) else {
        return;
    };
    fs::create_dir_all(site.www.join("repo")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = Host::at(dir.path().to_path_buf());
    let wrong = format!("ftp://bob:not-the-pa55@127.0.0.1:{}/repo", server.port);
    let run = host.sync(&wrong, &["--quiet"]);
    assert_one_clear_line(
        &run,
        "wrong ftp password",
        &["login", "530"],
        "not-the-pa55",
    );
    assert!(run.stderr.contains("bob:***@"), "{}", run.stderr);
    assert!(!host.dest.exists());

    let port = free_port();
    let gone = format!("ftp://bob:ftp-pa55@127.0.0.1:{port}/repo");
    let run = host.sync(&gone, &["--quiet", "--retries", "1"]);
    assert_one_clear_line(&run, "unreachable ftp", &["refused", "connect"], "ftp-pa55");
    assert!(!host.dest.exists());
}

/// An earlier run left half of the first volume in the cache: the next run asks for the
/// rest with REST, and a damaged partial file is detected by its SHA1 and fetched again.
#[test]
fn partial_downloads_resume_with_rest() {
    let Some(mut published) = served(Version::V08, anonymous_ftp, |fs| {
        fs.write("big.bin", &random_bytes(6, 2_200_000))
    }) else {
        return;
    };
    let (lab, server) = (&mut published.lab, &published.server);
    let oracle = lab.restore(t(0));
    let (vol1, size1) = volume_sizes(&lab.repo)[0].clone();
    let data = read(&lab.repo.join(&vol1));
    let half = size1 as usize / 2;

    let clean = lab.host("c");
    let r0 = sync_report(clean.sync(&server.url, &["--json"]).assert_ok("clean sync"));

    // A good partial: only the rest is downloaded.
    let host = lab.host("r");
    fs::create_dir_all(host.state.join("cache")).unwrap();
    fs::write(
        host.state.join("cache").join(format!("{vol1}.part")),
        &data[..half],
    )
    .unwrap();
    let run = host.sync(&server.url, &["--json"]);
    let r = sync_report(run.assert_ok("resumed sync"));
    oracle.assert_same(&host.tree(), Compare::default(), "resumed sync");
    assert_eq!(r.transfer.bytes_resumed, half as u64);
    assert_eq!(r.transfer.bytes_refetched, 0);
    assert_eq!(
        r.transfer.bytes_downloaded,
        r0.transfer.bytes_downloaded - half as u64
    );
    assert_eq!(fs::read_dir(host.state.join("cache")).unwrap().count(), 0);

    // A damaged partial: the SHA1 check catches it and the volume is fetched whole.
    let host = lab.host("b");
    fs::create_dir_all(host.state.join("cache")).unwrap();
    let mut bad = data[..half].to_vec();
    bad[100] ^= 0xff;
    fs::write(host.state.join("cache").join(format!("{vol1}.part")), &bad).unwrap();
    let run = host.sync(&server.url, &["--json"]);
    let r = sync_report(run.assert_ok("damaged partial"));
    oracle.assert_same(&host.tree(), Compare::default(), "damaged partial");
    assert_eq!(r.transfer.bytes_refetched, size1);
    assert_eq!(
        r.transfer.bytes_downloaded,
        r0.transfer.bytes_downloaded - half as u64 + size1
    );
}

/// `ls` and `status` read a remote source as they read the same folder locally.
#[test]
fn ls_and_status_over_ftp() {
    let Some(mut published) = served(Version::V3, anonymous_ftp, |fs| {
        fs.write("a/b", b"b\n");
        fs.write("c", &random_bytes(10, 1_200_000));
    }) else {
        return;
    };
    let (lab, server) = (&mut published.lab, &published.server);
    lab.fs.remove("a/b");
    lab.fs.write("d", b"d\n");
    lab.inc(t(1));
    let repo = lab.repo.display().to_string();
    let remote = dupmirror(["ls", server.url.as_str()]);
    remote.assert_ok("ls over ftp");
    let local = dupmirror(["ls", repo.as_str()]);
    assert_eq!(remote.stdout_text(), local.stdout_text());
    assert!(
        remote.stdout_text().contains("\nd\n"),
        "{}",
        remote.stdout_text()
    );

    let remote = dupmirror(["status", server.url.as_str(), "--json"]);
    let local = dupmirror(["status", repo.as_str(), "--json"]);
    let (remote, local): (StatusReport, StatusReport) = (report::of(&remote), report::of(&local));
    assert_eq!(remote.chains, local.chains);
    assert_eq!(remote.latest, local.latest);
}
