//! Metadata and DescribeCluster: this node is every partition's leader.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::acl::{self, NOT_REQUESTED as NO_OPS};
use crate::leadership::Leadership;
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
    let mut topics = Vec::new();
    match wanted {
        None => {
            for (name, meta) in broker.topics.list() {
                topics.push(topic_entry(&broker, &name, &meta));
            }
        }
        Some(list) => {
            for t in list {
                let name = match (&t.name, t.topic_id.is_nil()) {
                    (Some(n), _) => n.0.to_string(),
                    (None, false) => match broker.topics.name_by_id(t.topic_id) {
                        Some(n) => n,
                        None => {
                            topics.push(mk!(MetadataResponseTopic {
                                error_code: ResponseError::UnknownTopicId.code(),
                                topic_id: t.topic_id,
                                topic_authorized_operations: NO_OPS
                            }));
                            continue;
                        }
                    },
                    (None, true) => {
                        topics.push(mk!(MetadataResponseTopic {
                            error_code: ResponseError::InvalidRequest.code(),
                            topic_authorized_operations: NO_OPS
                        }));
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
                    Ok(meta) => topics.push(topic_entry(&broker, &name, &meta)),
                    Err(code) => topics.push(mk!(MetadataResponseTopic {
                        error_code: code.code(),
                        name: Some(topic_name(&name)),
                        topic_authorized_operations: NO_OPS
                    })),
                }
            }
        }
    }
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
    Some(mk!(MetadataResponse {
        brokers: vec![mk!(MetadataResponseBroker {
            node_id: BrokerId(broker.node_id),
            host: str(&broker.advertised_host),
            port: broker.advertised_port,
            rack: broker.config.broker_rack.as_deref().map(str)
        })],
        cluster_id: Some(str(&broker.topics.cluster_id())),
        controller_id: BrokerId(broker.node_id),
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
    resp.brokers = vec![mk!(DescribeClusterBroker {
        broker_id: BrokerId(broker.node_id),
        host: str(&broker.advertised_host),
        port: broker.advertised_port,
        rack: broker.config.broker_rack.as_deref().map(str),
        is_fenced: false
    })];
    resp.cluster_authorized_operations =
        acl::if_requested(req.include_cluster_authorized_operations, acl::CLUSTER_OPERATIONS);
    Some(resp)
}
