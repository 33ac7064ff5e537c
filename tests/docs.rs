//! The repository's Markdown read as a reader follows it: every relative link and `#anchor`
//! resolves to a file and a heading that exist, nothing points outside the repository, and
//! the commands its code blocks give are ones the project runs: the test command is exactly
//! what `.ci/run` runs, `cargo -p` names a workspace package (and `--bin` one of its
//! binaries), `xtask` subcommands exist, and a hook's flags are flags that hook accepts.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use portswap::cli::Hook;
use portswap::commands;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.md` file of the repository (build output, `.git` and other hidden directories
/// left out, but `.github`).
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                if name != "target" && (!name.starts_with('.') || name == ".github") {
                    walk(&path, out);
                }
            } else if name.ends_with(".md") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &mut out);
    out
}

/// A Markdown file split into prose (fenced blocks blanked, line numbers kept) and its
/// fenced code blocks.
struct Doc {
    path: PathBuf,
    prose: String,
    blocks: Vec<Block>,
}

struct Block {
    lang: String,
    /// 1-based line of the opening fence.
    line: usize,
    lines: Vec<String>,
}

impl Doc {
    fn read(path: &Path) -> Doc {
        let text = fs::read_to_string(path).unwrap();
        let mut prose = String::new();
        let mut blocks = Vec::new();
        let mut open: Option<Block> = None;
        for (i, line) in text.lines().enumerate() {
            let fence = line.trim_start().starts_with("```");
            match (&mut open, fence) {
                (None, true) => {
                    open = Some(Block {
                        lang: line.trim_start()[3..].trim().to_string(),
                        line: i + 1,
                        lines: Vec::new(),
                    })
                }
                (Some(_), true) => blocks.push(open.take().unwrap()),
                (Some(block), false) => block.lines.push(line.to_string()),
                (None, false) => prose.push_str(line),
            }
            prose.push('\n');
        }
        assert!(
            open.is_none(),
            "{}: a code block is never closed",
            path.display()
        );
        Doc {
            path: path.to_path_buf(),
            prose: blank_code_spans(&prose),
            blocks,
        }
    }

    /// The GitHub anchors of its headings (`#` lines outside code blocks), duplicates
    /// numbered `-1`, `-2` as GitHub does.
    fn anchors(&self) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let text = fs::read_to_string(&self.path).unwrap();
        let fenced: BTreeSet<usize> = self
            .blocks
            .iter()
            .flat_map(|b| b.line..=b.line + b.lines.len() + 1)
            .collect();
        for (i, line) in text.lines().enumerate() {
            let Some(title) = heading(line) else { continue };
            if fenced.contains(&(i + 1)) {
                continue;
            }
            let base = slug(title);
            let mut anchor = base.clone();
            let mut n = 0;
            while seen.contains(&anchor) {
                n += 1;
                anchor = format!("{base}-{n}");
            }
            seen.insert(anchor);
        }
        seen
    }

    /// Inline links and images in the prose: (line, target).
    fn links(&self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (i, line) in self.prose.lines().enumerate() {
            let mut rest = line;
            while let Some(at) = rest.find("](") {
                let after = &rest[at + 2..];
                let end = after
                    .find(')')
                    .unwrap_or_else(|| panic!("{}:{}: unclosed link", self.path.display(), i + 1));
                let target = after[..end].split_whitespace().next().unwrap_or("");
                out.push((i + 1, target.trim_matches(['<', '>']).to_string()));
                rest = &after[end..];
            }
        }
        out
    }

    fn name(&self) -> String {
        self.path
            .strip_prefix(root())
            .unwrap()
            .display()
            .to_string()
    }
}

/// `text` with every inline code span (a run of backticks up to the next run of the same
/// length) replaced by spaces, newlines kept.
fn blank_code_spans(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = chars.clone();
    let run = |at: usize| chars[at..].iter().take_while(|c| **c == '`').count();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            i += 1;
            continue;
        }
        let n = run(i);
        let mut j = i + n;
        let close = loop {
            if j >= chars.len() {
                break None;
            }
            if chars[j] == '`' {
                let m = run(j);
                if m == n {
                    break Some(j);
                }
                j += m;
            } else {
                j += 1;
            }
        };
        match close {
            Some(j) => {
                for c in &mut out[i..j + n] {
                    if *c != '\n' {
                        *c = ' ';
                    }
                }
                i = j + n;
            }
            None => i += n,
        }
    }
    out.into_iter().collect()
}

