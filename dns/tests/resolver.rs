//! The split resolver against real dnsmasq servers on loopback ports: routing, record types,
//! TTLs and the floor, negative caching, failover past dead and silent servers, shared
//! lookups and metrics.

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use styx_dns::error::UpstreamErrorKind;
use styx_dns::{IpFamily, ResolveError, ResolverConfig, RouteConfig, Servers, SplitResolver};
use support::{Dnsmasq, SilentServer, TAILNET, Zone, dead_server, trace_init};

/// Per-server timeout of the tests whose servers answer. dnsmasq on loopback answers
/// within a millisecond, but a loaded machine can hold its reply past the 300 ms
/// default and turn a routing or caching test into a timeout.
const ANSWERING_SERVER_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds a config with only the given routes, so that no query can leave loopback.
fn config(routes: &[(&str, Vec<SocketAddr>)]) -> ResolverConfig {
    let routes = routes
        .iter()
        .map(|(suffix, servers)| {
            RouteConfig::new(suffix.parse().unwrap(), Servers::Static(servers.clone()))
        })
        .collect();
    ResolverConfig {
        routes,
        server_timeout: ANSWERING_SERVER_TIMEOUT,
        ..ResolverConfig::default()
    }
}

/// Builds a config with the default 300 ms per-server timeout, for the tests in which
/// dead and silent servers time out.
fn failover_config(routes: &[(&str, Vec<SocketAddr>)]) -> ResolverConfig {
    ResolverConfig {
        server_timeout: ResolverConfig::default().server_timeout,
        ..config(routes)
    }
}

/// Counter totals and histogram sample counts of one resolver's private metrics recorder. A
/// snapshot of the debugging recorder resets them, so totals are accumulated across snapshots.
struct Counters {
    snapshotter: Snapshotter,
    totals: Mutex<HashMap<CompositeKey, u64>>,
}

impl Counters {
    /// Returns the sum of the counter `name` (or the number of samples of the histogram
    /// `name`) over the series whose labels include all of `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let mut totals = self.totals.lock().unwrap();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            // A histogram's total is its number of samples.
            let count = match value {
                DebugValue::Counter(count) => count,
                DebugValue::Histogram(samples) => samples.len() as u64,
                DebugValue::Gauge(_) => continue,
            };
            *totals.entry(key).or_default() += count;
        }

        let matches = |key: &CompositeKey| {
            key.key().name() == name
                && labels.iter().all(|(k, v)| {
                    key.key()
                        .labels()
                        .any(|label| label.key() == *k && label.value() == *v)
                })
        };
        totals
            .iter()
            .filter(|(key, _)| matches(key))
            .map(|(_, count)| count)
            .sum()
    }
}

/// Builds the resolver with its metrics going to a recorder of its own.
fn resolver_with_metrics(config: ResolverConfig) -> (SplitResolver, Counters) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let resolver = metrics::with_local_recorder(&recorder, || SplitResolver::new(config))
        .expect("build the resolver");
    let counters = Counters {
        snapshotter,
        totals: Mutex::new(HashMap::new()),
    };
    (resolver, counters)
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn routes_by_longest_suffix() {
    trace_init();
    let consul = Dnsmasq::start(&Zone::consul());
    let service = Dnsmasq::start(
        &Zone::new()
            .host("web.service.consul", "10.9.9.9")
            .local("service.consul"),
    );
    let tailnet = Dnsmasq::start(&Zone::magicdns().host("xconsul", "10.7.7.7"));

    let resolver = SplitResolver::new(config(&[
        ("consul", vec![consul.addr]),
        ("service.consul", vec![service.addr]),
        (".", vec![tailnet.addr]),
    ]))
    .unwrap();

    let web = resolver
        .lookup_ip("web.service.consul", IpFamily::V4)
        .await
        .unwrap();
    assert_eq!(
        web.addrs,
        vec![ip("10.9.9.9")],
        "service.consul is longer than consul"
    );

    let node = resolver
        .lookup_ip("node1.node.consul", IpFamily::V4)
        .await
        .unwrap();
    assert_eq!(node.addrs, vec![ip("10.0.1.1")]);

    let mac = resolver
        .lookup_ip(&format!("mac-a.{TAILNET}"), IpFamily::V4)
        .await
        .unwrap();
    assert_eq!(
        mac.addrs,
        vec![ip("100.64.0.1")],
        "other names go to the root route"
    );

    let other = resolver.lookup_ip("xconsul", IpFamily::V4).await.unwrap();
    assert_eq!(
        other.addrs,
        vec![ip("10.7.7.7")],
        "xconsul is not under consul"
    );
    assert_eq!(resolver.route_of("xconsul").unwrap().unwrap().as_str(), ".");
    assert_eq!(
        resolver
            .route_of("Web.Service.Consul.")
            .unwrap()
            .unwrap()
            .as_str(),
        "service.consul"
    );
}

