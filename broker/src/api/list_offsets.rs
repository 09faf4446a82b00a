//! ListOffsets: earliest, latest, max timestamp, and the first offset at or
//! after a timestamp (found through the time index, then inside the batch).

use std::sync::Arc;

use bytes::Bytes;
use fjord_storage::batch::BatchHeader;
use fjord_storage::{records, PartitionLog};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::*;

use crate::leadership::{LeaderGuard, Leadership};
use crate::server::Broker;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;
const LATEST_TIERED: i64 = -5;

/// Offset, timestamp and leader epoch (-1: none) of the first record in
/// `batch` (of `log`) matching `pick`.
fn find_in_batch(
    log: &PartitionLog,
    batch: Bytes,
    log_start: i64,
    pick: impl Fn(i64) -> bool,
) -> Result<Option<(i64, i64, i32)>, ResponseError> {
    let h = BatchHeader::parse(&batch).map_err(|_| ResponseError::KafkaStorageError)?;
    let epoch = h.partition_leader_epoch.max(-1);
    if h.is_log_append_time() {
        return Ok(Some((h.base_offset.max(log_start), h.max_timestamp, epoch)));
    }
    let decoded = records::decode_batch(&batch, log.config().decompressed_limit()).map_err(|e| {
        tracing::warn!(error = %e, log = %log.dir().display(), "cannot decode stored batch for a timestamp lookup");
        ResponseError::KafkaStorageError
    })?;
    Ok(decoded
        .records
        .iter()
        .find(|r| r.offset >= log_start && pick(r.timestamp))
        .map(|r| (r.offset, r.timestamp, epoch)))
}

/// Offset, timestamp and leader epoch answering `ts` on a log led at
/// `leader_epoch`; the epoch is Kafka's: the current one for the latest
/// offset, else the one the found offset was written in (-1: none).
/// `read_committed` looks no further than the last stable offset.
fn lookup(
    log: &PartitionLog,
    leader_epoch: i32,
    ts: i64,
    read_committed: bool,
) -> Result<(i64, i64, i32), ResponseError> {
    const NONE: (i64, i64, i32) = (-1, -1, -1);
    let hw = if read_committed { log.last_stable_offset() } else { log.high_watermark() };
    let start = log.log_start_offset();
    match ts {
        LATEST => Ok((hw, -1, leader_epoch)),
        EARLIEST | EARLIEST_LOCAL => Ok((start, -1, log.epoch_for_offset(start).unwrap_or(-1))),
        MAX_TIMESTAMP => {
            let Some(batch) = log.batch_with_max_timestamp() else {
                return Ok(NONE);
            };
            let max = BatchHeader::parse(&batch).map_err(|_| ResponseError::KafkaStorageError)?.max_timestamp;
            // As Kafka does: only an offset a consumer could fetch is named (on a replicated
            // log the newest batch may not be committed yet).
            Ok(find_in_batch(log, batch, start, |t| t == max)?.filter(|(o, ..)| *o < hw).unwrap_or(NONE))
        }
        t if t >= 0 => {
            let Some(batch) = log.batch_by_timestamp(t, hw) else {
                return Ok(NONE);
            };
            Ok(find_in_batch(log, batch, start, |rt| rt >= t)?.unwrap_or(NONE))
        }
        // Other special values (e.g. latest tiered, -5) have nothing to
        // point at on a broker without remote storage.
        _ => Ok(NONE),
    }
}

