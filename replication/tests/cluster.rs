//! Three in-process nodes over real loopback TCP hosting ten Raft groups: every group elects one
//! leader, writes commit on a majority, and writes keep committing after the sockets are killed,
//! without any committed entry changing.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{init_tracing, wait_until, KillableConnector};
use fjord_replication::heartbeat::HeartbeatDriver;
use fjord_replication::mem::{MemLog, MemStateMachine};
use fjord_replication::node::{GroupTimings, ReplicaNode};
use fjord_replication::transport::{TcpListener, TransportConfig};
use fjord_replication::{BatchData, GroupId, NodeId, Raft};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::{BasicNode, ServerState};

const GROUPS: u64 = 10;
const NODES: u64 = 3;
const DEADLINE: Duration = Duration::from_secs(20);

struct TestNode {
    node: ReplicaNode<MemStateMachine>,
    state_machines: HashMap<GroupId, MemStateMachine>,
    connector: Arc<KillableConnector>,
    _heartbeats: HeartbeatDriver,
}

impl TestNode {
    fn raft(&self, group: GroupId) -> Raft<MemStateMachine> {
        self.node.group(group).expect("group started")
    }
}

fn timings() -> GroupTimings {
    GroupTimings {
        heartbeat_interval: Duration::from_millis(50),
        election_timeout_min: Duration::from_millis(300),
        election_timeout_max: Duration::from_millis(600),
    }
}

async fn start_cluster() -> Vec<TestNode> {
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=NODES {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.insert(id, BasicNode::new(l.local_addr().unwrap().to_string()));
        listeners.push(l);
    }
    let config = timings().config("cluster-test").unwrap();
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
            node.start_group(group, config.clone(), MemLog::default(), sm.clone()).await.unwrap();
            state_machines.insert(group, sm);
        }
        let heartbeats = node.start_heartbeats(timings().heartbeat_interval);
        nodes.push(TestNode { node, state_machines, connector, _heartbeats: heartbeats });
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

/// Exactly one node is Leader of `group` at the highest term any node has seen.
fn assert_one_leader(nodes: &[TestNode], group: GroupId) {
    let metrics: Vec<_> = nodes.iter().map(|n| n.raft(group).metrics().borrow_watched().clone()).collect();
    let top_term = metrics.iter().map(|m| m.current_term).max().unwrap();
    let leaders: Vec<_> =
        metrics.iter().filter(|m| m.state == ServerState::Leader && m.current_term == top_term).map(|m| m.id).collect();
    assert_eq!(leaders.len(), 1, "group {group} at term {top_term}: leaders {leaders:?}");
}

/// Writes `count` batches to every group through its leader; returns the last log index of each.
async fn write_all(nodes: &[TestNode], round: &str, count: usize) -> HashMap<GroupId, u64> {
    let mut last = HashMap::new();
    for group in 1..=GROUPS {
        let leader = settled_leader(nodes, group).await;
        let raft = nodes[(leader - 1) as usize].raft(group);
        for i in 0..count {
            let data = BatchData(Bytes::from(format!("{round}:{group}:{i}")));
            let resp = tokio::time::timeout(DEADLINE, raft.client_write(data)).await.expect("write timed out").unwrap();
            last.insert(group, resp.log_id.index());
        }
    }
    last
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
fn applied(nodes: &[TestNode], group: GroupId) -> Vec<Vec<(u64, u64, Bytes)>> {
    nodes
        .iter()
        .map(|n| {
            n.state_machines[&group].applied().into_iter().map(|(id, d)| (id.leader_id.term, id.index(), d.0)).collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_elect_replicate_and_survive_dropped_connections() {
    init_tracing();
    let nodes = start_cluster().await;

    for group in 1..=GROUPS {
        settled_leader(&nodes, group).await;
        assert_one_leader(&nodes, group);
    }

    let first = write_all(&nodes, "before", 5).await;
    committed_on_majority(&nodes, &first).await;
    let before: HashMap<_, _> = (1..=GROUPS).map(|g| (g, applied(&nodes, g))).collect();
    for (g, per_node) in &before {
        let longest = per_node.iter().max_by_key(|v| v.len()).unwrap();
        assert!(longest.len() >= 5, "group {g} applied {}", longest.len());
        for v in per_node {
            assert_eq!(&longest[..v.len()], &v[..], "group {g}: nodes disagree");
        }
    }

    // Kill every node's sockets at once; the transports must reconnect by themselves.
    let established: Vec<_> = nodes.iter().map(|n| n.node.transport().stats().connections_established).collect();
    for n in &nodes {
        assert_eq!(n.connector.kill_all(), (NODES - 1) as usize);
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
    committed_on_majority(&nodes, &second).await;
    // Then every node catches up on every group.
    for (&group, &index) in &second {
        for n in &nodes {
            n.raft(group)
                .wait(Some(DEADLINE))
                .applied_index_at_least(Some(index), format!("group {group} on node {}", n.node.id()))
                .await
                .unwrap();
        }
    }

    for group in 1..=GROUPS {
        assert_one_leader(&nodes, group);
        let now = applied(&nodes, group);
        let reference = &now[0];
        for v in &now {
            assert_eq!(v, reference, "group {group}: nodes disagree after catching up");
        }
        // No committed entry changed: what every node had applied is a prefix of the final log.
        for old in &before[&group] {
            assert_eq!(&reference[..old.len()], &old[..], "group {group}: a committed entry changed");
        }
        let after = reference.iter().filter(|(_, _, d)| d.starts_with(b"after:")).count();
        assert_eq!(after, 5, "group {group}: writes after reconnection");
    }

    for n in &nodes {
        n.node.shutdown().await;
    }
}
