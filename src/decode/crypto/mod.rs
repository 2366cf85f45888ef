//! Decrypting duplicity's `.gpg` files through the user's own GnuPG (gpgme), as a stream.
//!
//! duplicity encrypts volumes, manifests and signature files with `gpg` (docs/format.md
//! §8): symmetrically with a passphrase, or to public keys (possibly hidden recipients),
//! optionally signed. dupmirror reads them the way duplicity does: the passphrase comes from
//! `PASSPHRASE` (or `--passphrase-file`) and is used both for symmetric files and to unlock a
//! secret key; keys come from the keyring in `GNUPGHOME` or the default home. gpg itself does
//! the cryptography, so every cipher, compression (ZIP, ZLIB, BZip2, none) and old format it
//! reads (CAST5, MDC-less data) is read here too.
//!
//! How one file is decrypted ([`GpgDecryptor::decrypt`]):
//! * a look at the packet headers decides whether gpg may ignore a missing MDC (only for data
//!   that has none; see `packets`);
//! * gpgme runs on a helper thread with loopback pinentry: the passphrase goes to gpg through
//!   gpgme's callback and pipe, never on a command line, never into a message; gpg-agent's
//!   cache of symmetric passphrases is switched off, so a wrong passphrase fails even right
//!   after a right one;
//! * the plaintext streams out in small chunks (`stream`), and the end of the stream carries
//!   the verdict: wrong passphrase, missing secret key, corrupt data, or a signature that
//!   `--sign-key` does not accept all surface as an error from the final read (`status`).
//!   With `--sign-key`, a signature made more than an hour before the time in the file's
//!   name is refused too: signatures do not cover names, but they carry a signed time, so an
//!   old set renamed to pass for a new one (a rollback) shows.
//!
//! Callers apply nothing from a file before reading it to its end, so no plaintext of a file
//! that fails is ever committed. The SHA1 of a volume is checked by `volume` on the stored
//! (encrypted) bytes, below this layer.

mod packets;
mod status;
mod stream;

use anyhow::{Context as _, Result};
use gpgme::{Context, Data, PassphraseRequest, PinentryMode, Protocol};
use serde::Serialize;
use std::collections::BTreeSet;
use std::ffi::CStr;
use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use packets::Protection;

/// Why a file could not be decrypted or was refused. Each message is one line and never
/// contains the passphrase.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("a passphrase is needed for {what}: set PASSPHRASE or pass --passphrase-file")]
    NoPassphrase { what: String },

    #[error("wrong passphrase for {what}")]
    WrongPassphrase { what: String },

    #[error("{}", no_secret_key(named, *hidden))]
    NoSecretKey { named: Vec<String>, hidden: bool },

    #[error("corrupt ciphertext: {0}")]
    Corrupt(String),

    #[error("bad signature by key {key}: the file was changed after it was signed")]
    BadSignature { key: String },

    #[error("not signed; --sign-key {required} requires a good signature by that key")]
    Unsigned { required: SignKey },

    #[error("signed by {signers}, not by --sign-key {required}")]
    WrongSigner { signers: String, required: SignKey },

    #[error(
        "the signature by key {key} cannot be verified ({why}); --sign-key {required} requires \
         a good signature by that key"
    )]
    Unverified {
        key: String,
        why: String,
        required: SignKey,
    },

    #[error(
        "signed at {signed}, before {named}, the time its name gives: an older file renamed to \
         pass for a newer one"
    )]
    SignedBeforeItsName { signed: String, named: String },

    #[error("not encrypted, so it carries no signature; --sign-key {required} requires one")]
    Unencrypted { required: SignKey },

    #[error("reading the encrypted file failed: {0}")]
    Read(String),

    #[error("gpg failed: {0}")]
    Gpg(String),
}

fn no_secret_key(named: &[String], hidden: bool) -> String {
    let keyring = "the keyring (GNUPGHOME or ~/.gnupg)";
    match (named.is_empty(), hidden) {
        (true, true) => {
            format!("missing secret key: encrypted to a hidden recipient, and no secret key in {keyring} opens it")
        }
        (false, _) => format!(
            "missing secret key: encrypted to key {}, whose secret key is not in {keyring}",
            named.join(", ")
        ),
        (true, false) => format!("missing secret key: no secret key in {keyring} opens it"),
    }
}

