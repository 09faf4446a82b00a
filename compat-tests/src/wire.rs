//! Typed request helpers over `RawConn`, shared by the wire-level tests.

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

use crate::RawConn;

pub fn s(x: &str) -> StrBytes {
    StrBytes::from_string(x.to_string())
}

/// An uncompressed v2 batch of the given values, all at `timestamp`.
pub fn batch(values: &[&[u8]], timestamp: i64) -> Bytes {
    idempotent_batch(values, timestamp, -1, -1, -1)
}

/// A batch from an idempotent producer: id, epoch, first sequence.
pub fn idempotent_batch(values: &[&[u8]], timestamp: i64, producer_id: i64, epoch: i16, sequence: i32) -> Bytes {
    producer_batch(values, timestamp, producer_id, epoch, sequence, false)
}

/// A batch of a transactional producer.
pub fn txn_batch(values: &[&[u8]], producer_id: i64, epoch: i16, sequence: i32) -> Bytes {
    producer_batch(values, 1_000, producer_id, epoch, sequence, true)
}

fn producer_batch(
    values: &[&[u8]],
    timestamp: i64,
    producer_id: i64,
    epoch: i16,
    sequence: i32,
    transactional: bool,
) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder starts a new batch whenever offset - sequence
            // changes; without a producer the batch's base sequence is -1.
            sequence: if sequence < 0 { i as i32 - 1 } else { sequence + i as i32 },
            timestamp,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::copy_from_slice(v)),
            headers: Default::default(),
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression: Compression::None })
        .expect("encode batch");
    buf.freeze()
}

/// A batch of `n` small records.
pub fn batch_of(n: usize, timestamp: i64) -> Bytes {
    let values: Vec<Vec<u8>> = (0..n).map(|i| format!("value-{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
    batch(&refs, timestamp)
}

/// An acks=all Produce of `records` to one partition.
pub fn produce_request(topic: &str, partition: i32, records: Bytes) -> ProduceRequest {
    let mut pd = PartitionProduceData::default();
    pd.index = partition;
    pd.records = Some(records);
    let mut td = TopicProduceData::default();
    td.name = TopicName(s(topic));
    td.partition_data = vec![pd];
    let mut req = ProduceRequest::default();
    req.acks = -1;
    req.timeout_ms = 5000;
    req.topic_data = vec![td];
    req
}

/// Produces with acks=all; returns the partition's (error code, base offset).
pub fn produce(conn: &mut RawConn, topic: &str, partition: i32, records: Bytes) -> (i16, i64) {
    let resp: ProduceResponse = conn.call(ApiKey::Produce, 9, &produce_request(topic, partition, records));
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// ListOffsets for partition `partition` at `timestamp` (-1 latest, -2 earliest).
pub fn list_offset(conn: &mut RawConn, topic: &str, partition: i32, timestamp: i64) -> i64 {
    list_offset_at(conn, topic, partition, timestamp).0
}

/// ListOffsets for `partition` at `timestamp` (-3: the largest timestamp): the (offset, timestamp) found.
pub fn list_offset_at(conn: &mut RawConn, topic: &str, partition: i32, timestamp: i64) -> (i64, i64) {
    let mut p = list_offsets_request::ListOffsetsPartition::default();
    p.partition_index = partition;
    p.timestamp = timestamp;
    let mut t = list_offsets_request::ListOffsetsTopic::default();
    t.name = TopicName(s(topic));
    t.partitions = vec![p];
    let mut req = ListOffsetsRequest::default();
    req.replica_id = BrokerId(-1);
    req.topics = vec![t];
    let resp: ListOffsetsResponse = conn.call(ApiKey::ListOffsets, 7, &req);
    let part = &resp.topics[0].partitions[0];
    assert_eq!(part.error_code, 0, "ListOffsets at {timestamp}");
    (part.offset, part.timestamp)
}

/// One batch of (key, value, timestamp) records under `compression`.
pub fn keyed_batch(records: &[(Option<&str>, Vec<u8>, i64)], compression: Compression) -> Bytes {
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (k, v, ts))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32 - 1,
            timestamp: *ts,
            key: k.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::copy_from_slice(v)),
            headers: Default::default(),
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression }).expect("encode");
    buf.freeze()
}

