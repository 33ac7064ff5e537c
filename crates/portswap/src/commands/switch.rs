//! `switch`: point nginx at the idle slot once it is healthy (ValidateService), or back at
//! the previous one with `--rollback`; `--status` shows the state read-only.

use std::time::Duration;

use super::{status, Context};
use crate::cli::{self, Args, Hook};
use crate::config::Health;
use crate::duration::show;
use crate::error::{
    Error, FrontOutcome, GoneOutcome, NotServing, ProbeError, Refusal, Result, SwitchError,
};
use crate::front;
use crate::health;
use crate::signals;
use crate::state::{self, AppStamp, Before, SwitchRecord};
use crate::switcher::nginx::NginxSwitcher;
use crate::switcher::{Fallback, Live, Switched};
use crate::timings::{self, timed};
use crate::watch;

/// The `switch` binary.
pub const HOOK: Hook = Hook {
    name: "switch",
    about: "Points nginx at the idle slot: checks it answers its health check, rewrites the include\n\
            file atomically, runs the nginx config test (restoring the include if it fails), reloads\n\
            nginx, and returns once no new request can reach the old port. With switch.by nftables,\n\
            nginx proxies to a fixed service port and one nftables rule (table ip portswap) is\n\
            replaced instead, with no reload. The old version keeps running for rollback.\n\
            CodeDeploy: ValidateService, after health.",
    switches: &[
        (
            "--rollback",
            "switch back to the version that served before the last switch (after a health\n                  \
             probe of it); it lives only until the next deployment's ApplicationStop",
        ),
        (
            "--force",
            "skip the target's health check and the front-door check (and, with --rollback, the\n                  \
             check that it served before); never switches to a port where nothing listens",
        ),
        ("--status", "print the live port and each slot's app, change nothing"),
        (
            "--restore",
            "re-apply the recorded live port where the system lost it (nftables rule after a\n                  \
             reboot); no health check, for boot before nginx starts",
        ),
    ],
    takes_port: false,
    exits: &[
        (
            0,
            "nginx sends new requests to the target (or the status was shown, or the rule\n               \
             restored)",
        ),
        (
            1,
            "the target failed its health check, nginx rejected the config or the reload\n               \
             failed (the include put back), or the watch rolled back",
        ),
        (
            4,
            "refused, nginx unchanged: nothing or not the slot's app listens on the target,\n               \
             --rollback to a version that never went live, another deployment's app, a\n               \
             switch cut short",
        ),
    ],
};

/// Runs `switch`; where its time went is logged at the end ([`timings`]).
pub fn run(args: &Args) -> Result<String> {
    let result = switch(args);
    timings::log();
    result
}

