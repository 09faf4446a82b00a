//! The process-wide group commit: waiters of many logs share rounds.
//! (Its own test binary, so no other test's syncs run in the same rounds.)

use fjord_storage::batch::{build_batch, KeyValue};
use fjord_storage::durability::{self, SyncStrategy};
use fjord_storage::{LogConfig, PartitionLog};

fn batch(tag: u8) -> Vec<u8> {
    let v = [tag; 100];
    let recs: Vec<KeyValue<'_>> = vec![(Some(&b"k"[..]), Some(&v[..]))];
    build_batch(0, 1, &recs)
}

async fn sync_sixteen_logs() -> (u64, Vec<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let logs: Vec<PartitionLog> = (0..16)
        .map(|i| PartitionLog::open(&dir.path().join(format!("t-{i}")), LogConfig::default()).unwrap())
        .collect();
    let ends: Vec<i64> =
        logs.iter().enumerate().map(|(i, l)| l.append(&batch(i as u8), 0, 0).unwrap().last_offset + 1).collect();
    let before = durability::rounds();
    let results = futures::future::join_all(logs.iter().zip(&ends).map(|(l, e)| l.sync(*e))).await;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    let rounds = durability::rounds() - before;
    // Durable now: asking again costs no round.
    for (l, e) in logs.iter().zip(&ends) {
        l.sync(*e).await.unwrap();
    }
    assert_eq!(durability::rounds() - before, rounds);
    (rounds, logs.iter().map(|l| l.fsync_count()).collect())
}

#[tokio::test]
async fn sixteen_logs_share_one_or_two_rounds() {
    for strategy in [SyncStrategy::Syncfs, SyncStrategy::Fdatasync] {
        durability::set_strategy(strategy);
        let (rounds, per_log) = sync_sixteen_logs().await;
        // Sixteen partitions' waiters, queued together: the committer takes
        // them in one round, or two if it woke for the first alone.
        assert!((1..=2).contains(&rounds), "{strategy:?}: {rounds} rounds for 16 logs");
        assert!(per_log.iter().all(|n| *n == 1), "{strategy:?}: rounds per log {per_log:?}");
    }
}
