//! Fault rows that need a user without root's rights: the include directory not writable,
//! no permission to reload nginx, a state directory the hook cannot write. The hooks run as a
//! throwaway system user created for the test (and deleted after); SKIPPED when impossible.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use portswap_testkit::tools;
use support::{chown_tree, Guarded, Settings, Site, TestUser};

/// A site with `d-1` live and `d-2` started and healthy, readable by other users. The apps
/// run as `user` (the root hooks drop them to it), so that hooks run as `user` can see that
/// the app on the port is the one `start` launched.
fn site_ready_to_switch(user: &TestUser) -> Site {
    let site = Site::with(Settings {
        app_user: Some(user.name.clone()),
        ..Settings::default()
    });
    fs::set_permissions(site.root(), fs::Permissions::from_mode(0o755)).unwrap();
    site.deploy_ok("d-1");
    site.run_until("d-2", "health");
    site
}

#[test]
fn include_directory_not_writable() {
    let Some(user) = TestUser::create("include directory not writable") else {
        return;
    };
    let site = site_ready_to_switch(&user);
    chown_tree(&site.state(), user.uid, user.gid);
    let before = site.include_text();
    let traffic = site.traffic();
    let out = site
        .hook_with("switch", &[], Some("d-2"), |c| user.apply(c))
        .fails(1, "Permission denied");
    traffic.assert_all("d-1");
    assert!(
        out.last_line().contains(&site.root().display().to_string()),
        "names the file: {}",
        out.last_line()
    );
    assert_eq!(site.include_text(), before);
    site.assert_nothing_half_written();
    // Root runs the hooks again: the state is root's again (root refuses a state directory
    // another user can change).
    chown_tree(&site.state(), 0, 0);
    site.hook("switch", &[], Some("d-2")).ok();
    assert_eq!(site.live_version().as_deref(), Some("d-2"));
}

#[test]
fn reload_without_permission_names_the_sudoers_fix() {
    let Some(user) = TestUser::create("reload without permission") else {
        return;
    };
    let site = site_ready_to_switch(&user);
    // The user may write the include and the state, but not signal root's nginx.
    chown_tree(&site.state(), user.uid, user.gid);
    std::os::unix::fs::chown(site.root(), Some(user.uid), Some(user.gid)).unwrap();
    // nginx -t as that user cannot open root's error log; this row is about the reload.
    site.set_key("nginx", "test_command", "[\"true\"]");
    let before = site.include_text();
    let traffic = site.traffic();
    let out = site
        .hook_with("switch", &[], Some("d-2"), |c| user.apply(c))
        .fails(1, "sudoers");
    traffic.assert_all("d-1");
    assert!(
        out.last_line().contains("cannot signal the nginx master"),
        "{}",
        out.last_line()
    );
    assert!(out.stderr.contains("restored"), "{}", out.stderr);
    assert_eq!(site.include_text(), before, "include restored");
    site.assert_nothing_half_written();

    // The same through a reload command the user may not run (sudo without a rule).
    if tools::need("reload_command through sudo", &[&tools::SUDO]) {
        site.set_key(
            "nginx",
            "reload_command",
            "[\"sudo\", \"-n\", \"/usr/sbin/nginx\", \"-s\", \"reload\"]",
        );
        let out = site
            .hook_with("switch", &[], Some("d-2"), |c| user.apply(c))
            .fails(1, "sudoers");
        assert!(
            out.last_line().contains("nginx reload"),
            "{}",
            out.last_line()
        );
        assert_eq!(site.include_text(), before);
    }
    std::os::unix::fs::chown(site.root(), Some(0), Some(0)).unwrap();
    chown_tree(&site.state(), 0, 0);
    site.write_config();
    site.hook("switch", &[], Some("d-2")).ok();
    assert_eq!(site.live_version().as_deref(), Some("d-2"));
}

#[test]
fn state_directory_not_writable() {
    let Some(user) = TestUser::create("state directory not writable") else {
        return;
    };
    let site = site_ready_to_switch(&user);
    let before = site.include_text();
    let traffic = site.traffic();
    for hook in ["stop", "start", "health", "switch"] {
        let out = site
            .hook_with(hook, &[], Some("d-3"), |c| user.apply(c))
            .fails(1, "Permission denied");
        assert!(
            out.last_line().contains("lock"),
            "{hook}: {}",
            out.last_line()
        );
    }
    traffic.assert_all("d-1");
    assert_eq!(site.include_text(), before);
    site.assert_nothing_half_written();
    site.deploy_ok("d-3");
    assert_eq!(site.live_version().as_deref(), Some("d-3"));
}

#[test]
fn a_port_held_by_a_process_the_hook_user_cannot_see_is_refused_and_its_answer_never_trusted() {
    let Some(user) = TestUser::create("a port held by a process the hook user cannot see") else {
        return;
    };
    let site = Site::new();
    fs::set_permissions(site.root(), fs::Permissions::from_mode(0o755)).unwrap();
    site.deploy_ok("d-1");
    let idle = site.ports[1];
    // A root-started app on the idle port (left over from when the hooks ran as root).
    let mut root_app = Guarded(
        std::process::Command::new(portswap_testkit::bins::bin("fixture-app"))
            .args(["--port", &idle.to_string(), "--version", "root-app"])
            .current_dir("/")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    support::wait(
        std::time::Duration::from_secs(5),
        "the root app listens",
        || site.version_on(idle).is_some(),
    );
    chown_tree(&site.state(), user.uid, user.gid);
    let before = site.include_text();
    let traffic = site.traffic();
    for hook in ["stop", "start", "health", "switch"] {
        let out = site
            .hook_with(hook, &[], Some("d-2"), |c| user.apply(c))
            .fails(4, "no process visible to uid");
        assert!(
            out.last_line().contains(&idle.to_string()),
            "{hook}: names the port: {}",
            out.last_line()
        );
    }
    traffic.assert_all("d-1");
    assert_eq!(site.include_text(), before, "nginx never pointed at it");
    assert!(root_app.0.try_wait().unwrap().is_none(), "never signalled");
    assert_eq!(
        fs::read_dir(site.state().join("releases"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("d-2"))
            .count(),
        0,
        "no release staged for an app that could not bind"
    );
    drop(root_app);
    chown_tree(&site.state(), 0, 0);
    site.deploy_ok("d-2");
    assert_eq!(site.live_version().as_deref(), Some("d-2"));
}
