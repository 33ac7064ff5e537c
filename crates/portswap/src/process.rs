//! Starting the app detached from the hook, and stopping it: SIGTERM, grace, SIGKILL.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::{Error, Result, SupervisorError};
use crate::fsio;
use crate::procfs::{self, ProcId};
use crate::users::Account;

/// What to run and how.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// argv, placeholders already expanded.
    pub argv: Vec<String>,
    /// Working directory.
    pub workdir: PathBuf,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Log file that receives stdout and stderr (appended).
    pub log_file: PathBuf,
    /// Account to drop to (only when running as root).
    pub account: Option<Account>,
    /// A transient scope to start the app in (`systemd-run --scope --unit=NAME`, hooks as
    /// root on a host systemd runs), so it leaves the cgroup of the service that ran the
    /// hook; `None`: the app stays in the hook's cgroup.
    pub scope: Option<String>,
}

/// `PATH` of the app in both supervisors (systemd's default for services, written into the
/// unit too): the app never inherits the hook's environment.
pub const APP_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Resolves a program name through PATH plus the usual system directories (hooks run with
/// a near-empty PATH).
pub fn resolve_program(program: &str) -> Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let mut path = std::env::var("PATH").unwrap_or_default();
    path.push_str(":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    which::which_in(program, Some(path), cwd).map_err(|_| {
        Error::from(SupervisorError::ProgramNotFound {
            program: program.to_string(),
        })
    })
}

/// Marks every inherited descriptor above stderr close-on-exec so the app inherits none.
fn close_inherited_descriptors() {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds.into_iter().filter(|fd| *fd > 2) {
        // SAFETY: fcntl on a descriptor number only changes its flags; unknown ones fail harmlessly.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

/// Opens the app log for appending under its directory, never through a link, and hands
/// the open file to the app's account (see [`fsio::open_append_in`]).
fn open_log(spec: &LaunchSpec) -> Result<fs::File> {
    let path = &spec.log_file;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(SupervisorError::LogPath {
            path: path.to_path_buf(),
        }
        .into());
    };
    let owner = spec.account.as_ref().map(|a| (a.uid, a.gid));
    fsio::open_append_in(dir, name, 0o640, owner).map_err(|e| {
        SupervisorError::OpenLog {
            source: Box::new(e),
        }
        .into()
    })
}

/// Starts the app in a new session, stdin from /dev/null, stdout/stderr appended to its log.
pub fn launch(spec: &LaunchSpec) -> Result<Child> {
    let program = resolve_program(&spec.argv[0])?;
    let log = open_log(spec)?;
    let log_err = log
        .try_clone()
        .map_err(|e| Error::io("cannot open app log", &spec.log_file, e))?;
    close_inherited_descriptors();
    // The account's supplementary groups, as systemd's `User=` gives them (std's `uid`
    // would clear them).
    let groups: Option<Vec<libc::gid_t>> = spec
        .account
        .as_ref()
        .map(|a| crate::users::groups(&a.name, a.gid));
    let mut command = match &spec.scope {
        None => {
            let mut command = Command::new(&program);
            command.args(&spec.argv[1..]);
            if let (Some(account), Some(groups)) = (&spec.account, groups) {
                let (uid, gid) = (account.uid, account.gid);
                // SAFETY: setgroups, setgid and setuid are async-signal-safe; `groups` was
                // allocated before the fork and is only read. Groups first, then gid, then uid.
                unsafe {
                    command.pre_exec(move || {
                        for result in [
                            libc::setgroups(groups.len(), groups.as_ptr()),
                            libc::setgid(gid),
                            libc::setuid(uid),
                        ] {
                            if result != 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                        }
                        Ok(())
                    });
                }
            }
            command
        }
        // systemd-run registers its own pid as the scope, then drops to the account and
        // execs the app: the recorded pid is the app's.
        Some(scope) => {
            let mut command = Command::new(resolve_program("systemd-run")?);
            command.args(["--scope", "--quiet", "--collect"]);
            command.arg(format!("--unit={scope}"));
            if let (Some(account), Some(groups)) = (&spec.account, groups) {
                command.arg(format!("--uid={}", account.uid));
                command.arg(format!("--gid={}", account.gid));
                // SAFETY: setgroups is async-signal-safe; `groups` was allocated before the
                // fork. Root's own groups are replaced by the account's before systemd-run
                // drops the uid.
                unsafe {
                    command.pre_exec(move || {
                        match libc::setgroups(groups.len(), groups.as_ptr()) {
                            0 => Ok(()),
                            _ => Err(std::io::Error::last_os_error()),
                        }
                    });
                }
            }
            command.arg("--").arg(&program).args(&spec.argv[1..]);
            command
        }
    };
    command
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .env_clear()
        .env("PATH", APP_PATH);
    let user = spec.account.clone().or_else(|| {
        let me = nix::unistd::geteuid();
        (!me.is_root())
            .then(|| crate::users::lookup(&me.to_string()).ok())
            .flatten()
    });
    if let Some(user) = user {
        command
            .env("HOME", &user.home)
            .env("USER", &user.name)
            .env("LOGNAME", &user.name);
        // As systemd's User=: no SHELL for a placeholder shell (nologin, false).
        let placeholder = user
            .shell
            .file_name()
            .is_some_and(|n| n == "nologin" || n == "false");
        if !placeholder {
            command.env("SHELL", &user.shell);
        }
    }
    command.envs(spec.env.iter().map(|(k, v)| (k, v)));
    // SAFETY: setsid and umask are async-signal-safe and touch no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            // The umask a systemd unit gets (UMask=0022), not the hook's (agent 2.x: 0027).
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    command.spawn().map_err(|e| {
        Error::from(SupervisorError::Launch {
            program: program.clone(),
            workdir: spec.workdir.clone(),
            source: e,
        })
    })
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// From the first SIGTERM until every process was gone and the port free.
    pub took: Duration,
    /// Processes that were sent SIGTERM.
    pub processes: usize,
    /// Processes still running after the grace period that were sent SIGKILL (0: none was).
    pub killed: usize,
}

/// How long [`terminate`] waits for the processes to vanish and the port to free after SIGKILL.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// The shortest wait [`bounded`] gives once the deadline is (nearly) past: a SIGKILL and a
/// look whether it took.
const LAST_WAIT: Duration = Duration::from_millis(500);

/// When the running hook must be done by (its budget, [`crate::budget`]); `None`: no bound.
static DEADLINE: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);

