//! What /proc says about processes and listening sockets (no lsof needed).

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::sockdiag;

/// A process identified by pid and start time, so that a reused pid is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId {
    /// Process id.
    pub pid: i32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat).
    pub start_time: u64,
}

/// The fields of /proc/PID/stat after the command name.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_string).collect())
}

impl ProcId {
    /// The running process `pid`, if it exists and is not a zombie.
    pub fn of(pid: i32) -> Option<ProcId> {
        let fields = stat_fields(pid)?;
        // fields[0] is field 3 (state); start time is field 22.
        if fields.first().map(String::as_str) == Some("Z") {
            return None;
        }
        Some(ProcId {
            pid,
            start_time: fields.get(19)?.parse().ok()?,
        })
    }

    /// True while this very process (same pid and start time) runs and is not a zombie.
    pub fn is_alive(&self) -> bool {
        ProcId::of(self.pid).is_some_and(|now| now.start_time == self.start_time)
    }
}

/// The start time of `pid` (zombies included), when it exists.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Clock ticks per second of /proc's start times (USER_HZ: 100 on every Linux ABI).
const TICKS_PER_SECOND: u64 = 100;

/// When `pid` started, on the wall clock (to within a clock tick, never later than the
/// truth): its start time since boot plus when the machine booted.
pub fn started_at(pid: i32) -> Option<std::time::SystemTime> {
    use nix::time::{clock_gettime, ClockId};
    let ticks = start_time(pid)?;
    let since_boot =
        |t: nix::sys::time::TimeSpec| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32);
    let boot_age = since_boot(clock_gettime(ClockId::CLOCK_BOOTTIME).ok()?);
    let booted = std::time::SystemTime::now().checked_sub(boot_age)?;
    let age_at_start = Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND);
    booted.checked_add(age_at_start)
}

/// The parent pid and process group of `pid`.
pub fn parent_and_group(pid: i32) -> Option<(i32, i32)> {
    let fields = stat_fields(pid)?;
    Some((fields.get(1)?.parse().ok()?, fields.get(2)?.parse().ok()?))
}

/// The real, effective, saved and filesystem uids of `pid` (the `Uid:` line of
/// /proc/PID/status), when readable.
pub fn uids(pid: i32) -> Option<[u32; 4]> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let ids: Vec<u32> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    ids.try_into().ok()
}

/// Whether `pid` blocks signal number `signal` now (the `SigBlk:` mask of
/// /proc/PID/status); `None` when unreadable.
pub fn blocks_signal(pid: i32, signal: i32) -> Option<bool> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = text.lines().find_map(|l| l.strip_prefix("SigBlk:"))?.trim();
    let mask = u64::from_str_radix(mask, 16).ok()?;
    let bit = u32::try_from(signal).ok()?.checked_sub(1)?;
    Some(mask.checked_shr(bit)? & 1 == 1)
}

/// The argv of `pid` (for nginx: its process title), empty when unreadable.
pub fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The executable of `pid`, when readable.
pub fn exe(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// The working directory of `pid`, when readable.
pub fn cwd(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// The value of environment variable `name` in `pid`'s initial environment, when readable
/// (only for our own uid, or as root).
pub fn environ_var(pid: i32, name: &str) -> Option<String> {
    let bytes = fs::read(format!("/proc/{pid}/environ")).ok()?;
    bytes.split(|b| *b == 0).find_map(|entry| {
        let rest = entry.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        Some(String::from_utf8_lossy(rest).into_owned())
    })
}

/// `pid`'s cgroup in systemd's hierarchy: the v1 `name=systemd` line when there is one
/// (legacy and hybrid hosts), else the v2 `0::` line; e.g. `/system.slice/nginx.service`.
pub fn cgroup(pid: i32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = |wanted: &dyn Fn(&str, &str) -> bool| {
        text.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            wanted(id, controllers).then(|| path.to_string())
        })
    };
    path(&|_, c| c == "name=systemd").or_else(|| path(&|id, c| id == "0" && c.is_empty()))
}

