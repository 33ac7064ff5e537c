//! A real systemd for tests: PID 1 of private pid/mount/uts/ipc/cgroup namespaces, booted on
//! a tmpfs-backed overlay of the host root (host binaries visible, host files untouched).
//!
//! [`Machine::boot`] spawns `testkit-sysinit` (this crate's tiny binary, [`init_main`]): it
//! enters a fresh child cgroup in every hierarchy, unshares the namespaces, forks the
//! future PID 1, which mounts the overlay, `/proc`, `/sys`, fresh cgroup trees, a minimal
//! `/dev`, tmpfs `/run` and `/tmp`, binds the shared directories (the test's files, the
//! workspace's executables) at their own paths, `pivot_root`s and execs systemd.
//! Commands go in with `nsenter` ([`Machine::command`]). The network namespace is the host's,
//! so apps inside listen on 127.0.0.1 ports the host reaches, unless the machine is booted
//! with [`Network::Private`] ([`Machine::boot_with`]): then every boot gets a fresh network
//! namespace with only `lo` (up), its own ports and its own nftables ruleset, lost at power
//! off like a real host's; [`Machine::in_net`] runs test code there.
//!
//! The overlay's upper directory lives on a tmpfs owned by the machine, so it survives
//! [`Machine::poweroff`] and [`Machine::power_cut`]: [`Machine::boot_again`] is a reboot on
//! the same disk state. Units that would touch the host (gettys, logind, dbus, timers,
//! kernel file system mounts) are masked. Needs root with CAP_SYS_ADMIN; [`Machine::boot`]
//! returns `Err` (tests print SKIPPED) where the kernel refuses.
//!
//! Every machine has its own base directory (`/tmp/portswap-machine-<pid>-<n>`); dropping
//! it cuts the power and removes cgroups, mounts and files; [`sweep`] (run by every boot)
//! removes what a crashed test process left behind.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::libc;

use crate::bins;
use crate::net::{wait_every, wait_until};
use crate::tools;

/// Where machines keep their base directories.
const BASE_PREFIX: &str = "/tmp/portswap-machine-";
/// The PATH inside.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Generators that would read the host's fstab, init scripts or partitions.
const MASKED_GENERATORS: &[&str] = &[
    "systemd-getty-generator",
    "systemd-sysv-generator",
    "systemd-gpt-auto-generator",
    "systemd-fstab-generator",
    "postgresql-generator",
];
/// Units that would touch the host or only slow the boot down.
const MASKED_UNITS: &[&str] = &[
    "getty.target",
    "systemd-logind.service",
    "dbus.service",
    "dbus.socket",
    "systemd-firstboot.service",
    "systemd-sysusers.service",
    "systemd-modules-load.service",
    "systemd-random-seed.service",
    "systemd-binfmt.service",
    "systemd-pstore.service",
    "systemd-timesyncd.service",
    "dev-hugepages.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "sys-kernel-config.mount",
    "modprobe@.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "nginx.service",
];

/// One cgroup hierarchy of the host and the child cgroup the machine lives in.
#[derive(Debug, Clone)]
struct Hierarchy {
    /// `cgroup` or `cgroup2`.
    fstype: String,
    /// Super-block options of a v1 hierarchy (its controllers, e.g. `cpu` or `name=systemd`).
    options: String,
    /// Where the host mounts it.
    mount_point: String,
    /// The machine's cgroup directory on the host.
    dir: PathBuf,
}

/// The network a [`Machine`] lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// The host's network namespace: ports inside are the host's.
    Host,
    /// A fresh network namespace per boot, with `lo` up: nothing inside (ports, nftables
    /// rules) touches the host, and a reboot starts with an empty ruleset.
    Private,
}

/// The argument that tells `testkit-sysinit` to unshare the network namespace too.
const PRIVATE_NET_ARG: &str = "private-net";

