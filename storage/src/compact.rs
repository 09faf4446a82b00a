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
}

impl PartitionLog {
    /// The closed segments compaction may touch: all but the active one,
    /// up to the first holding a record younger than min.compaction.lag.ms.
    fn cleanable(&self, now_ms: i64) -> Option<(Vec<Closed>, crate::log::LogConfig)> {
        let inner = self.read_inner();
        if !inner.config.compact {
            return None;
        }
        let lag = inner.config.min_compaction_lag_ms;
        let n = inner.segments.len();
        let closed = inner
            .segments
            .values()
            .take(n.saturating_sub(1))
            .take_while(|s| lag <= 0 || now_ms.saturating_sub(s.max_timestamp) >= lag)
            // A segment holding Raft entries is left whole: its `.raftindex` rows point into it,
            // and a follower must read back the bytes its leader stored. (Cleaning such segments
            // waits for Raft's purge point to pass them, cluster plan §7.)
            .take_while(|s| !inner.raft.contains_key(&s.base_offset))
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
                }
            })
            .collect();
        Some((closed, inner.config.clone()))
    }

    /// Compacts when Kafka's log cleaner would pick this log: its dirty
    /// (not yet compacted) share of the cleanable bytes is at least
    /// `min.cleanable.dirty.ratio`, or a dirty segment's first record is
    /// older than `max.compaction.lag.ms`.
    pub fn compact_if_due(&self, now_ms: i64) -> Result<CompactionStats> {
        let Some((closed, cfg)) = self.cleanable(now_ms) else {
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
        self.compact_segments(now_ms, closed, &cfg)
    }

    /// One compaction pass over the cleanable closed segments, whatever
    /// their dirty ratio.
    pub fn compact(&self, now_ms: i64) -> Result<CompactionStats> {
        match self.cleanable(now_ms) {
            Some((closed, cfg)) => self.compact_segments(now_ms, closed, &cfg),
            None => Ok(CompactionStats::default()),
        }
    }

    fn compact_segments(
        &self,
        now_ms: i64,
        closed: Vec<Closed>,
        cfg: &crate::log::LogConfig,
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
            for (h, raw) in batches(&c.data) {
                if h.is_control() || h.is_transactional() || unreadable.contains(&(c.base, h.base_offset)) {
                    out.extend_from_slice(raw);
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
                if kept_n as usize == total {
                    out.extend_from_slice(raw);
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
            rewritten.push((c.base, c.size, path));
        }
        // Swap the rewritten segments in, unless the log changed under us.
        let mut inner = self.write_inner();
        let index_bytes = inner.config.segment_index_bytes;
        for (base, size, cleaned) in rewritten {
            let unchanged = inner.segments.get(&base).is_some_and(|s| s.closed && s.size() == size)
                && inner.segments.keys().next_back() != Some(&base);
            if !unchanged {
                std::fs::remove_file(&cleaned)?;
                continue;
            }
            inner.segments.remove(&base);
            for ext in ["index", "timeindex"] {
                match std::fs::remove_file(self.dir().join(file_name(base, ext))) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            std::fs::rename(&cleaned, self.dir().join(file_name(base, "log")))?;
            crate::log::sync_dir(self.dir())?;
            let seg = Segment::open(self.dir(), base, false, 0, index_bytes)?;
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