#[tokio::test]
async fn resolves_a_aaaa_and_srv() {
    trace_init();
    let server = Dnsmasq::start(&Zone::consul().merge(Zone::magicdns()));
    let resolver = SplitResolver::new(config(&[
        ("consul", vec![server.addr]),
        ("ts.net", vec![server.addr]),
    ]))
    .unwrap();

    let web = resolver
        .lookup_ip("web.service.consul", IpFamily::V4)
        .await
        .unwrap();
    let mut addrs = web.addrs.clone();
    addrs.sort();
    assert_eq!(addrs, vec![ip("10.0.0.1"), ip("10.0.0.2")]);

    let v6 = resolver
        .lookup_ip("node1.node.consul", IpFamily::V6)
        .await
        .unwrap();
    assert_eq!(v6.addrs, vec![ip("fd00::1")]);

    let host = resolver
        .lookup_host(&format!("mac-a.{TAILNET}"))
        .await
        .unwrap();
    assert_eq!(host.addrs, vec![ip("100.64.0.1"), ip("fd7a:115c:a1e0::1")]);

    let srv = resolver.lookup_srv("web.service.consul").await.unwrap();
    let mut records: Vec<_> = srv
        .records
        .iter()
        .map(|r| (r.port, r.target.as_str(), r.addrs.clone()))
        .collect();
    records.sort();
    assert_eq!(
        records,
        vec![
            (
                8080,
                "node1.node.consul",
                vec![ip("10.0.1.1"), ip("fd00::1")]
            ),
            (8081, "node2.node.consul", vec![ip("10.0.1.2")]),
        ]
    );
    assert!(srv.records.iter().all(|r| r.priority == 1 && r.weight == 1));

    // dnsmasq sends the targets' addresses in the additional section, so no A or AAAA
    // query for a target follows the SRV query.
    assert_eq!(
        server.queries("node2.node.consul", "A"),
        0,
        "glue records were used"
    );
}

#[tokio::test]
async fn ttl_zero_reused_only_for_floor() {
    trace_init();
    let server = Dnsmasq::start(&Zone::consul());
    let floor = Duration::from_millis(500);
    let resolver = SplitResolver::new(ResolverConfig {
        ttl_floor: floor,
        ..config(&[("consul", vec![server.addr])])
    })
    .unwrap();

    let first = resolver
        .lookup_ip("web.service.consul", IpFamily::V4)
        .await
        .unwrap();
    let second = resolver
        .lookup_ip("web.service.consul", IpFamily::V4)
        .await
        .unwrap();
    assert_eq!(
        first, second,
        "the second lookup within the floor comes from the cache"
    );
    assert_eq!(server.wait_for_queries("web.service.consul", "A", 1), 1);

    tokio::time::sleep_until((first.valid_until + Duration::from_millis(50)).into()).await;
    resolver
        .lookup_ip("web.service.consul", IpFamily::V4)
        .await
        .unwrap();
    assert_eq!(
        server.wait_for_queries("web.service.consul", "A", 2),
        2,
        "after the floor, upstream is asked again"
    );
}

#[tokio::test]
async fn positive_ttl_honoured() {
    trace_init();
    let server = Dnsmasq::start(&Zone::consul().ttl(2));
    let resolver = SplitResolver::new(config(&[("consul", vec![server.addr])])).unwrap();

    let started = Instant::now();
    let first = resolver
        .lookup_ip("node2.node.consul", IpFamily::V4)
        .await
        .unwrap();
    assert!(
        first.valid_until >= started + Duration::from_secs(2),
        "TTL 2 s is kept, not floored to 1 s"
    );
    assert!(first.valid_until <= Instant::now() + Duration::from_secs(2));

    // Past the default floor of 1 s but within the TTL: still cached.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    resolver
        .lookup_ip("node2.node.consul", IpFamily::V4)
        .await
        .unwrap();
    assert_eq!(server.wait_for_queries("node2.node.consul", "A", 1), 1);

    tokio::time::sleep_until((first.valid_until + Duration::from_millis(50)).into()).await;
    resolver
        .lookup_ip("node2.node.consul", IpFamily::V4)
        .await
        .unwrap();
    assert_eq!(server.wait_for_queries("node2.node.consul", "A", 2), 2);
}

