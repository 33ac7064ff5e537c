//! Chores for portswap.
//!
//! - `cargo run -p xtask -- bundle [--out DIR] [--config PATH] [--appspec PATH] [--no-build] ARTIFACT...`
//!   builds the static release hooks and packs a CodeDeploy revision (`.zip` and `.tgz`).
//! - `cargo run -p xtask -- demo` deploys a fixture app three times through the real hooks,
//!   a CodeDeploy agent emulation and a sandboxed nginx, and reports what a client saw; then,
//!   where systemd can boot in private namespaces, the app under systemd: a crash of the live
//!   app and a reboot, with the time until the site serves again.

mod bundle;
mod checks;
mod demo;
mod demo_systemd;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage:
  cargo run -p xtask -- bundle [--out DIR] [--config PATH] [--appspec PATH] [--no-build] ARTIFACT...
      Builds the static release hooks and packs DIR/portswap-revision.{zip,tgz} (default DIR:
      target/revision) from appspec.yml, hooks/portswap.yml and the artifacts.
  cargo run -p xtask -- demo [--debug]
      Deploys fixture app v1, v2, v3 through the hooks and an agent emulation behind a
      sandboxed nginx while a client polls it; prints what happened. Leaves nothing running.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bundle") => run_bundle(&args[1..]),
        Some("demo") => run_demo(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(format!("unknown or missing command\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run_bundle(args: &[String]) -> Result<(), String> {
    let root = bundle::workspace_root();
    let mut out = bundle::target_dir().join("revision");
    let mut inputs = bundle::Inputs {
        appspec: root.join("appspec.yml"),
        config: root.join("hooks/portswap.yml"),
        binaries: PathBuf::new(),
        artifacts: Vec::new(),
    };
    let mut build = true;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .map(PathBuf::from)
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--out" => out = value()?,
            "--config" => inputs.config = value()?,
            "--appspec" => inputs.appspec = value()?,
            "--no-build" => build = false,
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}\n{USAGE}")),
            artifact => inputs.artifacts.push(PathBuf::from(artifact)),
        }
    }
    if inputs.artifacts.is_empty() {
        return Err(format!(
            "no artifact given (e.g. build/libs/app.jar)\n{USAGE}"
        ));
    }
    inputs.binaries = if build {
        bundle::build_release_hooks()?
    } else {
        bundle::target_dir().join(bundle::TRIPLE).join("release")
    };
    let made = bundle::bundle(&inputs, &out).map_err(|e| format!("refusing to pack: {e}"))?;
    println!("revision: {}", made.dir.display());
    println!("packed:   {}", made.zip.display());
    println!("packed:   {}", made.tgz.display());
    Ok(())
}

fn run_demo(args: &[String]) -> Result<(), String> {
    let mut release = true;
    for arg in args {
        match arg.as_str() {
            "--debug" => release = false,
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    demo::run(release)?;
    demo_systemd::run()
}
