//! Topic configs at the wire, where a client library would hide the detail:
//! recompression to the topic's `compression.type` (raw batch attributes),
//! KIP-467 per-record errors in Produce responses, decompression bombs,
//! `flush.messages`, and DescribeConfigs types and documentation.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fjord_compat_tests::wire::{self, create_topic, keyed_batch, s, set_config};
use fjord_compat_tests::{free_addr, kcat_produce, metric, scrape_metrics, wait_until, BrokerProcess, RawConn};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::*;
use kafka_protocol::records::{Compression, RecordBatchDecoder};

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as i64
}

/// Produce v9 with acks=all: the whole partition response.
fn produce(conn: &mut RawConn, topic: &str, records: Bytes) -> produce_response::PartitionProduceResponse {
    let resp: ProduceResponse = conn.call(ApiKey::Produce, 9, &wire::produce_request(topic, 0, records));
    resp.responses[0].partition_responses[0].clone()
}

/// The raw bytes of partition 0 from `offset` (one Fetch).
fn fetch_raw(conn: &mut RawConn, topic: &str, offset: i64) -> Bytes {
    let mut fp = FetchPartition::default();
    fp.partition = 0;
    fp.fetch_offset = offset;
    fp.partition_max_bytes = 1 << 20;
    let mut ft = FetchTopic::default();
    ft.topic = TopicName(s(topic));
    ft.partitions = vec![fp];
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_bytes = 1 << 20;
    req.topics = vec![ft];
    let f: FetchResponse = conn.call(ApiKey::Fetch, 12, &req);
    let p = &f.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.records.clone().unwrap_or_default()
}

/// (codec of each batch, (key, value) of each record) of raw fetched bytes.
fn decode(raw: &Bytes) -> (Vec<i16>, Vec<(String, String)>) {
    let mut codecs = Vec::new();
    let mut pos = 0usize;
    while pos + 61 <= raw.len() {
        let len = i32::from_be_bytes(raw[pos + 8..pos + 12].try_into().expect("4 bytes")) as usize;
        codecs.push(i16::from_be_bytes([raw[pos + 21], raw[pos + 22]]) & 7);
        pos += 12 + len;
    }
    let mut buf = raw.clone();
    let recs = RecordBatchDecoder::decode_all(&mut buf)
        .expect("valid batches")
        .into_iter()
        .flat_map(|set| set.records)
        .map(|r| {
            let k = String::from_utf8_lossy(&r.key.unwrap_or_default()).to_string();
            (k, String::from_utf8_lossy(&r.value.unwrap_or_default()).to_string())
        })
        .collect();
    (codecs, recs)
}

#[test]
fn a_topic_codec_recompresses_what_producers_send() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    let created = create_topic(&mut conn, "to-zstd", 1, &[("compression.type", "zstd")]);
    assert_eq!(created.topics[0].error_code, 0);
    // kcat (librdkafka) sends uncompressed batches, then gzip ones.
    let plain: String = (0..50).map(|i| format!("key-{i}:value {i} {}\n", "abc".repeat(i))).collect();
    kcat_produce(&broker.bootstrap(), "to-zstd", "none", 0, &[], &plain);
    kcat_produce(&broker.bootstrap(), "to-zstd", "gzip", 0, &[], "g1:gzipped one\ng2:gzipped two\n");
    let mut got = Vec::new();
    let mut codecs = Vec::new();
    while got.len() < 52 {
        let raw = fetch_raw(&mut conn, "to-zstd", got.len() as i64);
        assert!(!raw.is_empty(), "records up to 52");
        let (c, r) = decode(&raw);
        codecs.extend(c);
        got.extend(r);
    }
    assert!(codecs.iter().all(|c| *c == 4), "every stored batch is zstd: {codecs:?}");
    let mut want: Vec<(String, String)> =
        (0..50).map(|i| (format!("key-{i}"), format!("value {i} {}", "abc".repeat(i)))).collect();
    want.push(("g1".into(), "gzipped one".into()));
    want.push(("g2".into(), "gzipped two".into()));
    assert_eq!(got, want, "records intact, in order");

    // `producer` (the default) keeps a batch as it was sent.
    create_topic(&mut conn, "as-sent", 1, &[]);
    let sent = keyed_batch(&[(Some("k"), b"v".to_vec(), now_ms())], Compression::Snappy);
    assert_eq!(produce(&mut conn, "as-sent", sent.clone()).error_code, 0);
    let stored = fetch_raw(&mut conn, "as-sent", 0);
    assert_eq!(&stored[16..], &sent[16..], "stored verbatim past the offset and epoch");
    // A topic switched to `uncompressed` stores new batches uncompressed.
    assert_eq!(set_config(&mut conn, 2, "as-sent", "compression.type", "uncompressed"), 0);
    assert_eq!(produce(&mut conn, "as-sent", sent).error_code, 0);
    let (codecs, recs) = decode(&fetch_raw(&mut conn, "as-sent", 1));
    assert_eq!((codecs, recs), (vec![0], vec![("k".to_string(), "v".to_string())]));
}

