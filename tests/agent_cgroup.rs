//! Apps outlive the CodeDeploy agent (issue 16). A stand-in agent service with the real
//! unit's relevant lines (no `KillMode=`, so systemd kills its whole cgroup when it stops;
//! `Restart=on-failure`) runs the four hooks of each deployment from its main process, as
//! root or through `su USER -c`, in a real systemd machine. A restart or a stop of that
//! service never takes the site down, in every set-up: the apps never live in its cgroup.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use portswap_testkit::hooks::fixture_command;
use portswap_testkit::net::{self, Load};
use portswap_testkit::supervised::{SupervisedSite, AGENT_UNIT};
use portswap_testkit::systemd::refused;
use portswap_testkit::tools;

/// The book's hook user (`runas: ec2-user`).
const HOOK_USER: &str = "ec2-user";

/// A site under systemd whose deployments the stand-in agent runs, with `app.supervisor`
/// `supervisor`, hooks as `runas` (set-up (b)) or root.
fn site(test: &str, supervisor: &str, runas: Option<&str>) -> Option<SupervisedSite> {
    if runas.is_some() && !tools::need(test, &[&tools::SUDO]) {
        return None;
    }
    let mut site = match SupervisedSite::new() {
        Ok(site) => site,
        Err(why) => {
            refused(test, &why);
            return None;
        }
    };
    if let Some(user) = runas {
        site.machine.add_user(user);
        site.run_hooks_as(user);
    }
    configure(&site, supervisor);
    site.install_agent();
    Some(site)
}

fn configure(site: &SupervisedSite, supervisor: &str) {
    site.configure_command(
        fixture_command("{deployment_id}", &[] as &[&str]),
        supervisor,
        "",
    );
}

/// Hooks as root, the app as `user` (set-up (a)), created in the machine.
fn run_app_as(site: &SupervisedSite, user: &str) {
    site.machine.add_user(user);
    let text = fs::read_to_string(site.config()).unwrap();
    fs::write(
        site.config(),
        text.replacen("app:\n", &format!("app:\n  user: {user}\n"), 1),
    )
    .unwrap();
    fs::set_permissions(site.root(), fs::Permissions::from_mode(0o755)).unwrap();
}

/// Under the agent's umask 0027 everything portswap made has its own explicit mode: the
/// include readable by nginx, directories on the app's way open, unit files 0644.
fn assert_modes(site: &SupervisedSite, unit_files: &[String]) {
    let state = site.state();
    for (path, want) in [
        (site.root().join("service-url.inc"), 0o644),
        (state.clone(), 0o755),
        (state.join("releases"), 0o755),
        (state.join("logs"), 0o755),
    ] {
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, want, "{}: {mode:o}", path.display());
    }
    for unit in unit_files {
        assert_eq!(
            site.machine.run_ok(&["stat", "-c", "%a", unit]),
            "644",
            "{unit}"
        );
    }
}

/// One deployment through the stand-in agent; panics with its output unless it succeeds.
fn deploy(site: &SupervisedSite, id: &str) -> String {
    let run = site.agent_deploy(id);
    assert!(
        run.success(),
        "deployment {id}: {:?}\n{}",
        run.hooks,
        run.output
    );
    run.output
}

/// The version answering directly on `port`.
fn version_on(port: u16) -> Option<String> {
    let r = net::http_get_timeout(port, "/", Duration::from_millis(500)).ok()?;
    (r.status == 200).then(|| r.header("X-App-Version").map(str::to_string))?
}

fn status(site: &SupervisedSite) -> String {
    let run = site.hook("switch", &["--status"], None);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout
}

/// Each slot's app lives in the cgroup `expect(port)` names, and `--status` says so
/// without a warning.
fn assert_own_cgroups(site: &SupervisedSite, expect: impl Fn(u16) -> String) {
    let status = status(site);
    assert!(!status.contains("WARNING"), "{status}");
    for port in site.ports {
        let wanted = expect(port);
        assert!(
            status
                .lines()
                .any(|l| l.trim().starts_with("cgroup ") && l.ends_with(&wanted)),
            "slot {port} not in {wanted}:\n{status}"
        );
    }
}

