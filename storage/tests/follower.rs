//! Follower append: a replica fed the leader's stored batches keeps their
//! offsets and epochs and ends in the leader's state; batches that do not
//! follow its log end, or are corrupt, are refused whole.

// Shared with the other log tests.
mod common;

use common::{read_batches, small_config};
use fjord_storage::batch::{build_batch_as, patch, BatchHeader, Producer, TimestampType};
use fjord_storage::{LogConfig, LogError, PartitionLog, ProduceVerdict};

fn produced(pid: i64, epoch: i16, seq: i32, n: usize, transactional: bool) -> Vec<u8> {
    let vals: Vec<Vec<u8>> = (0..n).map(|i| vec![b'a' + (i % 26) as u8; 60]).collect();
    let recs: Vec<_> = vals.iter().map(|v| (Some(&b"k"[..]), Some(&v[..]))).collect();
    let producer = (pid >= 0).then_some(Producer { id: pid, epoch, base_sequence: seq, transactional });
    build_batch_as(0, 1_000, &recs, producer)
}

/// The leader's batches one at a time (or `per_call` at a time), as
/// replication would ship them.
fn leader_batches(log: &PartitionLog) -> Vec<Vec<u8>> {
    read_batches(log, log.log_start_offset())
}

/// Every stored byte of `log` from its start, as consumers read it.
fn stored_bytes(log: &PartitionLog) -> Vec<u8> {
    leader_batches(log).concat()
}

/// A leader history with every kind of batch: plain, idempotent,
/// transactional (one aborted, one left open), a coordinator's offset
/// commit, markers, and leader epochs that change along the way.
fn write_history(leader: &PartitionLog) {
    leader.append(&produced(-1, -1, -1, 3, false), 0, 1_000).unwrap();
    leader.append(&produced(7, 0, 0, 2, false), 0, 1_000).unwrap();
    leader.append(&produced(10, 0, 0, 4, true), 1, 1_000).unwrap();
    let mut multi = produced(-1, -1, -1, 1, false);
    multi.extend(produced(-1, -1, -1, 2, false));
    leader.append(&multi, 1, 1_000).unwrap();
    leader.append_marker(10, 0, 0, false, 1, 1_100).unwrap();
    leader.append(&produced(11, 0, 0, 1, true), 2, 1_200).unwrap();
    leader.append_from_coordinator(&produced(12, 3, -1, 1, true), 2, 1_200).unwrap();
    leader.append(&produced(7, 0, 2, 3, false), 4, 1_300).unwrap();
    leader.append(&produced(13, 0, 0, 2, true), 4, 1_300).unwrap();
    leader.append_marker(13, 0, 0, true, 4, 1_400).unwrap();
    for i in 0..12 {
        // Enough to roll the small segments a few times.
        leader.append(&produced(-1, -1, -1, 1 + i % 3, false), 4, 1_500).unwrap();
    }
}

/// What a replica's state is made of, compared between leader and follower.
fn assert_same_state(leader: &PartitionLog, follower: &PartitionLog) {
    assert_eq!(stored_bytes(follower), stored_bytes(leader), "stored batches differ");
    let end = leader.log_end_offset();
    assert_eq!(follower.log_end_offset(), end);
    assert_eq!(follower.latest_epoch(), leader.latest_epoch());
    for epoch in 0..6 {
        assert_eq!(follower.end_offset_for_epoch(epoch), leader.end_offset_for_epoch(epoch), "epoch {epoch}");
    }
    assert_eq!(follower.aborted_transactions(0, end), leader.aborted_transactions(0, end));
    assert_eq!(follower.open_transactions(), leader.open_transactions());
    assert_eq!(follower.last_stable_offset(), leader.last_stable_offset());
    // Producer state: a retry is recognised with the same offsets, the next
    // sequence is accepted, a gap and a fenced epoch are refused alike.
    for (batch, what) in [
        (produced(7, 0, 2, 3, false), "retry"),
        (produced(7, 0, 5, 1, false), "next"),
        (produced(7, 0, 9, 1, false), "gap"),
        (produced(11, -1, 1, 1, true), "fenced"),
    ] {
        let verdict = |log: &PartitionLog| match log.check_produce(&batch, 1_000) {
            Ok(ProduceVerdict::Duplicate(info)) => format!("duplicate {} {}", info.base_offset, info.last_offset),
            Ok(ProduceVerdict::Append(_)) => "append".to_string(),
            Err(e) => format!("{e}"),
        };
        assert_eq!(verdict(follower), verdict(leader), "{what}");
    }
}

