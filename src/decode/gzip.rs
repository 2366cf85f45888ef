//! Inflating a gzip file with ISA-L (Intel's Intelligent Storage Acceleration Library,
//! `libisal`), the part of a bootstrap that costs the most CPU.
//!
//! Inflating was 40% of a bootstrap's CPU time with zlib-rs; ISA-L's inflate, which decodes
//! several Huffman symbols per table lookup, takes about a third less time for the same
//! volumes (docs/design.md §10.3). The library is reached through four small
//! C functions (`isal_gzip.c`, built by build.rs), so that no Rust code depends on the
//! layout of its decoder state, which changes between ISA-L releases.
//!
//! [`GzipReader`] reads the stored bytes into a buffer of its own and inflates from it
//! straight into the caller's buffer. Each member's header is parsed and its CRC-32 and
//! length are checked by ISA-L at the member's end; like `gzip -d`, a file may hold several
//! members one after the other, and anything after the last one that is not a gzip member
//! is an error. A file that ends inside a member is [`io::ErrorKind::UnexpectedEof`], bad
//! data [`io::ErrorKind::InvalidData`] with ISA-L's reason.

use std::io::{self, Read};
use std::ptr::NonNull;

/// ISA-L's `struct inflate_state`, only ever behind a pointer from `dupmirror_gzip_new`.
#[repr(C)]
struct IsalState {
    _opaque: [u8; 0],
}

extern "C" {
    fn dupmirror_gzip_new() -> *mut IsalState;
    fn dupmirror_gzip_restart(state: *mut IsalState);
    fn dupmirror_gzip_free(state: *mut IsalState);
    fn dupmirror_gzip_inflate(
        state: *mut IsalState,
        input: *const u8,
        in_len: u32,
        out: *mut u8,
        out_len: u32,
        consumed: *mut u32,
        produced: *mut u32,
        member_done: *mut libc::c_int,
    ) -> libc::c_int;
}

/// One call to the inflater: what it took, what it gave, and whether a member ended.
struct Step {
    consumed: usize,
    produced: usize,
    member_done: bool,
}

/// An ISA-L decoder state, owned.
struct Inflater(NonNull<IsalState>);

// SAFETY: the state is plain memory owned by this value alone; ISA-L keeps no reference to
// it or to any thread between calls.
unsafe impl Send for Inflater {}

impl Inflater {
    fn new() -> io::Result<Inflater> {
        // SAFETY: no arguments; returns a fresh state or NULL when out of memory.
        let state = unsafe { dupmirror_gzip_new() };
        NonNull::new(state)
            .map(Inflater)
            .ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "no memory for inflating"))
    }

    fn restart(&mut self) {
        // SAFETY: a live state owned by self.
        unsafe { dupmirror_gzip_restart(self.0.as_ptr()) }
    }

    fn inflate(&mut self, input: &[u8], out: &mut [u8]) -> io::Result<Step> {
        // Lengths are u32 in ISA-L; a longer slice is simply used in part.
        let in_len = u32::try_from(input.len()).unwrap_or(u32::MAX);
        let out_len = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let (mut consumed, mut produced, mut member_done) = (0u32, 0u32, 0);
        // SAFETY: a live state owned by self; `input` and `out` are valid for `in_len` and
        // `out_len` bytes for the length of the call, and ISA-L keeps neither pointer past
        // it (it copies what it holds back into its own state); the out-parameters point to
        // locals.
        let status = unsafe {
            dupmirror_gzip_inflate(
                self.0.as_ptr(),
                input.as_ptr(),
                in_len,
                out.as_mut_ptr(),
                out_len,
                &mut consumed,
                &mut produced,
                &mut member_done,
            )
        };
        if status < 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, reason(status)));
        }
        Ok(Step {
            consumed: consumed as usize,
            produced: produced as usize,
            member_done: member_done != 0,
        })
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: the state came from dupmirror_gzip_new and is freed once, here.
        unsafe { dupmirror_gzip_free(self.0.as_ptr()) }
    }
}

/// ISA-L's inflate errors (igzip_lib.h), in words.
fn reason(status: libc::c_int) -> String {
    let what = match status {
        -1 => "an invalid deflate block",
        -2 => "an invalid deflate symbol",
        -3 => "a back reference before the start of the data",
        -4 => "not a gzip header",
        -5 => "a compression method other than deflate",
        -6 => "a CRC-32 or length that does not match the data",
        _ => "an unknown inflate error",
    };
    format!("corrupt gzip data: {what} (ISA-L status {status})")
}

/// The first byte of every gzip member.
const GZIP_MAGIC: u8 = 0x1f;

/// The inflated content of a gzip file read from `inner`.
pub struct GzipReader<R> {
    inner: R,
    inflater: Inflater,
    input: Vec<u8>,
    /// Unconsumed input is `input[start..end]`.
    start: usize,
    end: usize,
    /// `inner` has no more bytes.
    eof: bool,
    /// The current member ended; what follows is another member or the end of the file.
    member_done: bool,
}

