//! Unit tests of the controller state machine: each record's effect, each
//! refusal's Kafka code, snapshots, record encoding and the single-node import.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::*;

fn reg(node_id: NodeId, rack: Option<&str>, incarnation: u128) -> BrokerRegistration {
    BrokerRegistration {
        node_id,
        incarnation: Uuid::from_u128(incarnation),
        rack: rack.map(str::to_string),
        advertised_listener: format!("127.0.0.1:{}", 9092 + node_id),
        cluster_address: format!("127.0.0.1:{}", 9192 + node_id),
    }
}

/// Applies and asserts success.
fn ok(s: &mut ClusterMetadata, r: MetadataRecord) -> Outcome {
    match s.apply(&r) {
        Ok(o) => {
            s.check_invariants().unwrap();
            o
        }
        Err(e) => panic!("{r:?} refused: {e}"),
    }
}

/// Proposes against the current state, then applies and asserts success.
fn okp(s: &mut ClusterMetadata, propose: impl FnOnce(&ClusterMetadata) -> MetadataRecord) -> Outcome {
    let r = propose(s);
    ok(s, r)
}

/// Applies, asserts the refusal's code and that nothing changed.
fn refused(s: &mut ClusterMetadata, r: MetadataRecord, code: ErrorCode) {
    let before = s.clone();
    let e = s.apply(&r).expect_err("record should be refused");
    assert_eq!(e.code, code, "{e}");
    assert_eq!(*s, before, "a refused record changed the state");
}

/// `n` live brokers, ids 1..=n, racks from `racks` in turn.
fn cluster(n: i32, racks: &[&str]) -> ClusterMetadata {
    let mut s = ClusterMetadata::new();
    ok(&mut s, MetadataRecord::InitCluster { cluster_id: "c1".into() });
    for id in 1..=n {
        let rack = if racks.is_empty() { None } else { Some(racks[(id - 1) as usize % racks.len()]) };
        ok(&mut s, MetadataRecord::RegisterBroker(reg(id, rack, id as u128)));
        ok(&mut s, MetadataRecord::UnfenceBroker { node_id: id, incarnation: Uuid::from_u128(id as u128) });
    }
    s
}

const DEFAULTS: TopicDefaults = TopicDefaults { num_partitions: 1, replication_factor: 3 };

fn new_topic(name: &str, partitions: i32, rf: i16) -> NewTopic {
    NewTopic { name: name.into(), num_partitions: partitions, replication_factor: rf, ..NewTopic::default() }
}

fn create(s: &mut ClusterMetadata, name: &str, partitions: i32, rf: i16, id: u128) -> Vec<GroupId> {
    let r =
        s.propose_create_topic(&new_topic(name, partitions, rf), Uuid::from_u128(id), DEFAULTS, &AnyConfig).unwrap();
    match ok(s, r) {
        Outcome::TopicCreated { groups, .. } => groups,
        o => panic!("{o:?}"),
    }
}

/// Only `retention.ms` (a number) is a known config.
struct OnlyRetention;
impl ConfigValidator for OnlyRetention {
    fn topic_config(&self, name: &str, value: &str) -> Result<(), String> {
        match name {
            "retention.ms" if value.parse::<i64>().is_ok() => Ok(()),
            "retention.ms" => Err(format!("Invalid value {value} for configuration retention.ms")),
            _ => Err(format!("Unknown topic config name: {name}")),
        }
    }
    fn broker_config(&self, name: &str, value: &str) -> Result<(), String> {
        self.topic_config(name, value)
    }
}

#[test]
fn init_cluster_sets_the_id_once() {
    let mut s = ClusterMetadata::new();
    refused(&mut s, MetadataRecord::InitCluster { cluster_id: String::new() }, ErrorCode::InvalidRequest);
    ok(&mut s, MetadataRecord::InitCluster { cluster_id: "abc".into() });
    assert_eq!(s.cluster_id(), Some("abc"));
    ok(&mut s, MetadataRecord::InitCluster { cluster_id: "abc".into() });
    refused(&mut s, MetadataRecord::InitCluster { cluster_id: "other".into() }, ErrorCode::InconsistentClusterId);
}

#[test]
fn register_starts_fenced_and_unfence_makes_live() {
    let mut s = ClusterMetadata::new();
    let o = ok(&mut s, MetadataRecord::RegisterBroker(reg(1, Some("r1"), 10)));
    assert_eq!(o, Outcome::BrokerRegistered { node_id: 1, fenced: true });
    assert_eq!(s.live_brokers().count(), 0);
    ok(&mut s, MetadataRecord::UnfenceBroker { node_id: 1, incarnation: Uuid::from_u128(10) });
    assert_eq!(s.live_brokers().count(), 1);
    assert_eq!(s.broker(1).unwrap().registration.rack.as_deref(), Some("r1"));
    // A retried registration of the same process keeps it live.
    let o = ok(&mut s, MetadataRecord::RegisterBroker(reg(1, Some("r1"), 10)));
    assert_eq!(o, Outcome::BrokerRegistered { node_id: 1, fenced: false });
}

#[test]
fn register_refuses_bad_registrations() {
    let mut s = ClusterMetadata::new();
    refused(&mut s, MetadataRecord::RegisterBroker(reg(-1, None, 1)), ErrorCode::InvalidRequest);
    let mut r = reg(1, None, 1);
    r.advertised_listener.clear();
    refused(&mut s, MetadataRecord::RegisterBroker(r), ErrorCode::InvalidRequest);
    refused(&mut s, MetadataRecord::RegisterBroker(reg(1, Some(""), 1)), ErrorCode::InvalidRequest);
    assert!(s.propose_register_broker(reg(-3, None, 1)).is_err());
}

#[test]
fn a_new_incarnation_is_fenced_and_loses_the_old_leaderships() {
    let mut s = cluster(3, &[]);
    let g = create(&mut s, "t", 1, 3, 1)[0];
    let r = s.propose_report(1, vec![LeadershipReport { group_id: g, leader_epoch: 1, isr: vec![1, 2, 3] }]).unwrap();
    ok(&mut s, r);
    assert_eq!(s.partition(g).unwrap().leader, Some(1));
    ok(&mut s, MetadataRecord::RegisterBroker(reg(1, None, 99)));
    let p = s.partition(g).unwrap();
    assert_eq!((p.leader, p.isr.clone()), (None, vec![2, 3]));
    assert!(s.broker(1).unwrap().fenced);
    // The old incarnation's unfence does not revive the new one.
    refused(
        &mut s,
        MetadataRecord::UnfenceBroker { node_id: 1, incarnation: Uuid::from_u128(1) },
        ErrorCode::StaleBrokerEpoch,
    );
}

