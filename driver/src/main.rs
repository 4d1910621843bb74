//! `styx-driver`: the Nomad task driver plugin binary. Nomad starts it; run by hand it
//! explains that and exits with status 1.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use styx_driver::driver::Driver;
use styx_driver::handshake;
use styx_driver::logging::{self, HclogLayer};
use styx_driver::server;
use styx_driver::socket::SocketOptions;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Environment variable with a tracing filter for the plugin's logs, `info` by default.
const LOG_FILTER_KEY: &str = "STYX_DRIVER_LOG";

/// Environment variable naming a file that receives a copy of every log line.
const LOG_FILE_KEY: &str = "STYX_DRIVER_LOG_FILE";

fn main() -> ExitCode {
    if let Err(error) = handshake::check_environment(|key| std::env::var(key).ok()) {
        // Plain text for the person who ran the binary by hand; a write error has no
        // better place to go.
        let _ = writeln!(std::io::stderr(), "styx-driver: {error}");
        return ExitCode::FAILURE;
    }

    let log_file_path = std::env::var_os(LOG_FILE_KEY).map(PathBuf::from);
    let log_file = log_file_path.as_deref().map(logging::open_log_file);
    let (file_layer, log_file_error) = match log_file {
        Some(Ok(file)) => (Some(HclogLayer::new(move || file.clone())), None),
        Some(Err(error)) => (None, Some(error)),
        None => (None, None),
    };

    let filter = EnvFilter::try_from_env(LOG_FILTER_KEY).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(filter)
        .with(HclogLayer::stderr())
        .with(file_layer)
        .init();
    if let (Some(path), Some(error)) = (&log_file_path, log_file_error) {
        tracing::warn!(path = %path.display(), error = %error, "failed to open the log file; logging to stderr only");
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(error = %error, "failed to start the async runtime");
            return ExitCode::FAILURE;
        }
    };

    let socket = SocketOptions::from_env(|key| std::env::var(key).ok());
    let driver = Driver::new(CancellationToken::new());

    match runtime.block_on(server::serve(driver, &socket, std::io::stdout())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "plugin failed");
            ExitCode::FAILURE
        }
    }
}
