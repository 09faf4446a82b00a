//! Leader epochs as clients see them: Metadata, ListOffsets, Fetch and
//! OffsetForLeaderEpoch agree on a partition's epoch, check the epoch a
//! request names (FENCED_LEADER_EPOCH below ours, UNKNOWN_LEADER_EPOCH above),
//! and librdkafka, which sends its epochs, consumes and resumes as before.
//!
//! A single node's partition keeps the epoch its log last recorded, so the
//! fixture lays out a data dir whose later batches carry epoch 3 (as a data
//! dir written under a later Raft term would), with the broker's own types.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fjord_broker::config::BrokerConfig;
use fjord_broker::topics::Topics;
use fjord_compat_tests::wire::{self, s, topic_metadata};
use fjord_compat_tests::{free_addr, scrape_metrics, BrokerProcess, RawConn};
use fjord_storage::batch::{build_batch, KeyValue};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const TOPIC: &str = "epochs";
const FENCED: i16 = 74;
const UNKNOWN_EPOCH: i16 = 75;
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

#[test]
fn error_codes_are_kafkas() {
    assert_eq!(ResponseError::FencedLeaderEpoch.code(), FENCED);
    assert_eq!(ResponseError::UnknownLeaderEpoch.code(), UNKNOWN_EPOCH);
}

/// `epochs-0` holds offsets 0-1 written at epoch 0 (timestamp 1000) and 2-4
/// at epoch 3 (timestamp 2000).
fn epoch_3_data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    let topics = Topics::open(&config).expect("open data dir");
    topics.create(TOPIC, 1, BTreeMap::new(), false).expect("create topic");
    let log = topics.log(TOPIC, 0).expect("partition");
    let kv = |n: usize| -> Vec<KeyValue<'static>> { (0..n).map(|_| (None, Some(b"v".as_slice()))).collect() };
    log.append(&build_batch(0, 1_000, &kv(2)), 0, 1_000).expect("epoch 0 batch");
    log.append(&build_batch(0, 2_000, &kv(3)), 3, 2_000).expect("epoch 3 batch");
    log.sync_now().expect("sync");
    dir
}

/// ListOffsets v7 of partition 0: (error, offset, leader epoch).
fn list_offsets(conn: &mut RawConn, timestamp: i64, current_leader_epoch: i32) -> (i16, i64, i32) {
    let mut p = list_offsets_request::ListOffsetsPartition::default();
    p.partition_index = 0;
    p.timestamp = timestamp;
    p.current_leader_epoch = current_leader_epoch;
    let mut t = list_offsets_request::ListOffsetsTopic::default();
    t.name = TopicName(s(TOPIC));
    t.partitions = vec![p];
    let mut req = ListOffsetsRequest::default();
    req.replica_id = BrokerId(-1);
    req.topics = vec![t];
    let resp: ListOffsetsResponse = conn.call(ApiKey::ListOffsets, 7, &req);
    let r = &resp.topics[0].partitions[0];
    (r.error_code, r.offset, r.leader_epoch)
}

/// Fetch v12 of partition 0 from `offset` naming `current_leader_epoch`.
fn fetch(conn: &mut RawConn, offset: i64, current_leader_epoch: i32) -> fetch_response::PartitionData {
    let mut fp = fetch_request::FetchPartition::default();
    fp.partition = 0;
    fp.fetch_offset = offset;
    fp.current_leader_epoch = current_leader_epoch;
    fp.partition_max_bytes = 1 << 20;
    let mut ft = fetch_request::FetchTopic::default();
    ft.topic = TopicName(s(TOPIC));
    ft.partitions = vec![fp];
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_bytes = 1 << 20;
    req.topics = vec![ft];
    let mut r: FetchResponse = conn.call(ApiKey::Fetch, 12, &req);
    r.responses.remove(0).partitions.remove(0)
}