#[test]
fn fence_clears_leadership_and_isr_and_checks_the_incarnation() {
    let mut s = cluster(3, &[]);
    let g = create(&mut s, "t", 2, 3, 1);
    let r = s
        .propose_report(
            2,
            vec![
                LeadershipReport { group_id: g[0], leader_epoch: 1, isr: vec![2, 1, 3] },
                LeadershipReport { group_id: g[1], leader_epoch: 1, isr: vec![2, 1] },
            ],
        )
        .unwrap();
    ok(&mut s, r);
    refused(
        &mut s,
        MetadataRecord::FenceBroker { node_id: 2, incarnation: Uuid::from_u128(7) },
        ErrorCode::StaleBrokerEpoch,
    );
    refused(
        &mut s,
        MetadataRecord::FenceBroker { node_id: 9, incarnation: Uuid::from_u128(9) },
        ErrorCode::BrokerIdNotRegistered,
    );
    let o = okp(&mut s, |s| s.propose_fence(2).unwrap());
    assert_eq!(o, Outcome::BrokerFenced { node_id: 2, lost_leadership: g.clone() });
    assert_eq!(s.partition(g[0]).unwrap().isr, vec![1, 3]);
    assert_eq!(s.partition(g[1]).unwrap().leader, None);
    // Fenced: its reports are refused, and placement skips it.
    assert_eq!(s.propose_report(2, vec![]).unwrap_err().code, ErrorCode::StaleBrokerEpoch);
    let e = s.propose_create_topic(&new_topic("u", 1, 3), Uuid::from_u128(2), DEFAULTS, &AnyConfig).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidReplicationFactor);
    okp(&mut s, |s| s.propose_unfence(2).unwrap());
    assert!(!s.broker(2).unwrap().fenced);
}

#[test]
fn create_topic_places_assigns_groups_and_keeps_configs() {
    let mut s = cluster(3, &["a", "b", "c"]);
    let mut req = new_topic("orders", 6, 3);
    req.configs.insert("retention.ms".into(), "1000".into());
    let r = s.propose_create_topic(&req, Uuid::from_u128(42), DEFAULTS, &OnlyRetention).unwrap();
    let o = ok(&mut s, r);
    assert_eq!(
        o,
        Outcome::TopicCreated { name: "orders".into(), topic_id: Uuid::from_u128(42), groups: (0..6).collect() }
    );
    let t = s.topic("orders").unwrap();
    assert_eq!(t.configs.get("retention.ms").map(String::as_str), Some("1000"));
    assert_eq!(s.topic_by_id(Uuid::from_u128(42)).unwrap().0, "orders");
    for (g, p) in s.partitions_of("orders") {
        assert_eq!(p.replicas.len(), 3, "group {g}");
        assert_eq!((p.leader, p.leader_epoch), (None, 0));
        assert_eq!(p.isr, p.replicas);
    }
    assert_eq!(s.next_group_id(), 6);
    // Defaults: -1 takes num_partitions 1 and RF 3.
    let g = create(&mut s, "d", -1, -1, 43);
    assert_eq!(g, vec![6]);
    assert_eq!(s.partition(6).unwrap().replicas.len(), 3);
}

#[test]
fn create_topic_errors_carry_kafka_codes() {
    let mut s = cluster(3, &[]);
    create(&mut s, "exists", 1, 1, 1);
    let id = Uuid::from_u128(2);
    let e =
        |s: &ClusterMetadata, t: NewTopic| s.propose_create_topic(&t, id, DEFAULTS, &OnlyRetention).unwrap_err().code;
    assert_eq!(e(&s, new_topic("exists", 1, 1)), ErrorCode::TopicAlreadyExists);
    for bad in ["", ".", "..", "a/b", "sp ace", &"x".repeat(250)] {
        assert_eq!(e(&s, new_topic(bad, 1, 1)), ErrorCode::InvalidTopicException, "{bad:?}");
    }
    assert_eq!(e(&s, new_topic("t", 0, 1)), ErrorCode::InvalidPartitions);
    assert_eq!(e(&s, new_topic("t", -2, 1)), ErrorCode::InvalidPartitions);
    assert_eq!(e(&s, new_topic("t", 100_001, 1)), ErrorCode::InvalidPartitions);
    assert_eq!(e(&s, new_topic("t", 1, 0)), ErrorCode::InvalidReplicationFactor);
    assert_eq!(e(&s, new_topic("t", 1, -5)), ErrorCode::InvalidReplicationFactor);
    assert_eq!(e(&s, new_topic("t", 1, 4)), ErrorCode::InvalidReplicationFactor);
    let mut bad_cfg = new_topic("t", 1, 1);
    bad_cfg.configs.insert("retention.ms".into(), "soon".into());
    assert_eq!(e(&s, bad_cfg), ErrorCode::InvalidConfig);
    let mut empty_name = new_topic("t", 1, 1);
    empty_name.configs.insert(String::new(), "1".into());
    assert_eq!(
        s.propose_create_topic(&empty_name, id, DEFAULTS, &AnyConfig).unwrap_err().code,
        ErrorCode::InvalidConfig
    );
    let mut unknown_cfg = new_topic("t", 1, 1);
    unknown_cfg.configs.insert("no.such".into(), "1".into());
    assert_eq!(e(&s, unknown_cfg), ErrorCode::InvalidConfig);

    let assigned = |a: Vec<(i32, Vec<NodeId>)>| NewTopic { assignments: a, ..new_topic("t", -1, -1) };
    assert_eq!(e(&s, NewTopic { num_partitions: 2, ..assigned(vec![(0, vec![1])]) }), ErrorCode::InvalidRequest);
    assert_eq!(e(&s, assigned(vec![(0, vec![1]), (2, vec![2])])), ErrorCode::InvalidReplicaAssignment);
    assert_eq!(e(&s, assigned(vec![(0, vec![1]), (0, vec![2])])), ErrorCode::InvalidReplicaAssignment);
    assert_eq!(e(&s, assigned(vec![(0, vec![1, 1])])), ErrorCode::InvalidReplicaAssignment);
    assert_eq!(e(&s, assigned(vec![(0, vec![])])), ErrorCode::InvalidReplicaAssignment);
    assert_eq!(e(&s, assigned(vec![(0, vec![7])])), ErrorCode::InvalidReplicaAssignment);
    assert_eq!(e(&s, assigned(vec![(0, vec![1, 2]), (1, vec![3])])), ErrorCode::InvalidReplicaAssignment);
    // A valid explicit assignment is kept as given.
    let r =
        s.propose_create_topic(&assigned(vec![(1, vec![3, 1]), (0, vec![2, 3])]), id, DEFAULTS, &AnyConfig).unwrap();
    ok(&mut s, r);
    let replicas: Vec<Vec<NodeId>> = s.partitions_of("t").map(|(_, p)| p.replicas.clone()).collect();
    assert_eq!(replicas, vec![vec![2, 3], vec![3, 1]]);
}

