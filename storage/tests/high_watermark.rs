//! The high watermark apart from the log end: on a replicated log it moves
//! only when told, and consumers' reads, the last stable offset,
//! DeleteRecords, retention and long-poll wake-ups go by it.

use std::pin::pin;

use fjord_storage::batch::{build_batch, build_batch_as, BatchHeader, KeyValue, Producer};
use fjord_storage::{LogConfig, LogError, OpenOptions, PartitionLog};
use futures::FutureExt;

mod common;
use common::read_all;

fn batch(n: usize, ts: i64) -> Vec<u8> {
    let v = [7u8; 50];
    let recs: Vec<KeyValue<'_>> = (0..n).map(|_| (Some(&b"k"[..]), Some(&v[..]))).collect();
    build_batch(0, ts, &recs)
}

fn replicated(dir: &std::path::Path, config: LogConfig) -> PartitionLog {
    PartitionLog::open_opts(dir, config, OpenOptions { replicated: true, ..OpenOptions::default() }).unwrap()
}

/// Last offsets of the batches a consumer reads from `from`.
fn consumed(log: &PartitionLog, from: i64) -> Vec<i64> {
    read_all(log, from).iter().map(|h| h.last_offset()).collect()
}

#[test]
fn reads_stop_at_the_high_watermark_not_the_log_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = replicated(dir.path(), LogConfig::default());
    for _ in 0..3 {
        log.append(&batch(2, 1_000), 1, 1_000).unwrap();
    }
    assert_eq!((log.log_end_offset(), log.high_watermark()), (6, 0));
    let r = log.read(0, 1 << 20, i64::MAX).unwrap();
    assert!(r.records.is_empty(), "nothing is committed yet");
    assert_eq!(r.high_watermark, 0);
    assert_eq!(log.set_high_watermark(4), 4);
    assert_eq!(consumed(&log, 0), vec![1, 3]);
    assert_eq!(log.read(2, 1 << 20, i64::MAX).unwrap().high_watermark, 4);
    // Past the high watermark but within the log: empty, not out of range.
    assert!(log.read(5, 1 << 20, i64::MAX).unwrap().records.is_empty());
    assert!(matches!(log.read(7, 1 << 20, i64::MAX), Err(LogError::OffsetOutOfRange { .. })));
    // Monotonic, and never past the log end.
    assert_eq!(log.set_high_watermark(2), 4);
    assert_eq!(log.set_high_watermark(100), 6);
    assert_eq!(consumed(&log, 0), vec![1, 3, 5]);
}

#[test]
fn the_last_stable_offset_is_never_past_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let log = replicated(dir.path(), LogConfig::default());
    log.append(&batch(2, 1_000), 0, 1_000).unwrap(); // 0..=1
    let v = [1u8; 10];
    let txn = build_batch_as(
        0,
        1_000,
        &[(Some(&b"k"[..]), Some(&v[..]))],
        Some(Producer { id: 5, epoch: 0, base_sequence: 0, transactional: true }),
    );
    log.append(&txn, 0, 1_000).unwrap(); // 2, open transaction
    log.append(&batch(1, 1_000), 0, 1_000).unwrap(); // 3
                                                     // No open transaction below the high watermark: LSO = HW.
    assert_eq!((log.high_watermark(), log.last_stable_offset()), (0, 0));
    assert!(log.read_committed(0, 1 << 20).unwrap().records.is_empty());
    log.set_high_watermark(2);
    let r = log.read_committed(0, 1 << 20).unwrap();
    assert_eq!((r.last_stable_offset, BatchHeader::parse(&r.records).unwrap().last_offset()), (2, 1));
    // Past the open transaction's start, that start bounds it.
    log.set_high_watermark(4);
    assert_eq!(log.last_stable_offset(), 2);
    log.append_marker(5, 0, 0, true, 0, 1_100).unwrap(); // 4
    assert_eq!(log.last_stable_offset(), 4, "the transaction ended, but its marker is not committed");
    log.set_high_watermark(5);
    assert_eq!(log.last_stable_offset(), 5);
}

