//! The one error type of portswap and how each kind maps to an exit code.

use std::io;
use std::path::Path;

/// Everything that can go wrong in a hook, grouped by what the operator must do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command-line flags.
    #[error("{0}")]
    Usage(String),
    /// A configuration file that cannot be used: names the file, the key and the fix.
    #[error("{0}")]
    Config(String),
    /// State on disk (include file, records) that cannot be trusted.
    #[error("{0}")]
    State(String),
    /// Another hook holds the lock.
    #[error("{0}")]
    Busy(String),
    /// Refused to act because acting could harm the live app or a foreign process.
    #[error("{0}")]
    Refused(String),
    /// The operation was carried out and failed (unhealthy app, rejected nginx config, ...).
    #[error("{0}")]
    Failed(String),
    /// A system call failed; `what` says on which object.
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

/// Shorthand for results of portswap operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the action and the path it concerns.
    pub fn io(action: &str, path: &Path, source: io::Error) -> Error {
        Error::Io {
            what: format!("{action} {}", path.display()),
            source,
        }
    }

    /// The process exit code documented in README: 1 failed, 2 bad input, 3 busy, 4 refused.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Failed(_) | Error::Io { .. } => 1,
            Error::Usage(_) | Error::Config(_) | Error::State(_) => 2,
            Error::Busy(_) => 3,
            Error::Refused(_) => 4,
        }
    }
}
