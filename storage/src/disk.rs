//! The seam between the log and its disk's durability. Every write a crash could undo, and
//! every sync that decides what a crash keeps, goes through here: in production they are the
//! plain system calls (behind one relaxed load).
//!
//! Under a simulation (`sim::attach` on a directory) the files below that directory keep, for
//! each 512-byte sector written since its file was last synced, what the sector held when it
//! was last durable; syncs record durability instead of calling fsync; and `sim::crash` undoes
//! a seeded choice of the unsynced sectors, as a power cut would: all of them, all but a
//! prefix (a torn append), or any subset (the disk wrote later sectors before earlier ones).
//!
//! Modelled: data written with `write_at` (segments, Raft sidecar rows, the committed record).
//! Treated as durable at once: file creation, renames, removal and length changes (the log
//! syncs its directory and truncations before it relies on them), files written whole and
//! synced before a rename (`write_atomic`), and memory-mapped offset and time indexes (rebuilt
//! from the segment for an active segment after a crash).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Writes all of `data` at `offset`.
pub fn write_at(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    if sim::active() {
        sim::before_write(file, offset, data)?;
    }
    file.write_all_at(data, offset)
}

/// What `write_at` records before a write, for a write of several slices from `offset` on
/// (`pwritev`): the simulation must see these writes too, or a crash would neither undo them
/// nor keep sectors they share with modelled writes right.
pub fn before_vectored_write(file: &File, slices: &[std::io::IoSlice<'_>], offset: u64) -> io::Result<()> {
    if sim::active() {
        let mut at = offset;
        for s in slices {
            sim::before_write(file, at, s)?;
            at += s.len() as u64;
        }
    }
    Ok(())
}

/// Allocates disk blocks for `[offset, offset + len)` without changing the file's length or
/// contents (`fallocate` with no flags, within the length). Not modelled by the simulation: the
/// bytes read the same before and after.
pub fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    if len == 0 {
        return Ok(());
    }
    // SAFETY: a plain syscall on an open descriptor; it reads no memory of ours.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `fdatasync`.
pub fn sync_data(file: &File) -> io::Result<()> {
    if sim::active() && sim::sync(file)? {
        return Ok(());
    }
    timed(|| file.sync_data())
}

/// Runs a sync, recording how long the device took (`fjord_fsync_seconds`, what operators
/// alert on when a disk degrades).
fn timed(sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    let started = std::time::Instant::now();
    let r = sync();
    metrics::histogram!("fjord_fsync_seconds").record(started.elapsed().as_secs_f64());
    r
}

/// `fsync`.
pub fn sync_all(file: &File) -> io::Result<()> {
    if sim::active() && sim::sync(file)? {
        return Ok(());
    }
    timed(|| file.sync_all())
}

pub mod sim {
    //! The simulated disk (see the module above).

    use std::collections::BTreeMap;
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileExt, MetadataExt};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Mutex, MutexGuard};
    use std::time::Duration;

    const SECTOR: u64 = 512;

    static ACTIVE: AtomicBool = AtomicBool::new(false);
    static STATE: Mutex<State> = Mutex::new(State { disks: Vec::new(), files: BTreeMap::new(), seq: 0 });

    /// How one simulated disk behaves.
    #[derive(Clone, Debug, Default)]
    pub struct Options {
        /// How long a group-commit sync takes (simulated time: a tokio sleep).
        pub sync_delay: Duration,
        /// A planted bug for checkers: syncs report success and make nothing durable.
        pub lose_syncs: bool,
    }

    /// What a crash undid.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct Crash {
        /// Files that had unsynced writes.
        pub files: usize,
        /// Sectors put back to what they held when last durable.
        pub sectors_lost: usize,
        /// Sectors written since the last sync that the crash kept.
        pub sectors_kept: usize,
    }

    struct Disk {
        root: PathBuf,
        options: Options,
    }

    /// A sector written since its file was last synced. `durable_at` and `written_at` are
    /// points of the process-wide sequence (`State::seq`), so syncs that overlap, complete out
    /// of order or began before a full sync never take durability back.
    struct Sector {
        /// What it held when last durable.
        durable: Vec<u8>,
        /// As of when `durable` is what the disk holds.
        durable_at: u64,
        /// What it holds now (kept here, so a sync reads nothing back).
        current: Vec<u8>,
        /// When it was last written.
        written_at: u64,
    }

    /// A file under a simulated directory.
    struct Tracked {
        /// A descriptor of its own (`reopen`): the file's inode cannot be reused while it is
        /// open, so the key stays this file's, and a crash can undo writes to a file renamed
        /// since.
        file: File,
        path: PathBuf,
        /// The file's length when it was last durable, and as of when.
        durable_len: u64,
        durable_len_at: u64,
        sectors: BTreeMap<u64, Sector>,
    }

    /// A tracked file's key (device, inode), its length now, and its disk's options.
    type Found = ((u64, u64), u64, Options);

    /// Files kept known (their descriptors open) before the clean ones are forgotten.
    const KEEP_CLEAN: usize = 512;

    struct State {
        disks: Vec<Disk>,
        /// By (device, inode).
        files: BTreeMap<(u64, u64), Tracked>,
        /// Counts writes and syncs (see `Sector`).
        seq: u64,
    }

    impl State {
        fn disk(&self, path: &Path) -> Option<&Disk> {
            self.disks.iter().find(|d| path.starts_with(&d.root))
        }

        /// `file`'s key, its length now and its disk's options, if it lies under a simulated
        /// directory (then it is tracked from now on).
        fn lookup(&mut self, file: &File) -> io::Result<Option<Found>> {
            let m = file.metadata()?;
            let (k, len) = ((m.dev(), m.ino()), m.len());
            if let Some(t) = self.files.get(&k) {
                return Ok(self.disk(&t.path).map(|d| (k, len, d.options.clone())));
            }
            let Some(path) = path_of(file) else { return Ok(None) };
            let Some(options) = self.disk(&path).map(|d| d.options.clone()) else { return Ok(None) };
            if m.is_dir() {
                // Only synced (entries are taken as durable at once): nothing to track.
                return Ok(Some((k, len, options)));
            }
            if self.files.len() >= KEEP_CLEAN {
                self.files.retain(|_, t| !t.sectors.is_empty());
            }
            // Known from now: a sync that began before has nothing to say about it.
            let t = Tracked {
                file: reopen(file)?,
                path,
                durable_len: len,
                durable_len_at: self.seq,
                sectors: BTreeMap::new(),
            };
            self.files.insert(k, t);
            Ok(Some((k, len, options)))
        }
    }

    fn state() -> MutexGuard<'static, State> {
        STATE.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn active() -> bool {
        ACTIVE.load(Ordering::Relaxed)
    }

    /// Simulates the disk of every file under `root` from now on.
    pub fn attach(root: &Path, options: Options) {
        let mut s = state();
        s.disks.retain(|d| d.root != root);
        s.disks.push(Disk { root: root.to_path_buf(), options });
        ACTIVE.store(true, Ordering::Relaxed);
    }

    /// Stops simulating `root`, forgetting its unsynced writes (they stay written).
    pub fn detach(root: &Path) {
        let mut s = state();
        s.disks.retain(|d| d.root != root);
        s.files.retain(|_, t| !t.path.starts_with(root));
    }

    /// A descriptor of `file` that reads and writes, whatever the log opened it for (through
    /// /proc rather than dup: the log may hold it write-only).
    fn reopen(file: &File) -> io::Result<File> {
        std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/self/fd/{}", file.as_raw_fd()))
    }

    fn path_of(file: &File) -> Option<PathBuf> {
        std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
    }

    /// What sector `n` of `file` holds now (zeros past its end).
    fn read_sector(file: &File, n: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; SECTOR as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], n * SECTOR + got as u64)? {
                0 => break,
                k => got += k,
            }
        }
        Ok(buf)
    }

    /// Before `data` is written at `offset`: remembers what each sector it touches held if it
    /// was clean, and what each will hold.
    pub(crate) fn before_write(file: &File, offset: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut s = state();
        let Some((k, len, _)) = s.lookup(file)? else { return Ok(()) };
        s.seq += 1;
        let now = s.seq;
        let Some(t) = s.files.get_mut(&k) else { return Ok(()) };
        if t.sectors.is_empty() {
            // Length changes of a clean file are taken as durable.
            (t.durable_len, t.durable_len_at) = (len, now);
        }
        let end = offset + data.len() as u64;
        for n in offset / SECTOR..end.div_ceil(SECTOR) {
            let sector = match t.sectors.entry(n) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let durable = read_sector(&t.file, n)?;
                    v.insert(Sector { current: durable.clone(), durable, durable_at: now, written_at: now })
                }
            };
            sector.written_at = now;
            let (from, to) = ((n * SECTOR).max(offset), ((n + 1) * SECTOR).min(end));
            sector.current[(from - n * SECTOR) as usize..(to - n * SECTOR) as usize]
                .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
        }
        Ok(())
    }

    /// A sync of `file`: true if it is simulated (then its writes so far are durable, unless
    /// the disk loses syncs), false if the real call is to be made.
    pub(crate) fn sync(file: &File) -> io::Result<bool> {
        let mut s = state();
        let Some((k, len, options)) = s.lookup(file)? else { return Ok(false) };
        s.seq += 1;
        let now = s.seq;
        if let Some(t) = s.files.get_mut(&k).filter(|_| !options.lose_syncs) {
            t.sectors.clear();
            (t.durable_len, t.durable_len_at) = (len, now);
        }
        Ok(true)
    }

    /// A group-commit sync under way: what the file's unsynced sectors held when it began.
    pub(crate) struct Pending {
        key: (u64, u64),
        len: u64,
        /// When it began.
        at: u64,
        sectors: Vec<(u64, Vec<u8>)>,
    }

    /// If `file` is simulated: how long its sync takes, and what the sync makes durable when
    /// it completes (`complete`). None for a real file.
    pub(crate) fn begin_sync(file: &File) -> io::Result<Option<(Duration, Option<Pending>)>> {
        let mut s = state();
        let Some((k, len, options)) = s.lookup(file)? else { return Ok(None) };
        s.seq += 1;
        let at = s.seq;
        let pending = s.files.get(&k).filter(|_| !options.lose_syncs).map(|t| Pending {
            key: k,
            len,
            at,
            sectors: t.sectors.iter().map(|(n, sector)| (*n, sector.current.clone())).collect(),
        });
        Ok(Some((options.sync_delay, pending)))
    }

    /// The sync of `pending` completed: what its sectors held when it began is durable, unless
    /// the disk holds something newer already (a sync that began later, or a full sync, came
    /// first). A sector not written since is clean; one written since stays unsynced, with what
    /// it held then as its durable content.
    pub(crate) fn complete(pending: Pending) -> io::Result<()> {
        let mut s = state();
        let Some(t) = s.files.get_mut(&pending.key) else { return Ok(()) };
        if t.durable_len_at < pending.at {
            (t.durable_len, t.durable_len_at) = (pending.len, pending.at);
        }
        for (n, then) in pending.sectors {
            let Some(sector) = t.sectors.get_mut(&n) else { continue };
            if sector.durable_at >= pending.at {
                continue;
            }
            if sector.written_at < pending.at {
                t.sectors.remove(&n);
            } else {
                (sector.durable, sector.durable_at) = (then, pending.at);
            }
        }
        Ok(())
    }

    /// splitmix64: the simulations' seeded generator (a crash seeds one per file, so the outcome
    /// does not depend on the order files are met; the cluster simulation draws its schedules
    /// from one).
    pub struct Rng(pub u64);

    impl Rng {
        #[allow(clippy::should_implement_trait)]
        pub fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in `lo..hi`.
        pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
            lo + self.next() % (hi - lo)
        }
    }

    fn fnv(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
    }

    /// A power cut of every file under `dir` (a node's data dir): each file's unsynced sectors
    /// are all lost, lost after a kept prefix, or lost one by one at random, by `seed` and the
    /// file's path below `dir`. A file that grew since it was durable ends after its last kept
    /// sector.
    pub fn crash(dir: &Path, seed: u64) -> io::Result<Crash> {
        let mut s = state();
        let keys: Vec<(u64, u64)> =
            s.files.iter().filter(|(_, t)| t.path.starts_with(dir) && !t.sectors.is_empty()).map(|(k, _)| *k).collect();
        let mut files: Vec<Tracked> = keys.iter().filter_map(|k| s.files.remove(k)).collect();
        drop(s);
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut report = Crash::default();
        for d in files {
            report.files += 1;
            let rel = d.path.strip_prefix(dir).unwrap_or(&d.path);
            let mut rng = Rng(seed ^ fnv(rel.as_os_str().as_encoded_bytes()));
            let n = d.sectors.len() as u64;
            let mode = rng.next() % 3;
            let prefix = if n == 0 { 0 } else { rng.next() % (n + 1) };
            let len = d.file.metadata()?.len();
            let mut kept_end = d.durable_len.min(len);
            for (i, (sector, Sector { durable, .. })) in d.sectors.iter().enumerate() {
                let keep = match mode {
                    0 => false,
                    1 => (i as u64) < prefix,
                    _ => rng.next().is_multiple_of(2),
                };
                if keep {
                    report.sectors_kept += 1;
                    kept_end = kept_end.max(((sector + 1) * SECTOR).min(len));
                    continue;
                }
                report.sectors_lost += 1;
                let at = sector * SECTOR;
                if at < len {
                    let upto = (len - at).min(SECTOR) as usize;
                    d.file.write_all_at(&durable[..upto], at)?;
                }
            }
            // Growth is durable only as far as a kept sector reaches (never cut below the
            // durable length: truncations are taken as durable at once).
            if len > d.durable_len && kept_end < len {
                d.file.set_len(kept_end.max(d.durable_len))?;
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    /// Two group-commit syncs of one file overlap and complete out of order, and the sector is
    /// written again before the older one completes: a power cut may lose the last write, never
    /// what the newer sync made durable.
    #[test]
    fn an_older_sync_completing_late_does_not_take_durability_back() {
        for seed in 0..24 {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().canonicalize().unwrap();
            sim::attach(&root, sim::Options::default());
            let path = root.join("f");
            let f = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path).unwrap();
            write_at(&f, b"a1", 0).unwrap();
            let (_, older) = sim::begin_sync(&f).unwrap().unwrap();
            write_at(&f, b"a2", 0).unwrap();
            let (_, newer) = sim::begin_sync(&f).unwrap().unwrap();
            sim::complete(newer.unwrap()).unwrap();
            write_at(&f, b"a3", 0).unwrap();
            sim::complete(older.unwrap()).unwrap();
            sim::crash(&root, seed).unwrap();
            let mut got = [0u8; 2];
            f.read_exact_at(&mut got, 0).unwrap();
            assert!(&got == b"a2" || &got == b"a3", "seed {seed}: the cut left {:?}", String::from_utf8_lossy(&got));
            sim::detach(&root);
        }
    }
}
