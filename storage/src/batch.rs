//! Kafka v2 record batch headers: parsing, validation and the few in-place
//! patches the broker makes (base offset, leader epoch, LogAppendTime).
//!
//! Batches are stored verbatim, so this reads header fields at fixed positions
//! instead of decoding records; only the CRC covers the whole batch.

use crate::error::{LogError, Result};

/// Bytes before the batch length field ends: baseOffset (8) + batchLength (4).
pub const LOG_OVERHEAD: usize = 12;
/// Size of the fixed v2 header, up to and including the record count.
pub const HEADER_SIZE: usize = 61;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORDS_COUNT: usize = 57;

const TIMESTAMP_TYPE_BIT: i16 = 1 << 3;
const TRANSACTIONAL_BIT: i16 = 1 << 4;
const CONTROL_BIT: i16 = 1 << 5;

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// The fixed header of one v2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Length of the batch after the length field itself.
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Reads the header at the start of `buf`; `buf` must hold `HEADER_SIZE` bytes.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader> {
        if buf.len() < HEADER_SIZE {
            return Err(LogError::Corrupt(format!("batch header needs {HEADER_SIZE} bytes, have {}", buf.len())));
        }
        Ok(BatchHeader {
            base_offset: i64_at(buf, BASE_OFFSET),
            batch_length: i32_at(buf, BATCH_LENGTH),
            partition_leader_epoch: i32_at(buf, LEADER_EPOCH),
            magic: buf[MAGIC] as i8,
            crc: u32::from_be_bytes([buf[CRC], buf[CRC + 1], buf[CRC + 2], buf[CRC + 3]]),
            attributes: i16_at(buf, ATTRIBUTES),
            last_offset_delta: i32_at(buf, LAST_OFFSET_DELTA),
            base_timestamp: i64_at(buf, BASE_TIMESTAMP),
            max_timestamp: i64_at(buf, MAX_TIMESTAMP),
            producer_id: i64_at(buf, PRODUCER_ID),
            producer_epoch: i16_at(buf, PRODUCER_EPOCH),
            base_sequence: i32_at(buf, BASE_SEQUENCE),
            records_count: i32_at(buf, RECORDS_COUNT),
        })
    }

    /// Total size of the batch on disk, including offset and length fields.
    pub fn total_size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length.max(0) as usize
    }
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }
    pub fn compression(&self) -> i16 {
        self.attributes & 0x7
    }
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_BIT != 0
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }
}

/// How timestamps of appended batches are treated (`message.timestamp.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// Computes the CRC-32C a batch should carry (attributes to the end).
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES..])
}

/// Checks one complete batch: structure, magic, CRC and record count.
/// `batch` must be exactly one batch (`LOG_OVERHEAD + batch_length` bytes).
pub fn validate(batch: &[u8]) -> Result<BatchHeader> {
    let h = BatchHeader::parse(batch)?;
    if h.magic != 2 {
        return Err(LogError::Corrupt(format!("unsupported record batch magic {} (only v2 is accepted)", h.magic)));
    }
    if (h.batch_length as i64) < (HEADER_SIZE - LOG_OVERHEAD) as i64 || h.total_size() != batch.len() {
        return Err(LogError::Corrupt(format!(
            "batch length {} does not match {} bytes present",
            h.batch_length,
            batch.len()
        )));
    }
    let actual = compute_crc(batch);
    if actual != h.crc {
        return Err(LogError::Corrupt(format!(
            "CRC-32C mismatch: batch says {:#010x}, computed {:#010x}",
            h.crc, actual
        )));
    }
    if h.last_offset_delta < 0 || h.records_count < 0 {
        return Err(LogError::Corrupt(format!(
            "negative lastOffsetDelta {} or record count {}",
            h.last_offset_delta, h.records_count
        )));
    }
    // Compaction leaves batches with fewer records than their offset span.
    if h.records_count as i64 > h.last_offset_delta as i64 + 1 {
        return Err(LogError::Corrupt(format!(
            "record count {} exceeds the offset span of lastOffsetDelta {}",
            h.records_count, h.last_offset_delta
        )));
    }
    Ok(h)
}

