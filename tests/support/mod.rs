//! Shared support for the integration tests: a whole site (sandboxed nginx, state dir,
//! revision with the fixture app, portswap.yml) and a way to run the real hook binaries.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use portswap_testkit::{bins, net, nginx::NginxSandbox};

/// What one hook run produced.
#[derive(Debug)]
pub struct Outcome {
    pub hook: String,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// The verdict: the last line of stderr.
    pub fn last_line(&self) -> &str {
        self.stderr.lines().last().unwrap_or("")
    }

    /// Panics with the whole output unless the hook succeeded.
    pub fn ok(self) -> Outcome {
        assert_eq!(
            self.code, 0,
            "{} failed:\n{}{}",
            self.hook, self.stdout, self.stderr
        );
        assert!(
            self.last_line()
                .starts_with(&format!("portswap {}: OK", self.hook)),
            "{}",
            self.stderr
        );
        self
    }

    /// Panics unless the hook failed with `code` and a verdict line containing `needle`.
    pub fn fails(self, code: i32, needle: &str) -> Outcome {
        assert_eq!(
            self.code, code,
            "{} exit code; output:\n{}{}",
            self.hook, self.stdout, self.stderr
        );
        assert!(
            self.last_line()
                .starts_with(&format!("portswap {}: FAILED", self.hook)),
            "{}",
            self.stderr
        );
        assert!(
            self.last_line().contains(needle),
            "verdict lacks `{needle}`: {}",
            self.last_line()
        );
        self
    }
}

/// The knobs a test turns in portswap.yml.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Extra arguments for the fixture app (e.g. `--unhealthy`).
    pub app_args: Vec<String>,
    pub health_timeout: &'static str,
    pub grace: &'static str,
    pub lock_wait: &'static str,
    /// Replaces the nginx test command.
    pub test_command: Option<Vec<String>>,
    /// Raw YAML appended at the end (extra sections).
    pub extra: String,
    /// `app.user`.
    pub app_user: Option<String>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            app_args: Vec::new(),
            health_timeout: "10s",
            grace: "5s",
            lock_wait: "5s",
            test_command: None,
            extra: String::new(),
            app_user: None,
        }
    }
}

/// One host: nginx in a sandbox, two free slot ports, a state directory, a revision.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub nginx: NginxSandbox,
    pub ports: [u16; 2],
    pub settings: Settings,
}

fn yaml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

impl Site {
    pub fn new() -> Site {
        Site::with(Settings::default())
    }

