//! Three in-process nodes over real loopback TCP hosting ten Raft groups: every group elects one
//! leader, writes commit on a majority, and writes keep committing after the sockets are killed
//! or a node is cut off, without any committed entry changing. Each scenario runs with openraft's
//! per-group election timers and with the node-level election driver (tick off).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{init_tracing, wait_until, KillableConnector};
use fjord_replication::election::{ElectionDriver, ElectionTimings};
use fjord_replication::heartbeat::HeartbeatDriver;
use fjord_replication::mem::{MemLog, MemStateMachine};
use fjord_replication::node::{GroupTimings, ReplicaNode};
use fjord_replication::transport::{TcpListener, TransportConfig};
use fjord_replication::{BatchData, GroupId, NodeId, Raft};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::{BasicNode, Instant as _, ServerState};

const GROUPS: u64 = 10;
const NODES: u64 = 3;
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// openraft's tick per group, heartbeats from the node's driver.
    GroupTimers,
    /// No tick: the node-level election driver pings peers; group heartbeats are sparser.
    NodeElections,
    /// The node driver with the timings the README ships: pings every 100 ms, 300–500 ms of
    /// silence, group heartbeats every second (longer than the groups' 225 ms lease).
    Shipped,
}

struct TestNode {
    node: ReplicaNode<MemStateMachine>,
    state_machines: HashMap<GroupId, MemStateMachine>,
    connector: Arc<KillableConnector>,
    _heartbeats: HeartbeatDriver,
    _elections: Option<ElectionDriver>,
}

impl TestNode {
    fn raft(&self, group: GroupId) -> Raft<MemStateMachine> {
        self.node.group(group).expect("group started")
    }
}

fn timings() -> GroupTimings {
    GroupTimings {
        heartbeat_interval: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(600),
        election_timeout_max: Duration::from_millis(1000),
    }
}

fn shipped_election_timings() -> ElectionTimings {
    ElectionTimings {
        ping_interval: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(300),
        election_timeout_max: Duration::from_millis(500),
    }
}

const SHIPPED_HEARTBEAT: Duration = Duration::from_secs(1);

fn election_timings() -> ElectionTimings {
    ElectionTimings {
        ping_interval: Duration::from_millis(50),
        election_timeout_min: Duration::from_millis(300),
        election_timeout_max: Duration::from_millis(500),
    }
}

async fn start_cluster(mode: Mode) -> Vec<TestNode> {
    start_cluster_with(mode, |_| MemLog::default()).await
}

/// `log(node)` makes each of a node's group logs (a slow disk, say).
async fn start_cluster_with(mode: Mode, log: impl Fn(NodeId) -> MemLog) -> Vec<TestNode> {
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=NODES {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.insert(id, BasicNode::new(l.local_addr().unwrap().to_string()));
        listeners.push(l);
    }
    let config = match mode {
        Mode::GroupTimers => timings().config("cluster-test").unwrap(),
        Mode::NodeElections => election_timings().raft_config("cluster-test").unwrap(),
        Mode::Shipped => shipped_election_timings().raft_config("cluster-test").unwrap(),
    };
    let mut nodes = Vec::new();
    for (id, listener) in (1..=NODES).zip(listeners) {
        let connector = KillableConnector::new();
        let node = ReplicaNode::new(TransportConfig::new("cluster-test", id), connector.clone());
        node.serve(listener);
        for (peer, n) in &members {
            node.add_peer(*peer, &n.addr);
        }
        let mut state_machines = HashMap::new();
        for group in 1..=GROUPS {
            let sm = MemStateMachine::default();
            node.start_group(group, config.clone(), log(id), sm.clone()).await.unwrap();
            state_machines.insert(group, sm);
        }
        let (heartbeats, elections) = match mode {
            Mode::GroupTimers => (node.start_heartbeats(timings().heartbeat_interval), None),
            // Group heartbeats only carry the commit index here; liveness is the driver's pings.
            Mode::NodeElections => {
                (node.start_heartbeats(Duration::from_millis(200)), Some(node.start_elections(election_timings())))
            }
            Mode::Shipped => {
                (node.start_heartbeats(SHIPPED_HEARTBEAT), Some(node.start_elections(shipped_election_timings())))
            }
        };
        nodes.push(TestNode { node, state_machines, connector, _heartbeats: heartbeats, _elections: elections });
    }
    // Spread the first leaders: group g starts its first election on node g % 3 + 1.
    for group in 1..=GROUPS {
        let first = &nodes[(group % NODES) as usize];
        first.raft(group).initialize(members.clone()).await.unwrap();
    }
    nodes
}

