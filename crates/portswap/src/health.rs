//! Probing the app on 127.0.0.1 until it is healthy, it dies, or time runs out. One
//! HTTP/1.1 GET by hand: the probe only ever talks to 127.0.0.1, and a general client would
//! bring a host-name resolver (getaddrinfo, NSS, static dlopen) that weighs ~300 KB in each
//! static hook binary.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::Health;
use crate::duration::show;
use crate::error::{ProbeError, Result};

/// Why a single probe did not pass.
pub type ProbeFailure = String;

/// Most of a response the probe reads (headers and the start of the body).
const READ_LIMIT: usize = 64 * 1024;
/// The longest one probe may take, in `health` and in `switch` alike (less when
/// `health.timeout` is shorter, or has less time left).
pub const PROBE_LIMIT: Duration = Duration::from_secs(5);

/// The time limit of one probe when `left` of `health.timeout` remains: the one rule for
/// `health` and `switch`.
pub fn probe_limit(left: Duration) -> Duration {
    left.clamp(Duration::from_millis(100), PROBE_LIMIT)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// One request to `http://127.0.0.1:{port}{path}` judged by the configured rules.
pub fn probe(port: u16, rules: &Health, timeout: Duration) -> Result<u16, ProbeFailure> {
    let url = format!("http://127.0.0.1:{port}{}", rules.path);
    let (status, body) = get(port, &rules.path, timeout).map_err(|e| format!("{url}: {e}"))?;
    let status_ok = rules
        .status
        .map_or((200..300).contains(&status), |want| want == status);
    if !status_ok {
        let wanted = rules.status.map_or("2xx".to_string(), |s| s.to_string());
        return Err(format!("{url} answered {status}, expected {wanted}"));
    }
    if let Some(needle) = &rules.body_contains {
        if !contains(&body, needle.as_bytes()) {
            return Err(format!(
                "{url} answered {status} without `{needle}` in the body"
            ));
        }
    }
    Ok(status)
}

/// `GET path` with `Connection: close`: the status and the body (up to [`READ_LIMIT`]).
fn get(port: u16, path: &str, timeout: Duration) -> std::io::Result<(u16, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
        if e.kind() == ErrorKind::ConnectionRefused {
            std::io::Error::new(e.kind(), "connection refused (nothing listens yet)")
        } else {
            e
        }
    })?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: portswap-health\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    let timed_out = || {
        std::io::Error::new(
            ErrorKind::TimedOut,
            format!("no complete answer within {}", show(timeout)),
        )
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(timed_out())
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        raw.extend_from_slice(&chunk[..n]);
        if let Some(done) = parse(&raw, n == 0 || raw.len() >= READ_LIMIT) {
            return done;
        }
        if n == 0 {
            return Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "connection closed before a complete answer",
            ));
        }
    }
}

/// The shortest timeout a probe gets, even when the deadline is closer: the most
/// [`wait_healthy`] can run past `health.timeout`.
pub const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// The status and body once `raw` holds a whole response (or all there will be: `ended`).
fn parse(raw: &[u8], ended: bool) -> Option<std::io::Result<(u16, Vec<u8>)>> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok());
    let Some(status) = status else {
        let shown: String = status_line.chars().take(60).collect();
        return Some(Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("not an HTTP answer: `{shown}`"),
        )));
    };
    let header = |name: &str| {
        lines.clone().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_ascii_lowercase())
        })
    };
    let body = &raw[head_end + 4..];
    let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let length = header("content-length").and_then(|v| v.parse::<usize>().ok());
    let complete = if status == 204 || status == 304 {
        true
    } else if chunked {
        body.windows(5).any(|w| w == b"0\r\n\r\n")
    } else {
        length.is_some_and(|len| body.len() >= len)
    };
    (complete || ended).then(|| {
        Ok((
            status,
            if chunked {
                unchunk(body)
            } else {
                body.to_vec()
            },
        ))
    })
}

/// The data of a chunked body (as much as is there).
fn unchunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&body[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            break;
        };
        let data = &body[eol + 2..];
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[..size.min(data.len())]);
        body = data.get(size + 2..).unwrap_or(&[]);
    }
    out
}

/// Probes until healthy or `rules.timeout` has passed: first after 20 ms, then every 25 ms
/// for 2 s, backing off to 100 ms until 10 s (a late probe adds straight to the deploy time)
/// and to 1 s after that; a progress line about every second. `dead()` is asked between probes and ends the
/// wait at once with its reason when the app has died.
pub fn wait_healthy(
    port: u16,
    rules: &Health,
    mut dead: impl FnMut() -> Option<String>,
) -> Result<(u16, Duration)> {
    let started = Instant::now();
    let deadline = started + rules.timeout;
    let mut pause = Duration::from_millis(20);
    let mut last_progress = started;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let failure = match probe(port, rules, probe_limit(left)) {
            Ok(status) => return Ok((status, started.elapsed())),
            Err(failure) => failure,
        };
        if let Some(reason) = dead() {
            return Err(ProbeError::Died { reason }.into());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ProbeError::Unhealthy {
                timeout: rules.timeout,
                tries,
                last: failure.to_string(),
            }
            .into());
        }
        if now.duration_since(last_progress) >= Duration::from_secs(1) {
            log::info!(
                "waiting for port {port}: {failure} ({} of {})",
                show(started.elapsed()),
                show(rules.timeout)
            );
            last_progress = now;
        }
        thread::sleep(pause.min(deadline - now));
        let cap = match started.elapsed().as_secs() {
            0..=1 => 25,
            2..=9 => 100,
            _ => 1000,
        };
        pause = (pause * 2).min(Duration::from_millis(cap));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_complete_answers_only() {
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Len", false).is_none());
        let ok = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nUP", false);
        assert_eq!(ok.unwrap().unwrap(), (200, b"UP".to_vec()));
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nUP", false).is_none());
        let chunked = b"HTTP/1.1 503 x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nUP\r\n3;x\r\n!!!\r\n0\r\n\r\n";
        assert_eq!(
            parse(chunked, false).unwrap().unwrap(),
            (503, b"UP!!!".to_vec())
        );
        let to_eof = b"HTTP/1.0 200 OK\r\n\r\nall of it";
        assert!(parse(to_eof, false).is_none());
        assert_eq!(
            parse(to_eof, true).unwrap().unwrap().1,
            b"all of it".to_vec()
        );
        assert!(parse(b"HTTP/1.1 204 No Content\r\n\r\n", false).is_some());
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n", true).unwrap().is_err());
    }

    #[test]
    fn one_probe_limit_and_byte_matching() {
        assert_eq!(probe_limit(Duration::from_secs(60)), PROBE_LIMIT);
        assert_eq!(probe_limit(Duration::from_secs(3)), Duration::from_secs(3));
        assert_eq!(probe_limit(Duration::ZERO), Duration::from_millis(100));
        assert!(contains(b"UP \xff\xfe", b"UP"));
        assert!(contains(&[0xc3], b""));
        assert!(!contains(b"U", b"UP"));
    }
}
