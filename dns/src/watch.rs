//! Upstreams given by name, and a watcher that keeps their current addresses.
//!
//! The proxy keeps an [`AddressWatch`] per `--upstream` name and picks an address per
//! connection with [`AddressWatch::next_addr`]. The watcher re-resolves when the answer's TTL
//! expires (never more often than the resolver's TTL floor), so addresses added to or
//! removed from the zone show up without a restart. The proxy reports an address that refused
//! a connection or timed out with [`AddressWatch::set_aside`], and `next_addr` skips it for a
//! while. This module does not connect to addresses or probe them.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::ResolveError;
use crate::name::{NameError, parse_ip_literal, parse_name};
use crate::resolver::SplitResolver;

/// Longest wait between retries while no server answers.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// An upstream given by name: `web.service.consul:80` (A and AAAA records, this port) or
/// `srv:web.service.consul` (SRV records, their ports).
///
/// Parsing rejects an IP address, but a `Host` built with an IP literal as its name is
/// watched as a fixed address set and never looked up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UpstreamName {
    Host { name: String, port: u16 },
    Srv { name: String },
}

/// Error of parsing an [`UpstreamName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamNameError {
    #[error("invalid upstream {input:?}: expected NAME:PORT or srv:NAME")]
    MissingPort { input: String },
    #[error("invalid upstream {input:?}: port {port:?} is not a number from 1 to 65535")]
    BadPort { input: String, port: String },
    #[error("invalid upstream {input:?}: {host} is an IP address, not a name")]
    IpAddress { input: String, host: String },
    #[error("invalid upstream {input:?}: {source}")]
    BadName {
        input: String,
        #[source]
        source: NameError,
    },
}

impl UpstreamName {
    /// Returns the name to look up, as given.
    pub fn name(&self) -> &str {
        match self {
            Self::Host { name, .. } | Self::Srv { name } => name,
        }
    }
}

impl FromStr for UpstreamName {
    type Err = UpstreamNameError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad_name = |source| UpstreamNameError::BadName {
            input: input.to_owned(),
            source,
        };

        if let Some(name) = input.strip_prefix("srv:") {
            parse_name(name).map_err(bad_name)?;
            return Ok(Self::Srv {
                name: name.to_owned(),
            });
        }

        let Some((host, port)) = input.rsplit_once(':') else {
            return Err(UpstreamNameError::MissingPort {
                input: input.to_owned(),
            });
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.parse::<IpAddr>().is_ok() {
            return Err(UpstreamNameError::IpAddress {
                input: input.to_owned(),
                host: host.to_owned(),
            });
        }
        let port = match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                return Err(UpstreamNameError::BadPort {
                    input: input.to_owned(),
                    port: port.to_owned(),
                });
            }
        };
        parse_name(host).map_err(bad_name)?;

        Ok(Self::Host {
            name: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for UpstreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Host { name, port } => write!(f, "{name}:{port}"),
            Self::Srv { name } => write!(f, "srv:{name}"),
        }
    }
}

/// The addresses of an upstream name at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressSet {
    /// Current addresses, sorted. Empty when the name does not exist or has no records.
    pub addrs: Vec<SocketAddr>,
    /// The last lookup's error. While no server answers, the addresses of the last answer are
    /// kept; a negative answer empties them.
    pub error: Option<ResolveError>,
    /// False until the first lookup has finished.
    pub resolved: bool,
}

/// A handle to the current addresses of an [`UpstreamName`], kept up to date by a background
/// task that stops when the handle is dropped.
pub struct AddressWatch {
    receiver: watch::Receiver<Arc<AddressSet>>,
    cursor: AtomicUsize,
    /// Addresses set aside by [`Self::set_aside`], with the end of their period.
    set_aside: Mutex<HashMap<SocketAddr, Instant>>,
    task: JoinHandle<()>,
}

impl AddressWatch {
    /// Starts watching `name` through `resolver`. Must be called within a tokio runtime.
    pub fn spawn(resolver: SplitResolver, name: UpstreamName) -> Self {
        let (sender, receiver) = watch::channel(Arc::new(AddressSet::default()));
        let task = tokio::spawn(watch_loop(resolver, name, sender));
        Self {
            receiver,
            cursor: AtomicUsize::new(0),
            set_aside: Mutex::new(HashMap::new()),
            task,
        }
    }

    /// Returns the current address set.
    pub fn current(&self) -> Arc<AddressSet> {
        self.receiver.borrow().clone()
    }

    /// Returns the next address in round-robin order, or `None` while the set is empty.
    ///
    /// Addresses set aside by [`Self::set_aside`] are skipped while their period lasts. When
    /// every address is set aside, they are handed out in turn anyway, because trying one
    /// beats failing the connection without trying.
    pub fn next_addr(&self) -> Option<SocketAddr> {
        let set = self.receiver.borrow();
        if set.addrs.is_empty() {
            return None;
        }

        let now = Instant::now();
        let mut set_aside = self.set_aside.lock().unwrap_or_else(|p| p.into_inner());
        set_aside.retain(|_, until| *until > now);

        // Each skipped address advances the cursor too, so the pick after this one continues
        // the rotation from here.
        let len = set.addrs.len();
        for _ in 0..len {
            let addr = set.addrs[self.cursor.fetch_add(1, Ordering::Relaxed) % len];
            if !set_aside.contains_key(&addr) {
                return Some(addr);
            }
        }
        Some(set.addrs[self.cursor.fetch_add(1, Ordering::Relaxed) % len])
    }

