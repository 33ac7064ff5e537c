//! Reading nginx's version and loaded configuration (`nginx -V -T`), run like
//! `nginx.test_command` so the same binary, prefix and configuration file are used, and
//! bounded in time: the one reader for the keep-alive detection and the upstream pool check.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use crate::duration::show;
use crate::process::resolve_program;

/// How long `nginx -V -T` may take before it is killed and the answer is "unknown".
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

/// What `nginx -V -T` printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxDump {
    text: String,
}

impl NginxDump {
    /// `major.minor.patch` from `nginx version: nginx/1.22.1 (Ubuntu)`, when it can be read.
    pub fn version(&self) -> Option<(u32, u32, u32)> {
        parse_version(&self.text)
    }

    /// The loaded configuration: every file, each after its `# configuration file` line.
    pub fn config(&self) -> &str {
        self.text
            .find("# configuration file ")
            .map_or("", |at| &self.text[at..])
    }
}

/// A running `nginx -V -T`, started early so it overlaps with other work. Its stdout and
/// stderr share one non-blocking pipe, read until EOF or [`LIMIT`] (no thread).
pub struct Reading {
    started: Instant,
    run: Result<(Child, File), String>,
}

impl Reading {
    /// Starts asking nginx (as `test_command` runs it) for its version and configuration.
    pub fn start(test_command: &[String]) -> Reading {
        Reading {
            started: Instant::now(),
            run: spawn(test_command),
        }
    }

    /// Its answer, waiting at most until `limit` or [`LIMIT`] after the start, whichever
    /// comes first; an error says why nothing could be learnt.
    pub fn finish_by(self, limit: Instant) -> Result<NginxDump, String> {
        let deadline = limit.min(self.started + LIMIT);
        let (mut child, mut pipe) = self.run?;
        let mut text = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => text.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!(
                            "`nginx -V -T` took over {}",
                            show(deadline.saturating_duration_since(self.started))
                        ));
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(format!("`nginx -V -T`: {e}")),
            }
        }
        let status = child.wait().map_err(|e| format!("`nginx -V -T`: {e}"))?;
        let text = String::from_utf8_lossy(&text).into_owned();
        if !status.success() {
            let last = text.lines().rev().find(|l| !l.trim().is_empty());
            return Err(format!(
                "`nginx -V -T` failed ({status}): {}",
                last.unwrap_or("no output").trim()
            ));
        }
        Ok(NginxDump { text })
    }

    /// Its answer, waiting at most [`LIMIT`] after the start.
    pub fn finish(self) -> Result<NginxDump, String> {
        let limit = self.started + LIMIT;
        self.finish_by(limit)
    }
}

/// Reads nginx's version and configuration, bounded by [`LIMIT`].
pub fn read(test_command: &[String]) -> Result<NginxDump, String> {
    Reading::start(test_command).finish()
}

fn spawn(test_command: &[String]) -> Result<(Child, File), String> {
    let argv = argv(test_command)
        .ok_or_else(|| format!("nginx.test_command `{}` has no -t", test_command.join(" ")))?;
    let program = resolve_program(&argv[0]).map_err(|e| e.to_string())?;
    let failed = |e: &dyn std::fmt::Display| format!("`{}` could not run: {e}", argv.join(" "));
    let (read, write) = nix::unistd::pipe().map_err(|e| failed(&e))?;
    fcntl(read.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(|e| failed(&e))?;
    let stderr = write.try_clone().map_err(|e| failed(&e))?;
    // The command (holding the write ends) is dropped here, so EOF comes when nginx exits.
    let child = Command::new(program)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(write)
        .stderr(stderr)
        .spawn()
        .map_err(|e| failed(&e))?;
    Ok((child, File::from(read)))
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
            text: "nginx version: nginx/1.29.7\nconfigure arguments: --x\n\
                   # configuration file /x/n.conf:\nhttp {}\n"
                .into(),
        };
        assert_eq!(dump.version(), Some((1, 29, 7)));
        assert_eq!(dump.config(), "# configuration file /x/n.conf:\nhttp {}\n");
    }
}
