//! The kernel's connection tracking table over ctnetlink (`NETLINK_NETFILTER`, what the
//! `conntrack` tool asks), for TCP connections to 127.0.0.1: where the NAT of the nftables
//! switch sent one (its reply tuple), the entries of the service port, and deleting one.
//!
//! By hand rather than through `conntrack -D`: the tool is a package of its own
//! (`conntrack`, not installed with `nftables` on Debian, Ubuntu or Amazon Linux), a process
//! per call, and its output a format to parse; here each question is one request (a dump
//! filtered by the kernel on the service port where it can, 5.8+), every receive is bounded
//! by the caller's deadline, and nothing runs but the hook.

use std::io;
use std::net::Ipv4Addr;
use std::time::Instant;

use nix::libc;
use nix::sys::socket::SockProtocol;

use crate::netlink::{
    self, attribute, attributes, errno, messages, nest, put, NLMSG_DONE, NLMSG_ERROR,
};

/// `NFNL_SUBSYS_CTNETLINK << 8`: the conntrack subsystem's message types.
const CTNETLINK: u16 = (libc::NFNL_SUBSYS_CTNETLINK as u16) << 8;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

// `enum ctattr_type` and its nested enums (include/uapi/linux/netfilter/nfnetlink_conntrack.h).
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_PROTOINFO: u16 = 4;
const CTA_ID: u16 = 12;
const CTA_FILTER: u16 = 25;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_FILTER_ORIG_FLAGS: u16 = 1;
const CTA_FILTER_REPLY_FLAGS: u16 = 2;
/// `CTA_FILTER_FLAG_CTA_IP_DST | ..._PROTO_NUM | ..._PROTO_DST_PORT`.
const FILTER_DST_PORT: u32 = (1 << 1) | (1 << 3) | (1 << 5);

/// The TCP states conntrack keeps (`enum tcp_conntrack`), as far as portswap tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// SYN_SENT, SYN_RECV, ESTABLISHED or SYN_SENT2: open, neither side has sent a FIN.
    Open,
    /// FIN_WAIT, CLOSE_WAIT, LAST_ACK or TIME_WAIT: a side has sent a FIN.
    Closing,
    /// CLOSE: ended by a RST (the entry lingers 10 s).
    Reset,
    /// NONE, or a state this code does not know.
    Other(u8),
}

impl TcpState {
    fn of(raw: u8) -> TcpState {
        match raw {
            1..=3 | 9 => TcpState::Open,
            4..=7 => TcpState::Closing,
            8 => TcpState::Reset,
            other => TcpState::Other(other),
        }
    }
}

/// One tracked TCP connection whose original destination is on 127.0.0.1: its ports, where
/// it went, and its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The kernel's id of the entry (a delete names it, so a newer entry of the same ports
    /// is never deleted instead).
    pub id: u32,
    /// The client's address and port.
    pub client: (Ipv4Addr, u16),
    /// The port the client connected to.
    pub dialled: u16,
    /// The port that answers (after a redirect: the slot).
    pub answered_by: u16,
    /// The client's port as the answering side sees it (NAT may have changed it).
    pub seen_as: u16,
    /// Its TCP state.
    pub state: TcpState,
}

/// A ctnetlink socket whose receives end at `deadline`.
fn open(deadline: Instant) -> io::Result<netlink::Socket> {
    Ok(netlink::Socket::open(SockProtocol::NetlinkNetFilter, 64 * 1024)?.bound_by(deadline))
}

/// Sends one request of `message` type with `flags` to the kernel: the socket to read the
/// reply from.
fn ask(message: u16, flags: i32, payload: &[u8], deadline: Instant) -> io::Result<netlink::Socket> {
    let socket = open(deadline)?;
    socket.send(&netlink::request(
        CTNETLINK | message,
        (libc::NLM_F_REQUEST | flags) as u16,
        payload,
    ))?;
    Ok(socket)
}

/// nfgenmsg for IPv4 (`AF_INET`, version 0, resource id 0).
fn header() -> Vec<u8> {
    vec![libc::AF_INET as u8, 0, 0, 0]
}

