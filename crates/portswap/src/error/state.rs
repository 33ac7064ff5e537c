//! Errors of the state directory (lock, records) and of the small files portswap keeps.

use std::path::PathBuf;
use std::time::Duration;

use super::Kind;
use crate::duration;

/// A file portswap reads or writes that is not what it must be (never followed, never
/// trusted).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A symbolic link where portswap expects its own file.
    #[error(
        "{} is a symbolic link, which portswap never follows; fix: replace it with the file itself",
        path.display()
    )]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// Larger than any file portswap writes there.
    #[error("{}: larger than {limit} bytes; not a portswap file", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The most portswap reads of it, in bytes.
        limit: u64,
    },
    /// Something else where a directory belongs.
    #[error("{} is not a directory", path.display())]
    NotDirectory {
        /// The path.
        path: PathBuf,
    },
    /// A symbolic link in a directory other users can change, so it could be swapped.
    #[error(
        "{} is a symbolic link in a directory others can change ({others}); portswap does not \
         follow it; fix: name the real directory",
        path.display()
    )]
    SharedLink {
        /// The link.
        path: PathBuf,
        /// Who besides root and this user can change its directory.
        others: String,
    },
    /// A directory, FIFO, socket or device where a regular file belongs.
    #[error("{} is {what}, where a regular file belongs; fix: remove it", path.display())]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What is there instead (`a FIFO`, `a directory`, `a socket or device`).
        what: &'static str,
    },
}

/// The state directory: its lock and its records.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another hook held the lock for the whole wait.
    #[error(
        "another portswap hook ({holder}) holds {} after waiting {}; retry when it has finished",
        path.display(),
        duration::show(*waited)
    )]
    Busy {
        /// What the lock file says about its holder (`unknown` when it says nothing).
        holder: String,
        /// The lock file.
        path: PathBuf,
        /// How long this hook waited.
        waited: Duration,
    },
    /// The state directory can be changed by other users (exit 2).
    #[error(
        "state directory {}: {who} can change it, so another user could plant records portswap \
         believes; {FIX_SHARED}",
        dir.display()
    )]
    SharedDir {
        /// The state directory.
        dir: PathBuf,
        /// Who besides root and the hooks' user can change it.
        who: String,
    },
    /// `releases/`, `logs/` or `units/` is not a directory only we can change (exit 2).
    #[error("{} {why}; {FIX_SHARED}", path.display())]
    SharedSubdir {
        /// The subdirectory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// No include, yet a switch to a slot was recorded (exit 2).
    #[error(
        "include {} is missing, but {} records port {live} as live (deployment {deployment}); \
         nginx may still send traffic there; fix: restore the include (`{line}`), or delete {} \
         if nothing is live",
        include.display(),
        record.display(),
        record.display()
    )]
    IncludeLost {
        /// The include.
        include: PathBuf,
        /// `switch.yml`.
        record: PathBuf,
        /// The port it records live.
        live: u16,
        /// Its deployment.
        deployment: String,
        /// The include line for that port.
        line: String,
    },
    /// A record that would name no process of the app's own.
    #[error(
        "the app on port {port} has no process of its own to record (pid {pid}); nothing was \
         recorded"
    )]
    NoProcess {
        /// The slot.
        port: u16,
        /// The pid that was to be recorded (≤ 1).
        pid: i32,
    },
    /// A record that does not serialize or parse.
    #[error("{}: {source}", path.display())]
    Record {
        /// The record file.
        path: PathBuf,
        /// The YAML error.
        source: serde_yaml::Error,
    },
}

/// The fix for a state directory others can change.
const FIX_SHARED: &str = "fix: chown it to the user the hooks run as and chmod go-w";

impl StateError {
    /// What the operator must do about it.
    pub fn kind(&self) -> Kind {
        match self {
            StateError::Busy { .. } => Kind::Busy,
            StateError::NoProcess { .. } => Kind::Failed,
            StateError::Record { .. }
            | StateError::SharedDir { .. }
            | StateError::SharedSubdir { .. }
            | StateError::IncludeLost { .. } => Kind::BadInput,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn messages_read_as_before_and_map_to_their_exit_codes() {
        let busy = Error::from(StateError::Busy {
            holder: "switch pid 7".into(),
            path: "/s/lock".into(),
            waited: Duration::from_secs(30),
        });
        assert_eq!(
            busy.to_string(),
            "another portswap hook (switch pid 7) holds /s/lock after waiting 30s; retry when it \
             has finished"
        );
        assert_eq!(busy.exit_code(), 3);
        let link = Error::from(FileError::Symlink {
            path: "/s/switch.yml".into(),
        });
        assert_eq!(
            link.to_string(),
            "/s/switch.yml is a symbolic link, which portswap never follows; fix: replace it \
             with the file itself"
        );
        assert_eq!(link.exit_code(), 2);
        let none = Error::from(StateError::NoProcess { port: 8081, pid: 0 });
        assert_eq!(
            none.to_string(),
            "the app on port 8081 has no process of its own to record (pid 0); nothing was \
             recorded"
        );
        assert_eq!(none.exit_code(), 1);
    }
}
