//! The driver core that the gRPC services delegate to: plugin identity, the current
//! plugin config, capabilities and the shutdown signal.
//!
//! It uses no gRPC types except the generated messages it returns. The task lifecycle
//! lives in [`crate::task`]; the driver hands it the current config on each call.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::DRIVER_NAME;
use crate::config::{DecodeError, PluginConfig, TaskConfig};
use crate::metrics_endpoint::{self, EndpointError};
use crate::node::NodeInfo;
use crate::proto::drivers::{
    DriverCapabilities,
    driver_capabilities::{FsIsolation, MountConfigs},
    network_isolation_spec::NetworkIsolationMode,
};
use crate::task::{Context, Lifecycle};

/// Driver API version that Nomad negotiates for task drivers.
pub const PLUGIN_API_VERSION: &str = "v0.1.0";

/// Failure of SetConfig.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {DRIVER_NAME} plugin config: {0}")]
    Invalid(#[from] DecodeError),
    #[error(transparent)]
    Metrics(#[from] EndpointError),
}

/// Shared driver state. Clones are cheap and share one state.
#[derive(Debug, Clone)]
pub struct Driver {
    config: Arc<watch::Sender<Arc<PluginConfig>>>,
    node: Arc<Mutex<Option<NodeInfo>>>,
    shutdown: CancellationToken,
    lifecycle: Lifecycle,
}

impl Driver {
    /// Creates a driver with the default config. Cancelling `shutdown` ends every stream
    /// the driver serves.
    pub fn new(shutdown: CancellationToken) -> Self {
        let (config, _) = watch::channel(Arc::new(PluginConfig::default()));
        Self {
            config: Arc::new(config),
            node: Arc::default(),
            shutdown,
            lifecycle: Lifecycle::default(),
        }
    }

    /// Decodes and applies the agent's plugin config. On error the previous config stays
    /// in force. Nomad may call this several times in one process.
    ///
    /// `long_lived` is true when the call carries Nomad's node config, which only the
    /// instance that runs tasks receives. Only that instance starts the metrics endpoint
    /// (see [`crate::metrics_endpoint`]). The agent's config validation pass, a short-lived
    /// instance, only checks the address, because the address is still bound by the
    /// running plugin of an agent that restarts and reattaches to it.
    pub async fn set_config(&self, msgpack: &[u8], long_lived: bool) -> Result<(), ConfigError> {
        let config = PluginConfig::from_msgpack(msgpack)?;
        if long_lived {
            metrics_endpoint::apply(config.metrics_address).await?;
        }
        tracing::info!(
            container_path = %config.container_path.display(),
            port_offset = config.port_offset,
            metrics_address = ?config.metrics_address,
            long_lived,
            "plugin config applied"
        );
        self.config.send_replace(Arc::new(config));
        Ok(())
    }

    /// Records what the Nomad client reported about the node. Calls without it, as in
    /// Nomad's config validation pass, keep the previous value.
    pub fn set_node_info(&self, node: NodeInfo) {
        tracing::debug!(client_ports = ?node.client_ports, compute = ?node.compute, "node info received");
        *self.node.lock().expect("node info lock") = Some(node);
    }

    /// Returns the last node info from Nomad, if any arrived.
    pub fn node_info(&self) -> Option<NodeInfo> {
        self.node.lock().expect("node info lock").clone()
    }

    pub fn config(&self) -> Arc<PluginConfig> {
        self.config.borrow().clone()
    }

    /// Returns a receiver that is notified of every config change.
    pub fn watch_config(&self) -> watch::Receiver<Arc<PluginConfig>> {
        self.config.subscribe()
    }

    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }

    /// Returns the config and node facts that task operations use now.
    pub fn task_context(&self) -> Context {
        Context {
            config: self.config(),
            compute: self.node_info().and_then(|node| node.compute),
        }
    }

    /// Decodes and validates a task's `config {}` block.
    pub fn decode_task_config(&self, msgpack: &[u8]) -> Result<TaskConfig, DecodeError> {
        TaskConfig::from_msgpack(msgpack)
    }

    pub fn capabilities(&self) -> DriverCapabilities {
        DriverCapabilities {
            send_signals: true,
            // ExecTask serves script checks and ExecTaskStreaming `nomad alloc exec`.
            exec: true,
            // The image is the task's root file system, inside its own VM.
            fs_isolation: FsIsolation::Image as i32,
            // Containers run in their own VMs on the vmnet subnet, and Nomad's network
            // namespaces do not exist on macOS, so only host mode applies.
            network_isolation_modes: vec![NetworkIsolationMode::Host as i32],
            must_create_network: false,
            mount_configs: MountConfigs::UnknownMounts as i32,
            disable_log_collection: false,
            dynamic_workload_users: false,
        }
    }

    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Asks the process to stop serving and exit.
    pub fn request_exit(&self) {
        self.shutdown.cancel();
    }
}
