//! KIP-848 consumer groups (`group.protocol=consumer`): the broker computes
//! assignments (uniform or range) and hands them out through heartbeats.
//! A partition moves only after its previous owner has reported giving it
//! up, so no two members ever own one partition at the same time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use uuid::Uuid;

use crate::topics::Topics;

/// What assignors need of a topic: its id and partition count.
pub trait TopicShapes {
    fn shape(&self, name: &str) -> Option<(Uuid, i32)>;
}

impl TopicShapes for Topics {
    fn shape(&self, name: &str) -> Option<(Uuid, i32)> {
        self.topic(name).map(|m| (m.id, m.partitions))
    }
}

/// A cluster's topics first, then the node's own.
impl TopicShapes for crate::server::Broker {
    fn shape(&self, name: &str) -> Option<(Uuid, i32)> {
        if let Some(found) = self.cluster.as_ref().and_then(|c| {
            let count = c.partition_count(name)?;
            Some((c.read(|m| m.topic(name).map(|t| t.id))?, count))
        }) {
            return Some(found);
        }
        self.topics.shape(name)
    }
}

pub type TopicPartition = (Uuid, i32);

pub const ASSIGNORS: [&str; 2] = ["uniform", "range"];

#[derive(Debug, Clone)]
pub struct CgMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub epoch: i32,
    previous_epoch: i32,
    pub subscribed: Vec<String>,
    /// What the member may own now (what the last response granted).
    pub assigned: BTreeSet<TopicPartition>,
    /// What the member last said it owns.
    owned: Option<BTreeSet<TopicPartition>>,
    last_sent: Option<BTreeSet<TopicPartition>>,
    last_seen: Instant,
}

#[derive(Debug, Default)]
pub struct CgGroup {
    pub epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: String,
    pub members: BTreeMap<String, CgMember>,
    pub target: HashMap<String, BTreeSet<TopicPartition>>,
    /// (topic, id, partition count) of every subscribed topic, to notice
    /// new partitions and topics.
    metadata: Vec<(String, Uuid, i32)>,
}

impl CgGroup {
    pub fn state(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.assignment_epoch < self.epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| m.epoch != self.assignment_epoch || Some(&m.assigned) != self.target.get(&m.member_id))
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }
}

pub struct HeartbeatRequest {
    pub group_id: String,
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub subscribed: Option<Vec<String>>,
    pub assignor: Option<String>,
    pub owned: Option<BTreeSet<TopicPartition>>,
}

#[derive(Debug, Default)]
pub struct HeartbeatResult {
    pub error: Option<(ResponseError, String)>,
    pub member_id: String,
    pub member_epoch: i32,
    pub assignment: Option<BTreeSet<TopicPartition>>,
}

impl HeartbeatResult {
    fn error(e: ResponseError, msg: impl Into<String>, member_id: &str) -> Self {
        HeartbeatResult {
            error: Some((e, msg.into())),
            member_id: member_id.to_string(),
            member_epoch: -1,
            assignment: None,
        }
    }
}

pub struct ConsumerGroups {
    groups: Mutex<HashMap<String, CgGroup>>,
    session_timeout: Duration,
}

/// Uniform: every partition of the subscribed topics to one subscribed
/// member, counts balanced, keeping a partition where it was when that
/// stays balanced (so rebalances move as little as possible).
fn assign_uniform(
    members: &BTreeMap<String, CgMember>,
    metadata: &[(String, Uuid, i32)],
    previous: &HashMap<String, BTreeSet<TopicPartition>>,
) -> HashMap<String, BTreeSet<TopicPartition>> {
    let mut out: HashMap<String, BTreeSet<TopicPartition>> =
        members.keys().map(|m| (m.clone(), BTreeSet::new())).collect();
    let all: Vec<(String, TopicPartition)> =
        metadata.iter().flat_map(|(name, id, n)| (0..*n).map(move |p| (name.clone(), (*id, p)))).collect();
    let eligible = |topic: &str| -> Vec<&String> {
        members.values().filter(|m| m.subscribed.iter().any(|t| t == topic)).map(|m| &m.member_id).collect()
    };
    let subscribers = members.len().max(1);
    let quota = all.len().div_ceil(subscribers);
    let mut unplaced = Vec::new();
    for (topic, tp) in &all {
        let keeper = previous
            .iter()
            .find(|(m, set)| {
                set.contains(tp) && members.get(*m).is_some_and(|mm| mm.subscribed.iter().any(|t| t == topic))
            })
            .map(|(m, _)| m.clone());
        match keeper {
            Some(m) if out.get(&m).is_some_and(|s| s.len() < quota) => {
                out.entry(m).or_default().insert(*tp);
            }
            _ => unplaced.push((topic.clone(), *tp)),
        }
    }
    for (topic, tp) in unplaced {
        if let Some(m) = eligible(&topic).into_iter().min_by_key(|m| (out.get(*m).map_or(0, |s| s.len()), (*m).clone()))
        {
            out.entry(m.clone()).or_default().insert(tp);
        }
    }
    out
}

