//! A partition's Raft log and state machine, both backed by its `PartitionLog`: the segments are
//! the Raft log (no second copy), vote, commit and the last snapshot's state live in small files
//! beside them (`raft-state`, `raft-committed`, `raft-snapshot`), and applying an entry moves the
//! high watermark.

pub mod entry;
pub mod produce;
pub mod retention;

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use fjord_storage::{LogConfig, LogError, OpenOptions, PartitionLog};
use futures::{Stream, TryStreamExt};
use openraft::storage::{
    EntryResponder, IOFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine,
};
use openraft::type_config::alias::{EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};

use crate::node::GroupTimings;
use crate::types::{Applied, BatchData, TypeConfig};

/// Bytes `limited_get_log_entries` returns at most (at least one entry): one replication
/// message's worth, so a follower far behind is fed in steps and heartbeats are not starved.
pub const MAX_READ_BYTES: usize = 1 << 20;

/// Vote and purge point, fsynced on every write.
pub(crate) const STATE_FILE: &str = "raft-state";
/// The committed log id, written without fsync: a file of its own, so a crash that leaves it
/// empty or old can never take the vote with it (a lost vote could grant two votes in a term).
const COMMITTED_FILE: &str = "raft-committed";
/// The committed log id is written in place, at the start of the file, padded with spaces to
/// this length (JSON ignores them): openraft reports every commit, and a new file renamed over
/// the old per commit of every group cost a new inode each, a large share of a cluster node's
/// kernel time. The record lies within the file's first disk sector, which a crash leaves old
/// or new; an unreadable file is taken as no commit.
const COMMITTED_RECORD: usize = 256;
/// Where the state machine stood (last applied entry and its membership), written without
/// fsync every `APPLIED_SAVE_EVERY` entries and on membership changes, so a restart re-applies
/// only the entries after it rather than the whole log.
const APPLIED_FILE: &str = "raft-applied";
const APPLIED_SAVE_EVERY: u64 = 1024;

/// The last snapshot's state, apart from `raft-state`: it holds producer state, which can be
/// large, and `raft-state` is rewritten on every commit.
const SNAPSHOT_FILE: &str = "raft-snapshot";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_err(e: LogError) -> io::Error {
    match e {
        LogError::Io(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// openraft's config for a partition group: the log is Kafka's, so openraft never builds
/// snapshots or purges on its own (retention decides what goes, then purges through Raft).
pub fn raft_config(timings: &GroupTimings, cluster_name: &str) -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let config = openraft::Config {
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: u64::MAX,
        ..timings.base_config(cluster_name)
    };
    Ok(Arc::new(config.validate()?))
}

/// What `raft-state` holds.
#[derive(Default, Clone, Serialize, Deserialize)]
#[serde(bound = "")]
struct RaftState {
    vote: Option<VoteOf<TypeConfig>>,
    last_purged: Option<LogIdOf<TypeConfig>>,
}

/// The last snapshot's metadata and state; its prefix batches are read from the log whenever
/// it is sent (they stay in the log, below the Raft entries).
#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "")]
struct SavedSnapshot {
    meta: SnapshotMetaOf<TypeConfig>,
    next_offset: i64,
    producers: String,
    /// Set while a snapshot sent by a leader is being installed: saved (with the purge point)
    /// before the log is rewritten, cleared once it is. Found set at open, the rewrite may have
    /// been cut short by a crash, so it is redone.
    #[serde(default)]
    installing: bool,
    /// Whether it ships the log's batches before its point. A snapshot retention took does not:
    /// everything before its point has expired, and an installing replica starts empty there.
    #[serde(default = "shipped")]
    prefix: bool,
}

fn shipped() -> bool {
    true
}

/// The most log prefix a snapshot carries (the newest batches before its end). Snapshots travel
/// as one message, held in memory on both sides; a replica that installs one with a longer
/// prefix starts its log later than the leader's, as after retention.
pub const MAX_SNAPSHOT_PREFIX: usize = 64 << 20;

/// A snapshot's state: where the partition stood at its last entry. On the wire: a u32 length,
/// this as JSON, then the prefix batches.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    /// The offset after the snapshot's last entry: where the installing replica's log resumes.
    next_offset: i64,
    /// The leader's log start (Kafka's, may lie inside the first prefix batch).
    log_start_offset: i64,
    /// Producer state (`ProducerStates` JSON) as of `next_offset`.
    producers: String,
    /// The leader's remote storage manifest when the snapshot was sent: the control entries
    /// that built it may be behind the snapshot's point.
    #[serde(default)]
    remote: Option<fjord_storage::remote::RemoteManifest>,
}

fn encode_snapshot(body: &SnapshotBody, prefix: &[u8]) -> io::Result<Bytes> {
    let json = serde_json::to_vec(body).map_err(io::Error::other)?;
    let len = u32::try_from(json.len()).map_err(io::Error::other)?;
    let mut out = Vec::with_capacity(4 + json.len() + prefix.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(prefix);
    Ok(Bytes::from(out))
}

fn decode_snapshot(data: &Bytes) -> io::Result<(SnapshotBody, Bytes)> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, format!("snapshot: {what}"));
    let len = data.get(..4).ok_or_else(|| bad("too short".into()))?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    let json = data.get(4..4 + len).ok_or_else(|| bad(format!("state of {len} bytes cut short")))?;
    let body = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    Ok((body, data.slice(4 + len..)))
}

