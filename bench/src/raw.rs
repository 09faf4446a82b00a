//! The broker's own rates, with the client's per-record work taken out.
//!
//! librdkafka builds, hands over and reports on every record one by one; on
//! a shared two-core machine that work, not the broker, is what bounds a
//! max-rate run (bench/README.md has the profiles). These bare clients speak
//! the protocol without touching records: one writes pre-encoded batches with
//! acks=all and requests pipelined (as librdkafka pipelines them), the other
//! reads a topic from start to end without decoding records, the way a
//! follower replica or a mirroring tool reads. Their figures are the
//! broker's, and the report shows them beside librdkafka's.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

const FETCH_VERSION: i16 = 12;
const PRODUCE_VERSION: i16 = 9;
/// Requests in flight per connection (librdkafka's default is 5 with
/// idempotence, unbounded without).
const IN_FLIGHT: usize = 5;

struct Conn {
    sock: TcpStream,
    correlation: i32,
}

impl Conn {
    fn connect(bootstrap: &str) -> anyhow::Result<Conn> {
        let sock = TcpStream::connect(bootstrap)?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn { sock, correlation: 0 })
    }

    fn send<R: Encodable>(&mut self, key: ApiKey, version: i16, req: &R) -> anyhow::Result<()> {
        self.correlation += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = key as i16;
        header.request_api_version = version;
        header.correlation_id = self.correlation;
        header.client_id = Some(StrBytes::from_static_str("fjord-bench-raw"));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header.encode(&mut buf, key.request_header_version(version))?;
        req.encode(&mut buf, version)?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.sock.write_all(&buf)?;
        Ok(())
    }

    fn receive<R: Decodable>(&mut self, key: ApiKey, version: i16) -> anyhow::Result<R> {
        let mut len = [0u8; 4];
        self.sock.read_exact(&mut len)?;
        let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
        self.sock.read_exact(&mut body)?;
        let mut body = Bytes::from(body);
        ResponseHeader::decode(&mut body, key.response_header_version(version))?;
        // Records stay `Bytes` slices of the frame: nothing is decoded.
        R::decode(&mut body, version)
    }
}

/// What a bare produce run achieved.
pub struct ProduceRun {
    pub bytes: u64,
    pub records: u64,
    pub secs: f64,
    /// Request send → acknowledgement, in microseconds.
    pub latency: Histogram<u64>,
}

/// Writes `topic` for `duration` with `acks` (-1 or 1): every request carries one
/// pre-encoded batch of about `request_bytes` per partition split evenly,
/// of `message_size`-byte records, `IN_FLIGHT` requests pipelined.
pub fn produce_for(
    bootstrap: &str,
    topic: &str,
    partitions: u32,
    message_size: usize,
    acks: i16,
    request_bytes: usize,
    duration: Duration,
) -> anyhow::Result<ProduceRun> {
    let per_partition = (request_bytes / partitions.max(1) as usize / message_size).max(1);
    let batch = encode_batch(per_partition, message_size)?;
    let mut req = ProduceRequest::default();
    req.acks = acks;
    req.timeout_ms = 30_000;
    let mut td = TopicProduceData::default();
    td.name = TopicName(StrBytes::from_string(topic.to_string()));
    td.partition_data = (0..partitions as i32)
        .map(|p| {
            let mut pd = PartitionProduceData::default();
            pd.index = p;
            pd.records = Some(batch.clone());
            pd
        })
        .collect();
    req.topic_data = vec![td];
    let mut conn = Conn::connect(bootstrap)?;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut sent_at = std::collections::VecDeque::new();
    let (mut requests, start) = (0u64, Instant::now());
    loop {
        let sending = start.elapsed() < duration;
        while sending && sent_at.len() < IN_FLIGHT {
            conn.send(ApiKey::Produce, PRODUCE_VERSION, &req)?;
            sent_at.push_back(Instant::now());
        }
        let Some(t) = sent_at.pop_front() else { break };
        let resp: ProduceResponse = conn.receive(ApiKey::Produce, PRODUCE_VERSION)?;
        for p in resp.responses.iter().flat_map(|t| t.partition_responses.iter()) {
            anyhow::ensure!(p.error_code == 0, "produce error {} on partition {}", p.error_code, p.index);
        }
        latency.record(t.elapsed().as_micros().max(1) as u64)?;
        requests += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let records = requests * per_partition as u64 * partitions as u64;
    Ok(ProduceRun { bytes: records * message_size as u64, records, secs, latency })
}

fn encode_batch(records: usize, size: usize) -> anyhow::Result<Bytes> {
    let value = Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let records: Vec<Record> = (0..records)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 0,
            key: None,
            value: Some(value.clone()),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions { version: 2, compression: Compression::None },
    )?;
    Ok(buf.freeze())
}