/// A booted (or powered-off) systemd machine. Power is cut and everything removed on drop.
#[derive(Debug)]
pub struct Machine {
    base: PathBuf,
    hierarchies: Vec<Hierarchy>,
    shared: Vec<PathBuf>,
    network: Network,
    outer: Option<Child>,
    pid1: Option<i32>,
    booted_at: Instant,
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

fn cstr(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("testkit: path with a NUL byte")
}

/// mount(2) with a readable error.
fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), String> {
    let source = CString::new(source).unwrap();
    let fstype_c = CString::new(fstype).unwrap();
    let data_c = CString::new(data).unwrap();
    let target_c = cstr(target);
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            if fstype.is_empty() {
                std::ptr::null()
            } else {
                fstype_c.as_ptr()
            },
            flags,
            if data.is_empty() {
                std::ptr::null()
            } else {
                data_c.as_ptr().cast()
            },
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "mount {fstype} on {}: {}",
            target.display(),
            io::Error::last_os_error()
        ))
    }
}

fn bind(from: &Path, to: &Path, read_only: bool) -> Result<(), String> {
    mount(
        &from.to_string_lossy(),
        to,
        "",
        libc::MS_BIND | libc::MS_REC,
        "",
    )?;
    if read_only {
        mount(
            "",
            to,
            "",
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            "",
        )?;
    }
    Ok(())
}

fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let c = cstr(target);
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn is_mount_point(path: &Path) -> bool {
    let target = path.to_string_lossy();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*target))
}

/// The host's cgroup hierarchies, with `name` as the machine's child cgroup below the
/// cgroup this process is in.
fn hierarchies(name: &str) -> Vec<Hierarchy> {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split(' ').nth(4).unwrap_or_default().to_string();
        let mut right = right.split(' ');
        let fstype = right.next().unwrap_or_default().to_string();
        let options: Vec<&str> = right.nth(1).unwrap_or_default().split(',').collect();
        let path = match fstype.as_str() {
            "cgroup2" => own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(str::to_string),
            "cgroup" => own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                let all =
                    !controllers.is_empty() && controllers.split(',').all(|c| options.contains(&c));
                all.then(|| path.to_string())
            }),
            _ => continue,
        };
        let Some(path) = path else { continue };
        let controllers: Vec<&str> = options
            .iter()
            .copied()
            .filter(|o| *o != "rw" && *o != "ro")
            .collect();
        let dir = format!("{mount_point}{}/{name}", path.trim_end_matches('/'));
        found.push(Hierarchy {
            fstype,
            options: controllers.join(","),
            mount_point,
            dir: PathBuf::from(dir),
        });
    }
    found
}

fn serialize(hierarchies: &[Hierarchy]) -> String {
    hierarchies
        .iter()
        .map(|h| {
            format!(
                "{} {} {} {}\n",
                h.fstype,
                h.options,
                h.mount_point,
                h.dir.display()
            )
        })
        .collect()
}

fn deserialize(text: &str) -> Vec<Hierarchy> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(4, ' ');
            Some(Hierarchy {
                fstype: parts.next()?.to_string(),
                options: parts.next()?.to_string(),
                mount_point: parts.next()?.to_string(),
                dir: PathBuf::from(parts.next()?),
            })
        })
        .collect()
}

