//! `health`: wait until the app on the idle slot answers its health check (ValidateService).

use super::Context;
use crate::cli::{Args, Hook};
use crate::duration::show;
use crate::error::{Error, ProbeError, Refusal, Result};
use crate::{applog, health};

/// The `health` binary.
pub const HOOK: Hook = Hook {
    name: "health",
    about: "Probes the new version on the idle slot (http://127.0.0.1:PORT/PATH, health.path, default\n\
            /health) until it is healthy, fails at once if the app process died, and gives up after\n\
            health.timeout (default 60s). nginx is not touched. CodeDeploy: ValidateService, before\n\
            switch.",
    switches: &[],
    takes_port: false,
    exits: &[
        (0, "the idle slot answered its health check"),
        (
            1,
            "not healthy within health.timeout (the verdict shows the last probe), or the\n               \
             app died or was restarted",
        ),
        (
            4,
            "refused: what answers on the idle port is not the app start launched",
        ),
    ],
};

/// Runs `health`.
pub fn run(args: &Args) -> Result<String> {
    let ctx = Context::locked(HOOK.name, args)?;
    let (_, idle) = ctx.sides()?;
    let record = ctx.state.app_record(idle.port);
    if record.is_none() {
        log::warn!(
            "no app recorded on port {} by start; probing it anyway",
            idle.port
        );
    }
    let rules = &ctx.config.health;
    let dead = || ctx.supervisor.gone(record.as_ref()?);
    let checked = health::wait_healthy(idle.port, rules, dead).and_then(|answer| {
        // Healthy, but only if the app is still the one `start` launched (a crash that
        // systemd restarted meanwhile is a failure, not a pass).
        match dead() {
            Some(gone) => Err(ProbeError::Died {
                gone: Box::new(gone),
            }
            .into()),
            None => Ok(answer),
        }
    });
    let (status, took) = checked.inspect_err(|_| {
        if let Some(r) = &record {
            applog::log_tail(r);
        }
    })?;
    // A 200 from whatever listens proves nothing: it must come from the app start launched.
    ctx.supervisor.serves(idle.port).map_err(|why| {
        Error::from(Refusal::NotTheApp {
            port: idle.port,
            status,
            why,
        })
    })?;
    Ok(format!(
        "port {} is healthy: {} answered {status} after {} ({} supervisor)",
        idle.port,
        rules.path,
        show(took),
        ctx.supervisor.kind()
    ))
}
