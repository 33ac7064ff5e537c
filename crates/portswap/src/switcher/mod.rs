//! How traffic is pointed at a port: an nginx include file and a reload ([`nginx`]), or one
//! nftables NAT rule below an nginx that proxies to a fixed service port ([`nftables`]).
//! `switch.by` chooses; [`for_config`] builds the one in use.

pub mod boot_unit;
pub mod keepalive;
pub mod nftables;
pub mod nginx;
pub mod upstreams;
mod workers;

use std::time::Duration;

use crate::config::{By, Config};
use crate::error::Result;
use crate::state::StateDir;

/// What a completed switch reports.
#[derive(Debug, Clone)]
pub struct Switched {
    /// From the start of the switch to the moment no new request can reach the old port.
    pub elapsed: Duration,
    /// One line for the log: what was done.
    pub detail: String,
}

/// A way of sending the traffic to one of the two slots.
pub trait Switcher {
    /// The port traffic goes to now; `None` when nothing is live yet (first deployment).
    fn live_port(&self) -> Result<Option<u16>>;

    /// Sends all new traffic to `port` and returns only once no new request can reach the
    /// previous port. On failure the previous routing stays in force.
    fn switch_to(&self, port: u16) -> Result<Switched>;

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
