//! Three in-process nodes over real loopback TCP hosting partition groups whose Raft log is the
//! partition's segment log: writes commit, every replica's log ends up byte-identical (same
//! batches at the same offsets, same epochs) with its high watermark at the commit, and after the
//! leader is cut off a new one keeps the acknowledged writes where they were and commits more.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{init_tracing, wait_until, KillableConnector};
use fjord_replication::heartbeat::HeartbeatDriver;
use fjord_replication::node::{self, GroupTimings, ReplicaNode};
use fjord_replication::partition::produce::{self, ProduceError, Proposer};
use fjord_replication::partition::{self, PartitionStateMachine};
use fjord_replication::transport::{TcpListener, TransportConfig};
use fjord_replication::{BatchData, GroupId, NodeId, Raft};
use fjord_storage::batch::{self, ASSIGNED_HEAD};
use fjord_storage::{LogConfig, PartitionLog};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::{BasicNode, ServerState};

const GROUPS: u64 = 4;
const NODES: u64 = 3;
const DEADLINE: Duration = Duration::from_secs(20);

struct TestNode {
    node: Arc<ReplicaNode<PartitionStateMachine>>,
    logs: HashMap<GroupId, Arc<PartitionLog>>,
    connector: Arc<KillableConnector>,
    _heartbeats: HeartbeatDriver,
}

