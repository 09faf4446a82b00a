//! An async Kafka wire client: how the transform runner reaches the cluster (the broker acting as
//! a client of itself, over its ordinary Kafka listener) for the exactly-once
//! consume-transform-produce loop of ABI.md ("Exactly once").
//!
//! [`Client`] reads: metadata, ListOffsets, fetches (read_committed or not) and committed group
//! offsets. [`TxnProducer`] writes the transactions of one transactional id: records to any
//! partitions and a consumer group's offsets, committed or aborted as one.
//!
//! Connections: one per broker (by the address the cluster's metadata gives its node id, the
//! bootstrap addresses until then), opened on first use and again after a failure, each with an
//! ApiVersions handshake. Requests are pipelined on it and answered in order. Every connect has a
//! timeout (5 s by default) and every request one (30 s, plus a fetch's wait); a request that times
//! out closes its connection, as Kafka's clients do.
//!
//! Retries: errors Kafka calls retriable (a moved leader or coordinator, a coordinator loading, an
//! unstable offset, a concurrent transaction, a lost connection, ...) are retried with a backoff
//! for up to [`ClientConfig::retry_timeout`] (30 s), after a metadata or coordinator refresh where
//! one may help; the last error is returned after that. A fenced producer ([`ClientError::Fenced`]) is
//! never retried.
//!
//! Recovery, for the runner: after any error from [`TxnProducer::send`] or
//! [`TxnProducer::send_offsets`], or a failed [`TxnProducer::commit`], abort and call
//! [`TxnProducer::init`] again before the next transaction (a send whose outcome is unknown leaves
//! the partition's sequence numbers unknown too; `init` bumps the producer epoch and starts them
//! over), then resume from the committed offset. [`ClientError::Fenced`] means another instance owns the
//! transactional id: stop.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use fjord_storage::batch::{build_records, NewRecord, Producer};
use fjord_storage::records::{decode_batches, Batch, Record};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, ApiKey, ApiVersionsRequest, CreateTopicsRequest,
    DeleteGroupsRequest, EndTxnRequest, FetchRequest, FindCoordinatorRequest, GroupId, InitProducerIdRequest,
    ListOffsetsRequest, MetadataRequest, OffsetFetchRequest, ProduceRequest, ProducerId, RequestHeader, ResponseHeader,
    TopicName, TransactionalId, TxnOffsetCommitRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

/// The API versions this client speaks: fixed, each served by the Fjord broker
/// (broker/src/dispatch.rs), and flexible (compact encodings, tagged fields).
pub mod versions {
    pub const API_VERSIONS: i16 = 3;
    /// v12: topic ids in the answer, topic names in the request.
    pub const METADATA: i16 = 12;
    /// v9, the first flexible one; v12 is KIP-890's implicit AddPartitionsToTxn, which a client
    /// that adds its partitions itself does not want.
    pub const PRODUCE: i16 = 9;
    /// v12: the newest that names topics (v13 names them by id).
    pub const FETCH: i16 = 12;
    /// v7: flexible, isolation level, leader epochs.
    pub const LIST_OFFSETS: i16 = 7;
    pub const CREATE_TOPICS: i16 = 7;
    /// v4: batched coordinator keys.
    pub const FIND_COORDINATOR: i16 = 4;
    /// v4: KIP-360 (an initialized producer names its id and epoch to bump it), PRODUCER_FENCED.
    pub const INIT_PRODUCER_ID: i16 = 4;
    /// v3: the last client version (v4+ batches transactions, for brokers).
    pub const ADD_PARTITIONS_TO_TXN: i16 = 3;
    pub const ADD_OFFSETS_TO_TXN: i16 = 3;
    /// v3: group generation and member (KIP-447), PRODUCER_FENCED.
    pub const TXN_OFFSET_COMMIT: i16 = 3;
    pub const END_TXN: i16 = 3;
    /// v7: require_stable (KIP-447), one group per request.
    pub const OFFSET_FETCH: i16 = 7;
    /// v2: the first flexible one.
    pub const DELETE_GROUPS: i16 = 2;
}

/// FindCoordinator key types.
const GROUP_COORDINATOR: i8 = 0;
const TXN_COORDINATOR: i8 = 1;

/// ListOffsets' special timestamps.
pub const EARLIEST: i64 = -2;
pub const LATEST: i64 = -1;

/// The largest response frame a connection accepts.
const MAX_FRAME: usize = 512 << 20;
/// A v2 batch's fixed header, and its first 12 bytes (base offset, length).
const BATCH_HEADER: usize = 61;
const LOG_OVERHEAD: usize = 12;

/// Timeouts, retries and sizes; `Default` has the values the module documentation names.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub connect_timeout: Duration,
    /// How long a request may wait for its answer (a fetch: plus its `max_wait_ms`).
    pub request_timeout: Duration,
    /// How long retriable errors are retried before one is returned.
    pub retry_timeout: Duration,
    /// The first pause between retries; it doubles up to `max_retry_backoff`.
    pub retry_backoff: Duration,
    pub max_retry_backoff: Duration,
    /// Records of one `send` go out in batches of about this many bytes at most (Kafka's default
    /// `max.message.bytes` is 1 MiB); a record larger than this goes alone.
    pub max_batch_bytes: usize,
    /// The most a fetched batch may decompress to.
    pub max_decompressed_bytes: usize,
    /// How long cached metadata of a topic is used before it is asked for again (so partitions
    /// added to a topic are seen), as Kafka's `metadata.max.age.ms`.
    pub metadata_max_age: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            retry_timeout: Duration::from_secs(30),
            retry_backoff: Duration::from_millis(50),
            max_retry_backoff: Duration::from_secs(1),
            max_batch_bytes: 1_000_000,
            max_decompressed_bytes: 64 << 20,
            metadata_max_age: Duration::from_secs(300),
        }
    }
}

/// What can go wrong. [`ClientError::code`] gives the Kafka error code where there is one, and
/// [`ClientError::is_retriable`] tells errors worth another try (later, or after the recovery the module
/// documentation describes) from the rest.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The producer was fenced: another instance initialized the same transactional id (or the
    /// coordinator aborted this one's transaction and bumped its epoch). It may never write again.
    /// The code is the broker's: PRODUCER_FENCED, INVALID_PRODUCER_EPOCH,
    /// TRANSACTIONAL_ID_AUTHORIZATION_FAILED or INVALID_TXN_STATE.
    #[error("transactional producer fenced: {0}")]
    Fenced(ResponseError),
    /// A fetch at an offset the partition does not hold (below its log start, or past its end).
    #[error(
        "offset {} is out of range for {}-{} (log start {}, high watermark {})",
        .0.offset, .0.topic, .0.partition, .0.log_start_offset, .0.high_watermark
    )]
    OffsetOutOfRange(OutOfRange),
    /// Any other error code a broker answered.
    #[error("{what}: {code}{}", .message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kafka { what: String, code: ResponseError, message: Option<String> },
    /// The connection failed, or closed before the answer came.
    #[error("{what} via {addr}: {source}")]
    Io {
        addr: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} via {addr} timed out after {after:?}")]
    Timeout { addr: String, what: String, after: Duration },
    /// The broker does not serve the version of an API this client speaks.
    #[error("{addr} does not serve {api} v{version}")]
    Unsupported { addr: String, api: String, version: i16 },
    /// An answer this client cannot read (malformed, or not the one asked for).
    #[error("bad answer from {addr}: {message}")]
    Protocol { addr: String, message: String },
    /// A call out of order (a send without an open transaction, a producer not initialized, ...).
    #[error("{0}")]
    State(String),
}

/// Where a fetch asked for an offset its partition does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfRange {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub log_start_offset: i64,
    pub high_watermark: i64,
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl ClientError {
    /// The Kafka error code, where the broker gave one.
    pub fn code(&self) -> Option<ResponseError> {
        match self {
            ClientError::Fenced(c) | ClientError::Kafka { code: c, .. } => Some(*c),
            ClientError::OffsetOutOfRange(_) => Some(ResponseError::OffsetOutOfRange),
            _ => None,
        }
    }

    /// Worth trying again: a connection failure or timeout, or an error code Kafka calls retriable
    /// (plus CONCURRENT_TRANSACTIONS, which its producer retries too).
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Io { .. } | ClientError::Timeout { .. } => true,
            ClientError::Kafka { code, .. } => retriable(*code),
            _ => false,
        }
    }

    pub fn is_fenced(&self) -> bool {
        matches!(self, ClientError::Fenced(_))
    }

    /// The connection failed or timed out: the request may or may not have been served.
    fn is_connection(&self) -> bool {
        matches!(self, ClientError::Io { .. } | ClientError::Timeout { .. })
    }

    fn kafka(what: impl Into<String>, code: ResponseError, message: Option<StrBytes>) -> ClientError {
        ClientError::Kafka {
            what: what.into(),
            code,
            message: message.map(|m| m.to_string()).filter(|m| !m.is_empty()),
        }
    }
}

