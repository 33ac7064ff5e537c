//! `stop`: stop the app on the idle slot (ApplicationStop).

use super::Context;
use crate::cli::{Args, Hook};
use crate::error::{Error, Refusal, Result, UsageError};

/// The `stop` binary.
pub const HOOK: Hook = Hook {
    name: "stop",
    about: "Stops the application on the idle slot (the port nginx does not send traffic to), so the\n\
            new version can start there. Never stops the live slot unless --force. Nothing running is\n\
            success. CodeDeploy: ApplicationStop.",
    switches: &[("--force", "also stop the live slot, or a foreign process on the port")],
    takes_port: true,
    exits: &[
        (0, "the slot's app is stopped, or nothing ran there"),
        (
            1,
            "the app did not stop (its port still held after SIGTERM and SIGKILL), or a\n               \
             system call failed",
        ),
        (
            4,
            "refused, nothing signalled: the live slot, a process that is not this\n               \
             configuration's app, or a switch cut short (without --force)",
        ),
    ],
};

/// Runs `stop`.
pub fn run(args: &Args) -> Result<String> {
    let ctx = Context::locked(HOOK.name, args)?;
    let (live, idle) = ctx.sides()?;
    let target = match args.port {
        Some(port) => ctx.config.slot(port).ok_or_else(|| {
            Error::from(UsageError::NotASlot {
                port,
                slots: [ctx.config.slots[0].port, ctx.config.slots[1].port],
            })
        })?,
        None => idle,
    };
    let force = args.force;
    if live.is_some_and(|l| l.port == target.port) && !force {
        return Err(Refusal::LiveSlot { port: target.port }.into());
    }
    let done = ctx.supervisor.stop(target.port, force)?;
    Ok(format!("{done} ({} supervisor)", ctx.supervisor.kind()))
}
