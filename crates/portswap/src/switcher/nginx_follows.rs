//! Whether nginx follows the include: the states in which a reload would complete and the
//! switch say OK while nginx keeps serving the old port are refused (exit 4, nothing
//! changed). Read from nginx's own dump of the configuration it just tested (`nginx -V -T`,
//! [`NginxDump`], through [`nginx_conf`]) and from /proc:
//!
//! - the tested configuration must include `nginx.include` ([`Refusal::IncludeNotRead`]),
//!   and nothing nginx runs after it may set the include's variable again
//!   ([`Refusal::IncludeOverridden`]): a later `set` in the same block or in a block after
//!   it, or one in a `location` of that block (location rewrites run after the server's);
//! - the master `nginx.pid_file` names must be the nginx that was tested: the tested
//!   configuration writes its pid there ([`Refusal::PidFileElsewhere`]) and the master runs
//!   that configuration file ([`Refusal::OtherMaster`]);
//! - no second master (a binary upgrade, `<pid_file>.oldbin`) serves beside it
//!   ([`Refusal::SecondMaster`]).

use std::path::{Path, PathBuf};

use super::nginx_conf::{self, Directive};
use super::nginx_dump::NginxDump;
use crate::config::Nginx;
use crate::error::{Refusal, Result};
use crate::{fsio, procfs};

/// nginx's prefix when it was built without `--prefix`.
const DEFAULT_PREFIX: &str = "/usr/local/nginx/";

/// Refuses a second nginx master beside `master`: the one `<pid_file>.oldbin` names while it
/// runs, or `master`'s parent when that is an nginx master (the new master of a binary
/// upgrade is the old one's child).
pub fn refuse_second_master(master: i32, pid_file: &Path) -> Result<()> {
    let oldbin = PathBuf::from(format!("{}.oldbin", pid_file.display()));
    let named = fsio::read_small(&oldbin, 64)
        .ok()
        .flatten()
        .and_then(|bytes| String::from_utf8_lossy(&bytes).trim().parse::<i32>().ok());
    if let Some(other) = named.filter(|p| *p != master && is_master(*p)) {
        return Err(Refusal::SecondMaster {
            master,
            other,
            how: format!("named in {}", oldbin.display()),
        }
        .into());
    }
    if let Some((parent, _)) = procfs::parent_and_group(master).filter(|(p, _)| is_master(*p)) {
        return Err(Refusal::SecondMaster {
            master,
            other: parent,
            how: format!("the parent of pid {master}"),
        }
        .into());
    }
    Ok(())
}

/// True when `pid` runs and is titled as an nginx master (a refusal only: a title proves
/// nothing else here).
fn is_master(pid: i32) -> bool {
    pid > 1
        && procfs::ProcId::of(pid).is_some()
        && procfs::cmdline(pid)
            .join(" ")
            .starts_with("nginx: master process")
}

/// Refuses, after the config test, what would make a completed reload not send traffic where
/// the include says: see the module's doc. `dump` is what the test printed, `master` the pid
/// `nginx.pid_file` names.
pub fn check(dump: &NginxDump, nginx: &Nginx, master: i32) -> Result<()> {
    let files = dump.files();
    let Some((tested, _)) = files.first() else {
        log::debug!("nginx -T listed no configuration file: include checks skipped");
        return Ok(());
    };
    let tree = nginx_conf::expand(&files);
    let test_args = &nginx.test_command[1..];
    let prefix = prefix_of(option(test_args, "-p"), dump, std::env::current_dir().ok());
    let written = pid_path(&tree, test_args, dump, &prefix);
    if !same_file(&written, &nginx.pid_file) {
        return Err(Refusal::PidFileElsewhere {
            pid_file: nginx.pid_file.clone(),
            config: tested.clone(),
            written,
        }
        .into());
    }
    if let Some(running) = master_config(master, dump) {
        if !same_file(&running, tested) {
            return Err(Refusal::OtherMaster {
                pid_file: nginx.pid_file.clone(),
                master,
                running,
                tested: tested.clone(),
            }
            .into());
        }
    }
    let included: Vec<&Path> = files
        .iter()
        .map(|(path, _)| path.as_path())
        .filter(|path| same_file(path, &nginx.include))
        .collect();
    if included.is_empty() {
        return Err(Refusal::IncludeNotRead {
            include: nginx.include.clone(),
            config: tested.clone(),
        }
        .into());
    }
    let variables: Vec<String> = nginx_conf::parse(&nginx.template.render(1))
        .iter()
        .filter(|d| d.name() == "set")
        .filter_map(|d| d.args().first().cloned())
        .collect();
    let from_include = |d: &Directive| included.contains(&&*d.file);
    if let Some(found) = overridden(&tree, &variables, &from_include) {
        return Err(Refusal::IncludeOverridden {
            include: nginx.include.clone(),
            at: found.directive.place(),
            directive: found.directive.words.join(" "),
            how: found.how,
        }
        .into());
    }
    Ok(())
}

