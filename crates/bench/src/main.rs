//! `bench`: deployments under steady HTTP load through a real nginx, with the real hook
//! binaries, against the same done the legacy scripts' way; prints a table and writes JSON.
//!
//! Run: `cargo run --release -p portswap-bench -- --help`

mod fleet;
mod legacy;
mod load;
mod report;
mod site;
mod stats;
mod supervised;
mod timeline;
mod watch;

use std::path::PathBuf;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use load::{Behaviour, Load, Sample};
use portswap_testkit::{bins, netns, nginx};
use report::{Phase, Report};
use site::{HookRun, Site};
use stats::{Marks, Spread};

const HELP: &str =
    "bench: zero downtime under load, per switch mechanism, and against the legacy scripts

Usage: bench [--deployments N] [--rate R] [--connections C] [--ready-ms MS] [--gap-ms MS]
             [--mechanisms LIST] [--nginx PATH] [--min-timeout T] [--directive D]...
             [--legacy [N]] [--no-legacy-crash] [--no-front] [--no-netns] [--hook-logs DIR]
             [--json PATH] [--svg-dir DIR] [--watch-rounds N]
       bench --fleet [--deployments N] [--rate R] [--connections C] [--nginx PATH] ...
       bench --supervised [ROUNDS]
       bench --watch [N]   the watch after a switch: rollback times and failed requests

  --deployments N     deployments under load per mechanism (default 20)
  --rate R            total requests per second over all clients (default 1200)
  --connections C     clients per behaviour (default 16)
  --ready-ms MS       fixture app readiness time after start (default 500)
  --gap-ms MS         pause between deployments (default 300)
  --mechanisms LIST   comma-separated, from: reload, keepalive, nftables (default all three;
                      keepalive needs a newer nginx, nftables a private network namespace)
  --nginx PATH        nginx >= 1.27.4 for the keepalive mechanism (default
                      $PORTSWAP_TESTKIT_NGINX); the other mechanisms use the system nginx
  --min-timeout T     keepalive_min_timeout of the keepalive mechanism (default 5s)
  --directive D       add an http-level directive to every sandbox nginx (repeatable), e.g.
                      --directive 'keepalive_timeout 0'
  --legacy [N]        legacy-script deployments under load (default 2, also for a bare
                      --legacy; each costs >= 15 s; 0 skips)
  --no-legacy-crash   skip timing the legacy scripts on a crashing start (~100 s)
  --no-front          leave nginx.front unset: switches without the front-door check
  --no-netns          run on the host's network namespace (skips nftables)
  --hook-logs DIR     run the hooks with RUST_LOG=debug and keep each hook's stderr in DIR
  --json PATH         where to write the JSON report (default target/bench-report.json)
  --svg-dir DIR       where to write one timeline SVG per mechanism (default target/bench)
  --watch-rounds N    after the table, the watch after a switch: N rolled-back deployments
                      per failure case and N healthy ones with and without a watch (default
                      20, ~9 minutes; 0 skips; `bench --watch N` runs only that)
  --fleet             three hosts behind haproxy instead (see BENCHMARKS.md)

