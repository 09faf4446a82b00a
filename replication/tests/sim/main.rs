//! Deterministic simulation of Fjord's Raft groups: the production transport, group registry,
//! heartbeat / election drivers, partition log store and controller state machine run on
//! turmoil's simulated network and clock and on a simulated disk (`fjord_storage::disk::sim`:
//! a crash keeps what was synced and a seeded, possibly torn, part of the rest), under fault
//! schedules drawn from a seed (crashes, partitions, held and slowed links, connection resets,
//! duplicated and reordered frames, clock steps), while a client writes uniquely numbered
//! records. A checker then asserts Raft's safety.
//!
//! `FJORD_SIM_SEED=s` replays one seed; `FJORD_SIM_SEEDS=n` runs n seeds (from
//! `FJORD_SIM_FIRST_SEED`, default 1000); `FJORD_SIM_NODES` picks 3 or 5 nodes and
//! `FJORD_SIM_BLIPS=1` restart storms for those runs (filter with `-- --exact three_nodes`), and
//! `FJORD_SIM_MOVES=1` reassignments that keep changing each group's replicas (needs 4+ nodes).
//! A run of one seed prints its trace digest (`FJORD_SIM_DIGESTS=1`: of every seed); two runs of
//! a seed print the same one.

mod net;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fjord_replication::controller::{
    AnyConfig, BrokerRegistration, ClusterMetadata, ControllerMachine, MetadataRecord, NewTopic,
    Outcome as ControllerOutcome, TopicDefaults, CONTROLLER_GROUP,
};
use fjord_replication::controller::{Liveness, Reassignment};
use fjord_replication::election::{ElectionDriver, ElectionTimings};
use fjord_replication::heartbeat::HeartbeatDriver;
use fjord_replication::machine::NodeMachine;
use fjord_replication::node::{GroupTimings, ReplicaNode};
use fjord_replication::partition::{self, PartitionLogStore, PartitionStateMachine};
use fjord_replication::reassign::{next_step, CatchUpMarks, Step, View};
use fjord_replication::server::{self, NodeConfig};
use fjord_replication::transport::TransportConfig;
use fjord_replication::{BatchData, GroupId, NodeId, Raft, TypeConfig};
use fjord_storage::disk::sim as disk;
// splitmix64: the schedule's only source of randomness, so a seed names one schedule.
use fjord_storage::disk::sim::Rng;
use fjord_storage::LogConfig;
use net::{Links, Mangle, SimConnector, SimListener};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::type_config::alias::EntryOf;
use openraft::{BasicNode, ChangeMembers, EntryPayload, RaftMetrics, ServerState};

const PORT: u16 = 7000;
/// Where each node's controller quorum member listens (its own transport, as in production's
/// separate group on the cluster port; here a second node runtime).
const CONTROLLER_PORT: u16 = 7001;
/// Faults are injected during this much simulated time, then everything heals.
const FAULT_WINDOW_MS: u64 = 6_000;
/// Simulated time allowed for the healed cluster to converge.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(30);
/// Normal one-way latency of every link.
const BASE_LATENCY: Duration = Duration::from_millis(5);
/// Simulated time per step: every host runs this long between network deliveries.
const TICK: Duration = Duration::from_millis(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How elections run: openraft's per-group timers, or the node-level election driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    GroupTimers,
    NodeElections,
}

/// A deliberately broken variant, to show the checker catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    /// The store keeps nothing across a crash (no fsync at all): log, vote and commit are lost.
    WipeOnCrash,
    /// The vote is not persisted: a restarted node keeps its log and commit but may vote again
    /// in a term it already voted in.
    ForgetVoteOnCrash,
    /// Appends reported durable before they are synced (a missing fsync): a crash then loses
    /// entries a node had acknowledged to its leader.
    ReportBeforeSync,
    /// acks=all answered once the leader's own log holds the write, before a majority has it
    /// (the client is told of the entry the leader appended, without waiting for the commit).
    AckBeforeMajority,
}

#[derive(Clone, Debug)]
struct Params {
    seed: u64,
    nodes: u64,
    groups: u64,
    mode: Mode,
    bug: Option<Bug>,
    /// Crashes come often and last milliseconds (a node restarting in the middle of an election).
    blips: bool,
    /// How long each append takes to be durable; a crash loses what was appended but not yet
    /// synced (`disk::crash`), as a page cache does.
    sync: Duration,
    /// Reassignments: each group starts on three of the nodes, and a mover keeps changing its
    /// replicas (`fjord_replication::reassign`, the production decisions) through the faults.
    moves: bool,
    /// Each node starts as the broker starts it (`fjord_replication::server::start`): the
    /// controller quorum, broker registration and the applier, which starts, wipes and deletes
    /// partition replicas from the metadata. The client creates the topic written to (and,
    /// with 4+ nodes, reassigns its partitions; it creates and deletes other topics), and one
    /// crash in two schedules loses the node's whole disk.
    production: bool,
}

impl Params {
    fn new(seed: u64, nodes: u64) -> Self {
        // Both election modes of production get every other seed.
        let mode = if seed.is_multiple_of(2) { Mode::GroupTimers } else { Mode::NodeElections };
        // Per sync, by seed: a fast disk (0.2-3 ms) in two schedules of three, a slow or loaded
        // one (10-40 ms, longer than a round trip between nodes) in the third, so a crash finds
        // both short and long windows of appended but unsynced entries.
        let r = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33;
        let sync = Duration::from_micros(if r % 3 == 2 { 10_000 + r % 30_000 } else { 200 + r % 2_800 });
        Self { seed, nodes, groups: 3, mode, bug: None, blips: false, sync, moves: false, production: false }
    }

    fn replay_command(&self) -> String {
        let bug = if self.bug.is_some() { " (planted bug: run it from its planted_* test)" } else { "" };
        // The build the seed ran in (scripts/sim.sh runs an optimised one).
        let release = if cfg!(debug_assertions) { "" } else { " --release" };
        format!(
            "FJORD_SIM_SEED={} FJORD_SIM_NODES={} FJORD_SIM_BLIPS={} FJORD_SIM_MOVES={} FJORD_SIM_PRODUCTION={} cargo test{release} -p fjord-replication --test sim -- --exact three_nodes --nocapture{bug}",
            self.seed, self.nodes, self.blips as u8, self.moves as u8, self.production as u8
        )
    }
}

/// One scheduled change to the simulated world.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    /// The node's process dies: a power cut (its disk keeps what was synced and a seeded part
    /// of the rest) in two crashes of three, a killed process (the page cache survives, to be
    /// lost at a later power cut unless synced after the restart) in the third.
    Crash(NodeId),
    /// The power goes (every node's at once, in half the schedules).
    PowerCut(NodeId),
    /// The node's process dies and its disk is lost: it restarts on an empty data dir.
    DiskLoss(NodeId),
    Restart(NodeId),
    Partition(Vec<NodeId>, Vec<NodeId>),
    /// Heals a partition; the connections across it are reset, as TCP would after the heal.
    Repair(Vec<NodeId>, Vec<NodeId>),
    Hold(NodeId, NodeId),
    Release(NodeId, NodeId),
    /// One-way latency of a link up to this many ms (messages on other links overtake).
    Slow(NodeId, NodeId, u64),
    Unslow(NodeId, NodeId),
    /// Resets the connections of one link: a message lost on TCP ends the connection.
    Reset(NodeId, NodeId),
    /// The frames one node sends another are duplicated, or reordered, until `Unmangle`.
    Mangle(NodeId, NodeId, Mangle),
    Unmangle(NodeId, NodeId),
    /// The wall clock steps by this many ms (every node's: the seam is per process).
    ClockJump(i64),
}

#[derive(Clone, Debug)]
struct Schedule {
    events: Vec<(u64, Action)>,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (at, a) in &self.events {
            writeln!(f, "  {at:>6} ms  {a:?}")?;
        }
        Ok(())
    }
}

