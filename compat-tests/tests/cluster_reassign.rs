//! Partition reassignments on a cluster of `fjord` processes, driven by real admin clients
//! (kafka-python and kafkajs): a node added to a running cluster takes partitions over while
//! producers write, a leader moves off the replica being removed, replication factors grow and
//! shrink, the progress shows in ListPartitionReassignments and the metrics, the replicas left
//! out delete their logs, and the checker finds every acknowledged record once, in order.

use std::path::Path;
use std::time::{Duration, Instant};

use fjord_compat_tests::cluster::LocalCluster;
use fjord_compat_tests::jepsen::{now_ns, stop_and_judge, Run, Workload};
use fjord_compat_tests::wire::{fetch, s, topic_metadata};
use fjord_compat_tests::{scrape_metrics, wait_until, IdempotentProducer, RawConn};
use kafka_protocol::messages::*;

const DEADLINE: Duration = Duration::from_secs(30);

/// Creates `topic` with the replicas of each partition given.
fn create_assigned(conn: &mut RawConn, topic: &str, assignment: &[Vec<i32>]) {
    let mut t = create_topics_request::CreatableTopic::default();
    t.name = TopicName(s(topic));
    t.num_partitions = -1;
    t.replication_factor = -1;
    t.assignments = assignment
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut a = create_topics_request::CreatableReplicaAssignment::default();
            a.partition_index = i as i32;
            a.broker_ids = r.iter().map(|b| BrokerId(*b)).collect();
            a
        })
        .collect();
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 10_000;
    let r: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, 7, &req);
    assert_eq!(r.topics[0].error_code, 0, "{:?}", r.topics[0].error_message);
}

/// Per partition of `topic` as node index `i` shows it: (replicas, leader, ISR size).
fn placement(cluster: &LocalCluster, i: usize, topic: &str) -> Vec<(Vec<i32>, i32, usize)> {
    let t = topic_metadata(&mut cluster.conn(i), topic, false);
    let mut v: Vec<(i32, Vec<i32>, i32, usize)> = t
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.replica_nodes.iter().map(|r| r.0).collect(), p.leader_id.0, p.isr_nodes.len()))
        .collect();
    v.sort();
    v.into_iter().map(|(_, r, l, n)| (r, l, n)).collect()
}

/// Whether every node of `alive` shows each partition on exactly `want`'s replicas, led by one
/// of them, with all of them in sync.
fn placed(cluster: &LocalCluster, alive: &[usize], topic: &str, want: &[Vec<i32>]) -> bool {
    alive.iter().all(|i| {
        let v = placement(cluster, *i, topic);
        v.len() == want.len() && v.iter().zip(want).all(|((r, l, isr), w)| r == w && w.contains(l) && *isr == w.len())
    })
}

