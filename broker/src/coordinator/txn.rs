//! The transaction coordinator: per transactional id, the producer id and
//! epoch, the partitions of the open transaction and its state, kept as
//! records in the internal, compacted `__transaction_state` topic and
//! replayed on start.
//!
//! Ending a transaction is two-phase, as in Kafka: the PrepareCommit /
//! PrepareAbort record is made durable first, then a marker goes to every
//! partition, then the Complete record. A broker that dies between the
//! phases finds the Prepare record on restart and writes the markers again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use fjord_storage::batch::{build_batch, build_marker};
use fjord_storage::{LogError, PartitionLog};
use futures::future::BoxFuture;
use kafka_protocol::error::ResponseError;
use serde::{Deserialize, Serialize};

use crate::coordinator::classic::{java_hash, CommittedOffset, GroupCoordinator, Written, OFFSETS_TOPIC};
use crate::coordinator::txn_log;
use crate::internal_topic;
use crate::leadership::{coordinator_error, LeaderGuard, Leadership, NO_EPOCH};
use crate::server::now_ms;
use crate::topics::Topics;

/// How long a replicated write of the coordinator's state may take before its requester is
/// answered REQUEST_TIMED_OUT (the write itself goes on).
const REPLICATED_WRITE_WAIT: Duration = Duration::from_secs(15);

/// How long ending a transaction keeps trying to reach the leaders of its partitions before it
/// answers. The outcome is durable from the Prepare record on, so the client is told it ended;
/// the markers still missing are written by the coordinator's timer (`expire`), and until then
/// the transactional id answers CONCURRENT_TRANSACTIONS, as Kafka's does while it completes.
const MARKER_WAIT: Duration = Duration::from_secs(10);

/// How long a partition of a transaction may be unknown to this node's metadata before its
/// marker is given up (its topic was deleted) rather than waited for (the metadata lags).
const GONE_AFTER: Duration = Duration::from_secs(5);

/// How long a transaction may sit between the two phases of its end before the timer writes its
/// markers again (an end that is running holds the id's lock, so the timer never races it).
const UNFINISHED_AFTER_MS: i64 = 2_000;

/// One transaction's end, for the partitions a node leads: Kafka's WriteTxnMarkers entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Markers {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    /// The epoch of the coordinator's `__transaction_state` partition, stored in the marker.
    pub coordinator_epoch: i32,
    pub partitions: Vec<(String, i32)>,
}

/// Where a partition's leader is, as a clustered coordinator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderAt {
    /// This node leads it now.
    Here,
    /// Another node leads it, by the cluster's metadata.
    Node(i32),
    /// No leader is known right now (an election, or the leader's node is fenced): ask again.
    Unknown,
    /// The partition does not exist (its topic was deleted): it needs no marker.
    Gone,
}

/// What a coordinator on a node of a cluster needs of the rest of the broker: leadership of the
/// partitions it writes to, and the other nodes (set once the broker is built).
pub trait TxnCluster: Send + Sync {
    /// This node's leadership of a partition, as every handler checks it.
    fn lead(&self, topic: &str, partition: i32) -> Result<LeaderGuard, ResponseError>;
    /// Whether the partition exists in the cluster: `Some(internal)`, or None.
    fn partition_known(&self, topic: &str, partition: i32) -> Option<bool>;
    fn leader_of(&self, topic: &str, partition: i32) -> LeaderAt;
    /// Writes markers: here (`node` None) or through the node that leads their partitions,
    /// waiting up to `wait` for its answer. Per partition of `m`, in order, the error; None once
    /// the marker is committed.
    fn write_markers(
        &self,
        node: Option<i32>,
        m: Markers,
        wait: Duration,
    ) -> BoxFuture<'static, Vec<Option<ResponseError>>>;
}

/// Writes `m`'s marker into each of its partitions that this node leads: the node-local half of
/// Kafka's WriteTxnMarkers. Per partition, the error, or None once the marker is durable: synced
/// on a single node when `durable`, committed by the replicas in a cluster. A partition that no
/// longer exists needs no marker, and one whose producer a newer epoch already fenced gets none.
/// A marker in `__consumer_offsets` also applies (or drops) the transaction's offsets there.
pub async fn write_markers_here(
    leadership: &dyn Leadership,
    groups: &GroupCoordinator,
    m: &Markers,
    durable: bool,
) -> Vec<Option<ResponseError>> {
    let mut results: Vec<Option<ResponseError>> = vec![None; m.partitions.len()];
    let mut pending: Vec<(usize, Written)> = Vec::new();
    for (i, (topic, partition)) in m.partitions.iter().enumerate() {
        let guard = match leadership.lead(topic, *partition, NO_EPOCH) {
            Ok(g) => g,
            Err(ResponseError::UnknownTopicOrPartition) => continue,
            Err(e) => {
                results[i] = Some(e);
                continue;
            }
        };
        let LeaderGuard { log, epoch, raft } = guard;
        if raft.is_some() && topic == OFFSETS_TOPIC && groups.serving_epoch(*partition) != Some(epoch) {
            // The group coordinator has not loaded the partition at this epoch yet: its replay
            // might end before this marker commits, and the offsets it applies would stay
            // pending. Asked again, the marker lands once the partition is loaded.
            results[i] = Some(ResponseError::NotLeaderOrFollower);
            continue;
        }
        let now = now_ms();
        let marker = build_marker(m.producer_id, m.producer_epoch, m.coordinator_epoch, m.commit, now);
        let written = match raft {
            // Proposed at the epoch the leadership was checked at: a marker never lands in a
            // later term of this node's leadership than the one it was decided for.
            Some(w) => Written::Replicated(w.proposer.enqueue(&w.raft, &log, marker, epoch, REPLICATED_WRITE_WAIT)),
            None => match log.append_from_coordinator(&marker, epoch, now) {
                Ok(info) => Written::Local(log, info.last_offset + 1),
                Err(LogError::InvalidProducerEpoch { .. }) => {
                    tracing::warn!(topic, partition, "marker from a fenced epoch skipped");
                    continue;
                }
                Err(LogError::CoordinatorFenced { .. }) => {
                    results[i] = Some(ResponseError::TransactionCoordinatorFenced);
                    continue;
                }
                Err(e) => {
                    results[i] = Some(storage_failure("write a transaction marker", e));
                    continue;
                }
            },
        };
        pending.push((i, written));
        if failpoint("txn-after-first-marker") {
            // Tests of recovery die here: one marker written, the rest not.
            std::process::abort();
        }
    }
    let settled =
        futures::future::join_all(pending.into_iter().map(|(i, w)| async move { (i, w.settled(durable).await) }));
    for (i, outcome) in settled.await {
        let (topic, partition) = &m.partitions[i];
        results[i] = match outcome {
            Ok(()) => {
                if topic == OFFSETS_TOPIC {
                    groups.complete_txn(m.producer_id, m.producer_epoch, m.commit, *partition);
                }
                None
            }
            // A newer epoch already ended this producer's work here: nothing to write, and
            // nothing of this transaction's to apply (the pending offsets are the newer one's).
            Err(ResponseError::ProducerFenced) => None,
            // Leadership moved while the marker waited: the coordinator asks the new leader.
            Err(ResponseError::NotCoordinator) => Some(ResponseError::NotLeaderOrFollower),
            Err(e) => Some(e),
        };
    }
    results
}

