//! The broker's own compacted topics (`__consumer_offsets`,
//! `__transaction_state`): created on first start, replayed record by record
//! on every start.

use std::collections::BTreeMap;

use fjord_storage::PartitionLog;
use kafka_protocol::records::{Record, RecordBatchDecoder};

use crate::topics::Topics;

/// Creates the compacted internal topic `name` unless it exists; returns its
/// partition count (fixed at creation, as Kafka's are).
pub fn ensure(topics: &Topics, name: &str, partitions: i32) -> anyhow::Result<i32> {
    if let Some(meta) = topics.topic(name) {
        return Ok(meta.partitions);
    }
    let mut configs = BTreeMap::new();
    // Only the newest record of each key matters.
    configs.insert("cleanup.policy".to_string(), "compact".to_string());
    configs.insert("segment.bytes".to_string(), (100 * 1024 * 1024).to_string());
    topics
        .create_internal(name, partitions, configs)
        .map_err(|e| anyhow::anyhow!("cannot create {name}: {}", e.message))?;
    Ok(partitions)
}

/// Calls `f` with every record of `log`, control records included, in order.
pub fn replay(log: &PartitionLog, mut f: impl FnMut(Record)) -> anyhow::Result<()> {
    let mut offset = log.log_start_offset();
    let end = log.log_end_offset();
    while offset < end {
        let read = log.read(offset, 1 << 20, end)?;
        if read.records.is_empty() {
            break;
        }
        let mut buf = read.records;
        for set in RecordBatchDecoder::decode_all(&mut buf)? {
            for r in set.records {
                offset = offset.max(r.offset + 1);
                f(r);
            }
        }
    }
    Ok(())
}
