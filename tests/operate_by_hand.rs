//! Operating by hand (issue 17 item 5): `<state.dir>/live/switch` is one stable command for
//! `--status` and `--rollback` that always uses the configuration of the deployment that is
//! live (refreshed by every switch and rollback, untouched by a deployment that failed), run
//! as sudo runs it (cwd `/`, an empty environment); without root it says to use sudo.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use support::{Site, TestUser};

fn by_hand(site: &Site, args: &[&str], adjust: impl FnOnce(&mut Command)) -> Output {
    let mut command = Command::new(site.state().join("live/switch"));
    command.args(args).current_dir("/").env_clear();
    adjust(&mut command);
    command.output().unwrap()
}

fn last_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap_or("")
        .to_string()
}

fn live_config(site: &Site) -> String {
    fs::read_to_string(site.state().join("live/portswap.yml")).unwrap()
}

#[test]
fn the_live_command_uses_the_live_deployments_configuration() {
    let site = Site::new();
    let [a, b] = site.ports;
    site.deploy_ok("d-1");
    let first = fs::read_to_string(site.config_path()).unwrap();
    site.set_key("health", "timeout", "\"9s\"");
    site.deploy_ok("d-2");
    let second = fs::read_to_string(site.config_path()).unwrap();
    assert_ne!(first, second);
    assert_eq!(live_config(&site), second);

    let status = by_hand(&site, &["--status"], |_| {});
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{}", last_line(&status));
    assert!(text.contains(&format!("live port: {b}")), "{text}");
    assert!(
        text.contains(&format!(
            "by hand: sudo {} --status | --rollback",
            site.state().join("live/switch").display()
        )),
        "{text}"
    );

    // A rollback by hand goes to d-1 and the live copy becomes d-1's configuration.
    let back = by_hand(&site, &["--rollback"], |_| {});
    assert!(back.status.success(), "{}", last_line(&back));
    assert!(
        last_line(&back).contains(&format!("now go to port {a}")),
        "{}",
        last_line(&back)
    );
    assert!(
        last_line(&back).contains("rollback to deployment d-1"),
        "{}",
        last_line(&back)
    );
    assert_eq!(live_config(&site), first);
    assert!(by_hand(&site, &["--rollback"], |_| {}).status.success());
    assert_eq!(live_config(&site), second);

    // A deployment that fails its health check leaves the live copy as it was.
    site.set_key("health", "body_contains", "\"NEVER-IN-THE-BODY\"");
    site.set_key("health", "timeout", "\"1s\"");
    site.hook("stop", &[], Some("d-3")).ok();
    site.hook("start", &[], Some("d-3")).ok();
    site.hook("health", &[], Some("d-3"))
        .fails(1, "not healthy");
    assert_eq!(live_config(&site), second);
    let status = by_hand(&site, &["--status"], |_| {});
    assert!(String::from_utf8_lossy(&status.stdout).contains(&format!("live port: {b}")));
}

#[test]
fn without_root_the_live_command_says_to_use_sudo() {
    let Some(user) = TestUser::create("the live command without root") else {
        return;
    };
    let site = Site::new();
    site.deploy_ok("d-1");
    // The user may reach the command (the site's directory is private by default) but, as
    // on a host, not read the root-owned configuration beside it.
    fs::set_permissions(site.root(), fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        fs::metadata(site.state().join("live/portswap.yml"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let out = by_hand(&site, &["--status"], |c| user.apply(c));
    assert_eq!(out.status.code(), Some(2), "{}", last_line(&out));
    assert!(
        last_line(&out).contains("Permission denied"),
        "{}",
        last_line(&out)
    );
    assert!(last_line(&out).contains("with sudo"), "{}", last_line(&out));
    assert!(Path::new(&site.state().join("live/switch")).is_file());
}

/// README gives the command for the default state directory, the path the hooks keep.
#[test]
fn readme_names_the_live_command_of_the_default_state_directory() {
    let config = portswap::config::Config::parse(
        "app: { command: [x] }",
        Path::new("/etc/portswap/portswap.yml"),
    )
    .unwrap();
    let command = portswap::live::command(&portswap::state::StateDir::at(&config.state_dir));
    let readme =
        fs::read_to_string(portswap_testkit::bins::workspace_root().join("README.md")).unwrap();
    for flag in ["--status", "--rollback"] {
        let line = format!("sudo {} {flag}", command.display());
        assert!(readme.contains(&line), "README lacks `{line}`");
    }
}
