//! Forwarding engines: move bytes between a client and an upstream socket until the
//! connection is over.
//!
//! Two engines implement one contract:
//! - `splice` (Linux only): `splice(2)` socket -> pipe -> socket, so payload bytes never
//!   enter user space. See [`splice`](self::splice) for its fallbacks.
//! - `copy` (every platform, the macOS engine): reads into a large buffer and writes it
//!   out.
//!
//! The contract both engines keep:
//! - Each direction runs on its own until its source sends a FIN, which becomes a write
//!   shutdown on the destination while the other direction keeps flowing. The
//!   connection is complete when both directions have finished.
//! - Everything read is written before the FIN is passed on, so a clean close loses
//!   nothing in flight.
//! - A reset from one side (seen as ECONNRESET on read, or ECONNRESET/EPIPE on write)
//!   ends both directions and resets the other side (SO_LINGER 0, then close).
//! - A direction reads again only after the destination accepted everything it holds,
//!   so a slow reader stops the proxy from reading and the kernel's windows push back
//!   on the sender. Memory per direction is bounded by one buffer or one pipe.
//! - While a direction waits for data it holds neither buffer nor pipe: both come from
//!   small process-wide pools and go back as soon as the source has nothing to read.
//! - When no byte moves in either direction for the idle timeout, both sockets are
//!   closed, so half-closed connections cannot linger forever.
//!
//! This module does not open connections or count connection outcomes: the listener
//! does that with the [`Transfer`] returned here.

mod buffers;
mod copy;
#[cfg(target_os = "linux")]
mod splice;

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::Counter;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bytes a direction moves before it adds them to the shared byte counter.
const COUNTER_FLUSH_BYTES: u64 = 1 << 20;

/// A forwarding engine, as resolved for this platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Linux `splice(2)` through a pipe; payload stays in the kernel.
    Splice,
    /// Buffered copy through user space.
    Copy,
}

impl Engine {
    /// Returns the engine's name as used on the command line and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Splice => "splice",
            Engine::Copy => "copy",
        }
    }
}

/// Returns whether `splice(2)` works in this process (kernel support, no seccomp
/// filter against it). The probe runs once and its result is cached.
pub fn splice_available() -> bool {
    #[cfg(target_os = "linux")]
    {
        splice::available()
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// One end of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The accepted connection.
    Client,
    /// The connection the proxy opened.
    Upstream,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }

    /// Returns the label value used in metrics and logs.
    pub fn as_label(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        }
    }
}

/// How a forwarded connection ended.
#[derive(Debug)]
pub enum Close {
    /// Both directions finished with a FIN.
    Completed,
    /// `Side` reset the connection; the other side was reset in turn.
    Reset(Side),
    /// A socket error other than a reset on `Side`; the other side was reset.
    Failed(Side, io::Error),
    /// No byte moved for the idle timeout; both sides were closed.
    IdleTimeout,
    /// The shutdown drain deadline passed; both sides were reset.
    CutOff,
}

/// The outcome of [`forward`].
#[derive(Debug)]
pub struct Transfer {
    /// Bytes written to the upstream.
    pub client_to_upstream: u64,
    /// Bytes written to the client.
    pub upstream_to_client: u64,
    /// How the connection ended.
    pub close: Close,
}

/// Counters that receive the forwarded bytes of each direction.
#[derive(Debug, Clone)]
pub struct ByteCounters {
    /// Receives the bytes written to the upstream.
    pub client_to_upstream: Counter,
    /// Receives the bytes written to the client.
    pub upstream_to_client: Counter,
}

impl Default for ByteCounters {
    fn default() -> Self {
        Self {
            client_to_upstream: Counter::noop(),
            upstream_to_client: Counter::noop(),
        }
    }
}

/// Settings of one forwarded connection.
#[derive(Debug, Clone)]
pub struct ForwardOptions {
    /// The engine that moves the bytes.
    pub engine: Engine,
    /// Closes the connection when no byte moved for this long; `None` never does.
    pub idle_timeout: Option<Duration>,
}

/// Forwards bytes between `client` and `upstream` in both directions until the
/// connection ends, then closes both sockets.
///
/// The half-close, reset, backpressure and idle rules are those of the module docs.
/// When `cut_off` is cancelled, both sides are reset at once.
///
/// # Return value
/// The bytes moved each way and how the connection ended. Errors are part of the
/// [`Close`] value, because by then both sockets have been dealt with.
///
/// # Cancel safety
/// Dropping the future closes both sockets without a reset and loses whatever sits in
/// a buffer or pipe; cancel `cut_off` instead to end a connection on purpose.
pub async fn forward(
    client: TcpStream,
    upstream: TcpStream,
    options: &ForwardOptions,
    counters: &ByteCounters,
    cut_off: &CancellationToken,
) -> Transfer {
    let activity = Activity::new();
    let c2u_total = AtomicU64::new(0);
    let u2c_total = AtomicU64::new(0);
    let client_to_upstream = Direction {
        src: &client,
        dst: &upstream,
        src_side: Side::Client,
        tally: Tally::new(&c2u_total, &counters.client_to_upstream),
        activity: &activity,
    };
    let upstream_to_client = Direction {
        src: &upstream,
        dst: &client,
        src_side: Side::Upstream,
        tally: Tally::new(&u2c_total, &counters.upstream_to_client),
        activity: &activity,
    };

    let close = match options.engine {
        #[cfg(target_os = "linux")]
        Engine::Splice => {
            let c2u = splice::run(client_to_upstream);
            let u2c = splice::run(upstream_to_client);
            drive(c2u, u2c, &activity, options.idle_timeout, cut_off).await
        }
        #[cfg(not(target_os = "linux"))]
        Engine::Splice => {
            let c2u = copy::run(client_to_upstream);
            let u2c = copy::run(upstream_to_client);
            drive(c2u, u2c, &activity, options.idle_timeout, cut_off).await
        }
        Engine::Copy => {
            let c2u = copy::run(client_to_upstream);
            let u2c = copy::run(upstream_to_client);
            drive(c2u, u2c, &activity, options.idle_timeout, cut_off).await
        }
    };

    match &close {
        Close::Completed | Close::IdleTimeout => {}
        Close::Reset(side) | Close::Failed(side, _) => match side {
            Side::Client => reset(&upstream),
            Side::Upstream => reset(&client),
        },
        Close::CutOff => {
            reset(&client);
            reset(&upstream);
        }
    }
    drop(client);
    drop(upstream);

    Transfer {
        client_to_upstream: c2u_total.into_inner(),
        upstream_to_client: u2c_total.into_inner(),
        close,
    }
}