#[test]
fn a_follower_fed_the_leaders_batches_ends_in_the_leaders_state() {
    for timestamp_type in [TimestampType::CreateTime, TimestampType::LogAppendTime] {
        let cfg = LogConfig { timestamp_type, segment_bytes: 1024, ..small_config() };
        let dir = tempfile::tempdir().unwrap();
        let leader = PartitionLog::open(&dir.path().join("leader"), cfg.clone()).unwrap();
        let follower = PartitionLog::open(&dir.path().join("follower"), cfg.clone()).unwrap();
        write_history(&leader);
        assert!(leader.segment_count() > 2, "the history rolls segments");
        assert!(!leader.aborted_transactions(0, leader.log_end_offset()).is_empty());
        assert!(!leader.open_transactions().is_empty());
        let epochs = stored_epochs(&leader);
        assert!(epochs.windows(2).all(|w| w[0].1 <= w[1].1), "stored epochs go backwards: {epochs:?}");
        let batches = leader_batches(&leader);
        // One batch per call, then the rest in one call of several batches.
        let (first, rest) = batches.split_at(batches.len() / 2);
        for b in first {
            let h = BatchHeader::parse(b).unwrap();
            let info = follower.append_entry(b, 2_000).unwrap();
            assert_eq!((info.base_offset, info.last_offset), (h.base_offset, h.last_offset()));
        }
        let rest: Vec<u8> = rest.concat();
        let info = follower.append_entry(&rest, 2_000).unwrap();
        assert_eq!(info.last_offset + 1, leader.log_end_offset());
        assert_same_state(&leader, &follower);
        // The follower's own files rebuild the same state.
        drop(follower);
        let follower = PartitionLog::open(&dir.path().join("follower"), cfg).unwrap();
        assert_same_state(&leader, &follower);
    }
}

#[test]
fn a_batch_that_does_not_start_at_the_log_end_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let leader = PartitionLog::open(&dir.path().join("leader"), LogConfig::default()).unwrap();
    let follower = PartitionLog::open(&dir.path().join("follower"), LogConfig::default()).unwrap();
    for _ in 0..3 {
        leader.append(&produced(-1, -1, -1, 2, false), 0, 1_000).unwrap();
    }
    let b = leader_batches(&leader);
    // Ahead of the log end (a gap).
    assert!(matches!(
        follower.append_entry(&b[1], 1_000),
        Err(LogError::UnexpectedAppendOffset { offset: 2, log_end: 0 })
    ));
    assert_eq!((follower.log_end_offset(), follower.size_bytes()), (0, 0));
    let info = follower.append_entry(&b[0], 1_000).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (0, 1));
    // Behind it (a repeat), never moved to fit.
    assert!(matches!(
        follower.append_entry(&b[0], 1_000),
        Err(LogError::UnexpectedAppendOffset { offset: 0, log_end: 2 })
    ));
    // A gap inside one call refuses the whole call.
    let gapped = [b[1].clone(), b[1].clone()].concat();
    assert!(matches!(
        follower.append_entry(&gapped, 1_000),
        Err(LogError::UnexpectedAppendOffset { offset: 2, log_end: 4 })
    ));
    assert_eq!(follower.log_end_offset(), 2);
    assert_eq!(stored_bytes(&follower), b[0]);
    // The leader's epoch is kept as it gave it, not the follower's latest.
    let mut newer = b[1].clone();
    patch(&mut newer, 2, 5, None);
    follower.append_entry(&newer, 1_000).unwrap();
    assert_eq!((follower.log_end_offset(), follower.latest_epoch()), (4, Some(5)));
    assert_eq!(follower.end_offset_for_epoch(0), Some((0, 2)));
}

