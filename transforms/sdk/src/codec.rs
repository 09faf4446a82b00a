//! The wire encodings of ABI.md: `batch` in (decode), `record` out (encode).
//!
//! Everything the host hands over is treated as untrusted: a truncated buffer, a negative length
//! other than -1, invalid UTF-8 or trailing garbage is an [`Error`], never a panic.

use crate::{Error, ErrorKind, Record};

/// The smallest encoded record: offset, timestamp, two null `bytes`, a header count of 0.
const MIN_RECORD_LEN: usize = 8 + 8 + 4 + 4 + 4;
/// The smallest encoded header: an empty key and a null value.
const MIN_HEADER_LEN: usize = 4 + 4;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        if n > self.remaining() {
            return Err(malformed(format!(
                "{what} at byte {} needs {n} bytes, only {} left",
                self.pos,
                self.remaining()
            )));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], Error> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn i64(&mut self, what: &str) -> Result<i64, Error> {
        self.array(what).map(i64::from_le_bytes)
    }

    fn bytes(&mut self, what: &str) -> Result<Option<Vec<u8>>, Error> {
        let at = self.pos;
        match i32::from_le_bytes(self.array(what)?) {
            -1 => Ok(None),
            len if len < 0 => Err(malformed(format!("{what} at byte {at} has length {len}"))),
            len => Ok(Some(self.take(len as usize, what)?.to_vec())),
        }
    }

    fn string(&mut self, what: &str) -> Result<String, Error> {
        let at = self.pos;
        let len = self.u32(what)? as usize;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| malformed(format!("{what} at byte {at} is not UTF-8")))
    }

    fn record(&mut self) -> Result<Record, Error> {
        let offset = self.i64("record offset")?;
        let timestamp = self.i64("record timestamp")?;
        let key = self.bytes("record key")?;
        let value = self.bytes("record value")?;
        let count = self.u32("header count")? as usize;
        // The count is untrusted: never reserve more than the remaining bytes could hold.
        let mut headers = Vec::with_capacity(count.min(self.remaining() / MIN_HEADER_LEN));
        for _ in 0..count {
            let name = self.string("header key")?;
            let value = self.bytes("header value")?;
            headers.push((name, value));
        }
        Ok(Record { offset, timestamp, key, value, headers })
    }

    fn finish(&self, what: &str) -> Result<(), Error> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(malformed(format!("{n} trailing bytes after the {what}"))),
        }
    }
}

fn malformed(message: String) -> Error {
    Error::with_kind(ErrorKind::MalformedBatch, message)
}

/// Decodes a `batch`: `u32 record_count, record * record_count`, with nothing after it.
pub(crate) fn decode_batch(buf: &[u8]) -> Result<Vec<Record>, Error> {
    let mut reader = Reader::new(buf);
    let count = reader.u32("record count")? as usize;
    let mut records = Vec::with_capacity(count.min(reader.remaining() / MIN_RECORD_LEN));
    for _ in 0..count {
        records.push(reader.record()?);
    }
    reader.finish("batch")?;
    Ok(records)
}

/// Decodes one `record` that fills `buf` exactly.
#[cfg(any(test, not(target_arch = "wasm32")))]
pub(crate) fn decode_record(buf: &[u8]) -> Result<Record, Error> {
    let mut reader = Reader::new(buf);
    let record = reader.record()?;
    reader.finish("record")?;
    Ok(record)
}

fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>, what: &str) -> Result<(), Error> {
    match bytes {
        None => out.extend_from_slice(&(-1i32).to_le_bytes()),
        Some(bytes) => {
            let len = i32::try_from(bytes.len()).map_err(|_| too_long(what, bytes.len()))?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(bytes);
        }
    }
    Ok(())
}

fn too_long(what: &str, len: usize) -> Error {
    Error::with_kind(ErrorKind::MalformedRecord, format!("{what} is too long to encode ({len} bytes)"))
}

/// Appends `record` to `out` in the `record` encoding.
pub(crate) fn encode_record(record: &Record, out: &mut Vec<u8>) -> Result<(), Error> {
    out.extend_from_slice(&record.offset.to_le_bytes());
    out.extend_from_slice(&record.timestamp.to_le_bytes());
    put_bytes(out, record.key.as_deref(), "record key")?;
    put_bytes(out, record.value.as_deref(), "record value")?;
    let count = u32::try_from(record.headers.len()).map_err(|_| too_long("header list", record.headers.len()))?;
    out.extend_from_slice(&count.to_le_bytes());
    for (name, value) in &record.headers {
        let len = u32::try_from(name.len()).map_err(|_| too_long("header key", name.len()))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        put_bytes(out, value.as_deref(), "header value")?;
    }
    Ok(())
}

