//! Bad flags, and the refusals (exit 4): acting could harm the live app, a foreign process or
//! a switch that was cut short.

use super::NotServing;
use std::path::PathBuf;

/// Bad command-line flags (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// A flag the hook does not take, or one without its value.
    #[error("{problem}; see `{hook} --help`")]
    Flag {
        /// The hook's name.
        hook: &'static str,
        /// What is wrong with the command line.
        problem: String,
    },
    /// `DEPLOYMENT_ID` longer than any deployment id.
    #[error("DEPLOYMENT_ID is {length} bytes ({start}); at most {limit} are taken")]
    DeploymentIdTooLong {
        /// Its first characters, escaped.
        start: String,
        /// Its length in bytes.
        length: usize,
        /// The most taken.
        limit: usize,
    },
    /// `--port` names no slot.
    #[error("--port {port} is not a slot ({} or {})", slots[0], slots[1])]
    NotASlot {
        /// The port given.
        port: u16,
        /// The two slots' ports.
        slots: [u16; 2],
    },
}

/// Why portswap would not act; nothing was changed (exit 4).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// `stop` of the live slot without `--force`.
    #[error(
        "port {port} is live (nginx sends traffic to it); stop the idle slot, or pass --force"
    )]
    LiveSlot {
        /// The live port.
        port: u16,
    },
    /// A process that is not portswap's app holds the slot's port.
    #[error(
        "port {port} is held by pid {pid} (`{command}`), which is not portswap's app{}{}",
        unit.as_ref().map(|u| format!(" (not in {u})")).unwrap_or_default(),
        match other_state {
            None => "; stop it yourself or pass --force to stop".to_string(),
            Some(dir) => format!(
                " of this state.dir: it is portswap's app of another state directory, {} \
                 (another configuration on this host, or an earlier relative state.dir); stop \
                 it with that configuration's hooks, or pass --force to stop",
                dir.display()
            ),
        }
    )]
    Foreign {
        /// The slot's port.
        port: u16,
        /// The holder.
        pid: i32,
        /// Its command line.
        command: String,
        /// The slot's unit, when systemd supervises the app.
        unit: Option<String>,
        /// The state directory of the portswap marker it carries, when another's.
        other_state: Option<PathBuf>,
    },
    /// The port is listened on by a process this hook cannot identify.
    #[error("{reason}; nothing was {untouched}")]
    Unidentified {
        /// Why it cannot be identified (from [`crate::ownership::Holder::Unidentified`]).
        reason: String,
        /// `signalled` or `stopped`.
        untouched: &'static str,
    },
    /// The port was taken while `start` staged the release.
    #[error("port {port} is no longer free right before the launch: {why}; nothing was started")]
    TakenAtLaunch {
        /// The idle slot's port.
        port: u16,
        /// Who holds it.
        why: String,
    },
    /// A health answer that did not come from the app `start` launched.
    #[error("port {port} answered {status}, but not from the app start launched: {why}")]
    NotTheApp {
        /// The idle slot's port.
        port: u16,
        /// The HTTP status of the answer.
        status: u16,
        /// Who listens instead.
        why: NotServing,
    },
    /// `switch` to a port whose listener is not the slot's app.
    #[error("refusing to switch to port {port}: {why}; nginx unchanged")]
    NotOursToSwitch {
        /// The target port.
        port: u16,
        /// Who listens instead.
        why: NotServing,
    },
    /// `--rollback` while a port that is not a slot is live.
    #[error("port {port} is live and not a slot: portswap rolls back only between its slots")]
    RollbackFromUnmanaged {
        /// The live port.
        port: u16,
    },
    /// `--rollback` or `--force` to a slot where nothing listens: never an OK for a dead
    /// port, and no hint at `--force`, which skips only the health check.
    #[error(
        "refusing to switch to port {port}: nothing listens there{}; nginx unchanged",
        match (rollback, deployment) {
            (true, Some(d)) => format!(
                " (deployment {d}, the previous version, is gone: it lives only until the next \
                 deployment's ApplicationStop)"
            ),
            (true, None) => " (the previous version is gone: it lives only until the next \
                 deployment's ApplicationStop)"
                .to_string(),
            (false, _) => " (--force skips only the health check)".to_string(),
        }
    )]
    NothingListens {
        /// The target port.
        port: u16,
        /// The deployment its slot record names, if any.
        deployment: Option<String>,
        /// True for `--rollback`.
        rollback: bool,
    },
    /// `--rollback` to an app that never served: it started after the last switch (a
    /// deployment whose health or switch failed).
    #[error(
        "refusing to roll back to port {port}: it runs deployment {deployment}, which never went \
         live (the version that served before is gone); pass --rollback --force to switch to \
         it anyway; nginx unchanged"
    )]
    NeverLive {
        /// The target port.
        port: u16,
        /// The deployment that started the app there.
        deployment: String,
    },
    /// `--rollback` with nothing live.
    #[error("nothing is live yet: nothing to roll back to")]
    NothingToRollBack,
    /// `--rollback` after the first switch took over from a port portswap does not manage.
    #[error(
        "the switch to port {live} took over from port {previous}, which portswap does not \
         manage: no slot to roll back to; to go back, put `{line}` into {} and reload nginx",
        include.display()
    )]
    RollbackToUnmanaged {
        /// The live slot.
        live: u16,
        /// The unmanaged port it took over from.
        previous: u16,
        /// The include line that points nginx back there.
        line: String,
        /// The include.
        include: PathBuf,
    },
    /// An intent left behind: a switch was cut short.
    #[error(
        "a switch from {} to port {to} (deployment {deployment}) was cut short; nginx may \
         still send traffic to either port (the include names {}); fix: re-run `switch` \
         (with DEPLOYMENT_ID={deployment}, or by hand) to complete it, then retry; nothing was \
         stopped",
        port_or(*from, "nothing"),
        port_or(*included, "none")
    )]
    CutShort {
        /// The port it switched from, if any.
        from: Option<u16>,
        /// The port it switched to.
        to: u16,
        /// Its deployment.
        deployment: String,
        /// The port the include names now, if any.
        included: Option<u16>,
    },
    /// systemd would append the app's output through a path another user can change.
    #[error(
        "systemd appends the app's output to {} as root, following links, and {who} could \
         point it at any file; fix: an app.log_dir only root can change (the default \
         <state.dir>/logs, or /var/log/NAME), or systemd.output: journal",
        log.display()
    )]
    SharedLogPath {
        /// The app log.
        log: PathBuf,
        /// Who can change a directory on its path.
        who: String,
    },
    /// A unit file of the slot's name that portswap did not write.
    #[error(
        "{} exists and is not a unit portswap wrote (a link, as `systemctl mask` or `systemctl \
         link` make, or no `{marker}` first line); rename systemd.unit or remove that unit \
         yourself",
        path.display()
    )]
    ForeignUnit {
        /// The unit file.
        path: PathBuf,
        /// The first line portswap writes.
        marker: &'static str,
    },
    /// The slot's unit is masked.
    #[error("{unit} is masked; portswap never unmasks a unit; unmask it yourself or rename systemd.unit")]
    MaskedUnit {
        /// The unit.
        unit: String,
    },
    /// nftables mode: something listens on the service port.
    #[error(
        "port {port} (switch.service_port) is already listened on by pid {pid} ({command}); \
         nginx must proxy to a port nothing listens on: choose another switch.service_port; \
         nothing changed"
    )]
    ServicePortTaken {
        /// The service port.
        port: u16,
        /// The listener.
        pid: i32,
        /// Its description.
        command: String,
    },
    /// nginx's configuration (as `nginx -T` shows it) never includes `nginx.include`.
    #[error(
        "nginx does not read {}: no `include` in the configuration it tested ({}) names that \
         file, so a switch would change nothing nginx serves; fix: include it where nginx \
         proxies to the app (README, step 1), or set nginx.include to the file nginx \
         includes; nothing changed",
        include.display(),
        config.display()
    )]
    IncludeNotRead {
        /// `nginx.include`.
        include: PathBuf,
        /// The main configuration file nginx tested.
        config: PathBuf,
    },
    /// A `set` of the include's variable that nginx runs after the include's.
    #[error(
        "{at}: `{directive}` {how} {}, and overrides what the include sets: nginx would keep \
         proxying where that line says; fix: remove it (the include must be the last to set \
         that variable); nothing changed",
        include.display()
    )]
    IncludeOverridden {
        /// `nginx.include`.
        include: PathBuf,
        /// Where the overriding directive is (`file:line`).
        at: String,
        /// The directive, as nginx reads it.
        directive: String,
        /// Where it stands relative to the include.
        how: String,
    },
    /// `nginx.pid_file` is not the pid file of the configuration nginx tested.
    #[error(
        "nginx.pid_file is {}, but the configuration nginx tested ({}) writes its master's \
         pid to {}: a reload of the master named in {} would not load what was tested; fix: \
         set nginx.pid_file to {}, or nginx.test_command to that other nginx (`-c`, `-p`); \
         nothing changed",
        pid_file.display(),
        config.display(),
        written.display(),
        pid_file.display(),
        written.display()
    )]
    PidFileElsewhere {
        /// `nginx.pid_file`.
        pid_file: PathBuf,
        /// The main configuration file nginx tested.
        config: PathBuf,
        /// Where that configuration's master writes its pid.
        written: PathBuf,
    },
    /// The master named by `nginx.pid_file` runs another configuration than the one tested.
    #[error(
        "nginx.pid_file {} names master pid {master}, which runs {}, but the config test \
         read {}: a reload would not load what was tested; fix: give nginx.test_command that \
         master's `-c` (and `-p`), or nginx.pid_file the pid file of the nginx tested; \
         nothing changed",
        pid_file.display(),
        running.display(),
        tested.display()
    )]
    OtherMaster {
        /// `nginx.pid_file`.
        pid_file: PathBuf,
        /// The master it names.
        master: i32,
        /// The configuration file that master runs.
        running: PathBuf,
        /// The configuration file the test read.
        tested: PathBuf,
    },
    /// Two nginx masters serve (a binary upgrade in progress or left half-done).
    #[error(
        "a second nginx master, pid {other} ({how}), runs beside pid {master}: nginx is in the \
         middle of a binary upgrade and both masters' workers accept connections, so a reload \
         of one leaves the other serving the old port; fix: finish the upgrade (`kill -QUIT \
         {other}`) or roll it back (`kill -HUP {other}`, then `kill -QUIT {master}`), then \
         retry; nothing changed"
    )]
    SecondMaster {
        /// The master `nginx.pid_file` names.
        master: i32,
        /// The other master.
        other: i32,
        /// How it was found.
        how: String,
    },
}

