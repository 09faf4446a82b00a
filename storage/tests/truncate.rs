//! Suffix truncation as the replicated log needs it: a cut inside a closed
//! segment reaches its files, survives a reopen, never pulls a mapped page
//! from under a reader, and keeps the leader-epoch cache in step.

use std::path::Path;

mod common;

use common::{batch, read_all, small_config};
use fjord_storage::batch::BatchHeader;
use fjord_storage::PartitionLog;

/// Base offsets of the segments on disk, in order.
fn segment_bases(dir: &Path) -> Vec<i64> {
    let mut v: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".log").and_then(|s| s.parse().ok()))
        .collect();
    v.sort_unstable();
    v
}

fn file_len(dir: &Path, base: i64, ext: &str) -> u64 {
    std::fs::metadata(dir.join(format!("{base:020}.{ext}"))).unwrap().len()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Appends `count` two-record batches at `epoch` with timestamps from `ts`.
fn fill(log: &PartitionLog, count: usize, epoch: i32, ts: i64) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let b = batch(2, ts + i as i64, i as u8);
            log.append(&b, epoch, 0).unwrap();
            b
        })
        .collect()
}

#[test]
fn truncate_inside_a_closed_segment_cuts_its_files_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    fill(&log, 150, 1, 1000);
    let before = read_all(&log, 0);
    let bases = segment_bases(dir.path());
    assert!(bases.len() >= 4, "4 KiB segments must roll: {bases:?}");
    // A cut in the middle of the second segment, which is closed.
    let (seg, next_seg) = (bases[1], bases[2]);
    let in_seg: Vec<&BatchHeader> =
        before.iter().filter(|h| h.base_offset >= seg && h.base_offset < next_seg).collect();
    assert!(in_seg.len() >= 4);
    let cut = in_seg[in_seg.len() / 2].base_offset;
    let kept_bytes: u64 = in_seg.iter().filter(|h| h.base_offset < cut).map(|h| h.total_size() as u64).sum();
    let max_kept_ts = before.iter().filter(|h| h.base_offset < cut).map(|h| h.max_timestamp).max().unwrap();

    log.truncate_to(cut).unwrap();
    assert_eq!(log.log_end_offset(), cut);
    let expected: Vec<u32> = before.iter().filter(|h| h.base_offset < cut).map(|h| h.crc).collect();
    let check = |log: &PartitionLog| {
        let got: Vec<u32> = read_all(log, 0).iter().map(|h| h.crc).collect();
        assert_eq!(got, expected);
        // Every offset still in the log reads the batch holding it.
        for h in before.iter().filter(|h| h.base_offset < cut) {
            for o in h.base_offset..=h.last_offset() {
                let r = log.read(o, 1, i64::MAX).unwrap();
                assert_eq!(BatchHeader::parse(&r.records).unwrap().base_offset, h.base_offset, "read at {o}");
            }
        }
        let max = log.batch_with_max_timestamp().unwrap();
        assert_eq!(BatchHeader::parse(&max).unwrap().max_timestamp, max_kept_ts);
    };
    check(&log);
    // The files hold nothing past the cut: the log ends at the last kept
    // batch, no index row points at or past it.
    assert_eq!(file_len(dir.path(), seg, "log"), kept_bytes);
    let index = std::fs::read(dir.path().join(format!("{seg:020}.index"))).unwrap();
    assert_eq!(index.len() % 8, 0);
    for (i, row) in index.chunks_exact(8).enumerate() {
        assert!((u32_at(row, 4) as u64) < kept_bytes, "index row {i} points past the cut");
        assert!(i == 0 || u32_at(row, 0) > 0, "index row {i} is stale");
    }
    let tindex = std::fs::read(dir.path().join(format!("{seg:020}.timeindex"))).unwrap();
    assert_eq!(tindex.len() % 12, 0);
    for (i, row) in tindex.chunks_exact(12).enumerate() {
        assert!(seg + (u32_at(row, 8) as i64) < cut, "time index row {i} points past the cut");
    }
    drop(log);

    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.recovery_report().indexes_rebuilt, 0, "a truncated segment's indexes load as they are");
    assert_eq!(log.log_end_offset(), cut);
    check(&log);
    assert_eq!(log.append(&batch(1, 5, 9), 2, 0).unwrap().base_offset, cut);
}

