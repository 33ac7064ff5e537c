//! The configuration file `portswap.yml`: where it is found, what it holds, how it is checked.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::duration;
use crate::error::{ConfigError, Error, Exposure, Result};
use crate::template::Template;

/// Name of the configuration file looked for beside the executable.
pub const FILE_NAME: &str = "portswap.yml";
/// Environment variable naming the configuration file.
pub const ENV_VAR: &str = "PORTSWAP_CONFIG";
/// Last place looked at.
pub const SYSTEM_PATH: &str = "/etc/portswap/portswap.yml";

/// One of the two ports the application alternates between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Name handed to the app as `{profile}` (Spring profile in the legacy setup).
    pub profile: String,
}

/// How to stage and run the application.
#[derive(Debug, Clone)]
pub struct App {
    /// Absolute patterns (wildcards in the file name only) of files copied into each release.
    pub artifacts: Vec<PathBuf>,
    /// argv with placeholders; never passed through a shell.
    pub command: Vec<String>,
    /// Working directory (placeholders allowed); default the release directory.
    pub workdir: String,
    /// Extra environment for the app. Values are never logged.
    pub env: BTreeMap<String, String>,
    /// Directory of the per-slot app logs.
    pub log_dir: PathBuf,
    /// User to run the app as when the hook runs as root.
    pub user: Option<String>,
    /// How long `start` watches the new process for an immediate exit.
    pub start_check: Duration,
    /// How many release directories to keep.
    pub keep_releases: usize,
    /// Who keeps the app running (`app.supervisor`).
    pub supervisor: SupervisorChoice,
}

/// `app.supervisor`: who keeps the app running on a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SupervisorChoice {
    /// systemd when the host runs it and the hook can manage system units, else process.
    Auto,
    /// A systemd unit per slot.
    Systemd,
    /// A detached process started by the hook (nothing restarts it).
    Process,
}

/// Where the app's output goes under systemd (`systemd.output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Appended to `<log_dir>/app-PORT.log`, as in process mode.
    File,
    /// The journal (`journalctl -u portswap-PORT`).
    Journal,
}

/// The `systemd` section: how slots become units when the supervisor is systemd.
#[derive(Debug, Clone)]
pub struct Systemd {
    /// Unit name with `{port}`, e.g. `portswap-{port}.service`.
    pub unit: String,
    /// Where unit files are written.
    pub unit_dir: PathBuf,
    /// Where the app's output goes.
    pub output: Output,
    /// `RestartSec=`: the pause before systemd restarts a crashed app.
    pub restart_delay: Duration,
    /// `StartLimitBurst=`: starts allowed within `StartLimitIntervalSec=60`.
    pub start_limit: u32,
}

impl Systemd {
    /// The unit of the slot on `port`.
    pub fn unit_name(&self, port: u16) -> String {
        self.unit.replace("{port}", &port.to_string())
    }
}

/// What makes the new version healthy.
#[derive(Debug, Clone)]
pub struct Health {
    /// Request path, starting with `/`.
    pub path: String,
    /// Expected status; `None` accepts any 2xx.
    pub status: Option<u16>,
    /// Optional substring the body must contain.
    pub body_contains: Option<String>,
    /// Overall time the app gets to become healthy.
    pub timeout: Duration,
}

/// How nginx is pointed at a port.
#[derive(Debug, Clone)]
pub struct Nginx {
    /// The include file nginx reads the live port from.
    pub include: PathBuf,
    /// What the include holds, with `{port}`.
    pub template: Template,
    /// argv of the configuration test.
    pub test_command: Vec<String>,
    /// argv that reloads nginx; `None` sends SIGHUP to the master named in `pid_file`.
    pub reload_command: Option<Vec<String>>,
    /// The master's pid file, used to signal it and to watch its workers.
    pub pid_file: PathBuf,
    /// How long a reload may take to complete.
    pub reload_timeout: Duration,
    /// Ask the old workers to quit as soon as the new ones accept, instead of letting nginx
    /// keep them accepting for ~100 ms more.
    pub quit_old_workers: bool,
    /// nginx's own listener as the site's users reach it, for the front-door check after a
    /// switch (`None`: not checked, and the verdict says so).
    pub front: Option<Front>,
}