fn switch(args: &Args) -> Result<String> {
    if args.status {
        let ctx = Context::unlocked(args)?;
        cli::say(std::io::stdout(), &status::render(&ctx)?);
        return Ok("status shown, nothing changed".into());
    }
    let ctx = Context::locked(HOOK.name, args)?;
    if args.restore {
        return restore(&ctx);
    }
    timings::note_since_begin("setup");
    // The config test of what is on disk runs while the target is checked.
    timed("test ahead", || ctx.switcher.prepare());
    let deciding = std::time::Instant::now();
    let now = ctx.live()?;
    let (live, idle) = ctx.sides_of(now);
    let live_port = live.map(|s| s.port);
    let rollback = args.rollback;
    // A switch cut short (SIGKILL, power loss): its intent says what nginx served before it.
    let pending = ctx.state.switch_intent();
    // ... and this run completes it when it is the same deployment's (or one by hand).
    let resumed = pending.clone().filter(|i| {
        !rollback
            && (ctx.manual || i.deployment_id == ctx.deployment_id)
            && ctx.config.slot(i.live).is_some()
    });
    let target = if rollback {
        if let Live::Unmanaged(port) = now {
            return Err(Refusal::RollbackFromUnmanaged { port }.into());
        }
        let live_port = live_port.ok_or(Refusal::NothingToRollBack)?;
        let recorded = ctx.state.switch_record().and_then(|r| r.previous);
        if let Some(p) = recorded.filter(|p| ctx.config.slot(*p).is_none()) {
            return Err(Refusal::RollbackToUnmanaged {
                live: live_port,
                previous: p,
                line: ctx.config.nginx.template.render(p).trim_end().to_string(),
                include: ctx.config.nginx.include.clone(),
            }
            .into());
        }
        recorded
            .filter(|p| *p != live_port && ctx.config.slot(*p).is_some())
            .unwrap_or(idle.port)
    } else if let Some(intent) = &resumed {
        log::warn!(
            "a switch to port {} (deployment {}) was cut short; completing it: the include and \
             nginx may disagree until it completes",
            intent.live,
            intent.deployment_id
        );
        intent.live
    } else {
        idle.port
    };
    let previous = match &pending {
        Some(intent) => intent.previous,
        None => now.port(),
    };
    if !rollback && pending.is_none() {
        if let Some((port, done)) = already_live(&ctx, live_port, idle.port) {
            let front = through_front(&ctx, port, None, true)?;
            return Ok(format!("{done}; {front}"));
        }
    }
    if !rollback && !args.force && !ctx.manual {
        // Two deployments interleaved: the idle slot may now run the other one's app.
        if let Some(other) = ctx
            .state
            .app_record(target)
            .filter(|r| r.deployment_id != ctx.deployment_id)
        {
            return Err(SwitchError::OtherDeployment {
                port: target,
                running: other.deployment_id,
                this: ctx.deployment_id.clone(),
            }
            .into());
        }
    }
    if !rollback && !args.force && !ctx.manual {
        watch::refuse_rolled_back_again(&ctx, target)?;
    }
    if resumed.is_none() && (rollback || args.force) {
        listening_target(&ctx, target, rollback)?;
    }
    if rollback && !args.force {
        went_live(&ctx, target)?;
    }
    if args.force {
        log::warn!("--force: not checking the health of port {target}");
    } else {
        timings::note("decide", deciding.elapsed());
        let probed = std::time::Instant::now();
        if let Some(intent) = &resumed {
            let usable = same_app(&ctx, intent).and_then(|()| target_health(&ctx, target, false));
            if let Err(why) = usable {
                return Err(back_from_gone_target(&ctx, intent, why));
            }
        } else {
            check_target(&ctx, target, rollback)?;
        }
        timings::note("probe", probed.elapsed());
        log::debug!("port {target} is healthy ({})", show(probed.elapsed()));
        timed("ownership", || ours(&ctx, target))?;
    }
    let intent = SwitchRecord {
        live: target,
        previous,
        deployment_id: ctx.deployment_id.clone(),
        at: state::now_secs(),
        // Completing the watch's own rollback, cut short: still that rollback.
        rolled_back: resumed.as_ref().and_then(|i| i.rolled_back.clone()),
        app: ctx.state.app_record(target).map(|r| r.stamp()),
        previous_app: match &pending {
            Some(p) => p.previous_app,
            None => app_on(&ctx, previous).map(|(stamp, _)| stamp),
        },
        previous_deployment: match &pending {
            Some(p) => p.previous_deployment.clone(),
            None => app_on(&ctx, previous).map(|(_, id)| id),
        },
        before: match &pending {
            Some(p) => p.before.clone(),
            None => Some(before_now(&ctx)?),
        },
    };
    let fallback = fallback_for(&ctx, pending.as_ref());
    timings::note_since_begin("until the switch");
    let switched = signals::critical_then(
        || switch_recorded(&ctx, &intent, &fallback),
        |result| match result {
            Ok(_) => format!("the switch had completed: nginx sends new requests to port {target}"),
            Err(e) => format!("the switch had failed: {e}"),
        },
    )?;
    timings::note_since_begin("switched");
    log::info!("{}", switched.detail);
    crate::live::refresh(&ctx.state, target, &ctx.config);
    let front = match args.force {
        true => "front door not checked (--force)".to_string(),
        false => through_front(&ctx, target, previous, false)?,
    };
    let was = match (now, &resumed) {
        (_, Some(_)) => previous.map_or("nothing live".to_string(), |p| format!("was {p}")),
        (Live::Slot(p), None) => format!("was {p}"),
        (Live::Unmanaged(p), None) => format!(
            "took over from port {p}, which portswap does not manage: nothing there was \
             signalled; retire that app when you no longer need it (README, migration)"
        ),
        (Live::Nothing, None) => "nothing live".to_string(),
    };
    let verdict = format!(
        "all new requests now go to port {target} ({was}{}{}, by {}); switch took {} ({} \
         supervisor); {front}",
        match ctx.state.app_record(target).filter(|_| rollback) {
            Some(app) => format!(", rollback to deployment {}", app.deployment_id),
            None if rollback => ", rollback".to_string(),
            None => String::new(),
        },
        if resumed.is_some() {
            ", completing a switch that was cut short"
        } else {
            ""
        },
        ctx.config.switch.by.name(),
        show(switched.elapsed),
        ctx.supervisor.kind()
    );
    let verdict = match &switched.caveat {
        Some(caveat) => format!("{verdict}; {caveat}"),
        None => verdict,
    };
    if rollback || intent.rolled_back.is_some() || ctx.config.watch.duration.is_zero() {
        return Ok(verdict);
    }
    watch::after_switch(&ctx, target, previous, verdict, |back, why| {
        watch_rollback(&ctx, target, back, why)
    })
}

