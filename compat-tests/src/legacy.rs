//! Requests at the versions kafka-protocol no longer carries, written and
//! read field by field from Kafka 3.9's schemas (request header v1,
//! response header v0), independently of the broker's own codecs.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;

use crate::RawConn;

/// A request body, built in schema order.
#[derive(Default)]
pub struct Body(BytesMut);

impl Body {
    pub fn new() -> Body {
        Body::default()
    }
    pub fn i8(mut self, v: i8) -> Body {
        self.0.put_i8(v);
        self
    }
    pub fn bool(self, v: bool) -> Body {
        self.i8(v as i8)
    }
    pub fn i16(mut self, v: i16) -> Body {
        self.0.put_i16(v);
        self
    }
    pub fn i32(mut self, v: i32) -> Body {
        self.0.put_i32(v);
        self
    }
    pub fn i64(mut self, v: i64) -> Body {
        self.0.put_i64(v);
        self
    }
    pub fn str(self, s: &str) -> Body {
        self.nstr(Some(s))
    }
    pub fn nstr(mut self, s: Option<&str>) -> Body {
        match s {
            None => self.0.put_i16(-1),
            Some(s) => {
                self.0.put_i16(s.len() as i16);
                self.0.put_slice(s.as_bytes());
            }
        }
        self
    }
    /// An array's element count (-1: null); its elements follow.
    pub fn count(self, n: i32) -> Body {
        self.i32(n)
    }
}

/// A response body, read in schema order; `end` checks nothing is left.
pub struct Read(Bytes);

impl Read {
    fn need(&self, n: usize) {
        assert!(self.0.remaining() >= n, "response ends early: {n} more bytes wanted");
    }
    pub fn i8(&mut self) -> i8 {
        self.need(1);
        self.0.get_i8()
    }
    pub fn bool(&mut self) -> bool {
        self.i8() != 0
    }
    pub fn i16(&mut self) -> i16 {
        self.need(2);
        self.0.get_i16()
    }
    pub fn i32(&mut self) -> i32 {
        self.need(4);
        self.0.get_i32()
    }
    pub fn i64(&mut self) -> i64 {
        self.need(8);
        self.0.get_i64()
    }
    pub fn nstr(&mut self) -> Option<String> {
        let n = self.i16();
        if n < 0 {
            return None;
        }
        self.need(n as usize);
        let b = self.0.split_to(n as usize);
        Some(String::from_utf8(b.to_vec()).expect("UTF-8 string"))
    }
    pub fn str(&mut self) -> String {
        self.nstr().expect("a non-null string")
    }
    /// An array's element count.
    pub fn count(&mut self) -> i32 {
        self.i32()
    }
    /// Reads an array of `item`s.
    pub fn array<T>(&mut self, mut item: impl FnMut(&mut Read) -> T) -> Vec<T> {
        let n = self.count();
        assert!(n >= 0, "null array");
        (0..n).map(|_| item(self)).collect()
    }
    pub fn end(&self) {
        assert!(self.0.is_empty(), "{} bytes left after the last field", self.0.len());
    }
}

/// Sends `body` as `key` v`version` and returns the response body.
pub fn call(conn: &mut RawConn, key: ApiKey, version: i16, body: Body) -> Read {
    let correlation_id = 0x0dd_c0de + version as i32;
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    frame.put_i16(key as i16);
    frame.put_i16(version);
    frame.put_i32(correlation_id);
    let client = "legacy-client";
    frame.put_i16(client.len() as i16);
    frame.put_slice(client.as_bytes());
    frame.put_slice(&body.0);
    let len = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    conn.send_raw(&frame).expect("send");
    let mut resp = conn.recv_frame().unwrap_or_else(|| panic!("broker closed the connection on {key:?} v{version}"));
    assert_eq!(resp.get_i32(), correlation_id, "response header v0: the correlation id alone");
    Read(resp)
}
