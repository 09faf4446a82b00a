//! The request versions Kafka 3.9 served and Kafka 4 dropped, sent over a
//! raw connection as an old client would, each answer decoded by hand from
//! the old schema and its effect checked with the modern APIs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fjord_compat_tests::legacy::{call, Body, Read};
use fjord_compat_tests::wire::{self, batch, create_topic, s, topic_metadata};
use fjord_compat_tests::{wait_until, BrokerProcess, RawConn};
use kafka_protocol::messages::*;

/// OffsetCommit v0/v1 of one topic's partitions: (partition, offset,
/// commit timestamp (v1), metadata). Returns each partition's error.
fn offset_commit(
    conn: &mut RawConn,
    version: i16,
    group: &str,
    generation_member: (i32, &str),
    topic: &str,
    parts: &[(i32, i64, i64, Option<&str>)],
) -> Vec<(i32, i16)> {
    let mut b = Body::new().str(group);
    if version >= 1 {
        b = b.i32(generation_member.0).str(generation_member.1);
    }
    b = b.count(1).str(topic).count(parts.len() as i32);
    for (p, offset, at, meta) in parts {
        b = b.i32(*p).i64(*offset);
        if version >= 1 {
            b = b.i64(*at);
        }
        b = b.nstr(*meta);
    }
    let mut r = call(conn, ApiKey::OffsetCommit, version, b);
    let topics = r.array(|r| {
        let name = r.str();
        (name, r.array(|r| (r.i32(), r.i16())))
    });
    r.end();
    assert_eq!(topics.len(), 1);
    assert_eq!(topics[0].0, topic);
    topics[0].1.clone()
}

/// OffsetFetch v0: (partition, offset, metadata, error) per partition asked.
fn offset_fetch_v0(
    conn: &mut RawConn,
    group: &str,
    topic: &str,
    parts: &[i32],
) -> Vec<(i32, i64, Option<String>, i16)> {
    let mut b = Body::new().str(group).count(1).str(topic).count(parts.len() as i32);
    for p in parts {
        b = b.i32(*p);
    }
    let mut r = call(conn, ApiKey::OffsetFetch, 0, b);
    let topics = r.array(|r| {
        let name = r.str();
        (name, r.array(|r| (r.i32(), r.i64(), r.nstr(), r.i16())))
    });
    r.end();
    assert_eq!(topics.len(), 1);
    assert_eq!(topics[0].0, topic);
    topics[0].1.clone()
}

/// The committed offsets of `group` as a current client (OffsetFetch v8) sees them.
fn offset_fetch_modern(conn: &mut RawConn, group: &str, topic: &str) -> Vec<(i32, i64)> {
    let mut g = offset_fetch_request::OffsetFetchRequestGroup::default();
    g.group_id = GroupId(s(group));
    g.topics = None;
    let mut req = OffsetFetchRequest::default();
    req.groups = vec![g];
    let resp: OffsetFetchResponse = conn.call(ApiKey::OffsetFetch, 8, &req);
    let group = &resp.groups[0];
    assert_eq!(group.error_code, 0);
    group
        .topics
        .iter()
        .filter(|t| t.name.0.as_str() == topic)
        .flat_map(|t| t.partitions.iter().map(|p| (p.partition_index, p.committed_offset)))
        .collect()
}

