//! Names and defaults of the `apple-container` driver's plugin options, as the launcher
//! writes them into Nomad's `plugin "apple-container" { config { ... } }` block.
//!
//! The driver crate decodes these options itself (`driver/src/config/plugin.rs`), so a
//! rename there must be made here too: Nomad rejects an unknown option and then never
//! loads the plugin.

/// Nomad driver name the plugin registers.
pub const DRIVER_NAME: &str = "apple-container";
/// Name of the driver binary that `cargo install` and releases produce.
pub const DRIVER_BINARY: &str = "styx-driver";
/// File name of the driver in Nomad's `plugin_dir`. Nomad matches a `plugin "NAME"` block
/// to the file of that name, so the link there is named after the driver, not the binary.
pub const PLUGIN_FILE: &str = DRIVER_NAME;

/// Path of Apple's `container` CLI.
pub const CONTAINER_PATH: &str = "container_path";
/// Host port = container port + this offset when the job allocates no port.
pub const PORT_OFFSET: &str = "port_offset";
/// Address published ports bind: `"tailscale"` or an IP address.
pub const BIND_ADDRESS: &str = "bind_address";
/// Number of pre-connected upstream sockets kept per published port.
pub const PRECONNECT_POOL_SIZE: &str = "preconnect_pool_size";
/// `ip:port` of the driver's Prometheus endpoint; the driver takes only a literal address.
pub const METRICS_ADDRESS: &str = "metrics_address";
/// Interval between container stats samples, as a Go duration string.
pub const STATS_INTERVAL: &str = "stats_interval";

pub const DEFAULT_PORT_OFFSET: i64 = 10_000;
pub const DEFAULT_BIND_ADDRESS: &str = "tailscale";
pub const DEFAULT_PRECONNECT_POOL_SIZE: i64 = 0;
/// Port of the driver's metrics endpoint, bound on the Tailscale address.
pub const DEFAULT_METRICS_PORT: u16 = 9464;
pub const DEFAULT_STATS_INTERVAL: &str = "5s";
/// Install path of the `container` CLI from Apple's signed installer.
pub const DEFAULT_CONTAINER_PATH: &str = "/usr/local/bin/container";
