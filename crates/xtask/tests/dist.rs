//! `cargo run -p xtask -- dist` on this checkout: the release tarball and its checksum, and
//! binaries in it that are static, small, say the version and run from an empty directory;
//! the bundle in it finds the hooks beside itself and packs the Spring Boot example.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use portswap_bundle::elf::{linking_of, Linking};
use portswap_testkit::bins;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const HOOKS: [&str; 4] = ["stop", "start", "health", "switch"];
/// Hook binaries must stay under 2.5 MB (decimal) each (2 MB until ureq came back for the
/// health probe, issue 15).
const MAX_HOOK_BYTES: u64 = 2_500_000;

fn run(command: &mut Command) -> std::process::Output {
    let out = command.output().expect("run");
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn dist_builds_a_release_whose_binaries_run_alone() {
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    run(Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["dist", "--out"])
        .arg(out.path()));
    eprintln!("xtask dist took {:.1}s", started.elapsed().as_secs_f64());

    // The tarball and a SHA256SUMS that `sha256sum --check` accepts.
    let name = format!("portswap-{VERSION}-x86_64-linux");
    let tarball = out.path().join(format!("{name}.tar.gz"));
    let sums = fs::read_to_string(out.path().join("SHA256SUMS")).unwrap();
    let (digest, file) = sums.trim_end().split_once("  ").expect("sha256sum format");
    assert_eq!(file, format!("{name}.tar.gz"));
    assert_eq!(digest.len(), 64, "{sums}");
    run(Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(out.path()));
    eprintln!("tarball: {} bytes", fs::metadata(&tarball).unwrap().len());

    // Unpacked with the system's tar, as an adopter does.
    let unpacked = out.path().join("unpacked");
    fs::create_dir(&unpacked).unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&unpacked));
    let top = unpacked.join(&name);
    for file in [
        "README.md",
        "LICENSE",
        "docs/configuration.md",
        "examples/spring-boot/appspec.yml",
        "examples/spring-boot/portswap.yml",
        "examples/github-actions/deploy.yml",
    ] {
        assert!(top.join(file).is_file(), "{file} is not in the release");
    }

    // Every entry carries the commit's time (issue 17 item 9: they were all 2006).
    let commit = xtask_source_time();
    let listing = run(Command::new("tar")
        .args(["--list", "--verbose", "--full-time", "--utc", "-zf"])
        .arg(&tarball));
    let listing = String::from_utf8_lossy(&listing.stdout);
    let stamp = time_of(commit);
    assert!(listing.lines().count() > 10, "{listing}");
    for line in listing.lines() {
        assert!(line.contains(&stamp), "not stamped {stamp}: {line}");
    }

    // Each binary: static, executable, the version, runs alone in an empty directory.
    for binary in HOOKS.iter().copied().chain(["portswap-bundle"]) {
        let path = top.join("bin").join(binary);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755, "{binary}");
        assert_eq!(linking_of(&path), Ok(Linking::Static), "{binary}");
        if HOOKS.contains(&binary) {
            assert!(
                meta.len() < MAX_HOOK_BYTES,
                "{binary}: {} bytes",
                meta.len()
            );
        }
        eprintln!("{binary}: {} bytes", meta.len());
        let (output, chroot) = bins::run_alone(&path, &["--version"]);
        assert!(output.status.success(), "{binary} --version: {output:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            format!("{binary} {VERSION} (portswap)"),
            "{binary} (in a chroot: {chroot})"
        );
    }

    // The bundle takes the hooks from beside itself and packs the example as it is.
    let jar = out.path().join("portswap-example-0.0.1-SNAPSHOT.jar");
    fs::write(&jar, b"PK stand-in").unwrap();
    let example = top.join("examples/spring-boot");
    let revision = out.path().join("revision");
    let packed = run(Command::new(top.join("bin/portswap-bundle"))
        .arg("--appspec")
        .arg(example.join("appspec.yml"))
        .arg("--out")
        .arg(&revision)
        .arg(&jar)
        .current_dir("/"));
    let verdict = String::from_utf8_lossy(&packed.stderr);
    assert!(
        verdict
            .trim_end()
            .lines()
            .last()
            .unwrap_or("")
            .starts_with("portswap bundle: OK: packed"),
        "{verdict}"
    );
    for hook in HOOKS {
        let shipped = fs::read(revision.join("revision/hooks").join(hook)).unwrap();
        assert_eq!(
            shipped,
            fs::read(top.join("bin").join(hook)).unwrap(),
            "{hook}"
        );
    }
    assert!(Path::new(&revision.join("revision/portswap-example-0.0.1-SNAPSHOT.jar")).is_file());
}

/// The commit's time, as `git log` gives it.
fn xtask_source_time() -> u64 {
    let out = run(Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(bins::workspace_root()));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// `seconds` as `tar --full-time --utc` prints it: `YYYY-MM-DD HH:MM:SS`.
fn time_of(seconds: u64) -> String {
    let out = run(Command::new("date")
        .args(["-u", "-d"])
        .arg(format!("@{seconds}"))
        .arg("+%Y-%m-%d %H:%M:%S"));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
