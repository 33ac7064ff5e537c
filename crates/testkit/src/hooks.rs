//! Running portswap's hook binaries as the CodeDeploy agent does, and reading back what they
//! leave on disk: shared by the integration tests, the bench and the demo.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::bins;

/// The PATH the agent gives hooks under systemd.
pub const AGENT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A hook `name` ready to run as the agent runs it: cwd `/`, a near-empty environment, stdin
/// from /dev/null, the configuration found through `PORTSWAP_CONFIG`.
pub fn command(name: &str, config: &Path) -> Command {
    let mut command = Command::new(bins::bin(name));
    command
        .current_dir("/")
        .env_clear()
        .env("PATH", AGENT_PATH)
        .env("PORTSWAP_CONFIG", config)
        .stdin(Stdio::null());
    command
}

/// `app.command` that runs the fixture app (staged as `{artifact}`) on the slot, reporting
/// `version` (`{deployment_id}` makes each deployment its own version), plus `extra` flags.
pub fn fixture_command<S: AsRef<str>>(version: &str, extra: &[S]) -> Vec<String> {
    let base = [
        "{artifact}",
        "--port",
        "{port}",
        "--profile",
        "{profile}",
        "--version",
        version,
    ];
    base.iter()
        .map(|s| s.to_string())
        .chain(extra.iter().map(|s| s.as_ref().to_string()))
        .collect()
}

/// A YAML flow list of strings: `["a", "b"]`.
pub fn yaml_list<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{:?}", i.as_ref())).collect();
    format!("[{}]", quoted.join(", "))
}

/// The port an include file names (`... http://127.0.0.1:PORT;`), if any.
pub fn included_port(include: &Path) -> Option<u16> {
    let text = fs::read_to_string(include).ok()?;
    let digits: String = text
        .rsplit(':')
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The pid `start` recorded for the app on `port` in `state_dir`.
pub fn recorded_pid(state_dir: &Path, port: u16) -> Option<i32> {
    let text = fs::read_to_string(state_dir.join(format!("slot-{port}.yml"))).ok()?;
    let line = text.lines().find(|l| l.starts_with("pid:"))?;
    line["pid:".len()..].trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ports() {
        assert_eq!(yaml_list(&["a b", "{port}"]), r#"["a b", "{port}"]"#);
        let command = fixture_command("v1", &["--unhealthy"]);
        assert_eq!(command[0], "{artifact}");
        assert_eq!(command[6..], ["v1", "--unhealthy"]);
        let dir = tempfile::tempdir().unwrap();
        let include = dir.path().join("i.inc");
        assert_eq!(included_port(&include), None);
        fs::write(&include, "set $service_url http://127.0.0.1:8082;\n").unwrap();
        assert_eq!(included_port(&include), Some(8082));
        fs::write(dir.path().join("slot-8082.yml"), "pid: 42\nstart_time: 1\n").unwrap();
        assert_eq!(recorded_pid(dir.path(), 8082), Some(42));
    }
}
