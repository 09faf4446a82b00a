//! Topic administration: CreateTopics, DeleteTopics, CreatePartitions and
//! DeleteRecords. Topic changes touch the disk, so they run off the runtime.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_records_response::{DeleteRecordsPartitionResult, DeleteRecordsTopicResult};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::*;

use super::metadata::{str, topic_name};
use super::{blocking, storage_code};
use crate::leadership::{LeaderGuard, Leadership, NO_EPOCH};
use crate::server::Broker;
use crate::topics::TopicError;

fn create_one(broker: &Broker, t: &CreatableTopic, validate_only: bool) -> Result<(uuid::Uuid, i32), TopicError> {
    let name = t.name.0.to_string();
    let rf = t.replication_factor;
    if rf < 1 && rf != -1 {
        return Err(TopicError::new(
            ResponseError::InvalidReplicationFactor,
            "Replication factor must be larger than 0, or -1 to use the default value.",
        ));
    }
    // -1 is default.replication.factor, unless an explicit assignment
    // gives the replicas (checked below); either way no more replicas than
    // live brokers, this one.
    let effective =
        if rf == -1 && t.assignments.is_empty() { broker.config.replication_factor_default() } else { rf.into() };
    if effective > 1 {
        return Err(TopicError::new(
            ResponseError::InvalidReplicationFactor,
            format!("Unable to replicate the partition {effective} time(s): The target replication factor of {effective} cannot be reached because only 1 broker(s) are registered."),
        ));
    }
    let partitions = if !t.assignments.is_empty() {
        if t.num_partitions != -1 || rf != -1 {
            return Err(TopicError::new(
                ResponseError::InvalidRequest,
                "Both numPartitions or replicationFactor and replicasAssignments were set. Both cannot be used at the same time.",
            ));
        }
        let mut idx: Vec<i32> = t.assignments.iter().map(|a| a.partition_index).collect();
        idx.sort_unstable();
        if idx.iter().enumerate().any(|(i, p)| *p != i as i32) {
            return Err(TopicError::new(
                ResponseError::InvalidReplicaAssignment,
                "Partitions must be numbered 0..n without gaps.",
            ));
        }
        if t.assignments.iter().any(|a| a.broker_ids.len() != 1 || a.broker_ids[0].0 != broker.node_id) {
            return Err(TopicError::new(
                ResponseError::InvalidReplicaAssignment,
                format!("Every partition must be assigned to broker {} alone.", broker.node_id),
            ));
        }
        idx.len() as i32
    } else if t.num_partitions == -1 {
        broker.config.num_partitions
    } else {
        t.num_partitions
    };
    let mut configs = BTreeMap::new();
    for c in &t.configs {
        if let Some(v) = &c.value {
            configs.insert(c.name.to_string(), v.to_string());
        }
    }
    let meta = broker.topics.create(&name, partitions, configs, validate_only)?;
    Ok((meta.id, meta.partitions))
}

/// Topics to restore from the bucket (`remote.restore.source`): the source resolved, its
/// partition count and configs filled in. Returns the topics that cannot be restored, with why.
async fn prepare_restores(broker: &Broker, req: &mut CreateTopicsRequest) -> BTreeMap<String, TopicError> {
    let mut errors = BTreeMap::new();
    for t in req.topics.iter_mut() {
        let mut configs = configs_of(t);
        if !configs.contains_key("remote.restore.source") {
            continue;
        }
        let partitions = if t.assignments.is_empty() { t.num_partitions } else { t.assignments.len() as i32 };
        match crate::tiered::prepare_restore(broker, partitions, &mut configs).await {
            Ok(n) => {
                if t.assignments.is_empty() {
                    t.num_partitions = n;
                }
                t.configs = configs
                    .into_iter()
                    .map(|(k, v)| {
                        create_topics_request::CreatableTopicConfig::default()
                            .with_name(str(&k))
                            .with_value(Some(str(&v)))
                    })
                    .collect();
            }
            Err(m) => {
                errors.insert(t.name.0.to_string(), TopicError::new(ResponseError::InvalidConfig, m));
            }
        }
    }
    errors
}