/// Bounds every later wait of [`terminate`] (and what callers pass through [`bounded`]) by
/// `at`: a hook that stops twice (`start` freeing the slot, then cleaning up after a version
/// that failed; systemd's `disable --now`, then the process-mode rules) stays within the
/// budget `portswap-bundle` checked. `None` lifts the bound.
pub fn set_deadline(at: Option<Instant>) {
    *DEADLINE.lock().unwrap_or_else(|e| e.into_inner()) = at;
}

/// `limit`, or what is left until the deadline when that is less (at least [`LAST_WAIT`]).
pub fn bounded(limit: Duration) -> Duration {
    match *DEADLINE.lock().unwrap_or_else(|e| e.into_inner()) {
        Some(at) => limit.min(at.saturating_duration_since(Instant::now()).max(LAST_WAIT)),
        None => limit,
    }
}

/// Sends `signal` to `process` and no other: through a pidfd (`pidfd_open`, then
/// `pidfd_send_signal`), so the start time checked once the descriptor is open names the
/// process the signal reaches, even if the pid is freed and reused in between. `Ok(false)`:
/// the process is gone (nothing was sent). Pid 0 and 1 are never signalled. On kernels
/// without pidfds (before 5.3) it falls back to `kill` right after the same check.
pub fn signal(process: ProcId, signal: Signal) -> nix::Result<bool> {
    if process.pid <= 1 {
        return Ok(false);
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, process.pid, 0) };
    if fd < 0 {
        return match Errno::last() {
            Errno::ESRCH => Ok(false),
            Errno::ENOSYS if process.is_alive() => {
                kill(Pid::from_raw(process.pid), signal).map(|()| true)
            }
            Errno::ENOSYS => Ok(false),
            e => Err(e),
        };
    }
    // SAFETY: the syscall just returned this descriptor, owned by nothing else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if !process.is_alive() {
        return Ok(false);
    }
    // SAFETY: a valid pidfd, a signal number, no siginfo (as kill(2) would), no flags.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    match sent {
        0 => Ok(true),
        _ if Errno::last() == Errno::ESRCH => Ok(false),
        _ => Err(Errno::last()),
    }
}

/// Sends `signal` to each process of `targets` not in `sent` yet (see [`signal`]); records
/// who got it.
fn signal_new(targets: &[ProcId], sig: Signal, sent: &mut Vec<ProcId>) {
    for process in targets {
        if sent.contains(process) {
            continue;
        }
        match signal(*process, sig) {
            Ok(true) => sent.push(*process),
            Ok(false) => {}
            Err(e) => log::warn!("cannot send {sig} to pid {}: {e}", process.pid),
        }
    }
}

fn pids(processes: &[ProcId]) -> String {
    let list: Vec<String> = processes.iter().map(|p| p.pid.to_string()).collect();
    list.join(", ")
}

