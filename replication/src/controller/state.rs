//! `ClusterMetadata`: the state every node rebuilds by applying the committed
//! metadata log. `apply` is deterministic and all-or-nothing (a record that
//! fails validation changes nothing); snapshots are the whole state as JSON.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::records::{
    decode_versioned, encode_versioned, err, BrokerRegistration, ConfigResource, CreateTopic, DecodeError, ErrorCode,
    GroupId, LeadershipReport, MetadataError, MetadataRecord, NodeId,
};

/// The most partitions a topic may have (the single-node broker's limit).
pub const MAX_PARTITIONS: usize = 100_000;

/// A registered broker and whether it is fenced (not live).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broker {
    pub registration: BrokerRegistration,
    pub fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    pub id: Uuid,
    pub configs: BTreeMap<String, String>,
    pub internal: bool,
    /// The group id of partition i at index i.
    pub partitions: Vec<GroupId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub topic: String,
    pub index: i32,
    /// First replica = preferred leader.
    pub replicas: Vec<NodeId>,
    /// None until the group's Raft leader reports, or after it was fenced.
    pub leader: Option<NodeId>,
    pub leader_epoch: i32,
    pub isr: Vec<NodeId>,
    /// A reassignment in progress. While one is, `replicas` lists every node that may hold the
    /// group's log: the target first, then the others. So a node is dropped from it (and
    /// deletes its replica) only once the group's Raft membership no longer has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reassignment: Option<Reassigning>,
    /// How many reassignment entries have applied to this partition (each new target, cancel
    /// or replacement counts one): the epoch of the next.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reassignments: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where a partition's reassignment goes, and where it began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reassigning {
    /// First = preferred leader.
    pub target: Vec<NodeId>,
    /// The replicas when the first of a chain of reassignments (each replacing the last) began:
    /// what a cancellation goes back to.
    pub original: Vec<NodeId>,
    /// Replicas outside `original` that the group's leader may have made voters (it records
    /// them first). Until a replica is here it has never voted or acknowledged an entry, so one
    /// that starts without its log starts afresh as a learner; after, it must recover like any
    /// voter that lost its disk. Grows until the chain completes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub promoted: Vec<NodeId>,
    /// Which entry of the partition's reassignments this is (`Partition::reassignments` when it
    /// was set): a leader's step names it, so a step decided for a target that was since
    /// replaced, even by an equal one, is refused.
    pub epoch: u64,
}

/// What an applied record did, for the node applier (create or drop local
/// replicas) and for the proposer's answer to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    ClusterInitialized {
        cluster_id: String,
    },
    /// `fenced` is the broker's state after the registration.
    BrokerRegistered {
        node_id: NodeId,
        fenced: bool,
    },
    BrokerUnfenced {
        node_id: NodeId,
    },
    /// Groups whose recorded leader was this broker and now have none.
    BrokerFenced {
        node_id: NodeId,
        lost_leadership: Vec<GroupId>,
    },
    TopicCreated {
        name: String,
        topic_id: Uuid,
        groups: Vec<GroupId>,
    },
    /// The groups of the new partitions only.
    PartitionsCreated {
        name: String,
        groups: Vec<GroupId>,
    },
    TopicDeleted {
        name: String,
        topic_id: Uuid,
        groups: Vec<GroupId>,
    },
    ConfigsAltered {
        #[serde(with = "crate::controller::records::resource_wire")]
        resource: ConfigResource,
    },
    /// Entries of a batched report apply one by one; stale ones are skipped.
    LeadershipReported {
        applied: Vec<GroupId>,
        skipped: Vec<(GroupId, MetadataError)>,
    },
    ProducerIds {
        node_id: NodeId,
        first: i64,
        count: i64,
    },
    /// The entries of an AlterPartitionReassignments that took effect, and those refused.
    ReassignmentsAltered {
        applied: Vec<GroupId>,
        skipped: Vec<(GroupId, MetadataError)>,
    },
    /// The group's leader may now make the adding replicas voters.
    ReassignmentPromoting {
        group_id: GroupId,
    },
    /// The group's Raft membership is the target: `replicas` is the target alone.
    ReassignmentCompleted {
        group_id: GroupId,
    },
}

