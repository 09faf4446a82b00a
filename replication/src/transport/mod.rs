//! Node-to-node transport: one connection per ordered node pair carries the RPCs of every Raft
//! group. The dialer sends requests and reads responses on the same socket; the acceptor answers.
//! A writer task per connection turns everything queued meanwhile into one write.

pub mod connector;
pub mod frame;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch};

pub use connector::{BoxFuture, BoxStream, Connector, Listener, TcpConnector, TcpListener};
pub use frame::{Frame, FrameDecoder, FrameError, Kind, DEFAULT_MAX_FRAME_BYTES, HANDSHAKE_MAX_FRAME_BYTES};

use crate::types::{GroupId, NodeId};

/// Version of the frame and RPC encoding; peers with another version are refused.
pub const PROTOCOL_VERSION: u16 = 1;

/// The `rpc` byte of a liveness ping: answered by the transport itself with an empty body, never
/// passed to the handler. Raft RPC codes start at 1.
pub const RPC_PING: u8 = 0;

/// Settings of a node's transport.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Peers of another cluster are refused at the handshake.
    pub cluster_id: String,
    pub node_id: NodeId,
    /// Largest frame accepted after its length prefix; a peer sending more is disconnected.
    pub max_frame_bytes: usize,
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    /// Time allowed to connect and exchange the handshake.
    pub handshake_timeout: Duration,
    /// Bytes queued for one peer and not yet written past which calls fail at once as
    /// `Unreachable`, instead of piling up behind a peer that does not read.
    pub max_queued_bytes: usize,
    /// Pings in a row that time out after which the connection is closed and dialed again: a
    /// half-open connection (peer gone without a FIN or RST) is otherwise never noticed.
    pub max_unanswered_pings: u32,
}

impl TransportConfig {
    pub fn new(cluster_id: impl Into<String>, node_id: NodeId) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            node_id,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            reconnect_backoff_min: Duration::from_millis(20),
            reconnect_backoff_max: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(3),
            max_queued_bytes: 2 * DEFAULT_MAX_FRAME_BYTES + (16 << 20),
            max_unanswered_pings: 5,
        }
    }
}

/// Serves the requests peers send: the group registry of this node.
pub trait InboundHandler: Send + Sync + 'static {
    /// Answers one request; the returned bytes are the response body.
    fn handle(&self, from: NodeId, group: GroupId, rpc: u8, body: Bytes) -> BoxFuture<'static, Bytes>;
}

/// Why a call got no response.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    #[error("node {node} is unreachable: {reason}")]
    Unreachable { node: NodeId, reason: String },
    #[error("no response from node {node} within {timeout:?}")]
    Timeout { node: NodeId, timeout: Duration },
    /// The request would exceed the frame size peers accept; it was not sent.
    #[error("request of {len} bytes exceeds the maximum frame of {max}")]
    TooLarge { len: usize, max: usize },
}

/// Counters of one transport, for tests and the idle-cost measurement.
#[derive(Debug, Default)]
struct Counters {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    writes: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    connections_established: AtomicU64,
    stale_requests_skipped: AtomicU64,
    inbound_open: AtomicU64,
}

/// A snapshot of the transport's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Frames handed to a writer for its socket (skipped stale requests not included).
    pub frames_sent: u64,
    pub bytes_sent: u64,
    /// Write calls on sockets: frames_sent / writes is the coalescing factor.
    pub writes: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    /// Outbound connections that completed the handshake, reconnections included.
    pub connections_established: u64,
    /// Queued requests dropped unsent because their call had timed out or been dropped.
    pub stale_requests_skipped: u64,
    /// Inbound connections open now (past the handshake).
    pub inbound_connections: u64,
}

/// Handshake body (postcard), sent by the dialer in a `Hello` frame. The acceptor answers with a
/// `HelloAck` frame holding `Result<Hello, String>`: its own mirror image, or why it refuses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub cluster_id: String,
    pub from: NodeId,
    pub to: NodeId,
    pub version: u16,
}

