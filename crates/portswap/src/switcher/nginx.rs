//! The nginx switch: rewrite the include atomically, test the config and read nginx's dump
//! of it in one `nginx -V -T` run, check that nginx follows the include, reload, and wait
//! until every worker from before the reload has stopped accepting.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::nginx_dump::{self, NginxDump};
use super::workers::{self, Workers};
use super::{keepalive, nginx_follows, Fallback, Live, Switched, Switcher, Unswitched};
use crate::bounded::{self, Failed, Ran, Running};
use crate::config::{Config, Nginx};
use crate::duration::show;
use crate::error::{Error, NginxError, Result};
use crate::process::resolve_program;
use crate::timings::{self, timed};
use crate::{fsio, procfs};

/// What the config test learnt: nginx's dump of the configuration it tested, or why there
/// is none (`nginx.test_command` has no `-t`, or a wrapper such as sudo allows only `-t`).
type Tested = std::result::Result<NginxDump, String>;

/// Switches by rewriting nginx's include file and reloading nginx.
#[derive(Debug, Clone)]
pub struct NginxSwitcher {
    nginx: Nginx,
    ports: [u16; 2],
    /// The config test started ahead ([`Switcher::prepare`]), while the switch's own checks
    /// run.
    ahead: Arc<Mutex<Option<Ahead>>>,
}

/// A config test of the configuration as it is on disk, started before the switch's checks
/// (the include then was one render of the template): the running `nginx -V -T`.
#[derive(Debug)]
struct Ahead {
    argv: Vec<String>,
    running: Running,
    started: Instant,
}

impl NginxSwitcher {
    /// The switcher the configuration describes.
    pub fn new(config: &Config) -> NginxSwitcher {
        NginxSwitcher {
            nginx: config.nginx.clone(),
            ports: [config.slots[0].port, config.slots[1].port],
            ahead: Arc::default(),
        }
    }

    /// Starts `nginx -V -T` on the configuration as it is, when the include is one render of
    /// the template: the new include differs only in its port, so this run is the new
    /// configuration's test too, and it overlaps with the checks before the switch.
    fn test_ahead(&self) {
        let Some(argv) = nginx_dump::argv(&self.nginx.test_command) else {
            return;
        };
        let Ok(Some(include)) = self.read_include() else {
            return;
        };
        let renders = std::str::from_utf8(&include)
            .is_ok_and(|text| self.nginx.template.parse_port(text).is_ok());
        let Ok(program) = resolve_program(&argv[0]) else {
            return;
        };
        if !renders {
            return;
        }
        if let Ok(running) = Running::start(&program, &argv[1..], true) {
            let ahead = Ahead {
                argv,
                running,
                started: Instant::now(),
            };
            *self.ahead.lock().unwrap_or_else(|e| e.into_inner()) = Some(ahead);
        }
    }