Traffic goes to 127.0.0.1 only (and, with --fleet, to private veth addresses inside the
bench's own network namespace). Every client loop is bounded (1 h, 1,000,000 requests).";

#[derive(Debug, Clone)]
pub struct Options {
    deployments: usize,
    rate: u32,
    connections: u32,
    ready_ms: u64,
    gap: Duration,
    mechanisms: Vec<String>,
    nginx: Option<PathBuf>,
    min_timeout: String,
    directives: Vec<String>,
    legacy: usize,
    legacy_crash: bool,
    front: bool,
    netns: bool,
    hook_logs: Option<PathBuf>,
    json: String,
    svg_dir: PathBuf,
    fleet: bool,
    watch_rounds: usize,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        deployments: 20,
        rate: 1200,
        connections: 16,
        ready_ms: 500,
        gap: Duration::from_millis(300),
        mechanisms: ["reload", "keepalive", "nftables"]
            .map(String::from)
            .to_vec(),
        nginx: nginx::newer_nginx(),
        min_timeout: "5s".into(),
        directives: Vec::new(),
        legacy: 2,
        legacy_crash: true,
        front: true,
        netns: true,
        hook_logs: None,
        json: "target/bench-report.json".into(),
        svg_dir: "target/bench".into(),
        fleet: false,
        watch_rounds: 20,
    };
    let mut args = std::env::args().skip(1).peekable();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: `{v}` is not a number"))
        };
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            "--deployments" => o.deployments = number(value()?)?.max(1) as usize,
            "--rate" => o.rate = number(value()?)?.clamp(10, 20_000) as u32,
            "--connections" => o.connections = number(value()?)?.clamp(1, 256) as u32,
            "--ready-ms" => o.ready_ms = number(value()?)?,
            "--gap-ms" => o.gap = Duration::from_millis(number(value()?)?),
            "--mechanisms" => {
                o.mechanisms = value()?.split(',').map(|m| m.trim().to_string()).collect();
                if let Some(bad) = o
                    .mechanisms
                    .iter()
                    .find(|m| !["reload", "keepalive", "nftables"].contains(&m.as_str()))
                {
                    return Err(format!("--mechanisms: unknown `{bad}`"));
                }
            }
            "--nginx" => o.nginx = Some(value()?.into()),
            "--min-timeout" => o.min_timeout = value()?,
            "--directive" => o.directives.push(value()?),
            "--legacy" => {
                // The count is optional: a bare `--legacy` keeps the default.
                if let Some(n) = args.next_if(|v| v.parse::<u64>().is_ok()) {
                    o.legacy = number(n)? as usize;
                }
            }
            "--no-legacy-crash" => o.legacy_crash = false,
            "--no-front" => o.front = false,
            "--no-netns" => o.netns = false,
            "--hook-logs" => o.hook_logs = Some(value()?.into()),
            "--json" => o.json = value()?,
            "--svg-dir" => o.svg_dir = value()?.into(),
            "--fleet" => o.fleet = true,
            "--watch-rounds" => o.watch_rounds = number(value()?)? as usize,
            other => return Err(format!("unknown argument `{other}`; see --help")),
        }
    }
    Ok(o)
}

/// One way of switching, run under the same load as the others.
#[derive(Debug, Clone)]
pub struct Mechanism {
    name: &'static str,
    nginx: PathBuf,
    directives: Vec<String>,
    nftables: bool,
}

impl Mechanism {
    /// The `switch:` section of portswap.yml for this mechanism (`{dir}`: the site's
    /// directory, [`Site::configure`]).
    fn switch_yaml(&self) -> String {
        if self.nftables {
            format!(
                "switch:\n  by: nftables\n  service_port: {}\n  boot_unit_dir: {{dir}}/boot\n",
                portswap_testkit::net::free_port()
            )
        } else {
            String::new()
        }
    }
}

/// The mechanisms `o` asks for that this machine can run, saying why any is left out.
pub fn mechanisms(o: &Options, in_netns: bool) -> Vec<Mechanism> {
    let system = nginx::nginx_binary();
    let mut out = Vec::new();
    for name in &o.mechanisms {
        match name.as_str() {
            "reload" => out.push(Mechanism {
                name: "reload",
                nginx: system.clone(),
                directives: o.directives.clone(),
                nftables: false,
            }),
            "keepalive" => match &o.nginx {
                Some(newer) => out.push(Mechanism {
                    name: "reload + keepalive_min_timeout",
                    nginx: newer.clone(),
                    directives: o
                        .directives
                        .iter()
                        .cloned()
                        .chain([format!("keepalive_min_timeout {}", o.min_timeout)])
                        .collect(),
                    nftables: false,
                }),
                None => eprintln!(
                    "bench: SKIPPED reload + keepalive_min_timeout: needs nginx >= 1.27.4 \
                     (--nginx PATH or {})",
                    nginx::NEWER_NGINX_VAR
                ),
            },
            _ if in_netns => out.push(Mechanism {
                name: "nftables",
                nginx: system.clone(),
                directives: o.directives.clone(),
                nftables: true,
            }),
            _ => eprintln!("bench: SKIPPED nftables: needs a private network namespace (root)"),
        }
    }
    out
}

