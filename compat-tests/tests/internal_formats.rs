//! Kafka's own record formats in `__consumer_offsets` and
//! `__transaction_state`: a data dir left by the JSON format of earlier
//! Fjord versions is migrated on start-up, once, with committed offsets,
//! group generations and an open transaction intact; and what a client
//! reads from these topics decodes with Kafka's schemas.
//!
//! The old data dir is built with the broker's own storage types (a real
//! older binary is not at hand in the test); its records are the JSON the
//! old code wrote, spelled out here.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use fjord_broker::config::BrokerConfig;
use fjord_broker::internal_topic;
use fjord_broker::topics::Topics;
use fjord_compat_tests::wire::{fetch, list_offset, s};
use fjord_compat_tests::{client, clients_dir, python, run_client, BrokerProcess, RawConn};
use fjord_storage::batch::{build_batch_as, Producer};
use fjord_storage::PartitionLog;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::*;
use kafka_protocol::records::RecordBatchDecoder;

const OFFSETS: &str = "__consumer_offsets";
const TXNS: &str = "__transaction_state";
/// The broker's default partition counts of both internal topics.
const INTERNAL_PARTITIONS: i32 = 50;
const COMMIT_MS: i64 = 1_700_000_000_000;

/// Java's String.hashCode, as Kafka places group and transactional ids.
fn partition_for(id: &str) -> i32 {
    let h = id.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32));
    (h & 0x7fff_ffff) % INTERNAL_PARTITIONS
}

fn append(log: &PartitionLog, records: &[(&str, Option<&str>)], producer: Option<(i64, i16)>) {
    let kv: Vec<fjord_storage::batch::KeyValue<'_>> =
        records.iter().map(|(k, v)| (Some(k.as_bytes()), v.map(str::as_bytes))).collect();
    let p = producer.map(|(id, epoch)| Producer { id, epoch, base_sequence: -1, transactional: true });
    let batch = build_batch_as(0, COMMIT_MS, &kv, p);
    let written = if producer.is_some() {
        log.append_from_coordinator(&batch, 0, COMMIT_MS)
    } else {
        log.append(&batch, 0, COMMIT_MS)
    };
    written.expect("append to the old data dir");
}

