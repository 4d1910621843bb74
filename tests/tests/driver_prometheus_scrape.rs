//! Debian's real Prometheus server and its `promtool` read the driver's metrics page
//! (the plugin option `metrics_address`) while the driver runs an echo task on the
//! `container-sim` simulator, as a Nomad client drives it.
//!
//! The Prometheus harness is the proxy tests' module, included by path because the
//! `styx-proxy` package does not export its test helpers. Its module doc explains what
//! each check catches that the scraper alone lets through. Everything binds to
//! 127.0.0.1.

#[path = "../../proxy/tests/prometheus/mod.rs"]
mod prometheus;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use prometheus::{Prometheus, single_value, value_equal_to};
use styx_driver::metrics::{CONTAINER_CLI_DURATION_SECONDS, TASKS_RUNNING};
use styx_proxy::metrics::BYTES_TOTAL;
use styx_tests::cty::Value;
use styx_tests::published::{echo, published_addr, start_echo_task, wait_for_echo};
use styx_tests::rpc::destroy_task;
use styx_tests::sim::{Simulator, launch_unconfigured, plugin_options, set_plugin_config};

const PLUGIN: &str = env!("CARGO_BIN_EXE_styx-driver-under-test");
const SIMULATOR: &str = env!("CARGO_BIN_EXE_container-sim");

/// Time limit that stops a hung test. It is generous because several builds may share
/// the machine.
const HANG_TIMEOUT: Duration = Duration::from_secs(60);

/// Scrape job name in the generated Prometheus configuration.
const JOB: &str = "styx-driver";

/// Name the driver gives the proxy listener of the task's `echo` port: namespace, job,
/// group, task and port label of the echo task that `start_echo_task` starts.
const LISTENER: &str = "default/job/group/echo/echo";

/// Bytes pushed through the published port: an odd size of several socket buffers.
const PAYLOAD_BYTES: usize = 300_017;

/// Returns the driver's current value of the bytes counter for `direction`.
async fn bytes_now(metrics: SocketAddr, direction: &str) -> f64 {
    let page = styx_tests::prometheus::scrape(metrics)
        .await
        .expect("the driver's page is served");
    let samples = styx_tests::prometheus::parse(&page).expect("the driver's page parses");
    let labels = [("listener", LISTENER), ("direction", direction)];
    styx_tests::prometheus::value(&samples, BYTES_TOTAL, &labels)
        .expect("the bytes counter of the task's listener exists")
}

/// Prometheus scrapes the driver's endpoint, reports the target up, and stores the
/// running-tasks gauge, the bytes forwarded to the task and the CLI histogram with
/// its +Inf bucket. promtool accepts the same page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_driver_metrics() {
    prometheus::require_binary("prometheus");
    let dir = tempfile::tempdir().expect("temporary directory is created");
    let sim = Simulator::new(Path::new(SIMULATOR), &dir.path().join("sim"));
    let plugin = launch_unconfigured(Path::new(PLUGIN), dir.path(), &sim, &[]).await;
    let metrics = prometheus::free_loopback_addr();
    let mut options = plugin_options(&sim, false);
    options.push(("metrics_address", Value::string(&metrics.to_string())));
    set_plugin_config(&plugin, &Value::object(options))
        .await
        .expect("config with metrics_address accepted");

    let (_, prepared, response) = start_echo_task(&plugin, dir.path(), "echo", HANG_TIMEOUT).await;
    let published = published_addr(&response, "echo");
    tokio::task::spawn_blocking(move || wait_for_echo(published, HANG_TIMEOUT))
        .await
        .expect("probe thread ends");

    // Probes may have been accepted before the container listened, so the expected
    // counts start from the values once the echo returns.
    let sent_before = bytes_now(metrics, "client_to_upstream").await;
    let echoed_before = bytes_now(metrics, "upstream_to_client").await;
    let payload: Vec<u8> = (0..PAYLOAD_BYTES)
        .map(|index| (index % 251) as u8)
        .collect();
    let reply = tokio::task::spawn_blocking({
        let payload = payload.clone();
        move || echo(published, &payload)
    })
    .await
    .expect("echo thread ends")
    .expect("echo through the published port");
    assert!(reply == payload, "echoed bytes differ from the sent bytes");

    let mut server = Prometheus::start(&[(JOB, metrics)]);
    server.wait_healthy(JOB, metrics).await;

    let expected = [
        ("client_to_upstream", sent_before + PAYLOAD_BYTES as f64),
        ("upstream_to_client", echoed_before + PAYLOAD_BYTES as f64),
    ];
    for (direction, bytes) in expected {
        let promql = format!("{BYTES_TOTAL}{{listener=\"{LISTENER}\",direction=\"{direction}\"}}");
        let stored = server
            .poll("the bytes counter", |addr| {
                value_equal_to(addr, &promql, bytes)
            })
            .await;
        assert_eq!(stored, bytes, "{direction}");
    }

    let running = server
        .poll("the running-tasks gauge", |addr| {
            value_equal_to(addr, TASKS_RUNNING, 1.0)
        })
        .await;
    assert_eq!(running, 1.0, "{TASKS_RUNNING}");

    let inspect_calls =
        format!("{CONTAINER_CLI_DURATION_SECONDS}_bucket{{command=\"inspect\",le=\"+Inf\"}}");
    let calls = server
        .poll("the +Inf bucket", |addr| single_value(addr, &inspect_calls))
        .await;
    assert!(calls >= 1.0, "{inspect_calls} is {calls}");

    server.assert_stored_whole(JOB).await;
    let page = prometheus::check_page(metrics).await;
    assert!(page.contains(TASKS_RUNNING), "page:\n{page}");

    destroy_task(&plugin, &prepared.config.id).await;
    let server_addr = server.addr;
    drop(server);
    drop(plugin);
    prometheus::assert_nothing_listens(server_addr, "Prometheus").await;
}
