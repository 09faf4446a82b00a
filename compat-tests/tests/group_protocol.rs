//! The classic group protocol at the wire: the join handshake and Kafka's
//! fencing errors for stale generations, unknown members and mismatched
//! protocols, none of which disturbs a stable group.

use bytes::Bytes;
use fjord_compat_tests::wire::s;
use fjord_compat_tests::{BrokerProcess, RawConn};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;

/// A consumer JoinGroup with a 10 s session and rebalance timeout.
fn join_request(group: &str, member: &str) -> JoinGroupRequest {
    let mut p = JoinGroupRequestProtocol::default();
    p.name = s("range");
    p.metadata = Bytes::from_static(b"meta");
    let mut req = JoinGroupRequest::default();
    req.group_id = GroupId(s(group));
    req.session_timeout_ms = 10_000;
    req.rebalance_timeout_ms = 10_000;
    req.member_id = s(member);
    req.protocol_type = s("consumer");
    req.protocols = vec![p];
    req
}

fn join(conn: &mut RawConn, member: &str, protocol_type: &str, session_ms: i32) -> JoinGroupResponse {
    let mut req = join_request("fenced", member);
    req.session_timeout_ms = session_ms;
    req.protocol_type = s(protocol_type);
    conn.call(ApiKey::JoinGroup, 7, &req)
}

/// The first join's MEMBER_ID_REQUIRED handshake: the id to join with.
fn member_id(conn: &mut RawConn, group: &str) -> String {
    let r: JoinGroupResponse = conn.call(ApiKey::JoinGroup, 7, &join_request(group, ""));
    assert_eq!(r.error_code, 79, "MEMBER_ID_REQUIRED");
    r.member_id.to_string()
}

fn sync(conn: &mut RawConn, member: &str, generation: i32, assign: bool) -> SyncGroupResponse {
    sync_in(conn, "fenced", member, generation, assign)
}

fn sync_in(conn: &mut RawConn, group: &str, member: &str, generation: i32, assign: bool) -> SyncGroupResponse {
    let mut req = SyncGroupRequest::default();
    req.group_id = GroupId(s(group));
    req.generation_id = generation;
    req.member_id = s(member);
    if assign {
        let mut a = SyncGroupRequestAssignment::default();
        a.member_id = s(member);
        a.assignment = Bytes::from_static(b"all-yours");
        req.assignments = vec![a];
    }
    conn.call(ApiKey::SyncGroup, 5, &req)
}

fn heartbeat(conn: &mut RawConn, member: &str, generation: i32) -> i16 {
    let mut req = HeartbeatRequest::default();
    req.group_id = GroupId(s("fenced"));
    req.generation_id = generation;
    req.member_id = s(member);
    let r: HeartbeatResponse = conn.call(ApiKey::Heartbeat, 4, &req);
    r.error_code
}

fn state(conn: &mut RawConn) -> (String, usize) {
    describe(conn, "fenced")
}

/// A group's state and number of members.
fn describe(conn: &mut RawConn, group: &str) -> (String, usize) {
    let mut req = DescribeGroupsRequest::default();
    req.groups = vec![GroupId(s(group))];
    let r: DescribeGroupsResponse = conn.call(ApiKey::DescribeGroups, 5, &req);
    (r.groups[0].group_state.to_string(), r.groups[0].members.len())
}

