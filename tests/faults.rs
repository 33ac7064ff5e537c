//! The fault matrix (issue 5): every way a deployment can go wrong, each with a real nginx and
//! real processes. Every row checks that traffic through nginx keeps reaching the previous
//! version during and after the fault, that the failing hook exits non-zero with a verdict line
//! naming the cause, that nothing is half-written, and that re-running the deployment after the
//! cause is fixed succeeds.

mod support;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portswap_testkit::{bins, net, nginx::NginxSandbox};
use support::{wait, Guarded, Outcome, Site};

/// A site where deployment `d-1` is live on the first slot.
fn live_site() -> Site {
    let site = Site::new();
    site.deploy_ok("d-1");
    site
}

/// Runs deployment `id` under traffic; it must fail in `hook` with `code` and `needle` while
/// every request still reaches `live`, leaving nothing half-written.
fn failing_deploy(
    site: &Site,
    id: &str,
    live: &str,
    hook: &str,
    code: i32,
    needle: &str,
) -> Outcome {
    let include_before = site.include_text();
    let traffic = site.traffic();
    let outcomes = site.deploy(id);
    traffic.assert_all(live);
    let last = outcomes.into_iter().last().unwrap();
    assert_eq!(last.hook, hook, "failed in the wrong hook: {}", last.stderr);
    let last = last.fails(code, needle);
    assert_eq!(site.include_text(), include_before, "the include changed");
    site.assert_nothing_half_written();
    last
}

/// Runs deployment `id` under traffic and checks it ends live.
fn recovers(site: &Site, id: &str) {
    site.deploy_ok(id);
    let traffic = site.traffic();
    wait(Duration::from_millis(100), "a few requests", || true);
    for _ in 0..10 {
        assert_eq!(site.live_version().as_deref(), Some(id));
    }
    traffic.assert_all(id);
    site.assert_nothing_half_written();
}

fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.contains(") Z ") && !s.contains(") X "))
}

/// An unrelated process (`sleep`), to plant its pid where portswap might signal it.
fn unrelated_process() -> Guarded {
    Guarded(
        // Outlives the slowest test run (killed on drop).
        Command::new("sleep")
            .arg("3600")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn still_running(child: &mut Guarded) -> bool {
    child.0.try_wait().unwrap().is_none()
}

#[test]
fn the_new_app_exits_at_once() {
    let mut site = live_site();
    site.set(|s| s.app_args.push("--fail-start".into()));
    let out = failing_deploy(&site, "d-2", "d-1", "start", 1, "exited at once");
    assert!(
        out.last_line().contains("last log line"),
        "{}",
        out.last_line()
    );
    site.set(|s| s.app_args.clear());
    recovers(&site, "d-2");
}

#[test]
fn the_new_app_crashes_after_a_second() {
    let mut site = live_site();
    site.set(|s| {
        s.app_args = ["--start-delay-ms", "5000", "--exit-after-ms", "1000"]
            .map(String::from)
            .to_vec();
        s.health_timeout = "30s";
    });
    let started = Instant::now();
    let out = failing_deploy(&site, "d-2", "d-1", "health", 1, "has exited");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "reported without waiting for the timeout"
    );
    assert!(
        out.last_line().contains("simulated crash"),
        "names the last log line: {}",
        out.last_line()
    );
    site.set(|s| {
        s.app_args.clear();
        s.health_timeout = "10s";
    });
    recovers(&site, "d-2");
}

#[test]
fn the_new_app_never_binds() {
    let mut site = live_site();
    site.set(|s| {
        s.app_args.push("--never-bind".into());
        s.health_timeout = "1s";
    });
    let out = failing_deploy(&site, "d-2", "d-1", "health", 1, "not healthy after 1s");
    assert!(
        out.last_line().contains("refused") || out.last_line().contains("connect"),
        "{}",
        out.last_line()
    );
    // The process that never bound is found again by its record and stopped by the next deploy.
    let idle = site.ports[1];
    let stuck = site
        .recorded_pid(idle)
        .expect("the non-binding app is recorded");
    site.set(|s| {
        s.app_args.clear();
        s.health_timeout = "10s";
    });
    recovers(&site, "d-3");
    assert!(!alive(stuck), "the app that never bound was stopped");
}

#[test]
fn the_new_app_answers_500() {
    let mut site = live_site();
    site.set(|s| {
        s.app_args.push("--unhealthy".into());
        s.health_timeout = "1s";
    });
    let out = failing_deploy(&site, "d-2", "d-1", "health", 1, "not healthy");
    assert!(
        out.last_line().contains("answered 500"),
        "{}",
        out.last_line()
    );
    site.set(|s| {
        s.app_args.clear();
        s.health_timeout = "10s";
    });
    recovers(&site, "d-3");
}

#[test]
fn the_new_app_answers_health_slower_than_the_timeout() {
    let mut site = live_site();
    site.set(|s| {
        s.app_args = vec!["--health-delay-ms".into(), "3000".into()];
        s.health_timeout = "1s";
    });
    let started = Instant::now();
    failing_deploy(&site, "d-2", "d-1", "health", 1, "not healthy after 1s");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the timeout is kept: {:?}",
        started.elapsed()
    );
    site.set(|s| {
        s.app_args.clear();
        s.health_timeout = "10s";
    });
    recovers(&site, "d-3");
}

