//! This process as a node of a Fjord cluster (when `controller_quorum_voters` is set): the
//! node-to-node transport on `cluster_listen`, this node's replica of the controller quorum (a
//! voter's, or a learner's copy on brokers that are not voters) and its life as a broker
//! (registration, heartbeats). Metadata and DescribeCluster answer from the applied metadata.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fjord_replication::applier::Replicas;
use fjord_replication::controller::{
    ClusterMetadata, ConfigValidator, Controller, Liveness, MetadataError, NewTopic, Outcome, Request, TaskGuard,
    TopicDefaults,
};
use fjord_replication::election::{ElectionDriver, ElectionTimings};
use fjord_replication::heartbeat::HeartbeatDriver;
use fjord_replication::machine::NodeMachine;
use fjord_replication::node::ReplicaNode;
use fjord_replication::server::{self, NodeConfig, StartedNode};
use fjord_replication::transport::{TcpConnector, TcpListener};
use fjord_replication::{GroupId, NodeId};
use kafka_protocol::error::ResponseError;

use crate::config::BrokerConfig;
use crate::leadership::Replica;
use crate::topic_config;
use crate::topics::TopicError;

/// The name both ends of a node-to-node connection must agree on in the handshake.
const TRANSPORT_NAME: &str = "fjord";

/// Election timing: pings every 100 ms, a node silent for 300–500 ms loses its leaderships
/// (the measured shipping setting, see replication/README.md).
const ELECTIONS: ElectionTimings = ElectionTimings {
    ping_interval: Duration::from_millis(100),
    election_timeout_min: Duration::from_millis(300),
    election_timeout_max: Duration::from_millis(500),
};

/// Group heartbeats carry the commit index; liveness is the election driver's pings.
const GROUP_HEARTBEAT: Duration = Duration::from_secs(1);
/// Follower reads (KIP-392): a follower serves consumers while it has heard from its leader
/// within this long (three group heartbeats), and a leader sends consumers only to followers that
/// answered it within it. Past it the follower may be cut off from the leader, its high watermark
/// going stale, so it answers NOT_LEADER_OR_FOLLOWER and the consumer goes back to the leader.
pub const FOLLOWER_READ_LAG: Duration = Duration::from_secs(3);

/// How long a controller voter with no Raft state waits for every other voter's answer before a
/// majority's word that the quorum is new will do.
const SETTLE_PATIENCE: Duration = Duration::from_secs(5);

/// Checks configs by the broker's own rules on the controller leader.
struct BrokerRules;

impl ConfigValidator for BrokerRules {
    fn topic_config(&self, name: &str, value: &str) -> Result<(), String> {
        topic_config::validate(name, value)
    }
    fn broker_config(&self, name: &str, value: &str) -> Result<(), String> {
        topic_config::validate_broker(name, value)
    }
}

/// A running cluster node.
pub struct ClusterNode {
    pub node: Arc<ReplicaNode<NodeMachine>>,
    pub controller: Arc<Controller<NodeMachine>>,
    /// Where peers reach this node.
    pub cluster_addr: SocketAddr,
    /// The partition replicas this node runs.
    replicas: Arc<Replicas>,
    defaults: TopicDefaults,
    /// The node's service RPCs; the broker's part is set once it is built (`serve_broker`).
    services: Arc<crate::cluster_txn::Services>,
    /// This run's registration: the metadata holds it once this node has applied the controller
    /// log up to its own start.
    incarnation: uuid::Uuid,
    _tasks: Vec<TaskGuard>,
    _heartbeats: HeartbeatDriver,
    _elections: ElectionDriver,
}

impl ClusterNode {
    /// Answers the broker's own service RPCs (transaction markers) from now on.
    pub fn serve_broker(&self, broker: std::sync::Weak<crate::server::Broker>) {
        let _ = self.services.broker.set(broker);
    }

    /// Stops the groups and the transport.
    pub async fn shutdown(&self) {
        self.node.shutdown().await;
    }
}