#[test]
fn create_topic_apply_refuses_what_would_break_the_state() {
    let mut s = cluster(2, &[]);
    create(&mut s, "t", 1, 1, 1);
    let rec = |name: &str, id: u128, replicas: Vec<Vec<NodeId>>| {
        MetadataRecord::CreateTopic(CreateTopic {
            name: name.into(),
            topic_id: Uuid::from_u128(id),
            replicas,
            configs: BTreeMap::new(),
            internal: false,
        })
    };
    refused(&mut s, rec("t", 5, vec![vec![1]]), ErrorCode::TopicAlreadyExists);
    refused(&mut s, rec("u", 1, vec![vec![1]]), ErrorCode::InvalidRequest);
    refused(&mut s, rec("u", 0, vec![vec![1]]), ErrorCode::InvalidRequest);
    refused(&mut s, rec("bad name", 5, vec![vec![1]]), ErrorCode::InvalidTopicException);
    refused(&mut s, rec("u", 5, vec![]), ErrorCode::InvalidPartitions);
    refused(&mut s, rec("u", 5, vec![vec![1], vec![]]), ErrorCode::InvalidReplicaAssignment);
    refused(&mut s, rec("u", 5, vec![vec![1, 2, 1]]), ErrorCode::InvalidReplicaAssignment);
    refused(&mut s, rec("u", 5, vec![vec![3]]), ErrorCode::InvalidReplicaAssignment);
    let MetadataRecord::CreateTopic(mut empty_key) = rec("u", 5, vec![vec![1]]) else { unreachable!() };
    empty_key.configs.insert(String::new(), "1".into());
    refused(&mut s, MetadataRecord::CreateTopic(empty_key), ErrorCode::InvalidConfig);
}

#[test]
fn create_partitions_extends_with_the_topics_replication_factor() {
    let mut s = cluster(4, &["a", "b"]);
    create(&mut s, "t", 2, 2, 1);
    create(&mut s, "other", 1, 1, 2);
    let r = s.propose_create_partitions("t", 5, None).unwrap();
    let o = ok(&mut s, r);
    assert_eq!(o, Outcome::PartitionsCreated { name: "t".into(), groups: vec![3, 4, 5] });
    let parts: Vec<(i32, usize)> = s.partitions_of("t").map(|(_, p)| (p.index, p.replicas.len())).collect();
    assert_eq!(parts, vec![(0, 2), (1, 2), (2, 2), (3, 2), (4, 2)]);
    let e = |s: &ClusterMetadata, n: &str, c: i32, a: Option<&[Vec<NodeId>]>| {
        s.propose_create_partitions(n, c, a).unwrap_err().code
    };
    assert_eq!(e(&s, "nope", 9, None), ErrorCode::UnknownTopicOrPartition);
    assert_eq!(e(&s, "t", 5, None), ErrorCode::InvalidPartitions);
    assert_eq!(e(&s, "t", 3, None), ErrorCode::InvalidPartitions);
    assert_eq!(e(&s, "t", -1, None), ErrorCode::InvalidPartitions);
    assert_eq!(e(&s, "t", 100_001, None), ErrorCode::InvalidPartitions);
    assert_eq!(e(&s, "t", 6, Some(&[vec![1, 2], vec![3, 4]])), ErrorCode::InvalidReplicaAssignment);
    assert_eq!(e(&s, "t", 6, Some(&[vec![1]])), ErrorCode::InvalidReplicaAssignment);
    assert_eq!(e(&s, "t", 6, Some(&[vec![1, 9]])), ErrorCode::InvalidReplicaAssignment);
    let r = s.propose_create_partitions("t", 6, Some(&[vec![4, 1]])).unwrap();
    ok(&mut s, r);
    assert_eq!(s.partitions_of("t").last().unwrap().1.replicas, vec![4, 1]);
    // A stale proposal for a recreated topic (other id) is refused at apply.
    let stale = s.propose_create_partitions("t", 7, None).unwrap();
    okp(&mut s, |s| s.propose_delete_topic("t").unwrap());
    create(&mut s, "t", 1, 1, 9);
    refused(&mut s, stale, ErrorCode::UnknownTopicOrPartition);
}

