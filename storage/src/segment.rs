//! One log segment: a `.log` file of verbatim record batches plus its two
//! indexes. The active segment's file is preallocated and mapped once; reads
//! hand out `Bytes` that borrow the mapping, so a fetch copies nothing.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::Mmap;

use crate::batch::{self, BatchHeader, HEADER_SIZE};
use crate::error::Result;
use crate::index::{OffsetIndex, TimeIndex};
use crate::log::remove_if_present;

pub fn file_name(base_offset: i64, ext: &str) -> String {
    format!("{base_offset:020}.{ext}")
}

/// Owner of a byte range of a mapping, so `Bytes` keeps the map alive.
struct MapSlice {
    map: Arc<Mmap>,
    start: usize,
    end: usize,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.end]
    }
}

/// How far ahead of its writes an active segment's disk blocks are allocated (`reserve`): as
/// far as the segment holds already, within these bounds, so a partition that takes little
/// holds little unused space (ten thousand of them hold 640 MiB, not 40 GiB).
const ALLOCATION_STEP: u64 = 4 << 20;
const MIN_ALLOCATION_STEP: u64 = 64 << 10;

pub struct Segment {
    pub base_offset: i64,
    log_path: PathBuf,
    file: Arc<File>,
    map: Option<Arc<Mmap>>,
    /// Bytes of whole, valid batches.
    size: u64,
    /// Length of the mapping (the preallocated length while active).
    mapped_len: u64,
    /// Bytes from the file's start that have disk blocks (`reserve`); past them, an active
    /// segment's file is a hole of its preallocated length.
    allocated: u64,
    /// Offset after the last batch.
    pub next_offset: i64,
    index: OffsetIndex,
    time_index: TimeIndex,
    bytes_since_index: u64,
    pub max_timestamp: i64,
    pub offset_of_max_timestamp: i64,
    /// Wall clock when the first batch landed (for `segment.ms`).
    pub created_ms: Option<i64>,
    pub closed: bool,
    /// What opening this segment had to do.
    pub opened: Opened,
}

/// What `Segment::open` did to a segment found on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Opened {
    /// Every batch was read and checked (an active segment without a clean
    /// shutdown, or a closed one whose indexes failed their checks).
    pub scanned: bool,
    /// A closed segment's indexes were broken and rebuilt.
    pub index_rebuilt: bool,
    /// Bytes cut after the last valid batch that were not preallocated zeros.
    pub torn_bytes: u64,
}

/// Where the active segment stood when its log was synced for a clean
/// shutdown: enough to reopen it without reading its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanState {
    pub base_offset: i64,
    /// Bytes of whole batches.
    pub size: u64,
    /// Offset after the last batch.
    pub next_offset: i64,
    pub max_timestamp: i64,
    pub offset_of_max_timestamp: i64,
}

/// Where a batch sits in a segment.
#[derive(Debug, Clone, Copy)]
pub struct BatchPos {
    pub position: u64,
    pub header: BatchHeader,
}

