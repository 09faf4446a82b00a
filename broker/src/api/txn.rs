//! Transaction APIs: AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit,
//! EndTxn, DescribeTransactions, ListTransactions. The state machine lives
//! in `crate::coordinator::txn`; these functions translate requests and responses.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState as DescribedTxn};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedTxn;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::*;

use super::code;
use super::groups::{commit_denied, committed};
use super::metadata::{str, topic_name};
use crate::coordinator::classic::OFFSETS_TOPIC;
use crate::coordinator::txn::{Caller, TxnState};
use crate::server::{now_ms, Broker};

/// KIP-588: these request versions and later understand PRODUCER_FENCED.
fn caller(version: i16, fenced_from: i16) -> Caller {
    Caller { knows_fenced: version >= fenced_from }
}

fn partitions_of(topics: &[AddPartitionsToTxnTopic]) -> Vec<(String, i32)> {
    topics.iter().flat_map(|t| t.partitions.iter().map(move |p| (t.name.0.to_string(), *p))).collect()
}

/// Groups per-partition results back into the response's topic layout.
fn topic_results(results: Vec<((String, i32), Option<ResponseError>)>) -> Vec<AddPartitionsToTxnTopicResult> {
    let mut by_topic: BTreeMap<String, Vec<AddPartitionsToTxnPartitionResult>> = BTreeMap::new();
    for ((t, p), e) in results {
        by_topic
            .entry(t)
            .or_default()
            .push(mk!(AddPartitionsToTxnPartitionResult { partition_index: p, partition_error_code: code(e) }));
    }
    by_topic
        .into_iter()
        .map(|(t, rs)| mk!(AddPartitionsToTxnTopicResult { name: topic_name(&t), results_by_partition: rs }))
        .collect()
}

fn all_failed(parts: Vec<(String, i32)>, e: ResponseError) -> Vec<((String, i32), Option<ResponseError>)> {
    parts.into_iter().map(|p| (p, Some(e))).collect()
}

pub async fn add_partitions_to_txn(
    broker: Arc<Broker>,
    h: &RequestHeader,
    req: AddPartitionsToTxnRequest,
) -> Option<AddPartitionsToTxnResponse> {
    let version = h.request_api_version;
    if version <= 3 {
        let parts = partitions_of(&req.v3_and_below_topics);
        let results = broker
            .txns
            .add_partitions(
                &req.v3_and_below_transactional_id.0,
                req.v3_and_below_producer_id.0,
                req.v3_and_below_producer_epoch,
                parts.clone(),
                caller(version, 2),
            )
            .await
            .unwrap_or_else(|e| all_failed(parts, e));
        return Some(mk!(AddPartitionsToTxnResponse { results_by_topic_v3_and_below: topic_results(results) }));
    }
    // v4+: a batch of transactions, sent by brokers; verify_only asks
    // whether the partitions are already in the transaction (KIP-890).
    let mut out = Vec::with_capacity(req.transactions.len());
    for t in req.transactions {
        let parts = partitions_of(&t.topics);
        let id = t.transactional_id.0.to_string();
        let results = if t.verify_only {
            match broker.txns.verify_partitions(&id, t.producer_id.0, t.producer_epoch, &parts) {
                Ok(errs) => parts.into_iter().zip(errs).collect(),
                Err(e) => all_failed(parts, e),
            }
        } else {
            broker
                .txns
                .add_partitions(&id, t.producer_id.0, t.producer_epoch, parts.clone(), caller(version, 2))
                .await
                .unwrap_or_else(|e| all_failed(parts, e))
        };
        out.push(mk!(AddPartitionsToTxnResult {
            transactional_id: t.transactional_id,
            topic_results: topic_results(results)
        }));
    }
    Some(mk!(AddPartitionsToTxnResponse { results_by_transaction: out }))
}

pub async fn add_offsets_to_txn(
    broker: Arc<Broker>,
    h: &RequestHeader,
    req: AddOffsetsToTxnRequest,
) -> Option<AddOffsetsToTxnResponse> {
    let part = (OFFSETS_TOPIC.to_string(), broker.groups.partition_for(&req.group_id.0));
    let error = match broker
        .txns
        .add_partitions(
            &req.transactional_id.0,
            req.producer_id.0,
            req.producer_epoch,
            vec![part],
            caller(h.request_api_version, 2),
        )
        .await
    {
        Ok(results) => results.into_iter().find_map(|(_, e)| e),
        Err(e) => Some(e),
    };
    Some(mk!(AddOffsetsToTxnResponse { error_code: code(error) }))
}

