//! Protocol behaviour that clients rely on but rarely show directly:
//! incremental fetch sessions, long polls woken by appends, persistence of
//! topics and configs across restarts, retention, and admin edge cases.

use std::time::{Duration, Instant};

use fjord_compat_tests::wire::{
    batch_of as batch, create_topic as create, describe_config, s, set_config, topic_metadata,
};
use fjord_compat_tests::{free_addr, wire, BrokerProcess, RawConn};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::*;

fn produce(conn: &mut RawConn, topic: &str, partition: i32, records: bytes::Bytes) -> i64 {
    let (code, base) = wire::produce(conn, topic, partition, records);
    assert_eq!(code, 0);
    base
}

fn list_offset(conn: &mut RawConn, topic: &str, timestamp: i64) -> i64 {
    wire::list_offset(conn, topic, 0, timestamp)
}

fn fetch_req(
    session_id: i32,
    epoch: i32,
    parts: &[(&str, i32, i64)],
    forget: &[(&str, i32)],
    max_wait: i32,
    min_bytes: i32,
) -> FetchRequest {
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_wait_ms = max_wait;
    req.min_bytes = min_bytes;
    req.max_bytes = 1 << 20;
    req.session_id = session_id;
    req.session_epoch = epoch;
    for (topic, p, off) in parts {
        let mut fp = FetchPartition::default();
        fp.partition = *p;
        fp.fetch_offset = *off;
        fp.partition_max_bytes = 1 << 20;
        match req.topics.iter_mut().find(|t| t.topic.0.as_str() == *topic) {
            Some(t) => t.partitions.push(fp),
            None => {
                let mut ft = FetchTopic::default();
                ft.topic = TopicName(s(topic));
                ft.partitions = vec![fp];
                req.topics.push(ft);
            }
        }
    }
    for (topic, p) in forget {
        let mut f = ForgottenTopic::default();
        f.topic = TopicName(s(topic));
        f.partitions = vec![*p];
        req.forgotten_topics_data.push(f);
    }
    req
}

fn partitions_in(resp: &FetchResponse) -> Vec<(String, i32, usize)> {
    resp.responses
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.topic.0.to_string(), p.partition_index, p.records.as_ref().map_or(0, |r| r.len())))
        })
        .collect()
}

#[test]
fn incremental_fetch_sessions() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(create(&mut conn, "sess", 3, &[]).topics[0].error_code, 0);
    for p in 0..3 {
        produce(&mut conn, "sess", p, batch(2, 1000));
    }
    // Full fetch with epoch 0 opens a session and returns every partition.
    let all = [("sess", 0, 0), ("sess", 1, 0), ("sess", 2, 0)];
    let r: FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch_req(0, 0, &all, &[], 0, 0));
    assert_eq!(r.error_code, 0);
    let id = r.session_id;
    assert!(id > 0, "a session was created");
    assert_eq!(partitions_in(&r).len(), 3);
    // Incremental fetch at the new offsets: nothing changed, nothing listed.
    let moved = [("sess", 0, 2), ("sess", 1, 2), ("sess", 2, 2)];
    let r: FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch_req(id, 1, &moved, &[], 0, 0));
    assert_eq!((r.error_code, r.session_id), (0, id));
    let parts = partitions_in(&r);
    assert!(parts.iter().all(|(_, _, n)| *n == 0), "no data at the end: {parts:?}");
    // New data on partition 1 only: an empty incremental request lists only it.
    produce(&mut conn, "sess", 1, batch(1, 1000));
    let r: FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch_req(id, 2, &[], &[], 0, 0));
    let parts = partitions_in(&r);
    assert_eq!(parts.len(), 1, "{parts:?}");
    assert_eq!((parts[0].1, parts[0].2 > 0), (1, true));
    // Forgetting partition 1 drops it from the session.
    produce(&mut conn, "sess", 1, batch(1, 1000));
    let r: FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch_req(id, 3, &[], &[("sess", 1)], 0, 0));
    assert!(partitions_in(&r).iter().all(|(_, p, _)| *p != 1));
    // A stale epoch and an unknown session get Kafka's errors.
    let r: FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch_req(id, 3, &[], &[], 0, 0));
    assert_eq!(r.error_code, 71, "INVALID_FETCH_SESSION_EPOCH");
    let r: FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch_req(id + 1000, 1, &[], &[], 0, 0));
    assert_eq!(r.error_code, 70, "FETCH_SESSION_ID_NOT_FOUND");
    // Offset out of range is a partition error, with the log bounds.
    let r: FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch_req(0, -1, &[("sess", 0, 99)], &[], 0, 0));
    assert_eq!(r.responses[0].partitions[0].error_code, 1);
    assert_eq!(r.responses[0].partitions[0].high_watermark, 2);
}

#[test]
fn long_poll_wakes_on_append_and_times_out_otherwise() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    create(&mut conn, "poll", 1, &[]);
    // With no data the poll waits out max_wait_ms.
    let t = Instant::now();
    let r: FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch_req(0, -1, &[("poll", 0, 0)], &[], 300, 1));
    assert!(t.elapsed() >= Duration::from_millis(290), "returned after {:?}", t.elapsed());
    assert_eq!(partitions_in(&r)[0].2, 0);
    // A poll with a long max_wait returns as soon as data is appended from
    // another connection, with that data.
    let id = conn.send(ApiKey::Fetch, 12, &fetch_req(0, -1, &[("poll", 0, 0)], &[], 30_000, 1));
    let mut other = RawConn::connect(&broker.bootstrap());
    produce(&mut other, "poll", 0, batch(3, 1000));
    let t = Instant::now();
    let r: FetchResponse = conn.recv(ApiKey::Fetch, 12, id);
    assert!(t.elapsed() < Duration::from_secs(20), "woken by the append, not the timeout");
    assert!(partitions_in(&r)[0].2 > 0);
    // Pipelined requests come back in order even when the first one waits.
    let first = conn.send(ApiKey::Fetch, 12, &fetch_req(0, -1, &[("poll", 0, 3)], &[], 500, 1));
    let second = conn.send(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    let _: FetchResponse = conn.recv(ApiKey::Fetch, 12, first);
    let _: ApiVersionsResponse = conn.recv(ApiKey::ApiVersions, 3, second);
}

