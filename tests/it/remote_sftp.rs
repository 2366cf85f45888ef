//! dupmirror reading `sftp://` from OpenSSH's sshd on 127.0.0.1 (its own configuration, a
//! test key, a private known_hosts), serving the folder upstream duplicity writes into: the
//! oracle scenario for an incremental and a late host; a connection cut mid-volume (a new
//! session resumes where the old one stopped); an unknown and a changed host key (refused,
//! one line, DEST untouched).

use crate::support::proxy::*;
use crate::support::remote::*;
use crate::support::scenario;
use crate::support::stores::*;
use crate::support::*;
use std::ffi::OsString;
use std::fs;

/// A test sshd serving a site whose `repo/` upstream duplicity 3.x writes into.
fn sftp_site() -> Option<(Site, Sshd, Lab)> {
    let dup = duplicity(Version::V3)?;
    let site = Site::new();
    let sshd = sshd(&site.srv)?;
    let lab = served_lab(Lab::new(dup), &site.www);
    Some((site, sshd, lab))
}

#[test]
fn sftp_matches_the_oracle() {
    let Some((site, sshd, lab)) = sftp_site() else {
        return;
    };
    let url = sshd.url(&site.www.join("repo"));
    let config = sshd.config.display().to_string();
    let mut steps = multivolume_steps();
    steps.push(scenario::full(|fs| fs.write("second-chain", b"2\n")));
    scenario::run_from(lab, "sftp", &["--ssh-config", &config], steps, 4, |_, k| {
        // duplicity's spellings name the same place.
        let scheme = ["sftp", "scp", "paramiko+sftp", "pexpect+sftp"][k % 4];
        OsString::from(url.replacen("sftp", scheme, 1))
    });
}

#[test]
fn sftp_cut_mid_volume_and_refused_host_keys() {
    let Some((site, sshd, mut lab)) = sftp_site() else {
        return;
    };
    // One volume, so that the cut below lands well inside it (1 MiB volumes put it near
    // a volume's start, where nothing of the new volume may have arrived yet).
    lab.backup_opts = ["--volsize", "10"].iter().map(OsString::from).collect();
    lab.fs.write("big.bin", &random_bytes(11, 4_000_000));
    lab.fs.write("small", b"small\n");
    lab.full(t(0));
    let oracle = lab.restore(t(0));
    let config = sshd.config.display().to_string();
    let repo = site.www.join("repo");

    let clean = lab.host("c");
    let r = sync_report(
        clean
            .sync(sshd.url(&repo), &["--json", "--ssh-config", &config])
            .assert_ok("clean sftp sync"),
    );
    let clean_bytes = r.transfer.bytes_downloaded;

    // The connection dies 2 MB into the transfer, halfway through the volume: ssh exits, a
    // new session opens the volume again at the byte reached. (Up to 1 MiB of reads is in
    // flight, and ssh drops what it holds: cut 600 kB into 1 MiB volumes, the cut once
    // met a volume of which nothing had arrived, on a loaded CI machine.) The proxy's
    // port needs its own known_hosts line.
    let proxy = FaultProxy::start(sshd.server.port, Fault::CutAfter(2_000_000), 1);
    let mut known = fs::read_to_string(&sshd.known_hosts).unwrap();
    known.push_str(&sshd.known_hosts_line(proxy.port));
    fs::write(&sshd.known_hosts, known).unwrap();
    let via_proxy = format!("sftp://root@127.0.0.1:{}/{}", proxy.port, repo.display());
    let host = lab.host("cut");
    let run = host.sync(&via_proxy, &["--json", "--ssh-config", &config]);
    let r = sync_report(run.assert_ok("sftp cut mid-volume"));
    oracle.assert_same(&host.tree(), Compare::default(), "sftp cut mid-volume");
    assert_eq!(proxy.faults(), 1);
    assert!(r.transfer.retries >= 1);
    assert!(r.transfer.bytes_resumed > 0);
    assert_eq!(r.transfer.bytes_refetched, 0);
    // Reads in flight when the link died may be asked for again, no more than a window.
    let extra = r.transfer.bytes_downloaded - clean_bytes;
    assert!(extra <= 16 * 65_536, "{extra} bytes more than a clean sync");
    eprintln!(
        "sftp cut: resumed {} bytes, refetched {}, {extra} bytes more than clean, retries {}",
        r.transfer.bytes_resumed, r.transfer.bytes_refetched, r.transfer.retries
    );

    // An unknown host key: refused at once, never added.
    fs::write(&sshd.known_hosts, "").unwrap();
    let host = lab.host("u");
    let run = host.sync(sshd.url(&repo), &["--quiet", "--ssh-config", &config]);
    assert_one_clear_line(&run, "unknown host key", &["host key"], "PRIVATE KEY");
    assert!(
        run.stderr.contains("No ED25519 host key is known"),
        "{}",
        run.stderr
    );
    assert_eq!(fs::read_to_string(&sshd.known_hosts).unwrap(), "");
    assert!(host.tree_opt().is_none());

    // A changed host key (known_hosts holds another key for the server): refused too.
    let other = site.srv.join("otherkey");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success());
    let blob = fs::read_to_string(other.with_extension("pub")).unwrap();
    let mut words = blob.split_whitespace();
    fs::write(
        &sshd.known_hosts,
        format!(
            "[127.0.0.1]:{} {} {}\n",
            sshd.server.port,
            words.next().unwrap(),
            words.next().unwrap()
        ),
    )
    .unwrap();
    let before = clean.tree();
    let run = clean.sync(sshd.url(&repo), &["--quiet", "--ssh-config", &config]);
    assert_one_clear_line(&run, "changed host key", &["has changed"], "PRIVATE KEY");
    assert_dest_unchanged(&Some(before), &clean.tree_opt(), "changed host key");
}
