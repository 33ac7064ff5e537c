//! Probing the app on 127.0.0.1 until it is healthy, it dies, or time runs out: one GET
//! ([`probe_http`]) judged by `health.status` (else any 2xx) and `health.body_contains`
//! (bytes, in the body's first 64 KiB).

use std::thread;
use std::time::{Duration, Instant};

use crate::config::Health;
use crate::duration::show;
use crate::error::{AppGone, ProbeError, Result};
use crate::probe_http;

pub use crate::error::ProbeFailure;

/// The longest one probe may take, in `health` and in `switch` alike (less when
/// `health.timeout` is shorter, or has less time left).
pub const PROBE_LIMIT: Duration = Duration::from_secs(5);

/// The shortest timeout a probe gets, even when the deadline is closer: the most
/// [`wait_healthy`] can run past `health.timeout`.
pub const MIN_PROBE_TIMEOUT: Duration = Duration::from_millis(100);

/// The time limit of one probe when `left` of `health.timeout` remains: the one rule for
/// `health` and `switch`.
pub fn probe_limit(left: Duration) -> Duration {
    left.clamp(MIN_PROBE_TIMEOUT, PROBE_LIMIT)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// One request to `http://127.0.0.1:{port}{path}` judged by the configured rules; the status
/// when it passes.
pub fn probe(port: u16, rules: &Health, timeout: Duration) -> Result<u16, ProbeFailure> {
    let answer = probe_http::get(port, &rules.path, timeout)?;
    judge(&answer, &probe_http::url(port, &rules.path), rules)
}

/// Whether `answer` (to the GET of `url`) passes the configured rules: its status when it does.
pub fn judge(answer: &probe_http::Answer, url: &str, rules: &Health) -> Result<u16, ProbeFailure> {
    let status = answer.status;
    let status_ok = rules
        .status
        .map_or((200..300).contains(&status), |want| want == status);
    if !status_ok {
        return Err(ProbeFailure::Status {
            url: url.to_string(),
            status,
            wanted: rules.status,
        });
    }
    if let Some(needle) = &rules.body_contains {
        if !contains(&answer.body, needle.as_bytes()) {
            return Err(ProbeFailure::BodyMissing {
                url: url.to_string(),
                status,
                needle: needle.clone(),
            });
        }
    }
    Ok(status)
}

/// Probes until healthy or `rules.timeout` has passed: first after 20 ms, then every 25 ms
/// for 2 s, backing off to 100 ms until 10 s (a late probe adds straight to the deploy time)
/// and to 1 s after that; a progress line about every second. `dead()` is asked between probes and ends the
/// wait at once with its reason when the app has died.
pub fn wait_healthy(
    port: u16,
    rules: &Health,
    mut dead: impl FnMut() -> Option<AppGone>,
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
        if let Some(gone) = dead() {
            return Err(ProbeError::Died {
                gone: Box::new(gone),
            }
            .into());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ProbeError::Unhealthy {
                timeout: rules.timeout,
                tries,
                last: failure,
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
    fn one_probe_limit_and_byte_matching() {
        assert_eq!(probe_limit(Duration::from_secs(60)), PROBE_LIMIT);
        assert_eq!(probe_limit(Duration::from_secs(3)), Duration::from_secs(3));
        assert_eq!(probe_limit(Duration::ZERO), Duration::from_millis(100));
        assert!(contains(b"UP \xff\xfe", b"UP"));
        assert!(contains(&[0xc3], b""));
        assert!(!contains(b"U", b"UP"));
    }
}
