//! `xtask demo`: a local end-to-end deployment, no AWS account needed.
//!
//! Builds the hooks and the fixture app, starts the installed nginx in a sandbox directory,
//! packs revisions v1, v2, v3 with portswap-bundle's library (with a demo portswap.yml and the
//! fixture app as the artifact) and deploys each `.tgz` through the CodeDeploy agent
//! emulation, while a client thread polls nginx with new connections. Prints, per deployment,
//! the live port before and after, each hook's duration, and what the client saw; then stops
//! everything it started.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, SigSet, Signal};
use nix::unistd::Pid;
use portswap_testkit::agent::{Agent, DeploymentReport};
use portswap_testkit::hooks::{included_port, recorded_pid, yaml_list};
use portswap_testkit::{net, NginxSandbox};

use portswap_bundle::Inputs;

use crate::build;

/// Versions deployed, in order.
const VERSIONS: [&str; 3] = ["v1", "v2", "v3"];
/// The client stops by itself after this long whatever happens.
const CLIENT_LIMIT: Duration = Duration::from_secs(600);

/// Finds nginx in /usr/sbin or on PATH.
fn find_nginx() -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from("/usr/sbin/nginx")];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nginx")));
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// Makes sure nginx is installed: apt-get as root, otherwise says what to install.
fn ensure_nginx() -> Result<PathBuf, String> {
    if let Some(nginx) = find_nginx() {
        return Ok(nginx);
    }
    let advice = "nginx is not installed: install it with `sudo apt-get install -y nginx` (Debian, Ubuntu) \
                  or `sudo dnf install -y nginx` (Amazon Linux, Fedora), then run `cargo run -p xtask -- demo` again";
    if !nix::unistd::geteuid().is_root() || !Path::new("/usr/bin/apt-get").is_file() {
        return Err(advice.into());
    }
    println!("nginx is missing: installing it with apt-get (running as root)");
    for args in [
        &["update"][..],
        &["install", "-y", "--no-install-recommends", "nginx"][..],
    ] {
        let status = Command::new("/usr/bin/apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("apt-get: {e}"))?;
        if !status.success() {
            return Err(format!(
                "apt-get {} failed ({status}); {advice}",
                args.join(" ")
            ));
        }
    }
    find_nginx().ok_or_else(|| advice.to_string())
}

/// The demo's portswap.yml: the fixture app at the revision root, everything else in `dir`.
fn demo_config(dir: &Path, nginx: &NginxSandbox, ports: [u16; 2], version: &str) -> String {
    format!(
        "# portswap.yml of the demo (xtask demo), fixture app {version}\n\
         slots:\n  - {{ port: {p0}, profile: real1 }}\n  - {{ port: {p1}, profile: real2 }}\n\
         app:\n  artifacts: [\"../fixture-app\"]\n  \
         command: [\"{{artifact}}\", \"--port\", \"{{port}}\", \"--profile\", \"{{profile}}\", \"--version\", \"{version}\"]\n\
         \x20 supervisor: process\n\
         health:\n  path: /health\n  timeout: 20s\n\
         nginx:\n  include: {include}\n  test_command: {test}\n  pid_file: {pid}\n  reload_timeout: 5s\n  front: http://127.0.0.1:{front}\n\
         stop:\n  grace: 10s\n\
         state:\n  dir: {state}\n  lock_wait: 10s\n",
        p0 = ports[0],
        p1 = ports[1],
        include = nginx.include_file().display(),
        test = yaml_list(&nginx.test_command()),
        pid = nginx.pid_file().display(),
        front = nginx.port(),
        state = dir.join("state").display(),
    )
}

/// What the client saw during one deployment.
#[derive(Debug, Default, Clone)]
struct Seen {
    requests: u64,
    failures: BTreeMap<String, u64>,
    versions: BTreeMap<String, u64>,
}

impl Seen {
    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// A client polling nginx with a new connection per request, counting per deployment.
struct Client {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<()>,
}

impl Client {
    fn start(port: u16, current: Arc<AtomicUsize>, seen: Arc<Mutex<Vec<Seen>>>) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let end = Instant::now() + CLIENT_LIMIT;
            while !flag.load(Ordering::Relaxed) && Instant::now() < end {
                let outcome = net::http_get_timeout(port, "/", Duration::from_secs(2));
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                let entry = &mut seen[current.load(Ordering::Relaxed)];
                entry.requests += 1;
                match outcome {
                    Ok(r) if r.status == 200 => {
                        let version = r.header("X-App-Version").unwrap_or("?").to_string();
                        *entry.versions.entry(version).or_default() += 1;
                    }
                    Ok(r) => {
                        *entry
                            .failures
                            .entry(format!("HTTP {}", r.status))
                            .or_default() += 1
                    }
                    Err(e) => *entry.failures.entry(format!("{:?}", e.kind())).or_default() += 1,
                }
            }
        });
        Client { stop, handle }
    }

    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
    }
}

