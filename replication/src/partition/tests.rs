//! openraft's storage suite against the partition log, and what a crash leaves of it.

use std::collections::BTreeSet;

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::alias::{LogIdOf, VoteOf};
use openraft::type_config::TypeConfigExt;
use openraft::{Membership, StorageError};

use super::*;
use crate::types::BatchData;

struct Builder;

impl StoreBuilder<TypeConfig, PartitionLogStore, PartitionStateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, PartitionLogStore, PartitionStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let (log, sm) = open(&dir.path().join("t-0"), LogConfig::default())
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok((dir, log, sm))
    }
}

/// openraft's storage conformance suite, a fresh partition directory per test.
#[test]
fn openraft_storage_suite() {
    TypeConfig::run(async {
        Suite::test_all(Builder).await.unwrap();
    });
}

fn normal(term: u64, index: u64, value: &[u8]) -> EntryOf<TypeConfig> {
    let batch = fjord_storage::batch::build_batch(0, 1_000, &[(None, Some(value)), (None, Some(value))]);
    EntryOf::<TypeConfig> {
        log_id: LogIdOf::<TypeConfig>::new_term_index(term, index),
        payload: EntryPayload::Normal(BatchData(Bytes::from(batch))),
    }
}

/// Takes the last `n` rows off a sidecar, as a crash before their sync would: the rows written
/// are followed by zeros written ahead of them, which are no rows.
fn lose_last_rows(side: &std::path::Path, n: usize) {
    use fjord_storage::raftindex::{rows_written, HEADER, ROW};
    let data = std::fs::read(side).unwrap();
    let rows = rows_written(&data);
    assert!(rows >= n, "{} holds {rows} rows, fewer than the {n} to lose", side.display());
    std::fs::write(side, &data[..HEADER + (rows - n) * ROW]).unwrap();
}

/// Appends through the trait and waits for the flush report.
async fn append(store: &mut PartitionLogStore, entries: Vec<EntryOf<TypeConfig>>) {
    let (tx, rx) = TypeConfig::oneshot();
    let cb = IOFlushed::<TypeConfig>::signal(tx);
    store.append(entries, cb).await.unwrap();
    rx.await.unwrap().unwrap();
}

async fn apply(sm: &mut PartitionStateMachine, entries: Vec<EntryOf<TypeConfig>>) {
    let items = entries.into_iter().map(|e| Ok((e, None)));
    sm.apply(futures::stream::iter(items)).await.unwrap();
}

#[tokio::test]
async fn a_crash_keeps_vote_entries_and_commit_and_cuts_the_unflushed_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    let (mut store, mut sm) = open(&dir, LogConfig::default()).unwrap();
    let membership = Membership::new_with_defaults(vec![BTreeSet::from([1, 2, 3])], []);
    let mut entries = vec![
        EntryOf::<TypeConfig> {
            log_id: LogIdOf::<TypeConfig>::new_term_index(0, 0),
            payload: EntryPayload::Membership(membership.clone()),
        },
        EntryOf::<TypeConfig> { log_id: LogIdOf::<TypeConfig>::new_term_index(1, 1), payload: EntryPayload::Blank },
    ];
    entries.extend((2..6).map(|i| normal(1, i, &[i as u8; 30])));
    append(&mut store, entries.clone()).await;
    let vote = VoteOf::<TypeConfig>::new(1, 2);
    store.save_vote(&vote).await.unwrap();
    apply(&mut sm, entries[..4].to_vec()).await;
    store.save_committed(Some(entries[3].log_id)).await.unwrap();
    let hw = store.log().high_watermark();
    assert_eq!(hw, store.log().raft_entry_span(3).unwrap().next_offset, "apply moved the HW");
    // Client batches start after the two control batches, which took offsets 0 and 1.
    assert_eq!(store.log().raft_entry_span(2).unwrap().base_offset, 2);
    let flushed_end = store.log().log_end_offset();
    // Two more entries whose rows never reach the disk: the crash below loses them.
    append(&mut store, vec![normal(2, 6, b"lost"), normal(2, 7, b"lost too")]).await;
    drop((store, sm));
    lose_last_rows(&dir.join(format!("{:020}.raftindex", 0)), 2);

    let (mut store, mut sm) = open(&dir, LogConfig::default()).unwrap();
    assert_eq!(store.read_vote().await.unwrap(), Some(vote));
    assert_eq!(store.read_committed().await.unwrap(), Some(entries[3].log_id));
    assert_eq!(store.log().high_watermark(), hw, "the HW comes back from the saved commit");
    assert_eq!(store.log().log_end_offset(), flushed_end, "the unflushed tail is gone");
    let state = store.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (None, Some(entries[5].log_id)));
    let back = store.try_get_log_entries(0..).await.unwrap();
    assert_eq!(back.iter().map(|e| e.log_id).collect::<Vec<_>>(), entries.iter().map(|e| e.log_id).collect::<Vec<_>>());
    assert_eq!(back[0].payload, EntryPayload::Membership(membership.clone()));
    assert_eq!(back[1].payload, EntryPayload::Blank);
    // The state machine comes back where `raft-applied` left it (saved at that apply, which
    // changed the membership), and re-applies only what follows: the HW moves on from there.
    let (applied, m) = sm.applied_state().await.unwrap();
    assert_eq!((applied, m.membership()), (Some(entries[3].log_id), &membership));
    apply(&mut sm, back[4..].to_vec()).await;
    assert_eq!(store.log().high_watermark(), flushed_end);
    // Appends carry on where the flushed log ended.
    append(&mut store, vec![normal(3, 6, b"new")]).await;
    assert_eq!(store.log().raft_entry_span(6).unwrap().base_offset, flushed_end);
}

