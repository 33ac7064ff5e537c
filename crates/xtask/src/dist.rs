//! `xtask dist`: the release tarball, `portswap-<version>-x86_64-linux.tar.gz`, with the four
//! static hooks and `portswap-bundle` under `bin/`, the examples, the README, LICENSE and
//! `docs/`, every entry stamped with the commit's time, and a `SHA256SUMS` beside it (the
//! format `sha256sum -c` reads).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use portswap::cli::VERSION;
use portswap_bundle::elf::{self, Linking};
use sha2::{Digest, Sha256};

use crate::build;

/// The executables of the release, as named under `bin/`, with their cargo packages.
pub const BINARIES: [(&str, &str); 5] = [
    ("stop", "portswap-stop"),
    ("start", "portswap-start"),
    ("health", "portswap-health"),
    ("switch", "portswap-switch"),
    ("portswap-bundle", "portswap-bundle"),
];

/// The top directory inside the tarball, and the tarball's name without `.tar.gz`.
pub fn release_name() -> String {
    format!("portswap-{VERSION}-x86_64-linux")
}

/// What `dist` produced.
#[derive(Debug)]
pub struct Dist {
    /// The tarball.
    pub tarball: PathBuf,
    /// `SHA256SUMS` beside it.
    pub sums: PathBuf,
}

/// Builds the release binaries and packs the release into `out`.
pub fn run(out: &Path) -> Result<Dist, String> {
    let packages: Vec<&str> = BINARIES.iter().map(|(_, p)| *p).collect();
    let bin = build::cargo_build(&packages, true)?;
    let name = release_name();
    let stage = out.join("stage");
    remove(&stage)?;
    let top = stage.join(&name);
    for (binary, _) in BINARIES {
        let built = bin.join(binary);
        check_binary(&built, binary)?;
        copy(&built, &top.join("bin").join(binary), 0o755)?;
    }
    let root = build::workspace_root();
    copy(&root.join("README.md"), &top.join("README.md"), 0o644)?;
    copy(&root.join("LICENSE"), &top.join("LICENSE"), 0o644)?;
    copy_markdown(&root.join("docs"), &top.join("docs"))?;
    copy_tree(&root.join("examples"), &top.join("examples"))?;

    let tarball = out.join(format!("{name}.tar.gz"));
    portswap_bundle::pack::tgz_at(&stage, &tarball, Some(source_time(&root)?))
        .map_err(|e| e.to_string())?;
    remove(&stage)?;
    let bytes = fs::read(&tarball).map_err(|e| format!("{}: {e}", tarball.display()))?;
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let sums = out.join("SHA256SUMS");
    fs::write(&sums, format!("{digest}  {name}.tar.gz\n"))
        .map_err(|e| format!("{}: {e}", sums.display()))?;
    Ok(Dist { tarball, sums })
}

/// The time stamp of every file in the tarball: `SOURCE_DATE_EPOCH` when set (reproducible
/// builds), else the time of the commit checked out.
pub fn source_time(root: &Path) -> Result<u64, String> {
    if let Ok(value) = std::env::var("SOURCE_DATE_EPOCH") {
        return value
            .trim()
            .parse()
            .map_err(|_| format!("SOURCE_DATE_EPOCH={value:?} is not a number of seconds"));
    }
    let output = Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(root)
        .output()
        .map_err(|e| format!("git log (for the tarball's time stamps): {e}"))?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| {
            format!(
                "no commit time from git log in {} (set SOURCE_DATE_EPOCH): {}",
                root.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            )
        })
}

/// A release binary must be static and say this version.
fn check_binary(path: &Path, name: &str) -> Result<(), String> {
    if let Linking::Dynamic(interp) = elf::linking_of(path)? {
        return Err(format!("{} is not static (needs {interp})", path.display()));
    }
    let output = Command::new(path)
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let said = String::from_utf8_lossy(&output.stdout);
    let want = format!("{name} {VERSION} (portswap)");
    if !output.status.success() || said.trim() != want {
        return Err(format!(
            "{} --version said {:?}, expected {want:?}",
            path.display(),
            said.trim()
        ));
    }
    Ok(())
}

fn remove(dir: &Path) -> Result<(), String> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("{}: {e}", dir.display()))
        }
        _ => Ok(()),
    }
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("copy {} to {}: {e}", from.display(), to.display());
    fs::create_dir_all(to.parent().expect("a file in a directory")).map_err(fail)?;
    fs::copy(from, to).map_err(fail)?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(fail)
}

/// Copies the files under `from` to `to`, readable by all.
/// The `.md` files of a directory (not its subdirectories): the documentation README links to.
fn copy_markdown(from: &Path, to: &Path) -> Result<(), String> {
    let entries = fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("{}: {e}", from.display()))?
            .path();
        if path.is_file() && path.extension().is_some_and(|e| e == "md") {
            copy(&path, &to.join(path.file_name().unwrap()), 0o644)?;
        }
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let entries = fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", from.display()))?;
        let path = entry.path();
        if path.is_dir() {
            copy_tree(&path, &to.join(entry.file_name()))?;
        } else {
            copy(&path, &to.join(entry.file_name()), 0o644)?;
        }
    }
    Ok(())
}
