//! The nftables switch (`switch.by: nftables`): nginx proxies to a fixed service port on
//! 127.0.0.1 that nothing listens on (written once into the include), and one NAT rule in
//! portswap's own table redirects that port to the live slot. A switch replaces the rule in
//! one `nft -f` transaction, which the kernel applies atomically: nginx is not reloaded, so
//! its client connections are never closed; new upstream connections reach the new slot at
//! once, open ones finish on the old slot (conntrack keeps their mapping).
//!
//! The live port is read from the kernel's rule, never from the switch record: after a kill
//! between the transaction and the record, the rule is what routes traffic. The record only
//! serves `--rollback` and, when the rule is gone (reboot, `nft flush ruleset`), `--restore`.

use std::cell::Cell;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::nginx::NginxSwitcher;
use super::redirected::{forget_stale, probe_reaches};
use super::{boot_unit, upstreams, Fallback, Live, Switched, Switcher, Unswitched};
use crate::bounded::{self, Failed};
use crate::config::Config;
use crate::duration::show;
use crate::error::{Error, NftError, Refusal, Result};
use crate::process::resolve_program;
use crate::state::StateDir;
use crate::{fsio, procfs};

/// portswap's own table; nothing else in the ruleset is read or written.
pub const TABLE: &str = "ip portswap";

/// The one address the rule matches (`ip daddr`): nginx must proxy to it (the include's
/// template is checked at config load).
pub const REDIRECTED_ADDRESS: &str = "127.0.0.1";

/// File in the state directory holding the last applied ruleset, for the boot unit.
pub const RULES_FILE: &str = "nftables.rules";

/// The one rule: new connections to 127.0.0.1:`service_port` go to `slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirect {
    /// The port nginx proxies to.
    pub service_port: u16,
    /// The live slot.
    pub slot: u16,
}

impl Redirect {
    /// The rule as nft prints it.
    pub fn rule(&self) -> String {
        format!(
            "ip daddr {REDIRECTED_ADDRESS} tcp dport {} redirect to :{}",
            self.service_port, self.slot
        )
    }

    /// One transaction that creates the table and chain if missing and leaves exactly this
    /// rule in the chain.
    pub fn ruleset(&self) -> String {
        format!(
            "table {TABLE} {{\n\tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n\t}}\n}}\n\
             flush chain {TABLE} output\n\
             add rule {TABLE} output {}\n",
            self.rule()
        )
    }

    /// Reads the rule back from `nft list table` output: `None` when the chain holds none.
    pub fn parse(listing: &str) -> Result<Option<Redirect>> {
        let rules: Vec<&str> = listing
            .lines()
            .map(str::trim)
            .filter(|l| l.contains("redirect"))
            .collect();
        let after = |words: &[&str], key: &str| -> Option<u16> {
            let at = words.iter().position(|w| *w == key)?;
            words.get(at + 1)?.trim_start_matches(':').parse().ok()
        };
        match rules.as_slice() {
            [] => Ok(None),
            [line] => {
                let words: Vec<&str> = line.split_whitespace().collect();
                match (
                    line.contains("ip daddr 127.0.0.1 "),
                    after(&words, "dport"),
                    after(&words, "to"),
                ) {
                    (true, Some(service_port), Some(slot)) => {
                        Ok(Some(Redirect { service_port, slot }))
                    }
                    _ => Err(NftError::ForeignRule {
                        table: TABLE,
                        line: line.to_string(),
                    }
                    .into()),
                }
            }
            more => Err(NftError::ManyRules {
                table: TABLE,
                count: more.len(),
            }
            .into()),
        }
    }
}

/// The longest one `nft` run may take (it takes ~10 ms): then it is killed and the switch
/// fails, putting the previous rule back.
pub const NFT_LIMIT: Duration = Duration::from_secs(2);

/// `nft` runs in one switch, at most: the rule read to tell the live port, the transaction,
/// the rule read back, and on a failure the previous rule put back.
pub const NFT_RUNS: u32 = 4;

/// The `nft` program.
#[derive(Debug, Clone)]
pub struct Nft {
    program: PathBuf,
}

impl Nft {
    /// Finds `nft`; its absence is an error naming the package.
    pub fn find() -> Result<Nft> {
        resolve_program("nft")
            .map(|program| Nft { program })
            .map_err(|_| NftError::NotInstalled.into())
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.program
    }

