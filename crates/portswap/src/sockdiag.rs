//! One TCP socket looked up by its addresses through netlink sock_diag (what `ss` asks), for
//! the nftables switch's proof that a fresh connection reached the target. /proc/net/tcp would
//! do too, but it lists every socket including TIME_WAIT ones: on a host under load that is
//! ~100,000 lines and most of a second to read (measured), where an exact lookup is one round
//! trip to the kernel.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use nix::libc;
use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const TCP_LISTEN: u8 = 10;
const NO_COOKIE: u32 = u32::MAX;

/// The kernel's state of the IPv4 TCP socket bound to 127.0.0.1:`local` and connected to
/// 127.0.0.1:`remote` (an accepted connection, or one still in the handshake); `None` when
/// there is no such socket.
pub fn loopback_tcp_state(local: u16, remote: u16) -> io::Result<Option<u8>> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )?;
    sendto(
        fd.as_raw_fd(),
        &request(local, remote),
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )?;
    let mut reply = [0u8; 4096];
    let n = recv(fd.as_raw_fd(), &mut reply, MsgFlags::empty())?;
    parse(&reply[..n], remote)
}

/// nlmsghdr + inet_diag_req_v2 for an exact lookup (no dump) of one socket.
fn request(local: u16, remote: u16) -> Vec<u8> {
    let lo = Ipv4Addr::LOCALHOST.octets();
    let mut m = Vec::with_capacity(72);
    m.extend(72u32.to_ne_bytes());
    m.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend(NLM_F_REQUEST.to_ne_bytes());
    m.extend(1u32.to_ne_bytes()); // sequence
    m.extend(0u32.to_ne_bytes()); // port id: the kernel fills it in
    m.extend([libc::AF_INET as u8, libc::IPPROTO_TCP as u8, 0, 0]);
    m.extend(u32::MAX.to_ne_bytes()); // every state
    m.extend(local.to_be_bytes());
    m.extend(remote.to_be_bytes());
    m.extend(lo);
    m.extend([0; 12]);
    m.extend(lo);
    m.extend([0; 12]);
    m.extend(0u32.to_ne_bytes()); // any interface
    m.extend(NO_COOKIE.to_ne_bytes());
    m.extend(NO_COOKIE.to_ne_bytes());
    m
}

/// The state from an inet_diag_msg reply, `None` for ENOENT or for the listener the kernel
/// falls back to when no connection matches.
fn parse(reply: &[u8], remote: u16) -> io::Result<Option<u8>> {
    if u16::from_ne_bytes(field(reply, 4)?) == NLMSG_ERROR {
        return match -i32::from_ne_bytes(field(reply, 16)?) {
            0 | libc::ENOENT => Ok(None),
            errno => Err(io::Error::from_raw_os_error(errno)),
        };
    }
    let [_, state] = field(reply, 16)?;
    let peer = u16::from_be_bytes(field(reply, 22)?);
    Ok((state != TCP_LISTEN && peer == remote).then_some(state))
}

/// `N` bytes of `reply` at `at`.
fn field<const N: usize>(reply: &[u8], at: usize) -> io::Result<[u8; N]> {
    reply
        .get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short sock_diag reply"))
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
        assert_eq!(request(server, mine).len(), 72);
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
}
