//! Storage's record decoder (`records::decode_batches`) against an
//! independent one, kafka-protocol's: for random batches in every codec they
//! agree record for record, and corrupt records are errors, not panics.

use bytes::{Bytes, BytesMut};
use fjord_storage::batch::{self, build_batch, patch, HEADER_SIZE};
use fjord_storage::records::{self, Codec};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use proptest::prelude::*;

const LIMIT: usize = 1 << 24;

/// One random record: key, value, headers (distinct keys: kafka-protocol
/// keeps them in a map), offset gap before it, timestamp offset.
type Spec = (Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Option<Vec<u8>>)>, i64, i64);

fn record_spec() -> impl Strategy<Value = Spec> {
    (
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        // Some values long and repetitive, so the codecs have work to do.
        proptest::option::of(prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..80),
            (any::<u8>(), 0..3000usize).prop_map(|(b, n)| vec![b; n]),
        ]),
        proptest::collection::btree_map(
            "[a-z]{0,6}",
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..12)),
            0..4,
        )
        .prop_map(|m| m.into_iter().collect()),
        0..3i64,
        -5_000..5_000i64,
    )
}

fn codec() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Gzip),
        Just(Compression::Snappy),
        Just(Compression::Lz4),
        Just(Compression::Zstd),
    ]
}

/// Encodes one batch with kafka-protocol, offsets from `base` with the
/// specs' gaps, timestamps around `ts`.
fn encode(specs: &[Spec], base: i64, ts: i64, compression: Compression, buf: &mut BytesMut) -> i64 {
    let (first, mut offset) = (base + specs[0].3, base);
    let recs: Vec<Record> = specs
        .iter()
        .map(|(k, v, hs, gap, dt)| {
            offset += gap;
            let r = Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 3,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset,
                // kafka-protocol ends a batch where offset - sequence
                // changes: base sequence -1 (no producer), deltas after.
                sequence: (offset - first) as i32 - 1,
                timestamp: ts + dt,
                key: k.clone().map(Bytes::from),
                value: v.clone().map(Bytes::from),
                headers: hs
                    .iter()
                    .map(|(hk, hv)| (StrBytes::from_string(hk.clone()), hv.clone().map(Bytes::from)))
                    .collect(),
            };
            offset += 1;
            r
        })
        .collect();
    RecordBatchEncoder::encode(buf, &recs, &RecordEncodeOptions { version: 2, compression }).unwrap();
    offset
}

/// (offset, timestamp, key, value, headers) of kafka-protocol's records.
type Seen = (i64, i64, Option<Bytes>, Option<Bytes>, Vec<(Bytes, Option<Bytes>)>);

fn theirs(data: &Bytes) -> Vec<Seen> {
    let mut buf = data.clone();
    RecordBatchDecoder::decode_all(&mut buf)
        .unwrap()
        .into_iter()
        .flat_map(|set| set.records)
        .map(|r| {
            let headers = r.headers.into_iter().map(|(k, v)| (Bytes::from(k), v)).collect();
            (r.offset, r.timestamp, r.key, r.value, headers)
        })
        .collect()
}

fn ours(data: &Bytes) -> Vec<Seen> {
    records::decode_batches(data, LIMIT)
        .unwrap()
        .into_iter()
        .flat_map(|b| b.records)
        .map(|r| (r.offset, r.timestamp, r.key, r.value, r.headers))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn storage_and_kafka_protocol_decode_the_same_records(
        batches in proptest::collection::vec((proptest::collection::vec(record_spec(), 1..12), codec()), 1..4),
        base in 0..1_000_000i64,
        ts in 0..2_000_000_000_000i64,
    ) {
        let mut buf = BytesMut::new();
        let mut next = base;
        for (specs, compression) in &batches {
            next = encode(specs, next, ts, *compression, &mut buf);
        }
        let data = buf.freeze();
        let want = theirs(&data);
        prop_assert_eq!(want.len(), batches.iter().map(|(s, _)| s.len()).sum::<usize>());
        prop_assert_eq!(ours(&data), want);
        // Each batch alone, and its header as storage reads it.
        let decoded = records::decode_batches(&data, LIMIT).unwrap();
        prop_assert_eq!(decoded.len(), batches.len());
        for (b, (specs, compression)) in decoded.iter().zip(&batches) {
            prop_assert_eq!(Codec::from_attributes(b.header.attributes).unwrap() as i16, *compression as i16);
            prop_assert_eq!(b.records.len(), specs.len());
        }
    }

    /// Records garbled behind a valid CRC (as a buggy producer could send
    /// them) are an error or some records, never a panic.
    #[test]
    fn garbled_records_are_errors_not_panics(
        specs in proptest::collection::vec(record_spec(), 1..6),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut buf = BytesMut::new();
        encode(&specs, 0, 1_000, Compression::None, &mut buf);
        let mut raw = buf.to_vec();
        let body = raw.len() - HEADER_SIZE;
        raw[HEADER_SIZE + at.index(body)] = byte;
        let keep = HEADER_SIZE + cut.index(body + 1);
        raw.truncate(keep);
        let len = (raw.len() - batch::LOG_OVERHEAD) as i32;
        raw[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = batch::compute_crc(&raw);
        raw[17..21].copy_from_slice(&crc.to_be_bytes());
        let _ = records::decode_batch(&Bytes::from(raw), LIMIT);
    }
}

#[test]
fn log_append_time_records_carry_the_batch_timestamp() {
    // As Kafka's reader has it: with LogAppendTime every record's timestamp
    // is the one the broker stamped (the batch's max timestamp).
    let mut b = build_batch(10, 1_000, &[(Some(b"a"), Some(b"1")), (None, None)]);
    patch(&mut b, 10, 0, Some(77_000));
    let decoded = records::decode_batch(&Bytes::from(b), LIMIT).unwrap();
    let got: Vec<(i64, i64, bool)> =
        decoded.records.iter().map(|r| (r.offset, r.timestamp, r.value.is_none())).collect();
    assert_eq!(got, vec![(10, 77_000, false), (11, 77_000, true)]);
}

#[test]
fn decoded_fields_share_the_batch_memory() {
    let b = Bytes::from(build_batch(0, 1, &[(Some(b"key"), Some(b"value"))]));
    let decoded = records::decode_batch(&b, LIMIT).unwrap();
    let value = decoded.records[0].value.clone().unwrap();
    assert_eq!(&value[..], b"value");
    let range = b.as_ptr() as usize..b.as_ptr() as usize + b.len();
    assert!(range.contains(&(value.as_ptr() as usize)), "an uncompressed value is a slice of the batch, not a copy");
    // A batch over the limit is refused before its records are read.
    assert!(records::decode_batch(&b, 4).is_err());
}
