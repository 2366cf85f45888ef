//! The argument groups of the command line that several commands share (how the
//! repository's files are named, how to decrypt, how to reach a remote source) and `sync`'s
//! own options, which are also the keys of the configuration file (`run` builds each
//! mirror's [`SyncArgs`] from them), with their conversion into the library's options.

use anyhow::Result;
use clap::Args;
use dupmirror::commands::atomic::{LayoutChoice, LayoutOptions};
use dupmirror::commands::sync;
use dupmirror::decode::crypto::{Decryptor, GpgDecryptor, Passphrase, SignKey};
use dupmirror::dest::state::DestPaths;
use dupmirror::fleet::job::{parse_duration, Job, JobOptions};
use dupmirror::fleet::run::Series;
use dupmirror::log::Logger;
use dupmirror::progress::Reporter;
use dupmirror::repo::filename::Prefixes;
use dupmirror::repo::RepoOptions;
use dupmirror::source::meter::parse_rate;
use dupmirror::source::sftp::SshOptions;
use dupmirror::source::SourceOptions;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How the repository's files are named (duplicity's options of the same names).
#[derive(Args, Clone)]
pub struct NameOptions {
    /// Prefix of every file name (duplicity --file-prefix)
    #[arg(long, global = true, value_name = "PREFIX")]
    pub file_prefix: Option<String>,
    /// Prefix of volume names, after --file-prefix
    #[arg(long, global = true, value_name = "PREFIX")]
    pub file_prefix_archive: Option<String>,
    /// Prefix of manifest names, after --file-prefix
    #[arg(long, global = true, value_name = "PREFIX")]
    pub file_prefix_manifest: Option<String>,
    /// Prefix of signature names, after --file-prefix
    #[arg(long, global = true, value_name = "PREFIX")]
    pub file_prefix_signature: Option<String>,
    /// Prefix of jsonstat names, after --file-prefix
    #[arg(long, global = true, value_name = "PREFIX")]
    pub file_prefix_jsonstat: Option<String>,
    /// Clock separator of old-style (W3) times in file names
    #[arg(long, global = true, value_name = "CHAR")]
    pub time_separator: Option<char>,
}

/// How to decrypt and which signatures to require, for the commands that read encrypted
/// files. The passphrase comes from --passphrase-file, else `PASSPHRASE`, else the systemd
/// credential `dupmirror-passphrase`; keys come from the gpg keyring (`GNUPGHOME` or
/// ~/.gnupg).
#[derive(Args, Clone)]
pub struct CryptoOptions {
    /// Read the gpg passphrase (symmetric, or of the secret key) from the first line of FILE
    /// instead of $PASSPHRASE
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Refuse every file without a good signature by this key (key ID or fingerprint)
    #[arg(long, value_name = "KEYID")]
    pub sign_key: Option<SignKey>,
}

impl CryptoOptions {
    pub fn decryptor(&self) -> Result<Arc<dyn Decryptor>> {
        let passphrase = match &self.passphrase_file {
            Some(path) => Some(Passphrase::from_file(path)?),
            None => match Passphrase::from_env() {
                Some(p) => Some(p),
                None => Passphrase::from_systemd_credential()?,
            },
        };
        Ok(Arc::new(GpgDecryptor::new(
            passphrase,
            self.sign_key.clone(),
        )))
    }
}

/// How to reach a remote SOURCE (ftp://, ftps://, http://, https://, s3://, sftp://).
#[derive(Args, Clone)]
pub struct RemoteOptions {
    /// Retries after a transient network failure (with exponential backoff)
    #[arg(long, global = true, value_name = "N", default_value_t = 5)]
    pub retries: u32,
    /// Seconds to wait for any answer or data from the server before retrying
    #[arg(long, global = true, value_name = "SECS", default_value_t = 60.0)]
    pub timeout: f64,
    /// Seconds to wait for a connection to the server
    #[arg(long, global = true, value_name = "SECS", default_value_t = 15.0)]
    pub connect_timeout: f64,
    /// Cap the download rate: KiB/s, or with a unit: 500K, 2M, 1G, 10MB (like rsync)
    #[arg(long, global = true, value_name = "RATE", value_parser = parse_rate)]
    pub bwlimit: Option<u64>,
    /// Also trust the CA certificates in this PEM file (https://, ftps://, s3://)
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// The S3-compatible server of s3:// sources (path-style); default: $AWS_ENDPOINT_URL,
    /// else AWS
    #[arg(long, global = true, value_name = "URL")]
    s3_endpoint_url: Option<String>,
    /// Run ssh with this configuration file instead of ~/.ssh/config (sftp://)
    #[arg(long, global = true, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
    /// Pass `-o OPTION` to ssh (repeatable; BatchMode and StrictHostKeyChecking stay on)
    #[arg(long, global = true, value_name = "OPTION")]
    pub ssh_option: Vec<String>,
}

