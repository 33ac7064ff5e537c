//! The report: a table on stdout and the same numbers as JSON.

use std::fmt::Write;
use std::time::Duration;

use crate::load::Behaviour;
use crate::stats::{BehaviourStats, Spread};

/// The results of one deployment method under load.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub deployments: usize,
    pub succeeded: usize,
    pub wall: Spread,
    pub hooks: Vec<(&'static str, Spread)>,
    /// From `switch` starting to the first answer by the new version through nginx.
    pub first_new_answer: Spread,
    /// Per switch: the latest send time (from `switch` starting) of a request the old version
    /// still answered (zero when none did).
    pub last_old_answer: Spread,
    /// Requests sent after a switch finished that the old version answered.
    pub stale: usize,
    pub behaviours: Vec<BehaviourStats>,
}

/// Everything the bench measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub machine: String,
    pub command: String,
    pub rate: u32,
    pub connections: u32,
    /// Extra http-level nginx directives of this run.
    pub nginx: Vec<String>,
    pub ready: Duration,
    pub phases: Vec<Phase>,
    /// (method, what crashed, time from the start hook to the failure verdict)
    pub crash_reports: Vec<(&'static str, &'static str, Duration)>,
    /// (binary, bytes, median `--version` time)
    pub binaries: Vec<(String, u64, Duration)>,
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn spread(s: &Spread) -> String {
    format!("{} / {} / {} ms", ms(s.p50), ms(s.p99), ms(s.max))
}

