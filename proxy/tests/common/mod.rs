//! Helpers shared by the integration tests: an in-process proxy, upstream servers,
//! byte patterns and a metrics scraper. Everything binds to 127.0.0.1.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use styx_proxy::{DrainReport, ListenerConfig, ProxyConfig, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound for any single wait in a test; only reached when a test hangs.
pub const HANG: Duration = Duration::from_secs(20);

/// Awaits `future`, failing the test with `what` if it hangs.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A proxy running in this process.
pub struct Proxy {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<DrainReport>,
}

impl Proxy {
    /// Starts one listener on 127.0.0.1 with a free port; `listener.listen` is replaced.
    pub async fn start(mut listener: ListenerConfig) -> Proxy {
        listener.listen = "127.0.0.1:0".parse().unwrap();
        Self::start_config(ProxyConfig {
            listeners: vec![listener],
            metrics_listen: None,
            drain_timeout: Duration::from_secs(5),
        })
        .await
    }

    pub async fn start_config(config: ProxyConfig) -> Proxy {
        // Metric handles are resolved when the listener is built, so the recorder must
        // exist by then.
        metrics_addr();
        config.validate().expect("test config is valid");
        let server = Server::bind(&config).expect("test proxy binds");
        let addr = server.local_addrs()[0];
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Proxy {
            addr,
            shutdown,
            task,
        }
    }

    /// Starts the shutdown drain without waiting for it.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Shuts down, checks that no connection had to be cut off (every test closes its
    /// clients first), and returns the drain report.
    pub async fn stop(self) -> DrainReport {
        let report = self.stop_report().await;
        assert_eq!(
            report.cut_off, 0,
            "connections were still open at the drain deadline"
        );
        report
    }

    /// Shuts down and returns the drain report without checking it.
    pub async fn stop_report(self) -> DrainReport {
        self.shutdown.cancel();
        within("the proxy drain", self.task)
            .await
            .expect("proxy task does not panic")
    }
}

/// Builds a listener config for `upstream` with the given engine and test defaults.
pub fn listener(
    name: &str,
    upstream: SocketAddr,
    engine: styx_proxy::EngineChoice,
) -> ListenerConfig {
    let mut config = ListenerConfig::new(name, "127.0.0.1:0".parse().unwrap(), vec![upstream]);
    config.engine = engine;
    config
}

/// Starts an upstream server that runs `handler` for every accepted connection.
pub async fn spawn_upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => drop(tokio::spawn(handler(stream))),
                // A connection the proxy reset while it waited in the backlog can fail
                // the accept (ECONNABORTED); the server must keep accepting after it.
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    });
    addr
}

/// Echoes every byte back and passes the client's FIN on.
pub async fn echo(mut stream: TcpStream) {
    let (mut reader, mut writer) = stream.split();
    let _ = tokio::io::copy(&mut reader, &mut writer).await;
    let _ = writer.shutdown().await;
}

/// Starts an echo upstream.
pub async fn spawn_echo() -> SocketAddr {
    spawn_upstream(echo).await
}

/// Returns an address on which nothing listens (bound once, then closed).
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Returns `len` pseudo-random bytes that depend on `seed`, so a receiver can check a
/// transfer byte for byte without storing both copies.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Sends `bytes` through `stream` and reads the echo back.
pub async fn round_trip(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    let mut echoed = vec![0; bytes.len()];
    within("the echo", stream.read_exact(&mut echoed))
        .await
        .unwrap();
    assert_eq!(echoed, bytes);
}

/// Closes `stream` with a reset instead of a FIN.
pub fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
}

/// Returns the address of the process-wide metrics endpoint, installing it on first use.
/// It runs on a runtime of its own, because each test's runtime ends with the test.
pub fn metrics_addr() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let addr = closed_port();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                styx_proxy::metrics::install(addr)
                    .await
                    .expect("metrics endpoint starts");
                ready_tx.send(()).unwrap();
                std::future::pending::<()>().await;
            });
        });
        ready_rx.recv().expect("metrics thread reports ready");
        addr
    })
}

/// Fetches the metrics page over HTTP.
pub async fn scrape() -> String {
    let addr = metrics_addr();
    let mut stream = within("the metrics connect", TcpStream::connect(addr))
        .await
        .unwrap();
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    within("the metrics response", stream.read_to_string(&mut response))
        .await
        .unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "metrics response: {response}"
    );
    let (_, body) = response
        .split_once("\r\n\r\n")
        .expect("response has a body");
    body.to_owned()
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// Parses the samples of a Prometheus text page (comments skipped).
pub fn parse_samples(page: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in page.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = value.parse().expect("sample value is a number");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
            None => (series, HashMap::new()),
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

fn parse_labels(text: &str) -> HashMap<String, String> {
    text.split("\",")
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').expect("label has a value");
            (key.to_owned(), value.trim_matches('"').to_owned())
        })
        .collect()
}

/// Returns the value of `name` whose labels include all of `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|sample| sample.value)
}

/// Scrapes once and returns the value of `name` with `labels`, 0 for a series that
/// does not exist yet.
pub async fn metric_now(name: &str, labels: &[(&str, &str)]) -> f64 {
    value(&parse_samples(&scrape().await), name, labels).unwrap_or(0.0)
}

/// Scrapes until `name` with `labels` reaches `expected`, because connection tasks
/// record their outcome just after the sockets close. Returns the last value seen.
pub async fn wait_for_metric(name: &str, labels: &[(&str, &str)], expected: f64) -> Option<f64> {
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let seen = value(&parse_samples(&scrape().await), name, labels);
        if seen == Some(expected) || tokio::time::Instant::now() >= deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
