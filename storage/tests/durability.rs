//! Group commit: waiters of many logs share rounds of the committer their
//! logs were opened with; a committer's strategy and counts are its own.

use fjord_storage::batch::{build_batch, KeyValue};
use fjord_storage::durability::{GroupCommit, SyncStrategy};
use fjord_storage::{LogConfig, OpenOptions, PartitionLog};

fn batch(tag: u8) -> Vec<u8> {
    let v = [tag; 100];
    let recs: Vec<KeyValue<'_>> = vec![(Some(&b"k"[..]), Some(&v[..]))];
    build_batch(0, 1, &recs)
}

fn open_logs(dir: &std::path::Path, n: usize, commit: &GroupCommit) -> Vec<PartitionLog> {
    (0..n)
        .map(|i| {
            let opts = OpenOptions { group_commit: Some(commit.clone()), ..OpenOptions::default() };
            PartitionLog::open_opts(&dir.join(format!("t-{i}")), LogConfig::default(), opts).unwrap()
        })
        .collect()
}

async fn sync_sixteen_logs(commit: &GroupCommit) -> (u64, Vec<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let logs = open_logs(dir.path(), 16, commit);
    let ends: Vec<i64> =
        logs.iter().enumerate().map(|(i, l)| l.append(&batch(i as u8), 0, 0).unwrap().last_offset + 1).collect();
    let before = commit.rounds();
    let results = futures::future::join_all(logs.iter().zip(&ends).map(|(l, e)| l.sync(*e))).await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let rounds = commit.rounds() - before;
    // Durable now: asking again costs no round.
    for (l, e) in logs.iter().zip(&ends) {
        l.sync(*e).await.unwrap();
    }
    assert_eq!(commit.rounds() - before, rounds);
    (rounds, logs.iter().map(|l| l.fsync_count()).collect())
}

#[tokio::test]
async fn sixteen_logs_share_one_or_two_rounds() {
    for strategy in [SyncStrategy::Syncfs, SyncStrategy::Fdatasync] {
        let commit = GroupCommit::new(strategy);
        assert_eq!(commit.strategy(), strategy);
        let (rounds, per_log) = sync_sixteen_logs(&commit).await;
        // Sixteen partitions' waiters, queued together: the committer takes
        // them in one round, or two if it woke for the first alone.
        assert!((1..=2).contains(&rounds), "{strategy:?}: {rounds} rounds for 16 logs");
        assert!(per_log.iter().all(|n| *n == 1), "{strategy:?}: rounds per log {per_log:?}");
    }
}

#[tokio::test]
async fn each_log_syncs_through_the_committer_it_was_opened_with() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (GroupCommit::new(SyncStrategy::Syncfs), GroupCommit::new(SyncStrategy::Fdatasync));
    let log_a = open_logs(&dir.path().join("a"), 1, &a).pop().unwrap();
    let log_b = open_logs(&dir.path().join("b"), 1, &b).pop().unwrap();
    let end = log_a.append(&batch(1), 0, 0).unwrap().last_offset + 1;
    log_a.sync(end).await.unwrap();
    assert_eq!((a.rounds(), b.rounds()), (1, 0), "only a's committer ran");
    let end = log_b.append(&batch(2), 0, 0).unwrap().last_offset + 1;
    log_b.sync(end).await.unwrap();
    assert_eq!((a.rounds(), b.rounds()), (1, 1));
    assert_eq!((log_a.flushed_offset(), log_b.flushed_offset()), (1, 1));
}
