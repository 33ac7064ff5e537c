//! Proof that cannot be forged under the systemd supervisor (issue 14), on a real systemd
//! (testkit::systemd): a daemonizing unit never leaves a record naming pid 0, and the app log
//! systemd appends to as root cannot be pointed at another file, nor block `start`, and a user
//! unit named like a slot's unit is not taken for it.

mod support;

use std::fs;
use std::io::BufRead;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use portswap_testkit::hooks::{fixture_command, recorded_pid};
use portswap_testkit::supervised::{HookRun, SupervisedSite};
use portswap_testkit::systemd::refused;
use support::TestUser;

fn site(test: &str) -> Option<SupervisedSite> {
    match SupervisedSite::new() {
        Ok(site) => Some(site),
        Err(why) => {
            refused(test, &why);
            None
        }
    }
}

fn deploy_ok(site: &SupervisedSite, id: &str) {
    for run in site.deploy(id) {
        assert_eq!(run.code, 0, "{} failed:\n{}", run.hook, run.stderr);
    }
}

fn fails(run: HookRun, code: i32, needle: &str) -> HookRun {
    assert_eq!(run.code, code, "{}: {}", run.hook, run.stderr);
    assert!(run.verdict().contains(needle), "{}", run.verdict());
    run
}

/// Changes `app.KEY` in portswap.yml to `value` (YAML text).
fn set_app_key(site: &SupervisedSite, key: &str, value: &str) {
    let text = fs::read_to_string(site.config()).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    config["app"][key] = serde_yaml::from_str(value).unwrap();
    fs::write(site.config(), serde_yaml::to_string(&config).unwrap()).unwrap();
}

