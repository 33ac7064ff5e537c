//! Errors of running the app: staging its release, its account, launching and stopping its
//! processes, systemd units and `systemctl` calls; and of probing its health.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::{Error, ProbeFailure};
use crate::duration::show;

/// An app that no longer runs as it was started, as its supervisor saw it: one line with
/// what happened and the last line it wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the app on port {port} ({}) {how}{} ({})", self.who(), self.last_words(), self.written.place())]
pub struct AppGone {
    /// The slot.
    pub port: u16,
    /// Its recorded pid (0: a unit that never recorded one).
    pub pid: i32,
    /// Its systemd unit, under the systemd supervisor.
    pub unit: Option<String>,
    /// What happened to it.
    pub how: GoneHow,
    /// The last line it wrote since it started, if any.
    pub last: Option<String>,
    /// Where its output goes.
    pub written: Written,
}

impl AppGone {
    fn who(&self) -> String {
        match (&self.unit, self.pid) {
            (None, pid) => format!("pid {pid}"),
            (Some(unit), 0) => unit.clone(),
            (Some(unit), pid) => format!("{unit}, pid {pid}"),
        }
    }

    fn last_words(&self) -> String {
        let (said, silent) = match self.written {
            Written::Log(_) => ("last log line", "it wrote nothing to its log"),
            Written::UnitFile(_) | Written::Journal { .. } => ("last output line", "no output"),
        };
        match &self.last {
            Some(line) => format!("; {said}: {line}"),
            None => format!("; {silent}"),
        }
    }
}

/// What happened to an app that is gone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GoneHow {
    /// The process `start` launched exited before the start check ended.
    #[error("exited at once ({status})")]
    ExitedAtOnce {
        /// Its exit status, as the OS words it.
        status: String,
    },
    /// The recorded process no longer runs.
    #[error("has exited")]
    Exited,
    /// The unit failed for good.
    #[error("failed ({result}, exit status {status}, NRestarts={restarts})")]
    UnitFailed {
        /// systemd's `Result`.
        result: String,
        /// `ExecMainStatus`.
        status: String,
        /// `NRestarts`.
        restarts: String,
    },
    /// The unit's main process crashed and systemd is about to restart it.
    #[error(
        "crashed (exit status {status}); systemd restarts it (NRestarts={restarts}), which does \
         not make this version good"
    )]
    Restarting {
        /// `ExecMainStatus`.
        status: String,
        /// `NRestarts`.
        restarts: String,
    },
    /// systemd restarted it: another process is the unit's main one now.
    #[error("crashed and was restarted by systemd as pid {pid} (NRestarts={restarts})")]
    Restarted {
        /// The unit's `MainPID` now.
        pid: String,
        /// `NRestarts`.
        restarts: String,
    },
    /// The unit ended in another state.
    #[error("exited (unit {active}/{sub})")]
    UnitEnded {
        /// `ActiveState`.
        active: String,
        /// `SubState`.
        sub: String,
    },
}

/// Where a gone app's output went, for the one line that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Its log file (process supervisor).
    Log(PathBuf),
    /// The file its unit's output is appended to (systemd).
    UnitFile(PathBuf),
    /// The journal, under its unit's name (systemd); `user`: a user unit.
    Journal {
        /// The unit.
        unit: String,
        /// Whether the unit is the hook user's own (`journalctl --user`).
        user: bool,
    },
}

impl Written {
    fn place(&self) -> String {
        match self {
            Written::Log(path) | Written::UnitFile(path) => format!("log {}", path.display()),
            Written::Journal { unit, user: true } => format!("journalctl --user -u {unit}"),
            Written::Journal { unit, user: false } => format!("journalctl -u {unit}"),
        }
    }
}

