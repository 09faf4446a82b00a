//! KIP-848 consumer group APIs: ConsumerGroupHeartbeat and
//! ConsumerGroupDescribe. The logic is in `crate::coordinator::consumer`.

use std::collections::BTreeSet;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_group_describe_response::{
    Assignment as DescribedAssignment, DescribedGroup, Member, TopicPartitions as DescribedTopicPartitions,
};
use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
use kafka_protocol::messages::*;

use super::acl;
use super::metadata::{str, topic_name};
use crate::connection::PEER;
use crate::coordinator::consumer::{HeartbeatRequest, TopicPartition};
use crate::server::Broker;

/// Groups (topic id → partitions) in the wire shape.
fn by_topic(set: &BTreeSet<TopicPartition>) -> Vec<(uuid::Uuid, Vec<i32>)> {
    let mut out: Vec<(uuid::Uuid, Vec<i32>)> = Vec::new();
    for (id, p) in set {
        match out.last_mut() {
            Some((last, ps)) if last == id => ps.push(*p),
            _ => out.push((*id, vec![*p])),
        }
    }
    out
}

pub async fn heartbeat(
    broker: Arc<Broker>,
    h: &RequestHeader,
    req: ConsumerGroupHeartbeatRequest,
) -> Option<ConsumerGroupHeartbeatResponse> {
    let group_id = req.group_id.0.to_string();
    // In a cluster the group belongs to the leader of its `__consumer_offsets` partition.
    if let Err(e) = broker.groups.serves(&group_id) {
        return Some(mk!(ConsumerGroupHeartbeatResponse { error_code: e.code(), member_epoch: -1 }));
    }
    if req.subscribed_topic_regex.as_ref().is_some_and(|r| !r.is_empty()) {
        // Better a clear error than a member that silently gets nothing.
        return Some(mk!(ConsumerGroupHeartbeatResponse {
            error_code: ResponseError::InvalidRequest.code(),
            error_message: Some(str("regular expression subscriptions are not supported yet")),
            member_epoch: -1
        }));
    }
    let classic_in_use = broker.groups.with_group(&group_id, |g| g.is_some_and(|g| !g.members.is_empty()));
    let result = if classic_in_use {
        None
    } else {
        let hb = HeartbeatRequest {
            group_id,
            member_id: req.member_id.to_string(),
            member_epoch: req.member_epoch,
            instance_id: req.instance_id.as_ref().map(|s| s.to_string()),
            rack_id: req.rack_id.as_ref().map(|s| s.to_string()),
            client_id: h.client_id.as_ref().map(|s| s.to_string()).unwrap_or_default(),
            client_host: PEER.try_with(|p| format!("/{}", p.ip())).unwrap_or_default(),
            subscribed: req.subscribed_topic_names.as_ref().map(|v| v.iter().map(|t| t.0.to_string()).collect()),
            assignor: req.server_assignor.as_ref().map(|s| s.to_string()),
            owned: req
                .topic_partitions
                .as_ref()
                .map(|tps| tps.iter().flat_map(|t| t.partitions.iter().map(move |p| (t.topic_id, *p))).collect()),
        };
        Some(broker.consumer_groups.heartbeat(&*broker, hb))
    };
    let Some(r) = result else {
        let msg = "the group uses the classic protocol";
        return Some(mk!(ConsumerGroupHeartbeatResponse {
            error_code: ResponseError::InconsistentGroupProtocol.code(),
            error_message: Some(str(msg)),
            member_epoch: -1
        }));
    };
    let mut resp = mk!(ConsumerGroupHeartbeatResponse {
        member_id: Some(str(&r.member_id)),
        member_epoch: r.member_epoch,
        heartbeat_interval_ms: broker.config.group_consumer_heartbeat_interval_ms
    });
    if let Some((e, msg)) = r.error {
        resp.error_code = e.code();
        resp.error_message = Some(str(&msg));
        return Some(resp);
    }
    resp.assignment = r.assignment.map(|set| {
        let topic_partitions = by_topic(&set)
            .into_iter()
            .map(|(id, partitions)| mk!(TopicPartitions { topic_id: id, partitions: partitions }))
            .collect();
        mk!(Assignment { topic_partitions: topic_partitions })
    });
    Some(resp)
}

fn described(broker: &Broker, set: &BTreeSet<TopicPartition>) -> DescribedAssignment {
    let topic_partitions = by_topic(set)
        .into_iter()
        .map(|(id, partitions)| {
            let name = broker.topic_name(id).unwrap_or_default();
            mk!(DescribedTopicPartitions { topic_id: id, topic_name: topic_name(&name), partitions: partitions })
        })
        .collect();
    mk!(DescribedAssignment { topic_partitions: topic_partitions })
}

pub async fn describe(
    broker: Arc<Broker>,
    _h: &RequestHeader,
    req: ConsumerGroupDescribeRequest,
) -> Option<ConsumerGroupDescribeResponse> {
    let ops = acl::if_requested(req.include_authorized_operations, acl::GROUP_OPERATIONS);
    let groups = req
        .group_ids
        .iter()
        .map(|gid| {
            broker.consumer_groups.with_group(&gid.0, |g| match g {
                None => mk!(DescribedGroup {
                    group_id: gid.clone(),
                    error_code: ResponseError::GroupIdNotFound.code(),
                    error_message: Some(str("no such consumer group"))
                }),
                Some(g) => {
                    let members = g
                        .members
                        .values()
                        .map(|m| {
                            let target = g.target.get(&m.member_id).cloned().unwrap_or_default();
                            mk!(Member {
                                member_id: str(&m.member_id),
                                instance_id: m.instance_id.as_deref().map(str),
                                rack_id: m.rack_id.as_deref().map(str),
                                member_epoch: m.epoch,
                                client_id: str(&m.client_id),
                                client_host: str(&m.client_host),
                                subscribed_topic_names: m.subscribed.iter().map(|t| topic_name(t)).collect(),
                                assignment: described(&broker, &m.assigned),
                                target_assignment: described(&broker, &target)
                            })
                        })
                        .collect();
                    mk!(DescribedGroup {
                        group_id: gid.clone(),
                        group_state: str(g.state()),
                        group_epoch: g.epoch,
                        assignment_epoch: g.assignment_epoch,
                        assignor_name: str(&g.assignor),
                        members: members
                    })
                }
            })
        })
        .map(|mut g| {
            if g.error_code == 0 {
                g.authorized_operations = ops;
            }
            g
        })
        .collect();
    Some(mk!(ConsumerGroupDescribeResponse { groups: groups }))
}
