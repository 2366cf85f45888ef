//! A look at the first OpenPGP packet headers of an encrypted file, to learn whether its data
//! is integrity protected, before handing the stream to gpg.
//!
//! Why: duplicity decrypts with `--ignore-mdc-error` so that very old repositories, written
//! before duplicity forced MDC (2007), stay readable. Passing that flag for every file would
//! also let a damaged modern file (which has an MDC) decrypt "successfully" into wrong bytes:
//! gpg then only warns. So dupmirror asks gpg to ignore MDC errors only for a message whose
//! encrypted data packet is the old, unprotected kind (tag 9), where there is nothing to check.
//!
//! Only headers are parsed (RFC 4880 §4.2): the session key packets that come first (PKESK,
//! SKESK, marker) are skipped by their lengths, and the tag of the next packet decides. The
//! bytes looked at are put back in front of the stream, so gpg (and the hash of the stored
//! file, computed below this layer) sees the file unchanged.

use std::io::{self, Cursor, Read};

/// How the message's encrypted data is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    /// Symmetrically encrypted integrity protected data (tag 18): gpg checks the MDC.
    Mdc,
    /// AEAD encrypted data (tag 20, or SEIPD v2): authenticated by the cipher mode.
    Aead,
    /// Symmetrically encrypted data without MDC (tag 9): nothing to check.
    Unprotected,
    /// Not recognised (not OpenPGP, truncated, unusual layout): gpg decides.
    Unknown,
}

const TAG_PKESK: u8 = 1;
const TAG_SKESK: u8 = 3;
const TAG_SED: u8 = 9;
const TAG_MARKER: u8 = 10;
const TAG_SEIPD: u8 = 18;
const TAG_AEAD: u8 = 20;

/// Session key packets are small; a message with more header bytes than this is left to gpg.
const MAX_PEEK: usize = 256 * 1024;

/// Reads the packet headers at the start of `input`; returns a stream that yields every byte
/// of `input` (the ones read here first) and what protects the encrypted data.
pub fn peek(mut input: Box<dyn Read + Send>) -> io::Result<(Box<dyn Read + Send>, Protection)> {
    let mut seen = Vec::new();
    let protection = classify(&mut input, &mut seen)?;
    Ok((Box::new(Cursor::new(seen).chain(input)), protection))
}

/// Reads from `input` into `seen` until the encrypted data packet's tag is known.
fn classify(input: &mut dyn Read, seen: &mut Vec<u8>) -> io::Result<Protection> {
    loop {
        let Some(header) = read_header(input, seen)? else {
            return Ok(Protection::Unknown);
        };
        match (header.tag, header.len) {
            (TAG_SED, _) => return Ok(Protection::Unprotected),
            (TAG_SEIPD, _) => {
                // Version 2 SEIPD (RFC 9580) is AEAD; version 1 carries an MDC.
                return Ok(match take(input, seen, 1)? {
                    Some(2) => Protection::Aead,
                    Some(1) => Protection::Mdc,
                    _ => Protection::Unknown,
                });
            }
            (TAG_AEAD, _) => return Ok(Protection::Aead),
            (TAG_PKESK | TAG_SKESK | TAG_MARKER, Some(len)) => {
                if seen.len() + len > MAX_PEEK || skip(input, seen, len)? < len {
                    return Ok(Protection::Unknown);
                }
            }
            _ => return Ok(Protection::Unknown),
        }
    }
}

struct Header {
    tag: u8,
    /// Body length; `None` for partial or indeterminate lengths.
    len: Option<usize>,
}

