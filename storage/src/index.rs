//! Sparse, memory-mapped indexes of a segment: `.index` maps a relative
//! offset to a file position, `.timeindex` a timestamp to a relative offset.
//!
//! Both are preallocated to `segment.index.bytes`, filled in order and trimmed
//! to their used length when the segment closes, as Kafka does.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use crate::error::{LogError, Result};

/// A fixed-width, append-only table of (key, value) pairs in a mapped file.
/// The file is not kept open (the mapping outlives its descriptor): a
/// broker with 10,000 partitions would otherwise hold three descriptors
/// per segment instead of one.
struct MappedTable<const W: usize> {
    path: PathBuf,
    map: Option<MmapMut>,
    entries: usize,
    capacity: usize,
}

impl<const W: usize> MappedTable<W> {
    fn open(path: &Path, entries: usize, max_bytes: usize) -> Result<Self> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let capacity = (max_bytes / W).max(entries + 1);
        file.set_len((capacity * W) as u64)?;
        // SAFETY: the index file is private to this process (one broker owns
        // a data dir) and only this table writes it, so the mapping is not
        // changed underneath us.
        let map = unsafe { MmapMut::map_mut(&file)? };
        random_access(&map);
        Ok(MappedTable { path: path.to_path_buf(), map: Some(map), entries, capacity })
    }

    /// Maps a trimmed table (a closed segment's) as it is. Its length is
    /// left alone: growing it by the spare entry `open` adds would leave a
    /// zero row after the real ones, which the next start would read as an
    /// entry out of order and rebuild the whole index for.
    fn load(path: &Path) -> Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len() as usize;
        if !len.is_multiple_of(W) {
            return Err(LogError::Corrupt(format!("{} has a partial entry", path.display())));
        }
        let entries = len / W;
        let map = if entries > 0 {
            // SAFETY: as in `open`.
            let map = unsafe { MmapMut::map_mut(&file)? };
            random_access(&map);
            Some(map)
        } else {
            None
        };
        Ok(MappedTable { path: path.to_path_buf(), map, entries, capacity: entries })
    }

    /// Maps an active table preallocated past its used rows, whose row
    /// count was not recorded: the rows in use are the leading ones
    /// `in_use` accepts (each compared with the one before it).
    fn load_active(path: &Path, max_bytes: usize, in_use: impl Fn(Option<&[u8]>, &[u8]) -> bool) -> Result<Self> {
        let mut t = Self::open(path, 0, max_bytes)?;
        let mut n = 0;
        while n < t.capacity {
            let prev = n.checked_sub(1).map(|p| t.entry(p));
            if !in_use(prev, t.entry(n)) {
                break;
            }
            n += 1;
        }
        t.entries = n;
        // Rows past the last one in use (written after the state was taken,
        // say) are zeroed, so a later start cannot take them for rows again.
        let mut stale = n;
        while stale < t.capacity && t.entry(stale).iter().any(|b| *b != 0) {
            stale += 1;
        }
        if stale > n {
            if let Some(m) = &mut t.map {
                m[n * W..stale * W].fill(0);
            }
        }
        Ok(t)
    }

    /// The rows in use, as stored.
    fn rows(&self) -> Vec<u8> {
        match &self.map {
            Some(m) => m[..self.entries * W].to_vec(),
            None => Vec::new(),
        }
    }

    fn entry(&self, i: usize) -> &[u8] {
        match &self.map {
            Some(m) => &m[i * W..(i + 1) * W],
            None => &[],
        }
    }

    fn is_full(&self) -> bool {
        self.entries >= self.capacity
    }

    fn push(&mut self, bytes: [u8; W]) {
        if self.is_full() {
            return;
        }
        if let Some(m) = &mut self.map {
            m[self.entries * W..(self.entries + 1) * W].copy_from_slice(&bytes);
            self.entries += 1;
        }
    }

    /// Drops rows past `n`, zeroing them: an active table is found again
    /// after a clean restart by its leading valid rows, so a stale row
    /// must not survive beyond the new end.
    fn truncate_entries(&mut self, n: usize) {
        let keep = self.entries.min(n);
        if let Some(m) = &mut self.map {
            m[keep * W..self.entries * W].fill(0);
        }
        self.entries = keep;
    }

    /// Shrinks the file to the used entries; the table stays readable.
    fn trim(&mut self) -> Result<()> {
        // Opened before the mapping goes: if it cannot be (no descriptors
        // left, directory gone), the table keeps its mapping and its rows.
        let file = OpenOptions::new().read(true).write(true).open(&self.path)?;
        if let Some(m) = &self.map {
            m.flush()?;
        }
        self.map = None;
        let cut = file.set_len((self.entries * W) as u64);
        if cut.is_ok() {
            self.capacity = self.entries;
        }
        if self.capacity > 0 {
            // SAFETY: as in `open`; the file holds `capacity` rows, cut or not.
            self.map = Some(unsafe { MmapMut::map_mut(&file)? });
        }
        cut?;
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        if let Some(m) = &self.map {
            m.flush()?;
        }
        Ok(())
    }

    /// `flush`, plus the file's length (a `trim` changed it).
    fn sync(&self) -> Result<()> {
        self.flush()?;
        OpenOptions::new().read(true).open(&self.path)?.sync_all()?;
        Ok(())
    }

    /// Drops this process's page-table entries for the table, as
    /// `Segment::release_pages` does for the log: with thousands of
    /// partitions the touched index pages alone pass the resident cap.
    fn release_pages(&self) -> Result<()> {
        if let Some(m) = &self.map {
            // SAFETY: a shared file mapping: unmapping a page loses nothing
            // (the kernel keeps a written page dirty in the page cache), and
            // the next access reads the file's current contents back.
            unsafe { m.unchecked_advise(memmap2::UncheckedAdvice::DontNeed)? };
        }
        Ok(())
    }
}