struct Shared {
    log: Arc<PartitionLog>,
    state_path: PathBuf,
    state: Mutex<RaftState>,
    committed: Mutex<Option<LogIdOf<TypeConfig>>>,
    /// `COMMITTED_FILE`, opened by the first `save_committed`.
    committed_file: Mutex<Option<std::fs::File>>,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

impl Shared {
    /// Rewrites `raft-state` durably (file and directory synced) with `f` applied.
    fn update(&self, f: impl FnOnce(&mut RaftState)) -> io::Result<()> {
        let mut state = lock(&self.state);
        let mut next = state.clone();
        f(&mut next);
        let json = serde_json::to_vec(&next).map_err(io::Error::other)?;
        fjord_storage::log::write_atomic(&self.state_path, &json).map_err(io_err)?;
        *state = next;
        Ok(())
    }

    /// Saves the committed log id without fsync: a crash may leave an older value (the high
    /// watermark then lags after a restart) or a torn file (read as none).
    fn save_committed(&self, committed: Option<LogIdOf<TypeConfig>>) -> io::Result<()> {
        let mut current = lock(&self.committed);
        let mut record = serde_json::to_vec(&committed).map_err(io::Error::other)?;
        if record.len() > COMMITTED_RECORD {
            return Err(io::Error::other(format!("committed log id of {} bytes", record.len())));
        }
        record.resize(COMMITTED_RECORD, b' ');
        let mut file = lock(&self.committed_file);
        if file.is_none() {
            let path = self.log.dir().join(COMMITTED_FILE);
            let f = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(&path)?;
            // A file written by an older version holds the JSON alone; the padded record
            // covers it, and nothing is ever appended after it.
            if f.metadata()?.len() > COMMITTED_RECORD as u64 {
                f.set_len(COMMITTED_RECORD as u64)?;
            }
            *file = Some(f);
        }
        if let Some(f) = file.as_ref() {
            fjord_storage::disk::write_at(f, &record, 0)?;
        }
        *current = committed;
        Ok(())
    }

    /// The saved committed log id, or less: openraft commits a follower up to the entries it
    /// *accepted*, and the value is saved without fsync, so after a crash it may name an entry
    /// the crash took (or a later one at the same index). Then the last entry held below it is
    /// answered: committing less is safe, and openraft re-applies only what the log holds.
    fn durable_committed(&self) -> io::Result<Option<LogIdOf<TypeConfig>>> {
        let Some(saved) = *lock(&self.committed) else { return Ok(None) };
        if self.entry_at(&saved)?.is_some() {
            return Ok(Some(saved));
        }
        let Some((first, last)) = self.log.raft_index_range() else { return Ok(None) };
        let below = last.min(saved.index().saturating_sub(1));
        if saved.index() == 0 || below < first {
            return Ok(None);
        }
        let held = self.log.raft_entry(below).map_err(io_err)?;
        Ok(held.map(entry::decode).transpose()?.map(|e| e.log_id))
    }

    /// Moves the purge point up to `last` (never back), durably.
    fn purged_through(&self, last: Option<LogIdOf<TypeConfig>>) -> io::Result<()> {
        if last <= lock(&self.state).last_purged {
            return Ok(());
        }
        self.update(|s| s.last_purged = last)
    }

