//! `styx-proxy`: the standalone Styx data plane and its benchmark.
//!
//! Exit codes: 0 after a clean shutdown, 1 when the proxy fails to start or run, 2 for
//! invalid flags or configuration.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Styx data plane: forwards TCP connections to upstreams.
#[derive(Debug, Parser)]
#[command(name = "styx-proxy", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy until SIGTERM or SIGINT.
    Run(styx_proxy::cli::RunArgs),
    /// Measure the direct path and each engine side by side.
    Bench(styx_bench::cli::BenchArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!(
                "styx-proxy: {}",
                first_paragraph(&error.render().to_string())
            );
            return ExitCode::from(2);
        }
    };
    init_tracing();

    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("styx-proxy: {}", error_chain(&*error));
            let invalid = error
                .downcast_ref::<styx_proxy::cli::RunError>()
                .is_some_and(|error| matches!(error, styx_proxy::cli::RunError::Config(_)));
            ExitCode::from(if invalid { 2 } else { 1 })
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => styx_proxy::cli::run(&args)?,
        Command::Bench(args) => styx_bench::cli::run(args, &std::env::current_exe()?)?,
    }
    Ok(())
}

/// Logs to stderr, at the level RUST_LOG sets (info by default).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Returns clap's error message up to its first blank line, joined into one line (clap
/// lists missing arguments on lines of their own, then usage and a hint).
fn first_paragraph(rendered: &str) -> String {
    let lines: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.is_empty())
        .collect();
    lines.join(" ").trim_start_matches("error: ").to_owned()
}

/// Joins an error and its sources into one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}
