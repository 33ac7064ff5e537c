//! What counts as *our* process: the one rule every hook and both supervisors use before
//! signalling anything, and before believing that the app answering on a port is the one
//! `start` launched.
//!
//! A process is ours for slot P only with proof resting on facts a local user cannot set,
//! never because it runs the same interpreter (`java`, `python3`) as the configured command.
//! Every proof first needs the process's uids (real, effective, saved, filesystem) to be
//! root's or the app's (the recorded app's, or `app.user`'s / the hook user's): another user's
//! process is never ours, whatever it carries. Then one of:
//! - it is the process `start` recorded for P (pid and start time);
//! - it is in the recorded process group, while that group's leader still runs as recorded,
//!   or, once the leader is gone, while it also carries the slot's marker (a pid freed by the
//!   dead leader may lead an unrelated group by now);
//! - its environment carries the marker `start` puts there (`PORTSWAP_SLOT=P:<state dir>`,
//!   read from `/proc/PID/environ`; inherited by wrapper children and daemonized children);
//! - it runs from this slot's own release (its executable or working directory lies under
//!   the recorded release directory, or, without a record, a `<state>/releases/*-P`
//!   directory);
//! - under systemd: its cgroup is, in full, the cgroup systemd reports for slot P's unit
//!   (`ControlGroup`, from the manager that runs the unit; see [`Proof::Unit`]). A cgroup
//!   that merely ends with the unit's name (a user unit of that name, a cgroup delegated to
//!   a user) proves nothing.
//!
//! No pid ≤ 1 is ever ours (a record never holds one). A port whose holder cannot be read
//! (another user's `/proc/PID/fd` without root) is [`Holder::Unidentified`]: refused, never
//! taken for free.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::NotServing;
use crate::procfs::{self, ProcId};
use crate::state::AppRecord;

/// Environment variable `start` sets for the app; its value is [`marker_value`].
pub const MARKER_VAR: &str = "PORTSWAP_SLOT";

/// The marker of slot `port` of the host whose state directory is `state_dir`.
pub fn marker_value(state_dir: &Path, port: u16) -> String {
    format!("{port}:{}", state_dir.display())
}

/// Why a process counts as ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// The pid `start` recorded (same start time), or a member of its process group.
    Recorded,
    /// Its environment carries the slot's marker.
    Marker,
    /// Its executable or working directory lies under the release directory.
    Release,
    /// Its cgroup is the slot's systemd unit (named here).
    Unit(String),
}

/// A slot's systemd unit and the cgroup its manager runs it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitCgroup {
    /// The unit's name, e.g. `portswap-8081.service`.
    pub name: String,
    /// Its `ControlGroup` (`None` while it is not running: then nothing is in it).
    pub cgroup: Option<String>,
}

impl UnitCgroup {
    /// True when `pid` runs in exactly this unit's cgroup.
    pub fn holds(&self, pid: i32) -> bool {
        self.cgroup
            .as_deref()
            .is_some_and(|group| procfs::cgroup(pid).as_deref() == Some(group))
    }
}

/// Who holds a slot's port (or, with nothing listening, a recorded app that still runs).
#[derive(Debug, Clone)]
pub enum Holder {
    /// Nothing listens and nothing of ours runs.
    Free,
    /// Our app, and why we know.
    Ours {
        /// The process (the first one found listening, else the recorded one).
        process: ProcId,
        /// The evidence.
        proof: Proof,
    },
    /// A process that is provably not ours listens on the port.
    Foreign {
        /// Its pid.
        pid: i32,
        /// Its command line.
        command: String,
        /// The state directory named by the portswap marker it carries, when it is another
        /// configuration's app (another `state.dir`, e.g. one that was relative).
        other_state: Option<PathBuf>,
    },
    /// Something listens, but its process cannot be inspected (no permission to read its
    /// `/proc/PID/fd` or environment): neither free nor provably ours.
    Unidentified {
        /// What could not be read.
        reason: String,
    },
}

impl Holder {
    /// `None` when the port is free; else who holds it, in words, for a refusal.
    pub fn taken(&self, port: u16) -> Option<String> {
        match self {
            Holder::Free => None,
            Holder::Ours { process, proof } => Some(format!(
                "pid {} of this slot holds it ({proof:?})",
                process.pid
            )),
            Holder::Foreign {
                pid,
                command,
                other_state,
            } => Some(format!(
                "pid {pid} (`{command}`), which is not portswap's app{}, holds port {port}",
                other_state
                    .as_ref()
                    .map(|dir| format!(" of this state.dir (it is that of {})", dir.display()))
                    .unwrap_or_default()
            )),
            Holder::Unidentified { reason } => Some(reason.clone()),
        }
    }
}

/// The facts that decide ownership for one slot.
#[derive(Debug, Clone)]
pub struct Slot<'a> {
    /// The slot's port.
    pub port: u16,
    /// The state directory (marker and release directory derive from it).
    pub state_dir: &'a Path,
    /// What `start` recorded for this slot, if anything.
    pub record: Option<&'a AppRecord>,
    /// The systemd unit of this slot (with its cgroup), when the app runs in one.
    pub unit: Option<&'a UnitCgroup>,
    /// The uid the app is configured to run as (`app.user` for a root hook, else the hook's
    /// own), when known; root's and the recorded app's are accepted too.
    pub app_uid: Option<u32>,
}