/// Running the app failed (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// `app.command[0]` is nowhere to be found.
    #[error("program `{program}` not found in PATH or the system directories")]
    ProgramNotFound {
        /// The program as configured.
        program: String,
    },
    /// The app's log path has no directory or no file name.
    #[error("app log {} has no directory or file name", path.display())]
    LogPath {
        /// The log path.
        path: PathBuf,
    },
    /// The app's log could not be opened (or handed to the app's user).
    #[error("cannot open app log: {source}")]
    OpenLog {
        /// Why.
        source: Box<Error>,
    },
    /// The process could not be started.
    #[error("cannot start {}: {source} (workdir {})", program.display(), workdir.display())]
    Launch {
        /// The resolved program.
        program: PathBuf,
        /// Its working directory.
        workdir: PathBuf,
        /// The system's error.
        source: io::Error,
    },
    /// Every process of the app is gone after SIGTERM, yet the port is still in use.
    #[error(
        "every process of the app exited, but port {port} is still in use {} after SIGTERM \
         (by {holders}); no SIGKILL sent",
        show(*grace)
    )]
    HeldAfterTerm {
        /// The slot.
        port: u16,
        /// `stop.grace`.
        grace: Duration,
        /// Who holds it.
        holders: String,
    },
    /// Every process of the app is gone after SIGKILL, yet the port is still in use.
    #[error(
        "port {port} is still in use {} after SIGKILL (by {holders}), though the app's processes \
         are gone",
        show(*waited)
    )]
    HeldAfterKill {
        /// The slot.
        port: u16,
        /// The wait after SIGKILL.
        waited: Duration,
        /// Who holds it.
        holders: String,
    },
    /// Processes of the app survived SIGKILL.
    #[error("pid {pids} still running {} after SIGKILL", show(*waited))]
    Survived {
        /// Their pids, comma-separated.
        pids: String,
        /// The wait after SIGKILL.
        waited: Duration,
    },
    /// A process to be stopped was gone before it could be identified.
    #[error("pid {pid} vanished")]
    Vanished {
        /// Its pid.
        pid: i32,
    },
    /// A `systemctl`/`journalctl` call could not be started.
    #[error("`{call}` could not run: {source}")]
    CallSpawn {
        /// The command line.
        call: String,
        /// The system's error.
        source: io::Error,
    },
    /// A `systemctl`/`journalctl` call did not finish in time (it was killed).
    #[error("`{call}` did not finish within {}", show(*limit))]
    CallTimeout {
        /// The command line.
        call: String,
        /// Its time limit.
        limit: Duration,
    },
    /// A `systemctl`/`journalctl` call failed.
    #[error("`{call}` failed ({status}): {detail}")]
    CallFailed {
        /// The command line.
        call: String,
        /// Its exit status.
        status: String,
        /// Its last line of error output.
        detail: String,
    },
    /// The unit's start job failed; with the app's last output line when there is one.
    #[error("{source}{}", last.as_ref().map(|l| format!("; last output: {l}")).unwrap_or_default())]
    UnitStart {
        /// The failed `systemctl` call.
        source: Box<Error>,
        /// The app's last output line.
        last: Option<String>,
    },
    /// The unit started, but nothing of it runs.
    #[error("{unit} started, but no process of it runs (MainPID 0, empty cgroup)")]
    UnitEmpty {
        /// The unit.
        unit: String,
    },
    /// The app died or was restarted (its supervisor's one line, with its last output).
    #[error("{gone}")]
    Gone {
        /// What the supervisor saw.
        gone: Box<AppGone>,
    },
    /// The new app died right after `start` launched it.
    #[error("{gone}{}", cleanup.as_ref().map(|e| format!("; cleaning up failed: {e}; run `stop --port {port}`")).unwrap_or_default())]
    DiedAtStart {
        /// What the supervisor saw.
        gone: Box<AppGone>,
        /// The slot.
        port: u16,
        /// Why stopping what it left failed, if it did.
        cleanup: Option<Box<Error>>,
    },
    /// The new app put itself in the background: what it left was stopped (or not).
    #[error("{}", daemonized(gone, *pid, *port, stopped))]
    Daemonized {
        /// What the supervisor saw.
        gone: Box<AppGone>,
        /// The process it left running.
        pid: i32,
        /// The slot.
        port: u16,
        /// What stopping it did.
        stopped: Result<String, Box<Error>>,
    },
    /// A SIGTERM arrived while the artifacts were copied.
    #[error("stopped while copying {}", source_path.display())]
    StageInterrupted {
        /// The artifact being copied.
        source_path: PathBuf,
    },
    /// An artifact pattern matches nothing.
    #[error(
        "app.artifacts[{index}]: nothing matches {}; is the artifact in the revision?",
        pattern.display()
    )]
    NoArtifact {
        /// Its index in `app.artifacts`.
        index: usize,
        /// The pattern.
        pattern: PathBuf,
    },
    /// /etc/passwd cannot be read.
    #[error("cannot read /etc/passwd: {source}")]
    Passwd {
        /// The system's error.
        source: io::Error,
    },
    /// `app.user` names no account.
    #[error("app.user: no user `{name}` in /etc/passwd")]
    NoUser {
        /// The name.
        name: String,
    },
}

