//! Turning samples and hook runs into the numbers of the report.

use std::time::Duration;

use crate::load::{Behaviour, Outcome, Sample};
use crate::site::HookRun;

/// The `p`-quantile (0..=1) of `values`, or zero when empty.
pub fn percentile(values: &[Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// min, p50, p99 and max.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    pub min: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Spread {
    pub fn of(values: &[Duration]) -> Spread {
        Spread {
            min: values.iter().min().copied().unwrap_or_default(),
            p50: percentile(values, 0.5),
            p99: percentile(values, 0.99),
            max: percentile(values, 1.0),
        }
    }
}

/// One client behaviour's results.
#[derive(Debug, Clone)]
pub struct BehaviourStats {
    pub behaviour: Behaviour,
    pub requests: usize,
    pub ok: usize,
    /// Count per failure kind, in [`Outcome::FAILURE_KINDS`] order.
    pub failures: Vec<(&'static str, usize)>,
    pub retries: usize,
    pub latency: Spread,
    /// Latency of requests sent within ±0.5 s of a switch starting.
    pub around_switch: Spread,
    /// Failures per deployment (sent between its first hook and the next deployment).
    pub failures_per_deployment: Vec<usize>,
    /// Failed requests whose first attempt went out on a reused connection.
    pub failed_on_reused: usize,
    /// Of those, the ones sent on a connection the server had already closed (FIN/RST
    /// waiting in our socket before the write): a pool that checks idle connections avoids
    /// them; the rest raced the close.
    pub failed_closed_before_send: usize,
    /// When failures were sent, measured from the latest switch start before them.
    pub failure_offsets: Spread,
    /// Failures sent before any switch of the phase, or more than 1 s after the latest one.
    pub failures_away_from_switch: usize,
}

impl BehaviourStats {
    pub fn failed(&self) -> usize {
        self.failures.iter().map(|(_, n)| n).sum()
    }

    /// `{"status": 0, "reset": 1, ...}`: the count of each failure kind.
    pub fn kinds_json(&self) -> serde_json::Value {
        self.failures
            .iter()
            .map(|(k, n)| (k.to_string(), serde_json::Value::from(*n)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// `reset 1, closed 3`, or `-` when nothing failed.
    pub fn kinds_text(&self) -> String {
        let kinds: Vec<String> = self
            .failures
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if kinds.is_empty() {
            "-".into()
        } else {
            kinds.join(", ")
        }
    }
}

/// Where each deployment starts and where its switch starts and ends, since the origin.
#[derive(Debug, Clone, Copy)]
pub struct Marks {
    pub deploy_start: Duration,
    pub switch_start: Option<Duration>,
    pub switch_end: Option<Duration>,
}

/// The marks of each deployment's hook runs (in CodeDeploy order).
pub fn marks(runs: &[Vec<HookRun>]) -> Vec<Marks> {
    runs.iter()
        .map(|r| {
            let switch = r.iter().find(|h| h.hook == "switch");
            Marks {
                deploy_start: r[0].started,
                switch_start: switch.map(|s| s.started),
                switch_end: switch.map(|s| s.started + s.took),
            }
        })
        .collect()
}

/// Summarises one behaviour's samples against the deployments' marks.
pub fn behaviour_stats(
    behaviour: Behaviour,
    samples: &[Sample],
    marks: &[Marks],
) -> BehaviourStats {
    let failures = Outcome::FAILURE_KINDS
        .iter()
        .map(|kind| {
            (
                *kind,
                samples
                    .iter()
                    .filter(|s| s.outcome.failure() == Some(kind))
                    .count(),
            )
        })
        .collect();
    let latencies: Vec<Duration> = samples.iter().map(|s| s.done - s.sent).collect();
    let half = Duration::from_millis(500);
    let near: Vec<Duration> = samples
        .iter()
        .filter(|s| {
            marks
                .iter()
                .filter_map(|m| m.switch_start)
                .any(|t| s.sent + half >= t && s.sent <= t + half)
        })
        .map(|s| s.done - s.sent)
        .collect();
    let failures_per_deployment = marks
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let end = marks
                .get(i + 1)
                .map_or(Duration::MAX, |next| next.deploy_start);
            samples
                .iter()
                .filter(|s| {
                    s.sent >= m.deploy_start && s.sent < end && s.outcome.failure().is_some()
                })
                .count()
        })
        .collect();
    let failed: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.outcome.failure().is_some())
        .collect();
    let switches: Vec<Duration> = marks.iter().filter_map(|m| m.switch_start).collect();
    let offsets: Vec<Option<Duration>> = failed
        .iter()
        .map(|s| {
            switches
                .iter()
                .filter(|t| **t <= s.sent)
                .max()
                .map(|t| s.sent - *t)
        })
        .collect();
    let near_offsets: Vec<Duration> = offsets
        .iter()
        .flatten()
        .copied()
        .filter(|d| *d <= Duration::from_secs(1))
        .collect();
    BehaviourStats {
        failed_on_reused: failed.iter().filter(|s| s.reused).count(),
        failed_closed_before_send: failed.iter().filter(|s| s.closed_before_send).count(),
        failures_away_from_switch: failed.len() - near_offsets.len(),
        failure_offsets: Spread::of(&near_offsets),
        behaviour,
        requests: samples.len(),
        ok: samples
            .iter()
            .filter(|s| s.outcome.failure().is_none())
            .count(),
        failures,
        retries: samples.iter().filter(|s| s.retried).count(),
        latency: Spread::of(&latencies),
        around_switch: Spread::of(&near),
        failures_per_deployment,
    }
}

/// From a switch's start to the first answer by `version` through nginx.
pub fn first_new_answer(
    all: &[&Sample],
    switch_start: Duration,
    version: &str,
) -> Option<Duration> {
    all.iter()
        .filter(|s| s.sent >= switch_start && s.outcome == Outcome::Ok(version.to_string()))
        .map(|s| s.done - switch_start)
        .min()
}

/// The latest send time, from `switch_start`, of a request sent after the switch started
/// and answered by another version than `version` (the old one still serving).
pub fn last_old_answer(
    all: &[&Sample],
    switch_start: Duration,
    until: Duration,
    version: &str,
) -> Option<Duration> {
    all.iter()
        .filter(|s| s.sent >= switch_start && s.sent < until)
        .filter(|s| matches!(&s.outcome, Outcome::Ok(v) if v != version))
        .map(|s| s.sent - switch_start)
        .max()
}

/// Requests sent after a switch ended (and before `until`, the next switch) that another
/// version answered (must be none).
pub fn stale_after(all: &[&Sample], switch_end: Duration, until: Duration, version: &str) -> usize {
    all.iter()
        .filter(|s| s.sent >= switch_end && s.sent < until)
        .filter(|s| matches!(&s.outcome, Outcome::Ok(v) if v != version))
        .count()
}

/// Answers by another version than `version` to requests sent after a switch, split by the
/// connection that carried them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OldAnswers {
    /// Sent after the switch returned, on a connection opened after it returned: must be 0.
    pub on_fresh_connection: usize,
    /// Sent once the new version answered (after the first request it answered was sent),
    /// on a connection kept from before the switch started: nginx with
    /// `keepalive_min_timeout` answers one more request on each from the old worker.
    pub on_kept_connection: usize,
    /// The latest send time, from the switch start, of those on kept connections.
    pub last_on_kept: Option<Duration>,
}

/// [`OldAnswers`] for the switch from `start` to `end`, looking at requests sent before
/// `until` (the next switch).
pub fn old_answers(
    all: &[&Sample],
    (start, end, until): (Duration, Duration, Duration),
    version: &str,
) -> OldAnswers {
    let in_range = || all.iter().filter(|s| s.sent >= start && s.sent < until);
    let switched = in_range()
        .filter(|s| s.outcome == Outcome::Ok(version.to_string()))
        .map(|s| s.sent)
        .min()
        .unwrap_or(until);
    let old = in_range().filter(|s| matches!(&s.outcome, Outcome::Ok(v) if v != version));
    let mut out = OldAnswers::default();
    for s in old {
        if s.sent >= end && s.conn_opened >= end {
            out.on_fresh_connection += 1;
        }
        if s.conn_opened < start && s.sent >= switched {
            out.on_kept_connection += 1;
            out.last_on_kept = out.last_on_kept.max(Some(s.sent - start));
        }
    }
    out
}

/// One 10 ms bin of a [`timeline`]: requests sent in it, by who answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bin {
    /// The bin's start, in ms from the switch start (negative before it).
    pub at_ms: i64,
    pub old: usize,
    pub new: usize,
    pub failed: usize,
}