    /// Runs `nft ARGS` (with `input` on its stdin), bounded by [`NFT_LIMIT`] like every
    /// external command of a switch ([`bounded`]); its stdout, or an error with nft's reason.
    fn run(&self, args: &[&str], input: Option<&str>) -> Result<String> {
        let shown = format!("nft {}", args.join(" "));
        let argv: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let deadline = Instant::now() + NFT_LIMIT;
        let ran = match input {
            Some(text) => bounded::run_with_input(&self.program, &argv, text.as_bytes(), deadline),
            None => bounded::run(&self.program, &argv, true, deadline),
        }
        .map_err(|failed| match failed {
            Failed::Spawn(source) => NftError::Spawn {
                call: shown.clone(),
                source,
            },
            Failed::Hung => NftError::Hung {
                call: shown.clone(),
                limit: NFT_LIMIT,
            },
            Failed::Wait(source) => NftError::Wait {
                call: shown.clone(),
                source,
            },
        })?;
        let stderr = String::from_utf8_lossy(&ran.stderr);
        if ran.status.success() {
            return Ok(String::from_utf8_lossy(&ran.stdout).into_owned());
        }
        let first = stderr
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output")
            .trim();
        if stderr.contains("Operation not permitted") {
            return Err(NftError::NotPermitted {
                call: shown,
                first: first.to_string(),
            }
            .into());
        }
        Err(NftError::Failed {
            call: shown,
            status: ran.status.to_string(),
            first: first.to_string(),
        }
        .into())
    }

    /// Applies `ruleset` as one transaction (`nft -f -`): all of it or nothing.
    pub fn apply(&self, ruleset: &str) -> Result<()> {
        self.run(&["-f", "-"], Some(ruleset)).map(|_| ())
    }

