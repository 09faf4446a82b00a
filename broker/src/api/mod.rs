//! One module per API family; each handler maps a typed request to a typed
//! response.

pub mod acl;
pub mod admin;
pub mod api_versions;
pub mod configs;
pub mod consumer_groups;
pub mod fetch;
pub mod fetch_session;
pub mod groups;
pub mod init_producer_id;
pub mod legacy;
pub mod list_offsets;
pub mod metadata;
pub mod offset_for_leader_epoch;
pub mod produce;
pub mod reassign;
pub mod txn;

use kafka_protocol::error::ResponseError;

/// Runs registry or disk work on the blocking pool. A panic there is a bug:
/// it is carried on to this request's task, which closes the connection
/// (never a request left without an answer).
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking task did not finish: {e}"),
    }
}

/// The wire code of an optional error (0 for none).
pub fn code(e: Option<ResponseError>) -> i16 {
    e.map(|e| e.code()).unwrap_or(0)
}

pub fn storage_code(e: &fjord_storage::LogError) -> ResponseError {
    use fjord_storage::LogError::*;
    match e {
        Corrupt(_) => ResponseError::CorruptMessage,
        RecordTooLarge { .. } => ResponseError::MessageTooLarge,
        OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
        Io(_) | DataDirLocked(_) => ResponseError::KafkaStorageError,
        // Only replication's appends meet this; never a client's request.
        UnexpectedAppendOffset { .. } => ResponseError::KafkaStorageError,
        Deleted => ResponseError::UnknownTopicOrPartition,
        OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        CoordinatorFenced { .. } => ResponseError::TransactionCoordinatorFenced,
        UnknownProducerId(_) => ResponseError::UnknownProducerId,
        InvalidRecord(_) => ResponseError::InvalidRecord,
        DecompressedTooLarge { .. } => ResponseError::MessageTooLarge,
        RecordErrors { kind: fjord_storage::RecordErrorKind::InvalidRecord, .. } => ResponseError::InvalidRecord,
        RecordErrors { kind: fjord_storage::RecordErrorKind::InvalidTimestamp, .. } => ResponseError::InvalidTimestamp,
    }
}