fn retriable(code: ResponseError) -> bool {
    code.is_retriable() || code == ResponseError::ConcurrentTransactions
}

/// The codes that mean a transactional producer is fenced.
fn fencing(code: ResponseError) -> bool {
    matches!(
        code,
        ResponseError::ProducerFenced
            | ResponseError::InvalidProducerEpoch
            | ResponseError::TransactionalIdAuthorizationFailed
            | ResponseError::InvalidTxnState
    )
}

/// The answer of a transactional request: fenced, another error, or none.
fn txn_result(code: i16, what: &str, message: Option<StrBytes>) -> Result<()> {
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(c) if fencing(c) => Err(ClientError::Fenced(c)),
        Some(c) => Err(ClientError::kafka(what, c, message)),
    }
}

/// Errors that mean the partition's leader is elsewhere, or the metadata is stale.
fn leader_moved(code: ResponseError) -> bool {
    matches!(
        code,
        ResponseError::NotLeaderOrFollower
            | ResponseError::UnknownTopicOrPartition
            | ResponseError::LeaderNotAvailable
            | ResponseError::FencedLeaderEpoch
            | ResponseError::UnknownLeaderEpoch
    )
}

/// Errors that mean the coordinator is elsewhere.
fn coordinator_moved(code: ResponseError) -> bool {
    matches!(code, ResponseError::NotCoordinator | ResponseError::CoordinatorNotAvailable)
}

fn sb(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Backoff between attempts, until a deadline.
struct Retry {
    deadline: Instant,
    backoff: Duration,
    max: Duration,
}

impl Retry {
    fn new(c: &ClientConfig) -> Retry {
        Retry { deadline: Instant::now() + c.retry_timeout, backoff: c.retry_backoff, max: c.max_retry_backoff }
    }

    /// Pauses before the next attempt; false once the deadline has passed (no more attempts).
    async fn pause(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        tokio::time::sleep(self.backoff.min(self.deadline - now)).await;
        self.backoff = (self.backoff * 2).min(self.max);
        true
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

type Reply = oneshot::Sender<std::io::Result<Bytes>>;

struct Outgoing {
    correlation_id: i32,
    frame: Bytes,
    reply: Reply,
}

/// What a connection's reader and writer share: the requests written and not yet answered, in
/// order, and whether the connection is gone.
struct ConnState {
    dead: bool,
    pending: VecDeque<(i32, Reply)>,
}

struct Shared {
    state: Mutex<ConnState>,
    /// Set once the connection fails: both tasks stop, the socket closes.
    closed: watch::Sender<bool>,
}

impl Shared {
    /// Marks the connection dead and fails every request waiting on it.
    fn fail(&self, why: &std::io::Error) {
        let pending = {
            let mut st = lock(&self.state);
            st.dead = true;
            std::mem::take(&mut st.pending)
        };
        for (_, reply) in pending {
            let _ = reply.send(Err(std::io::Error::new(why.kind(), why.to_string())));
        }
        self.closed.send_replace(true);
    }

    fn is_dead(&self) -> bool {
        lock(&self.state).dead
    }
}

/// One TCP connection to a broker, with a writer and a reader task.
struct Conn {
    addr: String,
    tx: mpsc::UnboundedSender<Outgoing>,
    shared: Arc<Shared>,
    next_id: AtomicI32,
    /// API key → (min, max) versions the broker serves.
    versions: HashMap<i16, (i16, i16)>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.fail(&std::io::Error::new(std::io::ErrorKind::NotConnected, "connection dropped"));
    }
}

fn io_error(kind: std::io::ErrorKind, msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(kind, msg.into())
}

async fn read_frame(rd: &mut OwnedReadHalf) -> std::io::Result<Bytes> {
    let len = rd.read_i32().await?;
    let len = usize::try_from(len).ok().filter(|n| (4..=MAX_FRAME).contains(n));
    let len = len.ok_or_else(|| io_error(std::io::ErrorKind::InvalidData, "bad response frame length"))?;
    let mut body = BytesMut::zeroed(len);
    rd.read_exact(&mut body).await?;
    Ok(body.freeze())
}

async fn read_loop(mut rd: OwnedReadHalf, shared: Arc<Shared>) {
    let mut closed = shared.closed.subscribe();
    let why = loop {
        let frame = tokio::select! {
            _ = closed.wait_for(|c| *c) => return,
            f = read_frame(&mut rd) => f,
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break io_error(std::io::ErrorKind::ConnectionReset, "the broker closed the connection")
            }
            Err(e) => break e,
        };
        let id = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let waiter = lock(&shared.state).pending.pop_front();
        match waiter {
            Some((want, reply)) if want == id => {
                let _ = reply.send(Ok(frame));
            }
            Some((want, _)) => {
                break io_error(std::io::ErrorKind::InvalidData, format!("answer {id} came where {want} was due"))
            }
            None => break io_error(std::io::ErrorKind::InvalidData, format!("answer {id} to no request")),
        }
    };
    shared.fail(&why);
}

async fn write_loop(mut wr: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Outgoing>, shared: Arc<Shared>) {
    let mut closed = shared.closed.subscribe();
    loop {
        let out = tokio::select! {
            _ = closed.wait_for(|c| *c) => break,
            o = rx.recv() => match o {
                Some(o) => o,
                None => break,
            },
        };
        {
            let mut st = lock(&shared.state);
            if st.dead {
                let _ = out.reply.send(Err(io_error(std::io::ErrorKind::NotConnected, "connection closed")));
                continue;
            }
            st.pending.push_back((out.correlation_id, out.reply));
        }
        if let Err(e) = wr.write_all(&out.frame).await {
            shared.fail(&e);
            break;
        }
    }
    let _ = wr.shutdown().await;
}

impl Conn {
    async fn open(addr: &str, client_id: &str, config: &ClientConfig) -> Result<Arc<Conn>> {
        let io = |e| ClientError::Io { addr: addr.to_string(), what: "connect".into(), source: e };
        let stream = match tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(ClientError::Timeout {
                    addr: addr.to_string(),
                    what: "connect".into(),
                    after: config.connect_timeout,
                })
            }
            Ok(r) => r.map_err(io)?,
        };
        stream.set_nodelay(true).map_err(io)?;
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(ConnState { dead: false, pending: VecDeque::new() }),
            closed: watch::channel(false).0,
        });
        tokio::spawn(read_loop(rd, shared.clone()));
        tokio::spawn(write_loop(wr, rx, shared.clone()));
        let mut conn =
            Conn { addr: addr.to_string(), tx, shared, next_id: AtomicI32::new(1), versions: HashMap::new() };
        let req = ApiVersionsRequest::default()
            .with_client_software_name(sb("fjord-transforms"))
            .with_client_software_version(sb(env!("CARGO_PKG_VERSION")));
        let resp = conn.call(versions::API_VERSIONS, &req, client_id, config.request_timeout).await?;
        if let Some(code) = ResponseError::try_from_code(resp.error_code) {
            return Err(ClientError::kafka("ApiVersions", code, None));
        }
        conn.versions = resp.api_keys.iter().map(|k| (k.api_key, (k.min_version, k.max_version))).collect();
        Ok(Arc::new(conn))
    }

    fn is_dead(&self) -> bool {
        self.shared.is_dead()
    }

    /// Sends `req` and waits for its answer, for at most `timeout` (then the connection closes:
    /// the answer may still come, and could not be told from the next one's).
    async fn call<Q: Request>(&self, version: i16, req: &Q, client_id: &str, timeout: Duration) -> Result<Q::Response> {
        let api = api_name(Q::KEY);
        if Q::KEY != ApiKey::ApiVersions as i16 {
            let served = self.versions.get(&Q::KEY).is_some_and(|(lo, hi)| (*lo..=*hi).contains(&version));
            if !served {
                return Err(ClientError::Unsupported { addr: self.addr.clone(), api, version });
            }
        }
        let protocol = |m: String| ClientError::Protocol { addr: self.addr.clone(), message: m };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let header = RequestHeader::default()
            .with_request_api_key(Q::KEY)
            .with_request_api_version(version)
            .with_correlation_id(id)
            .with_client_id(Some(sb(client_id)));
        let mut buf = BytesMut::with_capacity(128);
        buf.put_i32(0);
        header
            .encode(&mut buf, Q::header_version(version))
            .and_then(|_| req.encode(&mut buf, version))
            .map_err(|e| protocol(format!("cannot encode {api} v{version}: {e}")))?;
        let len = i32::try_from(buf.len() - 4).map_err(|_| protocol(format!("{api} request too large")))?;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        let (reply, answer) = oneshot::channel();
        let what = format!("{api} request");
        let io = |e| ClientError::Io { addr: self.addr.clone(), what: what.clone(), source: e };
        let closed = || io(io_error(std::io::ErrorKind::NotConnected, "connection closed"));
        self.tx.send(Outgoing { correlation_id: id, frame: buf.freeze(), reply }).map_err(|_| closed())?;
        let mut frame = match tokio::time::timeout(timeout, answer).await {
            Err(_) => {
                self.shared.fail(&io_error(std::io::ErrorKind::TimedOut, format!("{api} request timed out")));
                return Err(ClientError::Timeout { addr: self.addr.clone(), what, after: timeout });
            }
            Ok(Err(_)) => return Err(closed()),
            Ok(Ok(r)) => r.map_err(io)?,
        };
        let bad = |e: anyhow::Error| {
            // The stream cannot be trusted after an answer that does not parse.
            self.shared.fail(&io_error(std::io::ErrorKind::InvalidData, "malformed answer"));
            protocol(format!("cannot decode {api} v{version} answer: {e}"))
        };
        ResponseHeader::decode(&mut frame, <Q::Response as HeaderVersion>::header_version(version)).map_err(bad)?;
        <Q::Response as Decodable>::decode(&mut frame, version).map_err(bad)
    }
}

