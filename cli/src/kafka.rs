//! A small blocking Kafka client: one connection per broker, requests answered in order, the
//! versions fixed to ones Fjord and Kafka 3.x both serve. Enough for an admin CLI; producers and
//! consumers that need throughput use a real client library.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::error::CliError;

pub fn s(x: &str) -> StrBytes {
    StrBytes::from_string(x.to_string())
}

/// Kafka's name for an error code, as users search for it.
pub fn error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        Some(e) => format!("{e:?}"),
        None => format!("error code {code}"),
    }
}

/// Requests that may be sent again to another broker when one did not answer: resending a
/// change (CreateTopics, ...) could report a failure for a change that was made.
fn changes_nothing(key: ApiKey) -> bool {
    matches!(
        key,
        ApiKey::Metadata
            | ApiKey::FindCoordinator
            | ApiKey::DescribeConfigs
            | ApiKey::ListGroups
            | ApiKey::DescribeGroups
            | ApiKey::ListPartitionReassignments
            | ApiKey::DescribeCluster
            | ApiKey::ListOffsets
            | ApiKey::OffsetFetch
    )
}

/// COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR: ask again.
pub fn coordinator_moved(code: i16) -> bool {
    matches!(code, 14..=16)
}

/// A refusal as one line: Kafka's error name, and the broker's message when it sent one.
pub fn refusal(what: &str, code: i16, message: Option<&StrBytes>) -> CliError {
    let detail = message.map(|m| m.to_string()).filter(|m| !m.is_empty());
    let mut e = CliError::failed(match detail {
        Some(m) => format!("{what}: {} ({m})", error_name(code)),
        None => format!("{what}: {}", error_name(code)),
    });
    e.code = Some(code);
    e
}

struct Conn {
    stream: TcpStream,
    next_id: i32,
}

impl Conn {
    fn open(addr: &str, timeout: Duration) -> Result<Conn, String> {
        let addrs: Vec<_> = addr.to_socket_addrs().map_err(|e| format!("{addr}: {e}"))?.collect();
        let mut last = format!("{addr}: no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(stream) => {
                    // The broker's own timeout (the requests' timeout_ms) comes first, answered
                    // as an error the command can name.
                    stream.set_read_timeout(Some(timeout + RESPONSE_MARGIN)).map_err(|e| e.to_string())?;
                    stream.set_nodelay(true).ok();
                    return Ok(Conn { stream, next_id: 1 });
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(last)
    }

    fn call<Q: Encodable, R: Decodable>(&mut self, key: ApiKey, version: i16, req: &Q) -> std::io::Result<R> {
        let id = self.send(key, version, req)?;
        let bad = |e: anyhow::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let n = usize::try_from(i32::from_be_bytes(len)).map_err(|_| bad(anyhow::anyhow!("negative frame length")))?;
        let mut body = vec![0u8; n];
        self.stream.read_exact(&mut body)?;
        let mut frame = Bytes::from(body);
        let h = ResponseHeader::decode(&mut frame, key.response_header_version(version)).map_err(bad)?;
        if h.correlation_id != id {
            return Err(bad(anyhow::anyhow!("response {} to request {id}", h.correlation_id)));
        }
        R::decode(&mut frame, version).map_err(bad)
    }

    /// Writes a request; its correlation id.
    fn send<Q: Encodable>(&mut self, key: ApiKey, version: i16, req: &Q) -> std::io::Result<i32> {
        let id = self.next_id;
        self.next_id += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = key as i16;
        header.request_api_version = version;
        header.correlation_id = id;
        header.client_id = Some(StrBytes::from_static_str("fjordctl"));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        let bad = |e: anyhow::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
        header.encode(&mut buf, key.request_header_version(version)).map_err(bad)?;
        req.encode(&mut buf, version).map_err(bad)?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf)?;
        Ok(id)
    }
}