/// Index tables are binary-searched and appended to a row at a time:
/// readahead only fills memory. It did worse on a start with 10,000
/// partitions: a first touch of a preallocated (sparse) table read ahead and
/// zeroed megabytes of holes per table, most of the start-up time.
fn random_access(map: &MmapMut) {
    let _ = map.advise(memmap2::Advice::Random);
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Offset index: (offset - base, position) pairs, 8 bytes each.
pub struct OffsetIndex {
    base_offset: i64,
    table: MappedTable<8>,
}

impl OffsetIndex {
    /// Opens an index with no entries, ready to be filled.
    pub fn create(path: &Path, base_offset: i64, max_bytes: usize) -> Result<Self> {
        let _ = std::fs::remove_file(path);
        Ok(OffsetIndex { base_offset, table: MappedTable::open(path, 0, max_bytes)? })
    }

    /// Opens an existing index of a closed segment, checking it is sane for a
    /// log of `log_size` bytes; a broken one is reported so it can be rebuilt.
    pub fn load(path: &Path, base_offset: i64, log_size: u64) -> Result<Self> {
        let idx = OffsetIndex { base_offset, table: MappedTable::load(path)? };
        idx.check(path, log_size)?;
        Ok(idx)
    }

    /// Opens the preallocated index of an active segment that was synced at
    /// a clean shutdown, `log_size` bytes long: its rows are the leading
    /// ones whose offsets and positions grow.
    pub fn load_active(path: &Path, base_offset: i64, log_size: u64, max_bytes: usize) -> Result<Self> {
        let rel = |e: &[u8]| (u32_at(e, 0), u32_at(e, 4));
        let table = MappedTable::load_active(path, max_bytes, |prev, e| match prev {
            // The first batch is always indexed, at position 0; an empty
            // log has no row (its first row is preallocated zeros).
            None => log_size > 0 && rel(e).1 == 0,
            Some(p) => rel(e).0 > rel(p).0 && rel(e).1 > rel(p).1,
        })?;
        let idx = OffsetIndex { base_offset, table };
        idx.check(path, log_size)?;
        Ok(idx)
    }

    /// Offsets and positions strictly grow and every position is in the log.
    fn check(&self, path: &Path, log_size: u64) -> Result<()> {
        let (idx, base_offset) = (self, self.base_offset);
        let mut last = (-1i64, -1i64);
        for i in 0..idx.table.entries {
            let (o, p) = idx.get(i);
            if o <= last.0 || p <= last.1 || p as u64 >= log_size || o < base_offset {
                return Err(LogError::Corrupt(format!("{} entry {i} out of order", path.display())));
            }
            last = (o, p);
        }
        Ok(())
    }

    /// Rows in use.
    pub fn entries(&self) -> usize {
        self.table.entries
    }

    /// The rows in use as stored (what a remote copy of the segment carries).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.table.rows()
    }

    /// The last row: (offset, position).
    pub fn last(&self) -> Option<(i64, u64)> {
        self.table.entries.checked_sub(1).map(|i| {
            let (o, p) = self.get(i);
            (o, p as u64)
        })
    }

    fn get(&self, i: usize) -> (i64, i64) {
        let e = self.table.entry(i);
        (self.base_offset + u32_at(e, 0) as i64, u32_at(e, 4) as i64)
    }

    pub fn append(&mut self, offset: i64, position: u64) {
        let rel = (offset - self.base_offset) as u32;
        let mut e = [0u8; 8];
        e[..4].copy_from_slice(&rel.to_be_bytes());
        e[4..].copy_from_slice(&(position as u32).to_be_bytes());
        self.table.push(e);
    }

    pub fn is_full(&self) -> bool {
        self.table.is_full()
    }

    /// Position of the last indexed batch starting at or before `offset`.
    pub fn lookup(&self, offset: i64) -> u64 {
        let (mut lo, mut hi) = (0usize, self.table.entries);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.get(mid).0 <= offset {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            0
        } else {
            self.get(lo - 1).1 as u64
        }
    }

    /// Drops entries pointing at or beyond `position`.
    pub fn truncate_to_position(&mut self, position: u64) {
        let keep = (0..self.table.entries).take_while(|&i| (self.get(i).1 as u64) < position).count();
        self.table.truncate_entries(keep);
    }

    pub fn trim(&mut self) -> Result<()> {
        self.table.trim()
    }
    pub fn flush(&self) -> Result<()> {
        self.table.flush()
    }
    pub fn sync(&self) -> Result<()> {
        self.table.sync()
    }
    pub fn release_pages(&self) -> Result<()> {
        self.table.release_pages()
    }
    pub fn path(&self) -> &Path {
        &self.table.path
    }
}

