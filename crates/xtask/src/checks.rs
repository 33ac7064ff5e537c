//! Checks made before a revision is packed: every wait configured in portswap.yml fits in the
//! appspec timeout of the hook that performs it, and appspec.yml names only files that exist.

use std::path::Path;
use std::time::Duration;

use portswap::config::Config;
use portswap::duration::show;
use portswap_testkit::agent::AppSpec;

/// Slack the switch needs beyond its reload timeout (config test, atomic write, lock release).
pub const SWITCH_MARGIN: Duration = Duration::from_secs(3);

/// The waits of portswap.yml that bound how long a hook may run.
#[derive(Debug, Clone, PartialEq)]
pub struct Waits {
    /// `state.lock_wait` (default 30 s).
    pub lock_wait: Duration,
    /// `stop.grace` (default 10 s).
    pub grace: Duration,
    /// `app.start_check` (default 250 ms).
    pub start_check: Duration,
    /// `health.timeout` (default 60 s).
    pub health_timeout: Duration,
    /// `nginx.reload_timeout` (default 5 s).
    pub reload_timeout: Duration,
}

impl Waits {
    /// Reads the waits from the text of a portswap.yml through portswap's own loader, so
    /// the defaults and the duration syntax are the product's; an invalid file is refused.
    pub fn from_config(text: &str) -> Result<Waits, String> {
        let config =
            Config::parse(text, Path::new("hooks/portswap.yml")).map_err(|e| e.to_string())?;
        Ok(Waits {
            lock_wait: config.lock_wait,
            grace: config.stop_grace,
            start_check: config.app.start_check,
            health_timeout: config.health.timeout,
            reload_timeout: config.nginx.reload_timeout,
        })
    }

    /// The longest a hook may legitimately run, with the terms that make it up.
    pub fn budget(&self, hook: &str) -> Option<(Duration, String)> {
        let terms: Vec<(&str, Duration)> = match hook {
            "stop" => vec![
                ("state.lock_wait", self.lock_wait),
                ("stop.grace", self.grace),
            ],
            "start" => vec![
                ("state.lock_wait", self.lock_wait),
                ("stop.grace", self.grace),
                ("app.start_check", self.start_check),
            ],
            "health" => vec![
                ("state.lock_wait", self.lock_wait),
                ("health.timeout", self.health_timeout),
            ],
            "switch" => vec![
                ("state.lock_wait", self.lock_wait),
                ("nginx.reload_timeout", self.reload_timeout),
                ("margin", SWITCH_MARGIN),
            ],
            _ => return None,
        };
        let total = terms.iter().map(|(_, d)| *d).sum();
        let words: Vec<String> = terms
            .iter()
            .map(|(name, d)| format!("{name} {}", show(*d)))
            .collect();
        Some((total, words.join(" + ")))
    }
}

/// The hook a script location runs (`hooks/health` → `health`), if it is one of ours.
pub fn hook_name(location: &str) -> Option<&'static str> {
    let name = Path::new(location).file_name()?.to_str()?;
    ["stop", "start", "health", "switch"]
        .into_iter()
        .find(|h| *h == name)
}

/// Checks that every portswap hook the appspec runs has the time its waits need.
/// Returns the first misfit as a one-line message naming the hook, event and keys.
pub fn check_timeouts(spec: &AppSpec, waits: &Waits) -> Result<(), String> {
    for (event, scripts) in &spec.hooks {
        for script in scripts {
            let Some(hook) = hook_name(&script.location) else {
                continue;
            };
            let (need, terms) = waits.budget(hook).expect("known hook");
            let given = script.timeout();
            if need > given {
                return Err(format!(
                    "{} in {event} may wait {} ({terms}) but its appspec timeout is {}s: \
                     the agent would kill it mid-way; raise the timeout or lower the waits",
                    script.location,
                    show(need),
                    given.as_secs()
                ));
            }
        }
    }
    Ok(())
}

/// Hooks of ours that the appspec never runs (worth a warning, not a refusal).
pub fn unused_hooks(spec: &AppSpec) -> Vec<&'static str> {
    let used: Vec<&str> = spec
        .hooks
        .values()
        .flatten()
        .filter_map(|s| hook_name(&s.location))
        .collect();
    ["stop", "start", "health", "switch"]
        .into_iter()
        .filter(|h| !used.contains(h))
        .collect()
}

