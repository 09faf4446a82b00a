//! Raft entries as the batches a partition log stores: a normal entry is the producer's batches
//! with the log's offsets and the entry's term as partitionLeaderEpoch; Raft's own entries are
//! control batches clients skip (blank = LEADER_CHANGE, membership = a Fjord-private type with
//! the membership as JSON). Encoding is deterministic, so every replica stores the same bytes.

use std::io;

use bytes::Bytes;
use fjord_storage::batch::{self, BatchHeader, CONTROL_LEADER_CHANGE, HEADER_SIZE};
use fjord_storage::remote::RemoteChange;
use fjord_storage::RaftEntry;
use openraft::type_config::alias::{EntryOf, LogIdOf};
use openraft::EntryPayload;

use crate::types::{BatchData, TypeConfig, MAX_TERM};

/// Control type of a membership entry: outside Kafka's range (0..=6), so clients ignore it.
pub const CONTROL_MEMBERSHIP: i16 = 0x4601;

/// Control type of a log-start entry (DeleteRecords through Raft): its value is the new log
/// start offset, 8 bytes big-endian, which every replica takes when it applies the entry.
pub const CONTROL_LOG_START: i16 = 0x4602;

/// The batch a leader proposes to move the partition's log start to `offset`.
pub fn log_start_batch(offset: i64) -> Vec<u8> {
    batch::build_control(CONTROL_LOG_START, &offset.to_be_bytes())
}

/// The log start a stored entry's batch moves the partition to, if it is a log-start entry.
pub fn log_start_of(data: &[u8]) -> Option<i64> {
    let single = BatchHeader::parse(data).is_ok_and(|h| h.total_size() == data.len());
    match batch::control_record(data).filter(|_| single) {
        Some((CONTROL_LOG_START, v)) => Some(i64::from_be_bytes(v.try_into().ok()?)),
        _ => None,
    }
}

/// Control type of a remote storage entry (tiered storage): its value is a `RemoteChange` as
/// JSON, which every replica applies to its remote manifest when the entry commits.
pub const CONTROL_REMOTE: i16 = 0x4604;

/// The batch a leader proposes to record a change of what is in remote storage.
pub fn remote_change_batch(change: &RemoteChange) -> Vec<u8> {
    batch::build_control(CONTROL_REMOTE, &serde_json::to_vec(change).unwrap_or_default())
}