pub const TXN_TOPIC: &str = "__transaction_state";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    pub const ALL: [TxnState; 6] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
    ];

    /// The names Kafka's admin tools show and filter by.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<(String, i32)>,
    /// When the open transaction started (its first partition was added).
    pub start_ms: i64,
    pub update_ms: i64,
}

#[derive(Default)]
struct Txns {
    by_id: HashMap<String, TxnMeta>,
    by_producer: HashMap<i64, String>,
}

impl Txns {
    fn put(&mut self, id: &str, meta: TxnMeta) {
        if let Some(old) = self.by_id.get(id) {
            self.by_producer.remove(&old.producer_id);
        }
        self.by_producer.insert(meta.producer_id, id.to_string());
        self.by_id.insert(id.to_string(), meta);
    }
    fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id) {
            self.by_producer.remove(&old.producer_id);
        }
    }
}

/// Which request is asking: the error for a fenced producer depends on it.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// True for request versions that know PRODUCER_FENCED (KIP-588);
    /// older ones get INVALID_PRODUCER_EPOCH.
    pub knows_fenced: bool,
}

impl Caller {
    fn fenced(self) -> ResponseError {
        if self.knows_fenced {
            ResponseError::ProducerFenced
        } else {
            ResponseError::InvalidProducerEpoch
        }
    }
}

pub struct TxnCoordinator {
    topics: Arc<Topics>,
    groups: Arc<GroupCoordinator>,
    partitions: AtomicI32,
    durable: bool,
    max_timeout_ms: i32,
    txns: Mutex<Txns>,
    /// One operation at a time per transactional id; held across the
    /// fsyncs of a commit so a second EndTxn or an AddPartitions waits.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// In a cluster: the partitions of `__transaction_state` this node serves, each with the
    /// leader epoch it was loaded at (see `take_over`). None on a single node.
    serving: Option<Mutex<HashMap<i32, i32>>>,
    /// In a cluster: the rest of the broker, set once it is built.
    cluster: OnceLock<Arc<dyn TxnCluster>>,
}

fn storage_failure(what: &str, e: impl std::fmt::Display) -> ResponseError {
    tracing::error!(error = %e, "transaction coordinator cannot {what}");
    ResponseError::CoordinatorNotAvailable
}

impl TxnCoordinator {
    /// Creates `__transaction_state` if needed and replays it.
    pub fn open(
        topics: Arc<Topics>,
        groups: Arc<GroupCoordinator>,
        partitions: i32,
        durable: bool,
        max_timeout_ms: i32,
    ) -> anyhow::Result<TxnCoordinator> {
        let partitions = internal_topic::ensure(&topics, TXN_TOPIC, partitions)?;
        let coord = TxnCoordinator {
            topics,
            groups,
            partitions: AtomicI32::new(partitions),
            durable,
            max_timeout_ms,
            txns: Mutex::new(Txns::default()),
            locks: Mutex::new(HashMap::new()),
            serving: None,
            cluster: OnceLock::new(),
        };
        for p in 0..partitions {
            if let Ok(leader) = coord.topics.lead(TXN_TOPIC, p, NO_EPOCH) {
                // Fatal, as for the offsets topic (GroupCoordinator::open).
                if coord.replay(&leader.log)? {
                    coord
                        .migrate(&leader, p)
                        .map_err(|e| anyhow::anyhow!("cannot migrate {TXN_TOPIC} partition {p}: {e}"))?;
                }
            }
        }
        Ok(coord)
    }

    /// The coordinator of a cluster node: `__transaction_state` is a replicated topic of the
    /// cluster with `partitions` partitions, and this node serves the transactional ids of the
    /// partitions it leads, from the time it loaded them (`take_over`) until another term began
    /// (`give_up`). `set_cluster` completes it once the broker is built.
    pub fn clustered(
        topics: Arc<Topics>,
        groups: Arc<GroupCoordinator>,
        partitions: i32,
        durable: bool,
        max_timeout_ms: i32,
    ) -> TxnCoordinator {
        TxnCoordinator {
            topics,
            groups,
            partitions: AtomicI32::new(partitions.max(1)),
            durable,
            max_timeout_ms,
            txns: Mutex::new(Txns::default()),
            locks: Mutex::new(HashMap::new()),
            serving: Some(Mutex::new(HashMap::new())),
            cluster: OnceLock::new(),
        }
    }

    pub fn set_cluster(&self, cluster: Arc<dyn TxnCluster>) {
        let _ = self.cluster.set(cluster);
    }

    pub fn partitions(&self) -> i32 {
        self.partitions.load(Ordering::Relaxed)
    }

    /// The partition count of the cluster's `__transaction_state` as created (another node,
    /// configured otherwise, may have created it).
    pub fn set_partitions(&self, partitions: i32) {
        self.partitions.store(partitions.max(1), Ordering::Relaxed);
    }

    fn serving(&self) -> Option<MutexGuard<'_, HashMap<i32, i32>>> {
        self.serving.as_ref().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The leader epoch at which partition `p` was loaded, when it is served here.
    pub fn serving_epoch(&self, p: i32) -> Option<i32> {
        self.serving().and_then(|s| s.get(&p).copied())
    }

    /// Whether this node coordinates transactional id `id` now (always, on a single node). In a
    /// cluster, only while it leads the id's partition at the epoch it loaded it at; otherwise
    /// NOT_COORDINATOR sends the client to look the coordinator up again (or
    /// COORDINATOR_LOAD_IN_PROGRESS while it leads but has not loaded the partition yet).
    pub fn serves(&self, id: &str) -> Result<(), ResponseError> {
        self.term(id).map(|_| ())
    }

    /// `serves`, with the epoch this node serves `id`'s partition at (None on a single node).
    /// An operation takes it once, under the id's lock, and every write it makes is at that
    /// epoch: a decision made in one term of this node's leadership never lands in another.
    fn term(&self, id: &str) -> Result<Option<i32>, ResponseError> {
        let p = self.partition_for(id);
        let Some(serving) = self.serving() else { return Ok(None) };
        let loaded = serving.get(&p).copied();
        drop(serving);
        let led = self.cluster.get().and_then(|c| c.lead(TXN_TOPIC, p).ok()).map(|g| g.epoch);
        match (loaded, led) {
            (Some(l), Some(e)) if l == e => Ok(Some(l)),
            (_, Some(_)) => Err(ResponseError::CoordinatorLoadInProgress),
            _ => Err(ResponseError::NotCoordinator),
        }
    }

    /// Whether this node still serves partition `p` at epoch `term`, live.
    fn still_serves(&self, p: i32, term: i32) -> bool {
        self.serving_epoch(p) == Some(term)
            && self.cluster.get().is_some_and(|c| c.lead(TXN_TOPIC, p).is_ok_and(|g| g.epoch == term))
    }

