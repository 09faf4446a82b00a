//! The transaction coordinator's records in `__transaction_state`: each
//! transactional id's state as Kafka's TransactionLogKey/Value, and back,
//! with the old JSON records read for migration.

use std::collections::BTreeSet;

use crate::coordinator::legacy_json;
use crate::coordinator::records::{self, TransactionLogValue, TxnPartitions};
use crate::coordinator::txn::{TxnMeta, TxnState};

pub use crate::internal_topic::RecordBytes as KeyValue;

fn status_of(state: TxnState) -> i8 {
    match state {
        TxnState::Empty => records::TXN_STATUS_EMPTY,
        TxnState::Ongoing => records::TXN_STATUS_ONGOING,
        TxnState::PrepareCommit => records::TXN_STATUS_PREPARE_COMMIT,
        TxnState::PrepareAbort => records::TXN_STATUS_PREPARE_ABORT,
        TxnState::CompleteCommit => records::TXN_STATUS_COMPLETE_COMMIT,
        TxnState::CompleteAbort => records::TXN_STATUS_COMPLETE_ABORT,
    }
}

/// Kafka's status as Fjord's state; None for Dead, which ends the id.
fn state_of(status: i8) -> Result<Option<TxnState>, i8> {
    Ok(Some(match status {
        records::TXN_STATUS_EMPTY => TxnState::Empty,
        records::TXN_STATUS_ONGOING => TxnState::Ongoing,
        records::TXN_STATUS_PREPARE_COMMIT => TxnState::PrepareCommit,
        records::TXN_STATUS_PREPARE_ABORT => TxnState::PrepareAbort,
        // Kafka fences an epoch by aborting the open transaction under it.
        records::TXN_STATUS_PREPARE_EPOCH_FENCE => TxnState::PrepareAbort,
        records::TXN_STATUS_COMPLETE_COMMIT => TxnState::CompleteCommit,
        records::TXN_STATUS_COMPLETE_ABORT => TxnState::CompleteAbort,
        records::TXN_STATUS_DEAD => return Ok(None),
        other => return Err(other),
    }))
}

/// The record of `id`'s state; None writes the tombstone that forgets it
/// (what Kafka writes when a transactional id expires).
pub fn txn_record(id: &str, meta: Option<&TxnMeta>) -> KeyValue {
    let value = meta.map(|m| {
        // Kafka writes null partitions for an Empty transaction (whose set
        // is always empty) and a list, grouped by topic, otherwise.
        let partitions = if m.state == TxnState::Empty && m.partitions.is_empty() {
            None
        } else {
            let mut topics: Vec<TxnPartitions> = Vec::new();
            for (topic, p) in &m.partitions {
                match topics.last_mut() {
                    Some(t) if &t.topic == topic => t.partition_ids.push(*p),
                    _ => topics.push(TxnPartitions { topic: topic.clone(), partition_ids: vec![*p] }),
                }
            }
            Some(topics)
        };
        records::encode_txn_value(&TransactionLogValue {
            producer_id: m.producer_id,
            previous_producer_id: -1,
            next_producer_id: -1,
            producer_epoch: m.producer_epoch,
            transaction_timeout_ms: m.timeout_ms,
            transaction_status: status_of(m.state),
            transaction_partitions: partitions,
            transaction_last_update_timestamp_ms: m.update_ms,
            transaction_start_timestamp_ms: m.start_ms,
            client_transaction_version: 0,
        })
    });
    (records::encode_txn_key(id), value)
}

/// Reads one record: the transactional id and its state (None: forget
/// it), and whether it was in the old JSON format. Unreadable records and
/// unknown key versions come back as None, with a log line.
pub fn decode(key: &[u8], value: Option<&[u8]>) -> (Option<(String, Option<TxnMeta>)>, bool) {
    if legacy_json::is_legacy_key(key) {
        return (decode_legacy(key, value), true);
    }
    let id = match records::decode_txn_key(key) {
        Ok(Some(id)) => id,
        Ok(None) => {
            tracing::debug!("__transaction_state record of an unknown key version skipped");
            return (None, false);
        }
        Err(e) => {
            tracing::warn!(error = %e, "unreadable __transaction_state key skipped");
            return (None, false);
        }
    };
    let Some(value) = value else { return (Some((id, None)), false) };
    let v = match records::decode_txn_value(value) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(transactional_id = %id, error = %e, "unreadable transaction state skipped");
            return (None, false);
        }
    };
    let state = match state_of(v.transaction_status) {
        Ok(Some(s)) => s,
        Ok(None) => return (Some((id, None)), false),
        Err(status) => {
            tracing::warn!(transactional_id = %id, status, "transaction state with an unknown status skipped");
            return (None, false);
        }
    };
    let partitions: BTreeSet<(String, i32)> = v
        .transaction_partitions
        .unwrap_or_default()
        .into_iter()
        .flat_map(|t| t.partition_ids.into_iter().map(move |p| (t.topic.clone(), p)))
        .collect();
    let meta = TxnMeta {
        producer_id: v.producer_id,
        producer_epoch: v.producer_epoch,
        timeout_ms: v.transaction_timeout_ms,
        state,
        partitions,
        start_ms: v.transaction_start_timestamp_ms,
        update_ms: v.transaction_last_update_timestamp_ms,
    };
    (Some((id, Some(meta))), false)
}

