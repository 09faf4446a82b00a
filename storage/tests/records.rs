//! The record rules of `PartitionLog::append`: recompression to the topic's
//! codec, the CreateTime window, and the decompression bound, each refusing
//! a whole batch (nothing written) or storing it converted.

use fjord_storage::batch::{build_batch, validate, HEADER_SIZE};
use fjord_storage::records::{self, Codec, Compression};
use fjord_storage::{LogConfig, LogError, PartitionLog, RecordErrorKind};

fn open(cfg: LogConfig) -> (tempfile::TempDir, PartitionLog) {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), cfg).unwrap();
    (dir, log)
}

#[test]
fn batches_are_stored_in_the_topic_codec() {
    let zstd = Compression { codec: Codec::Zstd, level: 3 };
    let (_d, log) = open(LogConfig { compression: Some(zstd), ..LogConfig::default() });
    let plain = build_batch(0, 5, &[(Some(b"k"), Some(b"v1")), (None, Some(&[7u8; 300]))]);
    let gzip = records::recompress(&plain, Compression { codec: Codec::Gzip, level: -1 }, 1 << 20).unwrap().unwrap();
    let mut payload = plain.clone();
    payload.extend_from_slice(&gzip);
    let info = log.append(&payload, 0, 10).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (0, 3));
    let stored = log.read(0, 1 << 20, i64::MAX).unwrap().records;
    let first = validate(&stored[..first_len(&stored)]).unwrap();
    assert_eq!(Codec::from_attributes(first.attributes).unwrap(), Codec::Zstd);
    assert_eq!((first.base_offset, first.base_timestamp, first.records_count), (0, 5, 2));
    let second_at = first_len(&stored);
    let second = validate(&stored[second_at..]).unwrap();
    assert_eq!(Codec::from_attributes(second.attributes).unwrap(), Codec::Zstd);
    assert_eq!(second.base_offset, 2);
    // The records are the producer's, byte for byte.
    let want = records::decompressed_records(&plain, 1 << 20).unwrap();
    assert_eq!(records::decompressed_records(&stored[..second_at], 1 << 20).unwrap(), want);
    assert_eq!(records::decompressed_records(&stored[second_at..], 1 << 20).unwrap(), want);
}

/// Length of the first batch of a buffer.
fn first_len(b: &[u8]) -> usize {
    fjord_storage::BatchHeader::parse(&b[..HEADER_SIZE]).unwrap().total_size()
}

#[test]
fn the_create_time_window_refuses_whole_batches() {
    let cfg = LogConfig { timestamp_before_max_ms: 1000, timestamp_after_max_ms: 100, ..LogConfig::default() };
    let (_d, log) = open(cfg);
    let now = 1_000_000;
    assert!(log.append(&build_batch(0, now - 1000, &[(None, Some(b"edge"))]), 0, now).is_ok());
    for ts in [now - 1001, now + 101] {
        match log.append(&build_batch(0, ts, &[(None, Some(b"a")), (None, Some(b"b"))]), 0, now) {
            Err(LogError::RecordErrors { kind: RecordErrorKind::InvalidTimestamp, records, .. }) => {
                assert_eq!(records.iter().map(|r| r.batch_index).collect::<Vec<_>>(), vec![0, 1]);
            }
            other => panic!("expected INVALID_TIMESTAMP at {ts}, got {other:?}"),
        }
    }
    assert_eq!(log.log_end_offset(), 1);
    // LogAppendTime topics stamp batches themselves: no window.
    let mut cfg = log.config();
    cfg.timestamp_type = fjord_storage::TimestampType::LogAppendTime;
    log.set_config(cfg);
    assert!(log.append(&build_batch(0, 1, &[(None, Some(b"x"))]), 0, now).is_ok());
}

#[test]
fn a_bomb_is_refused_where_records_are_read_and_stored_as_sent_elsewhere() {
    let zeros = vec![0u8; 40 << 20];
    let bomb = records::recompress(
        &build_batch(0, 1, &[(Some(b"k"), Some(&zeros))]),
        Compression { codec: Codec::Zstd, level: 3 },
        usize::MAX,
    )
    .unwrap()
    .unwrap();
    let small = LogConfig { max_message_bytes: 1 << 20, ..LogConfig::default() };
    for cfg in [
        LogConfig { compact: true, ..small.clone() },
        LogConfig { compression: Some(Compression { codec: Codec::Gzip, level: 1 }), ..small.clone() },
        LogConfig { timestamp_after_max_ms: 10, ..small.clone() },
    ] {
        let (_d, log) = open(cfg);
        let e = log.append(&bomb, 0, 1).unwrap_err();
        assert!(matches!(e, LogError::DecompressedTooLarge { limit } if limit == 32 << 20), "{e}");
        assert_eq!(log.log_end_offset(), 0);
    }
    // Without a record rule the batch is not decoded: stored as sent.
    let (_d, log) = open(small);
    assert_eq!(log.append(&bomb, 0, 1).unwrap().base_offset, 0);
}