#[test]
fn topics_configs_and_records_survive_restart() {
    let mut broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    let created = create(&mut conn, "durable", 2, &[("retention.ms", "123456789")]);
    assert_eq!(created.topics[0].error_code, 0);
    let id = created.topics[0].topic_id;
    for _ in 0..5 {
        produce(&mut conn, "durable", 1, batch(4, 5000));
    }
    drop(conn);
    assert!(broker.terminate().success());
    broker.restart();
    let mut conn = RawConn::connect(&broker.bootstrap());
    let md = topic_metadata(&mut conn, "durable", false);
    assert_eq!(md.error_code, 0);
    assert_eq!(md.topic_id, id, "topic id is stable");
    assert_eq!(md.partitions.len(), 2);
    assert_eq!(list_offset(&mut conn, "durable", -1), 0);
    assert_eq!(wire::list_offset(&mut conn, "durable", 1, -1), 20);
    let (value, source, _) = describe_config(&mut conn, "durable", "retention.ms");
    assert_eq!(value.as_deref(), Some("123456789"));
    assert_eq!(source, 1, "DYNAMIC_TOPIC_CONFIG");
}

#[test]
fn retention_deletes_old_segments_and_moves_log_start() {
    let broker = BrokerProcess::start(&["--log-retention-check-interval-ms", "50"]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    // Data goes in while retention is off, so one retention pass after the
    // change decides everything and later passes find nothing more to do.
    create(&mut conn, "ret", 1, &[("segment.bytes", "2048"), ("retention.ms", "-1")]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    for _ in 0..30 {
        produce(&mut conn, "ret", 0, batch(5, now - 86_400_000));
    }
    produce(&mut conn, "ret", 0, batch(5, now));
    assert_eq!(list_offset(&mut conn, "ret", -1), 155);
    assert_eq!(list_offset(&mut conn, "ret", -2), 0);
    assert_eq!(set_config(&mut conn, 2, "ret", "retention.ms", "60000"), 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut start = 0;
    while start == 0 && Instant::now() < deadline {
        start = list_offset(&mut conn, "ret", -2);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(start > 0, "retention advanced the log start");
    // Only closed, expired segments go: the fresh records stay readable.
    assert!(start <= 150, "the active segment with fresh data stays (start {start})");
    assert_eq!(list_offset(&mut conn, "ret", now - 86_400_001), start);
    assert_eq!(list_offset(&mut conn, "ret", now), 150);
    assert_eq!(list_offset(&mut conn, "ret", -1), 155);
    assert_eq!(list_offset(&mut conn, "ret", -2), start, "a later pass deletes nothing more");
}

#[test]
fn admin_edge_cases() {
    let broker = BrokerProcess::start(&["--auto-create-topics", "false"]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    // Replication factor beyond the cluster, bad names, bad configs.
    let mut t = create_topics_request::CreatableTopic::default();
    t.name = TopicName(s("rf3"));
    t.num_partitions = 1;
    t.replication_factor = 3;
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    let r: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, 7, &req);
    assert_eq!(r.topics[0].error_code, 38, "INVALID_REPLICATION_FACTOR");
    assert_eq!(create(&mut conn, "bad/name", 1, &[]).topics[0].error_code, 17, "INVALID_TOPIC_EXCEPTION");
    assert_eq!(create(&mut conn, "badcfg", 1, &[("retention.ms", "soon")]).topics[0].error_code, 40, "INVALID_CONFIG");
    assert_eq!(create(&mut conn, "zero", 0, &[]).topics[0].error_code, 37, "INVALID_PARTITIONS");
    // validate_only creates nothing.
    let mut t = create_topics_request::CreatableTopic::default();
    t.name = TopicName(s("dry"));
    t.num_partitions = 2;
    t.replication_factor = 1;
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.validate_only = true;
    let r: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, 7, &req);
    assert_eq!(r.topics[0].error_code, 0);
    // With auto-creation off, Metadata for an unknown topic is an error.
    assert_eq!(topic_metadata(&mut conn, "dry", true).error_code, 3);
    // CreatePartitions validate_only leaves the count alone.
    create(&mut conn, "grow", 1, &[]);
    let mut ct = create_partitions_request::CreatePartitionsTopic::default();
    ct.name = TopicName(s("grow"));
    ct.count = 4;
    let mut creq = CreatePartitionsRequest::default();
    creq.topics = vec![ct];
    creq.validate_only = true;
    let cr: CreatePartitionsResponse = conn.call(ApiKey::CreatePartitions, 3, &creq);
    assert_eq!(cr.results[0].error_code, 0);
    let md = topic_metadata(&mut conn, "grow", false);
    assert_eq!(md.partitions.len(), 1);
    // DeleteTopics by id (v6), then the id is unknown.
    let id = md.topic_id;
    let mut dreq = DeleteTopicsRequest::default();
    let mut st = delete_topics_request::DeleteTopicState::default();
    st.topic_id = id;
    dreq.topics = vec![st.clone()];
    let dr: DeleteTopicsResponse = conn.call(ApiKey::DeleteTopics, 6, &dreq);
    assert_eq!(dr.responses[0].error_code, 0);
    assert_eq!(dr.responses[0].name.as_ref().map(|n| n.0.to_string()), Some("grow".to_string()));
    let dr: DeleteTopicsResponse = conn.call(ApiKey::DeleteTopics, 6, &dreq);
    assert_eq!(dr.responses[0].error_code, 100, "UNKNOWN_TOPIC_ID");
    // Cluster-wide dynamic default (broker resource ""): new topics pick it
    // up (set on the broker by its id, it would be DYNAMIC_BROKER_CONFIG, 2).
    assert_eq!(set_config(&mut conn, 4, "", "log.retention.ms", "7777"), 0);
    create(&mut conn, "inherits", 1, &[]);
    let (value, source, synonyms) = describe_config(&mut conn, "inherits", "retention.ms");
    assert_eq!(value.as_deref(), Some("7777"));
    assert_eq!(source, 3, "DYNAMIC_DEFAULT_BROKER_CONFIG");
    assert_eq!(synonyms[0], "log.retention.ms");
    // DescribeCluster names this broker.
    let mut req = DescribeClusterRequest::default();
    req.endpoint_type = 1;
    let dc: DescribeClusterResponse = conn.call(ApiKey::DescribeCluster, 1, &req);
    assert_eq!(dc.error_code, 0);
    assert_eq!(dc.brokers.len(), 1);
    assert_eq!(dc.brokers[0].port as u16, broker.port);
}

#[test]
fn committed_offsets_survive_restart_and_bad_commits_are_fenced() {
    use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
    use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    let mut broker = BrokerProcess::start(&["--auto-create-topics", "false"]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    create(&mut conn, "committed", 2, &[]);
    let commit = |conn: &mut RawConn, generation: i32, member: &str, offset: i64| -> i16 {
        let mut p = OffsetCommitRequestPartition::default();
        p.partition_index = 1;
        p.committed_offset = offset;
        p.committed_metadata = Some(s("meta"));
        let mut t = OffsetCommitRequestTopic::default();
        t.name = TopicName(s("committed"));
        t.partitions = vec![p];
        let mut req = OffsetCommitRequest::default();
        req.group_id = GroupId(s("standalone"));
        req.generation_id_or_member_epoch = generation;
        req.member_id = s(member);
        req.topics = vec![t];
        let resp: OffsetCommitResponse = conn.call(ApiKey::OffsetCommit, 8, &req);
        resp.topics[0].partitions[0].error_code
    };
    // A standalone consumer (generation -1, no member) may commit.
    assert_eq!(commit(&mut conn, -1, "", 42), 0);
    // A made-up member or generation of a group with no members is fenced.
    assert_eq!(commit(&mut conn, 3, "ghost", 43), 25, "UNKNOWN_MEMBER_ID");
    let fetch = |conn: &mut RawConn| -> (i64, Option<String>) {
        let mut t = OffsetFetchRequestTopic::default();
        t.name = TopicName(s("committed"));
        t.partition_indexes = vec![0, 1];
        let mut req = OffsetFetchRequest::default();
        req.group_id = GroupId(s("standalone"));
        req.topics = Some(vec![t]);
        let resp: OffsetFetchResponse = conn.call(ApiKey::OffsetFetch, 7, &req);
        let parts = &resp.topics[0].partitions;
        assert_eq!(parts[0].committed_offset, -1, "nothing committed for partition 0");
        (parts[1].committed_offset, parts[1].metadata.as_ref().map(|m| m.to_string()))
    };
    assert_eq!(fetch(&mut conn), (42, Some("meta".to_string())));
    drop(conn);
    broker.kill9();
    broker.restart();
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(fetch(&mut conn), (42, Some("meta".to_string())), "the commit survived a SIGKILL");
    // The internal topic is listed as internal and cannot be written by clients.
    let md = topic_metadata(&mut conn, "__consumer_offsets", false);
    assert!(md.is_internal);
    let (code, _) = wire::produce(&mut conn, "__consumer_offsets", 0, batch(1, 1));
    assert_eq!(code, 17, "INVALID_TOPIC_EXCEPTION");
}

#[test]
fn idempotent_producer_dedups_retries_across_restart() {
    let idempotent = || {
        let mut r = InitProducerIdRequest::default();
        r.transactional_id = None;
        r.transaction_timeout_ms = 60_000;
        r
    };
    let mut broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    create(&mut conn, "idem", 1, &[]);
    let init: InitProducerIdResponse = conn.call(ApiKey::InitProducerId, 4, &idempotent());
    assert_eq!(init.error_code, 0);
    let pid = init.producer_id.0;
    let again: InitProducerIdResponse = conn.call(ApiKey::InitProducerId, 4, &idempotent());
    assert_ne!(again.producer_id.0, pid, "every producer gets its own id");
    let b = |seq: i32, epoch: i16| wire::idempotent_batch(&[b"a", b"b"], 1000, pid, epoch, seq);
    assert_eq!(wire::produce(&mut conn, "idem", 0, b(0, 0)), (0, 0));
    assert_eq!(wire::produce(&mut conn, "idem", 0, b(2, 0)), (0, 2));
    // A retry of an acknowledged batch gets its original offset and no copy.
    assert_eq!(wire::produce(&mut conn, "idem", 0, b(0, 0)), (0, 0));
    assert_eq!(list_offset(&mut conn, "idem", -1), 4);
    // A gap in sequences: OUT_OF_ORDER_SEQUENCE_NUMBER (45).
    assert_eq!(wire::produce(&mut conn, "idem", 0, b(9, 0)).0, 45);
    // A producer id with no state must start at 0: UNKNOWN_PRODUCER_ID (59).
    assert_eq!(wire::produce(&mut conn, "idem", 0, wire::idempotent_batch(&[b"x"], 1, pid + 100, 0, 5)).0, 59);
    drop(conn);
    broker.kill9();
    broker.restart();
    let mut conn = RawConn::connect(&broker.bootstrap());
    // State is rebuilt from the log: the retry is still recognised.
    assert_eq!(wire::produce(&mut conn, "idem", 0, b(2, 0)), (0, 2));
    assert_eq!(wire::produce(&mut conn, "idem", 0, b(4, 0)), (0, 4));
    // A newer epoch restarts at 0 and fences the old one: INVALID_PRODUCER_EPOCH (47).
    assert_eq!(wire::produce(&mut conn, "idem", 0, b(0, 1)), (0, 6));
    assert_eq!(wire::produce(&mut conn, "idem", 0, b(6, 0)).0, 47);
    assert_eq!(list_offset(&mut conn, "idem", -1), 8);
    // Producer ids are never reused after a restart.
    let later: InitProducerIdResponse = conn.call(ApiKey::InitProducerId, 4, &idempotent());
    assert!(later.producer_id.0 > again.producer_id.0);
}

#[test]
fn acks_zero_gets_no_response_and_acks_one_does() {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    create(&mut conn, "acks", 1, &[]);
    let request = |acks: i16| {
        let mut pd = PartitionProduceData::default();
        pd.records = Some(batch(3, 1000));
        let mut td = TopicProduceData::default();
        td.name = TopicName(s("acks"));
        td.partition_data = vec![pd];
        let mut req = ProduceRequest::default();
        req.acks = acks;
        req.timeout_ms = 5000;
        req.topic_data = vec![td];
        req
    };
    // acks=0: nothing comes back, so the next response on the wire must be
    // the ApiVersions answer sent after it.
    conn.send(ApiKey::Produce, 9, &request(0));
    let id = conn.send(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    let v: ApiVersionsResponse = conn.recv(ApiKey::ApiVersions, 3, id);
    assert_eq!(v.error_code, 0);
    assert_eq!(list_offset(&mut conn, "acks", -1), 3, "the acks=0 records were written");
    let r: ProduceResponse = conn.call(ApiKey::Produce, 9, &request(1));
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    assert_eq!(r.responses[0].partition_responses[0].base_offset, 3);
    // An acks value Kafka does not know: INVALID_REQUIRED_ACKS (21).
    let r: ProduceResponse = conn.call(ApiKey::Produce, 9, &request(2));
    assert_eq!(r.responses[0].partition_responses[0].error_code, 21);
    assert_eq!(list_offset(&mut conn, "acks", -1), 6);
}

#[test]
fn log_append_time_and_fetch_size_limits() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    create(&mut conn, "lat", 2, &[("message.timestamp.type", "LogAppendTime")]);
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64;
    let mut pd = kafka_protocol::messages::produce_request::PartitionProduceData::default();
    pd.records = Some(batch(2, 5));
    let mut td = kafka_protocol::messages::produce_request::TopicProduceData::default();
    td.name = TopicName(s("lat"));
    td.partition_data = vec![pd];
    let mut req = ProduceRequest::default();
    req.acks = 1;
    req.topic_data = vec![td];
    let r: ProduceResponse = conn.call(ApiKey::Produce, 9, &req);
    let append_time = r.responses[0].partition_responses[0].log_append_time_ms;
    assert!(append_time >= before, "the broker's clock, not the producer's timestamp 5");
    let f: FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch_req(0, -1, &[("lat", 0, 0)], &[], 0, 0));
    let mut records = f.responses[0].partitions[0].records.clone().expect("records");
    let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut records).expect("valid batch, CRC recomputed");
    assert!(set.records.iter().all(|r| r.timestamp == append_time));

    // Size limits: fill both partitions, then fetch with small limits.
    for p in 0..2 {
        for _ in 0..10 {
            produce(&mut conn, "lat", p, batch(20, 1));
        }
    }
    let one_batch = batch(20, 1).len();
    let mut small = fetch_req(0, -1, &[("lat", 0, 2), ("lat", 1, 0)], &[], 0, 0);
    small.max_bytes = (one_batch * 3) as i32;
    for t in &mut small.topics {
        for p in &mut t.partitions {
            p.partition_max_bytes = (one_batch * 2) as i32;
        }
    }
    let f: FetchResponse = conn.call(ApiKey::Fetch, 12, &small);
    let sizes: Vec<usize> = partitions_in(&f).iter().map(|(_, _, n)| *n).collect();
    assert!(sizes[0] > 0 && sizes[0] <= one_batch * 2, "partition limit: {sizes:?}");
    assert!(sizes.iter().sum::<usize>() <= one_batch * 3, "response limit: {sizes:?}");
    // A single batch larger than every limit still comes back whole (KIP-74).
    let mut tiny = fetch_req(0, -1, &[("lat", 1, 0)], &[], 0, 0);
    tiny.max_bytes = 10;
    tiny.topics[0].partitions[0].partition_max_bytes = 10;
    let f: FetchResponse = conn.call(ApiKey::Fetch, 12, &tiny);
    assert_eq!(partitions_in(&f)[0].2, one_batch);
}

#[test]
fn compacted_topic_keeps_latest_value_per_key() {
    let broker = BrokerProcess::start(&["--log-cleaner-backoff-ms", "50"]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    let created = create(&mut conn, "table", 1, &[("cleanup.policy", "compact"), ("segment.bytes", "1024")]);
    assert_eq!(created.topics[0].error_code, 0);
    // Keyless records are refused on a compacted topic: INVALID_RECORD (87).
    let mut keyless = Vec::new();
    {
        use kafka_protocol::records::*;
        let rec = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 1,
            key: None,
            value: Some(bytes::Bytes::from_static(b"v")),
            headers: Default::default(),
        };
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &[rec],
            &RecordEncodeOptions { version: 2, compression: Compression::None },
        )
        .expect("encode");
        keyless.extend_from_slice(&buf);
    }
    assert_eq!(wire::produce(&mut conn, "table", 0, bytes::Bytes::from(keyless)).0, 87);
    // Each batch carries keys k0.. with the round in the value; three keys, many rounds.
    for round in 0..40 {
        let values: Vec<Vec<u8>> = (0..3).map(|k| format!("round-{round}-key-{k}").into_bytes()).collect();
        let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
        produce(&mut conn, "table", 0, wire::batch(&refs, 1000));
    }
    let end = list_offset(&mut conn, "table", -1);
    assert_eq!(end, 120);
    // Wait for the cleaner: the closed segments shrink to about one record per key.
    // A fetch returns data from one segment at a time: follow the offsets.
    let read_all = |conn: &mut RawConn| -> Vec<(i64, String)> {
        let mut out: Vec<(i64, String)> = Vec::new();
        let mut next = 0;
        while next < 120 {
            let f: FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch_req(0, -1, &[("table", 0, next)], &[], 0, 0));
            let mut records = f.responses[0].partitions[0].records.clone().unwrap_or_default();
            assert!(!records.is_empty(), "data up to the end at {next}");
            for set in kafka_protocol::records::RecordBatchDecoder::decode_all(&mut records).expect("valid batches") {
                for r in set.records {
                    if r.offset >= next {
                        out.push((r.offset, String::from_utf8_lossy(&r.value.unwrap_or_default()).to_string()));
                    }
                    next = next.max(r.offset + 1);
                }
            }
        }
        out
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = read_all(&mut conn);
    while got.len() >= 120 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        got = read_all(&mut conn);
    }
    assert!(got.len() < 120, "the cleaner removed superseded records");
    // The latest value of each key is still there at its offset, and offsets
    // only ever increase.
    for k in 0..3 {
        let want = (117 + k as i64, format!("round-39-key-{k}"));
        assert!(got.contains(&want), "latest value of key {k} kept");
    }
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(list_offset(&mut conn, "table", -1), 120);
}

