//! Shared support for the integration tests: a whole site (sandboxed nginx, state dir,
//! revision with the fixture app, portswap.yml) and a way to run the real hook binaries.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use portswap_testkit::hooks::{self, yaml_list};
use portswap_testkit::nginx::{self, NginxSandbox};
use portswap_testkit::{bins, net};

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
    /// `switch.by` (with the site's service port and a boot unit directory inside the site);
    /// `None` leaves the `switch:` section out.
    pub switch_by: Option<&'static str>,
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
            switch_by: None,
        }
    }
}

/// One host: nginx in a sandbox, two free slot ports, a state directory, a revision.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub nginx: NginxSandbox,
    pub ports: [u16; 2],
    /// `switch.service_port` when `settings.switch_by` is set.
    pub service_port: u16,
    pub settings: Settings,
}

impl Site {
    pub fn new() -> Site {
        Site::with(Settings::default())
    }

    pub fn with(settings: Settings) -> Site {
        Site::with_nginx(settings, |_| String::new())
    }

    /// A site whose nginx gets `http_extra(service port)` at `http` level (e.g. an upstream
    /// block).
    pub fn with_nginx(settings: Settings, http_extra: impl FnOnce(u16) -> String) -> Site {
        Site::using(&nginx::nginx_binary(), http_extra, settings)
    }

