//! An emulation of the CodeDeploy agent running an in-place deployment (test support code,
//! not product).
//!
//! It follows `shared/codedeploy-facts.md`: the revision is unpacked into
//! `<root>/<group-id>/<deployment-id>/deployment-archive/`; events run in the order
//! ApplicationStop, DownloadBundle, BeforeInstall, Install, AfterInstall, ApplicationStart,
//! ValidateService; ApplicationStop runs the scripts of the *last successful* revision (none on
//! the first deployment), which is recorded when Install ends. Each script runs as its absolute
//! path alone (or `su USER -c PATH` with `runas`), in `/`, with a near-empty environment, stdin
//! closed, stdout/stderr read line by line through pipes, in its own process group. On its
//! timeout the whole group gets one SIGTERM and our ends of its pipes are closed; after it exits
//! its stdout and stderr must reach EOF within the same timeout.
//!
//! ```no_run
//! use std::path::Path;
//! use portswap_testkit::agent::Agent;
//!
//! let agent = Agent::new(Path::new("/tmp/agent"), "dg-1").destination_root(Path::new("/tmp/dest"));
//! let report = agent.deploy(Path::new("/tmp/revision"), "d-1", &[("RUST_LOG", "info")]);
//! assert!(report.success(), "{report}");
//! println!("{:?}", report.script("hooks/switch").map(|s| s.duration));
//! ```
//!
//! Deviation kept for test hygiene: the real agent blocks forever on a hook that ignores
//! SIGTERM; this one waits [`Agent::sigterm_patience`], then SIGKILLs the group and says so.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

pub use portswap_appspec::{AppSpec, FileSpec, HookScript, DEFAULT_TIMEOUT_SECS, HOOK_EVENTS};

/// PATH the agent's hooks see (the agent runs under systemd with a minimal environment).
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How much of a script's output reaches the console and the API.
pub const TAIL_CHARS: usize = 2048;
/// What happened to one script.
#[derive(Debug, Clone)]
pub struct ScriptReport {
    /// `location` from the appspec.
    pub location: String,
    /// The archive the script came from.
    pub archive: PathBuf,
    /// Process id, which is also its process group id (0 when it never started).
    pub pid: u32,
    /// From spawn to the end of its outputs (or the failure).
    pub duration: Duration,
    /// Exit code, when it exited normally.
    pub exit_code: Option<i32>,
    /// Signal that ended it, if any.
    pub signal: Option<i32>,
    /// Whether the agent sent the group SIGTERM because of the timeout.
    pub timed_out: bool,
    /// The last [`TAIL_CHARS`] characters of its `[stdout]`/`[stderr]` lines.
    pub output_tail: String,
    /// Why the script failed the deployment, `None` on success.
    pub failure: Option<String>,
}

impl ScriptReport {
    /// True when the script succeeded.
    pub fn success(&self) -> bool {
        self.failure.is_none()
    }
}

/// What happened in one event (hook events and the agent's own DownloadBundle / Install).
#[derive(Debug, Clone)]
pub struct EventReport {
    /// Event name.
    pub name: String,
    /// Scripts run, in order (empty for the agent's own steps and for skipped events).
    pub scripts: Vec<ScriptReport>,
    /// Wall time of the whole event.
    pub duration: Duration,
    /// Why the event failed, `None` on success.
    pub failure: Option<String>,
}

/// The outcome of [`Agent::deploy`].
#[derive(Debug, Clone)]
pub struct DeploymentReport {
    /// The deployment id.
    pub deployment_id: String,
    /// Events in the order they ran; stops at the failed one.
    pub events: Vec<EventReport>,
    /// Wall time of the whole deployment.
    pub duration: Duration,
    /// `(event, reason)` of the failure, `None` when the deployment succeeded.
    pub failure: Option<(String, String)>,
}

impl DeploymentReport {
    /// True when every event succeeded.
    pub fn success(&self) -> bool {
        self.failure.is_none()
    }

    /// The report of an event, if it ran.
    pub fn event(&self, name: &str) -> Option<&EventReport> {
        self.events.iter().find(|e| e.name == name)
    }

    /// The report of the first script whose location is `location`, if it ran.
    pub fn script(&self, location: &str) -> Option<&ScriptReport> {
        self.events
            .iter()
            .flat_map(|e| &e.scripts)
            .find(|s| s.location == location)
    }

    /// Event that failed, if any.
    pub fn failed_event(&self) -> Option<&str> {
        self.failure.as_ref().map(|(event, _)| event.as_str())
    }
}

impl fmt::Display for DeploymentReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match &self.failure {
            None => "Succeeded".to_string(),
            Some((event, reason)) => format!("Failed in {event}: {reason}"),
        };
        writeln!(
            f,
            "deployment {} {} in {:.2?}",
            self.deployment_id, verdict, self.duration
        )?;
        for event in &self.events {
            writeln!(
                f,
                "  {:<16} {:>9.2?}{}",
                event.name,
                event.duration,
                if event.failure.is_some() {
                    "  FAILED"
                } else {
                    ""
                }
            )?;
            for script in &event.scripts {
                let how = match (script.exit_code, script.signal) {
                    (Some(code), _) => format!("exit {code}"),
                    (None, Some(sig)) => format!("signal {sig}"),
                    (None, None) => "not run".to_string(),
                };
                writeln!(
                    f,
                    "    {:<22} {:>9.2?}  {how}",
                    script.location, script.duration
                )?;
            }
        }
        if let Some((event, _)) = &self.failure {
            if let Some(script) = self.event(event).and_then(|e| e.scripts.last()) {
                writeln!(f, "  last output of {}:", script.location)?;
                for line in script.output_tail.lines() {
                    writeln!(f, "    {line}")?;
                }
            }
        }
        Ok(())
    }
}

