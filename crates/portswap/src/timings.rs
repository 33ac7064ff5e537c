//! Where a hook's time goes: each step notes how long it took ([`note`]), and the hook logs
//! them as one line at debug level under the target [`TARGET`] ([`log`]), e.g.
//! `timings: probe 1ms, ownership 2ms, ..., total 19ms`. The bench asks for exactly that line
//! (`RUST_LOG=info,portswap::timings=debug`) to show where the switch's time goes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The log target of the timings line.
pub const TARGET: &str = "portswap::timings";

/// The steps noted so far, in order (a step noted twice adds up).
static STEPS: Mutex<Vec<(&'static str, Duration)>> = Mutex::new(Vec::new());

/// When the hook began (its first [`begin`]).
static BEGAN: Mutex<Option<Instant>> = Mutex::new(None);

/// Marks the start of the hook: `total` in the timings line counts from here.
pub fn begin() {
    let mut began = BEGAN.lock().unwrap_or_else(|e| e.into_inner());
    began.get_or_insert_with(Instant::now);
}

/// Notes `step` as the time since [`begin`] (e.g. the hook's set-up before its first step).
pub fn note_since_begin(step: &'static str) {
    let began = *BEGAN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(began) = began {
        note(step, began.elapsed());
    }
}

/// Notes that `step` took `took`.
pub fn note(step: &'static str, took: Duration) {
    let mut steps = STEPS.lock().unwrap_or_else(|e| e.into_inner());
    match steps.iter_mut().find(|(name, _)| *name == step) {
        Some((_, sum)) => *sum += took,
        None => steps.push((step, took)),
    }
}

/// Runs `f` and notes how long it took as `step`.
pub fn timed<T>(step: &'static str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    note(step, started.elapsed());
    out
}

/// The timings line: every step noted, then the total since [`begin`].
pub fn line() -> String {
    let steps = STEPS.lock().unwrap_or_else(|e| e.into_inner());
    let mut parts: Vec<String> = steps
        .iter()
        .map(|(name, took)| format!("{name} {}", micros(*took)))
        .collect();
    if let Some(began) = *BEGAN.lock().unwrap_or_else(|e| e.into_inner()) {
        parts.push(format!("total {}", micros(began.elapsed())));
    }
    format!("timings: {}", parts.join(", "))
}

/// Logs [`line`] at debug level under [`TARGET`].
pub fn log() {
    log::debug!(target: TARGET, "{}", line());
}

/// A duration in milliseconds with a tenth (`12.3ms`), finer than the verdicts' for short
/// steps.
fn micros(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

/// Reads a timings line back: each step with its milliseconds (for the bench).
pub fn parse(line: &str) -> Option<Vec<(String, f64)>> {
    let rest = &line[line.find("timings: ")? + "timings: ".len()..];
    rest.split(", ")
        .map(|part| {
            let (name, value) = part.rsplit_once(' ')?;
            let ms = value.strip_suffix("ms")?.parse().ok()?;
            Some((name.to_string(), ms))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_add_up_and_read_back() {
        note("probe", Duration::from_micros(1200));
        note("config test", Duration::from_millis(7));
        note("probe", Duration::from_micros(300));
        let line = line();
        assert!(
            line.starts_with("timings: probe 1.5ms, config test 7.0ms"),
            "{line}"
        );
        let parsed = parse(&format!("[x switch] debug: {line}")).unwrap();
        assert_eq!(parsed[0], ("probe".to_string(), 1.5));
        assert_eq!(parsed[1], ("config test".to_string(), 7.0));
    }
}