    /// A site whose nginx is the executable `nginx_bin`, with `http_extra(service port)` at
    /// `http` level.
    pub fn using(
        nginx_bin: &Path,
        http_extra: impl FnOnce(u16) -> String,
        settings: Settings,
    ) -> Site {
        bins::ensure_built();
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        fs::create_dir_all(root.join("nginx")).unwrap();
        fs::create_dir_all(root.join("systemd")).unwrap();
        fs::create_dir_all(root.join("revision")).unwrap();
        bins::copy_executable(
            &bins::bin("fixture-app"),
            &root.join("revision/fixture-app"),
        );
        let service_port = net::free_port();
        let nginx = NginxSandbox::start_using(
            nginx_bin,
            &root.join("nginx"),
            &root.join("service-url.inc"),
            &http_extra(service_port),
        );
        let ports = [net::free_port(), net::free_port()];
        let site = Site {
            dir,
            nginx,
            ports,
            service_port,
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
        let app_command = hooks::fixture_command("{deployment_id}", &self.settings.app_args);
        let test_command = self
            .settings
            .test_command
            .clone()
            .unwrap_or_else(|| self.nginx.test_command());
        let text = format!(
            "slots:\n  - {{ port: {p0}, profile: real1 }}\n  - {{ port: {p1}, profile: real2 }}\n\
             app:\n  artifacts: [\"revision/fixture-app\"]\n  command: {cmd}\n  supervisor: process\n{user}\
             health:\n  path: /health\n  timeout: {ht}\n\
             nginx:\n  include: {include}\n  test_command: {test}\n  pid_file: {pid}\n\
             stop:\n  grace: {grace}\n\
             state:\n  dir: {state}\n  lock_wait: {lw}\n{switch}{extra}",
            include = self.include().display(),
            state = self.state().display(),
            p0 = self.ports[0],
            p1 = self.ports[1],
            cmd = yaml_list(&app_command),
            ht = self.settings.health_timeout,
            test = yaml_list(&test_command),
            pid = self.nginx.pid_file().display(),
            grace = self.settings.grace,
            lw = self.settings.lock_wait,
            extra = self.settings.extra,
            switch = self
                .settings
                .switch_by
                .map(|by| format!(
                    "switch:\n  by: {by}\n  service_port: {}\n  boot_unit_dir: {}\n",
                    self.service_port,
                    self.root().join("systemd").display()
                ))
                .unwrap_or_default(),
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
        self.hook_with(name, args, deployment, |_| {})
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
        hooks::included_port(&self.include())
    }

    /// The recorded pid of the app on `port`.
    pub fn recorded_pid(&self, port: u16) -> Option<i32> {
        hooks::recorded_pid(&self.state(), port)
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

/// CLOCK_MONOTONIC in microseconds (systemd's `*TimestampMonotonic` clock; a test machine
/// shares the host's, there is no time namespace).
pub fn monotonic_us() -> u64 {
    let mut t = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000
}

/// portswap's redirect rule in `nft -n list table ip portswap` output: `(service port,
/// slot)`, or `None` (panics on more than one rule).
pub fn redirect_in(listing: &str) -> Option<(u16, u16)> {
    let lines: Vec<&str> = listing.lines().filter(|l| l.contains("redirect")).collect();
    assert!(lines.len() <= 1, "more than one rule: {listing}");
    let words: Vec<&str> = lines.first()?.split_whitespace().collect();
    let after = |key: &str| -> u16 {
        let at = words.iter().position(|w| *w == key).unwrap();
        words[at + 1].trim_start_matches(':').parse().unwrap()
    };
    Some((after("dport"), after("to")))
}

/// Waits up to `limit` for `f`, panicking with `what` otherwise.
pub fn wait(limit: Duration, what: &str, f: impl FnMut() -> bool) {
    net::wait_until(limit, what, f).unwrap_or_else(|e| panic!("{e}"));
}

// ---------------------------------------------------------------------------------------------
// Fault-suite helpers (tests/faults*.rs, tests/security.rs).
// ---------------------------------------------------------------------------------------------

/// Requests through nginx in a background thread, one connection each, until [`Traffic::finish`].
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Vec<String>>,
}

impl Traffic {
    /// Stops the requests; returns what each answered: the `X-App-Version`, or `error: ...`.
    pub fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.handle.join().expect("traffic thread")
    }

    /// Stops the requests and panics unless every one of them (at least one) reached `version`.
    pub fn assert_all(self, version: &str) {
        let seen = self.finish();
        assert_none(&seen, |v| v != version, &format!("did not reach {version}"));
    }

    /// Stops the requests, panics if any failed, and returns the versions that answered.
    pub fn assert_no_errors(self) -> Vec<String> {
        let seen = self.finish();
        assert_none(&seen, |v| v.starts_with("error"), "failed");
        seen
    }
}

/// Panics, showing the first few, when some of `seen` (at least one request) are `bad`.
fn assert_none(seen: &[String], bad: impl Fn(&str) -> bool, what: &str) {
    assert!(!seen.is_empty(), "no request was made");
    let wrong: Vec<&String> = seen.iter().filter(|v| bad(v)).collect();
    assert!(
        wrong.is_empty(),
        "{} of {} requests through nginx {what}: {:?}",
        wrong.len(),
        seen.len(),
        &wrong[..wrong.len().min(5)]
    );
}

impl Site {
    /// Starts requests through nginx (the live version is expected to answer each one).
    pub fn traffic(&self) -> Traffic {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let port = self.nginx.port();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            // At least one request, even if finish() comes at once.
            loop {
                let answer = match net::http_get(port, "/") {
                    Ok(r) if r.status == 200 => r
                        .header("X-App-Version")
                        .unwrap_or("no version header")
                        .to_string(),
                    Ok(r) => format!("error: status {}", r.status),
                    Err(e) => format!("error: {e}"),
                };
                seen.push(answer);
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    return seen;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Traffic { stop, handle }
    }

    /// Like [`Site::hook`], with `adjust` applied to the command before it runs.
    pub fn hook_with(
        &self,
        name: &str,
        args: &[&str],
        deployment: Option<&str>,
        adjust: impl FnOnce(&mut Command),
    ) -> Outcome {
        let mut command = hooks::command(name, &self.config_path());
        command.args(args);
        if let Some(id) = deployment {
            command.env("DEPLOYMENT_ID", id);
        }
        adjust(&mut command);
        let output = command.output().expect("run hook");
        Outcome {
            hook: name.to_string(),
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Edits portswap.yml as YAML (keys the [`Settings`] do not cover). [`Site::set`] rewrites
    /// the file from the settings and drops such edits.
    pub fn edit_config(&self, change: impl FnOnce(&mut serde_yaml::Mapping)) {
        let text = fs::read_to_string(self.config_path()).unwrap();
        let mut value: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        change(value.as_mapping_mut().expect("portswap.yml is a mapping"));
        fs::write(self.config_path(), serde_yaml::to_string(&value).unwrap()).unwrap();
    }

    /// Sets `section.key` in portswap.yml to `value` (YAML text).
    pub fn set_key(&self, section: &str, key: &str, value: &str) {
        let value: serde_yaml::Value = serde_yaml::from_str(value).unwrap();
        self.edit_config(|map| {
            let entry = map
                .entry(section.into())
                .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
            entry
                .as_mapping_mut()
                .expect("a section")
                .insert(key.into(), value);
        });
    }

    /// portswap temp files (`.NAME.portswap-PID.tmp`) left in the include's and the state
    /// directory.
    pub fn temp_files(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for dir in [self.root().to_path_buf(), self.state()] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && name.contains(".portswap-") && name.ends_with(".tmp") {
                    found.push(entry.path());
                }
            }
        }
        found
    }

    /// Panics unless nothing is half-written: the include is absent or exactly the render for
    /// one slot, every state record parses, and no temp file is left.
    pub fn assert_nothing_half_written(&self) {
        if let Some(text) = self.include_text() {
            let valid: Vec<String> = self
                .ports
                .iter()
                .map(|p| format!("set $service_url http://127.0.0.1:{p};\n"))
                .collect();
            assert!(
                valid.contains(&text),
                "include is not a complete render: {text:?}"
            );
        }
        let mut records: Vec<PathBuf> = self
            .ports
            .iter()
            .map(|p| self.state().join(format!("slot-{p}.yml")))
            .collect();
        records.push(self.state().join("switch.yml"));
        for path in records {
            if let Ok(text) = fs::read_to_string(&path) {
                let parsed: Result<serde_yaml::Mapping, _> = serde_yaml::from_str(&text);
                assert!(
                    parsed.is_ok_and(|m| !m.is_empty()),
                    "{} is not a complete record: {text:?}",
                    path.display()
                );
            }
        }
        assert_eq!(
            self.temp_files(),
            Vec::<PathBuf>::new(),
            "temp files left behind"
        );
    }

    /// Runs the hooks of a deployment up to and including `last` (`"start"`, `"health"`, ...),
    /// each expected to succeed.
    pub fn run_until(&self, id: &str, last: &str) {
        for hook in ["stop", "start", "health", "switch"] {
            self.hook(hook, &[], Some(id)).ok();
            if hook == last {
                return;
            }
        }
    }
}

/// A throwaway system user (`portswap-test-<random>`), deleted on drop.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

static USERADD: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl TestUser {
    /// Creates the user, or reports `row` skipped ([`portswap_testkit::skip`]: a visible
    /// SKIPPED line, a failure under CI) and returns `None` when that is impossible (not
    /// root, no useradd).
    pub fn create(row: &str) -> Option<TestUser> {
        let _serial = USERADD.lock().unwrap_or_else(|e| e.into_inner());
        if !nix::unistd::geteuid().is_root() {
            portswap_testkit::skip(row, "needs root to create a throwaway user");
            return None;
        }
        if !portswap_testkit::tools::need(row, &[&portswap_testkit::tools::USERADD]) {
            return None;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "portswap-test-{:x}",
            (nanos ^ std::process::id().wrapping_mul(2_654_435_761)) & 0xff_ffff
        );
        let mut last = String::new();
        for _ in 0..20 {
            match Command::new(portswap_testkit::tools::path(
                &portswap_testkit::tools::USERADD,
            ))
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ])
            .output()
            {
                Ok(out) if out.status.success() => {
                    let user = nix::unistd::User::from_name(&name).ok().flatten()?;
                    return Some(TestUser {
                        name,
                        uid: user.uid.as_raw(),
                        gid: user.gid.as_raw(),
                    });
                }
                // Another useradd (another test process) holds /etc/passwd: try again.
                Ok(out) => last = String::from_utf8_lossy(&out.stderr).into_owned(),
                Err(e) => {
                    last = e.to_string();
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        portswap_testkit::skip(row, &format!("cannot create a throwaway user: {last}"));
        None
    }

    /// Makes `command` run as this user.
    pub fn apply(&self, command: &mut Command) {
        use std::os::unix::process::CommandExt;
        command.uid(self.uid).gid(self.gid);
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _serial = USERADD.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..20 {
            match Command::new("userdel").arg(&self.name).output() {
                Ok(out) if out.status.success() => return,
                Ok(out) if String::from_utf8_lossy(&out.stderr).contains("does not exist") => {
                    return
                }
                Err(_) => return,
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// Changes the owner of `path` and everything below it.
pub fn chown_tree(path: &Path, uid: u32, gid: u32) {
    let _ = std::os::unix::fs::lchown(path, Some(uid), Some(gid));
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        for entry in fs::read_dir(path).unwrap().flatten() {
            chown_tree(&entry.path(), uid, gid);
        }
    }
}

/// A small deterministic pseudo-random sequence (xorshift), seeded from the clock.
pub struct Rng(u64);

impl Rng {
    pub fn from_clock() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng(nanos | 1)
    }
    pub fn seed(&self) -> u64 {
        self.0
    }
    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A process the test started, killed on drop.
pub struct Guarded(pub std::process::Child);

impl Guarded {
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    pub fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
