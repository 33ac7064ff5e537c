//! `bench --fleet`: three hosts behind a load balancer, deployed one at a time under load.
//!
//! Each host is a thread that moved itself into its own network namespace (a namespace
//! belongs to a thread; the processes it starts inherit it): its own nginx, two slots,
//! portswap state and, for `switch.by: nftables`, its own ruleset. A veth pair joins it to
//! the bench's namespace, where haproxy balances over the three hosts the way an AWS ALB
//! treats its targets: keep-alive connections to them, reused for any request, and no retry
//! when one turns out closed (the client gets a 502). The load's clients talk to haproxy.

use std::fs;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Sender};
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};

use nix::sched::{unshare, CloneFlags};
use portswap_testkit::net::{free_port, http_get, wait_until};
use serde_json::json;

use crate::load::{Behaviour, Load};
use crate::site::{HookRun, Site};
use crate::stats::{self, BehaviourStats};
use crate::{mechanisms, Mechanism, Options};

/// Hosts behind the load balancer.
const HOSTS: usize = 3;

/// Runs `ip ARGS` in the calling thread's namespace; panics with its stderr on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("fleet: cannot run ip: {e} (apt-get install -y iproute2)"));
    assert!(
        out.status.success(),
        "fleet: ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a host thread is asked to do.
enum Job {
    Deploy(String, Sender<Vec<HookRun>>),
}

/// One host: a thread in its own network namespace that runs the hooks it is sent.
struct Host {
    address: String,
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Host {
    /// Starts host `n` of mechanism `m` (network `10.77.<net>.0/24`) with `v0` deployed.
    fn start(o: &Options, m: &Mechanism, net: usize, origin: Instant) -> Host {
        let address = format!("10.77.{net}.2");
        let (tid_tx, tid_rx) = channel();
        let (go_tx, go_rx) = channel::<()>();
        let (job_tx, job_rx) = channel::<Job>();
        let (up_tx, up_rx) = channel::<()>();
        let (o, m, listen) = (o.clone(), m.clone(), format!("{address}:80"));
        let own = address.clone();
        let thread = thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).expect("fleet: unshare(CLONE_NEWNET)");
            tid_tx
                .send(nix::unistd::gettid().as_raw())
                .expect("send tid");
            go_rx.recv().expect("veth ready");
            ip(&["link", "set", "lo", "up"]);
            ip(&["addr", "add", &format!("{own}/24"), "dev", "eth0"]);
            ip(&["link", "set", "eth0", "up"]);
            let site = Site::new(
                "fleet",
                &m.nginx,
                &m.directives,
                m.switch_yaml(),
                o.hook_logs.clone(),
                Some(listen),
            );
            site.configure(o.ready_ms, &[]);
            let first = site.deploy("v0", origin);
            assert!(
                first.iter().all(|h| h.ok),
                "fleet host: v0 failed: {first:?}"
            );
            up_tx.send(()).expect("host up");
            while let Ok(Job::Deploy(version, reply)) = job_rx.recv() {
                let _ = reply.send(site.deploy(&version, origin));
            }
            site.stop_all(origin);
        });
        let tid = tid_rx.recv().expect("host thread started");
        let outside = format!("fl{net}");
        ip(&[
            "link",
            "add",
            &outside,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &tid.to_string(),
        ]);
        ip(&["addr", "add", &format!("10.77.{net}.1/24"), "dev", &outside]);
        ip(&["link", "set", &outside, "up"]);
        go_tx.send(()).expect("host thread waits");
        up_rx.recv().expect("host came up");
        Host {
            address,
            jobs: Some(job_tx),
            thread: Some(thread),
        }
    }

    fn deploy(&self, version: &str) -> Vec<HookRun> {
        let (tx, rx) = channel();
        self.jobs
            .as_ref()
            .expect("running")
            .send(Job::Deploy(version.to_string(), tx))
            .expect("host thread alive");
        rx.recv().expect("host thread answers")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// haproxy configured as an ALB treats its targets.
struct Balancer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Balancer {
    fn start(hosts: &[Host]) -> Balancer {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let servers: String = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| format!("    server host{i} {}:80\n", h.address))
            .collect();
        let config = format!(
            "global\n    maxconn 4096\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n\
             \x20   timeout server 30s\n    timeout http-keep-alive 60s\n\
             \x20   option http-keep-alive\n\
             \x20   # An ALB: idle connections to the targets are reused for any request, and a\n\
             \x20   # request sent on one the target has closed is not retried (502).\n\
             \x20   http-reuse always\n    retries 0\n    retry-on none\n\
             frontend web\n    bind 127.0.0.1:{port}\n    default_backend hosts\n\
             backend hosts\n    balance roundrobin\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        fs::write(&path, config).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("fleet: cannot run haproxy: {e} (apt-get install -y haproxy)")
            });
        wait_until(Duration::from_secs(10), "haproxy to answer", || {
            http_get(port, "/").is_ok_and(|r| r.status == 200)
        })
        .unwrap_or_else(|e| panic!("fleet: {e}"));
        Balancer {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One mechanism's fleet results.
struct FleetRun {
    name: &'static str,
    deployments: usize,
    succeeded: usize,
    behaviours: Vec<BehaviourStats>,
    /// Failed requests (all behaviours) during each round of three host deployments.
    per_round: Vec<usize>,
}

fn run_mechanism(o: &Options, m: &Mechanism, index: usize, origin: Instant) -> FleetRun {
    let hosts: Vec<Host> = (0..HOSTS)
        .map(|h| Host::start(o, m, index * 10 + h + 1, origin))
        .collect();
    let balancer = Balancer::start(&hosts);
    let load = Load::start(balancer.port, o.rate, o.connections, origin);
    sleep(Duration::from_secs(1));
    let mut runs = Vec::new();
    let mut round_starts = Vec::new();
    for round in 1..=o.deployments {
        round_starts.push(origin.elapsed());
        for (h, host) in hosts.iter().enumerate() {
            let run = host.deploy(&format!("v{round}"));
            eprintln!(
                "fleet {} round {round} host {h}: {}",
                m.name,
                run.last().map_or("", |r| r.verdict.as_str())
            );
            runs.push(run);
            sleep(o.gap);
        }
    }
    sleep(Duration::from_millis(500));
    let samples = load.finish();
    drop(balancer);
    drop(hosts);
    let marks = stats::marks(&runs);
    let per_round = round_starts
        .iter()
        .enumerate()
        .map(|(i, start)| {
            let end = round_starts.get(i + 1).copied().unwrap_or(Duration::MAX);
            samples
                .iter()
                .flat_map(|(_, s)| s.iter())
                .filter(|s| s.sent >= *start && s.sent < end && s.outcome.failure().is_some())
                .count()
        })
        .collect();
    FleetRun {
        name: m.name,
        deployments: runs.len(),
        succeeded: runs
            .iter()
            .filter(|r| r.len() == 4 && r.iter().all(|h| h.ok))
            .count(),
        behaviours: samples
            .iter()
            .map(|(b, s)| stats::behaviour_stats(*b, s, &marks))
            .collect(),
        per_round,
    }
}

/// Runs the fleet bench for every mechanism `o` asks for (in the bench's private network
/// namespace) and prints the errors seen at the load balancer.
pub fn run(o: &Options) {
    let origin = Instant::now();
    let runs: Vec<FleetRun> = mechanisms(o, true)
        .iter()
        .enumerate()
        .map(|(i, m)| run_mechanism(o, m, i, origin))
        .collect();
    println!(
        "fleet: {HOSTS} hosts behind haproxy (keep-alive to the hosts, http-reuse always, no \
         retry), {} rounds of one-host-at-a-time deployments, {} req/s, {} clients per behaviour",
        o.deployments, o.rate, o.connections
    );
    let mut json_runs = serde_json::Map::new();
    for r in &runs {
        println!(
            "\n== {}: {} of {} host deployments succeeded",
            r.name, r.succeeded, r.deployments
        );
        for b in &r.behaviours {
            println!(
                "  {:<46} {:>7} requests {:>5} failed  {}",
                b.behaviour.label(),
                b.requests,
                b.failed(),
                b.kinds_text()
            );
        }
        println!(
            "  failed requests per round (3 host deployments): {:?}",
            r.per_round
        );
        let clients: serde_json::Map<String, serde_json::Value> = r
            .behaviours
            .iter()
            .map(|b| {
                (
                    b.behaviour.key().to_string(),
                    json!({"requests": b.requests, "failed": b.failed(), "failures": b.kinds_json()}),
                )
            })
            .collect();
        json_runs.insert(
            r.name.to_string(),
            json!({
                "host_deployments": r.deployments,
                "succeeded": r.succeeded,
                "clients": clients,
                "failed_per_round": r.per_round,
            }),
        );
    }
    let report = json!({
        "hosts": HOSTS,
        "rounds": o.deployments,
        "rate": o.rate,
        "connections": o.connections,
        "behaviours": Behaviour::ALL.iter().map(|b| b.key()).collect::<Vec<_>>(),
        "mechanisms": json_runs,
    });
    let path = o.json.replace(".json", "-fleet.json");
    match fs::write(
        &path,
        serde_json::to_string_pretty(&report).expect("plain JSON"),
    ) {
        Ok(()) => println!("\nJSON: {path}"),
        Err(e) => eprintln!("bench: cannot write {path}: {e}"),
    }
}
