//! Release directories: each deployment's artifacts copied where the next Install cannot
//! overwrite them under a running app.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result, SupervisorError};
use crate::fsio;

/// A staged release.
#[derive(Debug, Clone)]
pub struct Release {
    /// Its directory.
    pub dir: PathBuf,
    /// The staged files, newest source first (`{artifact}` is the first).
    pub artifacts: Vec<PathBuf>,
}

/// Matches a file name against a pattern with `*` and `?`.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The regular files a pattern names, newest first.
pub fn expand(pattern: &Path) -> Result<Vec<PathBuf>> {
    let name = pattern
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return Ok(if pattern.is_file() {
            vec![pattern.to_path_buf()]
        } else {
            Vec::new()
        });
    }
    let dir = pattern.parent().unwrap_or(Path::new("/"));
    let entries = fs::read_dir(dir).map_err(|e| Error::io("cannot list", dir, e))?;
    let files = entries.flatten().map(|e| e.path()).filter(|p| p.is_file());
    Ok(newest_first(files.filter(|p| {
        matches(&name, &p.file_name().unwrap_or_default().to_string_lossy())
    })))
}

/// Sorts paths by modification time, newest first.
fn newest_first(paths: impl Iterator<Item = PathBuf>) -> Vec<PathBuf> {
    let mut dated: Vec<(SystemTime, PathBuf)> = paths
        .map(|p| {
            (
                fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .unwrap_or(UNIX_EPOCH),
                p,
            )
        })
        .collect();
    dated.sort_by(|a, b| b.cmp(a));
    dated.into_iter().map(|(_, p)| p).collect()
}

/// A directory-name-safe form of a deployment id.
fn safe_name(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Prefix of a release being copied: renamed to its real name only once complete.
const STAGING: &str = ".staging-";

/// Copies the artifacts into a fresh `<releases>/<deployment>-<port>` directory: into a
/// temporary `.staging-...` name first, renamed once every file is complete, removed on any
/// failure (a stopping signal included: see [`crate::signals::pending`]). Staging dirs left by
/// a run killed outright are removed first (the caller holds the state lock).
pub fn stage(
    releases: &Path,
    deployment_id: &str,
    port: u16,
    patterns: &[PathBuf],
) -> Result<Release> {
    let name = format!("{}-{port}", safe_name(deployment_id));
    let dir = releases.join(&name);
    fsio::ensure_dir(releases, 0o755)?;
    if let Ok(entries) = fs::read_dir(releases) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(STAGING) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    if fs::symlink_metadata(&dir).is_ok() {
        fs::remove_dir_all(&dir).map_err(|e| Error::io("cannot clear old release", &dir, e))?;
    }
    let temp = releases.join(format!("{STAGING}{name}"));
    fsio::ensure_dir(&temp, 0o755)?;
    let staged = copy_artifacts(&temp, patterns).and_then(|copied| {
        fs::rename(&temp, &dir).map_err(|e| Error::io("cannot rename into place", &dir, e))?;
        Ok(copied)
    });
    match staged {
        Ok(copied) => Ok(Release {
            artifacts: copied
                .iter()
                .map(|c| dir.join(c.file_name().unwrap_or_default()))
                .collect(),
            dir,
        }),
        Err(e) => {
            let _ = fs::remove_dir_all(&temp);
            Err(e)
        }
    }
}

/// Copies `source` to the new file `target` in 1 MiB steps, giving up when a stopping signal
/// is pending.
fn copy_file(source: &Path, target: &Path) -> Result<()> {
    use std::io::{Read, Write};
    let mut from =
        fs::File::open(source).map_err(|e| Error::io("cannot copy artifact", source, e))?;
    let mut to = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)
        .map_err(|e| Error::io("cannot copy artifact to", target, e))?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        if crate::signals::pending().is_some() {
            return Err(SupervisorError::StageInterrupted {
                source_path: source.to_path_buf(),
            }
            .into());
        }
        let n = from
            .read(&mut buffer)
            .map_err(|e| Error::io("cannot copy artifact", source, e))?;
        if n == 0 {
            break;
        }
        to.write_all(&buffer[..n])
            .map_err(|e| Error::io("cannot copy artifact to", target, e))?;
    }
    Ok(())
}

