//! Records through a cluster of three `fjord` processes: every partition is a Raft group, its
//! leader takes writes and serves reads up to the high watermark (the commit index), followers
//! send clients to the leader, and a leader's death loses no acknowledged record.
//!
//! The fault test runs the Jepsen-style workload of `jepsen_single.rs` (idempotent librdkafka
//! producers, acks=all, a tailing consumer, a read-back and the checker) while the processes
//! that lead partitions are SIGKILLed and restarted one after another.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fjord_compat_tests::cluster::LocalCluster;
use fjord_compat_tests::jepsen::{create_topic, now_ns, stop_and_judge, Run, Workload};
use fjord_compat_tests::proxy::LinkMode;
use fjord_compat_tests::wire::{
    batch, describe_config, fetch, fetch_version, produce, produce_request, topic_metadata,
};
use fjord_compat_tests::{produce_following, wait_until, IdempotentProducer, RawConn, LEADER_MOVED};
use kafka_protocol::messages::{ApiKey, ListOffsetsResponse, ProduceResponse};

const NODES: usize = 3;
const DEADLINE: Duration = Duration::from_secs(30);
const NOT_LEADER_OR_FOLLOWER: i16 = 6;

/// The values of the data records (not control batches) in fetched bytes, with their offsets.
fn records(fetched: &Option<Bytes>) -> Vec<(i64, Bytes)> {
    let Some(bytes) = fetched else { return Vec::new() };
    let mut buf = bytes.clone();
    let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut buf).expect("decode fetched batches");
    sets.into_iter()
        .flat_map(|set| set.records)
        .filter(|r| !r.control)
        .map(|r| (r.offset, r.value.unwrap_or_default()))
        .collect()
}

/// Node index of partition `p`'s leader once every node of `alive` shows one live leader with
/// at least `isr` replicas in sync.
fn leader_of(cluster: &LocalCluster, alive: &[usize], topic: &str, p: i32, isr: usize) -> usize {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let views: Vec<_> = alive.iter().map(|i| cluster.leaders(*i, topic)).collect();
        let first = views[0].iter().find(|(idx, ..)| *idx == p).copied();
        if let Some((_, l, n)) = first {
            if l >= 1
                && n >= isr
                && alive.contains(&((l - 1) as usize))
                && views.iter().all(|v| v.iter().find(|(idx, ..)| *idx == p) == first.as_ref())
            {
                return (l - 1) as usize;
            }
        }
        assert!(Instant::now() < deadline, "partition {p}: no leader every live node shows: {views:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connection to partition `p`'s leader as `leader_of` finds it, each time it is called:
/// where a client sends its next try after the leadership moved.
fn at_leader<'a>(
    cluster: &'a LocalCluster,
    alive: &'a [usize],
    topic: &'a str,
    p: i32,
) -> impl FnMut() -> RawConn + 'a {
    move || cluster.conn(leader_of(cluster, alive, topic, p, 1))
}

/// Reads partition `p` from its leader among `alive` (looked up at each try) until `n` records
/// are there (the high watermark covers them): a new leader serves reads once it has committed
/// an entry of its own term.
fn read_all(cluster: &LocalCluster, alive: &[usize], topic: &str, p: i32, n: usize) -> Vec<(i64, Bytes)> {
    let mut got = Vec::new();
    wait_until(DEADLINE, "the records readable from the leader", || {
        let r = fetch(&mut cluster.conn(leader_of(cluster, alive, topic, p, 1)), topic, p, 0, false);
        got = records(&r.records);
        r.error_code == 0 && got.len() >= n
    });
    got
}

/// ListOffsets of partition 0 of `topic` at `timestamp` (-1 latest, -2 earliest): the offset and
/// the leader epoch the node answers at; None when it answers with an error (it does not lead).
fn offset_at(conn: &mut RawConn, topic: &str, timestamp: i64) -> Option<(i64, i32)> {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::{BrokerId, ListOffsetsRequest, TopicName};
    let mut p = ListOffsetsPartition::default();
    p.partition_index = 0;
    p.timestamp = timestamp;
    let mut t = ListOffsetsTopic::default();
    t.name = TopicName(fjord_compat_tests::wire::s(topic));
    t.partitions = vec![p];
    let mut req = ListOffsetsRequest::default();
    req.replica_id = BrokerId(-1);
    req.topics = vec![t];
    let r: ListOffsetsResponse = conn.try_call(ApiKey::ListOffsets, 7, &req)?;
    let part = &r.topics[0].partitions[0];
    (part.error_code == 0).then_some((part.offset, part.leader_epoch))
}

/// `offset_at` on partition 0's leader among `alive`, looked up again until one answers.
fn leader_offset(cluster: &LocalCluster, alive: &[usize], topic: &str, timestamp: i64) -> i64 {
    let mut found = -1;
    wait_until(DEADLINE, "ListOffsets answered by the leader", || {
        let leader = leader_of(cluster, alive, topic, 0, 1);
        offset_at(&mut cluster.conn(leader), topic, timestamp).map(|(o, _)| found = o).is_some()
    });
    found
}

