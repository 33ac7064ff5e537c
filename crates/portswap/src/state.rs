//! The state directory: the lock, what `start` recorded per slot, the last switch, history.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use nix::libc;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, StateError};
use crate::fsio;
use crate::procfs::ProcId;

// Records carry no `deny_unknown_fields`: ApplicationStop runs the previous revision's
// binary, which must read what a newer one wrote (a field it does not know is ignored;
// a record lacking a field it needs, or garbage, is still rejected).

/// What `start` recorded about the app it started on a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// Process id (also its process group: the app leads its own session).
    pub pid: i32,
    /// Start time of that pid in clock ticks since boot, to detect pid reuse.
    pub start_time: u64,
    /// The slot's port.
    pub port: u16,
    /// The slot's profile.
    pub profile: String,
    /// `DEPLOYMENT_ID` of the deployment that started it.
    pub deployment_id: String,
    /// The argv it was started with.
    pub command: Vec<String>,
    /// The release directory it runs from.
    pub release_dir: PathBuf,
    /// Its log file.
    pub log_file: PathBuf,
    /// Length of the log file when it was started: what it wrote comes after this offset
    /// (0 in records of older versions).
    #[serde(default)]
    pub log_offset: u64,
    /// When it was started, seconds since the Unix epoch.
    pub started_at: u64,
    /// The uid it runs as (absent in records of older versions).
    #[serde(default)]
    pub uid: Option<u32>,
}

impl AppRecord {
    /// The recorded process: pid and start time, so a reused pid never passes for it.
    pub fn process(&self) -> ProcId {
        ProcId {
            pid: self.pid,
            start_time: self.start_time,
        }
    }
}

/// The outcome of the last completed switch, for `--rollback`, the status view and
/// "already live".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchRecord {
    /// Port nginx sends traffic to since the switch.
    pub live: u16,
    /// Port it sent traffic to before, if any.
    pub previous: Option<u16>,
    /// `DEPLOYMENT_ID` of the switch, or `manual-...`.
    pub deployment_id: String,
    /// When, seconds since the Unix epoch.
    pub at: u64,
    /// Set when the watch after a switch sent traffic back: why the version on `previous`
    /// failed it, in one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<String>,
    /// The app on `live` when the switch began (from its slot record): in an intent, what
    /// tells the resumption of this switch from a later deployment that reuses the id
    /// (agent 2.x names local deployments `local-<pid>`). Absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppStamp>,
    /// The app that served on `previous` when the switch began: the version `--rollback`
    /// may go back to (a later app on that slot never went live). Absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_app: Option<AppStamp>,
    /// The deployment that started that app, to name it once it is gone. Absent in older
    /// records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_deployment: Option<String>,
    /// In an intent: the include as it was before the switch touched anything, so a failed
    /// completion puts that back rather than what the cut-short run left. Absent in older
    /// records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Before>,
}

/// The routing files before a switch began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Before {
    /// The include's text (`None`: there was no include).
    pub include: Option<String>,
}

/// Which app process a record speaks of: the slot record's pid, its start time and when
/// `start` launched it. Two apps never share all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStamp {
    /// Process id.
    pub pid: i32,
    /// Start time of that pid in clock ticks since boot.
    pub start_time: u64,
    /// When `start` launched it, seconds since the Unix epoch.
    pub started_at: u64,
}

impl AppRecord {
    /// The stamp of this app, for a switch record.
    pub fn stamp(&self) -> AppStamp {
        AppStamp {
            pid: self.pid,
            start_time: self.start_time,
            started_at: self.started_at,
        }
    }
}

/// The state directory of one host.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

/// Holds the exclusive lock until dropped.
#[derive(Debug)]
pub struct LockGuard {
    _lock: Flock<File>,
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Removes `path`; a file already gone is fine.
fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io("cannot remove", path, e))
        }
        _ => Ok(()),
    }
}

impl StateDir {
    /// Uses `dir`, creating it (mode 0755) when missing.
    /// Refused when someone besides root and the hooks' user could change it or its
    /// `releases/`, `logs/` or `units/` (see [`StateDir::refuse_shared`]).
    pub fn open(dir: &Path) -> Result<StateDir> {
        fsio::ensure_dir(dir, 0o755)?;
        let state = StateDir::at(dir);
        state.refuse_shared()?;
        Ok(state)
    }