fn copy_artifacts(dir: &Path, patterns: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut artifacts = Vec::new();
    for (i, pattern) in patterns.iter().enumerate() {
        let sources = expand(pattern)?;
        if sources.is_empty() {
            return Err(SupervisorError::NoArtifact {
                index: i,
                pattern: pattern.to_path_buf(),
            }
            .into());
        }
        for source in sources {
            let target = dir.join(source.file_name().unwrap_or_default());
            copy_file(&source, &target)?;
            // Readable by `app.user` whatever the revision's modes (an agent with umask 0027
            // unpacks it 0640, root's): 0644, or 0755 for an executable.
            let executable = fs::metadata(&source).is_ok_and(|m| m.mode() & 0o111 != 0);
            let mode = if executable { 0o755 } else { 0o644 };
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                .map_err(|e| Error::io("cannot chmod artifact", &target, e))?;
            artifacts.push(target);
        }
    }
    Ok(artifacts)
}

/// The release directories (under `releases`) that a running process uses: its working
/// directory, its executable or an open file lies inside. Read from /proc for every process
/// this user can see, whichever slot (or none) it belongs to.
pub fn used_by_processes(releases: &Path) -> Vec<PathBuf> {
    let releases = fs::canonicalize(releases).unwrap_or_else(|_| releases.to_path_buf());
    let mut used = Vec::new();
    let mut note = |path: PathBuf| {
        if let Ok(rest) = path.strip_prefix(&releases) {
            if let Some(first) = rest.components().next() {
                let dir = releases.join(first);
                if !used.contains(&dir) {
                    used.push(dir);
                }
            }
        }
    };
    for pid in crate::procfs::all_pids() {
        for path in [crate::procfs::cwd(pid), crate::procfs::exe(pid)]
            .into_iter()
            .flatten()
        {
            note(path);
        }
        if let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                if let Ok(target) = fs::read_link(fd.path()) {
                    note(target);
                }
            }
        }
    }
    used
}

/// Removes the oldest release directories beyond `keep`, never one listed in `in_use`.
pub fn prune(releases: &Path, keep: usize, in_use: &[PathBuf]) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(releases) else {
        return Vec::new();
    };
    let dirs = newest_first(
        entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .filter(|p| p.is_dir()),
    );
    let mut removed = Vec::new();
    for dir in dirs.into_iter().skip(keep) {
        let real = fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
        if in_use.contains(&dir) || in_use.contains(&real) {
            continue;
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => removed.push(dir),
            Err(e) => log::warn!("cannot prune {}: {e}", dir.display()),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("*.jar", "app-1.0.jar"));
        assert!(matches("app-?.jar", "app-2.jar"));
        assert!(!matches("*.jar", "app.jar.bak"));
        assert!(matches("*", ""));
        assert!(!matches("a*b", "ac"));
    }

    #[test]
    fn stages_and_prunes_but_keeps_in_use() {
        let root = std::env::temp_dir().join(format!("portswap-release-{}", std::process::id()));
        let src = root.join("src");
        fsio::ensure_dir(&src, 0o755).unwrap();
        fs::write(src.join("app.jar"), "v1").unwrap();
        let releases = root.join("releases");
        let missing = stage(&releases, "d-0", 1, &[src.join("*.war")]);
        assert!(matches!(
            missing,
            Err(Error::Supervisor(SupervisorError::NoArtifact { .. }))
        ));
        assert!(
            !releases.join("d-0-1").exists(),
            "a failed stage leaves no directory"
        );
        let mut dirs = Vec::new();
        for i in 0..4 {
            let r = stage(&releases, &format!("d-{i}"), 8081, &[src.join("*.jar")]).unwrap();
            assert_eq!(fs::read_to_string(&r.artifacts[0]).unwrap(), "v1");
            let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i);
            fs::File::open(&r.dir).unwrap().set_modified(t).unwrap();
            dirs.push(r.dir);
        }
        let removed = prune(&releases, 2, &[dirs[0].clone()]);
        assert_eq!(removed, vec![dirs[1].clone()]);
        assert!(dirs[0].exists() && dirs[2].exists() && dirs[3].exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
