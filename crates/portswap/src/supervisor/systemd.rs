//! The `systemd` supervisor: slot P is the unit `portswap-P.service` (name configurable),
//! written by `start`, enabled (so it comes back after a reboot) and restarted by systemd
//! when it crashes. Identity is the unit's full cgroup path (`ControlGroup`); `stop` is
//! `systemctl disable --now`, which takes the whole cgroup (wrapper and daemonized children
//! included), and touches only units whose file carries [`MARKER`].
//!
//! Hooks as root use system units (PID 1, `/etc/systemd/system`); hooks as a user use user
//! units of that user's own manager ([`Manager::User`]: `systemctl --user`,
//! `~/.config/systemd/user`, `WantedBy=default.target`), which a lingering user's
//! `user@UID.service` starts at boot. Either way the app lives in a cgroup of its own, never
//! in the cgroup of the service that ran the hook (the CodeDeploy agent's), so stopping or
//! restarting that service leaves it running.
//!
//! A slot still run the `process` way (or by the legacy scripts) is stopped by the process
//! supervisor's rules before the unit starts: the move to systemd needs no manual step.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::process::ProcessSupervisor;
use super::{Launch, Supervisor};
use crate::config::{self, Config, Output};
use crate::duration::show;
use crate::error::{
    AppGone, Error, GoneHow, NotServing, Refusal, Result, SupervisorError, Written,
};
use crate::ownership::{self, Holder, UnitCgroup};
use crate::procfs::{self, ProcId};
use crate::state::{AppRecord, StateDir};
use crate::systemctl::{self, Manager};
use crate::unitfile::{environment_file, plain_value, quote_assignment, quote_word};
use crate::{applog, fsio, process, users};

/// First line of every unit file portswap writes; `stop` and `start` manage only units
/// whose file starts with it.
pub const MARKER: &str = "# Written by portswap";

/// The properties `gone` and the status view read.
const WATCHED: &[&str] = &[
    "ActiveState",
    "SubState",
    "Result",
    "MainPID",
    "NRestarts",
    "ExecMainStatus",
    "UnitFileState",
];

/// Runs the app as a systemd unit per slot.
pub struct SystemdSupervisor {
    state: StateDir,
    systemd: config::Systemd,
    manager: Manager,
    stop_grace: Duration,
    /// [`ownership::Slot::app_uid`].
    app_uid: Option<u32>,
    /// Today's rules, for a slot still run the process way.
    process: ProcessSupervisor,
}

impl SystemdSupervisor {
    /// The supervisor for this host, with units of `manager`. User units live in the
    /// hook user's `~/.config/systemd/user` (home from /etc/passwd), where that user's
    /// manager looks for them; `systemd.unit_dir` names the system units' directory.
    pub fn new(config: &Config, state: &StateDir, manager: Manager) -> Result<SystemdSupervisor> {
        let mut systemd = config.systemd.clone();
        if manager == Manager::User {
            let uid = nix::unistd::geteuid().to_string();
            systemd.unit_dir = users::lookup(&uid)?.home.join(".config/systemd/user");
        }
        Ok(SystemdSupervisor {
            state: state.clone(),
            systemd,
            manager,
            stop_grace: config.stop_grace,
            app_uid: super::app_uid(config),
            process: ProcessSupervisor::new(config, state),
        })
    }

    /// The slot's unit and the cgroup its manager runs it in now.
    fn unit_cgroup(&self, port: u16) -> UnitCgroup {
        let name = self.systemd.unit_name(port);
        UnitCgroup {
            cgroup: self.manager.control_group(&name),
            name,
        }
    }

    fn unit_path(&self, unit: &str) -> PathBuf {
        self.systemd.unit_dir.join(unit)
    }

    /// Where the unit's `EnvironmentFile=` lives (mode 0600, in a 0700 directory).
    fn env_path(&self, unit: &str) -> PathBuf {
        self.state.path().join("units").join(format!("{unit}.env"))
    }

