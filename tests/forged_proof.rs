//! Proof that cannot be forged (issue 14): what another local user (a throwaway account
//! created for the test) or an unrelated process can set — an environment variable, a working
//! directory, a process group whose id once was the app's pid, a second socket on the port —
//! never gets production traffic or a signal from root's hooks.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portswap_testkit::bins;
use support::{Guarded, Settings, Site, TestUser};

/// A fixture app on `port` answering `version`, started by `adjust`'s rules (user, cwd, env).
fn fixture(port: u16, version: &str, extra: &[&str], adjust: impl FnOnce(&mut Command)) -> Guarded {
    let mut command = Command::new(bins::bin("fixture-app"));
    command
        .args(["--port", &port.to_string(), "--version", version])
        .args(extra)
        .current_dir("/")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    adjust(&mut command);
    Guarded(command.spawn().unwrap())
}

fn wait_listeners(port: u16, count: usize) {
    support::wait(Duration::from_secs(5), "the listeners are up", || {
        portswap::procfs::listening_inodes(port).len() == count
    });
}

/// Kills the app recorded on `port` (its whole group) and waits until the port is free.
fn kill_recorded(site: &Site, port: u16) {
    let pid = site.recorded_pid(port).expect("a recorded app");
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    support::wait(Duration::from_secs(5), "the app is gone", || {
        !portswap::procfs::port_in_use(port)
    });
}

#[test]
fn a_marker_or_a_release_directory_forged_by_another_process_gets_no_traffic_and_no_signal() {
    let Some(user) = TestUser::create("a marker forged by another user") else {
        return;
    };
    let site = Site::new();
    fs::set_permissions(site.root(), fs::Permissions::from_mode(0o755)).unwrap();
    site.deploy_ok("d-1");
    site.deploy_ok("d-2");
    let (previous, live) = (site.ports[0], site.ports[1]);
    // The previous version died; another user takes its port with the slot's marker in its
    // environment, working in the slot's own release directory.
    kill_recorded(&site, previous);
    let release = site.state().join(format!("releases/d-1-{previous}"));
    let marker = format!("{previous}:{}", site.state().display());
    let mut forged = fixture(previous, "forged", &[], |c| {
        user.apply(c);
        c.current_dir(&release).env("PORTSWAP_SLOT", &marker);
    });
    wait_listeners(previous, 1);
    let before = site.include_text();
    let traffic = site.traffic();
    site.hook("switch", &["--rollback"], None)
        .fails(4, "not by the app start launched");
    let out = site
        .hook("stop", &["--port", &previous.to_string()], None)
        .fails(4, "not portswap's app");
    assert!(
        out.last_line().contains(&forged.pid().to_string()),
        "{}",
        out.last_line()
    );
    traffic.assert_all("d-2");
    assert_eq!(site.include_text(), before, "nginx never pointed at it");
    assert!(
        forged.running(),
        "the other user's process was never signalled"
    );
    drop(forged);

    // A process of the app's own uid (root here) without the marker, working in the *other*
    // slot's release: not this slot's app either.
    let other_release = site.state().join(format!("releases/d-2-{live}"));
    let mut stray = fixture(previous, "stray", &[], |c| {
        c.current_dir(&other_release);
    });
    wait_listeners(previous, 1);
    site.hook("switch", &["--rollback"], None)
        .fails(4, "not by the app start launched");
    site.hook("stop", &["--port", &previous.to_string()], None)
        .fails(4, "not portswap's app");
    assert!(stray.running());
    assert_eq!(site.live_version().as_deref(), Some("d-2"));
    drop(stray);
    site.deploy_ok("d-3");
    assert_eq!(site.live_version().as_deref(), Some("d-3"));
}

