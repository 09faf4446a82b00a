//! The broker's own compacted topics (`__consumer_offsets`,
//! `__transaction_state`): created on first start, replayed record by record
//! on every start, and migrated once from Fjord's old JSON records.

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

/// A record's key and value bytes (a None value is a tombstone).
pub type RecordBytes = (Vec<u8>, Option<Vec<u8>>);

/// The live state of one partition of an internal topic, as records to
/// write when its old JSON records are migrated.
#[derive(Default)]
pub struct Rewrite {
    /// Plain records (keys and values in Kafka's format).
    pub records: Vec<RecordBytes>,
    /// Records of transactions still open, by producer (id, epoch): written
    /// again as that producer's transactional records, so the marker that
    /// ends the transaction still applies to them.
    pub open_txns: Vec<((i64, i16), Vec<RecordBytes>)>,
}

/// Records per batch of a rewrite, well below any batch size limit.
const REWRITE_BATCH: usize = 500;

/// Migrates one partition whose replay met records of the old JSON format:
/// appends `rewrite` (the partition's whole live state, in the new format),
/// makes it durable, then moves the log start to the first rewritten
/// record, so nothing older is ever replayed or served again.
///
/// A crash before the log start moves leaves the old records in place: the
/// next start replays old and new records in order (the same state) and
/// migrates again. Once it has moved (durably), no old record is left and
/// later starts have nothing to migrate.
pub fn migrate(log: &PartitionLog, rewrite: &Rewrite) -> anyhow::Result<()> {
    use fjord_storage::batch::{build_batch, build_batch_as, KeyValue, Producer};
    let from = log.log_end_offset();
    let now = crate::server::now_ms();
    fn kv(chunk: &[RecordBytes]) -> Vec<KeyValue<'_>> {
        chunk.iter().map(|(k, v)| (Some(k.as_slice()), v.as_deref())).collect()
    }
    for chunk in rewrite.records.chunks(REWRITE_BATCH) {
        log.append(&build_batch(0, now, &kv(chunk)), 0, now)?;
    }
    for ((id, epoch), records) in &rewrite.open_txns {
        let producer = Producer { id: *id, epoch: *epoch, base_sequence: -1, transactional: true };
        for chunk in records.chunks(REWRITE_BATCH) {
            log.append_from_coordinator(&build_batch_as(0, now, &kv(chunk), Some(producer)), 0, now)?;
        }
    }
    log.sync_now()?;
    log.delete_records(from)?;
    Ok(())
}
