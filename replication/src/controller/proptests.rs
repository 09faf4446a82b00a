//! Property test of the state machine: random sequences of valid and invalid
//! operations, checking after every step that two replicas (one fed the
//! decoded wire form) agree, a refused record changes nothing, the
//! invariants hold, group ids are never reused, and snapshots round-trip.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use uuid::Uuid;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Register {
        node: i32,
        rack: Option<u8>,
        incarnation: u8,
    },
    Fence {
        node: i32,
        stale: bool,
    },
    Unfence {
        node: i32,
        stale: bool,
    },
    Create {
        name: u8,
        partitions: i32,
        rf: i16,
        explicit: Option<Vec<Vec<i32>>>,
    },
    CreatePartitions {
        name: u8,
        count: i32,
        explicit: Option<Vec<Vec<i32>>>,
    },
    Delete {
        name: u8,
        stale: bool,
    },
    Alter {
        target: u8,
        key: u8,
        value: Option<u8>,
    },
    Report {
        reporter: i32,
        entries: Vec<(u8, i32, u8)>,
    },
    Allocate {
        node: i32,
    },
    /// AlterPartitionReassignments of one partition (`target` None: cancel).
    Reassign {
        pick: u8,
        target: Option<Vec<i32>>,
        allow_rf_change: bool,
    },
    /// A leader's step of a partition's reassignment, maybe for a target that is not current.
    Step {
        pick: u8,
        complete: bool,
        stale: bool,
    },
    /// A record no proposal would make: arbitrary replicas, maybe a reused id.
    RawCreate {
        name: u8,
        reuse_id: bool,
        replicas: Vec<Vec<i32>>,
    },
}

fn replica_lists() -> impl Strategy<Value = Vec<Vec<i32>>> {
    prop::collection::vec(prop::collection::vec(0..6i32, 0..4), 0..4)
}