#[tokio::test]
async fn reads_are_capped_in_bytes_and_apply_moves_the_high_watermark() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut store, mut sm) = open(&tmp.path().join("t-0"), LogConfig::default()).unwrap();
    let big = vec![7u8; MAX_READ_BYTES / 3];
    append(&mut store, (0..5).map(|i| normal(1, i, &big)).collect()).await;
    let got = store.limited_get_log_entries(0, 5).await.unwrap();
    assert!(!got.is_empty() && got.len() < 5, "{} entries", got.len());
    assert_eq!(store.try_get_log_entries(0..5).await.unwrap().len(), 5);
    let entry = store.try_get_log_entries(1..2).await.unwrap().remove(0);
    apply(&mut sm, vec![entry]).await;
    assert_eq!(store.log().high_watermark(), 4, "two records per entry");
}

fn log_producers_at(store: &PartitionLogStore, offset: i64) -> Vec<u8> {
    store.log().producer_state_at(offset).unwrap()
}

/// A snapshot carries the state machine's position, membership, next offset, producer state
/// and the log prefix; installing it makes the follower's log the leader's prefix (below the Raft
/// log), and a restart keeps it installed rather than installing it again.
#[tokio::test]
async fn a_snapshot_moves_a_follower_to_the_leaders_next_offset_with_its_producers() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut leader, mut leader_sm) = open(&tmp.path().join("leader"), LogConfig::default()).unwrap();
    let membership = Membership::new_with_defaults(vec![BTreeSet::from([1, 2, 3])], []);
    let idempotent = fjord_storage::batch::build_batch_as(
        0,
        1_000,
        &[(None, Some(b"once"))],
        Some(fjord_storage::batch::Producer { id: 42, epoch: 0, base_sequence: 0, transactional: false }),
    );
    let mut entries = vec![EntryOf::<TypeConfig> {
        log_id: LogIdOf::<TypeConfig>::new_term_index(1, 0),
        payload: EntryPayload::Membership(membership.clone()),
    }];
    entries.extend((1..4).map(|i| normal(1, i, b"v")));
    entries.push(EntryOf::<TypeConfig> {
        log_id: LogIdOf::<TypeConfig>::new_term_index(1, 4),
        payload: EntryPayload::Normal(BatchData(Bytes::from(idempotent.clone()))),
    });
    append(&mut leader, entries.clone()).await;
    apply(&mut leader_sm, entries.clone()).await;
    let snap = leader_sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id, Some(entries[4].log_id));
    let next = leader.log().log_end_offset();

    let follower_dir = tmp.path().join("follower");
    let (mut follower, mut follower_sm) = open(&follower_dir, LogConfig::default()).unwrap();
    append(&mut follower, vec![normal(1, 0, b"stale")]).await;
    follower_sm.install_snapshot(&snap.meta, snap.snapshot.clone()).await.unwrap();
    let log = follower.log().clone();
    assert_eq!((log.log_start_offset(), log.log_end_offset(), log.high_watermark()), (0, next, next));
    // The prefix came along: a consumer reads the leader's batches at the same offsets.
    let theirs = leader.log().read(0, usize::MAX, i64::MAX).unwrap().records;
    assert_eq!(log.read(0, usize::MAX, i64::MAX).unwrap().records, theirs);
    assert_eq!(log.raft_index_range(), None, "the prefix is below the Raft log");
    assert_eq!(
        follower_sm.applied_state().await.unwrap(),
        (Some(entries[4].log_id), snap.meta.last_membership.clone())
    );
    // The producer's sequence came along: a retry of its batch is known, the next one fits.
    let verdict = log.check_produce(&idempotent, 1_000).unwrap();
    assert!(matches!(verdict, fjord_storage::ProduceVerdict::Duplicate(_)), "{verdict:?}");
    // openraft purges the log up to the snapshot, then entries continue after it.
    follower.purge(entries[4].log_id).await.unwrap();
    append(&mut follower, vec![normal(2, 5, b"after")]).await;
    assert_eq!(log.raft_entry_span(5).unwrap().base_offset, next);
    drop((follower, follower_sm, log));

    let (mut follower, mut follower_sm) = open(&follower_dir, LogConfig::default()).unwrap();
    assert_eq!(follower_sm.applied_state().await.unwrap().0, Some(entries[4].log_id), "kept, not reinstalled");
    let current = follower_sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);
    let state = follower.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(entries[4].log_id));
    assert_eq!(state.last_log_id.map(|l| l.index()), Some(5));
    assert_eq!(follower.log().log_start_offset(), 0);
    assert_eq!(follower.log().read(0, usize::MAX, next).unwrap().records, theirs, "the prefix survives a restart");
    assert_eq!(follower.log().producer_state(), log_producers_at(&leader, next), "producer state as shipped");
    assert!(follower_sm.install_snapshot(&snap.meta, Bytes::from_static(b"junk")).await.is_err());
}