/// The title of an ATX heading line.
fn heading(line: &str) -> Option<&str> {
    let hashes = line.chars().take_while(|c| *c == '#').count();
    (1..=6).contains(&hashes).then_some(())?;
    line[hashes..].strip_prefix(' ').map(str::trim)
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation other than `-` and
/// `_` dropped.
fn slug(title: &str) -> String {
    title
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn slugs_are_githubs() {
    assert_eq!(
        slug("Where the hooks' output is"),
        "where-the-hooks-output-is"
    );
    assert_eq!(
        slug("nginx-reload with `keepalive_min_timeout` (nginx ≥ 1.27.4)"),
        "nginx-reload-with-keepalive_min_timeout-nginx--1274"
    );
    assert_eq!(slug("`DEPLOYMENT_ID`"), "deployment_id");
    assert_eq!(
        blank_code_spans("a `b](c)` d ``e`f`` g"),
        "a         d         g"
    );
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let root = root().canonicalize().unwrap();
    let files = markdown_files();
    assert!(files.len() >= 8, "found only {files:?}");
    let mut broken = Vec::new();
    let mut checked = 0;
    for path in &files {
        let doc = Doc::read(path);
        for (line, target) in doc.links() {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let dest = if file.is_empty() {
                path.clone()
            } else {
                path.parent().unwrap().join(file)
            };
            let at = format!("{}:{line}: ({target})", doc.name());
            let Ok(dest) = dest.canonicalize() else {
                broken.push(format!("{at}: no such file"));
                continue;
            };
            if !dest.starts_with(&root) {
                broken.push(format!("{at}: outside the repository"));
                continue;
            }
            if anchor.is_empty() {
                continue;
            }
            if dest.extension().is_none_or(|e| e != "md") {
                broken.push(format!("{at}: an anchor into a file that is not Markdown"));
            } else if !Doc::read(&dest).anchors().contains(anchor) {
                broken.push(format!("{at}: no heading with that anchor"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(checked > 40, "only {checked} relative links found");
}

/// The shell command lines of a document's `sh` blocks (comments and prompts dropped).
fn commands(doc: &Doc) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for block in doc.blocks.iter().filter(|b| b.lang == "sh") {
        for (i, line) in block.lines.iter().enumerate() {
            let command = line.split(" #").next().unwrap().trim();
            if !command.is_empty() && !command.starts_with('#') {
                out.push((block.line + 1 + i, command.to_string()));
            }
        }
    }
    out
}

/// The command `.ci/run` ends with: the suite as CI runs it.
fn ci_test_command() -> String {
    let run = fs::read_to_string(root().join(".ci/run")).unwrap();
    run.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap()
        .to_string()
}

#[test]
fn the_documented_test_command_is_what_ci_runs() {
    let ci = ci_test_command();
    assert_eq!(ci, "cargo test --workspace");
    for name in ["README.md", "docs/development.md"] {
        let doc = Doc::read(&root().join(name));
        let tests: Vec<_> = commands(&doc)
            .into_iter()
            .filter(|(_, c)| c.starts_with("cargo test"))
            .collect();
        assert!(!tests.is_empty(), "{name} gives no test command");
        for (line, command) in &tests {
            assert_eq!(command, &ci, "{name}:{line}");
        }
        // Under its Test heading: the first `cargo test` comes after `## Test` and before the
        // next section.
        let lines: Vec<&str> = doc.prose.lines().collect();
        let section = lines
            .iter()
            .position(|l| *l == "## Test")
            .unwrap_or_else(|| panic!("{name}: no Test section"));
        let next = (section + 1..lines.len())
            .find(|i| lines[*i].starts_with("## "))
            .unwrap_or(lines.len());
        let first = tests[0].0 - 1;
        assert!(
            (section..next).contains(&first),
            "{name}: the test command is not in its Test section"
        );
    }
}

/// Packages of the workspace and their binaries, from `Cargo.toml` files.
fn workspace() -> Vec<(String, Vec<String>)> {
    let mut manifests = vec![root().join("Cargo.toml")];
    for entry in fs::read_dir(root().join("crates")).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        if manifest.is_file() {
            manifests.push(manifest);
        }
    }
    manifests
        .iter()
        .map(|manifest| {
            let toml = fs::read_to_string(manifest).unwrap();
            let names: Vec<String> = toml
                .lines()
                .filter_map(|l| l.strip_prefix("name = \""))
                .map(|n| n.trim_end_matches('"').to_string())
                .collect();
            let mut bins: Vec<String> = names[1..].to_vec();
            if manifest.parent().unwrap().join("src/main.rs").is_file() {
                bins.push(names[0].clone());
            }
            (names[0].clone(), bins)
        })
        .collect()
}

fn hooks() -> [&'static Hook; 4] {
    [
        &commands::stop::HOOK,
        &commands::start::HOOK,
        &commands::health::HOOK,
        &commands::switch::HOOK,
    ]
}

#[test]
fn commands_in_code_blocks_name_what_exists() {
    let packages = workspace();
    let xtask = fs::read_to_string(root().join("crates/xtask/src/main.rs")).unwrap();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for path in markdown_files() {
        let doc = Doc::read(&path);
        for (line, command) in commands(&doc) {
            let at = format!("{}:{line}: {command}", doc.name());
            let words: Vec<&str> = command.split_whitespace().collect();
            let words = if words.first() == Some(&"sudo") {
                &words[1..]
            } else {
                &words[..]
            };
            if words.first() == Some(&"cargo") {
                checked += 1;
                let flag = |name: &str| words.iter().position(|w| *w == name).map(|i| words[i + 1]);
                let package = flag("-p");
                let bins = package.map(|p| packages.iter().find(|(name, _)| name == p));
                match (package, bins) {
                    (Some(p), Some(None)) => wrong.push(format!("{at}: no package {p}")),
                    (_, Some(Some((_, bins)))) => {
                        if let Some(bin) = flag("--bin").filter(|b| !bins.iter().any(|x| x == b)) {
                            wrong.push(format!("{at}: no binary {bin}"));
                        }
                    }
                    _ => {}
                }
                if package == Some("xtask") {
                    let sub = flag("--").unwrap_or("");
                    if !xtask.contains(&format!("cargo run -p xtask -- {sub}")) {
                        wrong.push(format!("{at}: xtask has no subcommand {sub}"));
                    }
                }
            }
            let program = words.first().map(|w| w.rsplit('/').next().unwrap());
            if let Some(hook) = hooks().into_iter().find(|h| Some(h.name) == program) {
                checked += 1;
                for flag in words[1..].iter().filter(|w| w.starts_with("--")) {
                    let flag = flag.split('=').next().unwrap();
                    let known = ["--config", "--help", "--version"].contains(&flag)
                        || (flag == "--port" && hook.takes_port)
                        || hook.switches.iter().any(|(s, _)| *s == flag);
                    if !known {
                        wrong.push(format!("{at}: {} has no flag {flag}", hook.name));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "commands that do not run:\n{}",
        wrong.join("\n")
    );
    assert!(checked >= 10, "only {checked} commands checked");
}

/// The Korean page for the book's readers is linked from README's first lines, and its
/// commands for operating by hand are README's (a translation that lags gets caught here).
#[test]
fn the_korean_page_is_linked_first_and_runs_readmes_commands() {
    let readme = Doc::read(&root().join("README.md"));
    let top: Vec<&str> = readme.prose.lines().take(5).collect();
    assert!(
        top.iter().any(|l| l.contains("](docs/ko.md)")),
        "README's first lines do not link docs/ko.md: {top:?}"
    );
    let korean = Doc::read(&root().join("docs/ko.md"));
    let theirs: Vec<String> = commands(&readme).into_iter().map(|(_, c)| c).collect();
    let ours = commands(&korean);
    assert!(ours.len() >= 5, "docs/ko.md shows {} commands", ours.len());
    for (line, command) in ours {
        assert!(
            theirs.contains(&command),
            "docs/ko.md:{line}: `{command}` is not among README's commands"
        );
    }
}