fn show_port(port: Option<u16>) -> String {
    port.map_or_else(|| "none".to_string(), |p| p.to_string())
}

fn print_deployment(
    version: &str,
    report: &DeploymentReport,
    before: Option<u16>,
    after: Option<u16>,
    seen: &Seen,
) {
    let verdict = match &report.failure {
        None => "Succeeded".to_string(),
        Some((event, reason)) => format!("FAILED in {event}: {reason}"),
    };
    println!(
        "\n{} (fixture app {version}): {verdict} in {:.2}s",
        report.deployment_id,
        report.duration.as_secs_f64()
    );
    println!(
        "  live port        {} -> {}",
        show_port(before),
        show_port(after)
    );
    for event in &report.events {
        if event.scripts.is_empty() {
            let note = if event.name == "ApplicationStop" {
                "  (no previous revision)"
            } else {
                ""
            };
            println!(
                "  {:<16} {:>8.3}s{note}",
                event.name,
                event.duration.as_secs_f64()
            );
        }
        for script in &event.scripts {
            let code = script.exit_code.map_or_else(
                || format!("signal {:?}", script.signal),
                |c| format!("exit {c}"),
            );
            println!(
                "  {:<16} {:>8.3}s  {} ({code})",
                event.name,
                script.duration.as_secs_f64(),
                script.location
            );
        }
    }
    let versions: Vec<String> = seen
        .versions
        .iter()
        .map(|(v, n)| format!("{v} x{n}"))
        .collect();
    let failures: Vec<String> = seen
        .failures
        .iter()
        .map(|(k, n)| format!("{k} x{n}"))
        .collect();
    println!(
        "  client           {} requests, {} failed{}; answered by {}",
        seen.requests,
        seen.failed(),
        if failures.is_empty() {
            String::new()
        } else {
            format!(" ({})", failures.join(", "))
        },
        if versions.is_empty() {
            "nobody".to_string()
        } else {
            versions.join(", ")
        }
    );
    if let Some(why) = failures_note(before, seen) {
        println!("                   ({why})");
    }
    if let Some((event, _)) = &report.failure {
        if let Some(script) = report.event(event).and_then(|e| e.scripts.last()) {
            println!("  last output of {}:", script.location);
            for line in script.output_tail.lines() {
                println!("    {line}");
            }
        }
    }
}

/// Why a deployment's client saw failures when that is expected: nothing was live before the
/// first one, so nginx answered 502 until its switch.
fn failures_note(before: Option<u16>, seen: &Seen) -> Option<&'static str> {
    (before.is_none() && seen.failed() > 0).then_some(
        "nothing was live before this first deployment: nginx answered 502 until the switch",
    )
}

/// One row of the summary table, with the explanation of expected failures beside it.
fn summary_row(
    deployment: &str,
    before: Option<u16>,
    after: Option<u16>,
    took: Duration,
    seen: &Seen,
) -> String {
    let row = format!(
        "  {:<12} {:>5}->{:<5} {:>8.2}s {:>9} {:>9}",
        deployment,
        show_port(before),
        show_port(after),
        took.as_secs_f64(),
        seen.requests,
        seen.failed()
    );
    match failures_note(before, seen) {
        Some(why) => format!("{row}  ({why})"),
        None => row,
    }
}

