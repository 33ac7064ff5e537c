//! File writes that never leave a half-written file and never follow a planted symlink.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::os::fd::{AsRawFd, FromRawFd};

use nix::fcntl::OFlag;
use nix::libc;
use nix::sys::stat::Mode;

use crate::error::{Error, FileError, Result};

/// Replaces `path` with `bytes` atomically: a new temp file in the same directory
/// (created exclusively, so no symlink is followed), fsync, rename over, fsync the directory.
/// The file gets `mode`; as root, an existing file's owner is kept. Callers hold the state
/// lock: leftover temp files of other writers are removed as stale.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    remove_stale_temps(dir, &name);
    let temp = dir.join(format!(".{name}.portswap-{}.tmp", std::process::id()));
    let previous_owner = fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| (m.uid(), m.gid()));
    let result = (|| {
        let _ = fs::remove_file(&temp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)
            .map_err(|e| Error::io("cannot create", &temp, e))?;
        file.write_all(bytes)
            .map_err(|e| Error::io("cannot write", &temp, e))?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("cannot chmod", &temp, e))?;
        if let Some((uid, gid)) = previous_owner.filter(|_| nix::unistd::geteuid().is_root()) {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(|e| Error::io("cannot chown", &temp, e))?;
        }
        file.sync_all()
            .map_err(|e| Error::io("cannot fsync", &temp, e))?;
        fs::rename(&temp, path).map_err(|e| Error::io("cannot rename into place", path, e))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Removes temp files that earlier writers of `name` left when killed mid-write. Every
/// write happens under the state lock, so a temp file of another pid is never in use (the
/// pid itself may already belong to an unrelated process).
fn remove_stale_temps(dir: &Path, name: &str) {
    let prefix = format!(".{name}.portswap-");
    let mine = format!("{prefix}{}.tmp", std::process::id());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with(&prefix) && file.ends_with(".tmp") && file != mine {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Reads a small text file without following a symlink; `Ok(None)` when it does not exist.
/// Anything but a regular file (a FIFO, which would block the read; a directory; a device)
/// is refused at once as a state error naming the fix.
pub fn read_small(path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(FileError::Symlink {
                path: path.to_path_buf(),
            }
            .into())
        }
        Err(e) => return Err(Error::io("cannot read", path, e)),
    };
    refuse_irregular(path, &file)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("cannot read", path, e))?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            limit,
        }
        .into());
    }
    Ok(Some(bytes))
}

/// A state error unless the opened `file` is a regular file.
fn refuse_irregular(path: &Path, file: &File) -> Result<()> {
    let kind = file
        .metadata()
        .map_err(|e| Error::io("cannot stat", path, e))?
        .file_type();
    match kind.is_file() {
        true => Ok(()),
        false => Err(not_regular(path, kind)),
    }
}

/// The one wording for a FIFO, a directory or a device where portswap expects one of its
/// files (exit 2, with the fix).
fn not_regular(path: &Path, kind: fs::FileType) -> Error {
    use std::os::unix::fs::FileTypeExt;
    let what = if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else {
        "a socket or device"
    };
    FileError::NotRegular {
        path: path.to_path_buf(),
        what,
    }
    .into()
}

/// Refuses a FIFO, directory or device at `path` without opening it (a symlink or a missing
/// file is left to the reader): for files whose reader only warns about what it cannot read.
pub fn refuse_special(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.is_file() && !meta.file_type().is_symlink() => {
            Err(not_regular(path, meta.file_type()))
        }
        _ => Ok(()),
    }
}

/// Creates `dir` (and missing parents) with exactly `mode`, whatever the umask (the
/// CodeDeploy agent 2.x runs hooks with umask 0027, which would leave a root-made
/// `releases/` closed to `app.user`). Existing directories are left as they are.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        ensure_dir(parent, mode)?;
    }
    match fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("cannot chmod directory", dir, e)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(Error::io("cannot create directory", dir, e)),
    }
}

