//! All listeners of one process, and the graceful drain that ends them.
//!
//! Shutdown runs in two phases. When the shutdown token is cancelled, every listener
//! stops accepting and closes its socket, so new clients are refused, and the
//! pre-connect pools close. Open connections then have the drain timeout to finish on
//! their own. Those still open when it expires, or when a second signal cuts the drain
//! short, are reset, and their count is logged and returned.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use styx_dns::{ResolverConfig, SplitResolver};

use crate::config::ProxyConfig;
use crate::listener::{AcceptContext, ListenerShared, accept_loop};

/// Listen backlog; clients beyond the connection limit wait here.
const LISTEN_BACKLOG: u32 = 4096;

/// Failure to bind a listener, or to build the resolver its upstream names need.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("failed to listen on {addr} for listener {name:?}")]
    Listen {
        name: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// Boxed, because the resolver's error is large and callers keep this one inline.
    #[error("failed to build the DNS resolver for upstream names")]
    Resolver(#[source] Box<styx_dns::resolver::BuildError>),
}

/// Connection counts of one drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections open when shutdown started.
    pub open_at_shutdown: usize,
    /// Connections reset because the drain timeout expired or the drain was cut short.
    pub cut_off: usize,
}

/// Bound listeners, ready to serve.
#[derive(Debug)]
pub struct Server {
    listeners: Vec<Bound>,
    drain_timeout: Duration,
}

#[derive(Debug)]
struct Bound {
    listener: TcpListener,
    shared: Arc<ListenerShared>,
    max_connections: usize,
}

impl Server {
    /// Binds every listener of `config`; the config must have been validated. Upstream
    /// names, if any, are resolved with the default routes (see [`Server::bind_with`]).
    ///
    /// # Errors
    /// [`BindError`] for the first address that cannot be bound, or when the default
    /// resolver cannot be built.
    pub fn bind(config: &ProxyConfig) -> Result<Self, BindError> {
        Self::bind_with(config, None)
    }

    /// Binds every listener of `config`, resolving upstream names through `resolver`, or
    /// through a resolver with the default routes when it is `None` and a listener has
    /// names. Must be called within a tokio runtime when a listener has names, because each
    /// name gets a background task that keeps its addresses current.
    ///
    /// Install the metrics recorder before building `resolver`, so its metrics record.
    ///
    /// # Errors
    /// [`BindError`] for the first address that cannot be bound, or when the default
    /// resolver cannot be built.
    pub fn bind_with(
        config: &ProxyConfig,
        resolver: Option<&SplitResolver>,
    ) -> Result<Self, BindError> {
        let has_names = config
            .listeners
            .iter()
            .any(|listener| !listener.upstream_names.is_empty());
        let default_resolver = match resolver {
            None if has_names => Some(
                SplitResolver::new(ResolverConfig::default())
                    .map_err(|error| BindError::Resolver(Box::new(error)))?,
            ),
            _ => None,
        };
        let resolver = resolver.or(default_resolver.as_ref());

        let mut listeners = Vec::with_capacity(config.listeners.len());
        for listener_config in &config.listeners {
            let listener = listen(listener_config.listen).map_err(|source| BindError::Listen {
                name: listener_config.name.clone(),
                addr: listener_config.listen,
                source,
            })?;
            listeners.push(Bound {
                listener,
                shared: Arc::new(ListenerShared::new(listener_config, resolver)),
                max_connections: listener_config.max_connections,
            });
        }
        Ok(Self {
            listeners,
            drain_timeout: config.drain_timeout,
        })
    }

    /// Returns the bound address of each listener, in config order (useful when a
    /// config asked for port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|bound| bound.listener.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` is cancelled, then drains.
    ///
    /// # Cancel safety
    /// Dropping the future stops the accept loops but leaves connection tasks running
    /// on the runtime; cancel `shutdown` instead.
    pub async fn run(self, shutdown: CancellationToken) -> DrainReport {
        self.run_until(shutdown, CancellationToken::new()).await
    }

    /// Serves until `shutdown` is cancelled, then drains until the drain timeout expires
    /// or `cut_off_now` is cancelled, whichever comes first, and resets what is still
    /// open. A second shutdown signal cancels `cut_off_now`.
    ///
    /// # Cancel safety
    /// As for [`Server::run`].
    pub async fn run_until(
        self,
        shutdown: CancellationToken,
        cut_off_now: CancellationToken,
    ) -> DrainReport {
        let tracker = TaskTracker::new();
        let cut_off = CancellationToken::new();
        let pools_stop = CancellationToken::new();
        let mut accept_loops = JoinSet::new();

        for bound in self.listeners {
            let Bound {
                listener,
                shared,
                max_connections,
            } = bound;
            // The bound address, so a port 0 in the config shows the port chosen.
            let addr = listener.local_addr().map_or_else(
                |error| format!("unknown ({error})"),
                |addr| addr.to_string(),
            );
            tracing::info!(
                listener = %shared.name,
                %addr,
                engine = shared.forward.engine.as_str(),
                max_connections,
                preconnect = shared.pool.as_ref().map_or(0, |pool| pool.size()),
                "Listening"
            );
            if let Some(pool) = &shared.pool {
                tokio::spawn(pool.clone().maintain(pools_stop.clone()));
            }
            let context = AcceptContext {
                limit: Arc::new(Semaphore::new(max_connections)),
                tracker: tracker.clone(),
                stop: shutdown.clone(),
                cut_off: cut_off.clone(),
            };
            accept_loops.spawn(accept_loop(listener, shared, context));
        }

        shutdown.cancelled().await;
        // Wait until every listening socket is closed, so no client is accepted after
        // the drain starts counting.
        while accept_loops.join_next().await.is_some() {}
        pools_stop.cancel();
        tracker.close();
        let open_at_shutdown = tracker.len();
        tracing::info!(open = open_at_shutdown, timeout = ?self.drain_timeout, "Shutdown started, draining connections");

        let drained = tokio::select! {
            drained = tokio::time::timeout(self.drain_timeout, tracker.wait()) => drained.is_ok(),
            () = cut_off_now.cancelled() => false,
        };
        let mut cut = 0;
        if !drained {
            cut = tracker.len();
            cut_off.cancel();
            tracker.wait().await;
        }
        tracing::info!(open_at_shutdown, cut_off = cut, "Drain finished");
        DrainReport {
            open_at_shutdown,
            cut_off: cut,
        }
    }
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that accepted sockets inherit TCP_NODELAY from the listener, which the
    /// listener relies on to skip setting it per connection on Linux.
    #[tokio::test]
    async fn accepted_socket_inherits_nodelay() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let _client = connected.unwrap();
        let (accepted, _) = accepted.unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
