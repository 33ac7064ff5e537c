//! The app's own output, as the hooks show it when the app fails: only what this start's
//! app wrote (the per-port log is appended to by every app that ran on the port), never
//! through a planted link.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::libc;

use crate::error::{AppGone, GoneHow, Written};
use crate::state::AppRecord;

/// Last lines of the app log shown when it fails.
const TAIL_LINES: usize = 8;

/// At most this much of the log's end is read for a tail.
const TAIL_BYTES: u64 = 16 * 1024;

/// Where the log ends now: what an app started next writes comes after this offset.
pub fn end(path: &Path) -> u64 {
    fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map_or(0, |m| m.len())
}

/// Opens the log for reading: a regular file, never through a symbolic link, never a FIFO
/// (it would hang the hook). `Err` is the one line to show instead of the log.
fn open_log(path: &Path) -> Result<Option<File>, String> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(format!(
                "({} is a symbolic link; not shown)",
                path.display()
            ))
        }
        Err(_) => return Ok(None),
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return Err(format!(
            "({} is not a regular file; not shown)",
            path.display()
        ));
    }
    Ok(Some(file))
}

/// The last `lines` non-blank lines written to `path` after byte `offset` (from the start
/// when the log is now shorter than that: it was rotated or truncated). A log that is a
/// link or not a regular file yields one line saying so, never its content.
pub fn tail_since(path: &Path, offset: u64, lines: usize) -> Vec<String> {
    let mut file = match open_log(path) {
        Ok(Some(file)) => file,
        Ok(None) => return Vec::new(),
        Err(refused) => return vec![refused],
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let offset = if offset > len { 0 } else { offset };
    let from = offset.max(len.saturating_sub(TAIL_BYTES));
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// Logs the last lines the app of `record` wrote, for the operator reading the hook output.
pub fn log_tail(record: &AppRecord) {
    for line in tail_since(&record.log_file, record.log_offset, TAIL_LINES) {
        log::error!("app log: {line}");
    }
}

/// The app of `record` gone `how`, with the last line it wrote to its log.
pub fn died(record: &AppRecord, how: GoneHow) -> AppGone {
    AppGone {
        port: record.port,
        pid: record.pid,
        unit: None,
        how,
        last: tail_since(&record.log_file, record.log_offset, 1).pop(),
        written: Written::Log(record.log_file.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_shows_only_what_came_after_the_offset() {
        let dir = tempfile_dir();
        let log = dir.join("app.log");
        assert_eq!(end(&log), 0);
        fs::write(&log, "started v1\nv1 line\n").unwrap();
        let offset = end(&log);
        assert_eq!(tail_since(&log, offset, 8), Vec::<String>::new());
        let mut text = fs::read_to_string(&log).unwrap();
        text.push_str("\nv2 failed\n");
        fs::write(&log, &text).unwrap();
        assert_eq!(tail_since(&log, offset, 8), vec!["v2 failed"]);
        // Rotated: shorter than the offset, read from the start.
        fs::write(&log, "new\n").unwrap();
        assert_eq!(tail_since(&log, 1000, 8), vec!["new"]);
        // A link is never followed.
        let link = dir.join("link.log");
        std::os::unix::fs::symlink(&log, &link).unwrap();
        assert_eq!(
            tail_since(&link, 0, 8),
            vec![format!(
                "({} is a symbolic link; not shown)",
                link.display()
            )]
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("portswap-applog-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
