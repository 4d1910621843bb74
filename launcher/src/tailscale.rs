//! Reads this Mac's Tailscale state from `tailscale status --json`.
//!
//! Field names follow `ipnstate.Status` in Tailscale's Go source (package
//! `tailscale.com/ipn/ipnstate`, read at commit ff02a45b of tailscale/tailscale).
//! `BackendState` is one of `NoState`, `NeedsLogin`, `NeedsMachineAuth`, `Stopped`,
//! `Starting` or `Running`. `Self.TailscaleIPs` lists this node's addresses, and
//! `Self.DNSName` is its MagicDNS name with a trailing dot. `ExitNodeStatus` is absent when
//! no exit node is in use. Unknown fields are ignored.

use std::net::IpAddr;

use serde::Deserialize;

use crate::process::{Invocation, ProcessError};

/// Failure to learn the Tailscale address.
#[derive(Debug, thiserror::Error)]
pub enum TailscaleError {
    #[error(
        "tailscale not found on PATH: install Tailscale (https://tailscale.com/download/mac) \
         and make sure its CLI is on PATH"
    )]
    NotInstalled,
    #[error("failed to run tailscale")]
    Run(#[source] ProcessError),
    #[error("`tailscale status --json` failed (exit {code:?}): {message}")]
    Failed { code: Option<i32>, message: String },
    #[error("invalid output from `tailscale status --json`")]
    Parse(#[source] serde_json::Error),
    #[error("Tailscale is not running (state: {state}): run `tailscale up` and try again")]
    NotRunning { state: String },
    #[error("Tailscale reports no IPv4 address for this node: check `tailscale ip -4`")]
    NoAddress,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawStatus {
    #[serde(default)]
    version: String,
    #[serde(default)]
    backend_state: String,
    #[serde(rename = "Self")]
    self_node: Option<RawPeer>,
    exit_node_status: Option<RawExitNode>,
    #[serde(default)]
    health: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawPeer {
    #[serde(default)]
    host_name: String,
    #[serde(rename = "DNSName", default)]
    dns_name: String,
    #[serde(rename = "TailscaleIPs", default)]
    tailscale_ips: Option<Vec<IpAddr>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawExitNode {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(default)]
    online: bool,
}

/// This node as Tailscale reports it, when Tailscale is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailscaleNode {
    /// Daemon version, such as `1.90.6-t...`; empty when not reported.
    pub version: String,
    /// This node's first Tailscale IPv4 address.
    pub ipv4: IpAddr,
    /// MagicDNS name without the trailing dot; empty when MagicDNS gives none.
    pub dns_name: String,
    /// Host name as reported by the OS.
    pub host_name: String,
    /// Exit node in use, if any: its stable ID and whether it is online.
    pub exit_node: Option<(String, bool)>,
    /// Health warnings reported by the daemon.
    pub health: Vec<String>,
}

/// Parses the JSON printed by `tailscale status --json`.
///
/// # Errors
///
/// The JSON is invalid, the backend is not `Running`, or no IPv4 address is listed.
pub fn parse_status(json: &str) -> Result<TailscaleNode, TailscaleError> {
    let raw: RawStatus = serde_json::from_str(json).map_err(TailscaleError::Parse)?;
    if raw.backend_state != "Running" {
        let state = if raw.backend_state.is_empty() {
            "unknown".to_owned()
        } else {
            raw.backend_state
        };
        return Err(TailscaleError::NotRunning { state });
    }

    let self_node = raw.self_node.ok_or(TailscaleError::NoAddress)?;
    let ipv4 = self_node
        .tailscale_ips
        .unwrap_or_default()
        .into_iter()
        .find(IpAddr::is_ipv4)
        .ok_or(TailscaleError::NoAddress)?;

    Ok(TailscaleNode {
        version: raw.version,
        ipv4,
        dns_name: self_node.dns_name.trim_end_matches('.').to_owned(),
        host_name: self_node.host_name,
        exit_node: raw.exit_node_status.map(|exit| (exit.id, exit.online)),
        health: raw.health.unwrap_or_default(),
    })
}

/// Runs `tailscale status --json` and parses it.
///
/// # Errors
///
/// See [`TailscaleError`]: each case names what to do next.
pub async fn detect() -> Result<TailscaleNode, TailscaleError> {
    let output = Invocation::new("tailscale")
        .args(["status", "--json"])
        .run()
        .await
        .map_err(|error| match error {
            ProcessError::NotFound { .. } => TailscaleError::NotInstalled,
            other => TailscaleError::Run(other),
        })?;

    // `tailscale status --json` prints the status even when the backend is stopped, and
    // exits non-zero only when it cannot reach the daemon.
    if !output.success() && output.stdout.trim().is_empty() {
        return Err(TailscaleError::Failed {
            code: output.code,
            message: output.first_message_line().to_owned(),
        });
    }
    parse_status(&output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNNING: &str = r#"{
        "Version": "1.90.6-t1234",
        "TUN": true,
        "BackendState": "Running",
        "TailscaleIPs": ["100.101.102.103", "fd7a:115c:a1e0::1"],
        "Self": {
            "ID": "nABC",
            "HostName": "mac-one",
            "DNSName": "mac-one.tail1234.ts.net.",
            "OS": "macOS",
            "TailscaleIPs": ["fd7a:115c:a1e0::1", "100.101.102.103"],
            "Online": true
        },
        "Health": [],
        "MagicDNSSuffix": "tail1234.ts.net",
        "CurrentTailnet": {"Name": "me@example.com", "MagicDNSSuffix": "tail1234.ts.net", "MagicDNSEnabled": true}
    }"#;

    #[test]
    fn running_status_yields_ipv4_and_name() {
        let node = parse_status(RUNNING).unwrap();

        assert_eq!(node.ipv4, "100.101.102.103".parse::<IpAddr>().unwrap());
        assert_eq!(node.dns_name, "mac-one.tail1234.ts.net");
        assert_eq!(node.host_name, "mac-one");
        assert_eq!(node.exit_node, None);
    }

    #[test]
    fn stopped_status_is_rejected() {
        let json = r#"{"BackendState": "Stopped", "Self": {"TailscaleIPs": null}}"#;

        let error = parse_status(json).unwrap_err();

        assert!(error.to_string().contains("state: Stopped"), "{error}");
        assert!(error.to_string().contains("tailscale up"), "{error}");
    }

    #[test]
    fn exit_node_is_reported() {
        let json = RUNNING.replace(
            "\"Health\": [],",
            "\"Health\": [], \"ExitNodeStatus\": {\"ID\": \"nEXIT\", \"Online\": true, \"TailscaleIPs\": [\"100.64.0.9/32\"]},",
        );

        let node = parse_status(&json).unwrap();

        assert_eq!(node.exit_node, Some(("nEXIT".to_owned(), true)));
    }
}