/// CTA_TUPLE_ORIG of TCP from `client` (when given) to 127.0.0.1:`port`.
fn original_tuple(out: &mut Vec<u8>, client: Option<(Ipv4Addr, u16)>, port: u16) {
    nest(out, CTA_TUPLE_ORIG, |tuple| {
        nest(tuple, CTA_TUPLE_IP, |ip| {
            if let Some((address, _)) = client {
                put(ip, CTA_IP_V4_SRC, &address.octets());
            }
            put(ip, CTA_IP_V4_DST, &Ipv4Addr::LOCALHOST.octets());
        });
        nest(tuple, CTA_TUPLE_PROTO, |proto| {
            put(proto, CTA_PROTO_NUM, &[libc::IPPROTO_TCP as u8]);
            if let Some((_, client_port)) = client {
                put(proto, CTA_PROTO_SRC_PORT, &client_port.to_be_bytes());
            }
            put(proto, CTA_PROTO_DST_PORT, &port.to_be_bytes());
        });
    });
}

/// The entry of the connection from `client` to 127.0.0.1:`port`; `None` when the kernel
/// tracks none.
pub fn lookup(client: (Ipv4Addr, u16), port: u16, deadline: Instant) -> io::Result<Option<Entry>> {
    let mut payload = header();
    original_tuple(&mut payload, Some(client), port);
    let mut socket = ask(IPCTNL_MSG_CT_GET, 0, &payload, deadline)?;
    for (kind, message) in messages(socket.recv()?)? {
        if kind == NLMSG_ERROR {
            return match errno(message)? {
                libc::ENOENT => Ok(None),
                0 => continue,
                e => Err(io::Error::from_raw_os_error(e)),
            };
        }
        return Ok(parse(message));
    }
    Ok(None)
}

/// Every tracked TCP connection to 127.0.0.1:`port` (the kernel filters the dump where it
/// can; the rest is filtered here).
pub fn to_port(port: u16, deadline: Instant) -> io::Result<Vec<Entry>> {
    match dump(port, true, deadline) {
        // A kernel before 5.8 knows no dump filter.
        Err(e) if [libc::EINVAL, libc::EOPNOTSUPP].contains(&e.raw_os_error().unwrap_or(0)) => {
            dump(port, false, deadline)
        }
        other => other,
    }
}

fn dump(port: u16, filtered: bool, deadline: Instant) -> io::Result<Vec<Entry>> {
    let mut payload = header();
    if filtered {
        original_tuple(&mut payload, None, port);
        nest(&mut payload, CTA_FILTER, |filter| {
            put(
                filter,
                CTA_FILTER_ORIG_FLAGS,
                &FILTER_DST_PORT.to_ne_bytes(),
            );
            put(filter, CTA_FILTER_REPLY_FLAGS, &0u32.to_ne_bytes());
        });
    }
    let mut socket = ask(IPCTNL_MSG_CT_GET, libc::NLM_F_DUMP, &payload, deadline)?;
    let mut entries = Vec::new();
    loop {
        for (kind, message) in messages(socket.recv()?)? {
            match kind {
                NLMSG_DONE => return Ok(entries),
                NLMSG_ERROR => match errno(message)? {
                    0 => {}
                    e => return Err(io::Error::from_raw_os_error(e)),
                },
                _ => entries.extend(parse(message).filter(|e| e.dialled == port)),
            }
        }
    }
}

/// Deletes `entry` (by its ports and its id); false when it was already gone.
pub fn delete(entry: &Entry, deadline: Instant) -> io::Result<bool> {
    let mut payload = header();
    original_tuple(&mut payload, Some(entry.client), entry.dialled);
    put(&mut payload, CTA_ID, &entry.id.to_be_bytes());
    let mut socket = ask(IPCTNL_MSG_CT_DELETE, libc::NLM_F_ACK, &payload, deadline)?;
    for (kind, message) in messages(socket.recv()?)? {
        if kind == NLMSG_ERROR {
            return match errno(message)? {
                0 => Ok(true),
                libc::ENOENT => Ok(false),
                e => Err(io::Error::from_raw_os_error(e)),
            };
        }
    }
    Ok(true)
}

