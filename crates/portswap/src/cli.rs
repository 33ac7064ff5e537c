//! What every hook binary shares: flags, `--help`/`--version`, logging, the signal rule and
//! the one-line verdict that ends the output.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::error::{Error, Failure, Result, UsageError};
use crate::signals;

/// The version of every portswap binary.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Description of one hook binary.
#[derive(Debug)]
pub struct Hook {
    /// Executable name: `stop`, `start`, `health`, `switch`.
    pub name: &'static str,
    /// One paragraph for `--help`.
    pub about: &'static str,
    /// Its own boolean flags with their help.
    pub switches: &'static [(&'static str, &'static str)],
    /// Whether it takes `--port PORT`.
    pub takes_port: bool,
    /// What exit codes 0, 1 and 4 mean for this hook (`--help`; 2, 3 and the signals are
    /// the same for every hook). Continuation lines start with [`EXIT_INDENT`].
    pub exits: &'static [(u8, &'static str)],
}

/// The indentation of a continued line of an exit code's meaning in `--help`.
pub const EXIT_INDENT: &str = "\n               ";

/// Parsed command line.
#[derive(Debug, Default, Clone)]
pub struct Args {
    /// `--config PATH`.
    pub config: Option<PathBuf>,
    /// `--port PORT`.
    pub port: Option<u16>,
    /// `--force` (stop, switch).
    pub force: bool,
    /// `--rollback` (switch).
    pub rollback: bool,
    /// `--status` (switch).
    pub status: bool,
    /// `--restore` (switch).
    pub restore: bool,
}

impl Args {
    /// The field of boolean flag `name`, if portswap has such a flag.
    fn switch(&mut self, name: &str) -> Option<&mut bool> {
        match name {
            "--force" => Some(&mut self.force),
            "--rollback" => Some(&mut self.rollback),
            "--status" => Some(&mut self.status),
            "--restore" => Some(&mut self.restore),
            _ => None,
        }
    }
}

enum Parsed {
    Run(Args),
    Help,
    Version,
}

/// Splits one argument into the flag and its inline value (`--config=/a.yml` gives
/// `--config` and `/a.yml`); `None` when the argument is not UTF-8.
pub fn split_arg(raw: &OsStr) -> Option<(String, Option<String>)> {
    let text = raw.to_str()?;
    Some(match text.split_once('=') {
        Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
        _ => (text.to_string(), None),
    })
}

fn parse(hook: &Hook, argv: Vec<OsString>) -> Result<Parsed> {
    let usage = |problem: String| {
        Error::from(UsageError::Flag {
            hook: hook.name,
            problem,
        })
    };
    let mut args = Args::default();
    let mut iter = argv.into_iter();
    while let Some(raw) = iter.next() {
        let (flag, inline) =
            split_arg(&raw).ok_or_else(|| usage(format!("argument {raw:?} is not UTF-8")))?;
        let text = raw.to_string_lossy();
        let mut value = |name: &str| -> Result<String> {
            inline
                .clone()
                .or_else(|| iter.next().and_then(|v| v.into_string().ok()))
                .ok_or_else(|| usage(format!("{name} needs a value")))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            "--config" => args.config = Some(PathBuf::from(value("--config")?)),
            "--port" if hook.takes_port => {
                let v = value("--port")?;
                let port = v.parse::<u16>().ok().filter(|p| *p != 0);
                args.port = Some(
                    port.ok_or_else(|| usage(format!("--port {v}: not a port (1 to 65535)")))?,
                );
            }
            other => {
                let offered = hook.switches.iter().any(|(name, _)| *name == other);
                match args.switch(other).filter(|_| offered && inline.is_none()) {
                    Some(field) => *field = true,
                    None => return Err(usage(format!("unknown argument `{text}`"))),
                }
            }
        }
    }
    Ok(Parsed::Run(args))
}