/// Waits until every node agrees on one leader of `group` that knows it leads; returns it.
async fn settled_leader(nodes: &[TestNode], group: GroupId) -> NodeId {
    let mut leader = None;
    for n in nodes {
        let m = n
            .raft(group)
            .wait(Some(DEADLINE))
            .metrics(
                |m| m.current_leader.is_some() && (m.current_leader != Some(m.id) || m.state == ServerState::Leader),
                format!("group {group} leader known on node {}", n.node.id()),
            )
            .await
            .unwrap();
        leader.get_or_insert(m.current_leader);
    }
    let leader = leader.flatten().unwrap();
    // All nodes must name the same leader (wait: a follower may still be on an older term).
    for n in nodes {
        n.raft(group)
            .wait(Some(DEADLINE))
            .current_leader(leader, format!("group {group} agrees on {leader}"))
            .await
            .unwrap();
    }
    leader
}

/// `group` has one leader all nodes agree on, and no term has two leaders (a new election may
/// be running meanwhile on a loaded machine; two leaders in one term never).
async fn assert_one_leader(nodes: &[TestNode], group: GroupId) {
    settled_leader(nodes, group).await;
    let metrics: Vec<_> = nodes.iter().map(|n| n.raft(group).metrics().borrow_watched().clone()).collect();
    let mut leaders_by_term: HashMap<u64, Vec<NodeId>> = HashMap::new();
    for m in metrics.iter().filter(|m| m.state == ServerState::Leader) {
        leaders_by_term.entry(m.current_term).or_default().push(m.id);
    }
    for (term, leaders) in leaders_by_term {
        assert_eq!(leaders.len(), 1, "group {group} at term {term}: leaders {leaders:?}");
    }
}

/// The acknowledged writes of a round, per group: (log index, batch).
type Acked = HashMap<GroupId, Vec<(u64, Bytes)>>;

/// Writes `count` batches to every group through its leader, as a client would: a write refused
/// because leadership moved (a slow heartbeat on a loaded machine can cost an election) is sent
/// again to the new leader.
async fn write_all(nodes: &[TestNode], round: &str, count: usize) -> Acked {
    let mut acked = Acked::new();
    let give_up = tokio::time::Instant::now() + DEADLINE;
    for group in 1..=GROUPS {
        for i in 0..count {
            let data = Bytes::from(format!("{round}:{group}:{i}"));
            loop {
                assert!(tokio::time::Instant::now() < give_up, "group {group}: write {i} not acknowledged");
                let leader = settled_leader(nodes, group).await;
                let raft = nodes.iter().find(|n| n.node.id() == leader).unwrap().raft(group);
                match tokio::time::timeout(DEADLINE, raft.client_write(BatchData(data.clone()))).await {
                    Ok(Ok(resp)) => {
                        acked.entry(group).or_default().push((resp.log_id.index(), data));
                        break;
                    }
                    Ok(Err(e)) if e.forward_to_leader().is_some() => continue,
                    Ok(Err(e)) => panic!("group {group}: write failed: {e}"),
                    Err(_) => panic!("group {group}: write timed out"),
                }
            }
        }
    }
    acked
}

fn last_indexes(acked: &Acked) -> HashMap<GroupId, u64> {
    acked.iter().map(|(g, w)| (*g, w.iter().map(|(i, _)| *i).max().unwrap_or(0))).collect()
}

/// Every acknowledged write is in `entries` at the index its acknowledgement gave.
fn assert_acked_present(entries: &[AppliedEntry], acked: &[(u64, Bytes)], count: usize, what: &str) {
    assert_eq!(acked.len(), count, "{what}: acknowledgements");
    for (index, data) in acked {
        assert!(
            entries.iter().any(|(_, i, d)| i == index && d == data),
            "{what}: acknowledged {data:?} at index {index} is missing"
        );
    }
}