/// A crash part way through installing a snapshot, at either side of the log's rewrite: the
/// reopened store has the snapshot's purge point and a log ending at the snapshot's next
/// offset, so the next entry lands at the leader's offset.
#[tokio::test]
async fn a_crash_during_a_snapshot_install_resumes_at_the_snapshots_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut leader, mut leader_sm) = open(&tmp.path().join("leader"), LogConfig::default()).unwrap();
    let entries: Vec<_> = (0..6).map(|i| normal(1, i, &[i as u8; 30])).collect();
    append(&mut leader, entries.clone()).await;
    apply(&mut leader_sm, entries.clone()).await;
    let snap = leader_sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let next = leader.log().log_end_offset();
    let last = entries[5].log_id;
    for step in ["install: before the log is rewritten", "install: after the log is rewritten"] {
        let dir = tmp.path().join(step.replace([' ', ':'], "-"));
        let (mut follower, mut follower_sm) = open(&dir, LogConfig::default()).unwrap();
        // A diverged entry of another term: the snapshot's last entry is not held.
        append(&mut follower, vec![normal(0, 0, b"stale")]).await;
        CRASH_AT.with(|c| c.set(Some(step)));
        assert!(follower_sm.install_snapshot(&snap.meta, snap.snapshot.clone()).await.is_err(), "{step}");
        drop((follower, follower_sm));
        let (mut follower, mut follower_sm) = open(&dir, LogConfig::default()).unwrap();
        let state = follower.get_log_state().await.unwrap();
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(last), Some(last)), "{step}");
        assert_eq!(follower_sm.applied_state().await.unwrap().0, Some(last), "{step}");
        assert_eq!(follower.log().log_end_offset(), next, "{step}");
        append(&mut follower, vec![normal(2, 6, b"after")]).await;
        assert_eq!(follower.log().raft_entry_span(6).unwrap().base_offset, next, "{step}");
        drop((follower, follower_sm));
        // Finished once: a later open leaves the log alone.
        let (follower, _sm) = open(&dir, LogConfig::default()).unwrap();
        assert_eq!(follower.log().raft_index_range(), Some((6, 6)), "{step}");
    }
}

