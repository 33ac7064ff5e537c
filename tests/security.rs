//! Security checks (issue 5): argv never through a shell, explicit file modes, planted
//! symlinks never followed, secrets never in hook output, and a root run refuses a
//! configuration other users could have written.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;

use portswap_testkit::net;
use support::{Outcome, Site};

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

#[test]
fn configuration_values_reach_the_app_and_nginx_as_literal_arguments() {
    let mut site = Site::new();
    let root = site.root().to_path_buf();
    let markers = ["m1", "m2", "m3", "m4"].map(|m| root.join(m));
    let value = format!(
        "a b; touch {} $(touch {}) `touch {}` | touch {} & 'q\" \\ *",
        markers[0].display(),
        markers[1].display(),
        markers[2].display(),
        markers[3].display()
    );
    site.set(|s| {
        s.app_args = vec!["--profile".into(), value.clone()];
        // `test A = A` succeeds only when both arrive as one literal argument each.
        s.test_command = Some(vec![
            "test".into(),
            value.clone(),
            "=".into(),
            value.clone(),
        ]);
    });
    site.deploy_ok("d-1");
    let profile = net::http_get(site.ports[0], "/profile").unwrap();
    assert_eq!(
        profile.body, value,
        "the app got the value as one literal argument"
    );
    for marker in &markers {
        assert!(!marker.exists(), "a shell ran: {} exists", marker.display());
    }
}

fn with_umask(mask: u32) -> impl FnOnce(&mut std::process::Command) {
    move |command| {
        // SAFETY: umask(2) is async-signal-safe and touches no memory.
        unsafe {
            command.pre_exec(move || {
                nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
                Ok(())
            });
        }
    }
}

#[test]
fn include_is_written_0644_and_state_files_0600_whatever_the_umask() {
    let site = Site::new();
    for (id, mask) in [("d-1", 0o000), ("d-2", 0o077)] {
        for hook in ["stop", "start", "health", "switch"] {
            site.hook_with(hook, &[], Some(id), with_umask(mask)).ok();
        }
        assert_eq!(mode(&site.include()), 0o644, "include with umask {mask:o}");
        for name in ["switch.yml", "history.log", "lock"] {
            assert_eq!(
                mode(&site.state().join(name)),
                0o600,
                "{name} with umask {mask:o}"
            );
        }
        let records: Vec<_> = site
            .ports
            .iter()
            .map(|p| site.state().join(format!("slot-{p}.yml")))
            .filter(|p| p.exists())
            .collect();
        assert!(!records.is_empty());
        for record in records {
            assert_eq!(mode(&record), 0o600, "slot record, umask {mask:o}");
        }
    }
}

/// Plants a symlink at `link` pointing at a victim file holding `keep`; returns the victim.
fn plant(link: &Path, victim_dir: &Path, name: &str) -> std::path::PathBuf {
    let victim = victim_dir.join(format!("victim-{name}"));
    fs::write(&victim, "keep\n").unwrap();
    let _ = fs::remove_file(link);
    std::os::unix::fs::symlink(&victim, link).unwrap();
    victim
}

