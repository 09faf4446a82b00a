//! The broker's own compacted topics (`__consumer_offsets`,
//! `__transaction_state`): created on first start, replayed record by record
//! on every start, and migrated once from Fjord's old JSON records.

use std::collections::BTreeMap;

use fjord_storage::batch::BatchHeader;
use fjord_storage::records::{self, Record};
use fjord_storage::PartitionLog;

use crate::topics::Topics;

/// Creates the compacted internal topic `name` unless it exists; returns its
/// partition count (fixed at creation, as Kafka's are).
pub fn ensure(topics: &Topics, name: &str, partitions: i32) -> anyhow::Result<i32> {
    let mut configs = BTreeMap::new();
    // Only the newest record of each key matters.
    configs.insert("cleanup.policy".to_string(), "compact".to_string());
    configs.insert("segment.bytes".to_string(), (100 * 1024 * 1024).to_string());
    ensure_with(topics, name, partitions, configs)
}

/// `ensure` with the topic's own configs.
pub fn ensure_with(
    topics: &Topics,
    name: &str,
    partitions: i32,
    configs: BTreeMap<String, String>,
) -> anyhow::Result<i32> {
    if let Some(meta) = topics.topic(name) {
        return Ok(meta.partitions);
    }
    topics
        .create_internal(name, partitions, configs)
        .map_err(|e| anyhow::anyhow!("cannot create {name}: {}", e.message))?;
    Ok(partitions)
}

/// Calls `f` with every record of `log` and the header of its batch (which
/// says whether it is a control record, and whose transaction it is in),
/// control records included, in order.
pub fn replay(log: &PartitionLog, mut f: impl FnMut(&BatchHeader, Record)) -> anyhow::Result<()> {
    let mut offset = log.log_start_offset();
    // Only what is committed: reads stop at the high watermark anyway.
    let end = log.high_watermark();
    let limit = log.config().decompressed_limit();
    while offset < end {
        let read = log.read(offset, 1 << 20, end)?;
        if read.records.is_empty() {
            break;
        }
        // A read starts at the batch holding `offset`: records before it
        // (below the log start) are not replayed.
        let from = offset;
        for batch in records::decode_batches(&read.records, limit)? {
            // By the batch's last offset, not its last record's: compaction
            // may have removed that one.
            offset = offset.max(batch.header.last_offset() + 1);
            for r in batch.records.into_iter().filter(|r| r.offset >= from) {
                f(&batch.header, r);
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

/// Bytes per batch of a rewrite, well below the internal topics'
/// `max.message.bytes` (1 MiB); a larger single record goes alone.
const REWRITE_BATCH_BYTES: usize = 256 * 1024;

/// Splits `records` into runs of at most `REWRITE_BATCH_BYTES` (keys and
/// values), each with at least one record.
fn chunks_by_bytes(records: &[RecordBytes]) -> impl Iterator<Item = &[RecordBytes]> {
    let mut rest = records;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let n = rest
            .iter()
            .take_while(|(k, v)| {
                bytes += k.len() + v.as_ref().map_or(0, Vec::len);
                bytes <= REWRITE_BATCH_BYTES
            })
            .count()
            .max(1);
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// Migrates one partition whose replay met records of the old JSON format:
/// appends `rewrite` (the partition's whole live state, in the new format),
/// makes it durable, then moves the log start to the first rewritten
/// record, so nothing older is ever replayed or served again.
///
/// A crash before the log start moves leaves the old records in place: the
/// next start replays old and new records in order (the same state) and
/// migrates again. Once it has moved (durably), no old record is left and
/// later starts have nothing to migrate.
///
/// The rewrite carries `leader_epoch`, the partition's current one, as every
/// append does.
pub fn migrate(log: &PartitionLog, leader_epoch: i32, rewrite: &Rewrite) -> anyhow::Result<()> {
    use fjord_storage::batch::{build_batch, build_batch_as, KeyValue, Producer};
    let from = log.log_end_offset();
    let now = crate::server::now_ms();
    fn kv(chunk: &[RecordBytes]) -> Vec<KeyValue<'_>> {
        chunk.iter().map(|(k, v)| (Some(k.as_slice()), v.as_deref())).collect()
    }
    for chunk in chunks_by_bytes(&rewrite.records) {
        log.append(&build_batch(0, now, &kv(chunk)), leader_epoch, now)?;
    }
    for ((id, epoch), records) in &rewrite.open_txns {
        let producer = Producer { id: *id, epoch: *epoch, base_sequence: -1, transactional: true };
        for chunk in chunks_by_bytes(records) {
            log.append_from_coordinator(&build_batch_as(0, now, &kv(chunk), Some(producer)), leader_epoch, now)?;
        }
    }
    log.sync_now()?;
    log.delete_records(from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_chunks_stay_under_the_byte_budget_and_keep_every_record() {
        let big = REWRITE_BATCH_BYTES + 10;
        let records: Vec<RecordBytes> = [100, 200_000, 100_000, big, 5, 0]
            .iter()
            .enumerate()
            .map(|(i, n)| (vec![i as u8], (*n > 0).then(|| vec![0u8; *n])))
            .collect();
        let chunks: Vec<&[RecordBytes]> = chunks_by_bytes(&records).collect();
        assert_eq!(chunks.concat(), records);
        for c in &chunks {
            let bytes: usize = c.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len)).sum();
            assert!(c.len() == 1 || bytes <= REWRITE_BATCH_BYTES, "chunk of {} records, {bytes} bytes", c.len());
        }
        assert!(chunks.len() >= 3);
    }
}