pub async fn create_topics(
    broker: Arc<Broker>,
    h: &RequestHeader,
    mut req: CreateTopicsRequest,
) -> Option<CreateTopicsResponse> {
    let version = h.request_api_version;
    let restore_errors = prepare_restores(&broker, &mut req).await;
    if broker.cluster.is_some() {
        let topics = cluster_create_topics(&broker, version, &req, &restore_errors).await;
        return Some(mk!(CreateTopicsResponse { topics: topics }));
    }
    let b = broker.clone();
    let topics = blocking(move || {
        let mut seen = std::collections::HashSet::new();
        let dupes: std::collections::HashSet<String> =
            req.topics.iter().map(|t| t.name.0.to_string()).filter(|n| !seen.insert(n.clone())).collect();
        req.topics
            .iter()
            .map(|t| {
                let name = t.name.0.to_string();
                // A success has a null message, as in Kafka (the schema default is "").
                let mut r = mk!(CreatableTopicResult {
                    name: t.name.clone(),
                    num_partitions: -1,
                    replication_factor: -1,
                    error_message: None
                });
                let outcome = if dupes.contains(&name) {
                    Err(TopicError::new(
                        ResponseError::InvalidRequest,
                        format!("Duplicate topic name {name} in request"),
                    ))
                } else if let Some(e) = restore_errors.get(&name) {
                    Err(e.clone())
                } else {
                    create_one(&b, t, req.validate_only)
                };
                match outcome {
                    Ok((id, partitions)) => {
                        r.topic_id = id;
                        r.num_partitions = partitions;
                        r.replication_factor = 1;
                        if version >= 5 {
                            let mut overrides = BTreeMap::new();
                            for c in &t.configs {
                                if let Some(v) = &c.value {
                                    overrides.insert(c.name.to_string(), v.to_string());
                                }
                            }
                            r.configs = Some(super::configs::created_topic_configs(&b, &overrides));
                        }
                    }
                    Err(e) => {
                        r.error_code = e.code.code();
                        r.error_message = Some(str(&e.message));
                    }
                }
                r
            })
            .collect::<Vec<_>>()
    })
    .await;
    Some(mk!(CreateTopicsResponse { topics: topics }))
}

pub async fn delete_topics(
    broker: Arc<Broker>,
    h: &RequestHeader,
    req: DeleteTopicsRequest,
) -> Option<DeleteTopicsResponse> {
    // Tiered storage: a deleted topic's objects in the bucket go too (in the background).
    let tiered = if broker.tiered.is_some() { crate::tiered::remote_topic_ids(&broker) } else { Default::default() };
    let resp = delete_topics_here(broker.clone(), h, req).await;
    if let Some(r) = &resp {
        for t in r.responses.iter().filter(|t| t.error_code == 0) {
            let Some(name) = t.name.as_ref().map(|n| n.0.to_string()) else { continue };
            if let Some(id) = tiered.get(&name) {
                tokio::spawn(crate::tiered::delete_topic_objects(broker.clone(), name, *id));
            }
        }
    }
    resp
}

async fn delete_topics_here(
    broker: Arc<Broker>,
    h: &RequestHeader,
    req: DeleteTopicsRequest,
) -> Option<DeleteTopicsResponse> {
    let version = h.request_api_version;
    if broker.cluster.is_some() {
        return Some(mk!(DeleteTopicsResponse { responses: cluster_delete_topics(&broker, version, &req).await }));
    }
    let b = broker.clone();
    let responses = blocking(move || {
        // v6 names topics by name or id; older versions by name only.
        let wanted: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
            req.topics.iter().map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)).collect()
        } else {
            req.topic_names.iter().map(|n| (Some(n.0.to_string()), uuid::Uuid::nil())).collect()
        };
        wanted
            .into_iter()
            .map(|(name, id)| {
                let resolved = match (&name, id.is_nil()) {
                    (Some(n), _) => Ok(n.clone()),
                    (None, false) => b.topic_name(id).ok_or_else(|| {
                        TopicError::new(ResponseError::UnknownTopicId, format!("Topic id {id} does not exist"))
                    }),
                    (None, true) => {
                        Err(TopicError::new(ResponseError::InvalidRequest, "Neither topic name nor id given"))
                    }
                };
                let mut r = mk!(DeletableTopicResult { name: name.as_deref().map(topic_name), topic_id: id });
                match resolved.and_then(|n| b.topics.delete(&n).map(|m| (n, m))) {
                    Ok((n, meta)) => {
                        b.groups.forget_topic(&*b, &n);
                        r.name = Some(topic_name(&n));
                        r.topic_id = meta.id;
                    }
                    Err(e) => {
                        r.error_code = e.code.code();
                        r.error_message = Some(str(&e.message));
                    }
                }
                r
            })
            .collect::<Vec<_>>()
    })
    .await;
    Some(mk!(DeleteTopicsResponse { responses: responses }))
}