impl TestNode {
    fn raft(&self, group: GroupId) -> Raft<PartitionStateMachine> {
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

/// The nodes, and each one's cluster address.
async fn start_cluster(data: &std::path::Path) -> (Vec<TestNode>, BTreeMap<NodeId, BasicNode>) {
    start_cluster_with(data, config()).await
}

fn config() -> Arc<openraft::Config> {
    partition::raft_config(&timings(), "partition-test").unwrap()
}

async fn start_cluster_with(
    data: &std::path::Path,
    config: Arc<openraft::Config>,
) -> (Vec<TestNode>, BTreeMap<NodeId, BasicNode>) {
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=NODES {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.insert(id, BasicNode::new(l.local_addr().unwrap().to_string()));
        listeners.push(l);
    }
    let mut nodes = Vec::new();
    for (id, listener) in (1..=NODES).zip(listeners) {
        nodes.push(start_node(data, id, listener, &members, config.clone()).await);
    }
    for group in 1..=GROUPS {
        nodes[(group % NODES) as usize].raft(group).initialize(members.clone()).await.unwrap();
    }
    (nodes, members)
}

/// Starts node `id` with its partition logs under `data` (opened from what is on disk).
async fn start_node(
    data: &std::path::Path,
    id: NodeId,
    listener: TcpListener,
    members: &BTreeMap<NodeId, BasicNode>,
    config: Arc<openraft::Config>,
) -> TestNode {
    start_node_recovering(data, id, listener, members, config, None).await
}

/// `start_node`, with the replica of `recovering` marked as having lost its log (what the
/// applier does for a replica that starts empty in a group that has had a leader).
async fn start_node_recovering(
    data: &std::path::Path,
    id: NodeId,
    listener: TcpListener,
    members: &BTreeMap<NodeId, BasicNode>,
    config: Arc<openraft::Config>,
    recovering: Option<GroupId>,
) -> TestNode {
    let connector = KillableConnector::new();
    let node = Arc::new(ReplicaNode::new(TransportConfig::new("partition-test", id), connector.clone()));
    node.serve(listener);
    for (peer, n) in members {
        node.add_peer(*peer, &n.addr);
    }
    let mut logs = HashMap::new();
    for group in 1..=GROUPS {
        // Small segments, so entries cross segment rolls.
        let cfg = LogConfig { segment_bytes: 600, ..LogConfig::default() };
        let dir = data.join(format!("node-{id}/t-{group}"));
        if recovering == Some(group) {
            node.recovery().begin(group, &dir).unwrap();
        }
        let (store, sm) = partition::open(&dir, cfg).unwrap();
        logs.insert(group, store.log().clone());
        node.start_group(group, config.clone(), store, sm).await.unwrap();
        if recovering == Some(group) {
            let voters: Vec<NodeId> = members.keys().copied().collect();
            tokio::spawn(fjord_replication::recovery::learn_floor(node.clone(), group, move || voters.clone()));
        }
    }
    let heartbeats = node.start_heartbeats(timings().heartbeat_interval);
    TestNode { node, logs, connector, _heartbeats: heartbeats }
}

/// Waits until every node names the same leader of `group` and that node knows it leads;
/// returns it. (Polled as a whole: right after a node stops, others may still name it.)
async fn settled_leader(nodes: &[TestNode], group: GroupId) -> NodeId {
    let mut found = None;
    wait_until(DEADLINE, &format!("group {group}: one leader all nodes agree on"), || {
        let named: Vec<_> = nodes.iter().map(|n| n.raft(group).metrics().borrow_watched().current_leader).collect();
        found = named[0].filter(|l| {
            named.iter().all(|n| *n == Some(*l))
                && nodes
                    .iter()
                    .any(|n| n.node.id() == *l && n.raft(group).metrics().borrow_watched().state == ServerState::Leader)
        });
        let done = found.is_some();
        async move { done }
    })
    .await;
    found.unwrap()
}

/// An acknowledged write: Raft index, the offsets the acknowledgement gave, the batch sent.
#[derive(Debug, Clone)]
struct Ack {
    index: u64,
    base_offset: i64,
    last_offset: i64,
    batch: Vec<u8>,
}

type Acked = HashMap<GroupId, Vec<Ack>>;

/// Writes `count` batches of two records to every group through its leader with `node::write`.
async fn write_all(nodes: &[TestNode], round: &str, count: usize) -> Acked {
    let mut acked = Acked::new();
    let give_up = tokio::time::Instant::now() + DEADLINE;
    for group in 1..=GROUPS {
        for i in 0..count {
            let v = format!("{round}:{group}:{i}");
            let batch = batch::build_batch(0, 1_000 + i as i64, &[(None, Some(v.as_bytes())), (None, Some(b"x"))]);
            loop {
                assert!(tokio::time::Instant::now() < give_up, "group {group}: write {i} not acknowledged");
                let leader = settled_leader(nodes, group).await;
                let raft = nodes.iter().find(|n| n.node.id() == leader).unwrap().raft(group);
                match node::write(&raft, BatchData(Bytes::from(batch.clone())), DEADLINE).await {
                    Ok(resp) => {
                        let a = resp.data;
                        assert_eq!(a.last_offset, a.base_offset + 1, "two records");
                        let index = resp.log_id.index();
                        acked.entry(group).or_default().push(Ack {
                            index,
                            base_offset: a.base_offset,
                            last_offset: a.last_offset,
                            batch: batch.clone(),
                        });
                        break;
                    }
                    Err(e) if e.forward_to_leader().is_some() => continue,
                    Err(e) => panic!("group {group}: write failed: {e}"),
                }
            }
        }
    }
    acked
}

/// Waits until every node has applied `index` of `group`.
async fn caught_up(nodes: &[TestNode], group: GroupId, index: u64) {
    for n in nodes {
        n.raft(group)
            .wait(Some(DEADLINE))
            .applied_index_at_least(Some(index), format!("group {group} on node {}", n.node.id()))
            .await
            .unwrap();
    }
}

/// One replica's Raft log as stored: per entry (index, term, base offset, next offset, bytes).
type Stored = Vec<(u64, i32, i64, i64, Bytes)>;

fn stored(log: &PartitionLog) -> Stored {
    let (first, last) = log.raft_index_range().expect("entries");
    log.raft_entries(first, last + 1, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| (e.span.index, e.term, e.span.base_offset, e.span.next_offset, e.data))
        .collect()
}

/// Every replica of every group holds the same log, and its HW is the end of its last applied
/// entry (all are applied here, so the log end).
fn assert_identical(nodes: &[TestNode]) -> HashMap<GroupId, Stored> {
    let mut out = HashMap::new();
    for group in 1..=GROUPS {
        let reference = stored(&nodes[0].logs[&group]);
        assert_eq!(reference[0].0, 0, "the log starts with the membership at index 0");
        for n in nodes {
            let log = &n.logs[&group];
            assert_eq!(stored(log), reference, "group {group}: node {} differs", n.node.id());
            let applied = n.raft(group).metrics().borrow_watched().last_applied.unwrap().index();
            let end = log.raft_entry_span(applied).unwrap().next_offset;
            assert_eq!(log.high_watermark(), end, "group {group}: node {} HW is the commit", n.node.id());
            assert_eq!(log.log_end_offset(), end);
            // Epochs follow terms: the cache says where each term started.
            for (_, term, base, _, _) in &reference {
                assert!(log.epoch_for_offset(*base).is_some_and(|e| e >= *term));
            }
        }
        out.insert(group, reference);
    }
    out
}

/// Each acknowledged write is in `log` at the index and offsets it was acknowledged with, with
/// the bytes the producer sent (only offset and epoch patched).
fn assert_acked_at_their_offsets(log: &PartitionLog, acks: &[Ack], what: &str) {
    for a in acks {
        let e = log.raft_entries(a.index, a.index + 1, 0).unwrap();
        let e = e.first().unwrap_or_else(|| panic!("{what}: entry {} missing", a.index));
        assert_eq!((e.span.base_offset, e.span.next_offset - 1), (a.base_offset, a.last_offset), "{what}");
        assert_eq!(&e.data[ASSIGNED_HEAD..], &a.batch[ASSIGNED_HEAD..], "{what}: entry {} bytes", a.index);
        let h = batch::validate(&e.data).unwrap();
        assert_eq!((h.base_offset, i64::from(h.partition_leader_epoch)), (a.base_offset, i64::from(e.term)));
        // A consumer's read at the offset finds the same batch.
        let read = log.read(a.base_offset, 1, i64::MAX).unwrap();
        assert_eq!(&read.records[..], &e.data[..], "{what}: read at {}", a.base_offset);
    }
}

#[tokio::test]
async fn partition_logs_replicate_identically_and_survive_a_lost_leader() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, _) = start_cluster(tmp.path()).await;
    let first = write_all(&nodes, "before", 6).await;
    for (g, acks) in &first {
        caught_up(&nodes, *g, acks.last().unwrap().index).await;
    }
    let before = assert_identical(&nodes);
    for n in &nodes {
        for (g, acks) in &first {
            assert_acked_at_their_offsets(&n.logs[g], acks, &format!("group {g} node {}", n.node.id()));
        }
    }
    assert!(nodes[0].logs[&1].segment_count() > 1, "entries crossed segment rolls");

