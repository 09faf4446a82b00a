//! ListOffsets v0, OffsetCommit v0–1 and OffsetFetch v0.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};

use super::codec::{Reader, Writer};
use super::{malformed, reply};
use crate::api;
use crate::dispatch::HandlerResult;
use crate::server::Broker;

const LATEST: i64 = -1;

/// ListOffsets v0, and each partition's `max_num_offsets` in request order.
fn decode_list_offsets(r: &mut Reader) -> anyhow::Result<(ListOffsetsRequest, Vec<i32>)> {
    let mut max_offsets = Vec::new();
    let replica_id = BrokerId(r.i32()?);
    let topics = r.array(|r| {
        let name = TopicName(r.string()?);
        let partitions = r.array(|r| {
            let p =
                mk!(ListOffsetsPartition { partition_index: r.i32()?, timestamp: r.i64()?, current_leader_epoch: -1 });
            max_offsets.push(r.i32()?);
            Ok(p)
        })?;
        Ok(mk!(ListOffsetsTopic { name: name, partitions: partitions }))
    })?;
    // v0 predates isolation levels: read_uncommitted, as Kafka.
    Ok((mk!(ListOffsetsRequest { replica_id: replica_id, isolation_level: 0, topics: topics }), max_offsets))
}

/// v0 answers with an array of offsets (`old_style_offsets`) where later
/// versions have one offset and its timestamp: here the one offset, when
/// there is one and the client wants any.
fn encode_list_offsets(w: &mut Writer, resp: &ListOffsetsResponse, max_offsets: &[i32]) -> anyhow::Result<()> {
    let mut max = max_offsets.iter();
    w.array(&resp.topics, |w, t| {
        w.string(&t.name)?;
        w.array(&t.partitions, |w, p| {
            w.i32(p.partition_index);
            w.i16(p.error_code);
            let wanted = max.next().copied().unwrap_or(1);
            let offsets = if p.error_code == 0 && p.offset >= 0 && wanted > 0 { &[p.offset][..] } else { &[] };
            w.array(offsets, |w, o| {
                w.i64(*o);
                Ok(())
            })
        })
    })
}

pub async fn list_offsets(broker: Arc<Broker>, header: RequestHeader, body: Bytes) -> HandlerResult {
    let (req, max_offsets) = decode_list_offsets(&mut Reader::new(body)).map_err(malformed("ListOffsets", &header))?;
    // v0 asks for offsets *before* a time (Kafka answered with segment
    // starts, and with the log end for a time after the last write); v1+
    // for the first record at or after it. The handler answers the latter;
    // where no record is that recent, the v0 answer is the end of the log.
    let after_all: Vec<ListOffsetsTopic> = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t.partitions.iter().map(|p| p.clone().with_timestamp(LATEST)).collect();
            mk!(ListOffsetsTopic { name: t.name.clone(), partitions: partitions })
        })
        .collect();
    let by_time: Vec<bool> = req.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.timestamp >= 0)).collect();
    let Some(mut resp) = api::list_offsets::handle(broker.clone(), &header, req).await else { return Ok(None) };
    let mut missing = by_time.iter().zip(resp.topics.iter().flat_map(|t| t.partitions.iter()));
    if missing.any(|(by_time, p)| *by_time && p.error_code == 0 && p.offset < 0) {
        let latest = mk!(ListOffsetsRequest { replica_id: BrokerId(-1), topics: after_all });
        let Some(ends) = api::list_offsets::handle(broker, &header, latest).await else { return Ok(None) };
        let ends: Vec<i64> = ends.topics.iter().flat_map(|t| t.partitions.iter().map(|p| p.offset)).collect();
        let found = resp.topics.iter_mut().flat_map(|t| t.partitions.iter_mut());
        for ((p, by_time), end) in found.zip(&by_time).zip(ends) {
            if *by_time && p.error_code == 0 && p.offset < 0 {
                p.offset = end;
            }
        }
    }
    reply(&header, Some(resp), |w, resp| encode_list_offsets(w, resp, &max_offsets))
}

