//! Integration tests of `PartitionLog`: append/read, rolling, reopening,
//! crash recovery at every byte of the last batch, retention and truncation.

mod common;

use common::{batch, read_all, small_config};
use fjord_storage::batch::{validate, BatchHeader};
use fjord_storage::{LogConfig, LogError, PartitionLog, TimestampType};
use proptest::prelude::*;

#[test]
fn append_assigns_consecutive_offsets_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    let b = batch(3, 1000, 1);
    let info = log.append(&b, 5, 2000).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (0, 2));
    let b2 = batch(2, 1001, 2);
    let info = log.append(&b2, 5, 2000).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (3, 4));
    assert_eq!(log.log_end_offset(), 5);
    // Reading from an offset in the middle of a batch returns that whole batch.
    let r = log.read(1, 1 << 20, i64::MAX).unwrap();
    let h = BatchHeader::parse(&r.records).unwrap();
    assert_eq!(h.base_offset, 0);
    assert_eq!(h.partition_leader_epoch, 5);
    // What was stored is the batch with the offset and epoch the log assigned.
    let mut expected = b.clone();
    fjord_storage::batch::patch(&mut expected, 0, 5, None);
    assert_eq!(&r.records[..h.total_size()], &expected[..]);
    assert!(matches!(log.read(6, 100, i64::MAX), Err(LogError::OffsetOutOfRange { .. })));
    assert!(log.read(5, 100, i64::MAX).unwrap().records.is_empty());
    // max_offset bounds what a reader sees (the high watermark in Fetch).
    let r = log.read(0, 1 << 20, 3).unwrap();
    assert_eq!(r.records.len(), b.len());
}

#[test]
fn corrupt_batch_is_rejected_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    let good = batch(2, 1, 1);
    let mut bad = batch(2, 1, 2);
    let n = bad.len();
    bad[n - 3] ^= 0x40;
    let mut both = good.clone();
    both.extend_from_slice(&bad);
    assert!(matches!(log.append(&both, 0, 0), Err(LogError::Corrupt(_))));
    assert_eq!(log.log_end_offset(), 0);
    log.append(&good, 0, 0).unwrap();
    assert_eq!(log.log_end_offset(), 2);
    let cfg = LogConfig { max_message_bytes: 64, ..small_config() };
    log.set_config(cfg);
    let big = batch(3, 1, 3);
    assert!(matches!(log.append(&big, 0, 0), Err(LogError::RecordTooLarge { .. })));
}

#[test]
fn rolls_segments_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    {
        let log = PartitionLog::open(dir.path(), small_config()).unwrap();
        for i in 0..100 {
            let b = batch(3, 1000 + i, i as u8);
            log.append(&b, 1, 0).unwrap();
            expected.push(b);
        }
        assert!(log.segment_count() > 3, "4 KiB segments must roll");
        log.sync_now().unwrap();
    }
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.log_end_offset(), 300);
    let got = read_all(&log, 0);
    assert_eq!(got.len(), 100);
    for (h, b) in got.iter().zip(&expected) {
        assert_eq!(h.crc, BatchHeader::parse(b).unwrap().crc);
    }
    // Offset lookups land in the right segment through the sparse index.
    for target in [0, 1, 77, 150, 299] {
        let r = log.read(target, 1, i64::MAX).unwrap();
        let h = BatchHeader::parse(&r.records).unwrap();
        assert!(h.base_offset <= target && target <= h.last_offset());
    }
    // Appends continue where the log left off.
    let b = batch(1, 5, 9);
    assert_eq!(log.append(&b, 1, 0).unwrap().base_offset, 300);
}

#[test]
fn missing_or_corrupt_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = PartitionLog::open(dir.path(), small_config()).unwrap();
        for i in 0..40 {
            log.append(&batch(2, i, i as u8), 0, 0).unwrap();
        }
    }
    let mut indexes: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "index"))
        .collect();
    indexes.sort();
    std::fs::remove_file(&indexes[0]).unwrap();
    std::fs::write(&indexes[1], [1u8, 2, 3]).unwrap();
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(read_all(&log, 0).len(), 40);
    assert!(std::fs::metadata(&indexes[0]).unwrap().len() > 0);
}