#[test]
fn the_leader_takes_writes_and_serves_committed_reads_and_a_new_leader_has_them_all() {
    let mut cluster = LocalCluster::start(NODES);
    cluster.wait_formed(DEADLINE);
    let topic = "orders";
    create_topic(&cluster.bootstrap(), topic, 1, 3).expect("create topic");
    let all: Vec<usize> = (0..NODES).collect();
    leader_of(&cluster, &all, topic, 0, 3);
    // Writes come from an idempotent producer, as clients write: a batch sent again to the next
    // leader (an election under load can move the leadership at any time) is stored once.
    let mut producer = IdempotentProducer::new(|| cluster.conn(0));

    // The leader answers an acks=all write once the replicas committed it.
    let first: Vec<&[u8]> = vec![b"a", b"b", b"c"];
    let first_batch = producer.batch(topic, 0, &first, now_ms());
    let (code, base) =
        produce_following(at_leader(&cluster, &all, topic, 0), &produce_request(topic, 0, first_batch.clone()));
    assert_eq!(code, 0, "produce to the leader");
    assert!(base >= 0);
    // A follower refuses writes, and reads from clients that predate KIP-392 (Fetch v10): the
    // client must go to the leader. A v11+ consumer fetch it serves, up to its own high
    // watermark (never past what the leader committed). The follower is a node other than the
    // leader as every node shows it just before; should the leadership have moved to it in
    // between, another pair is asked. (The write it is sent is the first batch again, which a
    // leader only answers as a copy: nothing more is stored either way.)
    wait_until(DEADLINE, "a follower to refuse writes and old fetches and to serve consumer fetches", || {
        let follower = (leader_of(&cluster, &all, topic, 0, 3) + 1) % NODES;
        let (code, _) = produce(&mut cluster.conn(follower), topic, 0, first_batch.clone());
        if code != NOT_LEADER_OR_FOLLOWER
            || fetch_version(&mut cluster.conn(follower), topic, 0, 0, false, 10).error_code != NOT_LEADER_OR_FOLLOWER
        {
            return false;
        }
        let from_follower = fetch(&mut cluster.conn(follower), topic, 0, 0, false);
        let held: Vec<Bytes> = records(&from_follower.records).into_iter().map(|(_, v)| v).collect();
        assert!(held.len() <= first.len() && held.iter().zip(&first).all(|(a, b)| a.as_ref() == *b), "{held:?}");
        // A v12 consumer fetch from a follower is answered.
        from_follower.error_code == 0
    });

    // Reads show the records at the offsets the write returned, and the end is past them.
    let got = read_all(&cluster, &all, topic, 0, 3);
    let values: Vec<&[u8]> = got.iter().map(|(_, v)| v.as_ref()).collect();
    assert_eq!(values, first);
    assert_eq!(got[0].0, base);
    let end = leader_offset(&cluster, &all, topic, -1);
    assert!(end > got[2].0, "ListOffsets(latest) {end} is past the last record {}", got[2].0);

    // acks=1 and acks=0 writes land too (acks=0 gets no answer; the next read shows it).
    let mut req = produce_request(topic, 0, producer.batch(topic, 0, &[b"d"], now_ms()));
    req.acks = 1;
    assert_eq!(produce_following(at_leader(&cluster, &all, topic, 0), &req).0, 0, "acks=1");
    let mut req = produce_request(topic, 0, producer.batch(topic, 0, &[b"e"], now_ms()));
    req.acks = 0;
    // A node that no longer leads drops an acks=0 write without a word, so it goes to the
    // leader with the leader epoch it answers ListOffsets at, and again (the same batch, stored
    // once) only if that node has stopped leading at that epoch since: the write may then have
    // been dropped. While it leads at that epoch, the write must show.
    let mut sent: Option<(usize, i32, RawConn)> = None;
    let mut got = Vec::new();
    wait_until(DEADLINE, "the acks=0 write readable from the leader", || {
        let still = sent.as_ref().is_some_and(|(to, epoch, _)| {
            offset_at(&mut cluster.conn(*to), topic, -1).is_some_and(|(_, now)| now == *epoch)
        });
        if !still {
            let leader = leader_of(&cluster, &all, topic, 0, 1);
            let Some((_, epoch)) = offset_at(&mut cluster.conn(leader), topic, -1) else { return false };
            // Kept open until the write shows, so that nothing cuts it short.
            let mut conn = cluster.conn(leader);
            conn.send(ApiKey::Produce, 9, &req);
            sent = Some((leader, epoch, conn));
        }
        let Some((to, ..)) = &sent else { return false };
        let r = fetch(&mut cluster.conn(*to), topic, 0, 0, false);
        got = records(&r.records);
        r.error_code == 0 && got.len() >= 5
    });
    let values: Vec<&[u8]> = got.iter().map(|(_, v)| v.as_ref()).collect();
    assert_eq!(values, vec![&b"a"[..], b"b", b"c", b"d", b"e"]);

    // The leader's process dies: another replica leads, with every record at its offset.
    let leader = leader_of(&cluster, &all, topic, 0, 3);
    cluster.nodes[leader].kill9();
    let alive: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    let next = leader_of(&cluster, &alive, topic, 0, 2);
    assert_ne!(next, leader);
    assert_eq!(read_all(&cluster, &alive, topic, 0, 5), got, "the new leader serves the same records");
    let (code, base) = producer.send(at_leader(&cluster, &alive, topic, 0), topic, 0, &[b"f"], now_ms());
    assert_eq!(code, 0, "produce to the new leader");
    assert!(base > got[4].0);

    // The old leader comes back as a follower and catches up: kill the new leader too, and
    // whoever leads then (the old leader or the third node) has all six.
    cluster.nodes[leader].restart();
    leader_of(&cluster, &all, topic, 0, 3);
    cluster.nodes[next].kill9();
    let alive: Vec<usize> = all.iter().copied().filter(|i| *i != next).collect();
    let third = leader_of(&cluster, &alive, topic, 0, 2);
    let values: Vec<Bytes> = read_all(&cluster, &alive, topic, 0, 6).into_iter().map(|(_, v)| v).collect();
    assert_eq!(values, ["a", "b", "c", "d", "e", "f"].map(|v| Bytes::from_static(v.as_bytes())));

    // With two of three replicas down nothing is acknowledged: the write times out (or the
    // lone replica is no longer leader) rather than being answered.
    let lone = alive.iter().copied().find(|i| *i != third).expect("two alive");
    cluster.nodes[lone].kill9();
    let mut req = produce_request(topic, 0, batch(&[b"never acknowledged"], 1_000));
    req.timeout_ms = 1000;
    let r: ProduceResponse = cluster.conn(third).call(ApiKey::Produce, 9, &req);
    let code = r.responses[0].partition_responses[0].error_code;
    assert!(code == 7 || code == NOT_LEADER_OR_FOLLOWER, "REQUEST_TIMED_OUT or NOT_LEADER_OR_FOLLOWER, got {code}");
    let t = topic_metadata(&mut cluster.conn(third), topic, false);
    assert_eq!(t.partitions.len(), 1);
}

const PARTITIONS: i32 = 3;
const PRODUCERS: u32 = 2;
const KILLS: usize = 3;
/// Acknowledgements each cycle waits for before its kill, and again while the node is down
/// (proof that the partitions it led moved and the producers followed).
const ACKS_PER_CYCLE: u64 = 1500;

/// Creates `topic` (replicated on every node), waits for its leaders, and starts the fault
/// tests' workload on it; `request_timeout_ms` shortens librdkafka's 30 s request timeout, for
/// faults that leave a leader reachable but unable to answer.
fn start_workload(
    cluster: &LocalCluster,
    topic: &str,
    request_timeout_ms: Option<&str>,
) -> (Workload, tempfile::TempDir, Run) {
    // Every node holds a replica of every partition.
    let n = cluster.nodes.len();
    create_topic(&cluster.bootstrap(), topic, PARTITIONS, n as i32).expect("create topic");
    let all: Vec<usize> = (0..n).collect();
    for p in 0..PARTITIONS {
        leader_of(cluster, &all, topic, p, n);
    }
    let mut w = Workload::new(&cluster.bootstrap(), topic, PARTITIONS, PRODUCERS);
    if let Some(ms) = request_timeout_ms {
        w.overrides = vec![("request.timeout.ms".into(), ms.into())];
    }
    let work = tempfile::tempdir().expect("temp dir");
    let run = Run::start(&w, &work.path().join("history.jsonl")).expect("start the workload");
    (w, work, run)
}

