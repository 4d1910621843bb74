//! Upstream connect with a timeout, and the classification of its failures.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// Failure to open an upstream connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The listener's upstream set has no address to try.
    #[error("no upstream address available")]
    NoUpstream,
    /// The connect did not finish within the timeout.
    #[error("timed out connecting to upstream {addr} after {timeout:?}")]
    TimedOut { addr: SocketAddr, timeout: Duration },
    /// The connect failed.
    #[error("failed to connect to upstream {addr}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

impl ConnectError {
    /// Returns the address when it refused the connect, was unreachable or timed out: the
    /// failures that say the address is unhealthy, not that the proxy is.
    pub fn failed_addr(&self) -> Option<SocketAddr> {
        match self {
            ConnectError::NoUpstream => None,
            ConnectError::TimedOut { addr, .. } => Some(*addr),
            ConnectError::Io { addr, source } => match source.kind() {
                io::ErrorKind::ConnectionRefused
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable
                | io::ErrorKind::ConnectionReset => Some(*addr),
                _ => None,
            },
        }
    }

    /// Returns the bounded `reason` label value for metrics.
    pub fn as_metrics_label(&self) -> &'static str {
        match self {
            ConnectError::NoUpstream => "no_upstream",
            ConnectError::TimedOut { .. } => "timeout",
            ConnectError::Io { source, .. } => match source.kind() {
                io::ErrorKind::ConnectionRefused => "refused",
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => "unreachable",
                io::ErrorKind::ConnectionReset => "reset",
                io::ErrorKind::PermissionDenied => "permission_denied",
                _ => "other",
            },
        }
    }
}

/// Connects to `addr` within `timeout` and sets TCP_NODELAY on the new socket.
///
/// # Errors
/// [`ConnectError::TimedOut`] when the timeout expires first, [`ConnectError::Io`] when
/// the connect or setting TCP_NODELAY fails.
///
/// # Cancel safety
/// Cancelling drops the half-open socket; nothing else is left behind.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
        Err(_elapsed) => return Err(ConnectError::TimedOut { addr, timeout }),
    };
    stream
        .set_nodelay(true)
        .map_err(|source| ConnectError::Io { addr, source })?;
    Ok(stream)
}
