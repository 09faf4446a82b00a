//! Restarts of a log: closed segments keep their indexes across any number
//! of reopens, a clean shutdown lets the next open read no batch, and a
//! crash (or a checkpoint that does not match the log) still recovers by
//! scanning.

use fjord_storage::batch::{build_batch_as, BatchHeader, Producer};
use fjord_storage::producer::AbortedTxn;
use fjord_storage::{CleanState, LogConfig, PartitionLog, RecoveryReport};

mod common;
use common::{read_all, small_config};

fn config() -> LogConfig {
    small_config()
}

fn produced(pid: i64, seq: i32, n: usize, transactional: bool) -> Vec<u8> {
    let vals: Vec<Vec<u8>> = (0..n).map(|i| vec![b'a' + (i % 26) as u8; 60]).collect();
    let recs: Vec<_> = vals.iter().map(|v| (Some(&b"k"[..]), Some(&v[..]))).collect();
    let producer = (pid >= 0).then_some(Producer { id: pid, epoch: 0, base_sequence: seq, transactional });
    build_batch_as(0, 1_000 + seq as i64, &recs, producer)
}

/// A log of several segments with committed and aborted transactions
/// between plain batches; returns its aborted transactions.
fn fill(log: &PartitionLog) -> Vec<AbortedTxn> {
    let mut seq = 0;
    for round in 0..30 {
        log.append(&produced(-1, round, 3, false), 0, 1_000).unwrap();
        log.append(&produced(7, seq, 4, true), 0, 1_000).unwrap();
        seq += 4;
        log.append_marker(7, 0, 0, round % 3 != 0, 0, 1_000).unwrap();
    }
    let aborted = log.aborted_transactions(0, i64::MAX);
    assert_eq!(aborted.len(), 10);
    assert!(log.segment_count() > 3, "the test needs closed segments");
    aborted
}

/// Every batch header a reader gets, in order.
fn headers(log: &PartitionLog) -> Vec<BatchHeader> {
    read_all(log, log.log_start_offset())
}

fn index_sizes(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with("index"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    v.sort();
    v
}

/// The "index entry N out of order" rebuild seen after restarts: loading a
/// closed segment's index grew its file by one zero row, which the next
/// start took for an entry out of order. Any number of reopens must leave
/// closed segments' indexes as they were and rebuild none.
#[test]
fn closed_segment_indexes_survive_repeated_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let (aborted, before) = {
        let log = PartitionLog::open(dir.path(), config()).unwrap();
        let aborted = fill(&log);
        (aborted, headers(&log))
    };
    let closed_indexes: Vec<(String, u64)> = {
        let active = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().to_string_lossy().strip_suffix(".log").map(str::to_string))
            .max()
            .unwrap();
        index_sizes(dir.path()).into_iter().filter(|(n, _)| !n.starts_with(&active)).collect()
    };
    assert!(closed_indexes.iter().any(|(n, len)| n.ends_with(".index") && *len > 8), "closed indexes with rows");
    for round in 0..3 {
        let log = PartitionLog::open(dir.path(), config()).unwrap();
        assert_eq!(log.recovery_report().indexes_rebuilt, 0, "reopen {round}: no closed index rebuilt");
        assert_eq!(log.recovery_report().segments_scanned, 1, "reopen {round}: only the active segment is scanned");
        assert_eq!(headers(&log).len(), before.len());
        assert_eq!(log.aborted_transactions(0, i64::MAX), aborted);
        let now: Vec<(String, u64)> =
            index_sizes(dir.path()).into_iter().filter(|(n, _)| closed_indexes.iter().any(|(c, _)| c == n)).collect();
        assert_eq!(now, closed_indexes, "reopen {round} changed closed indexes");
    }
}

/// A clean shutdown's state lets the next open trust the active segment:
/// nothing is scanned or replayed, and the log is the same, appends included.
#[test]
fn clean_restart_scans_nothing_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let (state, before, aborted, lso) = {
        let log = PartitionLog::open(dir.path(), config()).unwrap();
        let aborted = fill(&log);
        // An open transaction across the restart.
        log.append(&produced(8, 0, 2, true), 0, 1_000).unwrap();
        log.append(&produced(-1, 99, 2, false), 0, 1_000).unwrap();
        let state = log.shutdown_state(true).unwrap();
        (state, headers(&log), aborted, log.last_stable_offset())
    };
    let log = PartitionLog::open_with(dir.path(), config(), Some(&state)).unwrap();
    assert_eq!(log.recovery_report(), RecoveryReport::default(), "a clean restart reads no batch");
    assert_eq!(headers(&log), before);
    assert_eq!(log.aborted_transactions(0, i64::MAX), aborted);
    assert_eq!(log.last_stable_offset(), lso, "the open transaction is still open");
    assert_eq!(log.batch_with_max_timestamp().map(|b| BatchHeader::parse(&b).unwrap().base_offset), {
        let max = before.iter().map(|h| h.max_timestamp).max().unwrap();
        before.iter().find(|h| h.max_timestamp == max).map(|h| h.base_offset)
    });
    // Appends land right after, and a second reopen (a crash now) agrees.
    let end = log.log_end_offset();
    assert_eq!(log.append(&produced(-1, 200, 1, false), 0, 1_000).unwrap().base_offset, end);
    log.append_marker(8, 0, 0, false, 0, 1_000).unwrap();
    let after = headers(&log);
    drop(log);
    let log = PartitionLog::open(dir.path(), config()).unwrap();
    assert_eq!(log.recovery_report().segments_scanned, 1);
    assert_eq!(headers(&log), after);
    assert_eq!(log.aborted_transactions(0, i64::MAX).len(), aborted.len() + 1);
    assert_eq!(log.last_stable_offset(), log.log_end_offset());
}

