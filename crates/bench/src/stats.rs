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
}

/// Where each deployment starts and where its switch starts and ends, since the origin.
#[derive(Debug, Clone, Copy)]
pub struct Marks {
    pub deploy_start: Duration,
    pub switch_start: Option<Duration>,
    pub switch_end: Option<Duration>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&v, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
