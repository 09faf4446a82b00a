//! Compaction: only the newest record per key survives in closed segments,
//! offsets are kept, tombstones age out, and the result survives a reopen.

use std::collections::BTreeMap;

use fjord_storage::batch::build_batch;
use fjord_storage::{LogConfig, LogError, PartitionLog};
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
    assert!(matches!(log.append(&keyless, 0, 1), Err(LogError::InvalidRecord(_))));
    assert_eq!(log.log_end_offset(), 0);
}
