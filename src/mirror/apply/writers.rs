//! The writer pool of a fresh build read in order: a few threads that make the staged
//! files and special objects, so that creating them (what a bootstrap on a real disk waits
//! for) overlaps with decoding and with each other. (A first sync that decodes volumes
//! apart makes its files on its decoders' threads instead: an empty pool, jobs run inline;
//! see fresh.rs.)
//!
//! ```text
//! apply thread (fresh.rs), records in index order:
//!     directory        -> mkdirat itself, before anything is queued in it (parents first)
//!     small file       -> its bytes (at most INLINE) read into a buffer, queued with the
//!                         handle of its folder
//!     bigger file, or a chunk run across volumes -> written by the apply thread itself,
//!                         streaming: no file is ever held in memory whole
//!     special object   -> queued
//!     folder complete  -> released; whoever finishes its last job (a writer, or the apply
//!                         thread when none is left) gives it its attributes, so a folder's
//!                         mode and mtime always come after every entry made in it
//! writer: take a job; create the object private (0600) through the folder's handle; its
//!     bytes; owner, mode, mtime by descriptor
//! the first error of any writer fails the set: later jobs are dropped unrun, the apply
//!     thread stops at its next record, and the pool is joined before staging is removed
//! ```
//!
//! Memory stays flat: at most `BUDGET` bytes of file data are queued (the apply thread
//! waits for room), and at most `QUEUE` jobs. Pool size: `DUPMIRROR_WRITERS` when set
//! (0 makes everything on the apply thread), else the number of cores, at most 4. Limits:
//! a folder's handle stays open while jobs in it are queued, so open descriptors grow with
//! `QUEUE`, not with the tree.

use crate::dest::dir::Dir;
use crate::dest::fsops::{self, Attrs, NewFiles};
use crate::meta::Metadata;
use anyhow::{anyhow, Result};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Files up to this size are queued whole; bigger ones stream on the apply thread.
pub const INLINE: usize = 256 * 1024;
/// File bytes queued at most.
const BUDGET: usize = 4 * 1024 * 1024;
/// Jobs queued at most.
const QUEUE: usize = 512;
/// Writers when `DUPMIRROR_WRITERS` does not say.
const MAX_DEFAULT_WRITERS: usize = 4;

/// How the threads of one build create entries: one at a time when a disk is behind the
/// staged tree, freely when it is in memory.
///
/// Why one at a time: ext4 fills a new inode's block of the inode table without reading it
/// from the disk only while no other inode of that block is in use. Two threads creating
/// at once in one block group take neighbouring inodes, and one of them must then read the
/// block; behind the early writeback (`dest::writeback`) that read waits for the data
/// queued before it: a bootstrap on a fresh ext4 waited so 274 times (docs/bench.md). On
/// tmpfs the lock would only cost (8%), so none is taken there. The lock is the build's:
/// two builds at once (a fleet run) do not share it. A thread that finds it taken spins
/// for a while before it sleeps (see [`SPIN`]).
pub struct Creations(Option<Mutex<()>>);

impl Creations {
    /// One at a time when `on_disk`, else freely.
    pub fn new(on_disk: bool) -> Creations {
        Creations(on_disk.then(|| Mutex::new(())))
    }

    fn make<T>(&self, create: impl FnOnce() -> T) -> T {
        let _one = self.0.as_ref().map(lock_spinning);
        create()
    }
}

/// How long a thread spins for the creation lock before it sleeps. A creation holds the
/// lock for tens of microseconds, while a thread put to sleep for it took 140 µs on
/// average to run again (a halted virtual CPU is slow to wake), its core idle meanwhile:
/// on a fresh ext4, spinning cut the machine's idle time by a third (docs/bench.md).
const SPIN: Duration = Duration::from_micros(200);

fn lock_spinning(lock: &Mutex<()>) -> MutexGuard<'_, ()> {
    let mut since = None;
    loop {
        match lock.try_lock() {
            Ok(held) => return held,
            Err(TryLockError::Poisoned(held)) => return held.into_inner(),
            Err(TryLockError::WouldBlock) => {}
        }
        if since.get_or_insert_with(Instant::now).elapsed() >= SPIN {
            return lock.lock().unwrap_or_else(PoisonError::into_inner);
        }
        for _ in 0..32 {
            std::hint::spin_loop();
        }
    }
}

/// A folder of the staged tree while entries are made in it.
pub struct Folder {
    pub dir: Dir,
    /// Its own attributes, given once every entry in it is made (none for the staged
    /// tree's root and for folders made only as parents).
    attrs: Option<Attrs>,
    /// Jobs in it not yet done, plus one while the apply thread may still add entries.
    pending: AtomicUsize,
    /// The tree's, shared by all its folders.
    creations: Arc<Creations>,
}

impl Folder {
    /// The staged tree's root.
    pub fn root(dir: Dir, creations: Creations) -> Arc<Folder> {
        Arc::new(Folder {
            dir,
            attrs: None,
            pending: AtomicUsize::new(1),
            creations: Arc::new(creations),
        })
    }