    /// Skips `addr` in [`Self::next_addr`] for `period`, for example after it refused a
    /// connection or timed out (passive health checking).
    pub fn set_aside(&self, addr: SocketAddr, period: Duration) {
        let mut set_aside = self.set_aside.lock().unwrap_or_else(|p| p.into_inner());
        set_aside.insert(addr, Instant::now() + period);
    }

    /// Returns a receiver that is notified whenever the set changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<AddressSet>> {
        self.receiver.clone()
    }

    /// Waits until the first lookup has finished and returns the set.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future changes nothing.
    pub async fn ready(&self) -> Arc<AddressSet> {
        let mut receiver = self.receiver.clone();
        match receiver.wait_for(|set| set.resolved).await {
            Ok(set) => set.clone(),
            // The sender lives in the watch task, which is aborted only when this handle is
            // dropped, and that cannot happen while `&self` is borrowed.
            Err(_) => self.current(),
        }
    }
}

impl fmt::Debug for AddressWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddressWatch")
            .field("current", &self.current())
            .finish_non_exhaustive()
    }
}

impl Drop for AddressWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watch_loop(
    resolver: SplitResolver,
    name: UpstreamName,
    sender: watch::Sender<Arc<AddressSet>>,
) {
    // An IP literal is a fixed address set: it is published once and never looked up again.
    // The task then waits without returning, so subscribers never see the sender close.
    if let UpstreamName::Host { name, port } = &name
        && let Some(ip) = parse_ip_literal(name)
    {
        publish(&sender, vec![SocketAddr::new(ip, *port)], None);
        std::future::pending::<()>().await;
    }

    let floor = resolver.ttl_floor().max(Duration::from_millis(100));
    let mut failures_in_row: u32 = 0;

    loop {
        let now = Instant::now();
        let next = match resolve(&resolver, &name).await {
            Ok((addrs, valid_until)) => {
                failures_in_row = 0;
                publish(&sender, addrs, None);
                valid_until.max(now + floor)
            }
            Err(error) if error.is_not_found() => {
                failures_in_row = 0;
                publish(&sender, Vec::new(), Some(error));
                now + floor
            }
            Err(error) => {
                tracing::debug!(upstream = %name, %error, "upstream name lookup failed, keeping the last addresses");
                failures_in_row = failures_in_row.saturating_add(1);
                let addrs = sender.borrow().addrs.clone();
                publish(&sender, addrs, Some(error));
                let delay = floor
                    .saturating_mul(1 << failures_in_row.min(8))
                    .min(MAX_RETRY_DELAY);
                now + delay
            }
        };
        tokio::time::sleep_until(next.into()).await;
    }
}

/// Replaces the published set when anything in it changed.
fn publish(
    sender: &watch::Sender<Arc<AddressSet>>,
    mut addrs: Vec<SocketAddr>,
    error: Option<ResolveError>,
) {
    addrs.sort();
    addrs.dedup();
    let set = AddressSet {
        addrs,
        error,
        resolved: true,
    };
    sender.send_if_modified(|current| {
        if **current == set {
            return false;
        }
        *current = Arc::new(set);
        true
    });
}

/// Looks up the addresses of `name` and when the answer expires.
async fn resolve(
    resolver: &SplitResolver,
    name: &UpstreamName,
) -> Result<(Vec<SocketAddr>, Instant), ResolveError> {
    match name {
        UpstreamName::Host { name, port } => {
            let found = resolver.lookup_host(name).await?;
            let addrs = found
                .addrs
                .iter()
                .map(|ip| SocketAddr::new(*ip, *port))
                .collect();
            Ok((addrs, found.valid_until))
        }
        UpstreamName::Srv { name } => {
            let found = resolver.lookup_srv(name).await?;
            // Records come sorted by priority, and the lowest priority that has addresses is used.
            // NOTE: SRV weights are not applied, so connections spread evenly over the group.
            let best = found
                .records
                .iter()
                .filter(|record| !record.addrs.is_empty())
                .map(|record| record.priority)
                .min();
            let addrs = found
                .records
                .iter()
                .filter(|record| Some(record.priority) == best)
                .flat_map(|record| {
                    record
                        .addrs
                        .iter()
                        .map(|ip| SocketAddr::new(*ip, record.port))
                })
                .collect();
            Ok((addrs, found.valid_until))
        }
    }
}

impl<'de> serde::Deserialize<'de> for UpstreamName {
    /// Reads the same text form as the command line, so config files and flags agree.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_name_parses_both_forms() {
        assert_eq!(
            "web.service.consul:80".parse::<UpstreamName>(),
            Ok(UpstreamName::Host {
                name: "web.service.consul".to_owned(),
                port: 80
            })
        );
        assert_eq!(
            "srv:web.service.consul".parse::<UpstreamName>(),
            Ok(UpstreamName::Srv {
                name: "web.service.consul".to_owned()
            })
        );
        assert_eq!(
            "srv:web.service.consul"
                .parse::<UpstreamName>()
                .unwrap()
                .to_string(),
            "srv:web.service.consul"
        );
    }

    #[test]
    fn upstream_name_rejects_bad_input() {
        let cases = [
            ("web.service.consul", "expected NAME:PORT or srv:NAME"),
            ("web.service.consul:0", "port \"0\" is not a number"),
            ("web.service.consul:http", "port \"http\" is not a number"),
            ("10.0.0.1:80", "10.0.0.1 is an IP address"),
            ("[::1]:80", "::1 is an IP address"),
            (":80", "the name is empty"),
            ("srv:", "the name is empty"),
            ("srv:bad name.consul", "may contain only"),
        ];
        for (input, expected) in cases {
            let message = input.parse::<UpstreamName>().unwrap_err().to_string();
            assert!(message.contains(expected), "{input}: {message}");
        }
    }
}
