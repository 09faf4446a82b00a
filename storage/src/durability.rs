//! Group commit across logs: one thread makes appended data durable for
//! every log of the process, in rounds.
//!
//! A produce request for 16 partitions used to wait for 16 `fdatasync`
//! calls, one per segment file, issued from 16 blocking-pool threads; each
//! is a writeback, an inode write and a device cache flush of its own. Here
//! every waiter (any partition, any request) queues its segment file; the
//! committer takes whatever has queued while the previous round ran and
//! makes it durable at once. With more than one file on a filesystem in a
//! round it calls `syncfs` once: the kernel writes all of them back
//! together and flushes the device once (about 2x the throughput and a
//! quarter of the CPU of parallel `fdatasync` calls for 16 small appends,
//! measured on the project machine; bench/README.md). `syncfs` also writes
//! back whatever else is dirty on that filesystem, which is why the
//! strategy is configurable: on a filesystem shared with heavy writers,
//! `Fdatasync` syncs each file instead (still one round for all waiters).

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use tokio::sync::oneshot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStrategy {
    /// One `syncfs` per filesystem per round when a round covers several files.
    Syncfs,
    /// `fdatasync` of every file in the round.
    Fdatasync,
}

static USE_FDATASYNC: AtomicBool = AtomicBool::new(false);
static ROUNDS: AtomicU64 = AtomicU64::new(0);

/// Group-commit rounds this process has run.
pub fn rounds() -> u64 {
    ROUNDS.load(Ordering::Relaxed)
}

/// Chooses how rounds are made durable, for the whole process.
pub fn set_strategy(s: SyncStrategy) {
    USE_FDATASYNC.store(s == SyncStrategy::Fdatasync, Ordering::Relaxed);
}

/// A file to make durable up to `end`; `flushed` is raised to `end` after.
pub(crate) struct Target {
    pub file: Arc<File>,
    /// The filesystem it lives on (`st_dev`).
    pub dev: u64,
    pub end: i64,
    pub flushed: Arc<AtomicI64>,
    /// Rounds that covered this log (tests and metrics).
    pub rounds: Arc<AtomicU64>,
}

struct Waiter {
    target: Target,
    done: oneshot::Sender<Result<(), (std::io::ErrorKind, String)>>,
}

#[derive(Default)]
struct Committer {
    queue: Mutex<Vec<Waiter>>,
    wake: Condvar,
}

fn committer() -> &'static Committer {
    static C: OnceLock<&'static Committer> = OnceLock::new();
    C.get_or_init(|| {
        let c: &'static Committer = Box::leak(Box::default());
        std::thread::Builder::new()
            .name("fjord-commit".into())
            .spawn(move || c.run())
            .expect("cannot start the group-commit thread");
        c
    })
}

/// Waits until `target.file` is durable up to `target.end`.
pub(crate) async fn sync(target: Target) -> std::io::Result<()> {
    let (tx, rx) = oneshot::channel();
    {
        let c = committer();
        c.queue.lock().unwrap_or_else(|p| p.into_inner()).push(Waiter { target, done: tx });
        c.wake.notify_one();
    }
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err((kind, msg))) => Err(std::io::Error::new(kind, msg)),
        Err(_) => Err(std::io::Error::other("the group-commit thread is gone")),
    }
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
            let result = flush(&round).map_err(|e| (e.kind(), e.to_string()));
            metrics::histogram!("fjord_group_commit_seconds").record(started.elapsed().as_secs_f64());
            ROUNDS.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("fjord_log_fsyncs_total").increment(1);
            let mut counted: Vec<*const AtomicU64> = Vec::new();
            for w in round {
                if result.is_ok() {
                    w.target.flushed.fetch_max(w.target.end, Ordering::AcqRel);
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
fn flush(round: &[Waiter]) -> std::io::Result<()> {
    let mut by_dev: HashMap<u64, Vec<&Arc<File>>> = HashMap::new();
    for w in round {
        let files = by_dev.entry(w.target.dev).or_default();
        if !files.iter().any(|f| Arc::ptr_eq(f, &w.target.file)) {
            files.push(&w.target.file);
        }
    }
    let per_file = USE_FDATASYNC.load(Ordering::Relaxed);
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