/// The CodeDeploy agent of one instance, for one deployment group.
#[derive(Debug, Clone)]
pub struct Agent {
    root: PathBuf,
    group_id: String,
    application_name: String,
    group_name: String,
    destination_root: Option<PathBuf>,
    ignore_application_stop_failures: bool,
    sigterm_patience: Duration,
    echo: bool,
}

impl Agent {
    /// An agent whose deployment root is `root` (the real one: `/opt/codedeploy-agent/deployment-root`).
    /// Echoes script output to stderr when `PORTSWAP_AGENT_ECHO` is set.
    pub fn new(root: &Path, group_id: &str) -> Agent {
        Agent {
            root: root.to_path_buf(),
            group_id: group_id.to_string(),
            application_name: "portswap-app".to_string(),
            group_name: "portswap-group".to_string(),
            destination_root: None,
            ignore_application_stop_failures: false,
            sigterm_patience: Duration::from_secs(60),
            echo: std::env::var_os("PORTSWAP_AGENT_ECHO").is_some(),
        }
    }

    /// Sets `APPLICATION_NAME`.
    pub fn application_name(mut self, name: &str) -> Agent {
        self.application_name = name.to_string();
        self
    }

    /// Sets `DEPLOYMENT_GROUP_NAME`.
    pub fn group_name(mut self, name: &str) -> Agent {
        self.group_name = name.to_string();
        self
    }

    /// Installs `files` destinations under `dir` (`/home/x` becomes `dir/home/x`), for tests.
    pub fn destination_root(mut self, dir: &Path) -> Agent {
        self.destination_root = Some(dir.to_path_buf());
        self
    }

    /// Goes on when ApplicationStop fails, like the deployment option of that name.
    pub fn ignore_application_stop_failures(mut self, yes: bool) -> Agent {
        self.ignore_application_stop_failures = yes;
        self
    }

    /// How long to wait for a hook that ignores SIGTERM before SIGKILLing it (harness only).
    pub fn sigterm_patience(mut self, patience: Duration) -> Agent {
        self.sigterm_patience = patience;
        self
    }

    /// Echoes every script output line to our stderr as it arrives.
    pub fn echo(mut self, yes: bool) -> Agent {
        self.echo = yes;
        self
    }

    /// Where a deployment's revision is unpacked.
    pub fn archive_dir(&self, deployment_id: &str) -> PathBuf {
        self.root
            .join(&self.group_id)
            .join(deployment_id)
            .join("deployment-archive")
    }

    /// The archive of the last deployment whose Install step ended.
    pub fn last_successful_archive(&self) -> Option<PathBuf> {
        let text = fs::read_to_string(self.instructions("last_successful_install")).ok()?;
        let path = PathBuf::from(text.trim());
        path.is_dir().then_some(path)
    }

    /// The agent-wide log of all script output.
    pub fn agent_log(&self) -> PathBuf {
        self.root
            .join("deployment-logs")
            .join("codedeploy-agent-deployments.log")
    }

    /// The script log of one deployment.
    pub fn scripts_log(&self, deployment_id: &str) -> PathBuf {
        self.root
            .join(&self.group_id)
            .join(deployment_id)
            .join("logs")
            .join("scripts.log")
    }

    fn instructions(&self, what: &str) -> PathBuf {
        self.root
            .join("deployment-instructions")
            .join(format!("{}_{what}", self.group_id))
    }

    /// Deploys the revision at `revision` (a directory, `.zip`, `.tgz`/`.tar.gz` or `.tar`) as
    /// deployment `deployment_id`; `env_extra` is added to every script's environment.
    pub fn deploy(
        &self,
        revision: &Path,
        deployment_id: &str,
        env_extra: &[(&str, &str)],
    ) -> DeploymentReport {
        let started = Instant::now();
        let mut run = Run {
            agent: self,
            deployment_id,
            env_extra,
            report: DeploymentReport {
                deployment_id: deployment_id.to_string(),
                events: Vec::new(),
                duration: Duration::ZERO,
                failure: None,
            },
            logs: Arc::new(Mutex::new(Logs::open(self, deployment_id))),
        };
        run.all(revision);
        run.report.duration = started.elapsed();
        run.report
    }
}

/// Where script output goes: the agent log, the deployment's scripts.log, optionally stderr.
struct Logs {
    files: Vec<File>,
    echo: bool,
    prefix: String,
}

impl Logs {
    fn open(agent: &Agent, deployment_id: &str) -> Logs {
        let mut files = Vec::new();
        for path in [agent.agent_log(), agent.scripts_log(deployment_id)] {
            if let Some(dir) = path.parent() {
                let _ = fs::create_dir_all(dir);
            }
            if let Ok(file) = OpenOptions::new().create(true).append(true).open(&path) {
                files.push(file);
            }
        }
        Logs {
            files,
            echo: agent.echo,
            prefix: format!("[{deployment_id}]"),
        }
    }

    fn line(&mut self, text: &str) {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let line = format!(
            "[{}.{:03}] {} {text}\n",
            stamp.as_secs(),
            stamp.subsec_millis(),
            self.prefix
        );
        for file in &mut self.files {
            let _ = file.write_all(line.as_bytes());
        }
        if self.echo {
            eprint!("agent {line}");
        }
    }
}

/// One deployment in progress.
struct Run<'a> {
    agent: &'a Agent,
    deployment_id: &'a str,
    env_extra: &'a [(&'a str, &'a str)],
    report: DeploymentReport,
    logs: Arc<Mutex<Logs>>,
}

