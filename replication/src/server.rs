//! A cluster node's start-up: the node-to-node transport, this node's replica of the controller
//! quorum (with the recovery of a voter that may have lost its state), its life as a broker
//! (registration, heartbeats), the applier that runs its partition replicas, and the election
//! and heartbeat drivers. The broker starts its cluster part through this, and the simulation
//! starts every simulated node through it, so what the simulation checks is what production
//! runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;

use crate::applier::{self, ApplierConfig, LogConfigFn, Replicas};
use crate::controller::{
    BrokerRegistration, ConfigValidator, Controller, ControllerMachine, Liveness, TaskGuard, TopicDefaults,
    CONTROLLER_GROUP,
};
use crate::election::{ElectionDriver, ElectionTimings};
use crate::heartbeat::HeartbeatDriver;
use crate::machine::NodeMachine;
use crate::node::ReplicaNode;
use crate::recovery;
use crate::transport::{Connector, InboundHandler, Listener, TransportConfig};
use crate::NodeId;

/// What a node needs to start.
pub struct NodeConfig {
    pub node_id: NodeId,
    /// The name both ends of a node-to-node connection must agree on in the handshake.
    pub transport_name: String,
    /// The controller quorum's voters and their node-to-node addresses.
    pub voters: BTreeMap<NodeId, String>,
    /// Where the metadata log and the partition replicas live.
    pub data_dir: PathBuf,
    pub rack: Option<String>,
    /// Where clients reach this node (named in the broker registration).
    pub advertised_listener: String,
    /// Where peers reach this node (named in the broker registration).
    pub cluster_address: String,
    pub defaults: TopicDefaults,
    pub liveness: Liveness,
    pub elections: ElectionTimings,
    /// How often group heartbeats carry the commit index to followers.
    pub group_heartbeat: Duration,
    /// How long a controller voter with no Raft state waits for every other voter's answer
    /// before a majority's word that the quorum is new will do.
    pub settle_patience: Duration,
    pub validator: Arc<dyn ConfigValidator + Send + Sync>,
    /// The log config of a topic's partitions, from its configs.
    pub log_config: LogConfigFn,
}

/// A running node; its tasks stop when it is dropped.
pub struct StartedNode {
    pub node: Arc<ReplicaNode<NodeMachine>>,
    pub controller: Arc<Controller<NodeMachine>>,
    /// The partition replicas the applier runs here.
    pub replicas: Arc<Replicas>,
    /// This run's broker registration.
    pub incarnation: uuid::Uuid,
    /// The metadata log (`__cluster_metadata-0`) as the controller group's Raft log store.
    pub metadata_log: crate::partition::PartitionLogStore,
    pub tasks: Vec<TaskGuard>,
    pub heartbeats: HeartbeatDriver,
    pub elections: ElectionDriver,
}

pub type StartError = Box<dyn std::error::Error + Send + Sync>;

/// Starts the node. `services` is given the controller's RPC handler and returns the handler
/// of every service RPC the node answers (the broker adds its own).
pub async fn start(
    config: NodeConfig,
    connector: Arc<dyn Connector>,
    listener: impl Listener,
    services: impl FnOnce(Arc<dyn InboundHandler>) -> Arc<dyn InboundHandler>,
) -> Result<StartedNode, StartError> {
    let me = config.node_id;
    let node = Arc::new(ReplicaNode::new(TransportConfig::new(config.transport_name.clone(), me), connector));
    node.serve(listener);
    let mut voters = BTreeMap::new();
    for (id, addr) in &config.voters {
        node.add_peer(*id, addr);
        voters.insert(*id, BasicNode::new(addr.clone()));
    }

    let dir = config.data_dir.join("__cluster_metadata-0");
    // A voter with no Raft state may be one whose disk was wiped: it must not vote until it
    // knows whether the quorum has a history (`recovery::settle_voter`).
    let unsure = voters.contains_key(&me) && voters.len() > 1 && recovery::may_have_lost_state(&dir);
    if unsure {
        node.recovery().begin(CONTROLLER_GROUP, &dir)?;
    }
    let machine = ControllerMachine::open(me, Some(&dir))?;
    // The metadata log is a partition log, as KRaft's `__cluster_metadata` is; the controller's
    // state machine keeps its own snapshots, so only the log store of the partition group is used.
    let (log, _) = crate::partition::open(&dir, fjord_storage::LogConfig::default())?;
    let raft = node
        .start_group(
            CONTROLLER_GROUP,
            config.elections.raft_config(&config.transport_name)?,
            log.clone(),
            NodeMachine::Controller(machine.clone()),
        )
        .await
        .map_err(|e| format!("cannot start the controller group: {e}"))?;
    if voters.contains_key(&me) && !unsure {
        // Every voter proposes the same initial membership (allowed by openraft); once the
        // group has a log this is refused, which is the normal case after a restart.
        if let Err(e) = raft.initialize(voters.clone()).await {
            tracing::debug!(error = %e, "controller quorum already initialized");
        }
    }
    let controller = Controller::new(
        machine,
        raft,
        node.transport().clone(),
        config.defaults,
        config.validator.clone(),
        config.liveness,
    );
    node.set_services(services(controller.rpc_handler()));
    // Drawn through the runtime's seam, so a simulated node's registration follows its seed.
    let mut random = [0u8; 16];
    random[..8].copy_from_slice(&crate::rt::random_u64().to_le_bytes());
    random[8..].copy_from_slice(&crate::rt::random_u64().to_le_bytes());
    let incarnation = uuid::Builder::from_random_bytes(random).into_uuid();
    let node_id = i32::try_from(me).map_err(|_| format!("node id {me} is out of range"))?;
    let registration = BrokerRegistration {
        node_id,
        incarnation,
        rack: config.rack.clone(),
        advertised_listener: config.advertised_listener.clone(),
        cluster_address: config.cluster_address.clone(),
    };
    let mut tasks = vec![controller.spawn_leader_duties(), controller.spawn_broker(registration)];
    if unsure {
        tasks.push(TaskGuard::spawn(recovery::settle_voter(
            node.clone(),
            CONTROLLER_GROUP,
            voters,
            config.settle_patience,
        )));
    }
    // Partition groups: the election driver owns their elections too, and openraft must never
    // snapshot or purge them on its own (their log is the Kafka data).
    let mut partition_config = (*config.elections.raft_config(&config.transport_name)?).clone();
    partition_config.snapshot_policy = openraft::SnapshotPolicy::Never;
    partition_config.max_in_snapshot_log_to_keep = u64::MAX;
    let replicas = Arc::new(Replicas::default());
    tasks.extend(applier::spawn(
        node.clone(),
        controller.clone(),
        ApplierConfig {
            node_id,
            incarnation,
            data_dir: config.data_dir.clone(),
            raft_config: Arc::new(partition_config.validate()?),
            log_config: config.log_config,
            replicas: replicas.clone(),
        },
    ));
    let heartbeats = node.start_heartbeats(config.group_heartbeat);
    let elections = node.start_elections(config.elections);
    Ok(StartedNode { node, controller, replicas, incarnation, metadata_log: log, tasks, heartbeats, elections })
}
