//! Corrupt and hostile repositories (issue 6, points 4 and 5).
//!
//! Every case starts from a good, synced DEST (or an empty one for a first sync), adds a set
//! that is damaged or malicious, runs `dupmirror sync`, and checks the contract: exit status 1 or 7
//! (never a panic or a signal) with one error line that names the problem, DEST exactly as
//! before, staging cleaned up, and nothing outside DEST touched: a canary folder beside DEST,
//! which the hostile symlinks point at, must keep its exact tree, and no new name may appear
//! beside DEST. The sets are forged byte by byte (tests/it/support/fixture), so these tests
//! need no upstream duplicity and run in a few seconds.

use crate::support::bed::{abs_outside, full_case, inc_case, Bed};
use crate::support::fixture::{
    self, delta, gunzip, gzip, gzipped_zeros, literal_delta, tar, Entry, ForgedSet, SetName,
};
use crate::support::process::{dupmirror_command, dupmirror_command_as, limit_resource};
use crate::support::*;
use std::fs;
use std::path::Path;
use std::time::Duration;

/// Where a case's bad set goes.
#[derive(Clone, Copy)]
enum Set {
    /// An incremental over the good baseline ([`inc_case`]).
    Inc,
    /// The full set of a first sync ([`full_case`]).
    Full,
}

/// A case: where the bad set goes, what it is, its entries, and the words one of which the
/// error line must name.
type Case<'a> = (Set, &'a str, Vec<Entry>, &'a [&'a str]);

