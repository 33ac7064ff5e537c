//! Reading nginx's version and loaded configuration (`nginx -V -T`), run like
//! `nginx.test_command` so the same binary, prefix and configuration file are used, and
//! bounded in time ([`crate::bounded`]: its own process group, outputs read while it runs,
//! killed and reaped on every way out). `-T` tests the configuration too: the switch takes
//! its config test from this one run ([`super::nginx`]); the upstream pool check, the
//! keep-alive detection and the checks that nginx follows the include read its dump.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::bounded::{self, Failed, Ran};
use crate::process::resolve_program;

/// How long `nginx -V -T` may take, outside a switch, before it is killed and the answer is
/// "unknown".
pub const LIMIT: Duration = Duration::from_secs(3);

/// The argv that asks nginx for its version and configuration: `test_command` with its `-t`
/// turned into `-T` (dump the configuration) and `-V` added. `None` when `test_command` has
/// no `-t`.
pub fn argv(test_command: &[String]) -> Option<Vec<String>> {
    let mut argv = Vec::with_capacity(test_command.len() + 1);
    let mut found = false;
    for arg in test_command {
        match arg.as_str() {
            "-t" => {
                found = true;
                argv.push("-T".to_string());
            }
            _ => argv.push(arg.clone()),
        }
    }
    argv.push("-V".into());
    found.then_some(argv)
}

/// What `nginx -V -T` printed: the version and build on stderr, the configuration on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxDump {
    stderr: String,
    stdout: String,
}

impl NginxDump {
    /// The dump of a run that succeeded.
    pub fn of(ran: &Ran) -> NginxDump {
        NginxDump {
            stderr: String::from_utf8_lossy(&ran.stderr).into_owned(),
            stdout: String::from_utf8_lossy(&ran.stdout).into_owned(),
        }
    }

    /// `major.minor.patch` from `nginx version: nginx/1.22.1 (Ubuntu)`, when it can be read.
    pub fn version(&self) -> Option<(u32, u32, u32)> {
        parse_version(&self.stderr).or_else(|| parse_version(&self.stdout))
    }

    /// The loaded configuration: every file, each after its `# configuration file` line.
    pub fn config(&self) -> &str {
        self.stdout
            .find("# configuration file ")
            .map_or("", |at| &self.stdout[at..])
    }

    /// Every file of the loaded configuration with its text, the main file first.
    pub fn files(&self) -> Vec<(PathBuf, &str)> {
        const HEADER: &str = "# configuration file ";
        let text = self.config();
        let mut starts: Vec<usize> = text.match_indices(HEADER).map(|(at, _)| at).collect();
        starts.retain(|at| *at == 0 || text[..*at].ends_with('\n'));
        let mut files = Vec::with_capacity(starts.len());
        for (i, at) in starts.iter().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(text.len());
            let block = &text[at + HEADER.len()..end];
            let (first, body) = block.split_once('\n').unwrap_or((block, ""));
            let path = first.strip_suffix(':').unwrap_or(first);
            files.push((PathBuf::from(path), body));
        }
        files
    }

    /// The value of `--name=VALUE` in nginx's `configure arguments`, when given.
    pub fn configure(&self, name: &str) -> Option<&str> {
        let line = self
            .stderr
            .lines()
            .find(|l| l.starts_with("configure arguments:"))?;
        let key = format!("--{name}=");
        line.split_whitespace()
            .find_map(|arg| arg.strip_prefix(key.as_str()))
    }
}

/// Why the dump could not be had.
pub fn failure(argv: &[String], failed: Failed, limit: Duration) -> String {
    match failed {
        Failed::Spawn(e) => format!("`{}` could not run: {e}", argv.join(" ")),
        Failed::Hung => format!(
            "`{}` took over {}",
            argv.join(" "),
            crate::duration::show(limit)
        ),
        Failed::Wait(e) => format!("`{}`: {e}", argv.join(" ")),
    }
}

/// The last line `nginx -V -T` wrote to stderr (its reason when it failed).
pub fn last_line(ran: &Ran) -> String {
    let stderr = String::from_utf8_lossy(&ran.stderr);
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim()
        .to_string()
}

/// Reads nginx's version and configuration, bounded by [`LIMIT`]; an error says why nothing
/// could be learnt.
pub fn read(test_command: &[String]) -> Result<NginxDump, String> {
    let argv = argv(test_command)
        .ok_or_else(|| format!("nginx.test_command `{}` has no -t", test_command.join(" ")))?;
    let program = resolve_program(&argv[0]).map_err(|e| e.to_string())?;
    let ran = bounded::run(&program, &argv[1..], true, Instant::now() + LIMIT)
        .map_err(|failed| failure(&argv, failed, LIMIT))?;
    if !ran.status.success() {
        return Err(format!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            ran.status,
            last_line(&ran)
        ));
    }
    Ok(NginxDump::of(&ran))
}

/// `1.22.1` from `nginx version: nginx/1.22.1 (Ubuntu)`.
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let line = text.lines().find(|l| l.contains("nginx version:"))?;
    let (_, rest) = line.split_once('/')?;
    let mut parts = rest
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|p| p.parse::<u32>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn runs_the_test_command_with_dump_and_version() {
        assert_eq!(
            argv(&strings(&["sudo", "-n", "/usr/sbin/nginx", "-t", "-q"])),
            Some(strings(&[
                "sudo",
                "-n",
                "/usr/sbin/nginx",
                "-T",
                "-q",
                "-V"
            ]))
        );
        assert_eq!(
            argv(&strings(&[
                "nginx",
                "-p",
                "/x/",
                "-c",
                "/x/n.conf",
                "-t",
                "-q"
            ])),
            Some(strings(&[
                "nginx",
                "-p",
                "/x/",
                "-c",
                "/x/n.conf",
                "-T",
                "-q",
                "-V"
            ]))
        );
        assert_eq!(argv(&strings(&["/usr/local/bin/check"])), None);
    }

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("nginx version: nginx/1.22.1\nbuilt by"),
            Some((1, 22, 1))
        );
        assert_eq!(
            parse_version("nginx version: nginx/1.24.0 (Ubuntu)"),
            Some((1, 24, 0))
        );
        assert_eq!(
            parse_version("nginx version: openresty/1.21.4.1"),
            Some((1, 21, 4))
        );
        assert_eq!(parse_version("no version here"), None);
    }

    #[test]
    fn the_configuration_starts_at_its_first_file() {
        let dump = NginxDump {
            stderr: "nginx version: nginx/1.29.7\nconfigure arguments: --prefix=/usr/share/nginx \
                     --conf-path=/etc/nginx/nginx.conf\n"
                .into(),
            stdout: "# configuration file /x/n.conf:\nhttp { include /x/a.inc; }\n\n\
                     # configuration file /x/a.inc:\nset $a 1; # configuration file no\n"
                .into(),
        };
        assert_eq!(dump.version(), Some((1, 29, 7)));
        assert!(dump
            .config()
            .starts_with("# configuration file /x/n.conf:\nhttp"));
        let files = dump.files();
        assert_eq!(files.len(), 2);
        assert_eq!(
            files[0],
            (PathBuf::from("/x/n.conf"), "http { include /x/a.inc; }\n\n")
        );
        assert_eq!(files[1].0, PathBuf::from("/x/a.inc"));
        assert_eq!(dump.configure("conf-path"), Some("/etc/nginx/nginx.conf"));
        assert_eq!(dump.configure("pid-path"), None);
    }
}