fn process_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Removes what machines of dead test processes left behind: their PID 1, cgroups, state
/// tmpfs and base directory.
pub fn sweep() {
    let Ok(entries) = fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.to_string_lossy().starts_with(BASE_PREFIX) {
            continue;
        }
        // The pid in the name is known before the directory exists: a machine that is still
        // booting (its `owner` file not written yet) is never taken for a leftover.
        let named = entry
            .file_name()
            .to_string_lossy()
            .strip_prefix("portswap-machine-")
            .and_then(|rest| rest.split('-').next()?.parse::<i32>().ok());
        let owner = named.or_else(|| read_pid(&path.join("owner")));
        if owner.is_some_and(|pid| pid == std::process::id() as i32 || process_alive(pid)) {
            continue;
        }
        remove(&path, None);
    }
    // Cgroups whose base directory is already gone (a machine removed while its PID 1 ran).
    for parent in hierarchies("x").iter().filter_map(|h| h.dir.parent()) {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let owner = name
                .strip_prefix("portswap-machine-")
                .and_then(|rest| rest.split('-').next()?.parse::<i32>().ok());
            let base = PathBuf::from(format!("/tmp/{name}"));
            if owner.is_some_and(|pid| !process_alive(pid)) && !base.exists() {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
}

/// Cuts the power of the machine in `base` (if it runs), then removes its cgroups (deepest
/// first), its state tmpfs and the directory.
fn remove(base: &Path, outer: Option<&mut Child>) {
    kill_machine(base, outer);
    let hierarchies = deserialize(&fs::read_to_string(base.join("cgroups")).unwrap_or_default());
    for h in &hierarchies {
        remove_cgroup_tree(&h.dir);
    }
    let state = base.join("state");
    if is_mount_point(&state) {
        let _ = umount(&state, libc::MNT_DETACH);
    }
    let _ = fs::remove_dir_all(base);
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// SIGKILLs the machine's PID 1 (the kernel then kills its whole pid namespace) and waits for
/// the outer process, which holds the mount namespace, to be gone.
fn kill_machine(base: &Path, outer: Option<&mut Child>) {
    let outer_pid = match &outer {
        Some(child) => Some(child.id() as i32),
        None => read_pid(&base.join("outer")).filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("testkit-sysinit"))
        }),
    };
    let Some(outer_pid) = outer_pid else { return };
    // PID 1 when known; else the outer process, whose death kills PID 1 (PDEATHSIG).
    let target = read_pid(&base.join("pid1")).unwrap_or(outer_pid);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(target),
        nix::sys::signal::Signal::SIGKILL,
    );
    match outer {
        Some(child) => {
            let _ = wait_child(child, Duration::from_secs(10));
        }
        None => {
            let _ = wait_until(Duration::from_secs(10), "machine gone", || {
                !process_alive(outer_pid)
            });
        }
    }
}

fn wait_child(child: &mut Child, limit: Duration) -> Result<(), String> {
    wait_until(limit, "the machine's outer process to exit", || {
        matches!(child.try_wait(), Ok(Some(_)) | Err(_))
    })
    .map(|_| ())
}

impl Machine {
    /// Boots a new machine and waits until systemd reports `running` (or `degraded`).
    /// `shared` directories (and the workspace's executables) appear inside at the same
    /// paths, read-write. `Err` says why the machine could not boot (e.g. not root).
    pub fn boot(shared: &[&Path]) -> Result<Machine, String> {
        Machine::boot_with(shared, Network::Host)
    }

    /// [`boot`](Self::boot) in the given `network`.
    pub fn boot_with(shared: &[&Path], network: Network) -> Result<Machine, String> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        if !nix::unistd::geteuid().is_root() {
            return Err("not root (a systemd machine needs CAP_SYS_ADMIN)".into());
        }
        if let Some(tool) = [&tools::SYSTEMD, &tools::NSENTER]
            .into_iter()
            .find(|t| t.find().is_none())
        {
            return Err(tool.missing());
        }
        sweep();
        bins::ensure_built();
        let name = format!(
            "portswap-machine-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let base = PathBuf::from(format!("/tmp/{name}"));
        fs::create_dir_all(base.join("state")).map_err(|e| err("create base dir", e))?;
        fs::write(base.join("owner"), std::process::id().to_string())
            .map_err(|e| err("write owner", e))?;
        let hierarchies = hierarchies(&name);
        fs::write(base.join("cgroups"), serialize(&hierarchies))
            .map_err(|e| err("write cgroups", e))?;
        let mut shared: Vec<PathBuf> = shared.iter().map(|p| p.to_path_buf()).collect();
        shared.push(bins::bin_dir());
        let mut machine = Machine {
            base,
            hierarchies,
            shared,
            network,
            outer: None,
            pid1: None,
            booted_at: Instant::now(),
        };
        machine.prepare_disk()?;
        machine.start()?;
        machine.wait_ready(Duration::from_secs(30))?;
        Ok(machine)
    }