impl Run<'_> {
    fn log(&self, text: &str) {
        if let Ok(mut logs) = self.logs.lock() {
            logs.line(text);
        }
    }

    fn all(&mut self, revision: &Path) {
        let archive = self.agent.archive_dir(self.deployment_id);
        // ApplicationStop: the last successful revision's appspec and scripts, if any.
        let previous = self.agent.last_successful_archive();
        let stop_ok = match &previous {
            None => self.step("ApplicationStop", |_| Ok(Vec::new())),
            Some(old) => self.hooks("ApplicationStop", old),
        };
        if !stop_ok {
            if !self.agent.ignore_application_stop_failures {
                return;
            }
            self.log("ApplicationStop failed; going on (ignore-application-stop-failures)");
            self.report.failure = None;
        }
        if !self.step("DownloadBundle", |_| {
            unpack(revision, &archive)
                .map(|()| Vec::new())
                .map_err(|e| (Vec::new(), e))
        }) {
            return;
        }
        for event in [
            "BeforeInstall",
            "Install",
            "AfterInstall",
            "ApplicationStart",
            "ValidateService",
        ] {
            let ok = if event == "Install" {
                self.install(&archive)
            } else {
                self.hooks(event, &archive)
            };
            if !ok {
                return;
            }
        }
    }

    /// Runs an event made of `body`, recording it; false when it failed.
    fn step(
        &mut self,
        name: &str,
        body: impl FnOnce(&mut Run) -> Result<Vec<ScriptReport>, (Vec<ScriptReport>, String)>,
    ) -> bool {
        let started = Instant::now();
        self.log(&format!("LifecycleEvent - {name}"));
        let (scripts, failure) = match body(self) {
            Ok(scripts) => (scripts, None),
            Err((scripts, reason)) => (scripts, Some(reason)),
        };
        if let Some(reason) = &failure {
            self.log(&format!("{name} failed: {reason}"));
            self.report.failure = Some((name.to_string(), reason.clone()));
        }
        let ok = failure.is_none();
        self.report.events.push(EventReport {
            name: name.to_string(),
            scripts,
            duration: started.elapsed(),
            failure,
        });
        ok
    }

    fn hooks(&mut self, event: &str, archive: &Path) -> bool {
        let archive = archive.to_path_buf();
        self.step(event, |run| {
            let spec = AppSpec::load(&archive).map_err(|e| (Vec::new(), e))?;
            let mut reports = Vec::new();
            for script in spec.scripts(event) {
                let report = run.script(event, &archive, script);
                let failure = report.failure.clone();
                reports.push(report);
                if let Some(reason) = failure {
                    return Err((reports, reason));
                }
            }
            Ok(reports)
        })
    }

    fn install(&mut self, archive: &Path) -> bool {
        let archive = archive.to_path_buf();
        let ok = self.step("Install", |run| {
            run.install_files(&archive)
                .map(|()| Vec::new())
                .map_err(|e| (Vec::new(), e))
        });
        if ok {
            // "Last successful" is recorded when Install ends.
            let marker = self.agent.instructions("last_successful_install");
            let _ = fs::create_dir_all(marker.parent().unwrap_or(Path::new("/")));
            if let Err(e) = fs::write(&marker, format!("{}\n", archive.display())) {
                self.log(&format!("cannot record the last successful install: {e}"));
            }
        }
        ok
    }

    /// Removes what the previous Install created, then copies `files` to their destinations.
    fn install_files(&mut self, archive: &Path) -> Result<(), String> {
        let spec = AppSpec::load(archive)?;
        let cleanup = self.agent.instructions("install.cleanup");
        if let Ok(text) = fs::read_to_string(&cleanup) {
            // Files first, then directories deepest first (only if empty).
            let mut entries: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
            entries.sort_by_key(|l| std::cmp::Reverse(l.len()));
            for entry in entries {
                let path = Path::new(entry);
                if path.is_dir() && !path.is_symlink() {
                    let _ = fs::remove_dir(path);
                } else {
                    let _ = fs::remove_file(path);
                }
            }
        }
        let behavior = spec.file_exists_behavior.as_deref().unwrap_or("DISALLOW");
        let mut created = Vec::new();
        let mut result = Ok(());
        for file in &spec.files {
            let source = archive.join(file.source.trim_start_matches('/'));
            let destination = self.remap(&file.destination);
            self.log(&format!(
                "Install: {} -> {}",
                source.display(),
                destination.display()
            ));
            result = if source.is_dir() {
                copy_tree(&source, &destination, behavior, &mut created)
            } else if source.exists() {
                mkdirs(&destination, &mut created).and_then(|()| {
                    let name = source.file_name().unwrap_or_default();
                    copy_one(&source, &destination.join(name), behavior, &mut created)
                })
            } else {
                Err(format!(
                    "files: source {} is not in the revision",
                    file.source
                ))
            };
            if result.is_err() {
                break;
            }
        }
        let mut listing = String::new();
        for path in &created {
            listing.push_str(&format!("{}\n", path.display()));
        }
        fs::create_dir_all(cleanup.parent().unwrap_or(Path::new("/")))
            .map_err(|e| e.to_string())?;
        fs::write(&cleanup, listing).map_err(|e| format!("{}: {e}", cleanup.display()))?;
        result
    }

    fn remap(&self, destination: &str) -> PathBuf {
        match &self.agent.destination_root {
            Some(root) => root.join(destination.trim_start_matches('/')),
            None => PathBuf::from(destination),
        }
    }

    /// Runs one script the way the agent does.
    fn script(&mut self, event: &str, archive: &Path, script: &HookScript) -> ScriptReport {
        let started = Instant::now();
        let mut report = ScriptReport {
            location: script.location.clone(),
            archive: archive.to_path_buf(),
            pid: 0,
            duration: Duration::ZERO,
            exit_code: None,
            signal: None,
            timed_out: false,
            output_tail: String::new(),
            failure: None,
        };
        self.log(&format!("Script - {}", script.location));
        let path = archive.join(script.location.trim_start_matches('/'));
        if let Err(reason) = make_executable(&path) {
            report.failure = Some(reason);
            return report;
        }
        let timeout = script.timeout();
        let mut command = match &script.runas {
            None => Command::new(&path),
            Some(user) => {
                let mut c = if script.sudo == Some(true) {
                    let mut c = Command::new("sudo");
                    c.arg("su");
                    c
                } else {
                    Command::new("su")
                };
                c.arg(user).arg("-c").arg(&path);
                c
            }
        };
        command
            .env_clear()
            .env("PATH", PATH)
            .env("LIFECYCLE_EVENT", event)
            .env("DEPLOYMENT_ID", self.deployment_id)
            .env("APPLICATION_NAME", &self.agent.application_name)
            .env("DEPLOYMENT_GROUP_NAME", &self.agent.group_name)
            .env("DEPLOYMENT_GROUP_ID", &self.agent.group_id)
            .envs(
                self.env_extra
                    .iter()
                    .map(|(k, v)| (OsStr::new(k), OsStr::new(v))),
            )
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                report.failure = Some(format!(
                    "Script at specified location: {} could not be run: {e}",
                    script.location
                ));
                return report;
            }
        };
        report.pid = child.id();
        let deadline = started + timeout;
        let stdout: OwnedFd = child.stdout.take().expect("piped stdout").into();
        let stderr: OwnedFd = child.stderr.take().expect("piped stderr").into();
        let pump = Pump::start(stdout, stderr, Arc::clone(&self.logs));
        let (exit_tx, exit_rx) = mpsc::channel();
        let waiter = thread::spawn(move || {
            let _ = exit_tx.send(child.wait());
        });
        let group = Pid::from_raw(report.pid as i32);

        let status = match exit_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(status) => Some(status),
            Err(RecvTimeoutError::Timeout) => {
                report.timed_out = true;
                let _ = killpg(group, Signal::SIGTERM);
                let mut reason = format!(
                    "Script at specified location: {} failed to complete in {} seconds",
                    script.location,
                    timeout.as_secs()
                );
                // The agent closes its ends of the pipes right after the SIGTERM.
                pump.close();
                let status = match exit_rx.recv_timeout(self.agent.sigterm_patience) {
                    Ok(status) => Some(status),
                    Err(_) => {
                        let _ = killpg(group, Signal::SIGKILL);
                        reason.push_str(&format!(
                            "; it ignored SIGTERM for {:?} (the real agent would hang here) and was SIGKILLed by the harness",
                            self.agent.sigterm_patience
                        ));
                        exit_rx.recv().ok()
                    }
                };
                report.failure = Some(reason);
                status
            }
            Err(RecvTimeoutError::Disconnected) => None,
        };
        let _ = waiter.join();
        match status {
            Some(Ok(status)) => {
                report.exit_code = status.code();
                report.signal = status.signal();
            }
            Some(Err(e)) => {
                report.failure = report
                    .failure
                    .take()
                    .or(Some(format!("waiting for the script: {e}")))
            }
            None => {
                report.failure = report
                    .failure
                    .take()
                    .or(Some("lost the script's exit status".into()))
            }
        }
        // After the exit, stdout and stderr must reach EOF within the same timeout.
        let closed = report.timed_out || pump.eof_before(deadline);
        let (open, lines) = pump.finish();
        if !closed && (open.stdout || open.stderr) {
            let which = if open.stdout { "STDOUT" } else { "STDERR" };
            report.failure = Some(format!(
                "Script at specified location: {} failed to close {which}",
                script.location
            ));
        }
        if report.failure.is_none() && report.exit_code != Some(0) {
            report.failure = Some(match (report.exit_code, report.signal) {
                (Some(code), _) => format!(
                    "Script at specified location: {} failed with exit code {code}",
                    script.location
                ),
                (None, Some(sig)) => format!(
                    "Script at specified location: {} was killed by signal {sig}",
                    script.location
                ),
                _ => format!("Script at specified location: {} failed", script.location),
            });
        }
        if let Some(reason) = &report.failure {
            self.log(reason);
        }
        report.output_tail = tail(&lines.join("\n"), TAIL_CHARS);
        report.duration = started.elapsed();
        report
    }
}

