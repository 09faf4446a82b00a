//! Compaction: only the newest record per key survives in closed segments,
//! offsets are kept, tombstones age out, and the result survives a reopen.

use std::collections::BTreeMap;

use fjord_storage::batch::build_batch;
use fjord_storage::records::{self, Codec, Compression};
use fjord_storage::{LogConfig, LogError, PartitionLog, RecordErrorKind};
use kafka_protocol::records::RecordBatchDecoder;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        segment_index_bytes: 4096,
        compact: true,
        delete: false,
        delete_retention_ms: 1000,
        ..LogConfig::default()
    }
}

/// (offset, key, value) of every record, read through the public API.
fn records(log: &PartitionLog) -> Vec<(i64, String, Option<String>)> {
    let mut out = Vec::new();
    let mut next = log.log_start_offset();
    let end = log.log_end_offset();
    while next < end {
        let r = log.read(next, 1 << 20, i64::MAX).unwrap();
        if r.records.is_empty() {
            break;
        }
        let mut buf = r.records.clone();
        for set in RecordBatchDecoder::decode_all(&mut buf).unwrap() {
            for rec in set.records {
                if rec.offset >= next {
                    let k = String::from_utf8(rec.key.unwrap().to_vec()).unwrap();
                    let v = rec.value.map(|v| String::from_utf8(v.to_vec()).unwrap());
                    out.push((rec.offset, k, v));
                }
                next = next.max(rec.offset + 1);
            }
        }
    }
    out
}

fn put(log: &PartitionLog, key: &str, value: Option<&str>, ts: i64) -> i64 {
    let b = build_batch(0, ts, &[(Some(key.as_bytes()), value.map(|v| v.as_bytes()))]);
    log.append(&b, 0, ts).unwrap().base_offset
}

#[test]
fn keeps_the_latest_value_per_key_and_drops_expired_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), config()).unwrap();
    let mut last: BTreeMap<String, (i64, Option<String>)> = BTreeMap::new();
    for round in 0..20 {
        for k in 0..5 {
            let key = format!("key-{k}");
            let value = format!("value-{round}-{k}-{}", "x".repeat(20));
            let off = put(&log, &key, Some(&value), 1000);
            last.insert(key, (off, Some(value)));
        }
    }
    // key-4 is deleted with a tombstone.
    let off = put(&log, "key-4", None, 1000);
    last.insert("key-4".into(), (off, None));
    // Fill a few more segments so the tombstone lands in a closed one.
    for i in 0..30 {
        let off = put(&log, "filler", Some(&format!("{i:040}")), 1000);
        last.insert("filler".into(), (off, Some(format!("{i:040}"))));
    }
    let before = records(&log);
    let end = log.log_end_offset();
    let segments = log.segment_count();
    assert!(segments > 3);

    let stats = log.compact(1500).unwrap();
    assert!(stats.records_removed > 0 && stats.bytes_after < stats.bytes_before, "{stats:?}");
    let after = records(&log);
    assert_eq!(log.log_end_offset(), end, "compaction never moves the end");
    // Every surviving record is an original one, at its original offset.
    for r in &after {
        assert!(before.contains(r), "{r:?} was not in the log before");
    }
    // The newest value of every key is still there.
    for (key, (off, value)) in &last {
        assert!(after.contains(&(*off, key.clone(), value.clone())), "latest {key} kept");
    }
    // Older values of keys whose newest record is in a closed segment are gone.
    let per_key = after.iter().filter(|(_, k, _)| k == "key-0").count();
    assert_eq!(per_key, 1);

    // Once past delete.retention.ms, the tombstone goes too.
    log.compact(1_000_000).unwrap();
    let later = records(&log);
    assert!(!later.iter().any(|(_, k, _)| k == "key-4"), "expired tombstone removed");
    assert!(later.iter().any(|(_, k, v)| k == "key-3" && v.is_some()));

    // A reopened log reads the same, and appends continue at the end.
    drop(log);
    let log = PartitionLog::open(dir.path(), config()).unwrap();
    assert_eq!(records(&log), later);
    assert_eq!(put(&log, "key-9", Some("new"), 2000), end);
}