    /// A record another user planted would be believed (a forged pid signalled by root's
    /// `stop`), and pruning would follow a `releases` link they put there: the state
    /// directory, every directory on its path, and its `releases/`, `logs/` and `units/`
    /// must be changeable by root and the hooks' user only.
    fn refuse_shared(&self) -> Result<()> {
        if let Some(who) = fsio::open_dir(&self.dir, None)?.changeable_by_others {
            return Err(StateError::SharedDir {
                dir: self.dir.clone(),
                who: who.to_string(),
            }
            .into());
        }
        for sub in ["releases", "logs", "units"] {
            let path = self.dir.join(sub);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let why = if !meta.is_dir() {
                Some("is not a directory (a link is never followed)".to_string())
            } else {
                fsio::others_can_change(&meta)
                    .map(|who| format!("{who}: another user can change it"))
            };
            if let Some(why) = why {
                return Err(StateError::SharedSubdir { path, why }.into());
            }
        }
        Ok(())
    }

    /// Uses `dir` as it is, creating nothing (read-only views: a missing directory reads as
    /// no records).
    pub fn at(dir: &Path) -> StateDir {
        StateDir {
            dir: dir.to_path_buf(),
        }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where release directories go.
    pub fn releases_dir(&self) -> PathBuf {
        self.dir.join("releases")
    }

    fn app_record_path(&self, port: u16) -> PathBuf {
        self.dir.join(format!("slot-{port}.yml"))
    }

    fn switch_record_path(&self) -> PathBuf {
        self.dir.join("switch.yml")
    }

    fn intent_path(&self) -> PathBuf {
        self.dir.join("switch-intent.yml")
    }

    /// A switch begun and not ended (`switch-intent.yml`), if one was recorded: written
    /// before the include is touched, removed once the switch completed or left nginx as it
    /// was. Found afterwards, it means the switch was cut short (SIGKILL, power loss): the
    /// include and nginx may disagree until a switch completes. It has the shape of a
    /// [`SwitchRecord`] (`live` is the port the switch was sending traffic to) in a file of
    /// its own, so `switch.yml` stays readable by older versions.
    pub fn switch_intent(&self) -> Option<SwitchRecord> {
        self.read_record(&self.intent_path())
    }

    /// Records that a switch to `intent.live` begins; must succeed before the include is
    /// touched.
    pub fn save_switch_intent(&self, intent: &SwitchRecord) -> Result<()> {
        self.write_record(&self.intent_path(), intent)
    }

    /// Forgets the switch intent: the switch ended (completed, or nginx left as it was).
    pub fn clear_switch_intent(&self) -> Result<()> {
        remove_if_present(&self.intent_path())
    }

    /// Refuses a FIFO, directory or device where a record of `ports` (or the switch
    /// records) belongs: reading one would block every hook or fail late (exit 2 at once).
    pub fn refuse_special_files(&self, ports: [u16; 2]) -> Result<()> {
        for path in ports
            .map(|p| self.app_record_path(p))
            .into_iter()
            .chain([self.switch_record_path(), self.intent_path()])
        {
            fsio::refuse_special(&path)?;
        }
        Ok(())
    }

    /// Takes the exclusive lock, waiting up to `wait` for another hook to release it.
    pub fn lock(&self, holder: &str, wait: Duration) -> Result<LockGuard> {
        let path = self.dir.join("lock");
        let deadline = Instant::now() + wait;
        let mut announced = false;
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| Error::io("cannot open lock", &path, e))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(mut lock) => {
                    let _ = lock.set_len(0);
                    let _ = writeln!(lock, "{holder} pid {}", std::process::id());
                    return Ok(LockGuard { _lock: lock });
                }
                Err((_, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                    let owner = std::fs::read_to_string(&path).unwrap_or_default();
                    let owner = owner.trim();
                    if Instant::now() >= deadline {
                        return Err(StateError::Busy {
                            holder: if owner.is_empty() { "unknown" } else { owner }.to_string(),
                            path,
                            waited: wait,
                        }
                        .into());
                    }
                    if !announced {
                        log::info!(
                            "waiting for the lock held by {owner} (up to {})",
                            crate::duration::show(wait)
                        );
                        announced = true;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
                Err((_, errno)) => return Err(Error::io("cannot lock", &path, errno.into())),
            }
        }
    }

    /// The record of the app on `port`. A record that cannot be read is reported as a
    /// warning and treated as missing: the port itself is then the source of truth.
    /// A record naming pid 0 or 1 (never an app `start` launched) is ignored the same way.
    pub fn app_record(&self, port: u16) -> Option<AppRecord> {
        let path = self.app_record_path(port);
        let record: AppRecord = self.read_record(&path)?;
        if record.pid <= 1 {
            log::warn!(
                "ignoring {}: it names pid {}, which is never an app portswap started",
                path.display(),
                record.pid
            );
            return None;
        }
        Some(record)
    }

    /// Saves the record of the app `start` just started (mode 0600); a pid ≤ 1 is refused.
    pub fn save_app_record(&self, record: &AppRecord) -> Result<()> {
        if record.pid <= 1 {
            return Err(StateError::NoProcess {
                port: record.port,
                pid: record.pid,
            }
            .into());
        }
        self.write_record(&self.app_record_path(record.port), record)
    }

    /// Forgets the app on `port`.
    pub fn clear_app_record(&self, port: u16) -> Result<()> {
        remove_if_present(&self.app_record_path(port))
    }

    /// The last switch, if recorded and readable.
    pub fn switch_record(&self) -> Option<SwitchRecord> {
        self.read_record(&self.switch_record_path())
    }

    /// True when `history.log` records a switch to `port` by `deployment` at or after
    /// `since` (seconds since the epoch): that deployment's app went live there.
    pub fn went_live(&self, port: u16, deployment: &str, since: u64) -> bool {
        let text = std::fs::read_to_string(self.dir.join("history.log")).unwrap_or_default();
        text.lines().any(|line| {
            let words: Vec<&str> = line.split(' ').collect();
            matches!(
                words.as_slice(),
                [at, "switch", _, "->", live, "deployment", id, ..]
                    if at.parse::<u64>().is_ok_and(|at| at >= since)
                        && live.parse::<u16>() == Ok(port)
                        && *id == deployment
            )
        })
    }

    /// Records a switch and appends a line to `history.log`.
    pub fn save_switch(&self, record: &SwitchRecord) -> Result<()> {
        self.write_record(&self.switch_record_path(), record)?;
        let path = self.dir.join("history.log");
        let line = format!(
            "{} switch {} -> {} deployment {}\n",
            record.at,
            record
                .previous
                .map_or("none".to_string(), |p| p.to_string()),
            record.live,
            record.deployment_id
        );
        let line = match &record.rolled_back {
            None => line,
            Some(why) => format!(
                "{} rolled back by the watch: {}\n",
                line.trim_end(),
                why.replace(|c: char| c.is_control(), " ")
            ),
        };
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| Error::io("cannot append to", &path, e))
    }