/// Waits until a majority has `index` committed and applied for every group, and the leader
/// reports it committed.
async fn committed_on_majority(nodes: &[TestNode], last: &HashMap<GroupId, u64>) {
    for (&group, &index) in last {
        let nodes_ = nodes;
        wait_until(DEADLINE, &format!("group {group} index {index} on a majority"), || async move {
            let applied = nodes_
                .iter()
                .filter(|n| n.raft(group).metrics().borrow_watched().last_applied.is_some_and(|l| l.index() >= index))
                .count();
            applied as u64 > NODES / 2
        })
        .await;
    }
}

/// Every node's applied batches for `group`, which all must be prefixes of the longest.
fn applied(nodes: &[TestNode], group: GroupId) -> Vec<Vec<AppliedEntry>> {
    nodes
        .iter()
        .map(|n| {
            n.state_machines[&group].applied().into_iter().map(|(id, d)| (id.leader_id.term, id.index(), d.0)).collect()
        })
        .collect()
}

/// One applied batch: term, index, bytes.
type AppliedEntry = (u64, u64, Bytes);
/// Per group, per node, the applied batches.
type Applied = HashMap<GroupId, Vec<Vec<AppliedEntry>>>;

/// Every node's applied batches for every group are prefixes of the longest one.
fn assert_consistent(nodes: &[TestNode]) -> Applied {
    let all: HashMap<_, _> = (1..=GROUPS).map(|g| (g, applied(nodes, g))).collect();
    for (g, per_node) in &all {
        let longest = per_node.iter().max_by_key(|v| v.len()).unwrap();
        for v in per_node {
            assert_eq!(&longest[..v.len()], &v[..], "group {g}: nodes disagree");
        }
    }
    all
}

/// What each node had applied before is still a prefix of what it has now.
fn assert_unchanged(before: &Applied, now: &Applied) {
    for (g, per_node) in before {
        let reference = now[g].iter().max_by_key(|v| v.len()).unwrap();
        for old in per_node {
            assert_eq!(&reference[..old.len()], &old[..], "group {g}: a committed entry changed");
        }
    }
}

/// Waits until every node in `nodes` has applied `last` of every group.
async fn caught_up(nodes: &[TestNode], last: &HashMap<GroupId, u64>) {
    for (&group, &index) in last {
        for n in nodes {
            n.raft(group)
                .wait(Some(DEADLINE))
                .applied_index_at_least(Some(index), format!("group {group} on node {}", n.node.id()))
                .await
                .unwrap();
        }
    }
}

async fn elect_replicate_and_survive_dropped_connections(mode: Mode) {
    init_tracing();
    let nodes = start_cluster(mode).await;

    for group in 1..=GROUPS {
        assert_one_leader(&nodes, group).await;
    }

    let first = write_all(&nodes, "before", 5).await;
    committed_on_majority(&nodes, &last_indexes(&first)).await;
    let before = assert_consistent(&nodes);
    for (g, per_node) in &before {
        let longest = per_node.iter().max_by_key(|v| v.len()).unwrap();
        assert_acked_present(longest, &first[g], 5, &format!("group {g} before"));
    }

    // Kill every node's sockets at once; the transports must reconnect by themselves.
    let established: Vec<_> = nodes.iter().map(|n| n.node.transport().stats().connections_established).collect();
    for n in &nodes {
        // One connection to each peer at least; a redial after missed pings on a loaded
        // machine may have left more sockets behind (dead ones included).
        let killed = n.connector.kill_all();
        assert!(killed >= (NODES - 1) as usize, "{killed} sockets killed");
    }
    for (n, before) in nodes.iter().zip(established) {
        let t = n.node.transport().clone();
        wait_until(DEADLINE, "reconnection", move || {
            let t = t.clone();
            async move {
                t.stats().connections_established >= before + NODES - 1
                    && (1..=NODES).filter(|p| t.is_connected(*p)).count() as u64 == NODES - 1
            }
        })
        .await;
    }

    let second = write_all(&nodes, "after", 5).await;
    committed_on_majority(&nodes, &last_indexes(&second)).await;
    caught_up(&nodes, &last_indexes(&second)).await;

    let now = assert_consistent(&nodes);
    assert_unchanged(&before, &now);
    for group in 1..=GROUPS {
        assert_one_leader(&nodes, group).await;
        for v in &now[&group] {
            assert_acked_present(v, &first[&group], 5, &format!("group {group} before"));
            assert_acked_present(v, &second[&group], 5, &format!("group {group} after reconnection"));
        }
    }

    for n in &nodes {
        n.node.shutdown().await;
    }
}