/// OffsetForLeaderEpoch v4 of `topic`-0: (error, leader epoch, end offset).
fn end_offset(conn: &mut RawConn, topic: &str, current_leader_epoch: i32, leader_epoch: i32) -> (i16, i32, i64) {
    let mut p = offset_for_leader_epoch_request::OffsetForLeaderPartition::default();
    p.partition = 0;
    p.current_leader_epoch = current_leader_epoch;
    p.leader_epoch = leader_epoch;
    let mut t = offset_for_leader_epoch_request::OffsetForLeaderTopic::default();
    t.topic = TopicName(s(topic));
    t.partitions = vec![p];
    let mut req = OffsetForLeaderEpochRequest::default();
    req.replica_id = BrokerId(-1);
    req.topics = vec![t];
    let resp: OffsetForLeaderEpochResponse = conn.call(ApiKey::OffsetForLeaderEpoch, 4, &req);
    let r = &resp.topics[0].partitions[0];
    (r.error_code, r.leader_epoch, r.end_offset)
}

/// The partitionLeaderEpoch of every batch in `records`, in order.
fn batch_epochs(records: &Bytes) -> Vec<i32> {
    let mut epochs = Vec::new();
    let mut at = 0;
    while at + 17 <= records.len() {
        let len = i32::from_be_bytes(records[at + 8..at + 12].try_into().unwrap()) as usize;
        epochs.push(i32::from_be_bytes(records[at + 12..at + 16].try_into().unwrap()));
        at += 12 + len;
    }
    epochs
}

#[test]
fn a_partition_at_epoch_3_reports_and_checks_it_everywhere() {
    let broker = BrokerProcess::start_in(epoch_3_data_dir(), &[]);
    let mut conn = RawConn::connect(&broker.bootstrap());

    let md = topic_metadata(&mut conn, TOPIC, false);
    assert_eq!(md.partitions[0].leader_epoch, 3, "Metadata reports the log's latest epoch");

    // ListOffsets: the current epoch for the latest offset, the epoch an
    // offset was written in otherwise (as Kafka).
    assert_eq!(list_offsets(&mut conn, LATEST, -1), (0, 5, 3));
    assert_eq!(list_offsets(&mut conn, LATEST, 3), (0, 5, 3));
    assert_eq!(list_offsets(&mut conn, EARLIEST, 3), (0, 0, 0));
    assert_eq!(list_offsets(&mut conn, 1_500, -1), (0, 2, 3));
    assert_eq!(list_offsets(&mut conn, LATEST, 2).0, FENCED);
    assert_eq!(list_offsets(&mut conn, LATEST, 4).0, UNKNOWN_EPOCH);

    // Fetch (v9+ names the epoch per partition).
    for epoch in [-1, 3] {
        let p = fetch(&mut conn, 0, epoch);
        assert_eq!(p.error_code, 0, "fetch at epoch {epoch}");
        assert_eq!(batch_epochs(p.records.as_ref().expect("records")), vec![0, 3]);
    }
    let fenced = fetch(&mut conn, 0, 2);
    assert_eq!(fenced.error_code, FENCED);
    assert!(fenced.records.as_ref().is_none_or(|r| r.is_empty()), "a fenced fetch returns no records");
    assert_eq!(fetch(&mut conn, 0, 4).error_code, UNKNOWN_EPOCH);

    // OffsetForLeaderEpoch: where each epoch ended.
    assert_eq!(end_offset(&mut conn, TOPIC, -1, 0), (0, 0, 2));
    assert_eq!(end_offset(&mut conn, TOPIC, 3, 1), (0, 0, 2), "an epoch never seen: the largest below it");
    assert_eq!(end_offset(&mut conn, TOPIC, 3, 3), (0, 3, 5));
    assert_eq!(end_offset(&mut conn, TOPIC, 3, 4), (0, -1, -1), "an epoch after ours is unknown");
    assert_eq!(end_offset(&mut conn, TOPIC, 2, 3).0, FENCED);
    assert_eq!(end_offset(&mut conn, TOPIC, 4, 3).0, UNKNOWN_EPOCH);
    assert_eq!(end_offset(&mut conn, "no-such-topic", -1, 0).0, ResponseError::UnknownTopicOrPartition.code());

    // A produce is stamped with the leader's epoch, and the epoch runs on.
    let (code, base) = wire::produce(&mut conn, TOPIC, 0, wire::batch(&[b"new"], 3_000));
    assert_eq!((code, base), (0, 5));
    let p = fetch(&mut conn, 5, 3);
    assert_eq!(batch_epochs(p.records.as_ref().expect("records")), vec![3]);
    assert_eq!(end_offset(&mut conn, TOPIC, 3, 3), (0, 3, 6));
    assert_eq!(list_offsets(&mut conn, LATEST, 3), (0, 6, 3));
}