pub async fn txn_offset_commit(
    broker: Arc<Broker>,
    h: &RequestHeader,
    req: TxnOffsetCommitRequest,
) -> Option<TxnOffsetCommitResponse> {
    let group = req.group_id.0.to_string();
    // v3+ carries the consumer's group membership (KIP-447): a commit from a
    // member that is no longer in the generation is refused. Without it
    // (older versions, or a consumer outside any group) only the producer
    // epoch fences.
    let denied = if !group.is_empty() && req.generation_id < 0 && req.member_id.is_empty() {
        None
    } else {
        commit_denied(&broker, &group, &req.member_id, req.generation_id, req.group_instance_id.as_deref(), true)
    };
    let wanted: Vec<_> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                committed(
                    &t.name,
                    p.partition_index,
                    p.committed_offset,
                    p.committed_leader_epoch,
                    &p.committed_metadata,
                )
            })
        })
        .collect();
    let n = wanted.len();
    let results = match denied {
        Some(e) => vec![Some(e); n],
        None => broker
            .txns
            .commit_offsets(
                &*broker,
                &req.transactional_id.0,
                &group,
                (req.producer_id.0, req.producer_epoch),
                wanted,
                caller(h.request_api_version, 3),
            )
            .await
            .unwrap_or_else(|e| vec![Some(e); n]),
    };
    let mut results = results.into_iter();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    mk!(TxnOffsetCommitResponsePartition {
                        partition_index: p.partition_index,
                        error_code: code(results.next().flatten())
                    })
                })
                .collect();
            mk!(TxnOffsetCommitResponseTopic { name: t.name.clone(), partitions: partitions })
        })
        .collect();
    Some(mk!(TxnOffsetCommitResponse { topics: topics }))
}

pub async fn end_txn(broker: Arc<Broker>, h: &RequestHeader, req: EndTxnRequest) -> Option<EndTxnResponse> {
    let result = broker
        .txns
        .end(
            &req.transactional_id.0,
            req.producer_id.0,
            req.producer_epoch,
            req.committed,
            caller(h.request_api_version, 2),
        )
        .await;
    let mut resp = mk!(EndTxnResponse { error_code: code(result.err()) });
    if h.request_api_version >= 5 {
        resp.producer_id = req.producer_id;
        resp.producer_epoch = req.producer_epoch;
    }
    Some(resp)
}

pub async fn describe_transactions(
    broker: Arc<Broker>,
    _h: &RequestHeader,
    req: DescribeTransactionsRequest,
) -> Option<DescribeTransactionsResponse> {
    let states = req
        .transactional_ids
        .into_iter()
        .map(|id| match broker.txns.serves(&id.0).map(|_| broker.txns.get(&id.0)) {
            Err(e) => mk!(DescribedTxn {
                transactional_id: id,
                error_code: e.code(),
                transaction_state: str(""),
                transaction_start_time_ms: -1,
                producer_id: ProducerId(-1),
                producer_epoch: -1
            }),
            Ok(None) => mk!(DescribedTxn {
                transactional_id: id,
                error_code: ResponseError::TransactionalIdNotFound.code(),
                transaction_state: str(""),
                transaction_start_time_ms: -1,
                producer_id: ProducerId(-1),
                producer_epoch: -1
            }),
            Ok(Some(m)) => {
                let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
                for (t, p) in &m.partitions {
                    topics.entry(t.as_str()).or_default().push(*p);
                }
                let topics =
                    topics.into_iter().map(|(t, ps)| mk!(TopicData { topic: topic_name(t), partitions: ps })).collect();
                mk!(DescribedTxn {
                    transactional_id: id,
                    transaction_state: str(m.state.name()),
                    transaction_timeout_ms: m.timeout_ms,
                    transaction_start_time_ms: m.start_ms,
                    producer_id: ProducerId(m.producer_id),
                    producer_epoch: m.producer_epoch,
                    topics: topics
                })
            }
        })
        .collect();
    Some(mk!(DescribeTransactionsResponse { transaction_states: states }))
}

pub async fn list_transactions(
    broker: Arc<Broker>,
    _h: &RequestHeader,
    req: ListTransactionsRequest,
) -> Option<ListTransactionsResponse> {
    let mut unknown = Vec::new();
    let mut states = Vec::new();
    for f in &req.state_filters {
        match TxnState::ALL.iter().find(|s| s.name() == f.as_str()) {
            Some(s) => states.push(*s),
            None => unknown.push(f.clone()),
        }
    }
    let now = now_ms();
    let mut listed: Vec<ListedTxn> = broker
        .txns
        .list()
        .into_iter()
        .filter(|(_, m)| states.is_empty() || states.contains(&m.state))
        .filter(|(_, m)| {
            req.producer_id_filters.is_empty() || req.producer_id_filters.contains(&ProducerId(m.producer_id))
        })
        // v1 (KIP-994): only transactions open longer than duration_filter ms.
        .filter(|(_, m)| req.duration_filter < 0 || (m.start_ms >= 0 && now - m.start_ms >= req.duration_filter))
        .map(|(id, m)| {
            mk!(ListedTxn {
                transactional_id: TransactionalId(str(&id)),
                producer_id: ProducerId(m.producer_id),
                transaction_state: str(m.state.name())
            })
        })
        .collect();
    listed.sort_by(|a, b| a.transactional_id.0.cmp(&b.transactional_id.0));
    Some(mk!(ListTransactionsResponse { unknown_state_filters: unknown, transaction_states: listed }))
}
