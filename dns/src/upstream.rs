//! The upstream servers of one route: hedged queries, per-server timeouts and demotion.
//!
//! Each server gets its own hickory resolver (hickory's cache off, no retries), so that this
//! module, not hickory's pool, decides the order of servers and when to give up on one:
//!
//! - Servers are asked in configured order, demoted servers last. When the current server
//!   has not answered after the hedge delay, or fails, the next one is asked as well, and
//!   the first usable answer wins. A dead server ahead of a live one so costs one hedge delay
//!   per lookup, and nothing once it is demoted.
//! - Every query runs in its own task until its per-server timeout, even after another
//!   server won, so a silent server is seen to time out and is demoted.
//! - A failure (timeout, REFUSED, SERVFAIL, socket error) demotes the server: it is tried
//!   last for the demotion period, which doubles with each failure in a row up to a maximum.
//!   Any answer, negative ones included, restores it.
//!
//! Truncated UDP answers are retried over TCP by hickory. This module does not cache.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RecordType};

use crate::answer::Response;
use crate::error::{ServerFailure, UpstreamErrorKind};
use crate::metrics::RouteMetrics;

/// Timing of hedging and demotion, shared by all routes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub server_timeout: Duration,
    pub hedge_delay: Duration,
    pub demotion: Duration,
    pub max_demotion: Duration,
}

/// The servers of one route.
pub(crate) struct ServerSet {
    servers: Vec<Arc<Server>>,
    timing: Timing,
}

struct Server {
    addr: SocketAddr,
    /// UDP first, TCP when the answer is truncated.
    udp: TokioResolver,
    /// TCP only, for SRV queries on routes that ask for it.
    tcp: TokioResolver,
    health: Mutex<Health>,
}

#[derive(Debug, Default)]
struct Health {
    failures_in_row: u32,
    demoted_until: Option<Instant>,
}

/// Error of querying the servers of a route.
#[derive(Debug)]
pub(crate) enum SetError {
    NoServers,
    AllFailed(Vec<ServerFailure>),
}