#[test]
fn join_handshake_and_fencing_errors() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    // Session timeouts outside Kafka's bounds: INVALID_SESSION_TIMEOUT (26).
    assert_eq!(join(&mut conn, "", "consumer", 100).error_code, 26);
    // First join without a member id: MEMBER_ID_REQUIRED (79) with an id.
    let first = join(&mut conn, "", "consumer", 10_000);
    assert_eq!(first.error_code, 79);
    let me = first.member_id.to_string();
    assert!(!me.is_empty());
    let joined = join(&mut conn, &me, "consumer", 10_000);
    assert_eq!(joined.error_code, 0);
    assert_eq!(joined.leader.as_str(), me, "the only member leads");
    assert_eq!(joined.members.len(), 1, "the leader sees the members");
    let generation = joined.generation_id;
    let synced = sync(&mut conn, &me, generation, true);
    assert_eq!(synced.error_code, 0);
    assert_eq!(&synced.assignment[..], b"all-yours");
    assert_eq!(state(&mut conn), ("Stable".to_string(), 1));
    assert_eq!(heartbeat(&mut conn, &me, generation), 0);

    // Fencing: each wrong request gets its error and changes nothing.
    assert_eq!(heartbeat(&mut conn, &me, generation - 1), 22, "ILLEGAL_GENERATION");
    assert_eq!(heartbeat(&mut conn, "intruder", generation), 25, "UNKNOWN_MEMBER_ID");
    assert_eq!(sync(&mut conn, &me, generation + 5, false).error_code, 22);
    assert_eq!(join(&mut conn, "intruder", "consumer", 10_000).error_code, 25);
    assert_eq!(join(&mut conn, "", "connect", 10_000).error_code, 23, "INCONSISTENT_GROUP_PROTOCOL");
    let mut commit = OffsetCommitRequest::default();
    commit.group_id = GroupId(s("fenced"));
    commit.generation_id_or_member_epoch = generation - 1;
    commit.member_id = s(&me);
    let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
    t.name = TopicName(s("no-matter"));
    let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
    p.committed_offset = 5;
    t.partitions = vec![p];
    commit.topics = vec![t];
    let r: OffsetCommitResponse = conn.call(ApiKey::OffsetCommit, 8, &commit);
    assert_eq!(r.topics[0].partitions[0].error_code, 22, "stale generation cannot commit");
    assert_eq!(state(&mut conn), ("Stable".to_string(), 1), "the group is undisturbed");
    assert_eq!(heartbeat(&mut conn, &me, generation), 0);

    // A non-empty group cannot be deleted; after the member leaves it can.
    let mut del = DeleteGroupsRequest::default();
    del.groups_names = vec![GroupId(s("fenced"))];
    let r: DeleteGroupsResponse = conn.call(ApiKey::DeleteGroups, 2, &del);
    assert_eq!(r.results[0].error_code, 68, "NON_EMPTY_GROUP");
    let mut leave = LeaveGroupRequest::default();
    leave.group_id = GroupId(s("fenced"));
    let mut who = leave_group_request::MemberIdentity::default();
    who.member_id = s(&me);
    leave.members = vec![who];
    let r: LeaveGroupResponse = conn.call(ApiKey::LeaveGroup, 4, &leave);
    assert_eq!((r.error_code, r.members[0].error_code), (0, 0));
    assert_eq!(state(&mut conn), ("Empty".to_string(), 0));
    let r: DeleteGroupsResponse = conn.call(ApiKey::DeleteGroups, 2, &del);
    assert_eq!(r.results[0].error_code, 0);
    let r: DeleteGroupsResponse = conn.call(ApiKey::DeleteGroups, 2, &del);
    assert_eq!(r.results[0].error_code, 69, "GROUP_ID_NOT_FOUND");
}

#[test]
fn silent_member_is_expired_after_its_session() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    let me = join(&mut conn, "", "consumer", 6_000).member_id.to_string();
    let joined = join(&mut conn, &me, "consumer", 6_000);
    assert_eq!(sync(&mut conn, &me, joined.generation_id, true).error_code, 0);
    assert_eq!(state(&mut conn).0, "Stable");
    // No heartbeats: after the 6 s session the member is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while state(&mut conn).1 != 0 {
        assert!(std::time::Instant::now() < deadline, "member was never expired");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(state(&mut conn).0, "Empty");
    assert_eq!(heartbeat(&mut conn, &me, joined.generation_id), 25);
}

fn commit(conn: &mut RawConn, group: &str, generation: i32, member: &str, topic: &str, offset: i64) -> i16 {
    let mut req = OffsetCommitRequest::default();
    req.group_id = GroupId(s(group));
    req.generation_id_or_member_epoch = generation;
    req.member_id = s(member);
    let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
    t.name = TopicName(s(topic));
    let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
    p.committed_offset = offset;
    t.partitions = vec![p];
    req.topics = vec![t];
    let r: OffsetCommitResponse = conn.call(ApiKey::OffsetCommit, 8, &req);
    r.topics[0].partitions[0].error_code
}

fn committed(conn: &mut RawConn, group: &str, topic: &str) -> i64 {
    let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
    t.name = TopicName(s(topic));
    t.partition_indexes = vec![0];
    let mut req = OffsetFetchRequest::default();
    req.group_id = GroupId(s(group));
    req.topics = Some(vec![t]);
    let r: OffsetFetchResponse = conn.call(ApiKey::OffsetFetch, 7, &req);
    r.topics[0].partitions[0].committed_offset
}

