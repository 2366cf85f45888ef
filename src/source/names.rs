//! The one check every repository file name passes before anything uses it.
//!
//! A listing comes from a server or a folder dupmirror does not trust, and a name from it
//! ends up joined to a local folder (the download cache) and matched as a duplicity name.
//! So a name is used only when it is a plain file name: not empty, not `.` or `..`, no `/`,
//! no NUL or other control character, at most [`MAX_NAME_BYTES`] bytes.
//!
//! What happens to a name that fails is the listing's business ([`super::checked`]): a `/`,
//! NUL, `.` or `..` cannot be the name of a file in any real folder, so a listing holding
//! one is refused as hostile; a name that is merely odd (too long, control characters)
//! cannot be a duplicity file either, and is skipped like any other stranger.

use std::fmt;

/// The longest name accepted: the limit of Linux file systems, far above duplicity's own
/// names (about 80 bytes plus any `--file-prefix`).
pub const MAX_NAME_BYTES: usize = 255;

/// Why a name is not a plain file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameFault {
    Empty,
    DotOrDotDot,
    Slash,
    Nul,
    Control,
    TooLong,
}

impl NameFault {
    /// Whether no real folder can hold a file of this name: a listing that has one is
    /// forged (a traversal attempt), not merely untidy.
    pub fn is_hostile(self) -> bool {
        matches!(
            self,
            NameFault::Empty | NameFault::DotOrDotDot | NameFault::Slash | NameFault::Nul
        )
    }
}

impl fmt::Display for NameFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameFault::Empty => "it is empty",
            NameFault::DotOrDotDot => "it is . or ..",
            NameFault::Slash => "it contains /",
            NameFault::Nul => "it contains a NUL byte",
            NameFault::Control => "it contains control characters",
            NameFault::TooLong => "it is longer than 255 bytes",
        })
    }
}

/// Checks that `name` is a plain file name (see the module comment).
pub fn check(name: &str) -> Result<(), NameFault> {
    if name.is_empty() {
        return Err(NameFault::Empty);
    }
    if name == "." || name == ".." {
        return Err(NameFault::DotOrDotDot);
    }
    if name.contains('/') {
        return Err(NameFault::Slash);
    }
    if name.contains('\0') {
        return Err(NameFault::Nul);
    }
    if name.chars().any(char::is_control) {
        return Err(NameFault::Control);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameFault::TooLong);
    }
    Ok(())
}

/// `name` as it may be shown in one line of an error: escaped and cut short, since it is
/// the very thing that failed the check.
pub fn shown(name: &str) -> String {
    let escaped = name.escape_debug().to_string();
    match escaped.char_indices().nth(80) {
        Some((cut, _)) => format!("\"{}...\"", &escaped[..cut]),
        None => format!("\"{escaped}\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass() {
        for name in [
            "duplicity-full.20261126T164229Z.vol1.difftar.gz",
            "df.tp4bup.1.dt.z",
            "a b.manifest",
            "...",
            ".hidden",
            "x".repeat(255).as_str(),
        ] {
            assert_eq!(check(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn unsafe_names_fail() {
        let long = "x".repeat(256);
        for (name, fault) in [
            ("", NameFault::Empty),
            (".", NameFault::DotOrDotDot),
            ("..", NameFault::DotOrDotDot),
            (
                "../../x/duplicity-full.20261126T164229Z.vol1.difftar.gz",
                NameFault::Slash,
            ),
            ("/etc/passwd", NameFault::Slash),
            ("a\0b", NameFault::Nul),
            ("a\nb", NameFault::Control),
            ("a\u{1b}[2Jb", NameFault::Control),
            ("a\u{85}b", NameFault::Control),
            (long.as_str(), NameFault::TooLong),
        ] {
            assert_eq!(check(name), Err(fault), "{name:?}");
        }
        assert!(NameFault::Slash.is_hostile() && !NameFault::TooLong.is_hostile());
    }

    #[test]
    fn shown_names_are_one_short_line() {
        assert_eq!(shown("a\nb"), "\"a\\nb\"");
        let s = shown(&"y".repeat(500));
        assert!(s.len() < 100 && s.ends_with("...\""), "{s}");
    }
}
