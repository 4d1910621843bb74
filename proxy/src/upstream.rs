//! Upstream selection: which address a listener connects to for the next client.
//!
//! A listener keeps its [`Upstream`] behind a trait object, so the static address list
//! used today can later be replaced by a set that a resolver keeps up to date without
//! touching the accept loop or the pool. Selection is synchronous and cheap: a resolved
//! set refreshes itself in the background and `pick` only reads its current snapshot.
//! This module does no health checking.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A source of upstream addresses for one listener.
pub trait Upstream: fmt::Debug + Send + Sync {
    /// Returns the address for the next connection, or `None` when the set is empty.
    fn pick(&self) -> Option<SocketAddr>;
}

/// A fixed list of addresses, used in round-robin order.
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
    }

    #[test]
    fn static_empty_picks_none() {
        assert_eq!(StaticUpstreams::new(Vec::new()).pick(), None);
    }
}
