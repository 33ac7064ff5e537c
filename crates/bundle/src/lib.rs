//! `portswap-bundle`: builds a CodeDeploy revision around portswap's hooks, refusing (one
//! line, non-zero exit) anything that would fail on the instance: a hook binary that is not
//! static, an appspec naming a file the revision lacks, an invalid portswap.yml, or a wait in
//! portswap.yml that does not fit the appspec timeout of the hook that performs it.
//!
//! - [`cli`]: flags, `--help`, `--version`, the verdict line.
//! - [`revision`]: lays out and checks the revision directory.
//! - [`checks`]: waits within timeouts, appspec references.
//! - [`pack`]: `.zip` and `.tgz` with Unix modes.
//! - [`elf`]: is an executable static?
//! - [`error`]: what it refuses, and the exit codes.

pub mod checks;
pub mod cli;
pub mod elf;
pub mod error;
pub mod pack;
pub mod revision;

use std::fs;
use std::path::{Path, PathBuf};

use portswap::Error as PortswapError;

use crate::error::Result;

pub use revision::Inputs;

/// What [`bundle`] produced.
#[derive(Debug)]
pub struct Bundle {
    /// The unpacked revision.
    pub dir: PathBuf,
    /// `portswap-revision.zip`.
    pub zip: PathBuf,
    /// `portswap-revision.tgz`.
    pub tgz: PathBuf,
}

