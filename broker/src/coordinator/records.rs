//! Apache Kafka's record schemas for `__consumer_offsets` and
//! `__transaction_state` (group-coordinator's OffsetCommitKey/Value and
//! GroupMetadataKey/Value, transaction-coordinator's TransactionLogKey/Value),
//! encoded and decoded by hand. Pure bytes ↔ structs: no broker state here.
//!
//! Every key and value starts with its int16 version. In `__consumer_offsets`
//! the key version is the record type (0–1 offset commit, 2 group metadata,
//! 3 and up KIP-848 and share-group records); a value is read at its own
//! version. Flexible versions (OffsetCommitValue 4+, GroupMetadataValue 4+,
//! TransactionLogValue 1+) use compact strings and arrays and end every
//! struct with a tagged-field section. A value newer than any version known
//! here is read as the newest one, since KIP-915 lets later versions add
//! only tagged fields.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record ends before its {0}")]
    Truncated(&'static str),
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("unsupported {what} version {version}")]
    Version { what: &'static str, version: i16 },
}

type Result<T> = std::result::Result<T, DecodeError>;

/// The key of a `__consumer_offsets` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetsKey {
    /// OffsetCommitKey (key versions 0 and 1; Kafka writes 1).
    OffsetCommit { group: String, topic: String, partition: i32 },
    /// GroupMetadataKey (key version 2).
    GroupMetadata { group: String },
    /// Another record type of the topic, by its key version: KIP-848
    /// consumer groups (3–8), share groups (9 and up). Fjord keeps none of
    /// them; readers skip these.
    Other(i16),
}

/// OffsetCommitValue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitValue {
    pub offset: i64,
    /// Version 3+; -1 when unknown.
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
    /// Version 1 only; -1 when not set.
    pub expire_timestamp: i64,
}

/// GroupMetadataValue's MemberMetadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberMetadata {
    pub member_id: String,
    /// Version 3+.
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    /// Version 1+; -1 when unknown.
    pub rebalance_timeout: i32,
    pub session_timeout: i32,
    /// The member's protocol metadata for the group's chosen protocol.
    pub subscription: Vec<u8>,
    pub assignment: Vec<u8>,
}

/// GroupMetadataValue: a classic group's generation and members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadataValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    /// Version 2+; -1 when unknown.
    pub current_state_timestamp: i64,
    pub members: Vec<MemberMetadata>,
}

/// TransactionLogValue's partitions of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnPartitions {
    pub topic: String,
    pub partition_ids: Vec<i32>,
}

/// TransactionLogValue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionLogValue {
    pub producer_id: i64,
    /// Tagged (tag 0) in version 1+; -1 by default.
    pub previous_producer_id: i64,
    /// Tagged (tag 1) in version 1+; -1 by default.
    pub next_producer_id: i64,
    pub producer_epoch: i16,
    pub transaction_timeout_ms: i32,
    /// Kafka's TransactionState id (see `TXN_STATUS_*`).
    pub transaction_status: i8,
    /// Null for an Empty transaction, as Kafka writes it.
    pub transaction_partitions: Option<Vec<TxnPartitions>>,
    pub transaction_last_update_timestamp_ms: i64,
    pub transaction_start_timestamp_ms: i64,
    /// Tagged (tag 2) in version 1+; 0 by default.
    pub client_transaction_version: i16,
}

/// Kafka's TransactionState ids.
pub const TXN_STATUS_EMPTY: i8 = 0;
pub const TXN_STATUS_ONGOING: i8 = 1;
pub const TXN_STATUS_PREPARE_COMMIT: i8 = 2;
pub const TXN_STATUS_PREPARE_ABORT: i8 = 3;
pub const TXN_STATUS_COMPLETE_COMMIT: i8 = 4;
pub const TXN_STATUS_COMPLETE_ABORT: i8 = 5;
pub const TXN_STATUS_DEAD: i8 = 6;
pub const TXN_STATUS_PREPARE_EPOCH_FENCE: i8 = 7;

