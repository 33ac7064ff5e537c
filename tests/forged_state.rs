//! Files, paths and records a local user can reach (issue 14, second part): a state directory
//! others can write, a configuration swapped between check and read, a release directory a
//! running app uses, a copy cut short by SIGTERM, a stale nginx pid file naming an impostor,
//! an include carrying more than portswap writes.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portswap_testkit::hooks;
use support::{Site, TestUser};

/// What is changed, how, and how it is undone.
type Case<'a> = (&'static str, Box<dyn Fn() + 'a>, Box<dyn Fn() + 'a>);

#[test]
fn a_state_directory_others_can_change_is_refused_before_anything_is_believed() {
    let Some(user) = TestUser::create("a state directory others can change") else {
        return;
    };
    let site = Site::new();
    site.deploy_ok("d-1");
    let state = site.state();
    let releases = state.join("releases");
    let cases: Vec<Case> = vec![
        (
            "world-writable state dir",
            Box::new(|| fs::set_permissions(&state, fs::Permissions::from_mode(0o1777)).unwrap()),
            Box::new(|| fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap()),
        ),
        (
            "state dir owned by the app user",
            Box::new(|| std::os::unix::fs::chown(&state, Some(user.uid), None).unwrap()),
            Box::new(|| std::os::unix::fs::chown(&state, Some(0), None).unwrap()),
        ),
        (
            "group-writable releases",
            Box::new(|| fs::set_permissions(&releases, fs::Permissions::from_mode(0o775)).unwrap()),
            Box::new(|| fs::set_permissions(&releases, fs::Permissions::from_mode(0o755)).unwrap()),
        ),
        (
            "releases replaced by a link",
            Box::new(|| {
                fs::rename(&releases, state.join("real-releases")).unwrap();
                std::os::unix::fs::symlink(site.root().join("elsewhere"), &releases).unwrap();
            }),
            Box::new(|| {
                fs::remove_file(&releases).unwrap();
                fs::rename(state.join("real-releases"), &releases).unwrap();
            }),
        ),
    ];
    let elsewhere = site.root().join("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    fs::create_dir(elsewhere.join("d-0-1")).unwrap();
    // A forged record naming a process of root's: `stop` must never get to believe it.
    let mut root_process = Command::new("sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .unwrap();
    let forged = format!(
        "pid: {}\nstart_time: {}\nport: {}\nprofile: real2\ndeployment_id: x\ncommand: [x]\n\
         release_dir: /x\nlog_file: /dev/null\nstarted_at: 1\n",
        root_process.id(),
        portswap::procfs::start_time(root_process.id() as i32).unwrap(),
        site.ports[1]
    );
    fs::write(state.join(format!("slot-{}.yml", site.ports[1])), forged).unwrap();
    for (what, set_up, undo) in &cases {
        set_up();
        for hook in ["stop", "start", "health", "switch"] {
            let out = site.hook(hook, &[], Some("d-2")).fails(2, "chmod go-w");
            assert!(
                out.last_line().contains(&state.display().to_string()),
                "{what}: {}",
                out.last_line()
            );
        }
        undo();
    }
    assert!(
        root_process.try_wait().unwrap().is_none(),
        "root's process was signalled"
    );
    assert!(elsewhere.join("d-0-1").exists(), "pruned through a link");
    let _ = root_process.kill();
    let _ = root_process.wait();
    fs::remove_file(state.join(format!("slot-{}.yml", site.ports[1]))).unwrap();
    site.deploy_ok("d-2");
}

#[test]
fn a_configuration_swapped_between_check_and_read_is_never_used() {
    let Some(user) = TestUser::create("configuration swapped between check and read") else {
        return;
    };
    let site = Site::new();
    // The directory holding portswap.yml is the other user's to rename in: the good file
    // (root's) and its own (pointing the state elsewhere) are swapped as fast as it can.
    let dir = site.root().join("conf");
    fs::create_dir(&dir).unwrap();
    let good = dir.join("portswap.yml");
    let text = fs::read_to_string(site.config_path())
        .unwrap()
        .replace("dir: state", &format!("dir: {}", site.state().display()));
    fs::write(&good, &text).unwrap();
    let evil_state = site.root().join("evil-state");
    let evil = dir.join("evil.yml");
    fs::write(
        &evil,
        text.replace(
            &site.state().display().to_string(),
            &evil_state.display().to_string(),
        ),
    )
    .unwrap();
    std::os::unix::fs::chown(&evil, Some(user.uid), Some(user.gid)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, good, evil, spare) = (stop.clone(), good.clone(), evil.clone(), dir.join(".x"));
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let _ = fs::rename(&good, &spare);
                let _ = fs::rename(&evil, &good);
                let _ = fs::rename(&spare, &evil);
                swaps += 1;
            }
            swaps
        })
    };
    let mut outcomes = [0usize; 2];
    for _ in 0..150 {
        let out = site.hook_with("stop", &[], Some("d-1"), |c| {
            c.env("PORTSWAP_CONFIG", &good);
        });
        outcomes[usize::from(out.code != 0)] += 1;
        if evil_state.exists() {
            break;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let swaps = swapper.join().unwrap();
    println!("{outcomes:?} (ok, refused) against {swaps} swaps");
    assert!(
        !evil_state.exists(),
        "a configuration owned by uid {} was used",
        user.uid
    );
}

#[test]
fn a_release_directory_a_running_app_uses_is_never_pruned_even_without_its_record() {
    let mut site = Site::new();
    let keep = |site: &Site| site.set_key("app", "keep_releases", "2");
    keep(&site);
    site.deploy_ok("d-1");
    let live = site.ports[0];
    // A version that never got healthy leaves its release; then the live slot's record is lost.
    site.set(|s| s.app_args = vec!["--unhealthy".into()]);
    keep(&site);
    site.run_until("d-2", "start");
    site.set(|s| s.app_args = Vec::new());
    keep(&site);
    let pid = site.recorded_pid(live).unwrap();
    fs::remove_file(site.state().join(format!("slot-{live}.yml"))).unwrap();
    site.hook("stop", &[], Some("d-3")).ok();
    site.hook("start", &[], Some("d-3")).ok();
    let release = site.state().join(format!("releases/d-1-{live}"));
    assert!(release.is_dir(), "the live app's release was pruned");
    let cwd = fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert!(
        !cwd.to_string_lossy().ends_with("(deleted)"),
        "{}",
        cwd.display()
    );
    assert_eq!(site.live_version().as_deref(), Some("d-1"));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[test]
fn sigterm_during_the_copy_of_a_large_artifact_leaves_no_partial_release() {
    let site = Site::new();
    site.deploy_ok("d-1");
    // 256 MiB of data (not sparse): copying it takes a while.
    let big = site.root().join("revision/big.bin");
    let mut file = fs::File::create(&big).unwrap();
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..256 {
        std::io::Write::write_all(&mut file, &chunk).unwrap();
    }
    drop(file);
    site.set_key(
        "app",
        "artifacts",
        &format!(
            "[\"revision/fixture-app\", {:?}]",
            big.display().to_string()
        ),
    );
    site.hook("stop", &[], Some("d-2")).ok();
    let releases = site.state().join("releases");
    let mut start = hooks::command("start", &site.config_path());
    let child = start
        .env("DEPLOYMENT_ID", "d-2")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let copying = || {
        fs::read_dir(&releases)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("d-2"))
    };
    support::wait(Duration::from_secs(10), "the copy begins", copying);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    let left: Vec<String> = fs::read_dir(&releases)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("d-2"))
        .collect();
    assert_eq!(left, Vec::<String>::new(), "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .unwrap()
            .contains("partial release was removed"),
        "{stderr}"
    );
    assert!(
        site.recorded_pid(site.ports[1]).is_none(),
        "nothing started"
    );
    site.hook("start", &[], Some("d-2")).ok();
    let staged = releases.join(format!("d-2-{}/big.bin", site.ports[1]));
    assert_eq!(fs::metadata(staged).unwrap().len(), 256 << 20);
    assert_eq!(site.live_version().as_deref(), Some("d-1"));
}

