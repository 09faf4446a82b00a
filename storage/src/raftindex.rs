//! The `.raftindex` sidecar of a replicated log's segment: which Raft entries the segment holds
//! and where each one ends, so Raft index → (offset, position) and offset → Raft index survive a
//! restart without a second copy of the data.
//!
//! Layout: a 24-byte header (magic, the segment's first Raft index, where that entry starts as an
//! offset delta and a file position, a CRC-32C of those fields), then one 8-byte row per entry:
//! the offset delta and position where the entry *ends* (its successor starts there). Storing ends
//! rather than starts lets recovery tell a segment tail no row covers (written, never reported
//! durable) from one that was. A row torn by a crash, or zero-filled by the filesystem, breaks the
//! ascending order and is dropped with everything after it.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{LogError, Result};
use crate::segment::file_name;

const MAGIC: &[u8; 4] = b"FJRI";
/// Bytes of the header.
pub const HEADER: usize = 24;
/// Bytes per entry row.
pub const ROW: usize = 8;
/// Bytes of zeros written ahead of the rows at a time (`push`), at most and at least.
const ZEROED_CHUNK: usize = 64 << 10;
const MIN_ZEROED_CHUNK: usize = 4 << 10;

/// One segment's entries, in memory and in its sidecar file.
#[derive(Debug)]
pub(crate) struct SegmentRaftIndex {
    path: PathBuf,
    file: Arc<File>,
    base_offset: i64,
    /// Raft index of the first entry that starts in this segment.
    pub(crate) first_index: u64,
    /// Where that first entry starts (the segment may begin with batches that are no entry:
    /// data below the Raft log).
    pub(crate) start_offset: i64,
    pub(crate) start_pos: u64,
    /// Per entry, its end: (offset after its last record, file position after its last byte).
    ends: Vec<(i64, u64)>,
    /// The file's length: rows are written into zeros up to here (`push`).
    zeroed_to: u64,
    /// Rows written since the last sync (atomic and shared: `sync` takes it under the log's
    /// read lock and sets it again if the fsync fails).
    dirty: Arc<AtomicBool>,
}

/// A sidecar's rows to sync, taken from it by `take_dirty`.
pub(crate) struct DirtyRows {
    path: PathBuf,
    file: Arc<File>,
    dirty: Arc<AtomicBool>,
}

impl DirtyRows {
    /// Syncs the rows; on failure the sidecar is dirty again, so the next sync retries rather
    /// than finding nothing to do.
    pub(crate) fn sync(self) -> Result<()> {
        #[cfg(test)]
        crate::log::tests::SIDECARS_SYNCED.with(|d| d.borrow_mut().push(self.path.clone()));
        let _ = &self.path;
        if let Err(e) = crate::disk::sync_data(&self.file) {
            self.dirty.store(true, Ordering::Release);
            return Err(e.into());
        }
        Ok(())
    }
}

/// Where one entry lies in its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntrySpan {
    pub index: u64,
    pub base_offset: i64,
    /// The offset after the entry's last record.
    pub next_offset: i64,
    pub start_pos: u64,
    pub end_pos: u64,
}

/// How many rows a sidecar's bytes hold: the rows written, up to the zeros written ahead of
/// them (for tests that play a crash by cutting rows off).
pub fn rows_written(file: &[u8]) -> usize {
    file.get(HEADER..).unwrap_or_default().chunks_exact(ROW).take_while(|r| r.iter().any(|b| *b != 0)).count()
}

fn rel(base: i64, offset: i64) -> Result<u32> {
    u32::try_from(offset - base)
        .map_err(|_| LogError::InvalidRecord(format!("offset {offset} is too far from its segment base {base}")))
}

fn pos32(pos: u64) -> Result<u32> {
    u32::try_from(pos).map_err(|_| LogError::InvalidRecord(format!("segment position {pos} exceeds 4 GiB")))
}

