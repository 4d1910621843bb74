//! [`SplitResolver`]: routes names to upstream servers by suffix, caches answers and shares
//! concurrent identical lookups.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::Shared;
use hickory_resolver::proto::rr::Name;

use crate::answer::{
    Entry, EntryData, IpFamily, IpLookup, QueryType, SrvLookup, TtlPolicy, display_name, to_entry,
};
use crate::cache::{Cache, Key};
use crate::config::{ResolverConfig, Servers};
use crate::error::{ResolveError, ServerFailures};
use crate::metrics::{Outcome, RouteMetrics};
use crate::name::{NameError, Suffix, parse_ip_literal, parse_name};
use crate::upstream::{ServerSet, SetError, Timing};

/// Error of building a [`SplitResolver`].
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid resolver configuration: server_timeout must be greater than zero")]
    ZeroTimeout,
    #[error("failed to build the DNS client for route {route}: {source}")]
    Client {
        route: String,
        #[source]
        source: hickory_resolver::net::NetError,
    },
}

/// A split DNS resolver: each name goes to the route with the longest suffix that contains it,
/// answers are cached across routes, and concurrent identical lookups share one upstream
/// request.
///
/// Cloning is cheap and clones share the cache and server health.
#[derive(Clone)]
pub struct SplitResolver {
    inner: Arc<Inner>,
}

struct Inner {
    /// Routes, longest suffix first, so the first match is the longest.
    routes: Vec<Route>,
    cache: Cache,
    in_flight: Mutex<HashMap<Key, SharedLookup>>,
    ttl_floor: std::time::Duration,
}

struct Route {
    suffix: Suffix,
    servers: ServerSet,
    srv_over_tcp: bool,
    ttl: TtlPolicy,
    metrics: Arc<RouteMetrics>,
}

impl std::fmt::Debug for SplitResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes: Vec<&str> = self
            .inner
            .routes
            .iter()
            .map(|route| route.suffix.as_str())
            .collect();
        f.debug_struct("SplitResolver")
            .field("routes", &routes)
            .finish_non_exhaustive()
    }
}

/// How long the lookup result of an IP literal is valid. The address never changes, so this only
/// needs to be far beyond any cache or watch period.
const IP_LITERAL_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

type LookupFuture = Pin<Box<dyn Future<Output = Result<Arc<Entry>, ResolveError>> + Send>>;
type SharedLookup = Shared<LookupFuture>;

impl SplitResolver {
    /// Builds the resolver. No query is sent until the first lookup.
    ///
    /// # Errors
    ///
    /// Fails when `server_timeout` is zero or hickory rejects a server configuration. An
    /// unreadable system configuration is not an error: the route that uses it gets no
    /// servers, and a warning is logged.
    pub fn new(config: ResolverConfig) -> Result<Self, BuildError> {
        if config.server_timeout.is_zero() {
            return Err(BuildError::ZeroTimeout);
        }

        let timing = Timing {
            server_timeout: config.server_timeout,
            hedge_delay: config.hedge_delay,
            demotion: config.demotion,
            max_demotion: config.max_demotion,
        };

        let mut routes = Vec::new();
        for route in &config.routes {
            let route_name = route.suffix.to_string();
            let addrs = match &route.servers {
                Servers::Static(addrs) => addrs.clone(),
                Servers::System => system_servers().unwrap_or_else(|error| {
                    // The other routes still work, so a missing system configuration only
                    // fails lookups on this route (with `ResolveError::NoServers`).
                    tracing::warn!(route = %route_name, %error, "failed to read the system DNS configuration");
                    Vec::new()
                }),
            };
            let servers = ServerSet::new(&addrs, timing).map_err(|source| BuildError::Client {
                route: route_name.clone(),
                source,
            })?;
            tracing::debug!(route = %route_name, servers = ?addrs, "DNS route configured");

            routes.push(Route {
                suffix: route.suffix.clone(),
                servers,
                srv_over_tcp: route.srv_over_tcp,
                ttl: TtlPolicy {
                    floor: config.ttl_floor,
                    max_positive: config.max_ttl,
                    max_negative: route.max_negative_ttl,
                },
                metrics: Arc::new(RouteMetrics::new(&route_name)),
            });
        }
        // The sort is stable, so of two routes with the same suffix the first configured wins.
        // `apply_override` never creates such duplicates.
        routes.sort_by_key(|route| std::cmp::Reverse(route.suffix.label_count()));

        Ok(Self {
            inner: Arc::new(Inner {
                routes,
                cache: Cache::new(config.cache_capacity),
                in_flight: Mutex::new(HashMap::new()),
                ttl_floor: config.ttl_floor,
            }),
        })
    }

    /// Returns the suffix of the route that serves `name`, or `None` when no route matches (only possible
    /// when the configuration has no `.` route).
    pub fn route_of(&self, name: &str) -> Result<Option<&Suffix>, ResolveError> {
        let name = parse_name(name)?;
        Ok(self.inner.route(&name).map(|route| &route.suffix))
    }

