//! Duplicity's records: from the tar entries of a set's volumes to one record per path.
//!
//! Each tar entry of a difftar (docs/format.md §5.3) is a record about one path:
//! `snapshot/P` (the whole object), `diff/P` (a librsync delta against the previous
//! content), `deleted/P`, or a chunk `multivol_snapshot/P/k` / `multivol_diff/P/k` of a file
//! too big for one entry. Chunks of one file follow each other, also across the end of one
//! volume file and the start of the next, so [`RecordStream`] keeps the open record between
//! volumes and hands the sink each chunk's bytes as they stream by: no file is ever held in
//! memory. Signature tars use the same names with `signature/P`, read by `repo::sigtar`.
//!
//! Records must come in strictly increasing index order (the order every merge and every
//! safety check downstream relies on); names are checked by `tar`.
//!
//! Volumes may also be read apart (a first sync decodes several at once): each volume gets
//! its own [`RecordStream`], whose [`VolumeEdges`] (its first and last record, and how far
//! the bytes of a chunk run open at its end reach) are then joined in volume order, which
//! makes the same checks as one stream across the boundary. A volume that starts inside a
//! chunk run hands it to [`RecordSink::begin_chunks`] with the run's offset in the file: every
//! chunk but a file's last holds exactly [`CHUNK_SIZE`] bytes (duplicity 0.6.21 and later);
//! a join that finds otherwise fails with [`UnevenChunks`], so the caller can read the set
//! in order instead.

pub use super::tar::RecordKind;
use super::tar::{entry_metadata, next_entry, parse_entry_name, EntryName, Extensions};
use crate::error::Error;
use crate::index::PathIndex;
use crate::meta::Metadata;
use anyhow::{Context, Result};
use std::io::Read;

/// The header of one record; its bytes (if any) follow through [`RecordSink::data`].
#[derive(Clone, Debug)]
pub struct Record {
    pub index: PathIndex,
    pub kind: RecordKind,
    pub meta: Metadata,
    /// A chunk run that did not start with chunk 1: the head of this file lies in volumes
    /// that were not read.
    pub headless: bool,
}

/// The size of every chunk of a split file but its last (duplicity 0.6.21 and later).
pub const CHUNK_SIZE: u64 = 64 * 1024;

/// Receives the records of one set in order.
pub trait RecordSink {
    fn begin(&mut self, record: &Record) -> Result<()>;
    /// Like `begin`, for a file split into chunks whose first chunk here belongs at
    /// `offset` in the file: 0 for its head, more when a volume read apart starts inside
    /// the run (`record.headless`, which a sink reading in order refuses, see the gate).
    fn begin_chunks(&mut self, record: &Record, offset: u64) -> Result<()> {
        let _ = offset;
        self.begin(record)
    }
    /// Called once per tar entry of the record (several times for a split file).
    fn data(&mut self, bytes: &mut dyn Read) -> Result<()>;
    fn end(&mut self) -> Result<()>;
}

/// Receives the volumes of one set read apart, several at once (see the top).
pub trait VolumeSinks: Sync {
    /// A sink for one volume; `follows`: the volume before it in the set is read too, so a
    /// chunk run may continue from there into this one.
    fn volume(&self, follows: bool) -> Result<Box<dyn VolumeSink>>;

    /// Every volume is with a decoder and one decoder has none left: the others are on
    /// the set's last volumes, and a core is free until they are done.
    fn no_volume_left(&self) {}
}

/// The records of one volume read apart.
pub trait VolumeSink: RecordSink + Send {
    /// Called in volume order, once this volume and every one before it were read whole,
    /// hashed right and joined up; `last` is the index of its last record.
    fn done(self: Box<Self>, last: Option<&PathIndex>) -> Result<()>;
}

/// Counts the bytes a sink reads from an entry, so that an entry the volume cuts short is
/// caught (the tar crate just stops giving data when its input ends).
struct Counted<'r> {
    inner: &'r mut dyn Read,
    n: u64,
}