/// The watch's way back to the previous version `to`: the rollback's checks (it answers its
/// health check, within [`watch::ROLLBACK_PATIENCE`], and is ours), then the recorded
/// switch, marked as rolled back for `why`.
fn watch_rollback(ctx: &Context, from: u16, to: u16, why: &str) -> Result<Switched> {
    let patience = Health {
        timeout: ctx.config.health.timeout.min(watch::ROLLBACK_PATIENCE),
        ..ctx.config.health.clone()
    };
    health::wait_healthy(to, &patience, || None).map_err(|e| SwitchError::RollbackUnhealthy {
        source: Box::new(e),
    })?;
    ours(ctx, to)?;
    let intent = way_back(ctx, from, to, Some(why.to_string()))?;
    let switched = switch_recorded(ctx, &intent, &Fallback::AsFound)?;
    crate::live::refresh(&ctx.state, to, &ctx.config);
    Ok(switched)
}

/// The front-door check ([`front::check`]) once the switch to `target` completed (`done`: it
/// had completed in an earlier run). On failure the switch is undone by a recorded switch
/// back to `previous`; with nothing live before, it stays. Returns the verdict's note.
fn through_front(ctx: &Context, target: u16, previous: Option<u16>, done: bool) -> Result<String> {
    let Some(front) = &ctx.config.nginx.front else {
        return Ok("front door not checked (set nginx.front)".into());
    };
    let checked = timed("front door", || {
        front::check(front, &ctx.config.health, target, previous)
    });
    let problem = match checked {
        Ok(note) => {
            log::info!("{note}");
            return Ok(format!("front door {} reaches it", front.addr));
        }
        Err(problem) => problem,
    };
    let outcome = match previous.filter(|p| *p != target) {
        None if done => FrontOutcome::Unchanged { target },
        None => FrontOutcome::Stays { target },
        Some(back) => match switch_back(ctx, target, back) {
            Ok(()) => FrontOutcome::Back { back },
            Err(e) => FrontOutcome::BackFailed {
                back,
                target,
                source: Box::new(e),
            },
        },
    };
    Err(SwitchError::FrontDoor {
        front: front.to_string(),
        target,
        problem: Box::new(problem),
        outcome,
    }
    .into())
}

/// A recorded switch from `from` back to `to`, the port that served before (no health wait:
/// it served a moment ago; it must still be ours).
fn switch_back(ctx: &Context, from: u16, to: u16) -> Result<()> {
    if ctx.config.slot(to).is_some() {
        ours(ctx, to)?;
    }
    let record = way_back(ctx, from, to, None)?;
    signals::critical_then(
        || switch_recorded(ctx, &record, &Fallback::AsFound),
        |result| match result {
            Ok(_) => format!("nginx is back on port {to}"),
            Err(e) => format!("going back to port {to} failed: {e}"),
        },
    )?;
    crate::live::refresh(&ctx.state, to, &ctx.config);
    Ok(())
}

