//! Metric names, their descriptions, per-listener handles and the Prometheus recorder.
//!
//! Names follow `styx_proxy_<thing>_<unit>[_total]` with base units. Labels take values
//! from closed sets only: the listener name (from the configuration), `direction`,
//! `result`, `reason` and `side`. Client addresses never become labels. Handles are
//! resolved once per listener, so the data path only increments a ready counter, and
//! the engines add byte counts in chunks rather than once per system call.
//!
//! Nothing is served unless [`install`] is called with an address.
//! [`crate::metrics_endpoint`] serves the page.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Connections that ended, by `listener` and `result` (see [`ConnectionResult`]).
pub const CONNECTIONS_TOTAL: &str = "styx_proxy_connections_total";
/// Connections currently open, by `listener`.
pub const CONNECTIONS_ACTIVE: &str = "styx_proxy_connections_active";
/// Bytes forwarded, by `listener` and `direction` (`client_to_upstream`,
/// `upstream_to_client`).
pub const BYTES_TOTAL: &str = "styx_proxy_bytes_total";
/// Time to open a new upstream connection, in seconds, by `listener`.
pub const UPSTREAM_CONNECT_DURATION_SECONDS: &str = "styx_proxy_upstream_connect_duration_seconds";
/// Failed upstream connects, by `listener` and `reason` (`refused`, `timeout`,
/// `unreachable`, `reset`, `permission_denied`, `no_upstream`, `other`).
pub const UPSTREAM_CONNECT_ERRORS_TOTAL: &str = "styx_proxy_upstream_connect_errors_total";
/// Resets received, by `listener` and the `side` (`client`, `upstream`) that sent them.
pub const RESETS_TOTAL: &str = "styx_proxy_resets_total";
/// Connections closed because no byte moved for the idle timeout, by `listener`.
pub const IDLE_TIMEOUTS_TOTAL: &str = "styx_proxy_idle_timeouts_total";
/// Failed accepts, by `listener` and `reason` (`fd_limit`, `other`).
pub const ACCEPT_ERRORS_TOTAL: &str = "styx_proxy_accept_errors_total";
/// Clients served from the pre-connect pool, by `listener`.
pub const POOL_HITS_TOTAL: &str = "styx_proxy_pool_hits_total";
/// Clients that found the pre-connect pool empty, by `listener`.
pub const POOL_MISSES_TOTAL: &str = "styx_proxy_pool_misses_total";
/// Pooled connections thrown away, by `listener` and `reason` (`closed`, `expired`,
/// `header_failed`, `left_set`).
pub const POOL_DISCARDS_TOTAL: &str = "styx_proxy_pool_discards_total";
/// Every `reason` of [`UPSTREAM_CONNECT_ERRORS_TOTAL`].
pub const CONNECT_ERROR_REASONS: [&str; 7] = [
    "refused",
    "timeout",
    "unreachable",
    "reset",
    "permission_denied",
    "no_upstream",
    "other",
];
/// Every `reason` of [`POOL_DISCARDS_TOTAL`].
pub const POOL_DISCARD_REASONS: [&str; 4] = ["closed", "expired", "header_failed", "left_set"];
/// File descriptors open in this process.
pub const OPEN_FDS: &str = "styx_proxy_open_fds";
/// Soft limit on open file descriptors of this process.
pub const MAX_FDS: &str = "styx_proxy_max_fds";

/// Buckets of [`UPSTREAM_CONNECT_DURATION_SECONDS`], from 50 µs to 10 s.
pub const CONNECT_DURATION_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
    10.0,
];

/// Buckets of the resolver's `styx_dns_query_duration_seconds`, from 10 µs (a cache hit)
/// to 2.5 s (beyond the resolver's per-server timeouts).
pub const DNS_QUERY_DURATION_BUCKETS: [f64; 14] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
    0.1, 0.5, 2.5,
];

