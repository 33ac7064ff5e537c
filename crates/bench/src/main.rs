//! `bench`: deployments under steady HTTP load through a real nginx, with the real hook
//! binaries, against the same done the legacy scripts' way; prints a table and writes JSON.
//!
//! Run: `cargo run --release -p portswap-bench -- --help`

mod legacy;
mod load;
mod report;
mod site;
mod stats;
mod supervised;

use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use load::{Behaviour, Load, Sample};
use portswap_testkit::bins;
use report::{Phase, Report};
use site::{HookRun, Site};
use stats::{Marks, Spread};

const HELP: &str = "bench: zero downtime under load, and portswap against the legacy scripts

Usage: bench [--deployments N] [--rate R] [--connections C] [--ready-ms MS] [--gap-ms MS]
             [--legacy [N]] [--no-legacy-crash] [--nginx DIRECTIVE]... [--hook-logs DIR]
             [--json PATH]

  --deployments N     portswap deployments under load (default 20)
  --rate R            total requests per second over all clients (default 1200)
  --connections C     clients per behaviour (default 16)
  --ready-ms MS       fixture app readiness time after start (default 500)
  --gap-ms MS         pause between deployments (default 300)
  --legacy [N]        legacy-script deployments under load (default 2, also for a bare
                      --legacy; each costs >= 15 s; 0 skips)
  --no-legacy-crash   skip timing the legacy scripts on a crashing start (~100 s)
  --nginx DIRECTIVE   add an http-level directive to the sandbox nginx (repeatable), e.g.
                      --nginx 'keepalive_timeout 0' to see its effect on keep-alive clients
  --hook-logs DIR     run the hooks with RUST_LOG=debug and keep each hook's stderr in DIR
  --json PATH         where to write the JSON report (default target/bench-report.json)

Traffic goes to 127.0.0.1 only. Every client loop is bounded (1 h, 1,000,000 requests).";

struct Options {
    deployments: usize,
    rate: u32,
    connections: u32,
    ready_ms: u64,
    gap: Duration,
    legacy: usize,
    legacy_crash: bool,
    nginx: Vec<String>,
    hook_logs: Option<std::path::PathBuf>,
    json: String,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        deployments: 20,
        rate: 1200,
        connections: 16,
        ready_ms: 500,
        gap: Duration::from_millis(300),
        legacy: 2,
        legacy_crash: true,
        nginx: Vec::new(),
        hook_logs: None,
        json: "target/bench-report.json".into(),
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
            "--legacy" => {
                // The count is optional: a bare `--legacy` keeps the default.
                if let Some(n) = args.next_if(|v| v.parse::<u64>().is_ok()) {
                    o.legacy = number(n)? as usize;
                }
            }
            "--no-legacy-crash" => o.legacy_crash = false,
            "--nginx" => o.nginx.push(value()?),
            "--hook-logs" => o.hook_logs = Some(value()?.into()),
            "--json" => o.json = value()?,
            other => return Err(format!("unknown argument `{other}`; see --help")),
        }
    }
    Ok(o)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let nginx = Command::new(portswap_testkit::nginx::nginx_binary())
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .replace("nginx version: ", "")
        })
        .unwrap_or_default();
    format!(
        "{} cores, {cpu}, {nginx}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

/// Builds a phase's numbers from its deployments and the load's samples.
fn phase(
    name: &'static str,
    runs: &[Vec<HookRun>],
    versions: &[String],
    samples: &[(Behaviour, Vec<Sample>)],
    stale_checks: usize,
) -> Phase {
    let marks: Vec<Marks> = runs
        .iter()
        .map(|r| {
            let switch = r.iter().find(|h| h.hook == "switch");
            Marks {
                deploy_start: r[0].started,
                switch_start: switch.map(|s| s.started),
                switch_end: switch.map(|s| s.started + s.took),
            }
        })
        .collect();
    let all: Vec<&Sample> = samples.iter().flat_map(|(_, s)| s.iter()).collect();
    let mut first = Vec::new();
    let mut old_after = Vec::new();
    let mut stale = stale_checks;
    for (i, (mark, version)) in marks.iter().zip(versions).enumerate() {
        if let (Some(start), Some(end)) = (mark.switch_start, mark.switch_end) {
            let until = marks[i + 1..]
                .iter()
                .find_map(|m| m.switch_start)
                .unwrap_or(Duration::MAX);
            first.extend(stats::first_new_answer(&all, start, version));
            old_after.push(
                stats::last_old_answer(&all, start, until, version).unwrap_or(Duration::ZERO),
            );
            stale += stats::stale_after(&all, end, until, version);
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
        behaviours: samples
            .iter()
            .map(|(b, s)| stats::behaviour_stats(*b, s, &marks))
            .collect(),
    }
}

fn portswap_phase(
    o: &Options,
    origin: Instant,
) -> (Phase, Vec<(&'static str, &'static str, Duration)>) {
    let site = Site::new("portswap", &o.nginx, o.hook_logs.clone());
    site.configure(o.ready_ms, &[]);
    let first = site.deploy("v0", origin);
    assert!(
        first.iter().all(|h| h.ok),
        "initial deployment failed: {:?}",
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
            "portswap {version}: {}",
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
    let phase = phase("portswap", &runs, &versions, &samples, stale);

    let mut crashes = Vec::new();
    for (what, args) in [
        ("new app exits at once", &["--fail-start"][..]),
        (
            "new app crashes 300 ms in, before binding",
            &["--exit-after-ms", "300"][..],
        ),
    ] {
        site.configure(o.ready_ms, args);
        let run = site.deploy("crash", origin);
        let start = run.iter().find(|h| h.hook == "start").expect("start ran");
        let failed = run.last().expect("ran");
        assert!(!failed.ok, "the crashing deployment succeeded");
        crashes.push((
            "portswap",
            what,
            failed.started + failed.took - start.started,
        ));
    }
    site.stop_all(origin);
    (phase, crashes)
}

fn legacy_phase(
    o: &Options,
    origin: Instant,
) -> (Option<Phase>, Vec<(&'static str, &'static str, Duration)>) {
    let site = Site::new("legacy", &o.nginx, o.hook_logs.clone());
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

fn main() {
    if let Some(code) = supervised::when_asked() {
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
    let (new, mut crashes) = portswap_phase(&o, origin);
    let (old, legacy_crashes) = legacy_phase(&o, origin);
    crashes.extend(legacy_crashes);
    let report = Report {
        machine: machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        rate: o.rate,
        connections: o.connections,
        nginx: o.nginx.clone(),
        ready: Duration::from_millis(o.ready_ms),
        phases: std::iter::once(new).chain(old).collect(),
        crash_reports: crashes,
        binaries: binaries(),
    };
    print!("{}", report.table());
    match std::fs::write(&o.json, report.json()) {
        Ok(()) => println!("\nJSON: {}", o.json),
        Err(e) => eprintln!("bench: cannot write {}: {e}", o.json),
    }
}