    /// The redirect in portswap's table; `None` when there is no table or no rule.
    pub fn redirect(&self) -> Result<Option<Redirect>> {
        let mut args = vec!["-n", "list", "table"];
        args.extend(TABLE.split(' '));
        match self.run(&args, None) {
            Ok(listing) => Redirect::parse(&listing),
            // nft's own words for a table that does not exist.
            Err(Error::Nftables(NftError::Failed { first, .. }))
                if first.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes portswap's table (and only it) in one transaction, whether or not it exists.
    pub fn remove_table(&self) -> Result<()> {
        self.apply(&format!("table {TABLE}\ndelete table {TABLE}\n"))
    }

    /// Puts `previous` back (or removes the table when there was none); logs the outcome and
    /// returns whether it worked.
    fn put_back(&self, previous: Option<Redirect>) -> bool {
        let result = match previous {
            Some(r) => self.apply(&r.ruleset()),
            None => self.remove_table(),
        };
        match (result, previous) {
            (Ok(()), Some(r)) => log::info!("restored the rule `{}`", r.rule()),
            (Ok(()), None) => log::info!("removed table {TABLE} again"),
            (Err(e), _) => {
                log::error!("could not restore the previous nftables rule: {e}");
                return false;
            }
        }
        true
    }
}

/// What both modes need to tell where traffic goes: the include names a slot (reload mode)
/// or the service port (nftables mode: then the rule says which slot).
#[derive(Debug, Clone)]
struct Route {
    nginx: NginxSwitcher,
    service_port: u16,
    slots: [u16; 2],
    state: StateDir,
    include: PathBuf,
    /// The rule as last read by this hook run (which holds the lock), to spare a second `nft`.
    last_read: Cell<Option<Option<Redirect>>>,
}

impl Route {
    fn new(config: &Config, state: &StateDir) -> Route {
        Route {
            nginx: NginxSwitcher::new(config),
            service_port: config.switch.service_port,
            slots: [config.slots[0].port, config.slots[1].port],
            state: state.clone(),
            include: config.nginx.include.clone(),
            last_read: Cell::new(None),
        }
    }

    /// True when nginx proxies to the service port (the include names it).
    fn behind_redirect(&self) -> Result<bool> {
        Ok(self.nginx.included_port()? == Some(self.service_port)
            && !self.slots.contains(&self.service_port))
    }

    /// The slot the rule redirects to; an error when the rule is missing while a switch was
    /// recorded (the ruleset was lost: reboot, `nft flush ruleset`) or names no slot.
    fn redirected(&self, nft: &Nft) -> Result<Option<u16>> {
        self.judge(nft.redirect()?)
    }

    /// [`Route::redirected`] for a rule already read.
    fn judge(&self, read: Option<Redirect>) -> Result<Option<u16>> {
        self.last_read.set(Some(read));
        match read {
            Some(r) if r.service_port != self.service_port => Err(NftError::OtherServicePort {
                table: TABLE,
                redirected: r.service_port,
                configured: self.service_port,
            }
            .into()),
            Some(r) if !self.slots.contains(&r.slot) => Err(NftError::NotASlot {
                table: TABLE,
                rule: r.rule(),
                port: r.slot,
                slots: self.slots,
            }
            .into()),
            Some(r) => Ok(Some(r.slot)),
            None => match self.state.switch_record() {
                Some(record) if self.slots.contains(&record.live) => Err(NftError::RuleLost {
                    service_port: self.service_port,
                    include: self.include.to_path_buf(),
                    live: record.live,
                }
                .into()),
                _ => Ok(None),
            },
        }
    }

    /// nftables mode cannot take over from a port nginx proxies to that is neither the
    /// service port nor a slot (switch in reload mode once to take over from it).
    fn elsewhere(&self, port: u16) -> Error {
        NftError::Elsewhere {
            include: self.include.to_path_buf(),
            port,
            service_port: self.service_port,
        }
        .into()
    }

    fn live(&self) -> Result<Live> {
        if self.behind_redirect()? {
            return Ok(slot_or_nothing(self.redirected(&Nft::find()?)?));
        }
        match self.nginx.live()? {
            Live::Unmanaged(port) => Err(self.elsewhere(port)),
            live => Ok(live),
        }
    }
}

/// Switches by replacing one nftables NAT rule; nginx is reloaded only once, when its include
/// does not yet name the service port.
#[derive(Debug, Clone)]
pub struct NftablesSwitcher {
    route: Route,
    test_command: Vec<String>,
    rules_file: PathBuf,
    boot_unit_dir: PathBuf,
}

impl NftablesSwitcher {
    /// The switcher the configuration describes.
    pub fn new(config: &Config, state: &StateDir) -> NftablesSwitcher {
        NftablesSwitcher {
            route: Route::new(config, state),
            test_command: config.nginx.test_command.clone(),
            rules_file: state.path().join(RULES_FILE),
            boot_unit_dir: config.switch.boot_unit_dir.clone(),
        }
    }

    fn service_port(&self) -> u16 {
        self.route.service_port
    }

    /// What must hold before the rule is touched: nothing listens on the service port, the
    /// include names a slot, the service port or nothing, and nginx keeps no upstream pool.
    fn preflight(&self) -> Result<bool> {
        let service = self.service_port();
        // Binding is the cheap test (TIME_WAIT does not count); /proc only names the holder.
        let free = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, service)).is_ok();
        let holder = if free {
            None
        } else {
            procfs::listeners(service).first().copied()
        };
        if let Some(pid) = holder {
            return Err(Refusal::ServicePortTaken {
                port: service,
                pid,
                command: procfs::describe(pid),
            }
            .into());
        }
        let included = self.route.nginx.included_port()?;
        if let Some(port) = included.filter(|p| *p != service && !self.route.slots.contains(p)) {
            return Err(self.route.elsewhere(port));
        }
        upstreams::refuse_pool(&self.test_command, service)?;
        Ok(included != Some(service))
    }

    /// The rule must read back as `next`, and a fresh connection must reach the target.
    fn confirm(&self, nft: &Nft, next: Redirect) -> Result<()> {
        let now = nft.redirect()?;
        if now != Some(next) {
            return Err(NftError::DidNotTake {
                read: now.map(|r| r.rule()),
                wanted: next.rule(),
            }
            .into());
        }
        match probe_reaches(self.service_port(), self.route.slots) {
            Ok(port) if port == next.slot => Ok(()),
            Ok(port) => Err(NftError::Misrouted {
                service_port: self.service_port(),
                reached: port,
                wanted: next.slot,
            }
            .into()),
            Err(problem) => Err(NftError::Probe { problem }.into()),
        }
    }

