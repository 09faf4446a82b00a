//! One module per API family; each handler maps a typed request to a typed
//! response.

pub mod admin;
pub mod api_versions;
pub mod configs;
pub mod consumer_groups;
pub mod fetch;
pub mod fetch_session;
pub mod groups;
pub mod init_producer_id;
pub mod list_offsets;
pub mod metadata;
pub mod produce;

use kafka_protocol::error::ResponseError;

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
        Io(_) => ResponseError::KafkaStorageError,
        OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
        InvalidProducerEpoch { .. } => ResponseError::InvalidProducerEpoch,
        UnknownProducerId(_) => ResponseError::UnknownProducerId,
        InvalidRecord(_) => ResponseError::InvalidRecord,
    }
}
