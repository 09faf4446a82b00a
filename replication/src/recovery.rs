//! Replicas that lost their disk ("amnesia"). Raft's safety rests on voters remembering what
//! they acknowledged and whom they voted for. A voter that comes back empty would grant its
//! vote to any candidate (every log is at least as up to date as an empty one), so a candidate
//! lacking an entry that was committed with the wiped voter's help could win, and the entry
//! would be lost.
//!
//! Such a replica starts *recovering*: it refuses every vote and pre-vote, never campaigns and
//! refuses leadership transfers, but accepts entries and snapshots from a leader as usual. It
//! votes again once an AppendEntries from a leader of term T has succeeded (so the entries are
//! durable here, and match the leader's log) up to an entry of term T at or past the commit
//! index that leader named in its first AppendEntries of term T. The leader of T holds every
//! entry committed before T (Leader Completeness), all of them before its first entry of T; and
//! it names as committed whatever it committed itself with this replica's old acknowledgements.
//!
//! The state is a marker file in the replica's directory, written durably before the group
//! starts and removed once recovered, so a crash in between resumes recovering. While a
//! majority of a group's replicas are recovering the group has no leader: that is what losing
//! a majority's disks means, and electing one anyway could silently drop acknowledged data.
//! One exception (`settle_replica`): where every other voter shows that nothing was ever
//! committed in the group, the replica votes in the terms above the newest they have seen.
//!
//! A recovering replica also forgot the newest term it had seen, so a deposed leader of an older
//! term that still believes it leads could fill it with a log lacking entries the newer leader
//! committed with this replica's help, count its acknowledgements towards committing its own
//! entries, and end its recovery. So before it takes any entry it learns a *floor*
//! (`learn_floor`): the newest term every other voter of the group has seen. Each entry committed
//! with this replica's help was committed by a leader that a majority acknowledged, so at least
//! one other voter has seen that leader's term; each vote this replica granted went to a
//! candidate among the others, whose term is at least that vote's. Asking every other voter (not
//! a majority: the ones that do not answer may be exactly those) bounds both. Entries and
//! snapshots from a leader of a term below the floor are refused, as is everything until the
//! floor is known. A leader of a term above the floor was elected without this replica's
//! forgotten vote, so Leader Completeness holds for it; a leader of exactly the floor term may
//! have had that vote, but then it is the leader the forgotten acknowledgements went to, and its
//! log already holds what they committed.
//!
//! This holds while fewer than a majority of a group's voters are wiped at once: the others'
//! memory is the only record of the terms. Partition groups take their voters from the
//! controller's metadata, the controller's own group from `controller_quorum_voters`. The cost:
//! with another replica of the group unreachable, a recovering one waits for it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::types::GroupId;

/// The marker file: present while the replica in its directory is recovering.
pub const MARKER: &str = "raft-recovering";

#[derive(Debug)]
struct Recovering {
    marker: PathBuf,
    /// The newest leader term heard in this run, and the commit index its first AppendEntries
    /// named (`None`: that leader had committed nothing).
    target: Option<(u64, Option<u64>)>,
    /// The newest term the group's other voters had seen when asked (`learn_floor`); `None`
    /// until all of them answered. Entries are taken only from leaders of this term or newer.
    floor: Option<u64>,
    /// Every other voter answered with no entry past the initial membership (`settle_replica`):
    /// nothing was ever committed in the group, so votes for terms above the floor are granted.
    no_history: bool,
}

