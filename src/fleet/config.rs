//! The configuration file of `dupmirror run`: many mirrors, each described by the options
//! of `sync`.
//!
//! ```toml
//! [defaults]                      # keys every mirror gets unless it sets them itself
//! retries = 3
//! metrics-file = "/var/lib/prometheus/node-exporter/dupmirror.prom"
//!
//! [mirror.web]                    # one table per mirror; NAME is [A-Za-z0-9][A-Za-z0-9._-]*
//! source = "https://backup.example.org/web"  # or a list, in order of preference:
//!                                 # ["s3://cdn-bucket/web", "https://backup.example.org/web"]
//! dest = "/srv/web"
//! path = ["htdocs", "conf"]       # a repeatable option takes an array
//! no-fsync = true                 # a flag takes true or false
//! ```
//!
//! The keys are not listed here: they are the long options (and the SOURCE and DEST
//! arguments) of the `sync` command the caller hands in, and every value goes through that
//! option's own clap parser. An option added to `sync` is a configuration key at once.
//!
//! ```text
//! load(file, sync):
//!     parse the TOML keeping spans (lines for every message)
//!     for each mirror: defaults, then its own keys over them
//!         each key must name a sync option that belongs in a file, with a value of the
//!         option's kind (flag: boolean; repeatable: array or value; other: string, number
//!         or date), accepted by the option's parser
//!         build `sync --key=value ... -- SOURCE DEST` and let clap parse it
//!     a file holding a secret (a key naming a password, passphrase or secret, or a URL
//!     with a password) must not be readable by group or others
//! ```
//!
//! Every failure is one [`ConfigError`] line: `FILE:LINE: [TABLE: ]key "K": what is wrong`.

use clap::{Arg, ArgAction, ArgMatches, Command};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Where the configuration is looked for when neither `--config` nor `$DUPMIRROR_CONFIG`
/// names it.
pub const DEFAULT_PATH: &str = "/etc/dupmirror/dupmirror.toml";

/// Options of `sync` that describe one invocation, not a mirror.
const COMMAND_LINE_ONLY: [&str; 5] = ["help", "version", "dry-run", "json", "quiet"];

/// One line naming the file, the line and the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

/// The configuration file to read: `explicit` (`--config`), else `$DUPMIRROR_CONFIG`, else
/// [`DEFAULT_PATH`].
pub fn locate(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("DUPMIRROR_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}

/// A configuration file, read and checked.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    /// In the order of their names.
    pub mirrors: Vec<MirrorConfig>,
}

/// One mirror: its `sync` options as parsed by clap.
#[derive(Debug)]
pub struct MirrorConfig {
    pub name: String,
    /// The line of its `[mirror.NAME]` table.
    pub line: usize,
    pub matches: ArgMatches,
}

impl Config {
    /// The mirrors called `names` (all of them when empty), in the order given.
    pub fn select(&self, names: &[String]) -> Result<Vec<&MirrorConfig>, ConfigError> {
        if names.is_empty() {
            return Ok(self.mirrors.iter().collect());
        }
        names
            .iter()
            .map(|n| {
                self.mirrors.iter().find(|m| &m.name == n).ok_or_else(|| {
                    let known: Vec<&str> = self.mirrors.iter().map(|m| m.name.as_str()).collect();
                    ConfigError {
                        file: self.path.clone(),
                        line: None,
                        message: format!(
                            "no mirror {n:?} (the file has: {})",
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        ),
                    }
                })
            })
            .collect()
    }
}

/// A key's value with the line it came from.
struct Setting<'i> {
    value: Spanned<DeValue<'i>>,
    line: usize,
    /// The table it was written in: `defaults` or `mirror.NAME`.
    table: String,
}

struct Loader<'a> {
    file: &'a Path,
    text: &'a str,
    sync: Command,
}