#[test]
fn a_foreign_co_listener_with_so_reuseport_fails_health_and_switch() {
    let Some(user) = TestUser::create("a foreign SO_REUSEPORT co-listener") else {
        return;
    };
    let site = Site::with(Settings {
        app_user: Some(user.name.clone()),
        app_args: vec!["--reuseport".into()],
        ..Settings::default()
    });
    fs::set_permissions(site.root(), fs::Permissions::from_mode(0o755)).unwrap();
    site.deploy_ok("d-1");
    site.run_until("d-2", "start");
    let idle = site.ports[1];
    // Same uid as the app (the kernel requires it for SO_REUSEPORT), nothing of portswap's.
    let mut foreign = fixture(idle, "foreign", &["--reuseport"], |c| user.apply(c));
    wait_listeners(idle, 2);
    let before = site.include_text();
    let traffic = site.traffic();
    site.hook("health", &[], Some("d-2"))
        .fails(4, &format!("pid {}", foreign.pid()));
    site.hook("switch", &[], Some("d-2"))
        .fails(4, "not by the app start launched");
    traffic.assert_all("d-1");
    assert_eq!(site.include_text(), before);
    assert!(foreign.running());
    drop(foreign);
    wait_listeners(idle, 1);
    site.hook("health", &[], Some("d-2")).ok();
    site.hook("switch", &[], Some("d-2")).ok();
    assert_eq!(site.live_version().as_deref(), Some("d-2"));
}

/// Writes a record for `port` naming `pid` (start time `start_time`), as a stale record left
/// by an app that died long ago would.
fn plant_record(state: &Path, port: u16, pid: i32, start_time: u64) {
    let text = format!(
        "pid: {pid}\nstart_time: {start_time}\nport: {port}\nprofile: real2\ndeployment_id: d-0\n\
         command: [app]\nrelease_dir: {}/releases/d-0-{port}\nlog_file: /dev/null\n\
         started_at: 1\n",
        state.display()
    );
    fs::write(state.join(format!("slot-{port}.yml")), text).unwrap();
}

