//! The error type of a benchmark run.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Error of a benchmark run. Every variant names the input, address or process involved.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A command-line value that does not parse or contradicts another one.
    #[error("invalid {flag} value {value:?}: {reason}")]
    InvalidArgument {
        flag: &'static str,
        value: String,
        reason: String,
    },

    #[error("failed to start the tokio runtime")]
    Runtime(#[source] io::Error),

    #[error("failed to bind the bench backend to {addr}; pass --backend with a free address")]
    BindBackend {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    #[error("failed to connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    /// A scenario failed on one path, for the reason in the source.
    #[error("{scenario} failed on path {path:?}")]
    Path {
        scenario: &'static str,
        path: String,
        #[source]
        source: Box<BenchError>,
    },

    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },

    /// A load-generating connection failed in the middle of a scenario.
    #[error("{scenario} connection to {addr} failed")]
    Traffic {
        scenario: &'static str,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    /// The bench backend did not reach the expected state in time, which means the path
    /// under test dropped or stalled connections.
    #[error("timed out after {timeout:?} waiting for {waiting_for}")]
    Stalled {
        waiting_for: String,
        timeout: Duration,
    },

    #[error("failed to start {exe}")]
    SpawnProxy {
        exe: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("styx-proxy ({engine}) exited early with {status}; its stderr ends with:\n{stderr}")]
    ProxyExited {
        engine: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },

    #[error("styx-proxy ({engine}) did not accept connections on {addr} within {timeout:?}")]
    ProxyNotReady {
        engine: &'static str,
        addr: SocketAddr,
        timeout: Duration,
    },

    #[error("failed to manage the styx-proxy ({engine}) child process")]
    ProxyProcess {
        engine: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("failed to read the CPU time or memory of process {pid}")]
    ProcessStats {
        pid: u32,
        #[source]
        source: io::Error,
    },

    #[error("interrupted; the styx-proxy children were stopped")]
    Interrupted,

    #[error("failed to write the report")]
    Output(#[source] io::Error),
}