    /// Returns the servers of the route that serves `name`.
    pub fn servers_of(&self, name: &str) -> Result<Vec<SocketAddr>, ResolveError> {
        let name = parse_name(name)?;
        Ok(self
            .inner
            .route(&name)
            .map(|route| route.servers.addrs().collect())
            .unwrap_or_default())
    }

    /// Shortest time an answer is cached; watchers re-resolve no more often than this.
    pub fn ttl_floor(&self) -> std::time::Duration {
        self.inner.ttl_floor
    }

    /// Looks up the A (IPv4) or AAAA (IPv6) records of `name`.
    ///
    /// # Errors
    ///
    /// An IPv4 or IPv6 literal is returned as itself with no query sent, as getaddrinfo does.
    ///
    /// # Errors
    ///
    /// [`ResolveError::InvalidName`] for a malformed name, `NxDomain` or `NoRecords` for a
    /// negative answer, `Unreachable` when no server of the route answered. A literal of the
    /// other family gets `NoRecords`.
    pub async fn lookup_ip(&self, name: &str, family: IpFamily) -> Result<IpLookup, ResolveError> {
        if let Some(ip) = parse_ip_literal(name) {
            let query_type = family.query_type();
            return literal_lookup(ip, Some(query_type)).ok_or(ResolveError::NoRecords {
                name: name.to_owned(),
                query_type,
            });
        }

        let name = parse_name(name)?;
        self.lookup_ip_name(name, family.query_type()).await
    }

    /// Looks up A and AAAA records of `name` at once and merges them, IPv4 first. An IP
    /// literal is returned as itself with no query sent.
    ///
    /// # Errors
    ///
    /// Fails only when neither type has records: with the A lookup's error, unless that is a
    /// negative answer and the AAAA lookup failed to reach any server.
    pub async fn lookup_host(&self, name: &str) -> Result<IpLookup, ResolveError> {
        if let Some(ip) = parse_ip_literal(name) {
            return Ok(literal_lookup(ip, None).expect("any family matches"));
        }

        let name = parse_name(name)?;
        let (v4, v6) = tokio::join!(
            self.lookup_ip_name(name.clone(), QueryType::A),
            self.lookup_ip_name(name, QueryType::Aaaa),
        );

        match (v4, v6) {
            (Ok(mut v4), Ok(v6)) => {
                v4.addrs.extend(v6.addrs);
                v4.valid_until = v4.valid_until.min(v6.valid_until);
                Ok(v4)
            }
            (Ok(found), Err(_)) | (Err(_), Ok(found)) => Ok(found),
            (Err(v4), Err(v6)) if v4.is_not_found() && !v6.is_not_found() => Err(v6),
            (Err(v4), Err(_)) => Err(v4),
        }
    }

    /// Looks up the SRV records of `name`, with the addresses of each target: from the
    /// additional section when present, else looked up (A and AAAA) through this resolver.
    ///
    /// # Errors
    ///
    /// As [`Self::lookup_ip`], for the SRV query. A target whose addresses cannot be looked up
    /// is returned with no addresses rather than failing the lookup. An IP literal is an
    /// invalid name, because only names have SRV records.
    pub async fn lookup_srv(&self, name: &str) -> Result<SrvLookup, ResolveError> {
        if parse_ip_literal(name).is_some() {
            return Err(NameError::IpAddressForSrv {
                name: name.to_owned(),
            }
            .into());
        }

        let name = parse_name(name)?;
        let entry = self.lookup_entry(name.clone(), QueryType::Srv).await?;
        let EntryData::Srv(records) = &entry.data else {
            return Err(negative_error(&entry.data, &name, QueryType::Srv));
        };

        // Targets without glue are looked up at once rather than one after another.
        let lookups = records.iter().map(|(record, target)| async move {
            if !record.addrs.is_empty() {
                return (record.clone(), None);
            }
            let found = self.lookup_host(&target.to_ascii()).await;
            if let Err(error) = &found {
                tracing::debug!(target = %record.target, %error, "SRV target has no addresses");
            }
            (record.clone(), found.ok())
        });

        let mut valid_until = entry.valid_until;
        let mut out = Vec::with_capacity(records.len());
        for (mut record, found) in futures_util::future::join_all(lookups).await {
            if let Some(found) = found {
                record.addrs = found.addrs;
                valid_until = valid_until.min(found.valid_until);
            }
            out.push(record);
        }
        Ok(SrvLookup {
            records: out,
            valid_until,
        })
    }

    async fn lookup_ip_name(
        &self,
        name: Name,
        query_type: QueryType,
    ) -> Result<IpLookup, ResolveError> {
        let entry = self.lookup_entry(name.clone(), query_type).await?;
        match &entry.data {
            EntryData::Ips(addrs) => Ok(IpLookup {
                addrs: addrs.clone(),
                valid_until: entry.valid_until,
            }),
            other => Err(negative_error(other, &name, query_type)),
        }
    }

