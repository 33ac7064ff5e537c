//! `switch.by: nftables`: a real nginx proxying to a fixed service port and a real `nft`
//! redirecting it to the live slot, each test in its own network namespace (never the host's
//! ruleset).

mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use portswap_testkit::net::read_response;
use portswap_testkit::netns::{self, isolated};
use support::{Settings, Site};

fn nftables_site() -> Site {
    nftables_site_with(|_| String::new())
}

/// A site in nftables mode whose nginx gets `http_extra(service port)` at `http` level.
fn nftables_site_with(http_extra: impl FnOnce(u16) -> String) -> Site {
    let settings = Settings {
        switch_by: Some("nftables"),
        ..Settings::default()
    };
    Site::with_nginx(settings, http_extra)
}

/// The redirect rule in the namespace: `(service port, slot)`, or `None`.
fn rule() -> Option<(u16, u16)> {
    support::redirect_in(&netns::nft(&["-n", "list", "table", "ip", "portswap"]).ok()?)
}

/// Sends `GET /` on a kept connection and returns the version that answered.
fn ask(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>) -> Result<String, String> {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let response = read_response(reader).map_err(|e| e.to_string())?;
    if response.status != 200 {
        return Err(format!("status {}", response.status));
    }
    Ok(response
        .header("X-App-Version")
        .unwrap_or("none")
        .to_string())
}

#[test]
fn deployments_switch_by_rule_without_reloading_nginx() {
    isolated("nftables deployments", || {
        let site = nftables_site();
        let [a, b] = site.ports;
        let service = site.service_port;

        let first = site.deploy("d-1").pop().unwrap().ok();
        assert!(
            first.last_line().contains("by nftables"),
            "{}",
            first.last_line()
        );
        assert_eq!(rule(), Some((service, a)));
        assert_eq!(
            site.included_port(),
            Some(service),
            "include names the service port"
        );
        assert_eq!(site.live_version().as_deref(), Some("d-1"));

        // From now on nginx is never reloaded: same workers, same include.
        let workers = site.nginx.worker_pids();
        let include = site.include_text();
        let mut kept = TcpStream::connect(("127.0.0.1", site.nginx.port())).unwrap();
        kept.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reader = BufReader::new(kept.try_clone().unwrap());
        assert_eq!(ask(&mut kept, &mut reader).as_deref(), Ok("d-1"));

        site.deploy_ok("d-2");
        assert_eq!(rule(), Some((service, b)));
        assert_eq!(site.nginx.worker_pids(), workers, "nginx was reloaded");
        assert_eq!(site.include_text(), include);
        for _ in 0..20 {
            assert_eq!(site.live_version().as_deref(), Some("d-2"));
        }
        // The client's kept connection survives and its next request reaches the new version.
        assert_eq!(ask(&mut kept, &mut reader).as_deref(), Ok("d-2"));

        let status = site.hook("switch", &["--status"], None).ok();
        assert!(
            status.stdout.contains(&format!("live port: {b}")),
            "{}",
            status.stdout
        );
        assert!(
            status.stdout.contains("switch by: nftables"),
            "{}",
            status.stdout
        );
        assert!(
            status
                .stdout
                .contains(&format!("tcp dport {service} redirect to :{b}")),
            "{}",
            status.stdout
        );

        let back = site.hook("switch", &["--rollback"], None).ok();
        assert!(
            back.last_line().contains(&format!("port {a}")),
            "{}",
            back.last_line()
        );
        assert_eq!(rule(), Some((service, a)));
        assert_eq!(ask(&mut kept, &mut reader).as_deref(), Ok("d-1"));
        assert_eq!(site.nginx.worker_pids(), workers);

        // The next deployment goes to the idle slot (b) again.
        site.deploy_ok("d-3");
        assert_eq!(rule(), Some((service, b)));
        assert_eq!(site.live_version().as_deref(), Some("d-3"));
        let history = std::fs::read_to_string(site.state().join("history.log")).unwrap();
        assert_eq!(history.lines().count(), 4, "{history}");
    });
}