fn seconds(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("--{what} must be a positive number of seconds"))
}

impl RemoteOptions {
    pub fn source_options(&self) -> Result<SourceOptions> {
        Ok(SourceOptions {
            retries: self.retries,
            connect_timeout: seconds(self.connect_timeout, "connect-timeout")?,
            read_timeout: seconds(self.timeout, "timeout")?,
            ca_file: self.ca_file.clone(),
            bwlimit: self.bwlimit,
            s3_endpoint: self.s3_endpoint_url.clone(),
            ssh: SshOptions {
                config: self.ssh_config.clone(),
                options: self.ssh_option.clone(),
            },
        })
    }
}

impl NameOptions {
    /// Options for reading the repository; `crypto` for the commands that decrypt files.
    pub fn repo_options(
        &self,
        crypto: Option<&CryptoOptions>,
        source: SourceOptions,
    ) -> Result<RepoOptions> {
        let s = |o: &Option<String>| o.clone().unwrap_or_default();
        Ok(RepoOptions {
            prefixes: Prefixes {
                global: s(&self.file_prefix),
                archive: s(&self.file_prefix_archive),
                manifest: s(&self.file_prefix_manifest),
                signature: s(&self.file_prefix_signature),
                jsonstat: s(&self.file_prefix_jsonstat),
            },
            time_separator: self.time_separator,
            decryptor: crypto.map(CryptoOptions::decryptor).transpose()?,
            source,
        })
    }
}

/// What runs around a sync: hooks, lists, metrics, jitter. Also keys of the configuration.
#[derive(Args)]
pub struct JobArgs {
    /// Run CMD with `sh -c` before contacting the source; if it fails the sync is skipped
    #[arg(long, value_name = "CMD")]
    pub pre_sync: Option<String>,
    /// Run CMD with `sh -c` after a sync that changed DEST (environment: see the README);
    /// if it fails the exit status is 3 and DEST stays synced
    #[arg(long, value_name = "CMD")]
    pub post_sync: Option<String>,
    /// Write every path this run wrote, patched or removed in DEST to FILE, relative to
    /// DEST, NUL-separated
    #[arg(long, value_name = "FILE")]
    pub changed_list: Option<PathBuf>,
    /// Write Prometheus metrics for node_exporter's textfile collector to PATH (atomically)
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// Sleep a random time up to DURATION (90, 90s, 15m, 1h) before contacting the source
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub jitter: Option<Duration>,
}

/// How to read a repository that dupmirror decrypts: names, encryption, transport.
#[derive(Args)]
pub struct RepoArgs {
    #[command(flatten)]
    pub names: NameOptions,
    #[command(flatten)]
    pub crypto: CryptoOptions,
    #[command(flatten)]
    pub remote: RemoteOptions,
}

impl RepoArgs {
    pub fn options(&self) -> Result<RepoOptions> {
        self.names
            .repo_options(Some(&self.crypto), self.remote.source_options()?)
    }
}

