//! dupmirror's command line: the clap definitions of every command ([`Cli`]), from which
//! `--help`, the man pages (hidden `manpages` command, run by scripts/package.sh) and the
//! shell completions are generated, and from which the configuration file takes its keys
//! (those of `sync`, see [`sync_command`]). `main.rs` parses with it, hands the result to
//! [`dispatch::run`] and maps a failure to its exit status.
//!
//! - [`args`]: the argument groups that several commands share (repository names,
//!   decryption, remote transport) and `sync`'s own options.
//! - [`dispatch`]: runs the parsed command and prints its report.
//! - [`print`]: the human form of each report (`--json` prints the report itself).
//! - [`man`]: the man pages, with the sections clap does not know.

pub mod args;
pub mod dispatch;
pub mod man;
pub mod print;

use anyhow::Result;
use args::{NameOptions, RemoteOptions, RepoArgs, SyncArgs};
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use dupmirror::exit::Exit;
use dupmirror::fleet::config::{self, Config};
use dupmirror::fleet::job::parse_duration;
use dupmirror::log::LogFormat;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "dupmirror",
    version,
    about = "Keep a tree in exact sync with a duplicity repository by replaying only its new sets",
    after_long_help = exit_status_help()
)]
pub struct Cli {
    /// How lines on stderr are written: text (with syslog priority prefixes under systemd)
    /// or one JSON object per line
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

fn exit_status_help() -> String {
    format!("Exit status:\n{}", Exit::table())
}

#[derive(Subcommand)]
pub enum Command {
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
        /// Another source of the same repository (repeatable), in order of preference after
        /// SOURCE, as for sync: the files are those of the one a sync would follow
        #[arg(long = "source", value_name = "URL")]
        sources: Vec<String>,
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
pub struct RunArgs {
    /// The mirrors to run (default: every mirror of the file)
    pub names: Vec<String>,
    /// The configuration file (default: $DUPMIRROR_CONFIG, else /etc/dupmirror/dupmirror.toml)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration and print the mirrors it would run; run nothing
    #[arg(long)]
    pub check: bool,
    /// Print one JSON report per mirror, one per line
    #[arg(long)]
    pub json: bool,
    /// Mirrors synced at once
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub jobs: u32,
    /// Sleep a random time up to DURATION before each mirror, also on a terminal (overrides
    /// the configuration's jitter, which applies only when stderr is not a terminal)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub jitter: Option<Duration>,
}

#[derive(Args)]
pub struct StatusArgs {
    /// The repository (not with --config)
    #[arg(required_unless_present = "config", conflicts_with = "config")]
    pub source: Option<String>,
    /// Another source of the same repository (repeatable), in order of preference after
    /// SOURCE, as for sync: the status is that of the one a sync would follow
    #[arg(long = "source", value_name = "URL", conflicts_with = "config")]
    pub sources: Vec<String>,
    /// Show the mirrors of this configuration file instead (see `run`)
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "")]
    pub config: Option<PathBuf>,
    /// With --config: only these mirrors
    #[arg(long = "mirror", value_name = "NAME", requires = "config")]
    pub mirrors: Vec<String>,
    /// Also show what a sync of this DEST would do
    #[arg(long)]
    pub dest: Option<PathBuf>,
    /// The state directory of --dest, when not the default
    #[arg(long, value_name = "DIR", requires = "dest")]
    pub state_dir: Option<PathBuf>,
    /// With --dest: the --time that sync would be given (default: the latest backup)
    #[arg(long, short = 't', requires = "dest")]
    pub time: Option<String>,
    /// With --dest: the --path subtrees that sync would be given (repeatable)
    #[arg(long = "path", value_name = "P", requires = "dest")]
    pub paths: Vec<String>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub names: NameOptions,
    #[command(flatten)]
    pub remote: RemoteOptions,
}

#[derive(Args)]
pub struct VerifyArgs {
    pub source: String,
    pub dest: PathBuf,
    /// Another source of the same repository (repeatable), in order of preference after
    /// SOURCE, as for sync: verify follows the first that answers and is not stale, and a
    /// repair takes volumes from any of them
    #[arg(long = "source", value_name = "URL")]
    pub sources: Vec<String>,
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Restore the paths that differ, reading only the volumes that hold them
    #[arg(long)]
    pub repair: bool,
    /// Compare metadata only (size, mode, mtime, type), no content hashing: as fast as
    /// rsync's quick check, blind to edits that keep size and mtime
    #[arg(long)]
    pub quick: bool,
    /// Skip the file system sync before the repair's commit
    #[arg(long)]
    pub no_fsync: bool,
    /// Atomic layout: --repair writes the standby tree only once it has been out of
    /// service this long
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    pub grace: Duration,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub repo: RepoArgs,
}

/// The `sync` command, whose options are the configuration's keys.
pub fn sync_command() -> clap::Command {
    Cli::command()
        .find_subcommand("sync")
        .cloned()
        .unwrap_or_else(|| SyncArgs::augment_args(clap::Command::new("sync")))
}

pub fn sync_args(matches: &ArgMatches) -> Result<SyncArgs> {
    Ok(SyncArgs::from_arg_matches(matches)?)
}

pub fn load_config(explicit: Option<&std::path::Path>) -> Result<Config> {
    Ok(config::load(&config::locate(explicit), &sync_command())?)
}