    // Cut group 1's leader off: its transport stops, so all its connections die.
    let lost = settled_leader(&nodes, 1).await;
    let lost_at = nodes.iter().position(|n| n.node.id() == lost).unwrap();
    nodes[lost_at].node.transport().shutdown();
    let rest: Vec<&TestNode> = nodes.iter().filter(|n| n.node.id() != lost).collect();
    for group in 1..=GROUPS {
        for n in &rest {
            n.raft(group)
                .wait(Some(DEADLINE))
                .metrics(
                    |m| m.current_leader.is_some_and(|l| l != lost) && m.current_term > 0,
                    format!("group {group}: a leader other than {lost}"),
                )
                .await
                .unwrap();
        }
    }
    let survivors = &rest;
    let second = write_rest(survivors, "after", 4).await;
    for (g, acks) in &second {
        for n in survivors.iter() {
            n.raft(*g)
                .wait(Some(DEADLINE))
                .applied_index_at_least(Some(acks.last().unwrap().index), format!("group {g}"))
                .await
                .unwrap();
        }
    }
    for n in survivors.iter() {
        for g in 1..=GROUPS {
            let what = format!("group {g} node {} after the leader was lost", n.node.id());
            assert_acked_at_their_offsets(&n.logs[&g], &first[&g], &what);
            assert_acked_at_their_offsets(&n.logs[&g], &second[&g], &what);
            let now = stored(&n.logs[&g]);
            assert_eq!(&now[..before[&g].len()], &before[&g][..], "{what}: the committed prefix changed");
        }
    }
    // The survivors agree with each other entry for entry.
    for g in 1..=GROUPS {
        assert_eq!(stored(&survivors[0].logs[&g]), stored(&survivors[1].logs[&g]), "group {g}");
        let new_leader = survivors[0].raft(g).metrics().borrow_watched().current_term;
        let last = stored(&survivors[0].logs[&g]).last().unwrap().1;
        assert!(i64::from(last) <= new_leader as i64);
    }
    for n in &nodes {
        n.node.shutdown().await;
    }
}

/// `write_all` for the nodes still connected.
async fn write_rest(nodes: &[&TestNode], round: &str, count: usize) -> Acked {
    let mut acked = Acked::new();
    let give_up = tokio::time::Instant::now() + DEADLINE;
    for group in 1..=GROUPS {
        for i in 0..count {
            let v = format!("{round}:{group}:{i}");
            let batch = batch::build_batch(0, 2_000 + i as i64, &[(None, Some(v.as_bytes())), (None, Some(b"y"))]);
            loop {
                assert!(tokio::time::Instant::now() < give_up, "group {group}: write {i} not acknowledged");
                let leader = wait_leader(nodes, group).await;
                let raft = nodes.iter().find(|n| n.node.id() == leader).unwrap().raft(group);
                match node::write(&raft, BatchData(Bytes::from(batch.clone())), DEADLINE).await {
                    Ok(resp) => {
                        acked.entry(group).or_default().push(Ack {
                            index: resp.log_id.index(),
                            base_offset: resp.data.base_offset,
                            last_offset: resp.data.last_offset,
                            batch: batch.clone(),
                        });
                        break;
                    }
                    Err(e) if e.forward_to_leader().is_some() => continue,
                    Err(e) => panic!("group {group}: write failed: {e}"),
                }
            }
        }
    }
    acked
}

/// The leader of `group` among `nodes`, once one of them knows it leads.
async fn wait_leader(nodes: &[&TestNode], group: GroupId) -> NodeId {
    let mut found = None;
    wait_until(DEADLINE, &format!("a leader of group {group}"), || {
        found = nodes
            .iter()
            .find(|n| n.raft(group).metrics().borrow_watched().state == ServerState::Leader)
            .map(|n| n.node.id());
        let ok = found.is_some();
        async move { ok }
    })
    .await;
    found.unwrap()
}

/// A node that stops and starts again from its data dir finds its log, vote and high
/// watermark there, catches up on what was committed without it, and ends identical.
#[tokio::test]
async fn a_restarted_node_rejoins_from_its_partition_logs() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, mut members) = start_cluster(tmp.path()).await;
    let first = write_all(&nodes, "before", 4).await;
    for (g, acks) in &first {
        caught_up(&nodes, *g, acks.last().unwrap().index).await;
    }
    assert_identical(&nodes);
    let restarted = nodes.pop().unwrap();
    let id = restarted.node.id();
    let hws: HashMap<GroupId, i64> = restarted.logs.iter().map(|(g, l)| (*g, l.high_watermark())).collect();
    restarted.node.shutdown().await;
    drop(restarted);

    let second = write_rest(&nodes.iter().collect::<Vec<_>>(), "while-down", 3).await;
    // Back on another port: the peers learn the new address, as after a restart elsewhere.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    members.insert(id, BasicNode::new(addr.clone()));
    let back = start_node(tmp.path(), id, listener, &members, config()).await;
    for (g, hw) in &hws {
        assert_eq!(back.logs[g].high_watermark(), *hw, "group {g}: the HW comes back from raft-state");
    }
    for n in &nodes {
        n.node.add_peer(id, &addr);
    }
    nodes.push(back);
    for (g, acks) in &second {
        caught_up(&nodes, *g, acks.last().unwrap().index).await;
    }
    assert_identical(&nodes);
    for n in &nodes {
        for g in 1..=GROUPS {
            let what = format!("group {g} node {} after node {id} restarted", n.node.id());
            assert_acked_at_their_offsets(&n.logs[&g], &first[&g], &what);
            assert_acked_at_their_offsets(&n.logs[&g], &second[&g], &what);
        }
    }
    for n in &nodes {
        n.node.shutdown().await;
    }
}

