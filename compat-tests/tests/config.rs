//! The `fjord` command line and config file, from outside: flags, FJORD_*
//! variables and the file set the same keys in that order of precedence,
//! and a bad value stops the broker at start with one line naming the key.
//! The cluster keys (node id, rack, voters) as clients see them.

use std::time::Duration;

use fjord_compat_tests::wire::{s, set_config, topic_metadata};
use fjord_compat_tests::{broker_command, run_to_exit, BrokerProcess, RawConn};
use kafka_protocol::messages::*;

/// Runs `fjord` with these arguments, expecting it to stop on its own;
/// returns whether it succeeded and its stdout and stderr.
fn fjord_exits(args: &[&str]) -> (bool, String, String) {
    fjord_exits_with_env(args, &[])
}

fn fjord_exits_with_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = broker_command();
    cmd.arg("--listen").arg("127.0.0.1:0").arg("--data-dir").arg(dir.path()).args(args);
    cmd.envs(env.iter().copied());
    let (status, out) = run_to_exit(&mut cmd, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let status = status.unwrap_or_else(|| panic!("fjord {args:?} kept running:\n{stderr}"));
    assert!(!stderr.contains("panicked"), "fjord {args:?} panicked:\n{stderr}");
    (status.success(), String::from_utf8_lossy(&out.stdout).to_string(), stderr)
}

/// Asserts `fjord` refuses to start with these arguments, saying `says`
/// in one line.
fn refused(args: &[&str], says: &str) {
    refused_with_env(args, &[], says)
}

/// As `refused`, with these variables set; nothing binds first (the
/// broker never says it listens).
fn refused_with_env(args: &[&str], env: &[(&str, &str)], says: &str) {
    let (ok, stdout, stderr) = fjord_exits_with_env(args, env);
    assert!(!ok, "fjord {args:?} {env:?} should not start");
    assert!(!stdout.contains("listening"), "fjord {args:?} {env:?} started serving first:\n{stdout}");
    let line = stderr.lines().find(|l| l.contains(says));
    assert!(line.is_some(), "fjord {args:?}: no line says {says:?}:\n{stderr}");
}

fn partitions_of_a_new_topic(broker: &BrokerProcess) -> usize {
    let mut conn = RawConn::connect(&broker.bootstrap());
    topic_metadata(&mut conn, "auto", true).partitions.len()
}

#[test]
fn variables_sit_between_the_file_and_the_flags() {
    let env = BrokerProcess::start_with_env(&[], &[("FJORD_NUM_PARTITIONS", "3")]);
    assert_eq!(partitions_of_a_new_topic(&env), 3, "FJORD_NUM_PARTITIONS");
    let flag = BrokerProcess::start_with_env(&["--num-partitions", "2"], &[("FJORD_NUM_PARTITIONS", "3")]);
    assert_eq!(partitions_of_a_new_topic(&flag), 2, "the flag wins over the variable");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("fjord.toml");
    std::fs::write(&file, "num_partitions = 5\n").expect("write config");
    let file_arg = file.to_str().expect("utf-8 path");
    let from_file = BrokerProcess::start(&["--config", file_arg]);
    assert_eq!(partitions_of_a_new_topic(&from_file), 5, "the file");
    let over_file = BrokerProcess::start_with_env(&["--config", file_arg], &[("FJORD_NUM_PARTITIONS", "4")]);
    assert_eq!(partitions_of_a_new_topic(&over_file), 4, "the variable wins over the file");
}

#[test]
fn help_lists_every_key_as_a_flag() {
    let (ok, help, stderr) = fjord_exits(&["--help"]);
    assert!(ok, "{stderr}");
    // Keys that had no flag before every key got one, and the oldest ones.
    for flag in ["--listen", "--data-dir", "--num-partitions", "--log-roll-ms", "--offsets-topic-num-partitions"] {
        assert!(help.contains(&format!("{flag} <")), "{flag} missing from --help:\n{help}");
    }
    assert!(help.contains("FJORD_NUM_PARTITIONS"), "variables are listed:\n{help}");
    assert!(help.contains("[default: 604800000]"), "defaults are listed:\n{help}");
}

