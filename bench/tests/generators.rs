//! The generators and the runner end to end on loopback, with tiny durations.
//!
//! The paths are the direct path and a forwarding stub in this test process, which plays
//! a peer proxy (its PID is this process). These tests check behaviour only: that every
//! generator moves traffic, counts it and reports it. They assert no speed.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use styx_bench::backend::Backend;
use styx_bench::bulk::{BulkLoad, run_bulk};
use styx_bench::connect_rate::{ConnectLoad, run_connect_rate};
use styx_bench::idle::run_idle;
use styx_bench::process::CpuProbe;
use styx_bench::report::Scenario;
use styx_bench::request_response::{RequestLoad, run_request_response};
use styx_bench::runner::{Peer, Plan, Profile, run_plan};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

const TINY: Duration = Duration::from_millis(200);
const TINY_WARMUP: Duration = Duration::from_millis(20);

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn start_backend(runtime: &Runtime) -> Backend {
    let _context = runtime.enter();
    Backend::start("127.0.0.1:0".parse().unwrap()).expect("backend binds an ephemeral port")
}

/// Starts a forwarding stub on an ephemeral loopback port: every accepted connection is
/// copied both ways to `upstream` by tokio's `copy_bidirectional`.
fn start_stub_proxy(runtime: &Runtime, upstream: SocketAddr) -> SocketAddr {
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("stub binds an ephemeral port");
    let listen = listener.local_addr().unwrap();
    runtime.spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    listen
}

#[test]
fn bulk_counts_bytes_at_backend() {
    let runtime = runtime();
    let backend = start_backend(&runtime);

    for streams in [1, 3] {
        let load = BulkLoad {
            streams,
            warmup: TINY_WARMUP,
            duration: TINY,
        };
        let mut probe = CpuProbe::new(Vec::new());
        let sample = run_bulk(backend.local_addr(), &load, backend.stats(), &mut probe)
            .expect("bulk on the direct path");
        assert!(sample.bytes > 0, "{streams} streams moved no bytes");
        assert!(
            sample.elapsed >= TINY,
            "window shorter than requested: {:?}",
            sample.elapsed
        );
        assert!(sample.gbit_per_second() > 0.0);
    }
}

#[test]
fn bulk_through_stub_measures_cpu() {
    let runtime = runtime();
    let backend = start_backend(&runtime);
    let stub = start_stub_proxy(&runtime, backend.local_addr());

    let load = BulkLoad {
        streams: 2,
        warmup: TINY_WARMUP,
        duration: TINY,
    };
    let mut probe = CpuProbe::new(vec![std::process::id()]);
    let sample = run_bulk(stub, &load, backend.stats(), &mut probe).expect("bulk through the stub");
    assert!(sample.bytes > 0);
    let cores = probe.cores().expect("a probe with a PID measures CPU");
    assert!(cores >= 0.0, "negative CPU: {cores}");
}

#[test]
fn connect_rate_completes_exchanges() {
    let runtime = runtime();
    let backend = start_backend(&runtime);
    let stub = start_stub_proxy(&runtime, backend.local_addr());

    for target in [backend.local_addr(), stub] {
        let load = ConnectLoad {
            clients: 8,
            warmup: TINY_WARMUP,
            duration: TINY,
        };
        let mut probe = CpuProbe::new(Vec::new());
        let sample = runtime
            .block_on(run_connect_rate(target, &load, &mut probe))
            .expect("connect-rate");
        assert!(
            sample.connections > 0,
            "no connection completed through {target}"
        );
        assert_eq!(sample.failures, 0, "connections failed through {target}");
        assert!(sample.per_second() > 0.0);
    }
}

#[test]
fn connect_rate_dead_target_fails() {
    let runtime = runtime();
    // Bound and dropped, so nothing listens there any more.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();

    let load = ConnectLoad {
        clients: 2,
        warmup: TINY_WARMUP,
        duration: TINY,
    };
    let mut probe = CpuProbe::new(Vec::new());
    let error = runtime
        .block_on(run_connect_rate(dead, &load, &mut probe))
        .expect_err("nothing listens on the dead address");
    assert!(error.to_string().contains("timed out"), "{error}");
}

#[test]
fn request_response_records_latency() {
    let runtime = runtime();
    let backend = start_backend(&runtime);
    let stub = start_stub_proxy(&runtime, backend.local_addr());

    for target in [backend.local_addr(), stub] {
        let load = RequestLoad {
            warmup: TINY_WARMUP,
            duration: TINY,
        };
        let mut probe = CpuProbe::new(Vec::new());
        let sample = run_request_response(target, &load, &mut probe).expect("request/response");
        assert!(sample.requests > 0, "no round trip through {target}");
        assert!(sample.p50_micros > 0.0);
        assert!(sample.p50_micros <= sample.p99_micros, "{sample:?}");
    }
}

#[test]
fn idle_holds_and_releases_connections() {
    let runtime = runtime();
    let backend = start_backend(&runtime);
    let stub = start_stub_proxy(&runtime, backend.local_addr());

    let sample = runtime
        .block_on(run_idle(stub, 50, &[std::process::id()], backend.stats()))
        .expect("idle through the stub");
    assert_eq!(sample.connections, 50);
    assert!(sample.rss_before_kib > 0);
    assert!(sample.rss_after_kib > 0);
    assert_eq!(
        backend.stats().idle_connections(),
        0,
        "idle connections left open"
    );
}

