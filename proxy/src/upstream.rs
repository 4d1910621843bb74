//! Upstream selection: which address a listener connects to for the next client.
//!
//! A listener keeps its [`Upstream`] behind a trait object, so the accept loop and the
//! pool work the same whether the addresses are fixed ([`StaticUpstreams`]) or come from
//! DNS names that a resolver keeps up to date ([`NamedUpstreams`]). Selection is
//! synchronous and cheap: a named set refreshes itself in a background task and `pick`
//! only reads its current snapshot.
//!
//! Passive health checking: the listener reports an address that refused a connection or
//! timed out with [`Upstream::report_failure`], and a named set skips that address for
//! [`SET_ASIDE_PERIOD`]. This module opens no connections and sends no probes.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use styx_dns::watch::{AddressSet, UpstreamNameError};
use styx_dns::{AddressWatch, SplitResolver, UpstreamName};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long an address that refused a connection or timed out is skipped.
///
/// NOTE: a fixed period, long enough that a crashed container is not retried on every
/// client and short enough that a restarted one is back within seconds. A success does not
/// end the period early.
pub const SET_ASIDE_PERIOD: Duration = Duration::from_secs(10);

/// A future that [`Upstream::wait_ready`] returns.
pub type ReadyFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A source of upstream addresses for one listener.
pub trait Upstream: fmt::Debug + Send + Sync {
    /// Returns the address for the next connection, or `None` when the set is empty.
    fn pick(&self) -> Option<SocketAddr>;

    /// Returns the number of addresses in the set now.
    fn address_count(&self) -> usize;

    /// Returns whether `addr` is in the set now. The pool discards sockets to addresses
    /// that left the set.
    fn contains(&self, addr: SocketAddr) -> bool;

    /// Records that `addr` refused a connection or timed out. The default does nothing.
    fn report_failure(&self, _addr: SocketAddr) {}

    /// Waits until the first lookup of every name has finished. A fixed set is ready at once.
    fn wait_ready(&self) -> ReadyFuture<'_> {
        Box::pin(std::future::ready(()))
    }
}

/// A fixed list of addresses, used in round-robin order.
///
/// NOTE: failures are not tracked here, so a dead address keeps its turn. The listener's
/// connect retry still moves a client on to the next address.
#[derive(Debug)]
pub struct StaticUpstreams {
    addrs: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl StaticUpstreams {
    /// Creates a round-robin set over `addrs`.
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        Self {
            addrs,
            next: AtomicUsize::new(0),
        }
    }
}

impl Upstream for StaticUpstreams {
    fn pick(&self) -> Option<SocketAddr> {
        if self.addrs.is_empty() {
            return None;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len();
        Some(self.addrs[index])
    }

    fn address_count(&self) -> usize {
        self.addrs.len()
    }

    fn contains(&self, addr: SocketAddr) -> bool {
        self.addrs.contains(&addr)
    }
}

/// One `--upstream` value: a literal address, or a name that DNS resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// `IP:PORT`.
    Addr(SocketAddr),
    /// `NAME:PORT` (A and AAAA records) or `srv:NAME` (SRV records and their ports).
    Name(UpstreamName),
}

/// Error of parsing an [`UpstreamTarget`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamTargetError {
    #[error("invalid upstream {input:?}: expected IP:PORT, NAME:PORT or srv:NAME")]
    MissingPort { input: String },
    #[error("invalid upstream {input:?}: port must be from 1 to 65535, not 0")]
    ZeroPort { input: String },
    #[error(transparent)]
    Name(UpstreamNameError),
}

impl FromStr for UpstreamTarget {
    type Err = UpstreamTargetError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = input.parse::<SocketAddr>() {
            // Connecting to port 0 always fails, so it can only be a typo.
            if addr.port() == 0 {
                return Err(UpstreamTargetError::ZeroPort {
                    input: input.to_owned(),
                });
            }
            return Ok(Self::Addr(addr));
        }
        match input.parse::<UpstreamName>() {
            Ok(name) => Ok(Self::Name(name)),
            Err(UpstreamNameError::MissingPort { .. }) => Err(UpstreamTargetError::MissingPort {
                input: input.to_owned(),
            }),
            Err(error) => Err(UpstreamTargetError::Name(error)),
        }
    }
}

impl fmt::Display for UpstreamTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(addr) => addr.fmt(f),
            Self::Name(name) => name.fmt(f),
        }
    }
}

