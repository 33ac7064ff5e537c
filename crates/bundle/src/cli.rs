//! The command line of `portswap-bundle`, with the conventions of the hooks: `--help`,
//! `--version`, logs on stderr, a one-line verdict last, exit 0 / 1 (failed) / 2 (bad flags,
//! configuration, appspec or hook binaries).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::error::{Error, Result};
use portswap::cli::{self, split_arg, Hook, VERSION};

use crate::revision::Inputs;

/// The executable's name.
pub const NAME: &str = "portswap-bundle";

/// Names the verdict line: `portswap bundle: OK: ...`.
const VERDICT: Hook = Hook {
    name: "bundle",
    about: "",
    switches: &[],
    takes_port: false,
    exits: &[],
};

const HELP: &str = "Checks and packs a CodeDeploy revision for portswap: appspec.yml, hooks/{stop,start,health,switch}
(static executables, mode 0755), hooks/portswap.yml and the application files, as
OUT/portswap-revision.zip and OUT/portswap-revision.tgz with Unix modes kept (the unpacked
revision is OUT/revision/). Refuses to pack when a hook binary is not static, appspec.yml names a
file the revision lacks, portswap.yml is invalid, or the waits portswap.yml allows a hook do not fit
in that hook's appspec timeout.

Usage: portswap-bundle [--appspec PATH] [--config PATH] [--hooks DIR] [--out DIR] ARTIFACT...

Arguments:
  ARTIFACT...     application files (e.g. build/libs/app.jar), placed where app.artifacts in
                  portswap.yml finds them (patterns are relative to hooks/ in the revision)

Options:
  --appspec PATH  the appspec to ship (default: appspec.yml)
  --config PATH   the portswap.yml to ship (default: portswap.yml beside the appspec, else
                  hooks/portswap.yml beside it)
  --hooks DIR     directory of the stop, start, health and switch binaries (default: the
                  directory of this executable, bin/ of the release)
  --out DIR       where to write (default: build/portswap)
  -h, --help      print this help
  -V, --version   print the version

Exit codes: 0 packed, 1 failed (cannot write), 2 bad flags, configuration, appspec, artifact or
hook binaries (the message names the file).
Logs go to stderr (RUST_LOG=debug for more); the last line is the verdict.";

/// Parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flags {
    /// `--appspec PATH`.
    pub appspec: PathBuf,
    /// `--config PATH`; `None`: beside the appspec.
    pub config: Option<PathBuf>,
    /// `--hooks DIR`; `None`: beside this executable.
    pub hooks: Option<PathBuf>,
    /// `--out DIR`.
    pub out: PathBuf,
    /// The application files.
    pub artifacts: Vec<PathBuf>,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Pack a revision.
    Run(Flags),
    /// `--help`.
    Help,
    /// `--version`.
    Version,
}

/// Parses the arguments (without the program name).
pub fn parse(argv: Vec<OsString>) -> Result<Parsed> {
    let usage = |msg: String| Error::Usage {
        problem: format!("{msg}; see `{NAME} --help`"),
    };
    let mut flags = Flags {
        appspec: PathBuf::from("appspec.yml"),
        config: None,
        hooks: None,
        out: PathBuf::from("build/portswap"),
        artifacts: Vec::new(),
    };
    let mut iter = argv.into_iter();
    while let Some(raw) = iter.next() {
        let (flag, inline) =
            split_arg(&raw).ok_or_else(|| usage(format!("argument {raw:?} is not UTF-8")))?;
        let text = raw.to_string_lossy();
        let mut value = || -> Result<PathBuf> {
            inline
                .clone()
                .map(OsString::from)
                .or_else(|| iter.next())
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .ok_or_else(|| usage(format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            "--appspec" => flags.appspec = value()?,
            "--config" => flags.config = Some(value()?),
            "--hooks" => flags.hooks = Some(value()?),
            "--out" => flags.out = value()?,
            other if other.starts_with('-') && other != "-" => {
                return Err(usage(format!("unknown argument `{text}`")))
            }
            _ => flags.artifacts.push(PathBuf::from(raw)),
        }
    }
    if flags.artifacts.is_empty() {
        return Err(usage(
            "no artifact given (e.g. build/libs/app.jar)".to_string(),
        ));
    }
    Ok(Parsed::Run(flags))
}

/// The portswap.yml beside the appspec: `portswap.yml`, else `hooks/portswap.yml`.
fn config_beside(appspec: &Path) -> Result<PathBuf> {
    let dir = appspec.parent().unwrap_or(Path::new(""));
    let candidates = [dir.join("portswap.yml"), dir.join("hooks/portswap.yml")];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| Error::Usage {
            problem: format!(
                "no configuration found beside {} (looked at {} and {}); pass --config PATH",
                appspec.display(),
                candidates[0].display(),
                candidates[1].display()
            ),
        })
}

/// The directory of the running executable, where the release keeps the hooks.
fn own_dir() -> Result<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .ok_or_else(|| Error::Usage {
            problem: "cannot tell where this executable is; pass --hooks DIR".into(),
        })
}

