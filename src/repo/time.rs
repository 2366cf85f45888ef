//! Backup times: the three encodings found in file names, and the forms a user may type.
//!
//! Times live only in file names (docs/format.md §2.4): compact UTC `20260102T030405Z`,
//! the old W3 form `2026-01-02T03:04:05-05:00` (with a configurable clock separator), and
//! base-36 epoch seconds in short names. `--time` accepts what duplicity documents for
//! restore: those forms, epoch seconds, `now`, dates and intervals such as `3D2h` (ago).

use chrono::{Local, NaiveDate, NaiveDateTime, TimeZone, Utc};

/// Seconds since the epoch, UTC.
pub type Epoch = i64;

fn fields_to_epoch(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Option<Epoch> {
    if !(1901..2100).contains(&y) {
        return None;
    }
    // Upstream tolerates second 60/61 (leap seconds); chrono does not, so clamp to 59.
    let date = NaiveDate::from_ymd_opt(y, mo, d)?;
    let dt = date.and_hms_opt(h, mi, s.min(59))?;
    Some(dt.and_utc().timestamp() + i64::from(s.saturating_sub(59)))
}

fn num<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a time field of a long file name: compact UTC, or W3 with a zone designator
/// (`Z` or `±HH<sep>MM`) whose clock fields are separated by `sep` (`:` unless the user
/// passed duplicity's `--time-separator`).
pub fn parse_name_time(s: &str, sep: char) -> Option<Epoch> {
    // Every valid form is ASCII; checking first keeps the byte slicing below on character
    // boundaries whatever a hostile file name holds.
    if !s.is_ascii() {
        return None;
    }
    let s = s.to_ascii_uppercase();
    if s.len() == 16 && s.as_bytes()[8] == b'T' && s.ends_with('Z') {
        return fields_to_epoch(
            num(&s[0..4])?,
            num(&s[4..6])?,
            num(&s[6..8])?,
            num(&s[9..11])?,
            num(&s[11..13])?,
            num(&s[13..15])?,
        );
    }
    parse_w3(&s, sep)
}

fn parse_w3(s: &str, sep: char) -> Option<Epoch> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-');
    let (y, mo, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    if d.next().is_some() || rest.len() < 8 {
        return None;
    }
    let clock: Vec<&str> = rest.get(..8)?.split(sep).collect();
    if clock.len() != 3 {
        return None;
    }
    let utc = fields_to_epoch(y, mo, day, num(clock[0])?, num(clock[1])?, num(clock[2])?)?;
    let zone = &rest[8..];
    let offset = if zone == "Z" {
        0
    } else {
        let sign = match zone.as_bytes().first()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let (hh, mm) = zone[1..].split_once(sep)?;
        let (hh, mm): (i64, i64) = (num(hh)?, num(mm)?);
        if hh > 23 || mm > 59 {
            return None;
        }
        sign * (hh * 3600 + mm * 60)
    };
    Some(utc - offset)
}

/// Parses base-36 epoch seconds (`tp4bup`) as used by short file names.
pub fn parse_base36(s: &str) -> Option<Epoch> {
    if s.is_empty() || s.len() > 12 {
        return None;
    }
    let v = i64::from_str_radix(s, 36).ok()?;
    // Upper case digits are not written by duplicity; a valid name never has them.
    if s.bytes().any(|b| b.is_ascii_uppercase()) || v <= 0 {
        return None;
    }
    Some(v)
}

/// Compact UTC form, as in long file names.
pub fn format_compact(t: Epoch) -> String {
    match Utc.timestamp_opt(t, 0).single() {
        Some(dt) => dt.format("%Y%m%dT%H%M%SZ").to_string(),
        None => t.to_string(),
    }
}

/// ISO 8601 for `--json`: `2026-01-02T03:04:05Z`.
pub fn format_iso(t: Epoch) -> String {
    match Utc.timestamp_opt(t, 0).single() {
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => t.to_string(),
    }
}

/// Parses a `--time` argument relative to `now`.
pub fn parse_user_time(s: &str, now: Epoch) -> Result<Epoch, String> {
    let t = s.trim();
    let bad = || {
        format!(
            "cannot read time {s:?}: use 2026-01-02T03:04:05Z, 20260102T030405Z, epoch seconds, \
             a date such as 2026-01-02, `now`, or an interval such as 3D (3 days ago)"
        )
    };
    if t.eq_ignore_ascii_case("now") {
        return Ok(now);
    }
    if let Some(v) = num::<i64>(t) {
        return Ok(v);
    }
    if let Some(v) = parse_name_time(t, ':') {
        return Ok(v);
    }
    // ISO without a zone: local time, as duplicity appends the local zone.
    for fmt in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, fmt) {
            return local(naive).ok_or_else(bad);
        }
    }
    for fmt in ["%Y-%m-%d", "%Y/%m/%d", "%m/%d/%Y", "%m-%d-%Y"] {
        if let Ok(date) = NaiveDate::parse_from_str(t, fmt) {
            return date.and_hms_opt(0, 0, 0).and_then(local).ok_or_else(bad);
        }
    }
    parse_interval(t).map(|secs| now - secs).ok_or_else(bad)
}

