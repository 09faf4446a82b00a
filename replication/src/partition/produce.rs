//! A partition leader's write path: a producer's batches are checked against the leader's log,
//! proposed to the partition's Raft group, and answered once the group has committed them (the
//! high watermark covers them), with the offsets they were stored at.

use std::sync::Arc;

use bytes::Bytes;
use std::time::Duration;

use fjord_storage::{AppendInfo, LogError, PartitionLog, ProduceVerdict};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::storage::RaftStateMachine;
use openraft::ServerState;

use crate::node;
use crate::types::{BatchData, NodeId, Raft, TypeConfig, MAX_TERM};

/// Why a produce to a replicated partition was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The batches were refused by the log's rules (the same errors a single node gives).
    #[error(transparent)]
    Log(#[from] LogError),
    /// This replica does not lead the partition (any more): the client looks the leader up.
    #[error("this replica is not the partition's leader")]
    NotLeader,
    /// Not committed within the request's timeout (a majority of the replicas is unreachable,
    /// or an election is under way). The batch may still be committed later: an idempotent
    /// producer's retry then finds it.
    #[error("the partition's replicas did not commit the batch within {0:?}")]
    TimedOut(Duration),
    /// The group failed for good (its storage failed): nothing more is written through it.
    #[error("the partition's replica failed: {0}")]
    Failed(String),
}

/// Serialises the writes of one partition on its leader. The producer-state check (idempotent
/// sequences, fencing) reads the leader's log, and a batch's effect on that state only shows
/// once the batch is stored; so the check, the proposal and the wait for its commit run under
/// one lock. Two copies of one retried batch can then never both pass the check, and a
/// producer's next batch is checked against state that holds its previous one.
///
/// The lock is held until openraft has resolved the proposal (committed, discarded, or the group
/// stopped), not only until the client's timeout: a proposal still queued in openraft when its
/// request timed out would otherwise be stored next to the retry that followed it.
///
/// A producer's write holds the lock only until it is in the leader's log (see `write_locked`),
/// so a partition's writes pipeline; the broker's own writes (`enqueue`) hold it until they are
/// resolved. acks=1 waits for the commit too, which is stronger than asked.
#[derive(Default)]
pub struct Proposer {
    lock: Arc<tokio::sync::Mutex<()>>,
    /// The ordered queue of the broker's own writes (`enqueue`), started on first use; its task
    /// ends when the proposer is dropped.
    queue: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<Queued>>>,
    /// When each follower last held everything committed (see `in_sync`).
    caught_up: std::sync::Mutex<std::collections::HashMap<NodeId, tokio::time::Instant>>,
}

/// A queued write: its payload, the leader epoch it was decided at, and who waits for it.
type Queued = (Bytes, i32, tokio::sync::oneshot::Sender<Result<AppendInfo, ProduceError>>);

/// How long a leader may go without a quorum's answer and still serve. An idle partition hears
/// its followers only through the group heartbeats (one a second, each given up after a short
/// timeout), so this allows for many of them to be slow on a loaded machine: a false alarm
/// sends producers away and makes a coordinator drop its groups.
pub const QUORUM_SILENCE: Duration = Duration::from_secs(10);

/// How often a wait for the high watermark looks again at whether this replica still leads.
const RECHECK: Duration = Duration::from_millis(100);

