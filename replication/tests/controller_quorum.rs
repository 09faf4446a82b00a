//! The controller quorum as three in-process nodes over loopback TCP: records proposed on the
//! leader apply identically everywhere and answer the proposer with their outcome; a follower
//! refuses to propose and names the leader; a record the state refuses at apply answers the
//! refusal; a node that restarts with its snapshot file and its log rebuilds the same state; and
//! a node that joins after the log was purged catches up from a snapshot.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{init_tracing, wait_until, KillableConnector};
use fjord_replication::controller::{
    AnyConfig, BrokerRegistration, ClusterMetadata, Controller, ControllerMachine, ErrorCode, Liveness, MetadataRecord,
    NewTopic, Outcome, ProposeError, Request, TaskGuard, TopicDefaults, CONTROLLER_GROUP,
};
use fjord_replication::heartbeat::HeartbeatDriver;
use fjord_replication::mem::MemLog;
use fjord_replication::node::{GroupTimings, ReplicaNode};
use fjord_replication::transport::{TcpListener, TransportConfig};
use fjord_replication::{NodeId, Raft};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::{BasicNode, ServerState};

const GROUP: u64 = CONTROLLER_GROUP;
const DEADLINE: Duration = Duration::from_secs(20);

struct Node {
    node: ReplicaNode<ControllerMachine>,
    machine: ControllerMachine,
    log: MemLog,
    _heartbeats: HeartbeatDriver,
}

impl Node {
    fn raft(&self) -> Raft<ControllerMachine> {
        self.node.group(GROUP).expect("controller group started")
    }
}

fn config() -> std::sync::Arc<openraft::Config> {
    let t = GroupTimings {
        heartbeat_interval: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(600),
        election_timeout_max: Duration::from_millis(1000),
    };
    t.config("controller-test").unwrap()
}

async fn start_node(
    id: NodeId,
    listener: TcpListener,
    members: &BTreeMap<NodeId, BasicNode>,
    log: MemLog,
    dir: &std::path::Path,
) -> Node {
    let node = ReplicaNode::new(TransportConfig::new("controller-test", id), KillableConnector::new());
    node.serve(listener);
    for (peer, n) in members {
        node.add_peer(*peer, &n.addr);
    }
    let machine = ControllerMachine::open(id, Some(dir)).unwrap();
    node.start_group(GROUP, config(), log.clone(), machine.clone()).await.unwrap();
    let heartbeats = node.start_heartbeats(Duration::from_millis(100));
    Node { node, machine, log, _heartbeats: heartbeats }
}

/// Listeners on free loopback ports for nodes 1..=n, and the membership naming them.
async fn listeners(n: u64) -> (Vec<TcpListener>, BTreeMap<NodeId, BasicNode>) {
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=n {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.insert(id, BasicNode::new(l.local_addr().unwrap().to_string()));
        listeners.push(l);
    }
    (listeners, members)
}

async fn leader_of(nodes: &[&Node]) -> NodeId {
    let m = nodes[0]
        .raft()
        .wait(Some(DEADLINE))
        .metrics(|m| m.current_leader.is_some(), "a controller leader")
        .await
        .unwrap();
    let leader = m.current_leader.unwrap();
    let n = nodes.iter().find(|n| n.node.id() == leader).expect("leader among the nodes");
    n.raft().wait(Some(DEADLINE)).state(ServerState::Leader, "leader knows it leads").await.unwrap();
    leader
}

fn registration(node_id: i32) -> BrokerRegistration {
    BrokerRegistration {
        node_id,
        incarnation: uuid::Uuid::new_v4(),
        rack: Some(format!("r{node_id}")),
        advertised_listener: format!("127.0.0.1:{}", 9092 + node_id),
        cluster_address: format!("127.0.0.1:{}", 9192 + node_id),
    }
}

fn new_topic(name: &str) -> NewTopic {
    NewTopic {
        name: name.into(),
        num_partitions: 3,
        replication_factor: 3,
        assignments: vec![],
        configs: BTreeMap::new(),
        internal: false,
    }
}

const DEFAULTS: TopicDefaults = TopicDefaults { num_partitions: 1, replication_factor: 3 };

