//! The classic consumer group coordinator: membership, the rebalance state
//! machine (Empty → PreparingRebalance → CompletingRebalance → Stable),
//! session expiry, and committed offsets. Offsets and group generations are
//! records in the internal `__consumer_offsets` topic, replayed on start.
//! Offsets committed inside a transaction (TxnOffsetCommit) are written as
//! transactional records and stay pending until the marker that ends the
//! transaction lands in the same partition.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fjord_replication::partition::produce::ProduceError;
use fjord_storage::batch::{build_batch, build_batch_as, Producer};
use fjord_storage::{AppendInfo, PartitionLog};
use kafka_protocol::error::ResponseError;
use tokio::sync::oneshot;

use crate::coordinator::offsets_log::{self, offset_tombstone, OffsetsRecord};
use crate::internal_topic;
use crate::leadership::{coordinator_error, LeaderGuard, Leadership, NO_EPOCH};
use crate::server::now_ms;
use crate::topics::Topics;

/// Whether this node leads a partition of `__consumer_offsets` at an epoch, now.
pub type LeadershipCheck = Box<dyn Fn(i32, i32) -> bool + Send + Sync>;

/// How long a replicated coordinator write may take before its requester is answered
/// REQUEST_TIMED_OUT (the write itself goes on).
const REPLICATED_WRITE_WAIT: Duration = Duration::from_secs(15);

/// A coordinator write on its way to the log: appended to this node's log (to sync when the
/// answer must be durable), or queued to the partition's Raft group (durable once committed).
pub(crate) enum Written {
    Local(Arc<PartitionLog>, i64),
    Replicated(oneshot::Receiver<Result<AppendInfo, ProduceError>>),
}

impl Written {
    /// Waits until the write is as durable as the answer needs: the local fsync when `durable`,
    /// or the replicas' commit (always).
    pub(crate) async fn settled(self, durable: bool) -> Result<(), ResponseError> {
        match self {
            Written::Local(log, upto) if durable => log.sync(upto).await.map_err(|_| ResponseError::KafkaStorageError),
            Written::Local(..) => Ok(()),
            Written::Replicated(rx) => match tokio::time::timeout(REPLICATED_WRITE_WAIT, rx).await {
                Ok(Ok(Ok(_))) => Ok(()),
                Ok(Ok(Err(ProduceError::Log(fjord_storage::LogError::InvalidProducerEpoch { .. })))) => {
                    Err(ResponseError::ProducerFenced)
                }
                Ok(Ok(Err(ProduceError::Log(fjord_storage::LogError::CoordinatorFenced { .. })))) => {
                    Err(ResponseError::TransactionCoordinatorFenced)
                }
                // Leadership moved (or the group stopped): the client finds the new coordinator.
                Ok(Ok(Err(ProduceError::NotLeader))) | Ok(Err(_)) => Err(ResponseError::NotCoordinator),
                Ok(Ok(Err(ProduceError::TimedOut(_)))) | Err(_) => Err(ResponseError::RequestTimedOut),
                Ok(Ok(Err(e))) => {
                    tracing::error!(error = %e, "cannot write to {OFFSETS_TOPIC}");
                    Err(ResponseError::KafkaStorageError)
                }
            },
        }
    }
}

pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Kafka's group.min.session.timeout.ms and group.max.session.timeout.ms.
const MIN_SESSION_MS: i32 = 6_000;
const MAX_SESSION_MS: i32 = 1_800_000;
/// Kafka's offset.metadata.max.bytes.
const MAX_METADATA_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// What a JoinGroup call gets back.
#[derive(Debug, Clone, Default)]
pub struct JoinResult {
    pub error: Option<ResponseError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only: (member id, instance id, metadata).
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    fn error(e: ResponseError, member_id: &str) -> Self {
        JoinResult { error: Some(e), generation: -1, member_id: member_id.to_string(), ..Default::default() }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SyncResult {
    pub error: Option<ResponseError>,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    fn error(e: ResponseError) -> Self {
        SyncResult { error: Some(e), ..Default::default() }
    }
}

pub struct Member {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    last_seen: Instant,
    join_tx: Option<oneshot::Sender<JoinResult>>,
    sync_tx: Option<oneshot::Sender<SyncResult>>,
}

impl Member {
    pub fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols.iter().find(|(n, _)| n == protocol).map(|(_, m)| m.clone()).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_ms: i64,
}

pub struct Group {
    pub state: GroupState,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, awaiting their join.
    pending: HashMap<String, Instant>,
    pub offsets: BTreeMap<(String, i32), CommittedOffset>,
    /// Bumped whenever a rebalance starts or ends, so stale timers do nothing.
    rebalance_seq: u64,
    /// Wall clock when the group last became empty (offsets expire from it).
    empty_since_ms: i64,
    /// Static members (KIP-345): group.instance.id → member id.
    pub instances: HashMap<String, String>,
    /// While the first join of an empty group is held back
    /// (`group.initial.rebalance.delay.ms`): how long it may be extended.
    initial_join_deadline: Option<Instant>,
    /// A new member joined a never-balanced group during that delay, so
    /// the delay is extended once more (Kafka's `newMemberAdded`).
    new_member_added: bool,
}

impl Group {
    fn new() -> Self {
        Group {
            state: GroupState::Empty,
            protocol_type: None,
            protocol: None,
            generation: 0,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            offsets: BTreeMap::new(),
            rebalance_seq: 0,
            empty_since_ms: now_ms(),
            instances: HashMap::new(),
            initial_join_deadline: None,
            new_member_added: false,
        }
    }
}

/// An answer now, or a channel on which it will come (when a rebalance
/// phase completes).
pub enum Reply<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

pub struct JoinRequest {
    pub group_id: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// v4+: a first join without a member id is answered MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
}

/// An offset committed in a still-open transaction.
#[derive(Debug, Clone)]
struct PendingOffset {
    /// Partition of `__consumer_offsets` the record went to.
    log_partition: i32,
    /// The producer epoch it was written with.
    producer_epoch: i16,
    group: String,
    topic: String,
    partition: i32,
    offset: Option<CommittedOffset>,
}

pub struct GroupCoordinator {
    groups: Mutex<HashMap<String, Group>>,
    /// Transactional offset commits by producer id, until their marker.
    pending_txn: Mutex<HashMap<i64, Vec<PendingOffset>>>,
    partitions: AtomicI32,
    /// In a cluster, the partitions of `__consumer_offsets` this node leads and has loaded,
    /// with the leader epoch it loaded them at: only their groups are served here. None on a
    /// single node, which serves every group.
    serving: Option<Mutex<HashMap<i32, i32>>>,
    /// In a cluster: whether this node leads partition `p` at epoch `e` now (and so may serve
    /// the groups it loaded at `e`); set once the broker exists.
    leads_now: std::sync::OnceLock<LeadershipCheck>,
    /// Kafka's `group.initial.rebalance.delay.ms`.
    initial_rebalance_delay: Duration,
}

/// Java's String.hashCode, so groups land on the partition Kafka would pick.
pub(crate) fn java_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32))
}

impl GroupCoordinator {
    /// Creates `__consumer_offsets` if needed and replays it.
    pub fn open(topics: &Topics, partitions: i32) -> anyhow::Result<GroupCoordinator> {
        let partitions = internal_topic::ensure(topics, OFFSETS_TOPIC, partitions)?;
        let coord = GroupCoordinator {
            groups: Mutex::new(HashMap::new()),
            pending_txn: Mutex::new(HashMap::new()),
            partitions: AtomicI32::new(partitions),
            serving: None,
            leads_now: std::sync::OnceLock::new(),
            initial_rebalance_delay: Duration::ZERO,
        };
        for p in 0..partitions {
            if let Ok(leader) = topics.lead(OFFSETS_TOPIC, p, NO_EPOCH) {
                // A failed migration stops the start: serving with old and
                // new records side by side would let compaction drop a new
                // tombstone while the old record it shadows stays, bringing
                // deleted offsets back on a later start. Nothing is lost by
                // stopping: the old records are all still there.
                if coord.replay(&leader.log, p)? {
                    coord
                        .migrate(&leader, p)
                        .map_err(|e| anyhow::anyhow!("cannot migrate {OFFSETS_TOPIC} partition {p}: {e}"))?;
                }
            }
        }
        Ok(coord)
    }

    /// The coordinator of a cluster node: `__consumer_offsets` is a replicated topic of the
    /// cluster with `partitions` partitions, and this node serves the groups of the partitions
    /// it leads, from the time it loaded them (`take_over`) until it no longer leads them
    /// (`give_up`).
    pub fn clustered(partitions: i32) -> GroupCoordinator {
        GroupCoordinator {
            groups: Mutex::new(HashMap::new()),
            pending_txn: Mutex::new(HashMap::new()),
            partitions: AtomicI32::new(partitions.max(1)),
            serving: Some(Mutex::new(HashMap::new())),
            leads_now: std::sync::OnceLock::new(),
            initial_rebalance_delay: Duration::ZERO,
        }
    }

