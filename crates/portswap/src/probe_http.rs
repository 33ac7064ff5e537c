//! The one HTTP/1.1 GET of a health probe, by ureq: no TLS, no compression, no proxy, no
//! redirects followed, `Connection: close`. Its resolver answers the one loopback address it
//! is given (127.0.0.1 and the slot's port; `nginx.front` for the front door) without a name
//! lookup, so no getaddrinfo is linked into the static hooks. What ureq lets
//! through is checked here: the status line before ureq's parser sees it, disagreeing
//! `Content-Length` headers, and a body cut short (named by its framing).

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ureq::config::Config;
use ureq::http::{header, HeaderMap, Uri, Version};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, NextTimeout, TcpConnector, Transport,
};
use ureq::Agent;

use crate::error::{Malformed, ProbeFailure};

/// Most of the body a probe reads; `health.body_contains` is looked for in these bytes.
pub const BODY_WINDOW: usize = 64 * 1024;
/// Most of the status line and headers a probe reads (they do not count against the body's
/// [`BODY_WINDOW`]).
pub const HEAD_LIMIT: usize = 64 * 1024;

/// A well-formed answer: its status and the first [`BODY_WINDOW`] bytes of its body.
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The start of the body, as sent (no decoding).
    pub body: Vec<u8>,
}

/// `http://127.0.0.1:{port}{path}`, the URL a probe of a slot asks.
pub fn url(port: u16, path: &str) -> String {
    url_at(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), path)
}

/// `http://{addr}{path}`, the URL a probe of `addr` asks (brackets around an IPv6 address).
pub fn url_at(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// Whether `path` makes a URL the probe can ask (checked at config load).
pub fn valid_path(path: &str) -> bool {
    url(1, path).parse::<Uri>().is_ok()
}

/// `GET path` on 127.0.0.1:`port`, all of it (connect, headers, the body's first
/// [`BODY_WINDOW`] bytes) within `limit`.
pub fn get(port: u16, path: &str, limit: Duration) -> Result<Answer, ProbeFailure> {
    get_at(
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        None,
        path,
        limit,
    )
}

/// `GET path` on `addr` (a loopback address: the caller checked it) with `host` as the Host
/// header when given (else `addr`), within `limit` like [`get`].
pub fn get_at(
    addr: SocketAddr,
    host: Option<&str>,
    path: &str,
    limit: Duration,
) -> Result<Answer, ProbeFailure> {
    let url = url_at(addr, path);
    let fail = |e: ureq::Error| failure(&url, limit, e);
    let mut request = agent(limit, addr)
        .get(&url)
        .header(header::CONNECTION, "close");
    if let Some(host) = host {
        request = request.header(header::HOST, host);
    }
    let mut response = request.call().map_err(fail)?;
    let status = response.status().as_u16();
    let framing = Framing::of(response.version(), response.headers()).map_err(|problem| {
        ProbeFailure::Malformed {
            url: url.clone(),
            problem,
        }
    })?;
    let mut body = Vec::new();
    let read = response
        .body_mut()
        .as_reader()
        .take(BODY_WINDOW as u64)
        .read_to_end(&mut body);
    match read.map_err(ureq::Error::from) {
        Ok(_) => Ok(Answer { status, body }),
        Err(ureq::Error::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            match framing.cut_short(body.len() as u64) {
                Some(problem) => Err(ProbeFailure::Malformed {
                    url: url.clone(),
                    problem,
                }),
                None => Err(fail(ureq::Error::Io(e))),
            }
        }
        Err(e) => Err(fail(e)),
    }
}

/// The agent of one probe: nothing from the environment (no proxy), statuses and redirects
/// returned as they are, the head bounded, everything within `limit`.
fn agent(limit: Duration, addr: SocketAddr) -> Agent {
    let config = Config::builder()
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .max_response_header_size(HEAD_LIMIT)
        .user_agent("portswap-health")
        .accept("*/*")
        .timeout_global(Some(limit))
        .max_idle_connections(0)
        .build();
    Agent::with_parts(
        config,
        TcpConnector::default().chain(StatusLineGuard),
        Fixed(addr),
    )
}

/// ureq's error as a probe failure.
fn failure(url: &str, limit: Duration, e: ureq::Error) -> ProbeFailure {
    let url = url.to_string();
    let malformed = |problem| ProbeFailure::Malformed {
        url: url.clone(),
        problem,
    };
    match e {
        ureq::Error::Timeout(_) => ProbeFailure::TimedOut { url, limit },
        ureq::Error::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            ProbeFailure::Refused { url }
        }
        ureq::Error::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            malformed(Malformed::ClosedInHead)
        }
        ureq::Error::Io(source) => ProbeFailure::Connection { url, source },
        ureq::Error::LargeResponseHeader(_, limit) => malformed(Malformed::HeadTooLarge { limit }),
        ureq::Error::Other(other) => match other.downcast::<Malformed>() {
            Ok(problem) => malformed(*problem),
            Err(other) => malformed(Malformed::Protocol {
                detail: other.to_string(),
            }),
        },
        other => malformed(Malformed::Protocol {
            detail: other.to_string(),
        }),
    }
}