fn local(naive: NaiveDateTime) -> Option<Epoch> {
    Local
        .from_local_datetime(&naive)
        .earliest()
        .map(|dt| dt.timestamp())
}

/// `3D2h30m` style intervals: s, m, h, D, W, M (30 days), Y (365 days).
fn parse_interval(s: &str) -> Option<i64> {
    let mut total: i64 = 0;
    let mut digits = String::new();
    let mut any = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'D' => 86400,
            'W' => 7 * 86400,
            'M' => 30 * 86400,
            'Y' => 365 * 86400,
            _ => return None,
        };
        let n: i64 = digits.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        digits.clear();
        any = true;
    }
    (any && digits.is_empty()).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_w3() {
        assert_eq!(parse_name_time("20120731T120000Z", ':'), Some(1343736000));
        assert_eq!(parse_name_time("20120731t120000z", ':'), Some(1343736000));
        // 2002-08-18T00:04:30-07:00 is 07:04:30 UTC.
        assert_eq!(
            parse_name_time("2002-08-18T00:04:30-07:00", ':'),
            Some(1029654270)
        );
        assert_eq!(
            parse_name_time("2002-08-18T07:04:30Z", ':'),
            Some(1029654270)
        );
        assert_eq!(
            parse_name_time("2002-08-18T00_04_30-07_00", '_'),
            Some(1029654270)
        );
        assert_eq!(parse_name_time("20121331T120000Z", ':'), None);
        assert_eq!(parse_name_time("garbage", ':'), None);
        assert_eq!(parse_name_time("29991231T120000Z", ':'), None);
    }

    /// Regression: a name with a multi-byte character where the digits should be made the
    /// byte slicing panic (found by the faults_input test and the `names` fuzz target).
    #[test]
    fn non_ascii_times_are_refused_not_a_panic() {
        assert_eq!(parse_name_time("aaa\u{e9}aaaT123456Z", ':'), None);
        assert_eq!(
            parse_name_time("\u{e9}\u{e9}\u{e9}\u{e9}T12345Z", ':'),
            None
        );
        assert_eq!(parse_name_time("2002-08-18T00:04:30-07:0\u{e9}", ':'), None);
        assert_eq!(parse_name_time("2002-08-18T00:04:\u{e9}", ':'), None);
        assert!(parse_user_time("aaa\u{e9}aaaT123456Z", 0).is_err());
    }

    #[test]
    fn base36_vectors_from_upstream() {
        assert_eq!(parse_base36("h14rg0"), Some(1029826800));
        assert_eq!(parse_base36("h5dixs"), Some(1036954144));
        assert_eq!(parse_base36("h112bi"), Some(1029654270));
        assert_eq!(parse_base36("H112bi"), None);
    }

    #[test]
    fn user_times() {
        let now = 2_000_000_000;
        assert_eq!(parse_user_time("now", now), Ok(now));
        assert_eq!(parse_user_time("1700000000", now), Ok(1700000000));
        assert_eq!(parse_user_time("2012-07-31T12:00:00Z", now), Ok(1343736000));
        assert_eq!(parse_user_time("20120731T120000Z", now), Ok(1343736000));
        assert_eq!(parse_user_time("3D", now), Ok(now - 3 * 86400));
        assert_eq!(parse_user_time("1h30m", now), Ok(now - 5400));
        assert!(parse_user_time("yesterday-ish", now).is_err());
        assert_eq!(format_compact(1343736000), "20120731T120000Z");
        assert_eq!(format_iso(1343736000), "2012-07-31T12:00:00Z");
    }
}
