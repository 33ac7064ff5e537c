//! The load generator: steady-rate HTTP/1.1 clients through nginx, in three behaviours,
//! recording every request's outcome, latency and answering version.

use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use portswap_testkit::net::read_response;

/// How a client uses connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// A new connection per request (`Connection: close`).
    NewConnection,
    /// Keep-alive; an idempotent request is resent once when a reused connection is closed
    /// before any response byte (RFC 9110 §9.2.2, as browsers do).
    KeepAliveRetry,
    /// Keep-alive with no retry (what a load balancer in front of nginx sees).
    KeepAliveNoRetry,
}

impl Behaviour {
    /// All three, in report order.
    pub const ALL: [Behaviour; 3] = [
        Behaviour::NewConnection,
        Behaviour::KeepAliveRetry,
        Behaviour::KeepAliveNoRetry,
    ];

    /// Report label.
    pub fn label(self) -> &'static str {
        match self {
            Behaviour::NewConnection => "new connection per request",
            Behaviour::KeepAliveRetry => "keep-alive, retry once on a reused connection",
            Behaviour::KeepAliveNoRetry => "keep-alive, no retry",
        }
    }

    /// JSON key.
    pub fn key(self) -> &'static str {
        match self {
            Behaviour::NewConnection => "new_connection",
            Behaviour::KeepAliveRetry => "keepalive_retry",
            Behaviour::KeepAliveNoRetry => "keepalive_no_retry",
        }
    }
}

/// What happened to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx, with the `X-App-Version` that answered.
    Ok(String),
    /// Another status.
    Status(u16),
    /// The connection could not be made.
    Connect,
    /// Reset by the peer.
    Reset,
    /// Closed before any response byte.
    ClosedEarly,
    /// No answer in time.
    Timeout,
    /// Anything else (a broken response).
    Other,
}

impl Outcome {
    /// Failure kinds, in report order.
    pub const FAILURE_KINDS: [&'static str; 6] =
        ["status", "connect", "reset", "closed", "timeout", "other"];

    /// The failure kind, or `None` for a 2xx.
    pub fn failure(&self) -> Option<&'static str> {
        match self {
            Outcome::Ok(_) => None,
            Outcome::Status(_) => Some("status"),
            Outcome::Connect => Some("connect"),
            Outcome::Reset => Some("reset"),
            Outcome::ClosedEarly => Some("closed"),
            Outcome::Timeout => Some("timeout"),
            Outcome::Other => Some("other"),
        }
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was sent, since the run's origin.
    pub sent: Duration,
    /// When the answer (or the failure) came.
    pub done: Duration,
    /// What happened.
    pub outcome: Outcome,
    /// Whether it was resent once (behaviour 2).
    pub retried: bool,
}

const TIMEOUT: Duration = Duration::from_secs(5);

fn classify(e: &io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::ConnectionRefused => Outcome::Connect,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            Outcome::Reset
        }
        ErrorKind::UnexpectedEof => Outcome::ClosedEarly,
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Outcome::Timeout,
        _ => Outcome::Other,
    }
}

/// A client connection and whether it has already carried a request.
struct Conn {
    reader: BufReader<TcpStream>,
    reused: bool,
}

fn connect(addr: SocketAddr) -> io::Result<Conn> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(Conn {
        reader: BufReader::new(stream),
        reused: false,
    })
}

/// Why an exchange failed: before any response byte (safe to resend) or after.
enum Failure {
    BeforeResponse(io::Error),
    During(io::Error),
}

fn exchange(conn: &mut Conn, close: bool) -> Result<(u16, Option<String>, bool), Failure> {
    let request: &[u8] = if close {
        b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    } else {
        b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    };
    conn.reader
        .get_mut()
        .write_all(request)
        .map_err(Failure::BeforeResponse)?;
    match conn.reader.fill_buf() {
        Ok([]) => {
            return Err(Failure::BeforeResponse(io::Error::new(
                ErrorKind::UnexpectedEof,
                "closed",
            )))
        }
        Ok(_) => {}
        Err(e) => return Err(Failure::BeforeResponse(e)),
    }
    let response = read_response(&mut conn.reader).map_err(Failure::During)?;
    let keep = !response
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Ok((
        response.status,
        response.header("x-app-version").map(str::to_string),
        keep,
    ))
}

