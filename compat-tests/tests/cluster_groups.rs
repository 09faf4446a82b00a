//! Consumer groups on a cluster of three `fjord` processes: a group's coordinator is the leader
//! of its partition of the replicated `__consumer_offsets`, so members that bootstrap from
//! different nodes still form one group, and the offsets they commit survive the loss of the
//! coordinator's process (another replica leads the partition and loads them from its log).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fjord_compat_tests::cluster::LocalCluster;
use fjord_compat_tests::jepsen::create_topic;
use fjord_compat_tests::wait_until;
use fjord_compat_tests::wire::s;
use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const NODES: usize = 3;
const DEADLINE: Duration = Duration::from_secs(60);
const TOPIC: &str = "clicks";
const GROUP: &str = "dashboards";

fn consumer(bootstrap: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", GROUP)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .set("reconnect.backoff.max.ms", "500")
        .create()
        .expect("consumer");
    c.subscribe(&[TOPIC]).expect("subscribe");
    c
}

fn produce(bootstrap: &str, from: usize, count: usize) {
    let p: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("acks", "all").create().expect("producer");
    for i in from..from + count {
        let v = format!("click-{i}");
        let k = format!("user-{}", i % 17);
        p.send(BaseRecord::to(TOPIC).key(&k).payload(&v)).expect("queue a record");
    }
    p.flush(Duration::from_secs(30)).expect("every record acknowledged");
}

/// Polls `consumers` in turn until they have read `want` records between them; returns the
/// values each read.
fn read(consumers: &[&BaseConsumer], want: usize) -> Vec<Vec<String>> {
    let mut got = vec![Vec::new(); consumers.len()];
    let deadline = Instant::now() + DEADLINE;
    while got.iter().map(Vec::len).sum::<usize>() < want {
        assert!(Instant::now() < deadline, "read {:?} of {want} records", got.iter().map(Vec::len).collect::<Vec<_>>());
        for (i, c) in consumers.iter().enumerate() {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                got[i].push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            }
        }
    }
    got
}

/// The node id FindCoordinator names for the group, asked of node index `i`; -1 while it names
/// none (or closes the connection, having lost contact with the controller quorum).
fn coordinator(cluster: &LocalCluster, i: usize) -> i32 {
    let mut req = FindCoordinatorRequest::default();
    req.key_type = 0;
    req.coordinator_keys = vec![s(GROUP)];
    let Some(r): Option<FindCoordinatorResponse> = cluster.conn(i).try_call(ApiKey::FindCoordinator, 4, &req) else {
        return -1;
    };
    let c = &r.coordinators[0];
    if c.error_code == 0 {
        c.node_id.0
    } else {
        -1
    }
}

/// The coordinator every node names for the group, once they all name the same one: each node
/// learns where the group's partition of `__consumer_offsets` is led at its own pace, and an
/// election under load can move that leadership at any time.
fn agreed_coordinator(cluster: &LocalCluster) -> i32 {
    let mut named = BTreeSet::new();
    wait_until(DEADLINE, "every node to name the same coordinator for the group", || {
        named = (0..NODES).map(|i| coordinator(cluster, i)).collect();
        named.len() == 1 && named.first().is_some_and(|c| *c >= 1)
    });
    *named.first().unwrap()
}

#[test]
fn a_group_spans_nodes_and_its_offsets_survive_the_coordinators_loss() {
    // A few offsets partitions keep the test's Raft groups few.
    let mut cluster = LocalCluster::start_with(NODES, &["--offsets-topic-num-partitions", "3"]);
    cluster.wait_formed(DEADLINE);
    create_topic(&cluster.bootstrap(), TOPIC, 4, 3).expect("create topic");

    // Two members, each knowing only one node, form one group: between them they are assigned
    // every partition once.
    let a = consumer(&cluster.nodes[0].bootstrap());
    let b = consumer(&cluster.nodes[2].bootstrap());
    wait_until(DEADLINE, "both members assigned disjoint halves of the topic", || {
        for c in [&a, &b] {
            let _ = c.poll(Duration::from_millis(50));
        }
        let parts = |c: &BaseConsumer| -> BTreeSet<i32> {
            c.assignment().map(|l| l.elements().iter().map(|e| e.partition()).collect()).unwrap_or_default()
        };
        let (pa, pb) = (parts(&a), parts(&b));
        !pa.is_empty() && !pb.is_empty() && pa.is_disjoint(&pb) && pa.len() + pb.len() == 4
    });
    // Every node names the same coordinator.
    let first = agreed_coordinator(&cluster);
    assert!((1..=NODES as i32).contains(&first));

    produce(&cluster.bootstrap(), 0, 200);
    let got = read(&[&a, &b], 200);
    let all: BTreeSet<&String> = got.iter().flatten().collect();
    assert_eq!(all.len(), 200, "each record read once between the two members");
    assert!(got.iter().all(|g| !g.is_empty()), "both members read");
    for c in [&a, &b] {
        c.commit_consumer_state(CommitMode::Sync).expect("commit");
    }
    drop(a);
    drop(b);

    // The coordinator's process dies; another node leads the group's partition and has the
    // offsets: a new member reads only what was produced since. (The coordinator as named now:
    // it may have moved since it was first looked up.)
    let first = agreed_coordinator(&cluster);
    cluster.nodes[(first - 1) as usize].kill9();
    let alive: Vec<usize> = (0..NODES).filter(|i| *i as i32 + 1 != first).collect();
    let mut second = -1;
    wait_until(DEADLINE, "another coordinator named", || {
        second = coordinator(&cluster, alive[0]);
        second >= 1 && second != first
    });
    let survivors: Vec<String> = alive.iter().map(|i| cluster.nodes[*i].bootstrap()).collect();
    produce(&survivors.join(","), 200, 50);
    let c = consumer(&survivors.join(","));
    let got = read(&[&c], 50);
    let expected: Vec<String> = (200..250).map(|i| format!("click-{i}")).collect();
    let mut read_back = got[0].clone();
    read_back.sort_by_key(|v| v.trim_start_matches("click-").parse::<u32>().unwrap_or(0));
    assert_eq!(read_back, expected, "the new member resumed at the committed offsets");
    // Nothing more arrives: no record before the committed offsets is read again.
    for _ in 0..20 {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
            panic!("read again: {:?}", String::from_utf8_lossy(m.payload().unwrap_or_default()));
        }
    }
}
