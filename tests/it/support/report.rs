//! dupmirror's JSON, read into typed structs with serde: the reports of `sync`, `verify` and
//! `status --json`, and the state directory's `state.json`. The structs hold the fields the
//! tests read (serde ignores the others); a document that is not JSON, or lacks one of those
//! fields, fails the test with the text.
//! They are declared here on purpose, not imported from the library (whose `Transfer` and
//! reports look alike): the field names are the output's contract, so a renamed field in
//! dupmirror must fail these tests rather than follow along.

use super::process::Run;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Parse `text` as a `T`; panic naming `what` and showing the text when it is not one.
pub fn parse<T: DeserializeOwned>(text: &str, what: &str) -> T {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{what}: not the expected JSON ({e}):\n{text}"))
}

/// The `--json` report a run printed on stdout.
pub fn of<T: DeserializeOwned>(run: &Run) -> T {
    let text = String::from_utf8(run.stdout.clone())
        .unwrap_or_else(|e| panic!("{}: --json output is not UTF-8: {e}", run.cmdline));
    parse(&text, &run.cmdline)
}

/// Every string and number in a document (object keys included), as text: to look for a
/// value wherever a report puts it.
pub fn scalars(v: &serde_json::Value) -> Vec<String> {
    fn collect(v: &serde_json::Value, out: &mut Vec<String>) {
        use serde_json::Value;
        match v {
            Value::Null | Value::Bool(_) => {}
            Value::Number(n) => out.push(n.to_string()),
            Value::String(s) => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            Value::Object(o) => {
                for (k, v) in o {
                    out.push(k.clone());
                    collect(v, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    collect(v, &mut out);
    out
}

/// `sync --json`.
#[derive(Debug, Deserialize)]
pub struct SyncReport {
    /// The source followed (the primary).
    pub source: String,
    /// Every source given, with its role and what it served.
    pub sources: Vec<SourceStatus>,
    pub up_to_date: bool,
    pub sets: Vec<SetReport>,
    /// Sets committed together (a catch-up) and what that saved.
    #[serde(default)]
    pub merged: Option<Merged>,
    pub bytes_read: u64,
    pub signatures: Option<Signatures>,
    pub transfer: Transfer,
    pub phases: Phases,
}

/// One source of a sync.
#[derive(Debug, Deserialize)]
pub struct SourceStatus {
    pub source: String,
    /// `primary`, `spare`, `stale` or `unreachable`.
    pub role: String,
    pub served: Served,
}

/// What one source served in a run.
#[derive(Debug, Deserialize)]
pub struct Served {
    pub files: Vec<String>,
}

/// One set a sync applied (or would apply).
#[derive(Debug, Deserialize)]
pub struct SetReport {
    /// Volumes read, of `volumes_in_set`.
    pub volumes: u64,
    pub volumes_in_set: u64,
    pub bytes: u64,
    /// Drifted paths restored from the chain while patching.
    pub repaired: Option<RepairStats>,
    /// What the set staged (none for a dry run).
    pub applied: Option<serde_json::Value>,
}

/// Sets staged together and committed as one step.
#[derive(Debug, Deserialize)]
pub struct Merged {
    pub sets: u64,
    pub writes_saved: u64,
    pub bytes_saved: u64,
}

#[derive(Debug, Deserialize)]
pub struct RepairStats {
    pub volumes_read: u64,
}

/// What crossed the network.
#[derive(Debug, Deserialize)]
pub struct Transfer {
    pub bytes_downloaded: u64,
    pub bytes_resumed: u64,
    pub bytes_refetched: u64,
    pub files_fetched: u64,
    pub listings: u64,
    pub retries: u64,
}

#[derive(Debug, Deserialize)]
pub struct Phases {
    pub download_seconds: f64,
}

/// What the signatures of the encrypted files said.
#[derive(Debug, Deserialize)]
pub struct Signatures {
    pub encrypted_files: u64,
    pub signed: u64,
    pub unsigned: u64,
    pub unchecked: u64,
    pub signers: Vec<String>,
}

/// `verify --json`.
#[derive(Debug, Deserialize)]
pub struct VerifyReport {
    pub differences: Vec<Difference>,
    pub repaired: Option<RepairStats>,
    pub remaining: Option<Vec<Difference>>,
    pub sources: Vec<SourceStatus>,
}

#[derive(Debug, Deserialize)]
pub struct Difference {
    pub path: String,
}

/// `status --json`.
#[derive(Debug, Deserialize)]
pub struct StatusReport {
    pub chains: Vec<ChainStatus>,
    pub latest: Option<String>,
    pub dest: Option<DestStatus>,
}

/// `status --dest --json`: what DEST holds, and whether the source went back or froze.
#[derive(Debug, Deserialize)]
pub struct DestStatus {
    pub newest_applied: Option<String>,
    pub newest_applied_at: Option<String>,
    pub source_behind: bool,
    pub frozen_seconds: Option<i64>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct ChainStatus {
    pub start_time: String,
    pub end_time: String,
    pub sets: Vec<SetStatus>,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct SetStatus {
    #[serde(rename = "type")]
    pub kind: String,
    pub start_time: Option<String>,
    pub end_time: String,
    pub volumes: u64,
    pub bytes: u64,
    pub complete: bool,
    pub signatures: bool,
}

/// The state directory's `state.json`.
#[derive(Debug, Deserialize)]
pub struct State {
    pub end_time: i64,
}
