//! One listener: the accept loop, and the life of each accepted connection.
//!
//! The accept loop takes a connection permit before it accepts, so at the limit new
//! clients wait in the kernel's listen backlog instead of being accepted and dropped.
//! Each connection runs in its own task inside a `connection` tracing span, and holds
//! its permit until it ends. Accept errors (EMFILE and ENFILE above all) are counted
//! and backed off, so running out of descriptors never turns into a busy loop.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustix::io::Errno;
use styx_dns::SplitResolver;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::ListenerConfig;
use crate::connect::{ConnectError, connect};
use crate::engine::{self, ByteCounters, Close, ForwardOptions};
use crate::metrics::{AcceptErrorCounters, AcceptErrorReason, ConnectionResult, ListenerMetrics};
use crate::pool::{Pool, PoolSettings};
use crate::proxy_protocol::ProxyProtocol;
use crate::upstream::{NamedUpstreams, StaticUpstreams, Upstream};

/// Maximum number of upstream addresses one client tries when connects are refused or time
/// out, so a client may wait up to three connect timeouts before it is reset.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// First wait after a failed accept; it doubles up to [`MAX_ACCEPT_BACKOFF`] while
/// accepts keep failing.
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// How long accepts must go without failing before the backoff starts again from
/// [`MIN_ACCEPT_BACKOFF`].
const ACCEPT_QUIET_PERIOD: Duration = MAX_ACCEPT_BACKOFF;

/// State that every connection of one listener shares.
#[derive(Debug)]
pub(crate) struct ListenerShared {
    pub(crate) name: String,
    upstream: Arc<dyn Upstream>,
    pub(crate) pool: Option<Arc<Pool>>,
    connect_timeout: Duration,
    proxy_protocol: Option<ProxyProtocol>,
    pub(crate) forward: ForwardOptions,
    pub(crate) metrics: ListenerMetrics,
    counters: ByteCounters,
}

impl ListenerShared {
    /// Builds the listener's state. Upstream names are resolved through `resolver`, which
    /// must be given when `config.upstream_names` is not empty. Must be called within a
    /// tokio runtime when it is.
    pub(crate) fn new(config: &ListenerConfig, resolver: Option<&SplitResolver>) -> Self {
        let metrics = ListenerMetrics::new(&config.name);
        let upstream: Arc<dyn Upstream> = match resolver {
            Some(resolver) if !config.upstream_names.is_empty() => {
                Arc::new(NamedUpstreams::new(&config.targets(), resolver))
            }
            _ => Arc::new(StaticUpstreams::new(config.upstreams.clone())),
        };
        let pool = (config.preconnect > 0).then(|| {
            let settings = PoolSettings {
                size: config.preconnect,
                max_idle: config.preconnect_max_idle,
                connect_timeout: config.connect_timeout,
            };
            Arc::new(Pool::new(settings, upstream.clone(), metrics.clone()))
        });
        let counters = ByteCounters {
            client_to_upstream: metrics.client_to_upstream_bytes.clone(),
            upstream_to_client: metrics.upstream_to_client_bytes.clone(),
        };
        Self {
            name: config.name.clone(),
            upstream,
            pool,
            connect_timeout: config.connect_timeout,
            proxy_protocol: config.proxy_protocol,
            forward: ForwardOptions {
                engine: config.engine.resolve(),
                idle_timeout: config.idle_timeout,
            },
            metrics,
            counters,
        }
    }

    /// Returns an upstream socket: a pooled one when available, else a new connection.
    /// The PROXY protocol `header`, when given, has been written to it.
    async fn open_upstream(&self, header: Option<&[u8]>) -> Result<TcpStream, ConnectError> {
        if let Some(pool) = &self.pool {
            while let Some(mut stream) = pool.take() {
                match send_header(&mut stream, header).await {
                    Ok(()) => return Ok(stream),
                    Err(error) => {
                        tracing::debug!(%error, "Failed to send the PROXY header on a pooled connection");
                        pool.record_discard("header_failed");
                    }
                }
            }
        }

        self.connect_new(header).await
    }

