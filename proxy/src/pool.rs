//! Pre-connect pool: a few fresh upstream connections kept ready for one listener.
//!
//! A TCP stream cannot be shared between clients, so each pooled connection is handed
//! to exactly one client and never returns. Before it is handed out, a non-blocking
//! peek checks that the upstream has not closed or reset it. Connections that fail the
//! check, or sat unused longer than the maximum idle time, are discarded. A background
//! task refills the pool after each take and replaces expired connections, backing off
//! while the upstream rejects connects.
//!
//! A pooled connection carries no PROXY protocol header, because the client is not
//! known when it is opened. The listener sends the header after taking it.
//!
//! The pool follows a changing upstream set (upstreams given by name). Each pooled
//! connection remembers its address. One whose address has left the set is discarded
//! when it is taken or when the pool expires old connections, so no client is handed a
//! socket to an address that DNS no longer lists. Refills pick from the current set. A
//! refill connect that is refused or times out is reported to the set like a client's.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::RecvFlags;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::connect::connect;
use crate::metrics::ListenerMetrics;
use crate::upstream::Upstream;

/// First wait after a failed refill connect; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Settings of one listener's pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Connections kept ready.
    pub size: usize,
    /// A pooled connection unused for this long is closed and replaced.
    pub max_idle: Duration,
    /// Timeout of each refill connect.
    pub connect_timeout: Duration,
}

/// Pre-connected upstream sockets of one listener.
#[derive(Debug)]
pub struct Pool {
    ready: Mutex<VecDeque<Pooled>>,
    settings: PoolSettings,
    upstream: Arc<dyn Upstream>,
    refill: Notify,
    metrics: ListenerMetrics,
}

#[derive(Debug)]
struct Pooled {
    stream: TcpStream,
    addr: SocketAddr,
    since: Instant,
}

impl Pool {
    /// Creates an empty pool; [`Pool::maintain`] fills it.
    pub fn new(
        settings: PoolSettings,
        upstream: Arc<dyn Upstream>,
        metrics: ListenerMetrics,
    ) -> Self {
        Self {
            ready: Mutex::new(VecDeque::with_capacity(settings.size)),
            settings,
            upstream,
            refill: Notify::new(),
            metrics,
        }
    }

    /// Returns how many connections the pool keeps ready.
    pub fn size(&self) -> usize {
        self.settings.size
    }

    /// Returns how many connections are ready now.
    pub fn ready_count(&self) -> usize {
        self.lock().len()
    }

    /// Takes the freshest live connection, discarding closed and expired ones on the
    /// way, and counts a hit or a miss. Returns `None` when none is left.
    pub fn take(&self) -> Option<TcpStream> {
        loop {
            let Some(pooled) = self.lock().pop_back() else {
                self.metrics.pool_misses.increment(1);
                return None;
            };
            self.refill.notify_one();

            if pooled.since.elapsed() >= self.settings.max_idle {
                self.metrics.record_pool_discard("expired");
                continue;
            }
            if !self.upstream.contains(pooled.addr) {
                tracing::debug!(upstream.addr = %pooled.addr, "Discarded a pooled connection to an address that left the upstream set");
                self.metrics.record_pool_discard("left_set");
                continue;
            }
            if !is_open(&pooled.stream) {
                tracing::debug!("Discarded a pooled connection closed by the upstream");
                self.metrics.record_pool_discard("closed");
                continue;
            }
            self.metrics.pool_hits.increment(1);
            return Some(pooled.stream);
        }
    }

    /// Counts a taken connection that failed before the client could use it.
    pub(crate) fn record_discard(&self, reason: &'static str) {
        self.metrics.record_pool_discard(reason);
    }

    /// Keeps the pool full until `stop` is cancelled, then closes what it holds.
    ///
    /// # Cancel safety
    /// Cancel safe: a connect in progress is dropped.
    pub async fn maintain(self: Arc<Self>, stop: CancellationToken) {
        // Names are resolved in the background after start. Filling before the first
        // answer would only count `no_upstream` errors.
        tokio::select! {
            () = self.upstream.wait_ready() => {}
            () = stop.cancelled() => return,
        }

        let mut backoff = None::<Duration>;
        loop {
            self.expire();
            backoff = match self.fill(&stop).await {
                Ok(()) => None,
                Err(()) => Some(backoff.map_or(MIN_BACKOFF, |wait| (wait * 2).min(MAX_BACKOFF))),
            };

            // Wake on a take, or when the oldest connection is due to expire; after a
            // failed connect, wait out the backoff first.
            let wait = backoff.unwrap_or(self.settings.max_idle / 2);
            tokio::select! {
                () = self.refill.notified(), if backoff.is_none() => {}
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => break,
            }
        }
        self.lock().clear();
    }

    /// Opens connections until the pool contains `size`. Returns `Err` after the first
    /// failed connect (already counted and logged) or when there is no address.
    async fn fill(&self, stop: &CancellationToken) -> Result<(), ()> {
        while self.ready_count() < self.settings.size {
            let Some(addr) = self.upstream.pick() else {
                self.metrics.record_connect_error("no_upstream");
                return Err(());
            };
            let started = Instant::now();
            let connected = tokio::select! {
                connected = connect(addr, self.settings.connect_timeout) => connected,
                () = stop.cancelled() => return Ok(()),
            };
            match connected {
                Ok(stream) => {
                    let connect_time = started.elapsed();
                    self.lock().push_back(Pooled {
                        stream,
                        addr,
                        since: Instant::now(),
                    });
                    // Recorded once the connection is in the pool, so a count seen on
                    // the metrics page means the connection can be taken.
                    self.metrics.connect_duration.record(connect_time);
                }
                Err(error) => {
                    tracing::debug!(error = %error, "Failed to refill the pre-connect pool");
                    self.metrics.record_connect_error(error.as_metrics_label());
                    if let Some(addr) = error.failed_addr() {
                        self.upstream.report_failure(addr);
                    }
                    return Err(());
                }
            }
        }
        Ok(())
    }

    /// Closes connections that sat unused longer than the maximum idle time, and those to
    /// addresses that left the upstream set.
    fn expire(&self) {
        let mut ready = self.lock();
        while ready
            .front()
            .is_some_and(|oldest| oldest.since.elapsed() >= self.settings.max_idle)
        {
            ready.pop_front();
            self.metrics.record_pool_discard("expired");
        }

        let before = ready.len();
        ready.retain(|pooled| self.upstream.contains(pooled.addr));
        for _ in ready.len()..before {
            self.metrics.record_pool_discard("left_set");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Pooled>> {
        self.ready
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Returns whether the upstream still has `stream` open, with a non-blocking peek:
/// EOF or an error means closed, no data (EAGAIN) or waiting data means open.
fn is_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match rustix::net::recv(stream, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((_, 0)) => false,
        Ok(_) => true,
        Err(Errno::AGAIN) => true,
        Err(_) => false,
    }
}