fn decode_legacy(key: &[u8], value: Option<&[u8]>) -> Option<(String, Option<TxnMeta>)> {
    let Some(key) = legacy_json::txn_key(key) else {
        tracing::warn!("unreadable JSON __transaction_state key skipped");
        return None;
    };
    // The old reader took an unreadable value for a deletion too.
    let meta = value.and_then(legacy_json::txn_value).map(|v| TxnMeta {
        producer_id: v.producer_id,
        producer_epoch: v.producer_epoch,
        timeout_ms: v.timeout_ms,
        state: match v.state {
            legacy_json::TxnState::Empty => TxnState::Empty,
            legacy_json::TxnState::Ongoing => TxnState::Ongoing,
            legacy_json::TxnState::PrepareCommit => TxnState::PrepareCommit,
            legacy_json::TxnState::PrepareAbort => TxnState::PrepareAbort,
            legacy_json::TxnState::CompleteCommit => TxnState::CompleteCommit,
            legacy_json::TxnState::CompleteAbort => TxnState::CompleteAbort,
        },
        partitions: v.partitions,
        start_ms: v.start_ms,
        update_ms: v.update_ms,
    });
    Some((key.transactional_id, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(state: TxnState, partitions: &[(&str, i32)]) -> TxnMeta {
        TxnMeta {
            producer_id: 4000,
            producer_epoch: 3,
            timeout_ms: 60_000,
            state,
            partitions: partitions.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
            start_ms: if partitions.is_empty() { -1 } else { 1_000 },
            update_ms: 2_000,
        }
    }

    #[test]
    fn every_state_round_trips_with_kafkas_status_code() {
        for (state, code) in TxnState::ALL.iter().zip(0i8..) {
            let parts: &[(&str, i32)] = if *state == TxnState::Empty { &[] } else { &[("a", 1), ("a", 0), ("b", 2)] };
            let m = meta(*state, parts);
            let (k, v) = txn_record("tx", Some(&m));
            let v = v.unwrap();
            assert_eq!(&v[..2], &[0, 0], "TransactionLogValue version 0");
            assert_eq!(v[2 + 8 + 2 + 4] as i8, code, "status of {state:?}");
            let (back, legacy) = decode(&k, Some(&v));
            assert!(!legacy);
            let (id, back) = back.unwrap();
            assert_eq!(id, "tx");
            let back = back.unwrap();
            assert_eq!(
                (back.producer_id, back.producer_epoch, back.timeout_ms, back.state, back.start_ms, back.update_ms),
                (m.producer_id, m.producer_epoch, m.timeout_ms, m.state, m.start_ms, m.update_ms)
            );
            assert_eq!(back.partitions, m.partitions);
        }
    }

    #[test]
    fn partitions_are_grouped_by_topic_and_empty_is_null() {
        let (_, v) = txn_record("tx", Some(&meta(TxnState::Ongoing, &[("a", 1), ("a", 0), ("b", 2)])));
        let v = records::decode_txn_value(&v.unwrap()).unwrap();
        assert_eq!(
            v.transaction_partitions,
            Some(vec![
                TxnPartitions { topic: "a".into(), partition_ids: vec![0, 1] },
                TxnPartitions { topic: "b".into(), partition_ids: vec![2] },
            ])
        );
        let (_, v) = txn_record("tx", Some(&meta(TxnState::Empty, &[])));
        assert_eq!(records::decode_txn_value(&v.unwrap()).unwrap().transaction_partitions, None);
    }

    #[test]
    fn dead_forgets_and_tombstones_forget() {
        let mut v = TransactionLogValue {
            producer_id: 1,
            previous_producer_id: -1,
            next_producer_id: -1,
            producer_epoch: 0,
            transaction_timeout_ms: 1,
            transaction_status: records::TXN_STATUS_DEAD,
            transaction_partitions: None,
            transaction_last_update_timestamp_ms: 0,
            transaction_start_timestamp_ms: -1,
            client_transaction_version: 0,
        };
        let key = records::encode_txn_key("tx");
        assert_eq!(decode(&key, Some(&records::encode_txn_value(&v))).0, Some(("tx".to_string(), None)));
        assert_eq!(decode(&key, None).0, Some(("tx".to_string(), None)));
        v.transaction_status = 42;
        assert_eq!(decode(&key, Some(&records::encode_txn_value(&v))).0, None);
    }
}