#[test]
fn a_new_partition_leads_at_epoch_0() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    let created = wire::create_topic(&mut conn, TOPIC, 1, &[]);
    assert_eq!(created.topics[0].error_code, 0);
    assert_eq!(topic_metadata(&mut conn, TOPIC, false).partitions[0].leader_epoch, 0);
    assert_eq!(list_offsets(&mut conn, LATEST, 0), (0, 0, 0), "ListOffsets agrees with Metadata");
    assert_eq!(list_offsets(&mut conn, LATEST, 1).0, UNKNOWN_EPOCH);
    assert_eq!(fetch(&mut conn, 0, 0).error_code, 0);
    assert_eq!(fetch(&mut conn, 0, 1).error_code, UNKNOWN_EPOCH);
    assert_eq!(end_offset(&mut conn, TOPIC, 0, 0), (0, 0, 0));
    assert_eq!(end_offset(&mut conn, TOPIC, 1, 0).0, UNKNOWN_EPOCH);
    // -1 names no epoch: it is never checked.
    assert_eq!(list_offsets(&mut conn, LATEST, -1).0, 0);
    assert_eq!(end_offset(&mut conn, TOPIC, -1, 0), (0, 0, 0));
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "epochs-group")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        // Find the restarted broker quickly.
        .set("reconnect.backoff.max.ms", "200")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
        .expect("librdkafka consumer")
}

/// Polls until a record arrives (or the deadline passes).
fn next_record(c: &BaseConsumer, deadline: Instant) -> (i64, Vec<u8>) {
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => return (m.offset(), m.payload().unwrap_or_default().to_vec()),
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    panic!("no record before the deadline");
}

/// librdkafka sends the epoch Metadata gave it with every Fetch. When the
/// partition comes back at a later epoch (here: the broker restarts on a log
/// that moved from epoch 3 to 5, as after a leader change), its fetches at 3
/// are fenced, it relearns the epoch and validates its position with
/// OffsetForLeaderEpoch. A wrong end offset would make it see a truncation
/// and start over from the beginning instead of reading on.
#[test]
fn librdkafka_follows_an_epoch_change_without_rereading() {
    let metrics = free_addr();
    let mut broker = BrokerProcess::start_in(epoch_3_data_dir(), &["--metrics-listen", &metrics]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let c = consumer(&broker.bootstrap());
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning).expect("partition");
    c.assign(&tpl).expect("assign");
    let offsets: Vec<i64> = (0..5).map(|_| next_record(&c, deadline).0).collect();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4]);

    broker.kill9();
    {
        let config = BrokerConfig { data_dir: broker.data_dir.path().to_path_buf(), ..BrokerConfig::default() };
        let topics = Topics::open(&config).expect("open data dir");
        let log = topics.log(TOPIC, 0).expect("partition");
        log.append(&build_batch(0, 4_000, &[(None, Some(b"at-5".as_slice()))]), 5, 4_000).expect("epoch 5 batch");
        log.sync_now().expect("sync");
    }
    broker.restart();
    assert_eq!(next_record(&c, deadline), (5, b"at-5".to_vec()), "reads on from its position");
    let page = scrape_metrics(&metrics, "api=\"OffsetForLeaderEpoch\"");
    assert!(page.contains("fjord_request_duration_seconds_count{api=\"OffsetForLeaderEpoch\"}"));
}