/// The intent of a switch from `from` back to `to` (`rolled_back`: the watch's reason).
fn way_back(
    ctx: &Context,
    from: u16,
    to: u16,
    rolled_back: Option<String>,
) -> Result<SwitchRecord> {
    Ok(SwitchRecord {
        live: to,
        previous: Some(from),
        deployment_id: ctx.deployment_id.clone(),
        at: state::now_secs(),
        rolled_back,
        app: ctx.state.app_record(to).map(|r| r.stamp()),
        previous_app: app_on(ctx, Some(from)).map(|(stamp, _)| stamp),
        previous_deployment: app_on(ctx, Some(from)).map(|(_, id)| id),
        before: Some(before_now(ctx)?),
    })
}

/// An answer proves nothing unless our app is what listens on `port`.
fn ours(ctx: &Context, port: u16) -> Result<()> {
    ctx.supervisor
        .serves(port)
        .map_err(|why| Error::from(Refusal::NotOursToSwitch { port, why }))
}

/// The routing files as they are now, for a new intent.
fn before_now(ctx: &Context) -> Result<Before> {
    let include = NginxSwitcher::new(&ctx.config).read_include()?;
    let include = include
        .map(|bytes| {
            String::from_utf8(bytes).map_err(|_| {
                Error::from(SwitchError::IncludeNotUtf8 {
                    include: ctx.config.nginx.include.clone(),
                })
            })
        })
        .transpose()?;
    Ok(Before { include })
}

/// What a failed switch goes back to: with a cut-short switch pending, what its intent
/// recorded from before it (the files now may already name its target); else what is found.
fn fallback_for(ctx: &Context, pending: Option<&SwitchRecord>) -> Fallback {
    let Some(intent) = pending else {
        return Fallback::AsFound;
    };
    let include = match &intent.before {
        Some(before) => before.include.clone().map(String::into_bytes),
        // An intent of an older version: the include its previous port renders.
        None => intent
            .previous
            .map(|p| ctx.config.nginx.template.render(p).into_bytes()),
    };
    Fallback::Recorded {
        include,
        live: intent.previous,
    }
}

/// A cut-short switch is completed only for the app it was started for: a crash and
/// restart since, or a new app of a deployment that reuses the id, is not that app.
fn same_app(ctx: &Context, intent: &SwitchRecord) -> Result<()> {
    let now = ctx.state.app_record(intent.live).map(|r| r.stamp());
    match intent.app {
        Some(app) if now != Some(app) => Err(SwitchError::AppChanged {
            port: intent.live,
            pid: app.pid,
            now: now.map(|n| n.pid),
        }
        .into()),
        _ => Ok(()),
    }
}

/// A cut-short switch whose target is gone or unhealthy: put nginx back on the port it
/// served before that switch when it still runs (all the normal checks), clear the intent,
/// and fail with a verdict that says so. When the previous version does not run either,
/// the intent stays and the error names the way out.
fn back_from_gone_target(ctx: &Context, intent: &SwitchRecord, why: Error) -> Error {
    let target = intent.live;
    let gone = |outcome| {
        Error::from(SwitchError::GoneTarget {
            target,
            deployment: intent.deployment_id.clone(),
            why: Box::new(why),
            outcome,
        })
    };
    let Some(back) = intent.previous.filter(|p| *p != target) else {
        return gone(GoneOutcome::NothingBefore {
            target,
            include: ctx.config.nginx.include.clone(),
            intent: ctx.state.path().join("switch-intent.yml"),
        });
    };
    let usable = health::probe(
        back,
        &ctx.config.health,
        health::probe_limit(ctx.config.health.timeout),
    )
    .map_err(|problem| Error::from(ProbeError::Answer { problem }))
    .and_then(|_| match ctx.config.slot(back) {
        Some(_) => ctx
            .supervisor
            .serves(back)
            .map_err(|why| Error::from(ProbeError::NotOurs { why })),
        None => Ok(()),
    });
    if let Err(e) = usable {
        return gone(GoneOutcome::PreviousUnusable {
            back,
            problem: Box::new(e),
        });
    }
    let record = SwitchRecord {
        live: back,
        previous: Some(target),
        deployment_id: ctx.deployment_id.clone(),
        at: state::now_secs(),
        app: ctx.state.app_record(back).map(|r| r.stamp()),
        previous_app: None,
        previous_deployment: None,
        before: intent.before.clone(),
        rolled_back: None,
    };
    let fallback = fallback_for(ctx, Some(intent));
    let outcome = signals::critical_then(
        || switch_recorded(ctx, &record, &fallback),
        |result| match result {
            Ok(_) => format!("nginx is back on port {back}"),
            Err(e) => format!("going back to port {back} failed: {e}"),
        },
    );
    match outcome {
        Ok(_) => {
            crate::live::refresh(&ctx.state, back, &ctx.config);
            gone(GoneOutcome::Back { back })
        }
        Err(e) => gone(GoneOutcome::BackFailed(Box::new(e))),
    }
}

