//! The kernel's TCP socket diagnostics over netlink (`NETLINK_SOCK_DIAG`, what `ss` asks): the
//! one place that builds those requests and reads their replies. Two questions are asked: the
//! sockets listening on a port (procfs's listeners) and one loopback connection by its
//! addresses (the nftables switch's proof that a fresh connection reached the target).
//! /proc/net/tcp would answer both, but it lists every socket including TIME_WAIT ones: on a
//! host under load that is ~100,000 lines and most of a second to read (measured), where a
//! diagnostics query is one round trip to the kernel.

use std::io;
use std::net::Ipv4Addr;

use nix::libc;
use nix::sys::socket::SockProtocol;

use crate::netlink::{self, errno, field, messages, short, NLMSG_DONE, NLMSG_ERROR};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_LISTEN: u8 = 10;
/// The kernel's TCP states a fresh connection's accepted socket is in (`include/net/tcp_states.h`).
const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_RECV: u8 = 3;
const NO_COOKIE: u32 = u32::MAX;
/// inet_diag_req_v2.
const REQUEST_LEN: usize = 56;

/// The inodes of the IPv4 and IPv6 TCP sockets listening on `port`.
pub fn listening_inodes(port: u16) -> io::Result<Vec<u64>> {
    Ok(listening_sockets()?
        .into_iter()
        .filter(|(p, _)| *p == port)
        .map(|(_, inode)| inode)
        .collect())
}