    /// Starts serving partition `p` of `__transaction_state`, which this node now leads at
    /// `epoch`: its transactional ids are rebuilt from `log`, replacing whatever was in memory
    /// for them in one step. Ends interrupted between their two phases are finished by
    /// `recover_partition`, which the caller runs next.
    pub fn take_over(&self, p: i32, epoch: i32, log: &PartitionLog) -> anyhow::Result<()> {
        let (loaded, _) = Self::read_log(log)?;
        let mut txns = self.state();
        self.forget(&mut txns, p);
        for (id, meta) in loaded.by_id {
            if self.partition_for(&id) == p {
                txns.put(&id, meta);
            }
        }
        if let Some(mut s) = self.serving() {
            s.insert(p, epoch);
        }
        drop(txns);
        tracing::info!(partition = p, epoch, "coordinating the transactions of {TXN_TOPIC} partition {p}");
        Ok(())
    }

    /// Stops serving partition `p` and forgets its transactional ids: another node leads it.
    pub fn give_up(&self, p: i32) {
        let mut txns = self.state();
        self.forget(&mut txns, p);
    }

    /// Drops partition `p` from what is served and its ids from memory (the caller holds the
    /// state lock, so no write of an operation in flight lands in memory between the two).
    fn forget(&self, txns: &mut Txns, p: i32) {
        if let Some(mut s) = self.serving() {
            s.remove(&p);
        }
        let gone: Vec<String> = txns.by_id.keys().filter(|id| self.partition_for(id) == p).cloned().collect();
        for id in gone {
            txns.remove(&id);
        }
    }

    /// The transactional ids a partition's log holds, read without holding the state lock;
    /// true if it held records of the old JSON format.
    fn read_log(log: &PartitionLog) -> anyhow::Result<(Txns, bool)> {
        let mut txns = Txns::default();
        let mut legacy_seen = false;
        internal_topic::replay(log, |_, r| {
            let Some(key) = r.key.as_deref() else { return };
            let (record, legacy) = txn_log::decode(key, r.value.as_deref());
            legacy_seen |= legacy;
            match record {
                Some((id, Some(meta))) => txns.put(&id, meta),
                Some((id, None)) => txns.remove(&id),
                None => {}
            }
        })?;
        Ok((txns, legacy_seen))
    }

    /// Replays one partition into memory; true if it held records of the old JSON format.
    fn replay(&self, log: &PartitionLog) -> anyhow::Result<bool> {
        let (loaded, legacy_seen) = Self::read_log(log)?;
        let mut txns = self.state();
        for (id, meta) in loaded.by_id {
            txns.put(&id, meta);
        }
        Ok(legacy_seen)
    }

    /// Rewrites partition `p`'s live state in Kafka's format and drops the
    /// old JSON records (see `internal_topic::migrate`).
    fn migrate(&self, leader: &LeaderGuard, p: i32) -> anyhow::Result<()> {
        let mut rewrite = internal_topic::Rewrite::default();
        for (id, meta) in &self.state().by_id {
            if self.partition_for(id) == p {
                rewrite.records.push(txn_log::txn_record(id, Some(meta)));
            }
        }
        let ids = rewrite.records.len();
        internal_topic::migrate(&leader.log, leader.epoch, &rewrite)?;
        tracing::info!(partition = p, ids, "migrated {TXN_TOPIC} partition to Kafka's record format");
        Ok(())
    }

    /// Finishes transactions a crash (or, in a cluster, a change of coordinator) left between
    /// the two phases of their end, and ends whose markers could not all be written in time.
    /// Open (Ongoing) ones stay open: their producer may carry on, and the timeout aborts them
    /// otherwise.
    pub async fn recover(&self) {
        self.finish_unfinished(|_| true).await;
    }

    /// `recover` for the ids of partition `p` (after this node took it over).
    pub async fn recover_partition(&self, p: i32) {
        self.finish_unfinished(|id| self.partition_for(id) == p).await;
    }

    /// `recover` for the unfinished transactions whose id matches `due`, concurrently (one
    /// whose partition leaders are out of reach holds up no other); each is looked at again
    /// under its lock, as an EndTxn may have finished it meanwhile (and its producer begun the
    /// next one).
    async fn finish_unfinished(&self, due: impl Fn(&str) -> bool) {
        let unfinished: Vec<String> = self
            .state()
            .by_id
            .iter()
            .filter(|(id, m)| matches!(m.state, TxnState::PrepareCommit | TxnState::PrepareAbort) && due(id))
            .map(|(id, _)| id.clone())
            .collect();
        let finish = |id: String| async move {
            let _guard = self.lock_id(&id).await;
            let Ok(term) = self.term(&id) else { return };
            let Some(meta) = self.get(&id) else { return };
            if !matches!(meta.state, TxnState::PrepareCommit | TxnState::PrepareAbort) {
                return;
            }
            let commit = meta.state == TxnState::PrepareCommit;
            tracing::info!(transactional_id = %id, commit, "completing an interrupted transaction end");
            match self.complete(&id, meta, commit, term).await {
                Ok(m) if m.state == TxnState::PrepareCommit || m.state == TxnState::PrepareAbort => {
                    tracing::warn!(transactional_id = %id, "transaction markers still missing; will retry")
                }
                Ok(_) => {}
                Err(e) => tracing::error!(transactional_id = %id, error = ?e, "cannot complete transaction"),
            }
        };
        futures::future::join_all(unfinished.into_iter().map(finish)).await;
    }

