//! One node's replication runtime: the transport, the group registry that answers peers' RPCs,
//! and the heartbeat driver.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::Fatal;
use openraft::errors::{ClientWriteError, ForwardReason, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::Config;
use openraft::{ConfigError, ServerState};

use crate::election::{ElectionDriver, ElectionTimings};
use crate::heartbeat::HeartbeatDriver;
use crate::network::Router;
use crate::recovery::Recovery;
use crate::registry::{AlreadyRunning, GroupRegistry};
use crate::rpc::{self, RemoteFailure, Rpc};
use crate::transport::{BoxFuture, Connector, InboundHandler, Listener, Transport, TransportConfig};
use crate::types::{BatchData, GroupId, NodeId, Raft, TypeConfig};

/// Appends one batch through `raft`, the local replica of a group, as the broker's produce path
/// does. With group heartbeats sparser than the leader's quorum lease (see `election`), an idle
/// leader's lease has usually lapsed, and openraft refuses the write (`LeaseExpired`) although no
/// one else leads: then this sends a heartbeat, waits for a quorum to acknowledge it (which
/// renews the lease) and writes again, until `wait` runs out. Any other refusal (another node
/// leads, leadership is moving) is returned as is, for the caller to redirect.
pub async fn write<SM>(
    raft: &Raft<SM>,
    data: BatchData,
    wait: Duration,
) -> Result<ClientWriteResponse<TypeConfig>, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>
where
    SM: RaftStateMachine<TypeConfig>,
{
    let give_up = tokio::time::Instant::now() + wait;
    loop {
        let acked_before = raft.metrics().borrow_watched().last_quorum_acked;
        let err = match raft.client_write(data.clone()).await {
            Ok(resp) => return Ok(resp),
            Err(e) => e,
        };
        let lease_expired = err.forward_to_leader().is_some_and(|f| f.reason == ForwardReason::LeaseExpired);
        let left = give_up.saturating_duration_since(tokio::time::Instant::now());
        if !lease_expired || left.is_zero() {
            return Err(err);
        }
        raft.trigger().heartbeat().await.map_err(RaftError::Fatal)?;
        // A quorum's ack moves `last_quorum_acked`; stepping down ends the wait too (the next
        // write then returns the refusal with the new leader, if known).
        let renewed = raft
            .wait(Some(left))
            .metrics(
                |m| m.state != ServerState::Leader || m.last_quorum_acked != acked_before,
                "quorum ack renewing the leader lease",
            )
            .await;
        if renewed.is_err() {
            return Err(err);
        }
    }
}

/// Why `ReplicaNode::start_group` did not start a group.
#[derive(Debug, thiserror::Error)]
pub enum StartGroupError {
    #[error(transparent)]
    AlreadyRunning(#[from] AlreadyRunning),
    #[error("group failed to start: {0}")]
    Fatal(Fatal<TypeConfig>),
}

/// Raft timing shared by every group of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupTimings {
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
}

impl GroupTimings {
    /// openraft's config for one group: heartbeats come from the node's driver, not the group;
    /// each group keeps its own election timer (openraft's tick).
    pub fn config(&self, cluster_name: &str) -> Result<Arc<Config>, ConfigError> {
        Ok(Arc::new(self.base_config(cluster_name).validate()?))
    }

    pub(crate) fn base_config(&self, cluster_name: &str) -> Config {
        Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: self.heartbeat_interval.as_millis() as u64,
            election_timeout_min: self.election_timeout_min.as_millis() as u64,
            election_timeout_max: self.election_timeout_max.as_millis() as u64,
            enable_heartbeat: false,
            // A node that was paused or cut off must not raise terms when it comes back.
            enable_pre_vote: Some(true),
            // A restarted leader must not resume its term: its log may hold entries it appended
            // but never replicated, and a store that flushes after `append` returns may have lost
            // or kept them, so (term, index) pairs could be reused with other data. Coming back
            // as a follower, it leads again only through an election, at a higher term.
            enable_leader_restore: Some(false),
            // openraft's default (200 ms) is far too short to send a snapshot; the router also
            // scales each snapshot's timeout with its size (`network::payload_timeout`).
            install_snapshot_timeout: 10_000,
            // A node whose disk was lost comes back with an empty log. Without this the leader
            // keeps the progress it recorded for it: a debug build panics, and a release build
            // would count entries the node no longer holds toward commits. With it, the leader
            // starts that node's replication over. (Its vote is lost too: until it has caught
            // up it should not vote, which needs a learner rejoin; see the cluster plan.)
            allow_log_reversion: Some(true),
            ..Config::default()
        }
    }
}

