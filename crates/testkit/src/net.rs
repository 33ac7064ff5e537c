//! Ports, a minimal blocking HTTP/1.1 client, and condition polling.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// Default connect/read/write timeout of [`http_get`].
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A port on 127.0.0.1 that is free now and never handed out twice by this process.
///
/// Ports are taken below the kernel's ephemeral range (`ip_local_port_range`), so outgoing
/// connections (which take their local port from that range) cannot occupy them between
/// this call and the bind; the scan starts at a per-process pseudo-random offset so that
/// parallel test processes rarely probe the same ports. Falls back to binding port 0.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<(HashSet<u16>, u32)>> = OnceLock::new();
    let state = HANDED_OUT.get_or_init(|| Mutex::new((HashSet::new(), seed())));
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());

    let low: u32 = 10_000;
    let high: u32 = ephemeral_low().unwrap_or(32_768).clamp(low + 1_000, 65_535);
    let span = high - low;
    for _ in 0..span {
        state.1 = state.1.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let port = (low + (state.1 >> 8) % span) as u16;
        if !state.0.contains(&port) && can_bind(port) {
            state.0.insert(port);
            return port;
        }
    }
    for _ in 0..1_000 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("testkit: cannot bind 127.0.0.1:0");
        if state.0.insert(port) {
            return port;
        }
    }
    panic!("testkit: no free port found");
}

fn seed() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().wrapping_mul(2_654_435_761)
}

fn ephemeral_low() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn can_bind(port: u16) -> bool {
    // Both the loopback address (what nginx and the fixture bind) and the wildcard.
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
        && TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

/// True when something accepts TCP connections on 127.0.0.1:`port` (200 ms connect timeout).
pub fn port_is_listening(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Polls `f` every 2 ms until it returns true; `Ok(elapsed)` then, or an error naming
/// `what` once `deadline` (a duration from now) has passed.
pub fn wait_until(
    deadline: Duration,
    what: &str,
    f: impl FnMut() -> bool,
) -> Result<Duration, String> {
    wait_every(deadline, Duration::from_millis(2), what, f)
}

/// [`wait_until`] asking `f` every `every` (for conditions that cost a process to check).
pub fn wait_every(
    deadline: Duration,
    every: Duration,
    what: &str,
    mut f: impl FnMut() -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        if f() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= deadline {
            return Err(format!(
                "timed out after {:?} waiting for {what}",
                start.elapsed()
            ));
        }
        std::thread::sleep(every);
    }
}

/// An HTTP response read by [`http_get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code, e.g. 200.
    pub status: u16,
    /// Header fields in order received, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (chunked encoding decoded), lossily converted to UTF-8.
    pub body: String,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on 127.0.0.1:`port`, one connection per request (`Connection: close`),
/// [`HTTP_TIMEOUT`] for connecting and for each read/write.
pub fn http_get(port: u16, path: &str) -> io::Result<Response> {
    http_get_timeout(port, path, HTTP_TIMEOUT)
}

/// [`http_get`] with a chosen timeout (applied to connect and to each read and write).
pub fn http_get_timeout(port: u16, path: &str, timeout: Duration) -> io::Result<Response> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: portswap-testkit\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    )?;
    stream.flush()?;
    read_response(&mut BufReader::new(stream))
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a complete response",
        ));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Reads one response (status line, headers, body) from `r`: for clients that keep a
/// connection open (write the request yourself, then call this per response).
pub fn read_response(r: &mut impl BufRead) -> io::Result<Response> {
    let status_line = read_line(r)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("not an HTTP response: {status_line:?}")));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line: {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line: {line:?}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut resp = Response {
        status,
        headers,
        body: String::new(),
    };
    let mut body = Vec::new();
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let size_line = read_line(r)?;
            let size_hex = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| bad(format!("bad chunk size: {size_line:?}")))?;
            if size == 0 {
                // Trailers, then the final empty line.
                while !read_line(r)?.is_empty() {}
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            read_line(r)?;
        }
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad(format!("bad Content-Length: {len:?}")))?;
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
        r.read_to_end(&mut body)?;
    }
    resp.body = String::from_utf8_lossy(&body).into_owned();
    Ok(resp)
}

/// Clients that send requests to `port` (nginx), each on a new connection, until stopped;
/// each answer is recorded as the `X-App-Version` that answered, or `error: ...`.
pub struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<std::sync::atomic::AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    /// Starts `clients` client threads.
    pub fn start(port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                let answered = answered.clone();
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        answered.fetch_add(1, Ordering::SeqCst);
                        seen.push(match http_get(port, "/") {
                            Ok(r) if r.status == 200 => {
                                r.header("X-App-Version").unwrap_or("?").to_string()
                            }
                            Ok(r) => format!("error: status {}", r.status),
                            Err(e) => format!("error: {e}"),
                        });
                        // Pacing, so the clients do not starve the deployment of CPU.
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    seen
                })
            })
            .collect();
        Load {
            stop,
            answered,
            threads,
        }
    }

    /// Waits until `more` requests have been sent after this call (at most `limit`).
    pub fn wait_for_more(&self, more: usize, limit: Duration) -> Result<Duration, String> {
        let target = self.answered.load(Ordering::SeqCst) + more;
        wait_until(limit, "more requests through the load", || {
            self.answered.load(Ordering::SeqCst) >= target
        })
    }

    /// Stops the clients; every answer, in no particular order across clients.
    pub fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().expect("testkit: load thread"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let set: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(set.len(), ports.len());
        for p in ports {
            TcpListener::bind((Ipv4Addr::LOCALHOST, p)).unwrap();
        }
    }

    #[test]
    fn parses_length_chunked_and_eof_bodies() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App-Version: v2\r\n\r\nhelloEXTRA";
        let resp = read_response(&mut raw.as_bytes()).unwrap();
        assert_eq!((resp.status, resp.body.as_str()), (200, "hello"));
        assert_eq!(resp.header("x-app-version"), Some("v2"));

        let raw = "HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\n\
                   3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let resp = read_response(&mut raw.as_bytes()).unwrap();
        assert_eq!((resp.status, resp.body.as_str()), (502, "abcde"));

        let raw = "HTTP/1.0 200 OK\r\nServer: x\r\n\r\nto the end";
        assert_eq!(
            read_response(&mut raw.as_bytes()).unwrap().body,
            "to the end"
        );

        assert!(
            read_response(&mut "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab".as_bytes())
                .is_err()
        );
        assert!(read_response(&mut "".as_bytes()).is_err());
    }

    #[test]
    fn wait_until_reports_success_and_timeout() {
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(1), "three calls", || {
            n += 1;
            n == 3
        })
        .is_ok());
        let err = wait_until(Duration::from_millis(20), "never", || false).unwrap_err();
        assert!(err.contains("never"), "{err}");
    }
}
