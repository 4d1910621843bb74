//! The bench backend: one TCP listener that serves every scenario.
//!
//! The first byte a client sends selects the [`Mode`] of its connection. A one-byte header
//! passes unchanged through any TCP proxy, so the same backend address works for the direct
//! path, the Styx engines and peer proxies alike. The backend counts what the generators
//! need to see from the far side of a proxy: the bytes sunk (bulk throughput is measured
//! where data arrives, not where it is written) and the idle connections held open.
//!
//! Accepting, reply-and-close and idle connections run on the tokio runtime the backend is
//! started on, because there are thousands of them. Sink connections all run on one
//! thread of their own, as in iperf3's server. So the receiving side of a bulk run takes
//! about one core whatever the stream count. An echo connection (one at a time) gets a
//! blocking thread: a blocking read takes one syscall and one wake-up, where readiness
//! polling takes a failed read and an epoll wait as well.
//!
//! This module is not a load generator and keeps no latency figures.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream as StdTcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::BenchError;

/// Read buffer of a sink connection. Large reads keep the backend's CPU share of a bulk
/// run small.
const SINK_BUFFER_BYTES: usize = 256 * 1024;

/// Read buffer of an echo connection; requests are 1 KiB.
const ECHO_BUFFER_BYTES: usize = 16 * 1024;

/// Pause after a failed accept (EMFILE, ENFILE, ENOBUFS), so the loop never spins.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Behaviour of one backend connection, chosen by the first byte the client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read and discard everything, counting the bytes.
    Sink,
    /// Write back every byte read.
    Echo,
    /// Reply with one byte, then close.
    ReplyAndClose,
    /// Hold the connection open until the client closes it.
    Idle,
}

impl Mode {
    /// Header byte that selects this mode.
    pub const fn header(self) -> u8 {
        match self {
            Mode::Sink => b'S',
            Mode::Echo => b'E',
            Mode::ReplyAndClose => b'C',
            Mode::Idle => b'I',
        }
    }

    /// Parses a header byte, or returns `None` for a byte that selects no mode.
    pub const fn from_header(byte: u8) -> Option<Mode> {
        match byte {
            b'S' => Some(Mode::Sink),
            b'E' => Some(Mode::Echo),
            b'C' => Some(Mode::ReplyAndClose),
            b'I' => Some(Mode::Idle),
            _ => None,
        }
    }
}

/// Counters the backend updates and the generators read.
#[derive(Debug, Default)]
pub struct BackendStats {
    sunk_bytes: AtomicU64,
    idle_connections: AtomicUsize,
}

impl BackendStats {
    /// Bytes read by sink connections since the backend started.
    pub fn sunk_bytes(&self) -> u64 {
        self.sunk_bytes.load(Ordering::Relaxed)
    }

    /// Idle connections open right now.
    pub fn idle_connections(&self) -> usize {
        self.idle_connections.load(Ordering::Relaxed)
    }
}

/// A running bench backend. Dropping it stops accepting. Open connections end when their
/// clients close them, and those on the runtime also end when the runtime shuts down.
#[derive(Debug)]
pub struct Backend {
    local_addr: SocketAddr,
    stats: Arc<BackendStats>,
    accept_task: JoinHandle<()>,
    _sink_thread: SinkThread,
}

impl Backend {
    /// Binds `addr` and starts serving on the current tokio runtime.
    ///
    /// # Errors
    /// Returns [`BenchError::BindBackend`] when the address cannot be bound, for example
    /// because another bench run uses it.
    pub fn start(addr: SocketAddr) -> Result<Backend, BenchError> {
        let bind_error = |source| BenchError::BindBackend { addr, source };

        let std_listener = StdTcpListener::bind(addr).map_err(bind_error)?;
        std_listener.set_nonblocking(true).map_err(bind_error)?;
        let local_addr = std_listener.local_addr().map_err(bind_error)?;
        let listener = TcpListener::from_std(std_listener).map_err(bind_error)?;

        let sink_thread = SinkThread::start().map_err(BenchError::Runtime)?;
        let stats = Arc::new(BackendStats::default());
        let accept_task = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&stats),
            sink_thread.handle.clone(),
        ));
        tracing::debug!(backend.addr = %local_addr, "bench backend listening");

        Ok(Backend {
            local_addr,
            stats,
            accept_task,
            _sink_thread: sink_thread,
        })
    }

    /// Address the backend listens on (the bound port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counters shared with the generators.
    pub fn stats(&self) -> &Arc<BackendStats> {
        &self.stats
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// The thread that reads every sink connection, on a single-threaded runtime. Dropping
/// it stops the runtime, which closes the sink connections.
#[derive(Debug)]
struct SinkThread {
    handle: Handle,
    _stop: oneshot::Sender<()>,
}

impl SinkThread {
    fn start() -> io::Result<SinkThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();

        thread::Builder::new()
            .name("bench-sink".to_owned())
            .spawn(move || {
                // Resolves when the sender is dropped with the backend.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(SinkThread {
            handle,
            _stop: stop,
        })
    }
}

