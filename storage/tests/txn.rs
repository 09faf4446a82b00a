//! Transactions in the partition log: the last stable offset, the aborted
//! transactions index, markers, and producer state that survives restarts
//! through the snapshots taken at segment roll.

use fjord_storage::batch::{build_batch_as, build_marker, BatchHeader, Producer};
use fjord_storage::producer::AbortedTxn;
use fjord_storage::{LogConfig, LogError, PartitionLog};

fn small_config() -> LogConfig {
    LogConfig { segment_bytes: 2048, index_interval_bytes: 256, segment_index_bytes: 4096, ..LogConfig::default() }
}

/// A client batch of `n` records from producer `pid` at `seq`.
fn produced(pid: i64, epoch: i16, seq: i32, n: usize, transactional: bool) -> Vec<u8> {
    let vals: Vec<Vec<u8>> = (0..n).map(|i| vec![b'a' + (i % 26) as u8; 40]).collect();
    let recs: Vec<_> = vals.iter().map(|v| (Some(&b"k"[..]), Some(&v[..]))).collect();
    build_batch_as(0, 1_000, &recs, Some(Producer { id: pid, epoch, base_sequence: seq, transactional }))
}

fn append(log: &PartitionLog, b: Vec<u8>) -> i64 {
    log.append(&b, 0, 1_000).unwrap().base_offset
}

/// Offsets of the batches a reader gets from `from` below `upto`.
fn batch_offsets(log: &PartitionLog, from: i64, upto: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let r = log.read(next, 1 << 20, upto).unwrap();
        if r.records.is_empty() {
            return out;
        }
        let mut pos = 0;
        while pos < r.records.len() {
            let h = BatchHeader::parse(&r.records[pos..]).unwrap();
            out.push(h.base_offset);
            pos += h.total_size();
            next = h.last_offset() + 1;
        }
    }
}

#[test]
fn stable_offset_stops_at_the_oldest_open_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    append(&log, produced(-1, -1, -1, 2, false)); // 0..=1, plain
    let t1 = append(&log, produced(10, 0, 0, 3, true)); // 2..=4
    let t2 = append(&log, produced(11, 0, 0, 1, true)); // 5
    append(&log, produced(-1, -1, -1, 1, false)); // 6
    assert_eq!((t1, t2), (2, 5));
    assert_eq!(log.last_stable_offset(), 2);
    assert_eq!(batch_offsets(&log, 0, log.last_stable_offset()), vec![0]);
    let committed = log.read_committed(0, 1 << 20).unwrap();
    assert_eq!((committed.last_stable_offset, committed.high_watermark), (2, 7));
    assert_eq!(BatchHeader::parse(&committed.records).unwrap().last_offset(), 1, "only the batch below the LSO");
    assert!(log.read_committed(2, 1 << 20).unwrap().records.is_empty());
    assert_eq!(log.high_watermark(), 7);

    let commit = log.append_marker(10, 0, 0, true, 0, 2_000).unwrap();
    assert_eq!(commit, 7);
    assert_eq!(log.last_stable_offset(), 5, "t2 is still open");
    let abort = log.append_marker(11, 0, 0, false, 0, 2_000).unwrap();
    assert_eq!(log.last_stable_offset(), 9);
    assert_eq!(
        log.aborted_transactions(0, 9),
        vec![AbortedTxn { producer_id: 11, first_offset: 5, last_offset: abort, last_stable_offset: 9 }]
    );
    assert!(log.aborted_transactions(abort + 1, 20).is_empty(), "ended before the read");
    assert!(log.aborted_transactions(0, 5).is_empty(), "starts after the read");
    assert_eq!(batch_offsets(&log, 0, log.last_stable_offset()), vec![0, 2, 5, 6, 7, 8]);
}

#[test]
fn clients_cannot_write_markers_and_fenced_epochs_cannot_end_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let marker = build_marker(5, 0, 0, true, 1);
    assert!(matches!(log.append(&marker, 0, 1), Err(LogError::InvalidRecord(_))));
    append(&log, produced(5, 2, 0, 1, true));
    assert!(matches!(log.append_marker(5, 1, 0, false, 0, 1), Err(LogError::InvalidProducerEpoch { .. })));
    assert_eq!(log.last_stable_offset(), 0);
    // A marker from a newer epoch (a coordinator that fenced the producer)
    // ends the transaction.
    log.append_marker(5, 3, 0, false, 0, 1).unwrap();
    assert_eq!(log.last_stable_offset(), log.high_watermark());
    assert!(matches!(log.append(&produced(5, 2, 1, 1, true), 0, 1), Err(LogError::InvalidProducerEpoch { .. })));
}

