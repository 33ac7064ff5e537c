//! portswap: zero-downtime deployments behind nginx on one host, by alternating the app
//! between two ports. The hook binaries `stop`, `start`, `health` and `switch` are thin
//! wrappers over [`commands`]; everything else here is one concern per module.

pub mod applog;
pub mod bounded;
pub mod budget;
pub mod cgroups;
pub mod cli;
pub mod commands;
pub mod config;
pub mod conntrack;
pub mod deployment;
pub mod duration;
pub mod error;
pub mod front;
pub mod fsio;
pub mod health;
pub mod live;
pub mod netlink;
pub mod ownership;
pub mod probe_http;
pub mod process;
pub mod procfs;
pub mod release;
pub mod signals;
pub mod sockdiag;
pub mod state;
pub mod supervisor;
pub mod switcher;
pub mod systemctl;
pub mod template;
pub mod timings;
pub mod unitfile;
pub mod users;
pub mod watch;

pub use error::{Error, Result};