/// Checks that every script location and `files` source of the appspec exists in `revision`.
pub fn check_references(spec: &AppSpec, revision: &Path) -> Result<(), String> {
    for (event, scripts) in &spec.hooks {
        for script in scripts {
            let path = revision.join(script.location.trim_start_matches('/'));
            if !path.is_file() {
                return Err(format!(
                    "appspec.yml: {event} runs {}, which is not in the revision",
                    script.location
                ));
            }
        }
    }
    for file in &spec.files {
        if !revision.join(file.source.trim_start_matches('/')).exists() {
            return Err(format!(
                "appspec.yml: files source {} is not in the revision",
                file.source
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(health_timeout: u64) -> AppSpec {
        AppSpec::parse(&format!(
            "version: 0.0\nos: linux\nhooks:\n  ApplicationStop:\n    - location: hooks/stop\n      timeout: 60\n\
             \x20 ApplicationStart:\n    - location: hooks/start\n      timeout: 60\n\
             \x20 ValidateService:\n    - location: hooks/health\n      timeout: {health_timeout}\n\
             \x20   - location: hooks/switch\n      timeout: 30\n"
        ))
        .unwrap()
    }

    #[test]
    fn defaults_and_overrides() {
        let waits = Waits::from_config("app:\n  command: [x]\n").unwrap();
        assert_eq!(waits.lock_wait, Duration::from_secs(30));
        assert_eq!(waits.health_timeout, Duration::from_secs(60));
        let waits = Waits::from_config(
            "app: { command: [x] }\nhealth: { timeout: 2m }\nstate: { lock_wait: 500ms }\n",
        )
        .unwrap();
        assert_eq!(waits.health_timeout, Duration::from_secs(120));
        assert_eq!(waits.lock_wait, Duration::from_millis(500));
        let err =
            Waits::from_config("app: { command: [x] }\nstop: { grace: forever }\n").unwrap_err();
        assert!(err.contains("stop.grace"), "{err}");
    }

    #[test]
    fn the_legacy_health_wait_does_not_fit_a_60_s_hook() {
        // The legacy health check waits up to 110 s inside a 60 s hook.
        let waits = Waits::from_config(
            "app: { command: [x] }\nhealth: { timeout: 110s }\nstate: { lock_wait: 5s }\n",
        )
        .unwrap();
        let err = check_timeouts(&spec(60), &waits).unwrap_err();
        assert_eq!(
            err,
            "hooks/health in ValidateService may wait 115s (state.lock_wait 5s + health.timeout 110s) \
             but its appspec timeout is 60s: the agent would kill it mid-way; raise the timeout or lower the waits"
        );
        assert!(check_timeouts(&spec(115), &waits).is_ok());
    }

    #[test]
    fn each_hook_has_its_own_budget() {
        let base = "app: { command: [x] }\nstate: { lock_wait: 20s }\n";
        let ok = Waits::from_config(base).unwrap();
        assert!(check_timeouts(&spec(90), &ok).is_ok());
        let stop = Waits::from_config(&format!("{base}stop: {{ grace: 41s }}\n")).unwrap();
        // stop.grace is also spent by start (it frees the idle port the same way).
        assert!(check_timeouts(&spec(90), &stop)
            .unwrap_err()
            .starts_with("hooks/st"));
        let start = Waits::from_config(
            "state: { lock_wait: 20s }\nstop: { grace: 39s }\napp: { command: [x], start_check: 2s }\n",
        )
        .unwrap();
        assert!(check_timeouts(&spec(90), &start)
            .unwrap_err()
            .starts_with("hooks/start in ApplicationStart"));
        let switch =
            Waits::from_config(&format!("{base}nginx: {{ reload_timeout: 8s }}\n")).unwrap();
        let err = check_timeouts(&spec(90), &switch).unwrap_err();
        assert!(
            err.starts_with("hooks/switch in ValidateService may wait 31s"),
            "{err}"
        );
    }

    #[test]
    fn references_and_unused_hooks() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(90);
        let err = check_references(&spec, dir.path()).unwrap_err();
        assert!(err.contains("which is not in the revision"), "{err}");
        std::fs::create_dir(dir.path().join("hooks")).unwrap();
        for hook in ["stop", "start", "health", "switch"] {
            std::fs::write(dir.path().join("hooks").join(hook), "").unwrap();
        }
        assert!(check_references(&spec, dir.path()).is_ok());
        let with_files = AppSpec::parse(
            "version: 0.0\nos: linux\nfiles:\n  - source: app.jar\n    destination: /x\n",
        )
        .unwrap();
        assert!(check_references(&with_files, dir.path())
            .unwrap_err()
            .contains("app.jar"));
        assert_eq!(
            unused_hooks(&with_files),
            ["stop", "start", "health", "switch"]
        );
        assert!(unused_hooks(&spec).is_empty());
    }
}