/// RPC codes from here up are node services (the controller's), not Raft's: they go to the
/// handler given to `ReplicaNode::set_services`.
pub const SERVICE_RPC_BASE: u8 = 64;

/// Answers peers' Raft RPCs from the registry, and hands service RPCs on.
struct RaftService<SM: RaftStateMachine<TypeConfig>> {
    registry: Arc<GroupRegistry<SM>>,
    stickiness: Arc<Stickiness>,
    recovery: Arc<Recovery>,
    services: Arc<OnceLock<Arc<dyn InboundHandler>>>,
}

/// Node-level leader stickiness for pre-votes. openraft's own guard, the followers' lease, is
/// kept shorter than the node-silence timeout so that failover is fast (see `election`); without
/// this check a follower would grant a pre-vote whenever its group lease had lapsed between two
/// sparse heartbeats, and one node that wrongly judged a peer silent (a one-way link fault) would
/// take over that peer's groups. Here a pre-vote is refused while this node hears the group's
/// leader's node (any frame within the minimum election timeout), or leads the group itself.
///
/// A node that hears the leader's node but has had no AppendEntries from it in this group for a
/// few heartbeat intervals does not count it as leading: its node may have restarted (with its
/// disk wiped, it will not campaign itself) and the others must be able to elect without it.
#[derive(Default)]
pub(crate) struct Stickiness {
    transport: OnceLock<Transport>,
    /// The election driver's minimum timeout; `None` (no driver) leaves pre-votes to openraft.
    window: Mutex<Option<Duration>>,
    /// How long an AppendEntries from a group's leader keeps it sticky (`None`: no heartbeat
    /// driver, every frame from its node counts).
    append_window: Mutex<Option<Duration>>,
    /// Per group, the last AppendEntries: from whom, when.
    appends: Mutex<std::collections::BTreeMap<GroupId, (NodeId, tokio::time::Instant)>>,
    /// Groups this node leads and is handing over (`ReplicaNode::transfer_leader`), with the
    /// term it led them in.
    transferring: Mutex<std::collections::BTreeMap<GroupId, u64>>,
    /// Per group, the replicas that take the first turns to campaign when it needs a leader
    /// (`ReplicaNode::set_campaign_first`).
    campaign_first: Mutex<std::collections::BTreeMap<GroupId, Vec<NodeId>>>,
}

