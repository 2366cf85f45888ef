//! The man pages: dupmirror(1) and one page per command, generated from the clap
//! definitions, with the sections clap does not know (exit statuses, hooks, environment,
//! files). scripts/package.sh writes them with the hidden `manpages` command.

use super::Cli;
use anyhow::Result;
use clap::CommandFactory;
use dupmirror::exit::Exit;
use dupmirror::fleet::config;

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
            ("DUPMIRROR_DECODERS", "volumes a first sync decodes at once (default: the cores, at most 4; 1: in volume order)"),
            ("DUPMIRROR_WRITERS", "writer threads that create files when volumes are read in order (default: the cores, at most 4; 0: none)"),
            ("TMPDIR", "where lists too big for memory (a large directory's names, the changed paths) are sorted, in unnamed files"),
        ],
    ));
    out.push_str(&tagged(
        "FILES",
        &[
            (config::DEFAULT_PATH, "the configuration of run and status --config ([defaults] and [mirror.NAME] tables whose keys are the long options of sync)"),
            ("/usr/share/doc/dupmirror/dupmirror.toml.example", "an example configuration"),
            (".DEST.dupmirror/", "the state directory beside DEST: lock, state.json, run.json (outcome and counters of the runs)"),
            (".DEST.dupmirror-trees/", "sync --atomic: the two trees (a, b) DEST links to; their states are tree-a/ and tree-b/ in the state directory, with atomic.json"),
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
pub fn write_man_pages(dir: &std::path::Path) -> Result<()> {
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
