//! Proposal side: the controller leader turns an admin request into a record
//! after checking it against the current state, answering with the Kafka
//! error a client expects. Apply checks again, since the state may move
//! between proposal and commit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::placement::{self, Candidate, Load, LEADER_PREFERRED_RACKS};
use super::records::{
    err, BrokerRegistration, ConfigResource, CreateTopic, ErrorCode, GroupId, LeadershipReport, MetadataError,
    MetadataRecord, NodeId, Reassignment,
};
use super::state::{check_registration, validate_topic_name, ClusterMetadata, MAX_PARTITIONS};

/// What a group's leader reports of a reassignment (`Request::ReassignmentStep`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReassignmentStep {
    /// Is this reassignment still the one in progress? (Asked before each membership change, so
    /// a leader whose metadata lags never moves the group towards a replaced target.)
    Check,
    /// These target replicas are about to become voters.
    Promote(Vec<NodeId>),
    /// The group's membership is the target's.
    Complete,
}

/// KIP-730's block size: how many producer ids a broker takes at once.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

/// Checks config values by the broker's rules (`topic_config::validate` and
/// `validate_broker`); the message is what clients see with INVALID_CONFIG.
pub trait ConfigValidator {
    fn topic_config(&self, name: &str, value: &str) -> Result<(), String>;
    fn broker_config(&self, name: &str, value: &str) -> Result<(), String>;
}

/// Accepts every config; for imports and tests.
pub struct AnyConfig;

impl ConfigValidator for AnyConfig {
    fn topic_config(&self, _: &str, _: &str) -> Result<(), String> {
        Ok(())
    }
    fn broker_config(&self, _: &str, _: &str) -> Result<(), String> {
        Ok(())
    }
}

/// What -1 in a CreateTopics request stands for (`num.partitions`,
/// `default.replication.factor`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct TopicDefaults {
    pub num_partitions: i32,
    pub replication_factor: i16,
}

/// A CreateTopics entry as the client sent it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewTopic {
    pub name: String,
    /// -1: the default.
    pub num_partitions: i32,
    /// -1: the default.
    pub replication_factor: i16,
    /// (partition index, replicas); when given, both counts must be -1.
    pub assignments: Vec<(i32, Vec<NodeId>)>,
    pub configs: BTreeMap<String, String>,
    pub internal: bool,
}

impl Default for NewTopic {
    /// No name yet; default partition count and replication factor.
    fn default() -> Self {
        NewTopic {
            name: String::new(),
            num_partitions: -1,
            replication_factor: -1,
            assignments: Vec::new(),
            configs: BTreeMap::new(),
            internal: false,
        }
    }
}

impl ClusterMetadata {
    fn candidates(&self) -> Vec<Candidate> {
        self.live_brokers()
            .map(|b| Candidate { node_id: b.registration.node_id, rack: b.registration.rack.clone() })
            .collect()
    }

    /// Replicas and preferred leaders already on the live brokers, so new
    /// partitions even them out.
    fn load(&self) -> Load {
        let mut load = Load::default();
        for b in self.live_brokers() {
            load.replicas.insert(b.registration.node_id, 0);
            load.leaders.insert(b.registration.node_id, 0);
        }
        for p in self.partitions().values() {
            for (i, r) in p.replicas.iter().enumerate() {
                if let Some(n) = load.replicas.get_mut(r) {
                    *n += 1;
                }
                if i == 0 {
                    if let Some(n) = load.leaders.get_mut(r) {
                        *n += 1;
                    }
                }
            }
            load.placed += 1;
        }
        load
    }

    /// Explicit assignments: non-empty, distinct, live brokers, one RF.
    fn check_assignment(&self, lists: &[Vec<NodeId>], rf: Option<usize>) -> Result<(), MetadataError> {
        self.check_replica_lists(lists)?;
        let rf = rf.or_else(|| lists.first().map(Vec::len)).unwrap_or(0);
        for (i, list) in lists.iter().enumerate() {
            if list.len() != rf {
                return err(
                    ErrorCode::InvalidReplicaAssignment,
                    format!("Inconsistent replication factor: partition {i} has {} replicas, not {rf}", list.len()),
                );
            }
            if let Some(r) = list.iter().find(|r| self.broker(**r).is_none_or(|b| b.fenced)) {
                return err(
                    ErrorCode::InvalidReplicaAssignment,
                    format!("The manual partition assignment includes broker {r}, which is not live"),
                );
            }
        }
        Ok(())
    }

    /// A broker's registration (a new incarnation per process start).
    pub fn propose_register_broker(&self, reg: BrokerRegistration) -> Result<MetadataRecord, MetadataError> {
        check_registration(&reg)?;
        Ok(MetadataRecord::RegisterBroker(reg))
    }

    /// Fences the broker's current incarnation.
    pub fn propose_fence(&self, node_id: NodeId) -> Result<MetadataRecord, MetadataError> {
        let b = self.registered_broker(node_id)?;
        Ok(MetadataRecord::FenceBroker { node_id, incarnation: b.registration.incarnation })
    }