pub async fn create_partitions(
    broker: Arc<Broker>,
    _h: &RequestHeader,
    req: CreatePartitionsRequest,
) -> Option<CreatePartitionsResponse> {
    if broker.cluster.is_some() {
        return Some(mk!(CreatePartitionsResponse { results: cluster_create_partitions(&broker, &req).await }));
    }
    let b = broker.clone();
    let results = blocking(move || {
        req.topics
            .iter()
            .map(|t| {
                let name = t.name.0.to_string();
                let mut r = mk!(CreatePartitionsTopicResult { name: t.name.clone() });
                let assignment_ok = t
                    .assignments
                    .as_ref()
                    .is_none_or(|a| a.iter().all(|x| x.broker_ids.len() == 1 && x.broker_ids[0].0 == b.node_id));
                let outcome = if !assignment_ok {
                    Err(TopicError::new(
                        ResponseError::InvalidReplicaAssignment,
                        format!("New partitions must be assigned to broker {} alone.", b.node_id),
                    ))
                } else {
                    b.topics.add_partitions(&name, t.count, req.validate_only)
                };
                if let Err(e) = outcome {
                    r.error_code = e.code.code();
                    r.error_message = Some(str(&e.message));
                }
                r
            })
            .collect::<Vec<_>>()
    })
    .await;
    Some(mk!(CreatePartitionsResponse { results: results }))
}

pub async fn delete_records(
    broker: Arc<Broker>,
    _h: &RequestHeader,
    req: DeleteRecordsRequest,
) -> Option<DeleteRecordsResponse> {
    if broker.cluster.is_some() {
        return Some(replicated_delete_records(&broker, req).await);
    }
    let b = broker.clone();
    let topics = blocking(move || {
        req.topics
            .iter()
            .map(|t| {
                let name = t.name.0.to_string();
                let partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let mut r =
                            mk!(DeleteRecordsPartitionResult { partition_index: p.partition_index, low_watermark: -1 });
                        if b.topics.topic(&name).is_some_and(|m| m.internal) {
                            r.error_code = ResponseError::InvalidTopicException.code();
                            return r;
                        }
                        // DeleteRecords names no leader epoch.
                        match b.lead(&name, p.partition_index, NO_EPOCH) {
                            Err(e) => r.error_code = e.code(),
                            Ok(LeaderGuard { log, .. }) => {
                                // -1 means "up to the high watermark".
                                let offset = if p.offset == -1 { log.high_watermark() } else { p.offset };
                                match log.delete_records(offset) {
                                    // With tiered storage the log may start in the bucket.
                                    Ok(_) if b.tiered.is_some() => r.low_watermark = crate::tiered::log_start(&log),
                                    Ok(lw) => r.low_watermark = lw,
                                    Err(e) => r.error_code = storage_code(&e).code(),
                                }
                            }
                        }
                        r
                    })
                    .collect();
                mk!(DeleteRecordsTopicResult { name: t.name.clone(), partitions: partitions })
            })
            .collect::<Vec<_>>()
    })
    .await;
    Some(mk!(DeleteRecordsResponse { topics: topics }))
}

/// DeleteRecords on a cluster: the partition's leader proposes a log-start entry to its Raft
/// group, and every replica moves its log start when it applies it; answered once the leader
/// has applied it (committed), with the new low watermark.
async fn replicated_delete_records(broker: &Arc<Broker>, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    // The request's own timeout bounds the wait for the commit.
    let wait = std::time::Duration::from_millis(u64::try_from(req.timeout_ms).unwrap_or(0).clamp(100, 60_000));
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let name = t.name.0.to_string();
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let mut r = mk!(DeleteRecordsPartitionResult { partition_index: p.partition_index, low_watermark: -1 });
            match delete_replicated(broker, &name, p.partition_index, p.offset, wait).await {
                Ok(low) => r.low_watermark = low,
                Err(e) => r.error_code = e.code(),
            }
            partitions.push(r);
        }
        topics.push(mk!(DeleteRecordsTopicResult { name: t.name.clone(), partitions: partitions }));
    }
    mk!(DeleteRecordsResponse { topics: topics })
}