/// A leader cut off from both peers appends an entry it cannot commit; the others elect a new
/// leader and commit other entries at those indexes. Once the links heal, the old leader
/// truncates its uncommitted suffix (batches and sidecar rows) and ends byte-identical.
#[tokio::test]
async fn a_cut_off_leader_truncates_its_uncommitted_suffix_when_it_returns() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, members) = start_cluster(tmp.path()).await;
    let first = write_all(&nodes, "before", 3).await;
    for (g, acks) in &first {
        caught_up(&nodes, *g, acks.last().unwrap().index).await;
    }
    let group = 1;
    let old = settled_leader(&nodes, group).await;
    let old_at = nodes.iter().position(|n| n.node.id() == old).unwrap();
    for (i, n) in nodes.iter().enumerate() {
        if i == old_at {
            for (peer, addr) in &members {
                if *peer != old {
                    n.connector.cut(&addr.addr);
                }
            }
        } else {
            n.connector.cut(&members[&old].addr);
        }
    }
    // The old leader still believes it leads: it appends, but no quorum will ever ack.
    let old_log = nodes[old_at].logs[&group].clone();
    let last_before = old_log.raft_index_range().unwrap().1;
    let ghost = batch::build_batch(0, 9, &[(None, Some(b"ghost".as_slice()))]);
    let raft = nodes[old_at].raft(group);
    let pending = tokio::spawn(async move { raft.client_write(BatchData(Bytes::from(ghost))).await });
    wait_until(DEADLINE, "the cut-off leader appended", || {
        let grew = old_log.raft_index_range().is_some_and(|(_, l)| l > last_before);
        async move { grew }
    })
    .await;
    let ghost_index = last_before + 1;
    let ghost_term = old_log.raft_entries(ghost_index, ghost_index + 1, 0).unwrap()[0].term;

    let rest: Vec<&TestNode> = nodes.iter().filter(|n| n.node.id() != old).collect();
    let second = write_rest(&rest, "meanwhile", 3).await;
    for n in &nodes {
        n.connector.heal();
    }
    for (g, acks) in &second {
        caught_up(&nodes, *g, acks.last().unwrap().index).await;
    }
    assert_identical(&nodes);
    let e = old_log.raft_entries(ghost_index, ghost_index + 1, 0).unwrap();
    assert!(e[0].term > ghost_term, "index {ghost_index} now holds the new leader's entry");
    for n in &nodes {
        for (_, _, _, _, data) in stored(&n.logs[&group]) {
            assert!(!data.windows(5).any(|w| w == b"ghost"), "node {}: the uncommitted entry survived", n.node.id());
        }
        for g in 1..=GROUPS {
            let what = format!("group {g} node {}", n.node.id());
            assert_acked_at_their_offsets(&n.logs[&g], &first[&g], &what);
            assert_acked_at_their_offsets(&n.logs[&g], &second[&g], &what);
        }
    }
    // The write the old leader took was never acknowledged.
    let answer = tokio::time::timeout(DEADLINE, pending).await.expect("the pending write ends").unwrap();
    assert!(answer.is_err(), "an uncommitted write was acknowledged: {answer:?}");
    for n in &nodes {
        n.node.shutdown().await;
    }
}

/// A node whose partition directory was wiped is filled again by a snapshot once the leader has
/// purged the entries it would need: the snapshot's prefix batches and then the entries after it
/// make its log read the same as the leader's, at the same offsets.
#[tokio::test]
async fn a_wiped_replica_is_filled_by_a_snapshot_after_the_leader_purged() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    // A wiped voter comes back with an empty log: openraft must be told to accept that. (Its
    // votes are held back until it has caught up, `a_wiped_replica_elects_no_one_until_it_has_
    // caught_up`; the snapshot path is what this test is about.)
    let config = Arc::new(openraft::Config { allow_log_reversion: Some(true), ..(*config()).clone() });
    let (mut nodes, mut members) = start_cluster_with(tmp.path(), config.clone()).await;
    let first = write_all(&nodes, "before", 8).await;
    for (g, acks) in &first {
        caught_up(&nodes, *g, acks.last().unwrap().index).await;
    }
    let group = 1;
    let leader_id = settled_leader(&nodes, group).await;
    // Wipe a follower: stop it, delete the group's directory.
    let wiped_at = nodes.iter().position(|n| n.node.id() != leader_id).unwrap();
    let wiped = nodes.remove(wiped_at);
    let id = wiped.node.id();
    wiped.node.shutdown().await;
    drop(wiped);
    std::fs::remove_dir_all(tmp.path().join(format!("node-{id}/t-{group}"))).unwrap();

    // The leader snapshots and purges up to its last applied entry.
    let leader = nodes.iter().find(|n| n.node.id() == leader_id).unwrap();
    let raft = leader.raft(group);
    let applied = raft.metrics().borrow_watched().last_applied.unwrap();
    raft.trigger().snapshot().await.unwrap();
    raft.wait(Some(DEADLINE))
        .metrics(|m| m.snapshot.is_some_and(|s| s.index() >= applied.index()), "snapshot built")
        .await
        .unwrap();
    raft.trigger().purge_log(applied.index()).await.unwrap();
    raft.wait(Some(DEADLINE))
        .metrics(|m| m.purged.is_some_and(|p| p.index() >= applied.index()), "log purged")
        .await
        .unwrap();
    let leader_log = leader.logs[&group].clone();
    assert!(leader_log.log_start_offset() > 0, "whole segments went with the purge");

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    members.insert(id, BasicNode::new(addr.clone()));
    let back = start_node(tmp.path(), id, listener, &members, config).await;
    for n in &nodes {
        n.node.add_peer(id, &addr);
    }
    nodes.push(back);
    let second = write_all(&nodes, "after", 2).await;
    for (g, acks) in &second {
        caught_up(&nodes, *g, acks.last().unwrap().index).await;
    }
    let refilled = &nodes.last().unwrap().logs[&group];
    assert_eq!(refilled.log_start_offset(), leader_log.log_start_offset());
    assert_eq!(refilled.log_end_offset(), leader_log.log_end_offset());
    assert_eq!(refilled.high_watermark(), leader_log.high_watermark());
    let mut offset = leader_log.log_start_offset();
    while offset < leader_log.log_end_offset() {
        let theirs = leader_log.read(offset, 1, i64::MAX).unwrap().records;
        let ours = refilled.read(offset, 1, i64::MAX).unwrap().records;
        assert_eq!(ours, theirs, "batch at {offset}");
        offset = batch::validate(&theirs).unwrap().last_offset() + 1;
    }
    // Raft entries after the snapshot are held as entries again, identical to the leader's.
    let (first_held, last) = refilled.raft_index_range().unwrap();
    assert!(first_held > applied.index() && last == leader_log.raft_index_range().unwrap().1);
    let ours = refilled.raft_entries(first_held, last + 1, usize::MAX).unwrap();
    let theirs = leader_log.raft_entries(first_held, last + 1, usize::MAX).unwrap();
    assert_eq!(
        ours.iter().map(|e| (e.span.base_offset, &e.data)).collect::<Vec<_>>(),
        theirs.iter().map(|e| (e.span.base_offset, &e.data)).collect::<Vec<_>>()
    );
    for n in &nodes {
        n.node.shutdown().await;
    }
}

