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
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, LogError>;