fn header(first_index: u64, start_rel: u32, start_pos: u32) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(MAGIC);
    h[4..12].copy_from_slice(&first_index.to_be_bytes());
    h[12..16].copy_from_slice(&start_rel.to_be_bytes());
    h[16..20].copy_from_slice(&start_pos.to_be_bytes());
    let crc = crc32c::crc32c(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_be_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Extension of a sidecar being created (`create`); one found at open is a crash's leftover.
pub(crate) const TMP_EXT: &str = "raftindex-new";

pub(crate) fn path_for(dir: &Path, base_offset: i64) -> PathBuf {
    dir.join(file_name(base_offset, "raftindex"))
}

impl SegmentRaftIndex {
    /// Creates the sidecar of segment `base_offset` whose first entry is `first_index`, starting
    /// at `start_offset` / `start_pos`. The header is durable (file and directory synced) before
    /// this returns, so the segment data written after it is always judged against it.
    pub(crate) fn create(
        dir: &Path,
        base_offset: i64,
        first_index: u64,
        start_offset: i64,
        start_pos: u64,
    ) -> Result<SegmentRaftIndex> {
        let path = path_for(dir, base_offset);
        let h = header(first_index, rel(base_offset, start_offset)?, pos32(start_pos)?);
        // Written beside and renamed into place: a crash mid-create leaves the old file or none,
        // never a sidecar without a whole header (which open would have to refuse).
        let tmp = path.with_extension(TMP_EXT);
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp)?;
        crate::disk::write_at(&file, &h, 0)?;
        crate::disk::sync_all(&file)?;
        std::fs::rename(&tmp, &path)?;
        crate::log::sync_dir(dir)?;
        Ok(SegmentRaftIndex {
            path,
            file: Arc::new(file),
            base_offset,
            first_index,
            start_offset,
            start_pos,
            ends: Vec::new(),
            zeroed_to: HEADER as u64,
            dirty: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Loads segment `base_offset`'s sidecar, if it has one. Rows are kept while they ascend and
    /// stay within `end_offset` / `size` (what recovery left of the segment); the file is cut to
    /// the rows kept.
    pub(crate) fn open(dir: &Path, base_offset: i64, end_offset: i64, size: u64) -> Result<Option<SegmentRaftIndex>> {
        let path = path_for(dir, base_offset);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if data.iter().all(|b| *b == 0) {
            // A header cut short or never written (a crash while an older version created the
            // file in place), with nothing after it but zeros (written ahead of the rows, and
            // kept by a disk that lost the header's sync): it was synced before any entry of it
            // was written, so the segment holds none of its entries. The sidecar goes, as if
            // never created.
            tracing::warn!(file = %path.display(), "removing a sidecar whose creation a crash cut short");
            crate::log::remove_if_present(&path)?;
            return Ok(None);
        }
        if data.len() < HEADER || &data[..4] != MAGIC || crc32c::crc32c(&data[..20]) != u32_at(&data, 20) {
            // The header is synced before any data of the segment is written, so a bad one is
            // damage, not a crash: refuse rather than guess which entries the segment holds.
            return Err(LogError::Corrupt(format!("{} has a damaged header", path.display())));
        }
        let mut first = [0u8; 8];
        first.copy_from_slice(&data[4..12]);
        let first_index = u64::from_be_bytes(first);
        let start_offset = base_offset + i64::from(u32_at(&data, 12));
        let start_pos = u64::from(u32_at(&data, 16));
        let mut ends = Vec::new();
        let (mut prev_off, mut prev_pos) = (start_offset, start_pos);
        for row in data[HEADER..].chunks_exact(ROW) {
            let off = base_offset + i64::from(u32_at(row, 0));
            let pos = u64::from(u32_at(row, 4));
            // Positions may repeat: an entry whose batches compaction removed holds no bytes
            // (`stored_entry` sends a filler for it). Offsets always move on.
            if off <= prev_off || pos < prev_pos || off > end_offset || pos > size {
                break;
            }
            ends.push((off, pos));
            (prev_off, prev_pos) = (off, pos);
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let keep = (HEADER + ends.len() * ROW) as u64;
        if data.len() as u64 != keep {
            file.set_len(keep)?;
            crate::disk::sync_all(&file)?;
        }
        Ok(Some(SegmentRaftIndex {
            path,
            file: Arc::new(file),
            base_offset,
            first_index,
            start_offset,
            start_pos,
            ends,
            zeroed_to: keep,
            dirty: Arc::new(AtomicBool::new(false)),
        }))
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The index the next entry written into this segment must have.
    pub(crate) fn next_index(&self) -> u64 {
        self.first_index + self.ends.len() as u64
    }

    /// The last entry's index, if any.
    pub(crate) fn last_index(&self) -> Option<u64> {
        self.next_index().checked_sub(1).filter(|_| !self.ends.is_empty())
    }

    /// Where the entries cover the segment up to: (offset, position).
    pub(crate) fn covered_end(&self) -> (i64, u64) {
        self.ends.last().copied().unwrap_or((self.start_offset, self.start_pos))
    }

    /// Records an entry that ends at `next_offset` / `end_pos`. The caller has written its data.
    pub(crate) fn push(&mut self, next_offset: i64, end_pos: u64) -> Result<()> {
        let mut row = [0u8; ROW];
        row[..4].copy_from_slice(&rel(self.base_offset, next_offset)?.to_be_bytes());
        row[4..].copy_from_slice(&pos32(end_pos)?.to_be_bytes());
        let at = (HEADER + self.ends.len() * ROW) as u64;
        if at + ROW as u64 > self.zeroed_to {
            // Rows go into zeros written ahead, a chunk at a time, so that syncing a row
            // changes no file length: a length change makes every sync write the inode too,
            // and this file is synced as often as the log. Zero rows read as no rows (`open`).
            // As much as the rows take already, within bounds: a partition that takes little
            // holds a page of zeros, a busy one a chunk.
            let zeros = vec![0u8; (at as usize).clamp(MIN_ZEROED_CHUNK, ZEROED_CHUNK)];
            crate::disk::write_at(&self.file, &zeros, at)?;
            self.zeroed_to = at + zeros.len() as u64;
        }
        crate::disk::write_at(&self.file, &row, at)?;
        self.ends.push((next_offset, end_pos));
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// The entries as (first index, where the first starts as an offset, each one's end offset):
    /// what compaction keeps when it rewrites the segment.
    pub(crate) fn entry_offsets(&self) -> (u64, i64, Vec<i64>) {
        (self.first_index, self.start_offset, self.ends.iter().map(|(o, _)| *o).collect())
    }

    /// Writes, beside this sidecar, the one of the segment compaction rewrote: the same entries
    /// at the same offsets, at the positions `new_pos` gives each offset in the new file.
    /// Synced; returns its path (`<sidecar>.cleaned`), for the caller to swap in.
    pub(crate) fn write_rewritten(
        dir: &Path,
        base_offset: i64,
        entries: &(u64, i64, Vec<i64>),
        new_pos: impl Fn(i64) -> u64,
    ) -> Result<PathBuf> {
        let (first_index, start_offset, ends) = entries;
        let mut data = Vec::with_capacity(HEADER + ends.len() * ROW);
        data.extend_from_slice(&header(*first_index, rel(base_offset, *start_offset)?, pos32(new_pos(*start_offset))?));
        for end in ends {
            data.extend_from_slice(&rel(base_offset, *end)?.to_be_bytes());
            data.extend_from_slice(&pos32(new_pos(*end))?.to_be_bytes());
        }
        let path = dir.join(format!("{}.cleaned", file_name(base_offset, "raftindex")));
        let mut f = File::create(&path)?;
        std::io::Write::write_all(&mut f, &data)?;
        crate::disk::sync_all(&f)?;
        Ok(path)
    }

    /// Checks that an entry of `len` bytes ending at `next_offset` fits the row format.
    pub(crate) fn check_fits(base_offset: i64, next_offset: i64, end_pos: u64) -> Result<()> {
        rel(base_offset, next_offset)?;
        pos32(end_pos)?;
        Ok(())
    }

    /// The span of the entry at `index`, if this segment holds it.
    pub(crate) fn span(&self, index: u64) -> Option<EntrySpan> {
        let i = usize::try_from(index.checked_sub(self.first_index)?).ok()?;
        let (next_offset, end_pos) = *self.ends.get(i)?;
        let (base_offset, start_pos) = if i == 0 { (self.start_offset, self.start_pos) } else { self.ends[i - 1] };
        Some(EntrySpan { index, base_offset, next_offset, start_pos, end_pos })
    }

    /// The index of the entry holding `offset`, if this segment holds it.
    pub(crate) fn index_for_offset(&self, offset: i64) -> Option<u64> {
        if offset < self.start_offset {
            return None;
        }
        let i = self.ends.partition_point(|(end, _)| *end <= offset);
        (i < self.ends.len()).then_some(self.first_index + i as u64)
    }

    /// Drops the entries that end after `offset` (the segment was cut there), durably.
    pub(crate) fn truncate_after_offset(&mut self, offset: i64) -> Result<()> {
        let keep = self.ends.partition_point(|(end, _)| *end <= offset);
        if keep == self.ends.len() {
            return Ok(());
        }
        self.ends.truncate(keep);
        self.zeroed_to = (HEADER + keep * ROW) as u64;
        self.file.set_len(self.zeroed_to)?;
        crate::disk::sync_all(&self.file)?;
        self.dirty.store(false, Ordering::Release);
        Ok(())
    }

    /// Makes the rows written so far durable now: a segment's rows must be before the next
    /// segment's header is, or a crash could keep the later sidecar and lose entries of this
    /// one, leaving a hole in the Raft log.
    pub(crate) fn sync_rows(&self) -> Result<()> {
        #[cfg(test)]
        crate::log::tests::SIDECARS_SYNCED.with(|d| d.borrow_mut().push(self.path.clone()));
        self.dirty.store(false, Ordering::Release);
        if let Err(e) = crate::disk::sync_data(&self.file) {
            self.dirty.store(true, Ordering::Release);
            return Err(e.into());
        }
        Ok(())
    }

    /// The rows to sync before the entries written since the last sync are reported durable;
    /// None when there is nothing new. Marked clean now: a row pushed during the fsync marks
    /// it dirty again, so no row is ever left unsynced behind a clean flag.
    pub(crate) fn take_dirty(&self) -> Option<DirtyRows> {
        self.dirty.swap(false, Ordering::AcqRel).then(|| DirtyRows {
            path: self.path.clone(),
            file: self.file.clone(),
            dirty: self.dirty.clone(),
        })
    }

    pub(crate) fn delete(&self) -> Result<()> {
        crate::log::remove_if_present(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(dir: &Path, base: i64) -> usize {
        (std::fs::metadata(path_for(dir, base)).unwrap().len() as usize - HEADER) / ROW
    }

    #[test]
    fn entries_map_both_ways_and_survive_a_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let mut idx = SegmentRaftIndex::create(tmp.path(), 100, 7, 103, 50).unwrap();
        assert_eq!((idx.next_index(), idx.last_index()), (7, None));
        idx.push(105, 120).unwrap();
        idx.push(106, 200).unwrap();
        idx.push(110, 260).unwrap();
        let check = |idx: &SegmentRaftIndex| {
            assert_eq!(
                idx.span(8),
                Some(EntrySpan { index: 8, base_offset: 105, next_offset: 106, start_pos: 120, end_pos: 200 })
            );
            assert_eq!(idx.span(7).map(|s| (s.base_offset, s.start_pos)), Some((103, 50)));
            assert_eq!((idx.span(6), idx.span(10)), (None, None));
            assert_eq!(idx.index_for_offset(102), None, "below the first entry");
            assert_eq!(idx.index_for_offset(104), Some(7));
            assert_eq!(idx.index_for_offset(109), Some(9));
            assert_eq!(idx.index_for_offset(110), None);
            assert_eq!(idx.last_index(), Some(9));
        };
        check(&idx);
        drop(idx);
        check(&SegmentRaftIndex::open(tmp.path(), 100, 110, 260).unwrap().unwrap());
    }

    #[test]
    fn reopening_drops_rows_past_the_segment_and_torn_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let mut idx = SegmentRaftIndex::create(tmp.path(), 0, 0, 0, 0).unwrap();
        for i in 1..=4 {
            idx.push(i, i as u64 * 100).unwrap();
        }
        drop(idx);
        // Recovery cut the segment after the third entry: the fourth row goes, file and memory.
        let idx = SegmentRaftIndex::open(tmp.path(), 0, 3, 300).unwrap().unwrap();
        assert_eq!((idx.len(), idx.covered_end()), (3, (3, 300)));
        assert_eq!(rows(tmp.path(), 0), 3);
        drop(idx);
        // Half a row, then a zero-filled row, as a crash may leave them.
        let path = path_for(tmp.path(), 0);
        let mut data = std::fs::read(&path).unwrap();
        data.extend_from_slice(&[0, 0, 0, 4, 0]);
        std::fs::write(&path, &data).unwrap();
        assert_eq!(SegmentRaftIndex::open(tmp.path(), 0, 10, 1000).unwrap().unwrap().len(), 3);
        data.truncate(HEADER + 3 * ROW);
        data.extend_from_slice(&[0; ROW]);
        std::fs::write(&path, &data).unwrap();
        assert_eq!(SegmentRaftIndex::open(tmp.path(), 0, 10, 1000).unwrap().unwrap().len(), 3);
    }

    /// Rows go into zeros written ahead a chunk at a time, so the file's length (which a sync
    /// would have to write too) changes once a chunk, not once a row; a reopen reads the rows up
    /// to the zeros and trims the rest.
    #[test]
    fn rows_are_written_into_zeros_ahead_and_a_reopen_trims_them() {
        let tmp = tempfile::tempdir().unwrap();
        let path = path_for(tmp.path(), 0);
        let len = || std::fs::metadata(&path).unwrap().len();
        let mut idx = SegmentRaftIndex::create(tmp.path(), 0, 0, 0, 0).unwrap();
        assert_eq!(len(), HEADER as u64);
        idx.push(1, 100).unwrap();
        assert_eq!(len(), (HEADER + MIN_ZEROED_CHUNK) as u64, "a page of zeros for the first rows");
        let rows = 20_000;
        let mut lengths = std::collections::BTreeSet::from([len()]);
        for i in 2..=rows {
            idx.push(i, i as u64 * 100).unwrap();
            lengths.insert(len());
        }
        // 4, 8, 16, 32 and then 64 KiB at a time: a handful of length changes for 20,000 rows.
        assert!(lengths.len() <= 8, "the length changed {} times", lengths.len() - 1);
        assert!(len() >= (HEADER + rows as usize * ROW) as u64);
        assert_eq!(rows_written(&std::fs::read(&path).unwrap()), rows as usize);
        drop(idx);
        let mut idx = SegmentRaftIndex::open(tmp.path(), 0, i64::MAX, u64::MAX >> 1).unwrap().unwrap();
        assert_eq!(idx.len(), rows as usize);
        assert_eq!(len(), (HEADER + rows as usize * ROW) as u64, "trimmed to its rows");
        idx.push(rows + 1, (rows as u64 + 1) * 100).unwrap();
        drop(idx);
        assert_eq!(
            SegmentRaftIndex::open(tmp.path(), 0, i64::MAX, u64::MAX >> 1).unwrap().unwrap().len(),
            rows as usize + 1
        );
    }

    /// A sidecar of zeros only (its header's sync lost, zeros written ahead kept) names no
    /// entry: it goes, as one whose header was cut short does.
    #[test]
    fn a_sidecar_of_zeros_only_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = path_for(tmp.path(), 0);
        std::fs::write(&path, vec![0u8; HEADER + ZEROED_CHUNK]).unwrap();
        assert!(SegmentRaftIndex::open(tmp.path(), 0, 10, 1000).unwrap().is_none());
        assert!(!path.exists());
    }

    #[test]
    fn a_damaged_header_is_an_error_and_a_missing_file_is_none() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(SegmentRaftIndex::open(tmp.path(), 0, 0, 0).unwrap().is_none());
        SegmentRaftIndex::create(tmp.path(), 0, 5, 0, 0).unwrap();
        let path = path_for(tmp.path(), 0);
        let mut data = std::fs::read(&path).unwrap();
        data[6] ^= 1;
        std::fs::write(&path, &data).unwrap();
        assert!(matches!(SegmentRaftIndex::open(tmp.path(), 0, 0, 0), Err(LogError::Corrupt(_))));
    }

    #[test]
    fn truncation_cuts_rows_durably_and_offsets_must_fit() {
        let tmp = tempfile::tempdir().unwrap();
        let mut idx = SegmentRaftIndex::create(tmp.path(), 0, 0, 0, 0).unwrap();
        idx.push(2, 10).unwrap();
        idx.push(5, 20).unwrap();
        idx.truncate_after_offset(4).unwrap();
        assert_eq!((idx.len(), idx.next_index()), (1, 1));
        assert_eq!(rows(tmp.path(), 0), 1);
        assert!(idx.push(1 << 33, 30).is_err(), "an offset delta past u32 is refused");
        assert!(SegmentRaftIndex::check_fits(0, 10, 1 << 33).is_err());
    }
}
