//! The transport's network seam (`Connector` / `Listener`) on turmoil's simulated TCP, with a reset
//! switch on every connection: turmoil drops the segments of a partitioned link without ever
//! resending them, so a connection that lost one stalls forever, where real TCP would retransmit
//! after the heal or reset the connection. The simulator resets the connections crossing a link
//! when it heals it (and those of a crashed host), which is what real TCP ends up doing.
//!
//! A link can also duplicate or reorder the transport's frames (`Mangle`): the receiving end
//! cuts the bytes it reads into frames and hands every other one over twice, or each pair in
//! the opposite order. TCP itself does neither; RPCs do get duplicated and reordered around
//! reconnects and by concurrent handling, and Raft must not care.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use fjord_replication::transport::{BoxFuture, BoxStream, Connector, Listener};
use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One connection's reset switch; both ends of a connection have their own.
#[derive(Default)]
struct Switch {
    reset: AtomicBool,
    reader: AtomicWaker,
    writer: AtomicWaker,
}

impl Switch {
    fn trip(&self) {
        self.reset.store(true, Ordering::SeqCst);
        self.reader.wake();
        self.writer.wake();
    }
}

/// What a link does to the frames it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mangle {
    Pass,
    /// Every other frame arrives twice.
    Duplicate,
    /// Frames arrive in swapped pairs (a frame waits for the next one).
    Reorder,
}

/// Every live connection end of the simulation, by (local host, remote host).
#[derive(Default)]
pub struct Links {
    ends: Mutex<Vec<(IpAddr, IpAddr, Weak<Switch>)>>,
    /// What the frames from a host to another go through (absent: `Pass`), by (from, to).
    mangles: Mutex<BTreeMap<(IpAddr, IpAddr), Mangle>>,
    /// Frames delivered twice, and pairs delivered swapped.
    pub duplicated: std::sync::atomic::AtomicU64,
    pub reordered: std::sync::atomic::AtomicU64,
}

impl Links {
    fn register(&self, local: IpAddr, remote: IpAddr) -> Arc<Switch> {
        let switch = Arc::new(Switch::default());
        let mut ends = self.ends.lock().unwrap();
        ends.retain(|(_, _, w)| w.strong_count() > 0);
        ends.push((local, remote, Arc::downgrade(&switch)));
        switch
    }

    /// Sets what the frames `from` sends `to` go through, on its connections now and later.
    pub fn set_mangle(&self, from: IpAddr, to: IpAddr, mangle: Mangle) {
        self.mangles.lock().unwrap().insert((from, to), mangle);
    }

    fn mangle(&self, from: IpAddr, to: IpAddr) -> Mangle {
        self.mangles.lock().unwrap().get(&(from, to)).copied().unwrap_or(Mangle::Pass)
    }

    /// Resets every connection between `a` and `b` (either direction); with `b = None`, every
    /// connection of `a`. Returns how many connection ends were reset.
    pub fn reset(&self, a: IpAddr, b: Option<IpAddr>) -> usize {
        let ends = self.ends.lock().unwrap();
        let mut n = 0;
        for (local, remote, w) in ends.iter() {
            let hit = match b {
                Some(b) => (*local == a && *remote == b) || (*local == b && *remote == a),
                None => *local == a || *remote == a,
            };
            if let Some(s) = w.upgrade().filter(|_| hit) {
                s.trip();
                n += 1;
            }
        }
        n
    }
}

/// A turmoil stream that fails with `ConnectionReset` once its switch trips, and hands the frames
/// it reads over as its link's `Mangle` says.
struct SimStream {
    inner: turmoil::net::TcpStream,
    switch: Arc<Switch>,
    links: Weak<Links>,
    /// (this host, the other): the frames read here come from the other.
    local: IpAddr,
    remote: IpAddr,
    /// Bytes read from `inner` not yet cut into a whole frame.
    partial: Vec<u8>,
    /// Bytes ready for the reader.
    ready: VecDeque<u8>,
    /// A frame held back until the next one (reordering).
    held: Option<Vec<u8>>,
    /// Frames seen: the first (the handshake) always passes; duplication takes every other.
    frames: u64,
}

fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "connection reset by the simulator")
}

impl SimStream {
    fn count(&self, which: impl Fn(&Links) -> &std::sync::atomic::AtomicU64) {
        if let Some(l) = self.links.upgrade() {
            which(&l).fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Cuts whole frames (`u32` length prefix) off `partial` into `ready`, mangled.
    fn cut_frames(&mut self) {
        while self.partial.len() >= 4 {
            let len = u32::from_be_bytes([self.partial[0], self.partial[1], self.partial[2], self.partial[3]]) as usize;
            if self.partial.len() < 4 + len {
                return;
            }
            let frame: Vec<u8> = self.partial.drain(..4 + len).collect();
            self.frames += 1;
            let mangle = match self.links.upgrade() {
                Some(l) if self.frames > 1 => l.mangle(self.remote, self.local),
                _ => Mangle::Pass,
            };
            match mangle {
                Mangle::Pass => {
                    if let Some(h) = self.held.take() {
                        self.ready.extend(h);
                    }
                    self.ready.extend(&frame);
                }
                Mangle::Duplicate => {
                    self.ready.extend(&frame);
                    if self.frames.is_multiple_of(2) {
                        self.ready.extend(&frame);
                        self.count(|l| &l.duplicated);
                    }
                }
                Mangle::Reorder => match self.held.take() {
                    Some(h) => {
                        self.ready.extend(&frame);
                        self.ready.extend(h);
                        self.count(|l| &l.reordered);
                    }
                    None => self.held = Some(frame),
                },
            }
        }
    }
}

impl AsyncRead for SimStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.switch.reader.register(cx.waker());
        if self.switch.reset.load(Ordering::SeqCst) {
            return Poll::Ready(Err(reset_error()));
        }
        loop {
            if !self.ready.is_empty() {
                let n = buf.remaining().min(self.ready.len());
                let bytes: Vec<u8> = self.ready.drain(..n).collect();
                buf.put_slice(&bytes);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut self.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    // The other end closed: a held frame still arrives, then the end.
                    match self.held.take() {
                        Some(h) => self.ready.extend(h),
                        None => {
                            let rest = std::mem::take(&mut self.partial);
                            if rest.is_empty() {
                                return Poll::Ready(Ok(()));
                            }
                            self.ready.extend(rest);
                        }
                    }
                }
                Poll::Ready(Ok(())) => {
                    let filled = read.filled().to_vec();
                    self.partial.extend_from_slice(&filled);
                    self.cut_frames();
                }
                other => return other,
            }
        }
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.switch.writer.register(cx.waker());
        if self.switch.reset.load(Ordering::SeqCst) {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn wrap(links: &Arc<Links>, stream: turmoil::net::TcpStream) -> io::Result<BoxStream> {
    let (local, remote) = (stream.local_addr()?.ip(), stream.peer_addr()?.ip());
    let switch = links.register(local, remote);
    Ok(Box::new(SimStream {
        inner: stream,
        switch,
        links: Arc::downgrade(links),
        local,
        remote,
        partial: Vec::new(),
        ready: VecDeque::new(),
        held: None,
        frames: 0,
    }))
}

/// Dials simulated hosts by name (`"n1:7000"`).
pub struct SimConnector {
    pub links: Arc<Links>,
}

impl Connector for SimConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            wrap(&self.links, stream)
        })
    }
}

pub struct SimListener {
    inner: turmoil::net::TcpListener,
    links: Arc<Links>,
}

impl SimListener {
    pub async fn bind(port: u16, links: Arc<Links>) -> io::Result<Self> {
        let inner = turmoil::net::TcpListener::bind((IpAddr::from([0, 0, 0, 0]), port)).await?;
        Ok(Self { inner, links })
    }
}

impl Listener for SimListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>> {
        Box::pin(async move {
            let (stream, addr) = self.inner.accept().await?;
            Ok((wrap(&self.links, stream)?, addr.to_string()))
        })
    }
}