fn scrape_metrics(addr: &str) -> String {
    fjord_compat_tests::scrape_metrics(addr, "fjord_produced_bytes_total")
}

/// The Prometheus endpoint serves the broker's counters and per-API
/// request latencies.
#[test]
fn prometheus_metrics_endpoint() {
    let addr = free_addr();
    let broker = BrokerProcess::start(&["--metrics-listen", &addr]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    create(&mut conn, "metered", 1, &[]);
    produce(&mut conn, "metered", 0, batch(3, 1));
    let body = scrape_metrics(&addr);
    assert!(body.contains("fjord_request_duration_seconds"), "{body}");
    assert!(body.contains("api=\"Produce\""), "{body}");
    assert!(body.contains("fjord_log_fsyncs_total"), "{body}");
}

/// Large fetched ranges leave the broker by `sendfile` from the segment
/// file, small ones are copied into the response; either way the bytes,
/// the framing of the response and the connection after it are intact.
#[test]
fn fetch_sends_large_ranges_from_the_file_byte_exact() {
    let metrics = free_addr();
    let broker = BrokerProcess::start(&["--metrics-listen", &metrics]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    create(&mut conn, "zc", 3, &[]);
    let values = |n: usize, size: usize, tag: u8| -> Vec<Vec<u8>> {
        (0..n).map(|i| (0..size).map(|j| tag.wrapping_add((i * 31 + j) as u8)).collect()).collect()
    };
    let as_batch = |v: &[Vec<u8>]| wire::batch(&v.iter().map(|x| x.as_slice()).collect::<Vec<_>>(), 7);
    // Partition 0: one 300 KB batch; 1: a small one; 2: two 40 KB batches.
    let sent: Vec<Vec<bytes::Bytes>> = vec![
        vec![as_batch(&values(300, 1000, 1))],
        vec![as_batch(&values(3, 10, 2))],
        vec![as_batch(&values(40, 1000, 3)), as_batch(&values(40, 1000, 4))],
    ];
    for (p, batches) in sent.iter().enumerate() {
        for b in batches {
            produce(&mut conn, "zc", p as i32, b.clone());
        }
    }
    let parts = [("zc", 0, 0), ("zc", 1, 0), ("zc", 2, 0)];
    // v4 encodes records with an int32 length, v12 with a varint.
    for version in [4, 12, 4] {
        let f: FetchResponse = conn.call(ApiKey::Fetch, version, &fetch_req(0, -1, &parts, &[], 0, 0));
        assert_eq!(f.responses.len(), 1);
        for (p, batches) in sent.iter().enumerate() {
            let got = f.responses[0].partitions[p].records.clone().expect("records");
            let mut offset = 0i64;
            let mut at = 0usize;
            for b in batches {
                // Stored as sent, but for the base offset and leader epoch
                // the log assigned (the length in between is the producer's).
                assert_eq!(&got[at..at + 8], &offset.to_be_bytes(), "v{version} partition {p}");
                assert_eq!(&got[at + 8..at + 12], &b[8..12], "v{version} partition {p}");
                assert_eq!(&got[at + 12..at + 16], &0i32.to_be_bytes(), "v{version} partition {p}");
                // (assert!, not assert_eq!: a mismatch would print 300 KB)
                assert!(got[at + 16..at + b.len()] == b[16..], "v{version} partition {p}: bytes differ");
                let mut one = got.slice(at..at + b.len());
                let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut one).expect("CRC holds");
                offset += set.records.len() as i64;
                at += b.len();
            }
            assert_eq!(at, got.len(), "v{version} partition {p}: nothing more");
        }
    }
    let body = scrape_metrics(&metrics);
    let sendfile_bytes: u64 = body
        .lines()
        .find(|l| l.starts_with("fjord_fetch_sendfile_bytes_total"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0);
    // Partitions 0 and 2 of three fetches went out by sendfile, partition 1 not.
    let large: u64 = [&sent[0], &sent[2]].iter().flat_map(|v| v.iter()).map(|b| b.len() as u64).sum();
    assert_eq!(sendfile_bytes, 3 * large, "{body}");
}

/// Reads that copy small ranges out of the mapped segments fault their
/// pages into the broker's resident set; the broker unmaps them again once
/// they pass `mapped_resident_max_bytes`, so RSS does not grow with data.
#[test]
fn resident_set_stays_bounded_while_reading_everything() {
    const MIB: u64 = 1024;
    let broker = BrokerProcess::start(&["--fsync", "never", "--mapped-resident-max-bytes", "4194304"]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    create(&mut conn, "rss", 1, &[]);
    let start = broker.status_kb("RssFile").expect("RssFile of the broker");
    // 48 MiB in 6 KiB batches: each below the size that goes out by sendfile.
    let value = vec![7u8; 1000];
    let values: Vec<&[u8]> = (0..6).map(|_| value.as_slice()).collect();
    let one = wire::batch(&values, 1);
    let batches = 48 * 1024 * 1024 / one.len();
    for _ in 0..batches {
        produce(&mut conn, "rss", 0, one.clone());
    }
    let mut offset = 0i64;
    let mut req = fetch_req(0, -1, &[("rss", 0, 0)], &[], 0, 0);
    req.topics[0].partitions[0].partition_max_bytes = (one.len() * 2) as i32;
    while offset < (batches * 6) as i64 {
        req.topics[0].partitions[0].fetch_offset = offset;
        let f: FetchResponse = conn.call(ApiKey::Fetch, 12, &req);
        let n = f.responses[0].partitions[0].records.as_ref().map_or(0, |r| r.len());
        assert!(n > 0 && n.is_multiple_of(one.len()), "whole batches at {offset}: {n} bytes");
        offset += (n / one.len() * 6) as i64;
    }
    // Every page of the 48 MiB was copied out of the mapping; the broker
    // must have let go of all but a few MiB of them.
    wire::wait_until_bounded(|| broker.status_kb("RssFile"), start + 16 * MIB);
}

/// Which pages of `path` are in the page cache: `mincore` over a mapping of our own.
fn cached_pages(path: &std::path::Path) -> Vec<bool> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).expect("segment file");
    let len = file.metadata().unwrap().len() as usize;
    // SAFETY: a read-only shared mapping of a file we keep open, unmapped below; mincore writes
    // one byte per page into a vector of that many.
    unsafe {
        let map = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0);
        assert_ne!(map, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        let mut vec = vec![0u8; len.div_ceil(4096)];
        let rc = libc::mincore(map, len, vec.as_mut_ptr());
        let err = std::io::Error::last_os_error();
        libc::munmap(map, len);
        assert_eq!(rc, 0, "mincore: {err}");
        vec.into_iter().map(|b| b & 1 == 1).collect()
    }
}

/// acks=all data more than `log_page_cache_bytes` behind a partition's end leaves the page
/// cache once synced, and the broker reads it back from disk unchanged; with -1 every page
/// stays cached.
#[test]
fn synced_data_behind_the_page_cache_window_leaves_the_cache_and_reads_back() {
    const WINDOW: usize = 1 << 20;
    for (setting, drops) in [(WINDOW.to_string(), true), ("-1".to_string(), false)] {
        let broker = BrokerProcess::start(&["--log-page-cache-bytes", &setting]);
        let mut conn = RawConn::connect(&broker.bootstrap());
        create(&mut conn, "paged", 1, &[]);
        // 12 MiB in 64 KiB records, each record's bytes its own number.
        let count = 192;
        for i in 0..count {
            let value = vec![i as u8; 64 * 1024];
            assert_eq!(produce(&mut conn, "paged", 0, wire::batch(&[&value], i)), i);
        }
        let segment = broker.data_dir.path().join("paged-0").join(format!("{:020}.log", 0));
        let pages = cached_pages(&segment);
        // The segment's bytes: its file is preallocated, so its length says nothing; every
        // batch has the same size.
        assert_eq!(list_offset(&mut conn, "paged", -1), count);
        let end = count as usize * wire::batch(&[&[0u8; 64 * 1024]], 0).len();
        let used = end.div_ceil(4096);
        // Dropped in steps of at least 4 MiB: everything up to 5 MiB behind the end is out.
        let dropped_below = end.saturating_sub(WINDOW + (4 << 20)) / 4096;
        let window_from = (end - WINDOW) / 4096 + 1;
        let cached = |r: std::ops::Range<usize>| pages[r].iter().filter(|c| **c).count();
        if drops {
            assert_eq!(cached(0..dropped_below), 0, "of {dropped_below} pages behind the window");
        } else {
            assert_eq!(cached(0..dropped_below), dropped_below, "-1 keeps every page");
        }
        assert_eq!(cached(window_from..used), used - window_from, "the window's pages are cached");
        // Everything reads back, the dropped part from disk.
        let mut next = 0;
        while next < count {
            let f: FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch_req(0, -1, &[("paged", 0, next)], &[], 0, 0));
            let mut records = f.responses[0].partitions[0].records.clone().unwrap_or_default();
            assert!(!records.is_empty(), "data at {next}");
            for set in kafka_protocol::records::RecordBatchDecoder::decode_all(&mut records).expect("valid batches") {
                for r in set.records {
                    if r.offset < next {
                        continue;
                    }
                    let value = r.value.unwrap_or_default();
                    assert_eq!(r.offset, next);
                    assert!(value.len() == 64 * 1024 && value.iter().all(|b| *b == next as u8), "record {next}");
                    next += 1;
                }
            }
        }
    }
}