/// Raft's amnesia hazard: an entry committed by the leader and one follower, whose follower then
/// loses its disk. With the leader down, the third replica (cut off when the entry was written,
/// so it lacks it) campaigns; an empty voter would elect it and the acknowledged entry would be
/// gone. A replica marked as recovering refuses, the group stays leaderless until the old leader
/// returns, and the entry survives on every replica; the wiped one votes again once it has
/// caught up.
#[tokio::test]
async fn a_wiped_replica_elects_no_one_until_it_has_caught_up() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let config = Arc::new(openraft::Config { allow_log_reversion: Some(true), ..(*config()).clone() });
    let (mut nodes, mut members) = start_cluster_with(tmp.path(), config.clone()).await;
    let first = write_all(&nodes, "before", 2).await;
    for (g, acks) in &first {
        caught_up(&nodes, *g, acks.last().unwrap().index).await;
    }
    let group = 1;
    let leader_id = settled_leader(&nodes, group).await;
    let followers: Vec<NodeId> = nodes.iter().map(|n| n.node.id()).filter(|id| *id != leader_id).collect();
    let (behind_id, wiped_id) = (followers[0], followers[1]);
    let at = |nodes: &[TestNode], id: NodeId| nodes.iter().position(|n| n.node.id() == id).unwrap();
    // Cut the replica that will fall behind off from both others.
    for n in &nodes {
        if n.node.id() == behind_id {
            for (peer, addr) in &members {
                if *peer != behind_id {
                    n.connector.cut(&addr.addr);
                }
            }
        } else {
            n.connector.cut(&members[&behind_id].addr);
        }
    }
    // The entry only the leader and the soon-wiped replica hold.
    let batch = batch::build_batch(0, 7, &[(None, Some(b"acked-then-forgotten".as_slice()))]);
    let raft = nodes[at(&nodes, leader_id)].raft(group);
    let resp = node::write(&raft, BatchData(Bytes::from(batch.clone())), DEADLINE).await.expect("committed by two");
    let kept = Ack {
        index: resp.log_id.index(),
        base_offset: resp.data.base_offset,
        last_offset: resp.data.last_offset,
        batch: batch.clone(),
    };
    assert!(nodes[at(&nodes, behind_id)].logs[&group].raft_entry_span(kept.index).is_none());

    // The leader stops; the other holder stops and loses its replica of the group.
    let leader = nodes.remove(at(&nodes, leader_id));
    leader.node.shutdown().await;
    drop(leader);
    let wiped = nodes.remove(at(&nodes, wiped_id));
    wiped.node.shutdown().await;
    drop(wiped);
    std::fs::remove_dir_all(tmp.path().join(format!("node-{wiped_id}/t-{group}"))).unwrap();
    nodes[0].connector.heal();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    members.insert(wiped_id, BasicNode::new(addr.clone()));
    let back = start_node_recovering(tmp.path(), wiped_id, listener, &members, config.clone(), Some(group)).await;
    nodes[0].node.add_peer(wiped_id, &addr);
    nodes.push(back);
    assert!(nodes[1].node.recovery().is_recovering(group));
    // Asked (as a leader asks before making a joining replica a voter), each tells whether it
    // is recovering.
    assert!(
        recovering_answer(&nodes[0], group, wiped_id).await,
        "the wiped replica answered that it is not recovering"
    );
    assert!(
        !recovering_answer(&nodes[1], group, behind_id).await,
        "the replica that kept its log answered that it is recovering"
    );
    // The replica that lacks the entry campaigns, and the wiped one turns it down.
    wait_until(DEADLINE, "the wiped replica refused the behind one's campaigns", || {
        let refused = nodes[1].node.recovery().votes_refused();
        async move { refused >= 3 }
    })
    .await;
    for n in &nodes {
        let m = n.raft(group).metrics().borrow_watched().clone();
        assert_ne!(m.state, ServerState::Leader, "node {} leads without the acknowledged entry", n.node.id());
    }
    assert!(nodes[1].node.recovery().is_recovering(group));

    // The old leader returns: it holds the entry, wins, and the wiped replica recovers from it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    members.insert(leader_id, BasicNode::new(addr.clone()));
    let back = start_node(tmp.path(), leader_id, listener, &members, config).await;
    for n in &nodes {
        n.node.add_peer(leader_id, &addr);
        n.node.add_peer(wiped_id, &members[&wiped_id].addr);
    }
    nodes.push(back);
    caught_up(&nodes, group, kept.index).await;
    wait_until(DEADLINE, "the wiped replica recovered", || {
        let done = !nodes[1].node.recovery().is_recovering(group);
        async move { done }
    })
    .await;
    assert!(
        !recovering_answer(&nodes[0], group, wiped_id).await,
        "the recovered replica still answers that it is recovering"
    );
    for n in &nodes {
        let what = format!("node {} after the wipe", n.node.id());
        assert_acked_at_their_offsets(&n.logs[&group], &first[&group], &what);
        assert_acked_at_their_offsets(&n.logs[&group], std::slice::from_ref(&kept), &what);
    }
    for n in &nodes {
        n.node.shutdown().await;
    }
}

