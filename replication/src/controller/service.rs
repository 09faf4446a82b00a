//! The controller as a service on every node. Admin requests and broker liveness go to the
//! controller quorum's leader: a node that leads builds the record from its applied state and
//! proposes it; any other node forwards the request to the leader it knows (one hop; the leader
//! answers `NotLeader` if leadership moved, and the caller follows it), as Kafka forwards admin
//! requests to its active controller.
//!
//! Liveness, as in KRaft: a broker registers (starting fenced), then heartbeats. The leader keeps
//! when it last heard each broker in memory only (heartbeats are never written to the log),
//! unfences a broker once it has applied its own registration, and fences one it has not heard
//! from for the session timeout. A new leader gives every broker a full session before fencing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::storage::RaftStateMachine;
use openraft::ServerState;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use uuid::Uuid;

use super::machine::{ControllerMachine, ProposeError};
use super::propose::{ConfigValidator, NewTopic, ReassignmentStep, TopicDefaults};
use super::records::{
    BrokerRegistration, ConfigResource, ErrorCode, GroupId, LeadershipReport, MetadataError, MetadataRecord,
    NodeId as BrokerId, Reassignment,
};
use super::state::{ClusterMetadata, Outcome, CONTROLLER_GROUP};
use crate::node::SERVICE_RPC_BASE;
use crate::rpc::{self, CodecError, RemoteFailure};
use crate::transport::{BoxFuture, InboundHandler, Transport};
use crate::types::{NodeId, Raft, TypeConfig};

/// A request to the controller leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    RegisterBroker(BrokerRegistration),
    /// `caught_up`: the sender has applied its own current registration.
    Heartbeat {
        node_id: BrokerId,
        incarnation: Uuid,
        caught_up: bool,
    },
    CreateTopic(NewTopic),
    CreatePartitions {
        topic: String,
        count: i32,
        assignments: Option<Vec<Vec<BrokerId>>>,
    },
    DeleteTopic {
        name: String,
    },
    AlterConfigs {
        #[serde(with = "crate::controller::records::resource_wire")]
        resource: ConfigResource,
        changes: BTreeMap<String, Option<String>>,
    },
    AllocateProducerIds {
        node_id: BrokerId,
    },
    ReportLeadership {
        reporter: BrokerId,
        partitions: Vec<LeadershipReport>,
    },
    AlterReassignments {
        entries: Vec<Reassignment>,
        allow_replication_factor_change: bool,
    },
    /// From a group's leader: a step of the partition's reassignment `epoch`.
    ReassignmentStep {
        group_id: GroupId,
        epoch: u64,
        step: ReassignmentStep,
    },
}

/// What the controller answered: `Ok(Some(_))` a record applied, `Ok(None)` accepted with nothing
/// to write (a heartbeat), `Err` refused with the Kafka error clients get.
pub type Answer = Result<Option<Outcome>, MetadataError>;

/// Why a request got no answer from the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SubmitError {
    #[error("no controller leader within the wait (last known: {0:?})")]
    NoLeader(Option<NodeId>),
    #[error("the controller quorum did not commit the request in time")]
    Timeout,
    #[error("controller: {0}")]
    Internal(String),
}

/// The service RPC that carries a `Request` to the leader.
pub const RPC_SUBMIT: u8 = SERVICE_RPC_BASE;

/// What one attempt at the leader gave.
#[derive(Debug, Serialize, Deserialize)]
enum Attempt {
    Answered(Answer),
    NotLeader(Option<NodeId>),
    Failed(SubmitError),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Timings of the liveness protocol.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// How often a broker heartbeats (Kafka's `broker.heartbeat.interval.ms`, 2 s).
    pub heartbeat_interval: Duration,
    /// Silence after which the leader fences a broker (`broker.session.timeout.ms`, 9 s).
    pub session_timeout: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness { heartbeat_interval: Duration::from_secs(2), session_timeout: Duration::from_secs(9) }
    }
}

/// The leader's view of broker liveness: since when it leads, and when it last heard each broker.
#[derive(Default)]
struct Seen {
    /// The term this view belongs to; a new term starts a fresh view.
    term: u64,
    since: Option<Instant>,
    last: BTreeMap<BrokerId, (Uuid, Instant)>,
}