    pub fn partitions(&self) -> i32 {
        self.partitions.load(Ordering::Relaxed)
    }

    /// The partition count of the cluster's `__consumer_offsets` as created (it may have been
    /// created by a node configured with another count).
    pub fn set_partitions(&self, partitions: i32) {
        self.partitions.store(partitions.max(1), Ordering::Relaxed);
    }

    fn serving(&self) -> Option<MutexGuard<'_, HashMap<i32, i32>>> {
        self.serving.as_ref().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether this node coordinates `group` now: NOT_COORDINATOR sends the client to look the
    /// coordinator up again.
    pub fn serves(&self, group: &str) -> Result<(), ResponseError> {
        let p = self.partition_for(group);
        let loaded = match self.serving() {
            None => return Ok(()),
            Some(s) => s.get(&p).copied(),
        };
        match (loaded, self.leads_now.get()) {
            (None, _) => Err(ResponseError::NotCoordinator),
            // Loaded, but this node cannot serve the partition at that epoch right now (it is
            // cut off from its followers, or another term began): the group is kept loaded,
            // and the client looks the coordinator up again.
            (Some(epoch), Some(leads)) if !leads(p, epoch) => Err(ResponseError::NotCoordinator),
            _ => Ok(()),
        }
    }

    /// Sets the check `serves` makes of live leadership (a cluster's broker sets it).
    pub fn set_leadership_check(&self, check: LeadershipCheck) {
        let _ = self.leads_now.set(check);
    }

    /// The leader epoch at which partition `p` was loaded, when it is served here.
    pub fn serving_epoch(&self, p: i32) -> Option<i32> {
        self.serving().and_then(|s| s.get(&p).copied())
    }

    /// Starts serving partition `p`, which this node now leads at `epoch`: its groups are
    /// rebuilt from `log` (whatever was in memory for them is dropped first).
    pub fn take_over(&self, p: i32, epoch: i32, log: &PartitionLog) -> anyhow::Result<()> {
        self.give_up(p);
        self.replay(log, p)?;
        if let Some(mut s) = self.serving() {
            s.insert(p, epoch);
        }
        tracing::info!(partition = p, epoch, "coordinating the groups of {OFFSETS_TOPIC} partition {p}");
        Ok(())
    }

    /// Stops serving partition `p` and forgets its groups (another node leads it now). Members
    /// waiting for a rebalance get NOT_COORDINATOR.
    pub fn give_up(&self, p: i32) {
        let was = self.serving().and_then(|mut s| s.remove(&p));
        let dropped: Vec<Group> = {
            let mut groups = self.lock();
            let ids: Vec<String> = groups.keys().filter(|g| self.partition_for(g) == p).cloned().collect();
            ids.into_iter().filter_map(|g| groups.remove(&g)).collect()
        };
        for mut g in dropped {
            for m in g.members.values_mut() {
                if let Some(tx) = m.join_tx.take() {
                    let _ = tx.send(JoinResult::error(ResponseError::NotCoordinator, &m.member_id));
                }
                if let Some(tx) = m.sync_tx.take() {
                    let _ = tx.send(SyncResult::error(ResponseError::NotCoordinator));
                }
            }
        }
        self.pending().retain(|_, list| {
            list.retain(|o| o.log_partition != p);
            !list.is_empty()
        });
        if was.is_some() {
            tracing::info!(partition = p, "no longer coordinating the groups of {OFFSETS_TOPIC} partition {p}");
        }
    }

