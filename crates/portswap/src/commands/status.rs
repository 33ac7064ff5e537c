//! The read-only status view: live port, and each slot's app.

use std::fmt::Write;

use super::Context;
use crate::config::By;
use crate::error::Result;
use crate::state;
use crate::switcher::{keepalive, Live};
use crate::{cgroups, procfs};

fn uptime(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// Where the app of the slot on `port` lives: `cgroup <path>`, with a warning when that is
/// not a unit of its own (the CodeDeploy agent's service, a login session), whose stop kills
/// it; `None` when nothing of the slot runs or its cgroup cannot be read.
fn cgroup_line(ctx: &Context, port: u16) -> Option<String> {
    let pid = procfs::listeners(port).into_iter().next().or_else(|| {
        let record = ctx.state.app_record(port)?;
        record.process().is_alive().then_some(record.pid)
    })?;
    let cgroup = procfs::cgroup(pid)?;
    let own_unit = [
        ctx.config.systemd.unit_name(port),
        format!("portswap-{port}.scope"),
    ];
    let unit = cgroups::unit_of(&cgroup);
    if unit.is_some_and(|u| own_unit.iter().any(|o| o == u)) || !crate::systemctl::booted() {
        return Some(format!("cgroup {cgroup}"));
    }
    let whose = if cgroups::own().as_deref() == Some(cgroup.as_str()) {
        ", the cgroup this command runs in"
    } else {
        ""
    };
    Some(format!(
        "cgroup {cgroup}: WARNING: pid {pid} lives in the cgroup of {}{whose}, not in a unit of \
         its own: it dies when that stops or restarts (the CodeDeploy agent's service: at \
         every agent restart); see docs/systemd.md, \"Apps and the agent's cgroup\"",
        unit.unwrap_or(&cgroup)
    ))
}

/// The status as text: the live port and one line per slot.
pub fn render(ctx: &Context) -> Result<String> {
    let mut out = String::new();
    let live = ctx.switcher.live();
    let live_port = live.as_ref().ok().and_then(|l| l.slot());
    let include = ctx.config.nginx.include.display();
    let source = match ctx.config.switch.by {
        By::NginxReload => include.to_string(),
        By::Nftables => "read from nginx's include and the nftables rule below".to_string(),
    };
    let _ = match &live {
        Ok(Live::Slot(port)) => writeln!(out, "live port: {port} ({source})"),
        Ok(Live::Unmanaged(port)) => writeln!(
            out,
            "live port: {port} ({include}), not a slot: a version portswap does not manage; \
             the next switch takes over from it"
        ),
        Ok(Live::Nothing) => writeln!(out, "live port: none ({include} does not exist)"),
        Err(e) => writeln!(out, "live port: unknown: {e}"),
    };
    let _ = writeln!(out, "supervisor: {}", ctx.supervisor.kind());
    let _ = writeln!(out, "switch by: {}", ctx.config.switch.by.name());
    let _ = writeln!(
        out,
        "watch after a switch: {}",
        crate::watch::describe(&ctx.config.watch)
    );
    for line in ctx.switcher.describe() {
        let _ = writeln!(out, "{line}");
    }
    let keepalive = keepalive::status(ctx.config.switch.by, &ctx.config.nginx.test_command);
    let _ = writeln!(out, "keep-alive clients: {keepalive}");
    if let Some(last) = ctx.state.switch_record() {
        let previous = match last.previous {
            None => "none".to_string(),
            Some(p) if ctx.config.slot(p).is_none() => format!("{p} (not managed, taken over)"),
            Some(p) => p.to_string(),
        };
        let ago = uptime(state::now_secs().saturating_sub(last.at));
        let _ = writeln!(
            out,
            "last switch: {previous} -> {} {ago} ago (deployment {}){}",
            last.live,
            last.deployment_id,
            last.rolled_back
                .as_ref()
                .map(|why| format!(", rolled back by the watch: {why}"))
                .unwrap_or_default()
        );
    }
    let by_hand = crate::live::command(&ctx.state);
    if by_hand.is_file() {
        let _ = writeln!(
            out,
            "by hand: sudo {} --status | --rollback (the live deployment's configuration)",
            by_hand.display()
        );
    }
    for slot in &ctx.config.slots {
        let role = if live_port == Some(slot.port) {
            "live"
        } else {
            "idle"
        };
        let unit = ctx.supervisor.describe(slot.port);
        let app = match ctx.state.app_record(slot.port) {
            Some(r) if r.process().is_alive() => {
                format!(
                    "pid {} up {} deployment {} release {}",
                    r.pid,
                    uptime(state::now_secs().saturating_sub(r.started_at)),
                    r.deployment_id,
                    r.release_dir.display()
                )
            }
            // Under systemd a restart or a reboot gives the app a new pid: the unit line says.
            Some(r) if unit.is_some() => format!(
                "deployment {} release {} (recorded pid {} is gone)",
                r.deployment_id,
                r.release_dir.display(),
                r.pid
            ),
            Some(r) => format!(
                "not running (pid {} of deployment {} exited)",
                r.pid, r.deployment_id
            ),
            None => match procfs::listeners(slot.port).first() {
                Some(pid) => format!("unrecorded pid {pid} listens: {}", procfs::describe(*pid)),
                None => "not running".into(),
            },
        };
        let _ = writeln!(out, "slot {} {:<8} {role}  {app}", slot.port, slot.profile);
        if let Some(unit) = unit {
            let _ = writeln!(out, "     {unit}");
        }
        if let Some(line) = cgroup_line(ctx, slot.port) {
            let _ = writeln!(out, "     {line}");
        }
    }
    Ok(out.trim_end().to_string())
}
