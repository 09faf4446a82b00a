//! Record-level access to client batches, for the few paths that need it
//! (compacted topics, timestamp windows, recompression, compaction, the
//! broker's replay of its internal topics and timestamp lookups): bounded
//! decompression, so a small batch cannot expand without limit, in-place
//! parsing of the records (`parse_records`, and `decode_batches` for stored
//! batches as `Bytes` slices), and rebuilding a batch around raw records
//! with another codec while every header field (offsets, timestamps,
//! producer fields) stays as it was.

use std::io::{Read, Write};

use bytes::Bytes;

use crate::batch::{self, BatchHeader, HEADER_SIZE, LOG_OVERHEAD};
use crate::error::{LogError, Result};

const ATTRIBUTES: usize = 21;
const BATCH_LENGTH: usize = 8;
const CRC: usize = 17;
const RECORDS_COUNT: usize = 57;
const COMPRESSION_MASK: i16 = 0x7;

/// How many times `max.message.bytes` a batch may expand to when it is
/// decompressed. Producers size batches by their uncompressed bytes
/// (librdkafka's `batch.size`, the Java client's), so a legitimate batch
/// stays far below this; a decompression bomb stops here.
pub const DECOMPRESSION_FACTOR: usize = 32;

/// The record codecs of the v2 batch attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

impl Codec {
    pub fn from_attributes(attributes: i16) -> Result<Codec> {
        Ok(match attributes & COMPRESSION_MASK {
            0 => Codec::None,
            1 => Codec::Gzip,
            2 => Codec::Snappy,
            3 => Codec::Lz4,
            4 => Codec::Zstd,
            c => return Err(LogError::Corrupt(format!("unknown compression codec {c}"))),
        })
    }

    /// Kafka's names, as `compression.type` spells them.
    pub fn from_name(name: &str) -> Option<Codec> {
        Some(match name {
            "uncompressed" => Codec::None,
            "gzip" => Codec::Gzip,
            "snappy" => Codec::Snappy,
            "lz4" => Codec::Lz4,
            "zstd" => Codec::Zstd,
            _ => return None,
        })
    }
}

/// A codec and its level where the codec has levels (`compression.*.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    pub codec: Codec,
    /// gzip 1–9 (-1: the library default), lz4 1–17, zstd -131072–22.
    pub level: i32,
}

fn too_large(limit: usize) -> LogError {
    LogError::DecompressedTooLarge { limit }
}

/// Reads all of `r`, failing once it yields more than `limit` bytes.
fn read_bounded(mut r: impl Read, limit: usize, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    (&mut r)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| LogError::Corrupt(format!("cannot decompress {what} records: {e}")))?;
    if out.len() > limit {
        return Err(too_large(limit));
    }
    Ok(out)
}

/// Snappy as Kafka clients write it: the xerial framing (a magic header,
/// then length-prefixed raw blocks), or one raw block. Each block declares
/// its length up front, so the limit is checked before anything is allocated.
fn snappy_decompress(data: &[u8], limit: usize) -> Result<Vec<u8>> {
    const MAGIC: &[u8] = b"\x82SNAPPY\x00";
    let bad = |e: snap::Error| LogError::Corrupt(format!("cannot decompress snappy records: {e}"));
    let mut out = Vec::new();
    let block = |b: &[u8], out: &mut Vec<u8>| -> Result<()> {
        let n = snap::raw::decompress_len(b).map_err(bad)?;
        if out.len() + n > limit {
            return Err(too_large(limit));
        }
        let start = out.len();
        out.resize(start + n, 0);
        snap::raw::Decoder::new().decompress(b, &mut out[start..]).map_err(bad)?;
        Ok(())
    };
    if !data.starts_with(MAGIC) {
        block(data, &mut out)?;
        return Ok(out);
    }
    // Magic (8 bytes), version and compatible version (4 each).
    let mut pos = 16usize;
    while pos < data.len() {
        let len_bytes =
            data.get(pos..pos + 4).ok_or_else(|| LogError::Corrupt("truncated snappy block length".into()))?;
        let len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
        pos += 4;
        let b =
            data.get(pos..pos.saturating_add(len)).ok_or_else(|| LogError::Corrupt("truncated snappy block".into()))?;
        block(b, &mut out)?;
        pos += len;
    }
    Ok(out)
}

