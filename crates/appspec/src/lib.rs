//! The CodeDeploy AppSpec file (`appspec.yml`, version 0.0, os linux) as portswap needs it:
//! `files`, `hooks` with their scripts and timeouts. Shared by `portswap-bundle`, which checks
//! a revision before packing it, and the agent emulation of the tests, which runs one.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Timeout of a script whose appspec entry gives none, in seconds.
pub const DEFAULT_TIMEOUT_SECS: u64 = 3600;
/// The hook events of an in-place deployment without a load balancer, in order.
pub const HOOK_EVENTS: [&str; 5] = [
    "ApplicationStop",
    "BeforeInstall",
    "AfterInstall",
    "ApplicationStart",
    "ValidateService",
];

/// A parsed `appspec.yml` (version 0.0, os linux).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// Must be 0.0.
    pub version: f64,
    /// Must be `linux`.
    pub os: String,
    /// What Install copies where.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// Accepted and ignored by this emulation.
    #[serde(default)]
    pub permissions: Option<serde_yaml::Value>,
    /// `DISALLOW` (default), `OVERWRITE` or `RETAIN`.
    #[serde(default)]
    pub file_exists_behavior: Option<String>,
    /// Event name → scripts run in order.
    #[serde(default)]
    pub hooks: BTreeMap<String, Vec<HookScript>>,
}

/// One `files` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Path inside the revision; `/` is the whole revision.
    pub source: String,
    /// Absolute directory on the instance.
    pub destination: String,
}

/// One script of a hook event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookScript {
    /// Path relative to the revision's root.
    pub location: String,
    /// Seconds; [`DEFAULT_TIMEOUT_SECS`] when absent.
    pub timeout: Option<u64>,
    /// Run as this user through `su USER -c PATH`.
    pub runas: Option<String>,
    /// Prefix the `su` with `sudo`.
    pub sudo: Option<bool>,
}

impl HookScript {
    /// The script's timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS))
    }
}

impl AppSpec {
    /// Parses and checks the text of an appspec.
    pub fn parse(text: &str) -> Result<AppSpec, String> {
        let spec: AppSpec = serde_yaml::from_str(text).map_err(|e| format!("{e}"))?;
        if spec.version != 0.0 {
            return Err(format!("version must be 0.0, not {}", spec.version));
        }
        if spec.os != "linux" {
            return Err(format!("os must be linux, not {}", spec.os));
        }
        for (event, scripts) in &spec.hooks {
            if !HOOK_EVENTS.contains(&event.as_str()) {
                return Err(format!("unknown or unsupported hook event {event}"));
            }
            let total: u64 = scripts
                .iter()
                .map(|s| s.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS))
                .sum();
            if total > DEFAULT_TIMEOUT_SECS {
                return Err(format!(
                    "the timeouts of {event} add up to {total} s, over 3600 s"
                ));
            }
        }
        match spec.file_exists_behavior.as_deref() {
            None | Some("DISALLOW" | "OVERWRITE" | "RETAIN") => Ok(spec),
            Some(other) => Err(format!("unknown file_exists_behavior {other}")),
        }
    }

    /// Reads `appspec.yml` (or `appspec.yaml`) at the root of an unpacked revision.
    pub fn load(revision_root: &Path) -> Result<AppSpec, String> {
        let path = ["appspec.yml", "appspec.yaml"]
            .iter()
            .map(|name| revision_root.join(name))
            .find(|p| p.is_file())
            .ok_or_else(|| format!("no appspec.yml in {}", revision_root.display()))?;
        AppSpec::read(&path)
    }

    /// Reads and checks the appspec file at `path`; errors name the file.
    pub fn read(path: &Path) -> Result<AppSpec, String> {
        let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        AppSpec::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The scripts of one event (empty when the event has none).
    pub fn scripts(&self, event: &str) -> &[HookScript] {
        self.hooks.get(event).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appspec_checks() {
        assert!(AppSpec::parse("version: 0.0\nos: linux\n").is_ok());
        assert!(AppSpec::parse("version: 1.0\nos: linux\n")
            .unwrap_err()
            .contains("0.0"));
        assert!(AppSpec::parse("version: 0.0\nos: windows\n").is_err());
        assert!(AppSpec::parse("version: 0.0\nos: linux\nhooks:\n  Deploy: []\n").is_err());
        let long = "version: 0.0\nos: linux\nhooks:\n  ValidateService:\n    - location: a\n      timeout: 3000\n    - location: b\n      timeout: 900\n";
        assert!(AppSpec::parse(long).unwrap_err().contains("3900"));
        let spec = AppSpec::parse(
            "version: 0.0\nos: linux\nhooks:\n  ApplicationStop:\n    - location: s\n",
        )
        .unwrap();
        assert_eq!(
            spec.scripts("ApplicationStop")[0].timeout(),
            Duration::from_secs(3600)
        );
        assert!(spec.scripts("ValidateService").is_empty());
    }
}
