//! The watch after a switch (issue 19): real nginx, real fixture apps that start failing
//! after a while, real signals. Each failure kind sends traffic back to the previous
//! version; SIGTERM during the watch leaves a consistent host; with the previous version
//! gone too, traffic stays on the new one and the hook says so.

mod support;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use portswap_testkit::hooks;
use portswap_testkit::supervised::SupervisedSite;
use portswap_testkit::systemd::refused;
use portswap_testkit::{net, netns};
use support::{wait, Outcome, Settings, Site};

/// The fixture's failures begin this long after it starts: after `start` and `health`
/// have passed, while the watch runs.
const FAILS_AFTER_MS: &str = "2500";

const WATCH: &str = "watch:\n  duration: 20s\n  interval: 100ms\n";

/// A site where `good` is live and the watch is on for the next deployment, whose app runs
/// with `bad_args`.
fn good_then(bad_args: &[&str], watch: &str, nginx_extra: String) -> Site {
    good_then_by(None, bad_args, watch, nginx_extra)
}

/// [`good_then`] with `switch.by` set.
fn good_then_by(
    by: Option<&'static str>,
    bad_args: &[&str],
    watch: &str,
    nginx_extra: String,
) -> Site {
    let settings = Settings {
        switch_by: by,
        ..Settings::default()
    };
    let mut site = Site::with_nginx(settings, |_| nginx_extra);
    site.deploy_ok("good");
    site.set(|s| {
        s.app_args = bad_args.iter().map(|a| a.to_string()).collect();
        s.extra = watch.to_string();
    });
    site
}

/// `switch` running in the background, its stderr collected as it comes.
struct Running {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Running {
    fn switch(site: &Site, deployment: &str) -> Running {
        let mut command = hooks::command("switch", &site.config_path());
        command
            .env("DEPLOYMENT_ID", deployment)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = command.spawn().expect("spawn switch");
        let mut pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Running {
            child,
            stderr,
            reader,
        }
    }

    fn said(&self, needle: &str) -> bool {
        self.stderr.lock().unwrap().contains(needle)
    }