    /// Unfences the broker's current incarnation.
    pub fn propose_unfence(&self, node_id: NodeId) -> Result<MetadataRecord, MetadataError> {
        let b = self.registered_broker(node_id)?;
        Ok(MetadataRecord::UnfenceBroker { node_id, incarnation: b.registration.incarnation })
    }

    fn registered_broker(&self, node_id: NodeId) -> Result<&super::state::Broker, MetadataError> {
        self.broker(node_id).ok_or_else(|| {
            MetadataError::new(ErrorCode::BrokerIdNotRegistered, format!("Broker {node_id} is not registered"))
        })
    }

    /// A batched leadership report from `reporter`'s current incarnation.
    pub fn propose_report(
        &self,
        reporter: NodeId,
        partitions: Vec<LeadershipReport>,
    ) -> Result<MetadataRecord, MetadataError> {
        let b = self.registered_broker(reporter)?;
        if b.fenced {
            return err(ErrorCode::StaleBrokerEpoch, format!("Broker {reporter} is fenced"));
        }
        Ok(MetadataRecord::ReportLeadership { reporter, incarnation: b.registration.incarnation, partitions })
    }

    /// CreateTopics: name, existence, counts or assignment, configs, then
    /// placement. `topic_id` is the caller's fresh id (randomness stays out
    /// of the state machine).
    pub fn propose_create_topic(
        &self,
        req: &NewTopic,
        topic_id: Uuid,
        defaults: TopicDefaults,
        configs: &dyn ConfigValidator,
    ) -> Result<MetadataRecord, MetadataError> {
        validate_topic_name(&req.name)?;
        if self.topic(&req.name).is_some() {
            return err(ErrorCode::TopicAlreadyExists, format!("Topic '{}' already exists.", req.name));
        }
        let replicas = if !req.assignments.is_empty() {
            if req.num_partitions != -1 || req.replication_factor != -1 {
                return err(
                    ErrorCode::InvalidRequest,
                    "Both numPartitions or replicationFactor and replicasAssignments were set. Both cannot be used at the same time.",
                );
            }
            let mut by_index: BTreeMap<i32, Vec<NodeId>> = BTreeMap::new();
            for (i, list) in &req.assignments {
                if by_index.insert(*i, list.clone()).is_some() {
                    return err(ErrorCode::InvalidReplicaAssignment, format!("Partition {i} is assigned twice"));
                }
            }
            if by_index.keys().enumerate().any(|(i, p)| *p != i as i32) {
                return err(ErrorCode::InvalidReplicaAssignment, "Partitions must be numbered 0..n without gaps.");
            }
            if by_index.len() > MAX_PARTITIONS {
                return err(
                    ErrorCode::InvalidPartitions,
                    format!("{} partitions is more than a topic may have", by_index.len()),
                );
            }
            let lists: Vec<Vec<NodeId>> = by_index.into_values().collect();
            self.check_assignment(&lists, None)?;
            lists
        } else {
            let partitions = if req.num_partitions == -1 { defaults.num_partitions } else { req.num_partitions };
            if partitions < 1 {
                return err(ErrorCode::InvalidPartitions, "Number of partitions must be larger than 0.");
            }
            if partitions as usize > MAX_PARTITIONS {
                return err(
                    ErrorCode::InvalidPartitions,
                    format!("{partitions} partitions is more than a topic may have"),
                );
            }
            let rf = if req.replication_factor == -1 { defaults.replication_factor } else { req.replication_factor };
            if rf < 1 {
                return err(
                    ErrorCode::InvalidReplicationFactor,
                    "Replication factor must be larger than 0, or -1 to use the default value.",
                );
            }
            let pinned = placement::preferred_racks(req.configs.get(LEADER_PREFERRED_RACKS).map(String::as_str));
            placement::place(&self.candidates(), &mut self.load(), partitions as usize, rf as usize, &pinned)?
        };
        for (k, v) in &req.configs {
            if k.is_empty() {
                return err(ErrorCode::InvalidConfig, "An empty config name");
            }
            configs.topic_config(k, v).map_err(|m| MetadataError::new(ErrorCode::InvalidConfig, m))?;
        }
        Ok(MetadataRecord::CreateTopic(CreateTopic {
            name: req.name.clone(),
            topic_id,
            replicas,
            configs: req.configs.clone(),
            internal: req.internal,
        }))
    }