/// Every IPv4 and IPv6 TCP socket listening on this host (its network namespace): port and
/// inode.
pub fn listening_sockets() -> io::Result<Vec<(u16, u64)>> {
    let mut diag = open()?;
    let mut inodes = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        diag.send(&request(family, flags, 1 << TCP_LISTEN, [0; 48]))?;
        'replies: loop {
            for (kind, payload) in messages(diag.recv()?)? {
                match kind {
                    NLMSG_DONE => break 'replies,
                    NLMSG_ERROR => return Err(io::Error::from_raw_os_error(errno(payload)?)),
                    _ => {
                        if let Some(s) = Socket::parse(payload) {
                            if s.state == TCP_LISTEN {
                                inodes.push((s.local, u64::from(s.inode)));
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(inodes)
}

/// The kernel's state of the IPv4 TCP socket bound to 127.0.0.1:`local` and connected to
/// 127.0.0.1:`remote` (an accepted connection, or one still in the handshake); `None` when
/// there is no such socket.
pub fn loopback_tcp_state(local: u16, remote: u16) -> io::Result<Option<u8>> {
    let mut diag = open()?;
    diag.send(&request(
        libc::AF_INET as u8,
        libc::NLM_F_REQUEST as u16,
        u32::MAX, // every state
        loopback_id(local, remote),
    ))?;
    let replies = messages(diag.recv()?)?;
    let Some(&(kind, payload)) = replies.first() else {
        return Err(short());
    };
    if kind == NLMSG_ERROR {
        return match errno(payload)? {
            0 | libc::ENOENT => Ok(None),
            e => Err(io::Error::from_raw_os_error(e)),
        };
    }
    // The kernel falls back to the listener when no connection matches.
    let s = Socket::parse(payload).ok_or_else(short)?;
    Ok((s.state != TCP_LISTEN && s.remote == remote).then_some(s.state))
}

/// True when 127.0.0.1:`local` holds a connection from 127.0.0.1:`remote` that is being
/// set up or is open (SYN_RECV or ESTABLISHED): a fresh connection's server side. A socket
/// of that 4-tuple in TIME_WAIT (or any closing state) is an earlier connection that used
/// the same client port, not this one.
pub fn loopback_accepted(local: u16, remote: u16) -> io::Result<bool> {
    Ok(matches!(
        loopback_tcp_state(local, remote)?,
        Some(TCP_ESTABLISHED | TCP_SYN_RECV)
    ))
}

/// A netlink socket to the kernel's socket diagnostics.
fn open() -> io::Result<netlink::Socket> {
    netlink::Socket::open(SockProtocol::NetlinkSockDiag, 32 * 1024)
}

/// nlmsghdr + inet_diag_req_v2 for TCP sockets of `family` in `states` (a bit per state)
/// matching `id` (an inet_diag_sockid; ignored by dumps).
fn request(family: u8, flags: u16, states: u32, id: [u8; 48]) -> Vec<u8> {
    let mut m = [0u8; REQUEST_LEN];
    m[0] = family;
    m[1] = libc::IPPROTO_TCP as u8;
    m[4..8].copy_from_slice(&states.to_ne_bytes());
    m[8..].copy_from_slice(&id);
    netlink::request(SOCK_DIAG_BY_FAMILY, flags, &m)
}

/// The inet_diag_sockid of the connection 127.0.0.1:`local` <-> 127.0.0.1:`remote`.
fn loopback_id(local: u16, remote: u16) -> [u8; 48] {
    let lo = Ipv4Addr::LOCALHOST.octets();
    let mut id = [0u8; 48];
    id[0..2].copy_from_slice(&local.to_be_bytes());
    id[2..4].copy_from_slice(&remote.to_be_bytes());
    id[4..8].copy_from_slice(&lo);
    id[20..24].copy_from_slice(&lo);
    // 36..40: any interface.
    id[40..44].copy_from_slice(&NO_COOKIE.to_ne_bytes());
    id[44..48].copy_from_slice(&NO_COOKIE.to_ne_bytes());
    id
}

/// What we read of an inet_diag_msg.
struct Socket {
    state: u8,
    local: u16,
    remote: u16,
    inode: u32,
}

impl Socket {
    fn parse(msg: &[u8]) -> Option<Socket> {
        Some(Socket {
            state: *msg.get(1)?,
            local: u16::from_be_bytes(field(msg, 4).ok()?),
            remote: u16::from_be_bytes(field(msg, 6).ok()?),
            inode: u32::from_ne_bytes(field(msg, 68).ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn finds_the_accepted_socket_of_a_connection_and_nothing_else() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let server = listener.local_addr().unwrap().port();
        let client = TcpStream::connect((Ipv4Addr::LOCALHOST, server)).unwrap();
        let mine = client.local_addr().unwrap().port();
        assert_eq!(
            loopback_tcp_state(server, mine).unwrap(),
            Some(1),
            "established"
        );
        let other = TcpStream::connect((Ipv4Addr::LOCALHOST, server)).unwrap();
        let theirs = other.local_addr().unwrap().port();
        assert_eq!(loopback_tcp_state(server, theirs).unwrap(), Some(1));
        let unused = (1..).find(|p| ![mine, theirs, server].contains(p)).unwrap();
        assert_eq!(
            loopback_tcp_state(server, unused).unwrap(),
            None,
            "the listener is not it"
        );
    }

    #[test]
    fn a_time_wait_socket_of_the_same_ports_is_not_an_accepted_connection() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let server = listener.local_addr().unwrap().port();
        let client = TcpStream::connect((Ipv4Addr::LOCALHOST, server)).unwrap();
        let mine = client.local_addr().unwrap().port();
        let (accepted, _) = listener.accept().unwrap();
        assert!(loopback_accepted(server, mine).unwrap());
        // The server closes first: its side lingers in TIME_WAIT once the client closes too.
        drop(accepted);
        drop(client);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while loopback_tcp_state(server, mine).unwrap() != Some(6) {
            assert!(std::time::Instant::now() < deadline, "no TIME_WAIT");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!loopback_accepted(server, mine).unwrap());
    }

    #[test]
    fn lists_the_listeners_of_a_port_in_both_families() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let _connected = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        assert_eq!(
            listening_inodes(port).unwrap().len(),
            1,
            "not the connection"
        );
        drop(listener);
        assert_eq!(listening_inodes(port).unwrap(), Vec::<u64>::new());
        if let Ok(v6) = TcpListener::bind("[::1]:0") {
            let port = v6.local_addr().unwrap().port();
            assert_eq!(listening_inodes(port).unwrap().len(), 1);
        }
    }

    #[test]
    fn a_request_is_a_header_and_an_inet_diag_req_v2() {
        assert_eq!(
            request(2, 1, 0, loopback_id(80, 81)).len(),
            16 + REQUEST_LEN
        );
    }
}
