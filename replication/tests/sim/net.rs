//! The transport's network seam (`Connector` / `Listener`) on turmoil's simulated TCP, with a reset
//! switch on every connection: turmoil drops the segments of a partitioned link without ever
//! resending them, so a connection that lost one stalls forever, where real TCP would retransmit
//! after the heal or reset the connection. The simulator resets the connections crossing a link
//! when it heals it (and those of a crashed host), which is what real TCP ends up doing.

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

/// Every live connection end of the simulation, by (local host, remote host).
#[derive(Default)]
pub struct Links {
    ends: Mutex<Vec<(IpAddr, IpAddr, Weak<Switch>)>>,
}

impl Links {
    fn register(&self, local: IpAddr, remote: IpAddr) -> Arc<Switch> {
        let switch = Arc::new(Switch::default());
        let mut ends = self.ends.lock().unwrap();
        ends.retain(|(_, _, w)| w.strong_count() > 0);
        ends.push((local, remote, Arc::downgrade(&switch)));
        switch
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

/// A turmoil stream that fails with `ConnectionReset` once its switch trips.
struct SimStream {
    inner: turmoil::net::TcpStream,
    switch: Arc<Switch>,
}

fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "connection reset by the simulator")
}

impl AsyncRead for SimStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.switch.reader.register(cx.waker());
        if self.switch.reset.load(Ordering::SeqCst) {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
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

fn wrap(links: &Links, stream: turmoil::net::TcpStream) -> io::Result<BoxStream> {
    let switch = links.register(stream.local_addr()?.ip(), stream.peer_addr()?.ip());
    Ok(Box::new(SimStream { inner: stream, switch }))
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
