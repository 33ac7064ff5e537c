//! The systemd machine harness itself: boot, run inside, enabled unit back after reboot.

use std::time::{Duration, Instant};

use portswap_testkit::systemd::machine_or_skip;
use portswap_testkit::{free_port, net};

#[test]
fn boots_runs_reboots_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut machine) = machine_or_skip("boots_runs_reboots_and_cleans_up", &[dir.path()])
    else {
        return;
    };
    let boot = machine.booted_at().elapsed();
    println!("boot to running: {boot:?}");
    let port = free_port();
    let fixture = portswap_testkit::bin("fixture-app");
    machine.install_unit(
        "probe.service",
        &format!(
            "[Service]\nExecStart={} --port {port}\nRestart=on-failure\nRestartSec=100ms\n\
             [Install]\nWantedBy=multi-user.target\n",
            fixture.display()
        ),
    );
    net::wait_until(Duration::from_secs(5), "probe answers", || {
        net::http_get(port, "/health").is_ok()
    })
    .unwrap();
    // a file written inside a shared directory is seen outside
    machine.run_ok(&["touch", &dir.path().join("inside").to_string_lossy()]);
    assert!(dir.path().join("inside").exists());
    let cut = machine.power_cut().unwrap();
    println!("power cut: {cut:?}");
    assert!(net::http_get(port, "/health").is_err());
    let again = machine.boot_again().unwrap();
    let t = Instant::now();
    net::wait_until(Duration::from_secs(5), "probe answers after reboot", || {
        net::http_get(port, "/health").is_ok()
    })
    .unwrap();
    println!(
        "reboot: running after {again:?}, probe answered {:?} later",
        t.elapsed()
    );
    let off = machine.poweroff().unwrap();
    println!("poweroff: {off:?}");
    let base = machine.base().to_path_buf();
    drop(machine);
    assert!(!base.exists(), "base dir left behind");
}
