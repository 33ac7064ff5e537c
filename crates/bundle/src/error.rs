//! What `portswap-bundle` refuses or fails on, and what each means for its exit code.

use std::path::PathBuf;

use portswap::error::Kind;

/// A refusal or failure of `portswap-bundle`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags or arguments.
    #[error("{problem}")]
    Usage {
        /// What is wrong, and where to look.
        problem: String,
    },
    /// An input (appspec, portswap.yml, hooks directory, artifact) that would fail on the
    /// instance or cannot be read.
    #[error("{}: {problem}", path.display())]
    Input {
        /// The file or directory as the user named it.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// An input, named in the message by the reader that found it wrong (the appspec and
    /// ELF readers, an artifact that cannot be read).
    #[error("{problem}")]
    Invalid {
        /// The reader's message.
        problem: String,
    },
    /// A hook whose waits do not fit its appspec timeout.
    #[error(transparent)]
    Budget(Box<Misfit>),
    /// Writing an archive failed.
    #[error("write {}: {problem}", path.display())]
    Write {
        /// The archive.
        path: PathBuf,
        /// The writer's error.
        problem: String,
    },
    /// portswap's own checks (the configuration) or a file operation.
    #[error(transparent)]
    Portswap(#[from] portswap::Error),
}

impl portswap::error::Failure for Error {
    fn kind(&self) -> Kind {
        Error::kind(self)
    }
}

impl Error {
    /// A problem with the input at `path`.
    pub fn input(path: impl Into<PathBuf>, problem: impl std::fmt::Display) -> Error {
        Error::Input {
            path: path.into(),
            problem: problem.to_string(),
        }
    }

    /// What the operator must do about it.
    pub fn kind(&self) -> Kind {
        match self {
            Error::Usage { .. }
            | Error::Input { .. }
            | Error::Invalid { .. }
            | Error::Budget { .. } => Kind::BadInput,
            Error::Write { .. } => Kind::Failed,
            Error::Portswap(e) => e.kind(),
        }
    }

    /// The exit code: 1 failed, 2 bad input.
    pub fn exit_code(&self) -> u8 {
        self.kind().exit_code()
    }
}

/// A hook of the appspec whose waits do not fit its timeout.
#[derive(Debug, thiserror::Error)]
#[error(
    "{location} in {event} may wait {budget}, over its appspec timeout of {timeout}s: the \
     agent would kill it mid-way; raise the timeout in {} or lower the waits in {}",
    appspec.display(),
    config.display()
)]
pub struct Misfit {
    /// The script location, e.g. `hooks/stop`.
    pub location: String,
    /// The lifecycle event.
    pub event: String,
    /// Its waits, itemised.
    pub budget: String,
    /// The appspec timeout, in seconds.
    pub timeout: u64,
    /// The appspec.
    pub appspec: PathBuf,
    /// The configuration.
    pub config: PathBuf,
}

/// Shorthand for results of `portswap-bundle`'s steps.
pub type Result<T, E = Error> = std::result::Result<T, E>;
