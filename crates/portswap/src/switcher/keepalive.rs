//! What a reload does to idle keep-alive client connections on this host, and waiting for
//! the old workers' kept connections when nginx keeps them.
//!
//! Every reload retires the old workers. Before nginx 1.27.4 each closes its idle keep-alive
//! connections at once, so a client that reuses one without retrying (a load balancer) gets
//! an error. With `keepalive_min_timeout` (1.27.4+) an old worker keeps such a connection,
//! answers one more request on it with `Connection: close`, then closes it: no error, but
//! that request is answered by the old version. Which case applies is read from nginx itself
//! (`nginx -V -T`, the version and the loaded configuration), run like `nginx.test_command`.

use std::thread;
use std::time::{Duration, Instant};

use super::nginx_conf;
use super::nginx_dump::{self, NginxDump};
use super::workers::Workers;
use crate::config::By;
use crate::duration::show;

/// The first nginx release with `keepalive_min_timeout`.
pub const MIN_TIMEOUT_SINCE: (u32, u32, u32) = (1, 27, 4);

/// What nginx told about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxInfo {
    /// `major.minor.patch` from `nginx -V`, when it could be read.
    pub version: Option<(u32, u32, u32)>,
    /// The largest non-zero `keepalive_min_timeout` in the loaded configuration.
    pub min_timeout: Option<Duration>,
}

impl NginxInfo {
    /// What `nginx -V -T` says about keep-alive.
    pub fn of(dump: &NginxDump) -> NginxInfo {
        NginxInfo {
            version: dump.version(),
            min_timeout: parse_min_timeout(dump.config()),
        }
    }

    /// The version as `1.30.4`, or `unknown`.
    pub fn version_text(&self) -> String {
        self.version
            .map_or("unknown".into(), |(a, b, c)| format!("{a}.{b}.{c}"))
    }

    /// One line for `switch --status`: what a reload does to idle keep-alive clients here.
    pub fn behaviour(&self) -> String {
        let version = self.version_text();
        match self.min_timeout {
            Some(t) => format!(
                "nginx {version} with keepalive_min_timeout {}: a reload keeps idle keep-alive \
                 connections for one more answer (old version, `Connection: close`): no error",
                show(t)
            ),
            None => {
                let (what, fix) = if self.version.is_some_and(|v| v >= MIN_TIMEOUT_SINCE) {
                    (
                        "without",
                        "; set `keepalive_min_timeout` (docs/switch-mechanisms.md)",
                    )
                } else {
                    (
                        "(before 1.27.4) without",
                        " (docs/switch-mechanisms.md: keep-alive clients)",
                    )
                };
                format!(
                    "nginx {version} {what} keepalive_min_timeout: each reload closes idle \
                     keep-alive connections, a client that reuses one without retrying (a load \
                     balancer) may get an error{fix}"
                )
            }
        }
    }
}

/// After a reload, given nginx's dump of the configuration it loaded: with
/// `keepalive_min_timeout` in effect, waits for the kept connections of `retired` (the
/// workers this reload replaced, [`wait_for_old_workers`]) and returns what happened;
/// otherwise logs what nginx told (debug) and returns `None`. The wait never goes past
/// `limit`.
pub fn after_reload(
    dump: &NginxDump,
    master: i32,
    retired: &[i32],
    limit: Instant,
) -> Option<String> {
    match NginxInfo::of(dump) {
        NginxInfo {
            min_timeout: Some(t),
            ..
        } => Some(wait_for_old_workers(master, retired, t, limit)),
        info => {
            log::debug!("keep-alive: {}", info.behaviour());
            None
        }
    }
}

/// One line for `switch --status`: what a switch does to idle keep-alive clients on this
/// host; in reload mode, asked of nginx as `test_command` runs it.
pub fn status(by: By, test_command: &[String]) -> String {
    if by == By::Nftables {
        return "switch.by nftables: a switch does not reload nginx, so it closes no client \
                connection (a reload happens only when the include is first pointed at the \
                service port)"
            .into();
    }
    match nginx_dump::read(test_command) {
        Ok(dump) => NginxInfo::of(&dump).behaviour(),
        Err(e) => format!("unknown: {e}"),
    }
}

