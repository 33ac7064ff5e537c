//! What `switch` says is what nginx does (issue 15): states where a reload would complete
//! while nginx keeps serving the old port are refused (exit 4, nothing changed), and the one
//! `nginx -V -T` run that tests and dumps the configuration is read in full, bounded, in its
//! own process group, and never left behind. Real nginx, real processes, real signals.

mod support;

use std::fs;
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use portswap_testkit::hooks;
use portswap_testkit::net::{self, read_response};
use portswap_testkit::netns::isolated;
use portswap_testkit::nginx::{
    children_of, newer_nginx_or_skip, nginx_binary, process_alive, process_title, NginxSandbox,
};
use support::{wait, Settings, Site};

const LIMIT: Duration = Duration::from_secs(10);

/// Rewrites the site's nginx.conf with `change` and reloads nginx with it.
fn edit_nginx_conf(site: &Site, change: impl FnOnce(&str) -> String) {
    let conf = site.nginx.conf_path();
    let text = fs::read_to_string(conf).unwrap();
    let changed = change(&text);
    assert_ne!(changed, text, "the edit changed nothing");
    fs::write(conf, changed).unwrap();
    site.nginx.reload_and_wait(LIMIT).unwrap();
}

/// `line` inserted right after the server block's include.
fn after_include(text: &str, line: &str) -> String {
    let mut out = String::new();
    for l in text.lines() {
        out.push_str(l);
        out.push('\n');
        if l.trim_start().starts_with("include ") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Deployment `id` up to its switch, which must be refused (exit 4) with `needle` in the
/// verdict while every request keeps reaching `live` and the include stays as it was.
fn switch_refused(site: &Site, id: &str, live: Option<&str>, needle: &str) -> String {
    site.run_until(id, "health");
    let before = site.include_text();
    let traffic = live.map(|_| site.traffic());
    let out = site.hook("switch", &[], Some(id)).fails(4, needle);
    if let (Some(traffic), Some(live)) = (traffic, live) {
        traffic.assert_all(live);
    }
    assert_eq!(site.include_text(), before, "the include was restored");
    assert!(
        out.last_line().contains("nothing changed"),
        "{}",
        out.last_line()
    );
    site.assert_nothing_half_written();
    out.last_line().to_string()
}

#[test]
fn a_later_set_of_the_includes_variable_is_refused() {
    let site = Site::new();
    site.deploy_ok("d-1");
    let old = site.ports[0];
    let late = format!("        set $service_url http://127.0.0.1:{old};");
    edit_nginx_conf(&site, |text| after_include(text, &late));
    let verdict = switch_refused(&site, "d-2", Some("d-1"), "comes after the include of");
    let conf = site.nginx.conf_path().display().to_string();
    assert!(
        verdict.contains(&conf),
        "names the file and line: {verdict}"
    );
    assert!(
        verdict.contains(&format!("`set $service_url http://127.0.0.1:{old}`")),
        "{verdict}"
    );

    // The same in a location: location rewrites run after the server's include.
    edit_nginx_conf(&site, |text| {
        text.replace(&format!("{late}\n"), "").replace(
            "location / {",
            &format!("location / {{\n            set $service_url http://127.0.0.1:{old};"),
        )
    });
    let verdict = site.hook("switch", &[], Some("d-2")).fails(4, "location /");
    assert!(
        verdict
            .last_line()
            .contains("overrides what the include sets"),
        "{}",
        verdict.last_line()
    );
    assert_eq!(site.live_version().as_deref(), Some("d-1"));

    // Without it the switch goes through.
    edit_nginx_conf(&site, |text| {
        text.replace(
            &format!("\n            set $service_url http://127.0.0.1:{old};"),
            "",
        )
    });
    site.hook("switch", &[], Some("d-2")).ok();
    assert_eq!(site.live_version().as_deref(), Some("d-2"));
}

#[test]
fn an_include_nginx_does_not_read_is_refused() {
    let site = Site::new();
    let other = site.root().join("other.inc");
    site.set_key("nginx", "include", &format!("\"{}\"", other.display()));
    let verdict = switch_refused(&site, "d-1", None, "nginx does not read");
    assert!(
        verdict.contains(&site.root().join("other.inc").display().to_string()),
        "{verdict}"
    );
    assert!(
        verdict.contains(&site.nginx.conf_path().display().to_string()),
        "{verdict}"
    );
    assert!(!site.root().join("other.inc").exists(), "removed again");
    site.set_key(
        "nginx",
        "include",
        &format!("\"{}\"", site.include().display()),
    );
    site.hook("switch", &[], Some("d-1")).ok();
    assert_eq!(site.live_version().as_deref(), Some("d-1"));
}

#[test]
fn a_pid_file_naming_another_nginx_is_refused() {
    let site = Site::new();
    site.deploy_ok("d-1");
    let other = NginxSandbox::start(&site.root().join("other-nginx"), &site.root().join("o.inc"));
    let other_workers = other.worker_pids();
    site.set_key(
        "nginx",
        "pid_file",
        &format!("\"{}\"", other.pid_file().display()),
    );
    let verdict = switch_refused(&site, "d-2", Some("d-1"), "nginx.pid_file is");
    assert!(
        verdict.contains(&site.nginx.pid_file().display().to_string()),
        "names where the tested nginx writes its pid: {verdict}"
    );
    assert_eq!(
        other.worker_pids(),
        other_workers,
        "the other nginx was not reloaded"
    );
    site.set_key(
        "nginx",
        "pid_file",
        &format!("\"{}\"", site.nginx.pid_file().display()),
    );
    site.hook("switch", &[], Some("d-2")).ok();
    assert_eq!(site.live_version().as_deref(), Some("d-2"));
}

/// An nginx started by the test (not the sandbox): SIGQUIT to its master on drop.
struct ManualNginx {
    pid_file: PathBuf,
}

impl Drop for ManualNginx {
    fn drop(&mut self) {
        let Some(pid) = read_pid(&self.pid_file) else {
            return;
        };
        let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
        let _ = net::wait_until(LIMIT, "nginx to exit", || !process_alive(pid));
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn a_master_running_another_configuration_is_refused() {
    let mut site = Site::new();
    site.deploy_ok("d-1");
    // The running nginx reads a copy of nginx.conf without the include; the config test
    // (nginx.test_command) reads nginx.conf.
    let prefix = site.nginx.prefix().to_path_buf();
    let other = prefix.join("other.conf");
    let text = fs::read_to_string(site.nginx.conf_path()).unwrap();
    let without: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("include "))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&other, without).unwrap();
    site.nginx.stop();
    let out = Command::new(nginx_binary())
        .arg("-p")
        .arg(format!("{}/", prefix.display()))
        .arg("-e")
        .arg(site.nginx.error_log())
        .arg("-c")
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let _running = ManualNginx {
        pid_file: site.nginx.pid_file(),
    };
    wait(LIMIT, "nginx answering", || {
        net::http_get(site.nginx.port(), "/nginx-health").is_ok_and(|r| r.status == 200)
    });
    let verdict = switch_refused(&site, "d-2", None, "which runs");
    assert!(verdict.contains(&other.display().to_string()), "{verdict}");
    assert!(
        verdict.contains(&site.nginx.conf_path().display().to_string()),
        "{verdict}"
    );
}

#[test]
fn a_second_master_of_a_binary_upgrade_is_refused() {
    let site = Site::new();
    site.deploy_ok("d-1");
    let old = site.nginx.pid();
    let oldbin = PathBuf::from(format!("{}.oldbin", site.nginx.pid_file().display()));
    // The binary upgrade: the old master starts a new one (its child); both serve.
    kill(Pid::from_raw(old), Signal::SIGUSR2).unwrap();
    struct QuitOnDrop(i32);
    impl Drop for QuitOnDrop {
        fn drop(&mut self) {
            let _ = kill(Pid::from_raw(self.0), Signal::SIGQUIT);
            let _ = net::wait_until(LIMIT, "old nginx master to exit", || !process_alive(self.0));
        }
    }
    let _old = QuitOnDrop(old);
    wait(LIMIT, "a new master with workers", || {
        oldbin.exists()
            && read_pid(&site.nginx.pid_file()).is_some_and(|new| {
                new != old
                    && children_of(new)
                        .iter()
                        .any(|w| process_title(*w).is_some_and(|t| t.contains("worker")))
            })
    });
    // The new master outlives the sandbox's record of the old one: stopped here.
    let _new = QuitOnDrop(read_pid(&site.nginx.pid_file()).unwrap());
    let verdict = switch_refused(&site, "d-2", Some("d-1"), "a second nginx master");
    assert!(verdict.contains(&format!("pid {old}")), "{verdict}");
    assert!(verdict.contains("kill -QUIT"), "{verdict}");

    // The upgrade finished (the old master quits): the switch goes through, every new
    // connection reaches the new version.
    drop(_old);
    wait(LIMIT, "the .oldbin pid file gone", || !oldbin.exists());
    site.hook("switch", &[], Some("d-2")).ok();
    for _ in 0..20 {
        assert_eq!(site.live_version().as_deref(), Some("d-2"));
    }
}

#[test]
fn a_quoted_hash_does_not_hide_an_upstream_pool() {
    isolated("nftables upstream pool behind a quoted #", || {
        let settings = Settings {
            switch_by: Some("nftables"),
            ..Settings::default()
        };
        // One line: a comment-stripper that ignores quotes drops everything after the `#`.
        let site = Site::with_nginx(settings, |service| {
            format!(
                "map $uri $portswap_hash {{ default \"#\"; }} upstream pooled {{ server \
                 127.0.0.1:{service}; keepalive 4; }}"
            )
        });
        site.run_until("d-1", "health");
        site.hook("switch", &[], Some("d-1"))
            .fails(1, "upstream pooled (server 127.0.0.1");
        assert_eq!(site.include_text(), None, "nothing changed");
    });
}

/// The site's test command without `-e`: nginx writes the config test's warnings to stderr
/// (as `nginx -t -q` does on a distribution's nginx), not to the sandbox's error log.
fn test_command_on_stderr(site: &Site) -> Vec<String> {
    let argv = site.nginx.test_command();
    let at = argv.iter().position(|a| a == "-e").unwrap();
    let mut argv = argv;
    argv.drain(at..at + 2);
    argv
}

#[test]
fn more_warnings_than_a_pipe_holds_do_not_hang_the_config_test() {
    let spare = net::free_port();
    // ~1,500 `conflicting server name` warnings, ~110 KB on stderr.
    let site = Site::with_nginx(Settings::default(), move |_| {
        (0..1500)
            .map(|_| format!("server {{ listen 127.0.0.1:{spare}; server_name dup.test; }}\n"))
            .collect()
    });
    let argv = test_command_on_stderr(&site);
    let probe = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
    assert!(
        probe.stderr.len() > 64 * 1024,
        "the test writes {} bytes of warnings",
        probe.stderr.len()
    );
    site.set_key("nginx", "test_command", &hooks::yaml_list(&argv));
    site.set_key("nginx", "reload_timeout", "\"3s\"");
    site.deploy_ok("d-1");
    assert_eq!(site.live_version().as_deref(), Some("d-1"));
}

/// Processes running `nginx ... -T` on the site's configuration.
fn dumps_of(site: &Site) -> Vec<i32> {
    let conf = site.nginx.conf_path().display().to_string();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| process_title(*pid).is_some_and(|t| t.contains(" -T") && t.contains(&conf)))
        .collect()
}

#[test]
fn a_failed_switch_with_a_large_dump_leaves_no_nginx_behind() {
    // ~200 KB of comment: `nginx -T` prints it all.
    let site = Site::with_nginx(Settings::default(), |_| {
        (0..3000)
            .map(|i| format!("# filler line {i:>60}\n"))
            .collect()
    });
    site.deploy_ok("d-1");
    site.set_key("nginx", "reload_command", "[\"false\"]");
    site.run_until("d-2", "health");
    site.hook("switch", &[], Some("d-2"))
        .fails(1, "nginx reload");
    wait(Duration::from_secs(5), "no nginx -T left running", || {
        dumps_of(&site).is_empty()
    });
    assert_eq!(site.live_version().as_deref(), Some("d-1"));
}

/// Makes the site's config test run through a shell script `name` with `body` (a stand-in
/// for a sudo rule or a slow wrapper), given the sandbox's nginx arguments; returns its path.
fn test_through(site: &Site, name: &str, body: &str) -> PathBuf {
    let wrapper = site.root().join(name);
    fs::write(&wrapper, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
    let mut argv = site.nginx.test_command();
    argv[0] = wrapper.display().to_string();
    site.set_key("nginx", "test_command", &hooks::yaml_list(&argv));
    wrapper
}

#[test]
fn a_reader_that_sees_only_dash_t_switches_and_says_what_it_did_not_check() {
    let site = Site::new();
    // A sudo rule for `nginx -t -q` only: the `-T` form is refused, the plain test runs.
    test_through(
        &site,
        "only-dash-t",
        &format!(
            "case \" $* \" in *\" -T \"*) echo 'sudo: a password is required' >&2; exit 1;; \
             esac\nexec {} \"$@\"",
            nginx_binary().display()
        ),
    );
    site.run_until("d-1", "health");
    let out = site.hook("switch", &[], Some("d-1")).ok();
    assert!(
        out.last_line()
            .contains("not checked: nginx's loaded configuration"),
        "{}",
        out.last_line()
    );
    assert!(out.last_line().contains("sudo: a password is required"));
    assert_eq!(site.live_version().as_deref(), Some("d-1"));
}

/// A kept connection through nginx, idle after its first answer (by `expect`).
fn kept_connection(site: &Site, expect: &str) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", site.nginx.port())).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut conn = BufReader::new(stream);
    let first = ask(&mut conn).unwrap();
    assert_eq!(first.header("X-App-Version"), Some(expect));
    conn
}

fn ask(conn: &mut BufReader<TcpStream>) -> std::io::Result<net::Response> {
    conn.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")?;
    read_response(conn)
}

#[test]
fn sigterm_to_the_hooks_group_does_not_skip_the_keepalive_wait() {
    let Some(newer) = newer_nginx_or_skip("SIGTERM during the nginx -V -T run") else {
        return;
    };
    let site = Site::using(
        &newer,
        |_| "keepalive_min_timeout 1s;".into(),
        Settings::default(),
    );
    site.deploy_ok("d-1");
    // A config test slow enough to be caught by the agent's SIGTERM.
    let wrapper = test_through(
        &site,
        "slow-nginx",
        &format!("sleep 0.5\nexec {} \"$@\"", newer.display()),
    );
    site.run_until("d-2", "health");

    let mut conn = kept_connection(&site, "d-1");
    // The agent runs the hook in a process group of its own and signals that group.
    let mut switch = hooks::command("switch", &site.config_path());
    let child = switch
        .env("DEPLOYMENT_ID", "d-2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let group = child.id() as i32;
    let script = wrapper.display().to_string();
    let intent = site.state().join("switch-intent.yml");
    // Inside the switch (its intent recorded) while the config test runs.
    wait(LIMIT, "the config test running inside the switch", || {
        intent.exists()
            && fs::read_dir("/proc").unwrap().flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|p| p.parse::<i32>().ok())
                    .and_then(process_title)
                    .is_some_and(|t| t.contains(&script))
            })
    });
    killpg(Pid::from_raw(group), Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains("the switch had completed"),
        "the switch completes before the signal ends it: {stderr}"
    );
    // The old worker kept our connection and is gone now: no answer by the old version.
    // (An error: closed by the old worker before it exited.)
    if let Ok(r) = ask(&mut conn) {
        assert_ne!(
            r.header("X-App-Version"),
            Some("d-1"),
            "an old answer after the switch returned: {stderr}"
        );
    }
    assert_eq!(site.live_version().as_deref(), Some("d-2"));
}

