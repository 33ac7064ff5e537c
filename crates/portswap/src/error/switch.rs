//! Errors of the `switch` hook around the switcher: its checks of the target, its records,
//! a cut-short switch, `--restore`, and the watch after a switch.

use std::path::PathBuf;
use std::time::Duration;

use super::{Error, Kind, ProbeFailure};
use crate::duration::show;

/// `switch` failed or refused; nginx is as the message says.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// The idle slot runs another deployment's app.
    #[error(
        "refusing to switch: port {port} runs deployment {running}, not {this} (another \
         deployment started there since); nginx unchanged"
    )]
    OtherDeployment {
        /// The target port.
        port: u16,
        /// The deployment its app belongs to.
        running: String,
        /// This hook's deployment.
        this: String,
    },
    /// The target does not pass its health check (or was restarted since `health`).
    #[error(
        "refusing to switch to port {port}, it is not healthy: {source}; nginx unchanged{}",
        if *listening { " (--force overrides)" } else { "" }
    )]
    TargetUnhealthy {
        /// The target port.
        port: u16,
        /// Why.
        source: Box<Error>,
        /// Whether something of ours listens there: only then can `--force` switch to it.
        listening: bool,
    },
    /// The watch's rollback target does not become healthy.
    #[error("it is not healthy: {source}")]
    RollbackUnhealthy {
        /// Why.
        source: Box<Error>,
    },
    /// The include is not UTF-8, so it cannot be recorded in the intent (exit 2).
    #[error("include {} is not UTF-8; fix: write a valid include and retry", include.display())]
    IncludeNotUtf8 {
        /// The include.
        include: PathBuf,
    },
    /// A cut-short switch's target no longer runs the app it was for.
    #[error(
        "port {port} no longer runs the app that switch was for (pid {pid}{})",
        now.map_or(", no record now".to_string(), |n| format!(", now pid {n}"))
    )]
    AppChanged {
        /// The target port.
        port: u16,
        /// The pid the intent recorded.
        pid: i32,
        /// The pid recorded now, if any.
        now: Option<i32>,
    },
    /// A cut-short switch whose target is not healthy now, and what became of it.
    #[error(
        "the switch to port {target} (deployment {deployment}) was cut short and its target is \
         not healthy now ({why}); {outcome}"
    )]
    GoneTarget {
        /// The cut-short switch's target.
        target: u16,
        /// Its deployment.
        deployment: String,
        /// Why the target is not usable.
        why: Box<Error>,
        /// What portswap did about it.
        outcome: GoneOutcome,
    },
    /// The switch completed, but a request through nginx's front door does not reach the new
    /// version (the front-door check).
    #[error(
        "the front door {front} does not reach port {target}: {problem}; {outcome}; fix: make \
         the server block that includes the include nginx's default_server for that listen \
         address, or remove the distribution's default site (README, step 1), then re-run \
         `switch`"
    )]
    FrontDoor {
        /// `nginx.front` and its Host header.
        front: String,
        /// The switch's target.
        target: u16,
        /// What the front answered.
        problem: Box<FrontProblem>,
        /// What became of the switch.
        outcome: FrontOutcome,
    },
    /// The intent could not be recorded, so nothing was switched.
    #[error("cannot record the switch before making it ({source}); nginx unchanged")]
    IntentNotSaved {
        /// Why.
        source: Box<Error>,
    },
    /// The switch failed and what nginx serves cannot be proven: the intent stays.
    #[error(
        "{source}; what nginx serves now cannot be proven, so the switch intent stays and \
         stop/start refuse until a switch completes; fix the cause and re-run `switch`"
    )]
    Unproven {
        /// The switcher's error.
        source: Box<Error>,
    },
    /// `--restore` with no switch recorded (exit 2).
    #[error("{}: no switch recorded, nothing to restore; run a deployment (or `switch`)", record.display())]
    NothingToRestore {
        /// `switch.yml`.
        record: PathBuf,
    },
    /// `--restore` of a recorded port that is not a slot (exit 2).
    #[error(
        "{} records port {live} live, which is not a slot; fix portswap.yml or run `switch`",
        record.display()
    )]
    RestoreNotASlot {
        /// `switch.yml`.
        record: PathBuf,
        /// The port it records.
        live: u16,
    },
    /// The new version failed the watch; what became of the traffic.
    #[error("port {target} failed the watch {} after the switch: {what}; {outcome}", show(*after))]
    Watch {
        /// The port that failed.
        target: u16,
        /// How long after the switch.
        after: Duration,
        /// What failed.
        what: String,
        /// Where the traffic is now.
        outcome: WatchOutcome,
    },
    /// A re-run of a deployment the watch rolled back.
    #[error(
        "refusing to switch: the watch rolled deployment {deployment} back from port {target} \
         ({why}); port {live} stays live; deploy again, or switch by hand (--force) to try the \
         failed version once more"
    )]
    RolledBackAgain {
        /// The deployment.
        deployment: String,
        /// The port it was rolled back from.
        target: u16,
        /// Why the watch rolled it back.
        why: String,
        /// The live port.
        live: u16,
    },
}