/// Brokers by node id, from the last Metadata.
#[derive(Clone, Debug)]
pub struct BrokerAddr {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

pub struct Client {
    bootstrap: Vec<String>,
    timeout: Duration,
    /// The connection Metadata and controller-bound requests go through first.
    seed: Option<(String, Conn)>,
    conns: HashMap<i32, Conn>,
    pub brokers: HashMap<i32, BrokerAddr>,
    pub controller: i32,
    pub cluster_id: Option<String>,
}

/// How much longer than a request's own timeout a response may take to arrive.
const RESPONSE_MARGIN: Duration = Duration::from_secs(5);

/// How long a retriable refusal (no leader yet, coordinator loading) is retried.
pub const RETRY_FOR: Duration = Duration::from_secs(15);

impl Client {
    /// Connects to the first reachable bootstrap broker and reads the cluster's brokers. An
    /// unreachable cluster is one line naming every address tried.
    pub fn connect(bootstrap: &[String], timeout: Duration) -> Result<Client, CliError> {
        let mut c = Client {
            bootstrap: bootstrap.to_vec(),
            timeout,
            seed: None,
            conns: HashMap::new(),
            brokers: HashMap::new(),
            controller: -1,
            cluster_id: None,
        };
        c.refresh(&[])?;
        Ok(c)
    }

    fn seed(&mut self) -> Result<&mut Conn, CliError> {
        if self.seed.is_none() {
            let mut errors = Vec::new();
            for addr in &self.bootstrap {
                match Conn::open(addr, self.timeout) {
                    Ok(conn) => {
                        self.seed = Some((addr.clone(), conn));
                        break;
                    }
                    Err(e) => errors.push(e),
                }
            }
            if self.seed.is_none() {
                return Err(CliError::unreachable(format!("cannot reach any broker ({})", errors.join("; "))));
            }
        }
        Ok(&mut self.seed.as_mut().expect("connected above").1)
    }

    /// Sends to the bootstrap broker (any broker can answer Metadata and forwards admin
    /// requests to the controller).
    pub fn any<Q: Encodable, R: Decodable>(&mut self, key: ApiKey, version: i16, req: &Q) -> Result<R, CliError> {
        for attempt in 0..2 {
            let conn = self.seed()?;
            match conn.call(key, version, req) {
                Ok(r) => return Ok(r),
                Err(e) if attempt == 0 && changes_nothing(key) => {
                    // The broker went away: another from the bootstrap list may answer.
                    let dead = self.seed.take().map(|(a, _)| a);
                    self.bootstrap.retain(|a| Some(a) != dead.as_ref());
                    if self.bootstrap.is_empty() {
                        return Err(CliError::unreachable(format!("{key:?}: {e}")));
                    }
                }
                Err(e) => return Err(CliError::unreachable(format!("{key:?}: {e}"))),
            }
        }
        unreachable!("the loop returns")
    }

    /// The connection to broker `node`, opened on first use.
    fn conn(&mut self, node: i32) -> Result<&mut Conn, CliError> {
        if !self.conns.contains_key(&node) {
            let b = self
                .brokers
                .get(&node)
                .ok_or_else(|| CliError::failed(format!("broker {node} is not in the cluster's metadata")))?;
            let addr = format!("{}:{}", b.host, b.port);
            let conn =
                Conn::open(&addr, self.timeout).map_err(|e| CliError::unreachable(format!("broker {node}: {e}")))?;
            self.conns.insert(node, conn);
        }
        Ok(self.conns.get_mut(&node).expect("inserted above"))
    }

    /// Sends to broker `node`.
    pub fn to<Q: Encodable, R: Decodable>(
        &mut self,
        node: i32,
        key: ApiKey,
        version: i16,
        req: &Q,
    ) -> Result<R, CliError> {
        match self.conn(node)?.call(key, version, req) {
            Ok(r) => Ok(r),
            Err(e) => {
                self.conns.remove(&node);
                Err(CliError::unreachable(format!("broker {node}: {e}")))
            }
        }
    }

