//! Encrypted repositories written by upstream duplicity 0.8.22 and 3.2.1 — symmetric,
//! public-key, hidden recipient, signed — must sync like `duplicity restore` restores them:
//! an incremental host after every backup, a late host once at the end, and a fresh host for
//! every backup time (the scenario driver in tests/it/support/scenario.rs). Each test has its
//! own GNUPGHOME and stops its agent at the end.

use crate::support::gpg::{encrypted_lab, GpgHome};
use crate::support::report::{self, Signatures, SyncReport};
use crate::support::scenario::{self, full, inc, Step};
use crate::support::*;
use std::ffi::OsString;
use std::fs;

both_versions!(symmetric, signed);

both_versions!(
    public_key => |d| public_key(d, false),
    hidden_recipient => |d| public_key(d, true),
);

/// Test passphrases (not secrets: they protect throwaway test data).
const PASS: &str = "pw-sym-4c1d";
const KEY_PASS: &str = "pw-key-93ab";

/// Full + 3 incrementals over a tree whose incompressible file spans two volumes at
/// `--volsize 1`, so volume 1 carries gpg's junk padding after its tar stream.
fn steps<'a>() -> Vec<Step<'a>> {
    vec![
        full(|fs| {
            fs.write("a.txt", b"alpha\n");
            fs.write("big.bin", &random_bytes(1, 1_400_000));
            fs.write("d/x.txt", b"x\n");
            fs.symlink("link", "a.txt");
        }),
        inc(|fs| {
            fs.write("a.txt", b"alpha, changed\n");
            fs.write("d/y.txt", b"y\n");
        }),
        inc(|fs| {
            let mut big = random_bytes(1, 1_400_000);
            big[700_000..760_000].copy_from_slice(&random_bytes(2, 60_000));
            fs.write("big.bin", &big);
            fs.remove("d/x.txt");
        }),
        inc(|fs| {
            fs.chmod("a.txt", 0o600);
            fs.write("e/new.txt", b"new\n");
            fs.symlink("link", "d/y.txt");
        }),
    ]
}

/// What a fresh host's `sync --json` says of the signatures it read.
fn signatures(lab: &Lab, opts: &[&str], env: &[(OsString, OsString)]) -> Signatures {
    let host = lab.host("j");
    let mut a = opts.to_vec();
    a.push("--json");
    let r = host.sync_env(&lab.repo, &a, env);
    let report: SyncReport = report::of(r.assert_ok("sync --json"));
    report.signatures.expect("signatures in the report")
}

fn symmetric(dup: Duplicity) {
    let Some(home) = GpgHome::new() else { return };
    // dupmirror reads the passphrase from a file here; upstream from PASSPHRASE.
    let pass_file = home.dir.join("passphrase");
    fs::write(&pass_file, format!("{PASS}\n")).unwrap();
    let pass_arg = path_str(&pass_file).to_string();
    let out = scenario::run(
        dup,
        "symmetric",
        |lab| {
            let mut lab = encrypted_lab(lab, &home, PASS, &[]).backup_opts(&["--volsize", "1"]);
            lab.dupmirror_env = home.env(None);
            lab
        },
        &["--passphrase-file", &pass_arg],
        steps(),
    );
    let lab = &out.lab;
    assert!(
        lab.repo_files().iter().all(|f| f.ends_with(".gpg")),
        "every file is encrypted: {:?}",
        lab.repo_files()
    );
    assert!(
        lab.repo_files().iter().any(|f| f.contains(".vol2.")),
        "a multi-volume set"
    );

    // `ls` reads the encrypted signature files.
    let last = *lab.times.last().unwrap();
    let r = dupmirror_env(["ls", &lab.url()], &home.env(Some(PASS)));
    r.assert_ok("ls");
    let listed: std::collections::BTreeSet<Vec<u8>> = r
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    assert_eq!(
        listed,
        lab.list_current_files(last),
        "ls vs list-current-files"
    );

    // Unsigned files are counted, not refused.
    let sigs = signatures(lab, &[], &home.env(Some(PASS)));
    assert!(sigs.encrypted_files >= 8, "{sigs:?}");
    assert_eq!(sigs.unsigned, sigs.encrypted_files, "{sigs:?}");
    assert_eq!(sigs.signed, 0, "{sigs:?}");
}

fn public_key(dup: Duplicity, hidden: bool) {
    let Some(home) = GpgHome::new() else { return };
    let fpr = home.gen_key("backup", KEY_PASS);
    let flag = if hidden {
        "--hidden-encrypt-key"
    } else {
        "--encrypt-key"
    };
    let what = if hidden {
        "hidden recipient"
    } else {
        "public key"
    };
    let out = scenario::run(
        dup,
        what,
        |lab| encrypted_lab(lab, &home, KEY_PASS, &[flag, &fpr]).backup_opts(&["--volsize", "1"]),
        &[],
        steps(),
    );
    // The recipient is named in the files, or hidden (all-zero key ID).
    let manifest = out.lab.repo_file(&["full", "manifest"]);
    let packets = home.list_packets(&manifest, KEY_PASS);
    assert_eq!(
        packets.contains("keyid 0000000000000000"),
        hidden,
        "{what}: {packets}"
    );
}

fn signed(dup: Duplicity) {
    let Some(master) = GpgHome::new() else { return };
    let Some(host_home) = GpgHome::new() else {
        return;
    };
    // duplicity reads the signing key's passphrase from SIGN_PASSPHRASE, and requires it to
    // equal the symmetric one.
    let fpr = master.gen_key("signer", PASS);
    // The host has only the signer's public key: it needs no secret to check signatures.
    master.export_public_to(&fpr, &host_home);
    let short = &fpr[24..];
    let out = scenario::run(
        dup,
        "signed",
        |lab| {
            let mut lab = encrypted_lab(lab, &master, PASS, &["--sign-key", short])
                .env("SIGN_PASSPHRASE", PASS)
                .backup_opts(&["--volsize", "1"]);
            lab.dupmirror_env = host_home.env(Some(PASS));
            lab
        },
        &["--sign-key", short],
        steps(),
    );
    let env = host_home.env(Some(PASS));
    let sigs = signatures(&out.lab, &["--sign-key", &fpr], &env);
    assert!(sigs.encrypted_files >= 8, "{sigs:?}");
    assert_eq!(sigs.signed, sigs.encrypted_files, "{sigs:?}");
    assert_eq!(sigs.signers, vec![fpr.clone()], "{sigs:?}");

    // verify reads the encrypted signature files, and --repair the volumes, under the same
    // signature rule.
    let lab = &out.lab;
    let host = lab.host("v");
    host.sync_env(&lab.repo, &["--sign-key", short], &env)
        .assert_ok("sync before verify");
    fs::write(host.dest.join("a.txt"), b"edited on the host\n").unwrap();
    let verify = |extra: &[&str], env: &[(OsString, OsString)]| {
        let mut a = vec!["--sign-key", short];
        a.extend(extra);
        host.run("verify", &lab.repo, &a, env)
    };
    verify(&[], &env).assert_refused("verify of an edited file", &["differs"]);
    verify(&["--repair"], &host_home.env(None))
        .assert_refused("verify --repair without passphrase", &["passphrase"]);
    verify(&["--repair"], &env).assert_ok("verify --repair");
    let (last, oracle) = out.oracles.last().unwrap();
    oracle.assert_same(
        &host.tree(),
        Compare::default(),
        &format!("after verify --repair, at {last}"),
    );
}