    fn read_record<T: for<'de> Deserialize<'de>>(&self, path: &Path) -> Option<T> {
        let parsed = fsio::read_small(path, 64 * 1024).and_then(|bytes| match bytes {
            None => Ok(None),
            Some(bytes) => serde_yaml::from_slice(&bytes).map(Some).map_err(|source| {
                StateError::Record {
                    path: path.to_path_buf(),
                    source,
                }
                .into()
            }),
        });
        parsed.unwrap_or_else(|e| {
            log::warn!("ignoring unreadable state file: {e}");
            None
        })
    }

    fn write_record<T: Serialize>(&self, path: &Path, record: &T) -> Result<()> {
        let text = serde_yaml::to_string(record).map_err(|source| StateError::Record {
            path: path.to_path_buf(),
            source,
        })?;
        fsio::write_atomic(path, text.as_bytes(), 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_reads_as_missing() {
        let dir = std::env::temp_dir().join(format!("portswap-state-{}", std::process::id()));
        let state = StateDir::open(&dir).unwrap();
        let record = AppRecord {
            pid: 2,
            start_time: 2,
            port: 8081,
            profile: "real1".into(),
            deployment_id: "d-1".into(),
            command: vec!["app".into()],
            release_dir: "/r".into(),
            log_file: "/l".into(),
            log_offset: 0,
            started_at: 3,
            uid: Some(0),
        };
        state.save_app_record(&record).unwrap();
        assert_eq!(state.app_record(8081), Some(record));
        std::fs::write(dir.join("slot-8082.yml"), "pid: [").unwrap();
        assert_eq!(state.app_record(8082), None);
        state.clear_app_record(8081).unwrap();
        state.clear_app_record(8081).unwrap();
        assert_eq!(state.app_record(8081), None);
        let held = state.lock("test", Duration::ZERO).unwrap();
        assert!(matches!(
            state.lock("second", Duration::from_millis(50)),
            Err(Error::State(StateError::Busy { .. }))
        ));
        drop(held);
        state.lock("third", Duration::ZERO).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