#[test]
fn truncate_syncs_what_it_cut_before_returning() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    fill(&log, 150, 1, 1000);
    let bases = segment_bases(dir.path());
    // Into a closed segment, unlinking the later ones: the cut segment and
    // the directory both need a sync.
    let before = log.fsync_count();
    log.truncate_to(bases[1] + 2).unwrap();
    assert!(log.fsync_count() >= before + 2, "the cut range and the directory are synced");
    // Inside the active segment only: its zeroed tail is synced.
    fill(&log, 3, 1, 2000);
    let before = log.fsync_count();
    log.truncate_to(log.log_end_offset() - 2).unwrap();
    assert!(log.fsync_count() > before, "the active segment's cut is synced");
}

#[test]
fn truncating_to_a_closed_segments_base_leaves_readers_slices_intact() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    fill(&log, 150, 1, 1000);
    let bases = segment_bases(dir.path());
    let seg = bases[2];
    // A fetch still holding a slice of the segment that the cut empties.
    let held = log.read(seg, 1 << 20, i64::MAX).unwrap();
    assert!(!held.records.is_empty());
    let copy = held.records.to_vec();
    log.truncate_to(seg).unwrap();
    assert_eq!(log.log_end_offset(), seg);
    // Touching the slice must neither fault (SIGBUS) nor see other bytes.
    assert_eq!(&held.records[..], &copy[..]);
    assert_eq!(log.append(&batch(1, 5, 9), 2, 0).unwrap().base_offset, seg);
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.log_end_offset(), seg + 1);
}

#[test]
fn creating_a_segment_over_a_mapped_file_leaves_the_old_mapping_alone() {
    use fjord_storage::segment::Segment;
    let dir = tempfile::tempdir().unwrap();
    let data = batch(3, 1000, 7);
    let h = BatchHeader::parse(&data).unwrap();
    let mut seg = Segment::create(dir.path(), 0, 4096, 4096).unwrap();
    seg.append(&data, &[(0, h)], 4096, 0).unwrap();
    let held = seg.bytes(0, data.len() as u64);
    let again = Segment::create(dir.path(), 0, 4096, 4096).unwrap();
    assert!(again.is_empty());
    assert_eq!(&held[..], &data[..]);
}

#[test]
fn epoch_cache_is_cut_at_the_new_log_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    fill(&log, 10, 1, 1000);
    // Epoch 3 starts at 20, inside the two-record batch [20, 21].
    fill(&log, 1, 3, 2000);
    log.truncate_to(21).unwrap();
    assert_eq!(log.log_end_offset(), 20);
    assert_eq!(log.latest_epoch(), Some(1), "the batch that started epoch 3 is gone");
    assert_eq!(log.end_offset_for_epoch(3), Some((1, 20)));
}

#[test]
fn epoch_cache_is_trimmed_when_the_log_start_moves() {
    let dir = tempfile::tempdir().unwrap();
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    fill(&log, 10, 1, 1000);
    fill(&log, 10, 2, 2000);
    fill(&log, 10, 4, 3000);
    let checkpoint = || std::fs::read_to_string(dir.path().join("leader-epoch-checkpoint")).unwrap();
    assert_eq!(checkpoint(), "1 0\n2 20\n4 40\n");
    assert_eq!(log.delete_records(30).unwrap(), 30);
    // Like Kafka's truncateFromStart: epoch 1 is gone, epoch 2 now starts
    // at the log start.
    assert_eq!(checkpoint(), "2 30\n4 40\n");
    assert_eq!(log.end_offset_for_epoch(2), Some((2, 40)));
    drop(log);
    let log = PartitionLog::open(dir.path(), small_config()).unwrap();
    assert_eq!(log.latest_epoch(), Some(4));
    assert_eq!(checkpoint(), "2 30\n4 40\n");
}