#[test]
fn produce_responses_list_the_records_that_failed() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    create_topic(&mut conn, "keyed", 1, &[("cleanup.policy", "compact")]);
    let now = now_ms();
    let b = keyed_batch(
        &[
            (Some("a"), b"1".to_vec(), now),
            (None, b"2".to_vec(), now),
            (Some("c"), b"3".to_vec(), now),
            (None, b"4".to_vec(), now),
        ],
        Compression::Lz4,
    );
    let r = produce(&mut conn, "keyed", b);
    assert_eq!(r.error_code, 87, "INVALID_RECORD");
    assert_eq!(r.record_errors.iter().map(|e| e.batch_index).collect::<Vec<_>>(), vec![1, 3]);
    assert!(r.record_errors.iter().all(|e| e.batch_index_error_message.as_ref().is_some_and(|m| m.contains("key"))));
    assert!(r.error_message.is_some());
    assert_eq!(wire::list_offset(&mut conn, "keyed", 0, -1), 0, "nothing of the batch was written");

    let hour = 3_600_000;
    create_topic(
        &mut conn,
        "window",
        1,
        &[("message.timestamp.before.max.ms", "3600000"), ("message.timestamp.after.max.ms", "3600000")],
    );
    let b = keyed_batch(
        &[
            (Some("ok"), b"1".to_vec(), now),
            (Some("old"), b"2".to_vec(), now - 2 * hour),
            (Some("new"), b"3".to_vec(), now + 2 * hour),
        ],
        Compression::None,
    );
    let r = produce(&mut conn, "window", b);
    assert_eq!(r.error_code, 32, "INVALID_TIMESTAMP");
    assert_eq!(r.record_errors.iter().map(|e| e.batch_index).collect::<Vec<_>>(), vec![1, 2]);
    let ok = keyed_batch(&[(Some("ok"), b"1".to_vec(), now - hour / 2)], Compression::None);
    assert_eq!(produce(&mut conn, "window", ok).error_code, 0);
    // The deprecated difference bounds both sides when they are not set.
    create_topic(&mut conn, "difference", 1, &[("message.timestamp.difference.max.ms", "60000")]);
    let r = produce(&mut conn, "difference", keyed_batch(&[(Some("x"), b"1".to_vec(), now - hour)], Compression::None));
    assert_eq!(r.error_code, 32);
    // LogAppendTime topics take any CreateTime: the broker's clock stamps them.
    create_topic(
        &mut conn,
        "append-time",
        1,
        &[("message.timestamp.type", "LogAppendTime"), ("message.timestamp.before.max.ms", "1")],
    );
    let r = produce(&mut conn, "append-time", keyed_batch(&[(Some("x"), b"1".to_vec(), 5)], Compression::None));
    assert_eq!(r.error_code, 0);
}

/// A zstd batch of a few kB whose one record is 256 MiB of zeros.
fn bomb() -> Bytes {
    let b = keyed_batch(&[(Some("bomb"), vec![0u8; 256 << 20], now_ms())], Compression::Zstd);
    assert!(b.len() < 64 << 10, "{} bytes", b.len());
    b
}

