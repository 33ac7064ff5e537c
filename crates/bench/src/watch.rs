//! `bench --watch [N]`: the watch after a switch (issue 19), under steady load through a real
//! nginx. N deployments (default 20) of a version that goes bad after the switch, per case:
//! it starts failing (health check and every request answer 500) about 1 s after the switch;
//! it crashes 5 s after the switch under the process supervisor; the same under systemd (a
//! real systemd machine, `portswap_testkit::supervised`). For each: the time from the first
//! failed answer through nginx to the first request answered by the previous version through
//! nginx, the requests that failed in between, and those that failed after `switch` returned
//! (must be 0). Then a healthy version, N deployments with a watch and N without: what the
//! watch adds to the switch hook and to failed requests.
//!
//! Failed requests count behaviours 1 and 2 (a new connection per request, keep-alive that
//! retries once); behaviour 3 (keep-alive, no retry) also loses the connections nginx's
//! reload closes, which have nothing to do with the watch, and is shown apart.

use std::time::{Duration, Instant};

use portswap_testkit::nginx;
use portswap_testkit::supervised::SupervisedSite;

use crate::load::{Behaviour, Load, Outcome, Sample};
use crate::site::Site;
use crate::stats::Spread;

/// Load of this phase: requests per second over all clients, and clients per behaviour.
const RATE: u32 = 900;
const CLIENTS: u32 = 8;
/// The fixture app answers this long after it starts.
const READY_MS: u64 = 500;
/// The watch of the failing cases (longer than any failure takes to come).
const WATCH: &str = "watch:\n  duration: 12s\n  interval: 250ms\n";

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// One deployment's switch, as the figures need it.
struct Switch {
    /// When `switch` started and returned, since the load's origin.
    start: Duration,
    end: Duration,
    code: i32,
    verdict: String,
}

/// The figures of one failing deployment.
struct Rollback {
    /// Switch hook started → first failed answer through nginx (when the failure began).
    failure_after_switch: Duration,
    /// First failed answer → first answer by the previous version (sent after it).
    back: Duration,
    /// Requests (behaviours 1 and 2) sent in between that failed.
    failed_between: usize,
    /// Requests (behaviours 1 and 2) sent after `switch` returned that failed.
    failed_after: usize,
    /// Behaviour 3's failures in the same span as `failed_between`.
    no_retry_between: usize,
}

fn counted(b: Behaviour) -> bool {
    b != Behaviour::KeepAliveNoRetry
}

fn rollback_figures(
    samples: &[(Behaviour, Vec<Sample>)],
    s: &Switch,
    until: Duration,
    previous: &str,
) -> Option<Rollback> {
    let all = || {
        samples
            .iter()
            .flat_map(|(b, v)| v.iter().map(move |x| (*b, x)))
    };
    let within = |x: &Sample| x.sent >= s.start && x.sent <= s.end;
    let first_failed = all()
        .filter(|(b, x)| counted(*b) && within(x) && x.outcome.failure().is_some())
        .map(|(_, x)| x.done)
        .min()?;
    let back = all()
        .filter(|(_, x)| x.sent >= first_failed && x.outcome == Outcome::Ok(previous.into()))
        .map(|(_, x)| x.done)
        .min()?;
    let failed = |b: Behaviour, x: &Sample, from: Duration, to: Duration| {
        x.outcome.failure().is_some() && x.sent >= from && x.sent <= to && counted(b)
    };
    Some(Rollback {
        failure_after_switch: first_failed.saturating_sub(s.start),
        back: back - first_failed,
        failed_between: all()
            .filter(|(b, x)| failed(*b, x, first_failed, back))
            .count(),
        failed_after: all().filter(|(b, x)| failed(*b, x, s.end, until)).count(),
        no_retry_between: all()
            .filter(|(b, x)| {
                !counted(*b)
                    && x.outcome.failure().is_some()
                    && x.sent >= first_failed
                    && x.sent <= back
            })
            .count(),
    })
}

/// A host the phase deploys to: the sandboxed site (process supervisor) or a systemd machine.
trait Host {
    fn nginx_port(&self) -> u16;
    /// Writes portswap.yml: the fixture app with `args`, and `yaml` at the end.
    fn configure(&self, args: &[String], yaml: &str);
    /// Runs stop, start, health; true when all passed.
    fn prepare(&self, id: &str) -> bool;
    /// Runs switch; times since `origin`.
    fn switch(&self, id: &str, origin: Instant) -> Switch;
}

