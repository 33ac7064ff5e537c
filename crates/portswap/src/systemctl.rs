//! Talking to systemd through its command-line tools (`systemctl`, `journalctl`): argv only,
//! never a shell, every call bounded in time (the unit files themselves: [`crate::unitfile`]).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::process::{resolve_program, wait_for};

/// How long a call that does not wait for a stop may take (they take milliseconds; a hung
/// systemd fails the hook within the budget `portswap-bundle` checks).
pub const CALL_LIMIT: Duration = Duration::from_secs(3);

/// True when systemd runs this host (`/run/systemd/system` exists, as `sd_booted` checks).
pub fn booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Runs `program args` and returns its stdout; an error names the call, its exit status and
/// the last line of its stderr. Killed after `limit`.
fn run(program: &str, args: &[&str], limit: Duration) -> Result<String> {
    let path = resolve_program(program)?;
    let call = format!("{program} {}", args.join(" "));
    let mut child = Command::new(&path)
        .args(args)
        .env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_COLORS", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Failed(format!("`{call}` could not run: {e}")))?;
    // Outputs read here are small (a few properties, a few log lines): they fit the pipes
    // while the call runs.
    let mut status = None;
    wait_for(limit, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::Failed(format!(
            "`{call}` did not finish within {}",
            crate::duration::show(limit)
        )));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    if status.success() {
        return Ok(stdout);
    }
    let detail = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim();
    Err(Error::Failed(format!(
        "`{call}` failed ({status}): {detail}"
    )))
}

/// `systemctl ARGS...`, bounded by `limit`.
pub fn systemctl(args: &[&str], limit: Duration) -> Result<String> {
    run("systemctl", args, limit)
}

/// What `systemctl show` printed: `Key=value` lines.
#[derive(Debug, Clone, Default)]
pub struct Properties(String);

impl Properties {
    /// The value of `key`, or `"?"` when systemd did not say.
    pub fn get(&self, key: &str) -> &str {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or("?")
    }
}

/// The unit's `properties` (`systemctl show -p A,B UNIT`).
pub fn show(unit: &str, properties: &[&str]) -> Result<Properties> {
    let list = properties.join(",");
    systemctl(&["show", "-p", &list, "--", unit], CALL_LIMIT).map(Properties)
}

/// The last `lines` lines the unit's own processes wrote to the journal since `since`
/// (seconds since the epoch): messages only, not systemd's lines about the unit, not an
/// earlier version's; empty when unreadable.
pub fn journal_tail(unit: &str, since: u64, lines: usize) -> Vec<String> {
    let n = lines.to_string();
    let matching = format!("_SYSTEMD_UNIT={unit}");
    let since = format!("--since=@{since}");
    run(
        "journalctl",
        &[&matching, &since, "-n", &n, "-o", "cat", "--no-pager", "-q"],
        Duration::from_secs(5),
    )
    .map(|t| t.lines().map(str::to_string).collect())
    .unwrap_or_default()
}
