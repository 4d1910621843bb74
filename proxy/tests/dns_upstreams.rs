//! Upstreams given by name, against a real dnsmasq on a loopback port: round-robin over a
//! name's addresses, following a zone whose address set changes, setting aside an address
//! that refuses, and SRV upstreams that take their ports from the SRV records and move to
//! the next priority when every address of the first one refuses.
//!
//! Each upstream server listens on its own loopback address (127.0.0.N), so dnsmasq can
//! serve it as an A record, and writes that address to every client it accepts. A client
//! therefore learns which upstream served it from the bytes it reads.

mod common;
#[path = "../../dns/tests/support/mod.rs"]
mod dns_support;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{closed_port, metrics_addr, parse_samples, scrape, value, wait_for_metric, within};
use dns_support::{Dnsmasq, Zone};
use styx_dns::{ResolverConfig, RouteConfig, Servers, SplitResolver};
use styx_proxy::{DrainReport, ListenerConfig, ProxyConfig, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound for waiting on a zone change; the resolver re-resolves every 200 ms here.
const ZONE_CHANGE_WAIT: Duration = Duration::from_secs(10);

/// A proxy in this process whose listener resolves names through dnsmasq.
struct NamedProxy {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<DrainReport>,
}

impl NamedProxy {
    /// Starts a listener named `name` with `upstreams` (IP:PORT, NAME:PORT or srv:NAME),
    /// resolving `consul` names through `dns`.
    fn start(name: &str, upstreams: &[String], dns: SocketAddr, preconnect: usize) -> Self {
        // The resolver takes its metric handles when it is built, so the recorder comes first.
        metrics_addr();
        let resolver = SplitResolver::new(ResolverConfig {
            routes: vec![RouteConfig::new(
                "consul".parse().unwrap(),
                Servers::Static(vec![dns]),
            )],
            ttl_floor: Duration::from_millis(200),
            ..ResolverConfig::default()
        })
        .expect("resolver builds");

        let mut listener = ListenerConfig::new(name, "127.0.0.1:0".parse().unwrap(), Vec::new());
        for upstream in upstreams {
            listener.add_target(upstream.parse().expect("test upstream is valid"));
        }
        listener.preconnect = preconnect;
        listener.connect_timeout = Duration::from_secs(2);
        let config = ProxyConfig {
            listeners: vec![listener],
            metrics_listen: None,
            drain_timeout: Duration::from_secs(5),
        };
        config.validate().expect("test config is valid");

        let server = Server::bind_with(&config, Some(&resolver)).expect("test proxy binds");
        let addr = server.local_addrs()[0];
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Self {
            addr,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        within("the proxy drain", self.task).await.unwrap();
    }
}

/// Starts a server on `addr` that writes its own IP to each client, then closes.
async fn spawn_upstream(addr: SocketAddr) -> JoinHandle<()> {
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|error| panic!("bind upstream {addr}: {error}"));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(addr.ip().to_string().as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    })
}

