//! The two Spring Boot configurations (issue 17 item 4): `hooks/portswap.yml` (the
//! repository's revision layout) and `examples/spring-boot/portswap.yml` (a project's) are
//! the same configuration, probe what Spring Boot's actuator serves, let the app start
//! without the instance's extra properties file, and mark every value a user must set,
//! the nginx paths included.

use std::collections::BTreeSet;
use std::path::Path;

use portswap::config::Config;
use portswap_testkit::bins;

const FILES: [&str; 2] = ["hooks/portswap.yml", "examples/spring-boot/portswap.yml"];

fn text(file: &str) -> String {
    std::fs::read_to_string(bins::workspace_root().join(file)).unwrap()
}

/// What each `# CHANGE` marks: the line's own content, or for a comment line, the next line
/// that is not a comment.
fn marked(text: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = BTreeSet::new();
    for (i, line) in lines.iter().enumerate() {
        if !line.contains("# CHANGE") {
            continue;
        }
        let own = line[..line.find('#').unwrap()].trim();
        let item = if own.is_empty() {
            lines[i + 1..]
                .iter()
                .map(|l| l.trim())
                .find(|l| !l.starts_with('#'))
                .unwrap_or("")
        } else {
            own
        };
        found.insert(item.to_string());
    }
    found
}

#[test]
fn both_spring_boot_configurations_are_the_same() {
    let parse = |file: &str| {
        Config::parse(&text(file), Path::new("/etc/portswap/portswap.yml"))
            .unwrap_or_else(|e| panic!("{file}: {e}"))
    };
    let [hooks, example] = FILES.map(parse);
    assert_eq!(
        format!("{hooks:#?}"),
        format!("{example:#?}"),
        "{} and {} differ",
        FILES[0],
        FILES[1]
    );
    assert_eq!(
        marked(&text(FILES[0])),
        marked(&text(FILES[1])),
        "the values marked # CHANGE differ"
    );
}

#[test]
fn the_spring_boot_configuration_fits_spring_boot_and_marks_what_to_change() {
    let config = Config::parse(&text(FILES[1]), Path::new("/etc/portswap/portswap.yml")).unwrap();
    // spring-boot-starter-actuator (the example's build.gradle) serves /actuator/health.
    assert_eq!(config.health.path, "/actuator/health");
    assert!(text("examples/spring-boot/build.gradle").contains("spring-boot-starter-actuator"));
    // Extra properties on the instance are optional: a missing file does not stop Spring.
    let properties: Vec<&String> = config
        .app
        .command
        .iter()
        .filter(|a| a.starts_with("-Dspring.config"))
        .collect();
    assert_eq!(properties.len(), 1, "{:?}", config.app.command);
    assert!(
        properties[0].starts_with("-Dspring.config.additional-location=optional:"),
        "{}",
        properties[0]
    );
    let marks = marked(&text(FILES[1]));
    for needed in [
        "- java",
        "- -Xmx512m",
        "- -Dspring.config.additional-location=",
        "user: ",
        "path: /actuator/health",
        "body_contains: UP",
        "include: /etc/nginx/conf.d/service-url.inc",
        "pid_file: /run/nginx.pid",
    ] {
        assert!(
            marks.iter().any(|m| m.starts_with(needed)),
            "`{needed}` is not marked # CHANGE: {marks:#?}"
        );
    }
}

/// The example directory has no Gradle wrapper (its jar is not needed to check portswap), so
/// its README must not promise that it builds as is and must say how to get one (issue 17
/// item 9).
#[test]
fn the_example_readme_says_how_it_builds() {
    let readme = text("examples/spring-boot/README.md");
    let has_wrapper = bins::workspace_root()
        .join("examples/spring-boot/gradlew")
        .is_file();
    if !has_wrapper {
        assert!(!readme.contains("builds a jar as is"), "{readme}");
        assert!(readme.contains("no Gradle wrapper") && readme.contains("gradle wrapper"));
    }
    // The deploy workflow builds with the project's wrapper.
    assert!(text("examples/github-actions/deploy.yml").contains("./gradlew"));
}
