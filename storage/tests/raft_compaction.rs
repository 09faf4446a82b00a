//! Compaction of a Raft log (`cleanup.policy=compact` on a replicated partition): only entries
//! this replica has applied are rewritten, every entry keeps its index and offsets, an entry
//! whose batches all went is read back as a filler, a follower built from the compacted entries
//! serves the same records at the same offsets, and a swap a crash interrupted is finished (or
//! undone) when the log opens.

use std::collections::BTreeMap;
use std::path::Path;

use fjord_storage::batch::{self, build_batch, build_batch_as, patch, Producer};
use fjord_storage::{LogConfig, OpenOptions, PartitionLog};
use kafka_protocol::records::RecordBatchDecoder;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 700,
        compact: true,
        delete: false,
        min_compaction_lag_ms: 0,
        delete_retention_ms: 1 << 40,
        ..LogConfig::default()
    }
}

fn open(dir: &Path) -> PartitionLog {
    PartitionLog::open_opts(dir, config(), OpenOptions { replicated: true, ..OpenOptions::default() }).unwrap()
}

/// A replica reopened with everything it holds applied (Raft restores the HW after a restart).
fn reopen_applied(dir: &Path) -> PartitionLog {
    let log = open(dir);
    log.set_high_watermark(log.log_end_offset());
    log
}

/// Entry `i`: keyed records stamped at the log end with epoch `term`. Keys repeat, so older
/// entries are superseded; every seventh entry is an idempotent producer's.
fn entry(log: &PartitionLog, i: u64, term: i32) -> Vec<u8> {
    let keys: Vec<String> = (0..1 + i % 3).map(|r| format!("k{}", (i + r) % 4)).collect();
    let values: Vec<String> = keys.iter().map(|k| format!("{k}@{i}")).collect();
    let kvs: Vec<_> = keys.iter().zip(&values).map(|(k, v)| (Some(k.as_bytes()), Some(v.as_bytes()))).collect();
    let mut b = if i.is_multiple_of(7) {
        let p = Producer { id: 42, epoch: 0, base_sequence: (i / 7) as i32 * 3, transactional: false };
        build_batch_as(0, 1000 + i as i64, &kvs, Some(p))
    } else {
        build_batch(0, 1000 + i as i64, &kvs)
    };
    patch(&mut b, log.log_end_offset(), term, None);
    b
}

/// Each data record as (offset, key, value), control batches skipped, as a consumer sees them.
fn consumed(log: &PartitionLog) -> Vec<(i64, String, String)> {
    let mut out = Vec::new();
    let mut next = log.log_start_offset();
    while next < log.log_end_offset() {
        let r = log.read(next, 1 << 20, i64::MAX).unwrap();
        if r.records.is_empty() {
            break;
        }
        let mut buf = r.records.clone();
        for set in RecordBatchDecoder::decode_all(&mut buf).unwrap() {
            for rec in set.records.iter().filter(|r| !r.control && r.offset >= next) {
                let text = |b: &Option<bytes::Bytes>| String::from_utf8(b.clone().unwrap().to_vec()).unwrap();
                out.push((rec.offset, text(&rec.key), text(&rec.value)));
            }
        }
        let mut pos = 0;
        while pos < r.records.len() {
            let h = batch::BatchHeader::parse(&r.records[pos..]).unwrap();
            next = h.last_offset() + 1;
            pos += h.total_size();
        }
    }
    out
}

/// Per entry: (index, base offset, next offset, term).
fn spans(log: &PartitionLog) -> Vec<(u64, i64, i64, i32)> {
    let (first, last) = log.raft_index_range().unwrap();
    log.raft_entries(first, last + 1, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| (e.span.index, e.span.base_offset, e.span.next_offset, e.term))
        .collect()
}

/// Every entry as read for a follower covers its offsets with whole batches, none missing.
fn assert_entries_cover_their_offsets(log: &PartitionLog) {
    let (first, last) = log.raft_index_range().unwrap();
    for e in log.raft_entries(first, last + 1, usize::MAX).unwrap() {
        let mut next = e.span.base_offset;
        for (pos, h) in batch::split_stored(&e.data).unwrap() {
            batch::validate(&e.data[pos..pos + h.total_size()]).unwrap();
            assert_eq!(h.base_offset, next, "entry {} has a gap", e.span.index);
            assert_eq!(h.partition_leader_epoch, e.term);
            next = h.last_offset() + 1;
        }
        assert_eq!(next, e.span.next_offset, "entry {} ends short", e.span.index);
    }
}

