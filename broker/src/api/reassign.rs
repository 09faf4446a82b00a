//! AlterPartitionReassignments and ListPartitionReassignments (KIP-455). A reassignment is
//! recorded by the controller and carried out by each partition's leader as Raft membership
//! changes (`fjord_replication::reassign`): the answer to Alter says the reassignment started,
//! List shows it until the new replicas alone hold the partition, as Kafka's do.

use std::collections::BTreeMap;
use std::sync::Arc;

use fjord_replication::controller::{Outcome, Reassignment, Request};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::*;

use super::metadata::{str, topic_name};
use crate::server::Broker;

type PartitionError = (ResponseError, Option<String>);

pub async fn alter(
    broker: Arc<Broker>,
    _h: &RequestHeader,
    req: AlterPartitionReassignmentsRequest,
) -> Option<AlterPartitionReassignmentsResponse> {
    // Every entry's answer in request order: an error, or `None` for success.
    let mut answers: Vec<(TopicName, i32, Option<PartitionError>)> = Vec::new();
    let mut entries: Vec<Reassignment> = Vec::new();
    // Which answer each submitted group's outcome goes to.
    let mut slot: BTreeMap<u64, usize> = BTreeMap::new();
    for t in &req.topics {
        let name = t.name.0.to_string();
        for p in &t.partitions {
            let i = answers.len();
            let target = p.replicas.as_ref().map(|r| r.iter().map(|b| b.0).collect::<Vec<i32>>());
            let error = match &broker.cluster {
                Some(c) => {
                    let group =
                        c.read(|m| m.partitions_of(&name).find(|(_, x)| x.index == p.partition_index).map(|(g, _)| g));
                    match group {
                        None => Some(unknown(&name, p.partition_index)),
                        Some(g) if slot.contains_key(&g) => Some((
                            ResponseError::InvalidRequest,
                            Some(format!("{name}-{} is named twice in the request", p.partition_index)),
                        )),
                        Some(g) => {
                            slot.insert(g, i);
                            entries.push(Reassignment { group_id: g, target });
                            None
                        }
                    }
                }
                None => single_node(&broker, &name, p.partition_index, target.as_deref()),
            };
            answers.push((t.name.clone(), p.partition_index, error));
        }
    }
    if let (Some(c), false) = (&broker.cluster, entries.is_empty()) {
        let request = Request::AlterReassignments {
            entries,
            allow_replication_factor_change: req.allow_replication_factor_change,
        };
        let failed: Option<PartitionError> = match c.submit(request).await {
            Ok(Some(Outcome::ReassignmentsAltered { skipped, .. })) => {
                for (g, e) in skipped {
                    if let Some(i) = slot.get(&g) {
                        let code =
                            ResponseError::try_from_code(e.code.code()).unwrap_or(ResponseError::UnknownServerError);
                        answers[*i].2 = Some((code, Some(e.message)));
                    }
                }
                None
            }
            Ok(other) => {
                tracing::error!(?other, "the controller answered a reassignment with another outcome");
                Some((ResponseError::UnknownServerError, Some("unexpected answer from the controller".into())))
            }
            Err(e) => Some((e.code, Some(e.message))),
        };
        if let Some(e) = failed {
            for i in slot.values() {
                answers[*i].2 = Some(e.clone());
            }
        }
    }
    let mut by_topic: Vec<ReassignableTopicResponse> = Vec::new();
    for (topic, partition, error) in answers {
        let (error_code, error_message) = match error {
            None => (0, None),
            Some((e, m)) => (e.code(), m.map(|m| str(&m))),
        };
        let r = mk!(ReassignablePartitionResponse {
            partition_index: partition,
            error_code: error_code,
            error_message: error_message
        });
        match by_topic.last_mut().filter(|t| t.name == topic) {
            Some(t) => t.partitions.push(r),
            None => by_topic.push(mk!(ReassignableTopicResponse { name: topic, partitions: vec![r] })),
        }
    }
    Some(mk!(AlterPartitionReassignmentsResponse {
        allow_replication_factor_change: req.allow_replication_factor_change,
        responses: by_topic,
    }))
}

fn unknown(topic: &str, partition: i32) -> PartitionError {
    (ResponseError::UnknownTopicOrPartition, Some(format!("Partition {topic}-{partition} does not exist")))
}

/// On a single node a partition's only replica is this broker: a target of just this broker
/// is a no-op, any other names a broker that does not exist, and nothing is ever in progress.
fn single_node(broker: &Broker, topic: &str, partition: i32, target: Option<&[i32]>) -> Option<PartitionError> {
    let me = broker.config.node_id;
    Some(match broker.topics.topic(topic) {
        Some(t) if partition >= 0 && partition < t.partitions => match target {
            None => (
                ResponseError::NoReassignmentInProgress,
                Some(format!("No reassignment of {topic}-{partition} is in progress")),
            ),
            Some([only]) if *only == me => return None,
            Some(other) => (
                ResponseError::InvalidReplicaAssignment,
                Some(format!(
                    "{topic}-{partition}: replicas {other:?} name brokers other than this single node ({me})"
                )),
            ),
        },
        _ => unknown(topic, partition),
    })
}

pub async fn list(
    broker: Arc<Broker>,
    _h: &RequestHeader,
    req: ListPartitionReassignmentsRequest,
) -> Option<ListPartitionReassignmentsResponse> {
    let Some(c) = &broker.cluster else { return Some(ListPartitionReassignmentsResponse::default()) };
    // Named partitions that do not exist are left out, as Kafka does.
    let named: Option<BTreeMap<String, Vec<i32>>> =
        req.topics.as_ref().map(|ts| ts.iter().map(|t| (t.name.0.to_string(), t.partition_indexes.clone())).collect());
    let mut topics: BTreeMap<String, Vec<OngoingPartitionReassignment>> = BTreeMap::new();
    c.read(|m| {
        for p in m.partitions().values().filter(|p| p.reassigning()) {
            let wanted = named.as_ref().is_none_or(|n| n.get(&p.topic).is_some_and(|ps| ps.contains(&p.index)));
            if !wanted {
                continue;
            }
            let ids = |v: Vec<i32>| v.into_iter().map(BrokerId).collect::<Vec<_>>();
            topics.entry(p.topic.clone()).or_default().push(mk!(OngoingPartitionReassignment {
                partition_index: p.index,
                replicas: ids(p.replicas.clone()),
                adding_replicas: ids(p.adding()),
                removing_replicas: ids(p.removing()),
            }));
        }
    });
    let topics = topics
        .into_iter()
        .map(|(name, mut partitions)| {
            partitions.sort_by_key(|p| p.partition_index);
            mk!(OngoingTopicReassignment { name: topic_name(&name), partitions: partitions })
        })
        .collect();
    Some(mk!(ListPartitionReassignmentsResponse { topics: topics }))
}
