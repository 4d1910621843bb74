//! The `styx` command: sets up a Mac as a Styx node in one command, joins others to its
//! cluster, and reports and removes what it set up.
//!
//! Layout:
//! - `cli`: the command-line arguments.
//! - `init`, `invite`, `join`, `status`, `doctor`, `leave`: one module per command.
//! - `setup`, `install`: the shared steps of `init` and `join`, and the staged commit
//!   that never leaves half a setup behind.
//! - `configs`, `launchd`, `driver_options`: the Nomad, Consul and Vault configs, the
//!   launchd agents, and the driver's plugin option names.
//! - `pki`, `tls`, `token`: certificates and keys, rustls configurations, invite tokens.
//! - `tailscale`, `process`, `http`, `services`: Tailscale detection, external programs,
//!   the HTTPS API client, and starting services in order.
//! - `files`, `layout`, `state`: atomic writes, where files live, `styx.toml`.
//!
//! This crate does not run Nomad, Consul or Vault itself. launchd runs them, and `styx`
//! writes their configs and queries their HTTP APIs.
#![forbid(unsafe_code)]

pub mod cli;
pub mod configs;
pub mod doctor;
pub mod driver_options;
pub mod files;
pub mod http;
pub mod init;
pub mod install;
pub mod invite;
pub mod join;
pub mod launchd;
pub mod layout;
pub mod leave;
pub mod pki;
pub mod process;
pub mod services;
pub mod setup;
pub mod state;
pub mod status;
pub mod tailscale;
pub mod tls;
pub mod token;

use std::process::ExitCode;

use cli::{Cli, Command};
use layout::Layout;

/// Exit code when a command ran but found something down or failing (`status`,
/// `doctor`).
pub const EXIT_UNHEALTHY: u8 = 1;

/// Runs one parsed command.
///
/// # Errors
///
/// Any failure of the command; its message names what failed and what to do next.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let layout = Layout::resolve(cli.prefix.as_deref())?;
    let healthy = match &cli.command {
        Command::Init(args) => init::run(args, &layout).await.map(|()| true)?,
        Command::Invite(args) => invite::run(args, &layout).await.map(|()| true)?,
        Command::Join(args) => join::run(args, &layout).await.map(|()| true)?,
        Command::Start(args) => leave::start(&layout, args.health_timeout)
            .await
            .map(|()| true)?,
        Command::Status(args) => status::run(args.json, &layout).await?,
        Command::Doctor(args) => doctor::run(args.json, &layout, &cli.system_root).await?,
        Command::Leave(args) => leave::run(&layout, true, args.purge).await.map(|()| true)?,
        Command::Uninstall(args) => leave::run(&layout, false, args.purge)
            .await
            .map(|()| true)?,
    };
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNHEALTHY)
    })
}

/// Formats an error with its chain of sources, `outer: inner: os error`, so that a
/// one-line report keeps the cause (such as "Connection refused").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
