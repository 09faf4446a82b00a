//! Idempotent and transactional producers end to end: the transaction APIs
//! over the wire, timeouts, recovery after crashes (SIGKILL and a crash
//! between the markers of a commit), an idempotent producer behind a proxy
//! that loses responses, and real clients (librdkafka, kafkajs) running
//! transactions, fencing zombies, and a consume-transform-produce loop
//! killed at random points.

use std::process::{Child, Stdio};
use std::time::Duration;

use bytes::Bytes;
use fjord_compat_tests::proxy::LossyProxy;
use fjord_compat_tests::wire::{self, describe_txn, fetch, s, txn_batch, txn_init};
use fjord_compat_tests::{client, clients_dir, python, run_client, wait_until, BrokerProcess, RawConn};
use kafka_protocol::messages::add_partitions_to_txn_request::{AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction};
use kafka_protocol::messages::*;

const INVALID_TXN_STATE: i16 = 48;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const PRODUCER_FENCED: i16 = 90;
const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;

fn add(conn: &mut RawConn, id: &str, producer: (i64, i16), parts: &[(&str, i32)]) -> Vec<i16> {
    let mut req = AddPartitionsToTxnRequest::default();
    req.v3_and_below_transactional_id = TransactionalId(s(id));
    req.v3_and_below_producer_id = ProducerId(producer.0);
    req.v3_and_below_producer_epoch = producer.1;
    req.v3_and_below_topics = topics(parts);
    let r: AddPartitionsToTxnResponse = conn.call(ApiKey::AddPartitionsToTxn, 3, &req);
    r.results_by_topic_v3_and_below
        .iter()
        .flat_map(|t| t.results_by_partition.iter().map(|p| p.partition_error_code))
        .collect()
}

fn topics(parts: &[(&str, i32)]) -> Vec<AddPartitionsToTxnTopic> {
    parts
        .iter()
        .map(|(t, p)| {
            let mut topic = AddPartitionsToTxnTopic::default();
            topic.name = TopicName(s(t));
            topic.partitions = vec![*p];
            topic
        })
        .collect()
}

fn end(conn: &mut RawConn, id: &str, producer: (i64, i16), commit: bool, version: i16) -> i16 {
    let mut req = EndTxnRequest::default();
    req.transactional_id = TransactionalId(s(id));
    req.producer_id = ProducerId(producer.0);
    req.producer_epoch = producer.1;
    req.committed = commit;
    let r: EndTxnResponse = conn.call(ApiKey::EndTxn, version, &req);
    r.error_code
}

fn listed(conn: &mut RawConn, states: &[&str]) -> ListTransactionsResponse {
    let mut req = ListTransactionsRequest::default();
    req.state_filters = states.iter().map(|x| s(x)).collect();
    conn.call(ApiKey::ListTransactions, 1, &req)
}

/// Offsets of the records (not markers) in fetched bytes.
fn record_offsets(records: &Bytes) -> Vec<i64> {
    let mut buf = records.clone();
    let sets = kafka_protocol::records::RecordBatchDecoder::decode_all(&mut buf).expect("decode fetched batches");
    sets.into_iter().flat_map(|set| set.records).filter(|r| !r.control).map(|r| r.offset).collect()
}

fn end_offset(conn: &mut RawConn, topic: &str, partition: i32, read_committed: bool) -> i64 {
    wire::end_offset(conn, topic, partition, read_committed).expect("ListOffsets")
}

