//! `xtask bundle`: builds the static hook binaries and packs a CodeDeploy revision.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use portswap_testkit::agent::AppSpec;

use crate::checks::{self, Waits};
use portswap_testkit::elf::{self, Linking};

/// The hook executables, as named in the revision's `hooks/` directory.
pub const HOOKS: [&str; 4] = ["stop", "start", "health", "switch"];
/// The target triple `.cargo/config.toml` builds for.
pub const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.join("../..")
        .canonicalize()
        .unwrap_or_else(|_| here.join("../.."))
}

/// The cargo target directory: `$CARGO_TARGET_DIR` or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Runs `cargo build` for `packages` (`--release` when asked); returns the binaries' directory.
pub fn cargo_build(packages: &[&str], release: bool) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        .args(["build", "--bins"]);
    if release {
        command.arg("--release");
    }
    for package in packages {
        command.args(["-p", package]);
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build failed ({status})"));
    }
    Ok(target_dir()
        .join(TRIPLE)
        .join(if release { "release" } else { "debug" }))
}

/// Builds the four static release hook binaries; returns their directory.
pub fn build_release_hooks() -> Result<PathBuf, String> {
    cargo_build(
        &[
            "portswap-stop",
            "portswap-start",
            "portswap-health",
            "portswap-switch",
        ],
        true,
    )
}

/// What goes into a revision.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The appspec to ship (normally the repository's `appspec.yml`).
    pub appspec: PathBuf,
    /// The portswap.yml to ship as `hooks/portswap.yml`.
    pub config: PathBuf,
    /// Directory holding the `stop`, `start`, `health`, `switch` executables.
    pub binaries: PathBuf,
    /// Application files, placed where `app.artifacts` of the config looks for them.
    pub artifacts: Vec<PathBuf>,
}

/// Matches `name` against a file-name pattern with `*` and `?`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|skip| go(rest, &n[skip..])),
            Some(('?', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// Resolves `relative` against `base` lexically; `None` if it climbs out of the revision.
fn inside(base: &Path, relative: &Path) -> Option<PathBuf> {
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
        if !glob_match(file_pattern, name) {
            continue;
        }
        let dir = pattern_path.parent().unwrap_or(Path::new(""));
        return inside(Path::new("hooks"), dir).map(|d| d.join(name)).ok_or_else(|| {
            format!("app.artifacts pattern {pattern} points outside the revision: it cannot be bundled")
        });
    }
    Err(format!(
        "artifact {name} matches none of app.artifacts in portswap.yml ({})",
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
        if !names.iter().any(|n| glob_match(file_pattern, n)) {
            return Err(format!(
                "app.artifacts pattern {pattern} matches none of the artifacts given"
            ));
        }
    }
    Ok(())
}

/// The `app.artifacts` patterns of a portswap.yml.
pub fn artifact_patterns(config_text: &str) -> Result<Vec<String>, String> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(config_text).map_err(|e| format!("portswap.yml: {e}"))?;
    let list = doc.get("app").and_then(|a| a.get("artifacts"));
    match list {
        None | Some(serde_yaml::Value::Null) => Ok(Vec::new()),
        Some(serde_yaml::Value::Sequence(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| "portswap.yml: app.artifacts must be strings".to_string())
            })
            .collect(),
        Some(_) => Err("portswap.yml: app.artifacts must be a list".into()),
    }
}

fn copy_with_mode(from: &Path, to: &Path, mode: u32) -> Result<(), String> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    fs::copy(from, to).map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", to.display()))
}

/// Lays out a revision in the empty directory `dir` and checks it: static hooks, appspec
/// references, waits within timeouts. Every refusal is a one-line message.
pub fn assemble(inputs: &Inputs, dir: &Path) -> Result<(), String> {
    let appspec_text = fs::read_to_string(&inputs.appspec)
        .map_err(|e| format!("{}: {e}", inputs.appspec.display()))?;
    let spec = AppSpec::parse(&appspec_text)?;
    let config_text = fs::read_to_string(&inputs.config)
        .map_err(|e| format!("{}: {e}", inputs.config.display()))?;
    let waits = Waits::from_config(&config_text)?;
    checks::check_timeouts(&spec, &waits)?;

    copy_with_mode(&inputs.appspec, &dir.join("appspec.yml"), 0o644)?;
    copy_with_mode(&inputs.config, &dir.join("hooks/portswap.yml"), 0o644)?;
    for hook in HOOKS {
        let binary = inputs.binaries.join(hook);
        match elf::linking_of(&binary)? {
            Linking::Static => {}
            Linking::Dynamic(interp) => {
                return Err(format!(
                    "{} is not static (it needs {interp}); build with crt-static",
                    binary.display()
                ))
            }
        }
        copy_with_mode(&binary, &dir.join("hooks").join(hook), 0o755)?;
    }
    let patterns = artifact_patterns(&config_text)?;
    let mut names = Vec::new();
    for artifact in &inputs.artifacts {
        let name = artifact
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{}: no file name", artifact.display()))?;
        let meta =
            fs::metadata(artifact).map_err(|e| format!("artifact {}: {e}", artifact.display()))?;
        let destination = dir.join(artifact_destination(&patterns, name)?);
        copy_with_mode(artifact, &destination, meta.permissions().mode() & 0o777)?;
        names.push(name.to_string());
    }
    check_patterns_used(&patterns, &names)?;
    checks::check_references(&spec, dir)?;
    for hook in checks::unused_hooks(&spec) {
        eprintln!("xtask: warning: appspec.yml never runs hooks/{hook}");
    }
    Ok(())
}