/// Which of a script's outputs were still open.
#[derive(Debug, Clone, Copy, Default)]
struct Open {
    stdout: bool,
    stderr: bool,
}

/// A thread reading a script's stdout and stderr line by line until EOF or until closed.
struct Pump {
    wake: OwnedFd,
    eof: mpsc::Receiver<()>,
    handle: thread::JoinHandle<(Open, Vec<String>)>,
}

impl Pump {
    fn start(stdout: OwnedFd, stderr: OwnedFd, logs: Arc<Mutex<Logs>>) -> Pump {
        let (wake_read, wake) = nix::unistd::pipe().expect("pipe");
        let (eof_tx, eof) = mpsc::channel();
        let handle = thread::spawn(move || pump(stdout, stderr, wake_read, &logs, &eof_tx));
        Pump { wake, eof, handle }
    }

    /// True when both outputs reached EOF before `deadline`.
    fn eof_before(&self, deadline: Instant) -> bool {
        !matches!(
            self.eof
                .recv_timeout(deadline.saturating_duration_since(Instant::now())),
            Err(RecvTimeoutError::Timeout)
        )
    }

    /// Closes our read ends: the pump drops them when woken.
    fn close(&self) {
        let _ = nix::unistd::write(&self.wake, b"x");
    }

    /// Closes the outputs if still open and returns what was open then and the lines read.
    fn finish(self) -> (Open, Vec<String>) {
        self.close();
        self.handle.join().unwrap_or_default()
    }
}