    /// After a switch: the ruleset the boot unit re-applies, and the unit itself.
    fn keep_for_boot(&self, nft: &Nft, applied: Redirect) {
        if let Err(e) = fsio::write_atomic(&self.rules_file, applied.ruleset().as_bytes(), 0o644) {
            log::warn!("switched, but could not save the rule for the next boot: {e}");
            return;
        }
        match boot_unit::install(&self.boot_unit_dir, nft.path(), &self.rules_file) {
            Ok(true) => {
                log::info!(
                    "installed {} in {}: it re-applies the rule at boot, before nginx, and \
                     after a restart or reload of nftables.service",
                    boot_unit::NAME,
                    self.boot_unit_dir.display()
                );
                if let Err(e) = boot_unit::activate(&self.boot_unit_dir) {
                    log::warn!(
                        "could not start {} ({e}): until the next boot, a restart of \
                         nftables.service drops the rule; run `switch --restore` then",
                        boot_unit::NAME
                    );
                }
            }
            Ok(false) if !self.boot_unit_dir.is_dir() => log::debug!(
                "no {}: run `switch --restore` at boot before nginx starts",
                self.boot_unit_dir.display()
            ),
            Ok(false) => {}
            Err(e) => log::warn!(
                "could not install the boot unit {} ({e}); after a reboot run `switch --restore` \
                 before nginx gets traffic",
                boot_unit::NAME
            ),
        }
    }
}

/// `error` after putting the previous rule back: proven when that worked.
fn put_back(nft: &Nft, previous: Option<Redirect>, error: Error) -> Unswitched {
    Unswitched {
        proven: nft.put_back(previous),
        error,
    }
}

/// A redirect's slot as the live state (no rule: nothing is live).
fn slot_or_nothing(slot: Option<u16>) -> Live {
    slot.map_or(Live::Nothing, Live::Slot)
}

impl Switcher for NftablesSwitcher {
    fn live(&self) -> Result<Live> {
        self.route.live()
    }

    fn switch_to(&self, port: u16, fallback: &Fallback) -> Result<Switched, Unswitched> {
        let nft = Nft::find()?;
        let previous = match fallback {
            Fallback::AsFound => match self.route.last_read.take() {
                Some(read) => read,
                None => nft.redirect()?,
            },
            Fallback::Recorded { live, .. } => {
                live.filter(|p| self.route.slots.contains(p))
                    .map(|slot| Redirect {
                        service_port: self.service_port(),
                        slot,
                    })
            }
        };
        let checked = Instant::now();
        let names_service = !self.preflight()?;
        // The file proves nothing about nginx: a switch killed between writing the include
        // and reloading leaves it naming the service port while nginx still proxies to the
        // old slot directly. Reload unless nginx provably loaded the include as it is.
        let needs_include =
            !names_service || *fallback != Fallback::AsFound || !self.route.nginx.include_loaded();
        log::debug!(
            "preflight (service port free, include, nginx upstreams) {}",
            show(checked.elapsed())
        );
        let next = Redirect {
            service_port: self.service_port(),
            slot: port,
        };
        let started = Instant::now();
        // A transaction that failed or was killed may still have been committed: put the
        // previous rule back either way.
        if let Err(e) = nft.apply(&next.ruleset()) {
            return Err(put_back(&nft, previous, e));
        }
        let applied = started.elapsed();
        if let Err(e) = self.confirm(&nft, next) {
            return Err(put_back(&nft, previous, e));
        }
        let mut detail = format!(
            "rule `{}` in table {TABLE} applied in {}, confirmed by a connection in {}",
            next.rule(),
            show(applied),
            show(started.elapsed() - applied)
        );
        let mut caveat = None;
        // The rule is in force; what conntrack would still send to the old slot goes now,
        // before the switch says so.
        match forget_stale(self.service_port(), port) {
            Ok(forgotten) => detail.push_str(&format!("; {}", forgotten.describe())),
            Err(e) => log::warn!(
                "switched, but could not remove stale conntrack entries of port {} ({e}): \
                 for up to 10 s a new connection from the client port of a connection the old \
                 version reset may still reach it",
                self.service_port()
            ),
        }
        if needs_include {
            // First switch in this mode (or nginx has not loaded the include): point nginx
            // at the service port and reload it.
            match self.route.nginx.switch_to(self.service_port(), fallback) {
                Ok(reloaded) => {
                    detail.push_str(&format!(
                        "; nginx pointed at port {} ({})",
                        self.service_port(),
                        reloaded.detail
                    ));
                    caveat = reloaded.caveat;
                }
                Err(failed) => {
                    let mut undone = put_back(&nft, previous, failed.error);
                    undone.proven &= failed.proven;
                    return Err(undone);
                }
            }
        }
        let elapsed = started.elapsed();
        self.keep_for_boot(&nft, next);
        Ok(Switched {
            elapsed,
            detail,
            caveat,
        })
    }

