//! Consumer group APIs (classic protocol): FindCoordinator, JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch, ListGroups,
//! DescribeGroups, DeleteGroups, OffsetDelete. The state machine lives in
//! `crate::coordinator::classic`; these functions translate requests and responses.

use std::collections::HashSet;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::consumer_protocol_subscription::ConsumerProtocolSubscription;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_delete_response::{OffsetDeleteResponsePartition, OffsetDeleteResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;

use super::metadata::{str, topic_name};
use super::{acl, code};
use crate::config::FsyncPolicy;
use crate::connection::PEER;
use crate::coordinator::classic::{java_hash, CommittedOffset, GroupState, JoinRequest, Reply, OFFSETS_TOPIC};
use crate::coordinator::txn::TXN_TOPIC;
use crate::server::{now_ms, Broker};

fn group_id(s: &str) -> GroupId {
    GroupId(str(s))
}

pub async fn find_coordinator(
    broker: Arc<Broker>,
    h: &RequestHeader,
    req: FindCoordinatorRequest,
) -> Option<FindCoordinatorResponse> {
    let version = h.request_api_version;
    let keys: Vec<String> = if version >= 4 {
        req.coordinator_keys.iter().map(|k| k.to_string()).collect()
    } else {
        vec![req.key.to_string()]
    };
    let mut found = Vec::with_capacity(keys.len());
    for key in &keys {
        found.push(locate(&broker, req.key_type, key).await);
    }
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .iter()
            .zip(found)
            .map(|(k, f)| {
                let (node, host, port, error, message) = answer(f);
                mk!(Coordinator {
                    key: k.clone(),
                    node_id: BrokerId(node),
                    host: str(&host),
                    port: port,
                    error_code: code(error),
                    error_message: message.map(|m| str(&m))
                })
            })
            .collect();
        return Some(mk!(FindCoordinatorResponse { coordinators: coordinators }));
    }
    let (node, host, port, error, message) = answer(found.pop().unwrap_or(Err((ResponseError::InvalidRequest, None))));
    let mut resp =
        mk!(FindCoordinatorResponse { error_code: code(error), node_id: BrokerId(node), host: str(&host), port: port });
    if version >= 1 {
        resp.error_message = message.map(|m| str(&m));
    }
    Some(resp)
}

/// A coordinator (node, host, port), or the error and message a client gets.
type Located = Result<(i32, String, i32), (ResponseError, Option<String>)>;

fn answer(found: Located) -> (i32, String, i32, Option<ResponseError>, Option<String>) {
    match found {
        Ok((node, host, port)) => (node, host, port, None, None),
        Err((e, message)) => (-1, String::new(), -1, Some(e), message),
    }
}

/// Where the coordinator of `key` is. A single node coordinates every group (key type 0) and
/// transaction (1) itself. In a cluster, a group's coordinator is the leader of its partition
/// of the replicated `__consumer_offsets` (created on the first lookup, as Kafka does);
/// transactions are refused there for now.
async fn locate(broker: &Broker, key_type: i8, key: &str) -> Located {
    let me = Ok((broker.node_id, broker.advertised_host.clone(), broker.advertised_port));
    // A group's coordinator leads its partition of `__consumer_offsets`; a transactional id's,
    // its partition of `__transaction_state`. Both topics are created on first use, as Kafka
    // creates them on the first FindCoordinator.
    let (topic, partitions) = match key_type {
        0 => (OFFSETS_TOPIC, broker.groups.partitions()),
        1 => (TXN_TOPIC, broker.txns.partitions()),
        _ => return Err((ResponseError::InvalidRequest, Some("unknown coordinator key type".to_string()))),
    };
    let Some(cluster) = &broker.cluster else { return me };
    let not_yet = |why: String| Err((ResponseError::CoordinatorNotAvailable, Some(why)));
    let count = match cluster.partition_count(topic) {
        Some(n) => n,
        None => {
            if let Err(e) = cluster.ensure_internal_topic(topic, partitions).await {
                return not_yet(format!("cannot create {topic}: {}", e.message));
            }
            return not_yet(format!("{topic} is being created"));
        }
    };
    let p = (java_hash(key) & 0x7fff_ffff) % count.max(1);
    match cluster.leader_address(topic, p) {
        // The metadata still names this node, which no longer leads (cut off from its
        // followers, or a new leader not reported yet): the client asks again shortly.
        Some((node, ..))
            if node == broker.node_id
                && crate::leadership::Leadership::lead(broker, topic, p, crate::leadership::NO_EPOCH).is_err() =>
        {
            not_yet(format!("{topic} partition {p} is moving to another leader"))
        }
        Some(found) => Ok(found),
        None => not_yet(format!("{topic} partition {p} has no leader yet")),
    }
}