fn version_of(nginx: &std::path::Path) -> String {
    Command::new(nginx)
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .replace("nginx version: ", "")
        })
        .unwrap_or_default()
}

fn machine(mechanisms: &[Mechanism]) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let mut versions: Vec<String> = mechanisms.iter().map(|m| version_of(&m.nginx)).collect();
    if versions.is_empty() {
        versions.push(version_of(&nginx::nginx_binary()));
    }
    versions.dedup();
    format!(
        "{} cores, {cpu}, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        versions.join(" and ")
    )
}

/// Which deployment the timeline SVG shows: the middle one, a typical switch.
fn timeline_of(marks: &[Marks], versions: &[String], all: &[&Sample]) -> Option<report::Timeline> {
    let i = marks.len() / 2;
    let (start, end) = (marks.get(i)?.switch_start?, marks[i].switch_end?);
    Some(report::Timeline {
        deployment: versions[i].clone(),
        switch_took: end - start,
        bins: stats::timeline(
            all,
            start,
            &versions[i],
            (Duration::from_millis(200), Duration::from_millis(300)),
        ),
    })
}

/// Builds a phase's numbers from its deployments and the load's samples.
pub fn phase(
    name: &'static str,
    runs: &[Vec<HookRun>],
    versions: &[String],
    samples: &[(Behaviour, Vec<Sample>)],
    stale_checks: usize,
) -> Phase {
    let marks = stats::marks(runs);
    let all: Vec<&Sample> = samples.iter().flat_map(|(_, s)| s.iter()).collect();
    let mut first = Vec::new();
    let mut old_after = Vec::new();
    let mut kept_last = Vec::new();
    let mut old = stats::OldAnswers::default();
    let mut fresh_per_deployment = vec![0; marks.len()];
    let mut stale = stale_checks;
    for (i, (mark, version)) in marks.iter().zip(versions).enumerate() {
        // A failed switch left the previous version live: its answers are not "old" ones.
        let switched = runs[i].len() == 4 && runs[i].iter().all(|h| h.ok);
        if let (Some(start), Some(end), true) = (mark.switch_start, mark.switch_end, switched) {
            let until = marks[i + 1..]
                .iter()
                .find_map(|m| m.switch_start)
                .unwrap_or(Duration::MAX);
            first.extend(stats::first_new_answer(&all, start, version));
            old_after.push(
                stats::last_old_answer(&all, start, until, version).unwrap_or(Duration::ZERO),
            );
            stale += stats::stale_after(&all, end, until, version);
            let split = stats::old_answers(&all, (start, end, until), version);
            old.on_fresh_connection += split.on_fresh_connection;
            fresh_per_deployment[i] = split.on_fresh_connection;
            old.on_kept_connection += split.on_kept_connection;
            kept_last.extend(split.last_on_kept);
        }
    }
    let succeeded: Vec<&Vec<HookRun>> = runs
        .iter()
        .filter(|r| r.len() == 4 && r.iter().all(|h| h.ok))
        .collect();
    let walls: Vec<Duration> = succeeded
        .iter()
        .map(|r| r[3].started + r[3].took - r[0].started)
        .collect();
    Phase {
        name,
        deployments: runs.len(),
        succeeded: succeeded.len(),
        wall: Spread::of(&walls),
        hooks: stats::hook_spreads(runs),
        first_new_answer: Spread::of(&first),
        last_old_answer: Spread::of(&old_after),
        stale,
        old_answers: old,
        fresh_per_deployment,
        last_on_kept: Spread::of(&kept_last),
        switch_steps: stats::switch_steps(runs),
        timeline: timeline_of(&marks, versions, &all),
        behaviours: samples
            .iter()
            .map(|(b, s)| stats::behaviour_stats(*b, s, &marks))
            .collect(),
    }
}

type Crashes = Vec<(&'static str, &'static str, Duration)>;

