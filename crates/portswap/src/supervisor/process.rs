//! The `process` supervisor: the app runs detached in its own session, its pid recorded;
//! nothing restarts it. Stopping signals its process group, never a foreign process.
//!
//! Hooks as root on a host systemd runs start the app in a transient scope of its own
//! (`systemd-run --scope --unit=portswap-PORT.scope`): it leaves the cgroup of the service
//! that ran the hook (the CodeDeploy agent's), so stopping that service does not kill it,
//! and the scope's cgroup is one more proof of identity. Otherwise (hooks as a user) it
//! stays in the hook's cgroup, and `start`'s verdict says so every time.

use std::cell::RefCell;
use std::process::Child;

use super::{Launch, Supervisor};
use crate::applog;
use crate::config::Config;
use crate::duration::show;
use crate::error::{AppGone, GoneHow, NotServing, Refusal, Result, SupervisorError};
use crate::ownership::{self, Holder, UnitCgroup};
use crate::process::{self, LaunchSpec};
use crate::procfs::{self, ProcId};
use crate::state::{AppRecord, StateDir};
use crate::systemctl::{self, Manager};

/// Runs the app as a detached child of the hook.
pub struct ProcessSupervisor {
    state: StateDir,
    stop_grace: std::time::Duration,
    /// [`ownership::Slot::app_uid`].
    app_uid: Option<u32>,
    /// Hooks as root on a host systemd runs: each app gets a transient scope of its own.
    scopes: bool,
    /// The child `start` launched in this run, to report its exit status.
    child: RefCell<Option<Child>>,
}

impl ProcessSupervisor {
    /// The supervisor for this host.
    pub fn new(config: &Config, state: &StateDir) -> ProcessSupervisor {
        ProcessSupervisor {
            state: state.clone(),
            stop_grace: config.stop_grace,
            app_uid: super::app_uid(config),
            scopes: systemctl::booted()
                && nix::unistd::geteuid().is_root()
                && process::resolve_program("systemd-run").is_ok(),
            child: RefCell::new(None),
        }
    }

    /// The transient scope of the slot on `port` (`portswap-PORT.scope`), when apps get one.
    fn scope_name(&self, port: u16) -> Option<String> {
        self.scopes.then(|| format!("portswap-{port}.scope"))
    }

    /// The slot's scope and its cgroup now (`None` without scopes).
    fn scope(&self, port: u16) -> Option<UnitCgroup> {
        let name = self.scope_name(port)?;
        Some(UnitCgroup {
            cgroup: Manager::System.control_group(&name),
            name,
        })
    }

    fn slot<'a>(
        &'a self,
        port: u16,
        record: Option<&'a AppRecord>,
        scope: Option<&'a UnitCgroup>,
    ) -> ownership::Slot<'a> {
        ownership::Slot {
            port,
            state_dir: self.state.path(),
            record,
            unit: scope,
            app_uid: self.app_uid,
        }
    }
}

impl Supervisor for ProcessSupervisor {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn holder(&self, port: u16) -> Holder {
        let record = self.state.app_record(port);
        let scope = self.scope(port);
        self.slot(port, record.as_ref(), scope.as_ref()).holder()
    }

    fn stop(&self, port: u16, force: bool) -> Result<String> {
        let record = self.state.app_record(port);
        if let Some(r) = record.as_ref().filter(|r| !r.process().is_alive()) {
            log::info!(
                "recorded pid {} for port {port} is gone (or the pid now belongs to another process)",
                r.pid
            );
        }
        let scope = self.scope(port);
        let slot = self.slot(port, record.as_ref(), scope.as_ref());
        let (process, targets): (ProcId, Box<dyn Fn() -> Vec<ProcId>>) = match slot.holder() {
            Holder::Free => {
                self.state.clear_app_record(port)?;
                return Ok(format!("nothing runs on port {port}"));
            }
            Holder::Unidentified { reason } => {
                return Err(Refusal::Unidentified {
                    reason: reason.clone(),
                    untouched: "signalled",
                }
                .into());
            }
            Holder::Foreign {
                pid,
                command,
                other_state,
            } if !force => {
                return Err(Refusal::Foreign {
                    port,
                    pid,
                    command,
                    unit: None,
                    other_state,
                }
                .into());
            }
            Holder::Foreign { pid, command, .. } => {
                log::warn!("--force: stopping foreign pid {pid} (`{command}`) on port {port}");
                let process = ProcId::of(pid).ok_or(SupervisorError::Vanished { pid })?;
                let leads = procfs::parent_and_group(pid).is_some_and(|(_, g)| g == pid);
                (process, Box::new(move || group_of(process, leads)))
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
                let slot = slot.clone();
                (
                    process,
                    Box::new(move || {
                        let mut all = slot.members();
                        if process.is_alive() && !all.contains(&process) {
                            all.push(process);
                        }
                        all
                    }),
                )
            }
        };
        let stopped = process::terminate(port, self.stop_grace, targets)?;
        self.state.clear_app_record(port)?;
        let others = match stopped.processes.saturating_sub(1) {
            0 => String::new(),
            1 => " and 1 other process of the app".to_string(),
            n => format!(" and {n} other processes of the app"),
        };
        Ok(match stopped.killed {
            0 => format!(
                "stopped pid {}{others} on port {port} in {}",
                process.pid,
                show(stopped.took)
            ),
            n => format!(
                "killed pid {}{others} on port {port}: still running {} after SIGTERM, sent \
                 SIGKILL to {n}; port free after {}",
                process.pid,
                show(self.stop_grace),
                show(stopped.took)
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
            scope: self.scope_name(launch.slot.port),
        };
        let child = process::launch(&spec)?;
        let pid = child.id() as i32;
        let start_time = ProcId::of(pid).map(|p| p.start_time).unwrap_or(0);
        *self.child.borrow_mut() = Some(child);
        Ok(launch.record(pid, start_time))
    }

    fn gone(&self, record: &AppRecord) -> Option<AppGone> {
        let mut child = self.child.borrow_mut();
        if let Some(c) = child.as_mut().filter(|c| c.id() as i32 == record.pid) {
            let status = c.try_wait().ok().flatten()?.to_string();
            return Some(applog::died(record, GoneHow::ExitedAtOnce { status }));
        }
        (!record.process().is_alive()).then(|| applog::died(record, GoneHow::Exited))
    }

    fn serves(&self, port: u16) -> std::result::Result<(), NotServing> {
        let record = self.state.app_record(port);
        let scope = self.scope(port);
        self.slot(port, record.as_ref(), scope.as_ref()).serves()
    }
}

/// `leader` and, when it `leads` a process group, what is left of its group (`stop --force`);
/// nothing of the group once the leader's pid names a process started at another time.
fn group_of(leader: ProcId, leads: bool) -> Vec<ProcId> {
    let same_leader = procfs::start_time(leader.pid).is_none_or(|t| t == leader.start_time);
    let mut all: Vec<ProcId> = if leads && same_leader {
        procfs::all_pids()
            .into_iter()
            .filter(|p| procfs::parent_and_group(*p).is_some_and(|(_, g)| g == leader.pid))
            .filter_map(ProcId::of)
            .collect()
    } else {
        Vec::new()
    };
    if leader.is_alive() && !all.contains(&leader) {
        all.push(leader);
    }
    all
}
