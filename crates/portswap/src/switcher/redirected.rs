//! What the kernel does with connections to the nftables switch's service port, read from
//! conntrack and the sockets themselves: where a fresh connection went (the proof that a
//! switch took), and the entries that would still send a new connection to the old slot
//! (removed after a switch).
//!
//! Why the second: conntrack keeps an entry for every connection, with its NAT mapping. When
//! an app ends a connection with a RST and no FIN was exchanged, the entry stays 10 s in
//! CLOSE, and a new connection from the same client port within those 10 s *reopens* it
//! (the kernel kills and redoes the NAT only for an entry that saw a FIN, or a RST from the
//! client's side): it keeps the old mapping and reaches the old slot, whatever the rule says
//! now. Under load nginx reuses its client ports within seconds. Entries that saw a FIN
//! (TIME_WAIT, ...) are redone on reuse and stay; open ones belong to requests still in
//! flight on the old version and stay too, but each is watched until it has closed, for a
//! RST that would make it stale.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::conntrack::{self, Entry, TcpState};
use crate::duration::show;
use crate::sockdiag;

/// The longest the confirmation probe waits for its connection to be accepted.
pub const PROBE_CONNECT_LIMIT: Duration = Duration::from_secs(2);
/// The longest it then looks for that connection in conntrack and on the slots.
pub const PROBE_LOOKUP_LIMIT: Duration = Duration::from_secs(1);
/// The longest a switch watches the connections still open on the old slot (requests in
/// flight at the switch), for a RST that would leave a stale entry behind.
pub const IN_FLIGHT_LIMIT: Duration = Duration::from_secs(1);
/// The longest the first look at the table (one filtered dump) and its deletes may take.
pub const CLEANUP_LIMIT: Duration = Duration::from_secs(1);

/// Opens a connection to 127.0.0.1:`service_port` and returns which of `slots` accepted it.
/// Exactly the probe's own connection counts: conntrack names the port it was redirected to
/// and the client port that side sees (NAT may have changed it), and exactly one slot must
/// hold that connection, in SYN_RECV or ESTABLISHED. Under load the probe's port was used
/// moments ago by another client, and a slot may hold a TIME_WAIT socket of the same ports
/// (an app that closes first): that is not this connection.
pub fn probe_reaches(service_port: u16, slots: [u16; 2]) -> Result<u16, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, service_port));
    let stream = TcpStream::connect_timeout(&addr, PROBE_CONNECT_LIMIT)
        .map_err(|e| format!("a connection to 127.0.0.1:{service_port} failed: {e}"))?;
    let mine = stream.local_addr().map_err(|e| e.to_string())?.port();
    let deadline = Instant::now() + PROBE_LOOKUP_LIMIT;
    let mut last = String::from("conntrack has no entry for it");
    loop {
        let entry = conntrack::lookup((Ipv4Addr::LOCALHOST, mine), service_port, deadline);
        let entry = entry.map_err(|e| {
            format!(
                "cannot read the probe's connection in conntrack (ctnetlink, kernel module \
                 nf_conntrack_netlink): {e}"
            )
        })?;
        if let Some(entry) = entry {
            let mut holders = Vec::with_capacity(2);
            for slot in slots {
                match sockdiag::loopback_accepted(slot, entry.seen_as) {
                    Ok(true) => holders.push(slot),
                    Ok(false) => {}
                    Err(e) => return Err(format!("cannot look the probe's connection up: {e}")),
                }
            }
            match holders[..] {
                [slot] if slot == entry.answered_by => return Ok(slot),
                [] => {
                    last = format!(
                        "conntrack sent it to port {} (as client port {}), where no slot \
                         holds it",
                        entry.answered_by, entry.seen_as
                    )
                }
                _ => {
                    last = format!(
                        "conntrack sent it to port {}, but {holders:?} hold client port {}",
                        entry.answered_by, entry.seen_as
                    )
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "a connection to 127.0.0.1:{service_port} (client port {mine}) was accepted, \
                 but not provably by one slot: {last}"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What [`forget_stale`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Forgotten {
    /// Entries deleted: reset connections to the old slot.
    pub deleted: usize,
    /// Connections to the old slot that were still open when the watch ended.
    pub still_open: usize,
    /// How long the watch of open connections took.
    pub watched: Duration,
}

impl Forgotten {
    /// One clause for the switch's log line.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} stale conntrack entr{} removed",
            self.deleted,
            if self.deleted == 1 { "y" } else { "ies" }
        );
        if self.still_open > 0 {
            text.push_str(&format!(
                ", {} connection(s) to the old slot still open after {}",
                self.still_open,
                show(self.watched)
            ));
        }
        text
    }
}

/// After the rule sends new connections to `live`: deletes every entry of the service port
/// that a new connection would reopen onto another port (CLOSE after a RST), then watches
/// the connections still open on another port until each has closed (deleting it when it
/// ended with a RST) or [`IN_FLIGHT_LIMIT`] has passed.
pub fn forget_stale(service_port: u16, live: u16) -> std::io::Result<Forgotten> {
    let started = Instant::now();
    let mut done = Forgotten::default();
    let elsewhere = |e: &Entry| e.answered_by != live;
    let deadline = started + CLEANUP_LIMIT;
    let mut open = Vec::new();
    for entry in conntrack::to_port(service_port, deadline)?
        .into_iter()
        .filter(elsewhere)
    {
        match entry.state {
            TcpState::Reset => done.deleted += usize::from(conntrack::delete(&entry, deadline)?),
            TcpState::Open => open.push(entry),
            TcpState::Closing | TcpState::Other(_) => {}
        }
    }
    let watch_started = Instant::now();
    let watch_deadline = watch_started + IN_FLIGHT_LIMIT;
    while !open.is_empty() && Instant::now() < watch_deadline {
        let mut still = Vec::with_capacity(open.len());
        for entry in open {
            let now = match conntrack::lookup(entry.client, service_port, watch_deadline) {
                Ok(now) => now,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    still.push(entry);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match now.filter(|n| n.id == entry.id) {
                Some(n) if n.state == TcpState::Reset => {
                    done.deleted += usize::from(conntrack::delete(&n, watch_deadline)?)
                }
                Some(n) if n.state == TcpState::Open => still.push(n),
                // Closed with a FIN, or gone: a reuse of its port is redirected anew.
                _ => {}
            }
        }
        open = still;
        if !open.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    done.still_open = open.len();
    done.watched = watch_started.elapsed();
    Ok(done)
}