fn daemonized(gone: &AppGone, pid: i32, port: u16, stopped: &Result<String, Box<Error>>) -> String {
    let hint = "an app that puts itself in the background cannot be supervised: run it in the \
                foreground";
    match stopped {
        Ok(done) => format!("{gone}; it left pid {pid} running ({hint}): {done}"),
        Err(e) => format!(
            "{gone}; it left pid {pid} running ({hint}), and stopping it failed: {e}; run \
             `stop --port {port}` once the cause is fixed"
        ),
    }
}

/// Probing the new version failed (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The app died or was restarted while it was probed.
    #[error("{gone}")]
    Died {
        /// What its supervisor saw.
        gone: Box<AppGone>,
    },
    /// A probe's answer did not pass (or no answer came).
    #[error("{problem}")]
    Answer {
        /// What the probe got.
        problem: ProbeFailure,
    },
    /// What answers on the port is not the slot's app.
    #[error("{why}")]
    NotOurs {
        /// Who listens instead.
        why: NotServing,
    },
    /// `health.timeout` ran out.
    #[error("not healthy after {} ({tries} probes); last: {last}", show(*timeout))]
    Unhealthy {
        /// `health.timeout`.
        timeout: Duration,
        /// Probes made.
        tries: u32,
        /// The last probe's result.
        last: ProbeFailure,
    },
}

/// Why the listener on a slot's port is not proven to be the slot's app: an answer from it
/// proves nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotServing {
    /// No socket listens on the port.
    #[error("nothing listens on port {port}")]
    Nothing {
        /// The slot's port.
        port: u16,
    },
    /// A process without proof of being the slot's app listens.
    #[error("port {port} is answered by pid {pid} (`{command}`), not by the app start launched")]
    Foreign {
        /// The slot's port.
        port: u16,
        /// The listening process.
        pid: i32,
        /// Its command line, as `/proc` shows it.
        command: String,
    },
    /// A listening socket that no process this hook can see holds.
    #[error(
        "port {port} is listened on by a socket no process visible to uid {uid} holds \
         (another user's process); an answer there may not be the app's"
    )]
    Hidden {
        /// The slot's port.
        port: u16,
        /// The hook's effective uid.
        uid: u32,
    },
    /// The holder of the socket could not be read.
    #[error("{reason}")]
    Unidentified {
        /// What could not be read, and where.
        reason: String,
    },
    /// Under systemd: a listener outside the slot's unit.
    #[error("port {port} is answered by pid {pid} (`{command}`), which is not in {unit} (cgroup {})",
        cgroup.as_deref().unwrap_or("none: the unit is not running"))]
    OutsideUnit {
        /// The slot's port.
        port: u16,
        /// The listening process.
        pid: i32,
        /// Its command line, as `/proc` shows it.
        command: String,
        /// The slot's unit.
        unit: String,
        /// The unit's cgroup, when it runs.
        cgroup: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gone_app_reads_as_one_line_in_either_supervisors_words() {
        let process = AppGone {
            port: 8081,
            pid: 42,
            unit: None,
            how: GoneHow::ExitedAtOnce {
                status: "exit status: 3".into(),
            },
            last: Some("boom".into()),
            written: Written::Log("/var/log/app-8081.log".into()),
        };
        assert_eq!(
            process.to_string(),
            "the app on port 8081 (pid 42) exited at once (exit status: 3); last log line: boom \
             (log /var/log/app-8081.log)"
        );
        let unit = AppGone {
            pid: 0,
            unit: Some("portswap-8081.service".into()),
            how: GoneHow::Restarted {
                pid: "77".into(),
                restarts: "1".into(),
            },
            last: None,
            written: Written::Journal {
                unit: "portswap-8081.service".into(),
                user: false,
            },
            ..process
        };
        assert_eq!(
            unit.to_string(),
            "the app on port 8081 (portswap-8081.service) crashed and was restarted by systemd \
             as pid 77 (NRestarts=1); no output (journalctl -u portswap-8081.service)"
        );
    }
}
