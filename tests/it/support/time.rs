//! Backup times and the forms duplicity writes them in. The tests pin every backup time
//! (`--current-time`) so that names, manifests and expected trees are reproducible.

/// First backup time used by the tests; step k is at `t(k)`.
pub const T0: i64 = 1_700_000_000;

/// Backup time of step `k`: 1000 s apart, so two sets never share a second.
pub fn t(k: i64) -> i64 {
    T0 + k * 1000
}

/// (year, month, day) from days since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn utc_fields(t: i64) -> (i64, u32, u32, i64, i64, i64) {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let s = t.rem_euclid(86_400);
    (y, m, d, s / 3600, s / 60 % 60, s % 60)
}

/// `2023-11-14T22:13:20Z`
pub fn iso_time(t: i64) -> String {
    let (y, m, d, hh, mm, ss) = utc_fields(t);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

/// `20231114T221320Z`, as in duplicity's file names.
pub fn compact_time(t: i64) -> String {
    let (y, m, d, hh, mm, ss) = utc_fields(t);
    format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z")
}

/// The form in which `--time` is passed to the `k`-th host: all three forms of the contract
/// get used.
pub fn time_arg(time: i64, k: usize) -> String {
    match k % 3 {
        0 => time.to_string(),
        1 => iso_time(time),
        _ => compact_time(time),
    }
}
