//! `switch.by: nftables` across a reboot (issue 11, way 2), on a real systemd (PID 1 of
//! private namespaces, testkit::systemd) in its own network namespace: the kernel's ruleset
//! is the machine's, lost at every boot, never the host's. The boot unit the first switch
//! installs (`portswap-redirect.service`) must put the redirect back before nginx starts.

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use portswap_testkit::net;
use portswap_testkit::netns;
use portswap_testkit::supervised::{HookRun, SupervisedSite};
use portswap_testkit::systemd::refused;
use support::{monotonic_us, redirect_in};

const REDIRECT_UNIT: &str = "portswap-redirect.service";
/// What Debian's `/etc/nftables.conf` does first: a firewall unit that flushes the ruleset.
const FIREWALL: &str = "flush ruleset\n\
    table inet filter {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t}\n}\n";

fn succeeded(run: &HookRun) {
    assert_eq!(run.code, 0, "{} failed:\n{}", run.hook, run.stderr);
}

/// The redirect rule in the machine's ruleset: `(service port, slot)`, or `None`.
fn rule(site: &SupervisedSite) -> Option<(u16, u16)> {
    let out = site
        .machine
        .run(&["nft", "-n", "list", "table", "ip", "portswap"]);
    redirect_in(&String::from_utf8_lossy(&out.stdout))
}

/// A `*TimestampMonotonic` property of a unit inside, in microseconds (0: never).
fn stamp(site: &SupervisedSite, unit: &str, property: &str) -> u64 {
    let value = site.machine.unit_property(unit, property);
    value
        .parse()
        .unwrap_or_else(|_| panic!("{unit} {property}: `{value}`"))
}

/// The version the app on `port` answers with, asked directly (not through nginx).
fn version_on(site: &SupervisedSite, port: u16) -> Option<String> {
    let r = site.machine.in_net(|| net::http_get(port, "/"))?.ok()?;
    r.header("X-App-Version").map(str::to_string)
}

#[test]
fn after_a_power_cut_the_boot_unit_redirects_to_the_live_slot_before_nginx_starts() {
    let test = "after_a_power_cut_the_boot_unit_redirects_to_the_live_slot_before_nginx_starts";
    let mut site = match SupervisedSite::with_private_net() {
        Ok(site) => site,
        Err(why) => return refused(test, &why),
    };
    let host_had_table = netns::nft(&["list", "tables"]).is_ok_and(|t| t.contains(" portswap"));
    // The distribution's firewall unit is enabled and flushes the ruleset at boot (the case
    // the boot unit's After=nftables.service is for).
    let firewall = site.root().join("nftables.conf");
    fs::write(&firewall, FIREWALL).unwrap();
    site.machine
        .run_ok(&["cp", &firewall.to_string_lossy(), "/etc/nftables.conf"]);
    site.machine
        .run_ok(&["systemctl", "enable", "nftables.service"]);
    // switch.boot_unit_dir is left at its default, the machine's /etc/systemd/system.
    site.configure(&[] as &[&str], "switch:\n  by: nftables\n");
    for id in ["n-1", "n-2"] {
        site.deploy(id).iter().for_each(succeeded);
    }
    let [idle, live] = site.ports;
    let service = rule(&site)
        .expect("no redirect rule after two deployments")
        .0;
    assert_eq!(rule(&site), Some((service, live)));
    assert_eq!(site.live_version().as_deref(), Some("n-2"));
    let unit = site
        .machine
        .read_file(Path::new(&format!("/etc/systemd/system/{REDIRECT_UNIT}")))
        .expect("the first switch installs the boot unit");
    assert!(unit.contains("Before=nginx.service"), "{unit}");

    site.machine.power_cut().unwrap();
    let cut_at = monotonic_us();
    site.machine.boot_again().unwrap();
    let boot = site.machine.booted_at();
    // No hook runs from here on until the checks are done.
    net::wait_until(
        Duration::from_secs(10),
        "the live version through nginx after the reboot",
        || site.live_version().as_deref() == Some("n-2"),
    )
    .unwrap_or_else(|e| {
        let journal = site
            .machine
            .run(&["journalctl", "-b", "--no-pager", "-q", "-n", "60"]);
        panic!("{e}\n{}", String::from_utf8_lossy(&journal.stdout))
    });
    let serving = boot.elapsed();
    println!("power cut, boot: live version served through nginx {serving:?} after boot began");
    assert!(serving < Duration::from_secs(5), "took {serving:?}");
    assert_eq!(
        rule(&site),
        Some((service, live)),
        "the rule after the reboot"
    );

    let property = |unit: &str, p: &str| site.machine.unit_property(unit, p);
    assert_eq!(property(REDIRECT_UNIT, "Result"), "success");
    assert_eq!(property(REDIRECT_UNIT, "ActiveState"), "active");
    assert_eq!(property(REDIRECT_UNIT, "ExecMainStatus"), "0");
    let firewall_done = stamp(&site, "nftables.service", "ExecMainExitTimestampMonotonic");
    let redirect_began = stamp(&site, REDIRECT_UNIT, "ExecMainStartTimestampMonotonic");
    let redirect_done = stamp(&site, REDIRECT_UNIT, "ExecMainExitTimestampMonotonic");
    let nginx_began = stamp(&site, site.nginx_unit, "InactiveExitTimestampMonotonic");
    println!(
        "after boot began: firewall flushed +{}ms, redirect ran +{}..+{}ms, nginx started +{}ms",
        firewall_done.saturating_sub(cut_at) / 1000,
        redirect_began.saturating_sub(cut_at) / 1000,
        redirect_done.saturating_sub(cut_at) / 1000,
        nginx_began.saturating_sub(cut_at) / 1000,
    );
    assert_eq!(property("nftables.service", "Result"), "success");
    assert!(
        firewall_done > cut_at,
        "the firewall unit did not run in this boot"
    );
    assert!(
        redirect_began >= firewall_done,
        "the redirect ran before the firewall flushed the ruleset"
    );
    assert!(
        redirect_done > cut_at,
        "{REDIRECT_UNIT} did not run in this boot"
    );
    assert!(
        nginx_began >= redirect_done,
        "nginx started ({nginx_began}) before {REDIRECT_UNIT} finished ({redirect_done})"
    );
    // Both apps are back under systemd: the previous version is warm for a rollback.
    assert_eq!(version_on(&site, idle).as_deref(), Some("n-1"));
    assert_eq!(version_on(&site, live).as_deref(), Some("n-2"));
    let rollback = site.hook("switch", &["--rollback"], None);
    succeeded(&rollback);
    assert_eq!(rule(&site), Some((service, idle)));
    assert_eq!(site.live_version().as_deref(), Some("n-1"));

    if !host_had_table {
        let host = netns::nft(&["list", "tables"]).unwrap_or_default();
        assert!(
            !host.contains(" portswap"),
            "the rule leaked to the host: {host}"
        );
    }
}

