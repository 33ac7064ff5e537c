//! The legacy scripts' waits, done by our own code on the same host: profile.sh's idle
//! detection, stop.sh (SIGTERM, sleep 5), start.sh (nohup, output discarded), health.sh
//! (sleep 10, 10 tries 10 s apart), switch.sh (`tee` the include, reload).

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use portswap::procfs;
use portswap_testkit::net;

use crate::site::{HookRun, Site};

/// profile.sh: ask the app behind nginx for its profile; an error means `real2` is live.
fn idle_slot(site: &Site) -> (u16, &'static str) {
    let live = net::http_get(site.nginx.port(), "/profile")
        .ok()
        .filter(|r| r.status < 400)
        .map(|r| r.body);
    if live.as_deref() == Some("real1") {
        (site.ports[1], "real2")
    } else {
        (site.ports[0], "real1")
    }
}

fn timed(hook: &'static str, origin: Instant, work: impl FnOnce() -> bool) -> HookRun {
    let started = origin.elapsed();
    let clock = Instant::now();
    let ok = work();
    HookRun {
        hook,
        started,
        took: clock.elapsed(),
        ok,
        verdict: String::new(),
        timings: Vec::new(),
    }
}

/// One legacy deployment of `version` (fixture ready after `ready_ms`, with `extra` args).
/// Returns the hook runs and the pid of the app it started.
pub fn deploy(
    site: &Site,
    version: &str,
    ready_ms: u64,
    extra: &[&str],
    origin: Instant,
) -> (Vec<HookRun>, Option<i32>) {
    let (port, profile) = idle_slot(site);
    let mut runs = vec![timed("stop", origin, || {
        for pid in procfs::listeners(port) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        sleep(Duration::from_secs(5));
        true
    })];
    let mut pid = None;
    runs.push(timed("start", origin, || {
        let mut command = Command::new(site.fixture());
        command
            .args([
                "--port",
                &port.to_string(),
                "--profile",
                profile,
                "--version",
                version,
            ])
            .args(["--start-delay-ms", &ready_ms.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        pid = command.spawn().ok().map(|c| c.id() as i32);
        pid.is_some()
    }));
    let healthy = timed("health", origin, || {
        sleep(Duration::from_secs(10));
        for attempt in 1..=10 {
            let body = net::http_get(port, "/profile")
                .map(|r| r.body)
                .unwrap_or_default();
            if body.contains("real") {
                return true;
            }
            if attempt == 10 {
                return false;
            }
            sleep(Duration::from_secs(10));
        }
        false
    });
    let ok = healthy.ok;
    runs.push(healthy);
    if ok {
        runs.push(timed("switch", origin, || {
            // `echo ... | sudo tee FILE`: truncate, then write; then `service nginx reload`.
            let written = fs::File::create(site.include()).and_then(|mut f| {
                f.write_all(format!("set $service_url http://127.0.0.1:{port};\n").as_bytes())
            });
            let reload = site.nginx.reload_command();
            let reloaded = Command::new(&reload[0])
                .args(&reload[1..])
                .status()
                .is_ok_and(|s| s.success());
            written.is_ok() && reloaded
        }));
    }
    (runs, pid)
}

/// Kills what the legacy deployments started.
pub fn cleanup(pids: &[i32]) {
    for pid in pids {
        let _ = nix::sys::signal::killpg(Pid::from_raw(*pid), Signal::SIGKILL);
    }
}