fn api_name(key: i16) -> String {
    match ApiKey::try_from(key) {
        Ok(k) => format!("{k:?}"),
        Err(_) => format!("API {key}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata

/// A topic's partitions, as the cluster's metadata gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    pub name: String,
    /// By partition index, from 0.
    pub partitions: Vec<PartitionMetadata>,
}

impl TopicMetadata {
    pub fn partition_count(&self) -> i32 {
        self.partitions.len() as i32
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMetadata {
    pub partition: i32,
    /// The leader's node id; -1 while there is none.
    pub leader: i32,
    pub leader_epoch: i32,
}

#[derive(Default)]
struct MetadataCache {
    /// Node id → "host:port".
    brokers: BTreeMap<i32, String>,
    controller: i32,
    /// Each topic with when it was learned.
    topics: HashMap<String, (TopicMetadata, Instant)>,
}

/// One fetch's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResult {
    /// Data records only, from the offset asked for on, in offset order: no control records and,
    /// read_committed, none of an aborted transaction.
    pub records: Vec<Record>,
    /// Where the next fetch starts: after the last batch returned (even one that held only control
    /// records or aborted ones), or the offset asked for when none came.
    pub next_offset: i64,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
}

/// A record to produce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    /// Create time, ms since the epoch.
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

impl ProducerRecord {
    /// About how many bytes the record takes in a batch.
    fn size_estimate(&self) -> usize {
        let field = |b: &Option<Bytes>| b.as_ref().map_or(1, |b| b.len() + 5);
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + 5 + field(v)).sum();
        25 + field(&self.key) + field(&self.value) + headers
    }
}

/// A broker's connection, None until opened; the async lock makes concurrent callers wait for
/// one connect instead of each opening their own.
type ConnSlot = tokio::sync::Mutex<Option<Arc<Conn>>>;

/// A Kafka client for the transform runner. Cheap to clone: clones share connections, metadata
/// and coordinators.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    bootstrap: Vec<String>,
    client_id: String,
    config: ClientConfig,
    /// Broker address → its connection.
    conns: Mutex<HashMap<String, Arc<ConnSlot>>>,
    metadata: Mutex<MetadataCache>,
    /// (key type, key) → the coordinator's address.
    coordinators: Mutex<HashMap<(i8, String), String>>,
}

impl Client {
    /// A client for the cluster reachable at `bootstrap` ("host:port" each). Nothing connects
    /// until the first request.
    pub fn connect(bootstrap: Vec<String>, client_id: &str) -> Client {
        Client::with_config(bootstrap, client_id, ClientConfig::default())
    }

    pub fn with_config(bootstrap: Vec<String>, client_id: &str, config: ClientConfig) -> Client {
        Client {
            inner: Arc::new(Inner {
                bootstrap,
                client_id: client_id.to_string(),
                config,
                conns: Mutex::new(HashMap::new()),
                metadata: Mutex::new(MetadataCache { controller: -1, ..Default::default() }),
                coordinators: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    fn retry(&self) -> Retry {
        Retry::new(&self.inner.config)
    }

    /// The live connection to `addr`, opened if there is none.
    async fn conn(&self, addr: &str) -> Result<Arc<Conn>> {
        let slot = lock(&self.inner.conns).entry(addr.to_string()).or_default().clone();
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_dead()) {
            return Ok(c.clone());
        }
        *slot = None;
        let c = Conn::open(addr, &self.inner.client_id, &self.inner.config).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    fn has_live_conn(&self, addr: &str) -> bool {
        let slot = lock(&self.inner.conns).get(addr).cloned();
        slot.is_some_and(|s| s.try_lock().is_ok_and(|c| c.as_ref().is_some_and(|c| !c.is_dead())))
    }

    /// One request to the broker at `addr`, no retry.
    async fn send<Q: Request>(&self, addr: &str, version: i16, req: &Q, extra_wait: Duration) -> Result<Q::Response> {
        let conn = self.conn(addr).await?;
        let timeout = self.inner.config.request_timeout + extra_wait;
        conn.call(version, req, &self.inner.client_id, timeout).await
    }

    /// Brokers to ask what any broker answers: those with a live connection first, then the
    /// others the metadata names, then the bootstrap addresses.
    fn any_addrs(&self) -> Vec<String> {
        let mut addrs: Vec<String> = lock(&self.inner.metadata).brokers.values().cloned().collect();
        for b in &self.inner.bootstrap {
            if !addrs.contains(b) {
                addrs.push(b.clone());
            }
        }
        addrs.sort_by_key(|a| !self.has_live_conn(a));
        addrs
    }

    /// One request to any broker: the next one is tried when a connection fails.
    async fn send_any<Q: Request>(&self, version: i16, req: &Q) -> Result<Q::Response> {
        let mut last = None;
        for addr in self.any_addrs() {
            match self.send(&addr, version, req, Duration::ZERO).await {
                Err(e) if e.is_connection() => last = Some(e),
                r => return r,
            }
        }
        Err(last.unwrap_or_else(|| ClientError::State("no bootstrap address".into())))
    }

    /// Partition counts and leaders of `topics`, from the cache when it knows them all.
    pub async fn metadata(&self, topics: &[&str]) -> Result<Vec<TopicMetadata>> {
        {
            let m = lock(&self.inner.metadata);
            let max_age = self.inner.config.metadata_max_age;
            let fresh = |t: &str| m.topics.get(t).filter(|(_, at)| at.elapsed() < max_age).map(|(tm, _)| tm.clone());
            let cached: Option<Vec<TopicMetadata>> = topics.iter().map(|t| fresh(t)).collect();
            if let Some(c) = cached {
                return Ok(c);
            }
        }
        self.refresh_metadata(topics).await
    }

    /// How many partitions `topic` has (from the metadata cache when it knows the topic).
    pub async fn partition_count(&self, topic: &str) -> Result<i32> {
        let meta = self.metadata(&[topic]).await?;
        Ok(meta.first().map_or(0, TopicMetadata::partition_count))
    }

    /// `metadata`, asked of the cluster whatever the cache holds. A topic the cluster does not
    /// know is UNKNOWN_TOPIC_OR_PARTITION at once; a topic without a leader yet is retried.
    pub async fn refresh_metadata(&self, topics: &[&str]) -> Result<Vec<TopicMetadata>> {
        let req = MetadataRequest::default()
            .with_topics(Some(
                topics.iter().map(|t| MetadataRequestTopic::default().with_name(Some(TopicName(sb(t))))).collect(),
            ))
            .with_allow_auto_topic_creation(false);
        let mut retry = self.retry();
        loop {
            let err = match self.send_any(versions::METADATA, &req).await {
                Ok(resp) => match self.absorb_metadata(resp, topics) {
                    Ok(found) => return Ok(found),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            let definite = matches!(err.code(), Some(ResponseError::UnknownTopicOrPartition));
            if definite || !err.is_retriable() || !retry.pause().await {
                return Err(err);
            }
        }
    }

    /// Takes a Metadata answer into the cache; the entries of `topics`, or the first error of one.
    fn absorb_metadata(
        &self,
        resp: kafka_protocol::messages::MetadataResponse,
        topics: &[&str],
    ) -> Result<Vec<TopicMetadata>> {
        let mut m = lock(&self.inner.metadata);
        m.brokers = resp.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port))).collect();
        m.controller = resp.controller_id.0;
        let mut first_error = None;
        for t in resp.topics {
            let Some(name) = t.name.map(|n| n.0.to_string()) else { continue };
            if let Some(code) = ResponseError::try_from_code(t.error_code) {
                m.topics.remove(&name);
                first_error.get_or_insert(ClientError::kafka(format!("metadata of topic {name}"), code, None));
                continue;
            }
            let mut partitions: Vec<PartitionMetadata> = t
                .partitions
                .iter()
                .map(|p| PartitionMetadata {
                    partition: p.partition_index,
                    leader: if p.error_code == ResponseError::LeaderNotAvailable.code() { -1 } else { p.leader_id.0 },
                    leader_epoch: p.leader_epoch,
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            m.topics.insert(name.clone(), (TopicMetadata { name, partitions }, Instant::now()));
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        topics
            .iter()
            .map(|t| {
                m.topics.get(*t).map(|(tm, _)| tm.clone()).ok_or_else(|| ClientError::Protocol {
                    addr: "cluster".into(),
                    message: format!("metadata answer without topic {t}"),
                })
            })
            .collect()
    }

    /// Forgets what the cache says of `topic`: the next lookup asks the cluster.
    fn invalidate(&self, topic: &str) {
        lock(&self.inner.metadata).topics.remove(topic);
    }

    /// The address of the partition's leader.
    async fn leader(&self, topic: &str, partition: i32) -> Result<String> {
        let meta = self.metadata(&[topic]).await?.pop();
        let p = meta.as_ref().and_then(|m| m.partitions.iter().find(|p| p.partition == partition));
        let Some(p) = p else {
            let count = meta.map_or(0, |m| m.partition_count());
            return Err(ClientError::kafka(
                format!("{topic}-{partition}"),
                ResponseError::UnknownTopicOrPartition,
                Some(sb(&format!("the topic has {count} partitions"))),
            ));
        };
        let addr = lock(&self.inner.metadata).brokers.get(&p.leader).cloned();
        addr.ok_or_else(|| {
            ClientError::kafka(format!("leader of {topic}-{partition}"), ResponseError::LeaderNotAvailable, None)
        })
    }

    /// Runs `attempt` against the partition's leader, again (after a metadata refresh where the
    /// error says the leader moved) while it fails with a retriable error and time is left.
    async fn with_leader<T, F, Fut>(&self, topic: &str, partition: i32, mut attempt: F) -> Result<T>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut retry = self.retry();
        loop {
            let err = match self.leader(topic, partition).await {
                Ok(addr) => match attempt(addr).await {
                    Ok(v) => return Ok(v),
                    Err(e) => e,
                },
                // The cluster says the topic or partition does not exist: no point in waiting.
                Err(e) if e.code() == Some(ResponseError::UnknownTopicOrPartition) => return Err(e),
                Err(e) => e,
            };
            if !err.is_retriable() {
                return Err(err);
            }
            if err.is_connection() || err.code().is_some_and(leader_moved) {
                self.invalidate(topic);
            }
            if !retry.pause().await {
                return Err(err);
            }
        }
    }

    /// The address of the group's (key type 0) or transactional id's (1) coordinator.
    async fn coordinator(&self, key_type: i8, key: &str) -> Result<String> {
        if let Some(a) = lock(&self.inner.coordinators).get(&(key_type, key.to_string())) {
            return Ok(a.clone());
        }
        let req = FindCoordinatorRequest::default().with_key_type(key_type).with_coordinator_keys(vec![sb(key)]);
        let resp = self.send_any(versions::FIND_COORDINATOR, &req).await?;
        let what = || format!("FindCoordinator for {key}");
        let c = resp.coordinators.into_iter().next().ok_or_else(|| ClientError::Protocol {
            addr: "cluster".into(),
            message: format!("{} answered no coordinator", what()),
        })?;
        if let Some(code) = ResponseError::try_from_code(c.error_code) {
            return Err(ClientError::kafka(what(), code, c.error_message));
        }
        let addr = format!("{}:{}", c.host.as_str(), c.port);
        lock(&self.inner.coordinators).insert((key_type, key.to_string()), addr.clone());
        Ok(addr)
    }

    fn forget_coordinator(&self, key_type: i8, key: &str) {
        lock(&self.inner.coordinators).remove(&(key_type, key.to_string()));
    }

    /// Runs `attempt` against the coordinator of `key`, again while it fails with a retriable
    /// error (after looking the coordinator up anew where it may have moved) and time is left.
    async fn with_coordinator<T, F, Fut>(&self, key_type: i8, key: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut retry = self.retry();
        loop {
            let err = match self.coordinator(key_type, key).await {
                Ok(addr) => match attempt(addr).await {
                    Ok(v) => return Ok(v),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if !err.is_retriable() {
                return Err(err);
            }
            if err.is_connection() || err.code().is_some_and(coordinator_moved) {
                self.forget_coordinator(key_type, key);
            }
            if !retry.pause().await {
                return Err(err);
            }
        }
    }

    /// Creates a topic (through the controller). TOPIC_ALREADY_EXISTS comes back as an error like
    /// any other. `replication_factor` -1 takes the cluster's default.
    pub async fn create_topic(&self, name: &str, partitions: i32, replication_factor: i16) -> Result<()> {
        let req = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(sb(name)))
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor)])
            .with_timeout_ms(self.inner.config.request_timeout.as_millis().min(i32::MAX as u128) as i32);
        let mut retry = self.retry();
        loop {
            let controller = {
                let m = lock(&self.inner.metadata);
                m.brokers.get(&m.controller).cloned()
            };
            let resp = match controller {
                Some(addr) => self.send(&addr, versions::CREATE_TOPICS, &req, Duration::ZERO).await,
                None => self.send_any(versions::CREATE_TOPICS, &req).await,
            };
            let err = match resp {
                Ok(resp) => {
                    self.invalidate(name);
                    let t = resp.topics.into_iter().find(|t| t.name.0.as_str() == name);
                    let Some(t) = t else {
                        return Err(ClientError::Protocol {
                            addr: "controller".into(),
                            message: format!("CreateTopics answered nothing for {name}"),
                        });
                    };
                    match ResponseError::try_from_code(t.error_code) {
                        None => return Ok(()),
                        Some(code) => ClientError::kafka(format!("create topic {name}"), code, t.error_message),
                    }
                }
                Err(e) => e,
            };
            if !err.is_retriable() || !retry.pause().await {
                return Err(err);
            }
            // NOT_CONTROLLER, or the controller unreachable: learn where it is now.
            let _ = self.refresh_metadata(&[]).await;
        }
    }

    /// The offset for `timestamp` in the partition, as a read_committed consumer sees it:
    /// [`EARLIEST`] (-2) the log start, [`LATEST`] (-1) the last stable offset, or a timestamp
    /// (ms) the first offset whose record has a timestamp at or after it, the latest offset when
    /// there is none.
    pub async fn list_offset(&self, topic: &str, partition: i32, timestamp: i64) -> Result<i64> {
        let found = self.list_offset_once(topic, partition, timestamp).await?;
        if found < 0 && timestamp >= 0 {
            return self.list_offset_once(topic, partition, LATEST).await;
        }
        Ok(found)
    }

    async fn list_offset_once(&self, topic: &str, partition: i32, timestamp: i64) -> Result<i64> {
        let req = ListOffsetsRequest::default().with_replica_id((-1).into()).with_isolation_level(1).with_topics(vec![
            ListOffsetsTopic::default().with_name(TopicName(sb(topic))).with_partitions(vec![
                ListOffsetsPartition::default().with_partition_index(partition).with_timestamp(timestamp),
            ]),
        ]);
        let what = format!("ListOffsets of {topic}-{partition} at {timestamp}");
        self.with_leader(topic, partition, |addr| {
            let (req, what) = (&req, &what);
            async move {
                let resp = self.send(&addr, versions::LIST_OFFSETS, req, Duration::ZERO).await?;
                let p = resp
                    .topics
                    .iter()
                    .filter(|t| t.name.0.as_str() == topic)
                    .flat_map(|t| t.partitions.iter())
                    .find(|p| p.partition_index == partition)
                    .ok_or_else(|| ClientError::Protocol {
                        addr: addr.clone(),
                        message: format!("{what}: no answer"),
                    })?;
                match ResponseError::try_from_code(p.error_code) {
                    None => Ok(p.offset),
                    Some(code) => Err(ClientError::kafka(what.as_str(), code, None)),
                }
            }
        })
        .await
    }

    /// Records of the partition from `offset` on, from its leader: up to about `max_bytes` (at
    /// least one whole batch), waiting up to `max_wait_ms` for the first byte when there is none.
    /// `read_committed`: only up to the last stable offset, without aborted transactions' records.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        max_bytes: i32,
        max_wait_ms: i32,
        read_committed: bool,
    ) -> Result<FetchResult> {
        let req = FetchRequest::default()
            .with_replica_id((-1).into())
            .with_max_wait_ms(max_wait_ms.max(0))
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_isolation_level(read_committed as i8)
            // Sessionless: no fetch session is created or used.
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(vec![FetchTopic::default().with_topic(TopicName(sb(topic))).with_partitions(vec![
                FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(offset)
                    .with_partition_max_bytes(max_bytes),
            ])]);
        let wait = Duration::from_millis(max_wait_ms.max(0) as u64);
        let limit = self.inner.config.max_decompressed_bytes;
        self.with_leader(topic, partition, |addr| {
            let req = &req;
            async move {
                let resp = self.send(&addr, versions::FETCH, req, wait).await?;
                let what = || format!("fetch of {topic}-{partition} at {offset}");
                if let Some(code) = ResponseError::try_from_code(resp.error_code) {
                    return Err(ClientError::kafka(what(), code, None));
                }
                let p = resp
                    .responses
                    .into_iter()
                    .filter(|t| t.topic.0.as_str() == topic)
                    .flat_map(|t| t.partitions)
                    .find(|p| p.partition_index == partition)
                    .ok_or_else(|| ClientError::Protocol {
                        addr: addr.clone(),
                        message: format!("{}: no answer", what()),
                    })?;
                match ResponseError::try_from_code(p.error_code) {
                    None => {}
                    Some(ResponseError::OffsetOutOfRange) => {
                        return Err(ClientError::OffsetOutOfRange(OutOfRange {
                            topic: topic.to_string(),
                            partition,
                            offset,
                            log_start_offset: p.log_start_offset,
                            high_watermark: p.high_watermark,
                        }))
                    }
                    Some(code) => return Err(ClientError::kafka(what(), code, None)),
                }
                let aborted: Vec<(i64, i64)> =
                    p.aborted_transactions.iter().flatten().map(|a| (a.producer_id.0, a.first_offset)).collect();
                let data = p.records.unwrap_or_default();
                let whole = whole_batches(&data);
                if whole == 0 && !data.is_empty() {
                    return Err(ClientError::Protocol {
                        addr: addr.clone(),
                        message: format!(
                            "{}: {} bytes without a whole batch (max_bytes too small?)",
                            what(),
                            data.len()
                        ),
                    });
                }
                let batches = decode_batches(&data.slice(..whole), limit)
                    .map_err(|e| ClientError::Protocol { addr: addr.clone(), message: format!("{}: {e}", what()) })?;
                let (records, next_offset) = select_records(batches, offset, read_committed.then_some(&aborted[..]));
                Ok(FetchResult {
                    records,
                    next_offset,
                    high_watermark: p.high_watermark,
                    last_stable_offset: p.last_stable_offset,
                    log_start_offset: p.log_start_offset,
                })
            }
        })
        .await
    }

    /// The offset the group committed for the partition; None when it has none. Waits (up to the
    /// retry timeout) while an open transaction may still change it (require_stable).
    pub async fn committed_offset(&self, group_id: &str, topic: &str, partition: i32) -> Result<Option<i64>> {
        self.committed_offset_as(group_id, topic, partition, true).await
    }

    /// The last offset the group committed for the partition, not waiting for a transaction in
    /// flight (for showing progress; a runner resuming must use [`Client::committed_offset`]).
    pub async fn last_committed_offset(&self, group_id: &str, topic: &str, partition: i32) -> Result<Option<i64>> {
        self.committed_offset_as(group_id, topic, partition, false).await
    }

    /// Deletes `group_id` and its committed offsets (DeleteGroups). A group that does not exist
    /// is no error; one with members is refused (NON_EMPTY_GROUP).
    pub async fn delete_group(&self, group_id: &str) -> Result<()> {
        let req = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(sb(group_id))]);
        let what = format!("deleting group {group_id}");
        self.with_coordinator(GROUP_COORDINATOR, group_id, |addr| {
            let (req, what) = (&req, &what);
            async move {
                let resp = self.send(&addr, versions::DELETE_GROUPS, req, Duration::ZERO).await?;
                let code = resp.results.iter().find(|r| r.group_id.0.as_str() == group_id).map_or(0, |r| r.error_code);
                match ResponseError::try_from_code(code) {
                    None | Some(ResponseError::GroupIdNotFound) => Ok(()),
                    Some(code) => Err(ClientError::kafka(what.as_str(), code, None)),
                }
            }
        })
        .await
    }

    async fn committed_offset_as(
        &self,
        group_id: &str,
        topic: &str,
        partition: i32,
        require_stable: bool,
    ) -> Result<Option<i64>> {
        let req = OffsetFetchRequest::default()
            .with_group_id(GroupId(sb(group_id)))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(sb(topic)))
                .with_partition_indexes(vec![partition])]))
            .with_require_stable(require_stable);
        let what = format!("committed offset of group {group_id} for {topic}-{partition}");
        self.with_coordinator(GROUP_COORDINATOR, group_id, |addr| {
            let (req, what) = (&req, &what);
            async move {
                let resp = self.send(&addr, versions::OFFSET_FETCH, req, Duration::ZERO).await?;
                if let Some(code) = ResponseError::try_from_code(resp.error_code) {
                    return Err(ClientError::kafka(what.as_str(), code, None));
                }
                let p = resp
                    .topics
                    .iter()
                    .filter(|t| t.name.0.as_str() == topic)
                    .flat_map(|t| t.partitions.iter())
                    .find(|p| p.partition_index == partition);
                let Some(p) = p else { return Ok(None) };
                match ResponseError::try_from_code(p.error_code) {
                    None => Ok((p.committed_offset >= 0).then_some(p.committed_offset)),
                    Some(code) => Err(ClientError::kafka(what.as_str(), code, None)),
                }
            }
        })
        .await
    }

    /// One produce of `batch` to the partition's leader (acks=all), retried with the same bytes
    /// (so the same sequence numbers) while it fails with a retriable error. The base offset.
    async fn produce(&self, topic: &str, partition: i32, transactional_id: &str, batch: Bytes) -> Result<i64> {
        let timeout_ms = self.inner.config.request_timeout.as_millis().min(i32::MAX as u128) as i32;
        let req = ProduceRequest::default()
            .with_transactional_id(Some(TransactionalId(sb(transactional_id))))
            .with_acks(-1)
            .with_timeout_ms(timeout_ms)
            .with_topic_data(vec![TopicProduceData::default().with_name(TopicName(sb(topic))).with_partition_data(
                vec![PartitionProduceData::default().with_index(partition).with_records(Some(batch))],
            )]);
        self.with_leader(topic, partition, |addr| {
            let req = &req;
            async move {
                let resp = self.send(&addr, versions::PRODUCE, req, Duration::ZERO).await?;
                let p = resp
                    .responses
                    .into_iter()
                    .filter(|t| t.name.0.as_str() == topic)
                    .flat_map(|t| t.partition_responses)
                    .find(|p| p.index == partition)
                    .ok_or_else(|| ClientError::Protocol {
                        addr: addr.clone(),
                        message: format!("produce to {topic}-{partition}: no answer"),
                    })?;
                // A batch the log already holds (a retry of one whose answer was lost) is written.
                if p.error_code == ResponseError::DuplicateSequenceNumber.code() {
                    return Ok(p.base_offset);
                }
                txn_result(p.error_code, &format!("produce to {topic}-{partition}"), p.error_message)?;
                Ok(p.base_offset)
            }
        })
        .await
    }
}