/// A node's transport. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    config: TransportConfig,
    connector: Arc<dyn Connector>,
    handler: Arc<dyn InboundHandler>,
    peers: Mutex<BTreeMap<NodeId, Arc<Peer>>>,
    /// The live inbound connection from each node: its sequence number, and the sender whose drop
    /// closes it. A peer dials one connection at a time, so a newer handshake from it means the
    /// older connection is dead on its side (possibly half-open here, never to see a FIN).
    inbound: Mutex<BTreeMap<NodeId, (u64, oneshot::Sender<()>)>>,
    next_inbound: AtomicU64,
    next_corr_id: AtomicU64,
    counters: Counters,
    shutdown: watch::Sender<bool>,
}

/// The outbound side towards one peer.
struct Peer {
    id: NodeId,
    addr: Mutex<String>,
    conn: Mutex<PeerConn>,
    /// When a frame last arrived from this peer on our connection to it.
    last_heard: Mutex<Option<tokio::time::Instant>>,
    /// Pings in a row that timed out on the current connection.
    unanswered_pings: std::sync::atomic::AtomicU32,
    /// When this peer's process was last seen gone: a dial refused (nothing listens at its
    /// address) or the connection closed by its end (a process that dies has its sockets closed
    /// by the kernel at once). Cleared when a dial connects or the peer dials in.
    gone_at: Mutex<Option<tokio::time::Instant>>,
}

#[derive(Default)]
struct PeerConn {
    /// The writer queue of the live connection, each request with its corr id; `None` while
    /// (re)connecting.
    tx: Option<mpsc::UnboundedSender<Queued>>,
    /// Requests sent on the live connection and not yet answered.
    pending: BTreeMap<u64, oneshot::Sender<Bytes>>,
    /// Bytes in the live connection's queue, not yet taken by its writer.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Dropping it ends the live connection, even a writer stuck on a peer that does not read.
    kill: Option<oneshot::Sender<()>>,
}

impl Peer {
    /// Fails every in-flight request: their connection is gone, and a reconnection would not
    /// answer them. Dropping the senders makes each caller see `Unreachable`.
    fn disconnect(&self) {
        let mut conn = lock(&self.conn);
        conn.tx = None;
        conn.kill = None;
        conn.pending.clear();
    }
}

/// A frame waiting for its connection's writer, with the corr id of its call (on an outbound
/// connection, the writer drops it unsent once that call is no longer pending): its header with
/// the small parts of its body that came first copied after it, then the rest of the body in
/// the caller's own buffers (entries' batches), which are written from there, not copied.
struct Queued {
    corr_id: u64,
    head: Bytes,
    tail: Vec<Bytes>,
}

impl Queued {
    /// A frame whose body the caller handed over whole.
    fn whole(corr_id: u64, head: BytesMut, body: Option<Bytes>) -> Queued {
        Queued { corr_id, head: head.freeze(), tail: body.into_iter().collect() }
    }

    fn len(&self) -> usize {
        self.head.len() + self.tail.iter().map(Bytes::len).sum::<usize>()
    }
}

/// Body parts up to this size are copied behind the frame header rather than written from their
/// own buffer: a copy costs less than another write for them.
const INLINE_PIECE_MAX: usize = 4096;

/// Removes a call from the pending map when its future ends, however it ends: a caller that timed
/// out or dropped the future leaves no entry behind, so its queued request is not sent.
struct PendingGuard<'a> {
    peer: &'a Peer,
    corr_id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.peer.conn).pending.remove(&self.corr_id);
    }
}

