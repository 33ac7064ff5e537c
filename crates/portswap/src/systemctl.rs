//! Talking to systemd through its command-line tools (`systemctl`, `journalctl`): argv only,
//! never a shell, every call bounded in time (the unit files themselves: [`crate::unitfile`]).
//! [`Manager`] says which instance a call goes to: PID 1 (system units, hooks as root) or
//! the hook user's own manager (`systemctl --user`, user units, hooks as a user).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{Result, SupervisorError};
use crate::process::{resolve_program, wait_for};

/// How long a call that does not wait for a stop may take (they take milliseconds; a hung
/// systemd fails the hook within the budget `portswap-bundle` checks).
pub const CALL_LIMIT: Duration = Duration::from_secs(3);

/// True when systemd runs this host (`/run/systemd/system` exists, as `sd_booted` checks).
pub fn booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Which systemd instance manages the app's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    /// PID 1: system units in `/etc/systemd/system` (hooks as root).
    System,
    /// The hook user's own manager (`user@UID.service`, kept running by
    /// `loginctl enable-linger USER`): user units in `~/.config/systemd/user`.
    User,
}

impl Manager {
    /// `systemctl ARGS...` (with `--user` for the user's manager), bounded by `limit`.
    pub fn systemctl(self, args: &[&str], limit: Duration) -> Result<String> {
        match self {
            Manager::System => run("systemctl", args, limit),
            Manager::User => {
                let mut all = vec!["--user"];
                all.extend(args);
                run("systemctl", &all, limit)
            }
        }
    }

    /// The unit's `properties` (`systemctl show -p A,B UNIT`).
    pub fn show(self, unit: &str, properties: &[&str]) -> Result<Properties> {
        let list = properties.join(",");
        self.systemctl(&["show", "-p", &list, "--", unit], CALL_LIMIT)
            .map(Properties)
    }

    /// The cgroup this manager runs `unit` in (its `ControlGroup` property, e.g.
    /// `/system.slice/portswap-8081.service`); `None` while the unit has none (not running)
    /// or systemd cannot be asked. This, compared in full with a process's cgroup, is what
    /// proves that a process belongs to the unit.
    pub fn control_group(self, unit: &str) -> Option<String> {
        let props = self.show(unit, &["ControlGroup"]).ok()?;
        let group = props.get("ControlGroup");
        (group.starts_with('/')).then(|| group.to_string())
    }

    /// How verdicts name it.
    pub fn name(self) -> &'static str {
        match self {
            Manager::System => "systemd",
            Manager::User => "systemd --user",
        }
    }
}

/// The runtime directory of the hook's user, where its manager listens
/// (`/run/user/UID/systemd/private`); set for every `--user` call, since hooks run through
/// `su USER -c` get no `XDG_RUNTIME_DIR`.
fn user_runtime_dir() -> String {
    format!("/run/user/{}", nix::unistd::geteuid())
}

/// True when the hook user's own systemd manager runs and answers (a lingering user's
/// `user@UID.service`, started at boot); then user units can supervise the app.
pub fn user_manager_reachable() -> bool {
    let socket = format!("{}/systemd/private", user_runtime_dir());
    booted()
        && Path::new(&socket).exists()
        && Manager::User
            .systemctl(&["show", "-p", "Version"], CALL_LIMIT)
            .is_ok()
}

/// Runs `program args` and returns its stdout; an error names the call, its exit status and
/// the last line of its stderr. Killed after `limit`. The call runs in its own process
/// group: the agent's timeout signals the hook's group, and a `systemctl` cut short there
/// would leave the hook not knowing what systemd did; the hook itself decides when to stop.
fn run(program: &str, args: &[&str], limit: Duration) -> Result<String> {
    let path = resolve_program(program)?;
    let call = format!("{program} {}", args.join(" "));
    let mut child = Command::new(&path)
        .args(args)
        .env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_COLORS", "0")
        .env("XDG_RUNTIME_DIR", user_runtime_dir())
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| SupervisorError::CallSpawn {
            call: call.clone(),
            source,
        })?;
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
        return Err(SupervisorError::CallTimeout { call, limit }.into());
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
    Err(SupervisorError::CallFailed {
        call,
        status: status.to_string(),
        detail: detail.to_string(),
    }
    .into())
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

/// The last `lines` lines the unit's own processes wrote to the journal since `since`
/// (seconds since the epoch): messages only, not systemd's lines about the unit, not an
/// earlier version's; empty when unreadable.
pub fn journal_tail(manager: Manager, unit: &str, since: u64, lines: usize) -> Vec<String> {
    let n = lines.to_string();
    let matching = match manager {
        Manager::System => format!("_SYSTEMD_UNIT={unit}"),
        Manager::User => format!("_SYSTEMD_USER_UNIT={unit}"),
    };
    let since = format!("--since=@{since}");
    let mut args = vec![
        matching.as_str(),
        &since,
        "-n",
        &n,
        "-o",
        "cat",
        "--no-pager",
        "-q",
    ];
    if manager == Manager::User {
        args.insert(0, "--user");
    }
    run("journalctl", &args, Duration::from_secs(5))
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}
