//! The configuration reference (`docs/configuration.md`) against the code that reads
//! `portswap.yml`: every key the parser accepts has a row, every row names a key the parser
//! accepts, and each documented default is the code's: a file that sets the key to the
//! documented value reads exactly as a file that leaves it out. README's table of the keys
//! people change agrees with the reference.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use portswap::config::Config;
use serde_yaml::{Mapping, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One row of a key table: the key and its default cell.
struct Row {
    key: String,
    default: String,
}

/// The rows of the tables in `file` whose first column is a key in backticks.
fn rows(file: &str) -> Vec<Row> {
    let text = fs::read_to_string(root().join(file)).unwrap();
    text.lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            Row {
                key: cells[0].trim_matches('`').to_string(),
                default: cells[1].to_string(),
            }
        })
        .collect()
}

/// The first code span of a cell, if it has one.
fn code(cell: &str) -> Option<&str> {
    let start = cell.find('`')? + 1;
    let len = cell[start..].find('`')?;
    Some(&cell[start..start + len])
}

const PATH: &str = "/etc/portswap/portswap.yml";

/// The smallest valid file: only the key without a default.
fn minimal() -> Value {
    serde_yaml::from_str("app: { command: [app] }").unwrap()
}

/// The file a key's default is read against: the minimal one, plus the key it depends on.
fn base_for(key: &str) -> Value {
    match key {
        // The 5xx threshold exists only with the log it is read from.
        "watch.max_5xx_percent" | "watch.min_requests" | "watch.window" => with(
            minimal(),
            "watch.access_log",
            "/var/log/nginx/portswap-watch.log".into(),
        ),
        _ => minimal(),
    }
}

/// `base` with `key` (`section.field`, or a top-level key) set to `value`.
fn with(mut base: Value, key: &str, value: Value) -> Value {
    let (section, field) = match key.split_once('.') {
        Some((s, f)) => (s, Some(f)),
        None => (key, None),
    };
    let map = base.as_mapping_mut().unwrap();
    match field {
        None => {
            map.insert(section.into(), value);
        }
        Some(field) => {
            let entry = map
                .entry(section.into())
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            entry.as_mapping_mut().unwrap().insert(field.into(), value);
        }
    }
    base
}

fn read(doc: &Value) -> Result<Config, String> {
    Config::parse(&serde_yaml::to_string(doc).unwrap(), Path::new(PATH)).map_err(|e| e.to_string())
}

/// How the code reads a file; the whole checked configuration, field by field.
fn shown(config: &Config) -> String {
    format!("{config:#?}")
}

/// The keys the parser accepts in `section` (`None`: the top level), as it lists them when
/// it meets a key it does not know.
fn accepted(section: Option<&str>) -> Vec<String> {
    let unknown = Value::from(1);
    let doc = match section {
        None => with(minimal(), "no_such_key", unknown),
        Some(s) => with(minimal(), &format!("{s}.no_such_key"), unknown),
    };
    let error = read(&doc).expect_err("an unknown key is refused");
    // serde: "unknown field `x`, expected `a`", "... `a` or `b`", "... one of `a`, `b`, `c`".
    let listed = error
        .split_once("unknown field `no_such_key`, expected ")
        .unwrap_or_else(|| panic!("{section:?}: the parser does not list its keys: {error}"))
        .1;
    listed
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn every_key_the_code_reads_is_documented_and_nothing_else() {
    let documented: BTreeSet<String> = rows("docs/configuration.md")
        .into_iter()
        .map(|r| r.key)
        .collect();
    let mut code = BTreeSet::new();
    for section in accepted(None) {
        if section == "slots" {
            // Documented as a whole: a list of two `{port, profile}`.
            code.insert(section);
            continue;
        }
        for field in accepted(Some(&section)) {
            code.insert(format!("{section}.{field}"));
        }
    }
    assert!(code.len() > 20, "{code:?}");
    let undocumented: Vec<_> = code.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&code).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/configuration.md lacks {undocumented:?} and documents keys the code does not \
         read: {unknown:?}"
    );
}

#[test]
fn every_documented_default_is_the_codes() {
    let rows = rows("docs/configuration.md");
    let state_dir = rows
        .iter()
        .find(|r| r.key == "state.dir")
        .and_then(|r| code(&r.default))
        .expect("state.dir has a default")
        .to_string();
    let mut wrong = Vec::new();
    for row in &rows {
        let values: Vec<Value> = match code(&row.default) {
            // A value: as YAML (a list, a number, a word), or as the string it reads as.
            Some(value) => {
                let value = value.replace("<state.dir>", &state_dir);
                let mut candidates = vec![Value::String(value.clone())];
                if let Ok(parsed) = serde_yaml::from_str::<Value>(&value) {
                    candidates.insert(0, parsed);
                }
                candidates
            }
            // Without it the file is incomplete.
            None if row.default == "required" => {
                let mut doc = minimal();
                let app = doc.get_mut("app").unwrap().as_mapping_mut().unwrap();
                let field = row.key.split_once('.').unwrap().1;
                app.remove(field);
                match read(&doc) {
                    Err(e) if e.contains(field) => {}
                    other => wrong.push(format!("{}: required, yet {other:?}", row.key)),
                }
                continue;
            }
            // "none", "any 2xx", "none: SIGHUP to the master": not set at all.
            None => vec![Value::Null],
        };
        let default = shown(&read(&base_for(&row.key)).unwrap());
        let same = values.into_iter().any(|value| {
            let doc = with(base_for(&row.key), &row.key, value);
            read(&doc).is_ok_and(|c| shown(&c) == default)
        });
        if !same {
            wrong.push(format!(
                "{}: documented default {} is not what the code uses",
                row.key, row.default
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_wrong_default_in_the_reference_would_be_caught() {
    // The comparison sees a value that differs from the code's default.
    let default = shown(&read(&minimal()).unwrap());
    for (key, value) in [
        ("health.timeout", "30s"),
        ("app.keep_releases", "4"),
        ("nginx.pid_file", "/run/other.pid"),
        ("switch.service_port", "8090"),
        ("app.user", "nobody"),
    ] {
        let doc = with(minimal(), key, serde_yaml::from_str(value).unwrap());
        assert_ne!(shown(&read(&doc).unwrap()), default, "{key}: {value}");
    }
}

#[test]
fn readme_agrees_with_the_reference() {
    let reference = rows("docs/configuration.md");
    let readme = rows("README.md");
    assert!(
        readme.len() >= 5,
        "README's table of the keys people change"
    );
    for row in readme {
        let same = reference.iter().find(|r| r.key == row.key);
        assert_eq!(
            same.map(|r| &r.default),
            Some(&row.default),
            "README's default for {} differs from docs/configuration.md",
            row.key
        );
    }
}