/// Runs `command` with CAP_NET_ADMIN dropped from its bounding set: as root, it then starts
/// without that capability (and so does the `nft` it runs).
fn without_net_admin(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; it only changes this child's capability set.
    unsafe {
        command.pre_exec(|| {
            const CAP_NET_ADMIN: nix::libc::c_ulong = 12;
            if nix::libc::prctl(nix::libc::PR_CAPBSET_DROP, CAP_NET_ADMIN, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs `command` in its own mount namespace where the `nft` executable is hidden (a
/// character device bound over it, which is not executable).
fn without_nft(command: &mut std::process::Command) {
    let nft = std::fs::canonicalize(netns::nft_binary()).unwrap();
    portswap_testkit::tools::hide_from(command, vec![nft]);
}

#[test]
fn bad_input_is_refused_with_the_rule_unchanged() {
    isolated("nftables bad input", || {
        let site = nftables_site();
        let [a, _] = site.ports;
        let service = site.service_port;
        site.deploy_ok("d-1");
        site.run_until("d-2", "health");
        let before = rule();
        assert_eq!(before, Some((service, a)));
        let include = site.include_text();
        let unchanged = |what: &str| {
            assert_eq!(rule(), before, "{what}: rule changed");
            assert_eq!(site.include_text(), include, "{what}: include changed");
            assert_eq!(site.live_version().as_deref(), Some("d-1"), "{what}");
        };

        let squatter = std::net::TcpListener::bind(("127.0.0.1", service)).unwrap();
        site.hook("switch", &[], Some("d-2")).fails(
            4,
            &format!("port {service} (switch.service_port) is already listened on"),
        );
        drop(squatter);
        unchanged("service port taken");

        let out = site.hook_with("switch", &[], Some("d-2"), without_net_admin);
        let out = out.fails(1, "CAP_NET_ADMIN");
        assert!(
            out.last_line().contains("Operation not permitted"),
            "{}",
            out.last_line()
        );
        unchanged("no CAP_NET_ADMIN");

        site.hook_with("switch", &[], Some("d-2"), without_nft)
            .fails(1, "package `nftables`");
        unchanged("nft missing");

        std::fs::write(site.include(), "set $service_url http://127.0.0.1:1;\n").unwrap();
        site.hook("switch", &[], Some("d-2"))
            .fails(2, "sends traffic to port 1,");
        std::fs::write(site.include(), include.clone().unwrap()).unwrap();
        unchanged("include pointing elsewhere");

        // Each cause fixed: the same deployment switches.
        site.hook("switch", &[], Some("d-2")).ok();
        assert_eq!(site.live_version().as_deref(), Some("d-2"));
    });
}

#[test]
fn an_upstream_pool_on_the_service_port_is_refused() {
    isolated("nftables upstream pool", || {
        let site = nftables_site_with(|service| {
            format!("upstream pooled {{ server 127.0.0.1:{service}; keepalive 4; }}")
        });
        site.run_until("d-1", "health");
        let out = site
            .hook("switch", &[], Some("d-1"))
            .fails(1, "upstream pooled");
        assert!(
            out.last_line().contains("keepalive 0;"),
            "{}",
            out.last_line()
        );
        assert_eq!(rule(), None, "nothing changed");
        assert_eq!(site.include_text(), None, "nothing changed");
    });
}

/// An upstream{} block without `keepalive` pools from nginx 1.29.7 on (and is refused there),
/// not before. Checked against whichever nginx the test kit runs (PORTSWAP_TESTKIT_NGINX,
/// else the system's).
#[test]
fn an_upstream_block_without_keepalive_is_refused_where_nginx_pools_by_default() {
    isolated("nftables default upstream pool", || {
        let site = nftables_site_with(|service| {
            format!("upstream plain {{ server 127.0.0.1:{service}; }}")
        });
        let version = std::process::Command::new(site.nginx.nginx_path())
            .arg("-v")
            .output()
            .unwrap();
        let version = String::from_utf8_lossy(&version.stderr).trim().to_string();
        let pools = portswap::switcher::upstreams::pools_by_default(
            portswap::switcher::nginx_dump::parse_version(&version),
        );
        site.run_until("d-1", "health");
        let out = site.hook("switch", &[], Some("d-1"));
        if pools {
            out.fails(1, "on by default since nginx 1.29.7");
        } else {
            out.ok();
            assert_eq!(site.live_version().as_deref(), Some("d-1"), "{version}");
        }
        println!("{version}: an upstream block without keepalive pools: {pools}");
    });
}

#[test]
fn a_lost_ruleset_is_refused_until_restored_and_the_boot_unit_restores_it() {
    isolated("nftables reboot", || {
        let site = nftables_site();
        let [a, b] = site.ports;
        let service = site.service_port;
        site.deploy_ok("d-1");
        site.deploy_ok("d-2");
        assert_eq!(rule(), Some((service, b)));

        // What a reboot does to the kernel's ruleset.
        netns::nft(&["flush", "ruleset"]).unwrap();
        assert_eq!(site.live_version(), None, "nothing routes the service port");
        // No hook takes the recorded live slot for idle: stop would otherwise kill it.
        site.hook("stop", &[], Some("d-3"))
            .fails(2, "switch --restore");
        site.hook("switch", &[], Some("d-3"))
            .fails(2, "switch --restore");
        assert_eq!(site.version_on(b).as_deref(), Some("d-2"));
        assert_eq!(site.version_on(a).as_deref(), Some("d-1"));
        let status = site.hook("switch", &["--status"], None).ok();
        assert!(
            status.stdout.contains("switch --restore"),
            "{}",
            status.stdout
        );

        let restored = site.hook("switch", &["--restore"], None).ok();
        assert!(
            restored.last_line().contains("re-applied"),
            "{}",
            restored.last_line()
        );
        assert_eq!(rule(), Some((service, b)));
        assert_eq!(site.live_version().as_deref(), Some("d-2"));
        let again = site.hook("switch", &["--restore"], None).ok();
        assert!(
            again.last_line().contains("already in place"),
            "{}",
            again.last_line()
        );

        // The boot unit the first switch installed re-applies the rule the same way.
        let units = site.root().join("systemd");
        let unit = std::fs::read_to_string(units.join("portswap-redirect.service")).unwrap();
        assert!(unit.contains("Before=nginx.service"), "{unit}");
        for target in ["multi-user.target.wants", "nginx.service.wants"] {
            assert!(units
                .join(target)
                .join("portswap-redirect.service")
                .exists());
        }
        // The unit quotes each word for systemd (no word here has a space, `%` or `$`).
        let exec: Vec<&str> = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap()
            .split_whitespace()
            .map(|w| w.trim_matches('"'))
            .collect();
        netns::nft(&["flush", "ruleset"]).unwrap();
        let boot = std::process::Command::new(exec[0])
            .args(&exec[1..])
            .output()
            .unwrap();
        assert!(boot.status.success(), "{boot:?}");
        assert_eq!(rule(), Some((service, b)));
        assert_eq!(site.live_version().as_deref(), Some("d-2"));

        // With the rule back, the next deployment goes on as usual.
        site.deploy_ok("d-3");
        assert_eq!(rule(), Some((service, a)));
        assert_eq!(site.live_version().as_deref(), Some("d-3"));
    });
}

#[test]
fn switch_killed_at_random_moments_leaves_exactly_one_complete_rule() {
    use std::os::unix::process::CommandExt;
    const ITERATIONS: usize = 200;
    isolated("nftables kill loop", || {
        let site = nftables_site();
        let [a, b] = site.ports;
        let service = site.service_port;
        site.deploy_ok("d-1");
        site.run_until("d-2", "health");
        let mut rng = support::Rng::from_clock();
        let seed = rng.seed();
        let (mut killed, mut completed, mut flips) = (0, 0, 0);
        // Kills spread over the whole run of a switch (and a little past it).
        let started = std::time::Instant::now();
        site.hook("switch", &[], None).ok();
        let span = started.elapsed().as_micros() as u64 * 5 / 4;
        let mut previous = rule();
        for i in 0..ITERATIONS {
            let mut command = portswap_testkit::hooks::command("switch", &site.config_path());
            command
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .process_group(0);
            let mut child = command.spawn().unwrap();
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            // The fault: a kill of the hook and its nft child after a random delay.
            std::thread::sleep(Duration::from_micros(rng.below(span)));
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            let status = child.wait().unwrap();
            match status.code() {
                Some(0) => completed += 1,
                Some(code) => panic!("iteration {i} (seed {seed}): switch failed with {code}"),
                None => killed += 1,
            }
            let now = rule();
            assert!(
                now == Some((service, a)) || now == Some((service, b)),
                "iteration {i} (seed {seed}): rule {now:?}"
            );
            if now != previous {
                flips += 1;
                previous = now;
            }
        }
        println!(
            "{ITERATIONS} runs over {span} us: {killed} killed, {completed} completed, {flips} flips"
        );
        assert!(
            killed > 0 && flips > 0,
            "the loop must kill and switch: {killed} {flips}"
        );
        // A switch run to completion leaves the rule, the record and the traffic consistent,
        // and no temp file of a killed writer.
        site.hook("switch", &[], None).ok();
        assert_eq!(site.temp_files(), Vec::<std::path::PathBuf>::new());
        let (_, live) = rule().unwrap();
        assert_eq!(site.version_on(live), site.live_version());
        let status = site.hook("switch", &["--status"], None).ok();
        assert!(
            status.stdout.contains(&format!("live port: {live}")),
            "{}",
            status.stdout
        );
    });
}

#[test]
fn moving_between_reload_and_nftables_under_load_fails_no_request() {
    isolated("nftables mode moves", || {
        let mut site = Site::with(Settings {
            switch_by: Some("nginx-reload"),
            ..Settings::default()
        });
        let [a, b] = site.ports;
        let service = site.service_port;
        site.deploy_ok("d-1");
        site.deploy_ok("d-2");
        let traffic = site.traffic();

        site.set(|s| s.switch_by = Some("nftables"));
        site.deploy_ok("d-3");
        assert_eq!(rule(), Some((service, a)));
        assert_eq!(site.included_port(), Some(service));
        assert_eq!(site.live_version().as_deref(), Some("d-3"));
        site.deploy_ok("d-4");
        assert_eq!(rule(), Some((service, b)));
        assert_eq!(site.live_version().as_deref(), Some("d-4"));

        site.set(|s| s.switch_by = Some("nginx-reload"));
        let status = site.hook("switch", &["--status"], None).ok();
        assert!(
            status.stdout.contains(&format!("live port: {b}")),
            "{}",
            status.stdout
        );
        site.deploy_ok("d-5");
        assert_eq!(
            site.included_port(),
            Some(a),
            "back to the include naming a slot"
        );
        assert_eq!(site.live_version().as_deref(), Some("d-5"));
        site.deploy_ok("d-6");
        assert_eq!(site.included_port(), Some(b));
        assert_eq!(site.live_version().as_deref(), Some("d-6"));

        let seen = traffic.assert_no_errors();
        for version in ["d-2", "d-3", "d-4", "d-5", "d-6"] {
            assert!(
                seen.iter().any(|v| v == version),
                "no request reached {version}"
            );
        }
        println!(
            "{} requests through four deployments and two mode moves",
            seen.len()
        );
    });
}

/// The point of the mechanism: clients that keep their connection to nginx and never retry
/// (a load balancer) see no error across swaps, and each request after a swap returned reaches
/// the new version on the same connections.
#[test]
fn keepalive_clients_that_never_retry_see_no_error_across_swaps() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    isolated("nftables keep-alive swaps", || {
        let site = nftables_site();
        site.deploy_ok("d-1");
        site.run_until("d-2", "health");
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let (stop, port) = (stop.clone(), site.nginx.port());
                let answered = answered.clone();
                std::thread::spawn(move || {
                    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .unwrap();
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut answers = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let sent = std::time::Instant::now();
                        let answer = ask(&mut stream, &mut reader);
                        let failed = answer.is_err();
                        answers.push((sent, answer));
                        if failed {
                            break; // no retry: the connection is gone
                        }
                        answered.fetch_add(1, Ordering::SeqCst);
                        // Pacing: the kept connections sit idle across part of each swap.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    answers
                })
            })
            .collect();
        let versions = ["d-2", "d-1"];
        let mut returned = Vec::new();
        for i in 0..6 {
            // Pacing: swaps 100 ms apart, with requests on every kept connection between.
            std::thread::sleep(Duration::from_millis(100));
            let args: &[&str] = if i % 2 == 0 { &[] } else { &["--rollback"] };
            site.hook("switch", args, None).ok();
            returned.push((std::time::Instant::now(), versions[i % 2]));
        }
        // Every client gets requests answered after the last swap before the clients stop.
        let after_last = answered.load(Ordering::SeqCst);
        portswap_testkit::wait_until(
            Duration::from_secs(5),
            "requests after the last swap",
            || answered.load(Ordering::SeqCst) >= after_last + 8 * 10,
        )
        .unwrap();
        stop.store(true, Ordering::SeqCst);
        let mut total = 0;
        for client in clients {
            for (sent, answer) in client.join().unwrap() {
                total += 1;
                let version = answer.unwrap_or_else(|e| panic!("a kept connection failed: {e}"));
                // A request sent after the last swap returned reaches that swap's version.
                let after_the_last = returned.iter().all(|(t, _)| *t < sent);
                if let (Some((_, live)), true) = (returned.last(), after_the_last) {
                    assert_eq!(
                        &version, live,
                        "sent after the last swap, answered by another"
                    );
                }
            }
        }
        assert!(total > 100, "only {total} requests");
    });
}

#[test]
fn in_reload_mode_an_include_naming_the_service_port_without_a_rule_is_taken_over() {
    // Without portswap's rule the service port is what it is on a book-style host: a port
    // that is not a slot, a version portswap does not manage; the switch takes over from it
    // by reloading nginx and never writes a rule.
    isolated("reload mode, include on the service port", || {
        let site = Site::with(Settings {
            switch_by: Some("nginx-reload"),
            ..Settings::default()
        });
        site.run_until("d-1", "health");
        let line = format!("set $service_url http://127.0.0.1:{};\n", site.service_port);
        std::fs::write(site.include(), &line).unwrap();
        let out = site.hook("switch", &[], Some("d-1")).ok();
        assert!(
            out.last_line()
                .contains(&format!("took over from port {}", site.service_port)),
            "{}",
            out.last_line()
        );
        assert_ne!(site.include_text().as_deref(), Some(line.as_str()));
        assert_eq!(rule(), None);
        assert_eq!(site.live_version().as_deref(), Some("d-1"));
    });
}

#[test]
fn a_failure_after_the_transaction_puts_the_previous_rule_back() {
    isolated("nftables put back", || {
        let site = nftables_site();
        let [a, b] = site.ports;
        let service = site.service_port;
        site.deploy_ok("d-1");
        // d-2 listens on b, but a rule of another table drops what reaches b (the health
        // check is skipped with --force, which still needs a listener): the rule takes, the
        // probe through the service port gets no answer.
        for hook in ["stop", "start"] {
            site.hook(hook, &[], Some("d-2")).ok();
        }
        let drop = format!(
            "table ip testkit_drop {{\n  chain input {{\n    type filter hook input priority 0;\n    \
             tcp dport {b} drop\n  }}\n}}\n"
        );
        std::fs::write(site.root().join("drop.nft"), drop).unwrap();
        netns::nft(&["-f", &site.root().join("drop.nft").display().to_string()]).unwrap();
        let out = site.hook("switch", &["--force"], None).fails(1, "failed");
        assert!(
            out.last_line().contains(&service.to_string()),
            "{}",
            out.last_line()
        );
        assert!(
            out.stderr.contains(&format!(
                "restored the rule `ip daddr 127.0.0.1 tcp dport {service} redirect to :{a}`"
            )),
            "{}",
            out.stderr
        );
        assert_eq!(rule(), Some((service, a)));
        assert_eq!(site.live_version().as_deref(), Some("d-1"));
    });
}

#[test]
fn a_rejected_first_reload_removes_the_new_rule_and_restores_the_include() {
    isolated("nftables first reload fails", || {
        let mut site = nftables_site();
        site.set(|s| s.test_command = Some(vec!["false".into()]));
        site.run_until("d-1", "health");
        site.hook("switch", &[], Some("d-1"))
            .fails(1, "nginx config test");
        assert_eq!(rule(), None, "the table is gone again");
        assert_eq!(site.include_text(), None, "no include, as before");
    });
}

/// Issue 15 item 2: the first switch into nftables mode killed after the include names the
/// service port and before nginx's reload. The file then says "behind the redirect" while
/// nginx still proxies to the old slot directly: the re-run must reload nginx (decide from
/// what nginx loaded, not from the file), or the next `stop` would cut nginx off.
#[test]
fn a_first_nftables_switch_killed_before_the_reload_is_completed_by_a_rerun_that_reloads() {
    isolated("nftables first switch cut short", || {
        let mut site = Site::with(Settings {
            switch_by: Some("nginx-reload"),
            ..Settings::default()
        });
        let [a, b] = site.ports;
        let service = site.service_port;
        site.deploy_ok("d-1");
        site.set(|s| s.switch_by = Some("nftables"));
        site.run_until("d-2", "health");
        // A slow config test holds the switch between the include write and the reload.
        site.set_key("nginx", "test_command", "[\"sleep\", \"2\"]");
        let mut child = portswap_testkit::hooks::command("switch", &site.config_path())
            .env("DEPLOYMENT_ID", "d-2")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        support::wait(
            Duration::from_secs(10),
            "the include names the service port",
            || site.included_port() == Some(service),
        );
        child.kill().unwrap();
        child.wait().unwrap();
        site.write_config();
        assert_eq!(rule(), Some((service, b)));
        assert_eq!(
            site.live_version().as_deref(),
            Some("d-1"),
            "nginx not reloaded"
        );

        let out = site.hook("switch", &[], Some("d-2")).ok();
        assert!(out.last_line().contains("cut short"), "{}", out.last_line());
        support::wait(Duration::from_secs(5), "nginx serves d-2", || {
            site.live_version().as_deref() == Some("d-2")
        });
        // nginx goes through the redirect now: the next deployment moves it by rule alone.
        site.deploy_ok("d-3");
        assert_eq!(rule(), Some((service, a)));
        for _ in 0..10 {
            assert_eq!(site.live_version().as_deref(), Some("d-3"));
        }
    });
}

/// The ephemeral ports of this namespace (`net.ipv4.ip_local_port_range` is per namespace):
/// few enough that every one of them can be given a TIME_WAIT socket on a slot.
const NARROW_RANGE: std::ops::RangeInclusive<u16> = 40000..=40063;

fn narrow_the_ephemeral_ports() {
    std::fs::write(
        "/proc/sys/net/ipv4/ip_local_port_range",
        format!("{} {}", NARROW_RANGE.start(), NARROW_RANGE.end()),
    )
    .unwrap();
}

/// One HTTP/1.0 request to 127.0.0.1:`slot` from 127.0.0.1:`from` (0: any port), read to
/// the end: the app answers and closes first, so the slot keeps a TIME_WAIT socket of exactly
/// these ports (as behind the example server block, HTTP/1.0 to the upstream).
fn app_closes_first(slot: u16, from: u16) -> std::io::Result<()> {
    use std::io::Read;
    let mut stream = connected_from(slot, from)?;
    stream.write_all(b"GET /health HTTP/1.0\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(())
}

/// A connection to 127.0.0.1:`port` from 127.0.0.1:`from` (0: any port), reads bounded.
fn connected_from(port: u16, from: u16) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{
        bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    bind(raw, &SockaddrIn::new(127, 0, 0, 1, from))?;
    connect(raw, &SockaddrIn::new(127, 0, 0, 1, port))?;
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

/// Issue 15 item 5: under load, the confirmation probe's own port was used moments ago by
/// another client of the service port, redirected to the live slot, whose app closed first
/// (nginx's HTTP/1.0 to the upstream): that slot holds a TIME_WAIT socket with the probe's
/// exact ports. Only the probe's own connection counts: every switch succeeds. Clients that
/// connect to the slots directly from the same ports (health probes) make NAT change the
/// probe's port on the way; that too is followed.
#[test]
fn time_wait_sockets_of_the_probes_ports_on_the_old_slot_do_not_fail_the_switch() {
    isolated("nftables probe under TIME_WAIT", || {
        narrow_the_ephemeral_ports();
        let site = nftables_site();
        let service = site.service_port;
        site.deploy_ok("d-1");
        // Load: HTTP/1.0 clients, each closed by the app first, through the service port and
        // on both slots directly (not through nginx: its upstream connections, closed by
        // nginx, would use up the few ports towards the service port).
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = {
            let (stop, [a, b]) = (stop.clone(), site.ports);
            std::thread::spawn(move || {
                let mut requests = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for port in [service, a, b] {
                        requests += u64::from(app_closes_first(port, 0).is_ok());
                    }
                }
                requests
            })
        };
        for (i, id) in ["d-2", "d-3", "d-4", "d-5"].into_iter().enumerate() {
            // Every ephemeral port has a TIME_WAIT socket on the live slot, whatever port the
            // probe gets.
            let filled = NARROW_RANGE
                .filter(|p| app_closes_first(service, *p).is_ok())
                .count();
            assert!(
                filled > NARROW_RANGE.len() / 2,
                "only {filled} ports filled"
            );
            site.deploy_ok(id);
            let want = site.ports[(i + 1) % 2];
            assert_eq!(rule(), Some((service, want)), "{id}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let requests = load.join().unwrap();
        assert_eq!(site.live_version().as_deref(), Some("d-5"));
        println!(
            "4 switches with a TIME_WAIT on every ephemeral port of the live slot, {requests} \
             HTTP/1.0 requests beside them"
        );
    });
}

/// One HTTP/1.0 `GET /` to 127.0.0.1:`port` from 127.0.0.1:`from`: the version that
/// answered (`X-App-Version`).
fn version_from(port: u16, from: u16) -> Result<String, String> {
    let mut stream = connected_from(port, from).map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let response =
        read_response(&mut BufReader::new(stream)).map_err(|e| format!("answer: {e}"))?;
    Ok(response
        .header("X-App-Version")
        .unwrap_or("none")
        .to_string())
}

/// Issue 15 item 6: the old version ends some connections with a RST; conntrack keeps their
/// entries 10 s and a new connection from the same client port would reopen one onto the
/// old slot, whatever the rule says. After an OK switch, no new connection reaches the old
/// version: neither one reusing the port of a connection reset before the switch, nor one
/// under load reusing the port of a request in flight at the switch and reset after it.
#[test]
fn after_an_ok_switch_no_new_connection_reaches_the_old_version_despite_resets() {
    isolated("nftables stale conntrack", || {
        let site = Site::with(Settings {
            switch_by: Some("nftables"),
            app_args: vec!["--reset-every".into(), "3".into()],
            ..Settings::default()
        });
        let [a, _] = site.ports;
        let service = site.service_port;
        site.deploy_ok("d-1");
        site.run_until("d-2", "health");
        // Right before the switch (a CLOSE entry lives 10 s): connections from these ports,
        // every third one reset by d-1.
        let reused: Vec<u16> = (0..24).map(|_| portswap_testkit::free_port()).collect();
        for &p in &reused {
            assert_eq!(version_from(service, p).as_deref(), Ok("d-1"));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let stale = portswap::conntrack::to_port(service, deadline)
            .unwrap()
            .into_iter()
            .filter(|e| e.answered_by == a && e.state == portswap::conntrack::TcpState::Reset)
            .count();
        assert!(stale >= reused.len() / 4, "only {stale} reset entries");

        // Load on other client ports, each used again and again, through the switch.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let loaders: Vec<_> = (0..4)
            .map(|_| {
                let ports: Vec<u16> = (0..8).map(|_| portswap_testkit::free_port()).collect();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        for &p in &ports {
                            let sent = std::time::Instant::now();
                            seen.push((sent, version_from(service, p)));
                        }
                    }
                    seen
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let switch = site.hook("switch", &[], Some("d-2")).ok();
        let returned = std::time::Instant::now();
        let cleaned = switch.stderr.lines().find(|l| l.contains("conntrack"));
        println!("{}", cleaned.unwrap_or(switch.last_line()));
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen: Vec<_> = loaders
            .into_iter()
            .flat_map(|l| l.join().unwrap())
            .collect();

        let reopened: Vec<u16> = reused
            .iter()
            .copied()
            .filter(|p| version_from(service, *p).as_deref() != Ok("d-2"))
            .collect();
        assert_eq!(
            reopened,
            Vec::<u16>::new(),
            "ports that reached the old version"
        );
        // A client port still in this side's TIME_WAIT cannot connect again at once
        // (`connect: ...`): no request, no answer.
        let after: Vec<_> = seen
            .iter()
            .filter(|(sent, v)| {
                *sent > returned && !v.as_ref().is_err_and(|e| e.starts_with("connect:"))
            })
            .collect();
        let old: Vec<_> = after
            .iter()
            .filter(|(_, v)| v.as_deref() != Ok("d-2"))
            .map(|(_, v)| v.clone())
            .collect();
        println!(
            "{stale} reset entries before the switch; {} requests under load, {} sent after \
             the switch returned, {} of them not answered by d-2",
            seen.len(),
            after.len(),
            old.len()
        );
        assert!(!after.is_empty());
        assert_eq!(
            old,
            Vec::<Result<String, String>>::new(),
            "after the switch"
        );
    });
}

/// The pid of a child of `parent` whose command line contains `needle`, when one runs.
fn child_running(parent: i32, needle: &str) -> Option<i32> {
    let children =
        std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            })
        })
}

/// Issue 15 item 10: `nft` hangs (here: the real one, stopped by SIGSTOP in the middle of the
/// switch's transaction). The switch kills it after its limit, puts the previous rule back
/// and fails with the command named, well within the budget `portswap-bundle` checks.
#[test]
fn a_hung_nft_is_killed_after_its_limit_and_the_rule_is_put_back() {
    isolated("nftables hung nft", || {
        let site = nftables_site();
        let service = site.service_port;
        site.deploy_ok("d-1");
        site.run_until("d-2", "health");
        for attempt in 0..20 {
            let before = rule();
            let mut switch = portswap_testkit::hooks::command("switch", &site.config_path())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let pid = switch.id() as i32;
            let started = std::time::Instant::now();
            // Catch the transaction (`nft -f -`) while it runs.
            let mut stopped = None;
            while stopped.is_none() && started.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = switch.try_wait() {
                    break;
                }
                if let Some(nft) = child_running(pid, "-f -") {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(nft),
                        nix::sys::signal::Signal::SIGSTOP,
                    );
                    stopped = Some(nft);
                }
            }
            let status = loop {
                if let Some(status) = switch.try_wait().unwrap() {
                    break status;
                }
                if started.elapsed() > Duration::from_secs(20) {
                    let _ = switch.kill();
                    panic!("switch still runs after 20 s with nft stopped");
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            let took = started.elapsed();
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut switch.stderr.take().unwrap(), &mut stderr).unwrap();
            let Some(nft) = stopped else {
                // Missed it: the switch ran to its end; try again from where it left.
                assert!(status.success(), "{stderr}");
                continue;
            };
            let verdict = stderr.lines().last().unwrap_or("");
            assert_eq!(status.code(), Some(1), "{stderr}");
            assert!(
                verdict.contains("nft -f -") && verdict.contains("did not finish within 2s"),
                "{verdict}"
            );
            assert!(took < Duration::from_secs(5), "took {took:?}");
            assert_eq!(rule(), before, "the previous rule is back");
            assert!(
                !std::path::Path::new(&format!("/proc/{nft}")).exists()
                    || std::fs::read_to_string(format!("/proc/{nft}/stat"))
                        .is_ok_and(|s| s.contains(") Z")),
                "the stopped nft was killed"
            );
            println!("attempt {attempt}: {verdict} (after {took:?})");
            // A switch after it works.
            site.hook("switch", &[], None).ok();
            assert_ne!(rule(), before);
            assert_eq!(rule().map(|r| r.0), Some(service));
            return;
        }
        panic!("never caught the switch's nft running");
    });
}