/// Turns the flags into the inputs of a revision, filling in the defaults.
pub fn inputs(flags: &Flags) -> Result<Inputs> {
    Ok(Inputs {
        appspec: flags.appspec.clone(),
        config: match &flags.config {
            Some(path) => path.clone(),
            None => config_beside(&flags.appspec)?,
        },
        hooks: match &flags.hooks {
            Some(dir) => dir.clone(),
            None => own_dir()?,
        },
        artifacts: flags.artifacts.clone(),
    })
}

fn pack(flags: &Flags) -> Result<String> {
    let inputs = inputs(flags)?;
    log::info!(
        "packing {} with {} and the hooks in {}",
        inputs.appspec.display(),
        inputs.config.display(),
        inputs.hooks.display()
    );
    let made = crate::bundle(&inputs, &flags.out)?;
    log::info!("revision laid out in {}", made.dir.display());
    for archive in [&made.zip, &made.tgz] {
        cli::say(std::io::stdout(), &archive.display().to_string());
    }
    Ok(format!(
        "packed {} and {} ({} artifact{})",
        made.zip.display(),
        made.tgz.display(),
        inputs.artifacts.len(),
        if inputs.artifacts.len() == 1 { "" } else { "s" }
    ))
}

/// Runs `portswap-bundle` with the process's arguments; ends with the verdict line.
pub fn run() -> ExitCode {
    let result = match parse(std::env::args_os().skip(1).collect()) {
        Ok(Parsed::Help) => {
            cli::say(
                std::io::stdout(),
                &format!("{NAME} {VERSION} (portswap)\n{HELP}"),
            );
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            cli::say(std::io::stdout(), &format!("{NAME} {VERSION} (portswap)"));
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Run(flags)) => {
            cli::init_logging(VERDICT.name);
            pack(&flags)
        }
        Err(e) => Err(e),
    };
    cli::say(std::io::stderr(), &cli::verdict(&VERDICT, result.as_ref()));
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(e.exit_code()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Parsed> {
        parse(list.iter().map(OsString::from).collect())
    }

    #[test]
    fn parses_flags_and_defaults() {
        let Parsed::Run(flags) =
            args(&["--out=dist", "--hooks", "bin", "app.jar", "lib.so"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(flags.out, Path::new("dist"));
        assert_eq!(flags.hooks.as_deref(), Some(Path::new("bin")));
        assert_eq!(flags.appspec, Path::new("appspec.yml"));
        assert_eq!(flags.config, None);
        assert_eq!(flags.artifacts, [Path::new("app.jar"), Path::new("lib.so")]);
        assert_eq!(args(&["--version"]).unwrap(), Parsed::Version);
        assert_eq!(args(&["app.jar", "-h"]).unwrap(), Parsed::Help);
        for bad in [
            &["--config"][..],
            &["--no-build", "a.jar"],
            &[],
            &["--out=", "a.jar"],
        ] {
            let err = args(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
            assert!(
                err.to_string().ends_with("see `portswap-bundle --help`"),
                "{err}"
            );
        }
    }

    #[test]
    fn finds_the_config_beside_the_appspec() {
        let dir = tempfile::tempdir().unwrap();
        let appspec = dir.path().join("appspec.yml");
        let err = config_beside(&appspec).unwrap_err().to_string();
        assert!(err.contains("pass --config PATH"), "{err}");
        std::fs::create_dir(dir.path().join("hooks")).unwrap();
        std::fs::write(dir.path().join("hooks/portswap.yml"), "").unwrap();
        assert_eq!(
            config_beside(&appspec).unwrap(),
            dir.path().join("hooks/portswap.yml")
        );
        std::fs::write(dir.path().join("portswap.yml"), "").unwrap();
        assert_eq!(
            config_beside(&appspec).unwrap(),
            dir.path().join("portswap.yml")
        );
    }
}