fn offset_key(group: &str, topic: &str, partition: i32) -> String {
    format!(r#"{{"type":"offset","group":"{group}","topic":"{topic}","partition":{partition}}}"#)
}

fn offset_value(offset: i64, metadata: &str) -> String {
    format!(r#"{{"offset":{offset},"leader_epoch":4,"metadata":"{metadata}","commit_ms":{COMMIT_MS}}}"#)
}

/// A data dir as the JSON-writing Fjord left it: a group with committed
/// offsets (one overwritten, one deleted) and a generation, a deleted group,
/// and a transaction left open by producer (pid, 2) holding a record in
/// `orders-0` and an offset of `txn-group`. Returns the dir and pid.
fn old_data_dir() -> (tempfile::TempDir, i64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    let topics = Topics::open(&config).expect("open data dir");
    topics.create("orders", 2, BTreeMap::new(), false).expect("create orders");
    internal_topic::ensure(&topics, OFFSETS, INTERNAL_PARTITIONS).expect("offsets topic");
    internal_topic::ensure(&topics, TXNS, INTERNAL_PARTITIONS).expect("txn topic");
    let log = |topic: &str, p: i32| topics.log(topic, p).expect("partition");

    let g = "legacy-group";
    let (k0, k1, kg) = (offset_key(g, "orders", 0), offset_key(g, "orders", 1), offset_key(g, "gone", 0));
    let (v10, v42, v7, v5) =
        (offset_value(10, "early"), offset_value(42, "m42"), offset_value(7, ""), offset_value(5, ""));
    append(
        &log(OFFSETS, partition_for(g)),
        &[
            (r#"{"type":"group","group":"legacy-group"}"#, Some(r#"{"protocol_type":"consumer","generation":6}"#)),
            (&k0, Some(&v10)),
            (&k0, Some(&v42)),
            (&k1, Some(&v7)),
            (&kg, Some(&v5)),
            (&kg, None),
        ],
        None,
    );
    let d = "deleted-group";
    let kd = offset_key(d, "orders", 0);
    append(
        &log(OFFSETS, partition_for(d)),
        &[
            (&kd, Some(&v5)),
            (r#"{"type":"group","group":"deleted-group"}"#, Some(r#"{"protocol_type":"consumer","generation":1}"#)),
            (&kd, None),
            (r#"{"type":"group","group":"deleted-group"}"#, None),
        ],
        None,
    );

    let pid = topics.allocate_producer_id().expect("producer id");
    let data = Producer { id: pid, epoch: 2, base_sequence: 0, transactional: true };
    let batch = build_batch_as(0, COMMIT_MS, &[(Some(b"k".as_slice()), Some(b"in-txn".as_slice()))], Some(data));
    log("orders", 0).append(&batch, 0, COMMIT_MS).expect("transactional data");
    let t = "txn-group";
    let (kt, v99) = (offset_key(t, "orders", 0), offset_value(99, "txn"));
    append(&log(OFFSETS, partition_for(t)), &[(&kt, Some(&v99))], Some((pid, 2)));
    let state = |status: &str, partitions: &str| {
        format!(
            r#"{{"producer_id":{pid},"producer_epoch":2,"timeout_ms":60000,"state":"{status}","partitions":{partitions},"start_ms":{COMMIT_MS},"update_ms":{}}}"#,
            COMMIT_MS + 5
        )
    };
    let open = state("Ongoing", &format!(r#"[["{OFFSETS}",{}],["orders",0]]"#, partition_for(t)));
    append(
        &log(TXNS, partition_for("legacy-txn")),
        &[
            (r#"{"transactional_id":"legacy-txn"}"#, Some(&state("Empty", "[]"))),
            (r#"{"transactional_id":"legacy-txn"}"#, Some(&open)),
        ],
        None,
    );
    // An id that expired (tombstoned) must stay gone.
    append(
        &log(TXNS, partition_for("expired-txn")),
        &[
            (r#"{"transactional_id":"expired-txn"}"#, Some(&state("CompleteAbort", "[]"))),
            (r#"{"transactional_id":"expired-txn"}"#, None),
        ],
        None,
    );
    for l in topics.all_logs() {
        l.sync_now().expect("sync");
    }
    (dir, pid)
}

/// Kafka's non-flexible encoding, read field by field.
struct Fields(Bytes);

impl Fields {
    fn take(&mut self, n: usize) -> Bytes {
        assert!(self.0.len() >= n, "record ends early");
        self.0.split_to(n)
    }
    fn i8(&mut self) -> i8 {
        self.take(1)[0] as i8
    }
    fn i16(&mut self) -> i16 {
        i16::from_be_bytes(self.take(2).as_ref().try_into().unwrap())
    }
    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.take(4).as_ref().try_into().unwrap())
    }
    fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take(8).as_ref().try_into().unwrap())
    }
    fn string(&mut self) -> Option<String> {
        let n = self.i16();
        (n >= 0).then(|| String::from_utf8(self.take(n as usize).to_vec()).expect("utf-8"))
    }
    fn done(&self) {
        assert!(self.0.is_empty(), "{} bytes after the last field", self.0.len());
    }
}

/// Every non-control record of a partition, from its log start: (key,
/// value, transactional).
fn raw_records(conn: &mut RawConn, topic: &str, partition: i32) -> Vec<(Bytes, Option<Bytes>, bool)> {
    let mut offset = list_offset(conn, topic, partition, -2);
    let end = list_offset(conn, topic, partition, -1);
    let mut out = Vec::new();
    while offset < end {
        let data = fetch(conn, topic, partition, offset, false);
        assert_eq!(data.error_code, 0, "fetch {topic}-{partition} at {offset}");
        let mut buf = data.records.expect("records");
        assert!(!buf.is_empty(), "no progress at {offset}");
        for set in RecordBatchDecoder::decode_all(&mut buf).expect("batches") {
            for r in set.records {
                offset = r.offset + 1;
                if !r.control {
                    out.push((r.key.expect("key"), r.value, r.transactional));
                }
            }
        }
    }
    out
}

/// (log start, log end) of the internal partitions the fixture wrote to.
fn watermarks(conn: &mut RawConn) -> Vec<(i64, i64)> {
    let parts = [
        (OFFSETS, partition_for("legacy-group")),
        (OFFSETS, partition_for("deleted-group")),
        (OFFSETS, partition_for("txn-group")),
        (TXNS, partition_for("legacy-txn")),
        (TXNS, partition_for("expired-txn")),
    ];
    parts.iter().map(|(t, p)| (list_offset(conn, t, *p, -2), list_offset(conn, t, *p, -1))).collect()
}

/// OffsetFetch of `group`: (partition, offset, leader epoch, metadata, error) per asked partition.
fn offsets(conn: &mut RawConn, group: &str, parts: &[(&str, i32)], stable: bool) -> Vec<(i64, i32, String, i16)> {
    let mut req = OffsetFetchRequest::default();
    req.group_id = GroupId(s(group));
    req.require_stable = stable;
    req.topics = Some(
        parts
            .iter()
            .map(|(t, p)| {
                let mut topic = OffsetFetchRequestTopic::default();
                topic.name = TopicName(s(t));
                topic.partition_indexes = vec![*p];
                topic
            })
            .collect(),
    );
    let resp: OffsetFetchResponse = conn.call(ApiKey::OffsetFetch, 7, &req);
    assert_eq!(resp.error_code, 0, "OffsetFetch of {group}");
    resp.topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| {
            (
                p.committed_offset,
                p.committed_leader_epoch,
                p.metadata.as_ref().map(|m| m.to_string()).unwrap_or_default(),
                p.error_code,
            )
        })
        .collect()
}

fn describe_txn(conn: &mut RawConn, id: &str) -> describe_transactions_response::TransactionState {
    let mut req = DescribeTransactionsRequest::default();
    req.transactional_ids = vec![TransactionalId(s(id))];
    let mut r: DescribeTransactionsResponse = conn.call(ApiKey::DescribeTransactions, 0, &req);
    r.transaction_states.remove(0)
}

fn listed_groups(conn: &mut RawConn) -> Vec<String> {
    let resp: ListGroupsResponse = conn.call(ApiKey::ListGroups, 4, &ListGroupsRequest::default());
    resp.groups.iter().map(|g| g.group_id.to_string()).collect()
}

/// What the old data dir held, as clients see it over the wire.
fn assert_state_survived(conn: &mut RawConn, pid: i64) {
    let got = offsets(conn, "legacy-group", &[("orders", 0), ("orders", 1), ("gone", 0)], false);
    assert_eq!(
        got,
        vec![(42, 4, "m42".into(), 0), (7, 4, "".into(), 0), (-1, -1, "".into(), 0)],
        "committed offsets of legacy-group"
    );
    let groups = listed_groups(conn);
    assert!(groups.contains(&"legacy-group".to_string()), "{groups:?}");
    assert!(!groups.contains(&"deleted-group".to_string()), "a deleted group came back: {groups:?}");
    // The open transaction's offset is pending: UNSTABLE_OFFSET_COMMIT.
    assert_eq!(offsets(conn, "txn-group", &[("orders", 0)], true)[0].3, 88);
    let t = describe_txn(conn, "legacy-txn");
    assert_eq!(t.error_code, 0);
    assert_eq!((t.transaction_state.as_str(), t.producer_id.0, t.producer_epoch), ("Ongoing", pid, 2));
    assert_eq!(t.transaction_timeout_ms, 60_000);
    assert_eq!(t.transaction_start_time_ms, COMMIT_MS);
    let mut parts: Vec<(String, Vec<i32>)> =
        t.topics.iter().map(|tp| (tp.topic.to_string(), tp.partitions.clone())).collect();
    parts.sort();
    assert_eq!(parts, vec![(OFFSETS.to_string(), vec![partition_for("txn-group")]), ("orders".to_string(), vec![0])]);
    assert_eq!(describe_txn(conn, "expired-txn").error_code, 105, "TRANSACTIONAL_ID_NOT_FOUND");
}

/// The internal partitions hold Kafka-format records only, with the
/// migrated state in them, decoded here from the schemas.
fn assert_kafka_format(conn: &mut RawConn, pid: i64) {
    for (topic, id) in
        [(OFFSETS, "legacy-group"), (OFFSETS, "deleted-group"), (OFFSETS, "txn-group"), (TXNS, "legacy-txn")]
    {
        for (key, _, _) in raw_records(conn, topic, partition_for(id)) {
            assert_eq!(key[0], 0, "{topic}: a key that is not Kafka's: {:?}", String::from_utf8_lossy(&key));
        }
    }
    let mut seen_group = false;
    let mut seen_offsets = Vec::new();
    for (key, value, _) in raw_records(conn, OFFSETS, partition_for("legacy-group")) {
        let mut k = Fields(key);
        let mut v = Fields(value.expect("live records only"));
        match k.i16() {
            1 => {
                let (group, topic, partition) = (k.string(), k.string(), k.i32());
                k.done();
                assert_eq!(group.as_deref(), Some("legacy-group"));
                assert_eq!(v.i16(), 3, "OffsetCommitValue version");
                let (offset, epoch, metadata, ts) = (v.i64(), v.i32(), v.string(), v.i64());
                v.done();
                assert_eq!((epoch, ts), (4, COMMIT_MS));
                seen_offsets.push((topic.expect("topic"), partition, offset, metadata.expect("metadata")));
            }
            2 => {
                assert_eq!(k.string().as_deref(), Some("legacy-group"));
                k.done();
                assert_eq!(v.i16(), 3, "GroupMetadataValue version");
                assert_eq!(v.string().as_deref(), Some("consumer"));
                assert_eq!(v.i32(), 6, "generation");
                assert_eq!((v.string(), v.string()), (None, None), "an Empty group: no protocol, no leader");
                assert!(v.i64() > COMMIT_MS, "current state timestamp");
                assert_eq!(v.i32(), 0, "no members");
                v.done();
                seen_group = true;
            }
            other => panic!("unexpected key version {other}"),
        }
    }
    seen_offsets.sort();
    assert_eq!(seen_offsets, vec![("orders".into(), 0, 42, "m42".into()), ("orders".into(), 1, 7, "".into())]);
    assert!(seen_group);
    assert!(raw_records(conn, OFFSETS, partition_for("deleted-group")).is_empty(), "nothing left of a deleted group");

    let pending = raw_records(conn, OFFSETS, partition_for("txn-group"));
    assert_eq!(pending.len(), 1);
    let (key, value, transactional) = pending[0].clone();
    assert!(transactional, "the open transaction's offset is still its producer's");
    let mut k = Fields(key);
    assert_eq!(
        (k.i16(), k.string().as_deref(), k.string().as_deref(), k.i32()),
        (1, Some("txn-group"), Some("orders"), 0)
    );
    let mut v = Fields(value.expect("value"));
    assert_eq!((v.i16(), v.i64()), (3, 99));

    let txn = raw_records(conn, TXNS, partition_for("legacy-txn"));
    assert_eq!(txn.len(), 1, "one live record per transactional id");
    let mut k = Fields(txn[0].0.clone());
    assert_eq!((k.i16(), k.string().as_deref()), (0, Some("legacy-txn")));
    k.done();
    let mut v = Fields(txn[0].1.clone().expect("value"));
    assert_eq!(v.i16(), 0, "TransactionLogValue version");
    assert_eq!((v.i64(), v.i16(), v.i32(), v.i8()), (pid, 2, 60_000, 1), "producer, epoch, timeout, Ongoing");
    let mut topics = Vec::new();
    for _ in 0..v.i32() {
        let topic = v.string().expect("topic");
        let ids: Vec<i32> = (0..v.i32()).map(|_| v.i32()).collect();
        topics.push((topic, ids));
    }
    assert_eq!(topics, vec![(OFFSETS.to_string(), vec![partition_for("txn-group")]), ("orders".to_string(), vec![0])]);
    assert_eq!((v.i64(), v.i64()), (COMMIT_MS + 5, COMMIT_MS), "last update, start");
    v.done();
}

#[test]
fn json_data_dir_is_migrated_once_and_keeps_offsets_groups_and_transactions() {
    let (dir, pid) = old_data_dir();
    let mut broker = BrokerProcess::start_in(dir, &[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_state_survived(&mut conn, pid);
    assert_kafka_format(&mut conn, pid);
    let marks = watermarks(&mut conn);

    // A second start finds nothing to migrate: no record is added and the
    // log starts stay where the migration put them.
    drop(conn);
    assert!(broker.terminate().success());
    broker.restart();
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_state_survived(&mut conn, pid);
    assert_eq!(watermarks(&mut conn), marks, "a second start migrated again");

    // The transaction left open by the old broker commits: its record in
    // orders-0 becomes visible and its offset applies.
    let mut req = EndTxnRequest::default();
    req.transactional_id = TransactionalId(s("legacy-txn"));
    req.producer_id = ProducerId(pid);
    req.producer_epoch = 2;
    req.committed = true;
    let r: EndTxnResponse = conn.call(ApiKey::EndTxn, 3, &req);
    assert_eq!(r.error_code, 0, "EndTxn of the migrated transaction");
    assert_eq!(offsets(&mut conn, "txn-group", &[("orders", 0)], true), vec![(99, 4, "txn".into(), 0)]);
    let data = fetch(&mut conn, "orders", 0, 0, true);
    let mut buf = data.records.expect("records");
    let values: Vec<Bytes> = RecordBatchDecoder::decode_all(&mut buf)
        .expect("batches")
        .into_iter()
        .flat_map(|set| set.records)
        .filter(|r| !r.control)
        .filter_map(|r| r.value)
        .collect();
    assert_eq!(values, vec![Bytes::from_static(b"in-txn")]);

    drop(conn);
    broker.kill9();
    broker.restart();
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(describe_txn(&mut conn, "legacy-txn").transaction_state.as_str(), "CompleteCommit");
    assert_eq!(offsets(&mut conn, "txn-group", &[("orders", 0)], true), vec![(99, 4, "txn".into(), 0)]);
    assert_eq!(offsets(&mut conn, "legacy-group", &[("orders", 0)], false)[0].0, 42);
}

#[test]
fn internal_topics_decode_with_kafkas_schemas_in_an_independent_reader() {
    let broker = BrokerProcess::start(&[]);
    let out = run_client(
        client(python()).arg(clients_dir().join("python/internal_topics_reader.py")).arg(broker.bootstrap()),
        Duration::from_secs(120),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("suite passed"));
}
