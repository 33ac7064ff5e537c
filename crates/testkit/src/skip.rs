//! Test branches the machine cannot run, reported where a reader sees them.
//!
//! The test harness captures `println!`/`eprintln!` of a passing test, so a skipped branch
//! printed that way shows only with `--nocapture`. [`skip`] writes its `SKIPPED` line
//! straight to the process's stderr (which the harness does not capture): it shows in plain
//! `cargo test` output. Under CI (`CI` set, as `.ci/run` does), where everything the tests
//! need is installed and the run has root, a skip is a failure instead.

use std::io::Write;

/// True when running under CI: `CI` is set and not `false`/`0`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Reports that `what` did not run because of `why`: a visible `SKIPPED` line, or a panic
/// under CI.
pub fn skip(what: &str, why: &str) {
    assert!(
        !in_ci(),
        "{what}: {why}; CI must run this (README, Test: what the tests need)"
    );
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {what}: {why}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const PROBE: &str = "PORTSWAP_TESTKIT_SKIP_PROBE";
    const NAME: &str = "skip::tests::a_skip_shows_in_plain_test_output_and_fails_under_ci";

    #[test]
    fn a_skip_shows_in_plain_test_output_and_fails_under_ci() {
        if std::env::var_os(PROBE).is_some() {
            skip("probe branch", "probe reason");
            return;
        }
        // This very test, run again by the harness without --nocapture.
        let run = |ci: &str| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", NAME, "--test-threads=1"])
                .env(PROBE, "1")
                .env("CI", ci)
                .output()
                .unwrap()
        };
        let plain = run("");
        let output = String::from_utf8_lossy(&plain.stderr).into_owned()
            + &String::from_utf8_lossy(&plain.stdout);
        assert!(plain.status.success(), "{output}");
        assert!(
            output.contains("SKIPPED probe branch: probe reason"),
            "{output}"
        );
        let ci = run("true");
        assert!(!ci.status.success(), "a skip under CI fails the test");
    }
}
