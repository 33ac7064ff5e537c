//! Checks made before a revision is packed: every wait portswap.yml allows a hook fits in
//! the appspec timeout of that hook (counted by [`portswap::budget`], the hooks' own
//! accounting), and appspec.yml names only files the revision has.

use std::path::Path;

use crate::error::{Error, Misfit, Result};
use portswap::budget::{Budget, HOOKS};
use portswap::config::Config;
use portswap_appspec::AppSpec;

/// The hook a script location runs (`hooks/health` → `health`), if it is one of ours.
pub fn hook_name(location: &str) -> Option<&'static str> {
    let name = Path::new(location).file_name()?.to_str()?;
    HOOKS.into_iter().find(|h| *h == name)
}

/// Checks that every portswap hook the appspec runs has the time all its waits need.
/// Returns the first misfit as one line naming the hook, the event, each wait and the files.
pub fn check_timeouts(spec: &AppSpec, config: &Config, appspec_path: &Path) -> Result<()> {
    for (event, scripts) in &spec.hooks {
        for script in scripts {
            let Some(hook) = hook_name(&script.location) else {
                continue;
            };
            let budget = Budget::of(hook, config).expect("one of HOOKS");
            let given = script.timeout();
            if budget.total() > given {
                return Err(Error::Budget(Box::new(Misfit {
                    location: script.location.clone(),
                    event: event.to_string(),
                    budget: budget.to_string(),
                    timeout: given.as_secs(),
                    appspec: appspec_path.to_path_buf(),
                    config: config.path.clone(),
                })));
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
    HOOKS.into_iter().filter(|h| !used.contains(h)).collect()
}

/// Checks that every script location and `files` source of the appspec exists in `revision`.
pub fn check_references(spec: &AppSpec, revision: &Path, appspec_path: &Path) -> Result<()> {
    let outside = |path: &str| crate::revision::inside(Path::new(""), Path::new(path)).is_none();
    for (event, scripts) in &spec.hooks {
        for script in scripts {
            if outside(script.location.trim_start_matches('/')) {
                return Err(Error::input(
                    appspec_path,
                    format_args!(
                        "{event} runs {}, which points outside the revision; a location is a \
                         path inside it",
                        script.location
                    ),
                ));
            }
            let path = revision.join(script.location.trim_start_matches('/'));
            if !path.is_file() {
                return Err(Error::input(
                    appspec_path,
                    format_args!(
                        "{event} runs {}, which is not in the revision",
                        script.location
                    ),
                ));
            }
        }
    }
    for file in &spec.files {
        if outside(file.source.trim_start_matches('/')) {
            return Err(Error::input(
                appspec_path,
                format_args!("files source {} points outside the revision", file.source),
            ));
        }
        if !revision.join(file.source.trim_start_matches('/')).exists() {
            return Err(Error::input(
                appspec_path,
                format_args!("files source {} is not in the revision", file.source),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(stop_timeout: u64, health_timeout: u64) -> AppSpec {
        AppSpec::parse(&format!(
            "version: 0.0\nos: linux\nhooks:\n  ApplicationStop:\n    - location: hooks/stop\n      timeout: {stop_timeout}\n\
             \x20 ApplicationStart:\n    - location: hooks/start\n      timeout: 90\n\
             \x20 ValidateService:\n    - location: hooks/health\n      timeout: {health_timeout}\n\
             \x20   - location: hooks/switch\n      timeout: 60\n"
        ))
        .unwrap()
    }

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("deploy/portswap.yml")).unwrap()
    }

    const APPSPEC: &str = "deploy/appspec.yml";

    /// Issue 8: lock_wait 30 s + grace 28 s passed for a 60 s ApplicationStop, but `stop`
    /// may then wait 5 s more after SIGKILL: 63 s.
    #[test]
    fn the_wait_after_sigkill_counts() {
        let config = config("app: { command: [x], supervisor: process }\nstop: { grace: 28s }\n");
        let err = check_timeouts(&spec(60, 150), &config, Path::new(APPSPEC)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "hooks/stop in ApplicationStop may wait state.lock_wait 30s + stop.grace 28s + \
             the wait after SIGKILL 5s = 63s, over its appspec timeout of 60s: the agent would \
             kill it mid-way; raise the timeout in deploy/appspec.yml or lower the waits in \
             deploy/portswap.yml"
        );
        assert_eq!(err.exit_code(), 2);
        assert!(check_timeouts(&spec(63, 150), &config, Path::new(APPSPEC)).is_ok());
    }

    #[test]
    fn the_legacy_health_wait_does_not_fit_a_60_s_hook() {
        // The legacy health check waits up to 110 s inside a 60 s hook.
        let config =
            config("app: { command: [x], supervisor: process }\nhealth: { timeout: 110s }\nstate: { lock_wait: 5s }\n");
        let err = check_timeouts(&spec(60, 60), &config, Path::new(APPSPEC)).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "hooks/health in ValidateService may wait state.lock_wait 5s + health.timeout \
                 110s + the last probe 100ms = 115.10s, over its appspec timeout of 60s"
            ),
            "{err}"
        );
        assert!(check_timeouts(&spec(60, 116), &config, Path::new(APPSPEC)).is_ok());
    }

    /// Issue 15 item 10: in nftables mode a switch also waits for `nft`, nginx's dump, the
    /// confirmation connection and conntrack (a switch took 5.8 s against a 5 s budget the
    /// bundle accepted): a timeout that fits reload mode does not fit them.
    #[test]
    fn the_nftables_waits_count_in_the_switch_budget() {
        let base = "app: { command: [x], supervisor: process }\nstate: { lock_wait: 20s }\n";
        let fits = |text: &str| check_timeouts(&spec(60, 90), &config(text), Path::new(APPSPEC));
        assert!(fits(base).is_ok(), "45 s of reload mode fit 60 s");
        let err = fits(&format!("{base}switch: {{ by: nftables }}\n")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("hooks/switch in ValidateService")
                && text.contains("nft runs (2s each) 8s")
                && text.contains("the confirmation connection and its lookup 3s")
                && text.contains("= 67s"),
            "{text}"
        );
    }

    #[test]
    fn each_hook_has_its_own_budget() {
        let base = "app: { command: [x], supervisor: process }\nstate: { lock_wait: 20s }\n";
        let fits = |text: &str| check_timeouts(&spec(60, 90), &config(text), Path::new(APPSPEC));
        assert!(fits(base).is_ok());
        // stop.grace (and the wait after SIGKILL) is also spent by start: it frees the idle
        // port the same way.
        let err = fits(&format!("{base}stop: {{ grace: 36s }}\n")).unwrap_err();
        assert!(
            err.to_string().starts_with("hooks/stop in ApplicationStop"),
            "{err}"
        );
        let err = fits(
            "state: { lock_wait: 20s }\nstop: { grace: 35s }\napp: { command: [x], start_check: 31s, supervisor: process }\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("hooks/start in ApplicationStart"),
            "{err}"
        );
        let err = fits(&format!("{base}nginx: {{ reload_timeout: 17s }}\n")).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "hooks/switch in ValidateService may wait state.lock_wait 20s + the health probe \
                 of the target 5s + the nginx config test (nginx.reload_timeout) 17s + \
                 nginx.reload_timeout 17s + undoing a reload that timed out 34s = 93s"
            ),
            "{err}"
        );
    }

    /// Issue 19: the watch runs inside `switch`, so ValidateService's timeout must hold it.
    #[test]
    fn the_watch_counts_in_validate_service() {
        let base = "app: { command: [x], supervisor: process }\nstate: { lock_wait: 5s }\n";
        let check = |text: &str| check_timeouts(&spec(60, 90), &config(text), Path::new(APPSPEC));
        assert!(check(&format!("{base}watch: {{ duration: 1s }}\n")).is_ok());
        let err = check(&format!("{base}watch: {{ duration: 60s }}\n")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("hooks/switch in ValidateService")
                && text.contains("watch.duration 60s"),
            "{text}"
        );
    }

    #[test]
    fn references_and_unused_hooks() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(60, 90);
        let appspec = Path::new(APPSPEC);
        let err = check_references(&spec, dir.path(), appspec).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("deploy/appspec.yml: ApplicationStart runs hooks/start, which is not"),
            "{err}"
        );
        std::fs::create_dir(dir.path().join("hooks")).unwrap();
        for hook in HOOKS {
            std::fs::write(dir.path().join("hooks").join(hook), "").unwrap();
        }
        assert!(check_references(&spec, dir.path(), appspec).is_ok());
        let with_files = AppSpec::parse(
            "version: 0.0\nos: linux\nfiles:\n  - source: app.jar\n    destination: /x\n",
        )
        .unwrap();
        assert!(check_references(&with_files, dir.path(), appspec)
            .unwrap_err()
            .to_string()
            .contains("app.jar"));
        assert_eq!(unused_hooks(&with_files), HOOKS);
        assert!(unused_hooks(&spec).is_empty());
    }
}
