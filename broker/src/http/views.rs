//! What the admin API shows, read from the broker's own state: on a cluster node the applied
//! cluster metadata (every node answers the same for the cluster's brokers, topics and
//! partitions), on a single node its topic registry. Groups and the offsets on disk are this
//! node's own: the groups it coordinates, the replicas it holds.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::coordinator::classic::OFFSETS_TOPIC;
use crate::leadership::Leadership;
use crate::server::Broker;

#[derive(Debug, Serialize)]
pub struct ClusterView {
    pub cluster_id: String,
    /// The node that answered.
    pub node_id: i32,
    /// `single-node` (no controller quorum configured) or `cluster`.
    pub mode: &'static str,
    /// The controller quorum's leader, when one is known.
    pub controller_id: Option<i32>,
    pub brokers: usize,
    pub live_brokers: usize,
    pub topics: usize,
    pub partitions: usize,
    pub under_replicated_partitions: usize,
    pub offline_partitions: usize,
    pub reassigning_partitions: usize,
}

#[derive(Debug, Serialize)]
pub struct BrokerView {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
    /// Fenced: registered, but not heard from within the session timeout (or not started).
    pub fenced: bool,
    pub controller_voter: bool,
    pub is_controller: bool,
}

#[derive(Debug, Serialize)]
pub struct TopicView {
    pub name: String,
    pub id: String,
    pub internal: bool,
    pub partition_count: usize,
    pub replication_factor: usize,
}

#[derive(Debug, Serialize)]
pub struct TopicDetail {
    pub name: String,
    pub id: String,
    pub internal: bool,
    pub replication_factor: usize,
    /// The topic's own configs (overrides of the broker defaults).
    pub configs: BTreeMap<String, String>,
    pub partitions: Vec<PartitionView>,
}

#[derive(Debug, Serialize)]
pub struct Reassignment {
    pub target: Vec<i32>,
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
}

#[derive(Debug, Serialize)]
pub struct PartitionView {
    pub topic: String,
    pub partition: i32,
    pub leader: Option<i32>,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// Fewer in-sync replicas than replicas.
    pub under_replicated: bool,
    /// No live leader: nothing can be written or read.
    pub offline: bool,
    pub reassignment: Option<Reassignment>,
    /// The offsets of this node's replica, when it holds one.
    pub local: Option<LocalReplicaView>,
}

#[derive(Debug, Serialize)]
pub struct LocalReplicaView {
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub log_end_offset: i64,
    pub size_bytes: u64,
    /// What tiered storage holds of it (topics with remote.storage.enable).
    pub remote: Option<RemoteTierView>,
}