impl Schedule {
    /// Network faults one after another (turmoil does not combine hold and partition on a link);
    /// crashes on their own tracks, at most a minority of nodes down at once, but for one power
    /// loss of every node in half of the schedules.
    fn generate(p: &Params) -> Self {
        let mut rng = Rng(p.seed);
        let n = p.nodes;
        let nodes: Vec<NodeId> = (1..=n).collect();
        let mut events = Vec::new();
        let pick = |rng: &mut Rng| rng.range(1, n + 1);
        let mut t = rng.range(200, 1_000);
        while t < FAULT_WINDOW_MS {
            let d = rng.range(200, 2_500);
            match rng.range(0, 7) {
                0 => {
                    let a = pick(&mut rng);
                    let rest: Vec<_> = nodes.iter().copied().filter(|x| *x != a).collect();
                    events.push((t, Action::Partition(vec![a], rest.clone())));
                    events.push((t + d, Action::Repair(vec![a], rest)));
                }
                1 => {
                    // A minority / majority split of a shuffled node list.
                    let mut shuffled = nodes.clone();
                    for i in (1..shuffled.len()).rev() {
                        shuffled.swap(i, rng.range(0, i as u64 + 1) as usize);
                    }
                    let k = rng.range(1, n.div_ceil(2)) as usize;
                    let (minority, majority) = shuffled.split_at(k);
                    let (mut a, mut b) = (minority.to_vec(), majority.to_vec());
                    a.sort();
                    b.sort();
                    events.push((t, Action::Partition(a.clone(), b.clone())));
                    events.push((t + d, Action::Repair(a, b)));
                }
                2 => {
                    let (a, b) = two(&mut rng, n);
                    events.push((t, Action::Hold(a, b)));
                    events.push((t + d, Action::Release(a, b)));
                }
                3 => {
                    let (a, b) = two(&mut rng, n);
                    events.push((t, Action::Slow(a, b, rng.range(50, 600))));
                    events.push((t + d, Action::Unslow(a, b)));
                }
                4 => {
                    let (a, b) = two(&mut rng, n);
                    events.push((t, Action::Reset(a, b)));
                }
                k => {
                    // One direction of a link, either way round.
                    let (a, b) = two(&mut rng, n);
                    let (a, b) = if rng.range(0, 2) == 0 { (a, b) } else { (b, a) };
                    let how = if k == 5 { Mangle::Duplicate } else { Mangle::Reorder };
                    events.push((t, Action::Mangle(a, b, how)));
                    events.push((t + d, Action::Unmangle(a, b)));
                }
            }
            t += d + rng.range(0, 800);
        }
        let tracks = (n - 1) / 2;
        for track in 0..tracks {
            let mine: Vec<NodeId> = nodes.iter().copied().filter(|x| (x - 1) % tracks == track).collect();
            let mut t = rng.range(300, 2_000);
            while t < FAULT_WINDOW_MS {
                let node = mine[rng.range(0, mine.len() as u64) as usize];
                let down = if p.blips { rng.range(1, 40) } else { rng.range(50, 2_500) };
                events.push((t, Action::Crash(node)));
                events.push((t + down, Action::Restart(node)));
                t += down + if p.blips { rng.range(20, 400) } else { rng.range(100, 2_500) };
            }
        }
        // One or two steps of the wall clock, forwards or back by up to two hours (drawn after
        // the faults above, so those stay what they were for each seed).
        for _ in 0..rng.range(1, 3) {
            let by = rng.range(60_000, 7_200_000) as i64;
            let by = if rng.range(0, 2) == 0 { by } else { -by };
            events.push((rng.range(200, FAULT_WINDOW_MS), Action::ClockJump(by)));
        }
        // A power loss in every other schedule: every node at the same instant (a correlated
        // failure no majority outlives), all back within half a second. Only synced entries
        // survive it on any node, so a commit counted on an unsynced append is lost here.
        // (Drawn last, so the faults above stay what they were for each seed.)
        if rng.range(0, 2) == 0 {
            let t = rng.range(1_000, FAULT_WINDOW_MS - 600);
            let down = rng.range(50, 500);
            for node in &nodes {
                events.push((t, Action::PowerCut(*node)));
                events.push((t + down, Action::Restart(*node)));
            }
        }
        // With production start-up, one crash in every other schedule loses the disk (once
        // the controller quorum has formed, `Shared::formed`). One per schedule: a replica that
        // lost its disk recovers from the others, which holds while fewer than a majority of a
        // group lost theirs at once (as Raft needs).
        if p.production && rng.range(0, 2) == 0 {
            let crashes: Vec<usize> =
                events.iter().enumerate().filter(|(_, (_, a))| matches!(a, Action::Crash(_))).map(|(i, _)| i).collect();
            if !crashes.is_empty() {
                let i = crashes[rng.range(0, crashes.len() as u64) as usize];
                if let Action::Crash(n) = events[i].1 {
                    events[i].1 = Action::DiskLoss(n);
                }
            }
        }
        events.sort_by_key(|(at, _)| *at);
        Self { events }
    }
}

fn two(rng: &mut Rng, n: u64) -> (NodeId, NodeId) {
    let a = rng.range(1, n + 1);
    let b = (a - 1 + rng.range(1, n)) % n + 1;
    (a.min(b), a.max(b))
}

fn host(id: NodeId) -> String {
    format!("n{id}")
}

/// How an entry is compared across replicas: its term and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    term: u64,
    what: String,
}

fn seen(e: &EntryOf<TypeConfig>) -> Seen {
    let what = match &e.payload {
        EntryPayload::Blank => "blank".to_string(),
        EntryPayload::Normal(d) => value_of(&d.0),
        EntryPayload::Membership(m) => format!("membership {m}"),
    };
    Seen { term: e.log_id.leader_id.term, what }
}

/// The write a client proposes: one record whose value is `what`, as a producer sends it.
fn batch_of(what: &str) -> Bytes {
    Bytes::from(fjord_storage::batch::build_batch(0, 1, &[(None, Some(what.as_bytes()))]))
}

/// The value of the one record of a stored write (or, for anything else, its bytes).
fn value_of(data: &Bytes) -> String {
    match fjord_storage::records::decode_batch(data, 1 << 20) {
        Ok(b) if b.records.len() == 1 && !b.header.is_control() => {
            b.records[0].value.as_ref().map_or_else(|| "null".into(), |v| String::from_utf8_lossy(v).into_owned())
        }
        _ => format!("{data:?}"),
    }
}

/// Segments small enough that a run rolls them (a crash then also finds new segments and
/// sidecars unsynced).
fn log_config() -> LogConfig {
    LogConfig { segment_bytes: 64 << 10, segment_index_bytes: 8 << 10, ..LogConfig::default() }
}

/// Everything observed during a run, for the checker.
#[derive(Default)]
struct History {
    /// Nodes seen leading each (group, term), from their own metrics and from committed votes.
    leaders: BTreeMap<(GroupId, u64), BTreeSet<NodeId>>,
    /// The entry first seen committed at each index of each group.
    committed: BTreeMap<GroupId, BTreeMap<u64, Seen>>,
    /// Per (node, group): the next log index to check against `committed`.
    checked: BTreeMap<(NodeId, GroupId), u64>,
    /// Acknowledged writes: group, index, entry.
    acked: Vec<(GroupId, u64, Seen)>,
    attempts: u64,
    /// Sectors written but not yet synced when their node's power went, and lost to it.
    lost_unsynced: usize,
    /// Crashes that killed the process and left the page cache.
    kills: u64,
    /// Crashes that lost the node's disk.
    disks_lost: u64,
    violations: Vec<String>,
    /// What each node reported, in order, to compare two runs of one seed.
    trace: Vec<String>,
    /// Metadata records the controller client had acknowledged: producer id blocks handed out
    /// (first, count) and topics created.
    id_blocks: Vec<(i64, i64)>,
    topics: Vec<String>,
    /// Topics the controller acknowledged deleting.
    deleted: Vec<String>,
    /// How far the run stepped the (process-wide) wall clock, to step it back at the end.
    clock_jumped: i64,
    /// Reassignments the movers started (new targets, some replacing one in progress), and
    /// those that completed.
    moves_started: u64,
    moves_completed: u64,
}

/// The state shared by the simulated hosts, the client and the driver.
struct Shared {
    params: Params,
    links: Arc<Links>,
    /// The nodes' data dirs (`n1/g2`, `n1/controller`), on the simulated disk (`disk::attach`):
    /// the production partition logs, of which a crash keeps what was synced and a seeded
    /// part of the rest, torn anywhere. (Held to be removed when the run ends.)
    _data: tempfile::TempDir,
    /// `data`'s path as the kernel names it (the simulated disk knows files by that name).
    root: PathBuf,
    /// The log store each running node has open for each group (the controller's under
    /// `CONTROLLER_GROUP`).
    stores: Mutex<BTreeMap<(NodeId, GroupId), PartitionLogStore>>,
    /// The groups of each running node.
    live: Mutex<BTreeMap<NodeId, BTreeMap<GroupId, Raft<NodeMachine>>>>,
    /// Each running node's runtime (the mover hands leaderships over through it).
    nodes: Mutex<BTreeMap<NodeId, Arc<ReplicaNode<NodeMachine>>>>,
    /// Each running node's member of the controller quorum: the production metadata state
    /// machine on the simulated network, over a partition log as in production.
    controllers: Mutex<BTreeMap<NodeId, (Raft<NodeMachine>, ControllerMachine)>>,
    /// Nodes whose controller voter has applied metadata on its current disk: until every node
    /// has, a lost disk is a plain crash (a voter that finds no state cannot tell a lost disk
    /// from a first start, so one lost disk while others have not started yet could leave a
    /// majority of the quorum waiting to recover, which a real cluster's formation avoids by
    /// starting its voters before anything else happens).
    formed: Mutex<BTreeSet<NodeId>>,
    /// The groups the client writes to: 1..=3, or with production start-up the partitions of
    /// the topic it created (empty until the controller acknowledged it).
    groups: Mutex<Vec<GroupId>>,
    booted: Mutex<BTreeSet<NodeId>>,
    history: Mutex<History>,
    stop_writes: AtomicBool,
    next_write: AtomicU64,
    /// Movers that have not finished (a mover finishes its move in progress after the faults).
    movers: AtomicU64,
}

impl Shared {
    fn groups(&self) -> Vec<GroupId> {
        lock(&self.groups).clone()
    }

    fn node_dir(&self, id: NodeId) -> PathBuf {
        self.root.join(host(id))
    }

    fn group_dir(&self, id: NodeId, group: GroupId) -> PathBuf {
        let name = if group == CONTROLLER_GROUP { "controller".to_string() } else { format!("g{group}") };
        self.node_dir(id).join(name)
    }

    /// Opens node `id`'s log of `group` as production does (`partition::open`), recovering
    /// whatever the last crash left.
    fn open_store(&self, id: NodeId, group: GroupId) -> std::io::Result<(PartitionLogStore, PartitionStateMachine)> {
        let (log, sm) = partition::open(&self.group_dir(id, group), log_config())?;
        lock(&self.stores).insert((id, group), log.clone());
        Ok((log, sm))
    }

    fn config(&self) -> Arc<openraft::Config> {
        let r = match self.params.mode {
            Mode::GroupTimers => GroupTimings {
                heartbeat_interval: Duration::from_millis(50),
                election_timeout_min: Duration::from_millis(300),
                election_timeout_max: Duration::from_millis(500),
            }
            .config("sim"),
            Mode::NodeElections => election_timings().raft_config("sim"),
        };
        r.expect("valid raft config")
    }

    fn members(&self) -> BTreeMap<NodeId, BasicNode> {
        (1..=self.params.nodes).map(|id| (id, BasicNode::new(format!("{}:{PORT}", host(id))))).collect()
    }

    /// The voters a group starts with: every node, or with moves the first three (the others
    /// join when a reassignment names them).
    fn initial_voters(&self) -> BTreeMap<NodeId, BasicNode> {
        let n = if self.params.moves { 3 } else { self.params.nodes };
        self.members().into_iter().filter(|(id, _)| *id <= n).collect()
    }

