//! Reading nginx's own configuration (`nginx -T`) for upstream connection pools: a pool that
//! keeps idle connections to the service port would keep using the old slot after an nftables
//! switch, since a NAT rule only decides where *new* connections go.

use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::process::resolve_program;

/// An `upstream {}` block in nginx's configuration (`nginx -T`) that lists the service port
/// and keeps idle connections to it: kept connections would stay on the old slot after a
/// switch. A block with `keepalive N` (N > 0) does; one without the directive does from nginx
/// 1.29.7 on (`pools_by_default`), where `keepalive 0;` turns it off.
pub fn pooled_upstream(config: &str, service_port: u16, pools_by_default: bool) -> Option<String> {
    let text: String = config
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let targets = [
        format!("127.0.0.1:{service_port}"),
        format!("localhost:{service_port}"),
    ];
    let mut depth = 0usize;
    let mut statement = String::new();
    // (name, depth, lists the service port, keepalive value)
    let mut upstream: Option<(String, usize, bool, Option<String>)> = None;
    for c in text.chars() {
        match c {
            '{' => {
                depth += 1;
                let words: Vec<&str> = statement.split_whitespace().collect();
                if upstream.is_none() && words.first() == Some(&"upstream") {
                    let name = words.get(1).unwrap_or(&"").to_string();
                    upstream = Some((name, depth, false, None));
                }
                statement.clear();
            }
            ';' => {
                let words: Vec<&str> = statement.split_whitespace().collect();
                if let Some((_, at, lists, keepalive)) = upstream.as_mut() {
                    if *at == depth {
                        match words.as_slice() {
                            ["server", addr, ..] if targets.iter().any(|t| t == addr) => {
                                *lists = true
                            }
                            ["keepalive", value, ..] => *keepalive = Some(value.to_string()),
                            _ => {}
                        }
                    }
                }
                statement.clear();
            }
            '}' => {
                if let Some((name, at, lists, keepalive)) = upstream.take() {
                    let pools = match keepalive.as_deref() {
                        Some(value) => value != "0",
                        None => pools_by_default,
                    };
                    if at == depth && lists && pools {
                        return Some(format!(
                            "upstream {name} (server 127.0.0.1:{service_port}, keepalive {})",
                            keepalive
                                .as_deref()
                                .unwrap_or("on by default since nginx 1.29.7")
                        ));
                    }
                    if at != depth {
                        upstream = Some((name, at, lists, keepalive));
                    }
                }
                depth = depth.saturating_sub(1);
                statement.clear();
            }
            _ => statement.push(c),
        }
    }
    None
}

/// True when `nginx -v` output names a version that keeps upstream connections by default
/// (1.29.7 and later).
pub fn pools_by_default(version_output: &str) -> bool {
    let Some(at) = version_output.find("nginx/") else {
        return false;
    };
    let numbers: Vec<u32> = version_output[at + 6..]
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()
        .unwrap_or("")
        .split('.')
        .filter_map(|n| n.parse().ok())
        .collect();
    numbers.as_slice() >= [1, 29, 7].as_slice()
}

/// Reads nginx's whole configuration (the config test command with `-T`) and refuses an
/// upstream pool on the service port. When it cannot be read, says so and goes on.
pub fn refuse_pool(test_command: &[String], service_port: u16) -> Result<()> {
    if !test_command.iter().any(|a| a == "-t") {
        log::debug!("nginx.test_command has no -t: upstream keep-alive not checked");
        return Ok(());
    }
    let argv: Vec<&str> = test_command
        .iter()
        .filter(|a| *a != "-q")
        .map(|a| if a == "-t" { "-T" } else { a.as_str() })
        .collect();
    let run = |argv: &[&str]| {
        resolve_program(argv[0]).and_then(|program| {
            Command::new(program)
                .args(&argv[1..])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| Error::Failed(e.to_string()))
        })
    };
    match run(&argv) {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let pool = pooled_upstream(&text, service_port, false).or_else(|| {
                // A block without `keepalive` pools only from nginx 1.29.7 on: ask `-v`.
                let blocks = pooled_upstream(&text, service_port, true)?;
                let version: Vec<&str> = argv
                    .iter()
                    .map(|a| if *a == "-T" { "-v" } else { a })
                    .collect();
                let out = run(&version).ok()?;
                pools_by_default(&String::from_utf8_lossy(&out.stderr)).then_some(blocks)
            });
            match pool {
                Some(pool) => Err(Error::Failed(format!(
                    "nginx keeps upstream connections to the service port: {pool}; they would \
                     stay on the old slot after a switch; fix: `keepalive 0;` in that block, \
                     or `proxy_pass $service_url` without an upstream block; nothing changed"
                ))),
                None => Ok(()),
            }
        }
        other => {
            let why = match other {
                Ok(out) => out.status.to_string(),
                Err(e) => e.to_string(),
            };
            log::warn!(
                "could not read nginx's configuration (`{}`: {why}): make sure no upstream \
                 block with keepalive points at port {}",
                argv.join(" "),
                service_port
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_upstream_pools_on_the_service_port_only() {
        assert!(!pools_by_default("nginx version: nginx/1.22.1\n"));
        assert!(!pools_by_default("nginx version: nginx/1.29.6"));
        assert!(pools_by_default("nginx version: nginx/1.29.7"));
        assert!(pools_by_default("nginx version: nginx/1.30.4 (custom)\n"));
        assert!(!pools_by_default("garbage"));
        let default_off = "upstream app { server 127.0.0.1:8080; }";
        assert_eq!(pooled_upstream(default_off, 8080, false), None);
        let plain = "http { server { location / { proxy_pass $service_url; } } }";
        assert_eq!(pooled_upstream(plain, 8080, true), None);
        let pooled = "# configuration file /etc/nginx/nginx.conf:\nhttp {\n upstream app {\n  server 127.0.0.1:8080 max_fails=0; # the service\n  keepalive 16;\n }\n}";
        let found = pooled_upstream(pooled, 8080, false).unwrap();
        assert!(
            found.contains("upstream app") && found.contains("keepalive 16"),
            "{found}"
        );
        assert_eq!(pooled_upstream(pooled, 9090, true), None, "another port");
        let default_on = "upstream app { server localhost:8080; }";
        assert!(pooled_upstream(default_on, 8080, true)
            .unwrap()
            .contains("1.29.7"));
        let off = "upstream app { server 127.0.0.1:8080; keepalive 0; }";
        assert_eq!(pooled_upstream(off, 8080, true), None);
        let nested_other =
            "upstream a { server 10.0.0.1:80; } upstream b { server 127.0.0.1:8080; keepalive 2; }";
        assert!(pooled_upstream(nested_other, 8080, false)
            .unwrap()
            .contains("upstream b"));
    }
}