/// What `peer` answers `from` when asked whether its replica of `group` is recovering (asked
/// again while there is no answer: the connection may not be up yet).
async fn recovering_answer(from: &TestNode, group: GroupId, peer: NodeId) -> bool {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(a) = from.node.peers_recovering(group, &[peer], DEADLINE).await.get(&peer) {
            return *a;
        }
        assert!(tokio::time::Instant::now() < give_up, "node {peer} never answered whether it is recovering");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Cuts every link between node `id` and the others, both ways.
fn isolate(nodes: &[TestNode], members: &BTreeMap<NodeId, BasicNode>, id: NodeId) {
    for n in nodes {
        if n.node.id() == id {
            for (peer, addr) in members {
                if *peer != id {
                    n.connector.cut(&addr.addr);
                }
            }
        } else {
            n.connector.cut(&members[&id].addr);
        }
    }
}

/// A deposed leader must not fill a wiped replica. A group's leader is cut off; the other two
/// elect a new leader and commit an entry; then one of them loses its disk, the other stops, and
/// the links between the old leader and the wiped replica come back. The old leader still
/// believes it leads: had the wiped replica taken its log, the old leader would acknowledge
/// writes at indexes where the new leader had committed, and lose them once the new leader
/// returned. The recovering replica refuses the old leader's entries, first because it has not
/// heard from every other replica of the group, then because the group has seen a newer term;
/// the old leader acknowledges nothing, and once the new leader is back the entry it committed
/// is on every replica.
#[tokio::test]
async fn a_deposed_leader_cannot_fill_a_wiped_replica() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let config = Arc::new(openraft::Config { allow_log_reversion: Some(true), ..(*config()).clone() });
    let (mut nodes, mut members) = start_cluster_with(tmp.path(), config.clone()).await;
    let first = write_all(&nodes, "before", 2).await;
    for (g, acks) in &first {
        caught_up(&nodes, *g, acks.last().unwrap().index).await;
    }
    let group = 1;
    let at = |nodes: &[TestNode], id: NodeId| nodes.iter().position(|n| n.node.id() == id).unwrap();
    let old_id = settled_leader(&nodes, group).await;
    let old_term = nodes[at(&nodes, old_id)].raft(group).metrics().borrow_watched().current_term;
    isolate(&nodes, &members, old_id);
    let rest: Vec<&TestNode> = nodes.iter().filter(|n| n.node.id() != old_id).collect();
    let second = write_rest(&rest, "meanwhile", 1).await;
    let new_id = wait_leader(&rest, group).await;
    let wiped_id = rest.iter().map(|n| n.node.id()).find(|id| *id != new_id).unwrap();
    // Committed by the new leader with the replica about to be wiped: the old one is cut off.
    let kept = second[&group][0].clone();
    assert!(nodes[at(&nodes, old_id)].logs[&group].raft_entry_span(kept.index).is_none());
    let m = nodes[at(&nodes, old_id)].raft(group).metrics().borrow_watched().clone();
    assert_eq!((m.state, m.current_term), (ServerState::Leader, old_term), "the cut-off leader still leads");

    for id in [new_id, wiped_id] {
        let n = nodes.remove(at(&nodes, id));
        n.node.shutdown().await;
    }
    std::fs::remove_dir_all(tmp.path().join(format!("node-{wiped_id}/t-{group}"))).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    members.insert(wiped_id, BasicNode::new(addr.clone()));
    let back = start_node_recovering(tmp.path(), wiped_id, listener, &members, config.clone(), Some(group)).await;
    nodes[0].connector.heal();
    nodes[0].node.add_peer(wiped_id, &addr);
    nodes.push(back);
    let (old, wiped) = (at(&nodes, old_id), at(&nodes, wiped_id));

    // The old leader takes a write; it must never be acknowledged.
    let raft = nodes[old].raft(group);
    let stale = batch::build_batch(0, 9, &[(None, Some(b"deposed-leaders-write".as_slice()))]);
    let pending = tokio::spawn(async move {
        // openraft refuses writes while no quorum has answered the leader lately (its lease);
        // they would be taken again the moment the wiped replica answered it. So the write is
        // retried for as long as the old leader believes it leads.
        loop {
            match raft.client_write(BatchData(Bytes::from(stale.clone()))).await {
                Err(e)
                    if e.forward_to_leader().is_some()
                        && raft.metrics().borrow_watched().state == ServerState::Leader =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                answer => return answer,
            }
        }
    });
    let recovery = nodes[wiped].node.recovery().clone();
    wait_until(DEADLINE, "the wiped replica refused the old leader's entries", || {
        let refused = recovery.appends_refused();
        async move { refused >= 3 }
    })
    .await;
    assert_eq!(recovery.floor(group), None, "the new leader's node has not answered yet");
    assert!(!pending.is_finished(), "the deposed leader acknowledged a write: {:?}", pending.await);
    assert!(nodes[wiped].logs[&group].raft_index_range().is_none(), "the wiped replica took entries");

    // The new leader's node returns, still cut off from the old leader: the wiped replica learns
    // the newer term, and goes on refusing the old leader for it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    members.insert(new_id, BasicNode::new(addr.clone()));
    let back = start_node(tmp.path(), new_id, listener, &members, config).await;
    back.connector.cut(&members[&old_id].addr);
    nodes[old].connector.cut(&addr);
    nodes[wiped].node.add_peer(new_id, &addr);
    nodes.push(back);
    wait_until(DEADLINE, "the wiped replica learnt the group's newest term", || {
        let floor = recovery.floor(group);
        async move { floor.is_some() }
    })
    .await;
    assert!(recovery.floor(group).unwrap() > old_term, "the floor is the new leader's term or newer");
    let refused = recovery.appends_refused();
    wait_until(DEADLINE, "the wiped replica refused the old leader for its term", || {
        let now = recovery.appends_refused();
        async move { now >= refused + 2 }
    })
    .await;
    assert!(!pending.is_finished(), "the deposed leader acknowledged a write: {:?}", pending.await);
    assert!(recovery.is_recovering(group));

    // Every link heals: the new leader's node wins, and fills the wiped replica.
    for n in &nodes {
        n.connector.heal();
        n.node.add_peer(new_id, &members[&new_id].addr);
    }
    let answer = tokio::time::timeout(DEADLINE, pending).await.expect("the deposed leader's write ends").unwrap();
    assert!(answer.is_err(), "the deposed leader acknowledged a write: {answer:?}");
    caught_up(&nodes, group, kept.index).await;
    wait_until(DEADLINE, "the wiped replica recovered", || {
        let done = !recovery.is_recovering(group);
        async move { done }
    })
    .await;
    for n in &nodes {
        let what = format!("node {} after the wipe", n.node.id());
        assert_acked_at_their_offsets(&n.logs[&group], &first[&group], &what);
        assert_acked_at_their_offsets(&n.logs[&group], std::slice::from_ref(&kept), &what);
    }
    for n in &nodes {
        n.node.shutdown().await;
    }
}

