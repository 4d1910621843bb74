//! Debian's real Prometheus server and its `promtool` read the metrics page of a
//! `styx-proxy run` child process. The `prometheus` module explains what each check
//! catches that the scraper alone lets through.

mod common;
mod prometheus;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{closed_port, pattern, round_trip, spawn_echo, within};
use prometheus::{ChildGuard, Prometheus, single_value, value_equal_to};
use serde_json::Value;
use styx_proxy::metrics::{BYTES_TOTAL, OPEN_FDS, UPSTREAM_CONNECT_DURATION_SECONDS};
use tokio::net::TcpStream;

/// Name of the listener that `styx-proxy run --listen` creates.
const LISTENER: &str = "default";

/// Scrape job name in the generated Prometheus configuration.
const JOB: &str = "styx-proxy";

/// A `styx-proxy run` child that forwards `listen` to an echo upstream.
struct ProxyChild {
    listen: SocketAddr,
    metrics: SocketAddr,
    _guard: ChildGuard,
}

async fn start_proxy() -> ProxyChild {
    let upstream = spawn_echo().await;
    let (listen, metrics) = (closed_port(), closed_port());
    let guard = ChildGuard::spawn(
        "styx-proxy",
        Command::new(env!("CARGO_BIN_EXE_styx-proxy"))
            .args(["run", "--listen", &listen.to_string()])
            .args(["--upstream", &upstream.to_string()])
            .args(["--metrics-listen", &metrics.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    ProxyChild {
        listen,
        metrics,
        _guard: guard,
    }
}

/// Connects to `addr`, retrying while nothing listens yet. Probing with throwaway
/// connections would count extra proxied connections, so the first connection that
/// succeeds is the one returned.
async fn connect_when_listening(addr: SocketAddr) -> TcpStream {
    within("the proxy to listen", async {
        loop {
            match TcpStream::connect(addr).await {
                Ok(stream) => return stream,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
}

/// Prometheus scrapes the proxy's endpoint, reports the target up, and stores the
/// bytes counter, a histogram with its +Inf bucket and the open-fds gauge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_proxy_metrics() {
    prometheus::require_binary("prometheus");
    let proxy = start_proxy().await;

    // An odd size, so a counter that drops a partial chunk shows up as a mismatch.
    let sent = 3 * (1 << 20) + 17;
    let mut client = connect_when_listening(proxy.listen).await;
    round_trip(&mut client, &pattern(41, sent)).await;
    drop(client);

    let mut server = Prometheus::start(&[(JOB, proxy.metrics)]);
    server.wait_healthy(JOB, proxy.metrics).await;

    // The engines add byte counts in chunks, and the last chunk when the connection
    // closes, so early scrapes may still show less than was sent.
    for direction in ["client_to_upstream", "upstream_to_client"] {
        let promql = format!("{BYTES_TOTAL}{{listener=\"{LISTENER}\",direction=\"{direction}\"}}");
        let stored = server
            .poll("the bytes counter", |addr| {
                value_equal_to(addr, &promql, sent as f64)
            })
            .await;
        assert_eq!(stored, sent as f64, "{direction}");
    }

    // The test's one client made the only upstream connect, because the proxy was
    // reached without probe connections.
    let infinity_bucket = format!(
        "{UPSTREAM_CONNECT_DURATION_SECONDS}_bucket{{listener=\"{LISTENER}\",le=\"+Inf\"}}"
    );
    let connects = server
        .poll("the +Inf bucket", |addr| {
            single_value(addr, &infinity_bucket)
        })
        .await;
    assert_eq!(connects, 1.0, "{infinity_bucket}");

    let open_fds = server
        .poll("the open-fds gauge", |addr| single_value(addr, OPEN_FDS))
        .await;
    assert!(open_fds > 0.0, "{OPEN_FDS} is {open_fds}");

    server.assert_stored_whole(JOB).await;

    let (prometheus_addr, metrics_addr) = (server.addr, proxy.metrics);
    drop(server);
    drop(proxy);
    prometheus::assert_nothing_listens(prometheus_addr, "Prometheus").await;
    prometheus::assert_nothing_listens(metrics_addr, "the proxy's metrics endpoint").await;
}

/// The page carries the text format's content type, and `promtool check metrics`
/// finds no parse error and no lint problem in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_proxy_metrics_page() {
    prometheus::require_binary("promtool");
    let proxy = start_proxy().await;
    let mut client = connect_when_listening(proxy.listen).await;
    round_trip(&mut client, &pattern(42, 4096)).await;
    drop(client);

    let page = prometheus::check_page(proxy.metrics).await;
    assert!(page.contains(BYTES_TOTAL), "page:\n{page}");
}

/// The check above would pass vacuously if promtool accepted anything, so it must
/// reject a page that the scraper would still take: a metric with two HELP lines.
#[test]
fn promtool_rejects_duplicate_help() {
    let page = "# HELP styx_test_total First.\n# HELP styx_test_total Second.\n\
                # TYPE styx_test_total counter\nstyx_test_total 1\n";
    let (code, output) = prometheus::promtool_check_metrics(page);
    assert_eq!(code, Some(1), "promtool output:\n{output}");
    assert!(output.contains("second HELP"), "promtool output:\n{output}");
}

#[test]
fn query_value_encoding() {
    assert_eq!(
        prometheus::encode_query_value("a_b{le=\"+Inf\"}"),
        "a_b%7Ble%3D%22%2BInf%22%7D"
    );
}

#[test]
fn histogram_missing_infinity_bucket_found() {
    let buckets: Vec<Value> = serde_json::from_str(
        r#"[
            {"metric": {"__name__": "a_bucket", "listener": "x", "le": "1"}},
            {"metric": {"__name__": "a_bucket", "listener": "x", "le": "+Inf"}},
            {"metric": {"__name__": "a_bucket", "listener": "y", "le": "1"}},
            {"metric": {"__name__": "b_bucket", "le": "0.5"}}
        ]"#,
    )
    .unwrap();
    assert_eq!(
        prometheus::histograms_without_infinity_bucket(&buckets),
        [
            r#"{"__name__":"a_bucket","listener":"y"}"#,
            r#"{"__name__":"b_bucket"}"#,
        ]
    );
}
