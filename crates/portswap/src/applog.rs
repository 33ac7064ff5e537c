//! The app's own output, as the hooks show it when the app fails.

use crate::fsio;
use crate::state::AppRecord;

/// Last lines of the app log shown when it fails.
const TAIL_LINES: usize = 8;

/// Logs the last lines of the app's log, for the operator reading the hook output.
pub fn log_tail(record: &AppRecord) {
    for line in fsio::tail(&record.log_file, TAIL_LINES) {
        log::error!("app log: {line}");
    }
}

/// One line for an app that died: `how`, and its last log line.
pub fn died(record: &AppRecord, how: &str) -> String {
    let tail = fsio::tail(&record.log_file, 1);
    let last = tail
        .last()
        .map(|l| format!("; last log line: {l}"))
        .unwrap_or_else(|| "; its log is empty".into());
    format!(
        "the app on port {} (pid {}) {how}{last} (log {})",
        record.port,
        record.pid,
        record.log_file.display()
    )
}
