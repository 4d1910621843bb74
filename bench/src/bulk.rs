//! The bulk generator: one-way throughput over N streams, in Gbit/s.
//!
//! One thread writes to every stream, as iperf3 does with its single event loop. The
//! backend reads every sink connection on one thread too. So the direct path runs on
//! about one core for each side whatever the stream count, and a proxy competes for the
//! CPU with two generator threads, not with two per stream. Writes are 256 KiB, which
//! keeps the generator's share of the CPU small. Throughput is counted where the data
//! arrives, at the backend's sink, so bytes still queued in a proxy's buffers or socket
//! queues at the end of the window do not count.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::backend::{BackendStats, Mode};
use crate::error::BenchError;
use crate::net::{IO_TIMEOUT, connect_blocking};
use crate::process::CpuProbe;

/// Size of one write. Large writes keep the generator's share of the CPU small.
const WRITE_CHUNK_BYTES: usize = 256 * 1024;

/// Shape of one bulk measurement.
#[derive(Debug, Clone, Copy)]
pub struct BulkLoad {
    /// Parallel streams, each its own connection, all written by one thread.
    pub streams: usize,
    /// Time the streams run before the window opens, so TCP windows have grown.
    pub warmup: Duration,
    /// Length of the measured window.
    pub duration: Duration,
}

/// Result of one bulk measurement.
#[derive(Debug, Clone, Copy)]
pub struct BulkSample {
    /// Bytes that reached the backend during the window.
    pub bytes: u64,
    /// Exact length of the window.
    pub elapsed: Duration,
}

impl BulkSample {
    /// Throughput in Gbit/s (10^9 bits per second).
    pub fn gbit_per_second(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }
}

/// Runs `load` against `target`, whose traffic must end at the backend behind `stats`.
///
/// # Errors
/// Returns an error when a stream fails to connect or write, or when no byte reaches the
/// backend during the window.
pub fn run_bulk(
    target: SocketAddr,
    load: &BulkLoad,
    stats: &BackendStats,
    probe: &mut CpuProbe,
) -> Result<BulkSample, BenchError> {
    let streams = (0..load.streams)
        .map(|_| open_sink_stream(target))
        .collect::<Result<Vec<_>, _>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(streams, Arc::clone(&stop)).map_err(traffic_error(target))?;

    let window = measure_window(load, stats, probe);

    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("bulk writer thread panicked");
    let sample = window?;
    written.map_err(traffic_error(target))?;

    if sample.bytes == 0 {
        return Err(BenchError::Stalled {
            waiting_for: format!("bulk data from {target} to reach the backend"),
            timeout: load.duration,
        });
    }
    Ok(sample)
}

fn traffic_error(target: SocketAddr) -> impl Fn(io::Error) -> BenchError {
    move |source| BenchError::Traffic {
        scenario: "bulk",
        addr: target,
        source,
    }
}

fn open_sink_stream(target: SocketAddr) -> Result<TcpStream, BenchError> {
    let mut stream = connect_blocking(target)?;
    stream
        .write_all(&[Mode::Sink.header()])
        .map_err(traffic_error(target))?;
    stream
        .set_nonblocking(true)
        .map_err(traffic_error(target))?;
    Ok(stream)
}

/// Starts the thread that writes to every stream until `stop` is set, and returns the
/// first write error.
fn spawn_writer(
    streams: Vec<TcpStream>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<io::Result<()>>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    thread::Builder::new()
        .name("bulk-writer".to_owned())
        .spawn(move || runtime.block_on(write_all_streams(streams, stop)))
}

async fn write_all_streams(streams: Vec<TcpStream>, stop: Arc<AtomicBool>) -> io::Result<()> {
    let chunk: Arc<[u8]> = vec![0x5a_u8; WRITE_CHUNK_BYTES].into();
    let mut writers = JoinSet::new();
    for stream in streams {
        let stream = tokio::net::TcpStream::from_std(stream)?;
        writers.spawn(write_until_stopped(
            stream,
            Arc::clone(&chunk),
            Arc::clone(&stop),
        ));
    }

    let mut first_error = Ok(());
    while let Some(joined) = writers.join_next().await {
        let written = joined.expect("bulk writer task panicked");
        first_error = first_error.and(written);
    }
    first_error
}

async fn write_until_stopped(
    mut stream: tokio::net::TcpStream,
    chunk: Arc<[u8]>,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        // A path that stops taking data fails the run instead of hanging it.
        tokio::time::timeout(IO_TIMEOUT, stream.write_all(&chunk))
            .await
            .map_err(|_| {
                let message = format!("bulk write timed out after {IO_TIMEOUT:?}");
                io::Error::new(io::ErrorKind::TimedOut, message)
            })??;
    }
    Ok(())
}

fn measure_window(
    load: &BulkLoad,
    stats: &BackendStats,
    probe: &mut CpuProbe,
) -> Result<BulkSample, BenchError> {
    thread::sleep(load.warmup);

    probe.begin()?;
    let started = Instant::now();
    let bytes_at_start = stats.sunk_bytes();

    thread::sleep(load.duration);

    let bytes = stats.sunk_bytes() - bytes_at_start;
    let elapsed = started.elapsed();
    probe.end()?;

    Ok(BulkSample { bytes, elapsed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_converts_to_gbit() {
        let sample = BulkSample {
            bytes: 1_250_000_000,
            elapsed: Duration::from_secs(2),
        };
        assert!((sample.gbit_per_second() - 5.0).abs() < 1e-9);
    }
}