/// The newest value of each key among `records`.
fn latest(records: &[(i64, String, String)]) -> BTreeMap<String, (i64, String)> {
    records.iter().map(|(o, k, v)| (k.clone(), (*o, v.clone()))).collect()
}

/// A leader's log of 60 entries over two terms, with the first 50 applied (the HW at their end).
async fn leader(dir: &Path) -> (PartitionLog, i64) {
    let log = open(dir);
    for i in 0..60u64 {
        let e = entry(&log, i, if i < 30 { 1 } else { 2 });
        log.append_raft_entry(&e, i, 0).unwrap();
    }
    let applied_end = log.raft_entry_span(49).unwrap().next_offset;
    log.set_high_watermark(applied_end);
    log.sync(log.log_end_offset()).await.unwrap();
    (log, applied_end)
}

#[tokio::test]
async fn compaction_keeps_every_entry_at_its_offsets_and_a_follower_reads_the_same_records() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, applied_end) = leader(&tmp.path().join("leader")).await;
    let before_spans = spans(&log);
    let before = consumed(&log);
    let unapplied: Vec<_> = log.raft_entries(50, 60, usize::MAX).unwrap().into_iter().map(|e| e.data).collect();

    let stats = log.compact(0).unwrap();
    assert!(stats.segments_rewritten > 0 && stats.records_removed > 0, "{stats:?}");
    assert_eq!(spans(&log), before_spans, "entries keep their indexes, offsets and terms");
    assert_entries_cover_their_offsets(&log);
    // (Reads stop at the HW: these are the applied records.)
    let applied_after = consumed(&log);
    assert!(applied_after.len() < before.len());
    assert_eq!(latest(&applied_after), latest(&before), "the newest value of every key stays, at its offset");
    // Nothing past what this replica applied was touched.
    let now: Vec<_> = log.raft_entries(50, 60, usize::MAX).unwrap().into_iter().map(|e| e.data).collect();
    assert_eq!(now, unapplied);
    log.set_high_watermark(log.log_end_offset());
    let after = consumed(&log);
    assert_eq!(after[..applied_after.len()], applied_after[..]);
    assert!(after[applied_after.len()..].iter().all(|(o, _, _)| *o >= applied_end));

    // A follower that takes the compacted entries (fillers included) holds them at the same
    // offsets and serves the same records.
    let follower = open(&tmp.path().join("follower"));
    for e in log.raft_entries(0, 60, usize::MAX).unwrap() {
        follower.append_raft_entry(&e.data, e.span.index, 0).unwrap();
    }
    assert_eq!(spans(&follower), before_spans);
    follower.set_high_watermark(follower.log_end_offset());
    assert_eq!(consumed(&follower), after);
    // Its own compaction (with all of it applied, so further than the leader's) drops the
    // fillers and still serves every entry whole, with the same newest value of every key.
    let fillers = |log: &PartitionLog| {
        let e = log.raft_entries(0, 60, usize::MAX).unwrap();
        e.iter()
            .flat_map(|e| batch::split_stored(&e.data).unwrap().into_iter().map(|(p, h)| (e.data.clone(), p, h)))
            .filter(|(d, p, h)| {
                batch::control_record(&d[*p..*p + h.total_size()]).is_some_and(|(t, _)| t == batch::CONTROL_COMPACTED)
            })
            .count()
    };
    let size_before = follower.size_bytes();
    assert!(fillers(&follower) > 0, "the leader sent fillers");
    assert!(follower.compact(0).unwrap().segments_rewritten > 0);
    assert!(follower.size_bytes() < size_before);
    assert_eq!(spans(&follower), before_spans);
    assert_entries_cover_their_offsets(&follower);
    assert_eq!(latest(&consumed(&follower)), latest(&after));

    // The rewritten segments and sidecars are what a reopen finds.
    drop(log);
    let log = reopen_applied(&tmp.path().join("leader"));
    assert_eq!(spans(&log), before_spans);
    assert_eq!(consumed(&log), after);
    assert_entries_cover_their_offsets(&log);
    // Appends go on after the compacted entries.
    let e = entry(&log, 60, 3);
    log.append_raft_entry(&e, 60, 0).unwrap();
    assert_eq!(log.raft_index_range(), Some((0, 60)));

    // DeleteRecords past entries compaction emptied: they stay until Raft purges them, and each
    // still reads back whole for a follower, stamped with its term.
    let mid = before_spans[25].1;
    log.delete_records(mid).unwrap();
    assert_eq!(log.log_start_offset(), mid);
    assert_eq!(spans(&log)[..60], before_spans[..]);
    assert_entries_cover_their_offsets(&log);
    drop(log);
    let log = reopen_applied(&tmp.path().join("leader"));
    assert_eq!(spans(&log)[..60], before_spans[..]);
    // A snapshot's prefix of the compacted log runs unbroken to its end, so a follower takes it.
    let upto = before_spans[40].2;
    let prefix = log.prefix_before(upto, usize::MAX);
    PartitionLog::check_snapshot_prefix(&prefix, upto, &log.producer_state()).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A crash during the swap of a rewritten segment and its sidecar: with the journal written,