/// Starts this node's part of the cluster, or nothing without voters.
pub async fn start(
    config: &BrokerConfig,
    advertised_listener: &str,
    topics: &Arc<crate::topics::Topics>,
) -> anyhow::Result<Option<ClusterNode>> {
    if config.controller_quorum_voters.is_empty() {
        return Ok(None);
    }
    let me = NodeId::try_from(config.node_id).map_err(|_| anyhow::anyhow!("node_id {} is negative", config.node_id))?;
    let listen = config.cluster_listen.as_deref().ok_or_else(|| anyhow::anyhow!("cluster_listen is not set"))?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on cluster_listen {listen}: {e}"))?;
    let cluster_addr = listener.0.local_addr()?;
    let mut voters = BTreeMap::new();
    for v in &config.controller_quorum_voters.0 {
        let id = NodeId::try_from(v.id).map_err(|_| anyhow::anyhow!("voter id {} is negative", v.id))?;
        voters.insert(id, format!("{}:{}", v.host, v.port));
    }
    // The broker defaults as they are when a replica's log is configured: dynamic broker
    // configs change them (`ClusterNode::mirror_broker_configs` reconfigures the open logs).
    let live_defaults = topics.clone();
    let defaults = TopicDefaults {
        num_partitions: config.num_partitions,
        replication_factor: i16::try_from(config.replication_factor_default()).unwrap_or(i16::MAX),
    };
    let node_config = NodeConfig {
        node_id: me,
        transport_name: TRANSPORT_NAME.to_string(),
        voters,
        data_dir: config.data_dir.clone(),
        rack: config.broker_rack.clone(),
        advertised_listener: advertised_listener.to_string(),
        cluster_address: advertised_cluster_address(listen, cluster_addr),
        defaults,
        liveness: Liveness {
            heartbeat_interval: Duration::from_millis(config.broker_heartbeat_interval_ms),
            session_timeout: Duration::from_millis(config.broker_session_timeout_ms),
        },
        elections: ELECTIONS,
        group_heartbeat: GROUP_HEARTBEAT,
        settle_patience: SETTLE_PATIENCE,
        validator: Arc::new(BrokerRules),
        log_config: Box::new(move |configs| topic_config::log_config(configs, &live_defaults.defaults())),
    };
    let mut services = None;
    let started = server::start(node_config, Arc::new(TcpConnector), listener, |controller| {
        let s = Arc::new(crate::cluster_txn::Services { controller, broker: std::sync::OnceLock::new() });
        services = Some(s.clone());
        s
    })
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    let services = services.ok_or_else(|| anyhow::anyhow!("the node started without its services"))?;
    let StartedNode { node, controller, replicas, incarnation, tasks, heartbeats, elections, .. } = started;
    topics.set_producer_id_source(producer_ids(controller.clone(), config.node_id));
    tracing::info!(%cluster_addr, node_id = config.node_id, "cluster listening");
    Ok(Some(ClusterNode {
        node,
        controller,
        cluster_addr,
        replicas,
        defaults,
        services,
        incarnation,
        _tasks: tasks,
        _heartbeats: heartbeats,
        _elections: elections,
    }))
}

/// Producer ids from blocks the controller allocates to this node (Kafka's AllocateProducerIds):
/// ids are unique across the cluster, and a restarted node takes a new block rather than
/// remembering how far it got in the old one.
fn producer_ids(controller: Arc<Controller<NodeMachine>>, node_id: i32) -> crate::topics::ProducerIdSource {
    let block = std::sync::Mutex::new((0i64, 0i64));
    Box::new(move || {
        let mut block = block.lock().unwrap_or_else(|e| e.into_inner());
        if block.0 >= block.1 {
            // Called on a blocking thread (as every producer-id allocation is), so waiting for
            // the controller here holds no runtime worker.
            let answer = tokio::runtime::Handle::current()
                .block_on(controller.submit(Request::AllocateProducerIds { node_id }, SUBMIT_WAIT));
            match answer {
                Ok(Ok(Some(Outcome::ProducerIds { first, count, .. }))) => *block = (first, first + count),
                Ok(Ok(other)) => {
                    return Err(TopicError::new(
                        ResponseError::UnknownServerError,
                        format!("the controller answered a producer id request with {other:?}"),
                    ))
                }
                Ok(Err(e)) => return Err(refusal(&e)),
                Err(e) => return Err(TopicError::new(ResponseError::CoordinatorNotAvailable, e.to_string())),
            }
        }
        let id = block.0;
        block.0 += 1;
        Ok(id)
    })
}

/// What other nodes dial: `cluster_listen` as configured, with the port the OS chose when it
/// was 0 (a wildcard host is kept; it is only reachable where the peers resolve it).
fn advertised_cluster_address(configured: &str, bound: SocketAddr) -> String {
    match configured.rsplit_once(':') {
        Some((host, _)) if !host.is_empty() => format!("{host}:{}", bound.port()),
        _ => bound.to_string(),
    }
}

