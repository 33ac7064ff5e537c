//! The include and nginx never disagree silently (issue 8, items 2, 5, 6, 8): a switch cut
//! short is recorded and completed by a re-run, SIGINT/SIGHUP/SIGTERM inside the switch wait
//! for it and the verdict says how it ended, hung nginx commands are killed and named, a
//! reload that timed out after new workers started is undone in nginx too, and `switch`
//! allows a health probe as long as `health` does.

mod support;

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use portswap_testkit::hooks;
use support::{wait, Outcome, Settings, Site};

/// A site where `d-1` is live on the first slot and `d-2` is started and healthy.
fn ready_to_switch() -> Site {
    let site = Site::new();
    site.deploy_ok("d-1");
    site.run_until("d-2", "health");
    site
}

fn render(port: u16) -> String {
    format!("set $service_url http://127.0.0.1:{port};\n")
}

/// Starts `switch` for deployment `id` with its output piped.
fn spawn_switch(site: &Site, id: &str) -> Child {
    hooks::command("switch", &site.config_path())
        .env("DEPLOYMENT_ID", id)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn outcome(child: Child) -> Outcome {
    let output = child.wait_with_output().unwrap();
    Outcome {
        hook: "switch".into(),
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Processes whose command line is exactly `argv`.
fn processes_running(argv: &[&str]) -> Vec<i32> {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .collect()
}

/// The version nginx serves once it has settled, checked on several requests.
fn assert_nginx_serves(site: &Site, version: &str) {
    wait(Duration::from_secs(5), "nginx to serve the version", || {
        site.live_version().as_deref() == Some(version)
    });
    for _ in 0..20 {
        assert_eq!(site.live_version().as_deref(), Some(version));
    }
}

#[test]
fn switch_accepts_a_health_probe_as_slow_as_health_accepts() {
    // /health answers after 3 s: within the per-probe limit (5 s) that `health` allows.
    let site = Site::with(Settings {
        app_args: vec!["--health-delay-ms".into(), "3000".into()],
        health_timeout: "20s",
        ..Settings::default()
    });
    site.run_until("d-1", "health");
    let out = site.hook("switch", &[], Some("d-1")).ok();
    assert!(
        out.last_line().contains("all new requests now go to"),
        "{}",
        out.stderr
    );
    assert_nginx_serves(&site, "d-1");
}

#[test]
fn a_switch_killed_after_writing_the_include_blocks_stop_and_is_completed_by_a_rerun() {
    let site = ready_to_switch();
    let [a, b] = site.ports;
    // A slow config test holds the switch between the include write and the reload.
    site.set_key("nginx", "test_command", "[\"sleep\", \"2\"]");
    let mut child = spawn_switch(&site, "d-2");
    wait(
        Duration::from_secs(10),
        "the include names the new port",
        || site.include_text().as_deref() == Some(render(b).as_str()),
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // The include names d-2's port; nginx still serves d-1, and nothing says so but the intent.
    assert_eq!(site.live_version().as_deref(), Some("d-1"));
    assert!(site.state().join("switch-intent.yml").exists());

    // The next deployment's stop would take d-1's port for idle: refused, d-1 keeps serving.
    let traffic = site.traffic();
    site.hook("stop", &[], Some("d-3"))
        .fails(4, "was cut short");
    site.hook("start", &[], Some("d-3"))
        .fails(4, "re-run `switch`");
    traffic.assert_all("d-1");
    assert!(site.version_on(a).is_some(), "d-1 still runs");

    // CodeDeploy re-runs the deployment: its switch completes what was cut short.
    site.write_config();
    let out = site.hook("switch", &[], Some("d-2")).ok();
    assert!(out.last_line().contains("cut short"), "{}", out.last_line());
    assert_eq!(site.included_port(), Some(b));
    assert_nginx_serves(&site, "d-2");
    assert!(!site.state().join("switch-intent.yml").exists());
    // Now the switch is recorded complete: a re-run does nothing, and the next deployment runs.
    let out = site.hook("switch", &[], Some("d-2")).ok();
    assert!(
        out.last_line().contains("nothing to do"),
        "{}",
        out.last_line()
    );
    site.deploy_ok("d-3");
    assert_nginx_serves(&site, "d-3");
    site.assert_nothing_half_written();
}

#[test]
fn sigint_sighup_and_sigterm_inside_the_switch_wait_for_it_and_the_verdict_says_so() {
    let site = Site::new();
    site.deploy_ok("d-1");
    for (i, (signal, code)) in [
        (Signal::SIGINT, 130),
        (Signal::SIGHUP, 129),
        (Signal::SIGTERM, 143),
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("d-{}", i + 2);
        site.write_config();
        site.run_until(&id, "health");
        let target = site.ports[(i + 1) % 2];
        site.set_key("nginx", "test_command", "[\"sleep\", \"1\"]");
        let child = spawn_switch(&site, &id);
        wait(
            Duration::from_secs(10),
            "the include names the new port",
            || site.include_text().as_deref() == Some(render(target).as_str()),
        );
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        let out = outcome(child);
        assert_eq!(out.code, code, "{signal}: {}", out.stderr);
        let last = out.last_line();
        assert!(
            last.contains(&format!("stopped by {signal}"))
                && last.contains(&format!(
                    "the switch had completed: nginx sends new requests to port {target}"
                ))
                && !last.contains("not touched"),
            "{signal}: {last}"
        );
        assert_nginx_serves(&site, &id);
    }
    site.assert_nothing_half_written();
}

#[test]
fn a_hung_config_test_or_reload_command_is_killed_with_its_group_and_named() {
    let site = ready_to_switch();
    let before = site.include_text();
    site.set_key("nginx", "reload_timeout", "1s");
    // Each command leaves a child in its process group that outlives the command itself.
    let cases = [
        (
            "test_command",
            "nginx config test",
            ["sleep 30.11", "sleep 30.12"],
        ),
        (
            "reload_command",
            "nginx reload",
            ["sleep 30.21", "sleep 30.22"],
        ),
    ];
    for (key, what, [first, second]) in cases {
        let script = format!("{first} & exec {second}");
        site.set_key("nginx", key, &format!("[\"sh\", \"-c\", \"{script}\"]"));
        let traffic = site.traffic();
        let started = Instant::now();
        let out = site.hook("switch", &[], Some("d-2")).fails(1, "hung");
        let took = started.elapsed();
        traffic.assert_all("d-1");
        assert!(took < Duration::from_secs(8), "{key}: took {took:?}");
        assert!(
            out.last_line().contains(what) && out.last_line().contains(&script),
            "{key}: names the command: {}",
            out.last_line()
        );
        for sleeper in [first, second] {
            let argv: Vec<&str> = sleeper.split(' ').collect();
            wait(
                Duration::from_secs(2),
                "the command's group is gone",
                || processes_running(&argv).is_empty(),
            );
        }
        assert_eq!(site.include_text(), before, "{key}: include restored");
        site.assert_nothing_half_written();
        site.write_config();
        site.set_key("nginx", "reload_timeout", "1s");
    }
    site.write_config();
    site.hook("switch", &[], Some("d-2")).ok();
    assert_nginx_serves(&site, "d-2");
}

/// Resumes a stopped process on drop.
struct Stopped(i32);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

#[test]
fn a_reload_that_times_out_after_new_workers_started_is_undone_in_nginx_too() {
    let site = ready_to_switch();
    let before = site.include_text();
    site.set_key("nginx", "reload_timeout", "1s");
    // A stopped worker never takes up its shutdown: the reload starts new workers (which
    // read the new include) but never completes.
    let worker = site.nginx.worker_pids()[0];
    kill(Pid::from_raw(worker), Signal::SIGSTOP).unwrap();
    let stopped = Stopped(worker);
    let out = site
        .hook("switch", &[], Some("d-2"))
        .fails(1, "reload not complete");
    assert!(
        out.last_line()
            .contains("include restored; nginx reloaded with it"),
        "{}",
        out.last_line()
    );
    drop(stopped);
    wait(Duration::from_secs(10), "the stopped worker exits", || {
        !site.nginx.worker_pids().contains(&worker)
    });
    assert_eq!(site.include_text(), before);
    // nginx serves what the include says.
    assert_nginx_serves(&site, "d-1");
    site.write_config();
    site.hook("switch", &[], Some("d-2")).ok();
    assert_nginx_serves(&site, "d-2");
    site.assert_nothing_half_written();
}

#[test]
fn nothing_is_switched_when_the_intent_cannot_be_recorded_first() {
    // The intent must be written before the include: with switch-intent.yml unwritable
    // (a directory in its place), nothing is switched.
    let site = ready_to_switch();
    let before = site.include_text();
    fs::create_dir(site.state().join("switch-intent.yml")).unwrap();
    let traffic = site.traffic();
    site.hook("switch", &[], Some("d-2"))
        .fails(2, "switch-intent.yml is a directory");
    traffic.assert_all("d-1");
    assert_eq!(site.include_text(), before);
    fs::remove_dir(site.state().join("switch-intent.yml")).unwrap();
    site.hook("switch", &[], Some("d-2")).ok();
    assert_nginx_serves(&site, "d-2");
}

/// `switch` for `id` killed (SIGKILL) while its config test runs: the include names the
/// target, nginx was not reloaded, the intent is recorded. Leaves the config as it was.
fn cut_short_after_the_include(site: &Site, id: &str, target: u16) {
    site.set_key("nginx", "test_command", "[\"sleep\", \"2\"]");
    let mut child = spawn_switch(site, id);
    wait(
        Duration::from_secs(10),
        "the include names the new port",
        || site.include_text().as_deref() == Some(render(target).as_str()),
    );
    child.kill().unwrap();
    child.wait().unwrap();
    site.write_config();
    assert!(site.state().join("switch-intent.yml").exists());
}

#[test]
fn a_resumed_switch_whose_config_test_fails_puts_the_previous_include_back_and_keeps_the_intent() {
    let site = ready_to_switch();
    let [a, b] = site.ports;
    cut_short_after_the_include(&site, "d-2", b);
    // The re-run meets an operator's half-finished edit elsewhere: the config test fails.
    site.set_key(
        "nginx",
        "test_command",
        "[\"sh\", \"-c\", \"echo '[emerg] half-finished edit' >&2; exit 1\"]",
    );
    let traffic = site.traffic();
    let out = site
        .hook("switch", &[], Some("d-2"))
        .fails(1, "half-finished edit");
    assert!(
        out.last_line().contains("switch intent stays"),
        "{}",
        out.last_line()
    );
    // The include names what nginx served before the cut-short switch, not its target.
    assert_eq!(site.included_port(), Some(a), "{}", out.stderr);
    traffic.assert_all("d-1");
    assert!(site.state().join("switch-intent.yml").exists());
    // So the next deployment's stop cannot take d-1's port for the idle one.
    site.hook("stop", &[], Some("d-3"))
        .fails(4, "was cut short");
    assert_eq!(site.version_on(a).as_deref(), Some("d-1"));
    // Once the config is fixed, the re-run completes the switch.
    site.write_config();
    site.hook("switch", &[], Some("d-2")).ok();
    assert_nginx_serves(&site, "d-2");
    site.deploy_ok("d-3");
    assert_nginx_serves(&site, "d-3");
    site.assert_nothing_half_written();
}

#[test]
fn a_cut_short_switch_whose_target_died_goes_back_to_the_previous_version_without_force() {
    let site = ready_to_switch();
    let [a, b] = site.ports;
    cut_short_after_the_include(&site, "d-2", b);
    // The target crashes before the re-run.
    let pid = site.recorded_pid(b).unwrap();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    wait(Duration::from_secs(5), "the target is gone", || {
        site.version_on(b).is_none()
    });
    let out = site
        .hook("switch", &[], Some("d-2"))
        .fails(1, &format!("nginx is back on port {a}"));
    assert!(!out.last_line().contains("--force"), "{}", out.last_line());
    assert_eq!(site.included_port(), Some(a));
    assert_nginx_serves(&site, "d-1");
    assert!(!site.state().join("switch-intent.yml").exists());
    // Resolved: the next deployment runs.
    site.deploy_ok("d-3");
    assert_nginx_serves(&site, "d-3");
}

#[test]
fn a_repeated_deployment_id_is_a_new_deployment_not_a_switch_already_done() {
    // Agent 2.x names local deployments `local-<agent pid>`: the same id twice in a row.
    let site = Site::new();
    site.deploy_ok("d-1");
    site.deploy_ok("local-7");
    let first = site.included_port();
    let out = site.deploy("local-7").pop().unwrap().ok();
    assert!(
        !out.last_line().contains("nothing to do"),
        "{}",
        out.last_line()
    );
    assert_ne!(site.included_port(), first, "the second local-7 went live");
    assert_nginx_serves(&site, "local-7");
}

/// Runs `hook` and gives its outcome, or panics (killing it) when it is still running after
/// `limit`: a hook must never block on a file someone planted.
fn hook_within(site: &Site, name: &str, args: &[&str], limit: Duration) -> Outcome {
    let mut child = hooks::command(name, &site.config_path())
        .args(args)
        .env("DEPLOYMENT_ID", "d-9")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{name} {}` still running after {limit:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Outcome {
        hook: name.into(),
        ..outcome(child)
    }
}

#[test]
fn a_fifo_or_directory_at_the_include_or_a_record_is_refused_at_once() {
    let site = Site::new();
    site.deploy_ok("d-1");
    let [a, _] = site.ports;
    let include = site.include();
    let saved = fs::read(&include).unwrap();
    let record = site.state().join(format!("slot-{a}.yml"));
    let saved_record = fs::read(&record).unwrap();
    let fifo = |path: &std::path::Path| {
        fs::remove_file(path).unwrap();
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    };
    let limit = Duration::from_secs(5);
    fifo(&include);
    for (hook, args) in [
        ("switch", &["--status"][..]),
        ("stop", &[]),
        ("switch", &[]),
    ] {
        let out = hook_within(&site, hook, args, limit);
        assert_eq!(out.code, 2, "{hook} {args:?}: {}", out.stderr);
        assert!(out.last_line().contains("is a FIFO"), "{}", out.last_line());
        assert!(
            out.last_line().contains("fix: remove it"),
            "{}",
            out.last_line()
        );
    }
    fs::remove_file(&include).unwrap();
    fs::create_dir(&include).unwrap();
    let out = hook_within(&site, "switch", &["--status"], limit);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.last_line().contains("is a directory"),
        "{}",
        out.last_line()
    );
    fs::remove_dir(&include).unwrap();
    fs::write(&include, saved).unwrap();
    fifo(&record);
    let out = hook_within(&site, "stop", &[], limit);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.last_line().contains("is a FIFO"), "{}", out.last_line());
    fs::remove_file(&record).unwrap();
    fs::write(&record, saved_record).unwrap();
    assert_nginx_serves(&site, "d-1");
}

/// True when signal `number` is pending for the whole process `pid` (/proc's `ShdPnd:`).
fn signal_pending(pid: i32, number: i32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("ShdPnd:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask >> (number - 1) & 1 == 1)
}

/// A site whose nginx master is held inside a reload that read the include naming d-1's
/// port, with d-2 started and healthy on the idle slot, until [`Gate::open`].
struct Gate {
    site: Site,
    path: std::path::PathBuf,
    fifo: std::path::PathBuf,
}

impl Gate {
    /// nginx opens its log files once it has read the whole configuration; while a log file
    /// is a FIFO without a reader, the master sits inside its reload with the old include.
    fn hold() -> Gate {
        let site = Site::with(Settings {
            // The gate would hold `nginx -t` too: no config test.
            test_command: Some(vec!["true".into()]),
            ..Settings::default()
        });
        site.deploy_ok("d-1");
        site.run_until("d-2", "health");
        let path = site.root().join("gate.log");
        fs::write(&path, "").unwrap();
        let conf = site.nginx.conf_path();
        let text = fs::read_to_string(conf).unwrap();
        let include_line = text
            .lines()
            .find(|l| l.trim_start().starts_with("include ") && l.contains("service-url"))
            .unwrap()
            .to_string();
        let gated = text.replace(
            &include_line,
            &format!(
                "{include_line}\n        error_log \"{}\" emerg;",
                path.display()
            ),
        );
        fs::write(conf, gated).unwrap();
        site.nginx.reload_and_wait(Duration::from_secs(5)).unwrap();
        let fifo = site.root().join("gate.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        fs::remove_file(&path).unwrap();
        fs::hard_link(&fifo, &path).unwrap();
        let master = site.nginx.pid();
        site.nginx.reload();
        wait(
            Duration::from_secs(10),
            "the master to wait at the gate",
            || {
                fs::read_to_string(format!("/proc/{master}/wchan"))
                    .is_ok_and(|w| w == "wait_for_partner")
            },
        );
        Gate { site, path, fifo }
    }

    /// Opens the gate: the next open finds a file, and the reader returned lets the master
    /// finish the reload it is in (with the old include) while it is held.
    fn open(&self) -> fs::File {
        fs::remove_file(&self.path).unwrap();
        fs::write(&self.path, "").unwrap();
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&self.fifo)
            .unwrap()
    }
}

#[test]
fn a_reload_already_under_way_is_not_taken_for_the_switchs_own() {
    // Issue (switch truth): a reload another process started (certbot's hook, an operator's
    // `nginx -s reload`, a killed switch's) reads the include before the switch writes it;
    // its workers appeared after the switch's snapshot and passed for the switch's own, so
    // the switch said OK while nginx served the old port until the master, which blocks
    // SIGHUP inside a reload, got to the switch's own signal.
    let gate = Gate::hold();
    let site = &gate.site;
    let master = site.nginx.pid();
    let target = site.ports[1];
    let mut child = hooks::command("switch", &site.config_path())
        .env("DEPLOYMENT_ID", "d-2")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // Until the switch has either signalled the busy master (SIGHUP pending) or said that
    // it waits for that reload to end.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut waits = false;
    while !waits && !signal_pending(master, Signal::SIGHUP as i32) {
        assert!(
            Instant::now() < deadline,
            "the switch neither signalled nor waited"
        );
        if let Ok(line) = seen.recv_timeout(Duration::from_millis(5)) {
            waits = line.contains("inside another reload");
        }
    }
    let gate_reader = gate.open();
    let status = child.wait().unwrap();
    let served: Vec<Option<String>> = (0..20).map(|_| site.live_version()).collect();
    drop(gate_reader);
    let stderr = reader.join().unwrap();
    assert!(status.success(), "{stderr}");
    assert_eq!(site.included_port(), Some(target));
    assert!(
        served.iter().all(|v| v.as_deref() == Some("d-2")),
        "nginx served {served:?} right after: {stderr}"
    );
    assert!(waits, "{stderr}");
}

#[test]
fn a_reload_that_does_not_end_in_time_leaves_the_include_restored_and_the_intent() {
    // The other reload outlasts nginx.reload_timeout: nothing proves which include it read,
    // so the switch sends no reload, puts the include back, keeps its intent (stop refuses)
    // and fails; once nginx has settled the re-run completes it.
    let gate = Gate::hold();
    let site = &gate.site;
    let [live, target] = site.ports;
    site.set_key("nginx", "reload_timeout", "1s");
    let out = site.hook("switch", &[], Some("d-2"));
    let out = out.fails(1, "was still inside another reload after 1s");
    assert_eq!(site.include_text(), Some(render(live)), "{}", out.stderr);
    assert!(site.state().join("switch-intent.yml").exists());
    site.hook("stop", &[], Some("d-3")).fails(4, "cut short");
    let _reader = gate.open();
    site.hook("switch", &[], Some("d-2")).ok();
    assert_eq!(site.included_port(), Some(target));
    assert_nginx_serves(site, "d-2");
}
