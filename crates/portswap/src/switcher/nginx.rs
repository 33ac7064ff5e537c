//! The nginx switch: rewrite the include atomically, test the config, reload, and wait until
//! every worker from before the reload has stopped accepting.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::keepalive::Probe;
use super::workers::Workers;
use super::{Fallback, Live, Switched, Switcher, Unswitched};
use crate::config::{Config, Nginx};
use crate::duration::show;
use crate::error::{Error, NginxError, Result};
use crate::process::resolve_program;
use crate::{fsio, procfs};

/// Switches by rewriting nginx's include file and reloading nginx.
#[derive(Debug, Clone)]
pub struct NginxSwitcher {
    nginx: Nginx,
    ports: [u16; 2],
}

impl NginxSwitcher {
    /// The switcher the configuration describes.
    pub fn new(config: &Config) -> NginxSwitcher {
        NginxSwitcher {
            nginx: config.nginx.clone(),
            ports: [config.slots[0].port, config.slots[1].port],
        }
    }

    fn include(&self) -> &Path {
        &self.nginx.include
    }

    /// The include's bytes (`None` when there is none).
    pub fn read_include(&self) -> Result<Option<Vec<u8>>> {
        fsio::read_small(self.include(), 64 * 1024)
    }

    /// Puts the include back as it was (or removes it when there was none); true when done.
    fn restore(&self, previous: &Option<Vec<u8>>) -> bool {
        let result = match previous {
            Some(bytes) => fsio::write_atomic(self.include(), bytes, 0o644),
            None => match std::fs::remove_file(self.include()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(Error::io("cannot remove", self.include(), e))
                }
                _ => Ok(()),
            },
        };
        match result {
            Ok(()) => {
                log::info!("restored {}", self.include().display());
                true
            }
            Err(e) => {
                log::error!("could not restore {}: {e}", self.include().display());
                false
            }
        }
    }

    /// `error` after the include was put back: proven only when that worked and `settled`.
    fn undone(&self, previous: &Option<Vec<u8>>, error: Error, settled: bool) -> Unswitched {
        let restored = self.restore(previous);
        Unswitched {
            error,
            proven: restored && settled,
        }
    }

    /// The running master, from the pid file; an error says what is wrong with nginx.
    fn master(&self) -> Result<i32> {
        let pid_file = &self.nginx.pid_file;
        let bytes = fsio::read_small(pid_file, 64)?.ok_or_else(|| {
            Error::from(NginxError::NoPidFile {
                pid_file: pid_file.to_path_buf(),
            })
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let pid: i32 = text.trim().parse().map_err(|_| {
            Error::from(NginxError::BadPidFile {
                pid_file: pid_file.to_path_buf(),
                text: text.trim().to_string(),
            })
        })?;
        crate::ownership::nginx_master(pid).map_err(|what| {
            Error::from(NginxError::StalePidFile {
                pid_file: pid_file.to_path_buf(),
                pid,
                what: what.to_string(),
            })
        })?;
        Ok(pid)
    }

    /// Runs `argv` (the config test or the reload command) in its own process group,
    /// bounded by `nginx.reload_timeout`: a command still running then (a hung sudo or
    /// systemctl) is killed with its whole group, and the error names it.
    fn run(&self, what: &str, argv: &[String]) -> Result<()> {
        let program = resolve_program(&argv[0])?;
        let mut child = Command::new(&program)
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|source| NginxError::Spawn {
                what: what.to_string(),
                argv: argv.to_vec(),
                source,
            })?;
        let limit = self.nginx.reload_timeout;
        let deadline = Instant::now() + limit;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Ok(None) => {
                    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(NginxError::Hung {
                        what: what.to_string(),
                        argv: argv.to_vec(),
                        limit,
                    }
                    .into());
                }
                Err(e) => {
                    return Err(NginxError::Wait {
                        what: what.to_string(),
                        argv: argv.to_vec(),
                        source: e,
                    }
                    .into())
                }
            }
        };
        // What it wrote to stderr (nginx -t: a few lines, far below the pipe's capacity);
        // non-blocking, so a daemonized child keeping the pipe open cannot hold us.
        let mut stderr = Vec::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = nix::fcntl::fcntl(
                pipe.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            );
            let _ = pipe.read_to_end(&mut stderr);
        }
        let output = std::process::Output {
            status,
            stdout: Vec::new(),
            stderr,
        };
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        // nginx -t prints the reason (`[emerg] ...`) first and `... test failed` last.
        let detail = stderr
            .lines()
            .find(|l| {
                ["[emerg]", "[alert]", "[crit]", "[error]"]
                    .iter()
                    .any(|t| l.contains(t))
            })
            .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()))
            .unwrap_or("no output")
            .trim()
            .to_string();
        let hint = if detail.contains("sudo")
            || detail.contains("not permitted")
            || detail.contains("Permission denied")
        {
            "; allow it for this user in sudoers (see docs/non-root.md)"
        } else {
            ""
        };
        Err(NginxError::Command {
            what: what.to_string(),
            argv: argv.to_vec(),
            status: output.status.to_string(),
            detail,
            hint,
        }
        .into())
    }

    fn reload(&self, master: i32) -> Result<()> {
        match &self.nginx.reload_command {
            Some(argv) => self.run("nginx reload", argv),
            None => kill(Pid::from_raw(master), Signal::SIGHUP).map_err(|e| {
                let hint = if e == nix::errno::Errno::EPERM {
                    "; run as the nginx user or set nginx.reload_command with a sudoers rule (see docs/non-root.md)"
                } else {
                    ""
                };
                Error::from(NginxError::Signal {
                    master,
                    source: e,
                    hint,
                })
            }),
        }
    }

    /// Reloads nginx again (after the include was restored) and waits, bounded by
    /// `nginx.reload_timeout`, until new workers serve and none of `stale` (the workers that
    /// read the new include) still does.
    fn reload_again(&self, master: i32, stale: &[i32]) -> Result<()> {
        let before = Workers::of(master);
        self.reload(master)?;
        let applied = crate::process::wait_for(self.nginx.reload_timeout, || {
            let now = Workers::of(master);
            now.serving.iter().any(|p| !before.serving.contains(p))
                && !now.serving.iter().any(|p| stale.contains(p))
        });
        if applied {
            Ok(())
        } else {
            Err(NginxError::SecondReload {
                limit: self.nginx.reload_timeout,
            }
            .into())
        }
    }

    fn switch_steps(&self, port: u16, previous: &Option<Vec<u8>>) -> Result<String, Unswitched> {
        let master = self.master()?;
        let written = Instant::now();
        fsio::write_atomic(
            self.include(),
            self.nginx.template.render(port).as_bytes(),
            0o644,
        )?;
        log::debug!("include written in {}", show(written.elapsed()));
        let tested = Instant::now();
        if let Err(e) = self.run("nginx config test", &self.nginx.test_command) {
            return Err(self.undone(previous, e, true));
        }
        let test_time = tested.elapsed();
        let before = Workers::of(master);
        let reload_started = Instant::now();
        if let Err(e) = self.reload(master) {
            // A failed reload command may still have signalled nginx: proven only while the
            // workers are those from before.
            let settled = Workers::of(master).serving == before.serving;
            return Err(self.undone(previous, e, settled));
        }
        log::debug!(
            "config test {}, reload sent to master {master}",
            show(test_time)
        );
        let mut now;
        let mut retired = !self.nginx.quit_old_workers;
        let deadline = reload_started + self.nginx.reload_timeout;
        let done = loop {
            now = Workers::of(master);
            if now.reload_done(&before) {
                break true;
            }
            if !retired && now.replacements_ready(&before) {
                // nginx would keep the old workers accepting for another ~100 ms, sending
                // part of the new requests to the old port: retire them now.
                let signalled = now.retire(&before);
                log::debug!(
                    "new workers ready after {}; asked {signalled} old worker(s) to quit",
                    show(reload_started.elapsed())
                );
                retired = true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        if !done {
            let restored = self.restore(previous);
            let stale: Vec<i32> = (now.serving.iter())
                .filter(|p| !before.serving.contains(p))
                .copied()
                .collect();
            let mut settled = restored;
            let reloaded = if stale.is_empty() {
                String::new()
            } else {
                // New workers run the new include: reload again so nginx serves the
                // restored one, as the include says.
                match self.reload_again(master, &stale) {
                    Ok(()) => "; nginx reloaded with it".to_string(),
                    Err(e) => {
                        settled = false;
                        format!("; nginx may still serve port {port}: {e}")
                    }
                }
            };
            let reason = if procfs::ProcId::of(master).is_none() {
                "the nginx master exited".to_string()
            } else if now.serving == before.serving {
                "nginx kept its old workers: it rejected the configuration (see its error log)"
                    .to_string()
            } else {
                format!("old workers still accept connections: {:?}", before.serving)
            };
            return Err(Unswitched {
                error: NginxError::Incomplete {
                    limit: self.nginx.reload_timeout,
                    reason,
                    reloaded,
                }
                .into(),
                proven: settled,
            });
        }
        Ok(format!(
            "config test {}, reload {} (workers {:?} -> {:?})",
            show(test_time),
            show(reload_started.elapsed()),
            before.serving,
            now.serving
        ))
    }
}

impl NginxSwitcher {
    /// The port the include names, whatever it is (`None` when there is no include); an
    /// include that cannot be parsed is an error naming the file and the fix.
    pub fn included_port(&self) -> Result<Option<u16>> {
        let Some(bytes) = self.read_include()? else {
            return Ok(None);
        };
        let text = String::from_utf8(bytes).map_err(|_| {
            Error::from(NginxError::IncludeNotUtf8 {
                include: self.include().to_path_buf(),
            })
        })?;
        let port = self.nginx.template.parse_port(&text).map_err(|why| {
            Error::from(NginxError::IncludeUnparsable {
                include: self.include().to_path_buf(),
                why: why.to_string(),
            })
        })?;
        Ok(Some(port))
    }
}

impl NginxSwitcher {
    /// True when every serving worker of the running master started after the include was
    /// last written, i.e. nginx has loaded the include as it is on disk. False when that
    /// cannot be shown (a switch killed between its write and the reload leaves the file
    /// ahead of nginx): the caller then reloads rather than trusting the file.
    pub fn include_loaded(&self) -> bool {
        let Ok(written) = std::fs::symlink_metadata(self.include()).and_then(|m| m.modified())
        else {
            return false;
        };
        let Ok(master) = self.master() else {
            return false;
        };
        let serving = Workers::of(master).serving;
        !serving.is_empty()
            && serving
                .iter()
                .all(|w| procfs::started_at(*w).is_some_and(|at| at > written))
    }
}

impl Switcher for NginxSwitcher {
    /// A well-formed include naming a port that is not a slot is [`Live::Unmanaged`]; an
    /// include that does not parse is refused (state error).
    fn live(&self) -> Result<Live> {
        Ok(match self.included_port()? {
            None => Live::Nothing,
            Some(port) if self.ports.contains(&port) => Live::Slot(port),
            Some(port) => Live::Unmanaged(port),
        })
    }

    fn switch_to(&self, port: u16, fallback: &Fallback) -> Result<Switched, Unswitched> {
        let started = Instant::now();
        let probe = Probe::start(&self.nginx.test_command);
        let previous = match fallback {
            Fallback::AsFound => self.read_include()?,
            Fallback::Recorded { include, .. } => include.clone(),
        };
        let mut detail = self.switch_steps(port, &previous)?;
        let limit = started + self.nginx.reload_timeout;
        if let Some(note) = probe.after_reload(self.master().ok(), limit) {
            detail = format!("{detail}; {note}");
        }
        Ok(Switched {
            elapsed: started.elapsed(),
            detail,
        })
    }
}
