//! Keeps a node's partition groups in step with the applied cluster metadata, and tells the
//! controller which partitions this node leads.
//!
//! The applier is level-triggered: on every change of the applied metadata (and on start) it
//! compares the partitions whose replicas include this node with the groups running here,
//! starts the missing ones (every replica initializes the group with the same membership, which
//! openraft allows; after the first start the refusal is the normal answer) and stops and deletes
//! those whose topic is gone. The reporter sends the leader, epoch (= term) and in-sync replicas
//! of the groups this node leads, whenever they differ from what the metadata records.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::{BasicNode, ServerState};

use crate::controller::{ClusterMetadata, Controller, LeadershipReport, Request, TaskGuard};
use crate::machine::NodeMachine;
use crate::node::ReplicaNode;
use crate::partition;
use crate::types::{GroupId, NodeId};

/// The log config of a topic's partitions, from the topic's configs.
pub type LogConfigFn = Box<dyn Fn(&BTreeMap<String, String>) -> fjord_storage::LogConfig + Send + Sync>;

/// A partition replica running on this node: its log, and the proposer its writes go through
/// while this node leads it.
#[derive(Clone)]
pub struct LocalReplica {
    pub log: Arc<fjord_storage::PartitionLog>,
    /// The log as the group's Raft log store (what a checker reads entries through).
    pub store: partition::PartitionLogStore,
    pub proposer: Arc<partition::produce::Proposer>,
}

/// The partition replicas this node runs, by group: filled and emptied by the applier, read by
/// the request handlers (with the group's Raft handle from the node's registry).
#[derive(Default)]
pub struct Replicas {
    by_group: RwLock<BTreeMap<GroupId, LocalReplica>>,
}

impl Replicas {
    /// Every replica running here, by group.
    pub fn all(&self) -> Vec<(GroupId, LocalReplica)> {
        self.by_group.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(g, r)| (*g, r.clone())).collect()
    }

    pub fn get(&self, group: GroupId) -> Option<LocalReplica> {
        self.by_group.read().unwrap_or_else(|e| e.into_inner()).get(&group).cloned()
    }

    fn insert(&self, group: GroupId, replica: LocalReplica) {
        self.by_group.write().unwrap_or_else(|e| e.into_inner()).insert(group, replica);
    }

    fn remove(&self, group: GroupId) -> Option<LocalReplica> {
        self.by_group.write().unwrap_or_else(|e| e.into_inner()).remove(&group)
    }
}

/// What the applier needs to open a partition's log and start its group.
pub struct ApplierConfig {
    /// This node's broker id.
    pub node_id: i32,
    /// This process's broker registration (`BrokerRegistration::incarnation`).
    pub incarnation: uuid::Uuid,
    /// Where partition directories go.
    pub data_dir: PathBuf,
    pub raft_config: Arc<openraft::Config>,
    pub log_config: LogConfigFn,
    /// Where the started replicas are published.
    pub replicas: Arc<Replicas>,
}

/// The directory of a partition replica: the group id keeps a recreated topic's replicas apart
/// from an old incarnation's (group ids are never reused).
pub fn partition_dir(data_dir: &std::path::Path, topic: &str, index: i32, group: GroupId) -> PathBuf {
    data_dir.join(format!("{topic}-{index}.g{group}"))
}

/// A partition this node should host.
struct Wanted {
    topic: String,
    index: i32,
    /// The group's first voters, should it be new: during a reassignment the original replicas
    /// (the leader adds the others).
    voters: Vec<i32>,
    configs: BTreeMap<String, String>,
    /// Whether the group has ever had a leader: a replica of it starting empty here may have
    /// lost a log that counted towards commits.
    had_leader: bool,
    /// No other node may be a voter of the group (its replicas, or during a reassignment its
    /// original replicas and those promoted since): there is no one to recover from.
    lone: bool,
    /// A replica a reassignment is adding here that its leader has not yet made a voter: it has
    /// never voted nor acknowledged an entry in the group's current membership, so it joins as
    /// a learner, from an empty log.
    learner: bool,
    /// The newest leader epoch (term) the metadata records for the group.
    leader_epoch: u64,
}