/// The way a connection ended: the `result` label of [`CONNECTIONS_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionResult {
    /// Both directions finished with a FIN.
    Completed,
    /// One side reset the connection and the other side was reset in turn.
    Reset,
    /// No byte moved for the idle timeout.
    IdleTimeout,
    /// No upstream connection could be opened.
    ConnectFailed,
    /// A socket error other than a reset ended the connection.
    Error,
    /// The shutdown drain deadline passed while the connection was open.
    CutOff,
}

impl ConnectionResult {
    const ALL: [ConnectionResult; 6] = [
        ConnectionResult::Completed,
        ConnectionResult::Reset,
        ConnectionResult::IdleTimeout,
        ConnectionResult::ConnectFailed,
        ConnectionResult::Error,
        ConnectionResult::CutOff,
    ];

    /// Returns the label value.
    pub fn as_label(self) -> &'static str {
        match self {
            ConnectionResult::Completed => "completed",
            ConnectionResult::Reset => "reset",
            ConnectionResult::IdleTimeout => "idle_timeout",
            ConnectionResult::ConnectFailed => "connect_failed",
            ConnectionResult::Error => "error",
            ConnectionResult::CutOff => "cut_off",
        }
    }
}

/// Metric handles of one listener, resolved once.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    results: [Counter; 6],
    pub(crate) active: Gauge,
    pub(crate) client_to_upstream_bytes: Counter,
    pub(crate) upstream_to_client_bytes: Counter,
    pub(crate) connect_duration: Histogram,
    pub(crate) client_resets: Counter,
    pub(crate) upstream_resets: Counter,
    pub(crate) idle_timeouts: Counter,
    pub(crate) pool_hits: Counter,
    pub(crate) pool_misses: Counter,
    connect_errors: ReasonCounters,
    pool_discards: ReasonCounters,
}

impl ListenerMetrics {
    /// Resolves the handles for the listener called `listener`.
    pub fn new(listener: &str) -> Self {
        describe();
        let name = listener.to_owned();
        let labels = [("listener", name.clone())];
        let results = ConnectionResult::ALL.map(|result| {
            metrics::counter!(CONNECTIONS_TOTAL, "listener" => name.clone(), "result" => result.as_label())
        });
        Self {
            results,
            active: metrics::gauge!(CONNECTIONS_ACTIVE, &labels),
            client_to_upstream_bytes: metrics::counter!(BYTES_TOTAL, "listener" => name.clone(), "direction" => "client_to_upstream"),
            upstream_to_client_bytes: metrics::counter!(BYTES_TOTAL, "listener" => name.clone(), "direction" => "upstream_to_client"),
            connect_duration: metrics::histogram!(UPSTREAM_CONNECT_DURATION_SECONDS, &labels),
            client_resets: metrics::counter!(RESETS_TOTAL, "listener" => name.clone(), "side" => "client"),
            upstream_resets: metrics::counter!(RESETS_TOTAL, "listener" => name.clone(), "side" => "upstream"),
            idle_timeouts: metrics::counter!(IDLE_TIMEOUTS_TOTAL, &labels),
            pool_hits: metrics::counter!(POOL_HITS_TOTAL, &labels),
            pool_misses: metrics::counter!(POOL_MISSES_TOTAL, &labels),
            connect_errors: ReasonCounters::new(
                UPSTREAM_CONNECT_ERRORS_TOTAL,
                &name,
                &CONNECT_ERROR_REASONS,
            ),
            pool_discards: ReasonCounters::new(POOL_DISCARDS_TOTAL, &name, &POOL_DISCARD_REASONS),
        }
    }

    /// Counts one finished connection.
    pub(crate) fn record_result(&self, result: ConnectionResult) {
        let index = ConnectionResult::ALL
            .iter()
            .position(|candidate| *candidate == result)
            .expect("ALL lists every result");
        self.results[index].increment(1);
    }

    /// Counts one failed upstream connect; `reason` is one of [`CONNECT_ERROR_REASONS`].
    pub(crate) fn record_connect_error(&self, reason: &'static str) {
        self.connect_errors.increment(reason);
    }

    /// Counts one pooled connection thrown away; `reason` is one of
    /// [`POOL_DISCARD_REASONS`].
    pub(crate) fn record_pool_discard(&self, reason: &'static str) {
        self.pool_discards.increment(reason);
    }
}

