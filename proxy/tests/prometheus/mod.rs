//! A Prometheus server and `promtool`, both from Debian's `prometheus` package (2.42 in
//! bookworm), run as child processes against metrics endpoints that a test started.
//!
//! The server's scraper alone is a weak check. Run by hand, Prometheus 2.42 kept a
//! target up with no error for each of these pages:
//! - a second HELP or TYPE line;
//! - a series listed twice;
//! - an invalid escape;
//! - a histogram without a +Inf bucket;
//! - a JSON content type.
//!
//! So [`Prometheus::assert_stored_whole`] compares the samples scraped with the series
//! stored and looks for the +Inf bucket of every histogram, and [`check_page`] runs
//! `promtool check metrics` and checks the Content-Type header.
//!
//! Only std, tokio, serde_json and tempfile are used, because the `styx-tests` crate
//! includes this file too. Everything binds to 127.0.0.1.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Deadline for Prometheus to start and to store a scrape. Only a hung or broken run
/// reaches it: on an idle machine a whole test takes a few seconds.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Pause between two polls of Prometheus's HTTP API.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Time limit of one HTTP request to an endpoint; only a hung endpoint reaches it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A child process that is killed and reaped when the guard is dropped, so a failed
/// assert leaves no process running and no port bound.
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    pub fn spawn(name: &str, command: &mut Command) -> ChildGuard {
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("failed to start {name}: {error}"));
        ChildGuard { child }
    }

    pub fn has_exited(&mut self) -> bool {
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
pub fn require_binary(binary: &str) {
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

/// Returns a loopback address whose port was free a moment ago (bound once, then
/// closed).
pub fn free_loopback_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback port binds");
    listener.local_addr().expect("bound socket has an address")
}

/// One HTTP response, read to the end of the connection.
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Response {
    /// Returns the value of the header `name`, compared without case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then_some(value.trim())
        })
    }
}

