//! Property test of `PartitionLog` against a model (the batches with their
//! offsets, in order): random appends, truncations, rolls, clean and crash
//! reopens, and crash cuts of the active segment's tail at any byte.

use std::path::Path;

use fjord_storage::batch::{build_batch, patch, KeyValue};
use fjord_storage::{LogConfig, PartitionLog};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// A batch of this many records.
    Append(usize, u8),
    /// Truncate at a point chosen by this number, modulo the log end + 1.
    Truncate(u32),
    /// Advance the clock past `segment.ms`: the next append rolls.
    Roll,
    /// Reopen, after a clean shutdown or not.
    Reopen { clean: bool },
    /// Drop the log and cut the active segment's file at a byte chosen by
    /// this number, as a crash mid-write would leave it; then reopen.
    CrashCut(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..5, any::<u8>()).prop_map(|(n, t)| Op::Append(n, t)),
        2 => any::<u32>().prop_map(Op::Truncate),
        1 => Just(Op::Roll),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        1 => any::<u32>().prop_map(Op::CrashCut),
    ]
}

fn batch(n: usize, ts: i64, tag: u8) -> Vec<u8> {
    let vals: Vec<Vec<u8>> = (0..n).map(|i| vec![tag.wrapping_add(i as u8); 10 + i]).collect();
    let recs: Vec<KeyValue<'_>> = vals.iter().map(|v| (Some(&b"k"[..]), Some(&v[..]))).collect();
    build_batch(0, ts, &recs)
}

/// The model: each batch as the log stores it, with its offsets and the
/// leader epoch it was written in.
struct Model {
    batches: Vec<(i64, i64, Vec<u8>, i32)>,
}

impl Model {
    fn end(&self) -> i64 {
        self.batches.last().map_or(0, |(_, last, _, _)| last + 1)
    }
}

const SEGMENT_MS: i64 = 1000;

/// The segment files on disk, by base offset.
fn segments(dir: &Path) -> Vec<(i64, std::path::PathBuf)> {
    let mut v: Vec<(i64, std::path::PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let base = e.file_name().to_string_lossy().strip_suffix(".log")?.parse::<i64>().ok()?;
            Some((base, e.path()))
        })
        .collect();
    v.sort();
    v
}

fn check(log: &PartitionLog, model: &Model, dir: &Path) -> Result<(), TestCaseError> {
    prop_assert_eq!(log.log_start_offset(), 0);
    prop_assert_eq!(log.log_end_offset(), model.end());
    prop_assert_eq!(log.latest_epoch(), model.batches.last().map(|b| b.3));
    // A closed segment's file is exactly its batches: nothing cut is left.
    let segs = segments(dir);
    for w in segs.windows(2) {
        let ((base, path), (next, _)) = (&w[0], &w[1]);
        let want: u64 = model.batches.iter().filter(|b| b.0 >= *base && b.0 < *next).map(|b| b.2.len() as u64).sum();
        prop_assert_eq!(std::fs::metadata(path).unwrap().len(), want, "segment {}", base);
    }
    for (base, last, bytes, _) in &model.batches {
        for o in *base..=*last {
            let r = log.read(o, 1, i64::MAX).unwrap();
            prop_assert!(r.records.len() >= bytes.len(), "read at {} returned {} bytes", o, r.records.len());
            prop_assert_eq!(&r.records[..bytes.len()], &bytes[..], "read at {}", o);
        }
    }
    prop_assert!(log.read(model.end(), 1 << 20, i64::MAX).unwrap().records.is_empty());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_a_model_through_truncations_rolls_reopens_and_crashes(
        ops in prop::collection::vec(op(), 1..40),
        seg in 600u64..3000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            segment_bytes: seg,
            segment_ms: SEGMENT_MS,
            index_interval_bytes: 128,
            segment_index_bytes: 1024,
            ..LogConfig::default()
        };
        let mut log = Some(PartitionLog::open(dir.path(), cfg.clone()).unwrap());
        let mut model = Model { batches: Vec::new() };
        let mut now = 0i64;
        // A new leader epoch with every roll, so truncations cross epochs.
        let mut epoch = 0;
        for op in ops {
            match op {
                Op::Append(n, tag) => {
                    let l = log.as_ref().unwrap();
                    let mut b = batch(n, now, tag);
                    let info = l.append(&b, epoch, now).unwrap();
                    prop_assert_eq!(info.base_offset, model.end());
                    patch(&mut b, info.base_offset, epoch, None);
                    model.batches.push((info.base_offset, info.last_offset, b, epoch));
                }
                Op::Truncate(at) => {
                    let at = at as i64 % (model.end() + 1);
                    log.as_ref().unwrap().truncate_to(at).unwrap();
                    // The batch holding `at` goes whole.
                    model.batches.retain(|b| b.1 < at);
                }
                Op::Roll => {
                    now += SEGMENT_MS;
                    epoch += 1;
                }
                Op::Reopen { clean } => {
                    let l = log.take().unwrap();
                    let state = if clean { Some(l.shutdown_state(true).unwrap()) } else { None };
                    drop(l);
                    let l = PartitionLog::open_with(dir.path(), cfg.clone(), state.as_ref()).unwrap();
                    prop_assert_eq!(l.recovery_report().indexes_rebuilt, 0);
                    log = Some(l);
                }
                Op::CrashCut(at) => {
                    drop(log.take());
                    let (active, path) = segments(dir.path()).pop().unwrap();
                    let used: u64 =
                        model.batches.iter().filter(|b| b.0 >= active).map(|b| b.2.len() as u64).sum();
                    prop_assert!(std::fs::metadata(&path).unwrap().len() >= used);
                    let cut = at as u64 % (used + 1);
                    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(cut).unwrap();
                    let mut pos = 0;
                    model.batches.retain(|b| {
                        if b.0 < active {
                            return true;
                        }
                        pos += b.2.len() as u64;
                        pos <= cut
                    });
                    let l = PartitionLog::open(dir.path(), cfg.clone()).unwrap();
                    prop_assert_eq!(l.recovery_report().indexes_rebuilt, 0);
                    log = Some(l);
                }
            }
            check(log.as_ref().unwrap(), &model, dir.path())?;
        }
        // Whatever happened, the last state survives a reopen.
        drop(log.take());
        let l = PartitionLog::open(dir.path(), cfg).unwrap();
        check(&l, &model, dir.path())?;
    }
}