#[tokio::test]
async fn negative_answer_cached_per_soa() {
    trace_init();
    // The authoritative zone sends an SOA with minimum 3 s in negative answers.
    let server = Dnsmasq::start(&Zone::consul().ttl(3).authoritative("consul"));
    let (resolver, metrics) = resolver_with_metrics(config(&[("consul", vec![server.addr])]));

    let started = Instant::now();
    let error = resolver
        .lookup_ip("missing.service.consul", IpFamily::V4)
        .await
        .unwrap_err();
    assert_eq!(
        error,
        ResolveError::NxDomain {
            name: "missing.service.consul".to_owned()
        }
    );
    assert_eq!(
        error.to_string(),
        "missing.service.consul does not exist (NXDOMAIN)"
    );

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = resolver
        .lookup_ip("missing.service.consul", IpFamily::V4)
        .await
        .unwrap_err();
    assert_eq!(again, error);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the second lookup ran within the SOA TTL"
    );
    assert_eq!(
        server.wait_for_queries("missing.service.consul", "A", 1),
        1,
        "NXDOMAIN cached past the floor"
    );
    assert_eq!(
        metrics.get("styx_dns_cache_hits_total", &[("route", "consul")]),
        1
    );
    assert_eq!(
        metrics.get("styx_dns_queries_total", &[("outcome", "nxdomain")]),
        2
    );

    // A name without AAAA records is a negative answer too.
    let no_v6 = resolver
        .lookup_ip("node2.node.consul", IpFamily::V6)
        .await
        .unwrap_err();
    assert_eq!(no_v6.to_string(), "node2.node.consul has no AAAA records");
}

#[tokio::test]
async fn negative_ttl_capped_per_route() {
    trace_init();
    let server = Dnsmasq::start(&Zone::consul().ttl(600).authoritative("consul"));
    let mut config = config(&[("consul", vec![server.addr])]);
    config.routes[0].max_negative_ttl = Duration::from_secs(1);
    let resolver = SplitResolver::new(config).unwrap();

    resolver
        .lookup_ip("missing.service.consul", IpFamily::V4)
        .await
        .unwrap_err();
    resolver
        .lookup_ip("missing.service.consul", IpFamily::V4)
        .await
        .unwrap_err();
    assert_eq!(server.wait_for_queries("missing.service.consul", "A", 1), 1);

    // The SOA allows 600 s, the route caps it at 1 s.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    resolver
        .lookup_ip("missing.service.consul", IpFamily::V4)
        .await
        .unwrap_err();
    assert_eq!(server.wait_for_queries("missing.service.consul", "A", 2), 2);
}

#[tokio::test]
async fn dead_and_silent_servers_skipped() {
    trace_init();
    let live = Dnsmasq::start(&Zone::consul());
    let silent = SilentServer::start();
    let dead = dead_server();
    let (resolver, metrics) = resolver_with_metrics(failover_config(&[(
        "consul",
        vec![dead, silent.addr, live.addr],
    )]));

    let started = Instant::now();
    let web = resolver
        .lookup_ip("web.service.consul", IpFamily::V4)
        .await
        .unwrap();
    let first_answer = started.elapsed();
    assert_eq!(web.addrs.len(), 2);

    let started = Instant::now();
    let missing = resolver
        .lookup_ip("missing.service.consul", IpFamily::V4)
        .await
        .unwrap_err();
    let first_nxdomain = started.elapsed();
    assert!(
        matches!(missing, ResolveError::NxDomain { .. }),
        "{missing}"
    );

    // Two hedge delays of 100 ms before the live server is asked; 1.5 s leaves room for a
    // loaded machine while still failing on the 5 s stalls of a serial resolver.
    assert!(
        first_answer < Duration::from_millis(1500),
        "answer took {first_answer:?}"
    );
    assert!(
        first_nxdomain < Duration::from_millis(1500),
        "NXDOMAIN took {first_nxdomain:?}"
    );

    // Once their queries time out, the dead and the silent server are demoted, and the next
    // lookups go straight to the live server.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let silent_before = silent.received();
    for name in [
        "node1.node.consul",
        "node2.node.consul",
        "gone.service.consul",
    ] {
        let _ = resolver.lookup_ip(name, IpFamily::V4).await;
    }
    assert_eq!(
        silent.received(),
        silent_before,
        "a demoted server is not asked while others answer"
    );
    assert!(metrics.get("styx_dns_upstream_errors_total", &[("kind", "timeout")]) >= 2);
    assert_eq!(live.wait_for_queries("node1.node.consul", "A", 1), 1);
}

