//! A replicated log as a Raft log: entries found by index after rolls and restarts, byte-capped
//! reads, truncation by index, purges of whole segments, and the crash rule that a tail no
//! `.raftindex` row covers is cut on open.

use fjord_storage::batch::{self, build_batch, patch};
use fjord_storage::raftindex::{rows_written, HEADER, ROW};
use fjord_storage::{LogConfig, OpenOptions, PartitionLog};

fn open(dir: &std::path::Path, segment_bytes: u64) -> PartitionLog {
    let config = LogConfig { segment_bytes, ..LogConfig::default() };
    PartitionLog::open_opts(dir, config, OpenOptions { replicated: true, ..OpenOptions::default() }).unwrap()
}

/// Entry `i`: `records` records stamped at the log end with epoch `term`.
fn entry(log: &PartitionLog, i: u64, term: i32, records: usize) -> Vec<u8> {
    let value = [i as u8; 40];
    let kvs: Vec<_> = (0..records).map(|_| (None, Some(&value[..]))).collect();
    let mut b = build_batch(0, 1000 + i as i64, &kvs);
    patch(&mut b, log.log_end_offset(), term, None);
    b
}

fn append(log: &PartitionLog, from: u64, to: u64, term: i32) {
    for i in from..to {
        let e = entry(log, i, term, 1 + (i % 3) as usize);
        log.append_raft_entry(&e, i, 0).unwrap();
    }
}

#[tokio::test]
async fn entries_are_found_by_index_and_offset_across_rolls_and_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path(), 400);
    append(&log, 0, 20, 1);
    assert!(log.segment_count() > 3, "small segments roll");
    let end = log.log_end_offset();
    log.sync(end).await.unwrap();
    let check = |log: &PartitionLog| {
        assert_eq!(log.raft_index_range(), Some((0, 19)));
        let all = log.raft_entries(0, 100, usize::MAX).unwrap();
        assert_eq!(all.len(), 20);
        let mut next = 0;
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.span.index, i as u64);
            assert_eq!(e.span.base_offset, next, "entries are contiguous");
            let h = batch::validate(&e.data).unwrap();
            assert_eq!((h.base_offset, h.last_offset() + 1, e.term), (next, e.span.next_offset, 1));
            next = e.span.next_offset;
            for o in e.span.base_offset..e.span.next_offset {
                assert_eq!(log.raft_index_for_offset(o), Some(i as u64));
            }
        }
        assert_eq!(next, log.log_end_offset());
        assert_eq!(log.raft_index_for_offset(next), None);
    };
    check(&log);
    drop(log);
    check(&open(tmp.path(), 400));
}

#[test]
fn an_index_must_follow_the_last_and_offsets_must_be_the_log_end() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path(), 1 << 20);
    // An empty Raft log may start at any index (after a snapshot).
    append(&log, 5, 7, 2);
    let e = entry(&log, 9, 2, 1);
    assert!(log.append_raft_entry(&e, 9, 0).is_err(), "a gap");
    let mut e = entry(&log, 7, 2, 1);
    patch(&mut e, log.log_end_offset() + 1, 2, None);
    assert!(log.append_raft_entry(&e, 7, 0).is_err(), "not at the log end");
    assert_eq!(log.raft_index_range(), Some((5, 6)));
    // A read from below the first entry is refused rather than silently starting later.
    let err = log.raft_entries(0, 10, usize::MAX).unwrap_err();
    assert!(matches!(&err, fjord_storage::LogError::Io(e) if e.kind() == std::io::ErrorKind::NotFound), "{err}");
    let held: Vec<u64> = log.raft_entries(5, 10, usize::MAX).unwrap().iter().map(|e| e.span.index).collect();
    assert_eq!(held, vec![5, 6]);
    assert_eq!((log.raft_entry(4).unwrap().is_none(), log.raft_entry(6).unwrap().unwrap().span.index), (true, 6));
}

#[test]
fn reads_stop_at_the_byte_budget_but_return_at_least_one_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path(), 1 << 20);
    append(&log, 0, 10, 1);
    let sizes: Vec<usize> = log.raft_entries(0, 10, usize::MAX).unwrap().iter().map(|e| e.data.len()).collect();
    assert_eq!(log.raft_entries(0, 10, 1).unwrap().len(), 1);
    let budget = sizes[2] + sizes[3] + sizes[4];
    let got = log.raft_entries(2, 10, budget).unwrap();
    assert_eq!(got.iter().map(|e| e.span.index).collect::<Vec<_>>(), vec![2, 3, 4]);
    assert_eq!(log.raft_entries(2, 10, budget - 1).unwrap().len(), 2);
    assert_eq!(log.raft_entries(8, 20, usize::MAX).unwrap().len(), 2, "stops at the last entry");
}