fn pump(
    stdout: OwnedFd,
    stderr: OwnedFd,
    wake: OwnedFd,
    logs: &Mutex<Logs>,
    eof: &mpsc::Sender<()>,
) -> (Open, Vec<String>) {
    let mut streams: Vec<(OwnedFd, &str, Vec<u8>)> = vec![
        (stdout, "[stdout]", Vec::new()),
        (stderr, "[stderr]", Vec::new()),
    ];
    let mut lines = Vec::new();
    let emit = |lines: &mut Vec<String>, prefix: &str, bytes: &[u8]| {
        let line = format!("{prefix}{}", String::from_utf8_lossy(bytes));
        if let Ok(mut logs) = logs.lock() {
            logs.line(&line);
        }
        lines.push(line);
    };
    let mut buf = [0u8; 8192];
    while !streams.is_empty() {
        let (ready, woken) = {
            let mut fds: Vec<PollFd> = streams
                .iter()
                .map(|(fd, _, _)| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
                .collect();
            fds.push(PollFd::new(wake.as_fd(), PollFlags::POLLIN));
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
            let readable = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            let ready: Vec<bool> = fds[..streams.len()].iter().map(readable).collect();
            (ready, readable(&fds[streams.len()]))
        };
        if woken {
            break;
        }
        let mut closed = Vec::new();
        for (index, (fd, prefix, pending)) in streams.iter_mut().enumerate() {
            if !ready[index] {
                continue;
            }
            let n = loop {
                match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                    Ok(n) => break n,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => break 0,
                }
            };
            if n == 0 {
                if !pending.is_empty() {
                    emit(&mut lines, prefix, pending);
                }
                closed.push(index);
                continue;
            }
            pending.extend_from_slice(&buf[..n]);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                emit(&mut lines, prefix, &line[..line.len() - 1]);
            }
        }
        for index in closed.into_iter().rev() {
            streams.remove(index);
        }
    }
    let open = Open {
        stdout: streams.iter().any(|(_, p, _)| *p == "[stdout]"),
        stderr: streams.iter().any(|(_, p, _)| *p == "[stderr]"),
    };
    for (_, prefix, pending) in &streams {
        if !pending.is_empty() {
            emit(&mut lines, prefix, pending);
        }
    }
    if streams.is_empty() {
        let _ = eof.send(());
    }
    // Dropping `streams` here closes our read ends.
    (open, lines)
}

/// The last `max` characters of `text`.
pub fn tail(text: &str, max: usize) -> String {
    let count = text.chars().count();
    text.chars().skip(count.saturating_sub(max)).collect()
}

