//! Locating (and building) the workspace's executables: `stop`, `start`, `health`, `switch`
//! and `fixture-app`.
//!
//! Tests run from `target/<triple>/<profile>/deps/`, benches from `target/<triple>/<profile>/`;
//! the executables live in `target/<triple>/<profile>/`. Integration tests of one package do
//! not get the binaries of other packages built, so [`ensure_built`] runs `cargo build` once
//! per process.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root, fixed at compile time.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// The directory holding the built executables: the directory of the running executable,
/// or its parent when that directory is named `deps`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("testkit: cannot find the current executable");
    let dir = exe
        .parent()
        .expect("testkit: the current executable has no directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Builds every binary of the workspace once per process (`$CARGO build --bins --workspace`
/// in the workspace root, with the profile, target triple and target directory of the
/// running executable), so that a plain `cargo test` finds them. Panics with cargo's output
/// when the build fails.
///
/// Set `PORTSWAP_TESTKIT_NO_BUILD=1` to skip the build (binaries built beforehand).
pub fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        if std::env::var_os("PORTSWAP_TESTKIT_NO_BUILD").is_some_and(|v| v != "0") {
            return;
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let args = build_args(&bin_dir());
        let out = Command::new(&cargo)
            .args(&args)
            .current_dir(workspace_root())
            .output()
            .unwrap_or_else(|e| panic!("testkit: cannot run {cargo:?}: {e}"));
        if !out.status.success() {
            panic!(
                "testkit: `{} {}` failed ({}):\n{}",
                cargo.to_string_lossy(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

/// Builds test executables of the workspace (`$CARGO test --no-run` with `selection`, e.g.
/// `["-p", "portswap-tests", "--test", "nftables"]`, in the profile and target of the running
/// executable) and returns their paths, in cargo's order. Panics with cargo's output when the
/// build fails.
pub fn test_executables(selection: &[&str]) -> Vec<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut args = build_args(&bin_dir());
    args.splice(
        0..3,
        [
            "test".into(),
            "--no-run".into(),
            "--message-format=json".into(),
        ],
    );
    args.extend(selection.iter().map(|s| s.to_string()));
    let out = Command::new(&cargo)
        .args(&args)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("testkit: cannot run {cargo:?}: {e}"));
    assert!(
        out.status.success(),
        "testkit: cargo {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let value: serde_yaml::Value = serde_yaml::from_str(line).ok()?;
            let test = value["profile"]["test"].as_bool() == Some(true);
            value["executable"]
                .as_str()
                .filter(|_| test)
                .map(PathBuf::from)
        })
        .collect()
}

/// The `cargo` arguments that rebuild the binaries into `profile_dir`
/// (`<target-dir>[/<triple>]/<profile>`).
fn build_args(profile_dir: &Path) -> Vec<String> {
    build_args_for(profile_dir, env!("PORTSWAP_TESTKIT_TARGET"))
}

/// [`build_args`] for a crate compiled for `triple`. The layout is read from the path
/// alone, not from cargo's `CACHEDIR.TAG`: cargo writes that only into a target directory it
/// creates, and `.ci/run` creates `target/` first (`npm install --prefix target/ci-tools`).
/// Guessing wrong builds a second tree the tests never look into.
fn build_args_for(profile_dir: &Path, triple: &str) -> Vec<String> {
    let mut args = vec!["build".to_string(), "--bins".into(), "--workspace".into()];
    let profile = profile_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match profile.as_str() {
        "debug" => {}
        // `cargo bench` builds with the `bench` profile, which writes into `release`.
        "release" => args.push("--release".into()),
        other => args.extend(["--profile".into(), other.to_string()]),
    }
    let Some(parent) = profile_dir.parent() else {
        return args;
    };
    // `<target-dir>/<triple>/<profile>` when a target is named, else `<target-dir>/<profile>`.
    let target_dir = if parent.file_name().is_some_and(|n| n == triple) {
        args.extend(["--target".into(), triple.to_string()]);
        parent.parent()
    } else {
        Some(parent)
    };
    if let Some(dir) = target_dir {
        args.extend(["--target-dir".into(), dir.to_string_lossy().into_owned()]);
    }
    args
}

/// The path of the workspace executable `name` (e.g. `"switch"`, `"fixture-app"`), after
/// [`ensure_built`]. Panics if it does not exist.
pub fn bin(name: &str) -> PathBuf {
    ensure_built();
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "testkit: executable {} not found (was it built?)",
        path.display()
    );
    path
}

/// Copies the executable `from` to `to` (mode kept) for a test to run it there. The copy is
/// made by a `cp` child, never through a descriptor of this process: a file this (threaded)
/// test process holds open for writing is inherited by every child another test thread forks
/// meanwhile, and exec of the copy then fails with "Text file busy".
pub fn copy_executable(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("--")
        .arg(from)
        .arg(to)
        .status()
        .unwrap_or_else(|e| panic!("cp {}: {e}", from.display()));
    assert!(
        status.success(),
        "cp {} {} failed",
        from.display(),
        to.display()
    );
}

/// Runs a copy of `binary` with `args` in an empty directory and an empty environment: as
/// root inside a chroot there (no libc, no dynamic loader, no /proc: only a static
/// executable runs), otherwise with that directory as its working directory. Returns the
/// output and whether it ran in the chroot.
pub fn run_alone(binary: &Path, args: &[&str]) -> (Output, bool) {
    let name = binary.file_name().expect("an executable file");
    let jail = tempfile::tempdir().expect("temp dir");
    copy_executable(binary, &jail.path().join(name));
    let chroot = nix::unistd::geteuid().is_root();
    let mut command = if chroot {
        let root = jail.path().to_path_buf();
        let mut command = Command::new(Path::new("/").join(name));
        // SAFETY: chroot and chdir are async-signal-safe system calls.
        unsafe {
            command.pre_exec(move || {
                nix::unistd::chroot(&root)?;
                nix::unistd::chdir("/")?;
                Ok(())
            });
        }
        command
    } else {
        let mut command = Command::new(jail.path().join(name));
        command.current_dir(jail.path());
        command
    };
    let output = command
        .args(args)
        .env_clear()
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", binary.display()));
    (output, chroot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_args_follow_the_layout() {
        // No CACHEDIR.TAG, as in a target directory cargo did not create (.ci/run's).
        let target = Path::new("/somewhere/target");
        let triple = "x86_64-unknown-linux-gnu";
        let args = build_args_for(&target.join("x86_64-unknown-linux-gnu/release"), triple);
        let t = target.to_string_lossy().into_owned();
        assert_eq!(
            args,
            [
                "build",
                "--bins",
                "--workspace",
                "--release",
                "--target",
                "x86_64-unknown-linux-gnu",
                "--target-dir",
                &t
            ]
        );
        let args = build_args_for(&target.join("debug"), triple);
        assert_eq!(args, ["build", "--bins", "--workspace", "--target-dir", &t]);
    }
}
