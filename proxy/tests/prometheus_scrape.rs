//! Debian's real Prometheus server (and its `promtool`) read the metrics page of a
//! `styx-proxy run` child process.
//!
//! Prometheus 2.42 (Debian bookworm's `prometheus` package) scrapes the child every
//! second, and the test reads the target's health and the stored series back through
//! Prometheus's HTTP API. The scraper alone is a weak check: run by hand, it kept a
//! target up with no error for pages with a second HELP or TYPE line, a series listed
//! twice, an invalid escape, a histogram without a +Inf bucket or a JSON content type.
//! So the tests also run `promtool check metrics` on the page, check its Content-Type
//! header, compare the samples scraped with the series stored, and look for the +Inf
//! bucket of every histogram.
//!
//! Everything binds to 127.0.0.1. The binaries must be on PATH: `.ci/run` installs the
//! package without starting its service.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{closed_port, pattern, round_trip, spawn_echo, within};
use serde_json::Value;
use styx_proxy::metrics::{BYTES_TOTAL, OPEN_FDS, UPSTREAM_CONNECT_DURATION_SECONDS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Deadline for Prometheus to start and to store a scrape. Only a hung or broken run
/// reaches it: on an idle machine the whole test takes a few seconds.
const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(120);

/// Pause between two polls of Prometheus's HTTP API.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Name of the listener that `styx-proxy run --listen` creates.
const LISTENER: &str = "default";

/// Scrape job name in the generated Prometheus configuration.
const JOB: &str = "styx-proxy";

/// A child process that is killed and reaped when the guard is dropped, so a failed
/// assert leaves no process running and no port bound.
struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    fn spawn(name: &'static str, command: &mut Command) -> ChildGuard {
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("failed to start {name}: {error}"));
        ChildGuard { child }
    }

    fn has_exited(&mut self) -> bool {
        let status = self.child.try_wait().expect("child status is readable");
        status.is_some()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Errors are ignored because the child may have exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fails the test unless `binary` can be run, naming the package that provides it.
fn require_prometheus_binary(binary: &str) {
    let output = Command::new(binary).arg("--version").output();
    let Ok(output) = output else {
        panic!(
            "{binary} not found on PATH: install Debian's prometheus package \
             (`apt-get install --no-install-recommends prometheus`, as .ci/run does)"
        );
    };
    assert!(
        output.status.success(),
        "`{binary} --version` failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

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

/// One HTTP response, read to the end of the connection.
struct Response {
    status: u16,
    headers: String,
    body: String,
}

/// Sends a GET for `target` (path and query) to `addr`. HTTP/1.0 makes the server
/// close the connection after the body instead of using chunked encoding, so the body
/// is everything after the headers.
async fn http_get(addr: SocketAddr, target: &str) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;

    let mut response = String::new();
    stream.read_to_string(&mut response).await?;

    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| invalid("response has no end of headers"))?;
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("response has no status code"))?;
    Ok(Response {
        status,
        headers: headers.to_owned(),
        body: body.to_owned(),
    })
}