/// Handles of one counter of one listener, one per `reason`, resolved up front so each
/// series exists at 0 before its first event and `rate()` has a series from the start.
#[derive(Debug, Clone)]
struct ReasonCounters {
    name: &'static str,
    listener: String,
    counters: Vec<(&'static str, Counter)>,
}

impl ReasonCounters {
    fn new(name: &'static str, listener: &str, reasons: &[&'static str]) -> Self {
        let counters = reasons
            .iter()
            .map(|&reason| {
                let counter =
                    metrics::counter!(name, "listener" => listener.to_owned(), "reason" => reason);
                (reason, counter)
            })
            .collect();
        Self {
            name,
            listener: listener.to_owned(),
            counters,
        }
    }

    fn increment(&self, reason: &'static str) {
        let known = self
            .counters
            .iter()
            .find(|(candidate, _)| *candidate == reason);
        match known {
            Some((_, counter)) => counter.increment(1),
            // A reason missing from the list is still counted, just not registered early.
            None => {
                debug_assert!(
                    false,
                    "reason {reason:?} missing from the list of {}",
                    self.name
                );
                metrics::counter!(self.name, "listener" => self.listener.clone(), "reason" => reason)
                    .increment(1);
            }
        }
    }
}

/// Why an accept failed: the `reason` label of [`ACCEPT_ERRORS_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptErrorReason {
    /// EMFILE or ENFILE: the process or the system ran out of file descriptors.
    FdLimit,
    /// Any other accept error.
    Other,
}

impl AcceptErrorReason {
    /// Returns the label value.
    pub(crate) fn as_label(self) -> &'static str {
        match self {
            AcceptErrorReason::FdLimit => "fd_limit",
            AcceptErrorReason::Other => "other",
        }
    }
}

/// [`ACCEPT_ERRORS_TOTAL`] handles of one listening socket, resolved once, so each
/// series exists at 0 before the first failure.
#[derive(Debug, Clone)]
pub(crate) struct AcceptErrorCounters {
    fd_limit: Counter,
    other: Counter,
}

impl AcceptErrorCounters {
    /// Resolves the handles for the listener called `listener`.
    pub(crate) fn new(listener: &str) -> Self {
        describe();
        let counter = |reason: AcceptErrorReason| metrics::counter!(ACCEPT_ERRORS_TOTAL, "listener" => listener.to_owned(), "reason" => reason.as_label());
        Self {
            fd_limit: counter(AcceptErrorReason::FdLimit),
            other: counter(AcceptErrorReason::Other),
        }
    }

    /// Counts one failed accept.
    pub(crate) fn record(&self, reason: AcceptErrorReason) {
        match reason {
            AcceptErrorReason::FdLimit => self.fd_limit.increment(1),
            AcceptErrorReason::Other => self.other.increment(1),
        }
    }
}

/// Describes every metric once per process.
fn describe() {
    static DESCRIBED: OnceLock<()> = OnceLock::new();
    DESCRIBED.get_or_init(|| {
        metrics::describe_counter!(
            CONNECTIONS_TOTAL,
            Unit::Count,
            "Connections that ended, by result."
        );
        metrics::describe_gauge!(
            CONNECTIONS_ACTIVE,
            Unit::Count,
            "Connections currently open."
        );
        metrics::describe_counter!(BYTES_TOTAL, Unit::Bytes, "Bytes forwarded, by direction.");
        metrics::describe_histogram!(
            UPSTREAM_CONNECT_DURATION_SECONDS,
            Unit::Seconds,
            "Time to open a new upstream connection."
        );
        metrics::describe_counter!(
            UPSTREAM_CONNECT_ERRORS_TOTAL,
            Unit::Count,
            "Failed upstream connects, by reason."
        );
        metrics::describe_counter!(
            RESETS_TOTAL,
            Unit::Count,
            "Resets received, by the side that sent them."
        );
        metrics::describe_counter!(
            IDLE_TIMEOUTS_TOTAL,
            Unit::Count,
            "Connections closed by the idle timeout."
        );
        metrics::describe_counter!(
            ACCEPT_ERRORS_TOTAL,
            Unit::Count,
            "Failed accepts, by reason."
        );
        metrics::describe_counter!(
            POOL_HITS_TOTAL,
            Unit::Count,
            "Clients served from the pre-connect pool."
        );
        metrics::describe_counter!(
            POOL_MISSES_TOTAL,
            Unit::Count,
            "Clients that found the pre-connect pool empty."
        );
        metrics::describe_counter!(
            POOL_DISCARDS_TOTAL,
            Unit::Count,
            "Pooled connections thrown away, by reason."
        );
        metrics::describe_gauge!(
            OPEN_FDS,
            Unit::Count,
            "File descriptors open in this process."
        );
        metrics::describe_gauge!(MAX_FDS, Unit::Count, "Soft limit on open file descriptors.");
    });
}