/// Every file under `dir`, relative to it, sorted (directories before their contents).
fn entries(dir: &Path) -> io::Result<Vec<PathBuf>> {
    fn walk(root: &Path, at: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
        let mut children: Vec<_> = fs::read_dir(at)?.collect::<Result<_, _>>()?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let path = child.path();
            out.push(path.strip_prefix(root).expect("under root").to_path_buf());
            if child.file_type()?.is_dir() {
                walk(root, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// Packs `dir` as a gzipped tar with its Unix modes.
pub fn pack_tgz(dir: &Path, out: &Path) -> Result<(), String> {
    let fail = |e: io::Error| format!("{}: {e}", out.display());
    let gz = flate2::write::GzEncoder::new(
        File::create(out).map_err(fail)?,
        flate2::Compression::default(),
    );
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    for entry in entries(dir).map_err(fail)? {
        let path = dir.join(&entry);
        let meta = fs::symlink_metadata(&path).map_err(fail)?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
        header.set_mode(meta.permissions().mode() & 0o7777);
        if meta.is_dir() {
            tar.append_data(&mut header, &entry, io::empty())
                .map_err(fail)?;
        } else {
            tar.append_data(&mut header, &entry, File::open(&path).map_err(fail)?)
                .map_err(fail)?;
        }
    }
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .map_err(fail)?
        .flush()
        .map_err(fail)
}

/// Packs `dir` as a zip archive with its Unix modes.
pub fn pack_zip(dir: &Path, out: &Path) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", out.display());
    let mut zip = zip::ZipWriter::new(File::create(out).map_err(|e| fail(&e))?);
    for entry in entries(dir).map_err(|e| fail(&e))? {
        let path = dir.join(&entry);
        let meta = fs::metadata(&path).map_err(|e| fail(&e))?;
        let name = entry.to_str().ok_or_else(|| fail(&"non-UTF-8 file name"))?;
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(meta.permissions().mode() & 0o7777);
        if meta.is_dir() {
            zip.add_directory(format!("{name}/"), options)
                .map_err(|e| fail(&e))?;
        } else {
            zip.start_file(name, options).map_err(|e| fail(&e))?;
            io::copy(&mut File::open(&path).map_err(|e| fail(&e))?, &mut zip)
                .map_err(|e| fail(&e))?;
        }
    }
    zip.finish().map_err(|e| fail(&e))?;
    Ok(())
}

/// What `bundle` produced.
#[derive(Debug)]
pub struct Bundle {
    /// The unpacked revision.
    pub dir: PathBuf,
    /// `portswap-revision.zip`.
    pub zip: PathBuf,
    /// `portswap-revision.tgz`.
    pub tgz: PathBuf,
}

/// Assembles the revision into `out/revision/` (replacing it) and packs it beside.
pub fn bundle(inputs: &Inputs, out: &Path) -> Result<Bundle, String> {
    let bundle = Bundle {
        zip: out.join("portswap-revision.zip"),
        tgz: out.join("portswap-revision.tgz"),
        dir: out.join("revision"),
    };
    // Never leave an older pack behind that could be mistaken for this one.
    for old in [&bundle.zip, &bundle.tgz] {
        if old.exists() {
            fs::remove_file(old).map_err(|e| format!("{}: {e}", old.display()))?;
        }
    }
    let dir = &bundle.dir;
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if let Err(e) = assemble(inputs, dir) {
        let _ = fs::remove_dir_all(dir);
        return Err(e);
    }
    pack_zip(&bundle.dir, &bundle.zip)?;
    pack_tgz(&bundle.dir, &bundle.tgz)?;
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn globs() {
        assert!(glob_match("*.jar", "app-1.0.jar"));
        assert!(!glob_match("*.jar", "app.jar.bak"));
        assert!(glob_match("app-?.jar", "app-1.jar"));
        assert!(glob_match("fixture-app", "fixture-app"));
        assert!(!glob_match("a*b", "acd"));
    }

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
        let text = std::fs::read_to_string(workspace_root().join("hooks/portswap.yml")).unwrap();
        assert_eq!(artifact_patterns(&text).unwrap(), ["../*.jar"]);
    }

    #[test]
    fn the_repository_files_pass_the_checks() {
        let root = workspace_root();
        let spec =
            AppSpec::parse(&std::fs::read_to_string(root.join("appspec.yml")).unwrap()).unwrap();
        let waits =
            Waits::from_config(&std::fs::read_to_string(root.join("hooks/portswap.yml")).unwrap())
                .unwrap();
        checks::check_timeouts(&spec, &waits).unwrap();
        assert!(checks::unused_hooks(&spec).is_empty());
    }

    /// A fake binaries directory: a bare 64-bit ELF header without program headers (static)
    /// under the four hook names.
    fn fake_binaries(dir: &Path) {
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        for hook in HOOKS {
            std::fs::write(dir.join(hook), &elf).unwrap();
        }
    }

    fn inputs(tmp: &Path) -> Inputs {
        let binaries = tmp.join("bin");
        std::fs::create_dir_all(&binaries).unwrap();
        fake_binaries(&binaries);
        let jar = tmp.join("app-1.0.jar");
        std::fs::write(&jar, b"PK fake jar").unwrap();
        let root = workspace_root();
        Inputs {
            appspec: root.join("appspec.yml"),
            config: root.join("hooks/portswap.yml"),
            binaries,
            artifacts: vec![jar],
        }
    }

    #[test]
    fn bundles_keep_modes_in_both_archives() {
        let tmp = tempfile::tempdir().unwrap();
        let inputs = inputs(tmp.path());
        let out = tmp.path().join("out");
        let bundle = bundle(&inputs, &out).unwrap();
        for name in ["appspec.yml", "hooks/portswap.yml", "app-1.0.jar"] {
            assert!(bundle.dir.join(name).is_file(), "{name}");
        }
        let mut zip = zip::ZipArchive::new(File::open(&bundle.zip).unwrap()).unwrap();
        assert_eq!(
            zip.by_name("hooks/switch").unwrap().unix_mode().unwrap() & 0o777,
            0o755
        );
        assert_eq!(
            zip.by_name("appspec.yml").unwrap().unix_mode().unwrap() & 0o777,
            0o644
        );
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(
            File::open(&bundle.tgz).unwrap(),
        ));
        let mut modes = std::collections::BTreeMap::new();
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            modes.insert(path.clone(), entry.header().mode().unwrap());
            if path == "appspec.yml" {
                let mut text = String::new();
                entry.read_to_string(&mut text).unwrap();
                assert_eq!(
                    text,
                    std::fs::read_to_string(workspace_root().join("appspec.yml")).unwrap()
                );
            }
        }
        assert_eq!(modes["hooks/start"] & 0o777, 0o755);
        assert_eq!(modes["app-1.0.jar"] & 0o777, 0o644);
        assert!(modes.contains_key("hooks"));
    }

    #[test]
    fn refuses_dynamic_binaries_missing_files_and_long_waits() {
        let tmp = tempfile::tempdir().unwrap();
        let mut base = inputs(tmp.path());
        let fresh = |name: &str| {
            let dir = tmp.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            dir
        };

        // A dynamically linked hook.
        if let Ok(Linking::Dynamic(_)) = elf::linking_of(Path::new("/bin/sh")) {
            std::fs::copy("/bin/sh", base.binaries.join("health")).unwrap();
            let err = assemble(&base, &fresh("a")).unwrap_err();
            assert!(err.contains("/health is not static"), "{err}");
            fake_binaries(&base.binaries);
        }

        // appspec naming a script that is not there.
        let appspec = tmp.path().join("appspec.yml");
        let text = std::fs::read_to_string(&base.appspec)
            .unwrap()
            .replace("hooks/switch", "hooks/swap");
        std::fs::write(&appspec, text).unwrap();
        let mut broken = base.clone();
        broken.appspec = appspec;
        let err = assemble(&broken, &fresh("b")).unwrap_err();
        assert_eq!(
            err,
            "appspec.yml: ValidateService runs hooks/swap, which is not in the revision"
        );

        // A health wait longer than the hook's timeout.
        let config = tmp.path().join("portswap.yml");
        let text = std::fs::read_to_string(&base.config)
            .unwrap()
            .replace("timeout: 90s", "timeout: 150s");
        std::fs::write(&config, text).unwrap();
        base.config = config;
        let err = assemble(&base, &fresh("c")).unwrap_err();
        assert!(
            err.starts_with("hooks/health in ValidateService may wait 180s"),
            "{err}"
        );
    }
}