/// The records section of `batch` (everything after the fixed header),
/// decompressed, never larger than `limit` bytes.
pub fn decompressed_records(batch: &[u8], limit: usize) -> Result<Vec<u8>> {
    let h = BatchHeader::parse(batch)?;
    let body = batch.get(HEADER_SIZE..).ok_or_else(|| LogError::Corrupt("batch shorter than its header".into()))?;
    match Codec::from_attributes(h.attributes)? {
        Codec::None => {
            if body.len() > limit {
                return Err(too_large(limit));
            }
            Ok(body.to_vec())
        }
        Codec::Gzip => read_bounded(flate2::read::MultiGzDecoder::new(body), limit, "gzip"),
        Codec::Lz4 => {
            let d = lz4::Decoder::new(body).map_err(|e| LogError::Corrupt(format!("bad lz4 frame: {e}")))?;
            read_bounded(d, limit, "lz4")
        }
        Codec::Zstd => {
            let d = zstd::stream::read::Decoder::with_buffer(body)
                .map_err(|e| LogError::Corrupt(format!("bad zstd frame: {e}")))?;
            read_bounded(d, limit, "zstd")
        }
        Codec::Snappy => snappy_decompress(body, limit),
    }
}

/// A record header's key and value (None for null).
pub type HeaderRef<'a> = (&'a [u8], Option<&'a [u8]>);

/// One record of a batch, parsed in place.
#[derive(Debug, Clone)]
pub struct RecordRef<'a> {
    pub offset_delta: i64,
    pub timestamp_delta: i64,
    pub key: Option<&'a [u8]>,
    /// None: a null value, a tombstone on a compacted topic.
    pub value: Option<&'a [u8]>,
    /// In the order written; a key may repeat, as Kafka allows.
    pub headers: Vec<HeaderRef<'a>>,
    /// The whole record, length prefix included, for re-use as it is.
    pub raw: &'a [u8],
}

fn varlong(b: &[u8], pos: &mut usize) -> Result<i64> {
    let mut z: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos).ok_or_else(|| LogError::Corrupt("record ends inside a varint".into()))?;
        *pos += 1;
        z |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    Err(LogError::Corrupt("varint longer than 10 bytes".into()))
}

/// A length-prefixed field: None for length -1.
fn field<'a>(b: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>> {
    let len = varlong(b, pos)?;
    if len < 0 {
        return Ok(None);
    }
    let end = pos.checked_add(len as usize).filter(|e| *e <= b.len());
    let end = end.ok_or_else(|| LogError::Corrupt(format!("record field of {len} bytes overruns its record")))?;
    let f = &b[*pos..end];
    *pos = end;
    Ok(Some(f))
}

/// Parses `count` records from a decompressed records section. Each record
/// must end where its length says, headers included (Kafka's "Invalid
/// record size").
pub fn parse_records(section: &[u8], count: usize) -> Result<Vec<RecordRef<'_>>> {
    let mut out = Vec::with_capacity(count.min(section.len()));
    let mut pos = 0usize;
    for _ in 0..count {
        let start = pos;
        let len = varlong(section, &mut pos)?;
        let end = pos.checked_add(len.max(0) as usize).filter(|e| *e <= section.len() && len > 0);
        let end = end.ok_or_else(|| LogError::Corrupt(format!("record of {len} bytes overruns its batch")))?;
        let rec = &section[..end];
        let mut p = pos + 1; // record attributes
        let timestamp_delta = varlong(rec, &mut p)?;
        let offset_delta = varlong(rec, &mut p)?;
        let key = field(rec, &mut p)?;
        let value = field(rec, &mut p)?;
        let n = varlong(rec, &mut p)?;
        if n < 0 {
            return Err(LogError::Corrupt(format!("negative record header count {n}")));
        }
        // Each header takes two bytes at least: the count cannot make this
        // allocate more than the record holds.
        let mut headers = Vec::with_capacity((n as usize).min((end - p) / 2));
        for _ in 0..n {
            let key = field(rec, &mut p)?.ok_or_else(|| LogError::Corrupt("record header with a null key".into()))?;
            headers.push((key, field(rec, &mut p)?));
        }
        if p != end {
            return Err(LogError::Corrupt(format!("record of {len} bytes holds {} bytes after its headers", end - p)));
        }
        out.push(RecordRef { offset_delta, timestamp_delta, key, value, headers, raw: &section[start..end] });
        pos = end;
    }
    if pos != section.len() {
        return Err(LogError::Corrupt(format!("{} bytes after the last of {count} records", section.len() - pos)));
    }
    Ok(out)
}