/// A finished response goes out even while the request pipelined after it
/// is still waiting. The first request is an acks=all Produce, which waits
/// for its fsync (long enough for the second to be queued behind it); the
/// second a Fetch long poll that only an append can end, made only once the
/// Produce's response has arrived. Were that response held until the poll
/// ended, this would wait out the poll's 30 s (past the connection's 20 s
/// read timeout).
#[test]
fn a_finished_response_is_not_held_behind_a_long_poll() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    create(&mut conn, "held", 1, &[]);
    create(&mut conn, "written", 1, &[]);
    // Both requests on the wire at once (no Nagle delay for the second).
    conn.stream.set_nodelay(true).expect("nodelay");
    let first = conn.send(ApiKey::Produce, 9, &wire::produce_request("written", 0, batch(1, 1)));
    let poll = conn.send(ApiKey::Fetch, 12, &fetch_req(0, -1, &[("held", 0, 0)], &[], 30_000, 1));
    let produced: ProduceResponse = conn.recv(ApiKey::Produce, 9, first);
    assert_eq!(produced.responses[0].partition_responses[0].error_code, 0);
    let mut other = RawConn::connect(&broker.bootstrap());
    produce(&mut other, "held", 0, batch(1, 1));
    let f: FetchResponse = conn.recv(ApiKey::Fetch, 12, poll);
    assert!(partitions_in(&f)[0].2 > 0, "the append ended the poll");
}