impl Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// A tar stream that the `tar` crate may "seek" forward in, to skip an entry's padding: it
/// reads into a buffer of its own instead of the 32 KiB the crate zeroes for every skip
/// without a seek (1% of a bootstrap's CPU time). The crate seeks only forward from where
/// it is, and takes the position returned as the stream's.
struct ForwardSkip<R> {
    inner: R,
    scratch: [u8; 4096],
    /// Bytes read or skipped so far.
    pos: u64,
}

impl<R> ForwardSkip<R> {
    fn new(inner: R) -> Self {
        ForwardSkip {
            inner,
            scratch: [0; 4096],
            pos: 0,
        }
    }
}

impl<R: Read> Read for ForwardSkip<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read> std::io::Seek for ForwardSkip<R> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        let mut left = match pos {
            std::io::SeekFrom::Current(skip) if skip >= 0 => skip.unsigned_abs(),
            _ => return Err(std::io::Error::other("a tar stream is read forward only")),
        };
        while left > 0 {
            let want = left.min(self.scratch.len() as u64) as usize;
            let n = self.inner.read(&mut self.scratch[..want])?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            left -= n as u64;
            self.pos += n as u64;
        }
        Ok(self.pos)
    }
}

/// Hands an entry's data to the sink and checks that all of it was there.
fn pass_data<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    index: &PathIndex,
    sink: &mut dyn RecordSink,
) -> Result<()> {
    let size = entry.size();
    let mut counted = Counted { inner: entry, n: 0 };
    sink.data(&mut counted)?;
    std::io::copy(&mut counted, &mut std::io::sink()).context("reading the volume")?;
    if counted.n < size {
        return Err(Error::corrupt(format!(
            "the volume ends inside the data of {index}: {} of {size} bytes (truncated tar)",
            counted.n
        ))
        .into());
    }
    Ok(())
}

/// One end of a volume's records.
#[derive(Clone, Debug)]
struct End {
    index: PathIndex,
    kind: RecordKind,
    is_dir: bool,
    /// The entry is a chunk of a split file.
    chunk: bool,
}

/// A volume's first and last record, to check that volumes read apart join up.
#[derive(Clone, Debug, Default)]
pub struct VolumeEdges {
    first: Option<End>,
    last: Option<End>,
    /// For a chunk run open at the end: where its bytes reach in the file.
    run_end: u64,
    /// The volume starts inside a chunk run: the first chunk's number and offset.
    resumed: Option<(u64, u64)>,
}

/// A volume continues a split file at chunk k, but the chunks before it do not hold
/// (k-1) × [`CHUNK_SIZE`] bytes: a repository written before duplicity 0.6.21.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path}: its chunks are not all {CHUNK_SIZE} bytes ({at} bytes precede chunk {chunk}), \
     as duplicity before 0.6.21 wrote them; the set must be read in volume order"
)]
pub struct UnevenChunks {
    path: String,
    chunk: u64,
    at: u64,
}

impl VolumeEdges {
    /// The index of the volume's last record.
    pub fn last(&self) -> Option<&PathIndex> {
        self.last.as_ref().map(|e| &e.index)
    }

    /// Takes the next volume read (an empty one changes nothing): its first record must
    /// come after this one's last, or continue its chunk run where it left off, and lie
    /// below no file.
    pub fn join(&mut self, next: VolumeEdges) -> Result<()> {
        let Some(first) = &next.first else {
            return Ok(());
        };
        if let Some(prev) = &self.last {
            if let Some((chunk, at)) = next.resumed {
                let same = prev.chunk && prev.index == first.index && prev.kind == first.kind;
                if !same {
                    return Err(Error::corrupt(format!(
                        "{}: the set holds later chunks of this file but not its first one",
                        first.index
                    ))
                    .into());
                }
                if self.run_end != at {
                    return Err(UnevenChunks {
                        path: first.index.to_string(),
                        chunk,
                        at: self.run_end,
                    }
                    .into());
                }
            } else {
                check_order(&first.index, &prev.index)?;
                if first.index.starts_with(&prev.index) && !prev.is_dir {
                    return Err(Error::corrupt(format!(
                        "{}: below {}, which is not a directory",
                        first.index, prev.index
                    ))
                    .into());
                }
            }
        }
        if self.first.is_none() {
            self.first = next.first.clone();
        }
        self.last = next.last;
        self.run_end = next.run_end;
        Ok(())
    }
}

