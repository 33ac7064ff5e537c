//! A private nginx instance per test: its own prefix directory, config, pid file, logs and
//! port, set up like the legacy deployment (an include file that sets `$service_url`, and
//! `location / { proxy_pass $service_url; }`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::net::{free_port, http_get_timeout, wait_until};

/// How long [`NginxSandbox::start`] waits for nginx to answer, and [`NginxSandbox::stop`]
/// for it to exit after SIGQUIT.
pub const NGINX_DEADLINE: Duration = Duration::from_secs(10);

/// The environment variable naming a newer nginx (>= 1.27.4, for `keepalive_min_timeout`)
/// that the tests and the bench use where they need one; `.ci/run` sets it when available.
pub const NEWER_NGINX_VAR: &str = "PORTSWAP_TESTKIT_NGINX";

/// The newer nginx named by [`NEWER_NGINX_VAR`], when set to an existing file.
pub fn newer_nginx() -> Option<PathBuf> {
    std::env::var_os(NEWER_NGINX_VAR)
        .map(PathBuf::from)
        .filter(|p| p.is_file())
}

/// The newer nginx, or `None` after printing `SKIPPED: <what> (needs ...)` for a test that
/// cannot run without it: written to stderr directly, so it shows in the normal output of
/// `cargo test` (the harness captures only the print macros).
pub fn newer_nginx_or_skip(what: &str) -> Option<PathBuf> {
    let found = newer_nginx();
    if found.is_none() {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {what} (needs nginx >= 1.27.4: set {NEWER_NGINX_VAR})"
        );
    }
    found
}

/// The system's nginx (the distribution package the suite runs against): `/usr/sbin/nginx`,
/// else `nginx` on `PATH`. Panics, saying how to install it, when there is none. A newer
/// nginx is used only where asked for, through [`newer_nginx`].
pub fn nginx_binary() -> PathBuf {
    let mut candidates = vec![PathBuf::from("/usr/sbin/nginx")];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nginx")));
    }
    candidates.extend(["/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"].map(PathBuf::from));
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "testkit: nginx not found (looked at /usr/sbin/nginx and PATH); \
                 install it with `apt-get install -y nginx` (Debian/Ubuntu) or \
                 `dnf install -y nginx` (Amazon Linux)"
            )
        })
}

/// The include line that points nginx at `port`, as the legacy `switch.sh` wrote it:
/// `set $service_url http://127.0.0.1:<port>;`
pub fn service_url_line(port: u16) -> String {
    format!("set $service_url http://127.0.0.1:{port};\n")
}

/// Writes [`service_url_line`] to `include_file` atomically (temporary file + rename).
pub fn write_include(include_file: &Path, port: u16) {
    let dir = include_file.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).expect("testkit: create include directory");
    let mut tmp = tempfile::NamedTempFile::new_in(dir).expect("testkit: temp include");
    tmp.write_all(service_url_line(port).as_bytes())
        .expect("testkit: write include");
    tmp.persist(include_file).expect("testkit: rename include");
}

/// A running nginx (master + 2 workers) confined to one directory. Stopped on drop.
///
/// The generated `nginx.conf` has one server on `127.0.0.1:<port>` with, at server level,
/// `set $service_url http://127.0.0.1:1;` (a default that answers 502) followed by an
/// include of the caller's include file, then `location = /nginx-health` (200 `OK`) and
/// `location / { proxy_pass $service_url; proxy_http_version 1.1;
/// proxy_set_header Connection ""; ... }`. The include is written as a glob (its last
/// character in brackets, e.g. `service-url.in[c]`), so nginx starts and reloads fine while
/// the file does not exist yet.
#[derive(Debug)]
pub struct NginxSandbox {
    nginx: PathBuf,
    dir: PathBuf,
    conf: PathBuf,
    include_file: PathBuf,
    port: u16,
    pid: i32,
    stopped: bool,
}

