//! Fuzz target: manifest parsing (repo/manifest.rs) and the quoting it uses (index.rs). A manifest
//! is the first file read from a set; any bytes must give a manifest or an error.
#![no_main]

use dupmirror::index::{quote, unquote, PathIndex};
use dupmirror::repo::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        let last = m.volumes.keys().next_back().copied();
        for (n, v) in &m.volumes {
            assert_eq!(*n, v.number);
            assert!(Some(*n) <= last);
            let _ = m.sha1_of(*n);
            let _ = v.may_contain(&PathIndex::from_bytes(b"a/b"));
            let _ = v.may_contain(&v.start);
        }
    }
    if let Ok(raw) = unquote(data) {
        // What unquote reads, quote writes back readably.
        assert_eq!(unquote(&quote(&raw)).ok().as_deref(), Some(&raw[..]));
    }
});
