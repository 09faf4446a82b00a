//! Response frames that may carry segment file ranges instead of bytes.
//!
//! A Fetch response is mostly record batches that already sit in segment
//! files. Encoding them into one buffer copied every byte (a quarter of the
//! broker's CPU in the durable-ingest profile, bench/README.md) and faulted
//! the mapped pages into the broker's resident set. Here the encoder leaves
//! a gap for each large enough records slice, and the connection's writer
//! sends it from the file with `sendfile`: the kernel moves page-cache pages
//! to the socket and the broker never touches them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;
use tokio::io::{AsyncWriteExt, BufWriter, Interest};
use tokio::net::tcp::OwnedWriteHalf;

/// Records slices smaller than this are copied into the frame: below it a
/// `sendfile` call costs more than the copy it saves.
pub const SENDFILE_MIN: usize = 16 * 1024;

pub enum Chunk {
    Mem(Bytes),
    File { file: Arc<File>, position: u64, len: usize },
}

/// One response as it goes on the wire: its chunks in order.
pub struct Frame(pub Vec<Chunk>);

impl From<Bytes> for Frame {
    fn from(b: Bytes) -> Frame {
        Frame(vec![Chunk::Mem(b)])
    }
}

/// Bytes handed to the encoder that live in a segment file: the slice
/// `[ptr, ptr + len)` of a mapping is the file's `[position, position + len)`.
pub struct FileSlice {
    pub ptr: usize,
    pub len: usize,
    pub file: Arc<File>,
    pub position: u64,
}

impl FileSlice {
    /// Where `s` lies in the file, if it is (part of) this slice.
    fn locate(&self, s: &[u8]) -> Option<u64> {
        let p = s.as_ptr() as usize;
        (p >= self.ptr && p + s.len() <= self.ptr + self.len).then(|| self.position + (p - self.ptr) as u64)
    }
}

/// A `BufMut` for kafka-protocol's encoders that turns `put_slice` of a
/// known segment slice into a file chunk instead of a copy.
pub struct ChunkedBuf<'a> {
    done: Vec<Chunk>,
    cur: BytesMut,
    /// Bytes of the frame before `cur`.
    base: usize,
    files: &'a [FileSlice],
}

impl<'a> ChunkedBuf<'a> {
    pub fn new(files: &'a [FileSlice]) -> ChunkedBuf<'a> {
        ChunkedBuf { done: Vec::new(), cur: BytesMut::with_capacity(1024), base: 0, files }
    }

    pub fn into_frame(mut self) -> Frame {
        if !self.cur.is_empty() {
            self.done.push(Chunk::Mem(self.cur.freeze()));
        }
        Frame(self.done)
    }

    /// Total bytes so far.
    pub(crate) fn len(&self) -> usize {
        self.base + self.cur.len()
    }
}

// SAFETY: every method forwards to the inner BytesMut, whose contract holds.
unsafe impl BufMut for ChunkedBuf<'_> {
    fn remaining_mut(&self) -> usize {
        self.cur.remaining_mut()
    }
    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialised `cnt` bytes of `chunk_mut`.
        unsafe { self.cur.advance_mut(cnt) }
    }
    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.cur.chunk_mut()
    }
    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= SENDFILE_MIN {
            if let Some((f, position)) = self.files.iter().find_map(|f| f.locate(src).map(|p| (f, p))) {
                self.base += self.cur.len() + src.len();
                let head = self.cur.split().freeze();
                if !head.is_empty() {
                    self.done.push(Chunk::Mem(head));
                }
                self.done.push(Chunk::File { file: f.file.clone(), position, len: src.len() });
                return;
            }
        }
        self.cur.extend_from_slice(src);
    }
}

// Gaps (seek/range) are used by record-batch encoders, not by the message
// encoders this buffer serves; they work within the current chunk.
impl ByteBufMut for ChunkedBuf<'_> {
    fn offset(&self) -> usize {
        self.len()
    }
    fn seek(&mut self, offset: usize) {
        self.cur.resize(offset.saturating_sub(self.base), 0);
    }
    fn range(&mut self, r: std::ops::Range<usize>) -> &mut [u8] {
        let start = r.start.saturating_sub(self.base).min(self.cur.len());
        let end = r.end.saturating_sub(self.base).clamp(start, self.cur.len());
        &mut self.cur[start..end]
    }
}

/// Writes a frame: memory chunks through the buffer, file chunks with
/// `sendfile` straight from the page cache.
pub async fn write_frame(out: &mut BufWriter<OwnedWriteHalf>, frame: Frame) -> std::io::Result<()> {
    for chunk in frame.0 {
        match chunk {
            Chunk::Mem(b) => out.write_all(&b).await?,
            Chunk::File { file, position, len } => {
                out.flush().await?;
                // Counted before sending, so a client that has the bytes
                // also sees them counted.
                metrics::counter!("fjord_fetch_sendfile_bytes_total").increment(len as u64);
                send_file(out.get_ref().as_ref(), &file, position, len).await?;
            }
        }
    }
    Ok(())
}

async fn send_file(sock: &tokio::net::TcpStream, file: &File, position: u64, len: usize) -> std::io::Result<()> {
    let mut offset = position as libc::off_t;
    let mut left = len;
    while left > 0 {
        sock.writable().await?;
        let sent = sock.try_io(Interest::WRITABLE, || {
            // SAFETY: both descriptors are open for the call (the Arc and
            // the borrow keep them); `offset` is a valid out-parameter.
            let n = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut offset, left) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match sent {
            // The file ends before the range: the segment was cut under us
            // (truncation). The frame's length is already on the wire, so
            // the connection cannot continue.
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "segment file shorter than the fetch",
                ))
            }
            Ok(n) => left -= n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
