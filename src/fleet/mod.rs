//! Running a fleet of mirrors: a configuration file of mirrors (`config`), each run as a
//! sync with jitter, hooks and a changed-path list around it (`job`, `hooks`), several at a
//! time (`run`), its outcome and counters kept in its state directory (`record`) and
//! published for Prometheus (`metrics`), and a one-line-per-mirror `status`.

pub mod config;
pub mod hooks;
pub mod job;
pub mod metrics;
pub mod record;
pub mod run;
pub mod status;
