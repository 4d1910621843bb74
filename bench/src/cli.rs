//! The `styx-proxy bench` subcommand.

use std::path::Path;

/// Options of `styx-proxy bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Run the short variant of every scenario.
    #[arg(long)]
    pub quick: bool,
}

/// Error of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    // TODO: replaced by the load generators; this placeholder only fixes the interface.
    #[error("the benchmark is not built yet")]
    NotBuilt,
}

/// Runs the benchmark, starting `proxy_exe run …` as the proxy under test.
pub fn run(_args: BenchArgs, _proxy_exe: &Path) -> Result<(), BenchError> {
    Err(BenchError::NotBuilt)
}