#[derive(Debug, Serialize)]
pub struct RemoteTierView {
    pub segments: usize,
    /// Offsets [start, end) in the bucket; null while nothing is.
    pub start_offset: Option<i64>,
    pub end_offset: Option<i64>,
    /// Bytes stored in the bucket (after archive compression).
    pub size_bytes: u64,
    pub manifest_version: u64,
    /// Closed local segments not yet in the bucket, and their bytes.
    pub upload_lag_segments: usize,
    pub upload_lag_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct GroupSummary {
    pub group_id: String,
    /// `classic` (JoinGroup/SyncGroup) or `consumer` (KIP-848).
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub protocol_type: String,
    pub state: String,
    pub members: usize,
}

#[derive(Debug, Serialize)]
pub struct GroupDetail {
    pub group_id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub protocol_type: String,
    pub state: String,
    pub members: Vec<MemberView>,
    pub offsets: Vec<OffsetView>,
    /// The sum of the partitions' lags, over those whose end offset this node knows.
    pub total_lag: i64,
}

#[derive(Debug, Serialize)]
pub struct MemberView {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// topic → partitions assigned to the member.
    pub assignment: BTreeMap<String, Vec<i32>>,
}

#[derive(Debug, Serialize)]
pub struct OffsetView {
    pub topic: String,
    pub partition: i32,
    pub committed_offset: i64,
    /// The partition's high watermark as this node's replica knows it; null when this node
    /// holds no replica of the partition.
    pub end_offset: Option<i64>,
    pub lag: Option<i64>,
}

fn local(broker: &Broker, topic: &str, partition: i32) -> Option<LocalReplicaView> {
    let log = broker.local_log(topic, partition)?;
    Some(LocalReplicaView {
        log_start_offset: log.log_start_offset(),
        high_watermark: log.high_watermark(),
        log_end_offset: log.log_end_offset(),
        size_bytes: log.size_bytes(),
        remote: log.config().remote_storage.then(|| {
            let m = log.remote_manifest();
            let (lag_segments, lag_bytes) = log.segments_after(m.end().unwrap_or(i64::MIN));
            RemoteTierView {
                segments: m.segments.len(),
                start_offset: m.start(),
                end_offset: m.end(),
                size_bytes: m.size(),
                manifest_version: m.version,
                upload_lag_segments: lag_segments,
                upload_lag_bytes: lag_bytes,
            }
        }),
    })
}

/// Every partition of every topic (or of `only`), by topic then partition.
pub fn partitions(broker: &Broker, only: Option<&str>) -> Vec<PartitionView> {
    let mut out = Vec::new();
    if let Some(cluster) = &broker.cluster {
        // The replicas' offsets are filled in after the metadata's lock is let go.
        out = cluster.read(|m| {
            let mut rows = Vec::new();
            for (name, t) in m.topics() {
                if only.is_some_and(|o| o != name) {
                    continue;
                }
                for (index, group) in t.partitions.iter().enumerate() {
                    let Some(p) = m.partition(*group) else { continue };
                    let live_leader = p.leader.filter(|l| m.broker(*l).is_some_and(|b| !b.fenced));
                    let reassignment = p.reassignment.as_ref().map(|r| Reassignment {
                        target: r.target.clone(),
                        adding: r.target.iter().filter(|n| !r.original.contains(n)).copied().collect(),
                        removing: r.original.iter().filter(|n| !r.target.contains(n)).copied().collect(),
                    });
                    rows.push(PartitionView {
                        topic: name.clone(),
                        partition: index as i32,
                        leader: p.leader,
                        leader_epoch: p.leader_epoch,
                        under_replicated: p.isr.len() < p.replicas.len(),
                        replicas: p.replicas.clone(),
                        isr: p.isr.clone(),
                        offline: live_leader.is_none(),
                        reassignment,
                        local: None,
                    });
                }
            }
            rows
        });
        for p in &mut out {
            p.local = local(broker, &p.topic, p.partition);
        }
        return out;
    }
    let me = broker.node_id;
    for (name, meta) in broker.topics.list() {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        for p in 0..meta.partitions {
            out.push(PartitionView {
                leader: Some(me),
                leader_epoch: broker.topics.leader_epoch(&name, p),
                replicas: vec![me],
                isr: vec![me],
                under_replicated: false,
                offline: false,
                reassignment: None,
                local: local(broker, &name, p),
                topic: name.clone(),
                partition: p,
            });
        }
    }
    out
}

pub fn brokers(broker: &Broker) -> Vec<BrokerView> {
    let Some(cluster) = &broker.cluster else {
        return vec![BrokerView {
            node_id: broker.node_id,
            host: broker.advertised_host.clone(),
            port: broker.advertised_port,
            rack: broker.config.broker_rack.clone(),
            fenced: false,
            controller_voter: false,
            is_controller: true,
        }];
    };
    let controller = cluster.controller_id();
    let voters = &broker.config.controller_quorum_voters;
    cluster.read(|m| {
        m.brokers()
            .values()
            .map(|b| {
                let r = &b.registration;
                let (host, port) = crate::server::split_host_port(&r.advertised_listener)
                    .unwrap_or((r.advertised_listener.clone(), 0));
                let id = r.node_id;
                BrokerView {
                    node_id: id,
                    host,
                    port,
                    rack: r.rack.clone(),
                    fenced: b.fenced,
                    controller_voter: voters.get(id).is_some(),
                    is_controller: controller == id,
                }
            })
            .collect()
    })
}

pub fn topics(broker: &Broker) -> Vec<TopicView> {
    if let Some(cluster) = &broker.cluster {
        return cluster.read(|m| {
            m.topics()
                .iter()
                .map(|(name, t)| TopicView {
                    name: name.clone(),
                    id: t.id.to_string(),
                    internal: t.internal,
                    partition_count: t.partitions.len(),
                    replication_factor: t
                        .partitions
                        .first()
                        .and_then(|g| m.partition(*g))
                        .map_or(0, |p| p.reassignment.as_ref().map_or(p.replicas.len(), |r| r.target.len())),
                })
                .collect()
        });
    }
    broker
        .topics
        .list()
        .into_iter()
        .map(|(name, meta)| TopicView {
            name,
            id: meta.id.to_string(),
            internal: meta.internal,
            partition_count: usize::try_from(meta.partitions).unwrap_or(0),
            replication_factor: 1,
        })
        .collect()
}

pub fn topic(broker: &Broker, name: &str) -> Option<TopicDetail> {
    let summary = topics(broker).into_iter().find(|t| t.name == name)?;
    let configs = match &broker.cluster {
        Some(cluster) => cluster.read(|m| m.topic(name).map(|t| t.configs.clone()))?,
        None => broker.topics.topic(name)?.configs,
    };
    Some(TopicDetail {
        partitions: partitions(broker, Some(name)),
        name: summary.name,
        id: summary.id,
        internal: summary.internal,
        replication_factor: summary.replication_factor,
        configs,
    })
}

pub fn cluster(broker: &Broker) -> ClusterView {
    let parts = partitions(broker, None);
    let brokers = brokers(broker);
    let cluster_id = match &broker.cluster {
        Some(c) => c.read(|m| m.cluster_id().unwrap_or_default().to_string()),
        None => broker.topics.cluster_id(),
    };
    let controller_id = match &broker.cluster {
        Some(c) => Some(c.controller_id()).filter(|id| *id >= 0),
        None => Some(broker.node_id),
    };
    ClusterView {
        cluster_id,
        node_id: broker.node_id,
        mode: if broker.cluster.is_some() { "cluster" } else { "single-node" },
        controller_id,
        live_brokers: brokers.iter().filter(|b| !b.fenced).count(),
        brokers: brokers.len(),
        topics: topics(broker).len(),
        partitions: parts.len(),
        under_replicated_partitions: parts.iter().filter(|p| p.under_replicated).count(),
        offline_partitions: parts.iter().filter(|p| p.offline).count(),
        reassigning_partitions: parts.iter().filter(|p| p.reassignment.is_some()).count(),
    }
}

/// The groups this node coordinates, classic and KIP-848 (whose offsets live in a classic
/// entry, listed once).
pub fn groups(broker: &Broker) -> Vec<GroupSummary> {
    let mut out: Vec<GroupSummary> = broker
        .groups
        .list()
        .into_iter()
        .filter(|(id, _, _)| !broker.consumer_groups.exists(id) && broker.groups.serves(id).is_ok())
        .map(|(id, protocol_type, state)| {
            let members = broker.groups.with_group(&id, |g| g.map_or(0, |g| g.members.len()));
            GroupSummary {
                group_id: id,
                kind: "classic",
                protocol_type: protocol_type.unwrap_or_default(),
                state: state.name().to_string(),
                members,
            }
        })
        .collect();
    for (id, state) in broker.consumer_groups.list() {
        let members = broker.consumer_groups.with_group(&id, |g| g.map_or(0, |g| g.members.len()));
        out.push(GroupSummary {
            group_id: id,
            kind: "consumer",
            protocol_type: "consumer".into(),
            state: state.to_string(),
            members,
        });
    }
    out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    out
}

/// One group this node coordinates: its members and their assignments, and each committed
/// offset with the partition's lag. `None` when this node does not coordinate the group.
pub fn group(broker: &Broker, id: &str) -> Option<GroupDetail> {
    let summary = groups(broker).into_iter().find(|g| g.group_id == id)?;
    Some(group_detail(broker, summary))
}

/// The detail of a group `groups` listed.
pub fn group_detail(broker: &Broker, summary: GroupSummary) -> GroupDetail {
    let id = summary.group_id.as_str();
    let members = if summary.kind == "consumer" {
        broker.consumer_groups.with_group(id, |g| {
            g.map(|g| {
                g.members
                    .values()
                    .map(|m| {
                        let mut assignment: BTreeMap<String, Vec<i32>> = BTreeMap::new();
                        for (topic_id, p) in &m.assigned {
                            let name = broker.topic_name(*topic_id).unwrap_or_else(|| topic_id.to_string());
                            assignment.entry(name).or_default().push(*p);
                        }
                        MemberView {
                            member_id: m.member_id.clone(),
                            instance_id: m.instance_id.clone(),
                            client_id: m.client_id.clone(),
                            client_host: m.client_host.clone(),
                            assignment,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
        })
    } else {
        broker.groups.with_group(id, |g| {
            g.map(|g| {
                g.members
                    .values()
                    .map(|m| MemberView {
                        member_id: m.member_id.clone(),
                        instance_id: m.instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        assignment: consumer_assignment(&m.assignment),
                    })
                    .collect()
            })
            .unwrap_or_default()
        })
    };
    let offsets: Vec<OffsetView> = broker
        .groups
        .fetch_offsets(id)
        .into_iter()
        .map(|((topic, partition), c)| {
            let end_offset = broker.local_log(&topic, partition).map(|l| l.high_watermark());
            OffsetView {
                lag: end_offset.map(|end| (end - c.offset).max(0)),
                topic,
                partition,
                committed_offset: c.offset,
                end_offset,
            }
        })
        .collect();
    GroupDetail {
        total_lag: offsets.iter().filter_map(|o| o.lag).sum(),
        group_id: summary.group_id.clone(),
        kind: summary.kind,
        protocol_type: summary.protocol_type,
        state: summary.state,
        members,
        offsets,
    }
}

/// The node that coordinates group `id`: the leader of its `__consumer_offsets` partition.
pub fn coordinator_of(broker: &Broker, id: &str) -> Option<i32> {
    let cluster = broker.cluster.as_ref()?;
    let p = broker.groups.partition_for(id);
    cluster.leader_address(OFFSETS_TOPIC, p).map(|(node, _, _)| node)
}

/// The topic → partitions of a classic consumer group member's assignment (the consumer
/// protocol's encoding); empty for another protocol type's bytes.
fn consumer_assignment(bytes: &[u8]) -> BTreeMap<String, Vec<i32>> {
    use kafka_protocol::messages::ConsumerProtocolAssignment;
    use kafka_protocol::protocol::Decodable;
    let mut out = BTreeMap::new();
    let mut buf = bytes::Bytes::copy_from_slice(bytes);
    if buf.len() < 2 {
        return out;
    }
    let version = i16::from_be_bytes([buf[0], buf[1]]);
    let _ = bytes::Buf::get_i16(&mut buf);
    let Ok(a) = ConsumerProtocolAssignment::decode(&mut buf, version.clamp(0, 3)) else { return out };
    for t in a.assigned_partitions {
        out.insert(t.topic.0.to_string(), t.partitions);
    }
    out
}