/// A poisoned lock only means another task panicked while holding it; the maps stay consistent
/// (every critical section is a single insert or remove), so keep going.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Transport {
    pub fn new(config: TransportConfig, connector: Arc<dyn Connector>, handler: Arc<dyn InboundHandler>) -> Self {
        let (shutdown, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                config,
                connector,
                handler,
                peers: Mutex::new(BTreeMap::new()),
                inbound: Mutex::new(BTreeMap::new()),
                next_inbound: AtomicU64::new(1),
                next_corr_id: AtomicU64::new(1),
                counters: Counters::default(),
                shutdown,
            }),
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.config.node_id
    }

    /// Makes `id` reachable at `addr`; the first call starts its connection loop, later calls
    /// change the address used from the next (re)connection on.
    /// `add_peer` for an address learnt second-hand (a group's membership): a peer this node
    /// already dials keeps its address, since the one given first (the node's configuration,
    /// which may name a proxy or a NAT address) is the one that reaches it from here.
    pub fn add_peer_if_unknown(&self, id: NodeId, addr: &str) {
        if lock(&self.inner.peers).contains_key(&id) {
            return;
        }
        self.add_peer(id, addr);
    }

    pub fn add_peer(&self, id: NodeId, addr: &str) {
        if id == self.inner.config.node_id {
            return;
        }
        let mut peers = lock(&self.inner.peers);
        if let Some(peer) = peers.get(&id) {
            let mut a = lock(&peer.addr);
            if *a != addr {
                *a = addr.to_string();
            }
            return;
        }
        let peer = Arc::new(Peer {
            id,
            addr: Mutex::new(addr.to_string()),
            conn: Mutex::new(PeerConn::default()),
            last_heard: Mutex::new(None),
            unanswered_pings: Default::default(),
            gone_at: Mutex::new(None),
        });
        peers.insert(id, peer.clone());
        tokio::spawn(dial_loop(self.inner.clone(), peer));
    }

    /// Accepts peers' connections on `listener` until shutdown.
    pub fn serve(&self, mut listener: impl Listener) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let mut shutdown = inner.shutdown.subscribe();
            loop {
                let accepted = tokio::select! {
                    biased;
                    r = listener.accept() => r,
                    _ = shutdown.wait_for(|s| *s) => return,
                };
                match accepted {
                    Ok((stream, addr)) => {
                        tokio::spawn(serve_connection(inner.clone(), stream, addr));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cluster listener accept failed");
                        // Accept errors are mostly resource exhaustion; do not spin on them.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }

    /// True while an outbound connection to `id` is established.
    pub fn is_connected(&self, id: NodeId) -> bool {
        let peers = lock(&self.inner.peers);
        peers.get(&id).is_some_and(|p| lock(&p.conn).tx.is_some())
    }

    /// Sends a request and waits for its response body (`body`'s pieces, one after another).
    pub async fn call(
        &self,
        target: NodeId,
        group: GroupId,
        rpc: u8,
        body: &[&[u8]],
        timeout: Duration,
    ) -> Result<Bytes, CallError> {
        self.call_pieces(target, group, rpc, body.iter().map(|p| Bytes::copy_from_slice(p)).collect(), timeout).await
    }

    /// `call` with a body in shared buffers: pieces larger than `INLINE_PIECE_MAX` are written
    /// to the connection from their own buffers, so an entry's batches are not copied on their
    /// way out.
    pub async fn call_pieces(
        &self,
        target: NodeId,
        group: GroupId,
        rpc: u8,
        body: Vec<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes, CallError> {
        let unreachable = |reason: &str| CallError::Unreachable { node: target, reason: reason.to_string() };
        let peer = lock(&self.inner.peers).get(&target).cloned().ok_or_else(|| unreachable("no address known"))?;
        let corr_id = self.inner.next_corr_id.fetch_add(1, Ordering::Relaxed);
        let body_len: usize = body.iter().map(|p| p.len()).sum();
        let max = self.inner.config.max_frame_bytes;
        if frame::HEADER_LEN + body_len > max {
            return Err(CallError::TooLarge { len: frame::HEADER_LEN + body_len, max });
        }
        let inline: usize = body.iter().take_while(|p| p.len() <= INLINE_PIECE_MAX).map(Bytes::len).sum();
        let mut head = BytesMut::with_capacity(frame::LEN_PREFIX + frame::HEADER_LEN + inline);
        frame::encode_header(&mut head, Kind::Request, corr_id, group, rpc, body_len);
        let mut pieces = body.into_iter().peekable();
        while let Some(p) = pieces.next_if(|p| p.len() <= INLINE_PIECE_MAX) {
            head.extend_from_slice(&p);
        }
        let frame = Queued { corr_id, head: head.freeze(), tail: pieces.collect() };
        let (tx, rx) = oneshot::channel();
        {
            let mut conn = lock(&peer.conn);
            let Some(queue) = conn.tx.clone() else {
                return Err(unreachable("not connected"));
            };
            let frame_len = frame.len();
            let queued = conn.queued.load(Ordering::Relaxed);
            if queued + frame_len > self.inner.config.max_queued_bytes {
                return Err(unreachable("outbound queue full: the peer is not reading"));
            }
            conn.queued.fetch_add(frame_len, Ordering::Relaxed);
            conn.pending.insert(corr_id, tx);
            if queue.send(frame).is_err() {
                conn.pending.remove(&corr_id);
                return Err(unreachable("connection closing"));
            }
        }
        let _pending = PendingGuard { peer: &peer, corr_id };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(_)) => Err(unreachable("connection lost")),
            Err(_) => Err(CallError::Timeout { node: target, timeout }),
        }
    }

    /// Checks that `target` answers; the node-level election driver pings every peer so that a
    /// peer's silence means it is down or cut off, whatever the groups are doing.
    /// After `max_unanswered_pings` timeouts in a row the connection is closed and redialed.
    pub async fn ping(&self, target: NodeId, timeout: Duration) -> Result<(), CallError> {
        let result = self.call(target, 0, RPC_PING, &[], timeout).await.map(|_| ());
        let Some(peer) = lock(&self.inner.peers).get(&target).cloned() else {
            return result;
        };
        match &result {
            Ok(()) => peer.unanswered_pings.store(0, Ordering::Relaxed),
            Err(CallError::Timeout { .. }) => {
                let n = peer.unanswered_pings.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= self.inner.config.max_unanswered_pings {
                    tracing::warn!(peer = target, pings = n, "peer answers no pings; closing the connection");
                    peer.unanswered_pings.store(0, Ordering::Relaxed);
                    peer.disconnect();
                }
            }
            Err(_) => {}
        }
        result
    }

    /// When a frame last arrived from `peer` in answer to this node (`None`: never).
    pub fn last_heard(&self, peer: NodeId) -> Option<tokio::time::Instant> {
        let peers = lock(&self.inner.peers);
        peers.get(&peer).and_then(|p| *lock(&p.last_heard))
    }

    /// Whether `peer`'s process is known to be down: its end closed our connection, or a dial
    /// to it was refused, and nothing has been heard from it since. A crashed or killed process
    /// is known this way at once, long before its silence would tell; a machine or link that
    /// fails silently is still found only by silence. A live peer that closes a connection (it
    /// refused a frame) is taken for down only until the redial connects, a reconnect backoff
    /// later.
    pub fn known_down(&self, peer: NodeId) -> bool {
        let peers = lock(&self.inner.peers);
        peers.get(&peer).is_some_and(|p| {
            let gone = *lock(&p.gone_at);
            gone.is_some_and(|g| lock(&p.last_heard).is_none_or(|h| g > h))
        })
    }

    /// The peers this node dials.
    pub fn peer_ids(&self) -> Vec<NodeId> {
        lock(&self.inner.peers).keys().copied().collect()
    }

    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.counters;
        TransportStats {
            frames_sent: c.frames_sent.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            writes: c.writes.load(Ordering::Relaxed),
            frames_received: c.frames_received.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            connections_established: c.connections_established.load(Ordering::Relaxed),
            stale_requests_skipped: c.stale_requests_skipped.load(Ordering::Relaxed),
            inbound_connections: c.inbound_open.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting and dialing; live connections close as their tasks observe it.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        for peer in lock(&self.inner.peers).values() {
            peer.disconnect();
        }
    }
}

/// Keeps one outbound connection to `peer` alive, reconnecting with exponential backoff.
async fn dial_loop(inner: Arc<Inner>, peer: Arc<Peer>) {
    let cfg = &inner.config;
    let mut shutdown = inner.shutdown.subscribe();
    let mut backoff = cfg.reconnect_backoff_min;
    let mut failures: u32 = 0;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let addr = lock(&peer.addr).clone();
        match tokio::time::timeout(cfg.handshake_timeout, dial(&inner, &peer, &addr)).await {
            Ok(Ok((reader, writer, buf))) => {
                if failures > 0 {
                    tracing::info!(peer = peer.id, %addr, failures, "cluster connection re-established");
                } else {
                    tracing::debug!(peer = peer.id, %addr, "cluster connection established");
                }
                failures = 0;
                backoff = cfg.reconnect_backoff_min;
                inner.counters.connections_established.fetch_add(1, Ordering::Relaxed);
                let reason = run_outbound(&inner, &peer, reader, writer, buf).await;
                tracing::info!(peer = peer.id, %addr, %reason, "cluster connection closed");
            }
            Ok(Err(e)) => {
                failures += 1;
                // The first failure is worth a warning; a peer that stays down would flood the log.
                if failures == 1 {
                    tracing::warn!(peer = peer.id, %addr, error = %e, "cannot connect to peer");
                } else {
                    tracing::debug!(peer = peer.id, %addr, error = %e, failures, "cannot connect to peer");
                }
            }
            Err(_) => {
                failures += 1;
                tracing::warn!(peer = peer.id, %addr, "connect and handshake timed out");
            }
        }
        peer.disconnect();
        tokio::select! {
            biased;
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(cfg.reconnect_backoff_max);
    }
}

type Halves = (ReadHalf<BoxStream>, WriteHalf<BoxStream>, BytesMut);

/// Connects and runs the dialer's side of the handshake.
async fn dial(inner: &Inner, peer: &Peer, addr: &str) -> Result<Halves, String> {
    let cfg = &inner.config;
    let to = peer.id;
    let stream = match inner.connector.connect(addr).await {
        Ok(s) => {
            // Something listens there: the process is up, whatever the handshake brings.
            *lock(&peer.gone_at) = None;
            s
        }
        Err(e) => {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                *lock(&peer.gone_at) = Some(tokio::time::Instant::now());
            }
            return Err(e.to_string());
        }
    };
    let (mut reader, mut writer) = tokio::io::split(stream);
    let hello = Hello { cluster_id: cfg.cluster_id.clone(), from: cfg.node_id, to, version: PROTOCOL_VERSION };
    write_control(&mut writer, Kind::Hello, &hello).await?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let decoder = FrameDecoder::new(HANDSHAKE_MAX_FRAME_BYTES);
    let frame = read_frame(&mut reader, &mut buf, &decoder)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("peer closed during the handshake")?;
    if frame.kind != Kind::HelloAck {
        return Err(format!("expected a handshake answer, got {:?}", frame.kind));
    }
    let answer: Result<Hello, String> =
        postcard::from_bytes(&frame.body).map_err(|e| format!("malformed handshake answer: {e}"))?;
    let theirs = answer.map_err(|reason| format!("peer refused the handshake: {reason}"))?;
    let expected = Hello { cluster_id: cfg.cluster_id.clone(), from: to, to: cfg.node_id, version: PROTOCOL_VERSION };
    if theirs != expected {
        return Err(format!("handshake mismatch: expected {expected:?}, peer sent {theirs:?}"));
    }
    Ok((reader, writer, buf))
}

