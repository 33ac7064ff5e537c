//! Talking to systemd through its command-line tools (`systemctl`, `journalctl`): argv only,
//! never a shell, every call bounded in time, and the unit-file syntax portswap writes.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::process::{resolve_program, wait_for};

/// How long a call that does not wait for a stop may take (they take milliseconds; a hung
/// systemd fails the hook within the budget `portswap-bundle` checks).
pub const CALL_LIMIT: Duration = Duration::from_secs(3);

/// True when systemd runs this host (`/run/systemd/system` exists, as `sd_booted` checks).
pub fn booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Runs `program args` and returns its stdout; an error names the call, its exit status and
/// the last line of its stderr. Killed after `limit`.
fn run(program: &str, args: &[&str], limit: Duration) -> Result<String> {
    let path = resolve_program(program)?;
    let call = format!("{program} {}", args.join(" "));
    let mut child = Command::new(&path)
        .args(args)
        .env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_COLORS", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Failed(format!("`{call}` could not run: {e}")))?;
    // Outputs read here are small (a few properties, a few log lines): they fit the pipes
    // while the call runs.
    let mut status = None;
    wait_for(limit, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(Error::Failed(format!(
            "`{call}` did not finish within {}",
            crate::duration::show(limit)
        )));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    if status.success() {
        return Ok(stdout);
    }
    let detail = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .trim();
    Err(Error::Failed(format!(
        "`{call}` failed ({status}): {detail}"
    )))
}

/// `systemctl ARGS...`, bounded by `limit`.
pub fn systemctl(args: &[&str], limit: Duration) -> Result<String> {
    run("systemctl", args, limit)
}

/// What `systemctl show` printed: `Key=value` lines.
#[derive(Debug, Clone, Default)]
pub struct Properties(String);

impl Properties {
    /// The value of `key`, or `"?"` when systemd did not say.
    pub fn get(&self, key: &str) -> &str {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or("?")
    }
}

/// The unit's `properties` (`systemctl show -p A,B UNIT`).
pub fn show(unit: &str, properties: &[&str]) -> Result<Properties> {
    let list = properties.join(",");
    systemctl(&["show", "-p", &list, "--", unit], CALL_LIMIT).map(Properties)
}

/// The last `lines` lines the unit's own processes wrote to the journal since `since`
/// (seconds since the epoch): messages only, not systemd's lines about the unit, not an
/// earlier version's; empty when unreadable.
pub fn journal_tail(unit: &str, since: u64, lines: usize) -> Vec<String> {
    let n = lines.to_string();
    let matching = format!("_SYSTEMD_UNIT={unit}");
    let since = format!("--since=@{since}");
    run(
        "journalctl",
        &[&matching, &since, "-n", &n, "-o", "cat", "--no-pager", "-q"],
        Duration::from_secs(5),
    )
    .map(|t| t.lines().map(str::to_string).collect())
    .unwrap_or_default()
}

/// `arg` as one word of a unit file's `ExecStart=` line: in double quotes, with `\`, `"`
/// and control characters escaped, `%` (specifiers) and `$` (variable expansion) doubled, so
/// it reaches the program exactly as given. A lone `;` (the command separator) is `\;`.
pub fn quote_word(arg: &str) -> String {
    if arg == ";" {
        return "\\;".to_string();
    }
    quote(arg, true)
}

/// `KEY=VALUE` as one word of an `Environment=` line: like [`quote_word`], but `$` stays as
/// it is (no variable expansion there).
pub fn quote_assignment(assignment: &str) -> String {
    quote(assignment, false)
}

fn quote(arg: &str, expands_dollar: bool) -> String {
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('"');
    for c in arg.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '%' => out.push_str("%%"),
            '$' if expands_dollar => out.push_str("$$"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A path or free text as the value of a unit setting that is not split into words
/// (`WorkingDirectory=`, `StandardOutput=append:`, `Description=`): `%` doubled. Refused
/// when it holds a line break or a control character, which the format cannot carry.
pub fn plain_value(what: &str, value: &str) -> Result<String> {
    if value.chars().any(char::is_control) {
        return Err(Error::Config(format!(
            "{what} `{}` holds a control character; a systemd unit cannot carry it",
            value.escape_debug()
        )));
    }
    Ok(value.replace('%', "%%"))
}

/// `KEY="VALUE"` lines of an `EnvironmentFile=`: double quotes, with `\`, `"`, `$` and
/// `` ` `` escaped, so the value arrives literally (line breaks included).
pub fn environment_file(vars: &[(String, String)]) -> String {
    vars.iter()
        .map(|(key, value)| {
            let mut line = format!("{key}=\"");
            for c in value.chars() {
                if matches!(c, '\\' | '"' | '$' | '`') {
                    line.push('\\');
                }
                line.push(c);
            }
            line.push_str("\"\n");
            line
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_every_character() {
        assert_eq!(quote_word("plain"), "\"plain\"");
        assert_eq!(quote_word("a b"), "\"a b\"");
        assert_eq!(quote_word("$HOME"), "\"$$HOME\"");
        assert_eq!(quote_word("${X}"), "\"$${X}\"");
        assert_eq!(quote_word("100%n"), "\"100%%n\"");
        assert_eq!(quote_word(r#"say "hi""#), r#""say \"hi\"""#);
        assert_eq!(quote_word("it's"), "\"it's\"");
        assert_eq!(quote_word(r"C:\dir"), r#""C:\\dir""#);
        assert_eq!(quote_word("a\nb\tc"), r#""a\nb\tc""#);
        assert_eq!(quote_word("\u{1}"), r#""\x01""#);
        assert_eq!(quote_word(";"), r"\;");
        assert_eq!(quote_word("a;b"), "\"a;b\"");
        assert_eq!(quote_word(""), "\"\"");
        assert_eq!(quote_word("-Dx=ü"), "\"-Dx=ü\"");
        assert_eq!(quote_assignment("A=$x 5%"), "\"A=$x 5%%\"");
    }

    #[test]
    fn plain_values_double_percent_and_refuse_line_breaks() {
        assert_eq!(plain_value("x", "/srv/app 100%").unwrap(), "/srv/app 100%%");
        assert!(plain_value("x", "/srv/a\nb").is_err());
    }

    #[test]
    fn environment_file_escapes_what_systemd_interprets() {
        let vars = vec![
            ("A".to_string(), "p$w\"d`x\\y".to_string()),
            ("B".to_string(), "two\nlines".to_string()),
        ];
        assert_eq!(
            environment_file(&vars),
            "A=\"p\\$w\\\"d\\`x\\\\y\"\nB=\"two\nlines\"\n"
        );
    }
}