fn wanted(m: &ClusterMetadata, me: i32) -> BTreeMap<GroupId, Wanted> {
    m.partitions()
        .iter()
        .filter(|(_, p)| p.replicas.contains(&me))
        .map(|(g, p)| {
            let configs = m.topic(&p.topic).map(|t| t.configs.clone()).unwrap_or_default();
            let had_leader = p.leader.is_some() || p.leader_epoch > 0;
            let voters = p.original();
            let learner = !voters.contains(&me) && !p.promoted().contains(&me);
            let lone = voters.iter().chain(p.promoted()).all(|v| *v == me);
            let w = Wanted {
                topic: p.topic.clone(),
                index: p.index,
                voters,
                configs,
                had_leader,
                lone,
                learner,
                leader_epoch: u64::try_from(p.leader_epoch).unwrap_or(0),
            };
            (*g, w)
        })
        .collect()
}

/// Starts the applier, the reporter and the reassignment driver (`crate::reassign`); they stop
/// when the returned guards are dropped.
pub fn spawn(
    node: Arc<ReplicaNode<NodeMachine>>,
    controller: Arc<Controller<NodeMachine>>,
    config: ApplierConfig,
) -> Vec<TaskGuard> {
    let config_replicas = config.replicas.clone();
    let applier = {
        let (node, controller) = (node.clone(), controller.clone());
        TaskGuard::spawn(async move {
            let mut changes = controller.machine().subscribe();
            // The topic configs each running replica's log was last given.
            let mut configured = BTreeMap::new();
            let mut ready = false;
            let mut fresh_from = None;
            loop {
                ready = ready || metadata_caught_up(&controller, &config);
                if ready && fresh_from.is_none() {
                    let next_group = controller.machine().read(|m| m.next_group_id());
                    match fresh_groups_from(&config.data_dir, next_group).await {
                        Ok(g) => fresh_from = Some(g),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot record where this data dir's groups begin; starting no replica")
                        }
                    }
                }
                if let Some(fresh_from) = fresh_from {
                    reconcile(&node, &controller, &config, fresh_from, &mut configured).await;
                }
                tokio::select! {
                    biased;
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep(REPORT_INTERVAL), if fresh_from.is_none() => {}
                }
            }
        })
    };
    let reassigner = TaskGuard::spawn(crate::reassign::run(node.clone(), controller.clone(), config_replicas.clone()));
    let replicas = config_replicas;
    let reporter = TaskGuard::spawn(async move {
        let gained = node.leadership_gained().clone();
        loop {
            // A new leadership is reported at once: clients find the leader through the
            // metadata, so this is part of every failover's outage.
            tokio::select! {
                biased;
                _ = tokio::time::sleep(REPORT_INTERVAL) => {}
                _ = gained.notified() => {}
            }
            hold_pages_for_followers(&node, &replicas);
            report(&node, &controller, &replicas).await;
        }
    });
    vec![applier, reporter, reassigner]
}

/// Whether this node's metadata holds everything the controller quorum committed before this
/// process started: it has applied its own registration, which this process proposed, so it
/// is committed after all of that. Until then the applier starts, wipes and deletes no replica:
/// a node replaying the metadata log (after a restart, or with an empty disk) would otherwise
/// act on an old view, such as a partition before the records saying it has had a leader (an
/// empty replica would start as a full voter, `recovery`), or a replica being added before its
/// promotion (a voter's log would be wiped as a learner's), or before its reassignment (it
/// would be deleted as not placed here). (Openraft's own metrics cannot tell this after a
/// restart: a follower names its leader from its saved vote before hearing from it.)
fn metadata_caught_up(controller: &Controller<NodeMachine>, config: &ApplierConfig) -> bool {
    controller
        .machine()
        .read(|m| m.broker(config.node_id).is_some_and(|b| b.registration.incarnation == config.incarnation))
}

/// Removes everything in a replica directory but its recovery marker (synced); returns how
/// many entries went.
fn empty_but_marker(dir: &std::path::Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name() == crate::recovery::MARKER {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        removed += 1;
    }
    if removed > 0 {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(removed)
}

/// The file in a node's data dir that records the first group created after the data dir began.
const FRESH_GROUPS_FILE: &str = "replicas-fresh-from";

/// The first group id this data dir can tell it never held a replica of: read from
/// `FRESH_GROUPS_FILE`, or, on the first start with the metadata caught up, `next_group` written
/// there (and synced) before any replica starts.
///
/// Every group below it may have had a replica here before the data dir was lost, so one missing
/// here recovers before it votes. A group from it on was created while this data dir lived, and a
/// replica directory is made durable before the replica votes or acknowledges anything: one
/// missing never existed here (the node was down or behind when the group was created), and it
/// starts without recovering, taking the group's membership from its leader's log. (A node late to a new topic would otherwise wait to recover like a wiped
/// one, and with a wiped peer in the same group, two of three replicas would refuse every vote.)
/// Removing a replica directory by hand is a disk loss only if this file goes with it.
async fn fresh_groups_from(data_dir: &std::path::Path, next_group: GroupId) -> Result<GroupId, String> {
    let path = data_dir.join(FRESH_GROUPS_FILE);
    crate::rt::blocking(move || match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<GroupId>().map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fjord_storage::log::write_atomic(&path, next_group.to_string().as_bytes())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(next_group)
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    })
    .await?
}

