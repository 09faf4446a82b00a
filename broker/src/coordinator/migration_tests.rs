//! Start-up migration of internal topics written in the old JSON format:
//! the coordinators opened on a data dir holding such records, including
//! one where an earlier migration crashed half-way.

use std::sync::Arc;

use fjord_storage::batch::{build_batch, build_batch_as, Producer};
use fjord_storage::PartitionLog;

use crate::config::BrokerConfig;
use crate::coordinator::classic::{java_hash, CommittedOffset, GroupCoordinator, OFFSETS_TOPIC};
use crate::coordinator::txn::{TxnCoordinator, TxnState, TXN_TOPIC};
use crate::coordinator::{offsets_log, records, txn_log};
use crate::internal_topic;
use crate::topics::Topics;

const PARTITIONS: i32 = 3;

fn partition_of(id: &str) -> i32 {
    (java_hash(id) & 0x7fff_ffff) % PARTITIONS
}

fn open_topics(dir: &std::path::Path) -> Arc<Topics> {
    let config = BrokerConfig { data_dir: dir.to_path_buf(), ..BrokerConfig::default() };
    let topics = Arc::new(Topics::open(&config).unwrap());
    internal_topic::ensure(&topics, OFFSETS_TOPIC, PARTITIONS).unwrap();
    internal_topic::ensure(&topics, TXN_TOPIC, PARTITIONS).unwrap();
    topics
}

fn append(log: &PartitionLog, records: &[(String, Option<String>)], producer: Option<(i64, i16)>) {
    let kv: Vec<fjord_storage::batch::KeyValue<'_>> =
        records.iter().map(|(k, v)| (Some(k.as_bytes()), v.as_deref().map(str::as_bytes))).collect();
    match producer {
        None => log.append(&build_batch(0, 1_000, &kv), 0, 1_000).unwrap(),
        Some((id, epoch)) => {
            let p = Producer { id, epoch, base_sequence: -1, transactional: true };
            log.append_from_coordinator(&build_batch_as(0, 1_000, &kv, Some(p)), 0, 1_000).unwrap()
        }
    };
}