impl Loader<'_> {
    fn line(&self, span: Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }

    fn error(&self, line: Option<usize>, message: String) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            message,
        }
    }

    fn key_error(&self, s: &Setting, key: &str, what: impl std::fmt::Display) -> ConfigError {
        self.error(Some(s.line), format!("{}: key {key:?}: {what}", s.table))
    }

    fn table<'i, 'v>(
        &self,
        value: &'v Spanned<DeValue<'i>>,
        name: &str,
    ) -> Result<&'v DeTable<'i>, ConfigError> {
        match value.get_ref() {
            DeValue::Table(t) => Ok(t),
            _ => Err(self.error(
                Some(self.line(value.span())),
                format!("{name} must be a table ([{name}])"),
            )),
        }
    }

    fn arg(&self, key: &str) -> Option<&Arg> {
        if COMMAND_LINE_ONLY.contains(&key) {
            return None;
        }
        // A positional's id first: `source` is SOURCE, not sync's repeatable `--source`.
        self.sync
            .get_positionals()
            .find(|a| a.get_id() == key)
            .or_else(|| {
                self.sync
                    .get_arguments()
                    .find(|a| a.get_long() == Some(key))
            })
    }

    /// The table's settings, each checked against the option it names.
    fn settings<'i>(
        &self,
        table: &DeTable<'i>,
        table_name: &str,
    ) -> Result<BTreeMap<String, Setting<'i>>, ConfigError> {
        let mut out = BTreeMap::new();
        for (key, value) in table.iter() {
            let setting = Setting {
                value: value.clone(),
                line: self.line(key.span()),
                table: table_name.to_string(),
            };
            let key = key.get_ref().to_string();
            let arg = self.arg(&key).ok_or_else(|| {
                let why = if COMMAND_LINE_ONLY.contains(&key.as_str()) {
                    "belongs on the command line, not in a configuration file"
                } else {
                    "unknown key (the keys are the long options of `dupmirror sync`, and \
                     source and dest)"
                };
                self.key_error(&setting, &key, why)
            })?;
            // The option alone (other required arguments stand-ins) through `sync`'s
            // parser, so a bad value names its key.
            let (values, spares) = spare_sources(arg, self.values(arg, &setting, &key)?);
            let mut argv: Vec<OsString> = vec!["sync".into()];
            argv.extend(spares);
            if !arg.is_positional() {
                argv.extend(argv_of(arg, &key, values.clone()));
            }
            argv.push("--".into());
            for p in self.sync.get_positionals() {
                if p.get_id() == arg.get_id() {
                    argv.extend(values.iter().map(Into::into));
                } else if p.is_required_set() {
                    argv.push("x".into());
                }
            }
            self.sync
                .clone()
                .try_get_matches_from(argv)
                .map_err(|e| self.key_error(&setting, &key, clap_message(&e)))?;
            out.insert(key, setting);
        }
        Ok(out)
    }

    /// A setting's values as strings for the option's parser; a flag yields "" when set.
    fn values(&self, arg: &Arg, s: &Setting, key: &str) -> Result<Vec<String>, ConfigError> {
        let scalar = |v: &DeValue| -> Option<String> {
            match v {
                DeValue::String(s) => Some(s.to_string()),
                DeValue::Integer(i) => Some(i.to_string()),
                DeValue::Float(f) => Some(f.as_str().to_string()),
                DeValue::Datetime(d) => Some(d.to_string()),
                _ => None,
            }
        };
        let value = s.value.get_ref();
        let wrong = |expected: &str| {
            self.key_error(
                s,
                key,
                format!("expected {expected}, found {}", kind_of(value)),
            )
        };
        match arg.get_action() {
            ArgAction::SetTrue => match value {
                DeValue::Boolean(true) => Ok(vec![String::new()]),
                DeValue::Boolean(false) => Ok(Vec::new()),
                _ => Err(wrong("true or false")),
            },
            ArgAction::Append => match value {
                DeValue::Array(items) => items
                    .iter()
                    .map(|i| scalar(i.get_ref()).ok_or_else(|| wrong("an array of strings")))
                    .collect(),
                v => scalar(v)
                    .map(|x| vec![x])
                    .ok_or_else(|| wrong("a string or an array of strings")),
            },
            // SOURCE may list the mirror's sources in order of preference.
            _ if arg.is_positional() && arg.get_id() == "source" => match value {
                DeValue::Array(items) if !items.is_empty() => items
                    .iter()
                    .map(|i| scalar(i.get_ref()).ok_or_else(|| wrong("an array of strings")))
                    .collect(),
                v => scalar(v)
                    .map(|x| vec![x])
                    .ok_or_else(|| wrong("a string or a non-empty array of strings")),
            },
            _ => scalar(value)
                .map(|x| vec![x])
                .ok_or_else(|| wrong("a string or a number")),
        }
    }

    /// `sync` with the mirror's settings, parsed by clap.
    fn mirror(
        &self,
        name: &str,
        line: usize,
        settings: &BTreeMap<String, Setting>,
    ) -> Result<ArgMatches, ConfigError> {
        let table = format!("mirror.{name}");
        let mut argv: Vec<OsString> = vec!["sync".into()];
        let mut positionals = Vec::new();
        for (key, s) in settings {
            let arg = self.arg(key).expect("checked when read");
            let (values, spares) = spare_sources(arg, self.values(arg, s, key)?);
            argv.extend(spares);
            if arg.is_positional() {
                positionals.push((arg.get_index(), values));
            } else {
                argv.extend(argv_of(arg, key, values));
            }
        }
        for arg in self.sync.get_positionals() {
            let id = arg.get_id().as_str();
            // DEST may be left out on the command line only when `--source` gives the
            // sources, which a table cannot (its `source` key is SOURCE).
            let required = arg.is_required_set() || id == "dest";
            if required && !settings.contains_key(id) {
                return Err(self.error(
                    Some(line),
                    format!("{table}: key {id:?} is missing (it is required)"),
                ));
            }
        }
        positionals.sort_by_key(|(index, _)| *index);
        argv.push("--".into());
        argv.extend(positionals.into_iter().flat_map(|(_, v)| v).map(Into::into));
        self.sync
            .clone()
            .try_get_matches_from(argv)
            .map_err(|e| self.error(Some(line), format!("{table}: {}", clap_message(&e))))
    }
}

