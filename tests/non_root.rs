//! Set-up (a) of docs/non-root.md: the hooks run as root and the app is
//! dropped to an unprivileged user created for the test.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use support::{Settings, Site, TestUser};

fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_default();
    line[field.len()..].trim().to_string()
}

#[test]
fn hooks_as_root_run_the_app_as_the_configured_user() {
    let Some(user) = TestUser::create("hooks_as_root_run_the_app_as_the_configured_user") else {
        return;
    };
    let site = Site::with(Settings {
        app_user: Some(user.name.clone()),
        ..Settings::default()
    });
    // The unprivileged app must reach its release directory inside the test's temp dir.
    std::fs::set_permissions(site.root(), std::fs::Permissions::from_mode(0o755)).unwrap();

    site.deploy_ok("d-1");
    let pid = site.recorded_pid(site.ports[0]).unwrap();
    let uids: Vec<String> = status_field(pid, "Uid:")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(
        uids,
        vec![user.uid.to_string(); 4],
        "real, effective, saved and fs uid are the user's"
    );
    assert_eq!(
        status_field(pid, "Groups:"),
        user.gid.to_string(),
        "root's supplementary groups are dropped; the user's own (here its primary group \
         only) are given, as systemd's User= and login do"
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        environ
            .split('\0')
            .any(|v| v == format!("USER={}", user.name)),
        "{environ}"
    );
    let log = site.state().join(format!("logs/app-{}.log", site.ports[0]));
    assert_eq!(
        std::fs::metadata(&log).unwrap().uid(),
        user.uid,
        "the app log belongs to the app user"
    );
    assert_eq!(site.live_version().as_deref(), Some("d-1"));

    // The root hooks still stop the app they dropped.
    site.deploy_ok("d-2");
    site.hook("stop", &[], None).ok();
    assert!(site.version_on(site.ports[0]).is_none());
}