pub async fn join_group(broker: Arc<Broker>, h: &RequestHeader, req: JoinGroupRequest) -> Option<JoinGroupResponse> {
    let version = h.request_api_version;
    let client_host = PEER.try_with(|p| format!("/{}", p.ip())).unwrap_or_default();
    let join = JoinRequest {
        group_id: req.group_id.0.to_string(),
        member_id: req.member_id.to_string(),
        instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
        client_id: h.client_id.as_ref().map(|s| s.to_string()).unwrap_or_default(),
        client_host,
        session_timeout_ms: req.session_timeout_ms,
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        rebalance_timeout_ms: if version == 0 { req.session_timeout_ms } else { req.rebalance_timeout_ms },
        protocol_type: req.protocol_type.to_string(),
        protocols: req.protocols.iter().map(|p| (p.name.to_string(), p.metadata.clone())).collect(),
        require_known_member_id: version >= 4,
    };
    if broker.consumer_groups.with_group(&join.group_id, |g| g.is_some_and(|g| !g.members.is_empty())) {
        let mut resp =
            mk!(JoinGroupResponse { error_code: ResponseError::InconsistentGroupProtocol.code(), generation_id: -1 });
        resp.member_id = str(&join.member_id);
        return Some(resp);
    }
    let result = match broker.groups.join(join) {
        Reply::Now(immediate) => immediate,
        Reply::Later(rx) => tokio::select! {
            r = rx => r.unwrap_or_else(|_| crate::coordinator::classic::JoinResult { error: Some(ResponseError::UnknownMemberId), generation: -1, ..Default::default() }),
            _ = broker.shutting_down() => return None,
        },
    };
    let mut resp = mk!(JoinGroupResponse {
        error_code: code(result.error),
        generation_id: result.generation,
        protocol_name: Some(str(result.protocol_name.as_deref().unwrap_or(""))),
        leader: str(&result.leader),
        member_id: str(&result.member_id),
        members: result
            .members
            .iter()
            .map(|(id, instance, meta)| {
                mk!(JoinGroupResponseMember {
                    member_id: str(id),
                    group_instance_id: if version >= 5 { instance.as_deref().map(str) } else { None },
                    metadata: meta.clone()
                })
            })
            .collect()
    });
    if version >= 7 {
        resp.protocol_type = result.protocol_type.as_deref().map(str);
        if result.error.is_some() {
            resp.protocol_name = None;
        }
    }
    Some(resp)
}

pub async fn sync_group(broker: Arc<Broker>, h: &RequestHeader, req: SyncGroupRequest) -> Option<SyncGroupResponse> {
    let version = h.request_api_version;
    let assignments = req.assignments.iter().map(|a| (a.member_id.to_string(), a.assignment.clone())).collect();
    let result = match broker.groups.sync(
        &*broker,
        &req.group_id.0,
        req.generation_id,
        (&req.member_id, req.group_instance_id.as_deref()),
        req.protocol_type.as_deref(),
        req.protocol_name.as_deref(),
        assignments,
    ) {
        Reply::Now(immediate) => immediate,
        Reply::Later(rx) => tokio::select! {
            r = rx => r.unwrap_or_else(|_| crate::coordinator::classic::SyncResult { error: Some(ResponseError::RebalanceInProgress), ..Default::default() }),
            _ = broker.shutting_down() => return None,
        },
    };
    let mut resp = mk!(SyncGroupResponse { error_code: code(result.error), assignment: result.assignment });
    if version >= 5 {
        resp.protocol_type = result.protocol_type.as_deref().map(str);
        resp.protocol_name = result.protocol_name.as_deref().map(str);
    }
    Some(resp)
}