#[tokio::test]
async fn truncation_by_index_cuts_batches_and_rows_and_appends_continue() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path(), 400);
    append(&log, 0, 20, 1);
    let keep_end = log.raft_entry_span(11).unwrap().next_offset;
    log.truncate_raft_after(Some(11)).unwrap();
    assert_eq!(log.log_end_offset(), keep_end);
    assert_eq!(log.raft_index_range(), Some((0, 11)));
    append(&log, 12, 15, 3);
    assert_eq!(log.raft_entries(12, 13, usize::MAX).unwrap()[0].term, 3);
    assert_eq!(log.epoch_for_offset(keep_end), Some(3));
    log.truncate_raft_after(Some(40)).unwrap();
    assert_eq!(log.raft_index_range(), Some((0, 14)), "past the end: nothing");
    log.sync(log.log_end_offset()).await.unwrap();
    drop(log);
    let log = open(tmp.path(), 400);
    assert_eq!(log.raft_index_range(), Some((0, 14)));
    log.truncate_raft_after(None).unwrap();
    assert_eq!((log.raft_index_range(), log.log_end_offset()), (None, 0));
    // An empty Raft log starts again at whatever index comes.
    append(&log, 3, 5, 4);
    assert_eq!(log.raft_index_range(), Some((3, 4)));
    assert_eq!(log.raft_entry_span(3).unwrap().base_offset, 0);
}

#[tokio::test]
async fn an_unflushed_tail_is_cut_on_open_and_the_rest_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path(), 1 << 20);
    append(&log, 0, 5, 1);
    let flushed = log.log_end_offset();
    log.sync(flushed).await.unwrap();
    append(&log, 5, 8, 1);
    let after = log.log_end_offset();
    drop(log);
    // A crash lost the rows of entries 5..8 (never synced) but the data survived.
    let side = tmp.path().join(format!("{:020}.raftindex", 0));
    let data = std::fs::read(&side).unwrap();
    let rows = rows_written(&data);
    std::fs::write(&side, &data[..HEADER + (rows - 3) * ROW]).unwrap();
    let log = open(tmp.path(), 1 << 20);
    assert!(after > flushed);
    assert_eq!(log.log_end_offset(), flushed, "the uncovered tail is gone");
    assert_eq!(log.raft_index_range(), Some((0, 4)));
    append(&log, 5, 6, 2);
    assert_eq!(log.raft_entry_span(5).unwrap().base_offset, flushed);
    drop(log);
    // The other way round: rows survived, the segment's tail did not (its data cut mid-entry).
    let seg = tmp.path().join(format!("{:020}.log", 0));
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    let span = open(tmp.path(), 1 << 20).raft_entry_span(5).unwrap();
    f.set_len(span.end_pos - 1).unwrap();
    drop(f);
    let log = open(tmp.path(), 1 << 20);
    assert_eq!((log.log_end_offset(), log.raft_index_range()), (flushed, Some((0, 4))));
}

#[test]
fn purging_drops_only_whole_segments_at_or_below_the_point() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path(), 400);
    append(&log, 0, 20, 1);
    log.set_high_watermark(log.log_end_offset());
    let segments = log.segment_count();
    let span = log.raft_entry_span(9).unwrap();
    let start = log.drop_raft_segments_upto(9).unwrap();
    assert!(log.segment_count() < segments);
    assert!(start <= span.next_offset, "entry 10 and after are kept");
    let (first, last) = log.raft_index_range().unwrap();
    assert!(first <= 10 && last == 19, "{first}..{last}");
    assert_eq!(log.log_start_offset(), start);
    // Past the last entry everything goes and the log continues at its end.
    let end = log.log_end_offset();
    log.drop_raft_segments_upto(100).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset(), log.raft_index_range()), (end, end, None));
    append(&log, 101, 102, 2);
    assert_eq!(log.raft_entry_span(101).unwrap().base_offset, end);
}

#[test]
fn a_reset_restarts_the_log_empty_at_an_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path(), 400);
    append(&log, 0, 10, 1);
    let producers = log.producer_state();
    log.reset_to(500, &producers).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset(), log.high_watermark()), (500, 500, 500));
    assert_eq!(log.raft_index_range(), None);
    append(&log, 40, 42, 5);
    drop(log);
    let log = open(tmp.path(), 400);
    assert_eq!((log.log_start_offset(), log.raft_index_range()), (500, Some((40, 41))));
    assert!(log.reset_to(600, b"not json").is_err());
}

