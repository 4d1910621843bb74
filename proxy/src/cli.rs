//! The `styx-proxy run` subcommand: flags, config loading and the process lifecycle.
//!
//! Order of work: parse and validate every setting, raise the open file limit, start
//! the runtime, serve metrics when asked, build the DNS resolver when a listener has
//! upstream names, bind every listener, serve until SIGTERM or SIGINT, then drain.
//! Nothing is bound before the whole configuration is valid.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use styx_dns::{ResolverConfig, RouteOverride, SplitResolver};
use tokio_util::sync::CancellationToken;

use crate::config::{
    ConfigError, ConfigFile, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS, DEFAULT_PRECONNECT_MAX_IDLE_S, EngineChoice,
    ListenerConfig, ProxyConfig,
};
use crate::proxy_protocol::ProxyProtocol;
use crate::server::{BindError, Server};
use crate::upstream::UpstreamTarget;

/// Options of `styx-proxy run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Address to accept clients on, as IP:PORT. Required unless --config is given.
    #[arg(
        long,
        value_name = "ADDR",
        required_unless_present = "config",
        requires = "upstream"
    )]
    pub listen: Option<SocketAddr>,

    /// Upstream as IP:PORT, NAME:PORT (A and AAAA records, this port) or srv:NAME (SRV
    /// records and their ports). Names are re-resolved as their TTLs expire, and a name's
    /// address that refuses a connection or times out is skipped for 10 s. An SRV name
    /// uses its lowest priority number until all of its addresses are skipped. Repeat the
    /// flag for round-robin over several.
    #[arg(long, value_name = "UPSTREAM", requires = "listen")]
    pub upstream: Vec<UpstreamTarget>,

    /// Send DNS lookups for names under SUFFIX to these servers instead of the route's
    /// defaults (ts.net: 100.100.100.100:53, consul: 127.0.0.1:8600, others: the
    /// system's servers). The suffix `.` covers all other names. Repeatable, and applied
    /// after the config file's dns key. A server without a port uses port 53.
    #[arg(long = "dns", value_name = "SUFFIX=IP[:PORT][,IP[:PORT]...]")]
    pub dns: Vec<RouteOverride>,

    /// Forwarding engine: splice on Linux when available, else copy [default: auto,
    /// or the config file's engine].
    #[arg(long, value_enum)]
    pub engine: Option<EngineChoice>,

    /// Serve Prometheus metrics over HTTP at IP:PORT [default: not served, or the
    /// config file's metrics_listen].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Upstream connections kept pre-connected, 0 for none.
    #[arg(long, value_name = "N", allow_negative_numbers = true, default_value_t = 0, conflicts_with = "config",
          value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub preconnect: u16,

    /// Seconds a pre-connected upstream socket may wait for a client before it is
    /// replaced.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true, default_value_t = DEFAULT_PRECONNECT_MAX_IDLE_S, conflicts_with = "config",
          value_parser = at_least_one("s"))]
    pub preconnect_max_idle_s: u64,

    /// Connections served at once; further clients wait in the listen backlog.
    #[arg(long, value_name = "N", allow_negative_numbers = true, default_value_t = DEFAULT_MAX_CONNECTIONS as u64, conflicts_with = "config",
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_connections: u64,

    /// Upstream connect timeout, in milliseconds.
    #[arg(long, value_name = "MS", allow_negative_numbers = true, default_value_t = DEFAULT_CONNECT_TIMEOUT_MS, conflicts_with = "config",
          value_parser = at_least_one("ms"))]
    pub connect_timeout_ms: u64,

    /// Close a connection after this many seconds without a byte moving; 0 turns the
    /// idle timeout off.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true, default_value_t = DEFAULT_IDLE_TIMEOUT_S, conflicts_with = "config")]
    pub idle_timeout_s: u64,

    /// Send a PROXY protocol header of this version to the upstream [default: none].
    #[arg(long, value_enum, value_name = "VERSION", conflicts_with = "config")]
    pub proxy_protocol: Option<ProxyProtocol>,

    /// Seconds a shutdown waits for open connections before resetting them. A second
    /// SIGTERM or SIGINT resets them at once [default: 30, or the config file's
    /// drain_timeout_s].
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub drain_timeout_s: Option<u64>,

    /// TOML file with one [[listener]] table per listener, instead of --listen and
    /// --upstream.
    #[arg(long, value_name = "FILE", conflicts_with = "listen")]
    pub config: Option<PathBuf>,
}

/// Settings of `styx-proxy run`: the proxy configuration and the resolver for upstream names.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub proxy: ProxyConfig,
    pub resolver: ResolverConfig,
}

impl RunArgs {
    /// Builds and validates the proxy configuration these flags describe.
    ///
    /// # Errors
    /// [`ConfigError`] naming the invalid flag, or the file and line.
    pub fn to_config(&self) -> Result<ProxyConfig, ConfigError> {
        self.to_settings().map(|settings| settings.proxy)
    }

