//! Metadata and DescribeCluster: this node is every partition's leader.

use std::collections::BTreeMap;
use std::sync::Arc;

use fjord_replication::controller::ClusterMetadata;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::acl::{self, NOT_REQUESTED as NO_OPS};
use crate::cluster::ClusterNode;
use crate::leadership::{Leadership, NO_EPOCH};
use crate::server::Broker;
use crate::topics::TopicMeta;

pub fn str(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub fn topic_name(s: &str) -> TopicName {
    TopicName(str(s))
}

/// Creates `name` with broker defaults if auto-creation is on (and the
/// name was not just deleted: see `RECREATE_QUARANTINE`).
pub fn auto_create(broker: &Broker, name: &str) -> Result<TopicMeta, ResponseError> {
    if !broker.config.auto_create_topics || broker.topics.deleted_recently(name) {
        return Err(ResponseError::UnknownTopicOrPartition);
    }
    match broker.topics.create(name, broker.config.num_partitions, BTreeMap::new(), false) {
        Ok(m) => Ok(m),
        // Lost a race with another creator: fine, it exists now.
        Err(e) if e.code == ResponseError::TopicAlreadyExists => broker.topics.topic(name).ok_or(e.code),
        Err(e) => Err(e.code),
    }
}

fn topic_entry(broker: &Broker, name: &str, meta: &TopicMeta) -> MetadataResponseTopic {
    let node = BrokerId(broker.node_id);
    let partitions = (0..meta.partitions)
        .map(|p| {
            mk!(MetadataResponsePartition {
                partition_index: p,
                leader_id: node,
                leader_epoch: broker.topics.leader_epoch(name, p),
                replica_nodes: vec![node],
                isr_nodes: vec![node]
            })
        })
        .collect();
    mk!(MetadataResponseTopic {
        name: Some(topic_name(name)),
        topic_id: meta.id,
        is_internal: meta.internal,
        partitions: partitions,
        topic_authorized_operations: NO_OPS
    })
}

pub async fn handle(broker: Arc<Broker>, h: &RequestHeader, req: MetadataRequest) -> Option<MetadataResponse> {
    let version = h.request_api_version;
    // v0 asks for all topics with an empty list; later versions with null.
    let wanted: Option<Vec<MetadataRequestTopic>> = match req.topics {
        Some(t) if t.is_empty() && version == 0 => None,
        other => other,
    };
    let allow_auto = version < 4 || req.allow_auto_topic_creation;
    let mut topics = match &broker.cluster {
        Some(cluster) => cluster_topics(&broker, cluster, wanted, allow_auto).await,
        None => single_node_topics(&broker, wanted, allow_auto).await,
    };
    // Authorized operations exist from v8; the cluster's only up to v10
    // (later clients ask DescribeCluster). Every topic entry gets them, as
    // in Kafka, errors included.
    if version >= 8 && req.include_topic_authorized_operations {
        for t in &mut topics {
            t.topic_authorized_operations = acl::TOPIC_OPERATIONS;
        }
    }
    let cluster_ops = acl::if_requested(
        (8..=10).contains(&version) && req.include_cluster_authorized_operations,
        acl::CLUSTER_OPERATIONS,
    );
    let (brokers, cluster_id, controller_id) = match &broker.cluster {
        Some(cluster) => cluster_brokers(cluster),
        None => (
            vec![mk!(MetadataResponseBroker {
                node_id: BrokerId(broker.node_id),
                host: str(&broker.advertised_host),
                port: broker.advertised_port,
                rack: broker.config.broker_rack.as_deref().map(str)
            })],
            broker.topics.cluster_id(),
            broker.node_id,
        ),
    };
    Some(mk!(MetadataResponse {
        brokers: brokers,
        cluster_id: Some(str(&cluster_id)),
        controller_id: BrokerId(controller_id),
        topics: topics,
        cluster_authorized_operations: cluster_ops
    }))
}

pub async fn describe_cluster(
    broker: Arc<Broker>,
    _h: &RequestHeader,
    req: DescribeClusterRequest,
) -> Option<DescribeClusterResponse> {
    let mut resp = mk!(DescribeClusterResponse {
        cluster_id: str(&broker.topics.cluster_id()),
        controller_id: BrokerId(broker.node_id),
        endpoint_type: req.endpoint_type,
        cluster_authorized_operations: NO_OPS
    });
    // Endpoint type 1 is brokers; 2 (controllers) is not something we run.
    if req.endpoint_type != 1 {
        resp.error_code = ResponseError::UnsupportedEndpointType.code();
        resp.error_message = Some(str("Only broker endpoints (type 1) are served"));
        return Some(resp);
    }
    resp.brokers = match &broker.cluster {
        // The live brokers; the fenced ones too, flagged, when asked (v2), as Kafka does.
        Some(cluster) => {
            resp.cluster_id = str(&cluster.read(|m| m.cluster_id().unwrap_or_default().to_string()));
            resp.controller_id = BrokerId(cluster.controller_id());
            registered(cluster)
                .into_iter()
                .filter(|b| req.include_fenced_brokers || !b.4)
                .map(|(id, host, port, rack, fenced)| {
                    mk!(DescribeClusterBroker {
                        broker_id: BrokerId(id),
                        host: str(&host),
                        port: port,
                        rack: rack.map(|r| str(&r)),
                        is_fenced: fenced
                    })
                })
                .collect()
        }
        None => vec![mk!(DescribeClusterBroker {
            broker_id: BrokerId(broker.node_id),
            host: str(&broker.advertised_host),
            port: broker.advertised_port,
            rack: broker.config.broker_rack.as_deref().map(str),
            is_fenced: false
        })],
    };
    resp.cluster_authorized_operations =
        acl::if_requested(req.include_cluster_authorized_operations, acl::CLUSTER_OPERATIONS);
    Some(resp)
}

/// The topic a Metadata entry asks for, by name or (v10+) by id; the entry answering it when
/// neither names a topic.
fn requested_name(
    t: &MetadataRequestTopic,
    by_id: impl FnOnce(uuid::Uuid) -> Option<String>,
) -> Result<String, MetadataResponseTopic> {
    match (&t.name, t.topic_id.is_nil()) {
        (Some(n), _) => Ok(n.0.to_string()),
        (None, false) => by_id(t.topic_id).ok_or_else(|| {
            mk!(MetadataResponseTopic {
                error_code: ResponseError::UnknownTopicId.code(),
                topic_id: t.topic_id,
                topic_authorized_operations: NO_OPS
            })
        }),
        (None, true) => Err(mk!(MetadataResponseTopic {
            error_code: ResponseError::InvalidRequest.code(),
            topic_authorized_operations: NO_OPS
        })),
    }
}

async fn single_node_topics(
    broker: &Arc<Broker>,
    wanted: Option<Vec<MetadataRequestTopic>>,
    allow_auto: bool,
) -> Vec<MetadataResponseTopic> {
    let mut topics = Vec::new();
    match wanted {
        None => {
            for (name, meta) in broker.topics.list() {
                topics.push(topic_entry(broker, &name, &meta));
            }
        }
        Some(list) => {
            for t in list {
                let name = match requested_name(&t, |id| broker.topics.name_by_id(id)) {
                    Ok(n) => n,
                    Err(refused) => {
                        topics.push(refused);
                        continue;
                    }
                };
                let meta = match broker.topics.topic(&name) {
                    Some(m) => Ok(m),
                    None if allow_auto => {
                        let b = broker.clone();
                        let n = name.clone();
                        tokio::task::spawn_blocking(move || auto_create(&b, &n))
                            .await
                            .unwrap_or(Err(ResponseError::UnknownServerError))
                    }
                    None => Err(ResponseError::UnknownTopicOrPartition),
                };
                match meta {
                    Ok(meta) => topics.push(topic_entry(broker, &name, &meta)),
                    Err(code) => topics.push(mk!(MetadataResponseTopic {
                        error_code: code.code(),
                        name: Some(topic_name(&name)),
                        topic_authorized_operations: NO_OPS
                    })),
                }
            }
        }
    }
    topics
}

// ---- in a cluster: the applied controller metadata ------------------------------------

/// `host:port` as (host, port); a malformed one (never registered by our brokers) as port -1.
fn host_port(addr: &str) -> (String, i32) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']').to_string(), p.parse().unwrap_or(-1)),
        None => (addr.to_string(), -1),
    }
}

