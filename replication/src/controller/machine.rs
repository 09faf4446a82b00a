//! The controller quorum's Raft state machine: every node applies the committed metadata log to
//! its `ClusterMetadata`, and the node that proposed a record gets the outcome of applying it.
//!
//! An entry is a Kafka record batch of one record (so the controller's log can be a partition
//! log, as KRaft's `__cluster_metadata` is) whose value is a `Proposal`: the record plus who proposed it (node and process incarnation) and a
//! number, so the proposer can match the outcome to its waiting request. Apply is deterministic
//! and ignores that tag; only the proposing process uses it. The incarnation keeps a proposal made
//! before a restart, committed after it, from answering a new request that reused its number.
//!
//! The state lives in memory and is rebuilt on start from the last snapshot (a file in the
//! controller's directory, written when openraft builds one) plus the log after it, so openraft
//! may purge the log behind a snapshot.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use openraft::error::{ClientWriteError, RaftError};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::type_config::alias::{EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::records::{MetadataError, MetadataRecord};
use super::state::{ClusterMetadata, Outcome};
use crate::types::{BatchData, NodeId, Raft, TypeConfig};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// One entry of the metadata log.
#[derive(Debug, Serialize, Deserialize)]
struct Proposal {
    proposer: NodeId,
    incarnation: u64,
    id: u64,
    /// `MetadataRecord::encode()`.
    record: Vec<u8>,
}

/// The applied state and where it stands in the log.
#[derive(Default)]
struct Applied {
    metadata: ClusterMetadata,
    last_applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
}

/// What a snapshot file holds: openraft's metadata and `ClusterMetadata::snapshot()`.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct SnapshotFile {
    meta: SnapshotMetaOf<TypeConfig>,
    data: Vec<u8>,
}

type Waiter = oneshot::Sender<Result<Outcome, MetadataError>>;

struct Inner {
    node_id: NodeId,
    incarnation: u64,
    next_id: AtomicU64,
    applied: RwLock<Applied>,
    /// Requests of this process waiting for their proposal to apply, by proposal id.
    waiters: Mutex<BTreeMap<u64, Waiter>>,
    /// The last snapshot built or installed, and where it is kept.
    snapshot: Mutex<Option<(SnapshotMetaOf<TypeConfig>, Bytes)>>,
    snapshot_path: Option<PathBuf>,
    /// The last applied log id, for nodes that act on metadata changes (create or drop local
    /// replicas): they wait for a change, then read the whole state, so a missed notification or
    /// a snapshot install cannot leave them behind.
    changed: watch::Sender<Option<LogIdOf<TypeConfig>>>,
}

/// The controller state machine of one node. Clones share the state.
#[derive(Clone)]
pub struct ControllerMachine {
    inner: Arc<Inner>,
}

/// Why a proposal got no outcome.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// This node does not lead the controller quorum; the leader, if known, is named.
    #[error("not the controller leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// No majority answered within the wait.
    #[error("the controller quorum did not commit the record in time")]
    Timeout,
    #[error("controller raft: {0}")]
    Raft(String),
}

