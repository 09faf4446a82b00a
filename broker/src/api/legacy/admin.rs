//! CreateTopics v0–1, DeleteTopics v0 and DescribeConfigs v0.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::*;

use super::codec::{Reader, Writer};
use super::{malformed, reply};
use crate::api;
use crate::dispatch::HandlerResult;
use crate::server::Broker;

/// CreateTopics v0 and v1 (v1 adds validate_only; v1's request is v2's).
fn decode_create_topics(r: &mut Reader, version: i16) -> anyhow::Result<CreateTopicsRequest> {
    let topics = r.array(|r| {
        Ok(mk!(CreatableTopic {
            name: TopicName(r.string()?),
            num_partitions: r.i32()?,
            replication_factor: r.i16()?,
            assignments: r.array(|r| {
                Ok(mk!(CreatableReplicaAssignment {
                    partition_index: r.i32()?,
                    broker_ids: r.array(|r| r.i32().map(BrokerId))?
                }))
            })?,
            configs: r.array(|r| Ok(mk!(CreatableTopicConfig { name: r.string()?, value: r.nullable_string()? })))?
        }))
    })?;
    let timeout_ms = r.i32()?;
    let validate_only = if version >= 1 { r.bool()? } else { false };
    Ok(mk!(CreateTopicsRequest { topics: topics, timeout_ms: timeout_ms, validate_only: validate_only }))
}

/// v0 answers each topic with its error code; v1 adds the message.
fn encode_create_topics(w: &mut Writer, resp: &CreateTopicsResponse, version: i16) -> anyhow::Result<()> {
    w.array(&resp.topics, |w, t| {
        w.string(&t.name)?;
        w.i16(t.error_code);
        if version >= 1 {
            w.nullable_string(t.error_message.as_deref())?;
        }
        Ok(())
    })
}

pub async fn create_topics(broker: Arc<Broker>, header: RequestHeader, body: Bytes) -> HandlerResult {
    let version = header.request_api_version;
    let req = decode_create_topics(&mut Reader::new(body), version).map_err(malformed("CreateTopics", &header))?;
    let resp = api::admin::create_topics(broker, &header, req).await;
    reply(&header, resp, |w, resp| encode_create_topics(w, resp, version))
}

/// DeleteTopics v0: topic names and a timeout (as v1–3).
fn decode_delete_topics(r: &mut Reader) -> anyhow::Result<DeleteTopicsRequest> {
    let topic_names = r.array(|r| r.string().map(TopicName))?;
    Ok(mk!(DeleteTopicsRequest { topic_names: topic_names, timeout_ms: r.i32()? }))
}

/// v0 has no throttle time: each topic's name and error code.
fn encode_delete_topics(w: &mut Writer, resp: &DeleteTopicsResponse) -> anyhow::Result<()> {
    w.array(&resp.responses, |w, t| {
        // Names are never null below v6 (topics are named, not given by id).
        w.string(t.name.as_deref().map_or("", |n| n.as_str()))?;
        w.i16(t.error_code);
        Ok(())
    })
}

pub async fn delete_topics(broker: Arc<Broker>, header: RequestHeader, body: Bytes) -> HandlerResult {
    let req = decode_delete_topics(&mut Reader::new(body)).map_err(malformed("DeleteTopics", &header))?;
    let resp = api::admin::delete_topics(broker, &header, req).await;
    reply(&header, resp, encode_delete_topics)
}

/// DescribeConfigs v0: resources and their keys (null or empty: all); no
/// synonyms or documentation.
fn decode_describe_configs(r: &mut Reader) -> anyhow::Result<DescribeConfigsRequest> {
    let resources = r.array(|r| {
        Ok(mk!(DescribeConfigsResource {
            resource_type: r.i8()?,
            resource_name: r.string()?,
            configuration_keys: r.nullable_array(|r| r.string())?
        }))
    })?;
    Ok(mk!(DescribeConfigsRequest { resources: resources, include_synonyms: false, include_documentation: false }))
}

/// ConfigSource DEFAULT_CONFIG: the one source v0's `is_default` reports.
const DEFAULT_CONFIG: i8 = 5;

/// v0 has `is_default` where later versions have the config source.
fn encode_describe_configs(w: &mut Writer, resp: &DescribeConfigsResponse) -> anyhow::Result<()> {
    w.i32(resp.throttle_time_ms);
    w.array(&resp.results, |w, r| {
        w.i16(r.error_code);
        w.nullable_string(r.error_message.as_deref())?;
        w.i8(r.resource_type);
        w.string(&r.resource_name)?;
        w.array(&r.configs, |w, c| {
            w.string(&c.name)?;
            w.nullable_string(c.value.as_deref())?;
            w.bool(c.read_only);
            w.bool(c.config_source == DEFAULT_CONFIG);
            w.bool(c.is_sensitive);
            Ok(())
        })
    })
}