    /// Sets `group.initial.rebalance.delay.ms`: the first rebalance of an
    /// empty group waits this long for the members that start with the
    /// first one, so they land in one generation instead of one each.
    pub fn with_initial_rebalance_delay(mut self, delay: Duration) -> Self {
        self.initial_rebalance_delay = delay;
        self
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Group>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn partition_for(&self, group: &str) -> i32 {
        (java_hash(group) & 0x7fff_ffff) % self.partitions().max(1)
    }

    /// Replays one partition; true if it held records of the old JSON format.
    fn replay(&self, log: &PartitionLog, log_partition: i32) -> anyhow::Result<bool> {
        let mut legacy_seen = false;
        internal_topic::replay(log, |batch, r| {
            if batch.is_control() {
                // Key: version (2 bytes), type (2 bytes: 0 abort, 1 commit).
                // (A replicated log also holds Raft's own control batches: leader changes and
                // memberships, of other types.)
                if let Some(k) = r.key.as_ref().filter(|k| k.len() >= 4 && k[2] == 0 && k[3] <= 1) {
                    self.complete_txn(batch.producer_id, batch.producer_epoch, k[3] == 1, log_partition);
                }
                return;
            }
            let Some(key) = r.key.as_deref() else { return };
            let (record, legacy) = offsets_log::decode(key, r.value.as_deref());
            legacy_seen |= legacy;
            let Some(record) = record else { return };
            if batch.is_transactional() {
                if let OffsetsRecord::Offset { group, topic, partition, value } = record {
                    let p = PendingOffset {
                        log_partition,
                        producer_epoch: batch.producer_epoch,
                        group,
                        topic,
                        partition,
                        offset: value,
                    };
                    self.pending().entry(batch.producer_id).or_default().push(p);
                }
                return;
            }
            apply_record(&mut self.lock(), record);
        })?;
        Ok(legacy_seen)
    }

    /// Rewrites partition `p`'s live state in Kafka's format (committed
    /// offsets, group generations, offsets of open transactions) and drops
    /// the old JSON records (see `internal_topic::migrate`).
    fn migrate(&self, leader: &LeaderGuard, p: i32) -> anyhow::Result<()> {
        let mut rewrite = internal_topic::Rewrite::default();
        for (gid, g) in self.lock().iter().filter(|(gid, _)| self.partition_for(gid) == p) {
            if g.generation > 0 || g.protocol_type.is_some() {
                rewrite.records.push(offsets_log::group_record(gid, g));
            }
            for ((topic, partition), c) in &g.offsets {
                rewrite.records.push(offsets_log::offset_record(gid, topic, *partition, c));
            }
        }
        for (producer_id, list) in self.pending().iter() {
            let mut by_epoch: BTreeMap<i16, Vec<offsets_log::KeyValue>> = BTreeMap::new();
            for o in list.iter().filter(|o| o.log_partition == p) {
                by_epoch.entry(o.producer_epoch).or_default().push(match &o.offset {
                    Some(c) => offsets_log::offset_record(&o.group, &o.topic, o.partition, c),
                    None => offsets_log::offset_tombstone(&o.group, &o.topic, o.partition),
                });
            }
            rewrite.open_txns.extend(by_epoch.into_iter().map(|(epoch, records)| ((*producer_id, epoch), records)));
        }
        let records = rewrite.records.len();
        internal_topic::migrate(&leader.log, leader.epoch, &rewrite)?;
        tracing::info!(partition = p, records, "migrated {OFFSETS_TOPIC} partition to Kafka's record format");
        Ok(())
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<i64, Vec<PendingOffset>>> {
        self.pending_txn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes offsets committed inside a producer's transaction. They take
    /// effect when the transaction commits (`complete_txn`).
    pub async fn txn_commit(
        &self,
        topics: &dyn Leadership,
        group_id: &str,
        producer: (i64, i16),
        offsets: Vec<(String, i32, CommittedOffset)>,
        durable: bool,
    ) -> Vec<Option<ResponseError>> {
        self.write_offsets(topics, group_id, offsets, Some(producer), durable).await
    }

    /// The marker of `producer_id`'s transaction landed in partition
    /// `log_partition` of `__consumer_offsets`: its offsets there apply
    /// (commit) or vanish (abort).
    ///
    /// Offsets of a later producer epoch than the marker's are another transaction's, still
    /// open, and stay pending.
    pub fn complete_txn(&self, producer_id: i64, producer_epoch: i16, commit: bool, log_partition: i32) {
        let done: Vec<PendingOffset> = {
            let mut pending = self.pending();
            let Some(list) = pending.get_mut(&producer_id) else { return };
            let (done, rest): (Vec<_>, Vec<_>) =
                list.drain(..).partition(|p| p.log_partition == log_partition && p.producer_epoch <= producer_epoch);
            // Only offsets of the marker's own epoch are its transaction's and apply on a
            // commit; an older epoch's were a fenced instance's, and go either way.
            let done: Vec<PendingOffset> = done.into_iter().filter(|p| p.producer_epoch == producer_epoch).collect();
            if rest.is_empty() {
                pending.remove(&producer_id);
            } else {
                *list = rest;
            }
            done
        };
        if !commit {
            return;
        }
        let mut groups = self.lock();
        for p in done {
            let record =
                OffsetsRecord::Offset { group: p.group, topic: p.topic, partition: p.partition, value: p.offset };
            apply_record(&mut groups, record);
        }
    }

    /// Whether an open transaction holds an offset for this partition
    /// (OffsetFetch with require_stable answers UNSTABLE_OFFSET_COMMIT).
    pub fn has_pending(&self, group: &str, topic: &str, partition: i32) -> bool {
        self.pending().values().flatten().any(|p| p.group == group && p.topic == topic && p.partition == partition)
    }

    /// Appends records for `group` to its partition of `__consumer_offsets`
    /// and returns the log and offset to sync to.
    fn persist(
        &self,
        topics: &dyn Leadership,
        group: &str,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<Written, ResponseError> {
        self.persist_as(topics, group, records, None)
    }

    /// `persist`, as a transactional batch of `producer` when given.
    fn persist_as(
        &self,
        topics: &dyn Leadership,
        group: &str,
        records: &[(Vec<u8>, Option<Vec<u8>>)],
        producer: Option<(i64, i16)>,
    ) -> Result<Written, ResponseError> {
        let p = self.partition_for(group);
        let LeaderGuard { log, epoch: leader_epoch, raft } =
            topics.lead(OFFSETS_TOPIC, p, NO_EPOCH).map_err(coordinator_error)?;
        let kv: Vec<fjord_storage::batch::KeyValue<'_>> =
            records.iter().map(|(k, v)| (Some(k.as_slice()), v.as_deref())).collect();
        let batch = match producer {
            None => build_batch(0, now_ms(), &kv),
            Some((id, epoch)) => {
                let p = Producer { id, epoch, base_sequence: -1, transactional: true };
                build_batch_as(0, now_ms(), &kv, Some(p))
            }
        };
        if self.serving.is_some() {
            // In a cluster, only through the partition's group, and only at the epoch this
            // node loaded the partition at: what is in memory was decided in that term.
            let loaded = self.serving_epoch(p).ok_or(ResponseError::NotCoordinator)?;
            let w = raft.filter(|_| loaded == leader_epoch).ok_or(ResponseError::NotCoordinator)?;
            return Ok(Written::Replicated(w.proposer.enqueue(&w.raft, &log, batch, loaded, REPLICATED_WRITE_WAIT)));
        }
        let appended = match producer {
            None => log.append(&batch, leader_epoch, now_ms()),
            Some(_) => log.append_from_coordinator(&batch, leader_epoch, now_ms()),
        };
        let info = appended.map_err(|e| match e {
            fjord_storage::LogError::InvalidProducerEpoch { .. } => ResponseError::ProducerFenced,
            e => {
                tracing::error!(group, error = %e, "cannot write to {OFFSETS_TOPIC}");
                ResponseError::KafkaStorageError
            }
        })?;
        Ok(Written::Local(log, info.last_offset + 1))
    }

    fn group_record(group_id: &str, g: &Group) -> (Vec<u8>, Option<Vec<u8>>) {
        offsets_log::group_record(group_id, g)
    }

    pub fn join(self: &Arc<Self>, req: JoinRequest) -> Reply<JoinResult> {
        if req.group_id.is_empty() {
            return Reply::Now(JoinResult::error(ResponseError::InvalidGroupId, &req.member_id));
        }
        if let Err(e) = self.serves(&req.group_id) {
            return Reply::Now(JoinResult::error(e, &req.member_id));
        }
        if !(MIN_SESSION_MS..=MAX_SESSION_MS).contains(&req.session_timeout_ms) {
            return Reply::Now(JoinResult::error(ResponseError::InvalidSessionTimeout, &req.member_id));
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return Reply::Now(JoinResult::error(ResponseError::InconsistentGroupProtocol, &req.member_id));
        }
        let mut groups = self.lock();
        if !req.member_id.is_empty() && !groups.contains_key(&req.group_id) {
            return Reply::Now(JoinResult::error(ResponseError::UnknownMemberId, &req.member_id));
        }
        let group = groups.entry(req.group_id.clone()).or_insert_with(Group::new);
        if group.state != GroupState::Empty || !group.members.is_empty() {
            if group.protocol_type.as_deref().is_some_and(|t| t != req.protocol_type) {
                return Reply::Now(JoinResult::error(ResponseError::InconsistentGroupProtocol, &req.member_id));
            }
            // Every member must share at least one protocol with the group.
            let shared = group
                .members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| req.protocols.iter().any(|(r, _)| r == n)));
            if !shared {
                return Reply::Now(JoinResult::error(ResponseError::InconsistentGroupProtocol, &req.member_id));
            }
        }
        let now = Instant::now();
        // Static members (group.instance.id) are known by their instance id:
        // a restart rejoins with no member id and takes its old place.
        let mut static_rejoin = false;
        // The leader as members know it; a restarted static leader is told
        // the old id, so it does not run an assignment a stable group would
        // never hand out (what Kafka does too).
        let announced_leader = group.leader.clone().unwrap_or_default();
        let member_id = if let Some(iid) = &req.instance_id {
            match group.instances.get(iid).cloned() {
                Some(current) if !req.member_id.is_empty() && req.member_id != current => {
                    return Reply::Now(JoinResult::error(ResponseError::FencedInstanceId, &req.member_id));
                }
                Some(current) if req.member_id.is_empty() => {
                    let id = format!("{iid}-{}", uuid::Uuid::new_v4());
                    if let Some(mut m) = group.members.remove(&current) {
                        // Whoever still runs under the old id is fenced.
                        if let Some(tx) = m.join_tx.take() {
                            let _ = tx.send(JoinResult::error(ResponseError::FencedInstanceId, &current));
                        }
                        if let Some(tx) = m.sync_tx.take() {
                            let _ = tx.send(SyncResult::error(ResponseError::FencedInstanceId));
                        }
                        m.member_id = id.clone();
                        group.members.insert(id.clone(), m);
                    }
                    if group.leader.as_deref() == Some(current.as_str()) {
                        group.leader = Some(id.clone());
                    }
                    group.instances.insert(iid.clone(), id.clone());
                    static_rejoin = true;
                    id
                }
                Some(current) => current,
                None if req.member_id.is_empty() => {
                    let id = format!("{iid}-{}", uuid::Uuid::new_v4());
                    group.instances.insert(iid.clone(), id.clone());
                    id
                }
                None => return Reply::Now(JoinResult::error(ResponseError::UnknownMemberId, &req.member_id)),
            }
        } else if req.member_id.is_empty() {
            let id = format!("{}-{}", req.client_id, uuid::Uuid::new_v4());
            if req.require_known_member_id {
                group.pending.insert(id.clone(), now);
                return Reply::Now(JoinResult::error(ResponseError::MemberIdRequired, &id));
            }
            id
        } else {
            req.member_id.clone()
        };
        let known = group.members.contains_key(&member_id);
        if !known
            && group.pending.remove(&member_id).is_none()
            && !req.member_id.is_empty()
            && req.instance_id.is_none()
        {
            return Reply::Now(JoinResult::error(ResponseError::UnknownMemberId, &member_id));
        }
        let (tx, rx) = oneshot::channel();
        if let Some(m) = group.members.get_mut(&member_id) {
            let unchanged = m.protocols == req.protocols;
            m.last_seen = now;
            // A follower re-joining a stable group with nothing new gets the
            // current generation back without disturbing anyone (a leader
            // rejoin rebalances, so it sees the members it must assign). A
            // restarted static member's metadata differs (it owns nothing
            // yet); like Kafka, only a protocol it cannot speak forces a round.
            let speaks_current = group.protocol.as_ref().is_some_and(|p| req.protocols.iter().any(|(n, _)| n == p));
            let is_leader = group.leader.as_deref() == Some(member_id.as_str());
            let quiet = (unchanged && !is_leader) || (static_rejoin && speaks_current);
            if quiet && group.state == GroupState::Stable {
                if static_rejoin {
                    m.protocols = req.protocols;
                    m.session_timeout = Duration::from_millis(req.session_timeout_ms as u64);
                }
                return Reply::Now(JoinResult {
                    error: None,
                    generation: group.generation,
                    protocol_type: group.protocol_type.clone(),
                    protocol_name: group.protocol.clone(),
                    leader: announced_leader,
                    member_id,
                    members: vec![],
                });
            }
            m.protocols = req.protocols;
            m.session_timeout = Duration::from_millis(req.session_timeout_ms as u64);
            m.rebalance_timeout = Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64);
            m.join_tx = Some(tx);
        } else {
            // Only a group that never had a generation extends its first
            // delay (Kafka checks generation 0); an emptied group that
            // comes back waits one delay.
            if group.state == GroupState::PreparingRebalance && group.generation == 0 {
                group.new_member_added = true;
            }
            group.members.insert(
                member_id.clone(),
                Member {
                    member_id: member_id.clone(),
                    instance_id: req.instance_id,
                    client_id: req.client_id,
                    client_host: req.client_host,
                    session_timeout: Duration::from_millis(req.session_timeout_ms as u64),
                    rebalance_timeout: Duration::from_millis(req.rebalance_timeout_ms.max(0) as u64),
                    protocols: req.protocols,
                    assignment: Bytes::new(),
                    last_seen: now,
                    join_tx: Some(tx),
                    sync_tx: None,
                },
            );
        }
        group.protocol_type = Some(req.protocol_type);
        if group.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(&req.group_id, group);
        }
        self.maybe_complete_join(&req.group_id, group);
        Reply::Later(rx)
    }