#[test]
fn silent_producers_expire() {
    let broker =
        BrokerProcess::start(&["--producer-id-expiration-ms", "60000", "--log-retention-check-interval-ms", "50"]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    create(&mut conn, "expiring", 1, &[]);
    let mut init = InitProducerIdRequest::default();
    init.transactional_id = None;
    let pid = conn.call::<_, InitProducerIdResponse>(ApiKey::InitProducerId, 4, &init).producer_id.0;
    // Batches stamped in 1970 make the producer look silent for decades.
    let mut seq = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, _) = wire::produce(&mut conn, "expiring", 0, wire::idempotent_batch(&[b"a"], 1000, pid, 0, seq));
        if code == 59 {
            break; // UNKNOWN_PRODUCER_ID: its state was dropped
        }
        assert_eq!(code, 0);
        seq += 1;
        assert!(Instant::now() < deadline, "producer state never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(seq >= 1, "the first batch was accepted before expiry");
}

/// Produce requests pipelined on one connection land in the order they
/// were sent, whatever their acks (librdkafka keeps many in flight).
#[test]
fn pipelined_produces_keep_their_order() {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    create(&mut conn, "ordered", 1, &[]);
    let mut ids = Vec::new();
    for i in 0..300 {
        let value = format!("{i:05}");
        let mut pd = PartitionProduceData::default();
        pd.records = Some(wire::batch(&[value.as_bytes()], 1));
        let mut td = TopicProduceData::default();
        td.name = TopicName(s("ordered"));
        td.partition_data = vec![pd];
        let mut req = ProduceRequest::default();
        // A mix: fsync'd acks=all requests wait while acks=1 ones do not.
        req.acks = if i % 3 == 0 { -1 } else { 1 };
        req.timeout_ms = 5000;
        req.topic_data = vec![td];
        ids.push(conn.send(ApiKey::Produce, 9, &req));
    }
    for (i, id) in ids.into_iter().enumerate() {
        let r: ProduceResponse = conn.recv(ApiKey::Produce, 9, id);
        let p = &r.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (0, i as i64), "request {i} got offset {}", p.base_offset);
    }
    let mut values = Vec::new();
    let mut next = 0;
    while next < 300 {
        let f: FetchResponse = conn.call(ApiKey::Fetch, 12, &fetch_req(0, -1, &[("ordered", 0, next)], &[], 0, 0));
        let mut records = f.responses[0].partitions[0].records.clone().unwrap_or_default();
        for set in kafka_protocol::records::RecordBatchDecoder::decode_all(&mut records).expect("batches") {
            for r in set.records {
                if r.offset >= next {
                    values.push(String::from_utf8_lossy(&r.value.unwrap_or_default()).to_string());
                    next = r.offset + 1;
                }
            }
        }
    }
    let want: Vec<String> = (0..300).map(|i| format!("{i:05}")).collect();
    assert_eq!(values, want);
}

