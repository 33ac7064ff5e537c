//! The health probe's HTTP client against answers that break HTTP/1.1 (issue 15, "the health
//! client"): a raw TCP server in the test writes each answer byte for byte. Every malformed
//! answer fails, and fails before the probe's deadline when the answer is complete; a body
//! behind 40 KB of headers is still read from its first byte; redirects are not followed.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use portswap::config::Health;
use portswap::health::{probe, ProbeFailure};
use portswap_testkit::net::free_port;
use support::{Settings, Site};

/// A probe limit no complete answer comes near: a failure before it is not the deadline's.
const LIMIT: Duration = Duration::from_secs(30);

/// Serves every connection on 127.0.0.1:`port`: reads the request head, lets `answer`
/// write to the connection, then closes it. Returns the count of requests read.
fn serve_on(
    port: u16,
    answer: impl Fn(&mut TcpStream) + Send + Sync + 'static,
) -> Arc<AtomicUsize> {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the raw server");
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    let answer = Arc::new(answer);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let counted = counted.clone();
            let answer = answer.clone();
            thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    line.clear();
                }
                counted.fetch_add(1, Ordering::SeqCst);
                answer(&mut stream);
            });
        }
    });
    requests
}

/// A raw server on a port of its own that writes `bytes` and closes.
fn serve(bytes: Vec<u8>) -> u16 {
    let port = free_port();
    serve_on(port, move |s| {
        let _ = s.write_all(&bytes);
    });
    port
}

fn rules(body_contains: Option<&str>, status: Option<u16>) -> Health {
    Health {
        path: "/health".into(),
        status,
        body_contains: body_contains.map(str::to_string),
        timeout: LIMIT,
    }
}

/// One probe asking for `UP` in the body: the failure, after checking it came before the
/// deadline and is no timeout.
fn fails_at_once(port: u16) -> ProbeFailure {
    let started = Instant::now();
    let failure = probe(port, &rules(Some("UP"), None), LIMIT).expect_err("the probe passed");
    assert!(
        started.elapsed() < LIMIT && !matches!(failure, ProbeFailure::TimedOut { .. }),
        "it waited for the deadline: {failure}"
    );
    failure
}

fn assert_says(failure: &ProbeFailure, port: u16, text: &str) {
    let shown = failure.to_string();
    assert!(
        shown.starts_with(&format!("http://127.0.0.1:{port}/health")) && shown.contains(text),
        "`{text}` not in: {shown}"
    );
}

#[test]
fn a_body_shorter_than_its_content_length_fails() {
    let port = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nUP".to_vec());
    let failure = fails_at_once(port);
    assert_says(
        &failure,
        port,
        "connection closed after 2 of the 100 body bytes its Content-Length announced",
    );
}

#[test]
fn a_body_shorter_than_its_content_length_on_an_open_connection_fails_at_the_deadline() {
    let port = free_port();
    serve_on(port, |s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nUP");
        // Held open until the probe gives up and closes its end.
        let _ = std::io::Read::read(s, &mut [0; 1]);
    });
    let limit = Duration::from_millis(300);
    let failure = probe(port, &rules(Some("UP"), None), limit).expect_err("passed");
    assert!(
        matches!(failure, ProbeFailure::TimedOut { .. }),
        "{failure}"
    );
    assert_says(&failure, port, "no complete answer within 300ms");
}

#[test]
fn a_chunked_body_without_its_last_chunk_fails() {
    let port = serve(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nUP\r\n".to_vec());
    let failure = fails_at_once(port);
    assert_says(
        &failure,
        port,
        "connection closed before the last chunk of its chunked body (2 bytes came)",
    );
    // The same body with its last chunk passes.
    let whole = serve(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nUP\r\n0\r\n\r\n".to_vec(),
    );
    assert_eq!(probe(whole, &rules(Some("UP"), None), LIMIT).unwrap(), 200);
}

#[test]
fn status_lines_that_are_not_http_fail() {
    for line in [
        "HTTP/1.1 2000 OK",
        "HTTP/1.1 204x",
        "HTTP/1.1 099 Low",
        "HTTP/1.1 20",
        "HTTP/2 200",
        "SSH-2.0-OpenSSH_9.2p1",
    ] {
        let port = serve(format!("{line}\r\nContent-Length: 2\r\n\r\nUP").into_bytes());
        let failure = fails_at_once(port);
        assert_says(&failure, port, &format!(": not an HTTP answer: `{line}`"));
    }
}

#[test]
fn text_after_the_content_length_is_not_the_body() {
    let port = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOKUP".to_vec());
    let failure = fails_at_once(port);
    assert_eq!(
        failure.to_string(),
        format!("http://127.0.0.1:{port}/health answered 200 without `UP` in the body")
    );
    let conflicting =
        serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 4\r\n\r\nOKUP".to_vec());
    let failure = fails_at_once(conflicting);
    assert_says(
        &failure,
        conflicting,
        "conflicting Content-Length headers (2, 4)",
    );
}

#[test]
fn an_endless_header_block_fails_at_a_bound_not_the_deadline() {
    // One header line that never ends, and header lines that never stop.
    let long_line = free_port();
    serve_on(long_line, |s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nX-Pad: ");
        while s.write_all(&[b'a'; 4096]).is_ok() {}
    });
    let failure = fails_at_once(long_line);
    assert_says(&failure, long_line, "its headers exceed 64 KiB");

    let many_lines = free_port();
    serve_on(many_lines, |s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n");
        let mut n = 0u64;
        while s.write_all(format!("X-Pad-{n}: a\r\n").as_bytes()).is_ok() {
            n += 1;
        }
    });
    let failure = fails_at_once(many_lines);
    assert_says(&failure, many_lines, "malformed answer");
}

