//! The address watcher against dnsmasq: it follows a name whose address set changes when
//! the zone changes (dnsmasq is restarted with a new zone on the same port).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use styx_dns::watch::AddressSet;
use styx_dns::{AddressWatch, ResolverConfig, RouteConfig, Servers, SplitResolver, UpstreamName};
use support::{Dnsmasq, Zone, trace_init};

/// Generous bound that only stops a hung test; the watcher re-resolves every 200 ms here.
const WAIT: Duration = Duration::from_secs(10);

fn resolver(server: SocketAddr) -> SplitResolver {
    SplitResolver::new(ResolverConfig {
        routes: vec![RouteConfig::new(
            "consul".parse().unwrap(),
            Servers::Static(vec![server]),
        )],
        ttl_floor: Duration::from_millis(200),
        ..ResolverConfig::default()
    })
    .unwrap()
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = list.iter().map(|a| a.parse().unwrap()).collect();
    addrs.sort();
    addrs
}

async fn wait_for(
    watch: &AddressWatch,
    what: &str,
    condition: impl Fn(&AddressSet) -> bool,
) -> AddressSet {
    let mut receiver = watch.subscribe();
    let waited = tokio::time::timeout(WAIT, receiver.wait_for(|set| condition(set))).await;
    match waited {
        Ok(Ok(set)) => (**set).clone(),
        _ => panic!(
            "address set never became {what}; last: {:?}",
            watch.current()
        ),
    }
}

#[tokio::test]
async fn host_watch_drops_removed_address() {
    trace_init();
    let server = Dnsmasq::start(&Zone::consul());
    let name: UpstreamName = "web.service.consul:80".parse().unwrap();
    let watch = AddressWatch::spawn(resolver(server.addr), name);

    let first = tokio::time::timeout(WAIT, watch.ready()).await.unwrap();
    assert_eq!(first.addrs, addrs(&["10.0.0.1:80", "10.0.0.2:80"]));
    assert_eq!(first.error, None);

    let picks: Vec<_> = (0..4).map(|_| watch.next_addr().unwrap()).collect();
    assert_eq!(picks[0], picks[2], "round robin over two addresses");
    assert_ne!(picks[0], picks[1], "round robin over two addresses");

    let zone = Zone::new()
        .host("web.service.consul", "10.0.0.1")
        .local("consul");
    let _server = server.restart(&zone);
    let changed = wait_for(&watch, "one address", |set| set.addrs.len() == 1).await;
    assert_eq!(changed.addrs, addrs(&["10.0.0.1:80"]));

    for _ in 0..4 {
        assert_eq!(
            watch.next_addr(),
            Some("10.0.0.1:80".parse().unwrap()),
            "the removed address is never picked"
        );
    }
}

#[tokio::test]
async fn srv_watch_follows_ports() {
    trace_init();
    let server = Dnsmasq::start(&Zone::consul());
    let watch = AddressWatch::spawn(
        resolver(server.addr),
        "srv:web.service.consul".parse().unwrap(),
    );

    let first = tokio::time::timeout(WAIT, watch.ready()).await.unwrap();
    assert_eq!(
        first.addrs,
        addrs(&["10.0.1.1:8080", "[fd00::1]:8080", "10.0.1.2:8081"])
    );

    let zone = Zone::new()
        .host("node2.node.consul", "10.0.1.2")
        .srv("web.service.consul", "node2.node.consul", 8081)
        .local("consul");
    let _server = server.restart(&zone);
    let changed = wait_for(&watch, "node2 only", |set| set.addrs.len() == 1).await;
    assert_eq!(changed.addrs, addrs(&["10.0.1.2:8081"]));
}

#[tokio::test]
async fn watch_keeps_addresses_while_unreachable() {
    trace_init();
    let server = Dnsmasq::start(&Zone::consul());
    let watch = AddressWatch::spawn(
        resolver(server.addr),
        "web.service.consul:80".parse().unwrap(),
    );
    tokio::time::timeout(WAIT, watch.ready()).await.unwrap();

    drop(server);
    let set = wait_for(&watch, "failed", |set| set.error.is_some()).await;
    assert_eq!(
        set.addrs,
        addrs(&["10.0.0.1:80", "10.0.0.2:80"]),
        "addresses outlive an outage"
    );
    let message = set.error.unwrap().to_string();
    assert!(
        message.starts_with("failed to resolve web.service.consul"),
        "{message}"
    );
}

#[tokio::test]
async fn watch_empties_on_nxdomain() {
    trace_init();
    let server = Dnsmasq::start(&Zone::consul());
    let watch = AddressWatch::spawn(
        resolver(server.addr),
        "web.service.consul:80".parse().unwrap(),
    );
    tokio::time::timeout(WAIT, watch.ready()).await.unwrap();

    let _server = server.restart(&Zone::new().local("consul"));
    let set = wait_for(&watch, "empty", |set| set.addrs.is_empty()).await;
    assert_eq!(
        set.error.unwrap().to_string(),
        "web.service.consul does not exist (NXDOMAIN)"
    );
    assert_eq!(watch.next_addr(), None);
}