/// openraft builds snapshots in a task of its own: one that read the state machine's position
/// before a newer snapshot was installed must not replace it (a restart would then begin behind
/// the purge point). The builder's early read is staged by setting the position back while it
/// runs.
#[tokio::test]
async fn a_snapshot_built_from_an_older_position_does_not_replace_a_newer_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut leader, mut leader_sm) = open(&tmp.path().join("leader"), LogConfig::default()).unwrap();
    let entries: Vec<_> = (0..6).map(|i| normal(1, i, &[i as u8; 30])).collect();
    append(&mut leader, entries.clone()).await;
    apply(&mut leader_sm, entries.clone()).await;
    let snap = leader_sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let dir = tmp.path().join("follower");
    let (mut follower, mut follower_sm) = open(&dir, LogConfig::default()).unwrap();
    append(&mut follower, entries[..3].to_vec()).await;
    apply(&mut follower_sm, entries[..3].to_vec()).await;
    let mut builder = follower_sm.get_snapshot_builder().await;
    follower_sm.install_snapshot(&snap.meta, snap.snapshot.clone()).await.unwrap();
    follower.purge(entries[5].log_id).await.unwrap();
    lock(&follower_sm.sm).last_applied = Some(entries[2].log_id);
    let old = builder.build_snapshot().await.unwrap();
    lock(&follower_sm.sm).last_applied = Some(entries[5].log_id);
    // With entries purged, the builder builds no snapshot that ships batches (it could not
    // reach back to the log start): it offers the one that stands.
    assert_eq!(old.meta.last_log_id, Some(entries[5].log_id));
    assert_eq!(follower_sm.get_current_snapshot().await.unwrap().unwrap().meta, snap.meta);
    drop((follower, follower_sm, builder));
    let (mut follower, mut follower_sm) = open(&dir, LogConfig::default()).unwrap();
    assert_eq!(follower_sm.applied_state().await.unwrap().0, Some(entries[5].log_id));
    assert_eq!(follower.get_log_state().await.unwrap().last_purged_log_id, Some(entries[5].log_id));
}

/// Entries missing between the purge point and the first entry held are an error to a reader,
/// not a read that silently starts later; and the store takes only a log opened as Raft's.
#[tokio::test]
async fn a_read_of_entries_lost_above_the_purge_point_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    let (mut store, _sm) = open(&dir, LogConfig { segment_bytes: 300, ..LogConfig::default() }).unwrap();
    let entries: Vec<_> = (0..8).map(|i| normal(1, i, &[i as u8; 60])).collect();
    append(&mut store, entries.clone()).await;
    store.purge(entries[0].log_id).await.unwrap();
    assert_eq!(store.try_get_log_entries(1..3).await.unwrap().len(), 2);
    // Segments holding entries 1.. go while the purge point stays at 0 (as a lost segment would).
    store.log().drop_raft_segments_upto(4).unwrap();
    let (first, _) = store.log().raft_index_range().unwrap();
    assert!(first > 1);
    assert!(store.try_get_log_entries(1..8).await.is_err());
    assert_eq!(store.try_get_log_entries(first..8).await.unwrap().len() as u64, 8 - first);
    drop((store, _sm));
    let plain =
        PartitionLog::open_opts(&dir, LogConfig::default(), OpenOptions { replicated: true, ..Default::default() })
            .unwrap();
    assert!(open_log(Arc::new(plain)).is_err(), "not opened as a Raft log");
}

