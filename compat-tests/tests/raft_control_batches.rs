//! Raft's own entries stored in a partition log (a blank entry as a LEADER_CHANGE control batch,
//! a membership as a Fjord-private control type, a compaction filler spanning several offsets)
//! are skipped by real consumers: librdkafka (both
//! isolation levels) and kafka-python read every data record around them, at their offsets.
//!
//! The fixture lays out the data dir with the broker's own types and appends the control batches
//! exactly as the replicated store writes them (`batch::build_control`, stamped at the log end).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fjord_broker::config::BrokerConfig;
use fjord_broker::topics::Topics;
use fjord_compat_tests::{client, python, run_client, BrokerProcess};
use fjord_storage::batch::{build_batch, build_control, patch, CONTROL_LEADER_CHANGE};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const TOPIC: &str = "raft-control";
/// The data records and their offsets: control batches sit at 2, 3, 6 to 8 (one filler batch)
/// and 9.
const EXPECTED: [(i64, &str); 5] = [(0, "a0"), (1, "a1"), (4, "b0"), (5, "b1"), (10, "c0")];

fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = BrokerConfig { data_dir: dir.path().to_path_buf(), ..BrokerConfig::default() };
    let topics = Topics::open(&config).expect("open data dir");
    topics.create(TOPIC, 1, BTreeMap::new(), false).expect("create topic");
    let log = topics.log(TOPIC, 0).expect("partition");
    let control = |kind: i16, value: &[u8]| {
        let mut b = build_control(kind, value);
        patch(&mut b, log.log_end_offset(), 1, None);
        log.append_entry(&b, 1_000).expect("control batch");
    };
    let data = |values: &[&str]| {
        let kv: Vec<_> = values.iter().map(|v| (None, Some(v.as_bytes()))).collect();
        log.append(&build_batch(0, 1_000, &kv), 1, 1_000).expect("data batch");
    };
    data(&["a0", "a1"]);
    control(CONTROL_LEADER_CHANGE, b"");
    control(0x4601, br#"{"configs":[[1,2,3]],"nodes":{"1":{},"2":{},"3":{}}}"#);
    data(&["b0", "b1"]);
    // A filler for three offsets whose records compaction removed on a leader: a follower that
    // took it, and later leads, serves it.
    let end = log.log_end_offset();
    log.append_entry(&fjord_storage::batch::build_filler(end, end + 3, 1), 1_000).expect("filler");
    control(CONTROL_LEADER_CHANGE, b"");
    data(&["c0"]);
    log.sync_now().expect("sync");
    dir
}

fn consume_with_librdkafka(bootstrap: &str, isolation: &str) -> Vec<(i64, String)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("raft-control-{isolation}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("librdkafka consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Beginning).expect("partition");
    consumer.assign(&tpl).expect("assign");
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < EXPECTED.len() && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => got.push((m.offset(), String::from_utf8_lossy(m.payload().unwrap_or_default()).into())),
            Some(Err(e)) => panic!("{isolation}: consume error {e}"),
            None => {}
        }
    }
    // Nothing more arrives (a control batch must not surface as a record).
    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
        panic!("{isolation}: unexpected record at offset {}", m.offset());
    }
    got
}

fn expected() -> Vec<(i64, String)> {
    EXPECTED.iter().map(|(o, v)| (*o, v.to_string())).collect()
}

#[test]
fn consumers_skip_raft_control_batches() {
    let broker = BrokerProcess::start_in(data_dir(), &[]);
    let bootstrap = broker.bootstrap();
    for isolation in ["read_uncommitted", "read_committed"] {
        assert_eq!(consume_with_librdkafka(&bootstrap, isolation), expected(), "librdkafka {isolation}");
    }
    let script = r#"
import sys
from kafka import KafkaConsumer, TopicPartition
# Reads the expected count (however slow the first fetch), then whatever else comes within 2 s.
c = KafkaConsumer(bootstrap_servers=sys.argv[1], enable_auto_commit=False, consumer_timeout_ms=40000)
tp = TopicPartition(sys.argv[2], 0)
c.assign([tp])
c.seek_to_beginning(tp)
want = int(sys.argv[3])
for i, m in enumerate(c):
    print(m.offset, m.value.decode())
    if i + 1 == want:
        break
for records in c.poll(timeout_ms=2000).values():
    for m in records:
        print(m.offset, m.value.decode())
"#;
    let want = expected().len().to_string();
    let out = run_client(
        client(python()).arg("-c").arg(script).arg(&bootstrap).arg(TOPIC).arg(&want),
        Duration::from_secs(90),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let got: Vec<(i64, String)> = stdout
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(o, v)| (o.parse().expect("offset"), v.to_string()))
        .collect();
    assert_eq!(got, expected(), "kafka-python; stderr: {}", String::from_utf8_lossy(&out.stderr));
}
