//! The bench's host: a sandboxed nginx, two slot ports, the fixture app as the artifact, a
//! portswap.yml, and the real hook binaries run the way the agent runs them.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portswap_testkit::hooks::{self, yaml_list};
use portswap_testkit::{bins, net, NginxSandbox};

/// One hook run.
#[derive(Debug, Clone)]
pub struct HookRun {
    /// `stop`, `start`, `health`, `switch`.
    pub hook: &'static str,
    /// When it started, since the bench's origin.
    pub started: Duration,
    /// How long it ran.
    pub took: Duration,
    /// Exit code 0.
    pub ok: bool,
    /// Its verdict line.
    pub verdict: String,
    /// Where its time went, as the hook logged it (`portswap::timings`): each step with its
    /// milliseconds, `total` last; empty when it logged none.
    pub timings: Vec<(String, f64)>,
}

/// A temporary host for one bench phase.
pub struct Site {
    name: &'static str,
    switch_yaml: String,
    hook_logs: Option<PathBuf>,
    dir: tempfile::TempDir,
    /// The sandboxed nginx.
    pub nginx: NginxSandbox,
    /// The two slot ports.
    pub ports: [u16; 2],
    /// Whether the configuration sets `nginx.front` (as the examples do): on by default.
    pub front: bool,
}

impl Site {
    /// A new host with its own nginx (the executable `nginx`, with the extra http-level
    /// `directives`) and free ports, switching the way `switch_yaml` (a `switch:` section,
    /// or empty for nginx reloads) says; with `hook_logs`, hooks run with `RUST_LOG=debug`
    /// and their stderr is kept there as `<name>-<deployment>-<hook>.log`. With `listen_also`
    /// (`ADDRESS:PORT`), nginx also serves the app there (a host behind a load balancer).
    pub fn new(
        name: &'static str,
        nginx: &Path,
        directives: &[String],
        switch_yaml: String,
        hook_logs: Option<PathBuf>,
        listen_also: Option<String>,
    ) -> Site {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nginx_extra: String = directives
            .iter()
            .map(|d| format!("{};\n", d.trim().trim_end_matches(';')))
            .collect();
        if let Some(address) = listen_also {
            // The sandbox's include glob trick: matches nothing until the first switch.
            let include = dir.path().join("service-url.in[c]");
            nginx_extra += &format!(
                "server {{ listen {address}; set $service_url http://127.0.0.1:1; \
                 include \"{}\"; location / {{ proxy_pass $service_url; \
                 proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n",
                include.display()
            );
        }
        bins::ensure_built();
        fs::create_dir_all(dir.path().join("revision")).expect("revision dir");
        fs::copy(
            bins::bin("fixture-app"),
            dir.path().join("revision/fixture-app"),
        )
        .expect("copy fixture-app");
        let nginx = NginxSandbox::start_using(
            nginx,
            &dir.path().join("nginx"),
            &dir.path().join("service-url.inc"),
            &nginx_extra,
        );
        if let Some(logs) = &hook_logs {
            fs::create_dir_all(logs).expect("create the hook log directory");
        }
        let ports = [net::free_port(), net::free_port()];
        Site {
            name,
            switch_yaml,
            hook_logs,
            dir,
            nginx,
            ports,
            front: true,
        }
    }

    /// The state directory the hooks keep.
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The include file nginx reads.
    pub fn include(&self) -> PathBuf {
        self.dir.path().join("service-url.inc")
    }

    /// The fixture-app copy used as the artifact.
    pub fn fixture(&self) -> PathBuf {
        self.dir.path().join("revision/fixture-app")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("portswap.yml")
    }

    /// Writes portswap.yml: the fixture app, ready after `ready_ms`, with `extra` arguments.
    pub fn configure(&self, ready_ms: u64, extra: &[&str]) {
        self.configure_with(ready_ms, extra, "")
    }