impl Slot<'_> {
    fn releases(&self) -> PathBuf {
        let dir = self.state_dir.join("releases");
        fs::canonicalize(&dir).unwrap_or(dir)
    }

    /// True when every uid of `pid` is root's or the app's.
    fn uid_ok(&self, pid: i32) -> bool {
        let recorded = self.record.and_then(|r| r.uid);
        procfs::uids(pid).is_some_and(|ids| {
            ids.iter()
                .all(|id| *id == 0 || Some(*id) == self.app_uid || Some(*id) == recorded)
        })
    }

    /// True when `path` lies in this slot's own release: the recorded one, or without a
    /// record any `<releases>/<deployment>-<port>` directory.
    fn in_own_release(&self, path: &Path) -> bool {
        let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(record) = self.record {
            let dir = fs::canonicalize(&record.release_dir).unwrap_or(record.release_dir.clone());
            return path.starts_with(dir);
        }
        let suffix = format!("-{}", self.port);
        path.strip_prefix(self.releases())
            .ok()
            .and_then(|rest| rest.components().next())
            .is_some_and(|first| first.as_os_str().to_string_lossy().ends_with(&suffix))
    }

    /// The state directory in the portswap marker `pid` carries, when that is not this
    /// slot's: the app of another configuration (another `state.dir`).
    pub fn other_state_of(&self, pid: i32) -> Option<PathBuf> {
        let value = procfs::environ_var(pid, MARKER_VAR)?;
        let (_, dir) = value.split_once(':')?;
        let dir = PathBuf::from(dir);
        let same = |a: &Path, b: &Path| {
            a == b
                || fs::canonicalize(a)
                    .ok()
                    .is_some_and(|a| fs::canonicalize(b).ok() == Some(a))
        };
        (!same(&dir, self.state_dir)).then_some(dir)
    }

    fn carries_marker(&self, pid: i32) -> bool {
        let marker = marker_value(self.state_dir, self.port);
        procfs::environ_var(pid, MARKER_VAR).is_some_and(|v| v == marker)
    }

    /// The proof that `pid` is this slot's app, if there is one.
    pub fn proof(&self, pid: i32) -> Option<Proof> {
        if pid <= 1 || !self.uid_ok(pid) {
            return None;
        }
        if let Some(record) = self.record.filter(|r| r.pid > 1) {
            let recorded = record.process();
            if recorded.pid == pid && recorded.is_alive() {
                return Some(Proof::Recorded);
            }
            // The group outlives its leader (a wrapper shell killed first). While the leader
            // runs as recorded, its group is ours; once it is gone, its pid may lead an
            // unrelated group (a daemon that forked and called setsid), so a member then
            // needs the marker as well.
            let in_group =
                procfs::parent_and_group(pid).is_some_and(|(_, group)| group == record.pid);
            let leader_runs = procfs::start_time(record.pid) == Some(record.start_time);
            if in_group && (leader_runs || self.carries_marker(pid)) {
                return Some(Proof::Recorded);
            }
        }
        if let Some(unit) = self.unit.filter(|u| u.holds(pid)) {
            return Some(Proof::Unit(unit.name.clone()));
        }
        if self.carries_marker(pid) {
            return Some(Proof::Marker);
        }
        let runs_from_release = |p: Option<PathBuf>| p.is_some_and(|p| self.in_own_release(&p));
        if runs_from_release(procfs::exe(pid)) || runs_from_release(procfs::cwd(pid)) {
            return Some(Proof::Release);
        }
        None
    }

    /// The recorded app, when it runs as recorded (and passes [`Slot::proof`]).
    fn recorded_running(&self) -> Option<ProcId> {
        let process = self.record?.process();
        (process.is_alive() && self.proof(process.pid) == Some(Proof::Recorded)).then_some(process)
    }

    /// Who holds the port now.
    pub fn holder(&self) -> Holder {
        self.holder_of(&procfs::listening_inodes(self.port))
    }

    /// Who holds the port, given the inodes of the sockets listening on it.
    fn holder_of(&self, inodes: &[u64]) -> Holder {
        if inodes.is_empty() {
            // Nothing listens: the recorded app, or whatever of ours is left (a wrapper's
            // child, a daemonized child that has not bound yet), still counts.
            return match self.recorded_running() {
                Some(process) => Holder::Ours {
                    process,
                    proof: Proof::Recorded,
                },
                _ => self
                    .members()
                    .into_iter()
                    .find_map(|process| {
                        let proof = self.proof(process.pid)?;
                        Some(Holder::Ours { process, proof })
                    })
                    .unwrap_or(Holder::Free),
            };
        }
        // The usual case, without looking through every process: the recorded app itself
        // holds every listening socket.
        if let Some(process) = self.recorded_running() {
            let held = procfs::socket_inodes(process.pid);
            if inodes.iter().all(|i| held.contains(i)) {
                return Holder::Ours {
                    process,
                    proof: Proof::Recorded,
                };
            }
        }
        let pids = procfs::listeners(self.port);
        let mut foreign = None;
        for pid in &pids {
            let Some(process) = ProcId::of(*pid) else {
                continue;
            };
            if let Some(proof) = self.proof(*pid) {
                return Holder::Ours { process, proof };
            }
            foreign.get_or_insert(Holder::Foreign {
                pid: *pid,
                command: procfs::describe(*pid),
                other_state: self.other_state_of(*pid),
            });
        }
        foreign.unwrap_or_else(|| Holder::Unidentified {
            reason: format!(
                "port {} is listened on, but no process visible to uid {} holds the socket \
                 (another user's process; run the hooks as root or as that user)",
                self.port,
                nix::unistd::geteuid()
            ),
        })
    }

    /// Every running process of ours for this slot (the recorded group and every process
    /// carrying the marker), for a stop that must leave nothing behind.
    pub fn members(&self) -> Vec<ProcId> {
        let me = std::process::id() as i32;
        procfs::all_pids()
            .into_iter()
            .filter(|pid| *pid != me)
            .filter(|pid| {
                matches!(
                    self.proof(*pid),
                    Some(Proof::Recorded | Proof::Marker | Proof::Unit(_))
                )
            })
            .filter_map(ProcId::of)
            .collect()
    }

    /// `Ok` when every socket listening on the port is held by a process of ours (and at
    /// least one listens): what `health` and `switch` require before trusting an answer on
    /// the port. A co-listener (SO_REUSEPORT) that is not ours, or a listening socket no
    /// visible process holds, refuses: the kernel would split the traffic.
    pub fn serves(&self) -> Result<(), NotServing> {
        let inodes = procfs::listening_inodes(self.port);
        if inodes.is_empty() {
            return Err(NotServing::Nothing { port: self.port });
        }
        if let Some(process) = self.recorded_running() {
            let held = procfs::socket_inodes(process.pid);
            if inodes.iter().all(|i| held.contains(i)) {
                return Ok(());
            }
        }
        let mut held = Vec::new();
        for pid in procfs::listeners(self.port) {
            if self.proof(pid).is_none() {
                return Err(NotServing::Foreign {
                    port: self.port,
                    pid,
                    command: procfs::describe(pid),
                });
            }
            held.extend(procfs::socket_inodes(pid));
        }
        if held.is_empty() || !inodes.iter().all(|i| held.contains(i)) {
            return Err(match self.holder_of(&inodes) {
                Holder::Unidentified { reason } => NotServing::Unidentified { reason },
                _ => NotServing::Hidden {
                    port: self.port,
                    uid: nix::unistd::geteuid().as_raw(),
                },
            });
        }
        Ok(())
    }
}