/// Reads and checks the configuration file at `path`; `sync` is the `sync` command whose
/// options are the keys.
pub fn load(path: &Path, sync: &Command) -> Result<Config, ConfigError> {
    let fail = |message: String| ConfigError {
        file: path.to_path_buf(),
        line: None,
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let mut sync = sync.clone();
    sync.build();
    let loader = Loader {
        file: path,
        text: &text,
        sync,
    };
    let doc = DeTable::parse(&text).map_err(|e| {
        loader.error(
            e.span().map(|s| loader.line(s)),
            e.message().replace('\n', " ").trim().to_string(),
        )
    })?;
    let mut defaults = BTreeMap::new();
    let mut mirror_tables = Vec::new();
    for (key, value) in doc.get_ref().iter() {
        match key.get_ref().as_ref() {
            "defaults" => {
                defaults = loader.settings(loader.table(value, "defaults")?, "defaults")?
            }
            "mirror" => {
                for (name, table) in loader.table(value, "mirror")?.iter() {
                    mirror_tables.push((name.get_ref().to_string(), name.span(), table));
                }
            }
            other => {
                return Err(loader.error(
                    Some(loader.line(key.span())),
                    format!(
                        "unknown table or key {other:?} (the file has [defaults] and \
                         [mirror.NAME] tables)"
                    ),
                ))
            }
        }
    }
    let mut mirrors = Vec::new();
    let mut secrets: Vec<(String, usize)> = secret_keys(&defaults);
    for (name, span, table) in mirror_tables {
        let line = loader.line(span);
        let table_name = format!("mirror.{name}");
        if !valid_name(&name) {
            return Err(loader.error(
                Some(line),
                format!(
                    "{table_name}: a mirror name is letters, digits, '.', '_' and '-', \
                     starting with a letter or digit"
                ),
            ));
        }
        let own = loader.settings(loader.table(table, &table_name)?, &table_name)?;
        secrets.extend(secret_keys(&own));
        let mut settings: BTreeMap<String, Setting> = BTreeMap::new();
        for (k, s) in defaults.iter() {
            settings.insert(
                k.clone(),
                Setting {
                    value: s.value.clone(),
                    line: s.line,
                    table: s.table.clone(),
                },
            );
        }
        settings.extend(own);
        let matches = loader.mirror(&name, line, &settings)?;
        mirrors.push(MirrorConfig {
            name,
            line,
            matches,
        });
    }
    if let Some((key, line)) = secrets.first() {
        if meta.mode() & 0o044 != 0 {
            return Err(loader.error(
                Some(*line),
                format!(
                    "key {key:?} holds a password, and the file is readable by group or \
                     others (mode {:o}); make it private: chmod 600 {}",
                    meta.mode() & 0o777,
                    path.display()
                ),
            ));
        }
    }
    mirrors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Config {
        path: path.to_path_buf(),
        mirrors,
    })
}