impl ClusterNode {
    /// Reads the applied cluster metadata.
    pub fn read<T>(&self, f: impl FnOnce(&ClusterMetadata) -> T) -> T {
        self.controller.machine().read(f)
    }

    /// The controller quorum's leader as this node knows it, -1 when none is known. A leader
    /// whose process is known to be gone (its connections closed) is not named: this node is,
    /// since it forwards controller requests (as a KRaft broker names a live broker), so an
    /// admin client does not connect to a dead node while the quorum elects another leader.
    pub fn controller_id(&self) -> i32 {
        let me = self.node.id();
        let leader =
            self.controller.leader().map(|l| if l != me && self.node.transport().known_down(l) { me } else { l });
        leader.and_then(|l| i32::try_from(l).ok()).unwrap_or(-1)
    }

    /// Sends `req` to the controller leader; its refusal comes back as the Kafka error clients
    /// get, and no answer within the wait as REQUEST_TIMED_OUT (retriable).
    pub async fn submit(&self, req: Request) -> Result<Option<Outcome>, TopicError> {
        match self.controller.submit(req, SUBMIT_WAIT).await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(e)) => Err(refusal(&e)),
            Err(e) => Err(TopicError::new(ResponseError::RequestTimedOut, e.to_string())),
        }
    }

    /// What the leader would answer to creating `topic`, checked against this node's applied
    /// state (CreateTopics with validate_only).
    pub fn validate_create(&self, topic: &NewTopic) -> Result<(), TopicError> {
        let defaults = self.defaults;
        self.read(|m| m.propose_create_topic(topic, uuid::Uuid::nil(), defaults, &BrokerRules))
            .map(|_| ())
            .map_err(|e| refusal(&e))
    }

    /// The same for adding partitions.
    pub fn validate_create_partitions(
        &self,
        topic: &str,
        count: i32,
        assignments: Option<&[Vec<i32>]>,
    ) -> Result<(), TopicError> {
        self.read(|m| m.propose_create_partitions(topic, count, assignments)).map(|_| ()).map_err(|e| refusal(&e))
    }

    pub fn defaults(&self) -> TopicDefaults {
        self.defaults
    }

    /// How this node holds partition `index` of `topic`: `None` when the topic is not in the
    /// cluster's metadata, `Some(None)` when that partition does not exist.
    pub fn replica(&self, topic: &str, index: i32) -> Option<Option<Replica>> {
        let group = self.read(|m| {
            let t = m.topic(topic)?;
            Some(usize::try_from(index).ok().and_then(|i| t.partitions.get(i).copied()))
        })?;
        let Some(group) = group else { return Some(None) };
        Some(Some(match (self.node.group(group), self.replicas.get(group)) {
            (Some(raft), Some(replica)) => Replica::Raft { raft, replica },
            _ => Replica::Elsewhere,
        }))
    }

    /// Leader pinning through failovers: for each partition hosted here, its replicas on a rack
    /// its topic's `leader.preferred.racks` names take the first turns to campaign when it needs
    /// a leader, so a lost leader is replaced in the pinned region when a replica there can win.
    pub fn pin_campaigns(&self) {
        use fjord_replication::controller::placement;
        let pins: Vec<(GroupId, Vec<NodeId>)> = self.read(|m| {
            self.replicas
                .all()
                .into_iter()
                .filter_map(|(group, _)| {
                    let p = m.partitions().get(&group)?;
                    let configs = &m.topic(&p.topic)?.configs;
                    let racks =
                        placement::preferred_racks(configs.get(placement::LEADER_PREFERRED_RACKS).map(String::as_str));
                    let on_pinned_rack = |r: &&i32| {
                        m.broker(**r)
                            .and_then(|b| b.registration.rack.as_ref())
                            .is_some_and(|rack| racks.contains(rack))
                    };
                    let first =
                        p.replicas.iter().filter(on_pinned_rack).filter_map(|r| NodeId::try_from(*r).ok()).collect();
                    Some((group, first))
                })
                .collect()
        });
        for (group, first) in pins {
            self.node.set_campaign_first(group, first);
        }
    }

    /// The group of partition `index` of `topic`, if the metadata has it.
    fn group_of(&self, topic: &str, index: i32) -> Option<GroupId> {
        self.read(|m| m.topic(topic)?.partitions.get(usize::try_from(index).ok()?).copied())
    }

    /// KIP-392's rack-aware selection, asked of a partition's leader: the replica a consumer on
    /// `rack` should read from, when that is another node. None (read here) when this node is on
    /// that rack, or when no follower there is in the partition's ISR, live, heard from within
    /// `FOLLOWER_READ_LAG`, and holding the log up to `fetch_offset` (as Kafka's selector
    /// requires, so the consumer is not sent to a replica that would answer OFFSET_OUT_OF_RANGE);
    /// among several, the one holding the most entries. `log` is this leader's.
    pub fn preferred_read_replica(
        &self,
        topic: &str,
        index: i32,
        rack: &str,
        log: &fjord_storage::PartitionLog,
        fetch_offset: i64,
    ) -> Option<i32> {
        let me = i32::try_from(self.node_id()).ok()?;
        let group = self.group_of(topic, index)?;
        let candidates: Vec<i32> = self.read(|m| {
            let p = m.partitions().get(&group)?;
            let on_rack =
                |id: i32| m.broker(id).is_some_and(|b| !b.fenced && b.registration.rack.as_deref() == Some(rack));
            if on_rack(me) {
                return None;
            }
            Some(p.replicas.iter().copied().filter(|r| *r != me && p.isr.contains(r) && on_rack(*r)).collect())
        })?;
        if candidates.is_empty() {
            return None;
        }
        let raft = self.node.group(group)?;
        let m = raft.metrics();
        let m = openraft::async_runtime::watch::WatchReceiver::borrow_watched(&m);
        if m.state != openraft::ServerState::Leader {
            return None;
        }
        // The entry holding the offset before `fetch_offset`: a replica holding it holds the
        // log up to `fetch_offset`. Nothing to require at the log start.
        let needed = log.raft_index_for_offset(fetch_offset - 1);
        candidates
            .into_iter()
            .filter_map(|c| {
                let id = NodeId::try_from(c).ok()?;
                let answered = m.heartbeat.as_ref()?.get(&id).copied().flatten()?;
                let matched = m.replication.as_ref()?.get(&id).cloned().flatten().map(|l| l.index());
                let holds = needed.is_none_or(|n| matched >= Some(n));
                (openraft::Instant::elapsed(&*answered) < FOLLOWER_READ_LAG && holds)
                    .then_some((matched, std::cmp::Reverse(c)))
            })
            .max()
            .map(|(_, std::cmp::Reverse(c))| c)
    }

    /// KIP-392 on a follower: the log a consumer may read from this node's replica of the
    /// partition, which does not lead it. It serves up to its own high watermark (the commit
    /// index its leader last sent), while it follows a leader it heard from within
    /// `FOLLOWER_READ_LAG` and has not lost its log; the consumer's leader epoch must be the
    /// current term, as on a leader.
    pub fn follower_log(
        &self,
        topic: &str,
        index: i32,
        current_leader_epoch: i32,
    ) -> Result<Arc<fjord_storage::PartitionLog>, ResponseError> {
        let group = self.group_of(topic, index).ok_or(ResponseError::UnknownTopicOrPartition)?;
        let replica = self.replicas.get(group).ok_or(ResponseError::NotLeaderOrFollower)?;
        if self.node.recovery().is_recovering(group) {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        let (_, term, since) = self.node.following(group).ok_or(ResponseError::NotLeaderOrFollower)?;
        if since > FOLLOWER_READ_LAG {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        let term = i32::try_from(term).map_err(|_| ResponseError::NotLeaderOrFollower)?;
        crate::leadership::check_epoch(term, current_leader_epoch)?;
        Ok(replica.log)
    }

    /// Makes this node's dynamic broker configs the cluster's (the metadata's cluster default and
    /// this node's own), once the metadata has caught up with this run's registration (before,
    /// it may not hold them yet). Open replica logs take the new defaults. True if anything
    /// changed.
    pub fn mirror_broker_configs(&self, topics: &crate::topics::Topics) -> Result<bool, TopicError> {
        let Ok(me) = i32::try_from(self.node_id()) else { return Ok(false) };
        let Some((cluster_wide, own)) = self.read(|m| {
            let current = m.broker(me).is_some_and(|b| b.registration.incarnation == self.incarnation);
            current.then(|| (m.cluster_configs().clone(), m.broker_configs(me).cloned().unwrap_or_default()))
        }) else {
            return Ok(false);
        };
        let mut changed = false;
        for (per_node, layer) in [(false, cluster_wide), (true, own)] {
            if topics.broker_config_layer(per_node) != layer {
                topics.set_broker_configs(per_node, layer)?;
                changed = true;
            }
        }
        if changed {
            // Only now (this runs twice a second): every replica here takes the new defaults.
            let defaults = topics.defaults();
            let topic_configs: Vec<(GroupId, BTreeMap<String, String>)> = self.read(|m| {
                m.topics().values().flat_map(|t| t.partitions.iter().map(move |g| (*g, t.configs.clone()))).collect()
            });
            for (group, configs) in topic_configs {
                if let Some(replica) = self.replicas.get(group) {
                    replica.log.set_config(topic_config::log_config(&configs, &defaults));
                }
            }
        }
        Ok(changed)
    }

    /// Kafka's auto leader rebalance: each partition this node leads whose preferred replica
    /// (the first, or the first on a rack of the topic's `leader.preferred.racks`) is another node hands its leadership over, when `to_preferred` allows it.
    /// Returns how many transfers were started.
    pub async fn balance_leaders(&self) -> usize {
        let mut started = 0;
        for (group, _) in self.replicas.all() {
            if self.to_preferred(group).await == Ok(true) {
                started += 1;
            }
        }
        started
    }

    /// Leader pinning after a failover: each partition this node leads although its topic's
    /// `leader.preferred.racks` does not name this node's rack goes back to a replica on a
    /// pinned rack as soon as that one can lead (`to_preferred`), not at the next balancing pass
    /// (`leader_imbalance_check_interval_seconds`, 300 s by default). With one replica per rack
    /// a failover has to leave the pinned rack; this brings the leadership back once its replica
    /// there has returned and caught up. A partition handed over is not tried again for
    /// `PINNED_RETRY` (kept in `tried`): a transfer the pinned replica cannot complete (the
    /// other replicas do not hear it) costs an election each time. Returns how many transfers
    /// were started.
    pub async fn return_pinned_leaderships(&self, tried: &mut HashMap<GroupId, tokio::time::Instant>) -> usize {
        use fjord_replication::controller::placement;
        let Ok(me) = i32::try_from(self.node_id()) else { return 0 };
        let off_pinned: Vec<GroupId> = self.read(|m| {
            let rack_of = |n: i32| m.broker(n).and_then(|b| b.registration.rack.clone());
            let my_rack = rack_of(me);
            self.replicas
                .all()
                .into_iter()
                .filter(|(group, _)| {
                    let Some(p) = m.partitions().get(group) else { return false };
                    if p.leader != Some(me) {
                        return false;
                    }
                    let configs = m.topic(&p.topic).map(|t| &t.configs);
                    let racks = placement::preferred_racks(
                        configs.and_then(|c| c.get(placement::LEADER_PREFERRED_RACKS)).map(String::as_str),
                    );
                    let pinned = |rack: &Option<String>| rack.as_ref().is_some_and(|r| racks.contains(r));
                    !racks.is_empty()
                        && !pinned(&my_rack)
                        && m.preferred_leader(*group).is_some_and(|l| pinned(&rack_of(l)))
                })
                .map(|(group, _)| group)
                .collect()
        });
        tried.retain(|_, at| at.elapsed() < PINNED_RETRY);
        let mut started = 0;
        for group in off_pinned {
            if tried.contains_key(&group) {
                continue;
            }
            if self.to_preferred(group).await == Ok(true) {
                tried.insert(group, tokio::time::Instant::now());
                started += 1;
            }
        }
        started
    }

    /// Hands the leadership of `group`, which this node leads, to its preferred replica
    /// (`ClusterMetadata::preferred_leader`: the first, or the first on a pinned rack), if that broker is live (unfenced, and answered within the last second), in the
    /// partition's ISR, and holds every committed entry. A transfer that does not complete costs
    /// an election (`ReplicaNode::transfer_leader`). Ok(false): this node is the preferred one.
    pub async fn to_preferred(&self, group: GroupId) -> Result<bool, ResponseError> {
        let (target, eligible) = self
            .read(|m| {
                let p = m.partitions().get(&group)?;
                let first = m.preferred_leader(group)?;
                let live = m.brokers().get(&first).is_some_and(|b| !b.fenced);
                Some((NodeId::try_from(first).ok()?, live && p.isr.contains(&first)))
            })
            .ok_or(ResponseError::UnknownTopicOrPartition)?;
        let Some(raft) = self.node.group(group) else { return Err(ResponseError::NotLeaderOrFollower) };
        let (leads, caught_up) = {
            let m = raft.metrics();
            let m = openraft::async_runtime::watch::WatchReceiver::borrow_watched(&m);
            let matched = m.replication.as_ref().and_then(|r| r.get(&target).cloned().flatten());
            let committed = m.local_committed.map(|l| l.index());
            // A learner (a replica a reassignment is adding) cannot take a leadership over.
            let voter = m.membership_config.membership().voter_ids().any(|v| v == target);
            (
                m.state == openraft::ServerState::Leader,
                voter && committed.is_some() && matched.map(|l| l.index()) >= committed,
            )
        };
        if !leads {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        if target == self.node.id() {
            return Ok(false);
        }
        let alive = self.node.transport().last_heard(target).is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        if !(eligible && caught_up && alive) {
            tracing::debug!(group, to = target, eligible, caught_up, alive, "the preferred replica cannot lead yet");
            return Err(ResponseError::PreferredLeaderNotAvailable);
        }
        self.node.transfer_leader(group, target).await.map_err(|e| {
            tracing::debug!(group, error = %e, "leadership transfer not started");
            ResponseError::PreferredLeaderNotAvailable
        })?;
        tracing::info!(group, to = target, "moving the leadership to the preferred replica");
        Ok(true)
    }

    /// ElectLeaders(PREFERRED) for partition `index` of `topic`: asks its leader (this node, or
    /// another through `RPC_ELECT_PREFERRED`) to hand the leadership to the preferred replica,
    /// then waits until `deadline` for the metadata to name it at a newer epoch.
    /// ELECTION_NOT_NEEDED when it leads already. A leader the metadata names that no longer
    /// leads is asked again once the metadata moves on.
    pub async fn elect_preferred(
        &self,
        topic: &str,
        index: i32,
        deadline: tokio::time::Instant,
    ) -> Result<(), ResponseError> {
        let timed_out = || ResponseError::RequestTimedOut;
        // A preferred replica that is briefly not eligible (a moment behind, its liveness not yet
        // seen) is waited for a little, within the request's time.
        let patience = tokio::time::Instant::now() + Duration::from_secs(5);
        let (group, preferred, first_epoch) = loop {
            let (group, leader, preferred, epoch) = self
                .read(|m| {
                    m.partitions()
                        .iter()
                        .find(|(_, p)| p.topic == topic && p.index == index)
                        .map(|(g, p)| (*g, p.leader, m.preferred_leader(*g), p.leader_epoch))
                })
                .ok_or(ResponseError::UnknownTopicOrPartition)?;
            let preferred = preferred.ok_or(ResponseError::UnknownTopicOrPartition)?;
            if leader == Some(preferred) {
                return Err(ResponseError::ElectionNotNeeded);
            }
            let leader =
                leader.and_then(|l| NodeId::try_from(l).ok()).ok_or(ResponseError::PreferredLeaderNotAvailable)?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let started = if leader == self.node.id() {
                tokio::time::timeout(left, self.to_preferred(group)).await.map_err(|_| timed_out())?
            } else {
                let body = fjord_replication::rpc::encode(&group).map_err(|_| ResponseError::UnknownServerError)?;
                let answer = self
                    .node
                    .transport()
                    .call(leader, 0, crate::cluster_txn::RPC_ELECT_PREFERRED, &[&body], left)
                    .await
                    .map_err(|_| ResponseError::PreferredLeaderNotAvailable)?;
                match fjord_replication::rpc::decode_response::<i16>(&answer) {
                    Ok(0) => Ok(true),
                    Ok(code) => Err(ResponseError::try_from_code(code).unwrap_or(ResponseError::UnknownServerError)),
                    Err(_) => Err(ResponseError::PreferredLeaderNotAvailable),
                }
            };
            match started {
                Ok(true) => break (group, preferred, epoch),
                Ok(false) => return Err(ResponseError::ElectionNotNeeded),
                // The metadata named a leader that has just stopped leading: ask again once it
                // names the new one.
                Err(ResponseError::NotLeaderOrFollower) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(ResponseError::NotLeaderOrFollower) => return Err(timed_out()),
                Err(ResponseError::PreferredLeaderNotAvailable)
                    if tokio::time::Instant::now() + Duration::from_millis(100) < deadline.min(patience) =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        loop {
            let now = self.read(|m| m.partitions().get(&group).map(|p| (p.leader, p.leader_epoch)));
            match now {
                Some((Some(l), epoch)) if epoch > first_epoch && l == preferred => return Ok(()),
                // Another replica won the election the transfer started (the preferred one was
                // too slow to take over): ask its new leader, while time is left.
                Some((Some(_), epoch)) if epoch > first_epoch => {
                    return match Box::pin(self.elect_preferred(topic, index, deadline)).await {
                        // The preferred replica leads by now.
                        Err(ResponseError::ElectionNotNeeded) => Ok(()),
                        other => other,
                    };
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(timed_out());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The logs of the partition replicas on this node.
    pub fn replica_logs(&self) -> Vec<Arc<fjord_storage::PartitionLog>> {
        self.replicas.all().into_iter().map(|(_, r)| r.log).collect()
    }

    /// Retention of every partition replica on this node (see `partition::retention`), each
    /// replica on its own, so that one waiting for its snapshot holds up no other.
    pub async fn apply_retention(&self, now_ms: i64) {
        let mut passes = tokio::task::JoinSet::new();
        for (group, replica) in self.replicas.all() {
            let Some(raft) = self.node.group(group) else { continue };
            passes.spawn(async move {
                let log = &replica.log;
                match fjord_replication::partition::retention::apply(&raft, log, now_ms, RETENTION_WAIT).await {
                    Ok(Some(upto)) => tracing::info!(group, upto, "retention: purging the log up to entry {upto}"),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(group, error = %e, "retention pass failed"),
                }
            });
        }
        while passes.join_next().await.is_some() {}
    }

    /// Whether this node is still the Raft leader of partition `index` of `topic` in term
    /// `epoch`, whether or not it can serve right now (a leader that has not heard its quorum
    /// for a while keeps its term, and its log, until another leader is elected).
    pub fn raft_leader_at(&self, topic: &str, index: i32, epoch: i32) -> bool {
        match self.replica(topic, index) {
            Some(Some(Replica::Raft { raft, .. })) => {
                let m = raft.metrics();
                let m = openraft::async_runtime::watch::WatchReceiver::borrow_watched(&m);
                m.state == openraft::ServerState::Leader && i32::try_from(m.current_term) == Ok(epoch)
            }
            _ => false,
        }
    }

    /// Whether `topic` is one of the cluster's internal topics (written only by brokers).
    pub fn is_internal(&self, topic: &str) -> Option<bool> {
        self.read(|m| m.topic(topic).map(|t| t.internal))
    }

    /// The live broker leading partition `index` of `topic`, with its client address.
    pub fn leader_address(&self, topic: &str, index: i32) -> Option<(i32, String, i32)> {
        self.read(|m| {
            let group = *m.topic(topic)?.partitions.get(usize::try_from(index).ok()?)?;
            let leader = m.partition(group)?.leader?;
            let broker = m.broker(leader).filter(|b| !b.fenced)?;
            let (host, port) = crate::server::split_host_port(&broker.registration.advertised_listener)?;
            Some((leader, host, port))
        })
    }

    /// The partition count of a topic of the cluster, if it exists.
    pub fn partition_count(&self, topic: &str) -> Option<i32> {
        self.read(|m| m.topic(topic).and_then(|t| i32::try_from(t.partitions.len()).ok()))
    }

    /// Asks the controller for the cluster's compacted internal topic `name` (as Kafka creates
    /// `__consumer_offsets` on the first FindCoordinator), with the default replication factor.
    /// Another node creating it at the same time is not an error.
    pub async fn ensure_internal_topic(&self, name: &str, partitions: i32) -> Result<(), TopicError> {
        let mut configs = std::collections::BTreeMap::new();
        configs.insert("cleanup.policy".to_string(), "compact".to_string());
        configs.insert("segment.bytes".to_string(), (100 * 1024 * 1024).to_string());
        self.ensure_internal_topic_with(name, partitions, configs).await
    }

    /// `ensure_internal_topic` with the topic's own configs.
    pub async fn ensure_internal_topic_with(
        &self,
        name: &str,
        partitions: i32,
        configs: std::collections::BTreeMap<String, String>,
    ) -> Result<(), TopicError> {
        if self.partition_count(name).is_some() {
            return Ok(());
        }
        // As Kafka's offsets.topic.replication.factor: created only once that many brokers are
        // live, never with fewer replicas for good.
        let live = self.read(|m| m.live_brokers().count());
        let factor = self.defaults.replication_factor.max(1);
        if live < usize::try_from(factor).unwrap_or(usize::MAX) {
            return Err(TopicError::new(
                ResponseError::CoordinatorNotAvailable,
                format!("{name} needs {factor} live brokers and {live} are live"),
            ));
        }
        let topic = NewTopic {
            name: name.to_string(),
            num_partitions: partitions,
            replication_factor: factor,
            configs,
            internal: true,
            ..NewTopic::default()
        };
        match self.submit(Request::CreateTopic(topic)).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == ResponseError::TopicAlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// This node's broker id in the cluster's node id space.
    pub fn node_id(&self) -> NodeId {
        self.node.id()
    }

    /// Whether the applied metadata holds this process's own registration, unfenced: the node
    /// has joined, and its metadata has caught up with everything committed before it started.
    pub fn joined(&self) -> bool {
        self.read(|m| {
            i32::try_from(self.node.id())
                .ok()
                .and_then(|me| m.broker(me))
                .is_some_and(|b| b.registration.incarnation == self.incarnation && !b.fenced)
        })
    }

    /// The Raft groups on this node (its copy of the controller quorum's metadata log, and its
    /// partition replicas) that have not caught up, with why. A group has caught up when this
    /// node leads it and can serve (`produce::leader_epoch`), or follows (as a voter or a
    /// learner: a broker that is not a controller voter learns the metadata log) a leader it
    /// heard from within that long, is not recovering a lost log, and has applied what that
    /// leader last said was committed.
    pub fn lagging_replicas(&self) -> Vec<(GroupId, &'static str)> {
        let mut lagging = Vec::new();
        let mut hosted: Vec<GroupId> = self.replicas.all().into_iter().map(|(g, _)| g).collect();
        hosted.push(fjord_replication::controller::CONTROLLER_GROUP);
        for group in hosted {
            let Some(raft) = self.node.group(group) else {
                lagging.push((group, "not started"));
                continue;
            };
            if self.node.recovery().is_recovering(group) {
                lagging.push((group, "recovering a lost log"));
                continue;
            }
            let (state, applied, committed) = {
                let m = raft.metrics();
                let m = openraft::async_runtime::watch::WatchReceiver::borrow_watched(&m);
                (m.state, m.last_applied.map(|l| l.index), m.cluster_committed.map(|l| l.index))
            };
            if state == openraft::ServerState::Leader {
                // Serving: an entry of its term applied, and a quorum heard from lately.
                if fjord_replication::partition::produce::leader_epoch(&raft).is_none() {
                    lagging.push((group, "leads without serving (no entry of its term applied, or no quorum heard)"));
                }
                continue;
            }
            match self.node.hearing_leader(group, true) {
                Some((_, _, since)) if since <= FOLLOWER_READ_LAG => {}
                _ => {
                    lagging.push((group, "no recent word from a leader"));
                    continue;
                }
            }
            if applied < committed {
                lagging.push((group, "behind its leader's commit"));
            }
        }
        lagging
    }

    /// The log of this node's replica of partition `index` of `topic`, leader's or follower's.
    pub fn local_log(&self, topic: &str, index: i32) -> Option<Arc<fjord_storage::PartitionLog>> {
        let group = self.read(|m| m.topic(topic)?.partitions.get(usize::try_from(index).ok()?).copied())?;
        self.replicas.get(group).map(|r| r.log)
    }

    /// For each Raft group on this node (the controller quorum's and the partitions'): its
    /// current term and the leader this node knows, for the election metrics.
    pub fn group_leaders(&self) -> Vec<(GroupId, u64, Option<NodeId>)> {
        self.node
            .registry()
            .all()
            .into_iter()
            .map(|(g, raft)| {
                let m = raft.metrics();
                let m = openraft::async_runtime::watch::WatchReceiver::borrow_watched(&m);
                (g, m.current_term, m.current_leader)
            })
            .collect()
    }
}

/// How long a retention pass waits for a replica's snapshot.
const RETENTION_WAIT: Duration = Duration::from_secs(30);

/// How long a pinned partition handed back to its pinned rack waits before it is tried again.
const PINNED_RETRY: Duration = Duration::from_secs(10);

/// How long a request waits for the controller: longer than an election.
const SUBMIT_WAIT: Duration = Duration::from_secs(10);

fn refusal(e: &MetadataError) -> TopicError {
    let code = ResponseError::try_from_code(e.code.code()).unwrap_or(ResponseError::UnknownServerError);
    TopicError::new(code, e.message.clone())
}
