//! `styx-proxy`: the standalone Styx data plane and its benchmark.
//!
//! Exit codes: 0 after a clean shutdown (or when `resolve` found records), 1 when the
//! proxy fails to start or run (or when `resolve` found none or no server answered), 2 for
//! invalid flags, configuration or names.
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
    /// Look a name up through the in-process resolver, one record per line.
    Resolve(styx_dns::cli::ResolveArgs),
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
    // `resolve` prints its own one-line error, so the resolver's warnings (a server
    // demoted, say) would only repeat it.
    let default_level = match cli.command {
        Command::Resolve(_) => "error",
        _ => "info",
    };
    init_tracing(default_level);

    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("styx-proxy: {}", error_chain(&*error));
            ExitCode::from(if is_invalid_input(&error) { 2 } else { 1 })
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => styx_proxy::cli::run(&args)?,
        Command::Bench(args) => styx_bench::cli::run(args, &std::env::current_exe()?)?,
        Command::Resolve(args) => print!("{}", resolve(&args)?),
    }
    Ok(())
}

/// Runs `styx-proxy resolve` on a single-threaded runtime and returns the text to print.
fn resolve(args: &styx_dns::cli::ResolveArgs) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(styx_dns::cli::run(args))?)
}

/// Returns whether `error` comes from invalid settings or an invalid name, not from a
/// failure while running.
fn is_invalid_input(error: &anyhow::Error) -> bool {
    use styx_dns::ResolveError;
    use styx_dns::cli::RunError as ResolveRunError;
    use styx_proxy::cli::RunError;

    if let Some(error) = error.downcast_ref::<RunError>() {
        return matches!(error, RunError::Config(_));
    }
    if let Some(error) = error.downcast_ref::<ResolveRunError>() {
        return matches!(
            error,
            ResolveRunError::Resolve(ResolveError::InvalidName(_))
        );
    }
    false
}

/// Logs to stderr, at the level RUST_LOG sets (`default_level` without it), with ANSI
/// colours only when stderr is a terminal, so files and journals get plain text.
fn init_tracing(default_level: &str) {
    use std::io::IsTerminal;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
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
