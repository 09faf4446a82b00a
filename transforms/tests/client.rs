//! The transforms' Kafka client against a live single-node broker: the `fjord` binary, built
//! beforehand (`cargo build -p fjord-broker --bin fjord`), on a free port with a temp data dir.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fjord_storage::records::Record;
use fjord_transforms::client::{
    Client, ClientConfig, ClientError, FetchResult, OutOfRange, ProducerRecord, TxnProducer, EARLIEST, LATEST,
};
use kafka_protocol::error::ResponseError;

/// The broker binary: `FJORD_BIN`, or the debug build in the target dir.
fn broker_bin() -> PathBuf {
    if let Ok(p) = std::env::var("FJORD_BIN") {
        return PathBuf::from(p);
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into()));
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| manifest.join("../target"));
    let bin = target.join("debug").join("fjord");
    assert!(bin.exists(), "{} is missing: run `cargo build -p fjord-broker --bin fjord` first", bin.display());
    bin
}

/// A broker process with its own data dir, killed on drop.
struct Broker {
    child: Child,
    addr: String,
    log: PathBuf,
    _data: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let data = tempfile::tempdir().expect("temp dir");
        let log = data.path().with_extension("log");
        let (child, addr) = Self::spawn(data.path(), "127.0.0.1:0", &log).unwrap_or_else(|e| panic!("{e}"));
        Broker { child, addr, log, _data: data }
    }

    /// SIGKILL, then the broker again on the same address and data dir.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // The port may linger for a moment after the kill.
            match Self::spawn(self._data.path(), &self.addr, &self.log) {
                Ok((child, addr)) => {
                    assert_eq!(addr, self.addr);
                    self.child = child;
                    return;
                }
                Err(e) => assert!(Instant::now() < deadline, "{e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The broker process on `listen`, and the address it says it listens on.
    fn spawn(data: &std::path::Path, listen: &str, log: &std::path::Path) -> Result<(Child, String), String> {
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("broker log");
        let mut cmd = Command::new(broker_bin());
        // The shell's FJORD_* settings are not this test's.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("FJORD_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .args(["--listen", listen, "--data-dir"])
            .arg(data)
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("start fjord");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut addr = None;
        let mut line = String::new();
        while addr.is_none() {
            line.clear();
            if out.read_line(&mut line).expect("broker stdout") == 0 {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("broker did not start:\n{}", std::fs::read_to_string(log).unwrap_or_default()));
            }
            addr = line.trim().strip_prefix("fjord listening on ").map(str::to_string);
        }
        // Whatever else it prints is read, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut out, &mut std::io::sink());
        });
        Ok((child, addr.expect("address")))
    }

    fn client(&self) -> Client {
        Client::connect(vec![self.addr.clone()], "transforms-client-test")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- broker log ---\n{}", self.log_tail());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as i64
}

fn record(timestamp: i64, key: &str, value: &str, headers: &[(&str, Option<&str>)]) -> ProducerRecord {
    let b = |s: &str| Bytes::from(s.to_string());
    ProducerRecord {
        timestamp,
        key: Some(b(key)),
        value: Some(b(value)),
        headers: headers.iter().map(|(k, v)| (b(k), v.map(b))).collect(),
    }
}

fn value(r: &Record) -> String {
    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()
}

fn values(rs: &[Record]) -> Vec<String> {
    rs.iter().map(value).collect()
}

/// Everything a consumer gets from offset 0 once the partition has settled: fetches until the
/// next offset reaches the high watermark and the last stable offset has caught up with it
/// (every transaction ended, its marker written). The last fetch's result holds the marks.
async fn read_all(client: &Client, topic: &str, partition: i32, read_committed: bool) -> (Vec<Record>, FetchResult) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut records = Vec::new();
    let mut offset = 0;
    loop {
        let f = client.fetch(topic, partition, offset, 1 << 20, 200, read_committed).await.expect("fetch");
        records.extend(f.records.iter().cloned());
        offset = f.next_offset;
        if offset >= f.high_watermark && f.last_stable_offset == f.high_watermark {
            return (records, f);
        }
        assert!(Instant::now() < deadline, "{topic}-{partition} did not settle: at {offset}, {f:?}");
    }
}