#[tokio::test]
async fn group_timers_elect_replicate_and_survive_dropped_connections() {
    elect_replicate_and_survive_dropped_connections(Mode::GroupTimers).await;
}

#[tokio::test]
async fn node_elections_elect_replicate_and_survive_dropped_connections() {
    elect_replicate_and_survive_dropped_connections(Mode::NodeElections).await;
}

/// Cutting node 1 off (its transport stops) moves every group it led to the two others, which
/// keep committing; nothing committed before is lost.
async fn survive_an_isolated_node(mode: Mode) {
    init_tracing();
    let nodes = start_cluster(mode).await;
    for group in 1..=GROUPS {
        settled_leader(&nodes, group).await;
    }
    let first = write_all(&nodes, "before", 3).await;
    committed_on_majority(&nodes, &last_indexes(&first)).await;
    let isolated = nodes[0].node.id();
    let led: Vec<_> = (1..=GROUPS).filter(|g| nodes[0].raft(*g).is_leader()).collect();
    assert!(!led.is_empty(), "node {isolated} should lead some groups (leaders are spread)");

    nodes[0].node.transport().shutdown();
    let rest = &nodes[1..];
    let before = assert_consistent(rest);
    for group in 1..=GROUPS {
        for n in rest {
            n.raft(group)
                .wait(Some(DEADLINE))
                .metrics(
                    |m| m.current_leader.is_some_and(|l| l != isolated),
                    format!("group {group}: a leader other than node {isolated} on node {}", n.node.id()),
                )
                .await
                .unwrap();
        }
    }
    let second = write_all(rest, "after", 3).await;
    caught_up(rest, &last_indexes(&second)).await;
    let now = assert_consistent(rest);
    assert_unchanged(&before, &now);
    for group in 1..=GROUPS {
        for v in &now[&group] {
            assert_acked_present(v, &first[&group], 3, &format!("group {group} before"));
            assert_acked_present(v, &second[&group], 3, &format!("group {group} after isolation"));
        }
    }
    for n in &nodes {
        n.node.shutdown().await;
    }
}

#[tokio::test]
async fn group_timers_survive_an_isolated_node() {
    survive_an_isolated_node(Mode::GroupTimers).await;
}

#[tokio::test]
async fn node_elections_survive_an_isolated_node() {
    survive_an_isolated_node(Mode::NodeElections).await;
}

/// S1: a leader that restarts comes back as a follower and leads again only through an election,
/// at a higher term, so it never appends under the term it held before the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_does_not_resume_its_term() {
    init_tracing();
    let node: ReplicaNode<MemStateMachine> =
        ReplicaNode::new(TransportConfig::new("cluster-test", 1), KillableConnector::new());
    let config = election_timings().raft_config("cluster-test").unwrap();
    let log = MemLog::default();
    let raft = node.start_group(1, config.clone(), log.clone(), MemStateMachine::default()).await.unwrap();
    raft.initialize(BTreeMap::from([(1, BasicNode::new("127.0.0.1:1"))])).await.unwrap();
    raft.wait(Some(DEADLINE)).state(ServerState::Leader, "single voter leads").await.unwrap();
    let before = raft.client_write(BatchData(Bytes::from_static(b"before"))).await.unwrap().log_id;
    raft.shutdown().await.unwrap();
    node.registry().remove(1);

    // Same log (the "disk"), fresh state machine: the process restarted.
    let raft = node.start_group(1, config, log, MemStateMachine::default()).await.unwrap();
    let first = raft.client_write(BatchData(Bytes::from_static(b"after"))).await;
    let after = match first {
        Ok(resp) => resp.log_id,
        Err(e) => {
            assert!(e.forward_to_leader().is_some(), "unexpected refusal: {e}");
            raft.trigger().elect(false).await.unwrap();
            raft.wait(Some(DEADLINE)).state(ServerState::Leader, "re-elected").await.unwrap();
            raft.client_write(BatchData(Bytes::from_static(b"after"))).await.unwrap().log_id
        }
    };
    assert!(
        after.leader_id.term > before.leader_id.term,
        "restarted leader wrote {after} in the term of {before} without an election"
    );
    node.shutdown().await;
}

