use thiserror::Error;

#[derive(Debug, Error)]
pub enum TieringError {
    /// The bucket refused the credentials or the request's signature: retrying will not help
    /// until the configuration is fixed.
    #[error("remote storage refused access ({op} {key}): {msg}; check the AWS credentials (environment or profile) and the bucket's policy")]
    Denied { op: &'static str, key: String, msg: String },
    /// The object (or bucket) does not exist.
    #[error("remote storage has no {key} ({op}): {msg}")]
    NotFound { op: &'static str, key: String, msg: String },
    /// Unreachable, slow or failing: worth retrying.
    #[error("remote storage failed ({op} {key}): {msg}")]
    Unavailable { op: &'static str, key: String, msg: String },
    #[error("remote object {key} is corrupt: {why}")]
    Corrupt { key: String, why: String },
    #[error("remote storage configuration: {0}")]
    Config(String),
    #[error("local I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl TieringError {
    /// Whether a retry may succeed without a change of configuration.
    pub fn is_retriable(&self) -> bool {
        matches!(self, TieringError::Unavailable { .. } | TieringError::Io(_))
    }
}

pub type Result<T> = std::result::Result<T, TieringError>;
