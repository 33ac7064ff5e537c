//! The one error type of portswap: a type per area (what failed, with the data a message and
//! a test need), and the one mapping from an error to the documented exit code.

use std::io;
use std::path::{Path, PathBuf};

mod config;
mod nginx;
mod probe;
mod refusal;
mod state;
mod supervisor;
mod switch;

pub use config::{ConfigError, Exposure};
pub use nginx::{NftError, NginxError};
pub use probe::{Malformed, ProbeFailure};
pub use refusal::{Refusal, UsageError};
pub use state::{FileError, StateError};
pub use supervisor::{AppGone, GoneHow, NotServing, ProbeError, SupervisorError, Written};
pub use switch::{FrontOutcome, FrontProblem, GoneOutcome, SwitchError, WatchOutcome};

/// What the operator must do about an error; it decides the hook's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The operation was carried out and failed (unhealthy app, rejected nginx config, ...).
    Failed,
    /// Bad flags, configuration or state on disk: fix the input named in the message.
    BadInput,
    /// Another hook holds the lock: retry.
    Busy,
    /// Refused to act because acting could harm the live app or a foreign process.
    Refused,
}

impl Kind {
    /// The exit code documented in README: 1 failed, 2 bad input, 3 busy, 4 refused.
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Failed => 1,
            Kind::BadInput => 2,
            Kind::Busy => 3,
            Kind::Refused => 4,
        }
    }
}

/// An error a portswap binary ends with: its message (`Display`) and its kind.
pub trait Failure: std::fmt::Display {
    /// What the operator must do about it, and so the exit code.
    fn kind(&self) -> Kind;
}

impl Failure for Error {
    fn kind(&self) -> Kind {
        Error::kind(self)
    }
}

/// Everything that can go wrong in a hook.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command-line flags.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// A configuration file that cannot be used: names the file, the key and the fix.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Refused to act because acting could harm the live app or a foreign process.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Running the app: staging, its account, its processes, its units.
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// nginx: its pid file, config test, reload and include.
    #[error(transparent)]
    Nginx(#[from] NginxError),
    /// The nftables rule.
    #[error(transparent)]
    Nftables(#[from] NftError),
    /// The `switch` hook around the switcher: checks, records, restore, the watch.
    #[error(transparent)]
    Switch(#[from] SwitchError),
    /// Probing the new version's health.
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// A file portswap reads or writes that is not what it must be.
    #[error(transparent)]
    File(#[from] FileError),
    /// The state directory: the lock and the records.
    #[error(transparent)]
    State(#[from] StateError),
    /// A system call on a file failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. `cannot read`.
        action: String,
        /// On which file or directory.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
}

/// Shorthand for results of portswap operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the action and the path it concerns.
    pub fn io(action: &str, path: &Path, source: io::Error) -> Error {
        Error::Io {
            action: action.to_string(),
            path: path.to_path_buf(),
            source,
        }
    }

    /// What the operator must do about it.
    pub fn kind(&self) -> Kind {
        match self {
            Error::Io { .. } | Error::Supervisor(_) | Error::Probe(_) => Kind::Failed,
            Error::Usage(_) | Error::Config(_) | Error::File(_) => Kind::BadInput,
            Error::State(e) => e.kind(),
            Error::Nginx(e) => e.kind(),
            Error::Nftables(e) => e.kind(),
            Error::Switch(e) => e.kind(),
            Error::Refused(_) => Kind::Refused,
        }
    }

    /// The process exit code documented in README: 1 failed, 2 bad input, 3 busy, 4 refused.
    pub fn exit_code(&self) -> u8 {
        self.kind().exit_code()
    }
}

#[cfg(test)]
mod tests {
    /// Every error says what failed with data of its own: no variant is only a `String`.
    #[test]
    fn no_variant_is_a_bare_string() {
        for (file, text) in [
            ("mod.rs", include_str!("mod.rs")),
            ("config.rs", include_str!("config.rs")),
            ("nginx.rs", include_str!("nginx.rs")),
            ("probe.rs", include_str!("probe.rs")),
            ("refusal.rs", include_str!("refusal.rs")),
            ("state.rs", include_str!("state.rs")),
            ("supervisor.rs", include_str!("supervisor.rs")),
            ("switch.rs", include_str!("switch.rs")),
        ] {
            for (i, line) in text.lines().enumerate() {
                let bare = line
                    .trim_start()
                    .split_once("(String)")
                    .is_some_and(|(name, _)| {
                        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric())
                    });
                assert!(!bare, "error/{file}:{}: {line}", i + 1);
            }
        }
    }
}
