//! The app under systemd (issue 9), against a real systemd (PID 1 of private namespaces,
//! testkit::systemd) and a real nginx running as a unit inside it. The hooks run inside the
//! machine (nsenter), as root, so `systemctl` talks to that systemd; ports are the host's.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use portswap_testkit::hooks::fixture_command;
use portswap_testkit::net::Load;
use portswap_testkit::supervised::{HookRun, SupervisedSite, SECRET};
use portswap_testkit::systemd::refused;
use portswap_testkit::{bins, net};
use support::{monotonic_us, Outcome};

/// An argument that a shell or systemd would mangle if quoted wrongly.
const WEIRD_PROFILE: &str = "we $ird %i \"quoted\" 'single' back\\slash ;";

/// A [`SupervisedSite`] whose hook runs come back as the suite's [`Outcome`]s.
struct Host(SupervisedSite);

impl std::ops::Deref for Host {
    type Target = SupervisedSite;
    fn deref(&self) -> &SupervisedSite {
        &self.0
    }
}

impl std::ops::DerefMut for Host {
    fn deref_mut(&mut self) -> &mut SupervisedSite {
        &mut self.0
    }
}

fn outcome(run: HookRun) -> Outcome {
    Outcome {
        hook: run.hook,
        code: run.code,
        stdout: run.stdout,
        stderr: run.stderr,
    }
}

impl Host {
    /// A site under a real systemd, or `None` (SKIPPED printed) where the host refuses.
    fn new(test: &str) -> Option<Host> {
        match SupervisedSite::new() {
            Ok(site) => Some(Host(site)),
            Err(why) => {
                refused(test, &why);
                None
            }
        }
    }

    fn hook(&self, name: &str, args: &[&str], deployment: Option<&str>) -> Outcome {
        outcome(self.0.hook(name, args, deployment))
    }

    fn deploy(&self, id: &str) -> Vec<Outcome> {
        self.0.deploy(id).into_iter().map(outcome).collect()
    }

    fn deploy_ok(&self, id: &str) -> Vec<Outcome> {
        self.deploy(id).into_iter().map(Outcome::ok).collect()
    }

