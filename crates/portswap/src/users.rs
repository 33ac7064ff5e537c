//! Looking up the account to run the app as, from /etc/passwd (no NSS in a static binary).

use std::fs;
use std::path::PathBuf;

use crate::error::{Result, SupervisorError};

/// A local account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
    /// Login shell.
    pub shell: PathBuf,
}

/// Finds `name` (or a numeric uid) in `/etc/passwd`.
pub fn lookup(name: &str) -> Result<Account> {
    let passwd =
        fs::read_to_string("/etc/passwd").map_err(|source| SupervisorError::Passwd { source })?;
    parse(&passwd, name).ok_or_else(|| {
        SupervisorError::NoUser {
            name: name.to_string(),
        }
        .into()
    })
}

/// The groups `name` belongs to (its `/etc/group` memberships and `primary`), as login, `su`
/// and systemd's `User=` give them.
pub fn groups(name: &str, primary: u32) -> Vec<u32> {
    let text = fs::read_to_string("/etc/group").unwrap_or_default();
    member_of(&text, name, primary)
}

fn member_of(group: &str, name: &str, primary: u32) -> Vec<u32> {
    let mut gids = vec![primary];
    for line in group.lines() {
        let f: Vec<&str> = line.split(':').collect();
        let Some(gid) = f.get(2).and_then(|g| g.parse().ok()) else {
            continue;
        };
        let member = f
            .get(3)
            .is_some_and(|m| m.split(',').any(|u| u.trim() == name));
        if member && !gids.contains(&gid) {
            gids.push(gid);
        }
    }
    gids
}

fn parse(passwd: &str, name: &str) -> Option<Account> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 7 || (f[0] != name && f[2] != name) {
            return None;
        }
        Some(Account {
            name: f[0].into(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5].into(),
            shell: f[6].into(),
        })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_passwd_lines() {
        let text =
            "root:x:0:0:root:/root:/bin/bash\nec2-user:x:1000:1001::/home/ec2-user:/bin/bash\n";
        let a = super::parse(text, "ec2-user").unwrap();
        assert_eq!(
            (a.uid, a.gid, a.home.to_str().unwrap()),
            (1000, 1001, "/home/ec2-user")
        );
        assert_eq!(super::parse(text, "1000").unwrap().name, "ec2-user");
        assert!(super::parse(text, "nobody").is_none());
        let group = "wheel:x:10:root,ec2-user\nadm:x:4:ec2-user\nother:x:7:bob\nbad\n";
        assert_eq!(super::member_of(group, "ec2-user", 1001), vec![1001, 10, 4]);
    }
}