/// Cuts the last batch at every byte (as a torn write would) and checks the
/// log recovers to exactly the batches before it, with the rest intact.
#[test]
fn recovery_cuts_a_torn_last_batch_at_every_byte() {
    let src = tempfile::tempdir().unwrap();
    let (last_pos, last_len, active_name) = {
        let log =
            PartitionLog::open(src.path(), LogConfig { segment_bytes: 64 * 1024, ..LogConfig::default() }).unwrap();
        for i in 0..5 {
            log.append(&batch(2, i, i as u8), 0, 0).unwrap();
        }
        let before = log.size_bytes();
        let last = batch(4, 99, 7);
        log.append(&last, 0, 0).unwrap();
        (before, last.len() as u64, "00000000000000000000.log")
    };
    let original = std::fs::read(src.path().join(active_name)).unwrap();
    for cut in 0..=last_len {
        for garbage in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            for e in std::fs::read_dir(src.path()).unwrap() {
                let p = e.unwrap().path();
                std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
            }
            let mut data = original.clone();
            let from = (last_pos + cut) as usize;
            if garbage {
                // A torn write may leave junk rather than zeros.
                let stop = (from + 64).min(data.len());
                for (i, b) in data[from..stop].iter_mut().enumerate() {
                    *b = 0xA5 ^ i as u8;
                }
                if cut == last_len {
                    continue;
                }
            } else {
                data.truncate(from);
            }
            std::fs::write(dir.path().join(active_name), &data).unwrap();
            let log =
                PartitionLog::open(dir.path(), LogConfig { segment_bytes: 64 * 1024, ..LogConfig::default() }).unwrap();
            let whole = cut == last_len;
            let want_end = if whole { 14 } else { 10 };
            assert_eq!(log.log_end_offset(), want_end, "cut at {cut}, garbage {garbage}");
            let got = read_all(&log, 0);
            assert_eq!(got.len(), if whole { 6 } else { 5 });
            // The log accepts appends right after the recovered end.
            let info = log.append(&batch(1, 1, 1), 0, 0).unwrap();
            assert_eq!(info.base_offset, want_end);
            drop(log);
            let log =
                PartitionLog::open(dir.path(), LogConfig { segment_bytes: 64 * 1024, ..LogConfig::default() }).unwrap();
            assert_eq!(log.log_end_offset(), want_end + 1);
        }
    }
}

#[test]
fn retention_by_time_and_bytes_and_delete_records() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { retention_ms: 10_000, ..small_config() };
    let log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    for i in 0..200 {
        // Old records first, then recent ones.
        let ts = if i < 100 { 1_000 } else { 100_000 };
        log.append(&batch(2, ts, i as u8), 0, 0).unwrap();
    }
    let segs = log.segment_count();
    let dropped = log.apply_retention(100_500).unwrap();
    assert!(dropped > 0 && log.segment_count() < segs);
    let start = log.log_start_offset();
    assert!(start > 0 && start <= 200, "start {start}");
    assert!(matches!(log.read(0, 10, i64::MAX), Err(LogError::OffsetOutOfRange { .. })));
    assert_eq!(read_all(&log, start).last().unwrap().last_offset(), 399);

    // Size-based: keep at most ~2 segments' worth.
    log.set_config(LogConfig { retention_ms: -1, retention_bytes: 8192, ..small_config() });
    log.apply_retention(100_500).unwrap();
    assert!(log.size_bytes() <= 8192 + 4096);
    assert_eq!(log.log_end_offset(), 400);

    // DeleteRecords moves the start into the middle of a segment.
    let lw = log.delete_records(375).unwrap();
    assert_eq!(lw, 375);
    assert!(log.read(374, 10, i64::MAX).is_err());
    let r = log.read(375, 1 << 20, i64::MAX).unwrap();
    assert!(BatchHeader::parse(&r.records).unwrap().last_offset() >= 375);
    assert!(log.delete_records(401).is_err());
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.log_start_offset(), 375, "log start survives restart");

    // Everything expired: even the active segment goes.
    log.set_config(LogConfig { retention_ms: 1, ..small_config() });
    log.apply_retention(10_000_000).unwrap();
    assert_eq!(log.log_start_offset(), 400);
    assert_eq!(log.log_end_offset(), 400);
    assert_eq!(log.append(&batch(1, 1, 1), 0, 0).unwrap().base_offset, 400);
}

#[test]
fn truncate_and_epoch_cache() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    for i in 0..30 {
        let epoch = if i < 10 {
            1
        } else if i < 20 {
            2
        } else {
            4
        };
        log.append(&batch(2, i, i as u8), epoch, 0).unwrap();
    }
    assert_eq!(log.end_offset_for_epoch(1), Some((1, 20)));
    assert_eq!(log.end_offset_for_epoch(3), Some((2, 40)));
    assert_eq!(log.end_offset_for_epoch(4), Some((4, 60)));
    log.truncate_to(33).unwrap();
    // Truncation keeps whole batches only: 33 is inside [32, 33].
    assert_eq!(log.log_end_offset(), 32);
    assert_eq!(log.latest_epoch(), Some(2));
    assert_eq!(read_all(&log, 0).len(), 16);
    assert_eq!(log.append(&batch(1, 1, 1), 5, 0).unwrap().base_offset, 32);
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.log_end_offset(), 33);
    assert_eq!(log.latest_epoch(), Some(5));
}

