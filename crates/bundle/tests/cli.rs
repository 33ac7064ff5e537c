//! `portswap-bundle` as a user runs it: the hooks' conventions (--help, --version, one-line
//! verdict last, exit 2 for bad input) and refusals that name the files given.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

const BUNDLE: &str = env!("CARGO_BIN_EXE_portswap-bundle");

fn bundle(args: &[&str], cwd: &Path) -> Output {
    Command::new(BUNDLE)
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn verdict(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr.trim_end().lines().last().unwrap_or("").to_string()
}

#[test]
fn help_and_version() {
    let here = Path::new("/");
    let out = bundle(&["--version"], here);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("portswap-bundle {} (portswap)", env!("CARGO_PKG_VERSION"))
    );
    let out = bundle(&["--help"], here);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--appspec PATH",
        "--config PATH",
        "--hooks DIR",
        "--out DIR",
        "ARTIFACT...",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    let out = bundle(&[], here);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        verdict(&out).starts_with("portswap bundle: FAILED (exit 2): no artifact given"),
        "{}",
        verdict(&out)
    );
}

#[test]
fn an_invalid_config_is_named_as_given() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    fs::create_dir(dir.path().join("deploy")).unwrap();
    fs::copy(
        root.join("appspec.yml"),
        dir.path().join("deploy/appspec.yml"),
    )
    .unwrap();
    let config = fs::read_to_string(root.join("hooks/portswap.yml"))
        .unwrap()
        .replace("keep_releases: 3", "keep_releases: 3\n  keep_logs: 5");
    fs::write(dir.path().join("deploy/portswap.yml"), config).unwrap();
    fs::write(dir.path().join("app.jar"), "PK").unwrap();

    // The config is found beside the appspec; the error names it as the user would.
    let out = bundle(&["--appspec", "deploy/appspec.yml", "app.jar"], dir.path());
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let line = verdict(&out);
    assert!(
        line.starts_with("portswap bundle: FAILED (exit 2): deploy/portswap.yml: ")
            && line.contains("keep_logs"),
        "{line}"
    );
    assert!(!dir
        .path()
        .join("build/portswap/portswap-revision.zip")
        .exists());
}

/// Issue 17 item 3: a relative host path would resolve inside each deployment's archive on
/// the instance (from the third deployment on, `stop` met deployment 1's app as foreign):
/// portswap-bundle refuses it before anything is packed, naming the key and the fix.
#[test]
fn relative_host_paths_are_refused_naming_the_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let original = fs::read_to_string(root.join("hooks/portswap.yml")).unwrap();
    for (absolute, relative, key) in [
        ("dir: /var/lib/portswap", "dir: state", "state.dir"),
        ("log_dir: /var/log/portswap", "log_dir: logs", "app.log_dir"),
        (
            "include: /etc/nginx/conf.d/service-url.inc",
            "include: service-url.inc",
            "nginx.include",
        ),
        (
            "pid_file: /run/nginx.pid",
            "pid_file: ../nginx.pid",
            "nginx.pid_file",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        fs::copy(root.join("appspec.yml"), dir.path().join("appspec.yml")).unwrap();
        assert!(original.contains(absolute), "{absolute}");
        fs::write(
            dir.path().join("portswap.yml"),
            original.replace(absolute, relative),
        )
        .unwrap();
        fs::write(dir.path().join("app.jar"), "PK").unwrap();
        let out = bundle(&["app.jar"], dir.path());
        assert_eq!(out.status.code(), Some(2), "{key}: {out:?}");
        let line = verdict(&out);
        assert!(
            line.starts_with("portswap bundle: FAILED (exit 2): portswap.yml: ")
                && line.contains(&format!("{key}: `"))
                && line.contains("is relative")
                && line.contains(&format!("fix: an absolute path, e.g. `{key}: /")),
            "{line}"
        );
        assert!(!dir.path().join("build/portswap/revision").exists());
    }
}
