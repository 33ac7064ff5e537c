//! The `process` supervisor: the app runs detached in its own session, its pid recorded;
//! nothing restarts it. Stopping signals its process group, never a foreign process.

use std::cell::RefCell;
use std::process::Child;

use super::{Launch, Supervisor};
use crate::applog;
use crate::config::Config;
use crate::duration::show;
use crate::error::{Error, Result};
use crate::ownership::{self, Holder};
use crate::process::{self, LaunchSpec, Stopped};
use crate::procfs::ProcId;
use crate::state::{self, AppRecord, StateDir};

/// Runs the app as a detached child of the hook.
pub struct ProcessSupervisor {
    state: StateDir,
    stop_grace: std::time::Duration,
    /// The child `start` launched in this run, to report its exit status.
    child: RefCell<Option<Child>>,
}

impl ProcessSupervisor {
    /// The supervisor for this host.
    pub fn new(config: &Config, state: &StateDir) -> ProcessSupervisor {
        ProcessSupervisor {
            state: state.clone(),
            stop_grace: config.stop_grace,
            child: RefCell::new(None),
        }
    }

    fn slot<'a>(&'a self, port: u16, record: Option<&'a AppRecord>) -> ownership::Slot<'a> {
        ownership::Slot {
            port,
            state_dir: self.state.path(),
            record,
            unit: None,
        }
    }
}

impl Supervisor for ProcessSupervisor {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn holder(&self, port: u16) -> Holder {
        let record = self.state.app_record(port);
        self.slot(port, record.as_ref()).holder()
    }

    fn stop(&self, port: u16, force: bool) -> Result<String> {
        let record = self.state.app_record(port);
        if let Some(r) = record.as_ref().filter(|r| !r.process().is_alive()) {
            log::info!(
                "recorded pid {} for port {port} is gone (or the pid now belongs to another process)",
                r.pid
            );
        }
        let holder = self.slot(port, record.as_ref()).holder();
        let process = match holder {
            Holder::Free => {
                self.state.clear_app_record(port)?;
                return Ok(format!("nothing runs on port {port}"));
            }
            Holder::Unidentified { reason } => {
                return Err(Error::Refused(format!("{reason}; nothing was signalled")));
            }
            Holder::Foreign { pid, command } if !force => {
                return Err(Error::Refused(format!(
                    "port {port} is held by pid {pid} (`{command}`), which is not portswap's app; \
                     stop it yourself or pass --force to stop"
                )));
            }
            Holder::Foreign { pid, command } => {
                log::warn!("--force: stopping foreign pid {pid} (`{command}`) on port {port}");
                ProcId::of(pid).ok_or_else(|| Error::Failed(format!("pid {pid} vanished")))?
            }
            Holder::Ours { process, proof } => {
                let from = record
                    .as_ref()
                    .map(|r| format!(" (deployment {})", r.deployment_id))
                    .unwrap_or_default();
                log::info!(
                    "stopping pid {} on port {port}{from} ({proof:?})",
                    process.pid
                );
                process
            }
        };
        let outcome = process::terminate(process, port, self.stop_grace)?;
        self.state.clear_app_record(port)?;
        Ok(match outcome {
            Stopped::Terminated(t) => {
                format!("stopped pid {} on port {port} in {}", process.pid, show(t))
            }
            Stopped::Killed(t) => format!(
                "killed pid {} on port {port} after {} (it ignored SIGTERM for {})",
                process.pid,
                show(t),
                show(self.stop_grace)
            ),
        })
    }

    fn start(&self, launch: &Launch) -> Result<AppRecord> {
        let mut env = launch.env.clone();
        env.push((
            ownership::MARKER_VAR.to_string(),
            ownership::marker_value(self.state.path(), launch.slot.port),
        ));
        let spec = LaunchSpec {
            argv: launch.argv.clone(),
            workdir: launch.workdir.clone(),
            env,
            log_file: launch.log_file.clone(),
            account: launch.account.clone(),
        };
        let child = process::launch(&spec)?;
        let pid = child.id() as i32;
        let start_time = ProcId::of(pid).map(|p| p.start_time).unwrap_or(0);
        *self.child.borrow_mut() = Some(child);
        Ok(AppRecord {
            pid,
            start_time,
            port: launch.slot.port,
            profile: launch.slot.profile.clone(),
            deployment_id: launch.deployment_id.clone(),
            command: launch.argv.clone(),
            release_dir: launch.release_dir.clone(),
            log_file: launch.log_file.clone(),
            started_at: state::now_secs(),
        })
    }

    fn gone(&self, record: &AppRecord) -> Option<String> {
        let mut child = self.child.borrow_mut();
        if let Some(c) = child.as_mut().filter(|c| c.id() as i32 == record.pid) {
            let status = c.try_wait().ok().flatten()?;
            return Some(applog::died(record, &format!("exited at once ({status})")));
        }
        (!record.process().is_alive()).then(|| applog::died(record, "has exited"))
    }

    fn serves(&self, port: u16) -> std::result::Result<(), String> {
        let record = self.state.app_record(port);
        self.slot(port, record.as_ref()).serves()
    }
}
