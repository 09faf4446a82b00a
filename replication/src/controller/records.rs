//! The records of the controller's metadata log: what a committed entry of
//! `__cluster_metadata` says, how it is encoded (versioned JSON), and the
//! errors (Kafka codes) that proposals and applies answer with.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The record format this code writes; it reads this version and older.
pub const RECORD_VERSION: u16 = 1;

/// A broker's id, as Kafka's `node.id`.
pub type NodeId = i32;

/// A partition's Raft group id: handed out by the controller from a counter
/// and never reused, so a recreated topic never receives traffic meant for
/// an old incarnation.
pub type GroupId = u64;

/// One entry of the metadata log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MetadataRecord {
    /// Sets the cluster id once (a new cluster, or an imported single node).
    InitCluster {
        cluster_id: String,
    },
    /// A broker process announces itself. A new incarnation (a restart)
    /// replaces the previous registration and starts fenced.
    RegisterBroker(BrokerRegistration),
    /// The broker may lead and be listed as live again.
    UnfenceBroker {
        node_id: NodeId,
        incarnation: Uuid,
    },
    /// The broker missed its heartbeats (or shut down): it loses its
    /// leaderships and ISR memberships until it is unfenced.
    FenceBroker {
        node_id: NodeId,
        incarnation: Uuid,
    },
    CreateTopic(CreateTopic),
    /// Appends partitions (replica lists, first = preferred leader) to a topic.
    CreatePartitions {
        topic: String,
        topic_id: Uuid,
        replicas: Vec<Vec<NodeId>>,
    },
    DeleteTopic {
        name: String,
        topic_id: Uuid,
    },
    /// Incremental: `Some` sets a key, `None` removes it.
    AlterConfigs {
        resource: ConfigResource,
        changes: BTreeMap<String, Option<String>>,
    },
    /// The partitions `reporter` leads, as its Raft groups see them.
    ReportLeadership {
        reporter: NodeId,
        incarnation: Uuid,
        partitions: Vec<LeadershipReport>,
    },
    /// The next `count` producer ids go to `node_id` (KIP-730 blocks).
    AllocateProducerIds {
        node_id: NodeId,
        count: i64,
    },
    /// AlterPartitionReassignments: each entry starts, replaces or (target `None`) cancels a
    /// partition's reassignment. Each applies or is refused on its own.
    AlterReassignments {
        entries: Vec<Reassignment>,
        /// KIP-860: a target with another replica count than the partition's is refused unless
        /// this is set.
        allow_replication_factor_change: bool,
    },
    /// The group's leader is about to make `joining` voters, for the reassignment `epoch` of
    /// the partition (which must still be in progress).
    PromoteReassignment {
        group_id: GroupId,
        epoch: u64,
        joining: Vec<NodeId>,
    },
    /// The group's leader has committed a Raft membership of exactly the target's voters of
    /// reassignment `epoch`.
    CompleteReassignment {
        group_id: GroupId,
        epoch: u64,
    },
}