pub fn create_topic(
    conn: &mut RawConn,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> CreateTopicsResponse {
    let mut t = create_topics_request::CreatableTopic::default();
    t.name = TopicName(s(topic));
    t.num_partitions = partitions;
    t.replication_factor = -1;
    t.configs = configs
        .iter()
        .map(|(k, v)| {
            let mut c = create_topics_request::CreatableTopicConfig::default();
            c.name = s(k);
            c.value = Some(s(v));
            c
        })
        .collect();
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![t];
    req.timeout_ms = 5000;
    conn.call(ApiKey::CreateTopics, 7, &req)
}

/// IncrementalAlterConfigs SET of one config on a resource (2 topic, 4 broker).
pub fn set_config(conn: &mut RawConn, resource_type: i8, resource: &str, name: &str, value: &str) -> i16 {
    let mut req = IncrementalAlterConfigsRequest::default();
    let mut res = incremental_alter_configs_request::AlterConfigsResource::default();
    res.resource_type = resource_type;
    res.resource_name = s(resource);
    let mut c = incremental_alter_configs_request::AlterableConfig::default();
    c.name = s(name);
    c.config_operation = 0;
    c.value = Some(s(value));
    res.configs = vec![c];
    req.resources = vec![res];
    let resp: IncrementalAlterConfigsResponse = conn.call(ApiKey::IncrementalAlterConfigs, 1, &req);
    resp.responses[0].error_code
}

/// DescribeConfigs of one key: (value, source, synonym names).
pub fn describe_config(conn: &mut RawConn, topic: &str, key: &str) -> (Option<String>, i8, Vec<String>) {
    let mut req = DescribeConfigsRequest::default();
    let mut r = describe_configs_request::DescribeConfigsResource::default();
    r.resource_type = 2;
    r.resource_name = s(topic);
    r.configuration_keys = Some(vec![s(key)]);
    req.resources = vec![r];
    req.include_synonyms = true;
    let resp: DescribeConfigsResponse = conn.call(ApiKey::DescribeConfigs, 4, &req);
    let e = &resp.results[0].configs[0];
    (e.value.as_ref().map(|v| v.to_string()), e.config_source, e.synonyms.iter().map(|x| x.name.to_string()).collect())
}

/// Metadata for one topic by name.
pub fn topic_metadata(conn: &mut RawConn, topic: &str, allow_auto: bool) -> metadata_response::MetadataResponseTopic {
    let mut req = MetadataRequest::default();
    let mut t = metadata_request::MetadataRequestTopic::default();
    t.name = Some(TopicName(s(topic)));
    req.topics = Some(vec![t]);
    req.allow_auto_topic_creation = allow_auto;
    let md: MetadataResponse = conn.call(ApiKey::Metadata, 12, &req);
    md.topics.into_iter().next().expect("one topic")
}

/// Waits (up to 20 s) until `kb()` reports at most `max_kb`.
pub fn wait_until_bounded(mut kb: impl FnMut() -> Option<u64>, max_kb: u64) {
    let mut last = None;
    crate::wait_until(std::time::Duration::from_secs(20), &format!("at most {max_kb} kB resident"), || {
        last = kb();
        last.is_some_and(|v| v <= max_kb)
    });
}

/// Fetch (v12) of one partition from `offset`, up to 1 MiB.
pub fn fetch(
    conn: &mut RawConn,
    topic: &str,
    partition: i32,
    offset: i64,
    read_committed: bool,
) -> fetch_response::PartitionData {
    fetch_version(conn, topic, partition, offset, read_committed, 12)
}

/// `fetch` at a given Fetch version (4..=12: topics by name).
pub fn fetch_version(
    conn: &mut RawConn,
    topic: &str,
    partition: i32,
    offset: i64,
    read_committed: bool,
    version: i16,
) -> fetch_response::PartitionData {
    let mut fp = fetch_request::FetchPartition::default();
    fp.partition = partition;
    fp.fetch_offset = offset;
    fp.partition_max_bytes = 1 << 20;
    let mut ft = fetch_request::FetchTopic::default();
    ft.topic = TopicName(s(topic));
    ft.partitions = vec![fp];
    let mut req = FetchRequest::default();
    req.replica_id = BrokerId(-1);
    req.max_bytes = 1 << 20;
    req.isolation_level = read_committed as i8;
    req.topics = vec![ft];
    let mut r: FetchResponse = conn.call(ApiKey::Fetch, version, &req);
    r.responses.remove(0).partitions.remove(0)
}

/// InitProducerId for a transactional id: its producer id and epoch (the call must succeed).
pub fn txn_init(conn: &mut RawConn, id: &str, timeout_ms: i32) -> (i64, i16) {
    let mut req = InitProducerIdRequest::default();
    req.transactional_id = Some(TransactionalId(s(id)));
    req.transaction_timeout_ms = timeout_ms;
    let r: InitProducerIdResponse = conn.call(ApiKey::InitProducerId, 4, &req);
    assert_eq!(r.error_code, 0, "InitProducerId");
    (r.producer_id.0, r.producer_epoch)
}

/// DescribeTransactions of one transactional id.
pub fn describe_txn(conn: &mut RawConn, id: &str) -> describe_transactions_response::TransactionState {
    let mut req = DescribeTransactionsRequest::default();
    req.transactional_ids = vec![TransactionalId(s(id))];
    let mut r: DescribeTransactionsResponse = conn.call(ApiKey::DescribeTransactions, 0, &req);
    r.transaction_states.remove(0)
}

/// ListOffsets(latest) of one partition: the last stable offset when `read_committed`, else the
/// high watermark; None when the broker answers with an error or closes the connection.
pub fn end_offset(conn: &mut RawConn, topic: &str, partition: i32, read_committed: bool) -> Option<i64> {
    let mut p = list_offsets_request::ListOffsetsPartition::default();
    p.partition_index = partition;
    p.timestamp = -1;
    let mut t = list_offsets_request::ListOffsetsTopic::default();
    t.name = TopicName(s(topic));
    t.partitions = vec![p];
    let mut req = ListOffsetsRequest::default();
    req.replica_id = BrokerId(-1);
    req.isolation_level = read_committed as i8;
    req.topics = vec![t];
    let r: ListOffsetsResponse = conn.try_call(ApiKey::ListOffsets, 7, &req)?;
    let part = &r.topics[0].partitions[0];
    (part.error_code == 0).then_some(part.offset)
}
