//! The connection-rate generator: new connection, 1-byte exchange, close, in conn/s.
//!
//! Many clients (tokio tasks) loop concurrently. Each connection sends the
//! [`Mode::ReplyAndClose`] header, reads the backend's 1-byte reply and closes with
//! SO_LINGER 0. The reset that follows means the client socket never enters TIME_WAIT, so
//! a long run at tens of thousands of connections per second does not exhaust the
//! ephemeral ports of the loopback address. A connection counts once its reply arrived.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::backend::Mode;
use crate::error::BenchError;
use crate::net::{IO_TIMEOUT, connect_async};
use crate::process::CpuProbe;

/// Shape of one connection-rate measurement.
#[derive(Debug, Clone, Copy)]
pub struct ConnectLoad {
    /// Concurrent clients, each running one connection at a time.
    pub clients: usize,
    /// Time the clients run before the window opens.
    pub warmup: Duration,
    /// Length of the measured window.
    pub duration: Duration,
}

/// Result of one connection-rate measurement.
#[derive(Debug, Clone, Copy)]
pub struct ConnectSample {
    /// Connections that completed their exchange during the window.
    pub connections: u64,
    /// Connections that failed during the whole run, warmup included.
    pub failures: u64,
    /// Exact length of the window.
    pub elapsed: Duration,
}

impl ConnectSample {
    /// Completed connections per second.
    pub fn per_second(&self) -> f64 {
        self.connections as f64 / self.elapsed.as_secs_f64()
    }
}

#[derive(Debug, Default)]
struct Counters {
    completed: AtomicU64,
    failed: AtomicU64,
}

/// Runs `load` against `target` on the current tokio runtime.
///
/// Failed connections are counted, not fatal, because a proxy at its limits may drop a
/// few; the caller decides what to make of [`ConnectSample::failures`].
///
/// # Errors
/// Returns [`BenchError::Stalled`] when no connection completes during the window, or
/// [`BenchError::ProcessStats`] from the probe.
pub async fn run_connect_rate(
    target: SocketAddr,
    load: &ConnectLoad,
    probe: &mut CpuProbe,
) -> Result<ConnectSample, BenchError> {
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = JoinSet::new();
    for _ in 0..load.clients {
        clients.spawn(run_client(target, Arc::clone(&counters), Arc::clone(&stop)));
    }

    let window = measure_window(load, &counters, probe).await;

    stop.store(true, Ordering::Relaxed);
    while clients.join_next().await.is_some() {}

    let mut sample = window?;
    sample.failures = counters.failed.load(Ordering::Relaxed);
    if sample.connections == 0 {
        return Err(BenchError::Stalled {
            waiting_for: format!("a connection through {target} to complete its exchange"),
            timeout: load.duration,
        });
    }
    Ok(sample)
}

async fn measure_window(
    load: &ConnectLoad,
    counters: &Counters,
    probe: &mut CpuProbe,
) -> Result<ConnectSample, BenchError> {
    tokio::time::sleep(load.warmup).await;

    probe.begin()?;
    let started = Instant::now();
    let completed_at_start = counters.completed.load(Ordering::Relaxed);

    tokio::time::sleep(load.duration).await;

    let connections = counters.completed.load(Ordering::Relaxed) - completed_at_start;
    let elapsed = started.elapsed();
    probe.end()?;

    Ok(ConnectSample {
        connections,
        failures: 0,
        elapsed,
    })
}

async fn run_client(target: SocketAddr, counters: Arc<Counters>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(IO_TIMEOUT, exchange_one_byte(target)).await {
            Ok(Ok(())) => {
                counters.completed.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, target = %target, "connection-rate exchange failed");
                counters.failed.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                tracing::debug!(target = %target, "connection-rate exchange timed out");
                counters.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn exchange_one_byte(target: SocketAddr) -> Result<(), BenchError> {
    let traffic_error = |source| BenchError::Traffic {
        scenario: "connect-rate",
        addr: target,
        source,
    };

    let mut stream = connect_async(target).await?;
    stream
        .write_all(&[Mode::ReplyAndClose.header()])
        .await
        .map_err(traffic_error)?;
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply).await.map_err(traffic_error)?;

    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .map_err(traffic_error)?;
    Ok(())
}