#[test]
fn offsets_expire_only_once_a_group_is_empty() {
    let broker =
        BrokerProcess::start(&["--offsets-retention-ms", "800", "--offsets-retention-check-interval-ms", "50"]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    fjord_compat_tests::wire::create_topic(&mut conn, "kept", 1, &[]);
    // The "fenced" group has a live member that commits and keeps heartbeating.
    let me = join(&mut conn, "", "consumer", 6_000).member_id.to_string();
    let joined = join(&mut conn, &me, "consumer", 6_000);
    assert_eq!(sync(&mut conn, &me, joined.generation_id, true).error_code, 0);
    assert_eq!(commit(&mut conn, "fenced", joined.generation_id, &me, "kept", 11), 0);
    // A standalone consumer's commit, in a group nobody is a member of. Timed from before it
    // is sent, so the broker's stamp is never earlier than `start`.
    let start = std::time::Instant::now();
    assert_eq!(commit(&mut conn, "standalone", -1, "", "kept", 22), 0);
    let deadline = start + std::time::Duration::from_secs(30);
    while committed(&mut conn, "standalone", "kept") != -1 {
        assert!(std::time::Instant::now() < deadline, "standalone offsets never expired");
        assert_eq!(heartbeat(&mut conn, &me, joined.generation_id), 0);
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(start.elapsed() >= std::time::Duration::from_millis(780), "not before the retention");
    assert_eq!(committed(&mut conn, "fenced", "kept"), 11, "a group with members keeps its offsets");
}

#[test]
fn offset_delete_refuses_subscribed_topics() {
    use kafka_protocol::messages::offset_delete_request::{OffsetDeleteRequestPartition, OffsetDeleteRequestTopic};
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    fjord_compat_tests::wire::create_topic(&mut conn, "od", 1, &[]);
    assert_eq!(commit(&mut conn, "od-group", -1, "", "od", 5), 0);
    let delete = |conn: &mut RawConn, group: &str| -> (i16, i16) {
        let mut p = OffsetDeleteRequestPartition::default();
        p.partition_index = 0;
        let mut t = OffsetDeleteRequestTopic::default();
        t.name = TopicName(s("od"));
        t.partitions = vec![p];
        let mut req = OffsetDeleteRequest::default();
        req.group_id = GroupId(s(group));
        req.topics = vec![t];
        let r: OffsetDeleteResponse = conn.call(ApiKey::OffsetDelete, 0, &req);
        (r.error_code, r.topics.first().map_or(-1, |t| t.partitions[0].error_code))
    };
    assert_eq!(delete(&mut conn, "no-such-group").0, 69, "GROUP_ID_NOT_FOUND");
    assert_eq!(delete(&mut conn, "od-group"), (0, 0));
    assert_eq!(committed(&mut conn, "od-group", "od"), -1);

    // A live member subscribed to "od" protects that topic's offsets.
    let mut sub = kafka_protocol::messages::ConsumerProtocolSubscription::default();
    sub.topics = vec![s("od")];
    let mut meta = bytes::BytesMut::new();
    meta.extend_from_slice(&0i16.to_be_bytes());
    kafka_protocol::protocol::Encodable::encode(&sub, &mut meta, 0).expect("subscription");
    let mut p = JoinGroupRequestProtocol::default();
    p.name = s("range");
    p.metadata = meta.freeze();
    let mut join_req = JoinGroupRequest::default();
    join_req.group_id = GroupId(s("od-live"));
    join_req.session_timeout_ms = 10_000;
    join_req.rebalance_timeout_ms = 10_000;
    join_req.protocol_type = s("consumer");
    join_req.protocols = vec![p];
    let first: JoinGroupResponse = conn.call(ApiKey::JoinGroup, 7, &join_req);
    join_req.member_id = first.member_id.clone();
    let joined: JoinGroupResponse = conn.call(ApiKey::JoinGroup, 7, &join_req);
    assert_eq!(joined.error_code, 0);
    let mut sync_req = SyncGroupRequest::default();
    sync_req.group_id = GroupId(s("od-live"));
    sync_req.generation_id = joined.generation_id;
    sync_req.member_id = joined.member_id.clone();
    let synced: SyncGroupResponse = conn.call(ApiKey::SyncGroup, 5, &sync_req);
    assert_eq!(synced.error_code, 0);
    assert_eq!(commit(&mut conn, "od-live", joined.generation_id, &joined.member_id, "od", 4), 0);
    assert_eq!(delete(&mut conn, "od-live"), (0, 86), "GROUP_SUBSCRIBED_TO_TOPIC");
    assert_eq!(committed(&mut conn, "od-live", "od"), 4);
}

/// A JoinGroup for the "timeouts" group with a 1.5 s rebalance timeout.
fn timeouts_join(member: &str, metadata: &'static [u8]) -> JoinGroupRequest {
    timeouts_join_within(member, metadata, 1_500)
}

/// A JoinGroup for the "timeouts" group with the given rebalance timeout.
fn timeouts_join_within(member: &str, metadata: &'static [u8], rebalance_timeout_ms: i32) -> JoinGroupRequest {
    let mut p = JoinGroupRequestProtocol::default();
    p.name = s("range");
    p.metadata = Bytes::from_static(metadata);
    let mut req = join_request("timeouts", member);
    req.session_timeout_ms = 30_000;
    req.rebalance_timeout_ms = rebalance_timeout_ms;
    req.protocols = vec![p];
    req
}

/// A member that does not rejoin within the rebalance timeout is dropped,
/// and the round completes for those that did.
#[test]
fn rebalance_timeout_drops_a_member_that_does_not_rejoin() {
    let broker = BrokerProcess::start(&[]);
    let mut a = RawConn::connect(&broker.bootstrap());
    let mut b = RawConn::connect(&broker.bootstrap());
    // A's rebalance timeout is long until it has rejoined the round B starts, so a slow
    // machine cannot make A miss that round; A's next join sets 1.5 s again.
    let first: JoinGroupResponse = a.call(ApiKey::JoinGroup, 7, &timeouts_join_within("", b"meta", 60_000));
    let a_id = first.member_id.to_string();
    let first: JoinGroupResponse = a.call(ApiKey::JoinGroup, 7, &timeouts_join_within(&a_id, b"meta", 60_000));
    assert_eq!(first.error_code, 0);
    // B joins: A must rejoin; both do, and the new generation has both.
    let b_first: JoinGroupResponse = b.call(ApiKey::JoinGroup, 7, &timeouts_join("", b"meta"));
    let b_id = b_first.member_id.to_string();
    let id = b.send(ApiKey::JoinGroup, 7, &timeouts_join(&b_id, b"meta"));
    // Only once B's join is in (the group waits for A) may A rejoin, or A
    // would complete a round alone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut req = DescribeGroupsRequest::default();
        req.groups = vec![GroupId(s("timeouts"))];
        let r: DescribeGroupsResponse = a.call(ApiKey::DescribeGroups, 5, &req);
        if r.groups[0].group_state.as_str() == "PreparingRebalance" && r.groups[0].members.len() == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "B's join never arrived");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let a_round: JoinGroupResponse = a.call(ApiKey::JoinGroup, 7, &timeouts_join_within(&a_id, b"meta", 60_000));
    let b_round: JoinGroupResponse = b.recv(ApiKey::JoinGroup, 7, id);
    assert_eq!((a_round.error_code, b_round.error_code), (0, 0));
    assert_eq!(a_round.generation_id, b_round.generation_id);
    let leader_sees = if a_round.leader.as_str() == a_id { &a_round.members } else { &b_round.members };
    assert_eq!(leader_sees.len(), 2);
    // A rejoins with new metadata and B stays silent: after B's 1.5 s
    // rebalance timeout the round completes with A alone.
    let started = std::time::Instant::now();
    let alone: JoinGroupResponse = a.call(ApiKey::JoinGroup, 7, &timeouts_join(&a_id, b"new-meta"));
    assert_eq!(alone.error_code, 0);
    assert!(started.elapsed() >= std::time::Duration::from_millis(1_400), "waited for B's rebalance timeout");
    assert_eq!(alone.members.len(), 1, "B was dropped");
    assert_eq!(alone.leader.as_str(), a_id);
    assert!(alone.generation_id > a_round.generation_id);
    // B's heartbeat now says it is unknown.
    let mut hb = HeartbeatRequest::default();
    hb.group_id = GroupId(s("timeouts"));
    hb.generation_id = b_round.generation_id;
    hb.member_id = s(&b_id);
    let r: HeartbeatResponse = b.call(ApiKey::Heartbeat, 4, &hb);
    assert_eq!(r.error_code, 25);
}

#[test]
fn offset_fetch_for_several_groups_and_list_groups_by_state() {
    use kafka_protocol::messages::offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopics};
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    fjord_compat_tests::wire::create_topic(&mut conn, "multi", 1, &[]);
    assert_eq!(commit(&mut conn, "g-one", -1, "", "multi", 1), 0);
    assert_eq!(commit(&mut conn, "g-two", -1, "", "multi", 2), 0);
    let mut req = OffsetFetchRequest::default();
    req.groups = ["g-one", "g-two", "g-none"]
        .iter()
        .map(|g| {
            let mut t = OffsetFetchRequestTopics::default();
            t.name = TopicName(s("multi"));
            t.partition_indexes = vec![0];
            let mut grp = OffsetFetchRequestGroup::default();
            grp.group_id = GroupId(s(g));
            grp.topics = Some(vec![t]);
            grp
        })
        .collect();
    let r: OffsetFetchResponse = conn.call(ApiKey::OffsetFetch, 8, &req);
    let got: Vec<(String, i64)> =
        r.groups.iter().map(|g| (g.group_id.0.to_string(), g.topics[0].partitions[0].committed_offset)).collect();
    assert_eq!(got, vec![("g-one".into(), 1), ("g-two".into(), 2), ("g-none".into(), -1)]);
    // "fenced" becomes Stable; the standalone groups are Empty.
    let me = join(&mut conn, "", "consumer", 10_000).member_id.to_string();
    let joined = join(&mut conn, &me, "consumer", 10_000);
    assert_eq!(sync(&mut conn, &me, joined.generation_id, true).error_code, 0);
    let list = |conn: &mut RawConn, states: &[&str]| -> Vec<String> {
        let mut req = ListGroupsRequest::default();
        req.states_filter = states.iter().map(|x| s(x)).collect();
        let r: ListGroupsResponse = conn.call(ApiKey::ListGroups, 4, &req);
        let mut ids: Vec<String> = r.groups.iter().map(|g| g.group_id.0.to_string()).collect();
        ids.sort();
        ids
    };
    assert_eq!(list(&mut conn, &["Stable"]), vec!["fenced".to_string()]);
    assert_eq!(list(&mut conn, &["Empty"]), vec!["g-one".to_string(), "g-two".to_string()]);
    assert_eq!(list(&mut conn, &[]).len(), 3);
}