/// Percent-encodes `text` for a URL query value (RFC 3986 unreserved characters stay).
fn encode_query_value(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// A Prometheus server on a loopback port, with its data and log in a temporary
/// directory. Drop order kills the server before the directory is removed.
struct Prometheus {
    addr: SocketAddr,
    guard: ChildGuard,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `http://{target}/metrics` every second.
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("temporary directory is created");
        let config = dir.path().join("prometheus.yml");
        // No alerting or remote-write section: the server talks to nothing but the
        // scrape target.
        let text = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      \
             - targets: [\"{target}\"]\n"
        );
        std::fs::write(&config, text).expect("Prometheus config is written");

        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("Prometheus log is created");
        let addr = closed_port();
        let guard = ChildGuard::spawn(
            "prometheus",
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--web.listen-address={addr}"))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("log file handle is cloned"))
                .stderr(log_file),
        );
        Prometheus {
            addr,
            guard,
            log,
            _dir: dir,
        }
    }

    /// Returns the last lines of the server's log, for failure messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Calls `check` until it returns `Ok`, and fails with its last `Err` and the
    /// server's log at the deadline or as soon as the server exits.
    async fn poll<T, F, Fut>(&mut self, what: &str, mut check: F) -> T
    where
        F: FnMut(SocketAddr) -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let deadline = tokio::time::Instant::now() + PROMETHEUS_DEADLINE;
        let mut last = String::from("no poll finished");
        loop {
            if self.guard.has_exited() {
                panic!(
                    "prometheus exited while waiting for {what}; last result: {last}\n\
                     Prometheus log:\n{}",
                    self.log_tail()
                );
            }
            match check(self.addr).await {
                Ok(found) => return found,
                Err(message) => last = message,
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {PROMETHEUS_DEADLINE:?} waiting for {what}; \
                     last result: {last}\nPrometheus log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Fetches `path` from the API and returns the `data` field of a successful reply.
    async fn api(addr: SocketAddr, path: &str) -> Result<Value, String> {
        let response = http_get(addr, path)
            .await
            .map_err(|error| format!("GET {path} failed: {error}"))?;
        if response.status != 200 {
            return Err(format!(
                "GET {path}: HTTP {}: {}",
                response.status, response.body
            ));
        }
        let reply: Value = serde_json::from_str(&response.body)
            .map_err(|error| format!("GET {path}: invalid JSON ({error}): {}", response.body))?;
        if reply["status"] != "success" {
            return Err(format!("GET {path}: {reply}"));
        }
        Ok(reply["data"].clone())
    }

    /// Runs an instant query and returns its vector result.
    async fn query(addr: SocketAddr, promql: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", encode_query_value(promql));
        let data = Self::api(addr, &path).await?;
        match data["result"].as_array() {
            Some(result) if data["resultType"] == "vector" => Ok(result.clone()),
            _ => Err(format!("query {promql}: not a vector: {data}")),
        }
    }
}

/// Returns the target whose scrape URL is `scrape_url` once it is up with no error.
async fn healthy_target(addr: SocketAddr, scrape_url: &str) -> Result<Value, String> {
    let data = Prometheus::api(addr, "/api/v1/targets").await?;
    let targets = data["activeTargets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let Some(target) = targets
        .iter()
        .find(|target| target["scrapeUrl"] == scrape_url)
    else {
        return Err(format!("no active target {scrape_url}: {data}"));
    };
    if target["health"] != "up" || target["lastError"] != "" {
        return Err(format!("target not healthy: {target}"));
    }
    Ok(target.clone())
}

/// Returns the value of the single series that `promql` selects.
async fn single_value(addr: SocketAddr, promql: &str) -> Result<f64, String> {
    let result = Prometheus::query(addr, promql).await?;
    let [series] = result.as_slice() else {
        return Err(format!("query {promql}: expected 1 series, got {result:?}"));
    };
    // A sample is [unix time, "value"], with the value as a string.
    series["value"][1]
        .as_str()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| format!("query {promql}: sample has no numeric value: {series}"))
}

/// Returns the value of `promql` once it equals `expected`.
async fn value_equal_to(addr: SocketAddr, promql: &str, expected: f64) -> Result<f64, String> {
    let seen = single_value(addr, promql).await?;
    if seen == expected {
        Ok(seen)
    } else {
        Err(format!(
            "query {promql} returned {seen}, expected {expected}"
        ))
    }
}

/// Reads Prometheus's own counters of samples that it dropped while appending scrapes
/// to its database, by reason.
async fn ingest_rejections(addr: SocketAddr) -> Vec<(&'static str, f64)> {
    let response = within("Prometheus's own metrics", http_get(addr, "/metrics"))
        .await
        .expect("Prometheus serves its own metrics");
    [
        "prometheus_target_scrapes_sample_duplicate_timestamp_total",
        "prometheus_target_scrapes_sample_out_of_order_total",
        "prometheus_target_scrapes_sample_out_of_bounds_total",
        "prometheus_target_scrapes_exceeded_sample_limit_total",
    ]
    .into_iter()
    .map(|name| {
        let count = unlabeled_value(&response.body, name)
            .unwrap_or_else(|| panic!("{name} missing from Prometheus's own metrics"));
        (name, count)
    })
    .collect()
}

/// Returns the number of stored series of the scrape job once it equals the number of
/// samples on the last scraped page. Prometheus 2.42 keeps a target up when a page
/// lists one series twice, and stores only one of the two samples, so the counts
/// differ.
async fn series_count_matching_page(addr: SocketAddr) -> Result<f64, String> {
    let scraped = single_value(addr, &format!("scrape_samples_scraped{{job=\"{JOB}\"}}")).await?;
    let stored = single_value(
        addr,
        &format!("count({{job=\"{JOB}\",__name__!~\"up|scrape_.+\"}})"),
    )
    .await?;
    if stored == scraped {
        Ok(stored)
    } else {
        Err(format!("{scraped} samples scraped, {stored} series stored"))
    }
}

/// Returns the label sets, without `le`, of stored bucket series that have no
/// `le="+Inf"` bucket. Neither the scraper nor promtool rejects a histogram without
/// one, but `histogram_quantile` returns NaN for it.
fn histograms_without_infinity_bucket(buckets: &[Value]) -> Vec<String> {
    let mut has_infinity = std::collections::BTreeMap::new();
    for series in buckets {
        let mut labels = series["metric"].as_object().cloned().unwrap_or_default();
        let le = labels.remove("le");
        let key = Value::Object(labels).to_string();
        let entry = has_infinity.entry(key).or_insert(false);
        *entry |= le.as_ref().and_then(Value::as_str) == Some("+Inf");
    }
    has_infinity
        .into_iter()
        .filter(|(_, found)| !found)
        .map(|(labels, _)| labels)
        .collect()
}

/// Returns the value of the sample `name` that has no labels on a text-format page.
fn unlabeled_value(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
}

async fn assert_nothing_listens(addr: SocketAddr, what: &str) {
    let connect = TcpStream::connect(addr).await;
    assert!(connect.is_err(), "{what} still listens on {addr}");
}

/// Prometheus scrapes the proxy's endpoint, reports the target up, and stores the
/// bytes counter, a histogram with its +Inf bucket and the open-fds gauge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_proxy_metrics() {
    require_prometheus_binary("prometheus");
    let proxy = start_proxy().await;

    // An odd size, so a counter that drops a partial chunk shows up as a mismatch.
    let sent = 3 * (1 << 20) + 17;
    let mut client = connect_when_listening(proxy.listen).await;
    round_trip(&mut client, &pattern(41, sent)).await;
    drop(client);

    let mut prometheus = Prometheus::start(proxy.metrics);
    let scrape_url = format!("http://{}/metrics", proxy.metrics);
    let target = prometheus
        .poll("the target to be up", |addr| {
            healthy_target(addr, &scrape_url)
        })
        .await;
    assert_eq!(target["labels"]["job"], JOB, "target: {target}");

    // The engines add byte counts in chunks, and the last chunk when the connection
    // closes, so early scrapes may still show less than was sent.
    for direction in ["client_to_upstream", "upstream_to_client"] {
        let promql = format!("{BYTES_TOTAL}{{listener=\"{LISTENER}\",direction=\"{direction}\"}}");
        let stored = prometheus
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
    let connects = prometheus
        .poll("the +Inf bucket", |addr| {
            single_value(addr, &infinity_bucket)
        })
        .await;
    assert_eq!(connects, 1.0, "{infinity_bucket}");

    let open_fds = prometheus
        .poll("the open-fds gauge", |addr| single_value(addr, OPEN_FDS))
        .await;
    assert!(open_fds > 0.0, "{OPEN_FDS} is {open_fds}");

    let bucket_selector = format!("{{job=\"{JOB}\",__name__=~\".+_bucket\"}}");
    let buckets = prometheus
        .poll("the bucket series", |addr| {
            Prometheus::query(addr, &bucket_selector)
        })
        .await;
    assert!(!buckets.is_empty(), "no bucket series stored");
    let incomplete = histograms_without_infinity_bucket(&buckets);
    assert!(
        incomplete.is_empty(),
        "histograms without +Inf: {incomplete:?}"
    );

    let series = prometheus
        .poll(
            "every sample on the page stored",
            series_count_matching_page,
        )
        .await;
    assert!(series > 0.0, "no series stored");

    for (name, count) in ingest_rejections(prometheus.addr).await {
        assert_eq!(
            count,
            0.0,
            "{name}; Prometheus log:\n{}",
            prometheus.log_tail()
        );
    }

    let (prometheus_addr, metrics_addr) = (prometheus.addr, proxy.metrics);
    drop(prometheus);
    drop(proxy);
    assert_nothing_listens(prometheus_addr, "Prometheus").await;
    assert_nothing_listens(metrics_addr, "the proxy's metrics endpoint").await;
}

/// Runs `promtool check metrics` on `page` and returns its exit code and output.
fn promtool_check_metrics(page: &str) -> (Option<i32>, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(page.as_bytes())
        .expect("page is written to promtool");
    let output = child.wait_with_output().expect("promtool exits");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

/// The page carries the text format's content type, and `promtool check metrics`
/// finds no parse error (exit 1) and no lint problem (exit 3) in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_proxy_metrics_page() {
    require_prometheus_binary("promtool");
    let proxy = start_proxy().await;
    let mut client = connect_when_listening(proxy.listen).await;
    round_trip(&mut client, &pattern(42, 4096)).await;
    drop(client);

    let response = within("the metrics page", async {
        loop {
            if let Ok(response) = http_get(proxy.metrics, "/metrics").await {
                return response;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(response.status, 200, "body: {}", response.body);

    // The scraper of Prometheus 2.42 kept a target up when its page came with a JSON
    // content type, so only this check catches a wrong header.
    let content_type = response
        .headers
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .expect("response has a Content-Type header");
    assert_eq!(content_type, "text/plain; version=0.0.4");

    assert!(
        response.body.contains(BYTES_TOTAL),
        "page:\n{}",
        response.body
    );
    let (code, output) = promtool_check_metrics(&response.body);
    assert_eq!(
        code,
        Some(0),
        "promtool output:\n{output}\npage:\n{}",
        response.body
    );
}

/// The check above would pass vacuously if promtool accepted anything, so it must
/// reject a page that the scraper would still take: a metric with two HELP lines.
#[test]
fn promtool_rejects_duplicate_help() {
    require_prometheus_binary("promtool");
    let page = "# HELP styx_test_total First.\n# HELP styx_test_total Second.\n\
                # TYPE styx_test_total counter\nstyx_test_total 1\n";
    let (code, output) = promtool_check_metrics(page);
    assert_eq!(code, Some(1), "promtool output:\n{output}");
    assert!(output.contains("second HELP"), "promtool output:\n{output}");
}

#[test]
fn query_value_encoding() {
    assert_eq!(
        encode_query_value("a_b{le=\"+Inf\"}"),
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
        histograms_without_infinity_bucket(&buckets),
        [
            r#"{"__name__":"a_bucket","listener":"y"}"#,
            r#"{"__name__":"b_bucket"}"#,
        ]
    );
}
