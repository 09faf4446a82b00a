//! Crash durability: a producer streams acks=all records while the broker
//! is killed with SIGKILL twice and restarted; every acknowledged record
//! must be there afterwards, in order.

use std::process::Stdio;
use std::time::Duration;

use fjord_compat_tests::{client, clients_dir, python, run_client, wait_until, BrokerProcess};

fn acked(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map(|s| s.lines().count()).unwrap_or(0)
}

/// Every acknowledged record is in the log, in acknowledgement order.
fn verify(broker: &BrokerProcess, topic: &str, acked_path: &std::path::Path) {
    run_client(
        client(python())
            .arg(clients_dir().join("python/crash_verify.py"))
            .arg(broker.bootstrap())
            .arg(topic)
            .arg(acked_path),
        Duration::from_secs(180),
    );
}

#[test]
fn acknowledged_records_survive_sigkill() {
    let mut broker = BrokerProcess::start(&[]);
    let work = tempfile::tempdir().expect("temp");
    let acked_path = work.path().join("acked");
    let stop_path = work.path().join("stop");
    let topic = "crash-durability";
    let mut producer = client(python())
        .arg(clients_dir().join("python/crash_producer.py"))
        .arg(broker.bootstrap())
        .arg(topic)
        .arg(&acked_path)
        .arg(&stop_path)
        .stdout(Stdio::inherit())
        .stderr(Stdio::null())
        .spawn()
        .expect("start producer");

    let mut target = 2000;
    for round in 0..2 {
        wait_until(Duration::from_secs(120), "acknowledgements before the kill", || acked(&acked_path) >= target);
        broker.kill9();
        let at_kill = acked(&acked_path);
        println!("round {round}: killed broker with {at_kill} records acknowledged");
        broker.restart();
        target = at_kill + 2000;
    }
    wait_until(Duration::from_secs(120), "acknowledgements after the last restart", || acked(&acked_path) >= target);
    std::fs::write(&stop_path, b"stop").expect("stop file");
    let status = producer.wait().expect("producer exits");
    assert!(status.success(), "producer failed");

    verify(&broker, topic, &acked_path);
    // And the same after a clean restart (SIGTERM).
    assert!(broker.terminate().success(), "clean shutdown");
    broker.restart();
    verify(&broker, topic, &acked_path);
}
