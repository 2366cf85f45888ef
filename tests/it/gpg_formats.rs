//! What gpg-encrypted volumes may carry besides duplicity's defaults: other compression inside
//! the gpg message (ZLIB, BZip2, none), the old CAST5 cipher, and data without integrity
//! protection (OpenPGP packet 9, written before duplicity forced MDC). Each repository is
//! checked to really carry that format (`gpg --list-packets`), then synced and compared with
//! `duplicity restore`.

use crate::support::fixture::manifest::sha1_hex;
use crate::support::gpg::{encrypted_lab, GpgHome};
use crate::support::scenario::{self, back_up, full, inc, Step};
use crate::support::*;
use std::fs;

const PASS: &str = "pw-fmt-7e20";

fn steps<'a>() -> Vec<Step<'a>> {
    vec![
        full(|fs| {
            fs.write("a.txt", &b"alpha\n".repeat(2000));
            fs.write("b.bin", &random_bytes(3, 200_000));
            fs.symlink("l", "a.txt");
        }),
        inc(|fs| {
            fs.write("a.txt", &b"alpha, changed\n".repeat(2000));
            fs.write("c/new.txt", b"new\n");
            fs.remove("l");
        }),
    ]
}

/// Back up with `--gpg-options gpg_opts`, check the packets of the full's first volume
/// contain every one of `expect` and none of `refuse`, then sync like the oracle.
fn variant(v: Version, gpg_opts: &str, expect: &[&str], refuse: &[&str]) {
    let Some(dup) = duplicity(v) else { return };
    let Some(home) = GpgHome::new() else { return };
    let what = format!("--gpg-options={gpg_opts}");
    let out = scenario::run(
        dup,
        &what,
        |lab| encrypted_lab(lab, &home, PASS, &[&what]),
        &[],
        steps(),
    );
    let vol = out.lab.repo_file(&["full", "vol1"]);
    let packets = home.list_packets(&vol, PASS);
    for e in expect {
        assert!(packets.contains(e), "{what}: no {e:?} in\n{packets}");
    }
    for r in refuse {
        assert!(!packets.contains(r), "{what}: {r:?} in\n{packets}");
    }
}

const CAST5: &str = "symkey enc packet: version 4, cipher 3,";
const ZIP: &str = "compressed packet: algo=1";
const ZLIB: &str = "compressed packet: algo=2";
const BZIP2: &str = "compressed packet: algo=3";
const MDC: &str = "mdc_method";

#[test]
fn cast5_bzip2_08() {
    variant(
        Version::V08,
        "--cipher-algo=CAST5 --compress-algo=bzip2",
        &[CAST5, BZIP2, MDC],
        &[],
    )
}

#[test]
fn zlib_08() {
    variant(Version::V08, "--compress-algo=zlib", &[ZLIB, MDC], &[CAST5])
}

#[test]
fn uncompressed_3() {
    variant(
        Version::V3,
        "--compress-algo=none",
        &[MDC],
        &["compressed packet"],
    )
}

#[test]
fn cast5_zip_3() {
    variant(
        Version::V3,
        "--cipher-algo=CAST5 --compress-algo=zip",
        &[CAST5, ZIP, MDC],
        &[],
    )
}

/// Every file of the repository re-encrypted the way gpg wrote symmetric data before MDC
/// (packet 9, CAST5), with the manifests' volume hashes updated to the new files.
fn make_legacy(lab: &Lab, home: &GpgHome) {
    let plain = lab.fresh("plain");
    let plain_arg = path_str(&plain).to_string();
    let recrypt = |name: &str, edit: &dyn Fn(Vec<u8>) -> Vec<u8>| {
        let path = lab.repo.join(name);
        let path_arg = path_str(&path);
        home.gpg(&["--passphrase", PASS, "-o", &plain_arg, "-d", path_arg]);
        fs::write(&plain, edit(read(&plain))).unwrap();
        home.gpg(&[
            "--passphrase",
            PASS,
            "--rfc2440",
            "--cipher-algo",
            "CAST5",
            "-o",
            path_arg,
            "--symmetric",
            &plain_arg,
        ]);
    };
    let files = lab.repo_files();
    let (manifests, others): (Vec<&String>, Vec<&String>) =
        files.iter().partition(|n| n.contains(".manifest"));
    let mut renamed_hashes = Vec::new();
    for name in others {
        let before = sha1_hex(&read(&lab.repo.join(name)));
        recrypt(name, &|data| data);
        renamed_hashes.push((before, sha1_hex(&read(&lab.repo.join(name)))));
    }
    for name in manifests {
        recrypt(name, &|data| {
            let mut text = String::from_utf8(data).expect("test manifests are UTF-8");
            for (old, new) in &renamed_hashes {
                text = text.replace(old, new);
            }
            text.into_bytes()
        });
    }
}

#[test]
fn legacy_data_without_mdc_08() {
    let Some(dup) = duplicity(Version::V08) else {
        return;
    };
    let Some(home) = GpgHome::new() else { return };
    let mut lab = encrypted_lab(Lab::new(dup), &home, PASS, &[]);
    for (k, step) in steps().iter().enumerate() {
        back_up(&mut lab, k, step);
    }
    make_legacy(&lab, &home);
    let packets = home.list_packets(&lab.repo_file(&["full", "vol1"]), PASS);
    assert!(
        packets.contains(":encrypted data packet:") && !packets.contains(MDC),
        "not legacy data:\n{packets}"
    );
    let host = lab.host("i");
    for &time in &lab.times {
        let oracle = lab.restore(time);
        let ts = time.to_string();
        let ctx = format!("legacy CAST5 data without MDC, sync --time {time}");
        host.sync_env(&lab.repo, &["--time", &ts], &lab.dupmirror_env)
            .assert_ok(&ctx);
        oracle.assert_same(&host.tree(), Compare::default(), &ctx);
    }
}