#[test]
fn a_stale_nginx_pid_file_naming_an_impostor_gets_no_sighup() {
    let site = Site::new();
    site.deploy_ok("d-1");
    site.run_until("d-2", "health");
    // A process whose command line merely says it is an nginx master (argv[0]), not nginx.
    let mut impostor = Command::new("sleep")
        .arg0("nginx: master process /usr/sbin/nginx")
        .arg("300")
        .spawn()
        .unwrap();
    let pid = impostor.id() as i32;
    support::wait(Duration::from_secs(5), "the impostor's title", || {
        portswap::procfs::cmdline(pid)
            .join(" ")
            .contains("nginx: master")
    });
    let pid_file = site.root().join("stale.pid");
    fs::write(&pid_file, format!("{pid}\n")).unwrap();
    site.set_key(
        "nginx",
        "pid_file",
        &format!("{:?}", pid_file.display().to_string()),
    );
    let out = site
        .hook("switch", &[], Some("d-2"))
        .fails(1, "stale pid file");
    assert!(out.last_line().contains("not nginx"), "{}", out.last_line());
    assert!(
        impostor.try_wait().unwrap().is_none(),
        "the impostor got SIGHUP"
    );
    assert_eq!(site.live_version().as_deref(), Some("d-1"));
    let _ = impostor.kill();
    let _ = impostor.wait();
}

#[test]
fn an_include_carrying_more_than_portswap_writes_is_refused() {
    let site = Site::new();
    site.deploy_ok("d-1");
    site.run_until("d-2", "health");
    let include = site.include();
    let planted = site.root().join("planted-by-nginx");
    let text = format!(
        "{}access_log {};\n",
        fs::read_to_string(&include).unwrap(),
        planted.display()
    );
    fs::write(&include, &text).unwrap();
    for hook in ["stop", "switch"] {
        site.hook(hook, &[], Some("d-2"))
            .fails(2, "does not match the template");
    }
    assert_eq!(fs::read_to_string(&include).unwrap(), text);
    assert!(!Path::new(&planted).exists(), "nginx was reloaded with it");
}