/// OffsetCommit v0 and v1, and (v1) each partition's commit timestamp in
/// request order. v0 has no generation or member: Kafka treats it as a
/// standalone consumer's commit (generation -1, no member id).
fn decode_offset_commit(r: &mut Reader, version: i16) -> anyhow::Result<(OffsetCommitRequest, Vec<i64>)> {
    let mut commit_times = Vec::new();
    let group_id = GroupId(r.string()?);
    let (generation, member_id) = if version >= 1 { (r.i32()?, r.string()?) } else { (-1, StrBytes::default()) };
    let topics = r.array(|r| {
        let name = TopicName(r.string()?);
        let partitions = r.array(|r| {
            let partition_index = r.i32()?;
            let committed_offset = r.i64()?;
            if version >= 1 {
                commit_times.push(r.i64()?);
            }
            Ok(mk!(OffsetCommitRequestPartition {
                partition_index: partition_index,
                committed_offset: committed_offset,
                committed_leader_epoch: -1,
                committed_metadata: r.nullable_string()?
            }))
        })?;
        Ok(mk!(OffsetCommitRequestTopic { name: name, partitions: partitions }))
    })?;
    let req = mk!(OffsetCommitRequest {
        group_id: group_id,
        generation_id_or_member_epoch: generation,
        member_id: member_id,
        retention_time_ms: -1,
        topics: topics
    });
    Ok((req, commit_times))
}

/// OffsetCommitResponse v0 and v1 are laid out as v2 ("Versions 1 and 2
/// are the same as version 0").
const OFFSET_COMMIT_RESPONSE_LAYOUT: i16 = 2;

pub async fn offset_commit(broker: Arc<Broker>, header: RequestHeader, body: Bytes) -> HandlerResult {
    let (req, commit_times) = decode_offset_commit(&mut Reader::new(body), header.request_api_version)
        .map_err(malformed("OffsetCommit", &header))?;
    let resp = api::groups::commit_offsets(&broker, req, &commit_times).await;
    reply(&header, Some(resp), |w, resp| w.message(resp, OFFSET_COMMIT_RESPONSE_LAYOUT))
}

/// OffsetFetch v0 request and response are laid out as v1 ("Version 1 is
/// the same as version 0"; v0 read ZooKeeper, v1 the offsets topic — here
/// both read the one store of committed offsets).
const OFFSET_FETCH_LAYOUT: i16 = 1;