impl<R: Read> GzipReader<R> {
    /// Reads `inner` `buf_size` bytes at a time.
    pub fn new(inner: R, buf_size: usize) -> io::Result<GzipReader<R>> {
        Ok(GzipReader {
            inner,
            inflater: Inflater::new()?,
            input: vec![0; buf_size.max(1)],
            start: 0,
            end: 0,
            eof: false,
            member_done: false,
        })
    }

    /// Refills the input buffer when it is empty, noting the end of the file.
    fn refill(&mut self) -> io::Result<()> {
        if self.start == self.end && !self.eof {
            let n = self.inner.read(&mut self.input)?;
            (self.start, self.end) = (0, n);
            self.eof = n == 0;
        }
        Ok(())
    }
}

impl<R: Read> Read for GzipReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            self.refill()?;
            if self.member_done {
                if self.start == self.end {
                    return Ok(0); // the file ended with a member
                }
                // ISA-L waits for a whole header before judging it: a few stray bytes
                // would pass for a cut one.
                if self.input[self.start] != GZIP_MAGIC {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "corrupt gzip data: what follows the compressed data is not gzip",
                    ));
                }
                self.inflater.restart();
                self.member_done = false;
            }
            let step = self
                .inflater
                .inflate(&self.input[self.start..self.end], out)?;
            self.start += step.consumed;
            self.member_done = step.member_done;
            if step.produced > 0 {
                return Ok(step.produced);
            }
            if step.member_done || step.consumed > 0 {
                continue;
            }
            // Nothing taken, nothing given: only more input can help, and there is none.
            let why = if self.eof {
                "the gzip stream is truncated (the file ends early)"
            } else {
                "the gzip inflater made no progress"
            };
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, why));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// `data` as a gzip file (written by zlib-rs, through flate2).
    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn sample(len: usize) -> Vec<u8> {
        // Half compressible text, half noise: literal runs, matches and stored blocks.
        let mut rng = fastrand::Rng::with_seed(7);
        (0..len)
            .map(|i| {
                if (i / 4096) % 2 == 0 {
                    b"dupmirror "[i % 10]
                } else {
                    rng.u8(..)
                }
            })
            .collect()
    }

    /// Reads `file` through a reader fed `chunk` bytes at a time into `out_size` reads.
    fn inflate(file: &[u8], buf_size: usize, out_size: usize) -> io::Result<Vec<u8>> {
        let mut r = GzipReader::new(file, buf_size)?;
        let mut all = Vec::new();
        let mut out = vec![0; out_size];
        loop {
            let n = r.read(&mut out)?;
            if n == 0 {
                return Ok(all);
            }
            all.extend_from_slice(&out[..n]);
        }
    }

    #[test]
    fn inflates_what_flate2_wrote_whatever_the_buffer_sizes() {
        let data = sample(1 << 20);
        let file = gzip(&data);
        for (buf, out) in [(1, 7), (13, 4096), (65536, 1), (1 << 20, 256 * 1024)] {
            assert_eq!(
                inflate(&file, buf, out).unwrap(),
                data,
                "buf {buf} out {out}"
            );
        }
    }

    #[test]
    fn reads_every_member_of_a_multi_member_file() {
        let (a, b) = (sample(100_000), b"second member".to_vec());
        let file = [gzip(&a), gzip(&b), gzip(b"")].concat();
        let expected = [a, b].concat();
        assert_eq!(inflate(&file, 4096, 65536).unwrap(), expected);
        assert_eq!(inflate(&file, 3, 100).unwrap(), expected);
    }

    #[test]
    fn a_file_cut_short_is_truncated_not_empty() {
        let file = gzip(&sample(200_000));
        for cut in [0, 5, 10, 1000, file.len() - 4, file.len() - 1] {
            let err = inflate(&file[..cut], 4096, 65536).unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::UnexpectedEof,
                "cut at {cut}: {err}"
            );
            assert!(err.to_string().contains("truncated"), "{err}");
        }
    }

    #[test]
    fn a_wrong_crc_a_flipped_byte_or_trailing_garbage_is_corrupt_data() {
        let data = sample(200_000);
        let good = gzip(&data);
        let mut bad_crc = good.clone();
        let crc_at = good.len() - 8;
        bad_crc[crc_at] ^= 1;
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x55;
        let garbage = [good.clone(), b"not gzip".to_vec()].concat();
        for (what, file) in [("crc", bad_crc), ("flipped", flipped), ("garbage", garbage)] {
            let err = inflate(&file, 4096, 65536).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}: {err}");
            assert!(
                err.to_string().contains("corrupt gzip data"),
                "{what}: {err}"
            );
        }
    }
}