impl<'de> serde::Deserialize<'de> for UpstreamTarget {
    /// Reads the same text form as `--upstream`, so config files and flags agree.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Upstreams given by name, and any literal addresses listed with them.
///
/// Each name has an [`AddressWatch`] that re-resolves it as its TTL expires. `pick` takes
/// the entries in turn (a literal address is one entry, a name is one entry), and a name
/// hands out its current addresses round-robin while skipping those set aside. An SRV name
/// uses only its lowest priority number that has an address not set aside. So with one
/// name, connections spread evenly over the addresses in use. With several entries, each
/// entry gets an equal share whatever its address count.
#[derive(Debug)]
pub struct NamedUpstreams {
    entries: Vec<Entry>,
    next: AtomicUsize,
    /// Tasks that log each name's address changes; aborted on drop.
    loggers: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
enum Entry {
    Addr(SocketAddr),
    Name(AddressWatch),
}

impl NamedUpstreams {
    /// Starts one watch per name through `resolver`. Must be called within a tokio runtime.
    pub fn new(targets: &[UpstreamTarget], resolver: &SplitResolver) -> Self {
        let mut entries = Vec::with_capacity(targets.len());
        let mut loggers = Vec::new();
        for target in targets {
            match target {
                UpstreamTarget::Addr(addr) => entries.push(Entry::Addr(*addr)),
                UpstreamTarget::Name(name) => {
                    let watch = AddressWatch::spawn(resolver.clone(), name.clone());
                    loggers.push(tokio::spawn(log_changes(name.clone(), watch.subscribe())));
                    entries.push(Entry::Name(watch));
                }
            }
        }
        Self {
            entries,
            next: AtomicUsize::new(0),
            loggers,
        }
    }
}

impl Drop for NamedUpstreams {
    fn drop(&mut self) {
        for logger in &self.loggers {
            logger.abort();
        }
    }
}

/// Logs each change of `name`'s address set: at info while it has addresses, and as a
/// warning when it has none, because the name then serves no clients.
async fn log_changes(name: UpstreamName, mut receiver: watch::Receiver<Arc<AddressSet>>) {
    let mut last: Option<Vec<SocketAddr>> = None;
    while receiver.changed().await.is_ok() {
        // The set also changes when only its last error does, which is logged by the watch.
        let set = receiver.borrow_and_update().clone();
        if !set.resolved || last.as_ref() == Some(&set.addrs) {
            continue;
        }
        last = Some(set.addrs.clone());

        let error = set.error.as_ref().map(ToString::to_string);
        if set.addrs.is_empty() {
            tracing::warn!(upstream = %name, error, "Upstream name has no addresses");
        } else {
            tracing::info!(upstream = %name, addrs = ?set.addrs, error, "Upstream addresses changed");
        }
    }
}

impl Upstream for NamedUpstreams {
    fn pick(&self) -> Option<SocketAddr> {
        // An entry without addresses (a name not resolved yet, or with no records) passes
        // its turn to the next one.
        let count = self.entries.len();
        for _ in 0..count {
            let index = self.next.fetch_add(1, Ordering::Relaxed) % count;
            let addr = match &self.entries[index] {
                Entry::Addr(addr) => Some(*addr),
                Entry::Name(watch) => watch.next_addr(),
            };
            if addr.is_some() {
                return addr;
            }
        }
        None
    }

    fn address_count(&self) -> usize {
        self.entries
            .iter()
            .map(|entry| match entry {
                Entry::Addr(_) => 1,
                Entry::Name(watch) => watch.current().addrs.len(),
            })
            .sum()
    }

    fn contains(&self, addr: SocketAddr) -> bool {
        self.entries.iter().any(|entry| match entry {
            Entry::Addr(own) => *own == addr,
            Entry::Name(watch) => watch.current().addrs.contains(&addr),
        })
    }

    fn report_failure(&self, addr: SocketAddr) {
        for entry in &self.entries {
            if let Entry::Name(watch) = entry
                && watch.current().addrs.contains(&addr)
            {
                watch.set_aside(addr, SET_ASIDE_PERIOD);
            }
        }
    }

    fn wait_ready(&self) -> ReadyFuture<'_> {
        Box::pin(async move {
            for entry in &self.entries {
                if let Entry::Name(watch) = entry {
                    watch.ready().await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_round_robin() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let set = StaticUpstreams::new(vec![a, b]);
        let picks: Vec<_> = (0..4).map(|_| set.pick()).collect();
        assert_eq!(picks, vec![Some(a), Some(b), Some(a), Some(b)]);
        assert_eq!(set.address_count(), 2);
        assert!(set.contains(a));
        assert!(!set.contains("127.0.0.1:3".parse().unwrap()));
    }

    #[test]
    fn static_empty_picks_none() {
        assert_eq!(StaticUpstreams::new(Vec::new()).pick(), None);
    }

    #[test]
    fn target_parses_each_form() {
        assert_eq!(
            "127.0.0.1:80".parse::<UpstreamTarget>(),
            Ok(UpstreamTarget::Addr("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            "[::1]:80".parse::<UpstreamTarget>(),
            Ok(UpstreamTarget::Addr("[::1]:80".parse().unwrap()))
        );
        let name: UpstreamTarget = "web.service.consul:80".parse().unwrap();
        assert_eq!(name.to_string(), "web.service.consul:80");
        let srv: UpstreamTarget = "srv:web.service.consul".parse().unwrap();
        assert_eq!(srv.to_string(), "srv:web.service.consul");
    }

    #[test]
    fn target_rejects_bad_input() {
        let cases = [
            ("127.0.0.1", "expected IP:PORT, NAME:PORT or srv:NAME"),
            (
                "web.service.consul",
                "expected IP:PORT, NAME:PORT or srv:NAME",
            ),
            ("web.service.consul:0", "is not a number from 1 to 65535"),
            (
                "bad name.consul:80",
                "invalid upstream \"bad name.consul:80\"",
            ),
            ("srv:", "the name is empty"),
        ];
        for (input, expected) in cases {
            let message = input.parse::<UpstreamTarget>().unwrap_err().to_string();
            assert!(message.contains(expected), "{input}: {message}");
        }
    }
}