#[test]
fn acknowledged_records_survive_the_loss_of_partition_leaders() {
    let started = Instant::now();
    let mut cluster = LocalCluster::start(NODES);
    cluster.wait_formed(DEADLINE);
    let (w, work, run) = start_workload(&cluster, "jepsen-cluster", None);
    let topic = "jepsen-cluster";
    let all: Vec<usize> = (0..NODES).collect();
    let mut kills_ns = Vec::new();
    for cycle in 0..KILLS {
        run.wait_acked(run.acked() + ACKS_PER_CYCLE, DEADLINE).unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        wait_until(Duration::from_secs(10), "records in flight", || run.in_flight() > 0);
        // The process leading partition `cycle` dies with records in flight.
        let victim = leader_of(&cluster, &all, topic, cycle as i32 % PARTITIONS, 1);
        cluster.nodes[victim].kill9();
        kills_ns.push(now_ns());
        run.log_fault(&format!("SIGKILL node {}", victim + 1));
        println!(
            "cycle {cycle}: killed node {} with {} acknowledged, {} in flight",
            victim + 1,
            run.acked(),
            run.in_flight()
        );
        // The two others carry on: its partitions get new leaders and the producers follow.
        run.wait_acked(run.acked() + ACKS_PER_CYCLE, DEADLINE)
            .unwrap_or_else(|e| panic!("cycle {cycle}: no progress with node {} down: {e}", victim + 1));
        cluster.nodes[victim].restart();
        run.log_fault(&format!("restarted node {}", victim + 1));
        // Back in sync before the next kill, so that a majority always holds every record.
        for p in 0..PARTITIONS {
            leader_of(&cluster, &all, topic, p, 3);
        }
    }
    run.wait_acked(run.acked() + ACKS_PER_CYCLE, DEADLINE).expect("acks after the last restart");
    assert!(run.tail_reads() > 0, "the tailing consumer read nothing");
    let j = stop_and_judge(run, &w, work, &kills_ns, started);
    assert!(j.crossed > 0, "no record crossed a kill");
    assert_eq!(j.report.unknown, 0, "every record got an answer");
    assert!(j.verdict.stats.acked as u64 >= (2 * KILLS as u64 + 1) * ACKS_PER_CYCLE, "{}", j.verdict);
    assert_eq!(j.verdict.stats.acked as u64, j.report.acked);
}

/// Faults of the network rather than the process: the node leading a partition is cut off from
/// the other nodes (its connections reset) or blackholed (its packets silently held) while
/// clients still reach it, and then healed. Its writes can no longer commit; the others elect
/// new leaders, the producers move to them, and when the node returns it drops what it wrote
/// alone. No acknowledged record may be lost, duplicated or reordered.
#[test]
fn acknowledged_records_survive_network_partitions_of_leaders() {
    let started = Instant::now();
    let cluster = LocalCluster::start_proxied(NODES, &[]);
    cluster.wait_formed(DEADLINE);
    // A write to a cut-off leader is answered REQUEST_TIMED_OUT after 3 s, and retried against
    // the new leader.
    let (w, work, run) = start_workload(&cluster, "jepsen-partitions", Some("3000"));
    let topic = "jepsen-partitions";
    let all: Vec<usize> = (0..NODES).collect();
    let mut faults_ns = Vec::new();
    for cycle in 0..KILLS {
        run.wait_acked(run.acked() + ACKS_PER_CYCLE, DEADLINE).unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        let partition = cycle as i32 % PARTITIONS;
        let victim = leader_of(&cluster, &all, topic, partition, 3);
        let mode = if cycle % 2 == 0 { LinkMode::Cut } else { LinkMode::Blackhole };
        wait_until(Duration::from_secs(10), "records in flight", || run.in_flight() > 0);
        cluster.isolate(victim, mode);
        faults_ns.push(now_ns());
        run.log_fault(&format!("{mode:?} node {}", victim + 1));
        println!("cycle {cycle}: {mode:?} node {} with {} acknowledged", victim + 1, run.acked());
        // The others elect a new leader of the partition it led while it is cut off, and the
        // producers carry on.
        let alive: Vec<usize> = all.iter().copied().filter(|i| *i != victim).collect();
        let next = leader_of(&cluster, &alive, topic, partition, 2);
        assert_ne!(next, victim);
        run.wait_acked(run.acked() + ACKS_PER_CYCLE, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("cycle {cycle}: no progress with node {} cut off: {e}", victim + 1));
        cluster.isolate(victim, LinkMode::Pass);
        run.log_fault(&format!("healed node {}", victim + 1));
        for p in 0..PARTITIONS {
            leader_of(&cluster, &all, topic, p, 3);
        }
    }
    run.wait_acked(run.acked() + ACKS_PER_CYCLE, DEADLINE).expect("acks after the last heal");
    let j = stop_and_judge(run, &w, work, &faults_ns, started);
    assert!(j.crossed > 0, "no record crossed a fault");
    assert_eq!(j.report.unknown, 0, "every record got an answer");
    assert!(j.verdict.stats.acked as u64 >= (2 * KILLS as u64 + 1) * ACKS_PER_CYCLE, "{}", j.verdict);
}

