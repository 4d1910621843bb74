//! Names and defaults of the `apple-container` driver's plugin options, as the launcher
//! writes them into Nomad's `plugin "apple-container" { config { ... } }` block.
//!
//! NOTE: the driver crate decodes these options itself, and the names here were chosen
//! before it settled. At the time of writing it reads `preconnect_pool_size` and
//! `metrics_address` where this module writes `preconnect` and `metrics_listen`. Align
//! the two here, in this one module.

/// Nomad driver name the plugin registers.
pub const DRIVER_NAME: &str = "apple-container";
/// Binary name Nomad looks for in its `plugin_dir`.
pub const DRIVER_BINARY: &str = "styx-driver";

/// Path of Apple's `container` CLI.
pub const CONTAINER_PATH: &str = "container_path";
/// Host port = container port + this offset when the job allocates no port.
pub const PORT_OFFSET: &str = "port_offset";
/// Address published ports bind: `"tailscale"` or an IP address.
pub const BIND_ADDRESS: &str = "bind_address";
/// Number of pre-connected upstream sockets kept per published port.
pub const PRECONNECT: &str = "preconnect";
/// `host:port` of the driver's Prometheus endpoint.
pub const METRICS_LISTEN: &str = "metrics_listen";
/// Interval between container stats samples, as a Go duration string.
pub const STATS_INTERVAL: &str = "stats_interval";

pub const DEFAULT_PORT_OFFSET: i64 = 10_000;
pub const DEFAULT_BIND_ADDRESS: &str = "tailscale";
pub const DEFAULT_PRECONNECT: i64 = 0;
/// Port of the driver's metrics endpoint, bound on the Tailscale address.
pub const DEFAULT_METRICS_PORT: u16 = 9464;
pub const DEFAULT_STATS_INTERVAL: &str = "5s";
/// Install path of the `container` CLI from Apple's signed installer.
pub const DEFAULT_CONTAINER_PATH: &str = "/usr/local/bin/container";