    fn status(&self) -> String {
        self.hook("switch", &["--status"], None).ok().stdout
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn three_deployments_under_load_with_units_modes_and_no_secret_anywhere() {
    let Some(host) =
        Host::new("three_deployments_under_load_with_units_modes_and_no_secret_anywhere")
    else {
        return;
    };
    host.configure(&["--profile", WEIRD_PROFILE], "");
    let mut outputs = host.deploy_ok("d-1");
    assert_eq!(host.live_version().as_deref(), Some("d-1"));
    let load = Load::start(host.nginx_port, 4);
    for id in ["d-2", "d-3", "d-4"] {
        outputs.extend(host.deploy_ok(id));
        assert_eq!(host.live_version().as_deref(), Some(id));
    }
    let seen = load.finish();
    let failed: Vec<&String> = seen.iter().filter(|s| s.starts_with("error")).collect();
    println!(
        "{} requests through nginx during 3 deployments, {} failed",
        seen.len(),
        failed.len()
    );
    assert!(seen.len() > 50, "too few requests: {}", seen.len());
    assert!(
        failed.is_empty(),
        "failed requests: {:?}",
        &failed[..failed.len().min(5)]
    );

    for port in host.ports {
        let unit = host.unit(port);
        assert_eq!(host.machine.unit_property(&unit, "ActiveState"), "active");
        assert_eq!(
            host.machine.unit_property(&unit, "UnitFileState"),
            "enabled"
        );
        let unit_file = Path::new("/etc/systemd/system").join(&unit);
        let text = host.machine.read_file(&unit_file).expect("unit file");
        assert!(text.starts_with("# Written by portswap"), "{text}");
        for needed in [
            "KillMode=control-group",
            "Restart=on-failure",
            "TimeoutStopSec=5000ms",
            "WantedBy=multi-user.target",
            "StandardOutput=append:",
        ] {
            assert!(text.contains(needed), "{needed} missing:\n{text}");
        }
        assert!(!text.contains("s3cr3t"), "secret in the unit file:\n{text}");
        let on_disk = host
            .machine
            .run_ok(&["stat", "-c", "%a", &unit_file.to_string_lossy()]);
        assert_eq!(on_disk, "644");
        let env_file = host.state().join(format!("units/{unit}.env"));
        assert_eq!(mode(&env_file), 0o600, "{}", env_file.display());
        // argv and environment arrive literally: through HTTP and /proc.
        let pid = host.main_pid(port).to_string();
        let environ = host
            .machine
            .run(&["cat", &format!("/proc/{pid}/environ")])
            .stdout;
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let want = format!("SECRET_TOKEN={SECRET}");
        assert!(
            vars.contains(&want.as_bytes()),
            "secret not passed literally"
        );
        let marker = format!("PORTSWAP_SLOT={port}:{}", host.state().display());
        assert!(vars.contains(&marker.as_bytes()), "no ownership marker");
        let profile = net::http_get(port, "/profile").unwrap();
        assert_eq!(profile.body.trim(), WEIRD_PROFILE);
    }
    for outcome in &outputs {
        assert!(
            !outcome.stdout.contains("s3cr3t") && !outcome.stderr.contains("s3cr3t"),
            "secret in {} output",
            outcome.hook
        );
        assert!(
            outcome.last_line().contains("systemd"),
            "verdict does not name the supervisor: {}",
            outcome.last_line()
        );
    }
    let status = host.status();
    assert!(status.contains("supervisor: systemd"), "{status}");
    assert!(status.contains("active/running (enabled)"), "{status}");
}

#[test]
fn kill_9_of_the_live_app_answers_again_within_1s_nothing_else_moves() {
    let Some(host) = Host::new("kill_9_of_the_live_app_answers_again_within_1s_nothing_else_moves")
    else {
        return;
    };
    host.deploy_ok("k-1");
    host.deploy_ok("k-2");
    let live = host.ports[1];
    let idle = host.ports[0];
    let idle_pid = host.main_pid(idle);
    let include = host.include();
    let nginx_pid = host.machine.unit_property("site-nginx.service", "MainPID");
    for round in 1..=3 {
        let victim = host.main_pid(live);
        let started = Instant::now();
        host.machine.run_ok(&["kill", "-9", &victim.to_string()]);
        net::wait_until(
            Duration::from_secs(5),
            "the live app to answer again",
            || host.live_version().as_deref() == Some("k-2"),
        )
        .unwrap();
        let back = started.elapsed();
        println!("kill -9 #{round} of pid {victim}: serving again after {back:?}");
        assert!(back < Duration::from_secs(1), "took {back:?}");
        assert_ne!(host.main_pid(live), victim);
    }
    assert_eq!(
        host.machine.unit_property(&host.unit(live), "NRestarts"),
        "3"
    );
    assert_eq!(host.main_pid(idle), idle_pid, "the idle slot moved");
    assert_eq!(host.include(), include, "the include moved");
    assert_eq!(
        host.machine.unit_property("site-nginx.service", "MainPID"),
        nginx_pid
    );
    // The restarted app is still ours: health and switch trust it.
    host.hook("switch", &["--rollback"], None).ok();
    host.hook("switch", &["--rollback"], None).ok();
    assert_eq!(host.live_version().as_deref(), Some("k-2"));
}

#[test]
fn reboot_serves_the_live_version_within_2s_without_deployment_and_rollback_works() {
    let Some(mut host) =
        Host::new("reboot_serves_the_live_version_within_2s_without_deployment_and_rollback_works")
    else {
        return;
    };
    host.deploy_ok("r-1");
    host.deploy_ok("r-2");
    for (how, cut) in [("power cut", true), ("poweroff", false)] {
        if cut {
            host.machine.power_cut().unwrap();
        } else {
            host.machine.poweroff().unwrap();
        }
        assert_eq!(host.live_version(), None, "still served after the {how}");
        host.machine.boot_again().unwrap();
        let boot = host.machine.booted_at();
        net::wait_until(
            Duration::from_secs(10),
            "the live version after reboot",
            || host.live_version().as_deref() == Some("r-2"),
        )
        .unwrap();
        let serving = boot.elapsed();
        println!("reboot after {how}: live version served {serving:?} after boot began");
        assert!(serving < Duration::from_secs(2), "took {serving:?}");
    }
    let status = host.status();
    assert!(status.contains("recorded pid"), "{status}");
    assert!(status.contains("active/running (enabled)"), "{status}");
    // The previous version is warm: rollback works at once.
    host.hook("switch", &["--rollback"], None).ok();
    assert_eq!(host.live_version().as_deref(), Some("r-1"));
    host.hook("switch", &["--rollback"], None).ok();
    assert_eq!(host.live_version().as_deref(), Some("r-2"));
    // A unit that fails at boot shows in --status.
    let idle_release = host.state().join("releases");
    for entry in fs::read_dir(&idle_release).unwrap().flatten() {
        if entry.file_name().to_string_lossy().contains("r-1") {
            fs::remove_file(entry.path().join("fixture-app")).unwrap();
        }
    }
    host.machine.power_cut().unwrap();
    host.machine.boot_again().unwrap();
    net::wait_until(
        Duration::from_secs(10),
        "the live version after reboot",
        || host.live_version().as_deref() == Some("r-2"),
    )
    .unwrap();
    let failed_unit = host.unit(host.ports[0]);
    net::wait_until(Duration::from_secs(10), "the broken unit to fail", || {
        host.machine.unit_property(&failed_unit, "ActiveState") == "failed"
    })
    .unwrap();
    let status = host.status();
    assert!(
        status.contains(&format!("unit {failed_unit} failed/failed")),
        "{status}"
    );
}

/// A wrapper script that does not exec, and one that daemonizes the app and exits.
#[test]
fn wrapper_and_daemonizing_apps_are_stopped_whole_every_time() {
    let Some(host) = Host::new("wrapper_and_daemonizing_apps_are_stopped_whole_every_time") else {
        return;
    };
    let wrapper = host.root().join("revision/wrapper.sh");
    fs::write(&wrapper, "#!/bin/sh\n\"$@\"\necho wrapper done\n").unwrap();
    let daemonize = host.root().join("revision/daemonize.sh");
    fs::write(
        &daemonize,
        "#!/bin/sh\nsetsid \"$@\" </dev/null >/dev/null 2>&1 &\nexit 0\n",
    )
    .unwrap();
    for script in [&wrapper, &daemonize] {
        fs::set_permissions(script, fs::Permissions::from_mode(0o755)).unwrap();
        let mut command = vec!["/bin/sh".to_string(), script.display().to_string()];
        command.extend(fixture_command("{deployment_id}", &[] as &[&str]));
        host.configure_command(command, "systemd", "");
        let name = script.file_name().unwrap().to_string_lossy().into_owned();
        for round in 1..=3 {
            let id = format!("{name}-{round}");
            let t = Instant::now();
            host.deploy_ok(&id);
            println!("{id}: deployed in {:?}", t.elapsed());
            assert_eq!(host.live_version().as_deref(), Some(id.as_str()));
            // The idle slot (previous version) stops whole: port free, cgroup empty.
            let out = host.hook("stop", &[], Some(&id)).ok();
            let idle: u16 = host
                .ports
                .into_iter()
                .find(|p| !host.include().contains(&format!(":{p};")))
                .unwrap();
            if round > 1 {
                assert!(
                    out.last_line().contains("stopped and disabled"),
                    "{}",
                    out.last_line()
                );
            }
            assert!(
                !net::port_is_listening(idle),
                "{name}: port {idle} still listens after stop"
            );
            let left = host.machine.run(&[
                "sh",
                "-c",
                &format!("grep -l '/{}$' /proc/[0-9]*/cgroup", host.unit(idle)),
            ]);
            let left = String::from_utf8_lossy(&left.stdout).trim().to_string();
            assert!(
                left.is_empty(),
                "{name}: processes left in the unit: {left}"
            );
        }
    }
}

fn crash_case(test: &str, app_args: &[&str], extra: &str, expect: &[&str]) {
    let Some(host) = Host::new(test) else {
        return;
    };
    host.deploy_ok("good");
    let include = host.include();
    host.configure(app_args, extra);
    let outcomes = host.deploy("bad");
    let failed = outcomes.last().unwrap();
    let failed_at = monotonic_us();
    assert!(
        failed.hook == "start" || failed.hook == "health",
        "{} failed instead:\n{}",
        failed.hook,
        failed.stderr
    );
    let unit = host.unit(host.ports[1]);
    let restarts: u32 = host
        .machine
        .unit_property(&unit, "NRestarts")
        .parse()
        .unwrap_or(0);
    // The first crash: the earliest exit of the new version, from the journal.
    let crash = host.machine.run_ok(&[
        "journalctl",
        "-u",
        &unit,
        "-o",
        "short-monotonic",
        "--no-pager",
        "-q",
    ]);
    let first = crash
        .lines()
        .find(|l| l.contains("Main process exited"))
        .unwrap_or_default();
    let stamp: f64 = first
        .trim_start_matches('[')
        .split(']')
        .next()
        .unwrap_or("0")
        .trim()
        .parse()
        .unwrap_or(0.0);
    let after_crash = Duration::from_micros(failed_at.saturating_sub((stamp * 1e6) as u64));
    println!(
        "{test}: {} failed {after_crash:?} after the first crash (NRestarts {restarts}): {}",
        failed.hook,
        failed.last_line()
    );
    assert!(stamp > 0.0, "no crash in the journal: {crash}");
    assert!(
        after_crash < Duration::from_secs(1),
        "reported {after_crash:?} after the crash"
    );
    let outcome = outcomes.into_iter().last().unwrap();
    for needle in expect {
        assert!(
            outcome.last_line().contains(needle),
            "{needle}: {}",
            outcome.last_line()
        );
    }
    outcome.fails(1, expect[0]);
    assert_eq!(host.include(), include, "nginx touched");
    assert_eq!(host.live_version().as_deref(), Some("good"));
}

#[test]
fn a_version_crashing_300ms_after_start_fails_within_1s_with_its_output() {
    crash_case(
        "a_version_crashing_300ms_after_start_fails_within_1s_with_its_output",
        &["--start-delay-ms", "5000", "--exit-after-ms", "300"],
        "",
        &["simulated crash", "log "],
    );
}

#[test]
fn a_crash_looping_version_is_not_hidden_by_restart() {
    crash_case(
        "a_crash_looping_version_is_not_hidden_by_restart",
        &["--fail-start"],
        "",
        &["failed to start"],
    );
}

#[test]
fn a_crash_loop_with_output_in_the_journal_shows_the_journal_lines() {
    crash_case(
        "a_crash_loop_with_output_in_the_journal_shows_the_journal_lines",
        &["--fail-start"],
        "systemd:\n  output: journal\n",
        &["failed to start", "journalctl -u portswap-"],
    );
}

#[test]
fn an_unrelated_process_or_unit_on_the_idle_port_is_never_signalled_without_force() {
    let Some(host) =
        Host::new("an_unrelated_process_or_unit_on_the_idle_port_is_never_signalled_without_force")
    else {
        return;
    };
    host.deploy_ok("u-1");
    let idle = host.ports[1];
    let fixture = bins::bin("fixture-app").display().to_string();
    let port = idle.to_string();
    // An unrelated unit, then an unrelated plain process (started inside, in no unit).
    host.machine.run_ok(&[
        "systemd-run",
        "-q",
        "--unit=other-app",
        &fixture,
        "--port",
        &port,
        "--version",
        "other",
    ]);
    let mut plain: Option<std::process::Child> = None;
    for case in ["unit", "process"] {
        if case == "process" {
            plain = Some(
                host.machine
                    .command(&[&fixture, "--port", &port, "--version", "other"])
                    .spawn()
                    .unwrap(),
            );
        }
        net::wait_until(Duration::from_secs(5), "the unrelated app", || {
            net::http_get(idle, "/version").is_ok()
        })
        .unwrap();
        let holder_before = net::http_get(idle, "/").unwrap().body;
        host.hook("stop", &[], Some("u-2"))
            .fails(4, "not portswap's app");
        let outcomes = host.deploy("u-2");
        let last = outcomes.into_iter().last().unwrap();
        assert_eq!(last.hook, "stop");
        last.fails(4, "not portswap's app");
        assert_eq!(
            net::http_get(idle, "/").unwrap().body,
            holder_before,
            "{case} was signalled"
        );
        assert_eq!(host.live_version().as_deref(), Some("u-1"));
        host.hook("stop", &["--force"], Some("u-2")).ok();
        assert!(
            !net::port_is_listening(idle),
            "{case} still listens after --force"
        );
    }
    if let Some(mut child) = plain {
        let _ = child.wait();
    }
    host.deploy_ok("u-3");
    assert_eq!(host.live_version().as_deref(), Some("u-3"));
}

#[test]
fn the_first_systemd_start_takes_over_from_process_mode() {
    let Some(host) = Host::new("the_first_systemd_start_takes_over_from_process_mode") else {
        return;
    };
    host.configure_command(
        fixture_command("{deployment_id}", &[] as &[&str]),
        "process",
        "",
    );
    host.deploy_ok("p-1");
    let old = net::http_get(host.ports[0], "/").unwrap().body;
    let load = Load::start(host.nginx_port, 2);
    host.configure(&[] as &[&str], "");
    host.deploy_ok("s-1");
    host.deploy_ok("s-2");
    let seen = load.finish();
    assert!(
        seen.iter().all(|s| !s.starts_with("error")),
        "failed requests"
    );
    assert!(!old.is_empty());
    for port in host.ports {
        assert_eq!(
            host.machine.unit_property(&host.unit(port), "ActiveState"),
            "active"
        );
        let body = net::http_get(port, "/").unwrap().body;
        assert!(
            !body.contains("version=p-1"),
            "the process-mode app still answers: {body}"
        );
    }
    assert_eq!(host.live_version().as_deref(), Some("s-2"));
}