/// Waits until the counts of the recovery lines in a wiped node's log (replicas that began
/// recovering, recovered, were released) satisfy `done`; shows those lines if they never do.
fn wait_for_recovery(node: &fjord_compat_tests::BrokerProcess, done: impl Fn(usize, usize, usize) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let began = node.log_count("replica starts recovering");
        let recovered = node.log_count("replica recovered: it votes again");
        let released = node.log_count("replica released from recovery");
        if done(began, recovered, released) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{recovered} of {began} recovering replicas recovered ({released} released) on the wiped node; its log:\n{}",
            std::fs::read_to_string(node.log_path())
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("recover"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Process faults other than a kill: the leading node paused (SIGSTOP) while the others elect
/// new leaders, then resumed to find it no longer leads (it steps down and drops what it wrote
/// alone); and a node whose disk was lost, restarted empty, filled again by the others.
#[test]
fn acknowledged_records_survive_a_paused_leader_and_a_lost_disk() {
    let started = Instant::now();
    let mut cluster = LocalCluster::start(NODES);
    cluster.wait_formed(DEADLINE);
    // A request to the paused node is given up after 3 s.
    let (w, work, run) = start_workload(&cluster, "jepsen-pause-wipe", Some("3000"));
    let topic = "jepsen-pause-wipe";
    let all: Vec<usize> = (0..NODES).collect();
    let mut faults_ns = Vec::new();
    for (cycle, wipe) in [false, true, false].into_iter().enumerate() {
        run.wait_acked(run.acked() + ACKS_PER_CYCLE, DEADLINE).unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        wait_until(Duration::from_secs(10), "records in flight", || run.in_flight() > 0);
        let partition = cycle as i32 % PARTITIONS;
        let victim = leader_of(&cluster, &all, topic, partition, 3);
        if wipe {
            cluster.nodes[victim].kill9();
            cluster.nodes[victim].wipe();
        } else {
            cluster.nodes[victim].pause();
        }
        faults_ns.push(now_ns());
        let what = if wipe { "lost the disk of" } else { "paused" };
        run.log_fault(&format!("{what} node {}", victim + 1));
        println!("cycle {cycle}: {what} node {} with {} acknowledged", victim + 1, run.acked());
        let alive: Vec<usize> = all.iter().copied().filter(|i| *i != victim).collect();
        assert_ne!(leader_of(&cluster, &alive, topic, partition, 2), victim);
        if wipe {
            run.wait_acked(run.acked() + ACKS_PER_CYCLE, Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("cycle {cycle}: no progress with node {} out: {e}", victim + 1));
            cluster.nodes[victim].restart();
        } else {
            // The paused node resumes once the others have elected new leaders: it finds itself
            // deposed. (Kept paused, it would hold librdkafka's in-flight requests until
            // message.timeout.ms; the idempotent producer then bumps its epoch and may write
            // those batches again as new records, librdkafka issue #4953, which the checker
            // would count against the broker.) Progress with a leader down is what the SIGKILL
            // and blackhole tests show.
            cluster.nodes[victim].resume();
        }
        run.log_fault(&format!("node {} back", victim + 1));
        if !wipe {
            run.wait_acked(run.acked() + ACKS_PER_CYCLE, Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("cycle {cycle}: no progress after node {} resumed: {e}", victim + 1));
        }
        if wipe {
            // The emptied node lost logs that counted towards commits: it held back its votes for
            // the metadata quorum and for each partition it replicates until it had caught up.
            let node = &cluster.nodes[victim];
            // (The node's first start, a new cluster, released its metadata replica instead.)
            wait_for_recovery(node, |began, recovered, released| {
                recovered > PARTITIONS as usize && recovered + released == began
            });
        }
        // Every replica in sync again, the emptied one included.
        for p in 0..PARTITIONS {
            leader_of(&cluster, &all, topic, p, 3);
        }
    }
    run.wait_acked(run.acked() + ACKS_PER_CYCLE, DEADLINE).expect("acks after the last fault");
    let j = stop_and_judge(run, &w, work, &faults_ns, started);
    assert!(j.crossed > 0, "no record crossed a fault");
    assert_eq!(j.report.unknown, 0, "every record got an answer");
}

/// IncrementalAlterConfigs SET of one topic config: the error code and message.
fn alter_topic_config(
    conn: &mut fjord_compat_tests::RawConn,
    topic: &str,
    key: &str,
    value: &str,
) -> (i16, Option<String>) {
    use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
    use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};
    let mut c = AlterableConfig::default();
    c.name = fjord_compat_tests::wire::s(key);
    c.value = Some(fjord_compat_tests::wire::s(value));
    let mut res = AlterConfigsResource::default();
    res.resource_type = 2;
    res.resource_name = fjord_compat_tests::wire::s(topic);
    res.configs = vec![c];
    let mut req = IncrementalAlterConfigsRequest::default();
    req.resources = vec![res];
    let r: IncrementalAlterConfigsResponse = conn.call(ApiKey::IncrementalAlterConfigs, 1, &req);
    (r.responses[0].error_code, r.responses[0].error_message.as_ref().map(|m| m.to_string()))
}

/// A topic config altered through any node goes through the controller: every node describes
/// it, and the partition's leader applies it to the writes it takes.
#[test]
fn topic_configs_altered_through_any_node_apply_on_the_leader() {
    let cluster = LocalCluster::start(NODES);
    cluster.wait_formed(DEADLINE);
    let topic = "configured";
    create_topic(&cluster.bootstrap(), topic, 1, 3).expect("create topic");
    let all: Vec<usize> = (0..NODES).collect();
    leader_of(&cluster, &all, topic, 0, 3);
    let big = vec![b'x'; 3000];
    // Each write goes to the partition's leader at the time: an election under load can move
    // the leadership at any time. (The nodes the configs go through are the leader and a
    // follower as they were just before; either answers the same if that changed since.)
    let (code, _) =
        produce_following(at_leader(&cluster, &all, topic, 0), &produce_request(topic, 0, batch(&[&big], 1_000)));
    assert_eq!(code, 0, "under the default limit");

    let follower = (leader_of(&cluster, &all, topic, 0, 1) + 1) % NODES;
    let (code, message) = alter_topic_config(&mut cluster.conn(follower), topic, "max.message.bytes", "2000");
    assert_eq!(code, 0, "{message:?}");
    wait_until(DEADLINE, "every node to describe the new value", || {
        all.iter()
            .all(|i| describe_config(&mut cluster.conn(*i), topic, "max.message.bytes").0.as_deref() == Some("2000"))
    });
    const MESSAGE_TOO_LARGE: i16 = 10;
    wait_until(DEADLINE, "the leader to refuse a batch over the new limit", || {
        let leader = leader_of(&cluster, &all, topic, 0, 1);
        produce(&mut cluster.conn(leader), topic, 0, batch(&[&big], 1_000)).0 == MESSAGE_TOO_LARGE
    });
    // A config that fails validation is refused by whichever node is asked, and nothing changes.
    let leader = leader_of(&cluster, &all, topic, 0, 1);
    let follower = (leader + 1) % NODES;
    let (code, message) = alter_topic_config(&mut cluster.conn(follower), topic, "max.message.bytes", "-5");
    assert_eq!(code, 40, "INVALID_CONFIG: {message:?}");
    assert_eq!(describe_config(&mut cluster.conn(leader), topic, "max.message.bytes").0.as_deref(), Some("2000"));

    let (code, message) = alter_topic_config(&mut cluster.conn(leader), topic, "max.message.bytes", "1048588");
    assert_eq!(code, 0, "{message:?}");
    wait_until(DEADLINE, "the leader to take the batch again", || {
        let leader = leader_of(&cluster, &all, topic, 0, 1);
        produce(&mut cluster.conn(leader), topic, 0, batch(&[&big], 1_000)).0 == 0
    });
}

/// Five nodes, every partition on all five: with two of them killed at once (a partition's
/// leader among them) the other three are a majority, elect leaders and go on taking writes;
/// both come back and catch up. No acknowledged record may be lost, duplicated or reordered.
#[test]
fn five_nodes_lose_two_at_once_and_keep_every_acknowledged_record() {
    const FIVE: usize = 5;
    let started = Instant::now();
    let mut cluster = LocalCluster::start(FIVE);
    cluster.wait_formed(DEADLINE);
    let topic = "jepsen-five";
    let (w, work, run) = start_workload(&cluster, topic, None);
    let all: Vec<usize> = (0..FIVE).collect();
    let mut faults_ns = Vec::new();
    for cycle in 0..2 {
        run.wait_acked(run.acked() + ACKS_PER_CYCLE, DEADLINE).unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        wait_until(Duration::from_secs(10), "records in flight", || run.in_flight() > 0);
        let leader = leader_of(&cluster, &all, topic, cycle, FIVE);
        let other = (leader + 1 + cycle as usize) % FIVE;
        cluster.nodes[leader].kill9();
        cluster.nodes[other].kill9();
        faults_ns.push(now_ns());
        run.log_fault(&format!("SIGKILL nodes {} and {}", leader + 1, other + 1));
        println!("cycle {cycle}: killed nodes {} and {} with {} acknowledged", leader + 1, other + 1, run.acked());
        let alive: Vec<usize> = all.iter().copied().filter(|i| *i != leader && *i != other).collect();
        for p in 0..PARTITIONS {
            leader_of(&cluster, &alive, topic, p, 3);
        }
        run.wait_acked(run.acked() + ACKS_PER_CYCLE, DEADLINE)
            .unwrap_or_else(|e| panic!("cycle {cycle}: no progress with two of five down: {e}"));
        cluster.nodes[leader].restart();
        cluster.nodes[other].restart();
        for p in 0..PARTITIONS {
            leader_of(&cluster, &all, topic, p, FIVE);
        }
    }
    run.wait_acked(run.acked() + ACKS_PER_CYCLE, DEADLINE).expect("acks after the last restart");
    let j = stop_and_judge(run, &w, work, &faults_ns, started);
    assert!(j.crossed > 0, "no record crossed a fault");
    assert_eq!(j.report.unknown, 0, "every record got an answer");
}

/// The data records (offset, key, value) node index `from` serves of partition 0 of `topic`
/// between `start` and `end`, fetched on until `end` (a fetch answers from one segment at a
/// time); None if a fetch fails.
fn read_range(
    cluster: &LocalCluster,
    from: usize,
    topic: &str,
    start: i64,
    end: i64,
) -> Option<Vec<(i64, Bytes, Bytes)>> {
    let mut got = Vec::new();
    let mut at = start;
    while at < end {
        let r = fetch(&mut cluster.conn(from), topic, 0, at, false);
        if r.error_code != 0 || r.records.as_ref().is_none_or(|b| b.is_empty()) {
            return None;
        }
        let mut buf = r.records.clone().unwrap_or_default();
        let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut buf).expect("batches");
        // A read starts at the batch holding `at`: records before it were read already. A
        // compacted batch, or a filler (a control batch), moves the reader past every offset
        // it spans.
        let from = at;
        for rec in sets.into_iter().flat_map(|set| set.records) {
            if !rec.control && rec.offset >= from {
                got.push((rec.offset, rec.key.unwrap_or_default(), rec.value.unwrap_or_default()));
            }
            at = at.max(rec.offset + 1);
        }
    }
    Some(got)
}

