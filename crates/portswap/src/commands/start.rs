//! `start`: free the idle slot, stage the release, start the app detached (ApplicationStart).

use std::path::PathBuf;

use super::Context;
use crate::cli::{Args, Hook};
use crate::config::Slot;
use crate::error::{ConfigError, Refusal, Result, SupervisorError};
use crate::ownership::Holder;
use crate::process;
use crate::release::{self, Release};
use crate::state::AppRecord;
use crate::supervisor::Launch;
use crate::{applog, fsio, signals, template, users};

/// The `start` binary.
pub const HOOK: Hook = Hook {
    name: "start",
    about: "Starts the new version on the idle slot: stops what still runs there, copies the artifacts\n\
            into a fresh release directory, and starts the app detached (own session, log file).\n\
            CodeDeploy: ApplicationStart.",
    switches: &[],
    takes_port: false,
    exits: &[
        (0, "the new version runs on the idle slot (it lived through app.start_check)"),
        (
            1,
            "the app could not be launched or exited (the verdict shows its log), or the\n               \
             release could not be staged; nothing of it is left running",
        ),
        (
            4,
            "refused: a process that is not this configuration's app holds the idle port, or\n               \
             a switch was cut short",
        ),
    ],
};

/// Runs `start`.
pub fn run(args: &Args) -> Result<String> {
    let began = std::time::Instant::now();
    let ctx = Context::locked(HOOK.name, args)?;
    // Every stop this run makes (freeing the slot, cleaning up after a version that failed)
    // fits in the budget `portswap-bundle` checked against ApplicationStart's timeout.
    if let Some(budget) = crate::budget::Budget::of(HOOK.name, &ctx.config) {
        process::set_deadline(Some(began + budget.total()));
    }
    let (_, idle) = ctx.sides()?;
    let stopped = ctx.supervisor.stop(idle.port, false)?;
    log::info!("idle slot {}: {stopped}", idle.port);
    // A stopping signal during the copy ends it early and removes the partial release.
    let release = signals::critical_then(
        || {
            release::stage(
                &ctx.state.releases_dir(),
                &ctx.deployment_id,
                idle.port,
                &ctx.config.app.artifacts,
            )
        },
        |staged| match staged {
            Ok(r) => format!("release {} staged, nothing started", r.dir.display()),
            Err(_) => "the partial release was removed, nothing started".into(),
        },
    )?;
    let record = match launch_checked(&ctx, idle, &release) {
        Ok(record) => record,
        Err(e) => {
            remove_release(&ctx, idle.port, &release);
            return Err(e);
        }
    };
    crate::live::keep_slot_config(&ctx.state, idle.port, &ctx.config);
    // Never a directory a process runs from, recorded or not (a lost record heals itself).
    let mut in_use: Vec<PathBuf> = ctx
        .config
        .slots
        .iter()
        .filter_map(|s| ctx.state.app_record(s.port))
        .map(|r| r.release_dir)
        .collect();
    in_use.extend(release::used_by_processes(&ctx.state.releases_dir()));
    for dir in release::prune(
        &ctx.state.releases_dir(),
        ctx.config.app.keep_releases,
        &in_use,
    ) {
        log::info!("pruned old release {}", dir.display());
    }
    let caveat = ctx.supervisor.caveat(&record).map(|c| {
        log::warn!("{c}");
        format!("; WARNING: {c}")
    });
    Ok(format!(
        "started pid {} on port {} (profile {}, deployment {}, {} supervisor); log {}{}",
        record.pid,
        record.port,
        record.profile,
        record.deployment_id,
        ctx.supervisor.kind(),
        record.log_file.display(),
        caveat.unwrap_or_default()
    ))
}