#[test]
fn deleting_a_topic_forgets_its_committed_offsets() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    fjord_compat_tests::wire::create_topic(&mut conn, "doomed", 1, &[]);
    assert_eq!(commit(&mut conn, "keeper", -1, "", "doomed", 9), 0);
    assert_eq!(committed(&mut conn, "keeper", "doomed"), 9);
    let mut del = DeleteTopicsRequest::default();
    del.topic_names = vec![TopicName(s("doomed"))];
    let r: DeleteTopicsResponse = conn.call(ApiKey::DeleteTopics, 5, &del);
    assert_eq!(r.responses[0].error_code, 0);
    fjord_compat_tests::wire::create_topic(&mut conn, "doomed", 1, &[]);
    assert_eq!(committed(&mut conn, "keeper", "doomed"), -1, "the new topic starts without the old offsets");
}

#[test]
fn find_coordinator_single_and_batched() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    let mut one = FindCoordinatorRequest::default();
    one.key = s("a-group");
    let r: FindCoordinatorResponse = conn.call(ApiKey::FindCoordinator, 3, &one);
    assert_eq!((r.error_code, r.port as u16), (0, broker.port));
    // v4+ batches keys; each gets its own answer.
    let mut many = FindCoordinatorRequest::default();
    many.coordinator_keys = vec![s("g1"), s("g2")];
    let r: FindCoordinatorResponse = conn.call(ApiKey::FindCoordinator, 4, &many);
    let got: Vec<(String, i16, u16)> =
        r.coordinators.iter().map(|c| (c.key.to_string(), c.error_code, c.port as u16)).collect();
    assert_eq!(got, vec![("g1".into(), 0, broker.port), ("g2".into(), 0, broker.port)]);
    // Transaction coordinators (key type 1) are this broker too; an
    // unknown key type is a clear error, not a hang.
    many.key_type = 1;
    let r: FindCoordinatorResponse = conn.call(ApiKey::FindCoordinator, 4, &many);
    assert!(r.coordinators.iter().all(|c| c.error_code == 0 && c.port as u16 == broker.port));
    many.key_type = 7;
    let r: FindCoordinatorResponse = conn.call(ApiKey::FindCoordinator, 4, &many);
    assert!(r.coordinators.iter().all(|c| c.error_code == 42));
}

