//! Which cgroup an app lives in, and whether that is the cgroup of the unit that ran the
//! hook. systemd stops a service by killing every process of its cgroup (`KillMode=` is
//! `control-group` unless the unit says otherwise, and the CodeDeploy agent's unit does not
//! say): an app left in the agent's cgroup dies with every stop, restart or self-update of
//! the agent. `setsid` or a new process group changes nothing there.

use crate::procfs;

/// The unit a cgroup path belongs to (its last component when that names a service or a
/// scope), e.g. `codedeploy-agent.service` for `/system.slice/codedeploy-agent.service`.
pub fn unit_of(cgroup: &str) -> Option<&str> {
    let last = cgroup.rsplit('/').next()?;
    (last.ends_with(".service") || last.ends_with(".scope")).then_some(last)
}

/// The cgroup of this hook.
pub fn own() -> Option<String> {
    procfs::cgroup(std::process::id() as i32)
}

/// `cgroup` in words: `codedeploy-agent.service (/system.slice/codedeploy-agent.service)`.
pub fn show(cgroup: &str) -> String {
    match unit_of(cgroup) {
        Some(unit) => format!("{unit} ({cgroup})"),
        None => cgroup.to_string(),
    }
}

/// When systemd runs the host and `pid` (the app `start` launched) is in this hook's own
/// cgroup: the one line saying so, what it means and the fix; else `None`.
pub fn shared_with_hook(pid: i32) -> Option<String> {
    if !crate::systemctl::booted() || pid <= 1 {
        return None;
    }
    let app = procfs::cgroup(pid)?;
    if own().as_deref() != Some(app.as_str()) {
        return None;
    }
    let user = crate::supervisor::user_name();
    let fix = if nix::unistd::geteuid().is_root() {
        "use app.supervisor auto or systemd (a unit per slot)".to_string()
    } else {
        format!(
            "run `sudo loginctl enable-linger {user}` once and keep app.supervisor auto: \
             the app then runs as a user unit"
        )
    };
    Some(format!(
        "the app stays in the cgroup of {}, which ran this hook, and dies when that unit \
         stops or restarts (e.g. `systemctl restart codedeploy-agent`); {fix}",
        show(&app)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_named_by_their_last_component() {
        assert_eq!(
            unit_of("/system.slice/codedeploy-agent.service"),
            Some("codedeploy-agent.service")
        );
        assert_eq!(
            unit_of(
                "/user.slice/user-1000.slice/user@1000.service/app.slice/portswap-8081.service"
            ),
            Some("portswap-8081.service")
        );
        assert_eq!(
            unit_of("/system.slice/portswap-8081.scope"),
            Some("portswap-8081.scope")
        );
        assert_eq!(unit_of("/user.slice"), None);
        assert_eq!(show("/"), "/");
    }
}