/// Runs each case on a bed of its own.
fn refusals(cases: Vec<Case>) {
    for (set, ctx, entries, keywords) in cases {
        match set {
            Set::Inc => inc_case(ctx, entries, keywords),
            Set::Full => full_case(ctx, entries, keywords),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hostile names

#[test]
fn dot_dot_components_are_refused() {
    let unsafe_words = &["unsafe", ".."];
    refusals(vec![
        (
            Set::Inc,
            "snapshot/../escape",
            vec![Entry::raw("snapshot/../escape", b'0')],
            unsafe_words,
        ),
        (
            Set::Inc,
            "snapshot/a/../../escape (PAX path)",
            vec![Entry::raw("snapshot/a/../../outside/canary", b'0').pax_name()],
            unsafe_words,
        ),
        (
            Set::Inc,
            "diff/../outside/canary",
            vec![Entry::diff("../outside/canary", &literal_delta(b"pwned"))],
            unsafe_words,
        ),
        (
            Set::Inc,
            "deleted/../outside/canary",
            vec![Entry::deleted("../outside/canary")],
            unsafe_words,
        ),
        (
            Set::Inc,
            "multivol_snapshot/../x/1",
            vec![Entry::raw("multivol_snapshot/../outside/new/1", b'0')],
            unsafe_words,
        ),
        (
            Set::Full,
            "first sync: snapshot/.. as a directory",
            vec![Entry::dir("..")],
            unsafe_words,
        ),
    ]);
}

#[test]
fn absolute_names_and_nul_bytes_are_refused() {
    let bed = Bed::new();
    let mut name = b"snapshot/".to_vec();
    name.extend(abs_outside(&bed, "/canary"));
    refusals(vec![
        (
            Set::Inc,
            "snapshot//abs/path",
            vec![Entry::raw(&name, b'0')],
            &["unsafe", "absolute"],
        ),
        (
            Set::Inc,
            "PAX path /etc/...",
            vec![Entry::raw(abs_outside(&bed, "/new"), b'0').pax_name()],
            &["not a duplicity entry"],
        ),
        (
            Set::Inc,
            "NUL byte in a PAX path",
            vec![Entry::file(b"a/x\0/../../escape", b"x").pax_name()],
            &["unsafe", "nul"],
        ),
        (
            Set::Inc,
            "NUL byte in a file name",
            vec![Entry::file(b"a/evil\0name", b"x")],
            &["unsafe", "nul"],
        ),
    ]);
}

#[test]
fn paths_through_symlinks_are_refused() {
    let words = &["unsafe", "symlink"];
    let bed = Bed::new();
    let target = bed.outside.as_os_str().as_encoded_bytes().to_vec();
    refusals(vec![
        (
            Set::Inc,
            "file below a symlink (absolute target) of an earlier backup",
            vec![Entry::file("out/evil", b"x")],
            words,
        ),
        (
            Set::Inc,
            "file below a symlink (relative target) of an earlier backup",
            vec![Entry::file("outrel/evil", b"x")],
            words,
        ),
        (
            Set::Inc,
            "directory below a symlink of an earlier backup",
            vec![Entry::dir("out/sub"), Entry::file("out/sub/evil", b"x")],
            words,
        ),
        (
            Set::Inc,
            "diff below a symlink of an earlier backup",
            vec![Entry::diff("out/canary", &literal_delta(b"pwned"))],
            words,
        ),
        (
            Set::Inc,
            "symlink below a symlink of an earlier backup",
            vec![Entry::symlink("out/sub/l", "/etc/passwd")],
            words,
        ),
        (
            Set::Inc,
            "symlink made earlier in the same set",
            vec![
                Entry::symlink("new", &target),
                Entry::file("new/evil", b"x"),
            ],
            words,
        ),
        (
            Set::Full,
            "first sync: symlink made earlier in the same (full) set",
            vec![Entry::symlink("l", &target), Entry::file("l/evil", b"x")],
            words,
        ),
        (
            Set::Full,
            "first sync: relative symlink then a directory below it",
            vec![
                Entry::symlink("l", "../outside"),
                Entry::dir("l/sub"),
                Entry::file("l/sub/evil", b"x"),
            ],
            words,
        ),
        (
            Set::Inc,
            "file below a regular file",
            vec![Entry::file("basis/evil", b"x")],
            &["unsafe", "file"],
        ),
    ]);
}

/// A `deleted` entry below a symlink removes nothing (duplicity lists the children of a
/// vanished directory); it must not follow the link to delete the canary.
#[test]
fn deletions_below_symlinks_remove_nothing_outside() {
    let bed = Bed::with_inc(vec![
        Entry::deleted("out/canary"),
        Entry::deleted("out/sub"),
        Entry::deleted("outrel/canary"),
    ]);
    let outside = bed.outside_tree();
    // Either refusing or applying is acceptable; touching the canary is not.
    bed.sync().assert_no_crash("deleted below symlink");
    outside.assert_same(
        &bed.outside_tree(),
        Compare::default(),
        "deleted below symlink",
    );
    assert_eq!(bed.strays(), Vec::<String>::new());
    let tree = bed.host.tree();
    assert_eq!(tree.get(b"out").map(|n| n.kind), Some(Kind::Symlink));
}

/// A set may legitimately replace a symlink by a directory and fill it: the new content
/// lands inside DEST, never at the old link's target.
#[test]
fn replacing_a_symlink_by_a_directory_stays_inside_dest() {
    let bed = Bed::with_inc(vec![
        Entry::dir("out"),
        Entry::file("out/canary", b"inside DEST\n"),
    ]);
    let outside = bed.outside_tree();
    bed.sync().assert_ok("symlink -> dir");
    outside.assert_same(&bed.outside_tree(), Compare::default(), "symlink -> dir");
    let tree = bed.host.tree();
    assert_eq!(tree.get(b"out").map(|n| n.kind), Some(Kind::Dir));
    assert_eq!(
        fs::read(bed.host.dest.join("out/canary")).unwrap(),
        b"inside DEST\n"
    );
}

/// A diff's basis must be the regular file the previous backup left; a symlink there is a
/// type contradiction (issue 10, finding 14): refused, never followed, never "repaired".
#[test]
fn a_diff_targeting_a_symlink_is_refused() {
    let words = &["holds a symlink there; the set contradicts"];
    refusals(vec![
        (
            Set::Inc,
            "diff/fl where fl is a symlink to the canary",
            vec![Entry::diff("fl", &literal_delta(b"pwned"))],
            words,
        ),
        (
            Set::Inc,
            "diff/out where out is a symlink to a directory",
            vec![Entry::diff("out", &literal_delta(b"pwned"))],
            words,
        ),
    ]);
}

#[test]
fn hard_links_and_unknown_types_are_refused() {
    let bed = Bed::new();
    let hl = Entry::raw("snapshot/hl", b'1').link(abs_outside(&bed, "/canary"));
    refusals(vec![
        (Set::Inc, "hard link", vec![hl], &["hard link"]),
        (
            Set::Inc,
            "unknown type 'Z'",
            vec![Entry::raw("snapshot/zz", b'Z')],
            &["unsupported"],
        ),
        (
            Set::Inc,
            "GNU sparse entry",
            vec![Entry::raw("snapshot/sparse", b'S')],
            &["sparse", "unsupported"],
        ),
    ]);
}

/// Device nodes in a backup applied by a user who may not create them: a clear error,
/// nothing written.
#[test]
fn device_nodes_as_non_root_are_refused() {
    if !root_for("running dupmirror as another user") {
        return;
    }
    let bed = Bed::new();
    bed.forge.full(
        t(0),
        vec![
            Entry::dir("."),
            Entry::file("a", b"a"),
            Entry::chardev("null", 1, 3),
        ],
    );
    // The other user needs to reach the bed.
    for p in [&bed.root, &bed.forge.repo] {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(p, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let outside = bed.outside_tree();
    let (cmd, _bin) = dupmirror_command_as(65534, bed.sync_args(), &[]);
    let r = run_with_timeout(cmd, Duration::from_secs(60));
    bed.check_refused(
        &r,
        "chardev as nobody",
        &["chardev", "not permitted"],
        &None,
        &outside,
    );
}

// ---------------------------------------------------------------------------------------------
// Sizes and memory

/// Runs a sync with its address space limited, so unbounded memory shows as a failure.
fn sync_with_memory_limit(bed: &Bed, bytes: u64) -> Run {
    let mut cmd = dupmirror_command(bed.sync_args(), &[]);
    limit_resource(&mut cmd, libc::RLIMIT_AS, bytes);
    run_with_timeout(cmd, Duration::from_secs(120))
}

#[test]
fn huge_declared_sizes_fail_cleanly() {
    refusals(vec![
        (
            Set::Inc,
            "regular file declaring 1 TiB with 10 bytes of data",
            vec![Entry::file("huge", b"0123456789").declared_size(1 << 40)],
            &["eof", "end of file", "truncated", "cut"],
        ),
        (
            Set::Inc,
            "multivol chunk declaring 2^60 bytes",
            vec![Entry::raw("multivol_snapshot/huge/1", b'0')
                .data(b"abc")
                .declared_size(1 << 60)],
            &["eof", "end of file", "truncated", "cut"],
        ),
        (
            Set::Inc,
            "diff declaring 1 TiB",
            vec![Entry::diff("basis", &literal_delta(b"x")).declared_size(1 << 40)],
            &["eof", "end of file", "truncated", "cut"],
        ),
    ]);
}

/// A PAX header (or GNU long name) declares gigabytes and a gzip bomb supplies them: the
/// header must be refused before it is read into memory.
#[test]
fn oversized_extension_headers_do_not_exhaust_memory() {
    for typeflag in [b'x', b'L'] {
        let bed = Bed::new();
        bed.baseline();
        let size: u64 = 1 << 30;
        let name: &[u8] = if typeflag == b'x' {
            b"././@PaxHeader"
        } else {
            b"././@LongLink"
        };
        let h = tar::header(name, typeflag, size, &Entry::raw("", b'0'), b"");
        let mut stored = gzip(&h);
        stored.extend(gzipped_zeros(size + 4096));
        bed.forge.set_stored(SetName::Inc(t(0), t(1)), &[stored]);
        let before = bed.host.tree_opt();
        let outside = bed.outside_tree();
        let ctx = format!(
            "1 GiB '{}' header under a 512 MiB memory limit",
            typeflag as char
        );
        let r = sync_with_memory_limit(&bed, 512 << 20);
        bed.check_refused(
            &r,
            &ctx,
            &["header", "too large", "size"],
            &before,
            &outside,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Corrupt input

fn good_inc(bed: &Bed) -> ForgedSet {
    bed.forge.inc(
        t(0),
        t(1),
        vec![
            Entry::dir("a"),
            Entry::file(
                "a/f",
                &b"new f, long enough to be cut somewhere in the middle\n".repeat(40),
            ),
            Entry::deleted("a/g"),
            Entry::file("a/h", b"new h\n"),
            Entry::diff("basis", &literal_delta(b"patched basis")),
        ],
    )
}

/// A good incremental applies (so the damaged variants below fail for their damage only).
#[test]
fn the_undamaged_incremental_applies() {
    let bed = Bed::new();
    bed.baseline();
    good_inc(&bed);
    bed.sync().assert_ok("good incremental");
    assert_eq!(
        fs::read(bed.host.dest.join("basis")).unwrap(),
        b"patched basis"
    );
    assert!(!bed.host.dest.join("a/g").exists());
    assert_eq!(bed.strays(), Vec::<String>::new());
}

/// A damage case: what it is, the damage done to [`good_inc`]'s files, and the words one of
/// which the error line must name.
type Damage<'a> = (&'a str, fn(&ForgedSet), &'a [&'a str]);

/// Runs each damage case on a bed of its own.
fn damaged(cases: &[Damage]) {
    for (ctx, damage, keywords) in cases {
        let bed = Bed::new();
        bed.baseline();
        damage(&good_inc(&bed));
        bed.expect_refused(ctx, keywords);
    }
}

#[test]
fn damaged_volumes_are_refused() {
    damaged(&[
        (
            "flipped byte",
            |s| {
                let mut v = fs::read(&s.volumes[0]).unwrap();
                let mid = v.len() / 2;
                v[mid] ^= 0x20;
                fs::write(&s.volumes[0], v).unwrap();
            },
            &["sha1 mismatch"],
        ),
        (
            "truncated volume (manifest hash of the whole file)",
            |s| {
                let v = fs::read(&s.volumes[0]).unwrap();
                fs::write(&s.volumes[0], &v[..v.len() / 2]).unwrap();
            },
            &["sha1 mismatch"],
        ),
        (
            "truncated gzip stream (manifest hash matches the cut file)",
            |s| {
                let v = fs::read(&s.volumes[0]).unwrap();
                s.replace_volume(1, &v[..v.len() / 2]);
            },
            &["gzip", "corrupt", "eof", "end of file"],
        ),
        (
            "missing volume",
            |s| {
                // The manifest lists a second volume that is not there.
                let v = fs::read(&s.volumes[0]).unwrap();
                fs::write(&s.manifest, fixture::manifest::manifest(&[v.clone(), v])).unwrap();
            },
            &["missing"],
        ),
        (
            "empty volume file",
            |s| s.replace_volume(1, b""),
            &["empty", "gzip", "eof", "end of file"],
        ),
        (
            "gzip stream followed by garbage",
            |s| {
                let mut v = fs::read(&s.volumes[0]).unwrap();
                v.extend_from_slice(b"this is not a gzip member");
                s.replace_volume(1, &v);
            },
            &["gzip"],
        ),
        (
            "gzip stream followed by zero bytes",
            |s| {
                let mut v = fs::read(&s.volumes[0]).unwrap();
                v.extend_from_slice(&[0u8; 100]);
                s.replace_volume(1, &v);
            },
            &["gzip"],
        ),
        (
            "tar cut in the middle of an entry's data",
            |s| {
                let tar = gunzip(&fs::read(&s.volumes[0]).unwrap());
                // a/f is the second entry: header at 512, data from 1024.
                s.replace_volume(1, &gzip(&tar[..1024 + 700]));
            },
            &["eof", "end of file", "truncated", "cut"],
        ),
        (
            "tar cut in the middle of a header",
            |s| {
                let tar = gunzip(&fs::read(&s.volumes[0]).unwrap());
                s.replace_volume(1, &gzip(&tar[..512 + 100]));
            },
            &["block", "eof", "end of file", "truncated", "cut"],
        ),
        (
            "plain volume named .gz",
            |s| {
                let tar = gunzip(&fs::read(&s.volumes[0]).unwrap());
                s.replace_volume(1, &tar);
            },
            &["gzip"],
        ),
        (
            "bad header checksum",
            |s| {
                let mut tar = gunzip(&fs::read(&s.volumes[0]).unwrap());
                tar[600] ^= 1; // inside the second header's name field
                s.replace_volume(1, &gzip(&tar));
            },
            &["checksum", "header"],
        ),
    ]);
}

#[test]
fn bad_manifests_are_refused() {
    damaged(&[
        (
            "garbage line in the manifest",
            |s| {
                let mut m = fs::read(&s.manifest).unwrap();
                m.extend_from_slice(b"\x00\x01 garbage \xff\n");
                fs::write(&s.manifest, m).unwrap();
            },
            &["manifest"],
        ),
        (
            "manifest volume header without a number",
            |s| {
                let m = fs::read(&s.manifest).unwrap();
                let m = String::from_utf8(m)
                    .unwrap()
                    .replace("Volume 1:", "Volume one:");
                fs::write(&s.manifest, m).unwrap();
            },
            &["manifest"],
        ),
        (
            "manifest hash that is not hex",
            |s| {
                let m = String::from_utf8(fs::read(&s.manifest).unwrap()).unwrap();
                let m = m.replace("Hash SHA1 ", "Hash SHA1 zz");
                fs::write(&s.manifest, m).unwrap();
            },
            &["manifest", "hexadecimal"],
        ),
        (
            "manifest without a SHA1",
            |s| {
                let m = String::from_utf8(fs::read(&s.manifest).unwrap()).unwrap();
                let m: String = m
                    .lines()
                    .filter(|l| !l.contains("Hash"))
                    .map(|l| format!("{l}\n"))
                    .collect();
                fs::write(&s.manifest, m).unwrap();
            },
            &["sha1"],
        ),
        (
            "empty manifest",
            |s| fs::write(&s.manifest, b"").unwrap(),
            &["no volumes"],
        ),
    ]);
}

/// Two volumes whose files were swapped (the manifest follows the files, so the hashes
/// match): the entries arrive out of order, which every merge downstream relies on.
#[test]
fn volumes_out_of_order_are_refused() {
    let bed = Bed::new();
    bed.baseline();
    let set = bed.forge.set(
        SetName::Inc(t(0), t(1)),
        &[
            vec![Entry::dir("a"), Entry::file("a/f", b"one")],
            vec![Entry::file("a/h", b"two"), Entry::file("zz", b"three")],
        ],
    );
    let v1 = fs::read(&set.volumes[0]).unwrap();
    let v2 = fs::read(&set.volumes[1]).unwrap();
    fs::write(&set.volumes[0], &v2).unwrap();
    fs::write(&set.volumes[1], &v1).unwrap();
    set.rehash();
    bed.expect_refused("volumes swapped", &["out of order"]);
}

#[test]
fn entries_out_of_order_or_headless_are_refused() {
    refusals(vec![
        (
            Set::Inc,
            "entries out of order",
            vec![Entry::file("b", b"b"), Entry::file("a/z", b"a")],
            &["out of order"],
        ),
        (
            Set::Inc,
            "the same path twice",
            vec![Entry::file("x", b"1"), Entry::file("x", b"2")],
            &["out of order"],
        ),
        (
            Set::Inc,
            "a chunk run without its first chunk",
            vec![Entry::raw("multivol_snapshot/big/2", b'0').data(b"tail")],
            &["first one", "chunk"],
        ),
        (
            Set::Inc,
            "multivol entry without a chunk number",
            vec![Entry::raw("multivol_snapshot/big/x", b'0')],
            &["chunk number"],
        ),
        (
            Set::Inc,
            "an entry that is not duplicity's",
            vec![Entry::file("x", b"x"), Entry::raw("etc/passwd", b'0')],
            &["not a duplicity entry"],
        ),
        (
            Set::Full,
            "a full set holding a delta",
            vec![Entry::diff("x", &literal_delta(b"x"))],
            &["delta"],
        ),
    ]);
}

/// A delta that cannot apply is refused. (dupmirror takes it for DEST drift first and tries
/// to restore the path from the chain, which meets the same delta and fails.)
#[test]
fn bad_deltas_are_refused() {
    let words = &[
        "delta",
        "change",
        "differs from what the previous backup left",
    ];
    refusals(vec![
        (
            Set::Inc,
            "reserved opcode 0x55",
            vec![Entry::diff("basis", &delta(&[0x55]))],
            words,
        ),
        (
            Set::Inc,
            "COPY beyond the end of the basis",
            // COPY pos 5 (1 byte) len 100 (1 byte)
            vec![Entry::diff("basis", &delta(&[0x45, 5, 100]))],
            words,
        ),
        (
            Set::Inc,
            "COPY at a position far past the basis",
            // COPY pos 2^40 (8 bytes) len 1 (1 byte): opcode 0x45 + 4*3 + 0
            vec![Entry::diff(
                "basis",
                &delta(&[0x51, 0, 0, 1, 0, 0, 0, 0, 0, 1]),
            )],
            words,
        ),
        (
            Set::Inc,
            "wrong magic",
            vec![Entry::diff("basis", &[0x72, 0x73, 0x02, 0x37, 0])],
            words,
        ),
        (
            Set::Inc,
            "delta without END",
            vec![Entry::diff("basis", &[0x72, 0x73, 0x02, 0x36, 0x03, b'a'])],
            words,
        ),
        (
            Set::Inc,
            "empty delta",
            vec![Entry::diff("basis", b"")],
            words,
        ),
        (
            Set::Inc,
            "diff of a path DEST does not have",
            vec![Entry::diff("nothing", &literal_delta(b"x"))],
            &["nothing"],
        ),
        (
            Set::Inc,
            "diff of a directory",
            vec![Entry::diff("a", &literal_delta(b"x"))],
            &["contradicts"],
        ),
    ]);
}

/// When a delta does not apply, sync restores the path from the chain, reading only the
/// volumes whose manifest range covers it. A manifest whose ranges do not (damaged or
/// hostile; real duplicity writes exact ones) makes that repair find nothing: the set must
/// fail, not record the new state over the old content (found by the fault tests).
#[test]
fn a_repair_that_finds_nothing_must_not_succeed() {
    // Manifests whose volume ranges are `.` to `.`; the incremental holds a delta with a
    // reserved opcode.
    let bed = Bed::new();
    let sets = [
        (
            SetName::Full(t(0)),
            vec![
                Entry::dir("."),
                Entry::file("basis", b"0123456789"),
                Entry::file("other", b"o"),
            ],
        ),
        (
            SetName::Inc(t(0), t(1)),
            vec![Entry::diff("basis", &delta(&[0x55]))],
        ),
    ];
    for (name, entries) in sets {
        let mut set = bed.forge.set(name, &[entries]);
        set.ranges = vec![(b".".to_vec(), b".".to_vec())];
        set.rehash();
    }
    let mut first = bed.sync_args();
    first.extend(["--time".into(), t(0).to_string().into()]);
    dupmirror(first).assert_ok("baseline");
    bed.expect_refused("corrupt delta, repair finds nothing", &["basis"]);
}

// ---------------------------------------------------------------------------------------------
// File names with impossible times

#[test]
fn names_with_impossible_times_are_not_backups() {
    for bad in [
        "duplicity-full.20231399T120000Z",
        "duplicity-full.20231114T250000Z",
        "duplicity-full.29991114T120000Z",
        "duplicity-full.00001114T120000Z",
        "duplicity-full.2023-02-30T12:00:00Z",
        "duplicity-full.2023-11-14T12:00:00+99:00",
        "duplicity-full.aaa\u{e9}aaaT123456Z",
        "duplicity-full.\u{e9}\u{e9}\u{e9}\u{e9}T12345Z",
    ] {
        let bed = Bed::new();
        let set = bed.forge.full(t(0), bed.baseline_entries());
        set.rename(bad);
        bed.expect_refused(bad, &["no duplicity backup"]);
    }
}

/// An incremental that ends before it starts (or at its start) cannot come from duplicity:
/// it must not be applied.
#[test]
fn incrementals_ending_before_they_start_are_ignored() {
    for (from, to) in [(t(0), t(0) - 10), (t(0), t(0))] {
        let bed = Bed::new();
        bed.baseline();
        let inc = bed
            .forge
            .inc(t(0), t(1), vec![Entry::file("a/f", b"should not appear")]);
        inc.rename(&SetName::Inc(from, to).base());
        let ctx = format!("inc {from} -> {to}");
        let before = bed.host.tree();
        bed.sync().assert_no_crash(&ctx);
        before.assert_same(&bed.host.tree(), Compare::default(), &ctx);
        // A fresh host sees only the full set too.
        let fresh = Host::at(bed.root.join("fresh"));
        let r = fresh.sync(&bed.forge.repo, &[]);
        r.assert_no_crash(&format!("{ctx}, fresh host"));
        if r.success() {
            assert_eq!(fs::read(fresh.dest.join("a/f")).unwrap(), b"old f\n");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A first sync that fails leaves no DEST behind

#[test]
fn a_failed_first_sync_leaves_dest_absent() {
    let bed = Bed::new();
    let set = bed.forge.full(t(0), bed.baseline_entries());
    let mut v = fs::read(&set.volumes[0]).unwrap();
    let n = v.len();
    v[n - 12] ^= 0xff; // inside the gzip trailer's CRC
    set.replace_volume(1, &v);
    bed.expect_refused("first sync, bad gzip CRC", &["gzip", "crc", "corrupt"]);
    assert!(!Path::new(&bed.host.dest).exists(), "DEST was created");
}