    /// A folder below this one, `dir` as made by [`Folder::create`].
    pub fn subfolder(&self, dir: Dir, attrs: Option<Attrs>) -> Arc<Folder> {
        Arc::new(Folder {
            dir,
            attrs,
            pending: AtomicUsize::new(1),
            creations: Arc::clone(&self.creations),
        })
    }

    /// Runs `create`, which makes an entry in this folder through its handle, as the
    /// tree's [`Creations`] say.
    pub fn create<T>(&self, create: impl FnOnce(&Dir) -> T) -> T {
        self.creations.make(|| create(&self.dir))
    }

    /// Whether it has attributes of its own to get (it was made from its record).
    pub fn has_attrs(&self) -> bool {
        self.attrs.is_some()
    }

    /// The apply thread is done with it and no job in it is queued (no pool): its
    /// attributes now.
    pub fn close(&self) -> Result<()> {
        self.release(true)
    }

    /// One job (or the apply thread) is done with it: the last one sets its attributes.
    fn release(&self, apply: bool) -> Result<()> {
        if self.pending.fetch_sub(1, Ordering::AcqRel) != 1 || !apply {
            return Ok(());
        }
        match &self.attrs {
            Some(attrs) => attrs.apply_to_dir(&self.dir),
            None => Ok(()),
        }
    }
}

/// An object for a writer to make in `folder`.
pub struct Job {
    pub folder: Arc<Folder>,
    pub name: Vec<u8>,
    pub attrs: Attrs,
    pub what: Made,
}

pub enum Made {
    /// A regular file and all its bytes.
    File(Vec<u8>),
    /// A symlink, fifo or device.
    Special(Metadata),
}

impl Job {
    fn bytes(&self) -> usize {
        match &self.what {
            Made::File(b) => b.len(),
            Made::Special(_) => 0,
        }
    }

    fn run(&self, new_files: &NewFiles) -> Result<()> {
        let dir = &self.folder.dir;
        match &self.what {
            Made::File(bytes) => {
                let mut file = self.folder.create(|d| d.create_file(&self.name))?;
                let shown = dir.show(&self.name);
                file.write_all(bytes)
                    .map_err(|e| anyhow!("cannot write {}: {e}", shown.display()))?;
                self.attrs.apply_to_new(&file, &shown, new_files)
            }
            Made::Special(meta) => {
                self.folder
                    .create(|d| fsops::create_special(d, &self.name, meta))?;
                self.attrs.apply(dir, &self.name)
            }
        }
    }
}

/// What the apply thread and the writers share.
struct Shared {
    /// File bytes that may still be queued.
    room: Mutex<usize>,
    freed: Condvar,
    failed: AtomicBool,
    first_error: Mutex<Option<anyhow::Error>>,
}

impl Shared {
    fn room(&self) -> MutexGuard<'_, usize> {
        self.room.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fail(&self, e: anyhow::Error) {
        let mut first = self
            .first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if first.is_none() {
            *first = Some(e);
        }
        self.failed.store(true, Ordering::Release);
        drop(first);
        let _room = self.room();
        self.freed.notify_all();
    }

    fn take_error(&self) -> anyhow::Error {
        self.first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_else(|| anyhow!("a writer thread failed"))
    }
}

/// The pool; with no threads, every job runs on the calling thread.
pub struct Writers {
    queue: Option<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    new_files: NewFiles,
}

impl Writers {
    /// The pool size: `DUPMIRROR_WRITERS`, else the number of cores (at most 4).
    pub fn default_size() -> Result<usize> {
        crate::threads::count_from_env("DUPMIRROR_WRITERS", 0, MAX_DEFAULT_WRITERS)
    }

    pub fn start(size: usize, new_files: NewFiles) -> Result<Writers> {
        let shared = Arc::new(Shared {
            room: Mutex::new(BUDGET),
            freed: Condvar::new(),
            failed: AtomicBool::new(false),
            first_error: Mutex::new(None),
        });
        let mut pool = Writers {
            queue: None,
            threads: Vec::new(),
            shared,
            new_files,
        };
        if size == 0 {
            return Ok(pool);
        }
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..size {
            let (rx, shared) = (Arc::clone(&rx), Arc::clone(&pool.shared));
            let spawned = std::thread::Builder::new()
                .name(format!("writer-{n}"))
                .spawn(move || work(&rx, &shared, &new_files));
            match spawned {
                Ok(t) => pool.threads.push(t),
                Err(e) => return Err(anyhow!("cannot start a writer thread: {e}")),
            }
        }
        pool.queue = Some(tx);
        Ok(pool)
    }

    /// Whether jobs run on other threads (else small files are better streamed directly).
    pub fn is_parallel(&self) -> bool {
        self.queue.is_some()
    }

