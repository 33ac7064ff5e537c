//! The testkit's own checks: nginx sandboxes and the fixture app behave as the portswap
//! tests and benches assume.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use portswap_testkit::net::{read_response, Response};
use portswap_testkit::nginx::{process_alive, write_include};
use portswap_testkit::{
    free_port, http_get, port_is_listening, wait_until, FixtureApp, NginxSandbox,
};

const RELOAD: Duration = Duration::from_secs(5);

/// A client holding one keep-alive connection.
struct KeepAlive {
    port: u16,
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    fn connect(port: u16) -> KeepAlive {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        KeepAlive {
            port,
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, path: &str) {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
            self.port
        );
        self.reader.get_mut().write_all(req.as_bytes()).unwrap();
    }

    fn recv(&mut self) -> std::io::Result<Response> {
        read_response(&mut self.reader)
    }

    fn get(&mut self, path: &str) -> Response {
        self.send(path);
        self.recv().unwrap()
    }
}

fn get_ok(port: u16, path: &str) -> Response {
    let resp = http_get(port, path).unwrap_or_else(|e| panic!("GET {path} on {port}: {e}"));
    assert_eq!(resp.status, 200, "GET {path} on {port}: {resp:?}");
    resp
}

#[test]
fn sandbox_proxies_through_the_include_and_switches_on_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let include = tmp.path().join("conf.d/service-url.inc");
    let nginx = NginxSandbox::start(&tmp.path().join("nginx"), &include);

    // No include yet: nginx is up, the default $service_url answers 502.
    assert!(!include.exists());
    assert_eq!(get_ok(nginx.port(), "/nginx-health").body, "OK");
    assert_eq!(http_get(nginx.port(), "/profile").unwrap().status, 502);
    assert!(nginx.worker_pids().len() >= 2, "{:?}", nginx.worker_pids());
    let test = nginx.test_command();
    let status = Command::new(&test[0]).args(&test[1..]).status().unwrap();
    assert!(status.success(), "{test:?}");

    let (port1, port2) = (free_port(), free_port());
    let _app1 = FixtureApp::spawn(port1, "real1", "v1", &[]);
    let _app2 = FixtureApp::spawn(port2, "real2", "v2", &[]);

    write_include(&include, port1);
    nginx.reload_and_wait(RELOAD).unwrap();
    let resp = get_ok(nginx.port(), "/profile");
    assert_eq!(resp.body, "real1");
    assert_eq!(resp.header("X-App-Version"), Some("v1"));

    let workers_before = nginx.worker_pids();
    write_include(&include, port2);
    nginx.reload_and_wait(RELOAD).unwrap();
    // The old workers may still take a request for a few ms; after that only port2 answers.
    wait_until(RELOAD, "old workers to exit", || {
        nginx
            .worker_pids()
            .iter()
            .all(|p| !workers_before.contains(p))
    })
    .unwrap();
    let resp = get_ok(nginx.port(), "/");
    assert!(
        resp.body.starts_with("version=v2 profile=real2"),
        "{resp:?}"
    );
    assert_eq!(get_ok(nginx.port(), "/profile").body, "real2");

    // A broken config keeps the old workers: reload_and_wait reports it.
    std::fs::write(&include, "this is not nginx config;\n").unwrap();
    assert!(nginx.reload_and_wait(Duration::from_millis(500)).is_err());
    assert_eq!(get_ok(nginx.port(), "/profile").body, "real2");
}

#[test]
fn two_sandboxes_run_side_by_side() {
    let handles: Vec<_> = (0..2)
        .map(|i| {
            std::thread::spawn(move || {
                let tmp = tempfile::tempdir().unwrap();
                let include = tmp.path().join("service-url.inc");
                let port = free_port();
                let profile = format!("real{}", i + 1);
                let app = FixtureApp::spawn(port, &profile, "v1", &[]);
                write_include(&include, port);
                let nginx = NginxSandbox::start(tmp.path(), &include);
                (tmp, app, nginx, profile)
            })
        })
        .collect();
    let mut running: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_ne!(running[0].2.port(), running[1].2.port());
    assert_ne!(running[0].2.pid(), running[1].2.pid());
    for (_, _, nginx, profile) in &running {
        assert_eq!(&get_ok(nginx.port(), "/profile").body, profile);
    }

    // Stopping one leaves the other alone.
    let (_tmp0, _app0, mut first, _) = running.remove(0);
    let first_pid = first.pid();
    first.stop();
    assert!(!process_alive(first_pid));
    assert!(!port_is_listening(first.port()));
    let (_, _, second, profile) = &running[0];
    assert_eq!(&get_ok(second.port(), "/profile").body, profile);
}

