//! Producer state of a partition: per producer id, its epoch, the last five
//! batches (sequence range → offsets), so a retried batch is answered with
//! its original offsets instead of being written twice, and the first offset
//! of its open transaction, which bounds the last stable offset.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::batch::{BatchHeader, Marker};
use crate::error::{LogError, Result};

/// How many recent batches per producer are remembered (Kafka keeps five,
/// matching max.in.flight.requests.per.connection for idempotence).
const CACHED_BATCHES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct CachedBatch {
    first_seq: i32,
    last_seq: i32,
    first_offset: i64,
    last_offset: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<CachedBatch>,
    /// Max timestamp of the producer's newest batch (for expiration).
    last_timestamp: i64,
    /// First offset of the producer's open transaction on this partition.
    #[serde(default)]
    txn_first_offset: Option<i64>,
    /// The coordinator epoch of the last marker written for this producer (Kafka's
    /// `coordinatorEpoch`); markers from older coordinators are refused.
    #[serde(default)]
    coordinator_epoch: i32,
}

/// A transaction that ended in an abort: consumers reading committed data
/// drop the producer's records from `first_offset` up to the marker at
/// `last_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
    /// The last stable offset once this abort was written.
    pub last_stable_offset: i64,
}

/// What to do with an incoming batch from an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// New and in order: write it.
    Append,
    /// Already written (a retry): answer with these offsets.
    Duplicate { base_offset: i64, last_offset: i64 },
}

/// The sequence of the last record: base + delta, wrapping past i32::MAX
/// to 0 as Kafka's producers do.
pub fn last_sequence(base: i32, delta: i32) -> i32 {
    if base > i32::MAX - delta {
        delta - (i32::MAX - base) - 1
    } else {
        base + delta
    }
}

fn next_sequence(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
    /// Open transactions by first offset (→ producer id).
    #[serde(skip)]
    ongoing: BTreeMap<i64, i64>,
}

