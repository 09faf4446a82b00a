//! Log compaction (`cleanup.policy=compact`): closed segments are rewritten
//! to keep only the newest record of each key, and tombstones (null values)
//! once they are older than `delete.retention.ms`. Offsets never change; the
//! active segment is never touched. A rewritten segment is built beside the
//! original (`.cleaned`) and swapped in with a rename, so readers holding the
//! old mapping keep reading it and a crash leaves one whole version.
//!
//! Records younger than `min.compaction.lag.ms` are left alone; the broker
//! runs a pass when the dirty share of the log reaches
//! `min.cleanable.dirty.ratio` or a dirty record is older than
//! `max.compaction.lag.ms` (`compact_if_due`). Records are decompressed
//! within the batch limit derived from `max.message.bytes`; a batch past it
//! is kept whole and not compacted.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use crate::batch::{BatchHeader, LOG_OVERHEAD};
use crate::error::Result;
use crate::log::PartitionLog;
use crate::raftindex::SegmentRaftIndex;
use crate::records::{self, Codec, Compression};
use crate::segment::{file_name, Segment};

/// What one compaction pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactionStats {
    pub segments_rewritten: usize,
    pub records_removed: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Batches kept whole because their records could not be read within
    /// the decompression limit (or at all).
    pub batches_skipped: usize,
}

/// The records of one stored batch: (offset, key, is tombstone, raw record).
type Decoded = (Vec<u8>, Vec<(i64, Option<Vec<u8>>, bool, std::ops::Range<usize>)>);

fn decode(h: &BatchHeader, raw: &[u8], limit: usize) -> Result<Decoded> {
    let section = records::decompressed_records(raw, limit)?;
    let parsed = records::parse_records(&section, h.records_count.max(0) as usize)?;
    let base = section.as_ptr() as usize;
    let list = parsed
        .iter()
        .map(|r| {
            let start = r.raw.as_ptr() as usize - base;
            (h.base_offset + r.offset_delta, r.key.map(<[u8]>::to_vec), r.value.is_none(), start..start + r.raw.len())
        })
        .collect();
    Ok((section, list))
}

/// Walks the batches of a segment's bytes.
fn batches(data: &[u8]) -> impl Iterator<Item = (BatchHeader, &[u8])> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        if pos + LOG_OVERHEAD > data.len() {
            return None;
        }
        let h = BatchHeader::parse(&data[pos..]).ok()?;
        let end = pos + h.total_size();
        if h.batch_length <= 0 || end > data.len() {
            return None;
        }
        let slice = &data[pos..end];
        pos = end;
        Some((h, slice))
    })
}

/// A closed segment as compaction sees it: base offset, size, next offset,
/// largest timestamp, first batch's timestamp, and its bytes.
struct Closed {
    base: i64,
    size: u64,
    next_offset: i64,
    max_ts: i64,
    first_ts: i64,
    data: Bytes,
    /// The Raft entries the segment holds (`SegmentRaftIndex::entry_offsets`), if any.
    raft: Option<(u64, i64, Vec<i64>)>,
}

/// What a pass may clean: the closed segments, the log's config, and (when any segment holds
/// Raft entries) each producer's last offset.
type Cleanable = (Vec<Closed>, crate::log::LogConfig, HashMap<i64, i64>);

/// Whether `raw` is a filler (`batch::build_filler`): it holds nothing, so compaction drops it.
fn is_filler(raw: &[u8]) -> bool {
    crate::batch::control_record(raw).is_some_and(|(t, _)| t == crate::batch::CONTROL_COMPACTED)
}

/// Completes the swaps a crash interrupted (see `compact_segments`): a `.swap` journal names a
/// segment whose rewritten log and sidecar were both durable before it was written, so whatever
/// of them is still `.cleaned` is renamed into place. Run when the log opens, before leftover
/// `.cleaned` files (of swaps never journaled) are removed.
pub(crate) fn finish_swaps(dir: &std::path::Path) -> Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name();
        let Some(base) = name.to_string_lossy().strip_suffix(".swap").and_then(|s| s.parse::<i64>().ok()) else {
            continue;
        };
        for ext in ["log", "raftindex"] {
            let live = dir.join(file_name(base, ext));
            let cleaned = dir.join(format!("{}.cleaned", file_name(base, ext)));
            if cleaned.exists() {
                std::fs::rename(&cleaned, &live)?;
            }
        }
        for ext in ["index", "timeindex"] {
            crate::log::remove_if_present(&dir.join(file_name(base, ext)))?;
        }
        crate::log::sync_dir(dir)?;
        std::fs::remove_file(e.path())?;
        crate::log::sync_dir(dir)?;
        tracing::info!(log = %dir.display(), base, "finished a compaction swap a crash interrupted");
    }
    Ok(())
}

