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
//! - While a direction waits for data it has neither buffer nor pipe: both come from
//!   small process-wide pools and go back as soon as the source has nothing to read.
//! - When no byte moves in either direction for the idle timeout, both sockets are
//!   closed, so half-closed connections cannot linger forever.
//!
//! Both directions and the timers of a connection are polled by one hand-written state
//! machine rather than by nested async functions. Readiness waits then live in tokio's
//! per-socket state, not in the connection's future, which keeps an idle connection to
//! a few hundred bytes of task memory.
//!
//! This module does not open connections or count connection outcomes: the listener
//! does that with the [`Transfer`] returned here.

mod buffers;
mod copy;
mod flow;
#[cfg(target_os = "linux")]
mod splice;

use std::future::{Future, poll_fn};
use std::io;
use std::net::Shutdown;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use metrics::Counter;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::flow::{Flow, FlowEnd};

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

/// The way a forwarded connection ended.
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
    /// The way the connection ended.
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
/// a buffer or pipe. To end a connection on purpose, cancel `cut_off` instead.
pub async fn forward(
    client: TcpStream,
    upstream: TcpStream,
    options: &ForwardOptions,
    counters: &ByteCounters,
    cut_off: &CancellationToken,
) -> Transfer {
    let mut client_to_upstream =
        Flow::new(options.engine, Side::Client, &counters.client_to_upstream);
    let mut upstream_to_client =
        Flow::new(options.engine, Side::Upstream, &counters.upstream_to_client);
    let close = drive(
        [
            (&mut client_to_upstream, &client, &upstream),
            (&mut upstream_to_client, &upstream, &client),
        ],
        options.idle_timeout,
        cut_off,
    )
    .await;

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
        client_to_upstream: client_to_upstream.total(),
        upstream_to_client: upstream_to_client.total(),
        close,
    }
}

/// Polls both directions, the idle timer and the cut-off signal until the connection
/// is over. A direction that finished cleanly stops being polled while the other goes
/// on; any other end stops both.
async fn drive(
    mut flows: [(&mut Flow<'_>, &TcpStream, &TcpStream); 2],
    idle_timeout: Option<Duration>,
    cut_off: &CancellationToken,
) -> Close {
    let mut cancelled = pin!(cut_off.cancelled());
    let mut idle = pin!(idle_timeout.map(|timeout| tokio::time::sleep(timeout)));
    let mut last_active = Instant::now();

    poll_fn(|cx| {
        if cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Close::CutOff);
        }

        // Each direction stops on its own when tokio's cooperative budget runs out, so
        // alternating which one goes first keeps a busy direction from starving the other.
        flows.swap(0, 1);
        let mut moved = false;
        for (flow, src, dst) in &mut flows {
            if flow.is_finished() {
                continue;
            }
            match flow.poll_flow(cx, src, dst, &mut moved) {
                Poll::Pending | Poll::Ready(FlowEnd::Finished) => {}
                Poll::Ready(FlowEnd::Reset(side)) => return Poll::Ready(Close::Reset(side)),
                Poll::Ready(FlowEnd::Failed(side, error)) => {
                    return Poll::Ready(Close::Failed(side, error));
                }
            }
        }
        if flows.iter().all(|(flow, _, _)| flow.is_finished()) {
            return Poll::Ready(Close::Completed);
        }

        if moved {
            last_active = Instant::now();
        }
        let (Some(timeout), Some(mut sleep)) = (idle_timeout, idle.as_mut().as_pin_mut()) else {
            return Poll::Pending;
        };
        // The timer is moved forward only when it fires, not on every byte.
        while sleep.as_mut().poll(cx).is_ready() {
            let deadline = last_active + timeout;
            if deadline <= Instant::now() {
                return Poll::Ready(Close::IdleTimeout);
            }
            sleep.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await
}

/// Sends a reset instead of a FIN when `stream` is closed.
pub(crate) fn reset(stream: &TcpStream) {
    // If this fails the socket is already gone or closing, and a FIN is all that is left.
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Passes the source's FIN on by shutting down the destination's write side.
fn finish(dst: &TcpStream, dst_side: Side) -> FlowEnd {
    match socket2::SockRef::from(dst).shutdown(Shutdown::Write) {
        Ok(()) => FlowEnd::Finished,
        // The destination is already disconnected; its own direction reports why.
        Err(error) if error.kind() == io::ErrorKind::NotConnected => FlowEnd::Finished,
        Err(error) => FlowEnd::write_failure(dst_side, error),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Returns the buffers and pipes lent out right now.
    fn leased() -> usize {
        let buffers = buffers::LEASED.load(Ordering::SeqCst);
        #[cfg(target_os = "linux")]
        let pipes = splice::LEASED.load(Ordering::SeqCst);
        #[cfg(not(target_os = "linux"))]
        let pipes = 0;
        buffers + pipes
    }

    async fn socket_pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (connected.unwrap(), accepted.unwrap().0)
    }

    /// Checks that a connection that moved a few bytes and then went quiet keeps no
    /// buffer or pipe, for each engine, because the idle memory budget depends on it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connection_leases_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        for engine in [Engine::Splice, Engine::Copy] {
            let (mut client, proxy_client) = socket_pair(&listener).await;
            let (proxy_upstream, mut upstream) = socket_pair(&listener).await;
            let options = ForwardOptions {
                engine,
                idle_timeout: None,
            };
            let cut_off = CancellationToken::new();
            let task = {
                let cut_off = cut_off.clone();
                tokio::spawn(async move {
                    forward(
                        proxy_client,
                        proxy_upstream,
                        &options,
                        &ByteCounters::default(),
                        &cut_off,
                    )
                    .await
                })
            };

            client.write_all(b"I").await.unwrap();
            let mut byte = [0u8; 1];
            upstream.read_exact(&mut byte).await.unwrap();
            upstream.write_all(b"R").await.unwrap();
            client.read_exact(&mut byte).await.unwrap();
            // The proxy returns the lease when it finds the socket drained, just after
            // the byte left. Poll until then, with a bound so that a leak fails the test.
            let mut waited = 0;
            while leased() != 0 && waited < 200 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                waited += 1;
            }
            assert_eq!(leased(), 0, "{engine:?} keeps a buffer or pipe while idle");

            cut_off.cancel();
            let transfer = task.await.unwrap();
            assert!(
                matches!(transfer.close, Close::CutOff),
                "{:?}",
                transfer.close
            );
            assert_eq!(transfer.client_to_upstream, 1);
            assert_eq!(transfer.upstream_to_client, 1);
        }
    }
}
