//! Property test of `PartitionLog` against a model (the batches with their
//! offsets, in order, and the high watermark): random appends, follower
//! appends (well placed or not), high watermark moves, truncations, rolls,
//! clean and crash reopens, and crash cuts of the active segment's tail at
//! any byte; on a single-replica log and on a replicated one.

use std::path::Path;

use fjord_storage::batch::{build_batch, patch, KeyValue};
use fjord_storage::{LogConfig, LogError, OpenOptions, PartitionLog};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// A batch of this many records.
    Append(usize, u8),
    /// The same, as a follower gets it: offsets and epoch already set.
    FollowerAppend(usize, u8),
    /// A follower batch whose base is this far from the log end (never 0):
    /// refused, nothing written.
    MisplacedAppend(usize, u8, i8),
    /// Raise the high watermark to a point chosen by this number, modulo
    /// the log end + 2 (so sometimes past the end).
    SetHighWatermark(u32),
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
        4 => (1usize..5, any::<u8>()).prop_map(|(n, t)| Op::Append(n, t)),
        3 => (1usize..5, any::<u8>()).prop_map(|(n, t)| Op::FollowerAppend(n, t)),
        1 => (1usize..5, any::<u8>(), any::<i8>().prop_filter("off the end", |d| *d != 0))
            .prop_map(|(n, t, d)| Op::MisplacedAppend(n, t, d)),
        2 => any::<u32>().prop_map(Op::SetHighWatermark),
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
/// leader epoch it was written in; and the high watermark.
struct Model {
    batches: Vec<(i64, i64, Vec<u8>, i32)>,
    hw: i64,
    /// A single replica's high watermark is its log end.
    replicated: bool,
}

impl Model {
    fn end(&self) -> i64 {
        self.batches.last().map_or(0, |(_, last, _, _)| last + 1)
    }
    /// After the log changed: a single replica commits all it holds; a
    /// replicated log's high watermark only comes down with the end.
    fn follow_end(&mut self) {
        self.hw = if self.replicated { self.hw.min(self.end()) } else { self.end() };
    }
}

/// Reopens the log as it was opened first. A replicated log's high
/// watermark starts at the log start, then its replica restores the one it
/// knew (Raft's committed index), as it would after a restart.
fn reopen(
    dir: &Path,
    cfg: &LogConfig,
    clean: Option<&fjord_storage::CleanState>,
    model: &Model,
) -> Result<PartitionLog, TestCaseError> {
    let opts = OpenOptions { clean, replicated: model.replicated, ..OpenOptions::default() };
    let l = PartitionLog::open_opts(dir, cfg.clone(), opts).unwrap();
    prop_assert_eq!(l.recovery_report().indexes_rebuilt, 0);
    if model.replicated {
        prop_assert_eq!(l.high_watermark(), l.log_start_offset());
        l.set_high_watermark(model.hw);
    }
    Ok(l)
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
    prop_assert_eq!(log.high_watermark(), model.hw);
    prop_assert!(model.hw <= model.end());
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
            prop_assert_eq!(r.high_watermark, model.hw);
            if o >= model.hw {
                // At or past the high watermark: consumers see nothing yet.
                prop_assert!(r.records.is_empty(), "read at {} past the high watermark {}", o, model.hw);
                continue;
            }
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
        replicated in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = LogConfig {
            segment_bytes: seg,
            segment_ms: SEGMENT_MS,
            index_interval_bytes: 128,
            segment_index_bytes: 1024,
            ..LogConfig::default()
        };
        let mut model = Model { batches: Vec::new(), hw: 0, replicated };
        let mut log = Some(reopen(dir.path(), &cfg, None, &model)?);
        let mut now = 0i64;
        // A new leader epoch with every roll, so truncations cross epochs.
        let mut epoch = 0;
        for op in ops {
            let hw_before = model.hw;
            let mut was_cut = false;
            match op.clone() {
                Op::Append(n, tag) => {
                    let l = log.as_ref().unwrap();
                    let mut b = batch(n, now, tag);
                    let info = l.append(&b, epoch, now).unwrap();
                    prop_assert_eq!(info.base_offset, model.end());
                    patch(&mut b, info.base_offset, epoch, None);
                    model.batches.push((info.base_offset, info.last_offset, b, epoch));
                    model.follow_end();
                }
                Op::FollowerAppend(n, tag) => {
                    let mut b = batch(n, now, tag);
                    let base = model.end();
                    patch(&mut b, base, epoch, None);
                    let info = log.as_ref().unwrap().append_entry(&b, now).unwrap();
                    prop_assert_eq!((info.base_offset, info.last_offset), (base, base + n as i64 - 1));
                    model.batches.push((base, info.last_offset, b, epoch));
                    model.follow_end();
                }
                Op::MisplacedAppend(n, tag, delta) => {
                    let mut b = batch(n, now, tag);
                    let base = (model.end() + delta as i64).max(0);
                    patch(&mut b, base, epoch, None);
                    let r = log.as_ref().unwrap().append_entry(&b, now);
                    if base == model.end() {
                        // Clamped at 0 onto the end of an empty log: placed after all.
                        model.batches.push((base, r.unwrap().last_offset, b, epoch));
                        model.follow_end();
                    } else {
                        let refused = matches!(r, Err(LogError::UnexpectedAppendOffset { .. }));
                        prop_assert!(refused, "{:?}", r);
                    }
                }
                Op::SetHighWatermark(at) => {
                    let at = at as i64 % (model.end() + 2);
                    let hw = log.as_ref().unwrap().set_high_watermark(at);
                    model.hw = model.hw.max(at.min(model.end()));
                    prop_assert_eq!(hw, model.hw);
                }
                Op::Truncate(at) => {
                    let at = at as i64 % (model.end() + 1);
                    log.as_ref().unwrap().truncate_to(at).unwrap();
                    // The batch holding `at` goes whole.
                    model.batches.retain(|b| b.1 < at);
                    model.follow_end();
                    was_cut = true;
                }
                Op::Roll => {
                    now += SEGMENT_MS;
                    epoch += 1;
                }
                Op::Reopen { clean } => {
                    let l = log.take().unwrap();
                    let state = if clean { Some(l.shutdown_state(true).unwrap()) } else { None };
                    drop(l);
                    log = Some(reopen(dir.path(), &cfg, state.as_ref(), &model)?);
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
                    model.follow_end();
                    was_cut = true;
                    log = Some(reopen(dir.path(), &cfg, None, &model)?);
                }
            }
            // The high watermark never goes back, unless the log was cut
            // below it (and then it is the new end).
            if model.hw < hw_before {
                prop_assert!(was_cut && model.hw == model.end(), "{} -> {} after {:?}", hw_before, model.hw, op);
            }
            check(log.as_ref().unwrap(), &model, dir.path())?;
        }
        // Whatever happened, the last state survives a reopen.
        drop(log.take());
        let l = reopen(dir.path(), &cfg, None, &model)?;
        check(&l, &model, dir.path())?;
    }
}