/// Stops the apps the demo started (through the real `stop --force`), then makes sure.
fn stop_apps(stop: &Path, config: &Path, ports: [u16; 2], state: &Path) {
    for port in ports {
        let _ = Command::new(stop)
            .args(["--force", "--port", &port.to_string()])
            .env("PORTSWAP_CONFIG", config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Belt and braces: the recorded process group, if it is still there.
        kill_recorded(state, port);
    }
}

/// SIGKILLs the process group `start` recorded for `port`, if it still runs.
fn kill_recorded(state: &Path, port: u16) {
    let pid = recorded_pid(state, port);
    if let Some(pid) = pid.filter(|pid| Path::new(&format!("/proc/{pid}")).exists()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// On Ctrl-C or SIGTERM, stops what the demo started (its apps and its nginx), removes its
/// directory and exits 130. Call before any other thread starts: the signals are blocked
/// here and waited for by a thread of their own (children get a clean mask from `Command`).
fn clean_up_on_interrupt(root: PathBuf, ports: [u16; 2], nginx_pid_file: PathBuf) {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if signals.thread_block().is_err() {
        return;
    }
    thread::spawn(move || {
        if signals.wait().is_err() {
            return;
        }
        eprintln!(
            "interrupted: stopping the demo's apps and nginx, removing {}",
            root.display()
        );
        for port in ports {
            kill_recorded(&root.join("state"), port);
        }
        let master = fs::read_to_string(&nginx_pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok());
        if let Some(pid) = master {
            let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
        }
        let _ = fs::remove_dir_all(&root);
        std::process::exit(130);
    });
}

/// Runs the demo; `release` builds optimised binaries (what ships) instead of debug ones.
pub fn run(release: bool) -> Result<(), String> {
    let nginx_path = ensure_nginx()?;
    println!("nginx: {}", nginx_path.display());
    println!(
        "building the hooks and the fixture app ({})",
        if release { "release" } else { "debug" }
    );
    let binaries = build::cargo_build(
        &[
            "portswap-stop",
            "portswap-start",
            "portswap-health",
            "portswap-switch",
            "fixture-app",
        ],
        release,
    )?;

    let dir = tempfile::Builder::new()
        .prefix("portswap-demo-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let root = dir.path();
    let mut nginx = NginxSandbox::start(&root.join("nginx"), &root.join("service-url.inc"));
    let ports = [net::free_port(), net::free_port()];
    clean_up_on_interrupt(root.to_path_buf(), ports, nginx.pid_file());
    println!(
        "sandbox: {} (nginx on 127.0.0.1:{}, slots {} and {})",
        root.display(),
        nginx.port(),
        ports[0],
        ports[1]
    );

    // Revisions packed as `portswap-bundle` packs them, one per version.
    let mut packed = Vec::new();
    for version in VERSIONS {
        let config = root.join(format!("portswap-{version}.yml"));
        fs::write(&config, demo_config(root, &nginx, ports, version)).map_err(|e| e.to_string())?;
        let inputs = Inputs {
            appspec: build::workspace_root().join("appspec.yml"),
            config,
            hooks: binaries.clone(),
            artifacts: vec![binaries.join("fixture-app")],
        };
        let made = portswap_bundle::bundle(&inputs, &root.join("bundles").join(version))
            .map_err(|e| e.to_string())?;
        packed.push(made.tgz);
    }

    let agent = Agent::new(&root.join("agent"), "demo-group").destination_root(&root.join("dest"));
    let current = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(vec![Seen::default(); VERSIONS.len()]));
    let client = Client::start(nginx.port(), Arc::clone(&current), Arc::clone(&seen));
    let mut summary = Vec::new();
    let mut failed = false;
    for (index, (version, tgz)) in VERSIONS.iter().zip(&packed).enumerate() {
        current.store(index, Ordering::Relaxed);
        let before = included_port(nginx.include_file());
        let report = agent.deploy(
            tgz,
            &format!("d-demo-{}", index + 1),
            &[("RUST_LOG", "info")],
        );
        let after = included_port(nginx.include_file());
        let seen_now = seen.lock().unwrap_or_else(|e| e.into_inner())[index].clone();
        print_deployment(version, &report, before, after, &seen_now);
        failed |= !report.success();
        summary.push((report, before, after, seen_now));
        if failed {
            break;
        }
    }
    client.finish();

    let last_config = agent
        .last_successful_archive()
        .map(|a| a.join("hooks/portswap.yml"));
    let stop = binaries.join("stop");
    if let Some(config) = last_config {
        stop_apps(&stop, &config, ports, &root.join("state"));
    }
    nginx.stop();

    println!("\nsummary");
    println!(
        "  {:<12} {:>11} {:>9} {:>9} {:>9}",
        "deployment", "live port", "total", "requests", "failed"
    );
    for (report, before, after, seen) in &summary {
        println!(
            "{}",
            summary_row(
                &report.deployment_id,
                *before,
                *after,
                report.duration,
                seen
            )
        );
    }
    println!("stopped both apps and nginx; removing {}", root.display());
    drop(dir);
    if failed {
        return Err("a deployment failed (see above)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_explains_the_first_deployments_failed_requests() {
        let mut seen = Seen {
            requests: 5000,
            ..Seen::default()
        };
        seen.failures.insert("502".into(), 1200);
        let first = summary_row("d-demo-1", None, Some(8081), Duration::from_secs(2), &seen);
        assert!(
            first.contains("1200") && first.contains("502 until the switch"),
            "{first}"
        );
        let later = summary_row(
            "d-demo-2",
            Some(8081),
            Some(8082),
            Duration::from_secs(2),
            &seen,
        );
        assert!(
            !later.contains("502 until"),
            "unexplained failures stay unexplained: {later}"
        );
    }
}