    /// Records what one node's metrics say; checks its newly committed entries.
    async fn observe(&self, node: NodeId, group: GroupId, m: &RaftMetrics<TypeConfig>, log: &PartitionLogStore) {
        let committed = m.local_committed.map(|l| l.index);
        {
            let mut h = lock(&self.history);
            h.trace.push(format!(
                "{:?} n{node} g{group} {:?} t{} leader {:?} commit {committed:?} last {:?}",
                turmoil::sim_elapsed(),
                m.state,
                m.current_term,
                m.current_leader,
                m.last_log_index
            ));
            if m.state == ServerState::Leader {
                h.leaders.entry((group, m.current_term)).or_default().insert(node);
            }
            // Nothing is applied (served to readers) beyond what this node knows committed.
            if m.last_applied.map(|l| l.index) > committed {
                let msg = format!("n{node} g{group}: applied {:?} beyond commit {committed:?}", m.last_applied);
                h.violations.push(msg);
            }
            if m.vote.committed {
                h.leaders.entry((group, m.vote.leader_id.term)).or_default().insert(m.vote.leader_id.voted_for);
            }
        }
        let Some(c) = committed else { return };
        let from = lock(&self.history).checked.get(&(node, group)).copied().unwrap_or(0);
        if c < from {
            return;
        }
        let entries = match log.clone().try_get_log_entries(from..=c).await {
            Ok(e) => e,
            Err(e) => {
                lock(&self.history).violations.push(format!("n{node} g{group}: log read failed: {e}"));
                return;
            }
        };
        let mut h = lock(&self.history);
        if entries.len() as u64 != c - from + 1 {
            h.violations.push(format!(
                "n{node} g{group}: commit index {c} but the log holds {} of entries {from}..={c}",
                entries.len()
            ));
            return;
        }
        for e in &entries {
            let s = seen(e);
            let index = e.log_id.index;
            match h.committed.entry(group).or_default().entry(index) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(s);
                }
                std::collections::btree_map::Entry::Occupied(o) => {
                    if *o.get() != s {
                        let msg = format!(
                            "g{group} index {index}: committed as {:?}, later n{node} committed {s:?}",
                            o.get()
                        );
                        h.violations.push(msg);
                    }
                }
            }
        }
        h.checked.insert((node, group), c + 1);
    }

    /// The live node that leads `group` in the newest term any live node leads it in.
    fn newest_leader(&self, group: GroupId) -> Option<(NodeId, Raft<NodeMachine>)> {
        let live = lock(&self.live);
        live.iter()
            .filter_map(|(id, groups)| groups.get(&group).map(|r| (*id, r.clone())))
            .filter(|(_, r)| r.is_leader())
            .max_by_key(|(id, r)| (r.metrics().borrow_watched().current_term, std::cmp::Reverse(*id)))
    }

    /// The live node that says it leads `group` (lowest id if several do).
    fn leader(&self, group: GroupId) -> Option<Raft<NodeMachine>> {
        let live = lock(&self.live);
        let mut ids: Vec<_> = live.keys().copied().collect();
        ids.sort();
        ids.into_iter().filter_map(|id| live[&id].get(&group).cloned()).find(|r| r.is_leader())
    }
}

fn election_timings() -> ElectionTimings {
    ElectionTimings {
        ping_interval: Duration::from_millis(50),
        election_timeout_min: Duration::from_millis(300),
        election_timeout_max: Duration::from_millis(500),
    }
}

type HostResult = Result<(), Box<dyn std::error::Error>>;

/// One node's software, as the broker would start it: transport, groups, drivers.
async fn run_node(shared: Arc<Shared>, id: NodeId) -> HostResult {
    if shared.params.production {
        return run_production_node(shared, id).await;
    }
    let connector = Arc::new(SimConnector { links: shared.links.clone() });
    let node: Arc<ReplicaNode<NodeMachine>> = Arc::new(ReplicaNode::new(TransportConfig::new("sim", id), connector));
    node.serve(SimListener::bind(PORT, shared.links.clone()).await?);
    for (peer, n) in shared.members() {
        node.add_peer(peer, &n.addr);
    }
    let first_boot = lock(&shared.booted).insert(id);
    let config = shared.config();
    let mut groups = BTreeMap::new();
    for group in 1..=shared.params.groups {
        let (log, sm) = shared.open_store(id, group)?;
        let raft = node.start_group(group, config.clone(), log.clone(), NodeMachine::Partition(sm)).await?;
        let voters = shared.initial_voters();
        // With the store that loses everything, the node that set the group up does it again
        // when it comes back empty: the amnesia the applier guards against in production (an
        // empty replica initializing itself as a voter).
        let amnesiac =
            shared.params.bug == Some(Bug::WipeOnCrash) && log.clone().get_log_state().await?.last_log_id.is_none();
        if (first_boot || amnesiac) && group % voters.len() as u64 + 1 == id {
            raft.initialize(voters).await?;
        }
        observe_group(&shared, id, group, &raft, log);
        groups.insert(group, raft);
    }
    lock(&shared.live).insert(id, groups);
    lock(&shared.nodes).insert(id, node.clone());
    let _controller = start_controller(&shared, id, first_boot).await?;
    let (_heartbeats, _elections) = match shared.params.mode {
        Mode::GroupTimers => (node.start_heartbeats(Duration::from_millis(50)), None),
        Mode::NodeElections => {
            (node.start_heartbeats(Duration::from_millis(200)), Some(node.start_elections(election_timings())))
        }
    };
    // The node runs until the simulator crashes it.
    std::future::pending::<()>().await;
    Ok(())
}

/// The topic the client writes to when nodes start as production starts them.
const EVENTS: &str = "events";

