//! What a reload does to idle keep-alive client connections on this host, and waiting for
//! the old workers' kept connections when nginx keeps them.
//!
//! Every reload retires the old workers. Before nginx 1.27.4 each closes its idle keep-alive
//! connections at once, so a client that reuses one without retrying (a load balancer) gets
//! an error. With `keepalive_min_timeout` (1.27.4+) an old worker keeps such a connection,
//! answers one more request on it with `Connection: close`, then closes it: no error, but
//! that request is answered by the old version. Which case applies is read from nginx itself
//! (`nginx -V -T`, the version and the loaded configuration), run like `nginx.test_command`.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use super::workers::Workers;
use crate::config::By;
use crate::duration::show;
use crate::process::resolve_program;

/// How long `nginx -V -T` may take before it is killed and the answer is "unknown".
pub const PROBE_LIMIT: Duration = Duration::from_secs(3);

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
                    ("without", "; set `keepalive_min_timeout` (README)")
                } else {
                    ("(before 1.27.4) without", " (README: keep-alive clients)")
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

/// The argv that asks nginx for its version and configuration: `test_command` with its `-t`
/// turned into `-T` (dump the configuration) and `-V` added, so the same binary, prefix and
/// configuration file are used. `None` when `test_command` has no `-t`.
pub fn probe_argv(test_command: &[String]) -> Option<Vec<String>> {
    let mut argv = Vec::with_capacity(test_command.len() + 1);
    let mut found = false;
    for arg in test_command {
        match arg.as_str() {
            "-t" => {
                found = true;
                argv.push("-T".to_string());
            }
            _ => argv.push(arg.clone()),
        }
    }
    argv.push("-V".into());
    found.then_some(argv)
}

/// A running `nginx -V -T`, started early so it overlaps with other work. Its stdout and
/// stderr share one non-blocking pipe, read until EOF or [`PROBE_LIMIT`] (no thread).
pub struct Probe {
    started: Instant,
    run: Result<(Child, File), String>,
}

impl Probe {
    /// Starts asking nginx (as `test_command` runs it) for its version and configuration.
    pub fn start(test_command: &[String]) -> Probe {
        Probe {
            started: Instant::now(),
            run: spawn(test_command),
        }
    }

    /// Its answer, waiting at most until [`PROBE_LIMIT`] after the start; an error says why
    /// nothing could be learnt.
    pub fn finish(self) -> Result<NginxInfo, String> {
        let deadline = self.started + PROBE_LIMIT;
        self.finish_by(deadline)
    }

    fn finish_by(self, deadline: Instant) -> Result<NginxInfo, String> {
        let (mut child, mut pipe) = self.run?;
        let mut text = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!(
                            "`nginx -V -T` took over {}",
                            show(deadline.saturating_duration_since(self.started))
                        ));
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(format!("`nginx -V -T`: {e}")),
            }
        }
        let status = child.wait().map_err(|e| format!("`nginx -V -T`: {e}"))?;
        let text = String::from_utf8_lossy(&text);
        if !status.success() {
            let last = text.lines().rev().find(|l| !l.trim().is_empty());
            return Err(format!(
                "`nginx -V -T` failed ({status}): {}",
                last.unwrap_or("no output").trim()
            ));
        }
        let dump = text
            .find("# configuration file ")
            .map_or("", |at| &text[at..]);
        Ok(NginxInfo {
            version: parse_version(&text),
            min_timeout: parse_min_timeout(dump),
        })
    }

    /// After a reload: with `keepalive_min_timeout` in effect, waits for the old workers'
    /// kept connections ([`wait_for_old_workers`]) and returns what happened; otherwise logs
    /// what nginx told (debug) or why it could not be asked (info), and returns `None`.
    /// Neither the answer nor the wait goes past `limit`, so the switch keeps its budget.
    pub fn after_reload(self, master: Option<i32>, limit: Instant) -> Option<String> {
        let deadline = limit.min(self.started + PROBE_LIMIT);
        match self.finish_by(deadline) {
            Ok(NginxInfo {
                min_timeout: Some(t),
                ..
            }) => master.map(|m| wait_for_old_workers(m, t, limit)),
            Ok(info) => {
                log::debug!("keep-alive: {}", info.behaviour());
                None
            }
            Err(e) => {
                log::info!("keep-alive behaviour of nginx unknown: {e}");
                None
            }
        }
    }
}