/// How many leading bytes of `data` are whole batches (a fetch may end inside one).
fn whole_batches(data: &[u8]) -> usize {
    let mut pos = 0usize;
    while pos + LOG_OVERHEAD <= data.len() {
        let len = i32::from_be_bytes([data[pos + 8], data[pos + 9], data[pos + 10], data[pos + 11]]);
        let Some(end) = usize::try_from(len).ok().and_then(|l| (pos + LOG_OVERHEAD).checked_add(l)) else { break };
        if end > data.len() || end < pos + BATCH_HEADER {
            break;
        }
        pos = end;
    }
    pos
}

/// The data records of fetched `batches` at `from` and after, and the offset after the last
/// batch. With `aborted` (read_committed: each aborted transaction's producer id and first
/// offset), the records of aborted transactions are dropped as Kafka's consumer drops them: a
/// transaction is aborted from its first offset until its producer's abort marker.
fn select_records(batches: Vec<Batch>, from: i64, aborted: Option<&[(i64, i64)]>) -> (Vec<Record>, i64) {
    let mut pending: Vec<(i64, i64)> = aborted.map(<[_]>::to_vec).unwrap_or_default();
    pending.sort_by_key(|(_, first)| std::cmp::Reverse(*first));
    let mut aborting: HashSet<i64> = HashSet::new();
    let mut next = from;
    let mut out = Vec::new();
    for b in batches {
        let h = b.header;
        next = next.max(h.last_offset() + 1);
        if aborted.is_some() && h.producer_id >= 0 {
            while pending.last().is_some_and(|(_, first)| *first <= h.last_offset()) {
                if let Some((pid, _)) = pending.pop() {
                    aborting.insert(pid);
                }
            }
            if h.is_control() {
                if is_abort_marker(&b) {
                    aborting.remove(&h.producer_id);
                }
                continue;
            }
            if h.is_transactional() && aborting.contains(&h.producer_id) {
                continue;
            }
        }
        if h.is_control() {
            continue;
        }
        out.extend(b.records.into_iter().filter(|r| r.offset >= from));
    }
    (out, next)
}

