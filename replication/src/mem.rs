//! In-memory Raft log and state machine, for tests and the idle-cost measurement only. The
//! partition's segment log replaces both in a later milestone.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use openraft::storage::{
    EntryResponder, IOFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine,
};
use openraft::type_config::alias::{EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};

use crate::types::{BatchData, TypeConfig};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A Raft log in a `BTreeMap`. Clones share the log.
#[derive(Clone, Default)]
pub struct MemLog {
    inner: Arc<Mutex<LogInner>>,
    /// Microseconds each append takes to become "durable", to stand in for a slow disk in tests.
    append_delay_us: Arc<std::sync::atomic::AtomicU64>,
    /// A planted bug for the simulation's checker: appends are reported durable before they are.
    report_before_sync: Arc<std::sync::atomic::AtomicBool>,
}

impl MemLog {
    /// From now on, appends (of this log and its clones) report durability only after `delay`,
    /// like a slow fsync.
    pub fn set_append_delay(&self, delay: std::time::Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.append_delay_us.store(us, std::sync::atomic::Ordering::Relaxed);
    }

    /// What a crash does to the log: of the entries whose append had not yet been reported
    /// durable (written, readable, but still "in the page cache" while the slow disk of
    /// `set_append_delay` syncs them), the first `survive` made it to disk before the crash and
    /// the rest are lost; a write torn inside an entry is one the store's checksums drop on
    /// recovery, so the log ends at an entry boundary either way. Vote, commit and the synced
    /// entries stay. Returns how many entries were lost.
    pub fn crash(&self, survive: usize) -> usize {
        let mut inner = lock(&self.inner);
        let keep_to = inner.synced.map_or(0, |i| i + 1) + survive as u64;
        let lost = inner.entries.split_off(&keep_to).len();
        // What survived is on disk now: the restarted node reports all of it durable, so a
        // second crash must not lose it.
        inner.synced = inner.entries.keys().next_back().copied().or(inner.synced);
        lost
    }

    /// A planted bug, for tests that show a checker catches it: appends are reported durable as
    /// soon as they are written, before the slow disk has synced them (a missing fsync).
    pub fn report_before_sync(&self) {
        self.report_before_sync.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Default)]
struct LogInner {
    last_purged: Option<LogIdOf<TypeConfig>>,
    entries: BTreeMap<u64, EntryOf<TypeConfig>>,
    committed: Option<LogIdOf<TypeConfig>>,
    vote: Option<VoteOf<TypeConfig>>,
    /// The last index whose append was reported durable (see `MemLog::crash`).
    synced: Option<u64>,
    /// Bumped by every truncation (see `MemLog::report_before_sync`).
    generation: u64,
}

impl RaftLogReader<TypeConfig> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        Ok(lock(&self.inner).entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        Ok(lock(&self.inner).vote)
    }
}

impl RaftLogStorage<TypeConfig> for MemLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let inner = lock(&self.inner);
        let last = inner.entries.values().next_back().map(|e| e.log_id).or(inner.last_purged);
        Ok(LogState { last_purged_log_id: inner.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        lock(&self.inner).vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        lock(&self.inner).committed = committed;
        Ok(())
    }

    /// The saved commit, or less: never past the log's end (a crash may have cut entries it
    /// covered, `crash`), as the partition log's store does.
    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        let inner = lock(&self.inner);
        let last = inner.entries.values().next_back().map(|e| e.log_id).or(inner.last_purged);
        Ok(match (inner.committed, last) {
            (Some(c), Some(l)) if c.index() > l.index() => Some(l),
            (Some(_), None) => None,
            (c, _) => c,
        })
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut last = None;
        {
            let mut inner = lock(&self.inner);
            for e in entries {
                last = Some(e.log_id.index());
                inner.entries.insert(e.log_id.index(), e);
            }
        }
        let delay = std::time::Duration::from_micros(self.append_delay_us.load(std::sync::atomic::Ordering::Relaxed));
        if self.report_before_sync.load(std::sync::atomic::Ordering::Relaxed) {
            // The planted bug: durable is reported at once, and the entries reach the disk only
            // when the OS writes them back, a sync's time later (unless the log was cut since).
            callback.io_completed(Ok(()));
            let (inner, generation) = (self.inner.clone(), lock(&self.inner).generation);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut inner = lock(&inner);
                if inner.generation == generation {
                    inner.synced = inner.synced.max(last);
                }
            });
            return Ok(());
        }
        // Memory is "durable" as soon as it is written, unless a slow disk is simulated.
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(last) = last {
            // Appends are serialised, so everything up to `last` is the synced prefix now.
            lock(&self.inner).synced = Some(last);
        }
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index() + 1);
        let mut inner = lock(&self.inner);
        inner.entries.split_off(&from);
        // A truncation is durable at once (the partition log syncs it before returning).
        inner.synced = inner.synced.min(last_log_id.map(|l| l.index()));
        inner.generation += 1;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let mut inner = lock(&self.inner);
        if inner.last_purged.as_ref() > Some(&log_id) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("purge to {log_id} is behind the last purge"),
            ));
        }
        inner.last_purged = Some(log_id);
        let keep = inner.entries.split_off(&(log_id.index() + 1));
        inner.entries = keep;
        Ok(())
    }
}

