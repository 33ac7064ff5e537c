//! The `switch` and `nginx` sections: how traffic is pointed at a slot.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{Checker, UNIT_DIR};
use crate::config::{By, Front, Nginx, RawNginx, RawSwitch, Slot, Switch};
use crate::error::Result;
use crate::switcher::nftables::REDIRECTED_ADDRESS;
use crate::template::{self, Template};

/// `nginx.include`'s default.
const INCLUDE: &str = "/etc/nginx/conf.d/service-url.inc";
/// `nginx.pid_file`'s default.
const PID_FILE: &str = "/run/nginx.pid";

impl Checker<'_> {
    pub(super) fn switch(&self, raw: RawSwitch, slots: &[Slot; 2]) -> Result<Switch> {
        let by = match raw.by.as_deref() {
            None | Some("nginx-reload") => By::NginxReload,
            Some("nftables") => By::Nftables,
            Some(other) => {
                return Err(self.err(
                    "switch.by",
                    format!("`{other}` is not a mechanism; use nginx-reload or nftables"),
                ))
            }
        };
        let service_port = raw.service_port.unwrap_or(8080);
        if service_port == 0 {
            return Err(self.err("switch.service_port", "must be 1 to 65535"));
        }
        // The default only matters in nftables mode; a reload-mode host may use 8080 as a slot.
        let checked = by == By::Nftables || raw.service_port.is_some();
        if let Some(i) = slots.iter().position(|s| s.port == service_port) {
            if checked {
                return Err(self.err(
                    "switch.service_port",
                    format!(
                        "{service_port} is slots[{i}].port; nginx proxies to the service port \
                         and the kernel redirects it to a slot, so it must be a third port that \
                         nothing listens on"
                    ),
                ));
            }
        }
        let boot_unit_dir = self.host_path_of(
            "switch.boot_unit_dir",
            raw.boot_unit_dir.as_deref().unwrap_or(UNIT_DIR),
            UNIT_DIR,
        )?;
        Ok(Switch {
            by,
            service_port,
            boot_unit_dir,
        })
    }

    /// In nftables mode nginx must connect where the rule redirects: its one rule matches
    /// `ip daddr 127.0.0.1` only, so a template pointing nginx at `[::1]`, `localhost` or any
    /// other host would send every request past the rule to a port nothing listens on (502).
    pub(super) fn redirected_template(&self, nginx: &Nginx, switch: &Switch) -> Result<()> {
        if switch.by != By::Nftables {
            return Ok(());
        }
        match nginx
            .template
            .hosts()
            .into_iter()
            .find(|h| *h != REDIRECTED_ADDRESS)
        {
            Some(host) => Err(self.err(
                "nginx.template",
                format!(
                    "`{}` points nginx at {host}, but switch.by nftables redirects only \
                     connections to {REDIRECTED_ADDRESS} (an IPv4 rule): nothing would answer \
                     there; write {REDIRECTED_ADDRESS}:{{port}}",
                    nginx.template.text()
                ),
            )),
            None => Ok(()),
        }
    }

    pub(super) fn nginx(&self, raw: RawNginx) -> Result<Nginx> {
        let include = self.host_path_of(
            "nginx.include",
            raw.include.as_deref().unwrap_or(INCLUDE),
            INCLUDE,
        )?;
        let template = Template::new(raw.template.unwrap_or_else(|| template::DEFAULT.into()))
            .map_err(|m| self.err("nginx.template", m))?;
        let test_command = self.argv(
            "nginx.test_command",
            raw.test_command
                .unwrap_or_else(|| vec!["nginx".into(), "-t".into(), "-q".into()]),
        )?;
        let reload_command = raw
            .reload_command
            .map(|argv| self.argv("nginx.reload_command", argv))
            .transpose()?;
        let pid_file = self.host_path_of(
            "nginx.pid_file",
            raw.pid_file.as_deref().unwrap_or(PID_FILE),
            PID_FILE,
        )?;
        let reload_timeout = self.duration(
            "nginx.reload_timeout",
            raw.reload_timeout,
            Duration::from_secs(5),
            Duration::from_secs(120),
        )?;
        if reload_timeout < Duration::from_millis(200) {
            return Err(self.err(
                "nginx.reload_timeout",
                "must be at least 200ms (nginx itself needs ~110ms)",
            ));
        }
        Ok(Nginx {
            include,
            template,
            test_command,
            reload_command,
            pid_file,
            reload_timeout,
            quit_old_workers: raw.quit_old_workers.unwrap_or(true),
            front: self.front(raw.front, raw.front_host)?,
        })
    }

    /// `nginx.front: http://127.0.0.1:80` (plain HTTP, a loopback IP, the port 80 when left
    /// out) and `nginx.front_host`, a Host header value.
    fn front(&self, front: Option<String>, host: Option<String>) -> Result<Option<Front>> {
        let Some(url) = front else {
            return match host {
                Some(_) => Err(self.err(
                    "nginx.front_host",
                    "needs nginx.front (e.g. front: http://127.0.0.1:80)",
                )),
                None => Ok(None),
            };
        };
        let bad = |why: &str| {
            self.err(
                "nginx.front",
                format!(
                    "`{url}` {why}; give nginx's plain-HTTP listener on this host, e.g. \
                     http://127.0.0.1:80 (the site's name goes in nginx.front_host)"
                ),
            )
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("is not an http:// URL"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        // `IP:PORT` (`[IPv6]:PORT`), or an IP alone for port 80.
        let addr = authority
            .parse::<SocketAddr>()
            .ok()
            .or_else(|| {
                let ip = authority
                    .strip_prefix('[')
                    .and_then(|a| a.strip_suffix(']'));
                let ip = ip.unwrap_or(authority).parse::<IpAddr>().ok()?;
                Some(SocketAddr::new(ip, 80))
            })
            .ok_or_else(|| bad("is not an IP address and port (no name is looked up, no path)"))?;
        if !addr.ip().is_loopback() {
            return Err(bad("is not a loopback address (127.0.0.0/8 or [::1])"));
        }
        if addr.port() == 0 {
            return Err(bad("has port 0"));
        }
        let host = host
            .map(|h| {
                let ok = !h.is_empty()
                    && h.len() <= 255
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-.:[]_".contains(c));
                match ok {
                    true => Ok(h),
                    false => Err(self.err(
                        "nginx.front_host",
                        format!("`{h}` is not a host name (letters, digits, - . _ and a :port)"),
                    )),
                }
            })
            .transpose()?;
        Ok(Some(Front { addr, host }))
    }
}