/// `validate`, plus what holds for a batch fresh from a producer: every
/// offset of its span has a record.
pub fn validate_produced(batch: &[u8]) -> Result<BatchHeader> {
    let h = validate(batch)?;
    // A filler (one control record standing for many offsets) comes only from the broker's own
    // writers: a tiered storage restore moving a log on to the offsets it restores. Clients'
    // control batches are refused after this check.
    let filler = h.is_control() && control_record(batch).is_some_and(|(t, _)| t == CONTROL_COMPACTED);
    if h.records_count == 0 || (h.records_count as i64 != h.last_offset_delta as i64 + 1 && !filler) {
        return Err(LogError::Corrupt(format!(
            "record count {} does not match lastOffsetDelta {}",
            h.records_count, h.last_offset_delta
        )));
    }
    Ok(h)
}

/// Splits a produce payload into batches, validating each one. Rejects the
/// whole payload if any batch is bad so a request never half-applies.
pub fn split_and_validate(payload: &[u8], max_batch_bytes: usize) -> Result<Vec<(usize, BatchHeader)>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < payload.len() {
        let rest = &payload[pos..];
        if rest.len() < LOG_OVERHEAD {
            return Err(LogError::Corrupt("truncated batch at end of payload".into()));
        }
        let len = i32_at(rest, BATCH_LENGTH);
        if len < 0 {
            return Err(LogError::Corrupt(format!("negative batch length {len}")));
        }
        let total = LOG_OVERHEAD + len as usize;
        if total > max_batch_bytes {
            return Err(LogError::RecordTooLarge { size: total, max: max_batch_bytes });
        }
        if total > rest.len() {
            return Err(LogError::Corrupt(format!("batch of {total} bytes but only {} remain", rest.len())));
        }
        let h = validate_produced(&rest[..total])?;
        out.push((pos, h));
        pos += total;
    }
    if out.is_empty() {
        return Err(LogError::Corrupt("produce payload holds no record batch".into()));
    }
    Ok(out)
}

/// Splits batches as a log stores them (a leader's, for a follower) into
/// whole batches, each validated (structure, magic, CRC, counts). Rejects
/// all of `data` if any batch is bad, so a follower never half-applies.
pub fn split_stored(data: &[u8]) -> Result<Vec<(usize, BatchHeader)>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < data.len() {
        let rest = &data[pos..];
        if rest.len() < LOG_OVERHEAD {
            return Err(LogError::Corrupt("truncated batch at end of replicated data".into()));
        }
        let len = i32_at(rest, BATCH_LENGTH);
        if len < 0 || LOG_OVERHEAD + len as usize > rest.len() {
            return Err(LogError::Corrupt(format!("batch length {len} but only {} bytes remain", rest.len())));
        }
        let h = validate(&rest[..LOG_OVERHEAD + len as usize])?;
        out.push((pos, h));
        pos += h.total_size();
    }
    if out.is_empty() {
        return Err(LogError::Corrupt("replicated data holds no record batch".into()));
    }
    Ok(out)
}

/// Rewrites base offset and leader epoch in place; with LogAppendTime also the
/// timestamps. Recomputes the CRC only when a covered field changed.
/// Bytes at the start of a batch that the log assigns and that lie outside
/// the CRC: base offset, length (unchanged), partition leader epoch.
pub const ASSIGNED_HEAD: usize = MAGIC;