/// A control batch whose record is a transaction's abort marker (key: version, then type 0).
fn is_abort_marker(b: &Batch) -> bool {
    b.records.first().and_then(|r| r.key.as_ref()).is_some_and(|k| k.len() >= 4 && k[2] == 0 && k[3] == 0)
}

// ---------------------------------------------------------------------------------------------
// Transactions

/// The transaction in progress.
#[derive(Default)]
struct OpenTxn {
    /// Partitions added to it (AddPartitionsToTxn).
    partitions: HashSet<(String, i32)>,
    /// Groups whose offsets it carries (AddOffsetsToTxn).
    groups: HashSet<String>,
    /// A send or an offset commit failed: the transaction may only be aborted.
    failed: bool,
}

/// The transactional producer of one transactional id: `init`, then `begin`, `send` and
/// `send_offsets` as often as needed, and `commit` or `abort`; again from `begin`.
///
/// Once a call returns [`ClientError::Fenced`], every later call does too.
pub struct TxnProducer {
    client: Client,
    transactional_id: String,
    /// Producer id and epoch, once initialized.
    producer: Option<(i64, i16)>,
    /// The next sequence number per partition.
    sequences: HashMap<(String, i32), i32>,
    txn: Option<OpenTxn>,
    fenced: Option<ResponseError>,
    /// A send's outcome is unknown or a transaction's end failed: `init` must come before the
    /// next `begin`.
    needs_init: bool,
}