    /// [`Site::configure`] with `yaml` (more sections) at the end.
    pub fn configure_with(&self, ready_ms: u64, extra: &[&str], yaml: &str) {
        let delay = ["--start-delay-ms".to_string(), ready_ms.to_string()];
        let mut command = hooks::fixture_command("{deployment_id}", &delay);
        command.extend(extra.iter().map(|s| s.to_string()));
        let text = format!(
            "slots:\n  - {{ port: {}, profile: real1 }}\n  - {{ port: {}, profile: real2 }}\n\
             app:\n  artifacts: [\"revision/fixture-app\"]\n  command: {}\n  supervisor: process\n\
             health:\n  path: /health\n  timeout: 30s\n\
             nginx:\n  include: {}\n  test_command: {}\n  pid_file: {}\n{}\
             stop:\n  grace: 5s\nstate:\n  dir: {}\n  lock_wait: 5s\n{}{yaml}",
            self.ports[0],
            self.ports[1],
            yaml_list(&command),
            self.include().display(),
            yaml_list(&self.nginx.test_command()),
            self.nginx.pid_file().display(),
            // The example configuration's front-door check, on this nginx's port.
            match self.front {
                true => format!("  front: http://127.0.0.1:{}\n", self.nginx.port()),
                false => String::new(),
            },
            self.state().display(),
            // Host paths are absolute (a relative one is refused).
            self.switch_yaml
                .replace("{dir}", &self.dir.path().display().to_string()),
        );
        fs::write(self.config(), text).expect("write portswap.yml");
    }

    /// Runs one hook as the agent does (cwd `/`, near-empty environment).
    pub fn hook(
        &self,
        hook: &'static str,
        args: &[&str],
        deployment: &str,
        origin: Instant,
    ) -> HookRun {
        let mut command = hooks::command(hook, &self.config());
        command.args(args).env("DEPLOYMENT_ID", deployment);
        if self.hook_logs.is_some() {
            command.env("RUST_LOG", "debug");
        } else {
            // Only the line that says where the hook's time goes.
            command.env(
                "RUST_LOG",
                format!("info,{}=debug", portswap::timings::TARGET),
            );
        }
        let started = origin.elapsed();
        let clock = Instant::now();
        let output = command.output().expect("run hook");
        let took = clock.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if let Some(logs) = &self.hook_logs {
            let file = logs.join(format!("{}-{deployment}-{hook}.log", self.name));
            let _ = fs::write(
                file,
                format!(
                    "# started {:.3} s after the bench's origin, took {:.1} ms, {}\n{stderr}",
                    started.as_secs_f64(),
                    took.as_secs_f64() * 1000.0,
                    output.status
                ),
            );
        }
        let verdict = stderr.lines().last().unwrap_or("").to_string();
        let timings = stderr
            .lines()
            .rev()
            .find_map(portswap::timings::parse)
            .unwrap_or_default();
        HookRun {
            hook,
            started,
            took,
            ok: output.status.success(),
            verdict,
            timings,
        }
    }

    /// stop, start, health, switch in CodeDeploy order, stopping at the first failure.
    pub fn deploy(&self, deployment: &str, origin: Instant) -> Vec<HookRun> {
        let mut runs = Vec::new();
        for hook in ["stop", "start", "health", "switch"] {
            let run = self.hook(hook, &[], deployment, origin);
            let failed = !run.ok;
            runs.push(run);
            if failed {
                break;
            }
        }
        runs
    }

    /// How many of `n` fresh requests through nginx were NOT answered by `version`.
    pub fn stale_answers(&self, version: &str, n: usize) -> usize {
        (0..n)
            .filter(|_| {
                let response = net::http_get(self.nginx.port(), "/");
                !response.is_ok_and(|r| r.header("X-App-Version") == Some(version))
            })
            .count()
    }

    /// Stops both slots' apps with the real `stop --force`.
    pub fn stop_all(&self, origin: Instant) {
        for port in self.ports {
            self.hook(
                "stop",
                &["--force", "--port", &port.to_string()],
                "bench-cleanup",
                origin,
            );
        }
    }
}

/// The apps a bench phase started end with it: a bench run leaves no process behind.
impl Drop for Site {
    fn drop(&mut self) {
        for port in self.ports {
            if let Some(pid) = hooks::recorded_pid(&self.state(), port) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}