/// What the bucket answers for `ts` on a partition with tiered storage, None where the local
/// log answers: the earliest offset when the log starts in the bucket, the newest copied offset
/// (KIP-1005's latest tiered, -5), or a timestamp reached by data only the bucket holds.
async fn remote_lookup(
    broker: &Broker,
    topic: &str,
    partition: i32,
    log: &Arc<PartitionLog>,
    ts: i64,
) -> Result<Option<(i64, i64, i32)>, ResponseError> {
    let m = log.remote_manifest();
    let local_start = log.log_start_offset();
    let epoch_at = |offset: i64| {
        m.segments
            .iter()
            .flat_map(|s| s.epochs.iter())
            .filter(|(_, start)| *start <= offset)
            .map(|(e, _)| *e)
            .next_back()
            .unwrap_or(-1)
    };
    match ts {
        EARLIEST => {
            let start = crate::tiered::log_start(log);
            if start >= local_start {
                return Ok(None);
            }
            Ok(Some((start, -1, epoch_at(start))))
        }
        LATEST_TIERED => Ok(Some(m.end().map_or((-1, -1, -1), |e| (e - 1, -1, epoch_at(e - 1))))),
        // The largest timestamp may be in data only the bucket holds (timestamps need not grow).
        MAX_TIMESTAMP => {
            let remote_max = m
                .segments
                .iter()
                .filter(|s| s.base_offset < local_start && s.next_offset > m.floor)
                .map(|s| s.max_timestamp)
                .max()
                .unwrap_or(-1);
            let local_max = log
                .batch_with_max_timestamp()
                .and_then(|b| BatchHeader::parse(&b).ok().map(|h| h.max_timestamp))
                .unwrap_or(-1);
            tracing::debug!(topic, partition, remote_max, local_max, "max timestamp lookup");
            if remote_max < 0 || remote_max <= local_max {
                return Ok(None);
            }
            let batch =
                crate::tiered::batch_by_timestamp(broker, topic, partition, log, remote_max).await.map_err(|e| {
                    tracing::warn!(topic, partition, error = %e, "remote timestamp lookup failed");
                    ResponseError::KafkaStorageError
                })?;
            let Some(batch) = batch else { return Ok(None) };
            let start = crate::tiered::log_start(log);
            let l = log.clone();
            let found = tokio::task::spawn_blocking(move || find_in_batch(&l, batch, start, |rt| rt == remote_max))
                .await
                .map_err(|_| ResponseError::UnknownServerError)??;
            Ok(found)
        }
        t if t >= 0 => {
            let batch = crate::tiered::batch_by_timestamp(broker, topic, partition, log, t).await.map_err(|e| {
                tracing::warn!(topic, partition, error = %e, "remote timestamp lookup failed");
                ResponseError::KafkaStorageError
            })?;
            let Some(batch) = batch else { return Ok(None) };
            let start = crate::tiered::log_start(log);
            let (l, b) = (log.clone(), batch);
            let found = tokio::task::spawn_blocking(move || find_in_batch(&l, b, start, |rt| rt >= t))
                .await
                .map_err(|_| ResponseError::UnknownServerError)??;
            Ok(found)
        }
        _ => Ok(None),
    }
}

pub async fn handle(broker: Arc<Broker>, h: &RequestHeader, req: ListOffsetsRequest) -> Option<ListOffsetsResponse> {
    let mut topics = Vec::new();
    for t in req.topics {
        let name = t.name.0.to_string();
        let mut partitions = Vec::new();
        for p in t.partitions {
            let mut r = mk!(ListOffsetsPartitionResponse {
                partition_index: p.partition_index,
                timestamp: -1,
                offset: -1,
                leader_epoch: -1
            });
            // current_leader_epoch is -1 before v4, so older requests skip the check.
            match broker.lead(&name, p.partition_index, p.current_leader_epoch) {
                Err(e) => r.error_code = e.code(),
                Ok(LeaderGuard { log, epoch, .. }) => {
                    let ts = p.timestamp;
                    let committed = req.isolation_level == 1;
                    let remote = match &broker.tiered {
                        Some(_) => remote_lookup(&broker, &name, p.partition_index, &log, ts).await,
                        None => Ok(None),
                    };
                    let found = match remote {
                        Ok(Some(found)) => Ok(Ok(found)),
                        Ok(None) => tokio::task::spawn_blocking(move || lookup(&log, epoch, ts, committed)).await,
                        Err(e) => Ok(Err(e)),
                    };
                    match found {
                        Ok(Ok((offset, timestamp, leader_epoch))) => {
                            r.offset = offset;
                            r.timestamp = timestamp;
                            // leader_epoch exists from v4 on; setting it earlier is an encode error.
                            if h.request_api_version >= 4 && offset >= 0 {
                                r.leader_epoch = leader_epoch;
                            }
                        }
                        Ok(Err(e)) => r.error_code = e.code(),
                        Err(_) => r.error_code = ResponseError::UnknownServerError.code(),
                    }
                }
            }
            partitions.push(r);
        }
        topics.push(mk!(ListOffsetsTopicResponse { name: t.name, partitions: partitions }));
    }
    Some(mk!(ListOffsetsResponse { topics: topics }))
}
