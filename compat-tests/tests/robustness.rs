//! The broker under restarts and memory pressure, over the wire: a clean
//! restart reads no segment while a crash still cuts a torn tail, start-up
//! recovery does not pin segment pages in the resident set, and requests in
//! flight are bounded by `queued_max_request_bytes`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fjord_compat_tests::wire::{self, create_topic, list_offset, produce};
use fjord_compat_tests::{free_addr, metric, scrape_metrics, BrokerProcess, RawConn};
use kafka_protocol::messages::{
    fetch_request, ApiKey, BrokerId, FetchRequest, FetchResponse, ProduceResponse, TopicName,
};

/// Recovery gauges of the running broker, read once it has exported them.
fn recovery(metrics: &str) -> (f64, f64, f64, f64) {
    let body = scrape_metrics(metrics, "fjord_recovery_segments_scanned");
    let m = |n: &str| metric(&body, n).unwrap_or_else(|| panic!("{n} missing:\n{body}"));
    (
        m("fjord_start_clean"),
        m("fjord_recovery_segments_scanned"),
        m("fjord_recovery_batches_replayed"),
        m("fjord_recovery_torn_bytes"),
    )
}

/// `n` batches of three records each to every partition of `topic`;
/// returns the bytes written to partition 0.
fn fill(conn: &mut RawConn, topic: &str, partitions: i32, n: usize) -> u64 {
    let mut written = 0;
    for i in 0..n {
        for p in 0..partitions {
            let b = wire::batch(&[b"one", b"two", b"three"], 1_000 + i as i64);
            if p == 0 {
                written += b.len() as u64;
            }
            assert_eq!(produce(conn, topic, p, b).0, 0);
        }
    }
    written
}

fn ends(conn: &mut RawConn, topic: &str, partitions: i32) -> Vec<i64> {
    (0..partitions).map(|p| list_offset(conn, topic, p, -1)).collect()
}

/// A clean stop (SIGTERM) leaves a marker and checkpoint: the next start
/// scans no segment and replays no batch. A crash (SIGKILL) leaves none:
/// every active segment is scanned and a torn tail is cut. A marker whose
/// checkpoint went missing is a start that trusts nothing.
#[test]
fn clean_restart_skips_the_scans_and_a_crash_still_recovers() {
    let metrics = free_addr();
    let mut broker = BrokerProcess::start(&["--metrics-listen", &metrics, "--fsync", "never"]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(create_topic(&mut conn, "restarts", 3, &[]).topics[0].error_code, 0);
    let mut p0_bytes = fill(&mut conn, "restarts", 3, 20);
    let want = ends(&mut conn, "restarts", 3);
    assert_eq!(want, vec![60, 60, 60]);

    assert!(broker.terminate().success());
    broker.restart();
    let (clean, scanned, replayed, _) = recovery(&metrics);
    assert_eq!((clean, scanned, replayed), (1.0, 0.0, 0.0), "a clean restart reads no batch");
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(ends(&mut conn, "restarts", 3), want);
    // Appends continue right after what the checkpoint recorded.
    p0_bytes += fill(&mut conn, "restarts", 3, 1);
    let want: Vec<i64> = want.iter().map(|e| e + 3).collect();
    assert_eq!(ends(&mut conn, "restarts", 3), want);

    // A crash with a torn write after partition 0's last batch.
    broker.kill9();
    let segment = broker.data_dir.path().join("restarts-0").join(format!("{:020}.log", 0));
    let f = std::fs::OpenOptions::new().write(true).open(&segment).expect("active segment");
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x5a; 64], p0_bytes).expect("torn write");
    broker.restart();
    let (clean, scanned, replayed, torn) = recovery(&metrics);
    assert_eq!(clean, 0.0);
    assert!(scanned >= 3.0, "every active segment scanned: {scanned}");
    assert!(replayed > 0.0 && torn > 0.0, "replayed {replayed}, torn {torn}");
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(ends(&mut conn, "restarts", 3), want, "the torn tail is cut, nothing else");
    assert_eq!(produce(&mut conn, "restarts", 0, wire::batch(&[b"after"], 5)).1, want[0]);

    // A marker whose checkpoint is gone: nothing is trusted.
    assert!(broker.terminate().success());
    std::fs::remove_file(broker.data_dir.path().join("recovery-point-checkpoint")).expect("checkpoint written");
    broker.restart();
    let (clean, scanned, _, torn) = recovery(&metrics);
    assert_eq!(clean, 1.0);
    assert!(scanned >= 3.0, "without a checkpoint every active segment is scanned: {scanned}");
    assert_eq!(torn, 0.0);
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(list_offset(&mut conn, "restarts", 0, -1), want[0] + 1);
}

