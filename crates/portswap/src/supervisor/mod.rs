//! Who keeps the app running on a slot. `process`: a detached process in its own session
//! that nothing restarts (the hook's own doing). `systemd`: a unit per slot, restarted on a
//! crash and back after a reboot. Both decide what is theirs through [`crate::ownership`];
//! [`for_config`] picks one from `app.supervisor`.

pub mod process;
pub mod systemd;

use std::path::PathBuf;

use crate::config::{Config, Slot, SupervisorChoice};
use crate::error::{AppGone, ConfigError, NotServing, Result};
use crate::ownership::Holder;
use crate::state::{AppRecord, StateDir};
use crate::systemctl::Manager;
use crate::users::Account;

/// Everything needed to start the app on a slot, placeholders already expanded.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The slot.
    pub slot: Slot,
    /// The deployment starting it.
    pub deployment_id: String,
    /// argv; `argv[0]` is resolved through PATH.
    pub argv: Vec<String>,
    /// Working directory.
    pub workdir: PathBuf,
    /// Extra environment (values are never logged).
    pub env: Vec<(String, String)>,
    /// Log file that receives stdout and stderr (appended).
    pub log_file: PathBuf,
    /// Length of the log file before the launch (see [`AppRecord::log_offset`]).
    pub log_offset: u64,
    /// Account to run as (only when the hook runs as root).
    pub account: Option<Account>,
    /// The release directory it runs from.
    pub release_dir: PathBuf,
}

impl Launch {
    /// The uid the app runs as: `app.user`'s for a root hook, else the hook's own.
    pub fn uid(&self) -> u32 {
        self.account
            .as_ref()
            .map_or_else(|| nix::unistd::geteuid().as_raw(), |a| a.uid)
    }

    /// What `start` records about this launch once the app runs as `pid` (started at
    /// `start_time`, in clock ticks since boot).
    pub fn record(&self, pid: i32, start_time: u64) -> AppRecord {
        AppRecord {
            pid,
            start_time,
            port: self.slot.port,
            profile: self.slot.profile.clone(),
            deployment_id: self.deployment_id.clone(),
            command: self.argv.clone(),
            release_dir: self.release_dir.clone(),
            log_file: self.log_file.clone(),
            log_offset: self.log_offset,
            started_at: crate::state::now_secs(),
            uid: Some(self.uid()),
        }
    }
}

/// A way of running the app on a slot.
pub trait Supervisor {
    /// `process` or `systemd`, for verdicts and the status view.
    fn kind(&self) -> &'static str;

    /// Who holds the slot on `port`.
    fn holder(&self, port: u16) -> Holder;

    /// Stops everything of ours on the slot and forgets its record; a foreign or
    /// unidentified holder is refused unless `force`. Returns what was done, in one line.
    fn stop(&self, port: u16, force: bool) -> Result<String>;

    /// Starts the app; returns what to record (the caller saves it). Returns once the app
    /// is launched, not once it is healthy.
    fn start(&self, launch: &Launch) -> Result<AppRecord>;

    /// `None` while the app of `record` runs as started; else why not (exited, restarted by
    /// its supervisor), in one line naming its last log line.
    fn gone(&self, record: &AppRecord) -> Option<AppGone>;

    /// `Ok` when what listens on `port` is the app of this slot (so an answer there is its
    /// answer); else why not.
    fn serves(&self, port: u16) -> std::result::Result<(), NotServing>;

    /// What the supervisor itself knows about the slot beyond the record, in one line, for
    /// the status view (systemd: the unit's state, also after a reboot); `None` when it
    /// knows nothing more (process).
    fn describe(&self, _port: u16) -> Option<String> {
        None
    }

    /// What the verdict of `start` must add about the app `record` names, in one line: that
    /// it stays in the cgroup of the unit that ran the hook (the CodeDeploy agent's) and dies
    /// when that unit stops; `None` when it lives in a cgroup of its own.
    fn caveat(&self, record: &AppRecord) -> Option<String> {
        crate::cgroups::shared_with_hook(record.pid)
    }
}

/// The uid the configured app runs as (`app.user` for a root hook, else the hook's own),
/// when it can be known; [`crate::ownership::Slot::app_uid`].
pub fn app_uid(config: &Config) -> Option<u32> {
    let me = nix::unistd::geteuid();
    match &config.app.user {
        Some(user) if me.is_root() => crate::users::lookup(user).ok().map(|a| a.uid),
        _ => Some(me.as_raw()),
    }
}

/// The supervisor the configuration asks for.
///
/// `auto`: on a host that systemd runs, system units when the hook runs as root (and the
/// unit directory exists); user units of the hook's user when it runs as a user whose own
/// manager answers (`loginctl enable-linger USER` keeps it running, also after a reboot);
/// else process, whose verdict then says, every time, that the app stays in the hook's
/// cgroup (see [`Supervisor::caveat`]). `systemd` as a user whose manager does not answer is
/// refused (exit 2) naming the fix.
pub fn for_config(config: &Config, state: &StateDir) -> Result<Box<dyn Supervisor>> {
    let root = nix::unistd::geteuid().is_root();
    let manager = match config.app.supervisor {
        SupervisorChoice::Process => None,
        SupervisorChoice::Auto if !crate::systemctl::booted() => None,
        SupervisorChoice::Auto if root => {
            config.systemd.unit_dir.is_dir().then_some(Manager::System)
        }
        SupervisorChoice::Auto => {
            crate::systemctl::user_manager_reachable().then_some(Manager::User)
        }
        SupervisorChoice::Systemd if !crate::systemctl::booted() => {
            return Err(ConfigError::key(
                &config.path,
                "app.supervisor",
                "systemd, but systemd does not run this host (/run/systemd/system is missing); \
                 use `process` or `auto`",
            )
            .into());
        }
        SupervisorChoice::Systemd if root => Some(Manager::System),
        SupervisorChoice::Systemd if crate::systemctl::user_manager_reachable() => {
            Some(Manager::User)
        }
        SupervisorChoice::Systemd => {
            return Err(ConfigError::key(
                &config.path,
                "app.supervisor",
                format_args!(
                    "systemd, but the hook runs as {} and that user's systemd manager does not \
                     answer (/run/user/{}/systemd/private); run `sudo loginctl enable-linger {}` \
                     once, so it runs (also after a reboot)",
                    user_name(),
                    nix::unistd::geteuid(),
                    user_name()
                ),
            )
            .into());
        }
    };
    Ok(match manager {
        Some(manager) => Box::new(systemd::SystemdSupervisor::new(config, state, manager)?),
        None => Box::new(process::ProcessSupervisor::new(config, state)),
    })
}

/// The hook's user, by name when /etc/passwd has it.
pub fn user_name() -> String {
    let uid = nix::unistd::geteuid().to_string();
    crate::users::lookup(&uid).map(|a| a.name).unwrap_or(uid)
}
