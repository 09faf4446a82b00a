//! The node-to-node frame: `u32 len | u8 kind | u64 corr_id | u64 group_id | u8 rpc | body`,
//! big-endian, `len` counting everything after itself. Decoding never panics on any input.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Bytes after the length prefix and before the body: kind, corr id, group id, rpc.
pub const HEADER_LEN: usize = 1 + 8 + 8 + 1;
/// Default largest frame (after the length prefix) a node accepts: Kafka's
/// `socket.request.max.bytes` default, 100 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 104_857_600;

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A request from the dialing node; answered by a `Response` with the same corr id.
    Request = 0,
    /// The answer to a request.
    Response = 1,
    /// The first frame of a connection, from the dialer: cluster id, from, to, protocol version.
    Hello = 2,
    /// The acceptor's answer to `Hello`.
    HelloAck = 3,
}

impl TryFrom<u8> for Kind {
    type Error = FrameError;
    fn try_from(v: u8) -> Result<Self, FrameError> {
        Ok(match v {
            0 => Kind::Request,
            1 => Kind::Response,
            2 => Kind::Hello,
            3 => Kind::HelloAck,
            other => return Err(FrameError::UnknownKind(other)),
        })
    }
}

/// One decoded frame. `body` is a slice of the connection's read buffer: no copy was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub corr_id: u64,
    pub group_id: u64,
    pub rpc: u8,
    pub body: Bytes,
}

/// Why a byte stream is not a valid frame sequence. Each closes the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort { len: usize },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
}

impl Frame {
    /// Bytes this frame takes on the wire.
    pub fn wire_len(&self) -> usize {
        LEN_PREFIX + HEADER_LEN + self.body.len()
    }

    /// Appends the encoded frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        encode_header(dst, self.kind, self.corr_id, self.group_id, self.rpc, self.body.len());
        dst.extend_from_slice(&self.body);
    }
}

/// Appends a frame header for a body of `body_len` bytes that the caller appends next, so bodies
/// built in pieces need no intermediate buffer.
pub fn encode_header(dst: &mut BytesMut, kind: Kind, corr_id: u64, group_id: u64, rpc: u8, body_len: usize) {
    dst.reserve(LEN_PREFIX + HEADER_LEN);
    // A body that does not fit u32 cannot be sent; callers keep bodies under the max frame size,
    // which is far below that, and the receiver would refuse the frame anyway.
    dst.put_u32((HEADER_LEN + body_len) as u32);
    dst.put_u8(kind as u8);
    dst.put_u64(corr_id);
    dst.put_u64(group_id);
    dst.put_u8(rpc);
}

/// Frame size limit before the handshake completes: a `Hello` or `HelloAck` is a few dozen bytes,
/// and an unauthenticated socket must not make us wait for, or buffer, a large frame.
pub const HANDSHAKE_MAX_FRAME_BYTES: usize = 1024;

/// How far ahead of the bytes received the read buffer may grow for one frame: a length prefix
/// alone does not get its whole frame's memory.
const RESERVE_AHEAD: usize = 1 << 20;

/// Splits frames off the front of a read buffer.
#[derive(Clone, Copy, Debug)]
pub struct FrameDecoder {
    max_frame_bytes: usize,
}

impl FrameDecoder {
    pub fn new(max_frame_bytes: usize) -> Self {
        Self { max_frame_bytes }
    }