#[test]
fn api_versions_advertises_the_legacy_ranges_and_old_message_formats_stay_out() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    let v: ApiVersionsResponse = conn.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    let range = |key: ApiKey| {
        let k = v.api_keys.iter().find(|k| k.api_key == key as i16).unwrap_or_else(|| panic!("{key:?} advertised"));
        (k.min_version, k.max_version)
    };
    // Kafka 3.9's floors for clients of the v2 record format.
    assert_eq!(range(ApiKey::OffsetCommit).0, 0);
    assert_eq!(range(ApiKey::OffsetFetch).0, 0);
    assert_eq!(range(ApiKey::ListOffsets).0, 0);
    assert_eq!(range(ApiKey::CreateTopics).0, 0);
    assert_eq!(range(ApiKey::DeleteTopics).0, 0);
    assert_eq!(range(ApiKey::DescribeConfigs).0, 0);
    assert_eq!(range(ApiKey::AlterConfigs).0, 0);
    assert_eq!(range(ApiKey::DescribeAcls), (0, 3));
    assert_eq!(range(ApiKey::CreateAcls), (0, 3));
    assert_eq!(range(ApiKey::DeleteAcls), (0, 3));
    // The v0/v1 message formats are not served: Produce v0–2, Fetch v0–3.
    assert_eq!(range(ApiKey::Produce).0, 3);
    assert_eq!(range(ApiKey::Fetch).0, 4);
    for (key, version) in [(ApiKey::Produce, 2i16), (ApiKey::Fetch, 3)] {
        let mut raw = Vec::new();
        raw.extend_from_slice(&10i32.to_be_bytes());
        raw.extend_from_slice(&(key as i16).to_be_bytes());
        raw.extend_from_slice(&version.to_be_bytes());
        raw.extend_from_slice(&9i32.to_be_bytes());
        raw.extend_from_slice(&(-1i16).to_be_bytes());
        let mut c = RawConn::connect(&broker.bootstrap());
        c.send_raw(&raw).expect("send");
        assert!(c.recv_frame().is_none(), "{key:?} v{version} closes the connection");
    }
}

#[test]
fn offset_commit_v0_v1_and_offset_fetch_v0() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(create_topic(&mut conn, "old-commits", 2, &[]).topics[0].error_code, 0);

    // v0: no generation, no member: a standalone consumer's commit.
    let r = offset_commit(&mut conn, 0, "g-v0", (0, ""), "old-commits", &[(0, 5, 0, Some("from v0"))]);
    assert_eq!(r, vec![(0, 0)]);
    let fetched = offset_fetch_v0(&mut conn, "g-v0", "old-commits", &[0, 1]);
    assert_eq!(fetched, vec![(0, 5, Some("from v0".into()), 0), (1, -1, Some(String::new()), 0)]);
    assert_eq!(offset_fetch_modern(&mut conn, "g-v0", "old-commits"), vec![(0, 5)]);

    // v1 as a standalone consumer (generation -1, no member), commit time "now".
    let r = offset_commit(&mut conn, 1, "g-v1", (-1, ""), "old-commits", &[(0, 3, -1, None), (1, 7, -1, Some("m"))]);
    assert_eq!(r, vec![(0, 0), (1, 0)]);
    let fetched = offset_fetch_v0(&mut conn, "g-v1", "old-commits", &[1, 0]);
    assert_eq!(fetched.iter().map(|(p, o, _, e)| (*p, *o, *e)).collect::<Vec<_>>(), vec![(1, 7, 0), (0, 3, 0)]);
    assert_eq!(offset_fetch_modern(&mut conn, "g-v1", "old-commits"), vec![(0, 3), (1, 7)]);

    // v1 carries a generation, which the coordinator checks: no group has
    // generation 4, so ILLEGAL_GENERATION (22), and nothing is stored.
    let r = offset_commit(&mut conn, 1, "g-gen", (4, "someone"), "old-commits", &[(0, 9, -1, None)]);
    assert_eq!(r, vec![(0, 22)]);
    assert_eq!(offset_fetch_v0(&mut conn, "g-gen", "old-commits", &[0])[0].1, -1);

    // v1 from a group member, as sarama 1.22's consumer groups commit:
    // the generation and member id of its JoinGroup are checked.
    let mut protocol = join_group_request::JoinGroupRequestProtocol::default();
    protocol.name = s("range");
    protocol.metadata = bytes::Bytes::from_static(b"meta");
    let mut join = JoinGroupRequest::default();
    join.group_id = GroupId(s("g-member"));
    join.session_timeout_ms = 10_000;
    join.protocol_type = s("consumer");
    join.protocols = vec![protocol];
    let joined: JoinGroupResponse = conn.call(ApiKey::JoinGroup, 0, &join);
    assert_eq!(joined.error_code, 0);
    let (generation, member) = (joined.generation_id, joined.member_id.to_string());
    let mut sync = SyncGroupRequest::default();
    sync.group_id = GroupId(s("g-member"));
    sync.generation_id = generation;
    sync.member_id = s(&member);
    let mut assignment = sync_group_request::SyncGroupRequestAssignment::default();
    assignment.member_id = s(&member);
    sync.assignments = vec![assignment];
    let synced: SyncGroupResponse = conn.call(ApiKey::SyncGroup, 0, &sync);
    assert_eq!(synced.error_code, 0);
    let r = offset_commit(&mut conn, 1, "g-member", (generation, &member), "old-commits", &[(1, 8, -1, None)]);
    assert_eq!(r, vec![(1, 0)]);
    let r = offset_commit(&mut conn, 1, "g-member", (generation + 1, &member), "old-commits", &[(1, 9, -1, None)]);
    assert_eq!(r, vec![(1, 22)], "a stale or future generation: ILLEGAL_GENERATION");
    let r = offset_commit(&mut conn, 1, "g-member", (generation, "stranger"), "old-commits", &[(1, 9, -1, None)]);
    assert_eq!(r, vec![(1, 25)], "UNKNOWN_MEMBER_ID");
    assert_eq!(offset_fetch_v0(&mut conn, "g-member", "old-commits", &[1])[0].1, 8);

    // A modern commit is read back by OffsetFetch v0 too.
    let mut req = OffsetCommitRequest::default();
    req.group_id = GroupId(s("g-v0"));
    req.generation_id_or_member_epoch = -1;
    let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
    t.name = TopicName(s("old-commits"));
    let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
    p.partition_index = 1;
    p.committed_offset = 11;
    t.partitions = vec![p];
    req.topics = vec![t];
    let resp: OffsetCommitResponse = conn.call(ApiKey::OffsetCommit, 8, &req);
    assert_eq!(resp.topics[0].partitions[0].error_code, 0);
    let fetched = offset_fetch_v0(&mut conn, "g-v0", "old-commits", &[0, 1]);
    assert_eq!(fetched.iter().map(|(_, o, _, _)| *o).collect::<Vec<_>>(), vec![5, 11]);
}