/// The controller service of one node, over that node's replica of the controller group.
pub struct Controller<SM: RaftStateMachine<TypeConfig>> {
    node_id: NodeId,
    machine: ControllerMachine,
    raft: Raft<SM>,
    transport: Transport,
    defaults: TopicDefaults,
    validator: Arc<dyn ConfigValidator + Send + Sync>,
    liveness: Liveness,
    seen: Mutex<Seen>,
    /// When the controller last answered this broker's heartbeat or registration.
    last_answer: Mutex<Option<tokio::time::Instant>>,
}

impl<SM: RaftStateMachine<TypeConfig>> Controller<SM> {
    pub fn new(
        machine: ControllerMachine,
        raft: Raft<SM>,
        transport: Transport,
        defaults: TopicDefaults,
        validator: Arc<dyn ConfigValidator + Send + Sync>,
        liveness: Liveness,
    ) -> Arc<Self> {
        let node_id = transport.node_id();
        Arc::new(Controller {
            node_id,
            machine,
            raft,
            transport,
            defaults,
            validator,
            liveness,
            seen: Mutex::new(Seen::default()),
            last_answer: Mutex::new(None),
        })
    }

    pub fn machine(&self) -> &ControllerMachine {
        &self.machine
    }

    /// The controller leader as this node knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Sends `req` to the controller leader and waits up to `wait` for its answer, following
    /// leadership as it moves. A node that does not know the leader (a broker that is not a voter
    /// and has not joined as a learner yet) asks its peers in turn; they name the leader.
    pub async fn submit(&self, req: Request, wait: Duration) -> Result<Answer, SubmitError> {
        let give_up = Instant::now() + wait;
        let body = rpc::encode(&req).map_err(|e| SubmitError::Internal(e.to_string()))?;
        let mut hint: Option<NodeId> = None;
        let mut probe = 0usize;
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SubmitError::NoLeader(hint));
            }
            let target = self.leader().or(hint).or_else(|| {
                let mut peers = self.transport.peer_ids();
                peers.sort_unstable();
                probe += 1;
                peers.get(probe % peers.len().max(1)).copied()
            });
            let attempt = match target {
                Some(l) if l == self.node_id => self.execute(req.clone(), left).await,
                Some(l) => self.forward(l, &body, left).await,
                None => Attempt::NotLeader(None),
            };
            match attempt {
                Attempt::Answered(a) => return Ok(a),
                Attempt::Failed(e) => return Err(e),
                // Elections take a few hundred ms; ask again shortly.
                Attempt::NotLeader(l) => hint = l.filter(|l| Some(*l) != target),
            }
            tokio::time::sleep(Duration::from_millis(20).min(left)).await;
        }
    }

    async fn forward(&self, leader: NodeId, body: &[u8], wait: Duration) -> Attempt {
        match self.transport.call(leader, CONTROLLER_GROUP, RPC_SUBMIT, &[body], wait).await {
            Ok(resp) => match rpc::decode_response::<Attempt>(&resp) {
                Ok(a) => a,
                Err(CodecError::Remote(e)) => Attempt::Failed(SubmitError::Internal(e.to_string())),
                Err(e) => Attempt::Failed(SubmitError::Internal(format!("bad answer from node {leader}: {e}"))),
            },
            // Unreachable or silent: maybe no longer the leader; look again.
            Err(e) => {
                tracing::debug!(leader, error = %e, "controller leader unreachable");
                Attempt::NotLeader(None)
            }
        }
    }

    /// Runs `req` here, as the leader: builds its record from the applied state and proposes it.
    async fn execute(&self, req: Request, wait: Duration) -> Attempt {
        let term = {
            let m = self.raft.metrics().borrow_watched().clone();
            if m.state != ServerState::Leader {
                return Attempt::NotLeader(m.current_leader.filter(|l| *l != self.node_id));
            }
            // A leader its quorum has not answered for a session timeout answers nothing, not
            // even a heartbeat it could answer from memory: a broker cut off along with it
            // must notice that it lost the controller.
            if self.quorum_silent(&m) {
                return Attempt::NotLeader(None);
            }
            m.current_term
        };
        self.fresh_view(term);
        // The cluster is named before anything else is recorded in it.
        if !self.ensure_cluster_id().await {
            return Attempt::Failed(SubmitError::Timeout);
        }
        let record = match &req {
            Request::Heartbeat { node_id, incarnation, caught_up } => {
                match self.heartbeat(*node_id, *incarnation, *caught_up) {
                    Ok(Some(r)) => r,
                    Ok(None) => return Attempt::Answered(Ok(None)),
                    Err(e) => return Attempt::Answered(Err(e)),
                }
            }
            // A linearizable read: a quorum confirms this node still leads, and the state it
            // answers from has applied everything committed before the check came in. (A
            // replacement committed after the answer is still acted on once by the partition
            // leader's next step; each step checks again.)
            Request::ReassignmentStep { group_id, epoch, step: ReassignmentStep::Check } => {
                let read = self.raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex);
                match tokio::time::timeout(wait, read).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        return match e.forward_to_leader() {
                            Some(f) => Attempt::NotLeader(f.leader_id.filter(|l| *l != self.node_id)),
                            None => Attempt::Failed(SubmitError::Timeout),
                        }
                    }
                    Err(_) => return Attempt::Failed(SubmitError::Timeout),
                }
                let answer = self.machine.read(|m| m.check_reassignment(*group_id, *epoch));
                return Attempt::Answered(answer.map(|()| None));
            }
            other => match self.machine.read(|m| self.record_for(m, other)) {
                Ok(r) => r,
                Err(e) => return Attempt::Answered(Err(e)),
            },
        };
        let answer = match self.machine.propose(&self.raft, &record, wait).await {
            Ok(outcome) => outcome.map(Some),
            Err(ProposeError::NotLeader(l)) => return Attempt::NotLeader(l),
            Err(ProposeError::Timeout) => return Attempt::Failed(SubmitError::Timeout),
            Err(ProposeError::Raft(e)) => return Attempt::Failed(SubmitError::Internal(e)),
        };
        if let (Request::RegisterBroker(reg), Ok(_)) = (&req, &answer) {
            lock(&self.seen).last.insert(reg.node_id, (reg.incarnation, Instant::now()));
            self.add_learners().await;
        }
        Attempt::Answered(answer)
    }

    fn record_for(&self, m: &ClusterMetadata, req: &Request) -> Result<MetadataRecord, MetadataError> {
        match req {
            Request::RegisterBroker(reg) => m.propose_register_broker(reg.clone()),
            Request::CreateTopic(t) => {
                m.propose_create_topic(t, Uuid::new_v4(), self.defaults, self.validator.as_ref())
            }
            Request::CreatePartitions { topic, count, assignments } => {
                m.propose_create_partitions(topic, *count, assignments.as_deref())
            }
            Request::DeleteTopic { name } => m.propose_delete_topic(name),
            Request::AlterConfigs { resource, changes } => {
                m.propose_alter_configs(resource.clone(), changes.clone(), self.validator.as_ref())
            }
            Request::AllocateProducerIds { node_id } => m.propose_allocate_producer_ids(*node_id),
            Request::ReportLeadership { reporter, partitions } => m.propose_report(*reporter, partitions.clone()),
            Request::AlterReassignments { entries, allow_replication_factor_change } => {
                m.propose_alter_reassignments(entries.clone(), *allow_replication_factor_change)
            }
            Request::ReassignmentStep { group_id, epoch, step } => {
                match m.propose_reassignment_step(*group_id, *epoch, step)? {
                    Some(record) => Ok(record),
                    None => Err(MetadataError::new(ErrorCode::InvalidRequest, "a reassignment check has no record")),
                }
            }
            Request::Heartbeat { .. } => {
                Err(MetadataError::new(ErrorCode::InvalidRequest, "a heartbeat has no record"))
            }
        }
    }

    /// Names the cluster if nobody has yet; false if that did not commit.
    async fn ensure_cluster_id(&self) -> bool {
        if self.machine.read(|m| m.cluster_id().is_some()) {
            return true;
        }
        // Kafka's form: 22 characters.
        let cluster_id = Uuid::new_v4().simple().to_string()[..22].to_string();
        let record = MetadataRecord::InitCluster { cluster_id };
        match self.machine.propose(&self.raft, &record, self.liveness.session_timeout).await {
            // Refused only when another proposal named it first.
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(error = %e, "cluster id not committed yet");
                false
            }
        }
    }

    /// Makes every registered broker that is not a voter a learner of the quorum, so it applies
    /// the metadata log too (KRaft's observers). Level-triggered: a registration whose learner a
    /// previous leader did not add is picked up by the next call.
    async fn add_learners(&self) {
        let brokers: Vec<(NodeId, String)> = self.machine.read(|m| {
            m.brokers()
                .values()
                .filter_map(|b| {
                    let id = NodeId::try_from(b.registration.node_id).ok()?;
                    Some((id, b.registration.cluster_address.clone()))
                })
                .collect()
        });
        let known: Vec<NodeId> = self.transport.peer_ids();
        for (id, addr) in brokers {
            if id == self.node_id {
                continue;
            }
            // An address given in the node's configuration (a proxy in tests) wins.
            if !known.contains(&id) {
                self.transport.add_peer(id, &addr);
            }
            let member = self.raft.metrics().borrow_watched().membership_config.membership().get_node(&id).is_some();
            if !member {
                // Not blocking: the learner catches up in the background.
                match self.raft.add_learner(id, openraft::BasicNode::new(addr), false).await {
                    Ok(_) => tracing::info!(node = id, "broker added to the controller quorum as a learner"),
                    Err(e) => tracing::debug!(node = id, error = %e, "learner not added"),
                }
            }
        }
    }

    /// Starts a fresh liveness view when this node began leading in a new term.
    fn fresh_view(&self, term: u64) {
        let mut seen = lock(&self.seen);
        if seen.term != term || seen.since.is_none() {
            *seen = Seen { term, since: Some(Instant::now()), last: BTreeMap::new() };
        }
    }

    /// Records a heartbeat; returns the unfence record when the broker may come back.
    fn heartbeat(
        &self,
        node_id: BrokerId,
        incarnation: Uuid,
        caught_up: bool,
    ) -> Result<Option<MetadataRecord>, MetadataError> {
        let broker = self.machine.read(|m| m.broker(node_id).cloned());
        let Some(broker) = broker else {
            return Err(MetadataError::new(
                ErrorCode::BrokerIdNotRegistered,
                format!("Broker {node_id} is not registered"),
            ));
        };
        if broker.registration.incarnation != incarnation {
            return Err(MetadataError::new(
                ErrorCode::StaleBrokerEpoch,
                format!("Broker {node_id} registered again since (another process)"),
            ));
        }
        lock(&self.seen).last.insert(node_id, (incarnation, Instant::now()));
        if broker.fenced && caught_up {
            return self.machine.read(|m| m.propose_unfence(node_id)).map(Some);
        }
        Ok(None)
    }

    /// On the leader, once: names a new cluster, and fences the unfenced brokers not heard from
    /// for the session timeout.
    async fn leader_duties(&self) {
        let term = {
            let m = self.raft.metrics().borrow_watched().clone();
            if m.state != ServerState::Leader {
                return;
            }
            m.current_term
        };
        self.fresh_view(term);
        self.add_learners().await;
        if !self.ensure_cluster_id().await {
            return;
        }
        let now = Instant::now();
        let silent: Vec<BrokerId> = {
            let seen = lock(&self.seen);
            let since = seen.since.unwrap_or(now);
            self.machine.read(|m| {
                m.brokers()
                    .iter()
                    .filter(|(_, b)| !b.fenced)
                    .filter(|(id, b)| {
                        let heard = match seen.last.get(id) {
                            Some((inc, at)) if *inc == b.registration.incarnation => *at,
                            _ => since,
                        };
                        now.duration_since(heard) > self.liveness.session_timeout
                    })
                    .map(|(id, _)| *id)
                    .collect()
            })
        };
        for node_id in silent {
            let Ok(record) = self.machine.read(|m| m.propose_fence(node_id)) else { continue };
            match self.machine.propose(&self.raft, &record, self.liveness.session_timeout).await {
                Ok(Ok(_)) => tracing::info!(broker = node_id, "fenced a broker that stopped heartbeating"),
                Ok(Err(e)) => tracing::debug!(broker = node_id, error = %e, "fence refused"),
                Err(e) => tracing::debug!(broker = node_id, error = %e, "fence not committed"),
            }
        }
    }

    /// The leader's duties (naming a new cluster, fencing silent brokers); runs on every node,
    /// acts only while leading. Stops when the returned handle is dropped.
    pub fn spawn_leader_duties(self: &Arc<Self>) -> TaskGuard
    where
        SM: Send + Sync + 'static,
    {
        let this = self.clone();
        let period = (self.liveness.session_timeout / 4).max(Duration::from_millis(50));
        TaskGuard(tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                this.leader_duties().await;
            }
        }))
    }

    /// This node's life as a broker: registers `reg` (again whenever the controller no longer has
    /// this incarnation), then heartbeats. Stops when the returned handle is dropped.
    pub fn spawn_broker(self: &Arc<Self>, reg: BrokerRegistration) -> TaskGuard
    where
        SM: Send + Sync + 'static,
    {
        let this = self.clone();
        TaskGuard(tokio::spawn(async move {
            let interval = this.liveness.heartbeat_interval;
            loop {
                let registered = this
                    .machine
                    .read(|m| m.broker(reg.node_id).is_some_and(|b| b.registration.incarnation == reg.incarnation));
                let req = if registered {
                    Request::Heartbeat { node_id: reg.node_id, incarnation: reg.incarnation, caught_up: true }
                } else {
                    Request::RegisterBroker(reg.clone())
                };
                match this.submit(req, interval.max(Duration::from_secs(1))).await {
                    Ok(Ok(_)) => {
                        *this.last_answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(tokio::time::Instant::now());
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "the controller refused this broker"),
                    Err(e) => tracing::debug!(error = %e, "no answer from the controller"),
                }
                tokio::time::sleep(interval).await;
            }
        }))
    }

    /// Whether this broker has lost touch with the controller quorum: it was answered before,
    /// but not for a whole session timeout, so the controller has fenced it by now and its copy
    /// of the metadata may be stale (leaders have moved without it knowing). Never true before
    /// the first answer, so a starting node is not taken for a lost one.
    pub fn lost_contact(&self) -> bool {
        let last = *self.last_answer.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| t.elapsed() > self.liveness.session_timeout) {
            return true;
        }
        // The quorum's leader answers its own heartbeats: it is in touch only while the other
        // voters answer it.
        let m = self.raft.metrics().borrow_watched().clone();
        m.state == openraft::ServerState::Leader && self.quorum_silent(&m)
    }

    /// Whether this node, leading the quorum, has gone a session timeout (and at least
    /// `QUORUM_SILENCE`, as an idle quorum hears its followers only through group heartbeats)
    /// without its other voters answering. A lone voter is its own quorum.
    fn quorum_silent(&self, m: &openraft::RaftMetrics<TypeConfig>) -> bool {
        let voters = m.membership_config.membership().voter_ids().count();
        let window = self.liveness.session_timeout.max(crate::partition::produce::QUORUM_SILENCE);
        voters > 1 && m.last_quorum_acked.as_ref().is_some_and(|t| openraft::Instant::elapsed(&**t) > window)
    }

    /// The handler of `RPC_SUBMIT` for `ReplicaNode::set_services`.
    pub fn rpc_handler(self: &Arc<Self>) -> Arc<dyn InboundHandler>
    where
        SM: Send + Sync + 'static,
    {
        Arc::new(SubmitHandler(self.clone()))
    }
}

