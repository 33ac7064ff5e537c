//! The report: a table on stdout and the same numbers as JSON.

use std::fmt::Write;
use std::time::Duration;

use serde_json::{json, Value};

use crate::load::Behaviour;
use crate::stats::{BehaviourStats, Bin, OldAnswers, Spread};

/// Requests per 10 ms around one switch of a phase, for its SVG.
#[derive(Debug, Clone)]
pub struct Timeline {
    /// The deployment whose switch it shows.
    pub deployment: String,
    /// How long that `switch` ran.
    pub switch_took: Duration,
    pub bins: Vec<Bin>,
}

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
    /// Old-version answers split by connection: fresh after the switch (must be 0) or kept
    /// from before it.
    pub old_answers: OldAnswers,
    /// Per deployment: old-version answers on connections opened after its switch returned.
    pub fresh_per_deployment: Vec<usize>,
    /// Per switch with any: the send time (from the switch start) of the last old-version
    /// answer on a kept connection.
    pub last_on_kept: Spread,
    /// Where the successful switches' time went: each step the hook logged (probe, checks,
    /// config test, reload, workers' handover, ...), `total` (the hook's own timer), and
    /// `process` (the rest: exec, exit), over the switches.
    pub switch_steps: Vec<(String, Spread)>,
    pub timeline: Option<Timeline>,
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

/// The bench's targets (issue 4), with the numbers of a report.
pub struct Target {
    pub what: String,
    pub measured: String,
    pub met: bool,
}

