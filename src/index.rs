//! Paths inside a backup, as duplicity sees them.
//!
//! Duplicity names every object by its *index*: the tuple of raw byte components below the
//! backup root, the root itself being the empty tuple. Order matters: volumes, signature tars
//! and merges across sets are all sorted by comparing indexes component by component,
//! bytewise (docs/format.md §5.5), which is not the order of the joined path strings
//! (`a/x` < `a-b` as indexes). `Vec<Vec<u8>>`'s derived order is exactly that order.
//!
//! The module also holds the manifest quoting (docs/format.md §4.2), which dupmirror reuses
//! wherever it writes raw path bytes into a line-oriented file of its own (the journal).

use std::fmt;

/// A path inside the backup: raw byte components, root = no components.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PathIndex(Vec<Vec<u8>>);

impl PathIndex {
    pub fn root() -> Self {
        PathIndex(Vec::new())
    }

    /// Splits `a/b/c` into components. The root spellings `.`, `./` and the empty string give
    /// the root; empty components and `.` components (from doubled or trailing slashes) are
    /// dropped. `..` is kept so that callers can refuse it (see [`PathIndex::check_safe`]).
    pub fn from_bytes(path: &[u8]) -> Self {
        PathIndex(
            path.split(|&b| b == b'/')
                .filter(|c| !c.is_empty() && *c != b".")
                .map(|c| c.to_vec())
                .collect(),
        )
    }

    pub fn components(&self) -> &[Vec<u8>] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn parent(&self) -> Option<PathIndex> {
        if self.0.is_empty() {
            None
        } else {
            Some(PathIndex(self.0[..self.0.len() - 1].to_vec()))
        }
    }

    pub fn join(&self, component: &[u8]) -> PathIndex {
        let mut v = self.0.clone();
        v.push(component.to_vec());
        PathIndex(v)
    }

    /// True when `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &PathIndex) -> bool {
        self.0.len() >= other.0.len() && self.0[..other.0.len()] == other.0[..]
    }

    /// The first `n` components (all of them when `n` is larger).
    pub fn truncated(&self, n: usize) -> PathIndex {
        PathIndex(self.0[..n.min(self.0.len())].to_vec())
    }

    /// Refuses components that could leave the tree: `..`, and NUL bytes (which no file
    /// system name can hold and which would cut the path short in a C call).
    pub fn check_safe(&self) -> Result<(), String> {
        for c in &self.0 {
            if c == b".." {
                return Err("it has a '..' component".into());
            }
            if c.contains(&0) {
                return Err("it contains a NUL byte".into());
            }
        }
        Ok(())
    }

    /// The path joined with `/`, root as `.`.
    pub fn to_bytes(&self) -> Vec<u8> {
        if self.0.is_empty() {
            return b".".to_vec();
        }
        self.0.join(&b'/')
    }

    /// The relative file system path (root = empty path).
    pub fn to_path(&self) -> std::path::PathBuf {
        use std::os::unix::ffi::OsStrExt;
        let mut p = std::path::PathBuf::new();
        for c in &self.0 {
            p.push(std::ffi::OsStr::from_bytes(c));
        }
        p
    }
}

impl fmt::Display for PathIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(&self.to_bytes()))
    }
}

impl fmt::Debug for PathIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.to_bytes()))
    }
}

fn needs_quoting(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | b'\\' | b'"' | b'\''
    )
}

/// Duplicity's manifest quoting: when the bytes contain whitespace, a backslash or a quote,
/// each such byte becomes `\xNN` and the whole string is put in double quotes.
pub fn quote(s: &[u8]) -> Vec<u8> {
    if !s.iter().any(|&b| needs_quoting(b)) {
        return s.to_vec();
    }
    let mut out = Vec::with_capacity(s.len() + 8);
    out.push(b'"');
    for &b in s {
        if needs_quoting(b) {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out.push(b'"');
    out
}

/// The inverse of [`quote`]; only strings starting with `"` are decoded, as upstream does.
/// A malformed escape is an error rather than a guess.
pub fn unquote(s: &[u8]) -> Result<Vec<u8>, String> {
    if s.first() != Some(&b'"') {
        return Ok(s.to_vec());
    }
    if s.len() < 2 || s.last() != Some(&b'"') {
        return Err(format!(
            "unterminated quoted string {:?}",
            String::from_utf8_lossy(s)
        ));
    }
    let inner = &s[1..s.len() - 1];
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        if inner[i] == b'\\' {
            let hex = inner
                .get(i + 1..i + 4)
                .filter(|h| h[0] == b'x')
                .and_then(|h| std::str::from_utf8(&h[1..]).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad escape in {:?}", String::from_utf8_lossy(s)))?;
            out.push(hex);
            i += 4;
        } else {
            out.push(inner[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_order_is_componentwise() {
        let a = PathIndex::from_bytes(b"a/x");
        let b = PathIndex::from_bytes(b"a-b");
        assert!(a < b, "tuple order puts a/x before a-b");
        assert!(PathIndex::root() < a);
    }

    #[test]
    fn root_spellings() {
        for s in [&b"."[..], b"./", b"", b"/"] {
            assert!(PathIndex::from_bytes(s).is_root(), "{s:?}");
        }
        assert_eq!(PathIndex::from_bytes(b"a/b/").components().len(), 2);
    }

    #[test]
    fn unsafe_components() {
        assert!(PathIndex::from_bytes(b"a/../b").check_safe().is_err());
        assert!(PathIndex::from_bytes(b"a/b\0c").check_safe().is_err());
        assert!(PathIndex::from_bytes(b"a/..b").check_safe().is_ok());
    }

    #[test]
    fn quoting_round_trip() {
        let awkward = b"quote\"and'back\\slash with space\t\xff";
        let q = quote(awkward);
        assert_eq!(
            q,
            b"\"quote\\x22and\\x27back\\x5cslash\\x20with\\x20space\\x09\xff\"".to_vec()
        );
        assert_eq!(unquote(&q).unwrap(), awkward.to_vec());
        assert_eq!(quote(b"plain/name"), b"plain/name".to_vec());
        assert_eq!(unquote(b"'single'").unwrap(), b"'single'".to_vec());
        assert!(unquote(b"\"bad\\xZZ\"").is_err());
        assert!(unquote(b"\"open").is_err());
    }
}
