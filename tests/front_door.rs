//! The front-door check (`nginx.front`): after a switch, a health request through nginx's own
//! listener must answer as the new version does. A distribution's stock default site that
//! nginx picks for requests by IP (the site's block is not `default_server`) fails the
//! switch, which goes back to the version that served before. Real nginx, real apps.

mod support;

use std::fs;
use std::io::{BufReader, Write};
use std::net::TcpStream;

use portswap_testkit::net::read_response;
use support::{Outcome, Settings, Site};

/// The version that answers `/` through nginx on `port` for Host `host`.
fn version_through(port: u16, host: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let response = read_response(&mut BufReader::new(stream)).ok()?;
    response.header("X-App-Version").map(str::to_string)
}

/// nginx.conf with a stock-like default site ahead of the site's server block (nginx picks
/// the first block of a listen address when none is `default_server`), answering with
/// `location` in it; the site's block gets `server_name portswap.test`.
fn with_stock_default_site(site: &Site, location: &str) {
    let conf = site.nginx.conf_path();
    let text = fs::read_to_string(conf).unwrap();
    let port = site.nginx.port();
    let html = site.root().join("html");
    fs::create_dir_all(&html).unwrap();
    fs::write(html.join("index.html"), "<h1>Welcome to nginx!</h1>\n").unwrap();
    let stock = format!(
        "    server {{\n        listen 127.0.0.1:{port};\n        root {};\n        \
         index index.html;\n        server_name _;\n        {location}\n    }}\n\n    server {{\n",
        html.display()
    );
    let changed = text.replacen("    server {\n", &stock, 1).replacen(
        &format!("listen 127.0.0.1:{port};\n\n"),
        &format!("listen 127.0.0.1:{port};\n        server_name portswap.test;\n\n"),
        2,
    );
    assert_ne!(changed, text);
    fs::write(conf, changed).unwrap();
    site.nginx
        .reload_and_wait(std::time::Duration::from_secs(10))
        .unwrap();
}

fn set_front(site: &Site, host: Option<&str>) {
    site.set_key(
        "nginx",
        "front",
        &format!("http://127.0.0.1:{}", site.nginx.port()),
    );
    if let Some(host) = host {
        site.set_key("nginx", "front_host", host);
    }
}

/// The switch's target and the port that served before, after deployment `id` ran up to
/// its health check.
fn up_to_switch(site: &Site, id: &str) -> (u16, Option<u16>) {
    let live = site.included_port();
    site.run_until(id, "health");
    let target = site.ports.into_iter().find(|p| Some(*p) != live).unwrap();
    (target, live)
}

/// d-1 live, then a stock default site answering with `location`, `nginx.front` set without
/// a Host header, and d-2 up to its switch, which must fail (exit 1) on the front door.
/// Returns the site, d-2's port, d-1's port and the switch's outcome.
fn front_fails_for_d2(location: &str) -> (Site, u16, u16, Outcome) {
    let site = Site::new();
    site.deploy_ok("d-1");
    with_stock_default_site(&site, location);
    set_front(&site, None);
    let (target, live) = up_to_switch(&site, "d-2");
    let out = site.hook("switch", &[], Some("d-2")).fails(1, "front door");
    (site, target, live.expect("d-1 is live"), out)
}

#[test]
fn a_stock_default_site_fails_the_switch_and_nginx_goes_back() {
    let (site, target, live, out) = front_fails_for_d2("location / { try_files $uri $uri/ =404; }");
    let verdict = out.last_line();
    for needle in [
        &format!("does not reach port {target}"),
        "answered 404",
        &format!("nginx is back on port {live}"),
        "default_server",
    ] {
        assert!(verdict.contains(needle), "lacks `{needle}`: {verdict}");
    }
    assert_eq!(
        site.included_port(),
        Some(live),
        "the include names the old port"
    );
    assert_eq!(site.version_on(live).as_deref(), Some("d-1"));
    // Nothing is left pending: the next deployment goes on, onto the same idle slot.
    assert!(!site.state().join("switch-intent.yml").exists());
    site.hook("stop", &[], Some("d-3")).ok();
    assert_eq!(site.version_on(live).as_deref(), Some("d-1"));
}

#[test]
fn a_default_site_that_answers_200_is_caught_by_its_body() {
    let (site, target, live, out) =
        front_fails_for_d2("location / { return 200 \"Welcome to nginx!\"; }");
    assert!(
        out.last_line()
            .contains(&format!("its body is not port {target}'s")),
        "{}",
        out.last_line()
    );
    assert_eq!(site.included_port(), Some(live));
    // --force skips the target's health check, and so the front door's, and says so.
    let forced = site.hook("switch", &["--force"], Some("d-2")).ok();
    assert!(
        forced
            .last_line()
            .ends_with("front door not checked (--force)"),
        "{}",
        forced.last_line()
    );
    assert_eq!(site.included_port(), Some(target));
}