/// Writes one handshake frame.
async fn write_control<T: Serialize>(writer: &mut WriteHalf<BoxStream>, kind: Kind, body: &T) -> Result<(), String> {
    let body = postcard::to_stdvec(body).map_err(|e| e.to_string())?;
    let mut buf = BytesMut::new();
    frame::encode_header(&mut buf, kind, 0, 0, 0, body.len());
    buf.extend_from_slice(&body);
    writer.write_all(&buf).await.map_err(|e| e.to_string())
}

/// Reads until one frame is complete; `None` on a clean end of stream.
/// Why a connection's reads ended other than by a clean close between frames.
#[derive(Debug)]
enum ReadError {
    /// The other end went away mid-frame or reset the connection: what a process that dies
    /// while sending looks like.
    Closed(String),
    /// A bad frame or another I/O error.
    Bad(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Closed(e) | ReadError::Bad(e) => f.write_str(e),
        }
    }
}

/// Reads the next frame; `None` when the peer closed the connection between frames.
async fn read_frame(
    reader: &mut ReadHalf<BoxStream>,
    buf: &mut BytesMut,
    decoder: &FrameDecoder,
) -> Result<Option<Frame>, ReadError> {
    loop {
        if let Some(frame) = decoder.decode(buf).map_err(|e| ReadError::Bad(e.to_string()))? {
            return Ok(Some(frame));
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
        let n = reader.read_buf(buf).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                ReadError::Closed(e.to_string())
            }
            _ => ReadError::Bad(e.to_string()),
        })?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Closed("connection closed inside a frame".to_string()))
            };
        }
    }
}

