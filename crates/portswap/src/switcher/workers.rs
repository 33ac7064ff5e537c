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
    /// Other children: a worker forked a moment ago still carries the master's title, and
    /// cache processes never take a worker's.
    pub others: Vec<i32>,
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
            } else {
                workers.others.push(pid);
            }
        }
        workers
    }

    /// Every worker, serving or shutting down.
    pub fn all(&self) -> impl Iterator<Item = i32> + '_ {
        self.serving.iter().chain(&self.shutting_down).copied()
    }

    /// True when `pid` was a child of the master in this snapshot, whatever its title.
    fn knew(&self, pid: i32) -> bool {
        self.all()
            .chain(self.others.iter().copied())
            .any(|p| p == pid)
    }

    /// The serving workers that were not children of the master in `before`.
    pub fn new_since<'a>(&'a self, before: &'a Workers) -> impl Iterator<Item = i32> + 'a {
        self.serving.iter().copied().filter(|p| !before.knew(*p))
    }

    /// True once the reload has started as many new workers as there were before: they set
    /// their title only after their listening sockets are in their event loop, so they accept.
    pub fn replacements_ready(&self, before: &Workers) -> bool {
        self.new_since(before).count() >= before.serving.len().max(1)
    }

    /// Asks the workers of `before` that still serve to shut down gracefully (SIGQUIT: stop
    /// accepting, finish in-flight requests), as the master itself does ~100 ms after a
    /// reload. Returns how many were signalled; a permission error is left to the master.
    pub fn retire(&self, before: &Workers) -> usize {
        let old = self.serving.iter().filter(|p| before.knew(**p));
        old.filter(|pid| kill(Pid::from_raw(**pid), Signal::SIGQUIT).is_ok())
            .count()
    }

    /// True once a reload from `before` is complete: new workers serve and none of the
    /// master's children in `before` still does.
    pub fn reload_done(&self, before: &Workers) -> bool {
        let has_new = self.new_since(before).next().is_some();
        let old_still_serving = self.serving.iter().any(|p| before.knew(*p));
        has_new && !old_still_serving
    }
}

/// True when `master` sits between reloads: nginx's master blocks SIGHUP everywhere but in
/// its wait for signals, so a reload it is in (configuration read, workers being forked, its
/// 100 ms overlap) shows as SIGHUP blocked. Such a reload may have read the include before
/// the switch wrote it, and its workers would pass for the switch's own: the switch waits
/// for this before it snapshots the workers and signals. `None` when /proc does not say.
pub fn between_reloads(master: i32) -> Option<bool> {
    procfs::blocks_signal(master, Signal::SIGHUP as i32).map(|blocked| !blocked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(serving: &[i32], shutting_down: &[i32], others: &[i32]) -> Workers {
        Workers {
            serving: serving.to_vec(),
            shutting_down: shutting_down.to_vec(),
            others: others.to_vec(),
        }
    }

    #[test]
    fn reload_done_needs_new_workers_and_no_old_serving() {
        let before = workers(&[1, 2], &[], &[]);
        assert!(!before.reload_done(&before));
        let mid = workers(&[1, 2, 3, 4], &[], &[]);
        assert!(!mid.reload_done(&before));
        let done = workers(&[3, 4], &[1, 2], &[]);
        assert!(done.reload_done(&before));
        let rejected = workers(&[1, 2], &[], &[]);
        assert!(!rejected.reload_done(&before));
    }

    #[test]
    fn a_child_untitled_in_the_snapshot_is_not_a_replacement() {
        // 5 was forked by an earlier reload and had not set its worker title yet.
        let before = workers(&[1, 2], &[], &[5]);
        let now = workers(&[5, 6], &[1, 2], &[]);
        assert!(!now.replacements_ready(&before));
        assert!(!now.reload_done(&before));
        assert!(workers(&[6, 7], &[1, 2, 5], &[]).reload_done(&before));
    }
}
