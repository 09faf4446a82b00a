//! MIGRATION ONLY: the JSON records Fjord wrote to `__consumer_offsets` and
//! `__transaction_state` before it used Kafka's schemas. Start-up reads them
//! once, rewrites the state in Kafka's format and moves the log start past
//! them; nothing writes this format any more. Frozen: do not change.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Whether a key is in the old format. Kafka's keys start with a big-endian
/// int16 version (a zero byte for every version Kafka defines); the old
/// JSON keys start with `{`.
pub fn is_legacy_key(key: &[u8]) -> bool {
    key.first() == Some(&b'{')
}

/// `__consumer_offsets` key.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OffsetsKey {
    Offset { group: String, topic: String, partition: i32 },
    Group { group: String },
}

/// `__consumer_offsets` value of an offset key.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_ms: i64,
}

/// `__consumer_offsets` value of a group key.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupValue {
    pub protocol_type: Option<String>,
    pub generation: i32,
}

/// `__transaction_state` key.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TxnKey {
    pub transactional_id: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum TxnState {
    Empty,
    Ongoing,
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

/// `__transaction_state` value.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TxnValue {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    pub partitions: BTreeSet<(String, i32)>,
    pub start_ms: i64,
    pub update_ms: i64,
}

pub fn offsets_key(key: &[u8]) -> Option<OffsetsKey> {
    serde_json::from_slice(key).ok()
}

pub fn offset_value(value: &[u8]) -> Option<OffsetValue> {
    serde_json::from_slice(value).ok()
}

pub fn group_value(value: &[u8]) -> Option<GroupValue> {
    serde_json::from_slice(value).ok()
}

pub fn txn_key(key: &[u8]) -> Option<TxnKey> {
    serde_json::from_slice(key).ok()
}

pub fn txn_value(value: &[u8]) -> Option<TxnValue> {
    serde_json::from_slice(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes the old code wrote, as `serde_json` laid them out.
    #[test]
    fn reads_what_the_old_code_wrote() {
        let key = br#"{"type":"offset","group":"g","topic":"t","partition":2}"#;
        assert!(is_legacy_key(key));
        assert_eq!(offsets_key(key), Some(OffsetsKey::Offset { group: "g".into(), topic: "t".into(), partition: 2 }));
        let value = br#"{"offset":42,"leader_epoch":-1,"metadata":null,"commit_ms":1700000000000}"#;
        assert_eq!(
            offset_value(value),
            Some(OffsetValue { offset: 42, leader_epoch: -1, metadata: None, commit_ms: 1_700_000_000_000 })
        );
        assert_eq!(offsets_key(br#"{"type":"group","group":"g"}"#), Some(OffsetsKey::Group { group: "g".into() }));
        assert_eq!(
            group_value(br#"{"protocol_type":"consumer","generation":3}"#),
            Some(GroupValue { protocol_type: Some("consumer".into()), generation: 3 })
        );
        let txn = br#"{"producer_id":7,"producer_epoch":1,"timeout_ms":60000,"state":"Ongoing","partitions":[["t",0]],"start_ms":5,"update_ms":6}"#;
        let v = txn_value(txn).unwrap();
        assert_eq!((v.state, v.partitions.len()), (TxnState::Ongoing, 1));
        assert_eq!(txn_key(br#"{"transactional_id":"x"}"#), Some(TxnKey { transactional_id: "x".into() }));
        // Kafka-format keys are never taken for old ones.
        assert!(!is_legacy_key(&crate::coordinator::records::encode_txn_key("x")));
        assert!(!is_legacy_key(&crate::coordinator::records::encode_offset_commit_key("g", "t", 0)));
    }
}