/// `seq` moved on by `n`, wrapping past i32::MAX to 0 as Kafka's sequence numbers do.
fn advance_sequence(seq: i32, n: usize) -> i32 {
    ((i64::from(seq) + n as i64) % (i64::from(i32::MAX) + 1)) as i32
}

impl TxnProducer {
    pub fn new(client: &Client, transactional_id: &str) -> TxnProducer {
        TxnProducer {
            client: client.clone(),
            transactional_id: transactional_id.to_string(),
            producer: None,
            sequences: HashMap::new(),
            txn: None,
            fenced: None,
            needs_init: false,
        }
    }

    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// Producer id and epoch, once initialized.
    pub fn producer_id_and_epoch(&self) -> Option<(i64, i16)> {
        self.producer
    }

    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced.is_some()
    }

    /// Remembers a fenced answer for every later call.
    fn note<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(ClientError::Fenced(code)) = &r {
            self.fenced = Some(*code);
            self.txn = None;
        }
        r
    }

    fn initialized(&self) -> Result<(i64, i16)> {
        if let Some(code) = self.fenced {
            return Err(ClientError::Fenced(code));
        }
        self.producer
            .ok_or_else(|| ClientError::State(format!("producer {} is not initialized", self.transactional_id)))
    }

    fn open(&self) -> Result<(i64, i16)> {
        let p = self.initialized()?;
        match &self.txn {
            None => Err(ClientError::State(format!("producer {} has no open transaction", self.transactional_id))),
            Some(t) if t.failed => Err(ClientError::State(format!(
                "producer {}: the transaction failed and may only be aborted",
                self.transactional_id
            ))),
            Some(_) => Ok(p),
        }
    }

    /// Gets a producer id and epoch from the transaction coordinator (FindCoordinator,
    /// InitProducerId), which fences every other instance of the transactional id and aborts its
    /// open transaction. Called again on an initialized producer, it names its id and epoch
    /// (KIP-360): the epoch is bumped unless another instance fenced this one, which then gets
    /// [`ClientError::Fenced`]. Sequence numbers start over; an open transaction is forgotten (the
    /// coordinator aborts it).
    pub async fn init(&mut self, transaction_timeout_ms: i32) -> Result<()> {
        if let Some(code) = self.fenced {
            return Err(ClientError::Fenced(code));
        }
        let (pid, epoch) = self.producer.unwrap_or((-1, -1));
        let client = &self.client;
        let id = &self.transactional_id;
        let req = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(sb(id))))
            .with_transaction_timeout_ms(transaction_timeout_ms)
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch);
        let r = client
            .with_coordinator(TXN_COORDINATOR, id, |addr| {
                let req = &req;
                async move {
                    let resp = client.send(&addr, versions::INIT_PRODUCER_ID, req, Duration::ZERO).await?;
                    txn_result(resp.error_code, &format!("InitProducerId of {id}"), None)?;
                    Ok((resp.producer_id.0, resp.producer_epoch))
                }
            })
            .await;
        let producer = self.note(r)?;
        self.producer = Some(producer);
        self.sequences.clear();
        self.txn = None;
        self.needs_init = false;
        Ok(())
    }

    /// Starts a transaction (nothing is sent until the first `send` or `send_offsets`).
    pub fn begin(&mut self) -> Result<()> {
        self.initialized()?;
        if self.txn.is_some() {
            return Err(ClientError::State(format!(
                "producer {} already has an open transaction",
                self.transactional_id
            )));
        }
        if self.needs_init {
            return Err(ClientError::State(format!(
                "producer {}: an earlier failure left its state unknown; init it again",
                self.transactional_id
            )));
        }
        self.txn = Some(OpenTxn::default());
        Ok(())
    }

    /// Writes `records` to the partition in the open transaction: AddPartitionsToTxn the first
    /// time the transaction writes there, then Produce (acks=all, idempotent), in batches of at
    /// most [`ClientConfig::max_batch_bytes`]. The offset of each record.
    pub async fn send(&mut self, topic: &str, partition: i32, records: Vec<ProducerRecord>) -> Result<Vec<i64>> {
        let r = self.send_inner(topic, partition, records).await;
        if r.as_ref().is_err_and(|e| !matches!(e, ClientError::State(_))) {
            if let Some(t) = &mut self.txn {
                t.failed = true;
            }
            self.needs_init = true;
        }
        self.note(r)
    }

    async fn send_inner(&mut self, topic: &str, partition: i32, records: Vec<ProducerRecord>) -> Result<Vec<i64>> {
        let mut written = self.send_many_inner(vec![(topic.to_string(), partition, records)]).await?;
        Ok(written.pop().unwrap_or_default())
    }

    /// Writes to several partitions in the open transaction at once: one AddPartitionsToTxn for
    /// those new to it, then every partition's Produce requests concurrently (each partition's
    /// own in order), so a transaction spread over many partitions costs about one round trip
    /// to their leaders, not one per partition.
    /// Writes naming one partition twice go as one, in their order.
    pub async fn send_many(&mut self, writes: Vec<(String, i32, Vec<ProducerRecord>)>) -> Result<()> {
        let mut merged: Vec<(String, i32, Vec<ProducerRecord>)> = Vec::with_capacity(writes.len());
        for (topic, partition, mut records) in writes {
            match merged.iter_mut().find(|(t, p, _)| *t == topic && *p == partition) {
                Some((_, _, to)) => to.append(&mut records),
                None => merged.push((topic, partition, records)),
            }
        }
        let r = self.send_many_inner(merged).await.map(|_| ());
        if r.as_ref().is_err_and(|e| !matches!(e, ClientError::State(_))) {
            if let Some(t) = &mut self.txn {
                t.failed = true;
            }
            self.needs_init = true;
        }
        self.note(r)
    }

    /// The offsets of each write's records, in the order of `writes` (each naming another
    /// partition: they are written concurrently, each from its own next sequence number).
    async fn send_many_inner(&mut self, writes: Vec<(String, i32, Vec<ProducerRecord>)>) -> Result<Vec<Vec<i64>>> {
        let (pid, epoch) = self.open()?;
        let mut new: Vec<(String, i32)> = Vec::new();
        for (topic, partition, records) in &writes {
            let key = (topic.clone(), *partition);
            if !records.is_empty()
                && !self.txn.as_ref().is_some_and(|t| t.partitions.contains(&key))
                && !new.contains(&key)
            {
                new.push(key);
            }
        }
        for (topic, partition) in &new {
            // A partition the cluster does not have fails here, at once (AddPartitionsToTxn would
            // answer UNKNOWN_TOPIC_OR_PARTITION, which is retriable).
            match self.client.leader(topic, *partition).await {
                Err(e) if e.code() == Some(ResponseError::UnknownTopicOrPartition) => return Err(e),
                _ => {}
            }
        }
        if !new.is_empty() {
            self.add_partitions(pid, epoch, &new).await?;
            if let Some(t) = &mut self.txn {
                t.partitions.extend(new);
            }
        }
        let max = self.client.inner.config.max_batch_bytes;
        let produces = writes.into_iter().map(|(topic, partition, records)| {
            let first_sequence = self.sequences.get(&(topic.clone(), partition)).copied().unwrap_or(0);
            let client = self.client.clone();
            let id = self.transactional_id.clone();
            async move {
                let mut sequence = first_sequence;
                let mut offsets = Vec::with_capacity(records.len());
                for chunk in split_by_bytes(&records, max) {
                    let producer = Producer { id: pid, epoch, base_sequence: sequence, transactional: true };
                    let base = client.produce(&topic, partition, &id, encode_records(chunk, producer)).await?;
                    sequence = advance_sequence(sequence, chunk.len());
                    // -1 when the broker did not say (a duplicate, as old brokers answer one).
                    offsets.extend((0..chunk.len() as i64).map(|i| if base < 0 { -1 } else { base + i }));
                }
                Ok::<_, ClientError>(((topic, partition), sequence, offsets))
            }
        });
        let done = futures::future::try_join_all(produces).await?;
        Ok(done
            .into_iter()
            .map(|(key, sequence, offsets)| {
                self.sequences.insert(key, sequence);
                offsets
            })
            .collect())
    }

    async fn add_partitions(&self, pid: i64, epoch: i16, partitions: &[(String, i32)]) -> Result<()> {
        let client = &self.client;
        let id = &self.transactional_id;
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in partitions {
            by_topic.entry(topic).or_default().push(*partition);
        }
        let req = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(sb(id)))
            .with_v3_and_below_producer_id(ProducerId(pid))
            .with_v3_and_below_producer_epoch(epoch)
            .with_v3_and_below_topics(
                by_topic
                    .iter()
                    .map(|(topic, ps)| {
                        AddPartitionsToTxnTopic::default().with_name(TopicName(sb(topic))).with_partitions(ps.clone())
                    })
                    .collect(),
            );
        let what = format!("AddPartitionsToTxn of {} partitions for {id}", partitions.len());
        client
            .with_coordinator(TXN_COORDINATOR, id, |addr| {
                let (req, what) = (&req, &what);
                async move {
                    let resp = client.send(&addr, versions::ADD_PARTITIONS_TO_TXN, req, Duration::ZERO).await?;
                    txn_result(resp.error_code, what, None)?;
                    for (topic, partition) in partitions {
                        let code = resp
                            .results_by_topic_v3_and_below
                            .iter()
                            .filter(|t| t.name.0.as_str() == topic)
                            .flat_map(|t| t.results_by_partition.iter())
                            .find(|p| p.partition_index == *partition)
                            .map(|p| p.partition_error_code)
                            .ok_or_else(|| ClientError::Protocol {
                                addr: addr.clone(),
                                message: format!("{what}: no answer for {topic}-{partition}"),
                            })?;
                        txn_result(code, &format!("AddPartitionsToTxn of {topic}-{partition} for {id}"), None)?;
                    }
                    Ok(())
                }
            })
            .await
    }

    /// Commits `offsets` (topic, partition, offset: the next record to consume) for `group_id`
    /// in the open transaction: AddOffsetsToTxn to the transaction coordinator, then
    /// TxnOffsetCommit to the group's coordinator (generation -1, no member: the group is not
    /// joined). They take effect when the transaction commits.
    pub async fn send_offsets<T: AsRef<str> + Sync>(
        &mut self,
        group_id: &str,
        offsets: &[(T, i32, i64)],
    ) -> Result<()> {
        let r = self.send_offsets_inner(group_id, offsets).await;
        if r.as_ref().is_err_and(|e| !matches!(e, ClientError::State(_))) {
            if let Some(t) = &mut self.txn {
                t.failed = true;
            }
        }
        self.note(r)
    }

    async fn send_offsets_inner<T: AsRef<str> + Sync>(
        &mut self,
        group_id: &str,
        offsets: &[(T, i32, i64)],
    ) -> Result<()> {
        let (pid, epoch) = self.open()?;
        let client = self.client.clone();
        let id = self.transactional_id.clone();
        if !self.txn.as_ref().is_some_and(|t| t.groups.contains(group_id)) {
            let req = AddOffsetsToTxnRequest::default()
                .with_transactional_id(TransactionalId(sb(&id)))
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch)
                .with_group_id(GroupId(sb(group_id)));
            let what = format!("AddOffsetsToTxn of group {group_id} for {id}");
            client
                .with_coordinator(TXN_COORDINATOR, &id, |addr| {
                    let (client, req, what) = (&client, &req, &what);
                    async move {
                        let resp = client.send(&addr, versions::ADD_OFFSETS_TO_TXN, req, Duration::ZERO).await?;
                        txn_result(resp.error_code, what, None)
                    }
                })
                .await?;
            if let Some(t) = &mut self.txn {
                t.groups.insert(group_id.to_string());
            }
        }
        let mut topics: BTreeMap<&str, Vec<TxnOffsetCommitRequestPartition>> = BTreeMap::new();
        for (topic, partition, offset) in offsets {
            topics.entry(topic.as_ref()).or_default().push(
                TxnOffsetCommitRequestPartition::default()
                    .with_partition_index(*partition)
                    .with_committed_offset(*offset),
            );
        }
        let req = TxnOffsetCommitRequest::default()
            .with_transactional_id(TransactionalId(sb(&id)))
            .with_group_id(GroupId(sb(group_id)))
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch)
            .with_generation_id(-1)
            .with_member_id(sb(""))
            .with_group_instance_id(None)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        TxnOffsetCommitRequestTopic::default().with_name(TopicName(sb(t))).with_partitions(ps)
                    })
                    .collect(),
            );
        let what = format!("TxnOffsetCommit of group {group_id} for {id}");
        client
            .with_coordinator(GROUP_COORDINATOR, group_id, |addr| {
                let (client, req, what) = (&client, &req, &what);
                async move {
                    let resp = client.send(&addr, versions::TXN_OFFSET_COMMIT, req, Duration::ZERO).await?;
                    let code = resp
                        .topics
                        .iter()
                        .flat_map(|t| t.partitions.iter())
                        .map(|p| p.error_code)
                        .find(|c| *c != 0)
                        .unwrap_or(0);
                    txn_result(code, what, None)
                }
            })
            .await
    }

    /// Commits the open transaction (EndTxn): its records become visible to read_committed
    /// consumers and its offsets the group's. A transaction that wrote nothing ends here.
    pub async fn commit(&mut self) -> Result<()> {
        self.end(true).await
    }

    /// Aborts the open transaction (EndTxn); without one, does nothing.
    pub async fn abort(&mut self) -> Result<()> {
        self.end(false).await
    }

    async fn end(&mut self, commit: bool) -> Result<()> {
        let (pid, epoch) = self.initialized()?;
        let Some(txn) = &self.txn else {
            if commit {
                return Err(ClientError::State(format!("producer {} has no open transaction", self.transactional_id)));
            }
            return Ok(());
        };
        if commit && txn.failed {
            return Err(ClientError::State(format!(
                "producer {}: the transaction failed and may only be aborted",
                self.transactional_id
            )));
        }
        if txn.partitions.is_empty() && txn.groups.is_empty() {
            self.txn = None;
            return Ok(());
        }
        let client = &self.client;
        let id = &self.transactional_id;
        let req = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(sb(id)))
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch)
            .with_committed(commit);
        let what = format!("EndTxn ({}) for {id}", if commit { "commit" } else { "abort" });
        let r = client
            .with_coordinator(TXN_COORDINATOR, id, |addr| {
                let (req, what) = (&req, &what);
                async move {
                    let resp = client.send(&addr, versions::END_TXN, req, Duration::ZERO).await?;
                    txn_result(resp.error_code, what, None)
                }
            })
            .await;
        match &r {
            Ok(()) => self.txn = None,
            Err(ClientError::Fenced(_)) => {}
            Err(_) => {
                // The outcome may be unknown: a commit may still be aborted; `init` settles it.
                self.needs_init = true;
                match &mut self.txn {
                    Some(t) if commit => t.failed = true,
                    _ => self.txn = None,
                }
            }
        }
        self.note(r)
    }
}

