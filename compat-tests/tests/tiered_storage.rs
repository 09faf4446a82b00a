//! Tiered storage (KIP-405) against a real S3-compatible server (s3s-fs, which checks SigV4
//! signatures): closed segments go to the bucket, local retention then deletes them, and every
//! client still reads the topic from offset 0, read_committed too; ListOffsets by timestamp
//! finds remote data; the bucket going away mid-copy loses nothing and leaves no stray objects;
//! wrong credentials stop the broker with a clear error; in a cluster, a new leader carries on
//! where a killed one stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Once;
use std::time::Duration;

use fjord_compat_tests::cluster::LocalCluster;
use fjord_compat_tests::s3::{S3Server, ACCESS_KEY, BUCKET, SECRET_KEY};
use fjord_compat_tests::{
    broker_command, client, clients_dir, fjordctl_bin, free_addr, python, run_client, run_to_exit, wait_until, wire,
    BrokerProcess, RawConn,
};
use kafka_protocol::error::ResponseError;
use serde_json::Value;

const N: usize = 2000;

/// The credentials every broker of these tests reads from its environment (inherited).
fn aws_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (k, v) in S3Server::env(SECRET_KEY) {
            std::env::set_var(k, v);
        }
    });
}

fn topic_configs(segment_bytes: u32) -> String {
    format!(
        r#"{{"remote.storage.enable":"true","segment.bytes":"{segment_bytes}","local.retention.bytes":"1","retention.ms":"-1"}}"#
    )
}

/// The events' first timestamp (tiered.py's TIERED_BASE_TS): an hour ago, the same for every
/// command of this test process.
fn base_ts() -> String {
    static BASE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
        ((now - 3600) * 1000).to_string()
    })
    .clone()
}

fn tiered_py(args: &[&str]) -> Command {
    let mut c = client(python());
    c.current_dir(clients_dir().join("python")).arg("tiered.py").args(args).env("TIERED_BASE_TS", base_ts());
    c
}

/// This node's view of partition 0 of `topic` (`/v1/partitions`); null while it does not know
/// the topic (a node that just restarted).
fn partition(admin: &str, topic: &str) -> Value {
    let got = fjord_compat_tests::http_get(admin, &format!("/v1/partitions?topic={topic}"));
    let v: Value =
        got.filter(|(status, _)| *status == 200).and_then(|(_, b)| serde_json::from_str(&b).ok()).unwrap_or_default();
    v[0].clone()
}

/// Waits until the node at `admin` has its local log start past `past` (local retention let
/// the copied segments go) and, if it is the copying leader, nothing closed left to copy.
fn wait_tiered(admin: &str, topic: &str, past: i64, leader: bool) -> Value {
    wait_tiered_when(admin, topic, past, |_| leader)
}

/// `wait_tiered` on node `node` of a cluster, which copies whenever it leads the partition: as
/// it shows the leadership at each look, since an election under load can move it meanwhile.
fn wait_tiered_node(admin: &str, node: i32, topic: &str, past: i64) -> Value {
    wait_tiered_when(admin, topic, past, |p| p["leader"].as_i64() == Some(i64::from(node)))
}

/// `wait_tiered`, the node taken for the copying leader whenever `leads` says so of its view.
fn wait_tiered_when(admin: &str, topic: &str, past: i64, leads: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    wait_until(Duration::from_secs(90), "closed segments copied and deleted locally", || {
        last = partition(admin, topic);
        let local = &last["local"];
        (!leads(&last) || local["remote"]["upload_lag_segments"] == 0)
            && local["log_start_offset"].as_i64().unwrap_or(0) > past
    });
    last
}

/// The leader of partition 0 of `topic` as node index `i` of `cluster` shows it, once it shows
/// one (none while an election is under way).
fn leader_shown(cluster: &LocalCluster, i: usize, topic: &str) -> i32 {
    let mut leader = -1;
    wait_until(Duration::from_secs(30), "a leader of the partition", || {
        leader = cluster.leaders(i, topic).first().map_or(-1, |l| l.1);
        leader >= 1
    });
    leader
}

