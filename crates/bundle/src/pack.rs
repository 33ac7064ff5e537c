//! Packs a revision directory as `.tgz` and `.zip`, keeping each file's Unix mode (the agent
//! runs the hooks only if they are executable). Entries are sorted, directories before their
//! contents, with no owner or time stamps of the build machine.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use portswap::Error as PortswapError;

use crate::error::{Error, Result};

/// Every file under `dir`, relative to it, sorted (directories before their contents).
fn entries(dir: &Path) -> io::Result<Vec<PathBuf>> {
    fn walk(root: &Path, at: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
        let mut children: Vec<_> = fs::read_dir(at)?.collect::<Result<_, _>>()?;
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let path = child.path();
            out.push(path.strip_prefix(root).expect("under root").to_path_buf());
            if child.file_type()?.is_dir() {
                walk(root, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// Packs `dir` as a gzipped tar with its Unix modes.
pub fn tgz(dir: &Path, out: &Path) -> Result<()> {
    tgz_at(dir, out, None)
}

/// [`tgz`] with every entry's modification time set to `mtime` (seconds since the epoch,
/// e.g. the commit's time) instead of tar's deterministic default (2006).
pub fn tgz_at(dir: &Path, out: &Path, mtime: Option<u64>) -> Result<()> {
    let fail = |e: io::Error| Error::from(PortswapError::io("write", out, e));
    let gz = flate2::write::GzEncoder::new(
        File::create(out).map_err(fail)?,
        flate2::Compression::default(),
    );
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    for entry in entries(dir).map_err(fail)? {
        let path = dir.join(&entry);
        let meta = fs::symlink_metadata(&path).map_err(fail)?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Deterministic);
        header.set_mode(meta.permissions().mode() & 0o7777);
        if let Some(mtime) = mtime {
            header.set_mtime(mtime);
        }
        if meta.is_dir() {
            tar.append_data(&mut header, &entry, io::empty())
                .map_err(fail)?;
        } else {
            tar.append_data(&mut header, &entry, File::open(&path).map_err(fail)?)
                .map_err(fail)?;
        }
    }
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .map_err(fail)?
        .flush()
        .map_err(fail)
}

/// Packs `dir` as a zip archive with its Unix modes.
pub fn zip(dir: &Path, out: &Path) -> Result<()> {
    let fail = |e: &dyn std::fmt::Display| Error::Write {
        path: out.to_path_buf(),
        problem: e.to_string(),
    };
    let mut zip = zip::ZipWriter::new(File::create(out).map_err(|e| fail(&e))?);
    for entry in entries(dir).map_err(|e| fail(&e))? {
        let path = dir.join(&entry);
        let meta = fs::metadata(&path).map_err(|e| fail(&e))?;
        let name = entry.to_str().ok_or_else(|| fail(&"non-UTF-8 file name"))?;
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(meta.permissions().mode() & 0o7777);
        if meta.is_dir() {
            zip.add_directory(format!("{name}/"), options)
                .map_err(|e| fail(&e))?;
        } else {
            zip.start_file(name, options).map_err(|e| fail(&e))?;
            io::copy(&mut File::open(&path).map_err(|e| fail(&e))?, &mut zip)
                .map_err(|e| fail(&e))?;
        }
    }
    zip.finish().map_err(|e| fail(&e))?;
    Ok(())
}