impl Stickiness {
    fn window(&self) -> Option<Duration> {
        *self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The replicas of `group` that campaign first (empty: all take turns alike).
    pub(crate) fn campaign_first(&self, group: GroupId) -> Vec<NodeId> {
        self.campaign_first.lock().unwrap_or_else(|e| e.into_inner()).get(&group).cloned().unwrap_or_default()
    }

    fn appended(&self, group: GroupId, from: NodeId) {
        self.appends.lock().unwrap_or_else(|e| e.into_inner()).insert(group, (from, tokio::time::Instant::now()));
    }

    /// When `leader` last sent `group` an AppendEntries here, if it was the last to.
    pub(crate) fn last_append(&self, group: GroupId, leader: NodeId) -> Option<tokio::time::Instant> {
        let appends = self.appends.lock().unwrap_or_else(|e| e.into_inner());
        appends.get(&group).filter(|(from, _)| *from == leader).map(|(_, at)| *at)
    }

    /// Whether `leader` sent `group` an AppendEntries recently enough to still count as leading.
    pub(crate) fn leading_here(&self, group: GroupId, leader: NodeId) -> bool {
        let Some(window) = *self.append_window.lock().unwrap_or_else(|e| e.into_inner()) else {
            return true;
        };
        let appends = self.appends.lock().unwrap_or_else(|e| e.into_inner());
        appends.get(&group).is_some_and(|(from, at)| *from == leader && at.elapsed() < window)
    }

    /// Whether `group`'s leader, as this node knows it, is alive and not the candidate `from`.
    fn leader_alive<SM: RaftStateMachine<TypeConfig>>(&self, raft: &Raft<SM>, group: GroupId, from: NodeId) -> bool {
        let (Some(window), Some(transport)) = (self.window(), self.transport.get()) else {
            return false;
        };
        let (state, leader, term) = {
            let m = raft.metrics();
            let m = openraft::async_runtime::watch::WatchReceiver::borrow_watched(&m);
            (m.state, m.current_leader, m.current_term)
        };
        let me = transport.node_id();
        // A leader handing its group over sends no more heartbeats and takes no writes (openraft
        // has no way back): if the transfer does not complete, an election must.
        let handing_over =
            self.transferring.lock().unwrap_or_else(|e| e.into_inner()).get(&group).is_some_and(|t| *t == term);
        match leader {
            Some(l) if l == from => false,
            Some(l) if l == me => state == ServerState::Leader && !handing_over,
            Some(l) => {
                !transport.known_down(l)
                    && transport.last_heard(l).is_some_and(|t| t.elapsed() < window)
                    && self.leading_here(group, l)
            }
            None => false,
        }
    }
}

impl<SM> InboundHandler for RaftService<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = Bytes>,
{
    fn handle(&self, from: NodeId, group: GroupId, rpc: u8, body: Bytes) -> BoxFuture<'static, Bytes> {
        if rpc >= SERVICE_RPC_BASE {
            if let Some(services) = self.services.get() {
                return services.handle(from, group, rpc, body);
            }
            return Box::pin(async move {
                rpc::encode_response::<()>(Err(&RemoteFailure::BadRequest(format!("no service answers rpc {rpc}"))))
            });
        }
        let raft = self.registry.get(group);
        let stickiness = self.stickiness.clone();
        let recovery = self.recovery.clone();
        Box::pin(async move {
            let Some(raft) = raft else {
                return rpc::encode_response::<()>(Err(&RemoteFailure::UnknownGroup(group)));
            };
            let inbound = Inbound { group, from, stickiness: &stickiness, recovery: &recovery };
            match serve(&raft, rpc, body, inbound).await {
                Ok(answer) => answer,
                Err(failure) => {
                    if let RemoteFailure::BadRequest(reason) = &failure {
                        tracing::warn!(from, group, rpc, %reason, "malformed raft request");
                    }
                    rpc::encode_response::<()>(Err(&failure))
                }
            }
        })
    }
}

/// Who sent an inbound Raft RPC, and the node state that judges it.
struct Inbound<'a> {
    group: GroupId,
    from: NodeId,
    stickiness: &'a Stickiness,
    recovery: &'a Recovery,
}

impl Inbound<'_> {
    /// After an AppendEntries from the leader of `term` to a recovering replica succeeded up to
    /// `matched`: ends its recovery once it holds what that leader had committed
    /// (`Recovery::check`).
    fn recovery_progress<SM: RaftStateMachine<TypeConfig>>(
        &self,
        raft: &Raft<SM>,
        term: u64,
        matched: Option<openraft::type_config::alias::LogIdOf<TypeConfig>>,
    ) {
        let Some(m) = matched else { return };
        match self.recovery.check(self.group, term, (m.committed_leader_id().term, m.index())) {
            Ok(true) => raft.runtime_config().elect(true),
            Ok(false) => {}
            Err(e) => tracing::error!(group = self.group, error = %e, "cannot record that the replica recovered"),
        }
    }
}