    /// Finishes a snapshot install a crash cut short (`SavedSnapshot::installing`): the purge
    /// point is the snapshot's, and unless the log already is exactly the installed one (no
    /// Raft entries, ending at the snapshot's next offset) it restarts empty there with the
    /// snapshot's producer state. The prefix batches are then lost to this replica, as if
    /// retention had taken them; their offsets, and so every later entry's, stay the leader's.
    fn finish_install(&self, saved: &mut SavedSnapshot) -> io::Result<()> {
        self.purged_through(saved.meta.last_log_id)?;
        let complete = self.log.raft_index_range().is_none() && self.log.log_end_offset() == saved.next_offset;
        if !complete {
            tracing::warn!(
                log = %self.log.dir().display(),
                next_offset = saved.next_offset,
                "a snapshot install was interrupted; restarting the log at the snapshot's end"
            );
            self.log.reset_to(saved.next_offset, saved.producers.as_bytes()).map_err(io_err)?;
        }
        saved.installing = false;
        self.save_snapshot(saved)
    }

    /// Saves the last snapshot's state durably (before it is answered or counted installed).
    fn save_snapshot(&self, saved: &SavedSnapshot) -> io::Result<()> {
        let json = serde_json::to_vec(saved).map_err(io::Error::other)?;
        fjord_storage::log::write_atomic(&self.log.dir().join(SNAPSHOT_FILE), &json).map_err(io_err)
    }

    /// A snapshot as sent: its state, the log start now, and the prefix batches the log holds.
    fn snapshot_data(&self, saved: &SavedSnapshot) -> io::Result<Bytes> {
        let body = SnapshotBody {
            next_offset: saved.next_offset,
            log_start_offset: self.log.log_start_offset(),
            producers: saved.producers.clone(),
            remote: Some((*self.log.remote_manifest()).clone()).filter(|m| m.version > 0),
        };
        let prefix =
            if saved.prefix { self.log.prefix_before(saved.next_offset, MAX_SNAPSHOT_PREFIX) } else { Vec::new() };
        encode_snapshot(&body, &prefix)
    }