/// The first four bytes (the record number) of each record partition 0 of `topic` holds on its
/// leader among `alive`, read from its log start.
fn retained(cluster: &LocalCluster, alive: &[usize], topic: &str) -> Vec<String> {
    retained_at(cluster, alive, topic).into_iter().map(|(_, n)| n).collect()
}

/// `retained`, each record number with its offset. The leader is looked up again at each try
/// (an election under load can move the leadership at any time).
fn retained_at(cluster: &LocalCluster, alive: &[usize], topic: &str) -> Vec<(i64, String)> {
    let mut got = Vec::new();
    wait_until(DEADLINE, "the retained records readable from the leader", || {
        let from = leader_of(cluster, alive, topic, 0, 1);
        let mut conn = cluster.conn(from);
        let (Some((start, _)), Some((end, _))) = (offset_at(&mut conn, topic, -2), offset_at(&mut conn, topic, -1))
        else {
            return false;
        };
        match read_range(cluster, from, topic, start, end) {
            Some(records) => got = records,
            None => return false,
        }
        !got.is_empty() && got.iter().all(|(o, _, _)| *o >= start)
    });
    got.iter().map(|(o, _, v)| (*o, String::from_utf8_lossy(&v[..4]).into_owned())).collect()
}

/// The directory of node index `i`'s replica of partition 0 of `topic`, if it has one.
fn replica_dir(cluster: &LocalCluster, i: usize, topic: &str) -> Option<std::path::PathBuf> {
    std::fs::read_dir(cluster.nodes[i].data_dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with(&format!("{topic}-0.g")))
        .map(|e| e.path())
}

/// The base offsets of the segments node index `i` holds of partition 0 of `topic`.
fn segment_bases(cluster: &LocalCluster, i: usize, topic: &str) -> Vec<i64> {
    let Some(dir) = replica_dir(cluster, i, topic) else { return Vec::new() };
    let mut bases: Vec<i64> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .filter_map(|e| e.path().file_stem()?.to_str()?.parse().ok())
        .collect();
    bases.sort_unstable();
    bases
}

/// Retention on a replicated partition: every replica lets go of the segments retention.bytes
/// expires, through Raft (a snapshot at their last entry, then a purge of the Raft log), keeping
/// the newest records readable at their offsets. A replica that was down meanwhile finds the
/// entries it needs purged: it installs the leader's snapshot, which ships nothing, and starts
/// its log where the leader's now starts. Whichever replica leads next serves the same records.
#[test]
fn retention_deletes_old_segments_on_every_replica_and_a_returning_one_starts_at_the_leaders_log_start() {
    let mut cluster = LocalCluster::start_with(NODES, &["--log-retention-check-interval-ms", "200"]);
    cluster.wait_formed(DEADLINE);
    let topic = "short-lived";
    let configs = [("segment.bytes", "4096"), ("retention.bytes", "8192")];
    let created = fjord_compat_tests::wire::create_topic(&mut cluster.conn(0), topic, 1, &configs);
    assert_eq!(created.topics[0].error_code, 0, "{:?}", created.topics[0].error_message);
    let all: Vec<usize> = (0..NODES).collect();
    let leader = leader_of(&cluster, &all, topic, 0, 3);
    // A follower is down while the records come and go. The two others take the writes, each
    // sent to whichever of them leads at the time, by an idempotent producer (a batch sent again
    // after the leadership moved is stored once).
    let down = (leader + 1) % NODES;
    cluster.nodes[down].kill9();
    let live: Vec<usize> = all.iter().copied().filter(|i| *i != down).collect();
    let mut producer = IdempotentProducer::new(|| cluster.conn(leader));
    let value = |i: usize| format!("{i:04}{}", "x".repeat(1020));
    const RECORDS: usize = 60;
    for i in 0..RECORDS {
        let v = value(i);
        let (code, _) = producer.send(at_leader(&cluster, &live, topic, 0), topic, 0, &[v.as_bytes()], now_ms());
        assert_eq!(code, 0, "record {i}");
    }
    wait_until(DEADLINE, "the log start to move on the leader and segments to go on the live replicas", || {
        let leader = leader_of(&cluster, &live, topic, 0, 1);
        offset_at(&mut cluster.conn(leader), topic, -2).is_some_and(|(start, _)| start > 0)
            && live.iter().all(|i| segment_bases(&cluster, *i, topic).len() <= 4)
    });
    // 60 KiB in 4 KiB segments: without retention each replica would hold about 15.
    let kept = retained(&cluster, &live, topic);
    assert!(!kept.is_empty() && kept.len() < RECORDS, "{} records kept", kept.len());
    let expected: Vec<String> = (RECORDS - kept.len()..RECORDS).map(|i| format!("{i:04}")).collect();
    assert_eq!(kept, expected, "the newest records, in order");
    let leader_start = leader_offset(&cluster, &live, topic, -2);

    // The follower returns: its log restarts at the leader's log start (or later, once its own
    // retention runs), holding only retained segments.
    cluster.nodes[down].restart();
    wait_until(DEADLINE, "the returning replica to start at the leader's log start", || {
        let bases = segment_bases(&cluster, down, topic);
        !bases.is_empty() && bases[0] >= leader_start && bases.len() <= 4
    });

    // The leader dies; the next one serves a run of the newest records ending where the old
    // leader's did (its own retention may have kept a little more or less).
    let leader = leader_of(&cluster, &all, topic, 0, 3);
    cluster.nodes[leader].kill9();
    let alive: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    leader_of(&cluster, &alive, topic, 0, 2);
    let after = retained(&cluster, &alive, topic);
    let first: usize = after[0].parse().unwrap();
    let run: Vec<String> = (first..RECORDS).map(|i| format!("{i:04}")).collect();
    assert_eq!(after, run, "the new leader's records, in order");
    assert_eq!(after.last(), expected.last(), "the new leader ends where the old one did");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn delete_records(conn: &mut fjord_compat_tests::RawConn, topic: &str, offset: i64) -> (i16, i64) {
    use kafka_protocol::messages::delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
    use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse, TopicName};
    let mut p = DeleteRecordsPartition::default();
    p.partition_index = 0;
    p.offset = offset;
    let mut t = DeleteRecordsTopic::default();
    t.name = TopicName(fjord_compat_tests::wire::s(topic));
    t.partitions = vec![p];
    let mut req = DeleteRecordsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 10_000;
    let r: DeleteRecordsResponse = conn.call(ApiKey::DeleteRecords, 2, &req);
    let part = &r.topics[0].partitions[0];
    (part.error_code, part.low_watermark)
}

