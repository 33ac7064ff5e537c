//! First contact (issue 8): a host set up the way the book sets it up is taken over, and
//! portswap never signals what is not its own, stops all of what is, and says what happened.
//! Real nginx, real processes, real signals.

mod support;

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use portswap_testkit::{bins, net, tools};
use support::{wait, Guarded, Site};

/// Starts `argv` the way `nohup ... &` from a legacy script does: cwd `/`, no output, its own
/// process group, no portswap marker; waits until it listens on `port`.
fn legacy_process(argv: &[String], port: u16) -> Guarded {
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir("/")
        .env_remove("PORTSWAP_SLOT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", argv[0]));
    let guarded = Guarded(child);
    wait(Duration::from_secs(10), "the process listens", || {
        net::port_is_listening(port)
    });
    guarded
}

/// The fixture app from the build directory (not from a release) on `port`.
fn legacy_app(port: u16, version: &str, profile: &str) -> Guarded {
    let argv = [
        bins::bin("fixture-app").display().to_string(),
        "--port".into(),
        port.to_string(),
        "--version".into(),
        version.into(),
        "--profile".into(),
        profile.into(),
    ];
    legacy_process(&argv, port)
}

/// Points the site's nginx at `port` the way the book's first include does, and reloads it.
fn book_include(site: &Site, port: u16) {
    fs::write(
        site.include(),
        format!("set $service_url http://127.0.0.1:{port};\n"),
    )
    .unwrap();
    site.nginx.reload_and_wait(Duration::from_secs(5)).unwrap();
}

fn pids_with_marker(site: &Site, port: u16) -> Vec<i32> {
    let marker = format!("PORTSWAP_SLOT={port}:{}", site.state().display());
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
        })
        .collect()
}

#[test]
fn a_book_style_include_naming_an_unmanaged_port_is_taken_over_and_that_app_never_signalled() {
    let site = Site::new();
    let [a, b] = site.ports;
    let old_port = net::free_port();
    let mut old = legacy_app(old_port, "legacy", "real");
    book_include(&site, old_port);
    assert_eq!(site.live_version().as_deref(), Some("legacy"));

    let status = site.hook("switch", &["--status"], None).ok();
    assert!(
        status.stdout.contains(&format!("live port: {old_port}"))
            && status.stdout.contains("not a slot"),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.contains(&format!("slot {a}")) && !status.stdout.contains(" live "),
        "both slots idle: {}",
        status.stdout
    );

    let traffic = site.traffic();
    let outcomes = site.deploy("d-1");
    let seen = traffic.finish();
    let outcomes: Vec<_> = outcomes.into_iter().map(|o| o.ok()).collect();
    assert_eq!(outcomes.len(), 4);
    assert!(
        outcomes[0].stderr.contains(&format!(
            "traffic goes to port {old_port}, which is not a slot"
        )),
        "stop says what it found: {}",
        outcomes[0].stderr
    );
    let switch = outcomes[3].last_line();
    assert!(
        switch.contains(&format!("all new requests now go to port {a}"))
            && switch.contains(&format!("took over from port {old_port}")),
        "{switch}"
    );
    assert!(
        seen.iter().all(|v| v == "legacy" || v == "d-1"),
        "every request answered: {seen:?}"
    );
    assert_eq!(
        site.included_port(),
        Some(a),
        "the first slot is used first"
    );
    assert_eq!(site.live_version().as_deref(), Some("d-1"));
    assert!(old.running(), "the unmanaged app was never signalled");
    assert_eq!(site.version_on(old_port).as_deref(), Some("legacy"));

    let status = site.hook("switch", &["--status"], None).ok();
    assert!(
        status.stdout.contains(&format!(
            "last switch: {old_port} (not managed, taken over) -> {a}"
        )),
        "{}",
        status.stdout
    );
    // No slot to roll back to: said, nothing changed.
    let out = site
        .hook("switch", &["--rollback"], None)
        .fails(4, "does not manage");
    assert!(
        out.last_line()
            .contains(&format!("set $service_url http://127.0.0.1:{old_port};")),
        "names the line that goes back: {}",
        out.last_line()
    );
    assert_eq!(site.included_port(), Some(a));

    // The next deployment goes the other way, as always.
    site.deploy_ok("d-2");
    assert_eq!(site.included_port(), Some(b));
    assert_eq!(site.live_version().as_deref(), Some("d-2"));
    assert!(old.running(), "the unmanaged app was never signalled");
    site.assert_nothing_half_written();
}