/// The newest manifest of every partition directory in the bucket: (directory, manifest).
fn manifests(s3: &S3Server) -> BTreeMap<String, Value> {
    let mut newest: BTreeMap<String, String> = BTreeMap::new();
    for o in s3.objects() {
        if let Some((dir, _)) = o.split_once("/manifest/") {
            let e = newest.entry(dir.to_string()).or_default();
            if o > *e {
                *e = o.clone();
            }
        }
    }
    newest.into_iter().map(|(d, o)| (d, serde_json::from_slice(&s3.read(&o)).expect("manifest JSON"))).collect()
}

/// What is wrong with the bucket, if anything: every object must be a manifest or one of the
/// five files of a copy the newest manifest names; each named copy has its five; copies do not
/// repeat a range. Returns how many copies the manifests name.
fn bucket_problems(s3: &S3Server) -> Result<usize, String> {
    let manifests = manifests(s3);
    if manifests.is_empty() {
        return Err(format!("no manifest in the bucket: {:?}", s3.objects()));
    }
    let objects = s3.objects();
    let mut copies = 0;
    for (dir, m) in &manifests {
        let segs = m["segments"].as_array().cloned().unwrap_or_default();
        let ids: BTreeSet<String> = segs.iter().filter_map(|s| s["id"].as_str().map(str::to_string)).collect();
        if ids.len() != segs.len() {
            return Err(format!("a copy is listed twice in {dir}"));
        }
        let mut files: BTreeMap<String, usize> = BTreeMap::new();
        for o in objects.iter().filter(|o| o.starts_with(&format!("{dir}/")) && !o.contains("/manifest/")) {
            let name = &o[dir.len() + 1..];
            let id = name.split('.').next().and_then(|stem| stem.splitn(3, '-').nth(2)).unwrap_or_default();
            if !ids.contains(id) {
                return Err(format!("object {o} belongs to no copy of the newest manifest (an orphan)"));
            }
            *files.entry(id.to_string()).or_default() += 1;
        }
        for id in &ids {
            if files.get(id) != Some(&5) {
                return Err(format!("copy {id} in {dir} lacks some of its log, indexes and snapshot"));
            }
        }
        let mut end = -1;
        for s in &segs {
            let (base, next) = (s["base_offset"].as_i64().unwrap_or(-1), s["next_offset"].as_i64().unwrap_or(-1));
            if next <= end || base >= next {
                return Err(format!("copy {} [{base}, {next}) adds no offsets after {end}", s["id"]));
            }
            end = next;
        }
        copies += segs.len();
    }
    Ok(copies)
}