/// The versions Kafka 3.9–4.x writes (with `transaction.version` 0, which
/// is what Fjord offers: TransactionLogValue 1 comes with KIP-890's
/// transaction.version 1+, which Fjord does not advertise).
pub const OFFSET_COMMIT_KEY_VERSION: i16 = 1;
pub const GROUP_METADATA_KEY_VERSION: i16 = 2;
pub const TXN_LOG_KEY_VERSION: i16 = 0;
pub const TXN_LOG_VALUE_VERSION: i16 = 0;
const GROUP_METADATA_VALUE_VERSION: i16 = 3;
const OFFSET_COMMIT_VALUE_NEWEST: i16 = 4;
const GROUP_METADATA_VALUE_NEWEST: i16 = 4;
const TXN_LOG_VALUE_NEWEST: i16 = 1;

// ---------------------------------------------------------------- reading

struct Reader<'a> {
    buf: &'a [u8],
    flexible: bool,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, flexible: false }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn i8(&mut self, what: &'static str) -> Result<i8> {
        Ok(i8::from_be_bytes(self.array(what)?))
    }
    fn i16(&mut self, what: &'static str) -> Result<i16> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }
    fn i64(&mut self, what: &'static str) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    fn uvarint(&mut self, what: &'static str) -> Result<u32> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let b = self.take(1, what)?[0];
            if i == 4 && b > 0x0f {
                return Err(DecodeError::Invalid(what));
            }
            value |= ((b & 0x7f) as u32) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Invalid(what))
    }

    /// The length of a string, bytes or array; None when null.
    fn length(&mut self, wide: bool, what: &'static str) -> Result<Option<usize>> {
        if self.flexible {
            let n = self.uvarint(what)?;
            return Ok(n.checked_sub(1).map(|n| n as usize));
        }
        let n = if wide { self.i32(what)? } else { self.i16(what)? as i32 };
        match n {
            -1 => Ok(None),
            n if n < 0 => Err(DecodeError::Invalid(what)),
            n => Ok(Some(n as usize)),
        }
    }

    fn nullable_string(&mut self, what: &'static str) -> Result<Option<String>> {
        let Some(n) = self.length(false, what)? else { return Ok(None) };
        let raw = self.take(n, what)?;
        String::from_utf8(raw.to_vec()).map(Some).map_err(|_| DecodeError::Invalid(what))
    }

    fn string(&mut self, what: &'static str) -> Result<String> {
        self.nullable_string(what)?.ok_or(DecodeError::Invalid(what))
    }

    fn bytes(&mut self, what: &'static str) -> Result<Vec<u8>> {
        let n = self.length(true, what)?.ok_or(DecodeError::Invalid(what))?;
        Ok(self.take(n, what)?.to_vec())
    }

    /// An array's element count (None when null), checked against what is
    /// left so a corrupt count cannot make us allocate much.
    fn array_len(&mut self, what: &'static str) -> Result<Option<usize>> {
        let n = self.length(true, what)?;
        if n.is_some_and(|n| n > self.buf.len()) {
            return Err(DecodeError::Truncated(what));
        }
        Ok(n)
    }

    /// A struct's tagged-field section (flexible versions only); `known`
    /// gets each field it can use, the rest are skipped.
    fn tagged_fields(&mut self, mut known: impl FnMut(u32, &[u8]) -> Result<()>) -> Result<()> {
        if !self.flexible {
            return Ok(());
        }
        let count = self.uvarint("tagged field count")?;
        for _ in 0..count {
            let tag = self.uvarint("tag")?;
            let size = self.uvarint("tagged field size")? as usize;
            let data = self.take(size, "tagged field")?;
            known(tag, data)?;
        }
        Ok(())
    }
}

fn tagged_i64(data: &[u8], what: &'static str) -> Result<i64> {
    Reader::new(data).i64(what)
}

fn tagged_i16(data: &[u8], what: &'static str) -> Result<i16> {
    Reader::new(data).i16(what)
}

pub fn decode_offsets_key(buf: &[u8]) -> Result<OffsetsKey> {
    let mut r = Reader::new(buf);
    let version = r.i16("key version")?;
    match version {
        0 | 1 => Ok(OffsetsKey::OffsetCommit {
            group: r.string("group")?,
            topic: r.string("topic")?,
            partition: r.i32("partition")?,
        }),
        2 => Ok(OffsetsKey::GroupMetadata { group: r.string("group")? }),
        v if v >= 0 => Ok(OffsetsKey::Other(v)),
        v => Err(DecodeError::Version { what: "__consumer_offsets key", version: v }),
    }
}

