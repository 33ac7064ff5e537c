//! Running an external command (nginx's config test and dump, a reload command, `nft`)
//! bounded in time: in its own process group, so the agent's SIGTERM to the hook's group does not cut it
//! short (the hook decides when to stop); its stdout and stderr read while it runs, so output
//! larger than a pipe never blocks it; the pipes' read ends closed on exec, so no child
//! inherits them; and killed with its group and reaped on every way out, also when the
//! caller drops it early.

use std::io::{self, ErrorKind, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// What a command that ran to its end left.
#[derive(Debug)]
pub struct Ran {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout (empty when stdout was not kept).
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr.
    pub stderr: Vec<u8>,
}

/// Why a command did not run to its end.
#[derive(Debug)]
pub enum Failed {
    /// It could not be started.
    Spawn(io::Error),
    /// It was still running at the deadline: killed with its process group.
    Hung,
    /// Waiting for it failed.
    Wait(io::Error),
}

/// A command started and not yet finished; dropping it kills its group and reaps it.
#[derive(Debug)]
pub struct Running {
    child: Option<Child>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    out: Vec<u8>,
    err: Vec<u8>,
}

impl Running {
    /// Starts `program args` with stdin from /dev/null, stderr kept, and stdout kept when
    /// `keep_stdout` (else /dev/null), in a process group of its own.
    pub fn start(program: &Path, args: &[String], keep_stdout: bool) -> Result<Running, Failed> {
        Running::spawn(program, args, keep_stdout, None)
    }

    /// Like [`Running::start`], with `input` on its stdin, then end of file. `input` must fit
    /// in a pipe (64 KiB on Linux; a ruleset of a few lines): it is written at once, never
    /// waiting for the command to read it.
    pub fn start_with_input(
        program: &Path,
        args: &[String],
        keep_stdout: bool,
        input: &[u8],
    ) -> Result<Running, Failed> {
        Running::spawn(program, args, keep_stdout, Some(input))
    }

    fn spawn(
        program: &Path,
        args: &[String],
        keep_stdout: bool,
        input: Option<&[u8]>,
    ) -> Result<Running, Failed> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(if keep_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(Failed::Spawn)?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        for fd in [
            stdout.as_ref().map(|p| p.as_raw_fd()),
            stderr.as_ref().map(|p| p.as_raw_fd()),
        ]
        .into_iter()
        .flatten()
        {
            // std's pipes are close-on-exec already; non-blocking so that a grandchild that
            // keeps them open cannot hold the reader.
            let _ = fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
        }
        let running = Running {
            child: Some(child),
            stdout,
            stderr,
            out: Vec::new(),
            err: Vec::new(),
        };
        if let (Some(mut pipe), Some(input)) = (stdin, input) {
            let _ = fcntl(pipe.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
            // Dropping `running` on an error kills and reaps the command; dropping the pipe
            // gives it end of file.
            std::io::Write::write_all(&mut pipe, input).map_err(Failed::Wait)?;
        }
        Ok(running)
    }

    /// The child's pid (its process group's id).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Reads its output until it exits, at most until `deadline`; then it is killed with its
    /// group ([`Failed::Hung`]).
    pub fn finish(mut self, deadline: Instant) -> Result<Ran, Failed> {
        loop {
            self.drain();
            let Some(child) = self.child.as_mut() else {
                return Err(Failed::Hung);
            };
            match child.try_wait() {
                Ok(Some(status)) => {
                    // Exited: what it wrote is in the pipes now (a grandchild holding them
                    // open is not waited for).
                    self.drain();
                    self.child = None;
                    return Ok(Ran {
                        status,
                        stdout: std::mem::take(&mut self.out),
                        stderr: std::mem::take(&mut self.err),
                    });
                }
                Ok(None) => {}
                Err(e) => return Err(Failed::Wait(e)),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Failed::Hung);
            }
            self.wait_for_output((deadline - now).min(Duration::from_millis(5)));
        }
    }

    /// Reads whatever both pipes hold now; a pipe at its end is closed.
    fn drain(&mut self) {
        read_available(&mut self.stdout, &mut self.out);
        read_available(&mut self.stderr, &mut self.err);
    }

    /// Waits up to `limit` for output on an open pipe (or for `limit` when both are closed).
    fn wait_for_output(&self, limit: Duration) {
        let fds: Vec<_> = [
            self.stdout.as_ref().map(|p| p.as_fd()),
            self.stderr.as_ref().map(|p| p.as_fd()),
        ]
        .into_iter()
        .flatten()
        .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
        .collect();
        if fds.is_empty() {
            std::thread::sleep(limit.min(Duration::from_millis(1)));
            return;
        }
        let mut fds = fds;
        let ms = limit.as_millis().clamp(1, u128::from(u16::MAX)) as u16;
        let _ = poll(&mut fds, PollTimeout::from(ms));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Appends what the non-blocking `pipe` holds now to `into`; at its end (or on an error) the
/// pipe is closed.
fn read_available(pipe: &mut Option<impl Read>, into: &mut Vec<u8>) {
    let mut buf = [0u8; 16 * 1024];
    while let Some(p) = pipe.as_mut() {
        match p.read(&mut buf) {
            Ok(0) => *pipe = None,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(_) => *pipe = None,
        }
    }
}

/// Runs `program args` with `input` on its stdin to its end, at most until `deadline`
/// ([`Running::start_with_input`]).
pub fn run_with_input(
    program: &Path,
    args: &[String],
    input: &[u8],
    deadline: Instant,
) -> Result<Ran, Failed> {
    Running::start_with_input(program, args, true, input)?.finish(deadline)
}

/// Runs `program args` to its end, at most until `deadline` ([`Running`]).
pub fn run(
    program: &Path,
    args: &[String],
    keep_stdout: bool,
    deadline: Instant,
) -> Result<Ran, Failed> {
    Running::start(program, args, keep_stdout)?.finish(deadline)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn output_larger_than_a_pipe_is_read_while_it_runs() {
        // 1 MiB on stdout and on stderr: far more than a pipe holds.
        let ran = run(
            Path::new("/usr/bin/dd"),
            &strings(&["if=/dev/zero", "bs=64k", "count=16", "status=none"]),
            true,
            Instant::now() + Duration::from_secs(10),
        )
        .unwrap();
        assert!(ran.status.success());
        assert_eq!(ran.stdout.len(), 1 << 20);
    }

    #[test]
    fn the_child_inherits_no_pipe_end() {
        // Its stdout and stderr are the pipes' write ends; a read end it inherited would be a
        // second descriptor on the same pipe (and keep it writing into a pipe nobody reads).
        let ran = run(
            Path::new("/bin/ls"),
            &strings(&["-l", "/proc/self/fd/"]),
            true,
            Instant::now() + Duration::from_secs(10),
        )
        .unwrap();
        let listing = String::from_utf8_lossy(&ran.stdout).into_owned();
        let pipes: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.split("-> ").nth(1))
            .filter(|target| target.starts_with("pipe:"))
            .collect();
        let mut unique = pipes.clone();
        unique.sort_unstable();
        unique.dedup();
        assert!(pipes.len() >= 2, "{listing}");
        assert_eq!(pipes.len(), unique.len(), "a pipe twice: {listing}");
    }

    #[test]
    fn input_reaches_the_command_and_ends_with_end_of_file() {
        let ran = run_with_input(
            Path::new("/bin/cat"),
            &[],
            b"table ip t\n",
            Instant::now() + Duration::from_secs(10),
        )
        .unwrap();
        assert!(ran.status.success());
        assert_eq!(ran.stdout, b"table ip t\n");
    }

    #[test]
    fn a_command_past_its_deadline_is_killed_and_reaped() {
        let started = Running::start(Path::new("/bin/sleep"), &strings(&["30"]), true).unwrap();
        let pid = started.pid().unwrap() as i32;
        assert!(matches!(
            started.finish(Instant::now() + Duration::from_millis(50)),
            Err(Failed::Hung)
        ));
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "reaped");
        let dropped = Running::start(Path::new("/bin/sleep"), &strings(&["30"]), false).unwrap();
        let pid = dropped.pid().unwrap() as i32;
        drop(dropped);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "reaped on drop"
        );
    }

    #[test]
    fn it_runs_in_a_process_group_of_its_own() {
        let running = Running::start(Path::new("/bin/sleep"), &strings(&["30"]), false).unwrap();
        let pid = running.pid().unwrap() as i32;
        let group = crate::procfs::parent_and_group(pid).unwrap().1;
        assert_eq!(group, pid);
    }
}