/// Time index: (max timestamp so far, offset - base) pairs, 12 bytes each.
pub struct TimeIndex {
    base_offset: i64,
    table: MappedTable<12>,
}

impl TimeIndex {
    pub fn create(path: &Path, base_offset: i64, max_bytes: usize) -> Result<Self> {
        let _ = std::fs::remove_file(path);
        Ok(TimeIndex { base_offset, table: MappedTable::open(path, 0, max_bytes)? })
    }

    pub fn load(path: &Path, base_offset: i64) -> Result<Self> {
        let idx = TimeIndex { base_offset, table: MappedTable::load(path)? };
        idx.check(path)?;
        Ok(idx)
    }

    /// The active segment's preallocated time index after a clean shutdown:
    /// its rows are the leading ones whose offsets grow and stay below
    /// `next_offset` (a row for a batch appended after the clean state was
    /// taken points at data the state does not cover).
    pub fn load_active(path: &Path, base_offset: i64, next_offset: i64, max_bytes: usize) -> Result<Self> {
        let below_end = |e: &[u8]| base_offset + (u32_at(e, 8) as i64) < next_offset;
        let table = MappedTable::load_active(path, max_bytes, |prev, e| match prev {
            // A first row of zeros is no row: no batch carried a timestamp.
            None => e.iter().any(|b| *b != 0) && below_end(e),
            Some(p) => u32_at(e, 8) > u32_at(p, 8) && below_end(e),
        })?;
        let idx = TimeIndex { base_offset, table };
        idx.check(path)?;
        Ok(idx)
    }

    fn check(&self, path: &Path) -> Result<()> {
        let (idx, base_offset) = (self, self.base_offset);
        let mut last = i64::MIN;
        for i in 0..idx.table.entries {
            let (ts, o) = idx.get(i);
            if ts < last || o < base_offset {
                return Err(LogError::Corrupt(format!("{} entry {i} out of order", path.display())));
            }
            last = ts;
        }
        Ok(())
    }

    fn get(&self, i: usize) -> (i64, i64) {
        let e = self.table.entry(i);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&e[..8]);
        (i64::from_be_bytes(ts), self.base_offset + u32_at(e, 8) as i64)
    }

    /// The rows in use as stored (what a remote copy of the segment carries).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.table.rows()
    }

    /// The newest entry: the segment's max timestamp and where it occurs.
    pub fn last(&self) -> Option<(i64, i64)> {
        self.table.entries.checked_sub(1).map(|i| self.get(i))
    }

    pub fn append(&mut self, timestamp: i64, offset: i64) {
        if let Some((ts, o)) = self.last() {
            if timestamp <= ts || offset <= o {
                return;
            }
        }
        let mut e = [0u8; 12];
        e[..8].copy_from_slice(&timestamp.to_be_bytes());
        e[8..].copy_from_slice(&((offset - self.base_offset) as u32).to_be_bytes());
        self.table.push(e);
    }

    /// Offset from which to scan for the first timestamp >= `ts`: the entry
    /// just before the first one reaching `ts`.
    pub fn lookup(&self, ts: i64) -> i64 {
        let mut start = self.base_offset;
        for i in 0..self.table.entries {
            let (t, o) = self.get(i);
            if t >= ts {
                break;
            }
            start = o;
        }
        start
    }

    pub fn truncate_to_offset(&mut self, offset: i64) {
        let keep = (0..self.table.entries).take_while(|&i| self.get(i).1 < offset).count();
        self.table.truncate_entries(keep);
    }

    pub fn trim(&mut self) -> Result<()> {
        self.table.trim()
    }
    pub fn flush(&self) -> Result<()> {
        self.table.flush()
    }
    pub fn sync(&self) -> Result<()> {
        self.table.sync()
    }
    pub fn release_pages(&self) -> Result<()> {
        self.table.release_pages()
    }
    pub fn path(&self) -> &Path {
        &self.table.path
    }
}
