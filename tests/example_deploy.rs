//! The Spring Boot example deployed as an adopter deploys it: examples/spring-boot/appspec.yml
//! as it is, its portswap.yml with the values marked `# CHANGE` (and the instance's nginx and
//! state directory) set for this machine, the fixture app standing in for the jar, packed by
//! the real `portswap-bundle`, deployed by the agent emulation behind a sandboxed nginx.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use portswap_testkit::agent::{Agent, DeploymentReport};
use portswap_testkit::hooks;
use portswap_testkit::{bins, net, NginxSandbox};
use serde_yaml::Value;

/// The jar name Gradle gives the example (settings.gradle, build.gradle).
const JAR: &str = "portswap-example-0.0.1-SNAPSHOT.jar";

fn example(file: &str) -> PathBuf {
    bins::workspace_root()
        .join("examples/spring-boot")
        .join(file)
}

/// One instance: nginx in a sandbox, two slot ports, an agent, and a project directory.
struct Instance {
    dir: tempfile::TempDir,
    nginx: NginxSandbox,
    ports: [u16; 2],
    agent: Agent,
}

impl Instance {
    fn new() -> Instance {
        bins::ensure_built();
        let dir = tempfile::tempdir().unwrap();
        let nginx = NginxSandbox::start(
            &dir.path().join("nginx"),
            &dir.path().join("service-url.inc"),
        );
        let agent = Agent::new(&dir.path().join("agent"), "dg-example")
            .destination_root(&dir.path().join("dest"));
        Instance {
            dir,
            nginx,
            ports: [net::free_port(), net::free_port()],
            agent,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The example's portswap.yml with the values a user sets, set for this machine, and the
    /// health check given (`/actuator/health` or the book's `/profile`).
    fn config(&self, health_path: &str, body_contains: &str) -> String {
        let text = fs::read_to_string(example("portswap.yml")).unwrap();
        let mut doc: Value = serde_yaml::from_str(&text).unwrap();
        let app = &mut doc["app"];
        // `java <options> -jar {artifact} <Spring arguments>`: the stand-in runs as
        // `{artifact} <Spring arguments>`, reporting the deployment id as its version.
        let command: Vec<String> = serde_yaml::from_value(app["command"].clone()).unwrap();
        let at = command.iter().position(|a| a == "{artifact}").unwrap();
        let spring = &command[at + 1..];
        assert_eq!(
            spring,
            ["--server.port={port}", "--spring.profiles.active={profile}"]
        );
        let mut stand_in = vec!["{artifact}".to_string()];
        stand_in.extend(spring.iter().cloned());
        stand_in.extend(["--version".into(), "{deployment_id}".into()]);
        app["command"] = serde_yaml::to_value(stand_in).unwrap();
        app.as_mapping_mut().unwrap().remove("user");
        app["log_dir"] = self.path("logs").display().to_string().into();
        doc["health"]["path"] = health_path.into();
        doc["health"]["body_contains"] = body_contains.into();
        // This machine's nginx, ports and state directory.
        for (slot, port) in doc["slots"]
            .as_sequence_mut()
            .unwrap()
            .iter_mut()
            .zip(self.ports)
        {
            slot["port"] = port.into();
        }
        let nginx = &mut doc["nginx"];
        nginx["include"] = self.nginx.include_file().display().to_string().into();
        nginx["test_command"] = serde_yaml::to_value(self.nginx.test_command()).unwrap();
        nginx["pid_file"] = self.nginx.pid_file().display().to_string().into();
        // The example's front-door check, on this nginx's port instead of 80.
        assert!(nginx["front"].is_string(), "the example sets nginx.front");
        nginx["front"] = format!("http://127.0.0.1:{}", self.nginx.port()).into();
        doc["state"]["dir"] = self.path("state").display().to_string().into();
        serde_yaml::to_string(&doc).unwrap()
    }

    /// `./gradlew build` stand-in: the fixture app as build/libs/<jar>.
    fn build_jar(&self) -> PathBuf {
        let jar = self.path("build/libs").join(JAR);
        fs::create_dir_all(jar.parent().unwrap()).unwrap();
        bins::copy_executable(&bins::bin("fixture-app"), &jar);
        fs::set_permissions(&jar, fs::Permissions::from_mode(0o755)).unwrap();
        jar
    }

    /// Runs the real portswap-bundle as the deploy workflow does; returns the .zip.
    fn bundle(&self, name: &str, config: &str) -> PathBuf {
        let config_path = self.path(&format!("{name}-portswap.yml"));
        fs::write(&config_path, config).unwrap();
        let out = self.path(&format!("{name}-out"));
        let output = Command::new(bins::bin("portswap-bundle"))
            .arg("--appspec")
            .arg(example("appspec.yml"))
            .arg("--config")
            .arg(&config_path)
            .arg("--hooks")
            .arg(bins::bin_dir())
            .arg("--out")
            .arg(&out)
            .arg(self.build_jar())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "portswap-bundle: {stderr}");
        assert!(
            stderr
                .lines()
                .last()
                .unwrap()
                .starts_with("portswap bundle: OK: packed"),
            "{stderr}"
        );
        let zip = out.join("portswap-revision.zip");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).lines().next(),
            Some(zip.display().to_string().as_str())
        );
        zip
    }

    fn deploy(&self, revision: &Path, id: &str) -> DeploymentReport {
        let report = self.agent.deploy(revision, id, &[("RUST_LOG", "info")]);
        eprintln!("{report}");
        report
    }

    /// What answers through nginx: (version, body of `path`).
    fn through_nginx(&self, path: &str) -> (Option<String>, String) {
        let response = net::http_get(self.nginx.port(), path).unwrap();
        assert_eq!(response.status, 200, "{path}");
        let version = response.header("X-App-Version").map(str::to_string);
        (version, response.body)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        for port in self.ports {
            if let Some(pid) = hooks::recorded_pid(&self.path("state"), port) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// Packs the example with `health` as its check, deploys it as `id` and checks that nginx
/// now sends requests to the new version on `port`, running `profile`.
fn deploy_and_check(instance: &Instance, health: (&str, &str), id: &str, port: u16, profile: &str) {
    let zip = instance.bundle(id, &instance.config(health.0, health.1));
    let report = instance.deploy(&zip, id);
    assert!(report.success(), "{report}");
    assert_eq!(
        hooks::included_port(instance.nginx.include_file()),
        Some(port)
    );
    let (version, answered) = instance.through_nginx("/profile");
    assert_eq!(version.as_deref(), Some(id));
    assert_eq!(answered, profile);
}

#[test]
fn the_spring_boot_example_deploys_through_the_agent() {
    let instance = Instance::new();
    let [first, second] = instance.ports;

    // As shipped: health on /actuator/health.
    deploy_and_check(
        &instance,
        ("/actuator/health", "UP"),
        "d-EXAMPLE1",
        first,
        "real1",
    );
    // The hook's verdict is the last line it wrote to the deployment's scripts.log.
    let log = fs::read_to_string(instance.agent.scripts_log("d-EXAMPLE1")).unwrap();
    assert!(
        log.lines().any(
            |l| l.contains("[stderr]portswap switch: OK: all new requests now go to")
                && l.contains("front door 127.0.0.1:")
                && l.ends_with("reaches it")
        ),
        "{log}"
    );

    // The book's alternative: health on /profile answering real1 or real2. ApplicationStop
    // runs the previous revision's hooks; the new version goes live on the other port.
    deploy_and_check(
        &instance,
        ("/profile", "real"),
        "d-EXAMPLE2",
        second,
        "real2",
    );
    let (_, health) = instance.through_nginx("/actuator/health");
    assert!(health.contains("UP"), "{health}");
}