#[test]
fn compaction_rewrites_raft_entries_only_once_applied_and_keeps_their_spans() {
    let tmp = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes: 300, compact: true, ..LogConfig::default() };
    let log = PartitionLog::open_opts(tmp.path(), config, OpenOptions { replicated: true, ..OpenOptions::default() })
        .unwrap();
    // Every record has the same key: a cleaner would keep only the last.
    for i in 0..12u64 {
        let mut b = build_batch(0, 1000, &[(Some(b"same-key"), Some(&[i as u8; 30]))]);
        patch(&mut b, log.log_end_offset(), 1, None);
        log.append_raft_entry(&b, i, 0).unwrap();
    }
    assert!(log.segment_count() > 2);
    let before = log.raft_entries(0, 12, usize::MAX).unwrap();
    // Nothing applied yet (the HW at the start): every entry may still be truncated.
    assert_eq!(log.compact(i64::MAX / 2).unwrap().segments_rewritten, 0);
    let after = log.raft_entries(0, 12, usize::MAX).unwrap();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!((b.span, &b.data), (a.span, &a.data));
    }
    // Applied: the closed segments are cleaned, and every entry keeps its index and offsets,
    // read back as a filler where its record went.
    log.set_high_watermark(log.log_end_offset());
    assert!(log.compact(i64::MAX / 2).unwrap().segments_rewritten > 0);
    let after = log.raft_entries(0, 12, usize::MAX).unwrap();
    assert_eq!(before.len(), after.len());
    let mut fillers = 0;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            (b.span.index, b.span.base_offset, b.span.next_offset, b.term),
            (a.span.index, a.span.base_offset, a.span.next_offset, a.term)
        );
        if a.data != b.data {
            assert_eq!(batch::control_record(&a.data).map(|(t, _)| t), Some(batch::CONTROL_COMPACTED));
            fillers += 1;
        }
    }
    assert!(fillers > 0);
}

#[test]
fn once_it_holds_raft_entries_a_log_takes_no_other_write() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path(), 1 << 20);
    append(&log, 0, 2, 1);
    let end = log.log_end_offset();
    assert!(log.append(&build_batch(0, 1, &[(None, Some(b"v"))]), 1, 1).is_err());
    assert!(log.append_marker(7, 0, 0, true, 1, 1).is_err());
    let mut b = build_batch(0, 1, &[(None, Some(b"v"))]);
    patch(&mut b, end, 1, None);
    assert!(log.append_entry(&b, 1).is_err());
    assert_eq!((log.log_end_offset(), log.raft_index_range()), (end, Some((0, 1))));
}

#[test]
fn producer_state_can_be_taken_at_an_earlier_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path(), 400);
    let producer = |seq: i32| batch::Producer { id: 9, epoch: 0, base_sequence: seq, transactional: false };
    let mut offsets = Vec::new();
    for i in 0..8u64 {
        let mut b = batch::build_batch_as(0, 1, &[(None, Some(&[1u8; 60]))], Some(producer(i as i32)));
        offsets.push(log.log_end_offset());
        patch(&mut b, log.log_end_offset(), 1, None);
        log.append_raft_entry(&b, i, 0).unwrap();
    }
    assert!(log.segment_count() > 2, "producer snapshots were taken at rolls");
    assert_eq!(log.producer_state_at(log.log_end_offset()).unwrap(), log.producer_state());
    // As of offset of batch 5: batches 0..5 are known, batch 5 is the next sequence.
    let at = offsets[5];
    let states = fjord_storage::producer::ProducerStates::from_json(&log.producer_state_at(at).unwrap()).unwrap();
    let next = batch::build_batch_as(0, 1, &[(None, Some(b"x"))], Some(producer(5)));
    let h = batch::validate(&next).unwrap();
    assert!(matches!(states.check(&h), Ok(fjord_storage::producer::SequenceCheck::Append)), "{:?}", states.check(&h));
    let retry = batch::build_batch_as(0, 1, &[(None, Some(b"x"))], Some(producer(4)));
    let h = batch::validate(&retry).unwrap();
    assert!(matches!(states.check(&h), Ok(fjord_storage::producer::SequenceCheck::Duplicate { .. })));
}