pub fn decode_offset_commit_value(buf: &[u8]) -> Result<OffsetCommitValue> {
    let mut r = Reader::new(buf);
    let version = r.i16("value version")?;
    if version < 0 {
        return Err(DecodeError::Version { what: "OffsetCommitValue", version });
    }
    let v = version.min(OFFSET_COMMIT_VALUE_NEWEST);
    r.flexible = v >= 4;
    let offset = r.i64("offset")?;
    let leader_epoch = if v >= 3 { r.i32("leader epoch")? } else { -1 };
    let metadata = r.string("metadata")?;
    let commit_timestamp = r.i64("commit timestamp")?;
    let expire_timestamp = if v == 1 { r.i64("expire timestamp")? } else { -1 };
    r.tagged_fields(|_, _| Ok(()))?;
    Ok(OffsetCommitValue { offset, leader_epoch, metadata, commit_timestamp, expire_timestamp })
}

pub fn decode_group_metadata_value(buf: &[u8]) -> Result<GroupMetadataValue> {
    let mut r = Reader::new(buf);
    let version = r.i16("value version")?;
    if version < 0 {
        return Err(DecodeError::Version { what: "GroupMetadataValue", version });
    }
    let v = version.min(GROUP_METADATA_VALUE_NEWEST);
    r.flexible = v >= 4;
    let protocol_type = r.string("protocol type")?;
    let generation = r.i32("generation")?;
    let protocol = r.nullable_string("protocol")?;
    let leader = r.nullable_string("leader")?;
    let current_state_timestamp = if v >= 2 { r.i64("current state timestamp")? } else { -1 };
    let count = r.array_len("members")?.ok_or(DecodeError::Invalid("members"))?;
    let mut members = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let member_id = r.string("member id")?;
        let group_instance_id = if v >= 3 { r.nullable_string("group instance id")? } else { None };
        let client_id = r.string("client id")?;
        let client_host = r.string("client host")?;
        let rebalance_timeout = if v >= 1 { r.i32("rebalance timeout")? } else { -1 };
        let session_timeout = r.i32("session timeout")?;
        let subscription = r.bytes("subscription")?;
        let assignment = r.bytes("assignment")?;
        r.tagged_fields(|_, _| Ok(()))?;
        members.push(MemberMetadata {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            rebalance_timeout,
            session_timeout,
            subscription,
            assignment,
        });
    }
    r.tagged_fields(|_, _| Ok(()))?;
    Ok(GroupMetadataValue { protocol_type, generation, protocol, leader, current_state_timestamp, members })
}

/// TransactionLogKey: the transactional id; None for a key version this
/// topic does not know (skipped by readers, as Kafka does).
pub fn decode_txn_key(buf: &[u8]) -> Result<Option<String>> {
    let mut r = Reader::new(buf);
    match r.i16("key version")? {
        0 => Ok(Some(r.string("transactional id")?)),
        _ => Ok(None),
    }
}