/// How the body's end is marked, as ureq reads it (chunked wins over a length in HTTP/1.1).
enum Framing {
    Length(u64),
    Chunked,
    Close,
}

impl Framing {
    fn of(version: Version, headers: &HeaderMap) -> Result<Framing, Malformed> {
        let chunked = version != Version::HTTP_10
            && headers
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|coding| coding.trim().eq_ignore_ascii_case("chunked"));
        let lengths: Vec<&[u8]> = headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        if lengths.windows(2).any(|pair| pair[0] != pair[1]) {
            let values: Vec<_> = lengths.iter().map(|v| String::from_utf8_lossy(v)).collect();
            return Err(Malformed::ConflictingLength {
                values: values.join(", "),
            });
        }
        let length = lengths
            .first()
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        Ok(match (chunked, length) {
            (true, _) => Framing::Chunked,
            (false, Some(length)) => Framing::Length(length),
            (false, None) => Framing::Close,
        })
    }

    /// What a connection closed after `got` body bytes, before the body's end, broke.
    fn cut_short(&self, got: u64) -> Option<Malformed> {
        match *self {
            Framing::Length(length) => Some(Malformed::BodyShort { length, got }),
            Framing::Chunked => Some(Malformed::ChunkedUnfinished { got }),
            Framing::Close => None,
        }
    }
}

/// The only address a probe connects to, whatever the URL says: never a name lookup.
#[derive(Debug)]
struct Fixed(SocketAddr);

impl Resolver for Fixed {
    fn resolve(
        &self,
        _: &Uri,
        _: &Config,
        _: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let mut addrs = self.empty();
        addrs.push(self.0);
        Ok(addrs)
    }
}

/// Checks each status line before ureq's parser sees it: the parser reads any three digits
/// as the status and panics below 100 (`HTTP/1.1 099`), and this error names the line.
#[derive(Debug)]
struct StatusLineGuard;

impl<In: Transport> Connector<In> for StatusLineGuard {
    type Out = Guarded<In>;

    fn connect(
        &self,
        _: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        Ok(chained.map(|inner| Guarded {
            inner,
            in_head: true,
        }))
    }
}

/// A connection whose input is checked by [`status_line_ok`] until the final status line
/// (not `100 Continue`) has passed.
#[derive(Debug)]
struct Guarded<T> {
    inner: T,
    in_head: bool,
}

impl<T: Transport> Guarded<T> {
    fn check(&mut self) -> Result<(), ureq::Error> {
        if !self.in_head {
            return Ok(());
        }
        let input = self.inner.buffers().input();
        if !status_line_ok(input) {
            return Err(ureq::Error::Other(Box::new(Malformed::StatusLine {
                line: first_line(input),
            })));
        }
        if input.len() > STATUS_END && &input[STATUS_START..STATUS_END] != b"100" {
            self.in_head = false;
        }
        Ok(())
    }
}