    /// A fresh state tmpfs with the masks in its upper directory.
    fn prepare_disk(&self) -> Result<(), String> {
        let state = self.state();
        mount("portswap-machine", &state, "tmpfs", 0, "mode=755")?;
        let etc = state.join("upper/etc/systemd");
        for dir in ["system", "system-generators"] {
            fs::create_dir_all(etc.join(dir)).map_err(|e| err("create upper dir", e))?;
        }
        fs::create_dir_all(state.join("work")).map_err(|e| err("create work dir", e))?;
        for g in MASKED_GENERATORS {
            symlink("/dev/null", etc.join("system-generators").join(g))
                .map_err(|e| err("mask generator", e))?;
        }
        for u in MASKED_UNITS {
            symlink("/dev/null", etc.join("system").join(u)).map_err(|e| err("mask unit", e))?;
        }
        let shared: String = self
            .shared
            .iter()
            .map(|p| format!("{}\n", p.display()))
            .collect();
        fs::write(self.base.join("shared"), shared).map_err(|e| err("write shared", e))
    }

    fn state(&self) -> PathBuf {
        self.base.join("state")
    }

    /// The machine's base directory on the host.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Spawns the outer process and waits for it to name PID 1.
    fn start(&mut self) -> Result<(), String> {
        for h in &self.hierarchies {
            fs::create_dir_all(&h.dir).map_err(|e| err("create cgroup", e))?;
            if h.options.split(',').any(|o| o == "cpuset") {
                if let Some(parent) = h.dir.parent() {
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        let value = fs::read_to_string(parent.join(file)).unwrap_or_default();
                        let _ = fs::write(h.dir.join(file), value.trim());
                    }
                }
            }
        }
        let _ = fs::remove_file(self.base.join("pid1"));
        let log =
            fs::File::create(self.state().join("boot.log")).map_err(|e| err("boot log", e))?;
        let log2 = log.try_clone().map_err(|e| err("boot log", e))?;
        self.booted_at = Instant::now();
        let child = Command::new(bins::bin("testkit-sysinit"))
            .arg(&self.base)
            .args((self.network == Network::Private).then_some(PRIVATE_NET_ARG))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| err("spawn testkit-sysinit", e))?;
        fs::write(self.base.join("outer"), child.id().to_string()).map_err(|e| err("outer", e))?;
        self.outer = Some(child);
        let pid_file = self.base.join("pid1");
        let outer = self.outer.as_mut().unwrap();
        let named = wait_until(Duration::from_secs(30), "PID 1 of the machine", || {
            read_pid(&pid_file).is_some() || !matches!(outer.try_wait(), Ok(None))
        });
        self.pid1 = read_pid(&pid_file);
        if named.is_err() || self.pid1.is_none() {
            let outer = self.outer.as_mut().map(|o| o.try_wait());
            return Err(format!(
                "the machine did not boot ({}; testkit-sysinit {outer:?}): {}",
                named.err().unwrap_or_default(),
                fs::read_to_string(self.state().join("boot.log")).unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// Waits until `systemctl is-system-running` says `running` or `degraded`; returns the
    /// time since the boot began.
    pub fn wait_ready(&self, limit: Duration) -> Result<Duration, String> {
        let mut last = String::new();
        let ready = wait_every(
            limit,
            Duration::from_millis(20),
            "systemd to finish booting",
            || {
                let out = self.run(&["systemctl", "is-system-running"]);
                last = String::from_utf8_lossy(&out.stdout).trim().to_string();
                last == "running" || last == "degraded"
            },
        );
        ready.map(|_| self.booted_at.elapsed()).map_err(|e| {
            format!(
                "{e} (last state `{last}`); boot log:\n{}",
                fs::read_to_string(self.state().join("boot.log")).unwrap_or_default()
            )
        })
    }

    /// When the last boot began.
    pub fn booted_at(&self) -> Instant {
        self.booted_at
    }

    /// The host pid of the machine's PID 1 (`None` while powered off).
    pub fn pid1(&self) -> Option<i32> {
        self.pid1
    }

    /// `argv` run inside the machine (its namespaces and root) with a clean environment
    /// plus `env`.
    pub fn command_env(&self, argv: &[&str], env: &[(&str, &str)]) -> Command {
        let pid1 = self.pid1.expect("testkit: the machine is powered off");
        let mut command = Command::new("nsenter");
        command
            .args(["--target", &pid1.to_string()])
            .args(["--mount", "--pid", "--uts", "--ipc", "--cgroup"])
            .args((self.network == Network::Private).then_some("--net"))
            .arg("--")
            .args(["/usr/bin/env", "-i"])
            .arg(format!("PATH={PATH}"))
            .args([
                "SYSTEMD_IGNORE_CHROOT=1",
                "SYSTEMD_PAGER=",
                "SYSTEMD_COLORS=0",
            ])
            .args(env.iter().map(|(k, v)| format!("{k}={v}")))
            .args(argv)
            .current_dir("/")
            .env_clear()
            .env("PATH", PATH)
            .stdin(Stdio::null());
        command
    }

    /// Runs `f` on a thread in the machine's network namespace and returns its result: HTTP
    /// clients there reach what listens inside. `None` when the network is
    /// [`Network::Private`] and the machine is powered off (no namespace to enter).
    pub fn in_net<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Option<T> {
        if self.network == Network::Host {
            return Some(f());
        }
        let ns = fs::File::open(format!("/proc/{}/ns/net", self.pid1?)).ok()?;
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("testkit: enter the machine's network: {e}"));
                f()
            });
            match thread.join() {
                Ok(value) => Some(value),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// `argv` run inside the machine.
    pub fn command(&self, argv: &[&str]) -> Command {
        self.command_env(argv, &[])
    }

    /// Runs `argv` inside and returns its output (panics if it cannot be run at all).
    pub fn run(&self, argv: &[&str]) -> Output {
        self.command(argv)
            .output()
            .unwrap_or_else(|e| panic!("testkit: nsenter {argv:?}: {e}"))
    }

    /// Runs `argv` inside; its stdout, trimmed; panics with its output unless it succeeds.
    pub fn run_ok(&self, argv: &[&str]) -> String {
        let out = self.run(argv);
        assert!(
            out.status.success(),
            "testkit: {argv:?} in the machine failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `systemctl show -p PROPERTY --value UNIT` inside.
    pub fn unit_property(&self, unit: &str, property: &str) -> String {
        let out = self.run(&["systemctl", "show", "-p", property, "--value", unit]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Writes a unit file into the machine's `/etc/systemd/system` and enables and starts it
    /// (replacing the mask of a unit masked here, such as the host's `nginx.service`).
    pub fn install_unit(&self, name: &str, text: &str) {
        let path = format!("/etc/systemd/system/{name}");
        // Written through the overlay, not into its upper directory behind the kernel's back
        // (a cached mask would hide the new file); a mask is a link to /dev/null: unlinked.
        self.run_ok(&["rm", "-f", &path]);
        self.write_file(&path, text);
        self.run_ok(&["systemctl", "daemon-reload"]);
        self.run_ok(&["systemctl", "enable", "--now", name]);
    }

    /// Creates the user `name` inside the machine (its own `/etc/passwd` on the overlay, a
    /// home directory) and returns its uid.
    pub fn add_user(&self, name: &str) -> u32 {
        self.run_ok(&["useradd", "--create-home", "--shell", "/bin/sh", name]);
        self.run_ok(&["id", "-u", name])
            .parse()
            .expect("testkit: numeric uid")
    }

    /// `loginctl enable-linger USER` as logind would carry it out, since logind does not run
    /// in the machine: marks the user lingering (`/var/lib/systemd/linger/USER`), makes
    /// `user@UID.service` start at every boot (logind starts lingering users' managers when
    /// it starts), creates `/run/user/UID` for it the way logind's `user-runtime-dir@UID`
    /// does (without asking logind over D-Bus for the size), and starts the manager now.
    pub fn enable_linger(&self, user: &str) {
        let uid = self.run_ok(&["id", "-u", user]);
        let dropin = "/etc/systemd/system/user-runtime-dir@.service.d";
        self.write_file(
            &format!("{dropin}/testkit-no-logind.conf"),
            "[Service]\nExecStart=\nExecStart=/usr/bin/install -d -m 0700 -o %i /run/user/%i\n\
             ExecStop=\nExecStop=/usr/bin/rm -rf /run/user/%i\n",
        );
        self.write_file(&format!("/var/lib/systemd/linger/{user}"), "");
        self.run_ok(&["systemctl", "daemon-reload"]);
        let manager = format!("user@{uid}.service");
        self.run_ok(&["systemctl", "add-wants", "multi-user.target", &manager]);
        self.run_ok(&["systemctl", "start", &manager]);
    }

    /// Writes `text` to `path` inside the machine (through the overlay), creating its
    /// directory.
    pub fn write_file(&self, path: &str, text: &str) {
        if let Some(dir) = Path::new(path).parent() {
            self.run_ok(&["mkdir", "-p", &dir.to_string_lossy()]);
        }
        let mut tee = self
            .command(&["tee", path])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("testkit: run tee in the machine");
        let written = tee.stdin.take().map(|mut s| s.write_all(text.as_bytes()));
        let status = tee.wait().expect("testkit: wait for tee");
        assert!(
            status.success() && matches!(written, Some(Ok(()))),
            "testkit: write {path} in the machine: {status}, {written:?}"
        );
    }

    /// A file of the machine's disk as it reads inside (overlay upper first, then the host).
    pub fn read_file(&self, path: &Path) -> Option<String> {
        let upper = self
            .state()
            .join("upper")
            .join(path.strip_prefix("/").ok()?);
        fs::read_to_string(upper)
            .ok()
            .or_else(|| String::from_utf8(self.run(&["cat", &path.to_string_lossy()]).stdout).ok())
    }

    /// Clean shutdown (what `poweroff` asks PID 1 for), waiting until the machine is gone.
    pub fn poweroff(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        if let Some(pid1) = self.pid1.take() {
            // SIGRTMIN+4: systemd's "poweroff" signal.
            // SAFETY: plain kill(2) with a signal number.
            unsafe { libc::kill(pid1, libc::SIGRTMIN() + 4) };
        }
        if let Some(outer) = self.outer.as_mut() {
            wait_child(outer, Duration::from_secs(30))?;
        }
        self.outer = None;
        Ok(started.elapsed())
    }

    /// Power cut: SIGKILL to PID 1 (the kernel kills everything in the machine).
    pub fn power_cut(&mut self) -> Result<Duration, String> {
        let started = Instant::now();
        self.pid1 = None;
        if let Some(outer) = self.outer.as_mut() {
            kill_machine(&self.base, Some(outer));
            if !matches!(outer.try_wait(), Ok(Some(_))) {
                return Err("the machine survived SIGKILL of its PID 1".into());
            }
        }
        self.outer = None;
        Ok(started.elapsed())
    }

    /// Boots again on the same disk state (after [`poweroff`](Self::poweroff) or
    /// [`power_cut`](Self::power_cut)); returns once systemd is up, with the time taken.
    pub fn boot_again(&mut self) -> Result<Duration, String> {
        assert!(self.outer.is_none(), "testkit: the machine still runs");
        self.start()?;
        self.wait_ready(Duration::from_secs(30))
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let mut outer = self.outer.take();
        remove(&self.base, outer.as_mut());
    }
}

/// Boots a machine, or prints `SKIPPED <test>: <why>` and returns `None` when this host
/// refuses (not root, no namespaces, no systemd); see [`refused`].
pub fn machine_or_skip(test: &str, shared: &[&Path]) -> Option<Machine> {
    match Machine::boot(shared) {
        Ok(machine) => Some(machine),
        Err(why) => {
            refused(test, &why);
            None
        }
    }
}

/// A machine could not boot for `test`: prints `SKIPPED <test>: <why>` (see
/// [`skip`](crate::skip)), or panics when `PORTSWAP_TESTKIT_REQUIRE_SYSTEMD=1` or under CI.
pub fn refused(test: &str, why: &str) {
    if std::env::var_os("PORTSWAP_TESTKIT_REQUIRE_SYSTEMD").is_some_and(|v| v != "0") {
        panic!("{test}: a systemd machine is required here but did not boot: {why}");
    }
    crate::skip(test, &format!("no systemd machine on this host: {why}"));
}

// -------------------------------------------------------------------------------------------
// Inside: the `testkit-sysinit` binary.
// -------------------------------------------------------------------------------------------

/// The `testkit-sysinit` program: `testkit-sysinit BASE [private-net]`. Enters the
/// machine's cgroups, unshares the namespaces (the network one too, with `lo` brought up,
/// when asked) and forks PID 1, which sets up the root and execs systemd; the
/// parent (holding the namespaces) waits for it and exits with its status.
pub fn init_main() -> ! {
    let base = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .expect("usage: testkit-sysinit BASE"),
    );
    let fail = |what: String| -> ! {
        eprintln!("testkit-sysinit: {what}");
        std::process::exit(1)
    };
    let hierarchies = deserialize(&fs::read_to_string(base.join("cgroups")).unwrap_or_default());
    let me = std::process::id().to_string();
    for h in &hierarchies {
        if let Err(e) = fs::write(h.dir.join("cgroup.procs"), &me) {
            fail(format!("enter cgroup {}: {e}", h.dir.display()));
        }
    }
    let _ = nix::unistd::setsid();
    let private_net = std::env::args().nth(2).as_deref() == Some(PRIVATE_NET_ARG);
    let mut flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWCGROUP;
    if private_net {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: unshare(2) with namespace flags; this process is single-threaded.
    if unsafe { libc::unshare(flags) } != 0 {
        fail(format!("unshare: {}", io::Error::last_os_error()));
    }
    if private_net {
        if let Err(e) = crate::netns::loopback_up() {
            fail(format!("bringing lo up in the new network namespace: {e}"));
        }
    }
    if let Err(e) = mount(
        "none",
        Path::new("/"),
        "",
        libc::MS_REC | libc::MS_PRIVATE,
        "",
    ) {
        fail(e);
    }
    // The child waits until its pid is on record: its pivot_root also moves this process's
    // root (same mount namespace), after which the base directory is out of reach.
    let mut go = [0; 2];
    // SAFETY: pipe(2) into an array of two descriptors.
    if unsafe { libc::pipe(go.as_mut_ptr()) } != 0 {
        fail(format!("pipe: {}", io::Error::last_os_error()));
    }
    // SAFETY: single-threaded: fork is safe, the child only runs this function's code.
    match unsafe { libc::fork() } {
        -1 => fail(format!("fork: {}", io::Error::last_os_error())),
        0 => {
            // SAFETY: prctl with integer arguments; close/read on our own pipe.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::close(go[1]);
                let mut byte = 0u8;
                libc::read(go[0], (&mut byte as *mut u8).cast(), 1);
                libc::close(go[0]);
            }
            if let Err(e) = become_pid1(&base, &hierarchies) {
                fail(e);
            }
            unreachable!()
        }
        child => {
            let _ = fs::write(base.join("pid1"), child.to_string());
            // SAFETY: closing our ends of the pipe releases the child.
            unsafe {
                libc::close(go[0]);
                libc::close(go[1]);
            }
            let mut status = 0;
            // SAFETY: waitpid on our own child with a valid out pointer.
            unsafe { libc::waitpid(child, &mut status, 0) };
            std::process::exit(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                0
            })
        }
    }
}

fn become_pid1(base: &Path, hierarchies: &[Hierarchy]) -> Result<(), String> {
    let state = base.join("state");
    let root = base.join("root");
    fs::create_dir_all(&root).map_err(|e| err("create root", e))?;
    let lower_upper = format!(
        "lowerdir=/,upperdir={},workdir={}",
        state.join("upper").display(),
        state.join("work").display()
    );
    mount("overlay", &root, "overlay", 0, &lower_upper)?;
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    let first_boot = state.join(".initialized");
    if !first_boot.exists() {
        // Host-enabled units must not start inside: whiteouts for the host's .wants links.
        if let Ok(entries) = fs::read_dir(at("/etc/systemd/system")) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".wants") || name.starts_with("dbus-org.") {
                    let _ =
                        fs::remove_dir_all(entry.path()).or_else(|_| fs::remove_file(entry.path()));
                }
            }
        }
        let _ = fs::write(&first_boot, "");
    }
    let nosuid = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", &at("/proc"), "proc", nosuid, "")?;
    bind(&at("/proc/sys"), &at("/proc/sys"), true)?;
    let boot_id = state.join("boot_id");
    let uuid = fs::read_to_string("/proc/sys/kernel/random/uuid").unwrap_or_default();
    fs::write(&boot_id, uuid).map_err(|e| err("boot id", e))?;
    bind(&boot_id, &at("/proc/sys/kernel/random/boot_id"), false)?;
    mount("sysfs", &at("/sys"), "sysfs", nosuid | libc::MS_RDONLY, "")?;
    let cgroup_root = at("/sys/fs/cgroup");
    let v1 = hierarchies.iter().any(|h| h.fstype == "cgroup");
    if v1 {
        mount("cgroup", &cgroup_root, "tmpfs", nosuid, "mode=755")?;
    }
    for h in hierarchies {
        let target = at(&h.mount_point);
        fs::create_dir_all(&target).map_err(|e| err("cgroup mount point", e))?;
        let options = if h.fstype == "cgroup" {
            h.options.as_str()
        } else {
            ""
        };
        mount(&h.fstype, &target, &h.fstype, nosuid, options)?;
    }
    if v1 {
        mount(
            "",
            &cgroup_root,
            "",
            libc::MS_REMOUNT | libc::MS_RDONLY | nosuid,
            "mode=755",
        )?;
    }
    let dev = at("/dev");
    mount("dev", &dev, "tmpfs", libc::MS_NOSUID, "mode=755")?;
    for node in [
        "null", "zero", "full", "random", "urandom", "tty", "fuse", "net/tun",
    ] {
        let host = Path::new("/dev").join(node);
        if !host.exists() {
            continue;
        }
        let inside = dev.join(node);
        if let Some(parent) = inside.parent() {
            let _ = fs::create_dir_all(parent);
        }
        fs::write(&inside, "").map_err(|e| err("device node", e))?;
        bind(&host, &inside, false)?;
    }
    for dir in ["pts", "shm"] {
        fs::create_dir_all(dev.join(dir)).map_err(|e| err("dev dir", e))?;
    }
    let fresh = [
        (
            "devpts",
            dev.join("pts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=620,gid=5",
        ),
        (
            "tmpfs",
            dev.join("shm"),
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
        ),
        (
            "tmpfs",
            at("/run"),
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=755",
        ),
        (
            "tmpfs",
            at("/tmp"),
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
        ),
    ];
    for (fstype, target, flags, data) in &fresh {
        mount(fstype, target, fstype, *flags, data)?;
    }
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(link)).map_err(|e| err("dev link", e))?;
    }
    let console = state.join("console.log");
    fs::write(&console, "").map_err(|e| err("console", e))?;
    fs::write(dev.join("console"), "").map_err(|e| err("console", e))?;
    bind(&console, &dev.join("console"), false)?;
    for dir in fs::read_to_string(base.join("shared"))
        .unwrap_or_default()
        .lines()
    {
        let inside = at(dir);
        fs::create_dir_all(&inside).map_err(|e| err("shared dir", e))?;
        bind(Path::new(dir), &inside, false)?;
    }
    std::env::set_current_dir(&root).map_err(|e| err("chdir root", e))?;
    fs::create_dir_all(root.join(".oldroot")).map_err(|e| err("oldroot", e))?;
    let (new, old) = (
        CString::new(".").unwrap(),
        CString::new(".oldroot").unwrap(),
    );
    // SAFETY: pivot_root(2) with valid NUL-terminated paths.
    if unsafe { libc::syscall(libc::SYS_pivot_root, new.as_ptr(), old.as_ptr()) } != 0 {
        return Err(format!("pivot_root: {}", io::Error::last_os_error()));
    }
    std::env::set_current_dir("/").map_err(|e| err("chdir /", e))?;
    umount(Path::new("/.oldroot"), libc::MNT_DETACH).map_err(|e| err("umount old root", e))?;
    let _ = fs::remove_dir("/.oldroot");
    let program = CString::new("/usr/lib/systemd/systemd").unwrap();
    let args =
        ["systemd", "--system", "--unit=multi-user.target"].map(|a| CString::new(a).unwrap());
    let env = [
        "container=portswap-testkit".to_string(),
        format!("PATH={PATH}"),
    ]
    .map(|a| CString::new(a).unwrap());
    let argv: Vec<*const libc::c_char> = args
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let envp: Vec<*const libc::c_char> = env
        .iter()
        .map(|a| a.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    // SAFETY: NUL-terminated argument and environment arrays of valid strings.
    unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(format!("exec systemd: {}", io::Error::last_os_error()))
}
