//! Micro-benchmarks of request decode and response encode for the two
//! busiest APIs: a Produce request carrying one 16 KiB batch per partition,
//! and a Fetch response returning 1 MiB. `cargo bench -p fjord-broker`.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{FetchResponse, ProduceRequest, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

fn produce_request(partitions: i32) -> Bytes {
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_static_str("bench"));
    for p in 0..partitions {
        let mut pd = PartitionProduceData::default();
        pd.index = p;
        pd.records = Some(Bytes::from(vec![3u8; 16 * 1024]));
        t.partition_data.push(pd);
    }
    let mut req = ProduceRequest::default();
    req.acks = -1;
    req.timeout_ms = 30_000;
    req.topic_data = vec![t];
    let mut buf = BytesMut::new();
    req.encode(&mut buf, 9).expect("encode produce");
    buf.freeze()
}

fn decode(c: &mut Criterion) {
    let wire = produce_request(16);
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(wire.len() as u64));
    g.bench_function("Produce v9, 16 partitions x 16 KiB", |b| {
        b.iter(|| ProduceRequest::decode(&mut wire.clone(), 9).map(|r| r.topic_data.len()))
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let records = Bytes::from(vec![5u8; 64 * 1024]);
    let mut topic = FetchableTopicResponse::default();
    topic.topic = TopicName(StrBytes::from_static_str("bench"));
    for p in 0..16 {
        let mut pd = PartitionData::default();
        pd.partition_index = p;
        pd.records = Some(records.clone());
        topic.partitions.push(pd);
    }
    let mut resp = FetchResponse::default();
    resp.responses = vec![topic];
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Bytes(16 * 64 * 1024));
    g.bench_function("Fetch v12, 16 partitions x 64 KiB", |b| {
        b.iter(|| {
            let mut buf = BytesMut::with_capacity(1 << 21);
            resp.encode(&mut buf, 12).map(|_| buf.len())
        })
    });
    g.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