/// ListOffsets at a timestamp (and -3, the max timestamp) finds the record
/// inside a batch, whatever codec the batch is in: the broker decodes the
/// stored batch (storage's record decoder) to pick the first record at or
/// after the timestamp, not the batch's first.
#[test]
fn list_offsets_by_timestamp_looks_inside_compressed_batches() {
    use fjord_compat_tests::wire::{keyed_batch, list_offset_at};
    use kafka_protocol::records::Compression;
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(create(&mut conn, "times", 1, &[]).topics[0].error_code, 0);
    let codecs = [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];
    // Timestamps out of order inside each batch: the largest is the second record.
    let deltas = [0, 30, 10, 20];
    let base_ts = |i: usize| 1_700_000_000_000 + 1_000 * i as i64;
    for (i, compression) in codecs.iter().enumerate() {
        let value = |j: usize| vec![b'a' + j as u8; 300];
        let records: Vec<_> = deltas.iter().enumerate().map(|(j, d)| (None, value(j), base_ts(i) + d)).collect();
        assert_eq!(
            produce(&mut conn, "times", 0, keyed_batch(&records, *compression)),
            4 * i as i64,
            "{compression:?}"
        );
    }
    let lookup = |conn: &mut RawConn, timestamp: i64| list_offset_at(conn, "times", 0, timestamp);
    for (i, compression) in codecs.iter().enumerate() {
        let first = 4 * i as i64;
        // The first record at or after +15 is the second (at +30), not the fourth (+20).
        assert_eq!(lookup(&mut conn, base_ts(i) + 15), (first + 1, base_ts(i) + 30), "{compression:?}");
        assert_eq!(lookup(&mut conn, base_ts(i) + 25), (first + 1, base_ts(i) + 30), "{compression:?}");
        assert_eq!(lookup(&mut conn, base_ts(i)), (first, base_ts(i)), "{compression:?}");
    }
    // -3: the record holding the largest timestamp, inside the last (zstd) batch.
    assert_eq!(lookup(&mut conn, -3), (17, base_ts(4) + 30));
    assert_eq!(lookup(&mut conn, base_ts(4) + 31), (-1, -1), "nothing after the last timestamp");
}

