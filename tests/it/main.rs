//! dupmirror's integration tests: one test binary (as ripgrep does), so that the harness in
//! [`support`] is compiled once and every test runs in one `cargo test` process.
//!
//! Each module below was a test file of its own; they drive the dupmirror binary only through
//! its command line, except `backends`: the conformance suite of the library's `Backend`
//! contract, which every backend runs. Run one module with `cargo test --test it MODULE::`, one test with its
//! full path. `testdata_gen` holds the generator of the committed `testdata/` (ignored: see
//! scripts/make-testdata.sh).

mod support;

mod atomic;
mod backends;
mod catchup;
mod commands;
mod crash_kill;
mod faults_fs;
mod faults_input;
mod fetch_only;
mod fleet;
mod fresh_concurrency;
mod gpg_formats;
mod gpg_oracle;
mod gpg_refusals;
mod gpg_testdata;
mod harness;
mod memory;
mod multi_source;
mod oracle_local;
mod refusals;
mod remote_faults;
mod remote_ftp;
mod remote_http;
mod remote_s3;
mod remote_sftp;
mod security_dest;
mod security_input;
mod testdata_gen;
mod testdata_repos;
mod volumes_apart;