impl ControllerMachine {
    /// A machine whose snapshots are kept in `dir` (created if missing), starting from the
    /// snapshot found there, if any. `None`: snapshots only in memory (tests).
    pub fn open(node_id: NodeId, dir: Option<&Path>) -> io::Result<ControllerMachine> {
        let snapshot_path = dir.map(|d| d.join("controller.snapshot"));
        let mut applied = Applied::default();
        let mut snapshot = None;
        if let Some(path) = &snapshot_path {
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d)?;
            }
            match std::fs::read(path) {
                Ok(bytes) => {
                    let file: SnapshotFile = postcard::from_bytes(&bytes)
                        .map_err(|e| invalid(format!("{}: unreadable snapshot: {e}", path.display())))?;
                    applied.metadata = ClusterMetadata::restore(&file.data)
                        .map_err(|e| invalid(format!("{}: bad snapshot: {e}", path.display())))?;
                    applied.last_applied = file.meta.last_log_id;
                    applied.membership = file.meta.last_membership.clone();
                    snapshot = Some((file.meta, Bytes::from(file.data)));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let (changed, _) = watch::channel(applied.last_applied);
        // Any value that differs between two runs of the process will do (drawn through the
        // runtime's seam: its size on the wire varies, and a simulation replays it).
        let incarnation = crate::rt::random_u64();
        Ok(ControllerMachine {
            inner: Arc::new(Inner {
                node_id,
                incarnation,
                next_id: AtomicU64::new(0),
                applied: RwLock::new(applied),
                waiters: Mutex::new(BTreeMap::new()),
                snapshot: Mutex::new(snapshot),
                snapshot_path,
                changed,
            }),
        })
    }

    /// Reads the applied metadata.
    pub fn read<T>(&self, f: impl FnOnce(&ClusterMetadata) -> T) -> T {
        f(&self.inner.applied.read().unwrap_or_else(|e| e.into_inner()).metadata)
    }

    /// The last applied log index (None before anything applied).
    pub fn last_applied_index(&self) -> Option<u64> {
        self.inner.applied.read().unwrap_or_else(|e| e.into_inner()).last_applied.map(|l| l.index)
    }

    /// Changes whenever an entry applies or a snapshot is installed.
    pub fn subscribe(&self) -> watch::Receiver<Option<LogIdOf<TypeConfig>>> {
        self.inner.changed.subscribe()
    }

    /// Proposes `record` through `raft` (this node's controller group, which must lead) and waits
    /// up to `wait` for its outcome: `Ok(Ok(_))` applied, `Ok(Err(_))` refused by apply (the state
    /// moved since the record was made), `Err` not committed.
    pub async fn propose<SM: RaftStateMachine<TypeConfig>>(
        &self,
        raft: &Raft<SM>,
        record: &MetadataRecord,
        wait: Duration,
    ) -> Result<Result<Outcome, MetadataError>, ProposeError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let proposal =
            Proposal { proposer: self.inner.node_id, incarnation: self.inner.incarnation, id, record: record.encode() };
        let bytes = postcard::to_stdvec(&proposal).map_err(|e| ProposeError::Raft(e.to_string()))?;
        let now_ms = crate::clock::now_ms();
        let bytes = fjord_storage::batch::build_batch(0, now_ms, &[(None, Some(&bytes))]);
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.waiters).insert(id, tx);
        let written = tokio::time::timeout(wait, crate::node::write(raft, BatchData(Bytes::from(bytes)), wait)).await;
        let result = match written {
            Err(_) => Err(ProposeError::Timeout),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ProposeError::NotLeader(f.leader_id))
            }
            Ok(Err(e)) => Err(ProposeError::Raft(e.to_string())),
            // The leader answers a write only after applying it, so the outcome is in.
            Ok(Ok(_)) => match rx.await {
                Ok(outcome) => return Ok(outcome),
                Err(_) => Err(ProposeError::Raft("the applied proposal gave no outcome".into())),
            },
        };
        lock(&self.inner.waiters).remove(&id);
        result
    }

    fn apply_one(&self, entry: EntryOf<TypeConfig>) {
        let log_id = entry.log_id;
        let mut answer: Option<(u64, Result<Outcome, MetadataError>)> = None;
        {
            let mut applied = self.inner.applied.write().unwrap_or_else(|e| e.into_inner());
            applied.last_applied = Some(log_id);
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Membership(m) => {
                    applied.membership = StoredMembershipOf::<TypeConfig>::new(Some(log_id), m)
                }
                EntryPayload::Normal(BatchData(bytes)) => {
                    // Every node sees the same bytes, so an entry that does not decode is skipped
                    // alike everywhere; it cannot come from this code's proposals.
                    match unwrap_proposal(&bytes) {
                        Err(e) => {
                            tracing::error!(index = log_id.index, error = %e, "undecodable metadata entry skipped")
                        }
                        Ok(p) => {
                            let outcome = match MetadataRecord::decode(&p.record) {
                                Ok(record) => applied.metadata.apply(&record),
                                Err(e) => {
                                    tracing::error!(index = log_id.index, error = %e, "undecodable metadata record skipped");
                                    Err(MetadataError::new(
                                        super::records::ErrorCode::InvalidRequest,
                                        format!("undecodable metadata record: {e}"),
                                    ))
                                }
                            };
                            if p.proposer == self.inner.node_id && p.incarnation == self.inner.incarnation {
                                answer = Some((p.id, outcome));
                            }
                        }
                    }
                }
            }
        }
        if let Some((id, outcome)) = answer {
            if let Some(waiter) = lock(&self.inner.waiters).remove(&id) {
                let _ = waiter.send(outcome);
            }
        }
        self.inner.changed.send_replace(Some(log_id));
    }

    fn write_snapshot_file(&self, meta: &SnapshotMetaOf<TypeConfig>, data: &[u8]) -> io::Result<()> {
        let Some(path) = &self.inner.snapshot_path else { return Ok(()) };
        let file = SnapshotFile { meta: meta.clone(), data: data.to_vec() };
        let bytes = postcard::to_stdvec(&file).map_err(invalid)?;
        fjord_storage::log::write_atomic(path, &bytes).map_err(|e| io::Error::other(e.to_string()))
    }
}