impl ProducerStates {
    /// Checks a batch (with its producer id set) against the producer's state.
    pub fn check(&self, h: &BatchHeader) -> Result<SequenceCheck> {
        let last_seq = last_sequence(h.base_sequence, h.last_offset_delta);
        if h.is_transactional() && h.base_sequence < 0 {
            return Err(LogError::InvalidRecord("a transactional batch needs a sequence number".into()));
        }
        let Some(entry) = self.producers.get(&h.producer_id) else {
            // A producer we have no state for must start at sequence 0;
            // anything else means its state is gone (e.g. its batches aged out).
            return if h.base_sequence == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(LogError::UnknownProducerId(h.producer_id))
            };
        };
        if h.producer_epoch < entry.epoch {
            return Err(LogError::InvalidProducerEpoch {
                producer_id: h.producer_id,
                epoch: h.producer_epoch,
                current: entry.epoch,
            });
        }
        if h.producer_epoch > entry.epoch {
            return if h.base_sequence == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(LogError::OutOfOrderSequence { producer_id: h.producer_id, expected: 0, got: h.base_sequence })
            };
        }
        if let Some(b) = entry.batches.iter().find(|b| b.first_seq == h.base_sequence && b.last_seq == last_seq) {
            return Ok(SequenceCheck::Duplicate { base_offset: b.first_offset, last_offset: b.last_offset });
        }
        let expected = entry.batches.back().map(|b| next_sequence(b.last_seq)).unwrap_or(0);
        if h.base_sequence != expected {
            return Err(LogError::OutOfOrderSequence { producer_id: h.producer_id, expected, got: h.base_sequence });
        }
        Ok(SequenceCheck::Append)
    }

    /// Checks that a coordinator-written batch (a marker or a transactional
    /// offset commit) does not come from an epoch older than the producer's.
    pub fn check_epoch(&self, producer_id: i64, epoch: i16) -> Result<()> {
        match self.producers.get(&producer_id) {
            Some(e) if epoch < e.epoch => Err(LogError::InvalidProducerEpoch { producer_id, epoch, current: e.epoch }),
            _ => Ok(()),
        }
    }

    /// Checks a marker against the coordinator epoch of the last one written for its producer.
    pub fn check_marker(&self, producer_id: i64, marker: Marker) -> Result<()> {
        match self.producers.get(&producer_id) {
            Some(e) if marker.coordinator_epoch < e.coordinator_epoch => Err(LogError::CoordinatorFenced {
                producer_id,
                coordinator_epoch: marker.coordinator_epoch,
                current: e.coordinator_epoch,
            }),
            _ => Ok(()),
        }
    }

    /// Records a batch that is now in the log (offsets assigned). For a
    /// commit or abort marker, returns the transaction it ended when that
    /// was an abort.
    pub fn update(&mut self, h: &BatchHeader, marker: Option<Marker>) -> Option<AbortedTxn> {
        if h.producer_id < 0 || (h.is_control() && marker.is_none()) {
            return None;
        }
        let entry = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        entry.last_timestamp = entry.last_timestamp.max(h.max_timestamp);
        if let Some(Marker { commit, coordinator_epoch }) = marker {
            entry.coordinator_epoch = entry.coordinator_epoch.max(coordinator_epoch);
            let first = entry.txn_first_offset.take()?;
            self.ongoing.remove(&first);
            let lso = self.ongoing.keys().next().copied().unwrap_or(h.base_offset + 1);
            return (!commit).then_some(AbortedTxn {
                producer_id: h.producer_id,
                first_offset: first,
                last_offset: h.base_offset,
                last_stable_offset: lso,
            });
        }
        if h.is_transactional() && entry.txn_first_offset.is_none() {
            entry.txn_first_offset = Some(h.base_offset);
            self.ongoing.insert(h.base_offset, h.producer_id);
        }
        if h.base_sequence < 0 {
            // Coordinator-written batches carry no sequence to dedup.
            return None;
        }
        entry.batches.push_back(CachedBatch {
            first_seq: h.base_sequence,
            last_seq: last_sequence(h.base_sequence, h.last_offset_delta),
            first_offset: h.base_offset,
            last_offset: h.last_offset(),
        });
        while entry.batches.len() > CACHED_BATCHES {
            entry.batches.pop_front();
        }
        None
    }

    /// The first offset of the oldest open transaction: the log is stable
    /// below it.
    /// Per producer, the last offset of its newest batch: compaction keeps that batch, or a
    /// replica rebuilding state from the log would forget the producer's last sequence.
    pub fn last_offsets(&self) -> std::collections::HashMap<i64, i64> {
        self.producers.iter().filter_map(|(id, p)| Some((*id, p.batches.back()?.last_offset))).collect()
    }

    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.ongoing.keys().next().copied()
    }

    /// Producer ids with an open transaction, with its first offset.
    pub fn open_transactions(&self) -> Vec<(i64, i64)> {
        self.ongoing.iter().map(|(first, pid)| (*pid, *first)).collect()
    }

    /// Forgets producers silent for `expiration_ms` (Kafka's
    /// producer.id.expiration.ms); returns how many went. A producer with
    /// an open transaction stays until the transaction ends.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers.retain(|_, e| e.txn_first_offset.is_some() || now_ms - e.last_timestamp < expiration_ms);
        before - self.producers.len()
    }

    /// Serialized form for a snapshot file.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Option<ProducerStates> {
        let mut s: ProducerStates = serde_json::from_slice(bytes).ok()?;
        s.ongoing = s.producers.iter().filter_map(|(pid, e)| e.txn_first_offset.map(|f| (f, *pid))).collect();
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, n: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: n - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            records_count: n,
        }
    }

    impl ProducerStates {
        fn update_data(&mut self, h: &BatchHeader) {
            self.update(h, None);
        }
    }

    #[test]
    fn transactions_bound_the_stable_offset_and_aborts_are_reported() {
        let mut s = ProducerStates::default();
        let mut t1 = header(1, 0, 0, 2, 10);
        t1.attributes = 0x10;
        s.update_data(&t1);
        let mut t2 = header(2, 0, 0, 1, 12);
        t2.attributes = 0x10;
        s.update_data(&t2);
        let mut t1b = header(1, 0, 2, 1, 13);
        t1b.attributes = 0x10;
        s.update_data(&t1b);
        assert_eq!(s.first_unstable_offset(), Some(10));
        let mut marker = header(1, 0, -1, 1, 14);
        marker.attributes = 0x30;
        assert_eq!(
            s.update(&marker, Some(Marker { commit: true, coordinator_epoch: 0 })),
            None,
            "a commit is not an abort"
        );
        assert_eq!(s.first_unstable_offset(), Some(12));
        let mut abort = header(2, 0, -1, 1, 15);
        abort.attributes = 0x30;
        assert_eq!(
            s.update(&abort, Some(Marker { commit: false, coordinator_epoch: 0 })),
            Some(AbortedTxn { producer_id: 2, first_offset: 12, last_offset: 15, last_stable_offset: 16 })
        );
        assert_eq!(s.first_unstable_offset(), None);
        // A snapshot round trip keeps open transactions.
        s.update_data(&t1);
        let back = ProducerStates::from_json(&s.to_json()).unwrap();
        assert_eq!(back.first_unstable_offset(), Some(10));
        assert!(back.check_epoch(1, -1).is_err());
    }

    #[test]
    fn in_order_duplicates_gaps_and_epochs() {
        let mut s = ProducerStates::default();
        assert_eq!(s.check(&header(7, 0, 0, 3, 0)).unwrap(), SequenceCheck::Append);
        s.update_data(&header(7, 0, 0, 3, 0));
        assert_eq!(s.check(&header(7, 0, 3, 2, 99)).unwrap(), SequenceCheck::Append);
        s.update_data(&header(7, 0, 3, 2, 3));
        // A retry of the first batch gets its original offsets.
        assert_eq!(
            s.check(&header(7, 0, 0, 3, 99)).unwrap(),
            SequenceCheck::Duplicate { base_offset: 0, last_offset: 2 }
        );
        // A gap is out of order.
        assert!(matches!(s.check(&header(7, 0, 9, 1, 99)), Err(LogError::OutOfOrderSequence { expected: 5, .. })));
        // An older epoch is fenced; a newer one must restart at 0.
        assert!(matches!(s.check(&header(7, -1, 5, 1, 99)), Err(LogError::InvalidProducerEpoch { .. })));
        assert!(s.check(&header(7, 1, 5, 1, 99)).is_err());
        assert_eq!(s.check(&header(7, 1, 0, 1, 99)).unwrap(), SequenceCheck::Append);
        // Unknown producers must start at 0.
        assert!(matches!(s.check(&header(8, 0, 4, 1, 99)), Err(LogError::UnknownProducerId(8))));
    }

    #[test]
    fn silent_producers_expire() {
        let mut s = ProducerStates::default();
        let mut old = header(1, 0, 0, 1, 0);
        old.max_timestamp = 1_000;
        let mut recent = header(2, 0, 0, 1, 1);
        recent.max_timestamp = 90_000;
        s.update_data(&old);
        s.update_data(&recent);
        assert_eq!(s.expire(100_000, 50_000), 1);
        assert!(matches!(s.check(&header(1, 0, 1, 1, 2)), Err(LogError::UnknownProducerId(1))));
        assert_eq!(s.check(&header(2, 0, 1, 1, 2)).unwrap(), SequenceCheck::Append);
    }

    #[test]
    fn only_five_batches_are_remembered_and_sequences_wrap() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            s.update_data(&header(1, 0, i, 1, i as i64));
        }
        assert!(s.check(&header(1, 0, 1, 1, 0)).is_err(), "too old to recognise");
        assert_eq!(
            s.check(&header(1, 0, 6, 1, 0)).unwrap(),
            SequenceCheck::Duplicate { base_offset: 6, last_offset: 6 }
        );
        assert_eq!(last_sequence(i32::MAX - 1, 3), 1);
        let mut w = ProducerStates::default();
        w.update_data(&header(2, 0, i32::MAX - 1, 2, 0));
        assert_eq!(w.check(&header(2, 0, 0, 1, 0)).unwrap(), SequenceCheck::Append);
    }
}
