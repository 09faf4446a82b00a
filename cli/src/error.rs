//! fjordctl's errors and the exit codes scripts can rely on (README, "fjordctl"):
//! 0 done, 1 the operation failed (a broker refused it, a name does not exist),
//! 2 bad arguments or configuration, 3 a broker or the admin API could not be reached.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Failed,
    Usage,
    Unreachable,
}

#[derive(Debug)]
pub struct CliError {
    pub kind: Kind,
    pub message: String,
    /// The Kafka error code of a broker's refusal, for callers that retry some.
    pub code: Option<i16>,
}

impl CliError {
    pub fn failed(message: impl Into<String>) -> CliError {
        CliError { kind: Kind::Failed, message: message.into(), code: None }
    }

    pub fn usage(message: impl Into<String>) -> CliError {
        CliError { kind: Kind::Usage, message: message.into(), code: None }
    }

    pub fn unreachable(message: impl Into<String>) -> CliError {
        CliError { kind: Kind::Unreachable, message: message.into(), code: None }
    }

    pub fn exit_code(&self) -> i32 {
        match self.kind {
            Kind::Failed => 1,
            Kind::Usage => 2,
            Kind::Unreachable => 3,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> CliError {
        CliError::failed(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, CliError>;