/// The `Proposal` in an entry's one-record batch.
fn unwrap_proposal(bytes: &Bytes) -> Result<Proposal, String> {
    let batches = fjord_storage::records::decode_batches(bytes, MAX_ENTRY_BYTES).map_err(|e| e.to_string())?;
    let [batch] = batches.as_slice() else {
        return Err(format!("{} batches in one metadata entry", batches.len()));
    };
    let [record] = batch.records.as_slice() else {
        return Err(format!("{} records in one metadata batch", batch.records.len()));
    };
    let value = record.value.as_ref().ok_or("a metadata record without a value")?;
    postcard::from_bytes::<Proposal>(value).map_err(|e| e.to_string())
}

/// A metadata entry is far smaller than this; more is a corrupt entry, not a reason to allocate.
const MAX_ENTRY_BYTES: usize = 64 << 20;

impl RaftSnapshotBuilder<TypeConfig> for ControllerMachine {
    type SnapshotData = Bytes;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Bytes>, io::Error> {
        let (meta, data) = {
            let applied = self.inner.applied.read().unwrap_or_else(|e| e.into_inner());
            let meta = SnapshotMetaOf::<TypeConfig> {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
            };
            (meta, applied.metadata.snapshot())
        };
        // Durable before openraft may purge the log it replaces.
        self.write_snapshot_file(&meta, &data)?;
        let data = Bytes::from(data);
        *lock(&self.inner.snapshot) = Some((meta.clone(), data.clone()));
        Ok(SnapshotOf::<TypeConfig, Bytes> { meta, snapshot: data })
    }
}

impl RaftStateMachine<TypeConfig> for ControllerMachine {
    type SnapshotData = Bytes;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let applied = self.inner.applied.read().unwrap_or_else(|e| e.into_inner());
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            self.apply_one(entry);
            if let Some(r) = responder {
                // Proposers get their outcome through `propose`, not the client write response.
                #[allow(clippy::unit_arg)]
                r.send(Default::default());
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<TypeConfig>, snapshot: Bytes) -> Result<(), io::Error> {
        let metadata = ClusterMetadata::restore(&snapshot).map_err(invalid)?;
        self.write_snapshot_file(meta, &snapshot)?;
        {
            let mut applied = self.inner.applied.write().unwrap_or_else(|e| e.into_inner());
            applied.metadata = metadata;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
        }
        *lock(&self.inner.snapshot) = Some((meta.clone(), snapshot));
        self.inner.changed.send_replace(meta.last_log_id);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, Bytes>>, io::Error> {
        Ok(lock(&self.inner.snapshot)
            .as_ref()
            .map(|(meta, data)| SnapshotOf::<TypeConfig, Bytes> { meta: meta.clone(), snapshot: data.clone() }))
    }
}
