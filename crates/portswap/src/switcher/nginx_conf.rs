//! nginx's configuration language, read the way nginx reads it: words (bare, `'...'` or
//! `"..."`, with backslash escapes), `;`, `{`, `}`, and `#` comments only where a word could
//! start (`return 200 "#";` holds no comment, nor does `a#b`). The one reader for every check
//! that looks at nginx's configuration (`nginx -T`): upstream pools, keep-alive settings,
//! where the include is read and what follows it.

use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

/// One directive: its words (the name first) and, for a block, the directives inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// The name and the arguments, unquoted and unescaped.
    pub words: Vec<String>,
    /// The file it was read from (empty when parsed from bare text).
    pub file: Rc<Path>,
    /// Its line in that file (1-based).
    pub line: usize,
    /// The directives of its block (`server { ... }`), `None` for `name args;`.
    pub block: Option<Vec<Directive>>,
}

impl Directive {
    /// The directive's name (`set`, `server`, ...).
    pub fn name(&self) -> &str {
        self.words.first().map_or("", String::as_str)
    }

    /// Its arguments.
    pub fn args(&self) -> &[String] {
        self.words.get(1..).unwrap_or(&[])
    }

    /// `file:line`, for messages.
    pub fn place(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// A piece of nginx's configuration text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    End,
    Open,
    Close,
}

/// The character an escape stands for: `\"`, `\'`, `\\`, `\t`, `\r`, `\n` as nginx reads
/// them; any other escape keeps its backslash.
fn unescape(c: char, into: &mut String) {
    match c {
        '"' | '\'' | '\\' => into.push(c),
        't' => into.push('\t'),
        'r' => into.push('\r'),
        'n' => into.push('\n'),
        other => {
            into.push('\\');
            into.push(other);
        }
    }
}

/// Splits `text` into tokens with their line numbers.
fn tokens(text: &str) -> Vec<(Token, usize)> {
    let mut out = Vec::new();
    let mut line = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => while chars.next_if(|c| *c != '\n').is_some() {},
            ';' => out.push((Token::End, line)),
            '{' => out.push((Token::Open, line)),
            '}' => out.push((Token::Close, line)),
            '"' | '\'' => {
                let at = line;
                let mut word = String::new();
                while let Some(q) = chars.next() {
                    match q {
                        '\\' => match chars.next() {
                            Some(e) => {
                                line += usize::from(e == '\n');
                                unescape(e, &mut word)
                            }
                            None => word.push('\\'),
                        },
                        q if q == c => break,
                        q => {
                            line += usize::from(q == '\n');
                            word.push(q)
                        }
                    }
                }
                out.push((Token::Word(word), at));
            }
            c => {
                // A bare word ends at whitespace, `;` or `{` (not the `{` of `${name}`).
                let mut word = String::new();
                let mut next = Some(c);
                while let Some(w) = next {
                    match w {
                        '\\' => match chars.next() {
                            Some(e) => unescape(e, &mut word),
                            None => word.push('\\'),
                        },
                        w => word.push(w),
                    }
                    let dollar = w == '$';
                    next = chars
                        .next_if(|n| !(n.is_whitespace() || *n == ';' || (*n == '{' && !dollar)));
                }
                out.push((Token::Word(word), line));
            }
        }
    }
    out
}

/// A block being read: the directives so far, and the words and line of the directive that
/// opened it (`None` at the top).
type Level = (Vec<Directive>, Option<(Vec<String>, usize)>);

/// The directives of `text` (one file of nginx's configuration, or several one after the
/// other), read from `file`.
pub fn parse_file(text: &str, file: &Rc<Path>) -> Vec<Directive> {
    let mut stack: Vec<Level> = vec![(Vec::new(), None)];
    let mut words: Vec<String> = Vec::new();
    let mut first_line = 0;
    for (token, line) in tokens(text) {
        match token {
            Token::Word(w) => {
                if words.is_empty() {
                    first_line = line;
                }
                words.push(w);
            }
            Token::End => {
                if !words.is_empty() {
                    let directive = Directive {
                        words: std::mem::take(&mut words),
                        file: file.clone(),
                        line: first_line,
                        block: None,
                    };
                    stack.last_mut().expect("a level").0.push(directive);
                }
            }
            Token::Open => {
                let line = if words.is_empty() { line } else { first_line };
                stack.push((Vec::new(), Some((std::mem::take(&mut words), line))));
            }
            Token::Close => {
                words.clear();
                if stack.len() > 1 {
                    close(&mut stack, file);
                }
            }
        }
    }
    // Text nginx would not have accepted (cut short): keep what was read.
    while stack.len() > 1 {
        close(&mut stack, file);
    }
    stack.pop().map(|(top, _)| top).unwrap_or_default()
}