/// A JSON string literal.
fn js(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The bench's targets (issue 4), with the numbers of a report.
pub struct Target {
    pub what: String,
    pub measured: String,
    pub met: bool,
}

/// Largest hook binary, in bytes (2 MB, decimal).
pub const MAX_BINARY_BYTES: u64 = 2_000_000;

fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        0.0
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

impl Phase {
    fn hook(&self, name: &str) -> Spread {
        self.hooks
            .iter()
            .find(|(h, _)| *h == name)
            .map(|(_, s)| *s)
            .unwrap_or_default()
    }
}

impl Report {
    /// The time from the start hook to the failure verdict for `method`'s crash at once.
    fn crash(&self, method: &str) -> Option<Duration> {
        self.crash_reports
            .iter()
            .find(|c| c.0 == method && c.1.contains("exits at once"))
            .map(|c| c.2)
    }

    /// The issue's targets against the portswap phase.
    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        if let Some(p) = self.phases.first() {
            let failed = |b: Behaviour| {
                p.behaviours
                    .iter()
                    .find(|s| s.behaviour == b)
                    .map_or(0, |s| s.failed())
            };
            let (f1, f2) = (
                failed(Behaviour::NewConnection),
                failed(Behaviour::KeepAliveRetry),
            );
            let f12 = f1 + f2;
            out.push(Target {
                what: "0 failed requests, client behaviours 1 and 2 (over 100 deployments)".into(),
                measured: format!(
                    "{f1} + {f2} failed over {} deployments ({} succeeded)",
                    p.deployments, p.succeeded
                ),
                met: f12 == 0 && p.succeeded == p.deployments,
            });
            let limit = self.ready + Duration::from_millis(300);
            out.push(Target {
                what: format!(
                    "deploy wall time p50 <= app readiness + 300 ms = {} ms",
                    ms(limit)
                ),
                measured: format!("{} ms", ms(p.wall.p50)),
                met: p.wall.p50 <= limit && p.succeeded > 0,
            });
            out.push(Target {
                what: "switch start -> first answer by the new version p50 <= 25 ms".into(),
                measured: format!("{} ms", ms(p.first_new_answer.p50)),
                met: p.first_new_answer.p50 <= Duration::from_millis(25) && p.succeeded > 0,
            });
            let switch = p.hook("switch");
            out.push(Target {
                what: "switch complete (hook returns) p50 <= 150 ms".into(),
                measured: format!("{} ms", ms(switch.p50)),
                met: switch.p50 <= Duration::from_millis(150) && p.succeeded > 0,
            });
            out.push(Target {
                what: "no request sent after switch returned reaches the old version".into(),
                measured: format!("{} did", p.stale),
                met: p.stale == 0,
            });
        }
        let crashes: Vec<Duration> = self
            .crash_reports
            .iter()
            .filter(|c| c.0 == "portswap")
            .map(|c| c.2)
            .collect();
        if let Some(worst) = crashes.iter().max() {
            out.push(Target {
                what: "a crashing start is reported in <= 1 s".into(),
                measured: format!("{} ms (worst case)", ms(*worst)),
                met: *worst <= Duration::from_secs(1),
            });
        }
        if !self.binaries.is_empty() {
            let biggest = self.binaries.iter().map(|b| b.1).max().unwrap_or(0);
            out.push(Target {
                what: format!("each hook binary <= 2 MB ({MAX_BINARY_BYTES} bytes)"),
                measured: format!("largest {biggest} bytes"),
                met: biggest <= MAX_BINARY_BYTES,
            });
            let slowest = self.binaries.iter().map(|b| b.2).max().unwrap_or_default();
            out.push(Target {
                what: "each hook's `--version` <= 10 ms".into(),
                measured: format!("slowest median {} ms", ms(slowest)),
                met: slowest <= Duration::from_millis(10),
            });
        }
        out
    }

    /// The table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "machine: {}", self.machine);
        let _ = writeln!(
            out,
            "load: {} req/s total, {} clients per behaviour; fixture app ready {} ms after start; \
             extra nginx directives: {}",
            self.rate,
            self.connections,
            self.ready.as_millis(),
            if self.nginx.is_empty() {
                "none".to_string()
            } else {
                self.nginx.join("; ")
            }
        );
        for phase in &self.phases {
            self.phase_table(&mut out, phase);
        }
        let _ = writeln!(
            out,
            "\ncrash reporting (start hook begins -> failure verdict):"
        );
        for (method, what, took) in &self.crash_reports {
            let _ = writeln!(out, "  {method:<9} {what:<42} {} ms", ms(*took));
        }
        if !self.binaries.is_empty() {
            let _ = writeln!(out, "\nhook binaries:");
        }
        for (name, bytes, version) in &self.binaries {
            let _ = writeln!(
                out,
                "  {name:<7} {bytes:>9} bytes  --version {} ms (median of 50)",
                ms(*version)
            );
        }
        if let (Some(new), Some(old)) = (self.phases.first(), self.phases.get(1)) {
            let _ = writeln!(out, "\nlegacy / portswap:");
            let pairs = [
                ("deploy wall time p50", old.wall.p50, new.wall.p50),
                (
                    "switch start -> first new answer p50",
                    old.first_new_answer.p50,
                    new.first_new_answer.p50,
                ),
                (
                    "switch start -> last old answer max",
                    old.last_old_answer.max,
                    new.last_old_answer.max,
                ),
            ];
            for (label, legacy, portswap) in pairs {
                let _ = writeln!(
                    out,
                    "  {label}: {:.1}x ({} / {} ms)",
                    ratio(legacy, portswap),
                    ms(legacy),
                    ms(portswap)
                );
            }
        }
        if let (Some(a), Some(b)) = (self.crash("legacy"), self.crash("portswap")) {
            let _ = writeln!(
                out,
                "  time to report a crashed start: {:.0}x ({} / {} ms)",
                ratio(a, b),
                ms(a),
                ms(b)
            );
        }
        let _ = writeln!(out, "\ntargets:");
        for t in self.targets() {
            let _ = writeln!(
                out,
                "  [{}] {}: {}",
                if t.met { "met " } else { "MISS" },
                t.what,
                t.measured
            );
        }
        out
    }

    fn phase_table(&self, out: &mut String, phase: &Phase) {
        let _ = writeln!(
            out,
            "\n== {}: {} of {} deployments succeeded",
            phase.name, phase.succeeded, phase.deployments
        );
        let _ = writeln!(
            out,
            "deploy wall time p50/max: {} / {} ms (app readiness {} ms)",
            ms(phase.wall.p50),
            ms(phase.wall.max),
            self.ready.as_millis()
        );
        for (hook, s) in &phase.hooks {
            let _ = writeln!(out, "  {hook:<7} p50/max: {} / {} ms", ms(s.p50), ms(s.max));
        }
        let _ = writeln!(
            out,
            "switch start -> first answer by the new version through nginx p50/max: {} / {} ms",
            ms(phase.first_new_answer.p50),
            ms(phase.first_new_answer.max)
        );
        let _ = writeln!(
            out,
            "switch start -> last request the old version still answered (sent at) p50/max: {} / {} ms",
            ms(phase.last_old_answer.p50),
            ms(phase.last_old_answer.max)
        );
        let _ = writeln!(
            out,
            "requests answered by an old version after a switch finished: {}",
            phase.stale
        );
        let _ = writeln!(
            out,
            "{:<46} {:>8} {:>7} {:>7}  {:<30} {:<28} around switches (±0.5 s)",
            "client behaviour",
            "requests",
            "failed",
            "retried",
            "failures by kind",
            "latency p50/p99/max",
        );
        for b in &phase.behaviours {
            let kinds: Vec<String> = b
                .failures
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(
                out,
                "{:<46} {:>8} {:>7} {:>7}  {:<30} {:<28} {}",
                b.behaviour.label(),
                b.requests,
                b.failed(),
                b.retries,
                if kinds.is_empty() {
                    "-".to_string()
                } else {
                    kinds.join(", ")
                },
                spread(&b.latency),
                spread(&b.around_switch)
            );
        }
        for b in phase.behaviours.iter().filter(|b| b.failed() > 0) {
            let _ = writeln!(
                out,
                "  {}: {} failed on a reused connection, {} of them sent after the server had \
                 already closed it; sent {} / {} / {} ms (min/p50/max) after a switch started; \
                 {} away from any switch",
                b.behaviour.key(),
                b.failed_on_reused,
                b.failed_closed_before_send,
                ms(b.failure_offsets.min),
                ms(b.failure_offsets.p50),
                ms(b.failure_offsets.max),
                b.failures_away_from_switch
            );
            let per: Vec<String> = b
                .failures_per_deployment
                .iter()
                .map(|n| n.to_string())
                .collect();
            let _ = writeln!(
                out,
                "  {} per deployment: [{}]",
                b.behaviour.key(),
                per.join(", ")
            );
        }
    }

    /// The same numbers as JSON.
    pub fn json(&self) -> String {
        let s = |d: &Spread| {
            format!(
                "{{\"p50_ms\": {}, \"p99_ms\": {}, \"max_ms\": {}}}",
                ms(d.p50),
                ms(d.p99),
                ms(d.max)
            )
        };
        let mut phases = Vec::new();
        for p in &self.phases {
            let hooks: Vec<String> = p
                .hooks
                .iter()
                .map(|(h, d)| format!("{}: {}", js(h), s(d)))
                .collect();
            let behaviours: Vec<String> = p
                .behaviours
                .iter()
                .map(|b| {
                    let kinds: Vec<String> = b
                        .failures
                        .iter()
                        .map(|(k, n)| format!("{}: {n}", js(k)))
                        .collect();
                    let per: Vec<String> = b
                        .failures_per_deployment
                        .iter()
                        .map(|n| n.to_string())
                        .collect();
                    format!(
                        "{}: {{\"label\": {}, \"requests\": {}, \"ok\": {}, \"failed\": {}, \
                         \"retried\": {}, \"failures\": {{{}}}, \"failed_on_reused\": {}, \
                         \"failed_closed_before_send\": {}, \"failure_offset_after_switch_start\": {}, \
                         \"failures_away_from_switch\": {}, \"latency\": {}, \"around_switch\": {}, \
                         \"failures_per_deployment\": [{}]}}",
                        js(b.behaviour.key()),
                        js(b.behaviour.label()),
                        b.requests,
                        b.ok,
                        b.failed(),
                        b.retries,
                        kinds.join(", "),
                        b.failed_on_reused,
                        b.failed_closed_before_send,
                        s(&b.failure_offsets),
                        b.failures_away_from_switch,
                        s(&b.latency),
                        s(&b.around_switch),
                        per.join(", ")
                    )
                })
                .collect();
            phases.push(format!(
                "{}: {{\"deployments\": {}, \"succeeded\": {}, \"deploy_wall\": {}, \"hooks\": {{{}}}, \
                 \"switch_first_new_answer\": {}, \"switch_last_old_answer\": {}, \
                 \"stale_after_switch\": {}, \"clients\": {{{}}}}}",
                js(p.name),
                p.deployments,
                p.succeeded,
                s(&p.wall),
                hooks.join(", "),
                s(&p.first_new_answer),
                s(&p.last_old_answer),
                p.stale,
                behaviours.join(", ")
            ));
        }
        let crashes: Vec<String> = self
            .crash_reports
            .iter()
            .map(|(m, w, d)| {
                format!(
                    "{{\"method\": {}, \"case\": {}, \"ms\": {}}}",
                    js(m),
                    js(w),
                    ms(*d)
                )
            })
            .collect();
        let binaries: Vec<String> = self
            .binaries
            .iter()
            .map(|(n, b, v)| format!("{}: {{\"bytes\": {b}, \"version_ms\": {}}}", js(n), ms(*v)))
            .collect();
        let targets: Vec<String> = self
            .targets()
            .iter()
            .map(|t| {
                format!(
                    "{{\"target\": {}, \"measured\": {}, \"met\": {}}}",
                    js(&t.what),
                    js(&t.measured),
                    t.met
                )
            })
            .collect();
        let nginx: Vec<String> = self.nginx.iter().map(|d| js(d)).collect();
        format!(
            "{{\"machine\": {}, \"command\": {}, \"rate\": {}, \"connections\": {}, \
             \"nginx_directives\": [{}], \"ready_ms\": {}, \"phases\": {{{}}}, \
             \"crash_reports\": [{}], \"binaries\": {{{}}}, \"targets\": [{}]}}\n",
            js(&self.machine),
            js(&self.command),
            self.rate,
            self.connections,
            nginx.join(", "),
            self.ready.as_millis(),
            phases.join(", "),
            crashes.join(", "),
            binaries.join(", "),
            targets.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{Outcome, Sample};
    use crate::stats::{behaviour_stats, Marks};

    /// A strict-enough JSON checker: returns the rest after one value, or an error.
    fn value(s: &str) -> Result<&str, String> {
        let s = s.trim_start();
        let mut chars = s.chars();
        match chars.next() {
            Some('{') => members(&s[1..], '}', true),
            Some('[') => members(&s[1..], ']', false),
            Some('"') => string(s),
            Some('t') if s.starts_with("true") => Ok(&s[4..]),
            Some('f') if s.starts_with("false") => Ok(&s[5..]),
            Some('n') if s.starts_with("null") => Ok(&s[4..]),
            Some(c) if c == '-' || c.is_ascii_digit() => {
                let end = s
                    .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
                    .unwrap_or(s.len());
                s[..end]
                    .parse::<f64>()
                    .map_err(|e| format!("{e}: {s:.20}"))?;
                Ok(&s[end..])
            }
            _ => Err(format!("unexpected: {s:.30}")),
        }
    }

    fn string(s: &str) -> Result<&str, String> {
        let mut escaped = false;
        for (i, c) in s.char_indices().skip(1) {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => return Ok(&s[i + 1..]),
                (false, c) if (c as u32) < 0x20 => return Err("control char".into()),
                _ => {}
            }
        }
        Err("unterminated string".into())
    }

    fn members(mut s: &str, close: char, keys: bool) -> Result<&str, String> {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix(close) {
            return Ok(rest);
        }
        loop {
            if keys {
                s = string(s.trim_start())?.trim_start();
                s = s.strip_prefix(':').ok_or(format!("no colon: {s:.30}"))?;
            }
            s = value(s)?.trim_start();
            if let Some(rest) = s.strip_prefix(',') {
                s = rest;
            } else if let Some(rest) = s.strip_prefix(close) {
                return Ok(rest);
            } else {
                return Err(format!("expected , or {close}: {s:.30}"));
            }
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn sample(sent: u64, outcome: Outcome, reused: bool) -> Sample {
        Sample {
            sent: ms(sent),
            done: ms(sent + 1),
            outcome,
            retried: false,
            reused,
            closed_before_send: reused,
        }
    }

    fn report() -> Report {
        let marks = [
            Marks {
                deploy_start: ms(0),
                switch_start: Some(ms(1000)),
                switch_end: Some(ms(1020)),
            },
            Marks {
                deploy_start: ms(2000),
                switch_start: Some(ms(3000)),
                switch_end: Some(ms(3020)),
            },
        ];
        let samples = vec![
            sample(500, Outcome::Ok("v0".into()), true),
            sample(1005, Outcome::ClosedEarly, true),
            sample(1010, Outcome::Ok("v1".into()), true),
            sample(2500, Outcome::Status(502), false),
            sample(3003, Outcome::Reset, true),
        ];
        let stats = behaviour_stats(Behaviour::KeepAliveNoRetry, &samples, &marks);
        assert_eq!(stats.failed(), 3);
        assert_eq!(stats.failures_per_deployment, vec![1, 2]);
        assert_eq!(
            (stats.failed_on_reused, stats.failed_closed_before_send),
            (2, 2)
        );
        assert_eq!(stats.failures_away_from_switch, 1, "the 502 at 2.5 s");
        assert_eq!(
            (stats.failure_offsets.min, stats.failure_offsets.max),
            (ms(3), ms(5))
        );
        let spread = Spread::of(&[ms(10), ms(20)]);
        Report {
            machine: "2 cores, \"quoted\" CPU\\model, nginx/1.22.1".into(),
            command: "bench --nginx 'keepalive_timeout 0'\t".into(),
            rate: 1200,
            connections: 16,
            nginx: vec!["keepalive_timeout 0".into()],
            ready: ms(500),
            phases: vec![Phase {
                name: "portswap",
                deployments: 2,
                succeeded: 2,
                wall: spread,
                hooks: vec![("stop", spread), ("switch", spread)],
                first_new_answer: spread,
                last_old_answer: spread,
                stale: 0,
                behaviours: vec![stats],
            }],
            crash_reports: vec![("portswap", "new app exits at once", ms(60))],
            binaries: vec![("switch".into(), 1_988_072, ms(1))],
        }
    }

    #[test]
    fn json_is_valid_and_escaped() {
        let json = report().json();
        let rest = value(&json).unwrap_or_else(|e| panic!("{e}\n{json}"));
        assert!(rest.trim().is_empty(), "trailing: {rest}");
        assert!(json.contains(r#""machine": "2 cores, \"quoted\" CPU\\model, nginx/1.22.1""#));
        assert!(json.contains(r#""failures_per_deployment": [1, 2]"#));
        assert!(json.contains(r#""nginx_directives": ["keepalive_timeout 0"]"#));
        assert!(json.contains(r#""met": true"#));
    }

    #[test]
    fn table_shows_failures_and_targets() {
        let table = report().table();
        for needle in [
            "== portswap: 2 of 2 deployments succeeded",
            "keep-alive, no retry",
            "reset 1, closed 1",
            "[met ] 0 failed requests, client behaviours 1 and 2 (over 100 deployments): 0 + 0",
            "keepalive_no_retry per deployment: [1, 2]",
            "[met ] a crashing start is reported in <= 1 s: 60.0 ms",
            "[met ] each hook binary <= 2 MB",
            "extra nginx directives: keepalive_timeout 0",
        ] {
            assert!(table.contains(needle), "no {needle:?} in\n{table}");
        }
    }
}