/// The agent's `chmod +x` when the script is not executable; a missing script fails.
fn make_executable(path: &Path) -> Result<(), String> {
    let meta = fs::metadata(path).map_err(|_| {
        format!(
            "Script does not exist at specified location: {}",
            path.display()
        )
    })?;
    if !meta.is_file() {
        return Err(format!(
            "Script at specified location: {} is not a file",
            path.display()
        ));
    }
    let mode = meta.permissions().mode();
    if mode & 0o111 != 0o111 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o111))
            .map_err(|e| format!("chmod +x {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Unpacks or copies a revision into a fresh archive directory.
fn unpack(revision: &Path, archive: &Path) -> Result<(), String> {
    if archive.exists() {
        return Err(format!(
            "{} exists: deployment ids must be new",
            archive.display()
        ));
    }
    fs::create_dir_all(archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    let name = revision.file_name().and_then(OsStr::to_str).unwrap_or("");
    let fail = |e: &dyn fmt::Display| format!("cannot unpack {}: {e}", revision.display());
    if revision.is_dir() {
        copy_tree(revision, archive, "OVERWRITE", &mut Vec::new())
    } else if name.ends_with(".zip") {
        let file = File::open(revision).map_err(|e| fail(&e))?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| fail(&e))?;
        zip.extract(archive).map_err(|e| fail(&e))
    } else if name.ends_with(".tgz") || name.ends_with(".tar.gz") || name.ends_with(".tar") {
        let file = File::open(revision).map_err(|e| fail(&e))?;
        let reader: Box<dyn Read> = if name.ends_with(".tar") {
            Box::new(file)
        } else {
            Box::new(flate2::read::GzDecoder::new(file))
        };
        let mut tar = tar::Archive::new(reader);
        tar.set_preserve_permissions(true);
        tar.unpack(archive).map_err(|e| fail(&e))
    } else {
        Err(format!(
            "{}: not a directory, .zip, .tgz, .tar.gz or .tar",
            revision.display()
        ))
    }
}

/// Creates `dir` and its missing parents, remembering what it created.
fn mkdirs(dir: &Path, created: &mut Vec<PathBuf>) -> Result<(), String> {
    let mut missing = Vec::new();
    let mut cursor = Some(dir);
    while let Some(d) = cursor {
        if d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cursor = d.parent();
    }
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    created.extend(missing.into_iter().rev());
    Ok(())
}

/// Copies the contents of `from` into `to`, keeping modes and symlinks.
fn copy_tree(
    from: &Path,
    to: &Path,
    behavior: &str,
    created: &mut Vec<PathBuf>,
) -> Result<(), String> {
    mkdirs(to, created)?;
    let entries = fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", from.display()))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let kind = entry
            .file_type()
            .map_err(|e| format!("{}: {e}", source.display()))?;
        if kind.is_dir() {
            copy_tree(&source, &target, behavior, created)?;
        } else {
            copy_one(&source, &target, behavior, created)?;
        }
    }
    Ok(())
}

/// Copies one file or symlink, applying `file_exists_behavior`.
fn copy_one(
    source: &Path,
    target: &Path,
    behavior: &str,
    created: &mut Vec<PathBuf>,
) -> Result<(), String> {
    if target.symlink_metadata().is_ok() {
        match behavior {
            "RETAIN" => return Ok(()),
            "OVERWRITE" => fs::remove_file(target).map_err(|e| format!("{}: {e}", target.display()))?,
            _ => {
                return Err(format!(
                    "The deployment failed because a specified file already exists at this location: {}",
                    target.display()
                ))
            }
        }
    }
    let meta = source
        .symlink_metadata()
        .map_err(|e| format!("{}: {e}", source.display()))?;
    if meta.file_type().is_symlink() {
        let link = fs::read_link(source).map_err(|e| format!("{}: {e}", source.display()))?;
        std::os::unix::fs::symlink(link, target)
            .map_err(|e| format!("{}: {e}", target.display()))?;
    } else {
        fs::copy(source, target)
            .map_err(|e| format!("{} -> {}: {e}", source.display(), target.display()))?;
        fs::set_permissions(target, meta.permissions())
            .map_err(|e| format!("{}: {e}", target.display()))?;
    }
    created.push(target.to_path_buf());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A revision directory with an appspec and shell-script hooks.
    struct Rev {
        dir: tempfile::TempDir,
    }

    impl Rev {
        fn new(appspec: &str) -> Rev {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join("appspec.yml"), appspec).unwrap();
            Rev { dir }
        }

        fn script(self, name: &str, body: &str) -> Rev {
            let path = self.dir.path().join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            self
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    fn hooks(events: &[(&str, &str, u64)]) -> String {
        let mut text = String::from("version: 0.0\nos: linux\nhooks:\n");
        for (event, location, timeout) in events {
            text.push_str(&format!(
                "  {event}:\n    - location: {location}\n      timeout: {timeout}\n"
            ));
        }
        text
    }

    fn agent() -> (tempfile::TempDir, Agent) {
        let root = tempfile::tempdir().unwrap();
        let agent = Agent::new(root.path(), "dg-test");
        (root, agent)
    }

    fn event_names(report: &DeploymentReport) -> Vec<&str> {
        report.events.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn first_deployment_runs_no_stop_and_scripts_see_the_agent_environment() {
        let out = tempfile::tempdir().unwrap();
        let env_file = out.path().join("env");
        let all: Vec<(&str, &str, u64)> = HOOK_EVENTS.iter().map(|e| (*e, "hooks/h", 10)).collect();
        let rev = Rev::new(&hooks(&all)).script(
            "hooks/h",
            &format!(
                "{{ echo \"event=$LIFECYCLE_EVENT\"; echo \"cwd=$(pwd)\"; env | sort; \
                 if read -r line; then echo stdin=open; else echo stdin=eof; fi; echo ---; }} >> {}\necho out-$LIFECYCLE_EVENT\necho err >&2",
                env_file.display()
            ),
        );
        let (_root, agent) = agent();
        let report = agent.deploy(rev.path(), "d-1", &[("RUST_LOG", "debug")]);
        assert!(report.success(), "{report}");
        assert_eq!(
            event_names(&report),
            [
                "ApplicationStop",
                "DownloadBundle",
                "BeforeInstall",
                "Install",
                "AfterInstall",
                "ApplicationStart",
                "ValidateService"
            ]
        );
        assert!(report.event("ApplicationStop").unwrap().scripts.is_empty());
        let seen = fs::read_to_string(&env_file).unwrap();
        let events: Vec<&str> = seen
            .lines()
            .filter_map(|l| l.strip_prefix("event="))
            .collect();
        assert_eq!(
            events,
            [
                "BeforeInstall",
                "AfterInstall",
                "ApplicationStart",
                "ValidateService"
            ]
        );
        let first = seen.split("---").next().unwrap();
        assert!(first.contains("cwd=/\n"), "{first}");
        for expected in [
            "DEPLOYMENT_ID=d-1",
            "DEPLOYMENT_GROUP_ID=dg-test",
            "APPLICATION_NAME=portswap-app",
            "DEPLOYMENT_GROUP_NAME=portswap-group",
            "RUST_LOG=debug",
            &format!("PATH={PATH}"),
        ] {
            assert!(
                first.lines().any(|l| l == expected),
                "{expected} missing in {first}"
            );
        }
        assert!(!first.contains("HOME="), "{first}");
        assert!(first.contains("stdin=eof"), "{first}");
        let script = report.event("ApplicationStart").unwrap().scripts[0].clone();
        assert_eq!(script.exit_code, Some(0));
        assert_eq!(
            script.output_tail,
            "[stdout]out-ApplicationStart\n[stderr]err"
        );
        let log = fs::read_to_string(agent.scripts_log("d-1")).unwrap();
        assert!(log.contains("[stdout]out-ValidateService"), "{log}");
    }

    #[test]
    fn application_stop_runs_the_last_successful_revision_even_after_a_later_failure() {
        let out = tempfile::tempdir().unwrap();
        let marks = out.path().join("marks");
        let spec = hooks(&[
            ("ApplicationStop", "stop.sh", 10),
            ("ValidateService", "check.sh", 10),
        ]);
        let rev = |version: &str, healthy: bool| {
            Rev::new(&spec)
                .script(
                    "stop.sh",
                    &format!(
                        "echo \"stop-by-{version} for $DEPLOYMENT_ID\" >> {}",
                        marks.display()
                    ),
                )
                .script(
                    "check.sh",
                    if healthy {
                        "exit 0"
                    } else {
                        "echo unhealthy >&2; exit 1"
                    },
                )
        };
        let (_root, agent) = agent();
        let (v1, v2, v3) = (rev("v1", true), rev("v2", false), rev("v3", true));
        assert!(agent.deploy(v1.path(), "d-1", &[]).success());
        let failed = agent.deploy(v2.path(), "d-2", &[]);
        assert_eq!(failed.failed_event(), Some("ValidateService"));
        assert_eq!(
            failed.failure.as_ref().unwrap().1,
            "Script at specified location: check.sh failed with exit code 1"
        );
        assert_eq!(
            failed.script("check.sh").unwrap().output_tail,
            "[stderr]unhealthy"
        );
        // v2 failed after Install, so it is the last successful install.
        assert_eq!(
            agent.last_successful_archive().unwrap(),
            agent.archive_dir("d-2")
        );
        assert!(agent.deploy(v3.path(), "d-3", &[]).success());
        assert_eq!(
            fs::read_to_string(&marks).unwrap(),
            "stop-by-v1 for d-2\nstop-by-v2 for d-3\n"
        );
    }

    #[test]
    fn a_broken_stop_script_fails_every_deployment_unless_ignored() {
        let spec = hooks(&[("ApplicationStop", "stop.sh", 10)]);
        let broken = Rev::new(&spec).script("stop.sh", "exit 7");
        let good = Rev::new(&spec).script("stop.sh", "exit 0");
        let (_root, agent) = agent();
        assert!(agent.deploy(broken.path(), "d-1", &[]).success());
        let report = agent.deploy(good.path(), "d-2", &[]);
        assert_eq!(report.failed_event(), Some("ApplicationStop"));
        assert_eq!(event_names(&report), ["ApplicationStop"]);
        let agent = agent.ignore_application_stop_failures(true);
        let report = agent.deploy(good.path(), "d-3", &[]);
        assert!(report.success(), "{report}");
        let report = agent.deploy(good.path(), "d-4", &[]);
        assert!(report.success(), "{report}");
        assert_eq!(
            report.script("stop.sh").unwrap().archive,
            agent.archive_dir("d-3")
        );
    }

    #[test]
    fn a_background_child_holding_stdout_fails_the_script() {
        let rev = Rev::new(&hooks(&[("ApplicationStart", "start.sh", 2)]))
            .script("start.sh", "echo starting\nsleep 30 &\necho started");
        let (_root, agent) = agent();
        let report = agent.deploy(rev.path(), "d-1", &[]);
        let script = report.script("start.sh").unwrap().clone();
        let _ = killpg(Pid::from_raw(script.pid as i32), Signal::SIGKILL);
        assert_eq!(
            report.failure.unwrap().1,
            "Script at specified location: start.sh failed to close STDOUT"
        );
        assert_eq!(script.exit_code, Some(0));
        assert!(!script.timed_out);
        assert!(
            script.duration >= Duration::from_secs(2) && script.duration < Duration::from_secs(10),
            "{:?}",
            script.duration
        );
        assert_eq!(script.output_tail, "[stdout]starting\n[stdout]started");
    }

    #[test]
    fn a_background_child_holding_only_stderr_fails_with_stderr() {
        let rev = Rev::new(&hooks(&[("ApplicationStart", "start.sh", 1)]))
            .script("start.sh", "sleep 30 >/dev/null &");
        let (_root, agent) = agent();
        let report = agent.deploy(rev.path(), "d-1", &[]);
        let _ = killpg(
            Pid::from_raw(report.script("start.sh").unwrap().pid as i32),
            Signal::SIGKILL,
        );
        assert_eq!(
            report.failure.unwrap().1,
            "Script at specified location: start.sh failed to close STDERR"
        );
    }

    #[test]
    fn a_detached_child_with_its_own_outputs_is_fine() {
        let rev = Rev::new(&hooks(&[("ApplicationStart", "start.sh", 5)])).script(
            "start.sh",
            "sleep 30 </dev/null >/dev/null 2>&1 &\necho $! > \"$0.pid\"",
        );
        let (_root, agent) = agent();
        let report = agent.deploy(rev.path(), "d-1", &[]);
        let script = report.script("start.sh").unwrap().clone();
        let _ = killpg(Pid::from_raw(script.pid as i32), Signal::SIGKILL);
        assert!(report.success(), "{report}");
        assert!(
            script.duration < Duration::from_secs(2),
            "{:?}",
            script.duration
        );
    }

    #[test]
    fn a_timeout_sends_sigterm_to_the_whole_group() {
        let out = tempfile::tempdir().unwrap();
        let marks = out.path().to_path_buf();
        let rev = Rev::new(&hooks(&[("ValidateService", "slow.sh", 1)])).script(
            "slow.sh",
            &format!(
                "(trap 'echo child > {m}/child; exit 0' TERM; sleep 30 & wait) &\n\
                 trap 'echo hook > {m}/hook; exit 143' TERM\necho waiting\nsleep 30 & wait",
                m = marks.display()
            ),
        );
        let (_root, agent) = agent();
        let started = Instant::now();
        let report = agent.deploy(rev.path(), "d-1", &[]);
        let script = report.script("slow.sh").unwrap();
        assert!(script.timed_out);
        assert_eq!(script.exit_code, Some(143));
        assert_eq!(
            report.failure.as_ref().unwrap().1,
            "Script at specified location: slow.sh failed to complete in 1 seconds"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(fs::read_to_string(marks.join("hook")).unwrap(), "hook\n");
        // The subshell is in the same group: it got the SIGTERM too (it may still be writing).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !marks.join("child").exists() && Instant::now() < deadline {
            thread::yield_now();
        }
        assert!(marks.join("child").exists());
        assert!(script.output_tail.contains("[stdout]waiting"));
    }

    #[test]
    fn a_hook_ignoring_sigterm_is_killed_by_the_harness_after_its_patience() {
        let rev = Rev::new(&hooks(&[("ValidateService", "stubborn.sh", 1)])).script(
            "stubborn.sh",
            "trap '' TERM\nsleep 30 </dev/null >/dev/null 2>&1",
        );
        let (_root, agent) = agent();
        let agent = agent.sigterm_patience(Duration::from_millis(500));
        let report = agent.deploy(rev.path(), "d-1", &[]);
        let script = report.script("stubborn.sh").unwrap();
        assert_eq!(script.signal, Some(9));
        assert!(
            report
                .failure
                .as_ref()
                .unwrap()
                .1
                .contains("ignored SIGTERM"),
            "{report}"
        );
    }

    #[test]
    fn missing_and_non_executable_scripts() {
        let rev = Rev::new(&hooks(&[
            ("BeforeInstall", "plain.sh", 5),
            ("AfterInstall", "missing.sh", 5),
        ]));
        fs::write(rev.path().join("plain.sh"), "#!/bin/sh\necho ran\n").unwrap();
        fs::set_permissions(
            rev.path().join("plain.sh"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let (_root, agent) = agent();
        let report = agent.deploy(rev.path(), "d-1", &[]);
        assert_eq!(
            report.script("plain.sh").unwrap().output_tail,
            "[stdout]ran"
        );
        assert_eq!(report.failed_event(), Some("AfterInstall"));
        assert!(report
            .failure
            .unwrap()
            .1
            .starts_with("Script does not exist at specified location"));
    }

    #[test]
    fn runas_goes_through_su() {
        if !nix::unistd::geteuid().is_root() || !Path::new("/bin/su").exists() {
            eprintln!("skipped: needs root and /bin/su");
            return;
        }
        let spec = "version: 0.0\nos: linux\nhooks:\n  BeforeInstall:\n    - location: who.sh\n      runas: root\n      timeout: 10\n";
        let rev = Rev::new(spec).script("who.sh", "echo \"uid=$(id -u) event=$LIFECYCLE_EVENT\"");
        let (_root, agent) = agent();
        let report = agent.deploy(rev.path(), "d-1", &[]);
        assert!(report.success(), "{report}");
        let tail = &report.script("who.sh").unwrap().output_tail;
        assert!(tail.contains("uid=0"), "{tail}");
    }

    #[test]
    fn only_the_last_2048_characters_are_kept() {
        let rev = Rev::new(&hooks(&[("BeforeInstall", "noisy.sh", 10)])).script(
            "noisy.sh",
            "i=0\nwhile [ $i -lt 500 ]; do echo \"line $i\"; i=$((i+1)); done\nexit 3",
        );
        let (_root, agent) = agent();
        let report = agent.deploy(rev.path(), "d-1", &[]);
        let script = report.script("noisy.sh").unwrap();
        assert_eq!(script.exit_code, Some(3));
        assert_eq!(script.output_tail.chars().count(), TAIL_CHARS);
        assert!(script.output_tail.ends_with("[stdout]line 499"));
        assert_eq!(tail("héllo", 4), "éllo");
    }

    #[test]
    fn install_copies_files_to_the_remapped_destination_and_cleans_the_previous_install() {
        let spec = "version: 0.0\nos: linux\nfiles:\n  - source: /\n    destination: /home/ec2-user/app/deploy\n";
        let v1 = Rev::new(spec).script("bin/tool", "echo v1");
        fs::write(v1.path().join("old.txt"), "old").unwrap();
        let v2 = Rev::new(spec).script("bin/tool", "echo v2");
        let dest = tempfile::tempdir().unwrap();
        let (_root, agent) = agent();
        let agent = agent.destination_root(dest.path());
        let deploy_dir = dest.path().join("home/ec2-user/app/deploy");
        assert!(agent.deploy(v1.path(), "d-1", &[]).success());
        assert!(deploy_dir.join("old.txt").is_file());
        let report = agent.deploy(v2.path(), "d-2", &[]);
        assert!(report.success(), "{report}");
        assert!(!deploy_dir.join("old.txt").exists());
        assert!(fs::read_to_string(deploy_dir.join("bin/tool"))
            .unwrap()
            .contains("v2"));
        assert_eq!(
            fs::metadata(deploy_dir.join("bin/tool"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        // A file the agent did not install is in the way: DISALLOW fails.
        fs::write(deploy_dir.join("stranger"), "x").unwrap();
        fs::write(v2.path().join("stranger"), "y").unwrap();
        let report = agent.deploy(v2.path(), "d-3", &[]);
        assert_eq!(report.failed_event(), Some("Install"), "{report}");
    }

    #[test]
    fn unpacks_tgz_and_zip_revisions_keeping_modes() {
        let rev =
            Rev::new(&hooks(&[("BeforeInstall", "hooks/h", 5)])).script("hooks/h", "echo packed");
        let packs = tempfile::tempdir().unwrap();
        let tgz = packs.path().join("rev.tgz");
        {
            let gz = flate2::write::GzEncoder::new(
                File::create(&tgz).unwrap(),
                flate2::Compression::fast(),
            );
            let mut builder = tar::Builder::new(gz);
            builder.append_dir_all(".", rev.path()).unwrap();
            builder.into_inner().unwrap().finish().unwrap();
        }
        let zip_path = packs.path().join("rev.zip");
        {
            let mut zip = zip::ZipWriter::new(File::create(&zip_path).unwrap());
            let options = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
            zip.add_directory("hooks/", options).unwrap();
            zip.start_file("hooks/h", options).unwrap();
            zip.write_all(b"#!/bin/sh\necho zipped\n").unwrap();
            zip.start_file("appspec.yml", options.unix_permissions(0o644))
                .unwrap();
            zip.write_all(fs::read(rev.path().join("appspec.yml")).unwrap().as_slice())
                .unwrap();
            zip.finish().unwrap();
        }
        let (_root, agent) = agent();
        let report = agent.deploy(&tgz, "d-1", &[]);
        assert_eq!(
            report.script("hooks/h").unwrap().output_tail,
            "[stdout]packed",
            "{report}"
        );
        let report = agent.deploy(&zip_path, "d-2", &[]);
        assert_eq!(
            report.script("hooks/h").unwrap().output_tail,
            "[stdout]zipped",
            "{report}"
        );
        let mode = fs::metadata(agent.archive_dir("d-2").join("hooks/h"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(agent
            .deploy(&tgz, "d-2", &[])
            .failure
            .unwrap()
            .1
            .contains("must be new"));
    }
}