/// Sends a GET for `target` (path and query) to `addr`. HTTP/1.0 makes the server
/// close the connection after the body instead of using chunked encoding, so the body
/// is everything after the headers.
pub async fn http_get(addr: SocketAddr, target: &str) -> std::io::Result<Response> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request timed out"))??;

    let invalid = |description: &str| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, description.to_owned())
    };
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
pub fn encode_query_value(text: &str) -> String {
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
pub struct Prometheus {
    pub addr: SocketAddr,
    guard: ChildGuard,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `http://{addr}/metrics` every second for each
    /// `(job, addr)` of `targets`.
    pub fn start(targets: &[(&str, SocketAddr)]) -> Prometheus {
        require_binary("prometheus");
        let dir = tempfile::tempdir().expect("temporary directory is created");
        let config = dir.path().join("prometheus.yml");
        // No alerting or remote-write section: the server connects to nothing but the
        // scrape targets.
        let mut text =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, addr) in targets {
            text.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"{addr}\"]\n"
            ));
        }
        std::fs::write(&config, text).expect("Prometheus config is written");

        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("Prometheus log is created");
        let addr = free_loopback_addr();
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
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Calls `check` until it returns `Ok`, and fails with its last `Err` and the
    /// server's log at the deadline or as soon as the server exits.
    pub async fn poll<T, F, Fut>(&mut self, description: &str, mut check: F) -> T
    where
        F: FnMut(SocketAddr) -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut last = String::from("no poll finished");
        loop {
            if self.guard.has_exited() {
                panic!(
                    "prometheus exited while waiting for {description}; last result: {last}\n\
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
                    "timed out after {DEADLINE:?} waiting for {description}; \
                     last result: {last}\nPrometheus log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until the target of `job` at `target` is up with no scrape error, and
    /// returns it as the targets API lists it.
    pub async fn wait_healthy(&mut self, job: &str, target: SocketAddr) -> Value {
        let scrape_url = format!("http://{target}/metrics");
        let found = self
            .poll("the target to be up", |addr| {
                healthy_target(addr, &scrape_url)
            })
            .await;
        assert_eq!(found["labels"]["job"], job, "target: {found}");
        found
    }

    /// Waits until every sample of the last scrape of `job` is stored and every stored
    /// histogram of `job` has a +Inf bucket, and checks that Prometheus dropped no
    /// sample while appending.
    pub async fn assert_stored_whole(&mut self, job: &str) {
        let bucket_selector = format!("{{job=\"{job}\",__name__=~\".+_bucket\"}}");
        let buckets = self
            .poll("the bucket series", |addr| query(addr, &bucket_selector))
            .await;
        assert!(!buckets.is_empty(), "no bucket series stored for {job}");
        let incomplete = histograms_without_infinity_bucket(&buckets);
        assert!(
            incomplete.is_empty(),
            "histograms without +Inf: {incomplete:?}"
        );

        let series = self
            .poll("every sample on the page stored", |addr| {
                series_count_matching_page(addr, job)
            })
            .await;
        assert!(series > 0.0, "no series stored for {job}");

        for (name, count) in dropped_samples(self.addr).await {
            assert_eq!(count, 0.0, "{name}; Prometheus log:\n{}", self.log_tail());
        }
    }
}

/// Fetches `path` from the API and returns the `data` field of a successful reply.
pub async fn api(addr: SocketAddr, path: &str) -> Result<Value, String> {
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
pub async fn query(addr: SocketAddr, promql: &str) -> Result<Vec<Value>, String> {
    let path = format!("/api/v1/query?query={}", encode_query_value(promql));
    let data = api(addr, &path).await?;
    match data["result"].as_array() {
        Some(result) if data["resultType"] == "vector" => Ok(result.clone()),
        _ => Err(format!("query {promql}: not a vector: {data}")),
    }
}

/// Returns the target whose scrape URL is `scrape_url` once it is up with no error.
async fn healthy_target(addr: SocketAddr, scrape_url: &str) -> Result<Value, String> {
    let data = api(addr, "/api/v1/targets").await?;
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
pub async fn single_value(addr: SocketAddr, promql: &str) -> Result<f64, String> {
    let result = query(addr, promql).await?;
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
pub async fn value_equal_to(addr: SocketAddr, promql: &str, expected: f64) -> Result<f64, String> {
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
async fn dropped_samples(addr: SocketAddr) -> Vec<(&'static str, f64)> {
    let response = http_get(addr, "/metrics")
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

/// Returns the number of stored series of `job` once it equals the number of samples
/// on the last scraped page. Prometheus 2.42 keeps a target up when a page lists one
/// series twice, and stores only one of the two samples, so the counts differ.
async fn series_count_matching_page(addr: SocketAddr, job: &str) -> Result<f64, String> {
    let scraped = single_value(addr, &format!("scrape_samples_scraped{{job=\"{job}\"}}")).await?;
    let stored_selector = format!("count({{job=\"{job}\",__name__!~\"up|scrape_.+\"}})");
    let stored = single_value(addr, &stored_selector).await?;
    if stored == scraped {
        Ok(stored)
    } else {
        Err(format!("{scraped} samples scraped, {stored} series stored"))
    }
}

/// Returns the label sets, without `le`, of stored bucket series that have no
/// `le="+Inf"` bucket. Neither the scraper nor promtool rejects a histogram without
/// one, but `histogram_quantile` returns NaN for it.
pub fn histograms_without_infinity_bucket(buckets: &[Value]) -> Vec<String> {
    let mut has_infinity = BTreeMap::new();
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

/// Runs `promtool check metrics` on `page` and returns its exit code and output.
pub fn promtool_check_metrics(page: &str) -> (Option<i32>, String) {
    require_binary("promtool");
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

/// Fetches `http://{addr}/metrics` and checks that the page comes with the text
/// format's content type and that `promtool check metrics` finds no parse error
/// (exit 1) and no lint problem (exit 3) in it. Returns the page.
pub async fn check_page(addr: SocketAddr) -> String {
    let response = http_get(addr, "/metrics")
        .await
        .unwrap_or_else(|error| panic!("GET http://{addr}/metrics failed: {error}"));
    assert_eq!(response.status, 200, "body: {}", response.body);

    // The scraper of Prometheus 2.42 kept a target up when its page came with a JSON
    // content type, so only this check catches a wrong header.
    let content_type = response.header("content-type");
    assert_eq!(content_type, Some("text/plain; version=0.0.4"));

    let (code, output) = promtool_check_metrics(&response.body);
    assert_eq!(
        code,
        Some(0),
        "promtool output:\n{output}\npage:\n{}",
        response.body
    );
    response.body
}

pub async fn assert_nothing_listens(addr: SocketAddr, description: &str) {
    let connect = TcpStream::connect(addr).await;
    assert!(connect.is_err(), "{description} still listens on {addr}");
}