    /// The stored entry at `index`, if its term is `term`: where it lies, and its LogAppendTime.
    fn entry_at(&self, log_id: &LogIdOf<TypeConfig>) -> io::Result<Option<Applied>> {
        let found = self.log.raft_entry(log_id.index()).map_err(io_err)?;
        Ok(found.filter(|e| u64::try_from(e.term).ok() == Some(log_id.committed_leader_id().term)).map(|e| Applied {
            base_offset: e.span.base_offset,
            last_offset: e.span.next_offset - 1,
            log_append_time: entry::log_append_time(&e.data),
            log_start_offset: self.log.log_start_offset(),
        }))
    }
}

/// Opens the partition log in `dir` as a Raft replica: the log store and the state machine of
/// one group, sharing the log. The high watermark starts at the saved commit point.
pub fn open(dir: &Path, config: LogConfig) -> io::Result<(PartitionLogStore, PartitionStateMachine)> {
    let log =
        PartitionLog::open_opts(dir, config, OpenOptions { raft: true, ..OpenOptions::default() }).map_err(io_err)?;
    open_log(Arc::new(log))
}

/// `open` for a log the caller opened (with `raft: true`).
pub fn open_log(log: Arc<PartitionLog>) -> io::Result<(PartitionLogStore, PartitionStateMachine)> {
    if !log.is_raft_only() {
        // A log open to other writes could take a batch no sidecar row covers, which the next
        // open would cut on this replica only.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} was not opened as a Raft log", log.dir().display()),
        ));
    }
    let state_path = log.dir().join(STATE_FILE);
    let state: RaftState = read_json(&state_path)?.unwrap_or_default();
    let mut snapshot: Option<SavedSnapshot> = read_json(&log.dir().join(SNAPSHOT_FILE))?;
    let shared = Arc::new(Shared {
        log,
        state_path,
        state: Mutex::new(state),
        committed: Mutex::new(Option::None),
        committed_file: Mutex::new(None),
    });
    if let Some(s) = snapshot.as_mut().filter(|s| s.installing) {
        shared.finish_install(s)?;
    }
    let snapshot_end = snapshot.as_ref().map(|s| s.next_offset);
    if let Some(at) = snapshot.as_ref().filter(|s| !s.prefix).and_then(|s| s.meta.last_log_id) {
        shared.log.note_batchless_snapshot(at.index());
    }
    let mut sm = SmState {
        last_applied: snapshot.as_ref().and_then(|s| s.meta.last_log_id),
        membership: snapshot.as_ref().map(|s| s.meta.last_membership.clone()).unwrap_or_default(),
        snapshot,
        saved_index: None,
    };
    let applied_path = shared.log.dir().join(APPLIED_FILE);
    let saved_applied = read_json::<SavedApplied>(&applied_path).unwrap_or_else(|e| {
        // Written without fsync: a torn file only means re-applying more.
        tracing::warn!(file = %applied_path.display(), error = %e, "unreadable applied state ignored");
        None
    });
    let committed_path = shared.log.dir().join(COMMITTED_FILE);
    let committed = read_json::<Option<LogIdOf<TypeConfig>>>(&committed_path).unwrap_or_else(|e| {
        // Written without fsync, so a crash may have torn it; a lower commit is safe.
        tracing::warn!(file = %committed_path.display(), error = %e, "unreadable committed index ignored");
        None
    });
    *lock(&shared.committed) = committed.flatten();
    // The saved applied state is trusted only if the log still holds that entry (a follower
    // applies entries it accepted, which a crash may have taken) and it is past the snapshot.
    if let Some(saved) = saved_applied {
        if let Some(at) = shared.entry_at(&saved.last_applied)? {
            if Some(saved.last_applied) > sm.last_applied {
                shared.log.set_high_watermark(at.last_offset + 1);
                sm.saved_index = Some(saved.last_applied.index());
                sm.last_applied = Some(saved.last_applied);
                sm.membership = saved.membership;
            }
        }
    }
    // What was committed before the restart is readable again at once; a stale (lower) saved
    // value only makes it lag until apply catches up.
    let committed = shared.durable_committed()?;
    // A snapshot's prefix is committed by definition.
    if let Some(end) = snapshot_end {
        shared.log.set_high_watermark(end);
    }
    if let Some(c) = committed {
        if let Some(at) = shared.entry_at(&c)? {
            shared.log.set_high_watermark(at.last_offset + 1);
        }
    }
    Ok((PartitionLogStore { shared: shared.clone() }, PartitionStateMachine { shared, sm: Arc::new(Mutex::new(sm)) }))
}

/// The Raft log of one partition (clones share it).
#[derive(Clone)]
pub struct PartitionLogStore {
    shared: Arc<Shared>,
}

impl PartitionLogStore {
    pub fn log(&self) -> &Arc<PartitionLog> {
        &self.shared.log
    }

    fn read(&self, start: u64, end: u64, max_bytes: usize) -> io::Result<Vec<EntryOf<TypeConfig>>> {
        let last_purged = lock(&self.shared.state).last_purged;
        let mut start = start.max(last_purged.map_or(0, |l| l.index() + 1));
        // A log never purged begins at its first entry, whatever its index (openraft's own
        // suite starts logs at 1). Once purged, an entry missing between the purge point and
        // the first held is lost: `raft_entries` reports it rather than reading on from later.
        if last_purged.is_none() {
            if let Some((first, _)) = self.shared.log.raft_index_range() {
                start = start.max(first);
            }
        }
        if start >= end {
            return Ok(Vec::new());
        }
        let stored = self.shared.log.raft_entries(start, end, max_bytes).map_err(io_err)?;
        stored.into_iter().map(entry::decode).collect()
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for PartitionLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let (start, end) = bounds(&range);
        self.read(start, end, usize::MAX)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        Ok(lock(&self.shared.state).vote)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        self.read(start, end, MAX_READ_BYTES)
    }
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}

