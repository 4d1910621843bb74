//! Driver health and node attributes, and the open-ended Fingerprint stream.
//!
//! A probe runs `container --version`, then `container system status`, then (on macOS)
//! a Local Network permission check, and stops at the first failure:
//! - CLI missing at the configured path: undetected, because the driver cannot work on
//!   this node at all until it is installed.
//! - CLI broken, service stopped, or permission missing: unhealthy.
//!
//! Descriptions contain no timestamps or counters, because Nomad records a node event
//! for every change of health or description.

mod local_network;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::config::PluginConfig;
use crate::container::{CliError, ContainerCli, SystemStatus};
use crate::proto::drivers::{FingerprintResponse, fingerprint_response::HealthState};
use crate::proto::structs::{Attribute, attribute};
use crate::{DRIVER_NAME, DRIVER_VERSION};

pub use local_network::LocalNetwork;

/// Upper bound on one probe's CLI calls, whatever `command_timeout` is, so a hung CLI
/// cannot delay the first fingerprint Nomad waits for at startup.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Result of one probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    pub health: HealthState,
    pub description: String,
    /// Node attributes without the `driver.apple-container.` prefix.
    pub attributes: BTreeMap<&'static str, String>,
}

/// Probes the `container` CLI at `cli` and this host.
pub async fn probe(cli: &ContainerCli) -> Fingerprint {
    let mut attributes = BTreeMap::from([
        ("plugin_version", DRIVER_VERSION.to_owned()),
        ("os", std::env::consts::OS.to_owned()),
        ("arch", std::env::consts::ARCH.to_owned()),
    ]);

    let version = match cli.version().await {
        Ok(version) => version,
        Err(CliError::NotFound { path }) => {
            let description = format!(
                "container CLI not found at {}: install Apple's container package, or set container_path in the plugin config",
                path.display()
            );
            return fingerprint(HealthState::Undetected, description, attributes);
        }
        Err(error) => {
            let description = format!("container CLI does not work: {error}");
            return fingerprint(HealthState::Unhealthy, description, attributes);
        }
    };
    attributes.insert("version", version);

    match cli.system_status().await {
        Ok(SystemStatus::Running) => {}
        Ok(SystemStatus::NotRunning { message }) => {
            let description = format!(
                "container system service is not running ({message}): run `container system start` as the user that runs the Nomad client"
            );
            return fingerprint(HealthState::Unhealthy, description, attributes);
        }
        Err(error) => {
            let description = format!("failed to check the container system service: {error}");
            return fingerprint(HealthState::Unhealthy, description, attributes);
        }
    }

    if let LocalNetwork::Denied { detail } = local_network::check().await {
        let description = format!(
            "macOS Local Network permission is missing for styx-driver ({detail}): allow it in System Settings > Privacy & Security > Local Network"
        );
        return fingerprint(HealthState::Unhealthy, description, attributes);
    }

    fingerprint(HealthState::Healthy, "Healthy".to_owned(), attributes)
}

fn fingerprint(
    health: HealthState,
    description: String,
    attributes: BTreeMap<&'static str, String>,
) -> Fingerprint {
    Fingerprint {
        health,
        description,
        attributes,
    }
}

impl Fingerprint {
    /// Converts to the wire message, prefixing attribute names with
    /// `driver.apple-container.`.
    pub fn to_response(&self) -> FingerprintResponse {
        let attributes = self
            .attributes
            .iter()
            .map(|(name, value)| {
                let attribute = Attribute {
                    value: Some(attribute::Value::StringVal(value.clone())),
                    unit: String::new(),
                };
                (format!("driver.{DRIVER_NAME}.{name}"), attribute)
            })
            .collect();

        FingerprintResponse {
            attributes,
            health: self.health as i32,
            health_description: self.description.clone(),
            err: String::new(),
        }
    }
}

/// Sends fingerprints into `responses` until the receiver is gone or `shutdown` fires.
///
/// The first probe runs at once. After that the driver re-probes every
/// `fingerprint_interval` and whenever the plugin config changes, and sends only when
/// the fingerprint differs from the last one sent, because Nomad acts only on changes.
pub async fn stream(
    mut config: watch::Receiver<Arc<PluginConfig>>,
    shutdown: CancellationToken,
    responses: mpsc::Sender<Result<FingerprintResponse, Status>>,
) {
    let mut last_sent: Option<Fingerprint> = None;

    loop {
        let current_config = config.borrow_and_update().clone();
        let timeout = current_config.command_timeout.min(PROBE_TIMEOUT);
        let cli = ContainerCli::new(&current_config.container_path, timeout);

        let current = tokio::select! {
            current = probe(&cli) => current,
            () = responses.closed() => return,
            () = shutdown.cancelled() => return,
        };

        if last_sent.as_ref() != Some(&current) {
            tracing::info!(
                health = current.health.as_str_name(),
                description = %current.description,
                "driver health changed"
            );
            if responses.send(Ok(current.to_response())).await.is_err() {
                return;
            }
            last_sent = Some(current);
        }

        tokio::select! {
            () = tokio::time::sleep(current_config.fingerprint_interval) => {}
            changed = config.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = responses.closed() => return,
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_cli_is_undetected() {
        let cli = ContainerCli::new("/nonexistent/container", Duration::from_secs(5));
        let fingerprint = probe(&cli).await;

        assert_eq!(fingerprint.health, HealthState::Undetected);
        assert!(fingerprint.description.contains("/nonexistent/container"));
        assert!(fingerprint.description.contains("container_path"));
        assert!(!fingerprint.attributes.contains_key("version"));
    }

    #[test]
    fn response_prefixes_attributes() {
        let fingerprint = fingerprint(
            HealthState::Healthy,
            "Healthy".to_owned(),
            BTreeMap::from([("version", "1.2.2".to_owned())]),
        );
        let response = fingerprint.to_response();

        let attribute = &response.attributes["driver.apple-container.version"];
        assert_eq!(
            attribute.value,
            Some(attribute::Value::StringVal("1.2.2".to_owned()))
        );
        assert_eq!(response.health, HealthState::Healthy as i32);
    }
}