/// All pids in /proc.
pub fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The children of `parent`: from the kernel's per-thread `children` lists (microseconds),
/// else, where the kernel lacks them (no CONFIG_PROC_CHILDREN), from every process's parent
/// (milliseconds on a host with a few hundred processes).
pub fn children(parent: i32) -> Vec<i32> {
    if let Ok(tasks) = fs::read_dir(format!("/proc/{parent}/task")) {
        let mut found = Vec::new();
        let mut listed = false;
        for task in tasks.flatten() {
            if let Ok(text) = fs::read_to_string(task.path().join("children")) {
                listed = true;
                found.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
        if listed {
            return found;
        }
    }
    all_pids()
        .into_iter()
        .filter(|p| parent_and_group(*p).is_some_and(|(ppid, _)| ppid == parent))
        .collect()
}

/// Socket inodes listening on TCP `port` (IPv4 and IPv6, any address). Asks the kernel for
/// listening sockets only (netlink socket diagnostics, as `ss -l` does): /proc/net/tcp lists
/// every connection of the host and takes tens of milliseconds per read on a busy one. Falls
/// back to /proc/net/tcp where netlink is not available.
pub fn listening_inodes(port: u16) -> Vec<u64> {
    sockdiag::listening_inodes(port).unwrap_or_else(|e| {
        log::debug!("socket diagnostics unavailable ({e}); reading /proc/net/tcp");
        proc_net_listening_inodes(port)
    })
}

fn proc_net_listening_inodes(port: u16) -> Vec<u64> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                if let Ok(inode) = inode.parse() {
                    inodes.push(inode);
                }
            }
        }
    }
    inodes
}

/// True when something listens on TCP `port`.
pub fn port_in_use(port: u16) -> bool {
    !listening_inodes(port).is_empty()
}

/// The inodes of the sockets `pid` holds open (empty when its descriptors are unreadable).
pub fn socket_inodes(pid: i32) -> Vec<u64> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| {
            let target = fs::read_link(fd.path()).ok()?;
            let text = target.to_str()?;
            text.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The processes holding a socket that listens on `port`.
pub fn listeners(port: u16) -> Vec<i32> {
    let wanted = listening_inodes(port);
    if wanted.is_empty() {
        return Vec::new();
    }
    all_pids()
        .into_iter()
        .filter(|pid| socket_inodes(*pid).iter().any(|i| wanted.contains(i)))
        .collect()
}

/// The command of `pid` as one line for messages.
pub fn describe(pid: i32) -> String {
    let argv = cmdline(pid);
    let text = if argv.is_empty() {
        "?".to_string()
    } else {
        argv.join(" ")
    };
    text.chars().take(160).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_blocked_signal_from_the_mask() {
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new("sleep");
        command.arg("30");
        // SAFETY: between fork and exec only sigprocmask runs (async-signal-safe).
        unsafe {
            command.pre_exec(|| {
                let mut set = nix::sys::signal::SigSet::empty();
                set.add(nix::sys::signal::Signal::SIGUSR2);
                set.thread_block().map_err(std::io::Error::from)
            });
        }
        let mut child = command.spawn().unwrap();
        let pid = child.id() as i32;
        let seen = [nix::libc::SIGUSR2, nix::libc::SIGUSR1, 0].map(|s| blocks_signal(pid, s));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(seen, [Some(true), Some(false), None]);
    }

    #[test]
    fn sees_itself_and_its_listener() {
        let me = ProcId::of(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        assert!(!ProcId {
            start_time: me.start_time + 1,
            ..me
        }
        .is_alive());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(port_in_use(port));
        assert_eq!(
            sockdiag::listening_inodes(port).unwrap(),
            proc_net_listening_inodes(port)
        );
        assert_eq!(listeners(port), vec![me.pid]);
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(children(me.pid).contains(&(child.id() as i32)));
        child.kill().unwrap();
        child.wait().unwrap();
        drop(listener);
        assert!(!port_in_use(port));
        if let Ok(v6) = std::net::TcpListener::bind("[::1]:0") {
            let port = v6.local_addr().unwrap().port();
            assert_eq!(listeners(port), vec![me.pid]);
        }
    }
}
