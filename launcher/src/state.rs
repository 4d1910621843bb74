//! The node state file, `styx.toml`: what `init` or `join` decided, read back by
//! `status`, `invite`, `leave` and `uninstall`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layout::Layout;

/// Failure to read the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no Styx setup found at {}: run `styx init` or `styx join` first", path.display())]
    Missing { path: PathBuf },
    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid state file {}: run `styx init --force` or `styx join --force` to rewrite it", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
}

/// Role of a node in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs the Nomad server and client, the Consul server and Vault.
    Server,
    /// Runs a Nomad client and a Consul client that join a server.
    Client,
}

/// Well-known ports of the services Styx configures.
pub mod ports {
    pub const NOMAD_HTTP: u16 = 4646;
    pub const NOMAD_RPC: u16 = 4647;
    pub const NOMAD_SERF: u16 = 4648;
    pub const CONSUL_SERVER: u16 = 8300;
    pub const CONSUL_SERF_LAN: u16 = 8301;
    pub const CONSUL_HTTPS: u16 = 8501;
    pub const CONSUL_GRPC_TLS: u16 = 8503;
    pub const CONSUL_DNS: u16 = 8600;
    pub const VAULT_API: u16 = 8200;
    pub const VAULT_CLUSTER: u16 = 8201;
    /// Default port of the `styx invite` endpoint.
    pub const INVITE: u16 = 4650;
}

/// Everything a node's configs are generated from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub role: Role,
    pub node_name: String,
    pub region: String,
    pub datacenter: String,
    /// This node's Tailscale IPv4 address, which every service advertises.
    pub tailscale_ip: IpAddr,
    /// This node's MagicDNS name, empty when Tailscale gave none.
    pub tailscale_dns_name: String,
    /// Tailscale address of the server node (equal to `tailscale_ip` on the server).
    pub server_ip: IpAddr,
    /// Path of Apple's `container` CLI written into the driver options.
    pub container_path: PathBuf,
    /// Absolute paths of the service binaries the launchd agents run.
    pub binaries: Binaries,
    /// Version of `styx` that wrote this file.
    pub styx_version: String,
}

/// Absolute paths of the HashiCorp binaries, found on `PATH` at setup time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binaries {
    pub nomad: PathBuf,
    pub consul: PathBuf,
    /// Empty on client nodes, which do not run Vault.
    #[serde(default)]
    pub vault: Option<PathBuf>,
}

impl NodeState {
    /// Base name of the certificate each service uses (`tls/<name>.pem`).
    ///
    /// A client node has a single certificate that Nomad, Consul and the CLI share.
    pub fn cert_name(&self, service: &str) -> &'static str {
        match (self.role, service) {
            (Role::Client, _) => "node",
            (Role::Server, "nomad") => "nomad",
            (Role::Server, "consul") => "consul",
            (Role::Server, "vault") => "vault",
            (Role::Server, _) => "cli",
        }
    }

    /// Services of this node, in start order.
    pub fn services(&self) -> &'static [&'static str] {
        match self.role {
            Role::Server => &["consul", "vault", "nomad"],
            Role::Client => &["consul", "nomad"],
        }
    }

    /// Base URL of this node's Nomad HTTP API.
    pub fn nomad_url(&self) -> String {
        format!("https://{}:{}", self.tailscale_ip, ports::NOMAD_HTTP)
    }

    /// Base URL of this node's Consul HTTPS API.
    pub fn consul_url(&self) -> String {
        format!("https://127.0.0.1:{}", ports::CONSUL_HTTPS)
    }

    /// Base URL of the cluster's Vault API, on the server.
    pub fn vault_url(&self) -> String {
        format!("https://{}:{}", self.server_ip, ports::VAULT_API)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("node state always serializes")
    }

    /// Reads the state file of `layout`.
    pub fn load(layout: &Layout) -> Result<Self, StateError> {
        Self::load_from(&layout.state_file())
    }

    pub fn load_from(path: &Path) -> Result<Self, StateError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                StateError::Missing {
                    path: path.to_owned(),
                }
            } else {
                StateError::Read {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        toml::from_str(&text).map_err(|source| StateError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

/// Overrides of the service URLs that `status` and `leave` use, read from the optional
/// `[endpoints]` table of `styx.toml`. Tests point them at local fake servers.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Endpoints {
    pub nomad: Option<String>,
    pub consul: Option<String>,
    pub vault: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct EndpointsFile {
    #[serde(default)]
    endpoints: Endpoints,
}

impl Endpoints {
    /// Reads the `[endpoints]` table; a missing or unreadable table means no overrides.
    pub fn load(layout: &Layout) -> Self {
        std::fs::read_to_string(layout.state_file())
            .ok()
            .and_then(|text| toml::from_str::<EndpointsFile>(&text).ok())
            .map(|file| file.endpoints)
            .unwrap_or_default()
    }
}

/// Checks that `name` can be a Nomad/Consul node, region or datacenter name: 1 to 63
/// characters of ASCII letters, digits and `-`, not starting or ending with `-`.
pub fn validate_name(what: &str, name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} {name:?}: expected 1 to 63 ASCII letters, digits or '-', \
             not starting or ending with '-'"
        ))
    }
}

/// Turns a host name into a valid node name: lowercase, other characters become `-`.
pub fn node_name_from_host(host: &str) -> String {
    let cleaned: String = host
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = cleaned.trim_matches('-');
    let short: String = trimmed.chars().take(63).collect();
    let short = short.trim_end_matches('-').to_owned();
    if short.is_empty() {
        "styx-node".to_owned()
    } else {
        short
    }
}

#[cfg(test)]
impl NodeState {
    /// Builds a server node for unit tests.
    pub fn example_server() -> Self {
        Self {
            role: Role::Server,
            node_name: "mac-one".into(),
            region: "global".into(),
            datacenter: "dc1".into(),
            tailscale_ip: "100.64.0.1".parse().unwrap(),
            tailscale_dns_name: "mac-one.tail1234.ts.net".into(),
            server_ip: "100.64.0.1".parse().unwrap(),
            container_path: PathBuf::from("/usr/local/bin/container"),
            binaries: Binaries {
                nomad: "/opt/homebrew/bin/nomad".into(),
                consul: "/opt/homebrew/bin/consul".into(),
                vault: Some("/opt/homebrew/bin/vault".into()),
            },
            styx_version: "0".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_name_rejects_spaces() {
        assert!(validate_name("region", "global").is_ok());
        assert!(validate_name("region", "eu-west-1").is_ok());
        assert!(validate_name("region", "my region").is_err());
        assert!(validate_name("region", "-x").is_err());
        assert!(validate_name("region", "").is_err());
    }

    #[test]
    fn node_name_from_host_cleans() {
        assert_eq!(
            node_name_from_host("Jane's MacBook Pro"),
            "jane-s-macbook-pro"
        );
        assert_eq!(node_name_from_host("mac-one.local"), "mac-one");
        assert_eq!(node_name_from_host("..."), "styx-node");
    }
}