    /// `Some(true)`: the unit file is ours; `Some(false)`: a unit file of that name that
    /// portswap did not write; `None`: no unit file.
    /// A link at the unit's path (`systemctl mask` or `systemctl link`) is not ours: it is
    /// never read through, overwritten or unmasked.
    fn unit_file_is_ours(&self, unit: &str) -> Option<bool> {
        let path = self.unit_path(unit);
        if std::fs::symlink_metadata(&path)
            .ok()?
            .file_type()
            .is_symlink()
        {
            return Some(false);
        }
        let text = fsio::read_small(&path, 1 << 20).ok().flatten()?;
        Some(text.starts_with(MARKER.as_bytes()))
    }

    fn holder_of(&self, port: u16, unit: &UnitCgroup) -> Holder {
        let record = self.state.app_record(port);
        ownership::Slot {
            port,
            state_dir: self.state.path(),
            record: record.as_ref(),
            unit: Some(unit),
            app_uid: self.app_uid,
        }
        .holder()
    }

    /// The unit file for `launch`, whose program resolved to `program`.
    pub fn render_unit(&self, launch: &Launch, program: &Path) -> Result<String> {
        let port = launch.slot.port;
        let unit = self.systemd.unit_name(port);
        let mut exec: Vec<String> = vec![quote_word(&program.to_string_lossy())];
        exec.extend(launch.argv[1..].iter().map(|a| quote_word(a)));
        let marker = format!(
            "{}={}",
            ownership::MARKER_VAR,
            ownership::marker_value(self.state.path(), port)
        );
        let workdir = plain_value("the working directory", &launch.workdir.to_string_lossy())?;
        let env_file = plain_value(
            "the state directory",
            &self.env_path(&unit).to_string_lossy(),
        )?;
        let description = plain_value(
            "the deployment id",
            &format!(
                "portswap app on port {port} (profile {}, deployment {})",
                launch.slot.profile, launch.deployment_id
            ),
        )?;
        let output = match self.systemd.output {
            Output::File => {
                let log = plain_value("the log file", &launch.log_file.to_string_lossy())?;
                format!("StandardOutput=append:{log}\nStandardError=append:{log}\n")
            }
            Output::Journal => "StandardOutput=journal\nStandardError=journal\n".to_string(),
        };
        let account = launch
            .account
            .as_ref()
            .map(|a| format!("User={}\nGroup={}\n", a.name, a.gid))
            .unwrap_or_default();
        // A user manager has no network.target and no multi-user.target: its boot target is
        // default.target, reached when the (lingering) user's manager starts.
        let (after, target) = match self.manager {
            Manager::System => ("After=network.target\n", "multi-user.target"),
            Manager::User => ("", "default.target"),
        };
        Ok(format!(
            "{MARKER} for slot {port}: `stop` and `start` manage this unit; edits are overwritten.\n\
             [Unit]\n\
             Description={description}\n\
             {after}\
             StartLimitIntervalSec=60\n\
             StartLimitBurst={burst}\n\
             \n\
             [Service]\n\
             Type=exec\n\
             ExecStart={exec}\n\
             WorkingDirectory={workdir}\n\
             {account}\
             Environment=\"PATH={path}\"\n\
             EnvironmentFile={env_file}\n\
             Environment={marker}\n\
             StandardInput=null\n\
             {output}\
             KillMode=control-group\n\
             TimeoutStopSec={grace}ms\n\
             Restart=on-failure\n\
             RestartSec={delay}ms\n\
             RemainAfterExit=yes\n\
             \n\
             [Install]\n\
             WantedBy={target}\n",
            burst = self.systemd.start_limit,
            exec = exec.join(" "),
            marker = quote_assignment(&marker),
            path = process::APP_PATH,
            grace = self.stop_grace.as_millis(),
            delay = self.systemd.restart_delay.as_millis(),
        ))
    }

    /// Makes the app log the unit appends to, as the app user's (like in process mode),
    /// through descriptors (never a planted link or FIFO). systemd itself opens
    /// `StandardOutput=append:` by path, as root, at every (re)start: a directory on that path
    /// that another user can change would let them point it at any file, so it is refused.
    fn prepare_log(&self, launch: &Launch) -> Result<()> {
        let log = &launch.log_file;
        let dir = log.parent().unwrap_or(Path::new("/"));
        let name = log.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some(who) = fsio::open_dir(dir, None)?.changeable_by_others {
            return Err(Refusal::SharedLogPath {
                log: log.to_path_buf(),
                who: who.to_string(),
            }
            .into());
        }
        let owner = launch.account.as_ref().map(|a| (a.uid, a.gid));
        fsio::open_append_in(dir, name, 0o640, owner)
            .map(drop)
            .map_err(|e| {
                SupervisorError::OpenLog {
                    source: Box::new(e),
                }
                .into()
            })
    }

