//! Getting a sync's volumes from a remote source into `<state-dir>/cache/` ahead of use (a
//! local source is read in place and needs none of this).
//!
//! ```text
//! N = --prefetch; volumes numbered in the order the sets apply them
//! N download threads: each claims the next volume i once i < released + N,
//!                     downloads it (resuming NAME.part), checks its SHA1, renames it NAME
//! applier:            takes volume 0, 1, 2 ... in order, waiting for each; deleting a
//!                     volume it is done with releases a place
//! ```
//!
//! So at most N volume files are in the cache at once (the one being applied counts), and
//! up to N download at the same time: object stores and SSH links answer each request
//! late, and parallel requests hide that. All downloads share the one meter, so
//! `--bwlimit` caps their sum. N = 1 downloads and applies in turn. A download goes to
//! `NAME.part`, resumes from that file's length when it is there (an earlier run was
//! interrupted), is hashed as it arrives and becomes `NAME` only when its SHA1 matches the
//! manifest; a mismatch fetches the file once more from scratch, then fails. After a
//! failure no new download starts; the applier meets the failure in order. Files of an
//! interrupted run stay for the next one, which keeps those it still wants and deletes the
//! rest.
//! A download stops at the size the listing gave (`source::checked`), so a server cannot
//! fill the disk, and only plain file names (`source::names`) are joined to the cache path.

use crate::error::Error;
use crate::progress::Reporter;
use crate::source::{names, Backend};
use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use sha1::{Digest, Sha1};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BUF_SIZE: usize = 256 * 1024;

/// One volume the plan will apply.
#[derive(Clone, Debug)]
pub struct WantedVolume {
    pub name: String,
    pub size: Option<u64>,
    /// The SHA1 the manifest gives for it (hex).
    pub sha1: String,
}

/// Time spent getting volumes, as reported.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FetchTimes {
    /// Time spent downloading, summed over the parallel downloads (overlaps with applying).
    pub download_seconds: f64,
    /// Time the applier waited for a volume to arrive.
    pub wait_seconds: f64,
}

/// The download threads and the cache they fill. Dropping it stops them; files they left
/// stay for the next run.
pub struct Fetcher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    waited: Mutex<Duration>,
}