/// Every registered broker's node-to-node address (`cluster_listen`).
pub(crate) fn cluster_addresses(m: &ClusterMetadata) -> BTreeMap<NodeId, String> {
    m.brokers()
        .values()
        .filter_map(|b| Some((NodeId::try_from(b.registration.node_id).ok()?, b.registration.cluster_address.clone())))
        .collect()
}

/// How often leadership is compared with the metadata (and reported when it differs).
const REPORT_INTERVAL: Duration = Duration::from_millis(200);

async fn reconcile(
    node: &Arc<ReplicaNode<NodeMachine>>,
    controller: &Controller<NodeMachine>,
    config: &ApplierConfig,
    fresh_from: GroupId,
    configured: &mut BTreeMap<GroupId, BTreeMap<String, String>>,
) {
    let (want, addresses) = controller.machine().read(|m| (wanted(m, config.node_id), cluster_addresses(m)));
    let known: BTreeSet<NodeId> = node.transport().peer_ids().into_iter().collect();
    for (id, addr) in &addresses {
        // An address given in the node's configuration wins.
        if !known.contains(id) {
            node.add_peer(*id, addr);
        }
    }
    let running: BTreeSet<GroupId> = node
        .registry()
        .all()
        .into_iter()
        .map(|(g, _)| g)
        .filter(|g| *g != crate::controller::CONTROLLER_GROUP)
        .collect();
    for (group, w) in &want {
        if running.contains(group) {
            // A topic config altered through the controller takes effect on every replica.
            if configured.get(group) != Some(&w.configs) {
                if let Some(replica) = config.replicas.get(*group) {
                    replica.log.set_config((config.log_config)(&w.configs));
                    configured.insert(*group, w.configs.clone());
                    tracing::info!(group, topic = %w.topic, partition = w.index, "topic configs applied");
                }
            }
            continue;
        }
        let dir = partition_dir(&config.data_dir, &w.topic, w.index, *group);
        // A replica that starts empty is either new to this node or lost its disk. For a group
        // created before this data dir began it cannot tell which, so it recovers before it
        // votes; a newer one it never held (`fresh_groups_from`). A lone
        // replica has no one to recover from: what its disk held is gone, and it starts empty,
        // as a Kafka partition with one replica does.
        let lone = w.lone;
        let existed = dir.exists();
        // A replica of a group that has had a leader, created here for the first time though the
        // group is newer than this data dir (`fresh_groups_from`): it never voted nor acknowledged
        // anything, so it need not recover; but the group's membership may have changed since it
        // began, so it must not set one up either. It waits for the leader's log.
        let late = w.had_leader && !lone && !w.learner && !existed && *group >= fresh_from;
        if lone && w.had_leader && !existed {
            tracing::warn!(group, topic = %w.topic, partition = w.index, "the only replica of a partition that has had a leader starts empty: its records are lost");
        }
        let recovering = if w.learner {
            // Not a voter of the group's current membership, but possibly of an earlier one:
            // this node may have held the group before, been moved off (its log deleted) and
            // now be added again. A candidate or a deposed leader still holding that earlier
            // membership would take this empty replica's vote or acknowledgements as the old
            // voter's, and could overwrite what was committed since. So it joins recovering:
            // no vote until a current leader's log has reached it, no entries from a leader
            // older than the newest term the metadata records for its group. (A reassignment
            // completes only once its membership is committed in its leader's term and that term
            // is recorded, `reassign`; any leader whose membership still has this node as a
            // voter is older.) A directory left from an earlier time it held the group (moved
            // off while down, or a crash mid catch-up) may hold a membership naming it a voter,
            // with which it would campaign; nothing in it is of use to the group now. It is marked first and emptied after, so a crash in between
            // (or a promotion recorded meanwhile) finds it still recovering.
            if let Err(e) = node.recovery().begin(*group, &dir) {
                tracing::error!(group, dir = %dir.display(), error = %e, "cannot mark a joining replica as recovering; not starting it");
                continue;
            }
            let old = dir.clone();
            match crate::rt::blocking(move || empty_but_marker(&old)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(_)) => {
                    tracing::warn!(group, dir = %dir.display(), "emptied an old replica of a partition this node rejoins as a learner")
                }
                Ok(Err(e)) => {
                    tracing::error!(group, dir = %dir.display(), error = %e, "cannot empty an old replica; not starting it");
                    continue;
                }
                Err(e) => {
                    tracing::error!(group, error = %e, "replica removal task failed");
                    continue;
                }
            }
            true
        } else if !lone && !existed && *group < fresh_from {
            // Whether or not the metadata records a leader yet: it learns of one only once the
            // leader has reported itself, and by then it may have committed entries with this
            // replica's help (`recovery::settle_replica`).
            if let Err(e) = node.recovery().begin(*group, &dir) {
                tracing::error!(group, dir = %dir.display(), error = %e, "cannot mark a replica as recovering; not starting it");
                continue;
            }
            true
        } else if lone {
            // A lone replica marked while it had peers (its topic was shrunk to one replica)
            // has no one left to recover from: held recovering it would never serve again.
            if node.recovery().resume_if_marked(*group, &dir) {
                match node.recovery().release(*group) {
                    Ok(_) => {
                        tracing::warn!(group, "the only replica of a partition was recovering; it serves what it has")
                    }
                    Err(e) => {
                        tracing::error!(group, error = %e, "cannot release the only replica of a partition from recovery");
                        continue;
                    }
                }
            }
            false
        } else {
            node.recovery().resume_if_marked(*group, &dir)
        };
        let opened = {
            let dir = dir.clone();
            let log_config = (config.log_config)(&w.configs);
            crate::rt::blocking(move || partition::open(&dir, log_config)).await
        };
        let (store, sm) = match opened {
            Ok(Ok((store, sm))) => {
                let log = store.log().clone();
                configured.insert(*group, w.configs.clone());
                config.replicas.insert(*group, LocalReplica { log, store: store.clone(), proposer: Arc::default() });
                (store, sm)
            }
            Ok(Err(e)) => {
                tracing::error!(group, topic = %w.topic, partition = w.index, error = %e, "cannot open a partition replica");
                continue;
            }
            Err(e) => {
                tracing::error!(group, error = %e, "partition open task failed");
                continue;
            }
        };
        let raft = match node.start_group(*group, config.raft_config.clone(), store, NodeMachine::Partition(sm)).await {
            Ok(r) => r,
            Err(e) => {
                config.replicas.remove(*group);
                tracing::error!(group, error = %e, "cannot start a partition group");
                continue;
            }
        };
        let members: BTreeMap<NodeId, BasicNode> = w
            .voters
            .iter()
            .filter_map(|r| {
                let id = NodeId::try_from(*r).ok()?;
                Some((id, BasicNode::new(addresses.get(&id).cloned().unwrap_or_default())))
            })
            .collect();
        // A recovering replica takes the membership from the leader with the log, once it has
        // learnt the newest term the group's other replicas have seen. (A learner is added by
        // the leader, `crate::reassign`: an initialized membership here would make it a voter
        // of a group that has other voters.)
        if recovering && w.learner {
            node.recovery().set_floor(*group, w.leader_epoch);
            tracing::info!(group, topic = %w.topic, partition = w.index, "replica waits to join as a learner");
        } else if recovering {
            // During a reassignment any listed node may be a voter; every one is asked, as
            // the metadata lists them at each round.
            let (listed, g) = (controller.machine().clone(), *group);
            let voters = move || {
                listed.read(|m| {
                    m.partition(g)
                        .map(|p| p.replicas.iter().filter_map(|r| NodeId::try_from(*r).ok()).collect())
                        .unwrap_or_default()
                })
            };
            if w.had_leader {
                tokio::spawn(crate::recovery::learn_floor(node.clone(), *group, voters));
            } else {
                tokio::spawn(crate::recovery::settle_replica(node.clone(), *group, voters, members));
            }
        } else if w.had_leader && !lone {
            // The group runs: the membership it has now comes with its leader's log (which a
            // replica holding a log has already). Setting one up from the metadata's view could
            // give this replica a first entry that differs from the others'.
            if late {
                tracing::info!(group, topic = %w.topic, partition = w.index, "a replica new to this node waits for its leader's log");
            }
        } else {
            if let Err(e) = raft.initialize(members).await {
                tracing::debug!(group, error = %e, "partition group already initialized");
            }
        }
        tracing::info!(group, topic = %w.topic, partition = w.index, "partition replica started");
    }
    // Groups of deleted topics and replicas moved off this node: stop them, and remove every
    // replica directory of a group the metadata allocated and does not place here (ids are
    // never reused; a group this node has not learnt of yet is above `next_group_id` and is
    // left alone). A reassignment lists a node until the group's membership has dropped it.
    let next_group = controller.machine().read(|m| m.next_group_id());
    let present: BTreeSet<GroupId> = want.keys().copied().collect();
    for group in running.difference(&want.keys().copied().collect()) {
        config.replicas.remove(*group);
        configured.remove(group);
        node.forget_group(*group);
        if let Some(raft) = node.registry().remove(*group) {
            let _ = raft.shutdown().await;
            tracing::info!(group, "partition replica stopped (no longer assigned here)");
        }
    }
    let data_dir = config.data_dir.clone();
    let gone = move || -> std::io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&data_dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
            // A replica directory being created with its recovery marker (`Recovery::begin`)
            // that a crash left behind: begin runs in this task, so none is in progress.
            if name
                .strip_suffix(".tmp")
                .and_then(|n| n.rsplit_once(".g"))
                .is_some_and(|(_, g)| g.parse::<GroupId>().is_ok())
            {
                std::fs::remove_dir_all(&path)?;
                removed.push(path);
                continue;
            }
            let Some(group) = name.rsplit_once(".g").and_then(|(_, g)| g.parse::<GroupId>().ok()) else {
                continue;
            };
            if group < next_group && !present.contains(&group) {
                std::fs::remove_dir_all(&path)?;
                removed.push(path);
            }
        }
        Ok(removed)
    };
    match crate::rt::blocking(gone).await {
        Ok(Ok(removed)) => {
            for path in removed {
                tracing::info!(dir = %path.display(), "removed the replica of a deleted partition");
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove replicas of deleted partitions"),
        Err(e) => tracing::warn!(error = %e, "replica removal task failed"),
    }
}

/// Tells each replica's log where its group's slowest follower stands, if this node leads the
/// group (`PartitionLog::hold_cached_from`): the log keeps the pages that follower has yet to
/// be sent. A follower left to have them read back from disk falls further behind with every
/// send, while the others (a majority without it) keep the leader writing.
fn hold_pages_for_followers(node: &ReplicaNode<NodeMachine>, replicas: &Replicas) {
    let me = node.id();
    for (group, replica) in replicas.all() {
        let held = node.registry().get(group).and_then(|raft| {
            let m = raft.metrics();
            let m = m.borrow_watched();
            if m.state != ServerState::Leader {
                return None;
            }
            // The next entry of the follower that has matched the least (none: from the start).
            let next = m
                .replication
                .as_ref()?
                .iter()
                .filter(|(n, _)| **n != me)
                .map(|(_, matched)| matched.as_ref().map_or(0, |l| l.index() + 1))
                .min()?;
            replica.log.raft_entry_span(next).map(|span| span.base_offset)
        });
        replica.log.hold_cached_from(held);
    }
}

/// Reports the groups this node leads whose leader, epoch or ISR the metadata does not show.
async fn report(node: &ReplicaNode<NodeMachine>, controller: &Controller<NodeMachine>, replicas: &Replicas) {
    let my_id = node.id();
    let Ok(reporter) = i32::try_from(my_id) else { return };
    let mut reports = Vec::new();
    for (group, raft) in node.registry().all() {
        if group == crate::controller::CONTROLLER_GROUP {
            continue;
        }
        let m = raft.metrics().borrow_watched().clone();
        if m.state != ServerState::Leader {
            continue;
        }
        let Ok(epoch) = i32::try_from(m.current_term) else { continue };
        let isr: Vec<i32> = match replicas.get(group) {
            Some(r) => r.proposer.in_sync(&raft, my_id).into_iter().filter_map(|n| i32::try_from(n).ok()).collect(),
            None => continue,
        };
        // A fenced broker is not in sync (KIP-841): the controller refuses a report naming one,
        // which would keep this leadership unrecorded (and a reassignment from completing).
        let isr: Vec<i32> = controller
            .machine()
            .read(|m| isr.into_iter().filter(|b| m.broker(*b).is_some_and(|b| !b.fenced)).collect());
        let recorded = controller.machine().read(|m| {
            m.partition(group).map(|p| p.leader == Some(reporter) && p.leader_epoch == epoch && p.isr == isr)
        });
        if recorded == Some(false) {
            reports.push(LeadershipReport { group_id: group, leader_epoch: epoch, isr });
        }
    }
    if reports.is_empty() {
        return;
    }
    match controller.submit(Request::ReportLeadership { reporter, partitions: reports }, REPORT_INTERVAL * 10).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "leadership report refused"),
        Err(e) => tracing::debug!(error = %e, "leadership report not delivered"),
    }
}