impl PartitionLog {
    /// The closed segments compaction may touch: all but the active one, up to the first
    /// holding a record younger than min.compaction.lag.ms, or a Raft entry this replica has not
    /// applied yet (committed entries are never truncated, so rewriting them is safe; a follower
    /// reading them back gets the compacted batches, with fillers for what went).
    fn cleanable(&self, now_ms: i64) -> Option<Cleanable> {
        let inner = self.read_inner();
        if !inner.config.compact {
            return None;
        }
        let lag = inner.config.min_compaction_lag_ms;
        let n = inner.segments.len();
        let closed: Vec<Closed> = inner
            .segments
            .values()
            .take(n.saturating_sub(1))
            .take_while(|s| lag <= 0 || now_ms.saturating_sub(s.max_timestamp) >= lag)
            .take_while(|s| !inner.raft.contains_key(&s.base_offset) || s.next_offset <= inner.hw)
            .map(|s| {
                let data = s.bytes(0, s.size());
                let first_ts = batches(&data).next().map_or(-1, |(h, _)| h.base_timestamp);
                Closed {
                    base: s.base_offset,
                    size: s.size(),
                    next_offset: s.next_offset,
                    max_ts: s.max_timestamp,
                    first_ts,
                    data,
                    raft: inner.raft.get(&s.base_offset).map(|i| i.entry_offsets()),
                }
            })
            .collect();
        let producers =
            if closed.iter().any(|c| c.raft.is_some()) { inner.producers.last_offsets() } else { HashMap::new() };
        Some((closed, inner.config.clone(), producers))
    }

    /// Compacts when Kafka's log cleaner would pick this log: its dirty
    /// (not yet compacted) share of the cleanable bytes is at least
    /// `min.cleanable.dirty.ratio`, or a dirty segment's first record is
    /// older than `max.compaction.lag.ms`.
    pub fn compact_if_due(&self, now_ms: i64) -> Result<CompactionStats> {
        let Some((closed, cfg, producers)) = self.cleanable(now_ms) else {
            return Ok(CompactionStats::default());
        };
        let clean_upto = self.cleaned_upto.load(Ordering::Acquire);
        let dirty: Vec<&Closed> = closed.iter().filter(|c| c.next_offset > clean_upto).collect();
        let dirty_bytes: u64 = dirty.iter().map(|c| c.size).sum();
        let total: u64 = closed.iter().map(|c| c.size).sum();
        if dirty_bytes == 0 {
            return Ok(CompactionStats::default());
        }
        let ratio = dirty_bytes as f64 / total.max(1) as f64;
        let overdue =
            dirty.iter().any(|c| c.first_ts >= 0 && now_ms.saturating_sub(c.first_ts) > cfg.max_compaction_lag_ms);
        if ratio < cfg.min_cleanable_dirty_ratio && !overdue {
            return Ok(CompactionStats::default());
        }
        self.compact_segments(now_ms, closed, &cfg, &producers)
    }

    /// One compaction pass over the cleanable closed segments, whatever
    /// their dirty ratio.
    pub fn compact(&self, now_ms: i64) -> Result<CompactionStats> {
        match self.cleanable(now_ms) {
            Some((closed, cfg, producers)) => self.compact_segments(now_ms, closed, &cfg, &producers),
            None => Ok(CompactionStats::default()),
        }
    }

