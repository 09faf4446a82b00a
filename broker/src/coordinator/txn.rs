//! The transaction coordinator: per transactional id, the producer id and
//! epoch, the partitions of the open transaction and its state, kept as
//! records in the internal, compacted `__transaction_state` topic and
//! replayed on start.
//!
//! Ending a transaction is two-phase, as in Kafka: the PrepareCommit /
//! PrepareAbort record is made durable first, then a marker goes to every
//! partition, then the Complete record. A broker that dies between the
//! phases finds the Prepare record on restart and writes the markers again.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use fjord_storage::batch::build_batch;
use fjord_storage::{LogError, PartitionLog};
use kafka_protocol::error::ResponseError;

use crate::coordinator::classic::{java_hash, CommittedOffset, GroupCoordinator, OFFSETS_TOPIC};
use crate::coordinator::txn_log;
use crate::internal_topic;
use crate::leadership::{coordinator_error, LeaderGuard, Leadership, NO_EPOCH};
use crate::server::now_ms;
use crate::topics::Topics;

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
    partitions: i32,
    durable: bool,
    max_timeout_ms: i32,
    txns: Mutex<Txns>,
    /// One operation at a time per transactional id; held across the
    /// fsyncs of a commit so a second EndTxn or an AddPartitions waits.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
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
            partitions,
            durable,
            max_timeout_ms,
            txns: Mutex::new(Txns::default()),
            locks: Mutex::new(HashMap::new()),
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

    /// Replays one partition; true if it held records of the old JSON format.
    fn replay(&self, log: &PartitionLog) -> anyhow::Result<bool> {
        let mut txns = self.state();
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

    /// Finishes transactions a crash left between the two phases of their
    /// end. Open (Ongoing) ones stay open: their producer may carry on, and
    /// the timeout aborts them otherwise.
    pub async fn recover(&self) {
        let unfinished: Vec<(String, TxnMeta)> = self
            .state()
            .by_id
            .iter()
            .filter(|(_, m)| matches!(m.state, TxnState::PrepareCommit | TxnState::PrepareAbort))
            .map(|(id, m)| (id.clone(), m.clone()))
            .collect();
        for (id, meta) in unfinished {
            let _guard = self.lock_id(&id).await;
            let commit = meta.state == TxnState::PrepareCommit;
            tracing::info!(transactional_id = %id, commit, "completing a transaction interrupted by a restart");
            if let Err(e) = self.complete(&id, meta, commit).await {
                tracing::error!(transactional_id = %id, error = ?e, "cannot complete transaction");
            }
        }
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
        (java_hash(id) & 0x7fff_ffff) % self.partitions.max(1)
    }

    pub fn get(&self, id: &str) -> Option<TxnMeta> {
        self.state().by_id.get(id).cloned()
    }

    pub fn list(&self) -> Vec<(String, TxnMeta)> {
        self.state().by_id.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Writes `meta` (None: a tombstone) to `__transaction_state` and, when
    /// `wait`, waits until it is durable. Memory follows only once written.
    async fn persist(&self, id: &str, meta: Option<TxnMeta>, wait: bool) -> Result<(), ResponseError> {
        let LeaderGuard { log, epoch: leader_epoch, .. } =
            self.topics.lead(TXN_TOPIC, self.partition_for(id), NO_EPOCH).map_err(coordinator_error)?;
        let (key, value) = txn_log::txn_record(id, meta.as_ref());
        let batch = build_batch(0, now_ms(), &[(Some(&key), value.as_deref())]);
        let info = log.append(&batch, leader_epoch, now_ms()).map_err(|e| storage_failure("write its state", e))?;
        {
            let mut txns = self.state();
            match meta {
                Some(m) => txns.put(id, m),
                None => txns.remove(id),
            }
        }
        if wait && self.durable {
            log.sync(info.last_offset + 1).await.map_err(|e| storage_failure("sync its state", e))?;
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
        if timeout_ms <= 0 || timeout_ms > self.max_timeout_ms {
            return Err(ResponseError::InvalidTransactionTimeout);
        }
        let _guard = self.lock_id(id).await;
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
            self.persist(id, Some(meta), true).await?;
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
                meta = self.complete(id, meta, commit).await?;
            }
            TxnState::Ongoing => {
                // Fence the old instance: markers carry the new epoch, so its
                // late writes to these partitions are refused.
                meta.producer_epoch = meta.producer_epoch.saturating_add(1);
                meta = self.complete(id, meta, false).await?;
                meta.timeout_ms = timeout_ms;
                meta.state = TxnState::Empty;
                self.persist(id, Some(meta.clone()), true).await?;
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
        self.persist(id, Some(meta.clone()), true).await?;
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
        let _guard = self.lock_id(id).await;
        let mut meta = self.get(id).ok_or(ResponseError::InvalidProducerIdMapping)?;
        Self::check_producer(&meta, producer_id, epoch, caller)?;
        if matches!(meta.state, TxnState::PrepareCommit | TxnState::PrepareAbort) {
            return Err(ResponseError::ConcurrentTransactions);
        }
        let unknown: Vec<bool> = parts
            .iter()
            .map(|(t, p)| t != OFFSETS_TOPIC && (self.topics.replica(t, *p).is_none() || is_internal(&self.topics, t)))
            .collect();
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
            self.persist(id, Some(meta), true).await?;
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
    pub fn check_produce(&self, producer_id: i64, epoch: i16, topic: &str, partition: i32) -> Option<ResponseError> {
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
    pub async fn commit_offsets(
        &self,
        id: &str,
        group: &str,
        producer: (i64, i16),
        offsets: Vec<(String, i32, CommittedOffset)>,
        caller: Caller,
    ) -> Result<Vec<Option<ResponseError>>, ResponseError> {
        let _guard = self.lock_id(id).await;
        let meta = self.get(id).ok_or(ResponseError::InvalidProducerIdMapping)?;
        Self::check_producer(&meta, producer.0, producer.1, caller)?;
        let part = (OFFSETS_TOPIC.to_string(), self.groups.partition_for(group));
        if meta.state != TxnState::Ongoing || !meta.partitions.contains(&part) {
            return Err(ResponseError::InvalidTxnState);
        }
        Ok(self.groups.txn_commit(&*self.topics, group, producer, offsets, self.durable).await)
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
        let _guard = self.lock_id(id).await;
        let meta = self.get(id).ok_or(ResponseError::InvalidProducerIdMapping)?;
        Self::check_producer(&meta, producer_id, epoch, caller)?;
        match (meta.state, commit) {
            (TxnState::Ongoing, _) | (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                self.complete(id, meta, commit).await.map(|_| ())
            }
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Ok(()),
            _ => Err(ResponseError::InvalidTxnState),
        }
    }

    /// The two phases of ending a transaction; the caller holds the id's
    /// lock. Returns the completed state.
    async fn complete(&self, id: &str, mut meta: TxnMeta, commit: bool) -> Result<TxnMeta, ResponseError> {
        meta.state = if commit { TxnState::PrepareCommit } else { TxnState::PrepareAbort };
        meta.update_ms = now_ms();
        self.persist(id, Some(meta.clone()), true).await?;
        let mut written: Vec<(Arc<PartitionLog>, i64)> = Vec::new();
        for (topic, partition) in &meta.partitions {
            // A partition whose topic was deleted meanwhile needs no marker.
            // The marker carries the partition's current leader epoch, as
            // every append does.
            let Ok(LeaderGuard { log, epoch: leader_epoch, .. }) = self.topics.lead(topic, *partition, NO_EPOCH) else {
                continue;
            };
            match log.append_marker(meta.producer_id, meta.producer_epoch, 0, commit, leader_epoch, now_ms()) {
                Ok(offset) => written.push((log, offset + 1)),
                Err(LogError::InvalidProducerEpoch { .. }) => {
                    // A newer epoch already ended this producer's work here.
                    tracing::warn!(transactional_id = %id, topic, partition, "marker from a fenced epoch skipped");
                }
                Err(e) => return Err(storage_failure("write a transaction marker", e)),
            }
            if topic == OFFSETS_TOPIC {
                self.groups.complete_txn(meta.producer_id, commit, *partition);
            }
            if failpoint("txn-after-first-marker") {
                // Tests of recovery die here: one marker written, the rest not.
                std::process::abort();
            }
        }
        if self.durable {
            let syncs = written.iter().map(|(log, upto)| log.sync(*upto));
            for r in futures::future::join_all(syncs).await {
                r.map_err(|e| storage_failure("sync a transaction marker", e))?;
            }
        }
        meta.state = if commit { TxnState::CompleteCommit } else { TxnState::CompleteAbort };
        meta.partitions.clear();
        meta.start_ms = -1;
        meta.update_ms = now_ms();
        // Recovery redoes the markers from the Prepare record, so the
        // Complete record need not be waited for.
        self.persist(id, Some(meta.clone()), false).await?;
        metrics::counter!("fjord_transactions_total", "outcome" => if commit { "commit" } else { "abort" })
            .increment(1);
        Ok(meta)
    }

    /// Aborts transactions open longer than their timeout, bumping the
    /// epoch so the producer that went quiet is fenced; and forgets
    /// transactional ids idle past `expiration_ms`.
    pub async fn expire(&self, now: i64, expiration_ms: i64) {
        let candidates: Vec<(String, TxnMeta)> = self.list();
        for (id, meta) in candidates {
            let timed_out = meta.state == TxnState::Ongoing && now - meta.start_ms > meta.timeout_ms as i64;
            let idle = matches!(meta.state, TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort)
                && now - meta.update_ms > expiration_ms;
            if !timed_out && !idle {
                continue;
            }
            let _guard = self.lock_id(&id).await;
            // Re-read under the lock: the producer may have moved on.
            let Some(mut meta) = self.get(&id) else { continue };
            if timed_out && meta.state == TxnState::Ongoing && now - meta.start_ms > meta.timeout_ms as i64 {
                tracing::info!(transactional_id = %id, timeout_ms = meta.timeout_ms, "aborting timed-out transaction");
                meta.producer_epoch = meta.producer_epoch.saturating_add(1);
                if let Err(e) = self.complete(&id, meta, false).await {
                    tracing::warn!(transactional_id = %id, error = ?e, "cannot abort timed-out transaction");
                }
            } else if matches!(meta.state, TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort)
                && now - meta.update_ms > expiration_ms
                && self.persist(&id, None, false).await.is_ok()
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
        assert_eq!(f.txns.check_produce(pid, epoch, "orders", 0), Some(ResponseError::InvalidTxnState));
        let added = f.txns.add_partitions("t", pid, epoch, vec![orders(0)], NEW).await.unwrap();
        assert_eq!(added, vec![(orders(0), None)]);
        let meta = f.txns.get("t").unwrap();
        assert_eq!(meta.state, TxnState::Ongoing);
        assert_eq!(meta.partitions, BTreeSet::from([orders(0)]));
        assert!(meta.start_ms > 0);
        assert_eq!(f.txns.check_produce(pid, epoch, "orders", 0), None);
        assert_eq!(f.txns.check_produce(pid, epoch, "orders", 1), Some(ResponseError::InvalidTxnState));
        assert_eq!(f.txns.check_produce(pid, epoch - 1, "orders", 0), Some(ResponseError::InvalidProducerEpoch));

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
        assert_eq!(f.txns.check_produce(pid, epoch, "orders", 0), Some(ResponseError::InvalidTxnState));
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
        assert_eq!(f.txns.check_produce(pid, epoch, "orders", 0), Some(ResponseError::InvalidProducerEpoch));
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
        f.txns.persist("open", Some(prepared), true).await.unwrap();
        let end_before = f.orders(0).log_end_offset();
        let restarted = f.reopen();
        assert_eq!(restarted.get("open").unwrap().state, TxnState::PrepareCommit);
        restarted.recover().await;
        assert_eq!(restarted.get("open").unwrap().state, TxnState::CompleteCommit);
        assert_eq!(f.orders(0).log_end_offset(), end_before + 1, "the commit marker was written");
        assert_eq!(f.reopen().get("open").unwrap().state, TxnState::CompleteCommit);
    }
}
