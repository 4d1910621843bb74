//! `styx`: parses the command line, runs the command, and prints any error as one line
//! with its whole cause chain.
//!
//! Exit codes: 0 success; 1 `status` or `doctor` found something down; 2 invalid
//! arguments (from clap); 3 the command failed.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

/// Exit code of a command that failed.
const EXIT_FAILED: u8 = 3;

fn main() -> ExitCode {
    let cli = styx_launcher::cli::Cli::parse();

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STYX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("styx: failed to start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };

    match runtime.block_on(styx_launcher::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("styx: {error:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