/// A few brokers join first (most sequences need live brokers to get far),
/// then random operations.
fn ops(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Op>> {
    (0..5i32, prop::collection::vec(op(), len)).prop_map(|(joined, rest)| {
        let mut ops = Vec::new();
        for node in 0..joined {
            ops.push(Op::Register { node, rack: Some((node % 3) as u8), incarnation: 0 });
            ops.push(Op::Unfence { node, stale: false });
        }
        ops.extend(rest);
        ops
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..5i32, prop::option::of(0..3u8), 0..2u8)
            .prop_map(|(node, rack, incarnation)| Op::Register { node, rack, incarnation }),
        1 => (0..5i32, any::<bool>()).prop_map(|(node, stale)| Op::Fence { node, stale }),
        3 => (0..5i32, prop::bool::weighted(0.2)).prop_map(|(node, stale)| Op::Unfence { node, stale }),
        4 => (0..9u8, -1..5i32, -1..4i16, prop::option::weighted(0.3, replica_lists()))
            .prop_map(|(name, partitions, rf, explicit)| Op::Create { name, partitions, rf, explicit }),
        2 => (0..9u8, 0..8i32, prop::option::weighted(0.3, replica_lists()))
            .prop_map(|(name, count, explicit)| Op::CreatePartitions { name, count, explicit }),
        2 => (0..9u8, any::<bool>()).prop_map(|(name, stale)| Op::Delete { name, stale }),
        1 => (0..11u8, 0..2u8, prop::option::of(0..3u8)).prop_map(|(target, key, value)| Op::Alter { target, key, value }),
        4 => (0..5i32, prop::collection::vec((0..24u8, 0..5i32, any::<u8>()), 0..6))
            .prop_map(|(reporter, entries)| Op::Report { reporter, entries }),
        1 => (0..5i32).prop_map(|node| Op::Allocate { node }),
        3 => (any::<u8>(), prop::option::weighted(0.8, prop::collection::vec(0..6i32, 0..4)), any::<bool>())
            .prop_map(|(pick, target, allow_rf_change)| Op::Reassign { pick, target, allow_rf_change }),
        3 => (any::<u8>(), any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(pick, complete, stale)| Op::Step { pick, complete, stale }),
        1 => (0..9u8, any::<bool>(), replica_lists())
            .prop_map(|(name, reuse_id, replicas)| Op::RawCreate { name, reuse_id, replicas }),
    ]
}

/// Builds the records an op stands for: a proposal's, when it passes, or a
/// raw (possibly invalid) record. `proposed` tells which.
struct Driver {
    next_topic_id: u128,
    used_ids: Vec<Uuid>,
}

const NAMES: [&str; 9] = ["a", "b.c", "d_e", "f-1", "g", "h", "i", "j", "bad name"];

impl Driver {
    fn record(&mut self, s: &ClusterMetadata, op: &Op) -> Option<(MetadataRecord, bool)> {
        let defaults = TopicDefaults { num_partitions: 2, replication_factor: 2 };
        let incarnation = |node: i32, stale: bool| {
            s.broker(node).map(|b| if stale { Uuid::from_u128(999) } else { b.registration.incarnation })
        };
        let proposed = |r: Result<MetadataRecord, MetadataError>| r.ok().map(|r| (r, true));
        match op {
            Op::Register { node, rack, incarnation } => proposed(s.propose_register_broker(BrokerRegistration {
                node_id: *node,
                incarnation: Uuid::from_u128(1 + *incarnation as u128),
                rack: rack.map(|r| format!("rack{r}")),
                advertised_listener: format!("h:{node}"),
                cluster_address: format!("c:{node}"),
            })),
            Op::Fence { node, stale } => incarnation(*node, *stale)
                .map(|inc| (MetadataRecord::FenceBroker { node_id: *node, incarnation: inc }, !stale)),
            Op::Unfence { node, stale } => incarnation(*node, *stale)
                .map(|inc| (MetadataRecord::UnfenceBroker { node_id: *node, incarnation: inc }, !stale)),
            Op::Create { name, partitions, rf, explicit } => {
                let req = match explicit {
                    Some(lists) => NewTopic {
                        name: NAMES[*name as usize].into(),
                        num_partitions: -1,
                        replication_factor: -1,
                        assignments: lists.iter().cloned().enumerate().map(|(i, l)| (i as i32, l)).collect(),
                        ..NewTopic::default()
                    },
                    None => NewTopic {
                        name: NAMES[*name as usize].into(),
                        num_partitions: *partitions,
                        replication_factor: *rf,
                        ..NewTopic::default()
                    },
                };
                self.next_topic_id += 1;
                let id = Uuid::from_u128(self.next_topic_id);
                self.used_ids.push(id);
                proposed(s.propose_create_topic(&req, id, defaults, &AnyConfig))
            }
            Op::CreatePartitions { name, count, explicit } => {
                proposed(s.propose_create_partitions(NAMES[*name as usize], *count, explicit.as_deref()))
            }
            Op::Delete { name, stale } => {
                let name = NAMES[*name as usize];
                if *stale {
                    Some((
                        MetadataRecord::DeleteTopic { name: name.into(), topic_id: Uuid::from_u128(u128::MAX) },
                        false,
                    ))
                } else {
                    proposed(s.propose_delete_topic(name))
                }
            }
            Op::Alter { target, key, value } => {
                let resource = match target {
                    0 => ConfigResource::Broker { node_id: None },
                    1 => ConfigResource::Broker { node_id: Some(1) },
                    t => ConfigResource::Topic { name: NAMES[(*t - 2) as usize].into() },
                };
                let changes = BTreeMap::from([(format!("k{key}"), value.map(|v| format!("v{v}")))]);
                proposed(s.propose_alter_configs(resource, changes, &AnyConfig))
            }
            Op::Report { reporter, entries } => {
                let groups: Vec<(GroupId, &Partition)> = s.partitions().iter().map(|(g, p)| (*g, p)).collect();
                let partitions = entries
                    .iter()
                    .map(|(pick, epoch, mask)| {
                        // Mostly a live group and an ISR drawn from its
                        // replicas (plus the reporter); sometimes anything.
                        let (group_id, replicas) = match groups.get(*pick as usize % (groups.len() + 1)) {
                            Some((g, p)) => (*g, p.replicas.clone()),
                            None => (s.next_group_id() + *pick as u64, vec![]),
                        };
                        let mut isr: Vec<i32> = replicas
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| mask & (1 << i) != 0)
                            .map(|(_, r)| *r)
                            .collect();
                        if mask & 0x80 == 0 && !isr.contains(reporter) {
                            isr.insert(0, *reporter);
                        }
                        if mask & 0x70 == 0x70 {
                            // Any broker id, replica or not, maybe twice.
                            isr.push((mask % 6) as i32);
                        }
                        LeadershipReport { group_id, leader_epoch: *epoch, isr }
                    })
                    .collect();
                proposed(s.propose_report(*reporter, partitions))
            }
            Op::Allocate { node } => proposed(s.propose_allocate_producer_ids(*node)),
            Op::Reassign { pick, target, allow_rf_change } => {
                let groups: Vec<GroupId> = s.partitions().keys().copied().collect();
                let group_id = groups.get(*pick as usize % (groups.len() + 1)).copied().unwrap_or(s.next_group_id());
                let entries = vec![Reassignment { group_id, target: target.clone() }];
                // Entries are checked when applied: the record applies, refusing entries.
                proposed(s.propose_alter_reassignments(entries, *allow_rf_change))
            }
            Op::Step { pick, complete, stale } => {
                let moving: Vec<(GroupId, &Partition)> =
                    s.partitions().iter().filter(|(_, p)| p.reassigning()).map(|(g, p)| (*g, p)).collect();
                let (group_id, p) = *moving.get(*pick as usize % moving.len().max(1))?;
                let r = p.reassignment.as_ref()?;
                // A stale step names an earlier epoch (a replaced reassignment, maybe to the
                // same target).
                let epoch = if *stale { r.epoch.wrapping_sub(1) } else { r.epoch };
                let step = if *complete {
                    ReassignmentStep::Complete
                } else {
                    let joining = p.adding();
                    if joining.is_empty() {
                        ReassignmentStep::Complete
                    } else {
                        ReassignmentStep::Promote(joining)
                    }
                };
                match s.propose_reassignment_step(group_id, epoch, &step) {
                    Ok(Some(r)) => Some((r, true)),
                    Ok(None) => None,
                    Err(_) => Some((MetadataRecord::CompleteReassignment { group_id, epoch }, false)),
                }
            }
            Op::RawCreate { name, reuse_id, replicas } => {
                let topic_id = match (*reuse_id, self.used_ids.first()) {
                    (true, Some(id)) => *id,
                    _ => {
                        self.next_topic_id += 1;
                        Uuid::from_u128(self.next_topic_id)
                    }
                };
                let record = MetadataRecord::CreateTopic(CreateTopic {
                    name: NAMES[*name as usize].into(),
                    topic_id,
                    replicas: replicas.clone(),
                    configs: BTreeMap::new(),
                    internal: false,
                });
                Some((record, false))
            }
        }
    }
}

