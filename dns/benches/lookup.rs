//! Lookup cost, cached and uncached, against dnsmasq on a loopback port.
//!
//! Run with `cargo bench -p styx-dns --bench lookup`. Prints per-lookup latency percentiles
//! and throughput for each scenario. The uncached figures include the loopback round trip
//! to dnsmasq, so they measure the resolver and dnsmasq together.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use styx_dns::{IpFamily, ResolverConfig, RouteConfig, Servers, SplitResolver};
use support::{Dnsmasq, Zone};

const CACHED_LOOKUPS: usize = 200_000;
const UNCACHED_LOOKUPS: usize = 5_000;
const CONCURRENT_TASKS: usize = 8;

fn resolver(server: std::net::SocketAddr, cache_capacity: usize) -> SplitResolver {
    SplitResolver::new(ResolverConfig {
        routes: vec![RouteConfig::new(
            "consul".parse().unwrap(),
            Servers::Static(vec![server]),
        )],
        // A floor longer than the run keeps the TTL-0 answers cached in the cached scenarios.
        ttl_floor: Duration::from_secs(3600),
        cache_capacity,
        ..ResolverConfig::default()
    })
    .expect("build the resolver")
}

/// Prints percentiles of `samples` and the throughput over `total`.
fn report(scenario: &str, mut samples: Vec<Duration>, total: Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    let per_second = samples.len() as f64 / total.as_secs_f64();
    println!(
        "{scenario:<36} n={:<7} p50={:>9.2?} p90={:>9.2?} p99={:>9.2?} max={:>9.2?} {:>10.0} lookups/s",
        samples.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        samples[samples.len() - 1],
        per_second
    );
}

async fn sequential(
    resolver: &SplitResolver,
    name: &str,
    family: IpFamily,
    count: usize,
) -> (Vec<Duration>, Duration) {
    let mut samples = Vec::with_capacity(count);
    let started = Instant::now();
    for _ in 0..count {
        let lookup_started = Instant::now();
        let found = resolver
            .lookup_ip(name, family)
            .await
            .expect("lookup succeeds");
        samples.push(lookup_started.elapsed());
        std::hint::black_box(found);
    }
    (samples, started.elapsed())
}

async fn concurrent(
    resolver: &SplitResolver,
    names: &[String],
    per_task: usize,
) -> (Vec<Duration>, Duration) {
    let started = Instant::now();
    let tasks: Vec<_> = names
        .iter()
        .map(|name| {
            let (resolver, name) = (resolver.clone(), name.clone());
            tokio::spawn(
                async move { sequential(&resolver, &name, IpFamily::V4, per_task).await.0 },
            )
        })
        .collect();

    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.expect("benchmark task"));
    }
    (samples, started.elapsed())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut zone = Zone::consul();
    for i in 0..CONCURRENT_TASKS {
        zone = zone.host(&format!("svc{i}.service.consul"), &format!("10.0.5.{i}"));
    }
    let server = Dnsmasq::start(&zone);
    let names: Vec<String> = (0..CONCURRENT_TASKS)
        .map(|i| format!("svc{i}.service.consul"))
        .collect();

    println!(
        "styx-dns lookup benchmark against dnsmasq on {}",
        server.addr
    );

    let cached = resolver(server.addr, 4096);
    sequential(&cached, "web.service.consul", IpFamily::V4, 1000).await;
    let (samples, total) =
        sequential(&cached, "web.service.consul", IpFamily::V4, CACHED_LOOKUPS).await;
    report("cached A, one task", samples, total);

    for name in &names {
        cached
            .lookup_ip(name, IpFamily::V4)
            .await
            .expect("warm-up lookup");
    }
    let (samples, total) = concurrent(&cached, &names, CACHED_LOOKUPS / CONCURRENT_TASKS).await;
    report("cached A, 8 tasks", samples, total);

    let uncached = resolver(server.addr, 0);
    sequential(&uncached, "web.service.consul", IpFamily::V4, 100).await;
    let (samples, total) = sequential(
        &uncached,
        "web.service.consul",
        IpFamily::V4,
        UNCACHED_LOOKUPS,
    )
    .await;
    report("uncached A, one task", samples, total);

    let (samples, total) = concurrent(&uncached, &names, UNCACHED_LOOKUPS / CONCURRENT_TASKS).await;
    report("uncached A, 8 tasks (distinct names)", samples, total);
}
