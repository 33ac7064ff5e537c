//! Deployments the way the CodeDeploy agent runs them (testkit's agent emulation): the
//! repository's appspec.yml, the real hook binaries inside a revision, the fixture app as the
//! artifact, a sandboxed nginx.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use portswap_testkit::agent::{Agent, AppSpec, DeploymentReport};
use portswap_testkit::hooks::{self, yaml_list};
use portswap_testkit::{bins, net, tools, NginxSandbox};

/// The repository's appspec.yml.
fn repo_appspec() -> String {
    fs::read_to_string(bins::workspace_root().join("appspec.yml"))
        .expect("appspec.yml at the repository root")
}

/// The repository's appspec.yml with one script's timeout changed.
fn appspec_with_timeout(location: &str, seconds: u64) -> String {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&repo_appspec()).unwrap();
    let mut found = false;
    for (_, scripts) in doc["hooks"].as_mapping_mut().unwrap().iter_mut() {
        for script in scripts.as_sequence_mut().unwrap() {
            if script["location"].as_str() == Some(location) {
                script["timeout"] = seconds.into();
                found = true;
            }
        }
    }
    assert!(found, "{location} is not in appspec.yml");
    serde_yaml::to_string(&doc).unwrap()
}

/// Hard-links `from` to `to` (copies across file systems).
fn link_or_copy(from: &Path, to: &Path) {
    if fs::hard_link(from, to).is_err() {
        portswap_testkit::bins::copy_executable(from, to);
    }
}

/// One instance: nginx in a sandbox, two slot ports, a state directory, an agent.
struct Host {
    dir: tempfile::TempDir,
    nginx: NginxSandbox,
    ports: [u16; 2],
    agent: Agent,
}

