//! How traffic is pointed at a port: an nginx include file and a reload ([`nginx`]), or one
//! nftables NAT rule below an nginx that proxies to a fixed service port ([`nftables`]).
//! `switch.by` chooses; [`for_config`] builds the one in use.

pub mod boot_unit;
pub mod keepalive;
pub mod nftables;
pub mod nginx;
pub mod nginx_conf;
pub mod nginx_dump;
pub mod nginx_follows;
pub mod redirected;
pub mod upstreams;
mod workers;

use std::time::Duration;

use crate::config::{By, Config};
use crate::error::{Error, Result};
use crate::state::StateDir;

/// What a completed switch reports.
#[derive(Debug, Clone)]
pub struct Switched {
    /// From the start of the switch to the moment no new request can reach the old port.
    pub elapsed: Duration,
    /// One line for the log: what was done.
    pub detail: String,
    /// What the switch could not check, for the verdict (`None`: everything was checked).
    pub caveat: Option<String>,
}

/// What the routing goes back to when a switch fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// What the files and the kernel say now (the include's bytes, the rule): a fresh switch.
    AsFound,
    /// A cut-short switch is being completed: the include (and the rule) may already name
    /// its target while nginx still serves the previous port, so what is found now proves
    /// nothing. On failure, go back to what the intent recorded before that switch began.
    Recorded {
        /// The include's bytes then (`None`: there was no include).
        include: Option<Vec<u8>>,
        /// The port traffic went to then (`None`: nothing was live).
        live: Option<u16>,
    },
}

/// A switch that did not complete: why, and whether the routing is provably what it was
/// before (nginx serves what the include names, the rule is back). When it is not, the
/// caller keeps the intent so that no hook stops either slot until a switch completes.
#[derive(Debug)]
pub struct Unswitched {
    /// What went wrong.
    pub error: Error,
    /// True when the previous routing is provably back in force.
    pub proven: bool,
}

impl Unswitched {
    /// A failure after which nobody can tell what nginx serves.
    pub fn unproven(error: Error) -> Unswitched {
        Unswitched {
            error,
            proven: false,
        }
    }
}

/// An error raised before anything was changed: the routing is as it was.
impl From<Error> for Unswitched {
    fn from(error: Error) -> Unswitched {
        Unswitched {
            error,
            proven: true,
        }
    }
}

/// Where traffic goes now, as the switcher reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// One of the two slots.
    Slot(u16),
    /// A port that is not a slot: a version portswap does not manage is live there (the
    /// book's first include, `set $service_url http://127.0.0.1:8080;`, the app's port
    /// before blue-green). Both slots are idle; nothing on this port is ever signalled; the
    /// first switch takes over from it.
    Unmanaged(u16),
    /// Nothing is live yet.
    Nothing,
}

impl Live {
    /// The live slot's port, if a slot is live.
    pub fn slot(self) -> Option<u16> {
        match self {
            Live::Slot(port) => Some(port),
            Live::Unmanaged(_) | Live::Nothing => None,
        }
    }

    /// The port traffic goes to, slot or not.
    pub fn port(self) -> Option<u16> {
        match self {
            Live::Slot(port) | Live::Unmanaged(port) => Some(port),
            Live::Nothing => None,
        }
    }
}

/// A way of sending the traffic to one of the two slots.
pub trait Switcher {
    /// Where traffic goes now ([`Live::Nothing`] before the first deployment).
    fn live(&self) -> Result<Live>;

    /// Starts what [`Switcher::switch_to`] may do ahead, while the switch's own checks run
    /// (nginx: the config test of the configuration on disk); dropped if no switch follows.
    fn prepare(&self) {}

    /// Sends all new traffic to `port` and returns only once no new request can reach the
    /// previous port. On failure the routing goes back to `fallback`, and the error says
    /// whether that is proven.
    fn switch_to(&self, port: u16, fallback: &Fallback) -> Result<Switched, Unswitched>;

    /// Puts the routing back to `recorded` (the last switch's port) when the system lost it,
    /// e.g. the kernel's ruleset after a reboot; no health check (the app may not be up yet).
    fn restore(&self, recorded: u16) -> Result<String> {
        Ok(format!(
            "nothing to restore: the include keeps port {recorded} (or whatever it names) across reboots"
        ))
    }

    /// Extra lines for the status view.
    fn describe(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The switcher `switch.by` selects.
pub fn for_config(config: &Config, state: &StateDir) -> Box<dyn Switcher> {
    match config.switch.by {
        By::NginxReload => Box::new(nftables::ReloadSwitcher::new(config, state)),
        By::Nftables => Box::new(nftables::NftablesSwitcher::new(config, state)),
    }
}