async fn create(client: &Client, topic: &str, partitions: i32) {
    client.create_topic(topic, partitions, 1).await.unwrap_or_else(|e| panic!("create {topic}: {e}"));
}

/// A committed transaction's records read back exactly (keys, values, headers, timestamps,
/// offsets) by a read_committed fetch, and nothing of it before the commit; its offsets are the
/// group's once it commits.
#[tokio::test]
async fn committed_transaction_is_read_back_exactly() {
    let broker = Broker::start();
    let client = broker.client();
    create(&client, "in", 1).await;
    create(&client, "out", 2).await;
    let meta = client.metadata(&["out", "in"]).await.expect("metadata");
    assert_eq!((meta[0].name.as_str(), meta[0].partition_count()), ("out", 2));
    assert_eq!(meta[1].partition_count(), 1);
    assert!(meta[0].partitions.iter().all(|p| p.leader >= 0), "{meta:?}");

    let mut producer = TxnProducer::new(&client, "exact");
    producer.init(60_000).await.expect("init");
    producer.begin().expect("begin");
    let t = now_ms();
    let sent: Vec<Vec<ProducerRecord>> = (0..2)
        .map(|p| {
            vec![
                record(t + 30, &format!("k{p}-0"), "zero", &[("h1", Some("x")), ("h1", Some("dup")), ("nil", None)]),
                record(t + 10, &format!("k{p}-1"), "one", &[]),
                record(t + 20, &format!("k{p}-2"), &"two".repeat(100), &[("only", Some(""))]),
            ]
        })
        .collect();
    for (p, records) in sent.iter().enumerate() {
        let offsets = producer.send("out", p as i32, records.clone()).await.expect("send");
        assert_eq!(offsets, [0, 1, 2]);
    }

    // Before the commit: in the log, not stable.
    let open = client.fetch("out", 0, 0, 1 << 20, 0, true).await.expect("fetch");
    assert!(open.records.is_empty(), "{open:?}");
    assert_eq!((open.next_offset, open.last_stable_offset, open.high_watermark), (0, 0, 3));
    let uncommitted = client.fetch("out", 0, 0, 1 << 20, 0, false).await.expect("fetch");
    assert_eq!(uncommitted.records.len(), 3);

    producer.send_offsets("exact-group", &[("in", 0, 42)]).await.expect("send_offsets");
    // A stable read of the group's offset waits for the transaction to end (or runs after it).
    let stable = tokio::spawn({
        let client = client.clone();
        async move { client.committed_offset("exact-group", "in", 0).await }
    });
    producer.commit().await.expect("commit");
    assert_eq!(stable.await.expect("task").expect("committed offset"), Some(42));

    for (p, records) in sent.iter().enumerate() {
        let (got, last) = read_all(&client, "out", p as i32, true).await;
        assert_eq!(got.len(), records.len(), "{got:?}");
        for (i, (g, s)) in got.iter().zip(records).enumerate() {
            assert_eq!(g.offset, i as i64);
            assert_eq!(g.timestamp, s.timestamp);
            assert_eq!(g.key, s.key);
            assert_eq!(g.value, s.value);
            assert_eq!(g.headers, s.headers);
        }
        // Three records and the commit marker.
        assert_eq!((last.next_offset, last.high_watermark, last.last_stable_offset), (4, 4, 4));
    }
    assert_eq!(client.committed_offset("exact-group", "in", 0).await.expect("committed"), Some(42));
    assert_eq!(client.committed_offset("other-group", "in", 0).await.expect("committed"), None);
    assert!(!producer.in_transaction());
}

