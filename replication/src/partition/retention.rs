//! Retention of a replicated partition. Each replica applies the topic's retention.ms and
//! retention.bytes to its own log, and lets segments go only through Raft: a snapshot at the
//! last entry of the expired segments (which ships no batches: everything before it has
//! expired), then a purge of the Raft log up to that entry, which deletes those segments.
//!
//! A follower that still needs purged entries gets the leader's snapshot instead and restarts
//! its log empty at the snapshot's point, where the leader's log now starts; the retained
//! entries after it reach it as usual. Nothing retention keeps is ever behind a snapshot.

use std::sync::Arc;
use std::time::Duration;

use fjord_storage::PartitionLog;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::storage::RaftStateMachine;

use crate::types::{Raft, TypeConfig};

/// Applies retention to this node's replica `log` of the group `raft`, as of `now_ms`. Returns
/// the Raft index purged up to, if anything was due. openraft defers a leader's purge while a
/// follower is still being sent those entries; a later pass finds it done.
pub async fn apply<SM>(
    raft: &Raft<SM>,
    log: &Arc<PartitionLog>,
    now_ms: i64,
    wait: Duration,
) -> Result<Option<u64>, String>
where
    SM: RaftStateMachine<TypeConfig>,
{
    let scan = log.clone();
    let point = crate::rt::blocking(move || scan.raft_retention_point(now_ms)).await?;
    let Some(point) = point else { return Ok(None) };
    let (purged, snapshot, membership) = {
        let m = raft.metrics();
        let m = m.borrow_watched();
        (
            m.purged.as_ref().map(|p| p.index()),
            m.snapshot.as_ref().map(|s| s.index()),
            m.membership_config.log_id().as_ref().map(|l| l.index()),
        )
    };
    if purged >= Some(point) {
        return Ok(None);
    }
    // A snapshot carries the membership as of its point: one taken before the latest
    // membership change cannot be built (the state machine knows only the latest), so retention
    // waits until the expired entries reach past it.
    if membership > Some(point) {
        return Ok(None);
    }
    if snapshot < Some(point) {
        // The point is committed and applied, so the state machine builds the snapshot there
        // (see `build_snapshot`).
        log.request_snapshot_at(point);
        raft.trigger().snapshot().await.map_err(|e| e.to_string())?;
        raft.wait(Some(wait))
            .metrics(|m| m.snapshot.as_ref().map(|s| s.index()) >= Some(point), "a snapshot at the retention point")
            .await
            .map_err(|e| e.to_string())?;
    }
    // Only behind a snapshot that ships no batches: a purge behind one that does (built at the
    // last applied entry, shipping at most `MAX_SNAPSHOT_PREFIX`) could leave a replica that
    // installs it starting later than the leader's log start.
    if log.batchless_snapshot() < Some(point) {
        return Err(format!("no batchless snapshot at entry {point} to purge behind"));
    }
    raft.trigger().purge_log(point).await.map_err(|e| e.to_string())?;
    Ok(Some(point))
}
