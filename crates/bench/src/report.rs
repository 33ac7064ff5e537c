//! The report: a table on stdout and the same numbers as JSON.

use std::fmt::Write;
use std::time::Duration;

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

impl Report {
    /// The table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "machine: {}", self.machine);
        let _ = writeln!(
            out,
            "load: {} req/s total, {} clients per behaviour; fixture app ready {} ms after start",
            self.rate,
            self.connections,
            self.ready.as_millis()
        );
        for phase in &self.phases {
            let _ = writeln!(
                out,
                "\n== {}: {} of {} deployments succeeded",
                phase.name, phase.succeeded, phase.deployments
            );
            let _ = writeln!(
                out,
                "deploy wall time p50/max: {} / {} ms",
                ms(phase.wall.p50),
                ms(phase.wall.max)
            );
            for (hook, s) in &phase.hooks {
                let _ = writeln!(out, "  {hook:<7} p50/max: {} / {} ms", ms(s.p50), ms(s.max));
            }
            let _ = writeln!(
                out,
                "switch -> first answer by the new version through nginx p50/max: {} / {} ms",
                ms(phase.first_new_answer.p50),
                ms(phase.first_new_answer.max)
            );
            let _ = writeln!(
                out,
                "requests answered by an old version after a switch finished: {}",
                phase.stale
            );
            let _ = writeln!(
                out,
                "{:<46} {:>8} {:>7} {:>7}  {:<40} {:<28} around switches",
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
                    "{:<46} {:>8} {:>7} {:>7}  {:<40} {:<28} {}",
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
            if let Some(b) = phase.behaviours.last() {
                let per: Vec<String> = b
                    .failures_per_deployment
                    .iter()
                    .map(|n| n.to_string())
                    .collect();
                let _ = writeln!(
                    out,
                    "keep-alive no-retry failures per deployment: [{}]",
                    per.join(", ")
                );
            }
        }
        let _ = writeln!(
            out,
            "\ncrash reporting (start hook begins -> failure verdict):"
        );
        for (method, what, took) in &self.crash_reports {
            let _ = writeln!(out, "  {method:<9} {what:<40} {} ms", ms(*took));
        }
        let _ = writeln!(out, "\nhook binaries:");
        for (name, bytes, version) in &self.binaries {
            let _ = writeln!(
                out,
                "  {name:<7} {bytes:>9} bytes  --version {} ms (median of 50)",
                ms(*version)
            );
        }
        if let (Some(new), Some(old)) = (self.phases.first(), self.phases.get(1)) {
            let ratio = |a: Duration, b: Duration| {
                if b.is_zero() {
                    0.0
                } else {
                    a.as_secs_f64() / b.as_secs_f64()
                }
            };
            let _ = writeln!(out, "\nlegacy / portswap:");
            let _ = writeln!(
                out,
                "  deploy wall time p50: {:.1}x",
                ratio(old.wall.p50, new.wall.p50)
            );
            let _ = writeln!(
                out,
                "  switch -> first new answer p50: {:.1}x",
                ratio(old.first_new_answer.p50, new.first_new_answer.p50)
            );
            let crash = |m: &str| {
                self.crash_reports
                    .iter()
                    .find(|c| c.0 == m && c.1.contains("exits at once"))
                    .map(|c| c.2)
            };
            if let (Some(a), Some(b)) = (crash("legacy"), crash("portswap")) {
                let _ = writeln!(out, "  time to report a crashed start: {:.0}x", ratio(a, b));
            }
        }
        out
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
                .map(|(h, d)| format!("\"{h}\": {}", s(d)))
                .collect();
            let behaviours: Vec<String> = p
                .behaviours
                .iter()
                .map(|b| {
                    let kinds: Vec<String> = b.failures.iter().map(|(k, n)| format!("\"{k}\": {n}")).collect();
                    let per: Vec<String> = b.failures_per_deployment.iter().map(|n| n.to_string()).collect();
                    format!(
                        "\"{}\": {{\"requests\": {}, \"ok\": {}, \"failed\": {}, \"retried\": {}, \"failures\": {{{}}}, \
                         \"latency\": {}, \"around_switch\": {}, \"failures_per_deployment\": [{}]}}",
                        b.behaviour.key(),
                        b.requests,
                        b.ok,
                        b.failed(),
                        b.retries,
                        kinds.join(", "),
                        s(&b.latency),
                        s(&b.around_switch),
                        per.join(", ")
                    )
                })
                .collect();
            phases.push(format!(
                "\"{}\": {{\"deployments\": {}, \"succeeded\": {}, \"deploy_wall\": {}, \"hooks\": {{{}}}, \
                 \"switch_first_new_answer\": {}, \"stale_after_switch\": {}, \"clients\": {{{}}}}}",
                p.name,
                p.deployments,
                p.succeeded,
                s(&p.wall),
                hooks.join(", "),
                s(&p.first_new_answer),
                p.stale,
                behaviours.join(", ")
            ));
        }
        let crashes: Vec<String> = self
            .crash_reports
            .iter()
            .map(|(m, w, d)| {
                format!(
                    "{{\"method\": \"{m}\", \"case\": \"{w}\", \"ms\": {}}}",
                    ms(*d)
                )
            })
            .collect();
        let binaries: Vec<String> = self
            .binaries
            .iter()
            .map(|(n, b, v)| format!("\"{n}\": {{\"bytes\": {b}, \"version_ms\": {}}}", ms(*v)))
            .collect();
        format!(
            "{{\"machine\": {:?}, \"command\": {:?}, \"rate\": {}, \"connections\": {}, \"ready_ms\": {}, \
             \"phases\": {{{}}}, \"crash_reports\": [{}], \"binaries\": {{{}}}}}\n",
            self.machine,
            self.command,
            self.rate,
            self.connections,
            self.ready.as_millis(),
            phases.join(", "),
            crashes.join(", "),
            binaries.join(", ")
        )
    }
}