/// Polls both directions, the idle timer and the cut-off signal until the connection
/// is over. A direction that finished cleanly stops being polled while the other goes
/// on; any other end stops both.
async fn drive(
    client_to_upstream: impl Future<Output = DirectionEnd>,
    upstream_to_client: impl Future<Output = DirectionEnd>,
    activity: &Activity,
    idle_timeout: Option<Duration>,
    cut_off: &CancellationToken,
) -> Close {
    let mut client_to_upstream = pin!(client_to_upstream);
    let mut upstream_to_client = pin!(upstream_to_client);
    let mut idle = pin!(activity.idle_expired(idle_timeout));
    let (mut c2u_finished, mut u2c_finished) = (false, false);

    while !(c2u_finished && u2c_finished) {
        let end = tokio::select! {
            end = &mut client_to_upstream, if !c2u_finished => {
                c2u_finished = true;
                end
            }
            end = &mut upstream_to_client, if !u2c_finished => {
                u2c_finished = true;
                end
            }
            () = &mut idle => return Close::IdleTimeout,
            () = cut_off.cancelled() => return Close::CutOff,
        };
        match end {
            DirectionEnd::Finished => {}
            DirectionEnd::Reset(side) => return Close::Reset(side),
            DirectionEnd::Failed(side, error) => return Close::Failed(side, error),
        }
    }
    Close::Completed
}

/// Sends a reset instead of a FIN when `stream` is closed.
pub(crate) fn reset(stream: &TcpStream) {
    // If this fails the socket is already gone or closing, and a FIN is all that is left.
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// One direction of a connection: what it reads from, writes to, and reports into.
struct Direction<'a> {
    src: &'a TcpStream,
    dst: &'a TcpStream,
    src_side: Side,
    tally: Tally<'a>,
    activity: &'a Activity,
}

/// How one direction ended.
#[derive(Debug)]
enum DirectionEnd {
    /// The source sent a FIN and the destination's write side was shut down.
    Finished,
    /// `Side` sent a reset.
    Reset(Side),
    /// A socket error other than a reset on `Side`.
    Failed(Side, io::Error),
}

impl DirectionEnd {
    /// Classifies an error from reading the source at `side`.
    fn read_failure(side: Side, error: io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::ConnectionReset => DirectionEnd::Reset(side),
            _ => DirectionEnd::Failed(side, error),
        }
    }

    /// Classifies an error from writing the destination at `side`. EPIPE means the
    /// peer is gone, which for a TCP socket means it reset or closed after a reset.
    fn write_failure(side: Side, error: io::Error) -> Self {
        match error.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => DirectionEnd::Reset(side),
            _ => DirectionEnd::Failed(side, error),
        }
    }
}

/// Passes the source's FIN on by shutting down the destination's write side.
fn finish(dst: &TcpStream, dst_side: Side) -> DirectionEnd {
    match socket2::SockRef::from(dst).shutdown(Shutdown::Write) {
        Ok(()) => DirectionEnd::Finished,
        // The destination is already disconnected; its own direction reports why.
        Err(error) if error.kind() == io::ErrorKind::NotConnected => DirectionEnd::Finished,
        Err(error) => DirectionEnd::write_failure(dst_side, error),
    }
}

/// Counts one direction's bytes: exactly in `total`, and in chunks into the shared
/// counter so the data path does not touch it on every system call.
struct Tally<'a> {
    total: &'a AtomicU64,
    counter: &'a Counter,
    unflushed: u64,
}

impl<'a> Tally<'a> {
    fn new(total: &'a AtomicU64, counter: &'a Counter) -> Self {
        Self {
            total,
            counter,
            unflushed: 0,
        }
    }

    fn add(&mut self, bytes: usize) {
        let bytes = bytes as u64;
        self.total.fetch_add(bytes, Ordering::Relaxed);
        self.unflushed += bytes;
        if self.unflushed >= COUNTER_FLUSH_BYTES {
            self.counter.increment(self.unflushed);
            self.unflushed = 0;
        }
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        if self.unflushed > 0 {
            self.counter.increment(self.unflushed);
        }
    }
}

/// When a byte last moved in either direction, in milliseconds since the start.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let elapsed = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(elapsed, Ordering::Relaxed);
    }

    /// Completes once no byte has moved for `timeout`; never completes for `None`.
    async fn idle_expired(&self, timeout: Option<Duration>) {
        let Some(timeout) = timeout else {
            return std::future::pending().await;
        };
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + timeout;
            if deadline <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}
