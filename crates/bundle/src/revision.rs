//! Lays out a revision directory: `appspec.yml`, `hooks/{stop,start,health,switch}` (mode
//! 0755), `hooks/portswap.yml`, and the artifacts where `app.artifacts` (relative to
//! `hooks/`) finds them; then checks it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use portswap::budget::HOOKS;
use portswap::config::Config;
use portswap::release;
use portswap::Error as PortswapError;

use crate::error::{Error, Result};
use portswap_appspec::AppSpec;

use crate::checks;
use crate::elf::{self, Linking};

/// What goes into a revision.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The appspec to ship as `appspec.yml`.
    pub appspec: PathBuf,
    /// The portswap.yml to ship as `hooks/portswap.yml`.
    pub config: PathBuf,
    /// Directory holding the `stop`, `start`, `health`, `switch` executables.
    pub hooks: PathBuf,
    /// Application files, placed where `app.artifacts` of the config looks for them.
    pub artifacts: Vec<PathBuf>,
}

/// Resolves `relative` against `base` lexically; `None` if it climbs out of the revision.
pub(crate) fn inside(base: &Path, relative: &Path) -> Option<PathBuf> {
    let mut parts: Vec<std::ffi::OsString> = base
        .components()
        .map(|c| c.as_os_str().to_owned())
        .collect();
    for component in relative.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Normal(part) => parts.push(part.to_owned()),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

/// The path inside the revision (relative to its root) where the artifact named `name` must
/// go for `app.artifacts` (relative to `hooks/`) to find it.
pub fn artifact_destination(patterns: &[String], name: &str) -> Result<PathBuf, String> {
    for pattern in patterns {
        let pattern_path = Path::new(pattern);
        let Some(file_pattern) = pattern_path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        if !release::matches(file_pattern, name) {
            continue;
        }
        let dir = pattern_path.parent().unwrap_or(Path::new(""));
        return inside(Path::new("hooks"), dir).map(|d| d.join(name)).ok_or_else(|| {
            format!("app.artifacts pattern {pattern} points outside the revision: it cannot be bundled")
        });
    }
    Err(format!(
        "artifact {name} matches none of app.artifacts ({})",
        patterns.join(", ")
    ))
}

/// Every relative `app.artifacts` pattern must match a bundled artifact, or `start` would
/// find nothing to stage (absolute patterns name files already on the host).
pub fn check_patterns_used(patterns: &[String], names: &[String]) -> Result<(), String> {
    for pattern in patterns.iter().filter(|p| !p.starts_with('/')) {
        let file_pattern = Path::new(pattern)
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or("");
        if !names.iter().any(|n| release::matches(file_pattern, n)) {
            return Err(format!(
                "app.artifacts pattern {pattern} matches none of the artifacts given"
            ));
        }
    }
    Ok(())
}

/// The `app.artifacts` patterns of a portswap.yml as written (relative to its directory).
pub fn artifact_patterns(config_text: &str) -> Result<Vec<String>, String> {
    let doc: serde_yaml::Value = serde_yaml::from_str(config_text).map_err(|e| e.to_string())?;
    match doc.get("app").and_then(|a| a.get("artifacts")) {
        None | Some(serde_yaml::Value::Null) => Ok(Vec::new()),
        Some(serde_yaml::Value::Sequence(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| "app.artifacts must be strings".to_string())
            })
            .collect(),
        Some(_) => Err("app.artifacts must be a list".into()),
    }
}

fn copy_with_mode(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).map_err(|e| PortswapError::io("create", dir, e))?;
    }
    fs::copy(from, to)
        .map_err(|e| PortswapError::io(&format!("copy {} to", from.display()), to, e))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .map_err(|e| PortswapError::io("chmod", to, e))?;
    Ok(())
}

/// Reads a text input the user named; a missing or unreadable file is bad input (exit 2).
fn read_input(path: &Path, what: &str) -> Result<String> {
    fs::read_to_string(path)
        .map_err(|e| Error::input(path, format_args!("cannot read the {what}: {e}")))
}

/// The static hook binary `hook` of `dir`, or why it cannot go into a revision.
fn static_hook(dir: &Path, hook: &str) -> Result<PathBuf> {
    let binary = dir.join(hook);
    if !binary.is_file() {
        return Err(Error::input(
            dir,
            format_args!(
                "no hook binary {hook} here; pass --hooks DIR with the release's bin/ directory"
            ),
        ));
    }
    match elf::linking_of(&binary).map_err(|e| Error::Invalid { problem: e })? {
        Linking::Static => Ok(binary),
        Linking::Dynamic(interp) => Err(Error::Invalid {
            problem: format!(
                "{} is not static (it needs {interp}); use the release binaries (built with \
                 crt-static)",
                binary.display()
            ),
        }),
    }
}

