//! The bulk generator: one-way throughput over N streams, in Gbit/s.
//!
//! Each stream is a blocking std thread that writes large chunks as fast as the path takes
//! them. Blocking writes are the cheapest generator on a small machine: no readiness
//! polling, one syscall per 256 KiB. Throughput is counted where the data arrives, at the
//! backend's sink, so bytes still queued in a proxy's buffers or socket queues at the end
//! of the window do not count.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::backend::{BackendStats, Mode};
use crate::error::BenchError;
use crate::net::connect_blocking;
use crate::process::CpuProbe;

/// Size of one write. Large writes keep the generator's share of the CPU small.
const WRITE_CHUNK_BYTES: usize = 256 * 1024;

/// Shape of one bulk measurement.
#[derive(Debug, Clone, Copy)]
pub struct BulkLoad {
    /// Parallel streams, each its own connection and thread.
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
    let writers: Vec<_> = streams
        .into_iter()
        .map(|stream| spawn_writer(stream, Arc::clone(&stop)))
        .collect();

    let window = measure_window(load, stats, probe);

    stop.store(true, Ordering::Relaxed);
    let joined = join_writers(writers, target);
    let sample = window?;
    joined?;

    if sample.bytes == 0 {
        return Err(BenchError::Stalled {
            waiting_for: format!("bulk data from {target} to reach the backend"),
            timeout: load.duration,
        });
    }
    Ok(sample)
}

fn open_sink_stream(target: SocketAddr) -> Result<TcpStream, BenchError> {
    let mut stream = connect_blocking(target)?;
    stream
        .write_all(&[Mode::Sink.header()])
        .map_err(|source| BenchError::Traffic {
            scenario: "bulk",
            addr: target,
            source,
        })?;
    Ok(stream)
}

fn spawn_writer(mut stream: TcpStream, stop: Arc<AtomicBool>) -> JoinHandle<std::io::Result<()>> {
    thread::spawn(move || {
        let chunk = vec![0x5a_u8; WRITE_CHUNK_BYTES];
        while !stop.load(Ordering::Relaxed) {
            stream.write_all(&chunk)?;
        }
        Ok(())
    })
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

fn join_writers(
    writers: Vec<JoinHandle<std::io::Result<()>>>,
    target: SocketAddr,
) -> Result<(), BenchError> {
    let mut first_error = None;
    for writer in writers {
        let result = writer.join().expect("bulk writer thread panicked");
        if let Err(source) = result {
            first_error.get_or_insert(BenchError::Traffic {
                scenario: "bulk",
                addr: target,
                source,
            });
        }
    }
    first_error.map_or(Ok(()), Err)
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
