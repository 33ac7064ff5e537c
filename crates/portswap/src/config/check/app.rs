//! The `app` and `systemd` sections: what runs, as whom, and how systemd supervises it.

use std::path::Path;
use std::time::Duration;

use super::{Checker, UNIT_DIR};
use crate::config::{App, Output, RawApp, RawSystemd, SupervisorChoice, Systemd};
use crate::error::Result;
use crate::template;

impl Checker<'_> {
    pub(super) fn app(&self, raw: Option<RawApp>, state_dir: &Path) -> Result<App> {
        let raw = raw.ok_or_else(|| self.err("app", "missing; it needs at least `command`"))?;
        let command = self.argv("app.command", raw.command)?;
        for (i, arg) in command.iter().enumerate() {
            template::check_placeholders(arg)
                .map_err(|m| self.err(&format!("app.command[{i}]"), m))?;
        }
        let workdir = raw.workdir.unwrap_or_else(|| "{release_dir}".into());
        template::check_placeholders(&workdir).map_err(|m| self.err("app.workdir", m))?;
        let mut artifacts = Vec::new();
        for (i, pattern) in raw.artifacts.iter().enumerate() {
            let key = format!("app.artifacts[{i}]");
            let path = self.path_of(&key, pattern)?;
            let parent_has_wildcard = path
                .parent()
                .is_some_and(|p| p.to_string_lossy().contains(['*', '?']));
            if parent_has_wildcard {
                return Err(self.err(&key, "wildcards are allowed in the file name only"));
            }
            artifacts.push(path);
        }
        for key in raw.env.keys() {
            let mut chars = key.chars();
            let valid = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(self.err(
                    "app.env",
                    format!(
                        "{key:?} is not a variable name systemd and shells take (letters, digits \
                         and `_`, not starting with a digit; e.g. SPRING_DATASOURCE_PASSWORD for \
                         spring.datasource.password)"
                    ),
                ));
            }
        }
        if raw.user.as_deref().is_some_and(|u| u.trim().is_empty()) {
            return Err(self.err(
                "app.user",
                "must not be empty (leave it out to keep the hook's user)",
            ));
        }
        let keep_releases = raw.keep_releases.unwrap_or(3);
        if keep_releases < 2 {
            return Err(self.err(
                "app.keep_releases",
                "must be at least 2 (one release per slot)",
            ));
        }
        let log_dir = match raw.log_dir {
            Some(dir) => self.host_path_of("app.log_dir", &dir, "/var/log/portswap")?,
            None => state_dir.join("logs"),
        };
        Ok(App {
            artifacts,
            command,
            workdir,
            env: raw.env,
            log_dir,
            user: raw.user,
            start_check: self.duration(
                "app.start_check",
                raw.start_check,
                Duration::from_millis(250),
                Duration::from_secs(120),
            )?,
            keep_releases,
            supervisor: match raw.supervisor.as_deref() {
                None | Some("auto") => SupervisorChoice::Auto,
                Some("systemd") => SupervisorChoice::Systemd,
                Some("process") => SupervisorChoice::Process,
                Some(other) => {
                    return Err(self.err(
                        "app.supervisor",
                        format!("`{other}` is not one of auto, systemd, process"),
                    ))
                }
            },
        })
    }

    pub(super) fn systemd(&self, raw: RawSystemd) -> Result<Systemd> {
        let unit = raw.unit.unwrap_or_else(|| "portswap-{port}.service".into());
        let valid_chars = unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.@{}".contains(c));
        if !unit.contains("{port}") || !unit.ends_with(".service") || !valid_chars {
            return Err(self.err(
                "systemd.unit",
                format!(
                    "`{unit}` must be a service name holding {{port}} (letters, digits, `:-_.@`), \
                     e.g. portswap-{{port}}.service"
                ),
            ));
        }
        let unit_dir = self.host_path_of(
            "systemd.unit_dir",
            raw.unit_dir.as_deref().unwrap_or(UNIT_DIR),
            UNIT_DIR,
        )?;
        let start_limit = raw.start_limit.unwrap_or(5);
        if start_limit == 0 {
            return Err(self.err("systemd.start_limit", "must be at least 1"));
        }
        Ok(Systemd {
            unit,
            unit_dir,
            output: match raw.output.as_deref() {
                None | Some("file") => Output::File,
                Some("journal") => Output::Journal,
                Some(other) => {
                    return Err(self.err(
                        "systemd.output",
                        format!("`{other}` is not one of file, journal"),
                    ))
                }
            },
            restart_delay: self.duration(
                "systemd.restart_delay",
                raw.restart_delay,
                Duration::from_millis(100),
                Duration::from_secs(300),
            )?,
            start_limit,
        })
    }
}