async fn delete_replicated(
    broker: &Broker,
    topic: &str,
    partition: i32,
    offset: i64,
    wait: std::time::Duration,
) -> Result<i64, ResponseError> {
    // Kafka refuses DeleteRecords on internal topics: the coordinators replay them from the
    // log start, and what went would be forgotten (open transactions never ended).
    let internal = broker.cluster.as_ref().and_then(|c| c.is_internal(topic));
    if internal.unwrap_or_else(|| broker.topics.topic(topic).is_some_and(|m| m.internal)) {
        return Err(ResponseError::InvalidTopicException);
    }
    let LeaderGuard { log, epoch, raft } = broker.lead(topic, partition, NO_EPOCH)?;
    // The low watermark clients see: with tiered storage the log may start in the bucket, and
    // records deleted there go too (the log start entry raises the manifest's floor).
    let low = |log: &fjord_storage::PartitionLog| match &broker.tiered {
        Some(_) => crate::tiered::log_start(log),
        None => log.log_start_offset(),
    };
    let Some(w) = raft else {
        // A topic of this node's own registry (none in a cluster, but kept consistent).
        let offset = if offset == -1 { log.high_watermark() } else { offset };
        return log.delete_records(offset).map(|_| low(&log)).map_err(|e| storage_code(&e));
    };
    let hw = log.high_watermark();
    // -1 means "up to the high watermark".
    let offset = if offset == -1 { hw } else { offset };
    if offset < 0 || offset > hw {
        return Err(ResponseError::OffsetOutOfRange);
    }
    if offset <= low(&log) {
        return Ok(low(&log));
    }
    let batch = fjord_replication::partition::entry::log_start_batch(offset);
    let written = w.proposer.enqueue(&w.raft, &log, batch, epoch, wait);
    match tokio::time::timeout(wait, written).await {
        Ok(Ok(Ok(_))) => Ok(low(&log)),
        Ok(Ok(Err(fjord_replication::partition::produce::ProduceError::TimedOut(_)))) | Err(_) => {
            Err(ResponseError::RequestTimedOut)
        }
        Ok(Ok(Err(fjord_replication::partition::produce::ProduceError::Log(e)))) => Err(storage_code(&e)),
        Ok(_) => Err(ResponseError::NotLeaderOrFollower),
    }
}

// ---- in a cluster: topics change through the controller quorum -------------------------

fn configs_of(t: &CreatableTopic) -> BTreeMap<String, String> {
    t.configs.iter().filter_map(|c| c.value.as_ref().map(|v| (c.name.to_string(), v.to_string()))).collect()
}

async fn cluster_create_topics(
    broker: &Arc<Broker>,
    version: i16,
    req: &CreateTopicsRequest,
    restore_errors: &BTreeMap<String, TopicError>,
) -> Vec<CreatableTopicResult> {
    let Some(cluster) = &broker.cluster else { return Vec::new() };
    let mut seen = std::collections::HashSet::new();
    let dupes: std::collections::HashSet<String> =
        req.topics.iter().map(|t| t.name.0.to_string()).filter(|n| !seen.insert(n.clone())).collect();
    let mut results = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let name = t.name.0.to_string();
        let mut r = mk!(CreatableTopicResult {
            name: t.name.clone(),
            num_partitions: -1,
            replication_factor: -1,
            error_message: None
        });
        let new = fjord_replication::controller::NewTopic {
            name: name.clone(),
            num_partitions: t.num_partitions,
            replication_factor: t.replication_factor,
            assignments: t
                .assignments
                .iter()
                .map(|a| (a.partition_index, a.broker_ids.iter().map(|b| b.0).collect()))
                .collect(),
            configs: configs_of(t),
            internal: false,
        };
        let outcome = if dupes.contains(&name) {
            Err(TopicError::new(ResponseError::InvalidRequest, format!("Duplicate topic name {name} in request")))
        } else if let Some(e) = restore_errors.get(&name) {
            Err(e.clone())
        } else if let Err(m) = crate::topic_config::validate_combination(&new.configs) {
            Err(TopicError::new(ResponseError::InvalidConfig, m))
        } else if req.validate_only {
            cluster.validate_create(&new).map(|_| None)
        } else {
            cluster.submit(fjord_replication::controller::Request::CreateTopic(new.clone())).await
        };
        match outcome {
            Ok(created) => {
                if let Some(fjord_replication::controller::Outcome::TopicCreated { topic_id, groups, .. }) = created {
                    r.topic_id = topic_id;
                    r.num_partitions = groups.len() as i32;
                } else {
                    r.num_partitions =
                        if new.num_partitions == -1 { cluster.defaults().num_partitions } else { new.num_partitions };
                }
                r.replication_factor = match new.assignments.first() {
                    Some((_, replicas)) => replicas.len() as i16,
                    None if new.replication_factor == -1 => cluster.defaults().replication_factor,
                    None => new.replication_factor,
                };
                if version >= 5 {
                    r.configs = Some(super::configs::created_topic_configs(broker, &new.configs));
                }
            }
            Err(e) => {
                r.error_code = e.code.code();
                r.error_message = Some(str(&e.message));
            }
        }
        results.push(r);
    }
    results
}

