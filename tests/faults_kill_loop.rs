//! `switch` killed with SIGKILL at a random moment, at least 500 times against one sandbox:
//! afterwards the include is always one of the two complete renders, `nginx -t` passes, at
//! most one temp file (a killed writer's) is left and the next write removes it, and a
//! switch run to completion leaves nginx consistent with the include. Then, as CodeDeploy
//! re-runs a deployment: whenever a kill left nginx and the include disagreeing, `switch`
//! re-run with the same DEPLOYMENT_ID makes nginx serve what the include names. Variants: a
//! re-run whose config test fails, and the first switch from reload mode into nftables mode.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portswap_testkit::bins;
use support::{Rng, Settings, Site};

const ITERATIONS: usize = 500;

#[test]
fn switch_killed_at_random_moments_never_leaves_a_broken_include() {
    let site = Site::new();
    let [a, b] = site.ports;
    site.deploy_ok("d-1");
    site.run_until("d-2", "health");
    let renders = [a, b].map(|p| format!("set $service_url http://127.0.0.1:{p};\n"));
    let test_command = site.nginx.test_command();
    let switch = bins::bin("switch");
    let mut rng = Rng::from_clock();
    let seed = rng.seed();
    let started = Instant::now();
    let (mut killed, mut completed) = (0, 0);
    let mut killed_pids = std::collections::HashSet::new();
    let mut previous = site.include_text().unwrap();
    let mut flips = 0;
    for i in 0..ITERATIONS {
        let mut child = Command::new(&switch)
            .current_dir("/")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("PORTSWAP_CONFIG", site.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        // The fault itself: a kill after a random delay (not a synchronisation).
        // Mostly within the first 20 ms (load, probe, write, config test, SIGHUP); every tenth
        // run up to 200 ms, into the wait for the old workers and past the end.
        let limit = if i % 10 == 9 { 200_000 } else { 20_000 };
        std::thread::sleep(Duration::from_micros(rng.below(limit)));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.code().is_some() {
            assert_eq!(
                status.code(),
                Some(0),
                "iteration {i} (seed {seed}): switch failed on its own"
            );
            completed += 1;
        } else {
            killed += 1;
            killed_pids.insert(pid);
        }
        let include = site.include_text().unwrap_or_default();
        assert!(
            renders.contains(&include),
            "iteration {i} (seed {seed}): include is {include:?}"
        );
        if include != previous {
            flips += 1;
            previous = include;
        }
        let test = Command::new(&test_command[0])
            .args(&test_command[1..])
            .output()
            .unwrap();
        assert!(
            test.status.success(),
            "iteration {i} (seed {seed}): nginx -t: {}",
            String::from_utf8_lossy(&test.stderr)
        );
        let temps = site.temp_files();
        // At most one temp file per target (the include, switch.yml, ...): a killed writer's
        // temp file stays until the next run that writes the same file.
        let mut targets: Vec<String> = temps
            .iter()
            .map(|t| {
                t.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .split(".portswap-")
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect();
        targets.sort();
        let count = targets.len();
        targets.dedup();
        assert_eq!(
            targets.len(),
            count,
            "iteration {i} (seed {seed}): temp files {temps:?}"
        );
        for temp in temps {
            let name = temp.file_name().unwrap().to_string_lossy().into_owned();
            let writer: u32 = name
                .trim_end_matches(".tmp")
                .rsplit('-')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                killed_pids.contains(&writer),
                "iteration {i} (seed {seed}): {name} is not a killed writer's"
            );
        }
    }
    let took = started.elapsed();
    println!("{ITERATIONS} switches: {killed} killed, {completed} completed, include changed {flips} times, {took:?} (seed {seed})");
    assert!(flips > 0, "no run got as far as writing the include");
    assert!(
        killed >= ITERATIONS / 2,
        "most runs must be killed mid-way: {killed} of {ITERATIONS}"
    );

    // One switch run to completion: no temp file, and nginx agrees with the include.
    site.hook("switch", &[], None).ok();
    assert_eq!(site.temp_files(), Vec::<std::path::PathBuf>::new());
    let live = site.included_port().unwrap();
    let version = if live == a { "d-1" } else { "d-2" };
    for _ in 0..20 {
        assert_eq!(site.live_version().as_deref(), Some(version));
    }
    site.hook("switch", &["--status"], None).ok();

    // CodeDeploy re-runs the deployment: `switch` of d-2 killed at a random moment, and
    // whenever the kill left nginx serving another port than the include names (include
    // written, reload not sent), `switch` re-run with the same DEPLOYMENT_ID must make them
    // agree.
    let version_of = |port: u16| if port == a { "d-1" } else { "d-2" };
    let (mut disagreements, mut tries) = (0, 0);
    while disagreements < 3 && tries < 400 {
        tries += 1;
        // From d-1 live, with no switch left cut short (a run by hand completes one first).
        for _ in 0..3 {
            if site.included_port() == Some(a) && !site.state().join("switch-intent.yml").exists() {
                break;
            }
            site.hook("switch", &[], None).ok();
        }
        assert_eq!(site.included_port(), Some(a));
        let mut child = Command::new(&switch)
            .current_dir("/")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("PORTSWAP_CONFIG", site.config_path())
            .env("DEPLOYMENT_ID", "d-2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.below(30_000)));
        let _ = child.kill();
        child.wait().unwrap();
        let included = site.included_port().unwrap();
        let agree = portswap_testkit::net::wait_until(
            Duration::from_millis(300),
            "nginx to serve what the include names",
            || site.live_version().as_deref() == Some(version_of(included)),
        );
        if agree.is_ok() {
            continue;
        }
        disagreements += 1;
        let out = site.hook("switch", &[], Some("d-2")).ok();
        let included = site.included_port().unwrap();
        support::wait(
            Duration::from_secs(5),
            "nginx serves what the include names",
            || site.live_version().as_deref() == Some(version_of(included)),
        );
        for _ in 0..20 {
            assert_eq!(
                site.live_version().as_deref(),
                Some(version_of(included)),
                "(seed {seed}) after the re-run: {}",
                out.last_line()
            );
        }
    }
    println!("re-run with the same DEPLOYMENT_ID: {disagreements} disagreements repaired in {tries} tries");
    assert!(
        disagreements > 0,
        "no kill left the include and nginx disagreeing in {tries} tries (seed {seed})"
    );
}

/// `switch` for `id` started and SIGKILLed after a random delay below `limit_us` (the fault
/// itself, not a synchronisation). Whether it was killed or finished does not matter: the
/// invariants below hold either way.
fn switch_killed_after(site: &Site, id: &str, rng: &mut Rng, limit_us: u64) {
    let mut child = portswap_testkit::hooks::command("switch", &site.config_path())
        .env("DEPLOYMENT_ID", id)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_micros(rng.below(limit_us)));
    let _ = child.kill();
    child.wait().unwrap();
}

/// The version nginx serves, once it stops changing for a moment (a reload sent by a killed
/// switch may still be handing over to new workers).
fn settled_version(site: &Site) -> Option<String> {
    let mut last = site.live_version();
    let mut same = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while same < 5 && Instant::now() < deadline {
        let now = site.live_version();
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

#[test]
fn a_killed_switch_rerun_whose_config_test_fails_keeps_the_intent_unless_nginx_agrees() {
    // Issue: a resumed switch whose re-run fails its config test (an operator's half-finished
    // edit elsewhere) must never clear the intent while the include names another port than
    // nginx serves: the next `stop` would kill the app nginx serves.
    let site = Site::new();
    let [a, b] = site.ports;
    site.deploy_ok("d-1");
    site.run_until("d-2", "health");
    let mut rng = Rng::from_clock();
    let seed = rng.seed();
    let (mut kept, mut cleared) = (0, 0);
    for i in 0..30 {
        // The deployment on the idle slot (the fixture answers its deployment id).
        let idle = if site.included_port() == Some(a) {
            b
        } else {
            a
        };
        let id = site.version_on(idle).unwrap();
        switch_killed_after(&site, &id, &mut rng, 40_000);
        site.set_key(
            "nginx",
            "test_command",
            "[\"sh\", \"-c\", \"echo '[emerg] half-finished edit' >&2; exit 1\"]",
        );
        let rerun = site.hook("switch", &[], Some(&id));
        let intent = site.state().join("switch-intent.yml").exists();
        let included = site.included_port();
        assert!(
            included == Some(a) || included == Some(b),
            "iteration {i} (seed {seed}): include {:?}",
            site.include_text()
        );
        let served = settled_version(&site);
        if intent {
            kept += 1;
            // The next deployment's stop must not take either app away.
            site.hook("stop", &[], Some("d-x")).fails(4, "cut short");
            assert!(site.version_on(a).is_some() && site.version_on(b).is_some());
        } else {
            cleared += 1;
            assert_eq!(
                served,
                site.version_on(included.unwrap()),
                "iteration {i} (seed {seed}): intent cleared, include names {included:?}, \
                 nginx serves {served:?}; re-run: {}",
                rerun.last_line()
            );
        }
        // The config fixed, the same deployment's switch completes whatever was left.
        site.write_config();
        let completed = site.hook("switch", &[], Some(&id)).ok();
        assert!(!site.state().join("switch-intent.yml").exists());
        let included = site.included_port().unwrap();
        assert_eq!(
            settled_version(&site),
            site.version_on(included),
            "iteration {i} (seed {seed}): {}",
            completed.stderr
        );
    }
    println!("killed switch + failing re-run: intent kept {kept}, cleared {cleared} (seed {seed})");
}

#[test]
fn the_first_switch_into_nftables_killed_at_random_moments_is_completed_by_its_rerun() {
    // Issue: a switch killed on its way from reload mode into nftables mode leaves the include
    // naming the service port with nginx not reloaded; the re-run must decide from what nginx
    // has loaded, not from the file, and reload.
    portswap_testkit::netns::isolated("first nftables switch kill loop", || {
        let mut site = Site::with(Settings {
            switch_by: Some("nginx-reload"),
            ..Settings::default()
        });
        let service = site.service_port;
        site.deploy_ok("d-1");
        site.run_until("d-2", "health");
        let mut rng = Rng::from_clock();
        let seed = rng.seed();
        for i in 0..20 {
            site.set(|s| s.switch_by = Some("nftables"));
            let live = site.included_port().unwrap();
            let idle = if live == site.ports[0] {
                site.ports[1]
            } else {
                site.ports[0]
            };
            let id = site.version_on(idle).unwrap();
            switch_killed_after(&site, &id, &mut rng, 60_000);
            site.hook("switch", &[], Some(&id)).ok();
            assert_eq!(site.included_port(), Some(service), "seed {seed}");
            let (_, slot) = support::redirect_in(
                &portswap_testkit::netns::nft(&["-n", "list", "table", "ip", "portswap"]).unwrap(),
            )
            .unwrap();
            // nginx goes through the rule: what answers is the rule's slot.
            assert_eq!(
                settled_version(&site),
                site.version_on(slot),
                "iteration {i} (seed {seed}): nginx does not follow the rule to {slot}"
            );
            // Back to reload mode for the next round: one switch by reload.
            site.set(|s| s.switch_by = Some("nginx-reload"));
            let idle = if slot == site.ports[0] {
                site.ports[1]
            } else {
                site.ports[0]
            };
            let back = site.version_on(idle).unwrap();
            site.hook("switch", &[], Some(&back)).ok();
            let included = site.included_port().unwrap();
            assert_ne!(included, service);
            assert_eq!(settled_version(&site), site.version_on(included));
        }
    });
}