#[tokio::test]
async fn a_snapshot_prefix_restores_the_same_batches_at_the_same_offsets() {
    let tmp = tempfile::tempdir().unwrap();
    let leader = open(&tmp.path().join("leader"), 400);
    append(&leader, 0, 12, 1);
    leader.set_high_watermark(leader.log_end_offset());
    let upto = leader.raft_entry_span(9).unwrap().next_offset;
    let prefix = leader.prefix_before(upto, usize::MAX);
    let theirs = |log: &PartitionLog| records_below(log, upto);
    assert!(theirs(&leader).len() >= prefix.len() / 2 && !prefix.is_empty());

    let dir = tmp.path().join("follower");
    let follower = open(&dir, 400);
    append(&follower, 0, 3, 1);
    follower.restore_prefix(&prefix, 0, upto, &leader.producer_state_at(upto).unwrap()).unwrap();
    assert_eq!((follower.log_start_offset(), follower.log_end_offset(), follower.high_watermark()), (0, upto, upto));
    assert_eq!(records_below(&follower, upto), theirs(&leader));
    assert_eq!(follower.raft_index_range(), None);
    // Raft entries continue after the prefix, and a restart keeps both.
    append(&follower, 10, 12, 2);
    follower.sync(follower.log_end_offset()).await.unwrap();
    drop(follower);
    let follower = open(&dir, 400);
    assert_eq!(follower.log_end_offset(), leader.log_end_offset());
    assert_eq!(follower.raft_index_range(), Some((10, 11)));
    assert_eq!(follower.producer_state(), leader.producer_state_at(follower.log_end_offset()).unwrap());

    // A byte cap keeps the newest batches: the follower's log starts later, still ending there.
    let small = leader.prefix_before(upto, 200);
    assert!(!small.is_empty() && small.len() <= 200 && small.len() < prefix.len());
    let capped = open(&tmp.path().join("capped"), 400);
    capped.restore_prefix(&small, 0, upto, &leader.producer_state_at(upto).unwrap()).unwrap();
    assert!(capped.log_start_offset() > 0);
    assert_eq!(capped.log_end_offset(), upto);
    // A prefix that does not end where the snapshot says is refused, and so is one with a gap,
    // before anything is deleted.
    assert!(capped.restore_prefix(&prefix, 0, upto + 1, &leader.producer_state()).is_err());
    let batches = batch::split_stored(&prefix).unwrap();
    assert!(batches.len() > 2);
    let second = batches[1].0;
    let third = batches[2].0;
    let gapped = [&prefix[..second], &prefix[third..]].concat();
    let before = (capped.log_start_offset(), capped.log_end_offset(), records_below(&capped, upto));
    assert!(capped.restore_prefix(&gapped, 0, upto, &leader.producer_state()).is_err());
    assert_eq!((capped.log_start_offset(), capped.log_end_offset(), records_below(&capped, upto)), before);
}

/// Every batch below `upto`, read segment by segment as a consumer would.
fn records_below(log: &PartitionLog, upto: i64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < upto {
        let r = log.read(offset, usize::MAX, upto).unwrap().records;
        let Some((_, last)) = batch::split_stored(&r).ok().and_then(|b| b.last().copied()) else { break };
        out.extend_from_slice(&r);
        offset = last.last_offset() + 1;
    }
    out
}

#[test]
fn retention_and_delete_records_leave_raft_entries_to_raft() {
    let tmp = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes: 400, retention_ms: 1, ..LogConfig::default() };
    let log = PartitionLog::open_opts(tmp.path(), config, OpenOptions { replicated: true, ..OpenOptions::default() })
        .unwrap();
    append(&log, 0, 12, 1);
    log.set_high_watermark(log.log_end_offset());
    let segments = log.segment_count();
    assert_eq!(log.apply_retention(i64::MAX / 2).unwrap(), 0, "expired, but held by Raft");
    assert_eq!((log.segment_count(), log.raft_index_range()), (segments, Some((0, 11))));
    // DeleteRecords moves Kafka's log start; the segments stay for Raft.
    let span = log.raft_entry_span(8).unwrap();
    assert_eq!(log.delete_records(span.base_offset).unwrap(), span.base_offset);
    assert!(log.read(0, 100, i64::MAX).is_err(), "below the log start");
    assert_eq!((log.segment_count(), log.raft_index_range()), (segments, Some((0, 11))));
    assert_eq!(log.raft_entries(0, 12, usize::MAX).unwrap().len(), 12);
    // Raft's purge then drops the segments it covers, the log start staying where it was.
    log.drop_raft_segments_upto(5).unwrap();
    assert!(log.segment_count() < segments);
    assert_eq!(log.log_start_offset(), span.base_offset);
    let (first, last) = log.raft_index_range().unwrap();
    assert!(first > 0 && first <= 6 && last == 11, "{first}..{last}");
}