#[derive(Args)]
pub struct SyncArgs {
    /// The duplicity repository: a path, or a file://, ftp://, ftps://, http://, https://,
    /// s3:// or sftp:// URL (with --source given, it may be left out)
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// The tree to keep in sync (holds exactly the backed-up files)
    #[arg(value_name = "DEST")]
    pub dest: Option<PathBuf>,
    /// Another source of the same repository (repeatable), in order of preference after
    /// SOURCE: each run follows the first that answers and is not stale; volumes may come
    /// from any of them
    #[arg(long = "source", value_name = "URL")]
    pub sources: Vec<String>,
    /// Backup time to sync to: 2026-01-02T03:04:05Z, 20260102T030405Z, epoch seconds, ...
    #[arg(long, short = 't')]
    pub time: Option<String>,
    /// Where dupmirror keeps its state (default: .<DEST name>.dupmirror beside DEST)
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Mirror only this subtree (repeatable); fetches only the volumes that hold it
    #[arg(long = "path", value_name = "P")]
    pub paths: Vec<String>,
    /// Print the plan (sets, volumes, bytes) and change nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// First sync into a non-empty DEST: make it the backup, removing what it lacks
    #[arg(long)]
    pub adopt: bool,
    /// Wait for another sync of the same DEST instead of failing
    #[arg(long)]
    pub wait: bool,
    /// Skip the file system sync before each commit (faster; unsafe on power loss; a first
    /// sync on a disk still starts writing its data out as it goes)
    #[arg(long)]
    pub no_fsync: bool,
    /// Print one JSON summary on stdout
    #[arg(long)]
    pub json: bool,
    /// Print nothing but errors (no progress bars, no retry notices)
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Volumes downloaded at the same time, and most volumes in the download cache at once
    /// (the one being applied counts; 1: download and apply in turn); --bwlimit caps the sum
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub prefetch: u32,
    /// Keep DEST as a symlink to one of two complete trees beside it and switch it in one
    /// rename, so that readers never see a half-applied backup (twice the disk); converts
    /// a plain DEST without downloading
    #[arg(long, conflicts_with = "in_place")]
    pub atomic: bool,
    /// Make an atomic DEST a plain folder again (its live tree; the standby is removed),
    /// then sync in place
    #[arg(long)]
    pub in_place: bool,
    /// Atomic layout: write the standby tree only once it has been out of service this
    /// long (90, 90s, 15m, 1h); until then a run reports "deferred" and changes nothing
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    pub grace: Duration,
    #[command(flatten)]
    pub around: JobArgs,
    #[command(flatten)]
    pub repo: RepoArgs,
}
impl SyncArgs {
    /// The sync as a job named `name`; `jitter`: whether the jitter option applies;
    /// `record`: keep the outcome in the state directory (always for `run`; for `sync` when
    /// its metrics need the counters).
    pub fn job(
        self,
        name: String,
        bars: bool,
        notices: Option<Logger>,
        jitter: bool,
        record: bool,
    ) -> Result<Job> {
        let (sources, dest) = self.sources_and_dest()?;
        let choice = match (self.atomic, self.in_place) {
            (true, _) => LayoutChoice::Atomic,
            (_, true) => LayoutChoice::InPlace,
            _ => LayoutChoice::Keep,
        };
        Ok(Job {
            name,
            layout: LayoutOptions {
                choice,
                grace: self.grace,
            },
            reporter: Arc::new(Reporter::new(bars, notices)),
            sync: sync::SyncOptions {
                repo: self.repo.options()?,
                sources,
                dest,
                time: self.time,
                state_dir: self.state_dir,
                paths: self.paths,
                dry_run: self.dry_run,
                adopt: self.adopt,
                wait: self.wait,
                durable: !self.no_fsync,
                prefetch: self.prefetch as usize,
                list_changes: false,
            },
            options: JobOptions {
                pre_sync: self.around.pre_sync,
                post_sync: self.around.post_sync,
                changed_list: self.around.changed_list,
                jitter: self.around.jitter.filter(|_| jitter),
                record,
            },
        })
    }

    /// Where this mirror's metrics come from and go (None: DEST cannot be resolved).
    pub fn series(&self, mirror: &str) -> Option<Series> {
        let (_, dest) = self.sources_and_dest().ok()?;
        let paths = DestPaths::resolve(&dest, self.state_dir.as_deref()).ok()?;
        Some(Series {
            mirror: mirror.to_string(),
            state_dir: paths.state_root,
            metrics_file: self.around.metrics_file.clone(),
        })
    }

    /// `SOURCE DEST`, or `DEST` alone with `--source`: the sources in order, and DEST.
    pub fn sources_and_dest(&self) -> Result<(Vec<String>, PathBuf)> {
        match &self.dest {
            Some(dest) => {
                let mut sources = vec![self.source.clone()];
                sources.extend(self.sources.iter().cloned());
                Ok((sources, dest.clone()))
            }
            None if !self.sources.is_empty() => {
                Ok((self.sources.clone(), PathBuf::from(&self.source)))
            }
            None => anyhow::bail!("sync needs SOURCE and DEST (or DEST and --source URL)"),
        }
    }
}
