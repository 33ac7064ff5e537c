//! Whole deployments through the real hook binaries, a real nginx and the fixture app.

mod support;

use std::time::Duration;

use support::{wait, Site};

/// Right after `switch` returns, every new request must reach the new version.
fn assert_all_requests_reach(site: &Site, version: &str) {
    for _ in 0..20 {
        assert_eq!(
            site.live_version().as_deref(),
            Some(version),
            "a request reached another version"
        );
    }
}

#[test]
fn three_deployments_alternate_ports_and_keep_the_old_version_for_rollback() {
    let site = Site::new();
    let [a, b] = site.ports;
    assert!(
        site.include_text().is_none(),
        "first deployment starts with no include"
    );

    site.deploy_ok("d-1");
    assert_eq!(
        site.included_port(),
        Some(a),
        "first deployment goes to the first slot"
    );
    assert_all_requests_reach(&site, "d-1");

    site.deploy_ok("d-2");
    assert_eq!(site.included_port(), Some(b));
    assert_all_requests_reach(&site, "d-2");
    assert_eq!(
        site.version_on(a).as_deref(),
        Some("d-1"),
        "the old version stays up for rollback"
    );

    site.deploy_ok("d-3");
    assert_eq!(site.included_port(), Some(a));
    assert_all_requests_reach(&site, "d-3");
    assert_eq!(site.version_on(b).as_deref(), Some("d-2"));

    let history = std::fs::read_to_string(site.state().join("history.log")).unwrap();
    assert_eq!(history.lines().count(), 3, "{history}");
}

#[test]
fn failed_health_leaves_nginx_and_the_live_app_untouched() {
    let mut site = Site::new();
    site.deploy_ok("d-1");
    let include_before = site.include_text();
    let live_pid = site.recorded_pid(site.ports[0]).unwrap();

    site.set(|s| {
        s.app_args.push("--unhealthy".into());
        s.health_timeout = "1s";
    });
    let outcomes = site.deploy("d-2");
    let last = outcomes.into_iter().last().unwrap();
    let last = last.fails(1, "not healthy");
    assert!(last.last_line().contains("500"), "{}", last.last_line());
    assert_eq!(site.include_text(), include_before);
    assert_all_requests_reach(&site, "d-1");
    assert_eq!(site.recorded_pid(site.ports[0]), Some(live_pid));

    site.set(|s| s.app_args.clear());
    site.deploy_ok("d-3");
    assert_all_requests_reach(&site, "d-3");
}

#[test]
fn an_app_that_dies_is_reported_by_start_or_health_with_its_log() {
    let mut site = Site::new();
    site.deploy_ok("d-1");
    site.set(|s| s.app_args.push("--fail-start".into()));
    let outcomes = site.deploy("d-2");
    let last = outcomes.into_iter().last().unwrap();
    assert_eq!(
        last.hook, "start",
        "an immediate exit is caught by start itself"
    );
    let last = last.fails(1, "exited at once");
    assert!(
        last.stderr.contains("app log:"),
        "the app log tail is shown: {}",
        last.stderr
    );
    assert_all_requests_reach(&site, "d-1");

    site.set(|s| {
        s.app_args = vec![
            "--exit-after-ms".into(),
            "400".into(),
            "--start-delay-ms".into(),
            "5000".into(),
        ];
        s.health_timeout = "30s";
    });
    let started = std::time::Instant::now();
    let outcomes = site.deploy("d-3");
    let last = outcomes.into_iter().last().unwrap();
    assert_eq!(last.hook, "health");
    last.fails(1, "has exited");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a crash is reported without waiting for the timeout"
    );
    assert_all_requests_reach(&site, "d-1");
}

