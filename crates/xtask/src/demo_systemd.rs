//! The demo's systemd part: the same hooks with the app under a real systemd (PID 1 of
//! private namespaces, `portswap_testkit::systemd`, nginx as a unit), then a crash of the
//! live app and a reboot, each with the time until the site serves again.

use std::time::{Duration, Instant};

use portswap_testkit::net;
use portswap_testkit::supervised::SupervisedSite;

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// Runs the systemd part, or says why this machine cannot show it.
pub fn run() -> Result<(), String> {
    println!("\nsystemd supervisor");
    let mut site = match SupervisedSite::new() {
        Ok(site) => site,
        Err(why) => {
            println!("  not shown here: {why}");
            println!("  (it needs root with CAP_SYS_ADMIN to boot systemd in private namespaces)");
            return Ok(());
        }
    };
    println!(
        "  booted systemd as PID 1 of private namespaces in {} (nginx runs as a unit)",
        ms(site.machine.booted_at().elapsed())
    );
    for id in ["sd-1", "sd-2"] {
        for run in site.deploy(id) {
            println!("  {:<7} {}", run.hook, run.verdict());
            if run.code != 0 {
                return Err(format!("deployment {id} failed"));
            }
        }
    }
    let status = site.hook("switch", &["--status"], None);
    for line in status.stdout.lines() {
        println!("  | {line}");
    }
    let live = site.live_port().ok_or("no live port")?;
    let serving = |site: &SupervisedSite| site.live_version().as_deref() == Some("sd-2");
    let victim = site.main_pid(live);
    let started = Instant::now();
    site.machine.run_ok(&["kill", "-9", &victim.to_string()]);
    net::wait_until(Duration::from_secs(10), "serving after the crash", || {
        serving(&site)
    })?;
    println!(
        "  kill -9 of the live app (pid {victim}): systemd restarted it, nginx serves sd-2 again after {}",
        ms(started.elapsed())
    );
    site.machine.power_cut()?;
    println!(
        "  power cut: nothing answers: {}",
        site.live_version().is_none()
    );
    let running = site.machine.boot_again()?;
    let began = site.machine.booted_at();
    net::wait_until(Duration::from_secs(20), "serving after the reboot", || {
        serving(&site)
    })?;
    println!(
        "  reboot: systemd running after {}, sd-2 served after {} with no deployment",
        ms(running),
        ms(began.elapsed())
    );
    let rollback = site.hook("switch", &["--rollback"], None);
    println!("  switch --rollback: {}", rollback.verdict());
    Ok(())
}