#[test]
fn a_long_poll_wakes_when_the_high_watermark_moves_not_on_append() {
    let dir = tempfile::tempdir().unwrap();
    let log = replicated(dir.path(), LogConfig::default());
    let mut wait = pin!(log.high_watermark_moved().notified());
    wait.as_mut().enable();
    log.append(&batch(1, 1_000), 0, 1_000).unwrap();
    assert!(wait.as_mut().now_or_never().is_none(), "an uncommitted append wakes no consumer");
    log.set_high_watermark(0);
    assert!(wait.as_mut().now_or_never().is_none(), "a high watermark that did not move wakes no one");
    log.set_high_watermark(1);
    assert!(wait.as_mut().now_or_never().is_some(), "the commit wakes it");

    // A single replica commits on append, so the append itself wakes it.
    let single = PartitionLog::open(&dir.path().join("single"), LogConfig::default()).unwrap();
    let mut wait = pin!(single.high_watermark_moved().notified());
    wait.as_mut().enable();
    single.append(&batch(1, 1_000), 0, 1_000).unwrap();
    assert_eq!(single.high_watermark(), 1);
    assert!(wait.as_mut().now_or_never().is_some());
    // And a follower's append on a single-replica log commits as well.
    let f = single.read(0, 1 << 20, i64::MAX).unwrap().records;
    let other = PartitionLog::open(&dir.path().join("other"), LogConfig::default()).unwrap();
    let mut wait = pin!(other.high_watermark_moved().notified());
    wait.as_mut().enable();
    other.append_entry(&f, 1_000).unwrap();
    assert_eq!(other.high_watermark(), 1);
    assert!(wait.as_mut().now_or_never().is_some());
}

#[test]
fn truncation_below_the_high_watermark_clamps_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = replicated(dir.path(), LogConfig::default());
    for _ in 0..4 {
        log.append(&batch(2, 1_000), 0, 1_000).unwrap();
    }
    log.set_high_watermark(6);
    log.truncate_to(7).unwrap(); // cuts the batch 6..=7
    assert_eq!((log.log_end_offset(), log.high_watermark()), (6, 6), "above: unchanged");
    log.truncate_to(2).unwrap();
    assert_eq!((log.log_end_offset(), log.high_watermark()), (2, 2));
    log.append(&batch(2, 1_000), 0, 1_000).unwrap();
    assert_eq!(log.high_watermark(), 2, "an append after it does not commit");
    assert_eq!(log.set_high_watermark(4), 4);

    let single = PartitionLog::open(&dir.path().join("single"), LogConfig::default()).unwrap();
    for _ in 0..3 {
        single.append(&batch(2, 1_000), 0, 1_000).unwrap();
    }
    single.truncate_to(2).unwrap();
    assert_eq!(single.high_watermark(), 2, "a single replica's follows its end down");
}

#[test]
fn delete_records_and_retention_stay_below_the_high_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_bytes: 300, retention_ms: 10, ..LogConfig::default() };
    let log = replicated(dir.path(), cfg.clone());
    for _ in 0..6 {
        log.append(&batch(1, 1_000), 0, 1_000).unwrap();
    }
    assert!(log.segment_count() > 2);
    log.set_high_watermark(2);
    assert!(matches!(log.delete_records(3), Err(LogError::OffsetOutOfRange { .. })));
    assert_eq!(log.delete_records(-1).unwrap(), 2, "-1 means the high watermark");
    // Every segment is past retention, but only committed ones go.
    log.apply_retention(1_000_000).unwrap();
    assert_eq!(log.log_start_offset(), 2, "segments holding uncommitted records stay");
    log.set_high_watermark(6);
    log.apply_retention(1_000_000).unwrap();
    assert_eq!(log.log_start_offset(), 6);

    // After a restart, a replicated log knows nothing committed until its
    // replica says; a single replica has committed all it holds.
    drop(log);
    let log = replicated(dir.path(), cfg.clone());
    log.append(&batch(1, 1_000), 0, 1_000).unwrap();
    assert_eq!((log.high_watermark(), log.log_end_offset()), (6, 7));
    drop(log);
    let log = PartitionLog::open(dir.path(), cfg).unwrap();
    assert_eq!(log.high_watermark(), 7);
}
