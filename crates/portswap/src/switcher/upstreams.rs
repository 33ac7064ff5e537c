//! Reading nginx's own configuration (`nginx -T`) for upstream connection pools: a pool that
//! keeps idle connections to the service port would keep using the old slot after an nftables
//! switch, since a NAT rule only decides where *new* connections go.

use super::{nginx_conf, nginx_dump};
use crate::error::{NginxError, Result};

/// An `upstream {}` block in nginx's configuration (`nginx -T`) that lists the service port
/// and keeps idle connections to it: kept connections would stay on the old slot after a
/// switch. A block with `keepalive N` (N > 0) does; one without the directive does from nginx
/// 1.29.7 on (`pools_by_default`), where `keepalive 0;` turns it off.
pub fn pooled_upstream(config: &str, service_port: u16, pools_by_default: bool) -> Option<String> {
    let targets = [
        format!("127.0.0.1:{service_port}"),
        format!("localhost:{service_port}"),
    ];
    let mut found = None;
    nginx_conf::walk(&nginx_conf::parse(config), &mut |d| {
        let Some(block) = d.block.as_ref().filter(|_| d.name() == "upstream") else {
            return;
        };
        let lists = block
            .iter()
            .any(|s| s.name() == "server" && s.args().first().is_some_and(|a| targets.contains(a)));
        let keepalive = block
            .iter()
            .rev()
            .find(|s| s.name() == "keepalive")
            .and_then(|s| s.args().first().cloned());
        let pools = match keepalive.as_deref() {
            Some(value) => value != "0",
            None => pools_by_default,
        };
        if lists && pools && found.is_none() {
            found = Some(format!(
                "upstream {} (server 127.0.0.1:{service_port}, keepalive {})",
                d.args().first().map_or("", String::as_str),
                keepalive
                    .as_deref()
                    .unwrap_or("on by default since nginx 1.29.7")
            ));
        }
    });
    found
}

/// True when nginx `version` keeps upstream connections by default (1.29.7 and later).
pub fn pools_by_default(version: Option<(u32, u32, u32)>) -> bool {
    version.is_some_and(|v| v >= (1, 29, 7))
}

/// Reads nginx's whole configuration ([`nginx_dump`], as the config test command runs nginx)
/// and refuses an upstream pool on the service port. When it cannot be read, says so and goes
/// on.
pub fn refuse_pool(test_command: &[String], service_port: u16) -> Result<()> {
    if !test_command.iter().any(|a| a == "-t") {
        log::debug!("nginx.test_command has no -t: upstream keep-alive not checked");
        return Ok(());
    }
    let dump = match nginx_dump::read(test_command) {
        Ok(dump) => dump,
        Err(why) => {
            log::warn!(
                "could not read nginx's configuration ({why}): make sure no upstream block \
                 with keepalive points at port {service_port}"
            );
            return Ok(());
        }
    };
    let pool = pooled_upstream(dump.config(), service_port, false).or_else(|| {
        // A block without `keepalive` pools only from nginx 1.29.7 on.
        let blocks = pooled_upstream(dump.config(), service_port, true)?;
        pools_by_default(dump.version()).then_some(blocks)
    });
    match pool {
        Some(pool) => Err(NginxError::UpstreamPool {
            pool: pool.to_string(),
        }
        .into()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_upstream_pools_on_the_service_port_only() {
        assert!(!pools_by_default(Some((1, 22, 1))));
        assert!(!pools_by_default(Some((1, 29, 6))));
        assert!(pools_by_default(Some((1, 29, 7))));
        assert!(pools_by_default(Some((1, 30, 4))));
        assert!(!pools_by_default(None));
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
        // A `#` inside quotes is no comment: it hides nothing after it (issue 15, item 9).
        let quoted_hash = "server { return 200 \"#\"; }\nupstream app { server 127.0.0.1:8080; \
                           keepalive 4; }";
        assert!(pooled_upstream(quoted_hash, 8080, false)
            .unwrap()
            .contains("keepalive 4"));
        let quoted_server = "upstream app { server \"127.0.0.1:8080\"; keepalive '8'; }";
        assert!(pooled_upstream(quoted_server, 8080, false).is_some());
    }
}