impl Host for Site {
    fn nginx_port(&self) -> u16 {
        self.nginx.port()
    }
    fn configure(&self, args: &[String], yaml: &str) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.configure_with(READY_MS, &args, yaml);
    }
    fn prepare(&self, id: &str) -> bool {
        let origin = Instant::now();
        ["stop", "start", "health"]
            .iter()
            .all(|h| self.hook(h, &[], id, origin).ok)
    }
    fn switch(&self, id: &str, origin: Instant) -> Switch {
        let run = self.hook("switch", &[], id, origin);
        Switch {
            start: run.started,
            end: run.started + run.took,
            code: if run.ok { 0 } else { 1 },
            verdict: run.verdict,
        }
    }
}

impl Host for SupervisedSite {
    fn nginx_port(&self) -> u16 {
        self.nginx_port
    }
    fn configure(&self, args: &[String], yaml: &str) {
        let mut all = vec!["--start-delay-ms".to_string(), READY_MS.to_string()];
        all.extend(args.iter().cloned());
        SupervisedSite::configure(self, &all, yaml);
    }
    fn prepare(&self, id: &str) -> bool {
        ["stop", "start", "health"]
            .iter()
            .all(|h| self.hook(h, &[], Some(id)).code == 0)
    }
    fn switch(&self, id: &str, origin: Instant) -> Switch {
        let start = origin.elapsed();
        let run = self.hook("switch", &[], Some(id));
        Switch {
            start,
            end: origin.elapsed(),
            code: run.code,
            verdict: run.verdict().to_string(),
        }
    }
}

/// `rounds` deployments of a version started with `bad_args`, each rolled back to `good`.
fn failing_case(
    host: &dyn Host,
    what: &str,
    bad_args: &dyn Fn(usize) -> Vec<String>,
    rounds: usize,
) -> Vec<Rollback> {
    host.configure(&[], "");
    assert!(
        host.prepare("good"),
        "{what}: the good version did not start"
    );
    let first = host.switch("good", Instant::now());
    assert_eq!(first.code, 0, "{what}: {}", first.verdict);
    let origin = Instant::now();
    let load = Load::start(host.nginx_port(), RATE, CLIENTS, origin);
    std::thread::sleep(Duration::from_millis(500));
    let mut switches = Vec::new();
    for i in 1..=rounds {
        let id = format!("bad-{i}");
        host.configure(&bad_args(i), WATCH);
        if !host.prepare(&id) {
            eprintln!("{what} {id}: did not get to switch");
            continue;
        }
        let s = host.switch(&id, origin);
        eprintln!("{what} {id}: {}", s.verdict);
        switches.push(s);
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(300));
    let samples = load.finish();
    // Failures "after switch returned" count until the next deployment's switch begins.
    let figures: Vec<Rollback> = switches
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.code != 0
                && s.verdict
                    .contains("traffic is back on the previous version")
        })
        .filter_map(|(i, s)| {
            let until = switches.get(i + 1).map_or(Duration::MAX, |n| n.start);
            rollback_figures(&samples, s, until, "good")
        })
        .collect();
    println!(
        "\n{what}: {} of {rounds} deployments rolled back and measured",
        figures.len()
    );
    figures
}

fn print_rollbacks(figures: &[Rollback]) {
    let spread =
        |f: fn(&Rollback) -> Duration| Spread::of(&figures.iter().map(f).collect::<Vec<_>>());
    let line =
        |what: &str, s: Spread| println!("  {what:<58} p50 {:>9}  max {:>9}", ms(s.p50), ms(s.max));
    line(
        "switch hook started -> first failed answer through nginx",
        spread(|r| r.failure_after_switch),
    );
    line(
        "first failed answer -> first answer by the previous version",
        spread(|r| r.back),
    );
    let counts = |f: fn(&Rollback) -> usize| {
        let v: Vec<usize> = figures.iter().map(f).collect();
        let mut sorted = v.clone();
        sorted.sort();
        (
            v.iter().sum::<usize>(),
            sorted.get(sorted.len() / 2).copied().unwrap_or(0),
            sorted.last().copied().unwrap_or(0),
        )
    };
    let (total, p50, max) = counts(|r| r.failed_between);
    println!("  failed requests in between (behaviours 1+2): {total} in all, per deployment p50 {p50}, max {max}");
    let (total, _, _) = counts(|r| r.failed_after);
    println!("  failed requests sent after switch returned (behaviours 1+2): {total}");
    let (total, _, _) = counts(|r| r.no_retry_between);
    println!("  behaviour 3 (keep-alive, no retry) failures in between: {total}");
}