async fn cluster_delete_topics(
    broker: &Arc<Broker>,
    version: i16,
    req: &DeleteTopicsRequest,
) -> Vec<DeletableTopicResult> {
    let Some(cluster) = &broker.cluster else { return Vec::new() };
    let wanted: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
        req.topics.iter().map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)).collect()
    } else {
        req.topic_names.iter().map(|n| (Some(n.0.to_string()), uuid::Uuid::nil())).collect()
    };
    let mut results = Vec::with_capacity(wanted.len());
    for (name, id) in wanted {
        let resolved = match (&name, id.is_nil()) {
            (Some(n), _) => Ok(n.clone()),
            (None, false) => cluster
                .read(|m| m.topics().iter().find(|(_, t)| t.id == id).map(|(n, _)| n.clone()))
                .ok_or_else(|| TopicError::new(ResponseError::UnknownTopicId, format!("Topic id {id} does not exist"))),
            (None, true) => Err(TopicError::new(ResponseError::InvalidRequest, "Neither topic name nor id given")),
        };
        let mut r = mk!(DeletableTopicResult { name: name.as_deref().map(topic_name), topic_id: id });
        let outcome = match resolved {
            Ok(n) => cluster
                .submit(fjord_replication::controller::Request::DeleteTopic { name: n.clone() })
                .await
                .map(|o| (n, o)),
            Err(e) => Err(e),
        };
        match outcome {
            Ok((n, o)) => {
                r.name = Some(topic_name(&n));
                if let Some(fjord_replication::controller::Outcome::TopicDeleted { topic_id, .. }) = o {
                    r.topic_id = topic_id;
                }
            }
            Err(e) => {
                r.error_code = e.code.code();
                r.error_message = Some(str(&e.message));
            }
        }
        results.push(r);
    }
    results
}

async fn cluster_create_partitions(
    broker: &Arc<Broker>,
    req: &CreatePartitionsRequest,
) -> Vec<CreatePartitionsTopicResult> {
    let Some(cluster) = &broker.cluster else { return Vec::new() };
    let mut results = Vec::with_capacity(req.topics.len());
    for t in &req.topics {
        let name = t.name.0.to_string();
        let mut r = mk!(CreatePartitionsTopicResult { name: t.name.clone() });
        let assignments: Option<Vec<Vec<i32>>> =
            t.assignments.as_ref().map(|a| a.iter().map(|x| x.broker_ids.iter().map(|b| b.0).collect()).collect());
        let outcome = if req.validate_only {
            cluster.validate_create_partitions(&name, t.count, assignments.as_deref())
        } else {
            let req =
                fjord_replication::controller::Request::CreatePartitions { topic: name, count: t.count, assignments };
            cluster.submit(req).await.map(|_| ())
        };
        if let Err(e) = outcome {
            r.error_code = e.code.code();
            r.error_message = Some(str(&e.message));
        }
        results.push(r);
    }
    results
}