/// DeleteRecords of partition 0 of `topic` up to `offset` at its leader among `alive`, sent again
/// to the leader then after an answer that the leadership moved or the entry was not committed
/// in time (a second request for the same log start changes nothing more): (error code, low
/// watermark).
fn delete_at_leader(cluster: &LocalCluster, alive: &[usize], topic: &str, offset: i64) -> (i16, i64) {
    let mut answer = (-1, -1);
    wait_until(DEADLINE, "DeleteRecords answered by the leader", || {
        answer = delete_records(&mut cluster.conn(leader_of(cluster, alive, topic, 0, 1)), topic, offset);
        !LEADER_MOVED.contains(&answer.0)
    });
    answer
}

/// DeleteRecords on a replicated partition goes through its Raft group: the leader proposes the
/// new log start, every replica takes it when it applies the entry, and the segments wholly
/// below it go with the next retention pass on each replica. A new leader keeps the log start.
#[test]
fn delete_records_moves_the_log_start_on_every_replica() {
    let mut cluster = LocalCluster::start_with(NODES, &["--log-retention-check-interval-ms", "200"]);
    cluster.wait_formed(DEADLINE);
    let topic = "trimmed";
    let created = fjord_compat_tests::wire::create_topic(&mut cluster.conn(0), topic, 1, &[("segment.bytes", "4096")]);
    assert_eq!(created.topics[0].error_code, 0, "{:?}", created.topics[0].error_message);
    let all: Vec<usize> = (0..NODES).collect();
    leader_of(&cluster, &all, topic, 0, 3);
    // Every request that needs the leader goes to the one every node shows at the time (an
    // election under load can move the leadership at any time), and the records come from an
    // idempotent producer (a batch sent again after the leadership moved is stored once).
    let mut producer = IdempotentProducer::new(|| cluster.conn(0));
    const RECORDS: usize = 40;
    for i in 0..RECORDS {
        let v = format!("{i:04}{}", "x".repeat(1020));
        let (code, _) = producer.send(at_leader(&cluster, &all, topic, 0), topic, 0, &[v.as_bytes()], now_ms());
        assert_eq!(code, 0, "record {i}");
    }
    // A follower refuses DeleteRecords. It is asked for offset 0, which a leader answers without
    // a change (the log starts there), should the leadership have moved to it in between.
    wait_until(DEADLINE, "a follower to refuse DeleteRecords", || {
        let follower = (leader_of(&cluster, &all, topic, 0, 3) + 1) % NODES;
        delete_records(&mut cluster.conn(follower), topic, 0).0 == NOT_LEADER_OR_FOLLOWER
    });
    wait_until(DEADLINE, "the leader to refuse an offset past its high watermark", || {
        let leader = leader_of(&cluster, &all, topic, 0, 1);
        let Some((end, _)) = offset_at(&mut cluster.conn(leader), topic, -1) else { return false };
        match delete_records(&mut cluster.conn(leader), topic, end + 1).0 {
            1 => true,
            code if LEADER_MOVED.contains(&code) => false,
            code => {
                panic!("DeleteRecords at {} past the high watermark {end}: {code}, not OFFSET_OUT_OF_RANGE", end + 1)
            }
        }
    });
    // Record numbers are offsets here, apart from Raft's own entries before the first record
    // (and those of elections, which may come between records).
    let first = retained_at(&cluster, &all, topic);
    assert_eq!(first.len(), RECORDS);
    let start_at = first[RECORDS - 15].0;
    assert_eq!(delete_at_leader(&cluster, &all, topic, start_at), (0, start_at));
    assert_eq!(leader_offset(&cluster, &all, topic, -2), start_at);
    let kept = retained(&cluster, &all, topic);
    let last: Vec<String> = first[RECORDS - 15..].iter().map(|(_, n)| n.clone()).collect();
    assert_eq!(kept, last, "the records from the new log start on");
    // An earlier offset than the log start changes nothing.
    assert_eq!(delete_at_leader(&cluster, &all, topic, 3), (0, start_at));
    // Each replica drops the segments wholly below the log start.
    wait_until(DEADLINE, "the segments below the log start gone on every replica", || {
        all.iter().all(|i| {
            let bases = segment_bases(&cluster, *i, topic);
            !bases.is_empty() && bases.iter().filter(|b| **b < start_at).count() <= 1
        })
    });
    // The next leader had applied the log start too.
    let leader = leader_of(&cluster, &all, topic, 0, 3);
    cluster.nodes[leader].kill9();
    let alive: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    let next = leader_of(&cluster, &alive, topic, 0, 2);
    assert!(leader_offset(&cluster, &alive, topic, -2) >= start_at);
    assert_eq!(retained(&cluster, &alive, topic), kept);

    // The coordinators' internal topics are refused, as Kafka refuses them.
    let mut find = kafka_protocol::messages::FindCoordinatorRequest::default();
    find.key_type = 0;
    find.coordinator_keys = vec![fjord_compat_tests::wire::s("some-group")];
    wait_until(DEADLINE, "__consumer_offsets created", || {
        let r: kafka_protocol::messages::FindCoordinatorResponse =
            cluster.conn(next).call(ApiKey::FindCoordinator, 4, &find);
        r.coordinators[0].error_code == 0
    });
    assert_eq!(delete_records(&mut cluster.conn(next), "__consumer_offsets", -1).0, 17, "INVALID_TOPIC_EXCEPTION");
}