fn help(hook: &Hook) -> String {
    let mut text = format!(
        "{name} {VERSION} (portswap)\n{about}\n\nUsage: {name} [--config PATH]{port}{switches}\n\nOptions:\n  \
         --config PATH   configuration file (default: $PORTSWAP_CONFIG, else portswap.yml beside\n                  \
         this executable, else /etc/portswap/portswap.yml)\n",
        name = hook.name,
        about = hook.about,
        port = if hook.takes_port { " [--port PORT]" } else { "" },
        switches = hook.switches.iter().map(|(n, _)| format!(" [{n}]")).collect::<String>(),
    );
    if hook.takes_port {
        text.push_str("  --port PORT     act on this slot instead of the idle one\n");
    }
    for (name, about) in hook.switches {
        text.push_str(&format!("  {name:<15} {about}\n"));
    }
    text.push_str(
        "  -h, --help      print this help\n  -V, --version   print the version\n\nExit codes:\n",
    );
    let common: [(&str, &str); 3] = [
        (
            "2",
            "bad configuration, flags or state on disk (the verdict names the file and the key)",
        ),
        ("3", "another hook holds the lock (waited state.lock_wait)"),
        (
            "129/130/143",
            "stopped by SIGHUP/SIGINT/SIGTERM (ssh session closed, Ctrl-C, the CodeDeploy hook\n               \
             timeout)",
        ),
    ];
    let own = hook
        .exits
        .iter()
        .map(|(code, text)| (code.to_string(), *text));
    let mut codes: Vec<(String, &str)> = own
        .chain(common.iter().map(|(c, t)| (c.to_string(), *t)))
        .collect();
    codes.sort_by(|a, b| (a.0.len(), &a.0).cmp(&(b.0.len(), &b.0)));
    for (code, meaning) in codes {
        text.push_str(&format!("  {code:<12} {meaning}\n"));
    }
    text.push_str("Logs go to stderr (RUST_LOG=debug for more); the last line is the verdict.\n");
    text
}

/// Writes one line; a closed stdout/stderr (the agent gave up on us) is not an error.
pub fn say(mut out: impl Write, line: &str) {
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Logs to stderr through env_logger (`RUST_LOG`, default info), each line tagged with the
/// binary and `$DEPLOYMENT_ID` and a UTC time stamp. The health probe's HTTP client logs
/// warnings only, unless `RUST_LOG` names it (`ureq=debug`): at debug it writes lines for
/// every probe.
pub fn init_logging(hook: &'static str) {
    let deployment = crate::deployment::current();
    let tag = if deployment.manual {
        hook.to_string()
    } else {
        format!("{hook} {}", deployment.id)
    };
    env_logger::Builder::new()
        .filter_module("ureq", log::LevelFilter::Warn)
        .filter_module("ureq_proto", log::LevelFilter::Warn)
        .parse_env(env_logger::Env::default().default_filter_or("info"))
        .format(move |buf, record| {
            let level = record.level().to_string().to_lowercase();
            writeln!(buf, "[{} {tag}] {level}: {}", utc_now(), record.args())
        })
        .target(env_logger::Target::Stderr)
        .init();
}

/// The current UTC time as `2026-11-25T06:40:01.123Z` (no time-zone database needed).
fn utc_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (days, secs) = ((now.as_secs() / 86_400) as i64, now.as_secs() % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        now.subsec_millis()
    )
}

/// Runs a hook binary: parses flags, sets up logging and SIGTERM handling, runs `body`, and
/// ends with the one-line verdict and the matching exit code.
pub fn run(hook: &'static Hook, body: fn(&Args) -> Result<String>) -> ExitCode {
    crate::timings::begin();
    let parsed = parse(hook, std::env::args_os().skip(1).collect());
    let args = match parsed {
        Ok(Parsed::Help) => {
            say(std::io::stdout(), help(hook).trim_end());
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            say(
                std::io::stdout(),
                &format!("{} {VERSION} (portswap)", hook.name),
            );
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Run(args)) => args,
        Err(e) => {
            say(std::io::stderr(), &verdict(hook, Err(&e)));
            return ExitCode::from(e.exit_code());
        }
    };
    init_logging(hook.name);
    signals::install(hook.name);
    let result = body(&args);
    say(std::io::stderr(), &verdict(hook, result.as_ref()));
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(e.exit_code()),
    }
}

/// The last line of a hook's output: `portswap <name>: OK: ...` or
/// `portswap <name>: FAILED (exit N): ...`, on one line.
pub fn verdict<E: Failure>(hook: &Hook, result: std::result::Result<&String, &E>) -> String {
    let line = match result {
        Ok(summary) => format!("portswap {}: OK: {summary}", hook.name),
        Err(e) => format!(
            "portswap {}: FAILED (exit {}): {e}",
            hook.name,
            e.kind().exit_code()
        ),
    };
    bounded(&line.replace('\n', " | "))
}