fn offset_key(group: &str, topic: &str, partition: i32) -> String {
    format!(r#"{{"type":"offset","group":"{group}","topic":"{topic}","partition":{partition}}}"#)
}

fn offset_value(offset: i64, metadata: &str) -> Option<String> {
    Some(format!(r#"{{"offset":{offset},"leader_epoch":4,"metadata":"{metadata}","commit_ms":1700000000000}}"#))
}

/// Every record a fresh read of `log` returns: (key, value, transactional).
fn raw_records(log: &PartitionLog) -> Vec<(Vec<u8>, Option<Vec<u8>>, bool)> {
    let mut out = Vec::new();
    internal_topic::replay(log, |batch, r| {
        if !batch.is_control() {
            out.push((
                r.key.map(|k| k.to_vec()).unwrap_or_default(),
                r.value.map(|v| v.to_vec()),
                batch.is_transactional(),
            ));
        }
    })
    .unwrap();
    out
}

/// Writes the old format: a group with two offsets (one overwritten), a
/// deleted offset, a deleted group, and an offset pending in an open
/// transaction of producer (900, 2).
fn write_legacy_offsets(topics: &Topics) -> (Arc<PartitionLog>, Arc<PartitionLog>) {
    let g = "legacy-group";
    let log = topics.log(OFFSETS_TOPIC, partition_of(g)).unwrap();
    append(
        &log,
        &[
            (
                r#"{"type":"group","group":"legacy-group"}"#.into(),
                Some(r#"{"protocol_type":"consumer","generation":6}"#.into()),
            ),
            (offset_key(g, "orders", 0), offset_value(10, "early")),
            (offset_key(g, "orders", 0), offset_value(42, "m42")),
            (offset_key(g, "orders", 1), offset_value(7, "")),
            (offset_key(g, "gone", 0), offset_value(5, "")),
            (offset_key(g, "gone", 0), None),
        ],
        None,
    );
    let d = "deleted-group";
    let dlog = topics.log(OFFSETS_TOPIC, partition_of(d)).unwrap();
    append(
        &dlog,
        &[
            (offset_key(d, "orders", 0), offset_value(3, "")),
            (
                r#"{"type":"group","group":"deleted-group"}"#.into(),
                Some(r#"{"protocol_type":"consumer","generation":1}"#.into()),
            ),
            (offset_key(d, "orders", 0), None),
            (r#"{"type":"group","group":"deleted-group"}"#.into(), None),
        ],
        None,
    );
    let t = "txn-group";
    let tlog = topics.log(OFFSETS_TOPIC, partition_of(t)).unwrap();
    append(&tlog, &[(offset_key(t, "orders", 0), offset_value(99, "txn"))], Some((900, 2)));
    (log, tlog)
}

fn assert_offsets(groups: &GroupCoordinator) {
    let offsets = groups.fetch_offsets("legacy-group");
    let o0 = &offsets[&("orders".to_string(), 0)];
    assert_eq!(
        (o0.offset, o0.leader_epoch, o0.metadata.as_deref(), o0.commit_ms),
        (42, 4, Some("m42"), 1_700_000_000_000)
    );
    assert_eq!(offsets[&("orders".to_string(), 1)].offset, 7);
    assert_eq!(offsets.len(), 2, "the deleted offset stays deleted: {offsets:?}");
    assert_eq!(
        groups.with_group("legacy-group", |g| g.map(|g| (g.generation, g.protocol_type.clone()))),
        Some((6, Some("consumer".into())))
    );
    assert!(groups.with_group("deleted-group", |g| g.is_none()));
    assert!(groups.has_pending("txn-group", "orders", 0));
    assert!(groups.fetch_offsets("txn-group").is_empty());
}

/// Every record left in each partition is in Kafka's format.
fn assert_all_kafka_format(topics: &Topics, topic: &str) {
    for p in 0..PARTITIONS {
        let log = topics.log(topic, p).unwrap();
        for (key, value, _) in raw_records(&log) {
            assert!(key.first() == Some(&0), "{topic}-{p} still has {:?}", String::from_utf8_lossy(&key));
            if let Some(v) = value {
                assert_eq!(v[0], 0, "value version of {topic}-{p}");
            }
        }
    }
}

#[test]
fn offsets_migrate_once_and_survive() {
    let dir = tempfile::tempdir().unwrap();
    let topics = open_topics(dir.path());
    let (log, tlog) = write_legacy_offsets(&topics);
    let old_end = log.log_end_offset();

    let groups = GroupCoordinator::open(&topics, PARTITIONS).unwrap();
    assert_offsets(&groups);
    assert_all_kafka_format(&topics, OFFSETS_TOPIC);
    assert_eq!(log.log_start_offset(), old_end, "old records are below the log start");
    // The group record and both offsets, in Kafka's format.
    let rewritten = raw_records(&log);
    let keys: Vec<_> = rewritten.iter().map(|(k, v, _)| offsets_log::decode(k, v.as_deref()).0.unwrap()).collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    // The open transaction's offset is the same producer's transactional record.
    let pending = raw_records(&tlog);
    assert_eq!(pending.len(), 1);
    assert!(pending[0].2, "still transactional");
    assert_eq!(records::decode_offset_commit_value(pending[0].1.as_deref().unwrap()).unwrap().offset, 99);
    assert_eq!(tlog.open_transactions().first().map(|(pid, _)| *pid), Some(900));

    // A second start finds nothing to migrate and writes nothing.
    let ends: Vec<i64> = (0..PARTITIONS).map(|p| topics.log(OFFSETS_TOPIC, p).unwrap().log_end_offset()).collect();
    let again = GroupCoordinator::open(&topics, PARTITIONS).unwrap();
    assert_offsets(&again);
    let ends_after: Vec<i64> =
        (0..PARTITIONS).map(|p| topics.log(OFFSETS_TOPIC, p).unwrap().log_end_offset()).collect();
    assert_eq!(ends, ends_after);

    // The transaction commits: its marker applies the migrated offset.
    tlog.append_marker(900, 2, 0, true, 0, 2_000).unwrap();
    let after_commit = GroupCoordinator::open(&topics, PARTITIONS).unwrap();
    assert_eq!(after_commit.fetch_offsets("txn-group")[&("orders".to_string(), 0)].offset, 99);
    assert!(!after_commit.has_pending("txn-group", "orders", 0));
}

#[test]
fn a_migration_cut_short_before_the_log_start_moved_is_redone() {
    let dir = tempfile::tempdir().unwrap();
    let topics = open_topics(dir.path());
    let (log, _) = write_legacy_offsets(&topics);
    // The first start crashed after writing part of the new records (one
    // of the two offsets), before the log start moved.
    let latest =
        CommittedOffset { offset: 42, leader_epoch: 4, metadata: Some("m42".into()), commit_ms: 1_700_000_000_000 };
    let (k, v) = offsets_log::offset_record("legacy-group", "orders", 0, &latest);
    log.append(&build_batch(0, 1_000, &[(Some(&k), v.as_deref())]), 0, 1_000).unwrap();
    log.sync_now().unwrap();
    let partial_end = log.log_end_offset();

    // The next start reads old and new records alike and migrates again.
    let groups = GroupCoordinator::open(&topics, PARTITIONS).unwrap();
    assert_offsets(&groups);
    assert_eq!(log.log_start_offset(), partial_end, "the log now starts at the second migration's records");
    assert_all_kafka_format(&topics, OFFSETS_TOPIC);
    let end = log.log_end_offset();
    let reopened = GroupCoordinator::open(&topics, PARTITIONS).unwrap();
    assert_offsets(&reopened);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (partial_end, end), "no third migration");
}

#[test]
fn transaction_state_migrates_once() {
    let dir = tempfile::tempdir().unwrap();
    let topics = open_topics(dir.path());
    let ongoing = r#"{"producer_id":900,"producer_epoch":2,"timeout_ms":60000,"state":"Ongoing","partitions":[["orders",0],["orders",1]],"start_ms":1000,"update_ms":1500}"#;
    let done = r#"{"producer_id":901,"producer_epoch":0,"timeout_ms":30000,"state":"CompleteCommit","partitions":[],"start_ms":-1,"update_ms":2000}"#;
    for (id, value) in [("tx-a", Some(ongoing)), ("tx-b", Some(done)), ("tx-c", Some(done)), ("tx-c", None)] {
        let log = topics.log(TXN_TOPIC, partition_of(id)).unwrap();
        let key = format!(r#"{{"transactional_id":"{id}"}}"#);
        append(&log, &[(key, value.map(str::to_string))], None);
    }
    let groups = Arc::new(GroupCoordinator::open(&topics, PARTITIONS).unwrap());
    let check = |txns: &TxnCoordinator| {
        let a = txns.get("tx-a").unwrap();
        assert_eq!((a.producer_id, a.producer_epoch, a.timeout_ms, a.state), (900, 2, 60_000, TxnState::Ongoing));
        assert_eq!(a.partitions.len(), 2);
        assert_eq!((a.start_ms, a.update_ms), (1_000, 1_500));
        assert_eq!(txns.get("tx-b").map(|b| b.state), Some(TxnState::CompleteCommit));
        assert!(txns.get("tx-c").is_none());
    };
    let txns = TxnCoordinator::open(topics.clone(), groups.clone(), PARTITIONS, true, 900_000).unwrap();
    check(&txns);
    assert_all_kafka_format(&topics, TXN_TOPIC);
    let a_log = topics.log(TXN_TOPIC, partition_of("tx-a")).unwrap();
    let rewritten: Vec<_> =
        raw_records(&a_log).iter().filter_map(|(k, v, _)| txn_log::decode(k, v.as_deref()).0).collect();
    assert_eq!(rewritten.len(), 1, "only tx-a lives in its partition");
    assert_eq!((rewritten[0].0.as_str(), rewritten[0].1.as_ref().map(|m| m.state)), ("tx-a", Some(TxnState::Ongoing)));
    let ends: Vec<i64> = (0..PARTITIONS).map(|p| topics.log(TXN_TOPIC, p).unwrap().log_end_offset()).collect();
    let again = TxnCoordinator::open(topics.clone(), groups, PARTITIONS, true, 900_000).unwrap();
    check(&again);
    let ends_after: Vec<i64> = (0..PARTITIONS).map(|p| topics.log(TXN_TOPIC, p).unwrap().log_end_offset()).collect();
    assert_eq!(ends, ends_after, "no second migration");
}
