//! `bench --fleet`: three hosts behind a load balancer.

use crate::Options;

/// Runs the fleet bench.
pub fn run(_o: &Options) {
    eprintln!("bench --fleet: not built yet");
}
