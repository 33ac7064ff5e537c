//! The hook binaries are statically linked: no ELF interpreter, and `--version` runs in an
//! empty chroot (no libc, no loader).

use std::os::unix::process::CommandExt;
use std::process::Command;

use portswap_testkit::bins;

/// True when the ELF file has a PT_INTERP program header (it needs a dynamic loader).
fn has_interpreter(bytes: &[u8]) -> bool {
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(bytes[4], 2, "64-bit ELF expected");
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum)
        .any(|i| u32::from_le_bytes(bytes[phoff + i * phentsize..][..4].try_into().unwrap()) == 3)
}

#[test]
fn hook_binaries_have_no_elf_interpreter() {
    bins::ensure_built();
    for hook in ["stop", "start", "health", "switch"] {
        let bytes = std::fs::read(bins::bin(hook)).unwrap();
        assert!(!has_interpreter(&bytes), "{hook} is dynamically linked");
    }
    let dynamic = std::fs::read("/bin/ls").unwrap();
    assert!(has_interpreter(&dynamic), "the check sees a dynamic binary");
}

#[test]
fn version_runs_in_an_empty_chroot() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: chroot needs root");
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