/// `--restore`: the last recorded switch, put back where the system lost it.
fn restore(ctx: &Context) -> Result<String> {
    let record = ctx.state.switch_record().ok_or_else(|| {
        Error::from(SwitchError::NothingToRestore {
            record: ctx.state.path().join("switch.yml"),
        })
    })?;
    if ctx.config.slot(record.live).is_none() {
        return Err(SwitchError::RestoreNotASlot {
            record: ctx.state.path().join("switch.yml"),
            live: record.live,
        }
        .into());
    }
    let done = ctx.switcher.restore(record.live)?;
    Ok(format!("{done} (by {})", ctx.config.switch.by.name()))
}

/// "Nothing to do" when a switch to the live port was recorded as complete and the live
/// slot runs this deployment's app (a run by hand never counts: its id is made up), unless
/// the idle slot holds an app of the same id started no earlier: then the id was reused
/// (agent 2.x's `local-<pid>`) and this is a new deployment. Returns the live port and the
/// verdict.
fn already_live(ctx: &Context, live_port: Option<u16>, idle_port: u16) -> Option<(u16, String)> {
    let last = ctx.state.switch_record()?;
    let live_app = ctx.state.app_record(last.live)?;
    let newer_on_idle = ctx.state.app_record(idle_port).is_some_and(|r| {
        r.deployment_id == ctx.deployment_id && r.started_at >= live_app.started_at
    });
    let done = !ctx.manual
        && Some(last.live) == live_port
        && live_app.deployment_id == ctx.deployment_id
        && !newer_on_idle;
    done.then(|| {
        let verdict = format!(
            "port {} already serves deployment {} (switch completed); nothing to do",
            last.live, ctx.deployment_id
        );
        (last.live, verdict)
    })
}

/// The switch itself between its two records: the intent first (so a switch cut short is
/// known), then the switch, then the completed record. The intent is cleared once nginx is
/// known to be in one consistent state: switched and recorded, or provably left as it was.
/// With a cut-short switch pending, nothing found on failure proves what nginx serves (the
/// cut-short run may have reloaded): the intent stays.
fn switch_recorded(ctx: &Context, intent: &SwitchRecord, fallback: &Fallback) -> Result<Switched> {
    timed("intent", || ctx.state.save_switch_intent(intent)).map_err(|e| {
        Error::from(SwitchError::IntentNotSaved {
            source: Box::new(e),
        })
    })?;
    let switched = match ctx.switcher.switch_to(intent.live, fallback) {
        Ok(switched) => switched,
        Err(failed) => {
            if failed.proven && *fallback == Fallback::AsFound {
                if let Err(clear) = ctx.state.clear_switch_intent() {
                    log::warn!("{clear}");
                }
                return Err(failed.error);
            }
            return Err(SwitchError::Unproven {
                source: Box::new(failed.error),
            }
            .into());
        }
    };
    let record = SwitchRecord {
        at: state::now_secs(),
        before: None,
        ..intent.clone()
    };
    let saved = timed("record", || ctx.state.save_switch(&record));
    // Without the completed record the intent stays: a re-run completes the switch again
    // instead of taking it as done.
    if ctx.state.switch_record().as_ref() == Some(&record) {
        if let Err(e) = timed("record", || ctx.state.clear_switch_intent()) {
            log::warn!("{e}");
        }
    }
    if let Err(e) = saved {
        log::warn!("switched, but could not record it for --rollback: {e}");
    }
    Ok(switched)
}