/// `nginx.front` and `nginx.front_host`: a loopback address nginx listens on for the site,
/// and the Host header its users send there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Front {
    /// Where the check connects (127.0.0.0/8 or ::1).
    pub addr: std::net::SocketAddr,
    /// The Host header (`None`: the address, as a client asking by IP sends).
    pub host: Option<String>,
}

impl std::fmt::Display for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}", self.addr)?;
        match &self.host {
            Some(host) => write!(f, " (Host: {host})"),
            None => Ok(()),
        }
    }
}

/// The mechanism that points traffic at a slot (`switch.by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// Rewrite nginx's include file and reload nginx (works with nginx alone).
    NginxReload,
    /// nginx proxies to a fixed service port; one nftables NAT rule redirects it to the live
    /// slot, replaced atomically without reloading nginx.
    Nftables,
}

impl By {
    /// The name used in portswap.yml, the status view and verdicts.
    pub fn name(self) -> &'static str {
        match self {
            By::NginxReload => "nginx-reload",
            By::Nftables => "nftables",
        }
    }
}

/// How a switch is made (`switch:` section).
#[derive(Debug, Clone)]
pub struct Switch {
    /// The mechanism.
    pub by: By,
    /// The port on 127.0.0.1 nginx proxies to in `nftables` mode; nothing may listen on it.
    pub service_port: u16,
    /// Where the boot unit that re-applies the nftables rule is installed (when it exists).
    pub boot_unit_dir: PathBuf,
}

/// The watch after a switch (`watch:` section): the new version is checked for a while and
/// traffic goes back to the previous one by itself when it fails.
#[derive(Debug, Clone)]
pub struct Watch {
    /// How long `switch` keeps watching after it made a version live; zero: no watch.
    pub duration: Duration,
    /// The pause between two checks.
    pub interval: Duration,
    /// The 5xx check on nginx's answers, when a dedicated access log is configured.
    pub errors: Option<ErrorWatch>,
}

/// `watch.access_log` and its threshold: the share of 5xx answers among the requests nginx
/// sent to the new version.
#[derive(Debug, Clone)]
pub struct ErrorWatch {
    /// An access log nginx writes with `log_format portswap_watch '$upstream_addr $status'`.
    pub access_log: PathBuf,
    /// Fails the new version when more than this percentage of answers were 5xx...
    pub max_5xx_percent: f64,
    /// ... among at least this many requests...
    pub min_requests: u32,
    /// ... within this window.
    pub window: Duration,
}