pub async fn heartbeat(broker: Arc<Broker>, _h: &RequestHeader, req: HeartbeatRequest) -> Option<HeartbeatResponse> {
    let err =
        broker.groups.heartbeat(&req.group_id.0, req.generation_id, &req.member_id, req.group_instance_id.as_deref());
    Some(mk!(HeartbeatResponse { error_code: code(err) }))
}

pub async fn leave_group(broker: Arc<Broker>, h: &RequestHeader, req: LeaveGroupRequest) -> Option<LeaveGroupResponse> {
    let version = h.request_api_version;
    let ids: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| (m.member_id.to_string(), m.group_instance_id.as_ref().map(|i| i.to_string())))
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    let (top, each) = broker.groups.leave(&req.group_id.0, &ids);
    if version >= 3 {
        let members = req
            .members
            .iter()
            .zip(each)
            .map(|(m, e)| {
                mk!(MemberResponse {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    error_code: code(e)
                })
            })
            .collect();
        return Some(mk!(LeaveGroupResponse { members: members }));
    }
    Some(mk!(LeaveGroupResponse { error_code: code(top) }))
}

/// Whether the group refuses a commit from this member: generation (classic)
/// or member epoch (KIP-848), member id and static instance id; a
/// `transactional` one (TxnOffsetCommit) also while a rebalance completes.
pub(super) fn commit_denied(
    broker: &Broker,
    group: &str,
    member_id: &str,
    generation: i32,
    instance_id: Option<&str>,
    transactional: bool,
) -> Option<ResponseError> {
    if group.is_empty() {
        Some(ResponseError::InvalidGroupId)
    } else if broker.consumer_groups.exists(group) {
        broker.consumer_groups.check_commit(group, member_id, generation)
    } else {
        broker.groups.check_commit(group, generation, member_id, instance_id, transactional)
    }
}

/// One offset of an OffsetCommit or TxnOffsetCommit, stamped now.
pub(super) fn committed(
    topic: &TopicName,
    partition: i32,
    offset: i64,
    leader_epoch: i32,
    metadata: &Option<kafka_protocol::protocol::StrBytes>,
) -> (String, i32, CommittedOffset) {
    let c = CommittedOffset {
        offset,
        leader_epoch,
        metadata: metadata.as_ref().map(|m| m.to_string()),
        commit_ms: now_ms(),
    };
    (topic.0.to_string(), partition, c)
}

pub async fn offset_commit(
    broker: Arc<Broker>,
    _h: &RequestHeader,
    req: OffsetCommitRequest,
) -> Option<OffsetCommitResponse> {
    Some(commit_offsets(&broker, req, &[]).await)
}

/// OffsetCommit's work. `commit_times` holds, in request order, the
/// per-partition commit timestamps only v1 carries (Kafka keeps them as
/// the commit time, which offset retention counts from); -1 or none
/// means now.
pub(super) async fn commit_offsets(
    broker: &Broker,
    req: OffsetCommitRequest,
    commit_times: &[i64],
) -> OffsetCommitResponse {
    let group = req.group_id.0.to_string();
    let denied = commit_denied(
        broker,
        &group,
        &req.member_id,
        req.generation_id_or_member_epoch,
        req.group_instance_id.as_deref(),
        false,
    );
    let wanted: Vec<_> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                committed(
                    &t.name,
                    p.partition_index,
                    p.committed_offset,
                    p.committed_leader_epoch,
                    &p.committed_metadata,
                )
            })
        })
        .enumerate()
        .map(|(i, (topic, partition, mut c))| {
            // -1 (and any other negative, which Kafka never meant) is "now".
            if let Some(&at) = commit_times.get(i).filter(|t| **t >= 0) {
                c.commit_ms = at;
            }
            (topic, partition, c)
        })
        .collect();
    let results = match denied {
        Some(e) => vec![Some(e); wanted.len()],
        None => {
            let durable = broker.config.fsync != FsyncPolicy::Never;
            broker.groups.commit(broker, &group, wanted, durable).await
        }
    };
    let mut results = results.into_iter();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    mk!(OffsetCommitResponsePartition {
                        partition_index: p.partition_index,
                        error_code: code(results.next().flatten())
                    })
                })
                .collect();
            mk!(OffsetCommitResponseTopic { name: t.name.clone(), partitions: partitions })
        })
        .collect();
    mk!(OffsetCommitResponse { topics: topics })
}

