//! Consumer groups with librdkafka (confluent-kafka): three members on six
//! partitions under each client-side assignor, a leave and a join, with
//! committed offsets and no record lost.

use std::process::Command;
use std::time::Duration;

use fjord_compat_tests::{clients_dir, python, run_client, BrokerProcess};

fn run(strategy: &str) {
    let broker = BrokerProcess::start(&[]);
    let out = run_client(
        Command::new(python()).arg(clients_dir().join("python/groups_suite.py")).arg(broker.bootstrap()).arg(strategy),
        Duration::from_secs(240),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("passed"));
}

#[test]
fn range_assignor() {
    run("range");
}

#[test]
fn roundrobin_assignor() {
    run("roundrobin");
}

#[test]
fn cooperative_sticky_assignor() {
    run("cooperative-sticky");
}