#[test]
fn a_daemonizing_unit_records_its_process_and_stop_signals_nothing_outside_it() {
    let Some(site) = site("a daemonizing unit records its process") else {
        return;
    };
    let daemonize = site.root().join("revision/daemonize.sh");
    fs::write(
        &daemonize,
        "#!/bin/sh\nsetsid \"$@\" </dev/null >/dev/null 2>&1 &\nexit 0\n",
    )
    .unwrap();
    fs::set_permissions(&daemonize, fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = vec!["/bin/sh".to_string(), daemonize.display().to_string()];
    command.extend(fixture_command("{deployment_id}", &[] as &[&str]));
    site.configure_command(command, "systemd", "");
    // An unrelated process in the machine whose process group reads as 0 there (its group
    // leader lives outside the machine's pid namespace), as kernel threads' do on a host.
    let mut bystander = site
        .machine
        .command(&["sh", "-c", "echo $$; exec sleep 300"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(bystander.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let inside = line.trim().to_string();
    let alive = || site.machine.run(&["kill", "-0", &inside]).status.success();
    assert!(alive());
    for round in 1..=3 {
        let id = format!("daemon-{round}");
        deploy_ok(&site, &id);
        let port = site.live_port().unwrap();
        let pid = recorded_pid(&site.state(), port).unwrap();
        assert!(pid > 1, "{id}: the record names pid {pid}");
        assert!(alive(), "{id}: the unrelated process was signalled");
    }
    let _ = bystander.kill();
    let _ = bystander.wait();
}

#[test]
fn the_app_log_systemd_appends_to_cannot_be_redirected_nor_block_start() {
    let Some(user) = TestUser::create("the systemd app log") else {
        return;
    };
    let Some(site) = site("the systemd app log") else {
        return;
    };
    fs::set_permissions(site.root(), fs::Permissions::from_mode(0o755)).unwrap();
    let home = site.root().join("home");
    fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(user.uid), Some(user.gid)).unwrap();
    let logs = home.join("logs");
    fs::create_dir(&logs).unwrap();
    std::os::unix::fs::chown(&logs, Some(user.uid), Some(user.gid)).unwrap();
    set_app_key(&site, "user", &user.name);
    set_app_key(
        &site,
        "log_dir",
        &format!("{:?}", logs.display().to_string()),
    );
    // The app user points its log at a file of root's.
    let victim = site.root().join("victim");
    fs::write(&victim, "root's file\n").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    let log = logs.join(format!("app-{}.log", site.ports[0]));
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    let run = fails(
        site.hook("start", &[], Some("d-1")),
        4,
        "systemd appends the app's output",
    );
    assert!(
        run.verdict().contains("systemd.output: journal"),
        "{}",
        run.verdict()
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "root's file\n");
    assert_eq!(fs::metadata(&victim).unwrap().uid(), 0);
    assert!(
        site.machine
            .unit_property(&site.unit(site.ports[0]), "LoadState")
            != "loaded"
    );

    // In a log directory only root can change (the default), a FIFO left at the log fails
    // `start` at once instead of blocking it.
    set_app_key(
        &site,
        "log_dir",
        &format!("{:?}", site.state().join("logs").display().to_string()),
    );
    let fifo = site.state().join(format!("logs/app-{}.log", site.ports[0]));
    fs::create_dir_all(fifo.parent().unwrap()).unwrap();
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let start = portswap_testkit::bins::bin("start").display().to_string();
    let config = site.config().display().to_string();
    let mut child = site
        .machine
        .command_env(
            &[&start],
            &[("PORTSWAP_CONFIG", &config), ("DEPLOYMENT_ID", "d-1")],
        )
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let finished = portswap_testkit::net::wait_until(Duration::from_secs(30), "start ends", || {
        child.try_wait().unwrap().is_some()
    });
    if finished.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("start hangs on a FIFO at the app log");
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let verdict = stderr.lines().last().unwrap_or("");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(verdict.contains("is a FIFO"), "{verdict}");
    fs::remove_file(&fifo).unwrap();
    deploy_ok(&site, "d-1");
    assert!(Path::new(&fifo).is_file());
    assert_eq!(fs::metadata(&fifo).unwrap().uid(), user.uid);
}

#[test]
fn units_stay_readable_foreign_links_are_refused_and_a_failed_start_leaves_no_restarting_unit() {
    let Some(site) = site("unit-file holes") else {
        return;
    };
    // A C1 control character (U+0085) in an argument: the unit stays UTF-8, so systemctl
    // reads it back and the next deployment stops and starts it.
    let text = fs::read_to_string(site.config()).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let command = config["app"]["command"].as_sequence_mut().unwrap();
    command.push("--profile".into());
    command.push("next\u{85}line".into());
    fs::write(site.config(), serde_yaml::to_string(&config).unwrap()).unwrap();
    deploy_ok(&site, "c1-1");
    let unit = site.unit(site.live_port().unwrap());
    let shown = site
        .machine
        .run(&["systemctl", "show", "-p", "ExecStart", &unit]);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    deploy_ok(&site, "c1-2");
    deploy_ok(&site, "c1-3");

    // A crashing version: `start` fails and leaves its unit neither enabled nor restarting.
    site.configure(&["--exit-after-ms", "50"], "");
    let idle = site
        .ports
        .into_iter()
        .find(|p| Some(*p) != site.live_port())
        .unwrap();
    assert_eq!(site.hook("stop", &[], Some("crash")).code, 0);
    let run = site.hook("start", &[], Some("crash"));
    assert_eq!(run.code, 1, "{}", run.stderr);
    let idle_unit = site.unit(idle);
    let state = site.machine.unit_property(&idle_unit, "UnitFileState");
    let active = site.machine.unit_property(&idle_unit, "ActiveState");
    assert!(
        state != "enabled" && matches!(active.as_str(), "inactive" | "failed"),
        "{idle_unit} left {state}, {active}"
    );
    let restarts = site.machine.unit_property(&idle_unit, "NRestarts");
    std::thread::sleep(Duration::from_millis(700)); // pacing: a restart would happen by now
    assert_eq!(
        site.machine.unit_property(&idle_unit, "NRestarts"),
        restarts
    );

    // A foreign unit of that name as a link (mask, link): refused, never overwritten.
    site.configure(&[] as &[&str], "");
    for how in ["mask", "link"] {
        let path = format!("/etc/systemd/system/{idle_unit}");
        let foreign = site.root().join("foreign.service");
        fs::write(&foreign, "[Service]\nExecStart=/bin/sleep 300\n").unwrap();
        let _ = site.machine.run(&["rm", "-f", &path]);
        if how == "mask" {
            site.machine.run_ok(&["systemctl", "mask", &idle_unit]);
        } else {
            let named = site.root().join(&idle_unit);
            fs::copy(&foreign, &named).unwrap();
            site.machine
                .run_ok(&["systemctl", "link", &named.display().to_string()]);
        }
        fails(
            site.hook("start", &[], Some("foreign")),
            4,
            "not a unit portswap wrote",
        );
        let target = site.machine.run_ok(&["readlink", &path]);
        assert_eq!(target == "/dev/null", how == "mask", "{how}: {target}");
        let _ = site.machine.run(&["systemctl", "unmask", &idle_unit]);
        let _ = site.machine.run(&["rm", "-f", &path]);
        site.machine.run_ok(&["systemctl", "daemon-reload"]);
    }
    deploy_ok(&site, "after");
}

#[test]
fn both_supervisors_give_the_app_its_users_groups_and_the_same_environment() {
    let Some(user) = TestUser::create("groups and environment in both supervisors") else {
        return;
    };
    let group = format!("{}-g", user.name);
    assert!(std::process::Command::new("groupadd")
        .args(["--system", &group])
        .status()
        .unwrap()
        .success());
    assert!(std::process::Command::new("usermod")
        .args(["-aG", &group, &user.name])
        .status()
        .unwrap()
        .success());
    let gid = nix::unistd::Group::from_name(&group)
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    let Some(site) = site("groups and environment in both supervisors") else {
        return;
    };
    fs::set_permissions(site.root(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut seen = Vec::new();
    for (round, supervisor) in ["systemd", "process"].into_iter().enumerate() {
        site.configure_command(
            fixture_command("{deployment_id}", &[] as &[&str]),
            supervisor,
            "",
        );
        set_app_key(&site, "user", &user.name);
        let id = format!("{supervisor}-{round}");
        deploy_ok(&site, &id);
        let pid = recorded_pid(&site.state(), site.live_port().unwrap()).unwrap();
        let status = site
            .machine
            .run_ok(&["cat", &format!("/proc/{pid}/status")]);
        let groups = status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .unwrap()
            .trim()
            .to_string();
        assert!(
            groups.split_whitespace().any(|g| g == gid.to_string()),
            "{supervisor}: groups {groups:?}"
        );
        let environ = site
            .machine
            .run(&["cat", &format!("/proc/{pid}/environ")])
            .stdout;
        let environ = String::from_utf8_lossy(&environ).replace('\0', "\n");
        let mut names: Vec<String> = environ
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_string()))
            // systemd's own additions (documented): its locale and its bookkeeping.
            .filter(|k| {
                ![
                    "INVOCATION_ID",
                    "JOURNAL_STREAM",
                    "SYSTEMD_EXEC_PID",
                    "LANG",
                ]
                .contains(&k.as_str())
            })
            .collect();
        names.sort();
        let path = environ
            .lines()
            .find(|l| l.starts_with("PATH="))
            .unwrap()
            .to_string();
        seen.push((supervisor, groups, names, path));
    }
    assert_eq!(seen[0].1, seen[1].1, "groups differ: {seen:?}");
    assert_eq!(seen[0].2, seen[1].2, "environment differs: {seen:?}");
    assert_eq!(seen[0].3, seen[1].3, "PATH differs: {seen:?}");
    drop(site);
    let _ = std::process::Command::new("gpasswd")
        .args(["-d", &user.name, &group])
        .status();
    let _ = std::process::Command::new("groupdel").arg(&group).status();
}

#[test]
fn a_user_unit_named_like_the_slot_unit_gets_no_traffic_and_no_signal() {
    // Issue 14, item 2: identity is the unit's full cgroup path, not a name. An unprivileged
    // user runs a user unit called like the idle slot's unit (its cgroup's last component is
    // `portswap-P.service`, under the user's manager) on the idle port after the slot's app
    // went away.
    let Some(site) = site("a user unit named like the slot unit") else {
        return;
    };
    deploy_ok(&site, "d-1");
    deploy_ok(&site, "d-2");
    let live = site.live_port().unwrap();
    let idle = *site.ports.iter().find(|p| **p != live).unwrap();
    let unit = site.unit(idle);
    site.machine.run_ok(&["systemctl", "stop", &unit]);
    let uid = site.machine.add_user("mallory");
    site.machine.enable_linger("mallory");
    let fixture = portswap_testkit::bins::bin("fixture-app")
        .display()
        .to_string();
    let runtime = format!("XDG_RUNTIME_DIR=/run/user/{uid}");
    let port = idle.to_string();
    let name = format!("--unit={unit}");
    site.machine.run_ok(&[
        "runuser",
        "-u",
        "mallory",
        "--",
        "env",
        &runtime,
        "systemd-run",
        "--user",
        "-q",
        &name,
        &fixture,
        "--port",
        &port,
        "--version",
        "evil",
    ]);
    let impostor = || {
        portswap_testkit::net::http_get(idle, "/")
            .ok()
            .and_then(|r| r.header("X-App-Version").map(str::to_string))
    };
    portswap_testkit::net::wait_until(Duration::from_secs(10), "the user unit answers", || {
        impostor().as_deref() == Some("evil")
    })
    .unwrap();
    let cgroup = site.machine.run_ok(&[
        "runuser",
        "-u",
        "mallory",
        "--",
        "env",
        &runtime,
        "systemctl",
        "--user",
        "show",
        "-P",
        "ControlGroup",
        &unit,
    ]);
    assert!(cgroup.ends_with(&format!("/{unit}")), "{cgroup}");

    fails(
        site.hook("switch", &["--rollback"], None),
        4,
        "not by the app start launched",
    );
    assert_eq!(site.live_version().as_deref(), Some("d-2"));
    // health sees the slot's own app gone (its unit stopped) before any answer counts.
    let health = site.hook("health", &[], Some("d-1"));
    assert_ne!(health.code, 0, "{}", health.stderr);
    // stop for the next deployment finds a holder that is not the slot's app: refused, and
    // the user's process keeps running (never signalled).
    let stop = site.hook("stop", &[], Some("d-3"));
    assert_eq!(stop.code, 4, "{}", stop.stderr);
    assert_eq!(impostor().as_deref(), Some("evil"));
    assert_eq!(site.live_version().as_deref(), Some("d-2"));
}