/// The longest verdict line, in characters: CodeDeploy shows a hook's last 2048 bytes, and the
/// lines logged before the verdict deserve some of them.
const MAX_VERDICT: usize = 1000;

/// `line` within [`MAX_VERDICT`] characters: an over-long one keeps its start (what failed)
/// and its end (the advice), and says how much was left out between.
fn bounded(line: &str) -> String {
    let count = line.chars().count();
    if count <= MAX_VERDICT {
        return line.to_string();
    }
    let (head, tail) = (MAX_VERDICT * 2 / 3, MAX_VERDICT / 4);
    let start: String = line.chars().take(head).collect();
    let end: String = line.chars().skip(count - tail).collect();
    format!(
        "{start} [... {} characters left out ...] {end}",
        count - head - tail
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOOK: Hook = Hook {
        name: "stop",
        about: "x",
        switches: &[("--force", "f")],
        takes_port: true,
        exits: &[(0, "done")],
    };

    fn args(list: &[&str]) -> Result<Parsed> {
        parse(&HOOK, list.iter().map(OsString::from).collect())
    }

    #[test]
    fn an_over_long_verdict_keeps_its_start_and_end_within_the_bound() {
        let long = format!("start {} end", "x".repeat(5000));
        let line = bounded(&long);
        assert!(line.chars().count() <= MAX_VERDICT + 60, "{}", line.len());
        assert!(
            line.starts_with("start x") && line.ends_with("x end"),
            "{line}"
        );
        assert!(line.contains("characters left out"), "{line}");
        assert_eq!(bounded("short"), "short");
    }

    #[test]
    fn parses_flags() {
        let Parsed::Run(a) = args(&["--config=/a.yml", "--port", "8082", "--force"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(a.config.as_deref(), Some(std::path::Path::new("/a.yml")));
        assert_eq!(a.port, Some(8082));
        assert!(a.force && !a.rollback);
        assert!(matches!(args(&["--help"]).unwrap(), Parsed::Help));
        assert!(matches!(
            args(&["--port", "0"]),
            Err(Error::Usage(UsageError::Flag { .. }))
        ));
        assert!(matches!(
            args(&["--port"]),
            Err(Error::Usage(UsageError::Flag { .. }))
        ));
        assert!(matches!(
            args(&["--rollback"]),
            Err(Error::Usage(UsageError::Flag { .. }))
        ));
        assert!(matches!(
            args(&["--force=yes"]),
            Err(Error::Usage(UsageError::Flag { .. }))
        ));
        assert!(help(&HOOK).contains("--force"));
    }

    /// Issue 17 item 7: every hook's `--help` lists the exit codes it returns with its own
    /// meaning of each, in order, within 100 columns.
    #[test]
    fn help_lists_each_hooks_exit_codes_within_100_columns() {
        use crate::commands::{health, start, stop, switch};
        for hook in [&stop::HOOK, &start::HOOK, &health::HOOK, &switch::HOOK] {
            let text = help(hook);
            for line in text.lines() {
                assert!(line.chars().count() <= 100, "{}: {line}", hook.name);
            }
            let exits = &text[text.find("Exit codes:\n").expect("exit codes")..];
            let listed: Vec<&str> = exits
                .lines()
                .skip(1)
                .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
                .map(|l| l.split_whitespace().next().unwrap())
                .collect();
            assert_eq!(
                listed,
                ["0", "1", "2", "3", "4", "129/130/143"],
                "{}",
                hook.name
            );
            for (code, meaning) in hook.exits {
                let first = meaning.split('\n').next().unwrap();
                assert!(
                    exits.contains(&format!("  {code:<12} {first}")),
                    "{}: {code}",
                    hook.name
                );
            }
        }
    }

    #[test]
    fn every_flag_a_hook_offers_has_a_field() {
        use crate::commands::{health, start, stop, switch};
        for hook in [&stop::HOOK, &start::HOOK, &health::HOOK, &switch::HOOK] {
            for (name, _) in hook.switches {
                assert!(Args::default().switch(name).is_some(), "{name}");
            }
        }
    }
}