/// `systemctl <how> codedeploy-agent` while clients poll nginx on new connections: no
/// request fails, the live version answers every one, the previous version still answers
/// on its slot.
fn agent_goes_away(site: &SupervisedSite, how: &str, live: &str, previous: (u16, &str)) {
    let load = Load::start(site.nginx_port, 3);
    load.wait_for_more(30, Duration::from_secs(10)).unwrap();
    let agent_pid = site.machine.unit_property(AGENT_UNIT, "MainPID");
    site.machine.run_ok(&["systemctl", how, AGENT_UNIT]);
    if how == "restart" {
        assert_ne!(site.machine.unit_property(AGENT_UNIT, "MainPID"), agent_pid);
    } else {
        assert_eq!(
            site.machine.unit_property(AGENT_UNIT, "ActiveState"),
            "inactive"
        );
    }
    load.wait_for_more(60, Duration::from_secs(10)).unwrap();
    let seen = load.finish();
    let failed: Vec<&String> = seen.iter().filter(|s| s.starts_with("error")).collect();
    let other: Vec<&String> = seen.iter().filter(|s| s.as_str() != live).collect();
    println!(
        "systemctl {how} {AGENT_UNIT}: {} requests through nginx, {} failed",
        seen.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{:?}", &failed[..failed.len().min(5)]);
    assert!(
        other.is_empty(),
        "not the live version: {:?}",
        &other[..other.len().min(5)]
    );
    assert_eq!(version_on(previous.0).as_deref(), Some(previous.1));
}

/// The idle slot's port (the previous version's).
fn previous_port(site: &SupervisedSite) -> u16 {
    let [a, b] = site.ports;
    if site.live_port() == Some(a) {
        b
    } else {
        a
    }
}

/// A deployment, agent restart, another, agent stop, agent start, a third; deployment ids
/// follow `first` (the last one deployed).
fn survives_restart_and_stop(site: &SupervisedSite, first: usize) {
    let id = |n: usize| format!("d-{n}");
    deploy(site, &id(first + 1));
    agent_goes_away(
        site,
        "restart",
        &id(first + 1),
        (previous_port(site), &id(first)),
    );
    deploy(site, &id(first + 2));
    agent_goes_away(
        site,
        "stop",
        &id(first + 2),
        (previous_port(site), &id(first + 1)),
    );
    site.machine.run_ok(&["systemctl", "start", AGENT_UNIT]);
    deploy(site, &id(first + 3));
    assert_eq!(site.live_version(), Some(id(first + 3)));
}

#[test]
fn hooks_as_root_with_units_survive_agent_restart_and_stop() {
    let Some(site) = site(
        "hooks_as_root_with_units_survive_agent_restart_and_stop",
        "auto",
        None,
    ) else {
        return;
    };
    run_app_as(&site, "app-user");
    deploy(&site, "d-1");
    deploy(&site, "d-2");
    assert_own_cgroups(&site, |port| {
        format!("/system.slice/portswap-{port}.service")
    });
    let units: Vec<String> = site
        .ports
        .iter()
        .map(|p| format!("/etc/systemd/system/portswap-{p}.service"))
        .collect();
    assert_modes(&site, &units);
    survives_restart_and_stop(&site, 2);
}

#[test]
fn hooks_as_root_in_process_mode_start_apps_in_scopes_that_survive_the_agent() {
    let Some(site) = site(
        "hooks_as_root_in_process_mode_start_apps_in_scopes_that_survive_the_agent",
        "process",
        None,
    ) else {
        return;
    };
    run_app_as(&site, "app-user");
    for id in ["d-1", "d-2"] {
        let output = deploy(&site, id);
        assert!(output.contains("process supervisor"), "{output}");
        assert!(!output.contains("WARNING"), "{output}");
    }
    assert_own_cgroups(&site, |port| format!("/system.slice/portswap-{port}.scope"));
    assert_modes(&site, &[]);
    survives_restart_and_stop(&site, 2);
}

/// Set-up (b) on a host where the apps already run in the agent's cgroup (hooks as a user
/// without a lingering manager: process mode, a loud verdict), then `loginctl enable-linger`:
/// the next deployments move the apps into user units without a failed request; then the
/// agent restarts and stops, and the machine reboots: both versions come back.
#[test]
fn hooks_as_a_user_move_to_user_units_that_survive_the_agent_and_a_reboot() {
    let test = "hooks_as_a_user_move_to_user_units_that_survive_the_agent_and_a_reboot";
    let Some(mut site) = site(test, "auto", Some(HOOK_USER)) else {
        return;
    };
    let output = deploy(&site, "d-1");
    let verdict = output
        .lines()
        .rfind(|l| l.starts_with("portswap start:"))
        .unwrap();
    assert!(
        verdict.contains(&format!(
            "WARNING: the app stays in the cgroup of {AGENT_UNIT}"
        )) && verdict.contains(&format!("loginctl enable-linger {HOOK_USER}")),
        "{verdict}"
    );
    let before = status(&site);
    assert!(
        before.contains(&format!("lives in the cgroup of {AGENT_UNIT}")),
        "{before}"
    );

    // Asking for systemd explicitly without a running manager is refused, naming the fix.
    configure(&site, "systemd");
    let refused = site.hook("start", &[], Some("d-refused"));
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused
            .verdict()
            .contains(&format!("sudo loginctl enable-linger {HOOK_USER}")),
        "{}",
        refused.verdict()
    );
    configure(&site, "auto");

    // `sudo loginctl enable-linger ec2-user`, then deployments as usual.
    site.machine.enable_linger(HOOK_USER);
    let uid = site.machine.run_ok(&["id", "-u", HOOK_USER]);
    let load = Load::start(site.nginx_port, 3);
    for id in ["d-2", "d-3"] {
        let output = deploy(&site, id);
        assert!(output.contains("systemd --user supervisor"), "{output}");
    }
    let seen = load.finish();
    let failed = seen.iter().filter(|s| s.starts_with("error")).count();
    println!(
        "migration to user units: {} requests, {failed} failed",
        seen.len()
    );
    assert_eq!(failed, 0);
    assert_own_cgroups(&site, |port| {
        format!("/user.slice/user-{uid}.slice/user@{uid}.service/app.slice/portswap-{port}.service")
    });

    survives_restart_and_stop(&site, 3);
    let live = site.live_version().unwrap();
    let previous = previous_port(&site);
    let previous_version = version_on(previous).unwrap();

    site.machine.poweroff().unwrap();
    site.machine.boot_again().unwrap();
    let boot = site.machine.booted_at();
    net::wait_until(
        Duration::from_secs(10),
        "the live version after reboot",
        || site.live_version().as_deref() == Some(live.as_str()),
    )
    .unwrap();
    println!(
        "set-up (b) reboot: live version served {:?} after boot began",
        boot.elapsed()
    );
    net::wait_until(
        Duration::from_secs(10),
        "the previous version after reboot",
        || version_on(previous).as_deref() == Some(previous_version.as_str()),
    )
    .unwrap();
    let after = status(&site);
    assert!(after.contains("user unit"), "{after}");
    // The agent is enabled too: the next deployment runs as usual.
    deploy(&site, "d-7");
    assert_eq!(site.live_version().as_deref(), Some("d-7"));
    let _ = &mut site;
}