#[tokio::test]
async fn set_aside_address_skipped() {
    trace_init();
    let server = Dnsmasq::start(&Zone::consul());
    let watch = AddressWatch::spawn(
        resolver(server.addr),
        "web.service.consul:80".parse().unwrap(),
    );
    tokio::time::timeout(WAIT, watch.ready()).await.unwrap();

    let refused: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let period = Duration::from_millis(300);
    watch.set_aside(refused, period);
    for _ in 0..4 {
        assert_eq!(watch.next_addr(), Some("10.0.0.2:80".parse().unwrap()));
    }

    // With every address set aside, they are still handed out rather than none.
    watch.set_aside("10.0.0.2:80".parse().unwrap(), period);
    assert!(watch.next_addr().is_some());

    tokio::time::sleep(period + Duration::from_millis(50)).await;
    let picks: Vec<_> = (0..4).map(|_| watch.next_addr().unwrap()).collect();
    assert!(
        picks.contains(&refused),
        "back in rotation after its period: {picks:?}"
    );
}

#[tokio::test]
async fn srv_watch_falls_back_by_priority() {
    trace_init();
    let zone = Zone::new()
        .host("a.node.consul", "10.0.2.1")
        .host("b.node.consul", "10.0.2.2")
        .host("c.node.consul", "10.0.2.3")
        .srv_at_priority("fo.service.consul", "a.node.consul", 8001, 0)
        .srv_at_priority("fo.service.consul", "b.node.consul", 8001, 0)
        .srv_at_priority("fo.service.consul", "c.node.consul", 8002, 1)
        .local("consul");
    let server = Dnsmasq::start(&zone);
    let watch = AddressWatch::spawn(
        resolver(server.addr),
        "srv:fo.service.consul".parse().unwrap(),
    );

    let set = tokio::time::timeout(WAIT, watch.ready()).await.unwrap();
    let first: Vec<SocketAddr> = addrs(&["10.0.2.1:8001", "10.0.2.2:8001"]);
    let second: SocketAddr = "10.0.2.3:8002".parse().unwrap();
    assert_eq!(set.addrs, [first.clone(), vec![second]].concat());
    assert_eq!(set.priority_sizes, vec![2, 1]);

    let picks: Vec<_> = (0..6).map(|_| watch.next_addr().unwrap()).collect();
    for addr in &first {
        let count = picks.iter().filter(|pick| *pick == addr).count();
        assert_eq!(count, 3, "priority 0 round robin: {picks:?}");
    }

    // The period only has to outlast the picks below, so it is long for a busy machine.
    let period = Duration::from_secs(2);
    watch.set_aside(first[0], period);
    for _ in 0..4 {
        assert_eq!(watch.next_addr(), Some(first[1]), "rest of priority 0");
    }

    watch.set_aside(first[1], period);
    for _ in 0..4 {
        assert_eq!(
            watch.next_addr(),
            Some(second),
            "priority 1 after priority 0"
        );
    }

    // With every address of every priority set aside, all are still handed out in turn.
    watch.set_aside(second, period);
    let picks: Vec<_> = (0..3).map(|_| watch.next_addr().unwrap()).collect();
    for addr in [first[0], first[1], second] {
        assert!(picks.contains(&addr), "{addr} not handed out: {picks:?}");
    }

    tokio::time::sleep(period + Duration::from_millis(50)).await;
    let picks: Vec<_> = (0..4).map(|_| watch.next_addr().unwrap()).collect();
    assert!(
        picks.iter().all(|pick| first.contains(pick)),
        "priority 0 back after its period: {picks:?}"
    );
    assert!(picks.contains(&first[0]), "{picks:?}");
    assert!(picks.contains(&first[1]), "{picks:?}");
}

#[tokio::test]
async fn ip_literal_watch_is_fixed() {
    let silent = support::SilentServer::start();
    let name = UpstreamName::Host {
        name: "127.0.0.1".to_owned(),
        port: 8080,
    };
    let watch = AddressWatch::spawn(resolver(silent.addr), name);

    let set = tokio::time::timeout(WAIT, watch.ready()).await.unwrap();
    assert_eq!(set.addrs, addrs(&["127.0.0.1:8080"]));
    assert_eq!(set.error, None);
    assert_eq!(watch.next_addr(), Some("127.0.0.1:8080".parse().unwrap()));

    // Several TTL floors (200 ms here) pass with no lookup and no change to the set.
    let mut receiver = watch.subscribe();
    receiver.mark_unchanged();
    let changed = tokio::time::timeout(Duration::from_secs(1), receiver.changed()).await;
    assert!(
        changed.is_err(),
        "the fixed set changed: {:?}",
        watch.current()
    );
    assert_eq!(silent.received(), 0, "an IP literal sends no query");
}