/// One partition's entry in an AlterPartitionReassignments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassignment {
    pub group_id: GroupId,
    /// The replicas wanted, first = preferred leader; `None` cancels the reassignment in progress.
    pub target: Option<Vec<NodeId>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRegistration {
    pub node_id: NodeId,
    /// A fresh id per process start, so stale fence/unfence records of an
    /// earlier run do not touch this one.
    pub incarnation: Uuid,
    pub rack: Option<String>,
    /// `host:port` that Kafka clients connect to.
    pub advertised_listener: String,
    /// `host:port` of node-to-node traffic (`cluster_listen`).
    pub cluster_address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTopic {
    pub name: String,
    pub topic_id: Uuid,
    /// One replica list per partition, first replica = preferred leader.
    pub replicas: Vec<Vec<NodeId>>,
    pub configs: BTreeMap<String, String>,
    /// Broker-owned topics such as `__consumer_offsets`.
    #[serde(default)]
    pub internal: bool,
}

/// `ConfigResource` as requests and answers between nodes carry it: postcard, their encoding,
/// cannot read an internally tagged enum (the form records keep).
pub(crate) mod resource_wire {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{ConfigResource, NodeId};

    #[derive(Serialize, Deserialize)]
    enum Wire {
        Topic(String),
        Broker(Option<NodeId>),
    }

    pub fn serialize<S: Serializer>(r: &ConfigResource, s: S) -> Result<S::Ok, S::Error> {
        match r {
            ConfigResource::Topic { name } => Wire::Topic(name.clone()),
            ConfigResource::Broker { node_id } => Wire::Broker(*node_id),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ConfigResource, D::Error> {
        Ok(match Wire::deserialize(d)? {
            Wire::Topic(name) => ConfigResource::Topic { name },
            Wire::Broker(node_id) => ConfigResource::Broker { node_id },
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ConfigResource {
    Topic {
        name: String,
    },
    /// `node_id: None` is the cluster-wide default (broker resource "").
    Broker {
        node_id: Option<NodeId>,
    },
}

/// The reporter leads this group at `leader_epoch` (its Raft term) with
/// this in-sync set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadershipReport {
    pub group_id: GroupId,
    pub leader_epoch: i32,
    pub isr: Vec<NodeId>,
}

/// Kafka error codes the controller answers with; the broker maps them
/// onto its wire types by `code()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    UnknownServerError,
    UnknownTopicOrPartition,
    InvalidTopicException,
    TopicAlreadyExists,
    InvalidPartitions,
    InvalidReplicationFactor,
    InvalidReplicaAssignment,
    InvalidConfig,
    InvalidRequest,
    FencedLeaderEpoch,
    StaleBrokerEpoch,
    BrokerIdNotRegistered,
    InconsistentClusterId,
    IneligibleReplica,
    NoReassignmentInProgress,
}

impl ErrorCode {
    /// The Kafka protocol's numeric code.
    pub fn code(self) -> i16 {
        match self {
            ErrorCode::UnknownServerError => -1,
            ErrorCode::UnknownTopicOrPartition => 3,
            ErrorCode::InvalidTopicException => 17,
            ErrorCode::TopicAlreadyExists => 36,
            ErrorCode::InvalidPartitions => 37,
            ErrorCode::InvalidReplicationFactor => 38,
            ErrorCode::InvalidReplicaAssignment => 39,
            ErrorCode::InvalidConfig => 40,
            ErrorCode::InvalidRequest => 42,
            ErrorCode::FencedLeaderEpoch => 74,
            ErrorCode::StaleBrokerEpoch => 77,
            ErrorCode::BrokerIdNotRegistered => 102,
            ErrorCode::InconsistentClusterId => 104,
            ErrorCode::IneligibleReplica => 107,
            ErrorCode::NoReassignmentInProgress => 85,
        }
    }
}

/// A refused proposal or record, with the message clients see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{code:?}: {message}")]
pub struct MetadataError {
    pub code: ErrorCode,
    pub message: String,
}

impl MetadataError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        MetadataError { code, message: message.into() }
    }
}

pub(crate) fn err<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, MetadataError> {
    Err(MetadataError::new(code, message))
}

/// Bytes that are not a record or snapshot this code understands.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unreadable metadata: {0}")]
    Json(#[from] serde_json::Error),
    #[error("metadata version {found} is newer than this node reads ({supported})")]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("metadata snapshot is inconsistent: {0}")]
    Inconsistent(String),
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    version: u16,
    body: &'a T,
}

/// Read in two steps so a newer version is refused by its number, not by
/// whatever field it added.
#[derive(Deserialize)]
struct RawEnvelope {
    version: u16,
    body: serde_json::Value,
}

pub(crate) fn encode_versioned<T: Serialize>(body: &T) -> Vec<u8> {
    // Plain data (strings, numbers, maps keyed by strings or integers) always
    // serializes; an empty value would be refused by decode, never misread.
    serde_json::to_vec(&Envelope { version: RECORD_VERSION, body }).unwrap_or_default()
}

pub(crate) fn decode_versioned<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let raw: RawEnvelope = serde_json::from_slice(bytes)?;
    if raw.version > RECORD_VERSION {
        return Err(DecodeError::UnsupportedVersion { found: raw.version, supported: RECORD_VERSION });
    }
    Ok(serde_json::from_value(raw.body)?)
}

impl MetadataRecord {
    /// The bytes stored as the value of a metadata log entry.
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<MetadataRecord, DecodeError> {
        decode_versioned(bytes)
    }
}