/// `Ok` when `pid` is an nginx master that the hook may signal, proven by what the kernel
/// says rather than by its command line (which any process can set): its executable is named
/// `nginx*`, it runs as root or as the hook's user, it holds a listening TCP socket, and it
/// has a child running the same executable (a worker). A hook that is not root cannot read
/// root's master's executable or sockets (nor signal it: it reloads through
/// `nginx.reload_command`); for it root's master needs its title and a worker. Else why not,
/// for the refusal.
pub fn nginx_master(pid: i32) -> Result<(), String> {
    if pid <= 1 || ProcId::of(pid).is_none() {
        return Err("gone".into());
    }
    let me = nix::unistd::geteuid().as_raw();
    let describe = || format!("`{}`", procfs::describe(pid));
    let Some(uids) = procfs::uids(pid) else {
        return Err("gone".into());
    };
    let has_children = !procfs::children(pid).is_empty();
    if me != 0 && uids.iter().all(|id| *id == 0) {
        let titled = procfs::cmdline(pid)
            .join(" ")
            .contains("nginx: master process");
        return match titled && has_children {
            true => Ok(()),
            false => Err(format!("{}, not an nginx master with workers", describe())),
        };
    }
    if !uids.iter().all(|id| *id == me) {
        return Err(format!("{}, run by another user", describe()));
    }
    let exe = procfs::exe(pid);
    let named_nginx = exe
        .as_ref()
        .and_then(|e| e.file_name())
        .is_some_and(|n| n.to_string_lossy().starts_with("nginx"));
    if !named_nginx {
        return Err(format!("{}, whose executable is not nginx", describe()));
    }
    let listening: Vec<u64> = crate::sockdiag::listening_sockets()
        .map(|all| all.into_iter().map(|(_, inode)| inode).collect())
        .unwrap_or_default();
    if !procfs::socket_inodes(pid)
        .iter()
        .any(|i| listening.contains(i))
    {
        return Err(format!("{}, which listens on no port", describe()));
    }
    if !procfs::children(pid)
        .into_iter()
        .any(|c| procfs::exe(c) == exe)
    {
        return Err(format!("{}, which has no worker", describe()));
    }
    Ok(())
}
