//! The four hooks (and the status view) as functions the thin binaries call.

pub mod health;
pub mod start;
pub mod status;
pub mod stop;
pub mod switch;

use crate::cli::Args;
use crate::config::{self, Config, Slot};
use crate::deployment;
use crate::error::{Refusal, Result, StateError};
use crate::fsio;
use crate::state::{LockGuard, StateDir};
use crate::supervisor::{self, Supervisor};
use crate::switcher::{self, Live, Switcher};

/// Everything a hook works with, loaded once; holds the lock when opened with [`Context::locked`].
pub struct Context {
    /// The checked configuration.
    pub config: Config,
    /// The state directory.
    pub state: StateDir,
    /// `DEPLOYMENT_ID` (escaped), or `manual-<unix time>` when run by hand
    /// ([`crate::deployment`]).
    pub deployment_id: String,
    /// Run by hand (`DEPLOYMENT_ID` unset or blank): the id is made up and never compared.
    pub manual: bool,
    /// How traffic is pointed at a slot.
    pub switcher: Box<dyn Switcher>,
    /// How the app is run on a slot.
    pub supervisor: Box<dyn Supervisor>,
    /// The hook holding the lock (empty for read-only views).
    hook: String,
    _lock: Option<LockGuard>,
}

impl Context {
    /// Loads the configuration and state without taking the lock or creating anything
    /// (read-only views).
    pub fn unlocked(args: &Args) -> Result<Context> {
        Context::load(args, false)
    }

    fn load(args: &Args, create_state: bool) -> Result<Context> {
        let deployment = deployment::current();
        deployment.refuse_too_long()?;
        let path = config::locate(args.config.as_deref())?;
        let config = Config::load(&path)?;
        log::debug!("configuration {}", path.display());
        let state = if create_state {
            StateDir::open(&config.state_dir)?
        } else {
            StateDir::at(&config.state_dir)
        };
        state.refuse_special_files([config.slots[0].port, config.slots[1].port])?;
        fsio::refuse_special(&config.nginx.include)?;
        let switcher = switcher::for_config(&config, &state);
        let supervisor = supervisor::for_config(&config, &state)?;
        Ok(Context {
            config,
            state,
            deployment_id: deployment.id.clone(),
            manual: deployment.manual,
            switcher,
            supervisor,
            hook: String::new(),
            _lock: None,
        })
    }

    /// Loads everything and takes the exclusive lock for the whole run of `hook`.
    pub fn locked(hook: &str, args: &Args) -> Result<Context> {
        let mut ctx = Context::load(args, true)?;
        let holder = format!("{hook} ({})", ctx.deployment_id);
        ctx._lock = Some(ctx.state.lock(&holder, ctx.config.lock_wait)?);
        ctx.hook = hook.to_string();
        Ok(ctx)
    }

    /// Where traffic goes now, as every hook sees it. A port that is not a slot (the book's
    /// `8080` before the first switch) is said once per hook: both slots are then idle and
    /// nothing on that port is ever signalled.
    pub fn live(&self) -> Result<Live> {
        let live = self.switcher.live()?;
        match live {
            Live::Nothing => self.refuse_lost_include()?,
            Live::Unmanaged(port) => log::info!(
                "traffic goes to port {port}, which is not a slot ({} or {}): a version portswap \
                 does not manage is live there; both slots are idle, nothing on port {port} is \
                 ever signalled, and the next switch takes over from it",
                self.config.slots[0].port,
                self.config.slots[1].port
            ),
            Live::Slot(_) => {}
        }
        if matches!(self.hook.as_str(), "stop" | "start") {
            self.refuse_interrupted_switch(live.slot())?;
        }
        Ok(live)
    }

    /// The live slot (if a slot is live) and the idle one, for `live`.
    pub fn sides_of(&self, live: Live) -> (Option<&Slot>, &Slot) {
        let live = live.slot().and_then(|port| self.config.slot(port));
        let idle = match live {
            Some(slot) => self.config.other_slot(slot.port),
            None => &self.config.slots[0],
        };
        (live, idle)
    }

    /// The live slot (if any) and the idle one, as every hook sees them.
    pub fn sides(&self) -> Result<(Option<&Slot>, &Slot)> {
        Ok(self.sides_of(self.live()?))
    }

    /// A switch was cut short (its intent is still recorded): nginx may serve either port
    /// whatever the include says, so neither slot may be stopped until a switch completes.
    fn refuse_interrupted_switch(&self, live_port: Option<u16>) -> Result<()> {
        let Some(intent) = self.state.switch_intent() else {
            return Ok(());
        };
        Err(Refusal::CutShort {
            from: intent.previous,
            to: intent.live,
            deployment: intent.deployment_id,
            included: live_port,
        }
        .into())
    }

    /// No include, yet a switch was recorded: the include was lost (deleted, or the path
    /// changed), and nginx may still send traffic to the recorded port, which "nothing live"
    /// would take for the idle first slot and stop. Refused until the operator decides.
    fn refuse_lost_include(&self) -> Result<()> {
        let Some(record) = self.state.switch_record() else {
            return Ok(());
        };
        if self.config.slot(record.live).is_none() {
            return Ok(());
        }
        Err(StateError::IncludeLost {
            include: self.config.nginx.include.clone(),
            record: self.state.path().join("switch.yml"),
            live: record.live,
            deployment: record.deployment_id,
            line: self
                .config
                .nginx
                .template
                .render(record.live)
                .trim_end()
                .to_string(),
        }
        .into())
    }
}
