//! Placeholders (`{port}`, `{profile}`, ...) in the app's argv and in the nginx include.

/// The include template compatible with the legacy `switch.sh` setup.
pub const DEFAULT: &str = "set $service_url http://127.0.0.1:{port};";

/// Placeholders the app's argv and working directory may use.
pub const APP_PLACEHOLDERS: [&str; 5] = [
    "port",
    "profile",
    "deployment_id",
    "release_dir",
    "artifact",
];

/// Splits `text` into literal pieces and `{name}` placeholders (a name is `[a-z_]+`).
fn pieces(text: &str) -> Vec<(bool, &str)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(after.len());
        if name_len > 0 && after[name_len..].starts_with('}') {
            out.push((false, &rest[..open]));
            out.push((true, &after[..name_len]));
            rest = &after[name_len + 1..];
        } else {
            out.push((false, &rest[..=open]));
            rest = after;
        }
    }
    out.push((false, rest));
    out
}

/// Fails on a placeholder that is not one of [`APP_PLACEHOLDERS`].
pub fn check_placeholders(text: &str) -> Result<(), String> {
    for (is_name, name) in pieces(text) {
        if is_name && !APP_PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}} in `{text}` (known: {})",
                APP_PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(" ")
            ));
        }
    }
    Ok(())
}

/// Replaces each `{name}` by `lookup(name)`; names it does not know stay as written.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    for (is_name, piece) in pieces(text) {
        match (is_name, is_name.then(|| lookup(piece)).flatten()) {
            (true, Some(value)) => out.push_str(&value),
            (true, None) => {
                out.push('{');
                out.push_str(piece);
                out.push('}');
            }
            (false, _) => out.push_str(piece),
        }
    }
    out
}

/// The nginx include template: text with exactly one kind of placeholder, `{port}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(String);

impl Template {
    /// Checks that `text` holds `{port}` and no other placeholder.
    pub fn new(text: String) -> Result<Template, String> {
        let names: Vec<&str> = pieces(&text)
            .into_iter()
            .filter(|p| p.0)
            .map(|p| p.1)
            .collect();
        if let Some(other) = names.iter().find(|n| **n != "port") {
            return Err(format!(
                "unknown placeholder {{{other}}}; only {{port}} is allowed"
            ));
        }
        if names.is_empty() {
            return Err(format!(
                "`{text}` has no {{port}}: nginx could not be pointed at a slot"
            ));
        }
        Ok(Template(text))
    }

    /// The text as configured.
    pub fn text(&self) -> &str {
        &self.0
    }

    /// The host written right before each `HOST:{port}` (`127.0.0.1`, `[::1]`, `localhost`):
    /// where nginx connects. A `{port}` not preceded by `:` names no host and is skipped.
    pub fn hosts(&self) -> Vec<&str> {
        pieces(&self.0)
            .windows(2)
            .filter(|w| w[1].0 && w[1].1 == "port" && !w[0].0)
            .filter_map(|w| w[0].1.strip_suffix(':'))
            .map(|before| {
                let start = before
                    .rfind(|c: char| c.is_whitespace() || matches!(c, '/' | '"' | '\'' | '='))
                    .map_or(0, |i| i + 1);
                &before[start..]
            })
            .collect()
    }

    /// The include file's content for `port`, ending with a newline.
    pub fn render(&self, port: u16) -> String {
        let mut text = expand(&self.0, |_| Some(port.to_string()));
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text
    }

    /// Reads the port back from an include file's content. Whitespace differences are
    /// tolerated (hand-written legacy files); anything else is an error saying what was found.
    pub fn parse_port(&self, content: &str) -> Result<u16, String> {
        let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        let found = squash(content);
        let wanted = squash(&self.0);
        let prefix = wanted.split("{port}").next().unwrap_or("");
        let digits: String = found
            .strip_prefix(prefix)
            .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect())
            .unwrap_or_default();
        let port = digits.parse::<u16>().ok().filter(|p| *p != 0);
        match port {
            Some(port) if squash(&self.render(port)) == found => Ok(port),
            _ if found.is_empty() => Err("it is empty".into()),
            _ => {
                let shown: String = found.chars().take(80).collect();
                Err(format!(
                    "`{shown}` does not match the template `{}`",
                    self.0
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_parses_back() {
        let t = Template::new(DEFAULT.into()).unwrap();
        assert_eq!(t.render(8082), "set $service_url http://127.0.0.1:8082;\n");
        assert_eq!(
            t.parse_port("set  $service_url http://127.0.0.1:8081;\n\n"),
            Ok(8081)
        );
        assert!(t.parse_port("").is_err());
        assert!(t
            .parse_port("set $service_url http://127.0.0.1:8081")
            .is_err());
        assert!(t
            .parse_port("set $service_url http://127.0.0.1:99999;")
            .is_err());
        assert!(t.parse_port("garbage").is_err());
    }

    #[test]
    fn template_needs_port_only() {
        assert!(Template::new("proxy_pass http://x;".into()).is_err());
        assert!(Template::new("set $a {port}{host};".into()).is_err());
        let t = Template::new("server 127.0.0.1:{port}; # {port}".into()).unwrap();
        assert_eq!(t.parse_port("server 127.0.0.1:1234; # 1234"), Ok(1234));
        assert!(t.parse_port("server 127.0.0.1:1234; # 99").is_err());
    }

    #[test]
    fn names_the_host_before_each_port() {
        let hosts = |text: &str| {
            let t = Template::new(text.into()).unwrap();
            t.hosts().iter().map(|h| h.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(hosts(DEFAULT), ["127.0.0.1"]);
        assert_eq!(hosts("set $u http://[::1]:{port};"), ["[::1]"]);
        assert_eq!(hosts("set $u \"http://localhost:{port}\";"), ["localhost"]);
        assert_eq!(hosts("server 127.0.0.1:{port}; # {port}"), ["127.0.0.1"]);
        assert_eq!(hosts("set $port {port};"), Vec::<String>::new());
    }

    #[test]
    fn expands_known_and_keeps_other_braces() {
        let out = expand("--port={port} {x} ${HOME} {", |n| {
            (n == "port").then(|| "1".into())
        });
        assert_eq!(out, "--port=1 {x} ${HOME} {");
        assert!(check_placeholders("{port}-{profile}").is_ok());
        assert!(check_placeholders("{prot}").is_err());
    }
}