/// The text of `include` as nginx read it (its file in the dump), when nginx read it.
pub fn text_of<'a>(dump: &'a NginxDump, include: &Path) -> Option<&'a str> {
    dump.files()
        .into_iter()
        .find(|(path, _)| same_file(path, include))
        .map(|(_, text)| text)
}

/// A directive that sets the include's variable after the include does.
struct Override<'a> {
    directive: &'a Directive,
    how: String,
}

/// The first `set` of one of `variables` that nginx runs after a `set` of it read from the
/// include, in any block of `tree`.
fn overridden<'a>(
    tree: &'a [Directive],
    variables: &[String],
    from_include: &dyn Fn(&Directive) -> bool,
) -> Option<Override<'a>> {
    let sets = |d: &Directive| {
        d.name() == "set"
            && !from_include(d)
            && d.args().first().is_some_and(|v| variables.contains(v))
    };
    let first_set_in = |block: &'a [Directive]| -> Option<&'a Directive> {
        let mut found = None;
        nginx_conf::walk(block, &mut |d| {
            if found.is_none() && sets(d) {
                found = Some(d);
            }
        });
        found
    };
    let at = tree
        .iter()
        .position(|d| from_include(d) && d.name() == "set");
    if let Some(at) = at {
        for (j, d) in tree.iter().enumerate() {
            let after = j > at;
            if after && sets(d) {
                return Some(Override {
                    directive: d,
                    how: "comes after the include of".into(),
                });
            }
            let Some(block) = &d.block else { continue };
            if !(after || d.name() == "location") {
                continue;
            }
            if let Some(directive) = first_set_in(block) {
                let how = match d.name() {
                    "location" => format!(
                        "is inside `{}`, whose rewrites run after those of the block with the \
                         include of",
                        d.words.join(" ")
                    ),
                    _ => format!("is inside `{}`, after the include of", d.words.join(" ")),
                };
                return Some(Override { directive, how });
            }
        }
    }
    tree.iter()
        .filter_map(|d| d.block.as_deref())
        .find_map(|block| overridden(block, variables, from_include))
}

/// The value of `flag` in an nginx command line (`-c FILE` or `-cFILE`).
fn option<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a.starts_with(flag))?;
    match args[at].strip_prefix(flag) {
        Some("") => args.get(at + 1).map(String::as_str),
        value => value,
    }
}

/// nginx's prefix: `-p`, else the build's `--prefix`, else nginx's default; a relative one
/// is taken from `cwd`.
fn prefix_of(given: Option<&str>, dump: &NginxDump, cwd: Option<PathBuf>) -> PathBuf {
    let prefix = PathBuf::from(given.or(dump.configure("prefix")).unwrap_or(DEFAULT_PREFIX));
    match cwd {
        Some(cwd) if prefix.is_relative() => cwd.join(prefix),
        _ => prefix,
    }
}

/// Where the tested configuration's master writes its pid: its last main-level `pid`, else
/// one in the test's `-g`, else the build's `--pid-path`, else `logs/nginx.pid` (relative
/// paths under the prefix).
fn pid_path(tree: &[Directive], test_args: &[String], dump: &NginxDump, prefix: &Path) -> PathBuf {
    let last_pid = |directives: &[Directive]| {
        directives
            .iter()
            .rev()
            .find(|d| d.name() == "pid" && d.block.is_none())
            .and_then(|d| d.args().first().cloned())
    };
    let path = last_pid(tree)
        .or_else(|| option(test_args, "-g").and_then(|g| last_pid(&nginx_conf::parse(g))))
        .or_else(|| dump.configure("pid-path").map(str::to_string))
        .unwrap_or_else(|| "logs/nginx.pid".into());
    prefix.join(path)
}