/// One record of a stored batch, at its offset and timestamp; key, value
/// and headers are slices of the batch's bytes (or, for a compressed batch,
/// of its decompressed records): nothing is copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    /// With LogAppendTime, the batch's (its max timestamp), as Kafka reads it.
    pub timestamp: i64,
    pub key: Option<Bytes>,
    /// None: a null value (a tombstone).
    pub value: Option<Bytes>,
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

/// A stored batch's header and records (a control batch's included).
#[derive(Debug, Clone)]
pub struct Batch {
    pub header: BatchHeader,
    pub records: Vec<Record>,
}

/// Decodes the whole batches of `data` as a log stores them (what a read
/// returns), each checked first (structure, magic, CRC, counts) and its
/// records decompressed within `limit` bytes. Empty data holds no batch.
pub fn decode_batches(data: &Bytes, limit: usize) -> Result<Vec<Batch>> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    batch::split_stored(data)?
        .into_iter()
        .map(|(pos, h)| decode_checked(&data.slice(pos..pos + h.total_size()), h, limit))
        .collect()
}

/// `decode_batches` of exactly one batch.
pub fn decode_batch(data: &Bytes, limit: usize) -> Result<Batch> {
    let h = batch::validate(data)?;
    decode_checked(data, h, limit)
}

fn decode_checked(raw: &Bytes, h: BatchHeader, limit: usize) -> Result<Batch> {
    let section = match Codec::from_attributes(h.attributes)? {
        Codec::None if raw.len() - HEADER_SIZE > limit => return Err(too_large(limit)),
        Codec::None => raw.slice(HEADER_SIZE..),
        _ => Bytes::from(decompressed_records(raw, limit)?),
    };
    let parsed = parse_records(&section, h.records_count.max(0) as usize)?;
    let part = |s: &[u8]| section.slice_ref(s);
    let records = parsed
        .into_iter()
        .map(|r| Record {
            offset: h.base_offset.saturating_add(r.offset_delta),
            timestamp: if h.is_log_append_time() {
                h.max_timestamp
            } else {
                h.base_timestamp.saturating_add(r.timestamp_delta)
            },
            key: r.key.map(part),
            value: r.value.map(part),
            headers: r.headers.into_iter().map(|(k, v)| (part(k), v.map(part))).collect(),
        })
        .collect();
    Ok(Batch { header: h, records })
}

fn compress(records: &[u8], c: Compression) -> Result<Vec<u8>> {
    let io = |e: std::io::Error| LogError::Corrupt(format!("cannot compress records: {e}"));
    Ok(match c.codec {
        Codec::None => records.to_vec(),
        Codec::Gzip => {
            let level = if (1..=9).contains(&c.level) {
                flate2::Compression::new(c.level as u32)
            } else {
                flate2::Compression::default()
            };
            let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
            e.write_all(records).map_err(io)?;
            e.finish().map_err(io)?
        }
        Codec::Lz4 => {
            let mut e = lz4::EncoderBuilder::new()
                .level(c.level.clamp(1, 17) as u32)
                .block_mode(lz4::BlockMode::Independent)
                .build(Vec::new())
                .map_err(io)?;
            e.write_all(records).map_err(io)?;
            let (out, r) = e.finish();
            r.map_err(io)?;
            out
        }
        Codec::Zstd => {
            // A compression context is a few MiB of tables: one per thread,
            // reused, instead of one set up for every batch.
            thread_local! {
                static ZSTD: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
                    const { std::cell::RefCell::new(None) };
            }
            ZSTD.with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.as_ref().is_none_or(|(level, _)| *level != c.level) {
                    *slot = Some((c.level, zstd::bulk::Compressor::new(c.level).map_err(io)?));
                }
                match slot.as_mut() {
                    Some((_, z)) => z.compress(records).map_err(io),
                    None => Err(LogError::Corrupt("no zstd context".into())),
                }
            })?
        }
        Codec::Snappy => {
            // The xerial framing every Kafka client reads.
            const HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
            let mut out = HEADER.to_vec();
            let mut enc = snap::raw::Encoder::new();
            for chunk in records.chunks(32 * 1024) {
                let b = enc.compress_vec(chunk).map_err(|e| LogError::Corrupt(format!("snappy: {e}")))?;
                out.extend_from_slice(&(b.len() as u32).to_be_bytes());
                out.extend_from_slice(&b);
            }
            out
        }
    })
}

