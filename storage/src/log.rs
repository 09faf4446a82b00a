//! `PartitionLog`: the ordered segments of one partition, offset assignment,
//! reads by offset and time, retention, truncation and group-committed fsync,
//! and the transactional state on top: producer state snapshotted at every
//! segment roll, the last stable offset, and the aborted transactions index
//! (`.txnindex`, one per segment, holding the aborts whose marker is in it).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::batch::{self, BatchHeader, TimestampType};
use crate::epoch::EpochCache;
use crate::error::{LogError, Result};
use crate::producer::{AbortedTxn, ProducerStates, SequenceCheck};
use crate::raftindex::{EntrySpan, SegmentRaftIndex};
use crate::remote::{RemoteChange, RemoteManifest, SegmentExport};
use crate::segment::{file_name, CleanState, Segment};

/// Snapshots kept beside the log: the newest, and one before it in case the
/// newest is ahead of what survived a crash.
const SNAPSHOTS_KEPT: usize = 2;
/// Bytes per `.txnindex` entry: version, producer id, first, last and last
/// stable offsets (Kafka's layout).
const TXN_ENTRY: usize = 34;

/// Per-partition settings, named after Kafka's topic configs.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// `segment.bytes`
    pub segment_bytes: u64,
    /// `segment.ms`
    pub segment_ms: i64,
    /// `retention.ms`; negative keeps forever.
    pub retention_ms: i64,
    /// `retention.bytes`; negative keeps forever.
    pub retention_bytes: i64,
    /// `max.message.bytes`: the largest batch accepted.
    pub max_message_bytes: usize,
    /// `index.interval.bytes`
    pub index_interval_bytes: u64,
    /// `segment.index.bytes`
    pub segment_index_bytes: usize,
    /// `message.timestamp.type`
    pub timestamp_type: TimestampType,
    /// `cleanup.policy` contains `compact`: keep the latest record per key.
    pub compact: bool,
    /// `cleanup.policy` contains `delete`: retention by time and size.
    pub delete: bool,
    /// `delete.retention.ms`: how long tombstones survive compaction.
    pub delete_retention_ms: i64,
    /// `producer.id.expiration.ms`: idempotent producer state is dropped
    /// after this long without a batch.
    pub producer_id_expiration_ms: i64,
    /// `compression.type` when it names a codec (None: `producer`, batches
    /// are kept as sent).
    pub compression: Option<crate::records::Compression>,
    /// `message.timestamp.before.max.ms`: how far in the past a CreateTime
    /// record may be.
    pub timestamp_before_max_ms: i64,
    /// `message.timestamp.after.max.ms`: how far in the future.
    pub timestamp_after_max_ms: i64,
    /// `min.compaction.lag.ms`: records younger than this are not compacted.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a dirty record older than this makes the
    /// log due for compaction whatever its dirty ratio.
    pub max_compaction_lag_ms: i64,
    /// `min.cleanable.dirty.ratio`: the share of uncompacted bytes that
    /// makes the log due for compaction.
    pub min_cleanable_dirty_ratio: f64,
    /// `flush.messages`: the server syncs an append that leaves this many
    /// records unsynced, before acknowledging it.
    pub flush_messages: i64,
    /// `flush.ms`: the server syncs records left unsynced this long (0:
    /// every append, before it is acknowledged).
    pub flush_ms: i64,
    /// `min.insync.replicas`, checked by the server for acks=all.
    pub min_insync_replicas: i32,
    /// `remote.storage.enable` on a broker with remote storage: `retention_ms` and
    /// `retention_bytes` are then the local ones (`local.retention.*`), and no segment goes
    /// before the remote manifest covers it.
    pub remote_storage: bool,
    /// `remote.restore.source` on a topic with remote storage: the partition restores another's
    /// copies from the bucket before it takes writes.
    pub remote_restore: bool,
    /// Synced bytes at the end of the active segment kept in the page cache; older synced
    /// pages are dropped from it (`PartitionLog::sync`). Negative keeps every page, leaving
    /// eviction to the kernel.
    pub page_cache_bytes: i64,
}

/// Page size the page-cache drops are aligned to.
const PAGE_BYTES: u64 = 4096;
/// Least span dropped at once, so a steady stream of small syncs makes few syscalls.
const DROP_STEP_BYTES: u64 = 4 << 20;
/// How many page-cache windows (`page_cache_bytes`) behind the end the pages a follower still
/// has to be sent are kept for it (`hold_cached_from`); one further behind is sent from disk.
const HOLD_WINDOWS: u64 = 4;

impl LogConfig {
    /// Bound on the decompressed size of one batch, derived from
    /// `max.message.bytes` (never below that of a 1 MiB limit).
    pub fn decompressed_limit(&self) -> usize {
        self.max_message_bytes.max(1 << 20).saturating_mul(crate::records::DECOMPRESSION_FACTOR)
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            index_interval_bytes: 4096,
            segment_index_bytes: 10 * 1024 * 1024,
            timestamp_type: TimestampType::CreateTime,
            compact: false,
            delete: true,
            delete_retention_ms: 24 * 3600 * 1000,
            producer_id_expiration_ms: 24 * 3600 * 1000,
            compression: None,
            timestamp_before_max_ms: i64::MAX,
            timestamp_after_max_ms: i64::MAX,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            min_cleanable_dirty_ratio: 0.5,
            flush_messages: i64::MAX,
            flush_ms: i64::MAX,
            min_insync_replicas: 1,
            remote_storage: false,
            remote_restore: false,
            page_cache_bytes: -1,
        }
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    /// The broker's timestamp with LogAppendTime, else -1.
    pub log_append_time: i64,
    pub log_start_offset: i64,
    /// True when this was a retried idempotent batch already in the log.
    pub duplicate: bool,
}

/// A produce payload that passed validation, not yet given offsets: the
/// batches as they will be stored (recompressed if the topic asks).
#[derive(Debug, Clone)]
pub struct CheckedProduce<'a> {
    payload: Cow<'a, [u8]>,
    batches: Vec<(usize, BatchHeader)>,
    coordinator: bool,
}

impl CheckedProduce<'_> {
    /// The batches' bytes, offsets not yet assigned.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
    /// Each batch's position in `payload` and its header.
    pub fn batches(&self) -> &[(usize, BatchHeader)] {
        &self.batches
    }
}

/// `check_produce`'s answer.
#[derive(Debug, Clone)]
pub enum ProduceVerdict<'a> {
    /// New: append it (`append_checked`, or propose it).
    Append(CheckedProduce<'a>),
    /// A retry of a batch already in the log, with its original offsets.
    Duplicate(AppendInfo),
}

/// How a log is opened, beyond its config.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions<'a> {
    /// Where a clean shutdown left the active segment (`shutdown_state`).
    pub clean: Option<&'a CleanState>,
    /// The log is one replica of several: its high watermark starts at the
    /// log start and moves only by `set_high_watermark` (Raft's commit
    /// index). Otherwise every append commits and it follows the log end.
    pub replicated: bool,
    /// The log is a Raft log (implies `replicated`): only `append_raft_entry` writes to it,
    /// even while it holds no entry (new, reset, or truncated to nothing), so no batch without
    /// a sidecar row can get in.
    pub raft: bool,
    /// The group committer whose rounds make this log durable (`sync`);
    /// `GroupCommit::shared_default()` when None.
    pub group_commit: Option<crate::durability::GroupCommit>,
}

/// A read: whole batches, possibly starting before the asked offset.
#[derive(Debug, Clone)]
pub struct ReadResult {
    pub records: Bytes,
    /// The segment file `records` were sliced from and where they start in
    /// it, so a server can send them with `sendfile` instead of copying.
    pub file: Option<(Arc<std::fs::File>, u64)>,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
}

/// What opening a log had to do: start-up metrics and the tests that a
/// clean restart reads no batch while a crash still recovers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments read batch by batch: active segments after a crash (or a
    /// missing or stale clean-shutdown checkpoint) and rebuilt indexes.
    pub segments_scanned: u64,
    /// Closed segments whose indexes failed their checks and were rebuilt.
    pub indexes_rebuilt: u64,
    /// Bytes cut after the last valid batch that were not preallocated zeros.
    pub torn_bytes: u64,
    /// Batch headers read to rebuild producer state after the newest snapshot.
    pub batches_replayed: u64,
}

impl RecoveryReport {
    pub fn add(&mut self, o: &RecoveryReport) {
        self.segments_scanned += o.segments_scanned;
        self.indexes_rebuilt += o.indexes_rebuilt;
        self.torn_bytes += o.torn_bytes;
        self.batches_replayed += o.batches_replayed;
    }
}

pub(crate) struct Inner {
    pub(crate) config: LogConfig,
    pub(crate) segments: BTreeMap<i64, Segment>,
    pub(crate) log_start: i64,
    epochs: EpochCache,
    pub(crate) producers: ProducerStates,
    /// Aborted transactions in marker order, from every segment's txnindex.
    aborted: Vec<AbortedTxn>,
    /// The high watermark: consumers read below it, and only what is below
    /// it is committed. At most the log end.
    pub(crate) hw: i64,
    /// A single replica commits what it writes: the high watermark follows
    /// the log end. A replicated log's moves only by `set_high_watermark`.
    hw_follows_end: bool,
    /// Opened as a Raft log (`OpenOptions::raft`).
    raft_only: bool,
    /// A replicated log's Raft entries, per segment base offset (`.raftindex`
    /// sidecars); segments below the Raft log have none.
    pub(crate) raft: BTreeMap<i64, SegmentRaftIndex>,
    /// What is in remote storage (`remote-manifest.json`).
    remote: Arc<RemoteManifest>,
}

fn snapshot_offsets(dir: &Path) -> Vec<i64> {
    let mut v: Vec<i64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".snapshot").and_then(|s| s.parse().ok()))
        .collect();
    v.sort_unstable();
    v
}

/// Removes producer state snapshots no longer needed: kept are the newest `SNAPSHOTS_KEPT`, one
/// per segment from the log start on (a Raft snapshot at a segment boundary takes its producer
/// state from there, as Kafka keeps one per segment), and the newest below the log start.
fn prune_snapshots(dir: &Path, log_start: i64) -> Result<()> {
    let offsets = snapshot_offsets(dir);
    let newest_below = offsets.iter().rev().find(|o| **o < log_start).copied();
    let recent: Vec<i64> = offsets.iter().rev().take(SNAPSHOTS_KEPT).copied().collect();
    for old in offsets {
        if old < log_start && Some(old) != newest_below && !recent.contains(&old) {
            remove_if_present(&dir.join(file_name(old, "snapshot")))?;
        }
    }
    Ok(())
}

pub(crate) fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn encode_txn_entry(a: &AbortedTxn) -> [u8; TXN_ENTRY] {
    let mut b = [0u8; TXN_ENTRY];
    b[2..10].copy_from_slice(&a.producer_id.to_be_bytes());
    b[10..18].copy_from_slice(&a.first_offset.to_be_bytes());
    b[18..26].copy_from_slice(&a.last_offset.to_be_bytes());
    b[26..34].copy_from_slice(&a.last_stable_offset.to_be_bytes());
    b
}

fn read_txn_index(path: &Path) -> Vec<AbortedTxn> {
    let Ok(data) = std::fs::read(path) else { return Vec::new() };
    let at = |c: &[u8], i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&c[i..i + 8]);
        i64::from_be_bytes(a)
    };
    // A torn last entry (crash mid-write) is dropped; recovery rewrites
    // the index of every segment it scans anyway.
    data.chunks_exact(TXN_ENTRY)
        .map(|c| AbortedTxn {
            producer_id: at(c, 2),
            first_offset: at(c, 10),
            last_offset: at(c, 18),
            last_stable_offset: at(c, 26),
        })
        .collect()
}

impl Inner {
    /// Rebuilds producer state, open transactions and aborted transactions:
    /// from the newest usable snapshot, then by reading the batch headers
    /// (and markers) of the segments after it. Without a snapshot that is
    /// the whole log.
    fn recover_state(&mut self, dir: &Path) -> Result<u64> {
        let end = self.log_end();
        let mut from = i64::MIN;
        let mut states = ProducerStates::default();
        for off in snapshot_offsets(dir).into_iter().rev() {
            let path = dir.join(file_name(off, "snapshot"));
            if off > end {
                // Ahead of the log (its tail was lost or truncated).
                remove_if_present(&path)?;
                continue;
            }
            if let Some(st) = std::fs::read(&path).ok().and_then(|b| ProducerStates::from_json(&b)) {
                states = st;
                from = off;
                break;
            }
            tracing::warn!(snapshot = %path.display(), "unreadable producer snapshot skipped");
        }
        let mut aborted = Vec::new();
        let mut replayed = 0;
        for seg in self.segments.values() {
            let index = dir.join(file_name(seg.base_offset, "txnindex"));
            if seg.next_offset <= from {
                aborted.extend(read_txn_index(&index));
                continue;
            }
            // Entries of a segment that straddles the snapshot stay for the part before it.
            let mut rebuilt: Vec<AbortedTxn> =
                read_txn_index(&index).into_iter().filter(|a| a.last_offset < from).collect();
            for b in seg.batches() {
                if b.header.base_offset < from {
                    continue;
                }
                replayed += 1;
                let marker = if b.header.is_control() {
                    batch::marker_kind(&seg.bytes(b.position, b.position + b.header.total_size() as u64))
                } else {
                    None
                };
                if let Some(a) = states.update(&b.header, marker) {
                    rebuilt.push(a);
                }
            }
            if rebuilt.is_empty() {
                remove_if_present(&index)?;
            } else {
                // Since snapshots are also taken at a clean shutdown (mid-
                // segment), entries older than the snapshot live only in this
                // file: it is replaced atomically, and only when it changed.
                let bytes: Vec<u8> = rebuilt.iter().flat_map(encode_txn_entry).collect();
                if std::fs::read(&index).ok().as_deref() != Some(bytes.as_slice()) {
                    write_atomic(&index, &bytes)?;
                }
            }
            aborted.extend(rebuilt);
        }
        aborted.retain(|a| a.last_offset >= self.log_start);
        self.producers = states;
        self.aborted = aborted;
        Ok(replayed)
    }

