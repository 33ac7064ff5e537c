//! Checking a parsed `portswap.yml`: turns the raw, all-optional sections into a `Config`
//! with defaults applied, or the first error naming the key. One file per group of sections.

mod app;
mod health;
mod routing;

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Config, RawConfig, RawSlot, Slot};
use crate::duration::show;
use crate::error::{ConfigError, Error, Result};

/// `state.dir`'s default.
const STATE_DIR: &str = "/var/lib/portswap";

/// `systemd.unit_dir`'s and `switch.boot_unit_dir`'s default.
const UNIT_DIR: &str = "/etc/systemd/system";

/// Checks the sections of the file at `path`; `dir` is the directory paths are taken from.
pub(super) struct Checker<'a> {
    pub(super) path: &'a Path,
    pub(super) dir: &'a Path,
}

impl Checker<'_> {
    fn err(&self, key: &str, msg: impl std::fmt::Display) -> Error {
        ConfigError::key(self.path, key, msg).into()
    }

    fn path_of(&self, key: &str, value: &str) -> Result<PathBuf> {
        if value.trim().is_empty() {
            return Err(self.err(key, "must not be empty"));
        }
        Ok(self.dir.join(value))
    }

    /// A path on the host that every deployment shares (state, logs, nginx's files, unit
    /// directories): it must be absolute. A relative one would resolve against the
    /// configuration's directory, which CodeDeploy makes anew for each deployment inside its
    /// archive: each deployment would get its own state and lose sight of the apps the
    /// earlier ones started. `example` is the fix offered (the key's default).
    fn host_path_of(&self, key: &str, value: &str, example: &str) -> Result<PathBuf> {
        if value.trim().is_empty() {
            return Err(self.err(key, "must not be empty"));
        }
        if !Path::new(value).is_absolute() {
            return Err(ConfigError::RelativeHostPath {
                path: self.path.to_path_buf(),
                key: key.to_string(),
                value: value.to_string(),
                example: example.to_string(),
            }
            .into());
        }
        Ok(PathBuf::from(value))
    }

    /// A duration key, `default` when absent, refused above `max`, the most the key
    /// plausibly needs: `health.timeout: 60000` meant as milliseconds is 16 hours.
    fn duration(
        &self,
        key: &str,
        raw: Option<Duration>,
        default: Duration,
        max: Duration,
    ) -> Result<Duration> {
        let value = raw.unwrap_or(default);
        if value > max {
            return Err(self.err(
                key,
                format!(
                    "{} is more than {}, the most it plausibly needs; a number without a unit \
                     is seconds: for milliseconds write e.g. `{key}: {}ms`",
                    show(value),
                    show(max),
                    value.as_secs()
                ),
            ));
        }
        Ok(value)
    }

    fn argv(&self, key: &str, argv: Vec<String>) -> Result<Vec<String>> {
        match argv.first() {
            None => Err(self.err(
                key,
                "must list a program and its arguments, e.g. [\"nginx\", \"-t\"]",
            )),
            Some(program) if program.trim().is_empty() => {
                Err(self.err(key, "the program (first item) is empty"))
            }
            Some(_) => Ok(argv),
        }
    }

    pub(super) fn build(&self, raw: RawConfig) -> Result<Config> {
        let slots = self.slots(raw.slots)?;
        let state_dir = self.host_path_of(
            "state.dir",
            raw.state.dir.as_deref().unwrap_or(STATE_DIR),
            STATE_DIR,
        )?;
        let app = self.app(raw.app, &state_dir)?;
        let health = self.health(raw.health)?;
        let nginx = self.nginx(raw.nginx)?;
        let switch = self.switch(raw.switch, &slots)?;
        self.redirected_template(&nginx, &switch)?;
        let systemd = self.systemd(raw.systemd)?;
        let stop_grace = self.duration(
            "stop.grace",
            raw.stop.grace,
            Duration::from_secs(10),
            Duration::from_secs(600),
        )?;
        if stop_grace.is_zero() {
            log::warn!(
                "{}: stop.grace is 0: stop sends SIGKILL right after SIGTERM, the app gets no \
                 time to finish its requests",
                self.path.display()
            );
        }
        let lock_wait = self.duration(
            "state.lock_wait",
            raw.state.lock_wait,
            Duration::from_secs(30),
            Duration::from_secs(3600),
        )?;
        if lock_wait.is_zero() {
            log::warn!(
                "{}: state.lock_wait is 0: a hook fails at once (exit 3) while another holds \
                 the lock",
                self.path.display()
            );
        }
        let watch = self.watch(raw.watch)?;
        Ok(Config {
            path: self.path.to_path_buf(),
            slots,
            app,
            health,
            systemd,
            nginx,
            switch,
            stop_grace,
            state_dir,
            lock_wait,
            watch,
        })
    }

    fn slots(&self, raw: Option<Vec<RawSlot>>) -> Result<[Slot; 2]> {
        let Some(raw) = raw else {
            return Ok([
                Slot {
                    port: 8081,
                    profile: "real1".into(),
                },
                Slot {
                    port: 8082,
                    profile: "real2".into(),
                },
            ]);
        };
        let [a, b]: [RawSlot; 2] = raw.try_into().map_err(|v: Vec<RawSlot>| {
            self.err(
                "slots",
                format!("must list exactly 2 slots, found {}", v.len()),
            )
        })?;
        for (i, s) in [&a, &b].into_iter().enumerate() {
            if s.port == 0 {
                return Err(self.err(&format!("slots[{i}].port"), "must be 1 to 65535"));
            }
            if s.profile.trim().is_empty() {
                return Err(self.err(&format!("slots[{i}].profile"), "must not be empty"));
            }
        }
        if a.port == b.port {
            return Err(self.err(
                "slots[1].port",
                format!(
                    "duplicates slots[0].port {}; the slots need two ports",
                    a.port
                ),
            ));
        }
        if a.profile == b.profile {
            return Err(self.err(
                "slots[1].profile",
                format!("duplicates slots[0].profile `{}`", a.profile),
            ));
        }
        Ok([
            Slot {
                port: a.port,
                profile: a.profile,
            },
            Slot {
                port: b.port,
                profile: b.profile,
            },
        ])
    }
}
