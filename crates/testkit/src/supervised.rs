//! A whole host inside a systemd [`Machine`]: nginx as an enabled unit (as its package
//! installs it), two slot ports, the fixture app staged as a revision, `portswap.yml`, and
//! the hook binaries run inside with `nsenter` as the agent would (root, `/`, a near-empty
//! environment), so `systemctl` talks to the machine's systemd. Shared by the systemd tests,
//! the demo and the bench.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::hooks::{fixture_command, yaml_list};
use crate::nginx::{nginx_binary, render_conf};
use crate::systemd::{Machine, Network};
use crate::{bins, free_port, net};

/// What one hook run inside the machine produced.
#[derive(Debug, Clone)]
pub struct HookRun {
    /// The hook's name.
    pub hook: String,
    /// Its exit code (-1 when killed by a signal).
    pub code: i32,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr (log lines, then the verdict).
    pub stderr: String,
}

impl HookRun {
    /// The verdict: the last line of stderr.
    pub fn verdict(&self) -> &str {
        self.stderr.lines().last().unwrap_or("")
    }
}

/// The `app.env` secret every [`SupervisedSite`] configures: characters a shell or systemd
/// would interpret, to prove it arrives literally and is never written or logged.
pub const SECRET: &str = "s3cr3t-$HOME-%n-\"dq\"-'sq'-a b\\c";

/// A host under systemd, in its own machine. Everything goes when it is dropped.
pub struct SupervisedSite {
    /// The machine (power it off, cut the power, boot it again).
    pub machine: Machine,
    /// The two slot ports.
    pub ports: [u16; 2],
    /// The port nginx listens on (127.0.0.1 in the machine's network).
    pub nginx_port: u16,
    /// nginx's unit: `site-nginx.service`, or `nginx.service` in a private network.
    pub nginx_unit: &'static str,
    /// The user hooks run as (`su USER -c`, set-up (b)); `None`: root.
    runas: Option<String>,
    dir: tempfile::TempDir,
}

/// One deployment the stand-in agent ran ([`SupervisedSite::agent_deploy`]).
#[derive(Debug, Clone)]
pub struct AgentRun {
    /// Each hook it ran and its exit code, in order, up to the first failure.
    pub hooks: Vec<(String, i32)>,
    /// Everything the hooks wrote (stdout and stderr).
    pub output: String,
}

impl AgentRun {
    /// True when all four hooks ran and succeeded.
    pub fn success(&self) -> bool {
        self.hooks.len() == 4 && self.hooks.iter().all(|(_, code)| *code == 0)
    }
}

impl SupervisedSite {
    /// Boots a machine in the host's network with nginx running as `site-nginx.service` and
    /// writes a `portswap.yml` for the fixture app under the systemd supervisor. `Err` only
    /// when the machine cannot boot on this host (why); any later failure panics.
    pub fn new() -> Result<SupervisedSite, String> {
        SupervisedSite::boot(Network::Host, "site-nginx.service")
    }

    /// [`new`](Self::new) in a private network (nftables rules stay inside, a reboot loses
    /// them), with nginx as `nginx.service`, the unit name of the distributions' package that
    /// units ordered `Before=nginx.service` expect.
    pub fn with_private_net() -> Result<SupervisedSite, String> {
        SupervisedSite::boot(Network::Private, "nginx.service")
    }

