//! Errors of pointing traffic at a slot: nginx (its include, pid file, config test and
//! reload) and the nftables rule.

use std::path::PathBuf;
use std::time::Duration;

use super::Kind;
use crate::duration::show;

/// nginx could not be switched, or its include cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum NginxError {
    /// No pid file: nginx is not running.
    #[error("nginx is not running: no pid file {} (start nginx first)", pid_file.display())]
    NoPidFile {
        /// `nginx.pid_file`.
        pid_file: PathBuf,
    },
    /// The pid file is empty: nginx is not running (`nginx -t` creates it so when nginx is
    /// down, and leaves it).
    #[error(
        "nginx is not running: pid file {} is empty (as `nginx -t` leaves it while nginx is \
         down); start nginx first",
        pid_file.display()
    )]
    EmptyPidFile {
        /// `nginx.pid_file`.
        pid_file: PathBuf,
    },
    /// The pid file holds no pid.
    #[error("nginx pid file {} holds `{text}`, not a pid", pid_file.display())]
    BadPidFile {
        /// `nginx.pid_file`.
        pid_file: PathBuf,
        /// What it holds.
        text: String,
    },
    /// The pid file names a process that is not nginx's master.
    #[error(
        "nginx is not running: pid file {} names pid {pid}, which is {what} (stale pid file); \
         nothing was signalled",
        pid_file.display()
    )]
    StalePidFile {
        /// `nginx.pid_file`.
        pid_file: PathBuf,
        /// The pid it names.
        pid: i32,
        /// What that process is.
        what: String,
    },
    /// The config test or reload command could not be started.
    #[error("{what} `{}` could not run: {source}", argv.join(" "))]
    Spawn {
        /// `nginx config test` or `nginx reload`.
        what: String,
        /// Its argv.
        argv: Vec<String>,
        /// The system's error.
        source: std::io::Error,
    },
    /// The command was still running after `nginx.reload_timeout` and was killed.
    #[error(
        "{what} `{}` hung: still running after {} (nginx.reload_timeout), killed with its \
         process group",
        argv.join(" "),
        show(*limit)
    )]
    Hung {
        /// `nginx config test` or `nginx reload`.
        what: String,
        /// Its argv.
        argv: Vec<String>,
        /// `nginx.reload_timeout`.
        limit: Duration,
    },
    /// Waiting for the command failed.
    #[error("{what} `{}`: cannot wait for it: {source}", argv.join(" "))]
    Wait {
        /// `nginx config test` or `nginx reload`.
        what: String,
        /// Its argv.
        argv: Vec<String>,
        /// The system's error.
        source: std::io::Error,
    },
    /// The command failed: its status and the line of its stderr that says why.
    #[error("{what} `{}` failed ({status}): {detail}{hint}", argv.join(" "))]
    Command {
        /// `nginx config test` or `nginx reload`.
        what: String,
        /// Its argv.
        argv: Vec<String>,
        /// Its exit status.
        status: String,
        /// nginx's `[emerg]` line, or the last line of stderr.
        detail: String,
        /// A pointer to the sudoers fix, when permission is the problem.
        hint: &'static str,
    },
    /// SIGHUP to the master failed.
    #[error("cannot signal the nginx master (pid {master}): {source}{hint}")]
    Signal {
        /// The master's pid.
        master: i32,
        /// The error.
        source: nix::errno::Errno,
        /// A pointer to the fix, when permission is the problem.
        hint: &'static str,
    },
    /// The master stayed inside another reload (SIGHUP blocked) until the reload's limit.
    #[error(
        "the nginx master {master} was still inside another reload after {} (SIGHUP blocked): \
         it may have read the include before this switch wrote it, so no reload was sent; \
         re-run switch once nginx has settled",
        show(*limit)
    )]
    MasterBusy {
        /// The master's pid.
        master: i32,
        /// `nginx.reload_timeout`.
        limit: Duration,
    },
    /// The reload that undoes a timed-out one did not complete either.
    #[error("the second reload did not complete within {}", show(*limit))]
    SecondReload {
        /// `nginx.reload_timeout`.
        limit: Duration,
    },
    /// The reload did not complete; the include was restored.
    #[error(
        "reload not complete after {}: {reason}; include restored{reloaded}",
        show(*limit)
    )]
    Incomplete {
        /// `nginx.reload_timeout`.
        limit: Duration,
        /// What nginx did instead.
        reason: String,
        /// What the reload with the restored include did.
        reloaded: String,
    },
    /// An upstream pool that keeps connections to the nftables service port.
    #[error(
        "nginx keeps upstream connections to the service port: {pool}; they would stay on the \
         old slot after a switch; fix: `keepalive 0;` in that block, or `proxy_pass \
         $service_url` without an upstream block; nothing changed"
    )]
    UpstreamPool {
        /// The block, as nginx's dump shows it.
        pool: String,
    },
    /// The include is not UTF-8 (exit 2).
    #[error("include {} is not UTF-8; {FIX_INCLUDE}", include.display())]
    IncludeNotUtf8 {
        /// The include.
        include: PathBuf,
    },
    /// The include does not hold one rendering of `nginx.template` (exit 2).
    #[error("include {}: {why}; {FIX_INCLUDE}", include.display())]
    IncludeUnparsable {
        /// The include.
        include: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// The fix for an include portswap cannot read.
const FIX_INCLUDE: &str = "fix: write a valid include (or delete it if nothing is live) and retry";

impl NginxError {
    /// What the operator must do about it.
    pub fn kind(&self) -> Kind {
        match self {
            NginxError::IncludeNotUtf8 { .. } | NginxError::IncludeUnparsable { .. } => {
                Kind::BadInput
            }
            _ => Kind::Failed,
        }
    }
}

/// The nftables rule could not be read, written or confirmed, or is not portswap's.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The `nft` program is missing.
    #[error(
        "`nft` not found: switch.by nftables needs the package `nftables` (apt-get install -y \
         nftables, or dnf install -y nftables)"
    )]
    NotInstalled,
    /// `nft` could not be started.
    #[error("`{call}` could not run: {source}")]
    Spawn {
        /// The command line.
        call: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// Waiting for `nft` failed.
    #[error("`{call}`: {source}")]
    Wait {
        /// The command line.
        call: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// `nft` did not finish in time: killed.
    #[error("`{call}` did not finish within {}: killed", crate::duration::show(*limit))]
    Hung {
        /// The command line.
        call: String,
        /// Its time limit.
        limit: std::time::Duration,
    },
    /// `nft` was not allowed to change the ruleset.
    #[error("`{call}`: {first}: changing nftables needs CAP_NET_ADMIN; run the hook as root")]
    NotPermitted {
        /// The command line.
        call: String,
        /// nft's first line of error output.
        first: String,
    },
    /// `nft` failed.
    #[error("`{call}` failed ({status}): {first}")]
    Failed {
        /// The command line.
        call: String,
        /// Its exit status.
        status: String,
        /// nft's first line of error output.
        first: String,
    },
    /// portswap's table holds a rule it did not write (exit 2).
    #[error(
        "nftables table {table} holds a rule portswap did not write: `{line}`; fix: `nft delete \
         table {table}`, then `switch --restore` or `switch`"
    )]
    ForeignRule {
        /// The table.
        table: &'static str,
        /// The rule.
        line: String,
    },
    /// portswap's table holds more than one redirect (exit 2).
    #[error(
        "nftables table {table} holds {count} redirect rules, portswap writes exactly one; fix: \
         `nft delete table {table}`, then `switch --restore` or `switch`"
    )]
    ManyRules {
        /// The table.
        table: &'static str,
        /// How many.
        count: usize,
    },
    /// The rule redirects another port than `switch.service_port` (exit 2).
    #[error(
        "nftables table {table} redirects port {redirected}, but switch.service_port is \
         {configured}; fix: set switch.service_port back, or `nft delete table {table}` and \
         `switch`"
    )]
    OtherServicePort {
        /// The table.
        table: &'static str,
        /// The port the rule redirects.
        redirected: u16,
        /// `switch.service_port`.
        configured: u16,
    },
    /// The rule sends traffic to a port that is not a slot (exit 2).
    #[error(
        "nftables rule `{rule}` sends traffic to port {port}, which is neither slot ({} or {}); \
         fix: `nft delete table {table}`, then `switch`",
        slots[0],
        slots[1]
    )]
    NotASlot {
        /// The table.
        table: &'static str,
        /// The rule.
        rule: String,
        /// Where it sends traffic.
        port: u16,
        /// The slots.
        slots: [u16; 2],
    },
    /// The rule is gone while a slot was recorded live (exit 2).
    #[error(
        "nginx proxies to 127.0.0.1:{service_port} ({}), but nftables has no portswap rule, \
         while port {live} was recorded live (the ruleset was lost: reboot or `nft flush \
         ruleset`?); fix: `switch --restore`",
        include.display()
    )]
    RuleLost {
        /// `switch.service_port`.
        service_port: u16,
        /// The include that points nginx there.
        include: PathBuf,
        /// The port recorded live.
        live: u16,
    },
    /// The include names neither the service port nor a slot (exit 2).
    #[error(
        "include {} sends traffic to port {port}, which is neither the service port \
         {service_port} nor a slot; fix the include (or delete it), or take over from port \
         {port} with one switch in nginx-reload mode first, and retry; nothing changed",
        include.display()
    )]
    Elsewhere {
        /// The include.
        include: PathBuf,
        /// The port it names.
        port: u16,
        /// `switch.service_port`.
        service_port: u16,
    },
    /// The rule read back is not the one applied.
    #[error("nftables rule did not take: read back {read:?} instead of `{wanted}`")]
    DidNotTake {
        /// The rule read back, if any.
        read: Option<String>,
        /// The rule applied.
        wanted: String,
    },
    /// A probe connection through the service port reached another slot.
    #[error("a fresh connection to port {service_port} reached port {reached}, not {wanted}")]
    Misrouted {
        /// `switch.service_port`.
        service_port: u16,
        /// Where it arrived.
        reached: u16,
        /// The target slot.
        wanted: u16,
    },
    /// The probe connection itself failed.
    #[error("{problem}")]
    Probe {
        /// What went wrong, from the socket diagnostics.
        problem: String,
    },
    /// `switch --restore` applied the rule, but it does not read back.
    #[error("re-applied `{rule}`, but it does not read back")]
    NoReadBack {
        /// The rule.
        rule: String,
    },
}

impl NftError {
    /// What the operator must do about it.
    pub fn kind(&self) -> Kind {
        match self {
            NftError::ForeignRule { .. }
            | NftError::ManyRules { .. }
            | NftError::OtherServicePort { .. }
            | NftError::NotASlot { .. }
            | NftError::RuleLost { .. }
            | NftError::Elsewhere { .. } => Kind::BadInput,
            _ => Kind::Failed,
        }
    }
}