/// ElectLeaders' election types (KIP-460).
const PREFERRED: i8 = 0;
const UNCLEAN: i8 = 1;

/// ElectLeaders. PREFERRED hands each partition's leadership to its preferred replica (the
/// first), through the partition's current leader, and answers once the metadata names it (or
/// REQUEST_TIMED_OUT after the request's timeout). UNCLEAN is refused for a partition without
/// a leader (ELIGIBLE_LEADERS_NOT_AVAILABLE, with a message): a Raft group elects only a replica holding every committed entry, and making
/// another one leader could drop acknowledged records. A partition that has a leader needs no
/// unclean election (ELECTION_NOT_NEEDED, as Kafka answers). On a single node every partition
/// has its only replica as leader. With no partitions named, every partition is considered and
/// only those an election was needed for are listed.
pub async fn elect_leaders(
    broker: Arc<Broker>,
    _h: &RequestHeader,
    req: ElectLeadersRequest,
) -> Option<ElectLeadersResponse> {
    use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
    // The request's timeout bounds the whole request.
    let wait = std::time::Duration::from_millis(u64::try_from(req.timeout_ms).unwrap_or(0).clamp(100, 60_000));
    let deadline = tokio::time::Instant::now() + wait;
    let all = req.topic_partitions.is_none();
    let mut resp = ElectLeadersResponse::default();
    if req.election_type != PREFERRED && req.election_type != UNCLEAN {
        resp.error_code = ResponseError::InvalidRequest.code();
        return Some(resp);
    }
    // (topic, partitions) to consider: as named, or every partition known.
    let wanted: Vec<(TopicName, Vec<i32>)> = match &req.topic_partitions {
        // A partition named twice is elected (and listed) once.
        Some(tps) => tps
            .iter()
            .map(|t| {
                let mut ps = t.partitions.clone();
                ps.sort_unstable();
                ps.dedup();
                (t.topic.clone(), ps)
            })
            .collect(),
        None => match &broker.cluster {
            Some(c) => {
                let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
                c.read(|m| {
                    for p in m.partitions().values() {
                        by_topic.entry(p.topic.clone()).or_default().push(p.index);
                    }
                });
                by_topic.into_iter().map(|(t, ps)| (topic_name(&t), ps)).collect()
            }
            None => {
                broker.topics.list().into_iter().map(|(t, m)| (topic_name(&t), (0..m.partitions).collect())).collect()
            }
        },
    };
    for (topic, partitions) in wanted {
        let name = topic.0.to_string();
        let mut results = Vec::with_capacity(partitions.len());
        for p in partitions {
            let outcome: Result<(), (ResponseError, Option<&str>)> = match &broker.cluster {
                Some(c) => {
                    let leader =
                        c.read(|m| m.partitions().values().find(|x| x.topic == name && x.index == p).map(|x| x.leader));
                    match (leader, req.election_type) {
                        (None, _) => Err((ResponseError::UnknownTopicOrPartition, None)),
                        (Some(Some(_)), UNCLEAN) => Err((ResponseError::ElectionNotNeeded, None)),
                        (Some(None), UNCLEAN) => Err((
                            ResponseError::EligibleLeadersNotAvailable,
                            Some(
                                "Unclean leader election is not possible: partitions are replicated with Raft, which \
                                 elects only a replica holding every acknowledged record. Bring back a majority of \
                                 the partition's replicas.",
                            ),
                        )),
                        (Some(_), _) => c.elect_preferred(&name, p, deadline).await.map_err(|e| (e, None)),
                    }
                }
                None => match broker.topics.topic(&name) {
                    Some(t) if p >= 0 && p < t.partitions => Err((ResponseError::ElectionNotNeeded, None)),
                    _ => Err((ResponseError::UnknownTopicOrPartition, None)),
                },
            };
            if all && matches!(outcome, Err((ResponseError::ElectionNotNeeded, _))) {
                continue;
            }
            let (code, message) = match outcome {
                Ok(()) => (0, None),
                Err((e, m)) => (e.code(), m.map(str)),
            };
            results.push(mk!(PartitionResult { partition_id: p, error_code: code, error_message: message }));
        }
        if !results.is_empty() || !all {
            resp.replica_election_results.push(mk!(ReplicaElectionResult { topic: topic, partition_result: results }));
        }
    }
    Some(resp)
}
