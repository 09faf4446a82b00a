//! The classic group coordinator's records in `__consumer_offsets`: its
//! state mapped onto Kafka's OffsetCommit and GroupMetadata records, and
//! back, with the old JSON records read for migration.

use crate::coordinator::classic::{CommittedOffset, Group};
use crate::coordinator::legacy_json;
use crate::coordinator::records::{self, GroupMetadataValue, MemberMetadata, OffsetCommitValue, OffsetsKey};
use crate::server::now_ms;

/// A record as the coordinator applies it; a None value deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsRecord {
    Offset { group: String, topic: String, partition: i32, value: Option<CommittedOffset> },
    Group { group: String, value: Option<GroupSummary> },
}

/// What a restart keeps of a group's GroupMetadata: its members rejoin
/// after a restart, so only the protocol type and generation matter (the
/// generation keeps rising across restarts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    pub protocol_type: Option<String>,
    pub generation: i32,
}

pub use crate::internal_topic::RecordBytes as KeyValue;

/// Reads one record. `legacy` tells whether it was in the old JSON
/// format. Records of other types (KIP-848 and share groups) and ones that
/// cannot be read come back as None, with a log line.
pub fn decode(key: &[u8], value: Option<&[u8]>) -> (Option<OffsetsRecord>, bool) {
    if legacy_json::is_legacy_key(key) {
        return (decode_legacy(key, value), true);
    }
    let key = match records::decode_offsets_key(key) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "unreadable __consumer_offsets key skipped");
            return (None, false);
        }
    };
    let record = match key {
        OffsetsKey::OffsetCommit { group, topic, partition } => {
            let value = match value.map(records::decode_offset_commit_value).transpose() {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(group, topic, partition, error = %e, "unreadable offset commit skipped");
                    return (None, false);
                }
            };
            let value = value.map(|v| CommittedOffset {
                offset: v.offset,
                leader_epoch: v.leader_epoch,
                metadata: Some(v.metadata),
                commit_ms: v.commit_timestamp,
            });
            OffsetsRecord::Offset { group, topic, partition, value }
        }
        OffsetsKey::GroupMetadata { group } => {
            let value = match value.map(records::decode_group_metadata_value).transpose() {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(group, error = %e, "unreadable group metadata skipped");
                    return (None, false);
                }
            };
            let value = value.map(|v| GroupSummary {
                protocol_type: Some(v.protocol_type).filter(|t| !t.is_empty()),
                generation: v.generation,
            });
            OffsetsRecord::Group { group, value }
        }
        OffsetsKey::Other(version) => {
            // Kafka's loader skips record types it does not know the same way.
            tracing::debug!(key_version = version, "__consumer_offsets record of another type skipped");
            return (None, false);
        }
    };
    (Some(record), false)
}

fn decode_legacy(key: &[u8], value: Option<&[u8]>) -> Option<OffsetsRecord> {
    let Some(key) = legacy_json::offsets_key(key) else {
        tracing::warn!("unreadable JSON __consumer_offsets key skipped");
        return None;
    };
    Some(match key {
        legacy_json::OffsetsKey::Offset { group, topic, partition } => {
            // The old reader took an unreadable value for a deletion too.
            let value = value.and_then(legacy_json::offset_value).map(|v| CommittedOffset {
                offset: v.offset,
                leader_epoch: v.leader_epoch,
                metadata: v.metadata,
                commit_ms: v.commit_ms,
            });
            OffsetsRecord::Offset { group, topic, partition, value }
        }
        legacy_json::OffsetsKey::Group { group } => {
            let value = value
                .and_then(legacy_json::group_value)
                .map(|v| GroupSummary { protocol_type: v.protocol_type, generation: v.generation });
            OffsetsRecord::Group { group, value }
        }
    })
}

/// An OffsetCommit record. Kafka stores a missing metadata string as "",
/// which is also what OffsetFetch answers for it.
pub fn offset_record(group: &str, topic: &str, partition: i32, c: &CommittedOffset) -> KeyValue {
    let value = OffsetCommitValue {
        offset: c.offset,
        leader_epoch: c.leader_epoch,
        metadata: c.metadata.clone().unwrap_or_default(),
        commit_timestamp: c.commit_ms,
        // Fjord expires offsets by offsets.retention from the commit (or
        // from when the group emptied), never per commit.
        expire_timestamp: -1,
    };
    (records::encode_offset_commit_key(group, topic, partition), Some(records::encode_offset_commit_value(&value)))
}