/// A connection to the leader of partition 0 of `topic` as node index `i` shows it now (waiting
/// while it shows none).
fn leader_conn(cluster: &LocalCluster, i: usize, topic: &str) -> RawConn {
    let mut leader = -1;
    wait_until(DEADLINE, "a leader of the partition", || {
        leader = placement(cluster, i, topic).first().map_or(-1, |p| p.1);
        leader >= 1
    });
    cluster.conn((leader - 1) as usize)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// How many brokers node index 0 lists to clients.
fn live_brokers(cluster: &LocalCluster) -> usize {
    let mut req = MetadataRequest::default();
    req.topics = Some(Vec::new());
    let r: MetadataResponse = cluster.conn(0).call(ApiKey::Metadata, 12, &req);
    r.brokers.len()
}

/// Runs `reassign.py` (kafka-python's admin client) and returns its lines.
fn reassign(cluster: &LocalCluster, args: &[&str]) -> Vec<String> {
    // The first three nodes: the tests stop the fourth, and kafka-python gives up on a
    // bootstrap server that refuses the connection.
    reassign_via(cluster, &[0, 1, 2], args)
}

/// `reassign`, bootstrapping from the nodes of these indexes.
fn reassign_via(cluster: &LocalCluster, nodes: &[usize], args: &[&str]) -> Vec<String> {
    let mut cmd = fjord_compat_tests::client(fjord_compat_tests::python());
    cmd.current_dir(fjord_compat_tests::clients_dir().join("python"));
    let bootstrap: Vec<String> = nodes.iter().map(|i| cluster.nodes[*i].bootstrap()).collect();
    cmd.arg("reassign.py").arg(bootstrap.join(",")).args(args);
    let out = fjord_compat_tests::run_client(&mut cmd, Duration::from_secs(90));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// The names of the replica directories of `topic` in a node's data dir (`<topic>-<p>.g<id>`).
fn replica_dirs(data_dir: &Path, topic: &str) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(data_dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter_map(|n| n.strip_prefix(&format!("{topic}-"))?.split_once(".g")?.0.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The largest value of `fjord_reassignment_lag_entries` for `topic`'s partition `p` on any of
/// `nodes` (only the partition's leader publishes one that is not zero).
fn reassignment_lag(cluster: &LocalCluster, nodes: &[usize], topic: &str, p: i32) -> f64 {
    let series = format!("fjord_reassignment_lag_entries{{topic=\"{topic}\",partition=\"{p}\"}} ");
    nodes
        .iter()
        .map(|i| scrape_metrics(&cluster.metrics[*i], "fjord_partitions_reassigning"))
        .flat_map(|page| {
            page.lines().filter_map(|l| l.strip_prefix(&series)?.trim().parse::<f64>().ok()).collect::<Vec<_>>()
        })
        .fold(0.0, f64::max)
}

/// A fourth node joins a running three-node cluster and takes replicas over while idempotent
/// producers write with acks=all: partition 0 moves off node 1 (its preferred leader, so its
/// leadership moves first), partition 1 grows to four replicas, partition 2 shrinks to two.
/// With node 4 stopped the reassignments stay in progress, listed with Kafka's adding and
/// removing replicas and counted in the metrics, and writes go on; once it is back they
/// complete, the replicas left out delete their logs, and no acknowledged record is lost,
/// duplicated or reordered.
#[test]
fn partitions_move_onto_an_added_node_under_load_and_lose_nothing() {
    let started = Instant::now();
    // The balancer runs every second, so each partition is led by its first replica.
    let balanced = ["--leader-imbalance-check-interval-seconds", "1"];
    let mut cluster = LocalCluster::start_with(3, &balanced);
    cluster.wait_formed(DEADLINE);
    let four = cluster.add_broker("r4", &balanced);
    cluster.wait_formed(DEADLINE);
    let topic = "moving";
    let before = [vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]];
    create_assigned(&mut cluster.conn(0), topic, &before);
    wait_until(DEADLINE, "every partition led by its first replica, all in sync", || {
        (0..3).all(|i| {
            placement(&cluster, i, topic).iter().zip(&before).all(|((r, l, n), w)| r == w && *l == w[0] && *n == 3)
        })
    });
    let w = Workload::new(&cluster.bootstrap(), topic, 3, 2);
    let work = tempfile::tempdir().expect("temp dir");
    let run = Run::start(&w, &work.path().join("history.jsonl")).expect("start the workload");
    run.wait_acked(500, DEADLINE).expect("acks before the reassignment");

    // Node 4 is down: its replicas cannot catch up, so the reassignments stay in progress.
    cluster.nodes[four].kill9();
    let mut faults_ns = vec![now_ns()];
    run.log_fault("node 4 stopped");
    wait_until(DEADLINE, "node 4 fenced", || live_brokers(&cluster) == 3);
    let answers = reassign(&cluster, &["alter", topic, "0=4,2,3", "1=2,3,1,4", "2=3,4"]);
    assert_eq!(answers, ["0 ok", "1 ok", "2 ok"]);
    faults_ns.push(now_ns());
    run.log_fault("reassignments started");
    let listed = reassign(&cluster, &["list", topic]);
    assert_eq!(
        listed,
        [
            "moving 0 replicas=4,2,3,1 adding=4 removing=1",
            "moving 1 replicas=2,3,1,4 adding=4 removing=",
            "moving 2 replicas=3,4,1,2 adding=4 removing=1,2",
        ]
    );
    wait_until(DEADLINE, "three reassignments counted on every node, partition 0's lag published", || {
        (0..3).all(|i| {
            let page = scrape_metrics(&cluster.metrics[i], "fjord_partitions_reassigning");
            fjord_compat_tests::metric(&page, "fjord_partitions_reassigning") == Some(3.0)
        }) && reassignment_lag(&cluster, &[0, 1, 2], topic, 0) > 0.0
    });
    // Writes go on meanwhile, and still nothing completes without node 4.
    run.wait_acked(run.acked() + 500, DEADLINE).expect("acks while the reassignments wait for node 4");
    assert_eq!(reassign(&cluster, &["list", topic]).len(), 3, "a reassignment completed without its new replica");
    assert_eq!(placement(&cluster, 0, topic)[0].0, vec![4, 2, 3, 1]);

    cluster.nodes[four].restart();
    faults_ns.push(now_ns());
    run.log_fault("node 4 restarted");
    let after = [vec![4, 2, 3], vec![2, 3, 1, 4], vec![3, 4]];
    wait_until(Duration::from_secs(90), "every partition on its new replicas, all in sync, on every node", || {
        placed(&cluster, &[0, 1, 2, 3], topic, &after)
    });
    assert!(reassign(&cluster, &["list", topic]).is_empty());
    // Each node publishes the lag as it last sampled it.
    wait_until(DEADLINE, "no reassignment lag published", || {
        reassignment_lag(&cluster, &[0, 1, 2, 3], topic, 0) == 0.0
    });
    // The replicas left out delete their logs; node 4 holds every partition.
    wait_until(DEADLINE, "replica directories only where the partitions are placed", || {
        let dirs: Vec<Vec<i32>> = cluster.nodes.iter().map(|n| replica_dirs(n.data_dir.path(), topic)).collect();
        dirs == [vec![1], vec![0, 1], vec![0, 1, 2], vec![0, 1, 2]]
    });
    // Each partition back on its preferred replica (the first of its target), so the balancer
    // moves no leadership during the read-back: a new leader's first entry would move the
    // high watermark the read-back checks.
    wait_until(DEADLINE, "every partition led by the first replica of its target", || {
        (0..4).all(|i| placement(&cluster, i, topic).iter().zip(&after).all(|((_, l, _), w)| *l == w[0]))
    });
    run.wait_acked(run.acked() + 500, DEADLINE).expect("acks on the new replicas");
    let j = stop_and_judge(run, &w, work, &faults_ns, started);
    assert_eq!(j.report.unknown, 0, "every record got an answer");
    assert_eq!(j.verdict.stats.acked as u64, j.report.acked);
}

/// A reassignment that cannot complete (its new replica is down) is cancelled with a real admin
/// client: the partition goes back to its original replicas and keeps every record; refusals
/// carry Kafka's codes; with the node back, kafkajs moves the partition onto it and watches the
/// reassignment through ListPartitionReassignments until it completes.
#[test]
fn a_cancelled_reassignment_goes_back_and_kafkajs_moves_a_partition() {
    let mut cluster = LocalCluster::start(3);
    cluster.wait_formed(DEADLINE);
    let four = cluster.add_broker("r4", &[]);
    cluster.wait_formed(DEADLINE);
    let topic = "cancelled";
    create_assigned(&mut cluster.conn(0), topic, &[vec![1, 2, 3]]);
    wait_until(DEADLINE, "the partition led, all in sync", || placed(&cluster, &[0, 1, 2], topic, &[vec![1, 2, 3]]));
    // Each write goes to the leader node 1 shows at the time (an election under load can move the
    // leadership at any time), from an idempotent producer: a batch sent again is stored once.
    let mut producer = IdempotentProducer::new(|| cluster.conn(0));
    for i in 0..50 {
        let (code, _) =
            producer.send(|| leader_conn(&cluster, 0, topic), topic, 0, &[format!("v{i}").as_bytes()], now_ms());
        assert_eq!(code, 0);
    }

    cluster.nodes[four].kill9();
    // Fenced, so that clients are no longer shown it (kafka-python gives up on a listed broker
    // that refuses connections).
    wait_until(DEADLINE, "node 4 fenced", || live_brokers(&cluster) == 3);
    assert_eq!(reassign(&cluster, &["alter", topic, "0=1,2,4"]), ["0 ok"]);
    assert_eq!(reassign(&cluster, &["list", topic]), ["cancelled 0 replicas=1,2,4,3 adding=4 removing=3"]);
    assert_eq!(reassign(&cluster, &["alter", topic, "0=cancel"]), ["0 ok"]);
    wait_until(DEADLINE, "the cancelled reassignment gone", || reassign(&cluster, &["list", topic]).is_empty());
    // Every node shows it back on its replicas once the metadata reaches it.
    wait_until(DEADLINE, "the partition back on nodes 1, 2 and 3 on every node", || {
        placed(&cluster, &[0, 1, 2], topic, &[vec![1, 2, 3]])
    });
    // Kafka's refusals.
    assert_eq!(reassign(&cluster, &["alter", topic, "0=cancel"]), ["0 NoReassignmentInProgressError"]);
    assert_eq!(reassign(&cluster, &["alter", topic, "0=1,2,99"]), ["0 InvalidReplicationAssignmentError"]);
    assert_eq!(reassign(&cluster, &["alter", topic, "0=1,1,2"]), ["0 InvalidReplicationAssignmentError"]);
    assert_eq!(reassign(&cluster, &["alter", topic, "7=1,2,3"]), ["7 UnknownTopicOrPartitionError"]);

    // kafkajs, with node 4 back: the partition moves onto it and off node 1.
    cluster.nodes[four].restart();
    cluster.wait_formed(DEADLINE);
    let node_dir = fjord_compat_tests::clients_dir().join("node");
    let mut cmd = fjord_compat_tests::client("node");
    cmd.current_dir(&node_dir).arg("kafkajs_reassign.js").arg(cluster.bootstrap()).args([topic, "0", "4,3,2"]);
    let out = fjord_compat_tests::run_client(&mut cmd, Duration::from_secs(90));
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.last().map(String::as_str), Some("done"), "{lines:?}");
    for l in &lines[..lines.len() - 1] {
        assert!(l.starts_with("listed 0 replicas=4,3,2,1 adding=4 removing=1"), "{l}");
    }
    wait_until(DEADLINE, "the partition on 4, 3, 2 on every node", || {
        placed(&cluster, &[0, 1, 2, 3], topic, &[vec![4, 3, 2]])
    });
    // Every record is there, read from the new leader (as node 4 shows it at each read).
    let (mut values, mut next): (Vec<String>, i64) = (Vec::new(), 0);
    wait_until(DEADLINE, "50 records read from the new leader", || {
        let fetched = fetch(&mut leader_conn(&cluster, 3, topic), topic, 0, next, false);
        let mut buf = fetched.records.unwrap_or_default();
        let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut buf).expect("decode fetched batches");
        // Raft's own entries are control batches between the records: skipped, like clients do.
        for r in sets.into_iter().flat_map(|set| set.records) {
            next = next.max(r.offset + 1);
            if !r.control {
                values.push(String::from_utf8_lossy(&r.value.unwrap_or_default()).into_owned());
            }
        }
        values.len() >= 50
    });
    assert_eq!(values, (0..50).map(|i| format!("v{i}")).collect::<Vec<_>>());
}

/// Replacing a node that is gone for good: a partition on nodes 1, 2 and 3 moves to 1, 2 and 4
/// while node 3 stays down and producers write. The joining replica takes the newest term of
/// its group from the metadata (it cannot ask node 3), so the move completes without node 3,
/// and no acknowledged record is lost, duplicated or reordered.
#[test]
fn a_partition_moves_off_a_node_that_is_gone() {
    let started = Instant::now();
    let mut cluster = LocalCluster::start(3);
    cluster.wait_formed(DEADLINE);
    let four = cluster.add_broker("r4", &[]);
    cluster.wait_formed(DEADLINE);
    let topic = "rescued";
    create_assigned(&mut cluster.conn(0), topic, &[vec![1, 2, 3]]);
    wait_until(DEADLINE, "the partition led, all three replicas in sync", || {
        placement(&cluster, 0, topic).first().is_some_and(|(r, l, n)| *r == [1, 2, 3] && *l > 0 && *n == 3)
    });
    let w = Workload::new(&cluster.bootstrap(), topic, 1, 2);
    let work = tempfile::tempdir().expect("temp dir");
    let run = Run::start(&w, &work.path().join("history.jsonl")).expect("start the workload");
    run.wait_acked(300, DEADLINE).expect("acks before node 3 goes");

    cluster.nodes[2].kill9();
    let faults_ns = vec![now_ns()];
    run.log_fault("node 3 gone");
    let alive = [0, 1, four];
    // kafka-python's admin client gives up on a broker that refuses its connection, so it
    // runs once node 3 is fenced (no longer listed) and, should it have led the controller
    // quorum, no longer named as the controller by any live node.
    wait_until(DEADLINE, "node 3 fenced", || live_brokers(&cluster) == 3);
    wait_until(DEADLINE, "no live node names node 3 as the controller", || {
        alive.iter().all(|i| {
            let mut req = MetadataRequest::default();
            req.topics = Some(Vec::new());
            let r: MetadataResponse = cluster.conn(*i).call(ApiKey::Metadata, 12, &req);
            r.controller_id.0 > 0 && r.controller_id.0 != 3
        })
    });
    let answers = reassign_via(&cluster, &alive, &["alter", topic, "0=1,2,4"]);
    assert_eq!(answers, ["0 ok"]);
    wait_until(Duration::from_secs(90), "the partition on nodes 1, 2 and 4, all in sync", || {
        placed(&cluster, &alive, topic, &[vec![1, 2, 4]])
    });
    assert!(reassign_via(&cluster, &alive, &["list", topic]).is_empty(), "the reassignment is still listed");
    wait_until(DEADLINE, "node 4 holds the partition's log", || {
        replica_dirs(cluster.nodes[four].data_dir.path(), topic) == [0]
    });
    run.wait_acked(run.acked() + 300, DEADLINE).expect("acks on the new replicas");
    let j = stop_and_judge(run, &w, work, &faults_ns, started);
    assert_eq!(j.report.unknown, 0, "every record got an answer");
    assert_eq!(j.verdict.stats.acked as u64, j.report.acked);
}