    fn compact_segments(
        &self,
        now_ms: i64,
        closed: Vec<Closed>,
        cfg: &crate::log::LogConfig,
        producers: &HashMap<i64, i64>,
    ) -> Result<CompactionStats> {
        if closed.is_empty() {
            return Ok(CompactionStats::default());
        }
        let limit = cfg.decompressed_limit();
        let mut stats = CompactionStats::default();
        // The newest offset of every key in the cleanable part of the log.
        // Transactional batches are kept whole and never supersede anything:
        // whether they count depends on a marker that may come later, and
        // readers resolve that themselves. Tombstones of keys written
        // transactionally stay too, or an older committed value would return.
        let mut latest: HashMap<Vec<u8>, i64> = HashMap::new();
        let mut txn_keys: HashSet<Vec<u8>> = HashSet::new();
        let mut unreadable: HashSet<(i64, i64)> = HashSet::new();
        for c in &closed {
            for (h, raw) in batches(&c.data) {
                if h.is_control() {
                    continue;
                }
                let recs = match decode(&h, raw, limit) {
                    Ok((_, recs)) => recs,
                    Err(e) => {
                        // Kept whole: what cannot be read cannot be judged.
                        tracing::warn!(log = %self.dir().display(), offset = h.base_offset, error = %e, "batch kept whole by compaction");
                        unreadable.insert((c.base, h.base_offset));
                        stats.batches_skipped += 1;
                        continue;
                    }
                };
                for (offset, key, _, _) in recs {
                    if let Some(k) = key {
                        if h.is_transactional() {
                            txn_keys.insert(k);
                        } else {
                            latest.insert(k, offset);
                        }
                    }
                }
            }
        }
        let mut rewritten = Vec::new();
        for c in &closed {
            let tombstones_expired = now_ms - c.max_ts > cfg.delete_retention_ms;
            let mut out = BytesMut::with_capacity(c.data.len());
            let mut changed = false;
            // A segment holding Raft entries keeps its last batch whole, so it still ends where
            // its entries do (a reopen judges the sidecar's rows against the segment's end).
            let last_base = if c.raft.is_some() { batches(&c.data).last().map(|(h, _)| h.base_offset) } else { None };
            // Each kept batch's base offset and where it ends in the new file.
            let mut kept_at: Vec<(i64, u64)> = Vec::new();
            for (h, raw) in batches(&c.data) {
                let keep_whole = Some(h.base_offset) == last_base;
                if c.raft.is_some() && !keep_whole && is_filler(raw) {
                    changed = true;
                    continue;
                }
                if keep_whole || h.is_control() || h.is_transactional() || unreadable.contains(&(c.base, h.base_offset))
                {
                    out.extend_from_slice(raw);
                    kept_at.push((h.base_offset, out.len() as u64));
                    continue;
                }
                let (section, recs) = decode(&h, raw, limit)?;
                let total = recs.len();
                let mut kept = Vec::with_capacity(section.len());
                let mut kept_n = 0i32;
                for (offset, key, tombstone, range) in &recs {
                    let keep = match key {
                        Some(k) => {
                            latest.get(k) == Some(offset)
                                && !(*tombstone && tombstones_expired && !txn_keys.contains(k))
                        }
                        None => true,
                    };
                    if keep {
                        kept.extend_from_slice(&section[range.clone()]);
                        kept_n += 1;
                    }
                }
                // A replicated log keeps a producer's newest batch even when all its records
                // went, as Kafka's cleaner does: a replica rebuilding producer state from the
                // log (a follower reading it back) must still see the last sequence.
                let producers_last = kept_n == 0
                    && c.raft.is_some()
                    && h.producer_id >= 0
                    && producers.get(&h.producer_id).is_some_and(|o| (h.base_offset..=h.last_offset()).contains(o));
                if kept_n as usize == total || producers_last {
                    out.extend_from_slice(raw);
                    kept_at.push((h.base_offset, out.len() as u64));
                    continue;
                }
                changed = true;
                stats.records_removed += total - kept_n as usize;
                if kept_n == 0 {
                    continue;
                }
                // Kept records stay byte for byte: their offset and timestamp
                // deltas are relative to the unchanged header, whose last
                // offset delta also stays (an idempotent producer's last
                // sequence survives compaction, as in Kafka).
                let codec = Codec::from_attributes(h.attributes)?;
                // Kafka's default level of each codec.
                let level = match codec {
                    Codec::Zstd => 3,
                    Codec::Lz4 => 9,
                    _ => -1,
                };
                let batch = records::rebuild(raw, &kept, kept_n, Compression { codec, level })?;
                out.extend_from_slice(&batch);
                kept_at.push((h.base_offset, out.len() as u64));
            }
            if !changed {
                continue;
            }
            stats.bytes_before += c.size;
            stats.bytes_after += out.len() as u64;
            let path = self.dir().join(format!("{}.cleaned", file_name(c.base, "log")));
            let mut f = std::fs::File::create(&path)?;
            f.write_all(&out)?;
            f.sync_all()?;
            // The entries keep their offsets; each now starts where the kept batches before its
            // offset end.
            let sidecar = match &c.raft {
                Some(entries) => {
                    let new_pos = |offset: i64| {
                        let i = kept_at.partition_point(|(base, _)| *base < offset);
                        if i == 0 {
                            0
                        } else {
                            kept_at[i - 1].1
                        }
                    };
                    Some((SegmentRaftIndex::write_rewritten(self.dir(), c.base, entries, new_pos)?, entries))
                }
                None => None,
            };
            rewritten.push((c.base, c.size, path, sidecar));
        }
        // Swap the rewritten segments in, unless the log changed under us.
        let mut inner = self.write_inner();
        let index_bytes = inner.config.segment_index_bytes;
        for (base, size, cleaned, sidecar) in rewritten {
            let same_entries = match &sidecar {
                Some((_, entries)) => inner.raft.get(&base).is_some_and(|i| &i.entry_offsets() == *entries),
                None => !inner.raft.contains_key(&base),
            };
            let unchanged = same_entries
                && inner.segments.get(&base).is_some_and(|s| s.closed && s.size() == size)
                && inner.segments.keys().next_back() != Some(&base);
            if !unchanged {
                std::fs::remove_file(&cleaned)?;
                if let Some((path, _)) = &sidecar {
                    std::fs::remove_file(path)?;
                }
                continue;
            }
            // A segment and its sidecar are swapped as a pair: once both new files are durable
            // a journal names the swap, and a crash part way is finished when the log opens
            // (`finish_swaps`); without one, the old pair stays.
            let journal = self.dir().join(file_name(base, "swap"));
            if sidecar.is_some() {
                crate::log::sync_dir(self.dir())?;
                std::fs::File::create(&journal)?.sync_all()?;
                crate::log::sync_dir(self.dir())?;
            }
            // The segment's last write stays what it was: retention of a segment without
            // timestamps goes by it.
            if let Ok(mtime) = std::fs::metadata(self.dir().join(file_name(base, "log"))).and_then(|m| m.modified()) {
                std::fs::File::options().write(true).open(&cleaned)?.set_modified(mtime)?;
            }
            // The old segment and sidecar stay in the maps until the new pair is open: a failure
            // on the way leaves readers on the old files (whose mappings outlive the renames)
            // and the journal to finish the swap at the next open.
            for ext in ["index", "timeindex"] {
                match std::fs::remove_file(self.dir().join(file_name(base, ext))) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            std::fs::rename(&cleaned, self.dir().join(file_name(base, "log")))?;
            if let Some((path, _)) = &sidecar {
                std::fs::rename(path, self.dir().join(file_name(base, "raftindex")))?;
            }
            crate::log::sync_dir(self.dir())?;
            if sidecar.is_some() {
                std::fs::remove_file(&journal)?;
                crate::log::sync_dir(self.dir())?;
            }
            let seg = Segment::open(self.dir(), base, false, 0, index_bytes)?;
            let idx = match &sidecar {
                Some((_, entries)) => Some(
                    SegmentRaftIndex::open(self.dir(), base, seg.next_offset, seg.size())?
                        .filter(|i| &i.entry_offsets() == *entries)
                        .ok_or_else(|| {
                            crate::error::LogError::Corrupt(format!(
                                "the rewritten sidecar of segment {base} lost entries in {}",
                                self.dir().display()
                            ))
                        })?,
                ),
                None => None,
            };
            inner.segments.remove(&base);
            if let Some(idx) = idx {
                inner.raft.insert(base, idx);
            }
            if seg.is_empty() {
                seg.delete()?;
            } else {
                inner.segments.insert(base, seg);
            }
            stats.segments_rewritten += 1;
        }
        drop(inner);
        if let Some(last) = closed.last() {
            self.cleaned_upto.fetch_max(last.next_offset, Ordering::AcqRel);
        }
        if stats.segments_rewritten > 0 || stats.batches_skipped > 0 {
            tracing::info!(log = %self.dir().display(), ?stats, "compacted");
        }
        Ok(stats)
    }
}
