//! What gpg reported on its status channel while decrypting one file, and the verdicts drawn
//! from it: why a decryption failed (one clear reason), and whether the file's signatures
//! satisfy `--sign-key`.
//!
//! The status lines are gpg's documented machine interface (GnuPG `doc/DETAILS`); duplicity
//! itself decides signatures on them (it requires a `GOODSIG` whose key ID ends with the sign
//! key). Keeping this apart from gpgme makes every verdict testable without gpg.

use super::{CryptoError, SignKey};

/// One signature, as gpg judged it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sig {
    pub state: SigState,
    /// The key ID gpg names first (`GOODSIG`, `BADSIG`, `ERRSIG`, ...).
    pub key_id: String,
    /// Fingerprints: the signing key's and its primary key's (`VALIDSIG`, `ERRSIG`).
    pub fingerprints: Vec<String>,
    /// When the signature was made (`VALIDSIG`, Unix seconds): signed, so unforgeable.
    pub created: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SigState {
    /// Announced (`NEWSIG`) but not judged yet.
    #[default]
    Pending,
    /// `GOODSIG`: made by that key over exactly this content.
    Good,
    /// `BADSIG`: the content was changed after signing.
    Bad,
    /// Valid once, but not now (`EXPSIG`, `EXPKEYSIG`, `REVKEYSIG`): the reason.
    Stale(&'static str),
    /// `ERRSIG`: could not be checked; the reason.
    Unchecked(String),
}

/// The status lines of one decryption that matter to dupmirror.
#[derive(Debug, Default)]
pub struct StatusLog {
    /// A symmetric passphrase was asked for (`NEED_PASSPHRASE_SYM`).
    pub symmetric: bool,
    /// The secret key whose passphrase was asked for (`USERID_HINT`: key ID and user ID).
    pub key_hint: Option<String>,
    /// Key IDs the message is encrypted to (`ENC_TO`; zeros for a hidden recipient).
    pub enc_to: Vec<String>,
    /// The integrity check failed (`BADMDC`).
    pub bad_mdc: bool,
    /// Not an OpenPGP message, or nothing in it (`NODATA`).
    pub no_data: bool,
    /// `ERROR` and `FAILURE` arguments, in order.
    pub errors: Vec<String>,
    pub sigs: Vec<Sig>,
}

/// The hidden-recipient key ID in `ENC_TO`.
const HIDDEN: &str = "0000000000000000";

impl StatusLog {
    pub fn record(&mut self, keyword: &str, args: &str) {
        let mut fields = args.split(' ');
        let first = fields.next().unwrap_or_default().to_string();
        match keyword {
            "NEED_PASSPHRASE_SYM" => self.symmetric = true,
            "USERID_HINT" => self.key_hint = Some(args.to_string()),
            "ENC_TO" => self.enc_to.push(first),
            "BADMDC" => self.bad_mdc = true,
            "NODATA" => self.no_data = true,
            "ERROR" | "FAILURE" => self.errors.push(args.to_string()),
            "NEWSIG" => self.sigs.push(Sig::default()),
            "GOODSIG" => self.judged(SigState::Good, first),
            "BADSIG" => self.judged(SigState::Bad, first),
            "EXPSIG" => self.judged(SigState::Stale("the signature has expired"), first),
            "EXPKEYSIG" => self.judged(SigState::Stale("the signing key has expired"), first),
            "REVKEYSIG" => self.judged(SigState::Stale("the signing key was revoked"), first),
            "ERRSIG" => {
                // ERRSIG <keyid> <pkalgo> <hashalgo> <class> <time> <rc> [<fpr>]
                let rest: Vec<&str> = fields.collect();
                let why = match rest.get(4).copied() {
                    Some("9") => "its public key is not in the keyring".to_string(),
                    Some("4") => "it uses an unsupported algorithm".to_string(),
                    Some(rc) => format!("gpg error code {rc}"),
                    None => "gpg could not check it".to_string(),
                };
                self.judged(SigState::Unchecked(why), first);
                if let (Some(fpr), Some(sig)) = (rest.get(5), self.sigs.last_mut()) {
                    sig.fingerprints.push(fpr.to_string());
                }
            }
            "VALIDSIG" => {
                // VALIDSIG <fpr> <date> <time> <expire> <version> <reserved> <pkalgo> <hashalgo>
                //          <class> [<primary-key-fpr>]
                if let Some(sig) = self.sigs.last_mut() {
                    sig.fingerprints.push(first);
                    sig.created = fields.nth(1).and_then(parse_sig_time);
                    if let Some(primary) = fields.nth(6) {
                        sig.fingerprints.push(primary.to_string());
                    }
                }
            }
            _ => {}
        }
    }

    fn judged(&mut self, state: SigState, key_id: String) {
        match self.sigs.last_mut() {
            Some(sig) if sig.state == SigState::Pending => {
                sig.state = state;
                sig.key_id = key_id;
            }
            _ => self.sigs.push(Sig {
                state,
                key_id,
                ..Sig::default()
            }),
        }
    }

    /// The one reason a decryption failed, from gpgme's error and what gpg said.
    pub fn failure(&self, err: gpgme::Error) -> CryptoError {
        let code = err.code();
        if code == gpgme::Error::NO_PASSPHRASE.code() {
            return CryptoError::NoPassphrase {
                what: self.passphrase_for(),
            };
        }
        if code == gpgme::Error::BAD_PASSPHRASE.code() {
            return CryptoError::WrongPassphrase {
                what: self.passphrase_for(),
            };
        }
        if code == gpgme::Error::NO_SECKEY.code() {
            let hidden = self.enc_to.iter().any(|k| k == HIDDEN);
            let named: Vec<String> = self
                .enc_to
                .iter()
                .filter(|k| *k != HIDDEN)
                .cloned()
                .collect();
            return CryptoError::NoSecretKey { named, hidden };
        }
        if self.bad_mdc {
            return CryptoError::Corrupt("the integrity check (MDC) failed".into());
        }
        if self.no_data || code == gpgme::Error::NO_DATA.code() {
            return CryptoError::Corrupt("it holds no OpenPGP data".into());
        }
        if let Some(e) = self
            .errors
            .iter()
            .find(|e| e.starts_with("nomdc_with_legacy_cipher"))
        {
            return CryptoError::Corrupt(format!("it has no integrity protection ({e})"));
        }
        if code == gpgme::Error::DECRYPT_FAILED.code()
            || code == gpgme::Error::BAD_DATA.code()
            || code == gpgme::Error::INV_PACKET.code()
        {
            return CryptoError::Corrupt(self.detail(err));
        }
        CryptoError::Gpg(self.detail(err))
    }

    fn passphrase_for(&self) -> String {
        match &self.key_hint {
            Some(hint) if !self.symmetric => format!("the secret key {hint}"),
            _ => "the symmetric encryption".to_string(),
        }
    }

    fn detail(&self, err: gpgme::Error) -> String {
        match self.errors.last() {
            Some(e) => format!("{err} ({e})"),
            None => err.to_string(),
        }
    }
}

/// What a file's signatures amount to, when acceptable.
#[derive(Debug, PartialEq, Eq)]
pub enum Signed {
    /// A good signature by this key (its primary fingerprint when gpg gave it).
    By(String),
    Unsigned,
    /// Signed, but no signature could be checked (unknown key, expired, ...).
    Unchecked,
}

/// Judges the signatures of a decrypted file. A bad signature always refuses the file (gpg
/// fails on it too); with `required`, only a good signature by that key is accepted.
pub fn judge(sigs: &[Sig], required: Option<&SignKey>) -> Result<Signed, CryptoError> {
    if let Some(bad) = sigs.iter().find(|s| s.state == SigState::Bad) {
        return Err(CryptoError::BadSignature {
            key: bad.key_id.clone(),
        });
    }
    let mut good = sigs.iter().filter(|s| s.state == SigState::Good);
    let Some(required) = required else {
        return Ok(match good.next() {
            Some(sig) => Signed::By(identity(sig)),
            None if sigs.is_empty() => Signed::Unsigned,
            None => Signed::Unchecked,
        });
    };
    if let Some(sig) = good.clone().find(|s| required.matches(s)) {
        return Ok(Signed::By(identity(sig)));
    }
    let signers: Vec<String> = good.map(identity).collect();
    if !signers.is_empty() {
        return Err(CryptoError::WrongSigner {
            signers: signers.join(", "),
            required: required.clone(),
        });
    }
    match sigs.first() {
        None => Err(CryptoError::Unsigned {
            required: required.clone(),
        }),
        Some(sig) => Err(CryptoError::Unverified {
            key: sig.key_id.clone(),
            why: match &sig.state {
                SigState::Stale(why) => why.to_string(),
                SigState::Unchecked(why) => why.clone(),
                _ => "gpg did not judge it".to_string(),
            },
            required: required.clone(),
        }),
    }
}

/// A signature time as gpg gives it: Unix seconds, or ISO 8601 (`20260102T030405`).
fn parse_sig_time(text: &str) -> Option<i64> {
    text.parse().ok().or_else(|| {
        chrono::NaiveDateTime::parse_from_str(text, "%Y%m%dT%H%M%S")
            .ok()
            .map(|t| t.and_utc().timestamp())
    })
}

/// How much earlier than the time in its name a file may have been signed: clocks get
/// stepped. duplicity names a set by the time its session started and signs the files
/// during the session, so a real file is signed at or after that time.
pub const SIGNED_BEFORE_NAME_SLACK: i64 = 3600;

/// Refuses a file whose good signature by `required` was made well before `named_time`,
/// the time its name gives: an older file renamed to pass for a newer one (signatures cover
/// the content, not the name, but they carry their own signed time).
pub fn check_signing_time(
    sigs: &[Sig],
    required: &SignKey,
    named_time: i64,
) -> Result<(), CryptoError> {
    let made = sigs
        .iter()
        .filter(|s| s.state == SigState::Good && required.matches(s))
        .filter_map(|s| s.created)
        .max();
    match made {
        Some(made) if made + SIGNED_BEFORE_NAME_SLACK < named_time => {
            Err(CryptoError::SignedBeforeItsName {
                signed: format_epoch(made),
                named: format_epoch(named_time),
            })
        }
        _ => Ok(()),
    }
}

fn format_epoch(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// The most stable name of a signature's key: its primary fingerprint, else what gpg gave.
fn identity(sig: &Sig) -> String {
    sig.fingerprints
        .last()
        .cloned()
        .unwrap_or_else(|| sig.key_id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A_FPR: &str = "2120C8A717A5B724B1D9612B467B698476BE0881";
    const B_FPR: &str = "9F760FB5B6E6A653C68D36D3571043CE278CE441";

    fn log(lines: &[(&str, &str)]) -> StatusLog {
        let mut log = StatusLog::default();
        for (k, a) in lines {
            log.record(k, a);
        }
        log
    }

    fn key(s: &str) -> SignKey {
        s.parse().unwrap()
    }

    fn signed_by_a() -> StatusLog {
        // As gpg 2.2.40 reported a symmetric file signed by key A.
        log(&[
            ("NEED_PASSPHRASE_SYM", "9 3 2"),
            ("BEGIN_DECRYPTION", ""),
            ("NEWSIG", "a@example.org"),
            ("GOODSIG", "467B698476BE0881 A <a@example.org>"),
            (
                "VALIDSIG",
                &format!("{A_FPR} 2026-11-26 1795722169 0 4 0 22 8 00 {A_FPR}"),
            ),
            ("DECRYPTION_OKAY", ""),
            ("GOODMDC", ""),
        ])
    }

    #[test]
    fn good_signature_matches_key_id_forms() {
        let log = signed_by_a();
        assert_eq!(log.sigs.len(), 1);
        for k in [A_FPR, "467B698476BE0881", "76BE0881", "0x76be0881"] {
            assert_eq!(
                judge(&log.sigs, Some(&key(k))).unwrap(),
                Signed::By(A_FPR.into()),
                "{k}"
            );
        }
        assert_eq!(judge(&log.sigs, None).unwrap(), Signed::By(A_FPR.into()));
    }

    #[test]
    fn signing_time_must_not_precede_the_name() {
        let log = signed_by_a();
        assert_eq!(log.sigs[0].created, Some(1795722169));
        let k = key(A_FPR);
        assert!(check_signing_time(&log.sigs, &k, 1795722169).is_ok());
        assert!(check_signing_time(&log.sigs, &k, 1795722169 + 3600).is_ok());
        let e = check_signing_time(&log.sigs, &k, 1795722169 + 3601).unwrap_err();
        assert!(matches!(e, CryptoError::SignedBeforeItsName { .. }), "{e}");
        assert!(e.to_string().contains("2026-11-26T"), "{e}");
        // Another key's signature does not count; a missing time cannot be judged.
        assert!(check_signing_time(&log.sigs, &key(&B_FPR[24..]), i64::MAX).is_ok());
        assert_eq!(parse_sig_time("20261126T164249"), Some(1795711369));
    }

    #[test]
    fn another_signer_is_refused() {
        let log = signed_by_a();
        let e = judge(&log.sigs, Some(&key(&B_FPR[24..]))).unwrap_err();
        assert!(matches!(e, CryptoError::WrongSigner { .. }), "{e}");
        assert!(e.to_string().contains(A_FPR), "{e}");
    }

    #[test]
    fn unsigned_is_refused_only_when_required() {
        let log = log(&[("NEED_PASSPHRASE_SYM", "9 3 2"), ("DECRYPTION_OKAY", "")]);
        assert_eq!(judge(&log.sigs, None).unwrap(), Signed::Unsigned);
        let e = judge(&log.sigs, Some(&key("76BE0881"))).unwrap_err();
        assert!(matches!(e, CryptoError::Unsigned { .. }), "{e}");
    }

    #[test]
    fn bad_signature_is_always_refused() {
        let log = log(&[
            ("NEWSIG", "b@example.org"),
            ("BADSIG", "571043CE278CE441 B <b@example.org>"),
        ]);
        for req in [None, Some(key("571043CE278CE441"))] {
            let e = judge(&log.sigs, req.as_ref()).unwrap_err();
            assert!(matches!(e, CryptoError::BadSignature { .. }), "{e}");
        }
    }

    #[test]
    fn unknown_signer_is_reported_and_refused_when_required() {
        let log = log(&[
            ("NEWSIG", "b@example.org"),
            (
                "ERRSIG",
                &format!("571043CE278CE441 22 8 00 1795722172 9 {B_FPR}"),
            ),
            ("NO_PUBKEY", "571043CE278CE441"),
        ]);
        assert_eq!(log.sigs[0].fingerprints, vec![B_FPR.to_string()]);
        assert_eq!(judge(&log.sigs, None).unwrap(), Signed::Unchecked);
        let e = judge(&log.sigs, Some(&key("571043CE278CE441"))).unwrap_err();
        assert!(e.to_string().contains("not in the keyring"), "{e}");
    }

    #[test]
    fn subkey_signature_matches_the_primary_key() {
        let sub = "0123456789ABCDEF0123456789ABCDEF01234567";
        let log = log(&[
            ("GOODSIG", "0123456789ABCDEF A"),
            (
                "VALIDSIG",
                &format!("{sub} 2026-11-26 1795722169 0 4 0 22 8 00 {A_FPR}"),
            ),
        ]);
        assert!(judge(&log.sigs, Some(&key("467B698476BE0881"))).is_ok());
        assert!(judge(&log.sigs, Some(&key("01234567"))).is_ok());
    }

    #[test]
    fn failures_get_one_reason() {
        let sym = log(&[
            ("NEED_PASSPHRASE_SYM", "9 3 2"),
            ("ERROR", "symkey_decrypt.maybe_error 11_BAD_PASSPHRASE"),
            ("DECRYPTION_FAILED", ""),
        ]);
        let e = sym.failure(gpgme::Error::BAD_PASSPHRASE);
        assert!(matches!(e, CryptoError::WrongPassphrase { .. }), "{e}");
        assert!(e.to_string().contains("symmetric"), "{e}");

        let key = log(&[
            ("ENC_TO", "9190B2D517A32687 18 0"),
            ("USERID_HINT", "9190B2D517A32687 A <a@example.org>"),
            ("NEED_PASSPHRASE", "9190B2D517A32687 467B698476BE0881 18 0"),
            ("ERROR", "pkdecrypt_failed 67108875"),
        ]);
        let e = key.failure(gpgme::Error::BAD_PASSPHRASE);
        assert!(e.to_string().contains("9190B2D517A32687"), "{e}");
        let e = key.failure(gpgme::Error::NO_PASSPHRASE);
        assert!(matches!(e, CryptoError::NoPassphrase { .. }), "{e}");

        let hidden = log(&[("ENC_TO", "0000000000000000 18 0"), ("NO_SECKEY", HIDDEN)]);
        let e = hidden.failure(gpgme::Error::NO_SECKEY);
        assert!(e.to_string().contains("hidden"), "{e}");

        let corrupt = log(&[("BADMDC", ""), ("DECRYPTION_FAILED", "")]);
        let e = corrupt.failure(gpgme::Error::DECRYPT_FAILED);
        assert!(matches!(e, CryptoError::Corrupt(_)), "{e}");
        let e = log(&[("NODATA", "1")]).failure(gpgme::Error::NO_DATA);
        assert!(matches!(e, CryptoError::Corrupt(_)), "{e}");
    }
}