#[test]
fn timestamps_lookup_and_log_append_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    for i in 0..50 {
        log.append(&batch(1, 1000 + i * 10, i as u8), 0, 0).unwrap();
    }
    let b = log.batch_by_timestamp(1255, i64::MAX).unwrap();
    let h = BatchHeader::parse(&b).unwrap();
    assert_eq!((h.base_offset, h.max_timestamp), (26, 1260));
    assert!(log.batch_by_timestamp(5000, i64::MAX).is_none());
    let m = BatchHeader::parse(&log.batch_with_max_timestamp().unwrap()).unwrap();
    assert_eq!(m.base_offset, 49);

    log.set_config(LogConfig { timestamp_type: TimestampType::LogAppendTime, ..small_config() });
    let info = log.append(&batch(2, 7, 1), 0, 777_777).unwrap();
    assert_eq!(info.log_append_time, 777_777);
    let r = log.read(info.base_offset, 1 << 20, i64::MAX).unwrap();
    let h = validate(&r.records).unwrap();
    assert!(h.is_log_append_time());
    assert_eq!(h.max_timestamp, 777_777);
}

#[tokio::test]
async fn concurrent_syncs_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    let ends: Vec<i64> = (0..16u8).map(|i| log.append(&batch(1, 1, i), 0, 0).unwrap().last_offset + 1).collect();
    // Sixteen waiters at once: the group commit serves them in a round or
    // two (the committer may take the first before the rest have queued).
    let results = futures::future::join_all(ends.iter().map(|e| log.sync(*e))).await;
    assert!(results.iter().all(|r| r.is_ok()));
    let fsyncs = log.fsync_count();
    assert!((1..=2).contains(&fsyncs), "{fsyncs} rounds for 16 waiters");
    // Already-durable offsets cost nothing more.
    log.sync(16).await.unwrap();
    assert_eq!(log.fsync_count(), fsyncs);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any sequence of appends reads back identically, before and after a
    /// reopen, whatever the segment size.
    #[test]
    fn appends_read_back_across_reopen(
        sizes in prop::collection::vec((1usize..6, 0u8..255), 1..60),
        seg in 600u64..5000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig { segment_bytes: seg, index_interval_bytes: 128, segment_index_bytes: 1024, ..LogConfig::default() };
        let mut written = Vec::new();
        {
            let log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
            for (i, (n, tag)) in sizes.iter().enumerate() {
                let mut b = batch(*n, i as i64, *tag);
                let info = log.append(&b, 0, 0).unwrap();
                fjord_storage::batch::patch(&mut b, info.base_offset, 0, None);
                written.push(b);
            }
            let got = read_all(&log, 0);
            prop_assert_eq!(got.len(), written.len());
        }
        let log = PartitionLog::open(dir.path(), cfg).unwrap();
        let mut next = 0;
        for b in &written {
            let r = log.read(next, 1, i64::MAX).unwrap();
            let h = BatchHeader::parse(b).unwrap();
            prop_assert_eq!(&r.records[..h.total_size()], &b[..]);
            next = h.last_offset() + 1;
        }
        prop_assert_eq!(log.log_end_offset(), next);
    }
}

#[test]
fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { segment_ms: 1000, ..small_config() };
    let log = PartitionLog::open(dir.path(), cfg).unwrap();
    log.append(&batch(1, 1, 1), 0, 10_000).unwrap();
    log.append(&batch(1, 1, 2), 0, 10_500).unwrap();
    assert_eq!(log.segment_count(), 1, "younger than segment.ms");
    log.append(&batch(1, 1, 3), 0, 11_001).unwrap();
    assert_eq!(log.segment_count(), 2, "rolled once the segment was a second old");
    assert_eq!(read_all(&log, 0).len(), 3);
}

#[test]
fn a_deleted_log_takes_no_more_writes() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("t-0");
    let log = PartitionLog::open(&dir, small_config()).unwrap();
    log.append(&batch(2, 1000, 1), 0, 2000).unwrap();
    log.delete().unwrap();
    // A write that raced the delete must not recreate files in a directory
    // a topic recreated under the same name may now own.
    assert!(matches!(log.append(&batch(2, 1000, 2), 0, 2000), Err(LogError::Deleted)));
    assert!(matches!(log.delete_records(1), Err(LogError::Deleted)));
    assert!(matches!(log.apply_retention(i64::MAX), Err(LogError::Deleted)));
    assert!(!dir.exists(), "nothing was written back into the deleted directory");
    // Reads of what was there still work for readers that hold the log.
    assert_eq!(read_all(&log, 0).len(), 1);
}