/// Per topic, each partition's committed offset (None if never committed).
type TopicOffsets = Vec<(String, Vec<(i32, Option<CommittedOffset>)>)>;

/// Committed offsets of `group` for the asked partitions (None: all).
fn fetch_group(broker: &Broker, group: &str, asked: Option<Vec<(String, Vec<i32>)>>) -> TopicOffsets {
    let committed = broker.groups.fetch_offsets(group);
    match asked {
        Some(list) => list
            .into_iter()
            .map(|(t, parts)| {
                let ps = parts.into_iter().map(|p| (p, committed.get(&(t.clone(), p)).cloned())).collect();
                (t, ps)
            })
            .collect(),
        None => {
            let mut out: TopicOffsets = Vec::new();
            for ((t, p), c) in committed {
                match out.last_mut() {
                    Some((lt, ps)) if *lt == t => ps.push((p, Some(c))),
                    _ => out.push((t, vec![(p, Some(c))])),
                }
            }
            out
        }
    }
}

fn unstable_v8(partition: i32) -> OffsetFetchResponsePartitions {
    mk!(OffsetFetchResponsePartitions {
        partition_index: partition,
        committed_offset: -1,
        committed_leader_epoch: -1,
        metadata: Some(str("")),
        error_code: ResponseError::UnstableOffsetCommit.code()
    })
}

pub async fn offset_fetch(
    broker: Arc<Broker>,
    h: &RequestHeader,
    req: OffsetFetchRequest,
) -> Option<OffsetFetchResponse> {
    let version = h.request_api_version;
    if version >= 8 {
        let groups = req
            .groups
            .iter()
            .map(|g| {
                let asked = g
                    .topics
                    .as_ref()
                    .map(|ts| ts.iter().map(|t| (t.name.0.to_string(), t.partition_indexes.clone())).collect());
                let topics = fetch_group(&broker, &g.group_id.0, asked)
                    .into_iter()
                    .map(|(t, ps)| {
                        let partitions = ps
                            .into_iter()
                            .map(|(p, c)| {
                                if req.require_stable && broker.groups.has_pending(&g.group_id.0, &t, p) {
                                    return unstable_v8(p);
                                }
                                let (offset, epoch, meta) = c
                                    .map(|c| (c.offset, c.leader_epoch, c.metadata))
                                    .unwrap_or((-1, -1, Some(String::new())));
                                mk!(OffsetFetchResponsePartitions {
                                    partition_index: p,
                                    committed_offset: offset,
                                    committed_leader_epoch: epoch,
                                    metadata: Some(str(meta.as_deref().unwrap_or("")))
                                })
                            })
                            .collect();
                        mk!(OffsetFetchResponseTopics { name: topic_name(&t), partitions: partitions })
                    })
                    .collect();
                let mut group = mk!(OffsetFetchResponseGroup { group_id: g.group_id.clone(), topics: topics });
                if let Err(e) = broker.groups.serves(&g.group_id.0) {
                    group.topics.clear();
                    group.error_code = e.code();
                }
                group
            })
            .collect();
        return Some(mk!(OffsetFetchResponse { groups: groups }));
    }
    let asked =
        req.topics.as_ref().map(|ts| ts.iter().map(|t| (t.name.0.to_string(), t.partition_indexes.clone())).collect());
    let topics = fetch_group(&broker, &req.group_id.0, asked)
        .into_iter()
        .map(|(t, ps)| {
            let partitions = ps
                .into_iter()
                .map(|(p, c)| {
                    let (offset, epoch, meta) =
                        c.map(|c| (c.offset, c.leader_epoch, c.metadata)).unwrap_or((-1, -1, Some(String::new())));
                    let mut r = mk!(OffsetFetchResponsePartition {
                        partition_index: p,
                        committed_offset: offset,
                        metadata: Some(str(meta.as_deref().unwrap_or("")))
                    });
                    // require_stable (v7): an offset an open transaction may
                    // still change is not given out; the client retries.
                    if req.require_stable && broker.groups.has_pending(&req.group_id.0, &t, p) {
                        r.committed_offset = -1;
                        r.error_code = ResponseError::UnstableOffsetCommit.code();
                    }
                    if version >= 5 {
                        r.committed_leader_epoch = epoch;
                    }
                    r
                })
                .collect();
            mk!(OffsetFetchResponseTopic { name: topic_name(&t), partitions: partitions })
        })
        .collect();
    let mut resp = mk!(OffsetFetchResponse { topics: topics });
    // Before v2 a response has no group error: such an old client sees no offsets.
    if let Err(e) = broker.groups.serves(&req.group_id.0) {
        resp.topics.clear();
        if version >= 2 {
            resp.error_code = e.code();
        }
    }
    Some(resp)
}

