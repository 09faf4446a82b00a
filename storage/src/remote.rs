//! What a partition holds in remote storage (KIP-405's tiered storage): the manifest of its
//! segments copied to the bucket, the changes that move it, and the byte-level helpers a remote
//! reader needs (index lookups and batch boundaries in downloaded ranges).
//!
//! The manifest lives beside the log (`remote-manifest.json`). A replicated partition changes it
//! only through its Raft log (a control entry per change, applied on every replica), so each
//! replica knows what is remote and a new leader carries on where the old one stopped. Storage
//! reads one thing from it: how far the remote copy reaches, below which local retention may
//! delete segments.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::batch::BatchHeader;
use crate::producer::AbortedTxn;

/// The manifest's file in a partition directory.
pub const MANIFEST_FILE: &str = "remote-manifest.json";

/// One segment copied to the bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSegment {
    /// First offset of the copy (the local segment's base offset on the leader that copied it).
    pub base_offset: i64,
    /// Offset after its last batch.
    pub next_offset: i64,
    /// Epoch of the leader that copied it: with `id`, what makes its object names unique.
    pub leader_epoch: i32,
    /// Unique per copy, so two leaders copying the same range never write the same object.
    pub id: String,
    /// Bytes of its `.log` object as stored (chunks of zstd when `compressed`).
    pub size: u64,
    /// Bytes of the batches before archive compression.
    pub raw_size: u64,
    /// The newest record timestamp in it (-1 when none carried one).
    pub max_timestamp: i64,
    /// Wall clock of the copy (milliseconds since the epoch).
    pub copied_ms: i64,
    /// Aborted transactions whose abort marker is in this segment: read_committed consumers of
    /// remote data drop their records.
    #[serde(default)]
    pub aborted: Vec<AbortedTxn>,
    /// Leader epochs starting in this segment: (epoch, start offset).
    #[serde(default)]
    pub epochs: Vec<(i32, i64)>,
    /// Set when the `.log` object holds independently compressed chunks (`chunks` gives their
    /// raw and stored extents); unset, it is the batches byte for byte.
    #[serde(default)]
    pub chunks: Option<Vec<ChunkExtent>>,
    /// The partition directory of the bucket holding the copy, when it is not this partition's
    /// own: copies a restore took over from another topic's (`remote.restore.source`).
    #[serde(default)]
    pub dir: Option<String>,
}

/// One compressed chunk of an archived `.log` object: the raw byte range of the segment it
/// holds and where it lies in the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkExtent {
    pub raw_start: u64,
    pub raw_len: u64,
    pub stored_start: u64,
    pub stored_len: u64,
}

impl RemoteSegment {
    /// The object name of this copy's `ext` file (`log`, `index`, `timeindex`, `txnindex`,
    /// `snapshot`), under the partition's prefix: base offset first, so a listing sorts by
    /// offset, then the copying leader's epoch and the copy's id.
    pub fn object_name(&self, ext: &str) -> String {
        object_name(self.base_offset, self.leader_epoch, &self.id, ext)
    }

    /// Whether `offset` is in this copy.
    pub fn contains(&self, offset: i64) -> bool {
        self.base_offset <= offset && offset < self.next_offset
    }
}

pub fn object_name(base_offset: i64, leader_epoch: i32, id: &str, ext: &str) -> String {
    format!("{base_offset:020}-{leader_epoch}-{id}.{ext}")
}

/// A partition's remote segments, in offset order, and where its remote data starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteManifest {
    /// Bumped by every change: the bucket keeps each version as its own object.
    pub version: u64,
    pub segments: Vec<RemoteSegment>,
    /// Offsets below this are deleted (total retention, DeleteRecords): never read from the
    /// bucket, never copied again; copies wholly below it are deleted by the next retention
    /// pass.
    #[serde(default)]
    pub floor: i64,
}

/// A change of the manifest, replicated as a control entry of the partition's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteChange {
    /// A segment finished copying: its objects are all in the bucket.
    Add(RemoteSegment),
    /// Total retention (or DeleteRecords) dropped every copy wholly below this offset.
    DeleteBelow(i64),
    /// A partition created to restore another one from the bucket takes over its copies; only a
    /// manifest that never changed takes it (the restore happens once).
    Restore(Vec<RemoteSegment>),
}

impl RemoteManifest {
    /// The offset up to which the bucket has everything (or it was deleted): local segments
    /// wholly below it may go, and copies continue from it. None before anything was copied.
    pub fn end(&self) -> Option<i64> {
        let copied = self.segments.iter().map(|s| s.next_offset).max();
        match copied {
            Some(e) => Some(e.max(self.floor)),
            None => (self.floor > 0).then_some(self.floor),
        }
    }