    /// Returns the next complete frame, `None` if more bytes are needed, or an error once the
    /// stream is known to be invalid (checked as soon as the length prefix is read, so an oversize
    /// frame is refused before its bytes are buffered).
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > self.max_frame_bytes {
            return Err(FrameError::TooLarge { len, max: self.max_frame_bytes });
        }
        if len < HEADER_LEN {
            return Err(FrameError::TooShort { len });
        }
        if buf.len() < LEN_PREFIX + len {
            buf.reserve((LEN_PREFIX + len - buf.len()).min(RESERVE_AHEAD));
            return Ok(None);
        }
        buf.advance(LEN_PREFIX);
        let mut frame = buf.split_to(len).freeze();
        let kind = Kind::try_from(frame.get_u8())?;
        let corr_id = frame.get_u64();
        let group_id = frame.get_u64();
        let rpc = frame.get_u8();
        Ok(Some(Frame { kind, corr_id, group_id, rpc, body: frame }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![Just(Kind::Request), Just(Kind::Response), Just(Kind::Hello), Just(Kind::HelloAck)]
    }

    fn frame() -> impl Strategy<Value = Frame> {
        (kind(), any::<u64>(), any::<u64>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(
            |(kind, corr_id, group_id, rpc, body)| Frame { kind, corr_id, group_id, rpc, body: Bytes::from(body) },
        )
    }

    /// A length prefix announcing the largest allowed frame reserves at most `RESERVE_AHEAD`.
    #[test]
    fn a_length_prefix_alone_does_not_reserve_the_frame() {
        let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        let mut buf = BytesMut::new();
        buf.put_u32(DEFAULT_MAX_FRAME_BYTES as u32);
        assert!(decoder.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() <= RESERVE_AHEAD + LEN_PREFIX, "reserved {} bytes", buf.capacity());
        let pre = FrameDecoder::new(HANDSHAKE_MAX_FRAME_BYTES);
        assert!(matches!(pre.decode(&mut buf), Err(FrameError::TooLarge { .. })));
    }

    proptest! {
        /// Any sequence of frames, delivered in arbitrary read chunks, decodes back to itself.
        #[test]
        fn frames_round_trip_across_chunk_boundaries(
            frames in proptest::collection::vec(frame(), 0..20),
            chunk in 1usize..64,
        ) {
            let mut wire = BytesMut::new();
            for f in &frames {
                f.encode(&mut wire);
            }
            prop_assert_eq!(wire.len(), frames.iter().map(Frame::wire_len).sum::<usize>());
            let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(f) = decoder.decode(&mut buf).unwrap() {
                    out.push(f);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(out, frames);
        }

        /// Arbitrary bytes never panic the decoder; every frame it yields lies within the input.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000), max in 0usize..1000) {
            let decoder = FrameDecoder::new(max);
            let mut buf = BytesMut::from(&bytes[..]);
            let mut consumed = 0;
            loop {
                let before = buf.len();
                match decoder.decode(&mut buf) {
                    Ok(Some(f)) => {
                        prop_assert!(f.wire_len() <= LEN_PREFIX + max);
                        consumed += before - buf.len();
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            prop_assert!(consumed <= bytes.len());
        }

        /// A valid frame cut anywhere is incomplete, never an error or a frame.
        #[test]
        fn truncated_frame_waits_for_more(f in frame(), cut in 0usize..400) {
            let mut wire = BytesMut::new();
            f.encode(&mut wire);
            let cut = cut % wire.len();
            let mut buf = BytesMut::from(&wire[..cut]);
            prop_assert_eq!(FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES).decode(&mut buf), Ok(None));
        }

        /// A length prefix over the maximum is refused before the body arrives.
        #[test]
        fn oversize_is_refused_from_the_prefix(max in 18usize..10_000, extra in 1usize..1000) {
            let len = max + extra;
            let mut buf = BytesMut::new();
            buf.put_u32(len as u32);
            prop_assert_eq!(
                FrameDecoder::new(max).decode(&mut buf),
                Err(FrameError::TooLarge { len, max })
            );
        }
    }

    #[test]
    fn short_length_and_unknown_kind_are_errors() {
        let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(&[0, 0, 0]);
        assert_eq!(decoder.decode(&mut buf), Err(FrameError::TooShort { len: 3 }));

        let mut buf = BytesMut::new();
        buf.put_u32(HEADER_LEN as u32);
        buf.put_u8(9);
        buf.put_slice(&[0; HEADER_LEN - 1]);
        assert_eq!(decoder.decode(&mut buf), Err(FrameError::UnknownKind(9)));
    }
}