/// The whole, checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// The two slots, in order: the first is idle when nothing is live.
    pub slots: [Slot; 2],
    /// The application.
    pub app: App,
    /// The health check.
    pub health: Health,
    /// Units, when the app runs under systemd.
    pub systemd: Systemd,
    /// nginx.
    pub nginx: Nginx,
    /// The switch mechanism.
    pub switch: Switch,
    /// Grace period between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// Where pid records, the lock, history, releases and (by default) logs live.
    pub state_dir: PathBuf,
    /// How long a hook waits for the lock.
    pub lock_wait: Duration,
    /// The watch after a switch.
    pub watch: Watch,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    slots: Option<Vec<RawSlot>>,
    app: Option<RawApp>,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    nginx: RawNginx,
    #[serde(default)]
    switch: RawSwitch,
    #[serde(default)]
    stop: RawStop,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    systemd: RawSystemd,
    #[serde(default)]
    watch: RawWatch,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    duration: Option<Duration>,
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    interval: Option<Duration>,
    access_log: Option<String>,
    max_5xx_percent: Option<f64>,
    min_requests: Option<u32>,
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    window: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSystemd {
    unit: Option<String>,
    unit_dir: Option<String>,
    output: Option<String>,
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    restart_delay: Option<Duration>,
    start_limit: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlot {
    port: u16,
    profile: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    #[serde(default)]
    artifacts: Vec<String>,
    command: Vec<String>,
    workdir: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    log_dir: Option<String>,
    user: Option<String>,
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    start_check: Option<Duration>,
    keep_releases: Option<usize>,
    supervisor: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Option<String>,
    status: Option<u16>,
    body_contains: Option<String>,
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    timeout: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNginx {
    include: Option<String>,
    template: Option<String>,
    test_command: Option<Vec<String>>,
    reload_command: Option<Vec<String>>,
    pid_file: Option<String>,
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    reload_timeout: Option<Duration>,
    quit_old_workers: Option<bool>,
    front: Option<String>,
    front_host: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSwitch {
    by: Option<String>,
    service_port: Option<u16>,
    boot_unit_dir: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStop {
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    grace: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<String>,
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    lock_wait: Option<Duration>,
}

/// Finds the configuration file: `--config`, then `$PORTSWAP_CONFIG`, then `portswap.yml`
/// beside the executable, then `/etc/portswap/portswap.yml`.
mod check;
use check::Checker;

pub fn locate(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = flag {
        return must_exist(path, "--config");
    }
    if let Some(path) = std::env::var_os(ENV_VAR).filter(|v| !v.is_empty()) {
        return must_exist(Path::new(&path), ENV_VAR);
    }
    let mut tried = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        let beside = dir.join(FILE_NAME);
        if beside.is_file() {
            return Ok(beside);
        }
        tried.push(beside.display().to_string());
    }
    if Path::new(SYSTEM_PATH).is_file() {
        return Ok(PathBuf::from(SYSTEM_PATH));
    }
    tried.push(SYSTEM_PATH.to_string());
    Err(ConfigError::NotFound {
        tried,
        variable: ENV_VAR,
    }
    .into())
}

fn must_exist(path: &Path, source: &'static str) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(ConfigError::Missing {
            path: path.to_path_buf(),
            named_by: source,
        }
        .into())
    }
}

/// The largest portswap.yml read (a full one is ~3 KB).
const MAX_BYTES: u64 = 64 * 1024;
/// The deepest nesting of flow collections (`[ ]`, `{ }`) accepted; portswap's deepest is 2.
const MAX_DEPTH: usize = 16;

/// The line where flow collections nest deeper than [`MAX_DEPTH`], if they do: checked before
/// the YAML parser, which takes seconds on a deeply nested file before it refuses it.
/// Brackets inside quotes and comments do not count.
fn too_deep(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (n, line) in text.lines().enumerate() {
        let mut quote = None;
        let mut previous = ' ';
        for c in line.chars() {
            match (quote, c) {
                (Some(q), _) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '#') if previous.is_whitespace() => break,
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Some(n + 1);
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
            previous = c;
        }
    }
    None
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config> {
        // One open file is checked and read: a path checked and then read again could be
        // another file by then (a user who can write the directory swaps them).
        let cannot = |source: std::io::Error| ConfigError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        let mut file = fs::File::open(path).map_err(cannot)?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io("cannot stat", path, e))?;
        check_ownership(path, &meta)?;
        if meta.len() > MAX_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
                size: meta.len(),
                limit: MAX_BYTES,
            }
            .into());
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(&mut file, MAX_BYTES + 1),
            &mut bytes,
        )
        .map_err(cannot)?;
        let text = String::from_utf8(bytes).map_err(|e| ConfigError::NotUtf8 {
            path: path.to_path_buf(),
            offset: e.utf8_error().valid_up_to(),
        })?;
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map(|d| d.join(path))
                .unwrap_or_else(|_| path.to_path_buf())
        };
        Config::parse(&text, &absolute)
    }

    /// Parses configuration text as if it were read from `path` (relative artifact patterns
    /// resolve against its directory; host paths must be absolute).
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        // Editors on Windows start UTF-8 files with a byte-order mark; YAML allows it.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if text.len() as u64 > MAX_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
                size: text.len() as u64,
                limit: MAX_BYTES,
            }
            .into());
        }
        if let Some(line) = too_deep(text) {
            return Err(ConfigError::TooDeep {
                path: path.to_path_buf(),
                line,
                limit: MAX_DEPTH,
            }
            .into());
        }
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|source| ConfigError::Syntax {
                path: path.to_path_buf(),
                source,
            })?
        };
        Checker {
            path,
            dir: path.parent().unwrap_or(Path::new("/")),
        }
        .build(raw)
    }

    /// The slot on `port`, if it is one of the two.
    pub fn slot(&self, port: u16) -> Option<&Slot> {
        self.slots.iter().find(|s| s.port == port)
    }

    /// The slot that is not on `port`.
    pub fn other_slot(&self, port: u16) -> &Slot {
        if self.slots[0].port == port {
            &self.slots[1]
        } else {
            &self.slots[0]
        }
    }
}