#[test]
fn delete_topic_removes_partitions_and_group_ids_are_never_reused() {
    let mut s = cluster(1, &[]);
    let first = create(&mut s, "t", 3, 1, 1);
    let rec = s.propose_delete_topic("t").unwrap();
    let o = ok(&mut s, rec.clone());
    assert_eq!(o, Outcome::TopicDeleted { name: "t".into(), topic_id: Uuid::from_u128(1), groups: first.clone() });
    assert!(s.topic("t").is_none() && s.partitions().is_empty());
    refused(&mut s, rec.clone(), ErrorCode::UnknownTopicOrPartition);
    let second = create(&mut s, "t", 3, 1, 2);
    assert!(second.iter().all(|g| !first.contains(g)), "{first:?} {second:?}");
    // The old incarnation's delete does not remove the new one.
    refused(&mut s, rec, ErrorCode::UnknownTopicOrPartition);
    // A late report for the old incarnation's group touches nothing.
    let r = s.propose_report(1, vec![LeadershipReport { group_id: first[0], leader_epoch: 3, isr: vec![1] }]).unwrap();
    match ok(&mut s, r) {
        Outcome::LeadershipReported { applied, skipped } => {
            assert!(applied.is_empty());
            assert_eq!(skipped[0].1.code, ErrorCode::UnknownTopicOrPartition);
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(s.propose_delete_topic("nope").unwrap_err().code, ErrorCode::UnknownTopicOrPartition);
}

#[test]
fn internal_topics_cannot_be_deleted_or_given_more_partitions() {
    let mut s = cluster(1, &[]);
    let req = NewTopic { internal: true, ..new_topic("__consumer_offsets", 2, 1) };
    let r = s.propose_create_topic(&req, Uuid::from_u128(5), DEFAULTS, &AnyConfig).unwrap();
    ok(&mut s, r);
    assert!(s.topic("__consumer_offsets").unwrap().internal);
    assert_eq!(s.propose_delete_topic("__consumer_offsets").unwrap_err().code, ErrorCode::InvalidRequest);
    let more = s.propose_create_partitions("__consumer_offsets", 3, None).unwrap_err();
    assert_eq!(more.code, ErrorCode::InvalidRequest);
}

#[test]
fn alter_configs_sets_and_removes_on_topics_brokers_and_the_cluster() {
    let mut s = cluster(2, &[]);
    create(&mut s, "t", 1, 1, 1);
    let set = |k: &str, v: Option<&str>| BTreeMap::from([(k.to_string(), v.map(str::to_string))]);
    let topic = ConfigResource::Topic { name: "t".into() };
    okp(&mut s, |s| s.propose_alter_configs(topic.clone(), set("retention.ms", Some("5")), &OnlyRetention).unwrap());
    assert_eq!(s.topic("t").unwrap().configs.get("retention.ms").map(String::as_str), Some("5"));
    okp(&mut s, |s| s.propose_alter_configs(topic.clone(), set("retention.ms", None), &OnlyRetention).unwrap());
    assert!(s.topic("t").unwrap().configs.is_empty());

    let node = ConfigResource::Broker { node_id: Some(2) };
    let cluster_wide = ConfigResource::Broker { node_id: None };
    okp(&mut s, |s| s.propose_alter_configs(node.clone(), set("retention.ms", Some("7")), &OnlyRetention).unwrap());
    okp(&mut s, |s| s.propose_alter_configs(cluster_wide, set("retention.ms", Some("8")), &OnlyRetention).unwrap());
    assert_eq!(s.broker_configs(2).unwrap().get("retention.ms").map(String::as_str), Some("7"));
    assert_eq!(s.cluster_configs().get("retention.ms").map(String::as_str), Some("8"));
    // Removing the last key leaves no layer, so the state equals one that never had it.
    okp(&mut s, |s| s.propose_alter_configs(node, set("retention.ms", None), &OnlyRetention).unwrap());
    assert!(s.broker_configs(2).is_none());

    let e = |r: ConfigResource, c| s.propose_alter_configs(r, c, &OnlyRetention).unwrap_err().code;
    assert_eq!(e(topic.clone(), set("retention.ms", Some("x"))), ErrorCode::InvalidConfig);
    assert_eq!(e(topic.clone(), set("", Some("1"))), ErrorCode::InvalidConfig);
    assert_eq!(
        e(ConfigResource::Topic { name: "nope".into() }, set("retention.ms", None)),
        ErrorCode::UnknownTopicOrPartition
    );
    assert_eq!(e(ConfigResource::Broker { node_id: Some(-2) }, set("retention.ms", None)), ErrorCode::InvalidRequest);
    refused(
        &mut s,
        MetadataRecord::AlterConfigs {
            resource: ConfigResource::Topic { name: "nope".into() },
            changes: set("a", None),
        },
        ErrorCode::UnknownTopicOrPartition,
    );
    refused(&mut s, MetadataRecord::AlterConfigs { resource: topic, changes: set("", None) }, ErrorCode::InvalidConfig);
}

#[test]
fn leadership_reports_apply_per_entry_and_refuse_stale_epochs() {
    let mut s = cluster(3, &[]);
    let req =
        NewTopic { assignments: vec![(0, vec![1, 2]), (1, vec![1, 2]), (2, vec![3, 2])], ..new_topic("t", -1, -1) };
    let r = s.propose_create_topic(&req, Uuid::from_u128(1), DEFAULTS, &AnyConfig).unwrap();
    ok(&mut s, r);
    let rep = |g, e, isr: Vec<NodeId>| LeadershipReport { group_id: g, leader_epoch: e, isr };
    let r =
        s.propose_report(1, vec![rep(0, 2, vec![1, 2]), rep(1, 1, vec![1]), rep(2, 1, vec![1]), rep(99, 1, vec![1])]);
    match ok(&mut s, r.unwrap()) {
        Outcome::LeadershipReported { applied, skipped } => {
            assert_eq!(applied, vec![0, 1]);
            let codes: Vec<(GroupId, ErrorCode)> = skipped.iter().map(|(g, e)| (*g, e.code)).collect();
            assert_eq!(codes, vec![(2, ErrorCode::InvalidRequest), (99, ErrorCode::UnknownTopicOrPartition)]);
        }
        o => panic!("{o:?}"),
    }
    let p = s.partition(0).unwrap();
    assert_eq!((p.leader, p.leader_epoch, p.isr.clone()), (Some(1), 2, vec![1, 2]));
    // Same leader, same epoch: an ISR change.
    okp(&mut s, |s| s.propose_report(1, vec![rep(0, 2, vec![1])]).unwrap());
    assert_eq!(s.partition(0).unwrap().isr, vec![1]);
    let skipped = |s: &mut ClusterMetadata, reporter, r: LeadershipReport| {
        let rec = s.propose_report(reporter, vec![r]).unwrap();
        let before = s.clone();
        match ok(s, rec) {
            Outcome::LeadershipReported { applied, skipped } => {
                assert!(applied.is_empty());
                assert_eq!(*s, before);
                skipped[0].1.code
            }
            o => panic!("{o:?}"),
        }
    };
    assert_eq!(skipped(&mut s, 2, rep(0, 1, vec![2])), ErrorCode::FencedLeaderEpoch);
    assert_eq!(skipped(&mut s, 2, rep(0, 2, vec![2])), ErrorCode::FencedLeaderEpoch);
    assert_eq!(skipped(&mut s, 2, rep(0, -1, vec![2])), ErrorCode::InvalidRequest);
    assert_eq!(skipped(&mut s, 2, rep(0, 3, vec![1])), ErrorCode::InvalidRequest);
    assert_eq!(skipped(&mut s, 2, rep(0, 3, vec![2, 2])), ErrorCode::InvalidRequest);
    assert_eq!(skipped(&mut s, 2, rep(0, 3, vec![2, 3])), ErrorCode::InvalidRequest);
    // A newer epoch moves leadership.
    okp(&mut s, |s| s.propose_report(2, vec![rep(0, 3, vec![2, 1])]).unwrap());
    assert_eq!(s.partition(0).unwrap().leader, Some(2));
    // A fenced ISR member is ineligible.
    okp(&mut s, |s| s.propose_fence(1).unwrap());
    assert_eq!(skipped(&mut s, 2, rep(0, 3, vec![2, 1])), ErrorCode::IneligibleReplica);
    // Whole record refusals: unknown, stale or fenced reporter.
    let any = vec![rep(0, 9, vec![2])];
    refused(
        &mut s,
        MetadataRecord::ReportLeadership { reporter: 8, incarnation: Uuid::from_u128(8), partitions: any.clone() },
        ErrorCode::BrokerIdNotRegistered,
    );
    refused(
        &mut s,
        MetadataRecord::ReportLeadership { reporter: 2, incarnation: Uuid::from_u128(1), partitions: any.clone() },
        ErrorCode::StaleBrokerEpoch,
    );
    refused(
        &mut s,
        MetadataRecord::ReportLeadership { reporter: 1, incarnation: Uuid::from_u128(1), partitions: any },
        ErrorCode::StaleBrokerEpoch,
    );
}

#[test]
fn a_report_at_the_same_epoch_restores_leadership_lost_to_a_fence() {
    let mut s = cluster(2, &[]);
    let g = create(&mut s, "t", 1, 2, 1)[0];
    let rep = vec![LeadershipReport { group_id: g, leader_epoch: 4, isr: vec![1, 2] }];
    okp(&mut s, |s| s.propose_report(1, rep.clone()).unwrap());
    okp(&mut s, |s| s.propose_fence(1).unwrap());
    okp(&mut s, |s| s.propose_unfence(1).unwrap());
    assert_eq!(s.partition(g).unwrap().leader, None);
    let rep = vec![LeadershipReport { group_id: g, leader_epoch: 4, isr: vec![1] }];
    okp(&mut s, |s| s.propose_report(1, rep).unwrap());
    assert_eq!(s.partition(g).unwrap().leader, Some(1));
}

#[test]
fn producer_id_blocks_never_overlap() {
    let mut s = cluster(2, &[]);
    let a = okp(&mut s, |s| s.propose_allocate_producer_ids(1).unwrap());
    let b = okp(&mut s, |s| s.propose_allocate_producer_ids(2).unwrap());
    assert_eq!(a, Outcome::ProducerIds { node_id: 1, first: 0, count: PRODUCER_ID_BLOCK });
    assert_eq!(b, Outcome::ProducerIds { node_id: 2, first: PRODUCER_ID_BLOCK, count: PRODUCER_ID_BLOCK });
    assert_eq!(s.next_producer_id(), 2 * PRODUCER_ID_BLOCK);
    assert_eq!(s.propose_allocate_producer_ids(5).unwrap_err().code, ErrorCode::BrokerIdNotRegistered);
    refused(&mut s, MetadataRecord::AllocateProducerIds { node_id: 5, count: 1 }, ErrorCode::BrokerIdNotRegistered);
    refused(&mut s, MetadataRecord::AllocateProducerIds { node_id: 1, count: 0 }, ErrorCode::InvalidRequest);
    refused(&mut s, MetadataRecord::AllocateProducerIds { node_id: 1, count: i64::MAX }, ErrorCode::UnknownServerError);
}

#[test]
fn error_codes_are_kafkas_numbers() {
    let expected = [
        (ErrorCode::UnknownServerError, -1),
        (ErrorCode::UnknownTopicOrPartition, 3),
        (ErrorCode::InvalidTopicException, 17),
        (ErrorCode::TopicAlreadyExists, 36),
        (ErrorCode::InvalidPartitions, 37),
        (ErrorCode::InvalidReplicationFactor, 38),
        (ErrorCode::InvalidReplicaAssignment, 39),
        (ErrorCode::InvalidConfig, 40),
        (ErrorCode::InvalidRequest, 42),
        (ErrorCode::FencedLeaderEpoch, 74),
        (ErrorCode::StaleBrokerEpoch, 77),
        (ErrorCode::BrokerIdNotRegistered, 102),
        (ErrorCode::InconsistentClusterId, 104),
        (ErrorCode::IneligibleReplica, 107),
    ];
    for (e, n) in expected {
        assert_eq!(e.code(), n, "{e:?}");
    }
}

#[test]
fn records_round_trip_and_newer_versions_are_refused() {
    let mut s = cluster(3, &["a"]);
    create(&mut s, "t", 2, 2, 1);
    let records = vec![
        MetadataRecord::InitCluster { cluster_id: "x".into() },
        MetadataRecord::RegisterBroker(reg(4, Some("r"), 4)),
        s.propose_fence(1).unwrap(),
        s.propose_unfence(1).unwrap(),
        s.propose_create_topic(&new_topic("n", 3, 2), Uuid::from_u128(9), DEFAULTS, &AnyConfig).unwrap(),
        s.propose_create_partitions("t", 4, None).unwrap(),
        s.propose_delete_topic("t").unwrap(),
        MetadataRecord::AlterConfigs {
            resource: ConfigResource::Broker { node_id: Some(1) },
            changes: BTreeMap::from([("a".into(), Some("1".into())), ("b".into(), None)]),
        },
        s.propose_report(1, vec![LeadershipReport { group_id: 0, leader_epoch: 1, isr: vec![1] }]).unwrap(),
        s.propose_allocate_producer_ids(2).unwrap(),
    ];
    for r in records {
        let bytes = r.encode();
        assert_eq!(MetadataRecord::decode(&bytes).unwrap(), r);
    }
    let mut v: serde_json::Value =
        serde_json::from_slice(&MetadataRecord::InitCluster { cluster_id: "x".into() }.encode()).unwrap();
    v["version"] = serde_json::json!(RECORD_VERSION + 1);
    let e = MetadataRecord::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(matches!(e, DecodeError::UnsupportedVersion { .. }), "{e}");
    assert!(MetadataRecord::decode(b"{\"version\":1,\"body\":{\"type\":\"no_such\"}}").is_err());
    assert!(MetadataRecord::decode(b"\xff").is_err());
}

#[test]
fn snapshot_restores_an_equal_state_and_refuses_an_inconsistent_one() {
    let mut s = cluster(3, &["a", "b"]);
    create(&mut s, "t", 4, 2, 1);
    okp(&mut s, |s| s.propose_report(1, vec![]).unwrap());
    okp(&mut s, |s| s.propose_allocate_producer_ids(1).unwrap());
    ok(
        &mut s,
        MetadataRecord::AlterConfigs {
            resource: ConfigResource::Broker { node_id: Some(3) },
            changes: BTreeMap::from([("k".into(), Some("v".into()))]),
        },
    );
    let restored = ClusterMetadata::restore(&s.snapshot()).unwrap();
    assert_eq!(restored, s);
    // A snapshot whose partition names an unregistered broker is refused.
    let mut v: serde_json::Value = serde_json::from_slice(&s.snapshot()).unwrap();
    v["body"]["partitions"]["0"]["replicas"] = serde_json::json!([77]);
    let e = ClusterMetadata::restore(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(matches!(e, DecodeError::Inconsistent(_)), "{e}");
}

/// `metadata.json` as the single-node broker's `Topics::persist` writes it
/// (`serde_json::to_vec_pretty` of `MetadataFile`).
const SINGLE_NODE_FIXTURE: &str = r#"{
  "cluster_id": "Xq3kTtY0QmW9zA1bC2dE3f",
  "topics": {
    "__consumer_offsets": {
      "id": "0b9c3a62-5e0f-4d7e-9f6b-1a2b3c4d5e6f",
      "partitions": 50,
      "configs": {
        "cleanup.policy": "compact"
      },
      "internal": true
    },
    "events": {
      "id": "7f1d2c3b-4a59-4e68-8d7c-6b5a49382716",
      "partitions": 3,
      "configs": {
        "retention.ms": "86400000",
        "compression.type": "zstd"
      },
      "internal": false
    },
    "legacy": {
      "id": "c0ffee00-1111-4222-8333-444455556666",
      "partitions": 1
    }
  },
  "broker_configs": {
    "retention.ms": "3600000"
  },
  "node_broker_configs": {
    "log.cleaner.backoff.ms": "1000"
  },
  "next_producer_id": 17
}"#;

#[test]
fn a_single_node_data_dir_imports_without_losing_anything() {
    let node = reg(1, Some("r1"), 100);
    let records = import_single_node(SINGLE_NODE_FIXTURE.as_bytes(), &node).unwrap();
    let mut s = ClusterMetadata::new();
    for r in &records {
        ok(&mut s, r.clone());
    }
    assert_eq!(s.cluster_id(), Some("Xq3kTtY0QmW9zA1bC2dE3f"));
    assert_eq!(s.live_brokers().map(|b| b.registration.clone()).collect::<Vec<_>>(), vec![node]);
    let ids: Vec<(&str, String, usize, bool)> =
        s.topics().iter().map(|(n, t)| (n.as_str(), t.id.to_string(), t.partitions.len(), t.internal)).collect();
    assert_eq!(
        ids,
        vec![
            ("__consumer_offsets", "0b9c3a62-5e0f-4d7e-9f6b-1a2b3c4d5e6f".into(), 50, true),
            ("events", "7f1d2c3b-4a59-4e68-8d7c-6b5a49382716".into(), 3, false),
            ("legacy", "c0ffee00-1111-4222-8333-444455556666".into(), 1, false),
        ]
    );
    let events = s.topic("events").unwrap();
    assert_eq!(events.configs.get("compression.type").map(String::as_str), Some("zstd"));
    assert_eq!(events.configs.get("retention.ms").map(String::as_str), Some("86400000"));
    assert_eq!(
        s.topic("__consumer_offsets").unwrap().configs.get("cleanup.policy").map(String::as_str),
        Some("compact")
    );
    assert_eq!(s.cluster_configs().get("retention.ms").map(String::as_str), Some("3600000"));
    assert_eq!(s.broker_configs(1).unwrap().get("log.cleaner.backoff.ms").map(String::as_str), Some("1000"));
    // Every partition on the node, led by it; producer ids continue past 17.
    assert_eq!(s.partitions().len(), 54);
    for p in s.partitions().values() {
        assert_eq!((p.replicas.clone(), p.leader, p.isr.clone()), (vec![1], Some(1), vec![1]));
    }
    assert_eq!(s.next_producer_id(), 17);
    match okp(&mut s, |s| s.propose_allocate_producer_ids(1).unwrap()) {
        Outcome::ProducerIds { first, .. } => assert_eq!(first, 17),
        o => panic!("{o:?}"),
    }
    // The broker's fresh-dir file (only a cluster id) imports too.
    let fresh = import_single_node(br#"{"cluster_id":"abc"}"#, &reg(1, None, 1)).unwrap();
    let mut s = ClusterMetadata::new();
    for r in &fresh {
        ok(&mut s, r.clone());
    }
    assert_eq!((s.cluster_id(), s.topics().len(), s.next_producer_id()), (Some("abc"), 0, 0));
    assert!(import_single_node(b"{\"topics\":{}}", &reg(1, None, 1)).is_err());
    let bad = r#"{"cluster_id":"a","topics":{"t":{"id":"7f1d2c3b-4a59-4e68-8d7c-6b5a49382716","partitions":0}}}"#;
    assert!(matches!(import_single_node(bad.as_bytes(), &reg(1, None, 1)), Err(ImportError::Invalid(_))));
}

#[test]
fn topics_created_one_after_another_keep_racks_distinct_and_leaders_balanced() {
    let mut s = cluster(9, &["a", "b", "c"]);
    for (i, partitions) in [5, 1, 12, 7, 3, 30].into_iter().enumerate() {
        create(&mut s, &format!("t{i}"), partitions, 3, i as u128 + 1);
        let mut leaders: BTreeMap<NodeId, usize> = (1..=9).map(|b| (b, 0)).collect();
        for p in s.partitions().values() {
            *leaders.get_mut(&p.replicas[0]).unwrap() += 1;
            let racks: std::collections::BTreeSet<_> =
                p.replicas.iter().map(|r| s.broker(*r).unwrap().registration.rack.clone()).collect();
            assert_eq!(racks.len(), 3, "{p:?}");
        }
        let (min, max) = (leaders.values().min().unwrap(), leaders.values().max().unwrap());
        assert!(max - min <= 1, "after topic {i}: {leaders:?}");
    }
}

#[test]
fn placement_skips_fenced_brokers_and_fills_a_new_one() {
    let mut s = cluster(3, &[]);
    create(&mut s, "old", 6, 2, 1);
    okp(&mut s, |s| s.propose_fence(3).unwrap());
    let g = create(&mut s, "while_fenced", 4, 2, 2);
    assert!(g.iter().all(|g| !s.partition(*g).unwrap().replicas.contains(&3)));
    ok(&mut s, MetadataRecord::RegisterBroker(reg(4, None, 4)));
    ok(&mut s, MetadataRecord::UnfenceBroker { node_id: 4, incarnation: Uuid::from_u128(4) });
    // Broker 4 carries nothing yet, so the next partitions lead there first.
    let g = create(&mut s, "after_join", 2, 1, 3);
    assert!(
        g.iter().all(|g| s.partition(*g).unwrap().replicas == vec![4]),
        "{:?}",
        s.partitions_of("after_join").collect::<Vec<_>>()
    );
}

#[test]
fn leader_pinning_config_places_preferred_leaders_in_the_pinned_rack() {
    let mut s = cluster(6, &["eu", "us", "ap"]);
    let mut req = new_topic("orders", 8, 3);
    req.configs.insert(placement::LEADER_PREFERRED_RACKS.into(), "us".into());
    okp(&mut s, |s| s.propose_create_topic(&req, Uuid::from_u128(1), DEFAULTS, &AnyConfig).unwrap());
    okp(&mut s, |s| s.propose_create_partitions("orders", 12, None).unwrap());
    let rack = |s: &ClusterMetadata, id: NodeId| s.broker(id).unwrap().registration.rack.clone().unwrap();
    for (_, p) in s.partitions_of("orders") {
        assert_eq!(rack(&s, p.replicas[0]), "us", "{p:?}");
    }
}

#[test]
fn pinning_a_topic_later_moves_its_preferred_leaders_to_the_pinned_rack() {
    let mut s = cluster(3, &["eu", "us", "ap"]);
    create(&mut s, "t", 6, 3, 1);
    let firsts: Vec<NodeId> = s.partitions_of("t").map(|(_, p)| p.replicas[0]).collect();
    let groups: Vec<GroupId> = s.partitions_of("t").map(|(g, _)| g).collect();
    // Unpinned, the first replica is preferred.
    assert_eq!(groups.iter().map(|g| s.preferred_leader(*g).unwrap()).collect::<Vec<_>>(), firsts);
    let pin = |racks: Option<&str>| {
        let changes = [(placement::LEADER_PREFERRED_RACKS.to_string(), racks.map(str::to_string))].into();
        move |s: &ClusterMetadata| {
            s.propose_alter_configs(ConfigResource::Topic { name: "t".into() }, changes, &AnyConfig).unwrap()
        }
    };
    okp(&mut s, pin(Some("ap")));
    let ap = s.brokers().values().find(|b| b.registration.rack.as_deref() == Some("ap")).unwrap().registration.node_id;
    assert!(groups.iter().all(|g| s.preferred_leader(*g) == Some(ap)));
    // Every partition led by its first replica, in the ISR: the pinned replica is elected where
    // it does not lead.
    let reports = |s: &ClusterMetadata, leader: NodeId| -> Vec<LeadershipReport> {
        s.partitions_of("t")
            .filter(|(_, p)| p.replicas[0] == leader)
            .map(|(g, _)| LeadershipReport { group_id: g, leader_epoch: 1, isr: vec![1, 2, 3] })
            .collect()
    };
    for n in 1..=3 {
        let r = reports(&s, n);
        okp(&mut s, |s| s.propose_report(n, r).unwrap());
    }
    let moves = s.preferred_leader_elections();
    assert_eq!(moves.len(), firsts.iter().filter(|f| **f != ap).count(), "{moves:?}");
    assert!(moves.iter().all(|(_, to)| *to == ap));
    // A rack that holds no replica pins nothing; removing the config unpins.
    okp(&mut s, pin(Some("nowhere")));
    assert_eq!(groups.iter().map(|g| s.preferred_leader(*g).unwrap()).collect::<Vec<_>>(), firsts);
    okp(&mut s, pin(None));
    assert_eq!(groups.iter().map(|g| s.preferred_leader(*g).unwrap()).collect::<Vec<_>>(), firsts);
}

#[test]
fn preferred_leader_elections_restore_the_leader_balance() {
    let mut s = cluster(3, &[]);
    create(&mut s, "t", 9, 3, 1);
    // After failovers broker 1 leads everything.
    let all: Vec<LeadershipReport> =
        s.partitions().keys().map(|g| LeadershipReport { group_id: *g, leader_epoch: 1, isr: vec![1, 2, 3] }).collect();
    okp(&mut s, |s| s.propose_report(1, all).unwrap());
    // Broker 3 is fenced: its preferred partitions stay where they are.
    okp(&mut s, |s| s.propose_fence(3).unwrap());
    let moves = s.preferred_leader_elections();
    assert!(moves.iter().all(|(g, to)| *to == 2 && s.partition(*g).unwrap().replicas[0] == 2), "{moves:?}");
    assert_eq!(moves.len(), 3);
    okp(&mut s, |s| s.propose_unfence(3).unwrap());
    // Broker 3 re-entered the ISR of its partitions (its leader reports so).
    let back: Vec<LeadershipReport> =
        s.partitions().keys().map(|g| LeadershipReport { group_id: *g, leader_epoch: 1, isr: vec![1, 2, 3] }).collect();
    okp(&mut s, |s| s.propose_report(1, back).unwrap());
    // The groups transfer leadership; the new leaders report a new term.
    for (g, to) in s.preferred_leader_elections() {
        let isr = s.partition(g).unwrap().isr.clone();
        okp(&mut s, |s| s.propose_report(to, vec![LeadershipReport { group_id: g, leader_epoch: 2, isr }]).unwrap());
    }
    assert!(s.preferred_leader_elections().is_empty());
    let mut leads: BTreeMap<NodeId, usize> = BTreeMap::new();
    for p in s.partitions().values() {
        *leads.entry(p.leader.unwrap()).or_default() += 1;
    }
    assert_eq!(leads, BTreeMap::from([(1, 3), (2, 3), (3, 3)]));
}

/// `metadata.json` of a real single-node broker (main at b3de81e): started
/// on an empty dir, two topics created with kafka-python (one with
/// configs), a cluster-wide and a per-broker dynamic config set, three
/// idempotent producers initialised. Its own contents are the expectation.
const REAL_SINGLE_NODE_FILE: &str = include_str!("../../testdata/single-node-metadata.json");

#[test]
fn the_metadata_file_of_a_real_single_node_broker_imports_entirely() {
    let file: serde_json::Value = serde_json::from_str(REAL_SINGLE_NODE_FILE).unwrap();
    let node = reg(1, None, 5);
    let mut s = ClusterMetadata::new();
    for r in import_single_node(REAL_SINGLE_NODE_FILE.as_bytes(), &node).unwrap() {
        ok(&mut s, r);
    }
    assert_eq!(s.cluster_id(), file["cluster_id"].as_str());
    let topics = file["topics"].as_object().unwrap();
    assert!(topics.len() >= 3, "the fixture should hold user and internal topics");
    assert_eq!(s.topics().len(), topics.len());
    for (name, meta) in topics {
        let t = s.topic(name).unwrap_or_else(|| panic!("{name} lost"));
        assert_eq!(t.id.to_string(), meta["id"].as_str().unwrap(), "{name}");
        assert_eq!(t.partitions.len() as u64, meta["partitions"].as_u64().unwrap(), "{name}");
        assert_eq!(t.internal, meta["internal"].as_bool().unwrap(), "{name}");
        let configs: BTreeMap<String, String> = serde_json::from_value(meta["configs"].clone()).unwrap();
        assert_eq!(t.configs, configs, "{name}");
        for (_, p) in s.partitions_of(name) {
            assert_eq!((p.replicas.as_slice(), p.leader), (&[1][..], Some(1)));
        }
    }
    let cluster: BTreeMap<String, String> = serde_json::from_value(file["broker_configs"].clone()).unwrap();
    let per_node: BTreeMap<String, String> = serde_json::from_value(file["node_broker_configs"].clone()).unwrap();
    assert!(!cluster.is_empty() && !per_node.is_empty());
    assert_eq!(s.cluster_configs(), &cluster);
    assert_eq!(s.broker_configs(1), Some(&per_node));
    let next = file["next_producer_id"].as_i64().unwrap();
    assert!(next > 0);
    assert_eq!(s.next_producer_id(), next);
}

fn reassign(s: &mut ClusterMetadata, g: GroupId, target: Option<Vec<NodeId>>, allow: bool) -> Result<(), ErrorCode> {
    let r = s.propose_alter_reassignments(vec![Reassignment { group_id: g, target }], allow).unwrap();
    match ok(s, r) {
        Outcome::ReassignmentsAltered { applied, skipped } if skipped.is_empty() => {
            assert_eq!(applied, vec![g]);
            Ok(())
        }
        Outcome::ReassignmentsAltered { skipped, .. } => Err(skipped[0].1.code),
        o => panic!("{o:?}"),
    }
}

fn moving(s: &ClusterMetadata, g: GroupId) -> (Vec<NodeId>, Vec<NodeId>, Vec<NodeId>) {
    let p = s.partition(g).unwrap();
    (p.replicas.clone(), p.adding(), p.removing())
}

/// The epoch of the reassignment of `g` in progress.
fn epoch(s: &ClusterMetadata, g: GroupId) -> u64 {
    s.partition(g).unwrap().reassignment.as_ref().unwrap().epoch
}

/// A leader's step of the reassignment of `g` in progress, as proposed.
fn step(s: &ClusterMetadata, g: GroupId, step: ReassignmentStep) -> MetadataRecord {
    s.propose_reassignment_step(g, epoch(s, g), &step).unwrap().expect("a record")
}

#[test]
fn a_reassignment_keeps_every_replica_until_its_leader_completes_it() {
    let mut s = cluster(5, &[]);
    let g = create(&mut s, "t", 1, 3, 1)[0];
    let orig = s.partition(g).unwrap().replicas.clone();
    let (a, b, c) = (orig[0], orig[1], orig[2]);
    let others: Vec<NodeId> = (1..=5).filter(|n| !orig.contains(n)).collect();
    let (x, y) = (others[0], others[1]);

    // Kafka's form: the target first, then the replicas leaving.
    reassign(&mut s, g, Some(vec![x, y, a]), false).unwrap();
    assert_eq!(moving(&s, g), (vec![x, y, a, b, c], vec![x, y], vec![b, c]));
    assert_eq!(s.partition(g).unwrap().target(), vec![x, y, a]);
    assert_eq!(s.partition(g).unwrap().original(), vec![a, b, c]);
    let first = epoch(&s, g);
    // The leader's steps must name the reassignment in progress.
    let stale = s.propose_reassignment_step(g, first + 1, &ReassignmentStep::Check).unwrap_err();
    assert_eq!(stale.code, ErrorCode::NoReassignmentInProgress);
    assert_eq!(s.propose_reassignment_step(g, first, &ReassignmentStep::Check), Ok(None));
    okp(&mut s, |s| step(s, g, ReassignmentStep::Promote(vec![x])));
    assert_eq!(s.partition(g).unwrap().promoted(), [x]);
    refused(
        &mut s,
        MetadataRecord::PromoteReassignment { group_id: g, epoch: first, joining: vec![b] },
        ErrorCode::InvalidRequest,
    );

    // A new target replaces it; nodes of the old target stay listed (they may be voters now),
    // and so does the promotion.
    reassign(&mut s, g, Some(vec![x, b, c]), false).unwrap();
    assert_eq!(moving(&s, g), (vec![x, b, c, y, a], vec![x], vec![y, a]));
    assert_eq!(s.partition(g).unwrap().original(), vec![a, b, c]);
    assert_eq!(s.partition(g).unwrap().promoted(), [x]);
    // Cancelling moves back to the original replicas, through the leader like any other move.
    reassign(&mut s, g, None, false).unwrap();
    assert_eq!(moving(&s, g), (vec![a, b, c, x, y], vec![], vec![x, y]));
    assert!(s.partition(g).unwrap().reassigning());
    // Moving to the first target again: a completion decided for the first attempt (same
    // target) is refused by its epoch.
    reassign(&mut s, g, Some(vec![x, y, a]), false).unwrap();
    refused(
        &mut s,
        MetadataRecord::CompleteReassignment { group_id: g, epoch: first },
        ErrorCode::NoReassignmentInProgress,
    );
    reassign(&mut s, g, None, false).unwrap();

    ok(
        &mut s,
        MetadataRecord::ReportLeadership {
            reporter: x,
            incarnation: Uuid::from_u128(x as u128),
            partitions: vec![LeadershipReport { group_id: g, leader_epoch: 3, isr: vec![x, a, b] }],
        },
    );
    okp(&mut s, |s| step(s, g, ReassignmentStep::Complete));
    let p = s.partition(g).unwrap();
    assert_eq!((p.replicas.clone(), p.reassigning(), p.promoted().len()), (vec![a, b, c], false, 0));
    // The ISR keeps only target replicas; a leader outside the target no longer counts.
    assert_eq!((p.isr.clone(), p.leader), (vec![a, b], None));
    assert_eq!(reassign(&mut s, g, None, false), Err(ErrorCode::NoReassignmentInProgress));
}

#[test]
fn a_completed_reassignment_counts_as_having_had_a_leader() {
    // No leadership report was ever taken, but the group's leader changed its membership.
    let mut s = cluster(4, &[]);
    let g = create(&mut s, "t", 1, 3, 1)[0];
    assert_eq!(s.partition(g).unwrap().leader_epoch, 0);
    let spare = (1..=4).find(|n| !s.partition(g).unwrap().replicas.contains(n)).unwrap();
    reassign(&mut s, g, Some(vec![spare]), true).unwrap();
    okp(&mut s, |s| step(s, g, ReassignmentStep::Complete));
    assert_eq!(s.partition(g).unwrap().leader_epoch, 1);
}

#[test]
fn reassignments_are_checked_as_kafka_checks_them() {
    let mut s = cluster(4, &[]);
    let g = create(&mut s, "t", 1, 3, 1)[0];
    let orig = s.partition(g).unwrap().replicas.clone();
    let spare = (1..=4).find(|n| !orig.contains(n)).unwrap();
    assert_eq!(reassign(&mut s, g, Some(vec![]), true), Err(ErrorCode::InvalidReplicaAssignment));
    assert_eq!(reassign(&mut s, g, Some(vec![1, 1, 2]), true), Err(ErrorCode::InvalidReplicaAssignment));
    assert_eq!(reassign(&mut s, g, Some(vec![1, 2, 9]), true), Err(ErrorCode::InvalidReplicaAssignment));
    assert_eq!(reassign(&mut s, 77, Some(vec![1, 2, 3]), true), Err(ErrorCode::UnknownTopicOrPartition));
    // KIP-860: a replication factor change must be asked for.
    assert_eq!(reassign(&mut s, g, Some(vec![1, 2, 3, 4]), false), Err(ErrorCode::InvalidReplicationFactor));
    assert!(!s.partition(g).unwrap().reassigning());
    // A new order of the same replicas moves nothing and takes effect at once.
    let reversed: Vec<NodeId> = orig.iter().rev().copied().collect();
    reassign(&mut s, g, Some(reversed.clone()), false).unwrap();
    assert_eq!(moving(&s, g), (reversed, vec![], vec![]));
    // Growing and shrinking the replication factor.
    let mut grown = orig.clone();
    grown.push(spare);
    reassign(&mut s, g, Some(grown.clone()), true).unwrap();
    assert_eq!(moving(&s, g).1, vec![spare]);
    okp(&mut s, |s| step(s, g, ReassignmentStep::Complete));
    assert_eq!(moving(&s, g).0, grown);
    reassign(&mut s, g, Some(vec![spare]), true).unwrap();
    assert_eq!(moving(&s, g).2, orig);
    okp(&mut s, |s| step(s, g, ReassignmentStep::Complete));
    assert_eq!(moving(&s, g), (vec![spare], vec![], vec![]));
    // Two entries for one partition in one request.
    let twice = vec![Reassignment { group_id: g, target: None }, Reassignment { group_id: g, target: None }];
    assert_eq!(s.propose_alter_reassignments(twice, true).unwrap_err().code, ErrorCode::InvalidRequest);
    // The snapshot carries a reassignment in progress.
    reassign(&mut s, g, Some(vec![1]), true).unwrap();
    assert_eq!(ClusterMetadata::restore(&s.snapshot()).unwrap(), s);
}