#[test]
fn symlinks_planted_at_state_and_include_paths_are_never_followed() {
    let site = Site::new();
    site.deploy_ok("d-1");
    let state = site.state();
    // Links planted in the state directory (by root here: a state directory another user
    // can change is refused outright, tests/forged_state.rs).
    let victims = site.root().join("victims");
    fs::create_dir(&victims).unwrap();
    let idle = site.ports[1];

    // Records are replaced, not followed.
    let slot_victim = plant(&state.join(format!("slot-{idle}.yml")), &victims, "slot");
    let switch_victim = plant(&state.join("switch.yml"), &victims, "switch");
    site.deploy_ok("d-2");
    for (path, victim) in [
        (state.join(format!("slot-{idle}.yml")), &slot_victim),
        (state.join("switch.yml"), &switch_victim),
    ] {
        assert!(
            fs::symlink_metadata(&path).unwrap().is_file(),
            "{} replaced by a file",
            path.display()
        );
        assert_eq!(
            fs::read_to_string(victim).unwrap(),
            "keep\n",
            "{} untouched",
            victim.display()
        );
    }

    // Files opened in place (lock, history, app log) refuse the link.
    let lock_victim = plant(&state.join("lock"), &victims, "lock");
    let out = site
        .hook("stop", &[], Some("d-3"))
        .fails(1, "cannot open lock");
    assert!(
        out.last_line().contains("symbolic links"),
        "{}",
        out.last_line()
    );
    fs::remove_file(state.join("lock")).unwrap();
    let log_victim = plant(
        &state.join(format!("logs/app-{}.log", site.ports[0])),
        &victims,
        "log",
    );
    site.hook("stop", &[], Some("d-3")).ok();
    site.hook("start", &[], Some("d-3"))
        .fails(1, "cannot open app log");
    fs::remove_file(state.join(format!("logs/app-{}.log", site.ports[0]))).unwrap();
    let history_victim = plant(&state.join("history.log"), &victims, "history");
    site.hook("start", &[], Some("d-3")).ok();
    site.hook("health", &[], Some("d-3")).ok();
    let out = site.hook("switch", &[], Some("d-3")).ok();
    assert!(out.stderr.contains("could not record it"), "{}", out.stderr);
    for victim in [&lock_victim, &log_victim, &history_victim] {
        assert_eq!(
            fs::read_to_string(victim).unwrap(),
            "keep\n",
            "{} untouched",
            victim.display()
        );
    }

    // A link at the include is refused before anything else: nothing is switched through it.
    let include_victim = plant(&site.include(), &victims, "include");
    let traffic = site.traffic();
    let out = site
        .hook("stop", &[], Some("d-4"))
        .fails(2, "is a symbolic link, which portswap never follows");
    traffic.assert_all("d-3");
    assert!(
        out.last_line()
            .contains(&site.include().display().to_string()),
        "{}",
        out.last_line()
    );
    assert_eq!(fs::read_to_string(&include_victim).unwrap(), "keep\n");
    fs::remove_file(site.include()).unwrap();
    fs::write(
        site.include(),
        format!("set $service_url http://127.0.0.1:{};\n", site.ports[0]),
    )
    .unwrap();
    site.deploy_ok("d-4");
}

const SECRET: &str = "hunter2-S3CRET-value";
const SECRET2: &str = "jdbc-pa55word-xyz";

fn assert_no_secret(outcome: &Outcome) {
    for secret in [SECRET, SECRET2] {
        assert!(
            !outcome.stdout.contains(secret) && !outcome.stderr.contains(secret),
            "{} printed a secret:\n{}{}",
            outcome.hook,
            outcome.stdout,
            outcome.stderr
        );
    }
}