/// Whether a recovering replica may answer the vote or pre-vote in `body` as any replica
/// would (`Recovery::may_vote`); an undecodable request is left to the refusal path.
fn may_vote(body: &[u8], inbound: &Inbound<'_>) -> bool {
    match rpc::decode::<openraft::raft::VoteRequest<TypeConfig>>(body) {
        Ok(req) => inbound.recovery.may_vote(inbound.group, openraft::vote::RaftLeaderId::term(req.vote.leader_id())),
        Err(_) => false,
    }
}

async fn serve<SM>(raft: &Raft<SM>, rpc: u8, body: Bytes, inbound: Inbound<'_>) -> Result<Bytes, RemoteFailure>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = Bytes>,
{
    let bad = |e: rpc::CodecError| RemoteFailure::BadRequest(e.to_string());
    let raft_err = |e: &dyn std::fmt::Display| RemoteFailure::Raft(e.to_string());
    let rpc = Rpc::try_from(rpc).map_err(bad)?;
    let recovering = inbound.recovery.is_recovering(inbound.group);
    Ok(match rpc {
        Rpc::AppendEntries => {
            let req = rpc::decode_append(body).map_err(bad)?;
            // Noted on arrival: a follower slow to fsync still hears its leader.
            inbound.stickiness.appended(inbound.group, inbound.from);
            if !recovering {
                let resp = raft.append_entries(req).await.map_err(|e| raft_err(&e))?;
                return Ok(rpc::encode_response(Ok(&resp)));
            }
            let term = openraft::vote::RaftLeaderId::term(req.vote.leader_id());
            inbound.recovery.admits(inbound.group, term).map_err(RemoteFailure::Raft)?;
            inbound.recovery.heard_commit(inbound.group, term, req.leader_commit.as_ref().map(|l| l.index()));
            let sent = req.entries.last().map(|e| e.log_id).or(req.prev_log_id);
            let resp = raft.append_entries(req).await.map_err(|e| raft_err(&e))?;
            // openraft answers success only once the entries are durable here.
            let matched = match &resp {
                openraft::raft::AppendEntriesResponse::Success => sent,
                openraft::raft::AppendEntriesResponse::PartialSuccess(m) => *m,
                _ => None,
            };
            inbound.recovery_progress(raft, term, matched);
            rpc::encode_response(Ok(&resp))
        }
        Rpc::Vote | Rpc::PreVote if recovering && !may_vote(&body, &inbound) => {
            // A replica that lost its log must not judge candidates by it (see `recovery`):
            // answered as a refused pre-vote, which changes no state here.
            let req = rpc::decode(&body).map_err(bad)?;
            let mut resp = raft.pre_vote(req).await.map_err(|e| raft_err(&e))?;
            tracing::debug!(group = inbound.group, from = inbound.from, "vote refused: this replica is recovering");
            inbound.recovery.refused_vote();
            resp.vote_granted = false;
            rpc::encode_response(Ok(&resp))
        }
        Rpc::Vote => {
            let req = rpc::decode(&body).map_err(bad)?;
            let resp = raft.vote(req).await.map_err(|e| raft_err(&e))?;
            rpc::encode_response(Ok(&resp))
        }
        Rpc::PreVote => {
            let req = rpc::decode(&body).map_err(bad)?;
            // openraft answers with our vote and last log id and changes no state; only the grant
            // is overridden, so the candidate sees the same refusal a lease would give.
            let mut resp = raft.pre_vote(req).await.map_err(|e| raft_err(&e))?;
            if resp.vote_granted && inbound.stickiness.leader_alive(raft, inbound.group, inbound.from) {
                tracing::debug!("pre-vote refused: the group's leader's node is alive");
                resp.vote_granted = false;
            }
            rpc::encode_response(Ok(&resp))
        }
        Rpc::FullSnapshot => {
            // (A recovering replica ends its recovery on the AppendEntries that follow.)
            let (vote, meta, data) = rpc::decode_snapshot(body).map_err(bad)?;
            if recovering {
                let term = openraft::vote::RaftLeaderId::term(vote.leader_id());
                inbound.recovery.admits(inbound.group, term).map_err(RemoteFailure::Raft)?;
            }
            let snapshot = openraft::Snapshot { meta, snapshot: data };
            let resp = raft.install_full_snapshot(vote, snapshot).await.map_err(|e| raft_err(&e))?;
            rpc::encode_response(Ok(&resp))
        }
        Rpc::TransferLeader if recovering => {
            return Err(RemoteFailure::Raft("this replica is recovering a lost log and cannot lead yet".into()));
        }
        Rpc::TransferLeader => {
            // (Stickiness stays: the leader sends no more AppendEntries, so it lapses within the
            // append window, giving the target that long to take over before anyone campaigns.)
            let req = rpc::decode(&body).map_err(bad)?;
            let resp = raft.handle_transfer_leader(req).await.map_err(|e| raft_err(&e))?;
            rpc::encode_response(Ok(&resp))
        }
        Rpc::Recovering => rpc::encode_response(Ok(&recovering)),
    })
}

/// What a peer's replica of a group answered to `ReplicaNode::peer_logs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLog {
    /// The term of its vote: the newest term it has seen.
    pub term: u64,
    /// Its last entry's index; `None` for an empty log.
    pub last_index: Option<u64>,
}