impl ServerSet {
    /// Builds the set. Nothing connects until the first query.
    pub fn new(addrs: &[SocketAddr], timing: Timing) -> Result<Self, NetError> {
        let servers = addrs
            .iter()
            .map(|&addr| Server::new(addr, timing.server_timeout).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Self { servers, timing })
    }

    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.servers.iter().map(|server| server.addr)
    }

    /// Asks the servers for `name` and `record_type` as described in the module doc.
    ///
    /// # Errors
    ///
    /// Returns every server's failure when none gave a usable answer, at the latest one
    /// per-server timeout after the last server was asked.
    pub async fn query(
        &self,
        name: &Name,
        record_type: RecordType,
        tcp_only: bool,
        metrics: &Arc<RouteMetrics>,
    ) -> Result<Response, SetError> {
        if self.servers.is_empty() {
            return Err(SetError::NoServers);
        }

        let mut order = self.order(Instant::now()).into_iter();
        let mut pending = FuturesUnordered::new();
        let mut failures = Vec::new();
        let mut next_hedge = Instant::now();

        loop {
            if Instant::now() >= next_hedge {
                if let Some(server) = order.next() {
                    metrics.upstream_query();
                    let query = self.spawn_query(server, name, record_type, tcp_only, metrics);
                    pending.push(query);
                }
                next_hedge = Instant::now() + self.timing.hedge_delay;
            }

            let hedge = tokio::time::sleep_until(next_hedge.into());
            let result = tokio::select! {
                result = pending.next(), if !pending.is_empty() => result,
                () = hedge, if order.len() > 0 => continue,
                // Both guards are false only when nothing is pending and no server is left,
                // and the end of the loop returns before that.
                else => None,
            };

            let Some(result) = result else {
                return Err(SetError::AllFailed(failures));
            };
            match result {
                (_, Ok(response)) => return Ok(response),
                (server, Err(kind)) => failures.push(ServerFailure { server, kind }),
            }

            // A failed server hands over at once instead of after the hedge delay.
            next_hedge = Instant::now();
            if pending.is_empty() && order.len() == 0 {
                return Err(SetError::AllFailed(failures));
            }
        }
    }

    /// Returns the servers in the order to ask them: healthy ones in configured order, then demoted ones
    /// by the end of their demotion.
    fn order(&self, now: Instant) -> Vec<Arc<Server>> {
        let mut order: Vec<(Option<Instant>, usize)> = self
            .servers
            .iter()
            .enumerate()
            .map(|(index, server)| (server.demoted_until(now), index))
            .collect();
        order.sort();
        order
            .into_iter()
            .map(|(_, index)| self.servers[index].clone())
            .collect()
    }

    /// Starts a query in a task of its own, which records the server's health when the query
    /// ends, even if the returned future has been dropped by then.
    fn spawn_query(
        &self,
        server: Arc<Server>,
        name: &Name,
        record_type: RecordType,
        tcp_only: bool,
        metrics: &Arc<RouteMetrics>,
    ) -> impl Future<Output = (SocketAddr, Result<Response, UpstreamErrorKind>)> + use<> {
        let addr = server.addr;
        let name = name.clone();
        let timing = self.timing;
        let metrics = metrics.clone();

        let task = tokio::spawn(async move {
            let lookup = server.lookup(name, record_type, tcp_only);
            let result = match tokio::time::timeout(timing.server_timeout, lookup).await {
                Ok(result) => result,
                Err(_) => Err(UpstreamErrorKind::Timeout),
            };

            match &result {
                Ok(_) => server.record_success(),
                Err(kind) => {
                    metrics.upstream_error(*kind);
                    server.record_failure(*kind, &timing);
                }
            }
            result
        });

        async move {
            // A panic in the query task counts as an invalid reply of that server.
            let result = task.await.unwrap_or(Err(UpstreamErrorKind::Protocol));
            (addr, result)
        }
    }
}

impl Server {
    fn new(addr: SocketAddr, timeout: Duration) -> Result<Self, NetError> {
        let connection = |mut connection: ConnectionConfig| {
            connection.port = addr.port();
            connection
        };
        let udp = NameServerConfig::new(
            addr.ip(),
            true,
            vec![
                connection(ConnectionConfig::udp()),
                connection(ConnectionConfig::tcp()),
            ],
        );
        let tcp = NameServerConfig::new(addr.ip(), true, vec![connection(ConnectionConfig::tcp())]);

        Ok(Self {
            addr,
            udp: build_resolver(udp, timeout)?,
            tcp: build_resolver(tcp, timeout)?,
            health: Mutex::new(Health::default()),
        })
    }

    async fn lookup(
        &self,
        name: Name,
        record_type: RecordType,
        tcp_only: bool,
    ) -> Result<Response, UpstreamErrorKind> {
        let resolver = if tcp_only { &self.tcp } else { &self.udp };
        match resolver.lookup(name, record_type).await {
            Ok(lookup) => Ok(Response::Records {
                answers: lookup.answers().to_vec(),
                additionals: lookup.additionals().to_vec(),
            }),
            Err(NetError::Dns(DnsError::NoRecordsFound(no_records))) => Ok(Response::Negative {
                nxdomain: no_records.response_code == ResponseCode::NXDomain,
                soa_ttl: no_records.negative_ttl,
            }),
            Err(error) => {
                tracing::debug!(server = %self.addr, %error, "upstream DNS query failed");
                Err(classify(&error))
            }
        }
    }

    fn demoted_until(&self, now: Instant) -> Option<Instant> {
        let health = self
            .health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        health.demoted_until.filter(|until| *until > now)
    }

    fn record_success(&self) {
        let mut health = self
            .health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if health.failures_in_row > 0 {
            tracing::info!(server = %self.addr, "DNS server answers again");
        }
        *health = Health::default();
    }