/// S3: starting a group that already runs is refused, and the running instance keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_a_running_group_again_is_refused() {
    init_tracing();
    let node: ReplicaNode<MemStateMachine> =
        ReplicaNode::new(TransportConfig::new("cluster-test", 1), KillableConnector::new());
    let config = election_timings().raft_config("cluster-test").unwrap();
    let log = MemLog::default();
    let raft = node.start_group(7, config.clone(), log.clone(), MemStateMachine::default()).await.unwrap();
    let second = node.start_group(7, config.clone(), log.clone(), MemStateMachine::default()).await;
    assert!(
        matches!(second, Err(fjord_replication::node::StartGroupError::AlreadyRunning(_))),
        "second start of group 7 was not refused: {:?}",
        second.as_ref().map(|_| ())
    );
    raft.initialize(BTreeMap::from([(1, BasicNode::new("127.0.0.1:1"))])).await.unwrap();
    raft.wait(Some(DEADLINE)).state(ServerState::Leader, "single voter leads").await.unwrap();
    let registered = node.group(7).unwrap();
    registered.client_write(BatchData(Bytes::from_static(b"x"))).await.unwrap();
    assert_eq!(node.registry().len(), 1);
    // Once stopped and removed, the group may start again.
    raft.shutdown().await.unwrap();
    node.registry().remove(7);
    node.start_group(7, config, log, MemStateMachine::default()).await.unwrap();
    node.shutdown().await;
}

/// The leader of each group and its term, once all nodes agree.
async fn leaders_and_terms(nodes: &[TestNode]) -> HashMap<GroupId, (NodeId, u64)> {
    let mut out = HashMap::new();
    for group in 1..=GROUPS {
        let leader = settled_leader(nodes, group).await;
        let term = nodes[(leader - 1) as usize].raft(group).metrics().borrow_watched().current_term;
        out.insert(group, (leader, term));
    }
    out
}

/// L1: with the shipped timings an idle leader's 225 ms lease has lapsed between its 1 s
/// heartbeats; `node::write` still commits every write on the first call, through the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_timings_idle_leaders_accept_writes_first_time() {
    init_tracing();
    let nodes = start_cluster(Mode::Shipped).await;
    let lease = Duration::from_millis(225);
    for (group, (leader, _)) in leaders_and_terms(&nodes).await {
        let raft = nodes[(leader - 1) as usize].raft(group);
        // Idle long enough that the leader's quorum lease has expired.
        raft.wait(Some(DEADLINE))
            .metrics(
                |m| m.last_quorum_acked.as_ref().is_some_and(|t| (**t).elapsed() > lease),
                format!("group {group}: leader lease lapsed"),
            )
            .await
            .unwrap();
        let data = BatchData(Bytes::from(format!("idle:{group}")));
        let resp = tokio::time::timeout(Duration::from_secs(3), fjord_replication::node::write(&raft, data, DEADLINE))
            .await
            .unwrap_or_else(|_| panic!("group {group}: write did not finish in 3 s"))
            .unwrap_or_else(|e| panic!("group {group}: idle leader refused the write: {e}"));
        assert!(resp.log_id.index() > 0);
    }
    for n in &nodes {
        n.node.shutdown().await;
    }
}

