//! Bad input over the wire: garbage and oversize frames, unknown APIs and
//! versions, corrupt and oversize batches. Each gets Kafka's error or a
//! closed connection, nothing is stored, and the broker keeps serving.

use bytes::Bytes;
use fjord_compat_tests::wire::{create_topic, list_offset};
use fjord_compat_tests::{wire, BrokerProcess, RawConn};
use kafka_protocol::messages::*;

fn batch(values: &[&[u8]]) -> Bytes {
    wire::batch(values, 1_700_000_000_000)
}

fn produce(conn: &mut RawConn, topic: &str, records: Bytes) -> i16 {
    wire::produce(conn, topic, 0, records).0
}

fn latest_offset(conn: &mut RawConn, topic: &str) -> i64 {
    list_offset(conn, topic, 0, -1)
}

/// The broker still answers a fresh connection.
fn assert_serving(broker: &BrokerProcess) {
    let mut conn = RawConn::connect(&broker.bootstrap());
    let resp: ApiVersionsResponse = conn.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(resp.error_code, 0);
    assert!(resp.api_keys.iter().any(|k| k.api_key == ApiKey::Produce as i16));
}

#[test]
fn garbage_and_oversize_frames_close_only_that_connection() {
    let mut broker = BrokerProcess::start(&["--max-request-bytes", "1048576"]);
    // A healthy connection opened before the bad ones keeps working.
    let mut healthy = RawConn::connect(&broker.bootstrap());
    let _: ApiVersionsResponse = healthy.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage header", {
            let mut v = 12i32.to_be_bytes().to_vec();
            v.extend_from_slice(&[0x7f, 0x11, 0x22, 0x33, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]);
            v
        }),
        ("negative size", (-5i32).to_be_bytes().to_vec()),
        ("tiny frame", {
            let mut v = 2i32.to_be_bytes().to_vec();
            v.extend_from_slice(&[0, 1]);
            v
        }),
        ("over the size limit", (64 * 1024 * 1024i32).to_be_bytes().to_vec()),
        ("metadata with a truncated body", {
            let mut v = 9i32.to_be_bytes().to_vec();
            v.extend_from_slice(&[0, 3, 0, 12, 0, 0, 0, 1, 0xff]);
            v
        }),
    ];
    for (what, bytes) in cases {
        let mut conn = RawConn::connect(&broker.bootstrap());
        conn.send_raw(&bytes).expect("send");
        assert!(conn.is_closed(), "{what}: connection must be closed");
        assert!(broker.is_running(), "{what}: broker must survive");
        assert_serving(&broker);
    }
    let resp: ApiVersionsResponse = healthy.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(resp.error_code, 0, "the earlier connection is untouched");
}

#[test]
fn unknown_api_and_versions() {
    let mut broker = BrokerProcess::start(&[]);
    // ApiVersions at a version we do not speak: UNSUPPORTED_VERSION (35) in
    // a v0 response that lists what we do speak.
    let mut conn = RawConn::connect(&broker.bootstrap());
    let mut raw = Vec::new();
    raw.extend_from_slice(&0i32.to_be_bytes());
    raw.extend_from_slice(&18i16.to_be_bytes());
    raw.extend_from_slice(&99i16.to_be_bytes());
    raw.extend_from_slice(&77i32.to_be_bytes());
    raw.extend_from_slice(&(-1i16).to_be_bytes());
    let len = (raw.len() - 4) as i32;
    raw[..4].copy_from_slice(&len.to_be_bytes());
    conn.send_raw(&raw).expect("send");
    let mut frame = conn.recv_frame().expect("an answer, not a closed connection");
    let header = <ResponseHeader as kafka_protocol::protocol::Decodable>::decode(&mut frame, 0).expect("header");
    assert_eq!(header.correlation_id, 77);
    let resp = <ApiVersionsResponse as kafka_protocol::protocol::Decodable>::decode(&mut frame, 0).expect("v0 body");
    assert_eq!(resp.error_code, 35);
    assert!(resp.api_keys.iter().any(|k| k.api_key == 0 && k.max_version >= 9));

    // A well-formed request for an API that exists in Kafka but is not
    // served here (and not advertised) gets UNSUPPORTED_VERSION back.
    let mut conn = RawConn::connect(&broker.bootstrap());
    let versions: ApiVersionsResponse = conn.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert!(versions.api_keys.iter().all(|k| k.api_key != ApiKey::SaslHandshake as i16));
    let mut sasl = SaslHandshakeRequest::default();
    sasl.mechanism = kafka_protocol::protocol::StrBytes::from_static_str("PLAIN");
    let resp: SaslHandshakeResponse = conn.call(ApiKey::SaslHandshake, 1, &sasl);
    assert_eq!(resp.error_code, 35);
    let resp: DescribeClientQuotasResponse =
        conn.call(ApiKey::DescribeClientQuotas, 1, &DescribeClientQuotasRequest::default());
    assert_eq!(resp.error_code, 35);
    let resp: ApiVersionsResponse = conn.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(resp.error_code, 0, "the connection stays usable");

    // An unknown API key and an unsupported version of a known API close
    // that connection (as Kafka does), and the broker carries on.
    for (key, version) in [(9999i16, 0i16), (3, 99)] {
        let mut conn = RawConn::connect(&broker.bootstrap());
        let mut raw = Vec::new();
        raw.extend_from_slice(&10i32.to_be_bytes());
        raw.extend_from_slice(&key.to_be_bytes());
        raw.extend_from_slice(&version.to_be_bytes());
        raw.extend_from_slice(&5i32.to_be_bytes());
        raw.extend_from_slice(&(-1i16).to_be_bytes());
        conn.send_raw(&raw).expect("send");
        assert!(conn.is_closed(), "api {key} v{version} must close the connection");
        assert!(broker.is_running());
        assert_serving(&broker);
    }
}

