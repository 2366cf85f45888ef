//! Runs the parsed command: turns its arguments into the library's options, calls the
//! command, prints its report (human or `--json`) and returns the exit status it earned.
//! A failure is returned as an error; `main.rs` logs it and maps it to its exit status.

use super::args::{RepoArgs, SyncArgs};
use super::man::write_man_pages;
use super::print::{
    log_outcome, print_json, print_mirror_status, print_status, print_sync, print_verify,
};
use super::{load_config, sync_args, Cli, Command, RunArgs, StatusArgs, VerifyArgs};
use anyhow::Result;
use clap::CommandFactory;
use dupmirror::commands::{ls, status, verify};
use dupmirror::dest::state::DestPaths;
use dupmirror::exit::Exit;
use dupmirror::fleet::job::run_job;
use dupmirror::fleet::run::{run_jobs, write_metrics};
use dupmirror::fleet::status::mirror_status;
use dupmirror::log::Logger;
use dupmirror::progress::Reporter;
use std::io::Write;
use std::sync::Arc;

/// The commands other than sync and run draw no bars but tell about retries.
fn notices_only(log: &Logger) -> Arc<Reporter> {
    Arc::new(Reporter::new(false, Some(log.clone())))
}

/// Runs the command `cli` names; the exit status it earned, or the failure that stopped it.
pub fn run(cli: Cli) -> Result<Exit> {
    let log = Logger::new(cli.log_format);
    let interactive = Logger::interactive();
    match cli.command {
        Command::Sync(a) => sync(a, &log, interactive),
        Command::Run(r) => run_mirrors(r, &log, interactive),
        Command::Verify(a) => verify_dest(a, &log),
        Command::Status(a) if a.config.is_some() => mirrors_status(a),
        Command::Status(a) => repo_status(a, &log),
        Command::Ls {
            source,
            sources,
            time,
            repo,
        } => {
            let sources: Vec<String> = std::iter::once(source).chain(sources).collect();
            list(&sources, time.as_deref(), &repo, &log)
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "dupmirror",
                &mut std::io::stdout(),
            );
            Ok(Exit::Success)
        }
        Command::Manpages { dir } => write_man_pages(&dir).map(|()| Exit::Success),
    }
}

/// `sync`: one mirror, with bars on a terminal, its metrics file if asked.
fn sync(a: SyncArgs, log: &Logger, interactive: bool) -> Result<Exit> {
    let bars = !a.quiet && interactive;
    let (json, quiet) = (a.json, a.quiet);
    let name = a.sources_and_dest()?.1.display().to_string();
    let series = a.series(&name);
    let notices = (!quiet).then(|| log.clone());
    let record = a.around.metrics_file.is_some();
    let report = run_job(a.job(name.clone(), bars, notices, true, record)?, log);
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
    Ok(report.exit)
}

/// `run`: the configured mirrors (or `--check` them), then the metrics of all.
fn run_mirrors(r: RunArgs, log: &Logger, interactive: bool) -> Result<Exit> {
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
    let reports = run_jobs(jobs, r.jobs as usize, log, |rep| {
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
    Ok(Exit::combine(reports.iter().map(|r| r.exit)))
}

/// `verify`: DEST against the backup's signatures; a difference left is a failure.
fn verify_dest(a: VerifyArgs, log: &Logger) -> Result<Exit> {
    let options = verify::VerifyOptions {
        repo: a.repo.options()?,
        sources: std::iter::once(a.source).chain(a.sources).collect(),
        dest: a.dest,
        state_dir: a.state_dir,
        repair: a.repair,
        quick: a.quick,
        durable: !a.no_fsync,
        grace: a.grace,
    };
    let report = verify::verify(&options, &notices_only(log))?;
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
    Ok(Exit::Success)
}

/// `status --config`: one line per configured mirror.
fn mirrors_status(a: StatusArgs) -> Result<Exit> {
    let explicit = a.config.filter(|c| !c.as_os_str().is_empty());
    let config = load_config(explicit.as_deref())?;
    let mut lines = Vec::new();
    for m in config.select(&a.mirrors)? {
        let s = sync_args(&m.matches)?;
        // The newest of its sources, as its sync would follow (repo::select).
        let (sources, dest) = s.sources_and_dest()?;
        let paths = DestPaths::resolve(&dest, s.state_dir.as_deref())?;
        let repo = s.repo.options()?;
        let reporter = Arc::new(Reporter::default());
        lines.push(mirror_status(&m.name, &sources, &paths, &repo, &reporter));
    }
    if a.json {
        print_json(&lines)?;
    } else {
        lines.iter().for_each(print_mirror_status);
    }
    Ok(Exit::Success)
}

/// `status SOURCE`: the repository's chains and sets, and what a sync of --dest would do.
fn repo_status(a: StatusArgs, log: &Logger) -> Result<Exit> {
    let options = status::StatusOptions {
        repo: a.names.repo_options(None, a.remote.source_options()?)?,
        // clap requires SOURCE without --config
        sources: a.source.into_iter().chain(a.sources).collect(),
        dest: a.dest,
        state_dir: a.state_dir,
        time: a.time,
        paths: a.paths,
    };
    let report = status::status(&options, &notices_only(log))?;
    if a.json {
        print_json(&report)?;
    } else {
        print_status(&report);
    }
    Ok(Exit::Success)
}

/// `ls`: one path per line, as duplicity list-current-files prints them.
fn list(sources: &[String], time: Option<&str>, repo: &RepoArgs, log: &Logger) -> Result<Exit> {
    let repo = repo.options()?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    ls::list(sources, time, &repo, &notices_only(log), |e| {
        out.write_all(&e.index.to_bytes())?;
        out.write_all(b"\n")?;
        Ok(())
    })?;
    out.flush()?;
    Ok(Exit::Success)
}
