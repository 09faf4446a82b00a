//! A partition leader's write path: a producer's batches are checked against the leader's log,
//! proposed to the partition's Raft group, and answered once the group has committed them (the
//! high watermark covers them), with the offsets they were stored at.

use std::sync::Arc;
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
/// The price is one produce per partition in flight at a time on the leader (acks=1 waits for
/// the commit too, which is stronger than asked). Pipelining would need the pending batches'
/// sequences tracked beside the log's state.
#[derive(Default)]
pub struct Proposer {
    lock: tokio::sync::Mutex<()>,
}

impl Proposer {
    /// Writes a producer's payload to the partition through its Raft group, `raft`, whose store
    /// is `log`; answers where it was stored, once committed, within `wait`.
    pub async fn produce<SM>(
        &self,
        raft: &Raft<SM>,
        log: &Arc<PartitionLog>,
        payload: &[u8],
        now_ms: i64,
        wait: Duration,
    ) -> Result<AppendInfo, ProduceError>
    where
        SM: RaftStateMachine<TypeConfig>,
    {
        let give_up = tokio::time::Instant::now() + wait;
        let _turn =
            tokio::time::timeout_at(give_up, self.lock.lock()).await.map_err(|_| ProduceError::TimedOut(wait))?;
        if leader_epoch(raft).is_none() {
            return Err(ProduceError::NotLeader);
        }
        let checked = match log.check_produce(payload, now_ms)? {
            ProduceVerdict::Append(checked) => checked,
            // A retry of a batch this log holds: answered once it is committed, as the first
            // copy would have been (it may be an entry that is not committed yet, for example
            // when the first attempt timed out).
            ProduceVerdict::Duplicate(info) => {
                wait_committed(log, info.last_offset + 1, give_up).await.map_err(|_| ProduceError::TimedOut(wait))?;
                return Ok(info);
            }
        };
        let data = BatchData(log.proposal(checked, now_ms).into());
        let left = give_up.saturating_duration_since(tokio::time::Instant::now());
        let written = tokio::time::timeout_at(give_up, node::write(raft, data, left))
            .await
            .map_err(|_| ProduceError::TimedOut(wait))?;
        match written {
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
            Err(e) if e.forward_to_leader().is_some() => Err(ProduceError::NotLeader),
            Err(openraft::errors::RaftError::Fatal(f)) => Err(ProduceError::Failed(f.to_string())),
            Err(e) => Err(ProduceError::Failed(e.to_string())),
        }
    }
}

/// Waits until the log's high watermark reaches `offset`, or `give_up`.
async fn wait_committed(log: &PartitionLog, offset: i64, give_up: tokio::time::Instant) -> Result<(), ()> {
    loop {
        let moved = log.high_watermark_moved().notified();
        tokio::pin!(moved);
        moved.as_mut().enable();
        if log.high_watermark() >= offset {
            return Ok(());
        }
        if tokio::time::timeout_at(give_up, moved).await.is_err() {
            return Err(());
        }
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
    i32::try_from(m.current_term).ok()
}

/// The replicas in sync with the leader `me` of a group: itself and each follower that holds
/// every committed entry. Empty when `me` does not lead.
pub fn in_sync<SM>(raft: &Raft<SM>, me: NodeId) -> Vec<NodeId>
where
    SM: RaftStateMachine<TypeConfig>,
{
    let m = raft.metrics();
    let m = m.borrow_watched();
    if m.state != ServerState::Leader {
        return Vec::new();
    }
    let committed = m.local_committed.as_ref().map(|c| c.index());
    let mut isr = vec![me];
    if let Some(replication) = &m.replication {
        for (follower, matched) in replication {
            if *follower != me && matched.as_ref().map(|l| l.index()) >= committed {
                isr.push(*follower);
            }
        }
    }
    isr.sort_unstable();
    isr
}