/// Waits until the bucket has no stray object (the leader writes the manifest at the end of
/// each pass, so a copy committed a moment ago may not be in the newest manifest object yet).
fn check_bucket(s3: &S3Server) -> usize {
    let mut last = Err(String::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        last = bucket_problems(s3);
        if last.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last.unwrap_or_else(|e| panic!("{e}"))
}

/// Reads the topic from offset 0 with every client, both isolation levels, and checks each
/// value; then ListOffsets by timestamp on the remote part.
fn read_with_every_client(bootstrap: &str, topic: &str) {
    let n = N.to_string();
    for c in ["confluent", "kafka-python", "aiokafka"] {
        for iso in ["read_committed", "read_uncommitted"] {
            run_client(&mut tiered_py(&["read", bootstrap, topic, &n, c, iso]), Duration::from_secs(180));
        }
    }
    let dir = tempfile::tempdir().expect("tmp");
    for iso in ["read_committed", "read_uncommitted"] {
        let want = run_client(&mut tiered_py(&["expect", "-", "-", &n, iso]), Duration::from_secs(30)).stdout;
        let file = dir.path().join(format!("{iso}.txt"));
        std::fs::write(&file, &want).expect("expected values");
        let out = run_client(
            client("kcat")
                .args(["-b", bootstrap, "-t", topic, "-C", "-e", "-o", "beginning", "-f", "%s\\n"])
                .args(["-X", &format!("isolation.level={iso}")]),
            Duration::from_secs(120),
        );
        assert!(out.stdout == want, "kcat {iso} read the topic back from offset 0");
        let node_dir = clients_dir().join("node");
        run_client(
            client("node")
                .current_dir(&node_dir)
                .arg("kafkajs_read_all.js")
                .arg(bootstrap)
                .arg(topic)
                .arg(&file)
                .arg(iso),
            Duration::from_secs(180),
        );
    }
    run_client(&mut tiered_py(&["timestamps", bootstrap, topic, &n]), Duration::from_secs(60));
}

#[test]
fn every_client_reads_a_topic_whose_first_segments_are_only_in_the_bucket() {
    aws_env();
    let s3 = S3Server::start();
    let admin = free_addr();
    let mut args = s3.broker_args();
    args.extend(["--admin-listen".to_string(), admin.clone()]);
    let broker = BrokerProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let b = broker.bootstrap();
    let topic = "tiered-all-clients";
    run_client(
        &mut tiered_py(&["produce", &b, topic, &N.to_string(), &topic_configs(16384)]),
        Duration::from_secs(120),
    );
    let p = wait_tiered(&admin, topic, (N / 2) as i64 + 40, true);
    let remote = &p["local"]["remote"];
    assert_eq!(remote["start_offset"], 0, "the bucket holds the log from its start: {p}");
    assert!(remote["end_offset"].as_i64() >= p["local"]["log_start_offset"].as_i64(), "{p}");
    let copies = check_bucket(&s3);
    assert!(copies >= 20, "{copies} segments copied");
    // A deleted topic's objects leave the bucket.
    let mut conn = RawConn::connect(&b);
    let gone = "tiered-deleted";
    let created =
        wire::create_topic(&mut conn, gone, 1, &[("remote.storage.enable", "true"), ("segment.bytes", "1024")]);
    assert_eq!(created.topics[0].error_code, 0);
    for _ in 0..5 {
        assert_eq!(wire::produce(&mut conn, gone, 0, wire::batch_of(20, 1_700_000_000_000)).0, 0);
    }
    let objects_of = |s3: &S3Server| s3.objects().into_iter().filter(|o| o.starts_with(&format!("{gone}-"))).count();
    wait_until(Duration::from_secs(30), "the deleted topic's first copies", || objects_of(&s3) >= 5);
    let mut req = kafka_protocol::messages::DeleteTopicsRequest::default();
    req.topic_names = vec![kafka_protocol::messages::TopicName(wire::s(gone))];
    req.timeout_ms = 10_000;
    let r: kafka_protocol::messages::DeleteTopicsResponse =
        conn.call(kafka_protocol::messages::ApiKey::DeleteTopics, 5, &req);
    assert_eq!(r.responses[0].error_code, 0);
    wait_until(Duration::from_secs(30), "the deleted topic's objects deleted", || objects_of(&s3) == 0);
    // Compaction and remote storage do not mix: refused at creation and when altered.
    let mut conn = RawConn::connect(&b);
    let both = [("remote.storage.enable", "true"), ("cleanup.policy", "compact")];
    let r = wire::create_topic(&mut conn, "tiered-compacted", 1, &both);
    assert_eq!(r.topics[0].error_code, ResponseError::InvalidConfig.code());
    let msg = r.topics[0].error_message.as_deref().map(|m| m.to_string()).unwrap_or_default();
    assert!(msg.contains("compacted"), "{msg}");
    assert_eq!(wire::set_config(&mut conn, 2, topic, "cleanup.policy", "compact"), ResponseError::InvalidConfig.code());
    read_with_every_client(&b, topic);
    // What was read came from the bucket through the chunk cache.
    let metrics = fjord_compat_tests::http_get(&admin, "/metrics").expect("metrics").1;
    for name in
        ["fjord_remote_bytes_uploaded_total", "fjord_remote_bytes_downloaded_total", "fjord_remote_cache_hits_total"]
    {
        assert!(fjord_compat_tests::metric(&metrics, name).unwrap_or(0.0) > 0.0, "{name} counts: {metrics}");
    }
    // DeleteRecords below the local log start deletes from the bucket too.
    let cut = 500i64;
    run_client(
        &mut tiered_py(&["delete_records", &b, topic, &N.to_string(), &cut.to_string()]),
        Duration::from_secs(90),
    );
    wait_until(Duration::from_secs(30), "copies below the cut deleted from the bucket", || {
        manifests(&s3).values().all(|m| {
            let segs = m["segments"].as_array().cloned().unwrap_or_default();
            m["floor"] == cut && segs.iter().all(|s| s["next_offset"].as_i64() > Some(cut))
        })
    });
    check_bucket(&s3);
}

#[test]
fn a_bucket_that_dies_mid_copy_loses_nothing_and_keeps_no_stray_objects() {
    aws_env();
    let mut s3 = S3Server::start();
    let admin = free_addr();
    let mut args = s3.broker_args();
    // Archived: the producers' batches are uncompressed, so copies are stored as zstd chunks.
    // A backlog of 64 KiB (four segments) refuses produce until the bucket is back.
    args.extend(
        ["--admin-listen", &admin, "--remote-storage-compression", "zstd", "--remote-copy-lag-max-bytes", "65536"]
            .map(String::from),
    );
    let broker = BrokerProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let b = broker.bootstrap();
    let topic = "tiered-s3-dies";
    let n = N.to_string();
    let mut producer =
        tiered_py(&["produce", &b, topic, &n, &topic_configs(16384), "100"]).spawn().expect("start the producer");
    // Kill the bucket once copies are under way, while the producer still writes.
    wait_until(Duration::from_secs(60), "the first copies", || {
        s3.objects().iter().filter(|o| o.ends_with(".log")).count() >= 3
    });
    s3.kill();
    // Produce goes on until the backlog passes its limit, then is refused (retriably: the
    // producer keeps retrying); local retention waits for the bucket meanwhile.
    let metric = |name: &str| {
        let m = fjord_compat_tests::http_get(&admin, "/metrics").map(|r| r.1).unwrap_or_default();
        fjord_compat_tests::metric(&m, name).unwrap_or(0.0)
    };
    wait_until(Duration::from_secs(60), "copies to fail and produce to be refused", || {
        metric("fjord_remote_copy_errors_total") >= 2.0 && metric("fjord_remote_produce_refused_total") > 0.0
    });
    let p = partition(&admin, topic);
    let local = &p["local"];
    assert!(local["remote"]["upload_lag_segments"].as_u64() > Some(0), "segments wait for the bucket: {p}");
    // A read of data only the bucket holds fails retriably while it is down, and says where the
    // log starts.
    let mut conn = RawConn::connect(&b);
    let cold = wire::fetch(&mut conn, topic, 0, 0, false);
    assert_eq!(cold.error_code, ResponseError::KafkaStorageError.code(), "a remote read with the bucket down");
    assert_eq!(cold.log_start_offset, 0);
    assert!(
        local["log_start_offset"].as_i64() <= local["remote"]["end_offset"].as_i64().or(Some(0)),
        "nothing was deleted locally that the bucket does not hold: {p}"
    );
    s3.restart();
    let back = wire::fetch(&mut conn, topic, 0, 0, false);
    assert_eq!(back.error_code, 0, "the bucket is back");
    assert!(back.records.is_some_and(|r| !r.is_empty()), "records from offset 0");
    let status = producer.wait().expect("producer");
    assert!(status.success(), "every record was delivered once the bucket was back");
    wait_tiered(&admin, topic, (N / 2) as i64 + 40, true);
    check_bucket(&s3);
    for iso in ["read_committed", "read_uncommitted"] {
        run_client(&mut tiered_py(&["read", &b, topic, &n, "confluent", iso]), Duration::from_secs(180));
    }
    // Stored compressed: the bucket holds far fewer bytes than the local segments held.
    let p = partition(&admin, topic);
    let stored = p["local"]["remote"]["size_bytes"].as_u64().expect("size");
    assert!(stored > 0 && stored < 300 * N as u64 / 3, "archived copies are compressed: {stored} bytes: {p}");
}

/// A segment larger than the multipart threshold goes up in parts (s3s-fs assembles them and
/// checks each part's signature), with credentials read from a profile file rather than the
/// environment; consumers then read it back from the bucket record for record.
#[test]
fn a_large_segment_goes_up_in_parts_with_credentials_from_a_profile_file() {
    let s3 = S3Server::start();
    let creds = tempfile::tempdir().expect("temp dir");
    let file = creds.path().join("credentials");
    std::fs::write(
        &file,
        format!("[archive]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
    )
    .expect("credentials file");
    let file = file.to_string_lossy().to_string();
    // Blank environment credentials count as absent, so the chain goes on to the profile.
    let env = [
        ("AWS_ACCESS_KEY_ID", ""),
        ("AWS_SECRET_ACCESS_KEY", ""),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", file.as_str()),
        ("AWS_PROFILE", "archive"),
    ];
    let admin = free_addr();
    let mut args = s3.broker_args();
    args.extend(["--admin-listen".to_string(), admin.clone()]);
    let broker = BrokerProcess::start_with_env(&args.iter().map(String::as_str).collect::<Vec<_>>(), &env);
    let b = broker.bootstrap();
    let topic = "tiered-multipart";
    let segment = 17u64 << 20;
    let mut conn = RawConn::connect(&b);
    let created = wire::create_topic(
        &mut conn,
        topic,
        1,
        &[
            ("remote.storage.enable", "true"),
            ("segment.bytes", &segment.to_string()),
            ("local.retention.bytes", "1"),
            ("retention.ms", "-1"),
        ],
    );
    assert_eq!(created.topics[0].error_code, 0);
    // About 20 MiB of records: the first segment closes between 16 MiB (kcat's batches are at
    // most 1 MiB) and 17 MiB, past the size from which copies go up in parts.
    let count = 20_000usize;
    let value = |i: usize| format!("{i:08}-{}", "abcdefghij".repeat(99));
    let lines: String = (0..count).map(|i| format!("k{i}:{}\n", value(i))).collect();
    fjord_compat_tests::kcat_produce(&b, topic, "none", 0, &[], &lines);
    let p = wait_tiered(&admin, topic, 0, true);
    assert_eq!(p["local"]["remote"]["start_offset"], 0, "{p}");
    check_bucket(&s3);
    let logs: Vec<String> = s3.objects().into_iter().filter(|o| o.ends_with(".log")).collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let stored = s3.read(&logs[0]).len() as u64;
    // 16 MiB: tiering's MULTIPART_FROM (this crate does not build the S3 client to import it).
    assert!(stored >= 16 << 20 && stored <= segment, "{stored} bytes");
    // Every record, the copied ones from the bucket, in order and intact.
    let out = run_client(
        client("kcat")
            .args(["-b", &b, "-t", topic, "-C", "-o", "beginning", "-c", &count.to_string(), "-e"])
            .args(["-f", "%o %s\n"]),
        Duration::from_secs(120),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut n = 0;
    for (i, line) in text.lines().enumerate() {
        assert_eq!(line, format!("{i} {}", value(i)), "record {i}");
        n += 1;
    }
    assert_eq!(n, count);
}

#[test]
fn wrong_credentials_stop_the_broker_with_a_clear_error() {
    let s3 = S3Server::start();
    let data = tempfile::tempdir().expect("data dir");
    let mut cmd = broker_command();
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(data.path()).args(s3.broker_args());
    for (k, v) in S3Server::env("not-the-secret") {
        cmd.env(k, v);
    }
    let (status, out) = run_to_exit(&mut cmd, Duration::from_secs(60));
    let status = status.expect("the broker exits on its own");
    assert!(!status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused access") && err.contains("credentials") && err.contains(BUCKET), "{err}");
}

#[test]
fn a_new_leader_carries_on_copying_where_a_killed_one_stopped() {
    aws_env();
    let s3 = S3Server::start();
    let args = s3.broker_args();
    let mut cluster = LocalCluster::start_with(3, &args.iter().map(String::as_str).collect::<Vec<_>>());
    cluster.wait_formed(Duration::from_secs(60));
    let b = cluster.bootstrap();
    let topic = "tiered-failover";
    let n = N.to_string();
    let mut producer =
        tiered_py(&["produce", &b, topic, &n, &topic_configs(16384), "200"]).spawn().expect("start the producer");
    // Kill the leader mid-stream, once it has copied a few segments and the transactions are
    // written (librdkafka's transactional producer can wait forever on a coordinator that died:
    // confluentinc/librdkafka#5511; this test is about the copies).
    wait_until(Duration::from_secs(90), "the first copies and both transactions", || {
        let copies = s3.objects().iter().filter(|o| o.ends_with(".log")).count();
        let hw = partition(&cluster.metrics[0], topic)["local"]["high_watermark"].as_i64().unwrap_or(0);
        copies >= 3 && hw > (N / 2) as i64 + 2 * 21
    });
    let leader = leader_shown(&cluster, 0, topic);
    let killed = (leader - 1) as usize;
    cluster.nodes[killed].kill9();
    let status = producer.wait().expect("producer");
    assert!(status.success(), "produce carries on on the new leader");
    let alive: Vec<usize> = (0..3).filter(|i| *i != killed).collect();
    // The new leader copies the rest; both live replicas trim their local logs behind the
    // bucket (followers learn the copies through the partition's log).
    wait_until(Duration::from_secs(30), "a new leader", || {
        let new_leader = cluster.leaders(alive[0], topic).first().map_or(-1, |l| l.1);
        new_leader != leader && new_leader > 0
    });
    for i in &alive {
        wait_tiered_node(&cluster.metrics[*i], *i as i32 + 1, topic, (N / 2) as i64 + 40);
    }
    check_bucket(&s3);
    for iso in ["read_committed", "read_uncommitted"] {
        run_client(&mut tiered_py(&["read", &b, topic, &n, "confluent", iso]), Duration::from_secs(180));
    }
    // The killed node comes back, learns the copies and trims too.
    cluster.nodes[killed].restart();
    wait_tiered(&cluster.metrics[killed], topic, (N / 2) as i64 + 40, false);
    check_bucket(&s3);

    // A follower loses its disk: it comes back with the bucket's manifest and the leader's
    // tail (a snapshot at the local retention point), not the whole history.
    let leader_now = leader_shown(&cluster, alive[0], topic);
    let wiped = alive.iter().copied().find(|i| *i as i32 + 1 != leader_now).expect("a follower");
    cluster.nodes[wiped].kill9();
    cluster.nodes[wiped].wipe();
    cluster.nodes[wiped].restart();
    let p = wait_tiered(&cluster.metrics[wiped], topic, (N / 2) as i64 + 40, false);
    assert!(p["local"]["remote"]["segments"].as_u64() > Some(0), "the rebuilt replica knows the copies: {p}");
    assert!(p["local"]["size_bytes"].as_u64() < Some(100 * 1024), "only the tail is local: {p}");
    run_client(&mut tiered_py(&["read", &b, topic, &n, "confluent", "read_committed"]), Duration::from_secs(180));

    // DeleteRecords into the bucket's part goes through the partition's log: every replica
    // raises its manifest's floor, and the copies wholly below it leave the bucket.
    let cut = 300i64;
    run_client(&mut tiered_py(&["delete_records", &b, topic, &n, &cut.to_string()]), Duration::from_secs(90));
    for i in 0..3 {
        wait_until(Duration::from_secs(30), "every replica's manifest starts at the cut", || {
            partition(&cluster.metrics[i], topic)["local"]["remote"]["start_offset"] == cut
        });
    }
    wait_until(Duration::from_secs(30), "copies below the cut deleted from the bucket", || {
        manifests(&s3).values().all(|m| {
            let segs = m["segments"].as_array().cloned().unwrap_or_default();
            m["floor"] == cut && segs.iter().all(|s| s["next_offset"].as_i64() > Some(cut))
        })
    });
    check_bucket(&s3);
    // Compaction and remote storage do not mix in a cluster either (the controller refuses).
    let mut conn = cluster.conn(wiped);
    let both = [("remote.storage.enable", "true"), ("cleanup.policy", "compact")];
    let r = wire::create_topic(&mut conn, "tiered-compacted", 1, &both);
    assert_eq!(r.topics[0].error_code, ResponseError::InvalidConfig.code(), "{r:?}");
}

#[test]
fn a_fresh_cluster_restores_a_topic_from_the_bucket_with_offsets_and_timestamps_intact() {
    aws_env();
    let s3 = S3Server::start();
    let admin = free_addr();
    let mut args = s3.broker_args();
    args.extend(["--admin-listen".to_string(), admin.clone()]);
    let mut lost = BrokerProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let topic = "tiered-restored";
    let n = N.to_string();
    run_client(
        &mut tiered_py(&["produce", &lost.bootstrap(), topic, &n, &topic_configs(16384)]),
        Duration::from_secs(120),
    );
    wait_tiered(&admin, topic, (N / 2) as i64 + 42, true);
    // The region is lost: only the bucket is left.
    lost.kill9();
    // What the bucket holds is what a restore can bring back. It is read after the kill: the
    // broker may still have copied a segment after the wait (a snapshot of the partition's log
    // can roll the active segment, which then gets copied).
    let end = manifests(&s3)
        .values()
        .flat_map(|m| m["segments"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s["next_offset"].as_i64())
        .max()
        .expect("copies in the bucket's manifest");
    assert!(end > (N / 2) as i64 + 42, "the bucket holds the copies the broker reported: {end}");

    let fresh_args = s3.broker_args();
    let cluster = LocalCluster::start_with(3, &fresh_args.iter().map(String::as_str).collect::<Vec<_>>());
    cluster.wait_formed(Duration::from_secs(60));
    let b = cluster.bootstrap();
    let out = run_client(
        Command::new(fjordctl_bin()).args(["--brokers", &b, "-o", "json", "topic", "restore", topic]),
        Duration::from_secs(60),
    );
    let created: Value = serde_json::from_slice(&out.stdout).expect("fjordctl JSON");
    assert_eq!(created["partitions"], 1, "the source's partition count: {created}");
    // Every replica takes the copies and moves its log on to their end.
    let restored = |i: usize| {
        let p = partition(&cluster.metrics[i], topic);
        p["local"]["remote"]["end_offset"] == end && p["local"]["log_start_offset"] == end
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(0..3).all(restored) {
        assert!(
            std::time::Instant::now() < deadline,
            "the partition was not restored on every replica: {:?}\n{}",
            (0..3).map(|i| partition(&cluster.metrics[i], topic)).collect::<Vec<_>>(),
            cluster.nodes.iter().map(|n| n.log_tail()).collect::<Vec<_>>().join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Every client reads the restored topic from offset 0, offsets and timestamps as they were.
    let upto = end.to_string();
    for iso in ["read_committed", "read_uncommitted"] {
        for c in ["confluent", "kafka-python"] {
            run_client(&mut tiered_py(&["read", &b, topic, &n, c, iso, &upto]), Duration::from_secs(180));
        }
    }
    run_client(&mut tiered_py(&["timestamps", &b, topic, &n, &upto]), Duration::from_secs(60));
    // New writes continue after the restored offsets.
    fjord_compat_tests::kcat_produce(&b, topic, "none", 0, &[], "after:restore\n");
    let out = run_client(
        client("kcat").args(["-b", &b, "-t", topic, "-C", "-o", "-1", "-c", "1", "-e", "-f", "%o %s"]),
        Duration::from_secs(60),
    );
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (offset, value) = line.split_once(' ').expect("offset and value");
    assert_eq!(value, "restore");
    assert!(offset.parse::<i64>().expect("offset") >= end, "{line}: a new record goes after {end}");
    // Restoring again is refused: the topic exists; a topic the bucket never held is named.
    let out = Command::new(fjordctl_bin())
        .args(["--brokers", &b, "topic", "restore", "no-such-topic"])
        .output()
        .expect("fjordctl");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the bucket holds no topic"), "{err}");
}