    /// Where the bucket's copies, together with a local log starting at `local_start`, make one
    /// unbroken log: the start clients are shown. None when the copies do not reach the local
    /// log (nothing copied yet, or a gap: local segments that went while tiering was off).
    pub fn contiguous_start(&self, local_start: i64) -> Option<i64> {
        let mut reach = local_start;
        // By base offset, highest first: a copy reaching `reach` extends the run down to its base.
        for s in self.segments.iter().rev() {
            if s.base_offset < reach && s.next_offset >= reach && s.next_offset > self.floor {
                reach = s.base_offset.max(self.floor);
            }
        }
        (reach < local_start).then_some(reach)
    }

    /// The first offset readable from the bucket.
    pub fn start(&self) -> Option<i64> {
        self.segments.iter().find(|s| s.next_offset > self.floor).map(|s| s.base_offset.max(self.floor))
    }

    /// Bytes in the bucket.
    pub fn size(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// The copy holding `offset` (the newest copy, where two leaders' copies overlap: both hold
    /// the same committed batches).
    pub fn find(&self, offset: i64) -> Option<&RemoteSegment> {
        if offset < self.floor {
            return None;
        }
        self.segments.iter().rev().find(|s| s.contains(offset))
    }

    /// The first copy whose records reach `ts` (ListOffsets by timestamp).
    pub fn find_by_time(&self, ts: i64) -> Option<&RemoteSegment> {
        self.segments.iter().find(|s| s.max_timestamp >= ts)
    }

    /// Aborted transactions overlapping [from, upto) in the remote data.
    pub fn aborted(&self, from: i64, upto: i64) -> Vec<AbortedTxn> {
        let mut out: Vec<AbortedTxn> = self
            .segments
            .iter()
            .flat_map(|s| s.aborted.iter())
            .filter(|a| a.last_offset >= from && a.first_offset < upto)
            .copied()
            .collect();
        out.sort_by_key(|a| a.last_offset);
        out.dedup();
        out
    }

    /// Applies `change`; false when it changes nothing (a replay of an entry already applied, or
    /// a copy that adds no offsets: a second leader's copy of a range already remote).
    pub fn apply(&mut self, change: &RemoteChange) -> bool {
        match change {
            RemoteChange::Add(seg) => {
                if self.segments.iter().any(|s| s.id == seg.id) || self.end().is_some_and(|e| seg.next_offset <= e) {
                    return false;
                }
                self.segments.push(seg.clone());
                self.segments.sort_by_key(|s| (s.base_offset, s.next_offset));
            }
            RemoteChange::Restore(segments) => {
                if self.version > 0 {
                    return false;
                }
                self.segments = segments.clone();
                self.segments.sort_by_key(|s| (s.base_offset, s.next_offset));
            }
            RemoteChange::DeleteBelow(offset) => {
                let before = self.segments.len();
                self.segments.retain(|s| s.next_offset > *offset);
                if self.segments.len() == before && *offset <= self.floor {
                    return false;
                }
                self.floor = self.floor.max(*offset);
            }
        }
        self.version += 1;
        true
    }

    /// Moves the floor up to `offset` (DeleteRecords, applied on every replica with the log
    /// start entry); the copies below it stay listed until retention deletes their objects.
    /// False when it was there already.
    pub fn raise_floor(&mut self, offset: i64) -> bool {
        if offset <= self.floor || self.segments.is_empty() && self.floor == 0 && self.version == 0 {
            return false;
        }
        self.floor = offset;
        self.version += 1;
        true
    }

    /// The copies `DeleteBelow(offset)` drops.
    pub fn below(&self, offset: i64) -> Vec<RemoteSegment> {
        self.segments.iter().filter(|s| s.next_offset <= offset).cloned().collect()
    }

    pub fn load(dir: &Path) -> crate::Result<RemoteManifest> {
        match std::fs::read(dir.join(MANIFEST_FILE)) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| crate::LogError::Corrupt(format!("{}/{MANIFEST_FILE}: {e}", dir.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RemoteManifest::default()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A closed, committed and stable segment of the local log, ready to copy: its data through an
/// open handle (so a retention pass that unlinks it meanwhile changes nothing), and its indexes,
/// aborted transactions and producer state as of its end, copied out.
pub struct SegmentExport {
    pub base_offset: i64,
    pub next_offset: i64,
    pub size: u64,
    pub max_timestamp: i64,
    pub file: Arc<File>,
    pub offset_index: Vec<u8>,
    pub time_index: Vec<u8>,
    pub txn_index: Vec<u8>,
    pub aborted: Vec<AbortedTxn>,
    pub producer_snapshot: Vec<u8>,
    pub epochs: Vec<(i32, i64)>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Position of the last indexed batch starting at or before `offset`, in a segment's offset
/// index as stored (8-byte rows: offset - base, position).
pub fn index_position(index: &[u8], base_offset: i64, offset: i64) -> u64 {
    let rows = index.len() / 8;
    let row = |i: usize| (base_offset + u32_at(index, i * 8) as i64, u32_at(index, i * 8 + 4) as u64);
    let (mut lo, mut hi) = (0usize, rows);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if row(mid).0 <= offset {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        0
    } else {
        row(lo - 1).1
    }
}

/// Offset from which to scan for the first timestamp >= `ts`, in a segment's time index as
/// stored (12-byte rows: max timestamp so far, offset - base).
pub fn time_index_offset(index: &[u8], base_offset: i64, ts: i64) -> i64 {
    let mut start = base_offset;
    for row in index.chunks_exact(12) {
        let t = i64::from_be_bytes(row[..8].try_into().unwrap_or([0; 8]));
        if t >= ts {
            break;
        }
        start = base_offset + u32_at(row, 8) as i64;
    }
    start
}

/// The whole batches in `data` (which starts at a batch boundary) from the first one reaching
/// `offset`: (start, end) byte positions, end before the first incomplete batch. `at_least_one`
/// keeps a first batch longer than `max_bytes` whole (KIP-74), so a big batch is always
/// readable; otherwise batches stop before `max_bytes`.
pub fn batch_range(data: &[u8], offset: i64, max_bytes: usize, at_least_one: bool) -> (usize, usize) {
    let mut pos = 0;
    let mut start = None;
    while pos < data.len() {
        let Ok(h) = BatchHeader::parse(&data[pos..]) else { break };
        let end = pos + h.total_size();
        if h.total_size() < crate::batch::HEADER_SIZE || end > data.len() {
            break;
        }
        match start {
            None if h.last_offset() < offset => {}
            None => {
                start = Some(pos);
                if end - pos > max_bytes && !at_least_one {
                    return (pos, pos);
                }
            }
            Some(s) if end - s > max_bytes => return (s, pos),
            Some(_) => {}
        }
        pos = end;
    }
    match start {
        Some(s) => (s, pos),
        None => (pos, pos),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch;

    fn seg(base: i64, next: i64, id: &str) -> RemoteSegment {
        RemoteSegment {
            base_offset: base,
            next_offset: next,
            leader_epoch: 1,
            id: id.to_string(),
            size: (next - base) as u64 * 10,
            raw_size: (next - base) as u64 * 10,
            max_timestamp: next * 100,
            copied_ms: 0,
            aborted: vec![AbortedTxn {
                producer_id: 7,
                first_offset: base,
                last_offset: base + 1,
                last_stable_offset: 0,
            }],
            epochs: Vec::new(),
            chunks: None,
            dir: None,
        }
    }

    #[test]
    fn a_restore_applies_to_a_manifest_that_never_changed() {
        let mut m = RemoteManifest::default();
        assert!(m.apply(&RemoteChange::Restore(vec![seg(5, 9, "b"), seg(0, 5, "a")])));
        assert_eq!((m.version, m.start(), m.end()), (1, Some(0), Some(9)));
        assert!(!m.apply(&RemoteChange::Restore(Vec::new())), "once only");
        let mut empty = RemoteManifest::default();
        assert!(empty.apply(&RemoteChange::Restore(Vec::new())), "restoring nothing still marks it done");
        assert_eq!(empty.version, 1);
    }

    #[test]
    fn changes_apply_once_in_order_and_overlapping_copies_resolve_to_the_newest() {
        let mut m = RemoteManifest::default();
        assert!(m.apply(&RemoteChange::Add(seg(0, 10, "a"))));
        assert!(!m.apply(&RemoteChange::Add(seg(0, 10, "a"))), "a replayed entry changes nothing");
        assert!(!m.apply(&RemoteChange::Add(seg(0, 8, "b"))), "a copy adding no offsets is not kept");
        // Another leader's segments start elsewhere: its copy overlaps the first.
        assert!(m.apply(&RemoteChange::Add(seg(5, 20, "c"))));
        assert_eq!((m.version, m.start(), m.end()), (2, Some(0), Some(20)));
        assert_eq!(m.find(3).map(|s| s.id.as_str()), Some("a"));
        assert_eq!(m.find(7).map(|s| s.id.as_str()), Some("c"));
        assert_eq!(m.find(20), None);
        assert_eq!(m.find_by_time(1500).map(|s| s.id.as_str()), Some("c"));
        assert_eq!(m.aborted(6, 20).len(), 1);
        assert_eq!(m.below(15).len(), 1);
        assert!(m.apply(&RemoteChange::DeleteBelow(15)));
        assert!(!m.apply(&RemoteChange::DeleteBelow(15)));
        assert_eq!((m.version, m.start(), m.floor), (3, Some(15), 15), "the copy [5, 20) is read from 15 on");
        assert_eq!(m.find(12), None, "below the floor is deleted");
        // A replayed Add of a copy now below the floor changes nothing.
        assert!(!m.apply(&RemoteChange::Add(seg(0, 10, "a"))));
        // Emptied, the manifest still knows how far the bucket went.
        assert!(m.apply(&RemoteChange::DeleteBelow(30)));
        assert_eq!((m.start(), m.end()), (None, Some(30)));
        assert!(!m.apply(&RemoteChange::Add(seg(20, 25, "d"))), "nothing copied again below the floor");
        assert!(m.raise_floor(40));
        assert!(!m.raise_floor(40));
        assert_eq!(m.end(), Some(40));
        let back: RemoteManifest = serde_json::from_slice(&m.to_json()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn the_log_clients_see_starts_where_the_copies_reach_the_local_log_unbroken() {
        let mut m = RemoteManifest::default();
        for (b, n, id) in [(0, 10, "a"), (10, 20, "b"), (30, 40, "c"), (35, 50, "d")] {
            m.apply(&RemoteChange::Add(seg(b, n, id)));
        }
        assert_eq!(m.contiguous_start(45), Some(30), "the copies before the gap at 20..30 are not shown");
        assert_eq!(m.contiguous_start(15), Some(0));
        assert_eq!(m.contiguous_start(60), None, "copies that do not reach the local log");
        assert_eq!(m.contiguous_start(0), None);
        m.apply(&RemoteChange::DeleteBelow(5));
        assert_eq!(m.contiguous_start(15), Some(5));
    }

    #[test]
    fn object_names_sort_by_offset_and_differ_per_copy() {
        let a = seg(9, 10, "x").object_name("log");
        let b = seg(10, 11, "x").object_name("log");
        assert!(a < b);
        assert_ne!(seg(9, 10, "x").object_name("log"), seg(9, 10, "y").object_name("log"));
    }

    #[test]
    fn index_lookups_over_stored_bytes() {
        let mut idx = Vec::new();
        for (rel, pos) in [(0u32, 0u32), (10, 4096), (25, 9000)] {
            idx.extend(rel.to_be_bytes());
            idx.extend(pos.to_be_bytes());
        }
        assert_eq!(index_position(&idx, 100, 99), 0);
        assert_eq!(index_position(&idx, 100, 112), 4096);
        assert_eq!(index_position(&idx, 100, 500), 9000);
        assert_eq!(index_position(&[], 100, 500), 0);
        let mut tidx = Vec::new();
        for (ts, rel) in [(1000i64, 0u32), (2000, 10)] {
            tidx.extend(ts.to_be_bytes());
            tidx.extend(rel.to_be_bytes());
        }
        assert_eq!(time_index_offset(&tidx, 100, 500), 100);
        assert_eq!(time_index_offset(&tidx, 100, 1500), 100);
        assert_eq!(time_index_offset(&tidx, 100, 2500), 110);
    }

    #[test]
    fn batch_ranges_are_whole_batches_from_the_offset() {
        let mut data = Vec::new();
        let mut ends = Vec::new();
        for i in 0..4 {
            let mut b = batch::build_batch(0, 0, &[(None, Some(b"0123456789")), (None, Some(b"x"))]);
            batch::patch(&mut b, i * 2, 0, None);
            data.extend(b);
            ends.push(data.len());
        }
        let one = ends[0];
        assert_eq!(batch_range(&data, 0, usize::MAX, true), (0, data.len()));
        assert_eq!(batch_range(&data, 3, usize::MAX, true), (one, data.len()), "offset 3 is in the second batch");
        assert_eq!(batch_range(&data, 2, one + 1, true), (one, 2 * one));
        assert_eq!(batch_range(&data, 2, 10, true), (one, 2 * one), "a first batch over the limit stays whole");
        assert_eq!(batch_range(&data, 2, 10, false), (one, one));
        assert_eq!(batch_range(&data[..one + 5], 2, usize::MAX, true), (one, one), "a torn batch is not returned");
        assert_eq!(batch_range(&data, 100, usize::MAX, true), (data.len(), data.len()));
    }
}