fn read_header(input: &mut dyn Read, seen: &mut Vec<u8>) -> io::Result<Option<Header>> {
    let Some(ctb) = take(input, seen, 1)? else {
        return Ok(None);
    };
    let ctb = ctb as u8;
    if ctb & 0x80 == 0 {
        return Ok(None);
    }
    if ctb & 0x40 != 0 {
        // New format: tag in the low six bits, then a variable length.
        let tag = ctb & 0x3f;
        let Some(first) = take(input, seen, 1)? else {
            return Ok(None);
        };
        let len = match first {
            0..=191 => Some(first as usize),
            192..=223 => take(input, seen, 1)?
                .map(|second| ((first as usize - 192) << 8) + second as usize + 192),
            255 => take(input, seen, 4)?.map(|n| n as usize),
            _ => None, // partial body length
        };
        return Ok(Some(Header { tag, len }));
    }
    // Old format: tag in bits 5..2, length size in bits 1..0.
    let tag = (ctb >> 2) & 0x0f;
    let len = match ctb & 3 {
        0 => take(input, seen, 1)?.map(|n| n as usize),
        1 => take(input, seen, 2)?.map(|n| n as usize),
        2 => take(input, seen, 4)?.map(|n| n as usize),
        _ => None, // indeterminate
    };
    Ok(Some(Header { tag, len }))
}

/// Reads an `n`-byte big-endian number (n ≤ 4); `None` at end of input.
fn take(input: &mut dyn Read, seen: &mut Vec<u8>, n: usize) -> io::Result<Option<u32>> {
    let start = seen.len();
    if skip(input, seen, n)? < n {
        return Ok(None);
    }
    Ok(Some(
        seen[start..]
            .iter()
            .fold(0u32, |acc, &b| (acc << 8) | b as u32),
    ))
}

/// Appends up to `n` bytes of `input` to `seen`; returns how many there were.
fn skip(input: &mut dyn Read, seen: &mut Vec<u8>, n: usize) -> io::Result<usize> {
    let got = input.take(n as u64).read_to_end(seen)?;
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify_bytes(bytes: &[u8]) -> (Protection, Vec<u8>) {
        let (mut r, p) = peek(Box::new(Cursor::new(bytes.to_vec()))).unwrap();
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        (p, all)
    }

    #[test]
    fn symmetric_with_mdc_new_format() {
        // SKESK (old-format ctb 0x8c, 13 bytes) then SEIPD v1 (new-format, partial length).
        let mut m = vec![0x8c, 13];
        m.extend([4, 9, 3, 2, 1, 2, 3, 4, 5, 6, 7, 8, 0xff]);
        m.extend([0xd2, 0xe0, 1, 0xaa, 0xbb]);
        let (p, all) = classify_bytes(&m);
        assert_eq!(p, Protection::Mdc);
        assert_eq!(all, m, "every byte comes back, in order");
    }

    #[test]
    fn unprotected_data_is_recognised() {
        let mut m = vec![0x8c, 13];
        m.extend([4, 2, 3, 2, 1, 2, 3, 4, 5, 6, 7, 8, 0xff]);
        m.extend([0xc9, 37]);
        m.extend([0u8; 37]);
        assert_eq!(classify_bytes(&m).0, Protection::Unprotected);
        // Old-format tag 9 with a two-byte length.
        let m = [0xa5, 0, 3, 1, 2, 3];
        assert_eq!(classify_bytes(&m).0, Protection::Unprotected);
    }

    #[test]
    fn public_key_packets_are_skipped() {
        // Two PKESKs (new format, two-octet lengths of 200 bytes), then SEIPD v1.
        let mut m = Vec::new();
        for _ in 0..2 {
            m.extend([0xc1, 192, 8]);
            m.extend([7u8; 200]);
        }
        m.extend([0xd2, 5, 1, 0, 0, 0, 0]);
        let (p, all) = classify_bytes(&m);
        assert_eq!(p, Protection::Mdc);
        assert_eq!(all, m);
    }

    #[test]
    fn aead_forms() {
        assert_eq!(classify_bytes(&[0xd4, 3, 1, 9, 2]).0, Protection::Aead);
        assert_eq!(classify_bytes(&[0xd2, 3, 2, 9, 2]).0, Protection::Aead);
    }

    #[test]
    fn anything_else_is_left_to_gpg() {
        for m in [
            &b""[..],
            b"not openpgp at all",
            &[0x8c],             // truncated header
            &[0x8c, 13, 4, 9],   // truncated SKESK body
            &[0xcb, 3, 1, 2, 3], // literal data first: not encrypted
            &[0xc3, 0xe0, 1],    // SKESK with a partial length: malformed
        ] {
            let (p, all) = classify_bytes(m);
            assert_eq!(p, Protection::Unknown, "{m:?}");
            assert_eq!(all, m);
        }
    }
}