    /// Connects to the next upstream address. An address that refuses or times out is
    /// reported to the upstream set (which may set it aside) and the next one is tried, up
    /// to [`MAX_CONNECT_ATTEMPTS`] addresses. Each failed attempt is counted.
    async fn connect_new(&self, header: Option<&[u8]>) -> Result<TcpStream, ConnectError> {
        let mut attempt = 1;
        loop {
            let result = self.connect_once(header).await;
            let Err(error) = result else {
                return result;
            };
            self.metrics.record_connect_error(error.as_metrics_label());

            let Some(addr) = error.failed_addr() else {
                return Err(error);
            };
            self.upstream.report_failure(addr);
            // Counted only after a failure, to keep the common path to one `pick`.
            let attempts = self.upstream.address_count().clamp(1, MAX_CONNECT_ATTEMPTS);
            if attempt >= attempts {
                return Err(error);
            }
            tracing::debug!(%error, attempt, "Failed to connect to an upstream address, trying the next one");
            attempt += 1;
        }
    }

    async fn connect_once(&self, header: Option<&[u8]>) -> Result<TcpStream, ConnectError> {
        let addr = match self.upstream.pick() {
            Some(addr) => addr,
            None => {
                // Right after start, the first lookup of a name may still be running.
                let _ =
                    tokio::time::timeout(self.connect_timeout, self.upstream.wait_ready()).await;
                self.upstream.pick().ok_or(ConnectError::NoUpstream)?
            }
        };
        let started = Instant::now();
        let mut stream = connect(addr, self.connect_timeout).await?;
        self.metrics.connect_duration.record(started.elapsed());
        send_header(&mut stream, header)
            .await
            .map_err(|source| ConnectError::Io { addr, source })?;
        Ok(stream)
    }
}

async fn send_header(stream: &mut TcpStream, header: Option<&[u8]>) -> io::Result<()> {
    match header {
        Some(header) => stream.write_all(header).await,
        None => Ok(()),
    }
}

/// Tokens and limits an accept loop works with.
pub(crate) struct AcceptContext {
    pub(crate) limit: Arc<Semaphore>,
    pub(crate) tracker: TaskTracker,
    /// Cancelled when the listener must stop accepting.
    pub(crate) stop: CancellationToken,
    /// Cancelled when open connections must be reset (the drain deadline passed).
    pub(crate) cut_off: CancellationToken,
}

/// Accepts clients until `context.stop` is cancelled, then closes the listening
/// socket, so later clients are refused by the kernel.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<ListenerShared>,
    context: AcceptContext,
) {
    let mut acceptor = Acceptor::new(&shared.name);
    loop {
        let permit = tokio::select! {
            permit = context.limit.clone().acquire_owned() => permit.expect("the connection semaphore is never closed"),
            () = context.stop.cancelled() => break,
        };
        let Some((client, client_addr)) = acceptor.accept(&listener, &context.stop).await else {
            break;
        };

        let span =
            tracing::debug_span!("connection", listener = %shared.name, client.addr = %client_addr);
        let task = serve(
            client,
            client_addr,
            shared.clone(),
            context.cut_off.clone(),
            permit,
        );
        context.tracker.spawn(task.instrument(span));
    }
    drop(listener);
}

/// Accepts from one listening socket, counting failed accepts and backing off while
/// they repeat, so running out of descriptors never turns into a busy loop.
///
/// Near the descriptor limit, accepts fail and succeed by turns, because each accepted
/// client whose upstream connect fails frees its descriptor at once. So one success
/// does not end the backoff. Only a quiet period without failures does.
pub(crate) struct Acceptor {
    name: String,
    errors: AcceptErrorCounters,
    backoff: Duration,
    last_failure: Option<Instant>,
}

impl Acceptor {
    /// Resolves the accept error counters of the listener called `name`.
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            errors: AcceptErrorCounters::new(name),
            backoff: MIN_ACCEPT_BACKOFF,
            last_failure: None,
        }
    }

    /// Accepts the next connection, retrying after each failure with a doubling wait.
    /// Returns `None` once `stop` is cancelled.
    pub(crate) async fn accept(
        &mut self,
        listener: &TcpListener,
        stop: &CancellationToken,
    ) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = stop.cancelled() => return None,
            };
            match accepted {
                Ok(accepted) => {
                    if self
                        .last_failure
                        .is_some_and(|failed| failed.elapsed() >= ACCEPT_QUIET_PERIOD)
                    {
                        self.backoff = MIN_ACCEPT_BACKOFF;
                        self.last_failure = None;
                    }
                    return Some(accepted);
                }
                Err(error) => {
                    self.record_error(&error);
                    self.last_failure = Some(Instant::now());
                }
            }

            tokio::select! {
                () = tokio::time::sleep(self.backoff) => {}
                () = stop.cancelled() => return None,
            }
            self.backoff = (self.backoff * 2).min(MAX_ACCEPT_BACKOFF);
        }
    }

    fn record_error(&self, error: &io::Error) {
        let errno = error.raw_os_error().map(Errno::from_raw_os_error);
        let reason = match errno {
            Some(Errno::MFILE | Errno::NFILE) => AcceptErrorReason::FdLimit,
            _ => AcceptErrorReason::Other,
        };
        self.errors.record(reason);
        let (name, reason) = (&self.name, reason.as_label());
        // Only the first failure of a run is a warning; the rest repeat it.
        if self.backoff == MIN_ACCEPT_BACKOFF {
            tracing::warn!(listener = %name, %error, reason, "Failed to accept a connection, backing off");
        } else {
            tracing::debug!(listener = %name, %error, reason, "Failed to accept a connection, backing off");
        }
    }
}