/// Returns a port that is free on every loopback address in `ips` right now.
fn port_free_on(ips: &[&str]) -> u16 {
    for _ in 0..50 {
        let port = closed_port().port();
        let free = ips
            .iter()
            .all(|ip| std::net::TcpListener::bind((ip.parse::<IpAddr>().unwrap(), port)).is_ok());
        if free {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Connects through the proxy and returns the IP of the upstream that served the client,
/// or `None` when the proxy closed the connection without an upstream.
async fn served_by(proxy: SocketAddr) -> Option<String> {
    let mut stream = within("the proxy connect", TcpStream::connect(proxy))
        .await
        .expect("the proxy accepts");
    let mut reply = String::new();
    let read = within("the upstream reply", stream.read_to_string(&mut reply)).await;
    match read {
        Ok(_) if !reply.is_empty() => Some(reply),
        _ => None,
    }
}

/// Sends `count` clients one after another and counts the upstreams that served them.
async fn spread(proxy: SocketAddr, count: usize) -> HashMap<String, usize> {
    let mut served = HashMap::new();
    for _ in 0..count {
        let upstream = served_by(proxy)
            .await
            .unwrap_or_else(|| "unserved".to_owned());
        *served.entry(upstream).or_insert(0) += 1;
    }
    served
}

/// Checks that listener `name` completed `clients` connections and counted exactly one
/// refused upstream connect.
async fn assert_one_refusal(name: &str, clients: f64) {
    let completed = wait_for_metric(
        styx_proxy::metrics::CONNECTIONS_TOTAL,
        &[("listener", name), ("result", "completed")],
        clients,
    )
    .await;
    let samples = parse_samples(&scrape().await);
    let refused = value(
        &samples,
        styx_proxy::metrics::UPSTREAM_CONNECT_ERRORS_TOTAL,
        &[("listener", name), ("reason", "refused")],
    );
    assert_eq!(refused, Some(1.0), "refused connects of {name}");
    assert_eq!(completed, Some(clients), "completed connections of {name}");
}

fn consul_zone(hosts: &[&str]) -> Zone {
    hosts
        .iter()
        .fold(Zone::new(), |zone, ip| zone.host("web.service.consul", ip))
        .local("consul")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_upstream_spreads_round_robin() {
    let port = port_free_on(&["127.0.0.11", "127.0.0.12"]);
    let _a = spawn_upstream(addr("127.0.0.11", port)).await;
    let _b = spawn_upstream(addr("127.0.0.12", port)).await;
    let dns = Dnsmasq::start(&consul_zone(&["127.0.0.11", "127.0.0.12"]));

    let upstream = format!("web.service.consul:{port}");
    let proxy = NamedProxy::start("dns-round-robin", &[upstream], dns.addr, 0);

    let served = spread(proxy.addr, 10).await;
    assert_eq!(served.get("127.0.0.11"), Some(&5), "{served:?}");
    assert_eq!(served.get("127.0.0.12"), Some(&5), "{served:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_upstream_follows_zone_change() {
    let port = port_free_on(&["127.0.0.21", "127.0.0.22", "127.0.0.23"]);
    let _a = spawn_upstream(addr("127.0.0.21", port)).await;
    let _b = spawn_upstream(addr("127.0.0.22", port)).await;
    let _c = spawn_upstream(addr("127.0.0.23", port)).await;
    let dns = Dnsmasq::start(&consul_zone(&["127.0.0.21", "127.0.0.22"]));

    // A pool keeps sockets to the old addresses open, so this also checks that pooled
    // sockets to a removed address are never handed to a client.
    let upstream = format!("web.service.consul:{port}");
    let proxy = NamedProxy::start("dns-zone-change", &[upstream], dns.addr, 2);

    let before = spread(proxy.addr, 6).await;
    assert!(before.contains_key("127.0.0.21"), "{before:?}");
    assert!(before.contains_key("127.0.0.22"), "{before:?}");
    assert!(!before.contains_key("127.0.0.23"), "{before:?}");

    // 127.0.0.21 leaves the zone and 127.0.0.23 joins it.
    let dns = dns.restart(&consul_zone(&["127.0.0.22", "127.0.0.23"]));
    let deadline = tokio::time::Instant::now() + ZONE_CHANGE_WAIT;
    loop {
        if served_by(proxy.addr).await.as_deref() == Some("127.0.0.23") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new address never received a connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let after = spread(proxy.addr, 10).await;
    assert_eq!(after.get("127.0.0.21"), None, "{after:?}");
    assert!(after.contains_key("127.0.0.22"), "{after:?}");
    assert!(after.contains_key("127.0.0.23"), "{after:?}");
    assert_eq!(after.get("unserved"), None, "{after:?}");

    proxy.stop().await;
    drop(dns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_address_set_aside() {
    // 127.0.0.32 is in the zone but nothing listens there, so its connects are refused.
    let port = port_free_on(&["127.0.0.31", "127.0.0.32"]);
    let _a = spawn_upstream(addr("127.0.0.31", port)).await;
    let dns = Dnsmasq::start(&consul_zone(&["127.0.0.31", "127.0.0.32"]));

    let name = "dns-set-aside";
    let upstream = format!("web.service.consul:{port}");
    let proxy = NamedProxy::start(name, &[upstream], dns.addr, 0);

    let served = spread(proxy.addr, 10).await;
    assert_eq!(served.get("127.0.0.31"), Some(&10), "{served:?}");

    // Every client completed, after one refusal: the address was skipped from then on.
    assert_one_refusal(name, 10.0).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_upstream_uses_answer_ports() {
    let first = port_free_on(&["127.0.0.41"]);
    let second = port_free_on(&["127.0.0.42"]);
    let _a = spawn_upstream(addr("127.0.0.41", first)).await;
    let _b = spawn_upstream(addr("127.0.0.42", second)).await;
    let zone = Zone::new()
        .host("node41.node.consul", "127.0.0.41")
        .host("node42.node.consul", "127.0.0.42")
        .srv("api.service.consul", "node41.node.consul", first)
        .srv("api.service.consul", "node42.node.consul", second)
        .local("consul");
    let dns = Dnsmasq::start(&zone);

    let upstreams = ["srv:api.service.consul".to_owned()];
    let proxy = NamedProxy::start("dns-srv", &upstreams, dns.addr, 0);

    let served = spread(proxy.addr, 6).await;
    assert_eq!(served.get("127.0.0.41"), Some(&3), "{served:?}");
    assert_eq!(served.get("127.0.0.42"), Some(&3), "{served:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_upstream_falls_back_by_priority() {
    // Priority 0 points at a port where nothing listens, so its connects are refused, and
    // priority 1 at a live server on the same address. The live server binds first, so the
    // refused port differs from its port.
    let live_port = port_free_on(&["127.0.0.71"]);
    let _live = spawn_upstream(addr("127.0.0.71", live_port)).await;
    let refused_port = port_free_on(&["127.0.0.71"]);
    let zone = Zone::new()
        .host("a.node.consul", "127.0.0.71")
        .srv_at_priority("fo.service.consul", "a.node.consul", refused_port, 0)
        .srv_at_priority("fo.service.consul", "a.node.consul", live_port, 1)
        .local("consul");
    let dns = Dnsmasq::start(&zone);

    let name = "dns-srv-priority";
    let upstreams = ["srv:fo.service.consul".to_owned()];
    let proxy = NamedProxy::start(name, &upstreams, dns.addr, 0);

    let served = spread(proxy.addr, 10).await;
    assert_eq!(served.get("127.0.0.71"), Some(&10), "{served:?}");

    // As with an A record upstream, the first client's connect to priority 0 is refused
    // and retried on priority 1, and priority 0 is skipped from then on.
    assert_one_refusal(name, 10.0).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_mix_with_literal_addresses() {
    let port = port_free_on(&["127.0.0.51", "127.0.0.52"]);
    let _a = spawn_upstream(addr("127.0.0.51", port)).await;
    let _b = spawn_upstream(addr("127.0.0.52", port)).await;
    let dns = Dnsmasq::start(&consul_zone(&["127.0.0.52"]));

    let upstreams = [
        addr("127.0.0.51", port).to_string(),
        format!("web.service.consul:{port}"),
    ];
    let proxy = NamedProxy::start("dns-mixed", &upstreams, dns.addr, 0);

    // Until the name's first answer arrives, the literal address takes its turns too. The
    // rotation is even from the first client the name serves.
    let deadline = tokio::time::Instant::now() + ZONE_CHANGE_WAIT;
    while served_by(proxy.addr).await.as_deref() != Some("127.0.0.52") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the name never served a client"
        );
    }

    let served = spread(proxy.addr, 4).await;
    assert_eq!(served.get("127.0.0.51"), Some(&2), "{served:?}");
    assert_eq!(served.get("127.0.0.52"), Some(&2), "{served:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_duration_has_buckets() {
    let port = port_free_on(&["127.0.0.61"]);
    let _a = spawn_upstream(addr("127.0.0.61", port)).await;
    let dns = Dnsmasq::start(&consul_zone(&["127.0.0.61"]));
    let upstream = format!("web.service.consul:{port}");
    let proxy = NamedProxy::start("dns-metrics", &[upstream], dns.addr, 0);
    assert_eq!(served_by(proxy.addr).await.as_deref(), Some("127.0.0.61"));

    let page = scrape().await;
    let bucket = format!(
        "{}_bucket{{route=\"consul\",type=\"A\",le=\"0.00001\"}}",
        styx_dns::metrics::QUERY_DURATION_SECONDS
    );
    assert!(
        page.lines().any(|line| line.starts_with(&bucket)),
        "no {bucket} line in:\n{page}"
    );
    assert!(
        page.contains("# HELP styx_dns_queries_total"),
        "no description of styx_dns_queries_total in:\n{page}"
    );
    proxy.stop().await;
}
