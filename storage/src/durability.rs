//! Group commit across logs: one thread makes appended data durable for
//! every log opened with the same `GroupCommit` handle, in rounds.
//!
//! A produce request for 16 partitions used to wait for 16 `fdatasync`
//! calls, one per segment file, issued from 16 blocking-pool threads; each
//! is a writeback, an inode write and a device cache flush of its own. Here
//! every waiter (any partition, any request) queues its segment file; the
//! committer takes whatever has queued while the previous round ran and
//! makes it durable at once, each file once however many waiters share it.
//!
//! By default a round `fdatasync`s its files one after another (less CPU
//! than parallel calls). `Syncfs` instead syncs a filesystem once when a
//! round covers several of its files: one writeback and one device flush
//! for all (about 2x the throughput and a quarter of the CPU for 16 small
//! appends, bench/scripts/sync-strategies.py). But syncfs also waits for
//! everything else dirty or under writeback on that filesystem: on the
//! project machine, whose data dir shares the root filesystem, single
//! rounds took up to 0.64 s against 18 ms with fdatasync (bench/README.md),
//! so it is for a filesystem dedicated to the data dir.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStrategy {
    /// One `syncfs` per filesystem per round when a round covers several files.
    Syncfs,
    /// `fdatasync` of every file in the round.
    Fdatasync,
}

/// A group committer: its queue, its thread (started at the first sync,
/// then kept for the process's life), how it makes rounds durable and how
/// many it ran. Logs opened with clones of one handle share its rounds; a
/// broker makes one for all its logs.
#[derive(Clone)]
pub struct GroupCommit {
    committer: Arc<Committer>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").field("strategy", &self.committer.strategy).finish_non_exhaustive()
    }
}

impl GroupCommit {
    pub fn new(strategy: SyncStrategy) -> GroupCommit {
        GroupCommit {
            committer: Arc::new(Committer {
                queue: Mutex::default(),
                wake: Condvar::new(),
                strategy,
                rounds: AtomicU64::new(0),
                thread: OnceLock::new(),
            }),
        }
    }

    /// The committer of logs opened without one (tests, tools): fdatasync,
    /// the safe choice on a shared filesystem.
    pub fn shared_default() -> GroupCommit {
        static DEFAULT: OnceLock<GroupCommit> = OnceLock::new();
        DEFAULT.get_or_init(|| GroupCommit::new(SyncStrategy::Fdatasync)).clone()
    }

    pub fn strategy(&self) -> SyncStrategy {
        self.committer.strategy
    }

    /// Rounds this committer has run.
    pub fn rounds(&self) -> u64 {
        self.committer.rounds.load(Ordering::Relaxed)
    }

    /// Waits until `target.file` is durable up to `target.end`.
    pub(crate) async fn sync(&self, target: Target) -> std::io::Result<()> {
        if crate::disk::sim::active() {
            if let Some((delay, pending)) = crate::disk::sim::begin_sync(&target.file)? {
                // A simulated disk: no thread (the simulation's scheduler must see every
                // wake-up), the sync's duration in simulated time, and durable only what was
                // written when it began.
                tokio::time::sleep(delay).await;
                if let Some(p) = pending {
                    crate::disk::sim::complete(p)?;
                }
                target.flushed.raise(target.end, target.generation);
                target.rounds.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        let c = &self.committer;
        let started = c.thread.get_or_init(|| {
            let run = c.clone();
            std::thread::Builder::new().name("fjord-commit".into()).spawn(move || run.run()).map(|_| ()).map_err(|e| {
                tracing::error!(error = %e, "cannot start the group-commit thread");
                e.kind()
            })
        });
        if let Err(kind) = started {
            return Err(std::io::Error::new(*kind, "the group-commit thread could not start"));
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut q = c.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.push(Waiter { target, done: tx });
            // The committer only sleeps on an empty queue: a waiter joining a
            // non-empty one needs no wake-up (no futex call per request).
            if q.len() == 1 {
                c.wake.notify_one();
            }
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err((kind, msg))) => Err(std::io::Error::new(kind, msg)),
            Err(_) => Err(std::io::Error::other("the group-commit thread is gone")),
        }
    }
}

/// A log's flushed offset: below it everything is known durable. A truncation lowers it, and a
/// sync round that started before the truncation must not raise it again past the new end
/// (the round synced data that is gone): each cut bumps a generation, and a round raises the
/// offset only if the generation it started under is still current, checked under the same
/// lock the cut takes.
#[derive(Debug)]
pub(crate) struct Flushed {
    offset: AtomicI64,
    cuts: Mutex<u64>,
}

impl Flushed {
    pub fn new(offset: i64) -> Flushed {
        Flushed { offset: AtomicI64::new(offset), cuts: Mutex::new(0) }
    }