/// Aborts its task when dropped.
pub struct TaskGuard(tokio::task::JoinHandle<()>);

impl TaskGuard {
    pub fn spawn(task: impl std::future::Future<Output = ()> + Send + 'static) -> TaskGuard {
        TaskGuard(tokio::spawn(task))
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct SubmitHandler<SM: RaftStateMachine<TypeConfig>>(Arc<Controller<SM>>);

impl<SM: RaftStateMachine<TypeConfig> + Send + Sync + 'static> InboundHandler for SubmitHandler<SM> {
    fn handle(&self, from: NodeId, _group: u64, rpc_code: u8, body: Bytes) -> BoxFuture<'static, Bytes> {
        let controller = self.0.clone();
        Box::pin(async move {
            if rpc_code != RPC_SUBMIT {
                return rpc::encode_response::<()>(Err(&RemoteFailure::BadRequest(format!("unknown rpc {rpc_code}"))));
            }
            let req: Request = match rpc::decode(&body) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(from, error = %e, "malformed controller request");
                    return rpc::encode_response::<()>(Err(&RemoteFailure::BadRequest(e.to_string())));
                }
            };
            // The forwarder waits as long as its own deadline; the proposal is bounded the same way.
            let attempt = controller.execute(req, controller.liveness.session_timeout).await;
            rpc::encode_response(Ok(&attempt))
        })
    }
}
