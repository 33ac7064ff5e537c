//! How long each hook may run with a given configuration: every wait it can make, in order,
//! so that a revision builder can check it against the hook's appspec timeout. A hook the
//! agent kills on its timeout fails without its own verdict, so each wait must fit.

use std::fmt;
use std::time::Duration;

use crate::config::{By, Config, SupervisorChoice};
use crate::duration::show;
use crate::front;
use crate::health::{probe_limit, MIN_PROBE_TIMEOUT};
use crate::process::KILL_WAIT;
use crate::switcher::{nftables, nginx_dump, redirected};
use crate::systemctl::CALL_LIMIT;
use crate::watch;

/// The hook binaries, as named in a revision's `hooks/` directory.
pub const HOOKS: [&str; 4] = ["stop", "start", "health", "switch"];

/// One wait a hook may make, and its upper bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wait {
    /// The configuration key (`stop.grace`) or a description of a built-in wait.
    pub what: &'static str,
    /// The most it can last.
    pub limit: Duration,
}

/// Everything one hook may wait for, in the order it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// The hook (`stop`, `start`, `health`, `switch`).
    pub hook: &'static str,
    /// Its waits.
    pub waits: Vec<Wait>,
}

/// What a switch in nftables mode waits for besides nginx, each bounded: `nft` itself, the
/// read of nginx's configuration for upstream pools, the confirmation connection, the stale
/// conntrack entries, and the boot unit's `systemctl` calls. None in reload mode.
fn nftables_waits(config: &Config) -> Vec<Wait> {
    if config.switch.by != By::Nftables {
        return Vec::new();
    }
    let wait = |what, limit| Wait { what, limit };
    vec![
        wait(
            "nft runs (2s each)",
            nftables::NFT_LIMIT * nftables::NFT_RUNS,
        ),
        wait("nginx -V -T for upstream pools", nginx_dump::LIMIT),
        wait(
            "the confirmation connection and its lookup",
            redirected::PROBE_CONNECT_LIMIT + redirected::PROBE_LOOKUP_LIMIT,
        ),
        wait(
            "stale conntrack entries and in-flight old connections",
            redirected::CLEANUP_LIMIT + redirected::IN_FLIGHT_LIMIT,
        ),
        wait("the boot unit's systemctl calls (3s each)", CALL_LIMIT * 2),
    ]
}

impl Budget {
    /// The budget of `hook` under `config`; `None` when `hook` is not one of [`HOOKS`].
    pub fn of(hook: &str, config: &Config) -> Option<Budget> {
        let hook = HOOKS.into_iter().find(|h| *h == hook)?;
        let wait = |what, limit| Wait { what, limit };
        // Every hook first waits for the lock.
        let mut waits = vec![wait("state.lock_wait", config.lock_wait)];
        // Stopping an app (`stop`, and `start` freeing the idle slot before it starts the new
        // version): SIGTERM, `stop.grace`, SIGKILL, then a bounded wait for it to go.
        if hook == "stop" || hook == "start" {
            waits.push(wait("stop.grace", config.stop_grace));
            waits.push(wait("the wait after SIGKILL", KILL_WAIT));
        }
        // Under systemd every systemctl call is bounded by CALL_LIMIT (a stop by the
        // grace and the wait after SIGKILL, counted above): `show` and `reset-failed` around a
        // stop; `daemon-reload`, `enable`, `reset-failed`, `restart` and `show` to start; one
        // `show` to watch the unit in `health` and `switch`.
        if config.app.supervisor != SupervisorChoice::Process {
            let calls = match hook {
                "stop" => 2,
                "start" => 7,
                _ => 1,
            };
            waits.push(wait("systemctl calls (3s each)", CALL_LIMIT * calls));
        }
        match hook {
            "start" => waits.push(wait("app.start_check", config.app.start_check)),
            "health" => {
                waits.push(wait("health.timeout", config.health.timeout));
                waits.push(wait("the last probe", MIN_PROBE_TIMEOUT));
            }
            "switch" => {
                let reload = config.nginx.reload_timeout;
                waits.push(wait(
                    "the health probe of the target",
                    probe_limit(config.health.timeout),
                ));
                // Each nginx command and the reload itself are bounded by reload_timeout; a
                // reload that times out is undone by a second reload.
                waits.push(wait("the nginx config test (nginx.reload_timeout)", reload));
                if config.nginx.reload_command.is_some() {
                    waits.push(wait("nginx.reload_command (nginx.reload_timeout)", reload));
                }
                waits.push(wait("nginx.reload_timeout", reload));
                waits.push(wait("undoing a reload that timed out", reload * 2));
                let nftables = nftables_waits(config);
                waits.extend(nftables.iter().cloned());
                let nftables_total: Duration = nftables.iter().map(|w| w.limit).sum();
                let nginx_waits = if config.nginx.reload_command.is_some() {
                    5
                } else {
                    4
                };
                let watch = &config.watch;
                if config.nginx.front.is_some() {
                    waits.push(wait(
                        "the front-door check's probes",
                        probe_limit(config.health.timeout) * front::PROBES,
                    ));
                    // A failed check goes back by a second switch; with the watch on, its
                    // rollback (counted below) waits longer and only one of them can happen.
                    if watch.duration.is_zero() {
                        waits.push(wait(
                            "going back after the front-door check",
                            reload * nginx_waits,
                        ));
                        if !nftables.is_empty() {
                            waits.push(wait("going back: the nftables waits", nftables_total));
                        }
                    }
                }
                if !watch.duration.is_zero() {
                    // The watch, its last probe, then a rollback: the previous version's
                    // health and the same nginx waits once more.
                    waits.push(wait("watch.duration", watch.duration));
                    waits.push(wait("the last watch probe", watch::PROBE_LIMIT));
                    waits.push(wait(
                        "the rollback's health probe of the previous version",
                        config.health.timeout.min(watch::ROLLBACK_PATIENCE),
                    ));
                    waits.push(wait("the rollback's nginx waits", reload * nginx_waits));
                    if !nftables.is_empty() {
                        waits.push(wait("the rollback's nftables waits", nftables_total));
                    }
                }
            }
            _ => {}
        }
        Some(Budget { hook, waits })
    }