/// A client that still knows a deleted topic asks for it with
/// auto-creation allowed (librdkafka refreshes its known topics when a
/// connection closes); that must not bring the topic straight back, while an
/// explicit CreateTopics may, and auto-creation works again later.
#[test]
fn a_deleted_topic_is_not_auto_created_straight_back() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(topic_metadata(&mut conn, "gone", true).error_code, 0, "auto-created");
    let delete = |conn: &mut RawConn, name: &str| {
        let mut req = DeleteTopicsRequest::default();
        req.topic_names = vec![TopicName(s(name))];
        let r: DeleteTopicsResponse = conn.call(ApiKey::DeleteTopics, 4, &req);
        r.responses[0].error_code
    };
    assert_eq!(delete(&mut conn, "gone"), 0);
    let deleted_at = Instant::now();
    let md = topic_metadata(&mut conn, "gone", true);
    assert_eq!(md.error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION, not recreated");
    let mut listing = MetadataRequest::default();
    listing.topics = None;
    let all: MetadataResponse = conn.call(ApiKey::Metadata, 12, &listing);
    assert!(all.topics.iter().all(|t| t.name.as_ref().map(|n| n.0.as_str()) != Some("gone")), "still deleted");
    // Explicit creation is not held back.
    assert_eq!(delete(&mut conn, "gone"), 3, "already gone");
    assert_eq!(create(&mut conn, "again", 1, &[]).topics[0].error_code, 0);
    assert_eq!(delete(&mut conn, "again"), 0);
    assert_eq!(create(&mut conn, "again", 2, &[]).topics[0].error_code, 0);
    assert_eq!(topic_metadata(&mut conn, "again", false).partitions.len(), 2);
    // Once the window has passed, asking creates it again.
    fjord_compat_tests::wait_until(Duration::from_secs(30), "auto-creation to come back", || {
        topic_metadata(&mut conn, "gone", true).error_code == 0
    });
    assert!(deleted_at.elapsed() >= Duration::from_secs(4), "auto-created again after {:?}", deleted_at.elapsed());
}