/// `port N`, or `none` when there is no port.
fn port_or(port: Option<u16>, none: &str) -> String {
    port.map_or(none.to_string(), |p| format!("port {p}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn refusals_read_as_before_and_exit_4() {
        let foreign = |unit: Option<&str>| {
            Error::from(Refusal::Foreign {
                port: 8082,
                pid: 77,
                command: "python3 -m http.server".into(),
                unit: unit.map(str::to_string),
                other_state: None,
            })
        };
        assert_eq!(
            foreign(None).to_string(),
            "port 8082 is held by pid 77 (`python3 -m http.server`), which is not portswap's \
             app; stop it yourself or pass --force to stop"
        );
        assert_eq!(
            foreign(Some("portswap-8082.service")).to_string(),
            "port 8082 is held by pid 77 (`python3 -m http.server`), which is not portswap's \
             app (not in portswap-8082.service); stop it yourself or pass --force to stop"
        );
        assert_eq!(foreign(None).exit_code(), 4);
        let cut = Error::from(Refusal::CutShort {
            from: None,
            to: 8082,
            deployment: "d-2".into(),
            included: Some(8081),
        });
        assert!(cut.to_string().starts_with(
            "a switch from nothing to port 8082 (deployment d-2) was cut short; nginx may still \
             send traffic to either port (the include names port 8081); fix: re-run `switch` \
             (with DEPLOYMENT_ID=d-2,"
        ));
        assert_eq!(cut.exit_code(), 4);
        let usage = Error::from(UsageError::NotASlot {
            port: 9,
            slots: [8081, 8082],
        });
        assert_eq!(usage.to_string(), "--port 9 is not a slot (8081 or 8082)");
        assert_eq!(usage.exit_code(), 2);
        let second = Error::from(Refusal::SecondMaster {
            master: 20,
            other: 10,
            how: "/run/nginx.pid.oldbin".into(),
        });
        assert!(second.to_string().starts_with(
            "a second nginx master, pid 10 (/run/nginx.pid.oldbin), runs beside pid 20: nginx \
             is in the middle of a binary upgrade"
        ));
        assert_eq!(second.exit_code(), 4);
        let overridden = Error::from(Refusal::IncludeOverridden {
            include: "/etc/nginx/conf.d/service-url.inc".into(),
            at: "/etc/nginx/conf.d/app.conf:12".into(),
            directive: "set $service_url http://127.0.0.1:9000".into(),
            how: "comes after the include of".into(),
        });
        assert_eq!(
            overridden.to_string(),
            "/etc/nginx/conf.d/app.conf:12: `set $service_url http://127.0.0.1:9000` comes \
             after the include of /etc/nginx/conf.d/service-url.inc, and overrides what the \
             include sets: nginx would keep proxying where that line says; fix: remove it (the \
             include must be the last to set that variable); nothing changed"
        );
        assert_eq!(overridden.exit_code(), 4);
    }
}