#[test]
fn transaction_apis_over_the_wire() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(wire::create_topic(&mut conn, "tx", 2, &[]).topics[0].error_code, 0);
    let (pid, epoch) = txn_init(&mut conn, "app-1", 60_000);
    let me = (pid, epoch);

    // Only partitions added to the transaction take its batches.
    assert_eq!(add(&mut conn, "app-1", me, &[("tx", 0)]), vec![0]);
    let (code, _) = wire::produce(&mut conn, "tx", 1, txn_batch(&[b"x"], pid, epoch, 0));
    assert_eq!(code, INVALID_TXN_STATE, "tx-1 was never added");
    assert_eq!(add(&mut conn, "app-1", me, &[("nope", 0), ("tx", 1)]), vec![3, 55], "unknown topic, not attempted");
    assert_eq!(wire::produce(&mut conn, "tx", 0, txn_batch(&[b"a", b"b"], pid, epoch, 0)), (0, 0));

    // Open: read_committed sees nothing, the LSO is the transaction's start.
    assert_eq!(end_offset(&mut conn, "tx", 0, true), 0);
    assert_eq!(end_offset(&mut conn, "tx", 0, false), 2);
    let p = fetch(&mut conn, "tx", 0, 0, true);
    assert_eq!((p.last_stable_offset, p.high_watermark), (0, 2));
    assert!(record_offsets(p.records.as_ref().expect("records")).is_empty());
    let d = describe_txn(&mut conn, "app-1");
    assert_eq!((d.error_code, d.transaction_state.as_str(), d.producer_id.0), (0, "Ongoing", pid));
    assert_eq!(
        d.topics.iter().map(|t| (t.topic.0.to_string(), t.partitions.clone())).collect::<Vec<_>>(),
        vec![("tx".to_string(), vec![0])]
    );
    assert!(d.transaction_start_time_ms > 0);
    assert_eq!(describe_txn(&mut conn, "nobody").error_code, TRANSACTIONAL_ID_NOT_FOUND);
    let l = listed(&mut conn, &["Ongoing", "Bogus"]);
    assert_eq!(
        l.transaction_states.iter().map(|t| t.transactional_id.0.to_string()).collect::<Vec<_>>(),
        vec!["app-1".to_string()]
    );
    assert_eq!(l.unknown_state_filters, vec![s("Bogus")]);
    assert!(listed(&mut conn, &["CompleteCommit"]).transaction_states.is_empty());

    // Commit: visible; a retried commit succeeds, an abort of it does not.
    assert_eq!(end(&mut conn, "app-1", me, true, 3), 0);
    assert_eq!(end(&mut conn, "app-1", me, true, 3), 0, "retry of the same end");
    assert_eq!(end(&mut conn, "app-1", me, false, 3), INVALID_TXN_STATE);
    let p = fetch(&mut conn, "tx", 0, 0, true);
    assert_eq!(p.last_stable_offset, 3, "two records and the commit marker");
    assert_eq!(record_offsets(p.records.as_ref().expect("records")), vec![0, 1]);
    assert_eq!(describe_txn(&mut conn, "app-1").transaction_state.as_str(), "CompleteCommit");

    // Abort: read_committed gets the aborted transaction listed to drop it.
    assert_eq!(add(&mut conn, "app-1", me, &[("tx", 0)]), vec![0]);
    assert_eq!(wire::produce(&mut conn, "tx", 0, txn_batch(&[b"c", b"d"], pid, epoch, 2)), (0, 3));
    // KIP-890 verification from another broker: added or not.
    let mut verify = AddPartitionsToTxnTransaction::default();
    verify.transactional_id = TransactionalId(s("app-1"));
    verify.producer_id = ProducerId(pid);
    verify.producer_epoch = epoch;
    verify.verify_only = true;
    verify.topics = topics(&[("tx", 0), ("tx", 1)]);
    let mut req = AddPartitionsToTxnRequest::default();
    req.transactions = vec![verify];
    let r: AddPartitionsToTxnResponse = conn.call(ApiKey::AddPartitionsToTxn, 4, &req);
    let codes: Vec<i16> = r.results_by_transaction[0]
        .topic_results
        .iter()
        .flat_map(|t| t.results_by_partition.iter().map(|p| p.partition_error_code))
        .collect();
    assert_eq!(codes, vec![0, INVALID_TXN_STATE]);
    assert_eq!(end(&mut conn, "app-1", me, false, 3), 0);
    let p = fetch(&mut conn, "tx", 0, 0, true);
    assert_eq!(p.last_stable_offset, 6);
    let aborted: Vec<(i64, i64)> =
        p.aborted_transactions.unwrap_or_default().iter().map(|a| (a.producer_id.0, a.first_offset)).collect();
    assert_eq!(aborted, vec![(pid, 3)]);
    let p = fetch(&mut conn, "tx", 0, 6, true);
    assert!(p.aborted_transactions.unwrap_or_default().is_empty(), "nothing aborted after offset 6");

    // A new instance fences the old epoch, with the error each version knows.
    let (pid2, epoch2) = txn_init(&mut conn, "app-1", 60_000);
    assert_eq!((pid2, epoch2), (pid, epoch + 1));
    assert_eq!(add(&mut conn, "app-1", me, &[("tx", 0)]), vec![PRODUCER_FENCED]);
    assert_eq!(end(&mut conn, "app-1", me, true, 3), PRODUCER_FENCED);
    assert_eq!(end(&mut conn, "app-1", me, true, 1), INVALID_PRODUCER_EPOCH);
    // KIP-360: a producer naming a stale id/epoch is fenced; naming the
    // current one bumps it.
    let mut bump = InitProducerIdRequest::default();
    bump.transactional_id = Some(TransactionalId(s("app-1")));
    bump.transaction_timeout_ms = 60_000;
    bump.producer_id = ProducerId(pid);
    bump.producer_epoch = epoch;
    let r: InitProducerIdResponse = conn.call(ApiKey::InitProducerId, 4, &bump);
    assert_eq!(r.error_code, PRODUCER_FENCED);
    bump.producer_epoch = epoch2;
    let r: InitProducerIdResponse = conn.call(ApiKey::InitProducerId, 4, &bump);
    assert_eq!((r.error_code, r.producer_id.0, r.producer_epoch), (0, pid, epoch2 + 1));
    let mut bad = InitProducerIdRequest::default();
    bad.transactional_id = Some(TransactionalId(s("app-1")));
    bad.transaction_timeout_ms = 1_000_000_000;
    let r: InitProducerIdResponse = conn.call(ApiKey::InitProducerId, 4, &bad);
    assert_eq!(r.error_code, 50, "INVALID_TRANSACTION_TIMEOUT");
}