pub async fn offset_fetch(broker: Arc<Broker>, header: RequestHeader, mut body: Bytes) -> HandlerResult {
    let req = OffsetFetchRequest::decode(&mut body, OFFSET_FETCH_LAYOUT).map_err(malformed("OffsetFetch", &header))?;
    let resp = api::groups::offset_fetch(broker, &header, req).await;
    reply(&header, resp, |w, resp| w.message(resp, OFFSET_FETCH_LAYOUT))
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
    use kafka_protocol::messages::offset_fetch_response::{OffsetFetchResponsePartition, OffsetFetchResponseTopic};
    use kafka_protocol::protocol::Encodable;
    use proptest::prelude::*;

    use super::*;

    fn name() -> impl Strategy<Value = StrBytes> {
        "[a-zA-Z0-9._-]{0,24}".prop_map(StrBytes::from_string)
    }

    fn nullable_name() -> impl Strategy<Value = Option<StrBytes>> {
        proptest::option::of(".{0,24}".prop_map(StrBytes::from_string))
    }

    /// The v0 schema written out field by field: the other half of the round trip.
    fn encode_list_offsets_request(req: &ListOffsetsRequest, max: &[i32]) -> Bytes {
        let mut w = Writer::bare();
        let mut max = max.iter();
        w.i32(req.replica_id.0);
        w.array(&req.topics, |w, t| {
            w.string(&t.name)?;
            w.array(&t.partitions, |w, p| {
                w.i32(p.partition_index);
                w.i64(p.timestamp);
                w.i32(*max.next().unwrap());
                Ok(())
            })
        })
        .unwrap();
        w.into_bytes()
    }

    fn decode_list_offsets_response(bytes: Bytes) -> anyhow::Result<ListOffsetsResponse> {
        let mut r = Reader::new(bytes);
        let topics = r.array(|r| {
            let name = TopicName(r.string()?);
            let partitions = r.array(|r| {
                let partition_index = r.i32()?;
                let error_code = r.i16()?;
                let offsets = r.array(|r| r.i64())?;
                anyhow::ensure!(offsets.len() <= 1, "one offset at most");
                Ok(mk!(ListOffsetsPartitionResponse {
                    partition_index: partition_index,
                    error_code: error_code,
                    offset: offsets.first().copied().unwrap_or(-1)
                }))
            })?;
            Ok(mk!(ListOffsetsTopicResponse { name: name, partitions: partitions }))
        })?;
        Ok(mk!(ListOffsetsResponse { topics: topics }))
    }

    fn encode_offset_commit_request(req: &OffsetCommitRequest, times: &[i64], version: i16) -> Bytes {
        let mut w = Writer::bare();
        let mut times = times.iter();
        w.string(&req.group_id).unwrap();
        if version >= 1 {
            w.i32(req.generation_id_or_member_epoch);
            w.string(&req.member_id).unwrap();
        }
        w.array(&req.topics, |w, t| {
            w.string(&t.name)?;
            w.array(&t.partitions, |w, p| {
                w.i32(p.partition_index);
                w.i64(p.committed_offset);
                if version >= 1 {
                    w.i64(*times.next().unwrap());
                }
                w.nullable_string(p.committed_metadata.as_deref())
            })
        })
        .unwrap();
        w.into_bytes()
    }

    prop_compose! {
        fn list_offsets_request()(
            replica in -1..3i32,
            topics in proptest::collection::vec(
                (name(), proptest::collection::vec((any::<i32>(), any::<i64>(), any::<i32>()), 0..4)), 0..4),
        ) -> (ListOffsetsRequest, Vec<i32>) {
            let mut max = Vec::new();
            let topics = topics.into_iter().map(|(n, ps)| {
                let partitions = ps.into_iter().map(|(p, ts, m)| {
                    max.push(m);
                    mk!(ListOffsetsPartition { partition_index: p, timestamp: ts, current_leader_epoch: -1 })
                }).collect();
                mk!(ListOffsetsTopic { name: TopicName(n), partitions: partitions })
            }).collect();
            (mk!(ListOffsetsRequest { replica_id: BrokerId(replica), isolation_level: 0, topics: topics }), max)
        }
    }

    prop_compose! {
        fn list_offsets_response()(
            topics in proptest::collection::vec(
                (name(), proptest::collection::vec((any::<i32>(), 0..100i16, -1..i64::MAX), 0..4)), 0..4),
        ) -> ListOffsetsResponse {
            let topics = topics.into_iter().map(|(n, ps)| {
                let partitions = ps.into_iter().map(|(p, code, offset)| mk!(ListOffsetsPartitionResponse {
                    partition_index: p,
                    error_code: code,
                    // An error carries no offset.
                    offset: if code == 0 { offset } else { -1 }
                })).collect();
                mk!(ListOffsetsTopicResponse { name: TopicName(n), partitions: partitions })
            }).collect();
            mk!(ListOffsetsResponse { topics: topics })
        }
    }

    prop_compose! {
        fn offset_commit_request(version: i16)(
            group in name(),
            generation in any::<i32>(),
            member in name(),
            topics in proptest::collection::vec(
                (name(), proptest::collection::vec((any::<i32>(), any::<i64>(), any::<i64>(), nullable_name()), 0..4)),
                0..4),
        ) -> (OffsetCommitRequest, Vec<i64>) {
            let mut times = Vec::new();
            let topics = topics.into_iter().map(|(n, ps)| {
                let partitions = ps.into_iter().map(|(p, offset, at, meta)| {
                    if version >= 1 {
                        times.push(at);
                    }
                    mk!(OffsetCommitRequestPartition {
                        partition_index: p,
                        committed_offset: offset,
                        committed_leader_epoch: -1,
                        committed_metadata: meta
                    })
                }).collect();
                mk!(OffsetCommitRequestTopic { name: TopicName(n), partitions: partitions })
            }).collect();
            let (generation, member) = if version >= 1 { (generation, member) } else { (-1, StrBytes::default()) };
            let req = mk!(OffsetCommitRequest {
                group_id: GroupId(group),
                generation_id_or_member_epoch: generation,
                member_id: member,
                retention_time_ms: -1,
                topics: topics
            });
            (req, times)
        }
    }

    proptest! {
        #[test]
        fn list_offsets_request_round_trips((req, max) in list_offsets_request()) {
            let bytes = encode_list_offsets_request(&req, &max);
            let (back, back_max) = decode_list_offsets(&mut Reader::new(bytes)).unwrap();
            prop_assert_eq!(back, req);
            prop_assert_eq!(back_max, max);
        }

        #[test]
        fn list_offsets_response_round_trips(resp in list_offsets_response()) {
            let n = resp.topics.iter().map(|t| t.partitions.len()).sum();
            let mut w = Writer::bare();
            encode_list_offsets(&mut w, &resp, &vec![1; n]).unwrap();
            prop_assert_eq!(decode_list_offsets_response(w.into_bytes()).unwrap(), resp);
        }

        #[test]
        fn offset_commit_v0_round_trips((req, times) in offset_commit_request(0)) {
            let bytes = encode_offset_commit_request(&req, &times, 0);
            let (back, back_times) = decode_offset_commit(&mut Reader::new(bytes), 0).unwrap();
            prop_assert_eq!(back, req);
            prop_assert!(back_times.is_empty());
        }

        #[test]
        fn offset_commit_v1_round_trips((req, times) in offset_commit_request(1)) {
            let bytes = encode_offset_commit_request(&req, &times, 1);
            let (back, back_times) = decode_offset_commit(&mut Reader::new(bytes), 1).unwrap();
            prop_assert_eq!(back, req);
            prop_assert_eq!(back_times, times);
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let b = Bytes::from(bytes);
            let _ = decode_list_offsets(&mut Reader::new(b.clone()));
            let _ = decode_offset_commit(&mut Reader::new(b.clone()), 0);
            let _ = decode_offset_commit(&mut Reader::new(b), 1);
        }

        #[test]
        fn truncated_requests_are_errors((req, times) in offset_commit_request(1), cut in any::<prop::sample::Index>()) {
            let bytes = encode_offset_commit_request(&req, &times, 1);
            let cut = cut.index(bytes.len());
            prop_assert!(decode_offset_commit(&mut Reader::new(bytes.slice(..cut)), 1).is_err());
        }
    }

    /// The layouts borrowed from newer versions, checked against bytes
    /// written out from the v0 schemas.
    #[test]
    fn borrowed_layouts_match_the_v0_schemas() {
        // OffsetCommitResponse v0: [topic: name, [partition, error_code]].
        let mut resp = OffsetCommitResponse::default();
        let mut t = offset_commit_response::OffsetCommitResponseTopic::default();
        t.name = TopicName(StrBytes::from_static_str("t"));
        let mut p = offset_commit_response::OffsetCommitResponsePartition::default();
        p.partition_index = 3;
        p.error_code = 25;
        t.partitions = vec![p];
        resp.topics = vec![t];
        let mut w = Writer::bare();
        w.message(&resp, OFFSET_COMMIT_RESPONSE_LAYOUT).unwrap();
        assert_eq!(&w.into_bytes()[..], &[0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0, 0, 0, 3, 0, 25]);

        // OffsetFetchRequest v0: group, [topic: name, [partition]].
        let v0 = [0, 1, b'g', 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7];
        let req = OffsetFetchRequest::decode(&mut Bytes::copy_from_slice(&v0), OFFSET_FETCH_LAYOUT).unwrap();
        assert_eq!(req.group_id.0.as_str(), "g");
        let topics = req.topics.unwrap();
        assert_eq!((topics[0].name.0.as_str(), topics[0].partition_indexes.clone()), ("t", vec![0, 7]));

        // OffsetFetchResponse v0: [topic: name, [partition, offset, metadata, error_code]].
        let mut resp = OffsetFetchResponse::default();
        let mut p = OffsetFetchResponsePartition::default();
        p.partition_index = 1;
        p.committed_offset = 9;
        p.metadata = Some(StrBytes::from_static_str("m"));
        p.error_code = 0;
        let mut t = OffsetFetchResponseTopic::default();
        t.name = TopicName(StrBytes::from_static_str("t"));
        t.partitions = vec![p];
        resp.topics = vec![t];
        let mut buf = bytes::BytesMut::new();
        resp.encode(&mut buf, OFFSET_FETCH_LAYOUT).unwrap();
        let expected = [0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 1, b'm', 0, 0];
        assert_eq!(&buf[..], &expected);
    }

    #[test]
    fn list_offsets_v0_answers_at_most_what_was_asked() {
        let mut p = ListOffsetsPartitionResponse::default();
        p.offset = 42;
        let mut t = ListOffsetsTopicResponse::default();
        t.partitions = vec![p.clone(), p];
        let resp = mk!(ListOffsetsResponse { topics: vec![t] });
        let mut w = Writer::bare();
        encode_list_offsets(&mut w, &resp, &[0, 5]).unwrap();
        let back = decode_list_offsets_response(w.into_bytes()).unwrap();
        let offsets: Vec<i64> = back.topics[0].partitions.iter().map(|p| p.offset).collect();
        assert_eq!(offsets, vec![-1, 42], "max_num_offsets 0 gets an empty array");
    }
}