/// Requests per 10 ms from `before` ahead of a switch start to `after` it, by who answered.
pub fn timeline(
    all: &[&Sample],
    switch_start: Duration,
    version: &str,
    (before, after): (Duration, Duration),
) -> Vec<Bin> {
    let width = 10u128;
    let first = switch_start.saturating_sub(before);
    let count = ((before + after).as_millis() / width) as usize;
    let offset = first.as_millis() as i64 - switch_start.as_millis() as i64;
    let mut bins: Vec<Bin> = (0..count)
        .map(|i| Bin {
            at_ms: offset + (i as i64) * width as i64,
            ..Bin::default()
        })
        .collect();
    for s in all.iter().filter(|s| s.sent >= first) {
        let i = ((s.sent - first).as_millis() / width) as usize;
        let Some(b) = bins.get_mut(i) else { continue };
        match &s.outcome {
            Outcome::Ok(v) if v == version => b.new += 1,
            Outcome::Ok(_) => b.old += 1,
            _ => b.failed += 1,
        }
    }
    bins
}

/// p50 and max of each hook's durations, in CodeDeploy order.
pub fn hook_spreads(runs: &[Vec<HookRun>]) -> Vec<(&'static str, Spread)> {
    ["stop", "start", "health", "switch"]
        .iter()
        .map(|hook| {
            let took: Vec<Duration> = runs
                .iter()
                .flatten()
                .filter(|r| r.hook == *hook)
                .map(|r| r.took)
                .collect();
            (*hook, Spread::of(&took))
        })
        .collect()
}

