//! Chores for developing portswap (not part of the product).
//!
//! - `cargo run -p xtask -- dist [--out DIR]` builds the release tarball
//!   `portswap-<version>-x86_64-linux.tar.gz` and its `SHA256SUMS` (default DIR: target/dist).
//! - `cargo run -p xtask -- demo` deploys a fixture app three times through the real hooks,
//!   a CodeDeploy agent emulation and a sandboxed nginx, and reports what a client saw; then,
//!   where systemd can boot in private namespaces, the app under systemd: a crash of the live
//!   app and a reboot, with the time until the site serves again.

mod build;
mod demo;
mod demo_systemd;
mod dist;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage:
  cargo run -p xtask -- dist [--out DIR]
      Builds the static release binaries and packs DIR/portswap-<version>-x86_64-linux.tar.gz
      (bin/{stop,start,health,switch,portswap-bundle}, examples/, README.md, docs/) and DIR/SHA256SUMS
      (default DIR: target/dist).
  cargo run -p xtask -- demo [--debug]
      Deploys fixture app v1, v2, v3 through the hooks and an agent emulation behind a
      sandboxed nginx while a client polls it; prints what happened. Leaves nothing running.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("dist") => run_dist(&args[1..]),
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

fn run_dist(args: &[String]) -> Result<(), String> {
    let mut out = build::target_dir().join("dist");
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => {
                out = args
                    .next()
                    .map(PathBuf::from)
                    .ok_or("--out needs a value")?
            }
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    let made = dist::run(&out)?;
    println!("release:  {}", made.tarball.display());
    println!("checksum: {}", made.sums.display());
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
