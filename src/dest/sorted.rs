//! Byte strings sorted without holding them all (an external sort): the lists that grow with
//! the tree, a directory's names for the walk and the paths a sync changed, cost a bounded
//! amount of memory however long they get.
//!
//! ```text
//! push(item):  gather items in memory, up to `run_limit` bytes (each counted with
//!              ITEM_OVERHEAD for its bookkeeping)
//!              full: sort, drop repeats, append the run to one unnamed scratch file in
//!              $TMPDIR (O_TMPFILE: gone when closed), NUL after each item
//!              FAN_IN runs of one level: merged into one run of the next level, appended
//!              too; the bytes of the merged runs are freed (a hole punched in the file)
//! finish():    nothing spilled: the run, sorted, in memory
//!              else: a lazy merge of the runs left (each read through MERGE_BUF), repeats
//!              dropped
//! ```
//!
//! Items must not contain NUL (paths and file names never do). Memory: one run while
//! gathering; while merging, one buffer and one head item per run left: fewer than FAN_IN
//! per level, and levels grow with the logarithm of the list (two levels hold 4,096 runs).
//! The scratch file holds the spilled items about once (merged runs are punched out; on a
//! file system without hole punching it holds them once per level).

use anyhow::{Context, Result};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Arc;

/// Bookkeeping counted per item held in memory, beside its bytes (a `Vec` and the
/// allocator's share).
const ITEM_OVERHEAD: usize = 32;

/// The buffer through which a merge reads each spilled run.
pub const MERGE_BUF: usize = 16 << 10;

/// Runs of one level merged into one run of the next.
pub const FAN_IN: usize = 32;

/// Items gathered and sorted through a scratch file when they outgrow one run.
#[derive(Debug)]
pub struct ExternalSort {
    run: Vec<Vec<u8>>,
    run_bytes: usize,
    run_limit: usize,
    /// What is sorted, for the error messages ("the list of changed paths").
    what: &'static str,
    spilled: Option<Spill>,
}

/// The scratch file and the runs in it, in the order written (so levels never increase).
#[derive(Debug)]
struct Spill {
    file: Arc<File>,
    runs: Vec<Run>,
    /// Where the next run starts: the end of the file.
    end: u64,
}

#[derive(Clone, Copy, Debug)]
struct Run {
    start: u64,
    end: u64,
    level: u32,
}

impl ExternalSort {
    /// Sorts `what`, spilling a run each `run_limit` bytes.
    pub fn new(run_limit: usize, what: &'static str) -> Self {
        ExternalSort {
            run: Vec::new(),
            run_bytes: 0,
            run_limit,
            what,
            spilled: None,
        }
    }

    pub fn push(&mut self, item: Vec<u8>) -> Result<()> {
        self.run_bytes += item.len() + ITEM_OVERHEAD;
        self.run.push(item);
        if self.run_bytes >= self.run_limit {
            self.spill()?;
        }
        Ok(())
    }

    /// How many runs are in the scratch file (0: all in memory).
    #[cfg(test)]
    fn spilled_runs(&self) -> usize {
        self.spilled.as_ref().map_or(0, |s| s.runs.len())
    }

    /// Sorts the run in memory and appends it to the scratch file, then merges full levels.
    fn spill(&mut self) -> Result<()> {
        let run = sorted_unique(std::mem::take(&mut self.run));
        self.run_bytes = 0;
        let spill = match self.spilled.take() {
            Some(s) => s,
            None => Spill {
                file: Arc::new(scratch_file(self.what)?),
                runs: Vec::new(),
                end: 0,
            },
        };
        let spill = self.spilled.insert(spill);
        spill.append(0, run.into_iter().map(Ok), self.what)?;
        while let Some(level) = spill.full_level() {
            let first = spill.runs.len() - FAN_IN;
            let merged: Vec<Run> = spill.runs.drain(first..).collect();
            let merge = Merge::new(&spill.file, &merged)?;
            spill.append(level + 1, merge, self.what)?;
            spill.punch(merged[0].start, merged[FAN_IN - 1].end);
        }
        Ok(())
    }

    /// The items in order, without repeats.
    pub fn finish(self) -> Result<Sorted> {
        let tail = sorted_unique(self.run);
        let Some(mut spill) = self.spilled else {
            return Ok(Sorted::Memory(tail.into_iter()));
        };
        if !tail.is_empty() {
            spill.append(0, tail.into_iter().map(Ok), self.what)?;
        }
        Ok(Sorted::Merged(Merge::new(&spill.file, &spill.runs)?))
    }
}

impl Spill {
    /// Writes `items` at the end of the file as one run of `level`.
    fn append(
        &mut self,
        level: u32,
        items: impl Iterator<Item = Result<Vec<u8>>>,
        what: &str,
    ) -> Result<()> {
        let cannot = || format!("cannot write the scratch file of {what}");
        let mut out = BufWriter::new(AtWriter {
            file: &self.file,
            pos: self.end,
        });
        for item in items {
            let item = item?;
            out.write_all(&item).with_context(cannot)?;
            out.write_all(&[0]).with_context(cannot)?;
        }
        out.flush().with_context(cannot)?;
        let end = out.get_ref().pos;
        drop(out);
        self.runs.push(Run {
            start: self.end,
            end,
            level,
        });
        self.end = end;
        Ok(())
    }