#[test]
fn decompression_bombs_are_refused_and_compaction_keeps_them_whole() {
    let broker = BrokerProcess::start(&["--log-cleaner-backoff-ms", "50"]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    let bomb = bomb();
    // Topics whose rules read records refuse it without expanding it.
    create_topic(&mut conn, "compacted", 1, &[("cleanup.policy", "compact")]);
    create_topic(&mut conn, "to-gzip", 1, &[("compression.type", "gzip")]);
    for topic in ["compacted", "to-gzip"] {
        let r = produce(&mut conn, topic, bomb.clone());
        assert_eq!(r.error_code, 10, "MESSAGE_TOO_LARGE on {topic}");
        assert!(r.error_message.as_ref().is_some_and(|m| m.contains("decompressed")), "{:?}", r.error_message);
        // The connection and the topic are fine afterwards.
        let ok = keyed_batch(&[(Some("k"), b"v".to_vec(), now_ms())], Compression::Zstd);
        assert_eq!(produce(&mut conn, topic, ok).error_code, 0);
    }
    let peak = broker.status_kb("VmHWM").expect("broker status");
    assert!(peak < 200 << 10, "the broker never held the expanded batch: peak {peak} kB");

    // A topic that does not read records stores it as sent (records are not
    // decoded on the produce path); made compacted later, compaction keeps
    // that batch whole and compacts the rest.
    // (The bomb's segment counts as clean after the first pass: a low
    // dirty ratio keeps later passes due.)
    create_topic(&mut conn, "later", 1, &[("segment.bytes", "1024"), ("min.cleanable.dirty.ratio", "0.01")]);
    assert_eq!(produce(&mut conn, "later", bomb.clone()).error_code, 0);
    assert_eq!(set_config(&mut conn, 2, "later", "cleanup.policy", "compact"), 0);
    let old = now_ms() - 1000;
    for round in 0..30 {
        let b = keyed_batch(
            &[(Some("k"), format!("round {round} {}", "x".repeat(200)).into_bytes(), old)],
            Compression::None,
        );
        assert_eq!(produce(&mut conn, "later", b).error_code, 0);
    }
    let count = |conn: &mut RawConn| {
        let mut n = 0;
        let mut next = 1;
        while next < 31 {
            let raw = fetch_raw(conn, "later", next);
            let mut buf = raw.clone();
            let sets = RecordBatchDecoder::decode_all(&mut buf).expect("valid");
            for r in sets.into_iter().flat_map(|s| s.records) {
                if r.offset >= next {
                    n += 1;
                }
                next = next.max(r.offset + 1);
            }
        }
        n
    };
    wait_until(Duration::from_secs(30), "compaction of the keyed records", || count(&mut conn) < 30);
    let first = fetch_raw(&mut conn, "later", 0);
    assert_eq!(&first[16..bomb.len()], &bomb[16..], "the bomb batch is still there, unread");
    let peak = broker.status_kb("VmHWM").expect("broker status");
    assert!(peak < 200 << 10, "compaction never expanded it: peak {peak} kB");
}

#[test]
fn flush_messages_syncs_appends_whatever_the_acks() {
    let addr = free_addr();
    let broker = BrokerProcess::start(&["--metrics-listen", &addr]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    create_topic(&mut conn, "lazy", 1, &[]);
    create_topic(&mut conn, "eager", 1, &[("flush.messages", "1")]);
    let acks_one = |conn: &mut RawConn, topic: &str| {
        let mut req = wire::produce_request(topic, 0, wire::batch_of(1, now_ms()));
        req.acks = 1;
        let r: ProduceResponse = conn.call(ApiKey::Produce, 9, &req);
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    };
    let fsyncs =
        || metric(&scrape_metrics(&addr, "fjord_produced_bytes_total"), "fjord_log_fsyncs_total").unwrap_or(0.0);
    // The metrics page is served once something was produced.
    acks_one(&mut conn, "lazy");
    let before = fsyncs();
    for _ in 0..5 {
        acks_one(&mut conn, "lazy");
    }
    assert_eq!(fsyncs(), before, "acks=1 is not synced under the acks-all policy");
    for _ in 0..5 {
        acks_one(&mut conn, "eager");
    }
    assert!(fsyncs() >= before + 5.0, "flush.messages=1 syncs every append");
    // flush.ms: records left unsynced that long are synced in the background.
    create_topic(&mut conn, "timed", 1, &[("flush.ms", "200")]);
    let before = fsyncs();
    acks_one(&mut conn, "timed");
    wait_until(Duration::from_secs(10), "a flush.ms sync", || fsyncs() > before);
}

#[test]
fn describe_configs_gives_kafka_types_and_documentation() {
    let broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    let created = create_topic(&mut conn, "described", 1, &[("preallocate", "true")]);
    // CreateTopics v5+ returns every config as DescribeConfigs would.
    let configs = created.topics[0].configs.as_ref().expect("configs in the CreateTopics response");
    let entry = |n: &str| {
        let c = configs.iter().find(|c| c.name.as_str() == n).expect("config returned");
        (c.value.as_deref().map(str::to_string), c.config_source)
    };
    assert_eq!(
        configs.len(),
        38,
        "Kafka 3.9's 36 topic configs and Fjord's leader.preferred.racks and remote.restore.source"
    );
    assert_eq!(entry("preallocate"), (Some("true".to_string()), 1));
    assert_eq!(entry("retention.ms"), (Some("604800000".to_string()), 5));
    let mut req = DescribeConfigsRequest::default();
    let mut r = describe_configs_request::DescribeConfigsResource::default();
    r.resource_type = 2;
    r.resource_name = s("described");
    req.resources = vec![r];
    req.include_synonyms = true;
    req.include_documentation = true;
    let resp: DescribeConfigsResponse = conn.call(ApiKey::DescribeConfigs, 4, &req);
    let configs = &resp.results[0].configs;
    // Kafka 3.9's topic configs, every one.
    let kafka: &[&str] = &[
        "cleanup.policy",
        "compression.type",
        "compression.gzip.level",
        "compression.lz4.level",
        "compression.zstd.level",
        "delete.retention.ms",
        "file.delete.delay.ms",
        "flush.messages",
        "flush.ms",
        "follower.replication.throttled.replicas",
        "index.interval.bytes",
        "leader.replication.throttled.replicas",
        "local.retention.bytes",
        "local.retention.ms",
        "max.compaction.lag.ms",
        "max.message.bytes",
        "message.downconversion.enable",
        "message.format.version",
        "message.timestamp.after.max.ms",
        "message.timestamp.before.max.ms",
        "message.timestamp.difference.max.ms",
        "message.timestamp.type",
        "min.cleanable.dirty.ratio",
        "min.compaction.lag.ms",
        "min.insync.replicas",
        "preallocate",
        "remote.log.copy.disable",
        "remote.log.delete.on.disable",
        "remote.storage.enable",
        "retention.bytes",
        "retention.ms",
        "segment.bytes",
        "segment.index.bytes",
        "segment.jitter.ms",
        "segment.ms",
        "unclean.leader.election.enable",
    ];
    let names: Vec<String> = configs.iter().map(|c| c.name.to_string()).collect();
    for k in kafka {
        assert!(names.iter().any(|n| n == k), "{k} described");
    }
    let get = |n: &str| configs.iter().find(|c| c.name.as_str() == n).expect("described");
    // ConfigType: BOOLEAN 1, STRING 2, INT 3, LONG 5, DOUBLE 6, LIST 7.
    for (n, t) in [
        ("preallocate", 1),
        ("compression.type", 2),
        ("segment.bytes", 3),
        ("retention.ms", 5),
        ("min.cleanable.dirty.ratio", 6),
        ("cleanup.policy", 7),
    ] {
        assert_eq!(get(n).config_type, t, "type of {n}");
    }
    let pre = get("preallocate");
    assert_eq!((pre.value.as_deref(), pre.config_source, pre.read_only), (Some("true"), 1, false));
    assert!(pre.documentation.as_ref().is_some_and(|d| d.contains("ignored by Fjord")), "{:?}", pre.documentation);
    let syn: Vec<(String, i8)> = pre.synonyms.iter().map(|x| (x.name.to_string(), x.source)).collect();
    assert_eq!(syn, vec![("preallocate".to_string(), 1), ("log.preallocate".to_string(), 5)]);
    let ratio = get("min.cleanable.dirty.ratio");
    assert_eq!(ratio.value.as_deref(), Some("0.5"));
    assert_eq!(ratio.config_source, 5, "DEFAULT_CONFIG");
    assert!(ratio.documentation.as_ref().is_some_and(|d| !d.contains("ignored")));
    // Read-only broker configs are refused with INVALID_REQUEST, dynamic ones taken.
    assert_eq!(set_config(&mut conn, 4, "0", "log.dirs", "/elsewhere"), 42);
    assert_eq!(set_config(&mut conn, 4, "0", "log.cleaner.min.cleanable.ratio", "0.1"), 0);
    // An out-of-range broker value is INVALID_REQUEST too, as in Kafka.
    assert_eq!(set_config(&mut conn, 4, "0", "log.cleaner.min.cleanable.ratio", "7"), 42);
    let (value, source, _) = wire::describe_config(&mut conn, "described", "min.cleanable.dirty.ratio");
    assert_eq!((value.as_deref(), source), (Some("0.1"), 2), "this broker's dynamic value applies");
    // The cluster-wide default (resource "") sits under this broker's own
    // value, and applies where this broker has none.
    assert_eq!(set_config(&mut conn, 4, "", "log.cleaner.min.cleanable.ratio", "0.2"), 0);
    assert_eq!(set_config(&mut conn, 4, "", "log.segment.bytes", "2097152"), 0);
    let (value, source, synonyms) = wire::describe_config(&mut conn, "described", "min.cleanable.dirty.ratio");
    assert_eq!((value.as_deref(), source), (Some("0.1"), 2));
    assert_eq!(synonyms, vec!["log.cleaner.min.cleanable.ratio"; 3], "broker, cluster and static values");
    let (value, source, _) = wire::describe_config(&mut conn, "described", "segment.bytes");
    assert_eq!((value.as_deref(), source), (Some("2097152"), 3), "DYNAMIC_DEFAULT_BROKER_CONFIG");
}
