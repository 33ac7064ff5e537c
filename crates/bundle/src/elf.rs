//! Is an executable static? Reads the ELF program headers and looks for `PT_INTERP`.

use std::fs;
use std::path::Path;

/// `p_type` of the program header that names the dynamic loader.
const PT_INTERP: u32 = 3;

/// How an ELF file is linked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linking {
    /// No program interpreter: runs without a dynamic loader (static or static-pie).
    Static,
    /// Needs this dynamic loader.
    Dynamic(String),
}

/// Reads `path` and tells how it is linked.
pub fn linking_of(path: &Path) -> Result<Linking, String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    linking(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Tells how the ELF image `bytes` is linked, from its program headers.
pub fn linking(bytes: &[u8]) -> Result<Linking, String> {
    if bytes.len() < 0x34 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    let wide = match bytes[4] {
        1 => false,
        2 => true,
        other => return Err(format!("unknown ELF class {other}")),
    };
    let little = match bytes[5] {
        1 => true,
        2 => false,
        other => return Err(format!("unknown ELF byte order {other}")),
    };
    let read = |offset: usize, size: usize| -> Result<u64, String> {
        let field = bytes
            .get(offset..offset + size)
            .ok_or("truncated ELF file")?;
        let mut value = 0u64;
        for i in 0..size {
            let byte = if little {
                field[size - 1 - i]
            } else {
                field[i]
            };
            value = (value << 8) | u64::from(byte);
        }
        Ok(value)
    };
    // e_phoff, e_phentsize, e_phnum; in a header entry: p_type, p_offset, p_filesz.
    let (phoff, phentsize, phnum) = if wide {
        (read(0x20, 8)?, read(0x36, 2)?, read(0x38, 2)?)
    } else {
        (read(0x1C, 4)?, read(0x2A, 2)?, read(0x2C, 2)?)
    };
    let (offset_at, filesz_at, word) = if wide {
        (0x08, 0x20, 8)
    } else {
        (0x04, 0x10, 4)
    };
    for index in 0..phnum {
        let entry =
            usize::try_from(phoff + index * phentsize).map_err(|_| "bad program header offset")?;
        if read(entry, 4)? as u32 != PT_INTERP {
            continue;
        }
        let start = read(entry + offset_at, word)? as usize;
        let size = read(entry + filesz_at, word)? as usize;
        let raw = bytes
            .get(start..start.saturating_add(size))
            .ok_or("truncated PT_INTERP")?;
        let interp = String::from_utf8_lossy(raw)
            .trim_end_matches('\0')
            .to_string();
        return Ok(Linking::Dynamic(interp));
    }
    Ok(Linking::Static)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal 64-bit little-endian ELF image with the given program header types.
    fn elf64(types: &[u32]) -> Vec<u8> {
        let interp = b"/lib64/ld-linux-x86-64.so.2\0";
        let phoff = 64u64;
        let data_at = phoff as usize + 56 * types.len();
        let mut bytes = vec![0u8; data_at];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 2;
        bytes[5] = 1;
        bytes[0x20..0x28].copy_from_slice(&phoff.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        bytes[0x38..0x3A].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            let at = phoff as usize + 56 * i;
            bytes[at..at + 4].copy_from_slice(&t.to_le_bytes());
            bytes[at + 8..at + 16].copy_from_slice(&(data_at as u64).to_le_bytes());
            bytes[at + 0x20..at + 0x28].copy_from_slice(&(interp.len() as u64).to_le_bytes());
        }
        bytes.extend_from_slice(interp);
        bytes
    }

    #[test]
    fn finds_the_interpreter() {
        assert_eq!(
            linking(&elf64(&[6, 3, 1])).unwrap(),
            Linking::Dynamic("/lib64/ld-linux-x86-64.so.2".into())
        );
        assert_eq!(linking(&elf64(&[6, 1, 2])).unwrap(), Linking::Static);
    }

    #[test]
    fn big_endian_32_bit() {
        let mut bytes = vec![0u8; 52 + 32];
        bytes[..4].copy_from_slice(b"\x7fELF");
        bytes[4] = 1;
        bytes[5] = 2;
        bytes[0x1C..0x20].copy_from_slice(&52u32.to_be_bytes());
        bytes[0x2A..0x2C].copy_from_slice(&32u16.to_be_bytes());
        bytes[0x2C..0x2E].copy_from_slice(&1u16.to_be_bytes());
        bytes[52..56].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(linking(&bytes).unwrap(), Linking::Static);
        bytes[52..56].copy_from_slice(&PT_INTERP.to_be_bytes());
        bytes[56..60].copy_from_slice(&84u32.to_be_bytes());
        bytes[68..72].copy_from_slice(&8u32.to_be_bytes());
        assert!(linking(&bytes).unwrap_err().contains("truncated"));
        bytes.extend_from_slice(b"/lib/ld\0");
        assert_eq!(linking(&bytes).unwrap(), Linking::Dynamic("/lib/ld".into()));
    }

    #[test]
    fn rejects_non_elf_and_truncated_files() {
        assert!(linking(b"#!/bin/sh\necho hi\n")
            .unwrap_err()
            .contains("not an ELF"));
        let mut cut = elf64(&[3]);
        cut.truncate(80);
        assert!(linking(&cut).is_err());
    }

    #[test]
    fn real_executables() {
        // /bin/sh is dynamically linked on every distribution this runs on.
        if let Ok(Linking::Dynamic(interp)) = linking_of(Path::new("/bin/sh")) {
            assert!(interp.contains("ld"), "{interp}");
        }
        // This test binary itself is built with crt-static (.cargo/config.toml).
        let me = std::env::current_exe().unwrap();
        assert_eq!(linking_of(&me).unwrap(), Linking::Static);
    }
}
