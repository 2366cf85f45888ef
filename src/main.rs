//! The `dupmirror` command line: parses arguments, runs a command, prints its report.
//! A failure is one line on stderr and an exit status from `dupmirror::exit` (documented
//! in `--help`, the man page and the README).

use anyhow::Result;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use dupmirror::commands::atomic::{Action, AtomicOutcome, Conversion, LayoutChoice, LayoutOptions};
use dupmirror::commands::{ls, status, sync, verify};
use dupmirror::decode::crypto::Decryptor;
use dupmirror::decode::crypto::{GpgDecryptor, GpgSignatureTally, Passphrase, SignKey};
use dupmirror::dest::state::DestPaths;
use dupmirror::exit::Exit;
use dupmirror::fleet::config::{self, Config};
use dupmirror::fleet::job::{parse_duration, run_job, Job, JobOptions, JobReport};
use dupmirror::fleet::run::{run_jobs, write_metrics, Series};
use dupmirror::fleet::status::{mirror_status, MirrorStatus};
use dupmirror::log::{LogFormat, Logger};
use dupmirror::progress::Reporter;
use dupmirror::repo::filename::Prefixes;
use dupmirror::repo::RepoOptions;
use dupmirror::source::meter::parse_rate;
use dupmirror::source::sftp::SshOptions;
use dupmirror::source::SourceOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "dupmirror",
    version,
    about = "Keep a tree in exact sync with a duplicity repository by replaying only its new sets",
    after_long_help = exit_status_help()
)]
struct Cli {
    /// How lines on stderr are written: text (with syslog priority prefixes under systemd)
    /// or one JSON object per line
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

fn exit_status_help() -> String {
    format!("Exit status:\n{}", Exit::table())
}

/// How the repository's files are named (duplicity's options of the same names).
#[derive(Args, Clone)]
struct NameOptions {
    /// Prefix of every file name (duplicity --file-prefix)
    #[arg(long, global = true, value_name = "PREFIX")]
    file_prefix: Option<String>,
    /// Prefix of volume names, after --file-prefix
    #[arg(long, global = true, value_name = "PREFIX")]
    file_prefix_archive: Option<String>,
    /// Prefix of manifest names, after --file-prefix
    #[arg(long, global = true, value_name = "PREFIX")]
    file_prefix_manifest: Option<String>,
    /// Prefix of signature names, after --file-prefix
    #[arg(long, global = true, value_name = "PREFIX")]
    file_prefix_signature: Option<String>,
    /// Prefix of jsonstat names, after --file-prefix
    #[arg(long, global = true, value_name = "PREFIX")]
    file_prefix_jsonstat: Option<String>,
    /// Clock separator of old-style (W3) times in file names
    #[arg(long, global = true, value_name = "CHAR")]
    time_separator: Option<char>,
}

/// How to decrypt and which signatures to require, for the commands that read encrypted
/// files. The passphrase comes from --passphrase-file, else `PASSPHRASE`, else the systemd
/// credential `dupmirror-passphrase`; keys come from the gpg keyring (`GNUPGHOME` or
/// ~/.gnupg).
#[derive(Args, Clone)]
struct CryptoOptions {
    /// Read the gpg passphrase (symmetric, or of the secret key) from the first line of FILE
    /// instead of $PASSPHRASE
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
    /// Refuse every file without a good signature by this key (key ID or fingerprint)
    #[arg(long, value_name = "KEYID")]
    sign_key: Option<SignKey>,
}

impl CryptoOptions {
    fn decryptor(&self) -> Result<Arc<dyn Decryptor>> {
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
struct RemoteOptions {
    /// Retries after a transient network failure (with exponential backoff)
    #[arg(long, global = true, value_name = "N", default_value_t = 5)]
    retries: u32,
    /// Seconds to wait for any answer or data from the server before retrying
    #[arg(long, global = true, value_name = "SECS", default_value_t = 60.0)]
    timeout: f64,
    /// Seconds to wait for a connection to the server
    #[arg(long, global = true, value_name = "SECS", default_value_t = 15.0)]
    connect_timeout: f64,
    /// Cap the download rate: KiB/s, or with a unit: 500K, 2M, 1G, 10MB (like rsync)
    #[arg(long, global = true, value_name = "RATE", value_parser = parse_rate)]
    bwlimit: Option<u64>,
    /// Also trust the CA certificates in this PEM file (https://, ftps://, s3://)
    #[arg(long, global = true, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// The S3-compatible server of s3:// sources (path-style); default: $AWS_ENDPOINT_URL,
    /// else AWS
    #[arg(long, global = true, value_name = "URL")]
    s3_endpoint_url: Option<String>,
    /// Run ssh with this configuration file instead of ~/.ssh/config (sftp://)
    #[arg(long, global = true, value_name = "FILE")]
    ssh_config: Option<PathBuf>,
    /// Pass `-o OPTION` to ssh (repeatable; BatchMode and StrictHostKeyChecking stay on)
    #[arg(long, global = true, value_name = "OPTION")]
    ssh_option: Vec<String>,
}

fn seconds(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("--{what} must be a positive number of seconds"))
}

impl RemoteOptions {
    fn source_options(&self) -> Result<SourceOptions> {
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
    fn repo_options(
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

#[derive(Subcommand)]
enum Command {
    /// Bring DEST to the backup at --time (default: the latest), applying only new sets
    Sync(SyncArgs),
    /// Compare DEST with the backup's signatures (no volume is read); --repair fixes it
    Verify(VerifyArgs),
    /// Sync the mirrors of the configuration file (default: all), each under its own lock
    Run(RunArgs),
    /// Show the repository's chains and sets (like duplicity collection-status); with
    /// --config, one line per configured mirror
    Status(StatusArgs),
    /// List the files of the backup at --time (like duplicity list-current-files)
    Ls {
        source: String,
        #[arg(long, short = 't')]
        time: Option<String>,
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (dupmirror.1 and one per command) into DIR
    #[command(hide = true)]
    Manpages { dir: PathBuf },
}

#[derive(Args)]
struct RunArgs {
    /// The mirrors to run (default: every mirror of the file)
    names: Vec<String>,
    /// The configuration file (default: $DUPMIRROR_CONFIG, else /etc/dupmirror/dupmirror.toml)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration and print the mirrors it would run; run nothing
    #[arg(long)]
    check: bool,
    /// Print one JSON report per mirror, one per line
    #[arg(long)]
    json: bool,
    /// Mirrors synced at once
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    jobs: u32,
    /// Sleep a random time up to DURATION before each mirror, also on a terminal (overrides
    /// the configuration's jitter, which applies only when stderr is not a terminal)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    jitter: Option<Duration>,
}

/// What runs around a sync: hooks, lists, metrics, jitter. Also keys of the configuration.
#[derive(Args)]
struct JobArgs {
    /// Run CMD with `sh -c` before contacting the source; if it fails the sync is skipped
    #[arg(long, value_name = "CMD")]
    pre_sync: Option<String>,
    /// Run CMD with `sh -c` after a sync that changed DEST (environment: see the README);
    /// if it fails the exit status is 3 and DEST stays synced
    #[arg(long, value_name = "CMD")]
    post_sync: Option<String>,
    /// Write every path this run wrote, patched or removed in DEST to FILE, relative to
    /// DEST, NUL-separated
    #[arg(long, value_name = "FILE")]
    changed_list: Option<PathBuf>,
    /// Write Prometheus metrics for node_exporter's textfile collector to PATH (atomically)
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
    /// Sleep a random time up to DURATION (90, 90s, 15m, 1h) before contacting the source
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    jitter: Option<Duration>,
}

/// How to read a repository that dupmirror decrypts: names, encryption, transport.
#[derive(Args)]
struct RepoArgs {
    #[command(flatten)]
    names: NameOptions,
    #[command(flatten)]
    crypto: CryptoOptions,
    #[command(flatten)]
    remote: RemoteOptions,
}

impl RepoArgs {
    fn options(&self) -> Result<RepoOptions> {
        self.names
            .repo_options(Some(&self.crypto), self.remote.source_options()?)
    }
}

#[derive(Args)]
struct SyncArgs {
    /// The duplicity repository: a path, or a file://, ftp://, ftps://, http://, https://,
    /// s3:// or sftp:// URL (with --source given, it may be left out)
    #[arg(value_name = "SOURCE")]
    source: String,
    /// The tree to keep in sync (holds exactly the backed-up files)
    #[arg(value_name = "DEST")]
    dest: Option<PathBuf>,
    /// Another source of the same repository (repeatable), in order of preference after
    /// SOURCE: each run follows the first that answers and is not stale; volumes may come
    /// from any of them
    #[arg(long = "source", value_name = "URL")]
    sources: Vec<String>,
    /// Backup time to sync to: 2026-01-02T03:04:05Z, 20260102T030405Z, epoch seconds, ...
    #[arg(long, short = 't')]
    time: Option<String>,
    /// Where dupmirror keeps its state (default: .<DEST name>.dupmirror beside DEST)
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Mirror only this subtree (repeatable); fetches only the volumes that hold it
    #[arg(long = "path", value_name = "P")]
    paths: Vec<String>,
    /// Print the plan (sets, volumes, bytes) and change nothing
    #[arg(long, short = 'n')]
    dry_run: bool,
    /// First sync into a non-empty DEST: make it the backup, removing what it lacks
    #[arg(long)]
    adopt: bool,
    /// Wait for another sync of the same DEST instead of failing
    #[arg(long)]
    wait: bool,
    /// Skip the file system sync before each commit (faster; unsafe on power loss)
    #[arg(long)]
    no_fsync: bool,
    /// Print one JSON summary on stdout
    #[arg(long)]
    json: bool,
    /// Print nothing but errors (no progress bars, no retry notices)
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Volumes downloaded at the same time, and most volumes in the download cache at once
    /// (the one being applied counts; 1: download and apply in turn); --bwlimit caps the sum
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    prefetch: u32,
    /// Keep DEST as a symlink to one of two complete trees beside it and switch it in one
    /// rename, so that readers never see a half-applied backup (twice the disk); converts
    /// a plain DEST without downloading
    #[arg(long, conflicts_with = "in_place")]
    atomic: bool,
    /// Make an atomic DEST a plain folder again (its live tree; the standby is removed),
    /// then sync in place
    #[arg(long)]
    in_place: bool,
    /// Atomic layout: write the standby tree only once it has been out of service this
    /// long (90, 90s, 15m, 1h); until then a run reports "deferred" and changes nothing
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    grace: Duration,
    #[command(flatten)]
    around: JobArgs,
    #[command(flatten)]
    repo: RepoArgs,
}
impl SyncArgs {
    /// The sync as a job named `name`; `jitter`: whether the jitter option applies;
    /// `record`: keep the outcome in the state directory (always for `run`; for `sync` when
    /// its metrics need the counters).
    fn job(
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
    fn series(&self, mirror: &str) -> Option<Series> {
        let (_, dest) = self.sources_and_dest().ok()?;
        let paths = DestPaths::resolve(&dest, self.state_dir.as_deref()).ok()?;
        Some(Series {
            mirror: mirror.to_string(),
            state_dir: paths.state_root,
            metrics_file: self.around.metrics_file.clone(),
        })
    }
}

/// The `sync` command, whose options are the configuration's keys.
fn sync_command() -> clap::Command {
    Cli::command()
        .find_subcommand("sync")
        .cloned()
        .unwrap_or_else(|| SyncArgs::augment_args(clap::Command::new("sync")))
}

fn sync_args(matches: &ArgMatches) -> Result<SyncArgs> {
    Ok(SyncArgs::from_arg_matches(matches)?)
}

fn load_config(explicit: Option<&std::path::Path>) -> Result<Config> {
    Ok(config::load(&config::locate(explicit), &sync_command())?)
}

impl SyncArgs {
    /// `SOURCE DEST`, or `DEST` alone with `--source`: the sources in order, and DEST.
    fn sources_and_dest(&self) -> Result<(Vec<String>, PathBuf)> {
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

#[derive(Args)]
struct StatusArgs {
    /// The repository (not with --config)
    #[arg(required_unless_present = "config", conflicts_with = "config")]
    source: Option<String>,
    /// Show the mirrors of this configuration file instead (see `run`)
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "")]
    config: Option<PathBuf>,
    /// With --config: only these mirrors
    #[arg(long = "mirror", value_name = "NAME", requires = "config")]
    mirrors: Vec<String>,
    /// Also show what a sync of this DEST would do
    #[arg(long)]
    dest: Option<PathBuf>,
    /// The state directory of --dest, when not the default
    #[arg(long, value_name = "DIR", requires = "dest")]
    state_dir: Option<PathBuf>,
    /// With --dest: the --time that sync would be given (default: the latest backup)
    #[arg(long, short = 't', requires = "dest")]
    time: Option<String>,
    /// With --dest: the --path subtrees that sync would be given (repeatable)
    #[arg(long = "path", value_name = "P", requires = "dest")]
    paths: Vec<String>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    names: NameOptions,
    #[command(flatten)]
    remote: RemoteOptions,
}

#[derive(Args)]
struct VerifyArgs {
    source: String,
    dest: PathBuf,
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Restore the paths that differ, reading only the volumes that hold them
    #[arg(long)]
    repair: bool,
    /// Compare metadata only (size, mode, mtime, type), no content hashing: as fast as
    /// rsync's quick check, blind to edits that keep size and mtime
    #[arg(long)]
    quick: bool,
    /// Skip the file system sync before the repair's commit
    #[arg(long)]
    no_fsync: bool,
    /// Atomic layout: --repair writes the standby tree only once it has been out of
    /// service this long
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    grace: Duration,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    repo: RepoArgs,
}

fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// A span of seconds in the largest unit that fits: `45 s`, `12 min`, `5.5 h`, `3.2 days`.
fn human_duration(secs: i64) -> String {
    let s = secs as f64;
    if secs < 120 {
        format!("{secs} s")
    } else if secs < 7200 {
        format!("{:.0} min", s / 60.0)
    } else if secs < 172_800 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} days", s / 86400.0)
    }
}

/// How many differing paths a human report lists.
const LISTED_PATHS: usize = 20;

fn print_gpg_signatures(t: &GpgSignatureTally) {
    let mut parts = vec![format!("{} signed", t.signed)];
    if t.unsigned > 0 {
        parts.push(format!("{} unsigned", t.unsigned));
    }
    if t.unchecked > 0 {
        parts.push(format!(
            "{} with a signature gpg could not check",
            t.unchecked
        ));
    }
    print!(
        "signatures: {} encrypted file(s) read, {}",
        t.encrypted_files,
        parts.join(", ")
    );
    if !t.signers.is_empty() {
        let signers: Vec<&str> = t.signers.iter().map(String::as_str).collect();
        print!(" (by {})", signers.join(", "));
    }
    println!();
}

/// The atomic layout's part of a sync report, before the rest; `false` when nothing else
/// is to be said (deferred).
fn print_atomic(r: &sync::SyncReport, a: &AtomicOutcome) -> bool {
    if let Some(what) = &a.layout_recovered {
        println!("{what} (left by an interrupted run)");
    }
    let would = if r.dry_run { "would be" } else { "was" };
    match a.converted {
        Some(Conversion::ToAtomic) => println!(
            "DEST {would} converted to the atomic layout: its tree moved beside it, nothing \
             downloaded"
        ),
        Some(Conversion::ToInPlace) => println!(
            "DEST {would} converted back to a plain folder: its live tree, the standby removed"
        ),
        None => {}
    }
    let Some(view) = &a.layout else {
        return true;
    };
    if a.action == Action::Deferred {
        let idle = view.standby_idle_seconds.unwrap_or(0);
        println!(
            "deferred: {} is waiting, but the standby tree {} left service {} ago, less than \
             --grace {}; DEST is unchanged at {} (a later run applies it)",
            r.to,
            view.live.other().name(),
            human_duration(idle),
            human_duration(a.grace_seconds as i64),
            r.from.as_deref().unwrap_or("nothing")
        );
        return false;
    }
    true
}

/// The switch, after the sets applied to the standby.
fn print_switch(r: &sync::SyncReport, a: &AtomicOutcome) {
    let Some(view) = &a.layout else {
        return;
    };
    let standby = view.standby_holds.as_deref().unwrap_or("nothing yet");
    match a.action {
        Action::Switched => println!(
            "switched DEST to tree {} ({}); tree {}, now the standby, holds {standby}",
            view.live.name(),
            r.to,
            view.live.other().name()
        ),
        Action::WouldSwitch => println!(
            "dry run: tree {} would be brought to {} and DEST switched to it",
            view.live.other().name(),
            r.to
        ),
        Action::UpToDate => println!(
            "DEST points to tree {}; tree {} (the standby) holds {standby}",
            view.live.name(),
            view.live.other().name()
        ),
        _ => {}
    }
}

fn print_sync(r: &sync::SyncReport) {
    if let Some(a) = &r.atomic {
        if !print_atomic(r, a) {
            return;
        }
    }
    print_sync_sets(r);
    if let Some(a) = &r.atomic {
        print_switch(r, a);
    }
}

fn print_sync_sets(r: &sync::SyncReport) {
    if let Some(t) = &r.recovered {
        println!("completed an interrupted commit: DEST was brought to {t}");
    }
    if let Some(t) = &r.discarded {
        println!("dropped an interrupted commit (to {t}) made for a folder that is no longer DEST");
    }
    let replaced = r.recovered_replaced.iter().chain(
        r.sets
            .iter()
            .flat_map(|s| s.applied.iter().flat_map(|a| &a.replaced)),
    );
    for path in replaced {
        println!(
            "  {path}: replaced by a folder, as the committed set requires (it was changed \
             after the commit point); `dupmirror verify --repair` restores what it held"
        );
    }
    if r.up_to_date {
        println!(
            "{} is up to date at {} (nothing new in {}; checked in {:.2}s)",
            r.dest.display(),
            r.to,
            r.source,
            r.seconds
        );
        return;
    }
    if let Some(why) = &r.restart_reason {
        println!("starting from a full set: {why}");
    }
    let verb = if r.dry_run { "would apply" } else { "applied" };
    for s in &r.sets {
        for d in s.differences.iter().take(LISTED_PATHS) {
            println!("  {}: {}", d.path, d.what);
        }
        if s.differences.len() > LISTED_PATHS {
            println!(
                "  ... and {} more (--json lists all)",
                s.differences.len() - LISTED_PATHS
            );
        }
        print!(
            "{verb} {} ({:?}): {} of {} volume(s), {}",
            s.set,
            s.mode,
            s.volumes,
            s.volumes_in_set,
            human_bytes(s.bytes)
        );
        if let Some(a) = &s.applied {
            print!(
                "; {} written, {} patched, {} dirs, {} other, {} removed, {} attributes fixed",
                a.files_written, a.files_patched, a.dirs, a.specials, a.removed, a.attrs_fixed
            );
        }
        if let Some(r) = &s.repaired {
            print!(
                "; repaired {} drifted path(s) from {} volume(s)",
                r.paths, r.volumes_read
            );
        }
        println!();
    }
    let from = r.from.as_deref().unwrap_or("empty");
    if r.dry_run {
        println!(
            "dry run: {} would go from {from} to {}; nothing was changed",
            r.dest.display(),
            r.to
        );
    } else {
        println!(
            "{} went from {from} to {} in {:.2}s ({} read)",
            r.dest.display(),
            r.to,
            r.seconds,
            human_bytes(r.bytes_read)
        );
        print_transfer(r);
    }
    if let Some(t) = &r.signatures {
        print_gpg_signatures(t);
    }
}

/// The accounting of a remote sync: what crossed the network, and where the time went.
fn print_transfer(r: &sync::SyncReport) {
    if r.sources.len() > 1 {
        let each: Vec<String> = r
            .sources
            .iter()
            .map(|s| {
                format!(
                    "{} ({:?}, served {} file(s), {})",
                    s.source,
                    s.role,
                    s.served.files.len(),
                    human_bytes(s.served.bytes)
                )
            })
            .collect();
        println!("sources: {}", each.join("; "));
    }
    let t = &r.transfer;
    if t.listings == 0 {
        return; // a local source: read in place
    }
    println!(
        "downloaded {} in {} file(s): {} resumed, {} fetched again, {} retries",
        human_bytes(t.bytes_downloaded),
        t.files_fetched,
        human_bytes(t.bytes_resumed),
        human_bytes(t.bytes_refetched),
        t.retries
    );
    let p = &r.phases;
    println!(
        "time: listing {:.2}s, manifests {:.2}s, applying {:.2}s ({:.2}s of it waiting for \
         downloads); downloads took {:.2}s, alongside the applying",
        p.list_seconds,
        p.plan_seconds,
        p.apply_seconds,
        p.fetch.wait_seconds,
        p.fetch.download_seconds
    );
}

fn print_status(r: &status::StatusReport) {
    println!("source: {}", r.source);
    if let Some(p) = &r.prefix {
        println!("file prefix: {p:?}");
    }
    for (i, c) in r.chains.iter().enumerate() {
        println!("chain {} ({} .. {}):", i + 1, c.start_time, c.end_time);
        for s in &c.sets {
            println!(
                "  {:4} {}  {:>4} volume(s) {:>10}{}",
                s.kind,
                s.end_time,
                s.volumes,
                human_bytes(s.bytes),
                if s.signatures {
                    ""
                } else {
                    "  (no signature file)"
                }
            );
        }
    }
    if r.chains.is_empty() {
        println!("no complete backup chain");
    }
    for s in &r.orphans {
        println!(
            "orphaned incremental {} -> {} (links to no chain)",
            s.start_time.as_deref().unwrap_or("?"),
            s.end_time
        );
    }
    for s in &r.incomplete {
        println!(
            "incomplete set {} {} (no manifest: in progress or interrupted; ignored)",
            s.kind, s.end_time
        );
    }
    for f in &r.partial_files {
        println!("partial file {f} (ignored)");
    }
    if let Some(d) = &r.dest {
        match &d.holds {
            Some(t) => println!("DEST {} holds {t}", d.dest.display()),
            None => println!(
                "DEST {} holds no synced state (never synced, or removed)",
                d.dest.display()
            ),
        }
        if let Some(v) = &d.atomic {
            println!(
                "atomic layout: DEST points to tree {}; the standby tree {} holds {}{}",
                v.live.name(),
                v.live.other().name(),
                v.standby_holds.as_deref().unwrap_or("nothing yet"),
                v.standby_idle_seconds
                    .map(|s| format!(", out of service for {}", human_duration(s)))
                    .unwrap_or_default()
            );
        }
        if let Some(newest) = &d.newest_applied {
            let since = d
                .newest_applied_at
                .as_ref()
                .map(|t| format!(", first reached at {t}"))
                .unwrap_or_default();
            println!("the newest backup DEST was brought to is {newest}{since}");
        }
        if d.source_behind {
            println!(
                "warning: the source offers only older backups than that: its newer sets \
                 were removed or are hidden"
            );
        } else if let Some(s) = d.frozen_seconds {
            println!(
                "the source has offered nothing newer for {}",
                human_duration(s)
            );
        }
        let to = d.to.as_deref().unwrap_or("nothing (no complete backup)");
        println!(
            "a sync would apply {} set(s), {} at most, to reach {to}",
            d.pending_sets,
            human_bytes(d.pending_bytes)
        );
        if d.needs_full {
            let why = d.restart_reason.as_deref().unwrap_or("DEST is empty");
            println!("starting from a full set: {why}");
        }
    }
}

fn print_verify(r: &verify::VerifyReport) {
    for d in &r.differences {
        println!("{}: {}", d.path, d.what);
    }
    println!(
        "checked {} paths ({} files, {} hashed) against the backup at {} in {:.2}s: {} difference(s)",
        r.compare.paths_checked,
        r.compare.files_hashed,
        human_bytes(r.compare.bytes_hashed),
        r.state,
        r.seconds,
        r.differences.len()
    );
    if let Some(rep) = &r.repaired {
        println!(
            "repaired: read {} volume(s), {}",
            rep.volumes_read,
            human_bytes(rep.bytes_read)
        );
    }
    if let Some(rem) = &r.remaining {
        for d in rem {
            println!("still different: {}: {}", d.path, d.what);
        }
        if rem.is_empty() {
            println!("DEST now matches the backup at {}", r.state);
        }
    }
    if let Some(a) = &r.atomic {
        print_verify_atomic(a);
    }
}

fn print_verify_atomic(a: &AtomicOutcome) {
    if let Some(what) = &a.layout_recovered {
        println!("{what} (left by an interrupted run)");
    }
    let Some(view) = &a.layout else {
        return;
    };
    let standby = view.standby_holds.as_deref().unwrap_or("nothing yet");
    match a.action {
        Action::Switched => println!(
            "repaired by way of the standby: DEST now points to tree {}; tree {} (the damaged \
             one) is repaired by the next sync before it serves again",
            view.live.name(),
            view.live.other().name()
        ),
        Action::Deferred => println!(
            "repair deferred: the standby tree {} left service {} ago, less than --grace {}; \
             the live tree is never written",
            view.live.other().name(),
            human_duration(view.standby_idle_seconds.unwrap_or(0)),
            human_duration(a.grace_seconds as i64)
        ),
        _ => println!(
            "checked the live tree {}; the standby tree {} holds {standby}",
            view.live.name(),
            view.live.other().name()
        ),
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// The commands other than sync and run draw no bars but tell about retries.
fn notices_only(log: &Logger) -> Arc<Reporter> {
    Arc::new(Reporter::new(false, Some(log.clone())))
}

/// Escapes text for roff: backslashes, hyphens, and a leading dot or quote.
fn roff(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with(['.', '\'']) {
        format!("\\&{t}")
    } else {
        t
    }
}

/// The sections of dupmirror(1) that clap does not know: exit statuses, hooks, environment,
/// files.
fn man_extra_sections() -> String {
    let mut out = String::from(".SH \"EXIT STATUS\"\n");
    for e in Exit::ALL {
        out.push_str(&format!(
            ".TP\n\\fB{}\\fR\n{}\n",
            e.code(),
            roff(e.meaning())
        ));
    }
    let tagged = |title: &str, items: &[(&str, &str)]| {
        let mut s = format!(".SH {title}\n");
        for (tag, text) in items {
            s.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", roff(tag), roff(text)));
        }
        s
    };
    out.push_str(&tagged(
        "HOOKS",
        &[
            (
                "DUPMIRROR_MIRROR",
                "the mirror's name (sync: DEST as given)",
            ),
            ("DUPMIRROR_DEST", "DEST, absolute"),
            (
                "DUPMIRROR_FROM",
                "the backup time DEST held before the run (ISO 8601; empty: none)",
            ),
            ("DUPMIRROR_TO", "post-sync: the backup time DEST holds now"),
            (
                "DUPMIRROR_CHANGED",
                "post-sync: how many paths the run changed",
            ),
            (
                "DUPMIRROR_CHANGED_LIST",
                "post-sync: a file listing every path written, patched or removed in DEST, \
                 relative to DEST, each followed by a NUL byte",
            ),
            (
                "DUPMIRROR_REPORT",
                "post-sync: a file holding the sync's JSON report",
            ),
        ],
    ));
    out.push_str(&tagged(
        "ENVIRONMENT",
        &[
            ("DUPMIRROR_CONFIG", "the configuration file when --config is not given"),
            ("PASSPHRASE", "the gpg passphrase when --passphrase-file is not given"),
            ("CREDENTIALS_DIRECTORY", "systemd credentials: dupmirror-passphrase is read when neither of the above is given"),
            ("GNUPGHOME", "the gpg keyring"),
            ("DUPMIRROR_PASSWORD", "the password of a remote source whose URL names the user"),
            ("JOURNAL_STREAM", "set by systemd: log lines carry syslog priority prefixes"),
        ],
    ));
    out.push_str(&tagged(
        "FILES",
        &[
            (config::DEFAULT_PATH, "the configuration of run and status --config ([defaults] and [mirror.NAME] tables whose keys are the long options of sync)"),
            ("/usr/share/doc/dupmirror/dupmirror.toml.example", "an example configuration"),
            (".DEST.dupmirror/", "the state directory beside DEST: lock, state.json, run.json (outcome and counters of the runs)"),
        ],
    ));
    out.push_str(".SH \"SEE ALSO\"\n");
    let pages: Vec<String> = Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| format!("\\fBdupmirror\\-{}\\fR(1)", c.get_name()))
        .chain(["\\fBduplicity\\fR(1)".to_string()])
        .collect();
    out.push_str(&pages.join(", "));
    out.push('\n');
    out
}

/// dupmirror(1) and one page per command, from the clap definitions.
fn write_man_pages(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let cli = Cli::command().disable_help_subcommand(true);
    clap_mangen::generate_to(cli.clone(), dir)?;
    let mut cli = cli;
    cli.build();
    let man = clap_mangen::Man::new(cli);
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    page.extend(man_extra_sections().as_bytes());
    man.render_version_section(&mut page)?;
    std::fs::write(dir.join("dupmirror.1"), page)?;
    Ok(())
}

/// The line `run` logs when a mirror finishes.
fn log_outcome(log: &Logger, r: &JobReport) {
    match (&r.error, &r.sync) {
        (Some(e), _) => log.error(&format!("{e} (exit status {})", r.exit_status)),
        (None, Some(s)) if s.up_to_date => log.info(&format!("up to date at {}", s.to)),
        (None, Some(s))
            if s.atomic
                .as_ref()
                .is_some_and(|a| a.action == Action::Deferred) =>
        {
            log.info(&format!(
                "deferred: {} waits for the standby tree's --grace; DEST unchanged at {}",
                s.to,
                s.from.as_deref().unwrap_or("nothing")
            ))
        }
        (None, Some(s)) => log.info(&format!(
            "synced from {} to {}: {} set(s), {} read{}",
            s.from.as_deref().unwrap_or("empty"),
            s.to,
            s.sets.len(),
            human_bytes(s.bytes_read),
            r.changed
                .map(|n| format!(", {n} path(s) changed"))
                .unwrap_or_default()
        )),
        (None, None) => {}
    }
}

fn print_mirror_status(s: &MirrorStatus) {
    let lag = match s.lag_seconds {
        Some(l) => format!("{l}s"),
        None => "?".into(),
    };
    let last = match (&s.last_run, s.last_run_ok) {
        (Some(t), Some(true)) => format!("ok at {t}"),
        (Some(t), _) => format!(
            "FAILED at {t} (exit status {}): {}",
            s.last_exit_status.unwrap_or(1),
            s.last_error.as_deref().unwrap_or("")
        ),
        (None, _) => "never run".into(),
    };
    println!(
        "{}: holds {}, source has {}{}, lag {lag}; last run {last}",
        s.mirror,
        s.holds.as_deref().unwrap_or("nothing"),
        s.latest.as_deref().unwrap_or("?"),
        if s.source_error.is_some() {
            " (last seen; source unreachable now)"
        } else {
            ""
        }
    );
}

fn run(cli: Cli) -> Result<Exit> {
    let log = Logger::new(cli.log_format);
    let interactive = Logger::interactive();
    match cli.command {
        Command::Sync(a) => {
            let bars = !a.quiet && interactive;
            let (json, quiet) = (a.json, a.quiet);
            let name = a.sources_and_dest()?.1.display().to_string();
            let series = a.series(&name);
            let notices = (!quiet).then(|| log.clone());
            let record = a.around.metrics_file.is_some();
            let report = run_job(a.job(name.clone(), bars, notices, true, record)?, &log);
            if let Some(s) = series.as_ref().filter(|s| s.metrics_file.is_some()) {
                if let Err(e) = write_metrics(&[name.as_str()], std::slice::from_ref(s)) {
                    log.warning(&format!("cannot write the metrics file: {e:#}"));
                }
            }
            if let Some(r) = &report.sync {
                if json {
                    print_json(r)?;
                } else if !quiet {
                    print_sync(r);
                }
            }
            if let Some(e) = &report.error {
                log.error(e);
            }
            return Ok(report.exit);
        }
        Command::Run(r) => {
            let config = load_config(r.config.as_deref())?;
            let selected = config.select(&r.names)?;
            let mut all = Vec::new();
            for m in &config.mirrors {
                all.extend(sync_args(&m.matches)?.series(&m.name));
            }
            if r.check {
                for m in &selected {
                    let (sources, dest) = sync_args(&m.matches)?.sources_and_dest()?;
                    let shown: Vec<String> = sources
                        .iter()
                        .map(|s| dupmirror::source::url::redact(s))
                        .collect();
                    println!("{}: {} -> {}", m.name, shown.join(", "), dest.display());
                }
                println!(
                    "{}: {} mirror(s), configuration OK",
                    config.path.display(),
                    config.mirrors.len()
                );
                return Ok(Exit::Success);
            }
            let mut jobs = Vec::new();
            for m in &selected {
                let mut a = sync_args(&m.matches)?;
                let explicit = r.jitter.is_some();
                a.around.jitter = r.jitter.or(a.around.jitter);
                let notices = Some(log.for_mirror(&m.name));
                let jitter = explicit || !interactive;
                jobs.push(a.job(m.name.clone(), false, notices, jitter, true)?);
            }
            let reports = run_jobs(jobs, r.jobs as usize, &log, |rep| {
                log_outcome(&log.for_mirror(&rep.mirror), rep)
            });
            let ran: Vec<&str> = reports.iter().map(|r| r.mirror.as_str()).collect();
            if let Err(e) = write_metrics(&ran, &all) {
                log.warning(&format!("cannot write the metrics file: {e:#}"));
            }
            if r.json {
                let mut out = std::io::stdout().lock();
                for rep in &reports {
                    serde_json::to_writer(&mut out, rep)?;
                    writeln!(out)?;
                }
            }
            return Ok(Exit::combine(reports.iter().map(|r| r.exit)));
        }
        Command::Verify(a) => {
            let options = verify::VerifyOptions {
                repo: a.repo.options()?,
                source: a.source,
                dest: a.dest,
                state_dir: a.state_dir,
                repair: a.repair,
                quick: a.quick,
                durable: !a.no_fsync,
                grace: a.grace,
            };
            let report = verify::verify(&options, &notices_only(&log))?;
            if a.json {
                print_json(&report)?;
            } else {
                print_verify(&report);
            }
            if !report.clean() {
                let paths = report
                    .remaining
                    .as_ref()
                    .unwrap_or(&report.differences)
                    .len();
                return Err(dupmirror::Error::DestDiffers {
                    state: report.state.clone(),
                    paths,
                }
                .into());
            }
        }
        Command::Status(a) if a.config.is_some() => {
            let explicit = a.config.filter(|c| !c.as_os_str().is_empty());
            let config = load_config(explicit.as_deref())?;
            let mut lines = Vec::new();
            for m in config.select(&a.mirrors)? {
                let s = sync_args(&m.matches)?;
                // The mirror's status is its first source's (the one it prefers).
                let (sources, dest) = s.sources_and_dest()?;
                let paths = DestPaths::resolve(&dest, s.state_dir.as_deref())?;
                let repo = s.repo.options()?;
                let reporter = Arc::new(Reporter::default());
                lines.push(mirror_status(
                    &m.name,
                    &sources[0],
                    &paths,
                    &repo,
                    &reporter,
                ));
            }
            if a.json {
                print_json(&lines)?;
            } else {
                lines.iter().for_each(print_mirror_status);
            }
        }
        Command::Status(a) => {
            let options = status::StatusOptions {
                repo: a.names.repo_options(None, a.remote.source_options()?)?,
                source: a.source.unwrap_or_default(), // clap requires it without --config
                dest: a.dest,
                state_dir: a.state_dir,
                time: a.time,
                paths: a.paths,
            };
            let report = status::status(&options, &notices_only(&log))?;
            if a.json {
                print_json(&report)?;
            } else {
                print_status(&report);
            }
        }
        Command::Ls { source, time, repo } => {
            let repo = repo.options()?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            ls::list(&source, time.as_deref(), &repo, &notices_only(&log), |e| {
                out.write_all(&e.index.to_bytes())?;
                out.write_all(b"\n")?;
                Ok(())
            })?;
            out.flush()?;
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "dupmirror",
                &mut std::io::stdout(),
            );
        }
        Command::Manpages { dir } => write_man_pages(&dir)?,
    }
    Ok(Exit::Success)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log = Logger::new(cli.log_format);
    match run(cli) {
        Ok(exit) => exit.into(),
        Err(e) => {
            // One line: the error and its causes, outermost first.
            log.error(&format!("{e:#}"));
            Exit::of(&e).into()
        }
    }
}