#[test]
fn offset_commit_v1_commit_timestamp_is_the_commit_time() {
    // Offsets of a standalone consumer expire a retention period after
    // their commit time, which v1 lets the client give.
    let broker =
        BrokerProcess::start(&["--offsets-retention-ms", "600000", "--offsets-retention-check-interval-ms", "100"]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(create_topic(&mut conn, "aged", 2, &[]).topics[0].error_code, 0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as i64;
    let an_hour_ago = now - 3_600_000;
    let r = offset_commit(&mut conn, 1, "aged-group", (-1, ""), "aged", &[(0, 4, an_hour_ago, None), (1, 6, -1, None)]);
    assert_eq!(r, vec![(0, 0), (1, 0)]);
    // Committed an hour ago against a ten-minute retention: it goes at the
    // next check; the one committed now stays.
    wait_until(Duration::from_secs(20), "the back-dated offset to expire", || {
        offset_fetch_v0(&mut conn, "aged-group", "aged", &[0])[0].1 == -1
    });
    assert_eq!(offset_fetch_modern(&mut conn, "aged-group", "aged"), vec![(1, 6)]);
}

/// ListOffsets v0: (partition, timestamp, max_num_offsets) → (partition, error, offsets).
fn list_offsets_v0(conn: &mut RawConn, topic: &str, parts: &[(i32, i64, i32)]) -> Vec<(i32, i16, Vec<i64>)> {
    let mut b = Body::new().i32(-1).count(1).str(topic).count(parts.len() as i32);
    for (p, ts, max) in parts {
        b = b.i32(*p).i64(*ts).i32(*max);
    }
    let mut r = call(conn, ApiKey::ListOffsets, 0, b);
    let topics = r.array(|r| {
        let name = r.str();
        (name, r.array(|r| (r.i32(), r.i16(), r.array(|r| r.i64()))))
    });
    r.end();
    assert_eq!(topics[0].0, topic);
    topics[0].1.clone()
}

#[test]
fn list_offsets_v0_returns_offset_arrays() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(create_topic(&mut conn, "old-offsets", 2, &[]).topics[0].error_code, 0);
    assert_eq!(wire::produce(&mut conn, "old-offsets", 0, batch(&[b"a", b"b"], 1_000)).0, 0);
    assert_eq!(wire::produce(&mut conn, "old-offsets", 0, batch(&[b"c"], 5_000)).0, 0);
    let far_future = i64::MAX / 2;
    let got = list_offsets_v0(
        &mut conn,
        "old-offsets",
        &[(0, -1, 1), (0, -2, 1), (0, 3_000, 1), (0, far_future, 1), (0, -1, 0), (1, -1, 5), (7, -1, 1)],
    );
    assert_eq!(
        got,
        vec![
            (0, 0, vec![3]), // latest: the end of the log
            (0, 0, vec![0]), // earliest
            (0, 0, vec![2]), // by time: where the records from 3000 on start
            (0, 0, vec![3]), // after every record: the end of the log
            (0, 0, vec![]),  // max_num_offsets 0
            (1, 0, vec![0]), // an empty partition
            (7, 3, vec![]),  // UNKNOWN_TOPIC_OR_PARTITION
        ]
    );
    // The modern API agrees.
    assert_eq!(wire::list_offset(&mut conn, "old-offsets", 0, -1), 3);
}

/// CreateTopics v0/v1 of one topic: (error, message (v1)).
fn create_topics_old(
    conn: &mut RawConn,
    version: i16,
    topic: &str,
    partitions: i32,
    rf: i16,
    configs: &[(&str, &str)],
    validate_only: bool,
) -> (i16, Option<String>) {
    let mut b = Body::new().count(1).str(topic).i32(partitions).i16(rf).count(0).count(configs.len() as i32);
    for (k, v) in configs {
        b = b.str(k).str(v);
    }
    b = b.i32(10_000);
    if version >= 1 {
        b = b.bool(validate_only);
    }
    let mut r = call(conn, ApiKey::CreateTopics, version, b);
    let topics = r.array(|r| {
        let name = r.str();
        let code = r.i16();
        let message = if version >= 1 { r.nstr() } else { None };
        (name, code, message)
    });
    r.end();
    assert_eq!(topics.len(), 1);
    assert_eq!(topics[0].0, topic);
    (topics[0].1, topics[0].2.clone())
}

/// DescribeConfigs v0 of one resource: its error and (name, value, read_only, is_default, is_sensitive).
#[allow(clippy::type_complexity)]
fn describe_configs_v0(
    conn: &mut RawConn,
    resource_type: i8,
    name: &str,
    keys: Option<&[&str]>,
) -> (i16, Vec<(String, Option<String>, bool, bool, bool)>) {
    let mut b = Body::new().count(1).i8(resource_type).str(name);
    match keys {
        None => b = b.count(-1),
        Some(keys) => {
            b = b.count(keys.len() as i32);
            for k in keys {
                b = b.str(k);
            }
        }
    }
    let mut r = call(conn, ApiKey::DescribeConfigs, 0, b);
    let _throttle = r.i32();
    let results = r.array(|r: &mut Read| {
        let code = r.i16();
        let _message = r.nstr();
        assert_eq!(r.i8(), resource_type);
        assert_eq!(r.str(), name);
        (code, r.array(|r| (r.str(), r.nstr(), r.bool(), r.bool(), r.bool())))
    });
    r.end();
    assert_eq!(results.len(), 1);
    results.into_iter().next().expect("one result")
}

#[test]
fn create_topics_v0_v1_and_delete_topics_v0() {
    let broker = BrokerProcess::start(&["--auto-create-topics", "false"]);
    let mut conn = RawConn::connect(&broker.bootstrap());

    assert_eq!(create_topics_old(&mut conn, 0, "made-by-v0", 3, 1, &[("retention.ms", "12345")], false), (0, None));
    let md = topic_metadata(&mut conn, "made-by-v0", false);
    assert_eq!((md.error_code, md.partitions.len()), (0, 3));
    let (code, configs) = describe_configs_v0(&mut conn, 2, "made-by-v0", Some(&["retention.ms"]));
    assert_eq!(code, 0);
    assert_eq!(configs, vec![("retention.ms".into(), Some("12345".into()), false, false, false)]);
    // TOPIC_ALREADY_EXISTS (36).
    assert_eq!(create_topics_old(&mut conn, 0, "made-by-v0", 1, 1, &[], false).0, 36);

    // v1: validate_only creates nothing; errors come with a message.
    assert_eq!(create_topics_old(&mut conn, 1, "made-by-v1", 2, 1, &[], true), (0, None));
    assert_eq!(topic_metadata(&mut conn, "made-by-v1", false).error_code, 3, "validate_only created nothing");
    let (code, message) = create_topics_old(&mut conn, 1, "made-by-v1", 2, 3, &[], false);
    assert_eq!(code, 38, "INVALID_REPLICATION_FACTOR");
    assert!(message.is_some_and(|m| !m.is_empty()));
    assert_eq!(create_topics_old(&mut conn, 1, "made-by-v1", 2, 1, &[], false), (0, None));
    assert_eq!(topic_metadata(&mut conn, "made-by-v1", false).partitions.len(), 2);

    // DeleteTopics v0: names and a timeout; per topic, name and error.
    let body = Body::new().count(2).str("made-by-v0").str("never-made").i32(10_000);
    let mut r = call(&mut conn, ApiKey::DeleteTopics, 0, body);
    let results = r.array(|r| (r.str(), r.i16()));
    r.end();
    assert_eq!(results, vec![("made-by-v0".into(), 0), ("never-made".into(), 3)]);
    assert_eq!(topic_metadata(&mut conn, "made-by-v0", false).error_code, 3, "deleted");
    assert_eq!(topic_metadata(&mut conn, "made-by-v1", false).error_code, 0, "untouched");
}

#[test]
fn describe_configs_v0_and_alter_configs_v0() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(create_topic(&mut conn, "old-configs", 1, &[]).topics[0].error_code, 0);

    // Every config (null keys); an untouched one reads as a default.
    let (code, all) = describe_configs_v0(&mut conn, 2, "old-configs", None);
    assert_eq!(code, 0);
    let retention = all.iter().find(|c| c.0 == "retention.ms").expect("retention.ms described");
    assert_eq!(retention, &("retention.ms".into(), Some("604800000".into()), false, true, false));
    assert!(all.len() > 1);

    // AlterConfigs v0 (kafka-protocol still carries it) sets it.
    let mut req = AlterConfigsRequest::default();
    let mut res = alter_configs_request::AlterConfigsResource::default();
    res.resource_type = 2;
    res.resource_name = s("old-configs");
    let mut c = alter_configs_request::AlterableConfig::default();
    c.name = s("retention.ms");
    c.value = Some(s("1000"));
    res.configs = vec![c];
    req.resources = vec![res];
    let resp: AlterConfigsResponse = conn.call(ApiKey::AlterConfigs, 0, &req);
    assert_eq!(resp.responses[0].error_code, 0);
    let (code, one) = describe_configs_v0(&mut conn, 2, "old-configs", Some(&["retention.ms"]));
    assert_eq!(code, 0);
    assert_eq!(one, vec![("retention.ms".into(), Some("1000".into()), false, false, false)]);
    assert_eq!(wire::describe_config(&mut conn, "old-configs", "retention.ms").0.as_deref(), Some("1000"));

    // The broker resource, and an unknown topic (UNKNOWN_TOPIC_OR_PARTITION).
    let (code, broker_configs) = describe_configs_v0(&mut conn, 4, "0", None);
    assert_eq!(code, 0);
    assert!(broker_configs.iter().any(|c| c.0 == "log.retention.ms"));
    assert_eq!(describe_configs_v0(&mut conn, 2, "no-such-topic", None).0, 3);
}