/// One uncompressed v2 batch of `records` (base offset 0, the log assigns it).
/// `records` cut into batches of at most `max` bytes (by their size estimates; a record larger
/// than that goes alone).
fn split_by_bytes(records: &[ProducerRecord], max: usize) -> Vec<&[ProducerRecord]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < records.len() {
        let mut end = start;
        let mut size = BATCH_HEADER;
        while end < records.len() && (end == start || size + records[end].size_estimate() <= max) {
            size += records[end].size_estimate();
            end += 1;
        }
        out.push(&records[start..end]);
        start = end;
    }
    out
}

fn encode_records(records: &[ProducerRecord], producer: Producer) -> Bytes {
    type Headers<'a> = Vec<(&'a [u8], Option<&'a [u8]>)>;
    let headers: Vec<Headers<'_>> =
        records.iter().map(|r| r.headers.iter().map(|(k, v)| (&k[..], v.as_deref())).collect()).collect();
    let new: Vec<NewRecord<'_>> = records
        .iter()
        .zip(&headers)
        .map(|(r, h)| NewRecord {
            timestamp: r.timestamp,
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: h,
        })
        .collect();
    Bytes::from(build_records(&new, Some(producer)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_storage::batch::{build_marker, patch};

    fn rec(ts: i64, v: &str) -> ProducerRecord {
        ProducerRecord { timestamp: ts, key: None, value: Some(Bytes::from(v.to_string())), headers: vec![] }
    }

    /// A batch at `base` of producer `pid` (transactional when `pid` >= 0).
    fn batch_at(base: i64, pid: i64, values: &[&str]) -> Bytes {
        let records: Vec<ProducerRecord> = values.iter().map(|v| rec(10, v)).collect();
        let producer = Producer { id: pid, epoch: 0, base_sequence: 0, transactional: pid >= 0 };
        let mut b = encode_records(&records, producer).to_vec();
        patch(&mut b, base, 0, None);
        Bytes::from(b)
    }

    fn marker_at(base: i64, pid: i64, commit: bool) -> Bytes {
        let mut b = build_marker(pid, 0, 0, commit, 10);
        patch(&mut b, base, 0, None);
        Bytes::from(b)
    }

    fn values(records: &[Record]) -> Vec<String> {
        records.iter().map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()).collect()
    }

    fn decode(parts: &[Bytes]) -> Vec<Batch> {
        let data: Vec<u8> = parts.iter().flat_map(|b| b.iter().copied()).collect();
        decode_batches(&Bytes::from(data), 1 << 20).unwrap()
    }

    #[test]
    fn aborted_transactions_are_dropped_read_committed_only() {
        // 0-1: producer 7 (aborted at 4); 2: producer 8 (committed at 5); 3: producer 7 again,
        // before its marker; 4: abort marker of 7; 5: commit marker of 8; 6-7: producer 7's
        // next transaction (committed later): after the marker, no longer aborted.
        let parts = [
            batch_at(0, 7, &["a0", "a1"]),
            batch_at(2, 8, &["c0"]),
            batch_at(3, 7, &["a2"]),
            marker_at(4, 7, false),
            marker_at(5, 8, true),
            batch_at(6, 7, &["n0", "n1"]),
        ];
        let (all, next) = select_records(decode(&parts), 0, None);
        assert_eq!(values(&all), ["a0", "a1", "c0", "a2", "n0", "n1"]);
        assert_eq!(next, 8);
        let (committed, next) = select_records(decode(&parts), 0, Some(&[(7, 0)]));
        assert_eq!(values(&committed), ["c0", "n0", "n1"]);
        assert_eq!(next, 8);
        // Starting inside the first batch: records before the offset asked for are skipped.
        let (from1, _) = select_records(decode(&parts), 1, None);
        assert_eq!(values(&from1), ["a1", "c0", "a2", "n0", "n1"]);
        // Only control records: still moves past them.
        let (none, next) = select_records(decode(&parts[3..5]), 4, Some(&[]));
        assert!(none.is_empty());
        assert_eq!(next, 6);
        // Nothing fetched: stay.
        assert_eq!(select_records(Vec::new(), 42, Some(&[])).1, 42);
    }

    #[test]
    fn partial_trailing_batch_is_cut() {
        let a = batch_at(0, -1, &["x"]);
        let b = batch_at(1, -1, &["y", "z"]);
        let mut data = a.to_vec();
        data.extend_from_slice(&b);
        assert_eq!(whole_batches(&data), data.len());
        assert_eq!(whole_batches(&data[..data.len() - 1]), a.len());
        assert_eq!(whole_batches(&data[..a.len() + 5]), a.len());
        assert_eq!(whole_batches(&data[..3]), 0);
    }

    #[test]
    fn built_batches_keep_timestamps_and_headers() {
        let records = vec![
            ProducerRecord {
                timestamp: 5000,
                key: Some(Bytes::from_static(b"k")),
                value: None,
                headers: vec![(Bytes::from_static(b"h"), Some(Bytes::from_static(b"v")))],
            },
            rec(4000, "earlier"),
        ];
        let producer = Producer { id: 3, epoch: 2, base_sequence: 17, transactional: true };
        let b = decode(&[encode_records(&records, producer)]);
        let h = b[0].header;
        assert!(h.is_transactional());
        assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence, h.max_timestamp), (3, 2, 17, 5000));
        let r = &b[0].records;
        assert_eq!((r[0].timestamp, r[1].timestamp), (5000, 4000));
        assert_eq!(r[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(r[0].value, None);
        assert_eq!(r[0].headers, vec![(Bytes::from_static(b"h"), Some(Bytes::from_static(b"v")))]);
    }

    #[test]
    fn sequences_wrap_like_kafka() {
        assert_eq!(advance_sequence(0, 3), 3);
        assert_eq!(advance_sequence(i32::MAX - 1, 1), i32::MAX);
        assert_eq!(advance_sequence(i32::MAX, 1), 0);
        assert_eq!(advance_sequence(i32::MAX - 1, 5), 3);
    }

    #[test]
    fn fencing_codes_are_their_own_error() {
        for code in [
            ResponseError::ProducerFenced,
            ResponseError::InvalidProducerEpoch,
            ResponseError::TransactionalIdAuthorizationFailed,
            ResponseError::InvalidTxnState,
        ] {
            let e = txn_result(code.code(), "x", None).unwrap_err();
            assert!(e.is_fenced() && !e.is_retriable(), "{e}");
            assert_eq!(e.code(), Some(code));
        }
        let e = txn_result(ResponseError::ConcurrentTransactions.code(), "x", None).unwrap_err();
        assert!(!e.is_fenced() && e.is_retriable());
        assert!(txn_result(0, "x", None).is_ok());
    }

    /// The runner holds these across its own awaits on a multi-threaded runtime.
    #[test]
    fn futures_are_send() {
        fn send<T: Send>(_: T) {}
        let c = Client::connect(vec!["127.0.0.1:1".into()], "t");
        let mut p = TxnProducer::new(&c, "t");
        send(c.metadata(&["t"]));
        send(c.fetch("t", 0, 0, 1, 0, true));
        send(c.list_offset("t", 0, -1));
        send(c.committed_offset("g", "t", 0));
        send(c.create_topic("t", 1, 1));
        send(p.init(1000));
        send(p.send("t", 0, vec![]));
        send(p.send_offsets::<&str>("g", &[]));
        send(p.commit());
        send(p.abort());
    }
}