/// The ports and protocol of a CTA_TUPLE_* attribute, each attribute read once: (source
/// address, destination address, protocol, source port, destination port).
fn tuple(value: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u8, u16, u16)> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for (kind, inner) in attributes(value) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, v) in attributes(inner) {
                    let address = <[u8; 4]>::try_from(v).ok().map(Ipv4Addr::from);
                    match k {
                        CTA_IP_V4_SRC => src = address,
                        CTA_IP_V4_DST => dst = address,
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, v) in attributes(inner) {
                    let port = <[u8; 2]>::try_from(v).ok().map(u16::from_be_bytes);
                    match k {
                        CTA_PROTO_NUM => proto = v.first().copied(),
                        CTA_PROTO_SRC_PORT => sport = port,
                        CTA_PROTO_DST_PORT => dport = port,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((src?, dst?, proto?, sport?, dport?))
}

/// The entry in a ctnetlink message (nfgenmsg, then attributes): `None` for anything but a
/// TCP connection to 127.0.0.1.
fn parse(message: &[u8]) -> Option<Entry> {
    let (mut orig, mut reply, mut id, mut state) = (None, None, None, TcpState::Other(0));
    for (kind, value) in attributes(message.get(4..)?) {
        match kind {
            CTA_TUPLE_ORIG => orig = tuple(value),
            CTA_TUPLE_REPLY => reply = tuple(value),
            CTA_ID => id = <[u8; 4]>::try_from(value).ok().map(u32::from_be_bytes),
            CTA_PROTOINFO => {
                let raw = attribute(value, CTA_PROTOINFO_TCP)
                    .and_then(|tcp| attribute(tcp, CTA_PROTOINFO_TCP_STATE))
                    .and_then(|s| s.first().copied());
                state = raw.map_or(TcpState::Other(0), TcpState::of);
            }
            _ => {}
        }
    }
    let (src, dst, proto, sport, dport) = orig?;
    let (_, _, _, answered_by, seen_as) = reply?;
    if proto != libc::IPPROTO_TCP as u8 || dst != Ipv4Addr::LOCALHOST {
        return None;
    }
    Some(Entry {
        id: id?,
        client: (src, sport),
        dialled: dport,
        answered_by,
        seen_as,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as the kernel sends it for 127.0.0.1:40000 -> :8080 redirected to :8082.
    fn message(state: u8) -> Vec<u8> {
        let mut m = header();
        original_tuple(&mut m, Some((Ipv4Addr::LOCALHOST, 40000)), 8080);
        nest(&mut m, CTA_TUPLE_REPLY, |tuple| {
            nest(tuple, CTA_TUPLE_IP, |ip| {
                put(ip, CTA_IP_V4_SRC, &[127, 0, 0, 1]);
                put(ip, CTA_IP_V4_DST, &[127, 0, 0, 1]);
            });
            nest(tuple, CTA_TUPLE_PROTO, |proto| {
                put(proto, CTA_PROTO_NUM, &[6]);
                put(proto, CTA_PROTO_SRC_PORT, &8082u16.to_be_bytes());
                put(proto, CTA_PROTO_DST_PORT, &40001u16.to_be_bytes());
            });
        });
        nest(&mut m, CTA_PROTOINFO, |info| {
            nest(info, CTA_PROTOINFO_TCP, |tcp| {
                put(tcp, CTA_PROTOINFO_TCP_STATE, &[state])
            })
        });
        put(&mut m, CTA_ID, &7u32.to_be_bytes());
        m
    }

    #[test]
    fn reads_where_a_redirected_connection_went() {
        let entry = parse(&message(8)).unwrap();
        assert_eq!(
            entry,
            Entry {
                id: 7,
                client: (Ipv4Addr::LOCALHOST, 40000),
                dialled: 8080,
                answered_by: 8082,
                seen_as: 40001,
                state: TcpState::Reset,
            }
        );
        assert_eq!(parse(&message(3)).unwrap().state, TcpState::Open);
        assert_eq!(parse(&message(7)).unwrap().state, TcpState::Closing);
        assert_eq!(parse(&message(3)[..20]), None, "torn");
    }
}