#[test]
fn corrupt_and_oversize_batches_are_rejected_and_not_stored() {
    let mut broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    let created = create_topic(&mut conn, "bad-batches", 1, &[("max.message.bytes", "2000")]);
    assert_eq!(created.topics[0].error_code, 0);

    assert_eq!(produce(&mut conn, "bad-batches", batch(&[b"one", b"two"])), 0);
    assert_eq!(latest_offset(&mut conn, "bad-batches"), 2);

    // One flipped bit in a record: CRC-32C mismatch, CORRUPT_MESSAGE (2).
    let mut corrupt = batch(&[b"three", b"four"]).to_vec();
    let last = corrupt.len() - 2;
    corrupt[last] ^= 0x01;
    assert_eq!(produce(&mut conn, "bad-batches", Bytes::from(corrupt)), 2);

    // A batch whose length runs past the data: CORRUPT_MESSAGE.
    let mut torn = batch(&[b"five"]).to_vec();
    torn.truncate(torn.len() - 3);
    assert_eq!(produce(&mut conn, "bad-batches", Bytes::from(torn)), 2);

    // Wrong magic byte: CORRUPT_MESSAGE.
    let mut magic = batch(&[b"six"]).to_vec();
    magic[16] = 1;
    assert_eq!(produce(&mut conn, "bad-batches", Bytes::from(magic)), 2);

    // Over the topic's max.message.bytes: MESSAGE_TOO_LARGE (10).
    let big = vec![b'x'; 4000];
    assert_eq!(produce(&mut conn, "bad-batches", batch(&[&big])), 10);

    // Unknown topic: UNKNOWN_TOPIC_OR_PARTITION (3), no auto-create on produce.
    assert_eq!(produce(&mut conn, "no-such-topic", batch(&[b"x"])), 3);

    // Nothing of the above was stored, and the connection still works.
    assert_eq!(latest_offset(&mut conn, "bad-batches"), 2);
    assert_eq!(produce(&mut conn, "bad-batches", batch(&[b"seven"])), 0);
    assert_eq!(latest_offset(&mut conn, "bad-batches"), 3);
    assert!(broker.is_running());
}

/// Random bodies behind well-formed headers, for every served API and
/// version: each request gets an answer or a closed connection, and the
/// broker never falls over. A small xorshift keeps the run reproducible.
#[test]
fn random_request_bodies_never_take_the_broker_down() {
    let mut broker = BrokerProcess::start(&[]);
    let mut conn = RawConn::connect(&broker.bootstrap());
    // A topic to aim at, so some garbage reaches deeper than name lookup.
    fjord_compat_tests::wire::create_topic(&mut conn, "fuzz", 2, &[]);
    let versions: ApiVersionsResponse = conn.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut answered = 0;
    for round in 0..600i32 {
        let api = &versions.api_keys[(next() % versions.api_keys.len() as u64) as usize];
        let span = (api.max_version - api.min_version + 1) as u64;
        let version = api.min_version + (next() % span) as i16;
        let Ok(key) = ApiKey::try_from(api.api_key) else { continue };
        let mut frame = Vec::new();
        frame.extend_from_slice(&api.api_key.to_be_bytes());
        frame.extend_from_slice(&version.to_be_bytes());
        frame.extend_from_slice(&round.to_be_bytes());
        frame.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
        if key.request_header_version(version) >= 2 {
            frame.push(0); // no tagged fields
        }
        let len = (next() % 96) as usize;
        // Mostly small values so lengths and counts look plausible.
        frame.extend((0..len).map(|_| if next() % 3 == 0 { (next() % 256) as u8 } else { (next() % 4) as u8 }));
        let mut conn = RawConn::connect(&broker.bootstrap());
        let mut bytes = (frame.len() as i32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&frame);
        conn.send_raw(&bytes).expect("send");
        if conn.recv_frame().is_some() {
            answered += 1;
        }
        assert!(broker.is_running(), "broker died on API {:?} v{version}: {frame:?}", key);
    }
    // Some garbage decodes (empty arrays and the like) and is answered.
    assert!(answered > 0);
    let resp: ApiVersionsResponse =
        RawConn::connect(&broker.bootstrap()).call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(resp.error_code, 0);
}
