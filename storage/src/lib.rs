//! Fjord's storage engine: one `PartitionLog` per partition, a directory of
//! segments holding Kafka v2 record batches exactly as producers sent them.

pub mod batch;
pub mod compact;
pub mod disk;
pub mod durability;
pub mod epoch;
pub mod error;
pub mod index;
pub mod lock;
pub mod log;
pub mod partitioner;
pub mod producer;
pub mod raftindex;
pub mod records;
pub mod remote;
pub mod segment;

pub use batch::{BatchHeader, TimestampType};
pub use error::{LogError, RecordError, RecordErrorKind, Result};
pub use lock::DataDirLock;
pub use log::{
    AppendInfo, CheckedProduce, LogConfig, OpenOptions, PartitionLog, ProduceVerdict, RaftEntry, ReadResult,
    RecoveryReport,
};
pub use raftindex::EntrySpan;
pub use segment::CleanState;