#[tokio::test]
async fn refusing_server_skipped() {
    trace_init();
    // A server without the zone refuses the query; the next server answers at once.
    let refusing = Dnsmasq::start(&Zone::magicdns());
    let live = Dnsmasq::start(&Zone::consul());
    let (resolver, metrics) =
        resolver_with_metrics(config(&[("consul", vec![refusing.addr, live.addr])]));

    let web = resolver
        .lookup_ip("web.service.consul", IpFamily::V4)
        .await
        .unwrap();
    assert_eq!(web.addrs.len(), 2);
    assert_eq!(
        metrics.get("styx_dns_upstream_errors_total", &[("kind", "refused")]),
        1
    );

    resolver
        .lookup_ip("node1.node.consul", IpFamily::V4)
        .await
        .unwrap();
    assert_eq!(
        refusing.wait_for_queries("node1.node.consul", "A", 0),
        0,
        "the refusing server is demoted"
    );
}

#[tokio::test]
async fn all_servers_dead_fails_fast() {
    trace_init();
    let silent = SilentServer::start();
    let dead = dead_server();
    let resolver =
        SplitResolver::new(failover_config(&[("consul", vec![dead, silent.addr])])).unwrap();

    let started = Instant::now();
    let error = resolver
        .lookup_ip("web.service.consul", IpFamily::V4)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();

    let ResolveError::Unreachable { name, failures } = &error else {
        panic!("expected Unreachable, got {error}");
    };
    assert_eq!(name, "web.service.consul");
    assert_eq!(failures.0.len(), 2);
    assert!(
        failures
            .0
            .iter()
            .any(|f| f.server == silent.addr && f.kind == UpstreamErrorKind::Timeout)
    );
    let message = error.to_string();
    assert!(
        message.starts_with("failed to resolve web.service.consul: no upstream server answered"),
        "{message}"
    );
    assert!(
        message.contains(&format!("{} timed out", silent.addr)),
        "{message}"
    );

    // One hedge delay plus one 300 ms timeout; the bound allows for a loaded machine.
    assert!(
        elapsed < Duration::from_millis(1500),
        "error took {elapsed:?}"
    );
}

#[tokio::test]
async fn large_srv_answer_complete() {
    trace_init();
    // 40 SRV records with glue exceed 512 bytes, so the UDP answer is truncated.
    let mut zone = Zone::new().local("consul").local("example");
    for i in 0..40u16 {
        let target = format!("node{i}.node.consul");
        zone =
            zone.host(&target, &format!("10.0.2.{i}"))
                .srv("big.service.consul", &target, 9000 + i);
        zone = zone
            .host(&format!("node{i}.example"), &format!("10.0.3.{i}"))
            .srv("big.example", &format!("node{i}.example"), 9000 + i);
    }
    let server = Dnsmasq::start(&zone);
    let resolver = SplitResolver::new(config(&[
        ("consul", vec![server.addr]),
        ("example", vec![server.addr]),
    ]))
    .unwrap();

    // `consul` sends SRV queries over TCP from the start.
    let consul = resolver.lookup_srv("big.service.consul").await.unwrap();
    assert_eq!(consul.records.len(), 40);
    assert!(consul.records.iter().all(|r| r.addrs.len() == 1));

    // Other routes use UDP and retry over TCP when the answer is truncated.
    let other = resolver.lookup_srv("big.example").await.unwrap();
    assert_eq!(other.records.len(), 40);

    // dnsmasq sets TC on the UDP answer. Only the complete answer over TCP carries the glue,
    // so no target had to be looked up on its own.
    assert_eq!(server.queries("node0.node.consul", "A"), 0);
    assert_eq!(server.queries("node39.example", "A"), 0);
}