impl<T: Transport> Transport for Guarded<T> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.inner.transmit_output(amount, timeout)
    }

    fn maybe_await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let progress = self.inner.maybe_await_input(timeout)?;
        self.check()?;
        Ok(progress)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let progress = self.inner.await_input(timeout)?;
        self.check()?;
        Ok(progress)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }
}

/// Where the status code sits in `HTTP/1.1 200 OK`.
const STATUS_START: usize = 9;
const STATUS_END: usize = 12;

/// Whether `head`, the start of an answer (complete or not yet), can begin a status line:
/// `HTTP/1.0` or `HTTP/1.1`, a space, a status from 100 to 999, then a space or the line's end.
fn status_line_ok(head: &[u8]) -> bool {
    head.iter()
        .take(STATUS_END + 1)
        .enumerate()
        .all(|(i, &b)| match i {
            0..=6 => b == b"HTTP/1."[i],
            7 => b == b'0' || b == b'1',
            8 => b == b' ',
            STATUS_START => (b'1'..=b'9').contains(&b),
            10 | 11 => b.is_ascii_digit(),
            _ => matches!(b, b' ' | b'\r' | b'\n'),
        })
}

/// The first line of `input` as shown in an error, at most 60 characters.
fn first_line(input: &[u8]) -> String {
    let end = input
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(input.len());
    String::from_utf8_lossy(&input[..end])
        .chars()
        .take(60)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        // Complete or not yet: what may begin a status line, and what may not.
        let cases: [(&[u8], bool); 14] = [
            (b"", true),
            (b"HTTP/1.", true),
            (b"HTTP/1.1 20", true),
            (b"HTTP/1.1 200 OK\r\n", true),
            (b"HTTP/1.0 204\r\n", true),
            (b"HTTP/1.1 999\n", true),
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 2", true),
            (b"HTTP/1.1 2000\r\n", false),
            (b"HTTP/1.1 204x\r\n", false),
            (b"HTTP/1.1 099 low\r\n", false),
            (b"HTTP/2 200\r\n", false),
            (b"HTTP/1.1  200 OK\r\n", false),
            (b"SSH-2.0-OpenSSH_9.2\r\n", false),
            (b"http/1.1 200 OK\r\n", false),
        ];
        for (head, ok) in cases {
            assert_eq!(
                status_line_ok(head),
                ok,
                "{}",
                String::from_utf8_lossy(head)
            );
        }
        assert_eq!(first_line(b"HTTP/1.1 2000\r\nX: y"), "HTTP/1.1 2000");
        assert_eq!(first_line(&[b'x'; 100]).len(), 60);
    }

    #[test]
    fn framing() {
        let mut headers = HeaderMap::new();
        headers.append(header::CONTENT_LENGTH, "100".parse().unwrap());
        let length = Framing::of(Version::HTTP_11, &headers).unwrap();
        assert!(matches!(length, Framing::Length(100)));
        headers.append(header::TRANSFER_ENCODING, "gzip, Chunked".parse().unwrap());
        let chunked = Framing::of(Version::HTTP_11, &headers).unwrap();
        assert!(matches!(chunked, Framing::Chunked));
        let old = Framing::of(Version::HTTP_10, &headers).unwrap();
        assert!(matches!(old, Framing::Length(100)));
        headers.append(header::CONTENT_LENGTH, "2".parse().unwrap());
        let conflict = Framing::of(Version::HTTP_11, &headers).err().unwrap();
        assert_eq!(
            conflict.to_string(),
            "conflicting Content-Length headers (100, 2)"
        );
        assert!(valid_path("/actuator/health?x=1"));
        assert!(!valid_path("/a b") && !valid_path("/a<b>"));
    }
}