pub fn decode_txn_value(buf: &[u8]) -> Result<TransactionLogValue> {
    let mut r = Reader::new(buf);
    let version = r.i16("value version")?;
    if version < 0 {
        return Err(DecodeError::Version { what: "TransactionLogValue", version });
    }
    r.flexible = version.min(TXN_LOG_VALUE_NEWEST) >= 1;
    let producer_id = r.i64("producer id")?;
    let producer_epoch = r.i16("producer epoch")?;
    let transaction_timeout_ms = r.i32("transaction timeout")?;
    let transaction_status = r.i8("transaction status")?;
    let transaction_partitions = match r.array_len("transaction partitions")? {
        None => None,
        Some(count) => {
            let mut topics = Vec::with_capacity(count.min(64));
            for _ in 0..count {
                let topic = r.string("topic")?;
                let n = r.array_len("partition ids")?.ok_or(DecodeError::Invalid("partition ids"))?;
                let mut partition_ids = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    partition_ids.push(r.i32("partition id")?);
                }
                r.tagged_fields(|_, _| Ok(()))?;
                topics.push(TxnPartitions { topic, partition_ids });
            }
            Some(topics)
        }
    };
    let transaction_last_update_timestamp_ms = r.i64("last update timestamp")?;
    let transaction_start_timestamp_ms = r.i64("start timestamp")?;
    let mut value = TransactionLogValue {
        producer_id,
        previous_producer_id: -1,
        next_producer_id: -1,
        producer_epoch,
        transaction_timeout_ms,
        transaction_status,
        transaction_partitions,
        transaction_last_update_timestamp_ms,
        transaction_start_timestamp_ms,
        client_transaction_version: 0,
    };
    r.tagged_fields(|tag, data| {
        match tag {
            0 => value.previous_producer_id = tagged_i64(data, "previous producer id")?,
            1 => value.next_producer_id = tagged_i64(data, "next producer id")?,
            2 => value.client_transaction_version = tagged_i16(data, "client transaction version")?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(value)
}

// ---------------------------------------------------------------- writing

struct Writer {
    buf: Vec<u8>,
    flexible: bool,
}

impl Writer {
    fn new(version: i16, flexible: bool) -> Self {
        let mut w = Writer { buf: Vec::with_capacity(64), flexible };
        w.i16(version);
        w
    }
    fn i8(&mut self, v: i8) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn i16(&mut self, v: i16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn uvarint(&mut self, mut v: u32) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }
    /// A length, or null; strings carry an int16 length, bytes and arrays int32.
    fn length(&mut self, n: Option<usize>, wide: bool) {
        if self.flexible {
            // Lengths here come from strings and arrays in memory, far below u32.
            self.uvarint(n.map_or(0, |n| n as u32 + 1));
        } else if wide {
            self.i32(n.map_or(-1, |n| n as i32));
        } else {
            self.i16(n.map_or(-1, |n| n as i16));
        }
    }
    fn nullable_string(&mut self, s: Option<&str>) {
        // Kafka's strings are at most i16::MAX bytes; longer ones are cut at
        // a character boundary rather than written with a wrapped length.
        let s = s.map(|s| truncate_utf8(s, i16::MAX as usize));
        self.length(s.map(str::len), false);
        if let Some(s) = s {
            self.buf.extend_from_slice(s.as_bytes());
        }
    }
    fn string(&mut self, s: &str) {
        self.nullable_string(Some(s));
    }
    fn bytes(&mut self, b: &[u8]) {
        self.length(Some(b.len()), true);
        self.buf.extend_from_slice(b);
    }
    fn no_tagged_fields(&mut self) {
        if self.flexible {
            self.uvarint(0);
        }
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// OffsetCommitKey at the version Kafka writes (1).
pub fn encode_offset_commit_key(group: &str, topic: &str, partition: i32) -> Vec<u8> {
    let mut w = Writer::new(OFFSET_COMMIT_KEY_VERSION, false);
    w.string(group);
    w.string(topic);
    w.i32(partition);
    w.buf
}

/// GroupMetadataKey (version 2).
pub fn encode_group_metadata_key(group: &str) -> Vec<u8> {
    let mut w = Writer::new(GROUP_METADATA_KEY_VERSION, false);
    w.string(group);
    w.buf
}

/// OffsetCommitValue at the version Kafka 3.9–4.x writes: 3, or 1 when the
/// commit carries an expire timestamp.
pub fn encode_offset_commit_value(v: &OffsetCommitValue) -> Vec<u8> {
    encode_offset_commit_value_as(v, if v.expire_timestamp >= 0 { 1 } else { 3 })
}

pub fn encode_offset_commit_value_as(v: &OffsetCommitValue, version: i16) -> Vec<u8> {
    let mut w = Writer::new(version, version >= 4);
    w.i64(v.offset);
    if version >= 3 {
        w.i32(v.leader_epoch);
    }
    w.string(&v.metadata);
    w.i64(v.commit_timestamp);
    if version == 1 {
        w.i64(v.expire_timestamp);
    }
    w.no_tagged_fields();
    w.buf
}

/// GroupMetadataValue at the version Kafka 3.9–4.x writes (3).
pub fn encode_group_metadata_value(v: &GroupMetadataValue) -> Vec<u8> {
    encode_group_metadata_value_as(v, GROUP_METADATA_VALUE_VERSION)
}

pub fn encode_group_metadata_value_as(v: &GroupMetadataValue, version: i16) -> Vec<u8> {
    let mut w = Writer::new(version, version >= 4);
    w.string(&v.protocol_type);
    w.i32(v.generation);
    w.nullable_string(v.protocol.as_deref());
    w.nullable_string(v.leader.as_deref());
    if version >= 2 {
        w.i64(v.current_state_timestamp);
    }
    w.length(Some(v.members.len()), true);
    for m in &v.members {
        w.string(&m.member_id);
        if version >= 3 {
            w.nullable_string(m.group_instance_id.as_deref());
        }
        w.string(&m.client_id);
        w.string(&m.client_host);
        if version >= 1 {
            w.i32(m.rebalance_timeout);
        }
        w.i32(m.session_timeout);
        w.bytes(&m.subscription);
        w.bytes(&m.assignment);
        w.no_tagged_fields();
    }
    w.no_tagged_fields();
    w.buf
}

/// TransactionLogKey (version 0).
pub fn encode_txn_key(transactional_id: &str) -> Vec<u8> {
    let mut w = Writer::new(TXN_LOG_KEY_VERSION, false);
    w.string(transactional_id);
    w.buf
}

/// TransactionLogValue at the version Fjord writes (0, see above).
pub fn encode_txn_value(v: &TransactionLogValue) -> Vec<u8> {
    encode_txn_value_as(v, TXN_LOG_VALUE_VERSION)
}

pub fn encode_txn_value_as(v: &TransactionLogValue, version: i16) -> Vec<u8> {
    let flexible = version >= 1;
    let mut w = Writer::new(version, flexible);
    w.i64(v.producer_id);
    w.i16(v.producer_epoch);
    w.i32(v.transaction_timeout_ms);
    w.i8(v.transaction_status);
    match &v.transaction_partitions {
        None => w.length(None, true),
        Some(topics) => {
            w.length(Some(topics.len()), true);
            for t in topics {
                w.string(&t.topic);
                w.length(Some(t.partition_ids.len()), true);
                for p in &t.partition_ids {
                    w.i32(*p);
                }
                w.no_tagged_fields();
            }
        }
    }
    w.i64(v.transaction_last_update_timestamp_ms);
    w.i64(v.transaction_start_timestamp_ms);
    if flexible {
        // Tagged fields are written only when they differ from their
        // default, in tag order.
        let mut tagged: Vec<(u32, Vec<u8>)> = Vec::new();
        if v.previous_producer_id != -1 {
            tagged.push((0, v.previous_producer_id.to_be_bytes().to_vec()));
        }
        if v.next_producer_id != -1 {
            tagged.push((1, v.next_producer_id.to_be_bytes().to_vec()));
        }
        if v.client_transaction_version != 0 {
            tagged.push((2, v.client_transaction_version.to_be_bytes().to_vec()));
        }
        w.uvarint(tagged.len() as u32);
        for (tag, data) in tagged {
            w.uvarint(tag);
            w.uvarint(data.len() as u32);
            w.buf.extend_from_slice(&data);
        }
    }
    w.buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bytes laid out by hand from the JSON schemas, field by field.
    struct Layout(Vec<u8>);
    impl Layout {
        fn new() -> Self {
            Layout(Vec::new())
        }
        fn i8(mut self, v: i8) -> Self {
            self.0.push(v as u8);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        /// A non-flexible string: int16 length, UTF-8.
        fn str16(self, s: &str) -> Self {
            self.i16(s.len() as i16).raw(s.as_bytes())
        }
    }

    #[test]
    fn offset_commit_key_and_value_match_the_schema_byte_for_byte() {
        let key = Layout::new().i16(1).str16("grp").str16("orders").i32(7).0;
        assert_eq!(encode_offset_commit_key("grp", "orders", 7), key);
        assert_eq!(
            decode_offsets_key(&key).unwrap(),
            OffsetsKey::OffsetCommit { group: "grp".into(), topic: "orders".into(), partition: 7 }
        );
        let value = OffsetCommitValue {
            offset: 42,
            leader_epoch: 5,
            metadata: "meta".into(),
            commit_timestamp: 1_700_000_000_123,
            expire_timestamp: -1,
        };
        // Version 3: offset, leaderEpoch, metadata, commitTimestamp.
        let v3 = Layout::new().i16(3).i64(42).i32(5).str16("meta").i64(1_700_000_000_123).0;
        assert_eq!(encode_offset_commit_value(&value), v3);
        assert_eq!(decode_offset_commit_value(&v3).unwrap(), value);
        // Version 1 (with an expire timestamp): no leader epoch.
        let expiring = OffsetCommitValue { expire_timestamp: 1_700_000_100_000, leader_epoch: -1, ..value.clone() };
        let v1 = Layout::new().i16(1).i64(42).str16("meta").i64(1_700_000_000_123).i64(1_700_000_100_000).0;
        assert_eq!(encode_offset_commit_value(&expiring), v1);
        assert_eq!(decode_offset_commit_value(&v1).unwrap(), expiring);
        // Version 4 is flexible: compact string (length + 1), empty tag section.
        let v4 = Layout::new().i16(4).i64(42).i32(5).raw(&[5]).raw(b"meta").i64(1_700_000_000_123).raw(&[0]).0;
        assert_eq!(encode_offset_commit_value_as(&value, 4), v4);
        assert_eq!(decode_offset_commit_value(&v4).unwrap(), value);
    }

    #[test]
    fn group_metadata_matches_the_schema_byte_for_byte() {
        let key = Layout::new().i16(2).str16("grp").0;
        assert_eq!(encode_group_metadata_key("grp"), key);
        assert_eq!(decode_offsets_key(&key).unwrap(), OffsetsKey::GroupMetadata { group: "grp".into() });
        let value = GroupMetadataValue {
            protocol_type: "consumer".into(),
            generation: 3,
            protocol: Some("range".into()),
            leader: Some("m-1".into()),
            current_state_timestamp: 1_700_000_000_000,
            members: vec![MemberMetadata {
                member_id: "m-1".into(),
                group_instance_id: None,
                client_id: "cli".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout: 300_000,
                session_timeout: 45_000,
                subscription: vec![0, 1, 2],
                assignment: vec![9],
            }],
        };
        let v3 = Layout::new()
            .i16(3)
            .str16("consumer")
            .i32(3)
            .str16("range")
            .str16("m-1")
            .i64(1_700_000_000_000)
            .i32(1) // members
            .str16("m-1")
            .i16(-1) // null group instance id
            .str16("cli")
            .str16("/127.0.0.1")
            .i32(300_000)
            .i32(45_000)
            .i32(3)
            .raw(&[0, 1, 2])
            .i32(1)
            .raw(&[9])
            .0;
        assert_eq!(encode_group_metadata_value(&value), v3);
        assert_eq!(decode_group_metadata_value(&v3).unwrap(), value);
        // An Empty group as Kafka writes it: null protocol and leader, no members.
        let empty = Layout::new().i16(3).str16("consumer").i32(4).i16(-1).i16(-1).i64(5).i32(0).0;
        let decoded = decode_group_metadata_value(&empty).unwrap();
        assert_eq!((decoded.protocol, decoded.leader, decoded.members.len()), (None, None, 0));
    }

    #[test]
    fn transaction_log_matches_the_schema_byte_for_byte() {
        let key = Layout::new().i16(0).str16("tx-1").0;
        assert_eq!(encode_txn_key("tx-1"), key);
        assert_eq!(decode_txn_key(&key).unwrap(), Some("tx-1".to_string()));
        let value = TransactionLogValue {
            producer_id: 1000,
            previous_producer_id: -1,
            next_producer_id: -1,
            producer_epoch: 2,
            transaction_timeout_ms: 60_000,
            transaction_status: TXN_STATUS_ONGOING,
            transaction_partitions: Some(vec![TxnPartitions { topic: "orders".into(), partition_ids: vec![0, 3] }]),
            transaction_last_update_timestamp_ms: 1_700_000_000_500,
            transaction_start_timestamp_ms: 1_700_000_000_000,
            client_transaction_version: 0,
        };
        let v0 = Layout::new()
            .i64(1000)
            .i16(2)
            .i32(60_000)
            .i8(1)
            .i32(1)
            .str16("orders")
            .i32(2)
            .i32(0)
            .i32(3)
            .i64(1_700_000_000_500)
            .i64(1_700_000_000_000);
        let v0 = Layout::new().i16(0).raw(&v0.0).0;
        assert_eq!(encode_txn_value(&value), v0);
        assert_eq!(decode_txn_value(&v0).unwrap(), value);
        // Version 1 (Kafka 4.x with transaction.version 1+): compact arrays
        // and strings, a tag section per struct, tags 0 and 2 set.
        let tagged = TransactionLogValue { previous_producer_id: 999, client_transaction_version: 2, ..value };
        let v1 = Layout::new()
            .i16(1)
            .i64(1000)
            .i16(2)
            .i32(60_000)
            .i8(1)
            .raw(&[2]) // one topic
            .raw(&[7])
            .raw(b"orders")
            .raw(&[3]) // two partitions
            .i32(0)
            .i32(3)
            .raw(&[0]) // the topic's tags
            .i64(1_700_000_000_500)
            .i64(1_700_000_000_000)
            .raw(&[2, 0, 8])
            .i64(999)
            .raw(&[2, 2])
            .i16(2)
            .0;
        assert_eq!(encode_txn_value_as(&tagged, 1), v1);
        assert_eq!(decode_txn_value(&v1).unwrap(), tagged);
        // An Empty transaction's partitions are null.
        let empty = TransactionLogValue { transaction_partitions: None, ..tagged.clone() };
        let bytes = encode_txn_value(&empty);
        assert_eq!(&bytes[2 + 8 + 2 + 4 + 1..][..4], &(-1i32).to_be_bytes());
    }

    #[test]
    fn other_record_types_are_recognised_not_misread() {
        // A ConsumerGroupMetadataKey (version 3): its group string follows.
        let key = Layout::new().i16(3).str16("grp").0;
        assert_eq!(decode_offsets_key(&key).unwrap(), OffsetsKey::Other(3));
        assert_eq!(decode_txn_key(&Layout::new().i16(1).str16("x").0).unwrap(), None);
        // Fjord's old JSON keys start with '{': version 0x7B.., unknown.
        assert!(matches!(decode_offsets_key(br#"{"type":"group"}"#).unwrap(), OffsetsKey::Other(_)));
    }

    #[test]
    fn unknown_tagged_fields_are_skipped() {
        let v4 = Layout::new().i16(4).i64(1).i32(-1).raw(&[1]).i64(2).raw(&[1, 9, 3, 1, 2, 3]).0;
        let v = decode_offset_commit_value(&v4).unwrap();
        assert_eq!((v.offset, v.metadata.as_str(), v.commit_timestamp), (1, "", 2));
    }

    fn text() -> impl Strategy<Value = String> {
        "\\PC{0,12}"
    }

    fn offset_value() -> impl Strategy<Value = OffsetCommitValue> {
        (any::<i64>(), any::<i32>(), text(), any::<i64>(), any::<i64>()).prop_map(|(o, e, m, c, x)| OffsetCommitValue {
            offset: o,
            leader_epoch: e,
            metadata: m,
            commit_timestamp: c,
            expire_timestamp: x,
        })
    }

    fn member() -> impl Strategy<Value = MemberMetadata> {
        (
            text(),
            proptest::option::of(text()),
            text(),
            text(),
            any::<i32>(),
            any::<i32>(),
            proptest::collection::vec(any::<u8>(), 0..20),
            proptest::collection::vec(any::<u8>(), 0..20),
        )
            .prop_map(
                |(member_id, group_instance_id, client_id, client_host, rt, st, subscription, assignment)| {
                    MemberMetadata {
                        member_id,
                        group_instance_id,
                        client_id,
                        client_host,
                        rebalance_timeout: rt,
                        session_timeout: st,
                        subscription,
                        assignment,
                    }
                },
            )
    }

    fn group_value() -> impl Strategy<Value = GroupMetadataValue> {
        (
            text(),
            any::<i32>(),
            proptest::option::of(text()),
            proptest::option::of(text()),
            any::<i64>(),
            proptest::collection::vec(member(), 0..4),
        )
            .prop_map(|(protocol_type, generation, protocol, leader, ts, members)| GroupMetadataValue {
                protocol_type,
                generation,
                protocol,
                leader,
                current_state_timestamp: ts,
                members,
            })
    }

    fn txn_value() -> impl Strategy<Value = TransactionLogValue> {
        (
            (any::<i64>(), any::<i64>(), any::<i64>(), any::<i16>(), any::<i32>(), any::<i8>()),
            proptest::option::of(proptest::collection::vec(
                (text(), proptest::collection::vec(any::<i32>(), 0..5))
                    .prop_map(|(topic, partition_ids)| TxnPartitions { topic, partition_ids }),
                0..4,
            )),
            (any::<i64>(), any::<i64>(), any::<i16>()),
        )
            .prop_map(|((pid, prev, next, epoch, timeout, status), parts, (upd, start, ctv))| {
                TransactionLogValue {
                    producer_id: pid,
                    previous_producer_id: prev,
                    next_producer_id: next,
                    producer_epoch: epoch,
                    transaction_timeout_ms: timeout,
                    transaction_status: status,
                    transaction_partitions: parts,
                    transaction_last_update_timestamp_ms: upd,
                    transaction_start_timestamp_ms: start,
                    client_transaction_version: ctv,
                }
            })
    }

    proptest! {
        #[test]
        fn offset_keys_round_trip(group in text(), topic in text(), partition in any::<i32>()) {
            let k = encode_offset_commit_key(&group, &topic, partition);
            prop_assert_eq!(decode_offsets_key(&k).unwrap(), OffsetsKey::OffsetCommit { group: group.clone(), topic, partition });
            prop_assert_eq!(decode_offsets_key(&encode_group_metadata_key(&group)).unwrap(), OffsetsKey::GroupMetadata { group: group.clone() });
            prop_assert_eq!(decode_txn_key(&encode_txn_key(&group)).unwrap(), Some(group));
        }

        #[test]
        fn offset_values_round_trip_at_every_version(v in offset_value(), version in 0i16..=4) {
            let back = decode_offset_commit_value(&encode_offset_commit_value_as(&v, version)).unwrap();
            let expected = OffsetCommitValue {
                leader_epoch: if version >= 3 { v.leader_epoch } else { -1 },
                expire_timestamp: if version == 1 { v.expire_timestamp } else { -1 },
                ..v
            };
            prop_assert_eq!(back, expected);
        }

        #[test]
        fn group_values_round_trip_at_every_version(v in group_value(), version in 0i16..=4) {
            let back = decode_group_metadata_value(&encode_group_metadata_value_as(&v, version)).unwrap();
            let mut expected = v;
            if version < 2 {
                expected.current_state_timestamp = -1;
            }
            for m in &mut expected.members {
                if version < 3 {
                    m.group_instance_id = None;
                }
                if version < 1 {
                    m.rebalance_timeout = -1;
                }
            }
            prop_assert_eq!(back, expected);
        }

        #[test]
        fn txn_values_round_trip(v in txn_value(), version in 0i16..=1) {
            let back = decode_txn_value(&encode_txn_value_as(&v, version)).unwrap();
            let expected = if version == 0 {
                TransactionLogValue { previous_producer_id: -1, next_producer_id: -1, client_transaction_version: 0, ..v }
            } else {
                v
            };
            prop_assert_eq!(back, expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_offsets_key(&bytes);
            let _ = decode_offset_commit_value(&bytes);
            let _ = decode_group_metadata_value(&bytes);
            let _ = decode_txn_key(&bytes);
            let _ = decode_txn_value(&bytes);
        }

        #[test]
        fn every_truncation_is_an_error_not_a_panic(v in group_value(), t in txn_value(), cut in 0usize..400) {
            let g = encode_group_metadata_value_as(&v, 4);
            if cut < g.len() {
                prop_assert!(decode_group_metadata_value(&g[..cut]).is_err());
            }
            let x = encode_txn_value_as(&t, 1);
            if cut < x.len() {
                prop_assert!(decode_txn_value(&x[..cut]).is_err());
            }
        }
    }
}