/// The registered brokers as (id, host, port, rack, fenced).
fn registered(cluster: &ClusterNode) -> Vec<(i32, String, i32, Option<String>, bool)> {
    cluster.read(|m| {
        m.brokers()
            .values()
            .map(|b| {
                let (host, port) = host_port(&b.registration.advertised_listener);
                (b.registration.node_id, host, port, b.registration.rack.clone(), b.fenced)
            })
            .collect()
    })
}

/// The live (unfenced) brokers, the cluster id and the controller, as Metadata lists them.
fn cluster_brokers(cluster: &ClusterNode) -> (Vec<MetadataResponseBroker>, String, i32) {
    let brokers = registered(cluster)
        .into_iter()
        .filter(|b| !b.4)
        .map(|(id, host, port, rack, _)| {
            mk!(MetadataResponseBroker {
                node_id: BrokerId(id),
                host: str(&host),
                port: port,
                rack: rack.map(|r| str(&r))
            })
        })
        .collect();
    let cluster_id = cluster.read(|m| m.cluster_id().unwrap_or_default().to_string());
    (brokers, cluster_id, cluster.controller_id())
}

fn cluster_topic_entry(m: &ClusterMetadata, name: &str) -> Option<MetadataResponseTopic> {
    let topic = m.topic(name)?;
    let mut partitions: Vec<MetadataResponsePartition> = m
        .partitions_of(name)
        .map(|(_, p)| {
            // No leader reported yet (a new partition, or its leader was fenced): Kafka's
            // LEADER_NOT_AVAILABLE, which clients retry.
            let error = if p.leader.is_none() { ResponseError::LeaderNotAvailable.code() } else { 0 };
            mk!(MetadataResponsePartition {
                error_code: error,
                partition_index: p.index,
                leader_id: BrokerId(p.leader.unwrap_or(-1)),
                leader_epoch: p.leader_epoch,
                replica_nodes: p.replicas.iter().map(|r| BrokerId(*r)).collect(),
                isr_nodes: p.isr.iter().map(|r| BrokerId(*r)).collect()
            })
        })
        .collect();
    partitions.sort_by_key(|p| p.partition_index);
    Some(mk!(MetadataResponseTopic {
        name: Some(topic_name(name)),
        topic_id: topic.id,
        is_internal: topic.internal,
        partitions: partitions,
        topic_authorized_operations: NO_OPS
    }))
}