/// ElectLeaders on a single node: each partition's only replica leads it, so no election of
/// either type is needed; an unknown partition says so; with no partitions named nothing needs
/// one and nothing is listed.
#[test]
fn elect_leaders_on_one_node_is_never_needed() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(create(&mut conn, "one-node", 2, &[]).topics[0].error_code, 0);
    for (election_type, version) in [(0i8, 0i16), (0, 2), (1, 1)] {
        let mut req = ElectLeadersRequest::default();
        req.election_type = election_type;
        req.timeout_ms = 5_000;
        let mut tp = elect_leaders_request::TopicPartitions::default();
        tp.topic = TopicName(s("one-node"));
        tp.partitions = vec![0, 1, 7];
        req.topic_partitions = Some(vec![tp]);
        let resp: ElectLeadersResponse = conn.call(ApiKey::ElectLeaders, version, &req);
        assert_eq!(resp.error_code, 0);
        let codes: Vec<(i32, i16)> =
            resp.replica_election_results[0].partition_result.iter().map(|p| (p.partition_id, p.error_code)).collect();
        // ELECTION_NOT_NEEDED (84), UNKNOWN_TOPIC_OR_PARTITION (3).
        assert_eq!(codes, vec![(0, 84), (1, 84), (7, 3)], "type {election_type} v{version}");
        req.topic_partitions = None;
        let resp: ElectLeadersResponse = conn.call(ApiKey::ElectLeaders, version, &req);
        assert!(resp.replica_election_results.is_empty(), "{resp:?}");
    }
}