impl NginxSandbox {
    /// Writes `dir/nginx.conf`, starts `nginx -p dir/ -e dir/error.log -c dir/nginx.conf` on a
    /// free port, and waits until the pid file exists and `/nginx-health` answers.
    /// Panics (with nginx's output and error log) when it does not come up.
    pub fn start(dir: &Path, include_file: &Path) -> NginxSandbox {
        NginxSandbox::start_with(dir, include_file, "")
    }

    /// Like [`NginxSandbox::start`], with extra directives at `http` level (e.g.
    /// `keepalive_timeout 0;`), for experiments with nginx settings.
    pub fn start_with(dir: &Path, include_file: &Path, http_extra: &str) -> NginxSandbox {
        NginxSandbox::start_using(&nginx_binary(), dir, include_file, http_extra)
    }

    /// Like [`NginxSandbox::start_with`], running the nginx executable `nginx` (e.g.
    /// [`newer_nginx`]).
    pub fn start_using(
        nginx: &Path,
        dir: &Path,
        include_file: &Path,
        http_extra: &str,
    ) -> NginxSandbox {
        let nginx = nginx.to_path_buf();
        fs::create_dir_all(dir).expect("testkit: create sandbox directory");
        let dir = dir
            .canonicalize()
            .expect("testkit: canonicalize sandbox dir");
        let include_file = if include_file.is_absolute() {
            include_file.to_path_buf()
        } else {
            std::env::current_dir()
                .expect("testkit: current dir")
                .join(include_file)
        };
        if let Some(parent) = include_file.parent() {
            fs::create_dir_all(parent).expect("testkit: create include directory");
        }
        // nginx creates the *_temp_path directories, but not their parent.
        fs::create_dir_all(dir.join("tmp")).expect("testkit: create sandbox tmp directory");
        let conf = dir.join("nginx.conf");
        let mut last_failure = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            fs::write(&conf, render_conf(&dir, &include_file, port, http_extra))
                .expect("testkit: write nginx.conf");
            let _ = fs::remove_file(dir.join("nginx.pid"));
            let mut sandbox = NginxSandbox {
                nginx: nginx.clone(),
                dir: dir.clone(),
                conf: conf.clone(),
                include_file: include_file.clone(),
                port,
                pid: 0,
                stopped: true,
            };
            let out = Command::new(&nginx)
                .args(sandbox.base_args())
                .output()
                .unwrap_or_else(|e| panic!("testkit: cannot run {}: {e}", nginx.display()));
            if !out.status.success() {
                last_failure = format!(
                    "nginx exited with {}: {}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                if last_failure.contains("Address already in use") {
                    continue; // lost a race for the port: try another one
                }
                break;
            }
            sandbox.stopped = false;
            let pid_file = sandbox.pid_file();
            let up = wait_until(NGINX_DEADLINE, "nginx pid file", || {
                read_pid(&pid_file).is_some()
            })
            .and_then(|_| {
                sandbox.pid = read_pid(&pid_file).unwrap_or(0);
                wait_until(NGINX_DEADLINE, "nginx to answer /nginx-health", || {
                    http_get_timeout(port, "/nginx-health", Duration::from_secs(1))
                        .is_ok_and(|r| r.status == 200)
                })
            });
            match up {
                Ok(_) => return sandbox,
                Err(e) => {
                    last_failure = e;
                    break; // dropping `sandbox` stops whatever did start
                }
            }
        }
        panic!(
            "testkit: nginx sandbox in {} did not start: {last_failure}\n--- error.log ---\n{}",
            dir.display(),
            fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
    }

    /// `-p DIR/ -e DIR/error.log -c DIR/nginx.conf`
    fn base_args(&self) -> Vec<String> {
        vec![
            "-p".into(),
            format!("{}/", self.dir.display()),
            "-e".into(),
            self.error_log().display().to_string(),
            "-c".into(),
            self.conf.display().to_string(),
        ]
    }