/// Runs an established outbound connection until it fails; returns why it ended.
async fn run_outbound(
    inner: &Arc<Inner>,
    peer: &Arc<Peer>,
    mut reader: ReadHalf<BoxStream>,
    writer: WriteHalf<BoxStream>,
    mut buf: BytesMut,
) -> String {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (kill, killed) = oneshot::channel::<()>();
    {
        let mut conn = lock(&peer.conn);
        conn.tx = Some(tx);
        conn.queued = queued.clone();
        conn.kill = Some(kill);
    }
    peer.unanswered_pings.store(0, Ordering::Relaxed);
    let decoder = FrameDecoder::new(inner.config.max_frame_bytes);
    let read = async {
        loop {
            let frame = match read_frame(&mut reader, &mut buf, &decoder).await {
                Ok(Some(f)) => f,
                Ok(None) => {
                    *lock(&peer.gone_at) = Some(tokio::time::Instant::now());
                    return "peer closed the connection".to_string();
                }
                Err(ReadError::Closed(e)) => {
                    *lock(&peer.gone_at) = Some(tokio::time::Instant::now());
                    return e;
                }
                Err(e) => return e.to_string(),
            };
            count_received(inner, &frame);
            if frame.kind != Kind::Response {
                return format!("protocol error: {:?} frame on an outbound connection", frame.kind);
            }
            *lock(&peer.last_heard) = Some(tokio::time::Instant::now());
            // A response whose caller timed out finds no waiter; that is not an error.
            if let Some(waiter) = lock(&peer.conn).pending.remove(&frame.corr_id) {
                let _ = waiter.send(frame.body);
            }
        }
    };
    let mut shutdown = inner.shutdown.subscribe();
    tokio::select! {
        biased;
        reason = read => reason,
        reason = write_loop(inner, rx, writer, Some((peer, &queued))) => reason,
        _ = killed => "closed by this node (pings unanswered)".to_string(),
        _ = shutdown.wait_for(|s| *s) => "shutdown".to_string(),
    }
}