    fn active(&self) -> &Segment {
        // Invariant: a log always has at least one segment.
        self.segments.values().next_back().expect("log has an active segment")
    }
    fn active_mut(&mut self) -> &mut Segment {
        self.segments.values_mut().next_back().expect("log has an active segment")
    }
    fn log_end(&self) -> i64 {
        self.active().next_offset
    }
    fn last_stable_offset(&self) -> i64 {
        let hw = self.hw;
        self.producers.first_unstable_offset().map_or(hw, |f| f.min(hw))
    }
    fn size(&self) -> u64 {
        self.segments.values().map(|s| s.size()).sum()
    }
}

/// A coordinator's markers among `batches`, each checked against the coordinator epoch of the
/// last marker written for its producer.
fn check_markers(inner: &Inner, payload: &[u8], batches: &[(usize, BatchHeader)]) -> Result<()> {
    for (pos, h) in batches.iter().filter(|(_, h)| h.is_control()) {
        if let Some(m) = batch::marker_kind(&payload[*pos..*pos + h.total_size()]) {
            inner.producers.check_marker(h.producer_id, m)?;
        }
    }
    Ok(())
}

/// Whether retention.ms lets `seg` go at `now_ms`.
fn expired_by_time(cfg: &LogConfig, seg: &Segment, now_ms: i64) -> bool {
    cfg.retention_ms >= 0 && seg.retention_time().is_some_and(|t| now_ms - t > cfg.retention_ms)
}

pub struct PartitionLog {
    dir: PathBuf,
    inner: RwLock<Inner>,
    /// Notified when the high watermark moves (and when the log is
    /// deleted): consumers' long polls wait on it.
    hw_moved: Notify,
    flushed: Arc<crate::durability::Flushed>,
    /// Serialises the syncs of sidecar rows: a sync that finds no dirty rows may report them
    /// durable only once any fsync of them already under way has finished.
    sidecar_sync: std::sync::Mutex<()>,
    /// The data dir's filesystem, so the committer can group by it.
    dev: u64,
    deleted: AtomicBool,
    fsyncs: Arc<std::sync::atomic::AtomicU64>,
    group_commit: crate::durability::GroupCommit,
    /// Offset up to which the last compaction pass covered the log (its
    /// "clean" part, for `min.cleanable.dirty.ratio`); in memory only, so
    /// a restart treats the whole log as dirty once.
    pub(crate) cleaned_upto: AtomicI64,
    /// The Raft index retention asked the next snapshot to stand at (`request_snapshot_at`).
    snapshot_request: std::sync::Mutex<Option<u64>>,
    /// Where the replica's current batchless Raft snapshot stands (`note_batchless_snapshot`).
    batchless_snapshot: std::sync::Mutex<Option<u64>>,
    recovery: RecoveryReport,
    /// The active segment (base offset) and the byte position below which its synced pages
    /// were dropped from the page cache (`drop_synced_pages`).
    pages_dropped: std::sync::Mutex<(i64, u64)>,
    /// The offset from which a leader's slowest follower still has to be sent the log
    /// (`hold_cached_from`); i64::MAX when none is behind or this replica does not lead.
    held_from: AtomicI64,
}

/// Writes a small file so a crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        crate::disk::sync_all(&f)?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// `create_dir_all`, with the entry of every directory it creates made
/// durable in its parent, deepest first (a power cut must not lose a new
/// partition directory, or a new data dir, with acknowledged data in it).
pub(crate) fn create_dirs_durably(dir: &Path) -> Result<()> {
    let created: Vec<PathBuf> =
        dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).map(Path::to_path_buf).collect();
    std::fs::create_dir_all(dir)?;
    for new in &created {
        sync_dir(new.parent().unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

/// Makes the entries of `dir` durable: a file created, renamed or removed
/// in it is only found after a power cut once its directory was synced
/// (ext4's ordered journal happens to cover this; xfs, btrfs and others
/// do not promise it).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    // A relative path's last ancestor is "": the current directory.
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    crate::disk::sync_all(&std::fs::File::open(dir)?)?;
    #[cfg(test)]
    tests::DIRS_SYNCED.with(|d| d.borrow_mut().push(dir.to_path_buf()));
    Ok(())
}

/// The span of Raft entry `index` (segments are few: a reverse walk finds its sidecar).
fn raft_span(inner: &Inner, index: u64) -> Option<EntrySpan> {
    let idx = inner.raft.values().rev().find(|i| i.first_index <= index && i.len() > 0)?;
    idx.span(index)
}

/// Where the leader-epoch cache may be cut from when the log start moves to `start`: not past
/// the first Raft entry still held, whose term a filler for it is stamped with (`stored_entry`)
/// after compaction removed its batches. Entries go only with Raft's purge.
fn epoch_floor(raft: &BTreeMap<i64, SegmentRaftIndex>, start: i64) -> i64 {
    raft.values().find(|i| i.len() > 0).map_or(start, |i| start.min(i.start_offset))
}

/// The entry at `span`, read from its segment.
fn stored_entry(inner: &Inner, span: EntrySpan) -> Result<RaftEntry> {
    let len = (span.end_pos - span.start_pos) as usize;
    let seg = inner.segments.range(..=span.base_offset).next_back().map(|(_, s)| s);
    let data = seg.map(|s| s.bytes(span.start_pos, span.end_pos)).unwrap_or_default();
    if data.len() != len {
        return Err(LogError::Corrupt(format!("raft entry {} lies outside its segment", span.index)));
    }
    // Compaction may have removed some of the entry's batches, or all of them: the offsets they
    // held are sent as fillers, so a follower stores the entry at the same offsets.
    let mut term = None;
    let mut next = span.base_offset;
    let mut whole = true;
    let mut pos = 0;
    while pos < data.len() {
        let h = BatchHeader::parse(&data[pos..])?;
        term.get_or_insert(h.partition_leader_epoch);
        whole &= h.base_offset == next;
        next = h.last_offset() + 1;
        pos += h.total_size();
    }
    whole &= next == span.next_offset;
    // Terms only grow along the log: the epoch in force at the entry's offset is its term.
    let term = match term {
        Some(t) => t,
        None => inner.epochs.entries().iter().rev().find(|(_, o)| *o <= span.base_offset).map(|(e, _)| *e).ok_or_else(
            || LogError::Corrupt(format!("raft entry {} holds no batch and no epoch covers it", span.index)),
        )?,
    };
    if whole {
        return Ok(RaftEntry { span, term, data });
    }
    let mut filled = Vec::with_capacity(data.len() + batch::HEADER_SIZE + 16);
    let mut next = span.base_offset;
    let mut pos = 0;
    while pos < data.len() {
        let h = BatchHeader::parse(&data[pos..])?;
        if h.base_offset > next {
            filled.extend_from_slice(&batch::build_filler(next, h.base_offset, term));
        }
        filled.extend_from_slice(&data[pos..pos + h.total_size()]);
        next = h.last_offset() + 1;
        pos += h.total_size();
    }
    if next < span.next_offset {
        filled.extend_from_slice(&batch::build_filler(next, span.next_offset, term));
    }
    Ok(RaftEntry { span, term, data: Bytes::from(filled) })
}

/// One Raft entry as the log stores it.
#[derive(Debug, Clone)]
pub struct RaftEntry {
    pub span: EntrySpan,
    /// The entry's term: its first batch's partitionLeaderEpoch.
    pub term: i32,
    pub data: Bytes,
}

/// Once a log is opened as a Raft log, or holds Raft entries, only `append_raft_entry` writes
/// to it: a batch written beside Raft would have no sidecar row, so the next open would cut it
/// (and every replica would hold a different log).
fn refuse_beside_raft(inner: &Inner) -> Result<()> {
    if !inner.raft_only && inner.raft.is_empty() {
        return Ok(());
    }
    Err(LogError::InvalidRecord("this partition's log is written through Raft only".into()))
}

/// Forgets segment `base`'s sidecar, in memory and on disk.
fn drop_sidecar(inner: &mut Inner, base: i64) -> Result<()> {
    match inner.raft.remove(&base) {
        Some(idx) => idx.delete(),
        None => Ok(()),
    }
}

/// Where a replicated log must be cut so its Raft entries are one unbroken run ending at the
/// log end, None when they already are. From the first sidecar on, each segment's entries must
/// continue the previous segment's (next index, and starting where they ended) and cover their
/// segment to its end: data no row covers was written but never reported durable (rows are
/// synced before that report), and a sidecar after a gap names entries Raft cannot reach.
/// A crash can leave either (rows of a closed segment lost while a later header survived).
fn raft_continuity_cut(segments: &BTreeMap<i64, Segment>, raft: &BTreeMap<i64, SegmentRaftIndex>) -> Option<i64> {
    // (next index, offset) after the entries walked so far.
    let mut expect: Option<(u64, i64)> = None;
    for seg in segments.values() {
        let idx = raft.get(&seg.base_offset);
        match (expect, idx) {
            // Below the Raft log: data from before it (a snapshot's prefix).
            (None, None) => continue,
            // The first sidecar may start anywhere in its segment.
            (None, Some(_)) => {}
            (Some((next, at)), Some(i)) => {
                if i.first_index != next || i.start_offset != at {
                    return Some(at);
                }
            }
            // A segment without a sidecar after the Raft log began holds no entry: fine only
            // while it is empty (a crash between creating it and its first entry).
            (Some((_, at)), None) => {
                if seg.next_offset > at {
                    return Some(at);
                }
                continue;
            }
        }
        let Some(i) = idx else { continue };
        let (covered, _) = i.covered_end();
        if covered < seg.next_offset {
            return Some(covered);
        }
        expect = Some((i.next_index(), covered));
    }
    None
}

/// Removes `.raftindex` files whose segment is gone (a crash between the two unlinks).
fn remove_orphan_sidecars(dir: &Path, segments: &BTreeMap<i64, Segment>) -> Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Some(base) = name.strip_suffix(".raftindex").and_then(|s| s.parse::<i64>().ok()) else { continue };
        if !segments.contains_key(&base) {
            remove_if_present(&e.path())?;
        }
    }
    Ok(())
}

fn parse_base_offset(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 {
        return None;
    }
    stem.parse().ok()
}

impl PartitionLog {
    /// Opens (or creates) the log in `dir`, recovering the active segment.
    pub fn open(dir: &Path, config: LogConfig) -> Result<PartitionLog> {
        Self::open_opts(dir, config, OpenOptions::default())
    }

    /// `open`, after a clean shutdown that left the active segment as
    /// `clean` says (`shutdown_state`): the active segment is trusted
    /// instead of scanned, if what is on disk matches it. Closed segments
    /// are opened as always (their indexes are checked, not their batches).
    pub fn open_with(dir: &Path, config: LogConfig, clean: Option<&CleanState>) -> Result<PartitionLog> {
        Self::open_opts(dir, config, OpenOptions { clean, ..OpenOptions::default() })
    }

