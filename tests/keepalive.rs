//! What a switch does to idle keep-alive clients, read from nginx itself: the system nginx
//! (a distribution package, before 1.27.4 on Debian 12) closes them on every reload;
//! nginx >= 1.27.4 with `keepalive_min_timeout` (from PORTSWAP_TESTKIT_NGINX, SKIPPED when
//! unset) keeps them for one more request, and `switch` waits until they are answered.

mod support;

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use portswap_testkit::net::read_response;
use portswap_testkit::netns::isolated;
use portswap_testkit::nginx::{newer_nginx_or_skip, nginx_binary, process_title};
use support::{wait, Settings, Site};

/// `1.22.1` from `<nginx> -v`.
fn version_of(nginx: &Path) -> String {
    let out = Command::new(nginx).arg("-v").output().expect("nginx -v");
    let text = String::from_utf8_lossy(&out.stderr);
    let version = text.trim().rsplit('/').next().unwrap_or("");
    version.split_whitespace().next().unwrap_or("").to_string()
}

fn status(site: &Site) -> String {
    let out = site.hook("switch", &["--status"], None).ok();
    out.stdout
        .lines()
        .find(|l| l.starts_with("keep-alive clients:"))
        .unwrap_or_else(|| panic!("no keep-alive line in\n{}", out.stdout))
        .to_string()
}

#[test]
fn status_reports_the_reload_risk_on_the_system_nginx() {
    let site = Site::new();
    site.deploy_ok("d-1");
    let line = status(&site);
    let version = version_of(&nginx_binary());
    assert!(line.contains(&format!("nginx {version}")), "{line}");
    assert!(
        line.contains("closes idle keep-alive connections"),
        "{line}"
    );
    assert!(line.contains("may get an error"), "{line}");
}

#[test]
fn status_in_nftables_mode_says_a_switch_closes_no_client_connection() {
    isolated("keep-alive status in nftables mode", || {
        let site = Site::with(Settings {
            switch_by: Some("nftables"),
            ..Settings::default()
        });
        site.deploy_ok("d-1");
        let line = status(&site);
        assert!(line.contains("switch.by nftables"), "{line}");
        assert!(line.contains("closes no client connection"), "{line}");
    });
}

#[test]
fn status_detects_keepalive_min_timeout_on_a_newer_nginx() {
    let Some(newer) = newer_nginx_or_skip("keepalive_min_timeout detection") else {
        return;
    };
    let version = version_of(&newer);
    let without = Site::using(&newer, |_| String::new(), Settings::default());
    let line = status(&without);
    assert!(
        line.contains(&format!("nginx {version} without keepalive_min_timeout")),
        "{line}"
    );
    assert!(line.contains("may get an error"), "{line}");

    let with = Site::using(
        &newer,
        |_| "keepalive_min_timeout 1500ms;".into(),
        Settings::default(),
    );
    let line = status(&with);
    assert!(
        line.contains(&format!("nginx {version} with keepalive_min_timeout 1.50s")),
        "{line}"
    );
    assert!(line.contains("no error"), "{line}");
}

#[test]
fn an_idle_keepalive_client_that_never_retries_sees_no_error_across_a_switch() {
    let Some(newer) = newer_nginx_or_skip("keep-alive client across a switch") else {
        return;
    };
    let site = Site::using(
        &newer,
        |_| "keepalive_min_timeout 4s;".into(),
        Settings::default(),
    );
    site.deploy_ok("d-1");

    // A client with one kept connection, idle after its first answer.
    let stream = TcpStream::connect(("127.0.0.1", site.nginx.port())).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut conn = BufReader::new(stream);
    let ask = |conn: &mut BufReader<TcpStream>| {
        conn.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .expect("send on the kept connection");
        read_response(conn).expect("an answer on the kept connection, not a closed one")
    };
    let first = ask(&mut conn);
    assert_eq!(first.header("X-App-Version"), Some("d-1"));

    for hook in ["stop", "start", "health"] {
        site.hook(hook, &[], Some("d-2")).ok();
    }
    let workers_before = site.nginx.worker_pids();
    std::thread::scope(|scope| {
        let started = Instant::now();
        let switch = scope.spawn(|| site.hook("switch", &[], Some("d-2")));
        // The reload retires the old workers; the one holding our connection keeps it.
        wait(
            Duration::from_secs(5),
            "an old worker shutting down",
            || {
                workers_before.iter().any(|p| {
                    process_title(*p).is_some_and(|t| t.contains("shutting down"))
                        && site.live_version().as_deref() == Some("d-2")
                })
            },
        );
        assert!(
            !switch.is_finished(),
            "switch returned before the kept connection was answered"
        );
        let last = ask(&mut conn);
        assert_eq!(last.status, 200);
        assert_eq!(
            last.header("X-App-Version"),
            Some("d-1"),
            "kept connection, old worker"
        );
        assert_eq!(last.header("Connection"), Some("close"));
        let outcome = switch.join().expect("switch thread").ok();
        let took = started.elapsed();
        assert!(
            outcome
                .stderr
                .contains("old workers answered their kept connections and exited"),
            "{}",
            outcome.stderr
        );
        assert!(
            took < Duration::from_secs(3),
            "switch waited {took:?}: it must return once the old worker exits, not after 4 s"
        );
    });
    assert_eq!(site.live_version().as_deref(), Some("d-2"));
}