#[test]
fn bad_values_stop_the_broker_naming_the_key() {
    refused(&["--num-partitions", "0"], "num_partitions must be >= 1, got 0");
    refused(&["--num-partitions", "many"], "--num-partitions");
    refused(&["--fsync", "sometimes"], "acks-all, always, never");
    refused(&["--log-segment-bytes", "10"], "log_segment_bytes");
    refused(&["--no-such-flag", "1"], "--no-such-flag");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("fjord.toml");
    std::fs::write(&file, "no_such_key = 1\n").expect("write config");
    refused(&["--config", file.to_str().expect("utf-8 path")], "no_such_key");
    refused(&["--config", "/no/such/fjord.toml"], "cannot read config file");
}

#[test]
fn bad_cluster_keys_stop_the_broker_naming_the_key() {
    let voters = "1@127.0.0.1:9192,2@127.0.0.1:9193,3@127.0.0.1:9194";
    let cluster = ["--cluster-listen", "127.0.0.1:9192"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> { cluster.iter().chain(extra).copied().collect() };
    refused(&with(&["--node-id", "1", "--controller-quorum-voters", "1@127.0.0.1:9192,,2@h:1"]), "entry 2 is empty");
    refused(&with(&["--node-id", "1", "--controller-quorum-voters", "1@h:1,1@h:2"]), "node id 1 is listed twice");
    refused(&with(&["--node-id", "1", "--controller-quorum-voters", "one@h:1"]), "--controller-quorum-voters");
    refused(&with(&["--node-id", "1", "--controller-quorum-voters", "1@h"]), "\"h\" is not host:port");
    refused(&with(&["--controller-quorum-voters", voters]), "node_id must be set when controller_quorum_voters is");
    refused(&["--node-id", "1", "--controller-quorum-voters", voters], "cluster_listen must be set");
    refused(&["--node-id", "-1"], "node_id must be >= 0, got -1");
    refused(&["--cluster-listen", "9192"], "cluster_listen must be host:port");
    refused(&["--min-insync-replicas", "0"], "min_insync_replicas must be >= 1, got 0");
    refused(&["--default-replication-factor", "0"], "default_replication_factor must be 1..=32767");
    refused(&["--broker-rack", ""], "broker_rack must not be empty");
    refused(&["--transactional-id-expiration-ms", "2592000000"], "(Kafka's transactional.id.expiration.ms is an INT)");
    refused(&with(&["--node-id", "1", "--controller-quorum-voters", "1@::1"]), "must be in brackets");
    refused(&with(&["--node-id", "1", "--controller-quorum-voters", "1@0.0.0.0:9192"]), "not an address other nodes");
    refused(&with(&["--node-id", "1", "--controller-quorum-voters", "1@127.0.0.1:9193"]), "is not node 1's address");
    refused(&with(&["--node-id", "2", "--controller-quorum-voters", voters]), "is voter 1's address");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("fjord.toml");
    std::fs::write(&file, "node_id = 1\ncluster_listen = \"h:1\"\ncontroller_quorum_voters = \"1@h:1,2@h\"\n")
        .expect("write config");
    refused(&["--config", file.to_str().expect("utf-8 path")], "entry 2 \"2@h\"");
}

/// One described broker config: its value, whether it is read-only, and its source.
struct Described {
    name: String,
    value: Option<String>,
    read_only: bool,
    source: i8,
}

/// Every config of the broker resource `node`, as DescribeConfigs v4 describes it.
fn broker_configs(conn: &mut RawConn, node: &str) -> Vec<Described> {
    let mut req = DescribeConfigsRequest::default();
    let mut r = describe_configs_request::DescribeConfigsResource::default();
    r.resource_type = 4;
    r.resource_name = s(node);
    req.resources = vec![r];
    let resp: DescribeConfigsResponse = conn.call(ApiKey::DescribeConfigs, 4, &req);
    assert_eq!(resp.results[0].error_code, 0, "{:?}", resp.results[0].error_message);
    resp.results[0]
        .configs
        .iter()
        .map(|c| Described {
            name: c.name.to_string(),
            value: c.value.as_ref().map(|v| v.to_string()),
            read_only: c.read_only,
            source: c.config_source,
        })
        .collect()
}

fn find<'a>(configs: &'a [Described], name: &str) -> &'a Described {
    configs.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("{name} not described"))
}

/// (value, read-only) of one config.
fn described(configs: &[Described], name: &str) -> (Option<String>, bool) {
    let c = find(configs, name);
    (c.value.clone(), c.read_only)
}

/// (value, source) of one config.
fn source_of(configs: &[Described], name: &str) -> (Option<String>, i8) {
    let c = find(configs, name);
    (c.value.clone(), c.source)
}