impl RaftLogStorage<TypeConfig> for PartitionLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged = lock(&self.shared.state).last_purged;
        let last = match self.shared.log.raft_index_range() {
            Some((_, last)) => self.read(last, last + 1, 0)?.pop().map(|e| e.log_id),
            None => None,
        };
        let last_log_id = match (last, last_purged) {
            (Some(l), Some(p)) if p.index() >= l.index() => Some(p),
            (Some(l), _) => Some(l),
            (None, p) => p,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        self.shared.update(|s| s.vote = Some(*vote))
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        self.shared.save_committed(committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        self.shared.durable_committed()
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let log = &self.shared.log;
        let now = now_ms();
        for e in entries {
            // Placement is deterministic: every replica writes entry i at its log end, which
            // Raft's log matching makes the same offset everywhere.
            match &e.payload {
                // The batches as they came: the log gives them their offsets and the term as it
                // writes them, with no copy of the entry.
                EntryPayload::Normal(BatchData(b)) => {
                    log.append_raft_entry_assigning(b, entry::epoch_of(&e)?, e.log_id.index(), now)
                }
                _ => log.append_raft_entry(&entry::encode(&e, log.log_end_offset())?, e.log_id.index(), now),
            }
            .map_err(io_err)?;
        }
        // Readable now; reported flushed only once the data and its sidecar rows are synced.
        let result = log.sync(log.log_end_offset()).await.map_err(io_err);
        callback.io_completed(result);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        self.shared.log.truncate_raft_after(last_log_id.map(|l| l.index())).map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        if lock(&self.shared.state).last_purged.as_ref() > Some(&log_id) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("purge to {log_id} is behind the last")));
        }
        // Recorded first: a crash after some segments went must not leave the reader offering
        // entries that are no longer all there.
        self.shared.update(|s| s.last_purged = Some(log_id))?;
        self.shared.log.drop_raft_segments_upto(log_id.index()).map_err(io_err)?;
        Ok(())
    }
}