/// Encodes `records` as a `batch`, as the host does.
#[cfg(any(test, not(target_arch = "wasm32")))]
pub(crate) fn encode_batch(records: &[Record]) -> Result<Vec<u8>, Error> {
    let count = u32::try_from(records.len()).map_err(|_| too_long("batch", records.len()))?;
    let mut out = count.to_le_bytes().to_vec();
    for record in records {
        encode_record(record, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            offset: 42,
            timestamp: -7,
            key: Some(b"k".to_vec()),
            value: Some(Vec::new()),
            headers: vec![("a".into(), None), ("".into(), Some(Vec::new())), ("é".into(), Some(vec![0, 255]))],
        }
    }

    #[test]
    fn record_layout_is_the_documented_one() {
        let mut out = Vec::new();
        let record = Record { offset: 1, timestamp: 2, key: None, value: Some(b"xy".to_vec()), headers: vec![] };
        encode_record(&record, &mut out).unwrap();
        let mut expected = Vec::new();
        expected.extend_from_slice(&1i64.to_le_bytes());
        expected.extend_from_slice(&2i64.to_le_bytes());
        expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        expected.extend_from_slice(&[2, 0, 0, 0, b'x', b'y']);
        expected.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(out, expected);
    }

    #[test]
    fn null_and_empty_stay_distinct_through_a_round_trip() {
        let records = vec![sample(), Record { key: Some(Vec::new()), value: None, ..sample() }, Record::default()];
        let decoded = decode_batch(&encode_batch(&records).unwrap()).unwrap();
        assert_eq!(decoded, records);
        assert_eq!(decoded[0].value, Some(Vec::new()));
        assert_eq!(decoded[1].value, None);
        assert_eq!(decoded[0].headers[0].1, None);
        assert_eq!(decoded[0].headers[1].1, Some(Vec::new()));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = encode_batch(&[sample(), sample()]).unwrap();
        for len in 0..full.len() {
            let err = decode_batch(&full[..len]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::MalformedBatch, "truncated to {len}");
        }
    }

    #[test]
    fn bad_input_is_rejected() {
        let mut trailing = encode_batch(&[sample()]).unwrap();
        trailing.push(0);
        assert!(decode_batch(&trailing).unwrap_err().message().contains("trailing"));

        let mut negative = encode_batch(&[Record::default()]).unwrap();
        negative[4 + 16..4 + 20].copy_from_slice(&(-2i32).to_le_bytes());
        assert!(decode_batch(&negative).unwrap_err().message().contains("length -2"));

        let mut bad_utf8 = encode_batch(&[Record { headers: vec![("ab".into(), None)], ..Record::default() }]).unwrap();
        let at = bad_utf8.len() - 4 - 2;
        bad_utf8[at] = 0xff;
        assert!(decode_batch(&bad_utf8).unwrap_err().message().contains("not UTF-8"));

        // A huge count with no bytes behind it must fail cleanly, not try to allocate.
        let err = decode_batch(&u32::MAX.to_le_bytes()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MalformedBatch);
        let mut huge_headers = encode_batch(&[Record::default()]).unwrap();
        let at = huge_headers.len() - 4;
        huge_headers[at..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_batch(&huge_headers).unwrap_err().kind(), ErrorKind::MalformedBatch);

        // A value length that points past the end.
        let mut long_value = encode_batch(&[Record { value: Some(b"abc".to_vec()), ..Record::default() }]).unwrap();
        long_value[4 + 20..4 + 24].copy_from_slice(&100i32.to_le_bytes());
        assert!(decode_batch(&long_value).unwrap_err().message().contains("record value"));
    }

    #[test]
    fn a_single_record_decodes_only_when_it_fills_the_buffer() {
        let mut out = Vec::new();
        encode_record(&sample(), &mut out).unwrap();
        assert_eq!(decode_record(&out).unwrap(), sample());
        out.push(1);
        assert!(decode_record(&out).is_err());
    }

    #[test]
    fn empty_batch() {
        assert_eq!(decode_batch(&[0, 0, 0, 0]).unwrap(), vec![]);
        assert_eq!(encode_batch(&[]).unwrap(), vec![0, 0, 0, 0]);
    }
}