#[test]
fn stale_records_naming_a_reused_group_or_pid_0_signal_nothing() {
    let site = Site::new();
    site.deploy_ok("d-1");
    let idle = site.ports[1];
    // An unrelated pipeline of the same uid as the app: its leader exited, its group (id =
    // the leader's old pid, which the stale record names) lives on.
    let leader = Command::new("sh")
        .args(["-c", "sleep 300 >/dev/null 2>&1 & echo $!"])
        .process_group(0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let group = leader.id() as i32;
    let out = leader.wait_with_output().unwrap();
    let member: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let member_alive = || {
        Path::new(&format!("/proc/{member}")).exists() && {
            let stat = fs::read_to_string(format!("/proc/{member}/stat")).unwrap_or_default();
            !stat.contains(") Z ")
        }
    };
    assert!(member_alive());
    plant_record(&site.state(), idle, group, 4242);
    let out = site.hook("stop", &[], Some("d-2")).ok();
    assert!(
        out.last_line().contains("nothing runs"),
        "{}",
        out.last_line()
    );
    assert!(member_alive(), "the unrelated process was signalled");

    // A record naming pid 0: every process whose group reads as 0 (kernel threads, processes
    // whose group lies outside the pid namespace) would match. Nothing is signalled, at once.
    plant_record(&site.state(), idle, 0, 0);
    let started = Instant::now();
    let out = site.hook("stop", &[], Some("d-2")).ok();
    assert!(
        out.last_line().contains("nothing runs"),
        "{}",
        out.last_line()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stop took {:?}",
        started.elapsed()
    );
    assert!(out.stderr.contains("names pid 0"), "{}", out.stderr);
    site.deploy_ok("d-2");
    assert!(member_alive());
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(member),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[test]
fn a_log_dir_swapped_for_a_link_by_the_app_user_is_refused() {
    let Some(user) = TestUser::create("a symlinked log_dir") else {
        return;
    };
    let site = Site::with(Settings {
        app_user: Some(user.name.clone()),
        ..Settings::default()
    });
    fs::set_permissions(site.root(), fs::Permissions::from_mode(0o755)).unwrap();
    // The app user's own directory holds the logs (as under /home/ec2-user).
    let home = site.root().join("home");
    fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(user.uid), Some(user.gid)).unwrap();
    site.set_key(
        "app",
        "log_dir",
        &format!("{:?}", home.join("logs").display().to_string()),
    );
    site.deploy_ok("d-1");
    // It replaces its log directory with a link to a directory only root may write.
    let root_only = site.root().join("root-only");
    fs::create_dir(&root_only).unwrap();
    fs::set_permissions(&root_only, fs::Permissions::from_mode(0o700)).unwrap();
    fs::rename(home.join("logs"), home.join("old-logs")).unwrap();
    std::os::unix::fs::symlink(&root_only, home.join("logs")).unwrap();
    std::os::unix::fs::lchown(home.join("logs"), Some(user.uid), Some(user.gid)).unwrap();
    site.hook("stop", &[], Some("d-2")).ok();
    let out = site
        .hook("start", &[], Some("d-2"))
        .fails(2, "symbolic link in a directory others can change");
    assert!(out
        .last_line()
        .contains(&home.join("logs").display().to_string()));
    assert_eq!(
        fs::read_dir(&root_only).unwrap().count(),
        0,
        "nothing created through the link"
    );
    assert_eq!(site.live_version().as_deref(), Some("d-1"));
}

#[test]
fn env_keys_systemd_cannot_take_are_refused_naming_the_key_only() {
    let site = Site::new();
    for key in [
        "spring.datasource.password",
        "PS_KEY\\nLD_PRELOAD",
        "A B",
        "1ABC",
        "É",
    ] {
        site.set_key("app", "env", &format!("{{\"{key}\": hunter2-value}}"));
        for hook in ["stop", "start"] {
            let out = site.hook(hook, &[], Some("d-1")).fails(2, "app.env");
            assert!(
                !out.stderr.contains("hunter2"),
                "{key}: the value is shown: {}",
                out.stderr
            );
            // Shown escaped: a newline in the key splits no line.
            assert!(out.last_line().contains(key), "{key}: {}", out.last_line());
        }
    }
    assert!(
        site.recorded_pid(site.ports[0]).is_none(),
        "nothing started"
    );
    site.set_key("app", "env", "{_OK_1: v, Spring_Profile: w}");
    site.deploy_ok("d-1");
}

/// The environment of `pid` as `NAME=value` lines.
fn environ(pid: i32) -> Vec<String> {
    let bytes = fs::read(format!("/proc/{pid}/environ")).unwrap();
    bytes
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect()
}

#[test]
fn the_app_gets_a_clean_documented_environment_and_its_users_groups() {
    let Some(user) = TestUser::create("the app's environment and groups") else {
        return;
    };
    // A supplementary group of the app user (login, su and systemd's User= give it).
    let group = format!("{}-g", user.name);
    let added = Command::new("groupadd")
        .args(["--system", &group])
        .status()
        .unwrap();
    assert!(added.success());
    let joined = Command::new("usermod")
        .args(["-aG", &group, &user.name])
        .status()
        .unwrap();
    assert!(joined.success());
    let gid = nix::unistd::Group::from_name(&group)
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    let site = Site::with(Settings {
        app_user: Some(user.name.clone()),
        ..Settings::default()
    });
    fs::set_permissions(site.root(), fs::Permissions::from_mode(0o755)).unwrap();
    site.set_key("app", "env", "{APP_SETTING: yes}");
    for hook in ["stop", "start"] {
        site.hook_with(hook, &[], Some("d-1"), |c| {
            c.env("HOOK_ONLY_SECRET", "root-secret")
                .env("RUST_LOG", "info");
        })
        .ok();
    }
    let pid = site.recorded_pid(site.ports[0]).unwrap();
    let mut env = environ(pid);
    env.sort();
    let mut expected = vec![
        "APP_SETTING=yes".to_string(),
        format!(
            "HOME={}",
            nix::unistd::User::from_name(&user.name)
                .unwrap()
                .unwrap()
                .dir
                .display()
        ),
        format!("LOGNAME={}", user.name),
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        format!("PORTSWAP_SLOT={}:{}", site.ports[0], site.state().display()),
        format!("USER={}", user.name),
    ];
    expected.sort();
    assert_eq!(env, expected);
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert!(
        groups.split_whitespace().any(|g| g == gid.to_string()),
        "{groups}"
    );
    let _ = Command::new("gpasswd")
        .args(["-d", &user.name, &group])
        .status();
    let _ = Command::new("groupdel").arg(&group).status();
}