/// Bytes read and seconds taken to read every partition of `topic` from
/// offset 0 to its high watermark.
pub fn read_topic(bootstrap: &str, topic: &str, partitions: u32) -> anyhow::Result<(u64, f64)> {
    let mut conn = Conn::connect(bootstrap)?;
    let mut next: Vec<i64> = vec![0; partitions as usize];
    let mut end: Vec<i64> = vec![i64::MAX; partitions as usize];
    let mut total = 0u64;
    let start = Instant::now();
    while next.iter().zip(&end).any(|(n, e)| n < e) {
        conn.send(ApiKey::Fetch, FETCH_VERSION, &request(topic, &next))?;
        let resp: FetchResponse = conn.receive(ApiKey::Fetch, FETCH_VERSION)?;
        let mut progressed = false;
        for t in &resp.responses {
            for p in &t.partitions {
                anyhow::ensure!(p.error_code == 0, "fetch error {} on partition {}", p.error_code, p.partition_index);
                let i = p.partition_index as usize;
                end[i] = p.high_watermark;
                if let Some(records) = &p.records {
                    total += records.len() as u64;
                    if let Some(after) = offset_after(records) {
                        progressed |= after > next[i];
                        next[i] = after;
                    }
                }
            }
        }
        anyhow::ensure!(
            progressed || next.iter().zip(&end).all(|(n, e)| n >= e),
            "a fetch returned nothing while data remained"
        );
    }
    Ok((total, start.elapsed().as_secs_f64()))
}

fn request(topic: &str, next: &[i64]) -> FetchRequest {
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_wait_ms = 0;
    req.min_bytes = 1;
    // librdkafka's defaults: fetch.max.bytes 50 MB, 1 MiB per partition.
    req.max_bytes = 50 * 1024 * 1024;
    let mut ft = FetchTopic::default();
    ft.topic = TopicName(StrBytes::from_string(topic.to_string()));
    ft.partitions = next
        .iter()
        .enumerate()
        .map(|(i, off)| {
            let mut fp = FetchPartition::default();
            fp.partition = i as i32;
            fp.fetch_offset = *off;
            fp.partition_max_bytes = 1024 * 1024;
            fp
        })
        .collect();
    req.topics = vec![ft];
    req
}

/// The offset after the last whole batch in `records` (v2 batch headers:
/// base offset at 0, length at 8, last offset delta at 23).
fn offset_after(records: &[u8]) -> Option<i64> {
    let mut pos = 0;
    let mut after = None;
    while pos + 27 <= records.len() {
        let base = i64::from_be_bytes(records[pos..pos + 8].try_into().ok()?);
        let len = i32::from_be_bytes(records[pos + 8..pos + 12].try_into().ok()?) as usize;
        if pos + 12 + len > records.len() {
            break;
        }
        let delta = i32::from_be_bytes(records[pos + 23..pos + 27].try_into().ok()?) as i64;
        after = Some(base + delta + 1);
        pos += 12 + len;
    }
    after
}

#[cfg(test)]
mod tests {
    #[test]
    fn offset_after_stops_at_a_partial_batch() {
        let mut b = vec![0u8; 61];
        b[..8].copy_from_slice(&10i64.to_be_bytes());
        b[8..12].copy_from_slice(&49i32.to_be_bytes());
        b[23..27].copy_from_slice(&4i32.to_be_bytes());
        let mut two = b.clone();
        two.extend_from_slice(&b[..30]);
        assert_eq!(super::offset_after(&two), Some(15));
        assert_eq!(super::offset_after(&b[..30]), None);
    }
}
