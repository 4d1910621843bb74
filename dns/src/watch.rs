//! Upstreams given by name, and a watcher that keeps their current addresses.
//!
//! The proxy keeps an [`AddressWatch`] per `--upstream` name and picks an address per
//! connection with [`AddressWatch::next_addr`]. The watcher re-resolves when the answer's TTL
//! expires (never more often than the resolver's TTL floor), so addresses added to or
//! removed from the zone show up without a restart. The proxy reports an address that refused
//! a connection or timed out with [`AddressWatch::set_aside`], and `next_addr` skips it for a
//! while. This module does not connect to addresses or probe them.
//!
//! An SRV upstream keeps the targets of every priority. RFC 2782 requires a client to use
//! the lowest priority number it can reach, so `next_addr` hands out that priority's
//! addresses and moves to the next priority only while every address of the lower ones is
//! set aside. A name looked up by A and AAAA records has one priority.

use std::collections::{BTreeMap, HashMap};
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
    /// Current addresses, lowest SRV priority number first and sorted within a priority.
    /// Empty when the name does not exist or has no records.
    pub addrs: Vec<SocketAddr>,
    /// Number of addresses in each priority, in the order of `addrs`, so they add up to
    /// `addrs.len()`. A name looked up by A and AAAA records has one entry.
    pub priority_sizes: Vec<usize>,
    /// The last lookup's error. While no server answers, the addresses of the last answer are
    /// kept; a negative answer empties them.
    pub error: Option<ResolveError>,
    /// False until the first lookup has finished.
    pub resolved: bool,
}

impl AddressSet {
    /// Returns the addresses of each priority, lowest priority number first.
    pub fn priorities(&self) -> impl Iterator<Item = &[SocketAddr]> {
        let mut rest = self.addrs.as_slice();
        self.priority_sizes.iter().map(move |size| {
            let (group, tail) = rest.split_at(*size);
            rest = tail;
            group
        })
    }
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
    /// Only the lowest priority number that has an address not set aside by
    /// [`Self::set_aside`] is used, and its set-aside addresses are skipped while their period
    /// lasts. When every address of every priority is set aside, all of them are handed out
    /// in turn anyway, lowest priority number first, because trying one beats failing the
    /// connection without trying.
    pub fn next_addr(&self) -> Option<SocketAddr> {
        let set = self.receiver.borrow();
        if set.addrs.is_empty() {
            return None;
        }

        let now = Instant::now();
        let mut set_aside = self.set_aside.lock().unwrap_or_else(|p| p.into_inner());
        set_aside.retain(|_, until| *until > now);

        // A priority whose addresses are all set aside is passed over without moving the
        // cursor, so the rotation within the priority in use stays even.
        let usable = set
            .priorities()
            .find(|group| group.iter().any(|addr| !set_aside.contains_key(addr)));
        if let Some(group) = usable {
            // Each skipped address advances the cursor too, so the pick after this one
            // continues the rotation from here. The loop ends within `group.len()` turns
            // because the lock keeps other callers from moving the cursor meanwhile.
            loop {
                let addr = group[self.cursor.fetch_add(1, Ordering::Relaxed) % group.len()];
                if !set_aside.contains_key(&addr) {
                    return Some(addr);
                }
            }
        }

        let len = set.addrs.len();
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
        publish(&sender, vec![vec![SocketAddr::new(ip, *port)]], None);
        std::future::pending::<()>().await;
    }

    let floor = resolver.ttl_floor().max(Duration::from_millis(100));
    let mut failures_in_row: u32 = 0;

    loop {
        let now = Instant::now();
        let next = match resolve(&resolver, &name).await {
            Ok((priorities, valid_until)) => {
                failures_in_row = 0;
                publish(&sender, priorities, None);
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
                let priorities = sender.borrow().priorities().map(<[_]>::to_vec).collect();
                publish(&sender, priorities, Some(error));
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
///
/// `priorities` lists the addresses of each priority, lowest priority number first. An
/// address listed under several priorities is kept only under the lowest, and a priority
/// left without addresses is dropped.
fn publish(
    sender: &watch::Sender<Arc<AddressSet>>,
    priorities: Vec<Vec<SocketAddr>>,
    error: Option<ResolveError>,
) {
    let mut addrs = Vec::new();
    let mut priority_sizes = Vec::new();
    for mut group in priorities {
        group.sort();
        group.dedup();
        group.retain(|addr| !addrs.contains(addr));
        if !group.is_empty() {
            priority_sizes.push(group.len());
            addrs.extend(group);
        }
    }

    let set = AddressSet {
        addrs,
        priority_sizes,
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

/// Looks up the addresses of `name`, grouped by priority with the lowest priority number
/// first, and the time their records expire.
async fn resolve(
    resolver: &SplitResolver,
    name: &UpstreamName,
) -> Result<(Vec<Vec<SocketAddr>>, Instant), ResolveError> {
    match name {
        UpstreamName::Host { name, port } => {
            let found = resolver.lookup_host(name).await?;
            let addrs = found
                .addrs
                .iter()
                .map(|ip| SocketAddr::new(*ip, *port))
                .collect();
            Ok((vec![addrs], found.valid_until))
        }
        UpstreamName::Srv { name } => {
            let found = resolver.lookup_srv(name).await?;
            // NOTE: SRV weights are not applied, so connections spread evenly over the
            // addresses of the priority in use.
            let mut priorities: BTreeMap<u16, Vec<SocketAddr>> = BTreeMap::new();
            for record in &found.records {
                let addrs = record
                    .addrs
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, record.port));
                priorities.entry(record.priority).or_default().extend(addrs);
            }
            Ok((priorities.into_values().collect(), found.valid_until))
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
    fn publish_keeps_address_in_lowest_priority() {
        let addr = |text: &str| text.parse::<SocketAddr>().unwrap();
        let (sender, receiver) = watch::channel(Arc::new(AddressSet::default()));
        let priorities = vec![
            vec![
                addr("10.0.0.2:80"),
                addr("10.0.0.1:80"),
                addr("10.0.0.1:80"),
            ],
            vec![addr("10.0.0.1:80")],
            vec![addr("10.0.0.3:81")],
        ];
        publish(&sender, priorities, None);

        let set = receiver.borrow().clone();
        assert_eq!(
            set.addrs,
            vec![
                addr("10.0.0.1:80"),
                addr("10.0.0.2:80"),
                addr("10.0.0.3:81")
            ]
        );
        assert_eq!(
            set.priority_sizes,
            vec![2, 1],
            "the emptied priority is dropped"
        );
        let priorities: Vec<_> = set.priorities().collect();
        assert_eq!(priorities.len(), 2);
        assert_eq!(priorities[1], [addr("10.0.0.3:81")]);
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