/// True when only root or the hook's own user can change the directory described by `meta`
/// (its owner is one of them and neither its group nor others may write it).
/// With `sticky_ok`, a directory everyone may write but with the sticky bit (`/tmp`) counts
/// too: there nobody can rename or replace an entry they do not own, and the entries walked
/// through are checked themselves.
fn only_ours(meta: &fs::Metadata, sticky_ok: bool) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    let sticky = sticky_ok && meta.mode() & 0o1000 != 0;
    (meta.uid() == 0 || meta.uid() == me) && (meta.mode() & 0o022 == 0 || sticky)
}

/// Who besides root and the hook's user could change `meta`'s directory, for messages.
fn others_of(meta: &fs::Metadata) -> String {
    format!(
        "owned by uid {}, mode {:04o}",
        meta.uid(),
        meta.mode() & 0o7777
    )
}

/// `None` when only root or the hook's user can change the directory `meta` describes; else
/// who else can (owner and mode), for a refusal.
pub fn others_can_change(meta: &fs::Metadata) -> Option<String> {
    (!only_ours(meta, false)).then(|| others_of(meta))
}

/// An open directory, reached component by component from `/`.
#[derive(Debug)]
pub struct Dir {
    /// The directory itself (open it or change what is in it through this descriptor).
    pub file: File,
    /// The first directory on the way (itself included) that someone besides root and the
    /// hook's user could change, with its owner and mode; `None` when there is none.
    pub changeable_by_others: Option<String>,
}

/// Opens directory `path` (absolute) one component at a time from `/`, never following a
/// symbolic link that another user could have planted: a link is followed only where it lies
/// in a directory only root or the hook's own user can change (`/var/run -> /run`). With
/// `create`, missing directories are made with that mode, through their parent's descriptor.
pub fn open_dir(path: &Path, create: Option<u32>) -> Result<Dir> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    use std::path::Component;
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let open_at = |dir: &File, name: &OsString| -> nix::Result<File> {
        let fd = nix::fcntl::openat(
            Some(dir.as_raw_fd()),
            name.as_os_str(),
            flags,
            Mode::empty(),
        )?;
        // SAFETY: openat just returned this descriptor, owned by nothing else.
        Ok(unsafe { File::from_raw_fd(fd) })
    };
    let root = || File::open("/").map_err(|e| Error::io("cannot open", Path::new("/"), e));
    let names = |p: &Path| -> VecDeque<OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect()
    };
    let absolute;
    let path = if path.is_absolute() {
        path
    } else {
        absolute = std::env::current_dir()
            .map_err(|e| Error::io("cannot resolve", path, e))?
            .join(path);
        &absolute
    };
    let mut todo = names(path);
    let mut dir = root()?;
    let mut others = None;
    let mut links = 0;
    // Every directory on the way, the last one without the sticky exception (anyone could
    // create the file there first).
    let note = |dir: &File, others: &mut Option<String>, at: &Path, last: bool| {
        if others.is_none() {
            if let Ok(meta) = dir.metadata() {
                if !only_ours(&meta, !last) {
                    *others = Some(format!("{} ({})", at.display(), others_of(&meta)));
                }
            }
        }
    };
    let mut at = PathBuf::from("/");
    while let Some(name) = todo.pop_front() {
        let next = match open_at(&dir, &name) {
            Err(nix::errno::Errno::ENOENT) if create.is_some() => {
                let mode = Mode::from_bits_truncate(create.unwrap_or(0o755));
                match nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name.as_os_str(), mode) {
                    Ok(()) => {
                        // Its mode exactly, whatever the umask (agent 2.x runs hooks with 0027).
                        let made = open_at(&dir, &name).map_err(|e| {
                            Error::io("cannot open directory", &at.join(&name), e.into())
                        })?;
                        made.set_permissions(fs::Permissions::from_mode(mode.bits()))
                            .map_err(|e| Error::io("cannot chmod", &at.join(&name), e))?;
                    }
                    Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => {
                        return Err(Error::io(
                            "cannot create directory",
                            &at.join(&name),
                            e.into(),
                        ))
                    }
                }
                open_at(&dir, &name)
            }
            other => other,
        };
        let here = at.join(&name);
        match next {
            Ok(next) => {
                dir = next;
                at = here;
                note(&dir, &mut others, &at, todo.is_empty());
            }
            Err(nix::errno::Errno::ELOOP) | Err(nix::errno::Errno::ENOTDIR) => {
                let link = nix::sys::stat::fstatat(
                    Some(dir.as_raw_fd()),
                    name.as_os_str(),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .ok()
                .filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK);
                let Some(link) = link else {
                    return Err(FileError::NotDirectory { path: here }.into());
                };
                let parent = dir
                    .metadata()
                    .map_err(|e| Error::io("cannot stat", &at, e))?;
                let me = nix::unistd::geteuid().as_raw();
                links += 1;
                if !only_ours(&parent, true)
                    || (link.st_uid != 0 && link.st_uid != me)
                    || links > 40
                {
                    return Err(FileError::SharedLink {
                        path: here,
                        others: others_of(&parent).to_string(),
                    }
                    .into());
                }
                let target = nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name.as_os_str())
                    .map_err(|e| Error::io("cannot read link", &here, e.into()))?;
                let target = PathBuf::from(target);
                if target.is_absolute() {
                    dir = root()?;
                    at = PathBuf::from("/");
                }
                for part in names(&target).into_iter().rev() {
                    todo.push_front(part);
                }
            }
            Err(e) => return Err(Error::io("cannot open directory", &here, e.into())),
        }
    }
    Ok(Dir {
        file: dir,
        changeable_by_others: others,
    })
}

