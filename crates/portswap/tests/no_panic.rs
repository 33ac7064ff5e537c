//! Property tests: the configuration loader and the include parser never panic, whatever
//! they are given, and a rendered include always reads back as its port.

use std::path::Path;

use portswap::config::Config;
use portswap::template::{Template, DEFAULT};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn config_parse_never_panics(text in "\\PC*") {
        let _ = Config::parse(&text, Path::new("/etc/portswap/portswap.yml"));
    }

    #[test]
    fn config_parse_of_yaml_like_text_never_panics(
        key in prop::sample::select(vec!["slots", "app", "health", "nginx", "stop", "state", "port", "command"]),
        value in "[ -~\\n]{0,40}",
    ) {
        let text = format!("app:\n  command: [x]\n{key}: {value}\n");
        let _ = Config::parse(&text, Path::new("/p.yml"));
    }

    #[test]
    fn include_parse_never_panics(text in "\\PC*") {
        let template = Template::new(DEFAULT.to_string()).unwrap();
        let _ = template.parse_port(&text);
    }

    #[test]
    fn rendered_include_reads_back(port in 1u16.., pad in "[ \\t\\n]{0,3}") {
        let template = Template::new(DEFAULT.to_string()).unwrap();
        let text = format!("{pad}{}{pad}", template.render(port));
        prop_assert_eq!(template.parse_port(&text), Ok(port));
    }

    #[test]
    fn include_with_changed_text_is_refused(port in 1u16.., junk in "[a-z;]{1,5}") {
        let template = Template::new(DEFAULT.to_string()).unwrap();
        let text = format!("{}{junk}", template.render(port).trim_end());
        prop_assert!(template.parse_port(&text).is_err());
    }
}