async fn same_state_everywhere(nodes: &[&Node]) -> ClusterMetadata {
    let want = nodes[0].raft().metrics().borrow_watched().last_log_index;
    wait_until(DEADLINE, "every node applied the leader's log", || async {
        let target = nodes.iter().map(|n| n.raft().metrics().borrow_watched().last_log_index).max().flatten();
        target >= want && nodes.iter().all(|n| n.machine.last_applied_index() == target)
    })
    .await;
    let first = nodes[0].machine.read(|m| m.clone());
    for n in &nodes[1..] {
        assert_eq!(n.machine.read(|m| m.clone()), first, "node {} applied another state", n.node.id());
    }
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_quorum_applies_proposals_everywhere_and_recovers_from_snapshots() {
    init_tracing();
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (listeners, members) = listeners(3).await;
    let mut nodes = Vec::new();
    for (id, l) in (1..=3u64).zip(listeners) {
        nodes.push(start_node(id, l, &members, MemLog::default(), dirs[id as usize - 1].path()).await);
    }
    nodes[0].raft().initialize(members.clone()).await.unwrap();
    let all: Vec<&Node> = nodes.iter().collect();
    let leader_id = leader_of(&all).await;
    let leader = nodes.iter().find(|n| n.node.id() == leader_id).unwrap();
    let follower = nodes.iter().find(|n| n.node.id() != leader_id).unwrap();

    // Proposals on the leader answer with their outcome.
    let propose = |n: &Node, r: MetadataRecord| {
        let raft = n.raft();
        let machine = n.machine.clone();
        async move { machine.propose(&raft, &r, DEADLINE).await }
    };
    let init = MetadataRecord::InitCluster { cluster_id: "test-cluster".into() };
    let out = propose(leader, init).await.unwrap().unwrap();
    assert_eq!(out, Outcome::ClusterInitialized { cluster_id: "test-cluster".into() });
    for id in 1..=3 {
        let r = leader.machine.read(|m| m.propose_register_broker(registration(id))).unwrap();
        let out = propose(leader, r).await.unwrap().unwrap();
        assert!(matches!(out, Outcome::BrokerRegistered { node_id, .. } if node_id == id), "{out:?}");
        let r = leader.machine.read(|m| m.propose_unfence(id)).unwrap();
        propose(leader, r).await.unwrap().unwrap();
    }
    let topic_id = uuid::Uuid::new_v4();
    let r =
        leader.machine.read(|m| m.propose_create_topic(&new_topic("events"), topic_id, DEFAULTS, &AnyConfig)).unwrap();
    let created = propose(leader, r.clone()).await.unwrap().unwrap();
    let Outcome::TopicCreated { groups, .. } = created else { panic!("{created:?}") };
    assert_eq!(groups.len(), 3);

    // The same record again: apply refuses it (the topic exists now) and says why.
    let refused = propose(leader, r).await.unwrap();
    assert!(refused.is_err(), "a second CreateTopic of one name applied: {refused:?}");

    // A follower does not propose; it names the leader.
    let r = MetadataRecord::InitCluster { cluster_id: "other".into() };
    match follower.machine.propose(&follower.raft(), &r, DEADLINE).await {
        Err(ProposeError::NotLeader(l)) => assert_eq!(l, Some(leader_id)),
        other => panic!("a follower proposed: {other:?}"),
    }

    let state = same_state_everywhere(&all).await;
    assert_eq!(state.cluster_id(), Some("test-cluster"));
    assert_eq!(state.brokers().len(), 3);
    assert!(state.brokers().values().all(|b| !b.fenced));
    assert!(state.topic("events").is_some());

    // Snapshot and purge on every node: the log before the snapshot is gone.
    for n in &nodes {
        n.raft().trigger().snapshot().await.unwrap();
        let m = n.raft().wait(Some(DEADLINE)).metrics(|m| m.snapshot.is_some(), "a snapshot").await.unwrap();
        n.raft().trigger().purge_log(m.snapshot.unwrap().index).await.unwrap();
        n.raft()
            .wait(Some(DEADLINE))
            .metrics(|x| x.purged == m.snapshot, "log purged up to the snapshot")
            .await
            .unwrap();
    }
    let r = leader
        .machine
        .read(|m| m.propose_create_topic(&new_topic("later"), uuid::Uuid::new_v4(), DEFAULTS, &AnyConfig))
        .unwrap();
    propose(leader, r).await.unwrap().unwrap();
    let state = same_state_everywhere(&all).await;

    // A restart of a follower: a new machine from its snapshot file plus its log after it.
    let restart = nodes.iter().position(|n| n.node.id() != leader_id).unwrap();
    let old = nodes.remove(restart);
    let (id, log) = (old.node.id(), old.log.clone());
    old.node.shutdown().await;
    drop(old);
    let reopened = ControllerMachine::open(id, Some(dirs[id as usize - 1].path())).unwrap();
    let from_file = reopened.read(|m| m.clone());
    assert!(from_file.topic("events").is_some(), "the snapshot file holds the state up to the snapshot");
    assert!(from_file.topic("later").is_none(), "and nothing after it");
    drop(reopened);
    // The old node's accept loop lets go of its port a moment after shutdown.
    let give_up = tokio::time::Instant::now() + DEADLINE;
    let l = loop {
        match TcpListener::bind(members[&id].addr.as_str()).await {
            Ok(l) => break l,
            Err(e) => assert!(tokio::time::Instant::now() < give_up, "port of node {id} still taken: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    nodes.push(start_node(id, l, &members, log, dirs[id as usize - 1].path()).await);
    let all: Vec<&Node> = nodes.iter().collect();
    assert_eq!(same_state_everywhere(&all).await, state, "the restarted node rebuilt the same state");

    // A fourth node joins as a learner after the purge: only a snapshot can bring it up to date.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut with_four = members.clone();
    with_four.insert(4, BasicNode::new(addr.clone()));
    for n in &nodes {
        n.node.add_peer(4, &addr);
    }
    let fourth = start_node(4, l, &with_four, MemLog::default(), dirs[3].path()).await;
    let leader = nodes.iter().find(|n| n.node.id() == leader_id).unwrap();
    leader.raft().add_learner(4, BasicNode::new(addr), true).await.unwrap();
    let all: Vec<&Node> = nodes.iter().chain(std::iter::once(&fourth)).collect();
    assert_eq!(same_state_everywhere(&all).await, state, "the learner installed the snapshot");
    assert!(
        fourth.raft().metrics().borrow_watched().snapshot.is_some(),
        "the learner got its state from a snapshot, not the purged log"
    );
}

/// One node running the controller service, as a broker process will.
struct ServiceNode {
    node: Node,
    controller: Arc<Controller<ControllerMachine>>,
    _duties: TaskGuard,
    broker: Option<TaskGuard>,
}

const LIVENESS: Liveness =
    Liveness { heartbeat_interval: Duration::from_millis(100), session_timeout: Duration::from_millis(1500) };

/// `addr`: where the node's transport listens, which its registration announces.
fn start_service(node: Node, addr: &str) -> ServiceNode {
    let controller = Controller::new(
        node.machine.clone(),
        node.raft(),
        node.node.transport().clone(),
        DEFAULTS,
        Arc::new(AnyConfig),
        LIVENESS,
    );
    node.node.set_services(controller.rpc_handler());
    let duties = controller.spawn_leader_duties();
    let reg = BrokerRegistration { cluster_address: addr.to_string(), ..registration(node.node.id() as i32) };
    let broker = controller.spawn_broker(reg);
    ServiceNode { node, controller, _duties: duties, broker: Some(broker) }
}

/// Waits until every node's applied state satisfies `cond`.
async fn everywhere(nodes: &[&ServiceNode], what: &str, cond: impl Fn(&ClusterMetadata) -> bool) {
    wait_until(DEADLINE, what, || async { nodes.iter().all(|n| n.node.machine.read(&cond)) }).await;
}

fn unfenced(m: &ClusterMetadata, id: i32) -> bool {
    m.broker(id).is_some_and(|b| !b.fenced)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_service_forwards_requests_and_tracks_broker_liveness() {
    init_tracing();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (listeners, members) = listeners(3).await;
    let mut nodes = Vec::new();
    for (id, l) in (1..=3u64).zip(listeners) {
        let node = start_node(id, l, &members, MemLog::default(), dirs[id as usize - 1].path()).await;
        nodes.push(start_service(node, &members[&id].addr));
    }
    nodes[0].node.raft().initialize(members.clone()).await.unwrap();

    // The leader names the cluster; every broker registers and is unfenced.
    {
        let all: Vec<&ServiceNode> = nodes.iter().collect();
        everywhere(&all, "a cluster id and three live brokers", |m| {
            m.cluster_id().is_some() && (1..=3).all(|id| unfenced(m, id))
        })
        .await;
    }
    let leader_id = nodes[0].controller.leader().unwrap();

    // A broker that is not a voter: it finds the leader through the voters, registers, is made
    // a learner and from then on applies the metadata log itself.
    let dir4 = tempfile::tempdir().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr4 = l.local_addr().unwrap().to_string();
    let observer = start_service(start_node(4, l, &members, MemLog::default(), dir4.path()).await, &addr4);
    {
        let all: Vec<&ServiceNode> = nodes.iter().chain(std::iter::once(&observer)).collect();
        everywhere(&all, "the observer registered, unfenced and applying", |m| unfenced(m, 4)).await;
    }
    let follower = nodes.iter().find(|n| n.node.node.id() != leader_id).unwrap();

    // A follower's request is forwarded to the leader and answered with the outcome.
    let answer = follower.controller.submit(Request::CreateTopic(new_topic("events")), DEADLINE).await.unwrap();
    assert!(matches!(answer, Ok(Some(Outcome::TopicCreated { ref name, .. })) if name == "events"), "{answer:?}");
    let again = follower.controller.submit(Request::CreateTopic(new_topic("events")), DEADLINE).await.unwrap();
    assert_eq!(again.map_err(|e| e.code), Err(ErrorCode::TopicAlreadyExists));
    let bad = follower.controller.submit(Request::DeleteTopic { name: "nope".into() }, DEADLINE).await.unwrap();
    assert_eq!(bad.map_err(|e| e.code), Err(ErrorCode::UnknownTopicOrPartition));
    let created = observer.controller.submit(Request::CreateTopic(new_topic("from-observer")), DEADLINE).await.unwrap();
    assert!(matches!(created, Ok(Some(Outcome::TopicCreated { .. }))), "{created:?}");
    {
        let all: Vec<&ServiceNode> = nodes.iter().chain(std::iter::once(&observer)).collect();
        everywhere(&all, "the topics on every node", |m| {
            m.topic("events").is_some() && m.topic("from-observer").is_some()
        })
        .await;
    }
    let voters = nodes[0].node.raft().metrics().borrow_watched().membership_config.membership().clone();
    assert!(voters.learner_ids().any(|id| id == 4), "the observer is a learner: {voters:?}");
    assert!(!voters.voter_ids().any(|id| id == 4), "and not a voter");

    // A broker that stops heartbeating is fenced; a new process of it comes back.
    let quiet = nodes.iter().position(|n| n.node.node.id() != leader_id).unwrap();
    let quiet_id = nodes[quiet].node.node.id() as i32;
    nodes[quiet].broker = None;
    {
        let all: Vec<&ServiceNode> = nodes.iter().collect();
        everywhere(&all, "the silent broker fenced", |m| m.broker(quiet_id).is_some_and(|b| b.fenced)).await;
        everywhere(&all, "the others still live", |m| (1..=3).filter(|id| *id != quiet_id).all(|id| unfenced(m, id)))
            .await;
    }
    let restarted =
        BrokerRegistration { cluster_address: members[&(quiet_id as u64)].addr.clone(), ..registration(quiet_id) };
    let incarnation = restarted.incarnation;
    nodes[quiet].broker = Some(nodes[quiet].controller.spawn_broker(restarted));
    {
        let all: Vec<&ServiceNode> = nodes.iter().collect();
        everywhere(&all, "the restarted broker registered and unfenced", |m| {
            m.broker(quiet_id).is_some_and(|b| !b.fenced && b.registration.incarnation == incarnation)
        })
        .await;
    }

    // The leader's node goes away: the others elect a leader, keep answering, and fence it.
    let gone = nodes.iter().position(|n| n.node.node.id() == leader_id).unwrap();
    let mut old = nodes.remove(gone);
    old.broker = None;
    old.node.node.shutdown().await;
    drop(old);
    let survivors: Vec<&ServiceNode> = nodes.iter().collect();
    let answer = survivors[0].controller.submit(Request::CreateTopic(new_topic("after")), DEADLINE).await.unwrap();
    assert!(matches!(answer, Ok(Some(Outcome::TopicCreated { .. }))), "{answer:?}");
    assert_ne!(survivors[0].controller.leader(), Some(leader_id));
    everywhere(&survivors, "the old leader's broker fenced", |m| {
        m.broker(leader_id as i32).is_some_and(|b| b.fenced) && m.topic("after").is_some()
    })
    .await;
}
