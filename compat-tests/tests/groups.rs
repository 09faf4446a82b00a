//! Consumer groups with real clients: three librdkafka members on six
//! partitions under each client-side assignor and under the KIP-848
//! protocol's server-side assignors, a leave, a join and a SIGKILL, with
//! committed offsets and no record lost; static membership; kafka-python
//! and kcat resuming from committed offsets.

use std::time::Duration;

use fjord_compat_tests::{client, clients_dir, python, run_client, BrokerProcess};

/// Runs a Python suite against a fresh broker; it prints "passed" on success.
/// KIP-848 timings are shortened so rebalances take a second, not a minute.
fn suite(script: &str, args: &[&str]) {
    let broker = BrokerProcess::start(&[
        "--group-consumer-heartbeat-interval-ms",
        "300",
        "--group-consumer-session-timeout-ms",
        "6000",
    ]);
    let out = run_client(
        client(python()).arg(clients_dir().join("python").join(script)).arg(broker.bootstrap()).args(args),
        Duration::from_secs(240),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("passed"));
}

fn run(strategy: &str) {
    suite("groups_suite.py", &[strategy]);
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

#[test]
fn consumer_protocol_uniform_assignor() {
    run("consumer-uniform");
}

#[test]
fn consumer_protocol_range_assignor() {
    run("consumer-range");
}

// Membership changes (SIGKILL, clean leave, join) with every client.

#[test]
fn membership_changes_librdkafka_classic() {
    suite("membership_suite.py", &["range"]);
}

#[test]
fn membership_changes_librdkafka_consumer_protocol() {
    suite("membership_suite.py", &["consumer"]);
}

#[test]
fn membership_changes_kafka_python() {
    suite("membership_suite.py", &["kafka-python"]);
}

#[test]
fn membership_changes_kafkajs() {
    suite("membership_suite.py", &["kafkajs"]);
}

#[test]
fn membership_changes_kcat() {
    suite("membership_suite.py", &["kcat"]);
}

#[test]
fn static_membership() {
    suite("static_suite.py", &[]);
}

#[test]
fn kafka_python_group_resumes_from_committed_offsets() {
    suite("kafka_python_groups.py", &[]);
}

/// kcat -G: a balanced consumer commits, and the next one in the group
/// starts exactly where it stopped.
#[test]
fn kcat_group_resumes_from_committed_offsets() {
    use std::io::Write;
    let broker = BrokerProcess::start(&["--num-partitions", "4"]);
    let b = broker.bootstrap();
    let produce = |from: usize, to: usize| {
        let mut child = client("kcat")
            .args(["-b", &b, "-t", "kcat-group", "-P", "-K", ":"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("kcat");
        let lines: String = (from..to).map(|i| format!("k{i}:v{i}\n")).collect();
        child.stdin.take().expect("stdin").write_all(lines.as_bytes()).expect("write");
        assert!(child.wait().expect("kcat").success());
    };
    let consume = |count: usize| -> Vec<String> {
        let out = run_client(
            client("kcat").args([
                "-b",
                &b,
                "-G",
                "kcat-group-g",
                "kcat-group",
                "-c",
                &count.to_string(),
                "-f",
                "%k\\n",
                "-X",
                "auto.offset.reset=earliest",
                "-X",
                "auto.commit.interval.ms=100",
            ]),
            Duration::from_secs(90),
        );
        let mut keys: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(|l| l.to_string()).collect();
        keys.sort();
        keys
    };
    produce(0, 100);
    let mut want: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    want.sort();
    assert_eq!(consume(100), want);
    produce(100, 150);
    let mut want: Vec<String> = (100..150).map(|i| format!("k{i}")).collect();
    want.sort();
    assert_eq!(consume(50), want, "the second consumer starts at the committed offsets");
}

/// AdminClient on groups, across a broker restart (SIGTERM, then SIGKILL).
#[test]
fn group_admin_and_state_survive_restart() {
    let mut broker = BrokerProcess::start(&[]);
    let script = clients_dir().join("python/group_admin_suite.py");
    let run = |broker: &BrokerProcess, phase: &str| {
        run_client(client(python()).arg(&script).arg(broker.bootstrap()).arg(phase), Duration::from_secs(120))
    };
    run(&broker, "before-restart");
    broker.kill9();
    broker.restart();
    run(&broker, "after-restart");
}