/// Opens `dir/name` for appending (created with `mode` when missing) without following a
/// symlink anywhere on the way (see [`open_dir`]) and refusing anything but a regular file
/// (a FIFO never blocks the open); with `owner`, hands the opened file (never a path, which
/// could be swapped for a link meanwhile) to that uid/gid.
pub fn open_append_in(
    dir: &Path,
    name: &str,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<File> {
    let path = dir.join(name);
    let dir_fd = open_dir(dir, None)?.file;
    let fd = nix::fcntl::openat(
        Some(dir_fd.as_raw_fd()),
        name,
        OFlag::O_WRONLY
            | OFlag::O_APPEND
            | OFlag::O_CREAT
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )
    .map_err(|e| match e {
        // A FIFO without a reader (opened non-blocking for writing).
        nix::errno::Errno::ENXIO => FileError::NotRegular {
            path: path.clone(),
            what: "a FIFO",
        }
        .into(),
        e => Error::io("cannot open", &path, e.into()),
    })?;
    // SAFETY: openat just returned this descriptor, owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    let meta = file
        .metadata()
        .map_err(|e| Error::io("cannot stat", &path, e))?;
    if !meta.is_file() {
        return Err(not_regular(&path, meta.file_type()));
    }
    // Back to blocking writes (O_NONBLOCK only kept a planted FIFO from blocking the open).
    nix::fcntl::fcntl(
        file.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(OFlag::O_APPEND),
    )
    .map_err(|e| Error::io("cannot set flags of", &path, e.into()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .map_err(|e| Error::io("cannot chown", &path, e))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_refuses_nothing_half_done() {
        let dir = std::env::temp_dir().join(format!("portswap-fsio-{}", std::process::id()));
        ensure_dir(&dir, 0o755).unwrap();
        let target = dir.join("a.inc");
        let stale = dir.join(format!(".a.inc.portswap-{}.tmp", std::process::id() + 1));
        fs::write(&stale, "half").unwrap();
        write_atomic(&target, b"one\n", 0o644).unwrap();
        assert!(!stale.exists(), "a dead writer's temp file is cleaned up");
        write_atomic(&target, b"two\n", 0o644).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two\n");
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o644);
        // A symlink at the target is replaced, not followed.
        let victim = dir.join("victim");
        fs::write(&victim, "keep").unwrap();
        let link = dir.join("link.inc");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        write_atomic(&link, b"new\n", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert!(fs::symlink_metadata(&link).unwrap().is_file());
        assert!(read_small(&dir.join("missing"), 10).unwrap().is_none());
        assert!(read_small(&target, 2).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