/// The invariants, checked here independently of `check_invariants`.
fn assert_invariants(s: &ClusterMetadata) {
    let mut topic_ids = BTreeSet::new();
    let mut groups = BTreeSet::new();
    for (name, t) in s.topics() {
        assert!(topic_ids.insert(t.id), "topic id {} twice", t.id);
        for (i, g) in t.partitions.iter().enumerate() {
            assert!(groups.insert(*g), "group {g} twice");
            let p = s.partition(*g).expect("a topic's group exists");
            assert_eq!((p.topic.as_str(), p.index), (name.as_str(), i as i32));
        }
    }
    assert_eq!(groups.len(), s.partitions().len(), "orphan partitions");
    for (g, p) in s.partitions() {
        assert!(*g < s.next_group_id());
        assert!(!p.replicas.is_empty());
        assert!(p.replicas.iter().all(|r| s.broker(*r).is_some()), "unknown replica in {p:?}");
        assert_eq!(p.replicas.iter().collect::<BTreeSet<_>>().len(), p.replicas.len(), "duplicate replica {p:?}");
        assert!(p.leader.is_none_or(|l| p.replicas.contains(&l)), "leader outside replicas {p:?}");
        assert!(p.isr.iter().all(|r| p.replicas.contains(r)), "ISR outside replicas {p:?}");
    }
}

/// What a run got through, to show the generator reaches every path.
#[derive(Debug, Default)]
struct Stats {
    topics_created: usize,
    topics_deleted: usize,
    leaderships_applied: usize,
    entries_skipped: usize,
    refused: usize,
    reassignments_started: usize,
    reassignments_completed: usize,
}

