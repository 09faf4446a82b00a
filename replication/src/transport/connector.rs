//! The network seam of the transport: how a node dials a peer and accepts peers. Production uses
//! tokio's TCP; the deterministic simulation plugs in turmoil's streams behind the same traits.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

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

/// How long a cluster connection may sit idle before the kernel starts keepalive probes.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Time between keepalive probes.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(3);
/// Unanswered probes after which the kernel drops the connection (idle + 3 × 3 s ≈ 19 s).
pub const TCP_KEEPALIVE_RETRIES: u32 = 3;
/// Longest time sent data may stay unacknowledged before the kernel drops the connection
/// (`TCP_USER_TIMEOUT`, Linux): a peer gone without a FIN or RST is noticed even while the
/// election driver's pings (which do this at the application level) are not running.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

/// Sets the options of every production cluster socket: Nagle off (Raft RPCs are small and
/// latency-bound, and the writer already coalesces whatever is queued into one write), TCP
/// keepalive, and `TCP_USER_TIMEOUT`.
fn configure(stream: &tokio::net::TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let sock = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_RETRIES);
    sock.set_tcp_keepalive(&keepalive)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    sock.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT))?;
    Ok(())
}

/// Dials over TCP, with the options of `configure`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpConnector;

impl TcpConnector {
    /// Dials `addr` and configures the socket.
    pub async fn connect_tcp(&self, addr: &str) -> io::Result<tokio::net::TcpStream> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        configure(&stream)?;
        Ok(stream)
    }
}

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move { Ok(Box::new(self.connect_tcp(addr).await?) as BoxStream) })
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

    /// Accepts the next connection and configures its socket.
    pub async fn accept_tcp(&mut self) -> io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
        let (stream, addr) = self.0.accept().await?;
        configure(&stream)?;
        Ok((stream, addr))
    }
}

impl Listener for TcpListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>> {
        Box::pin(async move {
            let (stream, addr) = self.accept_tcp().await?;
            Ok((Box::new(stream) as BoxStream, addr.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_configured(stream: &tokio::net::TcpStream, side: &str) {
        let sock = socket2::SockRef::from(stream);
        assert!(sock.tcp_nodelay().unwrap(), "{side}: TCP_NODELAY");
        assert!(sock.keepalive().unwrap(), "{side}: SO_KEEPALIVE");
        assert_eq!(sock.tcp_keepalive_time().unwrap(), TCP_KEEPALIVE_IDLE, "{side}: TCP_KEEPIDLE");
        assert_eq!(sock.tcp_keepalive_interval().unwrap(), TCP_KEEPALIVE_INTERVAL, "{side}: TCP_KEEPINTVL");
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), TCP_KEEPALIVE_RETRIES, "{side}: TCP_KEEPCNT");
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert_eq!(sock.tcp_user_timeout().unwrap(), Some(TCP_USER_TIMEOUT), "{side}: TCP_USER_TIMEOUT");
    }

    /// The options are read back from the kernel (getsockopt) on both ends of a connection.
    #[tokio::test]
    async fn dialed_and_accepted_sockets_get_keepalive_and_user_timeout() {
        let mut listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (dialed, accepted) = tokio::join!(TcpConnector.connect_tcp(&addr), listener.accept_tcp());
        assert_configured(&dialed.unwrap(), "dialed");
        assert_configured(&accepted.unwrap().0, "accepted");
    }
}
