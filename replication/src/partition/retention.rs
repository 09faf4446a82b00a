//! Retention of a replicated partition: each replica deletes what retention.ms and
//! retention.bytes let go from its own log, but only through Raft, by taking a snapshot that
//! covers the expired segments and purging the Raft log up to them. A follower that still
//! needs the purged entries gets the snapshot instead (with the newest batches before it).

use std::sync::Arc;
use std::time::Duration;

use fjord_storage::PartitionLog;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::storage::RaftStateMachine;

use crate::types::{Raft, TypeConfig};

/// Applies retention to this node's replica `log` of the group `raft`, as of `now_ms`. Returns
/// the Raft index purged up to, if anything was due. openraft may defer the purge while a
/// follower is still being sent those entries; the next pass finds it done.
pub async fn apply<SM>(
    raft: &Raft<SM>,
    log: &Arc<PartitionLog>,
    now_ms: i64,
    wait: Duration,
) -> Result<Option<u64>, String>
where
    SM: RaftStateMachine<TypeConfig>,
{
    let log2 = log.clone();
    let point =
        tokio::task::spawn_blocking(move || log2.raft_retention_point(now_ms)).await.map_err(|e| e.to_string())?;
    let Some(point) = point else { return Ok(None) };
    let (purged, snapshot) = {
        let m = raft.metrics();
        let m = m.borrow_watched();
        (m.purged.as_ref().map(|p| p.index()), m.snapshot.as_ref().map(|s| s.index()))
    };
    if purged >= Some(point) {
        return Ok(None);
    }
    if snapshot < Some(point) {
        // The point is committed, so applied: a snapshot taken now covers it.
        raft.trigger().snapshot().await.map_err(|e| e.to_string())?;
        raft.wait(Some(wait))
            .metrics(|m| m.snapshot.as_ref().map(|s| s.index()) >= Some(point), "a snapshot covering retention")
            .await
            .map_err(|e| e.to_string())?;
    }
    raft.trigger().purge_log(point).await.map_err(|e| e.to_string())?;
    Ok(Some(point))
}