/// One node started as the broker starts its cluster part (`server::start`): one runtime for
/// the controller quorum's group and the partition groups the applier starts from the metadata,
/// the broker's registration and heartbeats, the election and heartbeat drivers. The checker
/// follows the groups as the applier starts and stops them.
async fn run_production_node(shared: Arc<Shared>, id: NodeId) -> HostResult {
    let connector = Arc::new(SimConnector { links: shared.links.clone() });
    let listener = SimListener::bind(PORT, shared.links.clone()).await?;
    let voters = (1..=shared.params.nodes).map(|p| (p, format!("{}:{PORT}", host(p)))).collect();
    let config = NodeConfig {
        node_id: id,
        transport_name: "sim".into(),
        voters,
        data_dir: shared.node_dir(id),
        rack: Some(format!("r{id}")),
        advertised_listener: format!("{}:9092", host(id)),
        cluster_address: format!("{}:{PORT}", host(id)),
        defaults: TopicDefaults { num_partitions: 1, replication_factor: 3 },
        liveness: Liveness { heartbeat_interval: Duration::from_millis(500), session_timeout: Duration::from_secs(3) },
        elections: election_timings(),
        group_heartbeat: Duration::from_millis(200),
        settle_patience: Duration::from_secs(2),
        validator: Arc::new(AnyConfig),
        log_config: Box::new(|_| log_config()),
    };
    let started =
        server::start(config, connector, listener, |controller| controller).await.map_err(|e| e.to_string())?;
    lock(&shared.booted).insert(id);
    let metadata = started.node.group(CONTROLLER_GROUP).ok_or("the controller group did not start")?;
    lock(&shared.stores).insert((id, CONTROLLER_GROUP), started.metadata_log.clone());
    observe_group(&shared, id, CONTROLLER_GROUP, &metadata, started.metadata_log.clone());
    lock(&shared.controllers).insert(id, (metadata, started.controller.machine().clone()));
    lock(&shared.nodes).insert(id, started.node.clone());
    lock(&shared.live).insert(id, BTreeMap::new());
    loop {
        if started.controller.machine().last_applied_index().is_some_and(|i| i > 0) {
            lock(&shared.formed).insert(id);
        }
        let running: BTreeMap<GroupId, Raft<NodeMachine>> =
            started.node.registry().all().into_iter().filter(|(g, _)| *g != CONTROLLER_GROUP).collect();
        let new: Vec<(GroupId, Raft<NodeMachine>)> = {
            let mut live = lock(&shared.live);
            let mine = live.entry(id).or_default();
            // A group stopped and started again between two looks is a new Raft: the old
            // handle only reports its shutdown.
            mine.retain(|g, r| running.contains_key(g) && r.metrics().borrow_watched().state != ServerState::Shutdown);
            running.iter().filter(|(g, _)| !mine.contains_key(g)).map(|(g, r)| (*g, r.clone())).collect()
        };
        lock(&shared.stores).retain(|(n, g), _| *n != id || *g == CONTROLLER_GROUP || running.contains_key(g));
        for (g, raft) in new {
            // The applier publishes a replica before it starts its group.
            let Some(replica) = started.replicas.get(g) else { continue };
            lock(&shared.stores).insert((id, g), replica.store.clone());
            observe_group(&shared, id, g, &raft, replica.store.clone());
            lock(&shared.live).entry(id).or_default().insert(g, raft);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Has the checker look at every metrics change of node `id`'s replica of `group` (checked
/// from the start of its log again, as a restarted node's is).
fn observe_group<SM: openraft::storage::RaftStateMachine<TypeConfig>>(
    shared: &Arc<Shared>,
    id: NodeId,
    group: GroupId,
    raft: &Raft<SM>,
    log: PartitionLogStore,
) {
    lock(&shared.history).checked.insert((id, group), 0);
    let (s, mut rx) = (shared.clone(), raft.metrics());
    tokio::spawn(async move {
        loop {
            let m = rx.borrow_watched().clone();
            s.observe(id, group, &m, &log).await;
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Starts node `id`'s member of the controller quorum (every node is a voter): its own runtime
/// on `CONTROLLER_PORT`, the production `ControllerMachine` over a partition log in the node's
/// `controller` dir (its snapshots beside it, as in production). Returns what keeps
/// it running.
async fn start_controller(
    shared: &Arc<Shared>,
    id: NodeId,
    first_boot: bool,
) -> Result<(Arc<ReplicaNode<NodeMachine>>, HeartbeatDriver, Option<ElectionDriver>), Box<dyn std::error::Error>> {
    let connector = Arc::new(SimConnector { links: shared.links.clone() });
    let node = Arc::new(ReplicaNode::new(TransportConfig::new("sim-controller", id), connector));
    node.serve(SimListener::bind(CONTROLLER_PORT, shared.links.clone()).await?);
    let members: BTreeMap<NodeId, BasicNode> =
        (1..=shared.params.nodes).map(|p| (p, BasicNode::new(format!("{}:{CONTROLLER_PORT}", host(p))))).collect();
    for (peer, n) in &members {
        node.add_peer(*peer, &n.addr);
    }
    let machine = ControllerMachine::open(id, Some(&shared.group_dir(id, CONTROLLER_GROUP)))?;
    let (log, _) = shared.open_store(id, CONTROLLER_GROUP)?;
    let raft = node
        .start_group(CONTROLLER_GROUP, shared.config(), log.clone(), NodeMachine::Controller(machine.clone()))
        .await?;
    if first_boot && id == 1 {
        raft.initialize(members).await?;
    }
    observe_group(shared, id, CONTROLLER_GROUP, &raft, log);
    lock(&shared.controllers).insert(id, (raft, machine));
    let drivers = match shared.params.mode {
        Mode::GroupTimers => (node.start_heartbeats(Duration::from_millis(50)), None),
        Mode::NodeElections => {
            (node.start_heartbeats(Duration::from_millis(200)), Some(node.start_elections(election_timings())))
        }
    };
    Ok((node, drivers.0, drivers.1))
}

/// The controller quorum member that leads in the newest term any live one leads in.
fn controller_leader(shared: &Shared) -> Option<(Raft<NodeMachine>, ControllerMachine)> {
    let controllers = lock(&shared.controllers);
    controllers
        .values()
        .filter(|(r, _)| r.is_leader())
        .max_by_key(|(r, _)| r.metrics().borrow_watched().current_term)
        .cloned()
}

/// The admin side: records proposed through the controller leader, as the production controller
/// service makes them (the cluster named, brokers registered and unfenced, then producer id
/// blocks and topics, one after another); what the leader answers as applied is acknowledged.
async fn run_controller_client(s: Arc<Shared>) {
    let n = s.params.nodes as i32;
    let mut k = 0u64;
    while !s.stop_writes.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let Some((raft, machine)) = controller_leader(&s) else { continue };
        let record = machine.read(|m| {
            if m.cluster_id().is_none() {
                return Some(MetadataRecord::InitCluster { cluster_id: "sim".into() });
            }
            if let Some(id) = (1..=n).find(|i| m.broker(*i).is_none()) {
                let reg = BrokerRegistration {
                    node_id: id,
                    incarnation: uuid::Uuid::from_u128(id as u128),
                    rack: Some(format!("r{id}")),
                    advertised_listener: format!("{}:9092", host(id as u64)),
                    cluster_address: format!("{}:{PORT}", host(id as u64)),
                };
                return Some(MetadataRecord::RegisterBroker(reg));
            }
            if let Some(b) = (1..=n).filter_map(|i| m.broker(i)).find(|b| b.fenced) {
                let r = &b.registration;
                return Some(MetadataRecord::UnfenceBroker { node_id: r.node_id, incarnation: r.incarnation });
            }
            if k.is_multiple_of(3) {
                let topic =
                    NewTopic { name: format!("t{k}"), num_partitions: 1, replication_factor: 1, ..NewTopic::default() };
                let defaults = TopicDefaults { num_partitions: 1, replication_factor: 1 };
                m.propose_create_topic(&topic, uuid::Uuid::from_u128(1 + k as u128), defaults, &AnyConfig).ok()
            } else {
                m.propose_allocate_producer_ids(1 + (k % n as u64) as i32).ok()
            }
        });
        k += 1;
        let Some(record) = record else { continue };
        propose_and_record(&s, &raft, &machine, &record).await;
    }
}

/// Proposes `record` through the controller leader `raft` (for at most 2 s) and records what
/// its acknowledged outcome hands out for the checker: producer id blocks and created topics.
async fn propose_and_record(
    s: &Shared,
    raft: &Raft<NodeMachine>,
    machine: &ControllerMachine,
    record: &MetadataRecord,
) -> Option<ControllerOutcome> {
    let proposal = machine.propose(raft, record, Duration::from_secs(2));
    let Ok(Ok(Ok(outcome))) = tokio::time::timeout(Duration::from_secs(2), proposal).await else { return None };
    let mut h = lock(&s.history);
    match &outcome {
        ControllerOutcome::ProducerIds { first, count, .. } => h.id_blocks.push((*first, *count)),
        ControllerOutcome::TopicCreated { name, .. } => h.topics.push(name.clone()),
        _ => {}
    }
    Some(outcome)
}

/// The admin side with production start-up (brokers register themselves): creates the topic
/// the writers use (three partitions, three replicas), then producer id blocks, and other
/// topics created and deleted (their replicas started and removed by the applier); with 4+
/// nodes, the topic's partitions reassigned to three nodes drawn by seed (carried out by the
/// leaders' reassignment drivers). After the faults it stops, once the topic exists.
async fn run_admin_client(s: Arc<Shared>) {
    let n = s.params.nodes;
    let mut rng = Rng(s.params.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xad);
    let mut others: Vec<String> = Vec::new();
    let mut k = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let stop = s.stop_writes.load(Ordering::SeqCst);
        if stop && !s.groups().is_empty() {
            return;
        }
        let Some((raft, machine)) = controller_leader(&s) else { continue };
        let events: Vec<GroupId> = machine.read(|m| m.partitions_of(EVENTS).map(|(g, _)| g).collect());
        if !events.is_empty() && s.groups().is_empty() {
            *lock(&s.groups) = events.clone();
            continue;
        }
        k += 1;
        let record = machine.read(|m| {
            if events.is_empty() {
                let topic =
                    NewTopic { name: EVENTS.into(), num_partitions: 3, replication_factor: 3, ..NewTopic::default() };
                let defaults = TopicDefaults { num_partitions: 3, replication_factor: 3 };
                return m.propose_create_topic(&topic, uuid::Uuid::from_u128(u128::MAX), defaults, &AnyConfig).ok();
            }
            match k % 10 {
                0 | 5 if n > 3 => {
                    let group = events[rng.range(0, events.len() as u64) as usize];
                    // Three or four replicas, so that one lost disk leaves a majority: with
                    // one replica the records go with the disk (as Kafka's do), and with two a
                    // Raft group that lost one has no majority left to elect a leader.
                    let k = rng.range(3, 5) as usize;
                    let mut target: Vec<i32> = (1..=n as i32).collect();
                    for i in (1..target.len()).rev() {
                        target.swap(i, rng.range(0, i as u64 + 1) as usize);
                    }
                    target.truncate(k);
                    let entry = Reassignment { group_id: group, target: Some(target) };
                    m.propose_alter_reassignments(vec![entry], true).ok()
                }
                3 => {
                    let topic = NewTopic {
                        name: format!("t{k}"),
                        num_partitions: 1,
                        replication_factor: 1 + (k % 2) as i16,
                        ..NewTopic::default()
                    };
                    let defaults = TopicDefaults { num_partitions: 1, replication_factor: 1 };
                    m.propose_create_topic(&topic, uuid::Uuid::from_u128(1 + k as u128), defaults, &AnyConfig).ok()
                }
                8 if !others.is_empty() => m.propose_delete_topic(&others[0]).ok(),
                _ => m.propose_allocate_producer_ids(1 + (k % n) as i32).ok(),
            }
        });
        let Some(record) = record else { continue };
        // A deletion that is not answered may still take effect: the topic is no longer
        // expected to exist either way.
        let deleting = matches!(record, MetadataRecord::DeleteTopic { .. }).then(|| others.remove(0));
        if let Some(t) = &deleting {
            lock(&s.history).topics.retain(|x| x != t);
        }
        match propose_and_record(&s, &raft, &machine, &record).await {
            Some(ControllerOutcome::TopicCreated { name, .. }) if name != EVENTS => others.push(name),
            Some(_) => lock(&s.history).deleted.extend(deleting),
            None => {}
        }
    }
}

/// With production start-up, what convergence also needs: no reassignment of the written topic
/// in progress, every running node's applier running exactly the replicas the metadata places
/// on it, and every node's data dir holding exactly their directories (deleted topics' and
/// moved replicas' removed). `Err` says what differs.
fn production_settled(shared: &Shared) -> Result<(), String> {
    let Some((_, machine)) = controller_leader(shared) else { return Err("no controller leader".into()) };
    let m = machine.read(|m| m.clone());
    if m.topic(EVENTS).is_none() {
        return Err(format!("no topic {EVENTS}"));
    }
    if let Some((g, _)) = m.partitions_of(EVENTS).find(|(_, p)| p.reassignment.is_some()) {
        return Err(format!("g{g} is being reassigned"));
    }
    let live = lock(&shared.live);
    for id in 1..=shared.params.nodes {
        let placed: BTreeSet<GroupId> =
            m.partitions().iter().filter(|(_, p)| p.replicas.contains(&(id as i32))).map(|(g, _)| *g).collect();
        let running: BTreeSet<GroupId> = live.get(&id).map(|g| g.keys().copied().collect()).unwrap_or_default();
        if running != placed {
            return Err(format!("n{id} runs {running:?}, the metadata places {placed:?}"));
        }
        let dirs: BTreeSet<GroupId> = std::fs::read_dir(shared.node_dir(id))
            .map_err(|e| format!("n{id}: {e}"))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.rsplit_once(".g")?.1.parse().ok())
            .collect();
        if dirs != placed {
            return Err(format!("n{id} has replica dirs of {dirs:?}, the metadata places {placed:?}"));
        }
    }
    Ok(())
}

/// The controller quorum after convergence: every member holds the same log and the same
/// metadata; every acknowledged producer id block is its own (none overlaps another, all below
/// the next id to hand out) and every acknowledged topic exists.
fn check_controllers(shared: &Shared, violations: &mut Vec<String>) {
    let h = lock(&shared.history);
    let controllers = lock(&shared.controllers);
    let states: Vec<(NodeId, ClusterMetadata)> =
        controllers.iter().map(|(id, (_, m))| (*id, m.read(|m| m.clone()))).collect();
    let Some((first, reference)) = states.first() else {
        violations.push("no controller runs after convergence".into());
        return;
    };
    for (id, state) in &states[1..] {
        if state != reference {
            violations.push(format!("controllers n{first} and n{id} applied different metadata"));
        }
    }
    let mut blocks = h.id_blocks.clone();
    blocks.sort();
    for w in blocks.windows(2) {
        if w[0].0 + w[0].1 > w[1].0 {
            violations.push(format!("producer id blocks {:?} and {:?} overlap", w[0], w[1]));
        }
    }
    if let Some(last) = blocks.last() {
        if last.0 + last.1 > reference.next_producer_id() {
            violations.push(format!("block {last:?} is beyond the next producer id {}", reference.next_producer_id()));
        }
    }
    for t in &h.topics {
        if reference.topic(t).is_none() {
            violations.push(format!("acknowledged topic {t} is not in the metadata"));
        }
    }
    for t in &h.deleted {
        if reference.topic(t).is_some() {
            violations.push(format!("topic {t}, whose deletion was acknowledged, is in the metadata"));
        }
    }
}

/// The client: one writer per group, each write a new number, sent to whoever leads.
async fn run_writers(shared: Arc<Shared>) -> HostResult {
    let mut tasks = if shared.params.production {
        vec![tokio::task::spawn_local(run_admin_client(shared.clone()))]
    } else {
        vec![tokio::task::spawn_local(run_controller_client(shared.clone()))]
    };
    // With production start-up the groups are the partitions of the topic the admin client
    // creates: writing starts once it exists.
    while shared.groups().is_empty() {
        if shared.stop_writes.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if shared.params.moves && !shared.params.production {
        for group in 1..=shared.params.groups {
            shared.movers.fetch_add(1, Ordering::SeqCst);
            tasks.push(tokio::task::spawn_local(run_mover(shared.clone(), group)));
        }
    }
    for group in shared.groups() {
        let s = shared.clone();
        tasks.push(tokio::task::spawn_local(async move {
            while !s.stop_writes.load(Ordering::SeqCst) {
                let Some(raft) = s.leader(group) else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let n = s.next_write.fetch_add(1, Ordering::SeqCst);
                let what = format!("g{group}-w{n}");
                lock(&s.history).attempts += 1;
                if s.params.bug == Some(Bug::AckBeforeMajority) {
                    if let Some((term, index)) = ack_on_leader_append(&s, &raft, group, &what).await {
                        lock(&s.history).acked.push((group, index, Seen { term, what }));
                    }
                    tokio::time::sleep(Duration::from_millis(15)).await;
                    continue;
                }
                let write = raft.client_write(BatchData(batch_of(&what)));
                // Refused (no longer leader) or no answer in time: not acknowledged, and never
                // retried with the same number, so a duplicate in the log is a real one.
                if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_secs(2), write).await {
                    let entry = Seen { term: resp.log_id.leader_id.term, what };
                    lock(&s.history).acked.push((group, resp.log_id.index, entry));
                }
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

/// A reassignment target: one to five of the nodes (three most often), in a random order.
fn random_target(rng: &mut Rng, n: u64) -> Vec<NodeId> {
    let k = [1, 2, 3, 3, 3, 4, 5][rng.range(0, 7) as usize].min(n) as usize;
    let mut nodes: Vec<NodeId> = (1..=n).collect();
    for i in (1..nodes.len()).rev() {
        nodes.swap(i, rng.range(0, i as u64 + 1) as usize);
    }
    nodes.truncate(k);
    nodes
}

/// Reassigns `group` again and again during the faults, as the metadata and the leaders do in
/// production: a new target now and then (sometimes replacing one in progress), each step
/// decided by `reassign::next_step` on the newest leader's view and carried out on it. After
/// the faults it finishes the move in progress and stops.
async fn run_mover(s: Arc<Shared>, group: GroupId) {
    let n = s.params.nodes;
    let mut rng = Rng(s.params.seed.wrapping_mul(0x2545_F491_4F6C_DD1D).wrapping_add(group));
    let mut target: Vec<NodeId> = (1..=3).collect();
    let mut moving = false;
    // As in the metadata: the chain's original replicas and those recorded as promoted.
    let mut may_vote: BTreeSet<NodeId> = target.iter().copied().collect();
    let mut next_move_ms = rng.range(300, 1_500);
    let mut marks = CatchUpMarks::default();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now_ms = turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64);
        let faults_over = s.stop_writes.load(Ordering::SeqCst);
        if faults_over && !moving {
            s.movers.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let replace = moving && rng.range(0, 40) == 0;
        if !faults_over && ((!moving && now_ms >= next_move_ms) || replace) {
            target = random_target(&mut rng, n);
            moving = true;
            // As in the metadata, a replaced target keeps the original set and the promotions.
            let mut h = lock(&s.history);
            h.moves_started += 1;
            h.trace.push(format!("{:?} g{group} reassign to {target:?}", turmoil::sim_elapsed()));
        }
        if !moving {
            continue;
        }
        let Some((me, raft)) = s.newest_leader(group) else { continue };
        let m = raft.metrics().borrow_watched().clone();
        let node = lock(&s.nodes).get(&me).cloned();
        // Production asks the leader's transport when it last heard each node; its instants
        // belong to that host's clock, which the client's cannot compare with, so here a node
        // is alive while it runs (a transfer to one cut off then ends in an election).
        let running: BTreeSet<NodeId> = lock(&s.live).keys().copied().collect();
        let view = View::of(&m, may_vote.clone(), |n| running.contains(&n), &mut marks);
        let step = next_step(&target, &view);
        if !matches!(step, Step::CatchUp | Step::WaitInSync) {
            lock(&s.history).trace.push(format!("{:?} g{group} n{me} {step:?}", turmoil::sim_elapsed()));
        }
        let change = |c: ChangeMembers<NodeId, BasicNode>, retain: bool| {
            let (r, guard) = (raft.clone(), view.preconditions());
            // Followed for at most 2 s: a leader cut off never commits it (production waits,
            // holding the partition's lock; here nothing else needs it).
            async move {
                let _ = tokio::time::timeout(Duration::from_secs(2), r.change_membership_if(c, retain, guard)).await;
            }
        };
        match step {
            Step::AddLearners(ids) => {
                let all = s.members();
                change(ChangeMembers::AddNodes(ids.iter().map(|i| (*i, all[i].clone())).collect()), true).await;
            }
            Step::CatchUp | Step::WaitInSync => {}
            Step::RecordPromotion(ids) => may_vote.extend(ids),
            Step::TransferLeadership(to) => {
                if let Some(node) = node {
                    let _ = node.transfer_leader(group, to).await;
                }
            }
            Step::AddVoters(ids) => change(ChangeMembers::AddVoterIds(ids), true).await,
            Step::ReplaceVoters(ids) => change(ChangeMembers::ReplaceAllVoters(ids), false).await,
            Step::DropLearners(ids) => change(ChangeMembers::RemoveNodes(ids), false).await,
            Step::Complete => {
                moving = false;
                may_vote = target.iter().copied().collect();
                next_move_ms = now_ms + rng.range(200, 1_500);
                lock(&s.history).moves_completed += 1;
            }
        }
    }
}

/// The planted `AckBeforeMajority` bug: proposes `what` to the leader `raft` and reports where
/// it is as soon as the leader's own log holds it (within 2 s), without waiting for the commit.
async fn ack_on_leader_append(
    s: &Arc<Shared>,
    raft: &Raft<NodeMachine>,
    group: GroupId,
    what: &str,
) -> Option<(u64, u64)> {
    let me = raft.metrics().borrow_watched().id;
    let log = lock(&s.stores).get(&(me, group)).cloned()?;
    let r = raft.clone();
    let data = BatchData(batch_of(what));
    // The proposal goes on; only its answer is not waited for.
    tokio::task::spawn_local(async move {
        let _ = r.client_write(data).await;
    });
    for _ in 0..2_000 {
        let last = log.clone().get_log_state().await.ok()?.last_log_id.map(|l| l.index);
        if let Some(last) = last {
            let from = last.saturating_sub(8);
            if let Ok(entries) = log.clone().try_get_log_entries(from..=last).await {
                let found =
                    entries.iter().find(|e| matches!(&e.payload, EntryPayload::Normal(d) if value_of(&d.0) == what));
                if let Some(e) = found {
                    return Some((e.log_id.leader_id.term, e.log_id.index));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

/// What one schedule produced.
struct Outcome {
    violations: Vec<String>,
    acked: usize,
    attempts: u64,
    lost_unsynced: usize,
    kills: u64,
    disks_lost: u64,
    trace: Vec<String>,
    simulated: Duration,
    moves: (u64, u64),
    /// Frames the links delivered twice, and pairs they swapped.
    mangled: (u64, u64),
    /// Metadata records the controller acknowledged.
    metadata_acked: usize,
}

fn apply(sim: &mut turmoil::Sim<'_>, shared: &Shared, action: &Action, down: &mut BTreeSet<NodeId>) {
    let ip = |sim: &turmoil::Sim<'_>, n: NodeId| -> IpAddr { sim.lookup(host(n)) };
    let pairs = |a: &[NodeId], b: &[NodeId]| -> Vec<(NodeId, NodeId)> {
        a.iter().flat_map(|x| b.iter().map(move |y| (*x, *y))).collect()
    };
    match action {
        // A node the power loss found down already (its own crash track) stays down.
        Action::Crash(n) | Action::PowerCut(n) | Action::DiskLoss(n) if down.contains(n) => {}
        Action::Crash(n) | Action::PowerCut(n) | Action::DiskLoss(n) => {
            sim.crash(host(*n));
            down.insert(*n);
            lock(&shared.live).remove(n);
            lock(&shared.nodes).remove(n);
            lock(&shared.controllers).remove(n);
            lock(&shared.stores).retain(|(node, _), _| node != n);
            shared.links.reset(ip(sim, *n), None);
            // Of what the node wrote but had not synced, a power cut leaves a part drawn by
            // seed, node and time (`disk::crash`); recovery reads what is left. A killed
            // process leaves it all in the page cache, still unsynced.
            let now = sim.elapsed().as_millis() as u64;
            let seed = shared.params.seed ^ n.wrapping_mul(0x9E37_79B9) ^ now;
            let power_cut = matches!(action, Action::PowerCut(_) | Action::DiskLoss(_)) || !seed.is_multiple_of(3);
            lock(&shared.history).kills += u64::from(!power_cut);
            if power_cut {
                match disk::crash(&shared.node_dir(*n), seed) {
                    Ok(c) => lock(&shared.history).lost_unsynced += c.sectors_lost,
                    Err(e) => lock(&shared.history).violations.push(format!("simulation error: crash of n{n}: {e}")),
                }
            }
            let formed = lock(&shared.formed).len() as u64 == shared.params.nodes;
            if matches!(action, Action::DiskLoss(_)) && formed {
                lock(&shared.formed).remove(n);
                let dir = shared.node_dir(*n);
                if let Err(e) = std::fs::remove_dir_all(&dir).and_then(|_| std::fs::create_dir_all(&dir)) {
                    lock(&shared.history).violations.push(format!("simulation error: disk loss of n{n}: {e}"));
                }
                lock(&shared.history).disks_lost += 1;
            }
            for g in 1..=shared.params.groups {
                let dir = shared.group_dir(*n, g);
                match shared.params.bug {
                    Some(Bug::WipeOnCrash) => {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                    Some(Bug::ForgetVoteOnCrash) => forget_vote(&dir),
                    Some(Bug::AckBeforeMajority) | Some(Bug::ReportBeforeSync) | None => {}
                }
            }
        }
        Action::Restart(n) => {
            if down.remove(n) {
                sim.bounce(host(*n));
            }
        }
        Action::Partition(a, b) => {
            for (x, y) in pairs(a, b) {
                sim.partition(host(x), host(y));
            }
        }
        Action::Repair(a, b) => {
            for (x, y) in pairs(a, b) {
                sim.repair(host(x), host(y));
                shared.links.reset(ip(sim, x), Some(ip(sim, y)));
            }
        }
        Action::Hold(a, b) => sim.hold(host(*a), host(*b)),
        Action::Release(a, b) => sim.release(host(*a), host(*b)),
        Action::Slow(a, b, ms) => sim.set_link_max_message_latency(host(*a), host(*b), Duration::from_millis(*ms)),
        Action::Unslow(a, b) => sim.set_link_max_message_latency(host(*a), host(*b), BASE_LATENCY),
        Action::Reset(a, b) => {
            shared.links.reset(ip(sim, *a), Some(ip(sim, *b)));
        }
        Action::Mangle(a, b, how) => shared.links.set_mangle(ip(sim, *a), ip(sim, *b), *how),
        Action::Unmangle(a, b) => shared.links.set_mangle(ip(sim, *a), ip(sim, *b), Mangle::Pass),
        Action::ClockJump(by) => {
            fjord_replication::clock::jump(*by);
            lock(&shared.history).clock_jumped += *by;
        }
    }
}

/// The planted `ForgetVoteOnCrash`: the vote in the log's `raft-state` is gone (log and commit
/// kept).
fn forget_vote(dir: &Path) {
    let path = dir.join("raft-state");
    let Ok(bytes) = std::fs::read(&path) else { return };
    let Ok(mut state) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return };
    state["vote"] = serde_json::Value::Null;
    let _ = std::fs::write(&path, serde_json::to_vec(&state).expect("json"));
}

/// The members (voters and learners) of `group` as its newest live leader has them.
fn members_of(shared: &Shared, group: GroupId) -> Option<BTreeSet<NodeId>> {
    let (_, raft) = shared.newest_leader(group)?;
    let m = raft.metrics().borrow_watched().clone();
    Some(m.membership_config.membership().nodes().map(|(id, _)| *id).collect())
}

/// What keeps `converged` false, for the report of a schedule that did not converge.
fn not_converged(shared: &Shared) -> String {
    let live = lock(&shared.live).len();
    let controllers: Vec<String> = lock(&shared.controllers)
        .iter()
        .map(|(id, (r, m))| {
            let x = r.metrics().borrow_watched().clone();
            format!(
                "n{id} {:?} t{} last {:?} applied {:?}",
                x.state,
                x.current_term,
                x.last_log_index,
                m.last_applied_index()
            )
        })
        .collect();
    let groups: Vec<String> = shared
        .groups()
        .into_iter()
        .map(|g| {
            let live = lock(&shared.live);
            let v: Vec<String> = live
                .iter()
                .filter_map(|(id, gs)| gs.get(&g).map(|r| (id, r.metrics().borrow_watched().clone())))
                .map(|(id, m)| {
                    format!(
                        "n{id} {:?} t{} last {:?} commit {:?}",
                        m.state,
                        m.current_term,
                        m.last_log_index,
                        m.local_committed.map(|l| l.index)
                    )
                })
                .collect();
            format!("g{g}: {}", v.join(", "))
        })
        .collect();
    let settled = if shared.params.production {
        format!("; {}", production_settled(shared).err().unwrap_or_else(|| "replicas settled".into()))
    } else {
        String::new()
    };
    format!("{live} nodes up; controllers: {}; {}{settled}", controllers.join(", "), groups.join("; "))
}

/// Every node is up; every group has one leader all its members follow, and every member holds
/// and has committed exactly the leader's log. (With moves, nodes outside a group's membership
/// keep whatever they last had.)
fn converged(shared: &Shared) -> bool {
    // A membership change in progress appends entries yet.
    if lock(&shared.live).len() as u64 != shared.params.nodes || shared.movers.load(Ordering::SeqCst) > 0 {
        return false;
    }
    let controllers: Vec<(RaftMetrics<TypeConfig>, Option<u64>)> = lock(&shared.controllers)
        .values()
        .map(|(r, m)| (r.metrics().borrow_watched().clone(), m.last_applied_index()))
        .collect();
    let Some((leader, _)) = controllers.iter().find(|(m, _)| m.state == ServerState::Leader) else { return false };
    let controllers_agree = controllers.len() as u64 == shared.params.nodes
        && controllers.iter().all(|(m, applied)| {
            m.current_leader == Some(leader.id)
                && m.last_log_index == leader.last_log_index
                && m.local_committed.map(|l| l.index) == leader.last_log_index
                && *applied == leader.last_log_index
        });
    if !controllers_agree {
        return false;
    }
    if shared.params.production && production_settled(shared).is_err() {
        return false;
    }
    shared.groups().into_iter().all(|g| {
        let Some(members) = members_of(shared, g) else { return false };
        let live = lock(&shared.live);
        let ms: Vec<RaftMetrics<TypeConfig>> = members
            .iter()
            .filter_map(|id| {
                live.get(id).and_then(|groups| groups.get(&g)).map(|r| r.metrics().borrow_watched().clone())
            })
            .collect();
        let Some(leader) = ms.iter().find(|m| m.state == ServerState::Leader) else { return false };
        ms.len() == members.len()
            && ms.iter().all(|m| {
                m.current_leader == Some(leader.id)
                    && m.current_term == leader.current_term
                    && m.last_log_index == leader.last_log_index
                    && m.local_committed.map(|l| l.index) == leader.last_log_index
                    && m.last_applied == m.local_committed
            })
    })
}

/// The final logs against everything seen during the run.
fn check_final(shared: &Shared, violations: &mut Vec<String>) {
    let groups = shared.groups();
    let members: Vec<BTreeSet<NodeId>> = groups.iter().map(|g| members_of(shared, *g).unwrap_or_default()).collect();
    let h = lock(&shared.history);
    for ((g, term), nodes) in &h.leaders {
        if nodes.len() > 1 {
            violations.push(format!("g{g} term {term}: {} leaders {nodes:?}", nodes.len()));
        }
    }
    let stores = lock(&shared.stores);
    for (i, &g) in groups.iter().enumerate() {
        // The group's members hold its log; with moves, the others may hold an older one.
        let logs: Vec<(NodeId, Vec<EntryOf<TypeConfig>>)> = members[i]
            .iter()
            .map(|&n| {
                let entries = stores
                    .get(&(n, g))
                    .map(|log| futures::executor::block_on(log.clone().try_get_log_entries(0..)).unwrap_or_default())
                    .unwrap_or_default();
                (n, entries)
            })
            .collect();
        let Some((first, reference)) = logs.first() else {
            violations.push(format!("g{g}: no leader to name the group's members after convergence"));
            continue;
        };
        for (n, log) in &logs[1..] {
            if log.len() != reference.len()
                || log.iter().zip(reference).any(|(a, b)| a.log_id != b.log_id || seen(a) != seen(b))
            {
                let at = log.iter().zip(reference.iter()).position(|(a, b)| a.log_id != b.log_id || seen(a) != seen(b));
                let show = |l: &[EntryOf<TypeConfig>], i: Option<usize>| {
                    i.and_then(|i| l.get(i)).map(|e| format!("{} {:?}", e.log_id, seen(e)))
                };
                violations.push(format!(
                    "g{g}: the logs of n{first} ({} entries from {:?}) and n{n} ({} from {:?}) differ after convergence, first at {at:?}: {:?} / {:?}",
                    reference.len(),
                    reference.first().map(|e| e.log_id.index),
                    log.len(),
                    log.first().map(|e| e.log_id.index),
                    show(reference, at),
                    show(log, at)
                ));
            }
        }
        for (n, log) in &logs {
            let by_index: BTreeMap<u64, Seen> = log.iter().map(|e| (e.log_id.index, seen(e))).collect();
            for (index, s) in h.committed.get(&g).into_iter().flatten() {
                if by_index.get(index) != Some(s) {
                    violations.push(format!(
                        "g{g} n{n}: committed {s:?} at index {index} changed to {:?}",
                        by_index.get(index)
                    ));
                }
            }
            for (_, index, s) in h.acked.iter().filter(|(ag, _, _)| *ag == g) {
                if by_index.get(index) != Some(s) {
                    violations.push(format!(
                        "g{g} n{n}: acknowledged {s:?} at index {index} is {:?} in the final log",
                        by_index.get(index)
                    ));
                }
            }
            let mut once = BTreeMap::new();
            for e in log {
                if let EntryPayload::Normal(d) = &e.payload {
                    let what = value_of(&d.0);
                    if let Some(prev) = once.insert(what.clone(), e.log_id.index) {
                        violations.push(format!("g{g} n{n}: {what:?} appears twice, at {prev} and {}", e.log_id.index));
                    }
                }
            }
        }
    }
}

/// Runs one schedule to the end and checks it.
fn run(params: &Params, schedule: &Schedule) -> Outcome {
    record_panics(params.replay_command());
    align_task_ids();
    // openraft's random draws (election timeouts) follow the seed too.
    fjord_replication::rt::seed_thread_rng(Some(params.seed));
    // Stored timestamps come from simulated time (a fixed date plus the time simulated).
    fjord_replication::clock::simulate(Some(|| {
        1_800_000_000_000 + turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as i64)
    }));
    // In memory when the machine has a tmpfs there: the simulated disk decides what a crash
    // keeps, and a real one only adds the cost of creating and renaming files (about four times
    // the run time of restart storms).
    let shm = Path::new("/dev/shm");
    let data = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
    let data = data.expect("a temp dir for the nodes' data");
    let root = data.path().canonicalize().expect("the temp dir's name");
    let lose_syncs = params.bug == Some(Bug::ReportBeforeSync);
    disk::attach(&root, disk::Options { sync_delay: params.sync, lose_syncs });
    // File work the applier hands to tokio's blocking pool runs in place, in simulated time.
    fjord_replication::rt::run_blocking_inline(true);
    let shared = Arc::new(Shared {
        params: params.clone(),
        links: Arc::new(Links::default()),
        _data: data,
        root,
        stores: Mutex::new(BTreeMap::new()),
        live: Mutex::new(BTreeMap::new()),
        nodes: Mutex::new(BTreeMap::new()),
        controllers: Mutex::new(BTreeMap::new()),
        formed: Mutex::new(BTreeSet::new()),
        groups: Mutex::new(if params.production { Vec::new() } else { (1..=params.groups).collect() }),
        booted: Mutex::new(BTreeSet::new()),
        history: Mutex::new(History::default()),
        stop_writes: AtomicBool::new(false),
        next_write: AtomicU64::new(0),
        movers: AtomicU64::new(0),
    });
    let mut sim = turmoil::Builder::new()
        .rng_seed(params.seed)
        .simulation_duration(Duration::from_secs(600))
        .tick_duration(TICK)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(BASE_LATENCY)
        .build();
    for id in 1..=params.nodes {
        let s = shared.clone();
        sim.host(host(id), move || run_node(s.clone(), id));
    }
    sim.client("client", run_writers(shared.clone()));

    let mut violations = Vec::new();
    let mut down = BTreeSet::new();
    let mut next = 0;
    let fail = |violations: &mut Vec<String>, e: String| violations.push(format!("simulation error: {e}"));
    let ms = |sim: &turmoil::Sim<'_>| sim.elapsed().as_millis() as u64;
    // The fault window.
    while ms(&sim) < FAULT_WINDOW_MS {
        while next < schedule.events.len() && schedule.events[next].0 <= ms(&sim) {
            apply(&mut sim, &shared, &schedule.events[next].1, &mut down);
            next += 1;
        }
        if let Err(e) = sim.step() {
            fail(&mut violations, e.to_string());
            break;
        }
    }
    // Heal: every link repaired, released and fast again, every node up, connections reset.
    for a in 1..=params.nodes {
        for b in a + 1..=params.nodes {
            sim.repair(host(a), host(b));
            sim.release(host(a), host(b));
            sim.set_link_max_message_latency(host(a), host(b), BASE_LATENCY);
            let (ia, ib) = (sim.lookup(host(a)), sim.lookup(host(b)));
            shared.links.set_mangle(ia, ib, Mangle::Pass);
            shared.links.set_mangle(ib, ia, Mangle::Pass);
        }
        let ip = sim.lookup(host(a));
        shared.links.reset(ip, None);
    }
    for n in std::mem::take(&mut down) {
        sim.bounce(host(n));
    }
    shared.stop_writes.store(true, Ordering::SeqCst);
    let give_up = sim.elapsed() + CONVERGE_DEADLINE;
    let mut steps = 0u64;
    while violations.is_empty() {
        if let Err(e) = sim.step() {
            fail(&mut violations, e.to_string());
            break;
        }
        steps += 1;
        if steps.is_multiple_of(20) && converged(&shared) {
            break;
        }
        if sim.elapsed() > give_up {
            violations.push(format!(
                "no convergence within {CONVERGE_DEADLINE:?} of simulated time after the heal ({})",
                not_converged(&shared)
            ));
            break;
        }
    }
    if violations.is_empty() {
        check_final(&shared, &mut violations);
        check_controllers(&shared, &mut violations);
    }
    disk::detach(&shared.root);
    fjord_replication::rt::run_blocking_inline(false);
    let h = lock(&shared.history);
    fjord_replication::clock::jump(-h.clock_jumped);
    fjord_replication::clock::simulate(None);
    violations.extend(h.violations.iter().cloned());
    violations.extend(PANICS.with(|p| p.take()).into_iter().map(|p| format!("panic in a node: {p}")));
    Outcome {
        violations,
        acked: h.acked.len(),
        attempts: h.attempts,
        lost_unsynced: h.lost_unsynced,
        kills: h.kills,
        disks_lost: h.disks_lost,
        trace: h.trace.clone(),
        simulated: sim.elapsed(),
        moves: (h.moves_started, h.moves_completed),
        mangled: (shared.links.duplicated.load(Ordering::Relaxed), shared.links.reordered.load(Ordering::Relaxed)),
        metadata_acked: h.id_blocks.len() + h.topics.len(),
    }
}

/// Takes tokio task ids (one counter for the process) up to a multiple of 64. A runtime keeps
/// its tasks in lists chosen by task id and shuts them down list by list, so a crashed host's
/// connections close (and send their last segments, whose latencies turmoil draws in turn) in
/// an order that depends on the ids: aligned, a run numbers its tasks as a fresh process does,
/// and a seed's run in a batch is the run its replay command makes.
fn align_task_ids() {
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    loop {
        let id: u64 = rt.spawn(async {}).id().to_string().parse().expect("a task id is a number");
        if id % 64 == 63 {
            return;
        }
    }
}

thread_local! {
    /// Panics on this thread: every simulated host runs on the thread of its test.
    static PANICS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

thread_local! {
    /// The replay command of the schedule this thread runs.
    static REPLAY: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Records every panic on the panicking thread, so a panic inside a node's tasks (an openraft
/// assertion, an unwrap in our code) fails the schedule; and prints the schedule's replay
/// command at once, since such a panic may also end the test process: with tokio's unstable
/// cfg, turmoil has a host's runtime shut down on a task's panic, and tokio then aborts.
fn record_panics(replay: String) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let first = PANICS.with(|p| {
                let mut p = p.borrow_mut();
                p.push(info.to_string());
                p.len() == 1
            });
            if first {
                REPLAY.with(|r| {
                    if let Some(cmd) = r.borrow().as_ref() {
                        eprintln!("a simulated node panicked; replay: {cmd}");
                    }
                });
            }
            previous(info);
        }));
    });
    PANICS.with(|p| p.borrow_mut().clear());
    REPLAY.with(|r| *r.borrow_mut() = Some(replay));
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Runs `seeds` (or the seeds the environment names), failing with every failing seed's
/// schedule and replay command.
fn run_seeds(nodes: u64, blips: bool, seeds: impl IntoIterator<Item = u64>) {
    run_seeds_with(nodes, blips, false, false, seeds)
}

/// Held (shared) by every simulation test, and alone by `a_seed_replays_exactly`.
static SIM_TESTS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn run_seeds_with(nodes: u64, blips: bool, moves: bool, production: bool, seeds: impl IntoIterator<Item = u64>) {
    let _shared = SIM_TESTS.read().unwrap_or_else(|e| e.into_inner());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()))
        .with_test_writer()
        .try_init();
    let nodes = env_u64("FJORD_SIM_NODES").unwrap_or(nodes);
    let blips = env_u64("FJORD_SIM_BLIPS").map_or(blips, |b| b != 0);
    let moves = env_u64("FJORD_SIM_MOVES").map_or(moves, |m| m != 0);
    let production = env_u64("FJORD_SIM_PRODUCTION").map_or(production, |m| m != 0);
    let seeds: Vec<u64> = if let Some(s) = env_u64("FJORD_SIM_SEED") {
        vec![s]
    } else if let Some(n) = env_u64("FJORD_SIM_SEEDS") {
        let first = env_u64("FJORD_SIM_FIRST_SEED").unwrap_or(1000);
        (first..first + n).collect()
    } else {
        seeds.into_iter().collect()
    };
    let started = Instant::now();
    let mut failures = Vec::new();
    let (mut acked, mut attempts, mut lost, mut kills, mut disks_lost) = (0, 0, 0, 0, 0);
    let (mut moves_started, mut moves_completed) = (0, 0);
    let (mut duplicated, mut reordered) = (0, 0);
    let mut metadata_acked = 0;
    for &seed in &seeds {
        let params = Params { blips, moves, production, ..Params::new(seed, nodes) };
        let schedule = Schedule::generate(&params);
        let out = run(&params, &schedule);
        disks_lost += out.disks_lost;
        duplicated += out.mangled.0;
        metadata_acked += out.metadata_acked;
        reordered += out.mangled.1;
        moves_started += out.moves.0;
        moves_completed += out.moves.1;
        acked += out.acked;
        attempts += out.attempts;
        lost += out.lost_unsynced;
        kills += out.kills;
        if seeds.len() == 1 || std::env::var_os("FJORD_SIM_DIGESTS").is_some() {
            // Two replays of one seed can be compared by this line (see the README on determinism).
            let mut digest = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(&out.trace, &mut digest);
            println!(
                "seed {seed}: {} metrics events, trace digest {:016x}, {} of {} writes acknowledged",
                out.trace.len(),
                std::hash::Hasher::finish(&digest),
                out.acked,
                out.attempts
            );
            if std::env::var_os("FJORD_SIM_TRACE").is_some() {
                for line in &out.trace {
                    println!("{line}");
                }
            }
        }
        if !out.violations.is_empty() {
            failures.push(format!(
                "seed {seed} ({nodes} nodes, {:?}) failed after {:?} simulated:\n  {}\nschedule:\n{schedule}replay: {}",
                params.mode,
                out.simulated,
                out.violations.join("\n  "),
                params.replay_command()
            ));
        }
    }
    let wall = started.elapsed();
    println!(
        "{} schedules of {nodes} nodes in {wall:.1?} ({:.2} schedules/s); {acked} of {attempts} writes acknowledged; {lost} unsynced sectors lost to power cuts, {kills} processes killed with their page cache kept",
        seeds.len(),
        seeds.len() as f64 / wall.as_secs_f64()
    );
    println!("{duplicated} frames delivered twice, {reordered} pairs swapped; {metadata_acked} metadata records acknowledged");
    if moves {
        println!("{moves_started} reassignments started, {moves_completed} completed");
    }
    if production {
        println!("nodes started as production starts them; {disks_lost} disks lost");
    }
    assert!(failures.is_empty(), "{} of {} seeds failed:\n{}", failures.len(), seeds.len(), failures.join("\n\n"));
    assert!(acked > 0, "no write was acknowledged in any schedule: the simulation checked nothing");
    assert!(metadata_acked > 0, "the controller acknowledged no record in any schedule: it was not checked");
    assert!(!moves || moves_completed > 0, "no reassignment completed in any schedule: the movers checked nothing");
    // Most schedules have a duplicating and a reordering link: over many, both must bite.
    if seeds.len() >= 16 {
        assert!(duplicated > 0 && reordered > 0, "the links duplicated {duplicated} and reordered {reordered} frames");
        assert!(kills > 0 && lost > 0, "{kills} processes killed, {lost} sectors lost to power cuts");
        assert!(!production || disks_lost > 0, "no disk was lost: the recovery of replicas was not checked");
    }
}

/// One seed names one run: the same faults, and every message, timer and random draw in the
/// same order (turmoil's network, tokio's runtimes and openraft's draws all seeded from it, the
/// wall clock read from simulated time, task ids aligned), so the replay command of a seed that
/// failed in a batch shows the same run again. Each seed here runs, then another seed, then the
/// first again: the two runs must agree event by event.
#[test]
fn a_seed_replays_exactly() {
    if !cfg!(tokio_unstable) {
        panic!("built without --cfg tokio_unstable (.cargo/config.toml sets it; a RUSTFLAGS in the environment replaces it): turmoil cannot seed tokio's runtimes");
    }
    // Alone: tests running beside it would take task ids meanwhile (`align_task_ids`).
    let _alone = SIM_TESTS.write().unwrap_or_else(|e| e.into_inner());
    let run_of = |(seed, nodes, moves, production): (u64, u64, bool, bool)| {
        let params = Params { moves, production, ..Params::new(seed, nodes) };
        let out = run(&params, &Schedule::generate(&params));
        assert!(out.violations.is_empty(), "seed {seed}: {:?}", out.violations);
        out
    };
    let runs = [
        ((305, 5, true, false), (9, 3, false, false)),
        ((7, 3, false, false), (102, 5, false, false)),
        ((503, 5, false, true), (9, 3, false, false)),
    ];
    for (seed, other) in runs {
        let a = run_of(seed);
        run_of(other);
        let b = run_of(seed);
        assert!(a.trace.len() > 1_000, "seed {seed:?}: {} events", a.trace.len());
        let first = a.trace.iter().zip(&b.trace).position(|(x, y)| x != y);
        assert!(
            first.is_none() && a.trace.len() == b.trace.len() && a.acked == b.acked,
            "seed {seed:?}: two runs diverged at event {first:?} of {}/{} ({:?} / {:?})",
            a.trace.len(),
            b.trace.len(),
            first.map(|i| &a.trace[i]),
            first.map(|i| &b.trace[i])
        );
    }
}

#[test]
fn three_nodes() {
    run_seeds(3, false, 1..=16);
}

/// Crashes that come every few hundred ms and last milliseconds: restarts inside elections.
#[test]
fn three_nodes_restart_storms() {
    run_seeds(3, true, 201..=206);
}

#[test]
fn five_nodes() {
    run_seeds(5, false, 101..=108);
}

/// Reassignments through the faults: groups start on three of five nodes and move between
/// them, growing and shrinking, their leaders handing over when they leave.
#[test]
fn five_nodes_with_moves() {
    run_seeds_with(5, false, true, false, 301..=306);
}

/// Nodes started as the broker starts them (`server::start`): the applier starts the written
/// topic's replicas from the metadata, and starts and removes those of topics created and
/// deleted meanwhile; one crash in two schedules loses the node's disk.
#[test]
fn three_nodes_production_start() {
    run_seeds_with(3, false, false, true, 401..=406);
}

/// Production start-up with link blips, on the schedules where a replica lost its disk after
/// its group's first leader had committed entries with its help but before that leader's report
/// reached the metadata: taking the metadata's "never had a leader" for "nothing to recover",
/// the wiped replica voted with an empty log and committed entries were overwritten.
#[test]
fn three_nodes_production_start_with_blips() {
    run_seeds_with(3, true, false, true, [72178, 72407, 72454]);
}

/// As `three_nodes_production_start` on five nodes, the topic's partitions reassigned through
/// the metadata and carried out by the leaders' reassignment drivers.
#[test]
fn five_nodes_production_start() {
    run_seeds_with(5, false, false, true, 501..=504);
}

/// Runs `seeds` with `bug` planted until one ends in a safety violation (not merely a stuck
/// cluster; with `checker_only`, one the checker found, not a panic); returns that seed.
fn first_catch(bug: Bug, blips: bool, checker_only: bool, seeds: std::ops::RangeInclusive<u64>) -> Option<u64> {
    let _shared = SIM_TESTS.read().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    for seed in seeds {
        let params = Params { bug: Some(bug), blips, ..Params::new(seed, 3) };
        let schedule = Schedule::generate(&params);
        let out = run(&params, &schedule);
        let safety: Vec<_> = out
            .violations
            .iter()
            .filter(|v| !(v.starts_with("no convergence") || (checker_only && v.starts_with("panic in a node"))))
            .collect();
        if !safety.is_empty() {
            println!(
                "{bug:?} caught by seed {seed} after {:?} of wall time; first violations:\n  {}\nschedule:\n{schedule}",
                started.elapsed(),
                safety.iter().take(5).map(|s| s.as_str()).collect::<Vec<_>>().join("\n  ")
            );
            return Some(seed);
        }
        println!(
            "{bug:?}: seed {seed} passed ({:?}); syncs of {:?}, {} unsynced sectors lost to crashes, {} writes acknowledged",
            out.violations, params.sync, out.lost_unsynced, out.acked
        );
    }
    None
}

/// The checker bites: with a store that keeps nothing across a crash (a missing fsync), a seed
/// of this list must end in a violation found by the checker itself (openraft's debug
/// assertions also fire, but release builds have none). The search stops at the first catch;
/// the list is long so that a change of the code (which changes each seed's interleaving)
/// cannot make it miss by bad luck (10 seeds once missed).
#[test]
fn planted_bug_is_caught() {
    assert!(
        first_catch(Bug::WipeOnCrash, false, true, 1..=40).is_some(),
        "a store that loses everything on a crash went unnoticed"
    );
}

/// A missing fsync: a node reports appends durable before its (simulated) disk synced them, so a
/// crash loses entries it had acknowledged, and a committed entry can vanish or change.
#[test]
fn planted_missing_sync_is_caught() {
    assert!(
        first_catch(Bug::ReportBeforeSync, false, true, 1..=60).is_some(),
        "appends reported durable before their sync went unnoticed"
    );
}

/// The planted bug: acks=all answered once the leader has the write, before a majority
/// does. A leader that crashes or is cut off with such a write unreplicated loses it to the next
/// leader, and the checker must see an acknowledged write lost or moved within these seeds.
#[test]
fn planted_early_ack_is_caught() {
    assert!(
        first_catch(Bug::AckBeforeMajority, false, true, 1..=40).is_some(),
        "acknowledging before a majority had the write went unnoticed"
    );
}

/// A vote that is not persisted (the log kept) matters when a node restarts in the middle of an
/// election, so this variant runs schedules of millisecond crashes: the restarted node votes or
/// campaigns in a term it already voted in, which openraft's own invariant checks turn into a
/// panic. Under turmoil with tokio's unstable cfg (which the exact replays need) a task's panic
/// shuts its host's runtime down and tokio then aborts the process, so the schedules run in a
/// child process (`forgotten_vote_child`), and the catch is the child's report of a node's
/// panic, or of the checker's finding. `FJORD_SIM_FORGET_VOTE=n` tries n seeds.
#[test]
fn forgotten_vote() {
    let n = env_u64("FJORD_SIM_FORGET_VOTE").unwrap_or(6);
    let out = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "forgotten_vote_child", "--nocapture", "--test-threads=1"])
        .env(FORGET_VOTE_CHILD, n.to_string())
        .output()
        .expect("the child process runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let panicked = stderr.contains("a simulated node panicked");
    let found = stdout.contains("ForgetVoteOnCrash caught by seed");
    assert!(panicked || found, "a forgotten vote went unnoticed by {n} seeds ({}):\n{stdout}\n{stderr}", out.status);
}

/// Set (to the number of seeds) by `forgotten_vote` for the child it starts.
const FORGET_VOTE_CHILD: &str = "FJORD_SIM_FORGET_VOTE_CHILD";

/// The schedules of `forgotten_vote`, run only in the child process it starts (which this
/// variable tells); in a test run of its own it has nothing to do.
#[test]
fn forgotten_vote_child() {
    let Some(n) = env_u64(FORGET_VOTE_CHILD) else { return };
    // A node's panic ends this process before this returns; the checker's finding returns.
    assert!(first_catch(Bug::ForgetVoteOnCrash, true, false, 1..=n).is_some(), "nothing caught in {n} seeds");
}