/// Range: per topic, its sorted subscribers take contiguous ranges.
fn assign_range(
    members: &BTreeMap<String, CgMember>,
    metadata: &[(String, Uuid, i32)],
) -> HashMap<String, BTreeSet<TopicPartition>> {
    let mut out: HashMap<String, BTreeSet<TopicPartition>> =
        members.keys().map(|m| (m.clone(), BTreeSet::new())).collect();
    for (name, id, n) in metadata {
        let subs: Vec<&String> =
            members.values().filter(|m| m.subscribed.iter().any(|t| t == name)).map(|m| &m.member_id).collect();
        if subs.is_empty() {
            continue;
        }
        let per = *n as usize / subs.len();
        let extra = *n as usize % subs.len();
        let mut p = 0;
        for (i, m) in subs.iter().enumerate() {
            let take = per + usize::from(i < extra);
            for q in p..p + take {
                out.entry((*m).clone()).or_default().insert((*id, q as i32));
            }
            p += take;
        }
    }
    out
}

impl ConsumerGroups {
    pub fn new(session_timeout: Duration) -> Self {
        ConsumerGroups { groups: Mutex::new(HashMap::new()), session_timeout }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, CgGroup>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn exists(&self, group_id: &str) -> bool {
        self.lock().contains_key(group_id)
    }

    fn metadata(topics: &dyn TopicShapes, group: &CgGroup) -> Vec<(String, Uuid, i32)> {
        let names: BTreeSet<&String> = group.members.values().flat_map(|m| m.subscribed.iter()).collect();
        names.into_iter().filter_map(|n| topics.shape(n).map(|(id, count)| (n.clone(), id, count))).collect()
    }

    pub fn heartbeat(&self, topics: &dyn TopicShapes, req: HeartbeatRequest) -> HeartbeatResult {
        if req.group_id.is_empty() {
            return HeartbeatResult::error(ResponseError::InvalidRequest, "group id is empty", &req.member_id);
        }
        if let Some(a) = &req.assignor {
            if !ASSIGNORS.contains(&a.as_str()) {
                return HeartbeatResult::error(
                    ResponseError::UnsupportedAssignor,
                    format!("no assignor {a}"),
                    &req.member_id,
                );
            }
        }
        let mut groups = self.lock();
        let group = groups
            .entry(req.group_id.clone())
            .or_insert_with(|| CgGroup { assignor: "uniform".into(), ..Default::default() });
        let now = Instant::now();
        if req.member_epoch < 0 {
            // -1 leaves; -2 is a static member's temporary leave.
            if group.members.remove(&req.member_id).is_some() {
                group.epoch += 1;
                group.target.remove(&req.member_id);
            }
            return HeartbeatResult { member_id: req.member_id, member_epoch: req.member_epoch, ..Default::default() };
        }
        let member_id = if req.member_epoch == 0 {
            let Some(subscribed) = req.subscribed.clone() else {
                return HeartbeatResult::error(
                    ResponseError::InvalidRequest,
                    "a joining member must subscribe",
                    &req.member_id,
                );
            };
            let id = if req.member_id.is_empty() { Uuid::new_v4().to_string() } else { req.member_id.clone() };
            // A static member coming back replaces its previous incarnation.
            if let Some(iid) = &req.instance_id {
                let old: Vec<String> = group
                    .members
                    .values()
                    .filter(|m| m.instance_id.as_ref() == Some(iid) && m.member_id != id)
                    .map(|m| m.member_id.clone())
                    .collect();
                for o in old {
                    group.members.remove(&o);
                    group.target.remove(&o);
                }
            }
            group.members.insert(
                id.clone(),
                CgMember {
                    member_id: id.clone(),
                    instance_id: req.instance_id.clone(),
                    rack_id: req.rack_id.clone(),
                    client_id: req.client_id.clone(),
                    client_host: req.client_host.clone(),
                    epoch: 0,
                    previous_epoch: -1,
                    subscribed,
                    assigned: BTreeSet::new(),
                    owned: None,
                    last_sent: None,
                    last_seen: now,
                },
            );
            group.epoch += 1;
            id
        } else {
            let Some(m) = group.members.get(&req.member_id) else {
                return HeartbeatResult::error(ResponseError::UnknownMemberId, "unknown member", &req.member_id);
            };
            let lost_response =
                req.member_epoch == m.previous_epoch && req.owned.as_ref().is_none_or(|o| o.is_subset(&m.assigned));
            if req.member_epoch != m.epoch && !lost_response {
                return HeartbeatResult::error(
                    ResponseError::FencedMemberEpoch,
                    format!("member epoch {} is not the current {}", req.member_epoch, m.epoch),
                    &req.member_id,
                );
            }
            req.member_id.clone()
        };
        if let Some(a) = &req.assignor {
            if *a != group.assignor {
                group.assignor = a.clone();
                group.epoch += 1;
            }
        }
        if let Some(m) = group.members.get_mut(&member_id) {
            m.last_seen = now;
            if let Some(owned) = req.owned {
                m.owned = Some(owned);
            }
            if let Some(sub) = req.subscribed {
                if sub != m.subscribed {
                    m.subscribed = sub;
                    group.epoch += 1;
                }
            }
        }
        let metadata = Self::metadata(topics, group);
        if metadata != group.metadata {
            group.metadata = metadata;
            group.epoch += 1;
        }
        if group.assignment_epoch < group.epoch {
            let previous = std::mem::take(&mut group.target);
            group.target = if group.assignor == "range" {
                assign_range(&group.members, &group.metadata)
            } else {
                assign_uniform(&group.members, &group.metadata, &previous)
            };
            group.assignment_epoch = group.epoch;
        }
        Self::reconcile(group, &member_id)
    }

    /// Moves one member toward its target: first it must give up what is
    /// no longer its own; then it gets whatever of its target nobody else
    /// still holds.
    fn reconcile(group: &mut CgGroup, member_id: &str) -> HeartbeatResult {
        let target = group.target.get(member_id).cloned().unwrap_or_default();
        let held_elsewhere: BTreeSet<TopicPartition> = group
            .members
            .values()
            .filter(|m| m.member_id != member_id)
            .flat_map(|m| m.assigned.iter().chain(m.owned.iter().flatten()).copied().collect::<Vec<_>>())
            .collect();
        let assignment_epoch = group.assignment_epoch;
        let Some(m) = group.members.get_mut(member_id) else {
            return HeartbeatResult::error(ResponseError::UnknownMemberId, "unknown member", member_id);
        };
        let owned = m.owned.clone().unwrap_or_else(|| m.assigned.clone());
        let revoking: BTreeSet<_> = owned.difference(&target).copied().collect();
        if revoking.is_empty() {
            m.assigned = target.difference(&held_elsewhere).copied().collect();
            if m.epoch != assignment_epoch {
                m.previous_epoch = m.epoch;
                m.epoch = assignment_epoch;
            }
        } else {
            m.assigned = owned.intersection(&target).copied().collect();
        }
        let assignment = if m.last_sent.as_ref() != Some(&m.assigned) {
            m.last_sent = Some(m.assigned.clone());
            Some(m.assigned.clone())
        } else {
            None
        };
        HeartbeatResult { error: None, member_id: member_id.to_string(), member_epoch: m.epoch, assignment }
    }

    /// Drops members not heard from within the session timeout.
    pub fn expire(&self) {
        let now = Instant::now();
        let mut groups = self.lock();
        for (gid, g) in groups.iter_mut() {
            let gone: Vec<String> = g
                .members
                .values()
                .filter(|m| now.duration_since(m.last_seen) > self.session_timeout)
                .map(|m| m.member_id.clone())
                .collect();
            for id in gone {
                g.members.remove(&id);
                g.target.remove(&id);
                g.epoch += 1;
                tracing::info!(group = %gid, member = %id, "consumer group member session expired");
            }
        }
    }

    /// OffsetCommit check for a member of a consumer-protocol group.
    pub fn check_commit(&self, group_id: &str, member_id: &str, epoch: i32) -> Option<ResponseError> {
        let groups = self.lock();
        let g = groups.get(group_id)?;
        if member_id.is_empty() && epoch < 0 {
            return if g.members.is_empty() { None } else { Some(ResponseError::UnknownMemberId) };
        }
        let Some(m) = g.members.get(member_id) else { return Some(ResponseError::UnknownMemberId) };
        if epoch > m.epoch {
            Some(ResponseError::FencedMemberEpoch)
        } else if epoch < m.epoch && epoch != m.previous_epoch {
            Some(ResponseError::StaleMemberEpoch)
        } else {
            None
        }
    }

    /// Drops the groups `gone` names (their coordinator moved to another node), so that a later
    /// return here starts from the members' next heartbeats, not from stale epochs.
    pub fn forget(&self, gone: impl Fn(&str) -> bool) {
        self.lock().retain(|id, _| !gone(id));
    }

    pub fn with_group<T>(&self, group_id: &str, f: impl FnOnce(Option<&CgGroup>) -> T) -> T {
        f(self.lock().get(group_id))
    }

    pub fn list(&self) -> Vec<(String, &'static str)> {
        self.lock().iter().map(|(id, g)| (id.clone(), g.state())).collect()
    }

    /// Forgets an empty group (DeleteGroups).
    pub fn delete_if_empty(&self, group_id: &str) -> Option<Result<(), ResponseError>> {
        let mut groups = self.lock();
        let g = groups.get(group_id)?;
        if !g.members.is_empty() {
            return Some(Err(ResponseError::NonEmptyGroup));
        }
        groups.remove(group_id);
        Some(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, topics: &[&str]) -> CgMember {
        CgMember {
            member_id: id.into(),
            instance_id: None,
            rack_id: None,
            client_id: String::new(),
            client_host: String::new(),
            epoch: 0,
            previous_epoch: -1,
            subscribed: topics.iter().map(|t| t.to_string()).collect(),
            assigned: BTreeSet::new(),
            owned: None,
            last_sent: None,
            last_seen: Instant::now(),
        }
    }

    #[test]
    fn assignors_cover_every_partition_once_and_uniform_is_sticky() {
        let t = Uuid::new_v4();
        let meta = vec![("t".to_string(), t, 6)];
        let mut members: BTreeMap<String, CgMember> =
            ["a", "b", "c"].iter().map(|m| (m.to_string(), member(m, &["t"]))).collect();
        for target in [assign_uniform(&members, &meta, &HashMap::new()), assign_range(&members, &meta)] {
            let mut all: Vec<_> = target.values().flatten().copied().collect();
            all.sort();
            assert_eq!(all, (0..6).map(|p| (t, p)).collect::<Vec<_>>());
            assert!(target.values().all(|s| s.len() == 2));
        }
        let first = assign_uniform(&members, &meta, &HashMap::new());
        members.remove("c");
        let second = assign_uniform(&members, &meta, &first);
        assert!(first["a"].is_subset(&second["a"]) && first["b"].is_subset(&second["b"]), "survivors keep theirs");
        assert_eq!(second["a"].len() + second["b"].len(), 6);
    }

    fn heartbeat(
        groups: &ConsumerGroups,
        topics: &dyn TopicShapes,
        member_id: &str,
        member_epoch: i32,
        owned: Option<&BTreeSet<TopicPartition>>,
    ) -> HeartbeatResult {
        let joining = member_epoch == 0;
        groups.heartbeat(
            topics,
            HeartbeatRequest {
                group_id: "g".into(),
                member_id: member_id.into(),
                member_epoch,
                instance_id: None,
                rack_id: None,
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                subscribed: joining.then(|| vec!["t".to_string()]),
                assignor: joining.then(|| "uniform".to_string()),
                owned: owned.cloned(),
            },
        )
    }

    /// What each member may own now, by member id.
    fn assigned(groups: &ConsumerGroups) -> Vec<BTreeSet<TopicPartition>> {
        groups.with_group("g", |g| g.map(|g| g.members.values().map(|m| m.assigned.clone()).collect()).unwrap())
    }

    fn no_partition_twice(groups: &ConsumerGroups) {
        let sets = assigned(groups);
        let total: usize = sets.iter().map(|s| s.len()).sum();
        let union: BTreeSet<_> = sets.iter().flatten().collect();
        assert_eq!(total, union.len(), "a partition is granted to two members: {sets:?}");
    }

    /// A partition reaches its new owner only after the old owner reported
    /// it gave it up; epochs fence stale members.
    #[test]
    fn partitions_move_only_once_released_and_stale_epochs_are_fenced() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::BrokerConfig { data_dir: dir.path().to_path_buf(), ..Default::default() };
        let topics = Topics::open(&cfg).unwrap();
        let t = topics.create("t", 4, BTreeMap::new(), false).unwrap().id;
        let all: BTreeSet<TopicPartition> = (0..4).map(|p| (t, p)).collect();
        let groups = ConsumerGroups::new(Duration::from_secs(45));

        let a = heartbeat(&groups, &topics, "", 0, None);
        let ea = a.member_epoch;
        assert!(a.error.is_none() && ea > 0, "{a:?}");
        assert_eq!(a.assignment.as_ref(), Some(&all));
        let a_id = a.member_id.clone();
        assert_eq!(groups.with_group("g", |g| g.unwrap().state()), "Stable");

        // B joins: the group moves to a new epoch, but B gets nothing A holds.
        let b = heartbeat(&groups, &topics, "", 0, None);
        let (b_id, eb) = (b.member_id.clone(), b.member_epoch);
        assert!(eb > ea);
        assert_eq!(b.assignment, Some(BTreeSet::new()));
        no_partition_twice(&groups);
        assert_eq!(groups.with_group("g", |g| g.unwrap().state()), "Reconciling");
        // A is told to give half up, and stays at its epoch until it does.
        let a2 = heartbeat(&groups, &topics, &a_id, ea, Some(&all));
        let kept = a2.assignment.clone().expect("A's assignment shrinks");
        assert_eq!((a2.member_epoch, kept.len()), (ea, 2));
        no_partition_twice(&groups);
        // Until A reports releasing them, B still gets nothing.
        let b2 = heartbeat(&groups, &topics, &b_id, eb, Some(&BTreeSet::new()));
        assert!(b2.assignment.is_none_or(|s| s.is_empty()));
        // A reports owning only what it kept: it reaches B's epoch, B gets the rest.
        let a3 = heartbeat(&groups, &topics, &a_id, ea, Some(&kept));
        assert_eq!(a3.member_epoch, eb);
        let b3 = heartbeat(&groups, &topics, &b_id, eb, Some(&BTreeSet::new()));
        let rest: BTreeSet<_> = all.difference(&kept).copied().collect();
        assert_eq!(b3.assignment, Some(rest));
        no_partition_twice(&groups);
        assert_eq!(groups.with_group("g", |g| g.unwrap().state()), "Stable");

        // Fencing: an epoch ahead of the member's, or a member not in the group.
        let fenced = heartbeat(&groups, &topics, &a_id, eb + 3, None).error.map(|e| e.0);
        assert_eq!(fenced, Some(ResponseError::FencedMemberEpoch));
        let ghost = heartbeat(&groups, &topics, "ghost", eb, None).error.map(|e| e.0);
        assert_eq!(ghost, Some(ResponseError::UnknownMemberId));
        assert_eq!(groups.check_commit("g", &a_id, eb + 1), Some(ResponseError::FencedMemberEpoch));
        assert_eq!(groups.check_commit("g", &a_id, 0), Some(ResponseError::StaleMemberEpoch));
        assert_eq!(groups.check_commit("g", &a_id, eb), None);

        // B leaves: A gets every partition back on its next heartbeat.
        assert!(heartbeat(&groups, &topics, &b_id, -1, None).error.is_none());
        let a4 = heartbeat(&groups, &topics, &a_id, eb, Some(&kept));
        assert!(a4.member_epoch > eb);
        assert_eq!(a4.assignment, Some(all.clone()));

        // A falls silent: its session ends and the group is empty.
        groups.lock().get_mut("g").unwrap().members.get_mut(&a_id).unwrap().last_seen =
            Instant::now().checked_sub(Duration::from_secs(3600)).unwrap();
        groups.expire();
        assert_eq!(groups.with_group("g", |g| g.unwrap().state()), "Empty");
        assert_eq!(groups.delete_if_empty("g"), Some(Ok(())));
        assert!(!groups.exists("g"));
    }
}