/// One transaction written to many partitions at once (`send_many`): batches cut by size, a
/// partition named twice written in order, every record read back once in its partition, in
/// order, and a second transaction continuing each partition's sequence numbers.
#[tokio::test]
async fn a_transaction_writes_many_partitions_at_once() {
    let broker = Broker::start();
    let config = ClientConfig { max_batch_bytes: 2_000, ..ClientConfig::default() };
    let client = Client::with_config(vec![broker.addr.clone()], "transforms-client-test", config);
    create(&client, "wide", 4).await;
    let mut producer = TxnProducer::new(&client, "wide-writer");
    producer.init(60_000).await.expect("init");
    let t = now_ms();
    let batch = |p: i32, from: usize, n: usize| -> Vec<ProducerRecord> {
        (from..from + n)
            .map(|i| record(t, &format!("k{p}"), &format!("p{p}-{i:03}-{}", "x".repeat(100)), &[]))
            .collect()
    };
    for round in 0..2 {
        producer.begin().expect("begin");
        let mut writes: Vec<(String, i32, Vec<ProducerRecord>)> =
            (0..4).map(|p| ("wide".to_string(), p, batch(p, round * 100, 60))).collect();
        // Partition 1 again: its records follow the first 60 of the call.
        writes.push(("wide".to_string(), 1, batch(1, round * 100 + 60, 40)));
        producer.send_many(writes).await.expect("send_many");
        producer.commit().await.expect("commit");
    }
    for p in 0..4 {
        let (got, _) = read_all(&client, "wide", p, true).await;
        let per_round = if p == 1 { 100 } else { 60 };
        let want: Vec<String> = (0..2)
            .flat_map(|round| (round * 100..round * 100 + per_round).map(move |i| format!("p{p}-{i:03}")))
            .collect();
        let got: Vec<String> = values(&got).into_iter().map(|v| v[..v.len() - 101].to_string()).collect();
        assert_eq!(got, want, "partition {p}");
    }
}

/// An aborted transaction's records reach read_uncommitted consumers only, and its offsets never
/// become the group's.
#[tokio::test]
async fn aborted_transaction_is_invisible_read_committed() {
    let broker = Broker::start();
    let client = broker.client();
    create(&client, "abort-in", 1).await;
    create(&client, "abort-out", 1).await;
    let mut producer = TxnProducer::new(&client, "aborts");
    producer.init(60_000).await.expect("init");
    let t = now_ms();

    producer.begin().expect("begin");
    producer.send("abort-out", 0, vec![record(t, "a", "a", &[])]).await.expect("send");
    producer.send_offsets("abort-group", &[("abort-in", 0, 10)]).await.expect("send_offsets");
    producer.commit().await.expect("commit");

    producer.begin().expect("begin");
    let offsets =
        producer.send("abort-out", 0, vec![record(t, "b", "b", &[]), record(t, "c", "c", &[])]).await.expect("send");
    assert_eq!(offsets, [2, 3]);
    producer.send_offsets("abort-group", &[("abort-in", 0, 20)]).await.expect("send_offsets");
    producer.abort().await.expect("abort");
    assert_eq!(client.committed_offset("abort-group", "abort-in", 0).await.expect("committed"), Some(10));

    producer.begin().expect("begin");
    producer.send("abort-out", 0, vec![record(t, "d", "d", &[])]).await.expect("send");
    producer.commit().await.expect("commit");

    let (committed, last) = read_all(&client, "abort-out", 0, true).await;
    assert_eq!(values(&committed), ["a", "d"]);
    assert_eq!(committed.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 5]);
    assert_eq!(last.next_offset, 7, "a, marker, b, c, abort marker, d, marker");
    let (all, _) = read_all(&client, "abort-out", 0, false).await;
    assert_eq!(values(&all), ["a", "b", "c", "d"]);
    // Starting inside the aborted transaction: nothing of it, then d.
    let (from_b, _) = {
        let f = client.fetch("abort-out", 0, 2, 1 << 20, 0, true).await.expect("fetch");
        (f.records, f.next_offset)
    };
    assert_eq!(values(&from_b), ["d"]);
    assert_eq!(client.committed_offset("abort-group", "abort-in", 0).await.expect("committed"), Some(10));
}