#[cfg(test)]
thread_local! {
    /// The named step at which the next `crash_point` on this thread fails, as a crash there
    /// would stop the work (the test then reopens the store from what is on disk).
    static CRASH_AT: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Fails at `step` when a test staged a crash there; nothing otherwise.
fn crash_point(step: &'static str) -> io::Result<()> {
    #[cfg(test)]
    if CRASH_AT.with(|c| c.get()) == Some(step) {
        CRASH_AT.with(|c| c.set(None));
        return Err(io::Error::other(format!("staged crash: {step}")));
    }
    let _ = step;
    Ok(())
}

#[derive(Default)]
struct SmState {
    last_applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
    snapshot: Option<SavedSnapshot>,
    /// The index `raft-applied` last recorded.
    saved_index: Option<u64>,
}

/// What `raft-applied` holds.
#[derive(Clone, Serialize, Deserialize)]
#[serde(bound = "")]
struct SavedApplied {
    last_applied: LogIdOf<TypeConfig>,
    membership: StoredMembershipOf<TypeConfig>,
}

/// The partition's state machine: the log itself, so applying is moving the high watermark
/// (clones share it).
#[derive(Clone)]
pub struct PartitionStateMachine {
    shared: Arc<Shared>,
    sm: Arc<Mutex<SmState>>,
}

impl PartitionStateMachine {
    pub fn log(&self) -> &Arc<PartitionLog> {
        &self.shared.log
    }

    /// Records where the state machine stands (`raft-applied`), every `APPLIED_SAVE_EVERY`
    /// entries and whenever the membership changed. No fsync: an older or torn file only means
    /// re-applying more after a restart.
    fn save_applied(&self, membership_changed: bool) -> io::Result<()> {
        let mut sm = lock(&self.sm);
        let Some(last) = sm.last_applied else { return Ok(()) };
        let due = sm.saved_index.is_none_or(|s| last.index() >= s.saturating_add(APPLIED_SAVE_EVERY));
        if !(due || membership_changed) {
            return Ok(());
        }
        let saved = SavedApplied { last_applied: last, membership: sm.membership.clone() };
        let path = self.shared.log.dir().join(APPLIED_FILE);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&saved).map_err(io::Error::other)?)?;
        std::fs::rename(&tmp, &path)?;
        sm.saved_index = Some(last.index());
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for PartitionStateMachine {
    type SnapshotData = Bytes;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Bytes>, io::Error> {
        let (last_applied, membership) = {
            let sm = lock(&self.sm);
            (sm.last_applied, sm.membership.clone())
        };
        let log = &self.shared.log;
        // Where retention asked (`retention::apply`), when a snapshot can stand there: an entry
        // applied here, with no membership change after it (the snapshot carries the membership
        // as of its point), and the producer state as of its end (the state an installing
        // replica starts from; entries after the point may already be in the log, and it
        // receives those again).
        let request = log.take_snapshot_request();
        let retention = request.and_then(|point| {
            if last_applied.is_none_or(|a| point > a.index()) {
                return None;
            }
            if membership.log_id().is_some_and(|m| m.index() > point) {
                return None;
            }
            let entry = log.raft_entry(point).ok()??;
            let term = u64::try_from(entry.term).ok()?;
            let producers = log.producer_state_at(entry.span.next_offset).ok()?;
            Some((LogIdOf::<TypeConfig>::new_term_index(term, point), entry.span.next_offset, producers))
        });
        let purged = lock(&self.shared.state).last_purged.is_some();
        let (last_log_id, next_offset, producers, prefix) = match retention {
            Some((at, next, producers)) => (Some(at), next, producers, false),
            // Retention's request could not be met, or entries were purged already: a snapshot
            // at the last applied entry ships at most `MAX_SNAPSHOT_PREFIX` of batches and might
            // not reach back to the log start, so a replica installing it would start later than
            // the leader. The current snapshot stands (openraft keeps it: this one is no newer).
            None if request.is_some() || purged => {
                if let Some(current) = lock(&self.sm).snapshot.clone() {
                    let data = self.shared.snapshot_data(&current)?;
                    return Ok(SnapshotOf::<TypeConfig, Bytes> { meta: current.meta, snapshot: data });
                }
                self.at_last_applied(last_applied)?
            }
            None => self.at_last_applied(last_applied)?,
        };
        let producers = String::from_utf8(producers).map_err(io::Error::other)?;
        let meta = SnapshotMetaOf::<TypeConfig> { last_log_id, last_membership: membership };
        let saved = SavedSnapshot { meta: meta.clone(), next_offset, producers, installing: false, prefix };
        let data = self.shared.snapshot_data(&saved)?;
        // openraft builds in a task of its own, so a snapshot may have been installed since
        // `last_applied` was read: only a newer snapshot replaces the current one (an older
        // one saved over it would restart the state machine behind the purge point). Compared
        // and saved under the lock `install_snapshot` saves under.
        let mut sm = lock(&self.sm);
        let current = sm.snapshot.as_ref().map(|s| s.meta.last_log_id);
        if current.is_none_or(|c| saved.meta.last_log_id > c) {
            self.shared.save_snapshot(&saved)?;
            if !saved.prefix {
                if let Some(at) = saved.meta.last_log_id {
                    log.note_batchless_snapshot(at.index());
                }
            }
            sm.snapshot = Some(saved);
        }
        Ok(SnapshotOf::<TypeConfig, Bytes> { meta, snapshot: data })
    }
}

impl PartitionStateMachine {
    /// Where a snapshot at the last applied entry stands: its end, its producer state, and that
    /// it ships the batches before it.
    #[allow(clippy::type_complexity)]
    fn at_last_applied(
        &self,
        last_applied: Option<LogIdOf<TypeConfig>>,
    ) -> io::Result<(Option<LogIdOf<TypeConfig>>, i64, Vec<u8>, bool)> {
        let log = &self.shared.log;
        let next = match &last_applied {
            Some(l) => self.shared.entry_at(l)?.map_or(log.high_watermark(), |a| a.last_offset + 1),
            None => log.log_start_offset(),
        };
        let producers = log.producer_state_at(next).map_err(io_err)?;
        Ok((last_applied, next, producers, true))
    }
}

impl RaftStateMachine<TypeConfig> for PartitionStateMachine {
    type SnapshotData = Bytes;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let sm = lock(&self.sm);
        Ok((sm.last_applied, sm.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut membership_changed = false;
        while let Some((entry, responder)) = entries.try_next().await? {
            // An applied entry is committed: readers may now see it. (openraft applies only
            // entries of this log, so the lookup finds it; an entry missing here is answered
            // without offsets rather than trusted.)
            let applied = self.shared.entry_at(&entry.log_id)?;
            if let Some(a) = applied {
                self.shared.log.set_high_watermark(a.last_offset + 1);
            }
            // DeleteRecords: every replica moves its log start when the entry commits (below
            // the entry itself, so below the high watermark just set). The segments wholly
            // below it go with the next retention pass, through a snapshot and a purge.
            if let EntryPayload::Normal(crate::BatchData(data)) = &entry.payload {
                if let Some(start) = entry::log_start_of(data) {
                    // A replica that cannot take the log start would serve what every other
                    // replica deleted: the group stops here rather than carry on diverged.
                    self.shared.log.delete_records(start).map_err(io_err)?;
                }
                // Tiered storage: every replica learns what is remote when the change commits,
                // so its local retention and a future leadership of it start from there.
                if let Some(change) = entry::remote_change_of(data) {
                    let change = change.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    self.shared.log.apply_remote_change(&change).map_err(io_err)?;
                }
            }
            {
                let mut sm = lock(&self.sm);
                sm.last_applied = Some(entry.log_id);
                if let EntryPayload::Membership(m) = entry.payload {
                    sm.membership = StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id), m);
                    membership_changed = true;
                }
            }
            if let Some(r) = responder {
                r.send(applied.unwrap_or_default());
            }
        }
        self.save_applied(membership_changed)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    /// Installs a snapshot a leader sent: the log restarts holding the snapshot's prefix
    /// batches (below the Raft log, committed), with the leader's log start and producer state;
    /// Raft entries continue after it. A log that already holds the snapshot's last entry is
    /// kept whole (openraft keeps the entries after it).
    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<TypeConfig>, snapshot: Bytes) -> Result<(), io::Error> {
        let (body, prefix) = decode_snapshot(&snapshot)?;
        // The leader's remote manifest, unless this replica's is as new (manifests only grow in
        // version, through committed entries).
        if let Some(remote) = &body.remote {
            if remote.version > self.shared.log.remote_manifest().version {
                self.shared.log.set_remote_manifest(remote.clone()).map_err(io_err)?;
            }
        }
        let held = match &meta.last_log_id {
            Some(last) => self.shared.entry_at(last)?,
            None => None,
        };
        match held {
            // The log already holds the snapshot's last entry (and so, by log matching, all
            // before it): openraft keeps the entries after it, so the log stays as it is.
            Some(at) => {
                self.shared.log.set_high_watermark(at.last_offset + 1);
                // The entries up to the snapshot's point count as applied without being applied
                // here: a log-start entry (DeleteRecords) among them is taken from the leader's
                // log start instead.
                let start = body.log_start_offset.min(at.last_offset + 1);
                if start > self.shared.log.log_start_offset() {
                    self.shared.log.delete_records(start).map_err(io_err)?;
                }
            }
            None => {
                PartitionLog::check_snapshot_prefix(&prefix, body.next_offset, body.producers.as_bytes())
                    .map_err(io_err)?;
                // The snapshot and the purge point are durable before the log is rewritten: a
                // crash part way then leaves a store that knows which offset the log must
                // resume at (open finishes the job), never a log at the new offset with the old
                // purge point, which would place the next entries at the wrong offsets.
                let pending = SavedSnapshot {
                    meta: meta.clone(),
                    next_offset: body.next_offset,
                    producers: body.producers.clone(),
                    installing: true,
                    prefix: !prefix.is_empty(),
                };
                {
                    // Adopted at once (under the lock `build_snapshot` compares under), so a
                    // snapshot built meanwhile from an older position cannot replace it.
                    let mut sm = lock(&self.sm);
                    self.shared.save_snapshot(&pending)?;
                    sm.snapshot = Some(pending);
                }
                self.shared.purged_through(meta.last_log_id)?;
                crash_point("install: before the log is rewritten")?;
                self.shared
                    .log
                    .restore_prefix(&prefix, body.log_start_offset, body.next_offset, body.producers.as_bytes())
                    .map_err(io_err)?;
                crash_point("install: after the log is rewritten")?;
            }
        }
        let saved = SavedSnapshot {
            meta: meta.clone(),
            next_offset: body.next_offset,
            producers: body.producers,
            installing: false,
            // A snapshot that came without batches ships none either: what is before its point
            // expired on the leader.
            prefix: !prefix.is_empty(),
        };
        if !saved.prefix {
            if let Some(at) = meta.last_log_id {
                self.shared.log.note_batchless_snapshot(at.index());
            }
        }
        let mut sm = lock(&self.sm);
        self.shared.save_snapshot(&saved)?;
        sm.last_applied = meta.last_log_id;
        sm.membership = meta.last_membership.clone();
        sm.snapshot = Some(saved);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, Bytes>>, io::Error> {
        let saved = lock(&self.sm).snapshot.clone();
        match saved {
            Some(s) => {
                let data = self.shared.snapshot_data(&s)?;
                Ok(Some(SnapshotOf::<TypeConfig, Bytes> { meta: s.meta, snapshot: data }))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests;