/// Without a clean state (a crash), the torn tail is cut as always, even if
/// a clean shutdown happened before.
#[test]
fn crash_after_a_clean_restart_still_cuts_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let state = {
        let log = PartitionLog::open(dir.path(), config()).unwrap();
        fill(&log);
        log.shutdown_state(true).unwrap()
    };
    let end = {
        let log = PartitionLog::open_with(dir.path(), config(), Some(&state)).unwrap();
        log.log_end_offset()
    };
    // A torn write after the last batch.
    let active = dir.path().join(format!("{:020}.log", state.base_offset));
    let f = std::fs::OpenOptions::new().write(true).open(&active).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x5a; 40], state.size).unwrap();
    let log = PartitionLog::open(dir.path(), config()).unwrap();
    let r = log.recovery_report();
    assert_eq!((r.segments_scanned, r.torn_bytes > 0), (1, true), "{r:?}");
    assert_eq!(log.log_end_offset(), end);
}

/// A clean state that does not describe the log on disk (older than its
/// data, or naming too much) is not trusted: the log is scanned instead.
#[test]
fn stale_clean_state_falls_back_to_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let (stale, want) = {
        let log = PartitionLog::open(dir.path(), config()).unwrap();
        log.append(&produced(-1, 0, 3, false), 0, 1_000).unwrap();
        let stale = log.shutdown_state(true).unwrap();
        // Written after the checkpoint was taken: a checkpoint left behind.
        log.append(&produced(-1, 1, 3, false), 0, 1_000).unwrap();
        log.sync_now().unwrap();
        (stale, headers(&log))
    };
    let log = PartitionLog::open_with(dir.path(), config(), Some(&stale)).unwrap();
    assert_eq!(log.recovery_report().segments_scanned, 1, "data past the checkpoint: scanned");
    assert_eq!(headers(&log), want);
    let good = log.shutdown_state(true).unwrap();
    drop(log);
    let too_long = CleanState { size: good.size + 100, ..good };
    let log = PartitionLog::open_with(dir.path(), config(), Some(&too_long)).unwrap();
    assert_eq!(log.recovery_report().segments_scanned, 1, "a size past the data: scanned");
    assert_eq!(headers(&log), want);
    let wrong_end = CleanState { next_offset: good.next_offset + 1, ..log.shutdown_state(true).unwrap() };
    drop(log);
    let log = PartitionLog::open_with(dir.path(), config(), Some(&wrong_end)).unwrap();
    assert_eq!(log.recovery_report().segments_scanned, 1, "an end offset that is not the log's: scanned");
    assert_eq!(log.log_end_offset(), good.next_offset);
    let log2 = {
        let s = log.shutdown_state(true).unwrap();
        drop(log);
        PartitionLog::open_with(dir.path(), config(), Some(&s)).unwrap()
    };
    assert_eq!(log2.recovery_report().segments_scanned, 0, "and a matching one is trusted");
    assert_eq!(headers(&log2), want);
}

/// An empty log (as every internal topic's partition starts) is trusted too.
#[test]
fn clean_restart_of_an_empty_log() {
    let dir = tempfile::tempdir().unwrap();
    let state = PartitionLog::open(dir.path(), config()).unwrap().shutdown_state(true).unwrap();
    let log = PartitionLog::open_with(dir.path(), config(), Some(&state)).unwrap();
    assert_eq!(log.recovery_report(), RecoveryReport::default());
    assert_eq!(log.append(&produced(-1, 0, 1, false), 0, 1_000).unwrap().base_offset, 0);
}