/// D1: node 3 loses its link to node 1 one way (it cannot dial node 1, so its pings go unanswered
/// and it judges node 1 silent), while node 1 still reaches nodes 2 and 3. Node 3's pre-votes for
/// node 1's groups are refused by node 2, which still hears node 1: node 1 keeps leading them in
/// the same term and keeps committing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_cut_does_not_move_the_peers_groups() {
    init_tracing();
    let nodes = start_cluster(Mode::Shipped).await;
    let before = leaders_and_terms(&nodes).await;
    assert!(before.values().any(|(l, _)| *l == 1), "node 1 leads no group: {before:?}");
    let node1_addr = {
        let m = nodes[0].raft(1).metrics().borrow_watched().clone();
        m.membership_config.membership().get_node(&1).unwrap().addr.clone()
    };
    nodes[2].connector.cut(&node1_addr);
    let cut_at = tokio::time::Instant::now();
    // Observe node 3 judging node 1 silent for several group heartbeats and election timeouts.
    // Node 3 may not have heard node 1 at all yet when the link was cut (connections are made
    // on first use): then it has heard nothing since either.
    let t3 = nodes[2].node.transport().clone();
    wait_until(DEADLINE, "node 3 to find node 1 silent for 3 s", || {
        let t3 = t3.clone();
        async move {
            let silent = |t: tokio::time::Instant| t.elapsed() > Duration::from_secs(3);
            silent(cut_at) && t3.last_heard(1).is_none_or(silent)
        }
    })
    .await;
    for (group, (leader, term)) in &before {
        if *leader != 1 {
            continue;
        }
        let m = nodes[0].raft(*group).metrics().borrow_watched().clone();
        assert_eq!(
            (m.state, m.current_term),
            (ServerState::Leader, *term),
            "group {group}: node 1 lost leadership to a node that only lost its link to node 1"
        );
        let data = BatchData(Bytes::from(format!("cut:{group}")));
        fjord_replication::node::write(&nodes[0].raft(*group), data, DEADLINE).await.unwrap();
    }
    for n in &nodes {
        n.node.shutdown().await;
    }
}

/// L2: the followers' disks take 400 ms to make an append durable, longer than the 75 ms openraft gives
/// AppendEntries under the node driver. Measured without the router's payload timeout: under a
/// steady stream of writes every AppendEntries times out and is sent again, and the first write
/// took ~1.5 s (progress only comes from retries that find their entries already flushed); with
/// it, about one fsync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_under_load_when_followers_fsync_slowly() {
    init_tracing();
    let logs = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let nodes = start_cluster_with(Mode::Shipped, |id| {
        let log = MemLog::default();
        logs.lock().unwrap().entry(id).or_insert_with(Vec::new).push(log.clone());
        log
    })
    .await;
    const FSYNC: Duration = Duration::from_millis(400);
    let group = 1;
    let (leader, _) = leaders_and_terms(&nodes).await[&group];
    // Group g's log is the g-th one each node made. Only the followers' disks are slow, so the
    // leader keeps appending new entries while they flush.
    for (id, node_logs) in logs.lock().unwrap().iter() {
        if *id != leader {
            node_logs[(group - 1) as usize].set_append_delay(FSYNC);
        }
    }
    let raft = nodes[(leader - 1) as usize].raft(group);
    let started = tokio::time::Instant::now();
    let first = {
        let raft = raft.clone();
        tokio::spawn(async move {
            fjord_replication::node::write(&raft, BatchData(Bytes::from_static(b"first")), DEADLINE).await
        })
    };
    // Keep new entries coming until the first write commits, for at most 8 s.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut i = 0u64;
    while !first.is_finished() {
        assert!(tokio::time::Instant::now() < give_up, "first write not committed after 8 s of steady writes");
        let raft = raft.clone();
        tokio::spawn(async move { raft.client_write(BatchData(Bytes::from(format!("load:{i}")))).await });
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    let resp = first.await.unwrap().unwrap_or_else(|e| panic!("first write refused: {e}"));
    assert!(resp.log_id.index() > 0);
    // One fsync on the followers (in parallel with the leader's own append) and a round trip:
    // not three, as when every AppendEntries times out after 75 ms and is sent again.
    assert!(took < FSYNC * 2, "first write took {took:?} with a {FSYNC:?} fsync ({i} writes meanwhile)");
    for n in &nodes {
        n.node.shutdown().await;
    }
}