#[tokio::test]
async fn concurrent_lookups_share_one_query() {
    trace_init();
    let server = Dnsmasq::start(&Zone::consul());
    let (resolver, metrics) = resolver_with_metrics(config(&[("consul", vec![server.addr])]));

    let lookups = (0..20).map(|_| {
        let resolver = resolver.clone();
        tokio::spawn(async move { resolver.lookup_ip("web.service.consul", IpFamily::V4).await })
    });
    for lookup in lookups.collect::<Vec<_>>() {
        assert_eq!(lookup.await.unwrap().unwrap().addrs.len(), 2);
    }

    assert_eq!(
        metrics.get("styx_dns_upstream_queries_total", &[("route", "consul")]),
        1
    );
    assert_eq!(server.wait_for_queries("web.service.consul", "A", 1), 1);
    let hits = metrics.get("styx_dns_cache_hits_total", &[]);
    let misses = metrics.get("styx_dns_cache_misses_total", &[]);
    assert_eq!(hits + misses, 20);
    assert_eq!(
        metrics.get(
            "styx_dns_query_duration_seconds",
            &[("route", "consul"), ("type", "A")]
        ),
        20
    );
    assert_eq!(
        metrics.get(
            "styx_dns_queries_total",
            &[("route", "consul"), ("type", "A"), ("outcome", "answer")]
        ),
        20
    );
}

#[tokio::test]
async fn invalid_name_rejected_without_query() {
    let resolver = SplitResolver::new(config(&[(".", vec![dead_server()])])).unwrap();
    let error = resolver
        .lookup_ip("bad..name", IpFamily::V4)
        .await
        .unwrap_err();
    assert!(matches!(error, ResolveError::InvalidName(_)), "{error}");
    assert!(error.to_string().contains("\"bad..name\""), "{error}");
}

#[tokio::test]
async fn route_without_servers_fails() {
    let resolver =
        SplitResolver::new(config(&[("consul", vec![dead_server()]), (".", vec![])])).unwrap();
    let error = resolver
        .lookup_ip("example.com", IpFamily::V4)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "failed to resolve example.com: route . has no upstream servers"
    );
}

#[tokio::test]
async fn srv_targets_resolved_without_glue() {
    trace_init();
    // dnsmasq's authoritative mode sends no additional section, so the targets' addresses
    // must be looked up separately.
    let server = Dnsmasq::start(&Zone::consul().authoritative("consul"));
    let resolver = SplitResolver::new(config(&[("consul", vec![server.addr])])).unwrap();

    let srv = resolver.lookup_srv("web.service.consul").await.unwrap();
    let mut records: Vec<_> = srv
        .records
        .iter()
        .map(|r| (r.port, r.addrs.clone()))
        .collect();
    records.sort();
    assert_eq!(
        records,
        vec![
            (8080, vec![ip("10.0.1.1"), ip("fd00::1")]),
            (8081, vec![ip("10.0.1.2")])
        ]
    );
    assert_eq!(
        server.wait_for_queries("node2.node.consul", "A", 1),
        1,
        "target looked up"
    );
}

#[tokio::test]
async fn ip_literal_returned_without_query() {
    let silent = SilentServer::start();
    let resolver = SplitResolver::new(config(&[(".", vec![silent.addr])])).unwrap();
    let v4: IpAddr = "10.0.0.5".parse().unwrap();
    let v6: IpAddr = "fd00::5".parse().unwrap();

    let found = resolver.lookup_ip("10.0.0.5", IpFamily::V4).await.unwrap();
    assert_eq!(found.addrs, vec![v4]);
    let found = resolver.lookup_ip("fd00::5", IpFamily::V6).await.unwrap();
    assert_eq!(found.addrs, vec![v6]);
    let found = resolver.lookup_host("[fd00::5]").await.unwrap();
    assert_eq!(found.addrs, vec![v6]);
    let found = resolver.lookup_host("10.0.0.5").await.unwrap();
    assert_eq!(found.addrs, vec![v4]);

    // getaddrinfo with one family also fails for a literal of the other family.
    let error = resolver
        .lookup_ip("10.0.0.5", IpFamily::V6)
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "10.0.0.5 has no AAAA records");

    let error = resolver.lookup_srv("10.0.0.5").await.unwrap_err();
    assert!(
        matches!(error, ResolveError::InvalidName(_)),
        "SRV on a literal: {error}"
    );
    assert_eq!(silent.received(), 0, "IP literals send no query");
}