fn count_received(inner: &Inner, frame: &Frame) {
    let c = &inner.counters;
    c.frames_received.fetch_add(1, Ordering::Relaxed);
    c.bytes_received.fetch_add(frame.wire_len() as u64, Ordering::Relaxed);
}

/// Frames at least this large are written from their own buffer instead of being copied into
/// the coalescing buffer: for them the copy costs more than the extra write call.
const COALESCE_MAX_FRAME: usize = 64 * 1024;

/// Drains the connection's queue into one buffer and writes it with one call. After the first
/// frame it yields once, so frames queued by tasks woken in the same sweep (every group's
/// heartbeat to this peer) join the same write.
/// `outbound`, on an outbound connection, is the peer (whose pending calls say which requests
/// still have a caller) and the count of bytes callers queued; they leave it here. A request whose
/// call timed out or was dropped is skipped: after a stall its backlog would otherwise go out
/// ahead of live traffic, to be executed and answered for no one.
async fn write_loop(
    inner: &Inner,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    mut writer: WriteHalf<BoxStream>,
    outbound: Option<(&Peer, &std::sync::atomic::AtomicUsize)>,
) -> String {
    let mut buf = BytesMut::with_capacity(COALESCE_MAX_FRAME);
    while let Some(first) = rx.recv().await {
        tokio::task::yield_now().await;
        let mut next = Some(first);
        while let Some(frame) = next.take().or_else(|| rx.try_recv().ok()) {
            if let Some((peer, queued)) = outbound {
                queued.fetch_sub(frame.len(), Ordering::Relaxed);
                if !lock(&peer.conn).pending.contains_key(&frame.corr_id) {
                    inner.counters.stale_requests_skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            inner.counters.frames_sent.fetch_add(1, Ordering::Relaxed);
            // Small parts join the buffer; a large one goes out from its own, after the buffer.
            for mut part in std::iter::once(frame.head).chain(frame.tail) {
                if part.len() < COALESCE_MAX_FRAME {
                    buf.extend_from_slice(&part);
                    continue;
                }
                if let Err(e) = flush(inner, &mut writer, &mut buf).await {
                    return e;
                }
                if let Err(e) = flush(inner, &mut writer, &mut part).await {
                    return e;
                }
            }
        }
        if let Err(e) = flush(inner, &mut writer, &mut buf).await {
            return e;
        }
    }
    "connection dropped by this node".to_string()
}

/// Writes and empties `buf` (if it holds anything) with one write call, counting it.
async fn flush<B: bytes::Buf>(inner: &Inner, writer: &mut WriteHalf<BoxStream>, buf: &mut B) -> Result<(), String> {
    let len = buf.remaining();
    if len == 0 {
        return Ok(());
    }
    writer.write_all_buf(buf).await.map_err(|e| format!("write failed: {e}"))?;
    let c = &inner.counters;
    c.writes.fetch_add(1, Ordering::Relaxed);
    c.bytes_sent.fetch_add(len as u64, Ordering::Relaxed);
    Ok(())
}

/// Accepts one inbound connection: handshake, then answer requests until it closes.
async fn serve_connection(inner: Arc<Inner>, stream: BoxStream, addr: String) {
    let cfg = &inner.config;
    let (mut reader, mut writer) = tokio::io::split(stream);
    // Until the peer has introduced itself, only a handshake-sized frame is accepted.
    let mut buf = BytesMut::with_capacity(4096);
    let pre_handshake = FrameDecoder::new(HANDSHAKE_MAX_FRAME_BYTES);
    let hello = match tokio::time::timeout(cfg.handshake_timeout, read_frame(&mut reader, &mut buf, &pre_handshake))
        .await
    {
        Ok(Ok(Some(f))) if f.kind == Kind::Hello => f,
        Ok(Ok(Some(f))) => {
            tracing::warn!(%addr, kind = ?f.kind, "inbound cluster connection did not start with a handshake; closing");
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::warn!(%addr, error = %e, "bad handshake frame; closing");
            return;
        }
        Err(_) => {
            tracing::warn!(%addr, "no handshake in time; closing");
            return;
        }
    };
    let theirs: Hello = match postcard::from_bytes(&hello.body) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(%addr, error = %e, "malformed handshake; closing");
            return;
        }
    };
    let refusal = if theirs.version != PROTOCOL_VERSION {
        Some(format!("protocol version {} is not {PROTOCOL_VERSION}", theirs.version))
    } else if theirs.cluster_id != cfg.cluster_id {
        Some(format!("cluster id {:?} is not {:?}", theirs.cluster_id, cfg.cluster_id))
    } else if theirs.to != cfg.node_id {
        Some(format!("addressed to node {}, this is node {}", theirs.to, cfg.node_id))
    } else {
        None
    };
    if let Some(reason) = refusal {
        tracing::warn!(%addr, from = theirs.from, %reason, "refusing cluster connection");
        let _ = write_control(&mut writer, Kind::HelloAck, &Err::<Hello, _>(reason)).await;
        return;
    }
    let ours =
        Hello { cluster_id: cfg.cluster_id.clone(), from: cfg.node_id, to: theirs.from, version: PROTOCOL_VERSION };
    if let Err(e) = write_control(&mut writer, Kind::HelloAck, &Ok::<_, String>(ours)).await {
        tracing::debug!(%addr, error = %e, "handshake answer not sent");
        return;
    }
    let from = theirs.from;
    // A peer that dials in is up, whatever our own dials to it last saw.
    if let Some(p) = lock(&inner.peers).get(&from) {
        *lock(&p.gone_at) = None;
    }
    // Replacing the older connection's entry drops its sender, which closes it.
    let seq = inner.next_inbound.fetch_add(1, Ordering::Relaxed);
    let (replace, replaced) = oneshot::channel::<()>();
    if lock(&inner.inbound).insert(from, (seq, replace)).is_some() {
        tracing::info!(%addr, from, "newer connection from the same node; closing the older one");
    }
    let _open = InboundGuard::new(&inner, from, seq);
    let decoder = FrameDecoder::new(cfg.max_frame_bytes);
    let (tx, rx) = mpsc::unbounded_channel::<Queued>();
    let read = async {
        loop {
            let frame = match read_frame(&mut reader, &mut buf, &decoder).await {
                Ok(Some(f)) => f,
                Ok(None) => return "peer closed the connection".to_string(),
                Err(e) => return e.to_string(),
            };
            count_received(&inner, &frame);
            if frame.kind != Kind::Request {
                return format!("protocol error: {:?} frame on an inbound connection", frame.kind);
            }
            if frame.rpc == RPC_PING {
                let mut out = BytesMut::with_capacity(frame::LEN_PREFIX + frame::HEADER_LEN);
                frame::encode_header(&mut out, Kind::Response, frame.corr_id, 0, RPC_PING, 0);
                let _ = tx.send(Queued::whole(frame.corr_id, out, None));
                continue;
            }
            let answer = inner.handler.handle(from, frame.group_id, frame.rpc, frame.body);
            let tx = tx.clone();
            tokio::spawn(async move {
                let body = answer.await;
                let mut out = BytesMut::with_capacity(frame::LEN_PREFIX + frame::HEADER_LEN);
                frame::encode_header(&mut out, Kind::Response, frame.corr_id, frame.group_id, frame.rpc, body.len());
                // The connection may be gone; the dialer's call then fails as unreachable.
                let _ = tx.send(Queued::whole(frame.corr_id, out, Some(body)));
            });
        }
    };
    let mut shutdown = inner.shutdown.subscribe();
    let reason = tokio::select! {
        biased;
        reason = read => reason,
        reason = write_loop(&inner, rx, writer, None) => reason,
        _ = replaced => "replaced by a newer connection from the same node".to_string(),
        _ = shutdown.wait_for(|s| *s) => "shutdown".to_string(),
    };
    tracing::info!(%addr, from, %reason, "inbound cluster connection closed");
}

/// Counts an inbound connection as open while it lives, and on its end removes its entry from the
/// registry unless a newer connection from the same node has taken it.
struct InboundGuard<'a> {
    inner: &'a Inner,
    from: NodeId,
    seq: u64,
}

impl<'a> InboundGuard<'a> {
    fn new(inner: &'a Inner, from: NodeId, seq: u64) -> Self {
        inner.counters.inbound_open.fetch_add(1, Ordering::Relaxed);
        Self { inner, from, seq }
    }
}

impl Drop for InboundGuard<'_> {
    fn drop(&mut self) {
        self.inner.counters.inbound_open.fetch_sub(1, Ordering::Relaxed);
        let mut inbound = lock(&self.inner.inbound);
        if inbound.get(&self.from).is_some_and(|(seq, _)| *seq == self.seq) {
            inbound.remove(&self.from);
        }
    }
}