/// group.initial.rebalance.delay.ms: consumers that start together land in
/// one generation, instead of the first forming generation 1 alone and each
/// later one forcing another round.
#[test]
fn initial_rebalance_delay_puts_members_that_start_together_in_one_generation() {
    let broker = BrokerProcess::start(&["--group-initial-rebalance-delay-ms", "1500"]);
    let mut conns: Vec<RawConn> = (0..3).map(|_| RawConn::connect(&broker.bootstrap())).collect();
    let ids: Vec<String> = conns.iter_mut().map(|c| member_id(c, "together")).collect();
    let started = std::time::Instant::now();
    let sent: Vec<i32> =
        conns.iter_mut().zip(&ids).map(|(c, id)| c.send(ApiKey::JoinGroup, 7, &join_request("together", id))).collect();
    let answers: Vec<JoinGroupResponse> =
        conns.iter_mut().zip(sent).map(|(c, id)| c.recv(ApiKey::JoinGroup, 7, id)).collect();
    assert!(started.elapsed() >= std::time::Duration::from_millis(1_400), "the first join waited for the delay");
    for a in &answers {
        assert_eq!((a.error_code, a.generation_id), (0, 1), "one generation for all three");
    }
    let leader = answers.iter().find(|a| a.leader == a.member_id).expect("one of them leads");
    assert_eq!(leader.members.len(), 3, "the leader assigns to all three");
}

