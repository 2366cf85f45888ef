//! The `dupmirror` command line: parses arguments, runs a command, prints its report.
//! A failure is one line on stderr and an exit status from `dupmirror::exit` (documented
//! in `--help`, the man page and the README). The commands' definitions, their dispatch
//! and their human output live in the [`cli`] module.

mod cli;

use clap::Parser;
use dupmirror::exit::Exit;
use dupmirror::log::Logger;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let log = Logger::new(cli.log_format);
    match cli::dispatch::run(cli) {
        Ok(exit) => exit.into(),
        Err(e) => {
            // One line: the error and its causes, outermost first.
            log.error(&format!("{e:#}"));
            Exit::of(&e).into()
        }
    }
}