pub async fn list_groups(broker: Arc<Broker>, h: &RequestHeader, req: ListGroupsRequest) -> Option<ListGroupsResponse> {
    let version = h.request_api_version;
    let states: Vec<String> = req.states_filter.iter().map(|s| s.to_lowercase()).collect();
    let types: Vec<String> = req.types_filter.iter().map(|s| s.to_lowercase()).collect();
    let groups = broker
        .groups
        .list()
        .into_iter()
        // Offsets of a KIP-848 group live in a classic entry: list it once.
        .filter(|(id, _, _)| !broker.consumer_groups.exists(id))
        .filter(|(_, _, st)| states.is_empty() || states.contains(&st.name().to_lowercase()))
        .filter(|_| types.is_empty() || types.iter().any(|t| t == "classic"))
        .map(|(id, ptype, st)| {
            let mut g =
                mk!(ListedGroup { group_id: group_id(&id), protocol_type: str(ptype.as_deref().unwrap_or("")) });
            if version >= 4 {
                g.group_state = str(st.name());
            }
            if version >= 5 {
                g.group_type = str("classic");
            }
            g
        })
        .chain(broker.consumer_groups.list().into_iter().filter_map(|(id, state)| {
            let state_ok = states.is_empty() || states.contains(&state.to_lowercase());
            let type_ok = types.is_empty() || types.iter().any(|t| t == "consumer");
            (state_ok && type_ok).then(|| {
                let mut g = mk!(ListedGroup { group_id: group_id(&id), protocol_type: str("consumer") });
                if version >= 4 {
                    g.group_state = str(state);
                }
                if version >= 5 {
                    g.group_type = str("consumer");
                }
                g
            })
        }))
        .collect();
    Some(mk!(ListGroupsResponse { groups: groups }))
}