#[test]
fn the_first_switch_stays_when_nothing_served_before_and_a_rerun_checks_again() {
    let site = Site::new();
    with_stock_default_site(&site, "location / { try_files $uri $uri/ =404; }");
    set_front(&site, None);
    let (target, _) = up_to_switch(&site, "d-1");
    let out = site.hook("switch", &[], Some("d-1")).fails(1, "front door");
    assert!(
        out.last_line().contains(&format!(
            "nothing was live before, so nginx stays on port {target}"
        )),
        "{}",
        out.last_line()
    );
    assert_eq!(site.included_port(), Some(target));
    // The re-run finds the switch done, but does not say OK while the front is wrong.
    let again = site.hook("switch", &[], Some("d-1")).fails(1, "front door");
    assert!(again
        .last_line()
        .contains("had completed earlier; nothing changed"));
}

#[test]
fn the_sites_name_or_default_server_passes_and_the_verdict_says_so() {
    let site = Site::new();
    site.deploy_ok("d-1");
    // No front configured: the verdict says it was not checked.
    let (_, _) = up_to_switch(&site, "d-2");
    let out = site.hook("switch", &[], Some("d-2")).ok();
    assert!(
        out.last_line()
            .contains("front door not checked (set nginx.front)"),
        "{}",
        out.last_line()
    );
    // The stock site still catches requests by IP, but the front asks with the site's name.
    with_stock_default_site(&site, "location / { try_files $uri $uri/ =404; }");
    set_front(&site, Some("portswap.test"));
    let (target, _) = up_to_switch(&site, "d-3");
    let out = site.hook("switch", &[], Some("d-3")).ok();
    assert!(
        out.last_line().contains(&format!(
            "front door 127.0.0.1:{} reaches it",
            site.nginx.port()
        )),
        "{}",
        out.last_line()
    );
    assert_eq!(site.included_port(), Some(target));
    assert_eq!(
        version_through(site.nginx.port(), "portswap.test").as_deref(),
        Some("d-3")
    );
}

#[test]
fn a_block_that_still_proxies_to_the_old_port_is_named_by_its_body() {
    // Apps whose health body tells versions apart (`UP <version>`): a hand-made block that
    // nginx picks for the front and that proxies to the old port is caught, and the verdict
    // says that nginx still sends requests to the old port.
    let site = Site::with(Settings {
        app_args: vec!["--health-body".into(), "version".into()],
        ..Settings::default()
    });
    site.deploy_ok("d-1");
    let old = site.included_port().unwrap();
    with_stock_default_site(
        &site,
        &format!("location / {{ proxy_pass http://127.0.0.1:{old}; }}"),
    );
    set_front(&site, None);
    let (target, _) = up_to_switch(&site, "d-2");
    let out = site.hook("switch", &[], Some("d-2")).fails(1, "front door");
    let verdict = out.last_line();
    for needle in [
        format!("its body is not port {target}'s but port {old}'s: nginx still sends it there"),
        format!("nginx is back on port {old}"),
    ] {
        assert!(verdict.contains(&needle), "lacks `{needle}`: {verdict}");
    }
    assert_eq!(site.included_port(), Some(old));
}

#[test]
fn a_failed_way_back_leaves_nginx_on_the_new_version_and_says_so() {
    // The front fails and the version that served before is gone meanwhile (it crashed):
    // nothing to go back to that is ours; nginx stays on the new version, which passed its
    // own health check, and the verdict says why the way back failed.
    let site = Site::new();
    site.deploy_ok("d-1");
    let old = site.included_port().unwrap();
    with_stock_default_site(&site, "location / { try_files $uri $uri/ =404; }");
    set_front(&site, None);
    let (target, _) = up_to_switch(&site, "d-2");
    let pid = site.recorded_pid(old).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    support::wait(std::time::Duration::from_secs(5), "d-1 to be gone", || {
        site.version_on(old).is_none()
    });
    let out = site.hook("switch", &[], Some("d-2")).fails(1, "front door");
    let verdict = out.last_line();
    for needle in [
        format!("does not reach port {target}"),
        format!("going back to port {old} did not happen"),
        format!("nginx stays on port {target}"),
    ] {
        assert!(verdict.contains(&needle), "lacks `{needle}`: {verdict}");
    }
    assert_eq!(site.included_port(), Some(target));
    assert!(!site.state().join("switch-intent.yml").exists());
}

