//! Helpers shared by the replication integration tests: a TCP connector whose sockets the test
//! can kill, and waiting on a condition with a deadline.

#![allow(dead_code)]

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fjord_replication::transport::{BoxFuture, BoxStream, Connector};

/// Dials over TCP and keeps a duplicate of each socket, so `kill_all` can shut the real sockets
/// down under the transport (both ends see the connection drop, as with a network fault).
#[derive(Default)]
pub struct KillableConnector {
    sockets: Mutex<Vec<std::net::TcpStream>>,
    /// Addresses this connector no longer reaches (a one-way link fault).
    cut: Mutex<Vec<String>>,
}

impl KillableConnector {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Shuts down every socket dialed so far; returns how many.
    pub fn kill_all(&self) -> usize {
        let sockets: Vec<_> = self.sockets.lock().unwrap().drain(..).collect();
        for s in &sockets {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        sockets.len()
    }
}

impl KillableConnector {
    /// Cuts this node's link to `addr` one way: the sockets it dialed there are shut down and new
    /// dials fail. The peer's own connection to this node (its calls, our answers) is untouched.
    pub fn cut(&self, addr: &str) {
        self.cut.lock().unwrap().push(addr.to_string());
        let mut sockets = self.sockets.lock().unwrap();
        sockets.retain(|s| {
            let to_cut = s.peer_addr().map(|a| a.to_string() == addr).unwrap_or(false);
            if to_cut {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
            !to_cut
        });
    }
}

impl KillableConnector {
    /// Undoes every `cut`: dials succeed again (the transport reconnects by itself).
    pub fn heal(&self) {
        self.cut.lock().unwrap().clear();
    }
}

impl Connector for KillableConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            if self.cut.lock().unwrap().iter().any(|a| a == addr) {
                return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "link cut by the test"));
            }
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let std_stream = stream.into_std()?;
            self.sockets.lock().unwrap().push(std_stream.try_clone()?);
            let stream = tokio::net::TcpStream::from_std(std_stream)?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

/// Polls `cond` until it holds, failing the test with `what` after `deadline`.
pub async fn wait_until<F, Fut>(deadline: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        assert!(tokio::time::Instant::now() < give_up, "timed out after {deadline:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}