/// The batches of `log` from `from` to its end, each with its offset.
fn batches_from(log: &PartitionLog, from: i64) -> Vec<(i64, Bytes)> {
    let mut out = Vec::new();
    let mut offset = from;
    while offset < log.log_end_offset() {
        let read = log.read(offset, 1, i64::MAX).unwrap().records;
        let h = batch::validate(&read).unwrap();
        out.push((h.base_offset, read.clone()));
        offset = h.last_offset() + 1;
    }
    out
}

/// Retention on a replicated partition: every replica lets its expired segments go through a
/// snapshot at their last entry and a purge of the Raft log, keeping the newest batches where
/// they were. A follower that was down meanwhile gets the leader's snapshot (no batches: all
/// before it expired) and restarts its log at the leader's log start, then holds exactly the
/// leader's retained batches.
#[tokio::test]
async fn retention_purges_every_replica_and_a_lagging_one_restarts_at_the_leaders_log_start() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let (mut nodes, mut members) = start_cluster(tmp.path()).await;
    let first = write_all(&nodes, "before", 8).await;
    for (g, acks) in &first {
        caught_up(&nodes, *g, acks.last().unwrap().index).await;
    }
    let group = 1;
    let leader_id = settled_leader(&nodes, group).await;
    let lag_at = nodes.iter().position(|n| n.node.id() != leader_id).unwrap();
    let lagging = nodes.remove(lag_at);
    let lag_id = lagging.node.id();
    let lag_end = lagging.logs[&group].log_end_offset();
    lagging.node.shutdown().await;
    drop(lagging);

    let rest: Vec<&TestNode> = nodes.iter().collect();
    let second = write_rest(&rest, "while-down", 40).await;
    caught_up(&nodes, group, second[&group].last().unwrap().index).await;
    // Keep about 2 KB of 600-byte segments on every live replica.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    for n in &nodes {
        let log = &n.logs[&group];
        // By size only: the test batches carry timestamps from 1970.
        log.set_config(LogConfig { retention_bytes: 2_000, retention_ms: -1, ..log.config() });
        let purged = partition::retention::apply(&n.raft(group), log, now, DEADLINE).await.unwrap();
        assert!(purged.is_some(), "node {}: retention purged nothing", n.node.id());
    }
    let leader = nodes.iter().find(|n| n.node.id() == leader_id).unwrap();
    let leader_log = leader.logs[&group].clone();
    wait_until(DEADLINE, "the leader's expired segments gone", || {
        let moved = leader_log.log_start_offset() > lag_end;
        async move { moved }
    })
    .await;
    let start = leader_log.log_start_offset();
    assert!(leader_log.size_bytes() < 4_000, "about 2 KB kept, not {} bytes", leader_log.size_bytes());
    // The retained batches are the newest acknowledged ones, at their offsets.
    let kept: Vec<&Ack> = second[&group].iter().filter(|a| a.base_offset >= start).collect();
    assert!(!kept.is_empty());
    assert_acked_at_their_offsets(&leader_log, &kept.into_iter().cloned().collect::<Vec<_>>(), "retained");
    assert!(leader_log.read(0, 1, i64::MAX).is_err(), "offset 0 is gone");
    // The other follower applied retention to its own log the same way.
    let other = nodes.iter().find(|n| n.node.id() != leader_id).unwrap();
    let other_log = &other.logs[&group];
    assert!(other_log.log_start_offset() > lag_end);
    let common = other_log.log_start_offset().max(start);
    assert_eq!(batches_from(other_log, common), batches_from(&leader_log, common));

    // The lagging follower comes back: the entries it needs are purged, so it installs the
    // leader's snapshot and continues from there.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    members.insert(lag_id, BasicNode::new(addr.clone()));
    let back = start_node(tmp.path(), lag_id, listener, &members, config()).await;
    for n in &nodes {
        n.node.add_peer(lag_id, &addr);
    }
    nodes.push(back);
    let third = write_all(&nodes, "after", 2).await;
    caught_up(&nodes, group, third[&group].last().unwrap().index).await;
    let leader_log = &nodes.iter().find(|n| n.node.id() == leader_id).unwrap().logs[&group];
    let refilled = &nodes.last().unwrap().logs[&group];
    assert_eq!(refilled.log_start_offset(), leader_log.log_start_offset(), "it starts where the leader does");
    assert_eq!(refilled.high_watermark(), leader_log.high_watermark());
    assert_eq!(
        batches_from(refilled, refilled.log_start_offset()),
        batches_from(leader_log, leader_log.log_start_offset())
    );
    assert!(refilled.read(lag_end - 1, 1, i64::MAX).is_err(), "its own old batches went with the install");
    for n in &nodes {
        n.node.shutdown().await;
    }
}