/// A second producer with the same transactional id fences the first: the first's commit and
/// sends (the Produce path and the AddPartitionsToTxn path) fail with `Fenced`, for good, and its
/// open transaction is aborted.
#[tokio::test]
async fn a_new_instance_fences_the_old_one() {
    let broker = Broker::start();
    let client = broker.client();
    create(&client, "fence-out", 2).await;
    let t = now_ms();
    let one = |v: &str| vec![record(t, v, v, &[])];
    let fenced = |r: Result<(), ClientError>, what: &str| match r {
        Err(ClientError::Fenced(code)) => code,
        other => panic!("{what}: expected Fenced, got {other:?}"),
    };

    // EndTxn of a fenced producer.
    let mut first = TxnProducer::new(&client, "fenced");
    first.init(60_000).await.expect("init");
    first.begin().expect("begin");
    first.send("fence-out", 0, one("zombie-1")).await.expect("send");
    let mut second = TxnProducer::new(&client, "fenced");
    second.init(60_000).await.expect("init");
    let (pid1, epoch1) = first.producer_id_and_epoch().expect("initialized");
    let (pid2, epoch2) = second.producer_id_and_epoch().expect("initialized");
    assert_eq!(pid1, pid2);
    assert!(epoch2 > epoch1, "{epoch1} then {epoch2}");
    let code = fenced(first.commit().await, "commit");
    assert_eq!(code, ResponseError::ProducerFenced);
    // For good, without asking the broker again, and init does not undo it.
    assert!(first.is_fenced());
    fenced(first.send("fence-out", 0, one("zombie-1b")).await.map(|_| ()), "send after fencing");
    fenced(first.init(60_000).await, "init after fencing");
    fenced(first.begin(), "begin after fencing");

    // Produce of a fenced producer (its partition already in its transaction).
    second.begin().expect("begin");
    second.send("fence-out", 0, one("zombie-2")).await.expect("send");
    let mut third = TxnProducer::new(&client, "fenced");
    third.init(60_000).await.expect("init");
    fenced(second.send("fence-out", 0, one("zombie-2b")).await.map(|_| ()), "produce");

    // AddPartitionsToTxn of a fenced producer (a partition new to its transaction).
    third.begin().expect("begin");
    third.send("fence-out", 0, one("zombie-3")).await.expect("send");
    let mut owner = TxnProducer::new(&client, "fenced");
    owner.init(60_000).await.expect("init");
    fenced(third.send("fence-out", 1, one("zombie-3b")).await.map(|_| ()), "add partition");

    owner.begin().expect("begin");
    owner.send("fence-out", 0, one("owner")).await.expect("send");
    owner.commit().await.expect("commit");

    let (committed, _) = read_all(&client, "fence-out", 0, true).await;
    assert_eq!(values(&committed), ["owner"]);
    let (all, _) = read_all(&client, "fence-out", 0, false).await;
    assert_eq!(values(&all), ["zombie-1", "zombie-2", "zombie-3", "owner"]);
    let (other, last) = read_all(&client, "fence-out", 1, false).await;
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(last.high_watermark, 0);
}

/// ListOffsets: earliest, latest, and by timestamp (the first record at or after it, the end when
/// none is).
#[tokio::test]
async fn list_offset_earliest_latest_and_by_time() {
    let broker = Broker::start();
    let client = broker.client();
    create(&client, "times", 1).await;
    assert_eq!(client.list_offset("times", 0, EARLIEST).await.expect("earliest"), 0);
    assert_eq!(client.list_offset("times", 0, LATEST).await.expect("latest"), 0);
    assert_eq!(client.list_offset("times", 0, 0).await.expect("by time"), 0, "empty: the end");

    // Records ahead of the clock, so the transaction markers (stamped now) are older than all.
    let base = now_ms() + 10 * 24 * 3_600_000;
    let mut producer = TxnProducer::new(&client, "times");
    producer.init(60_000).await.expect("init");
    producer.begin().expect("begin");
    let batch = vec![
        record(base + 1000, "a", "a", &[]),
        record(base + 2000, "b", "b", &[]),
        record(base + 3000, "c", "c", &[]),
    ];
    assert_eq!(producer.send("times", 0, batch).await.expect("send"), [0, 1, 2]);
    producer.commit().await.expect("commit");
    producer.begin().expect("begin");
    assert_eq!(producer.send("times", 0, vec![record(base + 4000, "d", "d", &[])]).await.expect("send"), [4]);
    producer.commit().await.expect("commit");
    let (_, last) = read_all(&client, "times", 0, true).await;
    assert_eq!(last.high_watermark, 6);

    assert_eq!(client.list_offset("times", 0, EARLIEST).await.expect("earliest"), 0);
    assert_eq!(client.list_offset("times", 0, LATEST).await.expect("latest"), 6);
    for (ts, want) in [
        (0, 0),
        (base + 1000, 0),
        (base + 1001, 1),
        (base + 2500, 2),
        (base + 3000, 2),
        (base + 3001, 4),
        (base + 4000, 4),
        (base + 4001, 6),
    ] {
        assert_eq!(client.list_offset("times", 0, ts).await.expect("by time"), want, "timestamp base + {}", ts - base);
    }
}

