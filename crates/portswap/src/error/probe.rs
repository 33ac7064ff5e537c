//! Why one health probe did not pass: nothing listens, no complete answer in time, an answer
//! that is not well-formed HTTP, or a well-formed answer the health rules reject.

use std::io;
use std::time::Duration;

use crate::duration::show;

/// One probe of `http://127.0.0.1:<port><health.path>` failed; `url` is what was probed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeFailure {
    /// Nothing listens on the port.
    #[error("{url}: connection refused (nothing listens yet)")]
    Refused {
        /// The probed URL.
        url: String,
    },
    /// The answer (headers and the body's first 64 KiB) did not come within the limit.
    #[error("{url}: no complete answer within {}", show(*limit))]
    TimedOut {
        /// The probed URL.
        url: String,
        /// The probe's time limit.
        limit: Duration,
    },
    /// The connection failed in another way (reset, ...).
    #[error("{url}: {source}")]
    Connection {
        /// The probed URL.
        url: String,
        /// The system's error.
        source: io::Error,
    },
    /// What came back is not a well-formed HTTP answer.
    #[error("{url}: {problem}")]
    Malformed {
        /// The probed URL.
        url: String,
        /// What is wrong with it.
        problem: Malformed,
    },
    /// The status is not the expected one (`health.status`, else any 2xx).
    #[error("{url} answered {status}, expected {}", wanted.map_or("2xx".to_string(), |s| s.to_string()))]
    Status {
        /// The probed URL.
        url: String,
        /// The answer's status.
        status: u16,
        /// `health.status`.
        wanted: Option<u16>,
    },
    /// `health.body_contains` is not in the first 64 KiB of the body.
    #[error("{url} answered {status} without `{needle}` in the body")]
    BodyMissing {
        /// The probed URL.
        url: String,
        /// The answer's status.
        status: u16,
        /// `health.body_contains`.
        needle: String,
    },
}

/// How an answer breaks HTTP/1.1's framing.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    /// The status line is not `HTTP/1.x NNN ...` with a status from 100 to 999.
    #[error("not an HTTP answer: `{line}`")]
    StatusLine {
        /// The start of the line (at most 60 characters).
        line: String,
    },
    /// The connection ended inside the status line or the headers.
    #[error("connection closed before a complete answer")]
    ClosedInHead,
    /// The connection ended before the body had the length `Content-Length` gave.
    #[error(
        "connection closed after {got} of the {length} body bytes its Content-Length announced"
    )]
    BodyShort {
        /// `Content-Length`.
        length: u64,
        /// Bytes that came.
        got: u64,
    },
    /// The connection ended before a chunked body's last (zero-size) chunk.
    #[error("connection closed before the last chunk of its chunked body ({got} bytes came)")]
    ChunkedUnfinished {
        /// Body bytes that came.
        got: u64,
    },
    /// Content-Length headers that disagree.
    #[error("conflicting Content-Length headers ({values})")]
    ConflictingLength {
        /// Their values, comma-separated.
        values: String,
    },
    /// The status line and headers are longer than the probe reads.
    #[error("its headers exceed {} KiB", limit / 1024)]
    HeadTooLarge {
        /// The most the probe reads of them, in bytes.
        limit: usize,
    },
    /// More header lines than the probe reads.
    #[error("more than {limit} header lines")]
    TooManyHeaders {
        /// The most the probe reads.
        limit: usize,
    },
    /// Another breach the HTTP parser found (a bad header, a chunk size that is no number...).
    #[error("malformed answer: {detail}")]
    Protocol {
        /// The parser's description.
        detail: String,
    },
}
