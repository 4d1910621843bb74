//! The Prometheus endpoint that the plugin option `metrics_address` turns on.
//!
//! It reuses `styx_proxy::metrics::install_with_buckets`: one process-wide recorder
//! and the same plain HTTP page as `styx-proxy run`, served for `GET /metrics`. The page
//! has the driver's own metrics ([`crate::metrics`]), the `styx_proxy_*` metrics of
//! every published port's listener, and the process's file descriptor gauges.
//!
//! The `metrics` facade takes one recorder per process, and it cannot be replaced, so
//! the first SetConfig that succeeds fixes the endpoint, or its absence, for the life of
//! the process. A later SetConfig with the same `metrics_address` changes nothing, and
//! one with another value is rejected with [`EndpointError::Change`]. Turning the
//! endpoint on later is rejected too, because the running-tasks gauge would miss the
//! tasks started before. Nomad sends SetConfig once per plugin launch, so a new value
//! takes effect when the Nomad agent restarts the plugin. A SetConfig whose bind fails
//! leaves no recorder behind, and a later call may try again.

use std::net::SocketAddr;
use std::sync::OnceLock;

use styx_proxy::metrics::MetricsError;
use tokio::sync::Mutex;

use crate::metrics::{CLI_DURATION_BUCKETS, CONTAINER_CLI_DURATION_SECONDS};

/// Failure to apply `metrics_address`.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The endpoint could not be bound, or the recorder could not be installed.
    #[error("failed to serve metrics at metrics_address {addr}")]
    Start {
        addr: SocketAddr,
        #[source]
        source: MetricsError,
    },
    /// An earlier SetConfig fixed another value for this process.
    #[error(
        "metrics_address cannot change while the plugin runs: it is {}, and the new config asks for {}; restart the plugin to apply it",
        display_value(*current),
        display_value(*requested)
    )]
    Change {
        current: Option<SocketAddr>,
        requested: Option<SocketAddr>,
    },
}

fn display_value(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "empty (no endpoint)".to_owned(), |addr| addr.to_string())
}

/// `metrics_address` of the first SetConfig that succeeded, `None` before it. The async
/// lock makes concurrent SetConfig calls take turns, so only one installs a recorder.
fn applied() -> &'static Mutex<Option<Option<SocketAddr>>> {
    static APPLIED: OnceLock<Mutex<Option<Option<SocketAddr>>>> = OnceLock::new();
    APPLIED.get_or_init(|| Mutex::new(None))
}

/// Starts the endpoint at `requested` on the first call, or checks that a later call
/// requests the same value. Must be called from inside a tokio runtime, and only once
/// the rest of the config is valid, because a success fixes the value.
///
/// # Errors
/// [`EndpointError::Start`] when the address cannot be bound, and
/// [`EndpointError::Change`] when an earlier call fixed another value.
pub async fn apply(requested: Option<SocketAddr>) -> Result<(), EndpointError> {
    let mut applied = applied().lock().await;
    if let Some(current) = *applied {
        if current == requested {
            return Ok(());
        }
        return Err(EndpointError::Change { current, requested });
    }

    // NOTE: an address that is not on an interface yet, such as a Tailscale address
    // before Tailscale is up, fails here and rejects the config. Retrying the bind in
    // the background would keep the plugin up, at the cost of the error Nomad shows.
    if let Some(addr) = requested {
        let buckets = [(
            CONTAINER_CLI_DURATION_SECONDS,
            CLI_DURATION_BUCKETS.as_slice(),
        )];
        styx_proxy::metrics::install_with_buckets(addr, &buckets)
            .await
            .map_err(|source| EndpointError::Start { addr, source })?;
        crate::metrics::register();
        tracing::info!(%addr, "serving Prometheus metrics");
    }
    *applied = Some(requested);
    Ok(())
}