async fn cluster_topics(
    broker: &Arc<Broker>,
    cluster: &ClusterNode,
    wanted: Option<Vec<MetadataRequestTopic>>,
    allow_auto: bool,
) -> Vec<MetadataResponseTopic> {
    let mut topics = recorded_cluster_topics(broker, cluster, wanted, allow_auto).await;
    // The metadata may still name this node as a partition's leader when it cannot serve it:
    // it has not finished taking over, or it is cut off from the other replicas (which elect
    // another leader; this node's copy of the metadata may be too stale to know). Sending
    // clients here would only earn them timeouts, so they are told to look again.
    //
    // Likewise a leader on a node whose process is known to be down (it closed its cluster
    // connection to this node, or refuses new ones: `Transport::known_down`): its replicas are
    // electing another. A client told the dead node still leads stops asking (librdkafka queries
    // again only at its periodic refresh); one told there is no leader keeps asking, and finds
    // the new leader as soon as it is elected. A node merely not connected yet (at start-up) or
    // silent (a link fault only this node sees) is still named: clients may reach it.
    let transport = cluster.node.transport();
    for t in &mut topics {
        let Some(name) = t.name.as_ref().map(|n| n.to_string()) else { continue };
        for p in &mut t.partitions {
            let unreachable = p.leader_id.0 >= 0
                && p.leader_id.0 != broker.node_id
                && u64::try_from(p.leader_id.0).is_ok_and(|l| transport.known_down(l));
            if unreachable
                || (p.leader_id.0 == broker.node_id && broker.lead(&name, p.partition_index, NO_EPOCH).is_err())
            {
                p.leader_id = BrokerId(-1);
                p.error_code = ResponseError::LeaderNotAvailable.code();
            }
        }
    }
    topics
}

async fn recorded_cluster_topics(
    broker: &Arc<Broker>,
    cluster: &ClusterNode,
    wanted: Option<Vec<MetadataRequestTopic>>,
    allow_auto: bool,
) -> Vec<MetadataResponseTopic> {
    let Some(list) = wanted else {
        return cluster.read(|m| m.topics().keys().filter_map(|n| cluster_topic_entry(m, n)).collect());
    };
    let mut topics = Vec::with_capacity(list.len());
    for t in list {
        let by_id = |id| cluster.read(|m| m.topics().iter().find(|(_, x)| x.id == id).map(|(n, _)| n.clone()));
        let name = match requested_name(&t, by_id) {
            Ok(n) => n,
            Err(refused) => {
                topics.push(refused);
                continue;
            }
        };
        if let Some(entry) = cluster.read(|m| cluster_topic_entry(m, &name)) {
            topics.push(entry);
            continue;
        }
        let error = if allow_auto && broker.config.auto_create_topics {
            let new = fjord_replication::controller::NewTopic {
                name: name.clone(),
                num_partitions: -1,
                replication_factor: -1,
                assignments: Vec::new(),
                configs: BTreeMap::new(),
                internal: false,
            };
            match cluster.submit(fjord_replication::controller::Request::CreateTopic(new)).await {
                // Created (or meanwhile by someone else): its leaders come later, and Kafka too
                // answers a just-created topic with LEADER_NOT_AVAILABLE, which clients retry.
                Ok(_) => ResponseError::LeaderNotAvailable,
                Err(e) if e.code == ResponseError::TopicAlreadyExists => ResponseError::LeaderNotAvailable,
                Err(e) => e.code,
            }
        } else {
            ResponseError::UnknownTopicOrPartition
        };
        topics.push(mk!(MetadataResponseTopic {
            error_code: error.code(),
            name: Some(topic_name(&name)),
            topic_authorized_operations: NO_OPS
        }));
    }
    topics
}