    /// CreatePartitions to a new total of `count`, placed with the topic's
    /// replication factor unless `assignments` names the new partitions'
    /// replicas.
    pub fn propose_create_partitions(
        &self,
        name: &str,
        count: i32,
        assignments: Option<&[Vec<NodeId>]>,
    ) -> Result<MetadataRecord, MetadataError> {
        let Some(topic) = self.topic(name) else {
            return err(ErrorCode::UnknownTopicOrPartition, format!("Topic '{name}' does not exist"));
        };
        // A group's or transaction's partition of an internal topic is a hash modulo its count:
        // more partitions would strand everything recorded so far.
        if topic.internal {
            return err(ErrorCode::InvalidRequest, format!("Internal topic '{name}' cannot get more partitions"));
        }
        let current = topic.partitions.len();
        if count < 0 || (count as usize) <= current {
            let msg = if count as usize == current {
                format!("Topic already has {count} partitions.")
            } else {
                format!("Topic currently has {current} partitions, which is higher than the requested {count}.")
            };
            return err(ErrorCode::InvalidPartitions, msg);
        }
        if count as usize > MAX_PARTITIONS {
            return err(ErrorCode::InvalidPartitions, format!("{count} partitions is more than a topic may have"));
        }
        let new = count as usize - current;
        let rf = self.partitions_of(name).next().map(|(_, p)| p.replicas.len()).unwrap_or(1);
        let replicas = match assignments {
            Some(lists) => {
                if lists.len() != new {
                    return err(
                        ErrorCode::InvalidReplicaAssignment,
                        format!(
                            "Increasing the number of partitions by {new} but {} assignments provided.",
                            lists.len()
                        ),
                    );
                }
                self.check_assignment(lists, Some(rf))?;
                lists.to_vec()
            }
            None => {
                let pinned = placement::preferred_racks(topic.configs.get(LEADER_PREFERRED_RACKS).map(String::as_str));
                placement::place(&self.candidates(), &mut self.load(), new, rf, &pinned)?
            }
        };
        Ok(MetadataRecord::CreatePartitions { topic: name.to_string(), topic_id: topic.id, replicas })
    }

    /// DeleteTopics; internal topics are refused, as the single-node broker does.
    pub fn propose_delete_topic(&self, name: &str) -> Result<MetadataRecord, MetadataError> {
        let Some(topic) = self.topic(name) else {
            return err(ErrorCode::UnknownTopicOrPartition, format!("Topic '{name}' does not exist"));
        };
        if topic.internal {
            return err(ErrorCode::InvalidRequest, format!("Internal topic '{name}' cannot be deleted"));
        }
        Ok(MetadataRecord::DeleteTopic { name: name.to_string(), topic_id: topic.id })
    }

    /// Incremental config changes (`None` deletes a key) on a topic, one
    /// broker, or the whole cluster.
    pub fn propose_alter_configs(
        &self,
        resource: ConfigResource,
        changes: BTreeMap<String, Option<String>>,
        configs: &dyn ConfigValidator,
    ) -> Result<MetadataRecord, MetadataError> {
        let topic = match &resource {
            ConfigResource::Topic { name } => {
                if self.topic(name).is_none() {
                    return err(ErrorCode::UnknownTopicOrPartition, format!("Topic '{name}' does not exist"));
                }
                true
            }
            ConfigResource::Broker { node_id: Some(id) } if *id < 0 => {
                return err(ErrorCode::InvalidRequest, format!("Broker id {id}"));
            }
            ConfigResource::Broker { .. } => false,
        };
        for (k, v) in &changes {
            if k.is_empty() {
                return err(ErrorCode::InvalidConfig, "An empty config name");
            }
            if let Some(v) = v {
                let checked = if topic { configs.topic_config(k, v) } else { configs.broker_config(k, v) };
                checked.map_err(|m| MetadataError::new(ErrorCode::InvalidConfig, m))?;
            }
        }
        Ok(MetadataRecord::AlterConfigs { resource, changes })
    }

    /// AlterPartitionReassignments (each entry is checked again, and applied or refused on its
    /// own, when the record applies).
    pub fn propose_alter_reassignments(
        &self,
        entries: Vec<Reassignment>,
        allow_replication_factor_change: bool,
    ) -> Result<MetadataRecord, MetadataError> {
        let groups: std::collections::BTreeSet<_> = entries.iter().map(|e| e.group_id).collect();
        if groups.len() != entries.len() {
            return err(ErrorCode::InvalidRequest, "A partition is reassigned twice in one request");
        }
        Ok(MetadataRecord::AlterReassignments { entries, allow_replication_factor_change })
    }

    /// A reassignment's step, from the group's leader: whether reassignment `epoch` is still
    /// the one in progress (`None`: a check, answered without a record), else the record of
    /// the promotion or completion.
    pub fn propose_reassignment_step(
        &self,
        group_id: GroupId,
        epoch: u64,
        step: &ReassignmentStep,
    ) -> Result<Option<MetadataRecord>, MetadataError> {
        self.check_reassignment(group_id, epoch)?;
        Ok(match step {
            ReassignmentStep::Check => None,
            ReassignmentStep::Promote(joining) => {
                Some(MetadataRecord::PromoteReassignment { group_id, epoch, joining: joining.clone() })
            }
            ReassignmentStep::Complete => Some(MetadataRecord::CompleteReassignment { group_id, epoch }),
        })
    }

    /// The next block of producer ids for a registered broker.
    pub fn propose_allocate_producer_ids(&self, node_id: NodeId) -> Result<MetadataRecord, MetadataError> {
        self.registered_broker(node_id)?;
        if self.next_producer_id().checked_add(PRODUCER_ID_BLOCK).is_none() {
            return err(ErrorCode::UnknownServerError, "Producer ids are exhausted");
        }
        Ok(MetadataRecord::AllocateProducerIds { node_id, count: PRODUCER_ID_BLOCK })
    }
}