#[test]
fn a_corrupt_batch_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let leader = PartitionLog::open(&dir.path().join("leader"), LogConfig::default()).unwrap();
    let follower = PartitionLog::open(&dir.path().join("follower"), LogConfig::default()).unwrap();
    leader.append(&produced(-1, -1, -1, 2, false), 0, 1_000).unwrap();
    leader.append(&produced(7, 0, 0, 2, false), 0, 1_000).unwrap();
    let b = leader_batches(&leader);
    let mut flipped = b[1].clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    let short = &b[1][..b[1].len() - 3];
    for (bad, what) in [([b[0].clone(), flipped].concat(), "CRC"), ([&b[0][..], short].concat(), "truncated")] {
        assert!(matches!(follower.append_entry(&bad, 1_000), Err(LogError::Corrupt(_))), "{what}");
        assert_eq!((follower.log_end_offset(), follower.size_bytes()), (0, 0), "{what}");
        assert!(follower.open_transactions().is_empty());
    }
    // Producer state was not touched either: the producer is unknown.
    assert!(matches!(follower.check_produce(&produced(7, 0, 2, 1, false), 1_000), Err(LogError::UnknownProducerId(7))));
}

#[test]
fn check_produce_writes_nothing_and_append_checked_writes_what_it_checked() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), LogConfig::default()).unwrap();
    let first = produced(7, 0, 0, 2, false);
    let ProduceVerdict::Append(checked) = log.check_produce(&first, 1_000).unwrap() else {
        panic!("a new producer's first batch is appended");
    };
    assert_eq!(checked.batches().len(), 1);
    assert_eq!(log.log_end_offset(), 0, "checking writes nothing");
    let info = log.append_checked(checked, 3, 1_000).unwrap();
    assert_eq!((info.base_offset, info.last_offset, info.duplicate), (0, 1, false));
    assert_eq!(log.latest_epoch(), Some(3));
    let ProduceVerdict::Duplicate(dup) = log.check_produce(&first, 1_000).unwrap() else {
        panic!("a retry is a duplicate");
    };
    assert_eq!((dup.base_offset, dup.last_offset, dup.duplicate), (0, 1, true));
    // A checked batch whose twin got in first is answered as a duplicate,
    // not written twice.
    let again = produced(7, 0, 2, 1, false);
    let (ProduceVerdict::Append(a), ProduceVerdict::Append(b)) =
        (log.check_produce(&again, 1_000).unwrap(), log.check_produce(&again, 1_000).unwrap())
    else {
        panic!("the next sequence is appended");
    };
    assert!(!log.append_checked(a, 3, 1_000).unwrap().duplicate);
    assert!(log.append_checked(b, 3, 1_000).unwrap().duplicate);
    assert_eq!(log.log_end_offset(), 3);
}

/// The partitionLeaderEpoch of every stored batch, in offset order.
fn stored_epochs(log: &PartitionLog) -> Vec<(i64, i32, bool)> {
    leader_batches(log)
        .iter()
        .map(|b| BatchHeader::parse(b).unwrap())
        .map(|h| (h.base_offset, h.partition_leader_epoch, h.is_control()))
        .collect()
}

#[test]
fn a_transaction_marker_carries_the_leaders_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let leader = PartitionLog::open(&dir.path().join("leader"), small_config()).unwrap();
    let follower = PartitionLog::open(&dir.path().join("follower"), small_config()).unwrap();
    leader.append(&produced(-1, -1, -1, 2, false), 0, 1_000).unwrap(); // 0..=1
    leader.append(&produced(20, 0, 0, 3, true), 5, 1_000).unwrap(); // 2..=4
                                                                    // What the broker passes on a single node: the log's latest epoch.
    let epoch = leader.latest_epoch().unwrap_or(0);
    assert_eq!(epoch, 5);
    let marker = leader.append_marker(20, 0, 0, true, epoch, 1_100).unwrap();
    assert_eq!(marker, 5);
    leader.append(&produced(-1, -1, -1, 1, false), 5, 1_200).unwrap(); // 6
    let epochs = stored_epochs(&leader);
    assert_eq!(epochs, vec![(0, 0, false), (2, 5, false), (5, 5, true), (6, 5, false)]);
    assert!(epochs.windows(2).all(|w| w[0].1 <= w[1].1), "stored epochs never go backwards: {epochs:?}");
    // The cache: epoch 0 ends where 5 starts, 5 runs to the log end.
    assert_eq!(leader.end_offset_for_epoch(0), Some((0, 2)));
    assert_eq!(leader.end_offset_for_epoch(5), Some((5, 7)));
    assert_eq!(leader.last_stable_offset(), 7);
    // A follower fed the leader's bytes ends in the same state, marker epoch included.
    for b in leader_batches(&leader) {
        follower.append_entry(&b, 2_000).unwrap();
    }
    assert_eq!(stored_epochs(&follower), epochs);
    assert_same_state(&leader, &follower);
}
