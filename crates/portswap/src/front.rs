//! The front-door check after a switch: one health request through nginx's own listener
//! (`nginx.front`, with `nginx.front_host` as its Host header), the way the site's users
//! reach it. It must pass the health rules and answer as the new version does when asked
//! directly. No check of the include or of nginx's loaded configuration sees which server
//! block nginx picks for a request: the distribution's default site on port 80 answers
//! "Welcome to nginx!" while the include is right.

use crate::config::{Front, Health};
use crate::error::FrontProblem;
use crate::health;
use crate::probe_http::{self, Answer};

/// The most requests one check makes, each within the probe limit (`health.timeout`'s, at
/// most 5 s): the new version, the front, the new version again, the previous version.
pub const PROBES: u32 = 4;

/// Asks the front and `target` directly (twice: a body that changes between requests, such as
/// one with a timestamp, is compared by status only) and, when the front's body is not the
/// target's, `previous`, to say whether nginx still sends requests there. Returns what was
/// compared, for the log.
pub fn check(
    front: &Front,
    rules: &Health,
    target: u16,
    previous: Option<u16>,
) -> Result<String, FrontProblem> {
    let limit = health::probe_limit(rules.timeout);
    let direct = |port: u16| probe_http::get(port, &rules.path, limit);
    let first = direct(target).map_err(|source| FrontProblem::SlotSilent {
        port: target,
        source,
    })?;
    let url = probe_http::url_at(front.addr, &rules.path);
    let through = probe_http::get_at(front.addr, front.host.as_deref(), &rules.path, limit)
        .and_then(|answer| health::judge(&answer, &url, rules).map(|_| answer))
        .map_err(FrontProblem::Unhealthy)?;
    if through.status != first.status {
        return Err(FrontProblem::OtherStatus {
            through: through.status,
            port: target,
            direct: first.status,
        });
    }
    let stable = direct(target).is_ok_and(|again| same(&again, &first));
    if stable && through.body != first.body {
        let like = previous
            .filter(|p| *p != target)
            .filter(|p| direct(*p).is_ok_and(|old| same(&old, &through)));
        return Err(FrontProblem::OtherBody { port: target, like });
    }
    Ok(format!(
        "front door {front} answers {} as port {target} does{}",
        through.status,
        match stable {
            true => ", with its body",
            false => " (its body changes between requests: compared by status)",
        }
    ))
}

fn same(a: &Answer, b: &Answer) -> bool {
    a.status == b.status && a.body == b.body
}
