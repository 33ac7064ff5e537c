//! The 5xx check of the watch: what nginx answered for the new version, read from a dedicated
//! access log written with `log_format portswap_watch '$upstream_addr $status';`.
//!
//! Only lines appended after the watch began count. A line whose last upstream address is
//! not the watched port is skipped (another location, the previous version's kept
//! connections); so is a line that does not parse. A log that shrinks was rotated: reading
//! starts again at its beginning.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

use nix::libc;

use crate::config::ErrorWatch;
use crate::duration::show;

/// The most read from the log in one check; the rest waits for the next one.
const READ_LIMIT: u64 = 4 * 1024 * 1024;

/// Counts of one check: requests to the watched port, and how many of them were 5xx.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests nginx sent to the watched port.
    pub requests: u64,
    /// Of those, answered with a 5xx status.
    pub errors: u64,
}

/// The access log followed from where it ended when the watch began.
pub struct ErrorLog {
    rules: ErrorWatch,
    port: u16,
    file: File,
    offset: u64,
    partial: Vec<u8>,
    window: VecDeque<(Instant, Counts)>,
    /// Everything seen since the watch began.
    pub total: Counts,
}

impl ErrorLog {
    /// Opens the log (a regular file, no symbolic link) at its current end, to count answers
    /// for upstream port `port`; `Err` says why it cannot be read.
    pub fn open(rules: &ErrorWatch, port: u16) -> Result<ErrorLog, String> {
        let (file, len) = open_regular(&rules.access_log)?;
        Ok(ErrorLog {
            rules: rules.clone(),
            port,
            file,
            offset: len,
            partial: Vec::new(),
            window: VecDeque::new(),
            total: Counts::default(),
        })
    }

    /// Reads what nginx appended since the last check; `Some(why)` once the share of 5xx
    /// over the window is above the threshold.
    pub fn check(&mut self) -> Option<String> {
        let now = Instant::now();
        let counts = self.read_new();
        self.total.requests += counts.requests;
        self.total.errors += counts.errors;
        self.window.push_back((now, counts));
        while self
            .window
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > self.rules.window)
        {
            self.window.pop_front();
        }
        let (requests, errors) = self
            .window
            .iter()
            .fold((0, 0), |(r, e), (_, c)| (r + c.requests, e + c.errors));
        let over = requests >= u64::from(self.rules.min_requests)
            && errors as f64 * 100.0 > self.rules.max_5xx_percent * requests as f64;
        over.then(|| {
            format!(
                "{errors} of the {requests} answers nginx gave for port {} in the last {} were \
                 5xx (more than watch.max_5xx_percent {}%; {})",
                self.port,
                show(self.rules.window),
                self.rules.max_5xx_percent,
                self.rules.access_log.display()
            )
        })
    }

    /// What was appended since the last check; after a rotation that renamed the log (nginx
    /// reopens it on USR1), the rest of the old file, then the new one from its start.
    fn read_new(&mut self) -> Counts {
        let mut counts = self.read_appended();
        if self.renamed() {
            if let Ok((file, _)) = open_regular(&self.rules.access_log) {
                log::info!(
                    "{} was rotated: reading the new file from its start",
                    self.rules.access_log.display()
                );
                self.file = file;
                self.offset = 0;
                self.partial.clear();
                let more = self.read_appended();
                counts.requests += more.requests;
                counts.errors += more.errors;
            }
        }
        counts
    }

    /// Whether the path now names another file than the one open.
    fn renamed(&self) -> bool {
        let (Ok(open), Ok(now)) = (
            self.file.metadata(),
            std::fs::symlink_metadata(&self.rules.access_log),
        ) else {
            return false;
        };
        (open.dev(), open.ino()) != (now.dev(), now.ino())
    }

    fn read_appended(&mut self) -> Counts {
        let len = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            log::info!(
                "{} shrank (truncated by a rotation?): reading it from its start",
                self.rules.access_log.display()
            );
            self.offset = 0;
            self.partial.clear();
        }
        if len == self.offset || self.file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Counts::default();
        }
        let mut bytes = Vec::new();
        let read = (&mut self.file)
            .take(READ_LIMIT.min(len - self.offset))
            .read_to_end(&mut bytes)
            .unwrap_or(0);
        self.offset += read as u64;
        self.partial.extend_from_slice(&bytes[..read]);
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Counts::default();
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        count(&complete, self.port)
    }
}

/// `path` opened for reading if it is a regular file (no symbolic link, no FIFO to block
/// on), with its length.
fn open_regular(path: &Path) -> Result<(File, u64), String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    Ok((file, meta.len()))
}

/// The requests to `port` and the 5xx among them in whole log lines `text`.
pub fn count(text: &[u8], port: u16) -> Counts {
    let mut counts = Counts::default();
    for line in String::from_utf8_lossy(text).lines() {
        if let Some(status) = answer_of(line, port) {
            counts.requests += 1;
            counts.errors += u64::from((500..600).contains(&status));
        }
    }
    counts
}

/// The status of one `$upstream_addr $status` line when its (last) upstream is `port` on
/// 127.0.0.1.
fn answer_of(line: &str, port: u16) -> Option<u16> {
    let (upstreams, status) = line.trim().rsplit_once(' ')?;
    let status: u16 = status.parse().ok()?;
    // `a, b` lists the servers tried in turn, `a : b` the groups of internal redirects: the
    // last one gave the answer.
    let address = upstreams.rsplit(", ").next()?.rsplit(" : ").next()?.trim();
    (address == format!("127.0.0.1:{port}")).then_some(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_only_the_watched_port() {
        let log = b"127.0.0.1:8082 200\n127.0.0.1:8082 502\n127.0.0.1:8081 500\n\
                    - 404\n127.0.0.1:8081, 127.0.0.1:8082 503\n127.0.0.1:80820 500\n\
                    127.0.0.1:8082 : 127.0.0.1:8081 500\ngarbage\n";
        assert_eq!(
            count(log, 8082),
            Counts {
                requests: 3,
                errors: 2
            }
        );
        assert_eq!(
            count(log, 8081),
            Counts {
                requests: 2,
                errors: 2
            }
        );
    }

    #[test]
    fn follows_appended_lines_over_a_window() {
        let dir = std::env::temp_dir().join(format!("portswap-accesslog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("watch.log");
        std::fs::write(&path, "127.0.0.1:9 500\n".repeat(50)).unwrap();
        let rules = ErrorWatch {
            access_log: path.clone(),
            max_5xx_percent: 10.0,
            min_requests: 10,
            window: Duration::from_secs(5),
        };
        let mut log = ErrorLog::open(&rules, 9).unwrap();
        assert_eq!(
            log.check(),
            None,
            "lines from before the watch do not count"
        );
        let append = |text: &str| {
            use std::io::Write;
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(text.as_bytes()).unwrap();
        };
        append(&"127.0.0.1:9 200\n".repeat(18));
        append("127.0.0.1:9 500\n127.0.0.1:9 5");
        assert_eq!(log.check(), None, "1 of 19, the half line waits");
        append("02\n127.0.0.1:9 500\n");
        let why = log.check().unwrap();
        assert!(why.starts_with("3 of the 21 answers"), "{why}");
        std::fs::write(&path, "127.0.0.1:9 200\n").unwrap();
        log.check();
        assert_eq!(
            log.total.requests, 22,
            "a rotated log is read from its start"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
