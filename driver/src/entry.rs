//! The entry point of the `styx-driver` program, in the library so that test crates can
//! build the same program under another name.
//!
//! With `supervise` as its first argument the program runs a task's supervisor (see
//! [`crate::supervisor`]). With `--version` or `--help` (`-V`, `-h`) it prints that text
//! and exits 0, so that a user can check the installed plugin without Nomad's
//! environment. Otherwise it is the plugin that Nomad starts.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::driver::Driver;
use crate::handshake;
use crate::logging::{self, HclogLayer};
use crate::server;
use crate::socket::SocketOptions;
use crate::supervisor;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Environment variable with a tracing filter for the plugin's logs, `info` by default.
const LOG_FILTER_KEY: &str = "STYX_DRIVER_LOG";

/// Environment variable naming a file that receives a copy of every log line.
const LOG_FILE_KEY: &str = "STYX_DRIVER_LOG_FILE";

/// Usage printed by `--help`.
const USAGE: &str = "\
Nomad task driver plugin for Apple containers (driver name apple-container).

A Nomad client starts this binary from its plugin_dir; it is not meant to be run by hand.
Run by hand without Nomad's environment, it prints why and exits with status 1.

Usage:
  styx-driver              serve the plugin (started by Nomad)
  styx-driver --version    print the version and exit
  styx-driver --help       print this help and exit
";

/// Returns the text to print for `--version` or `--help` (and `-V`, `-h`), or `None`
/// for any other argument.
pub fn informational_text(arg: &str) -> Option<String> {
    let version_line = format!("styx-driver {}\n", env!("CARGO_PKG_VERSION"));
    match arg {
        "--version" | "-V" => Some(version_line),
        "--help" | "-h" => Some(format!("{version_line}{USAGE}")),
        _ => None,
    }
}

/// Runs the program and returns its exit status.
pub fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args
        .first()
        .is_some_and(|arg| arg == supervisor::SUBCOMMAND)
    {
        return supervisor::main(&args[1..]);
    }

    if let Some(text) = args
        .first()
        .and_then(|arg| informational_text(arg.to_str()?))
    {
        // A failed write, such as to a closed stdout, exits 1 without a message.
        return match write!(std::io::stdout(), "{text}") {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_flags_print_version() {
        let expected = format!("styx-driver {}\n", env!("CARGO_PKG_VERSION"));
        assert_eq!(informational_text("--version"), Some(expected.clone()));
        assert_eq!(informational_text("-V"), Some(expected));
    }

    #[test]
    fn help_flags_print_usage() {
        for flag in ["--help", "-h"] {
            let text = informational_text(flag).unwrap();
            assert!(text.starts_with("styx-driver "), "{text}");
            assert!(text.contains("started by Nomad"), "{text}");
        }
    }

    #[test]
    fn other_arguments_print_nothing() {
        assert_eq!(informational_text("serve"), None);
        assert_eq!(informational_text("--versions"), None);
    }
}