#[test]
fn the_64_kib_window_is_of_the_body_not_of_the_headers() {
    // 40 KB of headers, then `UP` at body byte 30,000.
    let mut head = String::from("HTTP/1.1 200 OK\r\n");
    for n in 0..40 {
        head.push_str(&format!("X-Pad-{n:02}: {}\r\n", "h".repeat(1000)));
    }
    let mut body = vec![b'.'; 40_000];
    body[30_000..30_002].copy_from_slice(b"UP");
    let answer = [
        head.into_bytes(),
        format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes(),
        body,
    ]
    .concat();
    let port = serve(answer);
    assert_eq!(probe(port, &rules(Some("UP"), None), LIMIT).unwrap(), 200);

    // The window ends at body byte 65,536: `UP` ending there passes, one byte later it fails.
    for (end, passes) in [(65_536, true), (65_537, false)] {
        let mut body = vec![b'.'; 70_000];
        body[end - 2..end].copy_from_slice(b"UP");
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        let port = serve([head.into_bytes(), body].concat());
        let result = probe(port, &rules(Some("UP"), None), LIMIT);
        assert_eq!(result.is_ok(), passes, "UP ending at {end}: {result:?}");
    }
}

#[test]
fn redirects_are_answers_not_followed() {
    let target = free_port();
    let followed = serve_on(target, |s| {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nUP");
    });
    let redirect = format!(
        "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{target}/health\r\nContent-Length: 0\r\n\r\n"
    );
    let port = serve(redirect.into_bytes());
    let failure = probe(port, &rules(None, None), LIMIT).expect_err("passed");
    assert_eq!(
        failure.to_string(),
        format!("http://127.0.0.1:{port}/health answered 302, expected 2xx")
    );
    // Expected as `health.status`, the redirect itself passes.
    assert_eq!(probe(port, &rules(None, Some(302)), LIMIT).unwrap(), 302);
    assert_eq!(
        followed.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
}

#[test]
fn nothing_listening_is_a_refused_connection() {
    let port = free_port();
    let failure = fails_at_once(port);
    assert_eq!(
        failure.to_string(),
        format!("http://127.0.0.1:{port}/health: connection refused (nothing listens yet)")
    );
}

/// The real `health` hook against the raw server on the idle slot: the verdict names the
/// malformed answer; the well-formed one passes the probe (and is then refused: the raw
/// server is not the app `start` launched).
#[test]
fn the_health_hook_names_the_malformed_answer_in_its_verdict() {
    let site = Site::with(Settings {
        health_timeout: "1s",
        ..Settings::default()
    });
    site.set_key("health", "body_contains", "UP");
    let idle = site.ports[0];
    let answer = Arc::new(std::sync::Mutex::new(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nUP".to_vec(),
    ));
    let served = answer.clone();
    serve_on(idle, move |s| {
        let bytes = served.lock().unwrap().clone();
        let _ = s.write_all(&bytes);
    });
    let out = site.hook("health", &[], Some("d-1"));
    let out = out.fails(
        1,
        "connection closed after 2 of the 100 body bytes its Content-Length announced",
    );
    assert!(
        out.last_line().contains("not healthy after 1s"),
        "{}",
        out.stderr
    );

    *answer.lock().unwrap() = b"HTTP/1.1 099 Low\r\n\r\n".to_vec();
    site.hook("health", &[], Some("d-1"))
        .fails(1, "not an HTTP answer: `HTTP/1.1 099 Low`");

    *answer.lock().unwrap() = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nUP".to_vec();
    let out = site.hook("health", &[], Some("d-1"));
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.last_line().contains(&format!(
            "port {idle} answered 200, but not from the app start launched"
        )),
        "{}",
        out.stderr
    );
}