impl Proposer {
    /// Writes a producer's payload to the partition through its Raft group, `raft`, whose store
    /// is `log`; answers where it was stored, once committed, within `wait`.
    pub async fn produce<SM>(
        &self,
        raft: &Raft<SM>,
        log: &Arc<PartitionLog>,
        payload: Bytes,
        wait: Duration,
    ) -> Result<AppendInfo, ProduceError>
    where
        SM: RaftStateMachine<TypeConfig> + 'static,
    {
        // A deposed leader answers at once rather than after queueing for the lock.
        leader_epoch(raft).ok_or(ProduceError::NotLeader)?;
        let give_up = tokio::time::Instant::now() + wait;
        // Unconstrained: the first poll must join the lock's queue even when the caller's
        // cooperative budget is spent, so that pipelined requests polled in arrival order take
        // the lock in that order (the connection polls each request once before the next).
        let turn = tokio::time::timeout_at(give_up, tokio::task::unconstrained(self.lock.clone().lock_owned()))
            .await
            .map_err(|_| ProduceError::TimedOut(wait))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (raft, log) = (raft.clone(), log.clone());
        // The write runs on, holding the lock as long as it needs it, if this request stops
        // waiting for it.
        tokio::spawn(async move {
            let result = write_locked(&raft, &log, &payload, None, give_up, Some(turn)).await;
            let _ = tx.send(result);
        });
        match tokio::time::timeout_at(give_up, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ProduceError::Failed("the write task ended without an answer".into())),
            Err(_) => Err(ProduceError::TimedOut(wait)),
        }
    }

    /// Runs `change`, a change of the group's membership, holding the partition's lock until it
    /// is resolved: a pipelined producer write takes the store's growth in its term for its own
    /// entry (`write_locked`), so no other entry may be appended while one holds the lock.
    pub async fn exclusive<T>(&self, change: impl std::future::Future<Output = T>) -> T {
        let _turn = self.lock.lock().await;
        change.await
    }

    /// Queues a write of the broker's own (a coordinator's records, built from its in-memory
    /// state at leader epoch `epoch`): writes are proposed in the order they were queued, each
    /// only while this replica still leads at `epoch` (a write decided in an earlier term of
    /// this node's leadership must not land after what another leader wrote meanwhile). The
    /// write goes ahead whether or not the answer is awaited; a waiter bounds its own wait.
    /// Needs a Tokio runtime.
    pub fn enqueue<SM>(
        &self,
        raft: &Raft<SM>,
        log: &Arc<PartitionLog>,
        payload: Vec<u8>,
        epoch: i32,
        wait: Duration,
    ) -> tokio::sync::oneshot::Receiver<Result<AppendInfo, ProduceError>>
    where
        SM: RaftStateMachine<TypeConfig> + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let sender = queue.get_or_insert_with(|| {
            let (qtx, mut qrx) = tokio::sync::mpsc::unbounded_channel::<Queued>();
            let (lock, raft, log) = (self.lock.clone(), raft.clone(), log.clone());
            tokio::spawn(async move {
                while let Some((payload, epoch, answer)) = qrx.recv().await {
                    let _turn = lock.lock().await;
                    let give_up = tokio::time::Instant::now() + wait;
                    let _ = answer.send(write_locked(&raft, &log, &payload, Some(epoch), give_up, None).await);
                }
            });
            qtx
        });
        if let Err(tokio::sync::mpsc::error::SendError((_, _, answer))) = sender.send((payload.into(), epoch, tx)) {
            let _ = answer.send(Err(ProduceError::Failed("the partition's write queue stopped".into())));
        }
        rx
    }
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}

