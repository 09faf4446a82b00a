//! Produce: validate each partition's batches, append them verbatim with
//! offsets assigned, and (per the fsync policy) wait for the group-committed
//! fsync before answering. acks=0 gets no response at all.

use std::sync::Arc;
use std::time::Duration;

use fjord_replication::partition::produce::ProduceError;

use fjord_storage::batch::BatchHeader;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::*;

use super::metadata::str;
use super::storage_code;
use crate::config::FsyncPolicy;
use crate::leadership::{Leadership, RaftWriter, NO_EPOCH};
use crate::server::{now_ms, Broker};
use crate::topic_config;

fn failed(index: i32, e: ResponseError, msg: Option<String>) -> PartitionProduceResponse {
    mk!(PartitionProduceResponse {
        index: index,
        error_code: e.code(),
        base_offset: -1,
        error_message: msg.map(|m| str(&m))
    })
}

/// A refusal by the log's rules, with KIP-467's per-record errors.
fn refused(index: i32, e: &fjord_storage::LogError) -> PartitionProduceResponse {
    let mut r = failed(index, storage_code(e), Some(e.to_string()));
    if let fjord_storage::LogError::RecordErrors { records, .. } = e {
        r.record_errors = records
            .iter()
            .map(|x| {
                mk!(BatchIndexAndErrorMessage {
                    batch_index: x.batch_index,
                    batch_index_error_message: Some(str(&x.message))
                })
            })
            .collect();
    }
    r
}

/// A write to a replicated partition, through its leader's proposer.
async fn propose(
    writer: RaftWriter,
    log: Arc<fjord_storage::PartitionLog>,
    records: bytes::Bytes,
    wait: Duration,
) -> Result<fjord_storage::AppendInfo, ProduceError> {
    writer.proposer.produce(&writer.raft, &log, records, wait).await
}

/// Bytes of record batches written: in all, and per topic (Kafka's BytesInPerSec).
fn count_bytes_in(topic: &str, size: usize) {
    metrics::counter!("fjord_produced_bytes_total").increment(size as u64);
    metrics::counter!("fjord_topic_bytes_in_total", "topic" => topic.to_string()).increment(size as u64);
}