/// Assembles the revision into `out/revision/` (replacing it) and packs it beside as
/// `portswap-revision.zip` and `portswap-revision.tgz`. On a refusal nothing is left in
/// `out` that could be mistaken for a good revision.
pub fn bundle(inputs: &Inputs, out: &Path) -> Result<Bundle> {
    let bundle = Bundle {
        zip: out.join("portswap-revision.zip"),
        tgz: out.join("portswap-revision.tgz"),
        dir: out.join("revision"),
    };
    for old in [&bundle.zip, &bundle.tgz] {
        if old.exists() {
            fs::remove_file(old).map_err(|e| PortswapError::io("remove", old, e))?;
        }
    }
    let dir = &bundle.dir;
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|e| PortswapError::io("remove", dir, e))?;
    }
    fs::create_dir_all(dir).map_err(|e| PortswapError::io("create", dir, e))?;
    if let Err(e) = revision::assemble(inputs, dir) {
        let _ = fs::remove_dir_all(dir);
        return Err(e);
    }
    pack::zip(dir, &bundle.zip)?;
    pack::tgz(dir, &bundle.tgz)?;
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Read;

    use portswap::budget::HOOKS;

    use crate::elf::Linking;

    fn repository() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// A fake hooks directory: a bare 64-bit ELF header without program headers (static)
    /// under the four hook names.
    fn fake_hooks(dir: &Path) {
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        for hook in HOOKS {
            fs::write(dir.join(hook), &elf).unwrap();
        }
    }

    fn inputs(tmp: &Path) -> Inputs {
        let hooks = tmp.join("bin");
        fs::create_dir_all(&hooks).unwrap();
        fake_hooks(&hooks);
        let jar = tmp.join("app-1.0.jar");
        fs::write(&jar, b"PK fake jar").unwrap();
        Inputs {
            appspec: repository().join("appspec.yml"),
            config: repository().join("hooks/portswap.yml"),
            hooks,
            artifacts: vec![jar],
        }
    }

    #[test]
    fn bundles_keep_modes_in_both_archives() {
        let tmp = tempfile::tempdir().unwrap();
        let inputs = inputs(tmp.path());
        let bundle = bundle(&inputs, &tmp.path().join("out")).unwrap();
        for name in ["appspec.yml", "hooks/portswap.yml", "app-1.0.jar"] {
            assert!(bundle.dir.join(name).is_file(), "{name}");
        }
        let mut zip = zip::ZipArchive::new(File::open(&bundle.zip).unwrap()).unwrap();
        let mode = |zip: &mut zip::ZipArchive<File>, name| {
            zip.by_name(name).unwrap().unix_mode().unwrap() & 0o777
        };
        assert_eq!(mode(&mut zip, "hooks/switch"), 0o755);
        assert_eq!(mode(&mut zip, "appspec.yml"), 0o644);
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(
            File::open(&bundle.tgz).unwrap(),
        ));
        let mut modes = std::collections::BTreeMap::new();
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            modes.insert(path.clone(), entry.header().mode().unwrap());
            if path == "appspec.yml" {
                let mut text = String::new();
                entry.read_to_string(&mut text).unwrap();
                assert_eq!(text, fs::read_to_string(&inputs.appspec).unwrap());
            }
        }
        assert_eq!(modes["hooks/start"] & 0o777, 0o755);
        assert_eq!(modes["app-1.0.jar"] & 0o777, 0o644);
        assert!(modes.contains_key("hooks"));
    }

    #[test]
    fn refusals_name_the_files_the_user_passed() {
        let tmp = tempfile::tempdir().unwrap();
        let base = inputs(tmp.path());
        let out = tmp.path().join("out");
        let refuse = |inputs: &Inputs| {
            let err = bundle(inputs, &out).unwrap_err();
            assert!(!out.join("revision").exists() && !out.join("portswap-revision.zip").exists());
            (err.exit_code(), err.to_string())
        };

        // A dynamically linked hook.
        if let Ok(Linking::Dynamic(_)) = elf::linking_of(Path::new("/bin/sh")) {
            fs::copy("/bin/sh", base.hooks.join("health")).unwrap();
            let (code, err) = refuse(&base);
            assert_eq!(code, 2);
            assert!(err.contains("/health is not static"), "{err}");
            fake_hooks(&base.hooks);
        }

        // appspec naming a script that is not there.
        let appspec = tmp.path().join("my-appspec.yml");
        let text = fs::read_to_string(&base.appspec)
            .unwrap()
            .replace("hooks/switch", "hooks/swap");
        fs::write(&appspec, text).unwrap();
        let broken = Inputs {
            appspec: appspec.clone(),
            ..base.clone()
        };
        assert_eq!(
            refuse(&broken).1,
            format!(
                "{}: ValidateService runs hooks/swap, which is not in the revision",
                appspec.display()
            )
        );

        // An invalid portswap.yml: the message names the file given, not hooks/portswap.yml.
        let config = tmp.path().join("deploy").join("my-portswap.yml");
        fs::create_dir_all(config.parent().unwrap()).unwrap();
        let text = fs::read_to_string(&base.config).unwrap();
        fs::write(&config, text.replace("grace: 20s", "grace: forever")).unwrap();
        let invalid = Inputs {
            config: config.clone(),
            ..base.clone()
        };
        let (code, err) = refuse(&invalid);
        assert_eq!(code, 2);
        assert!(
            err.starts_with(&config.display().to_string()) && err.contains("stop.grace"),
            "{err}"
        );

        // A health wait longer than the hook's timeout.
        fs::write(&config, text.replace("timeout: 90s", "timeout: 150s")).unwrap();
        let (_, err) = refuse(&invalid);
        assert!(
            err.starts_with(
                "hooks/health in ValidateService may wait state.lock_wait 30s + systemctl calls \
                 (3s each) 3s + health.timeout 150s"
            ),
            "{err}"
        );
        assert!(
            err.ends_with(&format!("lower the waits in {}", config.display())),
            "{err}"
        );

        // No hooks where they were looked for.
        let elsewhere = Inputs {
            hooks: tmp.path().join("nowhere"),
            ..base.clone()
        };
        assert!(refuse(&elsewhere).1.contains("pass --hooks DIR"));
    }

    #[test]
    fn the_repository_files_pass_the_checks() {
        let root = repository();
        let spec = portswap_appspec::AppSpec::read(&root.join("appspec.yml")).unwrap();
        let config = root.join("hooks/portswap.yml");
        let config =
            portswap::config::Config::parse(&fs::read_to_string(&config).unwrap(), &config)
                .unwrap();
        checks::check_timeouts(&spec, &config, &root.join("appspec.yml")).unwrap();
        assert!(checks::unused_hooks(&spec).is_empty());
    }
}