/// An nginx time value: `500ms`, `5s`, `1m30s`, `2` (seconds). `None` when malformed.
pub fn parse_nginx_time(value: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut rest = value;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let ms = match &rest[..unit] {
            "ms" => 1,
            "" | "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        total = total.checked_add(number.checked_mul(ms)?)?;
        rest = &rest[unit..];
    }
    Some(Duration::from_millis(total))
}

/// The largest non-zero `keepalive_min_timeout` in an `nginx -T` dump (read by
/// [`nginx_conf`]: comments and quotes as nginx reads them; any context counts).
pub fn parse_min_timeout(dump: &str) -> Option<Duration> {
    let mut best: Option<Duration> = None;
    nginx_conf::walk(&nginx_conf::parse(dump), &mut |d| {
        if let ("keepalive_min_timeout", [value], None) = (d.name(), d.args(), &d.block) {
            if let Some(t) = parse_nginx_time(value).filter(|t| !t.is_zero()) {
                best = best.max(Some(t));
            }
        }
    });
    best
}

/// With `keepalive_min_timeout` in effect, waits until `retired` (the workers of `master`
/// that this switch's reload replaced) have closed their kept connections and exited, for at
/// most the directive's value (plus 100 ms) and never past `limit`. Workers still shutting
/// down from earlier reloads are not this switch's: they are not waited for. Returns a line
/// for the log saying what happened.
pub fn wait_for_old_workers(
    master: i32,
    retired: &[i32],
    min_timeout: Duration,
    limit: Instant,
) -> String {
    let started = Instant::now();
    let deadline = limit.min(started + min_timeout + Duration::from_millis(100));
    loop {
        let left: Vec<i32> = Workers::of(master)
            .all()
            .filter(|pid| retired.contains(pid))
            .collect();
        if left.is_empty() {
            return format!(
                "keepalive_min_timeout {}: the old workers answered their kept connections \
                 and exited {} after the reload completed",
                show(min_timeout),
                show(started.elapsed())
            );
        }
        if Instant::now() >= deadline {
            return format!(
                "keepalive_min_timeout {}: after waiting {}, old worker(s) {left:?} still hold \
                 connections kept from before the switch; each may answer one more request with \
                 the old version (`Connection: close`) for up to {} more",
                show(min_timeout),
                show(started.elapsed()),
                show(min_timeout.saturating_sub(started.elapsed()))
            );
        }
        thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_times() {
        assert_eq!(parse_nginx_time("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_nginx_time("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_nginx_time("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_nginx_time("5x"), None);
        assert_eq!(parse_nginx_time("s"), None);
    }

    #[test]
    fn the_directive_is_found_outside_comments_and_strings() {
        let dump = "# configuration file /etc/nginx/nginx.conf:\n\
                    http {\n  # keepalive_min_timeout 30s;\n  keepalive_min_timeout 500ms ;\n\
                    server { listen 80; keepalive_min_timeout \"2s\"; }\n\
                    server { return 200 'keepalive_min_timeout 9s;'; keepalive_min_timeout 0; }\n}\n";
        assert_eq!(parse_min_timeout(dump), Some(Duration::from_secs(2)));
        assert_eq!(parse_min_timeout("http { keepalive_timeout 65; }"), None);
        assert_eq!(parse_min_timeout("http { keepalive_min_timeout 0; }"), None);
    }

    #[test]
    fn behaviour_lines_name_the_risk_or_the_directive() {
        let old = NginxInfo {
            version: Some((1, 22, 1)),
            min_timeout: None,
        };
        assert!(
            old.behaviour().contains("may get an error"),
            "{}",
            old.behaviour()
        );
        assert!(old.behaviour().contains("before 1.27.4"));
        let new = NginxInfo {
            version: Some((1, 30, 4)),
            min_timeout: None,
        };
        assert!(new.behaviour().contains("set `keepalive_min_timeout`"));
        let set = NginxInfo {
            version: Some((1, 30, 4)),
            min_timeout: Some(Duration::from_secs(5)),
        };
        assert!(set.behaviour().contains("keepalive_min_timeout 5s"));
        assert!(set.behaviour().contains("no error"));
    }
}