/// One write, run by the holder of the partition's lock: a producer's (`coordinator_epoch`
/// None: checked by the topic's rules and the producer's sequence) or the broker's own, decided
/// at that epoch. `give_up` bounds the wait for a duplicate's commit; a proposal is followed
/// until openraft resolves it.
///
/// With `turn` (the lock, owned), the lock is released as soon as the next write may be checked:
/// once a proposal is in this leader's log in the term it was checked in (its effect on the
/// producer's state shows there), or once a duplicate is found, rather than when it commits.
/// Writes of one partition then pipeline: several are replicated in one round trip, which is
/// what a leader far from its followers needs. Without `turn` the caller holds the lock until
/// this returns.
async fn write_locked<SM>(
    raft: &Raft<SM>,
    log: &Arc<PartitionLog>,
    payload: &[u8],
    coordinator_epoch: Option<i32>,
    give_up: tokio::time::Instant,
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
) -> Result<AppendInfo, ProduceError>
where
    SM: RaftStateMachine<TypeConfig>,
{
    let epoch = leader_epoch(raft).ok_or(ProduceError::NotLeader)?;
    if coordinator_epoch.is_some_and(|e| e != epoch) {
        return Err(ProduceError::NotLeader);
    }
    // Read under the lock, so LogAppendTime never goes backwards between writes.
    let now = now_ms();
    let verdict = match coordinator_epoch {
        Some(_) => ProduceVerdict::Append(log.check_coordinator_write(payload, now)?),
        None => log.check_produce(payload, now)?,
    };
    let checked = match verdict {
        ProduceVerdict::Append(checked) => checked,
        // A retry of a batch this log holds, maybe not committed yet (the first attempt timed
        // out): answered once it is, as the first copy would have been, and only while this
        // replica leads in the same term. A leader never truncates its own log within a term,
        // so the batch is still where the log says; after a term change it may have been cut
        // and its offsets reused, and the producer must retry against the new leader.
        ProduceVerdict::Duplicate(info) => {
            drop(turn);
            wait_committed(raft, log, epoch, info.last_offset + 1, give_up).await?;
            return Ok(info);
        }
    };
    let data = BatchData(log.proposal(checked, now).into());
    let left = give_up.saturating_duration_since(tokio::time::Instant::now());
    let stored = || log.raft_index_range().map(|(_, last)| last);
    let before = stored();
    let write = node::write(raft, data, left);
    tokio::pin!(write);
    let written = match turn {
        Some(turn) => {
            // Only this write appends to the log in this term while the lock is held (every
            // write takes it, membership changes too (`exclusive`); openraft adds entries of
            // its own only when a term begins), so the store's log growing in the same
            // term means it is there, with its producer state. The store is what is looked at:
            // openraft's metrics only say when to look again (they move after its appends).
            // If the term moves on first, or no change is reported after the append, the lock is
            // kept until openraft resolves the write, as it was before writes pipelined.
            let mut metrics = raft.metrics();
            let term = u64::try_from(epoch).unwrap_or(u64::MAX);
            let appended = async {
                loop {
                    let same_term = metrics.borrow_watched().current_term == term;
                    if same_term && stored() > before {
                        return;
                    }
                    if !same_term || metrics.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                }
            };
            tokio::select! {
                biased;
                r = &mut write => {
                    drop(turn);
                    r
                }
                _ = appended => {
                    drop(turn);
                    write.await
                }
            }
        }
        None => write.await,
    };
    match written {
        Ok(resp) if resp.data.base_offset < 0 => {
            Err(ProduceError::Failed(format!("entry {} was applied but not found in the log", resp.log_id)))
        }
        Ok(resp) => {
            let a = resp.data;
            Ok(AppendInfo {
                base_offset: a.base_offset,
                last_offset: a.last_offset,
                log_append_time: a.log_append_time,
                log_start_offset: a.log_start_offset,
                duplicate: false,
            })
        }
        // The group stopped (its topic was deleted, or the node is shutting down): another
        // replica, or none, serves the partition now.
        Err(openraft::errors::RaftError::Fatal(openraft::error::Fatal::Stopped)) => Err(ProduceError::NotLeader),
        Err(openraft::errors::RaftError::Fatal(f)) => Err(ProduceError::Failed(f.to_string())),
        Err(_) => Err(ProduceError::NotLeader),
    }
}