/// A batch with `header`'s fields (taken from an existing batch's first
/// `HEADER_SIZE` bytes) around `records` (raw, uncompressed, `count` of
/// them), compressed with `c`; length, attributes, count and CRC follow.
pub fn rebuild(header: &[u8], records: &[u8], count: i32, c: Compression) -> Result<Vec<u8>> {
    let body = compress(records, c)?;
    let mut out = Vec::with_capacity(HEADER_SIZE + body.len());
    out.extend_from_slice(&header[..HEADER_SIZE]);
    out.extend_from_slice(&body);
    let len = (out.len() - LOG_OVERHEAD) as i32;
    out[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&len.to_be_bytes());
    let attrs = (i16::from_be_bytes([out[ATTRIBUTES], out[ATTRIBUTES + 1]]) & !COMPRESSION_MASK) | c.codec as i16;
    out[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attrs.to_be_bytes());
    out[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&count.to_be_bytes());
    let crc = batch::compute_crc(&out);
    out[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

/// `batch` with its records compressed by `c` instead; None when it already
/// uses that codec (or is a control batch, which Kafka leaves as written).
pub fn recompress(batch: &[u8], c: Compression, limit: usize) -> Result<Option<Vec<u8>>> {
    let h = BatchHeader::parse(batch)?;
    if h.is_control() || Codec::from_attributes(h.attributes)? == c.codec {
        return Ok(None);
    }
    let records = decompressed_records(batch, limit)?;
    // Parsing checks the records are whole before they are re-framed.
    parse_records(&records, h.records_count.max(0) as usize)?;
    rebuild(batch, &records, h.records_count, c).map(Some)
}

/// What a topic asks of the records of each produced batch beyond the
/// header checks; decoding happens only when one of these is set.
#[derive(Debug, Clone, Copy)]
pub struct ProduceRules {
    /// `cleanup.policy=compact`: every record needs a key.
    pub require_keys: bool,
    /// CreateTime topics: the accepted [earliest, latest] record timestamps
    /// (`message.timestamp.before.max.ms` / `after.max.ms` around now).
    pub timestamp_window: Option<(i64, i64)>,
    /// `compression.type` naming a codec: batches in another one are
    /// recompressed.
    pub compression: Option<Compression>,
    /// Bound on any batch's decompressed records.
    pub decompressed_limit: usize,
}

impl ProduceRules {
    fn decodes(&self) -> bool {
        self.require_keys || self.timestamp_window.is_some()
    }

    /// Whether any rule is set (most topics: none, and batches go to the
    /// log without their records being read).
    pub fn any(&self) -> bool {
        self.decodes() || self.compression.is_some()
    }
}

/// Applies `rules` to the batches of one partition's produce payload.
/// Refused records are all listed (KIP-467), each by its index among the
/// payload's records; `partition` names the log in their messages. Returns
/// the payload rewritten when a batch was recompressed.
pub fn check_produced(
    payload: &[u8],
    batches: &[(usize, BatchHeader)],
    rules: &ProduceRules,
    partition: &str,
) -> Result<Option<Vec<u8>>> {
    if !rules.any() {
        return Ok(None);
    }
    let mut errors = Vec::new();
    let mut bad_timestamp = false;
    let mut rewritten: Option<Vec<u8>> = None;
    let mut index = 0i32;
    for (i, (pos, h)) in batches.iter().enumerate() {
        let raw = &payload[*pos..*pos + h.total_size()];
        let target =
            rules.compression.filter(|c| !h.is_control() && Codec::from_attributes(h.attributes).ok() != Some(c.codec));
        if h.is_control() || (!rules.decodes() && target.is_none()) {
            if let Some(out) = rewritten.as_mut() {
                out.extend_from_slice(raw);
            }
            index += h.records_count;
            continue;
        }
        let section = decompressed_records(raw, rules.decompressed_limit)?;
        let records = parse_records(&section, h.records_count.max(0) as usize)?;
        for r in &records {
            if rules.require_keys && r.key.is_none() {
                errors.push(crate::error::RecordError {
                    batch_index: index,
                    message: format!(
                        "Compacted topic cannot accept message without key in topic partition {partition}."
                    ),
                });
            }
            if let Some((earliest, latest)) = rules.timestamp_window {
                let ts = h.base_timestamp.saturating_add(r.timestamp_delta);
                // -1 is "no timestamp", which Kafka lets through.
                if ts != -1 && !h.is_log_append_time() && (ts < earliest || ts > latest) {
                    bad_timestamp = true;
                    errors.push(crate::error::RecordError {
                        batch_index: index,
                        message: format!(
                            "Timestamp {ts} of record {index} is outside the window [{earliest}, {latest}] this topic accepts"
                        ),
                    });
                }
            }
            index += 1;
        }
        match target {
            Some(c) => {
                let out = rewritten.get_or_insert_with(|| {
                    let mut v = Vec::with_capacity(payload.len());
                    for (p, hh) in &batches[..i] {
                        v.extend_from_slice(&payload[*p..*p + hh.total_size()]);
                    }
                    v
                });
                out.extend_from_slice(&rebuild(raw, &section, h.records_count, c)?);
            }
            None => {
                if let Some(out) = rewritten.as_mut() {
                    out.extend_from_slice(raw);
                }
            }
        }
    }
    if errors.is_empty() {
        return Ok(rewritten);
    }
    let (kind, message) = if bad_timestamp {
        (
            crate::error::RecordErrorKind::InvalidTimestamp,
            "One or more records have been rejected due to invalid timestamp".to_string(),
        )
    } else {
        let first: Vec<&str> = errors.iter().take(3).map(|e| e.message.as_str()).collect();
        (
            crate::error::RecordErrorKind::InvalidRecord,
            format!("{} record(s) of this batch were rejected; the first: {}", errors.len(), first.join(" | ")),
        )
    };
    Err(LogError::RecordErrors { kind, message, records: errors })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{build_batch, validate};

    fn all_codecs() -> Vec<Compression> {
        [Codec::None, Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd]
            .into_iter()
            .map(|codec| Compression { codec, level: if codec == Codec::Zstd { 3 } else { -1 } })
            .collect()
    }

    #[test]
    fn recompression_round_trips_through_every_codec() {
        let plain = build_batch(5, 1234, &[(Some(b"a"), Some(b"one")), (None, None), (Some(b"c"), Some(&[9u8; 500]))]);
        let want = decompressed_records(&plain, 1 << 20).unwrap();
        for c in all_codecs() {
            let Some(b) = recompress(&plain, c, 1 << 20).unwrap() else {
                assert_eq!(c.codec, Codec::None);
                continue;
            };
            let h = validate(&b).unwrap();
            assert_eq!(Codec::from_attributes(h.attributes).unwrap(), c.codec);
            let orig = BatchHeader::parse(&plain).unwrap();
            assert_eq!(
                (h.base_offset, h.base_timestamp, h.max_timestamp, h.last_offset_delta, h.records_count),
                (orig.base_offset, orig.base_timestamp, orig.max_timestamp, orig.last_offset_delta, orig.records_count)
            );
            let back = decompressed_records(&b, 1 << 20).unwrap();
            assert_eq!(back, want, "{c:?}");
            let recs = parse_records(&back, 3).unwrap();
            assert_eq!(recs[0].key, Some(&b"a"[..]));
            assert!(recs[1].key.is_none() && recs[1].value.is_none());
            // And back to uncompressed: the original bytes exactly.
            let again = recompress(&b, Compression { codec: Codec::None, level: 0 }, 1 << 20).unwrap().unwrap();
            assert_eq!(again, plain);
        }
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_limit() {
        let big = vec![0u8; 4 << 20];
        let plain = build_batch(0, 1, &[(Some(b"k"), Some(&big))]);
        for c in all_codecs().into_iter().filter(|c| c.codec != Codec::None) {
            let bomb = recompress(&plain, c, 8 << 20).unwrap().unwrap();
            assert!(bomb.len() < plain.len() / 10, "{c:?} compresses zeros well");
            let e = decompressed_records(&bomb, 1 << 20).unwrap_err();
            assert!(matches!(e, LogError::DecompressedTooLarge { limit } if limit == 1 << 20), "{c:?}: {e}");
            assert!(decompressed_records(&bomb, 8 << 20).is_ok());
        }
    }

    #[test]
    fn truncated_records_are_corrupt_not_a_panic() {
        let plain = build_batch(0, 1, &[(Some(b"key"), Some(b"value"))]);
        let records = decompressed_records(&plain, 1 << 20).unwrap();
        for cut in 0..records.len() {
            assert!(parse_records(&records[..cut], 1).is_err(), "cut at {cut}");
        }
        assert!(parse_records(&records, 2).is_err(), "fewer records than counted");
        let mut garbage = plain.clone();
        garbage[ATTRIBUTES + 1] |= 4; // claims zstd
        assert!(decompressed_records(&garbage, 1 << 20).is_err());
    }
}
