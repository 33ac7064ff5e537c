//! The systemd unit that puts the nftables redirect back at boot, before nginx starts. The
//! kernel forgets its ruleset on reboot, and nginx would then proxy to a service port nothing
//! listens on. The unit applies the rules file every switch rewrites (`nft -f`), so it needs
//! neither the hook binaries nor portswap.yml, which CodeDeploy may have removed by then.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use crate::error::{Error, Result};
use crate::systemctl::Manager;
use crate::{fsio, systemctl, unitfile};

/// File name of the unit.
pub const NAME: &str = "portswap-redirect.service";

/// Targets whose start pulls the unit in (what `systemctl enable` links for `WantedBy=`).
const WANTED_BY: [&str; 2] = ["multi-user.target", "nginx.service"];

/// The unit's text: a oneshot ordered after the distribution's firewall units and before
/// nginx. Debian's nftables.service begins its ruleset with `flush ruleset`, so a restart or
/// reload of it would drop portswap's table: `PartOf=` re-runs this unit after a restart,
/// `ReloadPropagatedFrom=` re-applies the rule after a reload. Every path is quoted for
/// systemd ([`unitfile`]), so a state directory with a space or `%` still works at boot.
pub fn render(nft: &Path, rules: &Path) -> Result<String> {
    let rules_text = rules.to_string_lossy();
    let dir = rules.parent().unwrap_or(Path::new("/")).to_string_lossy();
    let exec = format!(
        "{} -f {}",
        unitfile::quote_word(&nft.to_string_lossy()),
        unitfile::quote_word(&rules_text)
    );
    Ok(format!(
        "# Written by portswap (switch.by: nftables). The kernel forgets the nftables ruleset on\n\
         # reboot: this puts portswap's redirect of the service port to the live slot back before\n\
         # nginx starts, and after every restart or reload of nftables.service. The rules file\n\
         # is rewritten by every switch.\n\
         [Unit]\n\
         Description=portswap: redirect nginx's service port to the live slot (nftables)\n\
         After=nftables.service firewalld.service\n\
         PartOf=nftables.service\n\
         ReloadPropagatedFrom=nftables.service\n\
         Before=nginx.service\n\
         RequiresMountsFor={dir}\n\
         ConditionPathExists={rules}\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart={exec}\n\
         ExecReload={exec}\n\
         \n\
         [Install]\n\
         WantedBy={wanted_by}\n",
        dir = unitfile::quote_assignment(&dir),
        rules = unitfile::plain_value("the nftables rules file", &rules_text)?,
        wanted_by = WANTED_BY.join(" "),
    ))
}

/// Writes the unit into `dir` (a systemd unit directory such as /etc/systemd/system) and
/// enables it the way `systemctl enable` does, with `WANTED_BY` symlinks. Returns `false`
/// without writing anything when `dir` does not exist (no systemd) or all is in place.
pub fn install(dir: &Path, nft: &Path, rules: &Path) -> Result<bool> {
    if !dir.is_dir() {
        return Ok(false);
    }
    let unit = dir.join(NAME);
    let text = render(nft, rules)?;
    let mut changed = false;
    if fsio::read_small(&unit, 64 * 1024)?.as_deref() != Some(text.as_bytes()) {
        fsio::write_atomic(&unit, text.as_bytes(), 0o644)?;
        changed = true;
    }
    for target in WANTED_BY {
        let wants = dir.join(format!("{target}.wants"));
        let link = wants.join(NAME);
        if fs::read_link(&link).is_ok_and(|to| to == unit) {
            continue;
        }
        fsio::ensure_dir(&wants, 0o755)?;
        let _ = fs::remove_file(&link);
        symlink(&unit, &link).map_err(|e| Error::io("cannot create", &link, e))?;
        changed = true;
    }
    Ok(changed)
}

/// Unit directories the running systemd reads: only a unit installed there is started.
const SYSTEM_DIRS: [&str; 2] = ["/etc/systemd/system", "/run/systemd/system"];

/// After [`install`] changed the unit in a directory the running systemd reads: makes
/// systemd load it and (re)starts it, so it is active and `PartOf=nftables.service` takes
/// effect from now on, not from the next boot. Two `systemctl` calls, each bounded by
/// [`systemctl::CALL_LIMIT`]; nothing when systemd does not run this host.
pub fn activate(dir: &Path) -> Result<bool> {
    let read_by_systemd = SYSTEM_DIRS
        .iter()
        .any(|d| fs::canonicalize(dir).is_ok_and(|c| c == Path::new(d)));
    if !read_by_systemd || !systemctl::booted() {
        return Ok(false);
    }
    Manager::System.systemctl(&["daemon-reload"], systemctl::CALL_LIMIT)?;
    Manager::System.systemctl(&["restart", "--", NAME], systemctl::CALL_LIMIT)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_once_and_enables_before_nginx() {
        let dir = std::env::temp_dir().join(format!("portswap-unit-{}", std::process::id()));
        let missing = dir.join("absent");
        let (nft, rules) = (Path::new("/usr/sbin/nft"), Path::new("/var/lib/p/r.nft"));
        assert!(!install(&missing, nft, rules).unwrap());
        assert!(!missing.exists());
        fs::create_dir_all(&dir).unwrap();
        assert!(install(&dir, nft, rules).unwrap());
        assert!(
            !install(&dir, nft, rules).unwrap(),
            "second install changes nothing"
        );
        let text = fs::read_to_string(dir.join(NAME)).unwrap();
        assert!(text.contains("Before=nginx.service"), "{text}");
        assert!(text.contains("After=nftables.service"), "{text}");
        assert!(
            text.contains("ExecStart=\"/usr/sbin/nft\" -f \"/var/lib/p/r.nft\"\n"),
            "{text}"
        );
        assert!(
            text.contains("RequiresMountsFor=\"/var/lib/p\"\n"),
            "{text}"
        );
        assert!(text.contains("PartOf=nftables.service\n"), "{text}");
        for target in WANTED_BY {
            let link = dir.join(format!("{target}.wants")).join(NAME);
            assert_eq!(fs::read_link(link).unwrap(), dir.join(NAME));
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn odd_state_paths_are_quoted_for_systemd() {
        let text = render(
            Path::new("/usr/sbin/nft"),
            Path::new("/srv/my state/100%/r.nft"),
        )
        .unwrap();
        assert!(
            text.contains("ExecStart=\"/usr/sbin/nft\" -f \"/srv/my state/100%%/r.nft\"\n"),
            "{text}"
        );
        assert!(
            text.contains("RequiresMountsFor=\"/srv/my state/100%%\"\n"),
            "{text}"
        );
        assert!(
            text.contains("ConditionPathExists=/srv/my state/100%%/r.nft\n"),
            "{text}"
        );
        assert!(render(Path::new("/usr/sbin/nft"), Path::new("/srv/a\nb/r.nft")).is_err());
    }
}
