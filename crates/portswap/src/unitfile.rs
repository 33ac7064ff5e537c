//! The syntax of the unit files portswap writes (the app's units and the nftables boot
//! unit): the one place that quotes a value for systemd, so a path with a space, `%` or `$`
//! reaches the program, the condition or the mount dependency exactly as given.

use crate::error::{ConfigError, Result};

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
            // Each byte of its UTF-8 encoding: systemd unescapes `\xNN` to one byte, so a C1
            // control (U+0080..U+009F) stays valid UTF-8 in what systemd reads back.
            c if c.is_control() => {
                let mut bytes = [0u8; 4];
                for b in c.encode_utf8(&mut bytes).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
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
        return Err(ConfigError::UnitValue {
            what: what.to_string(),
            value: value.to_string(),
        }
        .into());
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
        assert_eq!(quote_word("a\u{85}b"), r#""a\xc2\x85b""#);
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
