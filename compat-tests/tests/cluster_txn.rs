//! Transactions on a cluster of three `fjord` processes. A transactional id's coordinator leads
//! its partition of the replicated `__transaction_state`; the markers that end a transaction go
//! to the leader of each of its partitions, wherever that is; and a consume-transform-produce
//! loop stays exactly-once when the node coordinating its transactions is killed.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fjord_compat_tests::cluster::LocalCluster;
use fjord_compat_tests::jepsen::{create_topic, wait_for_leaders};
use fjord_compat_tests::wire::{self, describe_txn, end_offset, s, txn_batch};
use fjord_compat_tests::{client, clients_dir, python, run_client, wait_until, RawConn};
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const NODES: usize = 3;
const DEADLINE: Duration = Duration::from_secs(60);
/// Few internal partitions keep the test's Raft groups few.
const FLAGS: &[&str] = &[
    "--transaction-state-log-num-partitions",
    "3",
    "--offsets-topic-num-partitions",
    "3",
    "--transaction-abort-timed-out-transaction-cleanup-interval-ms",
    "200",
];

/// The node id FindCoordinator names for transactional id `id`, asked of node index `i`; -1
/// while it names none.
fn txn_coordinator(cluster: &LocalCluster, i: usize, id: &str) -> i32 {
    let mut req = FindCoordinatorRequest::default();
    req.key_type = 1;
    req.coordinator_keys = vec![s(id)];
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

/// The answers after which a client looks a transaction's coordinator up again and retries: the
/// coordinator moved or is taking over (COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE,
/// NOT_COORDINATOR), or its log did not commit in time (REQUEST_TIMED_OUT).
const RETRIABLE: [i16; 4] = [7, 14, 15, 16];

/// A connection to the node coordinating transactional id `id` as node index `asked` names it
/// now (waiting while it names none), and that node's id.
fn coordinator_conn(cluster: &LocalCluster, asked: usize, id: &str) -> (i32, RawConn) {
    let mut coordinator = -1;
    wait_until(DEADLINE, "a coordinator named for the transactional id", || {
        coordinator = txn_coordinator(cluster, asked, id);
        coordinator >= 1
    });
    (coordinator, cluster.conn((coordinator - 1) as usize))
}

/// Node index of each partition's leader as node index `i` shows them (leader ids are 1-based).
fn leader_indexes(cluster: &LocalCluster, i: usize, topic: &str, partitions: i32) -> Vec<usize> {
    let mut found = Vec::new();
    wait_until(DEADLINE, "a leader for every partition", || {
        let leaders = cluster.leaders(i, topic);
        found = leaders.iter().filter(|(_, l, _)| *l >= 1).map(|(_, l, _)| (*l - 1) as usize).collect();
        found.len() == partitions as usize
    });
    found
}

/// Partition `p`'s (high watermark, last stable offset) from its leader at the time asked: an
/// election under load may move a leadership during the test.
fn ends_at_leader(cluster: &LocalCluster, topic: &str, p: i32) -> (i64, i64) {
    let mut found = (-1, -1);
    wait_until(DEADLINE, "the partition's leader to answer ListOffsets", || {
        let Some(l) = cluster.leaders(0, topic).iter().find(|(i, l, _)| *i == p && *l >= 1).map(|(_, l, _)| *l) else {
            return false;
        };
        let mut conn = cluster.conn((l - 1) as usize);
        match (end_offset(&mut conn, topic, p, false), end_offset(&mut conn, topic, p, true)) {
            (Some(hw), Some(stable)) => {
                found = (hw, stable);
                true
            }
            _ => false,
        }
    });
    found
}

/// Reads every partition of `topic` from the start until `want` records are in; their values.
fn read(bootstrap: &str, topic: &str, partitions: i32, isolation: &str, want: usize) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{isolation}"))
        .set("isolation.level", isolation)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("partition");
    }
    c.assign(&tpl).expect("assign");
    let mut got = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while got.len() < want {
        assert!(Instant::now() < deadline, "read {} of {want} {isolation} records: {got:?}", got.len());
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    got
}