    /// The port nginx listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The master's pid, read from the pid file (the pid seen at start if it cannot be read).
    pub fn pid(&self) -> i32 {
        read_pid(&self.pid_file()).unwrap_or(self.pid)
    }

    /// `DIR/nginx.pid`
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("nginx.pid")
    }

    /// `DIR/nginx.conf`
    pub fn conf_path(&self) -> &Path {
        &self.conf
    }

    /// The prefix directory (`-p`), holding config, pid file, logs and temp dirs.
    pub fn prefix(&self) -> &Path {
        &self.dir
    }

    /// The include file named in the config (absolute).
    pub fn include_file(&self) -> &Path {
        &self.include_file
    }

    /// `DIR/error.log`
    pub fn error_log(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    /// The nginx executable this sandbox runs.
    pub fn nginx_path(&self) -> &Path {
        &self.nginx
    }

    /// argv of a config test for this sandbox: `nginx -p DIR/ -e DIR/error.log -c CONF -t -q`.
    pub fn test_command(&self) -> Vec<String> {
        let mut argv = vec![self.nginx.display().to_string()];
        argv.extend(self.base_args());
        argv.extend(["-t".into(), "-q".into()]);
        argv
    }

    /// argv of a reload through nginx itself: `nginx -p DIR/ -e DIR/error.log -c CONF -s reload`.
    pub fn reload_command(&self) -> Vec<String> {
        let mut argv = vec![self.nginx.display().to_string()];
        argv.extend(self.base_args());
        argv.extend(["-s".into(), "reload".into()]);
        argv
    }

    /// Pids of the master's children (the workers, including ones shutting down), sorted.
    pub fn worker_pids(&self) -> Vec<i32> {
        children_of(self.pid())
    }

    /// Sends SIGHUP to the master. Panics if the master is gone.
    pub fn reload(&self) {
        let pid = self.pid();
        kill(Pid::from_raw(pid), Signal::SIGHUP)
            .unwrap_or_else(|e| panic!("testkit: SIGHUP to nginx master {pid}: {e}"));
    }

    /// [`reload`](Self::reload), then waits until the reload took: a new worker exists and
    /// every worker from before is gone or titled "shutting down". Returns the time taken;
    /// an error (e.g. a bad config, which keeps the old workers) after `timeout`.
    pub fn reload_and_wait(&self, timeout: Duration) -> Result<Duration, String> {
        let before = self.worker_pids();
        let start = Instant::now();
        self.reload();
        wait_until(timeout, "nginx reload to take effect", || {
            let now = self.worker_pids();
            let has_new = now.iter().any(|p| !before.contains(p));
            let old_done = before.iter().all(|p| {
                !now.contains(p)
                    || match process_title(*p) {
                        None => true,
                        Some(title) => title.contains("shutting down"),
                    }
            });
            has_new && old_done
        })
        .map(|_| start.elapsed())
        .map_err(|e| {
            format!(
                "{e}\n--- error.log ---\n{}",
                fs::read_to_string(self.error_log()).unwrap_or_default()
            )
        })
    }

    /// Graceful stop: SIGQUIT, wait for the master to exit (up to [`NGINX_DEADLINE`]), then
    /// SIGKILL master and workers. Idempotent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pid = self.pid();
        if pid <= 0 {
            return;
        }
        let workers = children_of(pid);
        if kill(Pid::from_raw(pid), Signal::SIGQUIT).is_err() {
            return;
        }
        if wait_until(NGINX_DEADLINE, "nginx to exit", || !process_alive(pid)).is_err() {
            for p in std::iter::once(pid).chain(workers).chain(children_of(pid)) {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            let _ = wait_until(Duration::from_secs(2), "nginx to die", || {
                !process_alive(pid)
            });
        }
    }
}

impl Drop for NginxSandbox {
    fn drop(&mut self) {
        self.stop();
    }
}