/// Issue 15: Debian's nftables.service starts (and reloads) its ruleset with `flush ruleset`;
/// a restart or reload of it at run time must not leave nginx proxying to a service port
/// nothing redirects. And a state directory whose path needs quoting in a unit (a space, a
/// `%`) still gets its rule back at boot.
#[test]
fn the_redirect_survives_a_restart_and_reload_of_nftables_service_and_odd_state_paths() {
    let test = "the_redirect_survives_a_restart_and_reload_of_nftables_service_and_odd_state_paths";
    let mut site = match SupervisedSite::with_private_net() {
        Ok(site) => site,
        Err(why) => return refused(test, &why),
    };
    let firewall = site.root().join("nftables.conf");
    fs::write(&firewall, FIREWALL).unwrap();
    site.machine
        .run_ok(&["cp", &firewall.to_string_lossy(), "/etc/nftables.conf"]);
    site.machine
        .run_ok(&["systemctl", "enable", "--now", "nftables.service"]);
    site.configure(&[] as &[&str], "switch:\n  by: nftables\n");
    let odd = site.root().join("my state 100%");
    let text = fs::read_to_string(site.config()).unwrap().replace(
        "  dir: state\n",
        &format!("  dir: {:?}\n", odd.display().to_string()),
    );
    fs::write(site.config(), text).unwrap();
    for id in ["r-1", "r-2"] {
        site.deploy(id).iter().for_each(succeeded);
    }
    let live = site.ports[1];
    let service = rule(&site)
        .expect("no redirect rule after two deployments")
        .0;
    let journal = |site: &SupervisedSite| {
        let out = site
            .machine
            .run(&["journalctl", "-b", "--no-pager", "-q", "-n", "40"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for action in ["restart", "reload"] {
        site.machine
            .run_ok(&["systemctl", action, "nftables.service"]);
        net::wait_until(
            Duration::from_secs(5),
            &format!("the rule back after `systemctl {action} nftables.service`"),
            || rule(&site) == Some((service, live)),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", journal(&site)));
        assert_eq!(
            site.live_version().as_deref(),
            Some("r-2"),
            "after `systemctl {action} nftables.service`"
        );
    }
    assert_eq!(
        site.machine.unit_property(REDIRECT_UNIT, "Result"),
        "success",
        "{}",
        journal(&site)
    );
    // The unit's quoted paths work at boot too.
    site.machine.power_cut().unwrap();
    site.machine.boot_again().unwrap();
    net::wait_until(
        Duration::from_secs(10),
        "the live version through nginx after the reboot",
        || site.live_version().as_deref() == Some("r-2"),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", journal(&site)));
    assert_eq!(rule(&site), Some((service, live)));
}
