//! The watch after a switch (`watch:` in portswap.yml): for `watch.duration`, `switch` keeps
//! checking the version it just made live, every `watch.interval`: the app's process or unit
//! (an exit, or a restart by systemd, fails it at once), its health check on the slot port,
//! and, with `watch.access_log`, the share of 5xx among nginx's answers for it
//! ([`access_log`]). A failure sends traffic back to the previous version through the normal
//! rollback path (it must still be ours and healthy); the failed version keeps running. The
//! watch and its rollback are one critical step: SIGTERM ends the watch between two checks
//! (the new version, healthy so far, stays live) or lets a rollback complete.

pub mod access_log;

use std::thread;
use std::time::{Duration, Instant};

use crate::commands::Context;
use crate::config::By;
use crate::duration::show;
use crate::error::{Result, SwitchError, WatchOutcome};
use crate::health;
use crate::signals;
use crate::switcher::Switched;

/// The longest one health probe of the watch may take: a slower answer fails the watch.
pub const PROBE_LIMIT: Duration = Duration::from_secs(1);
/// How long the previous version gets to answer its health check when the watch sends
/// traffic back to it (it is warm: it answered until the switch).
pub const ROLLBACK_PATIENCE: Duration = Duration::from_secs(3);

/// What the watch found wrong, and when.
#[derive(Debug, Clone)]
pub struct Failure {
    /// From the end of the switch to the check that failed.
    pub after: Duration,
    /// What failed, in one line.
    pub what: String,
}

/// A watch that found nothing wrong.
#[derive(Debug, Clone)]
pub struct Watched {
    /// How long it watched.
    pub lasted: Duration,
    /// Checks made.
    pub checks: u32,
    /// The signal that ended it early, if one did.
    pub cut_short: Option<&'static str>,
    /// What the 5xx check saw, or why it could not look.
    pub errors: Option<String>,
}

/// Watches the version on `port` for `watch.duration` (see the module documentation).
pub fn watch(ctx: &Context, port: u16) -> std::result::Result<Watched, Failure> {
    let rules = &ctx.config.watch;
    let started = Instant::now();
    let record = ctx.state.app_record(port);
    let upstream = match ctx.config.switch.by {
        By::NginxReload => port,
        // nginx proxies to the service port; the kernel sends it to the live slot.
        By::Nftables => ctx.config.switch.service_port,
    };
    let mut errors = rules
        .errors
        .as_ref()
        .map(|e| access_log::ErrorLog::open(e, upstream));
    if let Some(Err(why)) = &errors {
        log::warn!("watch: 5xx share not checked: {why}");
    }
    let failed = |what: String| Failure {
        after: started.elapsed(),
        what,
    };
    let gone = || record.as_ref().and_then(|r| ctx.supervisor.gone(r));
    let mut checks = 0;
    let mut next = started;
    let mut progress = started;
    loop {
        if let Some(signal) = signals::pending() {
            return Ok(summary(started, checks, Some(signal), &errors));
        }
        if started.elapsed() >= rules.duration {
            return Ok(summary(started, checks, None, &errors));
        }
        checks += 1;
        if let Some(why) = gone() {
            return Err(failed(why.to_string()));
        }
        if let Err(why) = health::probe(port, &ctx.config.health, PROBE_LIMIT) {
            // A crash shows first as a refused probe: name the crash when it is one.
            return Err(failed(gone().map_or_else(
                || format!("its health check failed: {why}"),
                |g| g.to_string(),
            )));
        }
        if let Some(Ok(log)) = errors.as_mut() {
            if let Some(why) = log.check() {
                return Err(failed(why));
            }
        }
        if progress.elapsed() >= Duration::from_secs(10) {
            log::info!(
                "watching port {port}: healthy for {} of {}",
                show(started.elapsed()),
                show(rules.duration)
            );
            progress = Instant::now();
        }
        next += rules.interval;
        let now = Instant::now();
        if next < now {
            // A slow probe: the next check comes at once, not in a burst to catch up.
            next = now;
        }
        pause_until(next.min(started + rules.duration));
    }
}

