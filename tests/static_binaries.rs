//! The hook binaries are statically linked: no ELF interpreter, `--version` runs in an
//! empty chroot (no libc, no loader), and no host-name lookup is linked in.

use portswap_bundle::elf::{linking_of, Linking};
use portswap_testkit::bins;

#[test]
fn hook_binaries_have_no_elf_interpreter() {
    bins::ensure_built();
    for hook in ["stop", "start", "health", "switch"] {
        assert_eq!(linking_of(&bins::bin(hook)), Ok(Linking::Static), "{hook}");
    }
    let dynamic = linking_of(std::path::Path::new("/bin/ls")).unwrap();
    assert!(
        matches!(dynamic, Linking::Dynamic(_)),
        "the check sees a dynamic binary"
    );
}

#[test]
fn version_runs_in_an_empty_chroot() {
    if !nix::unistd::geteuid().is_root() {
        portswap_testkit::skip("--version in an empty chroot", "chroot needs root");
        return;
    }
    bins::ensure_built();
    for hook in ["stop", "start", "health", "switch"] {
        let (out, chroot) = bins::run_alone(&bins::bin(hook), &["--version"]);
        assert!(chroot);
        assert!(out.status.success(), "{hook} in an empty chroot: {out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("{hook} ")));
    }
}

/// The health probe connects to 127.0.0.1 only: its resolver does no name lookup, so glibc's
/// getaddrinfo (which reads /etc/gai.conf and loads libidn2 at run time, a static binary's
/// NSS trouble) is not in any hook.
#[test]
fn hook_binaries_link_no_name_lookup() {
    bins::ensure_built();
    for hook in ["stop", "start", "health", "switch"] {
        let bytes = std::fs::read(bins::bin(hook)).unwrap();
        for marker in [&b"/etc/gai.conf"[..], b"libidn2.so"] {
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker),
                "{hook} holds getaddrinfo (`{}`)",
                String::from_utf8_lossy(marker)
            );
        }
    }
}