    pub fn with(settings: Settings) -> Site {
        bins::ensure_built();
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        fs::create_dir_all(root.join("nginx")).unwrap();
        fs::create_dir_all(root.join("revision")).unwrap();
        fs::copy(bins::bin("fixture-app"), root.join("revision/fixture-app"))
            .expect("copy fixture-app");
        let nginx = NginxSandbox::start(&root.join("nginx"), &root.join("service-url.inc"));
        let ports = [net::free_port(), net::free_port()];
        let site = Site {
            dir,
            nginx,
            ports,
            settings,
        };
        site.write_config();
        site
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    pub fn config_path(&self) -> PathBuf {
        self.root().join("portswap.yml")
    }
    pub fn include(&self) -> PathBuf {
        self.root().join("service-url.inc")
    }
    pub fn state(&self) -> PathBuf {
        self.root().join("state")
    }

    /// Writes portswap.yml from the settings.
    pub fn write_config(&self) {
        let mut app_command: Vec<String> = [
            "{artifact}",
            "--port",
            "{port}",
            "--profile",
            "{profile}",
            "--version",
            "{deployment_id}",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        app_command.extend(self.settings.app_args.iter().cloned());
        let test_command = self
            .settings
            .test_command
            .clone()
            .unwrap_or_else(|| self.nginx.test_command());
        let text = format!(
            "slots:\n  - {{ port: {p0}, profile: real1 }}\n  - {{ port: {p1}, profile: real2 }}\n\
             app:\n  artifacts: [\"revision/fixture-app\"]\n  command: {cmd}\n{user}\
             health:\n  path: /health\n  timeout: {ht}\n\
             nginx:\n  include: service-url.inc\n  test_command: {test}\n  pid_file: {pid}\n\
             stop:\n  grace: {grace}\n\
             state:\n  dir: state\n  lock_wait: {lw}\n{extra}",
            p0 = self.ports[0],
            p1 = self.ports[1],
            cmd = yaml_list(&app_command),
            ht = self.settings.health_timeout,
            test = yaml_list(&test_command),
            pid = self.nginx.pid_file().display(),
            grace = self.settings.grace,
            lw = self.settings.lock_wait,
            extra = self.settings.extra,
            user = self
                .settings
                .app_user
                .as_ref()
                .map(|u| format!("  user: {u}\n"))
                .unwrap_or_default(),
        );
        fs::write(self.config_path(), text).unwrap();
    }

    /// Changes the settings and rewrites portswap.yml.
    pub fn set(&mut self, change: impl FnOnce(&mut Settings)) {
        change(&mut self.settings);
        self.write_config();
    }

    /// Runs a hook binary the way the agent does: cwd `/`, a near-empty environment, the
    /// config found through PORTSWAP_CONFIG.
    pub fn hook(&self, name: &str, args: &[&str], deployment: Option<&str>) -> Outcome {
        let mut command = Command::new(bins::bin(name));
        command
            .args(args)
            .current_dir("/")
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("PORTSWAP_CONFIG", self.config_path())
            .stdin(Stdio::null());
        if let Some(id) = deployment {
            command.env("DEPLOYMENT_ID", id);
        }
        let output = command.output().expect("run hook");
        Outcome {
            hook: name.to_string(),
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Runs stop, start, health, switch in CodeDeploy order; stops at the first failure and
    /// returns every outcome.
    pub fn deploy(&self, id: &str) -> Vec<Outcome> {
        let mut outcomes = Vec::new();
        for hook in ["stop", "start", "health", "switch"] {
            let outcome = self.hook(hook, &[], Some(id));
            let failed = outcome.code != 0;
            outcomes.push(outcome);
            if failed {
                break;
            }
        }
        outcomes
    }

    /// Runs a whole deployment and panics unless every hook succeeded.
    pub fn deploy_ok(&self, id: &str) {
        for outcome in self.deploy(id) {
            outcome.ok();
        }
    }

    /// The app version that answers through nginx right now (`None` if nothing answers).
    pub fn live_version(&self) -> Option<String> {
        let response = net::http_get(self.nginx.port(), "/").ok()?;
        if response.status != 200 {
            return None;
        }
        response.header("X-App-Version").map(str::to_string)
    }

    /// The version answering directly on a slot port.
    pub fn version_on(&self, port: u16) -> Option<String> {
        let response = net::http_get(port, "/").ok()?;
        response.header("X-App-Version").map(str::to_string)
    }

    /// The include file's text, if any.
    pub fn include_text(&self) -> Option<String> {
        fs::read_to_string(self.include()).ok()
    }

    /// The port the include names (or `None`).
    pub fn included_port(&self) -> Option<u16> {
        let text = self.include_text()?;
        let digits: String = text
            .rsplit(':')
            .next()?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    }

    /// The recorded pid of the app on `port`.
    pub fn recorded_pid(&self, port: u16) -> Option<i32> {
        let text = fs::read_to_string(self.state().join(format!("slot-{port}.yml"))).ok()?;
        let line = text.lines().find(|l| l.starts_with("pid:"))?;
        line["pid:".len()..].trim().parse().ok()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for port in self.ports {
            if let Some(pid) = self.recorded_pid(port) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Waits up to `limit` for `f`, panicking with `what` otherwise.
pub fn wait(limit: Duration, what: &str, f: impl FnMut() -> bool) {
    net::wait_until(limit, what, f).unwrap_or_else(|e| panic!("{e}"));
}