/// The remote storage change a stored entry's batch records, if it is one; an error if it is
/// one this version cannot read (applying past it would leave this replica's manifest behind
/// the others').
pub fn remote_change_of(data: &[u8]) -> Option<Result<RemoteChange, String>> {
    let single = BatchHeader::parse(data).is_ok_and(|h| h.total_size() == data.len());
    match batch::control_record(data).filter(|_| single) {
        Some((CONTROL_REMOTE, v)) => {
            Some(serde_json::from_slice(v).map_err(|e| format!("unreadable remote storage entry: {e}")))
        }
        _ => None,
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The partition leader epoch `entry`'s batches are stored with: its term.
pub fn epoch_of(entry: &EntryOf<TypeConfig>) -> io::Result<i32> {
    let term = entry.log_id.committed_leader_id().term;
    i32::try_from(term)
        .ok()
        .filter(|_| term <= MAX_TERM)
        .ok_or_else(|| invalid(format!("term {term} does not fit a partition leader epoch")))
}

/// The bytes `entry` is stored as when the log ends at `base_offset`. (A normal entry is
/// written without this copy, by `PartitionLog::append_raft_entry_assigning`, to the same
/// bytes.)
pub fn encode(entry: &EntryOf<TypeConfig>, base_offset: i64) -> io::Result<Vec<u8>> {
    let epoch = epoch_of(entry)?;
    let mut data = match &entry.payload {
        EntryPayload::Normal(BatchData(b)) => b.to_vec(),
        EntryPayload::Blank => batch::build_control(CONTROL_LEADER_CHANGE, b""),
        EntryPayload::Membership(m) => {
            let json = serde_json::to_vec(m).map_err(|e| invalid(format!("membership: {e}")))?;
            batch::build_control(CONTROL_MEMBERSHIP, &json)
        }
    };
    // Offsets run on from the log end batch by batch; only the header walk is needed here, the
    // log validates each batch (CRC included) when it takes the entry.
    let mut pos = 0;
    let mut next = base_offset;
    while pos < data.len() {
        let h = BatchHeader::parse(&data[pos..]).map_err(|e| invalid(e.to_string()))?;
        let end = pos + h.total_size();
        if h.batch_length < (HEADER_SIZE - batch::LOG_OVERHEAD) as i32 || end > data.len() || h.last_offset_delta < 0 {
            return Err(invalid(format!("entry {} holds a malformed batch", entry.log_id.index())));
        }
        // A batch already in its stored form (read back from a leader's log: its epoch is set,
        // where a producer's is -1) names the offset the leader gave it; another one here means
        // this log has diverged from the leader's, and writing it would misplace Kafka offsets.
        if h.partition_leader_epoch >= 0 && h.base_offset != next {
            return Err(io::Error::other(format!(
                "entry {} arrives at offset {} but this log ends at {next}: the logs diverged",
                entry.log_id.index(),
                h.base_offset
            )));
        }
        batch::patch(&mut data[pos..end], next, epoch, None);
        next += i64::from(h.last_offset_delta) + 1;
        pos = end;
    }
    if data.is_empty() {
        return Err(invalid(format!("entry {} holds no batch", entry.log_id.index())));
    }
    Ok(data)
}

/// The Raft entry a stored one is: its control batch decoded back, or its batches as a normal
/// entry.
pub fn decode(stored: RaftEntry) -> io::Result<EntryOf<TypeConfig>> {
    let term = u64::try_from(stored.term)
        .map_err(|_| invalid(format!("entry {} has epoch {}", stored.span.index, stored.term)))?;
    let log_id = LogIdOf::<TypeConfig>::new_term_index(term, stored.span.index);
    let single = BatchHeader::parse(&stored.data).is_ok_and(|h| h.total_size() == stored.data.len());
    let payload = match batch::control_record(&stored.data).filter(|_| single) {
        Some((CONTROL_LEADER_CHANGE, _)) => EntryPayload::Blank,
        Some((CONTROL_MEMBERSHIP, json)) => EntryPayload::Membership(
            serde_json::from_slice(json)
                .map_err(|e| invalid(format!("entry {}: membership: {e}", stored.span.index)))?,
        ),
        _ => EntryPayload::Normal(BatchData(stored.data)),
    };
    Ok(EntryOf::<TypeConfig> { log_id, payload })
}

/// The LogAppendTime the entry's batches carry, or -1.
pub fn log_append_time(data: &Bytes) -> i64 {
    BatchHeader::parse(data).ok().filter(|h| h.is_log_append_time()).map_or(-1, |h| h.max_timestamp)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use fjord_storage::{EntrySpan, LogError};
    use openraft::Membership;

    use super::*;

    fn stored(index: u64, term: i32, data: Vec<u8>) -> RaftEntry {
        let h = batch::validate(&data).unwrap();
        let span = EntrySpan {
            index,
            base_offset: h.base_offset,
            next_offset: h.last_offset() + 1,
            start_pos: 0,
            end_pos: data.len() as u64,
        };
        RaftEntry { span, term, data: Bytes::from(data) }
    }

    fn roundtrip(payload: EntryPayload<BatchData, crate::NodeId, openraft::BasicNode>) {
        let entry = EntryOf::<TypeConfig> { log_id: LogIdOf::<TypeConfig>::new_term_index(7, 3), payload };
        let data = encode(&entry, 40).unwrap();
        let h = batch::validate(&data).unwrap();
        assert_eq!((h.base_offset, h.partition_leader_epoch), (40, 7));
        let back = decode(stored(3, 7, data.clone())).unwrap();
        assert_eq!(back, entry.clone().with_stored_payload(&data));
        // What a follower gets back encodes to the same bytes at the same offset.
        assert_eq!(encode(&back, 40).unwrap(), data);
    }

    trait Stored {
        fn with_stored_payload(self, data: &[u8]) -> Self;
    }
    impl Stored for EntryOf<TypeConfig> {
        /// A normal entry comes back as stored (offsets and epoch patched in).
        fn with_stored_payload(mut self, data: &[u8]) -> Self {
            if let EntryPayload::Normal(_) = self.payload {
                self.payload = EntryPayload::Normal(BatchData(Bytes::copy_from_slice(data)));
            }
            self
        }
    }

    #[test]
    fn each_kind_of_entry_survives_the_log() {
        roundtrip(EntryPayload::Blank);
        let m = Membership::new_with_defaults(vec![BTreeSet::from([1, 2, 3])], [4]);
        roundtrip(EntryPayload::Membership(m));
        roundtrip(EntryPayload::Normal(BatchData(Bytes::from(batch::build_batch(0, 5, &[(Some(b"k"), Some(b"v"))])))));
    }

    #[test]
    fn several_batches_get_consecutive_offsets_and_terms_must_fit_an_epoch() {
        let mut payload = batch::build_batch(0, 5, &[(None, Some(b"a")), (None, Some(b"b"))]);
        payload.extend(batch::build_batch(0, 6, &[(None, Some(b"c"))]));
        let entry = EntryOf::<TypeConfig> {
            log_id: LogIdOf::<TypeConfig>::new_term_index(2, 0),
            payload: EntryPayload::Normal(BatchData(Bytes::from(payload))),
        };
        let data = encode(&entry, 10).unwrap();
        let batches = batch::split_stored(&data).unwrap();
        assert_eq!(batches.iter().map(|(_, h)| h.base_offset).collect::<Vec<_>>(), vec![10, 12]);
        let big = EntryOf::<TypeConfig> { log_id: LogIdOf::<TypeConfig>::new_term_index(MAX_TERM + 1, 0), ..entry };
        assert!(encode(&big, 0).is_err());
        let junk = EntryOf::<TypeConfig> {
            log_id: LogIdOf::<TypeConfig>::new_term_index(1, 0),
            payload: EntryPayload::Normal(BatchData(Bytes::from_static(&[0; 30]))),
        };
        assert!(encode(&junk, 0).is_err(), "malformed data is an error, not a panic");
    }

    #[test]
    fn a_stored_batch_must_arrive_at_the_offset_it_carries() {
        let entry = EntryOf::<TypeConfig> {
            log_id: LogIdOf::<TypeConfig>::new_term_index(3, 9),
            payload: EntryPayload::Normal(BatchData(Bytes::from(batch::build_batch(0, 5, &[(None, Some(b"a"))])))),
        };
        let stored_at_40 = encode(&entry, 40).unwrap();
        let back = decode(stored(9, 3, stored_at_40.clone())).unwrap();
        assert_eq!(encode(&back, 40).unwrap(), stored_at_40, "at the same log end: the same bytes");
        let err = encode(&back, 41).unwrap_err();
        assert!(err.to_string().contains("diverged"), "{err}");
        assert!(encode(&entry, 41).is_ok(), "a producer's batch (epoch -1) goes wherever the log ends");
    }

    /// What the log's assigning append writes for a normal entry (the path replicas take, with
    /// no copy of the entry) is byte for byte what `encode` makes of it; a stored batch
    /// arriving at another offset than it carries is refused there too.
    #[test]
    fn the_log_writes_a_normal_entry_as_encode_makes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = fjord_storage::OpenOptions { raft: true, ..Default::default() };
        let log = fjord_storage::PartitionLog::open_opts(&tmp.path().join("p-0"), Default::default(), opts).unwrap();
        let blank =
            EntryOf::<TypeConfig> { log_id: LogIdOf::<TypeConfig>::new_term_index(4, 0), payload: EntryPayload::Blank };
        log.append_raft_entry(&encode(&blank, 0).unwrap(), 0, 0).unwrap();
        let mut payload = batch::build_batch(0, 5, &[(None, Some(b"a")), (None, Some(b"b"))]);
        payload.extend(batch::build_batch(0, 6, &[(None, Some(b"c"))]));
        let entry = EntryOf::<TypeConfig> {
            log_id: LogIdOf::<TypeConfig>::new_term_index(4, 1),
            payload: EntryPayload::Normal(BatchData(Bytes::from(payload.clone()))),
        };
        let info = log.append_raft_entry_assigning(&payload, epoch_of(&entry).unwrap(), 1, 0).unwrap();
        assert_eq!((info.base_offset, info.last_offset), (1, 3));
        let written = log.raft_entries(1, 2, 1 << 20).unwrap().remove(0).data;
        assert_eq!(&written[..], &encode(&entry, 1).unwrap()[..]);
        // The same batches in their stored form, sent again at the next index: they name
        // offset 1, the log ends at 4.
        let err = log.append_raft_entry_assigning(&written, 4, 2, 0).unwrap_err();
        assert!(matches!(err, LogError::UnexpectedAppendOffset { offset: 1, log_end: 4 }), "{err}");
        assert_eq!(log.log_end_offset(), 4, "nothing was written");
    }

    #[test]
    fn a_transaction_marker_stays_a_normal_entry() {
        let mut m = batch::build_marker(9, 0, 0, true, 5);
        batch::patch(&mut m, 0, 1, None);
        assert!(matches!(decode(stored(0, 1, m)).unwrap().payload, EntryPayload::Normal(_)));
    }
}
