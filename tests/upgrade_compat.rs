//! Upgrading portswap: CodeDeploy runs ApplicationStop from the last successful revision, so
//! records written by one release are read by the next one's hooks (and the other way round).
//! The record formats of release 0.1.0 are pinned here, byte for byte as 0.1.0 writes them.

use std::fs;

use portswap::state::{AppRecord, SwitchRecord};
use portswap_testkit::hooks::{self, yaml_list};
use portswap_testkit::{bins, net, FixtureApp};

/// `slot-<port>.yml` as portswap 0.1.0 writes it (placeholders filled in by the test).
const APP_RECORD_0_1_0: &str = "pid: {pid}
start_time: {start_time}
port: {port}
profile: real2
deployment_id: d-RELEASE010
command:
- java
- -jar
- /var/lib/portswap/releases/d-RELEASE010-{port}/app.jar
- --server.port={port}
release_dir: /var/lib/portswap/releases/d-RELEASE010-{port}
log_file: /home/ec2-user/app/logs/app-{port}.log
started_at: 1795600000
";

/// `switch.yml` as portswap 0.1.0 writes it.
const SWITCH_RECORD_0_1_0: &str = "live: 8082
previous: 8081
deployment_id: d-RELEASE010
at: 1795600000
";

fn app_record(pid: i32, start_time: u64, port: u16) -> String {
    APP_RECORD_0_1_0
        .replace("{pid}", &pid.to_string())
        .replace("{start_time}", &start_time.to_string())
        .replace("{port}", &port.to_string())
}

#[test]
fn records_of_release_0_1_0_parse() {
    let record: AppRecord = serde_yaml::from_str(&app_record(42, 7, 8082)).unwrap();
    assert_eq!((record.pid, record.port), (42, 8082));
    assert_eq!(record.deployment_id, "d-RELEASE010");
    let switch: SwitchRecord = serde_yaml::from_str(SWITCH_RECORD_0_1_0).unwrap();
    assert_eq!((switch.live, switch.previous), (8082, Some(8081)));
}

/// The app a 0.1.0 `start` recorded is stopped through that record by this release's `stop`
/// (without the record, a process not running the configured `java` would be refused).
#[test]
fn this_stop_honours_a_record_of_release_0_1_0() {
    bins::ensure_built();
    let dir = tempfile::tempdir().unwrap();
    let ports = [net::free_port(), net::free_port()];
    let app = FixtureApp::spawn(ports[1], "real2", "v-old", &[]);
    let start_time = portswap::procfs::ProcId::of(app.pid()).unwrap().start_time;
    let state = dir.path().join("state");
    fs::create_dir_all(&state).unwrap();
    fs::write(
        state.join(format!("slot-{}.yml", ports[1])),
        app_record(app.pid(), start_time, ports[1]),
    )
    .unwrap();
    let config = dir.path().join("portswap.yml");
    fs::write(
        &config,
        format!(
            "slots:\n  - {{ port: {}, profile: real1 }}\n  - {{ port: {}, profile: real2 }}\n\
             app:\n  command: {}\n\
             nginx:\n  include: {}\n\
             stop:\n  grace: 5s\n\
             state:\n  dir: {}\n  lock_wait: 5s\n",
            ports[0],
            ports[1],
            yaml_list(&["/usr/bin/java", "-jar", "{artifact}"]),
            dir.path().join("service-url.inc").display(),
            state.display()
        ),
    )
    .unwrap();

    let out = hooks::command("stop", &config)
        .args(["--port", &ports[1].to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("(deployment d-RELEASE010)"), "{stderr}");
    assert!(
        stderr
            .trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with(&format!(
                "portswap stop: OK: stopped pid {} on port {}",
                app.pid(),
                ports[1]
            )),
        "{stderr}"
    );
    assert!(!net::port_is_listening(ports[1]));
    assert_eq!(hooks::recorded_pid(&state, ports[1]), None);
}