/// A gpg passphrase. Its bytes are never shown (`Debug` prints only where it came from) and
/// are wiped when dropped.
pub struct Passphrase {
    bytes: Vec<u8>,
    origin: String,
}

impl Passphrase {
    /// `PASSPHRASE` from the environment, as duplicity reads it; `None` when unset.
    pub fn from_env() -> Option<Passphrase> {
        std::env::var_os("PASSPHRASE").map(|v| Passphrase {
            bytes: std::os::unix::ffi::OsStringExt::into_vec(v),
            origin: "PASSPHRASE".into(),
        })
    }

    /// The systemd credential `dupmirror-passphrase` (`LoadCredential=` in the shipped
    /// units), unless it is missing or its first line is empty (the units' default).
    pub fn from_systemd_credential() -> Result<Option<Passphrase>> {
        let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
            return Ok(None);
        };
        let path = Path::new(&dir).join("dupmirror-passphrase");
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some(Passphrase::from_file(&path)?).filter(|p| !p.bytes.is_empty()))
    }

    /// The first line of `path` (without its line end), as gpg's `--passphrase-file` reads it.
    pub fn from_file(path: &Path) -> Result<Passphrase> {
        let mut bytes = std::fs::read(path)
            .with_context(|| format!("cannot read the passphrase file {}", path.display()))?;
        let end = bytes
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(bytes.len());
        let end = if end > 0 && bytes[end - 1] == b'\r' {
            end - 1
        } else {
            end
        };
        wipe(&mut bytes[end..]);
        bytes.truncate(end);
        Ok(Passphrase {
            bytes,
            origin: format!("--passphrase-file {}", path.display()),
        })
    }
}

fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // Volatile, so the compiler cannot drop the writes to memory about to be freed.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

impl Drop for Passphrase {
    fn drop(&mut self) {
        wipe(&mut self.bytes);
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Passphrase(from {})", self.origin)
    }
}

/// The key `--sign-key` names: a key ID (8 or 16 hex digits) or a fingerprint (40 or 64), in
/// upper case without `0x`. A signature matches when the fingerprint or key ID of its key, or
/// of its primary key, ends with these digits (duplicity compares key ID suffixes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignKey(String);

impl FromStr for SignKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let hex: String = s.trim().chars().filter(|c| *c != ' ').collect();
        let hex = hex
            .strip_prefix("0x")
            .or_else(|| hex.strip_prefix("0X"))
            .unwrap_or(&hex);
        let ok =
            matches!(hex.len(), 8 | 16 | 40 | 64) && hex.chars().all(|c| c.is_ascii_hexdigit());
        if !ok {
            return Err(format!(
                "{s:?} is not a key ID: give 8 or 16 hex digits, or a fingerprint"
            ));
        }
        Ok(SignKey(hex.to_ascii_uppercase()))
    }
}

impl fmt::Display for SignKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl SignKey {
    fn matches(&self, sig: &status::Sig) -> bool {
        std::iter::once(&sig.key_id)
            .chain(&sig.fingerprints)
            .any(|id| id.to_ascii_uppercase().ends_with(&self.0))
    }
}

/// Turns an encrypted stream into its plaintext stream.
pub trait Decryptor: Send + Sync {
    /// The plaintext of `input`. Its final read fails if the file does not decrypt or does
    /// not pass the signature policy, so the plaintext counts only once read to the end.
    /// `named_time` is the time the file's name gives (a required signature made well
    /// before it is refused, see `status::check_signing_time`).
    fn decrypt(
        &self,
        input: Box<dyn Read + Send>,
        named_time: Option<i64>,
    ) -> Result<Box<dyn Read + Send>>;
    /// Called for each file that is not encrypted: an error refuses it (when signatures are
    /// required, such a file cannot carry one).
    fn check_unencrypted(&self) -> Result<()>;
    /// What the signatures of the files decrypted so far said.
    fn gpg_signatures(&self) -> GpgSignatureTally;
}

