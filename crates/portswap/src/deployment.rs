//! `DEPLOYMENT_ID`, read once and the same way for every hook, in a form safe to write
//! anywhere (log tags, `history.log`, records, verdicts): control characters and bytes that
//! are not UTF-8 are escaped, so an id can never forge or split a line.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;

use crate::error::UsageError;

/// The environment variable the CodeDeploy agent sets for every hook.
pub const ENV_VAR: &str = "DEPLOYMENT_ID";
/// The longest id taken (escaped), far above CodeDeploy's `d-XXXXXXXXX` and the 2.x agent's
/// `local-<pid>`: it names release directories (a file name is at most 255 bytes) and is
/// echoed in every log line and verdict (CodeDeploy shows only a hook's last 2048 bytes).
pub const MAX_LEN: usize = 128;

/// The deployment a hook runs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// The escaped id, or `manual-<unix time>` for a run by hand.
    pub id: String,
    /// True when `DEPLOYMENT_ID` is unset, empty or blank: a run by hand. Its made-up id
    /// names the release and the records but is never compared with another hook's id
    /// (two hooks run by hand do not share one).
    pub manual: bool,
    /// The length in bytes of an id longer than [`MAX_LEN`]; `id` then holds only its
    /// start, and every hook refuses to run ([`Deployment::refuse_too_long`]).
    pub too_long: Option<usize>,
}

impl Deployment {
    /// The deployment of `value` (the raw `DEPLOYMENT_ID`), with `now` the unix time used
    /// for a manual id.
    pub fn from_value(value: Option<&OsStr>, now: u64) -> Deployment {
        let given = value.map(OsStr::as_bytes);
        match given.filter(|raw| !raw.iter().all(u8::is_ascii_whitespace)) {
            Some(raw) => {
                let id = escape(raw);
                let too_long = (id.len() > MAX_LEN).then_some(raw.len());
                let id = match too_long {
                    Some(_) => format!("{}...", id.chars().take(32).collect::<String>()),
                    None => id,
                };
                Deployment {
                    id,
                    manual: false,
                    too_long,
                }
            }
            None => Deployment {
                id: format!("manual-{now}"),
                manual: true,
                too_long: None,
            },
        }
    }

    /// Refuses an id longer than [`MAX_LEN`], before a hook changes anything.
    pub fn refuse_too_long(&self) -> Result<(), UsageError> {
        match self.too_long {
            Some(length) => Err(UsageError::DeploymentIdTooLong {
                start: self.id.clone(),
                length,
                limit: MAX_LEN,
            }),
            None => Ok(()),
        }
    }
}

/// The deployment of this process, read from the environment on first use.
pub fn current() -> &'static Deployment {
    static CURRENT: OnceLock<Deployment> = OnceLock::new();
    CURRENT.get_or_init(|| {
        Deployment::from_value(
            std::env::var_os(ENV_VAR).as_deref(),
            crate::state::now_secs(),
        )
    })
}

/// `bytes` as text on one line: control characters as `\n`, `\t`, `\u{1b}`, a backslash as
/// `\\`, and bytes that are not UTF-8 as `\xNN`.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_escaped_and_blank_ones_are_manual() {
        let id = |raw: &[u8]| Deployment::from_value(Some(OsStr::from_bytes(raw)), 7);
        assert_eq!(id(b"d-ABC123").id, "d-ABC123");
        assert!(!id(b"d-ABC123").manual);
        assert_eq!(id(b"d-1\nforged").id, "d-1\\nforged");
        assert_eq!(id(b"d-\xff\x1b[31m").id, "d-\\xff\\u{1b}[31m");
        assert_eq!(id(b"a\\nb").id, "a\\\\nb");
        for blank in [&b""[..], b"  ", b"\t"] {
            let d = id(blank);
            assert!(d.manual, "{blank:?}");
            assert_eq!(d.id, "manual-7");
        }
        assert!(Deployment::from_value(None, 7).manual);
    }
}