    fn restore(&self, recorded: u16) -> Result<String> {
        let nft = Nft::find()?;
        let wanted = Redirect {
            service_port: self.service_port(),
            slot: recorded,
        };
        match nft.redirect()? {
            Some(now) if now == wanted => Ok(format!("rule `{}` already in place", now.rule())),
            Some(now) => {
                log::warn!(
                    "the rule `{}` differs from the switch record (port {recorded}); the rule \
                     routes traffic and is kept",
                    now.rule()
                );
                Ok(format!("rule `{}` in place; nothing restored", now.rule()))
            }
            None => {
                nft.apply(&wanted.ruleset())?;
                if nft.redirect()? != Some(wanted) {
                    return Err(NftError::NoReadBack {
                        rule: wanted.rule(),
                    }
                    .into());
                }
                if let Err(e) =
                    fsio::write_atomic(&self.rules_file, wanted.ruleset().as_bytes(), 0o644)
                {
                    log::warn!("could not save the rule for the next boot: {e}");
                }
                Ok(format!(
                    "rule `{}` re-applied from the switch record",
                    wanted.rule()
                ))
            }
        }
    }

    fn describe(&self) -> Vec<String> {
        let service = self.service_port();
        let rule = match Nft::find().and_then(|nft| nft.redirect()) {
            Ok(Some(r)) => format!("`{}` (table {TABLE}), live port {}", r.rule(), r.slot),
            Ok(None) => format!("none in table {TABLE}"),
            Err(e) => format!("unknown: {e}"),
        };
        let nginx = match self.route.nginx.included_port() {
            Ok(Some(p)) if p == service => format!("service port {service}"),
            Ok(Some(p)) => format!("port {p} (moves to service port {service} at the next switch)"),
            Ok(None) => format!("nothing yet (service port {service} from the next switch)"),
            Err(e) => format!("unknown: {e}"),
        };
        vec![
            format!("nginx proxies to: {nginx}"),
            format!("nftables rule: {rule}"),
        ]
    }
}

/// Reload mode on a host nftables mode may have left behind: while the include still names
/// the service port and portswap's rule exists, the live port is the rule's; the next switch rewrites the include for a
/// slot and reloads nginx as usual. The rule is left in place (nothing uses the service port
/// any more, and old workers may still finish requests through it).
#[derive(Debug, Clone)]
pub struct ReloadSwitcher {
    route: Route,
}

impl ReloadSwitcher {
    /// The switcher the configuration describes.
    pub fn new(config: &Config, state: &StateDir) -> ReloadSwitcher {
        ReloadSwitcher {
            route: Route::new(config, state),
        }
    }
}

impl Switcher for ReloadSwitcher {
    /// Only a rule portswap wrote counts: without one (no `nft`, no table), an include naming
    /// the service port is what it always was in reload mode, a port that is no slot (a
    /// version portswap does not manage, taken over by the next switch).
    fn live(&self) -> Result<Live> {
        if self.route.behind_redirect()? {
            let read = Nft::find().and_then(|nft| nft.redirect()).ok().flatten();
            if let Some(redirect) = read.filter(|r| r.service_port == self.route.service_port) {
                return Ok(slot_or_nothing(self.route.judge(Some(redirect))?));
            }
        }
        self.route.nginx.live()
    }

    fn prepare(&self) {
        self.route.nginx.prepare()
    }

    fn switch_to(&self, port: u16, fallback: &Fallback) -> Result<Switched, Unswitched> {
        self.route.nginx.switch_to(port, fallback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_round_trips_through_nft_listing() {
        let r = Redirect {
            service_port: 8080,
            slot: 8082,
        };
        let listing = "table ip portswap {\n\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n\t\tip daddr 127.0.0.1 tcp dport 8080 redirect to :8082\n\t}\n}\n";
        assert_eq!(Redirect::parse(listing).unwrap(), Some(r));
        assert!(r.ruleset().contains("flush chain ip portswap output\n"));
        assert!(r
            .ruleset()
            .ends_with(&format!("add rule ip portswap output {}\n", r.rule())));
        let empty = "table ip portswap {\n\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n\t}\n}\n";
        assert_eq!(Redirect::parse(empty).unwrap(), None);
        let two = format!("{listing}\t\tip daddr 127.0.0.1 tcp dport 8080 redirect to :8081\n");
        assert!(Redirect::parse(&two).is_err());
        assert!(Redirect::parse("tcp dport 8080 redirect to :8081").is_err());
    }
}