#[test]
fn config_test_failure_restores_the_include() {
    let mut site = Site::new();
    site.deploy_ok("d-1");
    let before = site.include_text().unwrap();
    site.run_until("d-2", "health");
    site.set(|s| s.test_command = Some(vec!["false".into()]));
    site.hook("switch", &[], Some("d-2"))
        .fails(1, "config test");
    assert_eq!(
        site.include_text().unwrap(),
        before,
        "include restored byte for byte"
    );
    assert_all_requests_reach(&site, "d-1");
}

#[test]
fn stop_is_idempotent_and_never_touches_the_live_slot() {
    let site = Site::new();
    let [a, b] = site.ports;
    site.hook("stop", &[], Some("d-0")).ok();
    site.hook("stop", &[], Some("d-0")).ok();
    site.deploy_ok("d-1");
    site.deploy_ok("d-2");
    let out = site.hook("stop", &[], None).ok();
    assert!(
        out.last_line().contains(&format!("port {a}")),
        "stop targets the idle slot: {}",
        out.last_line()
    );
    wait(Duration::from_secs(2), "idle port freed", || {
        site.version_on(a).is_none()
    });
    let again = site.hook("stop", &[], None).ok();
    assert!(
        again.last_line().contains("nothing runs"),
        "{}",
        again.last_line()
    );
    site.hook("stop", &["--port", &b.to_string()], None)
        .fails(4, "is live");
    assert_all_requests_reach(&site, "d-2");
}

#[test]
fn start_replaces_a_leftover_app_and_refuses_a_foreign_process() {
    let site = Site::new();
    let [a, _] = site.ports;
    site.hook("start", &[], Some("d-1")).ok();
    // Lose the record: the leftover is still recognised as ours by its executable.
    let leftover = site.recorded_pid(a).unwrap();
    std::fs::remove_file(site.state().join(format!("slot-{a}.yml"))).unwrap();
    site.hook("start", &[], Some("d-2")).ok();
    assert_ne!(site.recorded_pid(a), Some(leftover));
    assert!(!std::path::Path::new(&format!("/proc/{leftover}")).exists() || !is_running(leftover));
    assert_eq!(site.version_on(a).as_deref(), Some("d-2"));
    site.hook("stop", &[], None).ok();

    let foreign = std::net::TcpListener::bind(("127.0.0.1", a)).unwrap();
    let out = site
        .hook("start", &[], Some("d-3"))
        .fails(4, "not portswap's app");
    assert!(
        out.last_line().contains(&std::process::id().to_string()),
        "names the pid: {}",
        out.last_line()
    );
    drop(foreign);
    site.hook("start", &[], Some("d-3")).ok();
}

fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn rollback_returns_to_the_previous_port_after_probing_it() {
    let site = Site::new();
    site.deploy_ok("d-1");
    site.deploy_ok("d-2");
    let out = site.hook("switch", &["--rollback"], None).ok();
    assert!(
        out.last_line().contains("rollback to deployment d-1"),
        "{}",
        out.last_line()
    );
    assert_all_requests_reach(&site, "d-1");
    site.hook("switch", &["--rollback"], None).ok();
    assert_all_requests_reach(&site, "d-2");

    // Nothing runs on the previous slot any more: refused at once, naming the deployment
    // that is gone, with no hint at --force, which never switches to a dead port either
    // (issue 17 item 6).
    site.hook("stop", &[], None).ok();
    for args in [
        &["--rollback"][..],
        &["--rollback", "--force"],
        &["--force"],
    ] {
        let started = std::time::Instant::now();
        let refused = site
            .hook("switch", args, None)
            .fails(4, "nothing listens there");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{args:?}: refused at once, not after a health wait"
        );
        let line = refused.last_line();
        assert!(line.contains("nginx unchanged"), "{line}");
        if args[0] == "--rollback" {
            assert!(
                line.contains("deployment d-1, the previous version, is gone"),
                "{line}"
            );
            assert!(!line.contains("pass --force"), "{line}");
        }
        assert_all_requests_reach(&site, "d-2");
    }
}