/// Unmapping resident pages (the broker's RSS cap) takes index pages too;
/// rows written before and after stay, and the next open rebuilds nothing.
#[test]
fn released_index_pages_keep_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let log = PartitionLog::open(dir.path(), config()).unwrap();
        for i in 0..40 {
            log.append(&produced(-1, i, 2, false), 0, 1_000).unwrap();
            if i % 7 == 0 {
                log.release_pages().unwrap();
            }
        }
        let state = log.shutdown_state(false).unwrap();
        log.release_pages().unwrap();
        drop(log);
        let log = PartitionLog::open_with(dir.path(), config(), Some(&state)).unwrap();
        assert_eq!(log.recovery_report(), RecoveryReport::default(), "active index rows intact");
        headers(&log)
    };
    let log = PartitionLog::open(dir.path(), config()).unwrap();
    assert_eq!(log.recovery_report().indexes_rebuilt, 0);
    assert_eq!(headers(&log), before);
    assert_eq!(before.len(), 40);
}

/// Snapshots taken at a clean shutdown sit in the middle of the active
/// segment, so the aborts before them live only in that segment's
/// `.txnindex`: a scan after a later crash keeps them. The scan finds the
/// file as the appends left it and does not rewrite it (a rewrite is the
/// one moment a crash could empty it; a changed one is replaced by rename).
#[test]
fn aborts_before_a_shutdown_snapshot_survive_later_crashes() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let txn_index = |dir: &std::path::Path| {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "txnindex"))
            .collect();
        v.sort();
        v.pop().expect("the active segment has an aborted-transaction index")
    };
    let (state, aborted) = {
        let log = PartitionLog::open(dir.path(), config()).unwrap();
        let aborted = fill(&log);
        (log.shutdown_state(true).unwrap(), aborted)
    };
    {
        let log = PartitionLog::open_with(dir.path(), config(), Some(&state)).unwrap();
        log.append(&produced(9, 0, 2, true), 0, 1_000).unwrap();
        log.append_marker(9, 0, 0, false, 0, 1_000).unwrap();
        // Dropped without a shutdown state: a crash.
    }
    let first_inode = std::fs::metadata(txn_index(dir.path())).unwrap().ino();
    {
        let log = PartitionLog::open(dir.path(), config()).unwrap();
        assert_eq!(log.recovery_report().segments_scanned, 1);
        let now = log.aborted_transactions(0, i64::MAX);
        assert_eq!(now.len(), aborted.len() + 1);
        assert_eq!(&now[..aborted.len()], &aborted[..], "the aborts before the snapshot are kept");
    }
    let rebuilt = std::fs::metadata(txn_index(dir.path())).unwrap().ino();
    assert_eq!(rebuilt, first_inode, "an index that the scan agrees with is not rewritten");
    {
        let log = PartitionLog::open(dir.path(), config()).unwrap();
        assert_eq!(log.aborted_transactions(0, i64::MAX).len(), aborted.len() + 1);
    }
    assert_eq!(std::fs::metadata(txn_index(dir.path())).unwrap().ino(), rebuilt, "an unchanged index is not rewritten");
}

/// A batch appended after the clean state was taken (a request still
/// running at shutdown) whose log bytes a power loss then took, while its
/// time-index row reached the disk: the clean open must not trust the row.
#[test]
fn time_index_rows_past_the_clean_state_are_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let (state, max_before) = {
        let log = PartitionLog::open(dir.path(), config()).unwrap();
        fill(&log);
        let state = log.shutdown_state(true).unwrap();
        let max_before = log.batch_with_max_timestamp().map(|b| BatchHeader::parse(&b).unwrap().base_offset);
        // Late: a big batch far in the future, which gets a time-index row.
        let vals: Vec<Vec<u8>> = (0..8).map(|_| vec![b'z'; 100]).collect();
        let recs: Vec<_> = vals.iter().map(|v| (Some(&b"k"[..]), Some(&v[..]))).collect();
        log.append(&fjord_storage::batch::build_batch_as(0, 9_999_999, &recs, None), 0, 1_000).unwrap();
        log.sync_now().unwrap();
        (state, max_before)
    };
    // The power loss: the log file is back to what the state covers.
    let active = dir.path().join(format!("{:020}.log", state.base_offset));
    std::fs::OpenOptions::new().write(true).open(&active).unwrap().set_len(state.size).unwrap();
    let log = PartitionLog::open_with(dir.path(), config(), Some(&state)).unwrap();
    assert_eq!(log.log_end_offset(), state.next_offset);
    assert_eq!(log.batch_with_max_timestamp().map(|b| BatchHeader::parse(&b).unwrap().base_offset), max_before);
    assert!(log.batch_by_timestamp(9_999_999, i64::MAX).is_none(), "no batch holds the lost timestamp");
    // Appends after the restart index normally, and a crash-scan agrees.
    log.append(&produced(-1, 500, 2, false), 0, 1_000).unwrap();
    let ts_of = |log: &PartitionLog| {
        log.batch_by_timestamp(1_500, i64::MAX).map(|b| BatchHeader::parse(&b).unwrap().base_offset)
    };
    let found = ts_of(&log);
    assert_eq!(found, Some(state.next_offset));
    drop(log);
    let log = PartitionLog::open(dir.path(), config()).unwrap();
    assert_eq!(ts_of(&log), found);
}