/// Where the successful switches' time went: each step their timings line names, in the
/// order they first appear, then `process`: what the hook's own `total` leaves of the time
/// the bench measured (exec, loading, exit).
pub fn switch_steps(runs: &[Vec<HookRun>]) -> Vec<(String, Spread)> {
    let switches: Vec<&HookRun> = runs
        .iter()
        .flatten()
        .filter(|r| r.hook == "switch" && r.ok && !r.timings.is_empty())
        .collect();
    let mut names: Vec<String> = Vec::new();
    for run in &switches {
        for (step, _) in &run.timings {
            if !names.contains(step) {
                names.push(step.clone());
            }
        }
    }
    let of_ms = |ms: f64| Duration::from_secs_f64(ms.max(0.0) / 1000.0);
    let mut out: Vec<(String, Spread)> = names
        .into_iter()
        .map(|name| {
            let values: Vec<Duration> = switches
                .iter()
                .map(|r| {
                    let ms = r
                        .timings
                        .iter()
                        .find(|(s, _)| *s == name)
                        .map_or(0.0, |t| t.1);
                    of_ms(ms)
                })
                .collect();
            (name, Spread::of(&values))
        })
        .collect();
    let outside: Vec<Duration> = switches
        .iter()
        .filter_map(|r| {
            let total = r.timings.iter().find(|(s, _)| s == "total")?.1;
            Some(r.took.saturating_sub(of_ms(total)))
        })
        .collect();
    if !outside.is_empty() {
        out.push(("process".into(), Spread::of(&outside)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_steps_in_order_with_the_process_time() {
        let run = |probe: f64, total: f64| HookRun {
            hook: "switch",
            started: Duration::ZERO,
            took: Duration::from_millis(30),
            ok: true,
            verdict: String::new(),
            timings: vec![("probe".into(), probe), ("total".into(), total)],
        };
        let steps = switch_steps(&[vec![run(1.0, 20.0)], vec![run(3.0, 26.0)]]);
        let names: Vec<&str> = steps.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["probe", "total", "process"]);
        assert_eq!(steps[0].1.max, Duration::from_millis(3));
        assert_eq!(steps[2].1.max, Duration::from_millis(10));
    }

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    fn answered(sent: u64, opened: u64, version: &str) -> Sample {
        Sample {
            sent: Duration::from_millis(sent),
            done: Duration::from_millis(sent + 1),
            outcome: Outcome::Ok(version.into()),
            retried: false,
            reused: opened < sent,
            closed_before_send: false,
            conn_opened: Duration::from_millis(opened),
        }
    }

    #[test]
    fn old_answers_split_fresh_from_kept_connections() {
        let ms = Duration::from_millis;
        let samples = [
            answered(90, 10, "v0"),   // before the switch
            answered(102, 10, "v0"),  // kept connection, before the new version answered
            answered(104, 104, "v1"), // the first answer by the new version
            answered(105, 10, "v0"),  // kept connection, after it
            answered(140, 20, "v0"),  // kept connection, after the switch returned
            answered(150, 150, "v0"), // fresh connection after it returned: a broken promise
            answered(151, 151, "v1"),
            answered(400, 10, "v0"), // after the next switch started: not this one's
        ];
        let all: Vec<&Sample> = samples.iter().collect();
        let old = old_answers(&all, (ms(100), ms(130), ms(300)), "v1");
        assert_eq!(
            old,
            OldAnswers {
                on_fresh_connection: 1,
                on_kept_connection: 2,
                last_on_kept: Some(ms(40)),
            }
        );
        let bins = timeline(&all, ms(100), "v1", (ms(20), ms(60)));
        assert_eq!(bins.len(), 8);
        assert_eq!((bins[0].at_ms, bins[0].old), (-20, 0));
        assert_eq!((bins[1].at_ms, bins[1].old), (-10, 1));
        assert_eq!((bins[2].at_ms, bins[2].old, bins[2].new), (0, 2, 1));
        assert_eq!((bins[6].at_ms, bins[6].old), (40, 1));
        assert_eq!((bins[7].at_ms, bins[7].old, bins[7].new), (50, 1, 1));
    }
}
