//! Fetch: byte ranges of the log (zero-copy slices of the mapped segments)
//! up to the high watermark, with long polls woken by appends, response and
//! per-partition size limits, and incremental fetch sessions.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fjord_storage::remote::RemoteSegment;
use fjord_storage::{LogError, PartitionLog};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::FetchTopic;
use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::*;
use uuid::Uuid;

use super::fetch_session::{CachedPartition, SessionError};
use super::metadata::topic_name;
use crate::dispatch::WithFiles;
use crate::frame::{FileSlice, SENDFILE_MIN};
use crate::leadership::Leadership;
use crate::server::Broker;

const INITIAL_EPOCH: i32 = 0;
const FINAL_EPOCH: i32 = -1;

struct Target {
    part: CachedPartition,
    /// The log, or why this partition cannot be read here (unknown, or not
    /// led at the epoch the client named).
    log: Result<Arc<PartitionLog>, ResponseError>,
    /// KIP-392: the replica the leader sends this consumer to (nothing is
    /// read here for it, the response names it at once).
    preferred: Option<i32>,
}

struct Outcome {
    error: Option<ResponseError>,
    records: Bytes,
    /// The segment file and position `records` come from.
    file: Option<(Arc<std::fs::File>, u64)>,
    hw: i64,
    lso: i64,
    log_start: i64,
    /// read_committed: aborted transactions in the returned range.
    aborted: Vec<fjord_storage::producer::AbortedTxn>,
    preferred: Option<i32>,
    /// Below the local log start: the remote copy to read from (tiered storage).
    remote: Option<RemoteSegment>,
}

impl Outcome {
    /// No records, with the log's current marks: an error, or a consumer sent elsewhere.
    fn nothing_read(log: &PartitionLog, error: Option<ResponseError>) -> Outcome {
        Outcome {
            error,
            records: Bytes::new(),
            file: None,
            hw: log.high_watermark(),
            lso: log.last_stable_offset(),
            log_start: log.log_start_offset(),
            aborted: Vec::new(),
            preferred: None,
            remote: None,
        }
    }
}

/// Name and id of a fetched topic; v13+ names topics by id, and an
/// unknown id resolves to an empty name.
fn resolve(broker: &Broker, topic: &FetchTopic, version: i16) -> (String, Uuid) {
    if version >= 13 {
        (broker.topic_name(topic.topic_id).unwrap_or_default(), topic.topic_id)
    } else {
        let name = topic.topic.0.to_string();
        let id = broker.topic_id(&name).unwrap_or_default();
        (name, id)
    }
}

fn error_response(code: ResponseError, session_id: i32) -> WithFiles<FetchResponse> {
    WithFiles { resp: mk!(FetchResponse { error_code: code.code(), session_id: session_id }), files: Vec::new() }
}