    fn state(&self) -> MutexGuard<'_, Txns> {
        self.txns.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn lock_id(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(id.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }

    pub fn partition_for(&self, id: &str) -> i32 {
        (java_hash(id) & 0x7fff_ffff) % self.partitions().max(1)
    }

    pub fn get(&self, id: &str) -> Option<TxnMeta> {
        self.state().by_id.get(id).cloned()
    }

    pub fn list(&self) -> Vec<(String, TxnMeta)> {
        self.state().by_id.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Writes `meta` (None: a tombstone) to `__transaction_state` and, when `wait`, waits until
    /// it is durable. Memory follows only once written (in a cluster, once committed when
    /// waited for, and only while this node still serves the partition at `term`, the epoch
    /// the operation began at).
    async fn persist(
        &self,
        id: &str,
        meta: Option<TxnMeta>,
        wait: bool,
        term: Option<i32>,
    ) -> Result<(), ResponseError> {
        let p = self.partition_for(id);
        let (key, value) = txn_log::txn_record(id, meta.as_ref());
        let batch = build_batch(0, now_ms(), &[(Some(&key), value.as_deref())]);
        let written = match self.cluster.get().filter(|_| self.serving.is_some()) {
            Some(cluster) => {
                // Only through the partition's group, and only at the epoch the operation began
                // at: what it decided was decided from that term's state.
                let term = term.ok_or(ResponseError::NotCoordinator)?;
                if self.serving_epoch(p) != Some(term) {
                    return Err(ResponseError::NotCoordinator);
                }
                let LeaderGuard { log, epoch, raft } = cluster.lead(TXN_TOPIC, p).map_err(coordinator_error)?;
                let w = raft.filter(|_| epoch == term).ok_or(ResponseError::NotCoordinator)?;
                Written::Replicated(w.proposer.enqueue(&w.raft, &log, batch, term, REPLICATED_WRITE_WAIT))
            }
            None if self.serving.is_some() => return Err(ResponseError::CoordinatorNotAvailable),
            None => {
                let LeaderGuard { log, epoch: leader_epoch, .. } =
                    self.topics.lead(TXN_TOPIC, p, NO_EPOCH).map_err(coordinator_error)?;
                let info =
                    log.append(&batch, leader_epoch, now_ms()).map_err(|e| storage_failure("write its state", e))?;
                Written::Local(log, info.last_offset + 1)
            }
        };
        let unsynced = match written {
            Written::Replicated(_) if wait => {
                written.settled(true).await?;
                None
            }
            Written::Local(..) if wait => Some(written),
            _ => None,
        };
        {
            let mut txns = self.state();
            // Another term began meanwhile: memory is that term's now (`take_over`, `give_up`).
            if term.is_some() && self.serving_epoch(p) != term {
                return Err(ResponseError::NotCoordinator);
            }
            match meta {
                Some(m) => txns.put(id, m),
                None => txns.remove(id),
            }
        }
        if let Some(w) = unsynced {
            w.settled(self.durable).await.map_err(|_| storage_failure("sync its state", "fsync failed"))?;
        }
        Ok(())
    }

    /// Checks the producer id and epoch a client presents.
    fn check_producer(meta: &TxnMeta, producer_id: i64, epoch: i16, caller: Caller) -> Result<(), ResponseError> {
        if meta.producer_id != producer_id {
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        if epoch != meta.producer_epoch {
            return Err(caller.fenced());
        }
        Ok(())
    }

    /// InitProducerId with a transactional id: a new id at epoch 0, or the
    /// existing one at the next epoch, which fences every older instance.
    /// An open transaction of the old instance is aborted first.
    pub async fn init_producer(
        &self,
        id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
        caller: Caller,
    ) -> Result<(i64, i16), ResponseError> {
        self.serves(id)?;
        if timeout_ms <= 0 || timeout_ms > self.max_timeout_ms {
            return Err(ResponseError::InvalidTransactionTimeout);
        }
        let _guard = self.lock_id(id).await;
        let term = self.term(id)?;
        let now = now_ms();
        let Some(mut meta) = self.get(id) else {
            let topics = self.topics.clone();
            let pid = crate::api::blocking(move || topics.allocate_producer_id())
                .await
                .map_err(|e| storage_failure("allocate a producer id", e.message))?;
            let meta = TxnMeta {
                producer_id: pid,
                producer_epoch: 0,
                timeout_ms,
                state: TxnState::Empty,
                partitions: BTreeSet::new(),
                start_ms: -1,
                update_ms: now,
            };
            self.persist(id, Some(meta), true, term).await?;
            return Ok((pid, 0));
        };
        if let Some((pid, epoch)) = expected {
            // KIP-360: a producer that names its current id and epoch may bump it.
            if pid != meta.producer_id || epoch != meta.producer_epoch {
                return Err(caller.fenced());
            }
        }
        match meta.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => {
                let commit = meta.state == TxnState::PrepareCommit;
                meta = self.complete(id, meta, commit, term).await?;
                unfinished(&meta)?;
            }
            TxnState::Ongoing => {
                // Fence the old instance: markers carry the new epoch, so its
                // late writes to these partitions are refused.
                meta.producer_epoch = meta.producer_epoch.saturating_add(1);
                meta = self.complete(id, meta, false, term).await?;
                unfinished(&meta)?;
                meta.timeout_ms = timeout_ms;
                meta.state = TxnState::Empty;
                self.persist(id, Some(meta.clone()), true, term).await?;
                return Ok((meta.producer_id, meta.producer_epoch));
            }
            _ => {}
        }
        if meta.producer_epoch >= i16::MAX - 1 {
            // Epochs are exhausted: start over under a new producer id.
            let topics = self.topics.clone();
            meta.producer_id = crate::api::blocking(move || topics.allocate_producer_id())
                .await
                .map_err(|e| storage_failure("allocate a producer id", e.message))?;
            meta.producer_epoch = 0;
        } else {
            meta.producer_epoch += 1;
        }
        meta.timeout_ms = timeout_ms;
        meta.state = TxnState::Empty;
        meta.partitions.clear();
        meta.start_ms = -1;
        meta.update_ms = now;
        self.persist(id, Some(meta.clone()), true, term).await?;
        Ok((meta.producer_id, meta.producer_epoch))
    }

    /// AddPartitionsToTxn / AddOffsetsToTxn: the partitions join the open
    /// transaction (starting it if none is open). Per partition, the error.
    pub async fn add_partitions(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        parts: Vec<(String, i32)>,
        caller: Caller,
    ) -> Result<Vec<((String, i32), Option<ResponseError>)>, ResponseError> {
        self.serves(id)?;
        let _guard = self.lock_id(id).await;
        let term = self.term(id)?;
        let mut meta = self.get(id).ok_or(ResponseError::InvalidProducerIdMapping)?;
        Self::check_producer(&meta, producer_id, epoch, caller)?;
        if matches!(meta.state, TxnState::PrepareCommit | TxnState::PrepareAbort) {
            return Err(ResponseError::ConcurrentTransactions);
        }
        let known = |t: &str, p: i32| -> Option<bool> {
            match self.cluster.get().filter(|_| self.serving.is_some()) {
                Some(c) => c.partition_known(t, p),
                None => self.topics.replica(t, p).map(|_| is_internal(&self.topics, t)),
            }
        };
        // Only the offsets topic of the internal ones: AddOffsetsToTxn adds its partition.
        let unknown: Vec<bool> = parts.iter().map(|(t, p)| t != OFFSETS_TOPIC && known(t, *p) != Some(false)).collect();
        if unknown.iter().any(|u| *u) {
            // Kafka adds nothing when any partition is bad.
            return Ok(parts
                .into_iter()
                .zip(unknown)
                .map(|(p, u)| {
                    let e =
                        if u { ResponseError::UnknownTopicOrPartition } else { ResponseError::OperationNotAttempted };
                    (p, Some(e))
                })
                .collect());
        }
        let fresh = parts.iter().any(|p| !meta.partitions.contains(p));
        if fresh || meta.state != TxnState::Ongoing {
            if meta.state != TxnState::Ongoing {
                meta.state = TxnState::Ongoing;
                meta.partitions.clear();
                meta.start_ms = now_ms();
            }
            meta.partitions.extend(parts.iter().cloned());
            meta.update_ms = now_ms();
            self.persist(id, Some(meta), true, term).await?;
        }
        Ok(parts.into_iter().map(|p| (p, None)).collect())
    }

    /// AddPartitionsToTxn v4+ with verify_only: are these partitions part
    /// of the producer's open transaction? Nothing changes.
    pub fn verify_partitions(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        parts: &[(String, i32)],
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        self.serves(id)?;
        let meta = self.get(id).ok_or(ResponseError::InvalidProducerIdMapping)?;
        Self::check_producer(&meta, producer_id, epoch, Caller { knows_fenced: true })?;
        Ok(parts
            .iter()
            .map(|p| {
                (meta.state != TxnState::Ongoing || !meta.partitions.contains(p))
                    .then_some(ResponseError::InvalidTxnState)
            })
            .collect())
    }

    /// Produce with a transactional batch: only into a partition the
    /// producer added to its open transaction, so no write can land after
    /// the transaction's marker and leave it hanging.
    ///
    /// In a cluster the partition's leader is the producer's coordinator only by chance: it
    /// checks when it is, and otherwise the log's own fencing by producer epoch is the guard
    /// (Kafka's behaviour before KIP-890's verification).
    pub fn check_produce(
        &self,
        transactional_id: Option<&str>,
        (producer_id, epoch): (i64, i16),
        topic: &str,
        partition: i32,
    ) -> Option<ResponseError> {
        if self.serving.is_some() && transactional_id.is_none_or(|id| self.serves(id).is_err()) {
            return None;
        }
        let txns = self.state();
        let Some(meta) = txns.by_producer.get(&producer_id).and_then(|id| txns.by_id.get(id)) else {
            return Some(ResponseError::InvalidTxnState);
        };
        if epoch < meta.producer_epoch {
            return Some(ResponseError::InvalidProducerEpoch);
        }
        let part = (topic.to_string(), partition);
        if epoch != meta.producer_epoch || meta.state != TxnState::Ongoing || !meta.partitions.contains(&part) {
            return Some(ResponseError::InvalidTxnState);
        }
        None
    }

    /// TxnOffsetCommit: offsets written inside the transaction, applied to
    /// the group when it commits. The group's partition of
    /// `__consumer_offsets` must have been added (AddOffsetsToTxn).
    ///
    /// In a cluster the group's coordinator is another node than the transaction's, most of the
    /// time: it writes the offsets as the producer's transactional batch, which the log fences
    /// by producer epoch, as Kafka's group coordinator does.
    pub async fn commit_offsets(
        &self,
        leadership: &dyn Leadership,
        id: &str,
        group: &str,
        producer: (i64, i16),
        offsets: Vec<(String, i32, CommittedOffset)>,
        caller: Caller,
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        if self.serving.is_some() && self.serves(id).is_err() {
            return Ok(self.groups.txn_commit(leadership, group, producer, offsets, self.durable).await);
        }
        let _guard = self.lock_id(id).await;
        self.term(id)?;
        let meta = self.get(id).ok_or(ResponseError::InvalidProducerIdMapping)?;
        Self::check_producer(&meta, producer.0, producer.1, caller)?;
        let part = (OFFSETS_TOPIC.to_string(), self.groups.partition_for(group));
        if meta.state != TxnState::Ongoing || !meta.partitions.contains(&part) {
            return Err(ResponseError::InvalidTxnState);
        }
        Ok(self.groups.txn_commit(leadership, group, producer, offsets, self.durable).await)
    }

    /// EndTxn: commit or abort the open transaction. A retry of an end that
    /// already happened succeeds; the opposite outcome is refused.
    pub async fn end(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        caller: Caller,
    ) -> Result<(), ResponseError> {
        self.serves(id)?;
        let _guard = self.lock_id(id).await;
        let term = self.term(id)?;
        let meta = self.get(id).ok_or(ResponseError::InvalidProducerIdMapping)?;
        Self::check_producer(&meta, producer_id, epoch, caller)?;
        match (meta.state, commit) {
            (TxnState::Ongoing, _) | (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                self.complete(id, meta, commit, term).await.map(|_| ())
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Ok(()),
            _ => Err(ResponseError::InvalidTxnState),
        }
    }

    /// The two phases of ending a transaction; the caller holds the id's lock. Returns the
    /// state it left: Complete, or still Prepare when some partition's leader could not be
    /// reached within `MARKER_WAIT` (the outcome is decided; `expire` writes the rest).
    async fn complete(
        &self,
        id: &str,
        mut meta: TxnMeta,
        commit: bool,
        term: Option<i32>,
    ) -> Result<TxnMeta, ResponseError> {
        meta.state = if commit { TxnState::PrepareCommit } else { TxnState::PrepareAbort };
        meta.update_ms = now_ms();
        self.persist(id, Some(meta.clone()), true, term).await?;
        let p = self.partition_for(id);
        let markers = Markers {
            producer_id: meta.producer_id,
            producer_epoch: meta.producer_epoch,
            commit,
            // The partition's leader epoch: every later coordinator of this id has a higher
            // one, so partition leaders refuse this one's markers once they took a newer's.
            coordinator_epoch: term.unwrap_or(0),
            partitions: meta.partitions.iter().cloned().collect(),
        };
        if !self.deliver(p, markers, term).await? {
            return Ok(meta);
        }
        meta.state = if commit { TxnState::CompleteCommit } else { TxnState::CompleteAbort };
        meta.partitions.clear();
        meta.start_ms = -1;
        meta.update_ms = now_ms();
        // Recovery redoes the markers from the Prepare record, so the
        // Complete record need not be waited for.
        self.persist(id, Some(meta.clone()), false, term).await?;
        metrics::counter!("fjord_transactions_total", "outcome" => if commit { "commit" } else { "abort" })
            .increment(1);
        Ok(meta)
    }

    /// Writes the markers of a decided end to every partition of the transaction: true once all
    /// are durable, false if some leader could not be reached within `MARKER_WAIT`. On a single
    /// node every partition is here. In a cluster each goes to its leader, this node's own
    /// through its Raft groups and the others' through the node that leads them, retried while
    /// this node still coordinates `__transaction_state` partition `p`.
    async fn deliver(&self, p: i32, m: Markers, term: Option<i32>) -> Result<bool, ResponseError> {
        let Some(cluster) = self.cluster.get().filter(|_| self.serving.is_some()).cloned() else {
            let results = write_markers_here(&*self.topics, &self.groups, &m, self.durable).await;
            return match results.into_iter().flatten().next() {
                None => Ok(true),
                Some(e) => Err(e),
            };
        };
        let term = term.ok_or(ResponseError::NotCoordinator)?;
        let give_up = tokio::time::Instant::now() + MARKER_WAIT;
        let mut left = m.partitions.clone();
        // Partitions the metadata here does not know, since when: dropped (their topic was
        // deleted) only once that has lasted, as this node's copy of the metadata may lag.
        let mut unknown_since: HashMap<(String, i32), tokio::time::Instant> = HashMap::new();
        let mut pause = Duration::from_millis(50);
        loop {
            // Each round only while this node still coordinates at the epoch the end was
            // decided at: a deposed coordinator stops at once (and partition leaders refuse its
            // markers anyway once a newer coordinator's reached them).
            if !self.still_serves(p, term) {
                return Err(ResponseError::NotCoordinator);
            }
            let mut by_node: BTreeMap<Option<i32>, Vec<(String, i32)>> = BTreeMap::new();
            for part in std::mem::take(&mut left) {
                match cluster.leader_of(&part.0, part.1) {
                    LeaderAt::Here => by_node.entry(None).or_default().push(part),
                    LeaderAt::Node(n) => by_node.entry(Some(n)).or_default().push(part),
                    LeaderAt::Unknown => left.push(part),
                    LeaderAt::Gone => {
                        let since = *unknown_since.entry(part.clone()).or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() < GONE_AFTER {
                            left.push(part);
                        }
                    }
                }
            }
            // A round waits no longer than what is left of the deadline (at least a second):
            // a node's late answer is no loss, as its markers stay queued in order there and a
            // retry's success implies theirs.
            let wait = give_up.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_secs(1));
            let sent = by_node.into_iter().map(|(node, partitions)| {
                let m = Markers { partitions, ..m.clone() };
                let parts = m.partitions.clone();
                let answer = cluster.write_markers(node, m, wait);
                async move { (node, parts, answer.await) }
            });
            for (node, parts, errors) in futures::future::join_all(sent).await {
                for (part, e) in parts.into_iter().zip(errors) {
                    match e {
                        None => {}
                        Some(ResponseError::TransactionCoordinatorFenced) => {
                            tracing::warn!(node, topic = %part.0, partition = part.1, "a newer coordinator wrote this id's markers");
                            return Err(ResponseError::NotCoordinator);
                        }
                        Some(e) => {
                            tracing::debug!(node, topic = %part.0, partition = part.1, error = ?e, "marker not written yet");
                            left.push(part);
                        }
                    }
                }
            }
            if left.is_empty() {
                return Ok(true);
            }
            let now = tokio::time::Instant::now();
            if now >= give_up {
                return Ok(false);
            }
            tokio::time::sleep(pause.min(give_up - now)).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Aborts transactions open longer than their timeout, bumping the
    /// epoch so the producer that went quiet is fenced; and forgets
    /// transactional ids idle past `expiration_ms`.
    pub async fn expire(&self, now: i64, expiration_ms: i64) {
        // Ends whose markers did not all reach their partitions' leaders in time.
        let stale: BTreeSet<String> = self
            .state()
            .by_id
            .iter()
            .filter(|(_, m)| now - m.update_ms > UNFINISHED_AFTER_MS)
            .map(|(id, _)| id.clone())
            .collect();
        self.finish_unfinished(|id| stale.contains(id)).await;
        let candidates: Vec<(String, TxnMeta)> = self.list();
        for (id, meta) in candidates {
            let timed_out = meta.state == TxnState::Ongoing && now - meta.start_ms > meta.timeout_ms as i64;
            let idle = matches!(meta.state, TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort)
                && now - meta.update_ms > expiration_ms;
            if !timed_out && !idle {
                continue;
            }
            let _guard = self.lock_id(&id).await;
            let Ok(term) = self.term(&id) else { continue };
            // Re-read under the lock: the producer may have moved on.
            let Some(mut meta) = self.get(&id) else { continue };
            if timed_out && meta.state == TxnState::Ongoing && now - meta.start_ms > meta.timeout_ms as i64 {
                tracing::info!(transactional_id = %id, timeout_ms = meta.timeout_ms, "aborting timed-out transaction");
                meta.producer_epoch = meta.producer_epoch.saturating_add(1);
                if let Err(e) = self.complete(&id, meta, false, term).await {
                    tracing::warn!(transactional_id = %id, error = ?e, "cannot abort timed-out transaction");
                }
            } else if matches!(meta.state, TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort)
                && now - meta.update_ms > expiration_ms
                && self.persist(&id, None, false, term).await.is_ok()
            {
                tracing::info!(transactional_id = %id, "expired idle transactional id");
                let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
                // Only the map and this task hold the lock: no one is waiting on it.
                if locks.get(&id).is_some_and(|l| Arc::strong_count(l) == 2) {
                    locks.remove(&id);
                }
            }
        }
    }
}

/// CONCURRENT_TRANSACTIONS while an end's markers are still being written: the client retries.
fn unfinished(meta: &TxnMeta) -> Result<(), ResponseError> {
    match meta.state {
        TxnState::PrepareCommit | TxnState::PrepareAbort => Err(ResponseError::ConcurrentTransactions),
        _ => Ok(()),
    }
}

/// A crash point the recovery tests arm through FJORD_FAILPOINT (in the
/// broker process they start; never in unit tests, where a stray variable
/// in the developer's shell would abort the test binary).
fn failpoint(name: &str) -> bool {
    !cfg!(test) && std::env::var("FJORD_FAILPOINT").is_ok_and(|v| v == name)
}

fn is_internal(topics: &Topics, topic: &str) -> bool {
    topics.topic(topic).is_some_and(|m| m.internal)
}

#[cfg(test)]
mod tests {
    //! The coordinator's state machine without a broker process: a data dir,
    //! `Topics`, and the coordinator's methods called as the handlers would.

    use std::collections::BTreeMap;

    use fjord_storage::batch::{build_batch_as, Producer};

    use super::*;
    use crate::config::BrokerConfig;

    const NEW: Caller = Caller { knows_fenced: true };
    const OLD: Caller = Caller { knows_fenced: false };
    const MAX_TIMEOUT_MS: i32 = 60_000;

    struct Fixture {
        _dir: tempfile::TempDir,
        topics: Arc<Topics>,
        groups: Arc<GroupCoordinator>,
        txns: TxnCoordinator,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
        let topics = Arc::new(Topics::open(&config).unwrap());
        topics.create("orders", 2, BTreeMap::new(), false).unwrap();
        let groups = Arc::new(GroupCoordinator::open(&topics, 1).unwrap());
        let txns = TxnCoordinator::open(topics.clone(), groups.clone(), 1, true, MAX_TIMEOUT_MS).unwrap();
        Fixture { _dir: dir, topics, groups, txns }
    }

    impl Fixture {
        /// The coordinator as a restart finds it: replayed from its topic.
        fn reopen(&self) -> TxnCoordinator {
            TxnCoordinator::open(self.topics.clone(), self.groups.clone(), 1, true, MAX_TIMEOUT_MS).unwrap()
        }

        /// A transactional batch of the producer in `orders` partition `p`.
        fn produce(&self, p: i32, (id, epoch): (i64, i16), sequence: i32) {
            let producer = Producer { id, epoch, base_sequence: sequence, transactional: true };
            let batch = build_batch_as(0, now_ms(), &[(Some(b"k"), Some(b"v"))], Some(producer));
            self.topics.log("orders", p).unwrap().append(&batch, 0, now_ms()).unwrap();
        }

        fn orders(&self, p: i32) -> Arc<PartitionLog> {
            self.topics.log("orders", p).unwrap()
        }
    }

    fn orders(p: i32) -> (String, i32) {
        ("orders".to_string(), p)
    }

    #[tokio::test]
    async fn init_producer_id_starts_at_epoch_zero_and_each_init_fences_the_last() {
        let f = fixture();
        let (pid, epoch) = f.txns.init_producer("t1", 10_000, None, NEW).await.unwrap();
        assert_eq!(epoch, 0);
        assert_eq!(f.txns.get("t1").map(|m| m.state), Some(TxnState::Empty));
        assert_eq!(f.txns.init_producer("t1", 10_000, None, NEW).await, Ok((pid, 1)));
        // The instance still at epoch 0 is fenced, with the error its
        // request version knows.
        assert_eq!(f.txns.add_partitions("t1", pid, 0, vec![orders(0)], NEW).await, Err(ResponseError::ProducerFenced));
        assert_eq!(
            f.txns.add_partitions("t1", pid, 0, vec![orders(0)], OLD).await,
            Err(ResponseError::InvalidProducerEpoch)
        );
        assert_eq!(f.txns.end("t1", pid, 0, true, NEW).await, Err(ResponseError::ProducerFenced));
        // Another producer id, or an id never initialised.
        assert_eq!(
            f.txns.add_partitions("t1", pid + 1, 1, vec![orders(0)], NEW).await,
            Err(ResponseError::InvalidProducerIdMapping)
        );
        assert_eq!(f.txns.end("nobody", pid, 1, true, NEW).await, Err(ResponseError::InvalidProducerIdMapping));
        // KIP-360: naming the current id and epoch bumps it; a stale pair is fenced.
        assert_eq!(f.txns.init_producer("t1", 10_000, Some((pid, 1)), NEW).await, Ok((pid, 2)));
        assert_eq!(f.txns.init_producer("t1", 10_000, Some((pid, 1)), NEW).await, Err(ResponseError::ProducerFenced));
        // A second transactional id gets its own producer id.
        let (other, _) = f.txns.init_producer("t2", 10_000, None, NEW).await.unwrap();
        assert_ne!(other, pid);
    }

    #[tokio::test]
    async fn transaction_timeouts_outside_the_allowed_range_are_refused() {
        let f = fixture();
        for bad in [0, -1, MAX_TIMEOUT_MS + 1] {
            assert_eq!(
                f.txns.init_producer("t", bad, None, NEW).await,
                Err(ResponseError::InvalidTransactionTimeout),
                "timeout {bad}"
            );
        }
        assert!(f.txns.get("t").is_none(), "nothing was created");
        assert!(f.txns.init_producer("t", MAX_TIMEOUT_MS, None, NEW).await.is_ok());
    }

    #[tokio::test]
    async fn add_partitions_opens_the_transaction_and_adds_nothing_if_one_is_unknown() {
        let f = fixture();
        let (pid, epoch) = f.txns.init_producer("t", 10_000, None, NEW).await.unwrap();
        // Nothing added yet: a transactional produce is refused.
        assert_eq!(f.txns.check_produce(None, (pid, epoch), "orders", 0), Some(ResponseError::InvalidTxnState));
        let added = f.txns.add_partitions("t", pid, epoch, vec![orders(0)], NEW).await.unwrap();
        assert_eq!(added, vec![(orders(0), None)]);
        let meta = f.txns.get("t").unwrap();
        assert_eq!(meta.state, TxnState::Ongoing);
        assert_eq!(meta.partitions, BTreeSet::from([orders(0)]));
        assert!(meta.start_ms > 0);
        assert_eq!(f.txns.check_produce(None, (pid, epoch), "orders", 0), None);
        assert_eq!(f.txns.check_produce(None, (pid, epoch), "orders", 1), Some(ResponseError::InvalidTxnState));
        assert_eq!(
            f.txns.check_produce(None, (pid, epoch - 1), "orders", 0),
            Some(ResponseError::InvalidProducerEpoch)
        );

        // One unknown partition: none is added, the others are not attempted.
        let answer = f.txns.add_partitions("t", pid, epoch, vec![orders(1), ("nope".into(), 0)], NEW).await.unwrap();
        assert_eq!(
            answer,
            vec![
                (orders(1), Some(ResponseError::OperationNotAttempted)),
                (("nope".into(), 0), Some(ResponseError::UnknownTopicOrPartition)),
            ]
        );
        assert_eq!(f.txns.get("t").unwrap().partitions, BTreeSet::from([orders(0)]));
        // An internal topic other than the offsets topic is not a transaction's.
        let answer = f.txns.add_partitions("t", pid, epoch, vec![(TXN_TOPIC.into(), 0)], NEW).await.unwrap();
        assert_eq!(answer[0].1, Some(ResponseError::UnknownTopicOrPartition));

        assert_eq!(
            f.txns.verify_partitions("t", pid, epoch, &[orders(0), orders(1)]).unwrap(),
            vec![None, Some(ResponseError::InvalidTxnState)]
        );
    }

    #[tokio::test]
    async fn commit_writes_markers_and_a_retry_of_the_same_end_succeeds() {
        let f = fixture();
        let (pid, epoch) = f.txns.init_producer("t", 10_000, None, NEW).await.unwrap();
        f.txns.add_partitions("t", pid, epoch, vec![orders(0), orders(1)], NEW).await.unwrap();
        f.produce(0, (pid, epoch), 0);
        let log = f.orders(0);
        assert_eq!(log.last_stable_offset(), 0, "the open transaction holds readers back");
        assert_eq!(f.txns.end("t", pid, epoch, true, NEW).await, Ok(()));
        let meta = f.txns.get("t").unwrap();
        assert_eq!(meta.state, TxnState::CompleteCommit);
        assert!(meta.partitions.is_empty());
        // A marker in each partition of the transaction, the data committed.
        assert_eq!((log.log_end_offset(), log.last_stable_offset()), (2, 2));
        assert!(log.aborted_transactions(0, 2).is_empty());
        assert_eq!(f.orders(1).log_end_offset(), 1);
        // The same end again is a retry; the opposite one is refused.
        assert_eq!(f.txns.end("t", pid, epoch, true, NEW).await, Ok(()));
        assert_eq!(f.txns.end("t", pid, epoch, false, NEW).await, Err(ResponseError::InvalidTxnState));
        assert_eq!(f.orders(1).log_end_offset(), 1, "a retry writes no second marker");
        assert_eq!(f.txns.check_produce(None, (pid, epoch), "orders", 0), Some(ResponseError::InvalidTxnState));
        // Ending with nothing open is refused.
        f.txns.init_producer("t", 10_000, None, NEW).await.unwrap();
        assert_eq!(f.txns.end("t", pid, epoch + 1, true, NEW).await, Err(ResponseError::InvalidTxnState));
    }

    #[tokio::test]
    async fn abort_marks_the_data_aborted() {
        let f = fixture();
        let (pid, epoch) = f.txns.init_producer("t", 10_000, None, NEW).await.unwrap();
        f.txns.add_partitions("t", pid, epoch, vec![orders(0)], NEW).await.unwrap();
        f.produce(0, (pid, epoch), 0);
        assert_eq!(f.txns.end("t", pid, epoch, false, NEW).await, Ok(()));
        assert_eq!(f.txns.get("t").unwrap().state, TxnState::CompleteAbort);
        let aborted = f.orders(0).aborted_transactions(0, 2);
        assert_eq!(aborted.len(), 1);
        assert_eq!(aborted[0].producer_id, pid);
    }

    /// A fenced producer's transactional offset commit that the log refuses leaves nothing
    /// pending (OffsetFetch with require_stable would wait on it for good), and a late marker of
    /// an older epoch does not apply a newer transaction's offsets.
    #[tokio::test]
    async fn refused_or_foreign_transactional_offsets_are_not_left_pending_or_applied() {
        let f = fixture();
        let (pid, epoch) = f.txns.init_producer("t", 10_000, None, NEW).await.unwrap();
        let offsets_partition = (OFFSETS_TOPIC.to_string(), f.groups.partition_for("g"));
        f.txns.add_partitions("t", pid, epoch, vec![offsets_partition.clone()], NEW).await.unwrap();
        let c = |offset| CommittedOffset { offset, leader_epoch: -1, metadata: None, commit_ms: now_ms() };
        let zombie = (pid, epoch);
        // A new instance fences the old one; its abort marker lands in the offsets partition.
        let (_, next) = f.txns.init_producer("t", 10_000, None, NEW).await.unwrap();
        assert_eq!(next, epoch + 1);
        // The zombie's commit reaches the group coordinator directly (as on another node).
        let refused = f.groups.txn_commit(&*f.topics, "g", zombie, vec![("orders".into(), 0, c(5))], true).await;
        assert_eq!(refused, vec![Some(ResponseError::ProducerFenced)]);
        assert!(!f.groups.has_pending("g", "orders", 0), "nothing pending after a refused write");

        // The new instance commits offsets in its transaction; a late marker of the old epoch
        // (a deposed coordinator's) leaves them pending, its own marker applies them.
        f.txns.add_partitions("t", pid, next, vec![offsets_partition.clone()], NEW).await.unwrap();
        let written = f.groups.txn_commit(&*f.topics, "g", (pid, next), vec![("orders".into(), 0, c(7))], true).await;
        assert_eq!(written, vec![None]);
        f.groups.complete_txn(pid, epoch, true, offsets_partition.1);
        assert!(f.groups.has_pending("g", "orders", 0), "an older epoch's marker is not this transaction's");
        assert_eq!(f.txns.end("t", pid, next, true, NEW).await, Ok(()));
        assert!(!f.groups.has_pending("g", "orders", 0));
        assert_eq!(f.groups.fetch_offsets("g").get(&("orders".to_string(), 0)).map(|c| c.offset), Some(7));
    }

    #[tokio::test]
    async fn a_new_instance_aborts_the_open_transaction_of_the_old_one() {
        let f = fixture();
        let (pid, epoch) = f.txns.init_producer("t", 10_000, None, NEW).await.unwrap();
        f.txns.add_partitions("t", pid, epoch, vec![orders(0)], NEW).await.unwrap();
        f.produce(0, (pid, epoch), 0);
        let (same, next) = f.txns.init_producer("t", 10_000, None, NEW).await.unwrap();
        assert_eq!((same, next), (pid, epoch + 1));
        let meta = f.txns.get("t").unwrap();
        assert_eq!((meta.state, meta.partitions.len()), (TxnState::Empty, 0));
        let log = f.orders(0);
        assert_eq!(log.aborted_transactions(0, log.log_end_offset()).len(), 1, "the old transaction was aborted");
        assert_eq!(log.last_stable_offset(), log.log_end_offset());
        // The old instance can neither end it nor write into it.
        assert_eq!(f.txns.end("t", pid, epoch, true, NEW).await, Err(ResponseError::ProducerFenced));
        assert_eq!(f.txns.check_produce(None, (pid, epoch), "orders", 0), Some(ResponseError::InvalidProducerEpoch));
    }

    #[tokio::test]
    async fn timed_out_transactions_abort_and_idle_ids_expire() {
        let f = fixture();
        let (pid, epoch) = f.txns.init_producer("slow", 1_000, None, NEW).await.unwrap();
        f.txns.add_partitions("slow", pid, epoch, vec![orders(0)], NEW).await.unwrap();
        f.produce(0, (pid, epoch), 0);
        f.txns.init_producer("idle", 1_000, None, NEW).await.unwrap();
        let start = f.txns.get("slow").unwrap().start_ms;
        let day = 24 * 3600 * 1000;
        // Within its timeout nothing happens.
        f.txns.expire(start + 1_000, day).await;
        assert_eq!(f.txns.get("slow").unwrap().state, TxnState::Ongoing);
        // Past it: aborted under the next epoch, so the quiet producer is fenced.
        f.txns.expire(start + 1_001, day).await;
        let meta = f.txns.get("slow").unwrap();
        assert_eq!((meta.state, meta.producer_epoch), (TxnState::CompleteAbort, epoch + 1));
        assert_eq!(f.orders(0).aborted_transactions(0, 2).len(), 1);
        assert_eq!(f.txns.end("slow", pid, epoch, true, OLD).await, Err(ResponseError::InvalidProducerEpoch));
        // Ids idle past the expiration are forgotten, here and after a restart.
        let idle_since = f.txns.get("idle").unwrap().update_ms;
        f.txns.expire(idle_since + day, day).await;
        assert!(f.txns.get("idle").is_some(), "not idle for longer than the expiration yet");
        f.txns.expire(idle_since + day + 1, day).await;
        assert!(f.txns.get("idle").is_none());
        assert!(f.reopen().get("idle").is_none(), "the tombstone is replayed");
    }

    #[tokio::test]
    async fn state_is_rebuilt_from_the_log_and_an_interrupted_end_completes() {
        let f = fixture();
        let (pid, epoch) = f.txns.init_producer("open", 10_000, None, NEW).await.unwrap();
        f.txns.add_partitions("open", pid, epoch, vec![orders(0)], NEW).await.unwrap();
        let (done, _) = f.txns.init_producer("done", 10_000, None, NEW).await.unwrap();
        f.txns.add_partitions("done", done, 0, vec![orders(1)], NEW).await.unwrap();
        f.txns.end("done", done, 0, true, NEW).await.unwrap();
        let replayed = f.reopen();
        assert_eq!(replayed.get("open"), f.txns.get("open"));
        assert_eq!(replayed.get("done"), f.txns.get("done"));
        assert_eq!(replayed.get("open").unwrap().state, TxnState::Ongoing, "an open transaction stays open");

        // A crash after the PrepareCommit record: the restart finishes it.
        let mut prepared = f.txns.get("open").unwrap();
        prepared.state = TxnState::PrepareCommit;
        f.txns.persist("open", Some(prepared), true, None).await.unwrap();
        let end_before = f.orders(0).log_end_offset();
        let restarted = f.reopen();
        assert_eq!(restarted.get("open").unwrap().state, TxnState::PrepareCommit);
        restarted.recover().await;
        assert_eq!(restarted.get("open").unwrap().state, TxnState::CompleteCommit);
        assert_eq!(f.orders(0).log_end_offset(), end_before + 1, "the commit marker was written");
        assert_eq!(f.reopen().get("open").unwrap().state, TxnState::CompleteCommit);
    }
}
