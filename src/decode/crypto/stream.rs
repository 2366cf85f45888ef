//! Turning a blocking "read all input, write all output, then give a verdict" operation (gpgme's
//! decrypt) into a pull stream with bounded memory.
//!
//! The operation runs on a helper thread and writes into a [`ChunkWriter`], which hands
//! 64 KiB chunks to the [`PlainStream`] over a channel of a few slots; when the reader falls
//! behind, the writer blocks, and so does gpg. The operation's verdict travels the same
//! channel after the last chunk, so the reader's end of stream *is* the verdict: `Ok(0)` when
//! the operation succeeded, an error otherwise. A caller that reads to the end therefore cannot
//! mistake the plaintext of a file that failed its check for a good one.

use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

const CHUNK: usize = 64 * 1024;
const CHUNKS_IN_FLIGHT: usize = 4;

enum Msg<E> {
    Data(Vec<u8>),
    Done(Result<(), E>),
}

/// The output side given to the operation. Writes fail with `BrokenPipe` once the reader is
/// gone, which makes the operation stop early.
pub struct ChunkWriter<E> {
    tx: SyncSender<Msg<E>>,
    buf: Vec<u8>,
}

impl<E> ChunkWriter<E> {
    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .send(Msg::Data(chunk))
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }
}

impl<E> Write for ChunkWriter<E> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

impl<E> Drop for ChunkWriter<E> {
    fn drop(&mut self) {
        // The tail of the output; the verdict follows it. Nobody may be listening any more.
        let _ = self.send_buffered();
    }
}

/// The plaintext, read from the helper thread's chunks; ends with the operation's verdict.
pub struct PlainStream<E> {
    rx: Option<Receiver<Msg<E>>>,
    chunk: Vec<u8>,
    pos: usize,
    /// The verdict, once it arrived (an error as its message).
    end: Option<Result<(), String>>,
    thread: Option<JoinHandle<()>>,
}

/// Runs `op` on a helper thread named `name`; `op` writes its output into the writer it is
/// given and returns its verdict. Errors become the stream's final read error.
pub fn spawn<E, F>(name: &str, op: F) -> io::Result<PlainStream<E>>
where
    E: std::error::Error + Send + Sync + 'static,
    F: FnOnce(ChunkWriter<E>) -> Result<(), E> + Send + 'static,
{
    let (tx, rx) = sync_channel(CHUNKS_IN_FLIGHT);
    let done = tx.clone();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let writer = ChunkWriter {
                tx,
                buf: Vec::with_capacity(CHUNK),
            };
            // `op` owns the writer and drops it (sending the output's tail) before returning.
            let verdict = op(writer);
            let _ = done.send(Msg::Done(verdict));
        })?;
    Ok(PlainStream {
        rx: Some(rx),
        chunk: Vec::new(),
        pos: 0,
        end: None,
        thread: Some(thread),
    })
}

impl<E: std::error::Error + Send + Sync + 'static> Read for PlainStream<E> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match &self.end {
                Some(Ok(())) => return Ok(0),
                Some(Err(msg)) => return Err(io::Error::other(msg.clone())),
                None => {}
            }
            match self.rx.as_ref().and_then(|rx| rx.recv().ok()) {
                Some(Msg::Data(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Some(Msg::Done(Ok(()))) => self.end = Some(Ok(())),
                Some(Msg::Done(Err(e))) => {
                    // The typed error goes out once; later reads repeat its message.
                    self.end = Some(Err(e.to_string()));
                    return Err(io::Error::other(e));
                }
                None => {
                    self.end = Some(Err(
                        "the decryption thread stopped without a verdict".to_string()
                    ))
                }
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<E> Drop for PlainStream<E> {
    fn drop(&mut self) {
        // Closing the channel first makes a still-running operation fail its next write and
        // stop; then wait for it, so it has released its input when the caller goes on.
        self.rx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Failed(String);

    fn run(
        op: impl FnOnce(ChunkWriter<Failed>) -> Result<(), Failed> + Send + 'static,
    ) -> (Vec<u8>, Option<String>) {
        let mut s = spawn("test", op).unwrap();
        let mut out = Vec::new();
        let err = s.read_to_end(&mut out).err().map(|e| e.to_string());
        (out, err)
    }

    #[test]
    fn output_then_success() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let (out, err) = run(move |mut w| {
            for piece in data.chunks(1000) {
                w.write_all(piece).unwrap();
            }
            Ok(())
        });
        assert_eq!(err, None);
        assert_eq!(out, expected);
    }

    #[test]
    fn the_verdict_ends_the_stream() {
        let (out, err) = run(|mut w| {
            w.write_all(b"plaintext that must not be trusted").unwrap();
            drop(w);
            Err(Failed("bad signature".into()))
        });
        assert_eq!(out, b"plaintext that must not be trusted");
        assert_eq!(err.as_deref(), Some("bad signature"));
    }

    #[test]
    fn dropping_the_reader_stops_the_writer() {
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        let mut s = spawn("test", move |mut w: ChunkWriter<Failed>| {
            let r = (0..10_000).try_for_each(|_| w.write_all(&[0u8; CHUNK]));
            let _ = seen_tx.send(r.map_err(|e| e.kind()));
            Ok(())
        })
        .unwrap();
        let mut first = [0u8; 10];
        s.read_exact(&mut first).unwrap();
        drop(s); // joins the thread
        assert_eq!(seen_rx.recv().unwrap(), Err(io::ErrorKind::BrokenPipe));
    }
}
