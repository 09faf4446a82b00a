//! Helpers shared by the log's integration tests: a small-segment config,
//! keyed test batches and a reader that follows offsets to the end.
// Each test crate compiles its own copy and uses only some of these.
#![allow(dead_code)]

use fjord_storage::batch::{build_batch, validate, BatchHeader, KeyValue};
use fjord_storage::{LogConfig, PartitionLog};

/// Segments and indexes small enough that a few batches roll them.
pub fn small_config() -> LogConfig {
    LogConfig { segment_bytes: 4096, index_interval_bytes: 256, segment_index_bytes: 4096, ..LogConfig::default() }
}

/// A batch of `n` keyed records, all with timestamp `ts`, values told apart by `tag`.
pub fn batch(n: usize, ts: i64, tag: u8) -> Vec<u8> {
    let vals: Vec<Vec<u8>> = (0..n).map(|i| vec![tag.wrapping_add(i as u8); 20 + i]).collect();
    let recs: Vec<KeyValue<'_>> = vals.iter().map(|v| (Some(&b"key"[..]), Some(&v[..]))).collect();
    build_batch(0, ts, &recs)
}

/// Every stored batch from `from` to the end, as a consumer reads them
/// (following offsets), each validated, as its bytes.
pub fn read_batches(log: &PartitionLog, from: i64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let r = log.read(next, 1 << 20, i64::MAX).unwrap();
        if r.records.is_empty() {
            break;
        }
        let mut pos = 0;
        while pos < r.records.len() {
            let h = BatchHeader::parse(&r.records[pos..]).unwrap();
            let bytes = &r.records[pos..pos + h.total_size()];
            validate(bytes).unwrap();
            if h.last_offset() >= next {
                out.push(bytes.to_vec());
            }
            pos += h.total_size();
            next = h.last_offset() + 1;
        }
    }
    out
}

/// The header of every batch from `from` to the end (see `read_batches`).
pub fn read_all(log: &PartitionLog, from: i64) -> Vec<BatchHeader> {
    read_batches(log, from).iter().map(|b| BatchHeader::parse(b).unwrap()).collect()
}