fn quoted(path: &Path) -> String {
    let s = path.display().to_string();
    assert!(
        !s.contains(['"', '\\', '$', '\n']),
        "testkit: path unsuitable for nginx.conf: {s:?}"
    );
    format!("\"{s}\"")
}

/// `/a/b/service-url.inc` → `/a/b/service-url.in[c]`: a glob that matches only the file,
/// and matches nothing (not an error for nginx) while it does not exist.
fn include_glob(include_file: &Path) -> PathBuf {
    let s = include_file.display().to_string();
    assert!(
        !s.contains(['*', '?', '[', ']']),
        "testkit: include path must not contain glob characters: {s:?}"
    );
    let name = include_file
        .file_name()
        .and_then(|n| n.to_str())
        .expect("testkit: include file needs a UTF-8 file name");
    let last = name
        .chars()
        .last()
        .expect("testkit: empty include file name");
    let stem = &name[..name.len() - last.len_utf8()];
    include_file.with_file_name(format!("{stem}[{last}]"))
}

/// The `nginx.conf` a sandbox in `dir` runs with (see [`NginxSandbox`]), for an nginx that
/// something else starts (e.g. a unit inside a systemd machine).
/// Its access log is off unless `http_extra` sets one.
pub fn render_conf(dir: &Path, include_file: &Path, port: u16, http_extra: &str) -> String {
    let user = if nix::unistd::geteuid().is_root() {
        "user root root;\n"
    } else {
        ""
    };
    let tmp = |name: &str| quoted(&dir.join("tmp").join(name));
    // `access_log off` at the same level would silence an access log `http_extra` sets.
    let access_log = if http_extra.contains("access_log ") {
        ""
    } else {
        "access_log off;"
    };
    format!(
        r#"# Generated by portswap-testkit: a private nginx for one test.
daemon on;
master_process on;
worker_processes 2;
{user}pid {pid};
error_log {error_log} notice;

events {{
    worker_connections 1024;
}}

http {{
    {access_log}
    client_body_temp_path {client_body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};
    {http_extra}

    server {{
        listen 127.0.0.1:{port};

        # Like the legacy setup: the include sets $service_url (written by the switch).
        set $service_url http://127.0.0.1:1;
        include {include};

        location = /nginx-health {{
            default_type text/plain;
            return 200 "OK";
        }}

        location / {{
            proxy_pass $service_url;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"#,
        pid = quoted(&dir.join("nginx.pid")),
        error_log = quoted(&dir.join("error.log")),
        client_body = tmp("client_body"),
        proxy = tmp("proxy"),
        fastcgi = tmp("fastcgi"),
        uwsgi = tmp("uwsgi"),
        scgi = tmp("scgi"),
        include = quoted(&include_glob(include_file)),
    )
}

fn read_pid(pid_file: &Path) -> Option<i32> {
    fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

/// `(state, ppid)` from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(char, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// True when `pid` exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// The process title (`/proc/<pid>/cmdline`, NULs as spaces), e.g.
/// `nginx: worker process is shutting down`; `None` when the process is gone.
pub fn process_title(pid: i32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&raw).replace('\0', " ");
    Some(text.trim_end().to_string())
}

/// Live (non-zombie) children of `parent`, sorted.
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|(state, ppid)| ppid == parent && state != 'Z'))
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_glob_brackets_the_last_character() {
        assert_eq!(
            include_glob(Path::new("/etc/nginx/conf.d/service-url.inc")),
            Path::new("/etc/nginx/conf.d/service-url.in[c]")
        );
        assert_eq!(include_glob(Path::new("/x/a")), Path::new("/x/[a]"));
    }

    #[test]
    fn proc_helpers_see_this_process() {
        let me = std::process::id() as i32;
        assert!(process_alive(me));
        assert!(process_title(me).is_some());
        let parent = nix::unistd::getppid().as_raw();
        assert!(children_of(parent).contains(&me));
    }
}