pub async fn describe_groups(
    broker: Arc<Broker>,
    h: &RequestHeader,
    req: DescribeGroupsRequest,
) -> Option<DescribeGroupsResponse> {
    // v3+ may ask for the authorized operations of each group described
    // without error (Kafka leaves failed entries at "not requested").
    let ops = acl::if_requested(h.request_api_version >= 3 && req.include_authorized_operations, acl::GROUP_OPERATIONS);
    let groups = req
        .groups
        .iter()
        .map(|gid| {
            if let Err(e) = broker.groups.serves(&gid.0) {
                return mk!(DescribedGroup { group_id: gid.clone(), error_code: e.code() });
            }
            broker.groups.with_group(&gid.0, |g| match g {
                // Kafka describes an unknown group as Dead with no error.
                None => mk!(DescribedGroup { group_id: gid.clone(), group_state: str("Dead") }),
                Some(g) => {
                    let protocol = g.protocol.clone().unwrap_or_default();
                    let members = g
                        .members
                        .values()
                        .map(|m| {
                            mk!(DescribedGroupMember {
                                member_id: str(&m.member_id),
                                group_instance_id: m.instance_id.as_deref().map(str),
                                client_id: str(&m.client_id),
                                client_host: str(&m.client_host),
                                member_metadata: m.metadata_for(&protocol),
                                member_assignment: m.assignment.clone()
                            })
                        })
                        .collect();
                    mk!(DescribedGroup {
                        group_id: gid.clone(),
                        group_state: str(g.state.name()),
                        protocol_type: str(g.protocol_type.as_deref().unwrap_or("")),
                        protocol_data: str(&protocol),
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
    Some(mk!(DescribeGroupsResponse { groups: groups }))
}

pub async fn delete_groups(
    broker: Arc<Broker>,
    _h: &RequestHeader,
    req: DeleteGroupsRequest,
) -> Option<DeleteGroupsResponse> {
    let results = req
        .groups_names
        .iter()
        .map(|g| {
            let err = match broker.consumer_groups.delete_if_empty(&g.0) {
                Some(Err(e)) => Some(e),
                // A KIP-848 group may have no committed offsets to delete.
                Some(Ok(())) => {
                    broker.groups.delete_group(&*broker, &g.0).filter(|e| *e != ResponseError::GroupIdNotFound)
                }
                None => broker.groups.delete_group(&*broker, &g.0),
            };
            mk!(delete_groups_response::DeletableGroupResult { group_id: g.clone(), error_code: code(err) })
        })
        .collect();
    Some(mk!(DeleteGroupsResponse { results: results }))
}

/// Topics the group's members subscribe to, from their consumer metadata.
fn subscribed_topics(broker: &Broker, group: &str) -> HashSet<String> {
    broker.groups.with_group(group, |g| {
        let mut out = HashSet::new();
        let Some(g) = g else { return out };
        if g.state == GroupState::Empty || g.protocol_type.as_deref() != Some("consumer") {
            return out;
        }
        let protocol = g.protocol.clone().unwrap_or_default();
        for m in g.members.values() {
            let mut meta = m.metadata_for(&protocol);
            if meta.len() < 2 {
                continue;
            }
            let version = i16::from_be_bytes([meta[0], meta[1]]);
            bytes::Buf::advance(&mut meta, 2);
            if let Ok(sub) = ConsumerProtocolSubscription::decode(&mut meta, version) {
                out.extend(sub.topics.iter().map(|t| t.to_string()));
            }
        }
        out
    })
}

pub async fn offset_delete(
    broker: Arc<Broker>,
    _h: &RequestHeader,
    req: OffsetDeleteRequest,
) -> Option<OffsetDeleteResponse> {
    let subscribed = subscribed_topics(&broker, &req.group_id.0);
    let parts: Vec<(String, i32)> = req
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.name.0.to_string(), p.partition_index)))
        .collect();
    match broker.groups.delete_offsets(&*broker, &req.group_id.0, &parts, &subscribed) {
        Err(e) => Some(mk!(OffsetDeleteResponse { error_code: e.code() })),
        Ok(results) => {
            let mut results = results.into_iter();
            let topics = req
                .topics
                .iter()
                .map(|t| {
                    let partitions = t
                        .partitions
                        .iter()
                        .map(|p| {
                            mk!(OffsetDeleteResponsePartition {
                                partition_index: p.partition_index,
                                error_code: code(results.next().flatten())
                            })
                        })
                        .collect();
                    mk!(OffsetDeleteResponseTopic { name: t.name.clone(), partitions: partitions })
                })
                .collect();
            Some(mk!(OffsetDeleteResponse { topics: topics }))
        }
    }
}