    /// The program of `argv[0]` as an absolute path (systemd wants one).
    fn program(launch: &Launch) -> Result<PathBuf> {
        let program = process::resolve_program(&launch.argv[0])?;
        Ok(if program.is_absolute() {
            program
        } else {
            launch.workdir.join(program)
        })
    }

    /// The last lines of the app's output: its log file, or the unit's journal.
    fn output_tail(&self, record: &AppRecord, lines: usize) -> Vec<String> {
        match self.systemd.output {
            Output::File => applog::tail_since(&record.log_file, record.log_offset, lines),
            Output::Journal => {
                let unit = self.systemd.unit_name(record.port);
                systemctl::journal_tail(self.manager, &unit, record.started_at, lines)
            }
        }
    }

    /// The processes in the unit's cgroup (none while it has no cgroup).
    fn members(unit: &UnitCgroup) -> Vec<ProcId> {
        if unit.cgroup.is_none() {
            return Vec::new();
        }
        procfs::all_pids()
            .into_iter()
            .filter(|pid| *pid > 1 && unit.holds(*pid))
            .filter_map(ProcId::of)
            .collect()
    }

    /// The process of the unit's cgroup that started first.
    fn oldest_member(unit: &UnitCgroup) -> Option<ProcId> {
        SystemdSupervisor::members(unit)
            .into_iter()
            .min_by_key(|p| p.start_time)
    }
}