/// The `.raftindex` files of `dir`, oldest segment first.
fn sidecars(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "raftindex"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_crash_that_loses_an_older_sidecars_rows_cuts_the_log_at_the_hole() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path(), 400);
    append(&log, 0, 12, 1);
    assert!(log.segment_count() > 2, "the appends span rolls");
    drop(log);
    // A crash kept the later sidecars but lost the last row of the first one holding two or
    // more (as when its rows were never synced before the next header was created).
    let files = sidecars(tmp.path());
    let (victim, rows) = files[..files.len() - 1]
        .iter()
        .map(|p| (p.clone(), rows_written(&std::fs::read(p).unwrap())))
        .find(|(_, rows)| *rows >= 2)
        .unwrap();
    let data = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &data[..HEADER + (rows - 1) * ROW]).unwrap();
    let log = open(tmp.path(), 400);
    let (first, last) = log.raft_index_range().unwrap();
    let held = log.raft_entries(first, last + 1, usize::MAX).unwrap();
    assert_eq!(held.len() as u64, last - first + 1, "every entry the range names is readable");
    assert_eq!(held.last().unwrap().span.next_offset, log.log_end_offset(), "nothing past the last entry");
    assert!(last < 11 && rows >= 2);
    // Appends go on from the last entry held, and a restart keeps them.
    append(&log, last + 1, last + 4, 2);
    log.sync(log.log_end_offset()).await.unwrap();
    drop(log);
    let log = open(tmp.path(), 400);
    assert_eq!(log.raft_index_range(), Some((first, last + 3)));
    assert_eq!(log.raft_entries(first, last + 4, usize::MAX).unwrap().len() as u64, last + 4 - first);
}

#[tokio::test]
async fn a_sidecar_whose_creation_a_crash_cut_short_is_dropped_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let log = open(tmp.path(), 400);
    append(&log, 0, 6, 1);
    log.sync(log.log_end_offset()).await.unwrap();
    let (end, segments) = (log.log_end_offset(), log.segment_count());
    drop(log);
    // A crash while the next segment's sidecar was being created: the segment exists (empty),
    // its sidecar is empty, or zero-filled where the header was being written, or a leftover
    // of the temporary file it is written in.
    let next = tmp.path().join(format!("{end:020}.raftindex"));
    let leftover = tmp.path().join(format!("{end:020}.raftindex-new"));
    for torn in [&[][..], &[0u8; 10][..]] {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(tmp.path().join(format!("{end:020}.log")))
            .unwrap();
        std::fs::write(&next, torn).unwrap();
        std::fs::write(&leftover, [0u8; 24]).unwrap();
        let log = open(tmp.path(), 400);
        assert_eq!((log.log_end_offset(), log.raft_index_range()), (end, Some((0, 5))));
        assert!(!leftover.exists());
        assert!(log.segment_count() >= segments);
        append(&log, 6, 8, 1);
        log.sync(log.log_end_offset()).await.unwrap();
        assert_eq!(log.raft_entries(0, 8, usize::MAX).unwrap().len(), 8);
        log.truncate_raft_after(Some(5)).unwrap();
        assert_eq!(log.log_end_offset(), end);
        drop(log);
    }
    // A header with content that does not check is damage, still refused.
    std::fs::write(tmp.path().join(format!("{:020}.raftindex", 0)), [1u8; 24]).unwrap();
    let config = LogConfig { segment_bytes: 400, ..LogConfig::default() };
    assert!(PartitionLog::open_opts(tmp.path(), config, OpenOptions { replicated: true, ..OpenOptions::default() })
        .is_err());
}

#[test]
fn a_log_opened_as_raft_takes_no_other_write_even_without_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let config = LogConfig::default();
    let log =
        PartitionLog::open_opts(tmp.path(), config, OpenOptions { raft: true, ..OpenOptions::default() }).unwrap();
    assert!(log.is_raft_only());
    assert!(log.append(&build_batch(0, 1, &[(None, Some(b"v"))]), 1, 1).is_err(), "new, no entry yet");
    append(&log, 0, 2, 1);
    log.truncate_raft_after(None).unwrap();
    assert_eq!(log.raft_index_range(), None);
    assert!(log.append(&build_batch(0, 1, &[(None, Some(b"v"))]), 1, 1).is_err(), "truncated to nothing");
    log.reset_to(50, &log.producer_state()).unwrap();
    assert!(log.append_marker(7, 0, 0, true, 1, 1).is_err(), "reset");
    assert_eq!(log.log_end_offset(), 50);
}