    /// `to`, for a request the broker may hold for up to `wait` before answering (JoinGroup).
    pub fn waiting_on<Q: Encodable, R: Decodable>(
        &mut self,
        node: i32,
        key: ApiKey,
        version: i16,
        req: &Q,
        wait: Duration,
    ) -> Result<R, CliError> {
        let usual = self.timeout + RESPONSE_MARGIN;
        let conn = self.conn(node)?;
        let _ = conn.stream.set_read_timeout(Some(wait.max(usual)));
        let r = self.to(node, key, version, req);
        if let Some(conn) = self.conns.get_mut(&node) {
            let _ = conn.stream.set_read_timeout(Some(usual));
        }
        r
    }

    /// Sends to broker `node` a request that gets no answer (Produce with acks=0).
    pub fn send_only<Q: Encodable>(&mut self, node: i32, key: ApiKey, version: i16, req: &Q) -> Result<(), CliError> {
        self.conn(node)?
            .send(key, version, req)
            .map(|_| ())
            .map_err(|e| CliError::unreachable(format!("broker {node}: {e}")))
    }

    /// Metadata for `topics` (all topics when empty), remembering the brokers and controller.
    pub fn refresh(&mut self, topics: &[String]) -> Result<MetadataResponse, CliError> {
        let mut req = MetadataRequest::default();
        req.topics = if topics.is_empty() {
            None
        } else {
            Some(
                topics
                    .iter()
                    .map(|t| {
                        let mut m = metadata_request::MetadataRequestTopic::default();
                        m.name = Some(TopicName(s(t)));
                        m
                    })
                    .collect(),
            )
        };
        req.allow_auto_topic_creation = false;
        let r: MetadataResponse = self.any(ApiKey::Metadata, 12, &req)?;
        self.brokers = r
            .brokers
            .iter()
            .map(|b| {
                let a = BrokerAddr {
                    id: b.node_id.0,
                    host: b.host.to_string(),
                    port: b.port,
                    rack: b.rack.as_ref().map(|r| r.to_string()),
                };
                (b.node_id.0, a)
            })
            .collect();
        self.controller = r.controller_id.0;
        self.cluster_id = r.cluster_id.as_ref().map(|c| c.to_string());
        Ok(r)
    }

    /// One topic's metadata; an unknown topic is a failure naming it.
    pub fn topic(&mut self, name: &str) -> Result<metadata_response::MetadataResponseTopic, CliError> {
        let r = self.refresh(&[name.to_string()])?;
        let t = r.topics.into_iter().next().ok_or_else(|| CliError::failed(format!("topic {name}: no metadata")))?;
        if t.error_code != 0 {
            return Err(refusal(&format!("topic {name}"), t.error_code, None));
        }
        Ok(t)
    }

    /// `topic`'s partitions, in order, or only those of `only` (each of which must exist).
    pub fn select_partitions(&mut self, topic: &str, only: &[i32]) -> Result<Vec<i32>, CliError> {
        let t = self.topic(topic)?;
        let mut parts: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
        parts.sort();
        if let Some(p) = only.iter().find(|p| !parts.contains(p)) {
            return Err(CliError::usage(format!("topic {topic} has no partition {p}")));
        }
        if !only.is_empty() {
            parts.retain(|p| only.contains(p));
        }
        Ok(parts)
    }

