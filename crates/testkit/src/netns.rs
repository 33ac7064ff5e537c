//! A private network namespace per test: its own loopback, ports and nftables ruleset, so
//! tests with a real `nft` never touch the host's rules.
//!
//! [`isolated`] runs the test body on a new thread that `unshare(CLONE_NEWNET)` moved into a
//! fresh namespace (a network namespace belongs to a thread, and children and threads inherit
//! it): nginx, the apps, the hooks, `nft` and client threads started from the body all live
//! there. The namespace disappears with the last of them; its ruleset with it.

use std::io;
use std::path::PathBuf;
use std::process::Command;

use nix::libc;

use crate::tools;
use nix::sched::{unshare, CloneFlags};

/// Runs `body` in a fresh network namespace with `lo` up and returns its result (a panic in
/// `body` is re-raised here). Reports `what` as skipped (see [`skip`](crate::skip)) and
/// returns `None` where the machine has no `nft` or refuses to create a namespace (no
/// CAP_SYS_ADMIN).
pub fn isolated<T: Send + 'static>(
    what: &str,
    body: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if !tools::need(what, &[&tools::NFT]) {
        return None;
    }
    let handle = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
        loopback_up().map_err(|e| format!("bringing lo up: {e}"))?;
        Ok::<T, String>(body())
    });
    match handle.join() {
        Ok(Ok(value)) => Some(value),
        Ok(Err(refused)) => {
            crate::skip(what, &format!("no private network namespace ({refused})"));
            None
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Sets IFF_UP on `lo` of the calling thread's namespace.
pub(crate) fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket used only for two ioctls on a zeroed, NUL-terminated ifreq; the
    // descriptor is closed before returning.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        let mut result = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if result == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            result = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let error = io::Error::last_os_error();
        libc::close(fd);
        if result == 0 {
            Ok(())
        } else {
            Err(error)
        }
    }
}

/// The `nft` executable, or a panic saying how to install it (tests check first with
/// [`tools::need`], as [`isolated`] does).
pub fn nft_binary() -> PathBuf {
    tools::path(&tools::NFT)
}

/// Runs `nft ARGS` in the calling thread's namespace; its stdout, or its stderr as the error.
pub fn nft(args: &[&str]) -> Result<String, String> {
    let out = Command::new(nft_binary())
        .args(args)
        .output()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_namespace_has_its_own_ports_and_ruleset() {
        let outside = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = outside.local_addr().unwrap().port();
        let inside = isolated("netns self-test", move || {
            // The port taken outside is free inside, and lo works.
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
            let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            drop(listener);
            nft(&["add", "table", "ip", "testkit_probe"]).unwrap();
            nft(&["list", "tables"]).unwrap()
        });
        if let Some(tables) = inside {
            assert!(tables.contains("testkit_probe"), "{tables}");
            let host = nft(&["list", "tables"]).unwrap_or_default();
            assert!(
                !host.contains("testkit_probe"),
                "leaked to the host: {host}"
            );
        }
    }
}