/// Failure to start the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The endpoint's address could not be bound.
    #[error("failed to listen for metrics on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The recorder could not be built or installed.
    #[error("failed to install the metrics recorder")]
    Recorder(#[source] metrics_exporter_prometheus::BuildError),
}

/// Interval between upkeep runs of the recorder, which drain histogram samples.
const UPKEEP_PERIOD: Duration = Duration::from_secs(5);

/// Installs the process-wide Prometheus recorder and serves it over HTTP at `addr`
/// (see [`crate::metrics_endpoint`]).
///
/// Histograms get explicit buckets, so they render as histograms, not summaries.
/// Must be called from inside a tokio runtime, once per process.
///
/// # Errors
/// [`MetricsError`] when `addr` cannot be bound or a recorder is already installed.
pub async fn install(addr: SocketAddr) -> Result<(), MetricsError> {
    install_with_buckets(addr, &[]).await
}

/// Does what [`install`] does, and also sets the buckets of the embedding program's own
/// histograms: each entry is a full metric name and its bucket bounds in the metric's
/// unit. `styx-driver` uses it for its CLI call durations.
///
/// # Errors
/// [`MetricsError`] when `addr` cannot be bound, a recorder is already installed, or a
/// bucket list is empty.
pub async fn install_with_buckets(
    addr: SocketAddr,
    buckets: &[(&str, &[f64])],
) -> Result<(), MetricsError> {
    // Bound first, so a taken address leaves no recorder behind.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Listen { addr, source })?;

    let own_buckets = [
        (
            UPSTREAM_CONNECT_DURATION_SECONDS,
            CONNECT_DURATION_BUCKETS.as_slice(),
        ),
        (
            styx_dns::metrics::QUERY_DURATION_SECONDS,
            DNS_QUERY_DURATION_BUCKETS.as_slice(),
        ),
    ];
    let mut builder = PrometheusBuilder::new();
    for (name, bounds) in own_buckets.iter().chain(buckets) {
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).to_owned()), bounds)
            .map_err(MetricsError::Recorder)?;
    }
    let handle = builder.install_recorder().map_err(MetricsError::Recorder)?;

    describe();
    styx_dns::metrics::describe();
    tokio::spawn(run_upkeep(handle.clone()));
    tokio::spawn(crate::metrics_endpoint::serve(listener, handle));
    tokio::spawn(report_fds(Duration::from_secs(2)));
    Ok(())
}

async fn run_upkeep(handle: PrometheusHandle) {
    let mut ticker = tokio::time::interval(UPKEEP_PERIOD);
    loop {
        ticker.tick().await;
        handle.run_upkeep();
    }
}

/// Updates the open and maximum file descriptor gauges every `period`.
async fn report_fds(period: Duration) {
    let open = metrics::gauge!(OPEN_FDS);
    let max = metrics::gauge!(MAX_FDS);
    let mut ticker = tokio::time::interval(period);
    loop {
        ticker.tick().await;
        if let Some(count) = crate::system::open_fds() {
            open.set(count as f64);
        }
        if let Some(limit) = crate::system::fd_soft_limit() {
            max.set(limit as f64);
        }
    }
}