#[test]
fn an_unrelated_python_http_server_on_the_idle_port_is_refused_by_a_plain_stop() {
    if !tools::need("an unrelated python3 -m http.server", &[&tools::PYTHON3]) {
        return;
    }
    let site = Site::new();
    let [_, b] = site.ports;
    // The app itself is `python3 -m http.server`: the interpreter proves nothing.
    site.set_key(
        "app",
        "command",
        r#"["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]"#,
    );
    site.set_key("app", "artifacts", "[]");
    site.set_key("health", "path", "\"/\"");
    site.deploy_ok("d-1");
    let argv: Vec<String> = ["python3", "-m", "http.server", &b.to_string()]
        .iter()
        .map(|s| s.to_string())
        .chain(["--bind".into(), "127.0.0.1".into()])
        .collect();
    let mut unrelated = legacy_process(&argv, b);
    let pid = unrelated.pid().to_string();

    let out = site
        .hook("stop", &[], Some("d-2"))
        .fails(4, "not portswap's app");
    assert!(
        out.last_line().contains(&pid) && out.last_line().contains("http.server"),
        "{}",
        out.last_line()
    );
    site.hook("start", &[], Some("d-2"))
        .fails(4, "not portswap's app");
    assert!(unrelated.running(), "never signalled without --force");

    site.hook("stop", &["--force"], Some("d-2")).ok();
    wait(Duration::from_secs(5), "the forced stop", || {
        !unrelated.running()
    });
    site.deploy_ok("d-2");
    assert_eq!(site.included_port(), Some(b));
}

#[test]
fn health_and_switch_refuse_an_answer_that_is_not_from_the_app_start_launched() {
    let site = Site::new();
    site.deploy_ok("d-1");
    let [_, b] = site.ports;
    let mut foreign = legacy_app(b, "foreign", "real2");
    let include = site.include_text();
    let traffic = site.traffic();
    let out = site
        .hook("health", &[], Some("d-2"))
        .fails(4, "not from the app start launched");
    assert!(
        out.last_line().contains(&foreign.pid().to_string()),
        "{}",
        out.last_line()
    );
    let out = site
        .hook("switch", &[], Some("d-2"))
        .fails(4, "refusing to switch");
    traffic.assert_all("d-1");
    assert!(
        out.last_line().contains("nginx unchanged"),
        "{}",
        out.last_line()
    );
    assert_eq!(site.include_text(), include);
    assert!(foreign.running(), "never signalled");
    drop(foreign);
    site.deploy_ok("d-2");
}