    /// Returns the cached entry, or queries upstream (joining a request already in flight).
    async fn lookup_entry(
        &self,
        name: Name,
        query_type: QueryType,
    ) -> Result<Arc<Entry>, ResolveError> {
        let started = Instant::now();
        let Some(route_index) = self.inner.route_index(&name) else {
            return Err(ResolveError::NoServers {
                name: display_name(&name),
                route: "(none)".to_owned(),
            });
        };
        let route = &self.inner.routes[route_index];

        let key = (name, query_type);
        let result = match self.inner.cache.get(&key, started) {
            Some(entry) => {
                route.metrics.cache_hit(query_type);
                Ok(entry)
            }
            None => {
                route.metrics.cache_miss(query_type);
                self.shared_lookup(key, route_index).await
            }
        };

        let outcome = match &result {
            Ok(entry) => match entry.data {
                EntryData::Ips(_) | EntryData::Srv(_) => Outcome::Answer,
                EntryData::NxDomain => Outcome::NxDomain,
                EntryData::NoRecords => Outcome::NoRecords,
            },
            Err(_) => Outcome::Error,
        };
        route
            .metrics
            .query(query_type, outcome, started.elapsed().as_secs_f64());
        result
    }

    async fn shared_lookup(
        &self,
        key: Key,
        route_index: usize,
    ) -> Result<Arc<Entry>, ResolveError> {
        let (lookup, _guard) = {
            let mut in_flight = self
                .inner
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match in_flight.get(&key) {
                Some(lookup) => (lookup.clone(), None),
                None => {
                    let inner = self.inner.clone();
                    let lookup_key = key.clone();
                    let lookup: LookupFuture =
                        Box::pin(
                            async move { inner.upstream_lookup(lookup_key, route_index).await },
                        );
                    let lookup = lookup.shared();
                    in_flight.insert(key.clone(), lookup.clone());

                    // The caller that started the request removes it when done or cancelled;
                    // callers that joined keep polling their clone of the shared future.
                    let guard = InFlightGuard {
                        inner: self.inner.clone(),
                        key,
                    };
                    (lookup, Some(guard))
                }
            }
        };
        lookup.await
    }
}

impl Inner {
    fn route(&self, name: &Name) -> Option<&Route> {
        self.route_index(name).map(|index| &self.routes[index])
    }

    fn route_index(&self, name: &Name) -> Option<usize> {
        self.routes
            .iter()
            .position(|route| route.suffix.contains(name))
    }

    async fn upstream_lookup(
        &self,
        key: Key,
        route_index: usize,
    ) -> Result<Arc<Entry>, ResolveError> {
        let route = &self.routes[route_index];
        let (name, query_type) = &key;
        let tcp_only = *query_type == QueryType::Srv && route.srv_over_tcp;

        let response = route
            .servers
            .query(name, query_type.record_type(), tcp_only, &route.metrics)
            .await
            .map_err(|error| match error {
                SetError::NoServers => ResolveError::NoServers {
                    name: display_name(name),
                    route: route.suffix.to_string(),
                },
                SetError::AllFailed(failures) => ResolveError::Unreachable {
                    name: display_name(name),
                    failures: ServerFailures(failures),
                },
            })?;

        let now = Instant::now();
        let entry = Arc::new(to_entry(response, *query_type, &route.ttl, now));
        self.cache.insert(key.clone(), entry.clone(), now);
        Ok(entry)
    }
}

struct InFlightGuard {
    inner: Arc<Inner>,
    key: Key,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut in_flight = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        in_flight.remove(&self.key);
    }
}

/// Returns the lookup result of an IP literal, or `None` when `query_type` requests the other
/// family. `None` as the type matches both families.
fn literal_lookup(ip: IpAddr, query_type: Option<QueryType>) -> Option<IpLookup> {
    let family_matches = match query_type {
        Some(QueryType::A) => ip.is_ipv4(),
        Some(QueryType::Aaaa) => ip.is_ipv6(),
        Some(QueryType::Srv) => false,
        None => true,
    };
    family_matches.then(|| IpLookup {
        addrs: vec![ip],
        valid_until: Instant::now() + IP_LITERAL_VALIDITY,
    })
}

fn negative_error(data: &EntryData, name: &Name, query_type: QueryType) -> ResolveError {
    match data {
        EntryData::NxDomain => ResolveError::NxDomain {
            name: display_name(name),
        },
        _ => ResolveError::NoRecords {
            name: display_name(name),
            query_type,
        },
    }
}

/// Reads the name servers of the operating system's configuration, with their ports.
fn system_servers() -> Result<Vec<SocketAddr>, String> {
    let (config, _options) =
        hickory_resolver::system_conf::read_system_conf().map_err(|error| error.to_string())?;

    let mut addrs: Vec<SocketAddr> = Vec::new();
    for server in config.name_servers() {
        let port = server
            .connections
            .first()
            .map_or(53, |connection| connection.port);
        let addr = SocketAddr::new(server.ip, port);
        if !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    Ok(addrs)
}
