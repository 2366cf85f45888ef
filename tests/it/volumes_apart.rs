//! Issue 15 item 3: a first sync decodes the full's volumes apart, several at once
//! (`DUPMIRROR_DECODERS`), each volume's files made by its own decoder; a file split across
//! volumes is written by two or more of them at its chunks' offsets.
//!
//! Upstream duplicity (0.8 and 3.x) writes a full with `--volsize 1` in which many files
//! cross volume boundaries (some several), inside folders that cross them too; every number
//! of decoders must give `duplicity restore`'s tree exactly (contents, modes, mtimes) and the
//! same counts. A damaged volume fails the build whole. A forged repository whose chunks are
//! not 64 KiB (as before duplicity 0.6.21) is read again in volume order, and still right.

use crate::support::bed::Bed;
use crate::support::fixture::{Entry, SetName};
use crate::support::lab::is_empty_dir;
use crate::support::*;
use std::ffi::OsString;
use std::fs;

fn decoders(n: &str) -> Vec<(OsString, OsString)> {
    vec![(os("DUPMIRROR_DECODERS"), os(n))]
}

/// Folders of small files between incompressible files of 0.1 to 1.6 MB: with 1 MB volumes
/// most boundaries fall inside a file, some inside a folder's run of entries.
fn boundaries(dup: Duplicity) -> (Lab, Tree) {
    let mut lab = Lab::new(dup).backup_opts(&["--volsize", "1"]);
    for d in 0..4u64 {
        for f in 0..6u64 {
            let seed = d * 10 + f;
            let size = [100_000, 1_600_000, 65_536, 700_000, 131_077, 1_000_000][f as usize];
            lab.fs.write(
                format!("d{d}/sub{}/big{f}.bin", f % 2),
                &random_bytes(seed, size),
            );
            lab.fs
                .write(format!("d{d}/sub{}/small{f}.txt", f % 2), b"small\n");
        }
        lab.fs.chmod(format!("d{d}/sub1"), 0o750);
        lab.fs.symlink(format!("d{d}/link"), "sub0");
    }
    lab.full(t(0));
    let oracle = lab.restore(t(0));
    let volumes = lab
        .repo_files()
        .iter()
        .filter(|n| n.starts_with("duplicity-full.") && n.contains(".vol"))
        .count();
    assert!(
        volumes >= 10,
        "only {volumes} volumes: the full must span many"
    );
    (lab, oracle)
}

/// The counts a sync's `--json` report gives for its set.
fn applied(run: &Run) -> serde_json::Value {
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).expect("--json report");
    report["sets"][0]["applied"].clone()
}

fn any_number_of_decoders(dup: Duplicity) {
    let (lab, oracle) = boundaries(dup);
    let mut counts = Vec::new();
    for n in ["1", "2", "3", "8"] {
        let host = lab.host(&format!("decoders{n}"));
        let run = host.sync_env(&lab.repo, &["--no-fsync", "--json"], &decoders(n));
        run.assert_ok(&format!("{n} decoders"));
        oracle.assert_same(&host.tree(), Compare::default(), &format!("{n} decoders"));
        assert_eq!(host.state_leftovers(), Vec::<String>::new(), "{n} decoders");
        counts.push(applied(&run));
    }
    assert!(
        counts[0]["files_written"].as_u64() > Some(40),
        "{}",
        counts[0]
    );
    for c in &counts[1..] {
        assert_eq!(c, &counts[0], "the counts do not depend on the decoders");
    }
}

both_versions!(any_number_of_decoders);

/// A volume in the middle whose bytes changed: the build fails whole, DEST is not made and
/// no staging is left, however many volumes were read alongside.
#[test]
fn a_damaged_volume_fails_the_whole_build() {
    let Some(dup) = duplicity(Version::V08) else {
        return;
    };
    let (lab, _) = boundaries(dup);
    let name = lab
        .repo_files()
        .into_iter()
        .find(|n| n.starts_with("duplicity-full.") && n.contains(".vol5."))
        .expect("volume 5");
    let path = lab.repo.join(&name);
    let mut bytes = fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    fs::write(&path, bytes).unwrap();
    let host = lab.host("damaged");
    let run = host.sync_env(&lab.repo, &["--no-fsync"], &decoders("3"));
    assert!(!run.success(), "a damaged volume was accepted");
    assert!(run.stderr.contains("SHA1 mismatch"), "{}", run.stderr);
    assert!(run.stderr.contains(".vol5."), "{}", run.stderr);
    assert!(
        host.tree_opt().is_none_or(|t| is_empty_dir(&t)),
        "DEST was made"
    );
    assert_eq!(host.state_leftovers(), Vec::<String>::new(), "staging left");
    assert_eq!(host.strays(), Vec::<String>::new(), "files beside DEST");
}

/// Chunks of 1000 bytes (duplicity before 0.6.21 cut them by block size): the volumes read
/// apart do not join at 64 KiB offsets, so the set is read again in volume order.
#[test]
fn uneven_chunks_are_read_in_order() {
    let bed = Bed::new();
    let head: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let middle = vec![b'm'; 1000];
    bed.forge.set(
        SetName::Full(t(0)),
        &[
            vec![
                Entry::dir("."),
                Entry::file("a", b"first\n"),
                Entry::raw("multivol_snapshot/big/1", b'0').data(&head),
            ],
            vec![Entry::raw("multivol_snapshot/big/2", b'0').data(&middle)],
            vec![
                Entry::raw("multivol_snapshot/big/3", b'0').data(b"tail"),
                Entry::file("z", b"last\n"),
            ],
        ],
    );
    let run = dupmirror_env(bed.sync_args(), &decoders("3"));
    run.assert_ok("uneven chunks");
    let mut want = head.clone();
    want.extend_from_slice(&middle);
    want.extend_from_slice(b"tail");
    assert_eq!(fs::read(bed.host.dest.join("big")).unwrap(), want);
    assert_eq!(fs::read(bed.host.dest.join("z")).unwrap(), b"last\n");
    assert_eq!(bed.host.state_leftovers(), Vec::<String>::new());
}
