//! Every way an encrypted repository can fail to decrypt or verify must fail the run with one
//! clear line, never print a passphrase, and leave DEST exactly as it was: wrong or missing
//! passphrase (also right after a right one, with gpg-agent's default cache), missing secret
//! key (named or hidden recipient), corrupt ciphertext, a volume whose encrypted bytes no
//! longer match the manifest's SHA1, and signatures that `--sign-key` does not accept.
//!
//! Each test's host first syncs to the second backup with the right credentials, then the
//! refused run targets the third.

use crate::support::gpg::{encrypted_lab, GpgHome};
use crate::support::report::{self, SyncReport};
use crate::support::scenario::{back_up, full, inc};
use crate::support::*;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

/// Test passphrases (not secrets: they protect throwaway test data).
const PASS: &str = "pw-right-5f3a";
const WRONG: &str = "pw-wrong-9d71";
const KEY_PASS: &str = "pw-key-22c8";
const SECRETS: &[&str] = &[PASS, WRONG, KEY_PASS];

type Env = Vec<(OsString, OsString)>;

/// A full and two incrementals.
fn build(lab: &mut Lab) {
    let steps = [
        full(|fs| {
            fs.write("a.txt", b"alpha\n");
            fs.write("b.bin", &random_bytes(5, 50_000));
        }),
        inc(|fs| fs.write("c/new.txt", b"new\n")),
        inc(|fs| {
            fs.write("a.txt", b"alpha, changed\n");
            fs.remove("b.bin");
        }),
    ];
    for (k, step) in steps.iter().enumerate() {
        back_up(lab, k, step);
    }
}

/// Upstream `v` writes [`build`]'s backups encrypted with `home` and `passphrase`
/// (`crypt_opts` as for [`encrypted_lab`]; the passphrase also signs, with `--sign-key`), and
/// a host syncs to the second backup with `host_opts` and `host_env` ([`host_at_t1`]).
/// `None` when upstream is missing.
fn encrypted_setup(
    v: Version,
    home: &GpgHome,
    passphrase: &str,
    crypt_opts: &[&str],
    host_opts: &[&str],
    host_env: &Env,
) -> Option<(Lab, Host)> {
    let mut lab = encrypted_lab(Lab::new(duplicity(v)?), home, passphrase, crypt_opts)
        .env("SIGN_PASSPHRASE", passphrase);
    build(&mut lab);
    let host = host_at_t1(&lab, host_opts, host_env);
    Some((lab, host))
}

/// A host that holds the second backup.
fn host_at_t1(lab: &Lab, opts: &[&str], env: &Env) -> Host {
    let host = lab.host("h");
    let ts = t(1).to_string();
    let mut a = opts.to_vec();
    a.extend(["--time", ts.as_str()]);
    host.sync_env(&lab.repo, &a, env)
        .assert_ok("first sync with the right credentials");
    lab.restore(t(1))
        .assert_same(&host.tree(), Compare::default(), "host at t1");
    host
}

/// A refused sync: what it is, its options and environment, and the words one of which its
/// error line must name.
type Case<'a> = (&'a str, &'a [&'a str], Env, &'a [&'a str]);

/// Each case's sync of `source` by `host`, in order, must be refused with an error line
/// naming one of its words, without printing a passphrase, and without changing DEST.
fn refusals(host: &Host, source: &Path, cases: Vec<Case>) -> Vec<Run> {
    cases
        .into_iter()
        .map(|(ctx, opts, env, keywords)| {
            let before = host.tree_opt();
            let r = host.sync_env(source, opts, &env);
            r.assert_refused(ctx, keywords)
                .assert_no_secret(SECRETS, ctx);
            assert_dest_unchanged(&before, &host.tree_opt(), ctx);
            r
        })
        .collect()
}

/// A copy of the repository, to damage.
fn copy_repo(lab: &Lab) -> PathBuf {
    let copy = lab.fresh("bad");
    fs::create_dir(&copy).unwrap();
    for name in lab.repo_files() {
        fs::copy(lab.repo.join(&name), copy.join(&name)).unwrap();
    }
    copy
}

/// The copy's file of the last incremental whose name contains `part`.
fn last_inc_file(lab: &Lab, copy: &Path, part: &str) -> PathBuf {
    let end = compact_time(t(2));
    let name = lab
        .repo_files()
        .into_iter()
        .find(|n| n.contains(part) && n.contains(&format!(".to.{end}.")))
        .unwrap_or_else(|| panic!("no {part} file of the last set"));
    copy.join(name)
}

fn flip_middle_byte(p: &Path) {
    let mut data = read(p);
    let mid = data.len() / 2;
    data[mid] ^= 0x55;
    fs::write(p, data).unwrap();
}

