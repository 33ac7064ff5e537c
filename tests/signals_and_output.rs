//! What the CodeDeploy agent does to a hook on timeout: SIGTERM to its process group, then
//! its stdout/stderr pipes closed. The hook must stop at once with a verdict line and never
//! panic on a closed output.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use portswap_testkit::{bins, net};

/// A configuration whose health check can never pass (nothing listens on the idle port).
fn never_healthy(dir: &std::path::Path, timeout: &str) -> std::path::PathBuf {
    let path = dir.join("portswap.yml");
    let text = format!(
        "slots: [{{port: {}, profile: a}}, {{port: {}, profile: b}}]\napp:\n  command: [x]\n\
         health:\n  timeout: {timeout}\nnginx:\n  include: {}\nstate:\n  dir: {}\n",
        net::free_port(),
        net::free_port(),
        dir.join("none.inc").display(),
        dir.join("state").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn sigterm_stops_a_waiting_hook_at_once_with_a_verdict() {
    bins::ensure_built();
    let dir = tempfile::tempdir().unwrap();
    let config = never_healthy(dir.path(), "60s");
    let mut child = Command::new(bins::bin("health"))
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let lock = dir.path().join("state/lock");
    net::wait_until(Duration::from_secs(10), "health holds the lock", || {
        std::fs::read_to_string(&lock).is_ok_and(|t| t.starts_with("health"))
    })
    .unwrap();
    let sent = Instant::now();
    killpg(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    let took = sent.elapsed();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let last = stderr.lines().last().unwrap();
    assert!(
        last.starts_with("portswap health: FAILED") && last.contains("SIGTERM"),
        "{last}"
    );
}

#[test]
fn closed_stdout_and_stderr_do_not_make_a_hook_panic() {
    bins::ensure_built();
    let dir = tempfile::tempdir().unwrap();
    let config = never_healthy(dir.path(), "300ms");
    let mut child = Command::new(bins::bin("health"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close our read ends at once, as the agent does after its timeout.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "an unhealthy app is exit 1, not a panic (101) or a signal"
    );
}