    /// The dump of the test started ahead, when it passed with an include that is one render
    /// of the template (the one before this switch, or the one it just wrote: nginx may have
    /// read either) or without the include; `None` (the test runs again) otherwise.
    fn tested_ahead(&self, deadline: Instant) -> Option<NginxDump> {
        let ahead = self
            .ahead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        match ahead
            .running
            .finish(deadline.min(ahead.started + self.nginx.reload_timeout))
        {
            Ok(ran) if ran.status.success() => {
                let dump = NginxDump::of(&ran);
                let renders = nginx_follows::text_of(&dump, self.include())
                    .is_none_or(|text| self.nginx.template.parse_port(text).is_ok());
                renders.then_some(dump)
            }
            Ok(ran) => {
                log::debug!(
                    "`{}` ahead of the switch failed ({}): {}; testing after the write",
                    ahead.argv.join(" "),
                    ran.status,
                    nginx_dump::last_line(&ran)
                );
                None
            }
            Err(_) => None,
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
        if text.trim().is_empty() {
            return Err(NginxError::EmptyPidFile {
                pid_file: pid_file.to_path_buf(),
            }
            .into());
        }
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

    /// Runs `argv` (the config test or the reload command) to its end, at most until
    /// `deadline` (at most `nginx.reload_timeout` from when its step began) ([`bounded`]: its
    /// own process group, outputs read while it runs, killed with its group when still
    /// running then).
    fn run_bounded(
        &self,
        what: &str,
        argv: &[String],
        keep_stdout: bool,
        deadline: Instant,
    ) -> Result<Ran> {
        let program = resolve_program(&argv[0])?;
        let limit = self.nginx.reload_timeout;
        bounded::run(&program, &argv[1..], keep_stdout, deadline).map_err(|failed| {
            let (what, argv) = (what.to_string(), argv.to_vec());
            Error::from(match failed {
                Failed::Spawn(source) => NginxError::Spawn { what, argv, source },
                Failed::Hung => NginxError::Hung { what, argv, limit },
                Failed::Wait(source) => NginxError::Wait { what, argv, source },
            })
        })
    }

    /// Runs `argv` and fails unless it succeeds by `deadline`; the error carries nginx's
    /// reason.
    fn run(&self, what: &str, argv: &[String], deadline: Instant) -> Result<()> {
        let ran = self.run_bounded(what, argv, false, deadline)?;
        match ran.status.success() {
            true => Ok(()),
            false => Err(command_failed(what, argv, &ran)),
        }
    }

    /// The config test: `nginx.test_command` with `-t` turned into `-T` and `-V` added, one
    /// nginx run that tests the configuration and dumps it. When that form cannot run where
    /// the plain test can (a sudo rule for `nginx -t -q` only), the plain test runs and the
    /// dump is missing; so it is when `test_command` has no `-t`. All of it by `deadline`.
    fn config_test(&self, deadline: Instant) -> Result<Tested> {
        const WHAT: &str = "nginx config test";
        let test = &self.nginx.test_command;
        let Some(dump_argv) = nginx_dump::argv(test) else {
            self.run(WHAT, test, deadline)?;
            return Ok(Err(format!(
                "nginx.test_command `{}` has no -t",
                test.join(" ")
            )));
        };
        let ran = self.run_bounded(WHAT, &dump_argv, true, deadline)?;
        if ran.status.success() {
            return Ok(Ok(NginxDump::of(&ran)));
        }
        // nginx's own verdict on a configuration it rejects, or a signal: the test failed.
        let stderr = String::from_utf8_lossy(&ran.stderr);
        if stderr.contains("test failed") || ran.status.signal().is_some() {
            return Err(command_failed(WHAT, &dump_argv, &ran));
        }
        let why = format!(
            "`{}` failed ({}): {}",
            dump_argv.join(" "),
            ran.status,
            nginx_dump::last_line(&ran)
        );
        log::info!("{why}; running the config test as configured");
        self.run(WHAT, test, deadline)?;
        Ok(Err(why))
    }

    fn reload(&self, master: i32) -> Result<()> {
        match &self.nginx.reload_command {
            Some(argv) => self.run(
                "nginx reload",
                argv,
                Instant::now() + self.nginx.reload_timeout,
            ),
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
        let before =
            self.workers_between_reloads(master, Instant::now() + self.nginx.reload_timeout)?;
        self.reload(master)?;
        let applied = crate::process::wait_for(self.nginx.reload_timeout, || {
            let now = Workers::of(master);
            now.new_since(&before).next().is_some()
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

    /// The master's workers once it is between reloads ([`workers::between_reloads`]; at
    /// once when /proc does not say), waiting for that until `deadline`. Taken after the
    /// include is written, this snapshot holds every worker of a reload that read the
    /// include before it: the workers that appear after it read the include as written.
    fn workers_between_reloads(&self, master: i32, deadline: Instant) -> Result<Workers> {
        let between = || workers::between_reloads(master) != Some(false);
        if !between() {
            log::info!("nginx master {master} is inside another reload: waiting for it to end");
            let waited = Instant::now();
            if !crate::process::wait_for(deadline.saturating_duration_since(waited), between) {
                return Err(NginxError::MasterBusy {
                    master,
                    limit: self.nginx.reload_timeout,
                }
                .into());
            }
            log::info!("that reload ended after {}", show(waited.elapsed()));
        }
        Ok(Workers::of(master))
    }

    /// The include written, tested with nginx's dump of it, checked and reloaded; returns
    /// the master, the workers the reload replaced, the dump, and a line for the log.
    fn switch_steps(&self, port: u16, previous: &Option<Vec<u8>>) -> Result<Steps, Unswitched> {
        let master = timed("nginx master", || self.master())?;
        timed("checks", || {
            nginx_follows::refuse_second_master(master, &self.nginx.pid_file)
        })?;
        timed("include", || {
            fsio::write_atomic(
                self.include(),
                self.nginx.template.render(port).as_bytes(),
                0o644,
            )
        })?;
        let tested = Instant::now();
        // The whole test, ahead or not, within one nginx.reload_timeout from here (the
        // switch's budget counts one).
        let deadline = tested + self.nginx.reload_timeout;
        let dump = match self.tested_ahead(deadline) {
            Some(dump) => Ok(dump),
            None => match self.config_test(deadline) {
                Ok(dump) => dump,
                Err(e) => return Err(self.undone(previous, e, true)),
            },
        };
        let test_time = tested.elapsed();
        timings::note("config test", test_time);
        if let Ok(dump) = &dump {
            let followed = timed("checks", || nginx_follows::check(dump, &self.nginx, master));
            if let Err(e) = followed {
                return Err(self.undone(previous, e, true));
            }
        }
        let reload_started = Instant::now();
        let deadline = reload_started + self.nginx.reload_timeout;
        // A reload still under way may read either include: putting the old one back proves
        // nothing about what nginx serves once it ends, so the intent stays for a re-run.
        let before = match self.workers_between_reloads(master, deadline) {
            Ok(before) => before,
            Err(e) => return Err(self.undone(previous, e, false)),
        };
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
        let mut ready: Option<Instant> = None;
        let done = loop {
            now = Workers::of(master);
            if ready.is_none() && now.replacements_ready(&before) {
                ready = Some(Instant::now());
            }
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
            let stale: Vec<i32> = now.new_since(&before).collect();
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
        let ready = ready.unwrap_or_else(Instant::now);
        timings::note("reload", ready - reload_started);
        timings::note("handover", ready.elapsed());
        let detail = format!(
            "config test {}, reload {} (workers {:?} -> {:?})",
            show(test_time),
            show(reload_started.elapsed()),
            before.serving,
            now.serving
        );
        Ok(Steps {
            master,
            retired: before.serving,
            dump,
            detail,
        })
    }
}

/// What [`NginxSwitcher::switch_steps`] leaves for the rest of the switch.
struct Steps {
    master: i32,
    retired: Vec<i32>,
    dump: Tested,
    detail: String,
}

/// A command that ran and failed: its status and the line of its stderr that says why
/// (nginx prints the reason, `[emerg] ...`, first and `... test failed` last).
fn command_failed(what: &str, argv: &[String], ran: &Ran) -> Error {
    let stderr = String::from_utf8_lossy(&ran.stderr);
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
    NginxError::Command {
        what: what.to_string(),
        argv: argv.to_vec(),
        status: ran.status.to_string(),
        detail,
        hint,
    }
    .into()
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
    fn prepare(&self) {
        self.test_ahead();
    }

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
        let previous = match fallback {
            Fallback::AsFound => self.read_include()?,
            Fallback::Recorded { include, .. } => include.clone(),
        };
        let steps = self.switch_steps(port, &previous)?;
        let mut detail = steps.detail;
        let limit = started + self.nginx.reload_timeout;
        let caveat = match &steps.dump {
            Ok(dump) => {
                let note = timed("keep-alive wait", || {
                    keepalive::after_reload(dump, steps.master, &steps.retired, limit)
                });
                if let Some(note) = note {
                    detail = format!("{detail}; {note}");
                }
                None
            }
            Err(why) => Some(format!(
                "not checked: nginx's loaded configuration ({why}): that nginx reads the \
                 include and nothing overrides it, nor whether old workers keep idle \
                 keep-alive connections"
            )),
        };
        Ok(Switched {
            elapsed: started.elapsed(),
            detail,
            caveat,
        })
    }
}