/// Errors come back as what they are, at once: an offset past the end, an unknown topic or
/// partition, a call out of order.
#[tokio::test]
async fn errors_are_told_apart() {
    let broker = Broker::start();
    let client = broker.client();
    create(&client, "errs", 1).await;
    match client.fetch("errs", 0, 1000, 1 << 20, 0, true).await {
        Err(ClientError::OffsetOutOfRange(OutOfRange {
            offset: 1000, high_watermark: 0, log_start_offset: 0, ..
        })) => {}
        other => panic!("expected OffsetOutOfRange, got {other:?}"),
    }
    let started = Instant::now();
    for r in [
        client.fetch("no-such-topic", 0, 0, 1024, 0, false).await.map(|_| ()),
        client.fetch("errs", 5, 0, 1024, 0, false).await.map(|_| ()),
        client.metadata(&["no-such-topic"]).await.map(|_| ()),
    ] {
        let e = r.expect_err("unknown");
        assert_eq!(e.code(), Some(ResponseError::UnknownTopicOrPartition), "{e}");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "unknown topics are not retried: {:?}", started.elapsed());
    match client.create_topic("errs", 1, 1).await {
        Err(e) => assert_eq!(e.code(), Some(ResponseError::TopicAlreadyExists), "{e}"),
        Ok(()) => panic!("created twice"),
    }
    let mut producer = TxnProducer::new(&client, "errs");
    assert!(matches!(producer.begin(), Err(ClientError::State(_))), "begin before init");
    producer.init(60_000).await.expect("init");
    assert!(matches!(producer.send("errs", 0, vec![]).await, Err(ClientError::State(_))), "send before begin");
    producer.begin().expect("begin");
    assert!(matches!(producer.begin(), Err(ClientError::State(_))), "begin twice");
    // A transaction that wrote nothing ends without asking the coordinator.
    producer.commit().await.expect("empty commit");
    // An unknown partition fails the send (not retried), the transaction may then only be
    // aborted, and the producer needs init again.
    producer.begin().expect("begin");
    let e = producer.send("errs", 7, vec![record(1, "k", "v", &[])]).await.expect_err("no partition 7");
    assert_eq!(e.code(), Some(ResponseError::UnknownTopicOrPartition), "{e}");
    assert!(matches!(producer.commit().await, Err(ClientError::State(_))));
    producer.abort().await.expect("abort");
    assert!(matches!(producer.begin(), Err(ClientError::State(_))), "begin before init again");
    producer.init(60_000).await.expect("init again");
    producer.begin().expect("begin");
    producer.send("errs", 0, vec![record(1, "k", "v", &[])]).await.expect("send");
    producer.commit().await.expect("commit");
    let (got, _) = read_all(&client, "errs", 0, true).await;
    assert_eq!(values(&got), ["v"]);
}

/// After the broker crashes and comes back, the same client and producer go on: dead connections
/// are noticed and opened again, requests cut off are retried, the producer's sequence numbers
/// still match the log's.
#[tokio::test]
async fn client_and_producer_go_on_after_a_broker_restart() {
    let mut broker = Broker::start();
    let client = broker.client();
    create(&client, "again", 1).await;
    let mut producer = TxnProducer::new(&client, "again");
    producer.init(60_000).await.expect("init");
    let t = now_ms();
    producer.begin().expect("begin");
    producer.send("again", 0, vec![record(t, "a", "a", &[])]).await.expect("send");
    producer.send_offsets("again-group", &[("again", 0, 1)]).await.expect("send_offsets");
    producer.commit().await.expect("commit");

    broker.restart();
    producer.begin().expect("begin");
    let offsets = producer.send("again", 0, vec![record(t, "b", "b", &[])]).await.expect("send after restart");
    assert_eq!(offsets, [2]);
    producer.send_offsets("again-group", &[(String::from("again"), 0, 3)]).await.expect("send_offsets");
    producer.commit().await.expect("commit after restart");
    let (got, _) = read_all(&client, "again", 0, true).await;
    assert_eq!(values(&got), ["a", "b"]);
    assert_eq!(client.committed_offset("again-group", "again", 0).await.expect("committed"), Some(3));
}