/// `o.deployments` deployments by `m` under load; with `crash_cases`, also the time to report
/// a crashing start.
fn mechanism_phase(
    o: &Options,
    m: &Mechanism,
    origin: Instant,
    crash_cases: bool,
) -> (Phase, Crashes) {
    let mut site = Site::new(
        m.name,
        &m.nginx,
        &m.directives,
        m.switch_yaml(),
        o.hook_logs.clone(),
        None,
    );
    site.front = o.front;
    site.configure(o.ready_ms, &[]);
    let first = site.deploy("v0", origin);
    assert!(
        first.iter().all(|h| h.ok),
        "{}: initial deployment failed: {:?}",
        m.name,
        first.last()
    );
    let load = Load::start(site.nginx.port(), o.rate, o.connections, origin);
    sleep(Duration::from_secs(1));
    let (mut runs, mut versions, mut stale) = (Vec::new(), Vec::new(), 0);
    for i in 1..=o.deployments {
        let version = format!("v{i}");
        let run = site.deploy(&version, origin);
        let ok = run.iter().all(|h| h.ok);
        eprintln!(
            "{} {version}: {}",
            m.name,
            run.last().map_or("", |h| h.verdict.as_str())
        );
        runs.push(run);
        if ok {
            stale += site.stale_answers(&version, 10);
        }
        versions.push(version);
        sleep(o.gap);
    }
    sleep(Duration::from_millis(500));
    let samples = load.finish();
    let phase = phase(m.name, &runs, &versions, &samples, stale);

    let mut crashes = Vec::new();
    let cases = [
        ("new app exits at once", &["--fail-start"][..]),
        (
            "new app crashes 300 ms in, before binding",
            &["--exit-after-ms", "300"][..],
        ),
    ];
    for (what, args) in cases.iter().filter(|_| crash_cases) {
        site.configure(o.ready_ms, args);
        let run = site.deploy("crash", origin);
        let start = run.iter().find(|h| h.hook == "start").expect("start ran");
        let failed = run.last().expect("ran");
        assert!(!failed.ok, "the crashing deployment succeeded");
        crashes.push((
            "portswap",
            *what,
            failed.started + failed.took - start.started,
        ));
    }
    site.stop_all(origin);
    (phase, crashes)
}

fn legacy_phase(o: &Options, origin: Instant) -> (Option<Phase>, Crashes) {
    let site = Site::new(
        "legacy",
        &nginx::nginx_binary(),
        &o.directives,
        String::new(),
        o.hook_logs.clone(),
        None,
    );
    site.configure(o.ready_ms, &[]);
    let mut pids = Vec::new();
    let mut phase_out = None;
    if o.legacy > 0 {
        // v0 comes up the quick way; the legacy deployments under load follow.
        assert!(
            site.deploy("v0", origin).iter().all(|h| h.ok),
            "legacy phase: initial deployment failed"
        );
        let load = Load::start(site.nginx.port(), o.rate, o.connections, origin);
        sleep(Duration::from_secs(1));
        let (mut runs, mut versions, mut stale) = (Vec::new(), Vec::new(), 0);
        for i in 1..=o.legacy {
            let version = format!("legacy-v{i}");
            let (run, pid) = legacy::deploy(&site, &version, o.ready_ms, &[], origin);
            pids.extend(pid);
            let ok = run.iter().all(|h| h.ok) && run.len() == 4;
            eprintln!(
                "legacy {version}: {}",
                if ok { "deployed" } else { "failed" }
            );
            if ok {
                // The legacy switch returns before the reload took: wait as its users would.
                sleep(Duration::from_millis(200));
                stale += site.stale_answers(&version, 10);
            }
            runs.push(run);
            versions.push(version);
            sleep(o.gap);
        }
        sleep(Duration::from_millis(500));
        let samples = load.finish();
        phase_out = Some(phase("legacy scripts", &runs, &versions, &samples, stale));
    }
    let mut crashes = Vec::new();
    if o.legacy_crash {
        eprintln!("legacy crash case: waits as health.sh does (~100 s)...");
        let (run, pid) =
            legacy::deploy(&site, "legacy-crash", o.ready_ms, &["--fail-start"], origin);
        pids.extend(pid);
        let start = run.iter().find(|h| h.hook == "start").expect("start ran");
        let failed = run.last().expect("ran");
        crashes.push((
            "legacy",
            "new app exits at once",
            failed.started + failed.took - start.started,
        ));
    }
    legacy::cleanup(&pids);
    site.stop_all(origin);
    (phase_out, crashes)
}

