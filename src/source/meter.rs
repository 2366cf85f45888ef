//! The bandwidth cap for remote reads, and the funnel their byte counts pass.
//!
//! Every byte read from a remote source passes [`Meter::transferred`], which counts it in
//! the run's [`Reporter`] (the totals a sync reports, the download bar) and sleeps as
//! needed to keep under `--bwlimit`. The transport's other events (resumes, re-reads,
//! opens, listings, retries) go to the reporter through [`Meter::reporter`].

use crate::progress::Reporter;
use anyhow::{bail, Result};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Meter {
    limit: Option<Mutex<Bucket>>,
    reporter: Arc<Reporter>,
}

impl Meter {
    /// A meter that caps the rate at `limit` bytes per second (None: no cap).
    pub fn new(limit: Option<u64>, reporter: Arc<Reporter>) -> Meter {
        Meter {
            limit: limit.map(|rate| Mutex::new(Bucket::new(rate))),
            reporter,
        }
    }

    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    /// Counts `n` bytes just received, then waits if they went over the rate cap.
    pub fn transferred(&self, n: usize) {
        self.reporter.downloaded(n as u64);
        if let Some(bucket) = &self.limit {
            let wait = bucket
                .lock()
                .map(|mut b| b.take(n as u64))
                .unwrap_or_default();
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
        }
    }
}

/// A token bucket: `rate` bytes per second, bursts of at most 1/20 second (after an idle
/// moment, such as a prefetch thread waiting for room).
struct Bucket {
    rate: u64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u64) -> Bucket {
        Bucket {
            rate,
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    /// Takes `n` tokens; returns how long the caller must wait to have paid for them.
    fn take(&mut self, n: u64) -> Duration {
        let now = Instant::now();
        let rate = self.rate as f64;
        let burst = (rate / 20.0).max(16_384.0);
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(burst);
        self.last = now;
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}

/// Parses a `--bwlimit` RATE like rsync does: a number of KiB per second, or with a unit:
/// `B`, `K`/`KiB`, `M`/`MiB`, `G`/`GiB` (powers of 1024) or `KB`, `MB`, `GB` (of 1000),
/// optionally followed by `/s`. Returns bytes per second.
pub fn parse_rate(text: &str) -> Result<u64> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let Ok(value) = num.parse::<f64>() else {
        bail!("bad rate {text:?}: expected a number with an optional unit, like 500K or 2M");
    };
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "k" | "kib" => 1024.0,
        "b" => 1.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        other => bail!("bad rate {text:?}: unknown unit {other:?} (use B, K, M or G)"),
    };
    let rate = (value * factor).round();
    if !(1.0..=1e15).contains(&rate) {
        bail!("bad rate {text:?}: must be at least 1 byte per second");
    }
    Ok(rate as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100").unwrap(), 102_400);
        assert_eq!(parse_rate("1.5M").unwrap(), 1_572_864);
        assert_eq!(parse_rate("2MB/s").unwrap(), 2_000_000);
        assert_eq!(parse_rate("512B").unwrap(), 512);
        assert_eq!(parse_rate("1GiB").unwrap(), 1 << 30);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("3X").is_err());
    }

    #[test]
    fn bucket_paces_to_the_rate() {
        let mut b = Bucket::new(1_000_000);
        // The first burst is paid for at once, the rest at the rate.
        let wait: Duration = (0..10).map(|_| b.take(100_000)).max().unwrap();
        assert!(wait > Duration::from_millis(500), "{wait:?}");
        assert!(wait < Duration::from_millis(1100), "{wait:?}");
    }
}