    fn prepare_rebalance(self: &Arc<Self>, group_id: &str, group: &mut Group) {
        let initial = group.state == GroupState::Empty && !self.initial_rebalance_delay.is_zero();
        group.state = GroupState::PreparingRebalance;
        group.rebalance_seq += 1;
        // Members waiting in SyncGroup learn that a new round has started.
        for m in group.members.values_mut() {
            if let Some(tx) = m.sync_tx.take() {
                let _ = tx.send(SyncResult::error(ResponseError::RebalanceInProgress));
            }
        }
        let timeout = group.members.values().map(|m| m.rebalance_timeout).max().unwrap_or(Duration::from_secs(60));
        let seq = group.rebalance_seq;
        if initial {
            // The join completes when the delay ends, not when everyone
            // known has joined: the point is to wait for the unknown ones.
            // Each new member extends it, up to the rebalance timeout.
            group.initial_join_deadline = Some(Instant::now() + timeout);
            group.new_member_added = false;
            self.schedule_initial_join(group_id, seq, self.initial_rebalance_delay);
            return;
        }
        group.initial_join_deadline = None;
        let coord = self.clone();
        let gid = group_id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            coord.rebalance_timed_out(&gid, seq);
        });
    }

    fn schedule_initial_join(self: &Arc<Self>, group_id: &str, seq: u64, delay: Duration) {
        let coord = self.clone();
        let gid = group_id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            coord.initial_delay_ended(&gid, seq);
        });
    }

    fn initial_delay_ended(self: &Arc<Self>, group_id: &str, seq: u64) {
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(group_id) else { return };
        if g.rebalance_seq != seq || g.state != GroupState::PreparingRebalance {
            return;
        }
        let now = Instant::now();
        match g.initial_join_deadline {
            Some(deadline) if g.new_member_added && now < deadline => {
                g.new_member_added = false;
                self.schedule_initial_join(group_id, seq, self.initial_rebalance_delay.min(deadline - now));
            }
            _ => self.complete_join(group_id, g),
        }
    }

    fn rebalance_timed_out(self: &Arc<Self>, group_id: &str, seq: u64) {
        let mut groups = self.lock();
        if let Some(g) = groups.get_mut(group_id) {
            if g.rebalance_seq == seq && g.state == GroupState::PreparingRebalance {
                self.complete_join(group_id, g);
            }
        }
    }

    fn maybe_complete_join(self: &Arc<Self>, group_id: &str, group: &mut Group) {
        if group.state == GroupState::PreparingRebalance
            && group.initial_join_deadline.is_none()
            && group.members.values().all(|m| m.join_tx.is_some())
        {
            self.complete_join(group_id, group);
        }
    }

    /// Ends the join phase: members that did not rejoin are dropped, a new
    /// generation starts, and every waiting member gets its answer.
    fn complete_join(self: &Arc<Self>, group_id: &str, group: &mut Group) {
        group.initial_join_deadline = None;
        group.new_member_added = false;
        group.members.retain(|_, m| m.join_tx.is_some());
        prune_instances(group);
        group.generation += 1;
        group.rebalance_seq += 1;
        if group.members.is_empty() {
            group.state = GroupState::Empty;
            group.protocol = None;
            group.leader = None;
            group.empty_since_ms = now_ms();
            tracing::info!(group = group_id, generation = group.generation, "group is empty");
            return;
        }
        // Each member votes for its most preferred protocol that all support.
        let candidates: HashSet<String> = group
            .members
            .values()
            .map(|m| m.protocols.iter().map(|(n, _)| n.clone()).collect::<HashSet<_>>())
            .reduce(|a, b| a.intersection(&b).cloned().collect())
            .unwrap_or_default();
        let mut votes: BTreeMap<String, usize> = BTreeMap::new();
        for m in group.members.values() {
            if let Some((n, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n)) {
                *votes.entry(n.clone()).or_default() += 1;
            }
        }
        let protocol = votes.iter().max_by_key(|(_, v)| **v).map(|(n, _)| n.clone());
        group.protocol = protocol.clone();
        if group.leader.as_ref().is_none_or(|l| !group.members.contains_key(l)) {
            group.leader = group.members.keys().next().cloned();
        }
        let leader = group.leader.clone().unwrap_or_default();
        let proto = protocol.unwrap_or_default();
        let all: Vec<(String, Option<String>, Bytes)> = group
            .members
            .values()
            .map(|m| (m.member_id.clone(), m.instance_id.clone(), m.metadata_for(&proto)))
            .collect();
        group.state = GroupState::CompletingRebalance;
        let now = Instant::now();
        for m in group.members.values_mut() {
            m.last_seen = now;
            m.assignment = Bytes::new();
            if let Some(tx) = m.join_tx.take() {
                let _ = tx.send(JoinResult {
                    error: None,
                    generation: group.generation,
                    protocol_type: group.protocol_type.clone(),
                    protocol_name: group.protocol.clone(),
                    leader: leader.clone(),
                    member_id: m.member_id.clone(),
                    members: if m.member_id == leader { all.clone() } else { vec![] },
                });
            }
        }
        tracing::info!(
            group = group_id,
            generation = group.generation,
            members = group.members.len(),
            "rebalance: join complete"
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub fn sync(
        self: &Arc<Self>,
        topics: &dyn Leadership,
        group_id: &str,
        generation: i32,
        member: (&str, Option<&str>),
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Vec<(String, Bytes)>,
    ) -> Reply<SyncResult> {
        let (member_id, instance_id) = member;
        if let Err(e) = self.serves(group_id) {
            return Reply::Now(SyncResult::error(e));
        }
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return Reply::Now(SyncResult::error(ResponseError::UnknownMemberId));
        };
        if Self::fenced(group, member_id, instance_id) {
            return Reply::Now(SyncResult::error(ResponseError::FencedInstanceId));
        }
        if !group.members.contains_key(member_id) {
            return Reply::Now(SyncResult::error(ResponseError::UnknownMemberId));
        }
        if generation != group.generation {
            return Reply::Now(SyncResult::error(ResponseError::IllegalGeneration));
        }
        if protocol_type.is_some_and(|t| Some(t) != group.protocol_type.as_deref())
            || protocol_name.is_some_and(|n| Some(n) != group.protocol.as_deref())
        {
            return Reply::Now(SyncResult::error(ResponseError::InconsistentGroupProtocol));
        }
        let now = Instant::now();
        match group.state {
            GroupState::PreparingRebalance => Reply::Now(SyncResult::error(ResponseError::RebalanceInProgress)),
            GroupState::Empty => Reply::Now(SyncResult::error(ResponseError::UnknownMemberId)),
            GroupState::Stable => {
                let Some(m) = group.members.get_mut(member_id) else {
                    return Reply::Now(SyncResult::error(ResponseError::UnknownMemberId));
                };
                m.last_seen = now;
                Reply::Now(SyncResult {
                    error: None,
                    protocol_type: group.protocol_type.clone(),
                    protocol_name: group.protocol.clone(),
                    assignment: m.assignment.clone(),
                })
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                if let Some(m) = group.members.get_mut(member_id) {
                    m.last_seen = now;
                    m.sync_tx = Some(tx);
                }
                if group.leader.as_deref() == Some(member_id) {
                    let given: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for m in group.members.values_mut() {
                        m.assignment = given.get(&m.member_id).cloned().unwrap_or_default();
                    }
                    group.state = GroupState::Stable;
                    let record = Self::group_record(group_id, group);
                    let answers: Vec<(oneshot::Sender<SyncResult>, SyncResult)> = group
                        .members
                        .values_mut()
                        .filter_map(|m| {
                            let tx = m.sync_tx.take()?;
                            let result = SyncResult {
                                error: None,
                                protocol_type: group.protocol_type.clone(),
                                protocol_name: group.protocol.clone(),
                                assignment: m.assignment.clone(),
                            };
                            Some((tx, result))
                        })
                        .collect();
                    tracing::info!(group = group_id, generation = group.generation, "rebalance: group is stable");
                    drop(groups);
                    // The generation is recorded so it keeps rising across restarts. In a
                    // cluster the members hear of their assignments only once the record is
                    // committed, as Kafka answers SyncGroup after its append: a coordinator
                    // that can no longer write (another node leads the partition now) must not
                    // complete a rebalance the new coordinator knows nothing of.
                    match self.persist(topics, group_id, &[record]) {
                        Ok(Written::Replicated(written)) => {
                            tokio::spawn(async move {
                                let outcome = Written::Replicated(written).settled(true).await;
                                for (tx, result) in answers {
                                    let _ = tx.send(match outcome {
                                        Ok(()) => result,
                                        Err(e) => SyncResult::error(e),
                                    });
                                }
                            });
                        }
                        written => {
                            if let Err(e) = written {
                                tracing::warn!(group = group_id, error = ?e, "could not record group generation");
                            }
                            for (tx, result) in answers {
                                let _ = tx.send(result);
                            }
                        }
                    }
                }
                Reply::Later(rx)
            }
        }
    }

    /// FENCED_INSTANCE_ID when a static member's instance now belongs to
    /// another member id (a newer process took its place).
    fn fenced(group: &Group, member_id: &str, instance_id: Option<&str>) -> bool {
        instance_id.is_some_and(|iid| group.instances.get(iid).is_some_and(|m| m != member_id))
    }

    pub fn heartbeat(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Option<ResponseError> {
        if let Err(e) = self.serves(group_id) {
            return Some(e);
        }
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(group_id) else { return Some(ResponseError::UnknownMemberId) };
        if Self::fenced(group, member_id, instance_id) {
            return Some(ResponseError::FencedInstanceId);
        }
        let state = group.state;
        let gen = group.generation;
        let Some(m) = group.members.get_mut(member_id) else { return Some(ResponseError::UnknownMemberId) };
        m.last_seen = Instant::now();
        if generation != gen {
            return Some(ResponseError::IllegalGeneration);
        }
        match state {
            GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            GroupState::Empty => Some(ResponseError::UnknownMemberId),
            _ => None,
        }
    }

    /// Removes members named by member id and/or instance id; each gets its
    /// own error (UNKNOWN_MEMBER_ID if absent, FENCED_INSTANCE_ID if stale).
    pub fn leave(
        self: &Arc<Self>,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> (Option<ResponseError>, Vec<Option<ResponseError>>) {
        if let Err(e) = self.serves(group_id) {
            return (Some(e), Vec::new());
        }
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(group_id) else {
            return (
                Some(ResponseError::UnknownMemberId),
                members.iter().map(|_| Some(ResponseError::UnknownMemberId)).collect(),
            );
        };
        let mut results = Vec::new();
        let mut removed = false;
        for (given, instance) in members {
            let id = match instance.as_ref().and_then(|iid| group.instances.get(iid)) {
                Some(current) if !given.is_empty() && given != current => {
                    results.push(Some(ResponseError::FencedInstanceId));
                    continue;
                }
                Some(current) => current.clone(),
                None => given.clone(),
            };
            match group.members.remove(&id) {
                Some(m) => {
                    if let Some(tx) = m.join_tx {
                        let _ = tx.send(JoinResult::error(ResponseError::UnknownMemberId, &id));
                    }
                    if let Some(tx) = m.sync_tx {
                        let _ = tx.send(SyncResult::error(ResponseError::UnknownMemberId));
                    }
                    removed = true;
                    results.push(None);
                }
                None => results.push(Some(ResponseError::UnknownMemberId)),
            }
        }
        if removed {
            tracing::info!(group = group_id, "member left");
            self.after_member_removed(group_id, group);
        }
        let top = if members.len() == 1 { results[0] } else { None };
        (top, results)
    }

    fn after_member_removed(self: &Arc<Self>, group_id: &str, group: &mut Group) {
        prune_instances(group);
        match group.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                if group.members.is_empty() {
                    group.state = GroupState::Empty;
                    group.empty_since_ms = now_ms();
                    group.generation += 1;
                    group.protocol = None;
                    group.leader = None;
                } else {
                    self.prepare_rebalance(group_id, group);
                }
            }
            GroupState::PreparingRebalance => {
                if group.members.is_empty() {
                    self.complete_join(group_id, group);
                } else {
                    self.maybe_complete_join(group_id, group);
                }
            }
            GroupState::Empty => {}
        }
    }

    /// Drops members whose session timed out. Members parked in a join or a
    /// sync are waiting on us, not silent: a leader that never syncs expires
    /// and the new round releases them.
    pub fn expire_sessions(self: &Arc<Self>) {
        let now = Instant::now();
        let mut groups = self.lock();
        let ids: Vec<String> = groups.keys().cloned().collect();
        for gid in ids {
            let Some(group) = groups.get_mut(&gid) else { continue };
            group.pending.retain(|_, at| now.duration_since(*at) < Duration::from_secs(300));
            let expired: Vec<String> = group
                .members
                .values()
                .filter(|m| {
                    m.join_tx.is_none() && m.sync_tx.is_none() && now.duration_since(m.last_seen) > m.session_timeout
                })
                .map(|m| m.member_id.clone())
                .collect();
            if expired.is_empty() {
                continue;
            }
            for id in &expired {
                if let Some(m) = group.members.remove(id) {
                    if let Some(tx) = m.sync_tx {
                        let _ = tx.send(SyncResult::error(ResponseError::UnknownMemberId));
                    }
                }
                tracing::info!(group = %gid, member = %id, "member session expired");
            }
            self.after_member_removed(&gid, group);
        }
    }

    /// Kafka's offsets.retention: offsets of a group that has had no members
    /// for `retention_ms` go (for standalone consumers, counted from the
    /// commit). A group left with nothing is forgotten. `in_use` tells which
    /// groups have members this coordinator does not see (KIP-848 groups keep
    /// their membership elsewhere): their offsets stay.
    pub fn expire_offsets(&self, topics: &dyn Leadership, retention_ms: i64, in_use: impl Fn(&str) -> bool) {
        let now = now_ms();
        let mut groups = self.lock();
        let ids: Vec<String> = groups.keys().cloned().collect();
        for gid in ids {
            let Some(group) = groups.get_mut(&gid) else { continue };
            if !group.members.is_empty() || in_use(&gid) {
                continue;
            }
            let since = group.empty_since_ms;
            // A standalone consumer's group (no protocol type) counts from
            // each commit alone, as Kafka does: an OffsetCommit v1 commit
            // time in the past makes its offset expire sooner.
            let standalone = group.protocol_type.is_none();
            let expired: Vec<(String, i32)> = group
                .offsets
                .iter()
                .filter(|(_, c)| {
                    // Commit times come from clients (OffsetCommit v1) and disk: no overflow.
                    now.saturating_sub(if standalone { c.commit_ms } else { c.commit_ms.max(since) }) >= retention_ms
                })
                .map(|(k, _)| k.clone())
                .collect();
            let forget = group.offsets.len() == expired.len() && now.saturating_sub(since) >= retention_ms;
            if expired.is_empty() && !forget {
                continue;
            }
            let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                expired.iter().map(|(t, p)| offset_tombstone(&gid, t, *p)).collect();
            if forget {
                records.push(offsets_log::group_tombstone(&gid));
            }
            if let Err(e) = self.persist(topics, &gid, &records) {
                tracing::warn!(group = %gid, error = ?e, "could not expire offsets");
                continue;
            }
            for k in &expired {
                group.offsets.remove(k);
            }
            tracing::info!(group = %gid, expired = expired.len(), "expired committed offsets");
            if forget {
                groups.remove(&gid);
            }
        }
    }

    /// Forgets every group's committed offsets of a deleted topic, as Kafka
    /// does, so a new topic of the same name starts clean.
    pub fn forget_topic(&self, topics: &dyn Leadership, topic: &str) {
        let mut groups = self.lock();
        for (gid, group) in groups.iter_mut() {
            let doomed: Vec<(String, i32)> = group.offsets.keys().filter(|(t, _)| t == topic).cloned().collect();
            if doomed.is_empty() {
                continue;
            }
            let records: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                doomed.iter().map(|(t, p)| offset_tombstone(gid, t, *p)).collect();
            match self.persist(topics, gid, &records) {
                Ok(_) => {
                    for k in &doomed {
                        group.offsets.remove(k);
                    }
                }
                Err(e) => {
                    tracing::warn!(group = %gid, topic, error = ?e, "could not forget offsets of a deleted topic")
                }
            }
        }
    }

    /// Validates a commit against the group's membership; None means allowed.
    /// As in Kafka, members commit while a rebalance is being prepared (a
    /// cooperative consumer keeps consuming what it still owns meanwhile);
    /// only between the end of the join and the assignment is an
    /// OffsetCommit refused, since the member cannot know yet what it owns.
    /// A transactional commit is fenced by generation alone.
    pub fn check_commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        transactional: bool,
    ) -> Option<ResponseError> {
        if let Err(e) = self.serves(group_id) {
            return Some(e);
        }
        let groups = self.lock();
        let Some(group) = groups.get(group_id) else {
            return if generation < 0 { None } else { Some(ResponseError::IllegalGeneration) };
        };
        if Self::fenced(group, member_id, instance_id) {
            return Some(ResponseError::FencedInstanceId);
        }
        if generation < 0 && member_id.is_empty() {
            // A standalone consumer may commit only while no one is a member.
            return if group.members.is_empty() { None } else { Some(ResponseError::UnknownMemberId) };
        }
        if !group.members.contains_key(member_id) {
            return Some(ResponseError::UnknownMemberId);
        }
        if generation != group.generation {
            return Some(ResponseError::IllegalGeneration);
        }
        match group.state {
            GroupState::CompletingRebalance if !transactional => Some(ResponseError::RebalanceInProgress),
            _ => None,
        }
    }

    /// Writes committed offsets and applies them once they are in the log.
    pub async fn commit(
        &self,
        topics: &dyn Leadership,
        group_id: &str,
        offsets: Vec<(String, i32, CommittedOffset)>,
        durable: bool,
    ) -> Vec<Option<ResponseError>> {
        self.write_offsets(topics, group_id, offsets, None, durable).await
    }

    /// OffsetCommit and TxnOffsetCommit: validates, writes one batch (a
    /// transactional one for `producer`), then applies the offsets to the
    /// group (or, in a transaction, holds them until its marker). Each
    /// offset gets its error.
    async fn write_offsets(
        &self,
        topics: &dyn Leadership,
        group_id: &str,
        offsets: Vec<(String, i32, CommittedOffset)>,
        producer: Option<(i64, i16)>,
        durable: bool,
    ) -> Vec<Option<ResponseError>> {
        let mut results = Vec::with_capacity(offsets.len());
        let mut records = Vec::new();
        let mut accepted = Vec::new();
        for (topic, partition, c) in offsets {
            if c.metadata.as_ref().is_some_and(|m| m.len() > MAX_METADATA_BYTES) {
                results.push(Some(ResponseError::OffsetMetadataTooLarge));
                continue;
            }
            if topics.replica(&topic, partition).is_none() {
                results.push(Some(ResponseError::UnknownTopicOrPartition));
                continue;
            }
            records.push(offsets_log::offset_record(group_id, &topic, partition, &c));
            accepted.push((results.len(), topic, partition, c));
            results.push(None);
        }
        if records.is_empty() {
            return results;
        }
        // Write and apply in one step, before any wait: commits pipelined on
        // a connection are applied in the order they were sent.
        let written = self.persist_as(topics, group_id, &records, producer);
        if written.is_ok() {
            match producer {
                None => {
                    let mut groups = self.lock();
                    let group = groups.entry(group_id.to_string()).or_insert_with(Group::new);
                    for (_, topic, partition, c) in &accepted {
                        group.offsets.insert((topic.clone(), *partition), c.clone());
                    }
                }
                Some((producer_id, producer_epoch)) => {
                    let log_partition = self.partition_for(group_id);
                    let mut pending = self.pending();
                    let list = pending.entry(producer_id).or_default();
                    for (_, topic, partition, c) in &accepted {
                        list.push(PendingOffset {
                            log_partition,
                            producer_epoch,
                            group: group_id.to_string(),
                            topic: topic.clone(),
                            partition: *partition,
                            offset: Some(c.clone()),
                        });
                    }
                }
            }
        }
        let outcome = match written {
            Ok(w) => w.settled(durable).await,
            Err(e) => Err(e),
        };
        if let (Err(ResponseError::ProducerFenced), Some((producer_id, epoch))) = (outcome, producer) {
            // The log refused the batch (a fenced epoch): its offsets will never see a marker, and
            // left pending they would hold OffsetFetch(require_stable) back for good.
            let log_partition = self.partition_for(group_id);
            let mut pending = self.pending();
            if let Some(list) = pending.get_mut(&producer_id) {
                for (_, topic, partition, c) in &accepted {
                    let mine = |p: &PendingOffset| {
                        p.log_partition == log_partition
                            && p.producer_epoch == epoch
                            && p.group == group_id
                            && p.topic == *topic
                            && p.partition == *partition
                            && p.offset.as_ref() == Some(c)
                    };
                    if let Some(at) = list.iter().rposition(mine) {
                        list.remove(at);
                    }
                }
                if list.is_empty() {
                    pending.remove(&producer_id);
                }
            }
        }
        if let Err(e) = outcome {
            for (i, ..) in accepted {
                results[i] = Some(e);
            }
        }
        results
    }

    pub fn fetch_offsets(&self, group_id: &str) -> BTreeMap<(String, i32), CommittedOffset> {
        self.lock().get(group_id).map(|g| g.offsets.clone()).unwrap_or_default()
    }

    /// Runs `f` on a group (None if unknown), under the coordinator lock.
    pub fn with_group<T>(&self, group_id: &str, f: impl FnOnce(Option<&Group>) -> T) -> T {
        f(self.lock().get(group_id))
    }

    pub fn list(&self) -> Vec<(String, Option<String>, GroupState)> {
        self.lock().iter().map(|(id, g)| (id.clone(), g.protocol_type.clone(), g.state)).collect()
    }

    /// Deletes an empty group and its offsets (GROUP_ID_NOT_FOUND,
    /// NON_EMPTY_GROUP otherwise).
    pub fn delete_group(&self, topics: &dyn Leadership, group_id: &str) -> Option<ResponseError> {
        if let Err(e) = self.serves(group_id) {
            return Some(e);
        }
        let mut groups = self.lock();
        let Some(group) = groups.get(group_id) else { return Some(ResponseError::GroupIdNotFound) };
        if !group.members.is_empty() {
            return Some(ResponseError::NonEmptyGroup);
        }
        let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            group.offsets.keys().map(|(t, p)| offset_tombstone(group_id, t, *p)).collect();
        records.push(offsets_log::group_tombstone(group_id));
        if let Err(e) = self.persist(topics, group_id, &records) {
            return Some(e);
        }
        groups.remove(group_id);
        None
    }

    /// Deletes committed offsets of partitions the group does not consume.
    pub fn delete_offsets(
        &self,
        topics: &dyn Leadership,
        group_id: &str,
        parts: &[(String, i32)],
        subscribed: &HashSet<String>,
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        self.serves(group_id)?;
        let mut groups = self.lock();
        let Some(group) = groups.get_mut(group_id) else { return Err(ResponseError::GroupIdNotFound) };
        let mut results = Vec::new();
        let mut records = Vec::new();
        for (t, p) in parts {
            if subscribed.contains(t) {
                results.push(Some(ResponseError::GroupSubscribedToTopic));
                continue;
            }
            records.push(offset_tombstone(group_id, t, *p));
            results.push(None);
        }
        if !records.is_empty() {
            self.persist(topics, group_id, &records)?;
            for ((t, p), r) in parts.iter().zip(&results) {
                if r.is_none() {
                    group.offsets.remove(&(t.clone(), *p));
                }
            }
        }
        Ok(results)
    }
}