#[test]
fn compacted_topics_require_keys() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), config()).unwrap();
    let keyless = build_batch(0, 1, &[(None, Some(b"v".as_slice()))]);
    assert!(matches!(
        log.append(&keyless, 0, 1),
        Err(LogError::RecordErrors { kind: RecordErrorKind::InvalidRecord, .. })
    ));
    // Only the keyless records are listed (KIP-467), by their index.
    let mixed =
        build_batch(0, 1, &[(Some(b"a"), Some(b"1")), (None, Some(b"2")), (Some(b"c"), Some(b"3")), (None, None)]);
    match log.append(&mixed, 0, 1) {
        Err(LogError::RecordErrors { kind: RecordErrorKind::InvalidRecord, records, .. }) => {
            assert_eq!(records.iter().map(|r| r.batch_index).collect::<Vec<_>>(), vec![1, 3]);
        }
        other => panic!("expected record errors, got {other:?}"),
    }
    assert_eq!(log.log_end_offset(), 0);
}

/// Fills closed segments with `rounds` values of five keys, each written at `ts`.
fn fill(log: &PartitionLog, rounds: usize, ts: i64) {
    for round in 0..rounds {
        for k in 0..5 {
            put(log, &format!("key-{k}"), Some(&format!("value-{round}-{k}-{}", "x".repeat(20))), ts);
        }
    }
}

#[test]
fn records_younger_than_the_min_lag_stay() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig { min_compaction_lag_ms: 10_000, ..config() }).unwrap();
    fill(&log, 20, 1000);
    let before = records(&log);
    // At 5 s every record is younger than the 10 s lag: nothing goes.
    assert_eq!(log.compact(5_000).unwrap().records_removed, 0);
    assert_eq!(records(&log), before);
    // Past the lag, the superseded values go.
    assert!(log.compact(20_000).unwrap().records_removed > 0);
    assert!(records(&log).len() < before.len());
}

#[test]
fn dirty_ratio_and_max_lag_decide_when_a_pass_is_due() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig { min_cleanable_dirty_ratio: 0.9, ..config() }).unwrap();
    fill(&log, 20, 1000);
    for i in 0..200 {
        put(&log, &format!("unique-{i}"), Some(&"y".repeat(40)), 1000);
    }
    // All dirty: due.
    assert!(log.compact_if_due(2_000).unwrap().records_removed > 0);
    // A little more data (pushed out of the active segment): the dirty
    // share is far below 0.9, not due...
    fill(&log, 2, 1000);
    for i in 0..15 {
        put(&log, &format!("pad-{i}"), Some(&"z".repeat(40)), 1000);
    }
    let n = records(&log).len();
    assert_eq!(log.compact_if_due(2_000).unwrap(), Default::default());
    assert_eq!(records(&log).len(), n);
    // ...until the dirty records are older than max.compaction.lag.ms.
    let mut cfg = log.config();
    cfg.max_compaction_lag_ms = 60_000;
    log.set_config(cfg);
    assert_eq!(log.compact_if_due(30_000).unwrap(), Default::default());
    assert!(log.compact_if_due(100_000).unwrap().records_removed > 0);
}

#[test]
fn compressed_batches_compact_and_a_bomb_is_kept_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig { max_message_bytes: 1 << 20, segment_bytes: 64 << 10, ..config() };
    let log = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
    let zstd = Compression { codec: Codec::Zstd, level: 3 };
    // A batch whose records expand past the limit (1 MiB x 32) once decompressed.
    let huge = vec![0u8; 40 << 20];
    let bomb =
        records::recompress(&build_batch(0, 1000, &[(Some(b"bomb"), Some(&huge))]), zstd, usize::MAX).unwrap().unwrap();
    assert!(bomb.len() < 64 << 10);
    // Written while the topic was not compacted, as happens before a policy change.
    log.set_config(LogConfig { compact: false, ..cfg.clone() });
    log.append(&bomb, 0, 1000).unwrap();
    log.set_config(cfg);
    for round in 0..40 {
        let b = build_batch(0, 1000, &[(Some(b"k1"), Some(format!("v{round}").as_bytes())), (Some(b"k2"), Some(b"x"))]);
        let z = records::recompress(&b, zstd, 1 << 20).unwrap().unwrap();
        log.append(&z, 0, 1000).unwrap();
        log.append(&build_batch(0, 1000, &[(Some(b"pad"), Some(&[1u8; 3000]))]), 0, 1000).unwrap();
    }
    let stats = log.compact(2_000).unwrap();
    assert_eq!(stats.batches_skipped, 1, "{stats:?}");
    assert!(stats.records_removed > 0, "{stats:?}");
    // The bomb is still there, unread, at offset 0.
    let first = log.read(0, 1, i64::MAX).unwrap();
    assert_eq!(&first.records[fjord_storage::batch::HEADER_SIZE..], &bomb[fjord_storage::batch::HEADER_SIZE..]);
}