/// What the signatures of the encrypted files read so far said (for the sync report).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GpgSignatureTally {
    /// Encrypted files decrypted.
    pub encrypted_files: u64,
    /// Files with a good signature.
    pub signed: u64,
    pub unsigned: u64,
    /// Signed, but no signature could be checked (key not in the keyring, expired, ...).
    pub unchecked: u64,
    /// Primary fingerprints (or key IDs) of the keys that made the good signatures.
    pub signers: BTreeSet<String>,
}

/// Decrypts with gpgme; see the module documentation.
pub struct GpgDecryptor {
    passphrase: Option<Arc<Passphrase>>,
    sign_key: Option<SignKey>,
    tally: Arc<Mutex<GpgSignatureTally>>,
}

impl GpgDecryptor {
    /// `passphrase` serves symmetric files and secret keys; with `sign_key`, every file must
    /// be encrypted and carry a good signature by that key.
    pub fn new(passphrase: Option<Passphrase>, sign_key: Option<SignKey>) -> Self {
        GpgDecryptor {
            passphrase: passphrase.map(Arc::new),
            sign_key,
            tally: Arc::default(),
        }
    }
}

impl Decryptor for GpgDecryptor {
    fn decrypt(
        &self,
        input: Box<dyn Read + Send>,
        named_time: Option<i64>,
    ) -> Result<Box<dyn Read + Send>> {
        let (input, protection) =
            packets::peek(input).map_err(|e| CryptoError::Read(e.to_string()))?;
        let job = Job {
            passphrase: self.passphrase.clone(),
            sign_key: self.sign_key.clone(),
            tally: Arc::clone(&self.tally),
            protection,
            named_time,
        };
        let plain = stream::spawn("gpg-decrypt", move |out| job.run(input, out))
            .context("cannot start a decryption thread")?;
        Ok(Box::new(plain))
    }

    fn check_unencrypted(&self) -> Result<()> {
        match &self.sign_key {
            Some(required) => Err(CryptoError::Unencrypted {
                required: required.clone(),
            }
            .into()),
            None => Ok(()),
        }
    }

    fn gpg_signatures(&self) -> GpgSignatureTally {
        lock(&self.tally).clone()
    }
}

/// A mutex's data even if a thread panicked while holding it (the data stays consistent:
/// every update here is a single assignment or increment).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One file's decryption, run on the helper thread.
struct Job {
    passphrase: Option<Arc<Passphrase>>,
    sign_key: Option<SignKey>,
    tally: Arc<Mutex<GpgSignatureTally>>,
    protection: Protection,
    /// The time the file's name gives.
    named_time: Option<i64>,
}

/// The encrypted input; remembers a read error, which explains a failure better than what gpg
/// makes of the truncated stream.
struct WatchedInput {
    inner: Box<dyn Read + Send>,
    error: Arc<Mutex<Option<String>>>,
}

impl Read for WatchedInput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            lock(&self.error).get_or_insert_with(|| e.to_string());
        })
    }
}

