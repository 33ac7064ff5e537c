//! The systemd machine harness itself: boot, run inside, enabled unit back after reboot.

use std::time::{Duration, Instant};

use portswap_testkit::systemd::{machine_or_skip, refused, Machine, Network};
use portswap_testkit::{free_port, net, tools};

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

#[test]
fn a_private_network_is_fresh_at_every_boot_and_never_the_hosts() {
    let test = "a_private_network_is_fresh_at_every_boot_and_never_the_hosts";
    if !tools::need(test, &[&tools::IP]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut machine = match Machine::boot_with(&[dir.path()], Network::Private) {
        Ok(machine) => machine,
        Err(why) => return refused(test, &why),
    };
    let netns = |machine: &Machine| {
        std::fs::read_link(format!("/proc/{}/ns/net", machine.pid1().unwrap())).unwrap()
    };
    let first = netns(&machine);
    assert_ne!(first, std::fs::read_link("/proc/self/ns/net").unwrap());
    let links = machine.run_ok(&["ip", "-o", "link", "show"]);
    assert_eq!(links.lines().count(), 1, "only lo inside: {links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
    let port = free_port();
    let fixture = portswap_testkit::bin("fixture-app");
    machine.install_unit(
        "probe.service",
        &format!(
            "[Service]\nExecStart={} --port {port}\n[Install]\nWantedBy=multi-user.target\n",
            fixture.display()
        ),
    );
    let inside = || {
        net::wait_until(Duration::from_secs(5), "probe answers inside", || {
            net::http_get(port, "/health").is_ok()
        })
    };
    machine.in_net(inside).unwrap().unwrap();
    machine.run_ok(&["nft", "add", "table", "ip", "testkit_machine_probe"]);
    assert!(machine
        .run_ok(&["nft", "list", "tables"])
        .contains("testkit_machine_probe"));

    machine.power_cut().unwrap();
    assert!(machine.in_net(|| ()).is_none(), "no network while off");
    machine.boot_again().unwrap();
    assert_ne!(netns(&machine), first, "a reboot gets a fresh namespace");
    assert_eq!(
        machine.run_ok(&["nft", "list", "tables"]),
        "",
        "ruleset kept"
    );
    machine.in_net(inside).unwrap().unwrap();
}