/// Lays out a revision in the empty directory `dir` and checks it: valid appspec and
/// portswap.yml (read with portswap's own loader, errors naming the files as given), waits
/// within timeouts, static hooks, artifacts where the config finds them, appspec references.
pub fn assemble(inputs: &Inputs, dir: &Path) -> Result<()> {
    let spec = AppSpec::read(&inputs.appspec).map_err(|e| Error::Invalid { problem: e })?;
    let config_text = read_input(&inputs.config, "configuration")?;
    let config = Config::parse(&config_text, &inputs.config)?;
    checks::check_timeouts(&spec, &config, &inputs.appspec)?;
    let in_config = |e: String| Error::input(&inputs.config, e);
    let patterns = artifact_patterns(&config_text).map_err(in_config)?;

    copy_with_mode(&inputs.appspec, &dir.join("appspec.yml"), 0o644)?;
    copy_with_mode(&inputs.config, &dir.join("hooks/portswap.yml"), 0o644)?;
    for hook in HOOKS {
        let binary = static_hook(&inputs.hooks, hook)?;
        copy_with_mode(&binary, &dir.join("hooks").join(hook), 0o755)?;
    }
    let mut names = Vec::new();
    let mut placed: Vec<(PathBuf, &Path)> = Vec::new();
    for artifact in &inputs.artifacts {
        let name = artifact
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::Usage {
                problem: format!("{}: no file name", artifact.display()),
            })?;
        let meta = fs::metadata(artifact).map_err(|e| Error::Invalid {
            problem: format!("artifact {}: {e}", artifact.display()),
        })?;
        let relative = artifact_destination(&patterns, name).map_err(in_config)?;
        refuse_collision(&relative, artifact, &placed)?;
        copy_with_mode(
            artifact,
            &dir.join(&relative),
            meta.permissions().mode() & 0o777,
        )?;
        placed.push((relative, artifact));
        names.push(name.to_string());
    }
    check_patterns_used(&patterns, &names).map_err(in_config)?;
    warn_several_matches(&patterns, &names, &inputs.config);
    checks::check_references(&spec, dir, &inputs.appspec)?;
    for hook in checks::unused_hooks(&spec) {
        log::warn!("{} never runs hooks/{hook}", inputs.appspec.display());
    }
    log::info!("{}", unchecked(&config));
    Ok(())
}

/// The files of the revision portswap itself ships: no artifact may replace them (the
/// hooks and the configuration were checked before they would be overwritten).
fn reserved() -> Vec<PathBuf> {
    let mut paths = vec![
        PathBuf::from("appspec.yml"),
        PathBuf::from("hooks/portswap.yml"),
    ];
    paths.extend(HOOKS.iter().map(|h| Path::new("hooks").join(h)));
    paths
}

/// Refuses an artifact that would replace one of portswap's files or an artifact placed
/// before it (two artifacts with one file name become one file).
fn refuse_collision(relative: &Path, artifact: &Path, placed: &[(PathBuf, &Path)]) -> Result<()> {
    if reserved().iter().any(|r| r == relative) {
        return Err(Error::input(
            artifact,
            format_args!(
                "would replace {} of the revision (portswap's own file): rename the artifact or \
                 narrow app.artifacts",
                relative.display()
            ),
        ));
    }
    if let Some((_, first)) = placed.iter().find(|(p, _)| p == relative) {
        return Err(Error::input(
            artifact,
            format_args!(
                "has the file name of {}: both would be {} in the revision; pass one of them",
                first.display(),
                relative.display()
            ),
        ));
    }
    Ok(())
}

/// Warns about a pattern that matches several artifacts: `{artifact}` is the newest match of
/// the first pattern, which may be the wrong one (Gradle's `-plain.jar` beside the boot jar).
fn warn_several_matches(patterns: &[String], names: &[String], config: &Path) {
    for pattern in patterns {
        let file_pattern = Path::new(pattern)
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or("");
        let matched: Vec<&str> = names
            .iter()
            .filter(|n| release::matches(file_pattern, n))
            .map(String::as_str)
            .collect();
        if matched.len() < 2 {
            continue;
        }
        let plain = if matched.iter().any(|n| n.ends_with("-plain.jar")) {
            " (a -plain.jar is Gradle's jar without dependencies, not the app)"
        } else {
            ""
        };
        log::warn!(
            "{}: app.artifacts pattern {pattern} matches {} artifacts ({}){plain}; {{artifact}} \
             is the newest match of the first pattern: pass only the one the app runs",
            config.display(),
            matched.len(),
            matched.join(", ")
        );
    }
}

/// What only the instance can tell, in one line: the bundle checks the files, not the host.
fn unchecked(config: &Config) -> String {
    let user = config
        .app
        .user
        .as_deref()
        .map(|u| format!("that app.user `{u}` exists, "))
        .unwrap_or_default();
    let program = config.app.command.first().map(String::as_str).unwrap_or("");
    format!(
        "not checked here (only the instance can tell): {user}that `{program}` (app.command) runs \
         there, that nginx includes {} and writes its pid to {}",
        config.nginx.include.display(),
        config.nginx.pid_file.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_go_where_the_config_looks() {
        let patterns = vec!["../*.jar".to_string(), "lib/*.so".to_string()];
        assert_eq!(
            artifact_destination(&patterns, "app.jar").unwrap(),
            PathBuf::from("app.jar")
        );
        assert_eq!(
            artifact_destination(&patterns, "x.so").unwrap(),
            PathBuf::from("hooks/lib/x.so")
        );
        assert!(artifact_destination(&patterns, "notes.txt")
            .unwrap_err()
            .contains("matches none"));
        let names = vec!["app.jar".to_string()];
        let err = check_patterns_used(&patterns, &names).unwrap_err();
        assert!(err.contains("lib/*.so matches none"), "{err}");
        assert!(check_patterns_used(&["/opt/*.jar".to_string()], &[]).is_ok());
        let outside = vec!["../../*.jar".to_string()];
        assert!(artifact_destination(&outside, "a.jar")
            .unwrap_err()
            .contains("outside the revision"));
        assert_eq!(
            artifact_patterns("app: { artifacts: [\"../*.jar\"], command: [x] }").unwrap(),
            ["../*.jar"]
        );
    }
}