fn read_all(targets: &[Target], max_bytes: i32, read_committed: bool, tiered: bool) -> (Vec<Outcome>, usize) {
    let mut budget = max_bytes.max(0) as usize;
    let mut total = 0usize;
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        let log = match &t.log {
            Ok(log) => log,
            Err(e) => {
                out.push(Outcome {
                    error: Some(*e),
                    records: Bytes::new(),
                    file: None,
                    hw: -1,
                    lso: -1,
                    log_start: -1,
                    aborted: Vec::new(),
                    preferred: None,
                    remote: None,
                });
                continue;
            }
        };
        if let Some(replica) = t.preferred {
            out.push(Outcome { preferred: Some(replica), ..Outcome::nothing_read(log, None) });
            continue;
        }
        let limit = (t.part.max_bytes.max(0) as usize).min(budget);
        let read = if read_committed {
            log.read_committed(t.part.fetch_offset, limit)
        } else {
            log.read(t.part.fetch_offset, limit, i64::MAX)
        };
        match read {
            Ok(r) => {
                let mut records = r.records;
                // KIP-74: only the first non-empty partition may exceed the
                // limits (so a big batch can always be consumed); later ones
                // wait for the next fetch.
                if records.len() > limit && total > 0 {
                    records = Bytes::new();
                }
                total += records.len();
                budget = budget.saturating_sub(records.len());
                let aborted = if read_committed && !records.is_empty() {
                    log.aborted_transactions(t.part.fetch_offset, r.last_stable_offset)
                } else {
                    Vec::new()
                };
                out.push(Outcome {
                    error: None,
                    records,
                    file: r.file,
                    hw: r.high_watermark,
                    lso: r.last_stable_offset,
                    // With tiered storage the log starts in the bucket.
                    log_start: if tiered { crate::tiered::log_start(log) } else { r.log_start_offset },
                    aborted,
                    preferred: None,
                    remote: None,
                });
            }
            Err(LogError::OffsetOutOfRange { .. })
                if tiered && crate::tiered::remote_segment_for(log, t.part.fetch_offset).is_some() =>
            {
                // Read from the bucket once this pass is over (`read_remote`); it counts as data
                // so the fetch does not wait.
                let remote = crate::tiered::remote_segment_for(log, t.part.fetch_offset);
                let limit = limit.max(1);
                budget = budget.saturating_sub(limit);
                total += limit;
                out.push(Outcome {
                    log_start: crate::tiered::log_start(log),
                    remote,
                    ..Outcome::nothing_read(log, None)
                });
            }
            Err(e) => {
                let code = match e {
                    LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
                    _ => ResponseError::KafkaStorageError,
                };
                let mut o = Outcome::nothing_read(log, Some(code));
                if tiered {
                    o.log_start = crate::tiered::log_start(log);
                }
                out.push(o);
            }
        }
    }
    (out, total)
}

/// Fills the outcomes that read below the local log start from the bucket (tiered storage). A
/// failed remote read answers KAFKA_STORAGE_ERROR, which clients retry.
async fn read_remote(
    broker: &Broker,
    targets: &[Target],
    mut outcomes: Vec<Outcome>,
    max_bytes: i32,
    read_committed: bool,
) -> Vec<Outcome> {
    let mut budget = max_bytes.max(0) as usize;
    let mut total = outcomes.iter().map(|o| o.records.len()).sum::<usize>();
    budget = budget.saturating_sub(total);
    for (t, o) in targets.iter().zip(outcomes.iter_mut()) {
        let Some(seg) = o.remote.take() else { continue };
        let limit = (t.part.max_bytes.max(0) as usize).min(budget);
        if total > 0 && limit == 0 {
            continue;
        }
        let read =
            crate::tiered::read(broker, &t.part.topic, t.part.partition, &seg, t.part.fetch_offset, limit.max(1));
        match read.await {
            Ok(records) => {
                // KIP-74 as for local reads: only the first partition may go over the limits.
                let records = if records.len() > limit && total > 0 { Bytes::new() } else { records };
                total += records.len();
                budget = budget.saturating_sub(records.len());
                if read_committed && !records.is_empty() {
                    if let Ok(log) = &t.log {
                        // Aborts recorded with the copies, and those whose markers are still
                        // only local (a transaction may start in the bucket and end after it).
                        let (from, upto) = (t.part.fetch_offset, seg.next_offset);
                        let mut aborted = log.remote_manifest().aborted(from, upto);
                        aborted.extend(log.aborted_transactions(from, upto));
                        aborted.sort_by_key(|a| a.last_offset);
                        aborted.dedup();
                        o.aborted = aborted;
                    }
                }
                o.records = records;
            }
            Err(e) => {
                tracing::warn!(topic = %t.part.topic, partition = t.part.partition, offset = t.part.fetch_offset, error = %e, "remote read failed");
                o.error = Some(ResponseError::KafkaStorageError);
            }
        }
    }
    outcomes
}