#[test]
fn open_transactions_and_aborts_survive_restart_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let open_first = {
        let log = PartitionLog::open(dir.path(), small_config()).unwrap();
        append(&log, produced(1, 0, 0, 2, true));
        log.append_marker(1, 0, 0, false, 0, 1).unwrap();
        let mut seq = 0;
        // Enough plain idempotent batches to roll several segments.
        for _ in 0..30 {
            append(&log, produced(2, 0, seq, 3, false));
            seq += 3;
        }
        let open_first = append(&log, produced(3, 0, 0, 1, true));
        assert!(log.segment_count() > 3);
        (open_first, log.aborted_transactions(0, i64::MAX), log.segment_count())
    };
    let (open_first, aborted, segments) = (open_first.0, open_first.1, open_first.2);
    let snapshots = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".snapshot"))
        .count();
    // One per segment from the log start on (a Raft snapshot at a segment boundary takes its
    // producer state from there).
    assert_eq!(snapshots, segments - 1, "a snapshot per roll, kept from the log start on");

    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.last_stable_offset(), open_first);
    assert_eq!(log.open_transactions(), vec![(3, open_first)]);
    assert_eq!(log.aborted_transactions(0, i64::MAX), aborted);
    // Dedup still knows producer 2's last batch: a retry is answered, not written.
    let end = log.log_end_offset();
    let info = log.append(&produced(2, 0, 87, 3, false), 0, 1).unwrap();
    assert!(info.duplicate);
    assert_eq!(log.log_end_offset(), end);

    // Cutting the open transaction's batch away closes it.
    log.truncate_to(open_first).unwrap();
    assert!(log.open_transactions().is_empty());
    assert_eq!(log.last_stable_offset(), open_first);
    // Cutting below the abort marker forgets the abort and reopens its transaction.
    log.truncate_to(2).unwrap();
    assert!(log.aborted_transactions(0, i64::MAX).is_empty());
    assert_eq!(log.open_transactions(), vec![(1, 0)]);
}

#[test]
fn producer_state_comes_from_the_snapshot_not_a_rescan() {
    let dir = tempfile::tempdir().unwrap();
    let retry = produced(7, 0, 0, 2, false);
    {
        let log = PartitionLog::open(dir.path(), small_config()).unwrap();
        append(&log, retry.clone());
        let mut seq = 0;
        for _ in 0..30 {
            append(&log, produced(8, 0, seq, 3, false));
            seq += 3;
        }
        // Producer 7's only batch is in a segment that now goes; only the
        // snapshot still knows it.
        let start = log.read(0, 1, i64::MAX).unwrap();
        assert!(!start.records.is_empty());
        let second_segment = log.log_end_offset() - 10;
        log.delete_records(second_segment).unwrap();
    }
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    let info = log.append(&retry.clone(), 0, 1).unwrap();
    assert!(info.duplicate, "the retried batch is recognised after restart");
    assert_eq!(info.base_offset, 0);
}

#[test]
fn expiry_keeps_producers_with_open_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { producer_id_expiration_ms: 10, ..LogConfig::default() };
    let log = PartitionLog::open(dir.path(), cfg).unwrap();
    append(&log, produced(1, 0, 0, 1, true));
    append(&log, produced(2, 0, 0, 1, false));
    assert_eq!(log.expire_producers(1_000_000), 1);
    assert_eq!(log.open_transactions(), vec![(1, 0)]);
    log.append_marker(1, 0, 0, true, 0, 1).unwrap();
    assert_eq!(log.expire_producers(1_000_000), 1);
}

/// Kafka's coordinator-epoch fencing: once a coordinator of epoch 6 wrote a marker for a
/// producer, a late marker from the deposed coordinator of epoch 5 cannot end the producer's next
/// transaction (same producer epoch), and that transaction stays open until its own coordinator
/// ends it. The epoch survives a restart (it is producer state).
#[test]
fn a_deposed_coordinators_late_marker_is_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    append(&log, produced(20, 0, 0, 1, true)); // 0
    log.append_marker(20, 0, 6, true, 0, 2_000).unwrap(); // 1, from the new coordinator
    append(&log, produced(20, 0, 1, 1, true)); // 2: the next transaction
    let late = log.append_marker(20, 0, 5, true, 0, 2_000);
    assert!(matches!(late, Err(LogError::CoordinatorFenced { coordinator_epoch: 5, current: 6, .. })), "{late:?}");
    assert_eq!(log.last_stable_offset(), 2, "the next transaction is still open");
    drop(log);
    let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    assert!(matches!(log.append_marker(20, 0, 5, false, 0, 2_000), Err(LogError::CoordinatorFenced { .. })));
    assert_eq!(log.append_marker(20, 0, 6, false, 0, 2_000).unwrap(), 3);
    assert_eq!(log.last_stable_offset(), 4);
}