/// A follower whose log already holds the snapshot's last entry keeps its log, including the
/// entries after it, as openraft expects.
#[tokio::test]
async fn a_snapshot_the_log_already_holds_leaves_the_log_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut leader, mut leader_sm) = open(&tmp.path().join("leader"), LogConfig::default()).unwrap();
    let entries: Vec<_> = (0..6).map(|i| normal(1, i, &[i as u8; 20])).collect();
    append(&mut leader, entries.clone()).await;
    apply(&mut leader_sm, entries[..5].to_vec()).await;
    let snap = leader_sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    let (mut follower, mut follower_sm) = open(&tmp.path().join("follower"), LogConfig::default()).unwrap();
    append(&mut follower, entries.clone()).await;
    follower_sm.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
    assert_eq!(follower.log().raft_index_range(), Some((0, 5)), "entry 5, after the snapshot, is kept");
    assert_eq!(follower.log().high_watermark(), leader.log().raft_entry_span(4).unwrap().next_offset);
    assert_eq!(follower.try_get_log_entries(0..).await.unwrap(), leader.try_get_log_entries(0..).await.unwrap());
}

/// A follower's committed index can run ahead of what it has synced (openraft commits up to the
/// accepted log), and it is saved without fsync: after a crash it may name an entry the crash
/// took. Startup must not fail on it: the store answers the last entry it holds instead.
#[tokio::test]
async fn a_saved_commit_past_the_surviving_log_is_clamped_to_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    let (mut store, mut sm) = open(&dir, LogConfig::default()).unwrap();
    let entries: Vec<_> = (0..8).map(|i| normal(1, i, &[i as u8; 10])).collect();
    append(&mut store, entries[..6].to_vec()).await;
    append(&mut store, entries[6..].to_vec()).await;
    apply(&mut sm, entries.clone()).await;
    store.save_committed(Some(entries[7].log_id)).await.unwrap();
    drop((store, sm));
    lose_last_rows(&dir.join(format!("{:020}.raftindex", 0)), 2);

    let (mut store, mut sm) = open(&dir, LogConfig::default()).unwrap();
    assert_eq!(store.read_committed().await.unwrap(), Some(entries[5].log_id));
    let end = store.log().raft_entry_span(5).unwrap().next_offset;
    assert_eq!((store.log().high_watermark(), store.log().log_end_offset()), (end, end));
    let state = openraft::StorageHelper::new(&mut store, &mut sm).with_id(1).get_initial_state().await;
    let state = state.expect("startup after the crash");
    assert_eq!(state.local_committed(), Some(&entries[5].log_id));
    assert_eq!(sm.applied_state().await.unwrap().0, Some(entries[5].log_id), "re-applied up to it");
}

/// Commits are saved without fsync in their own file: one torn by a crash reads as no commit,
/// and the vote (fsynced, in `raft-state`) is never rewritten by a commit.
#[tokio::test]
async fn a_torn_commit_file_costs_the_commit_never_the_vote() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    let (mut store, _sm) = open(&dir, LogConfig::default()).unwrap();
    append(&mut store, vec![normal(1, 0, b"a"), normal(1, 1, b"b")]).await;
    let vote = VoteOf::<TypeConfig>::new(1, 3);
    store.save_vote(&vote).await.unwrap();
    let state_before = std::fs::read(dir.join("raft-state")).unwrap();
    let log_id = store.try_get_log_entries(1..2).await.unwrap()[0].log_id;
    store.save_committed(Some(log_id)).await.unwrap();
    assert_eq!(std::fs::read(dir.join("raft-state")).unwrap(), state_before, "a commit leaves the vote's file alone");
    drop(store);
    std::fs::write(dir.join("raft-committed"), b"").unwrap();
    let (mut store, _sm) = open(&dir, LogConfig::default()).unwrap();
    assert_eq!(store.read_vote().await.unwrap(), Some(vote));
    assert_eq!(store.read_committed().await.unwrap(), None);
    assert_eq!(store.log().high_watermark(), 0);
    assert_eq!(store.try_get_log_entries(0..).await.unwrap().len(), 2);
}