/// The first `ASSIGNED_HEAD` bytes of `batch` with the log's offset and
/// epoch; the rest of the batch is written as the producer sent it.
pub fn assigned_head(batch: &[u8], base_offset: i64, leader_epoch: i32) -> [u8; ASSIGNED_HEAD] {
    let mut head = [0u8; ASSIGNED_HEAD];
    head.copy_from_slice(&batch[..ASSIGNED_HEAD]);
    head[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    head[LEADER_EPOCH..LEADER_EPOCH + 4].copy_from_slice(&leader_epoch.to_be_bytes());
    head
}

pub fn patch(batch: &mut [u8], base_offset: i64, leader_epoch: i32, append_time: Option<i64>) {
    batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[LEADER_EPOCH..LEADER_EPOCH + 4].copy_from_slice(&leader_epoch.to_be_bytes());
    if let Some(ts) = append_time {
        let attrs = i16_at(batch, ATTRIBUTES) | TIMESTAMP_TYPE_BIT;
        batch[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attrs.to_be_bytes());
        batch[BASE_TIMESTAMP..BASE_TIMESTAMP + 8].copy_from_slice(&ts.to_be_bytes());
        batch[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&ts.to_be_bytes());
        let crc = compute_crc(batch);
        batch[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

/// A record's optional key and value.
pub type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// Who wrote a batch and how: the producer fields of the header.
#[derive(Debug, Clone, Copy)]
pub struct Producer {
    pub id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
    pub transactional: bool,
}

/// Builds an uncompressed v2 batch. Used by tests and internal writers; the
/// produce path never re-encodes client batches.
pub fn build_batch(base_offset: i64, timestamp: i64, records: &[KeyValue<'_>]) -> Vec<u8> {
    build_batch_as(base_offset, timestamp, records, None)
}

/// `build_batch` with the producer fields set (transactional offset commits).
pub fn build_batch_as(
    base_offset: i64,
    timestamp: i64,
    records: &[KeyValue<'_>],
    producer: Option<Producer>,
) -> Vec<u8> {
    let attributes = if producer.is_some_and(|p| p.transactional) { TRANSACTIONAL_BIT } else { 0 };
    encode_batch(base_offset, timestamp, records, producer, attributes)
}

/// A record to encode: its own timestamp and headers.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a [u8], Option<&'a [u8]>)],
}

/// An uncompressed v2 batch of `records` (base offset 0), each with its own timestamp and
/// headers, written by `producer` when given (transactional if it says so).
pub fn build_records(records: &[NewRecord<'_>], producer: Option<Producer>) -> Vec<u8> {
    let attributes = if producer.is_some_and(|p| p.transactional) { TRANSACTIONAL_BIT } else { 0 };
    encode_records(0, records, producer, attributes)
}

/// A transaction marker: the control batch a coordinator writes to every
/// partition of a transaction when it commits or aborts. Its one record has
/// key (version 0, type 0 = abort / 1 = commit) and value (version 0,
/// coordinator epoch).
pub fn build_marker(producer_id: i64, epoch: i16, coordinator_epoch: i32, commit: bool, timestamp: i64) -> Vec<u8> {
    let mut key = [0u8; 4];
    key[2..].copy_from_slice(&(commit as i16).to_be_bytes());
    let mut value = [0u8; 6];
    value[2..].copy_from_slice(&coordinator_epoch.to_be_bytes());
    let producer = Producer { id: producer_id, epoch, base_sequence: -1, transactional: true };
    encode_batch(0, timestamp, &[(Some(&key), Some(&value))], Some(producer), TRANSACTIONAL_BIT | CONTROL_BIT)
}

/// Kafka's control record type for a leader change (KRaft writes one per election).
pub const CONTROL_LEADER_CHANGE: i16 = 2;

/// A control batch outside any transaction (producer id -1), as Raft's own entries are stored:
/// one record whose key is exactly 4 bytes (version 0, `control_type`) and whose value is
/// `value`. Clients skip it: the Java consumer skips control batches, librdkafka ignores control
/// types other than abort/commit once the key is version 0 and 4 bytes long. Its timestamp is
/// -1 (none), so it moves no segment's time bounds, and it is built the same on every replica.
pub fn build_control(control_type: i16, value: &[u8]) -> Vec<u8> {
    let mut key = [0u8; 4];
    key[2..].copy_from_slice(&control_type.to_be_bytes());
    encode_batch(0, -1, &[(Some(&key), Some(value))], None, CONTROL_BIT)
}

/// Control type of a filler: a control batch standing for offsets of a Raft entry whose
/// batches compaction removed. A leader sends it in their place, so a follower's log holds the
/// entry at the same offsets; clients skip it as they skip every control batch, and move past
/// all of its offsets (its lastOffsetDelta spans them, as a compacted batch's does).
pub const CONTROL_COMPACTED: i16 = 0x4603;

/// A filler for offsets `[base_offset, next_offset)` (at least one) in term `leader_epoch`.
pub fn build_filler(base_offset: i64, next_offset: i64, leader_epoch: i32) -> Vec<u8> {
    let mut b = build_control(CONTROL_COMPACTED, b"");
    let delta = i32::try_from((next_offset - base_offset - 1).max(0)).unwrap_or(i32::MAX);
    b[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4].copy_from_slice(&delta.to_be_bytes());
    let crc = compute_crc(&b);
    b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    patch(&mut b, base_offset, leader_epoch, None);
    b
}

/// The type and value of a control batch `build_control` wrote (producer id -1, uncompressed,
/// one record, a 4-byte version-0 key); None for any other batch.
pub fn control_record(batch: &[u8]) -> Option<(i16, &[u8])> {
    let h = BatchHeader::parse(batch).ok()?;
    if !h.is_control() || h.producer_id != -1 || h.records_count != 1 || h.compression() != 0 {
        return None;
    }
    let mut pos = HEADER_SIZE;
    get_varlong(batch, &mut pos)?; // record length
    pos += 1; // record attributes
    get_varlong(batch, &mut pos)?; // timestamp delta
    get_varlong(batch, &mut pos)?; // offset delta
    if get_varlong(batch, &mut pos)? != 4 || pos + 4 > batch.len() || i16_at(batch, pos) != 0 {
        return None;
    }
    let control_type = i16_at(batch, pos + 2);
    pos += 4;
    let value_len = usize::try_from(get_varlong(batch, &mut pos)?).ok()?;
    let value = batch.get(pos..pos.checked_add(value_len)?)?;
    Some((control_type, value))
}

/// A transaction marker as a control batch holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub commit: bool,
    /// The coordinator epoch in its value; 0 when the value is missing or short (Kafka's
    /// value is version 0 then the epoch, and writes it always).
    pub coordinator_epoch: i32,
}

/// The commit or abort marker a control batch is; None for other control records or anything
/// unreadable.
pub fn marker_kind(batch: &[u8]) -> Option<Marker> {
    let mut pos = HEADER_SIZE;
    let _len = get_varlong(batch, &mut pos)?;
    pos += 1; // record attributes
    get_varlong(batch, &mut pos)?; // timestamp delta
    get_varlong(batch, &mut pos)?; // offset delta
    let key_len = get_varlong(batch, &mut pos)?;
    if key_len < 4 || pos + 4 > batch.len() {
        return None;
    }
    let commit = match i16_at(batch, pos + 2) {
        0 => false,
        1 => true,
        _ => return None,
    };
    pos += usize::try_from(key_len).ok()?;
    let value_len = get_varlong(batch, &mut pos)?;
    let coordinator_epoch = if value_len >= 6 && pos + 6 <= batch.len() {
        i32::from_be_bytes([batch[pos + 2], batch[pos + 3], batch[pos + 4], batch[pos + 5]])
    } else {
        0
    };
    Some(Marker { commit, coordinator_epoch })
}

fn get_varlong(b: &[u8], pos: &mut usize) -> Option<i64> {
    let mut z: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        z |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    None
}

fn encode_batch(
    base_offset: i64,
    timestamp: i64,
    records: &[KeyValue<'_>],
    producer: Option<Producer>,
    attributes: i16,
) -> Vec<u8> {
    let records: Vec<NewRecord<'_>> =
        records.iter().map(|(key, value)| NewRecord { timestamp, key: *key, value: *value, headers: &[] }).collect();
    encode_records(base_offset, &records, producer, attributes)
}

/// The one record batch encoder: uncompressed, v2, timestamps as deltas from the first.
fn encode_records(base_offset: i64, records: &[NewRecord<'_>], producer: Option<Producer>, attributes: i16) -> Vec<u8> {
    let first_ts = records.first().map_or(-1, |r| r.timestamp);
    let max_ts = records.iter().map(|r| r.timestamp).max().unwrap_or(-1);
    let put_bytes = |out: &mut Vec<u8>, b: Option<&[u8]>| match b {
        Some(b) => {
            put_varlong(out, b.len() as i64);
            out.extend_from_slice(b);
        }
        None => put_varlong(out, -1),
    };
    let mut body = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let mut rec = Vec::new();
        rec.push(0u8); // attributes
        put_varlong(&mut rec, r.timestamp.wrapping_sub(first_ts));
        put_varlong(&mut rec, i as i64); // offset delta
        put_bytes(&mut rec, r.key);
        put_bytes(&mut rec, r.value);
        put_varlong(&mut rec, r.headers.len() as i64);
        for (k, v) in r.headers {
            put_varlong(&mut rec, k.len() as i64);
            rec.extend_from_slice(k);
            put_bytes(&mut rec, *v);
        }
        put_varlong(&mut body, rec.len() as i64);
        body.extend_from_slice(&rec);
    }
    let n = records.len() as i32;
    let (pid, epoch, seq) = producer.map(|p| (p.id, p.epoch, p.base_sequence)).unwrap_or((-1, -1, -1));
    let mut b = Vec::with_capacity(HEADER_SIZE + body.len());
    b.extend_from_slice(&base_offset.to_be_bytes());
    b.extend_from_slice(&((HEADER_SIZE - LOG_OVERHEAD + body.len()) as i32).to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.push(2);
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&attributes.to_be_bytes());
    b.extend_from_slice(&(n - 1).to_be_bytes());
    b.extend_from_slice(&first_ts.to_be_bytes());
    b.extend_from_slice(&max_ts.to_be_bytes());
    b.extend_from_slice(&pid.to_be_bytes());
    b.extend_from_slice(&epoch.to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&n.to_be_bytes());
    b.extend_from_slice(&body);
    let crc = compute_crc(&b);
    b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    b
}

fn put_varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if z < 0x80 {
            out.push(z as u8);
            return;
        }
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_batch_validates_and_patch_keeps_crc_valid() {
        let mut b = build_batch(0, 1000, &[(Some(b"k"), Some(b"v")), (None, Some(b"w"))]);
        let h = validate(&b).unwrap();
        assert_eq!(h.records_count, 2);
        assert_eq!(h.last_offset_delta, 1);
        patch(&mut b, 42, 7, None);
        let h = validate(&b).unwrap();
        assert_eq!((h.base_offset, h.partition_leader_epoch), (42, 7));
        patch(&mut b, 42, 7, Some(5555));
        let h = validate(&b).unwrap();
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp, 5555);
    }

    #[test]
    fn built_records_keep_their_timestamps_and_headers() {
        let h1: [(&[u8], Option<&[u8]>); 2] = [(b"a", Some(b"1")), (b"b", None)];
        let recs = [
            NewRecord { timestamp: 2000, key: Some(b"k"), value: None, headers: &h1 },
            NewRecord { timestamp: 1500, key: None, value: Some(b"v"), headers: &[] },
        ];
        let p = Producer { id: 9, epoch: 2, base_sequence: 4, transactional: true };
        let b = build_records(&recs, Some(p));
        let h = validate(&b).unwrap();
        assert!(h.is_transactional());
        assert_eq!((h.base_timestamp, h.max_timestamp, h.base_sequence), (2000, 2000, 4));
        let decoded = crate::records::decode_batch(&bytes::Bytes::from(b), 1 << 20).unwrap();
        let r = &decoded.records;
        assert_eq!((r[0].timestamp, r[1].timestamp), (2000, 1500));
        assert_eq!(r[0].value, None);
        assert_eq!(r[0].headers.len(), 2);
        assert_eq!(r[0].headers[0].0.as_ref(), b"a");
        assert_eq!(r[0].headers[1].1, None);
        assert_eq!(r[1].key, None);
    }

    #[test]
    fn markers_say_what_they_are() {
        for commit in [true, false] {
            let m = build_marker(7, 3, 41, commit, 10);
            let h = validate(&m).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!((h.producer_id, h.producer_epoch), (7, 3));
            assert_eq!(marker_kind(&m), Some(Marker { commit, coordinator_epoch: 41 }));
        }
        assert_eq!(marker_kind(&build_batch(0, 1, &[(Some(b"k"), None)])[..HEADER_SIZE + 2]), None);
    }

    #[test]
    fn raft_control_batches_have_the_shape_clients_skip() {
        let b = build_control(0x4601, b"{\"m\":1}");
        let h = validate(&b).unwrap();
        assert!(h.is_control() && !h.is_transactional());
        assert_eq!((h.producer_id, h.records_count, h.compression(), h.max_timestamp), (-1, 1, 0, -1));
        // The record's key: length 4 (zigzag varint 8), version 0, then the type.
        let mut pos = HEADER_SIZE;
        get_varlong(&b, &mut pos).unwrap();
        pos += 1;
        get_varlong(&b, &mut pos).unwrap();
        get_varlong(&b, &mut pos).unwrap();
        assert_eq!(b[pos], 8, "key length varint");
        assert_eq!(&b[pos + 1..pos + 5], &[0, 0, 0x46, 0x01]);
        assert_eq!(control_record(&b), Some((0x4601, &b"{\"m\":1}"[..])));
        assert_eq!(marker_kind(&b), None, "not a transaction marker");
        let blank = build_control(CONTROL_LEADER_CHANGE, b"");
        assert_eq!(control_record(&blank), Some((CONTROL_LEADER_CHANGE, &b""[..])));
        // Neither a transaction marker nor a data batch passes for one.
        assert_eq!(control_record(&build_marker(7, 0, 0, true, 1)), None);
        assert_eq!(control_record(&build_batch(0, 1, &[(Some(b"abcd"), Some(b"v"))])), None);
        // Truncated input is no control record, and no panic.
        for cut in 0..blank.len() {
            let _ = control_record(&blank[..cut]);
        }
    }

    #[test]
    fn producer_state_ignores_raft_control_batches() {
        let mut states = crate::producer::ProducerStates::default();
        for t in [CONTROL_LEADER_CHANGE, 0x4601, 0, 1] {
            let b = build_control(t, b"");
            let h = validate(&b).unwrap();
            // Even with a key type of 0 or 1, a batch without producer is no marker.
            assert_eq!(states.update(&h, marker_kind(&b)), None);
        }
        assert!(states.open_transactions().is_empty());
        assert_eq!(states.to_json(), crate::producer::ProducerStates::default().to_json());
    }

    #[test]
    fn flipped_bit_fails_crc() {
        let mut b = build_batch(0, 1, &[(None, Some(b"hello"))]);
        let last = b.len() - 1;
        b[last] ^= 1;
        assert!(matches!(validate(&b), Err(LogError::Corrupt(_))));
    }

    #[test]
    fn count_mismatch_rejected() {
        let mut b = build_batch(0, 1, &[(None, Some(b"a")), (None, Some(b"b"))]);
        b[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&3i32.to_be_bytes());
        let crc = compute_crc(&b);
        b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(validate(&b).is_err(), "more records than offsets");
        b[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&1i32.to_be_bytes());
        let crc = compute_crc(&b);
        b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(validate(&b).is_ok(), "a compacted batch may have gaps");
        assert!(validate_produced(&b).is_err(), "a producer's batch may not");
    }

    #[test]
    fn split_rejects_oversize_and_truncation() {
        let b = build_batch(0, 1, &[(None, Some(&[7u8; 100]))]);
        assert!(matches!(split_and_validate(&b, 50), Err(LogError::RecordTooLarge { .. })));
        assert!(split_and_validate(&b[..b.len() - 1], 1 << 20).is_err());
        let mut two = b.clone();
        two.extend_from_slice(&b);
        assert_eq!(split_and_validate(&two, 1 << 20).unwrap().len(), 2);
    }
}