/// InitProducerId for transactional id `id` at its coordinator, looked up again while the call
/// is answered `RETRIABLE`: the producer id and epoch.
fn init_at_coordinator(cluster: &LocalCluster, id: &str, timeout_ms: i32) -> (i64, i16) {
    let mut req = InitProducerIdRequest::default();
    req.transactional_id = Some(TransactionalId(s(id)));
    req.transaction_timeout_ms = timeout_ms;
    let mut r = InitProducerIdResponse::default();
    wait_until(DEADLINE, "InitProducerId answered by the coordinator", || {
        r = coordinator_conn(cluster, 1, id).1.call(ApiKey::InitProducerId, 4, &req);
        !RETRIABLE.contains(&r.error_code)
    });
    assert_eq!(r.error_code, 0, "InitProducerId");
    (r.producer_id.0, r.producer_epoch)
}

fn add(conn: &mut RawConn, id: &str, producer: (i64, i16), topic: &str, partitions: &[i32]) -> Vec<i16> {
    let mut t = AddPartitionsToTxnTopic::default();
    t.name = TopicName(s(topic));
    t.partitions = partitions.to_vec();
    let mut req = AddPartitionsToTxnRequest::default();
    req.v3_and_below_transactional_id = TransactionalId(s(id));
    req.v3_and_below_producer_id = ProducerId(producer.0);
    req.v3_and_below_producer_epoch = producer.1;
    req.v3_and_below_topics = vec![t];
    let r: AddPartitionsToTxnResponse = conn.call(ApiKey::AddPartitionsToTxn, 3, &req);
    r.results_by_topic_v3_and_below
        .iter()
        .flat_map(|t| t.results_by_partition.iter().map(|p| p.partition_error_code))
        .collect()
}