/// Largest hook binary, in bytes (2.5 MB, decimal; 2 MB before ureq, issue 15).
pub const MAX_BINARY_BYTES: u64 = 2_500_000;

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

    /// The targets against the portswap phase.
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
        for p in self.phases.iter().filter(|p| p.name != "legacy scripts") {
            if p.name != "reload" {
                let failed: Vec<usize> = p.behaviours.iter().map(|b| b.failed()).collect();
                out.push(Target {
                    what: format!(
                        "{}: 0 failed requests in all three client behaviours",
                        p.name
                    ),
                    measured: format!(
                        "{failed:?} over {} deployments ({} succeeded)",
                        p.deployments, p.succeeded
                    ),
                    met: failed.iter().all(|n| *n == 0) && p.succeeded == p.deployments,
                });
            }
            out.push(Target {
                what: format!(
                    "{}: 0 answers by the old version on a connection opened after the switch",
                    p.name
                ),
                measured: format!(
                    "{} (on kept connections: {})",
                    p.old_answers.on_fresh_connection, p.old_answers.on_kept_connection
                ),
                met: p.old_answers.on_fresh_connection == 0,
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
                what: format!("each hook binary <= 2.5 MB ({MAX_BINARY_BYTES} bytes)"),
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
        let named = |name: &str| self.phases.iter().find(|p| p.name == name);
        if let (Some(new), Some(old)) = (named("reload"), named("legacy scripts")) {
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
        let _ = writeln!(
            out,
            "\nside by side: failed (new connection / keep-alive+retry / keep-alive no retry), \
             switch p50, first new answer p50, old answers on fresh / kept connections"
        );
        for p in &self.phases {
            let failed: Vec<String> = p
                .behaviours
                .iter()
                .map(|b| b.failed().to_string())
                .collect();
            let _ = writeln!(
                out,
                "  {:<32} {:<12} {:>8} ms {:>8} ms  {} / {}",
                p.name,
                failed.join(" / "),
                ms(p.hook("switch").p50),
                ms(p.first_new_answer.p50),
                p.old_answers.on_fresh_connection,
                p.old_answers.on_kept_connection
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
        if !phase.switch_steps.is_empty() {
            let steps: Vec<String> = phase
                .switch_steps
                .iter()
                .map(|(step, s)| format!("{step} {}", ms(s.p50)))
                .collect();
            let _ = writeln!(
                out,
                "  where the switch's time goes, p50 ms: {}",
                steps.join(", ")
            );
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
            "answered by the old version, on a connection opened after the switch returned: {} \
             (must be 0); on a connection kept from before the switch, once the new version answered: {} (last \
             sent p50/max {} / {} ms after the switch started)",
            phase.old_answers.on_fresh_connection,
            phase.old_answers.on_kept_connection,
            ms(phase.last_on_kept.p50),
            ms(phase.last_on_kept.max)
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
            let _ = writeln!(
                out,
                "{:<46} {:>8} {:>7} {:>7}  {:<30} {:<28} {}",
                b.behaviour.label(),
                b.requests,
                b.failed(),
                b.retries,
                b.kinds_text(),
                spread(&b.latency),
                spread(&b.around_switch)
            );
        }
        let broken: Vec<String> = phase
            .fresh_per_deployment
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| format!("deployment {}: {n}", i + 1))
            .collect();
        if !broken.is_empty() {
            let _ = writeln!(
                out,
                "  old answers on connections opened after the switch returned, by deployment: {}",
                broken.join(", ")
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
        let s = |d: &Spread| json!({"p50_ms": millis(d.p50), "p99_ms": millis(d.p99), "max_ms": millis(d.max)});
        let phases: serde_json::Map<String, Value> = self
            .phases
            .iter()
            .map(|p| {
                let hooks: serde_json::Map<String, Value> =
                    p.hooks.iter().map(|(h, d)| (h.to_string(), s(d))).collect();
                let clients: serde_json::Map<String, Value> = p
                    .behaviours
                    .iter()
                    .map(|b| {
                        let value = json!({
                            "label": b.behaviour.label(),
                            "requests": b.requests,
                            "ok": b.ok,
                            "failed": b.failed(),
                            "retried": b.retries,
                            "failures": b.kinds_json(),
                            "failed_on_reused": b.failed_on_reused,
                            "failed_closed_before_send": b.failed_closed_before_send,
                            "failure_offset_after_switch_start": s(&b.failure_offsets),
                            "failures_away_from_switch": b.failures_away_from_switch,
                            "latency": s(&b.latency),
                            "around_switch": s(&b.around_switch),
                            "failures_per_deployment": b.failures_per_deployment,
                        });
                        (b.behaviour.key().to_string(), value)
                    })
                    .collect();
                let timeline = p.timeline.as_ref().map(|t| {
                    json!({
                        "deployment": t.deployment,
                        "switch_ms": millis(t.switch_took),
                        "bins_10ms": t.bins.iter().map(|b| json!({
                            "at_ms": b.at_ms, "old": b.old, "new": b.new, "failed": b.failed
                        })).collect::<Vec<_>>(),
                    })
                });
                let value = json!({
                    "deployments": p.deployments,
                    "succeeded": p.succeeded,
                    "deploy_wall": s(&p.wall),
                    "hooks": hooks,
                    "switch_first_new_answer": s(&p.first_new_answer),
                    "switch_steps": p.switch_steps.iter().map(|(step, d)| (step.clone(), s(d))).collect::<serde_json::Map<String, Value>>(),
                    "switch_last_old_answer": s(&p.last_old_answer),
                    "stale_after_switch": p.stale,
                    "old_answer_on_connection_opened_after_switch": p.old_answers.on_fresh_connection,
                    "old_answer_on_connection_kept_from_before": p.old_answers.on_kept_connection,
                    "old_answer_on_connection_opened_after_switch_per_deployment":
                        p.fresh_per_deployment,
                    "last_old_answer_on_kept_connection": s(&p.last_on_kept),
                    "clients": clients,
                    "timeline": timeline,
                });
                (p.name.to_string(), value)
            })
            .collect();
        let crashes: Vec<Value> = self
            .crash_reports
            .iter()
            .map(|(m, w, d)| json!({"method": m, "case": w, "ms": millis(*d)}))
            .collect();
        let binaries: serde_json::Map<String, Value> = self
            .binaries
            .iter()
            .map(|(n, b, v)| (n.clone(), json!({"bytes": b, "version_ms": millis(*v)})))
            .collect();
        let targets: Vec<Value> = self
            .targets()
            .iter()
            .map(|t| json!({"target": t.what, "measured": t.measured, "met": t.met}))
            .collect();
        let report = json!({
            "machine": self.machine,
            "command": self.command,
            "rate": self.rate,
            "connections": self.connections,
            "nginx_directives": self.nginx,
            "ready_ms": self.ready.as_millis() as u64,
            "phases": phases,
            "crash_reports": crashes,
            "binaries": binaries,
            "targets": targets,
        });
        let mut text = serde_json::to_string_pretty(&report).expect("JSON of plain values");
        text.push('\n');
        text
    }
}

/// Milliseconds with one decimal, as a JSON number.
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{Outcome, Sample};
    use crate::stats::{behaviour_stats, Marks};

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
            conn_opened: ms(if reused { 0 } else { sent }),
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
                old_answers: OldAnswers {
                    on_fresh_connection: 0,
                    on_kept_connection: 3,
                    last_on_kept: Some(ms(40)),
                },
                fresh_per_deployment: vec![0, 0],
                last_on_kept: spread,
                switch_steps: vec![("probe".into(), spread)],
                timeline: None,
                behaviours: vec![stats],
            }],
            crash_reports: vec![("portswap", "new app exits at once", ms(60))],
            binaries: vec![("switch".into(), 1_988_072, ms(1))],
        }
    }

    #[test]
    fn json_is_valid_and_escaped() {
        let json = report().json();
        let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}\n{json}"));
        assert_eq!(v["machine"], "2 cores, \"quoted\" CPU\\model, nginx/1.22.1");
        let phase = &v["phases"]["portswap"];
        assert_eq!(
            phase["clients"]["keepalive_no_retry"]["failures_per_deployment"],
            json!([1, 2])
        );
        assert_eq!(phase["old_answer_on_connection_opened_after_switch"], 0);
        assert_eq!(phase["old_answer_on_connection_kept_from_before"], 3);
        assert_eq!(phase["switch_first_new_answer"]["p50_ms"], 10.0);
        assert_eq!(v["nginx_directives"], json!(["keepalive_timeout 0"]));
        assert!(v["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["met"] == true));
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
            "[met ] each hook binary <= 2.5 MB",
            "extra nginx directives: keepalive_timeout 0",
        ] {
            assert!(table.contains(needle), "no {needle:?} in\n{table}");
        }
    }
}