impl Host {
    fn new() -> Host {
        bins::ensure_built();
        let dir = tempfile::tempdir().expect("temp dir");
        let nginx = NginxSandbox::start(
            &dir.path().join("nginx"),
            &dir.path().join("service-url.inc"),
        );
        let ports = [net::free_port(), net::free_port()];
        let agent = Agent::new(&dir.path().join("agent"), "dg-agent-test")
            .destination_root(&dir.path().join("dest"));
        Host {
            dir,
            nginx,
            ports,
            agent,
        }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The portswap.yml of a revision whose app reports `version`.
    fn config(&self, version: &str, app_args: &[&str], health_timeout: &str) -> String {
        let command = hooks::fixture_command(version, app_args);
        let test_command = self.nginx.test_command();
        let test_command: Vec<&str> = test_command.iter().map(String::as_str).collect();
        format!(
            "slots:\n  - {{ port: {p0}, profile: real1 }}\n  - {{ port: {p1}, profile: real2 }}\n\
             app:\n  artifacts: [\"../fixture-app\"]\n  command: {command}\n\
             health:\n  path: /health\n  timeout: {health_timeout}\n\
             nginx:\n  include: {include}\n  test_command: {test}\n  pid_file: {pid}\n  reload_timeout: 5s\n\
             stop:\n  grace: 5s\n\
             state:\n  dir: {state}\n  lock_wait: 5s\n",
            p0 = self.ports[0],
            p1 = self.ports[1],
            command = yaml_list(&command),
            include = self.nginx.include_file().display(),
            test = yaml_list(&test_command),
            pid = self.nginx.pid_file().display(),
            state = self.state().display(),
        )
    }

    fn state(&self) -> PathBuf {
        self.root().join("state")
    }

    /// Lays out a revision: appspec.yml, hooks/{stop,start,health,switch}, hooks/portswap.yml
    /// and the fixture app at the root, where `../fixture-app` finds it.
    fn revision(&self, name: &str, appspec: &str, config: &str) -> PathBuf {
        let rev = self.root().join("revisions").join(name);
        fs::create_dir_all(rev.join("hooks")).unwrap();
        fs::write(rev.join("appspec.yml"), appspec).unwrap();
        fs::write(rev.join("hooks/portswap.yml"), config).unwrap();
        for hook in ["stop", "start", "health", "switch"] {
            link_or_copy(&bins::bin(hook), &rev.join("hooks").join(hook));
        }
        link_or_copy(&bins::bin("fixture-app"), &rev.join("fixture-app"));
        rev
    }

    /// A revision with the repository's appspec and an app that reports `version`.
    fn good_revision(&self, version: &str) -> PathBuf {
        self.revision(version, &repo_appspec(), &self.config(version, &[], "10s"))
    }

    fn deploy(&self, revision: &Path, id: &str) -> DeploymentReport {
        let report = self.agent.deploy(revision, id, &[("RUST_LOG", "info")]);
        eprintln!("{report}");
        report
    }

    /// The version answering through nginx.
    fn live_version(&self) -> Option<String> {
        let response = net::http_get(self.nginx.port(), "/").ok()?;
        (response.status == 200).then(|| response.header("X-App-Version").map(str::to_string))?
    }

    fn version_on(&self, port: u16) -> Option<String> {
        net::http_get(port, "/")
            .ok()?
            .header("X-App-Version")
            .map(str::to_string)
    }

    /// The port the include file names.
    fn included_port(&self) -> Option<u16> {
        hooks::included_port(self.nginx.include_file())
    }

    /// The pid `start` recorded for the app on `port`.
    fn recorded_pid(&self, port: u16) -> Option<i32> {
        hooks::recorded_pid(&self.state(), port)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for port in self.ports {
            if let Some(pid) = self.recorded_pid(port) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Every request through nginx reaches `version` right after a deployment.
fn assert_live(host: &Host, version: &str) {
    for _ in 0..10 {
        assert_eq!(host.live_version().as_deref(), Some(version));
    }
}

/// A client polling nginx with new connections until stopped (bounded to 2 minutes).
struct Poller {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(u64, Vec<String>)>,
}

impl Poller {
    fn start(port: u16) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let (mut count, mut failures) = (0u64, Vec::new());
            let end = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                count += 1;
                match net::http_get_timeout(port, "/", Duration::from_secs(2)) {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => failures.push(format!("status {}", r.status)),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (count, failures)
        });
        Poller { stop, handle }
    }

    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

#[test]
fn three_deployments_alternate_ports_without_a_failed_request() {
    let host = Host::new();
    let [a, b] = host.ports;
    let revisions: Vec<PathBuf> = ["v1", "v2", "v3"]
        .iter()
        .map(|v| host.good_revision(v))
        .collect();

    let first = host.deploy(&revisions[0], "d-1");
    assert!(first.success(), "{first}");
    assert!(
        first.event("ApplicationStop").unwrap().scripts.is_empty(),
        "nothing to stop on a first deployment"
    );
    assert_eq!(host.included_port(), Some(a));
    assert_live(&host, "v1");

    // From now on nginx is live: a client polls it through both later deployments.
    let poller = Poller::start(host.nginx.port());
    for (revision, id, version, port, previous) in [
        (&revisions[1], "d-2", "v2", b, "d-1"),
        (&revisions[2], "d-3", "v3", a, "d-2"),
    ] {
        let report = host.deploy(revision, id);
        assert!(report.success(), "{report}");
        let stop = report.script("hooks/stop").expect("ApplicationStop ran");
        assert_eq!(
            stop.archive,
            host.agent.archive_dir(previous),
            "stop comes from the last successful revision"
        );
        assert_eq!(host.included_port(), Some(port));
        assert_live(&host, version);
    }
    let (count, failures) = poller.finish();
    assert!(count > 0);
    assert!(
        failures.is_empty(),
        "{} of {count} requests failed: {failures:?}",
        failures.len()
    );
    assert_eq!(
        host.version_on(b).as_deref(),
        Some("v2"),
        "the previous version stays up for rollback"
    );
}

#[test]
fn a_never_healthy_app_fails_validate_service_and_the_next_good_deployment_succeeds() {
    let host = Host::new();
    let [a, b] = host.ports;
    let v1 = host.good_revision("v1");
    assert!(host.deploy(&v1, "d-1").success());
    let live_pid = host.recorded_pid(a).unwrap();

    let sick = host.revision(
        "v2",
        &repo_appspec(),
        &host.config("v2", &["--unhealthy"], "2s"),
    );
    let report = host.deploy(&sick, "d-2");
    assert_eq!(report.failed_event(), Some("ValidateService"), "{report}");
    let health = report.script("hooks/health").unwrap();
    assert_eq!(health.exit_code, Some(1), "{report}");
    assert!(
        health.output_tail.contains("portswap health: FAILED"),
        "{}",
        health.output_tail
    );
    assert!(
        report.script("hooks/switch").is_none(),
        "switch must not run after a failed health check"
    );
    assert_eq!(host.included_port(), Some(a), "nginx untouched");
    assert_live(&host, "v1");
    assert_eq!(
        host.recorded_pid(a),
        Some(live_pid),
        "the live app untouched"
    );
    // The failed deployment ended Install, so it is the one whose stop runs next.
    assert_eq!(
        host.agent.last_successful_archive(),
        Some(host.agent.archive_dir("d-2"))
    );

    let v3 = host.good_revision("v3");
    let report = host.deploy(&v3, "d-3");
    assert!(report.success(), "{report}");
    assert_eq!(
        report.script("hooks/stop").unwrap().archive,
        host.agent.archive_dir("d-2")
    );
    assert_eq!(host.included_port(), Some(b));
    assert_live(&host, "v3");
    assert_eq!(host.version_on(a).as_deref(), Some("v1"));
}

/// `/proc/<pid>/stat` fields after the command name: state, ppid, pgrp, session, ...
fn stat_fields(pid: i32) -> Vec<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &text[text.rfind(')').unwrap() + 2..];
    after.split_whitespace().map(str::to_string).collect()
}

#[test]
fn the_start_hook_leaves_no_output_open_and_detaches_the_app() {
    let host = Host::new();
    let report = host.deploy(&host.good_revision("v1"), "d-1");
    assert!(report.success(), "{report}");
    let start = report.script("hooks/start").unwrap();
    // Had the app kept the hook's stdout or stderr, the agent would have waited out the
    // whole 90 s timeout and failed with "failed to close STDOUT".
    assert!(
        start.duration < Duration::from_secs(20),
        "start took {:?}",
        start.duration
    );
    assert!(
        start.output_tail.contains("portswap start: OK"),
        "{}",
        start.output_tail
    );

    let app = host
        .recorded_pid(host.ports[0])
        .expect("start recorded a pid");
    for fd in 0..=2 {
        let target = fs::read_link(format!("/proc/{app}/fd/{fd}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        assert!(
            !target.starts_with("pipe:"),
            "the app's fd {fd} is {target}"
        );
    }
    let fields = stat_fields(app);
    let (pgrp, session): (i32, i32) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
    assert_eq!(session, app, "the app leads its own session");
    assert_ne!(
        pgrp, start.pid as i32,
        "the app left the hook's process group"
    );
}

#[test]
fn a_hook_timeout_kills_the_hook_but_not_the_app_it_started() {
    let host = Host::new();
    let [a, b] = host.ports;
    assert!(host.deploy(&host.good_revision("v1"), "d-1").success());

    // health may wait 60 s for an app that never gets healthy, inside a 3 s hook: the agent
    // SIGTERMs it (xtask bundle would refuse to pack this).
    let appspec = appspec_with_timeout("hooks/health", 3);
    let slow = host.revision("v2", &appspec, &host.config("v2", &["--unhealthy"], "60s"));
    let started = Instant::now();
    let report = host.deploy(&slow, "d-2");
    assert_eq!(report.failed_event(), Some("ValidateService"), "{report}");
    let health = report.script("hooks/health").unwrap();
    assert!(health.timed_out, "{report}");
    assert_eq!(
        report.failure.as_ref().unwrap().1,
        "Script at specified location: hooks/health failed to complete in 3 seconds"
    );
    assert!(
        health.exit_code == Some(143) || health.signal == Some(15),
        "health should stop on SIGTERM: {:?}/{:?}",
        health.exit_code,
        health.signal
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    // The app started by ApplicationStart is still running on the idle port; v1 is still live.
    let app = host.recorded_pid(b).expect("v2 was started");
    assert!(
        Path::new(&format!("/proc/{app}")).exists(),
        "the app died with the hook"
    );
    assert_eq!(host.version_on(b).as_deref(), Some("v2"));
    assert_eq!(host.included_port(), Some(a));
    assert_live(&host, "v1");

    // And the next deployment stops it cleanly and goes live.
    let report = host.deploy(&host.good_revision("v3"), "d-3");
    assert!(report.success(), "{report}");
    assert_live(&host, "v3");
}

#[test]
fn the_repository_appspec_is_the_one_used() {
    let host = Host::new();
    let report = host.deploy(&host.good_revision("v1"), "d-1");
    assert!(report.success(), "{report}");
    let archive = host.agent.archive_dir("d-1");
    assert_eq!(
        fs::read_to_string(archive.join("appspec.yml")).unwrap(),
        repo_appspec()
    );

    // The scripts that ran, event by event, are the ones the repository's appspec lists.
    let spec = AppSpec::parse(&repo_appspec()).unwrap();
    for event in [
        "BeforeInstall",
        "AfterInstall",
        "ApplicationStart",
        "ValidateService",
    ] {
        let ran: Vec<&str> = report
            .event(event)
            .unwrap()
            .scripts
            .iter()
            .map(|s| s.location.as_str())
            .collect();
        let listed: Vec<&str> = spec
            .scripts(event)
            .iter()
            .map(|s| s.location.as_str())
            .collect();
        assert_eq!(ran, listed, "{event}");
    }
    let validate: Vec<&str> = spec
        .scripts("ValidateService")
        .iter()
        .map(|s| s.location.as_str())
        .collect();
    assert_eq!(validate, ["hooks/health", "hooks/switch"]);
    assert_eq!(spec.scripts("ApplicationStop")[0].location, "hooks/stop");
    assert_eq!(spec.scripts("ApplicationStart")[0].location, "hooks/start");

    // Install copied the revision where the appspec says (under the test's destination root).
    let files = &spec.files[0];
    let installed = host
        .root()
        .join("dest")
        .join(files.destination.trim_start_matches('/'));
    assert!(
        installed.join("hooks/switch").is_file(),
        "{}",
        installed.display()
    );
    assert!(installed.join("appspec.yml").is_file());
}

/// A process started the way the legacy `start.sh` starts the app (`nohup java ... &` from the
/// agent): cwd `/`, output to /dev/null, no pid file, no portswap marker. Killed on drop.
struct LegacyApp(std::process::Child);

impl LegacyApp {
    fn start(port: u16, version: &str, profile: &str) -> LegacyApp {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new(bins::bin("fixture-app"))
            .args(["--port", &port.to_string(), "--version", version])
            .args(["--profile", profile])
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        net::wait_until(Duration::from_secs(10), "the legacy app listens", || {
            net::port_is_listening(port)
        })
        .unwrap();
        LegacyApp(child)
    }

    fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for LegacyApp {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A stand-in for the book's `stop.sh` (with its `profile.sh`), written for this test with
/// this host's ports in place of 80, 8081 and 8082: ask nginx for `/profile`, take the other
/// profile's port as idle, `lsof -ti tcp:PORT`, `kill -15` what it finds, `sleep 5`.
fn legacy_stop_sh(nginx_port: u16, real1_port: u16, real2_port: u16) -> String {
    format!(
        r#"#!/usr/bin/env bash
# profile.sh: the live profile is what nginx's app answers on /profile
idle_profile() {{
    local code current
    code=$(curl -s -o /dev/null -w "%{{http_code}}" http://127.0.0.1:{nginx_port}/profile)
    if [ "$code" -ge 400 ]; then
        current=real2
    else
        current=$(curl -s http://127.0.0.1:{nginx_port}/profile)
    fi
    if [ "$current" == real1 ]; then echo real2; else echo real1; fi
}}
idle_port() {{
    if [ "$(idle_profile)" == real1 ]; then echo {real1_port}; else echo {real2_port}; fi
}}
# stop.sh
IDLE_PORT=$(idle_port)
echo "> looking for the app on port $IDLE_PORT"
IDLE_PID=$(lsof -ti tcp:"$IDLE_PORT")
if [ -z "$IDLE_PID" ]; then
    echo "> nothing runs there, nothing to stop"
else
    echo "> kill -15 $IDLE_PID"
    kill -15 $IDLE_PID
    sleep 5
fi
"#
    )
}

#[test]
fn a_book_style_host_migrates_legacy_stop_then_portswap_start_health_switch() {
    let what = "the book's legacy stop.sh, then portswap";
    if !tools::need(what, &[&tools::CURL, &tools::LSOF]) {
        return;
    }
    let host = Host::new();
    let [a, _] = host.ports;
    // The book's host: nginx points at the app's port from before blue-green (8080 there),
    // and a half-run blue-green attempt left a legacy app on the first slot's port.
    let old_port = net::free_port();
    let mut old = LegacyApp::start(old_port, "legacy", "real");
    let mut leftover = LegacyApp::start(a, "legacy-idle", "real1");
    fs::write(
        host.nginx.include_file(),
        format!("set $service_url http://127.0.0.1:{old_port};\n"),
    )
    .unwrap();
    host.nginx.reload_and_wait(Duration::from_secs(5)).unwrap();
    assert_live(&host, "legacy");

    // The last successful revision is the legacy one: its stop.sh is ApplicationStop.
    let legacy = host.root().join("revisions/legacy");
    fs::create_dir_all(legacy.join("scripts")).unwrap();
    fs::write(
        legacy.join("appspec.yml"),
        "version: 0.0\nos: linux\nfiles:\n  - source: /\n    destination: /home/ec2-user/app/step3/zip/\n\
         hooks:\n  ApplicationStop:\n    - location: scripts/stop.sh\n      timeout: 60\n",
    )
    .unwrap();
    fs::write(
        legacy.join("scripts/stop.sh"),
        legacy_stop_sh(host.nginx.port(), host.ports[0], host.ports[1]),
    )
    .unwrap();
    let report = host.deploy(&legacy, "d-0");
    assert!(report.success(), "{report}");

    let poller = Poller::start(host.nginx.port());
    let report = host.deploy(&host.good_revision("v1"), "d-1");
    let (count, failures) = poller.finish();
    assert!(report.success(), "{report}");
    let stop = report
        .script("scripts/stop.sh")
        .expect("the legacy stop.sh ran");
    assert_eq!(stop.archive, host.agent.archive_dir("d-0"));
    assert!(
        stop.output_tail
            .contains(&format!("kill -15 {}", leftover.0.id())),
        "{}",
        stop.output_tail
    );
    assert!(
        !leftover.running(),
        "the legacy stop.sh stopped the idle app"
    );
    let start = report.script("hooks/start").unwrap();
    assert!(
        start
            .output_tail
            .contains(&format!("port {old_port}, which is not a slot")),
        "{}",
        start.output_tail
    );
    let switch = report.script("hooks/switch").unwrap();
    assert!(
        switch
            .output_tail
            .contains(&format!("took over from port {old_port}")),
        "{}",
        switch.output_tail
    );
    assert_eq!(host.included_port(), Some(a));
    assert_live(&host, "v1");
    assert!(count > 0);
    assert!(
        failures.is_empty(),
        "{} of {count} requests failed: {failures:?}",
        failures.len()
    );
    assert!(
        old.running(),
        "the app portswap does not manage is never signalled"
    );
    assert_eq!(host.version_on(old_port).as_deref(), Some("legacy"));

    // From now on portswap's own stop is ApplicationStop.
    let report = host.deploy(&host.good_revision("v2"), "d-2");
    assert!(report.success(), "{report}");
    assert_live(&host, "v2");
    assert!(old.running());
}