/// Launches the app from `release` once the port is still free, and watches it for
/// `app.start_check`. An app that exits at once fails the start; whatever of it is left
/// running (a daemonized child carries the slot's marker) is stopped first.
fn launch_checked(ctx: &Context, idle: &Slot, release: &Release) -> Result<AppRecord> {
    let launch = launch(ctx, idle, release)?;
    // Staging took a while: the port must still be free, else the new app cannot bind and
    // an answer on the port would come from someone else.
    if let Some(why) = ctx.supervisor.holder(idle.port).taken(idle.port) {
        return Err(Refusal::TakenAtLaunch {
            port: idle.port,
            why,
        }
        .into());
    }
    log::info!(
        "starting on port {} ({} supervisor): {}",
        idle.port,
        ctx.supervisor.kind(),
        launch.argv.join(" ")
    );
    let record = signals::critical(|| -> Result<AppRecord> {
        let record = ctx.supervisor.start(&launch)?;
        ctx.state.save_app_record(&record)?;
        Ok(record)
    })?;
    let mut died = None;
    process::wait_for(ctx.config.app.start_check, || {
        died = ctx.supervisor.gone(&record);
        died.is_some()
    });
    let Some(gone) = died.map(Box::new) else {
        return Ok(record);
    };
    applog::log_tail(&record);
    let left = match ctx.supervisor.holder(idle.port) {
        Holder::Ours { process, .. } => process,
        _ => {
            // Nothing of it runs right now, but its supervisor may still restart it (a unit
            // crash-looping between restarts): the stop disables what is left.
            return Err(SupervisorError::DiedAtStart {
                gone,
                port: idle.port,
                cleanup: ctx.supervisor.stop(idle.port, false).err().map(Box::new),
            }
            .into());
        }
    };
    Err(SupervisorError::Daemonized {
        gone,
        pid: left.pid,
        port: idle.port,
        stopped: ctx.supervisor.stop(idle.port, false).map_err(Box::new),
    }
    .into())
}

/// Removes the release of a start that failed, unless something of ours still runs there.
fn remove_release(ctx: &Context, port: u16, release: &Release) {
    if matches!(ctx.supervisor.holder(port), Holder::Ours { .. }) {
        log::warn!(
            "release {} kept: the app still runs from it",
            release.dir.display()
        );
        return;
    }
    match std::fs::remove_dir_all(&release.dir) {
        Ok(()) => log::info!("removed the release {}", release.dir.display()),
        Err(e) => log::warn!("cannot remove the release {}: {e}", release.dir.display()),
    }
}

fn launch(ctx: &Context, slot: &Slot, release: &Release) -> Result<Launch> {
    let app = &ctx.config.app;
    let release_dir = release.dir.to_string_lossy().into_owned();
    let artifact = release
        .artifacts
        .first()
        .map(|a| a.to_string_lossy().into_owned());
    let lookup = |name: &str| match name {
        "port" => Some(slot.port.to_string()),
        "profile" => Some(slot.profile.clone()),
        "deployment_id" => Some(ctx.deployment_id.clone()),
        "release_dir" => Some(release_dir.clone()),
        "artifact" => artifact.clone(),
        _ => None,
    };
    if artifact.is_none() && app.command.iter().any(|a| a.contains("{artifact}")) {
        return Err(ConfigError::key(
            &ctx.config.path,
            "app.command",
            "uses {artifact} but app.artifacts is empty",
        )
        .into());
    }
    let argv: Vec<String> = app
        .command
        .iter()
        .map(|a| template::expand(a, lookup))
        .collect();
    let config_dir = ctx
        .config
        .path
        .parent()
        .unwrap_or(std::path::Path::new("/"));
    let workdir = config_dir.join(template::expand(&app.workdir, lookup));
    // Made through descriptors, never through a link another user planted on the way.
    fsio::open_dir(&app.log_dir, Some(0o755))?;
    let log_file = app.log_dir.join(format!("app-{}.log", slot.port));
    let account = match &app.user {
        Some(user) if nix::unistd::geteuid().is_root() => Some(users::lookup(user)?),
        Some(user) => {
            log::warn!("app.user `{user}` ignored: the hook does not run as root, the app runs as the hook's user");
            None
        }
        None => None,
    };
    if let Some(account) = &account {
        let _ = nix::unistd::chown(
            &release.dir,
            Some(account.uid.into()),
            Some(account.gid.into()),
        );
    }
    let env_keys: Vec<&str> = app.env.keys().map(String::as_str).collect();
    if !env_keys.is_empty() {
        log::info!(
            "app environment: {} (values not logged)",
            env_keys.join(", ")
        );
    }
    Ok(Launch {
        slot: slot.clone(),
        deployment_id: ctx.deployment_id.clone(),
        argv,
        workdir,
        env: app
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        log_offset: applog::end(&log_file),
        log_file,
        account,
        release_dir: release.dir.clone(),
    })
}