async fn accept_loop(listener: TcpListener, stats: Arc<BackendStats>, sink: Handle) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, Arc::clone(&stats), sink.clone()));
            }
            Err(error) => {
                tracing::debug!(%error, "bench backend failed to accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Serves one connection. Errors end the connection quietly: a client that resets is
/// normal in the connection-rate scenario.
async fn serve_connection(mut stream: TcpStream, stats: Arc<BackendStats>, sink_thread: Handle) {
    let mut header = [0u8; 1];
    let Ok(1) = stream.read(&mut header).await else {
        return;
    };
    let Some(mode) = Mode::from_header(header[0]) else {
        tracing::debug!(
            header = header[0],
            "bench backend got an unknown mode header"
        );
        return;
    };

    let result = match mode {
        Mode::Sink => move_to_sink_thread(stream, &sink_thread, stats),
        Mode::Echo => serve_blocking(stream, mode, echo),
        Mode::ReplyAndClose => stream.write_all(&header).await,
        Mode::Idle => hold_idle(stream, &stats).await,
    };
    if let Err(error) = result {
        tracing::trace!(?mode, %error, "bench backend connection ended with an error");
    }
}

/// Moves a connection off the runtime and runs `serve` on it in its own blocking thread.
fn serve_blocking(
    stream: TcpStream,
    mode: Mode,
    serve: impl FnOnce(StdTcpStream) -> io::Result<()> + Send + 'static,
) -> io::Result<()> {
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;

    thread::Builder::new()
        .name("bench-backend".to_owned())
        .spawn(move || {
            if let Err(error) = serve(stream) {
                tracing::trace!(?mode, %error, "bench backend connection ended with an error");
            }
        })?;
    Ok(())
}

/// Moves a sink connection to the sink thread's runtime, which reads it from then on.
fn move_to_sink_thread(
    stream: TcpStream,
    sink_thread: &Handle,
    stats: Arc<BackendStats>,
) -> io::Result<()> {
    // The std socket stays non-blocking, and registers with the sink runtime's reactor
    // once `sink` runs there.
    let stream = stream.into_std()?;
    sink_thread.spawn(async move {
        if let Err(error) = sink(stream, &stats).await {
            tracing::trace!(%error, "bench backend sink connection ended with an error");
        }
    });
    Ok(())
}

async fn sink(stream: StdTcpStream, stats: &BackendStats) -> io::Result<()> {
    let mut stream = TcpStream::from_std(stream)?;
    let mut buffer = vec![0u8; SINK_BUFFER_BYTES];
    loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        stats.sunk_bytes.fetch_add(read as u64, Ordering::Relaxed);
    }
}

fn echo(mut stream: StdTcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buffer = vec![0u8; ECHO_BUFFER_BYTES];
    loop {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            return Ok(());
        }
        stream.write_all(&buffer[..read])?;
    }
}

async fn hold_idle(mut stream: TcpStream, stats: &BackendStats) -> io::Result<()> {
    stats.idle_connections.fetch_add(1, Ordering::Relaxed);
    let mut buffer = [0u8; 64];
    let result = loop {
        match stream.read(&mut buffer).await {
            Ok(0) => break Ok(()),
            Ok(_) => continue,
            Err(error) => break Err(error),
        }
    };
    stats.idle_connections.fetch_sub(1, Ordering::Relaxed);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_header_round_trips() {
        for mode in [Mode::Sink, Mode::Echo, Mode::ReplyAndClose, Mode::Idle] {
            assert_eq!(Mode::from_header(mode.header()), Some(mode));
        }
    }

    #[test]
    fn mode_unknown_header_is_none() {
        assert_eq!(Mode::from_header(b'x'), None);
        assert_eq!(Mode::from_header(0), None);
    }
}