#[test]
fn symmetric_refusals() {
    let Some(home) = GpgHome::new() else { return };
    let right = home.env(Some(PASS));
    let Some((lab, host)) = encrypted_setup(Version::V08, &home, PASS, &[], &[], &right) else {
        return;
    };
    let wrong_file = lab.fresh("pw");
    fs::write(&wrong_file, format!("{WRONG}\n")).unwrap();

    // The agent just handled the right passphrase for these very files.
    refusals(
        &host,
        &lab.repo,
        vec![
            (
                "wrong PASSPHRASE right after the right one",
                &[],
                home.env(Some(WRONG)),
                &["wrong passphrase"],
            ),
            (
                "no passphrase",
                &[],
                home.env(None),
                &["passphrase is needed"],
            ),
            (
                "--passphrase-file (wrong) takes precedence over PASSPHRASE (right)",
                &["--passphrase-file", path_str(&wrong_file)],
                right.clone(),
                &["wrong passphrase"],
            ),
            (
                "missing --passphrase-file",
                &["--passphrase-file", "/nonexistent/passphrase"],
                right.clone(),
                &["passphrase file"],
            ),
            (
                "--sign-key on an unsigned repository",
                &["--sign-key", "0123456789ABCDEF"],
                right.clone(),
                &["not signed"],
            ),
        ],
    );
    refusals(
        &lab.host("f"),
        &lab.repo,
        vec![(
            "wrong PASSPHRASE, fresh host",
            &[],
            home.env(Some(WRONG)),
            &["wrong passphrase"],
        )],
    );

    // Damaged copies of the repository: (what, the damage to the last incremental's files,
    // the error's words). The manifest's SHA1 covers the stored, encrypted volume: it is
    // checked before gpg's verdict.
    type Damage<'a> = (&'a str, fn(&Lab, &Path), &'a str);
    let damages: [Damage; 3] = [
        (
            "a byte of the manifest changed",
            |lab, copy| flip_middle_byte(&last_inc_file(lab, copy, "manifest")),
            "corrupt ciphertext",
        ),
        (
            "a manifest that is not OpenPGP data",
            |lab, copy| {
                let not_openpgp = b"this is not an OpenPGP message".repeat(10);
                fs::write(last_inc_file(lab, copy, "manifest"), not_openpgp).unwrap()
            },
            "corrupt ciphertext",
        ),
        (
            "a byte of a volume changed",
            |lab, copy| flip_middle_byte(&last_inc_file(lab, copy, "vol1")),
            "SHA1 mismatch",
        ),
    ];
    for (what, damage, words) in damages {
        let bad = copy_repo(&lab);
        damage(&lab, &bad);
        refusals(&host, &bad, vec![(what, &[], right.clone(), &[words])]);
    }

    // ls reads the encrypted signature files.
    let bad = copy_repo(&lab);
    flip_middle_byte(&last_inc_file(&lab, &bad, "new-signatures"));
    let r = dupmirror_env(["ls", path_str(&bad)], &right);
    r.assert_refused("ls with a damaged signature file", &["corrupt ciphertext"])
        .assert_no_secret(SECRETS, "ls");

    // After all that, the right passphrase still brings the host to the latest backup.
    host.sync_env(&lab.repo, &[], &right)
        .assert_ok("right passphrase");
    lab.restore(t(2))
        .assert_same(&host.tree(), Compare::default(), "host at t2");
}

#[test]
fn wrong_passphrase_after_right_one_with_agent_cache() {
    // gpg's default agent settings: symmetric passphrases would be cached for 10 minutes.
    let Some(home) = GpgHome::with_agent_cache() else {
        return;
    };
    let right = home.env(Some(PASS));
    let Some((lab, host)) = encrypted_setup(Version::V3, &home, PASS, &[], &[], &right) else {
        return;
    };
    refusals(
        &host,
        &lab.repo,
        vec![(
            "wrong PASSPHRASE right after the right one, agent cache on",
            &[],
            home.env(Some(WRONG)),
            &["wrong passphrase"],
        )],
    );
}

#[test]
fn public_key_refusals() {
    let Some(home) = GpgHome::new() else { return };
    let Some(public_only) = GpgHome::new() else {
        return;
    };
    let fpr = home.gen_key("owner", KEY_PASS);
    home.export_public_to(&fpr, &public_only);
    let crypt = ["--encrypt-key", &fpr];
    let right = home.env(Some(KEY_PASS));
    let Some((lab, host)) = encrypted_setup(Version::V08, &home, KEY_PASS, &crypt, &[], &right)
    else {
        return;
    };
    refusals(
        &host,
        &lab.repo,
        vec![
            (
                "wrong passphrase of the secret key, right after the right one",
                &[],
                home.env(Some(WRONG)),
                &["wrong passphrase for the secret key"],
            ),
            (
                "no passphrase for the secret key",
                &[],
                home.env(None),
                &["passphrase is needed"],
            ),
            (
                "keyring with the public key only",
                &[],
                public_only.env(Some(KEY_PASS)),
                &["missing secret key"],
            ),
        ],
    );
}