/// Metadata and DescribeCluster report the configured node id and rack;
/// DescribeConfigs shows the cluster keys under Kafka's names.
#[test]
fn node_id_and_rack_reach_clients() {
    let broker = BrokerProcess::start(&["--node-id", "7", "--broker-rack", "rack-a", "--min-insync-replicas", "1"]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    let topic = topic_metadata(&mut conn, "racked", true);
    assert_eq!(topic.partitions[0].leader_id.0, 7);
    let md: MetadataResponse = conn.call(ApiKey::Metadata, 12, &MetadataRequest::default());
    let b = &md.brokers[0];
    assert_eq!((b.node_id.0, b.rack.as_deref().map(|r| r.to_string())), (7, Some("rack-a".into())));
    assert_eq!(md.controller_id.0, 7);
    // Metadata v0 has no rack field; the rest is answered the same.
    let v0: MetadataResponse = conn.call(ApiKey::Metadata, 0, &MetadataRequest::default());
    assert_eq!(v0.brokers[0].node_id.0, 7);
    let mut req = DescribeClusterRequest::default();
    req.endpoint_type = 1;
    let dc: DescribeClusterResponse = conn.call(ApiKey::DescribeCluster, 1, &req);
    let b = &dc.brokers[0];
    assert_eq!((b.broker_id.0, b.rack.as_deref().map(|r| r.to_string())), (7, Some("rack-a".into())));

    let configs = broker_configs(&mut conn, "7");
    assert_eq!(described(&configs, "node.id"), (Some("7".into()), true));
    assert_eq!(described(&configs, "broker.rack"), (Some("rack-a".into()), true));
    assert_eq!(described(&configs, "default.replication.factor"), (Some("1".into()), true));
    assert_eq!(described(&configs, "min.insync.replicas"), (Some("1".into()), false));
    // Kafka's default: an empty list.
    assert_eq!(described(&configs, "controller.quorum.voters"), (Some(String::new()), true));
    // Keys Kafka has are described under its names, read-only as in Kafka.
    assert_eq!(described(&configs, "offsets.topic.num.partitions"), (Some("50".into()), true));
    assert_eq!(described(&configs, "group.initial.rebalance.delay.ms"), (Some("100".into()), true));
    assert_eq!(set_config(&mut conn, 4, "7", "group.initial.rebalance.delay.ms", "0"), 42);
    assert_eq!(set_config(&mut conn, 4, "7", "broker.rack", "rack-b"), 42);
    assert_eq!(set_config(&mut conn, 4, "7", "default.replication.factor", "2"), 42);

    // Without the keys: node 0, no rack, as before.
    let plain = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&plain.bootstrap());
    let md: MetadataResponse = conn.call(ApiKey::Metadata, 12, &MetadataRequest::default());
    assert_eq!((md.brokers[0].node_id.0, md.brokers[0].rack.is_none()), (0, true));
}