/// Refuses a configuration that other users could have written when running as root:
/// its argv runs with our privileges.
fn check_ownership(path: &Path, meta: &fs::Metadata) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let mode = meta.mode();
    let exposure = if meta.uid() != 0 {
        Some(Exposure::Owner(meta.uid()))
    } else if mode & 0o002 != 0 {
        Some(Exposure::Everyone)
    } else if mode & 0o020 != 0 && meta.gid() != 0 {
        Some(Exposure::Group(meta.gid()))
    } else {
        None
    };
    match exposure {
        Some(exposure) => Err(ConfigError::Unsafe {
            path: path.to_path_buf(),
            exposure,
        }
        .into()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/portswap/portswap.yml"))
    }

    #[test]
    fn supervisor_and_systemd_section() {
        let c = parse("app: { command: [app] }").unwrap();
        assert_eq!(c.app.supervisor, SupervisorChoice::Auto);
        assert_eq!(c.systemd.unit_name(8081), "portswap-8081.service");
        assert_eq!(c.systemd.unit_dir, Path::new("/etc/systemd/system"));
        assert_eq!(c.systemd.output, Output::File);
        let c = parse(
            "app: { command: [app], supervisor: systemd }\n\
             systemd: { unit: 'shop-{port}.service', output: journal, restart_delay: 2s }",
        )
        .unwrap();
        assert_eq!(c.app.supervisor, SupervisorChoice::Systemd);
        assert_eq!(c.systemd.unit_name(8082), "shop-8082.service");
        assert_eq!(c.systemd.output, Output::Journal);
        assert_eq!(c.systemd.restart_delay, Duration::from_secs(2));
        for (text, key) in [
            (
                "app: { command: [app], supervisor: docker }",
                "app.supervisor",
            ),
            (
                "app: { command: [app] }\nsystemd: { unit: shop.service }",
                "systemd.unit",
            ),
            (
                "app: { command: [app] }\nsystemd: { unit: 'a/{port}.service' }",
                "systemd.unit",
            ),
            (
                "app: { command: [app] }\nsystemd: { output: syslog }",
                "systemd.output",
            ),
            (
                "app: { command: [app] }\nsystemd: { start_limit: 0 }",
                "systemd.start_limit",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn watch_section() {
        let c = parse("app: { command: [app] }").unwrap();
        assert!(c.watch.duration.is_zero());
        assert_eq!(c.watch.interval, Duration::from_millis(250));
        assert!(c.watch.errors.is_none());
        let c = parse(
            "app: { command: [app] }\n\
             watch: { duration: 30s, interval: 100ms, access_log: /var/log/w.log, max_5xx_percent: 2.5 }",
        )
        .unwrap();
        assert_eq!(c.watch.duration, Duration::from_secs(30));
        let errors = c.watch.errors.unwrap();
        assert_eq!(errors.access_log, Path::new("/var/log/w.log"));
        assert_eq!((errors.max_5xx_percent, errors.min_requests), (2.5, 20));
        for (text, key) in [
            ("watch: { interval: 0 }", "watch.interval"),
            ("watch: { max_5xx_percent: 5 }", "watch.access_log"),
            (
                "watch: { access_log: /a.log, max_5xx_percent: 100 }",
                "watch.max_5xx_percent",
            ),
            (
                "watch: { access_log: /a.log, window: 1ms, interval: 10ms }",
                "watch.window",
            ),
            ("watch: { durations: 1s }", "durations"),
        ] {
            let text = format!("app: {{ command: [app] }}\n{text}");
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