fn spawn(test_command: &[String]) -> Result<(Child, File), String> {
    let argv = probe_argv(test_command)
        .ok_or_else(|| format!("nginx.test_command `{}` has no -t", test_command.join(" ")))?;
    let program = resolve_program(&argv[0]).map_err(|e| e.to_string())?;
    let failed = |e: &dyn std::fmt::Display| format!("`{}` could not run: {e}", argv.join(" "));
    let (read, write) = nix::unistd::pipe().map_err(|e| failed(&e))?;
    fcntl(read.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(|e| failed(&e))?;
    let stderr = write.try_clone().map_err(|e| failed(&e))?;
    // The command (holding the write ends) is dropped here, so EOF comes when nginx exits.
    let child = Command::new(program)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(write)
        .stderr(stderr)
        .spawn()
        .map_err(|e| failed(&e))?;
    Ok((child, File::from(read)))
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
    match Probe::start(test_command).finish() {
        Ok(info) => info.behaviour(),
        Err(e) => format!("unknown: {e}"),
    }
}

/// `1.22.1` from `nginx version: nginx/1.22.1 (Ubuntu)`.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let line = text.lines().find(|l| l.contains("nginx version:"))?;
    let (_, rest) = line.split_once('/')?;
    let mut parts = rest
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
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

/// The largest non-zero `keepalive_min_timeout` in an `nginx -T` dump (comments and quotes
/// handled; any context counts).
pub fn parse_min_timeout(dump: &str) -> Option<Duration> {
    let mut tokens = Vec::new();
    let mut chars = dump.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '#' => while chars.next_if(|c| *c != '\n').is_some() {},
            ';' | '{' | '}' => tokens.push(c.to_string()),
            '"' | '\'' => {
                let mut word = String::new();
                while let Some(q) = chars.next() {
                    match q {
                        '\\' => word.extend(chars.next()),
                        q if q == c => break,
                        q => word.push(q),
                    }
                }
                tokens.push(word);
            }
            c if c.is_whitespace() => {}
            c => {
                let mut word = c.to_string();
                while let Some(n) = chars.next_if(|n| !n.is_whitespace() && !";{}".contains(*n)) {
                    word.push(n);
                }
                tokens.push(word);
            }
        }
    }
    let mut best: Option<Duration> = None;
    for (i, window) in tokens.windows(3).enumerate() {
        let at_start = i == 0 || matches!(tokens[i - 1].as_str(), ";" | "{" | "}");
        if at_start && window[0] == "keepalive_min_timeout" && window[2] == ";" {
            if let Some(t) = parse_nginx_time(&window[1]).filter(|t| !t.is_zero()) {
                best = best.max(Some(t));
            }
        }
    }
    best
}

/// With `keepalive_min_timeout` in effect, waits until the old workers of `master` have
/// closed their kept connections and exited, for at most the directive's value (plus
/// 100 ms) and never past `limit`. Returns a line for the log saying what happened.
pub fn wait_for_old_workers(master: i32, min_timeout: Duration, limit: Instant) -> String {
    let started = Instant::now();
    let deadline = limit.min(started + min_timeout + Duration::from_millis(100));
    loop {
        let left = Workers::of(master).shutting_down;
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

    fn argv(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn probe_runs_the_test_command_with_dump_and_version() {
        assert_eq!(
            probe_argv(&argv(&["sudo", "-n", "/usr/sbin/nginx", "-t", "-q"])),
            Some(argv(&["sudo", "-n", "/usr/sbin/nginx", "-T", "-q", "-V"]))
        );
        assert_eq!(
            probe_argv(&argv(&[
                "nginx",
                "-p",
                "/x/",
                "-c",
                "/x/n.conf",
                "-t",
                "-q"
            ])),
            Some(argv(&[
                "nginx",
                "-p",
                "/x/",
                "-c",
                "/x/n.conf",
                "-T",
                "-q",
                "-V"
            ]))
        );
        assert_eq!(probe_argv(&argv(&["/usr/local/bin/check"])), None);
    }

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("nginx version: nginx/1.22.1\nbuilt by"),
            Some((1, 22, 1))
        );
        assert_eq!(
            parse_version("nginx version: nginx/1.24.0 (Ubuntu)"),
            Some((1, 24, 0))
        );
        assert_eq!(
            parse_version("nginx version: openresty/1.21.4.1"),
            Some((1, 21, 4))
        );
        assert_eq!(parse_version("no version here"), None);
    }

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