impl Supervisor for SystemdSupervisor {
    fn kind(&self) -> &'static str {
        self.manager.name()
    }

    fn holder(&self, port: u16) -> Holder {
        self.holder_of(port, &self.unit_cgroup(port))
    }

    fn stop(&self, port: u16, force: bool) -> Result<String> {
        let unit = self.systemd.unit_name(port);
        match self.holder_of(port, &self.unit_cgroup(port)) {
            Holder::Unidentified { reason } => {
                return Err(Refusal::Unidentified {
                    reason: reason.clone(),
                    untouched: "stopped",
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
                    command: command.clone(),
                    unit: Some(unit.to_string()),
                    other_state: other_state.clone(),
                }
                .into());
            }
            _ => {}
        }
        let mut done = Vec::new();
        if self.unit_file_is_ours(&unit) == Some(true) {
            let before = self.manager.show(&unit, WATCHED)?;
            let get = |k: &str| before.get(k);
            let running = !matches!(get("ActiveState"), "inactive" | "failed" | "?");
            if running || get("UnitFileState") == "enabled" {
                let started = std::time::Instant::now();
                self.manager.systemctl(
                    &["disable", "--now", "--", &unit],
                    crate::process::bounded(self.stop_grace + crate::process::KILL_WAIT),
                )?;
                done.push(format!(
                    "stopped and disabled {unit} ({} before) in {}",
                    get("SubState"),
                    show(started.elapsed())
                ));
            }
            let _ = self
                .manager
                .systemctl(&["reset-failed", "--", &unit], systemctl::CALL_LIMIT);
        }
        // What the unit did not hold: an app started the process way or by the legacy
        // scripts, or (with --force) a foreign process. Today's rules.
        let rest = self.process.stop(port, force)?;
        if done.is_empty() || !rest.starts_with("nothing runs") {
            done.push(rest);
        }
        Ok(done.join("; "))
    }

    fn start(&self, launch: &Launch) -> Result<AppRecord> {
        let port = launch.slot.port;
        let unit = self.systemd.unit_name(port);
        let unit_path = self.unit_path(&unit);
        if self.unit_file_is_ours(&unit) == Some(false) {
            return Err(Refusal::ForeignUnit {
                path: unit_path.to_path_buf(),
                marker: MARKER,
            }
            .into());
        }
        // Masked elsewhere (`systemctl mask --runtime` links it in /run): never unmasked.
        if self.manager.show(&unit, &["LoadState"])?.get("LoadState") == "masked" {
            return Err(Refusal::MaskedUnit {
                unit: unit.to_string(),
            }
            .into());
        }
        let program = SystemdSupervisor::program(launch)?;
        let text = self.render_unit(launch, &program)?;
        let env_path = self.env_path(&unit);
        if let Some(dir) = env_path.parent() {
            fsio::ensure_dir(dir, 0o700)?;
        }
        fsio::write_atomic(&env_path, environment_file(&launch.env).as_bytes(), 0o600)?;
        if self.systemd.output == Output::File {
            self.prepare_log(launch)?;
        }
        fsio::ensure_dir(&self.systemd.unit_dir, 0o755)?;
        fsio::write_atomic(&unit_path, text.as_bytes(), 0o644)?;
        log::info!("wrote {}", unit_path.display());
        let manager = self.manager;
        manager.systemctl(&["daemon-reload"], systemctl::CALL_LIMIT)?;
        manager.systemctl(
            &["enable", "--no-reload", "--", &unit],
            systemctl::CALL_LIMIT,
        )?;
        // A crash loop of an earlier version may have used up the start limit.
        let _ = manager.systemctl(&["reset-failed", "--", &unit], systemctl::CALL_LIMIT);
        let mut record = launch.record(0, 0);
        manager
            .systemctl(&["restart", "--", &unit], systemctl::CALL_LIMIT)
            .map_err(|e| {
                // The app may have crashed before the start job returned: say so as `gone` does
                // (its output and where to read more), not only that systemctl failed.
                if let Some(gone) = self.gone(&record) {
                    return Error::from(SupervisorError::Gone {
                        gone: Box::new(gone),
                    });
                }
                let tail = self.output_tail(&record, 1);
                SupervisorError::UnitStart {
                    source: Box::new(e),
                    last: tail.last().cloned(),
                }
                .into()
            })?;
        let props = manager.show(&unit, WATCHED)?;
        // A daemonizing app's main process has exited (MainPID 0): record the oldest process
        // left in the unit instead. A record never holds pid 0 or 1.
        let main = props
            .get("MainPID")
            .parse::<i32>()
            .ok()
            .and_then(ProcId::of)
            .filter(|p| p.pid > 1);
        let Some(process) =
            main.or_else(|| SystemdSupervisor::oldest_member(&self.unit_cgroup(port)))
        else {
            return Err(match self.gone(&record) {
                Some(gone) => SupervisorError::Gone {
                    gone: Box::new(gone),
                },
                None => SupervisorError::UnitEmpty {
                    unit: unit.to_string(),
                },
            }
            .into());
        };
        record.pid = process.pid;
        record.start_time = process.start_time;
        Ok(record)
    }

    fn gone(&self, record: &AppRecord) -> Option<AppGone> {
        if record.pid > 0 && record.process().is_alive() {
            return None;
        }
        let unit = self.systemd.unit_name(record.port);
        let props = self.manager.show(&unit, WATCHED).unwrap_or_default();
        let get = |k: &str| props.get(k);
        let how = match (get("ActiveState"), get("SubState")) {
            // The main process exited 0 and left the app behind (a daemonizing app).
            ("active", "exited")
                if !SystemdSupervisor::members(&self.unit_cgroup(record.port)).is_empty() =>
            {
                return None
            }
            ("failed", _) => GoneHow::UnitFailed {
                result: get("Result").to_string(),
                status: get("ExecMainStatus").to_string(),
                restarts: get("NRestarts").to_string(),
            },
            (_, "auto-restart") => GoneHow::Restarting {
                status: get("ExecMainStatus").to_string(),
                restarts: get("NRestarts").to_string(),
            },
            ("active" | "activating", _) if get("MainPID") != record.pid.to_string() => {
                GoneHow::Restarted {
                    pid: get("MainPID").to_string(),
                    restarts: get("NRestarts").to_string(),
                }
            }
            (active, sub) => GoneHow::UnitEnded {
                active: active.to_string(),
                sub: sub.to_string(),
            },
        };
        let mut tail = self.output_tail(record, 8);
        if self.systemd.output == Output::Journal {
            for line in &tail {
                log::error!("app output: {line}");
            }
        }
        let written = match self.systemd.output {
            Output::File => Written::UnitFile(record.log_file.clone()),
            Output::Journal => Written::Journal {
                unit: unit.to_string(),
                user: self.manager == Manager::User,
            },
        };
        Some(AppGone {
            port: record.port,
            pid: record.pid,
            unit: Some(unit.to_string()),
            how,
            last: tail.pop(),
            written,
        })
    }

    fn serves(&self, port: u16) -> std::result::Result<(), NotServing> {
        let unit = self.unit_cgroup(port);
        let record = self.state.app_record(port);
        let slot = ownership::Slot {
            port,
            state_dir: self.state.path(),
            record: record.as_ref(),
            unit: Some(&unit),
            app_uid: self.app_uid,
        };
        slot.serves()?;
        let outside: Vec<i32> = procfs::listeners(port)
            .into_iter()
            .filter(|pid| !unit.holds(*pid))
            .collect();
        match outside.first() {
            None => Ok(()),
            Some(&pid) => Err(NotServing::OutsideUnit {
                port,
                pid,
                command: procfs::describe(pid),
                unit: unit.name.clone(),
                cgroup: unit.cgroup.clone(),
            }),
        }
    }

    fn describe(&self, port: u16) -> Option<String> {
        let unit = self.systemd.unit_name(port);
        let props = self.manager.show(&unit, WATCHED).ok()?;
        let get = |k: &str| props.get(k);
        let kind = match self.manager {
            Manager::System => "unit",
            Manager::User => "user unit",
        };
        Some(format!(
            "{kind} {unit} {}/{} ({}), main pid {}, restarts {}",
            get("ActiveState"),
            get("SubState"),
            get("UnitFileState"),
            get("MainPID"),
            get("NRestarts")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Slot;
    use crate::users::Account;

    #[test]
    fn unit_file_carries_everything_and_no_secret() {
        let dir = std::env::temp_dir().join(format!("portswap-unit-test-{}", std::process::id()));
        let state = StateDir::open(&dir.join("state")).unwrap();
        let config = Config::parse(
            "app: { command: [app], supervisor: systemd }\nstop: { grace: 20s }\n\
             systemd: { restart_delay: 250ms, start_limit: 3 }",
            &dir.join("portswap.yml"),
        )
        .unwrap();
        let supervisor = SystemdSupervisor::new(&config, &state, Manager::System).unwrap();
        let launch = Launch {
            slot: Slot {
                port: 8081,
                profile: "real1".into(),
            },
            deployment_id: "d-100%".into(),
            argv: vec!["java".into(), "-Dx=$HOME %n".into(), "a \"b\"".into()],
            workdir: "/srv/app 50%".into(),
            env: vec![("DB_PASSWORD".into(), "hunter2".into())],
            log_file: "/var/log/app-8081.log".into(),
            log_offset: 0,
            account: Some(Account {
                name: "app".into(),
                uid: 1000,
                gid: 1001,
                home: "/home/app".into(),
                shell: "/bin/sh".into(),
            }),
            release_dir: dir.join("state/releases/d-1-8081"),
        };
        let text = supervisor
            .render_unit(&launch, Path::new("/usr/bin/java"))
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(text.starts_with(MARKER), "{text}");
        for line in [
            r#"ExecStart="/usr/bin/java" "-Dx=$$HOME %%n" "a \"b\"""#,
            "WorkingDirectory=/srv/app 50%%",
            "User=app",
            "Group=1001",
            "Description=portswap app on port 8081 (profile real1, deployment d-100%%)",
            "StandardOutput=append:/var/log/app-8081.log",
            "KillMode=control-group",
            "TimeoutStopSec=20000ms",
            "Restart=on-failure",
            "RestartSec=250ms",
            "StartLimitBurst=3",
            "WantedBy=multi-user.target",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        let marker = format!(
            "Environment=\"PORTSWAP_SLOT=8081:{}\"",
            state.path().display()
        );
        assert!(text.lines().any(|l| l == marker), "{text}");
        assert!(text.contains("EnvironmentFile=") && !text.contains("hunter2"));
    }
}