    fn signal(&self, signal: Signal) {
        killpg(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    fn finish(mut self) -> Outcome {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "switch still runs after 30 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        self.reader.join().unwrap();
        let stderr = self.stderr.lock().unwrap().clone();
        Outcome {
            hook: "switch".into(),
            code: status.code().unwrap_or(-1),
            stdout: String::new(),
            stderr,
        }
    }
}

/// stop, start and health of `id`, which must pass.
fn up_to_switch(site: &Site, id: &str) {
    for hook in ["stop", "start", "health"] {
        site.hook(hook, &[], Some(id)).ok();
    }
}

/// What every rollback leaves: `good` live, the failed version still answering on its
/// slot, `--status` and `history.log` saying why, and a re-run of the failed deployment's
/// switch refused.
fn assert_rolled_back(site: &mut Site, outcome: Outcome, cause: &str) {
    let verdict = outcome.last_line().to_string();
    println!("{verdict}");
    let outcome = outcome.fails(1, "failed the watch");
    for needle in [
        cause,
        "after the switch",
        &format!(
            "traffic is back on the previous version, port {}",
            site.ports[0]
        ),
        "keeps running",
    ] {
        assert!(verdict.contains(needle), "{needle}: {verdict}");
    }
    drop(outcome);
    assert_eq!(site.live_version().as_deref(), Some("good"));
    if site.settings.switch_by.is_none() {
        assert_eq!(site.included_port(), Some(site.ports[0]));
    }
    assert_eq!(
        site.version_on(site.ports[1]).as_deref(),
        Some("bad"),
        "the failed version keeps running"
    );
    let status = site.hook("switch", &["--status"], None).ok().stdout;
    assert!(status.contains("rolled back by the watch"), "{status}");
    assert!(
        status.contains("watch after a switch: 20s every 100ms"),
        "{status}"
    );
    assert!(status.contains(cause), "{status}");
    let history = std::fs::read_to_string(site.state().join("history.log")).unwrap();
    let last = history.lines().last().unwrap();
    assert!(
        last.contains(&format!("{} -> {}", site.ports[1], site.ports[0]))
            && last.contains("rolled back by the watch"),
        "{history}"
    );
    site.hook("switch", &[], Some("bad"))
        .fails(1, "the watch rolled deployment bad back");
    assert_eq!(site.live_version().as_deref(), Some("good"));
    // The next deployment stops the failed version and goes on as usual.
    site.set(|s| {
        s.app_args.clear();
        s.extra.clear();
    });
    site.deploy_ok("next");
    assert_eq!(site.live_version().as_deref(), Some("next"));
}

#[test]
fn a_version_failing_its_health_check_is_rolled_back() {
    let mut site = good_then(
        &["--unhealthy-after-ms", FAILS_AFTER_MS],
        WATCH,
        String::new(),
    );
    up_to_switch(&site, "bad");
    let began = Instant::now();
    let outcome = site.hook("switch", &[], Some("bad"));
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "the watch ran on"
    );
    assert_rolled_back(&mut site, outcome, "its health check failed");
}

#[test]
fn a_crashing_version_is_rolled_back() {
    let site = good_then(&["--exit-after-ms", FAILS_AFTER_MS], WATCH, String::new());
    up_to_switch(&site, "bad");
    let outcome = site.hook("switch", &[], Some("bad"));
    let verdict = outcome.last_line().to_string();
    println!("{verdict}");
    let outcome = outcome.fails(1, "has exited");
    assert!(verdict.contains("simulated crash"), "{verdict}");
    assert!(
        verdict.contains("traffic is back on the previous version"),
        "{verdict}"
    );
    drop(outcome);
    assert_eq!(site.live_version().as_deref(), Some("good"));
}

/// The watch's 5xx check with its access log, and the nginx lines that write it.
fn error_watch(log: &std::path::Path) -> (String, String) {
    let watch = format!(
        "{WATCH}  access_log: {}\n  max_5xx_percent: 10\n  min_requests: 5\n  window: 1s\n",
        log.display()
    );
    let nginx = format!(
        "log_format portswap_watch '$upstream_addr $status'; access_log {} portswap_watch;",
        log.display()
    );
    (watch, nginx)
}

#[test]
fn in_nftables_mode_5xx_through_the_service_port_roll_back_to_the_previous_rule() {
    netns::isolated("the watch in nftables mode", || {
        let logs = tempfile::tempdir().unwrap();
        let (watch, nginx) = error_watch(&logs.path().join("watch.log"));
        let mut site = good_then_by(
            Some("nftables"),
            &["--errors-after-ms", FAILS_AFTER_MS],
            &watch,
            nginx,
        );
        up_to_switch(&site, "bad");
        let traffic = site.traffic();
        let outcome = site.hook("switch", &[], Some("bad"));
        traffic.finish();
        let listing = netns::nft(&["-n", "list", "table", "ip", "portswap"]).unwrap();
        assert_eq!(
            support::redirect_in(&listing),
            Some((site.service_port, site.ports[0])),
            "the rule sends the service port back to the previous slot"
        );
        assert_rolled_back(&mut site, outcome, "were 5xx");
    });
}

#[test]
fn a_version_answering_5xx_through_nginx_is_rolled_back() {
    let logs = tempfile::tempdir().unwrap();
    let (watch, nginx) = error_watch(&logs.path().join("watch.log"));
    let mut site = good_then(&["--errors-after-ms", FAILS_AFTER_MS], &watch, nginx);
    up_to_switch(&site, "bad");
    let traffic = site.traffic();
    let outcome = site.hook("switch", &[], Some("bad"));
    let seen = traffic.finish();
    assert!(
        seen.iter().any(|v| v == "bad"),
        "the bad version answered for a while"
    );
    // Its health check passed throughout: the 5xx share is what failed it.
    assert!(
        !outcome.last_line().contains("health check failed"),
        "{}",
        outcome.last_line()
    );
    assert_rolled_back(&mut site, outcome, "were 5xx");
}

#[test]
fn a_healthy_version_passes_the_watch_with_no_failed_request() {
    let site = good_then(&[], "watch:\n  duration: 1500ms\n", String::new());
    up_to_switch(&site, "new");
    let traffic = site.traffic();
    let began = Instant::now();
    let outcome = site.hook("switch", &[], Some("new")).ok();
    let took = began.elapsed();
    let seen = traffic.assert_no_errors();
    assert!(seen.iter().any(|v| v == "new"), "{seen:?}");
    assert!(
        outcome.last_line().contains("watched port") && outcome.last_line().contains("healthy"),
        "{}",
        outcome.last_line()
    );
    assert!(
        took >= Duration::from_millis(1500),
        "switch returned before the watch ended: {took:?}"
    );
    assert_eq!(site.live_version().as_deref(), Some("new"));
    let status = site.hook("switch", &["--status"], None).ok().stdout;
    assert!(!status.contains("rolled back"), "{status}");
}

#[test]
fn sigterm_during_the_watch_keeps_a_version_healthy_so_far() {
    // A long interval: the signal must not wait for the next check (SIGKILL comes 5 s later).
    let watch = "watch:\n  duration: 60s\n  interval: 20s\n";
    let site = good_then(&[], watch, String::new());
    up_to_switch(&site, "new");
    let running = Running::switch(&site, "new");
    wait(Duration::from_secs(10), "the watch to begin", || {
        running.said("watching port")
    });
    let signalled = Instant::now();
    running.signal(Signal::SIGTERM);
    let outcome = running.finish();
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "switch ended {:?} after SIGTERM",
        signalled.elapsed()
    );
    let verdict = outcome.last_line().to_string();
    println!("{verdict}");
    outcome.fails(143, "SIGTERM cut the watch short");
    assert!(
        verdict.contains(&format!("port {}", site.ports[1])) && verdict.contains("stays live"),
        "{verdict}"
    );
    assert_eq!(site.live_version().as_deref(), Some("new"));
    assert!(site.state().join("switch.yml").exists());
    assert!(!site.state().join("switch-intent.yml").exists());
}

#[test]
fn sigterm_during_a_rollback_lets_it_complete() {
    // The previous version answers its health check 2 s late: the rollback takes that long.
    let mut site = Site::new();
    site.set(|s| s.app_args = vec!["--health-delay-ms".into(), "2000".into()]);
    site.deploy_ok("good");
    site.set(|s| {
        s.app_args = vec!["--unhealthy-after-ms".into(), FAILS_AFTER_MS.into()];
        s.extra = WATCH.to_string();
    });
    up_to_switch(&site, "bad");
    let running = Running::switch(&site, "bad");
    wait(Duration::from_secs(15), "the watch to fail", || {
        running.said("failed the watch")
    });
    running.signal(Signal::SIGTERM);
    let outcome = running.finish();
    let verdict = outcome.last_line().to_string();
    println!("{verdict}");
    outcome.fails(143, "SIGTERM");
    assert!(
        verdict.contains("traffic is back on the previous version"),
        "{verdict}"
    );
    assert_eq!(site.live_version().as_deref(), Some("good"));
    assert!(!site.state().join("switch-intent.yml").exists());
}

#[test]
fn with_the_previous_version_gone_too_traffic_stays_on_the_new_one() {
    let site = good_then(
        &["--unhealthy-after-ms", FAILS_AFTER_MS],
        WATCH,
        String::new(),
    );
    up_to_switch(&site, "bad");
    let running = Running::switch(&site, "bad");
    wait(Duration::from_secs(10), "the watch to begin", || {
        running.said("watching port")
    });
    let previous = site.recorded_pid(site.ports[0]).unwrap();
    killpg(Pid::from_raw(previous), Signal::SIGKILL).unwrap();
    wait(
        Duration::from_secs(5),
        "the previous version to die",
        || !net::port_is_listening(site.ports[0]),
    );
    let outcome = running.finish();
    let verdict = outcome.last_line().to_string();
    println!("{verdict}");
    outcome.fails(1, "failed the watch");
    assert!(
        verdict.contains(&format!(
            "the previous version on port {} cannot take the traffic back",
            site.ports[0]
        )) && verdict.contains(&format!("traffic stays on port {}", site.ports[1])),
        "{verdict}"
    );
    assert_eq!(site.included_port(), Some(site.ports[1]));
    assert_eq!(site.live_version().as_deref(), Some("bad"));
}

#[test]
fn a_version_systemd_restarts_after_a_crash_is_rolled_back() {
    let test = "a_version_systemd_restarts_after_a_crash_is_rolled_back";
    let site = match SupervisedSite::new() {
        Ok(site) => site,
        Err(why) => return refused(test, &why),
    };
    site.configure::<&str>(&[], "");
    for run in site.deploy("good") {
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    site.configure(&["--exit-after-ms", FAILS_AFTER_MS], WATCH);
    for hook in ["stop", "start", "health"] {
        let run = site.hook(hook, &[], Some("bad"));
        assert_eq!(run.code, 0, "{hook}: {}", run.stderr);
    }
    let run = site.hook("switch", &[], Some("bad"));
    let verdict = run.verdict().to_string();
    println!("{verdict}");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(verdict.contains("failed the watch"), "{verdict}");
    assert!(
        verdict.contains("restarted by systemd") || verdict.contains("systemd restarts it"),
        "{verdict}"
    );
    assert!(
        verdict.contains("traffic is back on the previous version"),
        "{verdict}"
    );
    assert_eq!(site.live_version().as_deref(), Some("good"));
}