fn judge(status: u16, version: Option<String>) -> Outcome {
    if (200..300).contains(&status) {
        Outcome::Ok(version.unwrap_or_default())
    } else {
        Outcome::Status(status)
    }
}

/// One request as `behaviour` makes it, on the connection kept in `slot`.
fn request(addr: SocketAddr, behaviour: Behaviour, slot: &mut Option<Conn>) -> (Outcome, bool) {
    let close = behaviour == Behaviour::NewConnection;
    let mut retried = false;
    loop {
        if slot.is_none() {
            match connect(addr) {
                Ok(conn) => *slot = Some(conn),
                Err(e) => return (classify(&e), retried),
            }
        }
        let conn = slot.as_mut().expect("connected");
        let reused = conn.reused;
        conn.reused = true;
        match exchange(conn, close) {
            Ok((status, version, keep)) => {
                if close || !keep {
                    *slot = None;
                }
                return (judge(status, version), retried);
            }
            Err(Failure::BeforeResponse(e)) => {
                *slot = None;
                if behaviour == Behaviour::KeepAliveRetry && reused && !retried {
                    retried = true;
                    continue;
                }
                return (classify(&e), retried);
            }
            Err(Failure::During(e)) => {
                *slot = None;
                return (classify(&e), retried);
            }
        }
    }
}

/// A running load: threads sending at a steady rate until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<(Behaviour, JoinHandle<Vec<Sample>>)>,
}

impl Load {
    /// Starts `connections` clients per behaviour against 127.0.0.1:`port`, together sending
    /// `rate` requests per second (split evenly), times measured from `origin`.
    pub fn start(port: u16, rate: u32, connections: u32, origin: Instant) -> Load {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stop = Arc::new(AtomicBool::new(false));
        let clients = connections.max(1) * Behaviour::ALL.len() as u32;
        let interval = Duration::from_secs_f64(clients as f64 / rate.max(1) as f64);
        let mut workers = Vec::new();
        for behaviour in Behaviour::ALL {
            for i in 0..connections.max(1) {
                let stop = Arc::clone(&stop);
                // Spread the clients' phases so the rate is smooth.
                let phase = interval.mul_f64(i as f64 / connections.max(1) as f64);
                let handle =
                    thread::spawn(move || client(addr, behaviour, interval, phase, origin, &stop));
                workers.push((behaviour, handle));
            }
        }
        Load { stop, workers }
    }

    /// Stops every client and returns the samples per behaviour.
    pub fn finish(self) -> Vec<(Behaviour, Vec<Sample>)> {
        self.stop.store(true, Ordering::SeqCst);
        let mut out: Vec<(Behaviour, Vec<Sample>)> =
            Behaviour::ALL.iter().map(|b| (*b, Vec::new())).collect();
        for (behaviour, handle) in self.workers {
            let samples = handle.join().expect("client thread");
            out.iter_mut()
                .find(|(b, _)| *b == behaviour)
                .expect("known")
                .1
                .extend(samples);
        }
        for (_, samples) in &mut out {
            samples.sort_by_key(|s| s.sent);
        }
        out
    }
}

/// At most this long a bench run may drive load (a safety bound on the request loop).
const MAX_RUN: Duration = Duration::from_secs(3600);

fn client(
    addr: SocketAddr,
    behaviour: Behaviour,
    interval: Duration,
    phase: Duration,
    origin: Instant,
    stop: &AtomicBool,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut slot = None;
    let started = Instant::now();
    let mut next = started + phase;
    while !stop.load(Ordering::SeqCst) && started.elapsed() < MAX_RUN {
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        }
        next += interval;
        let sent = origin.elapsed();
        let (outcome, retried) = request(addr, behaviour, &mut slot);
        samples.push(Sample {
            sent,
            done: origin.elapsed(),
            outcome,
            retried,
        });
    }
    samples
}
