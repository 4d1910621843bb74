//! The request/response generator: 1 KiB requests on one open connection, with the
//! latency of each round trip in a histogram.
//!
//! A single blocking client sends a request, waits for the full 1 KiB echo, and only then
//! sends the next one, so each sample is the latency of an unloaded path rather than of a
//! queue. TCP_NODELAY is set on the client and on the backend's echo connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::backend::Mode;
use crate::error::BenchError;
use crate::net::connect_blocking;
use crate::process::CpuProbe;

/// Size of one request and of its response.
pub const REQUEST_BYTES: usize = 1024;

/// Highest latency the histogram tracks: 10 s in nanoseconds. Slower round trips are
/// clamped to it.
const MAX_TRACKED_NANOS: u64 = 10_000_000_000;

/// Shape of one request/response measurement.
#[derive(Debug, Clone, Copy)]
pub struct RequestLoad {
    /// Time spent on round trips before the window opens, which are not recorded.
    pub warmup: Duration,
    /// Length of the measured window.
    pub duration: Duration,
}

/// Result of one request/response measurement.
#[derive(Debug, Clone, Copy)]
pub struct LatencySample {
    /// Round trips recorded.
    pub requests: u64,
    /// Median round-trip latency in µs.
    pub p50_micros: f64,
    /// 99th percentile round-trip latency in µs.
    pub p99_micros: f64,
}

/// Runs `load` against `target` on the calling thread.
///
/// # Errors
/// Returns an error when the connection fails or an echo does not match its request.
pub fn run_request_response(
    target: SocketAddr,
    load: &RequestLoad,
    probe: &mut CpuProbe,
) -> Result<LatencySample, BenchError> {
    let traffic_error = |source| BenchError::Traffic {
        scenario: "request/response",
        addr: target,
        source,
    };

    let mut stream = connect_blocking(target)?;
    stream.set_nodelay(true).map_err(traffic_error)?;
    stream
        .write_all(&[Mode::Echo.header()])
        .map_err(traffic_error)?;

    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, MAX_TRACKED_NANOS, 3).expect("valid histogram bounds");
    let mut exchange = Exchange::new();

    let warmup_end = Instant::now() + load.warmup;
    while Instant::now() < warmup_end {
        exchange.round_trip(&mut stream).map_err(traffic_error)?;
    }

    probe.begin()?;
    let window_end = Instant::now() + load.duration;
    while Instant::now() < window_end {
        let latency = exchange.round_trip(&mut stream).map_err(traffic_error)?;
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        histogram.saturating_record(nanos.max(1));
    }
    probe.end()?;

    Ok(LatencySample {
        requests: histogram.len(),
        p50_micros: histogram.value_at_quantile(0.50) as f64 / 1000.0,
        p99_micros: histogram.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

/// Request and response buffers of one connection. The request changes on every round
/// trip, so a path that replays or mixes up data fails the check.
struct Exchange {
    request: Vec<u8>,
    response: Vec<u8>,
    sequence: u8,
}

impl Exchange {
    fn new() -> Exchange {
        Exchange {
            request: vec![0; REQUEST_BYTES],
            response: vec![0; REQUEST_BYTES],
            sequence: 0,
        }
    }

    fn round_trip(&mut self, stream: &mut TcpStream) -> std::io::Result<Duration> {
        self.sequence = self.sequence.wrapping_add(1);
        self.request.fill(self.sequence);

        let started = Instant::now();
        stream.write_all(&self.request)?;
        stream.read_exact(&mut self.response)?;
        let latency = started.elapsed();

        if self.response != self.request {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "echoed response differs from the request",
            ));
        }
        Ok(latency)
    }
}