/// the open finishes the swap (whichever of the two renames had happened); without it, the
/// rewritten copies are dropped and the original pair stays. Either way every entry reads.
#[tokio::test]
async fn a_swap_cut_short_by_a_crash_is_finished_or_undone_when_the_log_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = leader(&tmp.path().join("original")).await;
    drop(log);
    let log = reopen_applied(&tmp.path().join("original"));
    let spans_before = spans(&log);
    let records_before = consumed(&log);
    drop(log);
    copy_dir(&tmp.path().join("original"), &tmp.path().join("compacted"));
    let log = reopen_applied(&tmp.path().join("compacted"));
    assert!(log.compact(0).unwrap().segments_rewritten > 0);
    let records_after = consumed(&log);
    assert!(records_after.len() < records_before.len());
    drop(log);
    let name = |base: i64, ext: &str| format!("{base:020}.{ext}");
    // The segments the pass rewrote.
    let rewritten: Vec<i64> = std::fs::read_dir(tmp.path().join("compacted"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_string_lossy().strip_suffix(".log")?.parse::<i64>().ok())
        .filter(|b| {
            let file = |d: &str| std::fs::read(tmp.path().join(d).join(name(*b, "log"))).unwrap();
            file("original") != file("compacted")
        })
        .collect();
    assert!(!rewritten.is_empty());
    for (case, renamed) in [("none-renamed", 0), ("log-renamed", 1), ("both-renamed", 2)] {
        // The original files, with each compacted pair beside them as the swap left it.
        let dir = tmp.path().join(case);
        copy_dir(&tmp.path().join("original"), &dir);
        for base in &rewritten {
            for (i, ext) in ["log", "raftindex"].into_iter().enumerate() {
                let new = std::fs::read(tmp.path().join("compacted").join(name(*base, ext))).unwrap();
                let target = if i < renamed { name(*base, ext) } else { format!("{}.cleaned", name(*base, ext)) };
                std::fs::write(dir.join(target), new).unwrap();
            }
            std::fs::write(dir.join(name(*base, "swap")), b"").unwrap();
        }
        let log = reopen_applied(&dir);
        assert_eq!(spans(&log), spans_before, "{case}");
        assert_eq!(consumed(&log), records_after, "{case}: the swap was finished");
        assert_entries_cover_their_offsets(&log);
        for base in &rewritten {
            assert!(!dir.join(name(*base, "swap")).exists());
            assert!(!dir.join(format!("{}.cleaned", name(*base, "log"))).exists());
        }
    }
    // No journal: the rewritten copies were never committed to.
    let dir = tmp.path().join("no-journal");
    copy_dir(&tmp.path().join("original"), &dir);
    for base in &rewritten {
        for ext in ["log", "raftindex"] {
            let new = std::fs::read(tmp.path().join("compacted").join(name(*base, ext))).unwrap();
            std::fs::write(dir.join(format!("{}.cleaned", name(*base, ext))), new).unwrap();
        }
    }
    let log = reopen_applied(&dir);
    assert_eq!(spans(&log), spans_before);
    assert_eq!(consumed(&log), records_before);
}
