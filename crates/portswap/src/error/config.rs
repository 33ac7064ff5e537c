//! Errors of the configuration file: where it is, whether it can be trusted, what it says.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A configuration that cannot be used; every message names the file (and the key) and the
/// fix. All of them are bad input (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No file at any of the places looked at.
    #[error(
        "no configuration found (looked at {}); pass --config PATH or set {variable}",
        tried.join(", ")
    )]
    NotFound {
        /// The places looked at, in order.
        tried: Vec<String>,
        /// The environment variable that would name it.
        variable: &'static str,
    },
    /// `--config` or the environment variable names a file that does not exist.
    #[error("{}: configuration file named by {named_by} does not exist", path.display())]
    Missing {
        /// The path given.
        path: PathBuf,
        /// `--config` or the variable's name.
        named_by: &'static str,
    },
    /// The file exists but cannot be read.
    #[error("{}: cannot read: {source}{}", path.display(), sudo_hint(source))]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The system's error.
        source: io::Error,
    },
    /// Other users could have written it, and its argv would run as root.
    #[error(
        "{}: {exposure} and portswap runs as root; fix: chown root:root and chmod 644 it",
        path.display()
    )]
    Unsafe {
        /// The file.
        path: PathBuf,
        /// Who else could write it.
        exposure: Exposure,
    },
    /// Not UTF-8 text.
    #[error(
        "{}: not UTF-8 (invalid byte at offset {offset}); save the file as UTF-8",
        path.display()
    )]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Where the first invalid byte is.
        offset: usize,
    },
    /// Larger than any portswap.yml needs: refused before parsing.
    #[error("{}: {size} bytes; a portswap.yml is at most {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The most that is read.
        limit: u64,
    },
    /// Brackets nested deeper than any portswap.yml needs: refused before parsing (a
    /// deeply nested file takes the YAML parser many seconds).
    #[error("{}:{line}: [ ] or {{ }} nested more than {limit} deep", path.display())]
    TooDeep {
        /// The file.
        path: PathBuf,
        /// The line where the nesting passes the limit.
        line: usize,
        /// The deepest nesting accepted.
        limit: usize,
    },
    /// Not YAML, or YAML that does not fit the schema (unknown or duplicate key, wrong type).
    #[error("{}: {source}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's error, with line and column.
        source: serde_yaml::Error,
    },
    /// A key whose value portswap cannot use.
    #[error("{}: {key}: {problem}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// The key, e.g. `health.timeout` or `slots[1].port`.
        key: String,
        /// What is wrong with it and, where there is one, the fix.
        problem: String,
    },
    /// A relative path for a key that names a place on the host every deployment shares.
    #[error(
        "{}: {key}: `{}` is relative: it would resolve inside each deployment's own archive \
         directory, so every deployment would see its own state; fix: an absolute path, e.g. \
         `{key}: {example}`",
        path.display(),
        value.escape_debug()
    )]
    RelativeHostPath {
        /// The file.
        path: PathBuf,
        /// The key, e.g. `state.dir`.
        key: String,
        /// The relative path given.
        value: String,
        /// An absolute path to offer (the key's default).
        example: String,
    },
    /// A value that a systemd unit file cannot carry.
    #[error("{what} `{}` holds a control character; a systemd unit cannot carry it", value.escape_debug())]
    UnitValue {
        /// What the value is, e.g. `app.command[1]`.
        what: String,
        /// The value.
        value: String,
    },
}

impl ConfigError {
    /// A problem with `key` of the file at `path`.
    pub fn key(path: &Path, key: &str, problem: impl fmt::Display) -> ConfigError {
        ConfigError::Key {
            path: path.to_path_buf(),
            key: key.to_string(),
            problem: problem.to_string(),
        }
    }
}

/// For a permission denied to a user who is not root: the hooks' files are root's, so the
/// command needs sudo (as it runs in CodeDeploy: as root).
pub fn sudo_hint(source: &io::Error) -> &'static str {
    if source.kind() == io::ErrorKind::PermissionDenied && !nix::unistd::geteuid().is_root() {
        "; run it as the hooks run it: with sudo (or as the hooks' user)"
    } else {
        ""
    }
}

/// Who besides root could have written the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Owned by this uid.
    Owner(u32),
    /// Writable by every user.
    Everyone,
    /// Writable by this group.
    Group(u32),
}

impl fmt::Display for Exposure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exposure::Owner(uid) => write!(f, "is owned by uid {uid}"),
            Exposure::Everyone => write!(f, "is writable by every user"),
            Exposure::Group(gid) => write!(f, "is writable by group {gid}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn messages_name_the_file_and_the_key_and_are_bad_input() {
        let e = Error::from(ConfigError::key(
            Path::new("/etc/portswap/portswap.yml"),
            "health.timeout",
            "must be more than 0",
        ));
        assert_eq!(
            e.to_string(),
            "/etc/portswap/portswap.yml: health.timeout: must be more than 0"
        );
        assert_eq!(e.exit_code(), 2);
        let e = Error::from(ConfigError::Unsafe {
            path: "/p.yml".into(),
            exposure: Exposure::Group(5),
        });
        assert_eq!(
            e.to_string(),
            "/p.yml: is writable by group 5 and portswap runs as root; fix: chown root:root and \
             chmod 644 it"
        );
        let e = Error::from(ConfigError::NotFound {
            tried: vec![
                "/a/portswap.yml".into(),
                "/etc/portswap/portswap.yml".into(),
            ],
            variable: "PORTSWAP_CONFIG",
        });
        assert_eq!(
            e.to_string(),
            "no configuration found (looked at /a/portswap.yml, /etc/portswap/portswap.yml); \
             pass --config PATH or set PORTSWAP_CONFIG"
        );
        assert_eq!(e.exit_code(), 2);
    }
}
