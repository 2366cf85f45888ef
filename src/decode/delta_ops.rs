//! The commands of a librsync delta read one at a time (docs/format.md §7.5), for a caller
//! that reasons about a delta instead of patching a file with it: a catch-up composes the
//! deltas a path receives from several sets before writing anything
//! (mirror/apply/compose.rs).
//!
//! ```text
//! magic 72730236, then commands until END:
//!     0x00         END
//!     0x01..=0x40  LITERAL of that many bytes, which follow
//!     0x41..=0x44  LITERAL, its length in 1/2/4/8 bytes, then the bytes
//!     0x45..=0x54  COPY pos len, widths 1/2/4/8 each: opcode - 0x45 = 4 * pos_w + len_w
//!     else         reserved: the delta is invalid
//! ```
//!
//! Numbers are big-endian. Bytes after END are not read (librsync stops there too).

use anyhow::{bail, Context, Result};
use std::io::Read;

use super::delta::read_magic;

/// One command of a delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `len` bytes of the basis from `pos`.
    Copy {
        pos: u64,
        len: u64,
    },
    /// `len` bytes that follow in the delta: read them with [`Commands::literal`].
    Literal {
        len: u64,
    },
    End,
}

/// The commands of one delta, in order.
pub struct Commands<R> {
    delta: R,
}

impl<R: Read> Commands<R> {
    /// Checks the magic that opens the delta.
    pub fn open(mut delta: R) -> Result<Self> {
        read_magic(&mut delta)?;
        Ok(Commands { delta })
    }

    /// The next command. After a `Literal`, its bytes must be read (all of them) before
    /// the next call.
    pub fn next_command(&mut self) -> Result<Command> {
        let op = self.number(1)?;
        Ok(match op {
            0 => Command::End,
            1..=0x40 => Command::Literal { len: op },
            0x41..=0x44 => Command::Literal {
                len: self.number(1 << (op - 0x41))?,
            },
            0x45..=0x54 => {
                let widths = op - 0x45;
                let pos = self.number(1 << (widths / 4))?;
                let len = self.number(1 << (widths % 4))?;
                Command::Copy { pos, len }
            }
            _ => bail!("the delta holds the reserved command {op:#04x}"),
        })
    }

    /// The bytes of the literal just read.
    pub fn literal(&mut self, len: u64) -> impl Read + '_ {
        (&mut self.delta).take(len)
    }

    fn number(&mut self, width: u64) -> Result<u64> {
        let mut bytes = [0u8; 8];
        let width = width as usize;
        self.delta
            .read_exact(&mut bytes[8 - width..])
            .context("the delta ends in the middle of a command")?;
        Ok(u64::from_be_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::delta::DELTA_MAGIC;

    fn commands(delta: &[u8]) -> Result<Vec<Command>> {
        let mut c = Commands::open(delta)?;
        let mut out = Vec::new();
        loop {
            let command = c.next_command()?;
            out.push(command);
            match command {
                Command::End => return Ok(out),
                Command::Literal { len } => {
                    let mut bytes = Vec::new();
                    c.literal(len).read_to_end(&mut bytes)?;
                    if bytes.len() as u64 != len {
                        bail!("short literal");
                    }
                }
                Command::Copy { .. } => {}
            }
        }
    }

    #[test]
    fn every_width_reads() {
        let mut d = DELTA_MAGIC.to_vec();
        d.extend([0x03, b'a', b'b', b'c']); // short literal
        d.extend([0x42, 0, 2, b'x', b'y']); // literal, 2-byte length
        d.extend([0x45, 7, 9]); // copy, 1-byte widths
        d.extend([0x50, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 5]); // copy, 4-byte pos, 8-byte len
        d.extend([0x54]); // copy, 8 and 8
        d.extend(1u64.to_be_bytes());
        d.extend(2u64.to_be_bytes());
        d.push(0);
        d.extend(b"ignored after END");
        assert_eq!(
            commands(&d).unwrap(),
            [
                Command::Literal { len: 3 },
                Command::Literal { len: 2 },
                Command::Copy { pos: 7, len: 9 },
                Command::Copy { pos: 256, len: 5 },
                Command::Copy { pos: 1, len: 2 },
                Command::End,
            ]
        );
    }

    #[test]
    fn bad_deltas_are_errors() {
        assert!(commands(b"xx").is_err());
        assert!(commands(&[0x72, 0x73, 0x02, 0x37, 0]).is_err());
        let e = commands(&[0x72, 0x73, 0x02, 0x36, 0x55, 0]).unwrap_err();
        assert!(e.to_string().contains("reserved command 0x55"), "{e}");
        assert!(commands(&[0x72, 0x73, 0x02, 0x36, 0x46, 0, 0]).is_err());
        assert!(commands(&[0x72, 0x73, 0x02, 0x36]).is_err(), "no END");
    }
}