    /// The longest the hook may run.
    pub fn total(&self) -> Duration {
        self.waits.iter().map(|w| w.limit).sum()
    }
}

/// `state.lock_wait 30s + stop.grace 28s + the wait after SIGKILL 5s = 63s`.
impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let terms: Vec<String> = self
            .waits
            .iter()
            .map(|w| format!("{} {}", w.what, show(w.limit)))
            .collect();
        write!(f, "{} = {}", terms.join(" + "), show(self.total()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("/etc/portswap/portswap.yml")).unwrap()
    }

    #[test]
    fn stop_counts_the_wait_after_sigkill() {
        let config = config("app: { command: [x], supervisor: process }\nstop: { grace: 28s }\n");
        let budget = Budget::of("stop", &config).unwrap();
        assert_eq!(budget.total(), Duration::from_secs(63));
        assert_eq!(
            budget.to_string(),
            "state.lock_wait 30s + stop.grace 28s + the wait after SIGKILL 5s = 63s"
        );
    }

    #[test]
    fn every_hook_has_a_budget_made_of_its_waits() {
        let config = config(
            "app: { command: [x], start_check: 1s, supervisor: process }\nhealth: { timeout: 90s }\n\
             nginx: { reload_timeout: 5s }\nstop: { grace: 20s }\nstate: { lock_wait: 30s }\n",
        );
        let total = |hook| Budget::of(hook, &config).unwrap().total();
        assert_eq!(total("stop"), Duration::from_secs(55));
        assert_eq!(total("start"), Duration::from_secs(56));
        assert_eq!(total("health"), Duration::from_millis(120_100));
        assert_eq!(total("switch"), Duration::from_secs(55));
        assert!(Budget::of("deploy", &config).is_none());
        for hook in HOOKS {
            let budget = Budget::of(hook, &config).unwrap();
            assert_eq!(budget.hook, hook);
            assert_eq!(budget.waits[0].what, "state.lock_wait");
        }
    }

    #[test]
    fn under_systemd_each_systemctl_call_counts() {
        let systemd = config("app: { command: [x], supervisor: systemd }\nstop: { grace: 20s }\n");
        let stop = Budget::of("stop", &systemd).unwrap();
        assert_eq!(
            stop.to_string(),
            "state.lock_wait 30s + stop.grace 20s + the wait after SIGKILL 5s + systemctl calls \
             (3s each) 6s = 61s"
        );
        // `auto` may pick systemd on the host: counted the same.
        let auto = config("app: { command: [x] }\n");
        let start = Budget::of("start", &auto).unwrap().to_string();
        assert!(start.contains("systemctl calls (3s each) 21s"), "{start}");
    }

    #[test]
    fn nftables_mode_counts_nft_the_probe_and_conntrack() {
        let base = "app: { command: [x], supervisor: process }\nnginx: { reload_timeout: 5s }\n";
        let reload = Budget::of("switch", &config(base)).unwrap();
        let nft = Budget::of(
            "switch",
            &config(&format!("{base}switch: {{ by: nftables }}\n")),
        )
        .unwrap();
        // 4 nft runs × 2 s, nginx -V -T 3 s, connect 2 s + lookup 1 s, conntrack 1 s + 1 s,
        // 2 systemctl calls × 3 s.
        assert_eq!(nft.total() - reload.total(), Duration::from_secs(22));
        let text = nft.to_string();
        for what in ["nft runs (2s each) 8s", "nginx -V -T for upstream pools 3s"] {
            assert!(text.contains(what), "{text}");
        }
        let watched = format!("{base}switch: {{ by: nftables }}\nwatch: {{ duration: 10s }}\n");
        let watched = Budget::of("switch", &config(&watched)).unwrap().to_string();
        assert!(
            watched.contains("the rollback's nftables waits 22s"),
            "{watched}"
        );
    }

    #[test]
    fn the_watch_and_its_rollback_count_in_switch() {
        let base = "app: { command: [x], supervisor: process }\nnginx: { reload_timeout: 5s }\n";
        let without = Budget::of("switch", &config(base)).unwrap().total();
        let watched = config(&format!("{base}watch: {{ duration: 60s }}\n"));
        let with = Budget::of("switch", &watched).unwrap();
        // 60 s watch + 1 s last probe + 3 s health of the previous + 4 × 5 s nginx waits.
        assert_eq!(with.total() - without, Duration::from_secs(84));
        assert!(with.to_string().contains("watch.duration 60s"), "{with}");
    }
}