/// Forgets instance ids whose member is gone.
fn prune_instances(group: &mut Group) {
    let members = &group.members;
    group.instances.retain(|_, m| members.contains_key(m));
}

fn apply_record(groups: &mut HashMap<String, Group>, record: OffsetsRecord) {
    match record {
        OffsetsRecord::Offset { group, topic, partition, value } => match value {
            Some(c) => {
                groups.entry(group).or_insert_with(Group::new).offsets.insert((topic, partition), c);
            }
            None => {
                if let Some(g) = groups.get_mut(&group) {
                    g.offsets.remove(&(topic, partition));
                }
            }
        },
        OffsetsRecord::Group { group, value } => match value {
            Some(v) => {
                let g = groups.entry(group).or_insert_with(Group::new);
                g.protocol_type = v.protocol_type;
                g.generation = g.generation.max(v.generation);
            }
            None => {
                groups.remove(&group);
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coordinator(initial_delay: Duration) -> Arc<GroupCoordinator> {
        Arc::new(
            GroupCoordinator {
                groups: Mutex::new(HashMap::new()),
                pending_txn: Mutex::new(HashMap::new()),
                partitions: AtomicI32::new(1),
                serving: None,
                leads_now: std::sync::OnceLock::new(),
                initial_rebalance_delay: Duration::ZERO,
            }
            .with_initial_rebalance_delay(initial_delay),
        )
    }

    fn join(c: &Arc<GroupCoordinator>, rebalance_timeout_ms: i32) -> oneshot::Receiver<JoinResult> {
        let req = JoinRequest {
            group_id: "g".into(),
            member_id: String::new(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            require_known_member_id: false,
        };
        match c.join(req) {
            Reply::Later(rx) => rx,
            Reply::Now(r) => panic!("join answered at once: {:?}", r.error),
        }
    }

    fn state(c: &GroupCoordinator) -> (GroupState, u64) {
        let groups = c.lock();
        (groups["g"].state, groups["g"].rebalance_seq)
    }

    // The delay's timer is an hour here; the tests fire it themselves.
    const NEVER: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn initial_delay_holds_the_first_join_and_each_new_member_extends_it() {
        let c = coordinator(NEVER);
        let mut a = join(&c, 60_000);
        // Every known member has joined, yet the round waits for others.
        let (st, seq) = state(&c);
        assert_eq!(st, GroupState::PreparingRebalance);
        assert!(a.try_recv().is_err());
        let mut b = join(&c, 60_000);
        assert!(a.try_recv().is_err() && b.try_recv().is_err());
        // B arrived during the delay: it runs once more.
        c.initial_delay_ended("g", seq);
        assert_eq!(state(&c), (GroupState::PreparingRebalance, seq));
        assert!(a.try_recv().is_err());
        // Nobody new this time: one generation with both members.
        c.initial_delay_ended("g", seq);
        let (ra, rb) = (a.try_recv().expect("A answered"), b.try_recv().expect("B answered"));
        assert_eq!((ra.error, rb.error), (None, None));
        assert_eq!((ra.generation, rb.generation), (1, 1));
        let leader = if ra.member_id == ra.leader { &ra } else { &rb };
        assert_eq!(leader.members.len(), 2);
        assert_eq!(state(&c).0, GroupState::CompletingRebalance);
    }

    #[tokio::test]
    async fn initial_delay_is_not_extended_past_the_rebalance_timeout() {
        let c = coordinator(NEVER);
        // A rebalance timeout of 0: the first window is all there is.
        let mut a = join(&c, 0);
        let (_, seq) = state(&c);
        let mut b = join(&c, 0);
        c.initial_delay_ended("g", seq);
        assert_eq!(a.try_recv().expect("A answered").generation, 1);
        assert_eq!(b.try_recv().expect("B answered").generation, 1);
    }

    #[tokio::test]
    async fn without_a_delay_the_first_join_completes_at_once() {
        let c = coordinator(Duration::ZERO);
        let mut a = join(&c, 60_000);
        assert_eq!(a.try_recv().expect("answered").generation, 1);
    }

    #[tokio::test]
    async fn offsets_commit_while_preparing_a_rebalance_not_while_completing_one() {
        let c = coordinator(Duration::ZERO);
        let a = join(&c, 60_000).await.expect("A joined");
        assert_eq!(state(&c).0, GroupState::CompletingRebalance);
        let commit = |transactional| c.check_commit("g", a.generation, &a.member_id, None, transactional);
        // Joined but not yet told its assignment: Kafka refuses, except a
        // transactional commit (fenced by generation alone).
        assert_eq!(commit(false), Some(ResponseError::RebalanceInProgress));
        assert_eq!(commit(true), None);
        // B's join starts a new round; A still owns what it had and may
        // commit it until it rejoins.
        let _b = join(&c, 60_000);
        assert_eq!(state(&c).0, GroupState::PreparingRebalance);
        assert_eq!(commit(false), None);
        assert_eq!(
            c.check_commit("g", a.generation - 1, &a.member_id, None, false),
            Some(ResponseError::IllegalGeneration)
        );
    }

    #[test]
    fn a_group_record_too_large_for_the_topic_keeps_the_generation_without_members() {
        let mut g = Group::new();
        g.protocol_type = Some("consumer".into());
        g.protocol = Some("range".into());
        g.generation = 41;
        for i in 0..3 {
            let id = format!("m{i}");
            let m = Member {
                member_id: id.clone(),
                instance_id: None,
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                session_timeout: Duration::from_secs(10),
                rebalance_timeout: Duration::from_secs(10),
                // 3 × 400 KiB of subscription: past the topic's record limit.
                protocols: vec![("range".into(), Bytes::from(vec![7u8; 400 * 1024]))],
                assignment: Bytes::new(),
                last_seen: Instant::now(),
                join_tx: None,
                sync_tx: None,
            };
            g.members.insert(id, m);
        }
        let (_, value) = offsets_log::group_record("big", &g);
        let value = value.expect("a group record has a value");
        assert!(value.len() < 1_048_588, "record of {} bytes", value.len());
        let decoded = crate::coordinator::records::decode_group_metadata_value(&value).expect("decodes");
        assert_eq!(decoded.generation, 41);
        assert!(decoded.members.is_empty());
        // A small group keeps its members.
        g.members.retain(|id, _| id == "m0");
        g.members.values_mut().for_each(|m| m.protocols[0].1 = Bytes::from_static(b"sub"));
        let (_, value) = offsets_log::group_record("small", &g);
        let decoded = crate::coordinator::records::decode_group_metadata_value(&value.unwrap()).unwrap();
        assert_eq!(decoded.members.len(), 1);
    }

    #[test]
    fn expiry_survives_commit_times_at_the_ends_of_the_range_and_spares_groups_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::BrokerConfig { data_dir: dir.path().to_path_buf(), ..Default::default() };
        let topics = Topics::open(&cfg).unwrap();
        let coord = GroupCoordinator::open(&topics, 1).unwrap();
        {
            let mut groups = coord.lock();
            for (gid, commit_ms) in [("old", i64::MIN), ("future", i64::MAX), ("kip848", 0)] {
                let g = groups.entry(gid.to_string()).or_insert_with(Group::new);
                let c = CommittedOffset { offset: 1, leader_epoch: -1, metadata: None, commit_ms };
                g.offsets.insert(("t".into(), 0), c);
            }
        }
        coord.expire_offsets(&topics, 1000, |g| g == "kip848");
        let groups = coord.lock();
        assert!(
            groups.get("old").is_none_or(|g| g.offsets.is_empty()),
            "an offset committed at i64::MIN is long expired"
        );
        assert_eq!(groups["future"].offsets.len(), 1);
        assert_eq!(groups["kip848"].offsets.len(), 1, "a group with members elsewhere keeps its offsets");
    }

    /// A cluster node's coordinator serves only the partitions it took over: before, and after
    /// giving one up, its groups get NOT_COORDINATOR; taking over loads them from the log.
    #[tokio::test]
    async fn a_clustered_coordinator_serves_what_it_took_over_and_forgets_what_it_gave_up() {
        let (_dir, topics, single) = with_topics();
        topics.create("t", 1, BTreeMap::new(), false).unwrap();
        let c = CommittedOffset { offset: 42, leader_epoch: 3, metadata: Some("m".into()), commit_ms: now_ms() };
        let results = single.commit(&*topics, "g", vec![("t".into(), 0, c.clone())], true).await;
        assert_eq!(results, vec![None]);
        let log = topics.log(OFFSETS_TOPIC, 0).unwrap();

        let coord = Arc::new(GroupCoordinator::clustered(1));
        assert_eq!(coord.serves("g"), Err(ResponseError::NotCoordinator));
        assert_eq!(coord.heartbeat("g", 1, "m", None), Some(ResponseError::NotCoordinator));
        let refused = answered_now(coord.join(JoinRequest {
            group_id: "g".into(),
            member_id: String::new(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "h".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::new())],
            require_known_member_id: false,
        }));
        assert_eq!(refused.error, Some(ResponseError::NotCoordinator));

        coord.take_over(0, 7, &log).unwrap();
        assert_eq!(coord.serves("g"), Ok(()));
        assert_eq!(coord.serving_epoch(0), Some(7));
        assert_eq!(coord.fetch_offsets("g").get(&("t".to_string(), 0)).map(|o| o.offset), Some(42));
        // Not led through a Raft group here: a write is refused rather than made locally.
        let write = coord.commit(&*topics, "g", vec![("t".into(), 0, c)], true).await;
        assert_eq!(write, vec![Some(ResponseError::NotCoordinator)]);

        coord.give_up(0);
        assert_eq!(coord.serves("g"), Err(ResponseError::NotCoordinator));
        assert!(coord.fetch_offsets("g").is_empty(), "the group is forgotten");
    }

    /// A coordinator over a real `__consumer_offsets` (SyncGroup records
    /// the generation there), without a broker process.
    fn with_topics() -> (tempfile::TempDir, Arc<Topics>, Arc<GroupCoordinator>) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::BrokerConfig { data_dir: dir.path().to_path_buf(), ..Default::default() };
        let topics = Arc::new(Topics::open(&cfg).unwrap());
        let coord = Arc::new(GroupCoordinator::open(&topics, 1).unwrap());
        (dir, topics, coord)
    }

    fn join_as(c: &Arc<GroupCoordinator>, member_id: &str) -> oneshot::Receiver<JoinResult> {
        let req = JoinRequest {
            group_id: "g".into(),
            member_id: member_id.into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 60_000,
            protocol_type: "consumer".into(),
            // The subscription names who sent it: a new member, or a known one.
            protocols: vec![(
                "range".into(),
                Bytes::from(format!("sub-{}", if member_id.is_empty() { "new" } else { member_id })),
            )],
            require_known_member_id: false,
        };
        match c.join(req) {
            Reply::Later(rx) => rx,
            Reply::Now(r) => panic!("join answered at once: {:?}", r.error),
        }
    }

    fn sync(
        c: &Arc<GroupCoordinator>,
        topics: &Arc<Topics>,
        member: &str,
        generation: i32,
        assignments: &[(&str, &'static [u8])],
    ) -> Reply<SyncResult> {
        let given = assignments.iter().map(|(m, a)| (m.to_string(), Bytes::from_static(a))).collect();
        c.sync(&**topics, "g", generation, (member, None), Some("consumer"), Some("range"), given)
    }

    fn later<T>(r: Reply<T>) -> oneshot::Receiver<T> {
        match r {
            Reply::Later(rx) => rx,
            Reply::Now(_) => panic!("answered at once"),
        }
    }

    fn answered_now<T>(r: Reply<T>) -> T {
        match r {
            Reply::Now(v) => v,
            Reply::Later(_) => panic!("parked instead of answered"),
        }
    }

    fn answered<T>(rx: &mut oneshot::Receiver<T>) -> T {
        rx.try_recv().expect("answered")
    }

    /// Join, sync and heartbeat through three generations: a member
    /// joining, the old member rejoining, one leaving, the last leaving.
    #[tokio::test]
    async fn members_join_sync_heartbeat_and_leave_through_rebalances() {
        let (_dir, topics, c) = with_topics();
        let a = answered(&mut join_as(&c, ""));
        assert_eq!((a.error, a.generation, a.leader.as_str()), (None, 1, a.member_id.as_str()));
        assert_eq!(a.members.len(), 1, "the leader sees every member");
        assert_eq!(state(&c).0, GroupState::CompletingRebalance);
        assert_eq!(c.heartbeat("g", 1, &a.member_id, None), None, "heartbeats are fine while syncing");

        let mut a_sync = later(sync(&c, &topics, &a.member_id, 1, &[(&a.member_id, b"a-1")]));
        assert_eq!(answered(&mut a_sync).assignment, Bytes::from_static(b"a-1"));
        assert_eq!(state(&c).0, GroupState::Stable);
        assert_eq!(c.heartbeat("g", 1, &a.member_id, None), None);
        assert_eq!(c.heartbeat("g", 0, &a.member_id, None), Some(ResponseError::IllegalGeneration));
        assert_eq!(c.heartbeat("g", 1, "stranger", None), Some(ResponseError::UnknownMemberId));
        assert_eq!(c.heartbeat("other", 1, &a.member_id, None), Some(ResponseError::UnknownMemberId));
        // A stable member's SyncGroup gets its assignment again.
        let again = answered_now(sync(&c, &topics, &a.member_id, 1, &[]));
        assert_eq!((again.error, again.assignment), (None, Bytes::from_static(b"a-1")));

        // B joins: a rebalance starts and waits for A.
        let mut b_join = join_as(&c, "");
        assert_eq!(state(&c).0, GroupState::PreparingRebalance);
        assert!(b_join.try_recv().is_err(), "B waits until A rejoins");
        assert_eq!(c.heartbeat("g", 1, &a.member_id, None), Some(ResponseError::RebalanceInProgress));
        assert_eq!(
            answered_now(sync(&c, &topics, &a.member_id, 1, &[])).error,
            Some(ResponseError::RebalanceInProgress)
        );
        let a2 = answered(&mut join_as(&c, &a.member_id));
        let b2 = answered(&mut b_join);
        assert_eq!((a2.generation, b2.generation), (2, 2));
        assert_eq!((a2.leader.as_str(), b2.leader.as_str()), (a.member_id.as_str(), a.member_id.as_str()));
        assert_eq!((a2.members.len(), b2.members.len()), (2, 0), "only the leader gets the members");
        let meta = |id: &str| a2.members.iter().find(|m| m.0 == id).map(|m| m.2.clone());
        assert_eq!(meta(&b2.member_id), Some(Bytes::from_static(b"sub-new")), "the leader sees B's subscription");
        assert_eq!(meta(&a.member_id), Some(Bytes::from(format!("sub-{}", a.member_id))), "and A's latest one");

        // The follower's sync waits for the leader's assignment.
        let mut b_sync = later(sync(&c, &topics, &b2.member_id, 2, &[]));
        assert!(b_sync.try_recv().is_err());
        let mut a_sync = later(sync(&c, &topics, &a.member_id, 2, &[(&a.member_id, b"a-2"), (&b2.member_id, b"b-2")]));
        assert_eq!(answered(&mut b_sync).assignment, Bytes::from_static(b"b-2"));
        assert_eq!(answered(&mut a_sync).assignment, Bytes::from_static(b"a-2"));
        assert_eq!(state(&c).0, GroupState::Stable);

        // A leaves: B must rejoin, and leads generation 3 alone.
        assert_eq!(c.leave("g", &[(a.member_id.clone(), None)]), (None, vec![None]));
        assert_eq!(state(&c).0, GroupState::PreparingRebalance);
        assert_eq!(c.heartbeat("g", 2, &a.member_id, None), Some(ResponseError::UnknownMemberId));
        assert_eq!(c.heartbeat("g", 2, &b2.member_id, None), Some(ResponseError::RebalanceInProgress));
        let b3 = answered(&mut join_as(&c, &b2.member_id));
        assert_eq!((b3.generation, b3.leader.as_str()), (3, b2.member_id.as_str()));
        later(sync(&c, &topics, &b2.member_id, 3, &[(&b2.member_id, b"b-3")]));
        assert_eq!(
            c.leave("g", &[("stranger".into(), None)]),
            (Some(ResponseError::UnknownMemberId), vec![Some(ResponseError::UnknownMemberId)])
        );
        assert_eq!(c.leave("g", &[(b2.member_id.clone(), None)]), (None, vec![None]));
        assert_eq!(state(&c).0, GroupState::Empty);
        assert_eq!(c.heartbeat("g", 3, &b2.member_id, None), Some(ResponseError::UnknownMemberId));
        // The last member leaving a stable group moves it to Empty as
        // generation 4, as Kafka does.
        assert_eq!(c.with_group("g", |g| g.map(|g| g.generation)), Some(4));
        // The generations were recorded: a restart goes on from the last
        // stable one. (Only stable generations are recorded; Kafka also
        // records the empty group's, so its restart would give 4.)
        let replayed = GroupCoordinator::open(&topics, 1).unwrap();
        assert_eq!(replayed.with_group("g", |g| g.map(|g| g.generation)), Some(3));
    }

    /// A member that stops heartbeating is dropped when its session ends,
    /// but never while it is parked in a join or a sync.
    #[tokio::test]
    async fn silent_members_expire_and_the_rest_rebalance_without_them() {
        let (_dir, topics, c) = with_topics();
        let a = answered(&mut join_as(&c, ""));
        later(sync(&c, &topics, &a.member_id, 1, &[]));
        let mut b_join = join_as(&c, "");
        let a2 = answered(&mut join_as(&c, &a.member_id));
        let b2 = answered(&mut b_join);
        later(sync(&c, &topics, &a.member_id, 2, &[]));
        assert_eq!(state(&c).0, GroupState::Stable);
        let long_ago = Instant::now().checked_sub(Duration::from_secs(3600)).expect("an hour ago");
        // B's session ran out; A heartbeated just now.
        c.lock().get_mut("g").unwrap().members.get_mut(&b2.member_id).unwrap().last_seen = long_ago;
        c.expire_sessions();
        assert_eq!(state(&c).0, GroupState::PreparingRebalance);
        assert_eq!(c.heartbeat("g", 2, &b2.member_id, None), Some(ResponseError::UnknownMemberId));
        // C, waiting in its join for A, is not silent however long ago it
        // was seen.
        let mut c_join = join_as(&c, "");
        let parked: Vec<String> = c.lock()["g"].members.keys().filter(|id| **id != a2.member_id).cloned().collect();
        assert_eq!(parked.len(), 1);
        c.lock().get_mut("g").unwrap().members.get_mut(&parked[0]).unwrap().last_seen = long_ago;
        c.expire_sessions();
        assert!(c_join.try_recv().is_err(), "C still waits");
        let a3 = answered(&mut join_as(&c, &a2.member_id));
        let c3 = answered(&mut c_join);
        assert_eq!((a3.error, c3.error, a3.generation, a3.members.len()), (None, None, 3, 2));
    }

    /// Members that do not rejoin before the rebalance timeout are dropped
    /// and the round completes with those that did.
    #[tokio::test]
    async fn the_rebalance_timeout_completes_the_round_without_the_laggards() {
        let (_dir, topics, c) = with_topics();
        let a = answered(&mut join_as(&c, ""));
        later(sync(&c, &topics, &a.member_id, 1, &[]));
        let mut b_join = join_as(&c, "");
        let (_, seq) = state(&c);
        assert!(b_join.try_recv().is_err());
        // A stale timer of an earlier round does nothing.
        c.rebalance_timed_out("g", seq - 1);
        assert!(b_join.try_recv().is_err());
        c.rebalance_timed_out("g", seq);
        let b = answered(&mut b_join);
        assert_eq!((b.generation, b.leader.as_str(), b.members.len()), (2, b.member_id.as_str(), 1));
        assert_eq!(c.heartbeat("g", 2, &a.member_id, None), Some(ResponseError::UnknownMemberId));
    }

    #[test]
    fn hash_matches_java_string_hash_code() {
        assert_eq!(java_hash(""), 0);
        assert_eq!(java_hash("a"), 97);
        assert_eq!(java_hash("hello"), 99_162_322);
        // Overflow wraps as in Java.
        assert_eq!(java_hash("consumer-group-with-a-long-name"), {
            let mut h: i32 = 0;
            for c in "consumer-group-with-a-long-name".chars() {
                h = h.wrapping_mul(31).wrapping_add(c as i32);
            }
            h
        });
    }
}