/// The whole runner with every scenario, on the direct path and the stub as a peer. No
/// engine is selected, so no styx-proxy child starts.
#[test]
fn runner_reports_every_scenario() {
    let runtime = runtime();
    let backend = start_backend(&runtime);
    let stub = start_stub_proxy(&runtime, backend.local_addr());

    let plan = Plan {
        scenarios: Scenario::ALL.into_iter().collect::<BTreeSet<_>>(),
        engines: Vec::new(),
        peers: vec![Peer {
            name: "stub".to_owned(),
            addr: stub,
            pids: vec![std::process::id()],
        }],
        profile: Profile {
            name: "tiny",
            window: TINY,
            warmup: TINY_WARMUP,
            rounds: 2,
        },
        idle_connections: 40,
        connect_clients: 4,
    };
    let report = run_plan(
        &plan,
        Path::new("/nonexistent/styx-proxy"),
        &backend,
        &runtime,
    )
    .expect("runner on direct and stub");

    let rows: Vec<(&str, &str)> = report
        .measurements
        .iter()
        .map(|measurement| (measurement.scenario.name(), measurement.path.as_str()))
        .collect();
    assert_eq!(
        rows,
        [
            ("bulk-1", "direct"),
            ("bulk-1", "stub"),
            ("bulk-8", "direct"),
            ("bulk-8", "stub"),
            ("connect-rate", "direct"),
            ("connect-rate", "stub"),
            ("rr-p50", "direct"),
            ("rr-p99", "direct"),
            ("rr-p50", "stub"),
            ("rr-p99", "stub"),
            ("idle-kib", "stub"),
        ]
    );

    for measurement in &report.measurements {
        let has_cpu = measurement.cpu_cores.is_some();
        let expect_cpu = measurement.path == "stub" && measurement.scenario != Scenario::IdleKib;
        assert_eq!(has_cpu, expect_cpu, "{measurement:?}");
    }

    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("valid JSON");
    assert_eq!(json["results"].as_array().unwrap().len(), 11);
    assert_eq!(json["results"][0]["ratio"], 1.0);
}

/// Builds a plan of one tiny round of `scenario` on the direct path and `peers`, with
/// no styx-proxy child.
fn one_round_plan(scenario: Scenario, peers: Vec<Peer>) -> Plan {
    Plan {
        scenarios: [scenario].into_iter().collect(),
        engines: Vec::new(),
        peers,
        profile: Profile {
            name: "tiny",
            window: TINY,
            warmup: TINY_WARMUP,
            rounds: 1,
        },
        idle_connections: 10,
        connect_clients: 2,
    }
}

#[test]
fn runner_selected_scenarios_only() {
    let runtime = runtime();
    let backend = start_backend(&runtime);

    let plan = one_round_plan(Scenario::RrP99, Vec::new());
    let report = run_plan(
        &plan,
        Path::new("/nonexistent/styx-proxy"),
        &backend,
        &runtime,
    )
    .expect("runner with one scenario");
    assert_eq!(report.measurements.len(), 1);
    assert_eq!(report.measurements[0].scenario, Scenario::RrP99);
}

/// A path that changes the data must fail the request/response run, not count as fast.
#[test]
fn request_response_rejects_altered_echo() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};

        let (mut stream, _) = listener.accept().expect("accept the generator");
        let mut buffer = [0u8; 4096];
        let mut header_seen = false;
        while let Ok(read) = stream.read(&mut buffer) {
            if read == 0 {
                break;
            }
            // Skip the mode header, then echo every byte plus one.
            let start = usize::from(!header_seen);
            header_seen = true;
            let altered: Vec<u8> = buffer[start..read]
                .iter()
                .map(|byte| byte.wrapping_add(1))
                .collect();
            if stream.write_all(&altered).is_err() {
                break;
            }
        }
    });

    let load = RequestLoad {
        warmup: TINY_WARMUP,
        duration: TINY,
    };
    let mut probe = CpuProbe::new(Vec::new());
    let error =
        run_request_response(addr, &load, &mut probe).expect_err("altered echo is rejected");
    assert!(error.to_string().contains("request/response"), "{error}");
    let source = std::error::Error::source(&error)
        .expect("an I/O source")
        .to_string();
    assert!(source.contains("differs from the request"), "{source}");

    server.join().expect("server thread");
}

/// A peer that accepts no connections fails the run with an error that names the peer
/// and the scenario, not only an address.
#[test]
fn dead_peer_named_in_error() {
    let runtime = runtime();
    let backend = start_backend(&runtime);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port");

    let peer = Peer {
        name: "gone".to_owned(),
        addr: dead,
        pids: Vec::new(),
    };
    let plan = one_round_plan(Scenario::RrP50, vec![peer]);
    let error = run_plan(
        &plan,
        Path::new("/nonexistent/styx-proxy"),
        &backend,
        &runtime,
    )
    .expect_err("a dead peer fails the run");

    let message = error.to_string();
    assert!(message.contains("\"gone\""), "{message}");
    assert!(message.contains("rr"), "{message}");
}