/// Waits until the log's high watermark reaches `offset` while this replica leads at `epoch`.
async fn wait_committed<SM>(
    raft: &Raft<SM>,
    log: &PartitionLog,
    epoch: i32,
    offset: i64,
    give_up: tokio::time::Instant,
) -> Result<(), ProduceError>
where
    SM: RaftStateMachine<TypeConfig>,
{
    loop {
        let moved = log.high_watermark_moved().notified();
        tokio::pin!(moved);
        moved.as_mut().enable();
        if leader_epoch(raft) != Some(epoch) {
            return Err(ProduceError::NotLeader);
        }
        if log.high_watermark() >= offset {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if now >= give_up {
            return Err(ProduceError::TimedOut(RECHECK));
        }
        let _ = tokio::time::timeout_at(give_up.min(now + RECHECK), moved).await;
    }
}

/// The leader epoch this replica serves the partition at: its Raft term, once it leads and has
/// applied an entry of its own term. Before that its high watermark may still be behind what
/// the previous leader had committed (a new leader learns what is committed only by committing
/// an entry of its term), so clients are sent away rather than shown an older end of the log.
pub fn leader_epoch<SM>(raft: &Raft<SM>) -> Option<i32>
where
    SM: RaftStateMachine<TypeConfig>,
{
    let m = raft.metrics();
    let m = m.borrow_watched();
    if m.state != ServerState::Leader || m.current_term > MAX_TERM {
        return None;
    }
    let applied_term = m.last_applied.as_ref().map(|l| l.committed_leader_id().term);
    if applied_term != Some(m.current_term) {
        return None;
    }
    // A leader cut off from its followers keeps its Raft state until it hears of a higher
    // term, but can commit nothing: once no quorum has answered it for a while, clients are
    // sent to look for the leader the others have elected instead of waiting out timeouts here.
    // (openraft stamps a lone voter's quorum clock only when it is elected: it is its own quorum.)
    let alone = m.membership_config.membership().voter_ids().count() <= 1;
    let heard = m.last_quorum_acked.as_ref().is_some_and(|t| openraft::Instant::elapsed(&**t) < QUORUM_SILENCE);
    if !(alone || heard) {
        return None;
    }
    i32::try_from(m.current_term).ok()
}

/// Kafka's `replica.lag.time.max.ms` default: a follower that has not caught up with the
/// leader, or not answered it, for this long is out of sync.
pub const REPLICA_LAG_MAX: Duration = Duration::from_secs(30);

impl Proposer {
    /// The replicas in sync with the leader `me` of the group: itself, and each voter that
    /// held every committed entry at some moment within `REPLICA_LAG_MAX` and has answered the
    /// leader within it too (Kafka's `replica.lag.time.max.ms` rule). Judging by a single
    /// moment instead would drop a busy follower whenever a write was committed without it, and
    /// the ISR would flap under load. Each call takes a sample; the broker's leadership reporter
    /// calls it several times a second. Empty when `me` does not lead.
    pub fn in_sync<SM>(&self, raft: &Raft<SM>, me: NodeId) -> Vec<NodeId>
    where
        SM: RaftStateMachine<TypeConfig>,
    {
        let m = raft.metrics();
        let m = m.borrow_watched();
        let mut caught_up = self.caught_up.lock().unwrap_or_else(|e| e.into_inner());
        if m.state != ServerState::Leader {
            caught_up.clear();
            return Vec::new();
        }
        let now = tokio::time::Instant::now();
        let committed = m.local_committed.as_ref().map(|c| c.index());
        let mut isr = vec![me];
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        if let Some(replication) = &m.replication {
            for (follower, matched) in replication {
                // A learner (a replica a reassignment is adding) takes no part in commits, so
                // it is never in sync, however close it is: the leader waits for none of its
                // acknowledgements, and leadership must not be handed to it.
                if *follower == me || !voters.contains(follower) {
                    continue;
                }
                if matched.as_ref().map(|l| l.index()) >= committed {
                    caught_up.insert(*follower, now);
                }
                let answered = m
                    .heartbeat
                    .as_ref()
                    .and_then(|h| h.get(follower).copied().flatten())
                    .is_some_and(|at| openraft::Instant::elapsed(&*at) < REPLICA_LAG_MAX);
                let recent = caught_up.get(follower).is_some_and(|t| now.duration_since(*t) < REPLICA_LAG_MAX);
                if answered && recent {
                    isr.push(*follower);
                }
            }
        }
        isr.sort_unstable();
        isr
    }
}