    /// The leader of each partition of `topic`, waiting out elections (no leader for a while).
    pub fn leaders(&mut self, topic: &str) -> Result<Vec<(i32, i32)>, CliError> {
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            let t = self.topic(topic)?;
            let mut out: Vec<(i32, i32)> = t.partitions.iter().map(|p| (p.partition_index, p.leader_id.0)).collect();
            out.sort();
            if out.iter().all(|(_, l)| *l >= 0) || Instant::now() >= deadline {
                return Ok(out);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `f` against `group`'s coordinator, finding it again and retrying while the answer
    /// is that the coordinator moved or is loading (leaderships change under a cluster).
    pub fn with_coordinator<T>(
        &mut self,
        group: &str,
        mut f: impl FnMut(&mut Client, i32) -> Result<T, CliError>,
    ) -> Result<(i32, T), CliError> {
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            let coordinator = self.coordinator(group)?;
            match f(self, coordinator) {
                Ok(t) => return Ok((coordinator, t)),
                Err(e) if e.code.is_some_and(coordinator_moved) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The broker coordinating `group`, retried while the cluster is still placing it.
    pub fn coordinator(&mut self, group: &str) -> Result<i32, CliError> {
        let deadline = Instant::now() + RETRY_FOR;
        let mut req = FindCoordinatorRequest::default();
        req.key = s(group);
        loop {
            let r: FindCoordinatorResponse = self.any(ApiKey::FindCoordinator, 3, &req)?;
            if r.error_code == 0 {
                if !self.brokers.contains_key(&r.node_id.0) {
                    self.refresh(&[])?;
                }
                return Ok(r.node_id.0);
            }
            let retriable = ResponseError::try_from_code(r.error_code).is_some_and(|e| e.is_retriable());
            if !retriable || Instant::now() >= deadline {
                return Err(refusal(
                    &format!("group {group}: finding its coordinator"),
                    r.error_code,
                    r.error_message.as_ref(),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The end offset of each partition (`timestamp` -1 latest, -2 earliest, else the first
    /// offset at or after that time, -1 when none is), asked of each partition's leader.
    pub fn offsets(&mut self, topic: &str, partitions: &[i32], timestamp: i64) -> Result<HashMap<i32, i64>, CliError> {
        self.offsets_as(topic, partitions, timestamp, false)
    }

    /// `offsets` as a read_committed consumer sees them: the latest is the last stable offset.
    pub fn offsets_as(
        &mut self,
        topic: &str,
        partitions: &[i32],
        timestamp: i64,
        read_committed: bool,
    ) -> Result<HashMap<i32, i64>, CliError> {
        // A leadership that moves between the metadata and the request (a topic just created,
        // a failover) is answered NOT_LEADER_OR_FOLLOWER: look the leaders up again and ask
        // again for what is still missing, as clients do.
        let deadline = Instant::now() + RETRY_FOR;
        let mut out = HashMap::new();
        loop {
            // Partitions still missing, with the refusal each got (0: it had no leader).
            let mut missing: Vec<(i32, i16)> = Vec::new();
            let mut by_leader: HashMap<i32, Vec<i32>> = HashMap::new();
            for (p, l) in self.leaders(topic)? {
                if partitions.contains(&p) && !out.contains_key(&p) {
                    by_leader.entry(l).or_default().push(p);
                }
            }
            for (leader, ps) in by_leader {
                if leader < 0 {
                    missing.extend(ps.iter().map(|p| (*p, 0)));
                    continue;
                }
                let req = list_offsets(topic, &ps, timestamp, read_committed);
                let r: ListOffsetsResponse = self.to(leader, ApiKey::ListOffsets, 7, &req)?;
                for p in r.topics.into_iter().flat_map(|t| t.partitions) {
                    if p.error_code == 0 {
                        out.insert(p.partition_index, p.offset);
                    } else {
                        missing.push((p.partition_index, p.error_code));
                    }
                }
            }
            let retriable =
                |code: i16| code == 0 || ResponseError::try_from_code(code).is_some_and(|e| e.is_retriable());
            let last_try = Instant::now() >= deadline;
            if let Some(&(p, code)) = missing.iter().find(|(_, c)| !retriable(*c) || last_try) {
                if code == 0 {
                    return Err(CliError::failed(format!("topic {topic}: partition {p} has no leader")));
                }
                return Err(refusal(&format!("{topic}-{p}: offsets"), code, None));
            }
            if missing.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(out)
    }
}

/// A ListOffsets request for `partitions` of `topic`, all at `timestamp`.
fn list_offsets(topic: &str, partitions: &[i32], timestamp: i64, read_committed: bool) -> ListOffsetsRequest {
    let mut t = list_offsets_request::ListOffsetsTopic::default();
    t.name = TopicName(s(topic));
    t.partitions = partitions
        .iter()
        .map(|p| {
            let mut lp = list_offsets_request::ListOffsetsPartition::default();
            lp.partition_index = *p;
            lp.timestamp = timestamp;
            lp
        })
        .collect();
    let mut req = ListOffsetsRequest::default();
    req.replica_id = BrokerId(-1);
    req.isolation_level = i8::from(read_committed);
    req.topics = vec![t];
    req
}
