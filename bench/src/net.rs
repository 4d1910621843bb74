//! Connection helpers shared by the generators.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::error::BenchError;

/// Bound on every connect a generator makes, so a dead path fails the run instead of
/// hanging it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on a single blocking read or write of a generator connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a blocking connection to `addr` with [`CONNECT_TIMEOUT`] and [`IO_TIMEOUT`] set.
///
/// # Errors
/// Returns [`BenchError::Connect`] when the connection or a socket option fails.
pub fn connect_blocking(addr: SocketAddr) -> Result<TcpStream, BenchError> {
    let connect_error = |source| BenchError::Connect { addr, source };

    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(connect_error)?;
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .map_err(connect_error)?;
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .map_err(connect_error)?;
    Ok(stream)
}

/// Opens a tokio connection to `addr`, bounded by [`CONNECT_TIMEOUT`].
///
/// # Errors
/// Returns [`BenchError::Connect`] or [`BenchError::ConnectTimeout`].
pub async fn connect_async(addr: SocketAddr) -> Result<tokio::net::TcpStream, BenchError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(BenchError::Connect { addr, source }),
        Err(_) => Err(BenchError::ConnectTimeout {
            addr,
            timeout: CONNECT_TIMEOUT,
        }),
    }
}
