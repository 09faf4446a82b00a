//! Errors of the partition log, each mapping to one Kafka error code.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LogError {
    /// A batch failed validation (CORRUPT_MESSAGE).
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    /// A batch is over `max.message.bytes` (MESSAGE_TOO_LARGE).
    #[error("record batch of {size} bytes exceeds the limit of {max}")]
    RecordTooLarge { size: usize, max: usize },
    /// A read or delete outside [log start, log end] (OFFSET_OUT_OF_RANGE).
    #[error("offset {offset} is outside [{start}, {end}]")]
    OffsetOutOfRange { offset: i64, start: i64, end: i64 },
    /// A batch's sequence does not follow the producer's last one
    /// (OUT_OF_ORDER_SEQUENCE_NUMBER).
    #[error("producer {producer_id}: expected sequence {expected}, got {got}")]
    OutOfOrderSequence { producer_id: i64, expected: i32, got: i32 },
    /// A batch from a fenced producer epoch (INVALID_PRODUCER_EPOCH).
    #[error("producer {producer_id}: epoch {epoch} is older than the current {current}")]
    InvalidProducerEpoch { producer_id: i64, epoch: i16, current: i16 },
    /// A transaction marker from a coordinator older than the one that last wrote a marker for
    /// this producer here (TRANSACTION_COORDINATOR_FENCED): a deposed coordinator's late marker,
    /// which could otherwise end a later transaction of the same producer epoch.
    #[error("producer {producer_id}: marker from coordinator epoch {coordinator_epoch}, older than {current}")]
    CoordinatorFenced { producer_id: i64, coordinator_epoch: i32, current: i32 },
    /// A non-zero sequence from a producer with no state (UNKNOWN_PRODUCER_ID).
    #[error("producer {0} has no state on this partition")]
    UnknownProducerId(i64),
    /// A well-formed batch this log cannot take as it is (INVALID_RECORD).
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    /// A compressed batch that expands past the bound derived from
    /// `max.message.bytes` (MESSAGE_TOO_LARGE): a decompression bomb, or a
    /// batch far larger than the topic allows.
    #[error("record batch expands beyond {limit} bytes when decompressed")]
    DecompressedTooLarge { limit: usize },
    /// Some records of a batch break a rule of the topic (KIP-467): the
    /// whole batch is refused and the offending records are listed.
    #[error("{message}")]
    RecordErrors { kind: RecordErrorKind, message: String, records: Vec<RecordError> },
    /// The log was deleted (its topic deleted) while a write was on its way
    /// (UNKNOWN_TOPIC_OR_PARTITION): nothing is written into a directory
    /// that may already belong to a topic recreated under the same name.
    #[error("the log was deleted")]
    Deleted,
    /// A replicated batch does not start at this replica's log end: the
    /// replica diverged from its leader (or entries arrived out of order).
    /// Nothing is written; replication truncates and fetches again.
    #[error("replicated batch starts at offset {offset} but the log ends at {log_end}")]
    UnexpectedAppendOffset { offset: i64, log_end: i64 },
    /// Another process (or another open in this one) holds the data dir.
    #[error("data dir {} is in use by another process (its .lock is held); stop that broker or use another --data-dir", .0.display())]
    DataDirLocked(std::path::PathBuf),
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Which rule the records of a `RecordErrors` broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordErrorKind {
    /// A keyless record on a compacted topic (INVALID_RECORD).
    InvalidRecord,
    /// A CreateTime outside `message.timestamp.{before,after}.max.ms`
    /// (INVALID_TIMESTAMP).
    InvalidTimestamp,
}

/// One refused record: its index in the partition's produce data and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub batch_index: i32,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, LogError>;