#[test]
fn the_new_app_dies_between_health_and_switch() {
    let site = live_site();
    site.run_until("d-2", "health");
    let pid = site.recorded_pid(site.ports[1]).unwrap();
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait(Duration::from_secs(5), "the app to die", || {
        site.version_on(site.ports[1]).is_none()
    });
    let traffic = site.traffic();
    let out = site
        .hook("switch", &[], Some("d-2"))
        .fails(1, "not healthy");
    traffic.assert_all("d-1");
    assert!(
        out.last_line().contains("nginx unchanged"),
        "{}",
        out.last_line()
    );
    site.assert_nothing_half_written();
    recovers(&site, "d-2");
}

#[test]
fn an_app_ignoring_sigterm_is_killed_after_the_grace_period_and_the_port_freed() {
    let mut site = Site::new();
    site.set(|s| {
        s.app_args.push("--ignore-sigterm".into());
        s.grace = "300ms";
    });
    site.deploy_ok("d-1");
    site.deploy_ok("d-2");
    let [a, _] = site.ports;
    let old = site.recorded_pid(a).unwrap();
    let traffic = site.traffic();
    let started = Instant::now();
    let out = site.hook("stop", &[], Some("d-3")).ok();
    let took = started.elapsed();
    traffic.assert_all("d-2");
    assert!(
        out.last_line().contains("killed pid")
            && out
                .last_line()
                .contains("still running 300ms after SIGTERM, sent SIGKILL"),
        "{}",
        out.last_line()
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    assert!(!alive(old), "SIGKILL reached the app");
    assert!(
        !net::port_is_listening(a),
        "the port is free when stop returns"
    );
    recovers(&site, "d-3");
}

#[test]
fn a_foreign_process_on_the_idle_port_is_refused_unless_forced() {
    let site = live_site();
    let idle = site.ports[1];
    // The fixture binary from the build directory: not the configured app, not in a release.
    let mut foreign = Guarded(
        Command::new(bins::bin("fixture-app"))
            .args(["--port", &idle.to_string(), "--version", "foreign"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = foreign.0.id().to_string();
    wait(
        Duration::from_secs(5),
        "the foreign process listens",
        || site.version_on(idle).is_some(),
    );

    let out = failing_deploy(&site, "d-2", "d-1", "stop", 4, "not portswap's app");
    assert!(
        out.last_line().contains(&pid) && out.last_line().contains("fixture-app"),
        "pid and command: {}",
        out.last_line()
    );
    let out = site
        .hook("start", &[], Some("d-2"))
        .fails(4, "not portswap's app");
    assert!(out.last_line().contains(&pid), "{}", out.last_line());
    assert!(
        still_running(&mut foreign),
        "the foreign process was never signalled"
    );
    assert_eq!(site.version_on(idle).as_deref(), Some("foreign"));

    let out = site.hook("stop", &["--force"], Some("d-2")).ok();
    assert!(
        out.stderr.contains("--force: stopping foreign pid"),
        "{}",
        out.stderr
    );
    assert!(
        foreign.0.wait().unwrap().success(),
        "stopped by SIGTERM, drained"
    );
    recovers(&site, "d-2");
}

fn rewrite_pid(site: &Site, port: u16, pid: u32) {
    let path = site.state().join(format!("slot-{port}.yml"));
    let text = fs::read_to_string(&path).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("pid:") {
                format!("pid: {pid}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&path, text).unwrap();
}

#[test]
fn a_recorded_pid_reused_by_an_unrelated_process_is_never_signalled() {
    let site = live_site();
    site.deploy_ok("d-2");
    let [a, _] = site.ports;
    let old = site.recorded_pid(a).unwrap();
    let mut unrelated = unrelated_process();
    // The record now names the unrelated pid (with the old app's start time): a reused pid.
    rewrite_pid(&site, a, unrelated.0.id());
    let traffic = site.traffic();
    let out = site.hook("stop", &[], Some("d-3")).ok();
    traffic.assert_all("d-2");
    assert!(
        out.stderr
            .contains("is gone (or the pid now belongs to another process)"),
        "{}",
        out.stderr
    );
    assert!(
        out.last_line().contains(&format!("stopped pid {old}")),
        "found by the port instead: {}",
        out.last_line()
    );
    assert!(
        still_running(&mut unrelated),
        "the unrelated process was signalled"
    );

    // Nothing on the port, the record names the unrelated pid: nothing to stop, nothing signalled.
    site.hook("start", &[], Some("d-3")).ok();
    site.hook("stop", &["--port", &a.to_string()], Some("d-3"))
        .ok();
    fs::write(
        site.state().join(format!("slot-{a}.yml")),
        fs::read_to_string(site.state().join(format!("slot-{}.yml", site.ports[1]))).unwrap(),
    )
    .unwrap();
    rewrite_pid(&site, a, unrelated.0.id());
    let text = fs::read_to_string(site.state().join(format!("slot-{a}.yml")))
        .unwrap()
        .replace(&format!("port: {}", site.ports[1]), &format!("port: {a}"));
    fs::write(site.state().join(format!("slot-{a}.yml")), text).unwrap();
    let out = site.hook("stop", &[], Some("d-3")).ok();
    assert!(
        out.last_line().contains("nothing runs"),
        "{}",
        out.last_line()
    );
    assert!(
        still_running(&mut unrelated),
        "the unrelated process was signalled"
    );
    recovers(&site, "d-3");
}

#[test]
fn unreadable_state_records_are_ignored_and_the_port_is_the_truth() {
    let site = live_site();
    site.deploy_ok("d-2");
    let mut unrelated = unrelated_process();
    let upid = unrelated.0.id();
    type Corrupt = Box<dyn Fn(&str) -> Vec<u8>>;
    let variants: [(&str, Corrupt); 5] = [
        ("empty", Box::new(|_| Vec::new())),
        (
            "truncated",
            Box::new(|t: &str| t.as_bytes()[..t.len() / 2].to_vec()),
        ),
        ("garbage", Box::new(|_| b"pid: [\n{{{ not yaml".to_vec())),
        ("binary", Box::new(|_| vec![0xff, 0x00, 0xfe, 0x13, 0x37])),
        (
            "only a pid",
            Box::new(move |_| format!("pid: {upid}\n").into_bytes()),
        ),
    ];
    let mut live = "d-2".to_string();
    for (n, (what, corrupt)) in variants.iter().enumerate() {
        let (live_port, idle) = if site.included_port() == Some(site.ports[0]) {
            (site.ports[0], site.ports[1])
        } else {
            (site.ports[1], site.ports[0])
        };
        let old = site.recorded_pid(idle).unwrap();
        for path in [
            site.state().join(format!("slot-{idle}.yml")),
            site.state().join("switch.yml"),
        ] {
            let text = fs::read_to_string(&path).unwrap();
            fs::write(&path, corrupt(&text)).unwrap();
        }
        let id = format!("d-{}", n + 3);
        let traffic = site.traffic();
        let outcomes = site.deploy(&id);
        let seen = traffic.finish();
        assert!(
            seen.iter().all(|v| *v == live || *v == id),
            "{what}: {seen:?}"
        );
        for outcome in outcomes {
            let outcome = outcome.ok();
            if outcome.hook == "stop" {
                assert!(
                    outcome.stderr.contains("ignoring unreadable state file"),
                    "{what}: warns: {}",
                    outcome.stderr
                );
                assert!(
                    outcome.stderr.contains(&format!("slot-{idle}.yml")),
                    "{what}: names the file: {}",
                    outcome.stderr
                );
            }
        }
        assert!(
            !alive(old),
            "{what}: the old app on the idle port was stopped (found by its port)"
        );
        assert!(
            still_running(&mut unrelated),
            "{what}: the unrelated process was signalled"
        );
        assert_eq!(site.live_version().as_deref(), Some(id.as_str()), "{what}");
        assert_ne!(site.included_port(), Some(live_port), "{what}");
        site.assert_nothing_half_written();
        live = id;
    }
    // A garbage switch record: rollback still goes to the other slot (after probing it).
    fs::write(site.state().join("switch.yml"), "live: [").unwrap();
    let out = site.hook("switch", &["--rollback"], None).ok();
    assert!(
        out.stderr.contains("ignoring unreadable state file"),
        "{}",
        out.stderr
    );
    assert_eq!(site.live_version().as_deref(), Some("d-6"));
}

#[test]
fn a_broken_include_is_a_state_error_naming_the_file_and_the_fix() {
    let site = live_site();
    let good = site.include_text().unwrap();
    // A well-formed include naming a port that is not a slot is a version portswap does not
    // manage (tests/first_contact.rs), not a broken include.
    let variants: [(&str, &[u8], &str); 5] = [
        ("empty", b"", "fix:"),
        ("garbage", b"proxy_pass somewhere;\n", "fix:"),
        (
            "not UTF-8",
            b"set $service_url http://127.0.0.1:\xff;\n",
            "not UTF-8",
        ),
        ("truncated", b"set $service_url http://12", "fix:"),
        (
            "port out of range",
            b"set $service_url http://127.0.0.1:70000;\n",
            "does not match the template",
        ),
    ];
    for (n, (what, bytes, needle)) in variants.iter().enumerate() {
        fs::write(site.include(), bytes).unwrap();
        let traffic = site.traffic();
        let outcomes = site.deploy(&format!("d-{}", n + 2));
        // nginx still runs the configuration it loaded; nothing reloaded it.
        traffic.assert_all("d-1");
        assert_eq!(outcomes.len(), 1, "{what}: stop already refuses");
        let out = outcomes.into_iter().next().unwrap().fails(2, needle);
        assert!(
            out.last_line()
                .contains(&site.include().display().to_string()),
            "{what}: names the file: {}",
            out.last_line()
        );
        assert!(
            out.last_line().contains("fix:"),
            "{what}: names the fix: {}",
            out.last_line()
        );
        assert_eq!(
            fs::read(site.include()).unwrap(),
            *bytes,
            "{what}: portswap left the include alone"
        );
        assert_eq!(site.temp_files(), Vec::<std::path::PathBuf>::new());
        // Every hook agrees.
        for hook in ["start", "health", "switch"] {
            site.hook(hook, &[], Some("d-x")).fails(2, needle);
        }
    }
    fs::write(site.include(), &good).unwrap();
    recovers(&site, "d-7");
}

#[test]
fn a_missing_include_after_a_switch_is_refused_not_taken_for_a_first_deployment() {
    let site = live_site();
    let good = site.include_text().unwrap();
    fs::remove_file(site.include()).unwrap();
    // Nothing would be live, so the first slot would be "idle": but it serves traffic.
    let out = failing_deploy(&site, "d-2", "d-1", "stop", 2, "missing");
    assert!(
        out.last_line().contains("switch.yml") && out.last_line().contains("fix"),
        "{}",
        out.last_line()
    );
    assert!(
        site.version_on(site.ports[0]).is_some(),
        "the app nginx serves was not stopped"
    );
    fs::write(site.include(), good).unwrap();
    recovers(&site, "d-2");
}

#[test]
fn nginx_not_running_fails_the_switch_and_leaves_the_include() {
    let mut site = live_site();
    site.run_until("d-2", "health");
    let before = site.include_text();
    site.nginx.stop();
    site.hook("switch", &[], Some("d-2"))
        .fails(1, "nginx is not running");
    assert_eq!(site.include_text(), before);
    site.assert_nothing_half_written();
    // nginx comes back with the include as it was: the previous version.
    site.nginx = NginxSandbox::start(&site.root().join("nginx"), &site.include());
    site.write_config();
    assert_eq!(site.live_version().as_deref(), Some("d-1"));
    let traffic = site.traffic();
    site.hook("switch", &[], Some("d-2")).ok();
    let seen = traffic.finish();
    assert!(seen.iter().all(|v| v == "d-1" || v == "d-2"), "{seen:?}");
    assert_eq!(site.live_version().as_deref(), Some("d-2"));
}

#[test]
fn a_stale_or_garbage_nginx_pid_file_fails_the_switch_and_signals_nobody() {
    let site = live_site();
    site.run_until("d-2", "health");
    let pid_file = site.nginx.pid_file();
    let original = fs::read_to_string(&pid_file).unwrap();
    let mut unrelated = unrelated_process();
    for (content, needle) in [
        (format!("{}\n", unrelated.0.id()), "stale pid file"),
        ("nginx\n".to_string(), "not a pid"),
    ] {
        fs::write(&pid_file, &content).unwrap();
        let traffic = site.traffic();
        site.hook("switch", &[], Some("d-2")).fails(1, needle);
        traffic.assert_all("d-1");
        site.assert_nothing_half_written();
        assert!(
            still_running(&mut unrelated),
            "the process named by the stale pid file was signalled"
        );
    }
    fs::write(&pid_file, original).unwrap();
    site.hook("switch", &[], Some("d-2")).ok();
    assert_eq!(site.live_version().as_deref(), Some("d-2"));
}

/// Breaks nginx.conf (an operator's edit elsewhere); returns the original text.
fn break_nginx_conf(site: &Site) -> String {
    let conf = site.nginx.conf_path().to_path_buf();
    let original = fs::read_to_string(&conf).unwrap();
    fs::write(&conf, format!("{original}\nthis is not nginx syntax\n")).unwrap();
    original
}

#[test]
fn a_config_nginx_rejects_in_its_test_is_rolled_back() {
    let site = live_site();
    site.run_until("d-2", "health");
    let before = site.include_text().unwrap();
    let original = break_nginx_conf(&site);
    let traffic = site.traffic();
    let out = site
        .hook("switch", &[], Some("d-2"))
        .fails(1, "nginx config test");
    traffic.assert_all("d-1");
    assert!(
        out.last_line().contains("[emerg]") && out.last_line().contains("nginx.conf"),
        "nginx's reason: {}",
        out.last_line()
    );
    assert!(out.stderr.contains("restored"), "{}", out.stderr);
    assert_eq!(
        site.include_text().unwrap(),
        before,
        "include restored byte for byte"
    );
    site.assert_nothing_half_written();
    fs::write(site.nginx.conf_path(), original).unwrap();
    site.hook("switch", &[], Some("d-2")).ok();
    assert_eq!(site.live_version().as_deref(), Some("d-2"));
}

#[test]
fn a_config_nginx_rejects_at_reload_is_caught_and_rolled_back() {
    let site = live_site();
    site.run_until("d-2", "health");
    let before = site.include_text().unwrap();
    let original = break_nginx_conf(&site);
    site.set_key("nginx", "test_command", "[\"true\"]");
    site.set_key("nginx", "reload_timeout", "1s");
    let traffic = site.traffic();
    let out = site
        .hook("switch", &[], Some("d-2"))
        .fails(1, "rejected the configuration");
    traffic.assert_all("d-1");
    assert!(
        out.last_line().contains("include restored"),
        "{}",
        out.last_line()
    );
    assert_eq!(site.include_text().unwrap(), before);
    site.assert_nothing_half_written();
    fs::write(site.nginx.conf_path(), original).unwrap();
    site.write_config();
    site.hook("switch", &[], Some("d-2")).ok();
    assert_eq!(site.live_version().as_deref(), Some("d-2"));
}

#[test]
fn a_missing_or_failing_reload_command_restores_the_include() {
    let site = live_site();
    site.run_until("d-2", "health");
    let before = site.include_text().unwrap();
    for (argv, needle) in [
        ("[\"/nonexistent/reload-nginx\"]", "could not run"),
        ("[\"false\"]", "failed"),
    ] {
        site.set_key("nginx", "reload_command", argv);
        let traffic = site.traffic();
        let out = site.hook("switch", &[], Some("d-2")).fails(1, needle);
        traffic.assert_all("d-1");
        assert!(
            out.last_line().contains("nginx reload"),
            "{}",
            out.last_line()
        );
        assert_eq!(site.include_text().unwrap(), before);
        site.assert_nothing_half_written();
    }
    let reload = site.nginx.reload_command();
    site.set_key(
        "nginx",
        "reload_command",
        &serde_yaml::to_string(&reload).unwrap(),
    );
    site.hook("switch", &[], Some("d-2")).ok();
    assert_eq!(site.live_version().as_deref(), Some("d-2"));
}

#[test]
fn two_switches_at_the_same_time_never_both_switch() {
    let mut site = live_site();
    site.set(|s| s.lock_wait = "10s");
    site.run_until("d-2", "health");
    let history = site.state().join("history.log");
    let before = std::fs::read_to_string(&history).unwrap().lines().count();
    let traffic = site.traffic();
    let (deployment, manual) = std::thread::scope(|scope| {
        let d = scope.spawn(|| site.hook("switch", &[], Some("d-2")));
        let m = scope.spawn(|| site.hook("switch", &[], None));
        (d.join().unwrap(), m.join().unwrap())
    });
    let seen = traffic.finish();
    assert!(seen.iter().all(|v| v == "d-1" || v == "d-2"), "{seen:?}");
    // Each waited for the other's lock, then switched: one after the other, never together.
    deployment.ok();
    manual.ok();
    let text = std::fs::read_to_string(&history).unwrap();
    let new: Vec<Vec<&str>> = text
        .lines()
        .skip(before)
        .map(|l| l.split_whitespace().collect())
        .collect();
    // Manual first: it switches to d-2, and the deployment's switch then finds d-2 live
    // and does nothing. Deployment first: the manual switch then goes back to d-1, starting
    // from where the first ended (`<at> switch <from> -> <to> deployment <id>`), which two
    // overlapping switches (both reading the same live port) could not do.
    let expected = match new.len() {
        1 => "d-2",
        2 => {
            assert_eq!(new[1][2], new[0][4], "switches overlapped:\n{text}");
            "d-1"
        }
        _ => panic!("unexpected switches:\n{text}"),
    };
    assert_eq!(site.live_version().as_deref(), Some(expected), "{text}");
    site.assert_nothing_half_written();
}

#[test]
fn interleaved_deployments_never_switch_to_the_other_deployments_app() {
    let site = live_site();
    // d-2 and d-3 run their hooks interleaved: d-3's start replaces d-2's app on the idle slot.
    site.hook("stop", &[], Some("d-2")).ok();
    site.hook("start", &[], Some("d-2")).ok();
    site.hook("stop", &[], Some("d-3")).ok();
    site.hook("start", &[], Some("d-3")).ok();
    site.hook("health", &[], Some("d-2")).ok();
    let traffic = site.traffic();
    let out = site
        .hook("switch", &[], Some("d-2"))
        .fails(1, "runs deployment d-3");
    traffic.assert_all("d-1");
    assert!(
        out.last_line().contains("nginx unchanged"),
        "{}",
        out.last_line()
    );
    site.hook("health", &[], Some("d-3")).ok();
    site.hook("switch", &[], Some("d-3")).ok();
    assert_eq!(site.live_version().as_deref(), Some("d-3"));
    site.assert_nothing_half_written();
}

/// A small tmpfs mounted over a directory; unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .ok()?;
        out.status.success().then(|| Tmpfs(dir.to_path_buf()))
    }
}

/// A read-only bind mount of a directory over itself (the apps keep their open logs below).
struct ReadOnly(std::path::PathBuf);

impl ReadOnly {
    fn mount(dir: &std::path::Path) -> Option<ReadOnly> {
        let bind = Command::new("mount")
            .arg("--bind")
            .arg(dir)
            .arg(dir)
            .output()
            .ok()?;
        if !bind.status.success() {
            return None;
        }
        let guard = ReadOnly(dir.to_path_buf());
        let ro = Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(dir)
            .output()
            .ok()?;
        ro.status.success().then_some(guard)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // The apps run from releases on this file system: stop them before it goes away
        // (the site's own clean-up reads their records from it).
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if fs::read_link(entry.path().join("exe")).is_ok_and(|exe| exe.starts_with(&self.0)) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Fills the file system holding `dir` with one file; returns it.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    let small = [0u8; 512];
    while file.write_all(&small).is_ok() {}
    path
}

#[test]
fn disk_full_or_read_only_state_directory() {
    let site = Site::new();
    // Room for two releases and `live/switch`, a copy of the (debug: ~20 MB) switch binary.
    let Some(tmpfs) = Tmpfs::mount(&site.state(), "80m") else {
        portswap_testkit::skip(
            "disk full / read-only state dir",
            "`mount -t tmpfs` is not permitted here",
        );
        return;
    };
    site.deploy_ok("d-1");

    // Disk full while staging the release.
    let filler = fill(&site.state());
    failing_deploy(&site, "d-2", "d-1", "start", 1, "No space left on device");
    assert!(
        !site
            .state()
            .join(format!("releases/d-2-{}", site.ports[1]))
            .exists(),
        "the partial release is removed"
    );
    fs::remove_file(&filler).unwrap();
    recovers(&site, "d-2");

    // Disk full at the switch: the switch cannot be recorded before it is made, so nothing
    // is switched; once there is room, the re-run switches.
    site.run_until("d-3", "health");
    let include_before = site.include_text();
    let filler = fill(&site.state());
    let traffic = site.traffic();
    let out = site
        .hook("switch", &[], Some("d-3"))
        .fails(1, "cannot record the switch before making it");
    traffic.assert_all("d-2");
    assert!(
        out.last_line().contains("No space left"),
        "{}",
        out.last_line()
    );
    assert_eq!(site.include_text(), include_before);
    fs::remove_file(&filler).unwrap();
    site.hook("switch", &[], Some("d-3")).ok();
    assert_eq!(site.live_version().as_deref(), Some("d-3"));
    site.assert_nothing_half_written();

    // Read-only state directory: every hook fails at the lock, nothing changes.
    let Some(read_only) = ReadOnly::mount(&site.state()) else {
        portswap_testkit::skip(
            "read-only state dir",
            "a read-only bind mount is not permitted here",
        );
        return;
    };
    let out = failing_deploy(&site, "d-4", "d-3", "stop", 1, "Read-only file system");
    assert!(out.last_line().contains("lock"), "{}", out.last_line());
    drop(read_only);
    recovers(&site, "d-4");
    drop(tmpfs);
}