pub async fn describe_configs(broker: Arc<Broker>, header: RequestHeader, body: Bytes) -> HandlerResult {
    let req = decode_describe_configs(&mut Reader::new(body)).map_err(malformed("DescribeConfigs", &header))?;
    let resp = api::configs::describe(broker, &header, req).await;
    reply(&header, resp, encode_describe_configs)
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
    use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
    use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
    use kafka_protocol::protocol::StrBytes;
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    fn name() -> impl Strategy<Value = StrBytes> {
        "[a-zA-Z0-9._-]{0,24}".prop_map(StrBytes::from_string)
    }

    fn nullable_text() -> impl Strategy<Value = Option<StrBytes>> {
        proptest::option::of(".{0,24}".prop_map(StrBytes::from_string))
    }

    // The other half of each round trip, written from the v0/v1 schemas.

    fn encode_create_topics_request(req: &CreateTopicsRequest, version: i16) -> Bytes {
        let mut w = Writer::bare();
        w.array(&req.topics, |w, t| {
            w.string(&t.name)?;
            w.i32(t.num_partitions);
            w.i16(t.replication_factor);
            w.array(&t.assignments, |w, a| {
                w.i32(a.partition_index);
                w.array(&a.broker_ids, |w, b| {
                    w.i32(b.0);
                    Ok(())
                })
            })?;
            w.array(&t.configs, |w, c| {
                w.string(&c.name)?;
                w.nullable_string(c.value.as_deref())
            })
        })
        .unwrap();
        w.i32(req.timeout_ms);
        if version >= 1 {
            w.bool(req.validate_only);
        }
        w.into_bytes()
    }

    fn decode_create_topics_response(bytes: Bytes, version: i16) -> anyhow::Result<CreateTopicsResponse> {
        let mut r = Reader::new(bytes);
        let topics = r.array(|r| {
            let mut t =
                mk!(CreatableTopicResult { name: TopicName(r.string()?), error_code: r.i16()?, error_message: None });
            if version >= 1 {
                t.error_message = r.nullable_string()?;
            }
            Ok(t)
        })?;
        Ok(mk!(CreateTopicsResponse { topics: topics }))
    }

    fn encode_delete_topics_request(req: &DeleteTopicsRequest) -> Bytes {
        let mut w = Writer::bare();
        w.array(&req.topic_names, |w, n| w.string(n)).unwrap();
        w.i32(req.timeout_ms);
        w.into_bytes()
    }

    fn decode_delete_topics_response(bytes: Bytes) -> anyhow::Result<DeleteTopicsResponse> {
        let mut r = Reader::new(bytes);
        let responses =
            r.array(|r| Ok(mk!(DeletableTopicResult { name: Some(TopicName(r.string()?)), error_code: r.i16()? })))?;
        Ok(mk!(DeleteTopicsResponse { responses: responses }))
    }

    fn encode_describe_configs_request(req: &DescribeConfigsRequest) -> Bytes {
        let mut w = Writer::bare();
        w.array(&req.resources, |w, r| {
            w.i8(r.resource_type);
            w.string(&r.resource_name)?;
            w.nullable_array(r.configuration_keys.as_deref(), |w, k| w.string(k))
        })
        .unwrap();
        w.into_bytes()
    }

    /// Reads v0's `is_default` back into a config source as Kafka's client
    /// does: default, else the resource's own (topic 1, broker 4).
    fn decode_describe_configs_response(bytes: Bytes) -> anyhow::Result<DescribeConfigsResponse> {
        let mut r = Reader::new(bytes);
        let throttle = r.i32()?;
        let results = r.array(|r| {
            let mut res = mk!(DescribeConfigsResult {
                error_code: r.i16()?,
                error_message: r.nullable_string()?,
                resource_type: r.i8()?,
                resource_name: r.string()?
            });
            let own = if res.resource_type == 4 { 4 } else { 1 };
            res.configs = r.array(|r| {
                let mut c = mk!(DescribeConfigsResourceResult {
                    name: r.string()?,
                    value: r.nullable_string()?,
                    read_only: r.bool()?
                });
                c.config_source = if r.bool()? { DEFAULT_CONFIG } else { own };
                c.is_sensitive = r.bool()?;
                Ok(c)
            })?;
            Ok(res)
        })?;
        Ok(mk!(DescribeConfigsResponse { throttle_time_ms: throttle, results: results }))
    }

    prop_compose! {
        fn create_topics_request(version: i16)(
            topics in vec((
                name(), any::<i32>(), any::<i16>(),
                vec((any::<i32>(), vec(any::<i32>(), 0..3)), 0..3),
                vec((name(), nullable_text()), 0..3),
            ), 0..4),
            timeout in any::<i32>(),
            validate in any::<bool>(),
        ) -> CreateTopicsRequest {
            let topics = topics.into_iter().map(|(n, parts, rf, assignments, configs)| mk!(CreatableTopic {
                name: TopicName(n),
                num_partitions: parts,
                replication_factor: rf,
                assignments: assignments.into_iter().map(|(p, ids)| mk!(CreatableReplicaAssignment {
                    partition_index: p,
                    broker_ids: ids.into_iter().map(BrokerId).collect()
                })).collect(),
                configs: configs.into_iter().map(|(k, v)| mk!(CreatableTopicConfig { name: k, value: v })).collect()
            })).collect();
            mk!(CreateTopicsRequest { topics: topics, timeout_ms: timeout, validate_only: version >= 1 && validate })
        }
    }

    prop_compose! {
        fn create_topics_response(version: i16)(
            topics in vec((name(), any::<i16>(), nullable_text()), 0..4),
        ) -> CreateTopicsResponse {
            let topics = topics.into_iter().map(|(n, code, msg)| mk!(CreatableTopicResult {
                name: TopicName(n),
                error_code: code,
                error_message: if version >= 1 { msg } else { None }
            })).collect();
            mk!(CreateTopicsResponse { topics: topics })
        }
    }

    prop_compose! {
        fn describe_configs_response()(
            results in vec((
                any::<i16>(), nullable_text(), prop_oneof![Just(2i8), Just(4i8)], name(),
                vec((name(), nullable_text(), any::<bool>(), any::<bool>(), any::<bool>()), 0..4),
            ), 0..3),
            throttle in any::<i32>(),
        ) -> DescribeConfigsResponse {
            let results = results.into_iter().map(|(code, msg, kind, n, configs)| {
                let own = if kind == 4 { 4 } else { 1 };
                mk!(DescribeConfigsResult {
                    error_code: code,
                    error_message: msg,
                    resource_type: kind,
                    resource_name: n,
                    configs: configs.into_iter().map(|(k, v, ro, default, sensitive)| mk!(DescribeConfigsResourceResult {
                        name: k,
                        value: v,
                        read_only: ro,
                        config_source: if default { DEFAULT_CONFIG } else { own },
                        is_sensitive: sensitive
                    })).collect()
                })
            }).collect();
            mk!(DescribeConfigsResponse { throttle_time_ms: throttle, results: results })
        }
    }

    proptest! {
        #[test]
        fn create_topics_requests_round_trip((v, req) in (0..2i16).prop_flat_map(|v| (Just(v), create_topics_request(v)))) {
            let back = decode_create_topics(&mut Reader::new(encode_create_topics_request(&req, v)), v).unwrap();
            prop_assert_eq!(back, req);
        }

        #[test]
        fn create_topics_responses_round_trip((v, resp) in (0..2i16).prop_flat_map(|v| (Just(v), create_topics_response(v)))) {
            let mut w = Writer::bare();
            encode_create_topics(&mut w, &resp, v).unwrap();
            prop_assert_eq!(decode_create_topics_response(w.into_bytes(), v).unwrap(), resp);
        }

        #[test]
        fn delete_topics_round_trips(names in vec(name(), 0..5), timeout in any::<i32>(), codes in vec(any::<i16>(), 0..5)) {
            let req = mk!(DeleteTopicsRequest {
                topic_names: names.iter().cloned().map(TopicName).collect(),
                timeout_ms: timeout
            });
            prop_assert_eq!(decode_delete_topics(&mut Reader::new(encode_delete_topics_request(&req))).unwrap(), req);
            let resp = mk!(DeleteTopicsResponse {
                responses: names.into_iter().zip(codes).map(|(n, c)| mk!(DeletableTopicResult {
                    name: Some(TopicName(n)),
                    error_code: c
                })).collect()
            });
            let mut w = Writer::bare();
            encode_delete_topics(&mut w, &resp).unwrap();
            prop_assert_eq!(decode_delete_topics_response(w.into_bytes()).unwrap(), resp);
        }

        #[test]
        fn describe_configs_requests_round_trip(
            resources in vec((any::<i8>(), name(), proptest::option::of(vec(name(), 0..4))), 0..4),
        ) {
            let req = mk!(DescribeConfigsRequest {
                resources: resources.into_iter().map(|(t, n, keys)| mk!(DescribeConfigsResource {
                    resource_type: t,
                    resource_name: n,
                    configuration_keys: keys
                })).collect()
            });
            let back = decode_describe_configs(&mut Reader::new(encode_describe_configs_request(&req))).unwrap();
            prop_assert_eq!(back, req);
        }

        #[test]
        fn describe_configs_responses_round_trip(resp in describe_configs_response()) {
            let mut w = Writer::bare();
            encode_describe_configs(&mut w, &resp).unwrap();
            prop_assert_eq!(decode_describe_configs_response(w.into_bytes()).unwrap(), resp);
        }

        #[test]
        fn decoders_never_panic(bytes in vec(any::<u8>(), 0..200)) {
            let b = Bytes::from(bytes);
            let _ = decode_create_topics(&mut Reader::new(b.clone()), 0);
            let _ = decode_create_topics(&mut Reader::new(b.clone()), 1);
            let _ = decode_delete_topics(&mut Reader::new(b.clone()));
            let _ = decode_describe_configs(&mut Reader::new(b));
        }
    }
}
