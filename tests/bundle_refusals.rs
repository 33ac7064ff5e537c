//! portswap-bundle refuses what it cannot vouch for (issue 17 item 8): an appspec location
//! outside the revision, an artifact that would replace the checked hooks or portswap.yml,
//! two artifacts with one file name; and it warns (item 7) about a pattern matching two jars
//! and says what only the instance can check. The real bundle over the repository's
//! appspec.yml and hooks/portswap.yml with the workspace's static hooks.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use portswap_testkit::bins;

/// A project directory: the repository's appspec.yml and portswap.yml, `files` created.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new(
        edit_appspec: impl FnOnce(String) -> String,
        edit_config: impl FnOnce(String) -> String,
    ) -> Project {
        bins::ensure_built();
        let dir = tempfile::tempdir().unwrap();
        let root = bins::workspace_root();
        let appspec = fs::read_to_string(root.join("appspec.yml")).unwrap();
        fs::write(dir.path().join("appspec.yml"), edit_appspec(appspec)).unwrap();
        let config = fs::read_to_string(root.join("hooks/portswap.yml")).unwrap();
        fs::write(dir.path().join("portswap.yml"), edit_config(config)).unwrap();
        Project { dir }
    }

    fn file(&self, relative: &str) -> PathBuf {
        let path = self.dir.path().join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, "PK").unwrap();
        path
    }

    fn bundle(&self, artifacts: &[PathBuf]) -> Output {
        Command::new(bins::bin("portswap-bundle"))
            .args(["--hooks"])
            .arg(bins::bin_dir())
            .args(artifacts)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }

    fn packed(&self) -> bool {
        self.dir
            .path()
            .join("build/portswap/portswap-revision.zip")
            .exists()
            || self.dir.path().join("build/portswap/revision").exists()
    }
}

fn verdict(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr.trim_end().lines().last().unwrap_or("").to_string()
}

fn refused(project: &Project, artifacts: &[PathBuf], needle: &str) {
    let out = project.bundle(artifacts);
    let line = verdict(&out);
    assert_eq!(out.status.code(), Some(2), "{line}");
    assert!(
        line.starts_with("portswap bundle: FAILED (exit 2): "),
        "{line}"
    );
    assert!(line.contains(needle), "wanted `{needle}` in: {line}");
    assert!(!project.packed(), "nothing packed: {line}");
}

#[test]
fn an_appspec_location_outside_the_revision_is_refused() {
    let project = Project::new(
        |a| a.replace("location: hooks/switch", "location: ../../../usr/bin/env"),
        |c| c,
    );
    let jar = project.file("app.jar");
    refused(
        &project,
        &[jar],
        "appspec.yml: ValidateService runs ../../../usr/bin/env, which points outside the revision",
    );
    let project = Project::new(|a| a.replace("source: /", "source: ../etc"), |c| c);
    let jar = project.file("app.jar");
    refused(
        &project,
        &[jar],
        "files source ../etc points outside the revision",
    );
}

#[test]
fn artifacts_never_replace_the_hooks_or_each_other() {
    // `app.artifacts: ["*"]` finds artifacts in hooks/: one named like a hook would replace
    // the checked binary, one named portswap.yml the checked configuration.
    let all = |c: String| c.replace("artifacts: [\"../*.jar\"]", "artifacts: [\"*\"]");
    for name in ["switch", "portswap.yml"] {
        let project = Project::new(|a| a, all);
        let artifact = project.file(&format!("out/{name}"));
        refused(
            &project,
            &[artifact],
            &format!("would replace hooks/{name} of the revision (portswap's own file)"),
        );
    }
    // Two artifacts with one file name would become one file.
    let project = Project::new(|a| a, |c| c);
    let first = project.file("a/app.jar");
    let second = project.file("b/app.jar");
    refused(
        &project,
        &[first.clone(), second],
        &format!(
            "has the file name of {}: both would be app.jar",
            first.display()
        ),
    );
}

#[test]
fn two_jars_for_one_pattern_are_warned_about_and_the_unchecked_is_said() {
    let project = Project::new(|a| a, |c| c);
    let boot = project.file("build/libs/app-0.1.jar");
    let plain = project.file("build/libs/app-0.1-plain.jar");
    let out = project.bundle(&[boot, plain]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "app.artifacts pattern ../*.jar matches 2 artifacts (app-0.1.jar, app-0.1-plain.jar) \
             (a -plain.jar is Gradle's jar without dependencies, not the app)"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "not checked here (only the instance can tell): that app.user `ec2-user` exists, \
             that `java` (app.command) runs there, that nginx includes \
             /etc/nginx/conf.d/service-url.inc and writes its pid to /run/nginx.pid"
        ),
        "{stderr}"
    );
    assert!(Path::new(
        &project
            .dir
            .path()
            .join("build/portswap/portswap-revision.zip")
    )
    .is_file());
}