#[test]
fn the_keepalive_wait_counts_only_the_workers_this_switch_retired() {
    let Some(newer) = newer_nginx_or_skip("keep-alive wait and workers of earlier reloads") else {
        return;
    };
    // A second server whose upstream never answers: a request to it keeps its worker busy
    // (shutting down, after a reload) for as long as the test wants.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let stuck_port = net::free_port();
    let site = Site::using(
        &newer,
        move |_| {
            format!(
                "keepalive_min_timeout 1s;\nserver {{ listen 127.0.0.1:{stuck_port}; location / \
                 {{ proxy_pass http://127.0.0.1:{silent_port}; proxy_read_timeout 60s; }} }}"
            )
        },
        Settings::default(),
    );
    site.deploy_ok("d-1");
    let mut stuck = TcpStream::connect(("127.0.0.1", stuck_port)).unwrap();
    stuck
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let (_upstream, _) = silent.accept().unwrap();
    let busy = site.nginx.worker_pids();

    // This switch retires the busy worker and waits its bounded while for it.
    site.deploy_ok("d-2");
    let still: Vec<i32> = busy
        .iter()
        .copied()
        .filter(|p| process_title(*p).is_some_and(|t| t.contains("shutting down")))
        .collect();
    assert!(!still.is_empty(), "a worker of d-1's generation still busy");

    // The next switch does not wait for it: it is not among the workers it retired.
    site.run_until("d-3", "health");
    let out = site.hook("switch", &[], Some("d-3")).ok();
    assert!(
        out.stderr
            .contains("old workers answered their kept connections and exited"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("still hold"),
        "waited for a worker of an earlier reload ({still:?}): {}",
        out.stderr
    );
    assert_eq!(site.live_version().as_deref(), Some("d-3"));
    drop(stuck);
}