/// Ends the innermost open block, adding it to the level around it.
fn close(stack: &mut Vec<Level>, file: &Rc<Path>) {
    let Some((inner, Some((words, line)))) = stack.pop() else {
        return;
    };
    let directive = Directive {
        words,
        file: file.clone(),
        line,
        block: Some(inner),
    };
    stack.last_mut().expect("a level").0.push(directive);
}

/// The directives of `text`, from no file in particular.
pub fn parse(text: &str) -> Vec<Directive> {
    parse_file(text, &Rc::from(Path::new("")))
}

/// Calls `visit` with every directive of `directives` and of their blocks, in order.
pub fn walk<'a>(directives: &'a [Directive], visit: &mut impl FnMut(&'a Directive)) {
    for d in directives {
        visit(d);
        if let Some(block) = &d.block {
            walk(block, visit);
        }
    }
}

/// How many levels of `include` are followed (nginx itself has no limit; a cycle would not
/// have loaded).
const INCLUDE_DEPTH: usize = 16;

/// nginx's loaded configuration as one tree: `files` as `nginx -T` lists them (path and
/// text, the main file first), each `include` followed, in place, by the directives of the
/// files it matched (in the sorted order nginx's glob reads them). The `include` itself stays,
/// so the directives after it are those nginx reads after the included file.
pub fn expand(files: &[(PathBuf, &str)]) -> Vec<Directive> {
    if files.is_empty() {
        return Vec::new();
    }
    let parsed: Vec<(PathBuf, Vec<Directive>)> = files
        .iter()
        .map(|(path, text)| (path.clone(), parse_file(text, &Rc::from(path.as_path()))))
        .collect();
    let top = parsed[0].1.clone();
    expand_level(top, &parsed, 0)
}

fn expand_level(
    directives: Vec<Directive>,
    files: &[(PathBuf, Vec<Directive>)],
    depth: usize,
) -> Vec<Directive> {
    let mut out = Vec::with_capacity(directives.len());
    for mut d in directives {
        if let Some(block) = d.block.take() {
            d.block = Some(expand_level(block, files, depth));
        }
        let include = (d.name() == "include" && d.block.is_none())
            .then(|| d.args().first().cloned())
            .flatten();
        out.push(d);
        let Some(pattern) = include.filter(|_| depth < INCLUDE_DEPTH) else {
            continue;
        };
        let mut matched: Vec<&(PathBuf, Vec<Directive>)> = files
            .iter()
            .filter(|(path, _)| include_matches(&pattern, path))
            .collect();
        matched.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, inner) in matched {
            out.extend(expand_level(inner.clone(), files, depth + 1));
        }
    }
    out
}

/// True when `include pattern;` reads `path` (as `nginx -T` names it): an absolute pattern
/// matches the whole path, a relative one (resolved by nginx against its prefix) its last
/// components; `*`, `?` and `[...]` as glob(3) reads them, within one component.
pub fn include_matches(pattern: &str, path: &Path) -> bool {
    let parts = |p: &Path| -> Vec<String> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect()
    };
    let wanted = parts(Path::new(pattern));
    let have = parts(path);
    if wanted.is_empty() || wanted.len() > have.len() {
        return false;
    }
    if Path::new(pattern).is_absolute() && wanted.len() != have.len() {
        return false;
    }
    let tail = &have[have.len() - wanted.len()..];
    wanted.iter().zip(tail).all(|(w, h)| glob_matches(w, h))
}

/// One path component against one glob component (`*`, `?`, `[a-z]`, `[!x]`).
fn glob_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob_at(&p, &n)
}

fn glob_at(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|skip| glob_at(&p[1..], &n[skip..])),
        Some('?') => !n.is_empty() && glob_at(&p[1..], &n[1..]),
        Some('[') => match (class(&p[1..]), n.first()) {
            (Some((matches, used)), Some(c)) => matches(*c) && glob_at(&p[1 + used..], &n[1..]),
            (None, Some('[')) => glob_at(&p[1..], &n[1..]),
            _ => false,
        },
        Some(c) => n.first() == Some(c) && glob_at(&p[1..], &n[1..]),
    }
}

