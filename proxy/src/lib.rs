//! Styx data plane: TCP listeners that forward each accepted connection to an upstream.
//!
//! A connection is accepted under a per-listener connection limit. It gets an upstream
//! socket from the pre-connect pool or from a fresh connect with a timeout, and
//! optionally a PROXY protocol header is sent first. One of two engines then forwards
//! it until both directions have finished, one side resets, the idle timeout fires,
//! or a shutdown drain runs out of time.
//!
//! Layout:
//! - [`config`]: validated listener and proxy settings, and the TOML file format.
//! - [`upstream`]: how a listener chooses the address it connects to, from fixed
//!   addresses or from DNS names that `styx_dns` keeps current.
//! - [`connect`]: upstream connect with a timeout, and its error classification.
//! - [`pool`]: pre-connected upstream sockets, each handed to exactly one client.
//! - [`proxy_protocol`]: PROXY protocol v1 and v2 header encoding.
//! - [`engine`]: the forwarding engines (`splice` on Linux, `copy` everywhere) and the
//!   half-close, reset and idle rules they share.
//! - [`listener`]: the accept loop and the life of one connection.
//! - [`server`]: all listeners of one process, and the graceful drain.
//! - [`metrics`]: metric names, descriptions, handles and the recorder.
//! - [`metrics_endpoint`]: the HTTP endpoint that serves `GET /metrics`.
//! - [`system`]: process limits (open files).
//! - [`cli`]: the `styx-proxy run` subcommand. The `resolve` subcommand is
//!   `styx_dns::cli`, called from the binary.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod connect;
pub mod engine;
pub mod listener;
pub mod metrics;
pub mod metrics_endpoint;
pub mod pool;
pub mod proxy_protocol;
pub mod server;
pub mod system;
pub mod upstream;

pub use config::{EngineChoice, ListenerConfig, ProxyConfig};
pub use engine::Engine;
pub use server::{DrainReport, Server};