#[test]
fn transactions_end_whole_on_partitions_every_node_leads() {
    let cluster = LocalCluster::start_with(NODES, FLAGS);
    cluster.wait_formed(DEADLINE);
    let topic = "orders";
    let parts = 6;
    create_topic(&cluster.bootstrap(), topic, parts, 3).expect("create topic");
    wait_for_leaders(&cluster.bootstrap(), topic, parts, DEADLINE).expect("leaders");
    let leaders = leader_indexes(&cluster, 0, topic, parts);
    // Leaders are where the elections put them (no balancing yet): usually on more than one node,
    // so that most markers go to other nodes than the coordinator's.
    let leading: BTreeSet<usize> = leaders.iter().copied().collect();
    println!("partition leaders (node indexes): {leaders:?}, on {} node(s)", leading.len());

    // A librdkafka producer runs ten transactions over every partition, committing the even
    // ones and aborting the odd ones. (Threaded: an abort waits for the delivery reports of the
    // transaction's records, which a thread of its own serves.)
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("transactional.id", "orders-app")
        .set("transaction.timeout.ms", "30000")
        .create()
        .expect("producer");
    producer.init_transactions(DEADLINE).expect("init_transactions");
    let mut committed = BTreeSet::new();
    for t in 0..10 {
        producer.begin_transaction().expect("begin");
        for p in 0..parts {
            let v = format!("t{t}-p{p}");
            producer.send(BaseRecord::<(), _, ()>::to(topic).partition(p).payload(&v)).expect("queue");
            if t % 2 == 0 {
                committed.insert(v);
            }
        }
        if t % 2 == 0 {
            producer.commit_transaction(DEADLINE).expect("commit");
        } else {
            // Flushed first, so that the aborted records are in the log, not purged unsent.
            producer.flush(DEADLINE).expect("flush");
            producer.abort_transaction(DEADLINE).expect("abort");
        }
    }
    // Every partition's leader holds the markers: nothing is left unstable. (Each election
    // also stores an entry of its own, a control batch, so the log may hold more.)
    let mut ends = Vec::new();
    for p in 0..parts {
        let (hw, stable) = ends_at_leader(&cluster, topic, p);
        assert_eq!(stable, hw, "partition {p} is stable to its end");
        assert!(hw >= 20, "partition {p}: ten records and ten markers, but the log ends at {hw}");
        ends.push(hw);
    }
    // read_committed sees exactly the committed transactions; the aborted ones are in the log.
    let seen: BTreeSet<String> =
        read(&cluster.bootstrap(), topic, parts, "read_committed", committed.len()).into_iter().collect();
    assert_eq!(seen, committed);
    assert_eq!(read(&cluster.bootstrap(), topic, parts, "read_uncommitted", 60).len(), 60);
    // The coordinator describes the last transaction as aborted, and any other node sends the
    // client to the coordinator (NOT_COORDINATOR). Both are asked of the coordinator named now,
    // and again should it have moved in between (an election under load).
    wait_until(DEADLINE, "the coordinator to describe the abort, and another node to send the client to it", || {
        let (coordinator, mut c) = coordinator_conn(&cluster, 0, "orders-app");
        let d = describe_txn(&mut c, "orders-app");
        match (d.error_code, d.transaction_state.as_str()) {
            (0, "CompleteAbort") => {}
            // Moved, or the end not recorded yet (the markers are written first).
            (code, _) if RETRIABLE.contains(&code) => return false,
            (0, "Ongoing" | "PrepareAbort") => return false,
            (code, state) => panic!("the last transaction was aborted, but its coordinator says {code} {state}"),
        }
        let other = (0..NODES).find(|i| *i as i32 + 1 != coordinator).unwrap();
        describe_txn(&mut cluster.conn(other), "orders-app").error_code == 16
    });

    // A transaction its producer abandons is aborted by its coordinator's timer, with a marker
    // on every partition's leader, and the producer is fenced.
    let id = "abandoned";
    // Long enough that the produces below always land before the timeout aborts it.
    let me = init_at_coordinator(&cluster, id, 10_000);
    let all: Vec<i32> = (0..parts).collect();
    let mut added = Vec::new();
    wait_until(DEADLINE, "the partitions added by the coordinator", || {
        added = add(&mut coordinator_conn(&cluster, 1, id).1, id, me, topic, &all);
        !added.iter().all(|code| RETRIABLE.contains(code))
    });
    assert_eq!(added, vec![0; parts as usize]);
    for p in 0..parts {
        // To the partition's leader now (an election under load may have moved it since).
        let mut code = -1;
        wait_until(DEADLINE, "the transactional produce taken by the partition's leader", || {
            let l = leader_indexes(&cluster, 0, topic, parts)[p as usize];
            code = wire::produce(&mut cluster.conn(l), topic, p, txn_batch(&[b"left open"], me.0, me.1, 0)).0;
            code != 6
        });
        assert_eq!(code, 0, "transactional produce to partition {p}");
    }
    wait_until(DEADLINE, "every partition stable again after the abort", || {
        (0..parts).all(|p| {
            let (hw, stable) = ends_at_leader(&cluster, topic, p);
            hw >= ends[p as usize] + 2 && stable == hw
        })
    });
    // The coordinator (the one named now: the markers are written before it records the end,
    // and it may have moved since) records the abort, at the epoch that fences the producer.
    wait_until(DEADLINE, "the coordinator to record the abort of the abandoned transaction", || {
        let d = describe_txn(&mut coordinator_conn(&cluster, 1, id).1, id);
        match (d.error_code, d.transaction_state.as_str()) {
            (0, "CompleteAbort") => {
                assert_eq!(d.producer_epoch, me.1 + 1, "the abort fenced the producer");
                true
            }
            (code, _) if RETRIABLE.contains(&code) => false,
            (0, "Ongoing" | "PrepareAbort") => false,
            (code, state) => panic!("the abandoned transaction was aborted, but its coordinator says {code} {state}"),
        }
    });
    // The open record was aborted: read_committed still sees only the committed transactions.
    let seen: BTreeSet<String> =
        read(&cluster.bootstrap(), topic, parts, "read_committed", committed.len()).into_iter().collect();
    assert_eq!(seen, committed);
    let mut code = -1;
    wait_until(DEADLINE, "the fenced producer's write answered by the leader", || {
        let l = leader_indexes(&cluster, 0, topic, parts)[0];
        code = wire::produce(&mut cluster.conn(l), topic, 0, txn_batch(&[b"zombie"], me.0, me.1, 1)).0;
        code != 6
    });
    assert_eq!(code, 47, "INVALID_PRODUCER_EPOCH for the fenced producer");
}

/// Records written to `topic` so far (committed or not), by the high watermarks `bootstrap`'s
/// nodes report.
fn written(bootstrap: &str, topic: &str, partitions: i32) -> i64 {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("consumer");
    (0..partitions).map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(5)).map_or(0, |(_, hi)| hi)).sum()
}