impl Job {
    fn run(
        self,
        input: Box<dyn Read + Send>,
        out: stream::ChunkWriter<CryptoError>,
    ) -> Result<(), CryptoError> {
        let read_error = Arc::new(Mutex::new(None));
        let input = WatchedInput {
            inner: input,
            error: Arc::clone(&read_error),
        };
        let mut ctx = self.context()?;
        let log = Mutex::new(status::StatusLog::default());
        let passphrase = self.passphrase.as_deref();
        let provider = |req: PassphraseRequest<'_>, w: &mut dyn Write| -> gpgme::Result<()> {
            if req.prev_attempt_failed {
                // Stop gpg from asking again with the same wrong passphrase.
                return Err(gpgme::Error::BAD_PASSPHRASE);
            }
            match passphrase {
                Some(p) => w.write_all(&p.bytes).map_err(gpgme::Error::from),
                None => Err(gpgme::Error::NO_PASSPHRASE),
            }
        };
        // gpgme 0.11 calls the status handler with (arguments, keyword), in that order.
        let handler = |args: Option<&CStr>, keyword: Option<&CStr>| -> gpgme::Result<()> {
            let text = |s: Option<&CStr>| s.map(|s| s.to_string_lossy().into_owned());
            if let Some(keyword) = text(keyword) {
                lock(&log).record(&keyword, &text(args).unwrap_or_default());
            }
            Ok(())
        };
        let mut cipher = Data::from_reader(input).map_err(|e| gpg_error(e.error()))?;
        let mut plain = Data::from_writer(out).map_err(|e| gpg_error(e.error()))?;
        let result = ctx.with_passphrase_provider(provider, |ctx| {
            ctx.with_status_handler(handler, |ctx| {
                ctx.decrypt_and_verify(&mut cipher, &mut plain)
            })
        });
        // Hand over the plaintext's tail, and release the input (its hash gets reported).
        drop(plain);
        drop(cipher);
        let log = log.into_inner().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = result {
            if let Some(read) = lock(&read_error).take() {
                return Err(CryptoError::Read(read));
            }
            return Err(log.failure(e));
        }
        let signed = status::judge(&log.sigs, self.sign_key.as_ref());
        if let (Ok(_), Some(required), Some(named)) = (&signed, &self.sign_key, self.named_time) {
            status::check_signing_time(&log.sigs, required, named)?;
        }
        let mut tally = lock(&self.tally);
        tally.encrypted_files += 1;
        match signed? {
            status::Signed::By(key) => {
                tally.signed += 1;
                tally.signers.insert(key);
            }
            status::Signed::Unsigned => tally.unsigned += 1,
            status::Signed::Unchecked => tally.unchecked += 1,
        }
        Ok(())
    }

    fn context(&self) -> Result<Context, CryptoError> {
        let mut ctx = Context::from_protocol(Protocol::OpenPgp).map_err(gpg_error)?;
        ctx.set_pinentry_mode(PinentryMode::Loopback)
            .map_err(gpg_error)?;
        // All status lines reach the handler (gpgme ≥ 1.11).
        ctx.set_flag("full-status", "1").map_err(gpg_error)?;
        // gpg-agent must not answer a symmetric passphrase from its cache (gpg ≥ 2.2.7).
        ctx.set_flag("no-symkey-cache", "1").map_err(gpg_error)?;
        if self.protection == Protection::Unprotected {
            ctx.set_flag("ignore-mdc-error", "1").map_err(gpg_error)?;
        }
        Ok(ctx)
    }
}

fn gpg_error(e: gpgme::Error) -> CryptoError {
    if e.code() == gpgme::Error::INV_ENGINE.code() || e.code() == gpgme::Error::ENOENT.code() {
        return CryptoError::Gpg(format!(
            "{e}: is GnuPG (gpg) installed? dupmirror decrypts through it"
        ));
    }
    CryptoError::Gpg(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_key_forms() {
        let k: SignKey = "0x76be0881".parse().unwrap();
        assert_eq!(k.to_string(), "76BE0881");
        let k: SignKey = "2120 C8A7 17A5 B724 B1D9  612B 467B 6984 76BE 0881"
            .parse()
            .unwrap();
        assert_eq!(k.to_string(), "2120C8A717A5B724B1D9612B467B698476BE0881");
        for bad in ["", "alice@example.org", "76BE088", "76BE0881X", "0x"] {
            assert!(bad.parse::<SignKey>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passphrase_file_takes_the_first_line_and_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        for (content, expected) in [
            (&b"s3cret\n"[..], &b"s3cret"[..]),
            (b"s3cret\r\nsecond line\n", b"s3cret"),
            (b"no newline", b"no newline"),
            (b"\n", b""),
        ] {
            let p = dir.path().join("pass");
            std::fs::write(&p, content).unwrap();
            let pass = Passphrase::from_file(&p).unwrap();
            assert_eq!(pass.bytes, expected);
            let shown = format!("{pass:?}");
            assert!(shown.contains("--passphrase-file"), "{shown}");
            assert!(
                !shown.contains("s3cret") && !shown.contains("newline"),
                "{shown}"
            );
        }
        let e = Passphrase::from_file(&dir.path().join("missing")).unwrap_err();
        assert!(format!("{e:#}").contains("passphrase file"), "{e:#}");
    }

    #[test]
    fn unencrypted_files_are_refused_only_with_sign_key() {
        assert!(GpgDecryptor::new(None, None).check_unencrypted().is_ok());
        let d = GpgDecryptor::new(None, Some("76BE0881".parse().unwrap()));
        let e = d.check_unencrypted().unwrap_err();
        assert!(e.to_string().contains("not encrypted"), "{e}");
    }
}