/// Runs the app through `revision/<name>`, a shell script (`text`) staged with it:
/// `app.command` becomes `bash {release_dir}/<name> <fixture app> <fixture_args>`.
fn through_script(site: &Site, name: &str, text: &str, fixture_args: &[&str]) {
    fs::write(site.root().join("revision").join(name), text).unwrap();
    let mut command = vec!["bash".to_string(), format!("{{release_dir}}/{name}")];
    command.extend(portswap_testkit::hooks::fixture_command(
        "{deployment_id}",
        fixture_args,
    ));
    site.set_key(
        "app",
        "command",
        &portswap_testkit::hooks::yaml_list(&command),
    );
    site.set_key(
        "app",
        "artifacts",
        &format!(r#"["revision/fixture-app", "revision/{name}"]"#),
    );
}

#[test]
fn a_wrapper_that_does_not_exec_is_stopped_whole_and_sigkill_is_really_sent() {
    let mut site = Site::new();
    let [a, _] = site.ports;
    // `bash run.sh APP...` keeps bash as the parent of the app (no exec); the app ignores
    // SIGTERM, so killing the shell alone would leave it holding the port.
    site.set(|s| s.grace = "300ms");
    through_script(
        &site,
        "run.sh",
        "#!/bin/bash\n\"$@\"\necho \"wrapper: the app exited with $?\"\n",
        &["--ignore-sigterm"],
    );
    site.deploy_ok("d-1");
    site.deploy_ok("d-2");
    let app_pids = pids_with_marker(&site, a);
    assert_eq!(app_pids.len(), 2, "the wrapper and its child: {app_pids:?}");

    let traffic = site.traffic();
    let out = site.hook("stop", &[], Some("d-3")).ok();
    traffic.assert_all("d-2");
    let verdict = out.last_line();
    assert!(
        verdict.contains("and 1 other process of the app")
            && verdict.contains("still running 300ms after SIGTERM, sent SIGKILL to 1"),
        "{verdict}"
    );
    assert_eq!(pids_with_marker(&site, a), Vec::<i32>::new());
    assert!(!net::port_is_listening(a), "the port is free");

    // The next deployment finds nothing left over and succeeds.
    site.deploy_ok("d-3");
    assert_eq!(site.included_port(), Some(a));

    // Nothing listens yet (the app is still starting): the wrapper is what was recorded,
    // and killing it alone would leave its child behind with nothing to show for it.
    let [_, b] = site.ports;
    let mut command = vec!["bash".to_string(), "{release_dir}/run.sh".to_string()];
    command.extend(portswap_testkit::hooks::fixture_command(
        "{deployment_id}",
        &["--ignore-sigterm", "--never-bind"],
    ));
    site.set_key(
        "app",
        "command",
        &portswap_testkit::hooks::yaml_list(&command),
    );
    site.hook("stop", &[], Some("d-4")).ok();
    site.hook("start", &[], Some("d-4")).ok();
    assert_eq!(pids_with_marker(&site, b).len(), 2);
    let out = site.hook("stop", &[], Some("d-4")).ok();
    assert!(
        out.last_line()
            .contains("still running 300ms after SIGTERM, sent SIGKILL to 1"),
        "{}",
        out.last_line()
    );
    assert_eq!(
        pids_with_marker(&site, b),
        Vec::<i32>::new(),
        "the wrapper's child is stopped too"
    );
}

#[test]
fn an_app_that_daemonizes_fails_start_and_leaves_nothing_running() {
    let site = Site::new();
    site.deploy_ok("d-1");
    let [_, b] = site.ports;
    // The parent exits 0 at once; its child, in a session of its own, keeps the port.
    let good = fs::read_to_string(site.config_path()).unwrap();
    through_script(
        &site,
        "daemon.sh",
        "#!/bin/bash\nsetsid \"$@\" </dev/null >/dev/null 2>&1 &\nexit 0\n",
        &[],
    );
    site.hook("stop", &[], Some("d-2")).ok();
    let traffic = site.traffic();
    let out = site
        .hook("start", &[], Some("d-2"))
        .fails(1, "exited at once");
    traffic.assert_all("d-1");
    let verdict = out.last_line();
    assert!(
        verdict.contains("left pid") && verdict.contains("run it in the foreground"),
        "{verdict}"
    );
    assert!(verdict.contains("stopped pid"), "cleaned up: {verdict}");
    assert_eq!(pids_with_marker(&site, b), Vec::<i32>::new());
    assert!(!net::port_is_listening(b), "nothing keeps the port");
    assert!(
        !site.state().join(format!("releases/d-2-{b}")).exists(),
        "the failed start's release is removed"
    );

    fs::write(site.config_path(), good).unwrap();
    site.deploy_ok("d-3");
    assert_eq!(site.included_port(), Some(b));
}

#[test]
fn a_failed_start_shows_only_what_its_own_app_wrote_and_removes_its_release() {
    let mut site = Site::new();
    site.deploy_ok("d-1");
    site.deploy_ok("d-2");
    let [a, _] = site.ports;
    let log = site.state().join(format!("logs/app-{a}.log"));
    assert!(
        fs::read_to_string(&log)
            .unwrap()
            .contains("fixture-app d-1"),
        "the previous app wrote to the same log"
    );
    // An app that exits at once without a word.
    site.set_key("app", "command", r#"["false"]"#);
    let out = site.deploy("d-3").into_iter().last().unwrap();
    let out = out.fails(1, "exited at once");
    assert!(
        out.last_line().contains("it wrote nothing to its log"),
        "{}",
        out.last_line()
    );
    assert!(
        !out.stderr.contains("fixture-app d-1"),
        "the previous app's lines are not this start's: {}",
        out.stderr
    );
    assert!(!site.state().join(format!("releases/d-3-{a}")).exists());

    // With output of its own, exactly that is shown.
    site.set(|s| s.app_args.push("--fail-start".into()));
    let out = site
        .hook("start", &[], Some("d-4"))
        .fails(1, "exited at once");
    assert!(
        out.last_line()
            .contains("last log line: fixture-app: failed to start"),
        "{}",
        out.last_line()
    );
    assert!(!out.stderr.contains("fixture-app d-1"), "{}", out.stderr);
    assert!(!site.state().join(format!("releases/d-4-{a}")).exists());

    site.set(|s| s.app_args.clear());
    site.deploy_ok("d-5");
    assert_eq!(site.live_version().as_deref(), Some("d-5"));
}

#[test]
fn start_checks_the_port_is_still_free_right_before_the_launch() {
    let site = Site::new();
    site.deploy_ok("d-1");
    let [_, b] = site.ports;
    // Many artifacts make staging take a while; a process takes the port meanwhile.
    let many = site.root().join("revision/many");
    fs::create_dir_all(&many).unwrap();
    for i in 0..4000 {
        fs::write(many.join(format!("part-{i}.txt")), "x").unwrap();
    }
    site.set_key(
        "app",
        "artifacts",
        r#"["revision/fixture-app", "revision/many/*.txt"]"#,
    );
    site.hook("stop", &[], Some("d-2")).ok();
    // Staged under a temporary name, renamed once complete.
    let staging = site.state().join(format!("releases/.staging-d-2-{b}"));
    let release = site.state().join(format!("releases/d-2-{b}"));
    let taker = std::thread::spawn(move || {
        wait(Duration::from_secs(30), "staging begins", || {
            staging.exists() || release.exists()
        });
        std::net::TcpListener::bind(("127.0.0.1", b)).unwrap()
    });
    let out = site
        .hook("start", &[], Some("d-2"))
        .fails(4, "no longer free right before the launch");
    let listener = taker.join().unwrap();
    assert!(
        out.last_line().contains("nothing was started"),
        "{}",
        out.last_line()
    );
    assert_eq!(pids_with_marker(&site, b), Vec::<i32>::new());
    assert!(!site.state().join(format!("releases/d-2-{b}")).exists());
    drop(listener);
    site.deploy_ok("d-2");
}

/// Issue 17 item 3: a portswap app of another state directory (another configuration on the
/// host, or deployments made with a relative `state.dir`, each resolved inside its own
/// archive) is not this configuration's, and `stop` says whose it is instead of calling it
/// "not portswap's app". It is never signalled.
#[test]
fn stop_names_the_state_directory_of_a_portswap_app_of_another_configuration() {
    let site = Site::new();
    let [a, _] = site.ports;
    site.deploy_ok("d-1");
    site.deploy_ok("d-2");
    let before = site.version_on(a);
    assert_eq!(before.as_deref(), Some("d-1"));
    let other = site.root().join("other-state");
    site.set_key(
        "state",
        "dir",
        &format!("{:?}", other.display().to_string()),
    );
    let out = site
        .hook("stop", &[], Some("d-3"))
        .fails(4, "of this state.dir");
    let expected = format!(
        "it is portswap's app of another state directory, {}",
        site.state().display()
    );
    assert!(out.last_line().contains(&expected), "{}", out.last_line());
    assert_eq!(site.version_on(a), before, "never signalled");
}