/// With voters configured the keys are visible, and the replication
/// factor default follows the quorum's size.
#[test]
fn quorum_voters_are_described() {
    let me = fjord_compat_tests::free_addr();
    let voters = format!("1@{me},2@127.0.0.1:1,3@127.0.0.1:2,4@127.0.0.1:3");
    let broker = BrokerProcess::start(&[
        "--node-id",
        "1",
        "--cluster-listen",
        &me,
        "--controller-quorum-voters",
        &voters,
        "--min-insync-replicas",
        "2",
    ]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    let configs = broker_configs(&mut conn, "1");
    assert_eq!(described(&configs, "controller.quorum.voters"), (Some(voters.clone()), true));
    assert_eq!(described(&configs, "default.replication.factor"), (Some("3".into()), true), "min(3, voters)");
    assert_eq!(described(&configs, "min.insync.replicas"), (Some("2".into()), false));
}

/// An empty FJORD_* variable is unset (docker-compose's `${X:-}`); a bad
/// one stops the broker naming the variable, before anything binds.
#[test]
fn empty_variables_are_unset_and_bad_ones_are_named() {
    let empty = [
        ("FJORD_NODE_ID", ""),
        ("FJORD_ADVERTISED_LISTENER", ""),
        ("FJORD_BROKER_RACK", ""),
        ("FJORD_METRICS_LISTEN", ""),
        ("FJORD_NUM_PARTITIONS", ""),
    ];
    let broker = BrokerProcess::start_with_env(&[], &empty);
    let mut conn = RawConn::connect(&broker.bootstrap());
    let md: MetadataResponse = conn.call(ApiKey::Metadata, 12, &MetadataRequest::default());
    let b = &md.brokers[0];
    assert_eq!((b.node_id.0, b.port, b.rack.is_none()), (0, i32::from(broker.port), true));
    assert_eq!(partitions_of_a_new_topic(&broker), 1);
    // The data dir too (BrokerProcess always gives --data-dir): an empty
    // FJORD_DATA_DIR leaves the default, ./data.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = broker_command()
        .current_dir(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .env("FJORD_DATA_DIR", "")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start fjord");
    let mut line = String::new();
    let read = child.stdout.take().map(|out| std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line));
    let _ = child.kill();
    let _ = child.wait();
    assert!(matches!(read, Some(Ok(_))) && line.starts_with("fjord listening on"), "did not start: {line:?}");
    assert!(dir.path().join("data").join("metadata.json").exists(), "the data dir is ./data");
    let mut cmd = broker_command();
    cmd.current_dir(dir.path()).args(["--listen", "127.0.0.1:0", "--data-dir", ""]);
    let (status, out) = run_to_exit(&mut cmd, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(status.is_some_and(|s| !s.success()), "--data-dir '' started:\n{stderr}");
    assert!(stderr.contains("data_dir must not be empty"), "{stderr}");

    refused_with_env(&[], &[("FJORD_NODE_ID", "x")], "invalid value \"x\" for FJORD_NODE_ID");
    refused_with_env(&[], &[("FJORD_NODE_ID", "-1")], "FJORD_NODE_ID: node_id must be >= 0, got -1");
    refused_with_env(&[], &[("FJORD_METRICS_LISTEN", "nowhere")], "metrics_listen must be an IP address and port");
    refused(&["--metrics-listen", "localhost"], "metrics_listen must be an IP address and port");
    refused(&["--admin-listen", "localhost:9644"], "admin_listen must be an IP address and port");
    refused(
        &["--admin-listen", "127.0.0.1:9644", "--metrics-listen", "127.0.0.1:9645"],
        "admin_listen 127.0.0.1:9644 and metrics_listen 127.0.0.1:9645 differ",
    );
}

/// Test brokers do not inherit the shell's FJORD_* variables: every key's
/// variable, as the broker's config table names it, is removed.
#[test]
fn test_brokers_do_not_inherit_fjord_variables() {
    let cmd = broker_command();
    let removed: Vec<String> =
        cmd.get_envs().filter(|(_, v)| v.is_none()).map(|(k, _)| k.to_string_lossy().into_owned()).collect();
    for k in fjord_broker::config::KEYS {
        assert!(removed.iter().any(|r| r == k.env), "{} is inherited", k.env);
    }
    assert!(removed.iter().any(|r| r == "FJORD_FAILPOINT"), "a stray failpoint is inherited");
}

/// A variable that is no key's (a typo) is named in a warning at start.
#[test]
fn unknown_variables_are_warned_about() {
    let broker = BrokerProcess::start_with_env(&[], &[("FJORD_NUM_PARTITONS", "3")]);
    let log = std::fs::read_to_string(broker.log_path()).expect("broker log");
    let line = log.lines().find(|l| l.contains("FJORD_NUM_PARTITONS"));
    assert!(line.is_some_and(|l| l.contains("WARN") && l.contains("not a config key")), "{log}");
    assert_eq!(partitions_of_a_new_topic(&broker), 1, "and it is ignored");
    assert!(!log.contains("FJORD_NUM_PARTITIONS"), "a key's variable is not warned about:\n{log}");
}

const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;

/// A key given explicitly is STATIC_BROKER_CONFIG even at its default
/// value; one not given is DEFAULT_CONFIG; node.id is always static (Kafka
/// has no default for it).
#[test]
fn config_source_follows_what_was_given() {
    let given = BrokerProcess::start(&["--num-partitions", "1", "--log-retention-ms", "604800000"]);
    let mut conn = RawConn::connect(&given.bootstrap());
    let configs = broker_configs(&mut conn, "0");
    assert_eq!(source_of(&configs, "num.partitions"), (Some("1".into()), STATIC_BROKER_CONFIG));
    assert_eq!(source_of(&configs, "log.retention.ms"), (Some("604800000".into()), STATIC_BROKER_CONFIG));
    assert_eq!(source_of(&configs, "node.id"), (Some("0".into()), STATIC_BROKER_CONFIG));

    let plain = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&plain.bootstrap());
    let configs = broker_configs(&mut conn, "0");
    assert_eq!(source_of(&configs, "num.partitions"), (Some("1".into()), DEFAULT_CONFIG));
    assert_eq!(source_of(&configs, "log.retention.ms"), (Some("604800000".into()), DEFAULT_CONFIG));
    assert_eq!(source_of(&configs, "node.id"), (Some("0".into()), STATIC_BROKER_CONFIG));
    assert_eq!(source_of(&configs, "default.replication.factor"), (Some("1".into()), DEFAULT_CONFIG));
    // The test harness gives this one.
    assert_eq!(source_of(&configs, "group.initial.rebalance.delay.ms"), (Some("100".into()), STATIC_BROKER_CONFIG));
}

/// CreateTopics with replication factor -1 uses default.replication.factor,
/// refused as in Kafka when there are not that many brokers.
#[test]
fn default_replication_factor_applies_to_create_topics() {
    let two = BrokerProcess::start(&["--default-replication-factor", "2"]);
    let mut conn = RawConn::connect(&two.bootstrap());
    let resp = fjord_compat_tests::wire::create_topic(&mut conn, "rf-default", 1, &[]);
    let t = &resp.topics[0];
    assert_eq!(t.error_code, 38, "INVALID_REPLICATION_FACTOR: {:?}", t.error_message);
    let msg = t.error_message.as_ref().map(|m| m.to_string()).unwrap_or_default();
    assert!(msg.contains("replication factor of 2 cannot be reached because only 1 broker(s)"), "{msg}");
    let configs = broker_configs(&mut conn, "0");
    assert_eq!(source_of(&configs, "default.replication.factor"), (Some("2".into()), STATIC_BROKER_CONFIG));
    // An explicit factor of 1 is still fine.
    let mut req = CreateTopicsRequest::default();
    let mut topic = create_topics_request::CreatableTopic::default();
    topic.name = TopicName(s("rf-one"));
    topic.num_partitions = 1;
    topic.replication_factor = 1;
    req.topics = vec![topic];
    req.timeout_ms = 5000;
    let resp: CreateTopicsResponse = conn.call(ApiKey::CreateTopics, 7, &req);
    assert_eq!(resp.topics[0].error_code, 0, "{:?}", resp.topics[0].error_message);

    let plain = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&plain.bootstrap());
    let resp = fjord_compat_tests::wire::create_topic(&mut conn, "rf-default", 1, &[]);
    let t = &resp.topics[0];
    assert_eq!((t.error_code, t.replication_factor), (0, 1), "{:?}", t.error_message);
    assert_eq!(topic_metadata(&mut conn, "rf-default", false).partitions[0].replica_nodes.len(), 1);
}

