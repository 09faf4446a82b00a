//! The classic (non-flexible) Kafka encoding the legacy versions use:
//! big-endian integers, int16-length strings, int32-length arrays, -1 for
//! null. A reader of untrusted bytes that errors instead of panicking.

use anyhow::{bail, ensure, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::{Encodable, StrBytes};

pub struct Reader {
    buf: Bytes,
}

impl Reader {
    pub fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    fn need(&self, n: usize) -> anyhow::Result<()> {
        ensure!(self.buf.remaining() >= n, "needs {n} more bytes, {} left", self.buf.remaining());
        Ok(())
    }

    pub fn i8(&mut self) -> anyhow::Result<i8> {
        self.need(1)?;
        Ok(self.buf.get_i8())
    }

    /// Kafka reads any non-zero byte as true.
    pub fn bool(&mut self) -> anyhow::Result<bool> {
        Ok(self.i8()? != 0)
    }

    pub fn i16(&mut self) -> anyhow::Result<i16> {
        self.need(2)?;
        Ok(self.buf.get_i16())
    }

    pub fn i32(&mut self) -> anyhow::Result<i32> {
        self.need(4)?;
        Ok(self.buf.get_i32())
    }

    pub fn i64(&mut self) -> anyhow::Result<i64> {
        self.need(8)?;
        Ok(self.buf.get_i64())
    }

    pub fn nullable_string(&mut self) -> anyhow::Result<Option<StrBytes>> {
        let len = self.i16()?;
        if len < 0 {
            ensure!(len == -1, "string length {len}");
            return Ok(None);
        }
        let len = len as usize;
        self.need(len)?;
        let bytes = self.buf.split_to(len);
        Ok(Some(StrBytes::from_utf8(bytes).context("string is not UTF-8")?))
    }

    pub fn string(&mut self) -> anyhow::Result<StrBytes> {
        self.nullable_string()?.context("null where the schema has a non-nullable string")
    }

    pub fn nullable_array<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> anyhow::Result<T>,
    ) -> anyhow::Result<Option<Vec<T>>> {
        let n = self.i32()?;
        if n < 0 {
            ensure!(n == -1, "array length {n}");
            return Ok(None);
        }
        // Every element of these schemas takes at least one byte: a count
        // beyond the bytes left is a lie, refused before allocating for it.
        let n = n as usize;
        if n > self.buf.remaining() {
            bail!("array of {n} elements in {} bytes", self.buf.remaining());
        }
        // n is bounded by the bytes left, not by the element size: grow as we go.
        let mut out = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            out.push(item(self)?);
        }
        Ok(Some(out))
    }

    pub fn array<T>(&mut self, item: impl FnMut(&mut Self) -> anyhow::Result<T>) -> anyhow::Result<Vec<T>> {
        self.nullable_array(item)?.context("null where the schema has a non-nullable array")
    }
}

pub struct Writer {
    buf: BytesMut,
}

impl Writer {
    /// A response frame: size (filled in by `finish`), then response
    /// header v0, which is the correlation id alone. Every legacy version
    /// predates flexible versions, so none has the v1 header.
    pub fn response(correlation_id: i32) -> Writer {
        let mut buf = BytesMut::with_capacity(256);
        buf.put_i32(0);
        buf.put_i32(correlation_id);
        Writer { buf }
    }

    /// Bare message bytes (tests encode requests with it).
    #[cfg(test)]
    pub fn bare() -> Writer {
        Writer { buf: BytesMut::new() }
    }

    /// The frame, its size prefix set.
    pub fn finish(mut self) -> Bytes {
        let len = (self.buf.len() - 4) as i32;
        self.buf[..4].copy_from_slice(&len.to_be_bytes());
        self.buf.freeze()
    }

    #[cfg(test)]
    pub fn into_bytes(self) -> Bytes {
        self.buf.freeze()
    }

    pub fn i8(&mut self, v: i8) {
        self.buf.put_i8(v);
    }

    pub fn bool(&mut self, v: bool) {
        self.buf.put_i8(v as i8);
    }

    pub fn i16(&mut self, v: i16) {
        self.buf.put_i16(v);
    }

    pub fn i32(&mut self, v: i32) {
        self.buf.put_i32(v);
    }

    pub fn i64(&mut self, v: i64) {
        self.buf.put_i64(v);
    }

    pub fn nullable_string(&mut self, s: Option<&str>) -> anyhow::Result<()> {
        match s {
            None => self.i16(-1),
            Some(s) => {
                let len = i16::try_from(s.len()).with_context(|| format!("string of {} bytes", s.len()))?;
                self.i16(len);
                self.buf.put_slice(s.as_bytes());
            }
        }
        Ok(())
    }

    pub fn string(&mut self, s: &str) -> anyhow::Result<()> {
        self.nullable_string(Some(s))
    }

    pub fn array<T>(
        &mut self,
        items: &[T],
        mut item: impl FnMut(&mut Self, &T) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.i32(i32::try_from(items.len())?);
        for x in items {
            item(self, x)?;
        }
        Ok(())
    }

    #[cfg(test)]
    pub fn nullable_array<T>(
        &mut self,
        items: Option<&[T]>,
        item: impl FnMut(&mut Self, &T) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        match items {
            None => {
                self.i32(-1);
                Ok(())
            }
            Some(items) => self.array(items, item),
        }
    }

    /// A message whose legacy layout is byte for byte that of a version
    /// kafka-protocol still carries.
    pub fn message<M: Encodable>(&mut self, msg: &M, as_version: i16) -> anyhow::Result<()> {
        msg.encode(&mut self.buf, as_version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lengths_are_checked_before_allocating() {
        // An array claiming 2^31-1 elements in four bytes.
        let mut r = Reader::new(Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]));
        assert!(r.array(|r| r.i8()).is_err());
        let mut r = Reader::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xfe]));
        assert!(r.nullable_array(|r| r.i8()).is_err(), "-2 is no length");
        let mut r = Reader::new(Bytes::from_static(&[0, 5, b'a']));
        assert!(r.string().is_err(), "string past the end");
        let mut r = Reader::new(Bytes::from_static(&[0xff, 0xff]));
        assert!(r.string().is_err(), "null is refused where the schema forbids it");
        let mut r = Reader::new(Bytes::from_static(&[0, 2, 0xc3, 0x28]));
        assert!(r.string().is_err(), "invalid UTF-8");
    }

    proptest! {
        #[test]
        fn primitives_round_trip(
            a in any::<i8>(), b in any::<i16>(), c in any::<i32>(), d in any::<i64>(), e in any::<bool>(),
            s in proptest::option::of(".{0,40}"),
            v in proptest::collection::vec(any::<i32>(), 0..20),
        ) {
            let mut w = Writer::bare();
            w.i8(a); w.i16(b); w.i32(c); w.i64(d); w.bool(e);
            w.nullable_string(s.as_deref()).unwrap();
            w.array(&v, |w, x| { w.i32(*x); Ok(()) }).unwrap();
            let mut r = Reader::new(w.into_bytes());
            prop_assert_eq!(r.i8().unwrap(), a);
            prop_assert_eq!(r.i16().unwrap(), b);
            prop_assert_eq!(r.i32().unwrap(), c);
            prop_assert_eq!(r.i64().unwrap(), d);
            prop_assert_eq!(r.bool().unwrap(), e);
            prop_assert_eq!(r.nullable_string().unwrap().map(|s| s.to_string()), s);
            prop_assert_eq!(r.array(|r| r.i32()).unwrap(), v);
        }
    }
}
