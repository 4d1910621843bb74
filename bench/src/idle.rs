//! The idle-memory generator: resident memory a proxy process gains per idle connection,
//! in KiB.
//!
//! The generator opens a few connections first and closes them, so one-time allocations
//! (runtime threads, buffer pools) land in the baseline. Then it opens N connections that
//! each send the [`Mode::Idle`] header and stay open, waits until the backend has all N open,
//! and reads the proxy's RSS again. Growth divided by N is the figure. The header byte
//! forces the proxy to connect upstream and move one byte, as every real connection does.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend::{BackendStats, Mode};
use crate::error::BenchError;
use crate::net::connect_async;
use crate::process;

/// Connections opened and closed before the baseline is read.
const WARMUP_CONNECTIONS: usize = 16;

/// Bound on waiting for the backend to see all connections open or all closed.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Pause after the backend has every connection open, so the proxy finishes its
/// per-connection setup before RSS is read.
const SETTLE_PAUSE: Duration = Duration::from_millis(200);

/// Result of one idle-memory measurement.
#[derive(Debug, Clone, Copy)]
pub struct IdleSample {
    /// Idle connections held open while RSS was read.
    pub connections: usize,
    /// RSS of the proxy processes before the idle connections were opened, in KiB.
    pub rss_before_kib: u64,
    /// RSS of the proxy processes with all idle connections open, in KiB.
    pub rss_after_kib: u64,
}

impl IdleSample {
    /// RSS growth per idle connection in KiB; negative when the process shrank.
    pub fn kib_per_connection(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.connections as f64
    }
}

/// Opens `connections` idle connections through `target` and measures the RSS growth of
/// the processes `proxy_pids` together. The backend behind `stats` must serve no other idle
/// connections.
///
/// # Errors
/// Returns an error when a connection fails, the backend does not see every connection in
/// time, or the proxy's RSS cannot be read.
pub async fn run_idle(
    target: SocketAddr,
    connections: usize,
    proxy_pids: &[u32],
    stats: &BackendStats,
) -> Result<IdleSample, BenchError> {
    let warmup = open_idle(target, WARMUP_CONNECTIONS).await?;
    wait_for_idle_count(stats, WARMUP_CONNECTIONS).await?;
    drop(warmup);
    wait_for_idle_count(stats, 0).await?;
    tokio::time::sleep(SETTLE_PAUSE).await;

    let rss_before_kib = total_rss_kib(proxy_pids)?;
    let idle_streams = open_idle(target, connections).await?;
    wait_for_idle_count(stats, connections).await?;
    tokio::time::sleep(SETTLE_PAUSE).await;
    let rss_after_kib = total_rss_kib(proxy_pids)?;

    drop(idle_streams);
    wait_for_idle_count(stats, 0).await?;

    Ok(IdleSample {
        connections,
        rss_before_kib,
        rss_after_kib,
    })
}

fn total_rss_kib(pids: &[u32]) -> Result<u64, BenchError> {
    pids.iter().map(|&pid| process::rss_kib(pid)).sum()
}

async fn open_idle(target: SocketAddr, count: usize) -> Result<Vec<TcpStream>, BenchError> {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = connect_async(target).await?;
        stream
            .write_all(&[Mode::Idle.header()])
            .await
            .map_err(|source| BenchError::Traffic {
                scenario: "idle",
                addr: target,
                source,
            })?;
        streams.push(stream);
    }
    Ok(streams)
}

async fn wait_for_idle_count(stats: &BackendStats, expected: usize) -> Result<(), BenchError> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while stats.idle_connections() != expected {
        if Instant::now() >= deadline {
            return Err(BenchError::Stalled {
                waiting_for: format!(
                    "the backend to have {expected} idle connections open (it has {})",
                    stats.idle_connections()
                ),
                timeout: SETTLE_TIMEOUT,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_divides_growth_by_connections() {
        let sample = IdleSample {
            connections: 2000,
            rss_before_kib: 10_000,
            rss_after_kib: 15_000,
        };
        assert!((sample.kib_per_connection() - 2.5).abs() < 1e-9);
    }
}