/// The record that deletes a committed offset.
pub fn offset_tombstone(group: &str, topic: &str, partition: i32) -> KeyValue {
    (records::encode_offset_commit_key(group, topic, partition), None)
}

/// A GroupMetadata record of `group` as it is now, members included, as
/// Kafka writes it when a rebalance completes (an Empty group has a null
/// protocol and leader and no members).
pub fn group_record(group_id: &str, g: &Group) -> KeyValue {
    let protocol = g.protocol.clone().unwrap_or_default();
    let members = g
        .members
        .values()
        .map(|m| MemberMetadata {
            member_id: m.member_id.clone(),
            group_instance_id: m.instance_id.clone(),
            client_id: m.client_id.clone(),
            client_host: m.client_host.clone(),
            rebalance_timeout: millis(m.rebalance_timeout),
            session_timeout: millis(m.session_timeout),
            subscription: m.metadata_for(&protocol).to_vec(),
            assignment: m.assignment.to_vec(),
        })
        .collect();
    let mut value = GroupMetadataValue {
        protocol_type: g.protocol_type.clone().unwrap_or_default(),
        generation: g.generation,
        protocol: g.protocol.clone(),
        leader: g.leader.clone(),
        current_state_timestamp: now_ms(),
        members,
    };
    let mut bytes = records::encode_group_metadata_value(&value);
    if bytes.len() > GROUP_RECORD_MAX_BYTES {
        // A huge group (many members, large subscriptions) would not fit the
        // topic's max.message.bytes and the generation would go unrecorded.
        // The generation is what must survive a restart (so a zombie cannot
        // reuse one); the members are rebuilt by the next rebalance anyway.
        tracing::warn!(group = group_id, bytes = bytes.len(), "group record too large: members left out");
        value.members.clear();
        bytes = records::encode_group_metadata_value(&value);
    }
    (records::encode_group_metadata_key(group_id), Some(bytes))
}

/// Largest GroupMetadata value written with its members: below the offsets
/// topic's default max.message.bytes (1,048,588) with room for the batch.
const GROUP_RECORD_MAX_BYTES: usize = 1_000_000;

/// The record that deletes a group.
pub fn group_tombstone(group_id: &str) -> KeyValue {
    (records::encode_group_metadata_key(group_id), None)
}

fn millis(d: std::time::Duration) -> i32 {
    d.as_millis().min(i32::MAX as u128) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_through_kafka_records() {
        let c = CommittedOffset { offset: 9, leader_epoch: 2, metadata: Some("m".into()), commit_ms: 77 };
        let (k, v) = offset_record("g", "t", 1, &c);
        assert_eq!(&k[..2], &[0, 1]);
        assert_eq!(&v.as_ref().unwrap()[..2], &[0, 3]);
        let (record, legacy) = decode(&k, v.as_deref());
        assert!(!legacy);
        assert_eq!(
            record,
            Some(OffsetsRecord::Offset { group: "g".into(), topic: "t".into(), partition: 1, value: Some(c) })
        );
        let (k, v) = offset_tombstone("g", "t", 1);
        assert_eq!(
            decode(&k, v.as_deref()).0,
            Some(OffsetsRecord::Offset { group: "g".into(), topic: "t".into(), partition: 1, value: None })
        );
        let (k, v) = group_tombstone("g");
        assert_eq!(decode(&k, v.as_deref()).0, Some(OffsetsRecord::Group { group: "g".into(), value: None }));
    }

    #[test]
    fn legacy_records_are_read_and_flagged() {
        let (record, legacy) = decode(
            br#"{"type":"offset","group":"g","topic":"t","partition":0}"#,
            Some(br#"{"offset":5,"leader_epoch":1,"metadata":"x","commit_ms":3}"#),
        );
        assert!(legacy);
        let c = CommittedOffset { offset: 5, leader_epoch: 1, metadata: Some("x".into()), commit_ms: 3 };
        assert_eq!(
            record,
            Some(OffsetsRecord::Offset { group: "g".into(), topic: "t".into(), partition: 0, value: Some(c) })
        );
    }

    #[test]
    fn other_record_types_are_skipped() {
        // ConsumerGroupMetadataKey v3 / value: not Fjord's, not an error.
        let mut key = vec![0, 3, 0, 1];
        key.push(b'g');
        assert_eq!(decode(&key, Some(&[0, 0, 0, 0, 0, 1])), (None, false));
    }
}