#[test]
fn an_exactly_once_pipeline_survives_the_loss_of_its_transaction_coordinator() {
    let mut cluster = LocalCluster::start_with(NODES, FLAGS);
    cluster.wait_formed(DEADLINE);
    for t in ["ctp-in", "ctp-out"] {
        create_topic(&cluster.bootstrap(), t, 3, 3).expect("create topic");
        wait_for_leaders(&cluster.bootstrap(), t, 3, DEADLINE).expect("leaders");
    }
    let total: i32 = 9000;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for i in 0..total {
        let v = format!("in-{i}");
        let p = i % 3;
        loop {
            match producer.send(BaseRecord::<(), _>::to("ctp-in").partition(p).payload(&v)) {
                Ok(()) => break,
                Err((_, _)) => producer.poll(Duration::from_millis(10)),
            };
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(DEADLINE).expect("input acknowledged");

    let bootstrap = cluster.bootstrap();
    let log = tempfile::NamedTempFile::new().expect("transform log");
    let start = || {
        client(python())
            .current_dir(clients_dir().join("python"))
            .args(["txn_transform.py", &bootstrap, "ctp-in", "ctp-out", "ctp-group", "ctp-app"])
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log"))
            .spawn()
            .expect("start transform")
    };
    let mut transform = Killed(start());
    // The node coordinating the transform's transactions dies mid-stream, twice: the first one
    // comes back before the second goes, so that a quorum stays.
    let mut victim: Option<usize> = None;
    let mut target = 1000;
    // A client that hangs is killed and started again, as a supervisor with a liveness check
    // would; exactly-once is still checked over the whole output. The hang is librdkafka's
    // (issue #5511, open): a broker missing from a Metadata response is decommissioned, but stays
    // cached as the group coordinator, and send_offsets_to_transaction then waits on it forever,
    // past its own timeout. A restarted node is missing from Metadata while its new process is
    // fenced (catching up with the metadata log, as Kafka's brokers are), so the restart below
    // triggers it in some runs; its debug log and stack dump showed exactly that sequence.
    const STALLED: Duration = Duration::from_secs(45);
    const MAX_RESTARTS: usize = 3;
    let mut restarts = 0;
    for _ in 0..2 {
        // Under way: `target` output records, or the transform already done with its input
        // (it can finish before the second kill, or even before the first on a fast run).
        let waited = Instant::now();
        let (mut seen, mut moved) = (-1, Instant::now());
        loop {
            let now = written(&bootstrap, "ctp-out", 3);
            if now >= target || now >= total as i64 || transform.0.try_wait().expect("transform status").is_some() {
                break;
            }
            if now != seen {
                (seen, moved) = (now, Instant::now());
            } else if moved.elapsed() > STALLED {
                restarts += 1;
                dump_stacks(&transform, &log);
                assert!(restarts <= MAX_RESTARTS, "the transform kept stalling; its log:\n{}", tail(&log));
                println!("the transform wrote nothing for {STALLED:?}; restarting it as a supervisor would");
                transform = Killed(start());
                moved = Instant::now();
            }
            assert!(
                waited.elapsed() < Duration::from_secs(240),
                "the transform not under way: {now} of {target} output records; its log:\n{}\n{}",
                tail(&log),
                cluster.nodes.iter().map(|n| n.log_tail()).collect::<Vec<_>>().join("\n----\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let asked = victim.map_or(0, |v| (v + 1) % NODES);
        let mut coordinator = -1;
        wait_until(DEADLINE, "the transform's coordinator named", || {
            coordinator = txn_coordinator(&cluster, asked, "ctp-app");
            coordinator >= 1
        });
        let v = (coordinator - 1) as usize;
        let at = written(&bootstrap, "ctp-out", 3);
        if at >= total as i64 && victim.is_some() {
            // The input ran out before the second kill (the first one always happens).
            println!("the transform finished before a second kill");
            break;
        }
        println!("SIGKILL node {coordinator}, the transaction coordinator, at {at} output records");
        cluster.nodes[v].kill9();
        let asked = (v + 1) % NODES;
        wait_until(DEADLINE, "another node coordinates the transform", || {
            let now = txn_coordinator(&cluster, asked, "ctp-app");
            now >= 1 && now != coordinator
        });
        if let Some(earlier) = victim {
            assert_ne!(earlier, v, "the restarted node was not the coordinator");
        }
        if victim.is_none() {
            cluster.nodes[v].restart();
            cluster.wait_formed(DEADLINE);
            // Back means serving: the restarted node itself names a leader for every partition
            // (the others still list it, unfenced, while it starts). The next target counts from
            // the output before the kill: just after it, a partition whose leader is still being
            // elected reads as nothing written, which once set the target low enough to kill
            // the second node before the first was back.
            wait_until(DEADLINE, "the restarted node serving metadata", || {
                let v = cluster.leaders(v, "ctp-out");
                v.len() == 3 && v.iter().all(|(_, l, _)| *l >= 1)
            });
            target = at + 1000;
        }
        victim = Some(v);
    }
    let alive: Vec<usize> = (0..NODES).filter(|i| Some(*i) != victim).collect();
    // Run to the end; a fatal client error is restarted as a supervisor would.
    let mut finished = false;
    for _ in 0..5 {
        let deadline = Instant::now() + Duration::from_secs(180);
        let (mut seen, mut moved) = (-1, Instant::now());
        let status = loop {
            if let Some(status) = transform.0.try_wait().expect("transform status") {
                break status;
            }
            let now = written(&bootstrap, "ctp-out", 3);
            if now != seen {
                (seen, moved) = (now, Instant::now());
            } else if moved.elapsed() > STALLED && restarts < MAX_RESTARTS {
                restarts += 1;
                dump_stacks(&transform, &log);
                println!("the transform wrote nothing for {STALLED:?}; restarting it as a supervisor would");
                transform = Killed(start());
                moved = Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "the transform did not finish; its log:\n{}\n{}",
                tail(&log),
                cluster.nodes.iter().map(|n| n.log_tail()).collect::<Vec<_>>().join("\n----\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        if status.success() {
            finished = true;
            break;
        }
        println!("transform exited with {status}; starting it again");
        transform = Killed(start());
    }
    assert!(finished, "the transform finished the input; its log:\n{}", tail(&log));
    let survivors: Vec<String> = alive.iter().map(|i| cluster.nodes[*i].bootstrap()).collect();
    let out = run_client(
        client(python()).current_dir(clients_dir().join("python")).args([
            "txn_verify.py",
            &survivors.join(","),
            "ctp-in",
            "ctp-out",
        ]),
        Duration::from_secs(180),
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
}

/// A client process, killed when dropped so that a failing test leaves nothing running.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Asks a hung transform for its Python stacks (it registers SIGUSR1 with faulthandler) and
/// waits up to 5 s for them in its log, so the log says which call never returned.
fn dump_stacks(transform: &Killed, log: &tempfile::NamedTempFile) {
    // SAFETY: kill(2) on our own child's pid; the child is not reaped before `Killed` drops.
    unsafe {
        libc::kill(transform.0.id() as i32, libc::SIGUSR1);
    }
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if std::fs::read_to_string(log.path()).unwrap_or_default().contains("most recent call first") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("the hung transform's log:\n{}", tail(log));
}

fn tail(log: &tempfile::NamedTempFile) -> String {
    let text = std::fs::read_to_string(log.path()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The single-node transaction suites of two more clients, unchanged, against the cluster:
/// confluent-kafka (visibility of committed and aborted records, fencing of a zombie) and
/// kafkajs (transactions, sendOffsets, fencing).
#[test]
fn client_transaction_suites_pass_against_the_cluster() {
    let cluster = LocalCluster::start_with(NODES, FLAGS);
    cluster.wait_formed(DEADLINE);
    let out = run_client(
        client(python()).current_dir(clients_dir().join("python")).arg("txn_suite.py").arg(cluster.bootstrap()),
        Duration::from_secs(240),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("fencing: ok"), "{stdout}");
    let node_dir = clients_dir().join("node");
    assert!(node_dir.join("node_modules/kafkajs").exists(), "run scripts/setup-test-deps.sh to install kafkajs");
    let out = run_client(
        client("node").current_dir(&node_dir).arg("kafkajs_txn.js").arg(cluster.bootstrap()),
        Duration::from_secs(240),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("kafkajs transactions passed"));
}