/// Kafka accepts a member's OffsetCommit while the group prepares a
/// rebalance (a cooperative consumer still owns and commits its partitions
/// until it rejoins); only between the join and the assignment is it
/// REBALANCE_IN_PROGRESS.
#[test]
fn offsets_commit_while_a_rebalance_is_prepared_not_while_it_completes() {
    let broker = BrokerProcess::start(&[]);
    let mut a = RawConn::connect(&broker.bootstrap());
    let mut b = RawConn::connect(&broker.bootstrap());
    fjord_compat_tests::wire::create_topic(&mut a, "prep", 1, &[]);
    let a_id = member_id(&mut a, "prep");
    let joined: JoinGroupResponse = a.call(ApiKey::JoinGroup, 7, &join_request("prep", &a_id));
    assert_eq!(joined.error_code, 0);
    assert_eq!(sync_in(&mut a, "prep", &a_id, joined.generation_id, true).error_code, 0);
    assert_eq!(commit(&mut a, "prep", joined.generation_id, &a_id, "prep", 5), 0);

    // B's join puts the group in PreparingRebalance until A rejoins.
    let b_id = member_id(&mut b, "prep");
    let b_join = b.send(ApiKey::JoinGroup, 7, &join_request("prep", &b_id));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while describe(&mut a, "prep") != ("PreparingRebalance".to_string(), 2) {
        assert!(std::time::Instant::now() < deadline, "B's join never started a rebalance");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(commit(&mut a, "prep", joined.generation_id, &a_id, "prep", 7), 0, "accepted while preparing");
    assert_eq!(committed(&mut a, "prep", "prep"), 7);

    // Both rejoin: CompletingRebalance until the leader's SyncGroup.
    let a_round: JoinGroupResponse = a.call(ApiKey::JoinGroup, 7, &join_request("prep", &a_id));
    let b_round: JoinGroupResponse = b.recv(ApiKey::JoinGroup, 7, b_join);
    assert_eq!((a_round.error_code, b_round.error_code), (0, 0));
    assert_eq!(describe(&mut a, "prep").0, "CompletingRebalance");
    assert_eq!(commit(&mut a, "prep", a_round.generation_id, &a_id, "prep", 9), 27, "REBALANCE_IN_PROGRESS");
    // The stale generation is fenced whatever the state.
    assert_eq!(commit(&mut a, "prep", joined.generation_id, &a_id, "prep", 9), 22, "ILLEGAL_GENERATION");
    assert_eq!(committed(&mut a, "prep", "prep"), 7);
}