/// Start-up recovery reads every segment it scans through the mapping
/// (rebuilding producer state reads each batch header); those pages count
/// against `mapped_resident_max_bytes` like any read's. They used to sit in
/// the baseline the cap was measured from, taken after start-up, and so
/// were never unmapped.
#[test]
fn recovery_after_a_crash_does_not_pin_segment_pages() {
    const MIB: u64 = 1024;
    let mut broker = BrokerProcess::start(&["--fsync", "never", "--mapped-resident-max-bytes", "4194304"]);
    let empty = broker.status_kb("RssFile").expect("RssFile of the broker");
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(create_topic(&mut conn, "big", 1, &[]).topics[0].error_code, 0);
    // 64 MiB in 6 KiB batches, 16 to a request.
    let value = vec![7u8; 1000];
    let one = wire::batch(&(0..6).map(|_| value.as_slice()).collect::<Vec<_>>(), 1);
    let mut sixteen = BytesMut::new();
    for _ in 0..16 {
        sixteen.extend_from_slice(&one);
    }
    let sixteen = sixteen.freeze();
    for _ in 0..64 * 1024 * 1024 / sixteen.len() {
        assert_eq!(produce(&mut conn, "big", 0, sixteen.clone()).0, 0);
    }
    let end = list_offset(&mut conn, "big", 0, -1);
    broker.kill9();
    broker.restart();
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(list_offset(&mut conn, "big", 0, -1), end);
    wire::wait_until_bounded(|| broker.status_kb("RssFile"), empty + 16 * MIB);
}

/// `n` produce requests to `partition`, each of three ~500 KB batches,
/// pipelined on one connection; checks every answer, in order.
fn pipelined_produces(addr: String, partition: i32, n: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut conn = RawConn::connect(&addr);
        let value = vec![partition as u8; 500 * 1024];
        let mut records = BytesMut::new();
        for _ in 0..3 {
            records.extend_from_slice(&wire::batch(&[value.as_slice()], 1));
        }
        let req = wire::produce_request("queued", partition, Bytes::from(records));
        let mut writer = conn.try_clone().expect("clone");
        // Sent from another thread while this one reads: a client that
        // stopped reading would block the broker's writes, and so its own.
        let ids =
            std::thread::spawn(move || (0..n).map(|_| writer.send(ApiKey::Produce, 9, &req)).collect::<Vec<i32>>());
        for i in 0..n {
            let id = i as i32 + 1;
            let resp: ProduceResponse = conn.recv(ApiKey::Produce, 9, id);
            let p = &resp.responses[0].partition_responses[0];
            assert_eq!((p.error_code, p.base_offset), (0, 3 * i as i64), "partition {partition} request {i}");
        }
        assert_eq!(ids.join().expect("sender").len(), n);
    })
}

/// A Fetch of `partition` that waits up to ten seconds for its first byte.
fn long_poll(topic: &str, partition: i32) -> FetchRequest {
    let mut fp = fetch_request::FetchPartition::default();
    fp.partition = partition;
    fp.partition_max_bytes = 1 << 20;
    let mut ft = fetch_request::FetchTopic::default();
    ft.topic = TopicName(wire::s(topic));
    ft.partitions = vec![fp];
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_wait_ms = 10_000;
    req.min_bytes = 1;
    req.max_bytes = 1 << 20;
    req.topics = vec![ft];
    req
}