    fn boot(network: Network, nginx_unit: &'static str) -> Result<SupervisedSite, String> {
        bins::ensure_built();
        let dir = tempfile::tempdir().expect("testkit: temp dir");
        let machine = Machine::boot_with(&[dir.path()], network)?;
        let root = dir.path();
        fs::create_dir_all(root.join("revision")).expect("testkit: revision dir");
        bins::copy_executable(
            &bins::bin("fixture-app"),
            &root.join("revision/fixture-app"),
        );
        let nginx_dir = root.join("nginx");
        fs::create_dir_all(nginx_dir.join("tmp")).expect("testkit: nginx dir");
        let nginx_port = free_port();
        fs::write(
            nginx_dir.join("nginx.conf"),
            render_conf(&nginx_dir, &root.join("service-url.inc"), nginx_port, ""),
        )
        .expect("testkit: nginx.conf");
        let site = SupervisedSite {
            machine,
            ports: [free_port(), free_port()],
            nginx_port,
            nginx_unit,
            runas: None,
            dir,
        };
        site.machine.install_unit(
            nginx_unit,
            &format!(
                "[Service]\nType=forking\nPIDFile={d}/nginx.pid\n\
                 ExecStart={n} {args}\nExecReload=/bin/kill -HUP $MAINPID\n\
                 [Install]\nWantedBy=multi-user.target\n",
                d = nginx_dir.display(),
                n = nginx_binary().display(),
                args = site.nginx_args().join(" ")
            ),
        );
        site.machine
            .in_net(|| {
                net::wait_until(Duration::from_secs(10), "nginx unit answers", || {
                    net::http_get(nginx_port, "/nginx-health").is_ok_and(|r| r.status == 200)
                })
            })
            .expect("testkit: the machine runs")
            .unwrap_or_else(|e| panic!("testkit: {e}"));
        site.configure(&[] as &[&str], "");
        Ok(site)
    }

