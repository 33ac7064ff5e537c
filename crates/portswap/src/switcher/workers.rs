//! Watching an nginx master's workers to tell when a reload has taken effect.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::procfs;

/// The master's children that are workers, split into serving and shutting down.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Workers {
    /// Workers that accept new connections.
    pub serving: Vec<i32>,
    /// Workers titled `worker process is shutting down`.
    pub shutting_down: Vec<i32>,
}

impl Workers {
    /// Reads the worker processes of `master` from /proc.
    pub fn of(master: i32) -> Workers {
        let mut workers = Workers::default();
        for pid in procfs::children(master) {
            let title = procfs::cmdline(pid).join(" ");
            if title.contains("worker process is shutting down") {
                workers.shutting_down.push(pid);
            } else if title.contains("worker process") {
                workers.serving.push(pid);
            }
        }
        workers
    }

    /// Every worker, serving or shutting down.
    pub fn all(&self) -> impl Iterator<Item = i32> + '_ {
        self.serving.iter().chain(&self.shutting_down).copied()
    }

    /// True once the reload has started as many new workers as there were before: they set
    /// their title only after their listening sockets are in their event loop, so they accept.
    pub fn replacements_ready(&self, before: &Workers) -> bool {
        let new = self
            .serving
            .iter()
            .filter(|p| !before.serving.contains(p))
            .count();
        new >= before.serving.len().max(1)
    }

    /// Asks the workers of `before` that still serve to shut down gracefully (SIGQUIT: stop
    /// accepting, finish in-flight requests), as the master itself does ~100 ms after a
    /// reload. Returns how many were signalled; a permission error is left to the master.
    pub fn retire(&self, before: &Workers) -> usize {
        let old = self.serving.iter().filter(|p| before.serving.contains(p));
        old.filter(|pid| kill(Pid::from_raw(**pid), Signal::SIGQUIT).is_ok())
            .count()
    }

    /// True once a reload from `before` is complete: new workers serve and none of the
    /// workers that served before still does.
    pub fn reload_done(&self, before: &Workers) -> bool {
        let has_new = self.serving.iter().any(|p| !before.serving.contains(p));
        let old_still_serving = self.serving.iter().any(|p| before.serving.contains(p));
        has_new && !old_still_serving
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_done_needs_new_workers_and_no_old_serving() {
        let before = Workers {
            serving: vec![1, 2],
            shutting_down: vec![],
        };
        assert!(!before.reload_done(&before));
        let mid = Workers {
            serving: vec![1, 2, 3, 4],
            shutting_down: vec![],
        };
        assert!(!mid.reload_done(&before));
        let done = Workers {
            serving: vec![3, 4],
            shutting_down: vec![1, 2],
        };
        assert!(done.reload_done(&before));
        let rejected = Workers {
            serving: vec![1, 2],
            shutting_down: vec![],
        };
        assert!(!rejected.reload_done(&before));
    }
}