/// IncrementalAlterConfigs of one broker config: (name, operation, value).
fn alter_broker(conn: &mut RawConn, node: &str, name: &str, op: i8) -> i16 {
    let mut req = IncrementalAlterConfigsRequest::default();
    let mut res = incremental_alter_configs_request::AlterConfigsResource::default();
    res.resource_type = 4;
    res.resource_name = s(node);
    let mut c = incremental_alter_configs_request::AlterableConfig::default();
    c.name = s(name);
    c.config_operation = op;
    c.value = if op == 1 { None } else { Some(s("0")) };
    res.configs = vec![c];
    req.resources = vec![res];
    let resp: IncrementalAlterConfigsResponse = conn.call(ApiKey::IncrementalAlterConfigs, 1, &req);
    resp.responses[0].error_code
}

/// A value an older Fjord stored under a name that is now read-only can be
/// deleted; setting it, or deleting a read-only name not stored, is still
/// refused.
#[test]
fn a_stored_read_only_name_can_be_deleted() {
    let mut broker = BrokerProcess::start(&[]);
    broker.terminate();
    let path = broker.data_dir.path().join("metadata.json");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read metadata")).expect("metadata is JSON");
    meta["broker_configs"] = serde_json::json!({ "group.initial.rebalance.delay.ms": "0" });
    std::fs::write(&path, serde_json::to_vec(&meta).expect("encode")).expect("write metadata");
    broker.restart();
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(alter_broker(&mut conn, "", "group.initial.rebalance.delay.ms", 0), 42, "SET stays refused");
    assert_eq!(alter_broker(&mut conn, "", "group.consumer.session.timeout.ms", 1), 42, "not stored");
    assert_eq!(alter_broker(&mut conn, "", "group.initial.rebalance.delay.ms", 1), 0, "DELETE of the stored one");
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read metadata")).expect("metadata is JSON");
    assert_eq!(meta["broker_configs"], serde_json::json!({}), "gone from the file");
}
