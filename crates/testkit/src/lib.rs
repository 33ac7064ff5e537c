//! Test and benchmark support for portswap. Not part of the product.
//!
//! - [`bins`]: find (and build once) the workspace executables.
//! - [`net`]: free ports, a tiny blocking HTTP GET client, polling with a deadline.
//! - [`nginx`]: a private nginx per test, configured like the legacy deployment.
//! - [`hooks`]: run the hook binaries as the agent does; read back the include and records.
//! - [`fixture`]: run `fixture-app` (the stand-in application) as a child.
//! - [`agent`]: an emulation of the CodeDeploy agent running a revision's hooks.
//! - [`netns`]: a private network namespace per test (own ports and nftables ruleset).
//! - [`skip`]: report a test branch the machine cannot run (visible; a failure under CI).
//! - [`supervised`]: a whole host (nginx unit, slots, hooks) inside such a systemd.
//! - [`systemd`]: a real systemd as PID 1 of private namespaces, booted and rebooted at will.
//! - [`tools`]: the programs the suite runs (nft, sudo, ...), each test skipping visibly without.

pub mod agent;
pub mod bins;
pub mod fixture;
pub mod hooks;
pub mod net;
pub mod netns;
pub mod nginx;
pub mod skip;
pub mod supervised;
pub mod systemd;
pub mod tools;

pub use bins::{bin, ensure_built};
pub use fixture::FixtureApp;
pub use net::{free_port, http_get, port_is_listening, wait_until, Response};
pub use nginx::NginxSandbox;
pub use skip::skip;