/// A healthy version, `rounds` deployments with `watch` and `rounds` without.
fn healthy_case(site: &Site, rounds: usize, watch: Duration) {
    let yaml = format!("watch:\n  duration: {}ms\n", watch.as_millis());
    Host::configure(site, &[], "");
    assert!(site.prepare("h-0") && site.switch("h-0", Instant::now()).code == 0);
    let origin = Instant::now();
    let load = Load::start(site.nginx.port(), RATE, CLIENTS, origin);
    std::thread::sleep(Duration::from_millis(500));
    let mut runs: Vec<(bool, Switch)> = Vec::new();
    for i in 1..=rounds * 2 {
        let watched = i % 2 == 0;
        let id = format!("h-{i}");
        Host::configure(site, &[], if watched { &yaml } else { "" });
        assert!(site.prepare(&id), "healthy {id}: did not get to switch");
        let s = site.switch(&id, origin);
        assert_eq!(s.code, 0, "healthy {id}: {}", s.verdict);
        runs.push((watched, s));
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(300));
    let samples = load.finish();
    println!(
        "\nhealthy version, {rounds} deployments with watch.duration {} and {rounds} without:",
        ms(watch)
    );
    for watched in [false, true] {
        let mine: Vec<&Switch> = runs
            .iter()
            .filter(|(w, _)| *w == watched)
            .map(|(_, s)| s)
            .collect();
        let took = Spread::of(&mine.iter().map(|s| s.end - s.start).collect::<Vec<_>>());
        let failed = |keep: fn(Behaviour) -> bool| {
            samples
                .iter()
                .filter(|(b, _)| keep(*b))
                .flat_map(|(_, v)| v)
                .filter(|x| x.outcome.failure().is_some())
                .filter(|x| {
                    mine.iter()
                        .any(|s| x.sent >= s.start && x.sent <= s.end + Duration::from_millis(300))
                })
                .count()
        };
        println!(
            "  {:<14} switch p50 {:>10}  max {:>10}; failed requests during it: {} (behaviours 1+2), {} (behaviour 3)",
            if watched { "with watch" } else { "without watch" },
            ms(took.p50),
            ms(took.max),
            failed(counted),
            failed(|b| !counted(b)),
        );
    }
}

/// `bench --watch [N]`: runs it and returns the exit code; `None` when the command line asks
/// for something else.
pub fn when_asked() -> Option<i32> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("--watch") {
        return None;
    }
    let rounds = args.next().and_then(|n| n.parse().ok()).unwrap_or(20);
    run(rounds);
    Some(0)
}

/// The whole phase: the three failing cases, then the healthy one.
pub fn run(rounds: usize) {
    let site = || {
        Site::new(
            "watch",
            &nginx::nginx_binary(),
            &[],
            String::new(),
            None,
            None,
        )
    };
    // Ready 500 ms after start; `health` and `switch` follow at once: about 1 s after the
    // switch the version fails, or crashes 5 s after it.
    // The failure comes at a different point of the watch's 250 ms cadence each round
    // (+0..247 ms), so the time to notice it is sampled over the whole interval.
    let jitter = |i: usize| (i as u64 * 53) % 250;
    let failing = |i: usize| {
        let at = (READY_MS + 1_000 + jitter(i)).to_string();
        ["--unhealthy-after-ms", &at, "--errors-after-ms", &at]
            .map(String::from)
            .to_vec()
    };
    let crashing = |i: usize| {
        let at = (READY_MS + 5_000 + jitter(i)).to_string();
        ["--exit-after-ms", &at].map(String::from).to_vec()
    };
    let process = site();
    let health = failing_case(
        &process,
        "fails its health check ~1 s after the switch (process)",
        &failing,
        rounds,
    );
    print_rollbacks(&health);
    let process = site();
    let crash = failing_case(
        &process,
        "crashes 5 s after the switch (process)",
        &crashing,
        rounds,
    );
    print_rollbacks(&crash);
    match SupervisedSite::new() {
        Ok(machine) => {
            let crash = failing_case(
                &machine,
                "crashes 5 s after the switch (systemd)",
                &crashing,
                rounds,
            );
            print_rollbacks(&crash);
        }
        Err(why) => println!("\nSKIPPED crashes under systemd: no systemd machine here: {why}"),
    }
    healthy_case(&site(), rounds, Duration::from_secs(2));
}