fn run(ops: &[Op]) -> Result<Stats, TestCaseError> {
    let mut a = ClusterMetadata::new();
    let mut b = ClusterMetadata::new();
    let mut driver = Driver { next_topic_id: 0, used_ids: vec![] };
    let mut stats = Stats::default();
    // Every group id ever seen, with the topic incarnation and index it
    // belonged to; and those whose topic was deleted.
    let mut seen: BTreeMap<GroupId, (Uuid, i32)> = BTreeMap::new();
    let mut deleted: BTreeSet<GroupId> = BTreeSet::new();
    for op in ops {
        let Some((record, proposed)) = driver.record(&a, op) else { continue };
        let before = a.clone();
        let result = a.apply(&record);
        // The second replica reads the record from its encoded form.
        let decoded = MetadataRecord::decode(&record.encode()).expect("a record decodes");
        prop_assert_eq!(&decoded, &record);
        let result_b = b.apply(&decoded);
        prop_assert_eq!(&result, &result_b);
        prop_assert_eq!(&a, &b);
        match &result {
            Ok(Outcome::TopicCreated { .. }) => stats.topics_created += 1,
            Ok(Outcome::TopicDeleted { groups, .. }) => {
                stats.topics_deleted += 1;
                deleted.extend(groups);
            }
            Ok(Outcome::LeadershipReported { applied, skipped }) => {
                stats.leaderships_applied += applied.len();
                stats.entries_skipped += skipped.len();
            }
            Ok(Outcome::ReassignmentsAltered { applied, skipped }) => {
                stats.reassignments_started += applied.len();
                stats.entries_skipped += skipped.len();
            }
            Ok(Outcome::ReassignmentCompleted { .. }) => stats.reassignments_completed += 1,
            Ok(_) => {}
            Err(e) => {
                stats.refused += 1;
                prop_assert_eq!(&a, &before, "refused record changed the state");
                // What a proposal let through must apply on the state it saw.
                prop_assert!(!proposed, "proposal {:?} refused at apply: {}", record, e);
            }
        }
        prop_assert!(a.check_invariants().is_ok(), "{:?}", a.check_invariants());
        assert_invariants(&a);
        // A node leaves a partition's replicas only when the group's leader completes a
        // reassignment that does not name it (its Raft membership no longer has it): no other
        // record may drop a replica that could still hold a log counting towards commits.
        let completed = matches!(result, Ok(Outcome::ReassignmentCompleted { .. }));
        for (g, p) in a.partitions() {
            let Some(old) = before.partition(*g) else { continue };
            let left: Vec<_> = old.replicas.iter().filter(|r| !p.replicas.contains(r)).collect();
            prop_assert!(
                left.is_empty() || (completed && left.iter().all(|r| !old.target().contains(r))),
                "group {} dropped {:?}: {:?} -> {:?} by {:?}",
                g,
                left,
                old,
                p,
                record
            );
            if p.reassigning() {
                prop_assert!(p.target().iter().all(|r| p.replicas.contains(r)));
                prop_assert!(old.original().iter().all(|r| p.replicas.contains(r)) || !old.reassigning());
                // Within a chain of reassignments the original set stays and promotions only
                // grow; each new entry takes a new epoch.
                if let (Some(o), Some(n)) = (&old.reassignment, &p.reassignment) {
                    prop_assert_eq!(&o.original, &n.original);
                    prop_assert!(o.promoted.iter().all(|x| n.promoted.contains(x)));
                    prop_assert!(n.epoch >= o.epoch);
                }
            }
        }
        for (name, t) in a.topics() {
            for (i, g) in t.partitions.iter().enumerate() {
                prop_assert!(!deleted.contains(g), "deleted group {} is back in {}", g, name);
                let first = *seen.entry(*g).or_insert((t.id, i as i32));
                prop_assert_eq!(first, (t.id, i as i32), "group {} reused", g);
            }
        }
        let restored = ClusterMetadata::restore(&a.snapshot()).expect("snapshot restores");
        prop_assert_eq!(&restored, &a);
    }
    Ok(stats)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn apply_is_deterministic_and_keeps_the_invariants(ops in ops(1..80)) {
        run(&ops)?;
    }
}

/// The property above is only as good as its generator: over a fixed set of
/// sequences it must create and delete topics, apply and skip leadership
/// entries, and have records refused.
#[test]
fn the_generator_reaches_every_path() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::deterministic_rng(Default::default()));
    let mut total = Stats::default();
    for _ in 0..50 {
        let ops = ops(60..80).new_tree(&mut runner).unwrap().current();
        let s = run(&ops).unwrap();
        total.topics_created += s.topics_created;
        total.topics_deleted += s.topics_deleted;
        total.leaderships_applied += s.leaderships_applied;
        total.entries_skipped += s.entries_skipped;
        total.refused += s.refused;
        total.reassignments_started += s.reassignments_started;
        total.reassignments_completed += s.reassignments_completed;
    }
    assert!(total.reassignments_started >= 20 && total.reassignments_completed >= 5, "{total:?}");
    assert!(total.topics_created >= 50 && total.topics_deleted > 0, "{total:?}");
    assert!(total.leaderships_applied >= 50 && total.entries_skipped > 0, "{total:?}");
    assert!(total.refused > 0, "{total:?}");
}