/// Sleeps until `until`, in slices of at most 50 ms, ending early once a stopping signal is
/// pending: the agent sends SIGKILL 5 s after SIGTERM, a long `watch.interval` must not
/// outlast that.
fn pause_until(until: Instant) {
    while signals::pending().is_none() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

fn summary(
    started: Instant,
    checks: u32,
    cut_short: Option<&'static str>,
    errors: &Option<std::result::Result<access_log::ErrorLog, String>>,
) -> Watched {
    Watched {
        lasted: started.elapsed(),
        checks,
        cut_short,
        errors: errors.as_ref().map(|e| match e {
            Ok(log) => format!(
                "{} of {} answers through nginx 5xx",
                log.total.errors, log.total.requests
            ),
            Err(why) => format!("5xx not checked: {why}"),
        }),
    }
}

/// After `switch` made `target` live (taking over from `previous`, verdict `switched`):
/// watches it and, when it fails, calls `roll_back(previous port, why)`: the normal rollback
/// path, which refuses when the previous version is no longer ours or healthy. Returns the
/// verdict; `Err` whenever the watch failed (traffic back on the previous version, or
/// staying on the failed one when there is none to go back to). SIGTERM, SIGINT and SIGHUP
/// are deferred meanwhile; one that arrives ends the watch at its next check and the hook
/// with a verdict saying which version serves.
pub fn after_switch(
    ctx: &Context,
    target: u16,
    previous: Option<u16>,
    switched: String,
    roll_back: impl FnOnce(u16, &str) -> Result<Switched>,
) -> Result<String> {
    signals::critical_then(
        || watch_then_roll_back(ctx, target, previous, switched, roll_back),
        |result| match result {
            Ok(verdict) => verdict.clone(),
            Err(e) => e.to_string(),
        },
    )
}

fn watch_then_roll_back(
    ctx: &Context,
    target: u16,
    previous: Option<u16>,
    switched: String,
    roll_back: impl FnOnce(u16, &str) -> Result<Switched>,
) -> Result<String> {
    let duration = ctx.config.watch.duration;
    log::info!("{switched}");
    log::info!(
        "watching port {target} for {} (every {})",
        show(duration),
        show(ctx.config.watch.interval)
    );
    let failure = match watch(ctx, target) {
        Ok(watched) => return Ok(passed(target, duration, &switched, &watched)),
        Err(failure) => failure,
    };
    log::error!(
        "port {target} failed the watch {} after the switch: {}",
        show(failure.after),
        failure.what
    );
    let failed = |outcome| {
        Err(SwitchError::Watch {
            target,
            after: failure.after,
            what: failure.what.clone(),
            outcome,
        }
        .into())
    };
    let back = previous.filter(|p| *p != target && ctx.config.slot(*p).is_some());
    let Some(back) = back else {
        return failed(WatchOutcome::NoPrevious { target, previous });
    };
    let began = Instant::now();
    match roll_back(back, &failure.what) {
        Ok(done) => failed(WatchOutcome::RolledBack {
            back,
            took: began.elapsed(),
            switch_took: done.elapsed,
            target,
        }),
        Err(e) => failed(WatchOutcome::NotBack {
            back,
            source: Box::new(e),
            target,
        }),
    }
}

fn passed(target: u16, duration: Duration, switched: &str, watched: &Watched) -> String {
    let errors = watched
        .errors
        .as_ref()
        .map(|e| format!(", {e}"))
        .unwrap_or_default();
    match watched.cut_short {
        None => format!(
            "{switched}; watched port {target} for {}: healthy ({} checks{errors})",
            show(duration),
            watched.checks
        ),
        Some(signal) => format!(
            "{signal} cut the watch short after {} of {}: port {target}, healthy so far ({} \
             checks{errors}), stays live ({switched})",
            show(watched.lasted),
            show(duration),
            watched.checks
        ),
    }
}

/// The watch as configured, in one line for the status view.
pub fn describe(rules: &crate::config::Watch) -> String {
    if rules.duration.is_zero() {
        return "off (watch.duration 0s)".into();
    }
    let errors = rules.errors.as_ref().map_or(String::new(), |e| {
        format!(
            ", over {}% 5xx of at least {} answers in {} from {}",
            e.max_5xx_percent,
            e.min_requests,
            show(e.window),
            e.access_log.display()
        )
    });
    format!(
        "{} every {} (process or unit, health check{errors})",
        show(rules.duration),
        show(rules.interval)
    )
}

/// Refuses to switch this deployment again once the watch rolled it back: a re-run of its
/// `switch` would send traffic to the version that failed. A run by hand or `--force` may.
pub fn refuse_rolled_back_again(ctx: &Context, target: u16) -> Result<()> {
    let Some(last) = ctx.state.switch_record() else {
        return Ok(());
    };
    match &last.rolled_back {
        Some(why) if last.deployment_id == ctx.deployment_id && last.previous == Some(target) => {
            Err(SwitchError::RolledBackAgain {
                deployment: ctx.deployment_id.clone(),
                target,
                why: why.clone(),
                live: last.live,
            }
            .into())
        }
        _ => Ok(()),
    }
}