fn check_order(index: &PathIndex, last: &PathIndex) -> Result<()> {
    if index <= last {
        return Err(Error::corrupt(format!(
            "entry {index:?} comes after {last:?}: entries are out of order"
        ))
        .into());
    }
    Ok(())
}

/// Turns the tar entries of a set's volumes, in order, into records.
#[derive(Default)]
pub struct RecordStream {
    /// The record whose chunks may continue (index and kind of a multivol run).
    open: Option<(PathIndex, RecordKind)>,
    last: Option<PathIndex>,
    edges: VolumeEdges,
}

impl RecordStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one volume's tar stream. The stream ends at the first zero block or at EOF,
    /// whichever comes first (docs/format.md §5.7): gzip volumes before 3.2 have no footer,
    /// and gpg volumes carry junk after a single zero block.
    pub fn read_volume(
        &mut self,
        tar_stream: &mut dyn Read,
        sink: &mut dyn RecordSink,
    ) -> Result<()> {
        let mut archive = tar::Archive::new(ForwardSkip::new(tar_stream));
        let mut entries = archive
            .entries_with_seek()
            .context("reading the tar stream")?
            .raw(true);
        while let Some((mut entry, ext)) = next_entry(&mut entries)? {
            let name = parse_entry_name(&ext.path(entry.header()))?;
            self.entry(name, &mut entry, &ext, sink)?;
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        name: EntryName,
        entry: &mut tar::Entry<R>,
        ext: &Extensions,
        sink: &mut dyn RecordSink,
    ) -> Result<()> {
        if let (Some(_), Some((index, kind))) = (name.chunk, &self.open) {
            if *index == name.index && *kind == name.kind {
                self.edges.run_end = self.edges.run_end.saturating_add(entry.size());
                return pass_data(entry, &name.index, sink);
            }
        }
        self.close(sink)?;
        // A deletion of the root is a no-op everywhere (LP #929067 wrote such entries).
        if name.kind == RecordKind::Deleted && name.index.is_root() {
            return Ok(());
        }
        if let Some(last) = &self.last {
            check_order(&name.index, last)?;
        }
        self.last = Some(name.index.clone());
        let meta = entry_metadata(entry, ext, name.kind)?;
        let record = Record {
            index: name.index.clone(),
            kind: name.kind,
            meta,
            headless: name.chunk.is_some_and(|k| k > 1),
        };
        let end = End {
            index: name.index.clone(),
            kind: name.kind,
            is_dir: record.meta.is_dir(),
            chunk: name.chunk.is_some(),
        };
        self.edges.run_end = 0;
        match name.chunk {
            Some(k) if !record.headless || self.edges.first.is_none() => {
                let at = (k - 1).saturating_mul(CHUNK_SIZE);
                if record.headless {
                    self.edges.resumed = Some((k, at));
                }
                self.edges.run_end = at;
                sink.begin_chunks(&record, at)?;
            }
            _ => sink.begin(&record)?,
        }
        if self.edges.first.is_none() {
            self.edges.first = Some(end.clone());
        }
        self.edges.last = Some(end);
        let has_data = matches!(name.kind, RecordKind::Diff | RecordKind::Signature)
            || (name.kind == RecordKind::Snapshot && record.meta.is_regular());
        if has_data {
            self.edges.run_end = self.edges.run_end.saturating_add(entry.size());
            pass_data(entry, &name.index, sink)?;
        }
        if name.chunk.is_some() {
            self.open = Some((name.index, name.kind));
            Ok(())
        } else {
            sink.end()
        }
    }

    /// What a volume read apart looks like at its ends (its chunk run, if one is open at
    /// the end, stays with the sink: the next volume may continue it).
    pub fn into_edges(self) -> VolumeEdges {
        self.edges
    }

    /// Ends the set: closes a split file whose last chunk was the last entry.
    pub fn close(&mut self, sink: &mut dyn RecordSink) -> Result<()> {
        if self.open.take().is_some() {
            sink.end()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::FileType;

    #[test]
    fn the_tar_stream_skips_forward_only_and_tells_where_it_is() {
        use std::io::{Seek, SeekFrom};
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let mut s = ForwardSkip::new(&data[..]);
        let mut two = [0u8; 2];
        s.read_exact(&mut two).unwrap();
        assert_eq!(s.seek(SeekFrom::Current(5000)).unwrap(), 5002);
        s.read_exact(&mut two).unwrap();
        assert_eq!(two, [(5002 % 256) as u8, (5003 % 256) as u8]);
        for refused in [SeekFrom::Current(-1), SeekFrom::Start(0), SeekFrom::End(0)] {
            assert!(s.seek(refused).is_err(), "{refused:?}");
        }
        let past_the_end = s.seek(SeekFrom::Current(10_000)).unwrap_err();
        assert_eq!(past_the_end.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    /// A ustar header block (name, typeflag, size), checksum filled in.
    fn header(name: &[u8], typeflag: u8, size: u64) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name);
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn entry(name: &[u8], typeflag: u8, data: &[u8]) -> Vec<u8> {
        let mut v = header(name, typeflag, data.len() as u64);
        v.extend_from_slice(data);
        v.resize(v.len().div_ceil(512) * 512, 0);
        v
    }

    /// Records every begin, with the bytes of each record.
    #[derive(Default)]
    struct Collect(Vec<(PathIndex, RecordKind, Vec<u8>, Metadata)>);

    impl RecordSink for Collect {
        fn begin(&mut self, r: &Record) -> Result<()> {
            self.0
                .push((r.index.clone(), r.kind, Vec::new(), r.meta.clone()));
            Ok(())
        }
        fn data(&mut self, bytes: &mut dyn Read) -> Result<()> {
            if let Some(last) = self.0.last_mut() {
                bytes.read_to_end(&mut last.2)?;
            }
            Ok(())
        }
        fn end(&mut self) -> Result<()> {
            Ok(())
        }
    }

    fn read(tar: &[u8]) -> Result<Collect> {
        let mut sink = Collect::default();
        let mut stream = RecordStream::new();
        stream.read_volume(&mut &tar[..], &mut sink)?;
        stream.close(&mut sink)?;
        Ok(sink)
    }

    #[test]
    fn extension_headers_name_the_entry() {
        let mut tar = entry(b"././@PaxHeader", b'x', b"27 path=snapshot/from-pax\xff\n");
        tar.extend(entry(b"snapshot/lossy?", b'0', b"pax"));
        tar.extend(entry(b"././@LongLink", b'L', b"snapshot/gnu-long\0"));
        tar.extend(entry(b"snapshot/cut", b'0', b"gnu"));
        tar.extend(entry(b"././@LongLink", b'K', b"target\0"));
        tar.extend(header(b"snapshot/link", b'2', 0));
        let got = read(&tar).unwrap().0;
        let names: Vec<Vec<u8>> = got.iter().map(|r| r.0.to_bytes()).collect();
        assert_eq!(names, [&b"from-pax\xff"[..], b"gnu-long", b"link"]);
        assert_eq!(got[0].2, b"pax");
        assert_eq!(got[2].3.file_type, FileType::Symlink(b"target".to_vec()));
    }

    /// Regression: a PAX header declaring 1 GiB was read into memory whole by the tar crate
    /// (a gzip bomb made that cheap for an attacker). It is refused before any read.
    #[test]
    fn oversized_extension_headers_are_refused_unread() {
        for typeflag in [b'x', b'L', b'K'] {
            let tar = header(b"././@PaxHeader", typeflag, 1 << 30);
            let err = read(&tar).err().expect("refused");
            assert!(
                format!("{err:#}").contains("declares 1073741824 bytes"),
                "{err:#}"
            );
        }
    }

    /// Regression: an entry whose data the volume cuts short was handed on truncated.
    #[test]
    fn an_entry_cut_short_is_an_error() {
        let mut tar = header(b"snapshot/f", b'0', 1000);
        tar.extend_from_slice(&[7u8; 300]);
        let err = read(&tar).err().expect("refused");
        assert!(format!("{err:#}").contains("truncated tar"), "{err:#}");
        let mut tar = header(b"multivol_snapshot/f/1", b'0', 1 << 32);
        tar.extend_from_slice(&[7u8; 512]);
        assert!(read(&tar).is_err());
    }

    #[test]
    fn a_stream_ending_after_an_extension_header_is_an_error() {
        let tar = entry(b"././@PaxHeader", b'x', b"19 path=snapshot/x\n");
        assert!(read(&tar).is_err());
        let mut tar = entry(b"././@PaxHeader", b'x', b"19 path=snapshot/x\n");
        tar.extend(entry(b"././@PaxHeader", b'x', b"19 path=snapshot/y\n"));
        tar.extend(entry(b"snapshot/z", b'0', b""));
        assert!(read(&tar).is_err(), "two PAX headers for one entry");
    }

    /// The edges of a volume read apart, into a sink that takes every record.
    fn edges(tar: &[u8]) -> VolumeEdges {
        let mut stream = RecordStream::new();
        stream
            .read_volume(&mut &tar[..], &mut Collect::default())
            .unwrap();
        stream.into_edges()
    }

    #[test]
    fn volumes_read_apart_join_only_in_order_and_at_whole_chunks() {
        let chunk = vec![7u8; CHUNK_SIZE as usize];
        let mut one = entry(b"snapshot/a", b'0', b"a");
        one.extend(entry(b"multivol_snapshot/big/1", b'0', &chunk));
        let two = entry(b"multivol_snapshot/big/2", b'0', b"tail");
        let mut joined = edges(&one);
        joined.join(edges(&two)).unwrap();
        assert_eq!(joined.last(), Some(&PathIndex::from_bytes(b"big")));
        // A first chunk of 1000 bytes: chunk 2 does not start at 64 KiB.
        let short = entry(b"multivol_snapshot/big/1", b'0', &[1u8; 1000]);
        let err = edges(&short).join(edges(&two)).unwrap_err();
        assert!(err.is::<UnevenChunks>(), "{err:#}");
        // Later chunks of another file, a volume going back, a path below a file.
        let other = entry(b"multivol_snapshot/other/2", b'0', b"x");
        assert!(edges(&one).join(edges(&other)).is_err());
        let back = entry(b"snapshot/0", b'0', b"x");
        let err = edges(&one).join(edges(&back)).unwrap_err();
        assert!(format!("{err:#}").contains("out of order"), "{err:#}");
        let below = entry(b"snapshot/big/x", b'0', b"x");
        let err = edges(&two).join(edges(&below)).unwrap_err();
        assert!(format!("{err:#}").contains("not a directory"), "{err:#}");
        assert!(edges(&one).join(edges(&below)).is_err());
    }

    #[test]
    fn entry_names() {
        let n = parse_entry_name(b"snapshot/./").unwrap();
        assert!(n.index.is_root());
        assert_eq!(n.kind, RecordKind::Snapshot);
        for root in [
            &b"snapshot/"[..],
            b"snapshot",
            b"snapshot/.",
            b"diff",
            b"deleted",
        ] {
            assert!(parse_entry_name(root).unwrap().index.is_root(), "{root:?}");
        }
        let n = parse_entry_name(b"multivol_snapshot/./3").unwrap();
        assert!(n.index.is_root());
        assert_eq!(n.chunk, Some(3));
        let n = parse_entry_name(b"multivol_diff/a/b c/12").unwrap();
        assert_eq!(n.index, PathIndex::from_bytes(b"a/b c"));
        assert_eq!((n.kind, n.chunk), (RecordKind::Diff, Some(12)));
        assert!(matches!(
            parse_entry_name(b"diff/../warning-security-error"),
            Err(Error::UnsafePath { .. })
        ));
        assert!(matches!(
            parse_entry_name(b"snapshot//etc/passwd"),
            Err(Error::UnsafePath { .. })
        ));
        assert!(matches!(
            parse_entry_name(b"/etc/passwd"),
            Err(Error::Corrupt(_))
        ));
        assert!(matches!(
            parse_entry_name(b"multivol_snapshot/a/x"),
            Err(Error::Corrupt(_))
        ));
    }
}