    /// The site's directory on the host (also seen inside at the same path).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    fn nginx_args(&self) -> Vec<String> {
        let d = self.root().join("nginx");
        vec![
            "-p".into(),
            format!("{}/", d.display()),
            "-e".into(),
            d.join("error.log").display().to_string(),
            "-c".into(),
            d.join("nginx.conf").display().to_string(),
        ]
    }

    /// `portswap.yml`.
    pub fn config(&self) -> PathBuf {
        self.root().join("portswap.yml")
    }

    /// `state.dir`.
    pub fn state(&self) -> PathBuf {
        self.root().join("state")
    }

    /// Writes portswap.yml for the fixture app (version = deployment id) with `app_args`,
    /// the systemd supervisor, [`SECRET`] in `app.env`, `nginx.front` at its nginx (as the
    /// examples set it), and `extra` raw YAML at the end.
    pub fn configure<S: AsRef<str>>(&self, app_args: &[S], extra: &str) {
        self.configure_command(
            fixture_command("{deployment_id}", app_args),
            "systemd",
            extra,
        );
    }

    /// Set-up (b) of README's "Running without root": from now on every hook runs as
    /// `user` (created with [`Machine::add_user`]) through `su USER -c`, as the agent does
    /// with `runas`. The user gets the site's directory (state, include, revision), and
    /// nginx's config test and reload through sudo rules for exactly those commands;
    /// portswap.yml is written again with them.
    pub fn run_hooks_as(&mut self, user: &str) {
        let root = self.root().display().to_string();
        self.machine.run_ok(&["chmod", "0755", &root]);
        self.machine.run_ok(&["chown", user, &root]);
        self.machine
            .run_ok(&["chown", "-R", user, &format!("{root}/revision")]);
        self.machine.write_file(
            "/etc/sudoers.d/portswap",
            &format!(
                "{user} ALL=(root) NOPASSWD: {}, /usr/bin/systemctl reload {}\n",
                nginx_binary().display(),
                self.nginx_unit
            ),
        );
        self.machine
            .run_ok(&["chmod", "0440", "/etc/sudoers.d/portswap"]);
        self.runas = Some(user.to_string());
        self.configure(&[] as &[&str], "");
    }

    /// The user hooks run as (`None`: root).
    pub fn runas(&self) -> Option<&str> {
        self.runas.as_deref()
    }

    /// Writes portswap.yml with this `app.command` and `app.supervisor`.
    pub fn configure_command(&self, command: Vec<String>, supervisor: &str, extra: &str) {
        let sudo = self.runas.is_some();
        let mut test: Vec<String> = Vec::new();
        if sudo {
            test.extend(["sudo".into(), "-n".into()]);
        }
        test.push(nginx_binary().display().to_string());
        test.extend(self.nginx_args());
        test.extend(["-t".into(), "-q".into()]);
        let reload = if sudo {
            format!(
                "  reload_command: [\"sudo\", \"-n\", \"/usr/bin/systemctl\", \"reload\", \"{}\"]\n",
                self.nginx_unit
            )
        } else {
            String::new()
        };
        let text = format!(
            "slots:\n  - {{ port: {p0}, profile: real1 }}\n  - {{ port: {p1}, profile: real2 }}\n\
             app:\n  artifacts: [\"revision/fixture-app\"]\n  command: {cmd}\n  supervisor: {supervisor}\n\
             \x20 env: {{ SECRET_TOKEN: {secret:?} }}\n\
             health:\n  path: /health\n  timeout: 10s\n\
             nginx:\n  include: {include}\n  test_command: {test}\n  pid_file: {pid}\n{reload}\
             \x20 front: http://127.0.0.1:{front}\n\
             stop:\n  grace: 5s\n\
             state:\n  dir: {state}\n  lock_wait: 5s\n{extra}",
            p0 = self.ports[0],
            p1 = self.ports[1],
            cmd = yaml_list(&command),
            secret = SECRET,
            test = yaml_list(&test),
            pid = self.root().join("nginx/nginx.pid").display(),
            front = self.nginx_port,
            include = self.root().join("service-url.inc").display(),
            state = self.state().display(),
        );
        fs::write(self.config(), text).expect("testkit: write portswap.yml");
    }

    /// A hook run inside the machine as the agent would run it (as root, or through
    /// `su USER -c` after [`run_hooks_as`](Self::run_hooks_as)), not started yet.
    pub fn hook_command(&self, name: &str, args: &[&str], deployment: Option<&str>) -> Command {
        let bin = bins::bin(name).display().to_string();
        let line = std::iter::once(bin.clone())
            .chain(args.iter().map(|a| a.to_string()))
            .collect::<Vec<_>>()
            .join(" ");
        let argv: Vec<&str> = match &self.runas {
            // `su USER -c` keeps the environment (but HOME, SHELL, USER, LOGNAME).
            Some(user) => vec!["su", user.as_str(), "-c", line.as_str()],
            None => std::iter::once(bin.as_str())
                .chain(args.iter().copied())
                .collect(),
        };
        let config = self.config().display().to_string();
        let mut env = vec![("PORTSWAP_CONFIG", config.as_str())];
        if let Some(id) = deployment {
            env.push(("DEPLOYMENT_ID", id));
        }
        self.machine.command_env(&argv, &env)
    }

    /// Runs a hook inside the machine as the agent would.
    pub fn hook(&self, name: &str, args: &[&str], deployment: Option<&str>) -> HookRun {
        let out = self
            .hook_command(name, args, deployment)
            .output()
            .expect("testkit: run hook");
        HookRun {
            hook: name.to_string(),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// stop, start, health, switch; every run until the first failure.
    pub fn deploy(&self, id: &str) -> Vec<HookRun> {
        let mut runs = Vec::new();
        for hook in ["stop", "start", "health", "switch"] {
            let run = self.hook(hook, &[], Some(id));
            let failed = run.code != 0;
            runs.push(run);
            if failed {
                break;
            }
        }
        runs
    }

    /// The unit of the slot on `port`.
    pub fn unit(&self, port: u16) -> String {
        format!("portswap-{port}.service")
    }

    /// The unit's main pid (as seen inside), 0 when none.
    pub fn main_pid(&self, port: u16) -> i32 {
        self.machine
            .unit_property(&self.unit(port), "MainPID")
            .parse()
            .unwrap_or(0)
    }

    /// The version nginx serves now (`None` when nothing answers 200 within 0.5 s).
    pub fn live_version(&self) -> Option<String> {
        let port = self.nginx_port;
        let r = self
            .machine
            .in_net(|| net::http_get_timeout(port, "/", Duration::from_millis(500)))?
            .ok()?;
        (r.status == 200).then(|| r.header("X-App-Version").map(str::to_string))?
    }

    /// The include file's text.
    pub fn include(&self) -> String {
        fs::read_to_string(self.root().join("service-url.inc")).unwrap_or_default()
    }

    /// The live port the include names.
    pub fn live_port(&self) -> Option<u16> {
        crate::hooks::included_port(&self.root().join("service-url.inc"))
    }
}

/// The stand-in agent's main program: reads deployment ids from the queue (a FIFO) and runs
/// the four hooks of each, in order, up to the first failure, the way the CodeDeploy agent's
/// main process does: as root, or `su USER -c PATH` for `runas`; with agent 2.x's umask 0027
/// and a large inherited environment.
const AGENT_SCRIPT: &str = r#"#!/bin/sh
dir=$(dirname "$0")
umask 0027
i=0
while [ $i -lt 300 ]; do export "AGENT_INHERITED_$i=value $i of the unit's environment"; i=$((i+1)); done
while :; do
  read -r id < "$dir/queue" || continue
  [ -n "$id" ] || continue
  export DEPLOYMENT_ID="$id"
  : > "$dir/$id.log"
  : > "$dir/$id.tmp"
  for hook in stop start health switch; do
    if [ -n "$RUNAS" ]; then
      su "$RUNAS" -c "$BIN/$hook" >> "$dir/$id.log" 2>&1
    else
      "$BIN/$hook" >> "$dir/$id.log" 2>&1
    fi
    rc=$?
    echo "$hook $rc" >> "$dir/$id.tmp"
    [ $rc -eq 0 ] || break
  done
  mv "$dir/$id.tmp" "$dir/$id.done"
done
"#;

/// The stand-in agent's unit: the lines of `codedeploy-agent.service` that decide what
/// happens to the hooks' children: no `KillMode=` (so `control-group`), `Restart=on-failure`.
pub const AGENT_UNIT: &str = "codedeploy-agent.service";

impl SupervisedSite {
    fn agent_dir(&self) -> PathBuf {
        self.root().join("agent")
    }

    /// Installs and starts the stand-in CodeDeploy agent service (see [`AGENT_UNIT`]): its
    /// main process runs the hooks of every deployment [`agent_deploy`](Self::agent_deploy)
    /// queues, so their children start in its cgroup, as under the real agent.
    pub fn install_agent(&self) {
        let dir = self.agent_dir();
        fs::create_dir_all(&dir).expect("testkit: agent dir");
        fs::write(dir.join("agent.sh"), AGENT_SCRIPT).expect("testkit: agent script");
        let queue = dir.join("queue");
        if !queue.exists() {
            nix::unistd::mkfifo(&queue, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .expect("testkit: agent queue");
        }
        let runas = self.runas.clone().unwrap_or_default();
        self.machine.install_unit(
            AGENT_UNIT,
            &format!(
                "[Unit]\nDescription=stand-in for the CodeDeploy agent\n\
                 [Service]\nExecStart=/bin/sh {script}\nRestart=on-failure\n\
                 Environment=\"RUNAS={runas}\" \"BIN={bin}\" \"PORTSWAP_CONFIG={config}\"\n\
                 [Install]\nWantedBy=multi-user.target\n",
                script = dir.join("agent.sh").display(),
                bin = bins::bin_dir().display(),
                config = self.config().display(),
            ),
        );
    }

    /// Has the stand-in agent run deployment `id` (stop, start, health, switch) and waits
    /// for it (60 s at most; panics when the agent does not take it).
    pub fn agent_deploy(&self, id: &str) -> AgentRun {
        let dir = self.agent_dir();
        let done = dir.join(format!("{id}.done"));
        let _ = fs::remove_file(&done);
        let deadline = Instant::now() + Duration::from_secs(60);
        // Opening the FIFO without blocking fails (ENXIO) until the agent reads from it.
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(dir.join("queue"))
            {
                Ok(mut queue) => {
                    queue
                        .write_all(format!("{id}\n").as_bytes())
                        .expect("testkit: queue a deployment");
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("testkit: the stand-in agent does not read its queue: {e}"),
            }
        }
        net::wait_until(
            deadline.saturating_duration_since(Instant::now()),
            "the stand-in agent to finish the deployment",
            || done.exists(),
        )
        .unwrap_or_else(|e| panic!("testkit: {e}"));
        let hooks = fs::read_to_string(&done)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (hook, code) = l.split_once(' ')?;
                Some((hook.to_string(), code.parse().ok()?))
            })
            .collect();
        AgentRun {
            hooks,
            output: fs::read_to_string(dir.join(format!("{id}.log"))).unwrap_or_default(),
        }
    }
}
