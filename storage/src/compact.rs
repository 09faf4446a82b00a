//! Log compaction (`cleanup.policy=compact`): closed segments are rewritten
//! to keep only the newest record of each key, and tombstones (null values)
//! once they are older than `delete.retention.ms`. Offsets never change; the
//! active segment is never touched. A rewritten segment is built beside the
//! original (`.cleaned`) and swapped in with a rename, so readers holding the
//! old mapping keep reading it and a crash leaves one whole version.

use std::collections::{HashMap, HashSet};
use std::io::Write;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions};

use crate::batch::{BatchHeader, LOG_OVERHEAD};
use crate::error::{LogError, Result};
use crate::log::PartitionLog;
use crate::segment::{file_name, Segment};

/// What one compaction pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactionStats {
    pub segments_rewritten: usize,
    pub records_removed: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

fn decode(batch: &[u8]) -> Result<Vec<Record>> {
    let mut buf = Bytes::copy_from_slice(batch);
    RecordBatchDecoder::decode(&mut buf)
        .map(|set| set.records)
        .map_err(|e| LogError::Corrupt(format!("cannot decode batch for compaction: {e}")))
}

fn compression_of(h: &BatchHeader) -> Compression {
    match h.compression() {
        1 => Compression::Gzip,
        2 => Compression::Snappy,
        3 => Compression::Lz4,
        4 => Compression::Zstd,
        _ => Compression::None,
    }
}

/// Compacted topics need a key on every record (Kafka rejects the batch
/// with INVALID_RECORD otherwise).
pub fn require_keys(payload: &[u8], batches: &[(usize, BatchHeader)]) -> Result<()> {
    for (pos, h) in batches {
        if h.is_control() {
            continue;
        }
        let records = decode(&payload[*pos..*pos + h.total_size()])?;
        if records.iter().any(|r| r.key.is_none()) {
            return Err(LogError::InvalidRecord("Compacted topic cannot accept message without key".into()));
        }
    }
    Ok(())
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

impl PartitionLog {
    /// One compaction pass over the closed segments.
    pub fn compact(&self, now_ms: i64) -> Result<CompactionStats> {
        // Snapshot the closed segments; the Bytes keep their mappings alive
        // even if retention removes a segment meanwhile.
        let (closed, delete_retention_ms, index_bytes) = {
            let inner = self.read_inner();
            if !inner.config.compact {
                return Ok(CompactionStats::default());
            }
            let n = inner.segments.len();
            let closed: Vec<(i64, u64, i64, Bytes)> = inner
                .segments
                .values()
                .take(n.saturating_sub(1))
                .map(|s| (s.base_offset, s.size(), s.max_timestamp, s.bytes(0, s.size())))
                .collect();
            (closed, inner.config.delete_retention_ms, inner.config.segment_index_bytes)
        };
        if closed.is_empty() {
            return Ok(CompactionStats::default());
        }
        // The newest offset of every key in the closed part of the log.
        // Transactional batches are kept whole and never supersede anything:
        // whether they count depends on a marker that may come later, and
        // readers resolve that themselves. Tombstones of keys written
        // transactionally stay too, or an older committed value would return.
        let mut latest: HashMap<Bytes, i64> = HashMap::new();
        let mut txn_keys: HashSet<Bytes> = HashSet::new();
        for (_, _, _, data) in &closed {
            for (h, raw) in batches(data) {
                if h.is_control() {
                    continue;
                }
                for r in decode(raw)? {
                    if let Some(k) = r.key {
                        if h.is_transactional() {
                            txn_keys.insert(k);
                        } else {
                            latest.insert(k, r.offset);
                        }
                    }
                }
            }
        }
        let mut stats = CompactionStats::default();
        let mut rewritten = Vec::new();
        for (base, size, max_ts, data) in &closed {
            let tombstones_expired = now_ms - max_ts > delete_retention_ms;
            let mut out = BytesMut::with_capacity(data.len());
            let mut changed = false;
            for (h, raw) in batches(data) {
                if h.is_control() || h.is_transactional() {
                    out.extend_from_slice(raw);
                    continue;
                }
                let records = decode(raw)?;
                let total = records.len();
                let kept: Vec<Record> = records
                    .into_iter()
                    .filter(|r| match &r.key {
                        Some(k) => {
                            latest.get(k) == Some(&r.offset)
                                && !(r.value.is_none() && tombstones_expired && !txn_keys.contains(k))
                        }
                        None => true,
                    })
                    .collect();
                if kept.len() == total {
                    out.extend_from_slice(raw);
                    continue;
                }
                changed = true;
                stats.records_removed += total - kept.len();
                if kept.is_empty() {
                    continue;
                }
                let opts = RecordEncodeOptions { version: 2, compression: compression_of(&h) };
                // Kept records may have offset gaps; give them sequences
                // that move with their offsets so they stay one batch.
                let kept: Vec<Record> = kept
                    .into_iter()
                    .map(|mut r| {
                        let delta = (r.offset - h.base_offset) as i32;
                        r.sequence = if h.base_sequence >= 0 { h.base_sequence.wrapping_add(delta) } else { delta - 1 };
                        r
                    })
                    .collect();
                RecordBatchEncoder::encode(&mut out, &kept, &opts)
                    .map_err(|e| LogError::Corrupt(format!("cannot re-encode compacted batch: {e}")))?;
            }
            if !changed {
                continue;
            }
            stats.bytes_before += size;
            stats.bytes_after += out.len() as u64;
            let path = self.dir().join(format!("{}.cleaned", file_name(*base, "log")));
            let mut f = std::fs::File::create(&path)?;
            f.write_all(&out)?;
            f.sync_all()?;
            rewritten.push((*base, *size, path));
        }
        // Swap the rewritten segments in, unless the log changed under us.
        let mut inner = self.write_inner();
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
            std::fs::File::open(self.dir())?.sync_all()?;
            let seg = Segment::open(self.dir(), base, false, 0, index_bytes)?;
            if seg.is_empty() {
                seg.delete()?;
            } else {
                inner.segments.insert(base, seg);
            }
            stats.segments_rewritten += 1;
        }
        if stats.segments_rewritten > 0 {
            tracing::info!(log = %self.dir().display(), ?stats, "compacted");
        }
        Ok(stats)
    }
}