/// The configuration file the master `pid` runs, from its title (`nginx: master process
/// /usr/sbin/nginx -c /etc/nginx/nginx.conf ...`): its `-c`, else the build's
/// `--conf-path` (the tested binary's, the only build at hand), under its `-p`. `None` when
/// the title is not that of an nginx master.
fn master_config(pid: i32, dump: &NginxDump) -> Option<PathBuf> {
    let title = procfs::cmdline(pid).join(" ");
    let argv: Vec<String> = title
        .strip_prefix("nginx: master process ")?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let args = argv.get(1..).unwrap_or(&[]);
    let prefix = prefix_of(option(args, "-p"), dump, procfs::cwd(pid));
    let conf = option(args, "-c")
        .or(dump.configure("conf-path"))
        .unwrap_or("conf/nginx.conf");
    Some(prefix.join(conf))
}

/// True when `a` and `b` name the same file: both resolved (links, `..`), or, where the file
/// does not exist, its directory resolved.
fn same_file(a: &Path, b: &Path) -> bool {
    let resolved = |p: &Path| -> PathBuf {
        if let Ok(real) = p.canonicalize() {
            return real;
        }
        match (p.parent().map(Path::canonicalize), p.file_name()) {
            (Some(Ok(dir)), Some(name)) => dir.join(name),
            _ => p.to_path_buf(),
        }
    };
    resolved(a) == resolved(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(text: &str) -> Vec<Directive> {
        nginx_conf::parse(text)
    }

    /// The override in `server { ... }` for `$service_url`, where `inc;` stands for the
    /// include's own `set` (its directives come from the file `inc`).
    fn found(body: &str) -> Option<(String, String)> {
        let text = format!("server {{ {body} }}");
        let mut directives = tree(&text);
        let inc: std::rc::Rc<Path> = std::rc::Rc::from(Path::new("inc"));
        fn mark(ds: &mut [Directive], inc: &std::rc::Rc<Path>) {
            for d in ds {
                if d.words.get(1).is_some_and(|v| v == "$service_url")
                    && d.words.get(2).is_some_and(|v| v == "INCLUDE")
                {
                    d.file = inc.clone();
                }
                if let Some(b) = &mut d.block {
                    mark(b, inc);
                }
            }
        }
        mark(&mut directives, &inc);
        let from_include = |d: &Directive| &*d.file == Path::new("inc");
        overridden(&directives, &["$service_url".into()], &from_include)
            .map(|o| (o.directive.words.join(" "), o.how))
    }

    #[test]
    fn a_set_nginx_runs_after_the_include_is_found() {
        let inc = "set $service_url INCLUDE;";
        assert_eq!(found(&format!("set $service_url http://x:1; {inc}")), None);
        let later = found(&format!("{inc} set $service_url http://x:9;")).unwrap();
        assert_eq!(later.0, "set $service_url http://x:9");
        assert!(later.1.starts_with("comes after"), "{}", later.1);
        let located = found(&format!(
            "location / {{ set $service_url http://x:9; proxy_pass $service_url; }} {inc}"
        ))
        .unwrap();
        assert!(
            located.1.contains("is inside `location /`"),
            "{}",
            located.1
        );
        let in_if = found(&format!("{inc} if ($a) {{ set $service_url http://x:9; }}")).unwrap();
        assert!(in_if.1.contains("`if ($a)`"), "{}", in_if.1);
        assert_eq!(
            found(&format!("if ($a) {{ set $service_url http://x:9; }} {inc}")),
            None,
            "a server-level `if` before the include runs before it"
        );
        assert_eq!(
            found(&format!("{inc} set $other 1; location / {{ set $x 2; }}")),
            None
        );
    }

    #[test]
    fn command_line_options() {
        let args: Vec<String> = ["-p", "/x/", "-c/x/n.conf", "-t"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(option(&args, "-p"), Some("/x/"));
        assert_eq!(option(&args, "-c"), Some("/x/n.conf"));
        assert_eq!(option(&args, "-g"), None);
    }

    #[test]
    fn paths_compare_through_links() {
        let dir = std::env::temp_dir().join(format!("portswap-same-file-{}", std::process::id()));
        let real = dir.join("real");
        std::fs::create_dir_all(&real).unwrap();
        let _ = std::fs::remove_file(dir.join("link"));
        std::os::unix::fs::symlink(&real, dir.join("link")).unwrap();
        let linked = same_file(&dir.join("link/nginx.pid"), &real.join("nginx.pid"));
        let other = same_file(&real.join("a.pid"), &real.join("b.pid"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(linked);
        assert!(!other);
    }
}