/// Kafka's AclOperation codes set as bits, the form authorized operations take.
fn ops(codes: &[u8]) -> i32 {
    codes.iter().fold(0, |v, c| v | 1 << c)
}

const SECURITY_DISABLED: i16 = 54;

#[test]
fn acl_apis_answer_security_disabled_at_every_version() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());

    // v0 by hand: a filter (type, name, principal, host, operation, permission).
    let filter = |b: Body| b.i8(2).nstr(Some("t")).nstr(None).nstr(None).i8(1).i8(1);
    let mut r = call(&mut conn, ApiKey::DescribeAcls, 0, filter(Body::new()));
    let (_throttle, code, message) = (r.i32(), r.i16(), r.nstr());
    let resources = r.count();
    r.end();
    assert_eq!((code, resources), (SECURITY_DISABLED, 0));
    assert!(message.is_some());

    let creation = |b: Body| b.i8(2).str("t").str("User:alice").str("*").i8(3).i8(3);
    let mut r = call(&mut conn, ApiKey::CreateAcls, 0, creation(creation(Body::new().count(2))));
    let _throttle = r.i32();
    let results = r.array(|r| (r.i16(), r.nstr().is_some()));
    r.end();
    assert_eq!(results, vec![(SECURITY_DISABLED, true); 2]);

    let mut r = call(&mut conn, ApiKey::DeleteAcls, 0, filter(filter(Body::new().count(2))));
    let _throttle = r.i32();
    let results = r.array(|r| (r.i16(), r.nstr().is_some(), r.count()));
    r.end();
    assert_eq!(results, vec![(SECURITY_DISABLED, true, 0); 2]);

    // v1–3 through kafka-protocol.
    for version in 1..=3 {
        let resp: DescribeAclsResponse = conn.call(ApiKey::DescribeAcls, version, &DescribeAclsRequest::default());
        assert_eq!(resp.error_code, SECURITY_DISABLED, "DescribeAcls v{version}");
        let mut req = CreateAclsRequest::default();
        req.creations = vec![Default::default(); 3];
        let resp: CreateAclsResponse = conn.call(ApiKey::CreateAcls, version, &req);
        assert_eq!(resp.results.iter().map(|r| r.error_code).collect::<Vec<_>>(), vec![SECURITY_DISABLED; 3]);
        let mut req = DeleteAclsRequest::default();
        req.filters = vec![Default::default()];
        let resp: DeleteAclsResponse = conn.call(ApiKey::DeleteAcls, version, &req);
        assert_eq!(resp.filter_results.len(), 1);
        assert_eq!(resp.filter_results[0].error_code, SECURITY_DISABLED, "DeleteAcls v{version}");
    }
}

