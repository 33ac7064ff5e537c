//! The few pieces of netlink both kernel conversations need ([`crate::sockdiag`]: socket
//! diagnostics; [`crate::conntrack`]: the connection tracking table): a socket whose every
//! receive is bounded by a deadline, splitting a datagram into messages, and reading and
//! writing attributes (type-length-value, 4-byte aligned).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use nix::sys::socket::{
    recv, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

/// `NLMSG_ERROR`: an error or, with errno 0, an acknowledgement.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
pub const NLMSG_DONE: u16 = 3;
/// The length of nlmsghdr, which precedes every message's payload.
pub const HEADER_LEN: usize = 16;
/// `NLA_F_NESTED`: an attribute that holds attributes.
pub const NESTED: u16 = 0x8000;

/// A netlink socket to the kernel, with room for a reply.
pub struct Socket {
    fd: OwnedFd,
    buf: Vec<u8>,
    deadline: Option<Instant>,
}

impl Socket {
    /// A socket of `protocol` (`NetlinkSockDiag`, `NetlinkNetFilter`) with a `buffer`-byte
    /// receive buffer.
    pub fn open(protocol: SockProtocol, buffer: usize) -> io::Result<Socket> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            protocol,
        )?;
        Ok(Socket {
            fd,
            buf: vec![0; buffer],
            deadline: None,
        })
    }

    /// Every later receive fails with `TimedOut` once `deadline` has passed, instead of
    /// waiting for a kernel that does not answer.
    pub fn bound_by(mut self, deadline: Instant) -> Socket {
        self.deadline = Some(deadline);
        self
    }

    /// Sends one request to the kernel.
    pub fn send(&self, request: &[u8]) -> io::Result<()> {
        let kernel = NetlinkAddr::new(0, 0);
        sendto(self.fd.as_raw_fd(), request, &kernel, MsgFlags::empty())?;
        Ok(())
    }

    /// One datagram of replies.
    pub fn recv(&mut self) -> io::Result<&[u8]> {
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the kernel did not answer in time",
                ));
            }
            // At least 1 µs: zero would mean "wait forever".
            let micros = left.as_micros().clamp(1, i64::MAX as u128) as i64;
            setsockopt(
                &self.fd,
                sockopt::ReceiveTimeout,
                &TimeVal::new(micros / 1_000_000, micros % 1_000_000),
            )?;
        }
        let n = recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()).map_err(|e| {
            if e == nix::errno::Errno::EAGAIN {
                io::Error::new(io::ErrorKind::TimedOut, "the kernel did not answer in time")
            } else {
                io::Error::from(e)
            }
        })?;
        if n == 0 {
            return Err(short());
        }
        Ok(&self.buf[..n])
    }
}

/// A request: nlmsghdr of `kind` with `flags` and sequence 1, followed by `payload`.
pub fn request(kind: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let len = HEADER_LEN + payload.len();
    let mut m = Vec::with_capacity(len);
    m.extend((len as u32).to_ne_bytes());
    m.extend(kind.to_ne_bytes());
    m.extend(flags.to_ne_bytes());
    m.extend(1u32.to_ne_bytes()); // sequence
    m.extend(0u32.to_ne_bytes()); // port id 0: the kernel
    m.extend(payload);
    m
}

/// The (type, payload) of each netlink message in one datagram.
pub fn messages(data: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + HEADER_LEN <= data.len() {
        let len = u32::from_ne_bytes(field(data, at)?) as usize;
        if len < HEADER_LEN || at + len > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed netlink reply",
            ));
        }
        out.push((
            u16::from_ne_bytes(field(data, at + 4)?),
            &data[at + HEADER_LEN..at + len],
        ));
        at += align(len);
    }
    Ok(out)
}

/// The errno of an NLMSG_ERROR payload (0 for an acknowledgement).
pub fn errno(payload: &[u8]) -> io::Result<i32> {
    Ok(-i32::from_ne_bytes(field(payload, 0)?))
}

/// Appends attribute `kind` holding `value` to `out`, padded to 4 bytes.
pub fn put(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend(((4 + value.len()) as u16).to_ne_bytes());
    out.extend(kind.to_ne_bytes());
    out.extend(value);
    out.resize(align(out.len()), 0);
}

/// Appends a nested attribute `kind` whose attributes `fill` writes.
pub fn nest(out: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    fill(&mut inner);
    put(out, kind | NESTED, &inner);
}

/// The (type, value) of each attribute in `data`, the nested flag cleared from the type.
pub fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16::from_ne_bytes(field(data, 0).ok()?) as usize;
        let kind = u16::from_ne_bytes(field(data, 2).ok()?) & !NESTED;
        let value = data.get(4..len)?;
        data = data.get(align(len)..).unwrap_or(&[]);
        Some((kind, value))
    })
}

/// The value of the first attribute `kind` in `data`.
pub fn attribute(data: &[u8], kind: u16) -> Option<&[u8]> {
    attributes(data).find(|(k, _)| *k == kind).map(|(_, v)| v)
}

/// `N` bytes of `bytes` at `at`.
pub fn field<const N: usize>(bytes: &[u8], at: usize) -> io::Result<[u8; N]> {
    bytes
        .get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(short)
}

/// The error of a reply too short for what it must hold.
pub fn short() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "short netlink reply")
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_a_datagram_into_messages_and_refuses_a_torn_one() {
        let mut data = Vec::new();
        for (kind, payload) in [(NLMSG_ERROR, &[1u8, 2, 3][..]), (NLMSG_DONE, &[0u8; 4][..])] {
            data.extend(request(kind, 0, payload));
            data.resize(align(data.len()), 0);
        }
        let got = messages(&data).unwrap();
        assert_eq!(
            got,
            vec![(NLMSG_ERROR, &[1, 2, 3][..]), (NLMSG_DONE, &[0; 4][..])]
        );
        assert!(messages(&data[..HEADER_LEN + 2]).is_err());
    }

    #[test]
    fn attributes_round_trip_nested_and_padded() {
        let mut out = Vec::new();
        put(&mut out, 1, &[7]);
        nest(&mut out, 2, |inner| put(inner, 3, &5u16.to_be_bytes()));
        assert_eq!(out.len() % 4, 0);
        let all: Vec<(u16, &[u8])> = attributes(&out).collect();
        assert_eq!(all[0], (1, &[7u8][..]));
        assert_eq!(all[1].0, 2, "nested flag cleared");
        assert_eq!(attribute(all[1].1, 3), Some(&[0u8, 5][..]));
        assert_eq!(attribute(&out, 9), None);
        assert_eq!(attributes(&out[..3]).count(), 0, "torn");
    }
}
