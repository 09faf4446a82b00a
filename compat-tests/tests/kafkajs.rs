//! kafkajs against a live broker; what it produced is read back exactly
//! with librdkafka (kafkajs itself only consumes through consumer groups).

use std::time::Duration;

use fjord_compat_tests::{client, clients_dir, python, run_client, BrokerProcess};

#[test]
fn kafkajs_suite_and_cross_client_read_back() {
    let broker = BrokerProcess::start(&[]);
    let produced = broker.data_dir.path().with_extension("kafkajs.jsonl");
    let node_dir = clients_dir().join("node");
    assert!(node_dir.join("node_modules/kafkajs").exists(), "run scripts/setup-test-deps.sh to install kafkajs");
    let out = run_client(
        client("node").current_dir(&node_dir).arg("kafkajs_suite.js").arg(broker.bootstrap()).arg(&produced),
        Duration::from_secs(180),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let topic = stdout
        .lines()
        .find_map(|l| l.strip_prefix("kafkajs suite passed: "))
        .expect("suite reports its topic")
        .trim()
        .to_string();
    run_client(
        client(python())
            .arg(clients_dir().join("python/read_back.py"))
            .arg(broker.bootstrap())
            .arg(&topic)
            .arg(&produced),
        Duration::from_secs(120),
    );
    let _ = std::fs::remove_file(produced);
}