struct Shared {
    backend: Arc<dyn Backend>,
    reporter: Arc<Reporter>,
    dir: PathBuf,
    wants: Vec<WantedVolume>,
    /// Most volume files in the cache at once.
    limit: usize,
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Per want: the downloaded file, or why it could not be had.
    results: Vec<Option<Result<PathBuf>>>,
    /// Volumes handed to the applier.
    taken: usize,
    /// Volumes whose cache file is gone.
    released: usize,
    /// The next volume for a download thread to claim.
    claimed: usize,
    /// A download failed: start no more.
    failed: bool,
    busy: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Fetcher {
    /// Starts downloading `wants`, in this order, into `cache_dir`, keeping at most
    /// `prefetch` (≥ 1) files there; shows the download bar and re-downloads on `reporter`.
    pub fn start(
        backend: Arc<dyn Backend>,
        reporter: Arc<Reporter>,
        wants: Vec<WantedVolume>,
        cache_dir: &Path,
        prefetch: usize,
    ) -> Result<Fetcher> {
        let limit = prefetch.max(1);
        clean_cache(cache_dir, &wants[..limit.min(wants.len())])?;
        reporter.start_download(wants.iter().filter_map(|w| w.size).sum());
        let shared = Arc::new(Shared {
            backend,
            reporter,
            dir: cache_dir.to_path_buf(),
            state: Mutex::new(State {
                results: wants.iter().map(|_| None).collect(),
                ..State::default()
            }),
            wants,
            limit,
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("prefetch".into())
            .spawn(move || worker.run())
            .context("cannot start the download threads")?;
        Ok(Fetcher {
            shared,
            thread: Some(thread),
            waited: Mutex::new(Duration::ZERO),
        })
    }

    /// The downloaded, checked file of `name` when it is the next volume of the plan
    /// (waiting for it as needed); `None` for any other file, which the caller reads
    /// directly (a repair reads volumes outside the plan).
    pub fn take(&self, name: &str) -> Option<Result<Box<dyn Read + Send>>> {
        let shared = &self.shared;
        let started = Instant::now();
        let mut st = shared.lock();
        let i = st.taken;
        if shared.wants.get(i).is_none_or(|w| w.name != name) {
            return None;
        }
        while st.results[i].is_none() {
            st = shared.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        let result = st.results[i].take();
        st.taken += 1;
        drop(st);
        if let Ok(mut w) = self.waited.lock() {
            *w += started.elapsed();
        }
        let opened = (|| -> Result<Box<dyn Read + Send>> {
            let path = result.unwrap_or_else(|| Err(anyhow!("{name} vanished")))?;
            let file =
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            Ok(Box::new(CachedVolume {
                file,
                path,
                shared: shared.clone(),
            }))
        })();
        Some(opened)
    }

    pub fn times(&self) -> FetchTimes {
        FetchTimes {
            download_seconds: self.shared.lock().busy.as_secs_f64(),
            wait_seconds: self.waited.lock().map(|w| w.as_secs_f64()).unwrap_or(0.0),
        }
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Deletes cache files that are not among `keep` (complete or partial).
fn clean_cache(dir: &Path, keep: &[WantedVolume]) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Private: an unencrypted repository's volumes are the backup's contents.
            return std::os::unix::fs::DirBuilderExt::mode(
                fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(dir)
            .with_context(|| format!("cannot create cache {}", dir.display()));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read cache {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read cache {}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let base = name.strip_suffix(".part").unwrap_or(&name);
        if !keep.iter().any(|w| w.name == base) {
            let path = entry.path();
            fs::remove_file(&path)
                .or_else(|_| fs::remove_dir_all(&path))
                .with_context(|| format!("cannot clean cache entry {}", path.display()))?;
        }
    }
    Ok(())
}

/// Marks what the download threads did not get to when they end, however they end (even
/// by a panic), so the applier never waits for a download that will not come.
struct Finished<'a>(&'a Shared);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        for r in st.results.iter_mut().filter(|r| r.is_none()) {
            *r = Some(Err(anyhow!("the download thread stopped")));
        }
        self.0.changed.notify_all();
    }
}

impl Shared {
    /// Runs the download threads until every volume is had, one failed, or the fetcher
    /// is dropped.
    fn run(&self) {
        let _finished = Finished(self);
        std::thread::scope(|scope| {
            for n in 0..self.limit.min(self.wants.len()) {
                let spawned = std::thread::Builder::new()
                    .name(format!("download{n}"))
                    .spawn_scoped(scope, || self.download_in_turn());
                if spawned.is_err() && n == 0 {
                    return; // not even one: Finished reports it to the applier
                }
            }
        });
    }

    /// The next volume to download once there is room for it in the cache.
    fn claim(&self) -> Option<usize> {
        let mut st = self.lock();
        loop {
            if self.stop.load(Ordering::Relaxed) || st.failed || st.claimed >= self.wants.len() {
                return None;
            }
            if st.claimed - st.released < self.limit {
                st.claimed += 1;
                return Some(st.claimed - 1);
            }
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn download_in_turn(&self) {
        while let Some(i) = self.claim() {
            let started = Instant::now();
            let result = self.download(&self.wants[i]);
            let mut st = self.lock();
            st.busy += started.elapsed();
            st.failed |= result.is_err();
            st.results[i] = Some(result);
            self.changed.notify_all();
        }
    }

    /// Downloads one volume into the cache (resuming a partial file), checks its SHA1 and
    /// renames it into place; a mismatch is fetched once more from scratch.
    fn download(&self, want: &WantedVolume) -> Result<PathBuf> {
        // Listed names were checked already; the cache never joins anything else to its path.
        names::check(&want.name)
            .map_err(|fault| anyhow!("refusing to cache {} ({fault})", names::shown(&want.name)))?;
        let done = self.dir.join(&want.name);
        if done.is_file() {
            return Ok(done); // downloaded and checked by an earlier run
        }
        let part = self.dir.join(format!("{}.part", want.name));
        let mut again = false;
        loop {
            let actual = self.download_part(want, &part)?;
            if actual == want.sha1 {
                fs::rename(&part, &done)
                    .with_context(|| format!("cannot rename {}", part.display()))?;
                return Ok(done);
            }
            let bad = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
            let _ = fs::remove_file(&part);
            // Another source's copy first (several sources), else this one once more.
            let elsewhere = self.backend.distrust(&want.name);
            if again && !elsewhere {
                return Err(Error::HashMismatch {
                    name: want.name.clone(),
                    expected: want.sha1.clone(),
                    actual,
                }
                .into());
            }
            self.reporter.notice(&format!(
                "{}: SHA1 does not match the manifest; downloading it again{}",
                want.name,
                if elsewhere {
                    " from another source"
                } else {
                    ""
                }
            ));
            self.reporter.refetched(bad);
            again |= !elsewhere;
        }
    }

    /// Completes `part` from the source and returns the SHA1 of all of it.
    fn download_part(&self, want: &WantedVolume, part: &Path) -> Result<String> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(part)
            .with_context(|| format!("cannot write {}", part.display()))?;
        let have = file.metadata()?.len();
        let opened = self.backend.open(&want.name, have)?;
        // The source may start earlier than asked (no range support): keep only what
        // comes before its start, and hash that; the rest of the partial comes again.
        self.reporter.refetched(have - opened.offset);
        file.set_len(opened.offset)?;
        file.seek(SeekFrom::Start(0))?;
        let mut hasher = Sha1::new();
        let mut buf = vec![0u8; BUF_SIZE];
        let mut left = opened.offset;
        while left > 0 {
            let n = file.read(&mut buf[..BUF_SIZE.min(left as usize)])?;
            if n == 0 {
                bail!("{} shrank while being read", part.display());
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        let mut reader = opened.reader;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                bail!("download of {} stopped", want.name);
            }
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Keeps a typed cause inside the io::Error (a size bound) for the exit status.
                    return Err(
                        anyhow::Error::new(e).context(format!("cannot download {}", want.name))
                    );
                }
            };
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .with_context(|| format!("cannot write {}", part.display()))?;
        }
        Ok(hex::encode(hasher.finalize()))
    }
}

/// A downloaded volume being applied; its file leaves the cache when it is dropped.
struct CachedVolume {
    file: File,
    path: PathBuf,
    shared: Arc<Shared>,
}

impl Read for CachedVolume {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Drop for CachedVolume {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        let mut st = self.shared.lock();
        st.released += 1;
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::faulty::{Faults, FaultyBackend};
    use crate::source::meter::Meter;
    use crate::source::retry::RetryBackend;
    use crate::source::MemoryBackend;

    /// Three volumes of 70,000, 1 and 300,000 bytes.
    fn volumes() -> Vec<(String, Vec<u8>)> {
        [70_000usize, 1, 300_000]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let data = (0..n).map(|j| (j * (i + 3) % 253) as u8).collect();
                (format!("v{}", i + 1), data)
            })
            .collect()
    }

    struct Setup {
        backend: Arc<dyn Backend>,
        reporter: Arc<Reporter>,
        wants: Vec<WantedVolume>,
        cache: tempfile::TempDir,
    }

    /// The volumes behind `faults` and a retry layer that does not wait.
    fn setup(faults: Faults) -> Setup {
        let memory = MemoryBackend::new("test");
        let mut wants = Vec::new();
        for (name, data) in volumes() {
            wants.push(WantedVolume {
                name: name.clone(),
                size: Some(data.len() as u64),
                sha1: hex::encode(Sha1::digest(&data)),
            });
            memory.insert(&name, data);
        }
        let reporter = Arc::new(Reporter::default());
        let retry = RetryBackend::new(
            Box::new(FaultyBackend::new(Box::new(memory), faults)),
            3,
            Arc::new(Meter::new(None, reporter.clone())),
        )
        .without_waiting();
        retry.list().unwrap();
        Setup {
            backend: Arc::new(retry),
            reporter,
            wants,
            cache: tempfile::tempdir().unwrap(),
        }
    }

    impl Setup {
        fn start(&self) -> Fetcher {
            Fetcher::start(
                self.backend.clone(),
                self.reporter.clone(),
                self.wants.clone(),
                self.cache.path(),
                2,
            )
            .unwrap()
        }

        /// Takes every volume in order and checks its bytes.
        fn take_all(&self, fetcher: &Fetcher) -> Result<()> {
            for (name, data) in volumes() {
                let mut reader = fetcher.take(&name).expect("a planned volume")?;
                let mut got = Vec::new();
                reader.read_to_end(&mut got)?;
                assert!(got == data, "{name}: other bytes");
            }
            Ok(())
        }

        fn cache_files(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(self.cache.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    const TOTAL: u64 = 370_001;

    #[test]
    fn downloads_in_order_through_cuts_and_failed_opens() {
        let s = setup(Faults {
            failing_opens: 2,
            cut_after: Some(25_000),
            ..Faults::default()
        });
        let fetcher = s.start();
        s.take_all(&fetcher).unwrap();
        assert!(fetcher.take("v9").is_none(), "not a planned volume");
        drop(fetcher);
        assert!(
            s.cache_files().is_empty(),
            "applied volumes leave the cache"
        );
        let t = s.reporter.transfer();
        assert_eq!((t.bytes_downloaded, t.bytes_refetched), (TOTAL, 0));
        assert_eq!(t.files_fetched, 3);
        assert!(t.retries >= 2 + 300_000 / 25_000, "{t:?}");
    }

    #[test]
    fn a_partial_download_resumes_where_it_stopped() {
        let s = setup(Faults::default());
        let (_, v1) = &volumes()[0];
        fs::write(s.cache.path().join("v1.part"), &v1[..30_000]).unwrap();
        s.take_all(&s.start()).unwrap();
        let t = s.reporter.transfer();
        assert_eq!(
            (t.bytes_resumed, t.bytes_downloaded),
            (30_000, TOTAL - 30_000)
        );
    }

    #[test]
    fn a_partial_download_that_does_not_match_is_fetched_again() {
        let s = setup(Faults::default());
        fs::write(s.cache.path().join("v1.part"), vec![7u8; 30_000]).unwrap();
        s.take_all(&s.start()).unwrap();
        let t = s.reporter.transfer();
        assert_eq!(t.bytes_refetched, 70_000, "the whole damaged file");
        assert_eq!(t.bytes_downloaded, TOTAL - 30_000 + 70_000);
    }

    #[test]
    fn a_damaged_download_is_fetched_once_more_then_refused() {
        let s = setup(Faults {
            damaged: Some(("v3".into(), 1)),
            ..Faults::default()
        });
        s.take_all(&s.start()).unwrap();
        assert_eq!(s.reporter.transfer().bytes_refetched, 300_000);

        let s = setup(Faults {
            damaged: Some(("v3".into(), 2)),
            ..Faults::default()
        });
        let fetcher = s.start();
        let err = s.take_all(&fetcher).unwrap_err();
        assert!(
            matches!(err.downcast_ref(), Some(Error::HashMismatch { name, .. }) if name == "v3"),
            "{err:#}"
        );
    }

    #[test]
    fn an_earlier_run_leaves_what_is_still_wanted() {
        let s = setup(Faults::default());
        let (_, v1) = &volumes()[0];
        fs::write(s.cache.path().join("v1"), v1).unwrap(); // complete and checked
        fs::write(s.cache.path().join("old.part"), b"x").unwrap();
        fs::write(s.cache.path().join("older"), b"x").unwrap();
        let fetcher = s.start();
        s.take_all(&fetcher).unwrap();
        drop(fetcher);
        assert!(s.cache_files().is_empty());
        assert_eq!(s.reporter.transfer().bytes_downloaded, TOTAL - 70_000);
    }
}