/// The leader's write path (`partition::produce::Proposer`): a write is answered once committed,
/// at the offsets it is stored at on every replica; an idempotent producer's retry gets the
/// first copy's offsets and is not stored twice; a sequence gap and a broker write decided in
/// another term are refused; a follower sends producers to the leader.
#[tokio::test]
async fn the_proposer_writes_a_retried_idempotent_batch_once_and_only_on_the_leader() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (nodes, _) = start_cluster(dir.path()).await;
    let group = 1;
    let leader_id = settled_leader(&nodes, group).await;
    let leader = nodes.iter().find(|n| n.node.id() == leader_id).unwrap();
    let follower = nodes.iter().find(|n| n.node.id() != leader_id).unwrap();
    let raft = leader.raft(group);
    wait_until(DEADLINE, "the leader applied an entry of its term", || {
        let ready = produce::leader_epoch(&raft).is_some();
        async move { ready }
    })
    .await;
    let epoch = produce::leader_epoch(&raft).unwrap();
    let log = &leader.logs[&group];
    let proposer = Proposer::default();
    let as_producer = |seq: i32, value: &str| {
        let p = batch::Producer { id: 7, epoch: 0, base_sequence: seq, transactional: false };
        Bytes::from(batch::build_batch_as(0, 1_000, &[(None, Some(value.as_bytes())), (None, Some(b"x"))], Some(p)))
    };

    let first = proposer.produce(&raft, log, as_producer(0, "a"), DEADLINE).await.unwrap();
    assert_eq!(first.last_offset, first.base_offset + 1);
    assert!(log.high_watermark() > first.last_offset, "answered once committed");
    let entries = stored(log).len();
    let again = proposer.produce(&raft, log, as_producer(0, "a"), DEADLINE).await.unwrap();
    assert_eq!((again.base_offset, again.last_offset), (first.base_offset, first.last_offset));
    assert_eq!(stored(log).len(), entries, "the retry was not stored again");
    match proposer.produce(&raft, log, as_producer(9, "gap"), DEADLINE).await {
        Err(ProduceError::Log(fjord_storage::LogError::OutOfOrderSequence { .. })) => {}
        other => panic!("a sequence gap: {other:?}"),
    }
    let next = proposer.produce(&raft, log, as_producer(2, "b"), DEADLINE).await.unwrap();
    assert!(next.base_offset > first.last_offset);

    // The broker's own writes go in the order queued, and only at the epoch they were decided.
    let own = |v: &str| batch::build_batch(0, 1_000, &[(Some(b"k".as_slice()), Some(v.as_bytes()))]);
    let stale = proposer.enqueue(&raft, log, own("stale"), epoch - 1, DEADLINE);
    let current = proposer.enqueue(&raft, log, own("current"), epoch, DEADLINE);
    assert!(matches!(stale.await.unwrap(), Err(ProduceError::NotLeader)));
    let written = current.await.unwrap().unwrap();
    assert!(written.base_offset > next.last_offset);

    // A follower refuses, and holds what the leader acknowledged at the same offsets.
    let f_raft = follower.raft(group);
    let refused = Proposer::default().produce(&f_raft, &follower.logs[&group], as_producer(4, "c"), DEADLINE).await;
    assert!(matches!(refused, Err(ProduceError::NotLeader)), "{refused:?}");
    let applied = raft.metrics().borrow_watched().last_applied.unwrap().index();
    caught_up(&nodes, group, applied).await;
    assert_eq!(stored(&follower.logs[&group]), stored(log));
}