/// A state machine that records every applied batch, so tests can check what was committed.
/// Clones share the state.
#[derive(Clone, Default)]
pub struct MemStateMachine {
    inner: Arc<Mutex<SmInner>>,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(bound = "")]
struct SmState {
    last_applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
    applied: Vec<(LogIdOf<TypeConfig>, BatchData)>,
}

#[derive(Default)]
struct SmInner {
    state: SmState,
    snapshot: Option<(SnapshotMetaOf<TypeConfig>, Bytes)>,
}

impl MemStateMachine {
    /// The batches applied so far, in log order.
    pub fn applied(&self) -> Vec<(LogIdOf<TypeConfig>, BatchData)> {
        lock(&self.inner).state.applied.clone()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MemStateMachine {
    type SnapshotData = Bytes;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Bytes>, io::Error> {
        let mut inner = lock(&self.inner);
        let data = postcard::to_stdvec(&inner.state).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: inner.state.last_applied,
            last_membership: inner.state.membership.clone(),
        };
        let data = Bytes::from(data);
        inner.snapshot = Some((meta.clone(), data.clone()));
        Ok(SnapshotOf::<TypeConfig, Bytes> { meta, snapshot: data })
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotData = Bytes;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let inner = lock(&self.inner);
        Ok((inner.state.last_applied, inner.state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            {
                let mut inner = lock(&self.inner);
                inner.state.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(data) => inner.state.applied.push((entry.log_id, data)),
                    EntryPayload::Membership(m) => {
                        inner.state.membership = StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id), m)
                    }
                }
            }
            if let Some(r) = responder {
                r.send(crate::types::Applied::default());
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<TypeConfig>, snapshot: Bytes) -> Result<(), io::Error> {
        let state: SmState =
            postcard::from_bytes(&snapshot).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut inner = lock(&self.inner);
        inner.state = state;
        inner.state.last_applied = meta.last_log_id;
        inner.state.membership = meta.last_membership.clone();
        inner.snapshot = Some((meta.clone(), snapshot));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, Bytes>>, io::Error> {
        Ok(lock(&self.inner)
            .snapshot
            .as_ref()
            .map(|(meta, data)| SnapshotOf::<TypeConfig, Bytes> { meta: meta.clone(), snapshot: data.clone() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::type_config::TypeConfigExt;
    use openraft::StorageError;

    struct Builder;

    impl StoreBuilder<TypeConfig, MemLog, MemStateMachine, ()> for Builder {
        async fn build(&self) -> Result<((), MemLog, MemStateMachine), StorageError<TypeConfig>> {
            Ok(((), MemLog::default(), MemStateMachine::default()))
        }
    }

    /// openraft's storage conformance suite against the in-memory log and state machine.
    #[test]
    fn openraft_storage_suite() {
        TypeConfig::run(async {
            Suite::test_all(Builder).await.unwrap();
        });
    }
}