pub async fn handle(broker: Arc<Broker>, h: &RequestHeader, req: FetchRequest) -> Option<WithFiles<FetchResponse>> {
    let version = h.request_api_version;
    let mut requested = Vec::new();
    for topic in &req.topics {
        let (name, id) = resolve(&broker, topic, version);
        for p in &topic.partitions {
            requested.push(CachedPartition {
                topic: name.clone(),
                topic_id: id,
                partition: p.partition,
                fetch_offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes,
                current_leader_epoch: p.current_leader_epoch,
                last_hw: -1,
                last_log_start: -1,
            });
        }
    }
    let mut forgotten = Vec::new();
    for f in &req.forgotten_topics_data {
        let name =
            if version >= 13 { broker.topic_name(f.topic_id).unwrap_or_default() } else { f.topic.0.to_string() };
        for p in &f.partitions {
            forgotten.push((name.clone(), *p));
        }
    }

    // Work out which partitions this fetch covers and whether it is incremental.
    let (session_id, incremental, parts) =
        if version < 7 || req.session_epoch == FINAL_EPOCH || req.session_epoch == INITIAL_EPOCH {
            if version >= 7 && req.session_id != 0 {
                broker.fetch_sessions.remove(req.session_id);
            }
            let id = if version >= 7 && req.session_epoch == INITIAL_EPOCH && !requested.is_empty() {
                broker.fetch_sessions.create(requested.clone())
            } else {
                0
            };
            (id, false, requested)
        } else {
            match broker.fetch_sessions.update(req.session_id, req.session_epoch, requested, &forgotten) {
                Ok(parts) => (req.session_id, true, parts),
                Err(SessionError::NotFound) => return Some(error_response(ResponseError::FetchSessionIdNotFound, 0)),
                Err(SessionError::InvalidEpoch) => {
                    return Some(error_response(ResponseError::InvalidFetchSessionEpoch, req.session_id))
                }
            }
        };

    // KIP-392: a consumer's fetch (v11+, which carries the client's metadata) may be served by a
    // follower, and a leader configured with the rack-aware selector sends a consumer that names
    // its rack to a follower there.
    let replica_id = if version >= 15 { req.replica_state.replica_id.0 } else { req.replica_id.0 };
    let consumer = version >= 11 && replica_id < 0;
    let rack = req.rack_id.as_str().trim();
    let cluster = broker.cluster.as_ref().filter(|_| consumer);
    let selector = cluster.filter(|_| !rack.is_empty() && broker.config.rack_aware_reads());
    let targets: Vec<Target> = parts
        .into_iter()
        .map(|p| {
            if version >= 13 && p.topic.is_empty() {
                return Target { part: p, log: Err(ResponseError::UnknownTopicId), preferred: None };
            }
            let (log, preferred) = match broker.lead(&p.topic, p.partition, p.current_leader_epoch) {
                Ok(g) => {
                    let preferred = selector
                        .and_then(|c| c.preferred_read_replica(&p.topic, p.partition, rack, &g.log, p.fetch_offset));
                    (Ok(g.log), preferred)
                }
                Err(ResponseError::NotLeaderOrFollower) => {
                    let follower = cluster.map(|c| c.follower_log(&p.topic, p.partition, p.current_leader_epoch));
                    (follower.unwrap_or(Err(ResponseError::NotLeaderOrFollower)), None)
                }
                Err(e) => (Err(e), None),
            };
            Target { part: p, log, preferred }
        })
        .collect();

    let read_committed = req.isolation_level == 1;
    let tiered = broker.tiered.is_some();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(req.max_wait_ms.max(0) as u64);
    let min_bytes = req.min_bytes.max(0) as usize;
    let outcomes = loop {
        // Register for wake-ups before reading, so a high watermark move
        // (an append, on a single replica) between the read and the wait is
        // not missed.
        let logs: Vec<Arc<PartitionLog>> = targets.iter().filter_map(|t| t.log.clone().ok()).collect();
        let mut waits: Vec<_> = logs.iter().map(|l| Box::pin(l.high_watermark_moved().notified())).collect();
        for w in waits.iter_mut() {
            w.as_mut().enable();
        }
        let (outcomes, total) = read_all(&targets, req.max_bytes, read_committed, tiered);
        // A consumer sent to another replica is told at once, as an error would be.
        let has_error = outcomes.iter().any(|o| o.error.is_some() || o.preferred.is_some());
        if total >= min_bytes.max(1)
            || has_error
            || waits.is_empty()
            || tokio::time::Instant::now() >= deadline
            || min_bytes == 0
        {
            break outcomes;
        }
        tokio::select! {
            _ = futures::future::select_all(waits) => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = broker.shutting_down() => {}
        }
        if tokio::time::Instant::now() >= deadline {
            break read_all(&targets, req.max_bytes, read_committed, tiered).0;
        }
    };
    let outcomes = read_remote(&broker, &targets, outcomes, req.max_bytes, read_committed).await;

    let mut responses: Vec<FetchableTopicResponse> = Vec::new();
    let mut files = Vec::new();
    let mut sent = Vec::new();
    for (t, o) in targets.iter().zip(outcomes) {
        let changed = o.error.is_some()
            || o.preferred.is_some()
            || !o.records.is_empty()
            || o.hw != t.part.last_hw
            || o.log_start != t.part.last_log_start;
        if incremental && !changed {
            continue;
        }
        sent.push((t.part.topic.clone(), t.part.partition, o.hw, o.log_start));
        if let Some((file, position)) = o.file.filter(|_| o.records.len() >= SENDFILE_MIN) {
            files.push(FileSlice { ptr: o.records.as_ptr() as usize, len: o.records.len(), file, position });
        }
        let pd = mk!(PartitionData {
            partition_index: t.part.partition,
            error_code: o.error.map(|e| e.code()).unwrap_or(0),
            high_watermark: o.hw,
            last_stable_offset: o.lso,
            log_start_offset: o.log_start,
            preferred_read_replica: BrokerId(o.preferred.unwrap_or(-1)),
            aborted_transactions: read_committed.then(|| {
                o.aborted
                    .iter()
                    .map(|a| {
                        mk!(AbortedTransaction { producer_id: ProducerId(a.producer_id), first_offset: a.first_offset })
                    })
                    .collect()
            }),
            records: Some(o.records)
        });
        let same_topic = responses.last().is_some_and(|r: &FetchableTopicResponse| {
            if version >= 13 {
                r.topic_id == t.part.topic_id
            } else {
                r.topic.0.as_str() == t.part.topic
            }
        });
        if same_topic {
            if let Some(r) = responses.last_mut() {
                r.partitions.push(pd);
            }
        } else {
            responses.push(mk!(FetchableTopicResponse {
                topic: topic_name(&t.part.topic),
                topic_id: t.part.topic_id,
                partitions: vec![pd]
            }));
        }
    }
    if session_id != 0 {
        broker.fetch_sessions.remember(session_id, &sent);
    }
    let mut bytes = 0;
    for r in &responses {
        let topic_bytes: usize = r.partitions.iter().map(|p| p.records.as_ref().map_or(0, |r| r.len())).sum();
        if topic_bytes > 0 {
            // Per topic as Kafka's BytesOutPerSec; v13+ responses name topics by id only.
            let name = if r.topic.0.is_empty() { broker.topic_name(r.topic_id) } else { Some(r.topic.0.to_string()) };
            metrics::counter!("fjord_topic_bytes_out_total", "topic" => name.unwrap_or_default())
                .increment(topic_bytes as u64);
        }
        bytes += topic_bytes;
    }
    metrics::counter!("fjord_fetched_bytes_total").increment(bytes as u64);
    Some(WithFiles { resp: mk!(FetchResponse { session_id: session_id, responses: responses }), files })
}