    /// The level whose last FAN_IN runs are all of it, if any.
    fn full_level(&self) -> Option<u32> {
        let last = self.runs.len().checked_sub(FAN_IN)?;
        let level = self.runs[last].level;
        self.runs[last..]
            .iter()
            .all(|r| r.level == level)
            .then_some(level)
    }

    /// Frees the bytes of runs already merged; on a file system that cannot, they stay.
    fn punch(&self, start: u64, end: u64) {
        let (Ok(offset), Ok(len)) = (i64::try_from(start), i64::try_from(end - start)) else {
            return;
        };
        // SAFETY: fallocate on a descriptor this struct owns; no memory is passed.
        unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            );
        }
    }
}

/// The items of a finished sort, in order, without repeats.
pub enum Sorted {
    Memory(std::vec::IntoIter<Vec<u8>>),
    Merged(Merge),
}

impl Iterator for Sorted {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Sorted::Memory(items) => items.next().map(Ok),
            Sorted::Merged(merge) => merge.next(),
        }
    }
}

/// A lazy merge of sorted runs of one scratch file, repeats dropped.
pub struct Merge {
    readers: Vec<BufReader<RunReader>>,
    heads: BinaryHeap<Reverse<(Vec<u8>, usize)>>,
    last: Option<Vec<u8>>,
}

impl Merge {
    fn new(file: &Arc<File>, runs: &[Run]) -> Result<Self> {
        let mut readers: Vec<_> = runs
            .iter()
            .map(|r| {
                BufReader::with_capacity(
                    MERGE_BUF,
                    RunReader {
                        file: Arc::clone(file),
                        pos: r.start,
                        end: r.end,
                    },
                )
            })
            .collect();
        let mut heads = BinaryHeap::new();
        for (i, r) in readers.iter_mut().enumerate() {
            if let Some(item) = next_item(r)? {
                heads.push(Reverse((item, i)));
            }
        }
        Ok(Merge {
            readers,
            heads,
            last: None,
        })
    }

    fn step(&mut self) -> Result<Option<Vec<u8>>> {
        while let Some(Reverse((item, i))) = self.heads.pop() {
            if let Some(next) = next_item(&mut self.readers[i])? {
                self.heads.push(Reverse((next, i)));
            }
            if self.last.as_ref() != Some(&item) {
                self.last = Some(item.clone());
                return Ok(Some(item));
            }
        }
        Ok(None)
    }
}

impl Iterator for Merge {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step().transpose()
    }
}

fn sorted_unique(mut items: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    items.sort_unstable();
    items.dedup();
    items
}

/// The next NUL-terminated item of a run.
fn next_item(run: &mut impl BufRead) -> Result<Option<Vec<u8>>> {
    let mut item = Vec::new();
    if run
        .read_until(0, &mut item)
        .context("cannot read a scratch file")?
        == 0
    {
        return Ok(None);
    }
    item.pop();
    Ok(Some(item))
}

/// An unnamed file in the temporary directory, gone when closed.
pub fn scratch_file(what: &str) -> Result<File> {
    let dir = std::env::temp_dir();
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(&dir)
        .with_context(|| {
            format!(
                "cannot make a scratch file in {} for {what} (set TMPDIR to a writable folder)",
                dir.display()
            )
        })
}

/// One spilled run, read by position (the runs share one file).
struct RunReader {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for RunReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min((self.end - self.pos) as usize);
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Writes by position, so a merge can append to the file it reads.
struct AtWriter<'a> {
    file: &'a File,
    pos: u64,
}

impl Write for AtWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// `n` items with repeats within and across runs, in no order, and the sorted set.
    fn shuffled(n: u32) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let items: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("d{}/f{}", (i * 7919) % 13, (i * 31) % 997).into_bytes())
            .collect();
        let set: BTreeSet<_> = items.iter().cloned().collect();
        (items, set.into_iter().collect())
    }

    fn sorted(limit: usize, items: &[Vec<u8>]) -> (usize, Vec<Vec<u8>>) {
        let mut sort = ExternalSort::new(limit, "a test list");
        for item in items {
            sort.push(item.clone()).unwrap();
        }
        let runs = sort.spilled_runs();
        (runs, sort.finish().unwrap().collect::<Result<_>>().unwrap())
    }

    #[test]
    fn a_short_list_stays_in_memory() {
        let (items, want) = shuffled(50);
        assert_eq!(sorted(1 << 20, &items), (0, want));
    }

    #[test]
    fn spilled_runs_merge_into_one_sorted_list_without_repeats() {
        let (items, want) = shuffled(500);
        let (runs, got) = sorted(200, &items);
        assert!((10..FAN_IN).contains(&runs), "{runs} runs");
        assert_eq!(got, want);
    }

    #[test]
    fn full_levels_merge_so_few_runs_are_left_open() {
        // About 1,000 runs of a few items each: merged by levels into fewer than FAN_IN
        // per level.
        let (items, want) = shuffled(5_000);
        let (runs, got) = sorted(250, &items);
        assert!(runs < 2 * FAN_IN, "{runs} runs left");
        assert_eq!(got, want);
    }
}