/// A node hosting many Raft groups over one transport.
pub struct ReplicaNode<SM: RaftStateMachine<TypeConfig>> {
    id: NodeId,
    transport: Transport,
    router: Router,
    registry: Arc<GroupRegistry<SM>>,
    stickiness: Arc<Stickiness>,
    recovery: Arc<Recovery>,
    services: Arc<OnceLock<Arc<dyn InboundHandler>>>,
    /// Notified when a group here becomes leader (`leadership_gained`).
    gained: Arc<tokio::sync::Notify>,
}

impl<SM> ReplicaNode<SM>
where
    SM: RaftStateMachine<TypeConfig, SnapshotData = Bytes>,
{
    pub fn new(config: TransportConfig, connector: Arc<dyn Connector>) -> Self {
        let id = config.node_id;
        let registry = Arc::new(GroupRegistry::default());
        let stickiness = Arc::new(Stickiness::default());
        let recovery = Arc::new(Recovery::default());
        let services = Arc::new(OnceLock::new());
        let handler = Arc::new(RaftService {
            registry: registry.clone(),
            stickiness: stickiness.clone(),
            recovery: recovery.clone(),
            services: services.clone(),
        });
        let transport = Transport::new(config, connector, handler);
        let _ = stickiness.transport.set(transport.clone());
        let router = Router::new(transport.clone());
        Self { id, transport, router, registry, stickiness, recovery, services, gained: Arc::default() }
    }

    /// Notified (one permit, `Notify::notify_one`) whenever a group here becomes leader, so
    /// that whoever tells the cluster about leaderships does so at once rather than at its next
    /// poll: until the metadata names the new leader, clients cannot find it.
    pub fn leadership_gained(&self) -> &Arc<tokio::sync::Notify> {
        &self.gained
    }

    /// For a replica here that follows a known leader: the leader, its term, and how long ago
    /// it last sent this replica an AppendEntries (heartbeats included). A follower that serves
    /// reads (KIP-392) goes by it: its high watermark is the commit index that leader last sent.
    pub fn following(&self, group: GroupId) -> Option<(NodeId, u64, Duration)> {
        self.hearing_leader(group, false)
    }

    /// As `following`, for a voter or a learner (a non-voting replica: a broker's copy of the
    /// controller quorum's log, a replica joining through a reassignment): readiness asks it of
    /// every replica, reads only of voters.
    pub fn hearing_leader(&self, group: GroupId, learners_too: bool) -> Option<(NodeId, u64, Duration)> {
        let raft = self.registry.get(group)?;
        let (leader, term) = {
            let m = raft.metrics();
            let m = openraft::async_runtime::watch::WatchReceiver::borrow_watched(&m);
            let state_ok = m.state == ServerState::Follower || (learners_too && m.state == ServerState::Learner);
            if !state_ok {
                return None;
            }
            (m.current_leader?, m.current_term)
        };
        let at = self.stickiness.last_append(group, leader)?;
        Some((leader, term, at.elapsed()))
    }

    /// Makes `first` (replicas of `group` on the racks its topic pins leaders to) take the first
    /// turns to campaign when the group needs a leader, so a lost leader is replaced in the
    /// pinned region when a replica there can win; empty restores the plain order. Every node
    /// hosting the group should be told the same.
    pub fn set_campaign_first(&self, group: GroupId, first: Vec<NodeId>) {
        let mut map = self.stickiness.campaign_first.lock().unwrap_or_else(|e| e.into_inner());
        if first.is_empty() {
            map.remove(&group);
        } else {
            map.insert(group, first);
        }
    }

    /// The groups whose replicas here are recovering a lost log (`recovery`).
    pub fn recovery(&self) -> &Arc<Recovery> {
        &self.recovery
    }

    /// Asks each of `peers` whether its replica of `group` is recovering a lost log; returns
    /// the answers given within `timeout`. A peer that does not host the group, is not
    /// connected, does not answer or does not know the question is left out.
    pub async fn peers_recovering(
        &self,
        group: GroupId,
        peers: &[NodeId],
        timeout: Duration,
    ) -> std::collections::BTreeMap<NodeId, bool> {
        let asks = peers.iter().map(|peer| async move {
            let answer = self.transport.call(*peer, group, rpc::Rpc::Recovering as u8, &[], timeout).await;
            (*peer, answer.ok().and_then(|body| rpc::decode_response::<bool>(&body).ok()))
        });
        futures::future::join_all(asks).await.into_iter().filter_map(|(peer, answer)| Some((peer, answer?))).collect()
    }

    /// Hands the leadership of `group` (led here) to `to`. openraft stops heartbeats and writes
    /// at once and cannot take that back; the group is marked so that, should `to` not take
    /// over, this node's own stickiness does not stop the others electing someone.
    pub async fn transfer_leader(&self, group: GroupId, to: NodeId) -> Result<(), String> {
        let raft = self.registry.get(group).ok_or_else(|| format!("group {group} is not hosted here"))?;
        let term = raft.metrics().borrow_watched().current_term;
        self.stickiness.transferring.lock().unwrap_or_else(|e| e.into_inner()).insert(group, term);
        raft.trigger().transfer_leader(to).await.map_err(|e| e.to_string())
    }

    /// Forgets what this node tracked about `group` beside its Raft core (recovery, the last
    /// AppendEntries heard), once the group is no longer hosted here.
    pub fn forget_group(&self, group: GroupId) {
        self.recovery.forget(group);
        self.stickiness.appends.lock().unwrap_or_else(|e| e.into_inner()).remove(&group);
        self.stickiness.transferring.lock().unwrap_or_else(|e| e.into_inner()).remove(&group);
    }

    /// Asks each of `peers` for the term and the last entry of its replica of `group` (a
    /// pre-vote, which changes no state there). Peers that do not answer within `timeout` are
    /// left out.
    pub async fn peer_logs(
        &self,
        group: GroupId,
        peers: &[NodeId],
        timeout: Duration,
    ) -> std::collections::BTreeMap<NodeId, PeerLog> {
        use openraft_multi::GroupRouter as _;
        let Some(raft) = self.registry.get(group) else { return Default::default() };
        let vote = raft.metrics().borrow_watched().vote;
        let asks = peers.iter().map(|peer| {
            let req = openraft::raft::VoteRequest::new(vote, None);
            async move {
                let option = openraft::network::RPCOption::new(timeout);
                (*peer, self.router.pre_vote(*peer, group, req, option).await)
            }
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .filter_map(|(peer, answer)| {
                let answer = answer.ok()?;
                let term = openraft::vote::RaftLeaderId::term(answer.vote.leader_id());
                Some((peer, PeerLog { term, last_index: answer.last_log_id.map(|l| l.index()) }))
            })
            .collect()
    }

    /// Sets the handler of service RPCs (codes from `SERVICE_RPC_BASE`); only the first call
    /// takes effect.
    pub fn set_services(&self, handler: Arc<dyn InboundHandler>) {
        let _ = self.services.set(handler);
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    pub fn registry(&self) -> &Arc<GroupRegistry<SM>> {
        &self.registry
    }

    /// Accepts peers' connections.
    pub fn serve(&self, listener: impl Listener) {
        self.transport.serve(listener);
    }

    pub fn add_peer(&self, id: NodeId, addr: &str) {
        self.transport.add_peer(id, addr);
    }

    /// Starts a group on this node and registers it for inbound RPCs.
    pub async fn start_group<LS: RaftLogStorage<TypeConfig>>(
        &self,
        group: GroupId,
        config: Arc<Config>,
        log: LS,
        state_machine: SM,
    ) -> Result<Raft<SM>, StartGroupError> {
        // Taken before `Raft::new`: a second start of a running group would open a second core
        // on the same store, and the two could grant votes to different candidates in one term.
        self.registry.reserve(group)?;
        match openraft::Raft::new(self.id, config, self.router.factory(group), log, state_machine).await {
            Ok(raft) => {
                // A recovering replica never campaigns, whichever timer drives its elections.
                if self.recovery.is_recovering(group) {
                    raft.runtime_config().elect(false);
                }
                self.registry.fill(group, raft.clone());
                // openraft's server metrics change only with the vote, the state or the
                // membership, so this wakes on elections, not on every write.
                let mut server = raft.server_metrics();
                let gained = self.gained.clone();
                tokio::spawn(async move {
                    // By term, not by state: the watch may fold Leader, Follower, Leader into
                    // one change.
                    let mut notified_term = None;
                    while server.changed().await.is_ok() {
                        let (state, term) = {
                            let m = server.borrow_watched();
                            (m.state, openraft::vote::RaftLeaderId::term(m.vote.leader_id()))
                        };
                        if state == openraft::ServerState::Leader && notified_term != Some(term) {
                            notified_term = Some(term);
                            gained.notify_one();
                        }
                    }
                });
                Ok(raft)
            }
            Err(e) => {
                self.registry.release(group);
                Err(StartGroupError::Fatal(e))
            }
        }
    }

    pub fn group(&self, group: GroupId) -> Option<Raft<SM>> {
        self.registry.get(group)
    }

    /// Starts the node's heartbeat driver; it stops when the returned handle is dropped.
    pub fn start_heartbeats(&self, interval: Duration) -> HeartbeatDriver {
        // A leader heard from within a few heartbeats still leads (`Stickiness`).
        *self.stickiness.append_window.lock().unwrap_or_else(|e| e.into_inner()) = Some(interval * 3);
        HeartbeatDriver::spawn(self.registry.clone(), interval)
    }

    /// Starts the node-level election driver, for groups started with
    /// `ElectionTimings::raft_config`; it
    /// stops when the returned handle is dropped.
    pub fn start_elections(&self, timings: ElectionTimings) -> ElectionDriver {
        // The driver's silence threshold is also the window in which a heard leader is sticky.
        *self.stickiness.window.lock().unwrap_or_else(|e| e.into_inner()) = Some(timings.election_timeout_min);
        ElectionDriver::spawn(
            self.registry.clone(),
            self.transport.clone(),
            self.recovery.clone(),
            self.stickiness.clone(),
            timings,
        )
    }

    /// Stops every group and the transport.
    pub async fn shutdown(&self) {
        for (group, raft) in self.registry.all() {
            if let Err(e) = raft.shutdown().await {
                tracing::debug!(group, error = %e, "group shutdown");
            }
            self.registry.remove(group);
        }
        self.transport.shutdown();
    }
}