/// Issue 17 items 6 and 8: a deployment whose switch never ran (or failed) left its app on
/// the idle slot, where the previous version was: `--rollback` refuses it, naming it, and
/// `--rollback --force` is the way to switch to it anyway; a rollback names its deployment.
#[test]
fn rollback_refuses_a_version_that_never_went_live_unless_forced() {
    let site = Site::new();
    site.deploy_ok("d-1");
    site.deploy_ok("d-2");
    for hook in ["stop", "start", "health"] {
        site.hook(hook, &[], Some("d-3")).ok();
    }
    let refused = site
        .hook("switch", &["--rollback"], None)
        .fails(4, "it runs deployment d-3, which never went live");
    assert!(
        refused.last_line().contains("--rollback --force"),
        "{}",
        refused.last_line()
    );
    assert_all_requests_reach(&site, "d-2");
    let forced = site.hook("switch", &["--rollback", "--force"], None).ok();
    assert!(
        forced.last_line().contains("rollback to deployment d-3"),
        "{}",
        forced.last_line()
    );
    assert_all_requests_reach(&site, "d-3");
    let back = site.hook("switch", &["--rollback"], None).ok();
    assert!(
        back.last_line().contains("rollback to deployment d-2"),
        "{}",
        back.last_line()
    );
    assert_all_requests_reach(&site, "d-2");
}

#[test]
fn switch_is_idempotent_within_one_deployment() {
    let site = Site::new();
    site.deploy_ok("d-1");
    site.deploy_ok("d-2");
    let again = site.hook("switch", &[], Some("d-2")).ok();
    assert!(
        again.last_line().contains("nothing to do"),
        "{}",
        again.last_line()
    );
    assert_all_requests_reach(&site, "d-2");
}

#[test]
fn status_shows_live_port_and_slots() {
    let site = Site::new();
    site.deploy_ok("d-1");
    let out = site.hook("switch", &["--status"], None).ok();
    assert!(
        out.stdout
            .contains(&format!("live port: {}", site.ports[0])),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("deployment d-1"), "{}", out.stdout);
    assert!(out.stdout.contains("not running"), "{}", out.stdout);
}

#[test]
fn a_second_hook_waits_for_the_lock_then_fails_cleanly() {
    let mut site = Site::new();
    site.set(|s| s.lock_wait = "300ms");
    std::fs::create_dir_all(site.state()).unwrap();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(site.state().join("lock"))
        .unwrap();
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).unwrap();
    let out = site.hook("start", &[], Some("d-1")).fails(3, "holds");
    assert!(out.last_line().contains("lock"), "{}", out.last_line());
    assert!(
        site.recorded_pid(site.ports[0]).is_none(),
        "nothing started while locked out"
    );
    drop(held);
    site.hook("start", &[], Some("d-1")).ok();
}

/// The old nginx workers are retired as soon as the new ones accept; with
/// `nginx.quit_old_workers: false` nginx's own ~100 ms overlap applies. Either way no request
/// sent after `switch` returns reaches the old version.
#[test]
fn switch_retires_the_old_workers_early_unless_told_not_to() {
    let site = Site::new();
    site.deploy_ok("d-1");
    site.run_until("d-2", "health");
    let debug = |c: &mut std::process::Command| {
        c.env("RUST_LOG", "debug");
    };
    let early = site.hook_with("switch", &[], Some("d-2"), debug).ok();
    assert!(
        early.stderr.contains("asked 2 old worker(s) to quit"),
        "{}",
        early.stderr
    );
    assert_all_requests_reach(&site, "d-2");

    site.set_key("nginx", "quit_old_workers", "false");
    site.run_until("d-3", "health");
    let started = std::time::Instant::now();
    let late = site.hook_with("switch", &[], Some("d-3"), debug).ok();
    assert!(
        !late.stderr.contains("old worker(s) to quit"),
        "{}",
        late.stderr
    );
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "nginx keeps old workers 100 ms itself"
    );
    assert_all_requests_reach(&site, "d-3");
}
