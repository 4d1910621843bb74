//! Command-line arguments of `styx`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Set up a Mac as a Styx node: Nomad, Consul and Vault over Tailscale, with TLS and
/// encrypted gossip, run as launchd agents of the logged-in user.
#[derive(Debug, Parser)]
#[command(name = "styx", version)]
pub struct Cli {
    /// Keep all files in DIR (agents in DIR/LaunchAgents) instead of
    /// `~/Library/Application Support/Styx` and `~/Library/LaunchAgents`.
    #[arg(long, global = true, value_name = "DIR")]
    pub prefix: Option<PathBuf>,

    /// Directory that stands for `/` when `doctor` reads system files such as
    /// `/etc/resolver/consul`. For tests.
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        hide = true,
        default_value = "/"
    )]
    pub system_root: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make this Mac the cluster's server: CA, certificates, gossip keys, configs,
    /// launchd agents; then start Consul, Vault and Nomad and initialise Vault.
    Init(InitArgs),
    /// Open a short-lived TLS endpoint that lets token holders join this cluster.
    Invite(InviteArgs),
    /// Join the cluster of an invite token as a client node.
    Join(JoinArgs),
    /// Load this node's launchd agents and wait until each service is healthy.
    Start(StartArgs),
    /// Show this node's services and the cluster through the Nomad and Consul APIs.
    Status(StatusArgs),
    /// Check every prerequisite and known macOS hazard, with the command that fixes each.
    Doctor(DoctorArgs),
    /// Drain this node, leave the cluster, stop and remove the agents.
    Leave(RemoveArgs),
    /// Stop and remove the agents without leaving the cluster first.
    Uninstall(RemoveArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Nomad region, also used in certificate names (`server.<region>.nomad`).
    #[arg(long, default_value = "global")]
    pub region: String,

    /// Nomad and Consul datacenter.
    #[arg(long, default_value = "dc1")]
    pub datacenter: String,

    /// Node name; defaults to the Tailscale host name.
    #[arg(long)]
    pub node_name: Option<String>,

    #[command(flatten)]
    pub setup: SetupFlags,
}

#[derive(Debug, Args)]
pub struct SetupFlags {
    /// Replace an existing setup; it is moved to a backup directory first.
    #[arg(long)]
    pub force: bool,

    /// Write every file but start nothing (no launchctl, no Vault initialisation).
    #[arg(long)]
    pub no_start: bool,

    /// Maximum wait for each service to become healthy, such as `90s` or `3m`.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    pub health_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// Maximum wait for each service to become healthy, such as `90s` or `3m`.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    pub health_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct InviteArgs {
    /// How long the endpoint and its token stay valid, such as `90s`, `15m`, `1h30m`
    /// (at most 24h).
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub ttl: Duration,

    /// Number of nodes that may join with the token.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub uses: u32,

    /// Address and port of the endpoint; defaults to this node's Tailscale address, port
    /// 4650. Port 0 picks a free port.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Token printed by `styx invite` on the server.
    pub token: String,

    /// Node name; defaults to the Tailscale host name.
    #[arg(long)]
    pub node_name: Option<String>,

    #[command(flatten)]
    pub setup: SetupFlags,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the checks as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// Also delete the data directory: certificates, keys, Vault's unseal key and all
    /// service data.
    #[arg(long)]
    pub purge: bool,
}

/// Parses a duration such as `90s`, `15m`, `2h` or `1h30m` (units s, m, h), between 1
/// second and 24 hours.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "invalid duration {text:?}: expected a number with a unit s, m or h, such as 15m or 1h30m"
        )
    };
    let mut total = 0u64;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(invalid()),
        };
        let value: u64 = digits.parse().map_err(|_| invalid())?;
        total = total.saturating_add(value.saturating_mul(unit));
        digits.clear();
    }
    if !digits.is_empty() || text.trim().is_empty() {
        return Err(invalid());
    }
    if total == 0 || total > 24 * 3600 {
        return Err(format!(
            "invalid duration {text:?}: must be between 1s and 24h"
        ));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_duration_accepts_units() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
    }

    #[test]
    fn parse_duration_rejects_bad_input() {
        for bad in ["", "15", "m", "0s", "25h", "5d", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be rejected");
        }
    }
}