    fn record_failure(&self, kind: UpstreamErrorKind, timing: &Timing) {
        let mut health = self
            .health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        health.failures_in_row = health.failures_in_row.saturating_add(1);

        let doublings = (health.failures_in_row - 1).min(16);
        let period = timing
            .demotion
            .saturating_mul(1 << doublings)
            .min(timing.max_demotion);
        health.demoted_until = Some(Instant::now() + period);

        if health.failures_in_row == 1 {
            tracing::warn!(server = %self.addr, error = kind.as_metrics_label(), ?period, "DNS server demoted");
        }
    }
}

fn build_resolver(server: NameServerConfig, timeout: Duration) -> Result<TokioResolver, NetError> {
    let mut options = ResolverOpts::default();
    options.timeout = timeout;
    options.attempts = 0;
    options.cache_size = 0;
    options.num_concurrent_reqs = 1;
    options.use_hosts_file = ResolveHosts::Never;
    options.ndots = 0;

    let config = ResolverConfig::from_parts(None, vec![], vec![server]);
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
}

fn classify(error: &NetError) -> UpstreamErrorKind {
    match error {
        NetError::Timeout => UpstreamErrorKind::Timeout,
        NetError::Io(_) | NetError::NoConnections | NetError::Busy => UpstreamErrorKind::Io,
        NetError::Truncated => UpstreamErrorKind::Truncated,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => UpstreamErrorKind::Refused,
        NetError::Dns(DnsError::ResponseCode(_)) => UpstreamErrorKind::ServerFailure,
        _ => UpstreamErrorKind::Protocol,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            server_timeout: Duration::from_millis(300),
            hedge_delay: Duration::from_millis(100),
            demotion: Duration::from_secs(5),
            max_demotion: Duration::from_secs(12),
        }
    }

    fn set() -> ServerSet {
        let addrs: Vec<SocketAddr> = ["127.0.0.1:5301", "127.0.0.1:5302", "127.0.0.1:5303"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        ServerSet::new(&addrs, timing()).unwrap()
    }

    fn ports(order: &[Arc<Server>]) -> Vec<u16> {
        order.iter().map(|server| server.addr.port()).collect()
    }

    #[test]
    fn demoted_server_ordered_last() {
        let set = set();
        assert_eq!(ports(&set.order(Instant::now())), [5301, 5302, 5303]);

        set.servers[0].record_failure(UpstreamErrorKind::Timeout, &timing());
        assert_eq!(ports(&set.order(Instant::now())), [5302, 5303, 5301]);

        set.servers[1].record_failure(UpstreamErrorKind::Refused, &timing());
        assert_eq!(
            ports(&set.order(Instant::now())),
            [5303, 5301, 5302],
            "earliest demotion end first"
        );

        set.servers[0].record_success();
        assert_eq!(ports(&set.order(Instant::now())), [5301, 5303, 5302]);
    }

    #[test]
    fn demotion_doubles_up_to_max() {
        let set = set();
        let server = &set.servers[0];
        let period = |server: &Server| {
            let health = server.health.lock().unwrap();
            health.demoted_until.unwrap() - Instant::now()
        };

        server.record_failure(UpstreamErrorKind::Timeout, &timing());
        assert!(period(server) <= Duration::from_secs(5));
        assert!(period(server) > Duration::from_secs(4));

        server.record_failure(UpstreamErrorKind::Timeout, &timing());
        assert!(
            period(server) > Duration::from_secs(9),
            "second failure doubles the period"
        );

        server.record_failure(UpstreamErrorKind::Timeout, &timing());
        assert!(
            period(server) <= Duration::from_secs(12),
            "capped at the maximum"
        );

        let later = Instant::now() + Duration::from_secs(13);
        assert_eq!(server.demoted_until(later), None, "demotion ends");
    }
}