/// Every commit is saved in place: the same file (one inode, no rename per commit), and a
/// reopen reads the newest; a file written whole by an older version is taken over.
#[tokio::test]
async fn commits_are_saved_in_place() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    let (mut store, _sm) = open(&dir, LogConfig::default()).unwrap();
    let entries: Vec<_> = (0..20).map(|i| normal(1, i, b"v")).collect();
    append(&mut store, entries.clone()).await;
    // As an older version left it: the JSON alone.
    std::fs::write(dir.join(COMMITTED_FILE), serde_json::to_vec(&Some(entries[0].log_id)).unwrap()).unwrap();
    let inode = std::fs::metadata(dir.join(COMMITTED_FILE)).unwrap().ino();
    for e in &entries {
        store.save_committed(Some(e.log_id)).await.unwrap();
    }
    let meta = std::fs::metadata(dir.join(COMMITTED_FILE)).unwrap();
    assert_eq!((meta.ino(), meta.len()), (inode, COMMITTED_RECORD as u64));
    drop((store, _sm));
    let (mut store, _sm) = open(&dir, LogConfig::default()).unwrap();
    assert_eq!(store.read_committed().await.unwrap(), Some(entries[19].log_id));
}

/// `raft-applied` is rewritten every `APPLIED_SAVE_EVERY` entries (and on membership changes),
/// so a restart re-applies at most about that many; a torn file means re-applying everything.
#[tokio::test]
async fn the_applied_state_is_saved_every_so_many_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("t-0");
    let (mut store, mut sm) = open(&dir, LogConfig::default()).unwrap();
    let n = APPLIED_SAVE_EVERY + 10;
    let entries: Vec<_> = (0..n).map(|i| normal(1, i, b"v")).collect();
    append(&mut store, entries.clone()).await;
    for e in &entries {
        apply(&mut sm, vec![e.clone()]).await;
    }
    drop((store, sm));
    let (_, mut sm) = open(&dir, LogConfig::default()).unwrap();
    // Saved at the first apply (index 0), then once APPLIED_SAVE_EVERY later.
    assert_eq!(sm.applied_state().await.unwrap().0, Some(entries[APPLIED_SAVE_EVERY as usize].log_id));
    drop(sm);
    std::fs::write(dir.join("raft-applied"), b"{").unwrap();
    let (_, mut sm) = open(&dir, LogConfig::default()).unwrap();
    assert_eq!(sm.applied_state().await.unwrap().0, None);
}

/// DeleteRecords through Raft: applying a log-start entry moves the replica's log start. A
/// follower that already holds a snapshot's last entry keeps its log on install but counts the
/// entries before the point as applied without applying them, so it takes the log start from
/// the snapshot instead.
#[tokio::test]
async fn a_log_start_entry_moves_the_log_start_when_applied_or_covered_by_a_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut leader, mut leader_sm) = open(&tmp.path().join("leader"), LogConfig::default()).unwrap();
    let mut entries: Vec<_> = (0..3).map(|i| normal(1, i, b"v")).collect(); // offsets 0..=5
    entries.push(EntryOf::<TypeConfig> {
        log_id: LogIdOf::<TypeConfig>::new_term_index(1, 3),
        payload: EntryPayload::Normal(BatchData(Bytes::from(entry::log_start_batch(4)))),
    }); // offset 6
    entries.push(normal(1, 4, b"w")); // offsets 7..=8
    append(&mut leader, entries.clone()).await;
    assert_eq!(leader.log().log_start_offset(), 0, "appended is not applied");
    apply(&mut leader_sm, entries.clone()).await;
    assert_eq!(leader.log().log_start_offset(), 4);
    assert!(leader.log().read(3, 1, i64::MAX).is_err(), "below the log start");

    leader.log().request_snapshot_at(4);
    let snap = leader_sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id, Some(entries[4].log_id));
    let (mut follower, mut follower_sm) = open(&tmp.path().join("follower"), LogConfig::default()).unwrap();
    append(&mut follower, entries.clone()).await;
    follower_sm.install_snapshot(&snap.meta, snap.snapshot.clone()).await.unwrap();
    let log = follower.log();
    assert_eq!((log.log_start_offset(), log.log_end_offset(), log.high_watermark()), (4, 9, 9));
    assert_eq!(log.read(7, 1, i64::MAX).unwrap().records, leader.log().read(7, 1, i64::MAX).unwrap().records);
}