fn binaries() -> Vec<(String, u64, Duration)> {
    ["stop", "start", "health", "switch"]
        .iter()
        .map(|name| {
            let path = bins::bin(name);
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let times: Vec<Duration> = (0..50)
                .map(|_| {
                    let t = Instant::now();
                    let _ = Command::new(&path).arg("--version").output();
                    t.elapsed()
                })
                .collect();
            (name.to_string(), bytes, stats::percentile(&times, 0.5))
        })
        .collect()
}

/// The mechanisms' phases and their crash reports, and the mechanisms themselves.
type Measured = (Vec<Phase>, Crashes, Vec<Mechanism>);

/// Every mechanism `o` asks for, one after the other, timed from `origin`.
fn run_mechanisms(o: &Options, in_netns: bool, origin: Instant) -> Measured {
    let mechanisms = mechanisms(o, in_netns);
    let mut phases = Vec::new();
    let mut crashes = Vec::new();
    for (i, m) in mechanisms.iter().enumerate() {
        let (phase, crashed) = mechanism_phase(o, m, origin, i == 0);
        phases.push(phase);
        crashes.extend(crashed);
    }
    (phases, crashes, mechanisms)
}

/// The legacy scripts after the mechanisms, then the report: table, JSON, SVGs. The legacy
/// part runs on the calling thread's network namespace (the host's): its stop finds the app
/// by port through /proc/net/tcp, which shows the namespace of the process's main thread.
fn finish(o: &Options, (mut phases, mut crashes, mechanisms): Measured, origin: Instant) {
    let (old, legacy_crashes) = legacy_phase(o, origin);
    crashes.extend(legacy_crashes);
    phases.extend(old);
    let report = Report {
        machine: machine(&mechanisms),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        rate: o.rate,
        connections: o.connections,
        nginx: o.directives.clone(),
        ready: Duration::from_millis(o.ready_ms),
        phases,
        crash_reports: crashes,
        binaries: binaries(),
    };
    print!("{}", report.table());
    match std::fs::write(&o.json, report.json()) {
        Ok(()) => println!("\nJSON: {}", o.json),
        Err(e) => eprintln!("bench: cannot write {}: {e}", o.json),
    }
    for phase in &report.phases {
        match timeline::write_svg(&o.svg_dir, phase) {
            Ok(Some(path)) => println!("timeline: {}", path.display()),
            Ok(None) => {}
            Err(e) => eprintln!("bench: cannot write the {} timeline: {e}", phase.name),
        }
    }
    if o.watch_rounds > 0 {
        println!(
            "
The watch after a switch ({} rounds per case):",
            o.watch_rounds
        );
        watch::run(o.watch_rounds);
    }
}

fn main() {
    if let Some(code) = supervised::when_asked() {
        std::process::exit(code);
    }
    if let Some(code) = watch::when_asked() {
        std::process::exit(code);
    }
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    bins::ensure_built();
    let origin = Instant::now();
    if !o.netns {
        let measured = run_mechanisms(&o, false, origin);
        return finish(&o, measured, origin);
    }
    // The mechanisms (nginx, hooks, apps, clients, nft) in a private network namespace:
    // nftables rules never touch the host's, and every mechanism runs under the same
    // conditions.
    let inside = o.clone();
    let measured = netns::isolated("bench in a private network namespace", move || {
        if inside.fleet {
            fleet::run(&inside);
            None
        } else {
            Some(run_mechanisms(&inside, true, origin))
        }
    });
    match measured {
        Some(Some(measured)) => finish(&o, measured, origin),
        Some(None) => {}
        None if o.fleet => {
            eprintln!("bench: --fleet needs a private network namespace (root)");
            std::process::exit(1);
        }
        None => {
            let measured = run_mechanisms(&o, false, origin);
            finish(&o, measured, origin);
        }
    }
}