#[test]
fn timed_out_transaction_is_aborted_and_its_producer_fenced() {
    let broker = BrokerProcess::start(&["--transaction-abort-timed-out-transaction-cleanup-interval-ms", "50"]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    wire::create_topic(&mut conn, "slow", 1, &[]);
    // Long enough that the setup below always ends before the timeout on a loaded machine.
    let me = txn_init(&mut conn, "slow-app", 5_000);
    assert_eq!(add(&mut conn, "slow-app", me, &[("slow", 0)]), vec![0]);
    assert_eq!(wire::produce(&mut conn, "slow", 0, txn_batch(&[b"late"], me.0, me.1, 0)).0, 0);
    assert_eq!(end_offset(&mut conn, "slow", 0, true), 0);
    // The marker is visible before the coordinator records CompleteAbort: wait for both.
    wait_until(Duration::from_secs(40), "the coordinator aborts the expired transaction", || {
        end_offset(&mut conn, "slow", 0, true) == 2
            && describe_txn(&mut conn, "slow-app").transaction_state.as_str() == "CompleteAbort"
    });
    let d = describe_txn(&mut conn, "slow-app");
    assert_eq!((d.transaction_state.as_str(), d.producer_epoch), ("CompleteAbort", me.1 + 1));
    let p = fetch(&mut conn, "slow", 0, 0, true);
    assert_eq!(p.aborted_transactions.unwrap_or_default().len(), 1);
    assert_eq!(end(&mut conn, "slow-app", me, true, 3), PRODUCER_FENCED);
    let (code, _) = wire::produce(&mut conn, "slow", 0, txn_batch(&[b"later"], me.0, me.1, 1));
    assert_eq!(code, INVALID_PRODUCER_EPOCH);
}

#[test]
fn idle_transactional_ids_expire() {
    let broker = BrokerProcess::start(&[
        "--transactional-id-expiration-ms",
        "3000",
        "--transaction-abort-timed-out-transaction-cleanup-interval-ms",
        "50",
    ]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    let first = txn_init(&mut conn, "idle-app", 60_000);
    assert_eq!(describe_txn(&mut conn, "idle-app").error_code, 0);
    wait_until(Duration::from_secs(20), "the idle transactional id is forgotten", || {
        describe_txn(&mut conn, "idle-app").error_code == TRANSACTIONAL_ID_NOT_FOUND
    });
    // Coming back is a fresh start: a new producer id at epoch 0.
    let again = txn_init(&mut conn, "idle-app", 60_000);
    assert_ne!(again.0, first.0);
    assert_eq!(again.1, 0);
}

#[test]
fn open_transaction_survives_sigkill_and_producer_state_too() {
    let mut broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    wire::create_topic(&mut conn, "crashy", 1, &[]);
    let me = txn_init(&mut conn, "crash-app", 60_000);
    assert_eq!(add(&mut conn, "crash-app", me, &[("crashy", 0)]), vec![0]);
    assert_eq!(wire::produce(&mut conn, "crashy", 0, txn_batch(&[b"1", b"2"], me.0, me.1, 0)).0, 0);
    broker.kill9();
    broker.restart();
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(describe_txn(&mut conn, "crash-app").transaction_state.as_str(), "Ongoing");
    assert_eq!(end_offset(&mut conn, "crashy", 0, true), 0, "still open after the restart");
    // The producer carries on: a retry is recognised, the next batch follows.
    assert_eq!(wire::produce(&mut conn, "crashy", 0, txn_batch(&[b"1", b"2"], me.0, me.1, 0)), (0, 0));
    assert_eq!(wire::produce(&mut conn, "crashy", 0, txn_batch(&[b"3"], me.0, me.1, 2)), (0, 2));
    assert_eq!(end(&mut conn, "crash-app", me, true, 3), 0);
    let p = fetch(&mut conn, "crashy", 0, 0, true);
    assert_eq!(record_offsets(p.records.as_ref().expect("records")), vec![0, 1, 2]);
}

#[test]
fn crash_between_markers_completes_the_commit_on_restart() {
    let mut broker = BrokerProcess::start_with_env(&[], &[("FJORD_FAILPOINT", "txn-after-first-marker")]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    wire::create_topic(&mut conn, "two", 2, &[]);
    let me = txn_init(&mut conn, "two-app", 60_000);
    assert_eq!(add(&mut conn, "two-app", me, &[("two", 0), ("two", 1)]), vec![0, 0]);
    for p in 0..2 {
        assert_eq!(wire::produce(&mut conn, "two", p, txn_batch(&[b"v"], me.0, me.1, 0)).0, 0);
    }
    // The broker dies after the first marker of the commit.
    let mut req = EndTxnRequest::default();
    req.transactional_id = TransactionalId(s("two-app"));
    req.producer_id = ProducerId(me.0);
    req.producer_epoch = me.1;
    req.committed = true;
    conn.send(ApiKey::EndTxn, 3, &req);
    assert!(!broker.wait_exit(Duration::from_secs(20)).success());
    broker.env.clear();
    broker.restart();
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(describe_txn(&mut conn, "two-app").transaction_state.as_str(), "CompleteCommit");
    for p in 0..2 {
        let data = fetch(&mut conn, "two", p, 0, true);
        assert_eq!(record_offsets(data.records.as_ref().expect("records")), vec![0], "partition {p} committed");
        assert!(data.aborted_transactions.unwrap_or_default().is_empty());
        assert_eq!(data.last_stable_offset, data.high_watermark, "partition {p} stable");
    }
    // The client's retry of the commit is answered as done.
    assert_eq!(end(&mut conn, "two-app", me, true, 3), 0);
}

#[test]
fn idempotent_producer_through_a_proxy_that_loses_responses() {
    let proxy = LossyProxy::bind(7);
    let broker = BrokerProcess::start(&["--advertised-listener", &proxy.addr()]);
    proxy.forward_to(&broker.bootstrap());
    let mut conn = RawConn::connect(&broker.bootstrap());
    wire::create_topic(&mut conn, "lossy", 3, &[]);
    let out = run_client(
        client(python())
            .current_dir(clients_dir().join("python"))
            .arg("idempotent_lossy.py")
            .arg(proxy.addr())
            .arg("lossy")
            .arg("5000")
            .arg("3"),
        Duration::from_secs(240),
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(proxy.dropped() >= 3, "the proxy lost {} responses; the test needs some", proxy.dropped());
}

#[test]
fn confluent_transactions_visibility_and_fencing() {
    let broker = BrokerProcess::start(&[]);
    let out = run_client(
        client(python()).current_dir(clients_dir().join("python")).arg("txn_suite.py").arg(broker.bootstrap()),
        Duration::from_secs(240),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("fencing: ok"), "{stdout}");
}

#[test]
fn kafkajs_transactions_and_fencing() {
    let broker = BrokerProcess::start(&[]);
    let node_dir = clients_dir().join("node");
    assert!(node_dir.join("node_modules/kafkajs").exists(), "run scripts/setup-test-deps.sh to install kafkajs");
    let out = run_client(
        client("node").current_dir(&node_dir).arg("kafkajs_txn.js").arg(broker.bootstrap()),
        Duration::from_secs(240),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("kafkajs transactions passed"));
}

/// The transforms' stderr, appended across restarts, for failure reports.
fn transform_log(broker: &BrokerProcess) -> std::fs::File {
    let path = broker.data_dir.path().with_extension("transform.log");
    std::fs::OpenOptions::new().create(true).append(true).open(path).expect("transform log")
}

fn transform_log_tail(broker: &BrokerProcess) -> String {
    let text = std::fs::read_to_string(broker.data_dir.path().with_extension("transform.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The transform process; killed when dropped, so a failing test leaves
/// nothing running.
struct Transform(Child);

impl Transform {
    /// SIGKILL, and wait until it is gone.
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Transform {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start_transform(broker: &BrokerProcess) -> Transform {
    Transform(spawn_transform(broker))
}

fn spawn_transform(broker: &BrokerProcess) -> Child {
    client(python())
        .current_dir(clients_dir().join("python"))
        .args(["txn_transform.py", &broker.bootstrap(), "ctp-in", "ctp-out", "ctp-group", "ctp-app"])
        .stdout(Stdio::null())
        .stderr(transform_log(broker))
        .spawn()
        .expect("start transform")
}

fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the transform did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Output records written (committed or not) so far.
fn output_written(broker: &BrokerProcess) -> i64 {
    let mut conn = RawConn::connect(&broker.bootstrap());
    (0..3).map(|p| end_offset(&mut conn, "ctp-out", p, false)).sum()
}

#[test]
fn consume_transform_produce_is_exactly_once_through_sigkills() {
    let mut broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    wire::create_topic(&mut conn, "ctp-in", 3, &[]);
    wire::create_topic(&mut conn, "ctp-out", 3, &[]);
    let total = 15000;
    for p in 0..3 {
        for chunk in 0..(total / 3 / 100) {
            let values: Vec<Vec<u8>> = (0..100).map(|i| format!("in-{p}-{}", chunk * 100 + i).into_bytes()).collect();
            let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
            assert_eq!(wire::produce(&mut conn, "ctp-in", p, wire::batch(&refs, 1_000)).0, 0);
        }
    }
    // Kill the transform at random points of its progress (mid-transaction
    // more often than not), once the broker too, and start them again.
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut next_random = |bound: i64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % bound as u64) as i64
    };
    let mut transform = start_transform(&broker);
    let mut kills = 0;
    'rounds: for round in 0..5 {
        let target = output_written(&broker) + 200 + next_random(600);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while output_written(&broker) < target {
            // A client that gave up (a fatal error) is started again, as a
            // supervisor would.
            match transform.0.try_wait().expect("transform status") {
                Some(status) if status.success() => break 'rounds,
                Some(_) => transform = start_transform(&broker),
                None => {}
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the transform made no progress; its log:\n{}\nbroker log:\n{}",
                transform_log_tail(&broker),
                broker.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        kills += 1;
        if round == 2 {
            println!("round {round}: SIGKILL the broker at {} output records", output_written(&broker));
            broker.kill9();
            broker.restart();
        } else {
            println!("round {round}: SIGKILL the transform at {} output records", output_written(&broker));
            transform.kill();
            transform = start_transform(&broker);
        }
    }
    assert!(kills >= 3, "only {kills} kills happened before the transform finished; give it more input");
    // Run to the end; a fatal client error (exit 3) is restarted like a crash.
    let mut finished = false;
    for _ in 0..5 {
        let status = wait_child(&mut transform.0, Duration::from_secs(180));
        if status.success() {
            finished = true;
            break;
        }
        println!("transform exited with {status}; starting it again");
        transform = start_transform(&broker);
    }
    assert!(finished, "the transform finished the input");
    let out = run_client(
        client(python()).current_dir(clients_dir().join("python")).args([
            "txn_verify.py",
            &broker.bootstrap(),
            "ctp-in",
            "ctp-out",
        ]),
        Duration::from_secs(180),
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
}