#[test]
fn hidden_recipient_refusals() {
    let Some(home) = GpgHome::new() else { return };
    let Some(other) = GpgHome::new() else { return };
    let fpr = home.gen_key("owner", KEY_PASS);
    other.gen_key("stranger", KEY_PASS);
    let crypt = ["--hidden-encrypt-key", &fpr];
    let right = home.env(Some(KEY_PASS));
    let Some((lab, host)) = encrypted_setup(Version::V3, &home, KEY_PASS, &crypt, &[], &right)
    else {
        return;
    };
    let runs = refusals(
        &host,
        &lab.repo,
        vec![(
            "hidden recipient, keyring with another secret key",
            &[],
            other.env(Some(KEY_PASS)),
            &["missing secret key"],
        )],
    );
    assert!(
        runs[0].stderr.contains("hidden recipient"),
        "{}",
        runs[0].stderr
    );
}

/// A manifest whose signature is bad though its encryption is intact: signed, changed after
/// signing, then encrypted as it is (`--no-literal`) with an MDC.
fn forge_bad_signature(lab: &Lab, home: &GpgHome, fpr: &str, manifest: &Path) {
    let plain = lab.fresh("m");
    let signed = lab.fresh("s");
    let (plain_arg, signed_arg) = (path_str(&plain), path_str(&signed));
    let manifest_arg = path_str(manifest);
    home.gpg(&["--passphrase", PASS, "-o", plain_arg, "-d", manifest_arg]);
    home.gpg(&[
        "--passphrase",
        PASS,
        "-u",
        fpr,
        "--compress-algo",
        "none",
        "-o",
        signed_arg,
        "--sign",
        plain_arg,
    ]);
    let mut data = read(&signed);
    let at = data
        .windows(6)
        .position(|w| w == b"Volume")
        .expect("the manifest text is in the signed message");
    data[at] = b'v';
    fs::write(&signed, data).unwrap();
    home.gpg(&[
        "--passphrase",
        PASS,
        "--no-literal",
        "--compress-algo",
        "none",
        "-o",
        manifest_arg,
        "--symmetric",
        signed_arg,
    ]);
}

#[test]
fn signature_refusals() {
    let Some(master) = GpgHome::new() else { return };
    let Some(host_home) = GpgHome::new() else {
        return;
    };
    let Some(no_keys) = GpgHome::new() else {
        return;
    };
    let fpr = master.gen_key("signer", PASS);
    let other = master.gen_key("other", PASS);
    master.export_public_to(&fpr, &host_home);
    master.export_public_to(&other, &host_home);
    let short = &fpr[24..];
    let sign = ["--sign-key", short];
    let env = host_home.env(Some(PASS));
    let Some((lab, host)) = encrypted_setup(Version::V3, &master, PASS, &sign, &sign, &env) else {
        return;
    };

    refusals(
        &host,
        &lab.repo,
        vec![
            (
                "signed by another key than --sign-key",
                &["--sign-key", &other[24..]],
                env.clone(),
                &["not by --sign-key"],
            ),
            (
                "--sign-key, signer's public key not in the keyring",
                &["--sign-key", short],
                no_keys.env(Some(PASS)),
                &["cannot be verified"],
            ),
        ],
    );
    // Without --sign-key, a signature that cannot be checked is reported, not refused.
    let r = lab
        .host("u")
        .sync_env(&lab.repo, &["--json"], &no_keys.env(Some(PASS)));
    r.assert_ok("no --sign-key, signer unknown");
    let report: SyncReport = report::of(&r);
    let sigs = report.signatures.expect("signatures in the report");
    assert_eq!(sigs.unchecked, sigs.encrypted_files, "{sigs:?}");

    let bad = copy_repo(&lab);
    forge_bad_signature(&lab, &master, &fpr, &last_inc_file(&lab, &bad, "manifest"));
    refusals(
        &host,
        &bad,
        vec![
            (
                "a manifest changed after signing, --sign-key",
                &["--sign-key", short],
                env.clone(),
                &["bad signature"],
            ),
            (
                "a manifest changed after signing, no --sign-key",
                &[],
                env.clone(),
                &["bad signature"],
            ),
        ],
    );

    // An unencrypted repository carries no signature at all.
    let mut plain_lab = Lab::new(lab.dup.clone());
    build(&mut plain_lab);
    refusals(
        &plain_lab.host("p"),
        &plain_lab.repo,
        vec![(
            "--sign-key on an unencrypted repository",
            &["--sign-key", short],
            env.clone(),
            &["not encrypted"],
        )],
    );

    host.sync_env(&lab.repo, &["--sign-key", &fpr], &env)
        .assert_ok("good signatures");
    lab.restore(t(2))
        .assert_same(&host.tree(), Compare::default(), "host at t2");
}
