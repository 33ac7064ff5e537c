//! Building the workspace from xtask: where it is, where cargo puts the binaries.

use std::path::{Path, PathBuf};
use std::process::Command;

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