/// The cluster's metadata: brokers, topics, partitions, configs and the
/// counters of controller-assigned ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMetadata {
    cluster_id: Option<String>,
    brokers: BTreeMap<NodeId, Broker>,
    topics: BTreeMap<String, Topic>,
    partitions: BTreeMap<GroupId, Partition>,
    /// Dynamic broker configs for the whole cluster (resource name "").
    cluster_configs: BTreeMap<String, String>,
    /// Dynamic broker configs per node; they win over the cluster's.
    broker_configs: BTreeMap<NodeId, BTreeMap<String, String>>,
    next_producer_id: i64,
    next_group_id: GroupId,
}

/// Kafka's rule: 1-249 characters of [a-zA-Z0-9._-], not "." or "..".
/// The same rule as the single-node broker's `topics::validate_name`.
pub fn validate_topic_name(name: &str) -> Result<(), MetadataError> {
    let bad = |m: String| err(ErrorCode::InvalidTopicException, m);
    if name.is_empty() || name == "." || name == ".." {
        return bad(format!("Topic name {name:?} is illegal"));
    }
    if name.len() > 249 {
        return bad(format!("Topic name is longer than 249 characters: {name}"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return bad(format!(
            "Topic name {name:?} contains characters other than ASCII alphanumerics, '.', '_' and '-'"
        ));
    }
    Ok(())
}

fn has_duplicates(ids: &[NodeId]) -> bool {
    let set: BTreeSet<&NodeId> = ids.iter().collect();
    set.len() != ids.len()
}

/// The controller quorum's own Raft group; partitions get ids counted up from 0, which never
/// reach it.
pub const CONTROLLER_GROUP: GroupId = GroupId::MAX;

impl ClusterMetadata {
    pub fn new() -> Self {
        Self::default()
    }

    // ---- reads -------------------------------------------------------

    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    pub fn brokers(&self) -> &BTreeMap<NodeId, Broker> {
        &self.brokers
    }

    pub fn broker(&self, node_id: NodeId) -> Option<&Broker> {
        self.brokers.get(&node_id)
    }

    /// Registered brokers that are not fenced, by id.
    pub fn live_brokers(&self) -> impl Iterator<Item = &Broker> {
        self.brokers.values().filter(|b| !b.fenced)
    }

    pub fn topics(&self) -> &BTreeMap<String, Topic> {
        &self.topics
    }

    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: Uuid) -> Option<(&str, &Topic)> {
        self.topics.iter().find(|(_, t)| t.id == id).map(|(n, t)| (n.as_str(), t))
    }

    pub fn partitions(&self) -> &BTreeMap<GroupId, Partition> {
        &self.partitions
    }

    pub fn partition(&self, group_id: GroupId) -> Option<&Partition> {
        self.partitions.get(&group_id)
    }

    pub(super) fn partition_mut(&mut self, group: GroupId) -> Result<&mut Partition, MetadataError> {
        match self.partitions.get_mut(&group) {
            Some(p) => Ok(p),
            None => err(ErrorCode::UnknownTopicOrPartition, format!("No partition has group {group}")),
        }
    }

    /// A topic's partitions in index order.
    pub fn partitions_of<'a>(&'a self, topic: &str) -> impl Iterator<Item = (GroupId, &'a Partition)> + 'a {
        let groups = self.topics.get(topic).map(|t| t.partitions.clone()).unwrap_or_default();
        groups.into_iter().filter_map(move |g| self.partitions.get(&g).map(|p| (g, p)))
    }

    pub fn cluster_configs(&self) -> &BTreeMap<String, String> {
        &self.cluster_configs
    }

    /// The dynamic configs set on one broker (not the cluster-wide ones).
    pub fn broker_configs(&self, node_id: NodeId) -> Option<&BTreeMap<String, String>> {
        self.broker_configs.get(&node_id)
    }

    pub fn next_producer_id(&self) -> i64 {
        self.next_producer_id
    }

    pub fn next_group_id(&self) -> GroupId {
        self.next_group_id
    }

    /// The replica that should lead `group`: the first live one on a rack its
    /// topic's `leader.preferred.racks` names (or the first there, when none is
    /// live), or the first replica when that config is empty or names no rack
    /// holding one. Placement puts such a replica
    /// first at creation; this keeps the pinning when the config changes later.
    pub fn preferred_leader(&self, group: GroupId) -> Option<NodeId> {
        let p = self.partitions.get(&group)?;
        let racks = super::placement::preferred_racks(
            self.topics
                .get(&p.topic)
                .and_then(|t| t.configs.get(super::placement::LEADER_PREFERRED_RACKS))
                .map(String::as_str),
        );
        let pinned = |r: &&NodeId| {
            self.brokers.get(r).and_then(|b| b.registration.rack.as_ref()).is_some_and(|rk| racks.contains(rk))
        };
        let live = |r: &&NodeId| self.brokers.get(r).is_some_and(|b| !b.fenced);
        // A live one first, so that leadership goes back to the pinned racks after a failover
        // left it elsewhere while the first pinned replica is down.
        // During a reassignment, among the replicas it keeps.
        let target = p.target();
        let mut on_pinned = target.iter().filter(pinned);
        on_pinned.clone().find(live).or_else(|| on_pinned.next()).or(target.first()).copied()
    }

    /// ElectLeaders PREFERRED over every partition: the groups whose
    /// preferred replica (`preferred_leader`) is live and in the ISR but does not
    /// lead, with that replica. Placement keeps preferred leaders within one
    /// of each other, so moving these restores the balance after restarts
    /// and failovers; the controller asks each group to transfer leadership.
    pub fn preferred_leader_elections(&self) -> Vec<(GroupId, NodeId)> {
        self.partitions
            .iter()
            .filter_map(|(g, p)| {
                let preferred = self.preferred_leader(*g)?;
                let live = self.brokers.get(&preferred).is_some_and(|b| !b.fenced);
                (live && p.isr.contains(&preferred) && p.leader != Some(preferred)).then_some((*g, preferred))
            })
            .collect()
    }

    // ---- snapshots ---------------------------------------------------

    /// The whole state, versioned, for a Raft snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Reads a snapshot back, refusing one whose contents contradict each
    /// other (so a corrupt snapshot is an error, not a broken cluster view).
    pub fn restore(bytes: &[u8]) -> Result<ClusterMetadata, DecodeError> {
        let state: ClusterMetadata = decode_versioned(bytes)?;
        state.check_invariants().map_err(DecodeError::Inconsistent)?;
        Ok(state)
    }

    /// What must hold after every apply: replicas are distinct registered
    /// brokers, the leader is a live replica or none, the ISR is a subset of
    /// the replicas, topics and partitions point at each other, group ids
    /// come from the counter, topic ids are unique.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut topic_ids = BTreeSet::new();
        let mut owned = BTreeSet::new();
        for (name, t) in &self.topics {
            if !topic_ids.insert(t.id) {
                return Err(format!("topic id {} used twice", t.id));
            }
            if t.partitions.is_empty() {
                return Err(format!("topic {name} has no partitions"));
            }
            for (i, g) in t.partitions.iter().enumerate() {
                let p = self.partitions.get(g).ok_or_else(|| format!("topic {name} names missing group {g}"))?;
                if p.topic != *name || p.index as usize != i {
                    return Err(format!("group {g} is {}-{}, but topic {name} lists it as {i}", p.topic, p.index));
                }
                if !owned.insert(*g) {
                    return Err(format!("group {g} listed twice"));
                }
            }
        }
        for (g, p) in &self.partitions {
            if !owned.contains(g) {
                return Err(format!("group {g} belongs to no topic"));
            }
            if *g == CONTROLLER_GROUP {
                return Err(format!("partition {}-{} has the controller's group id", p.topic, p.index));
            }
            if *g >= self.next_group_id {
                return Err(format!("group {g} is not below next_group_id {}", self.next_group_id));
            }
            if p.replicas.is_empty() || has_duplicates(&p.replicas) {
                return Err(format!("group {g} has replicas {:?}", p.replicas));
            }
            if let Some(r) = p.replicas.iter().find(|r| !self.brokers.contains_key(r)) {
                return Err(format!("group {g} has unregistered replica {r}"));
            }
            if let Some(l) = p.leader {
                if !p.replicas.contains(&l) {
                    return Err(format!("group {g} leader {l} is not a replica"));
                }
                if self.brokers.get(&l).is_none_or(|b| b.fenced) {
                    return Err(format!("group {g} leader {l} is fenced"));
                }
            }
            if has_duplicates(&p.isr) || p.isr.iter().any(|r| !p.replicas.contains(r)) {
                return Err(format!("group {g} ISR {:?} is not a subset of {:?}", p.isr, p.replicas));
            }
            if let Some(r) = &p.reassignment {
                let listed =
                    |l: &[NodeId]| !l.is_empty() && !has_duplicates(l) && l.iter().all(|n| p.replicas.contains(n));
                if !listed(&r.target)
                    || !listed(&r.original)
                    || !p.replicas.starts_with(&r.target)
                    || r.promoted.iter().any(|n| !p.replicas.contains(n) || r.original.contains(n))
                    || r.epoch >= p.reassignments
                {
                    return Err(format!("group {g} moves {:?} -> {:?} within {:?}", r.original, r.target, p.replicas));
                }
            }
        }
        if self.next_producer_id < 0 {
            return Err("negative next_producer_id".into());
        }
        if self.broker_configs.values().any(|m| m.is_empty()) {
            return Err("empty per-broker config layer".into());
        }
        Ok(())
    }

    // ---- apply -------------------------------------------------------

    /// Applies one committed record. Identical on every node given the same
    /// state; on error the state is unchanged.
    pub fn apply(&mut self, record: &MetadataRecord) -> Result<Outcome, MetadataError> {
        match record {
            MetadataRecord::InitCluster { cluster_id } => self.apply_init(cluster_id),
            MetadataRecord::RegisterBroker(reg) => self.apply_register(reg),
            MetadataRecord::UnfenceBroker { node_id, incarnation } => {
                self.registered(*node_id, *incarnation)?;
                if let Some(b) = self.brokers.get_mut(node_id) {
                    b.fenced = false;
                }
                Ok(Outcome::BrokerUnfenced { node_id: *node_id })
            }
            MetadataRecord::FenceBroker { node_id, incarnation } => {
                self.registered(*node_id, *incarnation)?;
                if let Some(b) = self.brokers.get_mut(node_id) {
                    b.fenced = true;
                }
                let lost_leadership = self.drop_from_partitions(*node_id);
                Ok(Outcome::BrokerFenced { node_id: *node_id, lost_leadership })
            }
            MetadataRecord::CreateTopic(t) => self.apply_create_topic(t),
            MetadataRecord::CreatePartitions { topic, topic_id, replicas } => {
                self.apply_create_partitions(topic, *topic_id, replicas)
            }
            MetadataRecord::DeleteTopic { name, topic_id } => {
                if self.topics.get(name).is_none_or(|t| t.id != *topic_id) {
                    return err(
                        ErrorCode::UnknownTopicOrPartition,
                        format!("Topic '{name}' with id {topic_id} does not exist"),
                    );
                }
                let Some(t) = self.topics.remove(name) else {
                    return err(ErrorCode::UnknownTopicOrPartition, format!("Topic '{name}' does not exist"));
                };
                for g in &t.partitions {
                    self.partitions.remove(g);
                }
                Ok(Outcome::TopicDeleted { name: name.clone(), topic_id: t.id, groups: t.partitions })
            }
            MetadataRecord::AlterConfigs { resource, changes } => self.apply_alter_configs(resource, changes),
            MetadataRecord::ReportLeadership { reporter, incarnation, partitions } => {
                self.apply_report(*reporter, *incarnation, partitions)
            }
            MetadataRecord::AlterReassignments { entries, allow_replication_factor_change } => {
                Ok(self.apply_alter_reassignments(entries, *allow_replication_factor_change))
            }
            MetadataRecord::PromoteReassignment { group_id, epoch, joining } => {
                self.apply_promote_reassignment(*group_id, *epoch, joining)
            }
            MetadataRecord::CompleteReassignment { group_id, epoch } => {
                self.apply_complete_reassignment(*group_id, *epoch)
            }
            MetadataRecord::AllocateProducerIds { node_id, count } => {
                if !self.brokers.contains_key(node_id) {
                    return err(ErrorCode::BrokerIdNotRegistered, format!("Broker {node_id} is not registered"));
                }
                if *count <= 0 {
                    return err(ErrorCode::InvalidRequest, format!("A producer id block of {count} ids"));
                }
                let first = self.next_producer_id;
                let Some(next) = first.checked_add(*count) else {
                    return err(ErrorCode::UnknownServerError, "Producer ids are exhausted");
                };
                self.next_producer_id = next;
                Ok(Outcome::ProducerIds { node_id: *node_id, first, count: *count })
            }
        }
    }

    fn apply_init(&mut self, cluster_id: &str) -> Result<Outcome, MetadataError> {
        if cluster_id.is_empty() {
            return err(ErrorCode::InvalidRequest, "An empty cluster id");
        }
        match &self.cluster_id {
            Some(existing) if existing != cluster_id => {
                err(ErrorCode::InconsistentClusterId, format!("The cluster id is {existing}, not {cluster_id}"))
            }
            _ => {
                self.cluster_id = Some(cluster_id.to_string());
                Ok(Outcome::ClusterInitialized { cluster_id: cluster_id.to_string() })
            }
        }
    }

    fn apply_register(&mut self, reg: &BrokerRegistration) -> Result<Outcome, MetadataError> {
        check_registration(reg)?;
        let same_run = self.brokers.get(&reg.node_id).filter(|b| b.registration.incarnation == reg.incarnation);
        // A retried registration of the running process keeps its state; a
        // new process starts fenced, and its predecessor's leaderships and
        // ISR places are void (that process is gone).
        let fenced = match same_run {
            Some(b) => b.fenced,
            None => {
                self.drop_from_partitions(reg.node_id);
                true
            }
        };
        self.brokers.insert(reg.node_id, Broker { registration: reg.clone(), fenced });
        Ok(Outcome::BrokerRegistered { node_id: reg.node_id, fenced })
    }

    /// The broker must be registered as this incarnation.
    fn registered(&self, node_id: NodeId, incarnation: Uuid) -> Result<&Broker, MetadataError> {
        let Some(b) = self.brokers.get(&node_id) else {
            return err(ErrorCode::BrokerIdNotRegistered, format!("Broker {node_id} is not registered"));
        };
        if b.registration.incarnation != incarnation {
            return err(
                ErrorCode::StaleBrokerEpoch,
                format!("Broker {node_id} is now incarnation {}, not {incarnation}", b.registration.incarnation),
            );
        }
        Ok(b)
    }

    /// Clears the node's leaderships and ISR places; returns the groups it led.
    fn drop_from_partitions(&mut self, node_id: NodeId) -> Vec<GroupId> {
        let mut lost = Vec::new();
        for (g, p) in self.partitions.iter_mut() {
            if p.leader == Some(node_id) {
                p.leader = None;
                lost.push(*g);
            }
            p.isr.retain(|r| *r != node_id);
        }
        lost
    }

    /// Replica lists must be non-empty, distinct and name registered brokers.
    pub(super) fn check_replica_lists(&self, lists: &[Vec<NodeId>]) -> Result<(), MetadataError> {
        for (i, list) in lists.iter().enumerate() {
            if list.is_empty() {
                return err(ErrorCode::InvalidReplicaAssignment, format!("Partition {i} has no replicas"));
            }
            if has_duplicates(list) {
                return err(
                    ErrorCode::InvalidReplicaAssignment,
                    format!("Partition {i} lists a broker twice: {list:?}"),
                );
            }
            if let Some(r) = list.iter().find(|r| !self.brokers.contains_key(r)) {
                return err(
                    ErrorCode::InvalidReplicaAssignment,
                    format!("Partition {i} names broker {r}, which is not registered"),
                );
            }
        }
        Ok(())
    }

    /// Group ids for `n` new partitions, without taking them yet.
    fn group_ids(&self, n: usize) -> Result<std::ops::Range<GroupId>, MetadataError> {
        let end = u64::try_from(n).ok().and_then(|n| self.next_group_id.checked_add(n));
        match end {
            // The range is exclusive and `checked_add` keeps `end` within u64, so the ids stay
            // below CONTROLLER_GROUP (u64::MAX).
            Some(end) => Ok(self.next_group_id..end),
            None => err(ErrorCode::UnknownServerError, "Partition group ids are exhausted"),
        }
    }

    fn add_partitions(&mut self, topic: &str, first_index: usize, lists: &[Vec<NodeId>]) -> Vec<GroupId> {
        let mut groups = Vec::with_capacity(lists.len());
        for (i, replicas) in lists.iter().enumerate() {
            let g = self.next_group_id;
            self.next_group_id += 1;
            self.partitions.insert(
                g,
                Partition {
                    topic: topic.to_string(),
                    index: (first_index + i) as i32,
                    replicas: replicas.clone(),
                    leader: None,
                    leader_epoch: 0,
                    // An empty log: every replica is caught up.
                    isr: replicas.clone(),
                    reassignment: None,
                    reassignments: 0,
                },
            );
            groups.push(g);
        }
        groups
    }

    fn apply_create_topic(&mut self, t: &CreateTopic) -> Result<Outcome, MetadataError> {
        validate_topic_name(&t.name)?;
        if self.topics.contains_key(&t.name) {
            return err(ErrorCode::TopicAlreadyExists, format!("Topic '{}' already exists.", t.name));
        }
        if t.topic_id.is_nil() || self.topic_by_id(t.topic_id).is_some() {
            return err(ErrorCode::InvalidRequest, format!("Topic id {} is nil or in use", t.topic_id));
        }
        if t.replicas.is_empty() || t.replicas.len() > MAX_PARTITIONS {
            return err(ErrorCode::InvalidPartitions, format!("{} partitions", t.replicas.len()));
        }
        self.check_replica_lists(&t.replicas)?;
        if t.configs.keys().any(|k| k.is_empty()) {
            return err(ErrorCode::InvalidConfig, "An empty config name");
        }
        self.group_ids(t.replicas.len())?;
        let groups = self.add_partitions(&t.name, 0, &t.replicas);
        self.topics.insert(
            t.name.clone(),
            Topic { id: t.topic_id, configs: t.configs.clone(), internal: t.internal, partitions: groups.clone() },
        );
        Ok(Outcome::TopicCreated { name: t.name.clone(), topic_id: t.topic_id, groups })
    }

    fn apply_create_partitions(
        &mut self,
        name: &str,
        topic_id: Uuid,
        lists: &[Vec<NodeId>],
    ) -> Result<Outcome, MetadataError> {
        let Some(existing) = self.topics.get(name).filter(|t| t.id == topic_id).map(|t| t.partitions.len()) else {
            return err(
                ErrorCode::UnknownTopicOrPartition,
                format!("Topic '{name}' with id {topic_id} does not exist"),
            );
        };
        if lists.is_empty() || existing + lists.len() > MAX_PARTITIONS {
            return err(ErrorCode::InvalidPartitions, format!("Adding {} partitions to {existing}", lists.len()));
        }
        self.check_replica_lists(lists)?;
        self.group_ids(lists.len())?;
        let groups = self.add_partitions(name, existing, lists);
        if let Some(t) = self.topics.get_mut(name) {
            t.partitions.extend(&groups);
        }
        Ok(Outcome::PartitionsCreated { name: name.to_string(), groups })
    }

    fn apply_alter_configs(
        &mut self,
        resource: &ConfigResource,
        changes: &BTreeMap<String, Option<String>>,
    ) -> Result<Outcome, MetadataError> {
        if changes.keys().any(|k| k.is_empty()) {
            return err(ErrorCode::InvalidConfig, "An empty config name");
        }
        let apply = |map: &mut BTreeMap<String, String>| {
            for (k, v) in changes {
                match v {
                    Some(v) => map.insert(k.clone(), v.clone()),
                    None => map.remove(k),
                };
            }
        };
        match resource {
            ConfigResource::Topic { name } => {
                let Some(t) = self.topics.get_mut(name) else {
                    return err(ErrorCode::UnknownTopicOrPartition, format!("Topic '{name}' does not exist"));
                };
                apply(&mut t.configs);
            }
            ConfigResource::Broker { node_id: None } => apply(&mut self.cluster_configs),
            ConfigResource::Broker { node_id: Some(id) } => {
                if *id < 0 {
                    return err(ErrorCode::InvalidRequest, format!("Broker id {id}"));
                }
                let map = self.broker_configs.entry(*id).or_default();
                apply(map);
                // An empty layer is no layer, so states compare equal
                // whichever way they got there.
                if map.is_empty() {
                    self.broker_configs.remove(id);
                }
            }
        }
        Ok(Outcome::ConfigsAltered { resource: resource.clone() })
    }

    fn apply_report(
        &mut self,
        reporter: NodeId,
        incarnation: Uuid,
        reports: &[LeadershipReport],
    ) -> Result<Outcome, MetadataError> {
        if self.registered(reporter, incarnation)?.fenced {
            return err(ErrorCode::StaleBrokerEpoch, format!("Broker {reporter} is fenced"));
        }
        let (mut applied, mut skipped) = (Vec::new(), Vec::new());
        for r in reports {
            match self.check_report(reporter, r) {
                Ok(()) => {
                    if let Some(p) = self.partitions.get_mut(&r.group_id) {
                        p.leader = Some(reporter);
                        p.leader_epoch = r.leader_epoch;
                        p.isr = r.isr.clone();
                    }
                    applied.push(r.group_id);
                }
                Err(e) => skipped.push((r.group_id, e)),
            }
        }
        Ok(Outcome::LeadershipReported { applied, skipped })
    }

    fn check_report(&self, reporter: NodeId, r: &LeadershipReport) -> Result<(), MetadataError> {
        let g = r.group_id;
        let Some(p) = self.partitions.get(&g) else {
            // A deleted topic's group: its ids are never reused, so a late
            // report cannot touch a recreated topic.
            return err(ErrorCode::UnknownTopicOrPartition, format!("No partition has group {g}"));
        };
        if !p.replicas.contains(&reporter) {
            return err(ErrorCode::InvalidRequest, format!("Broker {reporter} is not a replica of group {g}"));
        }
        if r.leader_epoch < 0 {
            return err(ErrorCode::InvalidRequest, format!("Leader epoch {}", r.leader_epoch));
        }
        // Raft elects at most one leader per term, so an equal epoch from
        // another broker cannot happen; it is refused all the same.
        let stale = r.leader_epoch < p.leader_epoch
            || (r.leader_epoch == p.leader_epoch && p.leader.is_some_and(|l| l != reporter));
        if stale {
            return err(
                ErrorCode::FencedLeaderEpoch,
                format!(
                    "Group {g} is at epoch {} led by {:?}; report is epoch {}",
                    p.leader_epoch, p.leader, r.leader_epoch
                ),
            );
        }
        if !r.isr.contains(&reporter) || has_duplicates(&r.isr) || r.isr.iter().any(|i| !p.replicas.contains(i)) {
            return err(
                ErrorCode::InvalidRequest,
                format!("ISR {:?} of group {g} with replicas {:?}", r.isr, p.replicas),
            );
        }
        if let Some(f) = r.isr.iter().find(|i| self.brokers.get(i).is_none_or(|b| b.fenced)) {
            return err(ErrorCode::IneligibleReplica, format!("ISR member {f} of group {g} is fenced"));
        }
        Ok(())
    }
}

pub(crate) fn check_registration(reg: &BrokerRegistration) -> Result<(), MetadataError> {
    if reg.node_id < 0 {
        return err(ErrorCode::InvalidRequest, format!("Broker id {} is negative", reg.node_id));
    }
    if reg.advertised_listener.is_empty() || reg.cluster_address.is_empty() {
        return err(ErrorCode::InvalidRequest, "A broker registration needs both listener addresses");
    }
    if reg.rack.as_deref() == Some("") {
        return err(ErrorCode::InvalidRequest, "An empty rack name");
    }
    Ok(())
}