/// DescribeConfigs of one broker config on node index `i` (broker id `i + 1`): (value, source).
fn broker_config(cluster: &LocalCluster, i: usize, key: &str) -> Option<(Option<String>, i8)> {
    use kafka_protocol::messages::{describe_configs_request, DescribeConfigsRequest, DescribeConfigsResponse};
    let mut req = DescribeConfigsRequest::default();
    let mut r = describe_configs_request::DescribeConfigsResource::default();
    r.resource_type = 4;
    r.resource_name = fjord_compat_tests::wire::s(&(i + 1).to_string());
    r.configuration_keys = Some(vec![fjord_compat_tests::wire::s(key)]);
    req.resources = vec![r];
    let resp: DescribeConfigsResponse = cluster.conn(i).try_call(ApiKey::DescribeConfigs, 4, &req)?;
    let e = resp.results.first()?.configs.first()?;
    Some((e.value.as_ref().map(|v| v.to_string()), e.config_source))
}

/// Dynamic broker configs in a cluster go through the controller: the cluster-wide default set
/// through one node is in force on every node, a broker's own override on that broker only, and
/// a node that lost its disk gets both back from the metadata.
#[test]
fn dynamic_broker_configs_set_through_one_node_apply_on_every_node() {
    let mut cluster = LocalCluster::start(NODES);
    cluster.wait_formed(DEADLINE);
    let key = "log.cleaner.backoff.ms";
    assert_eq!(fjord_compat_tests::wire::set_config(&mut cluster.conn(0), 4, "", key, "4321"), 0);
    assert_eq!(fjord_compat_tests::wire::set_config(&mut cluster.conn(2), 4, "3", key, "999"), 0);
    // Sources: 2 DYNAMIC_BROKER_CONFIG (the broker's own), 3 DYNAMIC_DEFAULT_BROKER_CONFIG.
    let expected = |i: usize| if i == 2 { (Some("999".to_string()), 2) } else { (Some("4321".to_string()), 3) };
    wait_until(DEADLINE, "every node to show the cluster's broker configs", || {
        (0..NODES).all(|i| broker_config(&cluster, i, key) == Some(expected(i)))
    });
    // A node whose disk is gone gets them from the metadata again. It is the controller
    // quorum's leader: the two others elect a new one, and the emptied voter recovers the
    // metadata log from it before it votes again.
    let mut req = kafka_protocol::messages::MetadataRequest::default();
    req.topics = Some(Vec::new());
    let md: kafka_protocol::messages::MetadataResponse = cluster.conn(0).call(ApiKey::Metadata, 12, &req);
    let victim = usize::try_from(md.controller_id.0 - 1).expect("a controller leader");
    cluster.nodes[victim].kill9();
    cluster.nodes[victim].wipe();
    cluster.nodes[victim].restart();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let seen = broker_config(&cluster, victim, key);
        if seen == Some(expected(victim)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the wiped node shows {seen:?}, not the cluster default; its log:\n{}",
            cluster.nodes[victim].log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Key → (offset, value) of the newest record of each key the leader among `alive` (looked up
/// at each try) serves of partition 0 of `topic`, and how many records it serves, read from
/// offset 0 to the end.
fn served_keys(cluster: &LocalCluster, alive: &[usize], topic: &str) -> (BTreeMap<String, (i64, String)>, usize) {
    let mut records = Vec::new();
    wait_until(DEADLINE, "the records readable to the end", || {
        let from = leader_of(cluster, alive, topic, 0, 1);
        let Some((end, _)) = offset_at(&mut cluster.conn(from), topic, -1) else { return false };
        read_range(cluster, from, topic, 0, end).map(|r| records = r).is_some()
    });
    let text = |b: &Bytes| String::from_utf8(b.to_vec()).unwrap();
    let newest = records.iter().map(|(o, k, v)| (text(k), (*o, text(v)))).collect();
    (newest, records.len())
}

/// Bytes of the segment files node index `i` holds of partition 0 of `topic`.
fn segment_bytes(cluster: &LocalCluster, i: usize, topic: &str) -> u64 {
    let Some(dir) = replica_dir(cluster, i, topic) else { return 0 };
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum()
}

/// Compaction on a replicated partition: every replica compacts what it has applied, each Raft
/// entry keeping its offsets. A replica whose disk was lost refills from its compacted leader
/// (which sends a filler for each entry whose records all went), and whichever replica leads
/// then serves the newest value of every key at the offset it was written at.
#[test]
fn compacted_topics_compact_on_every_replica_and_a_refilled_one_serves_the_same_keys() {
    let mut cluster = LocalCluster::start_with(NODES, &["--log-cleaner-backoff-ms", "200"]);
    cluster.wait_formed(DEADLINE);
    let topic = "compacted-keys";
    let configs = [
        ("cleanup.policy", "compact"),
        ("segment.bytes", "2048"),
        ("min.cleanable.dirty.ratio", "0.01"),
        ("min.compaction.lag.ms", "0"),
    ];
    let created = fjord_compat_tests::wire::create_topic(&mut cluster.conn(0), topic, 1, &configs);
    assert_eq!(created.topics[0].error_code, 0, "{:?}", created.topics[0].error_message);
    let all: Vec<usize> = (0..NODES).collect();
    leader_of(&cluster, &all, topic, 0, 3);
    // 20 keys, each written 25 times: 500 records of their own batches. Each goes to the leader
    // at the time (an election under load can move the leadership at any time), sent again
    // after an answer that it moved. A batch sent again may be stored twice; only its last copy,
    // at the offset answered, counts as the key's newest, as compaction keeps it.
    const KEYS: usize = 20;
    const ROUNDS: usize = 25;
    let mut newest = BTreeMap::new();
    let keyed = |key: &str, value: &str| {
        let b = fjord_storage::batch::build_batch(0, now_ms(), &[(Some(key.as_bytes()), Some(value.as_bytes()))]);
        produce_request(topic, 0, Bytes::from(b))
    };
    for round in 0..ROUNDS {
        for k in 0..KEYS {
            let key = format!("key-{k:02}");
            let value = format!("{key}@{round:02}:{}", "v".repeat(60));
            let (code, offset) = produce_following(at_leader(&cluster, &all, topic, 0), &keyed(&key, &value));
            assert_eq!(code, 0, "{key} round {round}");
            newest.insert(key, (offset, value));
        }
    }
    let written = ROUNDS * KEYS;
    // Each replica cleans its own log: the segments shrink to a fraction of what was written
    // (each record takes over 130 bytes with its batch header).
    wait_until(Duration::from_secs(60), "every replica to compact", || {
        all.iter().all(|i| segment_bytes(&cluster, *i, topic) < (written * 130 / 3) as u64)
    });
    let (served, count) = served_keys(&cluster, &all, topic);
    assert_eq!(served, newest, "the leader serves the newest value of every key at its offset");
    assert!(count < written, "{count} of {written} records still served");

    // A follower loses its disk and refills from the compacted leader.
    let leader = leader_of(&cluster, &all, topic, 0, 3);
    let wiped = (leader + 1) % NODES;
    cluster.nodes[wiped].kill9();
    cluster.nodes[wiped].wipe();
    cluster.nodes[wiped].restart();
    // Its metadata replica first, then the partition's.
    let node = &cluster.nodes[wiped];
    wait_for_recovery(node, |_, recovered, _| recovered >= 2);
    leader_of(&cluster, &all, topic, 0, 3);
    // One more write every replica takes, then the node that led while the follower refilled
    // goes (leading still, or not if an election moved the leadership since).
    let key = "key-00".to_string();
    let value = format!("{key}@last");
    let (code, offset) = produce_following(at_leader(&cluster, &all, topic, 0), &keyed(&key, &value));
    assert_eq!(code, 0);
    newest.insert(key, (offset, value));
    cluster.nodes[leader].kill9();
    let alive: Vec<usize> = all.iter().copied().filter(|i| *i != leader).collect();
    let next = leader_of(&cluster, &alive, topic, 0, 2);
    let (served, _) = served_keys(&cluster, &alive, topic);
    assert_eq!(served, newest, "node {} leads after the old leader died", next + 1);
    // Whichever of the two leads, the refilled replica's own log holds the same: read it from
    // its directory once the node has stopped.
    cluster.nodes[wiped].kill9();
    let dir = replica_dir(&cluster, wiped, topic).expect("the refilled replica's directory");
    let log = fjord_storage::PartitionLog::open_opts(
        &dir,
        fjord_storage::LogConfig::default(),
        fjord_storage::OpenOptions { replicated: true, ..fjord_storage::OpenOptions::default() },
    )
    .expect("open the refilled replica");
    log.set_high_watermark(log.log_end_offset());
    let mut on_disk = BTreeMap::new();
    let mut at = log.log_start_offset();
    while at < log.log_end_offset() {
        let r = log.read(at, 1 << 20, i64::MAX).expect("read the refilled replica");
        let mut buf = r.records.clone();
        for rec in kafka_protocol::records::RecordBatchDecoder::decode_all(&mut buf)
            .expect("batches")
            .into_iter()
            .flat_map(|s| s.records)
        {
            if !rec.control && rec.offset >= at {
                let key = String::from_utf8(rec.key.clone().unwrap_or_default().to_vec()).unwrap();
                let value = String::from_utf8(rec.value.clone().unwrap_or_default().to_vec()).unwrap();
                on_disk.insert(key, (rec.offset, value));
            }
        }
        let mut pos = 0;
        while pos < r.records.len() {
            let h = fjord_storage::batch::BatchHeader::parse(&r.records[pos..]).unwrap();
            at = h.last_offset() + 1;
            pos += h.total_size();
        }
    }
    assert_eq!(on_disk, newest, "the refilled replica holds the newest value of every key at its offset");
}

/// `fjord_fetched_bytes_total` of node index `i`: the bytes of records its Fetch responses held.
fn fetched_bytes(cluster: &LocalCluster, i: usize) -> f64 {
    let page = fjord_compat_tests::scrape_metrics(&cluster.metrics[i], "fjord_");
    fjord_compat_tests::metric(&page, "fjord_fetched_bytes_total").unwrap_or(0.0)
}

/// Follower fetching (KIP-392) with librdkafka: leaders pinned to rack r1, the rack-aware replica
/// selector on, a consumer with `client.rack=r3` reads every record from node 3's replica (node 1
/// serves it no records). When node 3 is cut off from the others it stops serving, the consumer
/// goes back to the leader, and reads the records written meanwhile from there: every record once,
/// in order.
#[test]
fn a_consumer_reads_from_the_replica_on_its_rack_and_goes_back_to_the_leader_when_it_falls_behind() {
    let cluster = LocalCluster::start_proxied(
        NODES,
        &[
            "--replica-selector-class",
            "org.apache.kafka.common.replica.RackAwareReplicaSelector",
            "--leader-imbalance-check-interval-seconds",
            "1",
        ],
    );
    cluster.wait_formed(DEADLINE);
    let topic = "local-reads";
    let script = |args: &[&str]| -> std::process::Command {
        let mut cmd = fjord_compat_tests::client(fjord_compat_tests::python());
        cmd.current_dir(fjord_compat_tests::clients_dir().join("python"));
        cmd.arg("follower_reads.py").arg(cluster.bootstrap()).arg(topic).args(args);
        cmd
    };
    let mut pin = fjord_compat_tests::client(fjord_compat_tests::python());
    pin.current_dir(fjord_compat_tests::clients_dir().join("python"));
    pin.args(["pinned_leaders.py", &cluster.bootstrap(), topic, "create", "r1", "1", "3"]);
    fjord_compat_tests::run_client(&mut pin, Duration::from_secs(90));
    wait_until(DEADLINE, "node 1 leading with every replica in sync", || cluster.leaders(0, topic) == vec![(0, 1, 3)]);
    fjord_compat_tests::run_client(&mut script(&["produce", "0", "1000"]), Duration::from_secs(90));
    let before: Vec<f64> = (0..NODES).map(|i| fetched_bytes(&cluster, i)).collect();

    let log = tempfile::NamedTempFile::new().expect("consumer log");
    let mut consumer = script(&["consume", "r3", "2000"]);
    consumer.stdout(log.reopen().expect("log")).stderr(std::process::Stdio::inherit());
    // Killed when the test ends, failed or not.
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut consumer = Child(consumer.spawn().expect("start the consumer"));
    let progress = || {
        std::fs::read_to_string(log.path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("read ")?.parse::<usize>().ok())
            .max()
            .unwrap_or(0)
    };
    wait_until(Duration::from_secs(60), "the first 1000 records read", || progress() >= 1000);
    let local = fetched_bytes(&cluster, 2) - before[2];
    let leader = fetched_bytes(&cluster, 0) - before[0];
    assert!(local >= 1000.0 * 1024.0, "node 3 served {local} bytes of records");
    assert!(leader < 100.0 * 1024.0, "the leader served {leader} bytes of records to a consumer on r3");

    // Node 3 falls behind: cut off from the leader, it stops serving within seconds, and the
    // consumer reads the next records from the leader.
    cluster.isolate(2, LinkMode::Blackhole);
    let cut = fetched_bytes(&cluster, 0);
    fjord_compat_tests::run_client(&mut script(&["produce", "1000", "1000"]), Duration::from_secs(90));
    let status = {
        let until = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(s) = consumer.0.try_wait().expect("consumer status") {
                break s;
            }
            if Instant::now() > until {
                panic!("the consumer did not finish: {} records read", progress());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let out = std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(status.success() && out.contains("done 2000"), "{status}: {out}");
    let from_leader = fetched_bytes(&cluster, 0) - cut;
    assert!(from_leader >= 1000.0 * 1024.0, "the leader served {from_leader} bytes after node 3 fell behind");
    cluster.isolate(2, LinkMode::Pass);
}