    /// `open` with every option (`OpenOptions`).
    pub fn open_opts(dir: &Path, config: LogConfig, opts: OpenOptions<'_>) -> Result<PartitionLog> {
        let clean = opts.clean;
        let replicated = opts.replicated || opts.raft;
        // A new partition directory's entry in the data dir must be durable
        // before an append into it is acknowledged.
        create_dirs_durably(dir)?;
        crate::compact::finish_swaps(dir)?;
        // A compaction interrupted before its swap leaves a .cleaned file;
        // the original segment is intact, so the partial copy just goes.
        for e in std::fs::read_dir(dir)?.flatten() {
            // Likewise a truncation's copy of a closed segment not yet
            // renamed over it (`Segment::truncate_to`).
            let name = e.file_name();
            let name = name.to_string_lossy();
            // And a sidecar's creation cut short before its rename (`SegmentRaftIndex::create`).
            if name.ends_with(".cleaned") || name.ends_with(".truncating") || name.ends_with(crate::raftindex::TMP_EXT)
            {
                std::fs::remove_file(e.path())?;
            }
        }
        let mut bases: Vec<i64> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| parse_base_offset(&e.file_name().to_string_lossy()))
            .collect();
        bases.sort_unstable();
        let mut log_start = std::fs::read_to_string(dir.join("log-start-offset"))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        let mut segments = BTreeMap::new();
        let mut report = RecoveryReport::default();
        let n = bases.len();
        for (i, base) in bases.into_iter().enumerate() {
            let active = i + 1 == n;
            let trusted = match clean {
                Some(c) if active && c.base_offset == base => {
                    let seg = Segment::open_clean(dir, c, config.segment_index_bytes)?;
                    if seg.is_none() {
                        tracing::warn!(log = %dir.display(), "clean-shutdown checkpoint does not match the log; scanning it");
                    }
                    seg
                }
                _ => None,
            };
            let seg = match trusted {
                Some(seg) => seg,
                None => Segment::open(dir, base, active, config.segment_bytes, config.segment_index_bytes)?,
            };
            report.segments_scanned += seg.opened.scanned as u64;
            report.indexes_rebuilt += seg.opened.index_rebuilt as u64;
            report.torn_bytes += seg.opened.torn_bytes;
            segments.insert(base, seg);
        }
        // A closed segment that recovery emptied entirely carries nothing.
        if segments.is_empty() {
            let seg = Segment::create(dir, log_start, config.segment_bytes, config.segment_index_bytes)?;
            segments.insert(log_start, seg);
            // As in `roll`: a sync of the segment's data later does not make
            // the name that finds it durable (a power cut could lose the
            // whole first segment of a new partition, acknowledged appends
            // with it).
            sync_dir(dir)?;
        }
        if let Some(first) = segments.keys().next() {
            log_start = log_start.max(*first);
        }
        let mut epochs = EpochCache::load(dir)?;
        let end = segments.values().next_back().map(|s| s.next_offset).unwrap_or(0);
        log_start = log_start.min(end);
        epochs.truncate_from(end)?;
        // A replicated log knows nothing committed until its replica says
        // (from Raft's committed index); a single replica has committed all.
        let hw = if replicated { log_start } else { end };
        let mut raft = BTreeMap::new();
        let mut raft_cut = None;
        if replicated {
            for seg in segments.values() {
                if let Some(idx) = SegmentRaftIndex::open(dir, seg.base_offset, seg.next_offset, seg.size())? {
                    raft.insert(seg.base_offset, idx);
                }
            }
            remove_orphan_sidecars(dir, &segments)?;
            raft_cut = raft_continuity_cut(&segments, &raft);
            // The sidecars at or after the cut describe entries that go with it (a later one
            // may name indexes that no longer follow on): they go too, so the next entry
            // starts a fresh one.
            if let Some(cut) = raft_cut {
                let stale: Vec<i64> = raft.range(cut..).map(|(b, _)| *b).collect();
                for b in stale {
                    if let Some(idx) = raft.remove(&b) {
                        idx.delete()?;
                    }
                }
                raft_cut = (cut < end).then_some(cut);
            }
        }
        epochs.truncate_before(epoch_floor(&raft, log_start))?;
        let mut inner = Inner {
            config,
            segments,
            log_start,
            epochs,
            producers: ProducerStates::default(),
            aborted: Vec::new(),
            hw,
            hw_follows_end: !replicated,
            raft_only: opts.raft,
            raft,
            remote: Arc::new(RemoteManifest::load(dir)?),
        };
        report.batches_replayed = inner.recover_state(dir)?;
        let log = PartitionLog {
            dir: dir.to_path_buf(),
            inner: RwLock::new(inner),
            hw_moved: Notify::new(),
            flushed: Arc::new(crate::durability::Flushed::new(end)),
            sidecar_sync: std::sync::Mutex::new(()),
            dev: std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(dir)?),
            deleted: AtomicBool::new(false),
            fsyncs: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            group_commit: opts.group_commit.unwrap_or_else(crate::durability::GroupCommit::shared_default),
            cleaned_upto: AtomicI64::new(0),
            snapshot_request: std::sync::Mutex::new(None),
            batchless_snapshot: std::sync::Mutex::new(None),
            recovery: report,
            pages_dropped: std::sync::Mutex::new((-1, 0)),
            held_from: AtomicI64::new(i64::MAX),
        };
        if let Some(cut) = raft_cut {
            tracing::warn!(log = %dir.display(), offset = cut, "cutting a tail no Raft entry covers");
            log.truncate_to(cut)?;
        }
        if replicated {
            // After a process crash the page cache still holds what was written but never
            // synced, and open finds it: `flushed` starts at the end, so Raft would be told it
            // is durable. It is made so first (data, rows, and the names that find them).
            let inner = log.read_inner();
            inner.active().sync()?;
            for idx in inner.raft.values() {
                idx.sync_rows()?;
            }
            drop(inner);
            sync_dir(dir)?;
            log.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(log)
    }

    /// What opening this log had to do.
    pub fn recovery_report(&self) -> RecoveryReport {
        self.recovery
    }

    /// Prepares the log for a clean shutdown and says where its active
    /// segment stands, for `open_with` at the next start. Producer state is
    /// snapshotted at the log end, so that start replays no batch either.
    /// With `sync` the data, indexes and snapshot are made durable here;
    /// without it the caller syncs the filesystem once for every log (the
    /// checkpoint must only be written after that). Later appends (a
    /// request still running) are not covered: the next start sees data
    /// past the checkpoint and scans.
    pub fn shutdown_state(&self, sync: bool) -> Result<CleanState> {
        // As in `sync`: the end is read, then the rows up to it are synced, then the data.
        let synced_to = if sync { Some(self.sync_sidecars_upto_end()?) } else { None };
        let inner = self.read_inner();
        let end = inner.log_end();
        if !snapshot_offsets(&self.dir).contains(&end) {
            let path = self.dir.join(file_name(end, "snapshot"));
            if sync {
                write_atomic(&path, &inner.producers.to_json())?;
            } else {
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, inner.producers.to_json())?;
                std::fs::rename(&tmp, &path)?;
            }
            prune_snapshots(&self.dir, inner.log_start)?;
        }
        let active = inner.active();
        if sync {
            crate::disk::sync_data(&active.file())?;
            active.flush_indexes()?;
            if let Ok(f) = std::fs::File::open(self.dir.join(file_name(active.base_offset, "txnindex"))) {
                f.sync_all()?;
            }
            if let Some((end, generation)) = synced_to {
                self.flushed.raise(end, generation);
            }
        }
        Ok(active.clean_state())
    }

    pub(crate) fn read_inner(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
    pub(crate) fn write_inner(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> LogConfig {
        self.read_inner().config.clone()
    }

    pub fn set_config(&self, config: LogConfig) {
        self.write_inner().config = config;
    }

    /// Validates, assigns offsets to and appends a produce payload of one or
    /// more batches. Nothing is written unless every batch is valid.
    pub fn append(&self, payload: &[u8], leader_epoch: i32, now_ms: i64) -> Result<AppendInfo> {
        self.append_from(payload, leader_epoch, now_ms, false)
    }

    /// Appends a batch the broker itself wrote for a producer (a
    /// transactional offset commit): its epoch is checked, it carries no
    /// sequence to deduplicate.
    pub fn append_from_coordinator(&self, payload: &[u8], leader_epoch: i32, now_ms: i64) -> Result<AppendInfo> {
        self.append_from(payload, leader_epoch, now_ms, true)
    }

    /// Writes a commit or abort marker for `producer_id`'s open transaction,
    /// stamped with `leader_epoch` like any other append: the partition
    /// leader's current epoch (the Raft term), so the log's epochs never go
    /// backwards. A single replica passes its latest epoch (`latest_epoch`,
    /// 0 when none). Returns the marker's offset.
    pub fn append_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        coordinator_epoch: i32,
        commit: bool,
        leader_epoch: i32,
        now_ms: i64,
    ) -> Result<i64> {
        let marker = batch::build_marker(producer_id, epoch, coordinator_epoch, commit, now_ms);
        Ok(self.append_from(&marker, leader_epoch, now_ms, true)?.base_offset)
    }

    fn append_from(&self, payload: &[u8], leader_epoch: i32, now_ms: i64, coordinator: bool) -> Result<AppendInfo> {
        let checked = self.validate_produce(payload, now_ms, coordinator)?;
        self.append_checked(checked, leader_epoch, now_ms)
    }

    /// What a leader does with a client's produce payload before it
    /// proposes it: the batches are validated against the topic's rules
    /// (recompressed if `compression.type` asks) and the producer's
    /// sequence is checked. A retry of a batch already in the log gets its
    /// original offsets (`Duplicate`). Nothing is written here.
    pub fn check_produce<'a>(&self, payload: &'a [u8], now_ms: i64) -> Result<ProduceVerdict<'a>> {
        let checked = self.validate_produce(payload, now_ms, false)?;
        let inner = self.read_inner();
        Ok(match self.sequence_verdict(&inner, &checked.batches, checked.coordinator)? {
            Some(dup) => ProduceVerdict::Duplicate(dup),
            None => ProduceVerdict::Append(checked),
        })
    }

    /// `check_produce` for a batch the broker itself writes for a producer (a coordinator's
    /// transactional offset commit) or on its own (producer id -1): the topic's record rules
    /// do not apply and a producer's epoch is checked, not its sequence.
    pub fn check_coordinator_write<'a>(&self, payload: &'a [u8], now_ms: i64) -> Result<CheckedProduce<'a>> {
        let checked = self.validate_produce(payload, now_ms, true)?;
        let inner = self.read_inner();
        self.sequence_verdict(&inner, &checked.batches, true)?;
        check_markers(&inner, &checked.payload, &checked.batches)?;
        drop(inner);
        Ok(checked)
    }

    /// The bytes a replicated log's leader proposes for checked batches: as the producer sent
    /// them (recompressed if the topic asks), without a partitionLeaderEpoch, since the entry's
    /// term is stamped when it is stored and a batch already carrying one would be taken for a
    /// stored batch, and with the leader's clock as every timestamp on a LogAppendTime topic,
    /// so that every replica stores the same time.
    pub fn proposal(&self, checked: CheckedProduce<'_>, now_ms: i64) -> Vec<u8> {
        let append_time = (self.read_inner().config.timestamp_type == TimestampType::LogAppendTime).then_some(now_ms);
        let mut data = checked.payload.into_owned();
        for (pos, h) in &checked.batches {
            batch::patch(&mut data[*pos..*pos + h.total_size()], 0, -1, append_time);
        }
        data
    }

    /// Assigns offsets (from the log end), the leader epoch and, with
    /// LogAppendTime, timestamps to checked batches and appends them. The
    /// sequence verdict is taken again under the write lock, so two racing
    /// retries of one batch are written once.
    pub fn append_checked(&self, checked: CheckedProduce<'_>, leader_epoch: i32, now_ms: i64) -> Result<AppendInfo> {
        let CheckedProduce { payload, mut batches, coordinator } = checked;
        let mut inner = self.write_inner();
        refuse_beside_raft(&inner)?;
        if let Some(dup) = self.sequence_verdict(&inner, &batches, coordinator)? {
            return Ok(dup);
        }
        if coordinator {
            check_markers(&inner, &payload, &batches)?;
        }
        let append_time = match inner.config.timestamp_type {
            TimestampType::LogAppendTime => Some(now_ms),
            TimestampType::CreateTime => None,
        };
        let base_offset = inner.log_end();
        let mut next = base_offset;
        for (_, h) in batches.iter_mut() {
            h.base_offset = next;
            h.partition_leader_epoch = leader_epoch;
            if let Some(ts) = append_time {
                h.base_timestamp = ts;
                h.max_timestamp = ts;
            }
            next = h.last_offset() + 1;
        }
        match append_time {
            Some(ts) => {
                // LogAppendTime rewrites timestamps inside the CRC: patch a copy.
                let mut data = payload.into_owned();
                for (pos, h) in &batches {
                    batch::patch(&mut data[*pos..*pos + h.total_size()], h.base_offset, leader_epoch, Some(ts));
                }
                self.write_batches(&mut inner, &data, &batches, false, now_ms)?;
            }
            None => self.write_batches(&mut inner, &payload, &batches, true, now_ms)?,
        }
        let log_start = inner.log_start;
        self.committed_by_append(inner);
        Ok(AppendInfo {
            base_offset,
            last_offset: next - 1,
            log_append_time: append_time.unwrap_or(-1),
            log_start_offset: log_start,
            duplicate: false,
        })
    }

    /// A follower's append: batches exactly as the leader stored them, with
    /// the offsets and partitionLeaderEpoch it gave them. They are checked
    /// (structure, CRC, each starting where the log ends) but nothing is
    /// reassigned, and producer state, the aborted transactions and the
    /// leader-epoch cache follow them as they followed the leader's append.
    /// Leader epochs are taken as they come (an older one is ignored by the
    /// epoch cache, as on the leader): the order of terms is Raft's to
    /// guarantee. A batch that does not start at the log end means this
    /// replica diverged from the leader: it is refused, never moved to fit.
    /// Nothing is written unless every batch passes.
    pub fn append_entry(&self, data: &[u8], now_ms: i64) -> Result<AppendInfo> {
        let batches = batch::split_stored(data)?;
        let mut inner = self.write_inner();
        if self.is_deleted() {
            return Err(LogError::Deleted);
        }
        refuse_beside_raft(&inner)?;
        let base_offset = inner.log_end();
        let mut next = base_offset;
        for (_, h) in &batches {
            if h.base_offset != next {
                return Err(LogError::UnexpectedAppendOffset { offset: h.base_offset, log_end: next });
            }
            next = h.last_offset() + 1;
        }
        self.write_batches(&mut inner, data, &batches, false, now_ms)?;
        let log_start = inner.log_start;
        self.committed_by_append(inner);
        let log_append_time = batches.iter().find(|(_, h)| h.is_log_append_time()).map_or(-1, |(_, h)| h.max_timestamp);
        Ok(AppendInfo {
            base_offset,
            last_offset: next - 1,
            log_append_time,
            log_start_offset: log_start,
            duplicate: false,
        })
    }

    /// Validation of a produce payload that needs no lock: structure, CRC,
    /// sizes, the topic's record rules, and what clients may not write.
    fn validate_produce<'a>(&self, payload: &'a [u8], now_ms: i64, coordinator: bool) -> Result<CheckedProduce<'a>> {
        let (max, rules) = {
            let c = &self.read_inner().config;
            let window = (c.timestamp_type == TimestampType::CreateTime
                && (c.timestamp_before_max_ms != i64::MAX || c.timestamp_after_max_ms != i64::MAX))
                .then(|| {
                    (now_ms.saturating_sub(c.timestamp_before_max_ms), now_ms.saturating_add(c.timestamp_after_max_ms))
                });
            let rules = crate::records::ProduceRules {
                require_keys: c.compact,
                timestamp_window: window,
                compression: c.compression,
                decompressed_limit: c.decompressed_limit(),
            };
            (c.max_message_bytes, rules)
        };
        let mut batches = batch::split_and_validate(payload, max)?;
        // Only the broker's own writers (coordinators) skip the topic's
        // record rules: their batches are control records and offset commits.
        let converted = if coordinator || !rules.any() {
            None
        } else {
            let name = self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            crate::records::check_produced(payload, &batches, &rules, &name)?
        };
        let payload: Cow<'a, [u8]> = match converted {
            Some(p) => {
                // Recompression changed sizes: the batches are found and
                // checked anew, against the same size limit as Kafka does.
                batches = batch::split_and_validate(&p, max)?;
                Cow::Owned(p)
            }
            None => Cow::Borrowed(payload),
        };
        if !coordinator && batches.iter().any(|(_, h)| h.is_control()) {
            return Err(LogError::InvalidRecord("clients may not write control records".into()));
        }
        let idempotent = batches.iter().any(|(_, h)| h.producer_id >= 0);
        if idempotent && batches.len() != 1 {
            return Err(LogError::InvalidRecord(
                "an idempotent produce carries exactly one batch per partition".into(),
            ));
        }
        if batches.iter().any(|(_, h)| h.is_transactional() && h.producer_id < 0) {
            return Err(LogError::InvalidRecord("a transactional batch needs a producer id".into()));
        }
        Ok(CheckedProduce { payload, batches, coordinator })
    }

    /// The producer-state verdict on validated batches: an error (fenced
    /// epoch, sequence gap), `Some` for a retry already in the log, `None`
    /// to append.
    fn sequence_verdict(
        &self,
        inner: &Inner,
        batches: &[(usize, BatchHeader)],
        coordinator: bool,
    ) -> Result<Option<AppendInfo>> {
        // `delete` sets the flag before it takes the lock: an append that
        // passes here (under the write lock) finishes before the files go.
        if self.is_deleted() {
            return Err(LogError::Deleted);
        }
        let Some((_, h)) = batches.first() else { return Ok(None) };
        if coordinator {
            inner.producers.check_epoch(h.producer_id, h.producer_epoch)?;
        } else if h.producer_id >= 0 {
            if let SequenceCheck::Duplicate { base_offset, last_offset } = inner.producers.check(h)? {
                return Ok(Some(AppendInfo {
                    base_offset,
                    last_offset,
                    log_append_time: -1,
                    log_start_offset: inner.log_start,
                    duplicate: true,
                }));
            }
        }
        Ok(None)
    }

    /// Writes batches whose offsets are final at the log end, and moves
    /// everything that follows the log along: the leader-epoch cache,
    /// producer state and the aborted transactions. The leader's and a
    /// follower's appends share it, so both replicas end in the same state.
    /// With `assigned_heads`, each batch's offset and epoch are taken from
    /// its header rather than from `data` (the leader's zero-copy path).
    fn write_batches(
        &self,
        inner: &mut Inner,
        data: &[u8],
        batches: &[(usize, BatchHeader)],
        assigned_heads: bool,
        now_ms: i64,
    ) -> Result<()> {
        self.maybe_roll(inner, data.len() as u64, now_ms)?;
        let interval = inner.config.index_interval_bytes;
        if assigned_heads {
            inner.active_mut().append_assigned(data, batches, interval, now_ms)?;
        } else {
            inner.active_mut().append(data, batches, interval, now_ms)?;
        }
        for (pos, h) in batches {
            inner.epochs.assign(h.partition_leader_epoch, h.base_offset)?;
            let marker = if h.is_control() { batch::marker_kind(&data[*pos..*pos + h.total_size()]) } else { None };
            if let Some(aborted) = inner.producers.update(h, marker) {
                self.record_abort(inner, aborted)?;
            }
        }
        Ok(())
    }

    /// After an append: a single replica's high watermark follows the log
    /// end, and consumers waiting on it wake. A replicated log's waits for
    /// `set_high_watermark`.
    fn committed_by_append(&self, mut inner: RwLockWriteGuard<'_, Inner>) {
        if !inner.hw_follows_end {
            return;
        }
        inner.hw = inner.log_end();
        drop(inner);
        self.hw_moved.notify_waiters();
    }

    /// A Raft entry's append on a replicated log (leader and followers alike): `data` is one
    /// entry's batches with their final offsets (starting at the log end) and epoch, and `index`
    /// its Raft index, recorded in the active segment's `.raftindex` so the entry can be found
    /// again after a restart. The index must follow the last entry; the first entry of an empty
    /// Raft log may have any index (the log may continue a snapshot). The row is synced by
    /// `sync`, with the data.
    pub fn append_raft_entry(&self, data: &[u8], index: u64, now_ms: i64) -> Result<AppendInfo> {
        self.append_raft(data, None, index, now_ms)
    }

    /// `append_raft_entry` for an entry's batches as they were proposed: the log gives them
    /// their offsets, on from its end, and `epoch` (the entry's term) as it writes them, so the
    /// entry is not copied to be patched first. A batch already in stored form (its epoch set:
    /// read back from a leader's log) must sit at the offset it names; another means this log
    /// diverged from the leader's, and writing it would misplace offsets.
    pub fn append_raft_entry_assigning(&self, data: &[u8], epoch: i32, index: u64, now_ms: i64) -> Result<AppendInfo> {
        self.append_raft(data, Some(epoch), index, now_ms)
    }

    fn append_raft(&self, data: &[u8], assign_epoch: Option<i32>, index: u64, now_ms: i64) -> Result<AppendInfo> {
        let mut batches = batch::split_stored(data)?;
        let mut inner = self.write_inner();
        if self.is_deleted() {
            return Err(LogError::Deleted);
        }
        // The last entry's sidecar says what comes next (a later, empty one may not).
        let last = inner.raft.values().rev().find_map(|i| i.last_index());
        if let Some(last) = last {
            if Some(index) != last.checked_add(1) {
                return Err(LogError::InvalidRecord(format!("raft entry {index} does not follow entry {last}")));
            }
        }
        let base_offset = inner.log_end();
        let mut next = base_offset;
        for (_, h) in &mut batches {
            let placed = h.base_offset == next;
            match assign_epoch {
                Some(epoch) if placed || h.partition_leader_epoch < 0 => {
                    h.base_offset = next;
                    h.partition_leader_epoch = epoch;
                }
                _ if placed => {}
                _ => return Err(LogError::UnexpectedAppendOffset { offset: h.base_offset, log_end: next }),
            }
            next = h.last_offset() + 1;
        }
        // Rolled first, so the entry's segment (and so its sidecar) is known before writing.
        self.maybe_roll(&mut inner, data.len() as u64, now_ms)?;
        let seg_base = inner.active().base_offset;
        let start_pos = inner.active().size();
        SegmentRaftIndex::check_fits(seg_base, next, start_pos + data.len() as u64)?;
        let needs_sidecar = match inner.raft.get(&seg_base) {
            // An empty sidecar naming another index is replaced; one holding entries names
            // this one (it holds the last entry, checked above).
            Some(idx) => idx.next_index() != index,
            None => true,
        };
        if needs_sidecar {
            drop_sidecar(&mut inner, seg_base)?;
            let idx = SegmentRaftIndex::create(&self.dir, seg_base, index, base_offset, start_pos)?;
            inner.raft.insert(seg_base, idx);
        }
        self.write_batches(&mut inner, data, &batches, assign_epoch.is_some(), now_ms)?;
        let end_pos = inner.active().size();
        if let Some(idx) = inner.raft.get_mut(&seg_base) {
            idx.push(next, end_pos)?;
        }
        let log_start = inner.log_start;
        self.committed_by_append(inner);
        let log_append_time = batches.iter().find(|(_, h)| h.is_log_append_time()).map_or(-1, |(_, h)| h.max_timestamp);
        Ok(AppendInfo {
            base_offset,
            last_offset: next - 1,
            log_append_time,
            log_start_offset: log_start,
            duplicate: false,
        })
    }

    /// The Raft entries this log holds: (first, last) index, None when it holds none.
    pub fn raft_index_range(&self) -> Option<(u64, u64)> {
        let inner = self.read_inner();
        let first = inner.raft.values().find(|i| i.len() > 0)?.first_index;
        let last = inner.raft.values().rev().find_map(|i| i.last_index())?;
        Some((first, last))
    }

    /// Where entry `index` lies, if the log holds it.
    pub fn raft_entry_span(&self, index: u64) -> Option<EntrySpan> {
        let inner = self.read_inner();
        raft_span(&inner, index)
    }

    /// The Raft entry holding `offset`, if any.
    pub fn raft_index_for_offset(&self, offset: i64) -> Option<u64> {
        let inner = self.read_inner();
        let (_, idx) = inner.raft.range(..=offset).next_back()?;
        idx.index_for_offset(offset)
    }

    /// Entries `[from, to)` as stored (zero-copy slices of the segments), stopping early once
    /// `max_bytes` would be passed; the first entry is returned whatever its size, so a
    /// reader always progresses. Stops at the first index after `from` the log does not hold.
    /// A `from` below the first entry held is an error (NotFound), not a read that silently
    /// starts later: the caller asked for entries the log no longer has.
    pub fn raft_entries(&self, from: u64, to: u64, max_bytes: usize) -> Result<Vec<RaftEntry>> {
        let inner = self.read_inner();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        if let Some(first) = inner.raft.values().find(|i| i.len() > 0).map(|i| i.first_index) {
            if from < first && from < to {
                return Err(LogError::Io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("raft entry {from} is not in the log, which starts at entry {first}"),
                )));
            }
        }
        let mut index = from;
        while index < to {
            let Some(span) = raft_span(&inner, index) else { break };
            let len = (span.end_pos - span.start_pos) as usize;
            if !out.is_empty() && bytes + len > max_bytes {
                break;
            }
            out.push(stored_entry(&inner, span)?);
            bytes += len;
            index += 1;
        }
        Ok(out)
    }

    /// Entry `index` as stored, None if the log does not hold it.
    pub fn raft_entry(&self, index: u64) -> Result<Option<RaftEntry>> {
        let inner = self.read_inner();
        raft_span(&inner, index).map(|span| stored_entry(&inner, span)).transpose()
    }

    /// Removes the Raft entries after `index` (all of them with None) and their batches,
    /// durably (`truncate_to`). Nothing happens past the last entry.
    pub fn truncate_raft_after(&self, index: Option<u64>) -> Result<()> {
        let cut = {
            let inner = self.read_inner();
            match index {
                Some(i) => match raft_span(&inner, i) {
                    Some(span) => span.next_offset,
                    // Below the first entry held: everything goes; past the last: nothing.
                    None => match inner.raft.values().find(|x| x.len() > 0) {
                        Some(first) if i < first.first_index => first.start_offset,
                        _ => return Ok(()),
                    },
                },
                None => match inner.raft.values().find(|x| x.len() > 0) {
                    Some(first) => first.start_offset,
                    None => return Ok(()),
                },
            }
        };
        self.truncate_to(cut)
    }

    /// Drops whole segments whose every Raft entry is at or below `index` (Raft purged them),
    /// moving the log start past them; a segment holding a later entry, and everything after
    /// it, stays. Returns the new log start.
    pub fn drop_raft_segments_upto(&self, index: u64) -> Result<i64> {
        let mut inner = self.write_inner();
        if self.is_deleted() {
            return Err(LogError::Deleted);
        }
        // Without entries there is nothing Raft could have purged (the data is all below it).
        if inner.raft.is_empty() {
            return Ok(inner.log_start);
        }
        // The first segment holding an entry past `index` (or the log end) bounds the drop.
        let mut keep_from = inner.log_end();
        for (base, idx) in inner.raft.iter() {
            if idx.last_index().is_none_or(|l| l > index) {
                keep_from = (*base).min(keep_from);
                break;
            }
        }
        if inner.segments.keys().next().is_none_or(|first| *first >= keep_from) {
            return Ok(inner.log_start);
        }
        if inner.log_end() == keep_from && !inner.active().is_empty() {
            self.roll(&mut inner, 0)?;
        }
        // The log start may already be past `keep_from` (DeleteRecords): it never goes back.
        if keep_from > inner.log_start {
            inner.log_start = keep_from;
            write_atomic(&self.dir.join("log-start-offset"), keep_from.to_string().as_bytes())?;
            inner.epochs.truncate_before(keep_from)?;
        }
        let doomed: Vec<i64> = inner.segments.range(..keep_from).map(|(b, _)| *b).collect();
        for base in doomed {
            if let Some(seg) = inner.segments.remove(&base) {
                seg.delete()?;
                remove_if_present(&self.dir.join(file_name(base, "txnindex")))?;
                drop_sidecar(&mut inner, base)?;
            }
        }
        let start = inner.log_start;
        inner.aborted.retain(|a| a.last_offset >= start);
        inner.hw = inner.hw.max(inner.log_start);
        Ok(inner.log_start)
    }

    /// Empties the log and restarts it at `next_offset` with `producers` (a follower
    /// installing a snapshot of everything before it): every segment and sidecar is unlinked
    /// (readers keep their slices), as Kafka's follower does on OffsetOutOfRange.
    pub fn reset_to(&self, next_offset: i64, producers: &[u8]) -> Result<()> {
        let states = ProducerStates::from_json(producers)
            .ok_or_else(|| LogError::Corrupt("unreadable producer state in a snapshot".into()))?;
        let mut inner = self.write_inner();
        if self.is_deleted() {
            return Err(LogError::Deleted);
        }
        let bases: Vec<i64> = inner.segments.keys().copied().collect();
        // The new segment's name may equal an old one's: the old goes first.
        for b in bases {
            if let Some(old) = inner.segments.remove(&b) {
                old.delete()?;
            }
            remove_if_present(&self.dir.join(file_name(b, "txnindex")))?;
            drop_sidecar(&mut inner, b)?;
        }
        let seg =
            Segment::create(&self.dir, next_offset, inner.config.segment_bytes, inner.config.segment_index_bytes)?;
        inner.segments.insert(next_offset, seg);
        for off in snapshot_offsets(&self.dir) {
            remove_if_present(&self.dir.join(file_name(off, "snapshot")))?;
        }
        write_atomic(&self.dir.join(file_name(next_offset, "snapshot")), &states.to_json())?;
        inner.log_start = next_offset;
        write_atomic(&self.dir.join("log-start-offset"), next_offset.to_string().as_bytes())?;
        inner.epochs.truncate_from(i64::MIN)?;
        inner.producers = states;
        inner.aborted.clear();
        inner.hw = next_offset;
        sync_dir(&self.dir)?;
        self.flushed.cut(next_offset, true);
        drop(inner);
        self.hw_moved.notify_waiters();
        Ok(())
    }

    /// The whole batches below `upto` that hold offsets at or above the log start, the newest
    /// ones only if together they pass `max_bytes` (a Raft snapshot's log prefix, below its
    /// first entry's successor). Copied out: the caller ships them.
    pub fn prefix_before(&self, upto: i64, max_bytes: usize) -> Vec<u8> {
        let inner = self.read_inner();
        let start = inner.log_start;
        let mut spans = Vec::new();
        for seg in inner.segments.values() {
            if seg.base_offset >= upto || seg.next_offset <= start {
                continue;
            }
            for b in seg.batches() {
                if b.header.base_offset >= upto {
                    break;
                }
                if b.header.last_offset() >= start {
                    spans.push((seg, b.position, b.header.total_size()));
                }
            }
        }
        let mut total = 0usize;
        let keep = spans
            .iter()
            .rev()
            .take_while(|(_, _, len)| {
                total += len;
                total <= max_bytes
            })
            .count();
        let mut out = Vec::with_capacity(total.min(max_bytes));
        // Offsets whose batches compaction removed are shipped as fillers (stamped with the
        // epoch of the batch before them), so the prefix runs unbroken to `upto`.
        let mut last: Option<(i64, i32)> = None;
        for (seg, pos, len) in &spans[spans.len() - keep..] {
            let bytes = seg.bytes(*pos, pos + *len as u64);
            if let (Ok(h), Some((next, epoch))) = (BatchHeader::parse(&bytes), last) {
                if h.base_offset > next {
                    out.extend_from_slice(&batch::build_filler(next, h.base_offset, epoch));
                }
            }
            if let Ok(h) = BatchHeader::parse(&bytes) {
                last = Some((h.last_offset() + 1, h.partition_leader_epoch));
            }
            out.extend_from_slice(&bytes);
        }
        if let Some((next, epoch)) = last.filter(|(next, _)| *next < upto) {
            out.extend_from_slice(&batch::build_filler(next, upto, epoch));
        }
        out
    }

    /// A follower installing a Raft snapshot: the log restarts holding only `prefix` (whole
    /// batches as `prefix_before` gave them, ending at `next_offset`), with the leader's log
    /// start (or the first batch shipped, if later), its producer state, and everything up to
    /// `next_offset` committed. An empty prefix starts the log empty at `next_offset`.
    pub fn restore_prefix(&self, prefix: &[u8], log_start: i64, next_offset: i64, producers: &[u8]) -> Result<()> {
        // Checked whole before the log is touched: a bad snapshot must not cost the log.
        Self::check_snapshot_prefix(prefix, next_offset, producers)?;
        let batches = if prefix.is_empty() { Vec::new() } else { batch::split_stored(prefix)? };
        let first = batches.first().map_or(next_offset, |(_, h)| h.base_offset);
        self.reset_to(first, producers)?;
        let mut inner = self.write_inner();
        if !batches.is_empty() {
            self.write_batches(&mut inner, prefix, &batches, false, 0)?;
            // The prefix's batches moved producer state past the snapshot's; its own is exact.
            inner.producers = ProducerStates::from_json(producers)
                .ok_or_else(|| LogError::Corrupt("unreadable producer state in a snapshot".into()))?;
            // Recovery starts from the newest producer snapshot file: this one, at the end.
            self.snapshot_producers(&inner, next_offset)?;
            inner.active().sync()?;
            self.flushed.cut(next_offset, true);
        }
        let start = log_start.clamp(first, next_offset);
        if start > inner.log_start {
            inner.log_start = start;
            write_atomic(&self.dir.join("log-start-offset"), start.to_string().as_bytes())?;
            inner.epochs.truncate_before(start)?;
        }
        inner.hw = next_offset;
        drop(inner);
        self.hw_moved.notify_waiters();
        Ok(())
    }

    /// Whether `restore_prefix` would take this snapshot: whole batches with consecutive
    /// offsets ending at `next_offset` (not negative), and readable producer state. Nothing is
    /// written; a caller checks before it records the snapshot as being installed.
    pub fn check_snapshot_prefix(prefix: &[u8], next_offset: i64, producers: &[u8]) -> Result<()> {
        if next_offset < 0 {
            return Err(LogError::Corrupt(format!("snapshot next offset {next_offset} is negative")));
        }
        ProducerStates::from_json(producers)
            .ok_or_else(|| LogError::Corrupt("unreadable producer state in a snapshot".into()))?;
        if prefix.is_empty() {
            return Ok(());
        }
        let batches = batch::split_stored(prefix)?;
        let mut next = batches.first().map_or(next_offset, |(_, h)| h.base_offset);
        if next < 0 {
            return Err(LogError::Corrupt(format!("snapshot prefix starts at offset {next}")));
        }
        for (_, h) in &batches {
            if h.base_offset != next {
                return Err(LogError::Corrupt(format!("snapshot prefix has a gap at offset {next}")));
            }
            next = h.last_offset() + 1;
        }
        if next != next_offset {
            return Err(LogError::Corrupt(format!("snapshot prefix ends at {next}, not at {next_offset}")));
        }
        Ok(())
    }

    /// Producer state as of the log end (for a Raft snapshot).
    pub fn producer_state(&self) -> Vec<u8> {
        self.read_inner().producers.to_json()
    }

    /// Producer state as of `upto` (the batches below it): a Raft snapshot's, when entries past
    /// its last one are already in the log. Rebuilt like recovery does, from the newest
    /// producer snapshot file at or below `upto` and the batch headers after it.
    pub fn producer_state_at(&self, upto: i64) -> Result<Vec<u8>> {
        let inner = self.read_inner();
        if upto >= inner.log_end() {
            return Ok(inner.producers.to_json());
        }
        let mut states = ProducerStates::default();
        let mut from = i64::MIN;
        for off in snapshot_offsets(&self.dir).into_iter().rev().filter(|o| *o <= upto) {
            if let Some(st) = std::fs::read(self.dir.join(file_name(off, "snapshot")))
                .ok()
                .and_then(|b| ProducerStates::from_json(&b))
            {
                states = st;
                from = off;
                break;
            }
        }
        // The batches from there to `upto` must all be here: from a snapshot older than the
        // first segment (or from nothing, on a log that no longer starts at 0) the state would
        // miss the producers of the segments gone since.
        let first = inner.segments.keys().next().copied().unwrap_or(0);
        if (from == i64::MIN && first > 0) || (from != i64::MIN && from < first) {
            return Err(LogError::Corrupt(format!(
                "no producer state snapshot between the first segment at {first} and offset {upto}"
            )));
        }
        for seg in inner.segments.values() {
            if seg.next_offset <= from || seg.base_offset >= upto {
                continue;
            }
            for b in seg.batches() {
                if b.header.base_offset < from {
                    continue;
                }
                if b.header.base_offset >= upto {
                    break;
                }
                let marker = if b.header.is_control() {
                    batch::marker_kind(&seg.bytes(b.position, b.position + b.header.total_size() as u64))
                } else {
                    None
                };
                states.update(&b.header, marker);
            }
        }
        Ok(states.to_json())
    }

    /// Raises the high watermark to `offset` (clamped to the log end; a
    /// lower value than the current one is ignored) and wakes consumers'
    /// long polls if it moved. Returns the high watermark.
    pub fn set_high_watermark(&self, offset: i64) -> i64 {
        let mut inner = self.write_inner();
        let hw = offset.min(inner.log_end());
        if hw <= inner.hw {
            return inner.hw;
        }
        inner.hw = hw;
        drop(inner);
        self.hw_moved.notify_waiters();
        hw
    }

    /// Notes an aborted transaction in memory and in the active segment's
    /// txnindex. The index is made durable when the segment closes; a crash
    /// before that is repaired by recovery, which rescans the active segment.
    fn record_abort(&self, inner: &mut Inner, aborted: AbortedTxn) -> Result<()> {
        let path = self.dir.join(file_name(inner.active().base_offset, "txnindex"));
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        f.write_all(&encode_txn_entry(&aborted))?;
        inner.aborted.push(aborted);
        Ok(())
    }

    /// Saves producer state as of `offset` (the base of the new active
    /// segment), so recovery reads only the segments after it.
    fn snapshot_producers(&self, inner: &Inner, offset: i64) -> Result<()> {
        write_atomic(&self.dir.join(file_name(offset, "snapshot")), &inner.producers.to_json())?;
        prune_snapshots(&self.dir, inner.log_start)
    }

    fn maybe_roll(&self, inner: &mut Inner, incoming: u64, now_ms: i64) -> Result<()> {
        let cfg = inner.config.clone();
        let active = inner.active();
        let by_time = active.created_ms.is_some_and(|c| now_ms - c >= cfg.segment_ms);
        let by_size = active.remaining() < incoming || active.size() + incoming > cfg.segment_bytes;
        if active.is_empty() && active.remaining() >= incoming {
            return Ok(());
        }
        if by_time || by_size || active.index_full() {
            self.roll(inner, incoming)?;
        }
        Ok(())
    }

    fn roll(&self, inner: &mut Inner, incoming: u64) -> Result<()> {
        let base = inner.log_end();
        let cap = inner.config.segment_bytes.max(incoming);
        if inner.active().is_empty() {
            // An empty active segment is replaced rather than left behind.
            let old_base = inner.active().base_offset;
            if let Some(old) = inner.segments.remove(&old_base) {
                old.delete()?;
            }
            drop_sidecar(inner, old_base)?;
        } else {
            let old_base = inner.active().base_offset;
            inner.active_mut().close()?;
            // The closing segment's rows before the next segment exists: recovery trusts a
            // later sidecar only when every earlier one is whole.
            if let Some(idx) = inner.raft.get(&old_base) {
                idx.sync_rows()?;
            }
            if let Ok(f) = std::fs::File::open(self.dir.join(file_name(old_base, "txnindex"))) {
                f.sync_all()?;
            }
            self.snapshot_producers(inner, base)?;
        }
        let seg = Segment::create(&self.dir, base, cap, inner.config.segment_index_bytes)?;
        // The new file's name must survive a crash too: a later sync makes
        // its data durable, not the directory entry that finds it.
        sync_dir(&self.dir)?;
        inner.segments.insert(base, seg);
        Ok(())
    }

    pub fn log_start_offset(&self) -> i64 {
        self.read_inner().log_start
    }
    pub fn log_end_offset(&self) -> i64 {
        self.read_inner().log_end()
    }
    /// The high watermark: the end of what consumers may read. A single
    /// replica's is its log end; a replicated log's is set by its replica
    /// (`set_high_watermark`).
    pub fn high_watermark(&self) -> i64 {
        self.read_inner().hw
    }
    /// The last stable offset: below it every transaction has ended, so
    /// read_committed consumers may read up to here.
    pub fn last_stable_offset(&self) -> i64 {
        self.read_inner().last_stable_offset()
    }
    /// Aborted transactions a reader of [from, upto) must know about.
    pub fn aborted_transactions(&self, from: i64, upto: i64) -> Vec<AbortedTxn> {
        let inner = self.read_inner();
        // Markers are in offset order; entries ending before `from` are skipped.
        let start = inner.aborted.partition_point(|a| a.last_offset < from);
        inner.aborted[start..].iter().filter(|a| a.first_offset < upto).copied().collect()
    }
    /// Producers with an open transaction here, and its first offset.
    pub fn open_transactions(&self) -> Vec<(i64, i64)> {
        self.read_inner().producers.open_transactions()
    }
    pub fn size_bytes(&self) -> u64 {
        self.read_inner().size()
    }
    pub fn segment_count(&self) -> usize {
        self.read_inner().segments.len()
    }
    pub fn latest_epoch(&self) -> Option<i32> {
        self.read_inner().epochs.latest_epoch()
    }
    /// The leader epoch the record at `offset` was written in (Kafka's
    /// `epochForOffset`): the last epoch starting at or before it.
    pub fn epoch_for_offset(&self, offset: i64) -> Option<i32> {
        let inner = self.read_inner();
        inner.epochs.entries().iter().rev().find(|(_, o)| *o <= offset).map(|(e, _)| *e)
    }
    /// Where the oldest epoch the cache still knows starts.
    pub fn first_epoch_start(&self) -> Option<i64> {
        self.read_inner().epochs.entries().first().map(|(_, o)| *o)
    }
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        let inner = self.read_inner();
        inner.epochs.end_offset_for(epoch, inner.log_end())
    }

    /// Notified when the high watermark moves (for a single replica, after
    /// every append) and when the log is deleted; long polls wait on it.
    pub fn high_watermark_moved(&self) -> &Notify {
        &self.hw_moved
    }

    /// Reads whole batches from `offset` up to `max_bytes` (at least one
    /// batch, so a consumer can always make progress) and below `max_offset`
    /// and the high watermark. An offset past the high watermark but not
    /// past the log end reads nothing (no error), as in Kafka.
    pub fn read(&self, offset: i64, max_bytes: usize, max_offset: i64) -> Result<ReadResult> {
        self.read_below(offset, max_bytes, |_| max_offset)
    }

    /// `read` for read_committed consumers: below the last stable offset,
    /// taken under the same lock as the read.
    pub fn read_committed(&self, offset: i64, max_bytes: usize) -> Result<ReadResult> {
        self.read_below(offset, max_bytes, |r| r.last_stable_offset)
    }

    fn read_below(&self, offset: i64, max_bytes: usize, bound: impl Fn(&ReadResult) -> i64) -> Result<ReadResult> {
        let inner = self.read_inner();
        let end = inner.log_end();
        if offset < inner.log_start || offset > end {
            return Err(LogError::OffsetOutOfRange { offset, start: inner.log_start, end });
        }
        let empty = ReadResult {
            records: Bytes::new(),
            file: None,
            log_start_offset: inner.log_start,
            high_watermark: inner.hw,
            last_stable_offset: inner.last_stable_offset(),
        };
        let limit = bound(&empty).min(inner.hw);
        if offset >= limit {
            return Ok(empty);
        }
        for (_, seg) in
            inner.segments.range(..=offset).next_back().into_iter().chain(inner.segments.range(offset + 1..))
        {
            if seg.next_offset <= offset {
                continue;
            }
            let Some(first) = seg.find_batch(offset) else {
                continue;
            };
            if first.header.base_offset >= limit {
                return Ok(empty);
            }
            let start = first.position;
            let mut stop = start + first.header.total_size() as u64;
            while let Some(b) = seg.batch_at(stop) {
                if b.header.base_offset >= limit || (stop - start) + b.header.total_size() as u64 > max_bytes as u64 {
                    break;
                }
                stop += b.header.total_size() as u64;
            }
            return Ok(ReadResult { records: seg.bytes(start, stop), file: Some((seg.file(), start)), ..empty });
        }
        Ok(empty)
    }

    /// The first batch (below `max_offset`) holding a timestamp >= `ts`.
    pub fn batch_by_timestamp(&self, ts: i64, max_offset: i64) -> Option<Bytes> {
        let inner = self.read_inner();
        for seg in inner.segments.values() {
            if seg.max_timestamp < ts {
                continue;
            }
            let b = seg.find_batch_by_time(ts)?;
            if b.header.base_offset >= max_offset {
                return None;
            }
            return Some(seg.bytes(b.position, b.position + b.header.total_size() as u64));
        }
        None
    }

    /// The batch holding the largest timestamp in the log.
    pub fn batch_with_max_timestamp(&self) -> Option<Bytes> {
        let inner = self.read_inner();
        let seg = inner
            .segments
            .values()
            .filter(|s| s.max_timestamp >= 0)
            .max_by_key(|s| (s.max_timestamp, std::cmp::Reverse(s.base_offset)))?;
        let b = seg.find_batch(seg.offset_of_max_timestamp)?;
        Some(seg.bytes(b.position, b.position + b.header.total_size() as u64))
    }

    /// Advances the log start offset (DeleteRecords). `offset` may be the
    /// high watermark at most (-1 means it); returns the new low watermark.
    pub fn delete_records(&self, offset: i64) -> Result<i64> {
        let mut inner = self.write_inner();
        if self.is_deleted() {
            return Err(LogError::Deleted);
        }
        let hw = inner.hw;
        let offset = if offset == -1 { hw } else { offset };
        if offset < 0 || offset > hw {
            return Err(LogError::OffsetOutOfRange { offset, start: inner.log_start, end: hw });
        }
        if offset > inner.log_start {
            inner.log_start = offset;
            write_atomic(&self.dir.join("log-start-offset"), offset.to_string().as_bytes())?;
            let floor = epoch_floor(&inner.raft, offset);
            inner.epochs.truncate_before(floor)?;
        }
        // Tiered storage: what the bucket holds below the new start is deleted too (on every
        // replica, as this runs when the log start entry applies).
        let mut m = (*inner.remote).clone();
        if m.raise_floor(offset) {
            write_atomic(&self.dir.join(crate::remote::MANIFEST_FILE), &m.to_json())?;
            inner.remote = Arc::new(m);
        }
        self.drop_segments_below_start(&mut inner)?;
        Ok(inner.log_start)
    }

    /// Unlinks the segments wholly below the log start. Segments holding Raft entries stay
    /// (unreadable below the log start): dropping them would leave a hole in the Raft log;
    /// Raft's purge takes them (`drop_raft_segments_upto`).
    fn drop_segments_below_start(&self, inner: &mut Inner) -> Result<usize> {
        let mut dropped = 0;
        while let Some((&base, first)) = inner.segments.iter().next() {
            if first.next_offset > inner.log_start || first.base_offset == first.next_offset {
                break;
            }
            if inner.raft.contains_key(&base) {
                break;
            }
            if inner.segments.len() == 1 {
                self.roll(inner, 0)?;
            }
            if let Some(seg) = inner.segments.remove(&base) {
                seg.delete()?;
                remove_if_present(&self.dir.join(file_name(base, "txnindex")))?;
                drop_sidecar(inner, base)?;
                dropped += 1;
            }
        }
        let start = inner.log_start;
        inner.aborted.retain(|a| a.last_offset >= start);
        Ok(dropped)
    }

    /// Drops the state of producers silent past producer.id.expiration.ms.
    pub fn expire_producers(&self, now_ms: i64) -> usize {
        let mut inner = self.write_inner();
        let ms = inner.config.producer_id_expiration_ms;
        inner.producers.expire(now_ms, ms)
    }

    /// Deletes whole segments past `retention.ms` or beyond
    /// `retention.bytes`, oldest first. Returns how many went.
    pub fn apply_retention(&self, now_ms: i64) -> Result<usize> {
        let mut inner = self.write_inner();
        if self.is_deleted() {
            return Err(LogError::Deleted);
        }
        let cfg = inner.config.clone();
        if !cfg.delete {
            return Ok(0);
        }
        let mut new_start = inner.log_start;
        let mut size = inner.size() as i64;
        let mut expired_active = false;
        let n = inner.segments.len();
        for (i, seg) in inner.segments.values().enumerate() {
            if seg.is_empty() {
                break;
            }
            let by_time = expired_by_time(&cfg, seg, now_ms);
            let by_size = cfg.retention_bytes >= 0 && size - seg.size() as i64 >= cfg.retention_bytes;
            if !(by_time || by_size) {
                break;
            }
            // The active segment only goes when its data has expired by time.
            if i + 1 == n && !by_time {
                break;
            }
            // Nothing uncommitted goes: a replica may still need it.
            if seg.next_offset > inner.hw {
                break;
            }
            // With tiered storage, nothing goes that is not yet in the bucket.
            if cfg.remote_storage && inner.remote.end().is_none_or(|e| seg.next_offset > e) {
                break;
            }
            // Raft entries go through Raft's purge (`drop_raft_segments_upto`), never here.
            if inner.raft.contains_key(&seg.base_offset) {
                break;
            }
            expired_active = i + 1 == n;
            size -= seg.size() as i64;
            new_start = seg.next_offset;
        }
        if new_start == inner.log_start {
            return Ok(0);
        }
        if expired_active {
            self.roll(&mut inner, 0)?;
        }
        inner.log_start = new_start;
        write_atomic(&self.dir.join("log-start-offset"), new_start.to_string().as_bytes())?;
        let floor = epoch_floor(&inner.raft, new_start);
        inner.epochs.truncate_before(floor)?;
        let dropped = self.drop_segments_below_start(&mut inner)?;
        if dropped > 0 {
            tracing::info!(log = %self.dir.display(), dropped, log_start = new_start, "retention deleted segments");
        }
        Ok(dropped)
    }

    /// Retention of a replicated log: the last Raft index of the segments retention.ms or
    /// retention.bytes lets go, all committed, for Raft to purge up to (a replicated log loses
    /// data only through its purge, `drop_raft_segments_upto`, behind a snapshot at that index).
    /// The rules are `apply_retention`'s. None when nothing is due.
    pub fn raft_retention_point(&self, now_ms: i64) -> Option<u64> {
        let inner = self.read_inner();
        let cfg = &inner.config;
        if inner.raft.is_empty() {
            return None;
        }
        let mut size = inner.size() as i64;
        let n = inner.segments.len();
        let mut point = None;
        for (i, seg) in inner.segments.values().enumerate() {
            if seg.is_empty() || seg.next_offset > inner.hw {
                break;
            }
            // Closed segments wholly below the log start (DeleteRecords moved it) go whatever
            // the policy; the rest only by retention, on a topic whose policy deletes.
            let below_start = i + 1 < n && seg.next_offset <= inner.log_start;
            if !below_start && !cfg.delete {
                break;
            }
            // With tiered storage, local retention waits for the copy in the bucket.
            if !below_start && cfg.remote_storage && inner.remote.end().is_none_or(|e| seg.next_offset > e) {
                break;
            }
            let by_time = below_start || expired_by_time(cfg, seg, now_ms);
            let by_size = cfg.retention_bytes >= 0 && size - seg.size() as i64 >= cfg.retention_bytes;
            // The active segment only goes when its data has expired by time.
            let allowed = if i + 1 == n { by_time } else { by_time || by_size };
            if !allowed {
                break;
            }
            size -= seg.size() as i64;
            // A segment without entries (batches a snapshot brought) goes with the next one
            // that has some.
            if let Some(last) = inner.raft.get(&seg.base_offset).and_then(|idx| idx.last_index()) {
                point = Some(last);
            }
        }
        point
    }

    /// Closed segments ending after `offset`, and their bytes: what remote storage has yet to
    /// copy when its copies end at `offset`.
    pub fn segments_after(&self, offset: i64) -> (usize, u64) {
        let inner = self.read_inner();
        let n = inner.segments.len();
        inner
            .segments
            .values()
            .take(n.saturating_sub(1))
            .filter(|s| s.next_offset > offset)
            .fold((0, 0), |(c, b), s| (c + 1, b + s.size()))
    }

    /// What this partition holds in remote storage.
    pub fn remote_manifest(&self) -> Arc<RemoteManifest> {
        self.read_inner().remote.clone()
    }

    /// Applies a change of the remote manifest (a committed control entry, or the only
    /// replica's own copy) and persists it. False when it changed nothing.
    pub fn apply_remote_change(&self, change: &RemoteChange) -> Result<bool> {
        let mut inner = self.write_inner();
        let mut m = (*inner.remote).clone();
        if !m.apply(change) {
            return Ok(false);
        }
        write_atomic(&self.dir.join(crate::remote::MANIFEST_FILE), &m.to_json())?;
        inner.remote = Arc::new(m);
        Ok(true)
    }

    /// Replaces the remote manifest (a Raft snapshot carries the leader's).
    pub fn set_remote_manifest(&self, m: RemoteManifest) -> Result<()> {
        let mut inner = self.write_inner();
        if *inner.remote == m {
            return Ok(());
        }
        write_atomic(&self.dir.join(crate::remote::MANIFEST_FILE), &m.to_json())?;
        inner.remote = Arc::new(m);
        Ok(())
    }

    /// The first closed segment ending after `from` that is committed and stable (below the
    /// high watermark and the last stable offset, so its transactions have all ended), ready to
    /// copy to remote storage. None while there is none yet.
    pub fn export_segment(&self, from: i64) -> Result<Option<SegmentExport>> {
        let inner = self.read_inner();
        let stable = inner.hw.min(inner.last_stable_offset());
        let n = inner.segments.len();
        let Some((i, seg)) = inner.segments.values().enumerate().find(|(_, s)| s.next_offset > from) else {
            return Ok(None);
        };
        if i + 1 == n || seg.is_empty() || seg.next_offset > stable || seg.next_offset <= inner.log_start {
            return Ok(None);
        }
        let (base, next) = (seg.base_offset, seg.next_offset);
        let txn_index = std::fs::read(self.dir.join(file_name(base, "txnindex"))).unwrap_or_default();
        let aborted: Vec<AbortedTxn> =
            inner.aborted.iter().filter(|a| a.last_offset >= base && a.last_offset < next).copied().collect();
        let epochs = inner.epochs.entries().iter().filter(|(_, o)| *o < next).copied().collect();
        let export = SegmentExport {
            base_offset: base,
            next_offset: next,
            size: seg.size(),
            max_timestamp: seg.max_timestamp,
            file: seg.file(),
            offset_index: seg.offset_index_bytes(),
            time_index: seg.time_index_bytes(),
            txn_index,
            aborted,
            producer_snapshot: Vec::new(),
            epochs,
        };
        drop(inner);
        let producer_snapshot = self.producer_state_at(next)?;
        Ok(Some(SegmentExport { producer_snapshot, ..export }))
    }

    /// Asks the replica's next Raft snapshot to stand at entry `index` (retention's point)
    /// rather than at the last applied entry; the snapshot builder takes the request.
    pub fn request_snapshot_at(&self, index: u64) {
        *self.snapshot_request.lock().unwrap_or_else(|e| e.into_inner()) = Some(index);
    }

    /// Records that this replica's current Raft snapshot stands at entry `index` and ships no
    /// batches (retention's kind): a purge up to it loses nothing a replica needs.
    pub fn note_batchless_snapshot(&self, index: u64) {
        let mut at = self.batchless_snapshot.lock().unwrap_or_else(|e| e.into_inner());
        *at = (*at).max(Some(index));
    }

    /// The entry the current batchless snapshot stands at (`note_batchless_snapshot`).
    pub fn batchless_snapshot(&self) -> Option<u64> {
        *self.batchless_snapshot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pending request of `request_snapshot_at`, cleared.
    pub fn take_snapshot_request(&self) -> Option<u64> {
        self.snapshot_request.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Removes everything at and after `offset` (replica divergence). The
    /// cut is durable when this returns: the truncated segment's data and
    /// indexes are synced, then the directory (later segments unlinked, a
    /// new active segment created).
    pub fn truncate_to(&self, offset: i64) -> Result<()> {
        let mut inner = self.write_inner();
        if offset >= inner.log_end() {
            return Ok(());
        }
        let offset = offset.max(inner.log_start);
        let doomed: Vec<i64> = inner.segments.range(offset + 1..).map(|(b, _)| *b).collect();
        for b in doomed {
            if inner.segments.len() == 1 {
                break;
            }
            if let Some(seg) = inner.segments.remove(&b) {
                seg.delete()?;
                remove_if_present(&self.dir.join(file_name(b, "txnindex")))?;
                drop_sidecar(&mut inner, b)?;
            }
        }
        let active = inner.active_mut();
        if active.base_offset <= offset {
            active.truncate_to(offset)?;
        }
        inner.active().sync()?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        // At the log's new end, not at `offset`: the batch holding `offset`
        // went whole, and an epoch it started went with it.
        let end = inner.log_end();
        for idx in inner.raft.values_mut() {
            idx.truncate_after_offset(end)?;
        }
        // A sidecar left without entries describes nothing: the next entry starts a new one.
        let emptied: Vec<i64> = inner.raft.iter().filter(|(_, i)| i.len() == 0).map(|(b, _)| *b).collect();
        for b in emptied {
            drop_sidecar(&mut inner, b)?;
        }
        inner.hw = if inner.hw_follows_end { end } else { inner.hw.min(end) };
        inner.epochs.truncate_from(end)?;
        inner.recover_state(&self.dir)?;
        if inner.active().closed && inner.active().is_empty() {
            // The new end is a closed segment's base: it goes (unlinked, so
            // a reader's slice of it stays valid) and a new active segment
            // takes its place.
            if let Some(seg) = inner.segments.remove(&end) {
                seg.delete()?;
                remove_if_present(&self.dir.join(file_name(end, "txnindex")))?;
                drop_sidecar(&mut inner, end)?;
            }
        }
        if inner.segments.values().next_back().is_none_or(|s| s.closed) {
            // The remaining tail segment was sealed; open a fresh one after it.
            let seg = Segment::create(&self.dir, end, inner.config.segment_bytes, inner.config.segment_index_bytes)?;
            inner.segments.insert(end, seg);
        }
        sync_dir(&self.dir)?;
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.flushed.cut(end, false);
        Ok(())
    }

    /// Makes everything up to `upto` durable. Waiters of every log opened
    /// with the same group committer (`durability`) share its rounds: one
    /// round covers all that was written when it started.
    pub async fn sync(&self, upto: i64) -> Result<()> {
        if self.flushed.get() >= upto {
            return Ok(());
        }
        let (file, end, generation, base, synced_bytes) = {
            let inner = self.read_inner();
            let a = inner.active();
            (a.file(), inner.log_end(), self.flushed.generation(), a.base_offset, a.size())
        };
        // The rows of entries up to `end` were written before `end` was read: syncing them
        // after means no entry is reported durable whose row could still be lost.
        self.sync_sidecars()?;
        self.group_commit
            .sync(crate::durability::Target {
                file,
                dev: self.dev,
                end,
                flushed: self.flushed.clone(),
                generation,
                rounds: self.fsyncs.clone(),
            })
            .await?;
        self.drop_synced_pages(base, synced_bytes);
        Ok(())
    }

    /// Drops the synced pages of the active segment `base` that lie more than
    /// `page_cache_bytes` before `synced_bytes` from the page cache (and from this process's
    /// mapping, which would otherwise pin them). A log is written once and read mostly at its
    /// end: what tailing readers need stays cached, and freed pages are reused by the next
    /// writes instead of new ones being allocated (on VMs whose memory is backed lazily, a page
    /// touched for the first time costs several times the copy into it: bench/README.md).
    /// Readers further behind fault the pages back in from disk.
    fn drop_synced_pages(&self, base: i64, synced_bytes: u64) {
        // One caller drops at a time; a sync finding another at it leaves the range to it or
        // to the next sync.
        let Ok(mut dropped) = self.pages_dropped.try_lock() else { return };
        let inner = self.read_inner();
        let Ok(window) = u64::try_from(inner.config.page_cache_bytes) else { return };
        let mut upto = synced_bytes.saturating_sub(window) & !(PAGE_BYTES - 1);
        let held = self.held_from.load(Ordering::Acquire);
        if held != i64::MAX {
            let at = match inner.segments.get(&base) {
                Some(seg) if held >= base => seg.find_batch(held).map_or(synced_bytes, |b| b.position),
                // Held from an earlier segment: all of this one is still to be sent.
                _ => 0,
            };
            let limit = synced_bytes.saturating_sub(HOLD_WINDOWS.saturating_mul(window));
            upto = upto.min(at.max(limit) & !(PAGE_BYTES - 1));
        }
        let from = match *dropped {
            (b, at) if b == base => at,
            _ => 0,
        };
        if upto < from {
            // The segment was cut below what was dropped (a truncation): start again there.
            *dropped = (base, upto);
            return;
        }
        if upto - from < DROP_STEP_BYTES {
            return;
        }
        if let Some(seg) = inner.segments.get(&base) {
            seg.drop_cached(from, upto);
        }
        *dropped = (base, upto);
    }

    /// Keeps the pages from `offset` on in the page cache for a while longer (None: no longer):
    /// a leader's slowest follower has yet to be sent them. Each is sent from the log's own
    /// pages; dropped, the send would wait for the disk, and a follower that fell behind the
    /// window once would stay behind (the leader's sends slowed by disk reads while the others
    /// go on). Held at most `HOLD_WINDOWS` windows behind the end; advice only.
    pub fn hold_cached_from(&self, offset: Option<i64>) {
        self.held_from.store(offset.unwrap_or(i64::MAX), Ordering::Release);
    }

    /// Syncs every sidecar's rows written so far. Serialised (`sidecar_sync`): a row is marked
    /// clean before its fsync so a row written meanwhile marks it dirty again, and a caller
    /// finding it clean must wait for that fsync to end. A failed fsync leaves it dirty.
    /// Reads the log end (and `flushed`'s generation), then syncs the sidecar rows, which then
    /// cover every entry up to that end; returned for the caller to raise `flushed` to once
    /// the data is synced too.
    fn sync_sidecars_upto_end(&self) -> Result<(i64, u64)> {
        let at = {
            let inner = self.read_inner();
            (inner.log_end(), self.flushed.generation())
        };
        self.sync_sidecars()?;
        Ok(at)
    }

    fn sync_sidecars(&self) -> Result<()> {
        let _serial = self.sidecar_sync.lock().unwrap_or_else(|p| p.into_inner());
        let dirty: Vec<crate::raftindex::DirtyRows> =
            self.read_inner().raft.values().filter_map(|i| i.take_dirty()).collect();
        for rows in dirty {
            rows.sync()?;
        }
        Ok(())
    }

    /// Offset below which everything is known to be on disk.
    pub fn flushed_offset(&self) -> i64 {
        self.flushed.get()
    }

    /// How many fsyncs this log has done: group-commit rounds, and those
    /// making a truncation durable.
    pub fn fsync_count(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Blocking variant of `sync` for shutdown paths.
    pub fn sync_now(&self) -> Result<()> {
        let (end, generation) = self.sync_sidecars_upto_end()?;
        let inner = self.read_inner();
        crate::disk::sync_data(&inner.active().file())?;
        inner.active().flush_indexes()?;
        // Not past `end`: rows written after the sidecars were synced may not be durable.
        self.flushed.raise(end, generation);
        Ok(())
    }

    /// Marks the log gone and removes its directory; open slices stay valid.
    pub fn delete(&self) -> Result<()> {
        self.deleted.store(true, Ordering::SeqCst);
        // Segments stay in memory so a concurrent reader still finds a log.
        let inner = self.read_inner();
        for seg in inner.segments.values() {
            seg.delete()?;
        }
        drop(inner);
        std::fs::remove_dir_all(&self.dir)?;
        self.hw_moved.notify_waiters();
        Ok(())
    }

    /// Unmaps the resident pages of every segment (`Segment::release_pages`).
    pub fn release_pages(&self) -> Result<()> {
        let inner = self.read_inner();
        for seg in inner.segments.values() {
            seg.release_pages()?;
        }
        Ok(())
    }

    /// Whether the log was opened as a Raft log (`OpenOptions::raft`).
    pub fn is_raft_only(&self) -> bool {
        self.read_inner().raft_only
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::RefCell;

    use super::*;

    thread_local! {
        /// Every directory `sync_dir` synced on this thread, in order: the
        /// seam that shows which directory entries were made durable (a
        /// power cut is not something a unit test can stage).
        pub(crate) static DIRS_SYNCED: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
        /// Every sidecar whose rows were synced whole (at a roll, at open), on this thread.
        pub(crate) static SIDECARS_SYNCED: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
    }

    fn take_synced() -> Vec<PathBuf> {
        DIRS_SYNCED.with(|d| std::mem::take(&mut *d.borrow_mut()))
    }

    /// The CreateTime window is judged against the `now` the append is
    /// given (the broker's clock at append), both bounds inclusive as in
    /// Kafka (`|now - ts| > max` is refused): a fixed `now` makes the
    /// boundary deterministic, with no wall-clock read in the test.
    #[test]
    fn the_timestamp_window_is_inclusive_and_judged_against_the_append_clock() {
        let tmp = tempfile::tempdir().unwrap();
        let config = LogConfig { timestamp_before_max_ms: 1000, timestamp_after_max_ms: 50, ..LogConfig::default() };
        let log = PartitionLog::open(&tmp.path().join("t-0"), config).unwrap();
        let now = 1_700_000_000_000;
        let append = |ts: i64| log.append(&batch::build_batch(0, ts, &[(Some(b"k"), Some(b"v"))]), 0, now);
        for ts in [now - 1000, now, now + 50] {
            assert!(append(ts).is_ok(), "{ts} is inside the window");
        }
        for ts in [now - 1001, now + 51] {
            match append(ts) {
                Err(LogError::RecordErrors { kind, .. }) => {
                    assert_eq!(kind, crate::error::RecordErrorKind::InvalidTimestamp)
                }
                other => panic!("{ts} outside the window gave {other:?}"),
            }
        }
        assert_eq!(log.log_end_offset(), 3);
    }

    /// Which pages of `path` are in the page cache (`mincore` through a mapping of our own).
    pub(crate) fn cached_pages(path: &Path) -> Vec<bool> {
        let file = std::fs::File::open(path).unwrap();
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let mut vec = vec![0u8; map.len().div_ceil(PAGE_BYTES as usize)];
        // SAFETY: the mapping is live and `vec` has a byte per page of it.
        let rc = unsafe { libc::mincore(map.as_ptr() as *mut libc::c_void, map.len(), vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.into_iter().map(|b| b & 1 == 1).collect()
    }

    /// A sync drops the synced pages more than `page_cache_bytes` behind the end from the page
    /// cache, even those a read had mapped, and keeps the end; reads of the dropped range come
    /// back from disk unchanged. Without the setting every page stays.
    #[tokio::test]
    async fn a_sync_drops_synced_pages_behind_the_page_cache_window() {
        let tmp = tempfile::tempdir().unwrap();
        let value = vec![7u8; 64 * 1024];
        let fill = |log: &PartitionLog| {
            for i in 0..160 {
                log.append(&batch::build_batch(0, i, &[(Some(b"k"), Some(&value[..]))]), 0, i).unwrap();
            }
        };
        let window = 1 << 20;
        let config = LogConfig { page_cache_bytes: window, ..LogConfig::default() };
        let log = PartitionLog::open(&tmp.path().join("t-0"), config).unwrap();
        fill(&log);
        // A read maps the first batches' pages into this process, which would pin them.
        let first = log.read(0, 1 << 20, i64::MAX).unwrap().records;
        assert!(!first.is_empty());
        log.sync(log.log_end_offset()).await.unwrap();
        let size = log.size_bytes();
        let pages = cached_pages(&tmp.path().join("t-0").join(file_name(0, "log")));
        let used = (size as usize).div_ceil(PAGE_BYTES as usize);
        let kept_from = (size - window as u64) as usize / PAGE_BYTES as usize;
        assert!(pages[..kept_from - 1].iter().all(|c| !c), "pages behind the window are still cached");
        assert!(pages[kept_from + 1..used].iter().all(|c| *c), "the window's pages were dropped");
        // The dropped range reads back from disk as it was written.
        let again = log.read(0, 1 << 20, i64::MAX).unwrap().records;
        assert_eq!(first, again);
        let mut offset = 0;
        while offset < log.log_end_offset() {
            let r = log.read(offset, 1 << 20, i64::MAX).unwrap().records;
            let h = BatchHeader::parse(&r).unwrap();
            assert_eq!(h.base_offset, offset);
            offset = h.last_offset() + 1;
        }

        let keep = PartitionLog::open(&tmp.path().join("t-1"), LogConfig::default()).unwrap();
        fill(&keep);
        keep.sync(keep.log_end_offset()).await.unwrap();
        let pages = cached_pages(&tmp.path().join("t-1").join(file_name(0, "log")));
        assert!(pages[..used].iter().all(|c| *c), "without the setting a page was dropped");
    }

    /// Pages a leader's slowest follower has yet to be sent stay cached past the window, as far
    /// as `HOLD_WINDOWS` windows behind the end; what lies before them is dropped as before.
    #[tokio::test]
    async fn pages_a_follower_still_needs_stay_cached_within_a_few_windows() {
        let tmp = tempfile::tempdir().unwrap();
        let value = vec![7u8; 64 * 1024];
        let window = 1 << 20;
        let config = LogConfig { page_cache_bytes: window, ..LogConfig::default() };
        let pages_of = |name: &str, hold: i64| {
            let dir = tmp.path().join(name);
            let log = PartitionLog::open(&dir, config.clone()).unwrap();
            for i in 0..160 {
                log.append(&batch::build_batch(0, i, &[(Some(b"k"), Some(&value[..]))]), 0, i).unwrap();
            }
            log.hold_cached_from(Some(hold));
            let end = log.log_end_offset();
            futures::executor::block_on(log.sync(end)).unwrap();
            let size = log.size_bytes() as usize;
            // Every batch is the same size: batch `i` starts at `i` of them.
            let batch_pages = move |i: usize| i * (size / 160) / PAGE_BYTES as usize;
            (cached_pages(&dir.join(file_name(0, "log"))), batch_pages, size.div_ceil(PAGE_BYTES as usize))
        };
        // Held from batch 115, about 2.8 windows behind the end: kept from there on.
        let (pages, at, used) = pages_of("t-0", 115);
        assert!(pages[..at(115) - 1].iter().all(|c| !c), "pages before the held offset are still cached");
        assert!(pages[at(115) + 1..used].iter().all(|c| *c), "a page the follower needs was dropped");
        // Held from batch 10, far behind: only the last HOLD_WINDOWS windows are kept.
        let (pages, _, used) = pages_of("t-1", 10);
        let kept_from = used - (HOLD_WINDOWS * window as u64 / PAGE_BYTES) as usize;
        assert!(pages[..kept_from - 1].iter().all(|c| !c), "pages further behind than the limit are cached");
        assert!(pages[kept_from + 1..used].iter().all(|c| *c), "a page within the limit was dropped");
    }

    #[test]
    fn a_new_partition_syncs_its_directory_and_the_new_entries_above_it() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let dir = data.join("orders-0");
        take_synced();
        let log = PartitionLog::open(&dir, LogConfig::default()).unwrap();
        // The partition directory in the (new) data dir, the data dir in
        // its parent, the first segment's names in the partition directory,
        // all before the log is handed out to take appends.
        assert_eq!(take_synced(), vec![data.clone(), tmp.path().to_path_buf(), dir.clone()]);
        log.append(&batch::build_batch(0, 1, &[(Some(b"k"), Some(b"v"))]), 0, 1).unwrap();
        drop(log);
        take_synced(); // the epoch checkpoint's write
                       // Reopening creates nothing, so syncs nothing.
        let log = PartitionLog::open(&dir, LogConfig::default()).unwrap();
        assert_eq!(log.log_end_offset(), 1);
        assert_eq!(take_synced(), Vec::<PathBuf>::new());
        drop(log);
        // A partition directory that exists but holds no segment gets one,
        // and its entry synced; its parent's entries did not change.
        let empty = data.join("orders-1");
        std::fs::create_dir(&empty).unwrap();
        PartitionLog::open(&empty, LogConfig::default()).unwrap();
        assert_eq!(take_synced(), vec![empty]);
    }

    #[test]
    fn a_new_data_dir_is_synced_into_its_parent() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        take_synced();
        let _lock = crate::DataDirLock::acquire(&data).unwrap();
        assert_eq!(take_synced(), vec![tmp.path().to_path_buf()]);
        drop(_lock);
        let _lock = crate::DataDirLock::acquire(&data).unwrap();
        assert_eq!(take_synced(), Vec::<PathBuf>::new(), "an existing data dir needs nothing");
    }

    #[test]
    fn a_roll_syncs_the_partition_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = LogConfig { segment_bytes: 200, ..LogConfig::default() };
        let log = PartitionLog::open(tmp.path(), cfg).unwrap();
        take_synced();
        for i in 0..3 {
            log.append(&batch::build_batch(0, i, &[(Some(b"k"), Some(&[7u8; 150]))]), 0, i).unwrap();
        }
        assert!(log.segment_count() > 1);
        let synced = take_synced();
        assert!(synced.iter().any(|d| d == tmp.path()), "{synced:?}");
    }

    #[test]
    fn a_roll_syncs_the_closing_segments_sidecar_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = LogConfig { segment_bytes: 300, ..LogConfig::default() };
        let log = PartitionLog::open_opts(tmp.path(), cfg, OpenOptions { replicated: true, ..OpenOptions::default() })
            .unwrap();
        SIDECARS_SYNCED.with(|d| d.borrow_mut().clear());
        for i in 0..3u64 {
            let mut b = batch::build_batch(0, 1, &[(None, Some(&[1u8; 150]))]);
            batch::patch(&mut b, log.log_end_offset(), 1, None);
            log.append_raft_entry(&b, i, 0).unwrap();
        }
        assert!(log.segment_count() > 1);
        let synced = SIDECARS_SYNCED.with(|d| d.borrow().clone());
        assert!(synced.contains(&crate::raftindex::path_for(tmp.path(), 0)), "{synced:?}");
    }

    #[test]
    fn opening_a_replicated_log_syncs_what_it_finds() {
        let tmp = tempfile::tempdir().unwrap();
        let open = || {
            let cfg = LogConfig { segment_bytes: 300, ..LogConfig::default() };
            PartitionLog::open_opts(tmp.path(), cfg, OpenOptions { replicated: true, ..OpenOptions::default() })
                .unwrap()
        };
        let log = open();
        for i in 0..3u64 {
            let mut b = batch::build_batch(0, 1, &[(None, Some(&[1u8; 150]))]);
            batch::patch(&mut b, log.log_end_offset(), 1, None);
            log.append_raft_entry(&b, i, 0).unwrap();
        }
        let (end, active) = (log.log_end_offset(), log.read_inner().active().base_offset);
        // A process crash: nothing synced since the roll, the page cache keeps it all.
        drop(log);
        SIDECARS_SYNCED.with(|d| d.borrow_mut().clear());
        take_synced();
        let log = open();
        assert_eq!(log.flushed_offset(), end, "reported flushed ...");
        assert!(log.fsync_count() >= 1, "... only once synced");
        let sidecars = SIDECARS_SYNCED.with(|d| d.borrow().clone());
        assert!(sidecars.contains(&crate::raftindex::path_for(tmp.path(), active)), "{sidecars:?}");
        assert!(take_synced().iter().any(|d| d == tmp.path()));
    }

    #[tokio::test]
    async fn sync_now_syncs_sidecar_rows_and_a_round_from_before_a_cut_does_not_raise_flushed() {
        let tmp = tempfile::tempdir().unwrap();
        let log = PartitionLog::open_opts(
            tmp.path(),
            LogConfig::default(),
            OpenOptions { replicated: true, ..OpenOptions::default() },
        )
        .unwrap();
        for i in 0..4u64 {
            let mut b = batch::build_batch(0, 1, &[(None, Some(&[1u8; 50]))]);
            batch::patch(&mut b, log.log_end_offset(), 1, None);
            log.append_raft_entry(&b, i, 0).unwrap();
        }
        SIDECARS_SYNCED.with(|d| d.borrow_mut().clear());
        log.sync_now().unwrap();
        let synced = SIDECARS_SYNCED.with(|d| d.borrow().clone());
        assert_eq!(synced, vec![crate::raftindex::path_for(tmp.path(), 0)], "the rows, with the data");
        assert_eq!(log.flushed_offset(), log.log_end_offset());
        // A round that read the end before a truncation finishes after it.
        let mut b = batch::build_batch(0, 1, &[(None, Some(&[1u8; 50]))]);
        batch::patch(&mut b, log.log_end_offset(), 1, None);
        log.append_raft_entry(&b, 4, 0).unwrap();
        let (file, end, generation) =
            (log.read_inner().active().file(), log.log_end_offset(), log.flushed.generation());
        log.truncate_raft_after(Some(1)).unwrap();
        let cut_end = log.log_end_offset();
        assert!(cut_end < end);
        log.group_commit
            .sync(crate::durability::Target {
                file,
                dev: log.dev,
                end,
                flushed: log.flushed.clone(),
                generation,
                rounds: log.fsyncs.clone(),
            })
            .await
            .unwrap();
        assert_eq!(log.flushed_offset(), cut_end, "never past the log end");
        // A clean shutdown's sync covers the rows too.
        let mut b = batch::build_batch(0, 1, &[(None, Some(&[1u8; 50]))]);
        batch::patch(&mut b, log.log_end_offset(), 1, None);
        log.append_raft_entry(&b, 2, 0).unwrap();
        SIDECARS_SYNCED.with(|d| d.borrow_mut().clear());
        log.shutdown_state(true).unwrap();
        let synced = SIDECARS_SYNCED.with(|d| d.borrow().clone());
        assert_eq!(synced, vec![crate::raftindex::path_for(tmp.path(), 0)]);
        assert_eq!(log.flushed_offset(), log.log_end_offset());
    }
}
