//! The hook binaries are statically linked: no ELF interpreter, and `--version` runs in an
//! empty chroot (no libc, no loader).

use std::os::unix::process::CommandExt;
use std::process::Command;

use portswap_testkit::bins;
use portswap_testkit::elf::{linking_of, Linking};

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
        let root = tempfile::tempdir().unwrap();
        std::fs::copy(bins::bin(hook), root.path().join(hook)).unwrap();
        let jail = root.path().to_path_buf();
        let mut command = Command::new(format!("/{hook}"));
        command.arg("--version").env_clear();
        // SAFETY: chroot and chdir are async-signal-safe system calls.
        unsafe {
            command.pre_exec(move || {
                nix::unistd::chroot(&jail)?;
                nix::unistd::chdir("/")?;
                Ok(())
            });
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{hook} in an empty chroot: {out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("{hook} ")));
    }
}