#[test]
fn front_keys_are_checked_at_load() {
    let site = Site::new();
    // Accepted: an IP alone (port 80), a trailing slash, IPv6 loopback.
    for value in [
        "http://127.0.0.1",
        "http://127.0.0.2:8080/",
        "http://[::1]",
        "http://[::1]:81",
    ] {
        site.set_key("nginx", "front", value);
        site.hook("switch", &["--status"], None).ok();
    }
    for (key, value, needle) in [
        ("front", "https://127.0.0.1:443", "is not an http:// URL"),
        ("front", "http://10.0.0.5:80", "is not a loopback address"),
        (
            "front",
            "http://localhost:80",
            "is not an IP address and port",
        ),
        (
            "front",
            "http://127.0.0.1:80/health",
            "is not an IP address and port",
        ),
        ("front", "http://127.0.0.1:0", "has port 0"),
        ("front_host", "bad host", "nginx.front_host"),
    ] {
        site.set_key("nginx", "front", "http://127.0.0.1:80");
        site.set_key("nginx", key, value);
        site.hook("switch", &["--status"], None).fails(2, needle);
    }
    // A Host header without a front to send it to.
    site.edit_config(|map| {
        let nginx = map.get_mut("nginx").unwrap().as_mapping_mut().unwrap();
        nginx.remove("front");
        nginx.insert("front_host".into(), "example.com".into());
    });
    site.hook("switch", &["--status"], None)
        .fails(2, "nginx.front_host: needs nginx.front");
}

/// The site's nginx.conf with its server block replaced by README step 1's
/// (`examples/spring-boot/nginx-portswap.conf`, on the sandbox's port and include), after a
/// distribution's stock server block `stock` (`{port}` and `{html}` in it).
fn step_one_conf(site: &Site, stock: &str) -> String {
    let port = site.nginx.port();
    let example = fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/spring-boot/nginx-portswap.conf"),
    )
    .unwrap();
    let include = site.include().display().to_string();
    let block = example
        .replace(
            "listen 80 default_server;",
            &format!("listen 127.0.0.1:{port} default_server;"),
        )
        .replace("/etc/nginx/conf.d/service-url.inc", &include);
    assert!(block.contains(&format!("127.0.0.1:{port} default_server")));
    let html = site.root().join("html");
    fs::create_dir_all(&html).unwrap();
    fs::write(html.join("index.html"), "<h1>Welcome to nginx!</h1>\n").unwrap();
    let stock = stock
        .replace("{port}", &port.to_string())
        .replace("{html}", &html.display().to_string());
    let text = fs::read_to_string(site.nginx.conf_path()).unwrap();
    let head = &text[..text.find("server {").unwrap()];
    format!("{head}{stock}\n{block}\n}}\n")
}

#[test]
fn readme_step_one_wins_port_80_over_a_stock_site_or_fails_loudly() {
    let site = Site::new();
    // Amazon Linux 2023: a server block on port 80 in nginx.conf itself, no default_server.
    let conf = step_one_conf(
        &site,
        "server { listen 127.0.0.1:{port}; server_name _; root {html}; }",
    );
    fs::write(site.nginx.conf_path(), conf).unwrap();
    // Step 1's include, written once, names the first slot.
    portswap_testkit::nginx::write_include(&site.include(), site.ports[0]);
    site.nginx
        .reload_and_wait(std::time::Duration::from_secs(10))
        .unwrap();
    // Step 1's check: 502 until the first deployment, not the stock page's 200.
    let before = portswap_testkit::net::http_get(site.nginx.port(), "/").unwrap();
    assert_eq!(before.status, 502);
    set_front(&site, None);
    site.run_until("d-1", "health");
    let out = site.hook("switch", &[], Some("d-1")).ok();
    assert!(
        out.last_line().contains("reaches it"),
        "{}",
        out.last_line()
    );
    assert_eq!(site.live_version().as_deref(), Some("d-1"));

    // Debian/Ubuntu's stock site is a default_server too: nginx -t refuses the pair (the
    // README says to remove it), instead of a silent "Welcome to nginx!".
    let conf = step_one_conf(
        &site,
        "server { listen 127.0.0.1:{port} default_server; root {html}; }",
    );
    let debian = site.root().join("debian.conf");
    fs::write(&debian, conf).unwrap();
    let mut test = site.nginx.test_command();
    let at = test.iter().position(|a| a == "-c").unwrap() + 1;
    test[at] = debian.display().to_string();
    let checked = std::process::Command::new(&test[0])
        .args(&test[1..])
        .output()
        .unwrap();
    assert!(!checked.status.success());
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(stderr.contains("duplicate default server"), "{stderr}");
}
