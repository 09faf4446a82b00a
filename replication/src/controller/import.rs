//! Turns a single-node data dir's `metadata.json` (written by the broker's
//! `topics.rs`) into metadata records, so that node becomes a cluster of one
//! with its cluster id, topics, topic ids, configs and producer ids intact.
//! The file's shape is mirrored here: `replication` does not depend on `broker`.

use std::collections::BTreeMap;

use serde::Deserialize;
use uuid::Uuid;

use super::records::{BrokerRegistration, ConfigResource, CreateTopic, LeadershipReport, MetadataRecord};

/// `topics::TopicMeta` as the broker persists it.
#[derive(Deserialize)]
struct TopicMeta {
    id: Uuid,
    partitions: i32,
    #[serde(default)]
    configs: BTreeMap<String, String>,
    #[serde(default)]
    internal: bool,
}

/// `topics::MetadataFile` as the broker persists it.
#[derive(Deserialize)]
struct MetadataFile {
    cluster_id: String,
    #[serde(default)]
    topics: BTreeMap<String, TopicMeta>,
    #[serde(default)]
    broker_configs: BTreeMap<String, String>,
    #[serde(default)]
    node_broker_configs: BTreeMap<String, String>,
    #[serde(default)]
    next_producer_id: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the single-node metadata file is unreadable: {0}")]
    Unreadable(#[from] serde_json::Error),
    #[error("the single-node metadata file is inconsistent: {0}")]
    Invalid(String),
}

/// The records that rebuild `metadata_json` on `node`: the cluster id, the
/// node registered and unfenced, each topic on that node alone (same id,
/// same configs, led by the node at epoch 0), the dynamic broker configs,
/// and one producer-id block covering every id already handed out.
/// They are meant to open an empty metadata log: the leadership report
/// names the group ids an empty state hands out (0, 1, …).
pub fn import_single_node(metadata_json: &[u8], node: &BrokerRegistration) -> Result<Vec<MetadataRecord>, ImportError> {
    let file: MetadataFile = serde_json::from_slice(metadata_json)?;
    let node_id = node.node_id;
    let mut records = vec![
        MetadataRecord::InitCluster { cluster_id: file.cluster_id },
        MetadataRecord::RegisterBroker(node.clone()),
        MetadataRecord::UnfenceBroker { node_id, incarnation: node.incarnation },
    ];
    let mut groups = 0u64;
    for (name, meta) in file.topics {
        if meta.partitions < 1 {
            return Err(ImportError::Invalid(format!("topic {name} has {} partitions", meta.partitions)));
        }
        records.push(MetadataRecord::CreateTopic(CreateTopic {
            name,
            topic_id: meta.id,
            replicas: vec![vec![node_id]; meta.partitions as usize],
            configs: meta.configs,
            internal: meta.internal,
        }));
        groups += meta.partitions as u64;
    }
    // Group ids are handed out from 0 in the order above, on an empty state.
    if groups > 0 {
        let partitions =
            (0..groups).map(|group_id| LeadershipReport { group_id, leader_epoch: 0, isr: vec![node_id] }).collect();
        records.push(MetadataRecord::ReportLeadership { reporter: node_id, incarnation: node.incarnation, partitions });
    }
    let as_changes = |m: BTreeMap<String, String>| m.into_iter().map(|(k, v)| (k, Some(v))).collect();
    if !file.broker_configs.is_empty() {
        records.push(MetadataRecord::AlterConfigs {
            resource: ConfigResource::Broker { node_id: None },
            changes: as_changes(file.broker_configs),
        });
    }
    if !file.node_broker_configs.is_empty() {
        records.push(MetadataRecord::AlterConfigs {
            resource: ConfigResource::Broker { node_id: Some(node_id) },
            changes: as_changes(file.node_broker_configs),
        });
    }
    if file.next_producer_id < 0 {
        return Err(ImportError::Invalid(format!("next_producer_id is {}", file.next_producer_id)));
    }
    if file.next_producer_id > 0 {
        records.push(MetadataRecord::AllocateProducerIds { node_id, count: file.next_producer_id });
    }
    Ok(records)
}