#[test]
fn fixture_routes_and_headers() {
    let port = free_port();
    let app = FixtureApp::spawn(port, "blue", "v7", &["--unhealthy"]);
    assert_eq!(get_ok(port, "/profile").body, "blue");
    assert_eq!(get_ok(port, "/version").body, "v7");
    let health = http_get(port, "/health").unwrap();
    assert_eq!(
        (health.status, health.header("x-app-version")),
        (500, Some("v7"))
    );
    let root = get_ok(port, "/anything?x=1");
    assert_eq!(
        root.body,
        format!("version=v7 profile=blue port={port} pid={}", app.pid())
    );
    assert_eq!(
        root.header("content-length"),
        Some(root.body.len().to_string().as_str())
    );

    // Keep-alive: several requests on one connection.
    let mut conn = KeepAlive::connect(port);
    for _ in 0..3 {
        assert_eq!(conn.get("/profile").body, "blue");
    }
    assert!(app.output().contains(&format!(
        "fixture-app v7 listening on 127.0.0.1:{port} profile blue"
    )));
}

#[test]
fn fixture_drains_in_flight_requests_on_sigterm_and_frees_its_port() {
    let port = free_port();
    let mut app = FixtureApp::spawn(port, "real1", "v1", &[]);

    // Both connections are accepted (each answered once) before the signal.
    let mut busy = KeepAlive::connect(port);
    assert_eq!(busy.get("/profile").body, "real1");
    let mut idle = KeepAlive::connect(port);
    assert_eq!(idle.get("/profile").body, "real1");
    busy.send("/slow?ms=1500");

    app.terminate();
    // The listener goes at once, well before the slow request is answered.
    wait_until(
        Duration::from_millis(1000),
        "the port to be released",
        || !port_is_listening(port),
    )
    .unwrap();
    // The idle keep-alive connection is closed by the app.
    assert!(idle.recv().is_err());
    // The in-flight request completes, marked as the connection's last.
    let slow = busy.recv().unwrap();
    assert_eq!(slow.status, 200);
    assert_eq!(slow.header("connection"), Some("close"));
    let status = app
        .wait_exit(Duration::from_secs(6))
        .expect("app still running");
    assert_eq!(status.code(), Some(0), "{}", app.output());

    // The same port can be used again right away.
    let again = FixtureApp::spawn(port, "real1", "v2", &[]);
    assert_eq!(get_ok(again.port(), "/version").body, "v2");
}

#[test]
fn fixture_start_failures() {
    let port = free_port();
    let mut fail = FixtureApp::spawn_no_wait(port, "real1", "v1", &["--fail-start"]);
    let status = fail
        .wait_exit(Duration::from_secs(5))
        .expect("still running");
    assert_eq!(status.code(), Some(1));
    assert!(
        fail.output().contains("failed to start"),
        "{}",
        fail.output()
    );
    assert!(!port_is_listening(port));

    let mut crash = FixtureApp::spawn(port, "real1", "v1", &["--exit-after-ms", "300"]);
    let status = crash
        .wait_exit(Duration::from_secs(5))
        .expect("still running");
    assert_eq!(status.code(), Some(3));

    let mut never = FixtureApp::spawn_no_wait(port, "real1", "v1", &["--never-bind"]);
    wait_until(Duration::from_secs(5), "the never-bind banner", || {
        never.output().contains("never listening")
    })
    .unwrap();
    assert!(!port_is_listening(port));
    never.terminate();
    let status = never
        .wait_exit(Duration::from_secs(5))
        .expect("still running");
    assert_eq!(status.code(), Some(0));

    let mut delayed = FixtureApp::spawn_no_wait(port, "real1", "v1", &["--start-delay-ms", "200"]);
    let waited = delayed.wait_listening(Duration::from_secs(5)).unwrap();
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
}

#[test]
fn fixture_can_ignore_sigterm() {
    let port = free_port();
    let mut app = FixtureApp::spawn(port, "real1", "v1", &["--ignore-sigterm"]);
    app.terminate();
    wait_until(
        Duration::from_secs(5),
        "the app to log the ignored SIGTERM",
        || app.output().contains("ignoring SIGTERM"),
    )
    .unwrap();
    assert!(app.try_wait().is_none());
    assert_eq!(get_ok(port, "/profile").body, "real1");
    app.signal(nix::sys::signal::Signal::SIGINT);
    let status = app
        .wait_exit(Duration::from_secs(6))
        .expect("still running");
    assert_eq!(status.code(), Some(0));
}
