//! The Jepsen-style workload against the single-node broker, SIGKILLed and
//! restarted on the same data dir several times under load: every
//! acknowledged record must survive at its offset, with no duplicate,
//! reordering or read of data that later vanished. And, to show the whole
//! chain (clients, history, read-back, checker) catches a real fault: the
//! same workload without idempotence, through a proxy that loses Produce
//! responses, must be judged to have written duplicates.

use std::time::{Duration, Instant};

use fjord_compat_tests::checker::{check, History};
use fjord_compat_tests::jepsen::{create_topic, now_ns, read_back, stop_and_judge, wait_for_leaders, Run, Workload};
use fjord_compat_tests::proxy::LossyProxy;
use fjord_compat_tests::{wait_until, BrokerProcess};

const PARTITIONS: i32 = 4;
const PRODUCERS: u32 = 3;
const KILLS: usize = 4;
/// Acknowledgements each cycle waits for (since the last restart) before the
/// kill: proof that the producers recovered, and load for the next kill.
const ACKS_PER_CYCLE: u64 = 3000;

#[test]
fn acknowledged_records_survive_sigkill_under_idempotent_producers() {
    let started = Instant::now();
    let mut broker = BrokerProcess::start(&[]);
    let topic = "jepsen-single";
    create_topic(&broker.bootstrap(), topic, PARTITIONS, 1).expect("create topic");
    let w = Workload::new(&broker.bootstrap(), topic, PARTITIONS, PRODUCERS);
    let work = tempfile::tempdir().expect("temp dir");
    let history = work.path().join("history.jsonl");

    let run = Run::start(&w, &history).expect("start the workload");
    let mut kills_ns = Vec::new();
    for cycle in 0..KILLS {
        let target = run.acked() + ACKS_PER_CYCLE;
        run.wait_acked(target, Duration::from_secs(30)).unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        // Kill while records are unanswered, so some cross the crash.
        wait_until(Duration::from_secs(10), "records in flight", || run.in_flight() > 0);
        broker.kill9();
        // After the process is gone: an answer later than this came from
        // the restarted broker.
        kills_ns.push(now_ns());
        run.log_fault("SIGKILL");
        println!("cycle {cycle}: SIGKILL with {} acknowledged, {} in flight", run.acked(), run.in_flight());
        broker.restart();
        wait_for_leaders(&broker.bootstrap(), topic, PARTITIONS, Duration::from_secs(20)).expect("broker answers");
        run.log_fault("restarted");
    }
    // The producers get through to the restarted broker once more.
    run.wait_acked(run.acked() + ACKS_PER_CYCLE, Duration::from_secs(30)).expect("acks after the last restart");
    assert!(run.tail_reads() > 0, "the tailing consumer read nothing");
    let j = stop_and_judge(run, &w, work, &kills_ns, started);
    // Records sent before a kill and acknowledged after it: the test
    // exercised the clients' retries across a crash, not a quiet restart.
    assert!(j.crossed > 0, "no record crossed a kill");
    assert_eq!(j.report.unknown, 0, "every record got an answer once the broker was back");
    assert!(j.verdict.stats.acked as u64 >= (KILLS as u64 + 1) * ACKS_PER_CYCLE, "{}", j.verdict);
    assert_eq!(j.verdict.stats.acked as u64, j.report.acked);
}

/// Runs the workload on a fresh topic until `acks` records are acknowledged,
/// reads it back and judges it; returns the verdict and the history's dir.
fn run_to_verdict(
    bootstrap: &str,
    topic: &str,
    overrides: &[(&str, &str)],
    acks: u64,
) -> (fjord_compat_tests::checker::Verdict, tempfile::TempDir) {
    create_topic(bootstrap, topic, PARTITIONS, 1).expect("create topic");
    let mut w = Workload::new(bootstrap, topic, PARTITIONS, PRODUCERS);
    w.overrides = overrides.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let work = tempfile::tempdir().expect("temp dir");
    let history = work.path().join("history.jsonl");
    let run = Run::start(&w, &history).expect("start the workload");
    run.wait_acked(acks, Duration::from_secs(30)).expect("acknowledgements");
    // The tailing consumer's reads are part of what is judged.
    wait_until(Duration::from_secs(20), "the tailing consumer to read", || run.tail_reads() > 0);
    let report = run.stop(Duration::from_secs(20)).expect("stop the workload");
    assert!(report.fatal.is_empty(), "{report:?}");
    read_back(&w, &history, Duration::from_secs(30)).expect("read back");
    (check(&History::load(&history).expect("a well-formed history")), work)
}

#[test]
fn lost_produce_responses_duplicate_records_only_without_idempotence() {
    let proxy = LossyProxy::bind(7);
    let broker = BrokerProcess::start(&["--advertised-listener", &proxy.addr()]);
    proxy.forward_to(&broker.bootstrap());

    let (verdict, work) = run_to_verdict(&proxy.addr(), "lossy-idempotent", &[], 3000);
    println!("idempotent:\n{verdict}");
    let lost = proxy.dropped();
    assert!(lost >= 3, "the proxy lost {lost} responses; the test needs some");
    if !verdict.is_valid() {
        panic!("history kept at {}:\n{verdict}", work.keep().display());
    }

    let (verdict, _work) = run_to_verdict(&proxy.addr(), "lossy-plain", &[("enable.idempotence", "false")], 3000);
    println!("not idempotent:\n{verdict}");
    assert!(proxy.dropped() > lost, "the proxy lost no response of the second run");
    assert!(verdict.has("duplicate"), "retries without idempotence must show as duplicates:\n{verdict}");
}