#[test]
fn authorized_operations_when_asked() {
    let topic_ops = ops(&[3, 4, 5, 6, 7, 8, 10, 11]); // READ WRITE CREATE DELETE ALTER DESCRIBE DESCRIBE_CONFIGS ALTER_CONFIGS
    let group_ops = ops(&[3, 6, 8]); // READ DELETE DESCRIBE
    let cluster_ops = ops(&[5, 7, 8, 9, 10, 11, 12]); // CREATE ALTER DESCRIBE CLUSTER_ACTION DESCRIBE_CONFIGS ALTER_CONFIGS IDEMPOTENT_WRITE
    let not_requested = i32::MIN;
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(create_topic(&mut conn, "authz", 1, &[]).topics[0].error_code, 0);

    let metadata = |conn: &mut RawConn, version: i16, cluster: bool, topics: bool| {
        let mut req = MetadataRequest::default();
        let mut t = metadata_request::MetadataRequestTopic::default();
        t.name = Some(TopicName(s("authz")));
        req.topics = Some(vec![t]);
        req.include_cluster_authorized_operations = cluster && version <= 10;
        req.include_topic_authorized_operations = topics;
        let md: MetadataResponse = conn.call(ApiKey::Metadata, version, &req);
        (md.cluster_authorized_operations, md.topics[0].topic_authorized_operations)
    };
    assert_eq!(metadata(&mut conn, 8, true, true), (cluster_ops, topic_ops));
    assert_eq!(metadata(&mut conn, 10, false, true), (not_requested, topic_ops));
    assert_eq!(metadata(&mut conn, 12, false, true).1, topic_ops);
    assert_eq!(metadata(&mut conn, 12, false, false).1, not_requested);

    let describe_cluster = |conn: &mut RawConn, asked: bool| {
        let mut req = DescribeClusterRequest::default();
        req.include_cluster_authorized_operations = asked;
        req.endpoint_type = 1;
        let resp: DescribeClusterResponse = conn.call(ApiKey::DescribeCluster, 1, &req);
        assert_eq!(resp.error_code, 0);
        resp.cluster_authorized_operations
    };
    assert_eq!(describe_cluster(&mut conn, true), cluster_ops);
    assert_eq!(describe_cluster(&mut conn, false), not_requested);

    // A group that exists (a commit made it) and one that does not (Kafka
    // describes it as Dead, without error): both get the group's operations.
    offset_commit(&mut conn, 0, "authz-group", (0, ""), "authz", &[(0, 1, 0, None)]);
    let describe_groups = |conn: &mut RawConn, version: i16, asked: bool| {
        let mut req = DescribeGroupsRequest::default();
        req.groups = vec![GroupId(s("authz-group")), GroupId(s("no-such-group"))];
        req.include_authorized_operations = asked;
        let resp: DescribeGroupsResponse = conn.call(ApiKey::DescribeGroups, version, &req);
        resp.groups.iter().map(|g| (g.error_code, g.authorized_operations)).collect::<Vec<_>>()
    };
    assert_eq!(describe_groups(&mut conn, 5, true), vec![(0, group_ops); 2]);
    assert_eq!(describe_groups(&mut conn, 3, false), vec![(0, not_requested); 2]);

    // A KIP-848 group, and one that does not exist (an error: not given).
    let mut hb = ConsumerGroupHeartbeatRequest::default();
    hb.group_id = GroupId(s("authz-848"));
    hb.member_id = s("authz-member-0001");
    hb.member_epoch = 0;
    hb.rebalance_timeout_ms = 10_000;
    hb.subscribed_topic_names = Some(vec![TopicName(s("authz"))]);
    hb.topic_partitions = Some(vec![]);
    let joined: ConsumerGroupHeartbeatResponse = conn.call(ApiKey::ConsumerGroupHeartbeat, 1, &hb);
    assert_eq!(joined.error_code, 0);
    let describe_848 = |conn: &mut RawConn, asked: bool| {
        let mut req = ConsumerGroupDescribeRequest::default();
        req.group_ids = vec![GroupId(s("authz-848")), GroupId(s("no-such-848"))];
        req.include_authorized_operations = asked;
        let resp: ConsumerGroupDescribeResponse = conn.call(ApiKey::ConsumerGroupDescribe, 1, &req);
        resp.groups.iter().map(|g| (g.error_code, g.authorized_operations)).collect::<Vec<_>>()
    };
    assert_eq!(describe_848(&mut conn, true), vec![(0, group_ops), (69, not_requested)]);
    assert_eq!(describe_848(&mut conn, false)[0], (0, not_requested));
}
