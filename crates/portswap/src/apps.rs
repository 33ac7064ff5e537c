//! Finding the app that runs on a slot, and stopping it without ever touching a foreign
//! process or a reused pid.

use crate::config::Config;
use crate::duration::show;
use crate::error::{Error, Result};
use crate::process::{self, Stopped};
use crate::procfs::{self, ProcId};
use crate::state::{AppRecord, StateDir};

/// What runs on a slot's port.
#[derive(Debug, Clone)]
pub enum Found {
    /// Nothing listens and no recorded process lives.
    Nothing,
    /// Our app: recorded by `start`, or at least running the configured program.
    Ours {
        /// The process.
        process: ProcId,
        /// What `start` recorded, if anything.
        record: Option<AppRecord>,
    },
    /// Something else listens on the port.
    Foreign {
        /// Its pid.
        pid: i32,
        /// Its command line.
        command: String,
    },
}

/// True when `pid` runs the configured program or a file from a release directory.
fn is_configured_app(config: &Config, state: &StateDir, pid: i32) -> bool {
    let first = &config.app.command[0];
    let program = if first.contains('{') {
        None
    } else {
        process::resolve_program(first).ok()
    };
    process::runs_program(pid, program.as_deref(), &state.releases_dir())
}

/// Looks for the app on `port`: the recorded pid (checked against its start time), else the
/// process listening on the port.
pub fn find(config: &Config, state: &StateDir, port: u16) -> Found {
    if let Some(record) = state.app_record(port) {
        let process = ProcId {
            pid: record.pid,
            start_time: record.start_time,
        };
        if process.is_alive() {
            return Found::Ours {
                process,
                record: Some(record),
            };
        }
        log::info!(
            "recorded pid {} for port {port} is gone (or the pid now belongs to another process)",
            record.pid
        );
    }
    let mut foreign = None;
    for pid in procfs::listeners(port) {
        let Some(process) = ProcId::of(pid) else {
            continue;
        };
        if is_configured_app(config, state, pid) {
            return Found::Ours {
                process,
                record: None,
            };
        }
        foreign.get_or_insert(Found::Foreign {
            pid,
            command: procfs::describe(pid),
        });
    }
    foreign.unwrap_or(Found::Nothing)
}

/// Stops whatever of ours runs on `port` (SIGTERM to its group, grace, SIGKILL) and forgets
/// its record. A foreign listener is refused unless `force`.
pub fn stop_slot(config: &Config, state: &StateDir, port: u16, force: bool) -> Result<String> {
    let process = match find(config, state, port) {
        Found::Nothing => {
            state.clear_app_record(port)?;
            return Ok(format!("nothing runs on port {port}"));
        }
        Found::Foreign { pid, command } if !force => {
            return Err(Error::Refused(format!(
                "port {port} is held by pid {pid} (`{command}`), which is not the configured app; \
                 stop it yourself or pass --force to stop"
            )));
        }
        Found::Foreign { pid, command } => {
            log::warn!("--force: stopping foreign pid {pid} (`{command}`) on port {port}");
            ProcId::of(pid).ok_or_else(|| Error::Failed(format!("pid {pid} vanished")))?
        }
        Found::Ours { process, record } => {
            let from = record
                .map(|r| format!(" (deployment {})", r.deployment_id))
                .unwrap_or_default();
            log::info!("stopping pid {} on port {port}{from}", process.pid);
            process
        }
    };
    let outcome = process::terminate(process, port, config.stop_grace)?;
    state.clear_app_record(port)?;
    Ok(match outcome {
        Stopped::Terminated(t) => {
            format!("stopped pid {} on port {port} in {}", process.pid, show(t))
        }
        Stopped::Killed(t) => format!(
            "killed pid {} on port {port} after {} (it ignored SIGTERM for {})",
            process.pid,
            show(t),
            show(config.stop_grace)
        ),
    })
}