/// Stops every process `targets()` names (asked again on every poll, so a child forked by a
/// wrapper, or left behind when the wrapper died, is signalled too): SIGTERM, up to `grace`
/// for all of them to exit and `port` to be free, then SIGKILL to whoever is left and up to
/// [`KILL_WAIT`] more. Only processes `targets()` names are ever signalled.
pub fn terminate(port: u16, grace: Duration, targets: impl Fn() -> Vec<ProcId>) -> Result<Stopped> {
    let started = Instant::now();
    // Within the hook's deadline (see [`set_deadline`]): the grace shrinks so that the wait
    // after SIGKILL still fits.
    let grace = bounded(grace + KILL_WAIT)
        .saturating_sub(KILL_WAIT)
        .min(grace);
    // Until `limit`: signal whoever of the app is new since the last poll; done once none
    // is left and the port is free.
    let phase = |limit: Duration, signal: Signal, sent: &mut Vec<ProcId>| {
        wait_for(limit, || {
            let left = targets();
            signal_new(&left, signal, sent);
            left.is_empty() && !procfs::port_in_use(port)
        })
    };
    let mut termed = Vec::new();
    let done = phase(grace, Signal::SIGTERM, &mut termed);
    if done {
        return Ok(Stopped {
            took: started.elapsed(),
            processes: termed.len(),
            killed: 0,
        });
    }
    let left = targets();
    if left.is_empty() {
        return Err(SupervisorError::HeldAfterTerm {
            port,
            grace,
            holders: holders(port),
        }
        .into());
    }
    log::warn!(
        "still running {} after SIGTERM: pid {}; sending SIGKILL",
        crate::duration::show(grace),
        pids(&left)
    );
    let mut killed = Vec::new();
    let kill_wait = bounded(KILL_WAIT);
    let done = phase(kill_wait, Signal::SIGKILL, &mut killed);
    if done {
        return Ok(Stopped {
            took: started.elapsed(),
            processes: termed.len(),
            killed: killed.len(),
        });
    }
    let left = targets();
    Err(if left.is_empty() {
        SupervisorError::HeldAfterKill {
            port,
            waited: kill_wait,
            holders: holders(port),
        }
    } else {
        SupervisorError::Survived {
            pids: pids(&left),
            waited: kill_wait,
        }
    }
    .into())
}

/// Who listens on `port`, for messages.
fn holders(port: u16) -> String {
    let listeners = procfs::listeners(port);
    if listeners.is_empty() {
        return "a process this user cannot see".into();
    }
    let described: Vec<String> = listeners
        .iter()
        .map(|pid| format!("pid {pid} `{}`", procfs::describe(*pid)))
        .collect();
    described.join(", ")
}

/// Polls `done` with a short, growing interval until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(2);
    loop {
        if done() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_reach_only_the_process_named_by_pid_and_start_time() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let me = ProcId::of(child.id() as i32).unwrap();
        let reused = ProcId {
            start_time: me.start_time + 1,
            ..me
        };
        assert_eq!(signal(reused, Signal::SIGKILL), Ok(false));
        for never in [0, 1] {
            let process = ProcId {
                pid: never,
                start_time: 0,
            };
            assert_eq!(signal(process, Signal::SIGCONT), Ok(false));
        }
        assert!(child.try_wait().unwrap().is_none(), "not signalled");
        assert_eq!(signal(me, Signal::SIGKILL), Ok(true));
        child.wait().unwrap();
        assert_eq!(signal(me, Signal::SIGKILL), Ok(false), "gone");
    }

    #[test]
    fn a_stop_never_outlives_the_deadline() {
        let mut child = Command::new("sh")
            .args(["-c", "trap '' TERM; while :; do sleep 1; done"])
            .spawn()
            .unwrap();
        let process = ProcId::of(child.id() as i32).unwrap();
        // Let the shell install its trap before the SIGTERM: SIGTERM's own bit in SigIgn
        // (a shell may ignore other signals, e.g. SIGQUIT, from its start).
        let term_bit = 1u64 << (libc::SIGTERM - 1);
        wait_for(Duration::from_secs(2), || {
            fs::read_to_string(format!("/proc/{}/status", process.pid)).is_ok_and(|s| {
                s.lines().any(|l| {
                    l.strip_prefix("SigIgn:")
                        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                        .is_some_and(|m| m & term_bit != 0)
                })
            })
        });
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = unused.local_addr().unwrap().port();
        drop(unused);
        let began = Instant::now();
        set_deadline(Some(began + Duration::from_millis(1500)));
        let stopped = terminate(port, Duration::from_secs(20), || {
            [process].into_iter().filter(ProcId::is_alive).collect()
        });
        set_deadline(None);
        child.wait().unwrap();
        let stopped = stopped.unwrap();
        assert_eq!(stopped.killed, 1, "{stopped:?}");
        assert!(
            began.elapsed() < Duration::from_millis(2500),
            "{:?}",
            began.elapsed()
        );
    }
}
