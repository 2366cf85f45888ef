//! Private GnuPG homes for the encryption tests.
//!
//! Each test makes its own short home (`/tmp/g.XXXXXX`: gpg-agent's socket lives inside it and
//! fails on long paths) and stops that home's agent when done. The agent caches no passphrase
//! (`default-cache-ttl 0`, `max-cache-ttl 0`), so a wrong passphrase after a right one is seen
//! as wrong; [`GpgHome::with_agent_cache`] keeps gpg's default cache for the test that proves
//! dupmirror does not depend on that setting. The passphrase key derivation is cheap here
//! (`s2k-count 65536`, the least gpg accepts) so that the tests, which decrypt hundreds of
//! files, stay quick; it changes the iteration count in the files, not their format. The
//! committed encrypted repository keeps gpg's own default ([`GpgHome::with_gpg_defaults`]).

use super::lab::Lab;
use super::process::{run_with_timeout, Run};
use super::{os, path_str, skip};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub struct GpgHome {
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

fn probe_gpg() -> Result<(), String> {
    for prog in ["gpg", "gpgconf"] {
        let out = Command::new(prog)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{prog}: {e}"))?;
        if !out.status.success() {
            return Err(format!("{prog} --version failed"));
        }
    }
    Ok(())
}

/// True when gpg is installed; otherwise prints "skipped: ..." (or panics when
/// `DUPMIRROR_REQUIRE_ORACLE=1`).
pub fn gpg_available() -> bool {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    match PROBE.get_or_init(probe_gpg) {
        Ok(()) => true,
        Err(why) => {
            skip(&format!(
                "gpg not installed ({why}); run scripts/install-deps.sh"
            ));
            false
        }
    }
}

const NO_CACHE: &str = "default-cache-ttl 0\nmax-cache-ttl 0\n";
const CHEAP_S2K: &str = "s2k-count 65536\n";

impl GpgHome {
    /// A fresh home whose agent caches nothing; `None` when gpg is missing (see
    /// [`gpg_available`]).
    pub fn new() -> Option<GpgHome> {
        Self::make(NO_CACHE, CHEAP_S2K)
    }

    /// A fresh home whose agent caches passphrases as gpg does by default.
    pub fn with_agent_cache() -> Option<GpgHome> {
        Self::make("", CHEAP_S2K)
    }

    /// A fresh home with gpg's default key derivation, whose agent caches nothing.
    pub fn with_gpg_defaults() -> Option<GpgHome> {
        Self::make(NO_CACHE, "")
    }

    fn make(agent_conf: &str, s2k: &str) -> Option<GpgHome> {
        if !gpg_available() {
            return None;
        }
        let tmp = tempfile::Builder::new()
            .prefix("g.")
            .tempdir_in("/tmp")
            .expect("temporary GNUPGHOME");
        let dir = tmp.path().to_path_buf();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(dir.join("gpg.conf"), s2k).unwrap();
        fs::write(dir.join("gpg-agent.conf"), format!("{agent_conf}{s2k}")).unwrap();
        Some(GpgHome { dir, _tmp: tmp })
    }

    /// Run gpg on this home, non-interactively; panics unless it succeeds.
    pub fn gpg(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new("gpg");
        cmd.arg("--homedir")
            .arg(&self.dir)
            .args(["--batch", "--yes", "--pinentry-mode", "loopback"])
            .args(args);
        let r = run_with_timeout(cmd, Duration::from_secs(120));
        r.assert_ok("gpg");
        r
    }

    /// Makes a key (ed25519 signing primary, cv25519 encryption subkey) protected by
    /// `passphrase` (none when empty); returns its fingerprint.
    pub fn gen_key(&self, name: &str, passphrase: &str) -> String {
        self.gen_key_at(name, passphrase, None)
    }

    /// [`GpgHome::gen_key`], made at `created` (Unix seconds) instead of now, so that it can
    /// sign files dated in the past (`--faked-system-time`).
    pub fn gen_key_at(&self, name: &str, passphrase: &str, created: Option<i64>) -> String {
        let uid = format!("{name} <{name}@example.org>");
        let faked = created.map(|t| format!("--faked-system-time={t}!"));
        let mut args: Vec<&str> = faked.iter().map(String::as_str).collect();
        args.extend([
            "--passphrase",
            passphrase,
            "--quick-gen-key",
            &uid,
            "futuredefault",
            "default",
            "never",
        ]);
        self.gpg(&args);
        let listing = self.gpg(&["--with-colons", "--list-keys", &uid]);
        listing
            .stdout_text()
            .lines()
            .find_map(|l| l.strip_prefix("fpr:::::::::"))
            .and_then(|rest| rest.split(':').next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no fingerprint for {uid}"))
    }

    /// Copies the public key `fpr` into `other`.
    pub fn export_public_to(&self, fpr: &str, other: &GpgHome) {
        let key = self.dir.join("export.pub");
        self.gpg(&["--output", path_str(&key), "--export", fpr]);
        other.gpg(&["--import", path_str(&key)]);
    }

    /// Environment for a program that should use this home, and `passphrase` if given.
    pub fn env(&self, passphrase: Option<&str>) -> Vec<(OsString, OsString)> {
        let mut env = vec![(os("GNUPGHOME"), os(&self.dir))];
        if let Some(p) = passphrase {
            env.push((os("PASSPHRASE"), os(p)));
        }
        env
    }

    /// `gpg --list-packets` of a file (symmetric passphrase given, so nested packets show).
    pub fn list_packets(&self, file: &Path, passphrase: &str) -> String {
        let mut cmd = Command::new("gpg");
        cmd.arg("--homedir")
            .arg(&self.dir)
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase"])
            .arg(passphrase)
            .arg("--list-packets")
            .arg(file);
        let r = run_with_timeout(cmd, Duration::from_secs(120));
        format!("{}{}", r.stdout_text(), r.stderr)
    }
}

impl Drop for GpgHome {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.dir)
            .args(["--kill", "gpg-agent"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Lab options for upstream duplicity using `home` and `passphrase` (symmetric passphrase, or
/// the secret key's), encrypting with `crypt_opts` (empty: symmetric, duplicity's default).
pub fn encrypted_lab(lab: Lab, home: &GpgHome, passphrase: &str, crypt_opts: &[&str]) -> Lab {
    let mut lab = lab
        .encryption(crypt_opts)
        .env("PASSPHRASE", passphrase)
        .env("GNUPGHOME", path_str(&home.dir));
    lab.dupmirror_env = home.env(Some(passphrase));
    lab
}