/// Serves one client: opens the upstream, forwards, and records how it ended.
async fn serve(
    client: TcpStream,
    client_addr: SocketAddr,
    shared: Arc<ListenerShared>,
    cut_off: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let metrics = &shared.metrics;
    metrics.active.increment(1.0);
    tracing::debug!("Connection accepted");

    // Linux copies TCP_NODELAY from the listening socket to accepted ones, so only
    // other platforms spend a system call per connection on it.
    if !cfg!(target_os = "linux")
        && let Err(error) = client.set_nodelay(true)
    {
        tracing::debug!(%error, "Failed to set TCP_NODELAY on the client socket");
    }
    // The local address is looked up only for a PROXY header, to save a system call
    // per connection otherwise.
    let header = match shared.proxy_protocol {
        Some(version) => client
            .local_addr()
            .map(|local_addr| Some(version.encode(client_addr, local_addr))),
        None => Ok(None),
    };
    let opened = match header {
        Ok(header) => tokio::select! {
            upstream = shared.open_upstream(header.as_deref()) => upstream.map_err(Unserved::ConnectFailed),
            () = cut_off.cancelled() => Err(Unserved::CutOff),
        },
        Err(error) => Err(Unserved::ClientGone(error)),
    };

    let result = match opened {
        Ok(upstream) => forward(client, upstream, &shared, &cut_off).await,
        Err(unserved) => {
            let result = match unserved {
                Unserved::ConnectFailed(error) => {
                    tracing::debug!(%error, "Failed to open the upstream connection");
                    ConnectionResult::ConnectFailed
                }
                Unserved::CutOff => ConnectionResult::CutOff,
                Unserved::ClientGone(error) => {
                    tracing::debug!(%error, "Client socket failed before it was served");
                    ConnectionResult::Error
                }
            };
            // A reset, not a FIN, so the client cannot mistake this for an empty reply.
            engine::reset(&client);
            drop(client);
            result
        }
    };

    metrics.record_result(result);
    metrics.active.decrement(1.0);
    // The permit lives until here so the connection counts against the limit until
    // both sockets are closed.
    drop(permit);
}

/// Reason a client was closed before forwarding started.
enum Unserved {
    ConnectFailed(ConnectError),
    CutOff,
    ClientGone(io::Error),
}

async fn forward(
    client: TcpStream,
    upstream: TcpStream,
    shared: &ListenerShared,
    cut_off: &CancellationToken,
) -> ConnectionResult {
    let metrics = &shared.metrics;
    let transfer =
        engine::forward(client, upstream, &shared.forward, &shared.counters, cut_off).await;

    let result = match &transfer.close {
        Close::Completed => ConnectionResult::Completed,
        Close::Reset(side) => {
            match side {
                engine::Side::Client => metrics.client_resets.increment(1),
                engine::Side::Upstream => metrics.upstream_resets.increment(1),
            }
            ConnectionResult::Reset
        }
        Close::Failed(..) => ConnectionResult::Error,
        Close::IdleTimeout => {
            metrics.idle_timeouts.increment(1);
            ConnectionResult::IdleTimeout
        }
        Close::CutOff => ConnectionResult::CutOff,
    };
    tracing::debug!(
        bytes.client_to_upstream = transfer.client_to_upstream,
        bytes.upstream_to_client = transfer.upstream_to_client,
        result = result.as_label(),
        close = ?transfer.close,
        "Connection closed"
    );
    result
}