/// With a 4 MiB budget, four connections pipelining twelve 1.5 MiB
/// requests each are all answered in order, the bytes held never pass the
/// budget, and a connection whose answers are held up stops reading at the
/// budget; one connection alone filling the budget does not deadlock on
/// itself.
#[test]
fn requests_in_flight_stay_within_queued_max_request_bytes() {
    const BUDGET: f64 = 4.0 * 1024.0 * 1024.0;
    let metrics = free_addr();
    let broker = BrokerProcess::start(&[
        "--metrics-listen",
        &metrics,
        "--max-request-bytes",
        "2097152",
        "--queued-max-request-bytes",
        "4194304",
    ]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    assert_eq!(create_topic(&mut conn, "queued", 7, &[]).topics[0].error_code, 0);

    // Answers go out in request order, so a long-poll Fetch on an empty
    // partition holds up the answers, and the memory, of the produces
    // pipelined behind it: the third 1.5 MiB produce cannot fit. Whether
    // that happens does not depend on how fast the broker is. (Nothing can
    // wake the Fetch early: a produce from elsewhere would queue for memory
    // behind the waiting one, so the Fetch runs to its max wait.)
    let waits = |body: &str| metric(body, "fjord_queued_request_waits_total").unwrap_or(0.0);
    let before = waits(&scrape_metrics(&metrics, "fjord_requests_total"));
    let mut parked = RawConn::connect(&broker.bootstrap());
    let fetch_id = parked.send(ApiKey::Fetch, 12, &long_poll("queued", 6));
    let mut writer = parked.try_clone().expect("clone");
    let sends = std::thread::spawn(move || {
        let value = vec![3u8; 500 * 1024];
        let mut records = BytesMut::new();
        for _ in 0..3 {
            records.extend_from_slice(&wire::batch(&[value.as_slice()], 1));
        }
        let req = wire::produce_request("queued", 5, Bytes::from(records));
        (0..3).map(|_| writer.send(ApiKey::Produce, 9, &req)).collect::<Vec<i32>>()
    });
    fjord_compat_tests::wait_until(Duration::from_secs(20), "a produce waits for request memory", || {
        waits(&scrape_metrics(&metrics, "fjord_requests_total")) > before
    });
    let fetched: FetchResponse = parked.recv(ApiKey::Fetch, 12, fetch_id);
    let empty = &fetched.responses[0].partitions[0];
    assert_eq!((empty.error_code, empty.high_watermark), (0, 0));
    for (i, id) in sends.join().expect("sender").into_iter().enumerate() {
        let resp: ProduceResponse = parked.recv(ApiKey::Produce, 9, id);
        let p = &resp.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (0, 3 * i as i64), "held-up produce {i}");
    }
    drop(parked);

    // One connection alone: its third request waits for the first answer.
    pipelined_produces(broker.bootstrap(), 4, 8).join().expect("a lone connection is answered");

    let senders: Vec<_> = (0..4).map(|p| pipelined_produces(broker.bootstrap(), p, 12)).collect();
    for s in senders {
        s.join().expect("every pipelined request answered");
    }
    for p in 0..4 {
        assert_eq!(list_offset(&mut conn, "queued", p, -1), 36);
    }
    let body = scrape_metrics(&metrics, "fjord_queued_request_bytes_peak");
    let peak = metric(&body, "fjord_queued_request_bytes_peak").expect("peak");
    assert!(peak <= BUDGET, "held {peak} bytes, over the budget");
    assert!(peak > 1.5 * 1024.0 * 1024.0, "several requests were held at once: {peak}");
    fjord_compat_tests::wait_until(Duration::from_secs(20), "every request's bytes given back", || {
        let body = scrape_metrics(&metrics, "fjord_queued_request_bytes");
        metric(&body, "fjord_queued_request_bytes") == Some(0.0)
    });
}

/// A second broker on a data dir in use refuses to start (the dir is
/// locked), saying why, and leaves the first one serving.
#[test]
fn second_broker_on_the_same_data_dir_refuses_to_start() {
    let mut first = BrokerProcess::start(&[]);
    let mut second = fjord_compat_tests::broker_command()
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(first.data_dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start second fjord");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = second.try_wait().expect("wait for second fjord") {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut e) = second.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    let status = status.unwrap_or_else(|| panic!("a second broker on the same data dir kept running:\n{stderr}"));
    assert!(!status.success(), "second broker exited with {status}");
    assert!(stderr.contains("is in use by another process"), "no clear reason given:\n{stderr}");
    // The first broker still answers.
    let mut conn = RawConn::connect(&first.bootstrap());
    assert_eq!(create_topic(&mut conn, "still-here", 1, &[]).topics[0].error_code, 0);
    assert!(first.is_running());
}