#[test]
fn secrets_in_the_app_environment_never_appear_in_hook_output_or_state() {
    let mut site = Site::new();
    let env = format!("{{API_TOKEN: {SECRET}, SPRING_DATASOURCE_PASSWORD: {SECRET2}}}");
    let debug = |c: &mut std::process::Command| {
        c.env("RUST_LOG", "debug");
    };
    site.set_key("app", "env", &env);
    for hook in ["stop", "start", "health", "switch"] {
        let out = site.hook_with(hook, &[], Some("d-1"), debug).ok();
        assert_no_secret(&out);
        if hook == "start" {
            assert!(
                out.stderr.contains("API_TOKEN") && out.stderr.contains("values not logged"),
                "{}",
                out.stderr
            );
        }
    }
    assert_no_secret(&site.hook_with("switch", &["--status"], None, debug).ok());
    // The app did get them.
    let pid = site.recorded_pid(site.ports[0]).unwrap();
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(String::from_utf8_lossy(&environ).contains(&format!("API_TOKEN={SECRET}")));
    // Only in the copies of the configuration kept to operate by hand, which are root's
    // alone, as the configuration is (issue 17 item 5).
    for entry in fs::read_dir(site.state().join("live")).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        if entry.file_name().to_string_lossy().ends_with(".yml") {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            assert_eq!(
                meta.permissions().mode() & 0o777,
                0o600,
                "{:?}",
                entry.path()
            );
            assert_eq!(
                meta.uid(),
                nix::unistd::geteuid().as_raw(),
                "{:?}",
                entry.path()
            );
        }
    }
    // Not in any state file.
    for entry in fs::read_dir(site.state()).unwrap().flatten() {
        if entry.path().is_file() {
            let text = String::from_utf8_lossy(&fs::read(entry.path()).unwrap()).into_owned();
            assert!(
                !text.contains(SECRET) && !text.contains(SECRET2),
                "{} holds a secret",
                entry.path().display()
            );
        }
    }

    // Failures too: an app that dies at once, an unhealthy one.
    site.set(|s| s.app_args.push("--fail-start".into()));
    site.set_key("app", "env", &env);
    assert_no_secret(
        &site
            .hook_with("start", &[], Some("d-2"), debug)
            .fails(1, "exited at once"),
    );
    site.set(|s| {
        s.app_args = vec!["--unhealthy".into()];
        s.health_timeout = "300ms";
    });
    site.set_key("app", "env", &env);
    assert_no_secret(&site.hook_with("start", &[], Some("d-2"), debug).ok());
    assert_no_secret(
        &site
            .hook_with("health", &[], Some("d-2"), debug)
            .fails(1, "not healthy"),
    );

    // Configuration errors around a secret do not echo it.
    for bad in [
        format!("{{API_TOKEN: [{SECRET}]}}"),
        format!("{{API_TOKEN: {{nested: {SECRET}}}}}"),
        format!("{{\"BAD=NAME\": {SECRET}}}"),
    ] {
        site.set_key("app", "env", &bad);
        assert_no_secret(
            &site
                .hook_with("stop", &[], Some("d-3"), debug)
                .fails(2, "portswap.yml"),
        );
    }
}

#[test]
fn a_root_run_refuses_a_configuration_others_could_have_written() {
    if !nix::unistd::geteuid().is_root() {
        portswap_testkit::skip(
            "configuration ownership checks",
            "only enforced when running as root",
        );
        return;
    }
    let site = Site::new();
    let config = site.config_path();
    // (what, mode, new owner uid/gid, words of the verdict)
    type Case = (&'static str, u32, Option<(u32, u32)>, &'static str);
    let cases: [Case; 3] = [
        ("world-writable", 0o666, None, "writable by every user"),
        (
            "group-writable",
            0o664,
            Some((0, 4242)),
            "writable by group 4242",
        ),
        (
            "owned by another user",
            0o644,
            Some((4242, 0)),
            "owned by uid 4242",
        ),
    ];
    for (what, bits, owner, needle) in cases {
        fs::set_permissions(&config, fs::Permissions::from_mode(bits)).unwrap();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&config, Some(uid), Some(gid)).unwrap();
        }
        for hook in ["stop", "start", "health", "switch"] {
            let out = site.hook(hook, &[], Some("d-1")).fails(2, needle);
            assert!(
                out.last_line().contains(&config.display().to_string()),
                "{what}: names the file: {}",
                out.last_line()
            );
            assert!(
                out.last_line().contains("chown root:root and chmod 644"),
                "{what}: names the fix: {}",
                out.last_line()
            );
        }
        assert!(
            site.recorded_pid(site.ports[0]).is_none(),
            "{what}: nothing was started"
        );
        std::os::unix::fs::chown(&config, Some(0), Some(0)).unwrap();
        fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
    }
    site.deploy_ok("d-1");
}