    /// The first error of any writer, as soon as there is one.
    pub fn check(&self) -> Result<()> {
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(self.shared.take_error());
        }
        Ok(())
    }

    /// Queues a job (waiting for room), or runs it here without a pool.
    pub fn submit(&self, job: Job) -> Result<()> {
        job.folder.pending.fetch_add(1, Ordering::AcqRel);
        let Some(queue) = &self.queue else {
            let done = job.run(&self.new_files);
            job.folder.release(done.is_ok())?;
            return done;
        };
        let need = job.bytes();
        {
            let mut room = self.shared.room();
            while *room < need && !self.shared.failed.load(Ordering::Acquire) {
                room = self
                    .shared
                    .freed
                    .wait(room)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            *room -= need.min(*room);
        }
        self.check()?;
        queue
            .send(job)
            .map_err(|_| anyhow!("the writer threads stopped"))?;
        Ok(())
    }

    /// The apply thread is done with `folder`: its attributes follow its last entry.
    pub fn close(&self, folder: &Folder) -> Result<()> {
        folder.release(!self.shared.failed.load(Ordering::Acquire))
    }

    /// Waits for every job; the first error of any writer.
    pub fn finish(mut self) -> Result<()> {
        self.stop();
        self.check()
    }

    fn stop(&mut self) {
        self.queue = None; // the writers end when the queue is empty and closed
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                self.shared.fail(anyhow!("a writer thread panicked"));
            }
        }
    }
}

impl Drop for Writers {
    /// Joined before anything else goes (staging is removed after a failed set).
    fn drop(&mut self) {
        self.stop();
    }
}

fn work(rx: &Mutex<Receiver<Job>>, shared: &Shared, new_files: &NewFiles) {
    loop {
        let job = match rx.lock().unwrap_or_else(PoisonError::into_inner).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        let ok = !shared.failed.load(Ordering::Acquire);
        let done = if ok { job.run(new_files) } else { Ok(()) };
        let need = job.bytes();
        let released = job
            .folder
            .release(ok && done.is_ok() && !shared.failed.load(Ordering::Acquire));
        if let Err(e) = done.and(released) {
            shared.fail(e);
        }
        drop(job);
        *shared.room() += need;
        shared.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn attrs(mode: u32, mtime: i64) -> Attrs {
        Attrs {
            mode,
            owner: None,
            mtime,
            symlink: false,
        }
    }

    fn file(folder: &Arc<Folder>, name: &str, bytes: &[u8]) -> Job {
        Job {
            folder: Arc::clone(folder),
            name: name.as_bytes().to_vec(),
            attrs: attrs(0o644, 1_000),
            what: Made::File(bytes.to_vec()),
        }
    }

    #[test]
    fn a_folder_gets_its_attributes_after_its_last_entry() {
        let t = tempfile::tempdir().unwrap();
        let root = Dir::open_path(t.path()).unwrap();
        let staging = NewFiles::probe(&root);
        for (size, on_disk) in [(0, false), (1, true), (3, false), (3, true)] {
            let made = root
                .create_dir(format!("w{size}{on_disk}").as_bytes(), 0o700)
                .unwrap();
            let folder = Folder::root(root.try_clone().unwrap(), Creations::new(on_disk))
                .subfolder(made, Some(attrs(0o555, 12_345)));
            let pool = Writers::start(size, staging).unwrap();
            for i in 0..300 {
                pool.submit(file(&folder, &format!("f{i}"), &vec![i as u8; i * 100]))
                    .unwrap();
            }
            pool.close(&folder).unwrap();
            pool.finish().unwrap();
            let dir = t.path().join(format!("w{size}{on_disk}"));
            let meta = std::fs::metadata(&dir).unwrap();
            assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o555, 12_345));
            for i in 0..300 {
                let f = dir.join(format!("f{i}"));
                assert_eq!(std::fs::read(&f).unwrap(), vec![i as u8; i * 100]);
                let m = std::fs::metadata(&f).unwrap();
                assert_eq!((m.mode() & 0o7777, m.mtime()), (0o644, 1_000));
            }
        }
    }

    #[test]
    fn the_first_error_of_any_writer_fails_the_set() {
        let t = tempfile::tempdir().unwrap();
        let root = Dir::open_path(t.path()).unwrap();
        let made = root.create_dir(b"w", 0o700).unwrap();
        std::fs::write(t.path().join("w/taken"), b"x").unwrap();
        let folder = Folder::root(root.try_clone().unwrap(), Creations::new(true))
            .subfolder(made, Some(attrs(0o555, 12_345)));
        let pool = Writers::start(2, NewFiles::probe(&root)).unwrap();
        let mut refused = None;
        for i in 0..2000 {
            let name = if i == 5 {
                "taken".to_string()
            } else {
                format!("f{i}")
            };
            if let Err(e) = pool.submit(file(&folder, &name, b"data")) {
                refused = Some(e);
                break;
            }
        }
        let _ = pool.close(&folder);
        let e = refused.unwrap_or_else(|| pool.finish().unwrap_err());
        assert!(format!("{e:#}").contains("taken"), "{e:#}");
        // The folder never got its final attributes: the set failed.
        let meta = std::fs::metadata(t.path().join("w")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o700);
    }
}