pub async fn handle(broker: Arc<Broker>, _h: &RequestHeader, req: ProduceRequest) -> Option<ProduceResponse> {
    let acks = req.acks;
    let txn_id = req.transactional_id.as_ref().map(|id| id.0.to_string());
    let txn_id = txn_id.as_deref();
    let durable = match broker.config.fsync {
        FsyncPolicy::Always => true,
        FsyncPolicy::AcksAll => acks == -1,
        FsyncPolicy::Never => false,
    };
    let mut responses = Vec::with_capacity(req.topic_data.len());
    let mut syncs = Vec::new();
    // Writes to replicated partitions, answered when committed: (topic, partition) positions in
    // `responses` and the write.
    let mut proposals = Vec::new();
    // Kafka's `timeout.ms`: how long the leader waits for the replicas (at least a little, so
    // that a zero does not refuse every write, and at most a minute, so that a request cannot
    // hold a partition's writes for days).
    let wait = Duration::from_millis(u64::try_from(req.timeout_ms).unwrap_or(0).clamp(100, 60_000));
    for topic in req.topic_data {
        let name = topic.name.0.to_string();
        let meta = broker.topics.topic(&name);
        let mut parts = Vec::with_capacity(topic.partition_data.len());
        for pd in topic.partition_data {
            let idx = pd.index;
            if !matches!(acks, -1..=1) {
                parts.push(failed(idx, ResponseError::InvalidRequiredAcks, None));
                continue;
            }
            // Produce carries no leader epoch: being the leader is enough.
            let (log, epoch, raft) = match broker.lead(&name, idx, NO_EPOCH) {
                Ok(g) => (g.log, g.epoch, g.raft),
                Err(e) => {
                    parts.push(failed(idx, e, None));
                    continue;
                }
            };
            let cfg = log.config();
            // Tiered storage behind by more than the node may keep: refused (retriable) until
            // the bucket takes the backlog, rather than filling the disk. NOT_ENOUGH_REPLICAS is
            // the retriable error clients know was not persisted: KAFKA_STORAGE_ERROR would
            // count as possibly written, and an idempotent producer (librdkafka) would move its
            // sequence past batches the log never took, then fail fatally on the next one.
            if let Some(why) =
                broker.tiered.as_ref().and_then(|t| t.produce_refusal(&name, idx, &log, cfg.remote_restore))
            {
                metrics::counter!("fjord_remote_produce_refused_total").increment(1);
                parts.push(failed(idx, ResponseError::NotEnoughReplicas, Some(why)));
                continue;
            }
            let min_isr = cfg.min_insync_replicas;
            // Only acks=all with min.insync.replicas above 1 needs the ISR: sampling it takes a
            // lock and a look at the group's metrics, which most produces can skip.
            let replicas_in_sync = || match (&raft, &broker.cluster) {
                (Some(w), Some(c)) => w.proposer.in_sync(&w.raft, c.node_id()).len(),
                _ => 1,
            };
            if acks == -1 && min_isr > 1 && replicas_in_sync() < min_isr as usize {
                let replicas_in_sync = replicas_in_sync();
                let msg = format!(
                    "min.insync.replicas is {min_isr} but the partition has {replicas_in_sync} in-sync replica(s)"
                );
                parts.push(failed(idx, ResponseError::NotEnoughReplicas, Some(msg)));
                continue;
            }
            let internal = match broker.cluster.as_ref().and_then(|c| c.is_internal(&name)) {
                Some(internal) => internal,
                None => meta.as_ref().is_some_and(|m| m.internal),
            };
            if internal {
                let msg = format!("{name} is an internal topic written only by the broker");
                parts.push(failed(idx, ResponseError::InvalidTopicException, Some(msg)));
                continue;
            }
            let Some(records) = pd.records else {
                parts.push(failed(idx, ResponseError::CorruptMessage, Some("no record batch".into())));
                continue;
            };
            // A transactional produce carries one batch (storage refuses more),
            // so its first header tells whose transaction it belongs to.
            if let Some(h) = BatchHeader::parse(&records).ok().filter(|h| h.is_transactional()) {
                if let Some(e) = broker.txns.check_produce(txn_id, (h.producer_id, h.producer_epoch), &name, idx) {
                    let msg = format!("partition {name}-{idx} is not in producer {}'s open transaction", h.producer_id);
                    parts.push(failed(idx, e, Some(msg)));
                    continue;
                }
            }
            let size = records.len();
            if let Some(writer) = raft {
                proposals.push((responses.len(), parts.len(), idx, size, propose(writer, log, records, wait)));
                parts.push(failed(idx, ResponseError::UnknownServerError, None));
                continue;
            }
            match log.append(&records, epoch, now_ms()) {
                Ok(info) => {
                    count_bytes_in(&name, size);
                    // flush.messages / flush.ms=0 force a sync whatever the acks.
                    let flush = topic_config::flush_due(&cfg, info.last_offset + 1 - log.flushed_offset());
                    if durable || flush {
                        let log = log.clone();
                        syncs.push(async move { log.sync(info.last_offset + 1).await });
                    }
                    parts.push(mk!(PartitionProduceResponse {
                        index: idx,
                        base_offset: info.base_offset,
                        log_append_time_ms: info.log_append_time,
                        log_start_offset: info.log_start_offset
                    }));
                }
                Err(e) => {
                    tracing::debug!(topic = %name, partition = idx, error = %e, "produce rejected");
                    parts.push(refused(idx, &e));
                }
            }
        }
        responses.push(mk!(TopicProduceResponse { name: topic.name, partition_responses: parts }));
    }
    // Every replicated partition's write proceeds at once; each is answered when its group
    // commits it (the group commit makes it durable on a majority: no local fsync is awaited).
    let positions: Vec<_> = proposals.iter().map(|(t, p, idx, size, _)| (*t, *p, *idx, *size)).collect();
    let written = futures::future::join_all(proposals.into_iter().map(|(.., f)| f)).await;
    for ((t, p, idx, size), result) in positions.into_iter().zip(written) {
        responses[t].partition_responses[p] = match result {
            Ok(info) => {
                count_bytes_in(responses[t].name.0.as_str(), size);
                mk!(PartitionProduceResponse {
                    index: idx,
                    base_offset: info.base_offset,
                    log_append_time_ms: info.log_append_time,
                    log_start_offset: info.log_start_offset
                })
            }
            Err(ProduceError::Log(e)) => refused(idx, &e),
            Err(e @ ProduceError::NotLeader) => failed(idx, ResponseError::NotLeaderOrFollower, Some(e.to_string())),
            Err(e @ ProduceError::TimedOut(_)) => failed(idx, ResponseError::RequestTimedOut, Some(e.to_string())),
            Err(e @ ProduceError::Failed(_)) => {
                tracing::error!(partition = idx, error = %e, "replicated write failed");
                failed(idx, ResponseError::KafkaStorageError, Some(e.to_string()))
            }
        };
    }
    let results = futures::future::join_all(syncs).await;
    if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
        // The data is in the log but not known to be durable: say so
        // rather than acknowledge it.
        tracing::error!(error = %e, "fsync failed");
        for t in &mut responses {
            for p in &mut t.partition_responses {
                if p.error_code == 0 {
                    p.error_code = ResponseError::KafkaStorageError.code();
                }
            }
        }
    }
    if acks == 0 {
        return None;
    }
    Some(mk!(ProduceResponse { responses: responses }))
}
