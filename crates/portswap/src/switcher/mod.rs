//! How traffic is pointed at a port. Today: an nginx include file and a reload. A mechanism
//! below nginx (a kernel-level port redirect, with no reload) fits beside it by implementing
//! [`Switcher`].

pub mod keepalive;
pub mod nginx;
mod workers;

use std::time::Duration;

use crate::error::Result;

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
}