    /// Builds and validates the proxy configuration and the resolver settings: the
    /// default routes, then the config file's `dns` overrides, then `--dns`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the invalid flag, or the file and line.
    pub fn to_settings(&self) -> Result<RunSettings, ConfigError> {
        let mut resolver = ResolverConfig::default();
        let mut config = match &self.config {
            Some(path) => {
                let file = ConfigFile::read(path)?;
                for route in file.dns {
                    resolver.apply_override(route);
                }
                file.proxy
            }
            None => self.flags_config()?,
        };
        for route in &self.dns {
            resolver.apply_override(route.clone());
        }
        if let Some(engine) = self.engine {
            for listener in &mut config.listeners {
                listener.engine = engine;
            }
        }
        if self.metrics_listen.is_some() {
            config.metrics_listen = self.metrics_listen;
        }
        if let Some(seconds) = self.drain_timeout_s {
            config.drain_timeout = Duration::from_secs(seconds);
        }
        config.validate()?;
        Ok(RunSettings {
            proxy: config,
            resolver,
        })
    }

    fn flags_config(&self) -> Result<ProxyConfig, ConfigError> {
        let Some(listen) = self.listen else {
            return Err(ConfigError::Setting {
                setting: "--listen",
                message: "required unless --config is given".into(),
            });
        };
        let mut listener = ListenerConfig::new("default", listen, Vec::new());
        for target in &self.upstream {
            listener.add_target(target.clone());
        }
        listener.preconnect = usize::from(self.preconnect);
        listener.preconnect_max_idle = Duration::from_secs(self.preconnect_max_idle_s);
        listener.max_connections = usize::try_from(self.max_connections).unwrap_or(usize::MAX);
        listener.connect_timeout = Duration::from_millis(self.connect_timeout_ms);
        listener.idle_timeout =
            (self.idle_timeout_s > 0).then(|| Duration::from_secs(self.idle_timeout_s));
        listener.proxy_protocol = self.proxy_protocol;
        Ok(ProxyConfig {
            listeners: vec![listener],
            metrics_listen: None,
            drain_timeout: Duration::from_secs(DEFAULT_DRAIN_TIMEOUT_S),
        })
    }
}

/// Failure of `styx-proxy run`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The tokio runtime or the signal handlers could not start.
    #[error("failed to start the runtime")]
    Runtime(#[source] std::io::Error),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The DNS resolver for upstream names could not be built.
    #[error("failed to build the DNS resolver for upstream names")]
    Resolver(#[source] styx_dns::resolver::BuildError),
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// Returns a parser for a whole number of `unit` that must be at least 1, with errors
/// that name the unit (clap's own range check prints `1..18446744073709551615`).
fn at_least_one(
    unit: &'static str,
) -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync + 'static {
    move |text| {
        let value: u64 = text
            .parse()
            .map_err(|_| format!("expected a whole number of {unit}"))?;
        if value == 0 {
            return Err(format!("must be at least 1 {unit}"));
        }
        Ok(value)
    }
}

/// Runs the proxy until SIGTERM or SIGINT, then drains and returns. A second signal
/// cuts the drain short.
///
/// # Errors
/// [`RunError`] when the configuration is invalid or something cannot start; nothing
/// is served in that case.
pub fn run(args: &RunArgs) -> Result<(), RunError> {
    let settings = args.to_settings()?;

    match crate::system::raise_fd_limit() {
        Ok(limit) => tracing::debug!(limit = ?limit, "Raised the open file limit"),
        Err(error) => tracing::warn!(%error, "Failed to raise the open file limit"),
    }

    // The work-stealing runtime wakes idle workers for each new connection task
    // (eventfd writes and futex calls in strace). One single-threaded runtime per core,
    // each accepting from its own duplicate of the listening socket, removed those
    // wakeups but measured the same in the bench on 2 cores: connect-rate 0.49 against
    // 0.48 of direct, and rr within 1 µs. There the proxy spends its core in the
    // kernel's TCP code.
    let workers = std::thread::available_parallelism().map_or(1, |count| count.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    runtime.block_on(serve(settings))
}

async fn serve(settings: RunSettings) -> Result<(), RunError> {
    let config = settings.proxy;
    // The recorder comes first: the resolver takes its metric handles when it is built.
    if let Some(addr) = config.metrics_listen {
        crate::metrics::install(addr).await?;
        tracing::info!(%addr, "Serving metrics");
    }

    let has_names = config
        .listeners
        .iter()
        .any(|listener| !listener.upstream_names.is_empty());
    let resolver = if has_names {
        Some(SplitResolver::new(settings.resolver).map_err(RunError::Resolver)?)
    } else {
        None
    };
    let server = Server::bind_with(&config, resolver.as_ref())?;

    let shutdown = CancellationToken::new();
    let cut_off_now = CancellationToken::new();
    spawn_signal_handler(shutdown.clone(), cut_off_now.clone()).map_err(RunError::Runtime)?;
    server.run_until(shutdown, cut_off_now).await;
    Ok(())
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT, and `cut_off_now` on the second,
/// so an operator can cut a slow drain short.
fn spawn_signal_handler(
    shutdown: CancellationToken,
    cut_off_now: CancellationToken,
) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            let steps = [
                (
                    shutdown,
                    "Received a shutdown signal, send another to reset open connections",
                ),
                (
                    cut_off_now,
                    "Received a second shutdown signal, resetting open connections",
                ),
            ];
            for (token, message) in steps {
                let name = tokio::select! {
                    _ = terminate.recv() => "SIGTERM",
                    _ = interrupt.recv() => "SIGINT",
                };
                tracing::info!(signal = name, "{message}");
                token.cancel();
            }
        });
    }
    #[cfg(not(unix))]
    {
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            let _ = tokio::signal::ctrl_c().await;
            cut_off_now.cancel();
        });
    }
    Ok(())
}
