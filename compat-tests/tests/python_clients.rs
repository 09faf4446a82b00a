//! confluent-kafka (librdkafka) and kafka-python suites against a live broker.

use std::time::Duration;

use fjord_compat_tests::{client, clients_dir, python, run_client, BrokerProcess};

fn run_suite(script: &str) {
    run_suite_with(script, &[]);
}

fn run_suite_with(script: &str, broker_args: &[&str]) {
    let broker = BrokerProcess::start(broker_args);
    let out = run_client(
        client(python()).arg(clients_dir().join("python").join(script)).arg(broker.bootstrap()),
        Duration::from_secs(240),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("suite passed"));
}

#[test]
fn confluent_kafka_suite() {
    run_suite("confluent_suite.py");
}

#[test]
fn kafka_python_suite() {
    run_suite("kafka_python_suite.py");
}

/// ACL calls answer SECURITY_DISABLED; authorized operations when asked.
#[test]
fn confluent_acl_suite() {
    run_suite("acl_suite.py");
}

/// kafka-python pinned to old broker versions sends the request versions
/// Kafka 4 dropped (OffsetCommit v0/v1, ListOffsets v0, CreateTopics v0 …).
#[test]
fn kafka_python_old_versions_suite() {
    run_suite("kafka_python_old_suite.py");
}

#[test]
fn topic_configs_suite() {
    // A short cleaner backoff so compaction passes come quickly.
    run_suite_with("topic_configs_suite.py", &["--log-cleaner-backoff-ms", "100"]);
}
