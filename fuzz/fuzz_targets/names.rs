//! Fuzz target: repository file names (repo/filename.rs) and the time forms they and `--time`
//! use (repo/time.rs). A name comes from a listing of an untrusted folder or server; parsing it
//! must never panic, and whatever it accepts must be self-consistent.
#![no_main]

use dupmirror::repo::filename::{NameParser, Prefixes, SetKind};
use dupmirror::repo::time;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static AUTO: LazyLock<NameParser> = LazyLock::new(|| NameParser::new(&Prefixes::default(), ':'));
static PREFIXED: LazyLock<NameParser> = LazyLock::new(|| {
    NameParser::new(
        &Prefixes {
            global: "p.".into(),
            archive: "a_".into(),
            manifest: "m_".into(),
            signature: "s_".into(),
            jsonstat: String::new(),
        },
        '_',
    )
});

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    for parser in [&*AUTO, &*PREFIXED] {
        if let Some(f) = parser.parse(name, Some(data.len() as u64)) {
            assert_eq!(f.name, name);
            assert_eq!(f.set == SetKind::Inc, f.start_time.is_some(), "{name:?}");
            if let Some(start) = f.start_time {
                assert!(
                    start < f.end_time,
                    "{name:?}: an incremental ends after it starts"
                );
            }
        }
    }
    let _ = time::parse_name_time(name, ':');
    let _ = time::parse_base36(name);
    let _ = time::parse_user_time(name, 1_700_000_000);
});