/// A pseudo-random number below `below` (no generator crate: the clock's nanoseconds, mixed).
fn random_below(below: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    (nanos.wrapping_mul(6_364_136_223_846_793_005) >> 33) % below.max(1)
}

/// Runs `hook` of deployment `id` the way the agent times it out: SIGTERM to its process
/// group after `after`, SIGKILL to the group 5 s later if anything of it still runs.
/// Returns its exit status in words.
fn timed_out(site: &SupervisedSite, hook: &str, id: &str, after: Duration) -> String {
    use nix::sys::signal::{killpg, Signal};
    use std::os::unix::process::CommandExt;
    let mut child = site
        .hook_command(hook, &[], Some(id))
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    // The fault's moment (not synchronisation): somewhere inside the hook's run.
    std::thread::sleep(after);
    let _ = killpg(group, Signal::SIGTERM);
    let exited = net::wait_until(
        Duration::from_secs(5),
        "the hook to exit on SIGTERM",
        || child.try_wait().ok().flatten().is_some(),
    );
    // The agent 2.x SIGKILLs the group 5 s after the SIGTERM, whatever is left in it.
    let _ = killpg(group, Signal::SIGKILL);
    let status = child.wait().unwrap();
    match exited {
        Ok(_) => format!("{status}"),
        Err(_) => format!("{status} after SIGKILL"),
    }
}