impl Segment {
    /// Creates a fresh active segment preallocated to `capacity` bytes.
    pub fn create(dir: &Path, base_offset: i64, capacity: u64, index_bytes: usize) -> Result<Segment> {
        let log_path = dir.join(file_name(base_offset, "log"));
        // Never truncate a file in place: an older segment at this base (one
        // a truncation emptied) may still be mapped by a reader, and cutting
        // its pages away is a SIGBUS. Unlinking leaves that inode to the
        // reader; this segment gets a new one.
        remove_if_present(&log_path)?;
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&log_path)?;
        file.set_len(capacity)?;
        let index = OffsetIndex::create(&dir.join(file_name(base_offset, "index")), base_offset, index_bytes)?;
        let time_index = TimeIndex::create(&dir.join(file_name(base_offset, "timeindex")), base_offset, index_bytes)?;
        let mut seg = Segment {
            base_offset,
            log_path,
            file: Arc::new(file),
            map: None,
            size: 0,
            mapped_len: 0,
            allocated: 0,
            next_offset: base_offset,
            index,
            time_index,
            bytes_since_index: 0,
            max_timestamp: -1,
            offset_of_max_timestamp: -1,
            created_ms: None,
            closed: false,
            opened: Opened::default(),
        };
        seg.remap(capacity)?;
        Ok(seg)
    }

    fn remap(&mut self, len: u64) -> Result<()> {
        self.map = None;
        self.mapped_len = 0;
        if len > 0 {
            // SAFETY: this process owns the data dir. Bytes of the file are
            // only written past `size` and readers only get slices below it;
            // the file is never shrunk below a length a reader was given.
            let map = unsafe { Mmap::map(&*self.file)? };
            self.mapped_len = map.len() as u64;
            self.map = Some(Arc::new(map));
        }
        Ok(())
    }

    /// Opens a segment found on disk. `active` segments are scanned batch by
    /// batch: anything after the last valid batch (a torn write, the
    /// preallocated zeros) is cut and both indexes are rebuilt. Closed
    /// segments trust their indexes unless those fail their sanity checks.
    pub fn open(dir: &Path, base_offset: i64, active: bool, capacity: u64, index_bytes: usize) -> Result<Segment> {
        let log_path = dir.join(file_name(base_offset, "log"));
        let file = OpenOptions::new().read(true).write(true).open(&log_path)?;
        let file_len = file.metadata()?.len();
        let mut seg = Segment {
            base_offset,
            log_path,
            file: Arc::new(file),
            map: None,
            size: file_len,
            mapped_len: 0,
            allocated: 0,
            next_offset: base_offset,
            index: OffsetIndex::create(&dir.join(file_name(base_offset, "index.tmp")), base_offset, 8)?,
            time_index: TimeIndex::create(&dir.join(file_name(base_offset, "timeindex.tmp")), base_offset, 12)?,
            bytes_since_index: 0,
            max_timestamp: -1,
            offset_of_max_timestamp: -1,
            created_ms: None,
            closed: !active,
            opened: Opened { scanned: true, ..Opened::default() },
        };
        let _ = std::fs::remove_file(dir.join(file_name(base_offset, "index.tmp")));
        let _ = std::fs::remove_file(dir.join(file_name(base_offset, "timeindex.tmp")));
        seg.remap(file_len)?;
        let idx_path = dir.join(file_name(base_offset, "index"));
        let tidx_path = dir.join(file_name(base_offset, "timeindex"));
        if !active {
            let loaded = OffsetIndex::load(&idx_path, base_offset, file_len)
                .and_then(|i| TimeIndex::load(&tidx_path, base_offset).map(|t| (i, t)));
            match loaded {
                Ok((i, t)) => {
                    seg.index = i;
                    seg.time_index = t;
                    let last = seg.last_batch()?;
                    seg.next_offset = last.map(|b| b.header.last_offset() + 1).unwrap_or(base_offset);
                    // A time row past the end is left from a truncation
                    // cut short by a crash (the log is renamed first).
                    match seg.time_index.last() {
                        Some((_, o)) if o >= seg.next_offset => {
                            seg.opened.index_rebuilt = true;
                            tracing::warn!(segment = %seg.log_path.display(), "time index points past the log; rebuilding");
                        }
                        last => {
                            if let Some((ts, o)) = last {
                                seg.max_timestamp = ts;
                                seg.offset_of_max_timestamp = o;
                            }
                            seg.opened = Opened::default();
                            return Ok(seg);
                        }
                    }
                }
                Err(e) => {
                    seg.opened.index_rebuilt = true;
                    // Compaction swaps a rewritten segment in without its
                    // indexes: building them is routine. A broken one is not.
                    match &e {
                        crate::LogError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
                            tracing::debug!(segment = %seg.log_path.display(), "building missing index")
                        }
                        _ => tracing::warn!(segment = %seg.log_path.display(), error = %e, "rebuilding index"),
                    }
                }
            }
        }
        seg.opened.torn_bytes = seg.recover(dir, capacity, index_bytes, active)?;
        Ok(seg)
    }

    /// Opens the active segment of a log shut down cleanly, as `state` says
    /// it was, without reading its batches: its indexes were synced with it.
    /// `None` when what is on disk does not match `state` (a stale
    /// checkpoint): the caller then scans it as after a crash.
    pub fn open_clean(dir: &Path, state: &CleanState, index_bytes: usize) -> Result<Option<Segment>> {
        let base_offset = state.base_offset;
        let log_path = dir.join(file_name(base_offset, "log"));
        let file = OpenOptions::new().read(true).write(true).open(&log_path)?;
        let file_len = file.metadata()?.len();
        if file_len < state.size || state.next_offset < base_offset {
            return Ok(None);
        }
        let loaded =
            OffsetIndex::load_active(&dir.join(file_name(base_offset, "index")), base_offset, state.size, index_bytes)
                .and_then(|i| {
                    TimeIndex::load_active(
                        &dir.join(file_name(base_offset, "timeindex")),
                        base_offset,
                        state.next_offset,
                        index_bytes,
                    )
                    .map(|t| (i, t))
                });
        let Ok((index, time_index)) = loaded else {
            return Ok(None);
        };
        let mut seg = Segment {
            base_offset,
            log_path,
            file: Arc::new(file),
            map: None,
            size: state.size,
            mapped_len: 0,
            allocated: 0,
            next_offset: state.next_offset,
            index,
            time_index,
            bytes_since_index: 0,
            max_timestamp: state.max_timestamp,
            offset_of_max_timestamp: state.offset_of_max_timestamp,
            created_ms: None,
            closed: false,
            opened: Opened::default(),
        };
        seg.remap(file_len)?;
        // The batches from the last index row on must end exactly at `size`
        // with `next_offset`, and nothing may follow them: a checkpoint
        // older than the data it describes fails one of these.
        // A segment with batches has a row for its first one at least.
        let Some((from_offset, from)) = seg.index.last().or((state.size == 0).then_some((base_offset, 0))) else {
            return Ok(None);
        };
        // Read with pread, not through the mapping: a fault on the
        // preallocated (sparse) file reads ahead and zeroes megabytes of
        // holes, which with 10,000 partitions was most of a clean start.
        let header_at = |pos: u64| -> Option<BatchHeader> {
            let mut buf = [0u8; HEADER_SIZE];
            seg.file.read_exact_at(&mut buf, pos).ok()?;
            BatchHeader::parse(&buf).ok().filter(|h| h.batch_length > 0)
        };
        if state.size > 0 && header_at(from).is_none_or(|h| h.base_offset != from_offset) {
            return Ok(None);
        }
        let mut pos = from;
        let mut next = base_offset;
        while pos + HEADER_SIZE as u64 <= state.size {
            let Some(h) = header_at(pos) else { break };
            if pos + h.total_size() as u64 > state.size {
                break;
            }
            pos += h.total_size() as u64;
            next = h.last_offset() + 1;
        }
        let follows = file_len >= state.size + HEADER_SIZE as u64
            && header_at(state.size).is_some_and(|h| h.base_offset >= state.next_offset);
        if pos != state.size || (state.size > 0 && next != state.next_offset) || follows {
            return Ok(None);
        }
        seg.bytes_since_index = state.size - from;
        Ok(Some(seg))
    }

    /// Where this segment stands, for a clean-shutdown checkpoint.
    pub fn clean_state(&self) -> CleanState {
        CleanState {
            base_offset: self.base_offset,
            size: self.size,
            next_offset: self.next_offset,
            max_timestamp: self.max_timestamp,
            offset_of_max_timestamp: self.offset_of_max_timestamp,
        }
    }

    /// Scans every batch, keeps the valid prefix and rebuilds the indexes.
    /// Returns the bytes cut that were not preallocated zeros (a torn or
    /// corrupt write).
    fn recover(&mut self, dir: &Path, capacity: u64, index_bytes: usize, active: bool) -> Result<u64> {
        let index_interval = 4096;
        self.index =
            OffsetIndex::create(&dir.join(file_name(self.base_offset, "index")), self.base_offset, index_bytes)?;
        self.time_index =
            TimeIndex::create(&dir.join(file_name(self.base_offset, "timeindex")), self.base_offset, index_bytes)?;
        let map = self.map.clone();
        let data: &[u8] = match &map {
            Some(m) => &m[..(self.size as usize).min(m.len())],
            None => &[],
        };
        let mut pos = 0usize;
        let mut scan_end = self.base_offset;
        let mut batches = Vec::new();
        while pos + HEADER_SIZE <= data.len() {
            let Ok(h) = BatchHeader::parse(&data[pos..]) else {
                break;
            };
            if h.batch_length <= 0 || pos + h.total_size() > data.len() {
                break;
            }
            if batch::validate(&data[pos..pos + h.total_size()]).is_err() {
                break;
            }
            if h.base_offset < scan_end && !batches.is_empty() {
                break;
            }
            batches.push((pos as u64, h));
            scan_end = h.last_offset() + 1;
            pos += h.total_size();
        }
        let valid = pos as u64;
        let cut = self.size - valid;
        // Zeros right after the last batch are preallocated space no write
        // reached (the normal state of an active segment after a crash);
        // anything else is a torn or corrupt write worth a warning.
        let tail = &data[pos.min(data.len())..(pos + HEADER_SIZE).min(data.len())];
        let torn = if tail.iter().any(|b| *b != 0) { cut } else { 0 };
        if torn > 0 {
            tracing::warn!(segment = %self.log_path.display(), valid_bytes = valid, cut_bytes = cut, "recovery truncated log tail");
        } else if cut > 0 {
            tracing::debug!(segment = %self.log_path.display(), valid_bytes = valid, "recovered active segment");
        }
        self.size = 0;
        self.next_offset = self.base_offset;
        for (p, h) in batches {
            self.size = p;
            self.track_appended(p, &h, index_interval);
            self.size = p + h.total_size() as u64;
            self.next_offset = h.last_offset() + 1;
        }
        // Nobody holds a slice yet at open time, so changing the length here
        // cannot pull a page out from under a reader.
        // Shrinking first zeroes whatever a torn write left past `valid`.
        self.map = None;
        self.file.set_len(valid)?;
        if active {
            self.file.set_len(capacity.max(valid))?;
        }
        crate::disk::sync_all(&self.file)?;
        let len = self.file.metadata()?.len();
        self.remap(len)?;
        if !active {
            self.close()?;
        }
        Ok(torn)
    }

    fn slice_raw(&self, start: usize, end: usize) -> &[u8] {
        match &self.map {
            Some(m) if end <= m.len() => &m[start..end],
            _ => &[],
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Free bytes left in the preallocated file.
    pub fn remaining(&self) -> u64 {
        self.mapped_len.saturating_sub(self.size)
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    fn track_appended(&mut self, position: u64, h: &BatchHeader, index_interval: u64) {
        if h.max_timestamp > self.max_timestamp {
            self.max_timestamp = h.max_timestamp;
            self.offset_of_max_timestamp = h.base_offset;
        }
        if self.bytes_since_index >= index_interval || position == 0 {
            self.index.append(h.base_offset, position);
            self.time_index.append(self.max_timestamp, self.offset_of_max_timestamp);
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += h.total_size() as u64;
    }

    /// Writes already-patched batches at the end. The caller has checked the
    /// data fits (`remaining`).
    pub fn append(
        &mut self,
        data: &[u8],
        headers: &[(usize, BatchHeader)],
        index_interval: u64,
        now_ms: i64,
    ) -> Result<()> {
        self.reserve(self.size + data.len() as u64);
        crate::disk::write_at(&self.file, data, self.size)?;
        self.appended(data.len(), headers, index_interval, now_ms);
        Ok(())
    }

    /// Writes batches as the producer sent them, except for each batch's
    /// first `ASSIGNED_HEAD` bytes, rebuilt from its header (offset and
    /// epoch the log assigned): one `pwritev`, no copy of the records.
    pub fn append_assigned(
        &mut self,
        data: &[u8],
        headers: &[(usize, BatchHeader)],
        index_interval: u64,
        now_ms: i64,
    ) -> Result<()> {
        let heads: Vec<[u8; batch::ASSIGNED_HEAD]> = headers
            .iter()
            .map(|(pos, h)| batch::assigned_head(&data[*pos..], h.base_offset, h.partition_leader_epoch))
            .collect();
        let mut iov = Vec::with_capacity(headers.len() * 2);
        for ((pos, h), head) in headers.iter().zip(&heads) {
            iov.push(std::io::IoSlice::new(head));
            iov.push(std::io::IoSlice::new(&data[pos + batch::ASSIGNED_HEAD..pos + h.total_size()]));
        }
        self.reserve(self.size + data.len() as u64);
        crate::disk::before_vectored_write(&self.file, &iov, self.size)?;
        pwrite_all(&self.file, &mut iov, self.size)?;
        self.appended(data.len(), headers, index_interval, now_ms);
        Ok(())
    }

    /// Gives the file disk blocks up to at least `end`, a step ahead of the writes. Writing into
    /// a hole makes the filesystem reserve and track every 4 KiB block as it is written (on ext4
    /// that cost more CPU than copying the data into the page cache: see bench/README.md);
    /// writing into allocated blocks does not. The step bounds the space an idle partition holds
    /// unused; `close` frees what the segment never filled. Advice only: where the filesystem
    /// cannot allocate ahead (no support, or too little space for a whole step), the write
    /// goes ahead without, and fails on its own if the space is really gone.
    fn reserve(&mut self, end: u64) {
        if end <= self.allocated || self.closed {
            return;
        }
        let step = self.size.clamp(MIN_ALLOCATION_STEP, ALLOCATION_STEP);
        let to = end.saturating_add(step).min(self.mapped_len.max(end));
        if let Err(e) = crate::disk::allocate(&self.file, self.allocated, to - self.allocated) {
            tracing::debug!(segment = %self.log_path.display(), error = %e, "could not allocate ahead of the writes");
        }
        self.allocated = to;
    }

    fn appended(&mut self, len: usize, headers: &[(usize, BatchHeader)], index_interval: u64, now_ms: i64) {
        for (off, h) in headers {
            self.track_appended(self.size + *off as u64, h, index_interval);
        }
        if let Some((_, last)) = headers.last() {
            self.next_offset = last.last_offset() + 1;
        }
        self.size += len as u64;
        if self.created_ms.is_none() {
            self.created_ms = Some(now_ms);
        }
    }

    pub fn index_full(&self) -> bool {
        self.index.is_full()
    }

    /// Zero-copy view of `[start, end)` of the file.
    pub fn bytes(&self, start: u64, end: u64) -> Bytes {
        match &self.map {
            Some(m) if end <= self.size && start <= end => {
                Bytes::from_owner(MapSlice { map: m.clone(), start: start as usize, end: end as usize })
            }
            _ => Bytes::new(),
        }
    }

    /// Header of the batch at `position`, if a whole one is there.
    pub fn batch_at(&self, position: u64) -> Option<BatchPos> {
        if position + HEADER_SIZE as u64 > self.size {
            return None;
        }
        let raw = self.slice_raw(position as usize, position as usize + HEADER_SIZE);
        let header = BatchHeader::parse(raw).ok()?;
        if header.batch_length <= 0 || position + header.total_size() as u64 > self.size {
            return None;
        }
        Some(BatchPos { position, header })
    }

    /// The batch holding `offset`, or the first one after it.
    pub fn find_batch(&self, offset: i64) -> Option<BatchPos> {
        let mut pos = self.index.lookup(offset);
        while let Some(b) = self.batch_at(pos) {
            if b.header.last_offset() >= offset {
                return Some(b);
            }
            pos += b.header.total_size() as u64;
        }
        None
    }

    /// The first batch whose max timestamp reaches `ts`.
    pub fn find_batch_by_time(&self, ts: i64) -> Option<BatchPos> {
        let start = self.time_index.lookup(ts);
        let mut pos = self.find_batch(start)?.position;
        while let Some(b) = self.batch_at(pos) {
            if b.header.max_timestamp >= ts {
                return Some(b);
            }
            pos += b.header.total_size() as u64;
        }
        None
    }

    pub fn last_batch(&self) -> Result<Option<BatchPos>> {
        let mut pos = match self.index.lookup(i64::MAX) {
            p if p < self.size => p,
            _ => 0,
        };
        let mut last = None;
        while let Some(b) = self.batch_at(pos) {
            pos += b.header.total_size() as u64;
            last = Some(b);
        }
        Ok(last)
    }

    /// Iterates batch headers from the start.
    pub fn batches(&self) -> impl Iterator<Item = BatchPos> + '_ {
        let mut pos = 0u64;
        std::iter::from_fn(move || {
            let b = self.batch_at(pos)?;
            pos += b.header.total_size() as u64;
            Some(b)
        })
    }

    /// Cuts the segment back to the batch boundary before `offset` (the
    /// batch holding `offset` goes whole, as in Kafka). The caller makes
    /// the cut durable with `sync` (and a sync of the directory).
    ///
    /// A reader may hold a slice of any batch below the old end: reads go
    /// up to the log end, and a fetch response (or its `sendfile`) can still
    /// be in flight when a replica truncates its divergent suffix. So the
    /// mapped file is never shrunk here:
    /// - in the active segment the cut bytes are zeroed in place; the file
    ///   keeps its preallocated length and recovery finds the end at the
    ///   zeros, as after any crash;
    /// - a closed segment's length is its end (nothing else records it), so
    ///   the kept prefix is written to a new file renamed over the old one.
    ///   Readers keep the old inode and its mapping until their slices drop;
    ///   the copy costs at most one segment, and only a truncation that
    ///   reaches below the active segment pays it.
    ///
    /// The indexes are shrunk freely: their rows are only read under the
    /// log's lock, never handed out.
    pub fn truncate_to(&mut self, offset: i64) -> Result<()> {
        let Some(b) = self.find_batch(offset) else {
            return Ok(());
        };
        let cut_at = b.position;
        if cut_at >= self.size {
            return Ok(());
        }
        if self.closed {
            self.rewrite_prefix(cut_at)?;
        } else {
            let zeros = vec![0u8; (self.size - cut_at) as usize];
            crate::disk::write_at(&self.file, &zeros, cut_at)?;
        }
        self.size = cut_at;
        self.index.truncate_to_position(cut_at);
        // By the first offset cut, not the one asked for: rows of the
        // batch holding `offset` go with it.
        self.time_index.truncate_to_offset(b.header.base_offset);
        self.next_offset = self.last_batch()?.map(|b| b.header.last_offset() + 1).unwrap_or(self.base_offset);
        self.max_timestamp = -1;
        self.offset_of_max_timestamp = -1;
        let headers: Vec<BatchHeader> = self.batches().map(|b| b.header).collect();
        for h in headers {
            if h.max_timestamp > self.max_timestamp {
                self.max_timestamp = h.max_timestamp;
                self.offset_of_max_timestamp = h.base_offset;
            }
        }
        if self.closed {
            // As `close` leaves it: a last time row for the segment's max,
            // then both tables trimmed to their rows.
            if self.max_timestamp >= 0 {
                self.time_index.append(self.max_timestamp, self.offset_of_max_timestamp);
            }
            self.index.trim()?;
            self.time_index.trim()?;
        }
        Ok(())
    }

    /// Replaces a closed segment's file with its first `len` bytes (see
    /// `truncate_to`). The copy is synced before the rename, so a crash
    /// leaves the old file or the whole new one.
    fn rewrite_prefix(&mut self, len: u64) -> Result<()> {
        let tmp = self.log_path.with_extension("truncating");
        remove_if_present(&tmp)?;
        {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            std::io::Write::write_all(&mut f, self.slice_raw(0, len as usize))?;
            crate::disk::sync_all(&f)?;
        }
        std::fs::rename(&tmp, &self.log_path)?;
        let file = OpenOptions::new().read(true).write(true).open(&self.log_path)?;
        if file.metadata()?.len() != len {
            return Err(crate::LogError::Corrupt(format!("{} rewritten short", self.log_path.display())));
        }
        self.file = Arc::new(file);
        self.remap(len)
    }

    /// Makes the segment's data and indexes durable (after a truncation).
    pub fn sync(&self) -> Result<()> {
        crate::disk::sync_data(&self.file)?;
        self.index.sync()?;
        self.time_index.sync()
    }

    /// The offset index's rows, as stored.
    pub fn offset_index_bytes(&self) -> Vec<u8> {
        self.index.to_bytes()
    }

    /// The time index's rows, as stored.
    pub fn time_index_bytes(&self) -> Vec<u8> {
        self.time_index.to_bytes()
    }

    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// The time retention.ms counts from: the newest record timestamp, or for a segment whose
    /// batches carry none (Raft's own control entries, producers that send no timestamps) the
    /// time it was last written, as Kafka does. None when neither is known.
    pub fn retention_time(&self) -> Option<i64> {
        if self.max_timestamp >= 0 {
            return Some(self.max_timestamp);
        }
        let modified = self.file.metadata().ok()?.modified().ok()?;
        modified.duration_since(std::time::UNIX_EPOCH).ok().and_then(|d| i64::try_from(d.as_millis()).ok())
    }

    /// Drops this process's page-table entries for the mapping. The pages
    /// stay in the page cache; the next read through the mapping faults
    /// them back in. Reads copy small ranges out of the mapping and walk
    /// batch headers through it, so without this the resident set grows
    /// with every byte ever read.
    pub fn release_pages(&self) -> Result<()> {
        if let Some(map) = &self.map {
            // SAFETY: a read-only shared file mapping: MADV_DONTNEED only
            // unmaps pages, and later accesses (including those through
            // `Bytes` handed out earlier) read the same file contents again.
            unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed)? };
        }
        self.index.release_pages()?;
        self.time_index.release_pages()
    }

    /// Drops bytes `[from, to)` (page-aligned), which must be synced, from the page cache:
    /// first from this process's mapping (a mapped page is not dropped), then from the cache.
    /// Advice only: failures change nothing a reader sees, so they are ignored.
    pub(crate) fn drop_cached(&self, from: u64, to: u64) {
        if to <= from {
            return;
        }
        if let Some(map) = &self.map {
            let end = (to as usize).min(map.len());
            if (from as usize) < end {
                // SAFETY: as in `release_pages`: a read-only shared file mapping, whose later
                // reads fault the same file contents back in.
                let _ = unsafe {
                    map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from as usize, end - from as usize)
                };
            }
        }
        // SAFETY: a plain syscall on a descriptor the segment keeps open.
        unsafe {
            libc::posix_fadvise(self.file.as_raw_fd(), from as i64, (to - from) as i64, libc::POSIX_FADV_DONTNEED);
        }
    }

    /// Seals the segment: syncs it, trims the file and indexes to what is
    /// used. Only space past `size` is cut, which no reader was ever given.
    pub fn close(&mut self) -> Result<()> {
        if self.max_timestamp >= 0 {
            self.time_index.append(self.max_timestamp, self.offset_of_max_timestamp);
        }
        self.file.set_len(self.size)?;
        crate::disk::sync_data(&self.file)?;
        self.index.trim()?;
        self.time_index.trim()?;
        self.index.flush()?;
        self.time_index.flush()?;
        self.closed = true;
        Ok(())
    }

    pub fn flush_indexes(&self) -> Result<()> {
        self.index.flush()?;
        self.time_index.flush()
    }

    /// Unlinks the files; live slices keep the mapping until they drop.
    pub fn delete(&self) -> Result<()> {
        for p in [self.log_path.clone(), self.index.path().to_path_buf(), self.time_index.path().to_path_buf()] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// `pwritev` until every slice is written.
fn pwrite_all(file: &File, mut bufs: &mut [std::io::IoSlice<'_>], mut offset: u64) -> std::io::Result<()> {
    // Linux's IOV_MAX.
    const MAX_IOV: usize = 1024;
    while !bufs.is_empty() {
        let count = bufs.len().min(MAX_IOV);
        // SAFETY: IoSlice is ABI-compatible with iovec on Unix, and the
        // slices outlive the call.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                bufs.as_ptr().cast::<libc::iovec>(),
                count as libc::c_int,
                offset as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        offset += n as u64;
        std::io::IoSlice::advance_slices(&mut bufs, n as usize);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// Bytes of disk the file holds (its blocks, not its length).
    fn allocated(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    /// An active segment's file is as long as its capacity from the start (one mapping for its
    /// whole life), but gets disk blocks only a step ahead of its writes, and gives back at
    /// close what it never filled.
    #[test]
    fn blocks_are_allocated_a_step_ahead_of_the_writes_and_freed_at_close() {
        let tmp = tempfile::tempdir().unwrap();
        let capacity = 16 * ALLOCATION_STEP;
        let mut seg = Segment::create(tmp.path(), 0, capacity, 4096).unwrap();
        let path = tmp.path().join(file_name(0, "log"));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), capacity);
        assert_eq!(allocated(&path), 0, "no blocks before the first write");
        let data = batch::build_batch(0, 1, &[(Some(b"k"), Some(&[3u8; 1000][..]))]);
        let header = BatchHeader::parse(&data).unwrap();
        seg.append(&data, &[(0, header)], 4096, 0).unwrap();
        let ahead = allocated(&path);
        assert!(ahead >= MIN_ALLOCATION_STEP, "{ahead} bytes allocated after the first write");
        assert!(ahead < 2 * MIN_ALLOCATION_STEP, "{ahead} bytes allocated for one small batch");
        // Writes that cross the allocated end take the next step, as large as the segment holds
        // already, up to the largest step.
        let mut next = 1;
        while seg.size() < ALLOCATION_STEP + 4096 {
            let data = batch::build_batch(next, 1, &[(Some(b"k"), Some(&[4u8; 60_000][..]))]);
            let header = BatchHeader::parse(&data).unwrap();
            seg.append(&data, &[(0, header)], 4096, 0).unwrap();
            next += 1;
        }
        let grown = allocated(&path);
        assert!(grown >= seg.size(), "{grown} bytes allocated for {} written", seg.size());
        assert!(grown <= seg.size() + ALLOCATION_STEP + 65_536, "{grown} bytes allocated for {}", seg.size());
        seg.close().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), seg.size());
        assert!(allocated(&path) < seg.size() + 65_536, "{} bytes still allocated at close", allocated(&path));
        let back = Segment::open(tmp.path(), 0, false, capacity, 4096).unwrap();
        assert_eq!(back.next_offset, next, "every batch written reads back");
    }
}
