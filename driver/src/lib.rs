//! Nomad task driver plugin for Apple containers, driver name `apple-container`.
//!
//! The `styx-driver` binary is started by a Nomad client, speaks the go-plugin handshake
//! and serves Nomad's BasePlugin and Driver gRPC services on a unix socket. It runs
//! each task as a lightweight VM through Apple's `container` CLI.
//!
//! NOTE: this version serves plugin config, schemas, capabilities and fingerprinting.
//! The task lifecycle RPCs return UNIMPLEMENTED until the lifecycle is built.
//!
//! Layout:
//! - [`handshake`]: environment checks and the handshake line.
//! - [`server`]: the gRPC server and the shutdown path.
//! - [`socket`]: the unix socket the server listens on.
//! - [`grpc`]: the gRPC service impls, thin layers over [`driver`].
//! - [`driver`]: the driver core, holding the plugin config and capabilities.
//! - [`config`]: plugin and task config schemas and decoders.
//! - [`fingerprint`]: health probes and the fingerprint stream.
//! - [`container`]: the adapter for Apple's `container` CLI.
//! - [`logging`]: hclog JSON lines on stderr.
//! - [`metrics`]: the driver's metric names and recording helpers.
//! - [`metrics_endpoint`]: the Prometheus endpoint that `metrics_address` turns on.
//! - [`node`]: what the Nomad client reports about its node.
//! - [`proto`]: generated protobuf types and gRPC stubs (server and client).
#![forbid(unsafe_code)]

pub mod config;
pub mod container;
pub mod driver;
pub mod entry;
pub mod fingerprint;
pub mod grpc;
pub mod handshake;
pub mod logging;
pub mod metrics;
pub mod metrics_endpoint;
pub mod node;
pub mod proto;
pub mod server;
pub mod socket;
pub mod supervisor;
pub mod task;

/// Driver name that jobs use in `driver = "apple-container"`.
pub const DRIVER_NAME: &str = "apple-container";

/// Version of this plugin, reported to Nomad and as a node attribute.
pub const DRIVER_VERSION: &str = env!("CARGO_PKG_VERSION");
