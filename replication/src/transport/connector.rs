//! The network seam of the transport: how a node dials a peer and accepts peers. Production uses
//! tokio's TCP; the deterministic simulation plugs in turmoil's streams behind the same traits.

use std::future::Future;
use std::io;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to or from a peer node.
pub trait PeerStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> PeerStream for T {}

pub type BoxStream = Box<dyn PeerStream>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens connections to peers.
pub trait Connector: Send + Sync + 'static {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>>;
}

/// Accepts connections from peers.
pub trait Listener: Send + 'static {
    /// The next inbound stream and the peer's address (for logs).
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>>;
}

/// Dials over TCP with Nagle off: Raft RPCs are small and latency-bound, and the writer already
/// coalesces whatever is queued into one write.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

/// A bound TCP listener.
#[derive(Debug)]
pub struct TcpListener(pub tokio::net::TcpListener);

impl TcpListener {
    pub async fn bind(addr: &str) -> io::Result<Self> {
        Ok(Self(tokio::net::TcpListener::bind(addr).await?))
    }

    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.local_addr()
    }
}

impl Listener for TcpListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>> {
        Box::pin(async move {
            let (stream, addr) = self.0.accept().await?;
            stream.set_nodelay(true)?;
            Ok((Box::new(stream) as BoxStream, addr.to_string()))
        })
    }
}
