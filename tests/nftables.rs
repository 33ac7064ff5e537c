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
    Site::with(Settings {
        switch_by: Some("nftables"),
        ..Settings::default()
    })
}

/// The redirect rule in the namespace: `(service port, slot)`, or `None`.
fn rule() -> Option<(u16, u16)> {
    let listing = netns::nft(&["-n", "list", "table", "ip", "portswap"]).ok()?;
    let lines: Vec<&str> = listing.lines().filter(|l| l.contains("redirect")).collect();
    assert!(lines.len() <= 1, "more than one rule: {listing}");
    let words: Vec<&str> = lines.first()?.split_whitespace().collect();
    let after = |key: &str| -> u16 {
        let at = words.iter().position(|w| *w == key).unwrap();
        words[at + 1].trim_start_matches(':').parse().unwrap()
    };
    Some((after("dport"), after("to")))
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