/// The command-line words of an option (not a positional) with `values`.
fn argv_of(arg: &Arg, key: &str, values: Vec<String>) -> Vec<OsString> {
    values
        .into_iter()
        .map(|v| match arg.get_action() {
            ArgAction::SetTrue => format!("--{key}").into(),
            _ => format!("--{key}={v}").into(),
        })
        .collect()
}

/// A `source` array: its first URL is SOURCE, the others are `--source` spares, in order.
fn spare_sources(arg: &Arg, mut values: Vec<String>) -> (Vec<String>, Vec<OsString>) {
    if !(arg.is_positional() && arg.get_id() == "source") || values.len() < 2 {
        return (values, Vec::new());
    }
    let spares = values
        .split_off(1)
        .into_iter()
        .map(|v| format!("--source={v}").into())
        .collect();
    (values, spares)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The keys (with their lines) whose values are secrets: a key naming a password,
/// passphrase or secret (not a file holding one), or any value that is a URL with a
/// password.
fn secret_keys(settings: &BTreeMap<String, Setting>) -> Vec<(String, usize)> {
    settings
        .iter()
        .filter(|(key, s)| {
            let named = !key.ends_with("-file")
                && ["password", "passphrase", "secret"]
                    .iter()
                    .any(|w| key.contains(w));
            named || has_url_password(s.value.get_ref())
        })
        .map(|(key, s)| (key.clone(), s.line))
        .collect()
}

fn has_url_password(value: &DeValue) -> bool {
    match value {
        DeValue::String(s) => url::Url::parse(s).is_ok_and(|u| u.password().is_some()),
        DeValue::Array(items) => items.iter().any(|i| has_url_password(i.get_ref())),
        _ => false,
    }
}

fn kind_of(v: &DeValue) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The first line of a clap error, without its `error: ` prefix.
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in for `sync`'s options: a flag, a repeatable option, a parsed number.
    #[derive(Parser, Debug)]
    #[command(name = "sync")]
    struct Sync {
        source: String,
        dest: PathBuf,
        #[arg(long)]
        no_fsync: bool,
        #[arg(long = "path")]
        paths: Vec<String>,
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=9))]
        prefetch: u32,
        #[arg(long)]
        quiet: bool,
        #[arg(long = "source")]
        sources: Vec<String>,
    }

    fn load_text(text: &str, mode: u32) -> Result<Vec<(String, Sync)>, String> {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        use clap::{CommandFactory, FromArgMatches};
        let config = load(&path, &Sync::command()).map_err(|e| {
            let s = e.to_string();
            assert!(s.starts_with(&path.display().to_string()), "{s}");
            s[path.display().to_string().len()..].to_string()
        })?;
        Ok(config
            .mirrors
            .iter()
            .map(|m| (m.name.clone(), Sync::from_arg_matches(&m.matches).unwrap()))
            .collect())
    }

    #[test]
    fn defaults_apply_and_mirror_keys_win() {
        let m = load_text(
            "[defaults]\nprefetch = 3\nno-fsync = true\n\n[mirror.b]\nsource = \"/r2\"\n\
             dest = \"/d2\"\nprefetch = 5\npath = [\"x\", \"-y\"]\n\n[mirror.a]\n\
             source = \"/r1\"\ndest = \"/d1\"\npath = \"z\"\nno-fsync = false\n",
            0o644,
        )
        .unwrap();
        assert_eq!(m[0].0, "a");
        assert_eq!(m[0].1.prefetch, 3);
        assert!(!m[0].1.no_fsync);
        assert_eq!(m[0].1.paths, ["z"]);
        assert_eq!(m[1].1.prefetch, 5);
        assert!(m[1].1.no_fsync);
        assert_eq!(m[1].1.paths, ["x", "-y"]);
        assert_eq!(m[1].1.source, "/r2");
    }

    #[test]
    fn a_source_list_is_source_then_spares_in_order() {
        let m = load_text(
            "[mirror.a]\nsource = [\"s3://b/p\", \"https://h/p\", \"/r\"]\ndest = \"/d\"\n",
            0o644,
        )
        .unwrap();
        assert_eq!(m[0].1.source, "s3://b/p");
        assert_eq!(m[0].1.sources, ["https://h/p", "/r"]);
        assert_eq!(m[0].1.dest, PathBuf::from("/d"));
        let e = load_text("[mirror.a]\nsource = []\ndest = \"/d\"\n", 0o644).unwrap_err();
        assert!(
            e.contains("key \"source\": expected a string or a non-empty array"),
            "{e}"
        );
    }

    #[test]
    fn each_error_is_one_line_with_line_and_key() {
        let cases = [
            (
                "[mirror.a]\nsource = \"/r\"\ndest = \"/d\"\nsorce = 1\n",
                ":4: mirror.a: key \"sorce\": unknown key",
            ),
            (
                "[mirror.a]\nsource = \"/r\"\ndest = \"/d\"\nno-fsync = \"yes\"\n",
                ":4: mirror.a: key \"no-fsync\": expected true or false, found a string",
            ),
            (
                "[defaults]\nprefetch = 0\n[mirror.a]\nsource = \"/r\"\ndest = \"/d\"\n",
                ":2: defaults: key \"prefetch\": invalid value '0'",
            ),
            (
                "\n[mirror.a]\nsource = \"/r\"\n",
                ":2: mirror.a: key \"dest\" is missing",
            ),
            (
                "[mirror.a]\nsource = \"/r\"\ndest = \"/d\"\nquiet = true\n",
                ":4: mirror.a: key \"quiet\": belongs on the command line",
            ),
            ("[mirror.a]\nsource = \n", ":2: "),
            (
                "[mirror.'a b']\nsource = \"/r\"\n",
                ":1: mirror.a b: a mirror name",
            ),
            ("[mirrors.a]\n", ":1: unknown table or key \"mirrors\""),
        ];
        for (text, expected) in cases {
            let e = load_text(text, 0o600).unwrap_err();
            assert!(e.starts_with(expected), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn a_readable_file_with_a_password_is_refused() {
        let text = "[mirror.a]\ndest = \"/d\"\nsource = \"ftp://u:pw@host/r\"\n";
        let e = load_text(text, 0o640).unwrap_err();
        assert!(e.starts_with(":3: key \"source\" holds a password"), "{e}");
        assert!(!e.contains("pw@"), "{e}");
        assert!(load_text(text, 0o600).is_ok());
        assert!(load_text(
            "[mirror.a]\ndest = \"/d\"\nsource = \"ftp://u@h/r\"\n",
            0o644
        )
        .is_ok());
    }
}