/// The target must answer its health check: at once for a normal switch (health ran just
/// before), within a few seconds for a rollback; for a normal switch the app must still be
/// the one `start` launched (not exited, nor crashed and restarted by systemd since).
fn check_target(ctx: &Context, port: u16, rollback: bool) -> Result<()> {
    target_health(ctx, port, rollback).map_err(|e| {
        Error::from(SwitchError::TargetUnhealthy {
            port,
            source: Box::new(e),
            listening: ctx.supervisor.serves(port).is_ok(),
        })
    })
}

/// `--rollback` and `--force` go only to a port where the slot's app listens: refused at
/// once otherwise (no health wait, and `--force` never points nginx at a dead port).
fn listening_target(ctx: &Context, port: u16, rollback: bool) -> Result<()> {
    match ctx.supervisor.serves(port) {
        Ok(()) => Ok(()),
        Err(NotServing::Nothing { .. }) => Err(Refusal::NothingListens {
            port,
            deployment: ctx
                .state
                .app_record(port)
                .map(|r| r.deployment_id)
                .or_else(|| {
                    ctx.state
                        .switch_record()
                        .filter(|last| last.previous == Some(port))
                        .and_then(|last| last.previous_deployment)
                }),
            rollback,
        }
        .into()),
        Err(why) => Err(Refusal::NotOursToSwitch { port, why }.into()),
    }
}

/// `--rollback` goes back only to a version that served: the app on `port` is the one the
/// last switch recorded on its previous port, or `history.log` has its deployment's switch
/// to `port` since it started (records of older versions name no app: then one started
/// before that switch). A later app there (a deployment whose health or switch failed)
/// never went live.
fn went_live(ctx: &Context, port: u16) -> Result<()> {
    let Some(app) = ctx.state.app_record(port) else {
        return Ok(());
    };
    let recorded = ctx.state.switch_record().is_some_and(|last| {
        last.previous == Some(port)
            && match last.previous_app {
                Some(stamp) => stamp == app.stamp(),
                None => app.started_at < last.at,
            }
    });
    let live_before = recorded
        || ctx
            .state
            .went_live(port, &app.deployment_id, app.started_at);
    match live_before {
        true => Ok(()),
        false => Err(Refusal::NeverLive {
            port,
            deployment: app.deployment_id,
        }
        .into()),
    }
}

/// The app that serves on `previous` now and its deployment, for the record of a switch
/// away from it.
fn app_on(ctx: &Context, previous: Option<u16>) -> Option<(AppStamp, String)> {
    ctx.state
        .app_record(previous?)
        .map(|r| (r.stamp(), r.deployment_id))
}

/// Why the app on `port` is not a target now (gone, restarted, or failing its check).
fn target_health(ctx: &Context, port: u16, rollback: bool) -> Result<()> {
    let rules = &ctx.config.health;
    let restarted = ctx
        .state
        .app_record(port)
        .filter(|_| !rollback)
        .and_then(|r| ctx.supervisor.gone(&r));
    if let Some(gone) = restarted {
        Err(ProbeError::Died {
            gone: Box::new(gone),
        }
        .into())
    } else if rollback {
        let quick = Health {
            timeout: rules.timeout.min(Duration::from_secs(10)),
            ..rules.clone()
        };
        health::wait_healthy(port, &quick, || None).map(|_| ())
    } else {
        health::probe(port, rules, health::probe_limit(rules.timeout))
            .map(|_| ())
            .map_err(|problem| ProbeError::Answer { problem }.into())
    }
}