/// A `[...]` class after its `[`: a test and how many characters it used (with the `]`).
#[allow(clippy::type_complexity)]
fn class(p: &[char]) -> Option<(Box<dyn Fn(char) -> bool>, usize)> {
    let negated = matches!(p.first(), Some('!' | '^'));
    let start = usize::from(negated);
    // A `]` right after `[` (or `[!`) is a member, not the end.
    let end = start + 1 + p.get(start + 1..)?.iter().position(|c| *c == ']')?;
    let members: Vec<char> = p[start..end].to_vec();
    let test = move |c: char| {
        let mut i = 0;
        let mut found = false;
        while i < members.len() {
            if i + 2 < members.len() && members[i + 1] == '-' {
                found |= members[i] <= c && c <= members[i + 2];
                i += 3;
            } else {
                found |= members[i] == c;
                i += 1;
            }
        }
        found != negated
    };
    Some((Box::new(test), end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        walk(&parse(text), &mut |d| out.push(d.words.clone()));
        out
    }

    fn w(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_hash_inside_quotes_or_a_word_is_no_comment() {
        let text = "server {\n  return 200 \"#\";\n  set $a b#c; # a comment ; {\n  \
                    keepalive 16;\n}\n";
        assert_eq!(
            words(text),
            vec![
                w(&["server"]),
                w(&["return", "200", "#"]),
                w(&["set", "$a", "b#c"]),
                w(&["keepalive", "16"]),
            ]
        );
        let server = &parse(text)[0];
        assert_eq!(server.block.as_ref().unwrap()[2].line, 4);
    }

    #[test]
    fn quotes_and_escapes_as_nginx_reads_them() {
        assert_eq!(
            words(r#"add_header X "a \"b\" ; { }" ; log 'x\'y' a\;b;"#),
            vec![
                w(&["add_header", "X", "a \"b\" ; { }"]),
                // `\;` does not end the word; nginx keeps the backslash of such an escape.
                w(&["log", "x'y", "a\\;b"])
            ]
        );
        assert_eq!(words(r#"x "a\tb\q";"#), vec![w(&["x", "a\tb\\q"])]);
        // `${name}` is part of a word, not a block.
        assert_eq!(
            words("set $u http://${host}x;"),
            vec![w(&["set", "$u", "http://${host}x"])]
        );
        // A multi-line quoted word keeps the line of its start; the next directive its own.
        let parsed = parse("a \"1\n2\";\nb;");
        assert_eq!((parsed[0].line, parsed[1].line), (1, 3));
    }

    #[test]
    fn blocks_nest_and_unbalanced_text_is_kept() {
        let parsed = parse("http { server { listen 80; } upstream u { server x; } }");
        let http = parsed[0].block.as_ref().unwrap();
        assert_eq!(http.len(), 2);
        assert_eq!(http[1].words, w(&["upstream", "u"]));
        assert_eq!(words("a { b;"), vec![w(&["a"]), w(&["b"])]);
        assert_eq!(words("} a;"), vec![w(&["a"])]);
    }

    #[test]
    fn includes_are_followed_in_place() {
        let files = vec![
            (
                PathBuf::from("/etc/nginx/nginx.conf"),
                "http { include /etc/nginx/conf.d/*.conf; server { include snippets/s.in[c]; \
                 set $x 1; } }",
            ),
            (PathBuf::from("/etc/nginx/conf.d/b.conf"), "b;"),
            (PathBuf::from("/etc/nginx/conf.d/a.conf"), "a;"),
            (PathBuf::from("/etc/nginx/snippets/s.inc"), "set $x 2;"),
        ];
        let tree = expand(&files);
        let mut seen = Vec::new();
        walk(&tree, &mut |d| seen.push((d.words.join(" "), d.place())));
        let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "http",
                "include /etc/nginx/conf.d/*.conf",
                "a",
                "b",
                "server",
                "include snippets/s.in[c]",
                "set $x 2",
                "set $x 1"
            ]
        );
        assert_eq!(seen[6].1, "/etc/nginx/snippets/s.inc:1");
    }

    #[test]
    fn include_patterns() {
        let p = Path::new("/etc/nginx/conf.d/service-url.inc");
        assert!(include_matches("/etc/nginx/conf.d/service-url.inc", p));
        assert!(include_matches("/etc/nginx/conf.d/*.inc", p));
        assert!(include_matches("/etc/nginx/conf.d/service-url.in[c]", p));
        assert!(include_matches("conf.d/service-url.in?", p));
        assert!(include_matches("/etc/nginx/conf.d/[!x]ervice-url.inc", p));
        assert!(include_matches("/etc/nginx/conf.d/[a-t]ervice-url.inc", p));
        assert!(!include_matches("/etc/nginx/conf.d/[!s]ervice-url.inc", p));
        assert!(!include_matches("/etc/nginx/*.inc", p));
        assert!(!include_matches("/nginx/conf.d/service-url.inc", p));
        assert!(!include_matches("/etc/nginx/conf.d/*.conf", p));
    }
}
