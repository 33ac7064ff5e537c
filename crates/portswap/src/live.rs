//! `<state.dir>/live/`: the one stable place to operate by hand. After every switch (a
//! deployment's, a rollback, the watch's way back) it holds the `switch` executable of the
//! run that switched and the portswap.yml of the deployment whose app is now live, so
//! `sudo <state.dir>/live/switch --status` and `--rollback` always use the live
//! deployment's configuration (the binary finds the file beside itself). `start` keeps a
//! copy of each slot's configuration there (`config-<port>.yml`) for that: the revision
//! directory a deployment ran from holds whatever the latest revision brought, failed or not.
//! The copies hold `app.env` as the configuration does: mode 0600, like the unit
//! environment files under `units/`.
//!
//! Keeping these copies never fails a hook: a problem is a warning.

use std::fs;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::fsio;
use crate::state::StateDir;

/// The directory under the state directory.
pub const DIR: &str = "live";

/// The largest configuration copied (the parser refuses anything larger anyway).
const MAX_CONFIG: u64 = 64 * 1024;

/// `<state>/live/switch`: the command to operate by hand.
pub fn command(state: &StateDir) -> PathBuf {
    state.path().join(DIR).join("switch")
}

fn slot_config(state: &StateDir, port: u16) -> PathBuf {
    state.path().join(DIR).join(format!("config-{port}.yml"))
}

/// Keeps the configuration `start` ran with for the app it started on `port`.
pub fn keep_slot_config(state: &StateDir, port: u16, config: &Config) {
    let kept = fsio::ensure_dir(&state.path().join(DIR), 0o755)
        .and_then(|()| fsio::read_small(&config.path, MAX_CONFIG))
        .and_then(|text| match text {
            Some(text) => fsio::write_atomic(&slot_config(state, port), &text, 0o600),
            None => Ok(()),
        });
    if let Err(e) = kept {
        log::warn!("could not keep the configuration of port {port} for {DIR}/: {e}");
    }
}

/// After a switch to `port`: `live/portswap.yml` becomes the configuration its app was
/// started with (this run's when there is no copy, as after an upgrade from a portswap that
/// kept none), and `live/switch` this executable.
pub fn refresh(state: &StateDir, port: u16, config: &Config) {
    if let Err(e) = try_refresh(state, port, config) {
        log::warn!(
            "could not refresh {}: {e}; operate by hand with the hooks of the live revision",
            state.path().join(DIR).display()
        );
    }
}

fn try_refresh(state: &StateDir, port: u16, config: &Config) -> crate::error::Result<()> {
    let dir = state.path().join(DIR);
    fsio::ensure_dir(&dir, 0o755)?;
    let text = match fsio::read_small(&slot_config(state, port), MAX_CONFIG)? {
        Some(text) => text,
        None => fsio::read_small(&config.path, MAX_CONFIG)?.unwrap_or_default(),
    };
    fsio::write_atomic(&dir.join("portswap.yml"), &text, 0o600)?;
    // The running executable itself, even when its file was replaced meanwhile.
    let exe = Path::new("/proc/self/exe");
    let target = dir.join("switch");
    let binary = fs::read(exe).map_err(|e| crate::Error::io("cannot read", exe, e))?;
    if fs::read(&target).ok().as_deref() != Some(binary.as_slice()) {
        fsio::write_atomic(&target, &binary, 0o755)?;
    }
    Ok(())
}
