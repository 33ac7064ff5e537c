//! What counts as *our* process: the one rule every hook and both supervisors use before
//! signalling anything, and before believing that the app answering on a port is the one
//! `start` launched.
//!
//! A process is ours for slot P only with proof, never because it runs the same interpreter
//! (`java`, `python3`) as the configured command:
//! - it is the process `start` recorded for P (pid and start time), or in its process group;
//! - its environment carries the marker `start` puts there (`PORTSWAP_SLOT=P:<state dir>`,
//!   read from `/proc/PID/environ`; inherited by wrapper children and daemonized children);
//! - it runs from our release directory (its executable or working directory lies under
//!   `<state dir>/releases/`);
//! - under systemd: its cgroup is slot P's unit (see [`Proof::Unit`]).
//!
//! A port whose holder cannot be read (another user's `/proc/PID/fd` without root) is
//! [`Holder::Unidentified`]: refused, never taken for free.

use std::fs;
use std::path::{Path, PathBuf};

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
            Holder::Foreign { pid, command } => Some(format!(
                "pid {pid} (`{command}`), which is not portswap's app, holds port {port}"
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
    /// The systemd unit of this slot, when the app is supervised by systemd.
    pub unit: Option<&'a str>,
}

impl Slot<'_> {
    fn releases(&self) -> PathBuf {
        let dir = self.state_dir.join("releases");
        fs::canonicalize(&dir).unwrap_or(dir)
    }

    /// The proof that `pid` is this slot's app, if there is one.
    pub fn proof(&self, pid: i32) -> Option<Proof> {
        if let Some(record) = self.record {
            let recorded = record.process();
            if recorded.pid == pid && recorded.is_alive() {
                return Some(Proof::Recorded);
            }
            // The group outlives its leader (a wrapper shell killed first): while any member
            // is left, the kernel never hands the leader's pid to another process, so the
            // group is ours unless that pid now names a process started at another time.
            let leader_ours = procfs::start_time(record.pid).is_none_or(|t| t == record.start_time);
            let in_group = leader_ours
                && procfs::parent_and_group(pid).is_some_and(|(_, group)| group == record.pid);
            if in_group {
                return Some(Proof::Recorded);
            }
        }
        if let Some(unit) = self.unit {
            if procfs::in_unit(pid, unit) {
                return Some(Proof::Unit(unit.to_string()));
            }
        }
        let marker = marker_value(self.state_dir, self.port);
        if procfs::environ_var(pid, MARKER_VAR).is_some_and(|v| v == marker) {
            return Some(Proof::Marker);
        }
        let releases = self.releases();
        let under = |p: Option<PathBuf>| {
            p.map(|p| fs::canonicalize(&p).unwrap_or(p))
                .is_some_and(|p| p.starts_with(&releases))
        };
        if under(procfs::exe(pid)) || under(procfs::cwd(pid)) {
            return Some(Proof::Release);
        }
        None
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
            return match self.record.map(AppRecord::process) {
                Some(process) if process.is_alive() => Holder::Ours {
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
        if let Some(process) = self.record.map(AppRecord::process) {
            let held = procfs::socket_inodes(process.pid);
            if inodes.iter().all(|i| held.contains(i)) && process.is_alive() {
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

    /// True when every process listening on the port is ours (and at least one listens):
    /// what `health` and `switch` require before trusting an answer on the port.
    pub fn serves(&self) -> Result<(), String> {
        let inodes = procfs::listening_inodes(self.port);
        if inodes.is_empty() {
            return Err(format!("nothing listens on port {}", self.port));
        }
        match self.holder_of(&inodes) {
            Holder::Ours { .. } => Ok(()),
            Holder::Free => Err(format!("nothing listens on port {}", self.port)),
            Holder::Foreign { pid, command } => Err(format!(
                "port {} is answered by pid {pid} (`{command}`), not by the app start launched",
                self.port
            )),
            Holder::Unidentified { reason } => Err(reason),
        }
    }
}