/// The first deployment after a cut-short hook: it succeeds, or a hook refuses (exit 4)
/// naming the fix (re-run `switch`), which then lets it succeed.
fn next_deployment_completes(site: &SupervisedSite, id: &str) {
    let runs = site.deploy(id);
    let last = runs.last().unwrap();
    if last.code == 0 && runs.len() == 4 {
        return;
    }
    assert_eq!(last.code, 4, "{} failed:\n{}", last.hook, last.stderr);
    let verdict = last.verdict();
    assert!(verdict.contains("fix: re-run `switch`"), "{verdict}");
    let intent = verdict
        .split("DEPLOYMENT_ID=")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap()
        .to_string();
    let fix = site.hook("switch", &[], Some(&intent));
    assert_eq!(fix.code, 0, "{}", fix.stderr);
    let runs = site.deploy(id);
    let last = runs.last().unwrap();
    assert!(
        last.code == 0 && runs.len() == 4,
        "{}:\n{}",
        last.hook,
        last.stderr
    );
}

/// The agent's timeout (SIGTERM to the hook's group, SIGKILL 5 s later) at random points of
/// each hook, in set-up (b) with user units: nginx serves a running app after every kill,
/// and the next deployment completes (or refuses naming the fix, which then works).
#[test]
fn agent_timeouts_at_random_points_of_each_hook_leave_a_host_the_next_deployment_completes() {
    let test =
        "agent_timeouts_at_random_points_of_each_hook_leave_a_host_the_next_deployment_completes";
    let Some(site) = site(test, "auto", Some(HOOK_USER)) else {
        return;
    };
    site.machine.enable_linger(HOOK_USER);
    for id in ["t-1", "t-2"] {
        let runs = site.deploy(id);
        assert!(runs.iter().all(|r| r.code == 0), "{:?}", runs.last());
    }
    let hooks = ["stop", "start", "health", "switch"];
    let mut n = 2;
    for round in 0..2 {
        for (i, hook) in hooks.iter().enumerate() {
            n += 1;
            let id = format!("t-{n}");
            for before in &hooks[..i] {
                let run = site.hook(before, &[], Some(&id));
                assert_eq!(run.code, 0, "{before}: {}", run.stderr);
            }
            // Up to 400 ms in: hook runs here take 20-400 ms, so some kills land before
            // the hook starts its work, some inside it, some after it finished.
            let after = Duration::from_millis(random_below(400));
            let how = timed_out(&site, hook, &id, after);
            println!("round {round}: {hook} of {id} timed out after {after:?}: {how}");
            let live = site.live_version();
            assert!(
                live.is_some(),
                "nginx serves no running app after {hook} was killed"
            );
            n += 1;
            let started = std::time::Instant::now();
            next_deployment_completes(&site, &format!("t-{n}"));
            println!("  next deployment t-{n} took {:?}", started.elapsed());
            assert_eq!(site.live_version(), Some(format!("t-{n}")));
        }
    }
}