impl SwitchError {
    /// What the operator must do about it.
    pub fn kind(&self) -> Kind {
        match self {
            SwitchError::IncludeNotUtf8 { .. }
            | SwitchError::NothingToRestore { .. }
            | SwitchError::RestoreNotASlot { .. } => Kind::BadInput,
            _ => Kind::Failed,
        }
    }
}

/// How the answer through the front door differs from the new version's own.
#[derive(Debug, thiserror::Error)]
pub enum FrontProblem {
    /// No answer that passes the health check came through the front.
    #[error("{0}")]
    Unhealthy(ProbeFailure),
    /// The new version itself did not answer when asked directly, to compare.
    #[error("port {port} itself did not answer, to compare: {source}")]
    SlotSilent {
        /// The new version's port.
        port: u16,
        /// Why.
        source: ProbeFailure,
    },
    /// Another status than the new version's.
    #[error("it answered {through} where port {port} answers {direct}")]
    OtherStatus {
        /// Through the front.
        through: u16,
        /// The port asked directly.
        port: u16,
        /// The new version's status.
        direct: u16,
    },
    /// Another body than the new version's (which answers the same body each time).
    #[error(
        "its body is not port {port}'s{}",
        like.map_or(String::new(), |p| format!(" but port {p}'s: nginx still sends it there"))
    )]
    OtherBody {
        /// The new version's port.
        port: u16,
        /// The previous version's port, when the front's body is its body.
        like: Option<u16>,
    },
}

/// What became of a switch whose front-door check failed.
#[derive(Debug, thiserror::Error)]
pub enum FrontOutcome {
    /// Switched back to the version that served before.
    #[error("nginx is back on port {back}, which served before; the new version is not live")]
    Back {
        /// The port nginx serves again.
        back: u16,
    },
    /// Nothing was live before: nothing to go back to.
    #[error("nothing was live before, so nginx stays on port {target}")]
    Stays {
        /// The switch's target.
        target: u16,
    },
    /// The switch had completed in an earlier run; this run changed nothing.
    #[error("the switch to port {target} had completed earlier; nothing changed")]
    Unchanged {
        /// The live port.
        target: u16,
    },
    /// The way back failed: nginx stays on the new version.
    #[error(
        "going back to port {back} did not happen ({source}); nginx stays on port {target}, which \
         answers its health check when asked directly"
    )]
    BackFailed {
        /// The port that served before.
        back: u16,
        /// The switch's target, where nginx stays.
        target: u16,
        /// Why going back failed.
        source: Box<Error>,
    },
}

/// What became of a cut-short switch whose target is gone.
#[derive(Debug, thiserror::Error)]
pub enum GoneOutcome {
    /// Nothing was live before it.
    #[error(
        "nothing was live before it, so there is nothing to go back to; fix: start the app on \
         port {target} again and re-run `switch`, or remove {} and {}",
        include.display(),
        intent.display()
    )]
    NothingBefore {
        /// The cut-short switch's target.
        target: u16,
        /// The include.
        include: PathBuf,
        /// `switch-intent.yml`.
        intent: PathBuf,
    },
    /// The port nginx served before is not usable either: the intent stays.
    #[error(
        "port {back}, which nginx served before, is not usable either ({problem}); the switch \
         intent stays, so stop and start refuse; fix: get one of the two apps healthy and re-run \
         `switch`"
    )]
    PreviousUnusable {
        /// The port nginx served before.
        back: u16,
        /// Why it is not usable.
        problem: Box<Error>,
    },
    /// nginx is back on the previous port.
    #[error(
        "nginx is back on port {back}, which nginx served before and still runs; the switch \
         intent is cleared, so the next deployment can go on; the new version is not live"
    )]
    Back {
        /// The port nginx serves again.
        back: u16,
    },
    /// Going back failed.
    #[error("{0}")]
    BackFailed(Box<Error>),
}

/// Where the traffic is after a failed watch.
#[derive(Debug, thiserror::Error)]
pub enum WatchOutcome {
    /// No previous version to go back to.
    #[error(
        "no previous version to go back to ({}): traffic stays on port {target}; fix the app \
         and deploy again",
        previous.map_or("nothing was live before it".to_string(), |p| format!(
            "port {p}, live before it, is not a slot portswap manages"
        ))
    )]
    NoPrevious {
        /// The port that failed.
        target: u16,
        /// What was live before, if anything.
        previous: Option<u16>,
    },
    /// Rolled back.
    #[error(
        "traffic is back on the previous version, port {back} (rolled back by the watch in {}, \
         of which the switch {}); the failed version keeps running on port {target} for \
         inspection until the next deployment's stop",
        show(*took),
        show(*switch_took)
    )]
    RolledBack {
        /// The previous version's port.
        back: u16,
        /// The whole rollback.
        took: Duration,
        /// The switch within it.
        switch_took: Duration,
        /// The port that failed.
        target: u16,
    },
    /// The rollback failed.
    #[error(
        "the previous version on port {back} cannot take the traffic back ({source}): traffic \
         stays on port {target}; fix the app and deploy again"
    )]
    NotBack {
        /// The previous version's port.
        back: u16,
        /// Why.
        source: Box<Error>,
        /// The port that failed.
        target: u16,
    },
}
