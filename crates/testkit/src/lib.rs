//! Test and benchmark support for portswap. Not part of the product.
//!
//! - [`bins`]: find (and build once) the workspace executables.
//! - [`net`]: free ports, a tiny blocking HTTP GET client, polling with a deadline.
//! - [`nginx`]: a private nginx per test, configured like the legacy deployment.
//! - [`elf`]: is an executable static (no ELF interpreter)?
//! - [`hooks`]: run the hook binaries as the agent does; read back the include and records.
//! - [`fixture`]: run `fixture-app` (the stand-in application) as a child.
//! - [`agent`]: an emulation of the CodeDeploy agent running a revision's hooks.
//! - [`supervised`]: a whole host (nginx unit, slots, hooks) inside such a systemd.
//! - [`systemd`]: a real systemd as PID 1 of private namespaces, booted and rebooted at will.

pub mod agent;
pub mod bins;
pub mod elf;
pub mod fixture;
pub mod hooks;
pub mod net;
pub mod nginx;
pub mod supervised;
pub mod systemd;

pub use bins::{bin, ensure_built};
pub use fixture::FixtureApp;
pub use net::{free_port, http_get, port_is_listening, wait_until, Response};
pub use nginx::NginxSandbox;
