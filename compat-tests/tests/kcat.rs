//! kcat (librdkafka's CLI) against a live broker: auto-created topic,
//! keyed records with headers under every codec, exact read-back, offsets
//! by timestamp, metadata. kcat has no admin commands, so topic config and
//! partition changes are covered by the other clients' suites.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fjord_compat_tests::{client, kcat_produce, run_client, BrokerProcess};

const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

#[test]
fn kcat_produce_consume_offsets() {
    let broker = BrokerProcess::start(&["--num-partitions", "3"]);
    let b = broker.bootstrap();
    let topic = "kcat-compat";
    let before = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_millis() as i64;
    let mut want: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for codec in CODECS {
        for p in 0..3 {
            let mut lines = String::new();
            for i in 0..25 {
                let key = format!("{codec}-p{p}-k{i}");
                let value = format!("{codec}-value-{i}-").repeat(1 + i % 6);
                lines.push_str(&format!("{key}:{value}\n"));
                want.entry(p).or_default().push(format!("{key}|{value}|codec={codec},origin=kcat"));
            }
            kcat_produce(&b, topic, codec, p, &["-H", &format!("codec={codec}"), "-H", "origin=kcat"], &lines);
        }
    }
    let out = run_client(
        client("kcat").args(["-b", &b, "-t", topic, "-C", "-e", "-o", "beginning", "-f", "%p|%o|%k|%s|%h\\n"]),
        Duration::from_secs(60),
    );
    let mut got: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut parts = line.splitn(3, '|');
        let p: i32 = parts.next().and_then(|x| x.parse().ok()).expect("partition");
        let o: usize = parts.next().and_then(|x| x.parse().ok()).expect("offset");
        let rest = parts.next().expect("record").to_string();
        let list = got.entry(p).or_default();
        assert_eq!(o, list.len(), "offsets are dense and in order on partition {p}");
        list.push(rest);
    }
    assert_eq!(got, want);

    // Offset lookup by timestamp: before everything is offset 0.
    let out = run_client(
        client("kcat").args(["-b", &b, "-Q", "-t", &format!("{topic}:1:{}", before - 60_000)]),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{topic} [1] offset 0")), "{text}");

    let out = run_client(client("kcat").args(["-b", &b, "-L", "-t", topic]), Duration::from_secs(30));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("topic \"{topic}\" with 3 partitions")), "{text}");
}
