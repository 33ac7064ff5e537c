//! `bench --supervised [ROUNDS]`: what systemd supervision buys, measured against a real
//! systemd (PID 1 of private namespaces, `portswap_testkit::systemd`) with nginx as a unit
//! and the hooks run inside: after two deployments, ROUNDS times `kill -9` of the live app
//! (crash to serving again through nginx), then ROUNDS power cuts (boot began to serving the
//! live version again, with no deployment). Prints min / median / max of each. The unit's
//! start limit is reset between crash rounds (they come faster than 5 a minute).

use std::time::{Duration, Instant};

use portswap_testkit::net;
use portswap_testkit::supervised::SupervisedSite;

use crate::stats::Spread;

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn line(what: &str, values: &[Duration]) {
    let s = Spread::of(values);
    println!(
        "  {what:<34} n={:<3} min {:>7}  median {:>7}  max {:>7}",
        values.len(),
        ms(s.min),
        ms(s.p50),
        ms(s.max)
    );
}

/// `bench --supervised [ROUNDS]` (default 10): runs it and returns the exit code; `None`
/// when the command line asks for something else.
pub fn when_asked() -> Option<i32> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("--supervised") {
        return None;
    }
    let rounds = args.next().and_then(|n| n.parse().ok()).unwrap_or(10);
    Some(match run(rounds) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench --supervised: {e}");
            1
        }
    })
}

/// Runs the measurement; `Err` says why it could not (e.g. no systemd machine here).
pub fn run(rounds: usize) -> Result<(), String> {
    let mut site = SupervisedSite::new()?;
    let boot = site.machine.booted_at().elapsed();
    for id in ["bench-1", "bench-2"] {
        for run in site.deploy(id) {
            if run.code != 0 {
                return Err(format!("deployment {id}: {}", run.verdict()));
            }
        }
    }
    let live = site
        .live_port()
        .ok_or("no live port after two deployments")?;
    let serving = |site: &SupervisedSite| site.live_version().as_deref() == Some("bench-2");
    let mut crash = Vec::new();
    let unit = site.unit(live);
    for _ in 0..rounds {
        // Rounds come faster than a real crash loop: clear the start limit (5 per minute).
        site.machine.run_ok(&["systemctl", "reset-failed", &unit]);
        let victim = site.main_pid(live).to_string();
        let started = Instant::now();
        site.machine.run_ok(&["kill", "-9", &victim]);
        net::wait_until(Duration::from_secs(10), "serving after kill -9", || {
            serving(&site)
        })?;
        crash.push(started.elapsed());
    }
    let mut reboot = Vec::new();
    let mut to_running = Vec::new();
    for _ in 0..rounds {
        site.machine.power_cut()?;
        to_running.push(site.machine.boot_again()?);
        let began = site.machine.booted_at();
        net::wait_until(Duration::from_secs(20), "serving after boot", || {
            serving(&site)
        })?;
        reboot.push(began.elapsed());
    }
    println!(
        "\nsystemd supervisor (first boot to `running`: {})",
        ms(boot)
    );
    line("kill -9 of the live app -> serving", &crash);
    line("boot began -> systemd running", &to_running);
    line("boot began -> live version serving", &reboot);
    Ok(())
}
