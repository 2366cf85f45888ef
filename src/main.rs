//! The `dupmirror` command line: parses arguments, runs a command, prints its report.
//! Exit status 0 on success (also when nothing was new), 1 with one line on stderr on
//! failure, 2 for a usage error.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use dupmirror::commands::{ls, status, sync, verify};
use dupmirror::decode::crypto::Decryptor;
use dupmirror::decode::crypto::{GpgDecryptor, GpgSignatureTally, Passphrase, SignKey};
use dupmirror::progress::Progress;
use dupmirror::repo::filename::Prefixes;
use dupmirror::repo::RepoOptions;
use dupmirror::source::meter::{parse_rate, Meter};
use dupmirror::source::SourceOptions;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "dupmirror",
    version,
    about = "Keep a tree in exact sync with a duplicity repository by replaying only its new sets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
/// files. The passphrase comes from `PASSPHRASE` unless --passphrase-file is given; keys come
/// from the gpg keyring (`GNUPGHOME` or ~/.gnupg).
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
            None => Passphrase::from_env(),
        };
        Ok(Arc::new(GpgDecryptor::new(
            passphrase,
            self.sign_key.clone(),
        )))
    }
}

/// How to reach a remote SOURCE (ftp://, ftps://, http://, https://).
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
    /// Also trust the CA certificates in this PEM file (https://, ftps://)
    #[arg(long, global = true, value_name = "FILE")]
    ca_file: Option<PathBuf>,
}

fn seconds(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("--{what} must be a positive number of seconds"))
}

impl RemoteOptions {
    /// `bars`: show progress bars; `notices`: print retry notices on stderr.
    fn source_options(&self, bars: bool, notices: bool) -> Result<SourceOptions> {
        Ok(SourceOptions {
            retries: self.retries,
            connect_timeout: seconds(self.connect_timeout, "connect-timeout")?,
            read_timeout: seconds(self.timeout, "timeout")?,
            ca_file: self.ca_file.clone(),
            meter: Arc::new(Meter::new(
                self.bwlimit,
                Arc::new(Progress::new(bars, notices)),
            )),
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
    /// Show the repository's chains and sets (like duplicity collection-status)
    Status {
        source: String,
        /// Also show what this DEST would need
        #[arg(long)]
        dest: Option<PathBuf>,
        /// The state directory of --dest, when not the default
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        names: NameOptions,
        #[command(flatten)]
        remote: RemoteOptions,
    },
    /// List the files of the backup at --time (like duplicity list-current-files)
    Ls {
        source: String,
        #[arg(long, short = 't')]
        time: Option<String>,
        #[command(flatten)]
        repo: RepoArgs,
    },
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
    fn options(&self, bars: bool, notices: bool) -> Result<RepoOptions> {
        self.names.repo_options(
            Some(&self.crypto),
            self.remote.source_options(bars, notices)?,
        )
    }
}

#[derive(Args)]
struct SyncArgs {
    /// The duplicity repository: a path, file://, ftp://, ftps://, http:// or https:// URL
    source: String,
    /// The tree to keep in sync (holds exactly the backed-up files)
    dest: PathBuf,
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
    /// Most volumes in the download cache at once: the one being applied and those
    /// downloading ahead of it (1: no prefetch)
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    prefetch: u32,
    #[command(flatten)]
    repo: RepoArgs,
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

fn print_sync(r: &sync::SyncReport) {
    if let Some(t) = &r.recovered {
        println!("completed an interrupted commit: DEST was brought to {t}");
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
            None => println!("DEST {} was never synced", d.dest.display()),
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
        println!(
            "a sync would apply {} set(s), {}{}",
            d.pending_sets,
            human_bytes(d.pending_bytes),
            if d.needs_full {
                ", starting from a full set"
            } else {
                ""
            }
        );
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
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Sync(a) => {
            let bars = !a.quiet && std::io::stderr().is_terminal();
            let report = sync::sync(&sync::SyncOptions {
                repo: a.repo.options(bars, !a.quiet)?,
                source: a.source,
                dest: a.dest,
                time: a.time,
                state_dir: a.state_dir,
                paths: a.paths,
                dry_run: a.dry_run,
                adopt: a.adopt,
                wait: a.wait,
                durable: !a.no_fsync,
                prefetch: a.prefetch as usize,
            })?;
            if a.json {
                print_json(&report)?;
            } else if !a.quiet {
                print_sync(&report);
            }
        }
        Command::Verify(a) => {
            let report = verify::verify(&verify::VerifyOptions {
                repo: a.repo.options(false, true)?,
                source: a.source,
                dest: a.dest,
                state_dir: a.state_dir,
                repair: a.repair,
                quick: a.quick,
                durable: !a.no_fsync,
            })?;
            if a.json {
                print_json(&report)?;
            } else {
                print_verify(&report);
            }
            if !report.clean() {
                let n = report
                    .remaining
                    .as_ref()
                    .unwrap_or(&report.differences)
                    .len();
                anyhow::bail!(
                    "DEST differs from the backup at {} in {n} path(s)",
                    report.state
                );
            }
        }
        Command::Status {
            source,
            dest,
            state_dir,
            json,
            names,
            remote,
        } => {
            let report = status::status(
                &source,
                dest.as_deref(),
                state_dir.as_deref(),
                &names.repo_options(None, remote.source_options(false, true)?)?,
            )?;
            if json {
                print_json(&report)?;
            } else {
                print_status(&report);
            }
        }
        Command::Ls { source, time, repo } => {
            let repo = repo.options(false, true)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            ls::list(&source, time.as_deref(), &repo, |e| {
                out.write_all(&e.index.to_bytes())?;
                out.write_all(b"\n")?;
                Ok(())
            })?;
            out.flush()?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, outermost first.
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("dupmirror: error: {msg}");
            ExitCode::FAILURE
        }
    }
}
