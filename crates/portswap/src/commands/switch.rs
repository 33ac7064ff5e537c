//! `switch`: point nginx at the idle slot once it is healthy (ValidateService), or back at
//! the previous one with `--rollback`; `--status` shows the state read-only.

use std::time::Duration;

use super::{status, Context};
use crate::cli::{self, Args, Hook};
use crate::config::Health;
use crate::duration::show;
use crate::error::{Error, Result};
use crate::health;
use crate::signals;
use crate::state::{self, SwitchRecord};
use crate::switcher::Live;

/// The `switch` binary.
pub const HOOK: Hook = Hook {
    name: "switch",
    about: "Points nginx at the idle slot: checks it answers its health check, rewrites the include\n\
            file atomically, runs the nginx config test (restoring the include if it fails), reloads\n\
            nginx, and returns once no new request can reach the old port. The old version keeps\n\
            running for rollback. CodeDeploy: ValidateService, after health.",
    switches: &[
        ("--rollback", "switch back to the previous port (after a health probe of it)"),
        ("--force", "switch even if the target does not answer its health check"),
        ("--status", "print the live port and each slot's app, change nothing"),
    ],
    takes_port: false,
};

/// Runs `switch`.
pub fn run(args: &Args) -> Result<String> {
    if args.has("--status") {
        let ctx = Context::unlocked(args)?;
        cli::say(std::io::stdout(), &status::render(&ctx)?);
        return Ok("status shown, nothing changed".into());
    }
    let ctx = Context::locked(HOOK.name, args)?;
    let now = ctx.live()?;
    let (live, idle) = ctx.sides_of(now);
    let live_port = live.map(|s| s.port);
    let rollback = args.has("--rollback");
    let target = if rollback {
        if let Live::Unmanaged(port) = now {
            return Err(Error::Refused(format!(
                "port {port} is live and not a slot: portswap rolls back only between its slots"
            )));
        }
        let live_port = live_port
            .ok_or_else(|| Error::Refused("nothing is live yet: nothing to roll back to".into()))?;
        let recorded = ctx.state.switch_record().and_then(|r| r.previous);
        if let Some(p) = recorded.filter(|p| ctx.config.slot(*p).is_none()) {
            return Err(Error::Refused(format!(
                "the switch to port {live_port} took over from port {p}, which portswap does not \
                 manage: no slot to roll back to; to go back, put `{}` into {} and reload nginx",
                ctx.config.nginx.template.render(p).trim_end(),
                ctx.config.nginx.include.display()
            )));
        }
        recorded
            .filter(|p| *p != live_port && ctx.config.slot(*p).is_some())
            .unwrap_or(idle.port)
    } else {
        idle.port
    };
    if !rollback {
        let live_record = live_port.and_then(|p| ctx.state.app_record(p));
        if live_record.is_some_and(|r| r.deployment_id == ctx.deployment_id) {
            return Ok(format!(
                "port {} already serves deployment {}; nothing to do",
                live_port.unwrap_or(0),
                ctx.deployment_id
            ));
        }
    }
    if !rollback && !args.has("--force") && std::env::var_os("DEPLOYMENT_ID").is_some() {
        // Two deployments interleaved: the idle slot may now run the other one's app.
        if let Some(other) = ctx
            .state
            .app_record(target)
            .filter(|r| r.deployment_id != ctx.deployment_id)
        {
            return Err(Error::Failed(format!(
                "refusing to switch: port {target} runs deployment {}, not {} (another \
                 deployment started there since); nginx unchanged",
                other.deployment_id, ctx.deployment_id
            )));
        }
    }
    if args.has("--force") {
        log::warn!("--force: not checking the health of port {target}");
    } else {
        check_target(&ctx, target, rollback)?;
        // An answer proves nothing unless our app is what listens there.
        ctx.supervisor.serves(target).map_err(|why| {
            Error::Refused(format!(
                "refusing to switch to port {target}: {why}; nginx unchanged"
            ))
        })?;
    }
    let switched = signals::critical(|| -> Result<_> {
        let switched = ctx.switcher.switch_to(target)?;
        let record = SwitchRecord {
            live: target,
            previous: now.port(),
            deployment_id: ctx.deployment_id.clone(),
            at: state::now_secs(),
        };
        if let Err(e) = ctx.state.save_switch(&record) {
            log::warn!("switched, but could not record it for --rollback: {e}");
        }
        Ok(switched)
    })?;
    log::info!("{}", switched.detail);
    let was = match now {
        Live::Slot(p) => format!("was {p}"),
        Live::Unmanaged(p) => format!(
            "took over from port {p}, which portswap does not manage: nothing there was \
             signalled; retire that app when you no longer need it (README, migration)"
        ),
        Live::Nothing => "nothing live".to_string(),
    };
    Ok(format!(
        "nginx now sends all new requests to port {target} ({was}{}); switch took {} ({} supervisor)",
        if rollback { ", rollback" } else { "" },
        show(switched.elapsed),
        ctx.supervisor.kind()
    ))
}

/// The target must answer its health check: at once for a normal switch (health ran just
/// before), within a few seconds for a rollback; for a normal switch the app must still be
/// the one `start` launched (not exited, nor crashed and restarted by systemd since).
fn check_target(ctx: &Context, port: u16, rollback: bool) -> Result<()> {
    let rules = &ctx.config.health;
    let restarted = ctx
        .state
        .app_record(port)
        .filter(|_| !rollback)
        .and_then(|r| ctx.supervisor.gone(&r));
    let result = if let Some(reason) = restarted {
        Err(Error::Failed(reason))
    } else if rollback {
        let quick = Health {
            timeout: rules.timeout.min(Duration::from_secs(10)),
            ..rules.clone()
        };
        health::wait_healthy(port, &quick, || None).map(|_| ())
    } else {
        health::probe(port, rules, Duration::from_secs(2))
            .map(|_| ())
            .map_err(Error::Failed)
    };
    result.map_err(|e| {
        Error::Failed(format!("refusing to switch to port {port}, it is not healthy: {e}; nginx unchanged (--force overrides)"))
    })
}