/// The groups of a node whose replicas are recovering.
#[derive(Debug, Default)]
pub struct Recovery {
    groups: Mutex<BTreeMap<GroupId, Recovering>>,
    /// Votes and pre-votes refused because the replica was recovering (a metric).
    refused: std::sync::atomic::AtomicU64,
    /// AppendEntries and snapshots refused because their leader's term was below the floor, or
    /// the floor was not known yet (a metric).
    refused_appends: std::sync::atomic::AtomicU64,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Recovery {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<GroupId, Recovering>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the replica of `group` in `dir` (created if missing) as recovering, durably,
    /// before its group is started.
    pub fn begin(&self, group: GroupId, dir: &Path) -> io::Result<()> {
        let marker = dir.join(MARKER);
        if dir.exists() {
            std::fs::File::create(&marker)?.sync_all()?;
            sync_dir(dir)?;
        } else {
            // The directory appears with its marker in it, or not at all: an empty directory
            // left by a crash would read as a replica that is not recovering.
            let mut staging = dir.as_os_str().to_owned();
            staging.push(".tmp");
            let staging = PathBuf::from(staging);
            if staging.exists() {
                std::fs::remove_dir_all(&staging)?;
            }
            std::fs::create_dir_all(&staging)?;
            std::fs::File::create(staging.join(MARKER))?.sync_all()?;
            sync_dir(&staging)?;
            std::fs::rename(&staging, dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        tracing::warn!(group, dir = %dir.display(), "replica starts recovering: it will not vote until it has caught up");
        self.lock().insert(group, Recovering { marker, target: None, floor: None, no_history: false });
        Ok(())
    }

    /// Resumes recovering if the replica in `dir` was recovering when its node stopped.
    /// Returns whether it is recovering.
    pub fn resume_if_marked(&self, group: GroupId, dir: &Path) -> bool {
        let marker = dir.join(MARKER);
        match std::fs::metadata(&marker) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
            // Unknown is treated as marked: wrongly recovering costs a catch-up, wrongly voting
            // could cost acknowledged records.
            Err(e) => {
                tracing::warn!(group, marker = %marker.display(), error = %e, "cannot tell whether the replica is recovering; it is taken to be")
            }
        }
        tracing::warn!(group, dir = %dir.display(), "replica is still recovering: it will not vote until it has caught up");
        self.lock().insert(group, Recovering { marker, target: None, floor: None, no_history: false });
        true
    }

    pub fn is_recovering(&self, group: GroupId) -> bool {
        self.lock().contains_key(&group)
    }

    pub(crate) fn refused_vote(&self) {
        self.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many votes and pre-votes recovering replicas here have refused.
    pub fn votes_refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many AppendEntries and snapshots recovering replicas here have refused (`admits`).
    pub fn appends_refused(&self) -> u64 {
        self.refused_appends.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The floor learnt for a recovering replica of `group` (`learn_floor`), if any.
    pub fn floor(&self, group: GroupId) -> Option<u64> {
        self.lock().get(&group).and_then(|r| r.floor)
    }

    /// Sets the floor of a recovering replica; the first one learnt stays.
    pub(crate) fn set_floor(&self, group: GroupId, term: u64) {
        if let Some(r) = self.lock().get_mut(&group) {
            if r.floor.is_none() {
                tracing::info!(group, floor = term, "recovering replica learnt the newest term its group has seen");
                r.floor = Some(term);
            }
        }
    }

    /// Records that every other voter of `group` showed no history (`settle_replica`), with
    /// the newest term they had seen as the floor.
    pub(crate) fn set_no_history(&self, group: GroupId, floor: u64) {
        self.set_floor(group, floor);
        if let Some(r) = self.lock().get_mut(&group) {
            if r.floor == Some(floor) && !r.no_history {
                tracing::info!(
                    group,
                    floor,
                    "recovering replica's group has no history: it votes in terms above the floor"
                );
                r.no_history = true;
            }
        }
    }

    /// Whether a recovering replica of `group` may vote in `term` (else it refuses every vote).
    /// Only where the group has no history, and above the floor. With no entry committed
    /// anywhere, an empty log loses nothing by judging a candidate; what the lost state may
    /// still hold is a vote, and every vote it granted was in a term at or below the floor (a
    /// candidate saves its own vote before asking). A candidate it grants to in a later term
    /// leads with this replica's vote saved here, and recovery ends on its first entries.
    pub(crate) fn may_vote(&self, group: GroupId, term: u64) -> bool {
        match self.lock().get(&group) {
            None => true,
            Some(r) => r.no_history && r.floor.is_some_and(|f| term > f),
        }
    }

    /// Whether a recovering replica of `group` may take entries or a snapshot from the leader
    /// of `term`: only once its floor is known, and only at or above it. `Err` says why not.
    pub(crate) fn admits(&self, group: GroupId, term: u64) -> Result<(), String> {
        let why = match self.lock().get(&group) {
            None => return Ok(()),
            Some(Recovering { floor: Some(floor), .. }) if term >= *floor => return Ok(()),
            Some(Recovering { floor: Some(floor), .. }) => format!(
                "this replica is recovering a lost log and the group has seen term {floor}; a leader of term {term} is deposed"
            ),
            Some(Recovering { floor: None, .. }) => {
                "this replica is recovering a lost log and has not yet heard from every other replica of its group"
                    .to_string()
            }
        };
        self.refused_appends.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Err(why)
    }

    /// The group's replica is gone from this node.
    pub fn forget(&self, group: GroupId) {
        self.lock().remove(&group);
    }

    /// A leader of `term` sent an AppendEntries naming `commit`. The first one of the newest
    /// term sets the target.
    pub(crate) fn heard_commit(&self, group: GroupId, term: u64, commit: Option<u64>) {
        if let Some(r) = self.lock().get_mut(&group) {
            if r.target.is_none_or(|(t, _)| term > t) {
                tracing::info!(group, term, ?commit, "recovering replica heard from a leader");
                r.target = Some((term, commit));
            }
        }
    }

    /// An AppendEntries from the leader of `term` succeeded: this log durably holds, matching
    /// the leader's, everything up to `matched` (term, index). Ends recovery once that is an
    /// entry of the leader's own term at or past the target. Returns true when it ended now.
    pub(crate) fn check(&self, group: GroupId, term: u64, matched: (u64, u64)) -> io::Result<bool> {
        let marker = {
            let groups = self.lock();
            match groups.get(&group) {
                Some(Recovering { target: Some((t, commit)), marker, floor: Some(floor), .. })
                    if *t == term && term >= *floor && matched.0 == term && Some(matched.1) >= *commit =>
                {
                    marker.clone()
                }
                _ => return Ok(false),
            }
        };
        self.end(group, &marker)?;
        tracing::info!(group, term, index = matched.1, "replica recovered: it votes again");
        Ok(true)
    }

    /// Ends recovery without a leader: the group's other voters have shown that nothing was
    /// ever committed (a new cluster's first start). Returns false if it was not recovering.
    pub fn release(&self, group: GroupId) -> io::Result<bool> {
        let Some(marker) = self.lock().get(&group).map(|r| r.marker.clone()) else {
            return Ok(false);
        };
        self.end(group, &marker)?;
        tracing::info!(group, "replica released from recovery: its group has no history");
        Ok(true)
    }

    fn end(&self, group: GroupId, marker: &Path) -> io::Result<()> {
        match std::fs::remove_file(marker) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(dir) = marker.parent() {
            sync_dir(dir)?;
        }
        self.lock().remove(&group);
        Ok(())
    }
}

/// Whether the replica in `dir` may have lost its Raft state: it never recorded a vote (every
/// replica that took an entry or voted did), or it was recovering when its node stopped.
pub fn may_have_lost_state(dir: &Path) -> bool {
    !dir.join(crate::partition::STATE_FILE).exists() || dir.join(MARKER).exists()
}

/// For a voter of a fixed quorum (the controller's) that may have lost its state: it is held
/// recovering (`Recovery::begin`, before its group starts) until its peers show whether the
/// quorum has a history. A peer whose log holds more than the initial membership entry means it
/// has: this voter stays recovering until a leader has brought it up to date. Every other voter
/// answering with no history (or a majority of the voters, after `patience`) means a new
/// cluster: this voter is released and proposes the initial membership, as every voter does.
/// With no answers it waits: alone it could neither lead nor learn anything.
pub async fn settle_voter<SM>(
    node: std::sync::Arc<crate::node::ReplicaNode<SM>>,
    group: GroupId,
    voters: std::collections::BTreeMap<crate::NodeId, openraft::BasicNode>,
    patience: std::time::Duration,
) where
    SM: openraft::storage::RaftStateMachine<crate::types::TypeConfig, SnapshotData = bytes::Bytes>,
{
    let others: Vec<crate::NodeId> = voters.keys().copied().filter(|v| *v != node.id()).collect();
    let majority = voters.len() / 2 + 1;
    let started = tokio::time::Instant::now();
    let mut last_report = started;
    loop {
        if !node.recovery().is_recovering(group) {
            return; // a leader brought it up to date
        }
        let answers = node.peer_logs(group, &others, std::time::Duration::from_secs(1)).await;
        if answers.values().any(|p| p.last_index.is_some_and(|i| i > 0)) {
            tracing::warn!(group, ?answers, "the quorum has a history this voter lacks: recovering it from the leader");
            let voters: Vec<crate::NodeId> = voters.keys().copied().collect();
            return learn_floor(node, group, move || voters.clone()).await;
        }
        // This voter's own empty log is what is in doubt: only other voters' answers count,
        // every one of them (a voter that has never caught up looks empty too), or after
        // `patience`, a majority of the quorum without this voter.
        let everyone = answers.len() == others.len();
        if everyone || (answers.len() >= majority && started.elapsed() >= patience) {
            // Released whatever terms the others have seen (`settle_without_history` would hold
            // it in that case): at a new cluster's first start every voter is unsure, and one
            // held back where another voter has campaigned leaves too few voters to elect once
            // a candidate's first entry counts as a history. The cost: a vote this voter gave in
            // the first election of a new cluster and then lost with its disk is not bounded.
            release_without_history(&node, group, voters).await;
            return;
        }
        if last_report.elapsed() >= std::time::Duration::from_secs(10) {
            last_report = tokio::time::Instant::now();
            tracing::warn!(group, ?answers, "waiting for the other voters to learn whether the quorum has a history");
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// For a recovering replica of a partition group whose first leader the metadata has not
/// recorded: the metadata lags the group (a leader reports itself once elected), so that group
/// may have elected a leader and committed entries with this replica's lost acknowledgements.
/// Its other voters tell. If any holds an entry past the initial membership, the group has a
/// history and the replica recovers it as any other (`learn_floor`). If every one answers with
/// none, nothing was ever committed: the replica learns the floor from those answers and votes
/// in the terms above it (`Recovery::may_vote`), so a group of two replicas can still elect
/// (`settle_without_history`); its recovery ends on its leader's first entries. It waits for
/// every other voter: one that does not answer may be the leader that committed with its help.
pub async fn settle_replica<SM>(
    node: std::sync::Arc<crate::node::ReplicaNode<SM>>,
    group: GroupId,
    voters: impl Fn() -> Vec<crate::NodeId> + Send,
    members: std::collections::BTreeMap<crate::NodeId, openraft::BasicNode>,
) where
    SM: openraft::storage::RaftStateMachine<crate::types::TypeConfig, SnapshotData = bytes::Bytes>,
{
    let mut last_report = tokio::time::Instant::now();
    loop {
        if !node.recovery().is_recovering(group) || node.group(group).is_none() {
            return;
        }
        let others: Vec<crate::NodeId> = voters().into_iter().filter(|v| *v != node.id()).collect();
        if others.is_empty() {
            return;
        }
        let answers = node.peer_logs(group, &others, std::time::Duration::from_secs(1)).await;
        if answers.values().any(|p| p.last_index.is_some_and(|i| i > 0)) {
            tracing::warn!(
                group,
                ?answers,
                "the group has a history this replica may have lost: recovering it from the leader"
            );
            return learn_floor(node, group, voters).await;
        }
        if answers.len() == others.len() {
            return settle_without_history(&node, group, &answers, members).await;
        }
        if last_report.elapsed() >= std::time::Duration::from_secs(10) {
            last_report = tokio::time::Instant::now();
            tracing::warn!(group, ?answers, "recovering replica waits for every other replica of its group to answer");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Settles a replica that may have lost its state once every other voter of its group
/// (`answers`) showed no entry past the initial membership, so nothing was ever committed.
///
/// What the lost state may still hold is a vote, for a candidate that saved its own vote first:
/// one of the voters that answered, so the newest term among the answers bounds it. Where that term is 0 no one has ever
/// campaigned, so this replica never voted: it is released and sets up the group's first
/// membership, as every replica of a new group does (a new cluster's first start, where every
/// voter is unsure, and a group created here before this data dir recorded where its groups
/// begin). Otherwise it stays recovering but votes in the terms above that floor
/// (`Recovery::may_vote`), and leaves campaigning to the voters that have campaigned: its own
/// candidacy would start from the term it forgot, and could win a term it already gave away.
async fn settle_without_history<SM>(
    node: &std::sync::Arc<crate::node::ReplicaNode<SM>>,
    group: GroupId,
    answers: &BTreeMap<crate::NodeId, crate::node::PeerLog>,
    members: BTreeMap<crate::NodeId, openraft::BasicNode>,
) where
    SM: openraft::storage::RaftStateMachine<crate::types::TypeConfig, SnapshotData = bytes::Bytes>,
{
    let floor = answers.values().map(|p| p.term).max().unwrap_or(0);
    if floor > 0 {
        node.recovery().set_no_history(group, floor);
        return;
    }
    release_without_history(node, group, members).await;
}

/// Ends a replica's recovery without a leader and sets up its group's first membership.
async fn release_without_history<SM>(
    node: &std::sync::Arc<crate::node::ReplicaNode<SM>>,
    group: GroupId,
    members: BTreeMap<crate::NodeId, openraft::BasicNode>,
) where
    SM: openraft::storage::RaftStateMachine<crate::types::TypeConfig, SnapshotData = bytes::Bytes>,
{
    if let Err(e) = node.recovery().release(group) {
        tracing::error!(group, error = %e, "cannot release the replica from recovery");
        return;
    }
    if let Some(raft) = node.group(group) {
        raft.runtime_config().elect(true);
        if let Err(e) = raft.initialize(members).await {
            tracing::debug!(group, error = %e, "group already initialized");
        }
    }
}

/// Learns the floor of a recovering replica (module docs): asks every other voter of `group`
/// (as `voters` names them at each round) for its term until all of them have answered in one
/// round, and sets the newest as the floor. Returns once it is set, or when the replica is no
/// longer recovering or hosted here.
///
/// A partition's voters are read again each round because a reassignment may complete
/// meanwhile: the replica it removed deletes its log and never answers again. Asking only the
/// replicas still listed is enough: the reassignment completed once a membership without the
/// removed one was committed in some term c, so the removed one could lead only in a term
/// before c; a majority of that membership has seen c, and every majority of it (two voters or
/// more) includes one of the listed replicas asked here, all of which are asked.
pub async fn learn_floor<SM>(
    node: std::sync::Arc<crate::node::ReplicaNode<SM>>,
    group: GroupId,
    voters: impl Fn() -> Vec<crate::NodeId> + Send,
) where
    SM: openraft::storage::RaftStateMachine<crate::types::TypeConfig, SnapshotData = bytes::Bytes>,
{
    let mut last_report = tokio::time::Instant::now();
    loop {
        let listed = voters();
        if listed.is_empty() {
            // The partition is gone from the metadata: the applier stops its replica.
            return;
        }
        let others: Vec<crate::NodeId> = listed.into_iter().filter(|v| *v != node.id()).collect();
        if !node.recovery().is_recovering(group) || node.group(group).is_none() {
            return;
        }
        if others.is_empty() {
            // A lone replica has no one to learn from; it stays recovering (and leaderless)
            // rather than guess. The applier does not mark lone replicas.
            tracing::error!(group, "a recovering replica with no other voter cannot learn its group's term");
            return;
        }
        let answers = node.peer_logs(group, &others, std::time::Duration::from_secs(1)).await;
        if answers.len() == others.len() {
            let floor = answers.values().map(|p| p.term).max().unwrap_or(0);
            node.recovery().set_floor(group, floor);
            return;
        }
        if last_report.elapsed() >= std::time::Duration::from_secs(10) {
            last_report = tokio::time::Instant::now();
            let missing: Vec<_> = others.iter().filter(|o| !answers.contains_key(o)).collect();
            tracing::warn!(
                group,
                ?missing,
                "recovering replica waits for every other replica of its group to answer before it takes entries"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_ends_only_at_an_entry_of_the_leaders_term_past_its_first_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t-0.g7");
        let r = Recovery::default();
        r.begin(7, &dir).unwrap();
        assert!(r.is_recovering(7) && dir.join(MARKER).exists());
        // No leader heard yet: nothing ends it.
        assert!(!r.check(7, 3, (3, 100)).unwrap());
        // Nothing is taken before the other replicas have told the newest term they have seen,
        // nor from a leader older than that.
        assert!(r.admits(7, 3).is_err());
        r.set_floor(7, 3);
        r.set_floor(7, 1);
        assert_eq!(r.floor(7), Some(3), "the first floor learnt stays");
        assert!(r.admits(7, 2).is_err() && r.admits(7, 3).is_ok() && r.admits(7, 4).is_ok());
        assert_eq!(r.appends_refused(), 2);
        r.heard_commit(7, 3, Some(10));
        // A later commit of the same term does not move the target.
        r.heard_commit(7, 3, Some(50));
        assert!(!r.check(7, 3, (3, 9)).unwrap());
        // Past the commit, but not yet holding an entry of the leader's term.
        assert!(!r.check(7, 3, (2, 12)).unwrap());
        // A newer leader: its own first commit is the target now.
        r.heard_commit(7, 4, Some(11));
        assert!(!r.check(7, 3, (3, 20)).unwrap(), "the old leader's word no longer counts");
        // A restart before catching up resumes from the marker, with a target to learn again.
        let again = Recovery::default();
        assert!(again.resume_if_marked(7, &dir));
        again.heard_commit(7, 4, Some(12));
        assert!(!again.check(7, 4, (4, 12)).unwrap(), "a restart learns its floor again");
        again.set_floor(7, 4);
        assert!(!again.check(7, 4, (4, 11)).unwrap());
        assert!(again.check(7, 4, (4, 12)).unwrap());
        assert!(!again.is_recovering(7) && !dir.join(MARKER).exists());
        assert!(!Recovery::default().resume_if_marked(7, &dir));
        // A leader that has committed nothing: recovered once an entry of its term is held.
        let empty = Recovery::default();
        empty.begin(8, &tmp.path().join("t-1.g8")).unwrap();
        empty.set_floor(8, 1);
        empty.heard_commit(8, 1, None);
        assert!(empty.check(8, 1, (1, 1)).unwrap());
    }

    #[test]
    fn a_replica_of_a_group_without_history_votes_only_above_the_floor() {
        let tmp = tempfile::tempdir().unwrap();
        let r = Recovery::default();
        assert!(r.may_vote(9, 1), "a replica that is not recovering votes as Raft has it");
        r.begin(9, &tmp.path().join("t-0.g9")).unwrap();
        assert!(!r.may_vote(9, 100), "no vote before the other replicas have answered");
        // A floor learnt for a group with a history (`learn_floor`) opens no vote.
        r.set_floor(9, 4);
        assert!(!r.may_vote(9, 5));
        // A floor other than the one learnt first is not the newest term the others had seen
        // when they showed no history, so it opens nothing either.
        r.set_no_history(9, 2);
        assert!(!r.may_vote(9, 5));
        let fresh = Recovery::default();
        fresh.begin(10, &tmp.path().join("t-1.g10")).unwrap();
        fresh.set_no_history(10, 3);
        assert_eq!(fresh.floor(10), Some(3));
        // The lost state may hold a vote in any term up to the floor, never above it.
        assert!(!fresh.may_vote(10, 2) && !fresh.may_vote(10, 3));
        assert!(fresh.may_vote(10, 4));
        // Still recovering: it takes entries from a leader at or above the floor, and is done
        // once it holds one of that leader's own entries past the commit it named.
        assert!(fresh.is_recovering(10) && fresh.admits(10, 4).is_ok() && fresh.admits(10, 2).is_err());
        fresh.heard_commit(10, 4, None);
        assert!(fresh.check(10, 4, (4, 1)).unwrap());
        assert!(!fresh.is_recovering(10));
    }
}
