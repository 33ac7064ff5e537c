//! Running `fixture-app` directly as a child process of a test.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::bins::bin;
use crate::net::{port_is_listening, wait_until};

/// How long [`FixtureApp::spawn`] waits for the app to listen.
pub const LISTEN_DEADLINE: Duration = Duration::from_secs(10);

/// A `fixture-app` child in its own process group, with stdout and stderr going to a
/// temporary log file. Its whole process group is SIGKILLed (and reaped) on drop.
#[derive(Debug)]
pub struct FixtureApp {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
    status: Option<ExitStatus>,
}

impl FixtureApp {
    /// The command line `fixture-app --port P --profile PROFILE --version VERSION EXTRA...`.
    pub fn command(port: u16, profile: &str, version: &str, extra_args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("fixture-app"));
        cmd.args(["--port", &port.to_string(), "--profile", profile])
            .args(["--version", version])
            .args(extra_args);
        cmd
    }

    /// Starts the app and waits (up to [`LISTEN_DEADLINE`]) until it listens on `port`.
    /// Panics with the app's output if it exits or never listens.
    pub fn spawn(port: u16, profile: &str, version: &str, extra_args: &[&str]) -> FixtureApp {
        let mut app = Self::spawn_no_wait(port, profile, version, extra_args);
        if let Err(e) = app.wait_listening(LISTEN_DEADLINE) {
            panic!("testkit: fixture-app on port {port}: {e}");
        }
        app
    }

    /// Starts the app without waiting for anything (for `--fail-start`, `--never-bind`,
    /// `--start-delay-ms` ...).
    pub fn spawn_no_wait(
        port: u16,
        profile: &str,
        version: &str,
        extra_args: &[&str],
    ) -> FixtureApp {
        Self::spawn_command(port, Self::command(port, profile, version, extra_args))
    }

    /// Starts `cmd` (normally from [`command`](Self::command)) as the app for `port`, in a
    /// new process group, stdin closed, output to the log file.
    pub fn spawn_command(port: u16, mut cmd: Command) -> FixtureApp {
        let log = tempfile::NamedTempFile::new().expect("testkit: create fixture log");
        let out = log.reopen().expect("testkit: open fixture log");
        let err = out.try_clone().expect("testkit: dup fixture log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("testkit: cannot start {cmd:?}: {e}"));
        FixtureApp {
            child,
            port,
            log,
            status: None,
        }
    }

    /// Waits until the app accepts connections on its port; an error (with its output)
    /// if it exits first or `deadline` passes.
    pub fn wait_listening(&mut self, deadline: Duration) -> Result<Duration, String> {
        let port = self.port;
        let mut exited = None;
        let waited = wait_until(deadline, "fixture-app to listen", || {
            if let Ok(Some(status)) = self.child.try_wait() {
                exited = Some(status);
                return true;
            }
            port_is_listening(port)
        });
        if let Some(status) = exited {
            self.status = Some(status);
            return Err(format!(
                "exited with {status} before listening; output:\n{}",
                self.output()
            ));
        }
        waited.map_err(|e| format!("{e}; output:\n{}", self.output()))
    }

    /// The port the app was told to use.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The app's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything the app printed so far (stdout and stderr interleaved).
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// The file receiving the app's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        self.log.path()
    }

    /// Sends `signal` to the app process (not its group).
    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.pid()), signal);
    }

    /// Sends SIGTERM to the app.
    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// The exit status if the app has exited (reaping it), without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `deadline` for the app to exit; its status, or `None` if still running.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let _ = wait_until(deadline, "fixture-app to exit", || {
            self.try_wait().is_some()
        });
        self.status
    }

    /// SIGKILLs the app's process group and reaps the app.
    pub fn kill(&mut self) {
        // Once reaped, the pid (and so the group id) may be reused: leave it alone then.
        if self.try_wait().is_none() {
            let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for FixtureApp {
    fn drop(&mut self) {
        self.kill();
    }
}