    pub fn get(&self) -> i64 {
        self.offset.load(Ordering::Acquire)
    }

    fn cuts(&self) -> std::sync::MutexGuard<'_, u64> {
        self.cuts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation a sync starting now runs under.
    pub fn generation(&self) -> u64 {
        *self.cuts()
    }

    /// Raises the offset to `end`, unless the log was cut since `generation`.
    pub fn raise(&self, end: i64, generation: u64) {
        let cuts = self.cuts();
        if *cuts == generation {
            self.offset.fetch_max(end, Ordering::AcqRel);
        }
    }

    /// The log now ends at `end` (truncated or reset): the offset is set to `end` if it was
    /// past it (or always, with `exact`: a reset to a later offset), and syncs under way no
    /// longer count.
    pub fn cut(&self, end: i64, exact: bool) {
        let mut cuts = self.cuts();
        *cuts += 1;
        if exact {
            self.offset.store(end, Ordering::Release);
        } else {
            self.offset.fetch_min(end, Ordering::AcqRel);
        }
    }
}

/// A file to make durable up to `end`; `flushed` is raised to `end` after, if no cut came
/// between (`Flushed`).
pub(crate) struct Target {
    pub file: Arc<File>,
    /// The filesystem it lives on (`st_dev`).
    pub dev: u64,
    pub end: i64,
    pub flushed: Arc<Flushed>,
    /// `flushed`'s generation when `end` was read.
    pub generation: u64,
    /// Rounds that covered this log (tests and metrics).
    pub rounds: Arc<AtomicU64>,
}

struct Waiter {
    target: Target,
    done: oneshot::Sender<Result<(), (std::io::ErrorKind, String)>>,
}

struct Committer {
    queue: Mutex<Vec<Waiter>>,
    wake: Condvar,
    strategy: SyncStrategy,
    rounds: AtomicU64,
    /// Set once the thread is started (or failed to start).
    thread: OnceLock<Result<(), std::io::ErrorKind>>,
}

impl Committer {
    fn run(&self) {
        loop {
            let round = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                while q.is_empty() {
                    q = self.wake.wait(q).unwrap_or_else(|p| p.into_inner());
                }
                std::mem::take(&mut *q)
            };
            let started = std::time::Instant::now();
            let result = flush(&round, self.strategy).map_err(|e| (e.kind(), e.to_string()));
            metrics::histogram!("fjord_group_commit_seconds").record(started.elapsed().as_secs_f64());
            self.rounds.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("fjord_log_fsyncs_total").increment(1);
            let mut counted: Vec<*const AtomicU64> = Vec::new();
            for w in round {
                if result.is_ok() {
                    w.target.flushed.raise(w.target.end, w.target.generation);
                    let log = Arc::as_ptr(&w.target.rounds);
                    if !counted.contains(&log) {
                        counted.push(log);
                        w.target.rounds.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let _ = w.done.send(result.clone());
            }
        }
    }
}

/// Makes every file of the round durable (each file once, however many
/// waiters share it).
fn flush(round: &[Waiter], strategy: SyncStrategy) -> std::io::Result<()> {
    let mut by_dev: HashMap<u64, Vec<&Arc<File>>> = HashMap::new();
    for w in round {
        let files = by_dev.entry(w.target.dev).or_default();
        if !files.iter().any(|f| Arc::ptr_eq(f, &w.target.file)) {
            files.push(&w.target.file);
        }
    }
    let per_file = strategy == SyncStrategy::Fdatasync;
    for files in by_dev.values() {
        if files.len() > 1 && !per_file {
            // SAFETY: a plain syscall on a descriptor the Arc keeps open.
            // Since Linux 5.8 syncfs reports writeback errors of the
            // filesystem since the descriptor was opened.
            if unsafe { libc::syncfs(files[0].as_raw_fd()) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        } else {
            for f in files {
                f.sync_data()?;
            }
        }
    }
    Ok(())
}

/// Makes everything written to `dir`'s filesystem durable with one `syncfs`:
/// a clean shutdown's sync of every log at once. Open `dir` early (at
/// start): syncfs reports the writeback errors since it was opened.
pub fn sync_filesystem(dir: &File) -> std::io::Result<()> {
    // SAFETY: a plain syscall on a descriptor the caller keeps open.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
